import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { readCaCertificate, readTlsCredentials } from '../../shared/security.js';
import { CliProcess, temporaryFolder } from '../helpers/cli.js';

const TOKEN = 'tls-test-token-0a6f3c9d';

/** Writes a self-signed P-256 certificate for 127.0.0.1 and localhost with openssl; returns the file paths. */
function makeCertificate(folder: string, name: string): { cert: string; key: string } {
  const cert = join(folder, `${name}-cert.pem`);
  const key = join(folder, `${name}-key.pem`);
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
    '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost', '-keyout', key, '-out', cert,
  ], { stdio: 'ignore' });
  return { cert, key };
}

describe('TLS files', () => {
  let folder: string;
  let first: { cert: string; key: string };
  let second: { cert: string; key: string };

  beforeAll(() => {
    folder = temporaryFolder('tls-files');
    first = makeCertificate(folder, 'first');
    second = makeCertificate(folder, 'second');
  });

  it('reads a matching pair', () => {
    const credentials = readTlsCredentials(first.cert, first.key);
    expect(credentials.cert.toString()).toContain('-----BEGIN CERTIFICATE-----');
    expect(credentials.key.toString()).toContain('PRIVATE KEY-----');
  });

  it('names a missing file', () => {
    const missing = join(folder, 'missing.pem');
    expect(() => readTlsCredentials(missing, first.key)).toThrow(`cannot read --tls-cert ${missing}: file not found; pass a readable PEM certificate file`);
    expect(() => readCaCertificate(missing)).toThrow(`cannot read --ca ${missing}: file not found`);
  });

  it('names a file that is not PEM', () => {
    const text = join(folder, 'not-pem.txt');
    writeFileSync(text, 'not a certificate\n');
    expect(() => readTlsCredentials(first.cert, text)).toThrow(`invalid --tls-key ${text}: not a PEM file`);
  });

  it('rejects a private key as --ca', () => {
    expect(() => readCaCertificate(first.key)).toThrow(/^invalid --ca .*first-key\.pem: .*pass the PEM certificate of the CA/);
  });

  it('rejects a key of another certificate', () => {
    expect(() => readTlsCredentials(first.cert, second.key)).toThrow(/^invalid TLS files --tls-cert .*first-cert\.pem and --tls-key .*second-key\.pem: .*key values mismatch/);
  });
});

describe('coordinator over TLS', () => {
  let certificate: { cert: string; key: string };
  let coordinator: CliProcess;
  let url: string;
  let metricsUrl: string;

  beforeAll(async () => {
    certificate = makeCertificate(temporaryFolder('tls'), 'coordinator');
    coordinator = new CliProcess(
      [
        'coordinator', '--workers', '1', '--port', '0', '--metrics-port', '0', '--backend', 'cpu', '--model', 'mlp', '--log-format', 'json',
        '--train-limit', '256', '--test-limit', '100', '--epochs', '1', '--tls-cert', certificate.cert, '--tls-key', certificate.key,
        '--output', temporaryFolder('tls-output'),
      ],
      { GRADFLEET_TOKEN: TOKEN },
    );
    const listening = await coordinator.waitForLog('coordinator listening');
    url = listening.url;
    metricsUrl = listening.metrics;
  });

  afterAll(() => {
    coordinator.kill();
  });

  it('logs a wss:// URL', () => {
    expect(url).toMatch(/^wss:\/\/127\.0\.0\.1:\d+$/);
  });

  it('serves /metrics over plain HTTP', async () => {
    // Prometheus scrapes it without TLS settings.
    expect(metricsUrl).toMatch(/^http:\/\//);
    const response = await fetch(metricsUrl);
    expect(response.status).toBe(200);
    expect(await response.text()).toContain('gradfleet_rejected_connections_total');
  });

  it('fails a plain ws:// client', async () => {
    const socket = new WebSocket(url.replace('wss://', 'ws://'));
    const outcome = await new Promise<string>((resolve) => {
      socket.once('open', () => resolve('open'));
      socket.once('error', (error) => resolve(`error: ${error.message}`));
    });
    socket.terminate();
    expect(outcome).toMatch(/^error: /);
  });

  it('suggests wss:// for a ws:// URL', async () => {
    const plain = url.replace('wss://', 'ws://');
    const worker = new CliProcess(['worker', '--coordinator', plain, '--connect-timeout-ms', '1000', '--metrics-port', '0', '--backend', 'cpu', '--log-format', 'json'], {
      GRADFLEET_TOKEN: TOKEN,
    });
    expect(await worker.exited, worker.output()).toBe(1);
    expect(worker.stderr.join('\n')).toMatch(/cannot reach the coordinator at ws:\/\/.*; if the coordinator serves TLS \(--tls-cert\), use a wss:\/\/ URL/);
  });

  it('stops a worker without --ca', async () => {
    const worker = new CliProcess(['worker', '--coordinator', url, '--name', 'untrusting', '--metrics-port', '0', '--backend', 'cpu', '--log-format', 'json'], {
      GRADFLEET_TOKEN: TOKEN,
    });
    expect(await worker.exited, worker.output()).toBe(1);
    expect(worker.stderr.join('\n')).toMatch(
      /cannot verify the TLS certificate of the coordinator at wss:\/\/127\.0\.0\.1:\d+: self[- ]signed certificate \(DEPTH_ZERO_SELF_SIGNED_CERT\); pass --ca/,
    );
    // One attempt, no retry loop.
    expect(worker.output()).not.toMatch(/waiting for the coordinator|reconnecting/);
  });

  it('trains a worker with --ca', async () => {
    const worker = new CliProcess(
      ['worker', '--coordinator', url, '--ca', certificate.cert, '--name', 'trusting', '--metrics-port', '0', '--backend', 'cpu', '--log-format', 'json'],
      { GRADFLEET_TOKEN: TOKEN },
    );
    expect(await worker.exited, worker.output()).toBe(0);
    expect(await coordinator.exited, coordinator.output()).toBe(0);
    const [epoch] = coordinator.logs('epoch complete');
    expect(epoch.samples).toEqual({ unused: 0, once: 256, repeated: 0 });
    expect(coordinator.logs('worker admitted').map((entry) => entry.worker)).toEqual(['trusting']);
  });
});
