import type { Options } from 'yargs';
import { UsageError } from './common.js';
import { GRADIENT_ENCODINGS } from '../shared/encoding.js';
import { LOG_FORMATS, LOG_LEVELS } from '../shared/log.js';
import {
  BACKEND_CHOICES,
  COMMON_DEFAULTS,
  COORDINATOR_DEFAULTS,
  DEFAULT_BATCH_SIZE,
  LR_SCALING_CHOICES,
  MODEL_NAMES,
  OPTIMIZER_NAMES,
  WORKER_DEFAULTS,
} from '../shared/options.js';

/**
 * yargs option tables. Defaults come from the option objects in shared/options.ts, so the
 * help text and the programmatic API cannot disagree.
 */

/** Returns a coerce function that accepts whole numbers from `min` up, naming the flag otherwise. */
function integer(flag: string, min: number): (value: unknown) => number | undefined {
  return (value) => {
    if (value === undefined) return undefined;
    const number = typeof value === 'number' ? value : Number(String(value).trim() || Number.NaN);
    if (!Number.isInteger(number) || number < min) {
      throw new UsageError(`invalid --${flag} ${JSON.stringify(value)}: expected a whole number of at least ${min}`);
    }
    return number;
  };
}

/** Returns a coerce function that accepts finite numbers above `min` (or at `min` when `inclusive`). */
function real(flag: string, min: number, inclusive: boolean): (value: unknown) => number | undefined {
  return (value) => {
    if (value === undefined) return undefined;
    const number = typeof value === 'number' ? value : Number(String(value).trim() || Number.NaN);
    const ok = Number.isFinite(number) && (inclusive ? number >= min : number > min);
    if (!ok) throw new UsageError(`invalid --${flag} ${JSON.stringify(value)}: expected a number ${inclusive ? 'of at least' : 'greater than'} ${min}`);
    return number;
  };
}

/** Momentum of 1 or more makes the velocity grow without bound, so training diverges. */
function momentum(value: unknown): number | undefined {
  const number = real('momentum', 0, true)(value);
  if (number !== undefined && number >= 1) throw new UsageError(`invalid --momentum ${number}: expected a number from 0 up to, but not including, 1`);
  return number;
}

/** An empty token would let any worker that sends an empty token in; it is a usage error. */
function token(value: unknown): string | undefined {
  if (value === undefined) return undefined;
  if (String(value) === '') throw new UsageError('invalid --token: the token is empty; pass a long random secret, such as the output of openssl rand -hex 32');
  return String(value);
}

function port(flag: string): (value: unknown) => number | undefined {
  const check = integer(flag, 0);
  return (value) => {
    const number = check(value);
    if (number !== undefined && number > 65535) throw new UsageError(`invalid --${flag} ${number}: expected a port from 0 to 65535 (0 picks any free port)`);
    return number;
  };
}

// Numeric options have no yargs type: with `type: 'number'` yargs turns "abc" into NaN
// before the coerce function runs, and the error could no longer quote the value typed.
export const COMMON_OPTIONS = {
  backend: { choices: BACKEND_CHOICES, default: COMMON_DEFAULTS.backend, describe: 'Compute backend: auto takes tensorflow (tfjs-node) when it loads, else wasm' },
  'log-format': { choices: LOG_FORMATS, default: COMMON_DEFAULTS.logFormat, describe: 'Log lines for people (text) or one JSON object per line (json)' },
  'log-level': { choices: LOG_LEVELS, default: COMMON_DEFAULTS.logLevel, describe: 'Lowest level of log lines printed' },
} satisfies Record<string, Options>;

