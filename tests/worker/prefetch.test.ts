import type { AddressInfo } from 'node:net';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { WebSocketServer, type WebSocket } from 'ws';
import { selectBackend } from '../../shared/backend.js';
import { decodeWorkerMessage, encodeMessage } from '../../shared/codec.js';
import { Logger } from '../../shared/log.js';
import { buildModel, modelTopology, parameterSpecs } from '../../shared/models.js';
import { WORKER_DEFAULTS } from '../../shared/options.js';
import { PROTOCOL_VERSION, type CoordinatorMessage, type WorkerMessage } from '../../shared/protocol.js';
import { Worker } from '../../worker/worker.js';

const silent = new Logger({ format: 'json', level: 'error', name: 'test', write: () => {} });
const cleanup: { close(): unknown }[] = [];

/**
 * Starts a stand-in coordinator that welcomes the worker with the MLP and, once the worker is
 * ready, sends the weights of step 1 followed by `afterReady`. Returns its port, the list that
 * collects the worker's messages as they arrive, and a promise of the connection's close.
 */
async function standInCoordinator(afterReady: CoordinatorMessage[]): Promise<{ port: number; received: WorkerMessage[]; closed: Promise<void> }> {
  const model = buildModel('mlp', { inputShape: [28, 28, 1], numClasses: 10 }, 1);
  const parameters = parameterSpecs(model);
  const weights = model.getWeights().map((tensor, t) => ({ name: parameters[t].name, shape: parameters[t].shape, dtype: 'float32' as const, data: tensor.dataSync() as Float32Array }));
  const topology = modelTopology(model);
  model.dispose();
  const server = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  cleanup.push(server);
  await new Promise((resolve) => server.once('listening', resolve));
  const received: WorkerMessage[] = [];
  let closedResolve!: () => void;
  const closed = new Promise<void>((resolve) => (closedResolve = resolve));
  server.on('connection', (socket: WebSocket) => {
    socket.on('close', () => closedResolve());
    socket.on('message', (data: Buffer) => {
      const message = decodeWorkerMessage(data);
      received.push(message);
      if (message.type === 'hello') {
        socket.send(encodeMessage({ type: 'welcome', protocolVersion: PROTOCOL_VERSION, workerId: 'w-1', modelTopology: topology, parameters, inputShape: [28, 28, 1], numClasses: 10, heartbeatMs: 5_000, maxMessageBytes: 1 << 24 }));
      }
      if (message.type === 'ready') {
        socket.send(encodeMessage({ type: 'weights', step: 1, tensors: weights }));
        for (const next of afterReady) socket.send(encodeMessage(next));
      }
    });
  });
  return { port: (server.address() as AddressInfo).port, received, closed };
}

function startWorker(port: number): { worker: Worker; done: Promise<void> } {
  const worker = new Worker({ ...WORKER_DEFAULTS, coordinator: `ws://127.0.0.1:${port}`, metricsPort: 0, name: 'prefetch-test' }, silent);
  cleanup.push(worker);
  return { worker, done: worker.run() };
}

const ids = Uint32Array.from([5, 6, 7]);
const images = new Uint8Array(3 * 28 * 28).fill(128);
const labels = Uint8Array.from([1, 2, 3]);

beforeAll(async () => {
  await selectBackend('cpu');
});

afterEach(async () => {
  for (const item of cleanup.splice(0)) await item.close();
});

describe('worker prefetch', () => {
  it('computes a prefetched shard', async () => {
    const coordinator = await standInCoordinator([
      { type: 'prefetch', step: 1, sampleIds: ids, images, labels },
      { type: 'shard', step: 1, epoch: 1, sampleIds: ids, prefetched: true },
    ]);
    const { done } = startWorker(coordinator.port);
    done.catch(() => {});
    while (!coordinator.received.some((message) => message.type === 'gradient')) await new Promise((resolve) => setTimeout(resolve, 20));

    const gradient = coordinator.received.find((message) => message.type === 'gradient');
    expect(gradient).toMatchObject({ step: 1 });
    expect(gradient).toMatchObject({ count: 3 });
  }, 30_000);

  it('rejects a prefetched shard it has no data for', async () => {
    const coordinator = await standInCoordinator([
      { type: 'prefetch', step: 1, sampleIds: Uint32Array.from([5, 6, 8]), images, labels },
      { type: 'shard', step: 1, epoch: 1, sampleIds: ids, prefetched: true },
    ]);
    const { done } = startWorker(coordinator.port);

    await expect(done).rejects.toThrow(/marked prefetched, but this worker stores a prefetch of 3 samples for step 1/);
    await coordinator.closed;
    const error = coordinator.received.find((message) => message.type === 'error');
    expect(error).toMatchObject({ code: 'UNEXPECTED_MESSAGE' });
    expect(coordinator.received.some((message) => message.type === 'gradient')).toBe(false);
  }, 30_000);
});
