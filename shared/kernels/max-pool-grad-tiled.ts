import type * as tf from '@tensorflow/tfjs';

type Pool2DInfo = tf.backend_util.Conv2DInfo;

/**
 * Returns whether every pooling window lies inside x and no two windows overlap: the
 * filter equals the stride, there is no leading padding and the last window ends inside x.
 * Each x element then belongs to at most one window, so dx needs no accumulation.
 */
export function hasTiledWindows(info: Pool2DInfo): boolean {
  return (
    info.filterHeight === info.strideHeight &&
    info.filterWidth === info.strideWidth &&
    info.padInfo.top === 0 &&
    info.padInfo.left === 0 &&
    info.outHeight * info.strideHeight <= info.inHeight &&
    info.outWidth * info.strideWidth <= info.inWidth
  );
}

/**
 * Writes dy of every 2x2 window to dx at the window's first maximum in row-major order,
 * comparing with strict `>` from -Infinity as the cpu backend does, so a window of only
 * NaN or -Infinity passes no gradient. dx must be zero beforehand.
 * Preconditions: hasTiledWindows(info) and a 2x2 filter.
 */
export function scatterTiled2x2(info: Pool2DInfo, x: Float32Array, dy: Float32Array, dx: Float32Array): void {
  const { batchSize, inHeight, inWidth, inChannels: channels, outHeight, outWidth } = info;
  const rowStride = inWidth * channels;
  let d = 0;
  for (let b = 0; b < batchSize; b++) {
    for (let oy = 0; oy < outHeight; oy++) {
      let top = (b * inHeight + oy * 2) * rowStride;
      for (let ox = 0; ox < outWidth; ox++) {
        const bottom = top + rowStride;
        for (let ch = 0; ch < channels; ch++) {
          let best = -Infinity;
          let at = -1;
          let value = x[top + ch]!;
          if (value > best) {
            best = value;
            at = top + ch;
          }
          value = x[top + channels + ch]!;
          if (value > best) {
            best = value;
            at = top + channels + ch;
          }
          value = x[bottom + ch]!;
          if (value > best) {
            best = value;
            at = bottom + ch;
          }
          value = x[bottom + channels + ch]!;
          if (value > best) {
            at = bottom + channels + ch;
          }
          if (at >= 0) {
            dx[at] = dy[d]!;
          }
          d++;
        }
        top += 2 * channels;
      }
    }
  }
}

/**
 * Writes dy of every window to dx at the window's first maximum in row-major order, as
 * scatterTiled2x2 does, for any filter size. dx must be zero beforehand.
 * Precondition: hasTiledWindows(info).
 */
export function scatterTiled(info: Pool2DInfo, x: Float32Array, dy: Float32Array, dx: Float32Array): void {
  const { batchSize, inHeight, inWidth, inChannels: channels, outHeight, outWidth } = info;
  const { filterHeight, filterWidth } = info;
  // Offsets of the window's taps from its first element, in row-major order.
  const taps = new Int32Array(filterHeight * filterWidth);
  for (let kh = 0; kh < filterHeight; kh++) {
    for (let kw = 0; kw < filterWidth; kw++) {
      taps[kh * filterWidth + kw] = (kh * inWidth + kw) * channels;
    }
  }
  const tapCount = taps.length;
  let d = 0;
  for (let b = 0; b < batchSize; b++) {
    for (let oy = 0; oy < outHeight; oy++) {
      let origin = (b * inHeight + oy * filterHeight) * inWidth * channels;
      for (let ox = 0; ox < outWidth; ox++) {
        for (let ch = 0; ch < channels; ch++) {
          let best = -Infinity;
          let at = -1;
          for (let t = 0; t < tapCount; t++) {
            const index = origin + taps[t]! + ch;
            const value = x[index]!;
            if (value > best) {
              best = value;
              at = index;
            }
          }
          if (at >= 0) {
            dx[at] = dy[d]!;
          }
          d++;
        }
        origin += filterWidth * channels;
      }
    }
  }
}
