import type { Logger } from '../shared/log.js';
import type { WorkerSession } from './session.js';

/** How often a long wait for workers is reported, in milliseconds. */
const WAIT_REPORT_INTERVAL_MS = 10_000;

/** Raised by `Coordinator.run` and by waits for workers when the coordinator is closed meanwhile. */
export class CoordinatorClosedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CoordinatorClosedError';
  }
}

/**
 * The coordinator's view of which workers take part. Sessions are admitted at step
 * boundaries. Any number of waiters can wait for the next change: a worker connected,
 * became ready, sent a message or left.
 */
export class Membership {
  private waiters: (() => void)[] = [];
  private closed = false;

  constructor(
    private readonly sessions: ReadonlySet<WorkerSession>,
    private readonly log: Logger,
    /** The address workers connect to, for the log lines of a long wait. */
    private readonly url: () => string,
  ) {}

  /** Sessions taking part in steps. */
  active(): WorkerSession[] {
    return [...this.sessions].filter((session) => session.state === 'active');
  }

  /** Sessions that passed the self-check, whether admitted yet or not. */
  readyCount(): number {
    return [...this.sessions].filter((session) => session.state === 'waiting' || session.state === 'active').length;
  }

  /** Admits every session that passed its self-check since the last step boundary. */
  admitWaiting(step: number): WorkerSession[] {
    const admitted: WorkerSession[] = [];
    for (const session of this.sessions) {
      if (session.state !== 'waiting') continue;
      session.transition('admit');
      admitted.push(session);
      this.log.info('worker admitted', { workerId: session.workerId, worker: session.workerName, step });
    }
    return admitted;
  }

  /** Resolves at the next change, or after `timeoutMs`. */
  changed(timeoutMs = WAIT_REPORT_INTERVAL_MS): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, timeoutMs);
      this.waiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  notify(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }

  /**
   * Resolves once `count` workers are ready or active. The wait is logged when it starts,
   * when the number of ready workers changes, and every WAIT_REPORT_INTERVAL_MS.
   */
  async waitFor(count: number, purpose: string): Promise<void> {
    const started = Date.now();
    let reported = -1;
    let reportedAt = 0;
    while (this.readyCount() < count) {
      if (this.closed) throw new CoordinatorClosedError('the coordinator was stopped while waiting for workers');
      const ready = this.readyCount();
      if (ready !== reported || Date.now() - reportedAt >= WAIT_REPORT_INTERVAL_MS) {
        reported = ready;
        reportedAt = Date.now();
        this.log.info(`waiting for ${count - ready} more worker(s) ${purpose}`, {
          ready,
          needed: count,
          url: this.url(),
          waitedSeconds: Math.round((Date.now() - started) / 1000),
        });
      }
      await this.changed();
    }
  }

  /** Ends every wait: pending and later `waitFor` calls raise. */
  close(): void {
    this.closed = true;
    this.notify();
  }
}
