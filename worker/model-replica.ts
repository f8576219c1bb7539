import { tf } from '../shared/backend.js';
import { modelFromTopology, trainableVariables } from '../shared/models.js';
import { computeGradients, computeGradientsInSlices, type ByteBatch, type GradientResult } from '../shared/training.js';
import { runSelfCheck } from './self-check.js';

/** A gradient with the time spent computing it, in milliseconds. */
export interface TimedGradient extends GradientResult {
  computeMs: number;
}

/** Live tensors of one tfjs instance, as `tf.memory()` counts them. */
export interface TensorMemory {
  numTensors: number;
  numBytes: number;
}

/**
 * A worker's copy of the model: built from the coordinator's topology, loaded with each
 * step's weights, and asked for gradients. It runs in the gradient thread, or on the main
 * thread for a backend that cannot run in a thread (see `createTrainer`).
 */
export class ModelReplica {
  private model?: tf.LayersModel;
  private variables: tf.Variable[] = [];
  private numClasses = 10;

  /** Replaces the model with one built from `topology`; returns the shapes of its trainable weights. */
  async build(topology: object, numClasses: number): Promise<number[][]> {
    this.dispose();
    this.model = await modelFromTopology(topology);
    this.variables = trainableVariables(this.model);
    this.numClasses = numClasses;
    return this.variables.map((variable) => variable.shape);
  }

  /** Runs the gradient self-check; raises SelfCheckError when the backend cannot compute the gradient. */
  selfCheck(): number {
    return runSelfCheck(this.requireModel(), this.numClasses);
  }

  /** Assigns one array per trainable weight, in `build`'s order; the caller has checked their shapes. */
  setWeights(weights: Float32Array[]): void {
    if (weights.length !== this.variables.length) {
      throw new Error(`received ${weights.length} weight arrays for a model with ${this.variables.length} trainable weights`);
    }
    weights.forEach((data, t) => {
      const variable = this.variables[t];
      tf.tidy(() => variable.assign(tf.tensor(data, variable.shape, 'float32')));
    });
  }

  /** Computes the mean gradient of `batch` in one go. */
  gradients(batch: ByteBatch): TimedGradient {
    const started = performance.now();
    const result = computeGradients(this.requireModel(), batch, this.numClasses);
    return { ...result, computeMs: performance.now() - started };
  }

  /** Computes the mean gradient of `batch` in slices, returning to the event loop between them. */
  gradientsInSlices(batch: ByteBatch, sliceSize: number): Promise<TimedGradient> {
    return computeGradientsInSlices(this.requireModel(), batch, this.numClasses, sliceSize);
  }

  memory(): TensorMemory {
    const { numTensors, numBytes } = tf.memory();
    return { numTensors, numBytes };
  }

  dispose(): void {
    this.model?.dispose();
    this.model = undefined;
    this.variables = [];
  }

  private requireModel(): tf.LayersModel {
    if (!this.model) throw new Error('no model yet: the coordinator\'s welcome must come before weights and shards');
    return this.model;
  }
}
