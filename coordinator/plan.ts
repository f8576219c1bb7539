/**
 * The epoch plan: the order in which an epoch visits the training samples, and the
 * ledger that counts how often each sample went into an applied update.
 */

import { seededRandom } from '../shared/random.js';

/** Returns a permutation of 0..count-1 that depends only on the seed and the epoch. */
export function shuffledOrder(count: number, seed: number, epoch: number): Uint32Array {
  const order = new Uint32Array(count);
  for (let i = 0; i < count; i++) order[i] = i;
  // Mixing the epoch in with a large odd multiplier gives each epoch its own stream.
  const random = seededRandom((seed >>> 0) ^ Math.imul(epoch + 1, 0x9e3779b1));
  for (let i = count - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    const swap = order[i];
    order[i] = order[j];
    order[j] = swap;
  }
  return order;
}

/**
 * One epoch's walk over the shuffled samples. Steps take consecutive slices of the order,
 * so a global batch that changes with membership still visits every sample once.
 */
export class EpochPlan {
  readonly order: Uint32Array;
  private cursor = 0;

  constructor(
    readonly epoch: number,
    count: number,
    seed: number,
    startAt = 0,
  ) {
    this.order = shuffledOrder(count, seed, epoch);
    this.cursor = startAt;
  }

  /** Index into the epoch's order of the next sample to be used. */
  get position(): number {
    return this.cursor;
  }

  get done(): boolean {
    return this.cursor >= this.order.length;
  }

  /** Returns the global batch that `take(batchSize)` would return next, without taking it. */
  peek(batchSize: number): Uint32Array {
    return this.order.subarray(this.cursor, Math.min(this.cursor + batchSize, this.order.length));
  }

  /** Takes the next global batch; the last one of an epoch may be smaller. */
  take(batchSize: number): Uint32Array {
    const end = Math.min(this.cursor + batchSize, this.order.length);
    const ids = this.order.subarray(this.cursor, end);
    this.cursor = end;
    return ids;
  }
}

/**
 * Splits a batch into at most `parts` contiguous shards whose sizes differ by at most
 * one. When the batch is smaller than `parts`, only `batch.length` shards are returned,
 * so a worker with nothing to do gets no shard and is not waited for.
 */
export function splitIntoShards(batch: Uint32Array, parts: number): Uint32Array[] {
  const shardCount = Math.min(parts, batch.length);
  const base = Math.floor(batch.length / shardCount);
  const larger = batch.length % shardCount;
  const shards: Uint32Array[] = [];
  let start = 0;
  for (let i = 0; i < shardCount; i++) {
    const size = base + (i < larger ? 1 : 0);
    shards.push(batch.subarray(start, start + size));
    start += size;
  }
  return shards;
}

/** Counts how many times each sample contributed to an applied update in one epoch. */
export class SampleLedger {
  private readonly uses: Uint8Array;

  constructor(readonly count: number) {
    this.uses = new Uint8Array(count);
  }

  /** Returns a ledger with the given use counts, one byte per sample, as `counts` returned them. */
  static fromCounts(counts: Uint8Array): SampleLedger {
    const ledger = new SampleLedger(counts.length);
    ledger.uses.set(counts);
    return ledger;
  }

  /** Returns a copy of the use count of every sample, for a checkpoint. */
  counts(): Uint8Array {
    return this.uses.slice();
  }

  record(ids: Uint32Array): void {
    for (const id of ids) this.uses[id] = Math.min(255, this.uses[id] + 1);
  }

  /** Returns how many samples were used zero times, once, and more than once. */
  summary(): { unused: number; once: number; repeated: number } {
    let unused = 0;
    let once = 0;
    for (const uses of this.uses) {
      if (uses === 0) unused++;
      else if (uses === 1) once++;
    }
    return { unused, once, repeated: this.count - unused - once };
  }
}
