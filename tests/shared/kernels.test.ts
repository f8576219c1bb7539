import { beforeAll, describe, expect, it } from 'vitest';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
import type { BackendWasm } from '@tensorflow/tfjs-backend-wasm';
import {
  registerWasmGradientKernels,
  UnsupportedKernelAttributeError,
  WASM_GRADIENT_KERNELS,
} from '../../shared/kernels/index.js';
import { createConv2DBackpropFilterConfig } from '../../shared/kernels/conv2d-backprop-filter.js';
import { seededRandom } from '../../shared/random.js';

/** Maximum ‖wasm − cpu‖ / ‖cpu‖ over a whole tensor. */
const TOLERANCE = 1e-4;


function randomValues(random: () => number, shape: number[]): Float32Array {
  const values = new Float32Array(tf.util.sizeFromShape(shape));
  for (let i = 0; i < values.length; i++) {
    values[i] = random() * 2 - 1;
  }
  return values;
}

function randomInt(random: () => number, min: number, max: number): number {
  return min + Math.floor(random() * (max - min + 1));
}

function relativeError(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  let difference = 0;
  let norm = 0;
  for (let i = 0; i < expected.length; i++) {
    difference += (actual[i]! - expected[i]!) ** 2;
    norm += expected[i]! ** 2;
  }
  return norm === 0 ? Math.sqrt(difference) : Math.sqrt(difference / norm);
}

interface KernelInput {
  values: Float32Array | Int32Array;
  shape: number[];
}

interface KernelResult {
  values: Float32Array | Int32Array;
  shape: number[];
}

/** Runs one kernel through the engine on the given backend and reads its output. */
async function runKernelOn(
  backend: 'wasm' | 'cpu',
  kernelName: string,
  inputs: Record<string, KernelInput>,
  attrs: object,
): Promise<KernelResult> {
  await tf.setBackend(backend);
  const tensors: Record<string, tf.Tensor> = {};
  for (const [name, input] of Object.entries(inputs)) {
    tensors[name] = tf.tensor(input.values, input.shape);
  }
  const output = tf.engine().runKernel(kernelName, tensors, attrs as tf.NamedAttrMap) as tf.Tensor;
  const result = { values: output.dataSync() as Float32Array | Int32Array, shape: output.shape };
  tf.dispose([output, ...Object.values(tensors)]);
  return result;
}

/** Runs a kernel on wasm and cpu and returns the relative error and both shapes. */
async function compareWithCpu(kernelName: string, inputs: Record<string, KernelInput>, attrs: object) {
  const wasm = await runKernelOn('wasm', kernelName, inputs, attrs);
  const cpu = await runKernelOn('cpu', kernelName, inputs, attrs);
  await tf.setBackend('wasm');
  return { error: relativeError(wasm.values, cpu.values), wasmShape: wasm.shape, cpuShape: cpu.shape };
}

type Pad = 'valid' | 'same' | number | [[number, number], [number, number], [number, number], [number, number]];

interface ConvCase {
  x: [number, number, number, number];
  filter: [number, number, number, number];
  strides: number | [number, number];
  pad: Pad;
  dimRoundingMode?: 'floor' | 'round' | 'ceil';
}

/** Hand-picked cases: every pad form, unit, unequal and large strides, patch rows shorter and longer than outC. */
const CONV_CASES: ConvCase[] = [
  { x: [2, 28, 28, 1], filter: [3, 3, 1, 32], strides: 1, pad: 'valid' },
  { x: [3, 13, 13, 8], filter: [3, 3, 8, 16], strides: 1, pad: 'valid' },
  { x: [1, 9, 11, 3], filter: [3, 3, 3, 5], strides: 2, pad: 'valid' },
  { x: [2, 10, 10, 1], filter: [2, 2, 1, 8], strides: 2, pad: 'same' },
  { x: [3, 9, 11, 2], filter: [3, 2, 2, 3], strides: [2, 1], pad: 'same' },
  { x: [2, 8, 7, 4], filter: [3, 3, 4, 2], strides: [1, 3], pad: 'same' },
  { x: [1, 7, 7, 3], filter: [3, 3, 3, 2], strides: 2, pad: 1 },
  { x: [2, 7, 8, 3], filter: [3, 3, 3, 2], strides: 1, pad: 4 },
  { x: [2, 7, 8, 3], filter: [3, 3, 3, 2], strides: 2, pad: 2, dimRoundingMode: 'ceil' },
  { x: [2, 8, 8, 3], filter: [3, 3, 3, 2], strides: 2, pad: 1, dimRoundingMode: 'round' },
  { x: [2, 7, 8, 3], filter: [3, 3, 3, 2], strides: 2, pad: [[0, 0], [2, 0], [0, 1], [0, 0]] },
  { x: [2, 9, 9, 2], filter: [2, 3, 2, 3], strides: [2, 3], pad: [[0, 0], [1, 2], [3, 0], [0, 0]] },
  { x: [2, 10, 10, 3], filter: [2, 3, 3, 2], strides: 3, pad: 'valid' },
];

