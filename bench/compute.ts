/**
 * Measures how fast one process computes gradients of the reference MNIST CNN
 * (forward + backward of the mean categorical cross-entropy, `tf.variableGrads`)
 * on the wasm backend with gradfleet's kernels, and on the cpu backend for comparison.
 *
 * Run with `npm run build && node dist/bench/compute.js [--out PATH]`.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
import { registerWasmGradientKernels, WASM_GRADIENT_KERNELS } from '../shared/kernels/index.js';

const DEFAULT_OUT = 'bench/results/compute.json';
const WASM_BATCHES = [16, 32, 64, 128];
const CPU_BATCH = 16;
/** Timed steps per configuration; the cpu backend takes several seconds per step. */
const WASM_STEPS = 20;
const CPU_STEPS = 2;
const WASM_WARMUP_STEPS = 3;
const CPU_WARMUP_STEPS = 1;

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
  slowestKernels: { name: string; ms: number; calls: number }[];
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

function parseOutPath(argv: string[]): string {
  const index = argv.indexOf('--out');
  if (index === -1) {
    return DEFAULT_OUT;
  }
  const path = argv[index + 1];
  if (path === undefined || path.startsWith('--')) {
    throw new Error('--out needs a file path, for example --out bench/results/compute.json');
  }
  return path;
}

function makeBatch(batchSize: number): { images: tf.Tensor4D; labels: tf.Tensor2D } {
  const images = tf.randomUniform([batchSize, 28, 28, 1], 0, 1, 'float32', 1) as tf.Tensor4D;
  const classes = tf.randomUniform([batchSize], 0, 10, 'int32', 2) as tf.Tensor1D;
  const labels = tf.oneHot(classes, 10).toFloat() as tf.Tensor2D;
  classes.dispose();
  return { images, labels };
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
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

async function measureBatch(backend: string, batchSize: number, steps: number, warmupSteps: number): Promise<BatchResult> {
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
  const kernels = await slowestKernels(() => gradientStep(model, images, labels), 8);
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
    loadAverage: Number(os.loadavg()[0]!.toFixed(2)),
    slowestKernels: kernels,
  };
}

function printResult(result: BatchResult): void {
  const kernels = result.slowestKernels.map((kernel) => `${kernel.name} ${kernel.ms} ms`).join(', ');
  console.log(
    `${result.backend.padEnd(4)} batch ${String(result.batchSize).padStart(3)}: ` +
      `${result.imagesPerSecond.toFixed(1).padStart(7)} images/s, step ${result.stepMs} ms ` +
      `(forward ${result.forwardMs} ms, backward ${result.backwardMs} ms), load average ${result.loadAverage}`,
  );
  console.log(`    slowest kernels: ${kernels}`);
}

function describeMachine(): Record<string, string | number> {
  const cpus = os.cpus();
  return {
    cpuModel: cpus[0]?.model ?? 'unknown',
    cores: cpus.length,
    node: process.version,
    tfjs: tf.version.tfjs,
    platform: `${os.platform()} ${os.arch()}`,
  };
}

async function main(): Promise<void> {
  const outPath = parseOutPath(process.argv.slice(2));
  const machine = describeMachine();
  console.log(`machine: ${machine.cpuModel}, ${machine.cores} cores, Node ${machine.node}, tfjs ${machine.tfjs}`);

  registerWasmGradientKernels();
  await tf.setBackend('wasm');
  await tf.ready();
  console.log(`backend wasm (single-threaded, SIMD), gradfleet kernels: ${WASM_GRADIENT_KERNELS.join(', ')}`);
  const results: BatchResult[] = [];
  for (const batchSize of WASM_BATCHES) {
    results.push(await measureBatch('wasm', batchSize, WASM_STEPS, WASM_WARMUP_STEPS));
    printResult(results[results.length - 1]!);
  }

  await tf.setBackend('cpu');
  await tf.ready();
  results.push(await measureBatch('cpu', CPU_BATCH, CPU_STEPS, CPU_WARMUP_STEPS));
  printResult(results[results.length - 1]!);

  mkdirSync(dirname(outPath), { recursive: true });
  const report = { date: new Date().toISOString(), machine, model: 'keras-mnist-cnn', results };
  writeFileSync(outPath, `${JSON.stringify(report, null, 2)}\n`);
  console.log(`wrote ${outPath}`);
}

await main();
