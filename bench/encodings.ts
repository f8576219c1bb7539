/**
 * Compares the gradient encodings (`--gradient-encoding fp32|fp16|int8`):
 *
 * 1. Bytes of one gradient message of the reference MNIST CNN in each encoding, and the time
 *    to encode and decode it, measured on Gaussian values of the gradient's size.
 * 2. A real training run per encoding: `gradfleet launch --workers 2 --epochs 3` (global batch
 *    64, Adam lr 0.001, seed 42), with the test accuracy after the last epoch and the bytes the
 *    coordinator received per step (gradfleet_received_bytes_total, scraped at each epoch end).
 *
 * Run with `npm run build && node dist/bench/encodings.js [--out PATH] [--epochs N]
 * [--train-limit N] [--encodings fp32,int8] [--bytes-only]`. The training runs take several
 * minutes each on 2 cores; --bytes-only skips them.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { tf } from '../shared/backend.js';
import { decodeWorkerMessage, encodeMessage } from '../shared/codec.js';
import { GRADIENT_ENCODINGS, type GradientEncoding } from '../shared/encoding.js';
import { buildModel, parameterSpecs } from '../shared/models.js';
import type { GradientMessage } from '../shared/protocol.js';
import { describeMachine, flagValue, loadAverage, median, printMachine, writeResults } from './machine.js';

const DEFAULT_OUT = 'bench/results/encodings.json';
/** Timed encode-decode pairs per encoding, after CODEC_WARMUP untimed ones that let V8 compile the loops. */
const CODEC_REPEATS = 20;
const CODEC_WARMUP = 5;

interface MessageSize {
  encoding: GradientEncoding;
  bytes: number;
  /** Bytes relative to the fp32 message. */
  ratio: number;
  encodeMs: number;
  decodeMs: number;
}

interface TrainingRun {
  encoding: GradientEncoding;
  command: string;
  epochs: { epoch: number; seconds: number; testAccuracy: number; testLoss: number; imagesPerSecond: number; receivedBytes?: number; steps: number }[];
  testAccuracy: number;
  /** Coordinator's received bytes over the run divided by its steps: the gradients of every worker plus small messages. */
  receivedBytesPerStep?: number;
  wallSeconds: number;
  loadAverageBefore: [number, number, number];
  loadAverageAfter: [number, number, number];
}

/** Returns Gaussian values with standard deviation `sigma`, from a fixed-seed generator. */
function gaussian(length: number, sigma: number, seed: number): Float32Array {
  let state = seed >>> 0;
  const uniform = () => {
    state = (state * 1664525 + 1013904223) >>> 0;
    return (state + 1) / 2 ** 32;
  };
  const values = new Float32Array(length);
  for (let i = 0; i < length; i++) values[i] = sigma * Math.sqrt(-2 * Math.log(uniform())) * Math.cos(2 * Math.PI * uniform());
  return values;
}

/** Measures one CNN gradient message per encoding: its size and its codec time. */
function measureMessages(): MessageSize[] {
  const model = buildModel('cnn', { inputShape: [28, 28, 1], numClasses: 10 }, 42);
  const specs = parameterSpecs(model);
  model.dispose();
  const tensors = specs.map((spec, t) => {
    const length = spec.shape.reduce((product, size) => product * size, 1);
    return { name: spec.name, shape: spec.shape, dtype: 'float32' as const, data: gaussian(length, 1e-3, t + 1) };
  });
  const sizes: MessageSize[] = [];
  for (const encoding of GRADIENT_ENCODINGS) {
    const message: GradientMessage = { type: 'gradient', step: 0, count: 32, loss: 0.1, correct: 30, computeMs: 60, tensors, encoding };
    const encodeTimes: number[] = [];
    const decodeTimes: number[] = [];
    let frame = encodeMessage(message);
    for (let repeat = 0; repeat < CODEC_WARMUP; repeat++) decodeWorkerMessage(encodeMessage(message));
    for (let repeat = 0; repeat < CODEC_REPEATS; repeat++) {
      let start = performance.now();
      frame = encodeMessage(message);
      encodeTimes.push(performance.now() - start);
      start = performance.now();
      decodeWorkerMessage(frame);
      decodeTimes.push(performance.now() - start);
    }
    sizes.push({ encoding, bytes: frame.byteLength, ratio: 0, encodeMs: median(encodeTimes), decodeMs: median(decodeTimes) });
  }
  for (const size of sizes) size.ratio = Number((size.bytes / sizes[0]!.bytes).toFixed(4));
  return sizes;
}

/** Reads gradfleet_received_bytes_total from a coordinator's /metrics, or undefined when it cannot. */
async function receivedBytes(metricsUrl: string): Promise<number | undefined> {
  try {
    const text = await (await fetch(metricsUrl)).text();
    const line = text.split('\n').find((row) => row.startsWith('gradfleet_received_bytes_total'));
    return line ? Number(line.split(' ').at(-1)) : undefined;
  } catch {
    return undefined;
  }
}

