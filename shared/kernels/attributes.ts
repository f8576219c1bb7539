import type { TensorInfo as TensorInfoLike } from '@tensorflow/tfjs';
import { UnsupportedKernelAttributeError } from './errors.js';

/** Rejects every data format except NHWC, the only layout these kernels index. */
export function requireChannelsLast(kernelName: string, dataFormat: string | undefined): void {
  if (dataFormat !== undefined && dataFormat !== 'NHWC') {
    throw new UnsupportedKernelAttributeError(kernelName, 'dataFormat', dataFormat, "'NHWC'");
  }
}

/**
 * Rejects dilations other than 1. The tfjs gradient kernels carry no dilations attribute
 * (tfjs-core 4.22 refuses dilated convolution gradients before it reaches a kernel), so
 * this only fires when a caller passes one explicitly.
 */
export function requireNoDilation(kernelName: string, attrs: object): void {
  const dilations = (attrs as { dilations?: number | number[] }).dilations;
  if (dilations === undefined) {
    return;
  }
  const values = typeof dilations === 'number' ? [dilations] : dilations;
  if (values.some((value) => value !== 1)) {
    throw new UnsupportedKernelAttributeError(kernelName, 'dilations', dilations, '1 or [1, 1]');
  }
}

/** Returns a named kernel input, throwing when the engine did not pass it. */
export function requireInput(kernelName: string, inputs: object, name: string): TensorInfoLike {
  const input = (inputs as Record<string, TensorInfoLike | undefined>)[name];
  if (input === undefined) {
    throw new Error(`${kernelName} was called without its input '${name}'; pass it in the inputs map.`);
  }
  return input;
}
