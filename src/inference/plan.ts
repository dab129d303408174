/**
 * A compiled inference plan for a ResNet: batch norm folded into the convolutions, each conv
 * fused with its bias, the residual add and the ReLU (one pass over the output instead of four),
 * and activation buffers recycled from a pool so steady-state runs allocate nothing but the
 * returned logits.
 *
 * On the native backend with AVX-512 the activations between layers are blocked (NCHW16c) when
 * every layer allows it at the input's size (see InferenceOptions.layout); input and output stay
 * NCHW.
 *
 * The plan reads the model's weights when it is compiled and re-folds them automatically when
 * any parameter or buffer has changed since (Tensor.version), so it never runs stale weights.
 * It does not record gradients; use the model itself for training.
 */
import { zeroedFloats } from '../tensor/alloc.js';
import { ShapeError, UsageError } from '../errors.js';
import type { Conv2dParams, Kernels } from '../kernels/kernels.js';
import { kernels, nativeBackend } from '../kernels/registry.js';
import type { NativeKernels, PackedConvWeights } from '../backends/native/index.js';
import { BatchNorm2d, Conv2d, Sequential } from '../nn/layers.js';
import { BasicBlock, Bottleneck, PlainBasicBlock, PlainBottleneck, ZeroPadShortcut } from '../models/blocks.js';
import type { ResNet } from '../models/resnet.js';
import { convOutSize } from '../ops/conv.js';
import { maxPool2dParams } from '../ops/pool.js';
import { Tensor, meta, shapeStr } from '../tensor/tensor.js';

/** A convolution with its batch norm folded in: y = conv(x, w') + b'. The bias b' is computed when
 * the plan folds; the weights w' only when a layer first runs, and on the native backend they are
 * then packed into the layout the kernel reads (it depends on the input size: a different size can
 * pick another kernel) and the plain copy is dropped, so that at most one layer's plain copy exists
 * beside the packed weights (ResNet-50's are 100 MB). A later input size that wants another layout
 * repacks from the packed copy. */
interface FoldedConv {
  conv: Conv2d;
  /** per output channel: the batch norm's scale (null: no batch norm) */
  scale: Float64Array | null;
  w: Float32Array | null;
  b: Float32Array;
  packed: PackedConvWeights | null;
  /** the input (n, h, w) the packing's layout was last confirmed for: the layout depends only on
   * the geometry, so repeated runs at one input size skip asking the addon */
  packedFor?: string;
  /** the packing is the one conv2dBlocked reads (pixel-row panels or Winograd transforms; any input
   * size) */
  packedBlocked?: boolean;
}

type Shape4 = [number, number, number, number];

/** Recycles Float32Arrays by a key (their length, or the blocked activations' shape); new ones are
 * zero-initialised. */
class BufferPool<K> {
  private free = new Map<K, Float32Array[]>();

  acquire(key: K, n: number): Float32Array {
    return this.free.get(key)?.pop() ?? zeroedFloats(n);
  }

  release(key: K, b: Float32Array): void {
    const list = this.free.get(key);
    if (list) list.push(b);
    else this.free.set(key, [b]);
  }
}

interface Act {
  data: Float32Array;
  shape: Shape4;
}

function foldConv(conv: Conv2d, bn: BatchNorm2d | null): FoldedConv {
  const cout = conv.outChannels;
  const b = new Float32Array(cout);
  if (conv.bias) b.set(conv.bias.values);
  if (!bn) return { conv, scale: null, w: null, b, packed: null };
  if (!bn.runningMean || !bn.runningVar) throw new ShapeError('inference plan: batch norm without running statistics cannot be folded');
  const rm = bn.runningMean.values;
  const rv = bn.runningVar.values;
  const scale = new Float64Array(cout);
  for (let c = 0; c < cout; c++) {
    scale[c] = (bn.weight ? bn.weight.values[c]! : 1) / Math.sqrt(rv[c]! + bn.eps);
    b[c] = (b[c]! - rm[c]!) * scale[c]! + (bn.bias ? bn.bias.values[c]! : 0);
  }
  return { conv, scale, w: null, b, packed: null };
}

/** The plain folded weights w' = w * scale[co]. */
function foldedWeights(f: FoldedConv): Float32Array {
  const w = new Float32Array(f.conv.weight.values);
  if (f.scale) {
    const per = w.length / f.scale.length;
    for (let c = 0; c < f.scale.length; c++) for (let i = 0; i < per; i++) w[c * per + i]! *= f.scale[c]!;
  }
  return w;
}

