import type * as tf from '@tensorflow/tfjs';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import { float32View } from './wasm-ops.js';

/** Copies the x values under one filter window into one row of the patch matrix. */
function copyWindow(
  info: tf.backend_util.Conv2DInfo,
  source: Float32Array,
  target: Float32Array,
  window: { batch: number; outRow: number; outColumn: number; rowOffset: number },
): void {
  const { inHeight, inWidth, inChannels, filterHeight, filterWidth } = info;
  for (let kh = 0; kh < filterHeight; kh++) {
    const r = window.outRow * info.strideHeight + kh - info.padInfo.top;
    if (r < 0 || r >= inHeight) {
      continue;
    }
    for (let kw = 0; kw < filterWidth; kw++) {
      const c = window.outColumn * info.strideWidth + kw - info.padInfo.left;
      if (c < 0 || c >= inWidth) {
        continue;
      }
      const from = ((window.batch * inHeight + r) * inWidth + c) * inChannels;
      const to = window.rowOffset + (kh * filterWidth + kw) * inChannels;
      if (inChannels === 1) {
        target[to] = source[from];
      } else {
        target.set(source.subarray(from, from + inChannels), to);
      }
    }
  }
}

/**
 * Builds the patch matrix of an NHWC input: shape [1, N * outHeight * outWidth,
 * filterHeight * filterWidth * inChannels], one row per output pixel in NHWC order and
 * columns in [fh, fw, inC] filter order. Positions in the padding are zero.
 */
export function im2col(backend: BackendWasm, x: tf.TensorInfo, info: tf.backend_util.Conv2DInfo, kernelName: string): tf.TensorInfo {
  const rowLength = info.filterHeight * info.filterWidth * info.inChannels;
  const rows = info.batchSize * info.outHeight * info.outWidth;
  const patches = backend.makeOutput([1, rows, rowLength], 'float32');
  // Views are taken after makeOutput because allocation can detach older heap views.
  const source = float32View(backend, x, kernelName);
  const target = float32View(backend, patches, kernelName);
  target.fill(0);
  let rowOffset = 0;
  for (let batch = 0; batch < info.batchSize; batch++) {
    for (let outRow = 0; outRow < info.outHeight; outRow++) {
      for (let outColumn = 0; outColumn < info.outWidth; outColumn++) {
        copyWindow(info, source, target, { batch, outRow, outColumn, rowOffset });
        rowOffset += rowLength;
      }
    }
  }
  return patches;
}
