import { Packr } from 'msgpackr';
import { describe, expect, it } from 'vitest';

import { decodeCoordinatorMessage, decodeWorkerMessage, encodeMessage } from '../../shared/codec.js';
import {
  PROTOCOL_VERSION,
  ProtocolError,
  type ErrorCode,
  type GradientMessage,
  type Message,
  type WireTensor,
} from '../../shared/protocol.js';

/** Packs plain objects without the codec, so that a test can build frames the codec would never send. */
const rawPackr = new Packr({ useRecords: false });

function pack(value: unknown): Uint8Array {
  return rawPackr.pack(value);
}

/** Returns float32 values with exactly the given bit patterns. */
function float32FromBits(bits: number[]): Float32Array {
  return new Float32Array(Uint32Array.from(bits).buffer);
}

/** Returns the bit pattern of every float32 in `data`, read without converting to a JS number. */
function bitsOf(data: Float32Array): number[] {
  return Array.from(new Uint32Array(data.buffer, data.byteOffset, data.length));
}

function tensor(name: string, shape: number[], data: Float32Array): WireTensor {
  return { name, shape, dtype: 'float32', data };
}

/** Runs `decode` and returns the ProtocolError that it throws. */
function protocolErrorOf(decode: () => unknown): ProtocolError {
  try {
    decode();
  } catch (error) {
    expect(error).toBeInstanceOf(ProtocolError);
    return error as ProtocolError;
  }
  throw new Error('expected a ProtocolError, but decoding succeeded');
}

function expectSameTensors(actual: WireTensor[], expected: WireTensor[]): void {
  expect(actual).toHaveLength(expected.length);
  actual.forEach((decoded, t) => {
    expect(decoded.name).toBe(expected[t].name);
    expect(decoded.shape).toEqual(expected[t].shape);
    expect(decoded.dtype).toBe('float32');
    expect(decoded.data).toBeInstanceOf(Float32Array);
    expect(bitsOf(decoded.data)).toEqual(bitsOf(expected[t].data));
  });
}

/** Bit patterns that a float conversion or a misaligned read would change. */
const SPECIAL_BITS = [
  0x7fc00000, // quiet NaN
  0x7fc00001, // quiet NaN with a payload
  0x7f800001, // signaling NaN
  0xffc12345, // negative NaN with a payload
  0x80000000, // -0
  0x00000000, // +0
  0x00000001, // smallest positive subnormal
  0x807fffff, // largest negative subnormal
  0x00800000, // smallest positive normal
  0x7f800000, // +Infinity
  0xff800000, // -Infinity
  0x7f7fffff, // largest finite float32
  0x3f800000, // 1
  0xbf800001, // just below -1
];

/** Returns `length` bit patterns: the special values first, then distinct ordinary floats. */
function patternBits(length: number): number[] {
  return Array.from({ length }, (_, i) => (i < SPECIAL_BITS.length ? SPECIAL_BITS[i] : (0x3c000000 + i * 0x1001) >>> 0));
}

/** Copies `frame` into a new buffer at `offset`, surrounded by filler bytes that a misread would pick up. */
function frameAtOffset(frame: Uint8Array, offset: number): Uint8Array {
  const buffer = new ArrayBuffer(offset + frame.byteLength + 8);
  new Uint8Array(buffer).fill(0xa5);
  const view = new Uint8Array(buffer, offset, frame.byteLength);
  view.set(frame);
  return view;
}

/** Returns where `needle` starts inside `haystack`, or -1. */
function indexOfBytes(haystack: Uint8Array, needle: Uint8Array): number {
  return Buffer.from(haystack.buffer, haystack.byteOffset, haystack.byteLength).indexOf(
    Buffer.from(needle.buffer, needle.byteOffset, needle.byteLength),
  );
}

