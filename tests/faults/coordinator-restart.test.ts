import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { listCheckpoints, readCheckpoint } from '../../coordinator/checkpoint.js';
import { CliProcess, temporaryFolder } from '../helpers/cli.js';
import { freePort, maxAbsDifference, mergeFlags, readSavedWeights } from '../helpers/runs.js';

/**
 * A coordinator killed with SIGKILL and started again with --resume must continue the
 * same run. Its workers reconnect by themselves, and every sample of every epoch is used
 * once by the updates that reach the final model. The final weights equal those of a run
 * that was never interrupted.
 */

const TRAIN_LIMIT = 2000;
const BATCH = 32;
const EPOCHS = 3;
const STEPS_PER_EPOCH = Math.ceil(TRAIN_LIMIT / BATCH);

/** Starts a coordinator with this file's training options, where `flags` may replace any of them. */
function coordinator(port: number, output: string, flags: string[]): CliProcess {
  const defaults: [string, string | undefined][] = [
    ['--workers', '2'], ['--port', String(port)], ['--metrics-port', '0'], ['--backend', 'wasm'], ['--log-format', 'json'],
    ['--model', 'mlp'], ['--train-limit', String(TRAIN_LIMIT)], ['--test-limit', '500'], ['--batch-size', String(BATCH)],
    ['--epochs', String(EPOCHS)], ['--output', output],
  ];
  return new CliProcess(['coordinator', ...mergeFlags(defaults, flags)]);
}

function worker(port: number, name: string): CliProcess {
  return new CliProcess(['worker', '--coordinator', `ws://127.0.0.1:${port}`, '--name', name, '--metrics-port', '0', '--backend', 'wasm', '--log-format', 'json']);
}

/** Trains with one coordinator and two workers to the end and returns the coordinator. */
async function trainUninterrupted(flags: string[], output: string): Promise<CliProcess> {
  const port = await freePort();
  const run = coordinator(port, output, flags);
  const workers = [worker(port, 'reference-1'), worker(port, 'reference-2')];
  try {
    expect(await run.exited, run.output()).toBe(0);
    for (const process of workers) expect(await process.exited, process.output()).toBe(0);
    return run;
  } finally {
    for (const process of [run, ...workers]) process.kill();
  }
}

/** Each case: name, optimizer flags, and whether the newest checkpoint is truncated before the restart. */
const CASES: [string, string[], boolean][] = [
  ['SGD with momentum', ['--optimizer', 'sgd', '--lr', '0.05', '--momentum', '0.9'], false],
  ['Adam, newest checkpoint truncated', ['--optimizer', 'adam', '--lr', '0.001'], true],
];

describe('coordinator restart', () => {
  for (const [name, optimizerFlags, truncateNewest] of CASES) {
    it(`resumes after SIGKILL like an uninterrupted run (${name})`, async () => {
      const referenceOutput = temporaryFolder('restart-reference');
      const reference = await trainUninterrupted(optimizerFlags, referenceOutput);

      const port = await freePort();
      const checkpointDir = temporaryFolder('restart-checkpoints');
      const output = temporaryFolder('restart-output');
      const flags = [...optimizerFlags, '--checkpoint-dir', checkpointDir, '--checkpoint-every-steps', '5'];
      const first = coordinator(port, output, flags);
      const workers = [worker(port, 'worker-1'), worker(port, 'worker-2')];
      let second: CliProcess | undefined;
      try {
        // Killed mid-epoch 1, after a few checkpoints, with no chance to save anything more.
        await first.waitForLine((line) => /"msg":"checkpoint written".*"step":(2\d|[3-9]\d)\b/.test(line));
        first.kill('SIGKILL');
        await first.exited;
        let [newest, previous] = await listCheckpoints(checkpointDir);
        if (truncateNewest) {
          writeFileSync(newest, readFileSync(newest).subarray(0, 1000));
          [newest, previous] = [previous, newest];
        }
        const saved = await readCheckpoint(newest);
        console.log(`${name}: killed after the checkpoint at step ${saved.step} (epoch ${saved.progress.epoch}, position ${saved.progress.position} of ${TRAIN_LIMIT})`);
        expect(saved.step).toBeGreaterThanOrEqual(truncateNewest ? 15 : 20);
        expect(saved.step).toBeLessThan(EPOCHS * STEPS_PER_EPOCH);

        second = coordinator(port, output, [...flags, '--resume']);
        const resumed = await second.waitForLog('resuming from checkpoint');
        expect(resumed.path).toBe(newest);
        if (truncateNewest) {
          const [skipped] = second.logs('checkpoint skipped: it is not valid');
          expect(skipped.level).toBe('warn');
          expect(skipped.path).toBe(previous);
          expect(skipped.reason).toMatch(/^truncated: the body has \d+ bytes, the header says \d+$/);
        }
        expect(resumed.step).toBe(saved.step);
        expect(await second.exited, second.output()).toBe(0);
        for (const process of workers) expect(await process.exited, process.output()).toBe(0);

        // The workers reconnected by themselves after the coordinator vanished.
        for (const process of workers) expect(process.logs('connection to the coordinator lost; reconnecting').length).toBeGreaterThan(0);
        // Every epoch the resumed coordinator reported, including the interrupted one, used every sample once.
        const epochs = second.logs('epoch complete');
        expect(epochs.map((epoch) => epoch.epoch)).toEqual(Array.from({ length: EPOCHS - saved.progress.epoch + 1 }, (_, i) => saved.progress.epoch + i));
        for (const epoch of epochs) expect(epoch.samples).toEqual({ unused: 0, once: TRAIN_LIMIT, repeated: 0 });
        expect(second.logs('training complete; model saved')[0].steps).toBe(reference.logs('training complete; model saved')[0].steps);

        const difference = maxAbsDifference(readSavedWeights(output), readSavedWeights(referenceOutput));
        console.log(`${name}: max abs difference from the uninterrupted run: ${difference}`);
        expect(difference).toBeLessThanOrEqual(1e-4);
      } finally {
        for (const process of [first, second, ...workers]) process?.kill();
      }
    }, 180_000);
  }

  it('starts fresh from an empty folder', async () => {
    const checkpointDir = temporaryFolder('restart-empty');
    const run = coordinator(0, temporaryFolder('restart-empty-output'), ['--checkpoint-dir', checkpointDir, '--resume']);
    try {
      const line = await run.waitForLog('no checkpoint found; starting fresh', 30_000);
      expect(line.level).toBe('info');
      expect(line.checkpointDir).toBe(checkpointDir);
      await run.waitForLog('coordinator listening', 30_000);
    } finally {
      run.kill();
    }
  });

  it('rejects --resume without --checkpoint-dir', async () => {
    const run = new CliProcess(['coordinator', '--resume', '--backend', 'cpu']);
    expect(await run.exited).toBe(2);
    expect(run.stderr.join('\n')).toMatch(/--resume needs --checkpoint-dir: pass --checkpoint-dir DIR/);
  });
});

