import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const MONITORING = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'deploy', 'monitoring');
const PROMTOOL = '/usr/bin/promtool';

/** Runs promtool in deploy/monitoring and returns its exit status and output. */
function promtool(...args: string[]): { status: number | null; output: string } {
  if (!existsSync(PROMTOOL)) {
    throw new Error(`${PROMTOOL} not found: install it with .ci/run, or apt-get install -y prometheus (the package provides promtool).`);
  }
  const run = spawnSync(PROMTOOL, args, { cwd: MONITORING, encoding: 'utf8' });
  return { status: run.status, output: `${run.stdout}${run.stderr}` };
}

describe('promtool', () => {
  it('accepts prometheus.yml', () => {
    const check = promtool('check', 'config', 'prometheus.yml');
    expect(check.status, check.output).toBe(0);
    expect(check.output).toContain('SUCCESS: 1 rule files found');
  });

  it('accepts alerts.yml', () => {
    const check = promtool('check', 'rules', 'alerts.yml');
    expect(check.status, check.output).toBe(0);
  });

  it('passes the alert unit tests', () => {
    const test = promtool('test', 'rules', 'alerts.test.yml');
    expect(test.status, test.output).toBe(0);
    expect(test.output).toContain('SUCCESS');
  });
});
