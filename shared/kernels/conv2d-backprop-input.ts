import * as tf from '@tensorflow/tfjs';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import { requireChannelsLast, requireInput, requireNoDilation } from './attributes.js';
import { computeConvGeometry, resolveGeometry } from './conv-geometry.js';
import { isNonNegative, NO_PADDING, resampleSpatial } from './spatial-resample.js';
import {
  conv2dExplicit,
  float32View,
  releaseIntermediate,
  type SpatialPadding,
} from './wasm-ops.js';

const KERNEL = 'Conv2DBackpropInput';

/**
 * Computes the padding of the stride-dilated dy that makes a stride-1 convolution with a
 * filter of the forward size produce exactly inHeight x inWidth outputs. The leading side
 * is filterSize - 1 - forward leading padding, and the padded length is
 * inSize + filterSize - 1. Either side is negative when the forward padding exceeded
 * what the filter could reach.
 */
function inputGradientPadding(info: tf.backend_util.Conv2DInfo): SpatialPadding {
  const top = info.filterHeight - 1 - info.padInfo.top;
  const left = info.filterWidth - 1 - info.padInfo.left;
  const dilatedHeight = (info.outHeight - 1) * info.strideHeight + 1;
  const dilatedWidth = (info.outWidth - 1) * info.strideWidth + 1;
  return {
    top,
    bottom: info.inHeight + info.filterHeight - 1 - top - dilatedHeight,
    left,
    right: info.inWidth + info.filterWidth - 1 - left - dilatedWidth,
  };
}

/**
 * Rotates a [fh, fw, inC, outC] filter by 180 degrees in space and swaps its channel axes,
 * giving the [fh, fw, outC, inC] filter of the transposed convolution.
 */
function rotateFilter(backend: BackendWasm, filter: tf.TensorInfo): tf.TensorInfo {
  const [height, width, inChannels, outChannels] = filter.shape;
  const rotated = backend.makeOutput([height, width, outChannels, inChannels], 'float32');
  const source = float32View(backend, filter, KERNEL);
  const target = float32View(backend, rotated, KERNEL);
  for (let r = 0; r < height; r++) {
    for (let c = 0; c < width; c++) {
      const sourcePixel = ((height - 1 - r) * width + (width - 1 - c)) * inChannels * outChannels;
      const targetPixel = (r * width + c) * outChannels * inChannels;
      for (let i = 0; i < inChannels; i++) {
        for (let o = 0; o < outChannels; o++) {
          target[targetPixel + o * inChannels + i] = source[sourcePixel + i * outChannels + o];
        }
      }
    }
  }
  return rotated;
}

/**
 * Computes dL/dx as the transposed convolution of dy: dy is dilated by the forward stride
 * and padded (see inputGradientPadding), then convolved with stride 1 by the rotated,
 * channel-swapped filter on XNNPACK through the wasm Conv2D kernel.
 */
function conv2DBackpropInput(args: {
  inputs: tf.NamedTensorInfoMap;
  backend: BackendWasm;
  attrs: tf.NamedAttrMap;
}): tf.TensorInfo {
  const { backend } = args;
  const dy = requireInput(KERNEL, args.inputs, 'dy');
  const filter = requireInput(KERNEL, args.inputs, 'filter');
  const attrs = args.attrs as unknown as tf.Conv2DBackpropInputAttrs;
  requireChannelsLast(KERNEL, attrs.dataFormat);
  requireNoDilation(KERNEL, attrs);
  const info = resolveGeometry(
    KERNEL,
    (mode) => computeConvGeometry(attrs.inputShape, filter.shape, attrs.strides, attrs.pad, mode),
    attrs.dimRoundingMode,
    dy.shape,
  );

  let padding = inputGradientPadding(info);
  let image = dy;
  const unitStride = info.strideHeight === 1 && info.strideWidth === 1;
  if (!unitStride || !isNonNegative(padding)) {
    // XNNPACK pads but neither dilates its input nor crops it, so do both here.
    image = resampleSpatial(backend, dy, [info.strideHeight, info.strideWidth], padding, KERNEL);
    padding = NO_PADDING;
  }
  const rotated = rotateFilter(backend, filter);
  const dx = conv2dExplicit(backend, image, rotated, padding, [1, 1]);
  releaseIntermediate(backend, rotated);
  if (image !== dy) {
    releaseIntermediate(backend, image);
  }
  return dx;
}

export const conv2DBackpropInputConfig: tf.KernelConfig = {
  kernelName: KERNEL,
  backendName: 'wasm',
  kernelFunc: conv2DBackpropInput as unknown as tf.KernelFunc,
};
