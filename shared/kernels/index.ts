import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
import { createBatchMatMulConfig } from './batch-mat-mul.js';
import { conv2DBackpropFilterConfig } from './conv2d-backprop-filter.js';
import { conv2DBackpropInputConfig } from './conv2d-backprop-input.js';
import { createIdentityConfig } from './identity.js';
import { maxPoolGradConfig } from './max-pool-grad.js';
import { createSumConfig } from './sum.js';

export { UnsupportedKernelAttributeError } from './errors.js';

/** Kernels implemented here from scratch; the wasm package's versions are missing or slow. */
const REPLACEMENTS: readonly tf.KernelConfig[] = [
  conv2DBackpropFilterConfig,
  conv2DBackpropInputConfig,
  maxPoolGradConfig,
];

/** Kernels that keep the wasm package's version for most inputs and speed up the rest. */
const WRAPPERS: ReadonlyArray<readonly [string, (original: tf.KernelConfig) => tf.KernelConfig]> = [
  ['BatchMatMul', createBatchMatMulConfig],
  ['Sum', createSumConfig],
  ['Identity', createIdentityConfig],
];

/** Names of the wasm kernels that gradfleet replaces, adds or wraps. */
export const WASM_GRADIENT_KERNELS: readonly string[] = [
  ...REPLACEMENTS.map((config) => config.kernelName),
  ...WRAPPERS.map(([kernelName]) => kernelName),
];

/** Kernel functions installed by this module, so a second registration can skip them. */
const installed = new WeakSet<tf.KernelFunc>();

function install(config: tf.KernelConfig): void {
  if (tf.getKernel(config.kernelName, 'wasm') !== undefined) {
    tf.unregisterKernel(config.kernelName, 'wasm');
  }
  tf.registerKernel(config);
  installed.add(config.kernelFunc);
}

/**
 * Registers gradfleet's gradient kernels for the wasm backend, replacing or wrapping the
 * wasm package's kernels of the same names. Call it before or after the wasm backend
 * starts. Calling it again changes nothing.
 */
export function registerWasmGradientKernels(): void {
  for (const config of REPLACEMENTS) {
    const current = tf.getKernel(config.kernelName, 'wasm');
    if (current === undefined || !installed.has(current.kernelFunc)) {
      install(config);
    }
  }
  for (const [kernelName, wrap] of WRAPPERS) {
    const current = tf.getKernel(kernelName, 'wasm');
    if (current === undefined) {
      throw new Error(
        `The wasm kernel ${kernelName} is not registered, so it cannot be wrapped; ` +
          "check that '@tensorflow/tfjs-backend-wasm' 4.x is installed.",
      );
    }
    if (!installed.has(current.kernelFunc)) {
      install(wrap(current));
    }
  }
}
