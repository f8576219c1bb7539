/**
 * Gradient encodings: how the float32 values of a gradient tensor are written on the wire.
 *
 * - `fp32` sends the float32 values unchanged, 4 bytes per value.
 * - `fp16` sends IEEE 754 half-precision values, 2 bytes per value, rounded to the nearest
 *   half (ties to even). Values beyond ±65504 become ±Infinity, values below 2^-24 in
 *   magnitude become ±0, and NaN stays NaN.
 * - `int8` sends one signed byte per value and one float32 scale per block of
 *   INT8_BLOCK_SIZE values: scale = max|x| / 127 over the block, and each value is
 *   round(x / scale), from -127 to 127, so it decodes to q × scale. A block that contains a
 *   NaN gets a NaN scale, and one with an infinity gets an infinite scale, so a non-finite
 *   gradient still decodes to non-finite values.
 *
 * Weights always travel as fp32. The codec calls these functions; code on either side of the
 * connection handles only float32 arrays.
 */

/** The encodings a gradient can travel in, as `--gradient-encoding` names them. */
export const GRADIENT_ENCODINGS = ['fp32', 'fp16', 'int8'] as const;
export type GradientEncoding = (typeof GRADIENT_ENCODINGS)[number];

/**
 * Values per int8 scale. 256 keeps the scales at 4/256 of a byte per value (1.6%), and a
 * block small enough that one large value coarsens the rounding of only 255 others.
 */
export const INT8_BLOCK_SIZE = 256;

/** The largest int8 code; -128 is never used, so the range is symmetric around 0. */
const INT8_MAX = 127;

/** Returns the number of int8 scales, one per started block, for a tensor of `length` values. */
export function int8ScaleCount(length: number): number {
  return Math.ceil(length / INT8_BLOCK_SIZE);
}

/** Returns the number of bytes a tensor of `length` values takes on the wire, data and scales. */
export function encodedByteLength(encoding: GradientEncoding, length: number): number {
  if (encoding === 'fp32') return 4 * length;
  if (encoding === 'fp16') return 2 * length;
  return length + 4 * int8ScaleCount(length);
}

// ---------------------------------------------------------------------------
// fp16

const floatView = new Float32Array(1);
const bitsView = new Uint32Array(floatView.buffer);

/** Returns the IEEE 754 half-precision bits nearest to `value` (round to nearest, ties to even). */
export function float16Bits(value: number): number {
  floatView[0] = value;
  const bits = bitsView[0];
  const sign = (bits >>> 16) & 0x8000;
  const exponent = (bits >>> 23) & 0xff;
  const mantissa = bits & 0x7fffff;

  if (exponent === 0xff) {
    // Infinity keeps a zero mantissa. NaN keeps the top of its payload, with the quiet bit
    // set so that the payload cannot shrink to zero and turn it into an infinity.
    return mantissa === 0 ? sign | 0x7c00 : sign | 0x7e00 | (mantissa >>> 13);
  }
  // Half precision has a 5-bit exponent biased by 15; float32's 8-bit exponent is biased by 127.
  const halfExponent = exponent - 127 + 15;
  if (halfExponent >= 0x1f) return sign | 0x7c00;
  if (halfExponent <= 0) return sign | subnormalFloat16(mantissa | 0x800000, 14 - halfExponent);

  // Keep the top 10 of the 23 mantissa bits and round on the 13 dropped ones. A carry out of
  // the mantissa raises the exponent, which is the correct result, up to 0x7c00 (infinity).
  const half = sign | (halfExponent << 10) | (mantissa >>> 13);
  const dropped = mantissa & 0x1fff;
  return dropped > 0x1000 || (dropped === 0x1000 && (half & 1) === 1) ? half + 1 : half;
}

/**
 * Returns the mantissa of a subnormal half (or 0x400, the smallest normal half, when rounding
 * carries): the 24-bit float32 significand shifted right by `shift`, rounded to nearest even.
 */
function subnormalFloat16(significand: number, shift: number): number {
  // Anything below 2^-25, half the smallest subnormal, rounds to zero.
  if (shift > 24) return 0;
  const truncated = significand >>> shift;
  const dropped = significand & ((1 << shift) - 1);
  const halfway = 1 << (shift - 1);
  return dropped > halfway || (dropped === halfway && (truncated & 1) === 1) ? truncated + 1 : truncated;
}

