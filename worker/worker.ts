import { hostname } from 'node:os';
import { WebSocket, type RawData } from 'ws';
import { tf, type BackendName } from '../shared/backend.js';
import { decodeCoordinatorMessage, encodeMessage } from '../shared/codec.js';
import type { Logger } from '../shared/log.js';
import { MetricsServer } from '../shared/metrics-server.js';
import type { WorkerOptions } from '../shared/options.js';
import {
  CLOSE_CODES,
  closeCodeForError,
  PROTOCOL_VERSION,
  ProtocolError,
  sameSampleIds,
  type CoordinatorMessage,
  type PrefetchMessage,
  type ShardMessage,
  type WelcomeMessage,
  type WeightsMessage,
  type WorkerMessage,
} from '../shared/protocol.js';
import { checkWorkerTransport, describeCertificateError, readCaCertificate } from '../shared/security.js';
import { GRADFLEET_VERSION } from '../shared/version.js';
import { GradientCompressor } from './compression.js';
import { WorkerMetrics } from './metrics.js';
import { SelfCheckError } from './self-check.js';
import type { TensorMemory } from './model-replica.js';
import { createTrainer, type Trainer } from './trainer.js';

/**
 * A worker's lifecycle: connecting → joined (welcome received, self-check passed) →
 * training (has weights) → done; `reconnecting` after a connection was lost.
 */
export type WorkerState = 'connecting' | 'joined' | 'training' | 'reconnecting' | 'done';

/** Raised when the worker must stop for good: a permanent close or a failed self-check. */
export class WorkerFatalError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'WorkerFatalError';
  }
}

/** Close codes after which reconnecting cannot help. */
const PERMANENT_CLOSE_CODES = new Set<number>([
  CLOSE_CODES.messageTooBig,
  CLOSE_CODES.protocolVersionMismatch,
  CLOSE_CODES.malformedMessage,
  CLOSE_CODES.selfCheckFailed,
  CLOSE_CODES.unauthorized,
]);

/**
 * Time one connection attempt may take. Without it, an attempt to a host that vanished
 * (a cut link, a dead VM) waits for the kernel's TCP connect timeout, about two minutes on
 * Linux, so a worker would rejoin long after the network came back.
 */
const CONNECT_ATTEMPT_TIMEOUT_MS = 5_000;

/** Reconnect delays grow from 250 ms to 5 s, with up to 50% random jitter. */
const BACKOFF_START_MS = 250;
const BACKOFF_MAX_MS = 5_000;

/**
 * Receive limit of the connection until `welcome` gives the model's limit, which the
 * worker then enforces itself on every message (ws fixes its own limit at connect time).
 */
const MAX_PAYLOAD_BYTES = 256 * 1024 * 1024;

/** How long a leaving worker waits for the coordinator to acknowledge its close, in milliseconds. */
const LEAVE_CLOSE_WAIT_MS = 2_000;

/**
 * A worker: it connects to the coordinator, builds the model it is sent, checks that its
 * backend can compute the gradient, and then computes the gradient of every shard it
 * receives with the weights of that step.
 */
export class Worker {
  readonly metrics = new WorkerMetrics();
  private readonly metricsServer = new MetricsServer(this.metrics.registry);
  private readonly name: string;
  state: WorkerState = 'connecting';
  private socket?: WebSocket;
  /** The owner of the model, which computes gradients in a worker thread on most backends. */
  private trainer?: Trainer;
  /** Shapes of the model's trainable weights, as the trainer built them. */
  private variableShapes: number[][] = [];
  /** Wire names of the trainable weights, as the coordinator listed them in `welcome`. */
  private parameterNames: string[] = [];
  /** Largest message accepted from the coordinator, in bytes, as its `welcome` announced. */
  private maxMessageBytes = MAX_PAYLOAD_BYTES;
  /** Gradient encoding named by `welcome`, with its error-feedback residuals; fp32 until then. */
  private compressor = new GradientCompressor('fp32');
  private weightsStep = -1;
  /** Data of the newest `prefetch` on this connection, until a shard of its step or a later one arrives. */
  private prefetch?: PrefetchMessage;
  /** When the coordinator last pinged, by performance.now(); see `watchHeartbeats`. */
  private lastPingAt = 0;
  private heartbeatTimer?: NodeJS.Timeout;
  private stopping = false;
  private finish!: { resolve: () => void; reject: (error: Error) => void };
  metricsPort = 0;

