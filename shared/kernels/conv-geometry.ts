import * as tf from '@tensorflow/tfjs';

type Conv2DInfo = tf.backend_util.Conv2DInfo;
type RoundingMode = 'floor' | 'round' | 'ceil';

const ROUNDING_MODES: readonly RoundingMode[] = ['floor', 'round', 'ceil'];

function sameShape(actual: readonly number[], expected: readonly number[]): boolean {
  return actual.length === expected.length && actual.every((size, axis) => size === expected[axis]);
}

/**
 * Picks the forward geometry whose output shape equals dy's shape, trying the requested
 * dimRoundingMode first. tfjs-core 4.22's Conv2D and MaxPool gradients call the backprop
 * kernels without the forward's dimRoundingMode, so dy may have the size that another
 * mode gives. The gradient stays exact because window origins (output index * stride -
 * leading padding) do not depend on the mode, only the number of windows does.
 * Throws when no mode explains dy's shape.
 */
export function resolveGeometry(
  kernelName: string,
  computeInfo: (mode: RoundingMode | undefined) => Conv2DInfo,
  requestedMode: RoundingMode | undefined,
  dyShape: readonly number[],
): Conv2DInfo {
  const requested = computeInfo(requestedMode);
  if (sameShape(dyShape, requested.outShape)) {
    return requested;
  }
  for (const mode of ROUNDING_MODES) {
    const info = computeInfo(mode);
    if (sameShape(dyShape, info.outShape)) {
      return info;
    }
  }
  throw new Error(
    `${kernelName}: dy has shape [${dyShape.join(', ')}] but the attributes imply ` +
      `[${requested.outShape.join(', ')}]; check strides, pad and dimRoundingMode.`,
  );
}

/**
 * Computes the geometry of the forward convolution the way tfjs's own backends do
 * (NHWC, dilation 1).
 */
export function computeConvGeometry(
  inputShape: readonly number[],
  filterShape: readonly number[],
  strides: number | [number, number],
  pad: tf.Conv2DBackpropInputAttrs['pad'],
  mode: RoundingMode | undefined,
): Conv2DInfo {
  return tf.backend_util.computeConv2DInfo(
    inputShape as [number, number, number, number],
    filterShape as [number, number, number, number],
    strides,
    1,
    pad,
    mode,
    false,
    'channelsLast',
  );
}
