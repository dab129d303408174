/**
 * DataLoader: batches of transformed samples, shuffled reproducibly, optionally prepared ahead of
 * time on worker threads.
 *
 *   const loader = new DataLoader(train, { batchSize: 128, shuffle: true, seed: 1, workers: 2,
 *     transform: new Compose([new RandomCrop(28, 4), new RandomHorizontalFlip(), new ToFloat(), new Normalize(m, s)]) });
 *   for (let e = 0; e < epochs; e++) {
 *     loader.setEpoch(e);
 *     for await (const { x, y } of loader) { ... }   // x: Tensor [B, C, H, W] float32, y: Int32Array
 *   }
 *
 * Determinism. Epoch e's order is Generator(deriveSeed(seed, SHUFFLE, e)).permutation(n) (the
 * identity without shuffle); sample i's augmentation in epoch e draws from
 * Generator(deriveSeed(seed, AUGMENT, e, i)) (./seed.ts). So a batch depends on (seed, epoch,
 * batch number) only: workers = 0 and workers = N give identical batches, and restarting at epoch
 * e (setEpoch, or loadState of a checkpointed state()) replays it exactly, mid-epoch included.
 *
 * Epochs. Each `for await` runs the current epoch from the current position. A completed pass
 * advances to the next epoch (position 0); a pass left early (break, throw) stays at the batch
 * it reached: state().position counts the batches handed out, and the next pass continues
 * from there. setEpoch(e) starts epoch e from its beginning. Run one pass at a time.
 *
 * Workers (workers > 0). A pass starts `workers` threads (node:worker_threads) and ends them when
 * it ends, normally or early: nothing outlives the loop. Batch b is built by worker b % workers,
 * `prefetch` batches per worker in flight, and batches are yielded in order. In-memory datasets
 * (InMemoryDataset, and Subsets of one) are shared with the workers through SharedArrayBuffers:
 * requests carry only indices. Other datasets are read on the main thread (get, or the async load
 * of ImageFolder) and their raw uint8 samples are sent packed (transferred, not copied); workers
 * run the transforms and the stacking. Results come back as transferred buffers. The transform
 * must have a spec() (every built-in transform does; see ./transforms.ts). Workers are unref()'d
 * while they have no request in flight, so even an iterator abandoned without break cannot keep
 * the process alive. With persistentWorkers the threads outlive the pass (as PyTorch's
 * persistent_workers) and are reused by the next one until close().
 */
import { Worker } from 'node:worker_threads';
import { FormatError, ResnetError, ShapeError, StateDictError, UsageError } from '../errors.js';
import { Tensor } from '../tensor/tensor.js';
import { buildBatch, packSamples, type BuiltBatch, type PackedSamples } from './batch.js';
import { InMemoryDataset, Subset, isAsyncDataset, type AnyDataset, type AsyncDataset, type Dataset, type Sample, type SharedImages } from './dataset.js';
import { DatasetNotFoundError, DownloadError } from './errors.js';
import { shuffleGenerator } from './seed.js';
import { workerExecArgv } from '../util/worker-argv.js';
import type { Transform, TransformSpec } from './transforms.js';

export interface DataLoaderOptions {
  /** Samples per batch (default 1). */
  batchSize?: number;
  /** Shuffle each epoch (default false). */
  shuffle?: boolean;
  /** Drop the last incomplete batch (default false). */
  dropLast?: boolean;
  /** Seed of the shuffles and augmentations (default 0; any safe integer). */
  seed?: number;
  /** Applied to every sample (CHW uint8 in); null = none (uint8 scaled to [0, 1]). */
  transform?: Transform | null;
  /** Worker threads preparing batches ahead (default 0: everything on the calling thread). */
  workers?: number;
  /** Batches in flight per worker (default 2; also the read-ahead of asynchronous datasets). */
  prefetch?: number;
  /**
   * Keep the worker threads between passes (default false: each pass starts and ends its own).
   * Saves the start-up and JIT warm-up of every epoch; idle workers never keep the process alive,
   * and close() ends them.
   */
  persistentWorkers?: boolean;
}

export interface Batch {
  /** [B, C, H, W] float32. */
  x: Tensor;
  /** Labels. */
  y: Int32Array;
  /** Dataset index of each sample. */
  indices: Int32Array;
}

/** Everything needed to resume a loader where it was (JSON-serialisable). */
export interface DataLoaderState {
  seed: number;
  epoch: number;
  /** Batches of `epoch` already handed out. */
  position: number;
  batchSize: number;
  shuffle: boolean;
  dropLast: boolean;
  datasetLength: number;
}

