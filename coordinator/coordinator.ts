import { EventEmitter } from 'node:events';
import { mkdir } from 'node:fs/promises';
import { tf } from '../shared/backend.js';
import { encodeMessage } from '../shared/codec.js';
import { loadDataset, type Dataset, type Split } from '../shared/data/dataset.js';
import type { Logger } from '../shared/log.js';
import { MetricsServer } from '../shared/metrics-server.js';
import { saveModel } from '../shared/model-files.js';
import { buildModel, modelTopology, parameterSpecs, trainableVariables, type ParameterSpec } from '../shared/models.js';
import { DEFAULT_BATCH_SIZE, OptionError, validateCoordinatorOptions, type CoordinatorOptions } from '../shared/options.js';
import { CLOSE_CODES, PROTOCOL_VERSION, ProtocolError, sameSampleIds, type WireTensor, type WorkerMessage } from '../shared/protocol.js';
import { evaluateInSlices, type EvaluationResult } from '../shared/training.js';
import { GRADFLEET_VERSION } from '../shared/version.js';
import {
  CHECKPOINT_FORMAT_VERSION,
  CheckpointError,
  describeDifferences,
  findLatestCheckpoint,
  listCheckpoints,
  optionDifferences,
  recordOptions,
  writeCheckpoint,
  type Checkpoint,
  type EpochProgress,
} from './checkpoint.js';
import { CoordinatorMetrics, STEP_PHASES, type StepPhase } from './metrics.js';
import { EpochPlan, SampleLedger, splitIntoShards } from './plan.js';
import { CoordinatorClosedError, Membership } from './membership.js';
import { makeOptimizer, type Optimizer } from './optimizer.js';
import { learningRate } from './schedule.js';
import { CoordinatorServer } from './server.js';
import { disconnectReason, SessionStateError, type WorkerSession } from './session.js';
import { StepRun, TrainingDivergedError } from './step.js';

export { CoordinatorClosedError };

/** Step deadlines a worker may miss in a row before it is disconnected. */
const MAX_CONSECUTIVE_TIMEOUTS = 3;

/**
 * How long a stop request lets the running step finish, in milliseconds. A step still
 * running then is abandoned without being applied, so that the checkpoint, the messages
 * to the workers and the exit fit in 10 seconds, the time `docker stop` waits by default
 * between SIGTERM and SIGKILL.
 */
const STOP_STEP_GRACE_MS = 8_000;

/** How long a stopping coordinator waits for its workers to acknowledge the close, in milliseconds. */
const STOP_CLOSE_WAIT_MS = 500;

function emptyPhaseTimes(): Record<StepPhase, number> {
  return Object.fromEntries(STEP_PHASES.map((phase) => [phase, 0])) as Record<StepPhase, number>;
}

/** Raised inside `run` when a stop was requested; `run` turns it into a result with `stopped` set. */
class TrainingStoppedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TrainingStoppedError';
  }
}

/** The epoch in progress, as a checkpoint records it. */
interface EpochState {
  epoch: number;
  plan: EpochPlan;
  ledger: SampleLedger;
  /** Plan position after the last finished step; a step abandoned by a stop does not advance it. */
  position: number;
  steps: number;
  lossSum: number;
  correct: number;
  examples: number;
  /** Training seconds of this epoch before the coordinator (re)started, and when it did by performance.now(). */
  elapsedBefore: number;
  startedAt: number;
}

/** One line of the per-epoch report, as Keras fit() prints it. */
export interface EpochSummary {
  epoch: number;
  epochs: number;
  steps: number;
  trainLoss: number;
  trainAccuracy: number;
  testLoss: number;
  testAccuracy: number;
  imagesPerSecond: number;
  elapsedSeconds: number;
  /** Samples used by applied updates in this epoch: unused, exactly once, more than once. */
  samples: { unused: number; once: number; repeated: number };
}

export interface TrainingResult {
  steps: number;
  epochs: EpochSummary[];
  /** True when a stop request ended training early; the newest checkpoint contains its state. */
  stopped: boolean;
  /** Weights after the last step, in `parameterSpecs` order. */
  weights: Float32Array[];
  parameters: ParameterSpec[];
}

/** Events a coordinator emits, for embedding programs and tests. */
export interface CoordinatorEvents {
  /** After each applied update; `step` counts from 0 and `lr` is the learning rate applied. */
  step: [{ step: number; epoch: number; examples: number; loss: number; lr: number }];
}

/**
 * The coordinator: the single writer of the weights, the optimizer state and the sample
 * ledger. It plans every epoch, hands shards to workers, averages their gradients,
 * applies the optimizer once per step and broadcasts the new weights.
 */