/** Random NHWC convolution cases from a fixed seed. */
function randomConvCases(seed: number, count: number): ConvCase[] {
  const random = seededRandom(seed);
  const pads: Pad[] = ['valid', 'same', 1];
  const cases: ConvCase[] = [];
  for (let i = 0; i < count; i++) {
    const filterHeight = randomInt(random, 1, 4);
    const filterWidth = randomInt(random, 1, 4);
    const height = randomInt(random, filterHeight + 2, 14);
    const width = randomInt(random, filterWidth + 2, 14);
    const x: ConvCase['x'] = [randomInt(random, 1, 4), height, width, randomInt(random, 1, 6)];
    const filter: ConvCase['filter'] = [filterHeight, filterWidth, x[3], randomInt(random, 1, 12)];
    const strides: [number, number] = [randomInt(random, 1, 3), randomInt(random, 1, 3)];
    cases.push({ x, filter, strides, pad: pads[randomInt(random, 0, pads.length - 1)]! });
  }
  return cases;
}

function describeCase(testCase: object): string {
  return JSON.stringify(testCase);
}

/** Returns the output shape of the forward convolution of a case, as tfjs computes it. */
async function forwardShape(testCase: ConvCase): Promise<number[]> {
  await tf.setBackend('cpu');
  const shape = tf.backend_util.computeConv2DInfo(
    testCase.x,
    testCase.filter,
    testCase.strides,
    1,
    testCase.pad,
    testCase.dimRoundingMode,
  ).outShape;
  await tf.setBackend('wasm');
  return shape;
}

async function checkFilterGradient(testCase: ConvCase, seed: number): Promise<void> {
  const random = seededRandom(seed);
  const dyShape = await forwardShape(testCase);
  const inputs = {
    x: { values: randomValues(random, testCase.x), shape: testCase.x },
    dy: { values: randomValues(random, dyShape), shape: dyShape },
  };
  const attrs = { ...testCase, filterShape: testCase.filter, dataFormat: 'NHWC' };
  const result = await compareWithCpu('Conv2DBackpropFilter', inputs, attrs);
  expect(result.wasmShape, describeCase(testCase)).toEqual(testCase.filter);
  expect(result.error, describeCase(testCase)).toBeLessThanOrEqual(TOLERANCE);
}

async function checkInputGradient(testCase: ConvCase, seed: number): Promise<void> {
  const random = seededRandom(seed);
  const dyShape = await forwardShape(testCase);
  const inputs = {
    dy: { values: randomValues(random, dyShape), shape: dyShape },
    filter: { values: randomValues(random, testCase.filter), shape: testCase.filter },
  };
  const attrs = { ...testCase, inputShape: testCase.x, dataFormat: 'NHWC' };
  const result = await compareWithCpu('Conv2DBackpropInput', inputs, attrs);
  expect(result.wasmShape, describeCase(testCase)).toEqual(testCase.x);
  expect(result.error, describeCase(testCase)).toBeLessThanOrEqual(TOLERANCE);
}

beforeAll(async () => {
  registerWasmGradientKernels();
  registerWasmGradientKernels();
  await tf.setBackend('wasm');
  await tf.ready();
});