/** What a worker is started with. */
export interface WorkerInit {
  transform: TransformSpec | null;
  shared: SharedImages | null;
}

export interface WorkerRequest {
  id: number;
  seed: number;
  epoch: number;
  indices: Int32Array;
  /** Indices into the shared dataset (shared mode). */
  source?: Int32Array;
  /** The samples themselves (otherwise). */
  packed?: PackedSamples;
}

export type WorkerReply =
  | { id: number; x: Float32Array; shape: [number, number, number, number]; y: Int32Array }
  | { id: number; error: { name: string; message: string; stack?: string } };

const WORKER_URL = new URL('./worker.js', import.meta.url);

const ERROR_CLASSES: Record<string, new (m: string) => Error> = {
  ResnetError,
  UsageError,
  ShapeError,
  FormatError,
  StateDictError,
  DatasetNotFoundError,
  DownloadError,
};

function reviveError(e: { name: string; message: string; stack?: string }): Error {
  const C = ERROR_CLASSES[e.name];
  const err = C ? new C(e.message) : new Error(e.message);
  if (!C && e.name) err.name = e.name;
  if (e.stack) err.stack = e.stack;
  return err;
}

function sharedSource(ds: AnyDataset): { root: InMemoryDataset; map: (i: number) => number } | null {
  if (ds instanceof InMemoryDataset) return { root: ds, map: (i) => i };
  if (ds instanceof Subset) {
    const inner = sharedSource(ds.dataset);
    if (inner === null) return null;
    const idx = ds.indices;
    return { root: inner.root, map: (i) => inner.map(idx[i]!) };
  }
  return null;
}


interface Pending {
  worker: number;
  resolve: (b: BuiltBatch) => void;
  reject: (e: Error) => void;
}

/** The worker threads of one pass. */
class WorkerPool {
  private readonly workers: Worker[] = [];
  private readonly pending = new Map<number, Pending>();
  private readonly outstanding: number[];
  private nextId = 1;
  private closed = false;
  /** A worker died: the pool cannot serve further requests. */
  broken = false;
  /** Why each dead worker died. */
  private readonly dead = new Map<number, Error>();

  constructor(n: number, init: WorkerInit) {
    this.outstanding = new Array<number>(n).fill(0);
    for (let i = 0; i < n; i++) {
      const w = new Worker(WORKER_URL, { workerData: init, execArgv: workerExecArgv() });
      w.unref();
      w.on('message', (m: WorkerReply) => this.onReply(m));
      w.on('error', (e: Error) => this.failWorker(i, new ResnetError(`DataLoader worker ${i} failed: ${e.message}`)));
      w.on('exit', (code) => {
        if (!this.closed) this.failWorker(i, new ResnetError(`DataLoader worker ${i} exited unexpectedly (code ${code})`));
      });
      this.workers.push(w);
    }
  }

  get size(): number {
    return this.workers.length;
  }

  run(worker: number, req: Omit<WorkerRequest, 'id'>, transfer: ArrayBuffer[]): Promise<BuiltBatch> {
    if (this.closed) return Promise.reject(new ResnetError('DataLoader: the worker pool is closed'));
    const dead = this.dead.get(worker);
    if (dead !== undefined) return Promise.reject(dead);
    const id = this.nextId++;
    return new Promise<BuiltBatch>((resolve, reject) => {
      this.pending.set(id, { worker, resolve, reject });
      if (this.outstanding[worker]!++ === 0) this.workers[worker]!.ref();
      this.workers[worker]!.postMessage({ ...req, id }, transfer);
    });
  }

  private settle(id: number): Pending | undefined {
    const p = this.pending.get(id);
    if (p === undefined) return undefined;
    this.pending.delete(id);
    if (--this.outstanding[p.worker]! === 0) this.workers[p.worker]!.unref();
    return p;
  }

  private onReply(m: WorkerReply): void {
    const p = this.settle(m.id);
    if (p === undefined) return;
    if ('error' in m) p.reject(reviveError(m.error));
    else p.resolve({ x: m.x, shape: m.shape, y: m.y });
  }

  private failWorker(worker: number, e: Error): void {
    this.broken = true;
    if (!this.dead.has(worker)) this.dead.set(worker, e);
    for (const [id, p] of [...this.pending]) if (p.worker === worker) this.settle(id)!.reject(e);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const err = new ResnetError('DataLoader: the pass ended before this batch was ready');
    for (const id of [...this.pending.keys()]) this.settle(id)!.reject(err);
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}

export class DataLoader implements AsyncIterable<Batch> {
  readonly dataset: AnyDataset;
  readonly batchSize: number;
  readonly shuffle: boolean;
  readonly dropLast: boolean;
  readonly transform: Transform | null;
  readonly workers: number;
  readonly prefetch: number;
  readonly persistentWorkers: boolean;
  private _seed: number;
  private _epoch = 0;
  private _position = 0;
  /** Bumped by setEpoch/loadState: a pass started before no longer writes its progress back. */
  private generation = 0;
  private readonly transformSpec: TransformSpec | null;
  private orderCache: { key: string; order: Int32Array } | null = null;
  /** The persistent worker pool (persistentWorkers only). */
  private pool: WorkerPool | null = null;