describe('encodeMessage round trip', () => {
  it('hello message', () => {
    const hello: Message = {
      type: 'hello',
      protocolVersion: PROTOCOL_VERSION,
      workerName: 'gpu-box-2',
      backend: 'wasm',
      gradfleetVersion: '0.1.0',
    };

    expect(decodeWorkerMessage(encodeMessage(hello))).toEqual(hello);
  });

  it('welcome message', () => {
    const welcome: Message = {
      type: 'welcome',
      protocolVersion: PROTOCOL_VERSION,
      workerId: 'w-7',
      modelTopology: { class_name: 'Sequential', config: { name: 'cnn', layers: [{ class_name: 'Dense', config: { units: 10 } }] } },
      parameters: [
        { name: 'conv2d/kernel', shape: [3, 3, 1, 8] },
        { name: 'conv2d/bias', shape: [8] },
        { name: 'dense/bias', shape: [0] },
      ],
      inputShape: [28, 28, 1],
      numClasses: 10,
      heartbeatMs: 5000,
      maxMessageBytes: 1048576,
    };

    expect(decodeCoordinatorMessage(encodeMessage(welcome))).toEqual(welcome);
  });

  it('ready message', () => {
    const ready: Message = { type: 'ready', selfCheckMs: 12.75 };

    expect(decodeWorkerMessage(encodeMessage(ready))).toEqual(ready);
  });

  it('weights message', () => {
    const tensors = [
      tensor('conv2d/kernel', [2, 2, 1, 3], float32FromBits(patternBits(12))),
      tensor('conv2d/bias', [3], new Float32Array([0.5, -0.25, 3e-40])),
      tensor('scalar', [], new Float32Array([7])),
      tensor('empty', [0, 4], new Float32Array(0)),
    ];

    const decoded = decodeCoordinatorMessage(encodeMessage({ type: 'weights', step: 41, tensors }));

    expect(decoded.type).toBe('weights');
    if (decoded.type !== 'weights') return;
    expect(decoded.step).toBe(41);
    expectSameTensors(decoded.tensors, tensors);
  });

  it('shard message', () => {
    const sampleIds = Uint32Array.from([0, 1, 59_999, 0xffffffff]);
    const images = Uint8Array.from({ length: 4 * 6 }, (_, i) => (i * 37) % 256);
    const labels = Uint8Array.from([3, 0, 9, 255]);

    const decoded = decodeCoordinatorMessage(encodeMessage({ type: 'shard', step: 5, epoch: 2, sampleIds, images, labels }));

    expect(decoded.type).toBe('shard');
    if (decoded.type !== 'shard') return;
    expect(decoded.prefetched).toBeUndefined();
    if (decoded.prefetched) return;
    expect(decoded.step).toBe(5);
    expect(decoded.epoch).toBe(2);
    expect(decoded.sampleIds).toBeInstanceOf(Uint32Array);
    expect(Array.from(decoded.sampleIds)).toEqual(Array.from(sampleIds));
    expect(Array.from(decoded.images)).toEqual(Array.from(images));
    expect(Array.from(decoded.labels)).toEqual(Array.from(labels));
  });

  it('gradient message', () => {
    const tensors = [tensor('dense/kernel', [2, 3], float32FromBits(patternBits(6))), tensor('dense/bias', [3], new Float32Array([1, 2, 3]))];
    const gradient: GradientMessage = { type: 'gradient', step: 9, count: 32, loss: 2.302585, correct: 4, computeMs: 18.5, tensors };

    const decoded = decodeWorkerMessage(encodeMessage(gradient));

    expect(decoded.type).toBe('gradient');
    if (decoded.type !== 'gradient') return;
    expect(decoded.step).toBe(9);
    expect(decoded.count).toBe(32);
    expect(decoded.loss).toBe(2.302585);
    expect(decoded.correct).toBe(4);
    expect(decoded.computeMs).toBe(18.5);
    expectSameTensors(decoded.tensors, tensors);
  });

  it('error message from either side', () => {
    const error: Message = { type: 'error', code: 'SELF_CHECK_FAILED', message: 'the gradient self-check failed on the wasm backend' };

    expect(decodeWorkerMessage(encodeMessage(error))).toEqual(error);
    expect(decodeCoordinatorMessage(encodeMessage(error))).toEqual(error);
  });

  it('done message', () => {
    const done: Message = { type: 'done', reason: 'all 3 epochs finished' };

    expect(decodeCoordinatorMessage(encodeMessage(done))).toEqual(done);
  });
});

