import { gunzipSync } from 'node:zlib';

// IDX layout, the format that MNIST is distributed in: two zero bytes, a type code byte,
// a dimension count byte, then one big-endian uint32 per dimension, then the data in
// row-major order.
const MAGIC_PREFIX_LENGTH = 4;
const DIMENSION_SIZE_BYTES = 4;
const UNSIGNED_BYTE_TYPE = 0x08;
const TYPE_NAMES: Record<number, string> = {
  0x08: 'unsigned byte',
  0x09: 'signed byte',
  0x0b: 'int16',
  0x0c: 'int32',
  0x0d: 'float32',
  0x0e: 'float64',
};

const GZIP_MAGIC = [0x1f, 0x8b];
const REFETCH_HINT = 'Re-download or re-extract the file.';

/** Error for a malformed or unsupported IDX file. `file` is the name or path given to the parser. */
export class IdxFormatError extends Error {
  readonly file: string;

  constructor(file: string, detail: string) {
    super(`${file}: ${detail}`);
    this.name = 'IdxFormatError';
    this.file = file;
  }
}

/** A decoded IDX tensor of unsigned bytes. */
export interface IdxTensor {
  dimensions: number[];
  data: Uint8Array;
}

/** Images decoded from an IDX3 file. `pixels` contains count*rows*cols bytes, row-major. */
export interface IdxImages {
  count: number;
  rows: number;
  cols: number;
  pixels: Uint8Array;
}

/** Labels decoded from an IDX1 file, each in 0..numClasses-1. */
export interface IdxLabels {
  count: number;
  labels: Uint8Array;
}

/** Expected rank of a file, and the word for one data byte in error messages. */
interface IdxExpectation {
  dimensionCount: number;
  elementName: string;
}

/** Parses an IDX3 image file (raw or gzip-compressed). Throws IdxFormatError. */
export function parseIdxImages(bytes: Uint8Array, file: string): IdxImages {
  const tensor = parseIdx(bytes, file, { dimensionCount: 3, elementName: 'pixel' });
  const [count, rows, cols] = tensor.dimensions as [number, number, number];

  if (rows === 0 || cols === 0) {
    throw new IdxFormatError(
      file,
      `invalid image size ${rows}×${cols}: an image needs at least one row and one column. ${REFETCH_HINT}`,
    );
  }

  return { count, rows, cols, pixels: tensor.data };
}

/**
 * Parses an IDX1 label file (raw or gzip-compressed) and checks that every label is
 * below `numClasses`. Throws IdxFormatError.
 */
export function parseIdxLabels(bytes: Uint8Array, file: string, numClasses = 10): IdxLabels {
  validateNumClasses(numClasses);
  const tensor = parseIdx(bytes, file, { dimensionCount: 1, elementName: 'label' });
  const labels = tensor.data;

  const badIndex = labels.findIndex((label) => label >= numClasses);
  if (badIndex !== -1) {
    throw new IdxFormatError(
      file,
      `label ${labels[badIndex]} at index ${badIndex} is out of range, expected 0..${numClasses - 1}. ` +
        `Check that this is the label file of a ${numClasses}-class dataset, or set the number of classes to match it.`,
    );
  }

  return { count: labels.length, labels };
}

function validateNumClasses(numClasses: number): void {
  // Labels are stored as unsigned bytes, so more than 256 classes cannot be encoded.
  if (!Number.isInteger(numClasses) || numClasses < 1 || numClasses > 256) {
    throw new RangeError(`invalid numClasses ${numClasses}: expected an integer in 1..256`);
  }
}

/** Decodes an unsigned-byte IDX tensor of the expected rank, decompressing gzip first. */
function parseIdx(bytes: Uint8Array, file: string, expected: IdxExpectation): IdxTensor {
  const raw = isGzip(bytes) ? gunzip(bytes, file) : bytes;
  const dimensions = readHeader(raw, file, expected.dimensionCount);
  const headerLength = MAGIC_PREFIX_LENGTH + DIMENSION_SIZE_BYTES * dimensions.length;

  checkDataLength(raw.length - headerLength, dimensions, file, expected.elementName);

  // A plain Uint8Array view, because Buffer.slice() would share memory where Uint8Array.slice() copies.
  const data = new Uint8Array(raw.buffer, raw.byteOffset + headerLength, raw.length - headerLength);
  return { dimensions, data };
}

