import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket, type RawData } from 'ws';
import { Coordinator } from '../../coordinator/coordinator.js';
import { MAX_HELLO_BYTES } from '../../coordinator/server.js';
import { selectBackend } from '../../shared/backend.js';
import { decodeCoordinatorMessage, encodeMessage } from '../../shared/codec.js';
import { loadDataset } from '../../shared/data/dataset.js';
import { Logger } from '../../shared/log.js';
import { COORDINATOR_DEFAULTS } from '../../shared/options.js';
import { PROTOCOL_VERSION, type CoordinatorMessage, type HelloMessage } from '../../shared/protocol.js';
import { tokensMatch } from '../../shared/security.js';
import { GRADFLEET_VERSION } from '../../shared/version.js';
import { CliProcess, temporaryFolder } from '../helpers/cli.js';

const RIGHT_TOKEN = 'right-token-4f9c2a7e1b';
const WRONG_TOKEN = 'wrong-token-8d3e6b0c55';

describe('token comparison', () => {
  it('accepts the same token', () => {
    expect(tokensMatch(RIGHT_TOKEN, RIGHT_TOKEN)).toBe(true);
  });

  it('rejects another token of equal length', () => {
    expect(RIGHT_TOKEN.length).toBe(WRONG_TOKEN.length);
    expect(tokensMatch(RIGHT_TOKEN, WRONG_TOKEN)).toBe(false);
  });

  it('rejects tokens of other lengths', () => {
    expect(tokensMatch(RIGHT_TOKEN, `${RIGHT_TOKEN}x`)).toBe(false);
    expect(tokensMatch(RIGHT_TOKEN, RIGHT_TOKEN.slice(0, -1))).toBe(false);
    expect(tokensMatch(RIGHT_TOKEN, '')).toBe(false);
  });

  it('rejects a missing token', () => {
    expect(tokensMatch(RIGHT_TOKEN, undefined)).toBe(false);
  });
});

/** What a hand-written client saw before its connection closed. */
interface ClientResult {
  messages: CoordinatorMessage[];
  code: number;
  reason: string;
}

/** Connects to `url`, sends `frames` once open, and resolves when the connection closes. */
function runClient(url: string, frames: Buffer[]): Promise<ClientResult> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url);
    const messages: CoordinatorMessage[] = [];
    socket.on('open', () => frames.forEach((frame) => socket.send(frame)));
    socket.on('message', (data: RawData) => messages.push(decodeCoordinatorMessage(data as Buffer)));
    socket.on('close', (code, reason) => resolve({ messages, code, reason: reason.toString() }));
    socket.on('error', (error) => {
      // A connection the server terminates ends with close code 1006 after this error.
      if (socket.readyState !== WebSocket.CLOSING && socket.readyState !== WebSocket.CLOSED) reject(error);
    });
  });
}

function hello(fields: Partial<HelloMessage> = {}): Buffer {
  return encodeMessage({ type: 'hello', protocolVersion: PROTOCOL_VERSION, workerName: 'hand-written', backend: 'cpu', gradfleetVersion: GRADFLEET_VERSION, ...fields });
}

describe('coordinator with a token', () => {
  const HEARTBEAT_MS = 250;
  const logLines: string[] = [];
  let coordinator: Coordinator;
  let url: string;

  beforeAll(async () => {
    await selectBackend('cpu');
    const dataset = await loadDataset({ trainLimit: 100, testLimit: 100 });
    const log = new Logger({ format: 'json', level: 'debug', name: 'coordinator', write: (line) => logLines.push(line) });
    coordinator = new Coordinator(
      { ...COORDINATOR_DEFAULTS, model: 'mlp', port: 0, metricsPort: 0, heartbeatMs: HEARTBEAT_MS, token: RIGHT_TOKEN, output: temporaryFolder('auth') },
      log,
      dataset,
    );
    await coordinator.start();
    url = `ws://127.0.0.1:${coordinator.port}`;
  });

  afterAll(async () => {
    await coordinator.close();
  });

  it('closes a wrong token with 4006', async () => {
    const result = await runClient(url, [hello({ token: WRONG_TOKEN })]);
    expect(result.code).toBe(4006);
    expect(result.reason).toMatch(/^wrong token: set GRADFLEET_TOKEN/);
    expect(result.messages.map((message) => message.type)).toEqual(['error']);
    expect(result.messages[0]).toMatchObject({ type: 'error', code: 'UNAUTHORIZED' });
  });

  it('closes a missing token with 4006', async () => {
    const result = await runClient(url, [hello()]);
    expect(result.code).toBe(4006);
    expect(result.reason).toMatch(/^missing token/);
    expect(result.messages.map((message) => message.type)).toEqual(['error']);
  });

  it('welcomes the right token', async () => {
    const socket = new WebSocket(url);
    await new Promise((resolve) => socket.once('open', resolve));
    socket.send(hello({ token: RIGHT_TOKEN }));
    const first = await new Promise<CoordinatorMessage>((resolve) => socket.once('message', (data: RawData) => resolve(decodeCoordinatorMessage(data as Buffer))));
    socket.terminate();
    expect(first.type).toBe('welcome');
  });

  it('closes a silent connection after the deadline', async () => {
    const result = await runClient(url, []);
    expect(result.code).toBe(1008);
    expect(result.reason).toBe(`no hello within ${2 * HEARTBEAT_MS} ms`);
    expect(result.messages).toEqual([]);
  });

  it('rejects a message before hello', async () => {
    const result = await runClient(url, [encodeMessage({ type: 'ready', selfCheckMs: 1 })]);
    expect(result.code).toBe(4002);
    expect(result.messages[0]).toMatchObject({ type: 'error', code: 'UNEXPECTED_MESSAGE' });
  });

  it('closes a large first frame with 1009', async () => {
    // Far below the coordinator's message limit, but over what may come before a hello.
    const result = await runClient(url, [Buffer.alloc(4 * MAX_HELLO_BYTES)]);
    expect(result.code).toBe(1009);
    expect(result.messages).toEqual([]);
  });

  it('counts and logs rejections without tokens', async () => {
    const metrics = await coordinator.metrics.registry.getSingleMetricAsString('gradfleet_rejected_connections_total');
    expect(metrics).toContain('gradfleet_rejected_connections_total{reason="unauthorized"} 2');
    expect(metrics).toContain('gradfleet_rejected_connections_total{reason="hello_timeout"} 1');
    expect(metrics).toContain('gradfleet_rejected_connections_total{reason="hello_too_big"} 1');

    const rejected = logLines.map((line) => JSON.parse(line)).filter((entry) => entry.msg === 'connection rejected');
    expect(rejected.map((entry) => entry.reason).sort()).toEqual(['hello_timeout', 'hello_too_big', 'unauthorized', 'unauthorized']);
    for (const entry of rejected) expect(entry.remote).toMatch(/^127\.0\.0\.1:\d+$/);
    expect(rejected.filter((entry) => entry.reason === 'unauthorized').map((entry) => entry.worker)).toEqual(['hand-written', 'hand-written']);

    const output = logLines.join('\n');
    expect(output).not.toContain(WRONG_TOKEN);
    expect(output).not.toContain(RIGHT_TOKEN);
  });
});