describe('tensor decoding alignment', () => {
  // 63 floats fit in a bin8 (2-byte header), 64 need a bin16 (3 bytes), 16384 need a bin32 (5 bytes).
  const SIZES = [1, 2, 3, 5, 14, 31, 63, 64, 65, 16_384];

  it('bits survive every frame offset', () => {
    const alignments = new Set<number>();

    for (const size of SIZES) {
      const data = float32FromBits(patternBits(size));
      const frame = encodeMessage({ type: 'weights', step: 0, tensors: [tensor('w', [size], data)] });
      const dataStart = indexOfBytes(frame, new Uint8Array(data.buffer));
      expect(dataStart).toBeGreaterThan(0);

      for (let offset = 0; offset < 8; offset++) {
        alignments.add((offset + dataStart) % 4);
        const decoded = decodeCoordinatorMessage(frameAtOffset(frame, offset));
        if (decoded.type !== 'weights') throw new Error(`expected a weights message, got ${decoded.type}`);

        expect(decoded.tensors[0].data.length).toBe(size);
        expect(bitsOf(decoded.tensors[0].data)).toEqual(bitsOf(data));
      }
    }

    expect([...alignments].sort()).toEqual([0, 1, 2, 3]);
  });

  it('several tensors at mixed alignments', () => {
    // Names of 1 to 5 characters shift each following tensor's data by one more byte.
    const tensors = [1, 2, 3, 4, 7].map((size, t) => tensor('t'.repeat(t + 1), [size], float32FromBits(patternBits(size + t).slice(t))));
    const frame = encodeMessage({ type: 'gradient', step: 1, count: 1, loss: 0, correct: 0, computeMs: 0, tensors });

    for (let offset = 0; offset < 8; offset++) {
      const decoded = decodeWorkerMessage(frameAtOffset(frame, offset));
      if (decoded.type !== 'gradient') throw new Error(`expected a gradient message, got ${decoded.type}`);

      expectSameTensors(decoded.tensors, tensors);
    }
  });

  it('shard sample ids at every offset', () => {
    const sampleIds = Uint32Array.from([0x01020304, 0xffffffff, 0, 0x80000000, 12_345]);
    const frame = encodeMessage({
      type: 'shard',
      step: 0,
      epoch: 0,
      sampleIds,
      images: new Uint8Array(5 * 4),
      labels: new Uint8Array(5),
    });

    for (let offset = 0; offset < 8; offset++) {
      const decoded = decodeCoordinatorMessage(frameAtOffset(frame, offset));
      if (decoded.type !== 'shard') throw new Error(`expected a shard message, got ${decoded.type}`);

      expect(Array.from(decoded.sampleIds)).toEqual(Array.from(sampleIds));
    }
  });
});

