/**
 * Training off the main thread: TrainingWorker keeps a model and its SGD optimizer on a
 * node:worker_threads Worker, so a Node server stays responsive while forward and backward passes
 * run (fine-tuning behind an API, for instance).
 *
 *   const w = await TrainingWorker.create({ arch: 'resnet20', options: { inChannels: 1 } }, { sgd: { lr: 0.1, momentum: 0.9 } });
 *   const loss = await w.step(x, targets);    // forward (train mode), cross-entropy, backward, SGD step
 *   const logits = await w.run(x);            // eval mode (running statistics), no graph
 *   writeStateDict('model.safetensors', await w.stateDict());
 *   await w.close();
 *
 * The model comes from the same specs as InferenceWorker's (an architecture with options and
 * weights, or a ResNet whose state dict is copied over); the caller's model is never touched. A step
 * is exactly the trainer's (src/train/trainer.ts): zeroGrad, F.crossEntropy with optional label
 * smoothing, backward, optimizer.step(), with the buffers of one step serving the next. Requests run
 * one at a time in order; errors come back with their class (ShapeError for bad targets, UsageError
 * for bad SGD options, ...), and the worker keeps serving after a failed request.
 */
import { UsageError, ShapeError } from '../errors.js';
import type { Worker } from 'node:worker_threads';
import { kernels } from '../kernels/registry.js';
import type { StateDict } from '../nn/module.js';
import type { SGDOptions } from '../optim/sgd.js';
import { Tensor } from '../tensor/tensor.js';
import {
  WorkerClient,
  checkThreads,
  modelInit,
  type InferenceInput,
  type InferenceWorkerInit,
  type InferenceWorkerSpec,
} from '../inference/worker.js';

export interface TrainingWorkerOptions {
  /** SGD hyper-parameters, as torch.optim.SGD takes them (lr required). */
  sgd: SGDOptions;
  /** Cross-entropy label smoothing (default 0). */
  labelSmoothing?: number;
  /** Native kernel threads (process-wide, as InferenceWorker's). Default: leave the current setting. */
  threads?: number;
}

/** @internal */
export interface TrainingWorkerInit extends InferenceWorkerInit {
  sgd: SGDOptions;
  labelSmoothing: number;
}

const WORKER_URL = new URL('./worker-main.js', import.meta.url);

export class TrainingWorker extends WorkerClient {
  private constructor(
    worker: Worker,
    /** Width of the logits. */
    readonly numClasses: number,
  ) {
    super(worker, 'TrainingWorker');
  }

  /** Starts a worker, builds the model (train mode) and its SGD optimizer in it; rejects with the
   * worker's error if that fails (a bad architecture, weights that do not fit, bad SGD options). */
  static async create(spec: InferenceWorkerSpec, opts: TrainingWorkerOptions): Promise<TrainingWorker> {
    const who = 'TrainingWorker.create';
    if (opts === null || typeof opts !== 'object' || opts.sgd === null || typeof opts.sgd !== 'object') {
      throw new UsageError(`${who}: options need sgd: { lr, momentum?, weightDecay?, nesterov?, dampening? }`);
    }
    const labelSmoothing = opts.labelSmoothing ?? 0;
    if (typeof labelSmoothing !== 'number' || !(labelSmoothing >= 0 && labelSmoothing <= 1)) {
      throw new UsageError(`${who}: labelSmoothing must be in [0, 1], got ${String(labelSmoothing)}`);
    }
    const threads = checkThreads(opts.threads, who);
    const transfer: ArrayBuffer[] = [];
    const init: TrainingWorkerInit = { model: modelInit(spec, transfer, who), threads, backend: kernels().name, sgd: { ...opts.sgd }, labelSmoothing };
    const { worker, numClasses } = await WorkerClient.start(WORKER_URL, init, transfer, 'TrainingWorker');
    return new TrainingWorker(worker, numClasses);
  }

  /**
   * One training step on x [N, C, H, W] with the class of each image: forward in train mode, mean
   * cross-entropy, backward, SGD step. `lr` sets the learning rate of this and later steps (a
   * schedule is the caller's). Resolves with the loss before the update.
   */
  async step(x: InferenceInput, targets: ArrayLike<number>, opts: { lr?: number } = {}): Promise<number> {
    if (targets === null || typeof targets !== 'object' || typeof targets.length !== 'number') {
      throw new ShapeError('TrainingWorker: step() expects the targets as an array of class indices');
    }
    const t = new Int32Array(targets.length);
    for (let i = 0; i < targets.length; i++) {
      const v = targets[i]!;
      if (!Number.isInteger(v) || v < 0 || v > 0x7fffffff) throw new ShapeError(`TrainingWorker: target ${i} is ${v}, expected a class index`);
      t[i] = v;
    }
    if (opts.lr !== undefined && !(typeof opts.lr === 'number' && Number.isFinite(opts.lr) && opts.lr >= 0)) {
      throw new UsageError(`TrainingWorker: lr must be a finite number >= 0, got ${String(opts.lr)}`);
    }
    const r = await this.request('step', x, { targets: t, ...(opts.lr !== undefined ? { lr: opts.lr } : {}) });
    return r.data[0]!;
  }

  /** Logits [N, numClasses] in eval mode (batch norm with its running statistics), without a graph. */
  async run(x: InferenceInput): Promise<Tensor> {
    const r = await this.request('run', x);
    return new Tensor(r.shape, r.data);
  }

  /** A copy of the model's state dict, with torchvision's keys (for writeStateDict, loadStateDict). */
  async stateDict(): Promise<StateDict> {
    const r = await this.request('state', null);
    return new Map((r.state ?? []).map((e) => [e.key, new Tensor(e.shape, e.data, e.dtype)]));
  }
}
