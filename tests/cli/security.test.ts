import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { checkListenSecurity, checkWorkerTransport, isLoopbackHost } from '../../shared/security.js';
import { CliProcess, temporaryFolder } from '../helpers/cli.js';

/**
 * Returns the command lines of a process's children from /proc (Linux), as ps would show
 * them to any user.
 */
function childCommandLines(parentPid: number): string[] {
  const lines: string[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      // The parent pid is the second field after the command name, which is in parentheses.
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const parent = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (parent === parentPid) lines.push(readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0').join(' '));
    } catch {
      // The process exited between the listing and the read.
    }
  }
  return lines;
}

describe('loopback hosts', () => {
  const cases: [string, boolean][] = [
    ['127.0.0.1', true],
    ['127.45.6.7', true],
    ['localhost', true],
    ['LOCALHOST', true],
    ['::1', true],
    ['[::1]', true],
    ['0:0:0:0:0:0:0:1', true],
    ['::ffff:127.0.0.1', true],
    ['0.0.0.0', false],
    ['::', false],
    ['10.0.0.5', false],
    ['128.0.0.1', false],
    ['gradfleet-coordinator', false],
    ['localhost.example.com', false],
  ];
  for (const [host, loopback] of cases) {
    it(`${host} is ${loopback ? '' : 'not '}loopback`, () => {
      expect(isLoopbackHost(host)).toBe(loopback);
    });
  }
});

describe('listen rule', () => {
  const secure = { token: 'secret', tlsCert: 'cert.pem', tlsKey: 'key.pem' };

  it('rejects 0.0.0.0 without token and TLS', () => {
    const check = () => checkListenSecurity({ host: '0.0.0.0', insecure: false });
    expect(check).toThrow(/^--host 0\.0\.0\.0 is reachable from other machines/);
    for (const flag of ['--token', '--tls-cert', '--tls-key', '--insecure']) expect(check).toThrow(flag);
  });

  it('rejects a token without TLS', () => {
    expect(() => checkListenSecurity({ host: '10.0.0.5', token: 'secret', insecure: false })).toThrow('(missing: --tls-cert and --tls-key)');
  });

  it('rejects TLS without a token', () => {
    expect(() => checkListenSecurity({ host: '::', tlsCert: 'cert.pem', tlsKey: 'key.pem', insecure: false })).toThrow('(missing: --token)');
  });

  it('accepts 0.0.0.0 with --insecure', () => {
    expect(() => checkListenSecurity({ host: '0.0.0.0', insecure: true })).not.toThrow();
  });

  it('accepts 0.0.0.0 with token and TLS', () => {
    expect(() => checkListenSecurity({ host: '0.0.0.0', ...secure, insecure: false })).not.toThrow();
  });

  it('accepts loopback without either', () => {
    for (const host of ['127.0.0.1', 'localhost', '::1']) expect(() => checkListenSecurity({ host, insecure: false })).not.toThrow();
  });

  it('needs both TLS files', () => {
    expect(() => checkListenSecurity({ host: '127.0.0.1', tlsCert: 'cert.pem', insecure: false })).toThrow('--tls-cert cert.pem needs --tls-key');
    expect(() => checkListenSecurity({ host: '127.0.0.1', tlsKey: 'key.pem', insecure: false })).toThrow('--tls-key key.pem needs --tls-cert');
  });
});

describe('worker transport rule', () => {
  const token = 'secret';

  for (const coordinator of ['ws://10.0.0.5:7070', 'ws://gradfleet-coordinator:7070', 'ws://[2001:db8::1]:7070']) {
    it(`rejects the token over ${coordinator}`, () => {
      const check = () => checkWorkerTransport({ coordinator, token, insecure: false });
      expect(check).toThrow(`--coordinator ${coordinator} would send the token in clear text`);
      expect(check).toThrow('--insecure');
    });

    it(`accepts ${coordinator} with --insecure`, () => {
      expect(() => checkWorkerTransport({ coordinator, token, insecure: true })).not.toThrow();
    });

    it(`accepts ${coordinator} without a token`, () => {
      expect(() => checkWorkerTransport({ coordinator, insecure: false })).not.toThrow();
    });
  }

  for (const coordinator of ['ws://127.0.0.1:7070', 'ws://localhost:7070', 'ws://[::1]:7070', 'wss://10.0.0.5:7070', 'wss://gradfleet-coordinator:7070']) {
    it(`accepts the token over ${coordinator}`, () => {
      expect(() => checkWorkerTransport({ coordinator, token, insecure: false })).not.toThrow();
    });
  }
});

describe('security flags', () => {
  it('coordinator rejects 0.0.0.0 before listening', async () => {
    const run = new CliProcess(['coordinator', '--host', '0.0.0.0', '--port', '0', '--metrics-port', '0', '--backend', 'cpu', '--log-format', 'json', '--train-limit', '100', '--test-limit', '100']);
    expect(await run.exited).toBe(2);
    const stderr = run.stderr.join('\n');
    expect(stderr).toMatch(/--host 0\.0\.0\.0 is reachable from other machines/);
    for (const flag of ['--token', '--tls-cert', '--tls-key', '--insecure']) expect(stderr).toContain(flag);
    expect(run.logs('coordinator listening')).toEqual([]);
  });

  it('coordinator names a missing certificate', async () => {
    const missing = join(temporaryFolder('security'), 'missing.pem');
    const run = new CliProcess(['coordinator', '--tls-cert', missing, '--tls-key', missing, '--port', '0', '--metrics-port', '0', '--backend', 'cpu', '--train-limit', '100', '--test-limit', '100']);
    expect(await run.exited).toBe(2);
    expect(run.stderr.join('\n')).toContain(`cannot read --tls-cert ${missing}: file not found; pass a readable PEM certificate file`);
  });

  it('coordinator rejects an empty token', async () => {
    const run = new CliProcess(['coordinator', '--backend', 'cpu'], { GRADFLEET_TOKEN: '' });
    expect(await run.exited).toBe(2);
    expect(run.stderr.join('\n')).toMatch(/invalid --token: the token is empty/);
  });

  it('worker names a missing --ca', async () => {
    const missing = join(temporaryFolder('security'), 'ca.pem');
    const run = new CliProcess(['worker', '--coordinator', 'wss://127.0.0.1:9', '--ca', missing, '--metrics-port', '0', '--backend', 'cpu']);
    expect(await run.exited).toBe(2);
    expect(run.stderr.join('\n')).toContain(`cannot read --ca ${missing}: file not found`);
  });

  it('launch keeps the token off command lines', async () => {
    const token = 'launch-token-93b1e07f';
    const launch = new CliProcess(
      [
        'launch', '--workers', '1', '--port', '0', '--metrics-port', '0', '--backend', 'cpu', '--model', 'mlp', '--log-format', 'json',
        '--train-limit', '2048', '--test-limit', '100', '--epochs', '2', '--output', temporaryFolder('security-launch'),
      ],
      { GRADFLEET_TOKEN: token },
    );
    try {
      await launch.waitForLog('started');
      const children = childCommandLines(launch.child.pid!);
      expect(children.filter((line) => line.includes(' coordinator '))).toHaveLength(1);
      expect(children.filter((line) => line.includes(' worker '))).toHaveLength(1);
      for (const line of children) expect(line).not.toContain(token);
      // The worker authenticated with the token it got through the environment.
      expect(await launch.exited, launch.output()).toBe(0);
      expect(launch.output()).not.toContain(token);
    } finally {
      launch.kill();
    }
  }, 120_000);
});