/** Replaces f's packing by pack(plain folded weights), the plain ones taken from wherever they are
 * (the unpacked copy, the old packing, or folded afresh) and then dropped. */
function repack(nat: NativeKernels, f: FoldedConv, p: Conv2dParams, blocked: boolean, winograd = false): PackedConvWeights {
  const w = f.w ?? (f.packed ? nat.unpackConvWeights(f.packed, p) : foldedWeights(f));
  f.packed = blocked ? nat.packConvWeightsBlocked(w, p, winograd) : nat.packConvWeights(w, p);
  f.packedBlocked = blocked;
  f.w = null;
  return f.packed;
}

/** The folded weights packed for geometry p (packing or repacking them when needed). */
function packedFor(nat: NativeKernels, f: FoldedConv, p: Conv2dParams): PackedConvWeights {
  const key = `${p.n},${p.h},${p.w}`;
  if (f.packed && f.packedFor === key) return f.packed;
  const layout = nat.convPackLayout(p);
  f.packedFor = key;
  return f.packed && f.packed.layout === layout ? f.packed : repack(nat, f, p, false);
}

/** The folded weights packed for conv2dBlocked (packing them, or repacking an NCHW-path packing). */
function packedBlocked(nat: NativeKernels, f: FoldedConv, p: Conv2dParams, winograd: boolean): PackedConvWeights {
  if (f.packed && f.packedBlocked) return f.packed;
  f.packedFor = undefined;
  return repack(nat, f, p, true, winograd);
}

function convParams(c: Conv2d, x: Shape4): Conv2dParams {
  const [n, cIn, h, w] = x;
  const [kh, kw] = c.kernelSize;
  const [sh, sw] = c.stride;
  const [ph, pw] = c.padding;
  const [dh, dw] = c.dilation;
  if (cIn !== c.inChannels) throw new ShapeError(`inference plan: expected ${c.inChannels} input channels, got input ${shapeStr(x)}`);
  const oh = convOutSize(h, kh, sh, ph, dh);
  const ow = convOutSize(w, kw, sw, pw, dw);
  if (oh < 1 || ow < 1) throw new ShapeError(`inference plan: input ${shapeStr(x)} is too small for a ${kh}x${kw} convolution`);
  return { n, cIn, h, w, cOut: c.outChannels, kh, kw, sh, sw, ph, pw, dh, dw, groups: c.groups, oh, ow };
}

/** Options of compileInference. */
export interface InferenceOptions {
  /** Activation layout between layers on the native backend: 'auto' (default) runs blocked
   * NCHW16c activations (16 channels of a pixel side by side) when the CPU has AVX-512 and every
   * layer allows it at the input size (torchvision ResNets at 224x224: map widths 112, 56, 28, 14, 7),
   * else NCHW; 'nchw' always NCHW. Inputs and outputs are NCHW either way; the results agree to
   * float rounding. */
  layout?: 'auto' | 'nchw';
  /** On blocked activations, run 3x3 stride-1 convolutions as Winograd F(4x4, 3x3) (both channel
   * counts <= 128) or F(2x2, 3x3) (larger layers): 4x / 2.25x fewer multiplies, 1.5-2x faster on
   * those layers (docs/PERFORMANCE.md). Results differ from the direct convolution by rounding: up
   * to about 1.5e-5 (F(4x4)) / 1e-6 (F(2x2)) of a layer's largest output magnitude. Default true;
   * false runs every layer of the plan directly. */
  winograd?: boolean;
}

export class InferencePlan {
  private folded: FoldedConv[] = [];
  /** per input shape: whether every layer runs on blocked activations (cleared on refold) */
  private blockedFits = new Map<string, boolean>();
  private versions = 0;
  /** the native backend the weights were packed for (null: plain weights for any backend) */
  private packedFor: NativeKernels | null = null;
  private readonly pool = new BufferPool<number>(); // by length
  private readonly blockedPool = new BufferPool<string>();

  constructor(
    readonly model: ResNet,
    private readonly options: InferenceOptions = {},
  ) {
    if (options.layout !== undefined && options.layout !== 'auto' && options.layout !== 'nchw') {
      throw new UsageError(`inference plan: layout must be 'auto' or 'nchw', got ${String(options.layout)}`);
    }
    if (options.winograd !== undefined && typeof options.winograd !== 'boolean') {
      throw new UsageError(`inference plan: winograd must be true or false, got ${String(options.winograd)}`);
    }
    this.refold();
  }

