import { readFileSync } from 'node:fs';
import { createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';

/** Reads the float32 weights of a model that a coordinator saved in `folder`. */
export function readSavedWeights(folder: string): Float32Array {
  const bytes = readFileSync(join(folder, 'weights.bin'));
  return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
}

/** Returns the largest absolute element-wise difference; raises when the lengths differ. */
export function maxAbsDifference(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) throw new Error(`cannot compare ${a.length} values with ${b.length}`);
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]));
  return max;
}

/** Returns a port that was free a moment ago, so that a restarted coordinator can listen on the same one. */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/**
 * Returns command-line flags: `defaults` with each flag in `overrides` replacing the
 * default of the same name or added at the end. A flag in `overrides` not followed by a
 * value is a boolean flag.
 */
export function mergeFlags(defaults: [string, string | undefined][], overrides: string[]): string[] {
  const options = new Map(defaults);
  for (let i = 0; i < overrides.length; i++) {
    const takesValue = i + 1 < overrides.length && !overrides[i + 1].startsWith('--');
    options.set(overrides[i], takesValue ? overrides[++i] : undefined);
  }
  return [...options].flatMap(([flag, value]) => (value === undefined ? [flag] : [flag, value]));
}
