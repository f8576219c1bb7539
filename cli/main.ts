#!/usr/bin/env node
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { GRADFLEET_VERSION } from '../shared/version.js';
import { EXIT, signalStop, UsageError } from './common.js';
import { commandOf, filterEnvironment, readConfigFile } from './sources.js';
import * as coordinator from './coordinator.js';
import * as evaluate from './evaluate.js';
import * as launch from './launch.js';
import * as worker from './worker.js';

// The IPC channel to a parent (gradfleet launch) must not keep this process alive.
process.channel?.unref();

/** Errors whose message is complete for a user: printed without a stack trace. */
const USER_ERRORS = new Set([
  'OptionError',
  'IdxFormatError',
  'DatasetError',
  'BackendUnavailableError',
  'WorkerFatalError',
  'ModelFilesError',
  'SelfCheckError',
  'CoordinatorClosedError',
  'ListenError',
  'TrainingDivergedError',
  'CheckpointError',
]);

function reportFailure(error: Error): void {
  if (USER_ERRORS.has(error.name) || !error.stack) process.stderr.write(`gradfleet: error: ${error.message}\n`);
  else process.stderr.write(`gradfleet: error: ${error.stack}\n`);
}

const argv = hideBin(process.argv);
const command = commandOf(argv);

try {
  if (command) filterEnvironment(command, process.env);
} catch (error) {
  process.stderr.write(`gradfleet: error: ${(error as Error).message}\n`);
  process.exit(EXIT.usage);
}

await yargs(argv)
  .scriptName('gradfleet')
  .version(GRADFLEET_VERSION)
  .command(coordinator)
  .command(worker)
  .command(launch)
  .command(evaluate)
  .demandCommand(1, 'name a command: coordinator, worker, launch or evaluate')
  .recommendCommands()
  .strictCommands()
  .config('config', 'JSON file of options; keys are option names, such as {"epochs": 3}', (path: string) => readConfigFile(path, command))
  .env('GRADFLEET')
  .strict()
  .wrap(Math.min(110, process.stdout.columns || 110))
  .epilogue('Every option can also be set by a GRADFLEET_* environment variable, such as GRADFLEET_EPOCHS=3.')
  .fail((message, error) => {
    // yargs rethrows errors from coerce functions as a YError carrying the same message.
    const usage = !error || error instanceof UsageError || error.name === 'OptionError' || error.name === 'YError';
    if (signalStop.requested) return;
    if (!usage) {
      reportFailure(error);
      process.exit(EXIT.failed);
    }
    process.stderr.write(`gradfleet: error: ${error?.message ?? message}\nRun with --help for the options.\n`);
    process.exit(EXIT.usage);
  })
  .parseAsync();