  constructor(
    private readonly options: WorkerOptions,
    private readonly log: Logger,
  ) {
    this.name = options.name || `${hostname()}-${process.pid}`;
  }

  /** Starts the `/metrics` server and returns its port. `run` calls it unless it was called already. */
  async startMetrics(): Promise<number> {
    if (!this.metricsPort) this.metricsPort = await this.metricsServer.listen(this.options.metricsHost, this.options.metricsPort);
    return this.metricsPort;
  }

  /** Connects and trains until the coordinator sends `done`. */
  async run(): Promise<void> {
    await this.startMetrics();
    this.metrics.info.set({ worker: this.name, backend: tf.getBackend(), version: GRADFLEET_VERSION }, 1);
    this.log.info('worker starting', {
      worker: this.name,
      coordinator: this.options.coordinator,
      backend: tf.getBackend(),
      metrics: `http://${this.options.metricsHost}:${this.metricsPort}/metrics`,
    });
    const done = new Promise<void>((resolve, reject) => (this.finish = { resolve, reject }));
    void this.connectWithRetry();
    return done;
  }

  private async connectWithRetry(): Promise<void> {
    const deadline = Date.now() + this.options.connectTimeoutMs;
    let delay = BACKOFF_START_MS;
    for (let attempt = 1; !this.stopping; attempt++) {
      const error = await this.connectOnce();
      if (!error) return;
      if (Date.now() >= deadline) {
        this.fail(
          new WorkerFatalError(
            `cannot reach the coordinator at ${this.options.coordinator} after ${attempt} attempt${attempt === 1 ? '' : 's'}: ${error.message}; ` +
              `check --coordinator and that the coordinator is running${tlsHint(this.options.coordinator, error)}`,
          ),
        );
        return;
      }
      if (attempt === 1 || attempt % 10 === 0) {
        this.log.info('waiting for the coordinator', { url: this.options.coordinator, attempt, error: `${error.message}${tlsHint(this.options.coordinator, error)}` });
      }
      await new Promise((resolve) => setTimeout(resolve, delay * (1 + Math.random() * 0.5)));
      delay = Math.min(delay * 2, BACKOFF_MAX_MS);
    }
  }

  /**
   * Opens one connection; resolves with the error if it could not be opened and another
   * attempt may succeed. A token that would travel in clear text, an unreadable --ca or a
   * certificate that cannot be verified stops the worker instead (and resolves with
   * undefined), since no retry can fix them.
   */
  private connectOnce(): Promise<Error | undefined> {
    return new Promise((resolve) => {
      let ca: Buffer | undefined;
      try {
        checkWorkerTransport(this.options);
        if (this.options.ca !== undefined) ca = readCaCertificate(this.options.ca);
      } catch (error) {
        this.fail(error as Error);
        resolve(undefined);
        return;
      }
      const socket = new WebSocket(this.options.coordinator, {
        maxPayload: MAX_PAYLOAD_BYTES,
        perMessageDeflate: false,
        handshakeTimeout: CONNECT_ATTEMPT_TIMEOUT_MS,
        ...(ca && { ca }),
      });
      socket.once('open', () => {
        this.socket = socket;
        this.attach(socket);
        const token = this.options.token !== undefined ? { token: this.options.token } : {};
        this.send({ type: 'hello', protocolVersion: PROTOCOL_VERSION, workerName: this.name, backend: tf.getBackend(), gradfleetVersion: GRADFLEET_VERSION, ...token });
        resolve(undefined);
      });
      socket.once('error', (error: Error & { code?: string }) => {
        if (socket.readyState === WebSocket.OPEN) return;
        const certificateProblem = describeCertificateError(error, this.options.coordinator);
        if (!certificateProblem) {
          resolve(error);
          return;
        }
        this.fail(new WorkerFatalError(certificateProblem));
        resolve(undefined);
      });
    });
  }

