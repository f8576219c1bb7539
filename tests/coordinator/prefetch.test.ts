import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Coordinator } from '../../coordinator/coordinator.js';
import { selectBackend } from '../../shared/backend.js';
import { loadDataset, type Dataset } from '../../shared/data/dataset.js';
import { COORDINATOR_DEFAULTS, type CoordinatorOptions } from '../../shared/options.js';
import { temporaryFolder } from '../helpers/cli.js';
import { silentLogger, startInProcessWorker, type Closables } from '../helpers/in-process.js';

/** In-process coordinator and workers on real sockets, as in membership.test.ts; the MLP keeps steps fast. */
const silent = silentLogger;
let dataset: Dataset;
const cleanup: Closables = [];

function coordinatorOptions(overrides: Partial<CoordinatorOptions>): CoordinatorOptions {
  return { ...COORDINATOR_DEFAULTS, model: 'mlp', port: 0, metricsPort: 0, epochs: 1, batchSize: 64, output: temporaryFolder('prefetch'), ...overrides };
}

function startWorker(coordinator: Coordinator, name: string): ReturnType<typeof startInProcessWorker> {
  return startInProcessWorker(coordinator, name, cleanup);
}

async function counterValue(coordinator: Coordinator, name: 'prefetchHits' | 'prefetchMisses'): Promise<number> {
  return (await coordinator.metrics[name].get()).values[0]?.value ?? 0;
}

beforeAll(async () => {
  await selectBackend('cpu');
  dataset = await loadDataset({ trainLimit: 2000, testLimit: 100 });
});

afterEach(async () => {
  for (const item of cleanup.splice(0)) await item.close();
});

describe('shard prefetch', () => {
  it('steady run sends data-less shards', async () => {
    const coordinator = new Coordinator(coordinatorOptions({ workers: 2 }), silent, dataset);
    cleanup.push(coordinator);
    await coordinator.start();
    const workers = [startWorker(coordinator, 'a'), startWorker(coordinator, 'b')];
    const result = await coordinator.run();
    await Promise.all(workers.map((worker) => worker.done));

    // 2000 samples in batches of 64 make 32 steps of 2 shards. Only the 2 shards of the
    // first step carry data: every later one was prefetched during the step before.
    const hits = await counterValue(coordinator, 'prefetchHits');
    const misses = await counterValue(coordinator, 'prefetchMisses');
    expect(result.steps).toBe(32);
    expect(misses).toBe(2);
    expect(hits).toBe(62);
    expect(result.epochs[0].samples).toEqual({ unused: 0, once: 2000, repeated: 0 });
    for (const { worker } of workers) expect((await worker.metrics.examples.get()).values[0].value).toBeGreaterThan(0);
  }, 90_000);

  it('same weights as one worker', async () => {
    const run = async (workerCount: number): Promise<Float32Array[]> => {
      const coordinator = new Coordinator(coordinatorOptions({ workers: workerCount, maxSteps: 6 }), silent, dataset);
      cleanup.push(coordinator);
      await coordinator.start();
      const workers = Array.from({ length: workerCount }, (_, i) => startWorker(coordinator, `w${i}`));
      const result = await coordinator.run();
      await Promise.all(workers.map((worker) => worker.done));
      return result.weights;
    };
    const single = await run(1);
    const pair = await run(2);

    // The averaged gradient does not depend on the split; float32 sums in another order differ slightly.
    single.forEach((weights, t) => {
      const largest = weights.reduce((max, value, i) => Math.max(max, Math.abs(value - pair[t][i])), 0);
      expect(largest).toBeLessThan(1e-5);
    });
  }, 90_000);

  it('falls back to full shards after a worker leaves', async () => {
    const coordinator = new Coordinator(coordinatorOptions({ workers: 2 }), silent, dataset);
    cleanup.push(coordinator);
    await coordinator.start();
    const stays = startWorker(coordinator, 'stays');
    const leaves = startWorker(coordinator, 'leaves');
    leaves.done.catch(() => {});
    coordinator.on('step', ({ step }) => {
      if (step === 3) void leaves.worker.close();
    });
    const result = await coordinator.run();
    await stays.done;

    const misses = await counterValue(coordinator, 'prefetchMisses');
    const hits = await counterValue(coordinator, 'prefetchHits');
    expect(result.epochs[0].samples).toEqual({ unused: 0, once: 2000, repeated: 0 });
    // The first step, and the first step with one worker (a new split), send full shards.
    expect(misses).toBeGreaterThanOrEqual(3);
    expect(hits).toBeGreaterThan(20);
  }, 90_000);
});