function isGzip(bytes: Uint8Array): boolean {
  return bytes.length >= 2 && bytes[0] === GZIP_MAGIC[0] && bytes[1] === GZIP_MAGIC[1];
}

function gunzip(bytes: Uint8Array, file: string): Uint8Array {
  try {
    return gunzipSync(bytes);
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new IdxFormatError(file, `invalid gzip data (${reason}). ${REFETCH_HINT}`);
  }
}

/** Validates the magic number and returns the dimensions that the header declares. */
function readHeader(bytes: Uint8Array, file: string, expectedDimensionCount: number): number[] {
  if (bytes.length < MAGIC_PREFIX_LENGTH) {
    throw new IdxFormatError(
      file,
      `truncated IDX file: expected a header of at least ${MAGIC_PREFIX_LENGTH} bytes, found ${bytes.length} bytes. ${REFETCH_HINT}`,
    );
  }

  checkMagic(bytes, file, expectedDimensionCount);

  const headerLength = MAGIC_PREFIX_LENGTH + DIMENSION_SIZE_BYTES * expectedDimensionCount;
  if (bytes.length < headerLength) {
    throw new IdxFormatError(
      file,
      `truncated IDX header: expected ${headerLength} bytes for ${expectedDimensionCount} dimensions, found ${bytes.length} bytes. ${REFETCH_HINT}`,
    );
  }

  const view = new DataView(bytes.buffer, bytes.byteOffset, headerLength);
  const dimensions: number[] = [];
  for (let i = 0; i < expectedDimensionCount; i++) {
    dimensions.push(view.getUint32(MAGIC_PREFIX_LENGTH + DIMENSION_SIZE_BYTES * i, false));
  }
  return dimensions;
}

/** Checks the four magic bytes: 0x00 0x00, the type code, the dimension count. */
function checkMagic(bytes: Uint8Array, file: string, expectedDimensionCount: number): void {
  const typeCode = bytes[2];
  const dimensionCount = bytes[3];

  if (bytes[0] !== 0 || bytes[1] !== 0) {
    const found = Array.from(bytes.subarray(0, MAGIC_PREFIX_LENGTH), toHex).join(' ');
    throw new IdxFormatError(
      file,
      `not an IDX file: expected the magic number to start with 0x00 0x00, found ${found}. ` +
        `Pass an uncompressed or gzip-compressed IDX file, such as train-images-idx3-ubyte.`,
    );
  }

  if (typeCode !== UNSIGNED_BYTE_TYPE) {
    const typeName = TYPE_NAMES[typeCode] ?? 'unknown type';
    throw new IdxFormatError(
      file,
      `unsupported IDX type code ${toHex(typeCode)} (${typeName}), expected ${toHex(UNSIGNED_BYTE_TYPE)} (unsigned byte). ` +
        `Convert the data to unsigned bytes, as MNIST and Fashion-MNIST store it.`,
    );
  }

  if (dimensionCount !== expectedDimensionCount) {
    throw new IdxFormatError(
      file,
      `unexpected IDX dimension count: expected ${expectedDimensionCount}, found ${dimensionCount}. ` +
        `Check that an image file (3 dimensions) and a label file (1 dimension) have not been swapped.`,
    );
  }
}

/** Compares the data length with the product of the dimensions, in bytes. */
function checkDataLength(dataLength: number, dimensions: number[], file: string, elementName: string): void {
  // Dimensions are uint32, so the product may exceed 2^53 and lose precision. Any such
  // value is far above a real file's length, so the truncated case still reports it.
  const expectedLength = dimensions.reduce((product, size) => product * size, 1);
  const declared =
    dimensions.length > 1 ? `${dimensions.join('×')} = ${expectedLength}` : `${expectedLength}`;

  if (dataLength < expectedLength) {
    throw new IdxFormatError(
      file,
      `truncated IDX file: the header declares ${declared} ${elementName} bytes, found ${dataLength}. ${REFETCH_HINT}`,
    );
  }

  if (dataLength > expectedLength) {
    const extra = dataLength - expectedLength;
    throw new IdxFormatError(
      file,
      `IDX file has ${extra} trailing bytes: the header declares ${declared} ${elementName} bytes, found ${dataLength}. ` +
        `The file may be corrupt or two files may be concatenated. ${REFETCH_HINT}`,
    );
  }
}

function toHex(byte: number): string {
  return `0x${byte.toString(16).padStart(2, '0')}`;
}