describe('float64 fields', () => {
  function decodedLoss(loss: number): number {
    const frame = encodeMessage({ type: 'gradient', step: 0, count: 1, loss, correct: 0, computeMs: 0, tensors: [] });
    const decoded = decodeWorkerMessage(frame);
    if (decoded.type !== 'gradient') throw new Error(`expected a gradient message, got ${decoded.type}`);
    return decoded.loss;
  }

  it('loss 0.1 stays exact', () => {
    expect(decodedLoss(0.1)).toBe(0.1);
  });

  it('loss 1/3 stays exact', () => {
    expect(decodedLoss(1 / 3)).toBe(1 / 3);
  });

  it('loss 1e-300 stays exact', () => {
    expect(decodedLoss(1e-300)).toBe(1e-300);
  });

  it('loss beyond float32 range', () => {
    expect(decodedLoss(1e300)).toBe(1e300);
    expect(decodedLoss(-2.5e-310)).toBe(-2.5e-310);
  });

  it('ready selfCheckMs stays exact', () => {
    const decoded = decodeWorkerMessage(encodeMessage({ type: 'ready', selfCheckMs: 0.1 + 0.2 }));
    if (decoded.type !== 'ready') throw new Error(`expected a ready message, got ${decoded.type}`);

    expect(decoded.selfCheckMs).toBe(0.1 + 0.2);
  });
});

/** Builds a valid gradient in wire form, with typed arrays as bytes, as the codec packs them. */
function wireGradient(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    type: 'gradient',
    step: 3,
    count: 2,
    loss: 0.5,
    correct: 1,
    computeMs: 4,
    tensors: [{ name: 'dense/bias', shape: [2], dtype: 'float32', data: new Uint8Array(8) }],
    ...overrides,
  };
}

function wireTensorFrame(tensorFields: Record<string, unknown>): Uint8Array {
  const base = { name: 'dense/kernel', shape: [2, 3], dtype: 'float32', data: new Uint8Array(24) };
  return pack(wireGradient({ tensors: [{ ...base, ...tensorFields }] }));
}

function wireShard(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    type: 'shard',
    step: 0,
    epoch: 0,
    sampleIds: new Uint8Array(new Uint32Array([4, 8, 15]).buffer),
    images: new Uint8Array(3 * 4),
    labels: new Uint8Array(3),
    ...overrides,
  };
}