/** Runs `gradfleet launch` with one encoding and returns its epochs, parsed from the JSON log. */
async function trainWith(encoding: GradientEncoding, epochs: number, trainLimit: number | undefined): Promise<TrainingRun> {
  const main = fileURLToPath(new URL('../cli/main.js', import.meta.url));
  const output = mkdtempSync(join(os.tmpdir(), `gradfleet-bench-${encoding}-`));
  const args = ['launch', '--workers', '2', '--epochs', String(epochs), '--gradient-encoding', encoding, '--port', '0', '--metrics-port', '0', '--log-format', 'json', '--output', output];
  if (trainLimit !== undefined) args.push('--train-limit', String(trainLimit));
  const run: TrainingRun = { encoding, command: `gradfleet ${args.join(' ')}`, epochs: [], testAccuracy: NaN, wallSeconds: 0, loadAverageBefore: loadAverage(), loadAverageAfter: [0, 0, 0] };
  console.log(`training: ${run.command}`);

  const started = performance.now();
  const child = spawn(process.execPath, [main, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  let metricsUrl: string | undefined;
  let lastStep = 0;
  for await (const line of createInterface({ input: child.stdout! })) {
    const json = line.startsWith('[coordinator] ') ? line.slice('[coordinator] '.length) : undefined;
    if (!json?.startsWith('{')) continue;
    const entry = JSON.parse(json) as Record<string, unknown>;
    if (entry.msg === 'coordinator listening') metricsUrl = entry.metrics as string;
    if (entry.msg !== 'epoch complete') continue;
    lastStep += entry.steps as number;
    const bytes = metricsUrl ? await receivedBytes(metricsUrl) : undefined;
    const epoch = {
      epoch: entry.epoch as number,
      seconds: Number((entry.elapsedSeconds as number).toFixed(1)),
      testAccuracy: entry.testAccuracy as number,
      testLoss: entry.testLoss as number,
      imagesPerSecond: Math.round(entry.imagesPerSecond as number),
      steps: lastStep,
      ...(bytes !== undefined && { receivedBytes: bytes }),
    };
    run.epochs.push(epoch);
    console.log(`  ${encoding} epoch ${epoch.epoch}: test accuracy ${epoch.testAccuracy}, ${epoch.seconds} s, ${epoch.imagesPerSecond} images/s, load ${loadAverage().join(' ')}`);
  }

  const status = await new Promise<number | null>((resolve) => (child.exitCode !== null ? resolve(child.exitCode) : child.once('exit', resolve)));
  rmSync(output, { recursive: true, force: true });

  if (status !== 0) throw new Error(`${run.command} exited with status ${status}`);
  const last = run.epochs.at(-1);
  if (!last) throw new Error(`${run.command} printed no "epoch complete" line`);
  run.testAccuracy = last.testAccuracy;
  if (last.receivedBytes !== undefined) run.receivedBytesPerStep = Math.round(last.receivedBytes / last.steps);
  run.wallSeconds = Number(((performance.now() - started) / 1000).toFixed(1));
  run.loadAverageAfter = loadAverage();
  return run;
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const out = flagValue(argv, '--out', DEFAULT_OUT);
  const epochs = Number(flagValue(argv, '--epochs', '3'));
  const trainLimitFlag = flagValue(argv, '--train-limit', '');
  const trainLimit = trainLimitFlag === '' ? undefined : Number(trainLimitFlag);
  const encodings = flagValue(argv, '--encodings', GRADIENT_ENCODINGS.join(',')).split(',') as GradientEncoding[];
  const unknown = encodings.filter((encoding) => !GRADIENT_ENCODINGS.includes(encoding));
  if (unknown.length > 0) throw new Error(`unknown encoding in --encodings: ${unknown.join(', ')}; choose from ${GRADIENT_ENCODINGS.join(', ')}`);

  // This process only builds the model to read its shapes; the training runs pick their
  // backend with --backend auto, which is wasm where tfjs-node is not installed.
  await tf.setBackend('cpu');
  const machine = describeMachine(tf);
  printMachine('encodings', machine);

  const messages = measureMessages();
  for (const size of messages) {
    console.log(`  ${size.encoding}: ${size.bytes} bytes per gradient message (${(100 * size.ratio).toFixed(1)}% of fp32), encode ${size.encodeMs.toFixed(2)} ms, decode ${size.decodeMs.toFixed(2)} ms`);
  }

  const runs: TrainingRun[] = [];
  if (!argv.includes('--bytes-only')) {
    for (const encoding of encodings) runs.push(await trainWith(encoding, epochs, trainLimit));
  }

  writeResults(out, 'encodings', machine, { trainingBackend: 'auto', messages, runs });
}

await main();
