/**
 * The TrainingWorker thread (started by ./worker.ts): builds the model and its SGD optimizer from
 * the init message, then answers step/run/state requests one at a time, in order. Errors are sent
 * back by name and message. The targets are checked before the forward pass, so a bad batch does not
 * move the batch-norm running statistics either.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { ShapeError } from '../errors.js';
import { buildModel, serializeError } from '../inference/worker-model.js';
import type { WorkerReply, WorkerRequest, SerializedTensor } from '../inference/worker.js';
import type { ResNet } from '../models/resnet.js';
import { crossEntropy } from '../ops/loss.js';
import { SGD } from '../optim/sgd.js';
import { backward, noGrad } from '../tensor/autograd.js';
import { Tensor, recycleGrads } from '../tensor/tensor.js';
import type { TrainingWorkerInit } from './worker.js';

const port = parentPort!;
const init = workerData as TrainingWorkerInit;

let model: ResNet;
let optimizer: SGD;
let params: Tensor[];
try {
  model = buildModel(init).train();
  params = model.parameters();
  optimizer = new SGD(params, init.sgd);
  optimizer.fuseIntoBackward({ freeGrads: true }); // as the trainer: each parameter updated inside backward()
  const ready: WorkerReply = { type: 'ready', numFeatures: model.numFeatures, numClasses: model.fc.outFeatures };
  port.postMessage(ready);
} catch (e) {
  const reply: WorkerReply = { type: 'init-error', error: serializeError(e) };
  port.postMessage(reply);
}

/** A step as the trainer runs it; nobody outside this thread sees the activations or gradients. */
function step(x: Tensor, targets: Int32Array, lr: number | undefined): number {
  const n = x.shape[0]!, classes = model.fc.outFeatures;
  if (targets.length !== n) throw new ShapeError(`TrainingWorker: ${targets.length} targets for a batch of ${n}`);
  const bad = targets.findIndex((t) => t >= classes);
  if (bad >= 0) throw new ShapeError(`TrainingWorker: target ${bad} is ${targets[bad]}, expected a class in [0, ${classes})`);
  model.train();
  recycleGrads(params);
  optimizer.zeroGrad();
  const loss = crossEntropy(model.call(x), targets, { labelSmoothing: init.labelSmoothing });
  const value = loss.item();
  if (lr !== undefined) optimizer.lr = lr;
  backward(loss, undefined, { recycleActivations: true }); // and the SGD update (fuseIntoBackward)
  return value;
}

port.on('message', (req: WorkerRequest) => {
  let reply: WorkerReply;
  const transfer: ArrayBuffer[] = [];
  try {
    if (req.op === 'state') {
      const state: SerializedTensor[] = [];
      for (const [key, t] of model.stateDict()) {
        const data = t.values.slice();
        transfer.push(data.buffer as ArrayBuffer);
        state.push({ key, shape: [...t.shape], dtype: t.dtype, data });
      }
      reply = { type: 'result', id: req.id, data: new Float32Array(0), shape: [], state };
    } else {
      const x = new Tensor(req.shape, req.data);
      if (x.ndim !== 4) throw new ShapeError(`TrainingWorker: the input must be 4-D (N, C, H, W), got [${x.shape.join(', ')}]`);
      let data: Float32Array;
      let shape: number[];
      if (req.op === 'step') {
        data = Float32Array.of(step(x, req.targets!, req.lr));
        shape = [1];
      } else {
        model.eval();
        const y = noGrad(() => model.call(x));
        model.train();
        data = y.values;
        shape = [...y.shape];
      }
      transfer.push(data.buffer as ArrayBuffer);
      reply = { type: 'result', id: req.id, data, shape };
    }
  } catch (e) {
    model.train();
    reply = { type: 'error', id: req.id, error: serializeError(e) };
  }
  port.postMessage(reply, transfer);
});
