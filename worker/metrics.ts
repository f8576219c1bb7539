import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { SECONDS_BUCKETS } from '../shared/metrics-server.js';


/** All metrics of one worker, in a registry of its own. */
export class WorkerMetrics {
  readonly registry = new Registry();

  readonly compute = new Histogram({
    name: 'gradfleet_worker_compute_seconds',
    help: 'Time spent computing one shard gradient, in seconds.',
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
}
