import { describe, expect, it } from 'vitest';
import { CliProcess, temporaryFolder } from '../helpers/cli.js';

describe('worker self-check', () => {
  it('names a missing kernel and exits', async () => {
    const coordinator = new CliProcess([
      'coordinator', '--workers', '1', '--port', '0', '--metrics-port', '0', '--backend', 'wasm', '--log-format', 'json',
      '--train-limit', '640', '--test-limit', '100', '--max-steps', '2', '--output', temporaryFolder('self-check'),
    ]);
    try {
      const listening = await coordinator.waitForLog('coordinator listening');
      const broken = new CliProcess(['worker', '--coordinator', listening.url, '--metrics-port', '0', '--backend', 'wasm', '--name', 'broken'], {
        TEST_GRADFLEET_DROP_KERNEL: 'Conv2DBackpropFilter',
      });
      expect(await broken.exited).toBe(1);
      expect(broken.stderr.join('\n')).toMatch(/backend "wasm" has no "Conv2DBackpropFilter" kernel/);

      const reported = await coordinator.waitForLog('worker reported an error');
      expect(reported.code).toBe('SELF_CHECK_FAILED');
      expect(reported.error).toMatch(/Conv2DBackpropFilter/);

      // The coordinator keeps waiting and trains with a healthy worker.
      const healthy = new CliProcess(['worker', '--coordinator', listening.url, '--metrics-port', '0', '--backend', 'wasm', '--name', 'healthy']);
      expect(await healthy.exited, healthy.output()).toBe(0);
      expect(await coordinator.exited, coordinator.output()).toBe(0);
    } finally {
      coordinator.kill();
    }
  }, 120_000);
});
