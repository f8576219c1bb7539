import type { CoordinatorOptions } from '../shared/options.js';

export type ScheduleOptions = Pick<CoordinatorOptions, 'lr' | 'lrScaling' | 'warmupSteps' | 'workers'>;

/**
 * Returns the learning rate of step `step` (counted from 0) when `activeWorkers` take part.
 *
 * With `linear` scaling the rate is `lr` × active workers / `--workers`, which is the
 * global batch (`--batch-size-per-worker` × active workers) over the planned one. During
 * warm-up, step s gets (s + 1) / warmupSteps of that rate. The rate is computed from the
 * base `lr` at every step, so changes of membership never compound.
 */
export function learningRate(options: ScheduleOptions, activeWorkers: number, step: number): number {
  const scale = options.lrScaling === 'linear' ? activeWorkers / options.workers : 1;
  const warmup = options.warmupSteps > 0 ? Math.min(1, (step + 1) / options.warmupSteps) : 1;
  return options.lr * scale * warmup;
}
