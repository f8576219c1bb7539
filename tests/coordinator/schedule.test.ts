import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Coordinator } from '../../coordinator/coordinator.js';
import { Sgd } from '../../coordinator/optimizer.js';
import { learningRate } from '../../coordinator/schedule.js';
import { selectBackend } from '../../shared/backend.js';
import { loadDataset, type Dataset } from '../../shared/data/dataset.js';
import { Logger } from '../../shared/log.js';
import { COORDINATOR_DEFAULTS, WORKER_DEFAULTS, type CoordinatorOptions } from '../../shared/options.js';
import { Worker } from '../../worker/worker.js';
import { temporaryFolder } from '../helpers/cli.js';

const base = { lr: 0.1, workers: 4, lrScaling: 'linear' as const, warmupSteps: 0 };

describe('learning rate schedule', () => {
  it('keeps lr without scaling', () => {
    expect(learningRate({ ...base, lrScaling: 'none' }, 1, 0)).toBe(0.1);
    expect(learningRate({ ...base, lrScaling: 'none' }, 7, 500)).toBe(0.1);
  });

  it('scales linearly with active workers', () => {
    expect(learningRate(base, 4, 0)).toBeCloseTo(0.1, 15);
    expect(learningRate(base, 2, 0)).toBeCloseTo(0.05, 15);
    expect(learningRate(base, 1, 0)).toBeCloseTo(0.025, 15);
    expect(learningRate(base, 8, 0)).toBeCloseTo(0.2, 15);
  });

  it('never compounds membership changes', () => {
    // 4 → 1 → 3 → 4 workers, many times over: the rate depends only on the current count.
    let rate = 0;
    for (let round = 0; round < 100; round++) for (const active of [4, 1, 3, 4]) rate = learningRate(base, active, round);
    expect(rate).toBe(learningRate(base, 4, 0));
  });

  it('ramps up during warm-up', () => {
    const options = { ...base, lrScaling: 'none' as const, warmupSteps: 4 };
    const rates = [0, 1, 2, 3, 4, 100].map((step) => learningRate(options, 1, step));
    expect(rates).toEqual([0.025, 0.05, 0.075, 0.1, 0.1, 0.1].map((lr) => expect.closeTo(lr, 15)));
  });

  it('applies the lr passed to the optimizer', () => {
    const weights = [new Float32Array([1, 1])];
    new Sgd(0.1, 0).apply(weights, [new Float32Array([1, 2])], 0.5);
    expect(Array.from(weights[0])).toEqual([0.5, 0]);
  });

  it('rejects linear scaling without a per-worker batch', async () => {
    const silent = new Logger({ format: 'json', level: 'error', name: 'test', write: () => {} });
    const options: CoordinatorOptions = { ...COORDINATOR_DEFAULTS, lrScaling: 'linear', batchSize: 64 };
    expect(() => new Coordinator(options, silent)).toThrow(/--lr-scaling linear needs --batch-size-per-worker/);
  });
});

describe('learning rate with changing membership', () => {
  const silent = new Logger({ format: 'json', level: 'error', name: 'test', write: () => {} });
  const cleanup: { close(): Promise<void> }[] = [];
  let dataset: Dataset;

  beforeAll(async () => {
    await selectBackend('cpu');
    dataset = await loadDataset({ trainLimit: 600, testLimit: 100 });
  });

  afterEach(async () => {
    for (const item of cleanup.splice(0)) await item.close();
  });

  function startWorker(coordinator: Coordinator, name: string): { worker: Worker; done: Promise<void> } {
    const worker = new Worker({ ...WORKER_DEFAULTS, coordinator: `ws://127.0.0.1:${coordinator.port}`, metricsPort: 0, name }, silent);
    cleanup.push(worker);
    const done = worker.run();
    done.catch(() => {});
    return { worker, done };
  }

  it('follows the global batch from the base lr', async () => {
    const options: CoordinatorOptions = {
      ...COORDINATOR_DEFAULTS,
      model: 'mlp',
      optimizer: 'sgd',
      lr: 0.1,
      lrScaling: 'linear',
      warmupSteps: 3,
      workers: 2,
      batchSizePerWorker: 10,
      port: 0,
      metricsPort: 0,
      epochs: 1,
      output: temporaryFolder('schedule'),
    };
    const coordinator = new Coordinator(options, silent, dataset);
    cleanup.push(coordinator);
    const steps: { step: number; examples: number; lr: number }[] = [];
    let leaving: ReturnType<typeof startWorker>;
    coordinator.on('step', ({ step, examples, lr }) => {
      steps.push({ step, examples, lr });
      if (step === 5) void leaving.worker.close();
      if (step === 12) startWorker(coordinator, 'returning');
    });
    await coordinator.start();
    startWorker(coordinator, 'stays');
    leaving = startWorker(coordinator, 'leaving');
    await coordinator.run();

    // Warm-up: (s + 1) / 3 of 0.1 with two workers.
    expect(steps.slice(0, 4).map((entry) => entry.lr)).toEqual([0.1 / 3, 0.2 / 3, 0.1, 0.1].map((lr) => expect.closeTo(lr, 12)));
    // With one worker the global batch is 10, so the rate halves; with two again it is back to 0.1 exactly.
    // The last step is left out: it takes what remains of the epoch, which can be 10 images with two workers.
    const full = steps.slice(0, -1);
    const alone = full.filter((entry) => entry.step > 3 && entry.examples === 10);
    const together = full.filter((entry) => entry.step > 12 && entry.examples === 20);
    expect(alone.length).toBeGreaterThan(0);
    expect(together.length).toBeGreaterThan(0);
    for (const entry of alone) expect(entry.lr).toBeCloseTo(0.05, 12);
    for (const entry of together) expect(entry.lr).toBe(0.1);
    expect(await coordinator.metrics.registry.getSingleMetricAsString('gradfleet_learning_rate')).toMatch(/gradfleet_learning_rate 0\.\d+/);
  }, 90_000);
});
