/**
 * Images/s of gradfleet with 1 and 2 workers at 64 images per worker, on three networks of
 * one host:
 *
 * - loopback: every process on 127.0.0.1;
 * - an emulation of a cloud network on one host: the coordinator and each worker in a network
 *   namespace of its own, joined through veth pairs and a bridge (bench/netns.sh), with every
 *   link shaped to 1 Gbit/s, then to 10 Gbit/s. Where the kernel has netem, each direction
 *   also gets 0.2 ms of delay; elsewhere tbf limits the rate only, and the results say so.
 *
 * The namespace runs need root; without it they are skipped with the reason. The namespaces
 * are deleted after each network's runs, and on exit, SIGINT or SIGTERM.
 *
 * Run with `npm run build && node dist/bench/scaling.js [--repeats N] [--train-limit N] [--out PATH]`.
 */
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { readClusterFlags, runCluster, type ClusterNamespaces } from './cluster.js';
import { describeMachine, loadAverage, printMachine, round, writeResults } from './machine.js';

const DEFAULT_OUT = 'bench/results/scaling.json';
const BATCH = 64;
const EPOCHS = 2;
const TEST_LIMIT = 500;
const RUN_TIMEOUT_MS = 20 * 60 * 1000;
const SCALING_TARGET = 1.8;
const RATES = ['1gbit', '10gbit'];

const netnsScript = fileURLToPath(new URL('../../bench/netns.sh', import.meta.url));
/** Addresses and names that bench/netns.sh gives the coordinator and the workers. */
const NAMESPACES: ClusterNamespaces = { coordinator: 'gfbench-coord', coordinatorAddress: '10.213.0.1', workers: ['gfbench-w1', 'gfbench-w2'] };

interface Network {
  name: string;
  /** Link rate for tc, or undefined for loopback. */
  rate?: string;
}

interface ScalingRun {
  network: string;
  repeat: number;
  workers: number;
  imagesPerSecond: number;
  epochSeconds: number;
  /** CPU time over wall time during the measured epoch; 1.0 is one core. */
  coordinatorCpuShare: number;
  workerCpuShares: number[];
  loadAverage: number;
}

let namespacesUp = false;

function deleteNamespaces(): void {
  if (!namespacesUp) return;
  execFileSync('bash', [netnsScript, 'down'], { stdio: 'inherit' });
  namespacesUp = false;
}

