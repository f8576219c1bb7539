import type { ArgumentsCamelCase, Argv } from 'yargs';
import { EXIT, makeLogger, startBackend, type CommonArguments } from './common.js';
import { COMMON_OPTIONS, EVALUATE_OPTIONS } from './options.js';

export const command = 'evaluate';
export const describe = 'Print the test loss and accuracy of a saved model';

export function builder(yargs: Argv): Argv {
  return yargs.options({ ...EVALUATE_OPTIONS, ...COMMON_OPTIONS });
}

interface EvaluateArguments extends CommonArguments {
  modelDir: string;
  dataDir?: string;
  testLimit?: number;
}

export async function handler(args: ArgumentsCamelCase): Promise<void> {
  const options = args as unknown as EvaluateArguments;
  const log = makeLogger(options, 'evaluate');
  await startBackend(options, log);
  const { loadTestSplit } = await import('../shared/data/dataset.js');
  const { loadModel } = await import('../shared/model-files.js');
  const { evaluate } = await import('../shared/training.js');
  const model = await loadModel(options.modelDir);
  const test = await loadTestSplit({ dataDir: options.dataDir, testLimit: options.testLimit });
  const result = evaluate(model, { images: test.images, labels: test.labels, count: test.count }, 10);
  log.report(
    `test_loss: ${result.loss.toFixed(4)} - test_accuracy: ${result.accuracy.toFixed(4)} (${result.count} images)`,
    'evaluation complete',
    { modelDir: options.modelDir, testLoss: result.loss, testAccuracy: result.accuracy, images: result.count },
  );
  model.dispose();
  process.exitCode = EXIT.ok;
}
