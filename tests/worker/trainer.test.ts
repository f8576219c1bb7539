import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Coordinator } from '../../coordinator/coordinator.js';
import { selectBackend, tf, type BackendName } from '../../shared/backend.js';
import { loadDataset } from '../../shared/data/dataset.js';
import { Logger } from '../../shared/log.js';
import { buildModel, modelTopology, trainableVariables } from '../../shared/models.js';
import { COORDINATOR_DEFAULTS, WORKER_DEFAULTS } from '../../shared/options.js';
import { computeGradients, type ByteBatch } from '../../shared/training.js';
import { SelfCheckError } from '../../worker/self-check.js';
import { MainThreadTrainer, ThreadTrainer, TrainerCrashError, type Trainer } from '../../worker/trainer.js';
import { Worker, WorkerFatalError } from '../../worker/worker.js';
import { temporaryFolder } from '../helpers/cli.js';
import { maxAbsDifference } from '../helpers/runs.js';

const SHAPE = { inputShape: [28, 28, 1] as [number, number, number], numClasses: 10 };
/** Not a slice-size multiple, so the main-thread trainer's last slice is smaller than the others. */
const BATCH_SIZE = 21;

/** Makes a batch with a fixed pattern of pixels and every class. */
function makeBatch(): ByteBatch {
  const images = new Uint8Array(BATCH_SIZE * 784);
  for (let i = 0; i < images.length; i++) images[i] = (i * 37) % 256;
  const labels = Uint8Array.from({ length: BATCH_SIZE }, (_, i) => i % 10);
  return { images, labels, count: BATCH_SIZE };
}

function noCrash(error: Error): void {
  throw new Error(`unexpected crash of the gradient thread: ${error.message}`);
}

describe('trainer', () => {
  const open: Trainer[] = [];
  let model: tf.LayersModel;
  let weights: Float32Array[];
  let reference: ReturnType<typeof computeGradients>;

  beforeAll(async () => {
    await selectBackend('wasm');
    model = buildModel('mlp', SHAPE, 7);
    weights = trainableVariables(model).map((variable) => variable.dataSync() as Float32Array);
    reference = computeGradients(model, makeBatch(), SHAPE.numClasses);
  });

  afterAll(async () => {
    for (const trainer of open) await trainer.close();
    model.dispose();
  });

  /** Builds the test model in `trainer` and loads its weights. */
  async function load(trainer: Trainer): Promise<void> {
    open.push(trainer);
    const shapes = await trainer.build(modelTopology(model), SHAPE.numClasses);
    expect(shapes).toEqual(trainableVariables(model).map((variable) => variable.shape));
    await trainer.setWeights(weights.map((array) => array.slice()));
  }

  it('thread matches the main thread', async () => {
    const trainer = new ThreadTrainer('wasm', noCrash);
    await load(trainer);
    const result = await trainer.computeGradients(makeBatch());
    expect(result.gradients).toHaveLength(reference.gradients.length);
    result.gradients.forEach((gradient, t) => expect(maxAbsDifference(gradient, reference.gradients[t])).toBeLessThanOrEqual(1e-6));
    expect(result.loss).toBeCloseTo(reference.loss, 5);
    expect(result.correct).toBe(reference.correct);
    expect(result.computeMs).toBeGreaterThan(0);
  });

  it('slices sum to the batch mean', async () => {
    const trainer = new MainThreadTrainer();
    await load(trainer);
    const result = await trainer.computeGradients(makeBatch());
    result.gradients.forEach((gradient, t) => expect(maxAbsDifference(gradient, reference.gradients[t])).toBeLessThanOrEqual(1e-6));
    expect(result.loss).toBeCloseTo(reference.loss, 5);
    expect(result.correct).toBe(reference.correct);
  });

  it('thread tensor count stays flat', async () => {
    const trainer = new ThreadTrainer('wasm', noCrash);
    await load(trainer);
    await trainer.computeGradients(makeBatch());
    const before = await trainer.memory();
    for (let step = 0; step < 5; step++) {
      await trainer.setWeights(weights.map((array) => array.slice()));
      await trainer.computeGradients(makeBatch());
    }
    expect((await trainer.memory()).numTensors).toBe(before.numTensors);
    expect(before.numTensors).toBeGreaterThan(0);
  });

  it('self-check error crosses the thread', async () => {
    const cnn = buildModel('cnn', SHAPE, 7);
    // The thread copies the environment when it starts, and applies the hook there.
    process.env.TEST_GRADFLEET_DROP_KERNEL = 'Conv2DBackpropFilter';
    const trainer = new ThreadTrainer('wasm', noCrash);
    delete process.env.TEST_GRADFLEET_DROP_KERNEL;
    open.push(trainer);
    await trainer.build(modelTopology(cnn), SHAPE.numClasses);
    cnn.dispose();
    const error = await trainer.selfCheck().then(() => undefined, (caught: Error) => caught);
    expect(error).toBeInstanceOf(SelfCheckError);
    expect((error as SelfCheckError).kernel).toBe('Conv2DBackpropFilter');
    expect(error!.message).toMatch(/backend "wasm" has no "Conv2DBackpropFilter" kernel/);
  });

  it('crash rejects and reports once', async () => {
    const crashes: Error[] = [];
    // A backend name the thread cannot activate makes it fail while it starts.
    const trainer = new ThreadTrainer('no-such-backend' as BackendName, (error) => crashes.push(error));
    open.push(trainer);
    const pending = trainer.memory().then(() => undefined, (caught: Error) => caught);
    const error = await pending;
    expect(error).toBeInstanceOf(TrainerCrashError);
    expect(error!.message).toMatch(/gradient thread on backend "no-such-backend" failed/);
    expect(crashes).toHaveLength(1);
    await expect(trainer.memory()).rejects.toBe(error);
  });

  it('close twice is safe', async () => {
    const trainer = new ThreadTrainer('wasm', noCrash);
    await trainer.memory();
    await trainer.close();
    await trainer.close();
    await expect(trainer.memory()).rejects.toThrow(/was closed/);
    expect(tf.getBackend()).toBe('wasm');
  });
});

describe('worker with a crashed thread', () => {
  const silent = new Logger({ format: 'json', level: 'error', name: 'test', write: () => {} });

  it('fails instead of hanging', async () => {
    await selectBackend('wasm');
    const dataset = await loadDataset({ trainLimit: 640, testLimit: 100 });
    const coordinator = new Coordinator(
      { ...COORDINATOR_DEFAULTS, model: 'mlp', port: 0, metricsPort: 0, workers: 1, epochs: 1, output: temporaryFolder('thread-crash') },
      silent,
      dataset,
    );
    await coordinator.start();
    const worker = new Worker({ ...WORKER_DEFAULTS, coordinator: `ws://127.0.0.1:${coordinator.port}`, metricsPort: 0, name: 'crashing' }, silent);
    try {
      const done = worker.run().then(() => undefined, (error: Error) => error);
      void coordinator.run().catch(() => undefined);
      await new Promise<void>((resolve) => coordinator.once('step', () => resolve()));

      // Ending the thread from outside looks to the worker like a crash of the thread.
      const thread = (worker as unknown as { trainer: { thread: { terminate(): Promise<number> } } }).trainer.thread;
      await thread.terminate();
      const error = await done;
      expect(error).toBeInstanceOf(WorkerFatalError);
      expect(error!.message).toMatch(/gradient thread on backend "wasm" exited unexpectedly/);
    } finally {
      await worker.close();
      await coordinator.close();
    }
  });
});
