import { Packr } from 'msgpackr';
import { describe, expect, it } from 'vitest';

import type { WorkerSession } from '../../coordinator/session.js';
import { StepRun } from '../../coordinator/step.js';
import { decodeCoordinatorMessage, decodeWorkerMessage, encodeMessage } from '../../shared/codec.js';
import {
  INT8_BLOCK_SIZE,
  decodeFloat16,
  decodeInt8,
  encodeFloat16,
  encodeInt8,
  encodedByteLength,
  float16Bits,
  float16Value,
  int8ScaleCount,
  roundTrip,
  type GradientEncoding,
} from '../../shared/encoding.js';
import { PROTOCOL_VERSION, ProtocolError, type GradientMessage, type WelcomeMessage, type WireTensor } from '../../shared/protocol.js';

const packr = new Packr({ useRecords: false, moreTypes: false });

/** Values from a fixed-seed generator, uniform in [-scale, scale). */
function randomValues(length: number, scale: number, seed = 1): Float32Array {
  let state = seed >>> 0;
  const values = new Float32Array(length);
  for (let i = 0; i < length; i++) {
    state = (state * 1664525 + 1013904223) >>> 0;
    values[i] = (state / 2 ** 32 - 0.5) * 2 * scale;
  }
  return values;
}

function bytesOf(array: Float32Array | Int8Array | Uint16Array): Uint8Array {
  return new Uint8Array(array.buffer, array.byteOffset, array.byteLength);
}

describe('fp16', () => {
  it.each<[string, number, number]>([
    ['one', 1, 0x3c00],
    ['minus two', -2, 0xc000],
    ['largest half', 65504, 0x7bff],
    ['below the overflow midpoint', 65519, 0x7bff],
    ['overflow midpoint ties to infinity', 65520, 0x7c00],
    ['float32 max', 3.4028234663852886e38, 0x7c00],
    ['minus infinity', -Infinity, 0xfc00],
    ['smallest normal', 2 ** -14, 0x0400],
    ['largest subnormal', 1023 * 2 ** -24, 0x03ff],
    ['smallest subnormal', 2 ** -24, 0x0001],
    ['half the smallest subnormal ties to zero', 2 ** -25, 0x0000],
    ['above half the smallest subnormal', 1.5 * 2 ** -25, 0x0001],
    ['subnormal tie rounds to even', 2.5 * 2 ** -24, 0x0002],
    ['subnormal carries into the normals', (1023.5 + 0.25) * 2 ** -24, 0x0400],
    ['float32 subnormal', 1e-40, 0x0000],
    ['negative zero', -0, 0x8000],
    ['tie below rounds to even', 1 + 2 ** -11, 0x3c00],
    ['tie above rounds to even', 1 + 3 * 2 ** -11, 0x3c02],
    ['just above a tie', 1 + 2 ** -11 + 2 ** -20, 0x3c01],
  ])('encodes %s', (_, value, bits) => {
    expect(float16Bits(value)).toBe(bits);
  });

  it('keeps NaN', () => {
    const bits = float16Bits(NaN);
    expect(bits & 0x7c00).toBe(0x7c00);
    expect(bits & 0x03ff).not.toBe(0);
    expect(float16Value(bits)).toBeNaN();
    // A NaN whose payload sits only in the low float32 bits must not become an infinity.
    const lowPayload = new Float32Array(new Uint32Array([0x7f800001]).buffer)[0];
    expect(float16Value(float16Bits(lowPayload))).toBeNaN();
  });

  it('every half survives a round trip', () => {
    for (let bits = 0; bits < 0x10000; bits++) {
      const value = float16Value(bits);
      if (Number.isNaN(value)) continue;
      expect(float16Bits(value)).toBe(bits);
    }
  });

  it('relative error of normals at most 2^-11', () => {
    const magnitudes = Float32Array.from({ length: 20_000 }, (_, i) => 2 ** (-14 + (30 * i) / 20_000) * (1 + ((i * 7919) % 1000) / 1000));
    const values = magnitudes.map((magnitude, i) => (i % 2 === 0 ? magnitude : -magnitude)).filter((value) => Math.abs(value) <= 65504);
    const decoded = decodeFloat16(encodeFloat16(values));
    let worst = 0;
    for (let i = 0; i < values.length; i++) worst = Math.max(worst, Math.abs(decoded[i] - values[i]) / Math.abs(values[i]));
    expect(worst).toBeGreaterThan(0);
    expect(worst).toBeLessThanOrEqual(2 ** -11);
  });

  it('absolute error of subnormals at most 2^-25', () => {
    const values = randomValues(5_000, 2 ** -14);
    const decoded = decodeFloat16(encodeFloat16(values));
    for (let i = 0; i < values.length; i++) expect(Math.abs(decoded[i] - values[i])).toBeLessThanOrEqual(2 ** -25);
  });

  it('decodes special values', () => {
    const decoded = decodeFloat16(encodeFloat16(Float32Array.from([Infinity, -Infinity, NaN, 70000, -70000, -0])));
    expect(Array.from(decoded.slice(0, 2))).toEqual([Infinity, -Infinity]);
    expect(decoded[2]).toBeNaN();
    expect(Array.from(decoded.slice(3, 5))).toEqual([Infinity, -Infinity]);
    expect(Object.is(decoded[5], -0)).toBe(true);
  });

  it('empty tensor', () => {
    expect(encodeFloat16(new Float32Array(0))).toHaveLength(0);
    expect(decodeFloat16(new Uint16Array(0))).toHaveLength(0);
  });
});

