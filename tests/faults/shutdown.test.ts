import { describe, expect, it } from 'vitest';
import { listCheckpoints, readCheckpoint } from '../../coordinator/checkpoint.js';
import { CliProcess, temporaryFolder } from '../helpers/cli.js';
import { freePort, mergeFlags } from '../helpers/runs.js';

/**
 * Graceful stops: SIGTERM makes a coordinator finish its step, write a checkpoint and
 * send its workers away to reconnect later, and makes a worker leave without being
 * counted as a failure.
 */

const TRAIN_LIMIT = 6000;

/** Starts a coordinator with this file's training options, where `flags` may replace any of them. */
function coordinator(port: number, flags: string[]): CliProcess {
  const defaults: [string, string | undefined][] = [
    ['--workers', '2'], ['--port', String(port)], ['--metrics-port', '0'], ['--backend', 'wasm'], ['--log-format', 'json'],
    ['--model', 'mlp'], ['--optimizer', 'sgd'], ['--lr', '0.05'], ['--train-limit', String(TRAIN_LIMIT)], ['--test-limit', '500'],
    ['--batch-size', '32'], ['--epochs', '2'], ['--log-every-steps', '1'], ['--output', temporaryFolder('shutdown-output')],
  ];
  return new CliProcess(['coordinator', ...mergeFlags(defaults, flags)]);
}

function worker(port: number, name: string): CliProcess {
  return new CliProcess(['worker', '--coordinator', `ws://127.0.0.1:${port}`, '--name', name, '--metrics-port', '0', '--backend', 'wasm', '--log-format', 'json']);
}

/** Resolves once the coordinator has logged progress at `step` or later. */
function afterStep(process: CliProcess, step: number): Promise<string> {
  return process.waitForLine((line) => {
    const match = /"msg":"progress".*"step":(\d+)/.exec(line);
    return match !== null && Number(match[1]) >= step;
  });
}

