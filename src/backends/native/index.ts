/**
 * The native backend: the kernel interface implemented by the C addon (SIMD, multi-threaded).
 * This file only adapts argument shapes (geometry structs → Int32Arrays); the work is in C.
 */
import { zeroedFloats } from '../../tensor/alloc.js';
import type { AdaptivePoolParams, BatchNormParams, Conv2dParams, Kernels, Pool2dParams, SgdParams } from '../../kernels/kernels.js';
import type { NativeBinding } from './binding.js';

type F32 = Float32Array;

/** Conv weights packed once into the layout the forward kernel reads (see packConvWeights). */
export interface PackedConvWeights {
  readonly data: F32;
  /** the layout they were packed in; it depends on the whole geometry (the kernel that a geometry
   * gets decides it), and conv2dFused checks it: a mismatch falls back to unpacked weights */
  readonly layout: number;
}

/** Extra capabilities of the native backend, for the inference path. */
export interface NativeKernels extends Kernels {
  /** y = conv(x, w) + bias (+ residual) (then relu); y may be the residual buffer itself. With
   * `packed` the weights are read from it (w may then be null). */
  conv2dFused(y: F32, x: F32, w: F32 | null, bias: F32 | null, residual: F32 | null, relu: boolean, p: Conv2dParams, packed?: PackedConvWeights | null): void;
  /** The layout packConvWeights would use for this geometry: when it differs from a packing's
   * layout, repack (unpackConvWeights, then packConvWeights). */
  convPackLayout(p: Conv2dParams): number;
  /** Packs conv weights [cOut, cIn/groups, kh, kw] once for this geometry, so that conv2dFused does
   * not repack them on every call. */
  packConvWeights(w: F32, p: Conv2dParams): PackedConvWeights;
  /** The plain weights back from a packing made for the same cIn, cOut, kh, kw and groups. */
  unpackConvWeights(packed: PackedConvWeights, p: Conv2dParams): F32;
  /** Max pool without the argmax indices that backward needs (inference). */
  maxPool2dNoIndices(y: F32, x: F32, p: Pool2dParams): void;
  /** Blocked activations (NCHW16c with a zero border: [n][c/16][h+2][w+2][16]; AVX-512), the
   * inference plan's layout when every layer allows it: whether conv2dBlocked takes geometry p with
   * blocked (or NCHW) input. Blocked outputs are written in their interior only: the border stays
   * as the caller made it (zero). `winograd` (default true): 3x3 stride-1 layers with blocked input
   * run as Winograd F(4x4, 3x3) or F(2x2, 3x3) (any map size; see packConvWeightsBlocked). */
  convBlockedOk(p: Conv2dParams, xBlocked: boolean, winograd?: boolean): boolean;
  /** Packs weights [cOut, cIn, kh, kw] for conv2dBlocked: with `winograd` (default true) 3x3
   * stride-1 padding-1 layers (whole 16-channel blocks) are packed for Winograd F(4x4, 3x3) when
   * both channel counts are <= 128, else F(2x2, 3x3): 4x / 2.25x fewer multiplies, results within
   * about 1.5e-5 / 1e-6 of the output's largest magnitude of the exact convolution; other layers
   * for the direct pixel-row kernels. */
  packConvWeightsBlocked(w: F32, p: Conv2dParams, winograd?: boolean): PackedConvWeights;
  /** y (blocked) = conv(x) + bias (+ residual, blocked; may be y itself) (then relu); x blocked or NCHW. */
  conv2dBlocked(y: F32, x: F32, bias: F32 | null, residual: F32 | null, relu: boolean, p: Conv2dParams, packed: PackedConvWeights, xBlocked: boolean): void;
  maxPool2dBlocked(y: F32, x: F32, p: Pool2dParams): void;
  /** Global average pool of blocked activations (h x w maps) to [n, c]. */
  avgPoolGlobalBlocked(y: F32, x: F32, n: number, c: number, h: number, w: number): void;
  setThreads(n: number): void;
  getThreads(): number;
  /** The threads' cache-line round trip in ns (NativeBinding.handoffNs). */
  handoffNs(): number;
  /** The L2 size the kernels size their blocking by, in bytes (NativeBinding.l2Bytes). */
  readonly l2Bytes: number;
  readonly isa: string;
}

