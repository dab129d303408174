/**
 * The native addon's whole surface, typed. The C side (native/src/addon.c) takes typed arrays by
 * reference plus numbers and writes into the outputs; it checks buffer lengths against the
 * geometry it is given (so a bad call throws instead of corrupting memory) and nothing else.
 */
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

type F32 = Float32Array;

export interface NativeBinding {
  /** geometry: Int32Array(16) = n cin h w cout kh kw sh sw ph pw dh dw groups oh ow. With `packed`
   * (from convPackWeights) and its `layout`, the weights are read from there and `w` may be null. */
  conv2d(y: F32, x: F32, w: F32 | null, bias: F32 | null, residual: F32 | null, relu: boolean, geometry: Int32Array, packed?: F32 | null, layout?: number): void;
  /** The packed weight layout that conv2d reads for this geometry (spatial sizes included). */
  convPackLayout(geometry: Int32Array): number;
  /** Floats that convPackWeights writes for this geometry (with the same `blocked` and `winograd`). */
  convPackedLength(geometry: Int32Array, blocked?: boolean, winograd?: boolean): number;
  /** Packs conv weights in the layout convPackLayout names, or with `blocked` for conv2dBlocked (the
   * Winograd transforms of 3x3 stride-1 weights when `winograd`, else pixel-row panels); returns
   * the layout. */
  convPackWeights(dst: F32, w: F32, geometry: Int32Array, blocked?: boolean, winograd?: boolean): number;
  /** The plain weights [cout, cin/groups, kh, kw] back from weights packed in `layout`. */
  convUnpackWeights(w: F32, packed: F32, layout: number, geometry: Int32Array): void;
  /** Blocked activations for the inference plan, NCHW16c with a zero border: [n][c/16][h+2][w+2][16]
   * (the border stands in for padding up to 1). Whether conv2dBlocked takes this geometry with
   * blocked (or NCHW) input, its weights packed with the same `winograd`. */
  convBlockedOk(geometry: Int32Array, xBlocked: boolean, winograd?: boolean): boolean;
  /** y (blocked) = conv(x) + bias (+ residual, blocked, may be y) (then relu); x blocked or NCHW. */
  conv2dBlocked(y: F32, x: F32, bias: F32 | null, residual: F32 | null, relu: boolean, geometry: Int32Array, packed: F32, layout: number, xBlocked: boolean): void;
  /** Kernels.cropKernels with the window spelled out. */
  cropKernels(dst: F32, src: F32, rows: number, skh: number, skw: number, ky0: number, kx0: number, kh: number, kw: number): void;
  /** The zero-padding shortcut (see Kernels.zeroPadSubsample); adjoint: x receives the gradient. */
  zeroPadSubsample(y: F32, x: F32, n: number, cIn: number, h: number, w: number, cOut: number, stride: number, adjoint: boolean): void;
  /** Max pool on blocked activations (c a multiple of 16); geometry as maxPool2d's. */
  maxPool2dBlocked(y: F32, x: F32, geometry: Int32Array): void;
  /** Global average pool of blocked activations (h x w maps) to [n, c]. */
  avgPoolGlobalBlocked(y: F32, x: F32, n: number, c: number, h: number, w: number): void;
  /** addend (may be dx): dx = the gradient + addend */
  conv2dBackwardInput(dx: F32, dy: F32, w: F32, geometry: Int32Array, addend?: F32 | null): void;
  /** with scale and shift: the input is relu(x * scale[c] + shift[c]) (Kernels.conv2dBackwardWeight's inputBnRelu) */
  conv2dBackwardWeight(dw: F32, x: F32, dy: F32, geometry: Int32Array, scale?: F32, shift?: F32): void;
  /** conv2d of relu(x * scale[c] + shift[c]) (Kernels.conv2d's inputBnRelu) */
  conv2dPre(y: F32, x: F32, w: F32, bias: F32 | null, scale: F32, shift: F32, geometry: Int32Array): void;
  /** Kernels.conv2dReadsBnRelu */
  conv2dReadsPre(geometry: Int32Array): boolean;
  batchNormStats(mean: F32, invStd: F32, varU: F32, scale: F32, shift: F32, x: F32, gamma: F32 | null, beta: F32 | null, n: number, c: number, hw: number, eps: number): void;
  batchNormTrain(y: F32, mean: F32, invStd: F32, varU: F32, x: F32, gamma: F32 | null, beta: F32 | null, n: number, c: number, hw: number, eps: number, relu?: boolean, residual?: F32 | null, reluBits?: Uint16Array | null): boolean;
  batchNormEval(y: F32, x: F32, rm: F32, rv: F32, gamma: F32 | null, beta: F32 | null, n: number, c: number, hw: number, eps: number, relu?: boolean): void;
  /** beta: the forward's (null: none), with which the kernel may recompute the relu's mask from x; undefined: it reads reluY.
   * reluY true: a fused relu whose output was never stored (Kernels.batchNormBackward's 'recompute'; needs beta). */
  batchNormBackward(dx: F32, dgamma: F32 | null, dbeta: F32 | null, dy: F32, x: F32, mean: F32, invStd: F32, gamma: F32 | null, training: boolean, n: number, c: number, hw: number, reluY?: F32 | null | true, beta?: F32 | null, maskedOut?: F32 | null, reluBits?: Uint16Array | null): void;
  /** op: 0 relu(y, x), 1 reluBackward(dx, dy, y), 2 add(y, a, b), 3 addRelu(y, a, b) */
  elementwise(op: 0 | 1 | 2 | 3, y: F32, a: F32, b?: F32): void;
  /** geometry: Int32Array(14) = n c h w kh kw sh sw ph pw dh dw oh ow */
  /** argmax null: no indices (inference), a faster path */
  maxPool2d(y: F32, argmax: Int32Array | null, x: F32, geometry: Int32Array): void;
  maxPool2dBackward(dx: F32, dy: F32, argmax: Int32Array, geometry: Int32Array): void;
  /** forward: (y, x, ...); backward: (dx, dy, ..., true) */
  adaptiveAvgPool2d(out: F32, inp: F32, n: number, c: number, h: number, w: number, oh: number, ow: number, backward: boolean): void;
  gemm(c: F32, a: F32, b: F32, m: number, n: number, k: number, transA: boolean, transB: boolean, alpha: number, beta: number): void;
  /** forward: (y, x, rows, cols, false); backward: (dx, dy, rows, cols, true, y) */
  logSoftmax(out: F32, inp: F32, rows: number, cols: number, backward: boolean, y?: F32): void;
  sgdStep(param: F32, grad: F32, buf: F32 | null, lr: number, momentum: number, dampening: number, weightDecay: number, nesterov: boolean, firstStep: boolean, ...window: [F32, number, number, number, number, number, number, number] | []): void;
  setThreads(n: number): void;
  getThreads(): number;
  /** The round trip of one cache line between the pool's first two threads, in ns, measured on each
   * call (about a millisecond); 0 with one thread. A diagnostic (the bench report prints it): ~50-200
   * where the cores share a last-level cache, ~400-600 where they do not (AMD's chiplets, sockets). */
  handoffNs(): number;
  /** Bytes of one core's L2 as the kernels size their blocking by it (RESNET_L2_KB when set, else the
   * C library's figure from cpuid, else 1 MB; clamped to 256 KB-16 MB). */
  l2Bytes(): number;
  /** The GEMM micro-kernel in use ("avx512", "avx2", "portable"); with an argument, forces one
   * (0 auto, 1 portable, 2 avx2, 3 avx512) and returns the one selected. */
  isa(force?: number): string;
  /** A zero-filled ArrayBuffer of `bytes` bytes on memory of its own (2 MB-aligned, advised for
   * transparent huge pages, unmapped when collected), or null where that is not possible. */
  allocLarge(bytes: number): ArrayBuffer | null;
}

/** Where node-gyp puts the addon, relative to this file (dist/src/backends/native/). */
const ADDON = fileURLToPath(new URL('../../../../build/Release/resnet_native.node', import.meta.url));

/** Loads the addon; returns null with the reason if it is missing or fails to load. */
export function loadBinding(): { binding: NativeBinding | null; error: string | null } {
  if (!existsSync(ADDON)) return { binding: null, error: `native addon not built (${ADDON} is missing; run npm run build:native)` };
  try {
    const require = createRequire(import.meta.url);
    return { binding: require(ADDON) as NativeBinding, error: null };
  } catch (e) {
    return { binding: null, error: `native addon failed to load: ${(e as Error).message}` };
  }
}
