import * as tf from '@tensorflow/tfjs';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import { requireChannelsLast, requireInput, requireNoDilation } from './attributes.js';
import { computeConvGeometry, resolveGeometry } from './conv-geometry.js';
import { isNonNegative, NO_PADDING, resampleSpatial } from './spatial-resample.js';
import { im2col } from './im2col.js';
import {
  conv2dExplicit,
  releaseIntermediate,
  runWasmKernel,
  transposeWasm,
  type SpatialPadding,
} from './wasm-ops.js';

const KERNEL = 'Conv2DBackpropFilter';

type Conv2DInfo = tf.backend_util.Conv2DInfo;

/**
 * Largest patch matrix, in float32 values (128 MiB), that the matrix product path builds.
 * The patch matrix and its transpose are on the wasm heap at the same time.
 */
const MAX_PATCH_VALUES = 1 << 25;

const PLAIN_PRODUCT = { transposeA: false, transposeB: false };

/**
 * Computes the padding of x that makes a stride-1 convolution with dy, dilated by the
 * forward stride, produce exactly filterHeight x filterWidth outputs, so the padded
 * length is filterSize + (outSize - 1) * stride. The trailing side is negative when the
 * forward convolution never read the last rows or columns of x.
 */
function filterGradientPadding(info: Conv2DInfo): SpatialPadding {
  const paddedHeight = info.filterHeight + (info.outHeight - 1) * info.strideHeight;
  const paddedWidth = info.filterWidth + (info.outWidth - 1) * info.strideWidth;
  return {
    top: info.padInfo.top,
    bottom: paddedHeight - info.inHeight - info.padInfo.top,
    left: info.padInfo.left,
    right: paddedWidth - info.inWidth - info.padInfo.left,
  };
}

/**
 * Computes dL/dfilter as a forward convolution with the batch and channel axes swapped:
 * dW[kh, kw, i, o] = sum over n, oy, ox of x[n, oy*s + kh - pad, ox*s + kw - pad, i] * dy[n, oy, ox, o],
 * which is Conv2D(image = x as [inC, H, W, N], filter = dy as [OH, OW, N, outC],
 * dilation = forward stride), an [inC, fh, fw, outC] result transposed to [fh, fw, inC, outC].
 */
function filterGradientByConvolution(backend: BackendWasm, x: tf.TensorInfo, dy: tf.TensorInfo, info: Conv2DInfo): tf.TensorInfo {
  let padding = filterGradientPadding(info);
  let paddedX = x;
  if (!isNonNegative(padding)) {
    // XNNPACK takes only non-negative padding, so crop and pad x here instead.
    paddedX = resampleSpatial(backend, x, [1, 1], padding, KERNEL);
    padding = NO_PADDING;
  }
  const image = transposeWasm(backend, paddedX, [3, 1, 2, 0]);
  if (paddedX !== x) {
    releaseIntermediate(backend, paddedX);
  }
  const filter = transposeWasm(backend, dy, [1, 2, 0, 3]);
  const product = conv2dExplicit(backend, image, filter, padding, [info.strideHeight, info.strideWidth]);
  releaseIntermediate(backend, image);
  releaseIntermediate(backend, filter);

  const dw = transposeWasm(backend, product, [1, 2, 0, 3]);
  releaseIntermediate(backend, product);
  return dw;
}

/**
 * Computes dL/dfilter as one matrix product, dW [F, outC] = patches^T [F, P] x dy [P, outC],
 * where P = N * OH * OW output pixels and F = fh * fw * inC. XNNPACK packs dy, and the
 * product is already in [fh, fw, inC, outC] order.
 */
function filterGradientPackingDy(backend: BackendWasm, x: tf.TensorInfo, dy: tf.TensorInfo, info: Conv2DInfo): tf.TensorInfo {
  const pixels = info.batchSize * info.outHeight * info.outWidth;
  const rowLength = info.filterHeight * info.filterWidth * info.inChannels;
  const patches = im2col(backend, x, info, KERNEL);
  const patchesTransposed = transposeWasm(backend, { ...patches, shape: [pixels, rowLength] }, [1, 0]);
  releaseIntermediate(backend, patches);

  // A TensorInfo with a new shape over the same dataId reads dy as a matrix without a copy.
  const a = { ...patchesTransposed, shape: [1, rowLength, pixels] };
  const b = { dataId: dy.dataId, shape: [1, pixels, info.outChannels], dtype: dy.dtype };
  const product = runWasmKernel('BatchMatMul', backend, { a, b }, PLAIN_PRODUCT);
  releaseIntermediate(backend, patchesTransposed);
  return { ...product, shape: [info.filterHeight, info.filterWidth, info.inChannels, info.outChannels] };
}

