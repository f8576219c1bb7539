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
 * Computes a x b^T as (b x a^T)^T. XNNPACK packs the right operand of every product, so
 * this packs a^T in place of b^T, for two transposes instead of one. The Dense layer's
 * input gradient at batch 64 of the reference CNN, [64, 128] x [1600, 128]^T, took
 * 3.1 ms this way against 5.7 ms (2-core AMD EPYC, load average 8).
 */
function multiplyByTransposedSwapped(
  original: tf.KernelConfig,
  backend: BackendWasm,
  a: tf.TensorInfo,
  b: tf.TensorInfo,
): tf.TensorInfo {
  const aTransposed = transposeMatrices(backend, a);
  const attrs = { transposeA: false, transposeB: false };
  const product = original.kernelFunc({ inputs: { a: b, b: aTransposed }, backend, attrs }) as tf.TensorInfo;
  releaseIntermediate(backend, aTransposed);
  const result = transposeMatrices(backend, product);
  releaseIntermediate(backend, product);
  return result;
}

/**
 * Returns whether a x b^T costs less as (b x a^T)^T, with a of shape [..., m, k] and b of
 * shape [..., n, k]. The cost is the number of values transposed or packed: 2 * n * k
 * for b^T, against 2 * m * k + m * n for a^T and the transposed product.
 */
function prefersSwappedProduct(a: tf.TensorInfo, b: tf.TensorInfo): boolean {
  const [m, k] = a.shape.slice(-2) as [number, number];
  const n = b.shape[b.shape.length - 2]!;
  return 2 * m * k + m * n < 2 * n * k;
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
    if (!attrs.transposeA && prefersSwappedProduct(a, b)) {
      return multiplyByTransposedSwapped(original, backend, a, b);
    }
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
