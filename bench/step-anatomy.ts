/**
 * Measures where the time of a step goes in a real run: a coordinator and two workers, each a
 * process of its own on 127.0.0.1, training the reference CNN on the wasm backend with
 * 64 images per worker. The coordinator logs each step's phase times at debug level
 * ("step applied"); this benchmark reads those lines and the coordinator's CPU time.
 *
 * Run with `npm run build && node dist/bench/step-anatomy.js [--steps N] [--out PATH]`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { describeMachine, flagValue, loadAverage, mean, median, printMachine, processCpuMs, round, writeResults } from './machine.js';

const DEFAULT_OUT = 'bench/results/step-anatomy.json';
const DEFAULT_STEPS = 250;
/** Steps left out of the figures while the processes warm up (JIT, wasm, first allocations). */
const WARMUP_STEPS = 20;
const WORKERS = 2;
const BATCH_PER_WORKER = 64;
const PHASES = ['encode', 'broadcast', 'scatter', 'wait', 'decode', 'accept', 'average', 'optimizer'] as const;

interface StepLine {
  step: number;
  firstRoundTripMs: number;
  lastRoundTripMs: number;
  slowestComputeMs: number;
  phasesMs: Record<(typeof PHASES)[number], number>;
}

const cli = fileURLToPath(new URL('../cli/main.js', import.meta.url));

/** One worker's debug line per shard: the time around its computation, in milliseconds. */
interface WorkerLine {
  step: number;
  threadOverheadMs: number;
  encodeAndSendMs: number;
}

/** Starts a worker that logs at debug level; its "gradient sent" lines after warm-up go into `lines`. */
function startWorker(url: string, index: number, lines: WorkerLine[]): ChildProcess {
  const args = [cli, 'worker', '--coordinator', url, '--metrics-port', '0', '--backend', 'wasm', '--name', `bench-worker-${index}`];
  args.push('--log-level', 'debug', '--log-format', 'json');
  const worker = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  createInterface({ input: worker.stdout! }).on('line', (text) => {
    const line = JSON.parse(text) as Record<string, unknown>;
    if (line.msg === 'gradient sent' && (line.step as number) >= WARMUP_STEPS) lines.push(line as unknown as WorkerLine);
  });
  return worker;
}

/** Runs the training and returns the coordinator's "step applied" lines and its CPU time over the measured steps. */
async function runTraining(steps: number): Promise<{ lines: StepLine[]; workerLines: WorkerLine[]; cpuMs?: number; wallMs: number }> {
  const output = mkdtempSync(join(tmpdir(), 'gradfleet-anatomy-'));
  const args = [cli, 'coordinator', '--port', '0', '--metrics-port', '0', '--workers', String(WORKERS)];
  args.push('--batch-size-per-worker', String(BATCH_PER_WORKER), '--max-steps', String(steps), '--epochs', '1');
  args.push('--test-limit', '500', '--backend', 'wasm', '--log-format', 'json', '--log-level', 'debug', '--output', output);
  const coordinator = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  const workers: ChildProcess[] = [];
  const lines: StepLine[] = [];
  const workerLines: WorkerLine[] = [];
  let cpuStart: number | undefined;
  let cpuEnd: number | undefined;
  let wallStart = 0;
  let wallEnd = 0;

  for await (const text of createInterface({ input: coordinator.stdout! })) {
    const line = JSON.parse(text) as Record<string, unknown>;
    if (line.msg === 'coordinator listening') {
      for (let i = 0; i < WORKERS; i++) workers.push(startWorker(line.url as string, i + 1, workerLines));
      continue;
    }
    if (line.msg !== 'step applied') continue;
    const step = line as unknown as StepLine;
    if (step.step === WARMUP_STEPS - 1) {
      cpuStart = processCpuMs(coordinator.pid!);
      wallStart = performance.now();
    }
    if (step.step < WARMUP_STEPS) continue;
    lines.push(step);
    cpuEnd = processCpuMs(coordinator.pid!);
    wallEnd = performance.now();
    if (step.step % 50 === 0) console.log(`  step ${step.step}/${steps}, load average ${loadAverage()[0]}`);
  }
  await Promise.all(workers.map((worker) => new Promise((resolve) => (worker.exitCode !== null ? resolve(undefined) : worker.once('exit', resolve)))));
  rmSync(output, { recursive: true, force: true });
  if (lines.length === 0) throw new Error('the coordinator logged no "step applied" line; run it by hand with --log-level debug to see why');
  const cpuMs = cpuStart !== undefined && cpuEnd !== undefined ? cpuEnd - cpuStart : undefined;
  return { lines, workerLines, cpuMs, wallMs: wallEnd - wallStart };
}

