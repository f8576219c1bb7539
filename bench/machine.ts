/**
 * What every benchmark prints and records about the machine it ran on, and the helpers
 * they share to write results. Throughput figures mean little without the CPU, the core
 * count and the load average: with 2 cores, a load above 2 means the run competed for
 * the CPU with other jobs.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, relative } from 'node:path';

export interface MachineInfo {
  cpuModel: string;
  cores: number;
  memoryGiB: number;
  platform: string;
  node: string;
  /** The tfjs version and the active backend, when the benchmark uses tfjs. */
  tfjs?: string;
  backend?: string;
  /** One-, five- and fifteen-minute load averages, as `uptime` prints them. */
  loadAverage: [number, number, number];
}

/** Collects the machine's description; pass the tfjs module once a backend is active. */
export function describeMachine(tfjs?: { version: { tfjs: string }; getBackend(): string }): MachineInfo {
  const cpus = os.cpus();
  return {
    cpuModel: cpus[0]?.model.trim() ?? 'unknown',
    cores: cpus.length,
    memoryGiB: Number((os.totalmem() / 2 ** 30).toFixed(1)),
    platform: `${os.platform()} ${os.release()} ${os.arch()}`,
    node: process.version,
    ...(tfjs && { tfjs: tfjs.version.tfjs, backend: tfjs.getBackend() }),
    loadAverage: loadAverage(),
  };
}

/** Returns the one-, five- and fifteen-minute load averages, rounded to two decimals. */
export function loadAverage(): [number, number, number] {
  const [one, five, fifteen] = os.loadavg();
  return [round(one!, 2), round(five!, 2), round(fifteen!, 2)];
}

/** Prints the machine in one line, at the start of a benchmark. */
export function printMachine(name: string, machine: MachineInfo): void {
  const tfjs = machine.tfjs ? `, tfjs ${machine.tfjs} (backend ${machine.backend})` : '';
  console.log(
    `${name}: ${machine.cpuModel}, ${machine.cores} cores, ${machine.memoryGiB} GiB, Node.js ${machine.node}${tfjs}, ` +
      `load average ${machine.loadAverage.join(' ')}`,
  );
}

/**
 * Writes a benchmark's results as JSON, with the date, the command line and the machine
 * (load average taken again at the end, since it moves during a run).
 */
export function writeResults(path: string, name: string, machine: MachineInfo, results: object): void {
  const report = {
    benchmark: name,
    date: new Date().toISOString(),
    command: `node ${[relative(process.cwd(), process.argv[1] ?? ''), ...process.argv.slice(2)].join(' ')}`,
    machine,
    loadAverageAtEnd: loadAverage(),
    ...results,
  };
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, `${JSON.stringify(report, null, 2)}\n`);
  console.log(`wrote ${path}`);
}

/**
 * Returns the value of `--name VALUE` in `argv`, or `fallback` when the flag is absent.
 * Raises when the flag has no value.
 */
export function flagValue(argv: string[], name: string, fallback: string): string {
  const index = argv.indexOf(name);
  if (index === -1) return fallback;
  const value = argv[index + 1];
  if (value === undefined || value.startsWith('--')) throw new Error(`${name} needs a value, for example ${name} ${fallback}`);
  return value;
}

export function median(values: number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

export function mean(values: number[]): number {
  return values.length === 0 ? Number.NaN : values.reduce((sum, value) => sum + value, 0) / values.length;
}

export function round(value: number, digits: number): number {
  return Number(value.toFixed(digits));
}

/** Returns the user plus system CPU time of a process in milliseconds, from /proc (Linux only). */
export function processCpuMs(pid: number): number | undefined {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    // utime and stime are fields 14 and 15 of /proc/PID/stat, in clock ticks of 10 ms on Linux.
    return (Number(fields[11]) + Number(fields[12])) * 10;
  } catch {
    return undefined;
  }
}