export const COORDINATOR_OPTIONS = {
  host: { type: 'string', default: COORDINATOR_DEFAULTS.host, describe: 'Address to listen on for workers and Prometheus; 0.0.0.0 accepts other hosts' },
  token: { type: 'string', coerce: token, describe: 'Shared secret workers must present; set GRADFLEET_TOKEN instead, since ps shows command lines' },
  'tls-cert': { type: 'string', describe: 'PEM certificate (chain) file; with --tls-key, workers connect over wss://' },
  'tls-key': { type: 'string', describe: 'PEM private key file of --tls-cert' },
  insecure: {
    type: 'boolean',
    default: COORDINATOR_DEFAULTS.insecure,
    describe: 'Allow a --host other than loopback without --token and TLS (trusted private networks only)',
  },
  port: { default: COORDINATOR_DEFAULTS.port, coerce: port('port'), describe: 'WebSocket port for workers (0: any free port)' },
  'metrics-port': { default: COORDINATOR_DEFAULTS.metricsPort, coerce: port('metrics-port'), describe: 'Port of the Prometheus /metrics endpoint (0: any free port)' },
  workers: { default: COORDINATOR_DEFAULTS.workers, coerce: integer('workers', 1), describe: 'Workers that must join before the first step' },
  'min-workers': {
    default: COORDINATOR_DEFAULTS.minWorkers,
    coerce: integer('min-workers', 1),
    describe: 'Fewest active workers to train with; below it the coordinator pauses until enough are back',
  },
  model: { choices: MODEL_NAMES, default: COORDINATOR_DEFAULTS.model, describe: 'cnn: the Keras MNIST CNN; mlp: 784-128-10' },
  optimizer: { choices: OPTIMIZER_NAMES, default: COORDINATOR_DEFAULTS.optimizer, describe: 'Optimizer applied by the coordinator' },
  lr: { default: COORDINATOR_DEFAULTS.lr, coerce: real('lr', 0, false), describe: 'Learning rate (the base value when --lr-scaling or --warmup-steps is used)' },
  'lr-scaling': {
    choices: LR_SCALING_CHOICES,
    default: COORDINATOR_DEFAULTS.lrScaling,
    describe: 'linear: multiply --lr by the global batch over --batch-size-per-worker × --workers as workers come and go',
  },
  'warmup-steps': {
    default: COORDINATOR_DEFAULTS.warmupSteps,
    coerce: integer('warmup-steps', 0),
    describe: 'Steps over which the learning rate ramps up linearly from lr/N to its full value (0: no warm-up)',
  },
  momentum: { default: COORDINATOR_DEFAULTS.momentum, coerce: momentum, describe: 'SGD momentum, from 0 (plain SGD) to below 1 (sgd only)' },
  'batch-size': { coerce: integer('batch-size', 1), describe: `Global batch per step in images, split among the workers [default: ${DEFAULT_BATCH_SIZE}]` },
  'batch-size-per-worker': { coerce: integer('batch-size-per-worker', 1), describe: 'Batch per worker in images; the global batch follows the active workers' },
  epochs: { default: COORDINATOR_DEFAULTS.epochs, coerce: integer('epochs', 1), describe: 'Passes over the training set' },
  seed: { default: COORDINATOR_DEFAULTS.seed, coerce: integer('seed', 0), describe: 'Seed of the initial weights and of every epoch shuffle' },
  'data-dir': { type: 'string', describe: 'Folder with train/t10k IDX files (raw or .gz) [default: the bundled MNIST]' },
  'train-limit': { coerce: integer('train-limit', 1), describe: 'Train on the first N training images only [default: all]' },
  'test-limit': { coerce: integer('test-limit', 1), describe: 'Evaluate on the first N test images only [default: all]' },
  'max-steps': { coerce: integer('max-steps', 1), describe: 'Stop after N steps in total [default: no limit]' },
  output: { type: 'string', default: COORDINATOR_DEFAULTS.output, describe: 'Folder for the trained model (TensorFlow.js Layers format)' },
  'log-every-steps': { default: COORDINATOR_DEFAULTS.logEverySteps, coerce: integer('log-every-steps', 0), describe: 'Print a progress line every N steps (0: per epoch only)' },
  'heartbeat-ms': {
    default: COORDINATOR_DEFAULTS.heartbeatMs,
    coerce: integer('heartbeat-ms', 50),
    describe: 'Interval of heartbeats between coordinator and workers, in milliseconds; a peer that misses two is dropped',
  },
  'max-skipped-steps': {
    default: COORDINATOR_DEFAULTS.maxSkippedSteps,
    coerce: integer('max-skipped-steps', 1),
    describe: 'Steps in a row skipped for non-finite gradients after which training stops as diverged',
  },
  'gradient-encoding': {
    choices: GRADIENT_ENCODINGS,
    default: COORDINATOR_DEFAULTS.gradientEncoding,
    describe: 'Encoding of the gradients workers send: fp16 halves the bytes, int8 quarters them (weights stay fp32)',
  },
  'max-message-bytes': {
    coerce: integer('max-message-bytes', 1),
    describe: 'Largest message accepted from a worker, in bytes [default: one gradient message of the model plus 64 KiB]',
  },
  'step-timeout-ms': {
    default: COORDINATOR_DEFAULTS.stepTimeoutMs,
    coerce: integer('step-timeout-ms', 1),
    describe: 'Time a worker has to return its shard gradient, in milliseconds; then another worker computes the shard',
  },
  'evaluate-every-epoch': { type: 'boolean', default: COORDINATOR_DEFAULTS.evaluateEveryEpoch, describe: 'Evaluate on the test set after every epoch (the last is always evaluated)' },
  'checkpoint-dir': { type: 'string', describe: 'Folder for checkpoints, written at every epoch end and on SIGINT/SIGTERM [default: no checkpoints]' },
  'checkpoint-every-steps': {
    default: COORDINATOR_DEFAULTS.checkpointEverySteps,
    coerce: integer('checkpoint-every-steps', 0),
    describe: 'Also write a checkpoint every N steps (0: only at epoch ends)',
  },
  'keep-checkpoints': { default: COORDINATOR_DEFAULTS.keepCheckpoints, coerce: integer('keep-checkpoints', 1), describe: 'Newest checkpoints to keep; older ones are deleted' },
  resume: {
    type: 'boolean',
    default: COORDINATOR_DEFAULTS.resume,
    describe: 'Continue from the newest valid checkpoint in --checkpoint-dir; start fresh when there is none',
  },
} satisfies Record<string, Options>;

