import { Packr } from 'msgpackr';
import {
  GRADIENT_ENCODINGS,
  decodeFloat16,
  decodeInt8,
  encodeFloat16,
  encodeInt8,
  int8ScaleCount,
  type GradientEncoding,
} from './encoding.js';
import {
  ERROR_CODES,
  PROTOCOL_VERSION,
  ProtocolError,
  type CoordinatorMessage,
  type Message,
  type WireTensor,
  type WorkerMessage,
} from './protocol.js';

/**
 * The one codec both sides use. Messages are MessagePack maps; tensor values travel as
 * raw little-endian float32 bytes, and plain numbers keep msgpack's float64.
 */
const packr = new Packr({ useRecords: false, moreTypes: false });

/** Encodes a message into one binary WebSocket frame. */
export function encodeMessage(message: Message): Buffer {
  return packr.pack(toWire(message));
}

/** Decodes a frame from the coordinator, validating every field before it is used. */
export function decodeCoordinatorMessage(frame: Uint8Array): CoordinatorMessage {
  const message = validateMessage(unpackFrame(frame));
  if (!COORDINATOR_TYPES.has(message.type)) {
    throw new ProtocolError('UNEXPECTED_MESSAGE', `unexpected message type "${message.type}" from the coordinator`);
  }
  return message as CoordinatorMessage;
}

/** Decodes a frame from a worker, validating every field before it is used. */
export function decodeWorkerMessage(frame: Uint8Array): WorkerMessage {
  const message = validateMessage(unpackFrame(frame));
  if (!WORKER_TYPES.has(message.type)) {
    throw new ProtocolError('UNEXPECTED_MESSAGE', `unexpected message type "${message.type}" from a worker`);
  }
  return message as WorkerMessage;
}

const COORDINATOR_TYPES = new Set(['welcome', 'weights', 'shard', 'prefetch', 'error', 'done']);
const WORKER_TYPES = new Set(['hello', 'ready', 'gradient', 'error']);

function unpackFrame(frame: Uint8Array): Record<string, unknown> {
  let value: unknown;
  try {
    value = packr.unpack(frame);
  } catch (error) {
    throw new ProtocolError('MALFORMED_MESSAGE', `malformed message: not valid MessagePack (${(error as Error).message})`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new ProtocolError('MALFORMED_MESSAGE', 'malformed message: expected a map with a "type" field');
  }
  return value as Record<string, unknown>;
}

/** Converts a message to the plain objects msgpack encodes: typed arrays become bytes. */
function toWire(message: Message): Record<string, unknown> {
  const wire: Record<string, unknown> = { ...message };
  if ('tensors' in message) {
    const encoding = message.type === 'gradient' ? (message.encoding ?? 'fp32') : 'fp32';
    wire.tensors = message.tensors.map((tensor) => tensorToWire(tensor, encoding));
    // The encoding travels in each tensor's dtype, so the message needs no field of its own.
    delete wire.encoding;
  }
  if (message.type === 'shard' || message.type === 'prefetch') wire.sampleIds = bytesOf(message.sampleIds);
  return wire;
}

function tensorToWire(tensor: WireTensor, encoding: GradientEncoding): Record<string, unknown> {
  const { name, shape } = tensor;
  if (encoding === 'fp16') return { name, shape, dtype: 'float16', data: bytesOf(encodeFloat16(tensor.data)) };
  if (encoding === 'int8') {
    const { codes, scales } = encodeInt8(tensor.data);
    return { name, shape, dtype: 'int8', data: bytesOf(codes), scales: bytesOf(scales) };
  }
  return { name, shape, dtype: tensor.dtype, data: bytesOf(tensor.data) };
}

function bytesOf(array: Float32Array | Uint32Array | Uint16Array | Int8Array): Uint8Array {
  return new Uint8Array(array.buffer, array.byteOffset, array.byteLength);
}

/** The wire dtype of each gradient encoding. */
const DTYPE_OF: Record<GradientEncoding, string> = { fp32: 'float32', fp16: 'float16', int8: 'int8' };
const BYTES_PER_VALUE: Record<GradientEncoding, number> = { fp32: 4, fp16: 2, int8: 1 };

/**
 * Views little-endian float32 bytes as a Float32Array. A Float32Array must start at a
 * multiple of 4 bytes, but msgpack places binary data at any offset. So misaligned bytes
 * are copied, and aligned ones are viewed without a copy.
 */
export function float32FromBytes(bytes: Uint8Array): Float32Array {
  if (bytes.byteOffset % 4 === 0) {
    return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  }
  const copy = new Uint8Array(bytes.byteLength);
  copy.set(bytes);
  return new Float32Array(copy.buffer);
}

/** Views little-endian half-precision bytes as a Uint16Array, copying them when misaligned. */
function uint16FromBytes(bytes: Uint8Array): Uint16Array {
  if (bytes.byteOffset % 2 === 0) {
    return new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 2);
  }
  const copy = new Uint8Array(bytes.byteLength);
  copy.set(bytes);
  return new Uint16Array(copy.buffer);
}