export class Coordinator extends EventEmitter<CoordinatorEvents> {
  readonly metrics = new CoordinatorMetrics();
  private readonly metricsServer = new MetricsServer(this.metrics.registry);
  private readonly server: CoordinatorServer;
  private readonly membership: Membership;
  private dataset?: Dataset;
  private model?: tf.LayersModel;
  private variables: tf.Variable[] = [];
  private specs: ParameterSpec[] = [];
  /** The weights being trained, in `specs` order; the model's variables are synced from them only to evaluate and save. */
  private weights: Float32Array[] = [];
  private optimizer?: Optimizer;
  private limits = { receive: 0, send: 0 };
  private currentStep?: StepRun;
  private currentWeightsFrame?: Buffer;
  private stepCount = 0;
  private skippedInARow = 0;
  /** The epoch in progress; checkpoints are taken from it. */
  private epochState?: EpochState;
  /** The checkpoint this run resumed from, until its epoch starts. */
  private resumedFrom?: Checkpoint;
  /** Steps taken when the newest checkpoint was written; step 0 is the seeded start, which needs none. */
  private lastCheckpointStep = 0;
  /** Set by `requestStop`: why, and when by performance.now(). */
  private stopRequest?: { reason: string; at: number };
  /** Rejects when a stop is requested, to end the waits that are not steps. */
  private readonly stopSignal: Promise<never>;
  private rejectStop!: (error: Error) => void;
  /** Active workers of the last step, to log when linear scaling changes the learning rate. */
  private lastScaledWorkers?: number;
  /** Milliseconds the running step has spent in each phase (see gradfleet_step_phase_seconds). */
  private phaseMs = emptyPhaseTimes();
  /** Shortest gradient round trip of the running step, in milliseconds. */
  private firstRoundTripMs = Infinity;
  /**
   * The prefetch last sent on each connection, until a shard of its step is sent. A
   * reconnected worker has a new session, so it starts without one.
   */
  private readonly prefetches = new WeakMap<WorkerSession, { step: number; ids: Uint32Array }>();
  /** performance.now() when the server started on the frame it is receiving, to time its decoding. */
  private frameReceivedAt = 0;
  private closed = false;
  port = 0;
  metricsPort = 0;

  constructor(
    private readonly options: CoordinatorOptions,
    private readonly log: Logger,
    dataset?: Dataset,
  ) {
    super();
    validateCoordinatorOptions(options);
    this.stopSignal = new Promise<never>((_, reject) => (this.rejectStop = reject));
    this.stopSignal.catch(() => undefined);
    this.dataset = dataset;
    this.server = new CoordinatorServer(
      {
        onMessage: (session, message) => this.onMessage(session, message),
        onClose: (session, code, reason) => this.onClose(session, code, reason),
        onReceivedBytes: (bytes) => {
          this.frameReceivedAt = performance.now();
          this.metrics.receivedBytes.inc(bytes);
        },
        onSentBytes: (bytes) => this.metrics.sentBytes.inc(bytes),
        onRejected: (session, error) => this.onRejected(session, error),
      },
      log,
    );
    this.membership = new Membership(this.server.sessions, log, () => `${this.server.scheme}://${this.options.host}:${this.port}`);
  }

  /** Loads the data, builds the model and starts both servers. */
  async start(): Promise<void> {
    this.dataset ??= await loadDataset({
      dataDir: this.options.dataDir,
      trainLimit: this.options.trainLimit,
      testLimit: this.options.testLimit,
    });
    const { train } = this.dataset;

    const shape = { inputShape: [train.rows, train.cols, 1] as [number, number, number], numClasses: 10 };
    this.model = buildModel(this.options.model, shape, this.options.seed);
    this.variables = trainableVariables(this.model);
    this.specs = parameterSpecs(this.model);
    this.weights = this.variables.map((variable) => Float32Array.from(variable.dataSync() as Float32Array));
    this.optimizer = makeOptimizer({ name: this.options.optimizer, lr: this.options.lr, momentum: this.options.momentum });
    await this.restoreCheckpoint(train);

    this.limits = this.messageLimits(train);
    this.port = await this.server.listen({
      host: this.options.host,
      port: this.options.port,
      maxPayloadBytes: this.limits.receive,
      token: this.options.token,
      tlsCert: this.options.tlsCert,
      tlsKey: this.options.tlsKey,
      insecure: this.options.insecure,
      // Two heartbeat intervals, the time after which a silent connection is dropped anyway.
      helloTimeoutMs: 2 * this.options.heartbeatMs,
      rejectedConnections: this.metrics.rejectedConnections,
    });
    this.server.startHeartbeats(this.options.heartbeatMs);
    this.metrics.minWorkers.set(this.options.minWorkers);
    this.metricsPort = await this.metricsServer.listen(this.options.host, this.options.metricsPort);

    this.log.info('coordinator listening', {
      url: `${this.server.scheme}://${this.options.host}:${this.port}`,
      metrics: `http://${this.options.host}:${this.metricsPort}/metrics`,
      model: this.options.model,
      parameters: this.specs.reduce((sum, spec) => sum + spec.shape.reduce((a, b) => a * b, 1), 0),
      trainImages: train.count,
      testImages: this.dataset.test.count,
      data: this.dataset.source,
      optimizer: this.options.optimizer,
      lr: this.options.lr,
      lrScaling: this.options.lrScaling,
      warmupSteps: this.options.warmupSteps,
      batch: this.options.batchSizePerWorker ? `${this.options.batchSizePerWorker} per worker` : this.globalBatchSize(1),
      epochs: this.options.epochs,
      gradientEncoding: this.options.gradientEncoding ?? 'fp32',
      backend: tf.getBackend(),
    });
  }

