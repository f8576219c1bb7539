/**
 * A small structured logger: a fixed message plus a context object, printed either as
 * one human-readable line or as one JSON object per line (`--log-format json`).
 */

export const LOG_FORMATS = ['text', 'json'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

export const LOG_LEVELS = ['debug', 'info', 'warn', 'error'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export type LogContext = Record<string, unknown>;

export interface LoggerOptions {
  format: LogFormat;
  level: LogLevel;
  /** Written in every line, so that interleaved output of several processes stays readable. */
  name: string;
  /** Output function for finished lines; standard output unless a test captures them. */
  write?: (line: string) => void;
}

export class Logger {
  private readonly minimum: number;
  private readonly write: (line: string) => void;

  constructor(private readonly options: LoggerOptions) {
    this.minimum = LOG_LEVELS.indexOf(options.level);
    this.write = options.write ?? ((line) => process.stdout.write(`${line}\n`));
  }

  debug(message: string, context: LogContext = {}): void {
    this.log('debug', message, context);
  }

  info(message: string, context: LogContext = {}): void {
    this.log('info', message, context);
  }

  warn(message: string, context: LogContext = {}): void {
    this.log('warn', message, context);
  }

  error(message: string, context: LogContext = {}): void {
    this.log('error', message, context);
  }

  /**
   * Prints a line meant for people, such as the Keras-style epoch summary, in text format.
   * In JSON format it prints the context instead, under `message`.
   */
  report(text: string, message: string, context: LogContext): void {
    if (this.options.format === 'json') this.log('info', message, context);
    else this.write(text);
  }

  private log(level: LogLevel, message: string, context: LogContext): void {
    if (LOG_LEVELS.indexOf(level) < this.minimum) return;
    const time = new Date().toISOString();
    if (this.options.format === 'json') {
      this.write(JSON.stringify({ time, level, name: this.options.name, msg: message, ...context }));
      return;
    }
    const fields = Object.entries(context)
      .map(([key, value]) => `${key}=${formatValue(value)}`)
      .join(' ');
    this.write(`${time} ${level.toUpperCase().padEnd(5)} ${this.options.name}: ${message}${fields ? ` ${fields}` : ''}`);
  }
}

function formatValue(value: unknown): string {
  if (typeof value === 'number') return Number.isInteger(value) ? String(value) : value.toPrecision(4);
  if (typeof value === 'string') return /\s/.test(value) ? JSON.stringify(value) : value;
  if (value instanceof Error) return JSON.stringify(value.message);
  return JSON.stringify(value);
}