describe('workers and tokens', () => {
  it('trains with the right token only', async () => {
    const coordinator = new CliProcess(
      [
        'coordinator', '--workers', '2', '--port', '0', '--metrics-port', '0', '--backend', 'cpu', '--model', 'mlp', '--log-format', 'json',
        '--log-level', 'debug', '--train-limit', '256', '--test-limit', '100', '--epochs', '1', '--output', temporaryFolder('auth-workers'),
      ],
      { GRADFLEET_TOKEN: RIGHT_TOKEN },
    );
    const workers: CliProcess[] = [];
    const startWorker = (name: string, token?: string): CliProcess => {
      const worker = new CliProcess(
        ['worker', '--coordinator', url, '--name', name, '--metrics-port', '0', '--backend', 'cpu', '--log-format', 'json'],
        token === undefined ? {} : { GRADFLEET_TOKEN: token },
      );
      workers.push(worker);
      return worker;
    };
    let url = '';
    try {
      const listening = await coordinator.waitForLog('coordinator listening');
      url = listening.url;

      // Rejected workers exit at once with the reason, instead of reconnecting.
      const wrong = startWorker('wrong', WRONG_TOKEN);
      const none = startWorker('none');
      expect(await wrong.exited, wrong.output()).toBe(1);
      expect(await none.exited, none.output()).toBe(1);
      expect(wrong.stderr.join('\n')).toMatch(/closed the connection for good \(code 4006: wrong token: set GRADFLEET_TOKEN/);
      expect(none.stderr.join('\n')).toMatch(/closed the connection for good \(code 4006: missing token: set GRADFLEET_TOKEN/);
      for (const worker of [wrong, none]) expect(worker.output()).not.toMatch(/reconnecting|waiting for the coordinator/);

      const metrics = await (await fetch(listening.metrics)).text();
      expect(metrics).toContain('gradfleet_rejected_connections_total{reason="unauthorized"} 2');

      const good = [startWorker('good-1', RIGHT_TOKEN), startWorker('good-2', RIGHT_TOKEN)];
      for (const worker of good) expect(await worker.exited, worker.output()).toBe(0);
      expect(await coordinator.exited, coordinator.output()).toBe(0);

      const rejected = coordinator.logs('connection rejected');
      expect(rejected.map((entry) => `${entry.worker}:${entry.reason}`).sort()).toEqual(['none:unauthorized', 'wrong:unauthorized']);
      // Each rejection is one warning, not also a nameless "worker disconnected".
      expect(coordinator.logs('worker disconnected')).toEqual([]);
      const [epoch] = coordinator.logs('epoch complete');
      expect(epoch.samples).toEqual({ unused: 0, once: 256, repeated: 0 });
      expect(coordinator.logs('worker admitted').map((entry) => entry.worker).sort()).toEqual(['good-1', 'good-2']);

      const output = [coordinator, ...workers].map((process) => process.output()).join('\n');
      expect(output).not.toContain(WRONG_TOKEN);
      expect(output).not.toContain(RIGHT_TOKEN);
    } finally {
      for (const worker of workers) worker.kill();
      coordinator.kill();
    }
  }, 120_000);
});