  private get winograd(): boolean {
    return this.options.winograd ?? true;
  }

  private weightVersion(): number {
    return this.model.stateVersion();
  }

  /** The native backend when it is the active one: weights are then packed for it. */
  private static packTarget(): NativeKernels | null {
    const nat = nativeBackend();
    return nat && kernels() === nat ? nat : null;
  }

  /** Re-folds batch norm into the conv weights (done automatically when weights change or the
   * backend is switched). */
  refold(): void {
    const convs: FoldedConv[] = [];
    const m = this.model;
    const nat = InferencePlan.packTarget();
    const fold = (c: Conv2d, bn: BatchNorm2d | null): FoldedConv => foldConv(c, bn);
    convs.push(fold(m.conv1, m.bn1));
    for (const stage of m.stages) {
      for (const block of stage.layers) {
        if (block instanceof Bottleneck) {
          convs.push(fold(block.conv1, block.bn1), fold(block.conv2, block.bn2), fold(block.conv3, block.bn3));
        } else if (block instanceof BasicBlock) {
          convs.push(fold(block.conv1, block.bn1), fold(block.conv2, block.bn2));
        } else {
          throw new ShapeError(`inference plan: unsupported block ${block.typeName}`);
        }
        const ds = (block as BasicBlock | Bottleneck).downsample;
        if (ds instanceof Sequential) convs.push(fold(ds.at(0) as Conv2d, ds.at(1) as BatchNorm2d));
      }
    }
    this.folded = convs;
    this.blockedFits.clear();
    this.packedFor = nat;
    this.versions = this.weightVersion();
  }

  /** Logits for a batch x [N, C, H, W] (eval-mode semantics, no graph). */
  run(x: Tensor): Tensor {
    if (x.ndim !== 4) throw new ShapeError(`inference plan: input must be 4-D (N, C, H, W), got ${shapeStr(x.shape)}`);
    if (x.isMeta) return meta([x.shape[0]!, this.model.fc.outFeatures]);
    const feats = this.features(x);
    const [n, c] = feats.shape;
    const fc = this.model.fc;
    const y = new Float32Array(n * fc.outFeatures);
    const k = kernels();
    if (fc.bias) for (let i = 0; i < n; i++) y.set(fc.bias.values, i * fc.outFeatures);
    k.gemm(y, feats.data, fc.weight.values, n, fc.outFeatures, c, false, true, 1, fc.bias ? 1 : 0);
    this.release(feats.data);
    return new Tensor([n, fc.outFeatures], y);
  }

  /** Pooled features [N, numFeatures] (the input of fc). The returned buffer belongs to the pool
   * unless `copy` is set. */
  features(x: Tensor): { data: Float32Array; shape: [number, number] } {
    if (this.weightVersion() !== this.versions || InferencePlan.packTarget() !== this.packedFor) this.refold();
    const k = kernels();
    if (this.packedFor && k === this.packedFor && this.useBlocked(this.packedFor, x.shape as Shape4)) return this.featuresBlocked(this.packedFor, x);
    const m = this.model;
    let i = 0;
    const next = (): FoldedConv => this.folded[i++]!;
    // stem (from then on every activation is a pooled buffer of the plan's)
    let a = this.conv(k, next(), { data: x.values, shape: x.shape as Shape4 }, null, true);
    if (m.maxpool) {
      const p = maxPool2dParams(meta(a.shape), m.maxpool.options);
      const out = this.acquire(p.n * p.c * p.oh * p.ow);
      if (this.packedFor && k === this.packedFor) {
        this.packedFor.maxPool2dNoIndices(out, a.data, p);
      } else {
        // The kernel also writes argmax indices (for backward); a pooled buffer viewed as int32 holds them.
        const scratch = this.acquire(out.length);
        k.maxPool2d(out, new Int32Array(scratch.buffer, scratch.byteOffset, scratch.length), a.data, p);
        this.release(scratch);
      }
      this.release(a.data);
      a = { data: out, shape: [p.n, p.c, p.oh, p.ow] };
    }
    a = this.blocks(a, next, (f, x, res, relu, inPlace) => this.conv(k, f, x, res, relu, inPlace), (act) => this.release(act.data));
    // global average pool to [N, C]
    const [n, c, hh, ww] = a.shape;
    const pooled = this.acquire(n * c);
    k.adaptiveAvgPool2d(pooled, a.data, { n, c, h: hh, w: ww, oh: 1, ow: 1 });
    this.release(a.data);
    return { data: pooled, shape: [n, c] };
  }

