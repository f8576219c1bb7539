/**
 * How many workers one coordinator can serve: a real Coordinator in this process, and 1 to
 * 64 synthetic workers in a child process, each with a WebSocket connection of its own on
 * 127.0.0.1. The synthetic workers send real hello, ready and gradient messages, with
 * gradients of the CNN's names and shapes, but compute nothing: they reply to each shard at
 * once with a gradient frame encoded in advance. So the steps/s measured are the
 * coordinator's own limit, and its CPU time per step (process.cpuUsage) shows what each
 * worker costs it.
 *
 * Run with `npm run build && node dist/bench/capacity.js [--steps N] [--workers 1,2,4] [--out PATH]`.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { WebSocket, type RawData } from 'ws';
import { selectBackend } from '../shared/backend.js';
import { decodeCoordinatorMessage, encodeMessage } from '../shared/codec.js';
import { loadDataset, type Dataset } from '../shared/data/dataset.js';
import { Logger } from '../shared/log.js';
import { COORDINATOR_DEFAULTS, type CoordinatorOptions } from '../shared/options.js';
import { PROTOCOL_VERSION, type WelcomeMessage } from '../shared/protocol.js';
import { GRADFLEET_VERSION } from '../shared/version.js';
import { Coordinator } from '../coordinator/coordinator.js';
import { describeMachine, flagValue, loadAverage, printMachine, processCpuMs, round, writeResults } from './machine.js';

const DEFAULT_OUT = 'bench/results/capacity.json';
const DEFAULT_WORKER_COUNTS = [1, 2, 4, 8, 16, 32, 64];
const DEFAULT_STEPS = 60;
/** Steps left out of the figures at the start of each run. */
const WARMUP_STEPS = 10;
const BATCH_PER_WORKER = 8;
/** Weights frames are about 900 kB; every other coordinator message is far smaller. */
const WEIGHTS_FRAME_MIN_BYTES = 64 * 1024;

interface CapacityResult {
  workers: number;
  measuredSteps: number;
  stepsPerSecond: number;
  imagesPerSecond: number;
  msPerStep: number;
  /** User plus system CPU time of the coordinator's process per step, in milliseconds. */
  coordinatorCpuMsPerStep: number;
  coordinatorCpuMsPerWorkerStep: number;
  /** Share of one core the coordinator used over the measured steps. */
  coordinatorCpuUtilization: number;
  /** CPU time of the process running the synthetic workers per step, in milliseconds. */
  syntheticWorkersCpuMsPerStep: number | null;
  loadAverage: number;
}

// ---------------------------------------------------------------------------
// The synthetic workers (child process)

/**
 * Returns a function that makes the gradient frame of a step. The map is encoded once
 * without its `step` field. Each call appends that field as a uint32 and raises the map's
 * entry count by one, so the frame decodes to the same message as one encoded whole.
 */
function gradientFrameFactory(welcome: WelcomeMessage, count: number): (step: number) => Buffer {
  const tensors = welcome.parameters.map((parameter) => {
    const data = new Float32Array(parameter.shape.reduce((a, b) => a * b, 1));
    for (let i = 0; i < data.length; i++) data[i] = ((i % 17) - 8) * 1e-4;
    return { name: parameter.name, shape: parameter.shape, dtype: 'float32' as const, data };
  });
  const partial = { type: 'gradient', count, loss: 2.3, correct: 1, computeMs: 0, tensors };
  const base = encodeMessage(partial as unknown as Parameters<typeof encodeMessage>[0]);
  // msgpackr 2 writes the map of a plain object as a map 16: 0xde and a big-endian entry count.
  if (base[0] !== 0xde || base.readUInt16BE(1) !== 6) throw new Error(`expected the gradient frame to start with a map 16 of 6 entries, got 0x${base.subarray(0, 3).toString('hex')}`);
  const suffix = Buffer.from([0xa4, ...Buffer.from('step'), 0xce, 0, 0, 0, 0]);
  return (step) => {
    const frame = Buffer.allocUnsafe(base.byteLength + suffix.byteLength);
    base.copy(frame);
    frame.writeUInt16BE(7, 1);
    suffix.copy(frame, base.byteLength);
    frame.writeUInt32BE(step, frame.byteLength - 4);
    return frame;
  };
}

