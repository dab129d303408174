/**
 * The kernel interface: every numeric loop of resnet-ts goes through one of these functions.
 *
 * Contract (shared by the TypeScript reference backend and the native addon):
 * - Kernels take raw Float32Array buffers (NCHW, row-major) plus plain-number parameters, and write
 *   into output buffers the caller allocated. They never allocate their outputs, never validate
 *   shapes (src/ops does that, once, with a clear message) and never see a Tensor.
 * - "Overwrite" unless the name says otherwise: outputs are fully written, so callers may pass
 *   uninitialised storage.
 * - One name per kernel (`KernelName`), so backends can be listed, compared and tested op by op.
 *
 * Pre-packed weights and fused inference (folding BN into conv, packing conv weights once) are a
 * separate, optional capability of a backend (see docs/ARCHITECTURE.md): weights change on every
 * training step, so the per-op kernels here take weights as plain buffers.
 */

/** Geometry of a 2-D convolution. Output size: oh = floor((h + 2ph - dh(kh-1) - 1)/sh) + 1. */
export interface Conv2dParams {
  n: number;
  cIn: number;
  h: number;
  w: number;
  cOut: number;
  kh: number;
  kw: number;
  sh: number;
  sw: number;
  ph: number;
  pw: number;
  dh: number;
  dw: number;
  groups: number;
  oh: number;
  ow: number;
}

/** Geometry of a 2-D max pool (padding counts as -infinity, as in PyTorch). */
export interface Pool2dParams {
  n: number;
  c: number;
  h: number;
  w: number;
  kh: number;
  kw: number;
  sh: number;
  sw: number;
  ph: number;
  pw: number;
  dh: number;
  dw: number;
  oh: number;
  ow: number;
}

/** Geometry of adaptive average pooling: bin i covers [floor(i*h/oh), ceil((i+1)*h/oh)). */
export interface AdaptivePoolParams {
  n: number;
  c: number;
  h: number;
  w: number;
  oh: number;
  ow: number;
}

/** A window of a kh x kw kernel: rows [ky0, ky0+kh), columns [kx0, kx0+kw). */
export interface KernelWindow {
  ky0: number;
  kx0: number;
  kh: number;
  kw: number;
}

/** cropKernels' arguments: `rows` kernels of skh x skw, cut to `win`. */
export interface KernelCrop {
  rows: number;
  skh: number;
  skw: number;
  win: KernelWindow;
}

/** A KernelCrop with its destination ([rows, win.kh, win.kw]). */
export interface KernelCropInto extends KernelCrop {
  dst: Float32Array;
}

/** Batch-norm geometry: x is [n, c, hw] viewed channel-wise. */
export interface BatchNormParams {
  n: number;
  c: number;
  hw: number;
  eps: number;
}

/** The parameter-free shortcut (option A) of an [n, cIn, h, w] input to cOut channels. */
export interface ZeroPadParams {
  n: number;
  cIn: number;
  h: number;
  w: number;
  cOut: number;
  stride: number;
}

/** One SGD step with PyTorch's semantics (torch.optim.SGD). */
export interface SgdParams {
  lr: number;
  momentum: number;
  dampening: number;
  weightDecay: number;
  nesterov: boolean;
  /** True on the first step for this parameter: the momentum buffer is set to the gradient. */
  firstStep: boolean;
}

type F32 = Float32Array;

/**
 * A batch norm + ReLU applied to a convolution's input as the convolution reads it: the convolution
 * sees relu(x * scale[c] + shift[c]) per input channel c (multiply, then add, then ReLU with NaN
 * kept), the output that batchNormTrain with `relu` would have written from the statistics
 * batchNormStats gave (`scale`, `shift`), without storing it.
 */
export interface InputBnRelu {
  scale: F32;
  shift: F32;
}

export interface Kernels {
  /** Backend name ("ts", "native"). */
  readonly name: string;

