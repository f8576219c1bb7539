import { spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { describe, expect, it } from 'vitest';
import { CLI, CliProcess, temporaryFolder } from '../helpers/cli.js';
import { freePort } from '../helpers/runs.js';
import { DEPLOY } from './files.js';

/**
 * The Kubernetes Jobs run gradfleet through deploy/k8s/base/run-until-complete.sh. These
 * tests run the script with /bin/sh (dash on Debian, as in the node image). A stand-in
 * `gradfleet` on PATH handles SIGTERM like the real one: it takes a moment, as the
 * coordinator does to write its checkpoint, and then exits with 0.
 */

const SCRIPT = join(DEPLOY, 'k8s', 'base', 'run-until-complete.sh');

function fakeGradfleet(): string {
  const folder = mkdtempSync(join(tmpdir(), 'gradfleet-run-'));
  const program = join(folder, 'gradfleet');
  writeFileSync(
    program,
    `#!${process.execPath}
process.on('SIGTERM', () => {
  console.log('stopping');
  setTimeout(() => { console.log('stopped'); process.exit(0); }, 300);
});
console.log('started ' + process.argv.slice(2).join(' '));
setTimeout(() => process.exit(Number(process.env.FAKE_STATUS)), Number(process.env.FAKE_RUN_MS));
`,
  );
  chmodSync(program, 0o755);
  return folder;
}

interface Run {
  status: Promise<number | null>;
  lines: string[];
  started: Promise<void>;
  /** Resolves when an output line matches `pattern`. */
  waitFor(pattern: RegExp): Promise<void>;
  kill(signal: NodeJS.Signals): void;
}

/** Returns a folder with a `gradfleet` that runs the built CLI, as the image's `gradfleet` does. */
function realGradfleet(): string {
  const folder = temporaryFolder('run-bin');
  writeFileSync(join(folder, 'gradfleet'), `#!/bin/sh\nexec "${process.execPath}" "${CLI}" "$@"\n`);
  chmodSync(join(folder, 'gradfleet'), 0o755);
  return folder;
}

/** Runs the script with the `gradfleet` of folder `bin` (the stand-in by default) first on PATH. */
function runScript(args: string[], env: Record<string, string>, bin = fakeGradfleet()): Run {
  const child = spawn('/bin/sh', [SCRIPT, ...args], {
    env: { ...process.env, ...env, PATH: `${bin}:${process.env.PATH}` },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const lines: string[] = [];
  const waiters: { pattern: RegExp; resolve: () => void }[] = [];
  let markStarted: () => void;
  const started = new Promise<void>((resolve) => (markStarted = resolve));
  createInterface({ input: child.stdout! }).on('line', (line) => {
    lines.push(line);
    if (line.startsWith('started')) markStarted();
    for (const waiter of waiters) if (waiter.pattern.test(line)) waiter.resolve();
  });
  const waitFor = (pattern: RegExp) => new Promise<void>((resolve) => waiters.push({ pattern, resolve }));
  // 'close' comes after the output is read to its end, unlike 'exit'.
  const status = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  return { status, lines, started, waitFor, kill: (signal) => child.kill(signal) };
}

describe('run-until-complete.sh', () => {
  for (const expected of [0, 1, 2]) {
    it(`passes exit status ${expected} through`, async () => {
      const run = runScript(['worker', '--ca=/etc/gradfleet/tls/tls.crt'], { FAKE_STATUS: String(expected), FAKE_RUN_MS: '50' });
      expect(await run.status).toBe(expected);
      expect(run.lines[0]).toBe('started worker --ca=/etc/gradfleet/tls/tls.crt');
    });
  }

  it('turns a graceful stop into 143', async () => {
    const run = runScript(['coordinator'], { FAKE_STATUS: '0', FAKE_RUN_MS: '30000' });
    await run.started;
    run.kill('SIGTERM');
    expect(await run.status).toBe(143);
    // The script waited for gradfleet to finish its stop before exiting.
    expect(run.lines).toEqual(['started coordinator', 'stopping', 'stopped']);
  });
});

describe('run-until-complete.sh with gradfleet', () => {
  it('checkpoints on SIGTERM, then resumes', async () => {
    const port = await freePort();
    const checkpoints = temporaryFolder('run-checkpoints');
    const output = temporaryFolder('run-model');
    // The coordinator's flags of k8s/base, on a small run: 2000 images in 63 steps of 32.
    const args = [
      'coordinator', '--workers=1', `--port=${port}`, '--metrics-port=0', '--backend=wasm', '--log-format=json',
      '--model=mlp', '--train-limit=2000', '--test-limit=200', '--batch-size=32', '--epochs=1',
      `--checkpoint-dir=${checkpoints}`, '--checkpoint-every-steps=5', '--resume', `--output=${output}`,
    ];
    const bin = realGradfleet();
    const worker = new CliProcess(['worker', '--coordinator', `ws://127.0.0.1:${port}`, '--metrics-port', '0', '--backend', 'wasm', '--log-format', 'json']);
    try {
      const first = runScript(args, {}, bin);
      await first.waitFor(/"msg":"checkpoint written".*"step":(1\d|[2-5]\d)\b/);
      first.kill('SIGTERM');
      expect(await first.status, first.lines.join('\n')).toBe(143);
      const messages = first.lines.map((line) => (line.startsWith('{') ? JSON.parse(line).msg : line));
      const stopping = messages.findIndex((message) => message.startsWith('stopping'));
      expect(stopping, 'gradfleet received the SIGTERM').toBeGreaterThan(0);
      expect(messages.slice(stopping), 'gradfleet stopped gracefully, with a checkpoint').toEqual(expect.arrayContaining(['checkpoint written', 'coordinator stopped']));
      expect(existsSync(join(output, 'model.json')), 'a model after a stop').toBe(false);

      // As a new pod of the Job would: the same command on the same volume.
      const second = runScript(args, {}, bin);
      expect(await second.status, second.lines.join('\n')).toBe(0);
      expect(second.lines.some((line) => line.includes('"msg":"resuming from checkpoint"'))).toBe(true);
      expect(existsSync(join(output, 'model.json'))).toBe(true);
      expect(await worker.exited, worker.output()).toBe(0);
    } finally {
      worker.kill();
    }
  });
});
