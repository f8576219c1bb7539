import { describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { CliProcess, temporaryFolder } from '../helpers/cli.js';
import { maxAbsDifference, readSavedWeights } from '../helpers/runs.js';

/**
 * Faults on real processes, each compared with a failure-free run of the same options.
 * The global batch is fixed, so the number of workers taking part in a step does not
 * change its update beyond float32 rounding. Runs stop a few steps after the fault: ReLU
 * and max-pool ties make later steps amplify rounding differences (1-worker and 2-worker
 * runs of this CNN differ by about 1e-6 after 8 steps but 1e-3 after 20).
 */

const TRAIN_IMAGES = 6144;
const COMMON = ['--optimizer', 'sgd', '--lr', '0.05', '--epochs', '1', '--train-limit', String(TRAIN_IMAGES), '--test-limit', '200', '--backend', 'wasm', '--log-every-steps', '1'];
/** Quick steps for the kills, which a test hook times exactly. */
const QUICK = { flags: [...COMMON, '--batch-size', '64', '--max-steps', '7'], steps: 7, batch: 64 };
/** Steps of about a second, so that a joining worker and a stranger's frames arrive mid-run. */
const SLOW = { flags: [...COMMON, '--batch-size', '512', '--max-steps', '10'], steps: 10, batch: 512 };
type Training = typeof QUICK;

interface Run {
  weights: Float32Array;
  coordinator: CliProcess;
  workers: Map<string, CliProcess>;
}

type Fault = (context: { url: string; coordinator: CliProcess; startWorker: (name: string, env?: NodeJS.ProcessEnv) => CliProcess }) => Promise<void>;

/** Trains with workers "steady" and "victim" (the latter with `victimEnv`), running `fault` once both are admitted. */
async function train(training: Training, victimEnv: NodeJS.ProcessEnv = {}, fault?: Fault): Promise<Run> {
  const output = temporaryFolder('worker-faults');
  const coordinator = new CliProcess(['coordinator', '--workers', '2', '--port', '0', '--metrics-port', '0', '--log-format', 'json', '--output', output, ...training.flags]);
  const workers = new Map<string, CliProcess>();
  let url = '';
  const startWorker = (name: string, env: NodeJS.ProcessEnv = {}) => {
    const worker = new CliProcess(['worker', '--coordinator', url, '--name', name, '--metrics-port', '0', '--backend', 'wasm', '--log-format', 'json'], env);
    workers.set(name, worker);
    return worker;
  };
  try {
    url = (await coordinator.waitForLog('coordinator listening')).url;
    startWorker('steady');
    startWorker('victim', victimEnv);
    await coordinator.waitForLine((line) => line.includes('"worker admitted"') && line.includes('"victim"'));
    if (fault) await fault({ url, coordinator, startWorker });
    expect(await coordinator.exited, coordinator.output()).toBe(0);
    // Workers exit by themselves after "training complete"; the SIGKILL below is for failures only.
    await Promise.all([...workers.values()].map((worker) => worker.exited));
    return { weights: readSavedWeights(output), coordinator, workers };
  } finally {
    for (const worker of workers.values()) worker.kill();
    coordinator.kill();
  }
}

/** Checks that the run used every sample once and ended with the reference weights. */
function expectLikeReference(run: Run, reference: Run, training: Training, label: string): void {
  const [epoch] = run.coordinator.logs('epoch complete');
  const used = training.steps * training.batch;
  expect(epoch.steps).toBe(training.steps);
  expect(epoch.samples).toEqual({ unused: TRAIN_IMAGES - used, once: used, repeated: 0 });
  const difference = maxAbsDifference(reference.weights, run.weights);
  console.log(`${label}: max abs weight difference from the failure-free run ${difference}`);
  expect(difference).toBeLessThanOrEqual(1e-4);
}

/** Resolves once the coordinator has logged progress at or past `step`. */
function reachStep(coordinator: CliProcess, step: number): Promise<string> {
  return coordinator.waitForLine((line) => line.includes('"progress"') && Number(/"step":(\d+)/.exec(line)?.[1]) >= step);
}

describe('worker faults on real processes', () => {
  const references = new Map<Training, Run>();

  it('failure-free reference runs', async () => {
    for (const training of [QUICK, SLOW]) {
      const reference = await train(training);
      expect(reference.coordinator.logs('worker disconnected')).toHaveLength(0);
      expect(await reference.workers.get('victim')!.exited).toBe(0);
      references.set(training, reference);
    }
  }, 120_000);

  for (const phase of ['before', 'during', 'after']) {
    it(`SIGKILL ${phase} sending a gradient`, async () => {
      const run = await train(QUICK, { TEST_GRADFLEET_KILL_AT_STEP: `4:${phase}` });
      // -1: the process ended by a signal, here its own SIGKILL at step 4.
      expect(await run.workers.get('victim')!.exited).toBe(-1);
      expect(await run.workers.get('steady')!.exited).toBe(0);
      const dropped = run.coordinator.logs('worker disconnected').filter((entry) => entry.worker === 'victim');
      expect(dropped).toHaveLength(1);
      expectLikeReference(run, references.get(QUICK)!, QUICK, `SIGKILL ${phase} sending`);
    }, 120_000);
  }

  it('worker joining mid-epoch', async () => {
    let joiner: CliProcess | undefined;
    const run = await train(SLOW, {}, async ({ coordinator, startWorker }) => {
      await reachStep(coordinator, 1);
      joiner = startWorker('joiner');
      await coordinator.waitForLine((line) => line.includes('"worker admitted"') && line.includes('"joiner"'));
    });
    expect(await joiner!.exited).toBe(0);
    const admitted = run.coordinator.logs('worker admitted').find((entry) => entry.worker === 'joiner');
    expect(admitted!.step).toBeGreaterThan(1);
    expect(admitted!.step).toBeLessThan(SLOW.steps);
    expectLikeReference(run, references.get(SLOW)!, SLOW, `worker joining at step ${admitted!.step}`);
  }, 120_000);

  it('garbage and oversized frames', async () => {
    const closeCodes: number[] = [];
    const run = await train(SLOW, {}, async ({ url, coordinator }) => {
      await reachStep(coordinator, 1);
      const frames: [Buffer | string, boolean][] = [
        [Buffer.from('not a gradfleet message'), true],
        [Buffer.from([0xc1, 0xff, 0x00, 0x13]), true],
        ['{"type":"gradient"}', false],
        [Buffer.alloc(32 * 1024 * 1024, 7), true],
      ];
      for (const [data, binary] of frames) {
        const socket = new WebSocket(url);
        await new Promise((resolve, reject) => socket.once('open', resolve).once('error', reject));
        socket.send(data, { binary });
        closeCodes.push(await new Promise<number>((resolve) => socket.once('close', resolve)));
      }
    });
    // 4002: malformed message; 1009: message too big (RFC 6455).
    expect(closeCodes).toEqual([4002, 4002, 4002, 1009]);
    const rejected = run.coordinator.logs('message from worker rejected').map((entry) => entry.code);
    expect(rejected).toEqual(['MALFORMED_MESSAGE', 'MALFORMED_MESSAGE', 'MALFORMED_MESSAGE', 'MESSAGE_TOO_BIG']);
    expect(await run.workers.get('victim')!.exited).toBe(0);
    expectLikeReference(run, references.get(SLOW)!, SLOW, 'garbage frames');
  }, 120_000);
});
