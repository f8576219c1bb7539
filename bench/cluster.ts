/**
 * Runs a gradfleet coordinator and its workers as separate processes, on 127.0.0.1 or each
 * in a network namespace of its own, and returns the epoch lines and the CPU time of every
 * process during the last epoch. The reference and scaling benchmarks share it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { flagValue, processCpuMs } from './machine.js';

const cli = fileURLToPath(new URL('../cli/main.js', import.meta.url));

/** Every coordinator and worker started here that has not exited yet. */
const liveProcesses = new Set<ChildProcess>();

/**
 * Sends SIGTERM to every process started here that is still running. It runs on exit, so a
 * benchmark that exits on a signal leaves no coordinator or worker behind, also none inside
 * a namespace that is being deleted.
 */
export function stopClusterProcesses(): void {
  for (const child of liveProcesses) child.kill('SIGTERM');
}
process.on('exit', stopClusterProcesses);

/** Namespaces made by bench/netns.sh: the coordinator's, its address there, and one per worker. */
export interface ClusterNamespaces {
  coordinator: string;
  coordinatorAddress: string;
  workers: string[];
}

export interface ClusterOptions {
  workers: number;
  batchSizePerWorker: number;
  /** Training images per epoch, counted from the start of MNIST. */
  trainLimit: number;
  /** Epochs to train; the last one is the measured one, the ones before it are warm-up. */
  epochs: number;
  /** Test images evaluated after the last epoch; their time is inside the CPU window, not in images/s. */
  testLimit: number;
  /** Absent: every process on 127.0.0.1. */
  namespaces?: ClusterNamespaces;
  timeoutMs: number;
}

/** The fields of the coordinator's "epoch complete" JSON log line that the benchmarks use. */
export interface EpochLine {
  epoch: number;
  steps: number;
  elapsedSeconds: number;
  imagesPerSecond: number;
}

export interface ClusterResult {
  epochs: EpochLine[];
  /** The last epoch's line: the measured figure. */
  measured: EpochLine;
  /**
   * CPU seconds of each process between the last two epoch lines, and that window's wall
   * time. The window holds the last epoch's training and its test evaluation.
   */
  lastEpochCpu: { wallSeconds: number; coordinatorSeconds: number; workerSeconds: number[] };
}

/**
 * Returns the user plus system CPU time of a process in seconds, from /proc/PID/stat (Linux
 * only), or NaN when the process has already been reaped.
 */
export function processCpuSeconds(pid: number): number {
  const milliseconds = processCpuMs(pid);
  return milliseconds === undefined ? Number.NaN : milliseconds / 1000;
}

/** Starts `node dist/cli/main.js ARGS`, inside `namespace` when given; `ip netns exec` execs, so the pid is node's. */
function startGradfleet(args: string[], namespace: string | undefined, stdout: 'pipe' | 'inherit'): ChildProcess {
  const command = namespace === undefined ? process.execPath : 'ip';
  const commandArgs = namespace === undefined ? [cli, ...args] : ['netns', 'exec', namespace, process.execPath, cli, ...args];
  const child = spawn(command, commandArgs, { stdio: ['ignore', stdout, 'inherit'] });
  liveProcesses.add(child);
  child.once('exit', () => liveProcesses.delete(child));
  return child;
}

function coordinatorArgs(options: ClusterOptions, output: string): string[] {
  const args = ['coordinator', '--workers', String(options.workers), '--batch-size-per-worker', String(options.batchSizePerWorker)];
  args.push('--train-limit', String(options.trainLimit), '--test-limit', String(options.testLimit), '--epochs', String(options.epochs));
  args.push('--evaluate-every-epoch', 'false', '--backend', 'wasm', '--log-format', 'json', '--metrics-port', '0', '--output', output);
  if (options.namespaces === undefined) return [...args, '--host', '127.0.0.1', '--port', '0'];
  // The namespaces are reachable only from each other on this host, so the traffic needs no
  // token and TLS; --insecure is what the coordinator requires for a non-loopback --host then.
  return [...args, '--host', options.namespaces.coordinatorAddress, '--port', '7070', '--insecure'];
}

