import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CliProcess, temporaryFolder } from '../helpers/cli.js';
import { maxAbsDifference, readSavedWeights } from '../helpers/runs.js';

/** Step at which the test hook makes a worker's gradient NaN. */
const POISONED_STEP = 5;
const TRAINING = ['--optimizer', 'sgd', '--lr', '0.05', '--max-steps', '20', '--train-limit', '3000', '--test-limit', '300', '--backend', 'wasm'];

interface Run {
  status: number;
  coordinator: CliProcess;
  output: string;
}

/** Runs a coordinator and two workers; `poisoned` lists the workers whose step-5 gradient is NaN. */
async function train(poisoned: string[], extra: string[] = []): Promise<Run> {
  const output = temporaryFolder('non-finite');
  const coordinator = new CliProcess(['coordinator', '--workers', '2', '--port', '0', '--metrics-port', '0', '--log-format', 'json', '--output', output, ...TRAINING, ...extra]);
  const workers: CliProcess[] = [];
  try {
    const { url } = await coordinator.waitForLog('coordinator listening');
    for (const name of ['first', 'second']) {
      const env = poisoned.includes(name) ? { TEST_GRADFLEET_NAN_AT_STEP: String(POISONED_STEP) } : {};
      workers.push(new CliProcess(['worker', '--coordinator', url, '--name', name, '--metrics-port', '0', '--backend', 'wasm', '--log-format', 'json', '--connect-timeout-ms', '3000'], env));
    }
    const status = await coordinator.exited;
    await Promise.all(workers.map((worker) => worker.exited));
    return { status, coordinator, output };
  } finally {
    for (const worker of workers) worker.kill();
    coordinator.kill();
  }
}

describe('non-finite gradients', () => {
  it('one NaN shard is recomputed', async () => {
    const [reference, faulty] = await Promise.all([train([]), train(['second'])]);
    expect(reference.status, reference.coordinator.output()).toBe(0);
    expect(faulty.status, faulty.coordinator.output()).toBe(0);
    const rejected = faulty.coordinator.logs('message from worker rejected');
    expect(rejected.map((entry) => entry.code)).toEqual(['INVALID_GRADIENT']);
    expect(faulty.coordinator.logs('step skipped: its update is not applied')).toHaveLength(0);

    const max = maxAbsDifference(readSavedWeights(reference.output), readSavedWeights(faulty.output));
    expect(max).toBeLessThanOrEqual(1e-4);
  }, 180_000);

  it('twice NaN skips the step', async () => {
    const run = await train(['first', 'second']);
    expect(run.status, run.coordinator.output()).toBe(0);
    const skipped = run.coordinator.logs('step skipped: its update is not applied');
    expect(skipped.map((entry) => entry.step)).toEqual([POISONED_STEP]);
    const [epoch] = run.coordinator.logs('epoch complete');
    // Step 5's 64 samples went into no update.
    expect(epoch.samples).toEqual({ unused: 3000 - 19 * 64, once: 19 * 64, repeated: 0 });
  }, 180_000);

  it('stops after max skipped steps', async () => {
    const run = await train(['first', 'second'], ['--max-skipped-steps', '1']);
    expect(run.status).toBe(1);
    expect(run.coordinator.stderr.join('\n')).toMatch(/training stopped: 1 step was skipped because the gradients were not finite, so the model diverged; lower --lr/);
  }, 180_000);
});
