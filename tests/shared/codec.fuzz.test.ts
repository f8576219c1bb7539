import fc from 'fast-check';
import { Packr } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import { StepRun } from '../../coordinator/step.js';
import type { WorkerSession } from '../../coordinator/session.js';
import { decodeCoordinatorMessage, decodeWorkerMessage, encodeMessage } from '../../shared/codec.js';
import { PROTOCOL_VERSION, ProtocolError, type Message } from '../../shared/protocol.js';

/**
 * Property-based tests: whatever bytes arrive, decoding either returns a validated
 * message or raises a ProtocolError, and an invalid gradient never reaches the sum.
 */

const packr = new Packr({ useRecords: false });
const SPECS = [
  { name: 'dense/kernel', shape: [4, 3] },
  { name: 'dense/bias', shape: [3] },
];

function tensors(value: number) {
  return SPECS.map((spec) => ({ name: spec.name, shape: spec.shape, dtype: 'float32' as const, data: new Float32Array(spec.shape.reduce((a, b) => a * b, 1)).fill(value) }));
}

const VALID_FRAMES: Buffer[] = (
  [
    { type: 'hello', protocolVersion: PROTOCOL_VERSION, workerName: 'w', backend: 'wasm', gradfleetVersion: '0.1.0' },
    { type: 'ready', selfCheckMs: 12.5 },
    { type: 'gradient', step: 3, count: 2, loss: 0.5, correct: 1, computeMs: 4, tensors: tensors(0.25) },
    { type: 'weights', step: 3, tensors: tensors(1) },
    { type: 'shard', step: 3, epoch: 1, sampleIds: Uint32Array.from([4, 9]), images: new Uint8Array(8), labels: new Uint8Array(2) },
    { type: 'shard', step: 4, epoch: 1, sampleIds: Uint32Array.from([4, 9]), prefetched: true },
    { type: 'prefetch', step: 4, sampleIds: Uint32Array.from([4, 9]), images: new Uint8Array(8), labels: new Uint8Array(2) },
    { type: 'error', code: 'MALFORMED_MESSAGE', message: 'bad' },
    { type: 'done', reason: 'training complete' },
  ] as Message[]
).map((message) => encodeMessage(message));

/** Runs a decoder and fails the property unless it returns or raises a ProtocolError. */
function decodesOrRejects(decode: (frame: Uint8Array) => unknown, frame: Uint8Array): void {
  try {
    decode(frame);
  } catch (error) {
    if (!(error instanceof ProtocolError)) throw new Error(`decoder raised ${(error as Error)?.name}: ${(error as Error)?.message}`);
  }
}

/** A valid frame with random bytes overwritten, cut short, or extended. */
const mutatedFrame = fc
  .record({
    base: fc.constantFrom(...VALID_FRAMES),
    edits: fc.array(fc.record({ at: fc.nat(), value: fc.integer({ min: 0, max: 255 }) }), { maxLength: 8 }),
    cut: fc.option(fc.nat(), { nil: undefined }),
    tail: fc.uint8Array({ maxLength: 16 }),
  })
  .map(({ base, edits, cut, tail }) => {
    const frame = Uint8Array.from(base);
    for (const edit of edits) frame[edit.at % frame.length] = edit.value;
    const prefix = cut === undefined ? frame : frame.subarray(0, cut % (frame.length + 1));
    return Uint8Array.from([...prefix, ...tail]);
  });

describe('decoder properties', () => {
  it('random bytes never escape', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 512 }), (frame) => {
        decodesOrRejects(decodeWorkerMessage, frame);
        decodesOrRejects(decodeCoordinatorMessage, frame);
      }),
      { numRuns: 2000 },
    );
  });

  it('mutated frames never escape', () => {
    fc.assert(
      fc.property(mutatedFrame, (frame) => {
        decodesOrRejects(decodeWorkerMessage, frame);
        decodesOrRejects(decodeCoordinatorMessage, frame);
      }),
      { numRuns: 3000 },
    );
  });

  it('random maps never escape', () => {
    const types = fc.constantFrom('hello', 'welcome', 'ready', 'weights', 'shard', 'prefetch', 'gradient', 'error', 'done', 'other');
    const value = fc.anything({ withTypedArray: true, withBigInt: false, maxDepth: 3 });
    fc.assert(
      fc.property(types, fc.dictionary(fc.string({ maxLength: 12 }), value, { maxKeys: 8 }), (type, fields) => {
        const frame = packr.pack({ ...fields, type });
        decodesOrRejects(decodeWorkerMessage, frame);
        decodesOrRejects(decodeCoordinatorMessage, frame);
      }),
      { numRuns: 2000 },
    );
  });
});

describe('gradient acceptance properties', () => {
  it('invalid gradients leave the sum unchanged', () => {
    const session = { workerId: 'w1', state: 'active' } as unknown as WorkerSession;
    fc.assert(
      fc.property(mutatedFrame, (frame) => {
        let message;
        try {
          message = decodeWorkerMessage(frame);
        } catch {
          return;
        }
        if (message.type !== 'gradient') return;
        const run = new StepRun(3, 1, [Uint32Array.from([4, 9])], SPECS, () => {});
        run.assign([session]);
        try {
          run.accept(session, message);
        } catch (error) {
          expect(error).toBeInstanceOf(ProtocolError);
          expect(run.accumulator.count).toBe(0);
          expect(run.lossSum).toBe(0);
          return;
        }
        // Accepted: it must have been a complete, finite gradient for the shard.
        expect(run.accumulator.count).toBe(2);
        for (const gradient of run.accumulator.average()) expect(gradient.every(Number.isFinite)).toBe(true);
      }),
      { numRuns: 3000 },
    );
  });
});
