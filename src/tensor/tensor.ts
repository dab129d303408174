/**
 * Tensor: a float32 n-d array in row-major (C-contiguous) order, NCHW for images, as in PyTorch.
 *
 * A tensor either holds data (`data` is a Float32Array of `numel` elements) or is a *meta* tensor
 * (`data === null`): a shape without storage, used for shape inference (summaries, MAC counts)
 * without doing any arithmetic. Ops accept meta inputs and return meta outputs.
 *
 * Autograd lives in ./autograd.ts: a tensor produced by a differentiable op carries `gradFn`.
 */
import { ShapeError, UsageError } from '../errors.js';
import { Generator, defaultGenerator } from './rng.js';
import type { GradFn } from './autograd.js';
import type { KernelCrop, KernelCropInto } from '../kernels/kernels.js';
import { kernels } from '../kernels/registry.js';

/** What the float32 storage represents; 'int64' marks integer-valued buffers (num_batches_tracked). */
export type TensorDType = 'float32' | 'int64';

export type GradHook = (grad: Float32Array) => Float32Array | void;

let metaMode = 0;

/** Runs `fn` with every factory (zeros, empty, randn, ...) returning meta tensors (no storage). */
export function withMetaTensors<T>(fn: () => T): T {
  metaMode++;
  try {
    return fn();
  } finally {
    metaMode--;
  }
}

export function isMetaMode(): boolean {
  return metaMode > 0;
}

export function numelOf(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

export function checkShape(shape: readonly number[], what = 'shape'): void {
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) {
      throw new ShapeError(`${what} must be a list of non-negative integers, got [${shape.join(', ')}]`);
    }
  }
}

export function shapeStr(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}

let nextId = 1;

interface WindowForm {
  key: string;
  crop: KernelCrop;
  dst: Float32Array;
  version: number;
}
/** Kernel windows kept per tensor (one per input size a weight meets with dead taps; more is unusual). */
const MAX_WINDOWS = 4;

/* Storage of a tensor whose buffer backward({ recycleActivations: true }) took back. */
const RECYCLED = new Float32Array(0);

export class Tensor {
  readonly shape: readonly number[];
  private storage: Float32Array | null;
  dtype: TensorDType;
  /** Leaf tensors with requiresGrad accumulate `.grad` on backward(). */
  requiresGrad = false;
  grad: Float32Array | null = null;
  /** The op that produced this tensor (null for leaves and for tensors made under noGrad). */
  gradFn: GradFn | null = null;
  /** Bumped on every in-place change of `data`: lets a backend cache packed copies safely. */
  version = 0;
  /** Process-unique id (stable across in-place updates). */
  readonly id = nextId++;
  /** Keep .grad on a non-leaf tensor too (for diagnostics). */
  retainsGrad = false;
  hooks: GradHook[] = [];
  /** Called with this leaf once backward() has accumulated its `.grad` (registerPostAccumulateGradHook). */
  postAccumulateGradHooks: ((t: Tensor) => void)[] = [];
  /** Kernel windows of the values (kernelWindow()), each valid for the version it was made at. */
  private windows: WindowForm[] | null = null;

  constructor(shape: readonly number[], data: Float32Array | null, dtype: TensorDType = 'float32') {
    checkShape(shape);
    const n = numelOf(shape);
    if (data !== null && data.length !== n) {
      throw new ShapeError(`tensor data has ${data.length} elements but shape ${shapeStr(shape)} needs ${n}`);
    }
    this.shape = Object.freeze([...shape]);
    this.storage = data;
    this.dtype = dtype;
  }

  /** Storage, or null for a meta tensor. Throws once backward({ recycleActivations: true }) took it. */
  get data(): Float32Array | null {
    const d = this.storage;
    if (d === RECYCLED) {
      throw new ShapeError(
        `this ${shapeStr(this.shape)} tensor was an intermediate of a graph that backward({ recycleActivations: true }) ` +
          'recycled: its storage now belongs to later tensors (pass it in { keep: [...] } to read it after backward)',
      );
    }
    return d;
  }

  set data(d: Float32Array | null) {
    this.storage = d;
  }

  /** Whether backward({ recycleActivations: true }) took this tensor's storage. */
  get isRecycled(): boolean {
    return this.storage === RECYCLED;
  }

  get numel(): number {
    return numelOf(this.shape);
  }

  get ndim(): number {
    return this.shape.length;
  }

  get isMeta(): boolean {
    return this.storage === null;
  }

  get isLeaf(): boolean {
    return this.gradFn === null;
  }

  /** The storage; throws a clear error on a meta tensor. */
  get values(): Float32Array {
    if (this.data === null) throw new ShapeError('this is a meta tensor (shape only): it has no values');
    return this.data;
  }

