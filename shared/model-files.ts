import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { tf } from './backend.js';

/**
 * Saving and loading models in the TensorFlow.js Layers format (model.json plus one
 * weights file), the same files `tf.loadLayersModel` reads. tfjs registers a `file://`
 * handler only in tfjs-node, so gradfleet writes and reads the files itself.
 */

const WEIGHTS_FILE = 'weights.bin';

/** Saves a model into `folder`, creating it; model.json is written last, by rename. */
export async function saveModel(model: tf.LayersModel, folder: string): Promise<void> {
  await mkdir(folder, { recursive: true });
  await model.save(
    tf.io.withSaveHandler(async (artifacts) => {
      const weightData = artifacts.weightData as ArrayBuffer;
      await writeFile(join(folder, WEIGHTS_FILE), Buffer.from(weightData));
      const manifest = {
        format: 'layers-model',
        generatedBy: `TensorFlow.js tfjs-layers v${tf.version.tfjs}`,
        convertedBy: 'gradfleet',
        modelTopology: artifacts.modelTopology,
        weightsManifest: [{ paths: [WEIGHTS_FILE], weights: artifacts.weightSpecs }],
      };
      // A reader never sees a half-written model.json: it is renamed into place whole.
      const temporary = join(folder, 'model.json.tmp');
      await writeFile(temporary, JSON.stringify(manifest));
      await rename(temporary, join(folder, 'model.json'));
      return { modelArtifactsInfo: { dateSaved: new Date(), modelTopologyType: 'JSON' } };
    }),
  );
}

/** Raised when a folder does not hold a readable Layers-format model. */
export class ModelFilesError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ModelFilesError';
  }
}

/** Loads a model saved by `saveModel` (or any Layers-format model.json with local weight files). */
export async function loadModel(folder: string): Promise<tf.LayersModel> {
  const manifestPath = join(folder, 'model.json');
  let manifest: tf.io.ModelJSON;
  try {
    manifest = JSON.parse(await readFile(manifestPath, 'utf8')) as tf.io.ModelJSON;
  } catch (error) {
    throw new ModelFilesError(`cannot read ${manifestPath}: ${(error as Error).message}; pass the folder given to --output`);
  }
  if (!manifest.modelTopology || !Array.isArray(manifest.weightsManifest)) {
    throw new ModelFilesError(`${manifestPath} is not a TensorFlow.js Layers model: "modelTopology" or "weightsManifest" is missing`);
  }
  const weightSpecs = manifest.weightsManifest.flatMap((group) => group.weights);
  const buffers = [];
  for (const path of manifest.weightsManifest.flatMap((group) => group.paths)) {
    try {
      buffers.push(await readFile(join(folder, path)));
    } catch (error) {
      throw new ModelFilesError(`cannot read weights file ${join(folder, path)} listed in ${manifestPath}: ${(error as Error).message}; copy the whole folder given to --output`);
    }
  }
  const weightData = Buffer.concat(buffers);
  return tf.loadLayersModel(
    tf.io.fromMemory({
      modelTopology: manifest.modelTopology,
      weightSpecs,
      weightData: weightData.buffer.slice(weightData.byteOffset, weightData.byteOffset + weightData.byteLength),
    }),
  );
}