  /**
   * Returns the message size limits in bytes, from the model. A worker's gradient message
   * is the size of a weights message, measured by encoding one; 64 KiB covers the loss,
   * counts and framing. The coordinator sends weights messages and shards, and a worker
   * that takes over another's shard gets it in a message of its own.
   */
  private messageLimits(train: Split): { receive: number; send: number } {
    const weightsBytes = encodeMessage({ type: 'weights', step: 0, tensors: this.weightTensors(this.weights) }).byteLength;
    const configured = this.options.maxMessageBytes;
    if (configured !== undefined && configured < weightsBytes) {
      throw new OptionError(
        `--max-message-bytes ${configured} is smaller than one weights message of this model (${weightsBytes} bytes); ` +
          `raise it to at least ${weightsBytes + 65_536}, or leave it unset to derive it from the model`,
      );
    }
    // A shard contains at most one worker's batch, which is the whole global batch when one worker is left.
    const largestShard = this.options.batchSizePerWorker ?? this.options.batchSize ?? DEFAULT_BATCH_SIZE;
    const shardBytes = largestShard * (train.rows * train.cols + 5) + 65_536;
    return { receive: configured ?? weightsBytes + 65_536, send: Math.max(weightsBytes + 65_536, shardBytes) };
  }

  private globalBatchSize(activeWorkers: number): number {
    const perWorker = this.options.batchSizePerWorker;
    return perWorker !== undefined ? perWorker * activeWorkers : (this.options.batchSize ?? DEFAULT_BATCH_SIZE);
  }

  /**
   * Trains to completion, saves the model and sends `done` to every worker. After
   * `requestStop` it returns early with `stopped` set, once the checkpoint is written and
   * every worker has been sent COORDINATOR_SHUTDOWN, which makes it reconnect later.
   */
  async run(): Promise<TrainingResult> {
    const train = this.dataset!.train;
    const epochs: EpochSummary[] = [];
    try {
      await this.untilStopped(this.membership.waitFor(this.options.workers, 'to start training'));
      const first = this.resumedFrom?.progress.epoch ?? 1;
      for (let epoch = first; epoch <= this.options.epochs && !this.reachedMaxSteps(); epoch++) {
        epochs.push(await this.runEpoch(epoch, train));
      }
    } catch (error) {
      if (!(error instanceof TrainingStoppedError)) throw error;
      await this.stopAtStepBoundary(error.message);
      return { steps: this.stepCount, epochs, stopped: true, weights: this.readWeights(), parameters: this.specs };
    }
    this.syncModel();
    await saveModel(this.model!, this.options.output);
    this.log.info('training complete; model saved', { output: this.options.output, steps: this.stepCount });
    this.finishWorkers();
    return { steps: this.stepCount, epochs, stopped: false, weights: this.readWeights(), parameters: this.specs };
  }

  private reachedMaxSteps(steps = this.stepCount): boolean {
    return this.options.maxSteps !== undefined && steps >= this.options.maxSteps;
  }

  private async runEpoch(epoch: number, train: Split): Promise<EpochSummary> {
    const state = this.startEpoch(epoch, train);
    const { plan, ledger } = state;
    this.metrics.epoch.set(epoch);

    while (!plan.done && !this.reachedMaxSteps()) {
      if (this.stopRequest) throw new TrainingStoppedError(this.stopRequest.reason);
      const active = await this.admitWaitingWorkers();
      const ids = plan.take(this.globalBatchSize(active.length));
      // The batch of the next step if the active workers stay the same; empty at the end of the epoch.
      const nextIds = plan.peek(this.globalBatchSize(active.length));
      const step = await this.runStep(epoch, ids, active, train, nextIds);
      state.steps++;
      state.position = plan.position;
      // The samples of a skipped step count as unused: no update was made from them.
      if (!step.skipped) {
        for (const used of step.usedIds) ledger.record(used);
        state.lossSum += step.lossSum;
        state.correct += step.correct;
        state.examples += step.accumulator.count;
        this.logProgress(epoch, state.steps, state.lossSum / state.examples, state.correct / state.examples);
      }
      const every = this.options.checkpointEverySteps;
      if (every > 0 && this.stepCount % every === 0) await this.saveCheckpoint('every --checkpoint-every-steps');
    }

    // Taken before the evaluation, which can take longer than a stop may wait.
    await this.saveCheckpoint(plan.done ? 'epoch end' : 'training end');
    const elapsedSeconds = this.epochSeconds(state);
    const test = await this.untilStopped(this.evaluateOnTestSet(epoch));
    const summary: EpochSummary = {
      epoch,
      epochs: this.options.epochs,
      steps: state.steps,
      trainLoss: state.lossSum / state.examples,
      trainAccuracy: state.correct / state.examples,
      testLoss: test.loss,
      testAccuracy: test.accuracy,
      imagesPerSecond: state.examples / elapsedSeconds,
      elapsedSeconds,
      samples: ledger.summary(),
    };
    this.reportEpoch(summary, plan.done);
    return summary;
  }

  /** Returns the state of a new epoch, or of the resumed one with its position, ledger and sums. */
  private startEpoch(epoch: number, train: Split): EpochState {
    const resumed = this.resumedFrom?.progress.epoch === epoch ? this.resumedFrom.progress : undefined;
    this.resumedFrom = undefined;
    const plan = new EpochPlan(epoch, train.count, this.options.seed, resumed?.position ?? 0);
    this.epochState = {
      epoch,
      plan,
      ledger: resumed ? SampleLedger.fromCounts(resumed.ledgerCounts) : new SampleLedger(train.count),
      position: plan.position,
      steps: resumed?.steps ?? 0,
      lossSum: resumed?.lossSum ?? 0,
      correct: resumed?.correct ?? 0,
      examples: resumed?.examples ?? 0,
      elapsedBefore: resumed?.elapsedSeconds ?? 0,
      startedAt: performance.now(),
    };
    return this.epochState;
  }

