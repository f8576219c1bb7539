import type * as tf from '@tensorflow/tfjs';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import { float32View } from './wasm-ops.js';

type Conv2DInfo = tf.backend_util.Conv2DInfo;

/**
 * Runs shorter than this are copied element by element, because a copyWithin call costs
 * more than the 3-value runs of a single-channel input with a 3-wide filter.
 */
const MIN_BULK_COPY = 16;

/** Returns whether every filter window lies inside x, so that no patch entry is padding. */
function windowsInsideInput(info: Conv2DInfo): boolean {
  return (
    info.padInfo.top === 0 &&
    info.padInfo.left === 0 &&
    (info.outHeight - 1) * info.strideHeight + info.filterHeight <= info.inHeight &&
    (info.outWidth - 1) * info.strideWidth + info.filterWidth <= info.inWidth
  );
}

/**
 * Copies the x values under one filter window into one row of the patch matrix. Both
 * offsets index `heap`, a view of the whole wasm memory, so that a run of adjacent
 * filter columns, contiguous in NHWC, moves in one copyWithin without a subarray object.
 */
function copyWindow(
  info: Conv2DInfo,
  heap: Float32Array,
  sourceBase: number,
  rowBase: number,
  window: { batch: number; outRow: number; outColumn: number },
): void {
  const { inHeight, inWidth, inChannels, filterHeight, filterWidth } = info;
  const firstColumn = window.outColumn * info.strideWidth - info.padInfo.left;
  const kwStart = Math.max(0, -firstColumn);
  const kwEnd = Math.min(filterWidth, inWidth - firstColumn);
  const runLength = (kwEnd - kwStart) * inChannels;
  if (runLength <= 0) {
    return;
  }
  for (let kh = 0; kh < filterHeight; kh++) {
    const r = window.outRow * info.strideHeight + kh - info.padInfo.top;
    if (r < 0 || r >= inHeight) {
      continue;
    }
    const from = sourceBase + ((window.batch * inHeight + r) * inWidth + firstColumn + kwStart) * inChannels;
    const to = rowBase + (kh * filterWidth + kwStart) * inChannels;
    if (runLength < MIN_BULK_COPY) {
      for (let i = 0; i < runLength; i++) {
        heap[to + i] = heap[from + i]!;
      }
    } else {
      heap.copyWithin(to, from, from + runLength);
    }
  }
}

/**
 * Builds the patch matrix of an NHWC input: shape [1, N * outHeight * outWidth,
 * filterHeight * filterWidth * inChannels], one row per output pixel in NHWC order and
 * columns in [fh, fw, inC] filter order. Positions in the padding are zero.
 */
export function im2col(backend: BackendWasm, x: tf.TensorInfo, info: Conv2DInfo, kernelName: string): tf.TensorInfo {
  const rowLength = info.filterHeight * info.filterWidth * info.inChannels;
  const rows = info.batchSize * info.outHeight * info.outWidth;
  const patches = backend.makeOutput([1, rows, rowLength], 'float32');
  // Views are taken after makeOutput because allocation can detach older heap views.
  const source = float32View(backend, x, kernelName);
  const target = float32View(backend, patches, kernelName);
  if (!windowsInsideInput(info)) {
    // makeOutput does not clear memory, and copyWindow skips the padding.
    target.fill(0);
  }
  const heap = new Float32Array(source.buffer);
  const sourceBase = source.byteOffset / Float32Array.BYTES_PER_ELEMENT;
  let rowBase = target.byteOffset / Float32Array.BYTES_PER_ELEMENT;
  for (let batch = 0; batch < info.batchSize; batch++) {
    for (let outRow = 0; outRow < info.outHeight; outRow++) {
      for (let outColumn = 0; outColumn < info.outWidth; outColumn++) {
        copyWindow(info, heap, sourceBase, rowBase, { batch, outRow, outColumn });
        rowBase += rowLength;
      }
    }
  }
  return patches;
}
