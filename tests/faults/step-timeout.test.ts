import { describe, expect, it } from 'vitest';
import { CliProcess, temporaryFolder } from '../helpers/cli.js';
import { readSavedWeights } from '../helpers/runs.js';

const STEPS = 80;
const TRAINING = ['--optimizer', 'sgd', '--lr', '0.05', '--max-steps', String(STEPS), '--train-limit', '6000', '--test-limit', '500', '--backend', 'wasm', '--step-timeout-ms', '1000'];

/** Runs a coordinator and two worker processes; `fault` runs once both workers are admitted. */
async function train(fault?: (slow: CliProcess, coordinator: CliProcess) => Promise<void>): Promise<{ weights: Float32Array; coordinator: CliProcess }> {
  const output = temporaryFolder('step-timeout');
  const coordinator = new CliProcess(['coordinator', '--workers', '2', '--port', '0', '--metrics-port', '0', '--log-format', 'json', '--output', output, ...TRAINING]);
  const workers: CliProcess[] = [];
  try {
    const { url } = await coordinator.waitForLog('coordinator listening');
    for (const name of ['quick', 'slow']) {
      workers.push(new CliProcess(['worker', '--coordinator', url, '--name', name, '--metrics-port', '0', '--backend', 'wasm', '--log-format', 'json']));
    }
    await coordinator.waitForLine((line) => line.includes('"worker admitted"') && line.includes('"slow"'));
    if (fault) await fault(workers[1], coordinator);
    expect(await coordinator.exited, coordinator.output()).toBe(0);
    for (const worker of workers) expect(await worker.exited, worker.output()).toBe(0);
    return { weights: readSavedWeights(output), coordinator };
  } finally {
    for (const worker of workers) {
      worker.child.kill('SIGCONT');
      worker.kill();
    }
    coordinator.kill();
  }
}

describe('step deadline', () => {
  it('recomputes a straggler shard elsewhere', async () => {
    const reference = await train();
    const faulty = await train(async (slow, coordinator) => {
      await new Promise((resolve) => setTimeout(resolve, 1000));
      slow.child.kill('SIGSTOP');
      await coordinator.waitForLog('straggler missed the step deadline; its shard goes to another worker', 20_000);
      await new Promise((resolve) => setTimeout(resolve, 1500));
      slow.child.kill('SIGCONT');
    });

    const rejected = faulty.coordinator.logs('message from worker rejected');
    expect(rejected.some((entry) => entry.code === 'STALE_GRADIENT' && entry.worker === 'slow')).toBe(true);
    expect(faulty.coordinator.logs('worker disconnected')).toHaveLength(0);
    const [epoch] = faulty.coordinator.logs('epoch complete');
    expect(epoch.steps).toBe(STEPS);
    expect(epoch.samples).toEqual({ unused: 6000 - STEPS * 64, once: STEPS * 64, repeated: 0 });

    let max = 0;
    for (let i = 0; i < reference.weights.length; i++) max = Math.max(max, Math.abs(reference.weights[i] - faulty.weights[i]));
    console.log(`max abs weight difference with a straggler: ${max}`);
    expect(max).toBeLessThanOrEqual(1e-4);
  }, 240_000);
});
