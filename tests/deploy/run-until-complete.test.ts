import { spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { describe, expect, it } from 'vitest';
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
  kill(signal: NodeJS.Signals): void;
}

function runScript(args: string[], env: Record<string, string>): Run {
  const child = spawn('/bin/sh', [SCRIPT, ...args], {
    env: { ...process.env, ...env, PATH: `${fakeGradfleet()}:${process.env.PATH}` },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const lines: string[] = [];
  let markStarted: () => void;
  const started = new Promise<void>((resolve) => (markStarted = resolve));
  createInterface({ input: child.stdout! }).on('line', (line) => {
    lines.push(line);
    if (line.startsWith('started')) markStarted();
  });
  // 'close' comes after the output is read to its end, unlike 'exit'.
  const status = new Promise<number | null>((resolve) => child.once('close', (code) => resolve(code)));
  return { status, lines, started, kill: (signal) => child.kill(signal) };
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