/** Connects one synthetic worker, which replies to each shard with a ready-made gradient frame. */
function connectSyntheticWorker(url: string, index: number): Promise<void> {
  // A zero mask makes ws skip masking the outgoing frames (ws 8), which costs this process
  // CPU and changes nothing for the coordinator.
  const socket = new WebSocket(url, { perMessageDeflate: false, maxPayload: 256 * 1024 * 1024, generateMask: (mask) => mask.fill(0) });
  const frames = new Map<number, (step: number) => Buffer>();
  let welcome: WelcomeMessage | undefined;
  socket.on('open', () => {
    const hello = { type: 'hello', protocolVersion: PROTOCOL_VERSION, workerName: `synthetic-${index}`, backend: 'synthetic', gradfleetVersion: GRADFLEET_VERSION } as const;
    socket.send(encodeMessage(hello));
  });
  socket.on('message', (data: RawData) => {
    const frame = data as Buffer;
    if (frame.byteLength >= WEIGHTS_FRAME_MIN_BYTES) return;
    const message = decodeCoordinatorMessage(frame);
    if (message.type === 'welcome') {
      welcome = message;
      socket.send(encodeMessage({ type: 'ready', selfCheckMs: 1 }));
    } else if (message.type === 'shard') {
      const count = message.sampleIds.length;
      if (!frames.has(count)) frames.set(count, gradientFrameFactory(welcome!, count));
      socket.send(frames.get(count)!(message.step));
    }
  });
  return new Promise((resolve) => socket.on('close', () => resolve()));
}

async function runSyntheticWorkers(url: string, count: number): Promise<void> {
  await Promise.all(Array.from({ length: count }, (_, i) => connectSyntheticWorker(url, i + 1)));
}

// ---------------------------------------------------------------------------
// The coordinator (this process)

async function measure(workers: number, steps: number, dataset: Dataset): Promise<CapacityResult> {
  const output = mkdtempSync(join(tmpdir(), 'gradfleet-capacity-'));
  const options: CoordinatorOptions = {
    ...COORDINATOR_DEFAULTS,
    port: 0,
    metricsPort: 0,
    workers,
    batchSizePerWorker: BATCH_PER_WORKER,
    maxSteps: steps,
    epochs: 1,
    evaluateEveryEpoch: false,
    output,
    backend: 'wasm',
  };
  const coordinator = new Coordinator(options, new Logger({ format: 'text', level: 'warn', name: 'coordinator' }), dataset);
  await coordinator.start();
  const script = fileURLToPath(import.meta.url);
  const child = spawn(process.execPath, [script, '--synthetic-workers', `ws://127.0.0.1:${coordinator.port}`, '--count', String(workers)], {
    stdio: 'inherit',
  });
  const childExit = new Promise((resolve) => child.once('exit', resolve));
  // Synthetic workers that fail leave the coordinator waiting for them, so their exit ends the run.
  const childFailed = childExit.then((code) => {
    throw new Error(`the synthetic workers exited with status ${code} before the run ended`);
  });
  childFailed.catch(() => undefined);

  let started: { wall: number; cpu: NodeJS.CpuUsage; childCpu?: number } | undefined;
  let ended: { wall: number; cpu: NodeJS.CpuUsage; childCpu?: number } | undefined;
  coordinator.on('step', ({ step }) => {
    const mark = { wall: performance.now(), cpu: process.cpuUsage(), childCpu: processCpuMs(child.pid!) };
    if (step === WARMUP_STEPS - 1) started = mark;
    if (step >= WARMUP_STEPS) ended = mark;
  });
  try {
    await Promise.race([coordinator.run(), childFailed]);
  } finally {
    await coordinator.close();
  }
  await Promise.race([childExit, new Promise((resolve) => setTimeout(resolve, 5_000))]);
  if (child.exitCode === null) child.kill();
  rmSync(output, { recursive: true, force: true });
  if (!started || !ended) throw new Error(`no steps measured with ${workers} workers: --steps must be above ${WARMUP_STEPS}`);

  const measuredSteps = steps - WARMUP_STEPS;
  const wallMs = ended.wall - started.wall;
  const cpuMs = (ended.cpu.user - started.cpu.user + ended.cpu.system - started.cpu.system) / 1000;
  const childCpu = started.childCpu !== undefined && ended.childCpu !== undefined ? ended.childCpu - started.childCpu : undefined;
  return {
    workers,
    measuredSteps,
    stepsPerSecond: round((measuredSteps * 1000) / wallMs, 1),
    imagesPerSecond: round((measuredSteps * workers * BATCH_PER_WORKER * 1000) / wallMs, 0),
    msPerStep: round(wallMs / measuredSteps, 2),
    coordinatorCpuMsPerStep: round(cpuMs / measuredSteps, 2),
    coordinatorCpuMsPerWorkerStep: round(cpuMs / measuredSteps / workers, 3),
    coordinatorCpuUtilization: round(cpuMs / wallMs, 2),
    syntheticWorkersCpuMsPerStep: childCpu === undefined ? null : round(childCpu / measuredSteps, 2),
    loadAverage: loadAverage()[0],
  };
}