describe('registerWasmGradientKernels', () => {
  it('registers every listed kernel once', () => {
    const before = WASM_GRADIENT_KERNELS.map((name) => tf.getKernel(name, 'wasm')?.kernelFunc);
    registerWasmGradientKernels();
    const after = WASM_GRADIENT_KERNELS.map((name) => tf.getKernel(name, 'wasm')?.kernelFunc);
    expect(WASM_GRADIENT_KERNELS).toEqual(expect.arrayContaining(['Conv2DBackpropFilter', 'Conv2DBackpropInput', 'MaxPoolGrad']));
    expect(before.every((kernelFunc) => kernelFunc !== undefined)).toBe(true);
    expect(after).toEqual(before);
  });
});

describe('Conv2DBackpropFilter on wasm', () => {
  it('matches cpu on hand-picked cases', async () => {
    for (const [index, testCase] of CONV_CASES.entries()) {
      await checkFilterGradient(testCase, 100 + index);
    }
  });

  it('matches cpu on random shapes', async () => {
    for (const [index, testCase] of randomConvCases(7, 12).entries()) {
      await checkFilterGradient(testCase, 200 + index);
    }
  });

  it('matches cpu on the convolution path', async () => {
    // Every case here has a small patch matrix, so a limit of 0 forces the convolution path.
    const registered = tf.getKernel('Conv2DBackpropFilter', 'wasm')!;
    tf.unregisterKernel('Conv2DBackpropFilter', 'wasm');
    tf.registerKernel(createConv2DBackpropFilterConfig(0));
    try {
      for (const [index, testCase] of [...CONV_CASES, ...randomConvCases(9, 6)].entries()) {
        await checkFilterGradient(testCase, 250 + index);
      }
    } finally {
      tf.unregisterKernel('Conv2DBackpropFilter', 'wasm');
      tf.registerKernel(registered);
    }
  });
});

describe('Conv2DBackpropInput on wasm', () => {
  it('matches cpu on hand-picked cases', async () => {
    for (const [index, testCase] of CONV_CASES.entries()) {
      await checkInputGradient(testCase, 300 + index);
    }
  });

  it('matches cpu on random shapes', async () => {
    for (const [index, testCase] of randomConvCases(8, 12).entries()) {
      await checkInputGradient(testCase, 400 + index);
    }
  });
});

interface PoolCase {
  x: [number, number, number, number];
  filterSize: number | [number, number];
  strides: number | [number, number];
  pad: Pad;
  dimRoundingMode?: 'floor' | 'round' | 'ceil';
}

/** Cases for every path: tiled 2x2, tiled of other sizes, and overlapping or padded windows. */
const POOL_CASES: PoolCase[] = [
  { x: [2, 26, 26, 32], filterSize: 2, strides: 2, pad: 'valid' },
  { x: [3, 11, 11, 5], filterSize: 2, strides: 2, pad: 'valid' },
  { x: [2, 10, 11, 3], filterSize: 3, strides: 3, pad: 'valid' },
  { x: [2, 9, 10, 4], filterSize: [2, 3], strides: [2, 3], pad: 'valid' },
  { x: [1, 8, 8, 2], filterSize: 2, strides: 2, pad: 'same' },
  { x: [1, 7, 7, 2], filterSize: 2, strides: 2, pad: 'same' },
  { x: [2, 9, 8, 3], filterSize: 2, strides: 2, pad: 1 },
  { x: [1, 7, 9, 1], filterSize: 3, strides: 1, pad: 'valid' },
  { x: [3, 11, 11, 5], filterSize: 3, strides: 2, pad: 'same' },
  { x: [2, 9, 8, 3], filterSize: [3, 2], strides: [2, 1], pad: 'same' },
  { x: [2, 9, 9, 2], filterSize: 3, strides: 2, pad: 1 },
  { x: [2, 10, 10, 2], filterSize: 3, strides: 3, pad: 1, dimRoundingMode: 'ceil' },
  { x: [1, 8, 9, 4], filterSize: [2, 3], strides: [2, 2], pad: [[0, 0], [1, 0], [0, 2], [0, 0]] },
];

/**
 * Values on a coarse grid with many zeros, as after a ReLU, so that most windows hold ties
 * and the check covers which maximum receives the gradient.
 */
function valuesWithTies(random: () => number, shape: number[]): Float32Array {
  const values = randomValues(random, shape);
  return values.map((value) => Math.max(0, Math.round(value * 3)));
}

