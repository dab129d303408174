/**
 * Inference off the main thread: InferenceWorker runs a compiled inference plan (./plan.ts) on a
 * node:worker_threads Worker, so a Node server keeps answering while a forward pass runs.
 *
 *   const w = await InferenceWorker.create({ arch: 'resnet50', weights: 'resnet50.safetensors' });
 *   const logits = await w.run(x);          // Tensor [N, numClasses]
 *   const feats = await w.features(x);      // { data, shape: [N, numFeatures] }
 *   await w.close();
 *
 * - The model comes from an architecture name (+ options, + any checkpoint readCheckpoint reads),
 *   or from a ResNet instance: its options and a copy of its state dict are sent (the caller's
 *   buffers are copied, then the copies transferred, so the caller's model is untouched).
 * - Requests are queued and answered in order. Inputs are copied then transferred (the caller's
 *   arrays stay usable); results are transferred back (no copy).
 * - An error inside the worker rejects the request with the same class (ShapeError, FormatError,
 *   UsageError, StateDictError, ResnetError) and message; the worker keeps serving afterwards.
 * - The worker is unref()'d while idle, so an unclosed InferenceWorker does not keep the process
 *   alive; close() terminates it.
 * - The worker uses the kernel backend active on the calling thread when create() is called.
 *   `threads` sets the native kernels' thread count; their thread pool is shared by the whole
 *   process, so this is the same setting as setNumThreads() on the main thread.
 */
import { workerExecArgv } from '../util/worker-argv.js';
import { Worker } from 'node:worker_threads';
import { FormatError, ResnetError, ShapeError, StateDictError, UsageError } from '../errors.js';
import { MAX_THREADS, isThreadCount, kernels } from '../kernels/registry.js';
import type { ModelOptions } from '../models/registry.js';
import { ResNet, type BlockKind, type ResNetOptions } from '../models/resnet.js';
import { Tensor, type TensorDType } from '../tensor/tensor.js';

/** What the worker runs: a registered architecture (optionally with weights), or a model. */
export type InferenceWorkerSpec = { arch: string; options?: ModelOptions; weights?: string } | { model: ResNet };

export interface InferenceWorkerOptions {
  /** Native kernel threads (process-wide, see above). Default: leave the current setting. */
  threads?: number;
}

/** An input batch [N, C, H, W]: a Tensor, or its raw float32 data and shape. */
export type InferenceInput = Tensor | { data: Float32Array; shape: readonly number[] };

// ---- protocol (shared with ./worker-main.ts) -------------------------------------------------

/** @internal */
export interface SerializedTensor {
  key: string;
  shape: number[];
  dtype: TensorDType;
  data: Float32Array;
}

/** @internal */
export type WorkerModelInit =
  | { kind: 'arch'; arch: string; options: ModelOptions; weights: string | null }
  | { kind: 'model'; block: BlockKind; layers: number[]; options: ResNetOptions; state: SerializedTensor[] };

/** @internal */
export interface InferenceWorkerInit {
  model: WorkerModelInit;
  threads: number | null;
  backend: string;
}

/** @internal */
export interface SerializedError {
  name: string;
  message: string;
  stack?: string;
}

/** @internal A request to a model worker (this one, or the TrainingWorker of src/train/worker.ts). */
export interface WorkerRequest {
  id: number;
  op: 'run' | 'features' | 'step' | 'state';
  data: Float32Array;
  shape: number[];
  /** step: the class of each image, and the learning rate if it changes */
  targets?: Int32Array;
  lr?: number;
}

/** @internal */
export type WorkerReply =
  | { type: 'ready'; numFeatures: number; numClasses: number }
  | { type: 'init-error'; error: SerializedError }
  | { type: 'result'; id: number; data: Float32Array; shape: number[]; state?: SerializedTensor[] }
  | { type: 'error'; id: number; error: SerializedError };

// ---- main-thread side ------------------------------------------------------------------------

const WORKER_URL = new URL('./worker-main.js', import.meta.url);

const ERROR_CLASSES: Record<string, new (m: string) => Error> = {
  ResnetError,
  ShapeError,
  FormatError,
  StateDictError,
  UsageError,
};