function summarize(values: number[]): { meanMs: number; medianMs: number } {
  return { meanMs: round(mean(values), 3), medianMs: round(median(values), 3) };
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const outPath = flagValue(argv, '--out', DEFAULT_OUT);
  const steps = Number(flagValue(argv, '--steps', String(DEFAULT_STEPS)));
  if (!Number.isInteger(steps) || steps <= WARMUP_STEPS) throw new Error(`--steps ${steps} is invalid: pass a whole number above ${WARMUP_STEPS}`);
  const machine = describeMachine();
  machine.backend = 'wasm';
  printMachine('step-anatomy', machine);
  console.log(`${WORKERS} workers and a coordinator as processes, CNN, ${BATCH_PER_WORKER} images per worker, ${steps} steps (the first ${WARMUP_STEPS} not counted)`);

  const { lines, workerLines, cpuMs, wallMs } = await runTraining(steps);
  const phases = Object.fromEntries(PHASES.map((phase) => [phase, summarize(lines.map((line) => line.phasesMs[phase]))]));
  const stepMs = lines.map((line) => PHASES.reduce((sum, phase) => sum + line.phasesMs[phase], 0));
  const coordinatorWork = lines.map((line) => PHASES.filter((phase) => phase !== 'wait').reduce((sum, phase) => sum + line.phasesMs[phase], 0));
  const derived = {
    slowestWorkerCompute: summarize(lines.map((line) => line.slowestComputeMs)),
    // The slowest worker's round trip minus its compute: weights and shard transfer and
    // decoding, handing them to the gradient thread, and encoding and sending the gradient.
    transferAndWorkerCodec: summarize(lines.map((line) => line.lastRoundTripMs - line.slowestComputeMs)),
    waitForSlowestWorker: summarize(lines.map((line) => line.lastRoundTripMs - line.firstRoundTripMs)),
    // Measured by each worker (its "gradient sent" debug line), over the shards of both workers.
    workerThreadOverhead: summarize(workerLines.map((line) => line.threadOverheadMs)),
    workerEncodeAndSend: summarize(workerLines.map((line) => line.encodeAndSendMs)),
  };
  const results = {
    workers: WORKERS,
    batchPerWorker: BATCH_PER_WORKER,
    measuredSteps: lines.length,
    stepMs: summarize(stepMs),
    stepsPerSecond: round((lines.length * 1000) / wallMs, 2),
    coordinatorCpuMsPerStep: cpuMs === undefined ? null : round(cpuMs / lines.length, 2),
    coordinatorWorkMsPerStep: summarize(coordinatorWork),
    coordinatorPhasesMs: phases,
    derivedMs: derived,
  };

  console.log(`step: mean ${results.stepMs.meanMs} ms, median ${results.stepMs.medianMs} ms, ${results.stepsPerSecond} steps/s`);
  for (const phase of PHASES) console.log(`  coordinator ${phase.padEnd(10)} mean ${String(phases[phase]!.meanMs).padStart(8)} ms  median ${phases[phase]!.medianMs} ms`);
  for (const [name, value] of Object.entries(derived)) console.log(`  ${name.padEnd(22)} mean ${String(value.meanMs).padStart(8)} ms  median ${value.medianMs} ms`);
  console.log(`coordinator work (all phases but wait): mean ${results.coordinatorWorkMsPerStep.meanMs} ms per step; coordinator CPU ${results.coordinatorCpuMsPerStep} ms per step`);
  writeResults(outPath, 'step-anatomy', machine, results);
}

await main();
