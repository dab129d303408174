/**
 * The InferenceWorker thread (started by ./worker.ts): builds the model from its init message,
 * compiles it for inference, then answers run/features requests one at a time, in order, with
 * transferred result buffers. Errors are sent back by name and message.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { ShapeError } from '../errors.js';
import { Tensor, shapeStr } from '../tensor/tensor.js';
import { compileInference, type InferencePlan } from './plan.js';
import type { WorkerReply, WorkerRequest, InferenceWorkerInit } from './worker.js';
import { buildModel, serializeError } from './worker-model.js';

const port = parentPort!;

let plan: InferencePlan;
try {
  const model = buildModel(workerData as InferenceWorkerInit);
  plan = compileInference(model);
  const ready: WorkerReply = { type: 'ready', numFeatures: model.numFeatures, numClasses: model.fc.outFeatures };
  port.postMessage(ready);
} catch (e) {
  const reply: WorkerReply = { type: 'init-error', error: serializeError(e) };
  port.postMessage(reply);
}

// Requests are handled synchronously, one message at a time, so replies go out in request order.
port.on('message', (req: WorkerRequest) => {
  let reply: WorkerReply;
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
