import type { WebSocket } from 'ws';
import { encodeMessage } from '../shared/codec.js';
import { CLOSE_CODES, type CoordinatorMessage, type ErrorCode } from '../shared/protocol.js';

/**
 * A worker connection's lifecycle, as tracked by the coordinator:
 * handshaking → (hello) → checking → (ready) → waiting → (step boundary) → active → closed.
 */
export type SessionState = 'handshaking' | 'checking' | 'waiting' | 'active' | 'closed';

/** Raised when a session is asked to do something its state does not allow. */
export class SessionStateError extends Error {
  constructor(workerId: string, from: SessionState, event: string) {
    super(`worker ${workerId}: "${event}" is not allowed in state "${from}"`);
    this.name = 'SessionStateError';
  }
}

const TRANSITIONS: Record<string, { from: SessionState[]; to: SessionState }> = {
  hello: { from: ['handshaking'], to: 'checking' },
  ready: { from: ['checking'], to: 'waiting' },
  admit: { from: ['waiting'], to: 'active' },
};

/** One worker's connection and the coordinator's record of it. */
export class WorkerSession {
  state: SessionState = 'handshaking';
  workerName = '';
  backend = '';
  gradfleetVersion = '';
  /** Heartbeat pings sent since the last pong. */
  missedHeartbeats = 0;
  /** Step deadlines missed in a row; reset by an accepted gradient. */
  consecutiveTimeouts = 0;
  /** Reason the coordinator ended the connection, for the disconnect log line. */
  closeReason?: string;

  constructor(
    readonly workerId: string,
    private readonly socket: WebSocket,
    private readonly countSent: (bytes: number) => void,
    /** The peer's address and port, for log lines about this connection. */
    readonly remoteAddress = '',
  ) {
    socket.on('pong', () => (this.missedHeartbeats = 0));
  }

  /**
   * Sends a heartbeat ping and returns false when the previous two went unanswered, in
   * which case the caller should end the connection.
   */
  ping(): boolean {
    if (this.missedHeartbeats >= 2) return false;
    this.missedHeartbeats++;
    this.socket.ping();
    return true;
  }

  /** Moves to the state that `event` leads to, or raises if the event is out of order. */
  transition(event: keyof typeof TRANSITIONS): void {
    const rule = TRANSITIONS[event];
    if (!rule.from.includes(this.state)) throw new SessionStateError(this.workerId, this.state, event);
    this.state = rule.to;
  }

  send(message: CoordinatorMessage): void {
    this.sendFrame(encodeMessage(message));
  }

  /** Sends an already encoded frame, so that one weights buffer can serve every worker. */
  sendFrame(frame: Buffer): void {
    if (this.state === 'closed') return;
    this.socket.send(frame, { binary: true });
    this.countSent(frame.byteLength);
  }

  /**
   * Tells the worker why the connection ends, then closes it with `closeCode` and
   * `reason` (the error code unless given; a close frame has room for 123 bytes).
   */
  closeWithError(code: ErrorCode, message: string, closeCode: number, reason: string = code): void {
    if (this.state === 'closed') return;
    this.send({ type: 'error', code, message });
    this.close(closeCode, reason);
  }

  close(closeCode: number = CLOSE_CODES.normal, reason = ''): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.socket.close(closeCode, reason.slice(0, 120));
  }

  /** Ends the connection at once, without a closing handshake; `reason` goes to the log. */
  terminate(reason?: string): void {
    this.closeReason = reason;
    this.socket.terminate();
  }
}

/** Close codes the coordinator sends or receives, by the reason label of the disconnect metric. */
const DISCONNECT_REASONS = new Map<number, string>([
  [CLOSE_CODES.workerLeaving, 'left'],
  [CLOSE_CODES.protocolVersionMismatch, 'protocol_version_mismatch'],
  [CLOSE_CODES.malformedMessage, 'malformed_message'],
  [CLOSE_CODES.selfCheckFailed, 'self_check_failed'],
  [CLOSE_CODES.unauthorized, 'unauthorized'],
  [CLOSE_CODES.helloTimeout, 'hello_timeout'],
  [CLOSE_CODES.messageTooBig, 'message_too_big'],
]);

/**
 * Returns why a worker's connection ended, as a metric label. The coordinator's own reason
 * comes first when it dropped the worker, then the close code's meaning. Anything else is
 * `connection_lost`, because a crashed process or a cut network closes without a code (ws reports 1006).
 */
export function disconnectReason(code: number, coordinatorReason: string | undefined): string {
  if (coordinatorReason === 'heartbeat timeout') return 'heartbeat_timeout';
  if (coordinatorReason?.startsWith('step timeout')) return 'step_timeout';
  return DISCONNECT_REASONS.get(code) ?? 'connection_lost';
}
