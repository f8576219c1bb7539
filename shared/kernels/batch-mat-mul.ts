import type * as tf from '@tensorflow/tfjs';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import { requireInput } from './attributes.js';
import { releaseIntermediate, transposeWasm } from './wasm-ops.js';

const KERNEL = 'BatchMatMul';

/** Transposes the last two axes, the matrix axes of a BatchMatMul operand. */
function transposeMatrices(backend: BackendWasm, x: tf.TensorInfo): tf.TensorInfo {
  const rank = x.shape.length;
  const perm = [...Array(rank - 2).keys(), rank - 1, rank - 2];
  return transposeWasm(backend, x, perm);
}

/**
 * Wraps the wasm BatchMatMul so that transposed operands are transposed explicitly first.
 * The wasm backend (4.22) sends any product with transposeA or transposeB to a scalar C++
 * loop about ten times slower than its XNNPACK path, and the Dense layer's backward
 * pass requests exactly those products. The explicit transpose costs one copy.
 */
export function createBatchMatMulConfig(original: tf.KernelConfig): tf.KernelConfig {
  const batchMatMul = (args: { inputs: tf.NamedTensorInfoMap; backend: BackendWasm; attrs: tf.NamedAttrMap }) => {
    const { backend } = args;
    const attrs = args.attrs as unknown as tf.BatchMatMulAttrs;
    if (!attrs.transposeA && !attrs.transposeB) {
      return original.kernelFunc(args);
    }
    const a = requireInput(KERNEL, args.inputs, 'a');
    const b = requireInput(KERNEL, args.inputs, 'b');
    const plainA = attrs.transposeA ? transposeMatrices(backend, a) : a;
    const plainB = attrs.transposeB ? transposeMatrices(backend, b) : b;
    const plainAttrs = { transposeA: false, transposeB: false };
    const product = original.kernelFunc({ inputs: { a: plainA, b: plainB }, backend, attrs: plainAttrs });
    if (plainA !== a) {
      releaseIntermediate(backend, plainA);
    }
    if (plainB !== b) {
      releaseIntermediate(backend, plainB);
    }
    return product;
  };
  // The original's setupFunc binds its C++ function, so it must run when the backend starts.
  return { ...original, kernelName: KERNEL, kernelFunc: batchMatMul as unknown as tf.KernelFunc };
}