  /** The residual stages from `a` (a buffer of the plan's), each conv through `conv`: a block's
   * shortcut first (its conv comes after the block's convs in `folded`), then its convs, the last of
   * which adds the shortcut in place, into the shortcut's own buffer (one stream less through memory
   * than reading it and writing a new buffer); buffers go back to the pool as soon as they are dead. */
  private blocks(
    a: Act,
    next: () => FoldedConv,
    conv: (f: FoldedConv, x: Act, residual: Act | null, relu: boolean, inPlace: boolean) => Act,
    release: (act: Act) => void,
  ): Act {
    for (const stage of this.model.stages) {
      for (const block of stage.layers) {
        const plain = block instanceof PlainBasicBlock || block instanceof PlainBottleneck;
        const b = block as BasicBlock | Bottleneck;
        const nConvs = b instanceof Bottleneck ? 3 : 2;
        const mids: FoldedConv[] = [];
        for (let c = 0; c < nConvs; c++) mids.push(next());
        let shortcut: Act | null = null;
        if (!plain) {
          if (b.downsample instanceof Sequential) shortcut = conv(next(), a, null, false, false);
          else if (b.downsample instanceof ZeroPadShortcut) shortcut = this.zeroPad(a, b.downsample);
          else shortcut = a;
        }
        let h: Act = a;
        for (let c = 0; c < nConvs; c++) {
          const res = c === nConvs - 1 ? shortcut : null;
          const out = conv(mids[c]!, h, res, true, res !== null);
          if (h !== a) release(h);
          h = out;
        }
        if (shortcut && shortcut !== a && shortcut.data !== h.data) release(shortcut);
        if (a.data !== h.data) release(a);
        a = h;
      }
    }
    return a;
  }

  /** Whether this input shape runs on blocked activations: every conv of the walk takes them (a
   * shape-only walk, cached per shape), max pool and the head get whole 16-channel blocks, and no
   * block has a zero-padding shortcut. */
  private useBlocked(nat: NativeKernels, shape: Shape4): boolean {
    if (this.options.layout === 'nchw') return false;
    const key = shape.join(',');
    let fits = this.blockedFits.get(key);
    if (fits === undefined) {
      fits = this.walkFits(nat, shape);
      this.blockedFits.set(key, fits);
    }
    return fits;
  }

  private walkFits(nat: NativeKernels, shape: Shape4): boolean {
    const m = this.model;
    let i = 0;
    const conv = (s: Shape4 | null, xBlocked: boolean): Shape4 | null => {
      if (!s) return null;
      const p = convParams(this.folded[i++]!.conv, s);
      return nat.convBlockedOk(p, xBlocked, this.winograd) ? [p.n, p.cOut, p.oh, p.ow] : null;
    };
    let a = conv(shape, false);
    if (a && m.maxpool) {
      const p = maxPool2dParams(meta(a), m.maxpool.options);
      a = p.c % 16 === 0 ? [p.n, p.c, p.oh, p.ow] : null;
    }
    for (const stage of m.stages) {
      for (const block of stage.layers) {
        const b = block as BasicBlock | Bottleneck;
        let h = a;
        for (let c = 0; c < (b instanceof Bottleneck ? 3 : 2); c++) h = conv(h, true);
        if (b.downsample instanceof ZeroPadShortcut) return false;
        if (b.downsample instanceof Sequential && !conv(a, true)) return false;
        a = h;
      }
    }
    return a !== null;
  }

