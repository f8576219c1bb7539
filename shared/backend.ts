import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
import { registerWasmGradientKernels } from './kernels/index.js';
import type { BackendChoice } from './options.js';

export type BackendName = Exclude<BackendChoice, 'auto'>;

export { tf };

// PROD skips tfjs's debug-only checks and its console banner recommending tfjs-node,
// which would otherwise interleave with gradfleet's own start-up lines.
tf.env().set('PROD', true);

/** Raised when a requested backend cannot be used on this machine. */
export class BackendUnavailableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BackendUnavailableError';
  }
}

export interface BackendSelection {
  name: BackendName;
  /** Reason `auto` fell back from a faster backend, for one start-up log line. */
  fallbackReason?: string;
}

/**
 * Loads `@tensorflow/tfjs-node`, whose native library is downloaded by its install
 * script. Where that download failed, npm drops the optional package or leaves it without
 * its library, so the import itself is the test of whether it works.
 */
async function loadTensorflowBackend(): Promise<void> {
  try {
    await import('@tensorflow/tfjs-node' as string);
  } catch (error) {
    const reason = (error as Error).message.split('\n')[0];
    throw new BackendUnavailableError(
      `backend "tensorflow" is unavailable: @tensorflow/tfjs-node failed to load (${reason}). ` +
        'Install it with `npm install @tensorflow/tfjs-node` on a machine that can download libtensorflow, ' +
        'or pass --backend wasm',
    );
  }
}

async function activate(name: BackendName): Promise<void> {
  if (name === 'tensorflow') await loadTensorflowBackend();
  if (name === 'wasm') registerWasmGradientKernels();
  const ok = await tf.setBackend(name);
  if (!ok) throw new BackendUnavailableError(`backend "${name}" failed to initialize; pass --backend cpu to use the pure JavaScript backend`);
  await tf.ready();
}

/**
 * Makes the chosen backend the active tfjs backend. `auto` takes `tensorflow` when
 * tfjs-node loads and otherwise `wasm`, reporting why in `fallbackReason`.
 */
export async function selectBackend(choice: BackendChoice): Promise<BackendSelection> {
  if (choice !== 'auto') {
    await activate(choice);
    return { name: choice };
  }
  try {
    await activate('tensorflow');
    return { name: 'tensorflow' };
  } catch (error) {
    if (!(error instanceof BackendUnavailableError)) throw error;
    await activate('wasm');
    return { name: 'wasm', fallbackReason: error.message };
  }
}
