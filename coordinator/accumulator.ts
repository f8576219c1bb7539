import type { ParameterSpec } from '../shared/models.js';

/**
 * Sums `count × gradient` over the shards of one step and divides by the total count,
 * so the average equals the gradient of the mean loss over the whole global batch
 * however the batch was split. The sums are kept in float64: adding float32 products
 * in a different order would otherwise change the last bits with the worker count.
 */
export class GradientAccumulator {
  private readonly sums: Float64Array[];
  private totalCount = 0;

  constructor(private readonly specs: ParameterSpec[]) {
    this.sums = specs.map((spec) => new Float64Array(spec.shape.reduce((product, size) => product * size, 1)));
  }

  get count(): number {
    return this.totalCount;
  }

  /** Adds one shard's mean gradient, weighted by the number of examples it averaged. */
  add(gradients: Float32Array[], count: number): void {
    for (let t = 0; t < this.sums.length; t++) {
      const sum = this.sums[t];
      const gradient = gradients[t];
      for (let i = 0; i < sum.length; i++) sum[i] += count * gradient[i];
    }
    this.totalCount += count;
  }

  /** Returns the weighted mean gradient, one float32 array per parameter. */
  average(): Float32Array[] {
    if (this.totalCount === 0) throw new Error('cannot average a step without gradients: no shard was accumulated');
    return this.sums.map((sum) => {
      const mean = new Float32Array(sum.length);
      for (let i = 0; i < sum.length; i++) mean[i] = sum[i] / this.totalCount;
      return mean;
    });
  }

  reset(): void {
    for (const sum of this.sums) sum.fill(0);
    this.totalCount = 0;
  }

  get parameterCount(): number {
    return this.specs.length;
  }
}
