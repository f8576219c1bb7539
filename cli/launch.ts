import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { ArgumentsCamelCase, Argv } from 'yargs';
import { Logger } from '../shared/log.js';
import { EXIT, makeLogger, SIGNAL_EXIT, type CommonArguments } from './common.js';
import { COMMON_OPTIONS, COORDINATOR_OPTIONS, LAUNCH_OPTIONS } from './options.js';

export const command = 'launch';
export const describe = 'Run a coordinator and --workers local worker processes in one command';

export function builder(yargs: Argv): Argv {
  return yargs.options({ ...LAUNCH_OPTIONS, ...COMMON_OPTIONS });
}

/** Report a child sends over its IPC channel once its servers listen. */
interface ListeningReport {
  type: 'listening';
  port?: number;
  metricsPort: number;
}

/**
 * How long children get to exit after SIGTERM before they are killed, in milliseconds.
 * A coordinator may take 8 s to finish its step and then writes a checkpoint, so it gets
 * more than a worker, which only closes its connection.
 */
const STOP_GRACE_MS = { coordinator: 12_000, worker: 5_000 };

function camelCase(flag: string): string {
  return flag.replace(/-([a-z])/g, (_, letter: string) => letter.toUpperCase());
}

/** Flags that never go on a child's command line, where ps shows them to every user; children read them from the environment. */
const SECRET_FLAGS = new Set(['token']);

/** Turns parsed options back into command-line flags for a child process, leaving out SECRET_FLAGS. */
function toFlags(args: Record<string, unknown>, flags: string[]): string[] {
  const result: string[] = [];
  for (const flag of flags) {
    if (SECRET_FLAGS.has(flag)) continue;
    const value = args[camelCase(flag)];
    if (value === undefined) continue;
    if (typeof value === 'boolean') result.push(value ? `--${flag}` : `--no-${flag}`);
    else result.push(`--${flag}`, String(value));
  }
  return result;
}

/**
 * Starts children and prefixes each line of their output with their name, as torchrun
 * does, so that interleaved output stays readable.
 */
class ChildGroup {
  readonly children = new Map<string, ChildProcess>();

  constructor(private readonly log: Logger) {}

  start(name: string, args: string[]): ChildProcess {
    // A process group of its own keeps a terminal's Ctrl-C from reaching the children
    // directly: launch forwards the signal in the order that lets every child stop
    // gracefully. A child whose launch is gone stops when its IPC channel closes.
    const child = spawn(process.execPath, [process.argv[1], ...args], { stdio: ['ignore', 'pipe', 'pipe', 'ipc'], detached: true });
    this.children.set(name, child);
    const width = Math.max(...[...this.children.keys()].map((key) => key.length), 11);
    for (const stream of [child.stdout!, child.stderr!]) {
      const target = stream === child.stdout ? process.stdout : process.stderr;
      createInterface({ input: stream }).on('line', (line) => target.write(`[${name.padEnd(width)}] ${line}\n`));
    }
    child.on('exit', (code, signal) => {
      this.children.delete(name);
      if (code !== 0) this.log.warn('process exited', { process: name, code, signal });
    });
    return child;
  }

  /**
   * Stops every child gracefully and returns true when all of them exited with status 0.
   * The coordinator goes first, so that it finishes its step and writes its checkpoint
   * while its workers are still there. The workers, which are reconnecting by then, follow.
   */
  async stopAll(signal: NodeJS.Signals = 'SIGTERM'): Promise<boolean> {
    const coordinator = this.children.get('coordinator');
    const statuses = coordinator ? [await this.stopChild(coordinator, signal, STOP_GRACE_MS.coordinator)] : [];
    statuses.push(...(await Promise.all([...this.children.values()].map((child) => this.stopChild(child, signal, STOP_GRACE_MS.worker)))));
    return statuses.every((status) => status === 0);
  }

  /** Sends `signal` to a child, then SIGKILL if it is still running after `graceMs`; returns its exit status. */
  private async stopChild(child: ChildProcess, signal: NodeJS.Signals, graceMs: number): Promise<number> {
    if (child.exitCode !== null) return child.exitCode;
    if (child.signalCode !== null) return 128;
    const exited = waitForExit(child);
    child.kill(signal);
    const killer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    const status = await exited;
    clearTimeout(killer);
    return status;
  }

  /** Ends every child at once, for a second signal. */
  killAll(): void {
    for (const child of this.children.values()) child.kill('SIGKILL');
  }
}

function waitForListening(child: ChildProcess, name: string): Promise<ListeningReport> {
  return new Promise((resolve, reject) => {
    child.on('message', (message: ListeningReport) => {
      if (message?.type === 'listening') resolve(message);
    });
    child.once('exit', (code) => reject(new Error(`${name} exited with status ${code} before it was ready; see its output above`)));
  });
}

