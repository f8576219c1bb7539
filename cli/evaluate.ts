import type { ArgumentsCamelCase, Argv } from 'yargs';
import type { tf } from '../shared/backend.js';
import type { Logger } from '../shared/log.js';
import { EXIT, makeLogger, startBackend, UsageError, type CommonArguments } from './common.js';
import { COMMON_OPTIONS, EVALUATE_OPTIONS } from './options.js';

export const command = 'evaluate';
export const describe = 'Print the test loss and accuracy of a saved model or of a checkpoint';

export function builder(yargs: Argv): Argv {
  return yargs.options({ ...EVALUATE_OPTIONS, ...COMMON_OPTIONS }).check((args) => {
    const sourceCount = [args.modelDir, args.checkpoint].filter((value) => value !== undefined).length;
    if (sourceCount !== 1) {
      throw new UsageError(
        `${sourceCount === 0 ? 'nothing to evaluate' : '--model-dir and --checkpoint were both given'}: ` +
          'pass exactly one of --model-dir DIR (a model saved to --output) or --checkpoint PATH (a checkpoint file or a --checkpoint-dir folder)',
      );
    }
    return true;
  });
}

interface EvaluateArguments extends CommonArguments {
  modelDir?: string;
  checkpoint?: string;
  dataDir?: string;
  testLimit?: number;
}

/** A model to evaluate, where it came from, and the data folder it was trained on if known. */
interface LoadedModel {
  model: tf.LayersModel;
  source: Record<string, unknown>;
  dataDir?: string;
}

async function loadSavedModel(modelDir: string): Promise<LoadedModel> {
  const { loadModel } = await import('../shared/model-files.js');
  return { model: await loadModel(modelDir), source: { modelDir } };
}

/** Rebuilds the checkpoint's model from its name and input shape, and sets its stored weights. */
async function loadCheckpointModel(path: string, log: Logger): Promise<LoadedModel> {
  const { loadCheckpointFrom, CheckpointError } = await import('../coordinator/checkpoint.js');
  const { buildModel, parameterSpecs, trainableVariables } = await import('../shared/models.js');
  const { tf } = await import('../shared/backend.js');
  const { path: file, checkpoint } = await loadCheckpointFrom(path, (skipped, reason) => log.warn('checkpoint skipped: it is not valid', { path: skipped, reason }));
  const model = buildModel(checkpoint.model, { inputShape: checkpoint.inputShape, numClasses: checkpoint.numClasses }, checkpoint.seed);
  const specs = parameterSpecs(model);
  const saved = checkpoint.weights.map((tensor) => `${tensor.name}[${tensor.shape}]`).join(', ');
  const expected = specs.map((spec) => `${spec.name}[${spec.shape}]`).join(', ');
  if (saved !== expected) {
    model.dispose();
    throw new CheckpointError(`${file} contains the weights ${saved}, but the "${checkpoint.model}" model has ${expected}; it was written by another gradfleet version`);
  }
  trainableVariables(model).forEach((variable, t) => tf.tidy(() => variable.assign(tf.tensor(checkpoint.weights[t].data, variable.shape, 'float32'))));
  const dataDir = typeof checkpoint.options.dataDir === 'string' ? checkpoint.options.dataDir : undefined;
  return { model, dataDir, source: { checkpoint: file, step: checkpoint.step, epoch: checkpoint.progress.epoch } };
}

export async function handler(args: ArgumentsCamelCase): Promise<void> {
  const options = args as unknown as EvaluateArguments;
  const log = makeLogger(options, 'evaluate');
  await startBackend(options, log);
  const { loadTestSplit } = await import('../shared/data/dataset.js');
  const { evaluate } = await import('../shared/training.js');
  const loaded = options.checkpoint !== undefined ? await loadCheckpointModel(options.checkpoint, log) : await loadSavedModel(options.modelDir!);
  // A checkpoint records the data folder of its run, which is the right test set unless --data-dir gives another.
  const test = await loadTestSplit({ dataDir: options.dataDir ?? loaded.dataDir, testLimit: options.testLimit });
  const result = evaluate(loaded.model, { images: test.images, labels: test.labels, count: test.count }, 10);
  log.report(
    `test_loss: ${result.loss.toFixed(4)} - test_accuracy: ${result.accuracy.toFixed(4)} (${result.count} images)`,
    'evaluation complete',
    { ...loaded.source, testLoss: result.loss, testAccuracy: result.accuracy, images: result.count },
  );
  loaded.model.dispose();
  process.exitCode = EXIT.ok;
}