describe('int8', () => {
  /** Checks |x − decoded| ≤ scale/2 per value, with room for the float32 rounding of code × scale. */
  function expectWithinHalfScale(values: Float32Array): void {
    const encoded = encodeInt8(values);
    const decoded = decodeInt8(encoded);
    expect(encoded.scales).toHaveLength(int8ScaleCount(values.length));
    for (let i = 0; i < values.length; i++) {
      const scale = encoded.scales[Math.floor(i / INT8_BLOCK_SIZE)];
      const bound = scale / 2 + Math.abs(values[i]) * 2 ** -23;
      expect(Math.abs(decoded[i] - values[i]), `value ${i}`).toBeLessThanOrEqual(bound);
    }
  }

  it.each([0, 1, 255, 256, 257, 1000, 3 * 256])('error at most scale/2 for %i values', (length) => {
    expectWithinHalfScale(randomValues(length, 0.01, length + 1));
  });

  it('scale per block is max|x| / 127', () => {
    const values = new Float32Array(2 * INT8_BLOCK_SIZE + 3);
    values[10] = -0.5;
    values[INT8_BLOCK_SIZE + 4] = 2;
    values[2 * INT8_BLOCK_SIZE + 1] = 1e-3;
    const { codes, scales } = encodeInt8(values);
    expect(Array.from(scales)).toEqual([Math.fround(0.5 / 127), Math.fround(2 / 127), Math.fround(1e-3 / 127)]);
    expect(codes[10]).toBe(-127);
    expect(codes[INT8_BLOCK_SIZE + 4]).toBe(127);
    expect(codes[2 * INT8_BLOCK_SIZE + 1]).toBe(127);
  });

  it('blocks of different magnitudes', () => {
    const values = randomValues(4 * INT8_BLOCK_SIZE, 1);
    for (let i = INT8_BLOCK_SIZE; i < 2 * INT8_BLOCK_SIZE; i++) values[i] *= 1e-6;
    expectWithinHalfScale(values);
  });

  it('zero block', () => {
    const { codes, scales } = encodeInt8(new Float32Array(300));
    expect(Array.from(scales)).toEqual([0, 0]);
    expect(codes.every((code) => code === 0)).toBe(true);
    expect(decodeInt8({ codes, scales }).every((value) => value === 0)).toBe(true);
  });

  it('NaN makes its block NaN', () => {
    const values = randomValues(600, 1);
    values[300] = NaN;
    const encoded = encodeInt8(values);
    expect(encoded.scales[0]).toBeGreaterThan(0);
    expect(encoded.scales[1]).toBeNaN();
    const decoded = decodeInt8(encoded);
    expect(decoded.slice(256, 512).every(Number.isNaN)).toBe(true);
    expect(decoded.slice(0, 256).every(Number.isFinite)).toBe(true);
  });

  it('infinity makes its block infinite', () => {
    const values = randomValues(10, 1);
    values[3] = -Infinity;
    const encoded = encodeInt8(values);
    expect(encoded.scales[0]).toBe(Infinity);
    expect(decodeInt8(encoded).every((value) => value === Infinity)).toBe(true);
  });

  it('empty tensor', () => {
    const encoded = encodeInt8(new Float32Array(0));
    expect(encoded.codes).toHaveLength(0);
    expect(encoded.scales).toHaveLength(0);
    expect(decodeInt8(encoded)).toHaveLength(0);
  });
});

