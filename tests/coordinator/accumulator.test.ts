import { describe, expect, it } from 'vitest';

import { GradientAccumulator } from '../../coordinator/accumulator.js';
import { splitIntoShards } from '../../coordinator/plan.js';
import { seededRandom } from '../../shared/random.js';
import type { ParameterSpec } from '../../shared/models.js';

const SPECS: ParameterSpec[] = [
  { name: 'conv2d/kernel', shape: [3, 3, 1, 4] },
  { name: 'conv2d/bias', shape: [4] },
  { name: 'dense/kernel', shape: [5, 3] },
];

function sizeOf(spec: ParameterSpec): number {
  return spec.shape.reduce((product, size) => product * size, 1);
}

function filled(value: number): Float32Array[] {
  return SPECS.map((spec) => new Float32Array(sizeOf(spec)).fill(value));
}

/** Draws one gradient per example and parameter, with values in [-1, 1), from `seed`. */
function perExampleGradients(examples: number, seed: number): Float32Array[][] {
  const random = seededRandom(seed);
  return Array.from({ length: examples }, () => SPECS.map((spec) => Float32Array.from({ length: sizeOf(spec) }, () => 2 * random() - 1)));
}

/**
 * Returns a shard's mean gradient as a worker sends it: averaged over the shard's
 * examples and rounded to float32.
 */
function shardMean(gradients: Float32Array[][], ids: Uint32Array): Float32Array[] {
  return SPECS.map((spec, t) => {
    const sum = new Float64Array(sizeOf(spec));
    for (const id of ids) gradients[id][t].forEach((value, i) => (sum[i] += value));
    return Float32Array.from(sum, (value) => value / ids.length);
  });
}

function averageOverShards(gradients: Float32Array[][], parts: number): Float32Array[] {
  const ids = Uint32Array.from(gradients.keys());
  const accumulator = new GradientAccumulator(SPECS);
  for (const shard of splitIntoShards(ids, parts)) accumulator.add(shardMean(gradients, shard), shard.length);
  return accumulator.average();
}

/** Returns max |a − b| / max |a| over all elements: the error relative to the gradient's scale. */
function relativeDifference(a: Float32Array[], b: Float32Array[]): number {
  let maxDifference = 0;
  let maxMagnitude = 0;
  a.forEach((tensor, t) => {
    tensor.forEach((value, i) => {
      maxDifference = Math.max(maxDifference, Math.abs(value - b[t][i]));
      maxMagnitude = Math.max(maxMagnitude, Math.abs(value));
    });
  });
  return maxDifference / maxMagnitude;
}

describe('GradientAccumulator', () => {
  it('weights shards by count', () => {
    const accumulator = new GradientAccumulator(SPECS);

    accumulator.add(filled(1), 64);
    accumulator.add(filled(4), 32);
    const average = accumulator.average();

    expect(accumulator.count).toBe(96);
    expect(average).toHaveLength(SPECS.length);
    average.forEach((tensor, t) => {
      expect(tensor).toBeInstanceOf(Float32Array);
      expect(tensor.length).toBe(sizeOf(SPECS[t]));
      for (const value of tensor) expect(value).toBe(2);
    });
  });

  it('shard order does not matter', () => {
    const first = new GradientAccumulator(SPECS);
    first.add(filled(1), 64);
    first.add(filled(4), 32);
    const second = new GradientAccumulator(SPECS);
    second.add(filled(4), 32);
    second.add(filled(1), 64);

    expect(second.average()).toEqual(first.average());
  });

  it('average independent of split', () => {
    const gradients = perExampleGradients(96, 20240611);

    const whole = averageOverShards(gradients, 1);
    const threeWays = averageOverShards(gradients, 3);
    const fiveWays = averageOverShards(gradients, 5);

    expect(relativeDifference(whole, threeWays)).toBeLessThanOrEqual(1e-7);
    expect(relativeDifference(whole, fiveWays)).toBeLessThanOrEqual(1e-7);
  });

  it('average of nothing throws', () => {
    const accumulator = new GradientAccumulator(SPECS);

    expect(() => accumulator.average()).toThrow(/no shard was accumulated/);
  });

  it('reset clears sums and count', () => {
    const accumulator = new GradientAccumulator(SPECS);
    accumulator.add(filled(3), 10);

    accumulator.reset();

    expect(accumulator.count).toBe(0);
    expect(() => accumulator.average()).toThrow(/no shard was accumulated/);
    accumulator.add(filled(0.5), 4);
    for (const tensor of accumulator.average()) {
      for (const value of tensor) expect(value).toBe(0.5);
    }
  });

  it('parameterCount matches specs', () => {
    expect(new GradientAccumulator(SPECS).parameterCount).toBe(SPECS.length);
  });
});
