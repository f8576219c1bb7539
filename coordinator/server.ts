import { createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Counter } from 'prom-client';
import { WebSocket, WebSocketServer, type RawData } from 'ws';
import { decodeWorkerMessage } from '../shared/codec.js';
import { ListenError } from '../shared/metrics-server.js';
import type { Logger } from '../shared/log.js';
import { CLOSE_CODES, closeCodeForError, ProtocolError, type HelloMessage, type WorkerMessage } from '../shared/protocol.js';
import { checkListenSecurity, readTlsCredentials, tokensMatch } from '../shared/security.js';
import { WorkerSession } from './session.js';

export interface ServerHandlers {
  onMessage(session: WorkerSession, message: WorkerMessage): void;
  onClose(session: WorkerSession, code: number, reason: string): void;
  onReceivedBytes(bytes: number): void;
  onSentBytes(bytes: number): void;
  onRejected(session: WorkerSession, error: ProtocolError): void;
}

/**
 * Bytes a connection may send before its `hello` is accepted, WebSocket framing
 * included. A hello contains four short strings and the token, so 16 KiB leaves room for a
 * long worker name and token while keeping the memory an unauthenticated peer can fill small.
 */
export const MAX_HELLO_BYTES = 16 * 1024;
// NOTE: the number of connections awaiting their hello is not capped; each one costs at
// most MAX_HELLO_BYTES of input and lasts at most until its hello deadline.

/** Reason a connection was closed before its `hello` was accepted: the label of `gradfleet_rejected_connections_total`. */
export type ConnectionRejection = 'unauthorized' | 'hello_timeout' | 'hello_too_big';

export interface ListenOptions {
  host: string;
  port: number;
  /** Frames over this size close the connection, in bytes. */
  maxPayloadBytes: number;
  /** Shared secret every `hello` must carry; any worker may join when unset. */
  token?: string;
  /** PEM files of the certificate and its key; when both are set the server speaks wss://. */
  tlsCert?: string;
  tlsKey?: string;
  /** Allows a non-loopback `host` without a token and TLS. */
  insecure: boolean;
  /** Time a new connection has to send `hello`, in milliseconds. */
  helloTimeoutMs: number;
  /** Counts connections closed before their `hello` was accepted, by reason. */
  rejectedConnections: Counter<'reason'>;
}

/**
 * The coordinator's WebSocket server: it accepts connections, decodes and validates
 * every frame, and hands valid messages to the coordinator. A frame that fails to decode
 * closes that connection and never reaches the training state.
 *
 * Until a connection's `hello` is accepted (right version, and the token when the
 * coordinator has one), no other message of it reaches the coordinator, and it may take
 * at most `helloTimeoutMs` and send at most MAX_HELLO_BYTES.
 */
export class CoordinatorServer {
  private server?: WebSocketServer;
  private httpServer?: Server;
  private nextId = 1;
  private heartbeat?: NodeJS.Timeout;
  private maxPayloadBytes = 0;
  private token?: string;
  private helloTimeoutMs = 0;
  private rejectedConnections?: Counter<'reason'>;
  /** Connections whose `hello` is not accepted yet, with the function that lifts their limits. */
  private readonly awaitingHello = new Map<WorkerSession, () => void>();
  /** `wss` when the server has a certificate, else `ws`; for URLs in log lines. */
  scheme: 'ws' | 'wss' = 'ws';
  readonly sessions = new Set<WorkerSession>();

  constructor(
    private readonly handlers: ServerHandlers,
    private readonly log: Logger,
  ) {}