describe('encodedByteLength', () => {
  it.each<[GradientEncoding, number, number]>([
    ['fp32', 1000, 4000],
    ['fp16', 1000, 2000],
    ['int8', 1000, 1000 + 4 * 4],
    ['int8', 256, 256 + 4],
    ['int8', 0, 0],
  ])('%s of %i values', (encoding, length, bytes) => {
    expect(encodedByteLength(encoding, length)).toBe(bytes);
  });
});

// ---------------------------------------------------------------------------
// The encodings on the wire.

const SHAPES = [[3, 100], [257], [0, 4], []];

function gradientOf(encoding: GradientEncoding, fill = (length: number, t: number) => randomValues(length, 0.05, t + 7)): GradientMessage {
  const tensors: WireTensor[] = SHAPES.map((shape, t) => {
    const length = shape.reduce((product, size) => product * size, 1);
    return { name: `t${t}`, shape, dtype: 'float32', data: fill(length, t) };
  });
  return { type: 'gradient', step: 2, count: 8, loss: 0.7, correct: 5, computeMs: 1, tensors, encoding };
}

/** Returns the msgpack map of a gradient frame, to change fields that the codec would never write. */
function wireFields(message: GradientMessage): Record<string, any> {
  return packr.unpack(encodeMessage(message));
}

function expectMalformed(fields: Record<string, any>, text: string): void {
  try {
    decodeWorkerMessage(packr.pack(fields));
  } catch (error) {
    expect(error).toBeInstanceOf(ProtocolError);
    expect((error as ProtocolError).code).toBe('MALFORMED_MESSAGE');
    expect((error as ProtocolError).message).toContain(text);
    return;
  }
  throw new Error('expected MALFORMED_MESSAGE, but the frame decoded');
}