/**
 * Values with ties as in valuesWithTies, where about one value in six is NaN and one in
 * six is -Infinity, so that some windows hold no number above -Infinity.
 */
function valuesWithNonFinite(random: () => number, shape: number[]): Float32Array {
  return valuesWithTies(random, shape).map((value) => {
    const draw = random();
    if (draw < 1 / 6) {
      return NaN;
    }
    return draw < 2 / 6 ? -Infinity : value;
  });
}

async function checkMaxPoolGradient(testCase: PoolCase, input: Float32Array, random: () => number): Promise<void> {
  const info = tf.backend_util.computePool2DInfo(
    testCase.x,
    testCase.filterSize,
    testCase.strides,
    1,
    testCase.pad,
    testCase.dimRoundingMode,
  );
  const inputs = {
    dy: { values: randomValues(random, info.outShape), shape: info.outShape },
    input: { values: input, shape: testCase.x },
    // Neither backend reads the forward output; it only has to have the right shape.
    output: { values: new Float32Array(tf.util.sizeFromShape(info.outShape)), shape: info.outShape },
  };
  const result = await compareWithCpu('MaxPoolGrad', inputs, testCase);
  expect(result.wasmShape, describeCase(testCase)).toEqual(testCase.x);
  expect(result.error, describeCase(testCase)).toBeLessThanOrEqual(TOLERANCE);
}

describe('MaxPoolGrad on wasm', () => {
  it('matches cpu, ties included', async () => {
    for (const [index, testCase] of POOL_CASES.entries()) {
      const random = seededRandom(500 + index);
      await checkMaxPoolGradient(testCase, valuesWithTies(random, testCase.x), random);
    }
  });

  it('matches cpu with NaN and -Infinity', async () => {
    for (const [index, testCase] of POOL_CASES.entries()) {
      const random = seededRandom(550 + index);
      await checkMaxPoolGradient(testCase, valuesWithNonFinite(random, testCase.x), random);
    }
  });
});

describe('BatchMatMul on wasm', () => {
  it('matches cpu for every transpose combination', async () => {
    const random = seededRandom(600);
    for (const batch of [1, 3]) {
      for (const transposeA of [false, true]) {
        for (const transposeB of [false, true]) {
          const [m, k, n] = [randomInt(random, 1, 40), randomInt(random, 1, 40), randomInt(random, 1, 40)];
          const aShape = transposeA ? [batch, k, m] : [batch, m, k];
          const bShape = transposeB ? [batch, n, k] : [batch, k, n];
          const inputs = {
            a: { values: randomValues(random, aShape), shape: aShape },
            b: { values: randomValues(random, bShape), shape: bShape },
          };
          const label = describeCase({ batch, m, k, n, transposeA, transposeB });
          const result = await compareWithCpu('BatchMatMul', inputs, { transposeA, transposeB });
          expect(result.wasmShape, label).toEqual([batch, m, n]);
          expect(result.error, label).toBeLessThanOrEqual(TOLERANCE);
        }
      }
    }
  });
});

describe('BatchMatMul with transposeB on wasm', () => {
  it('matches cpu when b exceeds a', async () => {
    // These shapes make the wrapper compute (b x a^T)^T, broadcast batches included.
    const random = seededRandom(650);
    const shapes = [
      { aShape: [1, 8, 16], bShape: [1, 100, 16] },
      { aShape: [3, 8, 16], bShape: [3, 100, 16] },
      { aShape: [1, 5, 12], bShape: [3, 60, 12] },
      { aShape: [2, 60, 12], bShape: [1, 5, 12] },
    ];
    for (const { aShape, bShape } of shapes) {
      const inputs = {
        a: { values: randomValues(random, aShape), shape: aShape },
        b: { values: randomValues(random, bShape), shape: bShape },
      };
      const result = await compareWithCpu('BatchMatMul', inputs, { transposeA: false, transposeB: true });
      expect(result.wasmShape, describeCase({ aShape, bShape })).toEqual(result.cpuShape);
      expect(result.error, describeCase({ aShape, bShape })).toBeLessThanOrEqual(TOLERANCE);
    }
  });
});