  private epochSeconds(state: EpochState): number {
    return state.elapsedBefore + (performance.now() - state.startedAt) / 1000;
  }

  private async evaluateOnTestSet(epoch: number): Promise<EvaluationResult> {
    const last = epoch === this.options.epochs || this.reachedMaxSteps();
    if (!this.options.evaluateEveryEpoch && !last) return { loss: Number.NaN, accuracy: Number.NaN, count: 0 };
    const { test } = this.dataset!;
    this.syncModel();
    const result = await evaluateInSlices(this.model!, { images: test.images, labels: test.labels, count: test.count }, 10, Math.min(100, this.options.heartbeatMs / 4));
    this.metrics.testAccuracy.set(result.accuracy);
    this.metrics.testLoss.set(result.loss);
    return result;
  }

  /**
   * Runs one step: broadcast the weights, hand out the shards, send each worker the data of
   * its likely shard of the next step, collect and average the gradients, apply the optimizer once.
   */
  private async runStep(epoch: number, ids: Uint32Array, active: WorkerSession[], train: Split, nextIds: Uint32Array): Promise<StepRun> {
    const startedAt = performance.now();
    const step = this.stepCount;
    this.phaseMs = emptyPhaseTimes();
    this.firstRoundTripMs = Infinity;
    let phaseStart = startedAt;
    const endPhase = (phase: StepPhase): void => {
      const now = performance.now();
      this.phaseMs[phase] += now - phaseStart;
      phaseStart = now;
    };

    // Broadcast: one weights frame, encoded once, the same bytes for every worker.
    this.currentWeightsFrame = encodeMessage({ type: 'weights', step, tensors: this.weightTensors(this.weights) });
    endPhase('encode');
    for (const session of active) session.sendFrame(this.currentWeightsFrame);
    endPhase('broadcast');

    // Scatter: each worker gets its shard in a small message of its own.
    const run = new StepRun(
      step,
      epoch,
      splitIntoShards(ids, active.length),
      this.specs,
      (session, shardIds) => this.sendShard(session, step, epoch, shardIds, train),
      this.options.gradientEncoding,
    );
    this.currentStep = run;
    run.assign(active);
    // Prefetch: the next step's data travels while the workers compute, so its shards need none.
    // Its time counts as scatter.
    if (nextIds.length > 0 && !this.reachedMaxSteps(step + 1)) this.sendPrefetches(step + 1, nextIds, active, train);
    endPhase('scatter');
    try {
      await this.waitForStep(run);
    } finally {
      this.currentStep = undefined;
    }
    endPhase('wait');
    // A skipped step still uses up its number, so that gradients still in flight for it
    // arrive as stale instead of being taken for the next step.
    if (run.skipped) {
      this.stepCount++;
      this.skipStep(run);
      return run;
    }
    this.skippedInARow = 0;

    // Update: the weighted mean gradient, applied once.
    const lr = this.stepLearningRate(active.length, step);
    const average = run.accumulator.average();
    endPhase('average');
    this.optimizer!.apply(this.weights, average, lr);
    endPhase('optimizer');
    this.stepCount++;
    this.metrics.steps.inc();
    this.metrics.examples.inc(run.accumulator.count);
    this.metrics.trainLoss.set(run.lossSum / run.accumulator.count);
    this.metrics.stepDuration.observe((performance.now() - startedAt) / 1000);
    this.observePhases();
    this.reportStraggler(run);
    this.emit('step', { step, epoch, examples: run.accumulator.count, loss: run.lossSum / run.accumulator.count, lr });
    return run;
  }

  /**
   * Waits for a step's gradients. A shard given back by a lost worker goes to an idle
   * active worker. When no worker is left, the first one to become ready joins this step.
   */
  private async waitForStep(run: StepRun): Promise<void> {
    let settled = false;
    const finished = run.finished.finally(() => (settled = true));
    while (!settled) {
      this.expireLateShards(run);
      run.assign(this.membership.active());
      if (run.hasUnassigned && this.membership.active().length === 0) this.admitIntoRunningStep(run);
      if (this.stopRequest) this.abandonStepIfStuck(run, this.stopRequest.at);
      const recheckMs = this.stopRequest ? 100 : Math.min(1_000, this.options.stepTimeoutMs / 2);
      await Promise.race([finished, this.membership.changed(recheckMs)]);
    }
    await finished;
  }

  /**
   * During a stop, abandons the running step, without applying it, once it has had
   * STOP_STEP_GRACE_MS to finish, or at once when no worker is left to finish it.
   */
  private abandonStepIfStuck(run: StepRun, stopAt: number): void {
    const waitedMs = performance.now() - stopAt;
    const noWorkers = this.membership.active().length === 0;
    if (waitedMs < STOP_STEP_GRACE_MS && !noWorkers) return;
    const cause = noWorkers ? 'no worker is left to finish it' : `it did not finish within ${STOP_STEP_GRACE_MS} ms`;
    this.log.warn('step abandoned without being applied: stopping', { step: run.step, reason: cause });
    run.abort(new TrainingStoppedError(`${this.stopRequest!.reason}; step ${run.step} was abandoned because ${cause}`));
  }

