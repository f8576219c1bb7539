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

/** Set when a second SIGINT or SIGTERM ends the process at once; errors caused by that are not reported. */
export const signalStop = { requested: false };

/** Exit status after a signal, by the shell convention 128 + signal number. */
export const SIGNAL_EXIT: Record<string, number> = { SIGINT: 130, SIGTERM: 143 };

/**
 * Calls `stop` on the first SIGINT or SIGTERM, so that a long-running command can stop
 * gracefully and choose its exit status. A second signal exits at once with 128 + the
 * signal number. A child of `gradfleet launch` also stops when launch goes away, which
 * closes the IPC channel, because launch starts its children in their own process group
 * and a terminal's Ctrl-C would not reach them.
 */
export function stopOnSignals(stop: (reason: string) => void, log: Logger): void {
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      signalStop.requested = true;
      log.warn('second signal: exiting at once', { signal });
      process.exit(SIGNAL_EXIT[signal]);
    }
    stopping = true;
    log.info('stopping; a second signal exits at once', { signal });
    stop(signal);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.once('disconnect', () => {
    if (stopping) return;
    stopping = true;
    log.info('stopping: the parent process (gradfleet launch) exited');
    stop('parent process exited');
  });
}

/**
 * Exits with EXIT.failed if a graceful stop has not ended the process after `deadlineMs`,
 * so that a stuck stop cannot outlive a service manager's grace period. The timer does
 * not keep the process alive.
 */
export function exitAfterStopDeadline(deadlineMs: number, log: Logger): void {
  setTimeout(() => {
    log.error('graceful stop did not finish in time; exiting', { deadlineMs });
    process.exit(EXIT.failed);
  }, deadlineMs).unref();
}
