import type { ArgumentsCamelCase, Argv } from 'yargs';
import type { WorkerOptions } from '../shared/options.js';
import { EXIT, exitAfterStopDeadline, makeLogger, startBackend, stopOnSignals, UsageError } from './common.js';
import { checkWorkerTransport, readCaCertificate } from '../shared/security.js';
import { COMMON_OPTIONS, WORKER_OPTIONS } from './options.js';

export const command = 'worker';
export const describe = 'Run a worker: computes gradients of the shards the coordinator sends';

export function builder(yargs: Argv): Argv {
  return yargs.options({ ...WORKER_OPTIONS, ...COMMON_OPTIONS }).check((args) => {
    const url = String(args.coordinator);
    if (!/^wss?:\/\/[^/\s]+/.test(url)) throw new UsageError(`invalid --coordinator "${url}": expected a WebSocket URL such as ws://10.0.0.5:7070`);
    checkWorkerTransport({ coordinator: url, token: args.token as string | undefined, insecure: Boolean(args.insecure) });
    if (args.ca !== undefined) readCaCertificate(String(args.ca));
    return true;
  });
}

/** Time a stop by SIGINT or SIGTERM has to end the process, in milliseconds. */
const STOP_DEADLINE_MS = 5_000;

/**
 * Runs a worker until training is complete and returns its exit status. SIGINT or
 * SIGTERM makes it leave: it closes its connection with the close code for a planned leave and exits with status 0.
 */
export async function runWorker(options: WorkerOptions): Promise<number> {
  const log = makeLogger(options, options.name || 'worker');
  await startBackend(options, log);
  const { dropKernelForTests } = await import('../worker/self-check.js');
  const { Worker } = await import('../worker/worker.js');
  dropKernelForTests();
  const worker = new Worker(options, log);
  stopOnSignals(() => {
    exitAfterStopDeadline(STOP_DEADLINE_MS, log);
    void worker
      .leave()
      .finally(() => worker.close())
      .finally(() => process.exit(EXIT.ok));
  }, log);
  try {
    process.send?.({ type: 'listening', metricsPort: await worker.startMetrics() });
    await worker.run();
    return EXIT.ok;
  } finally {
    await worker.close();
  }
}

export async function handler(args: ArgumentsCamelCase): Promise<void> {
  process.exitCode = await runWorker(args as unknown as WorkerOptions);
}