  constructor(dataset: AnyDataset, opts: DataLoaderOptions = {}) {
    this.dataset = dataset;
    this.batchSize = opts.batchSize ?? 1;
    this.shuffle = opts.shuffle ?? false;
    this.dropLast = opts.dropLast ?? false;
    this._seed = opts.seed ?? 0;
    this.transform = opts.transform ?? null;
    this.workers = opts.workers ?? 0;
    this.prefetch = opts.prefetch ?? 2;
    this.persistentWorkers = opts.persistentWorkers ?? false;
    if (!Number.isInteger(this.batchSize) || this.batchSize <= 0) throw new UsageError(`DataLoader: batchSize must be a positive integer, got ${opts.batchSize}`);
    if (!Number.isInteger(this.workers) || this.workers < 0) throw new UsageError(`DataLoader: workers must be a non-negative integer, got ${opts.workers}`);
    if (!Number.isInteger(this.prefetch) || this.prefetch <= 0) throw new UsageError(`DataLoader: prefetch must be a positive integer, got ${opts.prefetch}`);
    if (!Number.isSafeInteger(this._seed)) throw new UsageError(`DataLoader: seed must be an integer, got ${opts.seed}`);
    if (this.transform !== null && typeof this.transform.apply !== 'function') throw new UsageError('DataLoader: transform must have apply(img, gen)');
    this.transformSpec = null;
    if (this.workers > 0 && this.transform !== null) {
      if (typeof this.transform.spec !== 'function') {
        throw new UsageError('DataLoader: with workers > 0 the transform needs a spec() so workers can rebuild it (built-in transforms have one; or use workers: 0)');
      }
      this.transformSpec = this.transform.spec();
    }
  }

  get seed(): number {
    return this._seed;
  }

  /** The epoch the next pass runs. */
  get epoch(): number {
    return this._epoch;
  }

  /** Batches of the current epoch already handed out. */
  get position(): number {
    return this._position;
  }

  /** Batches per epoch. */
  get length(): number {
    const n = this.dataset.length;
    return this.dropLast ? Math.floor(n / this.batchSize) : Math.ceil(n / this.batchSize);
  }

  /** Makes the next pass run epoch `epoch` from its first batch. */
  setEpoch(epoch: number): void {
    if (!Number.isSafeInteger(epoch) || epoch < 0) throw new UsageError(`DataLoader.setEpoch: epoch must be a non-negative integer, got ${epoch}`);
    this._epoch = epoch;
    this._position = 0;
    this.generation++;
  }

  /** The order in which epoch `epoch` visits the dataset (dataset indices). */
  order(epoch = this._epoch): Int32Array {
    const n = this.dataset.length;
    const key = `${this._seed}/${epoch}/${n}/${this.shuffle}`;
    if (this.orderCache?.key === key) return this.orderCache.order;
    let order: Int32Array;
    if (this.shuffle) order = shuffleGenerator(this._seed, epoch).permutation(n);
    else {
      order = new Int32Array(n);
      for (let i = 0; i < n; i++) order[i] = i;
    }
    this.orderCache = { key, order };
    return order;
  }

  /** Dataset indices of batch `b` of epoch `epoch`. */
  batchIndices(b: number, epoch = this._epoch): Int32Array {
    if (!Number.isInteger(b) || b < 0 || b >= this.length) throw new UsageError(`DataLoader: batch ${b} out of range (an epoch has ${this.length})`);
    const n = this.dataset.length;
    return this.order(epoch).slice(b * this.batchSize, Math.min((b + 1) * this.batchSize, n));
  }

  state(): DataLoaderState {
    return {
      seed: this._seed,
      epoch: this._epoch,
      position: this._position,
      batchSize: this.batchSize,
      shuffle: this.shuffle,
      dropLast: this.dropLast,
      datasetLength: this.dataset.length,
    };
  }