  private attach(socket: WebSocket): void {
    socket.on('message', (data: RawData) => {
      const frame = Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
      this.metrics.receivedBytes.inc(frame.byteLength);
      this.receive(frame).catch((error: Error) => this.fail(error));
    });
    socket.on('ping', () => (this.lastPingAt = performance.now()));
    socket.on('close', (code: number, reason: Buffer) => this.onClose(code, reason.toString()));
    socket.on('error', (error: Error) => this.log.warn('connection error', { url: this.options.coordinator, error: error.message }));
  }

  private async receive(frame: Buffer): Promise<void> {
    let message: CoordinatorMessage;
    try {
      if (frame.byteLength > this.maxMessageBytes) {
        throw new ProtocolError('MESSAGE_TOO_BIG', `message of ${frame.byteLength} bytes from the coordinator is over the limit of ${this.maxMessageBytes} bytes it announced`);
      }
      message = decodeCoordinatorMessage(frame);
    } catch (error) {
      if (!(error instanceof ProtocolError)) throw error;
      this.rejectMessage(error);
      return;
    }
    await this.handle(message);
  }

  /** Tells the coordinator why its message cannot be used, closes the connection and stops for good. */
  private rejectMessage(error: ProtocolError): void {
    this.log.error('message from the coordinator rejected', { code: error.code, error: error.message });
    this.send({ type: 'error', code: error.code, message: error.message });
    this.socket?.close(closeCodeForError(error.code));
    this.fail(new WorkerFatalError(error.message));
  }

  private async handle(message: CoordinatorMessage): Promise<void> {
    switch (message.type) {
      case 'welcome':
        return this.onWelcome(message);
      case 'weights':
        return this.onWeights(message);
      case 'shard':
        return this.onShard(message);
      case 'prefetch':
        return this.onPrefetch(message);
      case 'done':
        this.log.info('training complete', { reason: message.reason });
        this.state = 'done';
        return;
      case 'error':
        if (message.code === 'COORDINATOR_SHUTDOWN') this.log.info('the coordinator is stopping', { code: message.code, message: message.message });
        else this.log.error('coordinator reported an error', { code: message.code, error: message.message });
        return;
    }
  }

  private async onWelcome(message: WelcomeMessage): Promise<void> {
    if (this.stopping) return;
    // The process selected its backend from --backend before the worker started. A
    // reconnected worker keeps its trainer, which replaces the model.
    const trainer = (this.trainer ??= createTrainer(tf.getBackend() as BackendName, (error) => this.fail(new WorkerFatalError(error.message))));
    // A prefetch belongs to the connection it came on; the coordinator expects none on a new one.
    this.prefetch = undefined;
    this.variableShapes = await trainer.build(message.modelTopology, message.numClasses);
    this.maxMessageBytes = message.maxMessageBytes;
    this.parameterNames = message.parameters.map((parameter) => parameter.name);
    this.checkParameters(message);
    // A new connection or model starts without residuals: they belong to the old weights.
    this.compressor = new GradientCompressor(message.gradientEncoding ?? 'fp32');
    let selfCheckMs: number;
    try {
      selfCheckMs = await trainer.selfCheck();
    } catch (error) {
      if (!(error instanceof SelfCheckError)) throw error;
      this.send({ type: 'error', code: 'SELF_CHECK_FAILED', message: error.message });
      this.socket?.close(CLOSE_CODES.selfCheckFailed, 'self-check failed');
      this.fail(new WorkerFatalError(error.message));
      return;
    }
    this.state = 'joined';
    this.watchHeartbeats(message.heartbeatMs);
    this.log.info('joined', { workerId: message.workerId, selfCheckMs: Math.round(selfCheckMs) });
    this.send({ type: 'ready', selfCheckMs });
  }