describe('graceful shutdown', () => {
  it('SIGTERM pauses the coordinator until --resume', async () => {
    const port = await freePort();
    const checkpointDir = temporaryFolder('shutdown-checkpoints');
    const first = coordinator(port, ['--checkpoint-dir', checkpointDir]);
    const workers = [worker(port, 'worker-1'), worker(port, 'worker-2')];
    let second: CliProcess | undefined;
    try {
      await afterStep(first, 30);
      const signalledAt = Date.now();
      first.kill('SIGTERM');
      expect(await first.exited, first.output()).toBe(0);
      const stopMs = Date.now() - signalledAt;
      console.log(`coordinator exited ${stopMs} ms after SIGTERM`);
      expect(stopMs).toBeLessThan(10_000);

      // The checkpoint contains the last step the coordinator applied and logged.
      const lastStep = Math.max(...first.logs('progress').map((entry) => entry.step as number));
      const [newest] = await listCheckpoints(checkpointDir);
      const saved = await readCheckpoint(newest);
      expect(saved.step).toBe(lastStep);
      expect(first.logs('checkpoint written').at(-1)).toMatchObject({ reason: 'stop', step: lastStep, path: newest });

      // The workers take the stop as a pause and keep trying to reconnect.
      for (const process of workers) {
        const paused = await process.waitForLog('coordinator is pausing; reconnecting');
        expect(paused.level).toBe('info');
        expect(paused.code).toBe(4100);
        await process.waitForLog('waiting for the coordinator');
        expect(process.child.exitCode).toBeNull();
      }

      second = coordinator(port, ['--checkpoint-dir', checkpointDir, '--resume']);
      expect((await second.waitForLog('resuming from checkpoint')).step).toBe(lastStep);
      expect(await second.exited, second.output()).toBe(0);
      for (const process of workers) expect(await process.exited, process.output()).toBe(0);
      for (const epoch of second.logs('epoch complete')) expect(epoch.samples).toEqual({ unused: 0, once: TRAIN_LIMIT, repeated: 0 });
      expect(second.logs('training complete; model saved')[0].steps).toBe(2 * Math.ceil(TRAIN_LIMIT / 32));
    } finally {
      for (const process of [first, second, ...workers]) process?.kill();
    }
  }, 120_000);

  it('SIGTERM makes a worker leave', async () => {
    const port = await freePort();
    const run = coordinator(port, ['--epochs', '1']);
    const [staying, leaving] = [worker(port, 'staying'), worker(port, 'leaving')];
    try {
      await afterStep(run, 20);
      leaving.kill('SIGTERM');
      expect(await leaving.exited, leaving.output()).toBe(0);
      const left = await run.waitForLog('worker left');
      expect(left.level).toBe('info');
      expect(left.worker).toBe('leaving');
      expect(left.code).toBe(4005);
      expect(run.logs('worker disconnected')).toEqual([]);

      // The other worker finishes the epoch alone, and no sample is lost or repeated.
      expect(await run.exited, run.output()).toBe(0);
      expect(await staying.exited, staying.output()).toBe(0);
      expect(run.logs('epoch complete')[0].samples).toEqual({ unused: 0, once: TRAIN_LIMIT, repeated: 0 });
    } finally {
      for (const process of [run, staying, leaving]) process.kill();
    }
  }, 120_000);

  it('abandons a step that cannot finish', async () => {
    const port = await freePort();
    const checkpointDir = temporaryFolder('shutdown-stuck');
    // A long heartbeat keeps the stopped worker in the step, so that only the stop grace period ends it.
    const run = coordinator(port, ['--checkpoint-dir', checkpointDir, '--workers', '1', '--heartbeat-ms', '60000']);
    const stuck = worker(port, 'stuck');
    try {
      await afterStep(run, 10);
      stuck.child.kill('SIGSTOP');
      const signalledAt = Date.now();
      run.kill('SIGTERM');
      expect(await run.exited, run.output()).toBe(0);
      const stopMs = Date.now() - signalledAt;
      console.log(`coordinator with a stuck step exited ${stopMs} ms after SIGTERM`);
      expect(stopMs).toBeLessThan(10_000);
      expect(run.logs('step abandoned without being applied: stopping')[0].reason).toMatch(/did not finish within 8000 ms/);
      const lastStep = Math.max(...run.logs('progress').map((entry) => entry.step as number));
      expect((await readCheckpoint((await listCheckpoints(checkpointDir))[0])).step).toBe(lastStep);
    } finally {
      stuck.child.kill('SIGCONT');
      stuck.kill();
      run.kill();
    }
  }, 60_000);

  it('exits at once on a second signal', async () => {
    const port = await freePort();
    const run = coordinator(port, ['--workers', '1', '--heartbeat-ms', '60000']);
    const stuck = worker(port, 'stuck');
    try {
      await afterStep(run, 10);
      stuck.child.kill('SIGSTOP');
      run.kill('SIGTERM');
      await run.waitForLog('stopping at the next step boundary');
      const signalledAt = Date.now();
      run.kill('SIGTERM');
      expect(await run.exited, run.output()).toBe(143);
      // Well before the 8 s the first signal gives the stuck step.
      expect(Date.now() - signalledAt).toBeLessThan(5_000);
      expect(run.logs('second signal: exiting at once')).toHaveLength(1);
    } finally {
      stuck.child.kill('SIGCONT');
      stuck.kill();
      run.kill();
    }
  }, 60_000);

  it('warns that nothing is saved without --checkpoint-dir', async () => {
    const run = coordinator(0, ['--workers', '1']);
    try {
      await run.waitForLog('coordinator listening');
      run.kill('SIGTERM');
      expect(await run.exited, run.output()).toBe(0);
      const [warning] = run.logs('stopped without --checkpoint-dir: the progress of this run is not saved');
      expect(warning.level).toBe('warn');
      expect(warning.step).toBe(0);
    } finally {
      run.kill();
    }
  });
});
