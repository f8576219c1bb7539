import { describe, expect, it } from 'vitest';
import { CliProcess, temporaryFolder } from '../helpers/cli.js';

describe('coordinator evaluation', () => {
  it('keeps heartbeats on a slow backend', async () => {
    // On the cpu backend the CNN takes several milliseconds per test image, so 400 images in
    // one piece would keep the coordinator from pinging for longer than two 200 ms intervals.
    const coordinator = new CliProcess([
      'coordinator', '--backend', 'cpu', '--workers', '2', '--port', '0', '--metrics-port', '0', '--log-format', 'json',
      '--output', temporaryFolder('slow-evaluation'), '--batch-size', '16', '--max-steps', '2', '--train-limit', '64', '--test-limit', '400',
      '--heartbeat-ms', '200',
    ]);
    const workers: CliProcess[] = [];
    try {
      const { url } = await coordinator.waitForLog('coordinator listening');
      for (const name of ['a', 'b']) {
        workers.push(new CliProcess(['worker', '--coordinator', url, '--name', name, '--metrics-port', '0', '--backend', 'wasm', '--log-format', 'json']));
      }
      expect(await coordinator.exited, coordinator.output()).toBe(0);
      for (const worker of workers) {
        expect(await worker.exited, worker.output()).toBe(0);
        expect(worker.logs('no heartbeat from the coordinator; reconnecting'), worker.output()).toHaveLength(0);
      }
      const [epoch] = coordinator.logs('epoch complete');
      expect(epoch.testAccuracy).toBeGreaterThan(0);
    } finally {
      for (const worker of workers) worker.kill();
      coordinator.kill();
    }
  }, 120_000);
});
