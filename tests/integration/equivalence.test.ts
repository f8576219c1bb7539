import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CliProcess, temporaryFolder } from '../helpers/cli.js';
import { maxAbsDifference } from '../helpers/runs.js';

/**
 * Training semantics: with the same seed and global batch, the number of workers must
 * not change the result, because the coordinator averages Σ countᵢ·gradᵢ / Σ countᵢ.
 * Each run is a real `gradfleet launch` with real worker processes.
 */

interface RunResult {
  weights: Float32Array;
  epochs: Record<string, any>[];
}

async function train(workers: number, flags: string[]): Promise<RunResult> {
  const output = temporaryFolder(`equivalence-${workers}`);
  const run = new CliProcess([
    'launch',
    '--workers', String(workers),
    '--port', '0',
    '--metrics-port', '0',
    '--backend', 'wasm',
    '--log-format', 'json',
    '--train-limit', '6000',
    '--test-limit', '2000',
    '--output', output,
    ...flags,
  ]);
  const status = await run.exited;
  expect(status, run.output()).toBe(0);
  const bytes = readFileSync(join(output, 'weights.bin'));
  return {
    weights: new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4),
    epochs: run.logs('epoch complete'),
  };
}

/** Fraction of weights whose difference exceeds `tolerance`. */
function fractionAbove(a: Float32Array, b: Float32Array, tolerance: number): number {
  let count = 0;
  for (let i = 0; i < a.length; i++) if (Math.abs(a[i] - b[i]) > tolerance) count++;
  return count / a.length;
}

describe('worker count equivalence', () => {
  it('SGD weights after 20 steps', async () => {
    const flags = ['--optimizer', 'sgd', '--lr', '0.05', '--max-steps', '20', '--batch-size', '64'];
    const [one, two, three] = await Promise.all([train(1, flags), train(2, flags), train(3, flags)]);
    const differences = [maxAbsDifference(one.weights, two.weights), maxAbsDifference(one.weights, three.weights)];
    console.log('SGD max abs difference vs 1 worker (2, 3 workers):', differences);
    expect(differences[0]).toBeLessThanOrEqual(1e-4);
    expect(differences[1]).toBeLessThanOrEqual(1e-4);
  }, 300_000);

  /**
   * Adam divides each update by √v̂, so for a weight whose gradient is close to zero a
   * float32 rounding difference in the gradient can change that weight's update by up to
   * lr. The bound is therefore on the weights as a whole: after 20 steps at lr 0.001, no
   * weight may differ by more than 20·lr = 0.02, and at most 1% may differ by more than 1e-4 (about 0.08% did when this bound was set).
   */
  it('Adam weights after 20 steps', async () => {
    const flags = ['--optimizer', 'adam', '--lr', '0.001', '--max-steps', '20'];
    const [one, two, three] = await Promise.all([train(1, flags), train(2, flags), train(3, flags)]);
    for (const other of [two, three]) {
      const max = maxAbsDifference(one.weights, other.weights);
      const above = fractionAbove(one.weights, other.weights, 1e-4);
      console.log('Adam max abs difference and fraction above 1e-4:', max, above);
      expect(max).toBeLessThanOrEqual(20 * 0.001);
      expect(above).toBeLessThanOrEqual(0.01);
    }
  }, 300_000);

  it('test accuracy after one epoch', async () => {
    const flags = ['--epochs', '1'];
    const runs = await Promise.all([train(1, flags), train(2, flags), train(3, flags)]);
    const accuracies = runs.map((run) => run.epochs.at(-1)!.testAccuracy as number);
    console.log('test accuracy after one epoch (1, 2, 3 workers):', accuracies);
    for (const run of runs) expect(run.epochs.at(-1)!.samples).toEqual({ unused: 0, once: 6000, repeated: 0 });
    expect(Math.abs(accuracies[1] - accuracies[0])).toBeLessThanOrEqual(0.003);
    expect(Math.abs(accuracies[2] - accuracies[0])).toBeLessThanOrEqual(0.003);
  }, 600_000);
});
