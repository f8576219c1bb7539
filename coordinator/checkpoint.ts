/**
 * Checkpoints: a snapshot of everything the coordinator alone writes (the weights, the
 * optimizer state, the position in the epoch plan and the sample ledger) plus the
 * options that shaped them, so that a restarted coordinator continues the same run.
 *
 * File layout, all integers little-endian:
 *
 *   bytes 0–7    magic "GFLTCKPT"
 *   bytes 8–11   format version (uint32)
 *   bytes 12–19  body length in bytes (uint64)
 *   bytes 20–51  SHA-256 of the body
 *   bytes 52–    body: one MessagePack map (see `Checkpoint`); typed arrays are stored
 *                as raw little-endian bytes
 *
 * A file is written to a temporary name in the same folder, flushed with fsync and
 * renamed into place, and the folder is flushed too, so that a crash leaves either the
 * old set of checkpoints or the new one. The checksum catches what the rename cannot:
 * a file truncated or damaged later, on disk or in a copy.
 */

import { createHash } from 'node:crypto';
import { open, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { Packr } from 'msgpackr';
import { DEFAULT_BATCH_SIZE, type CoordinatorOptions, type ModelName } from '../shared/options.js';
import type { OptimizerState } from './optimizer.js';

export const CHECKPOINT_FORMAT_VERSION = 1;

const MAGIC = Buffer.from('GFLTCKPT', 'ascii');
const HEADER_BYTES = MAGIC.length + 4 + 8 + 32;
const FILE_PATTERN = /^checkpoint-(\d+)\.ckpt$/;
const TEMPORARY_PATTERN = /^\.checkpoint-\d+\.ckpt\.\d+\.tmp$/;

const packr = new Packr({ useRecords: false, moreTypes: false });

/**
 * Options whose values shape the updates, so a checkpoint can only be resumed with the
 * same values. The others (epochs, max-steps, ports, workers' count, logging) only
 * decide when to stop or how to run, and may change between restarts. An option added
 * to `CoordinatorOptions` that changes the updates belongs in this list.
 */
export const RESUME_MUST_MATCH = [
  'model',
  'optimizer',
  'lr',
  'lrScaling',
  'warmupSteps',
  'momentum',
  'batchSize',
  'batchSizePerWorker',
  'seed',
  'trainLimit',
  'dataDir',
  'workers',
  'gradientEncoding',
] as const satisfies readonly (keyof CoordinatorOptions)[];

export type ResumeOption = (typeof RESUME_MUST_MATCH)[number];

/**
 * Values compared in place of the raw option, where two spellings mean the same run: an
 * unset --batch-size is the default batch, a relative --data-dir is resolved, and
 * --workers shapes the updates only through --lr-scaling linear.
 */
const EFFECTIVE_VALUE: Partial<Record<ResumeOption, (options: RecordedOptions) => unknown>> = {
  batchSize: (options) => (options.batchSizePerWorker === undefined ? (options.batchSize ?? DEFAULT_BATCH_SIZE) : undefined),
  dataDir: (options) => (typeof options.dataDir === 'string' ? resolve(options.dataDir) : undefined),
  workers: (options) => (options.lrScaling === 'linear' ? options.workers : undefined),
  // Checkpoints written before the option existed were fp32 runs.
  gradientEncoding: (options) => options.gradientEncoding ?? 'fp32',
};

/** The options as a checkpoint stores them: plain values, without the unset ones. */
export type RecordedOptions = Partial<Record<keyof CoordinatorOptions, string | number | boolean>>;

/** The state of the epoch in progress, kept so that its report and its sample count stay right after a resume. */
export interface EpochProgress {
  /** Epoch number, counted from 1. */
  epoch: number;
  /** Index into the epoch's shuffled order of the next sample to use; the order's length once the epoch is done. */
  position: number;
  /** How many times each training sample went into an applied update in this epoch (the sample ledger). */
  ledgerCounts: Uint8Array;
  /** Steps run in this epoch, skipped ones included. */
  steps: number;
  /** Sum of the per-example training loss over the applied updates. */
  lossSum: number;
  /** Examples classified correctly in the applied updates. */
  correct: number;
  /** Examples in the applied updates. */
  examples: number;
  /** Training time in this epoch so far, in seconds. */
  elapsedSeconds: number;
}

/** One trainable weight: its wire name, shape and float32 values. */
export interface CheckpointTensor {
  name: string;
  shape: number[];
  data: Float32Array;
}

/** Everything a checkpoint file holds. */
export interface Checkpoint {
  formatVersion: number;
  gradfleetVersion: string;
  /** When the file was written, as an ISO 8601 time. */
  createdAt: string;
  model: ModelName;
  /** Height, width and channels of one image. */
  inputShape: [number, number, number];
  numClasses: number;
  /** Trainable weights in `parameterSpecs` order. */
  weights: CheckpointTensor[];
  optimizer: OptimizerState;
  /** Steps taken so far, which is also the number of the next step. */
  step: number;
  /** Steps skipped in a row for non-finite gradients, up to this checkpoint. */
  skippedInARow: number;
  progress: EpochProgress;
  seed: number;
  options: RecordedOptions;
}

/** Raised for a file that is not a complete, valid checkpoint; the message gives the reason. */
export class CheckpointError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CheckpointError';
  }
}

