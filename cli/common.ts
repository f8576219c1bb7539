import { Logger, type LogFormat, type LogLevel } from '../shared/log.js';
import type { BackendChoice } from '../shared/options.js';

/** Exit statuses shared by every command. */
export const EXIT = { ok: 0, failed: 1, usage: 2 } as const;

/** An invalid flag value; the command exits with status 2, as for other usage errors. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

export interface CommonArguments {
  backend: BackendChoice;
  logFormat: LogFormat;
  logLevel: LogLevel;
}

export function makeLogger(args: CommonArguments, name: string): Logger {
  return new Logger({ format: args.logFormat, level: args.logLevel, name });
}

/** Activates the requested backend and logs once, at start-up, why `auto` fell back. */
export async function startBackend(args: CommonArguments, log: Logger): Promise<string> {
  // Imported here, not at the top: loading tfjs takes about a second, which --help and
  // flag errors should not wait for.
  const { selectBackend } = await import('../shared/backend.js');
  const selection = await selectBackend(args.backend);
  if (selection.fallbackReason) log.info(`using backend "wasm": ${selection.fallbackReason}`);
  return selection.name;
}

/** Set once SIGINT or SIGTERM asked the process to stop; errors caused by stopping are then not reported. */
export const signalStop = { requested: false };

/** Exit status after a signal, by the shell convention 128 + signal number. */
export const SIGNAL_EXIT: Record<string, number> = { SIGINT: 130, SIGTERM: 143 };

/**
 * Stops a long-running command on SIGINT or SIGTERM by calling `close`, and exits with
 * 128 + the signal number once it has finished. A second signal exits at once.
 */
export function closeOnSignals(close: () => Promise<void>, log: Logger): void {
  const stop = (signal: NodeJS.Signals) => {
    if (signalStop.requested) process.exit(SIGNAL_EXIT[signal]);
    signalStop.requested = true;
    log.info('stopping', { signal });
    close().finally(() => process.exit(SIGNAL_EXIT[signal]));
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}
