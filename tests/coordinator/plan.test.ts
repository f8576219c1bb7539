import { describe, expect, it } from 'vitest';

import { EpochPlan, SampleLedger, shuffledOrder, splitIntoShards } from '../../coordinator/plan.js';

/** Walks a plan to its end with the given global batch sizes (cycled) and returns each step's shards. */
function walkEpoch(plan: EpochPlan, batchSizes: number[], workers: number): Uint32Array[][] {
  const steps: Uint32Array[][] = [];
  while (!plan.done) {
    const batch = plan.take(batchSizes[steps.length % batchSizes.length]);
    steps.push(splitIntoShards(batch, workers));
  }
  return steps;
}

/** Returns how often each id in 0..count-1 appears in `steps`. */
function useCounts(steps: Uint32Array[][], count: number): number[] {
  const uses = new Array<number>(count).fill(0);
  for (const shards of steps) {
    for (const shard of shards) {
      for (const id of shard) uses[id]++;
    }
  }
  return uses;
}

function isPermutation(order: Uint32Array): boolean {
  const sorted = Array.from(order).sort((a, b) => a - b);
  return sorted.every((value, i) => value === i);
}

describe('EpochPlan with splitIntoShards', () => {
  const SAMPLES = 1000;
  const WORKERS = 3;
  const BATCH = 111;

  it('uses every sample once', () => {
    const steps = walkEpoch(new EpochPlan(0, SAMPLES, 42), [BATCH], WORKERS);

    const uses = useCounts(steps, SAMPLES);

    expect(uses.filter((count) => count === 0)).toHaveLength(0);
    expect(uses.filter((count) => count > 1)).toHaveLength(0);
  });

  it('ledger summary after epoch', () => {
    const ledger = new SampleLedger(SAMPLES);

    for (const shards of walkEpoch(new EpochPlan(0, SAMPLES, 42), [BATCH], WORKERS)) {
      for (const shard of shards) ledger.record(shard);
    }

    expect(ledger.summary()).toEqual({ unused: 0, once: SAMPLES, repeated: 0 });
  });

  it('step count and last step', () => {
    const steps = walkEpoch(new EpochPlan(0, SAMPLES, 42), [BATCH], WORKERS);
    const stepSizes = steps.map((shards) => shards.reduce((total, shard) => total + shard.length, 0));

    expect(steps).toHaveLength(Math.ceil(SAMPLES / BATCH));
    expect(steps).toHaveLength(10);
    expect(stepSizes.slice(0, -1).every((size) => size === BATCH)).toBe(true);
    // 9 full steps use 999 samples, so the last step has only 1.
    expect(stepSizes.at(-1)).toBe(SAMPLES - 9 * BATCH);
    expect(stepSizes.at(-1)).toBe(1);
  });

  it('shards nonempty and balanced', () => {
    const steps = walkEpoch(new EpochPlan(0, SAMPLES, 42), [BATCH], WORKERS);

    for (const shards of steps) {
      const sizes = shards.map((shard) => shard.length);
      const stepSize = sizes.reduce((total, size) => total + size, 0);
      expect(shards).toHaveLength(Math.min(WORKERS, stepSize));
      expect(Math.min(...sizes)).toBeGreaterThan(0);
      expect(Math.max(...sizes) - Math.min(...sizes)).toBeLessThanOrEqual(1);
    }
  });

  it('last step has one shard', () => {
    const steps = walkEpoch(new EpochPlan(0, SAMPLES, 42), [BATCH], WORKERS);

    expect(steps.at(-1)).toHaveLength(1);
    expect(steps.at(-1)?.[0]).toHaveLength(1);
  });

  it('plan finishes at the end', () => {
    const plan = new EpochPlan(0, SAMPLES, 42);
    walkEpoch(plan, [BATCH], WORKERS);

    expect(plan.done).toBe(true);
    expect(plan.position).toBe(SAMPLES);
    expect(plan.take(BATCH)).toHaveLength(0);
  });

  it('changing batch sizes cover epoch', () => {
    const ledger = new SampleLedger(SAMPLES);

    const steps = walkEpoch(new EpochPlan(1, SAMPLES, 7), [64, 96, 32, 111, 1, 200], 4);
    for (const shards of steps) {
      for (const shard of shards) ledger.record(shard);
    }

    expect(ledger.summary()).toEqual({ unused: 0, once: SAMPLES, repeated: 0 });
    expect(useCounts(steps, SAMPLES).every((count) => count === 1)).toBe(true);
  });

  it('peek returns the next take', () => {
    const plan = new EpochPlan(2, SAMPLES, 42, SAMPLES - 40);

    const peeked = Array.from(plan.peek(BATCH));

    expect(plan.position).toBe(SAMPLES - 40);
    expect(peeked).toHaveLength(Math.min(BATCH, 40));
    expect(Array.from(plan.take(BATCH))).toEqual(peeked);
    expect(plan.peek(BATCH)).toHaveLength(0);
  });

  it('resumes from startAt', () => {
    const full = new EpochPlan(3, SAMPLES, 42);
    const firstPart = full.take(300);

    const resumed = new EpochPlan(3, SAMPLES, 42, 300);
    const rest = resumed.take(SAMPLES);

    expect(resumed.done).toBe(true);
    expect([...firstPart, ...rest].sort((a, b) => a - b)).toEqual(Array.from({ length: SAMPLES }, (_, i) => i));
  });
});