  /** Marks this tensor as requiring gradients (a leaf such as a parameter). */
  requiresGrad_(flag = true): this {
    this.requiresGrad = flag;
    return this;
  }

  /** Asks backward() to keep the gradient of this (non-leaf) tensor in `.grad`. */
  retainGrad(): this {
    this.retainsGrad = true;
    return this;
  }

  /** Calls `hook(grad)` when this tensor's gradient is computed; a returned array replaces it. */
  registerHook(hook: GradHook): { remove(): void } {
    this.hooks.push(hook);
    return { remove: () => void (this.hooks = this.hooks.filter((h) => h !== hook)) };
  }

  /**
   * Calls `hook(this)` when backward() has accumulated this leaf's `.grad`: every op that reads the
   * leaf has run its backward by then, so the gradient is complete for that backward() and nothing
   * later in it reads the leaf's values (as torch's register_post_accumulate_grad_hook; optimizers'
   * fuseIntoBackward() updates parameters this way, while their gradients are still in cache).
   */
  registerPostAccumulateGradHook(hook: (t: Tensor) => void): { remove(): void } {
    if (typeof hook !== 'function') throw new UsageError('registerPostAccumulateGradHook: hook must be a function');
    if (this.gradFn !== null) throw new UsageError('post accumulate grad hooks cannot be registered on non-leaf tensors');
    if (!this.requiresGrad) throw new UsageError("cannot register a hook on a tensor that doesn't require gradient");
    this.postAccumulateGradHooks.push(hook);
    return { remove: () => void (this.postAccumulateGradHooks = this.postAccumulateGradHooks.filter((h) => h !== hook)) };
  }

  /**
   * This tensor's kernels cut to a window (`c`: `rows` kernels of skh x skw, the window's taps
   * kept), made by the backend's cropKernels and kept until `version` changes: a convolution's live
   * taps (ops/conv.ts), made once for its forward and backward input instead of read out of the whole
   * weights by each. Every in-place change made through this class, an optimizer's update and
   * loadStateDict bump the version; code that writes `.data` directly must bump it too (as for the
   * inference plan's folded weights).
   */
  kernelWindow(c: KernelCrop): Float32Array {
    const key = `${c.rows} ${c.skh}x${c.skw} ${c.win.ky0},${c.win.kx0} ${c.win.kh}x${c.win.kw}`;
    const forms = (this.windows ??= []);
    let f = forms.find((x) => x.key === key);
    if (f === undefined) {
      if (forms.length >= MAX_WINDOWS) forms.shift(); // the oldest
      f = { key, crop: c, dst: new Float32Array(c.rows * c.win.kh * c.win.kw), version: -1 };
      forms.push(f);
    }
    if (f.version !== this.version) {
      kernels().cropKernels(f.dst, this.values, c.rows, c.skh, c.skw, c.win);
      f.version = this.version;
    }
    return f.dst;
  }

  /** A kept kernel window, for an in-place update whose kernel writes it in the same pass (sgdStep). */
  keptWindow(): KernelCropInto | null {
    const f = this.windows?.[0];
    return f === undefined ? null : { ...f.crop, dst: f.dst };
  }

  /**
   * After an in-place update that bumped `version`: `written`, the kept window the update's kernel
   * wrote (keptWindow().dst), is current; the other kept windows are remade now, while the values
   * are in cache (an optimizer inside backward() then leaves the next forward nothing to cut).
   */
  windowsUpdated(written: Float32Array | null = null): void {
    if (this.windows === null) return;
    for (const f of this.windows) {
      if (f.version === this.version) continue;
      if (f.dst !== written) kernels().cropKernels(f.dst, this.values, f.crop.rows, f.crop.skh, f.crop.skw, f.crop.win);
      f.version = this.version;
    }
  }

  /** A new tensor sharing nothing with this one and outside the graph. */
  clone(): Tensor {
    return new Tensor(this.shape, this.data === null ? null : this.data.slice(), this.dtype);
  }

  /** Same storage, cut from the graph. */
  detach(): Tensor {
    return new Tensor(this.shape, this.data, this.dtype);
  }

  /** Copies `src` into this tensor's storage in place (shapes must match). */
  copy_(src: Tensor | Float32Array): this {
    const s = src instanceof Tensor ? src.data : src;
    if (this.data === null || s === null) return this;
    if (s.length !== this.data.length) {
      throw new ShapeError(`copy_: source has ${s.length} elements, destination ${shapeStr(this.shape)} has ${this.data.length}`);
    }
    this.data.set(s);
    this.version++;
    return this;
  }

  fill_(v: number): this {
    if (this.data !== null) {
      this.data.fill(v);
      this.version++;
    }
    return this;
  }

  /** Single value of a one-element tensor. */
  item(): number {
    if (this.numel !== 1) throw new ShapeError(`item() needs a one-element tensor, got shape ${shapeStr(this.shape)}`);
    return this.values[0]!;
  }

