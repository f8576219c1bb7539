import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Coordinator } from '../../coordinator/coordinator.js';
import { disconnectReason } from '../../coordinator/session.js';
import { selectBackend } from '../../shared/backend.js';
import { loadDataset, type Dataset } from '../../shared/data/dataset.js';
import { Logger } from '../../shared/log.js';
import { COORDINATOR_DEFAULTS, WORKER_DEFAULTS } from '../../shared/options.js';
import { CLOSE_CODES } from '../../shared/protocol.js';
import { Worker } from '../../worker/worker.js';
import { temporaryFolder } from '../helpers/cli.js';

describe('disconnect reasons', () => {
  const cases: [number, string | undefined, string][] = [
    [1006, 'heartbeat timeout', 'heartbeat_timeout'],
    [1006, 'step timeout: 3 deadlines missed in a row', 'step_timeout'],
    [CLOSE_CODES.workerLeaving, undefined, 'left'],
    [CLOSE_CODES.malformedMessage, undefined, 'malformed_message'],
    [CLOSE_CODES.messageTooBig, undefined, 'message_too_big'],
    [CLOSE_CODES.unauthorized, undefined, 'unauthorized'],
    [CLOSE_CODES.protocolVersionMismatch, undefined, 'protocol_version_mismatch'],
    [1006, undefined, 'connection_lost'],
    [1000, undefined, 'connection_lost'],
  ];
  for (const [code, coordinatorReason, expected] of cases) {
    it(`labels ${code} ${coordinatorReason ?? ''} as ${expected}`, () => {
      expect(disconnectReason(code, coordinatorReason)).toBe(expected);
    });
  }
});

describe('disconnect metric', () => {
  const silent = new Logger({ format: 'json', level: 'error', name: 'test', write: () => {} });
  const cleanup: { close(): Promise<void> }[] = [];
  let dataset: Dataset;

  beforeAll(async () => {
    await selectBackend('cpu');
    dataset = await loadDataset({ trainLimit: 640, testLimit: 100 });
  });

  afterEach(async () => {
    for (const item of cleanup.splice(0)) await item.close();
  });

  it('names the worker and the reason', async () => {
    const options = { ...COORDINATOR_DEFAULTS, workers: 3, model: 'mlp' as const, port: 0, metricsPort: 0, epochs: 1, batchSize: 32, output: temporaryFolder('disconnects') };
    const coordinator = new Coordinator(options, silent, dataset);
    cleanup.push(coordinator);
    await coordinator.start();
    const workers = ['stays', 'leaves', 'crashes'].map((name) => {
      const worker = new Worker({ ...WORKER_DEFAULTS, coordinator: `ws://127.0.0.1:${coordinator.port}`, metricsPort: 0, name }, silent);
      cleanup.push(worker);
      const done = worker.run();
      done.catch(() => {});
      return worker;
    });
    coordinator.on('step', ({ step }) => {
      if (step === 2) void workers[1].leave();
      // close() drops the connection without a close frame, as a crashed process would.
      if (step === 4) void workers[2].close();
    });
    await coordinator.run();

    const text = await coordinator.metrics.registry.getSingleMetricAsString('gradfleet_worker_disconnects_total');
    expect(text).toContain('gradfleet_worker_disconnects_total{worker="leaves",reason="left"} 1');
    expect(text).toContain('gradfleet_worker_disconnects_total{worker="crashes",reason="connection_lost"} 1');
    expect(text).not.toContain('worker="stays"');
  }, 60_000);
});