  /** features() on blocked activations (NCHW16c): the stem reads the NCHW input, every later layer
   * blocked buffers, and the global average pool returns [N, C]. Same walk as features(). */
  private featuresBlocked(nat: NativeKernels, x: Tensor): { data: Float32Array; shape: [number, number] } {
    const m = this.model;
    let i = 0;
    const next = (): FoldedConv => this.folded[i++]!;
    let a = this.convBlocked(nat, next(), { data: x.values, shape: x.shape as Shape4 }, false, null, true, false);
    if (m.maxpool) {
      const p = maxPool2dParams(meta(a.shape), m.maxpool.options);
      const shape: Shape4 = [p.n, p.c, p.oh, p.ow];
      const out = this.acquireBlocked(shape);
      nat.maxPool2dBlocked(out, a.data, p);
      this.releaseBlocked(a);
      a = { data: out, shape };
    }
    a = this.blocks(a, next, (f, x, res, relu, inPlace) => this.convBlocked(nat, f, x, true, res, relu, inPlace), (act) => this.releaseBlocked(act));
    const [n, c, hh, ww] = a.shape;
    const pooled = this.acquire(n * c);
    nat.avgPoolGlobalBlocked(pooled, a.data, n, c, hh, ww);
    this.releaseBlocked(a);
    return { data: pooled, shape: [n, c] };
  }

  private convBlocked(nat: NativeKernels, f: FoldedConv, x: Act, xBlocked: boolean, residual: Act | null, relu: boolean, inPlace: boolean): Act {
    const p = convParams(f.conv, x.shape);
    const shape: Shape4 = [p.n, p.cOut, p.oh, p.ow];
    const y = inPlace && residual ? residual.data : this.acquireBlocked(shape);
    nat.conv2dBlocked(y, x.data, f.b, residual ? residual.data : null, relu, p, packedBlocked(nat, f, p, this.winograd), xBlocked);
    return { data: y, shape };
  }

  private acquire(n: number): Float32Array {
    return this.pool.acquire(n, n);
  }

  private release(b: Float32Array): void {
    this.pool.release(b.length, b);
  }

  /** A blocked buffer for activations of `shape` ([n][c/16][h+2][w+2][16]): pooled per shape, not per
   * length, because the kernels write only the interior and the zero border (padding for the next
   * convolution) must stay where this shape has it. */
  private acquireBlocked(shape: Shape4): Float32Array {
    const [n, c, h, w] = shape;
    return this.blockedPool.acquire(shape.join(','), n * c * (h + 2) * (w + 2));
  }

  private releaseBlocked(act: Act): void {
    this.blockedPool.release(act.shape.join(','), act.data);
  }

  /** conv + bias (+ residual) (+ relu); with `inPlace`, the result overwrites the residual's buffer. */
  private conv(k: Kernels, f: FoldedConv, x: Act, residual: Act | null, relu: boolean, inPlace = false): Act {
    const p = convParams(f.conv, x.shape);
    const n = p.n * p.cOut * p.oh * p.ow;
    if (residual && residual.data.length !== n) {
      throw new ShapeError(`inference plan: residual ${shapeStr(residual.shape)} does not match the block output [${p.n}, ${p.cOut}, ${p.oh}, ${p.ow}]`);
    }
    if (this.packedFor && k === this.packedFor) {
      const packed = packedFor(this.packedFor, f, p);
      // the fused kernel reads each residual element before it writes that output element
      const y = inPlace && residual ? residual.data : this.acquire(n);
      this.packedFor.conv2dFused(y, x.data, null, f.b, residual ? residual.data : null, relu, p, packed);
      return { data: y, shape: [p.n, p.cOut, p.oh, p.ow] };
    }
    const y = this.acquire(n);
    {
      f.w ??= foldedWeights(f);
      k.conv2d(y, x.data, f.w, f.b, p);
      if (residual && relu) k.addRelu(y, y, residual.data);
      else if (residual) k.add(y, y, residual.data);
      else if (relu) k.relu(y, y);
    }
    if (inPlace && residual) {
      residual.data.set(y);
      this.release(y);
      return { data: residual.data, shape: [p.n, p.cOut, p.oh, p.ow] };
    }
    return { data: y, shape: [p.n, p.cOut, p.oh, p.ow] };
  }

  private zeroPad(x: Act, s: ZeroPadShortcut): Act {
    const [n, cIn, h, w] = x.shape;
    const oh = Math.ceil(h / s.stride);
    const ow = Math.ceil(w / s.stride);
    const y = this.acquire(n * s.outPlanes * oh * ow);
    kernels().zeroPadSubsample(y, x.data, { n, cIn, h, w, cOut: s.outPlanes, stride: s.stride }, false);
    return { data: y, shape: [n, s.outPlanes, oh, ow] };
  }
}

/** Compiles `model` for fast inference (see InferencePlan). */
export function compileInference(model: ResNet, options: InferenceOptions = {}): InferencePlan {
  return new InferencePlan(model, options);
}
