import { describe, expect, it } from 'vitest';

import { INT8_BLOCK_SIZE, roundTrip, type GradientEncoding } from '../../shared/encoding.js';
import { GradientCompressor } from '../../worker/compression.js';

/**
 * A gradient that int8 cannot send in one step: one large value sets the block's scale to
 * 1/127, and every other value, 0.001, is 0.127 of that scale, so it rounds to code 0.
 */
function smallGradient(): Float32Array {
  const gradient = new Float32Array(INT8_BLOCK_SIZE).fill(0.001);
  gradient[0] = 1;
  return gradient;
}

/** Returns the sum of what the coordinator decodes over `steps` steps of the same gradient. */
function sentOver(steps: number, encoding: GradientEncoding, compressor: GradientCompressor | undefined, gradient: () => Float32Array): Float64Array {
  const sum = new Float64Array(gradient().length);
  for (let step = 0; step < steps; step++) {
    const [compensated] = compressor ? compressor.compensate([gradient()]) : [gradient()];
    const decoded = roundTrip(encoding, compensated);
    for (let i = 0; i < sum.length; i++) sum[i] += decoded[i];
  }
  return sum;
}

describe('GradientCompressor', () => {
  it('int8 without error feedback loses small values', () => {
    const sum = sentOver(20, 'int8', undefined, smallGradient);
    expect(sum[1]).toBe(0);
  });

  it('int8 error feedback sends small values later', () => {
    const steps = 20;
    const sum = sentOver(steps, 'int8', new GradientCompressor('int8'), smallGradient);
    const scale = Math.fround(1 / 127);
    // The sum lags the true sum by the last residual, at most half a scale per value.
    for (let i = 1; i < INT8_BLOCK_SIZE; i++) expect(Math.abs(sum[i] - steps * 0.001), `value ${i}`).toBeLessThanOrEqual(scale / 2 + 1e-6);
    expect(sum[1]).toBeGreaterThan(0);
    expect(Math.abs(sum[0] - steps)).toBeLessThanOrEqual(scale / 2 + 1e-6);
  });

  it.each([10, 100, 1000])('int8 sum tracks k × gradient over %i steps', (steps) => {
    const sum = sentOver(steps, 'int8', new GradientCompressor('int8'), smallGradient);
    const relative = Math.abs(sum[7] - steps * 0.001) / (steps * 0.001);
    // The gap stays below half a scale, so relative to k × 0.001 it shrinks like 1/k.
    expect(relative).toBeLessThanOrEqual(Math.fround(1 / 127) / 2 / (steps * 0.001) + 1e-3);
  });

  it('fp16 error feedback carries rounding', () => {
    // 1 + 2^-12 rounds to 1 in fp16; the residual adds up to one ulp (2^-10) every 4 steps.
    const gradient = () => Float32Array.of(1 + 2 ** -12);
    const steps = 64;
    expect(sentOver(steps, 'fp16', undefined, gradient)[0]).toBe(steps);
    const sum = sentOver(steps, 'fp16', new GradientCompressor('fp16'), gradient);
    expect(Math.abs(sum[0] - steps * (1 + 2 ** -12))).toBeLessThanOrEqual(2 ** -11);
  });

  it('fp32 carries nothing', () => {
    const compressor = new GradientCompressor('fp32');
    const gradient = smallGradient();
    const [sent] = compressor.compensate([gradient]);
    expect(sent).toBe(gradient);
    expect(Array.from(sent)).toEqual(Array.from(smallGradient()));
  });

  it('new compressor starts from zero', () => {
    const first = new GradientCompressor('int8');
    first.compensate([smallGradient()]);
    const [again] = first.compensate([smallGradient()]);
    expect(again[1]).toBeCloseTo(0.002, 6);
    const [fresh] = new GradientCompressor('int8').compensate([smallGradient()]);
    expect(fresh[1]).toBeCloseTo(0.001, 6);
  });

  it('NaN gradient does not poison later steps', () => {
    const compressor = new GradientCompressor('int8');
    const poisoned = smallGradient();
    poisoned[5] = NaN;
    compressor.compensate([poisoned]);
    const [next] = compressor.compensate([smallGradient()]);
    expect(next.every(Number.isFinite)).toBe(true);
  });

  it('fp16 overflow does not poison later steps', () => {
    const compressor = new GradientCompressor('fp16');
    compressor.compensate([Float32Array.of(1e6, 1)]);
    const [next] = compressor.compensate([Float32Array.of(1, 1)]);
    expect(Array.from(next)).toEqual([1, 1]);
  });

  it('tensors keep separate residuals', () => {
    const compressor = new GradientCompressor('int8');
    compressor.compensate([smallGradient(), new Float32Array(3)]);
    const [first, second] = compressor.compensate([smallGradient(), new Float32Array(3)]);
    expect(first[1]).toBeCloseTo(0.002, 6);
    expect(Array.from(second)).toEqual([0, 0, 0]);
  });
});
