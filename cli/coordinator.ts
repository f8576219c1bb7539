import type { ArgumentsCamelCase, Argv } from 'yargs';
import type { CoordinatorOptions } from '../shared/options.js';
import { EXIT, exitAfterStopDeadline, makeLogger, startBackend, stopOnSignals } from './common.js';
import { COMMON_OPTIONS, COORDINATOR_OPTIONS } from './options.js';

export const command = 'coordinator';
export const describe = 'Run the coordinator: owns the model, plans the data and averages the workers\' gradients';

export function builder(yargs: Argv): Argv {
  return yargs.options({ ...COORDINATOR_OPTIONS, ...COMMON_OPTIONS });
}

/**
 * Time a stop by SIGINT or SIGTERM has to end the process, in milliseconds. The
 * coordinator gives the running step 8 s, so that the checkpoint and the close fit in the
 * shortest usual grace period: `docker stop` sends SIGKILL 10 s after SIGTERM by default.
 */
const STOP_DEADLINE_MS = 9_500;

/**
 * Runs a coordinator to completion and returns its exit status. SIGINT or SIGTERM stops
 * it at the next step boundary with a checkpoint, and the status is then 0 as well.
 */
export async function runCoordinator(options: CoordinatorOptions): Promise<number> {
  const log = makeLogger(options, 'coordinator');
  await startBackend(options, log);
  const { Coordinator } = await import('../coordinator/coordinator.js');
  const coordinator = new Coordinator(options, log);
  stopOnSignals((reason) => {
    exitAfterStopDeadline(STOP_DEADLINE_MS, log);
    coordinator.requestStop(`stop requested (${reason})`);
  }, log);
  try {
    await coordinator.start();
    // A parent process (gradfleet launch) learns the ports here, which matters when they are 0.
    process.send?.({ type: 'listening', port: coordinator.port, metricsPort: coordinator.metricsPort });
    await coordinator.run();
    return EXIT.ok;
  } finally {
    await coordinator.close();
  }
}

export async function handler(args: ArgumentsCamelCase): Promise<void> {
  process.exitCode = await runCoordinator(args as unknown as CoordinatorOptions);
}
