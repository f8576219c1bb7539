import { tf } from './backend.js';
import { trainableVariables } from './models.js';

/** A batch as it travels: images as unsigned bytes, one byte per pixel, and class labels. */
export interface ByteBatch {
  images: Uint8Array;
  labels: Uint8Array;
  count: number;
}

export interface GradientResult {
  /** One array per trainable weight, in `parameterSpecs` order. */
  gradients: Float32Array[];
  /** Mean categorical cross-entropy over the batch. */
  loss: number;
  /** Examples whose most probable class equals the label. */
  correct: number;
}

/**
 * Keras clips probabilities to [ε, 1 − ε] before the logarithm of categorical
 * cross-entropy; the same ε keeps the loss equal to the Keras reference.
 */
const KERAS_EPSILON = 1e-7;

/** Converts byte images to a float tensor in [0, 1] of shape [count, ...inputShape]. */
export function imagesToTensor(images: Uint8Array, count: number, inputShape: number[]): tf.Tensor {
  return tf.tidy(() => tf.tensor(images, [count, ...inputShape], 'int32').toFloat().div(255));
}

/** Mean categorical cross-entropy of softmax outputs against integer labels. */
export function crossEntropy(probabilities: tf.Tensor, labels: tf.Tensor1D, numClasses: number): tf.Scalar {
  return tf.tidy(() => {
    const oneHot = tf.oneHot(labels, numClasses).toFloat();
    const clipped = probabilities.clipByValue(KERAS_EPSILON, 1 - KERAS_EPSILON);
    return oneHot.mul(clipped.log()).sum(-1).neg().mean() as tf.Scalar;
  });
}

/**
 * Computes the gradient of the mean loss over one batch with respect to every trainable
 * weight. Every tensor made here is disposed before it returns.
 */
export function computeGradients(model: tf.LayersModel, batch: ByteBatch, numClasses: number): GradientResult {
  const inputShape = model.inputs[0].shape.slice(1) as number[];
  const variables = trainableVariables(model);
  const x = imagesToTensor(batch.images, batch.count, inputShape);
  const y = tf.tensor1d(batch.labels, 'int32');
  let correctTensor: tf.Tensor | undefined;
  const { value, grads } = tf.variableGrads(() => {
    const probabilities = model.apply(x, { training: true }) as tf.Tensor;
    correctTensor = tf.keep(countCorrect(probabilities, y));
    return crossEntropy(probabilities, y, numClasses);
  }, variables);
  const gradients = variables.map((variable) => grads[variable.name].dataSync() as Float32Array);
  const loss = value.dataSync()[0];
  const correct = correctTensor!.dataSync()[0];
  tf.dispose([x, y, value, correctTensor!, ...Object.values(grads)]);
  return { gradients, loss, correct };
}

/**
 * Computes what `computeGradients` computes, in slices of at most `sliceSize` examples,
 * and returns to the event loop after each slice, so that the caller keeps answering
 * heartbeats while it computes. Each slice's mean gradient and mean loss are weighted by
 * the slice's example count, so the result is the whole batch's mean up to float32
 * rounding; the sums are kept in float64. `computeMs` counts only the time spent in the
 * slices, not the waits between them.
 */
export async function computeGradientsInSlices(
  model: tf.LayersModel,
  batch: ByteBatch,
  numClasses: number,
  sliceSize: number,
): Promise<GradientResult & { computeMs: number }> {
  const inputShape = model.inputs[0].shape.slice(1) as number[];
  const pixels = inputShape.reduce((product, size) => product * size, 1);
  let sums: Float64Array[] = [];
  let lossSum = 0;
  let correct = 0;
  let computeMs = 0;
  for (let start = 0; start < batch.count; start += sliceSize) {
    const count = Math.min(sliceSize, batch.count - start);
    const slice = {
      images: batch.images.subarray(start * pixels, (start + count) * pixels),
      labels: batch.labels.subarray(start, start + count),
      count,
    };
    if (start > 0) await new Promise((resolve) => setImmediate(resolve));
    const started = performance.now();
    const result = computeGradients(model, slice, numClasses);
    if (start === 0) sums = result.gradients.map((gradient) => new Float64Array(gradient.length));
    result.gradients.forEach((gradient, t) => {
      const sum = sums[t];
      for (let i = 0; i < gradient.length; i++) sum[i] += count * gradient[i];
    });
    lossSum += count * result.loss;
    correct += result.correct;
    computeMs += performance.now() - started;
  }
  const gradients = sums.map((sum) => Float32Array.from(sum, (value) => value / batch.count));
  return { gradients, loss: lossSum / batch.count, correct, computeMs };
}

function countCorrect(probabilities: tf.Tensor, labels: tf.Tensor1D): tf.Tensor {
  return tf.tidy(() => probabilities.argMax(-1).equal(labels).sum());
}

export interface EvaluationResult {
  loss: number;
  accuracy: number;
  count: number;
}

/**
 * Evaluates a model on a byte dataset in chunks, so that memory stays bounded whatever
 * the dataset's size. The loss is the mean over all examples.
 */
export function evaluate(model: tf.LayersModel, data: ByteBatch, numClasses: number, chunkSize = 1000): EvaluationResult {
  const totals = { lossSum: 0, correct: 0 };
  for (let start = 0; start < data.count; start += chunkSize) addChunk(model, data, numClasses, start, Math.min(chunkSize, data.count - start), totals);
  return { loss: totals.lossSum / data.count, accuracy: totals.correct / data.count, count: data.count };
}

/**
 * Evaluates like `evaluate`, but returns to the event loop after each chunk, so that a
 * server keeps answering heartbeats while it evaluates on any backend. The first chunk has
 * 16 images, and each later one is sized from the time per image so far to take about
 * `sliceMs` milliseconds (from 1 to 1,000 images).
 */
export async function evaluateInSlices(model: tf.LayersModel, data: ByteBatch, numClasses: number, sliceMs = 50): Promise<EvaluationResult> {
  const totals = { lossSum: 0, correct: 0 };
  let chunkSize = 16;
  let elapsedMs = 0;
  let start = 0;
  while (start < data.count) {
    const count = Math.min(chunkSize, data.count - start);
    const started = performance.now();
    addChunk(model, data, numClasses, start, count, totals);
    elapsedMs += performance.now() - started;
    start += count;
    const msPerImage = Math.max(elapsedMs / start, 1e-3);
    chunkSize = Math.min(1_000, Math.max(1, Math.floor(sliceMs / msPerImage)));
    await new Promise((resolve) => setImmediate(resolve));
  }
  return { loss: totals.lossSum / data.count, accuracy: totals.correct / data.count, count: data.count };
}

function addChunk(model: tf.LayersModel, data: ByteBatch, numClasses: number, start: number, count: number, totals: { lossSum: number; correct: number }): void {
  const inputShape = model.inputs[0].shape.slice(1) as number[];
  const pixels = inputShape.reduce((product, size) => product * size, 1);
  const [chunkLoss, chunkCorrect] = tf.tidy(() => {
    const x = imagesToTensor(data.images.subarray(start * pixels, (start + count) * pixels), count, inputShape);
    const y = tf.tensor1d(data.labels.subarray(start, start + count), 'int32');
    const probabilities = model.predict(x) as tf.Tensor;
    return [crossEntropy(probabilities, y, numClasses).dataSync()[0], countCorrect(probabilities, y).dataSync()[0]];
  });
  totals.lossSum += chunkLoss * count;
  totals.correct += chunkCorrect;
}
