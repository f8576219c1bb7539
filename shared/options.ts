import type { GradientEncoding } from './encoding.js';
import type { LogFormat, LogLevel } from './log.js';

/** The compute backends a process can ask for. `auto` picks the fastest one that loads. */
export const BACKEND_CHOICES = ['auto', 'tensorflow', 'wasm', 'cpu'] as const;
export type BackendChoice = (typeof BACKEND_CHOICES)[number];

/** The models gradfleet can train, by the name given to `--model`. */
export const MODEL_NAMES = ['cnn', 'mlp'] as const;
export type ModelName = (typeof MODEL_NAMES)[number];

export const OPTIMIZER_NAMES = ['adam', 'sgd'] as const;
export type OptimizerName = (typeof OPTIMIZER_NAMES)[number];

/**
 * How the learning rate follows the global batch: `none` keeps `--lr`; `linear` multiplies
 * it by the global batch over the planned one (`--batch-size-per-worker` × `--workers`).
 */
export const LR_SCALING_CHOICES = ['none', 'linear'] as const;
export type LrScaling = (typeof LR_SCALING_CHOICES)[number];

/** Options every gradfleet process takes. */
export interface CommonOptions {
  backend: BackendChoice;
  logFormat: LogFormat;
  logLevel: LogLevel;
}

/** Everything that shapes a coordinator and its training run. */
export interface CoordinatorOptions extends CommonOptions {
  /** Address the WebSocket and metrics servers listen on; 0.0.0.0 accepts workers from other hosts. */
  host: string;
  /** Shared secret every worker must send in `hello`; any worker may join when unset. */
  token?: string;
  /** PEM certificate chain; with `tlsKey` the coordinator serves wss:// instead of ws://. */
  tlsCert?: string;
  /** PEM private key of `tlsCert`. */
  tlsKey?: string;
  /** Allows a non-loopback `host` without a token and TLS, for trusted private networks. */
  insecure: boolean;
  /** WebSocket port for workers; 0 picks any free port. */
  port: number;
  /** Port of the Prometheus `/metrics` endpoint; 0 picks any free port. */
  metricsPort: number;
  /** Workers that must have joined before the first step. */
  workers: number;
  /** Minimum number of active workers for a step; below it the coordinator pauses at the next step boundary. */
  minWorkers: number;
  model: ModelName;
  optimizer: OptimizerName;
  /** Base learning rate; the rate applied also depends on `lrScaling` and `warmupSteps`. */
  lr: number;
  /** Whether the learning rate is scaled with the global batch as workers come and go. */
  lrScaling: LrScaling;
  /** Steps over which the learning rate ramps up linearly to its full value; 0 turns warm-up off. */
  warmupSteps: number;
  /** SGD momentum; 0 is plain SGD. Rejected with Adam, which has its own moments. */
  momentum: number;
  /** Global batch per step, split among the active workers; `DEFAULT_BATCH_SIZE` when unset. */
  batchSize?: number;
  /** Per-worker batch; when set, the global batch is this × the active workers. */
  batchSizePerWorker?: number;
  epochs: number;
  /** Seeds the initial weights and every epoch's shuffle. */
  seed: number;
  /** Folder with the four standard MNIST-format IDX files; the bundled MNIST when unset. */
  dataDir?: string;
  /** Use only the first N training images (quick runs and tests). */
  trainLimit?: number;
  /** Use only the first N test images. */
  testLimit?: number;
  /** Stop after this many steps in total, even in the middle of an epoch. */
  maxSteps?: number;
  /** Folder where the trained model is saved in the TensorFlow.js Layers format. */
  output: string;
  /** Print a progress line every N steps; 0 prints only the per-epoch lines. */
  logEverySteps: number;
  /** Skip the test-set evaluation after each epoch (the last one is always evaluated). */
  evaluateEveryEpoch: boolean;
  /** Interval of WebSocket pings to each worker, in milliseconds; a peer that misses two is dropped. */
  heartbeatMs: number;
  /** Skipped steps in a row (non-finite gradients) after which training stops as diverged. */
  maxSkippedSteps: number;
  /** Largest message accepted from a worker, in bytes; derived from the model when unset. */
  maxMessageBytes?: number;
  /** Time a worker has to return a shard's gradient, in milliseconds, before the shard goes to another worker. */
  stepTimeoutMs: number;
  /** Folder the checkpoints are written to; no checkpoints when unset. */
  checkpointDir?: string;
  /** Steps between checkpoints; 0 writes one only at the end of each epoch (and when stopped by a signal). */
  checkpointEverySteps: number;
  /** Newest checkpoints kept in `checkpointDir`; older ones are deleted. */
  keepCheckpoints: number;
  /** Continue from the newest valid checkpoint in `checkpointDir`; start fresh when it has none. */
  resume: boolean;
  /** Encoding of the workers' gradients on the wire (shared/encoding.ts); weights always travel as fp32. */
  gradientEncoding: GradientEncoding;
}

