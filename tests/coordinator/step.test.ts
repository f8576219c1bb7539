import { describe, expect, it } from 'vitest';

import type { WorkerSession } from '../../coordinator/session.js';
import { StepRun } from '../../coordinator/step.js';
import type { ParameterSpec } from '../../shared/models.js';
import { ProtocolError, type ErrorCode, type GradientMessage, type WireTensor } from '../../shared/protocol.js';

const SPECS: ParameterSpec[] = [
  { name: 'dense/kernel', shape: [2, 3] },
  { name: 'dense/bias', shape: [3] },
];
const STEP = 4;
const EPOCH = 1;

/** Stands in for a connected worker: StepRun reads only `workerId` and `state`. */
function fakeSession(workerId: string, state = 'active'): WorkerSession {
  return { workerId, state } as unknown as WorkerSession;
}

function sizeOf(shape: number[]): number {
  return shape.reduce((product, size) => product * size, 1);
}

/** Builds a run over the given shards and records every shard it sends. */
function makeRun(shards: number[][]) {
  const sent: { session: WorkerSession; ids: number[] }[] = [];
  const run = new StepRun(
    STEP,
    EPOCH,
    shards.map((ids) => Uint32Array.from(ids)),
    SPECS,
    (session, ids) => sent.push({ session, ids: Array.from(ids) }),
  );
  return { run, sent };
}

/** Returns the shard most recently sent to `session`. */
function lastShardOf(sent: { session: WorkerSession; ids: number[] }[], session: WorkerSession): number[] | undefined {
  return sent.filter((entry) => entry.session === session).at(-1)?.ids;
}

function gradientTensors(value: number): WireTensor[] {
  return SPECS.map((spec) => ({ name: spec.name, shape: [...spec.shape], dtype: 'float32', data: new Float32Array(sizeOf(spec.shape)).fill(value) }));
}

/** Builds a valid gradient for a shard of `count` samples, with every value set to `value`. */
function gradient(count: number, value = 0.25, overrides: Partial<GradientMessage> = {}): GradientMessage {
  return { type: 'gradient', step: STEP, count, loss: 1.5, correct: 0, computeMs: 3, tensors: gradientTensors(value), ...overrides };
}

/** Runs `accept` and returns the ProtocolError that it throws. */
function protocolErrorOf(accept: () => unknown): ProtocolError {
  try {
    accept();
  } catch (error) {
    expect(error).toBeInstanceOf(ProtocolError);
    return error as ProtocolError;
  }
  throw new Error('expected a ProtocolError, but the gradient was accepted');
}

function expectCode(accept: () => unknown, code: ErrorCode): ProtocolError {
  const error = protocolErrorOf(accept);
  expect(error.code).toBe(code);
  return error;
}

/** Returns a flag that turns true once `promise` resolves. */
function trackSettled(promise: Promise<void>): { resolved: boolean } {
  const state = { resolved: false };
  promise.then(() => (state.resolved = true));
  return state;
}