  /** Element at a multi-index (slow; for tests and debugging). */
  at(...index: number[]): number {
    if (index.length !== this.shape.length) throw new ShapeError(`at(): expected ${this.shape.length} indices`);
    let off = 0;
    for (let i = 0; i < index.length; i++) {
      const ix = index[i]!;
      if (ix < 0 || ix >= this.shape[i]!) throw new ShapeError(`at(): index ${ix} out of range for dim ${i} of size ${this.shape[i]}`);
      off = off * this.shape[i]! + ix;
    }
    return this.values[off]!;
  }

  toArray(): number[] {
    return Array.from(this.values);
  }

  toString(): string {
    return `Tensor(${shapeStr(this.shape)}${this.isMeta ? ', meta' : ''}${this.isRecycled ? ', recycled' : ''}${this.requiresGrad ? ', requiresGrad' : ''})`;
  }
}

// ---- factories ------------------------------------------------------------------------------

/** Below this many floats, a zeroed Float32Array costs no more than uninitialised memory. */
const UNINIT_MIN = 1024;

/**
 * A Float32Array of `n` elements whose contents are unspecified (not zero-filled), for buffers a
 * kernel overwrites completely (op outputs and input gradients: see the kernel contract in
 * src/kernels/kernels.ts). Skips `new Float32Array(n)`'s zero-fill, a full extra pass over every
 * activation and gradient of a training step. Each array owns its ArrayBuffer (byteOffset 0).
 */
export function uninitialized(n: number): Float32Array {
  if (n < UNINIT_MIN && poison === null) return new Float32Array(n);
  const free = recycled.get(n);
  let a = free?.pop();
  lastWanted.set(n, ++wants);
  if (a !== undefined) {
    recycledBytes -= a.byteLength;
  } else {
    // Node's memory, not the large-buffer allocator (./alloc.ts): activations and gradients come
    // and go every step, and that allocator's mappings are unmapped by Node-API finalizers, which
    // run only when the event loop turns: a synchronous training loop at batch 256 peaked 190 MB
    // higher with them
    const b = Buffer.allocUnsafeSlow(n * 4);
    a = new Float32Array(b.buffer, b.byteOffset, n);
  }
  if (poison !== null) a.fill(poison);
  if (tracking !== null) tracking.add(a);
  return a;
}

/* Buffers that backward() found dead (gradients, and with recycleActivations the graph's
 * intermediates), by length, for uninitialized() to hand out again: V8 counts every new ArrayBuffer
 * as external memory and collects garbage every ~64 MB of it (ResNet-20, batch 128: ~17 ms of a
 * ~190 ms step without reuse). Bounded: past the cap, the lengths asked for least recently go first,
 * so a change of shapes (a last short batch) neither pins memory nor starves the usual lengths. The
 * cap is 256 MB, or more where a graph gives back more (fitRecycleCap). */
const recycled = new Map<number, Float32Array[]>();
let recycledBytes = 0;
let recycleCapMin = 256 * 2 ** 20;
let recycleCapBytes = recycleCapMin;
/* setRecycleCap's fixed cap (tests), or null: the cap follows fitRecycleCap's demands */
let fixedCap: number | null = null;
/* the demands of the last two fitRecycleCap calls, in bytes */
let demands: [number, number] = [0, 0];
/* When each length was last asked for (a counter of uninitialized() calls). */
const lastWanted = new Map<number, number>();
let wants = 0;
/* While backward() runs: the arrays uninitialized() handed out, the only ones it may recycle (never
 * a forward activation, which user code or a retained graph may still hold). */
let tracking: Set<Float32Array> | null = null;

/** backward()'s bookkeeping: record uninitialized() arrays into `set` (null: stop); returns the set
 * recorded into before, to restore. */
export function trackAllocations(set: Set<Float32Array> | null): Set<Float32Array> | null {
  const before = tracking;
  tracking = set;
  return before;
}

/** Fixes the most bytes held for reuse (tests; null: the cap follows the graphs again); returns the
 * previous setting. Held buffers beyond it go. */
export function setRecycleCap(bytes: number | null): number | null {
  const before = fixedCap;
  fixedCap = bytes;
  applyRecycleCap();
  return before;
}

/**
 * backward()'s recycleActivations, before it gives a graph's buffers back: `bytes` is their size,
 * what the next step of that graph will ask for again. The cap becomes the largest of 256 MB and 1.5x
 * the last two such demands (the half for gradients and for buffers of other lengths), so that a
 * step whose activations pass 256 MB keeps them for the next step: ResNet-20 at batch 256 gives back
 * 356 MB, of which a fixed 256 MB cap had kept 138 (every step then allocated the rest afresh, and
 * the dropped buffers waited for the garbage collector: peak RSS 33-100 MB above the line of batches
 * 32-128). Two demands, so that one short last batch of an epoch does not shrink it; a lasting change
 * of shapes does, and the stalest lengths go.
 */