/** Re-creates an error from the worker: same class (for ours) and message; the stack shows both sides. */
export function reviveError(e: SerializedError): Error {
  const C = ERROR_CLASSES[e.name];
  const err = C ? new C(e.message) : new Error(e.message);
  if (!C && e.name) err.name = e.name;
  if (e.stack) err.stack = `${err.stack ?? `${err.name}: ${err.message}`}\n    --- in the worker thread ---\n${e.stack.split('\n').slice(1).join('\n')}`;
  return err;
}


/** @internal What a worker builds its model from; `who` names the caller in errors. */
export function modelInit(spec: InferenceWorkerSpec, transfer: ArrayBuffer[], who = 'InferenceWorker.create'): WorkerModelInit {
  if (spec === null || typeof spec !== 'object') throw new UsageError(`${who}: expected { arch, options?, weights? } or { model }`);
  if ('model' in spec) {
    const m = spec.model;
    if (!(m instanceof ResNet)) throw new UsageError(`${who}: { model } must be a ResNet`);
    const { block, layers, ...options } = m.options;
    const state: SerializedTensor[] = [];
    for (const [key, t] of m.stateDict()) {
      if (t.data === null) throw new UsageError(`${who}: the model's ${key} is a meta tensor (shape only); load weights first`);
      const data = new Float32Array(t.data); // a copy: the caller's buffers stay attached
      transfer.push(data.buffer as ArrayBuffer);
      state.push({ key, shape: [...t.shape], dtype: t.dtype, data });
    }
    return {
      kind: 'model',
      block,
      layers: [...layers],
      options: { ...options, replaceStrideWithDilation: [...options.replaceStrideWithDilation], widths: [...options.widths] },
      state,
    };
  }
  if (typeof spec.arch !== 'string') throw new UsageError(`${who}: \`arch\` must be an architecture name`);
  if (spec.weights !== undefined && typeof spec.weights !== 'string') throw new UsageError(`${who}: \`weights\` must be a path`);
  return { kind: 'arch', arch: spec.arch, options: { ...(spec.options ?? {}) }, weights: spec.weights ?? null };
}

interface Pending {
  resolve: (r: Extract<WorkerReply, { type: 'result' }>) => void;
  reject: (e: Error) => void;
}

/** @internal The main-thread side of a model worker: start-up handshake, ordered requests, failure
 * and close handling. InferenceWorker and TrainingWorker (src/train/worker.ts) are its two kinds. */
export abstract class WorkerClient {
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private closed = false;
  /** Set when the worker died: every later request rejects with it. */
  private failure: Error | null = null;

  protected constructor(
    private readonly worker: Worker,
    /** The class name, in errors ("InferenceWorker"). */
    private readonly label: string,
  ) {
    worker.on('message', (m: WorkerReply) => this.onReply(m));
    worker.on('error', (e: Error) => this.fail(new ResnetError(`${label}: the worker failed: ${e.message}`)));
    worker.on('exit', (code) => {
      if (!this.closed) this.fail(new ResnetError(`${label}: the worker exited unexpectedly (code ${code})`));
    });
    worker.unref();
  }

  /** Starts the worker script `url` with `init`; resolves when it has built its model. */
  protected static async start(url: URL, init: unknown, transfer: ArrayBuffer[], label: string): Promise<{ worker: Worker; numFeatures: number; numClasses: number }> {
    const worker = new Worker(url, { workerData: init, transferList: transfer, execArgv: workerExecArgv() });
    // Referenced while starting, so `await create()` in a script keeps the process alive.
    const ready = await new Promise<{ numFeatures: number; numClasses: number }>((resolve, reject) => {
      const cleanup = (): void => {
        worker.off('message', onMessage);
        worker.off('error', onError);
        worker.off('exit', onExit);
      };
      const onMessage = (m: WorkerReply): void => {
        if (m.type === 'ready') {
          cleanup();
          resolve({ numFeatures: m.numFeatures, numClasses: m.numClasses });
        } else if (m.type === 'init-error') {
          cleanup();
          reject(reviveError(m.error));
        }
      };
      const onError = (e: Error): void => {
        cleanup();
        reject(new ResnetError(`${label}: the worker failed to start: ${e.message}`));
      };
      const onExit = (code: number): void => {
        cleanup();
        reject(new ResnetError(`${label}: the worker exited while starting (code ${code})`));
      };
      worker.on('message', onMessage);
      worker.on('error', onError);
      worker.on('exit', onExit);
    }).catch(async (e: unknown) => {
      await worker.terminate();
      throw e;
    });
    return { worker, ...ready };
  }

