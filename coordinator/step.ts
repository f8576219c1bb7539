import type { GradientEncoding } from '../shared/encoding.js';
import type { ParameterSpec } from '../shared/models.js';
import { ProtocolError, type GradientMessage } from '../shared/protocol.js';
import { GradientAccumulator } from './accumulator.js';
import type { WorkerSession } from './session.js';

/** A shard handed to a worker, with when it was sent (for the wait-time metric). */
export interface Assignment {
  ids: Uint32Array;
  sentAtMs: number;
  /** Times this shard's gradient was rejected as malformed (wrong count, names or shapes). */
  rejections: number;
  /** Times this shard's gradient contained a NaN or an infinity. */
  nonFinite: number;
  /** Workers whose gradient for this shard was rejected; another worker gets it when one is free. */
  rejectedBy: Set<WorkerSession>;
}

/** Size and timing of one accepted gradient. */
export interface AcceptedGradient {
  session: WorkerSession;
  count: number;
  computeMs: number;
  roundTripMs: number;
}

/** Raised when training cannot go on because the gradients stopped being finite. */
export class TrainingDivergedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TrainingDivergedError';
  }
}

/** Reason a gradient cannot be used. Non-finite values are a training event, the other reasons a faulty worker. */
interface GradientProblem {
  reason: string;
  nonFinite: boolean;
}

/** Stops training when one shard keeps producing invalid gradients on different workers. */
const MAX_SHARD_REJECTIONS = 3;

/**
 * One step in flight: the shards not yet handed out, the shards each worker is computing,
 * and the running weighted sum of the gradients received. A shard whose worker is lost
 * or whose gradient is invalid goes back to the queue and is given to another worker in
 * the same step, so the applied update is the one without the failure.
 */
export class StepRun {
  private readonly queue: Assignment[];
  private readonly assigned = new Map<WorkerSession, Assignment>();
  /** Workers still computing a shard whose deadline passed; their gradient will be discarded. */
  private readonly late = new Set<WorkerSession>();
  readonly accumulator: GradientAccumulator;
  lossSum = 0;
  correct = 0;
  /** Set when the step must not be applied: one shard's gradient was non-finite twice. */
  skipped?: string;
  /** The accepted gradient with the longest round trip: the step's straggler. */
  slowest?: AcceptedGradient;
  /** Sample ids whose gradients were accepted, in arrival order. */
  readonly usedIds: Uint32Array[] = [];
  private settle!: { resolve: () => void; reject: (error: Error) => void };
  readonly finished: Promise<void>;

  constructor(
    readonly step: number,
    readonly epoch: number,
    shards: Uint32Array[],
    private readonly specs: ParameterSpec[],
    private readonly sendShard: (session: WorkerSession, ids: Uint32Array) => void,
    /** Encoding announced to the workers in `welcome`; a gradient in another one is malformed. */
    private readonly encoding: GradientEncoding = 'fp32',
  ) {
    this.queue = shards.map((ids) => ({ ids, sentAtMs: 0, rejections: 0, nonFinite: 0, rejectedBy: new Set() }));
    this.accumulator = new GradientAccumulator(specs);
    this.finished = new Promise((resolve, reject) => (this.settle = { resolve, reject }));
  }

  /** True when some shard has no worker: the coordinator must find one for it. */
  get hasUnassigned(): boolean {
    return this.queue.length > 0;
  }

  /**
   * Hands queued shards to the given workers that are not computing one already. A shard
   * whose gradient a worker got wrong goes to another worker, and back to the same one
   * only when every given worker has got it wrong.
   */
  assign(sessions: Iterable<WorkerSession>): void {
    const candidates = [...sessions].filter((session) => session.state === 'active');
    for (const assignment of [...this.queue]) {
      const idle = candidates.filter((session) => !this.assigned.has(session) && !this.late.has(session));
      const fresh = idle.filter((session) => !assignment.rejectedBy.has(session));
      const everyoneRejected = candidates.every((session) => assignment.rejectedBy.has(session));
      const session = fresh[0] ?? (everyoneRejected ? idle[0] : undefined);
      if (!session) continue;
      this.queue.splice(this.queue.indexOf(assignment), 1);
      assignment.sentAtMs = performance.now();
      this.assigned.set(session, assignment);
      this.sendShard(session, assignment.ids);
    }
  }

