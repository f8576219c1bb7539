/**
 * Runs gradfleet's benchmarks one after another, each in a process of its own so that one
 * benchmark's tfjs backend, sockets and heap do not skew the next.
 *
 *   npm run bench                      every benchmark, in the order of BENCHMARKS
 *   npm run bench -- --only codec      one benchmark (a comma-separated list selects several)
 *   npm run bench -- --list            the names and what each measures
 *
 * Each benchmark prints the machine and writes bench/results/NAME.json.
 */
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { flagValue } from './machine.js';

interface Benchmark {
  /** Name for --only, and the base name of the results file. */
  name: string;
  /** Compiled script, relative to this file in dist/bench/. */
  script: string;
  description: string;
}

/**
 * Every benchmark, in the order `npm run bench` runs them. To add one, append an entry
 * here: a script in bench/ that prints the machine (bench/machine.ts) and writes
 * bench/results/NAME.json.
 */
export const BENCHMARKS: Benchmark[] = [
  { name: 'compute', script: 'compute.js', description: "one worker's CNN gradient per backend and batch, its slowest kernels, and the optimizer step" },
  { name: 'codec', script: 'codec.js', description: 'encode and decode throughput of weights and gradient messages, with validation and accumulation' },
  { name: 'step-anatomy', script: 'step-anatomy.js', description: 'where the time of a step goes in a real 2-worker run' },
  { name: 'capacity', script: 'capacity.js', description: 'steps/s and coordinator CPU per step with 1 to 64 synthetic workers' },
  { name: 'reference', script: 'reference.js', description: 'gradfleet next to PyTorch DDP (gloo, CPU) with 1 and 2 processes; needs python3-torch' },
  { name: 'scaling', script: 'scaling.js', description: '1 and 2 workers on loopback and on an emulated cloud network of namespaces (root)' },
  { name: 'encodings', script: 'encodings.js', description: 'bytes of a CNN gradient per encoding, and the test accuracy after 3 epochs with fp32, fp16 and int8' },
];

function selectBenchmarks(argv: string[]): Benchmark[] {
  const only = flagValue(argv, '--only', '');
  if (only === '') return BENCHMARKS;
  const names = only.split(',').map((name) => name.trim());
  const unknown = names.filter((name) => !BENCHMARKS.some((benchmark) => benchmark.name === name));
  if (unknown.length > 0) {
    throw new Error(`unknown benchmark ${unknown.map((name) => `"${name}"`).join(', ')} in --only; choose from ${BENCHMARKS.map((b) => b.name).join(', ')}`);
  }
  return BENCHMARKS.filter((benchmark) => names.includes(benchmark.name));
}

function main(): number {
  const argv = process.argv.slice(2);
  if (argv.includes('--list')) {
    for (const benchmark of BENCHMARKS) console.log(`${benchmark.name.padEnd(14)} ${benchmark.description}`);
    return 0;
  }
  const selected = selectBenchmarks(argv);
  const failed: string[] = [];
  for (const benchmark of selected) {
    console.log(`\n=== ${benchmark.name}: ${benchmark.description}`);
    const script = fileURLToPath(new URL(`./${benchmark.script}`, import.meta.url));
    const started = performance.now();
    const result = spawnSync(process.execPath, [script], { stdio: 'inherit' });
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    if (result.status === 0) {
      console.log(`=== ${benchmark.name} finished in ${seconds} s`);
      continue;
    }
    failed.push(benchmark.name);
    console.log(`=== ${benchmark.name} failed after ${seconds} s (exit status ${result.status ?? result.signal})`);
  }
  if (failed.length > 0) console.log(`\nfailed: ${failed.join(', ')}`);
  return failed.length > 0 ? 1 : 0;
}

try {
  process.exitCode = main();
} catch (error) {
  console.error(`bench: ${(error as Error).message}`);
  process.exitCode = 2;
}
