import type * as tf from '@tensorflow/tfjs';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import { requireInput } from './attributes.js';

const KERNEL = 'Identity';

/**
 * Wraps the wasm Identity so that it shares the input's memory instead of copying it.
 * The engine clones every tensor it saves for the backward pass, and the wasm backend
 * (4.22) copies each clone, about 5 ms per step of the reference CNN at batch 64.
 * Sharing is safe because tensor data is immutable, and the reference count keeps the
 * memory alive until both tensors are disposed, as the wasm Reshape kernel already does.
 * String tensors keep the original kernel, which stores their bytes outside the heap.
 */
export function createIdentityConfig(original: tf.KernelConfig): tf.KernelConfig {
  const identity = (args: { inputs: tf.NamedTensorInfoMap; backend: BackendWasm; attrs: tf.NamedAttrMap }) => {
    const x = requireInput(KERNEL, args.inputs, 'x');
    if (x.dtype === 'string') {
      return original.kernelFunc(args);
    }
    args.backend.incRef(x.dataId);
    return { dataId: x.dataId, shape: [...x.shape], dtype: x.dtype };
  };
  return { ...original, kernelName: KERNEL, kernelFunc: identity as unknown as tf.KernelFunc };
}
