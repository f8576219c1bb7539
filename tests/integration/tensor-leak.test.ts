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
 * run in this process. The worker's model lives in its gradient thread, which has a tfjs
 * instance of its own, so the test checks two counts. One is `tf.memory().numTensors` of
 * this thread, which covers the coordinator and the worker's main thread. The other is
 * the gradient thread's, read with `Worker.trainerMemory`. Neither may grow over 300
 * steps, and closing both must return this thread's count to where it was before.
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
    const threadCounts = new Map<number, Promise<number | undefined>>();
    coordinator.on('step', ({ step }) => {
      counts.set(step, tf.memory().numTensors);
      // The thread replies after the requests queued before this one, so between shards.
      threadCounts.set(step, worker!.trainerMemory().then((memory) => memory?.numTensors));
    });
    await coordinator.start();
    worker = new Worker({ ...WORKER_DEFAULTS, coordinator: `ws://127.0.0.1:${coordinator.port}`, metricsPort: 0, name: 'leak-check' }, silent);
    const workerDone = worker.run();
    const result = await coordinator.run();
    await workerDone;

    expect(result.steps).toBe(300);
    expect(counts.get(299)).toBe(counts.get(10));
    const [threadAt10, threadAt299] = await Promise.all([threadCounts.get(10), threadCounts.get(299)]);
    // The model's variables stay, so a count of 0 would mean the thread's model is gone.
    expect(threadAt10).toBeGreaterThan(0);
    expect(threadAt299).toBe(threadAt10);
    await worker.close();
    await coordinator.close();
    expect(tf.memory().numTensors).toBe(before);
  }, 180_000);
});
