import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

/** The compiled CLI; `npm test` builds it before vitest runs. */
export const CLI = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'dist', 'cli', 'main.js');

/** A gradfleet process started by a test, with its output kept line by line. */
export class CliProcess {
  readonly child: ChildProcess;
  readonly lines: string[] = [];
  readonly stderr: string[] = [];
  readonly exited: Promise<number>;
  private waiters: { predicate: (line: string) => boolean; resolve: (line: string) => void }[] = [];

  /** `wrapper` runs the CLI through another command, such as `ip netns exec NAME`. */
  constructor(args: string[], env: NodeJS.ProcessEnv = {}, wrapper: string[] = []) {
    const [command, ...prefix] = [...wrapper, process.execPath];
    this.child = spawn(command, [...prefix, CLI, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    createInterface({ input: this.child.stdout! }).on('line', (line) => this.onLine(line, this.lines));
    createInterface({ input: this.child.stderr! }).on('line', (line) => this.onLine(line, this.stderr));
    this.exited = new Promise((resolve) => this.child.once('exit', (code, signal) => resolve(code ?? (signal ? -1 : 1))));
  }

  private onLine(line: string, into: string[]): void {
    into.push(line);
    this.waiters = this.waiters.filter((waiter) => {
      if (!waiter.predicate(line)) return true;
      waiter.resolve(line);
      return false;
    });
  }

  /** Resolves with the first output line (past or future) that matches. */
  waitForLine(predicate: (line: string) => boolean, timeoutMs = 60_000): Promise<string> {
    const seen = [...this.lines, ...this.stderr].find(predicate);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out waiting for a line; output so far:\n${this.output()}`)), timeoutMs);
      this.waiters.push({ predicate, resolve: (line) => (clearTimeout(timer), resolve(line)) });
    });
  }

  /** Resolves with the first JSON log line whose `msg` equals `message`. */
  async waitForLog(message: string, timeoutMs?: number): Promise<Record<string, any>> {
    const line = await this.waitForLine((text) => jsonLine(text)?.msg === message, timeoutMs);
    return jsonLine(line)!;
  }

  /** Returns the JSON log lines printed so far, or only those whose `msg` equals `message`. */
  logs(message?: string): Record<string, any>[] {
    return this.lines.map(jsonLine).filter((entry): entry is Record<string, any> => !!entry && (!message || entry.msg === message));
  }

  output(): string {
    return [...this.lines, ...this.stderr.map((line) => `stderr: ${line}`)].join('\n');
  }

  kill(signal: NodeJS.Signals = 'SIGKILL'): void {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
  }
}

/** Parses a JSON log line, even one prefixed by `launch` with the process name. */
export function jsonLine(line: string): Record<string, any> | undefined {
  const start = line.indexOf('{');
  if (start < 0) return undefined;
  try {
    return JSON.parse(line.slice(start));
  } catch {
    return undefined;
  }
}

export function temporaryFolder(prefix: string): string {
  return mkdtempSync(join(tmpdir(), `gradfleet-${prefix}-`));
}