describe('codec with encodings', () => {
  it.each<GradientEncoding>(['fp16', 'int8'])('%s gradient round trip', (encoding) => {
    const message = gradientOf(encoding);
    const decoded = decodeWorkerMessage(encodeMessage(message));
    if (decoded.type !== 'gradient') throw new Error(`expected a gradient, got ${decoded.type}`);
    expect(decoded.encoding).toBe(encoding);
    decoded.tensors.forEach((tensor, t) => {
      expect(tensor.dtype).toBe('float32');
      expect(tensor.shape).toEqual(SHAPES[t]);
      expect(Array.from(tensor.data)).toEqual(Array.from(roundTrip(encoding, message.tensors[t].data)));
    });
  });

  it('fp32 gradient decodes without an encoding field', () => {
    const decoded = decodeWorkerMessage(encodeMessage(gradientOf('fp32')));
    expect(decoded).not.toHaveProperty('encoding');
  });

  it.each<[GradientEncoding, string]>([
    ['fp32', 'float32'],
    ['fp16', 'float16'],
    ['int8', 'int8'],
  ])('%s tensors carry dtype %s', (encoding, dtype) => {
    const fields = wireFields(gradientOf(encoding));
    expect(fields).not.toHaveProperty('encoding');
    for (const tensor of fields.tensors) expect(tensor.dtype).toBe(dtype);
    const first = fields.tensors[0];
    expect(first.data.byteLength).toBe(encodedByteLength(encoding, 300) - (encoding === 'int8' ? 4 * 2 : 0));
    if (encoding === 'int8') expect(first.scales.byteLength).toBe(4 * 2);
    else expect(first).not.toHaveProperty('scales');
  });

  it('frame sizes shrink with the encoding', () => {
    const tensors: WireTensor[] = [{ name: 'w', shape: [100_000], dtype: 'float32', data: randomValues(100_000, 1) }];
    const frameBytes = (encoding: GradientEncoding) => encodeMessage({ ...gradientOf(encoding), tensors }).byteLength;
    expect(frameBytes('fp16') / frameBytes('fp32')).toBeCloseTo(0.5, 2);
    // One byte per value plus a 4-byte scale per 256 values: (1 + 4/256) / 4.
    expect(frameBytes('int8') / frameBytes('fp32')).toBeCloseTo(0.254, 2);
  });

  it('NaN scale passes the codec as NaN values', () => {
    const message = gradientOf('int8');
    message.tensors[1].data[5] = NaN;
    const decoded = decodeWorkerMessage(encodeMessage(message));
    if (decoded.type !== 'gradient') throw new Error(`expected a gradient, got ${decoded.type}`);
    expect(decoded.tensors[1].data.slice(0, 256).every(Number.isNaN)).toBe(true);
    expect(decoded.tensors[1].data[256]).not.toBeNaN();
  });

  it('rejects fp16 data of the wrong length', () => {
    const fields = wireFields(gradientOf('fp16'));
    fields.tensors[0].data = fields.tensors[0].data.subarray(1);
    expectMalformed(fields, 'needs 600 bytes, got 599');
  });

  it('rejects int8 data of the wrong length', () => {
    const fields = wireFields(gradientOf('int8'));
    fields.tensors[1].data = new Uint8Array(258);
    expectMalformed(fields, 'needs 257 bytes, got 258');
  });

  it('rejects missing int8 scales', () => {
    const fields = wireFields(gradientOf('int8'));
    delete fields.tensors[0].scales;
    expectMalformed(fields, 'field "scales" must be binary data');
  });

  it.each([4, 12, 7])('rejects %i bytes of scales for 2 blocks', (byteLength) => {
    const fields = wireFields(gradientOf('int8'));
    fields.tensors[0].scales = new Uint8Array(byteLength);
    expectMalformed(fields, `needs 2 float32 scales (8 bytes), got ${byteLength} bytes`);
  });

  it('rejects scales on an empty int8 tensor', () => {
    const fields = wireFields(gradientOf('int8'));
    fields.tensors[2].scales = new Uint8Array(4);
    expectMalformed(fields, 'needs 0 float32 scales');
  });

  it.each([-1, -Infinity])('rejects the scale %d', (scale) => {
    const fields = wireFields(gradientOf('int8'));
    fields.tensors[0].scales = bytesOf(Float32Array.from([0.1, scale]));
    expectMalformed(fields, 'negative scale');
  });

  it('rejects the int8 code -128', () => {
    const fields = wireFields(gradientOf('int8'));
    const codes = new Int8Array(300);
    codes[17] = -128;
    fields.tensors[0].data = bytesOf(codes);
    expectMalformed(fields, 'code -128 at index 17');
  });

  it('rejects scales on an fp16 tensor', () => {
    const fields = wireFields(gradientOf('fp16'));
    fields.tensors[0].scales = new Uint8Array(8);
    expectMalformed(fields, 'only int8 tensors carry');
  });

  it('rejects mixed dtypes', () => {
    const fields = wireFields(gradientOf('int8'));
    fields.tensors[1] = wireFields(gradientOf('fp16')).tensors[1];
    expectMalformed(fields, 'all tensors must share one dtype');
  });

  it('rejects compressed weights', () => {
    const fields = wireFields(gradientOf('fp16'));
    const frame = packr.pack({ type: 'weights', step: 0, tensors: fields.tensors });
    expect(() => decodeCoordinatorMessage(frame)).toThrow(/dtype "float16"; expected one of "float32"/);
  });

  it('welcome with gradientEncoding', () => {
    const welcome: WelcomeMessage = { type: 'welcome', protocolVersion: PROTOCOL_VERSION, workerId: 'w1', modelTopology: {}, parameters: [], inputShape: [28, 28, 1], numClasses: 10, heartbeatMs: 5000, maxMessageBytes: 1 << 20 };
    const decoded = decodeCoordinatorMessage(encodeMessage({ ...welcome, gradientEncoding: 'int8' }));
    expect(decoded).toHaveProperty('gradientEncoding', 'int8');
    expect(() => decodeCoordinatorMessage(packr.pack({ ...welcome, gradientEncoding: 'int4' }))).toThrow(/"gradientEncoding" must be one of fp32, fp16, int8, got "int4"/);
  });
});