  /**
   * Checks the address rule and the TLS files, then starts listening and returns the
   * port. The checks raise OptionError before any socket is opened.
   */
  async listen(options: ListenOptions): Promise<number> {
    const { host, port } = options;
    checkListenSecurity(options);
    const credentials = options.tlsCert !== undefined && options.tlsKey !== undefined ? readTlsCredentials(options.tlsCert, options.tlsKey) : undefined;
    this.maxPayloadBytes = options.maxPayloadBytes;
    this.token = options.token;
    this.helloTimeoutMs = options.helloTimeoutMs;
    this.rejectedConnections = options.rejectedConnections;
    this.scheme = credentials ? 'wss' : 'ws';

    // The TLS handshake and the HTTP upgrade get the hello deadline too, so that a peer
    // that stalls before the WebSocket opens is dropped as fast as one that stalls after.
    const httpServer = credentials ? createHttpsServer({ ...credentials, handshakeTimeout: options.helloTimeoutMs }) : createHttpServer();
    httpServer.headersTimeout = options.helloTimeoutMs;
    httpServer.on('request', (_request: IncomingMessage, response: ServerResponse) => {
      response.writeHead(426, { 'content-type': 'text/plain' }).end('this port serves gradfleet workers over WebSocket; metrics are on --metrics-port\n');
    });
    this.httpServer = httpServer;
    const server = new WebSocketServer({ server: httpServer, maxPayload: options.maxPayloadBytes, perMessageDeflate: false });
    this.server = server;
    server.on('connection', (socket, request) => this.accept(socket, request));
    await new Promise<void>((resolve, reject) => {
      server.once('listening', resolve);
      server.once('error', (error: NodeJS.ErrnoException) => {
        const hint = error.code === 'EADDRINUSE' ? '; pass another --port, or 0 for any free port' : '';
        reject(new ListenError(`coordinator failed to listen on ${host}:${port}: ${error.message}${hint}`));
      });
      httpServer.listen(port, host);
    });
    return (httpServer.address() as AddressInfo).port;
  }

  private accept(socket: WebSocket, request: IncomingMessage): void {
    const remote = `${request.socket.remoteAddress}:${request.socket.remotePort}`;
    const session = new WorkerSession(`w${this.nextId++}`, socket, (bytes) => this.handlers.onSentBytes(bytes), remote);
    this.sessions.add(session);
    this.log.debug('connection opened', { workerId: session.workerId, remote });
    this.limitHandshake(session, socket, request.socket);
    socket.on('message', (data: RawData, isBinary: boolean) => this.receive(session, data, isBinary));
    socket.on('close', (code: number, reason: Buffer) => {
      this.awaitingHello.get(session)?.();
      this.sessions.delete(session);
      const wasOpen = session.state !== 'closed';
      session.state = 'closed';
      const closeReason = session.closeReason ?? (wasOpen ? reason.toString() : 'closed by the coordinator');
      this.handlers.onClose(session, code, closeReason);
    });
    socket.on('error', (error: Error & { code?: string }) => {
      // ws emits 'error' for oversized or invalid frames and then closes the socket (1009 for oversized).
      if (error.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH') {
        // A session closed already was rejected before its hello for the same frame.
        if (session.state === 'closed') return;
        this.handlers.onRejected(session, new ProtocolError('MESSAGE_TOO_BIG', `message over the limit of ${this.maxPayloadBytes} bytes: ${error.message}`));
        return;
      }
      this.log.warn('worker connection error', { workerId: session.workerId, error: error.message });
    });
  }

  /**
   * Closes a connection that sends no `hello` within the deadline, or more than
   * MAX_HELLO_BYTES before its hello is accepted. The bytes are counted as they arrive
   * on the TCP (or TLS) socket, so a peer cannot make ws buffer a large first frame.
   * Both checks skip a connection that is closing already for another reason.
   */
  private limitHandshake(session: WorkerSession, socket: WebSocket, transport: Duplex): void {
    let received = 0;
    const countBytes = (chunk: Buffer): void => {
      if (socket.readyState !== WebSocket.OPEN) return;
      received += chunk.byteLength;
      if (received > MAX_HELLO_BYTES) this.rejectLargeHandshake(session, transport, received);
    };
    const timer = setTimeout(() => {
      if (socket.readyState !== WebSocket.OPEN) return;
      this.rejectConnection(session, 'hello_timeout', `no hello within ${this.helloTimeoutMs} ms`);
      session.close(CLOSE_CODES.helloTimeout, `no hello within ${this.helloTimeoutMs} ms`);
    }, this.helloTimeoutMs);
    transport.on('data', countBytes);
    this.awaitingHello.set(session, () => {
      clearTimeout(timer);
      transport.off('data', countBytes);
      this.awaitingHello.delete(session);
    });
  }

