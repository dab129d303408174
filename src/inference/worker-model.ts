/**
 * The worker-thread side shared by the model workers (./worker-main.ts for InferenceWorker,
 * src/train/worker-main.ts for TrainingWorker): the model built from the init message, and errors
 * serialised for the calling thread. No side effects on import.
 */
import { StateDictError } from '../errors.js';
import { readCheckpoint } from '../io/checkpoint.js';
import { listBackends, setBackend, setNumThreads } from '../kernels/registry.js';
import { createModel } from '../models/registry.js';
import { ResNet } from '../models/resnet.js';
import type { StateDict } from '../nn/module.js';
import { Tensor, withMetaTensors } from '../tensor/tensor.js';
import type { InferenceWorkerInit, SerializedError } from './worker.js';

/** An error as the calling thread revives it (reviveError in ./worker.ts). */
export function serializeError(e: unknown): SerializedError {
  const err = e instanceof Error ? e : new Error(String(e));
  return { name: err.name, message: err.message, ...(err.stack !== undefined ? { stack: err.stack } : {}) };
}

/** The kernel backend and threads of the calling thread, then the model (in eval mode). */
export function buildModel(init: InferenceWorkerInit): ResNet {
  if (init.backend && listBackends().includes(init.backend)) setBackend(init.backend);
  if (init.threads !== null) setNumThreads(init.threads);
  const m = init.model;
  let model: ResNet;
  if (m.kind === 'model') {
    // Shape-only build (no random init), then the weights fill it.
    model = withMetaTensors(() => new ResNet(m.block, m.layers, m.options));
    const sd: StateDict = new Map();
    for (const t of m.state) sd.set(t.key, new Tensor(t.shape, t.data, t.dtype));
    model.loadStateDict(sd);
  } else if (m.weights !== null) {
    const weights = m.weights;
    model = withMetaTensors(() => createModel(m.arch, m.options));
    const { stateDict } = readCheckpoint(weights);
    try {
      model.loadStateDict(stateDict);
    } catch (e) {
      if (e instanceof StateDictError) throw new StateDictError(`${weights} does not fit ${m.arch}: ${e.message}`);
      throw e;
    }
  } else {
    model = createModel(m.arch, m.options);
  }
  return model.eval();
}