  /** y[n,co,oh,ow] = sum x * w (+ bias[co]). w is [cOut, cIn/groups, kh, kw]. With `inputBnRelu`,
   * the input is relu(x * scale + shift) instead of x (InputBnRelu). */
  conv2d(y: F32, x: F32, w: F32, bias: F32 | null, p: Conv2dParams, inputBnRelu?: InputBnRelu | null): void;
  /**
   * dx = conv2d^T(dy, w) (the "full" convolution with the flipped kernel), plus `addend` when given
   * (it may be dx itself): autograd's sum for an input used twice (a residual block's input), which
   * the native kernels add in their own epilogue instead of a separate pass.
   */
  conv2dBackwardInput(dx: F32, dy: F32, w: F32, p: Conv2dParams, addend?: F32 | null): void;
  /** dw = correlation of x with dy, summed over batch and pixels (x as conv2d's `inputBnRelu` reads it). */
  conv2dBackwardWeight(dw: F32, x: F32, dy: F32, p: Conv2dParams, inputBnRelu?: InputBnRelu | null): void;
  /**
   * Whether conv2d and conv2dBackwardWeight apply `inputBnRelu` while they read x for this geometry
   * (the native backend's NCHW Winograd path), so that the batch norm's output need never be stored;
   * false where they would make that input in a pass of their own first (no faster than storing it).
   */
  conv2dReadsBnRelu(p: Conv2dParams): boolean;
  /**
   * The window [ky0, ky0+w.kh) x [kx0, kx0+w.kw) of each of `rows` kernels of src ([rows, skh, skw])
   * into dst ([rows, w.kh, w.kw]): a convolution's live taps (ops/conv.ts caches them per weight).
   */
  cropKernels(dst: F32, src: F32, rows: number, skh: number, skw: number, w: KernelWindow): void;

  /**
   * Training-mode batch norm: normalises with batch statistics, writes y, the batch mean and
   * 1/sqrt(biased var + eps) per channel (saved for backward), and the unbiased variance per
   * channel (for the running-stat update). gamma/beta null means affine=false. With `relu`, y is
   * relu(batch_norm(x)) (one pass instead of two). With `residual` (not y itself), it is added
   * before the relu: y = relu(batch_norm(x) + residual), a residual block's join in the same pass.
   * With `reluBits` (and `relu`) a backend may also write the relu's mask, one bit per element, set
   * where the gradient passes (y > 0, or NaN): ceil(hw / 16) 16-bit words per (image, channel)
   * map, bit l of word w for pixel 16w + l. Returns whether it did (the native backend does on its
   * AVX-512 path, for maps of 16 pixels or more and tensors larger than a core's L2, where reading y
   * back costs memory traffic), so that the backward may read 1/32 of y's bytes.
   */
  batchNormTrain(y: F32, mean: F32, invStd: F32, varUnbiased: F32, x: F32, gamma: F32 | null, beta: F32 | null, p: BatchNormParams, relu?: boolean, residual?: F32 | null, reluBits?: Uint16Array | null): boolean;
  /**
   * batchNormTrain's statistics without its output: mean, invStd and varUnbiased as batchNormTrain
   * writes them, and per channel the scale and shift of its y = x * scale + shift, for a consumer that
   * applies the batch norm itself as it reads x (conv2d's InputBnRelu).
   */
  batchNormStats(mean: F32, invStd: F32, varUnbiased: F32, scale: F32, shift: F32, x: F32, gamma: F32 | null, beta: F32 | null, p: BatchNormParams): void;
  /** Eval-mode batch norm with running statistics (then relu, with `relu`). */
  batchNormEval(y: F32, x: F32, runningMean: F32, runningVar: F32, gamma: F32 | null, beta: F32 | null, p: BatchNormParams, relu?: boolean): void;
  /**
   * Backward of batch norm given the statistics used in forward (batch ones in training, running
   * ones in eval: pass `training` accordingly). dgamma/dbeta may be null when not needed. With
   * `reluY` (the output of a fused relu), dy is the gradient of relu(batch_norm(x)): it is masked
   * as reluBackward would (0 where reluY <= 0) before the batch-norm backward. `beta` (null: the
   * forward had none), given with reluY, is the forward's: a backend may then recompute the relu's
   * input from x, mean, invStd, gamma and beta with its forward's own operations (the same bits)
   * instead of reading reluY, in training. `maskedOut` (with reluY, and beta left undefined: the
   * relu's input cannot be recomputed, as when a residual was added before it) also receives the
   * masked gradient, as reluBackward(maskedOut, dy, reluY) would write it (a residual join's
   * gradient, which the shortcut needs too), from the same pass. `reluBits` (with reluY): the mask
   * batchNormTrain wrote (when it returned true), which a backend may read instead of reluY.
   * `reluY` 'recompute' (with beta): a fused relu whose output was never stored (conv2d's
   * InputBnRelu); its mask is that of relu(x * scale + shift) with batchNormStats' scale and shift,
   * recomputed from x, mean, invStd, gamma and beta.
   */
  batchNormBackward(dx: F32, dgamma: F32 | null, dbeta: F32 | null, dy: F32, x: F32, mean: F32, invStd: F32, gamma: F32 | null, training: boolean, p: BatchNormParams, reluY?: F32 | null | 'recompute', beta?: F32 | null, maskedOut?: F32 | null, reluBits?: Uint16Array | null): void;

