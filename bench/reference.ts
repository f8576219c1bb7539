/**
 * Compares gradfleet with PyTorch DistributedDataParallel on the same machine, side by side:
 * the Keras MNIST CNN, the bundled MNIST, Adam at lr 0.001, 64 images per process or worker,
 * one compute thread each.
 *
 * - compute: images/s of one gradfleet wasm gradient at batch 64 against one PyTorch process
 *   training at batch 64, which also runs Adam. Target: gradfleet ≥ 0.5 × PyTorch.
 * - scaling: gradfleet end to end with 1 and 2 workers at 64 images per worker (the last
 *   epoch's images/s) against PyTorch DDP (gloo on 127.0.0.1) with 1 and 2 processes
 *   (target: gradfleet 2 workers ≥ 1.8 × 1 worker).
 *
 * The measurements alternate within each repeat, so that a change in load from other jobs
 * falls on both frameworks. Needs Debian's python3-torch and python3-numpy.
 *
 * Run with `npm run build && node dist/bench/reference.js [--repeats N] [--train-limit N] [--out PATH]`.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
import { loadDataset } from '../shared/data/dataset.js';
import { registerWasmGradientKernels } from '../shared/kernels/index.js';
import { buildModel } from '../shared/models.js';
import { computeGradients } from '../shared/training.js';
import { readClusterFlags, runCluster, type ClusterResult } from './cluster.js';
import { describeMachine, loadAverage, median, printMachine, round, writeResults } from './machine.js';

const DEFAULT_OUT = 'bench/results/reference.json';
const BATCH = 64;
const COMPUTE_WARMUP_STEPS = 5;
const COMPUTE_STEPS = 30;
const TORCH_WARMUP_STEPS = 10;
const TORCH_STEPS = 100;
const GRADFLEET_EPOCHS = 2;
const TEST_LIMIT = 500;
const RUN_TIMEOUT_MS = 20 * 60 * 1000;
const COMPUTE_TARGET = 0.5;
const SCALING_TARGET = 1.8;

const referenceScript = fileURLToPath(new URL('../../bench/reference.py', import.meta.url));

/** Returns the Python to run: GRADFLEET_PYTHON, else Debian's /usr/bin/python3, else python3 on PATH. */
function pythonCommand(): string {
  if (process.env.GRADFLEET_PYTHON) return process.env.GRADFLEET_PYTHON;
  return existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
}

/** Returns PyTorch's version, or undefined when torch or numpy does not import in `python`. */
function torchVersion(python: string): string | undefined {
  try {
    return execFileSync(python, ['-c', 'import numpy, torch; print(torch.__version__)'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
  } catch {
    return undefined;
  }
}

interface TorchRun {
  processes: number;
  perProcessImagesPerSecond: number[];
  totalImagesPerSecond: number;
  lastLoss: number;
  loadAverage: number;
}

function runTorch(python: string, processes: number): TorchRun {
  const args = [referenceScript, '--processes', String(processes), '--batch-size-per-process', String(BATCH)];
  args.push('--warmup-steps', String(TORCH_WARMUP_STEPS), '--steps', String(TORCH_STEPS));
  const output = execFileSync(python, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], timeout: RUN_TIMEOUT_MS });
  const report = JSON.parse(output.trim().split('\n').pop()!) as TorchRun;
  return { ...report, loadAverage: loadAverage()[0] };
}

/** Images/s of one wasm gradient (forward and backward, as a worker computes it) at batch 64, on this thread. */
async function measureGradfleetCompute(images: Uint8Array, labels: Uint8Array): Promise<{ imagesPerSecond: number; stepMs: number; loadAverage: number }> {
  const model = buildModel('cnn', { inputShape: [28, 28, 1], numClasses: 10 }, 42);
  const batch = { images: images.subarray(0, BATCH * 784), labels: labels.subarray(0, BATCH), count: BATCH };
  for (let step = 0; step < COMPUTE_WARMUP_STEPS; step++) computeGradients(model, batch, 10);
  const stepTimes: number[] = [];
  for (let step = 0; step < COMPUTE_STEPS; step++) {
    const started = performance.now();
    computeGradients(model, batch, 10);
    stepTimes.push(performance.now() - started);
  }
  model.dispose();
  const stepMs = median(stepTimes);
  return { imagesPerSecond: round((BATCH * 1000) / stepMs, 1), stepMs: round(stepMs, 2), loadAverage: loadAverage()[0] };
}

interface GradfleetRun {
  imagesPerSecond: number;
  epochSeconds: number;
  steps: number;
  /** CPU time over wall time during the measured epoch; 1.0 is one core. */
  coordinatorCpuShare: number;
  workerCpuShares: number[];
  loadAverage: number;
}

