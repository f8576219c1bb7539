import type { IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { WebSocketServer, type RawData, type WebSocket } from 'ws';
import { decodeWorkerMessage } from '../shared/codec.js';
import { ListenError } from '../shared/metrics-server.js';
import type { Logger } from '../shared/log.js';
import { closeCodeForError, ProtocolError, type WorkerMessage } from '../shared/protocol.js';
import { WorkerSession } from './session.js';

export interface ServerHandlers {
  onMessage(session: WorkerSession, message: WorkerMessage): void;
  onClose(session: WorkerSession, code: number, reason: string): void;
  onReceivedBytes(bytes: number): void;
  onSentBytes(bytes: number): void;
  onRejected(session: WorkerSession, error: ProtocolError): void;
}

/**
 * The coordinator's WebSocket server: it accepts connections, decodes and validates
 * every frame, and hands valid messages to the coordinator. A frame that fails to decode
 * closes that connection and never reaches the training state.
 */
export class CoordinatorServer {
  private server?: WebSocketServer;
  private nextId = 1;
  private heartbeat?: NodeJS.Timeout;
  private maxPayloadBytes = 0;
  readonly sessions = new Set<WorkerSession>();

  constructor(
    private readonly handlers: ServerHandlers,
    private readonly log: Logger,
  ) {}

  /** Starts listening and returns the port; frames over `maxPayloadBytes` close the connection. */
  async listen(host: string, port: number, maxPayloadBytes: number): Promise<number> {
    this.maxPayloadBytes = maxPayloadBytes;
    const server = new WebSocketServer({ host, port, maxPayload: maxPayloadBytes, perMessageDeflate: false });
    this.server = server;
    server.on('connection', (socket, request) => this.accept(socket, request));
    await new Promise<void>((resolve, reject) => {
      server.once('listening', resolve);
      server.once('error', (error: NodeJS.ErrnoException) => {
        const hint = error.code === 'EADDRINUSE' ? '; pass another --port, or 0 for any free port' : '';
        reject(new ListenError(`coordinator failed to listen on ${host}:${port}: ${error.message}${hint}`));
      });
    });
    return (server.address() as AddressInfo).port;
  }

  private accept(socket: WebSocket, request: IncomingMessage): void {
    const session = new WorkerSession(`w${this.nextId++}`, socket, (bytes) => this.handlers.onSentBytes(bytes));
    this.sessions.add(session);
    this.log.debug('connection opened', { workerId: session.workerId, remote: request.socket.remoteAddress });
    socket.on('message', (data: RawData, isBinary: boolean) => this.receive(session, data, isBinary));
    socket.on('close', (code: number, reason: Buffer) => {
      this.sessions.delete(session);
      const wasOpen = session.state !== 'closed';
      session.state = 'closed';
      const closeReason = session.closeReason ?? (wasOpen ? reason.toString() : 'closed by the coordinator');
      this.handlers.onClose(session, code, closeReason);
    });
    socket.on('error', (error: Error & { code?: string }) => {
      // ws emits 'error' for oversized or invalid frames and then closes the socket (1009 for oversized).
      if (error.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH') {
        this.handlers.onRejected(session, new ProtocolError('MESSAGE_TOO_BIG', `message over the limit of ${this.maxPayloadBytes} bytes: ${error.message}`));
        return;
      }
      this.log.warn('worker connection error', { workerId: session.workerId, error: error.message });
    });
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
    const server = this.server;
    this.server = undefined;
    if (!server) return;
    for (const client of server.clients) client.terminate();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}