/** Options never written to a checkpoint, because a checkpoint file is copied and shared like a model. */
const SECRET_OPTIONS = new Set<string>(['token']);

/** Returns the options to store in a checkpoint: every set option but the secrets, with --data-dir resolved. */
export function recordOptions(options: CoordinatorOptions): RecordedOptions {
  const recorded: RecordedOptions = {};
  for (const [key, value] of Object.entries(options)) {
    if (SECRET_OPTIONS.has(key)) continue;
    if (typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean') recorded[key as keyof CoordinatorOptions] = value;
  }
  if (options.dataDir !== undefined) recorded.dataDir = resolve(options.dataDir);
  return recorded;
}

/** One option whose value differs between a checkpoint and the current command. */
export interface OptionDifference {
  option: ResumeOption;
  saved: unknown;
  current: unknown;
}

/** Returns the options in RESUME_MUST_MATCH whose effective values differ. */
export function optionDifferences(saved: RecordedOptions, current: CoordinatorOptions): OptionDifference[] {
  const now = recordOptions(current);
  const differences: OptionDifference[] = [];
  for (const option of RESUME_MUST_MATCH) {
    const effective = EFFECTIVE_VALUE[option] ?? ((options: RecordedOptions) => options[option]);
    if (effective(saved) !== effective(now)) differences.push({ option, saved: saved[option], current: now[option] });
  }
  return differences;
}

/** Returns the flag name of an option: batchSize is --batch-size. */
export function flagName(option: string): string {
  return `--${option.replace(/[A-Z]/g, (letter) => `-${letter.toLowerCase()}`)}`;
}

/** Returns a sentence naming every differing option with its saved and current value. */
export function describeDifferences(path: string, differences: OptionDifference[]): string {
  const show = (value: unknown) => (value === undefined ? 'unset' : JSON.stringify(value));
  const list = differences.map(({ option, saved, current }) => `${flagName(option)} was ${show(saved)}, now ${show(current)}`).join('; ');
  return (
    `cannot resume from ${path}: options that shape the training differ from the checkpoint's (${list}). ` +
    'Pass the checkpoint\'s values to continue that run, or use another --checkpoint-dir to start a new one'
  );
}

// ---------------------------------------------------------------------------
// Encoding

function bytesOf(array: Float32Array | Float64Array | Uint8Array): Uint8Array {
  return new Uint8Array(array.buffer, array.byteOffset, array.byteLength);
}

/** Copies bytes into a new, aligned buffer and views it as `type`; raises if the length does not fit. */
function arrayFrom<T extends Float32Array | Float64Array>(value: unknown, type: { new (buffer: ArrayBuffer): T; BYTES_PER_ELEMENT: number }, label: string): T {
  if (!(value instanceof Uint8Array) || value.byteLength % type.BYTES_PER_ELEMENT !== 0) throw new CheckpointError(`${label} is not an array of ${type.BYTES_PER_ELEMENT}-byte values`);
  return new type(new Uint8Array(value).buffer);
}

function optimizerToBody(state: OptimizerState): Record<string, unknown> {
  const arrays = (list?: Float64Array[]) => list?.map(bytesOf);
  if (state.name === 'sgd') return { name: 'sgd', velocity: arrays(state.velocity) };
  return { name: 'adam', step: state.step, firstMoment: arrays(state.firstMoment), secondMoment: arrays(state.secondMoment) };
}

/** Returns the bytes of a checkpoint file. */
export function encodeCheckpoint(checkpoint: Checkpoint): Buffer {
  const body = packr.pack({
    ...checkpoint,
    weights: checkpoint.weights.map((tensor) => ({ name: tensor.name, shape: tensor.shape, data: bytesOf(tensor.data) })),
    optimizer: optimizerToBody(checkpoint.optimizer),
  });
  const header = Buffer.alloc(HEADER_BYTES);
  MAGIC.copy(header, 0);
  header.writeUInt32LE(checkpoint.formatVersion, MAGIC.length);
  header.writeBigUInt64LE(BigInt(body.byteLength), MAGIC.length + 4);
  createHash('sha256').update(body).digest().copy(header, MAGIC.length + 12);
  return Buffer.concat([header, body]);
}

/** Parses and validates the bytes of a checkpoint file; raises CheckpointError with the reason. */
export function decodeCheckpoint(file: Buffer): Checkpoint {
  if (file.byteLength < HEADER_BYTES) throw new CheckpointError(`truncated: ${file.byteLength} bytes, shorter than the ${HEADER_BYTES}-byte header`);
  if (!file.subarray(0, MAGIC.length).equals(MAGIC)) throw new CheckpointError('not a gradfleet checkpoint (the file does not start with "GFLTCKPT")');
  const version = file.readUInt32LE(MAGIC.length);
  if (version !== CHECKPOINT_FORMAT_VERSION) {
    throw new CheckpointError(`format version ${version} is not supported; this gradfleet reads version ${CHECKPOINT_FORMAT_VERSION}`);
  }
  const bodyBytes = Number(file.readBigUInt64LE(MAGIC.length + 4));
  const body = file.subarray(HEADER_BYTES);
  if (body.byteLength !== bodyBytes) throw new CheckpointError(`truncated: the body has ${body.byteLength} bytes, the header says ${bodyBytes}`);
  const expected = file.subarray(MAGIC.length + 12, HEADER_BYTES);
  if (!createHash('sha256').update(body).digest().equals(expected)) throw new CheckpointError('checksum mismatch: the file is damaged');
  let raw: Record<string, any>;
  try {
    raw = packr.unpack(body) as Record<string, any>;
  } catch (error) {
    throw new CheckpointError(`the body is not valid MessagePack (${(error as Error).message})`);
  }
  return validateBody(raw);
}

/** Checks the decoded body field by field and turns stored bytes back into typed arrays. */
function validateBody(raw: Record<string, any>): Checkpoint {
  const isCount = (value: unknown) => Number.isInteger(value) && (value as number) >= 0;
  if (typeof raw?.model !== 'string' || !isCount(raw.step) || typeof raw.options !== 'object' || !Array.isArray(raw.weights)) {
    throw new CheckpointError('a required field (model, step, options or weights) is missing or has the wrong type');
  }
  const weights = raw.weights.map((tensor: any, t: number) => {
    const data = arrayFrom(tensor?.data, Float32Array, `weight ${t}`);
    const size = Array.isArray(tensor.shape) ? tensor.shape.reduce((product: number, dimension: number) => product * dimension, 1) : -1;
    if (typeof tensor.name !== 'string' || size !== data.length) throw new CheckpointError(`weight ${t} ("${tensor?.name}") has ${data.length} values for shape [${tensor?.shape}]`);
    return { name: tensor.name, shape: tensor.shape as number[], data };
  });
  const sizes = weights.map((tensor: CheckpointTensor) => tensor.data.length);
  const progress = raw.progress;
  if (!progress || !(progress.ledgerCounts instanceof Uint8Array) || !isCount(progress.epoch) || !isCount(progress.position)) {
    throw new CheckpointError('the epoch progress (epoch, position or sample ledger) is missing or has the wrong type');
  }
  return {
    ...(raw as Checkpoint),
    weights,
    optimizer: optimizerFromBody(raw.optimizer, sizes),
    progress: { ...progress, ledgerCounts: new Uint8Array(progress.ledgerCounts) },
  };
}

function optimizerFromBody(raw: any, sizes: number[]): OptimizerState {
  const arrays = (list: unknown, label: string): Float64Array[] | undefined => {
    if (list === undefined || list === null) return undefined;
    if (!Array.isArray(list) || list.length !== sizes.length) throw new CheckpointError(`optimizer ${label} has ${Array.isArray(list) ? list.length : 'no'} tensors, expected ${sizes.length}`);
    return list.map((bytes, t) => {
      const array = arrayFrom(bytes, Float64Array, `optimizer ${label} ${t}`);
      if (array.length !== sizes[t]) throw new CheckpointError(`optimizer ${label} ${t} has ${array.length} values, the weight has ${sizes[t]}`);
      return array;
    });
  };
  if (raw?.name === 'sgd') return { name: 'sgd', velocity: arrays(raw.velocity, 'velocity') };
  if (raw?.name === 'adam' && Number.isInteger(raw.step)) {
    return { name: 'adam', step: raw.step, firstMoment: arrays(raw.firstMoment, 'first moment'), secondMoment: arrays(raw.secondMoment, 'second moment') };
  }
  throw new CheckpointError(`the optimizer state is not valid (name ${JSON.stringify(raw?.name)})`);
}

// ---------------------------------------------------------------------------
// Files

/** Returns the file name of the checkpoint taken after `step` steps. */
export function checkpointFileName(step: number): string {
  return `checkpoint-${String(step).padStart(8, '0')}.ckpt`;
}

/** Returns the checkpoint files in `folder`, newest (highest step) first; none when the folder does not exist. */
export async function listCheckpoints(folder: string): Promise<string[]> {
  let names: string[];
  try {
    names = await readdir(folder);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw error;
  }
  return names
    .filter((name) => FILE_PATTERN.test(name))
    .sort((a, b) => Number(FILE_PATTERN.exec(b)![1]) - Number(FILE_PATTERN.exec(a)![1]))
    .map((name) => join(folder, name));
}

/**
 * Writes a checkpoint atomically and returns its path and size. Older checkpoints beyond
 * the newest `keep`, and temporary files left by an interrupted write, are deleted.
 */
export async function writeCheckpoint(folder: string, checkpoint: Checkpoint, keep: number): Promise<{ path: string; bytes: number }> {
  const bytes = encodeCheckpoint(checkpoint);
  const name = checkpointFileName(checkpoint.step);
  const path = join(folder, name);
  const temporary = join(folder, `.${name}.${process.pid}.tmp`);
  const file = await open(temporary, 'w');
  try {
    await file.writeFile(bytes);
    await file.sync();
  } finally {
    await file.close();
  }
  await rename(temporary, path);
  await syncFolder(folder);
  await prune(folder, keep);
  return { path, bytes: bytes.byteLength };
}

/** Flushes a folder's entries, so that a rename in it survives a power loss. */
async function syncFolder(folder: string): Promise<void> {
  const handle = await open(folder, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

async function prune(folder: string, keep: number): Promise<void> {
  const stale = (await listCheckpoints(folder)).slice(keep);
  const leftovers = (await readdir(folder)).filter((name) => TEMPORARY_PATTERN.test(name)).map((name) => join(folder, name));
  await Promise.all([...stale, ...leftovers].map((path) => rm(path, { force: true })));
}

/** Reads and validates one checkpoint file. */
export async function readCheckpoint(path: string): Promise<Checkpoint> {
  let file: Buffer;
  try {
    file = await readFile(path);
  } catch (error) {
    throw new CheckpointError(`cannot read the file: ${(error as Error).message}`);
  }
  return decodeCheckpoint(file);
}

/** A checkpoint found by `findLatestCheckpoint`, with the file it came from. */
export interface FoundCheckpoint {
  path: string;
  checkpoint: Checkpoint;
}

/**
 * Returns the newest valid checkpoint in `folder`, or undefined when there is none.
 * Each newer file that is damaged, truncated or unreadable is passed to `onSkip` with
 * the reason, and the next older one is tried. `skipped` counts those files.
 */
export async function findLatestCheckpoint(
  folder: string,
  onSkip: (path: string, reason: string) => void,
): Promise<{ found?: FoundCheckpoint; skipped: number }> {
  let skipped = 0;
  for (const path of await listCheckpoints(folder)) {
    try {
      return { found: { path, checkpoint: await readCheckpoint(path) }, skipped };
    } catch (error) {
      if (!(error instanceof CheckpointError)) throw error;
      skipped++;
      onSkip(path, error.message);
    }
  }
  return { skipped };
}

/** Returns the checkpoint at `path`: the file itself, or the newest valid one when `path` is a folder. */
export async function loadCheckpointFrom(path: string, onSkip: (path: string, reason: string) => void): Promise<FoundCheckpoint> {
  let isFolder: boolean;
  try {
    isFolder = (await stat(path)).isDirectory();
  } catch (error) {
    throw new CheckpointError(`cannot read ${path}: ${(error as Error).message}; pass a checkpoint file or a --checkpoint-dir folder`);
  }
  if (!isFolder) {
    try {
      return { path, checkpoint: await readCheckpoint(path) };
    } catch (error) {
      if (error instanceof CheckpointError) throw new CheckpointError(`invalid checkpoint ${path}: ${error.message}`);
      throw error;
    }
  }
  const { found, skipped } = await findLatestCheckpoint(path, onSkip);
  if (found) return found;
  const detail = skipped > 0 ? `${skipped} file${skipped === 1 ? ' is' : 's are'} damaged (see the warnings above)` : 'it holds no checkpoint-*.ckpt file';
  throw new CheckpointError(`no valid checkpoint in ${path}: ${detail}`);
}
