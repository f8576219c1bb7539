import { Worker as Thread, type TransferListItem } from 'node:worker_threads';
import type { BackendName } from '../shared/backend.js';
import type { ByteBatch } from '../shared/training.js';
import { ModelReplica, type TensorMemory, type TimedGradient } from './model-replica.js';
import { SelfCheckError } from './self-check.js';

/**
 * The worker's compute: it owns the model replica and computes gradients without blocking
 * the main thread's event loop for a whole shard. Requests run in the order they are made.
 */
export interface Trainer {
  /** Builds the model from the coordinator's topology; returns the shapes of its trainable weights. */
  build(topology: object, numClasses: number): Promise<number[][]>;
  /** Runs the gradient self-check; rejects with SelfCheckError when the backend cannot compute the gradient. */
  selfCheck(): Promise<number>;
  /** Assigns one array per trainable weight. Takes ownership of arrays that cover their whole buffer. */
  setWeights(weights: Float32Array[]): Promise<void>;
  /** Computes the mean gradient over `batch`. Takes ownership of arrays that cover their whole buffer. */
  computeGradients(batch: ByteBatch): Promise<TimedGradient>;
  /** Counts the live tensors of the tfjs instance that owns the model. */
  memory(): Promise<TensorMemory>;
  /** Releases the model and any thread; safe to call twice. */
  close(): Promise<void>;
}

/**
 * Returns a trainer for `backend`, the backend the process runs on: a worker thread for
 * wasm and cpu, and slices on the main thread for tensorflow. `onCrash` is called once if
 * the thread stops by itself, whether or not a request is pending.
 */
export function createTrainer(backend: BackendName, onCrash: (error: Error) => void): Trainer {
  // tfjs-node's native addon is not context-aware, so Node loads it once per process. The
  // main thread has loaded it to select the backend, and loading it again in a thread
  // fails with "Module did not self-register", as reported for tfjs-node 1.2.9 and 4.21.
  // TODO: the tensorflow path is untested here, because tfjs-node cannot be installed on
  // the development machine; slices of MAIN_THREAD_SLICE_SIZE examples are a guess.
  if (backend === 'tensorflow') return new MainThreadTrainer();
  return new ThreadTrainer(backend, onCrash);
}

/** Data the main thread passes to the gradient thread at start-up. */
export interface TrainerThreadData {
  /** The backend the process runs on; the thread activates the same one. */
  backend: BackendName;
}

/** Requests to the gradient thread. */
export type TrainerRequest =
  | { type: 'build'; topology: object; numClasses: number }
  | { type: 'selfCheck' }
  | { type: 'weights'; weights: Float32Array[] }
  | { type: 'gradients'; batch: ByteBatch }
  | { type: 'memory' };

/** A request as posted to the thread, with the id that its reply repeats. */
export interface TrainerEnvelope {
  id: number;
  request: TrainerRequest;
}

/** An error raised in the thread, as plain data that survives postMessage with its name and kernel. */
export interface ThreadErrorData {
  name: string;
  message: string;
  stack?: string;
  kernel?: string;
}

export type TrainerReply = { id: number; ok: true; result: unknown } | { id: number; ok: false; error: ThreadErrorData };

/** Raised when the gradient thread stops by itself: an uncaught error, a failed start or an exit. */
export class TrainerCrashError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TrainerCrashError';
  }
}

/**
 * Returns `array` itself when it covers the whole of a transferable ArrayBuffer, and
 * otherwise a copy that does. Posting a view without transferring it would copy its whole
 * underlying buffer, which for a decoded message is the entire frame. The copy is made by
 * the constructor because a Node Buffer's `slice` returns a view, not a copy.
 */
export function transferable(array: Float32Array): Float32Array<ArrayBuffer>;
export function transferable(array: Uint8Array): Uint8Array<ArrayBuffer>;
export function transferable(array: Float32Array | Uint8Array): Float32Array<ArrayBuffer> | Uint8Array<ArrayBuffer> {
  const whole = array.byteOffset === 0 && array.byteLength === array.buffer.byteLength;
  if (whole && array.buffer instanceof ArrayBuffer) return array as Float32Array<ArrayBuffer> | Uint8Array<ArrayBuffer>;
  return array instanceof Float32Array ? new Float32Array(array) : new Uint8Array(array);
}

/**
 * Returns the URL of the compiled thread script. Tests import this module from its TypeScript source through
 * vitest, and Node cannot run TypeScript in a thread, so they start the copy in dist/,
 * which `npm test` builds before it runs them.
 */
function threadScript(): URL {
  if (import.meta.url.endsWith('.ts')) return new URL('../dist/worker/trainer-thread.js', import.meta.url);
  return new URL('./trainer-thread.js', import.meta.url);
}