describe('a finished run', () => {
  const checkpointDir = temporaryFolder('finished-checkpoints');
  const output = temporaryFolder('finished-output');
  const flags = ['--optimizer', 'sgd', '--lr', '0.05', '--checkpoint-dir', checkpointDir, '--epochs', '1'];
  let run: CliProcess;

  beforeAll(async () => {
    const port = await freePort();
    run = coordinator(port, output, flags);
    const workers = [worker(port, 'worker-1'), worker(port, 'worker-2')];
    expect(await run.exited, run.output()).toBe(0);
    for (const process of workers) expect(await process.exited, process.output()).toBe(0);
  }, 120_000);

  it('rejects a resume with other options', async () => {
    const resumed = coordinator(0, output, [...flags, '--resume', '--lr', '0.1', '--batch-size', '64']);
    expect(await resumed.exited).toBe(2);
    const message = resumed.stderr.join('\n');
    expect(message).toContain('--lr was 0.05, now 0.1');
    expect(message).toContain('--batch-size was 32, now 64');
    expect(message).toMatch(/Pass the checkpoint's values to continue that run, or use another --checkpoint-dir/);
  });

  it('rejects two runs in one folder', async () => {
    const fresh = coordinator(0, output, flags);
    expect(await fresh.exited).toBe(2);
    expect(fresh.stderr.join('\n')).toMatch(/already contains checkpoints .*; pass --resume to continue that run, or give an empty folder/);
  });

  it('evaluates a checkpoint as the coordinator did', async () => {
    const [logged] = run.logs('epoch complete');
    const fromCheckpoint = new CliProcess(['evaluate', '--checkpoint', checkpointDir, '--test-limit', '500', '--backend', 'wasm', '--log-format', 'json']);
    expect(await fromCheckpoint.exited, fromCheckpoint.output()).toBe(0);
    const [result] = fromCheckpoint.logs('evaluation complete');
    console.log(`coordinator logged test accuracy ${logged.testAccuracy}, evaluate --checkpoint printed ${result.testAccuracy}`);
    expect(result.step).toBe(STEPS_PER_EPOCH);
    expect(result.testAccuracy).toBe(logged.testAccuracy);
    expect(result.testLoss).toBeCloseTo(logged.testLoss, 5);

    const fromModel = new CliProcess(['evaluate', '--model-dir', output, '--test-limit', '500', '--backend', 'wasm', '--log-format', 'json']);
    expect(await fromModel.exited, fromModel.output()).toBe(0);
    expect(fromModel.logs('evaluation complete')[0].testAccuracy).toBe(logged.testAccuracy);
  });

  it('rejects evaluate with both or neither source', async () => {
    for (const args of [['--checkpoint', checkpointDir, '--model-dir', output], []]) {
      const evaluate = new CliProcess(['evaluate', ...args, '--backend', 'cpu']);
      expect(await evaluate.exited).toBe(2);
      expect(evaluate.stderr.join('\n')).toMatch(/pass exactly one of --model-dir DIR .* or --checkpoint PATH/);
    }
  });
});
