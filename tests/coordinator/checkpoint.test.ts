import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

import {
  CHECKPOINT_FORMAT_VERSION,
  decodeCheckpoint,
  describeDifferences,
  encodeCheckpoint,
  findLatestCheckpoint,
  listCheckpoints,
  optionDifferences,
  readCheckpoint,
  recordOptions,
  writeCheckpoint,
  type Checkpoint,
} from '../../coordinator/checkpoint.js';
import { makeOptimizer, type Optimizer, type OptimizerState } from '../../coordinator/optimizer.js';
import { SampleLedger } from '../../coordinator/plan.js';
import { seededRandom } from '../../shared/random.js';
import { COORDINATOR_DEFAULTS, type CoordinatorOptions } from '../../shared/options.js';
import { temporaryFolder } from '../helpers/cli.js';

const SPECS = [
  { name: 'dense1/kernel', shape: [20, 8] },
  { name: 'dense1/bias', shape: [8] },
  { name: 'output/kernel', shape: [8, 10] },
];
const TRAIN_COUNT = 300;

function sizeOf(shape: number[]): number {
  return shape.reduce((product, size) => product * size, 1);
}

/** Returns weights and an optimizer after `steps` updates with random gradients. */
function trained(options: CoordinatorOptions, steps: number, seed: number): { weights: Float32Array[]; optimizer: Optimizer } {
  const random = seededRandom(seed);
  const weights = SPECS.map((spec) => Float32Array.from({ length: sizeOf(spec.shape) }, () => random() - 0.5));
  const optimizer = makeOptimizer({ name: options.optimizer, lr: options.lr, momentum: options.momentum });
  for (let step = 0; step < steps; step++) {
    optimizer.apply(weights, SPECS.map((spec) => Float32Array.from({ length: sizeOf(spec.shape) }, () => random() - 0.5)));
  }
  return { weights, optimizer };
}

function makeCheckpoint(options: CoordinatorOptions, step: number): Checkpoint {
  const { weights, optimizer } = trained(options, 7, step + 1);
  const ledger = new SampleLedger(TRAIN_COUNT);
  ledger.record(Uint32Array.from({ length: 100 }, (_, i) => (i * 7) % TRAIN_COUNT));
  return {
    formatVersion: CHECKPOINT_FORMAT_VERSION,
    gradfleetVersion: '0.1.0',
    createdAt: new Date(0).toISOString(),
    model: options.model,
    inputShape: [28, 28, 1],
    numClasses: 10,
    weights: SPECS.map((spec, t) => ({ ...spec, data: weights[t] })),
    optimizer: optimizer.exportState(),
    step,
    skippedInARow: 1,
    progress: { epoch: 2, position: 100, ledgerCounts: ledger.counts(), steps: 4, lossSum: 123.456789, correct: 61, examples: 100, elapsedSeconds: 1.25 },
    seed: options.seed,
    options: recordOptions(options),
  };
}

const ADAM: CoordinatorOptions = { ...COORDINATOR_DEFAULTS, model: 'mlp', optimizer: 'adam', lr: 0.001, trainLimit: TRAIN_COUNT };
const SGD: CoordinatorOptions = { ...COORDINATOR_DEFAULTS, model: 'mlp', optimizer: 'sgd', lr: 0.05, momentum: 0.9, batchSize: 32, trainLimit: TRAIN_COUNT };

/** Compares typed arrays bit for bit (NaN-safe and sign-of-zero-safe). */
function sameBits(a: Float32Array | Float64Array, b: Float32Array | Float64Array): boolean {
  const left = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
  const right = new Uint8Array(b.buffer, b.byteOffset, b.byteLength);
  return a.constructor === b.constructor && Buffer.from(left).equals(Buffer.from(right));
}

/** Returns every state array of an optimizer: Adam's two moments, or SGD's velocity. */
function stateArrays(state: OptimizerState): Float64Array[] {
  return state.name === 'adam' ? [...(state.firstMoment ?? []), ...(state.secondMoment ?? [])] : (state.velocity ?? []);
}