  /**
   * Ends the connection when the coordinator has not pinged for two intervals, so that a
   * vanished coordinator (crashed host, cut network) leads to a reconnect instead of a
   * wait for ever. The check runs after pending I/O (setImmediate), so pings that arrived
   * while this process was busy computing count.
   */
  private watchHeartbeats(intervalMs: number): void {
    clearInterval(this.heartbeatTimer);
    this.lastPingAt = performance.now();
    this.heartbeatTimer = setInterval(() => {
      setImmediate(() => {
        const silentMs = performance.now() - this.lastPingAt;
        if (silentMs <= 2 * intervalMs || !this.socket) return;
        this.log.warn('no heartbeat from the coordinator; reconnecting', { silentMs: Math.round(silentMs), heartbeatMs: intervalMs });
        this.socket.terminate();
      });
    }, intervalMs);
  }

  private checkParameters(message: WelcomeMessage): void {
    const shapes = this.variableShapes.map((shape) => shape.join('x')).join(',');
    const expected = message.parameters.map((parameter) => parameter.shape.join('x')).join(',');
    if (shapes !== expected) {
      throw new WorkerFatalError(`the model built from the coordinator's topology has weight shapes ${shapes}, but the coordinator lists ${expected}`);
    }
  }

  private onWeights(message: WeightsMessage): void {
    if (message.tensors.length !== this.variableShapes.length) {
      throw new WorkerFatalError(`weights for step ${message.step} carry ${message.tensors.length} tensors; the model has ${this.variableShapes.length}`);
    }
    message.tensors.forEach((tensor, t) => {
      const shape = this.variableShapes[t];
      if (tensor.shape.join(',') !== shape.join(',')) {
        throw new WorkerFatalError(`weights for step ${message.step}: tensor "${tensor.name}" has shape [${tensor.shape}], the model expects [${shape}]`);
      }
    });
    // The step is recorded now, not when the thread has assigned the weights. The thread
    // handles requests in order, so the shard that follows is computed with these weights.
    this.weightsStep = message.step;
    this.state = 'training';
    this.trainer!.setWeights(message.tensors.map((tensor) => tensor.data)).catch((error: Error) => this.fail(error));
  }

  /** Stores the data of the shard expected at a later step, replacing any older prefetch. */
  private onPrefetch(message: PrefetchMessage): void {
    this.prefetch = message;
    this.log.debug('prefetch stored', { step: message.step, samples: message.sampleIds.length });
  }

  /**
   * Returns the images and labels of a shard: its own, or those of the stored prefetch when
   * the shard is marked prefetched. The coordinator marks one only after it sent a prefetch of
   * the same step and ids on this connection, so a mismatch is a protocol error.
   */
  private shardData(message: ShardMessage): { images: Uint8Array; labels: Uint8Array } | undefined {
    const prefetch = this.prefetch;
    // Only the newest prefetch is kept, and one for a later step outlives this shard.
    if (prefetch && prefetch.step <= message.step) this.prefetch = undefined;
    if (!message.prefetched) return { images: message.images, labels: message.labels };
    if (prefetch?.step === message.step && sameSampleIds(prefetch.sampleIds, message.sampleIds)) return { images: prefetch.images, labels: prefetch.labels };
    const stored = prefetch ? `a prefetch of ${prefetch.sampleIds.length} samples for step ${prefetch.step}` : 'no prefetch';
    this.rejectMessage(
      new ProtocolError(
        'UNEXPECTED_MESSAGE',
        `shard for step ${message.step} (${message.sampleIds.length} samples) is marked prefetched, but this worker stores ${stored} with those ids; ` +
          'the coordinator must send the images and labels',
      ),
    );
    return undefined;
  }