// Calls are synchronous, so one geometry buffer each can be reused.
const convGeom = new Int32Array(16);
const poolGeom = new Int32Array(14);

function conv(p: Conv2dParams): Int32Array {
  convGeom[0] = p.n; convGeom[1] = p.cIn; convGeom[2] = p.h; convGeom[3] = p.w;
  convGeom[4] = p.cOut; convGeom[5] = p.kh; convGeom[6] = p.kw; convGeom[7] = p.sh;
  convGeom[8] = p.sw; convGeom[9] = p.ph; convGeom[10] = p.pw; convGeom[11] = p.dh;
  convGeom[12] = p.dw; convGeom[13] = p.groups; convGeom[14] = p.oh; convGeom[15] = p.ow;
  return convGeom;
}

function pool(p: Pool2dParams): Int32Array {
  poolGeom[0] = p.n; poolGeom[1] = p.c; poolGeom[2] = p.h; poolGeom[3] = p.w;
  poolGeom[4] = p.kh; poolGeom[5] = p.kw; poolGeom[6] = p.sh; poolGeom[7] = p.sw;
  poolGeom[8] = p.ph; poolGeom[9] = p.pw; poolGeom[10] = p.dh; poolGeom[11] = p.dw;
  poolGeom[12] = p.oh; poolGeom[13] = p.ow;
  return poolGeom;
}