function stepOf(state: OptimizerState): number | undefined {
  return state.name === 'adam' ? state.step : undefined;
}

function captureWarnings(): { warnings: [string, string][]; onSkip: (path: string, reason: string) => void } {
  const warnings: [string, string][] = [];
  return { warnings, onSkip: (path, reason) => warnings.push([path, reason]) };
}

describe('checkpoint format', () => {
  for (const [name, options] of [['Adam', ADAM], ['SGD with momentum', SGD]] as const) {
    it(`round-trips every field bit exactly (${name})`, async () => {
      const folder = temporaryFolder('checkpoint-roundtrip');
      const original = makeCheckpoint(options, 42);
      const { path } = await writeCheckpoint(folder, original, 3);
      const restored = await readCheckpoint(path);

      expect(restored.formatVersion).toBe(CHECKPOINT_FORMAT_VERSION);
      expect(restored.model).toBe('mlp');
      expect(restored.inputShape).toEqual([28, 28, 1]);
      expect(restored.step).toBe(42);
      expect(restored.skippedInARow).toBe(1);
      expect(restored.seed).toBe(options.seed);
      expect(restored.options).toEqual(original.options);
      expect(restored.weights.map((tensor) => [tensor.name, tensor.shape])).toEqual(SPECS.map((spec) => [spec.name, spec.shape]));
      restored.weights.forEach((tensor, t) => expect(sameBits(tensor.data, original.weights[t].data)).toBe(true));

      const { ledgerCounts, ...progress } = restored.progress;
      const { ledgerCounts: originalCounts, ...originalProgress } = original.progress;
      expect(progress).toEqual(originalProgress);
      expect(Buffer.from(ledgerCounts).equals(Buffer.from(originalCounts))).toBe(true);
      expect(SampleLedger.fromCounts(ledgerCounts).summary()).toEqual({ unused: 200, once: 100, repeated: 0 });

      expect(restored.optimizer.name).toBe(original.optimizer.name);
      expect(stepOf(restored.optimizer)).toBe(stepOf(original.optimizer));
      const restoredArrays = stateArrays(restored.optimizer);
      const originalArrays = stateArrays(original.optimizer);
      expect(restoredArrays).toHaveLength(options.optimizer === 'adam' ? 2 * SPECS.length : SPECS.length);
      restoredArrays.forEach((array, i) => expect(sameBits(array, originalArrays[i])).toBe(true));
    });

    it(`continues training bit exactly after a restore (${name})`, () => {
      const original = makeCheckpoint(options, 3);
      const restored = decodeCheckpoint(encodeCheckpoint(original));
      const gradients = SPECS.map((spec, t) => Float32Array.from({ length: sizeOf(spec.shape) }, (_, i) => Math.sin(i + t)));

      const first = makeOptimizer({ name: options.optimizer, lr: options.lr, momentum: options.momentum });
      first.importState(original.optimizer);
      const firstWeights = original.weights.map((tensor) => tensor.data.slice());
      const second = makeOptimizer({ name: options.optimizer, lr: options.lr, momentum: options.momentum });
      second.importState(restored.optimizer);
      const secondWeights = restored.weights.map((tensor) => tensor.data.slice());
      for (let step = 0; step < 3; step++) {
        first.apply(firstWeights, gradients);
        second.apply(secondWeights, gradients);
      }
      firstWeights.forEach((weights, t) => expect(sameBits(weights, secondWeights[t])).toBe(true));
    });
  }

  it('leaves no temporary file after a write', async () => {
    const folder = temporaryFolder('checkpoint-atomic');
    await writeCheckpoint(folder, makeCheckpoint(SGD, 5), 3);
    expect(readdirSync(folder)).toEqual(['checkpoint-00000005.ckpt']);
  });

  it('keeps only the newest K checkpoints', async () => {
    const folder = temporaryFolder('checkpoint-prune');
    // A temporary file left by a write that was interrupted is deleted by the next write.
    writeFileSync(join(folder, '.checkpoint-00000001.ckpt.999.tmp'), 'partial');
    for (const step of [5, 10, 15, 20, 25]) await writeCheckpoint(folder, makeCheckpoint(SGD, step), 3);
    expect(readdirSync(folder).sort()).toEqual(['checkpoint-00000015.ckpt', 'checkpoint-00000020.ckpt', 'checkpoint-00000025.ckpt']);
    expect(await listCheckpoints(folder)).toEqual([25, 20, 15].map((step) => join(folder, `checkpoint-${String(step).padStart(8, '0')}.ckpt`)));
  });

  const damages: [string, (bytes: Buffer) => Buffer, RegExp][] = [
    ['truncated', (bytes) => bytes.subarray(0, bytes.byteLength - 1000), /truncated: the body has \d+ bytes, the header says \d+/],
    ['truncated inside the header', (bytes) => bytes.subarray(0, 30), /truncated: 30 bytes, shorter than the 52-byte header/],
    [
      'bit-flipped',
      (bytes) => {
        const copy = Buffer.from(bytes);
        copy[copy.byteLength - 500] ^= 0x04;
        return copy;
      },
      /checksum mismatch: the file is damaged/,
    ],
  ];
  for (const [name, damage, reason] of damages) {
    it(`skips a ${name} newest checkpoint`, async () => {
      const folder = temporaryFolder('checkpoint-damaged');
      await writeCheckpoint(folder, makeCheckpoint(ADAM, 10), 3);
      const { path: newest } = await writeCheckpoint(folder, makeCheckpoint(ADAM, 20), 3);
      writeFileSync(newest, damage(readFileSync(newest)));

      const { warnings, onSkip } = captureWarnings();
      const { found, skipped } = await findLatestCheckpoint(folder, onSkip);
      expect(found?.checkpoint.step).toBe(10);
      expect(skipped).toBe(1);
      expect(warnings).toHaveLength(1);
      expect(warnings[0][0]).toBe(newest);
      expect(warnings[0][1]).toMatch(reason);
    });
  }

  it('finds nothing in an empty or missing folder', async () => {
    const { onSkip } = captureWarnings();
    expect(await findLatestCheckpoint(temporaryFolder('checkpoint-empty'), onSkip)).toEqual({ skipped: 0 });
    expect(await findLatestCheckpoint(join(temporaryFolder('checkpoint-missing'), 'absent'), onSkip)).toEqual({ skipped: 0 });
  });
});

describe('checkpoint options', () => {
  it('leaves the token out', () => {
    const recorded = recordOptions({ ...SGD, token: 'secret-token-value' });
    expect(recorded).not.toHaveProperty('token');
    expect(recorded.lr).toBe(0.05);
  });

  it('accepts changes to the stopping options', () => {
    expect(optionDifferences(recordOptions(SGD), { ...SGD, epochs: 50, maxSteps: 1000, port: 0, testLimit: 10 })).toEqual([]);
  });

  it('treats an unset --batch-size as the default', () => {
    expect(optionDifferences(recordOptions({ ...SGD, batchSize: undefined }), { ...SGD, batchSize: 64 })).toEqual([]);
  });

  it('names every option that differs', () => {
    const differences = optionDifferences(recordOptions(SGD), { ...SGD, lr: 0.1, batchSize: 128 });
    expect(differences).toEqual([
      { option: 'lr', saved: 0.05, current: 0.1 },
      { option: 'batchSize', saved: 32, current: 128 },
    ]);
    const message = describeDifferences('/runs/checkpoint-00000010.ckpt', differences);
    expect(message).toContain('--lr was 0.05, now 0.1');
    expect(message).toContain('--batch-size was 32, now 128');
  });
});