function uint32FromBytes(bytes: Uint8Array): Uint32Array {
  if (bytes.byteOffset % 4 === 0) {
    return new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  }
  const copy = new Uint8Array(bytes.byteLength);
  copy.set(bytes);
  return new Uint32Array(copy.buffer);
}

// ---------------------------------------------------------------------------
// Validation: every field is checked before any code uses it, so a malformed or
// hostile message fails here with a MALFORMED_MESSAGE error and nothing else.

type Fields = Record<string, unknown>;

function malformed(type: string, detail: string): ProtocolError {
  return new ProtocolError('MALFORMED_MESSAGE', `malformed "${type}" message: ${detail}`);
}

function requireString(fields: Fields, type: string, key: string): string {
  const value = fields[key];
  if (typeof value !== 'string') throw malformed(type, `field "${key}" must be a string, got ${describe(value)}`);
  return value;
}

function requireNumber(fields: Fields, type: string, key: string, { integer = false, min = -Infinity } = {}): number {
  const value = fields[key];
  if (typeof value !== 'number' || !Number.isFinite(value)) {
    throw malformed(type, `field "${key}" must be a finite number, got ${describe(value)}`);
  }
  if (integer && !Number.isInteger(value)) throw malformed(type, `field "${key}" must be an integer, got ${value}`);
  if (value < min) throw malformed(type, `field "${key}" must be at least ${min}, got ${value}`);
  return value;
}

function requireBytes(fields: Fields, type: string, key: string): Uint8Array {
  const value = fields[key];
  if (!(value instanceof Uint8Array)) throw malformed(type, `field "${key}" must be binary data, got ${describe(value)}`);
  return value;
}

function requireShape(value: unknown, type: string, where: string): number[] {
  const valid = Array.isArray(value) && value.every((size) => Number.isInteger(size) && size >= 0);
  if (!valid) throw malformed(type, `${where} must be an array of non-negative integers, got ${describe(value)}`);
  return value as number[];
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (value instanceof Uint8Array) return `${value.byteLength} bytes`;
  if (typeof value === 'string') return JSON.stringify(value.length > 40 ? `${value.slice(0, 40)}…` : value);
  return typeof value === 'object' ? 'a map' : `${typeof value} ${String(value)}`;
}

/**
 * Validates a message's tensors and decodes them to float32. Weights must be float32;
 * gradients may be float16 or int8 too, the same dtype for every tensor.
 */
function validateTensors(fields: Fields, type: string): { tensors: WireTensor[]; encoding: GradientEncoding } {
  const list = fields.tensors;
  if (!Array.isArray(list)) throw malformed(type, `field "tensors" must be an array, got ${describe(list)}`);
  const allowed = type === 'gradient' ? GRADIENT_ENCODINGS : (['fp32'] as const);
  let encoding: GradientEncoding | undefined;
  const tensors = list.map((entry, index): WireTensor => {
    if (typeof entry !== 'object' || entry === null) throw malformed(type, `tensor ${index} must be a map`);
    const tensor = entry as Fields;
    const name = requireString(tensor, type, 'name');
    const shape = requireShape(tensor.shape, type, `shape of tensor "${name}"`);
    const tensorEncoding = allowed.find((candidate) => DTYPE_OF[candidate] === tensor.dtype);
    if (!tensorEncoding) {
      const dtypes = allowed.map((candidate) => `"${DTYPE_OF[candidate]}"`).join(', ');
      throw malformed(type, `tensor "${name}" has dtype ${describe(tensor.dtype)}; expected one of ${dtypes}`);
    }
    if (encoding !== undefined && tensorEncoding !== encoding) {
      throw malformed(type, `tensor "${name}" has dtype "${DTYPE_OF[tensorEncoding]}" but the tensors before it have "${DTYPE_OF[encoding]}"; all tensors must share one dtype`);
    }
    encoding = tensorEncoding;
    const length = shape.reduce((product, size) => product * size, 1);
    return { name, shape, dtype: 'float32', data: decodeTensorData(tensor, type, name, shape, length, tensorEncoding) };
  });
  return { tensors, encoding: encoding ?? 'fp32' };
}

