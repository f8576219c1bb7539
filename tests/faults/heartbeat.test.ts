import { describe, expect, it } from 'vitest';
import { CliProcess, temporaryFolder } from '../helpers/cli.js';

const HEARTBEAT_MS = 500;

/** Resolves with the first coordinator log line that matches, waiting for it if needed. */
async function waitForEntry(process: CliProcess, predicate: (entry: Record<string, any>) => boolean, timeoutMs = 60_000): Promise<Record<string, any>> {
  const line = await process.waitForLine((text) => {
    try {
      return predicate(JSON.parse(text));
    } catch {
      return false;
    }
  }, timeoutMs);
  return JSON.parse(line);
}

describe('heartbeats', () => {
  it('drop a stopped worker and readmit it', async () => {
    const coordinator = new CliProcess([
      'coordinator', '--workers', '2', '--heartbeat-ms', String(HEARTBEAT_MS), '--port', '0', '--metrics-port', '0',
      '--backend', 'wasm', '--log-format', 'json', '--train-limit', '12000', '--test-limit', '500', '--epochs', '1',
      '--output', temporaryFolder('heartbeat'),
    ]);
    const workers: CliProcess[] = [];
    try {
      const { url } = await coordinator.waitForLog('coordinator listening');
      for (const name of ['steady', 'paused']) {
        workers.push(new CliProcess(['worker', '--coordinator', url, '--name', name, '--metrics-port', '0', '--backend', 'wasm', '--log-format', 'json']));
      }
      const paused = workers[1];
      await waitForEntry(coordinator, (entry) => entry.msg === 'worker admitted' && entry.worker === 'paused');
      await new Promise((resolve) => setTimeout(resolve, 1000));

      const stoppedAt = Date.now();
      paused.child.kill('SIGSTOP');
      const dropped = await waitForEntry(coordinator, (entry) => entry.msg === 'worker disconnected' && entry.worker === 'paused');
      const detectionMs = Date.now() - stoppedAt;
      console.log(`SIGSTOP noticed after ${detectionMs} ms (heartbeat ${HEARTBEAT_MS} ms)`);
      expect(dropped.reason).toBe('heartbeat timeout');
      // Two missed pings plus the check that notices them: three intervals, with room for scheduling.
      expect(detectionMs).toBeLessThan(3 * HEARTBEAT_MS + 1000);

      paused.child.kill('SIGCONT');
      const readmitted = await waitForEntry(coordinator, (entry) => entry.msg === 'worker admitted' && entry.worker === 'paused' && entry.step > 0);
      expect(readmitted.step).toBeGreaterThan(0);

      expect(await coordinator.exited, coordinator.output()).toBe(0);
      const [epoch] = coordinator.logs('epoch complete');
      expect(epoch.samples).toEqual({ unused: 0, once: 12000, repeated: 0 });
      for (const worker of workers) expect(await worker.exited, worker.output()).toBe(0);
    } finally {
      for (const worker of workers) {
        worker.child.kill('SIGCONT');
        worker.kill();
      }
      coordinator.kill();
    }
  }, 180_000);

  it('let a worker notice a stopped coordinator', async () => {
    const coordinator = new CliProcess([
      'coordinator', '--workers', '1', '--heartbeat-ms', String(HEARTBEAT_MS), '--port', '0', '--metrics-port', '0',
      '--backend', 'wasm', '--log-format', 'json', '--train-limit', '6000', '--test-limit', '500', '--epochs', '1',
      '--output', temporaryFolder('heartbeat-coordinator'),
    ]);
    let worker: CliProcess | undefined;
    try {
      const { url } = await coordinator.waitForLog('coordinator listening');
      worker = new CliProcess(['worker', '--coordinator', url, '--name', 'watcher', '--metrics-port', '0', '--backend', 'wasm', '--log-format', 'json']);
      await waitForEntry(coordinator, (entry) => entry.msg === 'worker admitted');
      await new Promise((resolve) => setTimeout(resolve, 1000));

      coordinator.child.kill('SIGSTOP');
      const noticed = await worker.waitForLog('no heartbeat from the coordinator; reconnecting', 10_000);
      expect(noticed.silentMs).toBeGreaterThan(2 * HEARTBEAT_MS);
      coordinator.child.kill('SIGCONT');

      // The worker reconnects to the resumed coordinator and training completes.
      expect(await coordinator.exited, coordinator.output()).toBe(0);
      expect(await worker.exited, worker.output()).toBe(0);
      expect(coordinator.logs('epoch complete')[0].samples).toEqual({ unused: 0, once: 6000, repeated: 0 });
    } finally {
      coordinator.child.kill('SIGCONT');
      coordinator.kill();
      worker?.kill();
    }
  }, 180_000);
});
