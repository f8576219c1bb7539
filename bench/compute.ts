/**
 * Measures how fast one process computes gradients of the reference MNIST CNN
 * (forward + backward of the mean categorical cross-entropy, `tf.variableGrads`)
 * on the wasm backend with gradfleet's kernels, on tensorflow (tfjs-node) where it is
 * installed, and on the cpu backend for comparison. It also times the coordinator's
 * optimizer step on the CNN's 225,034 weights.
 *
 * Run with `npm run build && node dist/bench/compute.js [--out PATH]`.
 */
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
import { makeOptimizer, type OptimizerSettings } from '../coordinator/optimizer.js';
import { registerWasmGradientKernels, WASM_GRADIENT_KERNELS } from '../shared/kernels/index.js';
import { buildModel, parameterSpecs } from '../shared/models.js';
import { describeMachine, flagValue, loadAverage, median, printMachine, round, writeResults } from './machine.js';

const DEFAULT_OUT = 'bench/results/compute.json';
const BATCHES = [16, 32, 64, 128];
/**
 * The cpu backend takes about 20 s per step at batch 16 on a 2-core VM and grows linearly
 * with the batch, so it runs batch 16 only, with 2 timed steps and no kernel profile.
 */
const CPU_BATCHES = [16];
/** Timed steps per configuration. */
const FAST_STEPS = 20;
const CPU_STEPS = 2;
const FAST_WARMUP_STEPS = 3;
const CPU_WARMUP_STEPS = 1;
/** Optimizer updates timed per optimizer, after 5 untimed ones. */
const OPTIMIZER_STEPS = 50;

interface BatchResult {
  backend: string;
  batchSize: number;
  steps: number;
  imagesPerSecond: number;
  stepMs: number;
  forwardMs: number;
  backwardMs: number;
  /** One-minute load average when the batch size finished; timings are noisy above the core count. */
  loadAverage: number;
  /** Empty when the kernels were not profiled (the cpu backend). */
  slowestKernels: { name: string; ms: number; calls: number }[];
}

interface OptimizerResult {
  optimizer: string;
  parameters: number;
  msPerStep: number;
  loadAverage: number;
}

/** Builds the Keras MNIST example CNN; the real model lives in shared/models.ts. */
function buildReferenceCnn(): tf.Sequential {
  return tf.sequential({
    layers: [
      tf.layers.conv2d({ inputShape: [28, 28, 1], filters: 32, kernelSize: 3, activation: 'relu' }),
      tf.layers.maxPooling2d({ poolSize: 2 }),
      tf.layers.conv2d({ filters: 64, kernelSize: 3, activation: 'relu' }),
      tf.layers.maxPooling2d({ poolSize: 2 }),
      tf.layers.flatten(),
      tf.layers.dense({ units: 128, activation: 'relu' }),
      tf.layers.dense({ units: 10, activation: 'softmax' }),
    ],
  });
}

function makeBatch(batchSize: number): { images: tf.Tensor4D; labels: tf.Tensor2D } {
  const images = tf.randomUniform([batchSize, 28, 28, 1], 0, 1, 'float32', 1) as tf.Tensor4D;
  const classes = tf.randomUniform([batchSize], 0, 10, 'int32', 2) as tf.Tensor1D;
  const labels = tf.oneHot(classes, 10).toFloat() as tf.Tensor2D;
  classes.dispose();
  return { images, labels };
}

/** Returns the wall time in ms of `run`; both backends run kernels synchronously. */
function timeMs(run: () => void): number {
  const start = performance.now();
  run();
  return performance.now() - start;
}

function forwardOnly(model: tf.Sequential, images: tf.Tensor4D, labels: tf.Tensor2D): void {
  tf.tidy(() => {
    const loss = tf.metrics.categoricalCrossentropy(labels, model.apply(images) as tf.Tensor).mean();
    loss.dataSync();
  });
}

function gradientStep(model: tf.Sequential, images: tf.Tensor4D, labels: tf.Tensor2D): void {
  const { value, grads } = tf.variableGrads(
    () => tf.metrics.categoricalCrossentropy(labels, model.apply(images) as tf.Tensor).mean() as tf.Scalar,
  );
  value.dataSync();
  value.dispose();
  tf.dispose(Object.values(grads));
}

async function slowestKernels(run: () => void, count: number): Promise<BatchResult['slowestKernels']> {
  const profile = await tf.profile(run);
  const totals = new Map<string, { ms: number; calls: number }>();
  for (const kernel of profile.kernels) {
    const total = totals.get(kernel.name) ?? { ms: 0, calls: 0 };
    total.ms += kernel.kernelTimeMs as number;
    total.calls += 1;
    totals.set(kernel.name, total);
  }
  return [...totals.entries()]
    .map(([name, total]) => ({ name, ms: Number(total.ms.toFixed(2)), calls: total.calls }))
    .sort((a, b) => b.ms - a.ms)
    .slice(0, count);
}