/** Checks the byte lengths (and int8 scales) of one tensor and returns its float32 values. */
function decodeTensorData(tensor: Fields, type: string, name: string, shape: number[], length: number, encoding: GradientEncoding): Float32Array {
  const bytes = requireBytes(tensor, type, 'data');
  const expectedBytes = BYTES_PER_VALUE[encoding] * length;
  if (bytes.byteLength !== expectedBytes) {
    throw malformed(type, `tensor "${name}" of shape [${shape}] and dtype "${DTYPE_OF[encoding]}" needs ${expectedBytes} bytes, got ${bytes.byteLength}`);
  }
  if (encoding !== 'int8' && tensor.scales !== undefined) {
    throw malformed(type, `tensor "${name}" of dtype "${DTYPE_OF[encoding]}" has a "scales" field, which only int8 tensors carry`);
  }
  if (encoding === 'fp32') return float32FromBytes(bytes);
  if (encoding === 'fp16') return decodeFloat16(uint16FromBytes(bytes));

  const codes = new Int8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const minimum = codes.indexOf(-128);
  if (minimum >= 0) throw malformed(type, `int8 tensor "${name}" has the code -128 at index ${minimum}; codes range from -127 to 127`);
  const scaleBytes = requireBytes(tensor, type, 'scales');
  const expectedScales = int8ScaleCount(length);
  if (scaleBytes.byteLength !== 4 * expectedScales) {
    throw malformed(type, `int8 tensor "${name}" of ${length} values needs ${expectedScales} float32 scales (${4 * expectedScales} bytes), got ${scaleBytes.byteLength} bytes`);
  }
  const scales = float32FromBytes(scaleBytes);
  // A NaN or infinite scale is what a non-finite gradient encodes to, so it passes here like
  // a NaN float32 value: the coordinator rejects it as INVALID_GRADIENT and recomputes the shard.
  const negative = scales.findIndex((scale) => scale < 0 || scale === -Infinity);
  if (negative >= 0) throw malformed(type, `int8 tensor "${name}" has the negative scale ${scales[negative]} for block ${negative}; scales are max|x| / 127`);
  return decodeInt8({ codes, scales });
}

function validateMessage(fields: Fields): Message {
  const type = fields.type;
  if (typeof type !== 'string') throw new ProtocolError('MALFORMED_MESSAGE', 'malformed message: missing string field "type"');
  switch (type) {
    case 'hello':
      return validateHello(fields);
    case 'welcome':
      return validateWelcome(fields);
    case 'ready':
      return { type, selfCheckMs: requireNumber(fields, type, 'selfCheckMs', { min: 0 }) };
    case 'weights':
      return { type, step: requireNumber(fields, type, 'step', { integer: true, min: 0 }), tensors: validateTensors(fields, type).tensors };
    case 'shard':
      return validateShard(fields);
    case 'prefetch':
      return {
        type,
        step: requireNumber(fields, type, 'step', { integer: true, min: 0 }),
        ...validateSamples(fields, type),
      };
    case 'gradient':
      return validateGradient(fields);
    case 'error':
      return validateError(fields);
    case 'done':
      return { type, reason: requireString(fields, type, 'reason') };
    default:
      throw new ProtocolError('UNEXPECTED_MESSAGE', `unknown message type ${describe(type)}`);
  }
}

function checkProtocolVersion(fields: Fields, type: string): number {
  const version = requireNumber(fields, type, 'protocolVersion', { integer: true });
  if (version !== PROTOCOL_VERSION) {
    throw new ProtocolError(
      'PROTOCOL_VERSION_MISMATCH',
      `protocol version mismatch: the peer speaks version ${version}, this gradfleet speaks ${PROTOCOL_VERSION}; ` +
        'install the same gradfleet version on the coordinator and every worker',
    );
  }
  return version;
}

function validateHello(fields: Fields): Message {
  const type = 'hello';
  return {
    type,
    protocolVersion: checkProtocolVersion(fields, type),
    workerName: requireString(fields, type, 'workerName'),
    backend: requireString(fields, type, 'backend'),
    gradfleetVersion: requireString(fields, type, 'gradfleetVersion'),
    ...optionalToken(fields),
  };
}

/** Returns `{ token }` when the hello carries one; the error never quotes the value, which may be a secret. */
function optionalToken(fields: Fields): { token?: string } {
  const token = fields.token;
  if (token === undefined) return {};
  if (typeof token !== 'string') throw malformed('hello', `field "token" must be a string when present, got ${typeof token}`);
  return { token };
}

