import type * as tf from '@tensorflow/tfjs';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import { float32View, type SpatialPadding } from './wasm-ops.js';

/** Returns whether every side of the padding is zero or more, so XNNPACK can apply it itself. */
export function isNonNegative(padding: SpatialPadding): boolean {
  return padding.top >= 0 && padding.bottom >= 0 && padding.left >= 0 && padding.right >= 0;
}

export const NO_PADDING: SpatialPadding = { top: 0, bottom: 0, left: 0, right: 0 };

/** Copies every source pixel that lands inside the target grid; see resampleSpatial. */
function copyPixels(
  source: Float32Array,
  sourceShape: number[],
  target: Float32Array,
  targetShape: number[],
  [strideHeight, strideWidth]: [number, number],
  padding: SpatialPadding,
): void {
  const [batch, height, width, channels] = sourceShape;
  const [, outHeight, outWidth] = targetShape;
  for (let b = 0; b < batch; b++) {
    for (let r = 0; r < height; r++) {
      const targetRow = r * strideHeight + padding.top;
      if (targetRow < 0 || targetRow >= outHeight) {
        continue;
      }
      for (let c = 0; c < width; c++) {
        const targetColumn = c * strideWidth + padding.left;
        if (targetColumn < 0 || targetColumn >= outWidth) {
          continue;
        }
        const from = ((b * height + r) * width + c) * channels;
        const to = ((b * outHeight + targetRow) * outWidth + targetColumn) * channels;
        target.set(source.subarray(from, from + channels), to);
      }
    }
  }
}

/**
 * Copies an NHWC tensor onto a larger or smaller spatial grid: source pixel (r, c) lands
 * at (r * strideHeight + top, c * strideWidth + left) and every other pixel is zero.
 * A stride above 1 inserts zero rows and columns between pixels. A negative padding
 * crops that many rows or columns from the dilated image.
 */
export function resampleSpatial(
  backend: BackendWasm,
  x: tf.TensorInfo,
  strides: [number, number],
  padding: SpatialPadding,
  kernelName: string,
): tf.TensorInfo {
  const [batch, height, width, channels] = x.shape;
  const [strideHeight, strideWidth] = strides;
  const outHeight = (height - 1) * strideHeight + 1 + padding.top + padding.bottom;
  const outWidth = (width - 1) * strideWidth + 1 + padding.left + padding.right;
  if (outHeight <= 0 || outWidth <= 0) {
    throw new Error(
      `${kernelName}: resampling [${x.shape.join(', ')}] with padding ${JSON.stringify(padding)} ` +
        `leaves an empty ${outHeight}x${outWidth} image. This is a bug in the gradient geometry; ` +
        'please report it with the kernel attributes.',
    );
  }

  const out = backend.makeOutput([batch, outHeight, outWidth, channels], 'float32');
  // Views are taken after makeOutput because allocation can detach older heap views.
  const target = float32View(backend, out, kernelName);
  target.fill(0);
  copyPixels(float32View(backend, x, kernelName), x.shape, target, out.shape, strides, padding);
  return out;
}