export interface WorkerOptions extends CommonOptions {
  /** The coordinator's WebSocket URL, such as ws://10.0.0.5:7070. */
  coordinator: string;
  /** Shared secret sent in `hello`; must equal the coordinator's `--token`. */
  token?: string;
  /** PEM certificate to trust for a wss:// coordinator: a private CA or the coordinator's self-signed certificate. */
  ca?: string;
  /** Allows sending the token over ws:// to a host other than this machine. */
  insecure: boolean;
  /** Name shown in the coordinator's logs and metrics. */
  name: string;
  /** Address of the worker's metrics server. */
  metricsHost: string;
  /** Port of the worker's `/metrics`; 0 picks any free port. */
  metricsPort: number;
  /** How long to keep trying to reach the coordinator before giving up, in milliseconds. */
  connectTimeoutMs: number;
}

/** The Keras reference's batch, used when neither batch option is given. */
export const DEFAULT_BATCH_SIZE = 64;

export const COMMON_DEFAULTS: CommonOptions = {
  backend: 'auto',
  logFormat: 'text',
  logLevel: 'info',
};

export const COORDINATOR_DEFAULTS: CoordinatorOptions = {
  ...COMMON_DEFAULTS,
  host: '127.0.0.1',
  insecure: false,
  port: 7070,
  metricsPort: 9400,
  workers: 2,
  minWorkers: 1,
  model: 'cnn',
  optimizer: 'adam',
  lr: 0.001,
  lrScaling: 'none',
  warmupSteps: 0,
  momentum: 0,
  epochs: 10,
  seed: 42,
  output: 'gradfleet-model',
  logEverySteps: 0,
  evaluateEveryEpoch: true,
  heartbeatMs: 5_000,
  stepTimeoutMs: 60_000,
  maxSkippedSteps: 3,
  checkpointEverySteps: 0,
  keepCheckpoints: 3,
  resume: false,
  gradientEncoding: 'fp32',
};

export const WORKER_DEFAULTS: WorkerOptions = {
  ...COMMON_DEFAULTS,
  coordinator: 'ws://127.0.0.1:7070',
  insecure: false,
  name: '',
  metricsHost: '127.0.0.1',
  metricsPort: 9401,
  connectTimeoutMs: 120_000,
};

/** Raised for an option value or a combination of options that cannot work. */
export class OptionError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'OptionError';
  }
}

/** Checks the rules between coordinator options that no single option's type captures. */
export function validateCoordinatorOptions(options: CoordinatorOptions): void {
  if (options.optimizer === 'adam' && options.momentum !== 0) {
    throw new OptionError(`--momentum ${options.momentum} applies only to --optimizer sgd; Adam keeps its own moment estimates`);
  }
  if (options.minWorkers > options.workers) {
    throw new OptionError(`--min-workers ${options.minWorkers} exceeds --workers ${options.workers}; training could never start. Lower --min-workers or raise --workers`);
  }
  if (options.lrScaling === 'linear' && options.batchSizePerWorker === undefined) {
    throw new OptionError(
      '--lr-scaling linear needs --batch-size-per-worker: with a fixed global batch the learning rate has nothing to follow. ' +
        'Pass --batch-size-per-worker, or use --lr-scaling none',
    );
  }
  if (options.checkpointDir === undefined && options.resume) {
    throw new OptionError('--resume needs --checkpoint-dir: pass --checkpoint-dir DIR, the folder the checkpoints of the run are written to');
  }
  if (options.checkpointDir === undefined && options.checkpointEverySteps > 0) {
    throw new OptionError(`--checkpoint-every-steps ${options.checkpointEverySteps} needs --checkpoint-dir: pass --checkpoint-dir DIR to say where checkpoints go`);
  }
  if (options.batchSizePerWorker !== undefined && options.batchSize !== undefined) {
    throw new OptionError(
      `--batch-size ${options.batchSize} and --batch-size-per-worker ${options.batchSizePerWorker} were both given; ` +
        'pass only one: the global batch, or the batch of each worker',
    );
  }
}