  /**
   * Returns the learning rate of this step, from the base --lr, the workers the step
   * started with and warm-up. A step whose shard was taken over by another worker keeps
   * the rate it started with, because its global batch is unchanged.
   */
  private stepLearningRate(activeWorkers: number, step: number): number {
    const lr = learningRate(this.options, activeWorkers, step);
    this.metrics.learningRate.set(lr);
    if (this.options.lrScaling === 'linear' && activeWorkers !== this.lastScaledWorkers) {
      if (this.lastScaledWorkers !== undefined) this.log.info('learning rate rescaled for the active workers', { step, activeWorkers, lr });
      this.lastScaledWorkers = activeWorkers;
    }
    return lr;
  }

  private skipStep(run: StepRun): void {
    this.skippedInARow++;
    this.metrics.skippedSteps.inc();
    this.log.warn('step skipped: its update is not applied', { step: run.step, reason: run.skipped, skippedInARow: this.skippedInARow });
    if (this.skippedInARow >= this.options.maxSkippedSteps) {
      throw new TrainingDivergedError(
        `training stopped: ${this.skippedInARow} step${this.skippedInARow === 1 ? ' was' : 's in a row were'} skipped because the gradients were not finite, so the model diverged; ` +
          'lower --lr and start again',
      );
    }
  }

  /**
   * Records the phases of an applied step. Gradients are decoded and accepted while the
   * coordinator waits, so that time is taken out of `wait` to keep the phases disjoint.
   */
  private observePhases(): void {
    const phases = this.phaseMs;
    phases.wait = Math.max(0, phases.wait - phases.decode - phases.accept);
    for (const phase of STEP_PHASES) this.metrics.stepPhase.observe({ phase }, phases[phase] / 1000);
  }

  /**
   * Counts the worker whose gradient came in last, and logs at debug level the step's
   * phase times and the first and last gradient round trips, in milliseconds.
   */
  private reportStraggler(run: StepRun): void {
    const slowest = run.slowest;
    if (!slowest) return;
    this.metrics.slowestWorker.inc({ worker: slowest.session.workerName });
    const phasesMs = Object.fromEntries(STEP_PHASES.map((phase) => [phase, Number(this.phaseMs[phase].toFixed(3))]));
    this.log.debug('step applied', {
      step: run.step,
      slowestWorker: slowest.session.workerName,
      computeMs: Math.round(slowest.computeMs),
      transferMs: Math.round(Math.max(0, slowest.roundTripMs - slowest.computeMs)),
      firstRoundTripMs: Number(this.firstRoundTripMs.toFixed(3)),
      lastRoundTripMs: Number(slowest.roundTripMs.toFixed(3)),
      slowestComputeMs: Number(slowest.computeMs.toFixed(3)),
      phasesMs,
    });
  }

  /**
   * Gives the shards of workers past the step deadline to other workers. A worker that
   * misses MAX_CONSECUTIVE_TIMEOUTS deadlines in a row is disconnected.
   */
  private expireLateShards(run: StepRun): void {
    for (const session of run.expire(this.options.stepTimeoutMs)) {
      session.consecutiveTimeouts++;
      this.metrics.stepTimeouts.inc({ worker: session.workerName });
      const context = { workerId: session.workerId, worker: session.workerName, step: run.step, stepTimeoutMs: this.options.stepTimeoutMs, missedInARow: session.consecutiveTimeouts };
      if (session.consecutiveTimeouts < MAX_CONSECUTIVE_TIMEOUTS) {
        this.log.warn('straggler missed the step deadline; its shard goes to another worker', context);
        continue;
      }
      this.log.warn('straggler missed the step deadline too often; dropping it', context);
      session.terminate(`step timeout: ${MAX_CONSECUTIVE_TIMEOUTS} deadlines missed in a row`);
    }
  }

  private admitIntoRunningStep(run: StepRun): void {
    for (const session of this.membership.admitWaiting(run.step)) session.sendFrame(this.currentWeightsFrame!);
    this.metrics.activeWorkers.set(this.membership.active().length);
    run.assign(this.membership.active());
  }

  /**
   * At a step boundary, admits every ready worker. Below --min-workers it pauses, saying
   * what it waits for, until enough workers are ready again.
   */
  private async admitWaitingWorkers(): Promise<WorkerSession[]> {
    const { minWorkers } = this.options;
    if (this.membership.readyCount() < minWorkers) {
      this.log.warn('training paused: too few workers', { active: this.membership.active().length, minWorkers, step: this.stepCount });
      await this.untilStopped(this.membership.waitFor(minWorkers, `to resume training (--min-workers ${minWorkers})`));
      this.log.info('training resumed', { ready: this.membership.readyCount(), step: this.stepCount });
    }
    this.membership.admitWaiting(this.stepCount);
    const active = this.membership.active();
    this.metrics.activeWorkers.set(active.length);
    return active;
  }

  /**
   * Sends a shard without its data when this connection was sent a prefetch of exactly
   * these ids for this step. Otherwise the shard carries its data, as after a membership
   * change, for a shard taken over from another worker, and at the first step of an epoch or connection.
   */
  private sendShard(session: WorkerSession, step: number, epoch: number, ids: Uint32Array, train: Split): void {
    const prefetch = this.prefetches.get(session);
    // A worker keeps only its newest prefetch, and a prefetch for a later step outlives this shard.
    if (prefetch && prefetch.step <= step) this.prefetches.delete(session);
    if (prefetch?.step === step && sameSampleIds(prefetch.ids, ids)) {
      this.metrics.prefetchHits.inc();
      session.send({ type: 'shard', step, epoch, sampleIds: ids, prefetched: true });
      return;
    }
    this.metrics.prefetchMisses.inc();
    session.send({ type: 'shard', step, epoch, sampleIds: ids, ...this.shardData(train, ids) });
  }