  /** Restores state() (seed, epoch, position); batch size, shuffle, dropLast and dataset size must match. */
  loadState(s: DataLoaderState): void {
    const mismatch: string[] = [];
    if (s.batchSize !== this.batchSize) mismatch.push(`batchSize ${s.batchSize} vs ${this.batchSize}`);
    if (s.shuffle !== this.shuffle) mismatch.push(`shuffle ${s.shuffle} vs ${this.shuffle}`);
    if (s.dropLast !== this.dropLast) mismatch.push(`dropLast ${s.dropLast} vs ${this.dropLast}`);
    if (s.datasetLength !== this.dataset.length) mismatch.push(`dataset of ${s.datasetLength} samples vs ${this.dataset.length}`);
    if (mismatch.length > 0) throw new UsageError(`DataLoader.loadState: the saved state does not fit this loader (${mismatch.join(', ')})`);
    if (!Number.isSafeInteger(s.seed) || !Number.isSafeInteger(s.epoch) || s.epoch < 0) throw new UsageError('DataLoader.loadState: malformed seed or epoch');
    if (!Number.isInteger(s.position) || s.position < 0 || s.position > this.length) {
      throw new UsageError(`DataLoader.loadState: position ${s.position} is outside an epoch of ${this.length} batches`);
    }
    this._seed = s.seed;
    this._epoch = s.epoch;
    this._position = s.position;
    this.generation++;
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<Batch, void, undefined> {
    const epoch = this._epoch;
    const start = this._position;
    const generation = this.generation;
    const nb = this.length;
    const order = this.order(epoch);
    const async = isAsyncDataset(this.dataset);
    const shared = this.workers > 0 ? sharedSource(this.dataset) : null;
    let pool: WorkerPool | null = null;
    let ownPool = false;
    const inflight = new Map<number, Promise<Batch>>();
    try {
      if (this.workers > 0 && start < nb) {
        const init: WorkerInit = { transform: this.transformSpec, shared: shared ? shared.root.share() : null };
        if (this.persistentWorkers) {
          if (this.pool === null || this.pool.broken) {
            await this.pool?.close();
            this.pool = new WorkerPool(this.workers, init);
          }
          pool = this.pool;
        } else {
          pool = new WorkerPool(Math.min(this.workers, nb - start), init);
          ownPool = true;
        }
      }
      const depth = pool !== null ? pool.size * this.prefetch : async ? this.prefetch : 1;
      let next = start;
      for (let b = start; b < nb; b++) {
        while (next < nb && next < b + depth) {
          const p = this.produce(next, order, epoch, pool, shared?.map ?? null, async);
          p.catch(() => {}); // handled when awaited; avoids unhandled rejections for abandoned ones
          inflight.set(next, p);
          next++;
        }
        const p = inflight.get(b)!;
        inflight.delete(b);
        const batch = await p;
        if (this.generation === generation) this._position = b + 1;
        yield batch;
      }
      if (this.generation === generation) {
        this._epoch = epoch + 1;
        this._position = 0;
      }
    } finally {
      if (ownPool) await pool!.close();
    }
  }

  /** Ends the persistent worker threads (persistentWorkers); a later pass starts new ones. */
  async close(): Promise<void> {
    const p = this.pool;
    this.pool = null;
    await p?.close();
  }

  private async produce(
    b: number,
    order: Int32Array,
    epoch: number,
    pool: WorkerPool | null,
    sharedMap: ((i: number) => number) | null,
    async: boolean,
  ): Promise<Batch> {
    const indices = order.slice(b * this.batchSize, Math.min((b + 1) * this.batchSize, order.length));
    const ds = this.dataset;
    let built: BuiltBatch;
    if (pool === null) {
      if (async) {
        const samples = await Promise.all(Array.from(indices, (i) => (ds as AsyncDataset).load(i)));
        built = buildBatch((k) => samples[k]!, indices, this._seed, epoch, this.transform);
      } else {
        built = buildBatch((k) => (ds as Dataset).get(indices[k]!), indices, this._seed, epoch, this.transform);
      }
    } else if (sharedMap !== null) {
      const source = Int32Array.from(indices, sharedMap);
      built = await pool.run(b % pool.size, { seed: this._seed, epoch, indices, source }, [source.buffer]);
    } else {
      let samples: Sample[];
      if (async) samples = await Promise.all(Array.from(indices, (i) => (ds as AsyncDataset).load(i)));
      else samples = Array.from(indices, (i) => (ds as Dataset).get(i));
      const packed = packSamples(samples);
      built = await pool.run(b % pool.size, { seed: this._seed, epoch, indices, packed }, [packed.bytes.buffer as ArrayBuffer, packed.dims.buffer as ArrayBuffer, packed.labels.buffer as ArrayBuffer]);
    }
    return { x: new Tensor(built.shape, built.x), y: built.y, indices };
  }
}
