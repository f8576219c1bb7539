import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';

import { Adam, Sgd, makeOptimizer, type Optimizer } from '../../coordinator/optimizer.js';
import { seededRandom } from '../../shared/random.js';

const SHAPES = [[3, 3, 1, 8], [8], [20, 10], [1]];
const STEPS = 20;
const TOLERANCE = 1e-6;

let variableSerial = 0;

function sizeOf(shape: number[]): number {
  return shape.reduce((product, size) => product * size, 1);
}

/** Returns one float32 array per shape with values uniform in [-scale, scale). */
function randomArrays(random: () => number, scale: number): Float32Array[] {
  return SHAPES.map((shape) => Float32Array.from({ length: sizeOf(shape) }, () => scale * (2 * random() - 1)));
}

/**
 * Applies the same STEPS random gradients to the same random weights with gradfleet's
 * optimizer and with tfjs's, and returns the max absolute difference of the final weights.
 */
function maxDifferenceAfterSteps(ours: Optimizer, theirs: tf.Optimizer, seed: number): number {
  const random = seededRandom(seed);
  const initial = randomArrays(random, 0.5);
  const gradientsPerStep = Array.from({ length: STEPS }, () => randomArrays(random, 1));

  const weights = initial.map((values) => values.slice());
  const variables = initial.map((values, t) => tf.variable(tf.tensor(values, SHAPES[t], 'float32'), true, `optimizer_test_${variableSerial++}`));

  for (const gradients of gradientsPerStep) {
    ours.apply(weights, gradients);
    tf.tidy(() => {
      const named: tf.NamedTensorMap = {};
      variables.forEach((variable, t) => (named[variable.name] = tf.tensor(gradients[t], SHAPES[t], 'float32')));
      theirs.applyGradients(named);
    });
  }

  let maxDifference = 0;
  variables.forEach((variable, t) => {
    const expected = variable.dataSync();
    weights[t].forEach((value, i) => (maxDifference = Math.max(maxDifference, Math.abs(value - expected[i]))));
  });

  // Guards the comparison itself: the weights must have moved away from where they started.
  const moved = weights.some((values, t) => values.some((value, i) => value !== initial[t][i]));
  expect(moved).toBe(true);

  variables.forEach((variable) => variable.dispose());
  theirs.dispose();
  return maxDifference;
}

beforeAll(async () => {
  await tf.setBackend('cpu');
  await tf.ready();
});

describe('optimizers against tfjs', () => {
  it('uses the cpu backend', () => {
    expect(tf.getBackend()).toBe('cpu');
    expect(tf.backend().epsilon()).toBe(1e-7);
  });

  it('sgd matches tf.train.sgd', () => {
    const difference = maxDifferenceAfterSteps(new Sgd(0.05, 0), tf.train.sgd(0.05), 1);

    expect(difference).toBeLessThanOrEqual(TOLERANCE);
  });

  it('momentum matches tf.train.momentum', () => {
    const difference = maxDifferenceAfterSteps(new Sgd(0.01, 0.9), tf.train.momentum(0.01, 0.9), 2);

    expect(difference).toBeLessThanOrEqual(TOLERANCE);
  });

  it('adam matches tf.train.adam', () => {
    const difference = maxDifferenceAfterSteps(new Adam(0.001), tf.train.adam(0.001), 3);

    expect(difference).toBeLessThanOrEqual(TOLERANCE);
  });

  it('adam with larger lr', () => {
    // tfjs 4.22 keeps β₂ᵗ in a float32 variable (accBeta2 in adam_optimizer.js), with β₂
    // rounded to 0.99900001287. Its bias correction 1 − β₂ᵗ is then about 1.3e-5 smaller
    // than ours, so each tfjs update is about 7e-6 larger relative to ours. Over 20 steps
    // of size lr that adds up to about 20 · lr · 7e-6: 1.4e-6 at lr = 0.01, 1.4e-7 at 0.001.
    const lr = 0.01;

    const difference = maxDifferenceAfterSteps(new Adam(lr), tf.train.adam(lr), 4);

    expect(difference).toBeLessThanOrEqual(STEPS * lr * 1e-5);
  });
});

describe('makeOptimizer', () => {
  it('adam gives Adam', () => {
    const optimizer = makeOptimizer({ name: 'adam', lr: 0.001, momentum: 0 });

    expect(optimizer).toBeInstanceOf(Adam);
    expect(optimizer.name).toBe('adam');
  });

  it('sgd gives Sgd', () => {
    const optimizer = makeOptimizer({ name: 'sgd', lr: 0.1, momentum: 0 });

    expect(optimizer).toBeInstanceOf(Sgd);
    expect(optimizer.name).toBe('sgd');
  });

  it('sgd with momentum gives Sgd', () => {
    const optimizer = makeOptimizer({ name: 'sgd', lr: 0.1, momentum: 0.9 });

    expect(optimizer).toBeInstanceOf(Sgd);
  });

  it('adam ignores momentum setting', () => {
    expect(makeOptimizer({ name: 'adam', lr: 0.001, momentum: 0.9 })).toBeInstanceOf(Adam);
  });

  it('settings reach the optimizer', () => {
    // One step of lr 0.5 on gradient 1 moves a weight of 1 to 0.5. Momentum has no effect on the first step.
    const weights = [new Float32Array([1])];

    makeOptimizer({ name: 'sgd', lr: 0.5, momentum: 0.9 }).apply(weights, [new Float32Array([1])]);

    expect(weights[0][0]).toBe(0.5);
  });
});