// ---------------------------------------------------------------------------
// The coordinator's step with encoded gradients.

describe('step with encoded gradients', () => {
  const specs = SHAPES.map((shape, t) => ({ name: `t${t}`, shape }));

  function fakeSession(workerId: string): WorkerSession {
    return { workerId, state: 'active' } as unknown as WorkerSession;
  }

  function makeRun(encoding: GradientEncoding) {
    const run = new StepRun(2, 1, [Uint32Array.from([0, 1, 2, 3, 4, 5, 6, 7]), Uint32Array.from([8, 9, 10, 11, 12, 13, 14, 15])], specs, () => undefined, encoding);
    const sessions = [fakeSession('a'), fakeSession('b')];
    run.assign(sessions);
    return { run, sessions };
  }

  /** Sends a gradient through the codec, as the coordinator receives it. */
  function received(message: GradientMessage): GradientMessage {
    const decoded = decodeWorkerMessage(encodeMessage(message));
    if (decoded.type !== 'gradient') throw new Error(`expected a gradient, got ${decoded.type}`);
    return decoded;
  }

  function rejectionOf(accept: () => unknown): ProtocolError {
    try {
      accept();
    } catch (error) {
      expect(error).toBeInstanceOf(ProtocolError);
      return error as ProtocolError;
    }
    throw new Error('expected a ProtocolError, but the gradient was accepted');
  }

  it('int8 gradient is accumulated decoded', () => {
    const { run, sessions } = makeRun('int8');
    const message = gradientOf('int8');
    run.accept(sessions[0], received(message));
    run.accept(sessions[1], received(message));
    const average = run.accumulator.average();
    expect(Array.from(average[1])).toEqual(Array.from(roundTrip('int8', message.tensors[1].data)));
  });

  it('NaN under int8 is INVALID_GRADIENT', () => {
    const { run, sessions } = makeRun('int8');
    const message = gradientOf('int8');
    message.tensors[0].data[3] = NaN;
    const error = rejectionOf(() => run.accept(sessions[0], received(message)));
    expect(error.code).toBe('INVALID_GRADIENT');
    expect(error.message).toContain('non-finite value (NaN)');
  });

  it('NaN twice under int8 skips the step', async () => {
    const { run, sessions } = makeRun('int8');
    const poisoned = gradientOf('int8');
    poisoned.tensors[1].data[0] = NaN;
    expect(rejectionOf(() => run.accept(sessions[0], received(poisoned))).code).toBe('INVALID_GRADIENT');
    run.accept(sessions[1], received(gradientOf('int8')));
    // The first shard goes to the second worker, whose gradient is NaN as well.
    run.assign(sessions);
    expect(rejectionOf(() => run.accept(sessions[1], received(poisoned))).code).toBe('INVALID_GRADIENT');
    await run.finished;
    expect(run.skipped).toContain('non-finite on 2 workers');
  });

  it('fp16 overflow is INVALID_GRADIENT', () => {
    const { run, sessions } = makeRun('fp16');
    const message = gradientOf('fp16');
    message.tensors[0].data[0] = 1e6;
    const error = rejectionOf(() => run.accept(sessions[0], received(message)));
    expect(error.code).toBe('INVALID_GRADIENT');
    expect(error.message).toContain('non-finite value (Infinity)');
  });

  it('rejects another encoding than announced', () => {
    const { run, sessions } = makeRun('int8');
    const error = rejectionOf(() => run.accept(sessions[0], received(gradientOf('fp16'))));
    expect(error.code).toBe('INVALID_GRADIENT');
    expect(error.message).toContain('encoded as fp16, but the coordinator asked for int8');
  });
});
