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
 * Computes dL/dfilter as one matrix product, dW^T [outC, F] = dy^T [outC, P] x patches [P, F],
 * where P = N * OH * OW output pixels and F = fh * fw * inC, followed by a transpose.
 */
function filterGradientByMatMul(backend: BackendWasm, x: tf.TensorInfo, dy: tf.TensorInfo, info: Conv2DInfo): tf.TensorInfo {
  const pixels = info.batchSize * info.outHeight * info.outWidth;
  const patches = im2col(backend, x, info, KERNEL);
  // A TensorInfo with a new shape over the same dataId reads dy as a matrix without a copy.
  const dyMatrix = { dataId: dy.dataId, shape: [pixels, info.outChannels], dtype: dy.dtype };
  const dyTransposed = transposeWasm(backend, dyMatrix, [1, 0]);
  const a = { ...dyTransposed, shape: [1, info.outChannels, pixels] };
  const attrs = { transposeA: false, transposeB: false };
  const product = runWasmKernel('BatchMatMul', backend, { a, b: patches }, attrs);
  releaseIntermediate(backend, patches);
  releaseIntermediate(backend, dyTransposed);

  const rowLength = info.filterHeight * info.filterWidth * info.inChannels;
  const productMatrix = { ...product, shape: [info.outChannels, rowLength] };
  const dw = transposeWasm(backend, productMatrix, [1, 0]);
  releaseIntermediate(backend, product);
  return { ...dw, shape: [info.filterHeight, info.filterWidth, info.inChannels, info.outChannels] };
}

/**
 * Computes dL/dfilter on XNNPACK. Each call packs one operand as XNNPACK weights, which
 * took about 10 ns per value at batch 64 on a 2-core AMD EPYC (bench/compute.ts) and
 * dominates when the other operand is small. The convolution path packs dy (P * outC
 * values) and the matrix product path packs the patch matrix (P * F values), so the
 * path with the smaller packed operand runs.
 */
function conv2DBackpropFilter(args: {
  inputs: tf.NamedTensorInfoMap;
  backend: BackendWasm;
  attrs: tf.NamedAttrMap;
}): tf.TensorInfo {
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

  const patchLength = info.filterHeight * info.filterWidth * info.inChannels;
  if (patchLength < info.outChannels) {
    return filterGradientByMatMul(backend, x, dy, info);
  }
  return filterGradientByConvolution(backend, x, dy, info);
}

export const conv2DBackpropFilterConfig: tf.KernelConfig = {
  kernelName: KERNEL,
  backendName: 'wasm',
  kernelFunc: conv2DBackpropFilter as unknown as tf.KernelFunc,
};