/** Creates the namespaces for `workers` workers and returns the shaping that bench/netns.sh applied. */
function createNamespaces(rate: string, workers: number): string {
  namespacesUp = true;
  const output = execFileSync('bash', [netnsScript, 'up', rate, String(workers)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
  const line = output.split('\n').find((text) => text.startsWith('shaping: '));
  if (line === undefined) throw new Error(`bench/netns.sh printed no "shaping:" line; its output was: ${output}`);
  return line.slice('shaping: '.length);
}

/** Returns why the namespace runs cannot happen here, or undefined when they can. */
function namespaceSkipReason(): string | undefined {
  if (process.getuid?.() !== 0) return `creating network namespaces needs root, and this process runs as uid ${process.getuid?.()}`;
  try {
    execFileSync('ip', ['-V'], { stdio: 'ignore' });
    execFileSync('tc', ['-V'], { stdio: 'ignore' });
  } catch {
    return 'the ip and tc commands were not found; install iproute2';
  }
  return undefined;
}

async function measure(network: Network, repeat: number, workers: number, trainLimit: number): Promise<ScalingRun> {
  const result = await runCluster({
    workers,
    batchSizePerWorker: BATCH,
    trainLimit,
    epochs: EPOCHS,
    testLimit: TEST_LIMIT,
    timeoutMs: RUN_TIMEOUT_MS,
    ...(network.rate !== undefined && { namespaces: NAMESPACES }),
  });
  const cpu = result.lastEpochCpu;
  const run: ScalingRun = {
    network: network.name,
    repeat,
    workers,
    imagesPerSecond: round(result.measured.imagesPerSecond, 1),
    epochSeconds: round(result.measured.elapsedSeconds, 2),
    coordinatorCpuShare: round(cpu.coordinatorSeconds / cpu.wallSeconds, 3),
    workerCpuShares: cpu.workerSeconds.map((seconds) => round(seconds / cpu.wallSeconds, 3)),
    loadAverage: loadAverage()[0],
  };
  console.log(
    `[${repeat}] ${network.name}, ${workers} worker${workers > 1 ? 's' : ''}: ${run.imagesPerSecond} images/s, ` +
      `coordinator CPU ${run.coordinatorCpuShare}, workers CPU ${run.workerCpuShares.join(', ')} (load ${run.loadAverage})`,
  );
  return run;
}

async function measureNetwork(network: Network, repeat: number, trainLimit: number, shaping: Map<string, string>): Promise<ScalingRun[]> {
  if (network.rate === undefined) return [await measure(network, repeat, 1, trainLimit), await measure(network, repeat, 2, trainLimit)];
  try {
    shaping.set(network.name, createNamespaces(network.rate, 2));
    return [await measure(network, repeat, 1, trainLimit), await measure(network, repeat, 2, trainLimit)];
  } finally {
    deleteNamespaces();
  }
}

function scalingRatios(runs: ScalingRun[]): { network: string; repeat: number; ratio: number; targetMet: boolean }[] {
  const ratios = [];
  for (const two of runs.filter((run) => run.workers === 2)) {
    const one = runs.find((run) => run.workers === 1 && run.network === two.network && run.repeat === two.repeat);
    if (one === undefined) continue;
    const ratio = round(two.imagesPerSecond / one.imagesPerSecond, 3);
    ratios.push({ network: two.network, repeat: two.repeat, ratio, targetMet: ratio >= SCALING_TARGET });
  }
  return ratios;
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const { outPath, repeats, trainLimit } = readClusterFlags(argv, DEFAULT_OUT, BATCH);

  const machine = describeMachine();
  machine.backend = 'wasm';
  printMachine('scaling', machine);
  const networks: Network[] = [{ name: 'loopback' }];
  const skipReason = namespaceSkipReason();
  if (skipReason === undefined) {
    for (const rate of RATES) networks.push({ name: `netns ${rate}`, rate });
  } else {
    console.log(`skipping the emulated cloud network runs: ${skipReason}`);
  }
  // A signal ends the process without running `finally` blocks, so the namespaces are deleted here too.
  process.on('exit', deleteNamespaces);
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.on(signal, () => {
      deleteNamespaces();
      process.exit(signal === 'SIGINT' ? 130 : 143);
    });
  }

  const shaping = new Map<string, string>();
  const runs: ScalingRun[] = [];
  for (let repeat = 1; repeat <= repeats; repeat++) {
    for (const network of networks) runs.push(...(await measureNetwork(network, repeat, trainLimit, shaping)));
  }
  const ratios = scalingRatios(runs);
  for (const { network, repeat, ratio, targetMet } of ratios) {
    console.log(`[${repeat}] ${network}: 2 workers / 1 worker = ${ratio} (target ${SCALING_TARGET}: ${targetMet ? 'met' : `missed by ${round(SCALING_TARGET - ratio, 2)}`})`);
  }

  writeResults(outPath, 'scaling', machine, {
    batchSizePerWorker: BATCH,
    trainLimit,
    epochs: EPOCHS,
    measuredEpoch: EPOCHS,
    networks: networks.map((network) => ({
      name: network.name,
      description:
        network.rate === undefined
          ? 'every process on 127.0.0.1'
          : 'emulation of a cloud network on one host: a network namespace per process, veth pairs through a bridge, coordinator with --insecure',
      shaping: network.rate === undefined ? null : (shaping.get(network.name) ?? null),
    })),
    namespacesSkipped: skipReason ?? null,
    targets: { scaling: SCALING_TARGET },
    runs,
    ratios,
  });
}

await main();
