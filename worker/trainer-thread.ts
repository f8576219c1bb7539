/**
 * The gradient thread: a Node worker thread that owns the worker's model replica and
 * computes gradients, so that the worker's main thread stays free for heartbeats.
 * `worker/trainer.ts` starts it and is the only sender of its requests.
 */
import { parentPort, workerData, type TransferListItem } from 'node:worker_threads';
import { selectBackend } from '../shared/backend.js';
import { ModelReplica } from './model-replica.js';
import { dropKernelForTests } from './self-check.js';
import { transferable, type ThreadErrorData, type TrainerEnvelope, type TrainerReply, type TrainerRequest, type TrainerThreadData } from './trainer.js';

const replica = new ModelReplica();

/** Handles one request; returns the result and the buffers to transfer with it. */
async function handle(request: TrainerRequest): Promise<{ result: unknown; transfer: TransferListItem[] }> {
  switch (request.type) {
    case 'build':
      return { result: await replica.build(request.topology, request.numClasses), transfer: [] };
    case 'selfCheck':
      return { result: replica.selfCheck(), transfer: [] };
    case 'weights':
      replica.setWeights(request.weights);
      return { result: undefined, transfer: [] };
    case 'gradients': {
      // dataSync() of a gradient returns a copy on wasm and the disposed tensor's own
      // storage on cpu, so neither backend uses the buffers once they are transferred.
      const result = replica.gradients(request.batch);
      const gradients = result.gradients.map((gradient) => transferable(gradient));
      return { result: { ...result, gradients }, transfer: gradients.map((gradient) => gradient.buffer) };
    }
    case 'memory':
      return { result: replica.memory(), transfer: [] };
  }
}

function errorData(error: unknown): ThreadErrorData {
  if (!(error instanceof Error)) return { name: 'Error', message: String(error) };
  const kernel = (error as { kernel?: unknown }).kernel;
  return { name: error.name, message: error.message, stack: error.stack, kernel: typeof kernel === 'string' ? kernel : undefined };
}

if (!parentPort) {
  throw new Error('worker/trainer-thread.js runs only as a worker thread, which worker/trainer.js starts');
}
const port = parentPort;
const { backend } = workerData as TrainerThreadData;

// Requests posted while the backend starts wait in the port's queue until the listener
// below is attached.
await selectBackend(backend);
dropKernelForTests();

// Requests run one after another in arrival order: weights must be assigned before the
// shard that follows them is computed, and `build` awaits the topology's parsing.
let queue = Promise.resolve();
port.on('message', ({ id, request }: TrainerEnvelope) => {
  queue = queue.then(async () => {
    try {
      const { result, transfer } = await handle(request);
      port.postMessage({ id, ok: true, result } satisfies TrainerReply, transfer);
    } catch (error) {
      port.postMessage({ id, ok: false, error: errorData(error) } satisfies TrainerReply);
    }
  });
});
