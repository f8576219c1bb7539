import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Coordinator } from '../../coordinator/coordinator.js';
import { selectBackend, tf } from '../../shared/backend.js';
import { loadDataset } from '../../shared/data/dataset.js';
import { Logger } from '../../shared/log.js';
import { COORDINATOR_DEFAULTS, WORKER_DEFAULTS } from '../../shared/options.js';
import { Worker } from '../../worker/worker.js';
import { temporaryFolder } from '../helpers/cli.js';

/**
 * Every tensor made in a step must be disposed in that step. A coordinator and a worker
 * run in this process, so `tf.memory().numTensors` covers both: it must not grow over 300
 * steps, and closing both must return it to where it was before they started.
 */
describe('tensor count', () => {
  const silent = new Logger({ format: 'json', level: 'error', name: 'test', write: () => {} });

  beforeAll(async () => {
    await selectBackend('wasm');
  });

  let coordinator: Coordinator | undefined;
  let worker: Worker | undefined;
  afterAll(async () => {
    await worker?.close();
    await coordinator?.close();
  });

  it('flat over 300 steps', async () => {
    const dataset = await loadDataset({ trainLimit: 2400, testLimit: 200 });
    const before = tf.memory().numTensors;
    coordinator = new Coordinator(
      {
        ...COORDINATOR_DEFAULTS,
        port: 0,
        metricsPort: 0,
        workers: 1,
        batchSize: 8,
        epochs: 1,
        maxSteps: 300,
        output: temporaryFolder('leak'),
      },
      silent,
      dataset,
    );
    const counts = new Map<number, number>();
    coordinator.on('step', ({ step }) => counts.set(step, tf.memory().numTensors));
    await coordinator.start();
    worker = new Worker({ ...WORKER_DEFAULTS, coordinator: `ws://127.0.0.1:${coordinator.port}`, metricsPort: 0, name: 'leak-check' }, silent);
    const workerDone = worker.run();
    const result = await coordinator.run();
    await workerDone;

    expect(result.steps).toBe(300);
    expect(counts.get(299)).toBe(counts.get(10));
    await worker.close();
    await coordinator.close();
    expect(tf.memory().numTensors).toBe(before);
  }, 180_000);
});