  /**
   * Sends each active worker the data of the shard it gets at `step` when the same workers
   * are active then. StepRun.assign gives the i-th shard to the i-th idle active worker, so
   * the split and the order here are those of that step.
   */
  private sendPrefetches(step: number, ids: Uint32Array, active: WorkerSession[], train: Split): void {
    const shards = splitIntoShards(ids, active.length);
    shards.forEach((shardIds, i) => {
      const session = active[i];
      if (session.state !== 'active') return;
      session.send({ type: 'prefetch', step, sampleIds: shardIds, ...this.shardData(train, shardIds) });
      this.prefetches.set(session, { step, ids: shardIds });
    });
  }

  private shardData(train: Split, ids: Uint32Array): { images: Uint8Array; labels: Uint8Array } {
    const pixels = train.rows * train.cols;
    const images = new Uint8Array(ids.length * pixels);
    const labels = new Uint8Array(ids.length);
    ids.forEach((id, i) => {
      images.set(train.images.subarray(id * pixels, (id + 1) * pixels), i * pixels);
      labels[i] = train.labels[id];
    });
    return { images, labels };
  }

  private weightTensors(weights: Float32Array[]): WireTensor[] {
    return weights.map((data, t) => ({ name: this.specs[t].name, shape: this.specs[t].shape, dtype: 'float32', data }));
  }

  private readWeights(): Float32Array[] {
    return this.weights.map((weight) => weight.slice());
  }

  /** Copies the trained weights into the tfjs model, before it evaluates or is saved. */
  private syncModel(): void {
    this.variables.forEach((variable, t) => tf.tidy(() => variable.assign(tf.tensor(this.weights[t], variable.shape, 'float32'))));
  }

  // ---------------------------------------------------------------------------
  // Messages

  private onMessage(session: WorkerSession, message: WorkerMessage): void {
    try {
      this.handle(session, message);
    } catch (caught) {
      const error = caught instanceof SessionStateError ? new ProtocolError('UNEXPECTED_MESSAGE', `unexpected "${message.type}" message: ${caught.message}`) : caught;
      if (!(error instanceof ProtocolError)) throw error;
      this.onRejected(session, error);
      if (error.code === 'UNEXPECTED_MESSAGE') session.closeWithError(error.code, error.message, CLOSE_CODES.malformedMessage);
    }
    this.membership.notify();
  }

  private handle(session: WorkerSession, message: WorkerMessage): void {
    switch (message.type) {
      case 'hello':
        return this.onHello(session, message);
      case 'ready':
        session.transition('ready');
        this.log.info('worker ready', { workerId: session.workerId, worker: session.workerName, selfCheckMs: Math.round(message.selfCheckMs) });
        return;
      case 'gradient':
        return this.onGradient(session, message);
      case 'error':
        this.log.error('worker reported an error', { workerId: session.workerId, worker: session.workerName, code: message.code, error: message.message });
        return;
    }
  }

  private onHello(session: WorkerSession, message: Extract<WorkerMessage, { type: 'hello' }>): void {
    session.transition('hello');
    session.workerName = message.workerName || session.workerId;
    session.backend = message.backend;
    session.gradfleetVersion = message.gradfleetVersion;
    this.metrics.workerInfo.set({ worker: session.workerName, backend: message.backend, version: message.gradfleetVersion }, 1);
    this.log.info('worker connected', { workerId: session.workerId, worker: session.workerName, backend: message.backend, version: message.gradfleetVersion });
    const [rows, cols, channels] = this.model!.inputs[0].shape.slice(1) as number[];
    session.send({
      type: 'welcome',
      protocolVersion: PROTOCOL_VERSION,
      workerId: session.workerId,
      modelTopology: modelTopology(this.model!),
      parameters: this.specs,
      inputShape: [rows, cols, channels],
      numClasses: 10,
      heartbeatMs: this.options.heartbeatMs,
      maxMessageBytes: this.limits.send,
      // Options built by hand (tests, the programmatic API) may leave it out.
      gradientEncoding: this.options.gradientEncoding ?? 'fp32',
    });
  }

  private onGradient(session: WorkerSession, message: Extract<WorkerMessage, { type: 'gradient' }>): void {
    const run = this.currentStep;
    if (!run) throw new ProtocolError('STALE_GRADIENT', `gradient for step ${message.step} rejected: no step is in progress`);
    // The server calls onReceivedBytes right before it decodes a frame and onMessage right after.
    const decodedAt = performance.now();
    this.phaseMs.decode += decodedAt - this.frameReceivedAt;
    let accepted;
    try {
      accepted = run.accept(session, message);
    } finally {
      this.phaseMs.accept += performance.now() - decodedAt;
      run.assign(this.membership.active());
    }
    this.firstRoundTripMs = Math.min(this.firstRoundTripMs, accepted.roundTripMs);
    const labels = { worker: session.workerName };
    session.consecutiveTimeouts = 0;
    this.metrics.workerCompute.observe(labels, accepted.computeMs / 1000);
    this.metrics.workerWait.observe(labels, Math.max(0, accepted.roundTripMs - accepted.computeMs) / 1000);
  }

