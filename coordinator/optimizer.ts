import type { OptimizerName } from '../shared/options.js';

/**
 * Optimizers applied by the coordinator to plain float32 weight arrays. tfjs launches
 * about ten kernels per weight tensor for one Adam update. On the wasm backend that took
 * 22 ms per step for the reference CNN, and this plain JavaScript loop takes about 2 ms. Each optimizer's state is plain arrays, so that
 * it can be saved and restored exactly.
 */
export interface Optimizer {
  readonly name: OptimizerName;
  /**
   * Updates `weights` in place with one averaged gradient per weight tensor, at learning
   * rate `lr` (the optimizer's own rate when omitted).
   */
  apply(weights: Float32Array[], gradients: Float32Array[], lr?: number): void;
  /** Returns a copy of the optimizer's state, for a checkpoint. */
  exportState(): OptimizerState;
  /** Replaces the optimizer's state with a copy of `state`, which `exportState` of the same optimizer returned. */
  importState(state: OptimizerState): void;
}

/**
 * An optimizer's complete state. Arrays are per weight tensor, in `parameterSpecs` order,
 * and absent until the first update creates them (and for SGD without momentum).
 */
export type OptimizerState =
  | { name: 'sgd'; velocity?: Float64Array[] }
  | { name: 'adam'; step: number; firstMoment?: Float64Array[]; secondMoment?: Float64Array[] };

function copyArrays(arrays: Float64Array[] | undefined): Float64Array[] | undefined {
  return arrays?.map((array) => array.slice());
}

/** Raises when a checkpoint's optimizer state belongs to another optimizer. */
function checkStateName(expected: OptimizerName, state: OptimizerState): void {
  if (state.name !== expected) throw new Error(`optimizer state is for "${state.name}", but the optimizer is "${expected}"`);
}

export interface OptimizerSettings {
  name: OptimizerName;
  lr: number;
  momentum: number;
}

/** Plain SGD, or SGD with momentum as tfjs and PyTorch define it: v = μ·v + g, w −= lr·v. */
export class Sgd implements Optimizer {
  readonly name = 'sgd';
  private velocity?: Float64Array[];

  constructor(
    private readonly lr: number,
    private readonly momentum: number,
  ) {}

  apply(weights: Float32Array[], gradients: Float32Array[], lr = this.lr): void {
    if (this.momentum === 0) {
      weights.forEach((w, t) => {
        const g = gradients[t];
        for (let i = 0; i < w.length; i++) w[i] -= lr * g[i];
      });
      return;
    }
    this.velocity ??= weights.map((w) => new Float64Array(w.length));
    weights.forEach((w, t) => {
      const g = gradients[t];
      const v = this.velocity![t];
      for (let i = 0; i < w.length; i++) {
        v[i] = this.momentum * v[i] + g[i];
        w[i] -= lr * v[i];
      }
    });
  }

  exportState(): OptimizerState {
    return { name: 'sgd', velocity: copyArrays(this.velocity) };
  }

  importState(state: OptimizerState): void {
    checkStateName(this.name, state);
    if (state.name === 'sgd') this.velocity = copyArrays(state.velocity);
  }
}

/**
 * Adam (Kingma and Ba, 2015) with the defaults of Keras and tfjs: β₁ = 0.9, β₂ = 0.999,
 * ε = 1e-7, bias correction by 1 − βᵗ, and ε added to √v̂ rather than inside the root.
 */
export class Adam implements Optimizer {
  readonly name = 'adam';
  readonly beta1 = 0.9;
  readonly beta2 = 0.999;
  readonly epsilon = 1e-7;
  /** Updates applied so far. */
  step = 0;
  private firstMoment?: Float64Array[];
  private secondMoment?: Float64Array[];

  constructor(private readonly lr: number) {}

  apply(weights: Float32Array[], gradients: Float32Array[], lr = this.lr): void {
    this.firstMoment ??= weights.map((w) => new Float64Array(w.length));
    this.secondMoment ??= weights.map((w) => new Float64Array(w.length));
    this.step++;
    const correction1 = 1 - this.beta1 ** this.step;
    const correction2 = 1 - this.beta2 ** this.step;
    weights.forEach((w, t) => {
      const g = gradients[t];
      const m = this.firstMoment![t];
      const v = this.secondMoment![t];
      for (let i = 0; i < w.length; i++) {
        m[i] = this.beta1 * m[i] + (1 - this.beta1) * g[i];
        v[i] = this.beta2 * v[i] + (1 - this.beta2) * g[i] * g[i];
        w[i] -= (lr * (m[i] / correction1)) / (Math.sqrt(v[i] / correction2) + this.epsilon);
      }
    });
  }

  exportState(): OptimizerState {
    return { name: 'adam', step: this.step, firstMoment: copyArrays(this.firstMoment), secondMoment: copyArrays(this.secondMoment) };
  }

  importState(state: OptimizerState): void {
    checkStateName(this.name, state);
    if (state.name !== 'adam') return;
    this.step = state.step;
    this.firstMoment = copyArrays(state.firstMoment);
    this.secondMoment = copyArrays(state.secondMoment);
  }
}

export function makeOptimizer(settings: OptimizerSettings): Optimizer {
  return settings.name === 'adam' ? new Adam(settings.lr) : new Sgd(settings.lr, settings.momentum);
}