/** Returns the number that the half-precision bits `bits` represent. */
export function float16Value(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >>> 10) & 0x1f;
  const mantissa = bits & 0x3ff;
  if (exponent === 0) return sign * mantissa * 2 ** -24;
  if (exponent === 0x1f) return mantissa === 0 ? sign * Infinity : NaN;
  return sign * (0x400 + mantissa) * 2 ** (exponent - 25);
}

/** Every half value as a float32, indexed by its bits: 256 KiB, built on first use. */
let float16Table: Float32Array | undefined;

function float16Values(): Float32Array {
  if (!float16Table) {
    float16Table = new Float32Array(0x10000);
    for (let bits = 0; bits < 0x10000; bits++) float16Table[bits] = float16Value(bits);
  }
  return float16Table;
}

/** Encodes float32 values as half-precision bits. */
export function encodeFloat16(values: Float32Array): Uint16Array {
  const halves = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) halves[i] = float16Bits(values[i]);
  return halves;
}

/** Decodes half-precision bits into float32 values; every half is exact in float32. */
export function decodeFloat16(halves: Uint16Array, out = new Float32Array(halves.length)): Float32Array {
  const table = float16Values();
  for (let i = 0; i < halves.length; i++) out[i] = table[halves[i]];
  return out;
}

// ---------------------------------------------------------------------------
// int8

/** A tensor in the int8 encoding: one code per value and one scale per INT8_BLOCK_SIZE values. */
export interface Int8Encoded {
  codes: Int8Array;
  scales: Float32Array;
}

/** Encodes float32 values as int8 codes with a symmetric float32 scale per block. */
export function encodeInt8(values: Float32Array): Int8Encoded {
  const codes = new Int8Array(values.length);
  const scales = new Float32Array(int8ScaleCount(values.length));
  for (let block = 0; block < scales.length; block++) {
    const start = block * INT8_BLOCK_SIZE;
    const end = Math.min(start + INT8_BLOCK_SIZE, values.length);
    const scale = blockScale(values, start, end);
    scales[block] = scale;
    // A zero block keeps its zero codes. A non-finite scale leaves them zero too: the scale
    // alone makes the block decode to non-finite values.
    if (scale === 0 || !Number.isFinite(scale)) continue;
    for (let i = start; i < end; i++) {
      // x / scale can exceed 127 by a rounding error, because the scale is rounded to float32.
      const code = Math.round(values[i] / scale);
      codes[i] = Math.max(-INT8_MAX, Math.min(INT8_MAX, code));
    }
  }
  return { codes, scales };
}

/** Returns max|x| / 127 over values[start, end) as a float32: NaN if one is NaN, Infinity if one is infinite. */
function blockScale(values: Float32Array, start: number, end: number): number {
  let max = 0;
  for (let i = start; i < end; i++) {
    const magnitude = Math.abs(values[i]);
    if (Number.isNaN(magnitude)) return NaN;
    if (magnitude > max) max = magnitude;
  }
  return Math.fround(max / INT8_MAX);
}

/** Decodes int8 codes and their block scales into float32 values (code × scale). */
export function decodeInt8(encoded: Int8Encoded, out = new Float32Array(encoded.codes.length)): Float32Array {
  const { codes, scales } = encoded;
  for (let block = 0; block < scales.length; block++) {
    const scale = scales[block];
    const end = Math.min((block + 1) * INT8_BLOCK_SIZE, codes.length);
    if (Number.isFinite(scale)) {
      for (let i = block * INT8_BLOCK_SIZE; i < end; i++) out[i] = codes[i] * scale;
    } else {
      // Code × Infinity would be NaN for code 0 and infinite for the others. So the whole
      // block is filled with the scale itself, and a check of any value finds it.
      out.fill(scale, block * INT8_BLOCK_SIZE, end);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------

/** Returns the float32 values that `values` decode to after a trip through `encoding`. */
export function roundTrip(encoding: GradientEncoding, values: Float32Array): Float32Array {
  if (encoding === 'fp32') return values.slice();
  if (encoding === 'fp16') return decodeFloat16(encodeFloat16(values));
  return decodeInt8(encodeInt8(values));
}
