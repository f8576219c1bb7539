import { Packr } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import { decodeCoordinatorMessage, encodeMessage } from '../../shared/codec.js';
import { ProtocolError } from '../../shared/protocol.js';

const packr = new Packr({ useRecords: false, moreTypes: false });
const ids = Uint32Array.from([7, 3, 60_000]);
const idBytes = new Uint8Array(ids.buffer);

function decodeError(fields: Record<string, unknown>): ProtocolError {
  try {
    decodeCoordinatorMessage(packr.pack(fields));
  } catch (error) {
    expect(error).toBeInstanceOf(ProtocolError);
    return error as ProtocolError;
  }
  throw new Error(`message was accepted: ${JSON.stringify(Object.keys(fields))}`);
}

describe('prefetch message', () => {
  it('round trip', () => {
    const images = Uint8Array.from({ length: 3 * 4 }, (_, i) => i);
    const labels = Uint8Array.from([1, 2, 3]);

    const decoded = decodeCoordinatorMessage(encodeMessage({ type: 'prefetch', step: 12, sampleIds: ids, images, labels }));

    expect(decoded.type).toBe('prefetch');
    if (decoded.type !== 'prefetch') return;
    expect(decoded.step).toBe(12);
    expect(Array.from(decoded.sampleIds)).toEqual(Array.from(ids));
    expect(Array.from(decoded.images)).toEqual(Array.from(images));
    expect(Array.from(decoded.labels)).toEqual(Array.from(labels));
  });

  it('fewer labels than ids', () => {
    const error = decodeError({ type: 'prefetch', step: 1, sampleIds: idBytes, images: new Uint8Array(12), labels: new Uint8Array(2) });

    expect(error.code).toBe('MALFORMED_MESSAGE');
    expect(error.message).toContain('3 sample ids but 2 labels');
  });

  it('missing images', () => {
    const error = decodeError({ type: 'prefetch', step: 1, sampleIds: idBytes, labels: new Uint8Array(3) });

    expect(error.code).toBe('MALFORMED_MESSAGE');
    expect(error.message).toContain('"images"');
  });
});

describe('prefetched shard', () => {
  it('round trip without data', () => {
    const decoded = decodeCoordinatorMessage(encodeMessage({ type: 'shard', step: 4, epoch: 1, sampleIds: ids, prefetched: true }));

    expect(decoded.type).toBe('shard');
    if (decoded.type !== 'shard') return;
    expect(decoded.prefetched).toBe(true);
    expect(decoded.step).toBe(4);
    expect(decoded.epoch).toBe(1);
    expect(Array.from(decoded.sampleIds)).toEqual(Array.from(ids));
    expect('images' in decoded).toBe(false);
  });

  it('marked prefetched with images', () => {
    const error = decodeError({ type: 'shard', step: 4, epoch: 1, sampleIds: idBytes, prefetched: true, images: new Uint8Array(12) });

    expect(error.code).toBe('MALFORMED_MESSAGE');
    expect(error.message).toContain('must not carry "images"');
  });

  it('marked prefetched with labels', () => {
    const error = decodeError({ type: 'shard', step: 4, epoch: 1, sampleIds: idBytes, prefetched: true, labels: new Uint8Array(3) });

    expect(error.code).toBe('MALFORMED_MESSAGE');
    expect(error.message).toContain('must not carry "labels"');
  });

  it('marker other than true', () => {
    const error = decodeError({ type: 'shard', step: 4, epoch: 1, sampleIds: idBytes, prefetched: false, images: new Uint8Array(12), labels: new Uint8Array(3) });

    expect(error.code).toBe('MALFORMED_MESSAGE');
    expect(error.message).toContain('"prefetched" must be true');
  });

  it('no data and no marker', () => {
    const error = decodeError({ type: 'shard', step: 4, epoch: 1, sampleIds: idBytes });

    expect(error.code).toBe('MALFORMED_MESSAGE');
    expect(error.message).toContain('"images" must be binary data');
  });

  it('empty sample ids', () => {
    const error = decodeError({ type: 'shard', step: 4, epoch: 1, sampleIds: new Uint8Array(0), prefetched: true });

    expect(error.code).toBe('MALFORMED_MESSAGE');
    expect(error.message).toContain('"sampleIds" is empty');
  });
});