  /**
   * Validates a gradient against the shard its worker was given and adds it to the sum.
   * Raises a ProtocolError (the worker stays connected) when it cannot be used.
   */
  accept(session: WorkerSession, message: GradientMessage): AcceptedGradient {
    if (message.step !== this.step) {
      throw new ProtocolError('STALE_GRADIENT', `gradient for step ${message.step} rejected: the coordinator is at step ${this.step}`);
    }
    const assignment = this.assigned.get(session);
    if (!assignment && this.late.delete(session)) {
      throw new ProtocolError('STALE_GRADIENT', `gradient for step ${message.step} from worker ${session.workerId} rejected: it arrived after the step deadline`);
    }
    if (!assignment) {
      throw new ProtocolError('UNEXPECTED_MESSAGE', `gradient for step ${message.step} rejected: worker ${session.workerId} has no shard in this step`);
    }
    const problem = this.findProblem(message, assignment);
    if (problem) {
      this.assigned.delete(session);
      assignment.rejectedBy.add(session);
      this.reject(assignment, problem);
      throw new ProtocolError('INVALID_GRADIENT', `gradient for step ${message.step} from worker ${session.workerId} rejected: ${problem.reason}`);
    }
    this.assigned.delete(session);
    this.accumulator.add(
      message.tensors.map((tensor) => tensor.data),
      message.count,
    );
    this.lossSum += message.loss * message.count;
    this.correct += message.correct;
    this.usedIds.push(assignment.ids);
    const accepted = { session, count: message.count, computeMs: message.computeMs, roundTripMs: performance.now() - assignment.sentAtMs };
    if (!this.slowest || accepted.roundTripMs > this.slowest.roundTripMs) this.slowest = accepted;
    this.resolveIfDone();
    return accepted;
  }

  /**
   * Takes back every shard sent more than `timeoutMs` ago and returns the workers that
   * had them. Their gradients for this step will be discarded when they arrive.
   */
  expire(timeoutMs: number): WorkerSession[] {
    const now = performance.now();
    const expired: WorkerSession[] = [];
    for (const [session, assignment] of this.assigned) {
      if (now - assignment.sentAtMs <= timeoutMs) continue;
      this.assigned.delete(session);
      this.late.add(session);
      this.queue.push(assignment);
      expired.push(session);
    }
    return expired;
  }

  /** Puts a lost worker's shard back in the queue. */
  release(session: WorkerSession): void {
    const assignment = this.assigned.get(session);
    if (!assignment) return;
    this.assigned.delete(session);
    this.queue.push(assignment);
  }

  /** Fails the step, for example when training must stop. */
  abort(error: Error): void {
    this.settle.reject(error);
  }

  /**
   * Gives a rejected shard to another worker. A shard whose gradient is non-finite a
   * second time makes the whole step skipped; one that comes back malformed from
   * MAX_SHARD_REJECTIONS workers stops training.
   */
  private reject(assignment: Assignment, problem: GradientProblem): void {
    if (problem.nonFinite && ++assignment.nonFinite >= 2) {
      this.skipped = `the gradient of one shard (${assignment.ids.length} samples) was non-finite on ${assignment.nonFinite} workers: ${problem.reason}`;
      this.settle.resolve();
      return;
    }
    if (!problem.nonFinite && ++assignment.rejections >= MAX_SHARD_REJECTIONS) {
      this.settle.reject(
        new TrainingDivergedError(
          `step ${this.step}: the gradient of one shard was malformed ${assignment.rejections} times (${problem.reason}); ` +
            'check that the coordinator and every worker run the same gradfleet version',
        ),
      );
      return;
    }
    this.queue.push(assignment);
  }

  private findProblem(message: GradientMessage, assignment: Assignment): GradientProblem | undefined {
    const malformed = (reason: string) => ({ reason, nonFinite: false });
    if (message.count !== assignment.ids.length) return malformed(`count ${message.count} differs from the shard's ${assignment.ids.length} samples`);
    if (message.correct > message.count) return malformed(`correct ${message.correct} exceeds count ${message.count}`);
    const encoding = message.encoding ?? 'fp32';
    if (encoding !== this.encoding) return malformed(`the gradient is encoded as ${encoding}, but the coordinator asked for ${this.encoding}`);
    if (message.tensors.length !== this.specs.length) return malformed(`${message.tensors.length} tensors, expected ${this.specs.length}`);
    for (let t = 0; t < this.specs.length; t++) {
      const spec = this.specs[t];
      const tensor = message.tensors[t];
      if (tensor.name !== spec.name) return malformed(`tensor ${t} is named "${tensor.name}", expected "${spec.name}"`);
      if (tensor.shape.join(',') !== spec.shape.join(',')) return malformed(`tensor "${spec.name}" has shape [${tensor.shape}], expected [${spec.shape}]`);
      const data = tensor.data;
      for (let i = 0; i < data.length; i++) {
        if (!Number.isFinite(data[i])) return { reason: `tensor "${spec.name}" contains a non-finite value (${data[i]}) at index ${i}`, nonFinite: true };
      }
    }
    if (!Number.isFinite(message.loss)) return { reason: `the loss is ${message.loss}`, nonFinite: true };
    return undefined;
  }

  private resolveIfDone(): void {
    if (this.queue.length === 0 && this.assigned.size === 0) this.settle.resolve();
  }
}
