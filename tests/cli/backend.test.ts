import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import { CliProcess } from '../helpers/cli.js';

/** Returns whether tfjs-node loads here; its install fails on machines that cannot download libtensorflow. */
function tfjsNodeLoads(): boolean {
  try {
    createRequire(import.meta.url)('@tensorflow/tfjs-node');
    return true;
  } catch {
    return false;
  }
}

const native = tfjsNodeLoads();

describe('backend selection', () => {
  it.skipIf(native)('tensorflow fails clearly without tfjs-node', async () => {
    const run = new CliProcess(['coordinator', '--backend', 'tensorflow', '--port', '0', '--metrics-port', '0']);
    expect(await run.exited).toBe(1);
    const stderr = run.stderr.join('\n');
    expect(stderr).toMatch(/backend "tensorflow" is unavailable: @tensorflow\/tfjs-node failed to load/);
    expect(stderr).toMatch(/or pass --backend wasm/);
  });

  it.skipIf(native)('auto falls back to wasm once', async () => {
    const run = new CliProcess(['coordinator', '--backend', 'auto', '--port', '0', '--metrics-port', '0', '--log-format', 'json', '--train-limit', '100', '--test-limit', '100']);
    try {
      const listening = await run.waitForLog('coordinator listening');
      expect(listening.backend).toBe('wasm');
      const fallbacks = run.logs().filter((entry) => String(entry.msg).startsWith('using backend "wasm"'));
      expect(fallbacks).toHaveLength(1);
    } finally {
      run.kill();
    }
  });

  it.skipIf(!native)('auto picks tensorflow where tfjs-node loads', async () => {
    const run = new CliProcess(['coordinator', '--backend', 'auto', '--port', '0', '--metrics-port', '0', '--log-format', 'json', '--train-limit', '100', '--test-limit', '100']);
    try {
      expect((await run.waitForLog('coordinator listening')).backend).toBe('tensorflow');
    } finally {
      run.kill();
    }
  });
});