/** Lets pending promise callbacks run. */
function flushPromises(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

describe('StepRun assignment', () => {
  it('one shard per idle session', () => {
    const { run, sent } = makeRun([[0, 1], [2, 3], [4]]);
    const [a, b, c] = [fakeSession('a'), fakeSession('b'), fakeSession('c')];

    run.assign([a, b]);

    expect(sent).toHaveLength(2);
    expect(lastShardOf(sent, a)).toEqual([0, 1]);
    expect(lastShardOf(sent, b)).toEqual([2, 3]);
    expect(run.hasUnassigned).toBe(true);

    run.assign([a, b, c]);

    expect(sent).toHaveLength(3);
    expect(lastShardOf(sent, c)).toEqual([4]);
    expect(run.hasUnassigned).toBe(false);
  });

  it('more sessions than shards', () => {
    const { run, sent } = makeRun([[0, 1]]);

    run.assign([fakeSession('a'), fakeSession('b'), fakeSession('c')]);

    expect(sent).toHaveLength(1);
    expect(run.hasUnassigned).toBe(false);
  });

  it('skips sessions not active', () => {
    const { run, sent } = makeRun([[0], [1]]);
    const waiting = fakeSession('w', 'waiting');
    const closed = fakeSession('x', 'closed');
    const active = fakeSession('a');

    run.assign([waiting, closed, active]);

    expect(sent).toHaveLength(1);
    expect(sent[0].session).toBe(active);
  });
});

describe('StepRun accept', () => {
  it('gradient for another step', () => {
    const { run } = makeRun([[0, 1]]);
    const a = fakeSession('a');
    run.assign([a]);

    expectCode(() => run.accept(a, gradient(2, 0.25, { step: STEP - 1 })), 'STALE_GRADIENT');
    expectCode(() => run.accept(a, gradient(2, 0.25, { step: STEP + 1 })), 'STALE_GRADIENT');
  });

  it('stale gradient keeps the shard', () => {
    const { run } = makeRun([[0, 1]]);
    const a = fakeSession('a');
    run.assign([a]);

    expectCode(() => run.accept(a, gradient(2, 0.25, { step: STEP - 1 })), 'STALE_GRADIENT');

    expect(run.hasUnassigned).toBe(false);
    expect(run.accept(a, gradient(2)).count).toBe(2);
  });

  it('gradient without a shard', () => {
    const { run } = makeRun([[0, 1]]);

    expectCode(() => run.accept(fakeSession('stranger'), gradient(2)), 'UNEXPECTED_MESSAGE');
  });

  it('returns accepted details', () => {
    const { run } = makeRun([[0, 1, 2]]);
    const a = fakeSession('a');
    run.assign([a]);

    const accepted = run.accept(a, gradient(3, 0.25, { computeMs: 7.5 }));

    expect(accepted.session).toBe(a);
    expect(accepted.count).toBe(3);
    expect(accepted.computeMs).toBe(7.5);
    expect(accepted.roundTripMs).toBeGreaterThanOrEqual(0);
  });

  function nanTensors(): WireTensor[] {
    const tensors = gradientTensors(0.25);
    tensors[1].data[2] = NaN;
    return tensors;
  }

  function infiniteTensors(): WireTensor[] {
    const tensors = gradientTensors(0.25);
    tensors[0].data[0] = -Infinity;
    return tensors;
  }

  function renamedTensors(): WireTensor[] {
    const tensors = gradientTensors(0.25);
    tensors[0].name = 'dense_1/kernel';
    return tensors;
  }

  function reshapedTensors(): WireTensor[] {
    const tensors = gradientTensors(0.25);
    tensors[0].shape = [3, 2];
    return tensors;
  }

  const INVALID_CASES: [string, Partial<GradientMessage>][] = [
    ['count too small', { count: 2 }],
    ['count too large', { count: 4 }],
    ['wrong tensor name', { tensors: renamedTensors() }],
    ['wrong tensor shape', { tensors: reshapedTensors() }],
    ['NaN value', { tensors: nanTensors() }],
    ['infinite value', { tensors: infiniteTensors() }],
    ['missing tensor', { tensors: gradientTensors(0.25).slice(0, 1) }],
    ['NaN loss', { loss: NaN }],
    ['correct above count', { correct: 4 }],
  ];

  it.each(INVALID_CASES)('invalid gradient: %s', (_, overrides) => {
    const { run } = makeRun([[0, 1, 2]]);
    const a = fakeSession('a');
    run.assign([a]);

    const error = expectCode(() => run.accept(a, gradient(3, 0.25, overrides)), 'INVALID_GRADIENT');

    expect(error.message).toContain('worker a');
    expect(run.hasUnassigned).toBe(true);
  });

  it.each(INVALID_CASES)('rejected shard reassigned: %s', (_, overrides) => {
    const { run, sent } = makeRun([[0, 1, 2]]);
    const [a, b] = [fakeSession('a'), fakeSession('b')];
    run.assign([a]);
    expectCode(() => run.accept(a, gradient(3, 0.25, overrides)), 'INVALID_GRADIENT');

    run.assign([b]);

    expect(lastShardOf(sent, b)).toEqual([0, 1, 2]);
    expect(run.hasUnassigned).toBe(false);
    expect(run.accept(b, gradient(3)).count).toBe(3);
  });

  it('rejected shard avoids its worker', () => {
    // The offending worker stays connected and idle, and the coordinator passes every
    // active session to assign(). The shard must still go to a different worker.
    const { run, sent } = makeRun([[0, 1, 2]]);
    const [a, b] = [fakeSession('a'), fakeSession('b')];
    run.assign([a]);
    expectCode(() => run.accept(a, gradient(3, 0.25, { tensors: nanTensors() })), 'INVALID_GRADIENT');

    run.assign([a, b]);

    expect(lastShardOf(sent, b)).toEqual([0, 1, 2]);
  });

  it('rejected worker cannot resend', () => {
    const { run } = makeRun([[0, 1, 2]]);
    const a = fakeSession('a');
    run.assign([a]);
    expectCode(() => run.accept(a, gradient(3, 0.25, { count: 2 })), 'INVALID_GRADIENT');

    expectCode(() => run.accept(a, gradient(3)), 'UNEXPECTED_MESSAGE');
  });
});

describe('StepRun release', () => {
  it('lost shard is re-queued', () => {
    const { run, sent } = makeRun([[0, 1], [2, 3]]);
    const [a, b, c] = [fakeSession('a'), fakeSession('b'), fakeSession('c')];
    run.assign([a, b]);

    run.release(a);

    expect(run.hasUnassigned).toBe(true);
    run.assign([b, c]);
    expect(lastShardOf(sent, c)).toEqual([0, 1]);
    expect(run.hasUnassigned).toBe(false);
  });

  it('release without shard is ignored', () => {
    const { run } = makeRun([[0, 1]]);
    const [a, b] = [fakeSession('a'), fakeSession('b')];
    run.assign([a]);

    run.release(b);

    expect(run.hasUnassigned).toBe(false);
  });

  it('released worker gradient rejected', () => {
    const { run } = makeRun([[0, 1]]);
    const a = fakeSession('a');
    run.assign([a]);
    run.release(a);

    expectCode(() => run.accept(a, gradient(2)), 'UNEXPECTED_MESSAGE');
  });
});

describe('StepRun finished', () => {
  it('resolves after last shard', async () => {
    const { run } = makeRun([[0, 1], [2, 3], [4]]);
    const [a, b, c] = [fakeSession('a'), fakeSession('b'), fakeSession('c')];
    const settled = trackSettled(run.finished);
    run.assign([a, b, c]);

    run.accept(a, gradient(2));
    run.accept(c, gradient(1));
    await flushPromises();
    expect(settled.resolved).toBe(false);

    run.accept(b, gradient(2));
    await flushPromises();
    expect(settled.resolved).toBe(true);
  });

  it('waits for re-queued shard', async () => {
    const { run } = makeRun([[0, 1], [2, 3]]);
    const [a, b, c] = [fakeSession('a'), fakeSession('b'), fakeSession('c')];
    const settled = trackSettled(run.finished);
    run.assign([a, b]);

    run.accept(a, gradient(2));
    run.release(b);
    await flushPromises();
    expect(settled.resolved).toBe(false);

    run.assign([c]);
    run.accept(c, gradient(2));
    await expect(run.finished).resolves.toBeUndefined();
  });

  it('records used ids and totals', async () => {
    const { run } = makeRun([[5, 6], [7]]);
    const [a, b] = [fakeSession('a'), fakeSession('b')];
    run.assign([a, b]);

    run.accept(b, gradient(1, 0.25, { loss: 2, correct: 1 }));
    run.accept(a, gradient(2, 0.25, { loss: 0.5, correct: 2 }));
    await run.finished;

    expect(run.usedIds.map((ids) => Array.from(ids))).toEqual([[7], [5, 6]]);
    expect(run.lossSum).toBe(2 * 1 + 0.5 * 2);
    expect(run.correct).toBe(3);
    expect(run.accumulator.count).toBe(3);
  });

  it('average equals single shard', async () => {
    // Per-example gradients are multiples of 1/8 and each shard contains 4 examples, so every
    // shard mean is exact in float32 and both runs must round the same 12-example mean.
    const examples = Array.from({ length: 12 }, (_, id) =>
      SPECS.map((spec, t) => Float32Array.from({ length: sizeOf(spec.shape) }, (_, i) => ((id * 7 + t * 3 + i * 5) % 17) / 8 - 1)),
    );
    const meanOf = (ids: number[]): WireTensor[] =>
      SPECS.map((spec, t) => {
        const data = new Float32Array(sizeOf(spec.shape));
        data.forEach((_, i) => (data[i] = ids.reduce((sum, id) => sum + examples[id][t][i], 0) / ids.length));
        return { name: spec.name, shape: [...spec.shape], dtype: 'float32', data };
      });
    const allIds = Array.from({ length: 12 }, (_, id) => id);
    const shardIds = [allIds.slice(0, 4), allIds.slice(4, 8), allIds.slice(8)];

    const single = makeRun([allIds]);
    const solo = fakeSession('solo');
    single.run.assign([solo]);
    single.run.accept(solo, gradient(12, 0, { tensors: meanOf(allIds) }));
    await single.run.finished;

    const split = makeRun(shardIds);
    const sessions = [fakeSession('a'), fakeSession('b'), fakeSession('c')];
    split.run.assign(sessions);
    sessions.forEach((session, s) => split.run.accept(session, gradient(4, 0, { tensors: meanOf(shardIds[s]) })));
    await split.run.finished;

    const expected = single.run.accumulator.average();
    const actual = split.run.accumulator.average();
    actual.forEach((tensor, t) => expect(Array.from(tensor)).toEqual(Array.from(expected[t])));
  });

  it('weighted by shard count', async () => {
    const { run } = makeRun([[0, 1, 2, 3], [4, 5]]);
    const [a, b] = [fakeSession('a'), fakeSession('b')];
    run.assign([a, b]);

    run.accept(a, gradient(4, 1));
    run.accept(b, gradient(2, 4));
    await run.finished;

    for (const tensor of run.accumulator.average()) {
      for (const value of tensor) expect(value).toBe(2);
    }
  });

  it('rejects after 3 malformed gradients', async () => {
    const { run, sent } = makeRun([[0, 1], [2, 3]]);
    const [a, b, c, d] = [fakeSession('a'), fakeSession('b'), fakeSession('c'), fakeSession('d')];
    const outcome = expect(run.finished).rejects.toThrow(/malformed 3 times/);
    run.assign([a, d]);
    run.accept(d, gradient(2));

    expectCode(() => run.accept(a, gradient(3)), 'INVALID_GRADIENT');
    run.assign([b]);
    expect(lastShardOf(sent, b)).toEqual([0, 1]);
    expectCode(() => run.accept(b, gradient(3)), 'INVALID_GRADIENT');
    run.assign([c]);
    expect(lastShardOf(sent, c)).toEqual([0, 1]);
    expectCode(() => run.accept(c, gradient(3)), 'INVALID_GRADIENT');

    await outcome;
    expect(run.hasUnassigned).toBe(false);
  });

  it('two malformed gradients still finish', async () => {
    const { run } = makeRun([[0, 1]]);
    const [a, b, c] = [fakeSession('a'), fakeSession('b'), fakeSession('c')];
    run.assign([a]);
    expectCode(() => run.accept(a, gradient(3)), 'INVALID_GRADIENT');
    run.assign([b]);
    expectCode(() => run.accept(b, gradient(3)), 'INVALID_GRADIENT');
    run.assign([c]);

    run.accept(c, gradient(2));

    await expect(run.finished).resolves.toBeUndefined();
    expect(run.skipped).toBeUndefined();
  });

  it('one non-finite gradient is recomputed', async () => {
    const { run, sent } = makeRun([[0, 1]]);
    const [a, b] = [fakeSession('a'), fakeSession('b')];
    run.assign([a]);
    expectCode(() => run.accept(a, gradient(2, Number.NaN)), 'INVALID_GRADIENT');
    run.assign([a, b]);
    expect(lastShardOf(sent, b)).toEqual([0, 1]);
    run.accept(b, gradient(2));

    await expect(run.finished).resolves.toBeUndefined();
    expect(run.skipped).toBeUndefined();
  });

  it('second non-finite gradient skips the step', async () => {
    const { run } = makeRun([[0, 1], [2, 3]]);
    const [a, b, c] = [fakeSession('a'), fakeSession('b'), fakeSession('c')];
    run.assign([a, c]);
    expectCode(() => run.accept(a, gradient(2, 0.25, { loss: Number.POSITIVE_INFINITY })), 'INVALID_GRADIENT');
    run.assign([b]);
    expectCode(() => run.accept(b, gradient(2, Number.NaN)), 'INVALID_GRADIENT');

    await expect(run.finished).resolves.toBeUndefined();
    expect(run.skipped).toMatch(/non-finite on 2 workers/);
  });

  it('abort rejects finished', async () => {
    const { run } = makeRun([[0, 1]]);

    run.abort(new Error('coordinator shutting down'));

    await expect(run.finished).rejects.toThrow('coordinator shutting down');
  });
});

describe('StepRun deadline', () => {
  it('expire gives a late shard away', async () => {
    const late = fakeSession('late');
    const quick = fakeSession('quick');
    const { run, sent } = makeRun([[1, 2], [3, 4]]);
    run.assign([late, quick]);
    run.accept(quick, gradient(2));
    await new Promise((resolve) => setTimeout(resolve, 20));

    expect(run.expire(10)).toEqual([late]);
    run.assign([late, quick]);
    expect(lastShardOf(sent, quick)).toEqual([1, 2]);
    expect(sent.filter((entry) => entry.session === late)).toHaveLength(1);
  });

  it('late gradient is stale', async () => {
    const late = fakeSession('late');
    const quick = fakeSession('quick');
    const { run } = makeRun([[1, 2], [3, 4]]);
    run.assign([late, quick]);
    run.accept(quick, gradient(2));
    await new Promise((resolve) => setTimeout(resolve, 20));
    run.expire(10);
    run.assign([late, quick]);

    expectCode(() => run.accept(late, gradient(2)), 'STALE_GRADIENT');
    run.accept(quick, gradient(2));
    const settled = trackSettled(run.finished);
    await flushPromises();
    expect(settled.resolved).toBe(true);
  });

  it('late worker takes work once idle', async () => {
    const late = fakeSession('late');
    const { run, sent } = makeRun([[1, 2]]);
    run.assign([late]);
    await new Promise((resolve) => setTimeout(resolve, 20));
    run.expire(10);
    run.assign([late]);
    expect(sent).toHaveLength(1);

    // Once its late gradient is in, the worker is idle and gets the shard back.
    expectCode(() => run.accept(late, gradient(2)), 'STALE_GRADIENT');
    run.assign([late]);
    expect(sent).toHaveLength(2);
    run.accept(late, gradient(2));
    const settled = trackSettled(run.finished);
    await flushPromises();
    expect(settled.resolved).toBe(true);
  });

  it('expire keeps fresh shards', () => {
    const worker = fakeSession('fresh');
    const { run } = makeRun([[1, 2]]);
    run.assign([worker]);
    expect(run.expire(60_000)).toEqual([]);
  });
});
