import { readFileSync } from 'node:fs';
import { UsageError } from './common.js';
import { COMMAND_OPTIONS } from './options.js';

/**
 * Options from the environment and from --config files. One environment or config file
 * often serves a coordinator and its workers, so each command ignores the options that
 * belong only to another command, and rejects names that no command has.
 */

const ENVIRONMENT_PREFIX = 'GRADFLEET_';
const ALL_OPTIONS = new Set(Object.values(COMMAND_OPTIONS).flat());

/** Flag name of a config key, which may be camelCase (batchSize) or kebab-case (batch-size). */
function kebabCase(name: string): string {
  return name.replace(/[A-Z]/g, (letter) => `-${letter.toLowerCase()}`);
}

/** Flag name of an environment variable: GRADFLEET_BATCH_SIZE is --batch-size. */
function environmentOption(key: string): string {
  return key.slice(ENVIRONMENT_PREFIX.length).toLowerCase().replace(/_/g, '-');
}

/** Returns the command named on the command line, if any. */
export function commandOf(argv: string[]): string | undefined {
  return argv.find((argument) => argument in COMMAND_OPTIONS);
}

/**
 * Deletes GRADFLEET_* variables that set another command's options, and raises for one
 * that matches no option of any command (a typo such as GRADFLEET_EPOCS).
 */
export function filterEnvironment(command: string, environment: NodeJS.ProcessEnv): void {
  const own = new Set(COMMAND_OPTIONS[command]);
  for (const key of Object.keys(environment)) {
    if (!key.startsWith(ENVIRONMENT_PREFIX)) continue;
    const option = environmentOption(key);
    if (!ALL_OPTIONS.has(option)) {
      throw new UsageError(`unknown environment variable ${key}: no gradfleet option is named --${option}; unset it or fix its name`);
    }
    if (!own.has(option)) delete environment[key];
  }
}

/** Reads a --config file for `command`, keeping only the options that command takes. */
export function readConfigFile(path: string, command: string | undefined): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    const reason = (error as NodeJS.ErrnoException).code === 'ENOENT' ? 'file not found' : (error as Error).message;
    throw new UsageError(`cannot read config file ${path}: ${reason}; check --config`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new UsageError(`invalid JSON in config file ${path}: ${(error as Error).message}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new UsageError(`invalid config file ${path}: expected a JSON object such as {"epochs": 3}`);
  }
  const own = new Set(command ? COMMAND_OPTIONS[command] : ALL_OPTIONS);
  const options: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(parsed)) {
    const option = kebabCase(key);
    if (!ALL_OPTIONS.has(option)) throw new UsageError(`unknown option "${key}" in config file ${path}; run gradfleet ${command ?? ''} --help for the names`);
    if (own.has(option)) options[option] = value;
  }
  return options;
}