function summarizeCluster(result: ClusterResult): GradfleetRun {
  const cpu = result.lastEpochCpu;
  return {
    imagesPerSecond: round(result.measured.imagesPerSecond, 1),
    epochSeconds: round(result.measured.elapsedSeconds, 2),
    steps: result.measured.steps,
    coordinatorCpuShare: round(cpu.coordinatorSeconds / cpu.wallSeconds, 3),
    workerCpuShares: cpu.workerSeconds.map((seconds) => round(seconds / cpu.wallSeconds, 3)),
    loadAverage: loadAverage()[0],
  };
}

async function runGradfleet(workers: number, trainLimit: number): Promise<GradfleetRun> {
  const result = await runCluster({ workers, batchSizePerWorker: BATCH, trainLimit, epochs: GRADFLEET_EPOCHS, testLimit: TEST_LIMIT, timeoutMs: RUN_TIMEOUT_MS });
  return summarizeCluster(result);
}

function verdict(ratio: number, target: number): string {
  return ratio >= target ? `met (${ratio.toFixed(2)} ≥ ${target})` : `missed by ${(target - ratio).toFixed(2)} (${ratio.toFixed(2)} < ${target})`;
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const { outPath, repeats, trainLimit } = readClusterFlags(argv, DEFAULT_OUT, BATCH);

  // process.exit runs the exit handler of bench/cluster.ts, which stops gradfleet's processes.
  process.on('SIGINT', () => process.exit(130));
  process.on('SIGTERM', () => process.exit(143));
  const python = pythonCommand();
  const torch = torchVersion(python);
  if (torch === undefined) {
    // Skipped rather than failed, so that `npm run bench` still runs on machines without PyTorch.
    console.log(
      `reference: skipped, because PyTorch and numpy do not import in ${python}. Install them with ` +
        '"apt-get install -y python3-torch python3-numpy", or point GRADFLEET_PYTHON at an interpreter that has them.',
    );
    return;
  }
  registerWasmGradientKernels();
  await tf.setBackend('wasm');
  await tf.ready();
  const machine = describeMachine(tf);
  printMachine('reference', machine);
  console.log(`PyTorch ${torch} (${python}), gloo on 127.0.0.1, 1 thread per process; gradfleet wasm, 1 compute thread per worker`);

  const { train } = await loadDataset({ trainLimit: BATCH });
  const runs = [];
  for (let repeat = 1; repeat <= repeats; repeat++) {
    const compute = await measureGradfleetCompute(train.images, train.labels);
    console.log(`[${repeat}] gradfleet wasm gradient, batch 64: ${compute.imagesPerSecond} images/s (load ${compute.loadAverage})`);
    const torch1 = runTorch(python, 1);
    console.log(`[${repeat}] PyTorch DDP 1 process, batch 64: ${torch1.totalImagesPerSecond} images/s (load ${torch1.loadAverage})`);
    const torch2 = runTorch(python, 2);
    console.log(`[${repeat}] PyTorch DDP 2 processes, 64 each: ${torch2.totalImagesPerSecond} images/s, per process ${torch2.perProcessImagesPerSecond.join(', ')} (load ${torch2.loadAverage})`);
    const gradfleet1 = await runGradfleet(1, trainLimit);
    console.log(`[${repeat}] gradfleet 1 worker, 64 per worker: ${gradfleet1.imagesPerSecond} images/s (load ${gradfleet1.loadAverage})`);
    const gradfleet2 = await runGradfleet(2, trainLimit);
    console.log(`[${repeat}] gradfleet 2 workers, 64 per worker: ${gradfleet2.imagesPerSecond} images/s (load ${gradfleet2.loadAverage})`);
    const ratios = {
      computeVsTorch: round(compute.imagesPerSecond / torch1.totalImagesPerSecond, 3),
      gradfleetScaling: round(gradfleet2.imagesPerSecond / gradfleet1.imagesPerSecond, 3),
      torchScaling: round(torch2.totalImagesPerSecond / torch1.totalImagesPerSecond, 3),
    };
    console.log(
      `[${repeat}] compute vs PyTorch ${ratios.computeVsTorch}: ${verdict(ratios.computeVsTorch, COMPUTE_TARGET)}; ` +
        `gradfleet 2/1 workers ${ratios.gradfleetScaling}: ${verdict(ratios.gradfleetScaling, SCALING_TARGET)}; PyTorch 2/1 processes ${ratios.torchScaling}`,
    );
    runs.push({ repeat, gradfleetCompute: compute, torch1, torch2, gradfleet1, gradfleet2, ratios });
  }

  writeResults(outPath, 'reference', machine, {
    torch: { version: torch, python, backend: 'gloo', threadsPerProcess: 1, warmupSteps: TORCH_WARMUP_STEPS, steps: TORCH_STEPS },
    gradfleet: { backend: 'wasm', trainLimit, epochs: GRADFLEET_EPOCHS, measuredEpoch: GRADFLEET_EPOCHS, testLimit: TEST_LIMIT },
    batchSizePerProcess: BATCH,
    targets: { computeVsTorch: COMPUTE_TARGET, gradfleetScaling: SCALING_TARGET },
    runs,
  });
}

await main();
