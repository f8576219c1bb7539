import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { SECONDS_BUCKETS } from '../shared/metrics-server.js';


/** Phases of a step that the coordinator times, the `phase` label of gradfleet_step_phase_seconds. */
export const STEP_PHASES = ['encode', 'broadcast', 'scatter', 'wait', 'decode', 'accept', 'average', 'optimizer'] as const;
export type StepPhase = (typeof STEP_PHASES)[number];

/** Buckets of the step phases, in seconds: most phases take well under a millisecond. */
const PHASE_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** All metrics of one coordinator, in a registry of its own. */
export class CoordinatorMetrics {
  readonly registry = new Registry();

  readonly stepDuration = new Histogram({
    name: 'gradfleet_step_duration_seconds',
    help: 'Wall time of one step, from sending the weights to applying the update, in seconds.',
    buckets: SECONDS_BUCKETS,
    registers: [this.registry],
  });

  readonly stepPhase = new Histogram({
    name: 'gradfleet_step_phase_seconds',
    help:
      'Coordinator time per step in each phase, in seconds: encode (the weights message), broadcast (writing it to the workers), ' +
      'scatter (building and sending the shards), wait (for gradients, net of decode and accept), decode (gradient messages), ' +
      'accept (checking and accumulating gradients), average and optimizer.',
    labelNames: ['phase'],
    buckets: PHASE_BUCKETS,
    registers: [this.registry],
  });

  readonly workerCompute = new Histogram({
    name: 'gradfleet_worker_compute_seconds',
    help: 'Time a worker reported spending on computing its shard gradient, in seconds.',
    labelNames: ['worker'],
    buckets: SECONDS_BUCKETS,
    registers: [this.registry],
  });

  readonly workerWait = new Histogram({
    name: 'gradfleet_worker_wait_seconds',
    help: 'Time from sending a shard to receiving its gradient, minus the reported compute time, in seconds (transfer and queueing).',
    labelNames: ['worker'],
    buckets: SECONDS_BUCKETS,
    registers: [this.registry],
  });

  readonly examples = new Counter({
    name: 'gradfleet_examples_total',
    help: 'Training examples whose gradient went into an applied update.',
    registers: [this.registry],
  });

  readonly steps = new Counter({
    name: 'gradfleet_steps_total',
    help: 'Optimizer updates applied.',
    registers: [this.registry],
  });

  readonly epoch = new Gauge({
    name: 'gradfleet_epoch',
    help: 'Current epoch, counted from 1.',
    registers: [this.registry],
  });

  readonly trainLoss = new Gauge({
    name: 'gradfleet_train_loss',
    help: 'Mean training loss (categorical cross-entropy) of the last step.',
    registers: [this.registry],
  });

  readonly learningRate = new Gauge({
    name: 'gradfleet_learning_rate',
    help: 'Learning rate of the last step, after scaling with the global batch and warm-up.',
    registers: [this.registry],
  });

  readonly testAccuracy = new Gauge({
    name: 'gradfleet_test_accuracy_ratio',
    help: 'Test accuracy after the last completed epoch, as a ratio from 0 to 1.',
    registers: [this.registry],
  });

  readonly testLoss = new Gauge({
    name: 'gradfleet_test_loss',
    help: 'Test loss (categorical cross-entropy) after the last completed epoch.',
    registers: [this.registry],
  });

  constructor() {
    // NaN until the first evaluation, so that a dashboard does not read 0 as a result.
    this.testAccuracy.set(Number.NaN);
    this.testLoss.set(Number.NaN);
    this.lastCheckpointStep.set(-1);
  }

  readonly activeWorkers = new Gauge({
    name: 'gradfleet_active_workers',
    help: 'Workers taking part in steps.',
    registers: [this.registry],
  });

  readonly minWorkers = new Gauge({
    name: 'gradfleet_min_workers',
    help: 'The --min-workers setting: below this many active workers the coordinator pauses training.',
    registers: [this.registry],
  });

  readonly prefetchHits = new Counter({
    name: 'gradfleet_prefetch_hits_total',
    help: 'Shards sent without images and labels, because the worker was sent them in a prefetch.',
    registers: [this.registry],
  });

  readonly prefetchMisses = new Counter({
    name: 'gradfleet_prefetch_misses_total',
    help: 'Shards sent with their images and labels: no prefetch of the same step and sample ids went to that connection.',
    registers: [this.registry],
  });

  readonly sentBytes = new Counter({
    name: 'gradfleet_sent_bytes_total',
    help: 'Bytes of protocol messages sent to workers.',
    registers: [this.registry],
  });

  readonly receivedBytes = new Counter({
    name: 'gradfleet_received_bytes_total',
    help: 'Bytes of protocol messages received from workers.',
    registers: [this.registry],
  });

  readonly rejectedMessages = new Counter({
    name: 'gradfleet_rejected_messages_total',
    help: 'Messages from workers that were rejected, by reason (the protocol error code).',
    labelNames: ['reason'],
    registers: [this.registry],
  });

  readonly rejectedConnections = new Counter({
    name: 'gradfleet_rejected_connections_total',
    help: 'Connections closed before their hello was accepted, by reason: unauthorized (missing or wrong token), hello_timeout or hello_too_big.',
    labelNames: ['reason'],
    registers: [this.registry],
  });

  readonly skippedSteps = new Counter({
    name: 'gradfleet_skipped_steps_total',
    help: 'Steps not applied because one shard gradient was non-finite on two workers.',
    registers: [this.registry],
  });

  readonly slowestWorker = new Counter({
    name: 'gradfleet_step_slowest_worker_total',
    help: 'Steps in which this worker returned its gradient last (the straggler of the step), by worker.',
    labelNames: ['worker'],
    registers: [this.registry],
  });

  readonly workerDisconnects = new Counter({
    name: 'gradfleet_worker_disconnects_total',
    help: 'Workers that left or were dropped during training, by worker and reason (left, heartbeat_timeout, step_timeout, connection_lost, or the protocol error).',
    labelNames: ['worker', 'reason'],
    registers: [this.registry],
  });

  readonly stepTimeouts = new Counter({
    name: 'gradfleet_step_timeouts_total',
    help: 'Shards taken back from a worker because it missed the step deadline (--step-timeout-ms), by worker.',
    labelNames: ['worker'],
    registers: [this.registry],
  });

  readonly checkpointsWritten = new Counter({
    name: 'gradfleet_checkpoints_written_total',
    help: 'Checkpoints written to --checkpoint-dir.',
    registers: [this.registry],
  });

  readonly lastCheckpointStep = new Gauge({
    name: 'gradfleet_last_checkpoint_step',
    help: 'Steps taken when the newest checkpoint was written or resumed from; -1 until there is one.',
    registers: [this.registry],
  });

  readonly workerInfo = new Gauge({
    name: 'gradfleet_worker_info',
    help: 'Set to 1 for each connected worker; the labels carry its backend and gradfleet version.',
    labelNames: ['worker', 'backend', 'version'],
    registers: [this.registry],
  });
}