describe('splitIntoShards', () => {
  it('batch smaller than workers', () => {
    const shards = splitIntoShards(Uint32Array.from([17, 4]), 3);

    expect(shards).toHaveLength(2);
    expect(shards.map((shard) => Array.from(shard))).toEqual([[17], [4]]);
  });

  it('single sample, many workers', () => {
    const shards = splitIntoShards(Uint32Array.from([9]), 8);

    expect(shards.map((shard) => Array.from(shard))).toEqual([[9]]);
  });

  it('keeps order, larger shards first', () => {
    const batch = Uint32Array.from({ length: 11 }, (_, i) => 100 + i);

    const shards = splitIntoShards(batch, 3);

    expect(shards.map((shard) => shard.length)).toEqual([4, 4, 3]);
    expect(shards.flatMap((shard) => Array.from(shard))).toEqual(Array.from(batch));
  });

  it('every size up to 40', () => {
    for (let size = 1; size <= 40; size++) {
      for (let workers = 1; workers <= 7; workers++) {
        const shards = splitIntoShards(Uint32Array.from({ length: size }, (_, i) => i), workers);
        const sizes = shards.map((shard) => shard.length);

        expect(shards).toHaveLength(Math.min(size, workers));
        expect(Math.min(...sizes)).toBeGreaterThan(0);
        expect(Math.max(...sizes) - Math.min(...sizes)).toBeLessThanOrEqual(1);
        expect(sizes.reduce((total, length) => total + length, 0)).toBe(size);
      }
    }
  });
});

describe('shuffledOrder', () => {
  it('is a permutation', () => {
    for (const count of [0, 1, 2, 7, 1000]) {
      expect(isPermutation(shuffledOrder(count, 42, 0))).toBe(true);
    }
  });

  it('same seed and epoch repeat', () => {
    expect(Array.from(shuffledOrder(1000, 42, 3))).toEqual(Array.from(shuffledOrder(1000, 42, 3)));
  });

  it('plan order matches shuffledOrder', () => {
    expect(Array.from(new EpochPlan(5, 1000, 9).order)).toEqual(Array.from(shuffledOrder(1000, 9, 5)));
  });

  it('epochs differ', () => {
    const orders = [0, 1, 2, 3].map((epoch) => Array.from(shuffledOrder(1000, 42, epoch)).join(','));

    expect(new Set(orders).size).toBe(orders.length);
  });

  it('seeds differ', () => {
    const orders = [0, 1, 42, 0xffffffff].map((seed) => Array.from(shuffledOrder(1000, seed, 0)).join(','));

    expect(new Set(orders).size).toBe(orders.length);
  });

  it('actually shuffles', () => {
    const order = shuffledOrder(1000, 42, 0);
    const fixedPoints = order.filter((id, i) => id === i).length;

    // A random permutation has one fixed point on average; 10 would be very unlikely.
    expect(fixedPoints).toBeLessThan(10);
  });
});

describe('SampleLedger', () => {
  it('counts unused, once, repeated', () => {
    const ledger = new SampleLedger(6);

    ledger.record(Uint32Array.from([0, 1, 2]));
    ledger.record(Uint32Array.from([2, 3]));
    ledger.record(Uint32Array.from([2]));

    expect(ledger.summary()).toEqual({ unused: 2, once: 3, repeated: 1 });
  });
});