  private onRejected(session: WorkerSession, error: ProtocolError): void {
    this.metrics.rejectedMessages.inc({ reason: error.code });
    this.log.warn('message from worker rejected', { workerId: session.workerId, worker: session.workerName, code: error.code, error: error.message });
  }

  private onClose(session: WorkerSession, code: number, reason: string): void {
    if (session.workerName) this.metrics.workerInfo.remove({ worker: session.workerName, backend: session.backend, version: session.gradfleetVersion });
    const lost = code === 1006 && !reason ? 'connection lost without a closing handshake' : reason;
    const context = { workerId: session.workerId, worker: session.workerName, code, reason: lost };
    // A worker stopped by its operator says so with its close code; its shard goes to the others as for any lost worker.
    if (code === CLOSE_CODES.workerLeaving) this.log.info('worker left', context);
    // A connection that never sent an accepted hello was logged when it was rejected, with the reason.
    else if (!session.workerName) this.log.debug('connection closed before its hello was accepted', context);
    else if (!this.closed && !this.stopRequest) this.log.warn('worker disconnected', context);
    if (session.workerName && !this.closed && !this.stopRequest && code !== CLOSE_CODES.trainingComplete) {
      this.metrics.workerDisconnects.inc({ worker: session.workerName, reason: disconnectReason(code, session.closeReason) });
    }
    const run = this.currentStep;
    if (run) {
      run.release(session);
      run.assign(this.membership.active());
    }
    this.metrics.activeWorkers.set(this.membership.active().length);
    this.membership.notify();
  }

  // ---------------------------------------------------------------------------
  // Checkpoints and stopping

  /**
   * With --resume, loads the newest valid checkpoint in --checkpoint-dir into the weights,
   * the optimizer and the step count, or starts fresh when the folder has none. Without
   * --resume, raises when the folder already contains checkpoints, because new ones would be
   * mixed with (and pruned against) those of the other run.
   */
  private async restoreCheckpoint(train: Split): Promise<void> {
    const folder = this.options.checkpointDir;
    if (folder === undefined) return;
    try {
      await mkdir(folder, { recursive: true });
    } catch (error) {
      throw new CheckpointError(`cannot create --checkpoint-dir ${folder}: ${(error as Error).message}; pass a folder this user can write to`);
    }
    if (!this.options.resume) {
      const [newest] = await listCheckpoints(folder);
      if (newest) {
        throw new OptionError(
          `--checkpoint-dir ${folder} already contains checkpoints (newest: ${newest}); ` +
            'pass --resume to continue that run, or give an empty folder to start a new one',
        );
      }
      return;
    }
    const { found, skipped } = await findLatestCheckpoint(folder, (path, reason) => this.log.warn('checkpoint skipped: it is not valid', { path, reason }));
    if (!found && skipped > 0) {
      throw new CheckpointError(`cannot resume: none of the ${skipped} checkpoint files in ${folder} is valid (see the warnings above); move them away to start a new run`);
    }
    if (!found) {
      this.log.info('no checkpoint found; starting fresh', { checkpointDir: folder });
      return;
    }
    const { path, checkpoint } = found;
    const differences = optionDifferences(checkpoint.options, this.options);
    if (differences.length > 0) throw new OptionError(describeDifferences(path, differences));
    this.checkCheckpointFits(path, checkpoint, train);

    this.weights = checkpoint.weights.map((tensor) => tensor.data);
    this.optimizer!.importState(checkpoint.optimizer);
    this.stepCount = checkpoint.step;
    this.skippedInARow = checkpoint.skippedInARow;
    this.lastCheckpointStep = checkpoint.step;
    this.resumedFrom = checkpoint;
    this.metrics.lastCheckpointStep.set(checkpoint.step);
    const { epoch, position } = checkpoint.progress;
    this.log.info('resuming from checkpoint', { path, step: checkpoint.step, epoch, position, of: train.count, written: checkpoint.createdAt });
  }

  /** Raises when a checkpoint does not fit this model or training set, though its options match. */
  private checkCheckpointFits(path: string, checkpoint: Checkpoint, train: Split): void {
    const saved = checkpoint.weights.map((tensor) => `${tensor.name}[${tensor.shape}]`).join(', ');
    const expected = this.specs.map((spec) => `${spec.name}[${spec.shape}]`).join(', ');
    if (saved !== expected) throw new CheckpointError(`cannot resume from ${path}: it contains the weights ${saved}, but the model has ${expected}`);
    const { ledgerCounts, position } = checkpoint.progress;
    if (ledgerCounts.length !== train.count || position > train.count) {
      throw new CheckpointError(
        `cannot resume from ${path}: it was taken on ${ledgerCounts.length} training images, and ${train.count} are loaded now; ` +
          'pass the --data-dir and --train-limit of that run',
      );
    }
  }

