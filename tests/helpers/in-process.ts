import type { Coordinator } from '../../coordinator/coordinator.js';
import { Logger } from '../../shared/log.js';
import { WORKER_DEFAULTS } from '../../shared/options.js';
import { Worker } from '../../worker/worker.js';

/** A logger that drops everything, for coordinators and workers run inside a test process. */
export const silentLogger = new Logger({ format: 'json', level: 'error', name: 'test', write: () => {} });

/** Objects a test closes after each case, in the order they were added. */
export type Closables = { close(): Promise<void> }[];

/**
 * Starts a worker in this process against `coordinator` on 127.0.0.1, adds it to `cleanup`,
 * and returns it with the promise of its run.
 */
export function startInProcessWorker(coordinator: Coordinator, name: string, cleanup: Closables): { worker: Worker; done: Promise<void> } {
  const worker = new Worker({ ...WORKER_DEFAULTS, coordinator: `ws://127.0.0.1:${coordinator.port}`, metricsPort: 0, name }, silentLogger);
  cleanup.push(worker);
  return { worker, done: worker.run() };
}
