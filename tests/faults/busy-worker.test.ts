import { describe, expect, it } from 'vitest';
import { CliProcess, temporaryFolder } from '../helpers/cli.js';

const HEARTBEAT_MS = 200;
const SCRAPE_INTERVAL_MS = 250;
const DELAY_METRIC = /^gradfleet_worker_event_loop_delay_seconds\{percentile="100"\} (\S+)$/m;

/** Largest event-loop delay a worker's `/metrics` reported, and how many scrapes carried it. */
interface DelayRecord {
  maxSeconds: number;
  scrapes: number;
}

/**
 * Scrapes a worker's `/metrics` until it exits and keeps the largest event-loop delay
 * seen. The gauge covers the time since the previous scrape, so the scrapes together cover
 * the run from the first one to the last.
 */
async function watchEventLoopDelay(worker: CliProcess): Promise<DelayRecord> {
  const started = await worker.waitForLog('worker starting');
  const url = String(started.metrics);
  const record: DelayRecord = { maxSeconds: 0, scrapes: 0 };
  let running = true;
  void worker.exited.then(() => (running = false));
  while (running) {
    try {
      const match = DELAY_METRIC.exec(await (await fetch(url)).text());
      if (match) {
        record.maxSeconds = Math.max(record.maxSeconds, Number(match[1]));
        record.scrapes++;
      }
    } catch {
      // The worker closes its metrics server when training ends; the loop stops with it.
    }
    await new Promise((resolve) => setTimeout(resolve, SCRAPE_INTERVAL_MS));
  }
  return record;
}

describe('busy worker', () => {
  it('answers heartbeats while computing', async () => {
    const coordinator = new CliProcess([
      'coordinator', '--workers', '2', '--heartbeat-ms', String(HEARTBEAT_MS), '--port', '0', '--metrics-port', '0',
      '--backend', 'wasm', '--model', 'cnn', '--batch-size', '12', '--max-steps', '2', '--train-limit', '24', '--test-limit', '32',
      '--log-format', 'json', '--log-level', 'debug', '--output', temporaryFolder('busy-worker'),
    ]);
    const workers: CliProcess[] = [];
    try {
      const { url } = await coordinator.waitForLog('coordinator listening');
      for (const name of ['first', 'second']) {
        workers.push(new CliProcess(['worker', '--coordinator', url, '--name', name, '--metrics-port', '0', '--backend', 'cpu', '--log-format', 'json']));
      }
      const delays = Promise.all(workers.map(watchEventLoopDelay));

      // A dropped worker reconnects and is dropped again at the next step, so the run
      // might never end: the first drop ends the test.
      const dropped = coordinator.waitForLog('worker missed 2 heartbeats; dropping it', 120_000).then((entry) => `dropped ${entry.worker}`);
      const outcome = await Promise.race([coordinator.exited.then((status) => `exited with ${status}`), dropped]);
      expect(outcome, coordinator.output()).toBe('exited with 0');
      const timedOut = coordinator.logs('worker disconnected').filter((entry) => entry.reason === 'heartbeat timeout');
      expect(timedOut).toEqual([]);
      expect(coordinator.logs('training complete; model saved')[0].steps).toBe(2);

      // Each shard of 6 images must outlast two heartbeats, or the test shows nothing.
      const applied = coordinator.logs('step applied');
      expect(applied).toHaveLength(2);
      for (const step of applied) expect(step.computeMs).toBeGreaterThan(2 * HEARTBEAT_MS);

      for (const worker of workers) expect(await worker.exited, worker.output()).toBe(0);
      for (const record of await delays) {
        console.log(`largest event-loop delay ${record.maxSeconds.toFixed(3)} s over ${record.scrapes} scrapes; slowest shard ${Math.max(...applied.map((step) => step.computeMs))} ms`);
        expect(record.scrapes).toBeGreaterThan(0);
        expect(record.maxSeconds).toBeLessThan(1);
      }
    } finally {
      for (const worker of workers) worker.kill();
      coordinator.kill();
    }
  }, 120_000);
});
