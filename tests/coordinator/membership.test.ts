import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Coordinator } from '../../coordinator/coordinator.js';
import { selectBackend } from '../../shared/backend.js';
import { loadDataset, type Dataset } from '../../shared/data/dataset.js';
import { Logger } from '../../shared/log.js';
import { COORDINATOR_DEFAULTS, type CoordinatorOptions } from '../../shared/options.js';
import { temporaryFolder } from '../helpers/cli.js';
import { silentLogger, startInProcessWorker, type Closables } from '../helpers/in-process.js';

/** Coordinators and workers in this process, on real sockets; the MLP keeps steps fast. */
const silent = silentLogger;
let dataset: Dataset;
const cleanup: Closables = [];

function coordinatorOptions(overrides: Partial<CoordinatorOptions>): CoordinatorOptions {
  return { ...COORDINATOR_DEFAULTS, model: 'mlp', port: 0, metricsPort: 0, epochs: 1, output: temporaryFolder('membership'), ...overrides };
}

function startWorker(coordinator: Coordinator, name: string): ReturnType<typeof startInProcessWorker> {
  return startInProcessWorker(coordinator, name, cleanup);
}

beforeAll(async () => {
  await selectBackend('cpu');
  dataset = await loadDataset({ trainLimit: 1200, testLimit: 100 });
});

afterEach(async () => {
  for (const item of cleanup.splice(0)) await item.close();
});

describe('coordinator membership', () => {
  it('admits a late worker at a step boundary', async () => {
    const coordinator = new Coordinator(coordinatorOptions({ workers: 1, batchSizePerWorker: 10 }), silent, dataset);
    cleanup.push(coordinator);
    const batches: number[] = [];
    let late: ReturnType<typeof startWorker> | undefined;
    coordinator.on('step', ({ step, examples }) => {
      batches.push(examples);
      if (step === 4) late = startWorker(coordinator, 'late');
    });
    await coordinator.start();
    const first = startWorker(coordinator, 'first');
    const result = await coordinator.run();
    await first.done;
    await late!.done;

    // The global batch follows the active workers: 10 with one worker, 20 with two.
    expect(batches.slice(0, 5)).toEqual([10, 10, 10, 10, 10]);
    expect(batches).toContain(20);
    expect(batches.every((size) => size === 10 || size === 20 || size === batches.at(-1))).toBe(true);
    expect(result.epochs[0].samples).toEqual({ unused: 0, once: 1200, repeated: 0 });
    expect((await late!.worker.metrics.examples.get()).values[0].value).toBeGreaterThan(0);
  }, 60_000);

  it('keeps training after a worker leaves', async () => {
    const coordinator = new Coordinator(coordinatorOptions({ workers: 2, batchSize: 64 }), silent, dataset);
    cleanup.push(coordinator);
    await coordinator.start();
    const stays = startWorker(coordinator, 'stays');
    const leaves = startWorker(coordinator, 'leaves');
    leaves.done.catch(() => {});
    coordinator.on('step', ({ step }) => {
      if (step === 3) void leaves.worker.close();
    });
    const result = await coordinator.run();
    await stays.done;
    expect(result.epochs[0].samples).toEqual({ unused: 0, once: 1200, repeated: 0 });
    expect(result.steps).toBe(Math.ceil(1200 / 64));
  }, 60_000);

  it('pauses below --min-workers', async () => {
    let coordinator: Coordinator;
    let rescuer: ReturnType<typeof startWorker> | undefined;
    const messages: string[] = [];
    const watcher = new Logger({
      format: 'json',
      level: 'info',
      name: 'test',
      write: (line) => {
        const { msg } = JSON.parse(line);
        messages.push(msg);
        if (msg === 'training paused: too few workers' && !rescuer) rescuer = startWorker(coordinator, 'rescuer');
      },
    });
    coordinator = new Coordinator(coordinatorOptions({ workers: 2, minWorkers: 2, batchSize: 64 }), watcher, dataset);
    cleanup.push(coordinator);
    await coordinator.start();
    const stays = startWorker(coordinator, 'stays');
    const leaves = startWorker(coordinator, 'leaves');
    leaves.done.catch(() => {});
    coordinator.on('step', ({ step }) => {
      if (step === 3) void leaves.worker.close();
    });
    const result = await coordinator.run();
    await stays.done;
    await rescuer!.done;

    expect(messages).toContain('training paused: too few workers');
    expect(messages.indexOf('training resumed')).toBeGreaterThan(messages.indexOf('training paused: too few workers'));
    expect(result.epochs[0].samples).toEqual({ unused: 0, once: 1200, repeated: 0 });
  }, 60_000);

  it('rejects min-workers above workers', () => {
    expect(() => new Coordinator(coordinatorOptions({ workers: 2, minWorkers: 3 }), silent, dataset)).toThrow(/--min-workers 3 exceeds --workers 2/);
  });

  it('runs two coordinators at once', async () => {
    const first = new Coordinator(coordinatorOptions({ workers: 1, maxSteps: 3 }), silent, dataset);
    const second = new Coordinator(coordinatorOptions({ workers: 1, maxSteps: 3 }), silent, dataset);
    cleanup.push(first, second);
    await Promise.all([first.start(), second.start()]);
    const workers = [startWorker(first, 'a'), startWorker(second, 'b')];
    const results = await Promise.all([first.run(), second.run()]);
    await Promise.all(workers.map((entry) => entry.done));
    expect(results.map((result) => result.steps)).toEqual([3, 3]);
    const scraped = await Promise.all([first, second].map(async (c) => (await fetch(`http://127.0.0.1:${c.metricsPort}/metrics`)).text()));
    for (const text of scraped) expect(text).toMatch(/^gradfleet_steps_total 3$/m);
  }, 60_000);
});