describe('decoder rejections', () => {
  function expectCode(decode: () => unknown, code: ErrorCode): ProtocolError {
    const error = protocolErrorOf(decode);
    expect(error.code).toBe(code);
    return error;
  }

  it('valid wire frames decode', () => {
    // Guards the fixtures below: each rejection must come from the one field a test changes.
    expect(decodeWorkerMessage(pack(wireGradient())).type).toBe('gradient');
    expect(decodeWorkerMessage(wireTensorFrame({})).type).toBe('gradient');
    expect(decodeCoordinatorMessage(pack(wireShard())).type).toBe('shard');
  });

  it.each([
    ['truncated array', [0x92, 0x01]],
    ['trailing bytes', [0x01, 0x02, 0x03]],
    ['truncated string', [0xa5, 0x41]],
    ['reserved byte 0xc1', [0xc1]],
    ['empty frame', []],
  ])('garbage bytes: %s', (_, bytes) => {
    expectCode(() => decodeWorkerMessage(Uint8Array.from(bytes)), 'MALFORMED_MESSAGE');
  });

  it.each([
    ['array', [1, 2]],
    ['string', 'hello'],
    ['number', 42],
    ['nil', null],
    ['boolean', true],
  ])('non-map value: %s', (_, value) => {
    expectCode(() => decodeWorkerMessage(pack(value)), 'MALFORMED_MESSAGE');
  });

  it('missing type field', () => {
    expectCode(() => decodeWorkerMessage(pack({ selfCheckMs: 3 })), 'MALFORMED_MESSAGE');
  });

  it('non-string type field', () => {
    expectCode(() => decodeWorkerMessage(pack({ type: 7 })), 'MALFORMED_MESSAGE');
  });

  it('unknown type', () => {
    expectCode(() => decodeWorkerMessage(pack({ type: 'heartbeat' })), 'UNEXPECTED_MESSAGE');
    expectCode(() => decodeCoordinatorMessage(pack({ type: 'heartbeat' })), 'UNEXPECTED_MESSAGE');
  });

  it.each<[string, Message]>([
    ['welcome', { type: 'welcome', protocolVersion: PROTOCOL_VERSION, workerId: 'w-1', modelTopology: {}, parameters: [], inputShape: [28, 28, 1], numClasses: 10, heartbeatMs: 5000, maxMessageBytes: 1048576 }],
    ['weights', { type: 'weights', step: 0, tensors: [] }],
    ['shard', { type: 'shard', step: 0, epoch: 0, sampleIds: Uint32Array.from([1]), images: new Uint8Array(4), labels: new Uint8Array(1) }],
    ['done', { type: 'done', reason: 'finished' }],
  ])('coordinator type %s from worker', (_, message) => {
    const frame = encodeMessage(message);
    expect(decodeCoordinatorMessage(frame).type).toBe(message.type);

    expectCode(() => decodeWorkerMessage(frame), 'UNEXPECTED_MESSAGE');
  });

  it.each<[string, Message]>([
    ['hello', { type: 'hello', protocolVersion: PROTOCOL_VERSION, workerName: 'a', backend: 'cpu', gradfleetVersion: '0.1.0' }],
    ['ready', { type: 'ready', selfCheckMs: 1 }],
    ['gradient', { type: 'gradient', step: 0, count: 1, loss: 0, correct: 0, computeMs: 0, tensors: [] }],
  ])('worker type %s from coordinator', (_, message) => {
    const frame = encodeMessage(message);
    expect(decodeWorkerMessage(frame).type).toBe(message.type);

    expectCode(() => decodeCoordinatorMessage(frame), 'UNEXPECTED_MESSAGE');
  });

  it('hello with another version', () => {
    const frame = pack({ type: 'hello', protocolVersion: PROTOCOL_VERSION + 98, workerName: 'a', backend: 'cpu', gradfleetVersion: '9.0.0' });

    const error = expectCode(() => decodeWorkerMessage(frame), 'PROTOCOL_VERSION_MISMATCH');

    expect(error.message).toContain(`version ${PROTOCOL_VERSION + 98}`);
    expect(error.message).toMatch(new RegExp(`speaks ${PROTOCOL_VERSION}\\b`));
  });

  it('welcome with another version', () => {
    const frame = pack({
      type: 'welcome',
      protocolVersion: PROTOCOL_VERSION + 98,
      workerId: 'w-1',
      modelTopology: {},
      parameters: [],
      inputShape: [28, 28, 1],
      numClasses: 10,
    });

    const error = expectCode(() => decodeCoordinatorMessage(frame), 'PROTOCOL_VERSION_MISMATCH');

    expect(error.message).toContain(`version ${PROTOCOL_VERSION + 98}`);
    expect(error.message).toMatch(new RegExp(`speaks ${PROTOCOL_VERSION}\\b`));
  });

  it('tensor bytes too short', () => {
    const error = expectCode(() => decodeWorkerMessage(wireTensorFrame({ data: new Uint8Array(20) })), 'MALFORMED_MESSAGE');

    expect(error.message).toContain('needs 24 bytes, got 20');
  });

  it('tensor bytes too long', () => {
    expectCode(() => decodeWorkerMessage(wireTensorFrame({ data: new Uint8Array(28) })), 'MALFORMED_MESSAGE');
  });

  it('tensor bytes not a multiple of 4', () => {
    expectCode(() => decodeWorkerMessage(wireTensorFrame({ shape: [6], data: new Uint8Array(23) })), 'MALFORMED_MESSAGE');
  });

  it('tensor data not binary', () => {
    expectCode(() => decodeWorkerMessage(wireTensorFrame({ data: [0, 0, 0, 0, 0, 0] })), 'MALFORMED_MESSAGE');
  });

  it.each(['float64', 'int32', 'float16', undefined])('tensor dtype %s', (dtype) => {
    expectCode(() => decodeWorkerMessage(wireTensorFrame({ dtype })), 'MALFORMED_MESSAGE');
  });

  it('negative shape entry', () => {
    expectCode(() => decodeWorkerMessage(wireTensorFrame({ shape: [-2, -3] })), 'MALFORMED_MESSAGE');
  });

  it('fractional shape entry', () => {
    expectCode(() => decodeWorkerMessage(wireTensorFrame({ shape: [1.5, 4] })), 'MALFORMED_MESSAGE');
  });

  it('shape not an array', () => {
    expectCode(() => decodeWorkerMessage(wireTensorFrame({ shape: 6 })), 'MALFORMED_MESSAGE');
  });

  it('weights tensor with bad shape', () => {
    const frame = pack({ type: 'weights', step: 0, tensors: [{ name: 'w', shape: [-1], dtype: 'float32', data: new Uint8Array(0) }] });

    expectCode(() => decodeCoordinatorMessage(frame), 'MALFORMED_MESSAGE');
  });

  it('shard with fewer labels', () => {
    const error = expectCode(() => decodeCoordinatorMessage(pack(wireShard({ labels: new Uint8Array(2) }))), 'MALFORMED_MESSAGE');

    expect(error.message).toContain('3 sample ids but 2 labels');
  });

  it('shard with more labels', () => {
    expectCode(() => decodeCoordinatorMessage(pack(wireShard({ labels: new Uint8Array(4) }))), 'MALFORMED_MESSAGE');
  });

  it('shard with uneven image bytes', () => {
    expectCode(() => decodeCoordinatorMessage(pack(wireShard({ images: new Uint8Array(13) }))), 'MALFORMED_MESSAGE');
  });

  it('shard sample ids not whole', () => {
    // 10 bytes are two and a half uint32 ids; the 2 labels match the whole ids only.
    const frame = pack(wireShard({ sampleIds: new Uint8Array(10), labels: new Uint8Array(2), images: new Uint8Array(2) }));

    for (let offset = 0; offset < 4; offset++) {
      expectCode(() => decodeCoordinatorMessage(frameAtOffset(frame, offset)), 'MALFORMED_MESSAGE');
    }
  });

  it('gradient count 0', () => {
    expectCode(() => decodeWorkerMessage(pack(wireGradient({ count: 0 }))), 'MALFORMED_MESSAGE');
  });

  it('gradient count fractional', () => {
    expectCode(() => decodeWorkerMessage(pack(wireGradient({ count: 2.5 }))), 'MALFORMED_MESSAGE');
  });

  it('gradient count negative', () => {
    expectCode(() => decodeWorkerMessage(pack(wireGradient({ count: -2 }))), 'MALFORMED_MESSAGE');
  });

  it('gradient loss as string', () => {
    const error = expectCode(() => decodeWorkerMessage(pack(wireGradient({ loss: '0.5' }))), 'MALFORMED_MESSAGE');

    expect(error.message).toContain('"loss"');
  });

  it('gradient loss missing', () => {
    expectCode(() => decodeWorkerMessage(pack(wireGradient({ loss: undefined }))), 'MALFORMED_MESSAGE');
  });

  it('gradient step negative', () => {
    expectCode(() => decodeWorkerMessage(pack(wireGradient({ step: -1 }))), 'MALFORMED_MESSAGE');
  });

  it('error with unknown code', () => {
    expectCode(() => decodeWorkerMessage(pack({ type: 'error', code: 'OUT_OF_MEMORY', message: 'x' })), 'MALFORMED_MESSAGE');
  });

  it('NaN loss decodes', () => {
    const decoded = decodeWorkerMessage(pack(wireGradient({ loss: NaN })));
    if (decoded.type !== 'gradient') throw new Error(`expected a gradient message, got ${decoded.type}`);

    expect(decoded.loss).toBeNaN();
  });

  it('infinite loss decodes', () => {
    const decoded = decodeWorkerMessage(pack(wireGradient({ loss: Infinity })));
    if (decoded.type !== 'gradient') throw new Error(`expected a gradient message, got ${decoded.type}`);

    expect(decoded.loss).toBe(Infinity);
  });
});
