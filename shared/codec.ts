import { Packr } from 'msgpackr';
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

const COORDINATOR_TYPES = new Set(['welcome', 'weights', 'shard', 'error', 'done']);
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
  if ('tensors' in message) wire.tensors = message.tensors.map(tensorToWire);
  if (message.type === 'shard') wire.sampleIds = bytesOf(message.sampleIds);
  return wire;
}

function tensorToWire(tensor: WireTensor): Record<string, unknown> {
  return { name: tensor.name, shape: tensor.shape, dtype: tensor.dtype, data: bytesOf(tensor.data) };
}

function bytesOf(array: Float32Array | Uint32Array): Uint8Array {
  return new Uint8Array(array.buffer, array.byteOffset, array.byteLength);
}

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

function validateTensors(fields: Fields, type: string): WireTensor[] {
  const list = fields.tensors;
  if (!Array.isArray(list)) throw malformed(type, `field "tensors" must be an array, got ${describe(list)}`);
  return list.map((entry, index) => {
    if (typeof entry !== 'object' || entry === null) throw malformed(type, `tensor ${index} must be a map`);
    const tensor = entry as Fields;
    const name = requireString(tensor, type, 'name');
    const shape = requireShape(tensor.shape, type, `shape of tensor "${name}"`);
    if (tensor.dtype !== 'float32') {
      throw malformed(type, `tensor "${name}" has dtype ${describe(tensor.dtype)}; only "float32" is supported`);
    }
    const bytes = requireBytes(tensor, type, 'data');
    const expectedBytes = 4 * shape.reduce((product, size) => product * size, 1);
    if (bytes.byteLength !== expectedBytes) {
      throw malformed(type, `tensor "${name}" of shape [${shape}] needs ${expectedBytes} bytes, got ${bytes.byteLength}`);
    }
    return { name, shape, dtype: 'float32', data: float32FromBytes(bytes) };
  });
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
      return { type, step: requireNumber(fields, type, 'step', { integer: true, min: 0 }), tensors: validateTensors(fields, type) };
    case 'shard':
      return validateShard(fields);
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
  };
}

function validateShard(fields: Fields): Message {
  const type = 'shard';
  const idBytes = requireBytes(fields, type, 'sampleIds');
  if (idBytes.byteLength % 4 !== 0) throw malformed(type, `field "sampleIds" has ${idBytes.byteLength} bytes, which is not a whole number of uint32 ids`);
  const sampleIds = uint32FromBytes(idBytes);
  const images = requireBytes(fields, type, 'images');
  const labels = requireBytes(fields, type, 'labels');
  const count = sampleIds.length;
  if (labels.byteLength !== count) throw malformed(type, `${count} sample ids but ${labels.byteLength} labels`);
  if (count === 0 || images.byteLength % count !== 0) {
    throw malformed(type, `${images.byteLength} image bytes cannot hold ${count} equal-sized images`);
  }
  return {
    type,
    step: requireNumber(fields, type, 'step', { integer: true, min: 0 }),
    epoch: requireNumber(fields, type, 'epoch', { integer: true, min: 0 }),
    sampleIds,
    images,
    labels,
  };
}

function validateGradient(fields: Fields): Message {
  const type = 'gradient';
  return {
    type,
    step: requireNumber(fields, type, 'step', { integer: true, min: 0 }),
    count: requireNumber(fields, type, 'count', { integer: true, min: 1 }),
    // NaN and infinite losses pass here: a diverging shard is a training event that the
    // coordinator handles, not a malformed message.
    loss: requireLoss(fields, type),
    correct: requireNumber(fields, type, 'correct', { integer: true, min: 0 }),
    computeMs: requireNumber(fields, type, 'computeMs', { min: 0 }),
    tensors: validateTensors(fields, type),
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