function validateWelcome(fields: Fields): Message {
  const type = 'welcome';
  const topology = fields.modelTopology;
  if (typeof topology !== 'object' || topology === null) throw malformed(type, 'field "modelTopology" must be a map');
  const parameters = fields.parameters;
  if (!Array.isArray(parameters)) throw malformed(type, 'field "parameters" must be an array');
  return {
    type,
    protocolVersion: checkProtocolVersion(fields, type),
    workerId: requireString(fields, type, 'workerId'),
    modelTopology: topology,
    parameters: parameters.map((entry: Fields, index) => ({
      name: requireString(entry ?? {}, type, 'name'),
      shape: requireShape(entry?.shape, type, `shape of parameter ${index}`),
    })),
    inputShape: requireShape(fields.inputShape, type, 'field "inputShape"'),
    numClasses: requireNumber(fields, type, 'numClasses', { integer: true, min: 2 }),
    heartbeatMs: requireNumber(fields, type, 'heartbeatMs', { integer: true, min: 1 }),
    maxMessageBytes: requireNumber(fields, type, 'maxMessageBytes', { integer: true, min: 1 }),
    ...optionalGradientEncoding(fields),
  };
}

function optionalGradientEncoding(fields: Fields): { gradientEncoding?: GradientEncoding } {
  const value = fields.gradientEncoding;
  if (value === undefined) return {};
  if (!(GRADIENT_ENCODINGS as readonly unknown[]).includes(value)) {
    throw malformed('welcome', `field "gradientEncoding" must be one of ${GRADIENT_ENCODINGS.join(', ')}, got ${describe(value)}`);
  }
  return { gradientEncoding: value as GradientEncoding };
}

/**
 * Validates a shard. It either carries images and labels for its ids, or is marked
 * `prefetched: true` and carries neither, because the worker stores them from a `prefetch`.
 */
function validateShard(fields: Fields): Message {
  const type = 'shard';
  const step = requireNumber(fields, type, 'step', { integer: true, min: 0 });
  const epoch = requireNumber(fields, type, 'epoch', { integer: true, min: 0 });
  if (fields.prefetched === undefined) return { type, step, epoch, ...validateSamples(fields, type) };
  if (fields.prefetched !== true) throw malformed(type, `field "prefetched" must be true when present, got ${describe(fields.prefetched)}`);
  for (const key of ['images', 'labels']) {
    if (fields[key] !== undefined) throw malformed(type, `a shard marked "prefetched" must not carry "${key}", got ${describe(fields[key])}`);
  }
  return { type, step, epoch, sampleIds: validateSampleIds(fields, type), prefetched: true };
}

function validateSampleIds(fields: Fields, type: string): Uint32Array {
  const idBytes = requireBytes(fields, type, 'sampleIds');
  if (idBytes.byteLength % 4 !== 0) throw malformed(type, `field "sampleIds" has ${idBytes.byteLength} bytes, which is not a whole number of uint32 ids`);
  const sampleIds = uint32FromBytes(idBytes);
  if (sampleIds.length === 0) throw malformed(type, 'field "sampleIds" is empty; a shard has at least one sample');
  return sampleIds;
}

/** Validates the sample ids, images and labels of a shard or a prefetch: one label and one equal-sized image per id. */
function validateSamples(fields: Fields, type: string): { sampleIds: Uint32Array; images: Uint8Array; labels: Uint8Array } {
  const sampleIds = validateSampleIds(fields, type);
  const images = requireBytes(fields, type, 'images');
  const labels = requireBytes(fields, type, 'labels');
  const count = sampleIds.length;
  if (labels.byteLength !== count) throw malformed(type, `${count} sample ids but ${labels.byteLength} labels`);
  if (images.byteLength % count !== 0) {
    throw malformed(type, `${images.byteLength} image bytes cannot hold ${count} equal-sized images`);
  }
  return { sampleIds, images, labels };
}

function validateGradient(fields: Fields): Message {
  const type = 'gradient';
  const scalars = {
    step: requireNumber(fields, type, 'step', { integer: true, min: 0 }),
    count: requireNumber(fields, type, 'count', { integer: true, min: 1 }),
    // NaN and infinite losses pass here: a diverging shard is a training event that the
    // coordinator handles, not a malformed message.
    loss: requireLoss(fields, type),
    correct: requireNumber(fields, type, 'correct', { integer: true, min: 0 }),
    computeMs: requireNumber(fields, type, 'computeMs', { min: 0 }),
  };
  const { tensors, encoding } = validateTensors(fields, type);
  return {
    type,
    ...scalars,
    tensors,
    // Left out for fp32, so that an fp32 gradient decodes to the message that was encoded.
    ...(encoding === 'fp32' ? {} : { encoding }),
  };
}

function requireLoss(fields: Fields, type: string): number {
  if (typeof fields.loss !== 'number') throw malformed(type, `field "loss" must be a number, got ${describe(fields.loss)}`);
  return fields.loss;
}

function validateError(fields: Fields): Message {
  const type = 'error';
  const code = requireString(fields, type, 'code');
  if (!(ERROR_CODES as readonly string[]).includes(code)) throw malformed(type, `unknown error code ${describe(code)}`);
  return { type, code: code as (typeof ERROR_CODES)[number], message: requireString(fields, type, 'message') };
}
