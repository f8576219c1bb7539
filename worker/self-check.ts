import { tf } from '../shared/backend.js';
import { computeGradients } from '../shared/training.js';

/** Raised when the backend cannot compute the model's gradients. */
export class SelfCheckError extends Error {
  constructor(
    message: string,
    readonly kernel?: string,
  ) {
    super(message);
    this.name = 'SelfCheckError';
  }
}

/**
 * Computes one gradient on a dummy batch before the worker takes part in any step, so a
 * backend without a kernel the model needs fails here, with the kernel's name, instead of
 * in the middle of training. Returns the time it took in milliseconds.
 */
export function runSelfCheck(model: tf.LayersModel, numClasses: number): number {
  const inputShape = model.inputs[0].shape.slice(1) as number[];
  const pixels = inputShape.reduce((product, size) => product * size, 1);
  const count = 2;
  const batch = { images: new Uint8Array(count * pixels).fill(128), labels: new Uint8Array([0, 1]), count };
  const started = performance.now();
  try {
    const result = computeGradients(model, batch, numClasses);
    const nonFinite = result.gradients.findIndex((gradient) => gradient.some((value) => !Number.isFinite(value)));
    if (nonFinite >= 0) throw new SelfCheckError(`backend "${tf.getBackend()}" computed a non-finite gradient for trainable weight ${nonFinite} on a dummy batch`);
  } catch (error) {
    if (error instanceof SelfCheckError) throw error;
    const message = (error as Error).message;
    const missing = /Kernel '([^']+)' not registered for backend '([^']+)'/.exec(message);
    if (missing) {
      throw new SelfCheckError(
        `backend "${missing[2]}" has no "${missing[1]}" kernel, which the model's gradient needs; pass --backend with another backend (tensorflow or cpu)`,
        missing[1],
      );
    }
    throw new SelfCheckError(`gradient self-check failed on backend "${tf.getBackend()}": ${message}`);
  }
  return performance.now() - started;
}

/**
 * Test hook: unregisters the kernel named by TEST_GRADFLEET_DROP_KERNEL from the active
 * backend, so that tests can watch the self-check fail as it would on a backend that
 * lacks the kernel. Unset in normal use. Kernels are registered per tfjs instance, so the
 * gradient thread calls it too, once its backend is active.
 */
export function dropKernelForTests(): void {
  const kernel = process.env.TEST_GRADFLEET_DROP_KERNEL;
  if (kernel && tf.getKernel(kernel, tf.getBackend())) tf.unregisterKernel(kernel, tf.getBackend());
}