function waitForExit(child: ChildProcess): Promise<number> {
  if (child.exitCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => child.once('exit', (code, signal) => resolve(code ?? (signal ? 128 : 1))));
}

export async function handler(args: ArgumentsCamelCase): Promise<void> {
  const options = args as unknown as CommonArguments &
    Record<string, unknown> & { workers: number; metricsPort: number; host: string; token?: string; tlsCert?: string };
  const log = makeLogger(options, 'launch');
  const group = new ChildGroup(log);
  let stopping = false;
  // Like each child, launch stops gracefully on the first signal and at once on the second.
  const stop = (signal: NodeJS.Signals) => {
    if (stopping) {
      log.warn('second signal: killing all processes', { signal });
      group.killAll();
      process.exit(SIGNAL_EXIT[signal]);
    }
    stopping = true;
    log.info('stopping all processes; a second signal kills them', { signal });
    void group.stopAll(signal).then((clean) => {
      if (!clean) log.error('a process did not stop cleanly; see its output above');
      process.exit(clean ? EXIT.ok : EXIT.failed);
    });
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);

  // The children inherit this process's environment, so the token reaches them there.
  if (options.token !== undefined) process.env.GRADFLEET_TOKEN = String(options.token);
  const coordinatorFlags = toFlags(options, [...Object.keys(COORDINATOR_OPTIONS), ...Object.keys(COMMON_OPTIONS)]);
  const coordinator = group.start('coordinator', ['coordinator', ...coordinatorFlags]);
  const coordinatorExit = waitForExit(coordinator);
  let ports: ListeningReport;
  try {
    ports = await waitForListening(coordinator, 'the coordinator');
  } catch (error) {
    log.error('launch failed', { error: (error as Error).message });
    process.exitCode = await coordinatorExit;
    return;
  }

  const host = options.host === '0.0.0.0' || options.host === '::' ? '127.0.0.1' : options.host;
  const scheme = options.tlsCert !== undefined ? 'wss' : 'ws';
  const url = `${scheme}://${host.includes(':') ? `[${host}]` : host}:${ports.port}`;
  // Local workers trust the coordinator's own certificate, which suits a self-signed one
  // issued for the address they connect to. With --insecure they may also send the token
  // over ws:// to a --host that is not loopback, which is this machine's own address.
  const workerFlags = [
    ...toFlags(options, Object.keys(COMMON_OPTIONS)),
    ...(options.tlsCert !== undefined ? ['--ca', String(options.tlsCert)] : []),
    ...(options.insecure === true ? ['--insecure'] : []),
  ];
  const workerPorts: Promise<ListeningReport>[] = [];
  const workerFailures: Promise<string>[] = [];
  for (let i = 1; i <= options.workers; i++) {
    const metricsPort = options.metricsPort === 0 ? 0 : ports.metricsPort + i;
    const name = `worker-${i}`;
    const child = group.start(name, ['worker', '--coordinator', url, '--name', name, '--metrics-port', String(metricsPort), ...workerFlags]);
    workerPorts.push(waitForListening(child, name));
    workerFailures.push(waitForExit(child).then((code) => (code === 0 ? new Promise<string>(() => {}) : `${name} exited with status ${code}`)));
  }
  const reported = await Promise.allSettled(workerPorts);
  const metrics: Record<string, string> = { coordinator: `http://${host}:${ports.metricsPort}/metrics` };
  reported.forEach((result, i) => {
    if (result.status === 'fulfilled') metrics[`worker-${i + 1}`] = `http://${host}:${result.value.metricsPort}/metrics`;
  });
  log.info('started', { coordinator: url, workers: options.workers, metrics });

  // Like torchrun, launch fails as a whole when one of its local workers fails: the
  // coordinator would otherwise wait for it for ever.
  const outcome = await Promise.race([coordinatorExit.then((status) => ({ status, failure: undefined })), Promise.race(workerFailures).then((failure) => ({ status: EXIT.failed, failure }))]);
  if (stopping) return;
  if (outcome.failure) {
    log.error(`${outcome.failure}; stopping all processes (see its output above)`);
    await group.stopAll();
    process.exitCode = EXIT.failed;
    return;
  }
  if (outcome.status !== 0) log.error('the coordinator failed; stopping the workers', { status: outcome.status });
  // Workers exit by themselves once the coordinator sends `done`.
  const stragglers = setTimeout(() => void group.stopAll(), STOP_GRACE_MS.worker);
  await Promise.all([...group.children.values()].map(waitForExit));
  clearTimeout(stragglers);
  process.exitCode = outcome.status === 0 ? EXIT.ok : outcome.status;
}