export function nativeKernels(b: NativeBinding): NativeKernels {
  return {
    name: 'native',
    isa: b.isa(),
    setThreads: (n) => b.setThreads(n),
    getThreads: () => b.getThreads(),
    handoffNs: () => b.handoffNs(),
    l2Bytes: b.l2Bytes(),
    conv2d: (y, x, w, bias, p, pre = null) => (pre ? b.conv2dPre(y, x, w, bias, pre.scale, pre.shift, conv(p)) : b.conv2d(y, x, w, bias, null, false, conv(p))),
    conv2dFused: (y, x, w, bias, residual, relu, p, packed) =>
      b.conv2d(y, x, w, bias, residual, relu, conv(p), packed ? packed.data : null, packed ? packed.layout : 0),
    convPackLayout: (p) => b.convPackLayout(conv(p)),
    packConvWeights: (w, p) => {
      const data = zeroedFloats(b.convPackedLength(conv(p)));
      return { data, layout: b.convPackWeights(data, w, conv(p)) };
    },
    unpackConvWeights: (packed, p) => {
      const w = new Float32Array(p.cOut * (p.cIn / p.groups) * p.kh * p.kw);
      b.convUnpackWeights(w, packed.data, packed.layout, conv(p));
      return w;
    },
    convBlockedOk: (p, xBlocked, winograd = true) => b.convBlockedOk(conv(p), xBlocked, winograd),
    packConvWeightsBlocked: (w, p, winograd = true) => {
      const data = zeroedFloats(b.convPackedLength(conv(p), true, winograd));
      return { data, layout: b.convPackWeights(data, w, conv(p), true, winograd) };
    },
    conv2dBlocked: (y, x, bias, residual, relu, p, packed, xBlocked) =>
      b.conv2dBlocked(y, x, bias, residual, relu, conv(p), packed.data, packed.layout, xBlocked),
    maxPool2dBlocked: (y, x, p) => b.maxPool2dBlocked(y, x, pool(p)),
    avgPoolGlobalBlocked: (y, x, n, c, h, w) => b.avgPoolGlobalBlocked(y, x, n, c, h, w),
    conv2dBackwardInput: (dx, dy, w, p, addend) => b.conv2dBackwardInput(dx, dy, w, conv(p), addend ?? null),
    conv2dBackwardWeight: (dw, x, dy, p, pre = null) => (pre ? b.conv2dBackwardWeight(dw, x, dy, conv(p), pre.scale, pre.shift) : b.conv2dBackwardWeight(dw, x, dy, conv(p))),
    conv2dReadsBnRelu: (p) => b.conv2dReadsPre(conv(p)),
    batchNormStats: (mean, invStd, varU, scale, shift, x, g, beta, p) => b.batchNormStats(mean, invStd, varU, scale, shift, x, g, beta, p.n, p.c, p.hw, p.eps),
    batchNormTrain: (y, mean, invStd, varU, x, g, beta, p: BatchNormParams, relu = false, residual = null, reluBits = null) => b.batchNormTrain(y, mean, invStd, varU, x, g, beta, p.n, p.c, p.hw, p.eps, relu, residual, reluBits),
    batchNormEval: (y, x, rm, rv, g, beta, p, relu = false) => b.batchNormEval(y, x, rm, rv, g, beta, p.n, p.c, p.hw, p.eps, relu),
    batchNormBackward: (dx, dg, db, dy, x, mean, invStd, g, training, p, reluY = null, beta, maskedOut = null, reluBits = null) => b.batchNormBackward(dx, dg, db, dy, x, mean, invStd, g, training, p.n, p.c, p.hw, reluY === 'recompute' ? true : reluY, beta, maskedOut, reluBits),
    relu: (y, x) => b.elementwise(0, y, x),
    reluBackward: (dx, dy, y) => b.elementwise(1, dx, dy, y),
    add: (y, a, c) => b.elementwise(2, y, a, c),
    cropKernels: (dst, src, rows, skh, skw, w) => b.cropKernels(dst, src, rows, skh, skw, w.ky0, w.kx0, w.kh, w.kw),
    zeroPadSubsample: (y, x, p, adjoint) => b.zeroPadSubsample(y, x, p.n, p.cIn, p.h, p.w, p.cOut, p.stride, adjoint),
    addRelu: (y, a, c) => b.elementwise(3, y, a, c),
    maxPool2d: (y, argmax, x, p) => b.maxPool2d(y, argmax, x, pool(p)),
    maxPool2dNoIndices: (y, x, p) => b.maxPool2d(y, null, x, pool(p)),
    maxPool2dBackward: (dx, dy, argmax, p) => b.maxPool2dBackward(dx, dy, argmax, pool(p)),
    adaptiveAvgPool2d: (y, x, p: AdaptivePoolParams) => b.adaptiveAvgPool2d(y, x, p.n, p.c, p.h, p.w, p.oh, p.ow, false),
    adaptiveAvgPool2dBackward: (dx, dy, p) => b.adaptiveAvgPool2d(dx, dy, p.n, p.c, p.h, p.w, p.oh, p.ow, true),
    gemm: (c, a, bb, m, n, k, ta, tb, alpha, beta) => b.gemm(c, a, bb, m, n, k, ta, tb, alpha, beta),
    logSoftmax: (y, x, rows, cols) => b.logSoftmax(y, x, rows, cols, false),
    logSoftmaxBackward: (dx, dy, y, rows, cols) => b.logSoftmax(dx, dy, rows, cols, true, y),
    sgdStep: (param, grad, buf, p: SgdParams, c) =>
      c
        ? b.sgdStep(param, grad, buf, p.lr, p.momentum, p.dampening, p.weightDecay, p.nesterov, p.firstStep, c.dst, c.rows, c.skh, c.skw, c.win.ky0, c.win.kx0, c.win.kh, c.win.kw)
        : b.sgdStep(param, grad, buf, p.lr, p.momentum, p.dampening, p.weightDecay, p.nesterov, p.firstStep),
  };
}
