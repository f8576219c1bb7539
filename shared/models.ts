import { tf } from './backend.js';
import type { ModelName } from './options.js';


export interface ModelShape {
  /** Height, width and channels of one image. */
  inputShape: [number, number, number];
  numClasses: number;
}

/** A trainable weight: its name on the wire and its shape. */
export interface ParameterSpec {
  name: string;
  shape: number[];
}

/**
 * Builds a model with weights drawn from `seed`, so that every run with the same seed
 * starts from the same weights. Layer names are fixed because the wire names of the
 * weights are derived from them.
 */
export function buildModel(name: ModelName, shape: ModelShape, seed: number): tf.LayersModel {
  const init = (offset: number) => tf.initializers.glorotUniform({ seed: seed * 101 + offset });
  const model = tf.sequential({ name: `gradfleet_${name}` });
  if (name === 'cnn') {
    model.add(tf.layers.conv2d({ name: 'conv1', inputShape: shape.inputShape, filters: 32, kernelSize: 3, activation: 'relu', kernelInitializer: init(1) }));
    model.add(tf.layers.maxPooling2d({ name: 'pool1', poolSize: 2 }));
    model.add(tf.layers.conv2d({ name: 'conv2', filters: 64, kernelSize: 3, activation: 'relu', kernelInitializer: init(2) }));
    model.add(tf.layers.maxPooling2d({ name: 'pool2', poolSize: 2 }));
    model.add(tf.layers.flatten({ name: 'flatten' }));
    model.add(tf.layers.dense({ name: 'dense1', units: 128, activation: 'relu', kernelInitializer: init(3) }));
  } else {
    model.add(tf.layers.flatten({ name: 'flatten', inputShape: shape.inputShape }));
    model.add(tf.layers.dense({ name: 'dense1', units: 128, activation: 'relu', kernelInitializer: init(3) }));
  }
  model.add(tf.layers.dense({ name: 'output', units: shape.numClasses, activation: 'softmax', kernelInitializer: init(4) }));
  return model;
}

/**
 * Returns the wire names and shapes of a model's trainable weights, in the order of
 * `model.trainableWeights`. tfjs may add a suffix to a variable's own name when another
 * model in the process already uses it, so the wire name is built from the layer name,
 * which the model's topology fixes, and the weight's role.
 */
export function parameterSpecs(model: tf.LayersModel): ParameterSpec[] {
  const specs: ParameterSpec[] = [];
  for (const layer of model.layers) {
    for (const weight of layer.trainableWeights) {
      const role = weight.originalName.split('/').pop();
      specs.push({ name: `${layer.name}/${role}`, shape: weight.shape.map((size) => size ?? 0) });
    }
  }
  return specs;
}

/** Returns the tf.Variable behind each trainable weight, in `parameterSpecs` order. */
export function trainableVariables(model: tf.LayersModel): tf.Variable[] {
  return model.layers.flatMap((layer) => layer.trainableWeights.map((weight) => weight.read() as tf.Variable));
}

/** Rebuilds a model from the topology JSON that the coordinator sends in `welcome`. */
export async function modelFromTopology(topology: object): Promise<tf.LayersModel> {
  return tf.models.modelFromJSON({ modelTopology: topology as tf.io.ModelJSON['modelTopology'] });
}

/** Returns the Keras topology JSON of a model, as `welcome` carries it. */
export function modelTopology(model: tf.LayersModel): object {
  return model.toJSON(null, false) as object;
}