  private async onShard(message: ShardMessage): Promise<void> {
    const data = this.shardData(message);
    if (!data) return;
    if (message.step !== this.weightsStep) {
      this.log.warn('shard skipped: no weights for its step', { step: message.step, weightsStep: this.weightsStep });
      return;
    }
    const socket = this.socket;
    const count = message.sampleIds.length;
    const requestedAt = performance.now();
    const result = await this.trainer!.computeGradients({ ...data, count });
    const computedAt = performance.now();
    if (this.socket !== socket) {
      // The coordinator gave this shard to other workers when the connection closed.
      this.log.info('gradient dropped: the connection closed while it was computed', { step: message.step });
      return;
    }
    const computeMs = result.computeMs;
    poisonGradientForTests(message.step, result.gradients);
    const gradients = this.compressor.compensate(result.gradients);
    const tensors = gradients.map((data, t) => ({
      name: this.parameterNames[t],
      shape: this.variableShapes[t],
      dtype: 'float32' as const,
      data,
    }));
    const encoding = this.compressor.encoding;
    const gradient: WorkerMessage = { type: 'gradient', step: message.step, count, loss: result.loss, correct: result.correct, computeMs, tensors, encoding };
    if (killForTests(message.step, this.socket, gradient)) return;
    this.send(gradient);
    // Time spent around the computation: waiting for the thread (which assigns the step's
    // weights first) and passing the data both ways, then preparing, encoding and sending the gradient.
    this.log.debug('gradient sent', {
      step: message.step,
      computeMs: Number(computeMs.toFixed(3)),
      threadOverheadMs: Number((computedAt - requestedAt - computeMs).toFixed(3)),
      encodeAndSendMs: Number((performance.now() - computedAt).toFixed(3)),
    });
    this.metrics.compute.observe(computeMs / 1000);
    this.metrics.examples.inc(count);
    this.metrics.shards.inc();
    this.metrics.step.set(message.step);
  }

  private send(message: WorkerMessage): void {
    const socket = this.socket;
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    const frame = encodeMessage(message);
    socket.send(frame, { binary: true });
    this.metrics.sentBytes.inc(frame.byteLength);
  }

  private onClose(code: number, reason: string): void {
    this.socket = undefined;
    clearInterval(this.heartbeatTimer);
    if (this.stopping) return;
    if (this.state === 'done' || code === CLOSE_CODES.trainingComplete) {
      this.state = 'done';
      this.finish.resolve();
      return;
    }
    if (PERMANENT_CLOSE_CODES.has(code)) {
      const detail = code === CLOSE_CODES.messageTooBig ? 'a message was over the size limit' : reason;
      this.fail(new WorkerFatalError(`the coordinator closed the connection for good (code ${code}${detail ? `: ${detail}` : ''})`));
      return;
    }
    // A stopping coordinator sends 4100 so that its workers wait for its restart; that is no failure.
    if (code === CLOSE_CODES.coordinatorShutdown) this.log.info('coordinator is pausing; reconnecting', { code, reason });
    else this.log.warn('connection to the coordinator lost; reconnecting', { code, reason });
    this.state = 'reconnecting';
    void this.connectWithRetry();
  }

  private fail(error: Error): void {
    if (this.stopping) return;
    this.stopping = true;
    this.socket?.terminate();
    this.finish.reject(error);
  }

  /** Counts the live tensors of the tfjs instance that owns the model; undefined before the first `welcome`. */
  async trainerMemory(): Promise<TensorMemory | undefined> {
    return this.trainer?.memory();
  }

  /** Closes the trainer, which ends its thread and disposes the model. */
  private async disposeModel(): Promise<void> {
    const trainer = this.trainer;
    this.trainer = undefined;
    this.variableShapes = [];
    await trainer?.close();
  }