  /** Requests sent and not yet answered. */
  get pendingCount(): number {
    return this.pending.size;
  }

  /** Terminates the worker; requests still pending reject. Safe to call twice. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const err = new ResnetError(`${this.label}: closed before this request was answered`);
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    await this.worker.terminate();
  }

  /** Sends op with a copy of x's values (transferred; the caller's array stays usable). */
  protected request(
    op: WorkerRequest['op'],
    x: InferenceInput | null,
    extra: Pick<WorkerRequest, 'targets' | 'lr'> = {},
  ): Promise<Extract<WorkerReply, { type: 'result' }>> {
    if (this.closed) return Promise.reject(new UsageError(`${this.label}: ${op}() called after close()`));
    if (this.failure) return Promise.reject(this.failure);
    let data: Float32Array = new Float32Array(0);
    let shape: number[] = [];
    if (x !== null) {
      if (x instanceof Tensor) {
        if (x.data === null) return Promise.reject(new ShapeError(`${this.label}: ${op}() needs a tensor with values, got a meta tensor`));
        data = x.data;
        shape = [...x.shape];
      } else if (typeof x === 'object' && x.data instanceof Float32Array && Array.isArray(x.shape)) {
        data = x.data;
        shape = [...x.shape];
      } else {
        return Promise.reject(new ShapeError(`${this.label}: ${op}() expects a Tensor or { data: Float32Array, shape: number[] }`));
      }
    }
    const copy = new Float32Array(data); // copy, then transfer the copy: the caller's array stays usable
    const transfer: ArrayBuffer[] = [copy.buffer as ArrayBuffer];
    if (extra.targets) transfer.push(extra.targets.buffer as ArrayBuffer);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      if (this.pending.size === 1) this.worker.ref();
      const req: WorkerRequest = { id, op, data: copy, shape, ...extra };
      this.worker.postMessage(req, transfer);
    });
  }

  private settle(id: number): Pending | undefined {
    const p = this.pending.get(id);
    if (p === undefined) return undefined;
    this.pending.delete(id);
    if (this.pending.size === 0) this.worker.unref();
    return p;
  }

  private onReply(m: WorkerReply): void {
    if (m.type === 'result') this.settle(m.id)?.resolve(m);
    else if (m.type === 'error') this.settle(m.id)?.reject(reviveError(m.error));
  }

  private fail(e: Error): void {
    if (this.failure) return;
    this.failure = e;
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
    this.worker.unref();
  }
}

/** @internal The worker's thread count, checked on the calling side. */
export function checkThreads(threads: number | undefined, who: string): number | null {
  if (threads === undefined) return null;
  if (!isThreadCount(threads)) throw new UsageError(`${who}: threads must be an integer from 1 to ${MAX_THREADS}, got ${threads}`);
  return threads;
}

export class InferenceWorker extends WorkerClient {
  private constructor(
    worker: Worker,
    /** Width of features() rows. */
    readonly numFeatures: number,
    /** Width of run() rows. */
    readonly numClasses: number,
  ) {
    super(worker, 'InferenceWorker');
  }

  /** Starts a worker and builds the model in it; rejects with the worker's error if that fails. */
  static async create(spec: InferenceWorkerSpec, opts: InferenceWorkerOptions = {}): Promise<InferenceWorker> {
    const threads = checkThreads(opts.threads, 'InferenceWorker.create');
    const transfer: ArrayBuffer[] = [];
    const init: InferenceWorkerInit = { model: modelInit(spec, transfer), threads, backend: kernels().name };
    const { worker, numFeatures, numClasses } = await WorkerClient.start(WORKER_URL, init, transfer, 'InferenceWorker');
    return new InferenceWorker(worker, numFeatures, numClasses);
  }

  /** Logits [N, numClasses] for x [N, C, H, W], as compileInference(model).run(x) computes them. */
  async run(x: InferenceInput): Promise<Tensor> {
    const r = await this.request('run', x);
    return new Tensor(r.shape, r.data);
  }

  /** Pooled features [N, numFeatures] (the input of fc) for x [N, C, H, W]. */
  async features(x: InferenceInput): Promise<{ data: Float32Array; shape: [number, number] }> {
    const r = await this.request('features', x);
    return { data: r.data, shape: [r.shape[0]!, r.shape[1]!] };
  }
}