/** Computes in a worker thread (`worker/trainer-thread.ts`) that has its own tfjs and model. */
export class ThreadTrainer implements Trainer {
  private readonly thread: Thread;
  private readonly pending = new Map<number, { resolve: (result: any) => void; reject: (error: Error) => void }>();
  private nextId = 1;
  /** Set once the thread has stopped or was closed; later requests reject with it. */
  private stopped?: Error;

  constructor(
    private readonly backend: BackendName,
    onCrash: (error: Error) => void,
  ) {
    this.thread = new Thread(threadScript(), { workerData: { backend } satisfies TrainerThreadData });
    this.thread.on('message', (reply: TrainerReply) => this.onReply(reply));
    this.thread.on('error', (error) => this.onStop(new TrainerCrashError(`the gradient thread on backend "${backend}" failed: ${error.message}`), onCrash));
    this.thread.on('exit', (code) => this.onStop(new TrainerCrashError(`the gradient thread on backend "${backend}" exited unexpectedly with code ${code}`), onCrash));
  }

  build(topology: object, numClasses: number): Promise<number[][]> {
    return this.request({ type: 'build', topology, numClasses });
  }

  selfCheck(): Promise<number> {
    return this.request({ type: 'selfCheck' });
  }

  setWeights(weights: Float32Array[]): Promise<void> {
    const owned = weights.map((array) => transferable(array));
    return this.request({ type: 'weights', weights: owned }, owned.map((array) => array.buffer));
  }

  computeGradients(batch: ByteBatch): Promise<TimedGradient> {
    const images = transferable(batch.images);
    const labels = transferable(batch.labels);
    return this.request({ type: 'gradients', batch: { images, labels, count: batch.count } }, [images.buffer, labels.buffer]);
  }

  memory(): Promise<TensorMemory> {
    return this.request({ type: 'memory' });
  }

  async close(): Promise<void> {
    if (!this.stopped) this.rejectAll((this.stopped = new Error(`the gradient thread on backend "${this.backend}" was closed`)));
    await this.thread.terminate();
  }

  private request<T>(request: TrainerRequest, transfer: TransferListItem[] = []): Promise<T> {
    if (this.stopped) return Promise.reject(this.stopped);
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.thread.postMessage({ id, request } satisfies TrainerEnvelope, transfer);
    });
  }

  private onReply(reply: TrainerReply): void {
    const waiter = this.pending.get(reply.id);
    if (!waiter) return;
    this.pending.delete(reply.id);
    if (reply.ok) waiter.resolve(reply.result);
    else waiter.reject(errorFromThread(reply.error));
  }

  /** Handles the thread's first 'error' or 'exit'; Node emits 'exit' after 'error', and after `close`. */
  private onStop(error: Error, onCrash: (error: Error) => void): void {
    if (this.stopped) return;
    this.stopped = error;
    this.rejectAll(error);
    onCrash(error);
  }

  private rejectAll(error: Error): void {
    for (const waiter of this.pending.values()) waiter.reject(error);
    this.pending.clear();
  }
}

/** Rebuilds an error raised in the thread with its name, so callers can tell a failed self-check apart. */
function errorFromThread(data: ThreadErrorData): Error {
  if (data.name === 'SelfCheckError') return new SelfCheckError(data.message, data.kernel);
  const error = new Error(data.message);
  error.name = data.name;
  if (data.stack) error.stack = data.stack;
  return error;
}

/** Examples per slice on the main thread; an estimate of what keeps one slice short on tfjs-node. */
const MAIN_THREAD_SLICE_SIZE = 8;

/**
 * Computes on the main thread in slices of MAIN_THREAD_SLICE_SIZE examples and returns to
 * the event loop between them, for a backend that cannot run in a worker thread.
 */
export class MainThreadTrainer implements Trainer {
  private readonly replica = new ModelReplica();
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;

  build(topology: object, numClasses: number): Promise<number[][]> {
    return this.run(() => this.replica.build(topology, numClasses));
  }

  selfCheck(): Promise<number> {
    return this.run(() => this.replica.selfCheck());
  }

  setWeights(weights: Float32Array[]): Promise<void> {
    return this.run(() => this.replica.setWeights(weights));
  }

  computeGradients(batch: ByteBatch): Promise<TimedGradient> {
    return this.run(() => this.replica.gradientsInSlices(batch, MAIN_THREAD_SLICE_SIZE));
  }

  memory(): Promise<TensorMemory> {
    return this.run(() => this.replica.memory());
  }

  async close(): Promise<void> {
    this.closed = true;
    this.replica.dispose();
  }

  /** Runs `task` after every earlier request, as the thread does, so weights never change mid-shard. */
  private run<T>(task: () => T | Promise<T>): Promise<T> {
    if (this.closed) return Promise.reject(new Error('the trainer was closed'));
    const result = this.queue.then(task);
    this.queue = result.catch(() => undefined);
    return result;
  }
}
