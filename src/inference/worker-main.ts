/**
 * The InferenceWorker thread (started by ./worker.ts): builds the model from its init message,
 * compiles it for inference, then answers run/features requests one at a time, in order, with
 * transferred result buffers. Errors are sent back by name and message.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { ShapeError, StateDictError } from '../errors.js';
import { readCheckpoint } from '../io/checkpoint.js';
import { listBackends, setBackend, setNumThreads } from '../kernels/registry.js';
import { createModel } from '../models/registry.js';
import { ResNet } from '../models/resnet.js';
import type { StateDict } from '../nn/module.js';
import { Tensor, shapeStr, withMetaTensors } from '../tensor/tensor.js';
import { compileInference, type InferencePlan } from './plan.js';
import type { InferenceReply, InferenceRequest, InferenceWorkerInit, SerializedError } from './worker.js';

const port = parentPort!;

function serializeError(e: unknown): SerializedError {
  const err = e instanceof Error ? e : new Error(String(e));
  return { name: err.name, message: err.message, ...(err.stack !== undefined ? { stack: err.stack } : {}) };
}

function build(init: InferenceWorkerInit): ResNet {
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

let plan: InferencePlan;
try {
  const model = build(workerData as InferenceWorkerInit);
  plan = compileInference(model);
  const ready: InferenceReply = { type: 'ready', numFeatures: model.numFeatures, numClasses: model.fc.outFeatures };
  port.postMessage(ready);
} catch (e) {
  const reply: InferenceReply = { type: 'init-error', error: serializeError(e) };
  port.postMessage(reply);
}

// Requests are handled synchronously, one message at a time, so replies go out in request order.
port.on('message', (req: InferenceRequest) => {
  let reply: InferenceReply;
  const transfer: ArrayBuffer[] = [];
  try {
    const x = new Tensor(req.shape, req.data);
    let data: Float32Array;
    let shape: number[];
    if (req.op === 'run') {
      const y = plan.run(x);
      data = y.values;
      shape = [...y.shape];
    } else {
      if (x.ndim !== 4) throw new ShapeError(`inference plan: input must be 4-D (N, C, H, W), got ${shapeStr(x.shape)}`);
      const f = plan.features(x);
      data = f.data.slice(); // the plan's buffer belongs to its pool: send a copy
      shape = [...f.shape];
    }
    transfer.push(data.buffer as ArrayBuffer);
    reply = { type: 'result', id: req.id, data, shape };
  } catch (e) {
    reply = { type: 'error', id: req.id, error: serializeError(e) };
  }
  port.postMessage(reply, transfer);
});