async function measureBatch(backend: string, batchSize: number, steps: number, warmupSteps: number, profile: boolean): Promise<BatchResult> {
  const model = buildReferenceCnn();
  const { images, labels } = makeBatch(batchSize);
  for (let step = 0; step < warmupSteps; step++) {
    gradientStep(model, images, labels);
  }
  const stepTimes: number[] = [];
  const forwardTimes: number[] = [];
  for (let step = 0; step < steps; step++) {
    forwardTimes.push(timeMs(() => forwardOnly(model, images, labels)));
    stepTimes.push(timeMs(() => gradientStep(model, images, labels)));
  }
  const kernels = profile ? await slowestKernels(() => gradientStep(model, images, labels), 8) : [];
  tf.dispose([images, labels]);
  model.dispose();

  const stepMs = median(stepTimes);
  const forwardMs = median(forwardTimes);
  return {
    backend,
    batchSize,
    steps,
    imagesPerSecond: Number(((batchSize * 1000) / stepMs).toFixed(1)),
    stepMs: Number(stepMs.toFixed(2)),
    forwardMs: Number(forwardMs.toFixed(2)),
    backwardMs: Number((stepMs - forwardMs).toFixed(2)),
    loadAverage: loadAverage()[0],
    slowestKernels: kernels,
  };
}

function printResult(result: BatchResult): void {
  const kernels = result.slowestKernels.map((kernel) => `${kernel.name} ${kernel.ms} ms`).join(', ') || 'not profiled';
  console.log(
    `${result.backend.padEnd(4)} batch ${String(result.batchSize).padStart(3)}: ` +
      `${result.imagesPerSecond.toFixed(1).padStart(7)} images/s, step ${result.stepMs} ms ` +
      `(forward ${result.forwardMs} ms, backward ${result.backwardMs} ms), load average ${result.loadAverage}`,
  );
  console.log(`    slowest kernels: ${kernels}`);
}

/**
 * Times the coordinator's optimizer update on the CNN's weights, with a fixed gradient:
 * the arithmetic per weight does not depend on the values.
 */
function measureOptimizers(): OptimizerResult[] {
  const model = buildModel('cnn', { inputShape: [28, 28, 1], numClasses: 10 }, 42);
  const sizes = parameterSpecs(model).map((spec) => spec.shape.reduce((a, b) => a * b, 1));
  model.dispose();
  const parameters = sizes.reduce((a, b) => a + b, 0);
  const settings: OptimizerSettings[] = [
    { name: 'adam', lr: 0.001, momentum: 0 },
    { name: 'sgd', lr: 0.01, momentum: 0 },
    { name: 'sgd', lr: 0.01, momentum: 0.9 },
  ];
  return settings.map((setting) => {
    const optimizer = makeOptimizer(setting);
    const weights = sizes.map((size) => new Float32Array(size).fill(0.01));
    const gradients = sizes.map((size) => new Float32Array(size).fill(1e-3));
    for (let i = 0; i < 5; i++) optimizer.apply(weights, gradients);
    const times: number[] = [];
    for (let i = 0; i < OPTIMIZER_STEPS; i++) times.push(timeMs(() => optimizer.apply(weights, gradients)));
    const name = setting.momentum > 0 ? `${setting.name} (momentum ${setting.momentum})` : setting.name;
    const result = { optimizer: name, parameters, msPerStep: round(median(times), 3), loadAverage: loadAverage()[0] };
    console.log(`optimizer ${name.padEnd(20)} ${result.msPerStep} ms per step on ${parameters} weights, load average ${result.loadAverage}`);
    return result;
  });
}

/** Activates tfjs-node when it loads; returns why not otherwise. */
async function activateTensorflow(): Promise<string | undefined> {
  try {
    await import('@tensorflow/tfjs-node' as string);
  } catch (error) {
    return `@tensorflow/tfjs-node is not installed or failed to load (${(error as Error).message.split('\n')[0]})`;
  }
  if (!(await tf.setBackend('tensorflow'))) return 'tfjs-node loaded, but its backend failed to initialize';
  await tf.ready();
  return undefined;
}

async function measureBackend(backend: string, batches: number[], results: BatchResult[]): Promise<void> {
  const slow = backend === 'cpu';
  for (const batchSize of batches) {
    results.push(await measureBatch(backend, batchSize, slow ? CPU_STEPS : FAST_STEPS, slow ? CPU_WARMUP_STEPS : FAST_WARMUP_STEPS, !slow));
    printResult(results[results.length - 1]!);
  }
}

async function main(): Promise<void> {
  const outPath = flagValue(process.argv.slice(2), '--out', DEFAULT_OUT);
  registerWasmGradientKernels();
  await tf.setBackend('wasm');
  await tf.ready();
  const machine = describeMachine(tf);
  machine.backend = 'wasm, tensorflow where installed, cpu';
  printMachine('compute', machine);
  console.log(`backend wasm (single-threaded, SIMD), gradfleet kernels: ${WASM_GRADIENT_KERNELS.join(', ')}`);
  const results: BatchResult[] = [];
  await measureBackend('wasm', BATCHES, results);

  const tensorflowSkipped = await activateTensorflow();
  if (tensorflowSkipped) console.log(`backend tensorflow skipped: ${tensorflowSkipped}`);
  else await measureBackend('tensorflow', BATCHES, results);

  await tf.setBackend('cpu');
  await tf.ready();
  console.log(`backend cpu: batch ${CPU_BATCHES.join(', ')} only, ${CPU_STEPS} timed steps, no kernel profile (about 20 s per step)`);
  await measureBackend('cpu', CPU_BATCHES, results);

  const optimizers = measureOptimizers();
  writeResults(outPath, 'compute', machine, { model: 'keras-mnist-cnn', tensorflowSkipped: tensorflowSkipped ?? null, results, optimizers });
}

await main();