function printResult(result: CapacityResult): void {
  console.log(
    `${String(result.workers).padStart(3)} workers: ${String(result.stepsPerSecond).padStart(6)} steps/s, ` +
      `${String(result.imagesPerSecond).padStart(6)} images/s, ${String(result.msPerStep).padStart(7)} ms/step, ` +
      `coordinator CPU ${String(result.coordinatorCpuMsPerStep).padStart(7)} ms/step (${result.coordinatorCpuMsPerWorkerStep} ms per gradient, ` +
      `${Math.round(result.coordinatorCpuUtilization * 100)}% of a core), synthetic workers CPU ${result.syntheticWorkersCpuMsPerStep} ms/step, ` +
      `load average ${result.loadAverage}`,
  );
}

/**
 * Returns the first worker count at which images/s grew by less than 10% over the
 * previous count while the workers doubled: where the coordinator stops scaling.
 */
function saturationPoint(results: CapacityResult[]): number | null {
  for (let i = 1; i < results.length; i++) {
    if (results[i]!.imagesPerSecond < results[i - 1]!.imagesPerSecond * 1.1) return results[i]!.workers;
  }
  return null;
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const url = flagValue(argv, '--synthetic-workers', '');
  if (url !== '') {
    await runSyntheticWorkers(url, Number(flagValue(argv, '--count', '1')));
    return;
  }
  const outPath = flagValue(argv, '--out', DEFAULT_OUT);
  const steps = Number(flagValue(argv, '--steps', String(DEFAULT_STEPS)));
  const counts = flagValue(argv, '--workers', DEFAULT_WORKER_COUNTS.join(',')).split(',').map(Number);
  if (!Number.isInteger(steps) || steps <= WARMUP_STEPS) throw new Error(`--steps ${steps} is invalid: pass a whole number above ${WARMUP_STEPS}`);
  if (counts.some((count) => !Number.isInteger(count) || count < 1)) throw new Error(`--workers ${counts.join(',')} is invalid: pass whole numbers of at least 1, such as 1,2,4`);

  await selectBackend('wasm');
  const machine = describeMachine();
  machine.backend = 'wasm (coordinator only; the synthetic workers compute nothing)';
  printMachine('capacity', machine);
  console.log(`CNN, ${BATCH_PER_WORKER} images per worker, ${steps} steps per worker count (the first ${WARMUP_STEPS} not counted)`);
  // Enough images that no run reaches the end of an epoch, whose evaluation would be timed too.
  const dataset = await loadDataset({ testLimit: 100 });

  const results: CapacityResult[] = [];
  for (const workers of counts) {
    results.push(await measure(workers, steps, dataset));
    printResult(results[results.length - 1]!);
  }
  const saturatedAt = saturationPoint(results);
  console.log(saturatedAt === null ? 'images/s grew with every worker count' : `images/s stops growing (under 10% more for twice the workers) at ${saturatedAt} workers`);
  writeResults(outPath, 'capacity', machine, { model: 'keras-mnist-cnn', batchPerWorker: BATCH_PER_WORKER, stepsPerRun: steps, warmupSteps: WARMUP_STEPS, saturatedAt, results });
}

await main();