  /**
   * Leaves training for good: closes the connection with CLOSE_CODES.workerLeaving, which
   * the coordinator takes as a planned leave, not a failure, and makes `run` resolve.
   * Waits at most LEAVE_CLOSE_WAIT_MS for the coordinator to acknowledge the close.
   */
  async leave(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    clearInterval(this.heartbeatTimer);
    const socket = this.socket;
    if (socket?.readyState === WebSocket.OPEN) {
      const closed = new Promise((resolve) => socket.once('close', resolve));
      socket.close(CLOSE_CODES.workerLeaving, 'worker leaving');
      await Promise.race([closed, new Promise((resolve) => setTimeout(resolve, LEAVE_CLOSE_WAIT_MS).unref())]);
    }
    this.log.info('left the training', { worker: this.name });
    this.state = 'done';
    // Undefined when a signal arrives before `run` started.
    this.finish?.resolve();
  }

  /** Closes the connection, the metrics server and the model; safe to call twice. */
  async close(): Promise<void> {
    this.stopping = true;
    clearInterval(this.heartbeatTimer);
    this.socket?.terminate();
    this.socket = undefined;
    await this.metricsServer.close();
    await this.disposeModel();
    this.metrics.close();
  }
}

/**
 * Test hook: fills the gradient with NaN when the shard's step equals
 * TEST_GRADFLEET_NAN_AT_STEP, so that tests can watch a diverging shard. Unset in normal use.
 */
function poisonGradientForTests(step: number, gradients: Float32Array[]): void {
  const target = process.env.TEST_GRADFLEET_NAN_AT_STEP;
  if (target === undefined || Number(target) !== step) return;
  for (const gradient of gradients) gradient.fill(Number.NaN);
}

/**
 * Returns advice to use wss:// when the server of a ws:// URL hung up during the WebSocket
 * upgrade, as a coordinator serving TLS does with a request in clear text. Otherwise returns ''.
 */
function tlsHint(url: string, error: Error): string {
  const hungUp = /socket hang up|ECONNRESET/.test(error.message);
  return url.startsWith('ws://') && hungUp ? '; if the coordinator serves TLS (--tls-cert), use a wss:// URL' : '';
}

/**
 * Test hook: TEST_GRADFLEET_KILL_AT_STEP="STEP:PHASE" makes the worker kill itself with
 * SIGKILL at the gradient of step STEP. PHASE `before` dies without sending, `during` dies
 * after writing the first half of the gradient's WebSocket frame, and `after` dies once the
 * whole frame is written. Returns true when the caller must not send. Unset in normal use.
 */
function killForTests(step: number, socket: WebSocket | undefined, gradient: WorkerMessage): boolean {
  const [target, phase] = (process.env.TEST_GRADFLEET_KILL_AT_STEP ?? '').split(':');
  if (!target || Number(target) !== step || !socket) return false;
  const die = () => process.kill(process.pid, 'SIGKILL');
  const payload = encodeMessage(gradient);
  if (phase === 'after') {
    socket.send(payload, { binary: true }, die);
    return true;
  }
  if (phase === 'during') {
    // A client frame by RFC 6455: FIN + binary opcode, mask bit and a 64-bit length, then a
    // mask key of zeros, which leaves the payload unchanged. ws keeps its TCP socket in the
    // private field `_socket`; reaching it is acceptable in a hook only tests switch on.
    const header = Buffer.alloc(14);
    header[0] = 0x82;
    header[1] = 0x80 | 127;
    header.writeBigUInt64BE(BigInt(payload.byteLength), 2);
    const tcp = (socket as unknown as { _socket: import('node:net').Socket })._socket;
    tcp.write(Buffer.concat([header, payload.subarray(0, payload.byteLength >> 1)]), die);
    return true;
  }
  die();
  return true;
}
