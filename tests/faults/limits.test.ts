import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WebSocket, WebSocketServer } from 'ws';
import { Coordinator } from '../../coordinator/coordinator.js';
import { selectBackend } from '../../shared/backend.js';
import { loadDataset } from '../../shared/data/dataset.js';
import { Logger } from '../../shared/log.js';
import { COORDINATOR_DEFAULTS } from '../../shared/options.js';
import { CliProcess, temporaryFolder } from '../helpers/cli.js';

const silent = new Logger({ format: 'json', level: 'error', name: 'test', write: () => {} });

describe('message size limits', () => {
  let coordinator: Coordinator;

  beforeAll(async () => {
    await selectBackend('cpu');
    const dataset = await loadDataset({ trainLimit: 100, testLimit: 100 });
    coordinator = new Coordinator({ ...COORDINATOR_DEFAULTS, model: 'mlp', port: 0, metricsPort: 0, output: temporaryFolder('limits') }, silent, dataset);
    await coordinator.start();
  });

  afterAll(async () => {
    await coordinator.close();
  });

  it('oversized frame closes with 1009', async () => {
    const socket = new WebSocket(`ws://127.0.0.1:${coordinator.port}`);
    await new Promise((resolve) => socket.once('open', resolve));
    // The MLP's weights message is about 0.4 MB; 8 MB is far over its derived limit.
    socket.send(Buffer.alloc(8 * 1024 * 1024));
    const code = await new Promise<number>((resolve) => socket.once('close', resolve));
    expect(code).toBe(1009);

    const metrics = await coordinator.metrics.registry.getSingleMetricAsString('gradfleet_rejected_messages_total');
    expect(metrics).toContain('gradfleet_rejected_messages_total{reason="MESSAGE_TOO_BIG"} 1');
  });

  it('rejects a limit below one weights message', async () => {
    const run = new CliProcess(['coordinator', '--max-message-bytes', '1000', '--backend', 'cpu', '--port', '0', '--metrics-port', '0', '--train-limit', '100', '--test-limit', '100']);
    expect(await run.exited).toBe(2);
    expect(run.stderr.join('\n')).toMatch(/--max-message-bytes 1000 is smaller than one weights message of this model \(\d+ bytes\)/);
  });

  it('worker exits on message too big', async () => {
    // A stand-in coordinator that closes every connection as "message too big".
    const server = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    server.on('connection', (socket) => socket.close(1009));
    await new Promise((resolve) => server.once('listening', resolve));
    const { port } = server.address() as AddressInfo;
    try {
      const worker = new CliProcess(['worker', '--coordinator', `ws://127.0.0.1:${port}`, '--metrics-port', '0', '--backend', 'cpu']);
      expect(await worker.exited).toBe(1);
      expect(worker.stderr.join('\n')).toMatch(/closed the connection for good \(code 1009: a message was over the size limit\)/);
    } finally {
      server.close();
    }
  });
});
