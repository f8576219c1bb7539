import * as tf from '@tensorflow/tfjs';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';

/** Four spatial paddings in elements; any of them may be negative, which crops instead. */
export interface SpatialPadding {
  top: number;
  bottom: number;
  left: number;
  right: number;
}

/**
 * Runs a kernel of the wasm backend directly on TensorInfos, bypassing the engine, so
 * that intermediates of a composite kernel are neither tracked nor recorded for gradients.
 * The caller owns the result and must release it with `releaseIntermediate`
 * unless it is the kernel's output.
 */
export function runWasmKernel(
  kernelName: string,
  backend: BackendWasm,
  inputs: tf.NamedTensorInfoMap,
  attrs: tf.NamedAttrMap,
): tf.TensorInfo {
  const kernel = tf.getKernel(kernelName, 'wasm');
  if (kernel === undefined) {
    throw new Error(
      `The wasm kernel ${kernelName} is not registered; import '@tensorflow/tfjs-backend-wasm' ` +
        'before registering the gradfleet gradient kernels.',
    );
  }
  return kernel.kernelFunc({ inputs, attrs, backend }) as tf.TensorInfo;
}

/** Frees the wasm heap memory of an intermediate that never reached the engine. */
export function releaseIntermediate(backend: BackendWasm, info: tf.TensorInfo): void {
  backend.disposeData(info.dataId);
}

/**
 * Returns a float32 view of a tensor's data on the wasm heap. Allocating any wasm memory
 * may grow the heap and detach earlier views, so take views after the last allocation.
 */
export function float32View(backend: BackendWasm, info: tf.TensorInfo, kernelName: string): Float32Array {
  if (info.dtype !== 'float32') {
    throw new Error(
      `${kernelName} expects float32 tensors but got dtype ${info.dtype} for a tensor of shape ` +
        `[${info.shape.join(', ')}]; cast the input to float32.`,
    );
  }
  return backend.typedArrayFromHeap(info) as Float32Array;
}

/** Runs the wasm Conv2D (XNNPACK) on NHWC tensors with explicit, non-negative padding. */
export function conv2dExplicit(
  backend: BackendWasm,
  x: tf.TensorInfo,
  filter: tf.TensorInfo,
  padding: SpatialPadding,
  dilations: [number, number],
): tf.TensorInfo {
  const pad = [
    [0, 0],
    [padding.top, padding.bottom],
    [padding.left, padding.right],
    [0, 0],
  ];
  const attrs = { strides: [1, 1], dilations, pad, dataFormat: 'NHWC', dimRoundingMode: undefined };
  return runWasmKernel('Conv2D', backend, { x, filter }, attrs as unknown as tf.NamedAttrMap);
}

/** Runs the wasm Transpose kernel. */
export function transposeWasm(backend: BackendWasm, x: tf.TensorInfo, perm: number[]): tf.TensorInfo {
  return runWasmKernel('Transpose', backend, { x }, { perm });
}