describe('Sum on wasm', () => {
  it('matches cpu for leading, inner and mixed axes', async () => {
    const random = seededRandom(700);
    const shape = [4, 5, 6, 7];
    const cases: { axis: number | number[]; keepDims: boolean }[] = [
      { axis: [0, 1, 2], keepDims: false },
      { axis: [0, 1, 2], keepDims: true },
      { axis: 0, keepDims: false },
      { axis: [-4, -3], keepDims: false },
      { axis: [3], keepDims: false },
      { axis: [0, 2], keepDims: true },
      { axis: [0, 1, 2, 3], keepDims: false },
    ];
    for (const attrs of cases) {
      const inputs = { x: { values: randomValues(random, shape), shape } };
      const result = await compareWithCpu('Sum', inputs, attrs);
      expect(result.wasmShape, describeCase(attrs)).toEqual(result.cpuShape);
      expect(result.error, describeCase(attrs)).toBeLessThanOrEqual(TOLERANCE);
    }
  });

  it('matches cpu for int32 input', async () => {
    const shape = [3, 4];
    const inputs = { x: { values: Int32Array.from({ length: 12 }, (_, i) => i - 5), shape } };
    const wasm = await runKernelOn('wasm', 'Sum', inputs, { axis: [0], keepDims: false });
    const cpu = await runKernelOn('cpu', 'Sum', inputs, { axis: [0], keepDims: false });
    await tf.setBackend('wasm');
    expect(Array.from(wasm.values)).toEqual(Array.from(cpu.values));
  });
});

describe('Identity on wasm', () => {
  it('shares memory until both copies are disposed', async () => {
    await tf.setBackend('wasm');
    const backend = tf.backend() as BackendWasm;
    const dataIdsBefore = backend.numDataIds();
    const original = tf.tensor2d([1, 2, 3, 4, 5, 6], [2, 3]);
    const clone = tf.clone(original);
    expect(backend.numDataIds()).toBe(dataIdsBefore + 1);

    original.dispose();
    expect(Array.from(clone.dataSync())).toEqual([1, 2, 3, 4, 5, 6]);
    expect(clone.shape).toEqual([2, 3]);
    clone.dispose();
    expect(backend.numDataIds()).toBe(dataIdsBefore);
  });
});

/** Runs a kernel on wasm expecting it to throw, and returns what it threw. */
function thrownBy(kernelName: string, inputs: Record<string, tf.Tensor>, attrs: object): unknown {
  try {
    tf.engine().runKernel(kernelName, inputs, attrs as tf.NamedAttrMap);
  } catch (error) {
    return error;
  }
  return undefined;
}

describe('unsupported attributes', () => {
  const rejections = [
    { kernelName: 'Conv2DBackpropFilter', attribute: 'dataFormat', value: 'NCHW' },
    { kernelName: 'Conv2DBackpropFilter', attribute: 'dilations', value: 2 },
    { kernelName: 'Conv2DBackpropInput', attribute: 'dataFormat', value: 'NCHW' },
    { kernelName: 'Conv2DBackpropInput', attribute: 'dilations', value: [1, 2] },
    { kernelName: 'MaxPoolGrad', attribute: 'dilations', value: 2 },
  ];

  it('rejects each with UnsupportedKernelAttributeError', () => {
    const x = tf.zeros([1, 5, 5, 2]);
    const dy = tf.zeros([1, 3, 3, 4]);
    const filter = tf.zeros([3, 3, 2, 4]);
    const pooledDy = tf.zeros([1, 2, 2, 2]);
    const inputsByKernel: Record<string, Record<string, tf.Tensor>> = {
      Conv2DBackpropFilter: { x, dy },
      Conv2DBackpropInput: { dy, filter },
      MaxPoolGrad: { dy: pooledDy, input: x, output: pooledDy },
    };
    const baseAttrs = {
      strides: 1,
      pad: 'valid',
      dataFormat: 'NHWC',
      filterShape: [3, 3, 2, 4],
      inputShape: [1, 5, 5, 2],
      filterSize: 2,
    };
    for (const { kernelName, attribute, value } of rejections) {
      const attrs = { ...baseAttrs, strides: kernelName === 'MaxPoolGrad' ? 2 : 1, [attribute]: value };
      const error = thrownBy(kernelName, inputsByKernel[kernelName]!, attrs);
      expect(error, `${kernelName} ${attribute}`).toBeInstanceOf(UnsupportedKernelAttributeError);
      const message = (error as Error).message;
      expect(message).toContain(kernelName);
      expect(message).toContain(attribute);
      expect(message).toContain(JSON.stringify(value));
    }
    tf.dispose([x, dy, filter, pooledDy]);
  });
});