export function fitRecycleCap(bytes: number): void {
  demands = [demands[1], bytes];
  applyRecycleCap();
}

/** Sets the smallest cap fitRecycleCap gives (256 MB; tests); returns the previous one. */
export function setRecycleCapFloor(bytes: number): number {
  const before = recycleCapMin;
  recycleCapMin = bytes;
  applyRecycleCap();
  return before;
}

function applyRecycleCap(): void {
  recycleCapBytes = fixedCap ?? Math.max(recycleCapMin, 1.5 * demands[0], 1.5 * demands[1]);
  while (recycledBytes > recycleCapBytes && evictStalest(-1));
}

/** Floats held for reuse now (for tests). */
export function recycledFloats(): number {
  return recycledBytes / 4;
}

/** Gives a dead buffer (one uninitialized() made, nobody holds) back for reuse. */
export function recycle(a: Float32Array): void {
  if (a.length < UNINIT_MIN || a.byteOffset !== 0 || a.byteLength !== a.buffer.byteLength) return;
  const list = recycled.get(a.length);
  if (list?.includes(a)) return; // twice would hand one buffer to two tensors
  while (recycledBytes + a.byteLength > recycleCapBytes) {
    if (!evictStalest(a.length)) return;
  }
  if (list) list.push(a);
  else recycled.set(a.length, [a]);
  recycledBytes += a.byteLength;
}

/** Drops the held buffers of the length asked for least recently (not `keep`); false if none. */
function evictStalest(keep: number): boolean {
  let victim = -1;
  let oldest = Infinity;
  for (const [n, list] of recycled) {
    const t = lastWanted.get(n) ?? 0;
    if (n !== keep && list.length > 0 && t < oldest) {
      oldest = t;
      victim = n;
    }
  }
  if (victim < 0) return false;
  for (const b of recycled.get(victim)!) recycledBytes -= b.byteLength;
  recycled.delete(victim);
  return true;
}

/**
 * Gives the tensors' gradient buffers back to the allocator and sets `.grad` to null (what
 * `zeroGrad()` does, plus reuse): for a training loop that holds every reference to those gradients,
 * as the trainer does between two steps. A leaf takes its gradient from backward() without a copy, so
 * without this every step leaves a model's worth of gradients to the garbage collector.
 */
export function recycleGrads(params: readonly Tensor[]): void {
  for (const p of params) {
    if (p.grad !== null) recycle(p.grad);
    p.grad = null;
  }
}

/** Marks `t`'s storage as taken (reading it throws from now on); backward's recycleActivations. */
export function markRecycled(t: Tensor): void {
  t.data = RECYCLED;
}

let poison: number | null = null;

/**
 * Debugging aid: with a number (NaN is the useful one), every `uninitialized` buffer is filled with
 * it, so an op that leaves part of its output unwritten shows up as NaN downstream instead of as
 * stale memory that happens to be harmless. `null` (the default) turns it off.
 */
export function setUninitializedFill(value: number | null): void {
  poison = value;
}

function storage(shape: readonly number[]): Float32Array | null {
  checkShape(shape);
  return metaMode > 0 ? null : new Float32Array(numelOf(shape));
}

/** Uninitialised (zero-filled) tensor; meta under withMetaTensors. */
export function empty(shape: readonly number[], dtype: TensorDType = 'float32'): Tensor {
  return new Tensor(shape, storage(shape), dtype);
}

export function zeros(shape: readonly number[], dtype: TensorDType = 'float32'): Tensor {
  return empty(shape, dtype);
}

export function ones(shape: readonly number[]): Tensor {
  return full(shape, 1);
}

export function full(shape: readonly number[], value: number): Tensor {
  const t = empty(shape);
  t.data?.fill(value);
  return t;
}

/** A tensor with no storage, whatever the mode. */
export function meta(shape: readonly number[], dtype: TensorDType = 'float32'): Tensor {
  return new Tensor(shape, null, dtype);
}

/** Wraps (does not copy) a Float32Array, or copies a number array. */
export function tensor(values: Float32Array | readonly number[], shape?: readonly number[]): Tensor {
  const data = values instanceof Float32Array ? values : Float32Array.from(values);
  return new Tensor(shape ?? [data.length], data);
}

export function randn(shape: readonly number[], gen: Generator = defaultGenerator): Tensor {
  const t = empty(shape);
  if (t.data) for (let i = 0; i < t.data.length; i++) t.data[i] = gen.normal();
  return t;
}

export function rand(shape: readonly number[], gen: Generator = defaultGenerator): Tensor {
  const t = empty(shape);
  if (t.data) for (let i = 0; i < t.data.length; i++) t.data[i] = gen.random();
  return t;
}
