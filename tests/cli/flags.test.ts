import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CliProcess, temporaryFolder } from '../helpers/cli.js';

/** Starts a coordinator on free ports and returns its start-up log line, then stops it. */
async function startupLine(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Record<string, any>> {
  const coordinator = new CliProcess(['coordinator', '--port', '0', '--metrics-port', '0', '--log-format', 'json', '--backend', 'cpu', '--train-limit', '100', '--test-limit', '100', ...args], env);
  try {
    return await coordinator.waitForLog('coordinator listening', 30_000);
  } finally {
    coordinator.kill();
  }
}

describe('coordinator flags', () => {
  const rejected: [string, string[], RegExp][] = [
    ['--workers abc', ['--workers', 'abc'], /invalid --workers "abc": expected a whole number of at least 1/],
    ['--workers 0', ['--workers', '0'], /invalid --workers 0: expected a whole number of at least 1/],
    ['--workers 2.5', ['--workers', '2.5'], /invalid --workers 2.5: expected a whole number of at least 1/],
    ['--lr -1', ['--lr', '-1'], /invalid --lr -1: expected a number greater than 0/],
    ['--port 70000', ['--port', '70000'], /invalid --port 70000/],
    ['--momentum 1', ['--optimizer', 'sgd', '--momentum', '1'], /invalid --momentum 1: expected a number from 0 up to, but not including, 1/],
    ['--workers without a value', ['--workers'], /Not enough arguments following: workers/],
    ['--model resnet', ['--model', 'resnet'], /Invalid values:[\s\S]*model/],
    ['unknown flag', ['--epoch', '3'], /Unknown argument: epoch/],
  ];
  for (const [name, args, message] of rejected) {
    it(`rejects ${name}`, async () => {
      const run = new CliProcess(['coordinator', ...args]);
      expect(await run.exited).toBe(2);
      expect(run.stderr.join('\n')).toMatch(message);
    });
  }

  it('rejects both batch sizes', async () => {
    const run = new CliProcess(['coordinator', '--batch-size', '64', '--batch-size-per-worker', '32', '--backend', 'cpu']);
    expect(await run.exited).toBe(2);
    expect(run.stderr.join('\n')).toMatch(/--batch-size 64 and --batch-size-per-worker 32 were both given/);
  });

  it('rejects momentum with Adam', async () => {
    const run = new CliProcess(['coordinator', '--momentum', '0.9', '--backend', 'cpu']);
    expect(await run.exited).toBe(2);
    expect(run.stderr.join('\n')).toMatch(/--momentum 0.9 applies only to --optimizer sgd/);
  });

  it('reads --lr 1e-3 as 0.001', async () => {
    const line = await startupLine(['--lr', '1e-3']);
    expect(line.lr).toBe(0.001);
  });

  it('reads options from the environment', async () => {
    const line = await startupLine([], { GRADFLEET_EPOCHS: '3', GRADFLEET_LR: '0.01' });
    expect(line.epochs).toBe(3);
    expect(line.lr).toBe(0.01);
  });

  it('reads options from a config file', async () => {
    const config = join(temporaryFolder('config'), 'gradfleet.json');
    writeFileSync(config, JSON.stringify({ epochs: 4, optimizer: 'sgd', 'batch-size': 32 }));
    const line = await startupLine(['--config', config]);
    expect(line.epochs).toBe(4);
    expect(line.optimizer).toBe('sgd');
    expect(line.batch).toBe(32);
  });

  it('rejects a bad config value', async () => {
    const config = join(temporaryFolder('config'), 'gradfleet.json');
    writeFileSync(config, JSON.stringify({ workers: 'two' }));
    const run = new CliProcess(['coordinator', '--config', config]);
    expect(await run.exited).toBe(2);
    expect(run.stderr.join('\n')).toMatch(/invalid --workers "two"/);
  });
});

describe('shared option sources', () => {
  it('worker ignores coordinator variables', async () => {
    const run = new CliProcess(['worker', '--coordinator', 'ws://127.0.0.1:9', '--connect-timeout-ms', '200', '--metrics-port', '0', '--backend', 'cpu'], {
      GRADFLEET_EPOCHS: '3',
      GRADFLEET_BATCH_SIZE: '32',
    });
    expect(await run.exited).toBe(1);
    expect(run.stderr.join('\n')).toMatch(/cannot reach the coordinator/);
  });

  it('rejects a misspelt variable', async () => {
    const run = new CliProcess(['coordinator'], { GRADFLEET_EPOCS: '3' });
    expect(await run.exited).toBe(2);
    expect(run.stderr.join('\n')).toMatch(/unknown environment variable GRADFLEET_EPOCS: no gradfleet option is named --epocs/);
  });

  it('worker reads a shared config file', async () => {
    const config = join(temporaryFolder('config'), 'shared.json');
    writeFileSync(config, JSON.stringify({ epochs: 2, 'batch-size': 32, coordinator: 'ws://127.0.0.1:9', connectTimeoutMs: 200 }));
    const run = new CliProcess(['worker', '--config', config, '--metrics-port', '0', '--backend', 'cpu']);
    expect(await run.exited).toBe(1);
    expect(run.stderr.join('\n')).toMatch(/cannot reach the coordinator at ws:\/\/127.0.0.1:9/);
  });

  it('names a missing config file', async () => {
    const run = new CliProcess(['coordinator', '--config', '/nonexistent/gradfleet.json']);
    expect(await run.exited).toBe(2);
    expect(run.stderr.join('\n')).toMatch(/cannot read config file \/nonexistent\/gradfleet.json: file not found/);
  });

  it('names an unknown config key', async () => {
    const config = join(temporaryFolder('config'), 'typo.json');
    writeFileSync(config, JSON.stringify({ epoch: 1 }));
    const run = new CliProcess(['coordinator', '--config', config]);
    expect(await run.exited).toBe(2);
    expect(run.stderr.join('\n')).toMatch(/unknown option "epoch" in config file/);
  });
});

describe('help', () => {
  for (const command of ['coordinator', 'worker', 'launch', 'evaluate']) {
    it(`lists ${command} options`, async () => {
      const run = new CliProcess([command, '--help']);
      expect(await run.exited).toBe(0);
      const help = run.lines.join('\n');
      expect(help).toMatch(/--backend/);
      expect(help).toMatch(/--config/);
    });
  }

  it('shows units and defaults', async () => {
    const run = new CliProcess(['coordinator', '--help']);
    await run.exited;
    const help = run.lines.join('\n');
    expect(help).toMatch(/--batch-size\s+Global batch per step in images[^\n]*\[default: 64\]/);
    expect(help).toMatch(/--lr\s+Learning rate[^[]*\[default: 0.001\]/);
  });
});

describe('worker flags', () => {
  it('rejects a URL without ws://', async () => {
    const run = new CliProcess(['worker', '--coordinator', 'localhost:7070']);
    expect(await run.exited).toBe(2);
    expect(run.stderr.join('\n')).toMatch(/invalid --coordinator "localhost:7070": expected a WebSocket URL/);
  });

  it('gives up on an unreachable coordinator', async () => {
    const run = new CliProcess(['worker', '--coordinator', 'ws://127.0.0.1:9', '--connect-timeout-ms', '1500', '--metrics-port', '0', '--backend', 'cpu']);
    expect(await run.exited).toBe(1);
    expect(run.stderr.join('\n')).toMatch(/cannot reach the coordinator at ws:\/\/127.0.0.1:9/);
  });
});