/** Builds the Keras MNIST example CNN with seeded weights; the real model lives in shared/models.ts. */
function buildReferenceCnn(): tf.Sequential {
  return tf.sequential({
    layers: [
      tf.layers.conv2d({ inputShape: [28, 28, 1], filters: 32, kernelSize: 3, activation: 'relu', kernelInitializer: tf.initializers.glorotUniform({ seed: 1 }) }),
      tf.layers.maxPooling2d({ poolSize: 2 }),
      tf.layers.conv2d({ filters: 64, kernelSize: 3, activation: 'relu', kernelInitializer: tf.initializers.glorotUniform({ seed: 2 }) }),
      tf.layers.maxPooling2d({ poolSize: 2 }),
      tf.layers.flatten(),
      tf.layers.dense({ units: 128, activation: 'relu', kernelInitializer: tf.initializers.glorotUniform({ seed: 3 }) }),
      tf.layers.dense({ units: 10, activation: 'softmax', kernelInitializer: tf.initializers.glorotUniform({ seed: 4 }) }),
    ],
  });
}

/** Returns each variable's gradient of the mean categorical cross-entropy, read to the CPU. */
function cnnGradients(model: tf.Sequential, images: tf.Tensor, labels: tf.Tensor): Map<string, Float32Array> {
  const { value, grads } = tf.variableGrads(
    () => tf.metrics.categoricalCrossentropy(labels, model.apply(images) as tf.Tensor).mean() as tf.Scalar,
  );
  const result = new Map<string, Float32Array>();
  for (const [name, gradient] of Object.entries(grads)) {
    result.set(name, gradient.dataSync() as Float32Array);
  }
  tf.dispose([value, ...Object.values(grads)]);
  return result;
}

describe('reference CNN gradients', () => {
  it('match cpu for every variable', async () => {
    await tf.setBackend('wasm');
    const random = seededRandom(800);
    // Batch 3 keeps the cpu backend's filter gradient, about 1 s per image, affordable.
    const batch = 3;
    const model = buildReferenceCnn();
    const images = tf.tensor4d(randomValues(random, [batch, 28, 28, 1]).map(Math.abs), [batch, 28, 28, 1]);
    const labels = tf.oneHot(tf.tensor1d([3, 7, 1], 'int32'), 10).toFloat();
    const wasm = cnnGradients(model, images, labels);
    await tf.setBackend('cpu');
    const cpu = cnnGradients(model, images, labels);
    await tf.setBackend('wasm');

    expect([...wasm.keys()].sort()).toEqual([...cpu.keys()].sort());
    expect(wasm.size).toBe(8);
    for (const [name, expected] of cpu) {
      expect(relativeError(wasm.get(name)!, expected), name).toBeLessThanOrEqual(TOLERANCE);
    }
    tf.dispose([images, labels]);
    model.dispose();
  });

  it('leave tensor and wasm memory counts unchanged', async () => {
    await tf.setBackend('wasm');
    const random = seededRandom(900);
    const model = buildReferenceCnn();
    const images = tf.tensor4d(randomValues(random, [16, 28, 28, 1]), [16, 28, 28, 1]);
    const labels = tf.oneHot(tf.tensor1d(Array.from({ length: 16 }, (_, i) => i % 10), 'int32'), 10).toFloat();
    const backend = tf.backend() as BackendWasm;
    cnnGradients(model, images, labels);
    const tensorsBefore = tf.memory().numTensors;
    const dataIdsBefore = backend.numDataIds();
    for (let step = 0; step < 3; step++) {
      cnnGradients(model, images, labels);
      expect(tf.memory().numTensors, `step ${step}`).toBe(tensorsBefore);
      // Kernel intermediates bypass the engine, so only the backend's count detects their leaks.
      expect(backend.numDataIds(), `step ${step}`).toBe(dataIdsBefore);
    }
    tf.dispose([images, labels]);
    model.dispose();
  });
});