  /** Writes a checkpoint of the state after the last finished step, unless one exists for that step. */
  private async saveCheckpoint(reason: string): Promise<void> {
    const folder = this.options.checkpointDir;
    if (folder === undefined || !this.epochState || this.stepCount === this.lastCheckpointStep) return;
    const started = performance.now();
    const checkpoint = this.snapshot(this.epochState);
    let written: { path: string; bytes: number };
    try {
      written = await writeCheckpoint(folder, checkpoint, this.options.keepCheckpoints);
    } catch (error) {
      throw new CheckpointError(
        `cannot write a checkpoint to ${folder}: ${(error as Error).message}; fix the folder (free space, permissions), then restart with --resume`,
      );
    }
    this.lastCheckpointStep = this.stepCount;
    this.metrics.checkpointsWritten.inc();
    this.metrics.lastCheckpointStep.set(this.stepCount);
    this.log.info('checkpoint written', {
      path: written.path,
      step: this.stepCount,
      epoch: this.epochState.epoch,
      reason,
      bytes: written.bytes,
      ms: Math.round(performance.now() - started),
    });
  }

  private snapshot(state: EpochState): Checkpoint {
    const { rows, cols } = this.dataset!.train;
    const progress: EpochProgress = {
      epoch: state.epoch,
      position: state.position,
      ledgerCounts: state.ledger.counts(),
      steps: state.steps,
      lossSum: state.lossSum,
      correct: state.correct,
      examples: state.examples,
      elapsedSeconds: this.epochSeconds(state),
    };
    return {
      formatVersion: CHECKPOINT_FORMAT_VERSION,
      gradfleetVersion: GRADFLEET_VERSION,
      createdAt: new Date().toISOString(),
      model: this.options.model,
      inputShape: [rows, cols, 1],
      numClasses: 10,
      weights: this.specs.map((spec, t) => ({ name: spec.name, shape: spec.shape, data: this.weights[t] })),
      optimizer: this.optimizer!.exportState(),
      step: this.stepCount,
      skippedInARow: this.skippedInARow,
      progress,
      seed: this.options.seed,
      options: recordOptions(this.options),
    };
  }

  /**
   * Asks a running `run` to stop at the next step boundary (see STOP_STEP_GRACE_MS), write
   * a checkpoint and tell the workers to reconnect later. Calling it again does nothing.
   */
  requestStop(reason: string): void {
    if (this.stopRequest) return;
    this.stopRequest = { reason, at: performance.now() };
    this.log.info('stopping at the next step boundary', { reason, step: this.stepCount, stepRunning: this.currentStep !== undefined });
    this.rejectStop(new TrainingStoppedError(reason));
    this.membership.notify();
  }

  /** Resolves or rejects like `promise`, or rejects with TrainingStoppedError when a stop is requested first. */
  private untilStopped<T>(promise: Promise<T>): Promise<T> {
    // The promise that loses the race may still reject later (a wait ends when the coordinator closes).
    promise.catch(() => undefined);
    return Promise.race([promise, this.stopSignal]);
  }

  /** Saves the state after the last finished step and sends every worker away with COORDINATOR_SHUTDOWN. */
  private async stopAtStepBoundary(reason: string): Promise<void> {
    if (this.options.checkpointDir === undefined) {
      this.log.warn('stopped without --checkpoint-dir: the progress of this run is not saved', { step: this.stepCount, reason });
    } else if (this.stepCount === this.lastCheckpointStep) {
      this.log.info('stopped; the newest checkpoint already contains the last step', { step: this.stepCount, checkpointDir: this.options.checkpointDir });
    } else {
      await this.saveCheckpoint('stop');
    }
    const message = 'the coordinator is stopping; keep reconnecting, and training continues when it is started again with --resume';
    for (const session of this.server.sessions) session.closeWithError('COORDINATOR_SHUTDOWN', message, CLOSE_CODES.coordinatorShutdown);
    // Closing the server terminates connections at once, which would drop the close frames just queued.
    const deadline = performance.now() + STOP_CLOSE_WAIT_MS;
    while (this.server.sessions.size > 0 && performance.now() < deadline) await this.membership.changed(50);
    this.log.info('coordinator stopped', { step: this.stepCount, reason });
  }

  // ---------------------------------------------------------------------------
  // Reporting and shutdown

  private logProgress(epoch: number, steps: number, loss: number, accuracy: number): void {
    const every = this.options.logEverySteps;
    if (every > 0 && steps % every === 0) this.log.info('progress', { epoch, step: this.stepCount, loss, accuracy });
  }

  private reportEpoch(summary: EpochSummary, complete: boolean): void {
    const width = String(summary.epochs).length;
    const text =
      `Epoch ${String(summary.epoch).padStart(width)}/${summary.epochs}${complete ? '' : ' (partial)'}` +
      ` - ${summary.elapsedSeconds.toFixed(1)}s - ${summary.steps} steps` +
      ` - loss: ${summary.trainLoss.toFixed(4)} - accuracy: ${summary.trainAccuracy.toFixed(4)}` +
      ` - test_loss: ${summary.testLoss.toFixed(4)} - test_accuracy: ${summary.testAccuracy.toFixed(4)}` +
      ` - ${Math.round(summary.imagesPerSecond)} images/s`;
    this.log.report(text, 'epoch complete', { ...summary, complete });
  }

  private finishWorkers(): void {
    for (const session of this.server.sessions) {
      session.send({ type: 'done', reason: 'training complete' });
      session.close(CLOSE_CODES.trainingComplete, 'training complete');
    }
  }

  /** Releases the servers, the model and the optimizer; safe to call twice. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.currentStep?.abort(new CoordinatorClosedError('the coordinator was stopped during a step'));
    this.membership.close();
    await this.server.close();
    await this.metricsServer.close();
    this.model?.dispose();
  }
}