/**
 * Computes dL/dfilter as dW^T [outC, F] = dy^T [outC, P] x patches [P, F], followed by a
 * transpose, with P and F as in filterGradientPackingDy. XNNPACK packs the patch matrix.
 */
function filterGradientPackingPatches(backend: BackendWasm, x: tf.TensorInfo, dy: tf.TensorInfo, info: Conv2DInfo): tf.TensorInfo {
  const pixels = info.batchSize * info.outHeight * info.outWidth;
  const patches = im2col(backend, x, info, KERNEL);
  const dyMatrix = { dataId: dy.dataId, shape: [pixels, info.outChannels], dtype: dy.dtype };
  const dyTransposed = transposeWasm(backend, dyMatrix, [1, 0]);
  const a = { ...dyTransposed, shape: [1, info.outChannels, pixels] };
  const product = runWasmKernel('BatchMatMul', backend, { a, b: patches }, PLAIN_PRODUCT);
  releaseIntermediate(backend, patches);
  releaseIntermediate(backend, dyTransposed);

  const rowLength = info.filterHeight * info.filterWidth * info.inChannels;
  const dw = transposeWasm(backend, { ...product, shape: [info.outChannels, rowLength] }, [1, 0]);
  releaseIntermediate(backend, product);
  return { ...dw, shape: [info.filterHeight, info.filterWidth, info.inChannels, info.outChannels] };
}

/**
 * Computes dL/dfilter on XNNPACK. The wasm backend (4.22) caches packed weights by tensor
 * id, and these operands are new tensors in every step, so each call packs one operand.
 * Packing cost about 19 ns per value (BatchMatMul with a new against a cached right
 * operand of 495k values, 2-core AMD EPYC), more than the skinny products themselves.
 * So the product that packs the smaller of dy (P * outC values) and the patch matrix
 * (P * F values) runs. On the reference CNN at batch 64 this took 23 ms against 29 ms
 * before (first conv layer) and 71 ms against 78 ms (second), load average 4.
 * Patch matrices above maxPatchValues take the convolution path, which packs dy and
 * needs no memory beyond its transposes.
 */
function conv2DBackpropFilter(
  args: { inputs: tf.NamedTensorInfoMap; backend: BackendWasm; attrs: tf.NamedAttrMap },
  maxPatchValues: number,
): tf.TensorInfo {
  const { backend } = args;
  const x = requireInput(KERNEL, args.inputs, 'x');
  const dy = requireInput(KERNEL, args.inputs, 'dy');
  const attrs = args.attrs as unknown as tf.Conv2DBackpropFilterAttrs;
  requireChannelsLast(KERNEL, attrs.dataFormat);
  requireNoDilation(KERNEL, attrs);
  const info = resolveGeometry(
    KERNEL,
    (mode) => computeConvGeometry(x.shape, attrs.filterShape, attrs.strides, attrs.pad, mode),
    attrs.dimRoundingMode,
    dy.shape,
  );

  const patchValues = info.batchSize * info.outHeight * info.outWidth * info.filterHeight * info.filterWidth * info.inChannels;
  if (patchValues > maxPatchValues) {
    return filterGradientByConvolution(backend, x, dy, info);
  }
  const patchLength = info.filterHeight * info.filterWidth * info.inChannels;
  if (patchLength < info.outChannels) {
    return filterGradientPackingPatches(backend, x, dy, info);
  }
  return filterGradientPackingDy(backend, x, dy, info);
}

/**
 * Creates the kernel config. Tests lower maxPatchValues to run the convolution path on
 * small shapes.
 */
export function createConv2DBackpropFilterConfig(maxPatchValues = MAX_PATCH_VALUES): tf.KernelConfig {
  const kernelFunc = (args: { inputs: tf.NamedTensorInfoMap; backend: BackendWasm; attrs: tf.NamedAttrMap }) =>
    conv2DBackpropFilter(args, maxPatchValues);
  return { kernelName: KERNEL, backendName: 'wasm', kernelFunc: kernelFunc as unknown as tf.KernelFunc };
}

export const conv2DBackpropFilterConfig: tf.KernelConfig = createConv2DBackpropFilterConfig();
