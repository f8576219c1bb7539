/**
 * The wire protocol between the coordinator and its workers.
 *
 * Vocabulary used everywhere in gradfleet:
 * - A *step* is one synchronous update: every active worker's gradient in, a weighted
 *   average, one optimizer update, new weights out.
 * - An *epoch* is one pass over the training set.
 * - A *shard* is the part of a step's samples given to one worker.
 *
 * Every message is one binary WebSocket frame encoded by `shared/codec.ts`. The order
 * of messages is described in docs/protocol.md.
 */

import type { GradientEncoding } from './encoding.js';

/** Bumped whenever a message changes shape; both sides reject a different version. */
export const PROTOCOL_VERSION = 3;

/**
 * A tensor as code on either side sees it: a name, a shape and its float32 values. A gradient
 * may travel compressed (see GradientMessage.encoding), but the codec decodes it back to float32.
 */
export interface WireTensor {
  name: string;
  shape: number[];
  dtype: 'float32';
  data: Float32Array;
}

/** Worker → coordinator, the first message on a connection. */
export interface HelloMessage {
  type: 'hello';
  protocolVersion: number;
  workerName: string;
  backend: string;
  gradfleetVersion: string;
  /**
   * The shared token (`--token`), sent only when the worker has one. A coordinator with a
   * token closes the connection with UNAUTHORIZED unless it matches; one without ignores it.
   */
  token?: string;
}

/** Coordinator → worker, the reply to `hello`: the model to build. */
export interface WelcomeMessage {
  type: 'welcome';
  protocolVersion: number;
  workerId: string;
  /** Keras topology JSON, as produced by `LayersModel.toJSON(null, false)`. */
  modelTopology: object;
  /** Names and shapes of the trainable weights, in the order gradients must use. */
  parameters: { name: string; shape: number[] }[];
  inputShape: number[];
  numClasses: number;
  /** Interval of the coordinator's pings, in milliseconds; no ping for two intervals means it is gone. */
  heartbeatMs: number;
  /** Largest message the coordinator will send, in bytes; the worker rejects anything larger. */
  maxMessageBytes: number;
  /** Encoding the worker must send its gradients in (`--gradient-encoding`); fp32 when absent. */
  gradientEncoding?: GradientEncoding;
}

/** Worker → coordinator: the start-up self-check passed and the worker can take shards. */
export interface ReadyMessage {
  type: 'ready';
  selfCheckMs: number;
}

/** Coordinator → all workers: the weights every shard of the next step starts from. */
export interface WeightsMessage {
  type: 'weights';
  /** The step whose shards use these weights. */
  step: number;
  tensors: WireTensor[];
}

/** Coordinator → one worker: its shard of a step. */
export type ShardMessage = ShardWithData | PrefetchedShard;

/** A shard that carries its images and labels. */
export interface ShardWithData {
  type: 'shard';
  step: number;
  epoch: number;
  /** Indices into the training set; kept so a reply can be checked against the request. */
  sampleIds: Uint32Array;
  /** `sampleIds.length` images, each rows×cols unsigned bytes, row-major. */
  images: Uint8Array;
  labels: Uint8Array;
  prefetched?: undefined;
}

/**
 * A shard without data: the coordinator sent exactly these sample ids for this step in a
 * `prefetch` message on the same connection, and the worker computes on the data stored from it.
 */
export interface PrefetchedShard {
  type: 'shard';
  step: number;
  epoch: number;
  sampleIds: Uint32Array;
  prefetched: true;
}

/**
 * Coordinator → one worker, right after the shards of step `step - 1`: the data of the shard
 * the worker will get at `step` if the active workers stay the same. The worker stores only
 * the newest one.
 */
export interface PrefetchMessage {
  type: 'prefetch';
  step: number;
  sampleIds: Uint32Array;
  /** `sampleIds.length` images, each rows×cols unsigned bytes, row-major. */
  images: Uint8Array;
  labels: Uint8Array;
}

/** Returns true when two shards have the same sample ids in the same order, as a prefetched shard must. */
export function sameSampleIds(a: Uint32Array, b: Uint32Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Worker → coordinator: the gradient of the mean loss over one shard. */
export interface GradientMessage {
  type: 'gradient';
  step: number;
  /** Number of examples the gradient was averaged over. */
  count: number;
  /** Mean loss over the shard, before the update. */
  loss: number;
  /** Number of examples whose predicted class matched the label. */
  correct: number;
  computeMs: number;
  tensors: WireTensor[];
  /**
   * Encoding of the tensors on the wire; fp32 when absent. The sender's codec encodes the
   * float32 values, and the receiver's codec decodes them and sets this field.
   */
  encoding?: GradientEncoding;
}

/** Either side → the other, just before closing: why the connection ends. */
export interface ErrorMessage {
  type: 'error';
  code: ErrorCode;
  message: string;
}

/** Coordinator → workers: training is complete and the worker should exit 0. */
export interface DoneMessage {
  type: 'done';
  reason: string;
}

export type CoordinatorMessage = WelcomeMessage | WeightsMessage | ShardMessage | PrefetchMessage | ErrorMessage | DoneMessage;
export type WorkerMessage = HelloMessage | ReadyMessage | GradientMessage | ErrorMessage;
export type Message = CoordinatorMessage | WorkerMessage;

/**
 * Stable error codes. They travel in `error` messages and are asserted by tests, so a
 * code is never renamed or reused for another meaning.
 */
export const ERROR_CODES = [
  'PROTOCOL_VERSION_MISMATCH',
  'MALFORMED_MESSAGE',
  'UNEXPECTED_MESSAGE',
  'INVALID_GRADIENT',
  'STALE_GRADIENT',
  'SELF_CHECK_FAILED',
  'TRAINING_COMPLETE',
  'COORDINATOR_SHUTDOWN',
  'MESSAGE_TOO_BIG',
  'UNAUTHORIZED',
] as const;
export type ErrorCode = (typeof ERROR_CODES)[number];

/**
 * WebSocket close codes (4000–4999 is the range RFC 6455 leaves to applications).
 * Codes below 4100 are permanent: a worker closed with one exits instead of reconnecting.
 */
export const CLOSE_CODES = {
  normal: 1000,
  protocolVersionMismatch: 4001,
  malformedMessage: 4002,
  selfCheckFailed: 4003,
  trainingComplete: 4004,
  /** Sent by a worker that stops for good (SIGINT or SIGTERM); the coordinator gives its shards to the others. */
  workerLeaving: 4005,
  /** The worker's token is missing or does not match the coordinator's. */
  unauthorized: 4006,
  /**
   * RFC 6455 "policy violation", sent when no `hello` arrived within the hello deadline;
   * the worker reconnects, since a stalled network can cause it.
   */
  helloTimeout: 1008,
  /** Set by the `ws` library when a frame exceeds the receiver's limit (RFC 6455 "message too big"). */
  messageTooBig: 1009,
  coordinatorShutdown: 4100,
} as const;

/** Returns the WebSocket close code for a protocol error that ends a connection. */
export function closeCodeForError(code: ErrorCode): number {
  if (code === 'PROTOCOL_VERSION_MISMATCH') return CLOSE_CODES.protocolVersionMismatch;
  if (code === 'MESSAGE_TOO_BIG') return CLOSE_CODES.messageTooBig;
  if (code === 'UNAUTHORIZED') return CLOSE_CODES.unauthorized;
  return CLOSE_CODES.malformedMessage;
}

/** An error with a stable code that can be sent to the peer. */
export class ProtocolError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'ProtocolError';
  }
}