  /**
   * Closes with 1009 (message too big) a connection that sent more than MAX_HELLO_BYTES
   * before its hello. ws parses input in its own 'data' listener; removing it stops ws from
   * buffering the rest of the frame, and resume() discards whatever still arrives until
   * the peer replies to the close frame or ws gives up waiting for it.
   */
  private rejectLargeHandshake(session: WorkerSession, transport: Duplex, received: number): void {
    const detail = `${received} bytes arrived before a hello was accepted; the limit before hello is ${MAX_HELLO_BYTES} bytes`;
    this.awaitingHello.get(session)?.();
    this.rejectConnection(session, 'hello_too_big', detail);
    this.handlers.onRejected(session, new ProtocolError('MESSAGE_TOO_BIG', detail));
    transport.removeAllListeners('data');
    transport.resume();
    session.close(CLOSE_CODES.messageTooBig, 'message too big before hello');
  }

  /**
   * Accepts a connection's first message when it is a `hello` with the right token, and
   * lifts the handshake limits. Anything else closes the connection; returns whether the
   * message may go on to the coordinator.
   */
  private acceptHello(session: WorkerSession, message: WorkerMessage): boolean {
    if (message.type !== 'hello') {
      const error = new ProtocolError('UNEXPECTED_MESSAGE', `unexpected "${message.type}" message: the first message on a connection must be "hello"`);
      this.handlers.onRejected(session, error);
      session.closeWithError(error.code, error.message, closeCodeForError(error.code));
      return false;
    }
    if (this.token !== undefined && !tokensMatch(this.token, message.token)) {
      this.rejectUnauthorized(session, message);
      return false;
    }
    this.awaitingHello.get(session)?.();
    return true;
  }

  private rejectUnauthorized(session: WorkerSession, hello: HelloMessage): void {
    const problem = hello.token === undefined ? 'missing token' : 'wrong token';
    const fix = "set GRADFLEET_TOKEN (or --token) on the worker to the coordinator's token";
    this.rejectConnection(session, 'unauthorized', problem, hello.workerName);
    session.closeWithError('UNAUTHORIZED', `worker rejected: ${problem}; ${fix}`, CLOSE_CODES.unauthorized, `${problem}: ${fix}`);
  }

  /** Counts and logs a connection closed before its hello was accepted; the token never goes into the log. */
  private rejectConnection(session: WorkerSession, reason: ConnectionRejection, detail: string, workerName?: string): void {
    this.rejectedConnections?.inc({ reason });
    this.log.warn('connection rejected', { reason, workerId: session.workerId, worker: workerName, remote: session.remoteAddress, detail });
  }

  private receive(session: WorkerSession, data: RawData, isBinary: boolean): void {
    const frame = Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
    this.handlers.onReceivedBytes(frame.byteLength);
    let message: WorkerMessage;
    try {
      if (!isBinary) throw new ProtocolError('MALFORMED_MESSAGE', 'malformed message: text frames are not part of the protocol');
      message = decodeWorkerMessage(frame);
    } catch (error) {
      if (!(error instanceof ProtocolError)) throw error;
      this.handlers.onRejected(session, error);
      session.closeWithError(error.code, error.message, closeCodeForError(error.code));
      return;
    }
    if (this.awaitingHello.has(session) && !this.acceptHello(session, message)) return;
    this.handlers.onMessage(session, message);
  }

  /**
   * Pings every connection every `intervalMs` and terminates those that missed two pings
   * in a row, such as a worker stopped with SIGSTOP or cut off by the network.
   */
  startHeartbeats(intervalMs: number): void {
    this.heartbeat = setInterval(() => {
      for (const session of this.sessions) {
        if (session.ping()) continue;
        this.log.warn('worker missed 2 heartbeats; dropping it', { workerId: session.workerId, worker: session.workerName, heartbeatMs: intervalMs });
        session.terminate('heartbeat timeout');
      }
    }, intervalMs);
  }

  async close(): Promise<void> {
    clearInterval(this.heartbeat);
    for (const release of [...this.awaitingHello.values()]) release();
    const server = this.server;
    const httpServer = this.httpServer;
    this.server = undefined;
    this.httpServer = undefined;
    if (!server || !httpServer) return;
    for (const client of server.clients) client.terminate();
    await new Promise<void>((resolve) => server.close(() => resolve()));
    // ws leaves a server it was handed open, so it is closed here.
    httpServer.closeAllConnections();
    await new Promise<void>((resolve) => httpServer.close(() => resolve()));
  }
}