  relu(y: F32, x: F32): void;
  /** dx = 0 where y <= 0, else dy (the gradient at 0 is 0 and NaN passes, as in PyTorch). */
  reluBackward(dx: F32, dy: F32, y: F32): void;
  /** y = a + b (same length). */
  add(y: F32, a: F32, b: F32): void;
  /** y = relu(a + b): the residual join. */
  addRelu(y: F32, a: F32, b: F32): void;
  /**
   * The zero-padding shortcut (He et al.'s option A): y [n, cOut, ceil(h/stride), ceil(w/stride)]
   * gets y[b, c + front, oy, ox] = x[b, c, oy*stride, ox*stride] with front = floor((cOut-cIn)/2),
   * zeros in the other channels. With `adjoint`, the transpose: x (a gradient [n, cIn, h, w]) gets
   * y's values at those positions and zeros elsewhere. Either way the output is fully written.
   */
  zeroPadSubsample(y: F32, x: F32, p: ZeroPadParams, adjoint: boolean): void;

  /** Max pool; `argmax` receives, per output, the flat index (iy*w+ix) of the max in its plane. */
  maxPool2d(y: F32, argmax: Int32Array, x: F32, p: Pool2dParams): void;
  maxPool2dBackward(dx: F32, dy: F32, argmax: Int32Array, p: Pool2dParams): void;
  adaptiveAvgPool2d(y: F32, x: F32, p: AdaptivePoolParams): void;
  adaptiveAvgPool2dBackward(dx: F32, dy: F32, p: AdaptivePoolParams): void;

  /**
   * General matrix multiply, row-major: C[m,n] = alpha * op(A)[m,k] · op(B)[k,n] + beta * C.
   * op(A) is A[m,k] or, with transA, A[k,m]^T; likewise B. beta = 0 ignores C's old contents.
   */
  gemm(c: F32, a: F32, b: F32, m: number, n: number, k: number, transA: boolean, transB: boolean, alpha: number, beta: number): void;

  /** Row-wise log-softmax of x[rows, cols]. */
  logSoftmax(y: F32, x: F32, rows: number, cols: number): void;
  /** dx = dy - softmax * sum(dy) per row, given y = logSoftmax(x). */
  logSoftmaxBackward(dx: F32, dy: F32, y: F32, rows: number, cols: number): void;

  /**
   * In-place SGD update of `param` with `grad` (not modified) and the momentum buffer. With `window`
   * (param holding `rows` kernels of skh x skw), the updated kernels' window is also written to
   * window.dst, as cropKernels would after the update (the native kernel does it in the same pass).
   */
  sgdStep(param: F32, grad: F32, momentumBuf: F32 | null, p: SgdParams, window?: KernelCropInto | null): void;
}

export type KernelName = Exclude<keyof Kernels, 'name'>;
