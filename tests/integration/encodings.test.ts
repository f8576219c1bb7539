import { describe, expect, it } from 'vitest';

import type { GradientEncoding } from '../../shared/encoding.js';
import { CliProcess, temporaryFolder } from '../helpers/cli.js';

const TRAINING = ['--workers', '2', '--model', 'mlp', '--train-limit', '2000', '--test-limit', '1000', '--epochs', '1', '--backend', 'wasm'];

interface EncodedRun {
  status: number;
  launch: CliProcess;
  testAccuracy: number;
  /** The coordinator's gradfleet_received_bytes_total over gradfleet_steps_total, at the last scrape with a step. */
  bytesPerStep: number;
}

function metricValue(text: string, name: string): number {
  const line = text.split('\n').find((row) => row.startsWith(`${name} `));
  if (!line) throw new Error(`no ${name} in the scraped metrics:\n${text}`);
  return Number(line.slice(name.length + 1));
}

/**
 * Runs `gradfleet launch` with one encoding and scrapes the coordinator's metrics while it
 * trains. The last scrape comes a moment before the end, so a step or two may be missing
 * from it; the ratio of bytes to steps is what the test compares.
 */
async function trainWith(encoding: GradientEncoding, extra: string[] = [], env: NodeJS.ProcessEnv = {}): Promise<EncodedRun> {
  const output = temporaryFolder(`encoding-${encoding}`);
  const launch = new CliProcess(['launch', ...TRAINING, '--gradient-encoding', encoding, '--port', '0', '--metrics-port', '0', '--log-format', 'json', '--output', output, ...extra], env);
  try {
    const started = await launch.waitForLog('started', 60_000);
    let bytesPerStep = NaN;
    while (launch.child.exitCode === null) {
      try {
        const text = await (await fetch(started.metrics.coordinator)).text();
        const steps = metricValue(text, 'gradfleet_steps_total');
        if (steps > 0) bytesPerStep = metricValue(text, 'gradfleet_received_bytes_total') / steps;
      } catch (error) {
        // The coordinator closes its metrics server as training ends.
        if (!(error instanceof TypeError)) throw error;
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const status = await launch.exited;
    const epochs = launch.logs('epoch complete');
    return { status, launch, testAccuracy: epochs.at(-1)?.testAccuracy ?? NaN, bytesPerStep };
  } finally {
    launch.kill();
  }
}

describe('gradient encodings', () => {
  it('fp16 and int8 train on fewer bytes', async () => {
    const fp32 = await trainWith('fp32');
    const fp16 = await trainWith('fp16');
    const int8 = await trainWith('int8');
    for (const run of [fp32, fp16, int8]) expect(run.status, run.launch.output()).toBe(0);

    // The mlp's gradient is 101,770 values: 407 KB in fp32, 204 KB in fp16, 103 KB in int8.
    expect(fp16.bytesPerStep / fp32.bytesPerStep).toBeGreaterThan(0.45);
    expect(fp16.bytesPerStep / fp32.bytesPerStep).toBeLessThan(0.55);
    expect(int8.bytesPerStep / fp32.bytesPerStep).toBeGreaterThan(0.22);
    expect(int8.bytesPerStep / fp32.bytesPerStep).toBeLessThan(0.3);

    expect(fp32.testAccuracy).toBeGreaterThan(0.6);
    expect(fp16.testAccuracy).toBeGreaterThan(fp32.testAccuracy - 0.03);
    expect(int8.testAccuracy).toBeGreaterThan(fp32.testAccuracy - 0.03);
  }, 240_000);

  it('NaN under int8 skips the step', async () => {
    // Both workers make every gradient of step 3 NaN, so its shards fail twice.
    const run = await trainWith('int8', ['--max-steps', '10'], { TEST_GRADFLEET_NAN_AT_STEP: '3' });
    expect(run.status, run.launch.output()).toBe(0);
    const codes = run.launch.logs('message from worker rejected').map((entry) => entry.code);
    expect(codes.filter((code) => code === 'INVALID_GRADIENT').length).toBeGreaterThanOrEqual(2);
    // A NaN gradient still in flight when the step is skipped arrives as stale.
    expect(codes.filter((code) => code !== 'INVALID_GRADIENT' && code !== 'STALE_GRADIENT')).toEqual([]);
    expect(run.launch.logs('step skipped: its update is not applied').map((entry) => entry.step)).toEqual([3]);
    // The NaN did not reach the residuals: the later steps trained.
    expect(run.launch.logs('step skipped: its update is not applied')).toHaveLength(1);
    expect(run.testAccuracy).toBeGreaterThan(0.3);
  }, 120_000);
});
