import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CliProcess, temporaryFolder } from '../helpers/cli.js';

const COORDINATOR_METRICS = [
  'gradfleet_step_duration_seconds_bucket',
  'gradfleet_worker_compute_seconds_bucket{le="0.5",worker="worker-1"}',
  'gradfleet_worker_wait_seconds_bucket{le="0.5",worker="worker-2"}',
  'gradfleet_examples_total',
  'gradfleet_steps_total',
  'gradfleet_epoch',
  'gradfleet_train_loss',
  'gradfleet_test_accuracy_ratio',
  'gradfleet_active_workers 2',
  'gradfleet_sent_bytes_total',
  'gradfleet_received_bytes_total',
  'gradfleet_rejected_messages_total',
  'gradfleet_step_slowest_worker_total{worker="worker-',
  'gradfleet_step_timeouts_total',
  'gradfleet_worker_info{worker="worker-1",backend="wasm",version=',
  'gradfleet_checkpoints_written_total 0',
  'gradfleet_last_checkpoint_step -1',
];

const WORKER_METRICS = [
  'gradfleet_worker_compute_seconds_bucket',
  'gradfleet_examples_total',
  'gradfleet_sent_bytes_total',
  'gradfleet_received_bytes_total',
  'gradfleet_worker_info{worker="worker-1",backend="wasm",version=',
];

/** Polls a /metrics URL until `gradfleet_steps_total` or the worker's examples count is above zero. */
async function scrapeWhileTraining(url: string): Promise<string> {
  for (let attempt = 0; attempt < 100; attempt++) {
    const text = await (await fetch(url)).text();
    if (/^gradfleet_(steps|examples)_total [1-9]/m.test(text)) return text;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  throw new Error(`no step was counted at ${url} within 20 s`);
}

describe('gradfleet launch', () => {
  it('trains and serves metrics', async () => {
    const output = temporaryFolder('launch');
    const launch = new CliProcess([
      'launch', '--workers', '2', '--port', '0', '--metrics-port', '0', '--backend', 'wasm', '--log-format', 'json',
      '--train-limit', '6000', '--test-limit', '2000', '--epochs', '2', '--output', output,
    ]);
    const started = await launch.waitForLog('started', 60_000);
    expect(Object.keys(started.metrics)).toEqual(['coordinator', 'worker-1', 'worker-2']);

    const coordinatorMetrics = await scrapeWhileTraining(started.metrics.coordinator);
    for (const name of COORDINATOR_METRICS) expect(coordinatorMetrics).toContain(name);
    const workerMetrics = await scrapeWhileTraining(started.metrics['worker-1']);
    for (const name of WORKER_METRICS) expect(workerMetrics).toContain(name);

    const status = await launch.exited;
    expect(status, launch.output()).toBe(0);
    const epochs = launch.logs('epoch complete');
    expect(epochs.map((epoch) => epoch.epoch)).toEqual([1, 2]);
    expect(epochs[0].testAccuracy).toBeGreaterThan(0.8);
    expect(epochs[1].testAccuracy).toBeGreaterThan(epochs[0].testAccuracy);
    expect(epochs[1].trainLoss).toBeLessThan(epochs[0].trainLoss);
    for (const epoch of epochs) expect(epoch.samples).toEqual({ unused: 0, once: 6000, repeated: 0 });
    expect(existsSync(join(output, 'model.json'))).toBe(true);
    expect(launch.output()).toMatch(/\[worker-1 *\] /);
  }, 240_000);

  it('fails when a worker fails', async () => {
    const blocker = createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    // Worker 2's metrics port is the coordinator's + 2, so taking that port makes worker 2 fail.
    const base = (blocker.address() as AddressInfo).port - 2;
    const launch = new CliProcess([
      'launch', '--workers', '2', '--port', '0', '--metrics-port', String(base), '--backend', 'cpu', '--model', 'mlp',
      '--train-limit', '1000', '--output', temporaryFolder('launch-fail'),
    ]);
    try {
      expect(await launch.exited).toBe(1);
      expect(launch.output()).toMatch(/worker-2 exited with status 1; stopping all processes/);
    } finally {
      blocker.close();
    }
  }, 60_000);

  it('stops every child gracefully on SIGTERM', async () => {
    const checkpointDir = temporaryFolder('launch-stop-checkpoints');
    const launch = new CliProcess([
      'launch', '--workers', '2', '--port', '0', '--metrics-port', '0', '--backend', 'wasm', '--log-format', 'json',
      '--train-limit', '6000', '--test-limit', '500', '--epochs', '5', '--output', temporaryFolder('launch-stop'), '--checkpoint-dir', checkpointDir,
    ]);
    const started = await launch.waitForLog('started', 60_000);
    await scrapeWhileTraining(started.metrics.coordinator);
    launch.kill('SIGTERM');
    expect(await launch.exited, launch.output()).toBe(0);
    // The coordinator saved its last step, and every child exited by itself with status 0.
    expect(launch.logs('checkpoint written').at(-1)?.reason).toBe('stop');
    expect(launch.logs('left the training')).toHaveLength(2);
    expect(launch.logs('process exited')).toEqual([]);
    // Every child's metrics server is gone once launch has exited.
    for (const url of Object.values(started.metrics) as string[]) {
      await expect(fetch(url)).rejects.toThrow();
    }
  }, 120_000);
});