export const WORKER_OPTIONS = {
  coordinator: { type: 'string', default: WORKER_DEFAULTS.coordinator, describe: 'WebSocket URL of the coordinator' },
  token: { type: 'string', coerce: token, describe: "The coordinator's --token; set GRADFLEET_TOKEN instead, since ps shows command lines" },
  ca: { type: 'string', describe: 'PEM certificate to trust for a wss:// coordinator: a private CA or its self-signed certificate' },
  insecure: {
    type: 'boolean',
    default: WORKER_DEFAULTS.insecure,
    describe: 'Allow sending --token over ws:// (clear text) to another machine (trusted private networks only)',
  },
  name: { type: 'string', describe: 'Worker name in logs and metrics [default: HOSTNAME-PID]' },
  'metrics-host': { type: 'string', default: WORKER_DEFAULTS.metricsHost, describe: 'Address of the worker /metrics endpoint' },
  'metrics-port': { default: WORKER_DEFAULTS.metricsPort, coerce: port('metrics-port'), describe: 'Port of the worker /metrics endpoint (0: any free port)' },
  'connect-timeout-ms': {
    default: WORKER_DEFAULTS.connectTimeoutMs,
    coerce: integer('connect-timeout-ms', 0),
    describe: 'How long to keep retrying to reach the coordinator, in milliseconds',
  },
} satisfies Record<string, Options>;

export const EVALUATE_OPTIONS = {
  'model-dir': { type: 'string', describe: 'Folder with model.json and its weights, as written to --output' },
  checkpoint: { type: 'string', describe: 'A checkpoint file, or a --checkpoint-dir folder for its newest valid checkpoint (instead of --model-dir)' },
  'data-dir': { ...COORDINATOR_OPTIONS['data-dir'], describe: 'Folder with the t10k IDX files (raw or .gz) [default: the --data-dir of the checkpoint\'s run, else the bundled MNIST]' },
  'test-limit': COORDINATOR_OPTIONS['test-limit'],
} satisfies Record<string, Options>;

/** `launch` takes the coordinator's options, with the two that also shape its workers described for it. */
export const LAUNCH_OPTIONS = {
  ...COORDINATOR_OPTIONS,
  workers: { ...COORDINATOR_OPTIONS.workers, describe: 'Local worker processes to start; the first step waits for all of them' },
  'metrics-port': {
    ...COORDINATOR_OPTIONS['metrics-port'],
    describe: 'Port of the coordinator /metrics; worker i gets this port + i (0: any free port for each)',
  },
} satisfies Record<string, Options>;

/** The options of each command, by command name; the flag names are kebab-case. */
export const COMMAND_OPTIONS: Record<string, string[]> = {
  coordinator: Object.keys({ ...COORDINATOR_OPTIONS, ...COMMON_OPTIONS }),
  worker: Object.keys({ ...WORKER_OPTIONS, ...COMMON_OPTIONS }),
  launch: Object.keys({ ...LAUNCH_OPTIONS, ...COMMON_OPTIONS }),
  evaluate: Object.keys({ ...EVALUATE_OPTIONS, ...COMMON_OPTIONS }),
};

// A value-taking flag given without a value ("--workers" at the end of a line) is an
// error instead of silently meaning the default.
for (const table of [COMMON_OPTIONS, COORDINATOR_OPTIONS, WORKER_OPTIONS, EVALUATE_OPTIONS, LAUNCH_OPTIONS] as Record<string, Options>[]) {
  for (const option of Object.values(table)) if (option.type !== 'boolean') option.requiresArg = true;
}
