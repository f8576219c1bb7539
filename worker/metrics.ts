import { monitorEventLoopDelay } from 'node:perf_hooks';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { SECONDS_BUCKETS } from '../shared/metrics-server.js';

/** Sampling interval of the event-loop delay monitor, in milliseconds. */
const LOOP_DELAY_RESOLUTION_MS = 10;

/**
 * Percentiles of the event-loop delay that the gauge reports; 100 is the maximum. The label
 * is not called `quantile`, because Prometheus reserves that label for summaries.
 */
const LOOP_DELAY_PERCENTILES = [50, 99, 100];


/** All metrics of one worker, in a registry of its own. */
export class WorkerMetrics {
  readonly registry = new Registry();
  private readonly loopDelay = monitorEventLoopDelay({ resolution: LOOP_DELAY_RESOLUTION_MS });

  constructor() {
    this.loopDelay.enable();
  }

  readonly compute = new Histogram({
    name: 'gradfleet_worker_compute_seconds',
    help: 'Time spent computing one shard gradient, in the gradient thread or in main-thread slices, in seconds.',
    buckets: SECONDS_BUCKETS,
    registers: [this.registry],
  });

  readonly examples = new Counter({
    name: 'gradfleet_examples_total',
    help: 'Training examples this worker computed gradients for.',
    registers: [this.registry],
  });

  readonly shards = new Counter({
    name: 'gradfleet_shards_total',
    help: 'Shards this worker computed a gradient for.',
    registers: [this.registry],
  });

  readonly sentBytes = new Counter({
    name: 'gradfleet_sent_bytes_total',
    help: 'Bytes of protocol messages sent to the coordinator.',
    registers: [this.registry],
  });

  readonly receivedBytes = new Counter({
    name: 'gradfleet_received_bytes_total',
    help: 'Bytes of protocol messages received from the coordinator.',
    registers: [this.registry],
  });

  readonly step = new Gauge({
    name: 'gradfleet_step',
    help: 'Last step this worker computed a shard for.',
    registers: [this.registry],
  });

  readonly info = new Gauge({
    name: 'gradfleet_worker_info',
    help: 'Always 1; the labels carry the worker name, its backend and gradfleet version.',
    labelNames: ['worker', 'backend', 'version'],
    registers: [this.registry],
  });

  /**
   * Delay of the main thread's event loop, which replies to heartbeats, since the previous
   * scrape. Node's monitor samples it every LOOP_DELAY_RESOLUTION_MS, and each scrape reads
   * and resets it, so a large value means the loop was blocked that long in that interval.
   */
  readonly eventLoopDelay = new Gauge({
    name: 'gradfleet_worker_event_loop_delay_seconds',
    help: 'Event-loop delay of the worker main thread since the previous scrape, in seconds, by percentile (100 is the maximum).',
    labelNames: ['percentile'],
    registers: [this.registry],
    collect: () => this.collectLoopDelay(),
  });

  /** Stops the event-loop delay monitor; safe to call twice. */
  close(): void {
    this.loopDelay.disable();
  }

  private collectLoopDelay(): void {
    const histogram = this.loopDelay;
    for (const percentile of LOOP_DELAY_PERCENTILES) {
      let nanoseconds = 0;
      if (histogram.count > 0) nanoseconds = percentile === 100 ? histogram.max : histogram.percentile(percentile);
      this.eventLoopDelay.set({ percentile: String(percentile) }, nanoseconds / 1e9);
    }
    histogram.reset();
  }
}