function workerArgs(url: string, index: number): string[] {
  return ['worker', '--coordinator', url, '--backend', 'wasm', '--metrics-port', '0', '--name', `bench-worker-${index}`, '--log-level', 'warn'];
}

function exited(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => child.once('exit', (code) => resolve(code)));
}

/** Trains with a coordinator and `options.workers` workers and returns the epoch figures and CPU times. */
export async function runCluster(options: ClusterOptions): Promise<ClusterResult> {
  if (options.namespaces !== undefined && options.namespaces.workers.length < options.workers) {
    throw new Error(`${options.workers} workers need as many namespaces, but ${options.namespaces.workers.length} were given`);
  }
  const output = mkdtempSync(join(tmpdir(), 'gradfleet-bench-'));
  const coordinator = startGradfleet(coordinatorArgs(options, output), options.namespaces?.coordinator, 'pipe');
  const workers: ChildProcess[] = [];
  const killAll = () => [coordinator, ...workers].forEach((child) => child.exitCode === null && child.kill('SIGTERM'));
  const timer = setTimeout(killAll, options.timeoutMs);

  const epochs: EpochLine[] = [];
  const samples: { wall: number; coordinator: number; workers: number[] }[] = [];
  const sample = () => ({
    wall: performance.now() / 1000,
    coordinator: processCpuSeconds(coordinator.pid!),
    workers: workers.map((worker) => processCpuSeconds(worker.pid!)),
  });
  try {
    for await (const text of createInterface({ input: coordinator.stdout! })) {
      if (!text.startsWith('{')) continue;
      const line = JSON.parse(text) as Record<string, unknown>;
      if (line.msg === 'coordinator listening') {
        for (let i = 0; i < options.workers; i++) {
          workers.push(startGradfleet(workerArgs(line.url as string, i + 1), options.namespaces?.workers[i], 'inherit'));
        }
      } else if (line.msg === 'epoch complete') {
        samples.push(sample());
        epochs.push({ epoch: line.epoch as number, steps: line.steps as number, elapsedSeconds: line.elapsedSeconds as number, imagesPerSecond: line.imagesPerSecond as number });
      }
    }
    const status = await exited(coordinator);
    await Promise.all(workers.map(exited));
    if (status !== 0) throw new Error(`the coordinator exited with status ${status} (killed after ${options.timeoutMs} ms when null); its errors are printed above`);
  } finally {
    clearTimeout(timer);
    killAll();
    rmSync(output, { recursive: true, force: true });
  }

  if (epochs.length < 2) throw new Error(`the coordinator logged ${epochs.length} epoch lines; the measurement needs at least 2 (pass --epochs 2 or more)`);
  const [before, after] = samples.slice(-2) as [(typeof samples)[number], (typeof samples)[number]];
  return {
    epochs,
    measured: epochs[epochs.length - 1]!,
    lastEpochCpu: {
      wallSeconds: after.wall - before.wall,
      coordinatorSeconds: after.coordinator - before.coordinator,
      workerSeconds: after.workers.map((seconds, i) => seconds - before.workers[i]!),
    },
  };
}

/**
 * Reads the flags shared by the benchmarks that train real clusters: `--out` (results file),
 * `--repeats` (default 2) and `--train-limit` (default 12,800, at least two batches of `batch`).
 */
export function readClusterFlags(argv: string[], defaultOut: string, batch: number): { outPath: string; repeats: number; trainLimit: number } {
  const outPath = flagValue(argv, '--out', defaultOut);
  const repeats = Number(flagValue(argv, '--repeats', '2'));
  const trainLimit = Number(flagValue(argv, '--train-limit', '12800'));
  if (!Number.isInteger(repeats) || repeats < 1) throw new Error(`invalid --repeats ${repeats}: expected a whole number of at least 1`);
  if (!Number.isInteger(trainLimit) || trainLimit < 2 * batch) throw new Error(`invalid --train-limit ${trainLimit}: expected a whole number of at least ${2 * batch}`);
  return { outPath, repeats, trainLimit };
}
