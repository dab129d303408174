/**
 * The TypeScript reference backend: every kernel of src/kernels/kernels.ts in plain loops.
 *
 * It is the oracle the native backend is tested against and the fallback when the addon is
 * missing, so clarity beats speed here; sums over a batch use float64 accumulators where the
 * order of float32 additions would otherwise make the oracle itself noisy.
 */
import type { AdaptivePoolParams, BatchNormParams, Conv2dParams, InputBnRelu, KernelCropInto, KernelWindow, Kernels, Pool2dParams, SgdParams, ZeroPadParams } from '../../kernels/kernels.js';
import { conv2d as conv2dPlain, conv2dBackwardInput, conv2dBackwardWeight as conv2dBackwardWeightPlain } from './conv.js';

type F32 = Float32Array;

/** The per-channel batch statistics of x: mean, 1/sqrt(biased variance + eps), unbiased variance;
 * returns the first two unrounded (float64). */
function batchStats(mean: F32, invStd: F32, varUnbiased: F32, x: F32, p: BatchNormParams): [Float64Array, Float64Array] {
  const { n, c, hw, eps } = p;
  const m = n * hw;
  const mus = new Float64Array(c);
  const invs = new Float64Array(c);
  for (let ch = 0; ch < c; ch++) {
    let s = 0;
    for (let b = 0; b < n; b++) {
      const off = (b * c + ch) * hw;
      for (let i = 0; i < hw; i++) s += x[off + i]!;
    }
    const mu = s / m;
    let ss = 0;
    for (let b = 0; b < n; b++) {
      const off = (b * c + ch) * hw;
      for (let i = 0; i < hw; i++) {
        const d = x[off + i]! - mu;
        ss += d * d;
      }
    }
    const varB = ss / m;
    mus[ch] = mu;
    invs[ch] = 1 / Math.sqrt(varB + eps);
    mean[ch] = mu;
    invStd[ch] = invs[ch]!;
    varUnbiased[ch] = m > 1 ? ss / (m - 1) : NaN;
  }
  return [mus, invs];
}

function batchNormTrain(y: F32, mean: F32, invStd: F32, varUnbiased: F32, x: F32, gamma: F32 | null, beta: F32 | null, p: BatchNormParams, fusedRelu = false, residual: F32 | null = null, reluBits: Uint16Array | null = null): boolean {
  const { n, c, hw } = p;
  const [mus, invs] = batchStats(mean, invStd, varUnbiased, x, p);
  for (let ch = 0; ch < c; ch++) {
    const mu = mus[ch]!;
    const inv = invs[ch]!;
    const g = gamma === null ? 1 : gamma[ch]!;
    const bt = beta === null ? 0 : beta[ch]!;
    for (let b = 0; b < n; b++) {
      const off = (b * c + ch) * hw;
      for (let i = 0; i < hw; i++) y[off + i] = (x[off + i]! - mu) * inv * g + bt;
    }
  }
  if (residual) add(y, y, residual);
  if (fusedRelu) relu(y, y);
  if (!fusedRelu || reluBits === null) return false;
  const words = reluBitWords(hw);
  reluBits.fill(0, 0, n * c * words);
  for (let s = 0; s < n * c; s++) {
    for (let i = 0; i < hw; i++) {
      if (!(y[s * hw + i]! <= 0)) reluBits[s * words + (i >> 4)] |= 1 << (i & 15);
    }
  }
  return true;
}

/** Per channel, the float32 scale and shift of y = x * scale + shift for the statistics mean and
 * invStd (the native kernels' operations). */
function scaleShiftInto(scale: F32, shift: F32, mean: F32, invStd: F32, gamma: F32 | null, beta: F32 | null | undefined): void {
  for (let ch = 0; ch < scale.length; ch++) {
    scale[ch] = Math.fround((gamma === null ? 1 : gamma[ch]!) * invStd[ch]!);
    shift[ch] = Math.fround((beta == null ? 0 : beta[ch]!) - Math.fround(mean[ch]! * scale[ch]!));
  }
}

function batchNormStats(mean: F32, invStd: F32, varUnbiased: F32, scale: F32, shift: F32, x: F32, gamma: F32 | null, beta: F32 | null, p: BatchNormParams): void {
  batchStats(mean, invStd, varUnbiased, x, p);
  scaleShiftInto(scale, shift, mean, invStd, gamma, beta);
}

/** relu(x * scale[c] + shift[c]) of an [n, c, hw] tensor, in float32 operations (InputBnRelu). */
function bnReluOf(x: F32, scale: F32, shift: F32, n: number, c: number, hw: number): F32 {
  const y = new Float32Array(x.length);
  for (let b = 0; b < n; b++) {
    for (let ch = 0; ch < c; ch++) {
      const off = (b * c + ch) * hw;
      const s = scale[ch]!;
      const t = shift[ch]!;
      for (let i = 0; i < hw; i++) {
        const v = Math.fround(Math.fround(x[off + i]! * s) + t);
        y[off + i] = v > 0 || v !== v ? v : 0;
      }
    }
  }
  return y;
}

function conv2d(y: F32, x: F32, w: F32, bias: F32 | null, p: Conv2dParams, pre: InputBnRelu | null = null): void {
  conv2dPlain(y, pre ? bnReluOf(x, pre.scale, pre.shift, p.n, p.cIn, p.h * p.w) : x, w, bias, p);
}

function conv2dBackwardWeight(dw: F32, x: F32, dy: F32, p: Conv2dParams, pre: InputBnRelu | null = null): void {
  conv2dBackwardWeightPlain(dw, pre ? bnReluOf(x, pre.scale, pre.shift, p.n, p.cIn, p.h * p.w) : x, dy, p);
}

/** 16-bit words of a relu mask per (image, channel) map of hw pixels (Kernels.batchNormTrain). */
function reluBitWords(hw: number): number {
  return (hw + 15) >> 4;
}

function batchNormEval(y: F32, x: F32, rm: F32, rv: F32, gamma: F32 | null, beta: F32 | null, p: BatchNormParams, fusedRelu = false): void {
  const { n, c, hw, eps } = p;
  for (let ch = 0; ch < c; ch++) {
    const inv = 1 / Math.sqrt(rv[ch]! + eps);
    const scale = (gamma === null ? 1 : gamma[ch]!) * inv;
    const shift = (beta === null ? 0 : beta[ch]!) - rm[ch]! * scale;
    for (let b = 0; b < n; b++) {
      const off = (b * c + ch) * hw;
      for (let i = 0; i < hw; i++) y[off + i] = x[off + i]! * scale + shift;
    }
  }
  if (fusedRelu) relu(y, y);
}

function batchNormBackward(dx: F32, dgamma: F32 | null, dbeta: F32 | null, dyIn: F32, x: F32, mean: F32, invStd: F32, gamma: F32 | null, training: boolean, p: BatchNormParams, reluIn: F32 | null | 'recompute' = null, beta?: F32 | null, maskedOut: F32 | null = null, reluBits: Uint16Array | null = null): void {
  const { n, c, hw } = p;
  let reluY = reluIn === 'recompute' ? null : reluIn;
  if (reluIn === 'recompute') {
    const scale = new Float32Array(c);
    const shift = new Float32Array(c);
    scaleShiftInto(scale, shift, mean, invStd, gamma, beta);
    reluY = bnReluOf(x, scale, shift, n, c, hw);
  }
  let dy = dyIn;
  if (reluY && reluBits) {
    dy = maskedOut ?? new Float32Array(dyIn.length);
    const words = reluBitWords(hw);
    for (let s = 0; s < n * c; s++) {
      for (let i = 0; i < hw; i++) dy[s * hw + i] = (reluBits[s * words + (i >> 4)]! >> (i & 15)) & 1 ? dyIn[s * hw + i]! : 0;
    }
  } else if (reluY) {
    dy = maskedOut ?? new Float32Array(dyIn.length);
    reluBackward(dy, dyIn, reluY);
  }
  const m = n * hw;
  for (let ch = 0; ch < c; ch++) {
    const mu = mean[ch]!;
    const inv = invStd[ch]!;
    let sumDy = 0;
    let sumDyXhat = 0;
    for (let b = 0; b < n; b++) {
      const off = (b * c + ch) * hw;
      for (let i = 0; i < hw; i++) {
        const g = dy[off + i]!;
        sumDy += g;
        sumDyXhat += g * (x[off + i]! - mu) * inv;
      }
    }
    if (dgamma) dgamma[ch] = sumDyXhat;
    if (dbeta) dbeta[ch] = sumDy;
    const g = gamma === null ? 1 : gamma[ch]!;
    for (let b = 0; b < n; b++) {
      const off = (b * c + ch) * hw;
      for (let i = 0; i < hw; i++) {
        if (training) {
          const xhat = (x[off + i]! - mu) * inv;
          dx[off + i] = (g * inv / m) * (m * dy[off + i]! - sumDy - xhat * sumDyXhat);
        } else {
          dx[off + i] = dy[off + i]! * g * inv;
        }
      }
    }
  }
}

function relu(y: F32, x: F32): void {
  for (let i = 0; i < x.length; i++) {
    const v = x[i]!;
    y[i] = v > 0 ? v : v !== v ? v : 0; // NaN propagates, as in PyTorch
  }
}

function reluBackward(dx: F32, dy: F32, y: F32): void {
  // As PyTorch's threshold_backward: zero where y <= 0; a NaN output lets the gradient through.
  for (let i = 0; i < dy.length; i++) dx[i] = y[i]! <= 0 ? 0 : dy[i]!;
}

function add(y: F32, a: F32, b: F32): void {
  for (let i = 0; i < y.length; i++) y[i] = a[i]! + b[i]!;
}

function addRelu(y: F32, a: F32, b: F32): void {
  for (let i = 0; i < y.length; i++) {
    const v = a[i]! + b[i]!;
    y[i] = v > 0 ? v : v !== v ? v : 0;
  }
}

function maxPool2d(y: F32, argmax: Int32Array, x: F32, p: Pool2dParams): void {
  const { n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow } = p;
  for (let pl = 0; pl < n * c; pl++) {
    const xo = pl * h * w;
    const yo = pl * oh * ow;
    for (let oy = 0; oy < oh; oy++) {
      for (let ox = 0; ox < ow; ox++) {
        let best = -Infinity;
        let bestIdx = -1;
        for (let ky = 0; ky < kh; ky++) {
          const iy = oy * sh - ph + ky * dh;
          if (iy < 0 || iy >= h) continue;
          for (let kx = 0; kx < kw; kx++) {
            const ix = ox * sw - pw + kx * dw;
            if (ix < 0 || ix >= w) continue;
            const v = x[xo + iy * w + ix]!;
            // First maximum wins; a NaN wins over numbers (PyTorch: `val > maxval || isnan(val)`).
            if (bestIdx < 0 || v > best || v !== v) {
              best = v;
              bestIdx = iy * w + ix;
            }
          }
        }
        y[yo + oy * ow + ox] = best;
        argmax[yo + oy * ow + ox] = bestIdx;
      }
    }
  }
}

function maxPool2dBackward(dx: F32, dy: F32, argmax: Int32Array, p: Pool2dParams): void {
  dx.fill(0);
  const planeIn = p.h * p.w;
  const planeOut = p.oh * p.ow;
  for (let pl = 0; pl < p.n * p.c; pl++) {
    for (let i = 0; i < planeOut; i++) {
      const a = argmax[pl * planeOut + i]!;
      if (a >= 0) dx[pl * planeIn + a]! += dy[pl * planeOut + i]!;
    }
  }
}

function forEachBin(p: AdaptivePoolParams, fn: (pl: number, o: number, y0: number, y1: number, x0: number, x1: number) => void): void {
  for (let pl = 0; pl < p.n * p.c; pl++) {
    for (let oy = 0; oy < p.oh; oy++) {
      const y0 = Math.floor((oy * p.h) / p.oh);
      const y1 = Math.ceil(((oy + 1) * p.h) / p.oh);
      for (let ox = 0; ox < p.ow; ox++) {
        const x0 = Math.floor((ox * p.w) / p.ow);
        const x1 = Math.ceil(((ox + 1) * p.w) / p.ow);
        fn(pl, oy * p.ow + ox, y0, y1, x0, x1);
      }
    }
  }
}

function adaptiveAvgPool2d(y: F32, x: F32, p: AdaptivePoolParams): void {
  forEachBin(p, (pl, o, y0, y1, x0, x1) => {
    let s = 0;
    for (let iy = y0; iy < y1; iy++) for (let ix = x0; ix < x1; ix++) s += x[pl * p.h * p.w + iy * p.w + ix]!;
    y[pl * p.oh * p.ow + o] = s / ((y1 - y0) * (x1 - x0));
  });
}

function adaptiveAvgPool2dBackward(dx: F32, dy: F32, p: AdaptivePoolParams): void {
  dx.fill(0);
  forEachBin(p, (pl, o, y0, y1, x0, x1) => {
    const g = dy[pl * p.oh * p.ow + o]! / ((y1 - y0) * (x1 - x0));
    for (let iy = y0; iy < y1; iy++) for (let ix = x0; ix < x1; ix++) dx[pl * p.h * p.w + iy * p.w + ix]! += g;
  });
}

function gemm(c: F32, a: F32, b: F32, m: number, n: number, k: number, transA: boolean, transB: boolean, alpha: number, beta: number): void {
  const row = new Float64Array(n);
  for (let i = 0; i < m; i++) {
    row.fill(0);
    for (let kk = 0; kk < k; kk++) {
      const av = transA ? a[kk * m + i]! : a[i * k + kk]!;
      if (transB) {
        for (let j = 0; j < n; j++) row[j]! += av * b[j * k + kk]!;
      } else {
        const bo = kk * n;
        for (let j = 0; j < n; j++) row[j]! += av * b[bo + j]!;
      }
    }
    const co = i * n;
    for (let j = 0; j < n; j++) c[co + j] = alpha * row[j]! + (beta === 0 ? 0 : beta * c[co + j]!);
  }
}

function logSoftmax(y: F32, x: F32, rows: number, cols: number): void {
  for (let r = 0; r < rows; r++) {
    const o = r * cols;
    let mx = -Infinity;
    for (let j = 0; j < cols; j++) mx = Math.max(mx, x[o + j]!);
    let s = 0;
    for (let j = 0; j < cols; j++) s += Math.exp(x[o + j]! - mx);
    const lse = mx + Math.log(s);
    for (let j = 0; j < cols; j++) y[o + j] = x[o + j]! - lse;
  }
}

function logSoftmaxBackward(dx: F32, dy: F32, y: F32, rows: number, cols: number): void {
  for (let r = 0; r < rows; r++) {
    const o = r * cols;
    let s = 0;
    for (let j = 0; j < cols; j++) s += dy[o + j]!;
    for (let j = 0; j < cols; j++) dx[o + j] = dy[o + j]! - Math.exp(y[o + j]!) * s;
  }
}

function sgdStep(param: F32, grad: F32, buf: F32 | null, p: SgdParams, window?: KernelCropInto | null): void {
  const { lr, momentum, dampening, weightDecay, nesterov, firstStep } = p;
  for (let i = 0; i < param.length; i++) {
    let d = grad[i]!;
    if (weightDecay !== 0) d += weightDecay * param[i]!;
    if (momentum !== 0 && buf !== null) {
      const v = firstStep ? d : momentum * buf[i]! + (1 - dampening) * d;
      buf[i] = v;
      d = nesterov ? d + momentum * v : v;
    }
    param[i]! -= lr * d;
  }
  if (window) cropKernels(window.dst, param, window.rows, window.skh, window.skw, window.win);
}

function cropKernels(dst: F32, src: F32, rows: number, skh: number, skw: number, w: KernelWindow): void {
  for (let r = 0; r < rows; r++) {
    for (let i = 0; i < w.kh; i++) {
      for (let j = 0; j < w.kw; j++) dst[(r * w.kh + i) * w.kw + j] = src[(r * skh + w.ky0 + i) * skw + w.kx0 + j]!;
    }
  }
}

function zeroPadSubsample(y: F32, x: F32, p: ZeroPadParams, adjoint: boolean): void {
  const { n, cIn, h, w, cOut, stride } = p;
  const oh = Math.ceil(h / stride);
  const ow = Math.ceil(w / stride);
  const front = Math.floor((cOut - cIn) / 2);
  const plane = oh * ow;
  const inPlane = h * w;
  if (adjoint) x.fill(0, 0, n * cIn * inPlane);
  for (let b = 0; b < n; b++) {
    const yb = b * cOut * plane;
    if (!adjoint) {
      // only the padding channels are zeros; the others are written below
      y.fill(0, yb, yb + front * plane);
      y.fill(0, yb + (front + cIn) * plane, yb + cOut * plane);
    }
    for (let c = 0; c < cIn; c++) {
      let yi = yb + (c + front) * plane;
      const xc = (b * cIn + c) * inPlane;
      for (let oy = 0; oy < oh; oy++) {
        const xi = xc + oy * stride * w;
        if (adjoint) for (let ox = 0; ox < ow; ox++) x[xi + ox * stride] = y[yi++]!;
        else for (let ox = 0; ox < ow; ox++) y[yi++] = x[xi + ox * stride]!;
      }
    }
  }
}

export const tsKernels: Kernels = {
  name: 'ts',
  conv2d,
  conv2dBackwardInput,
  conv2dBackwardWeight,
  conv2dReadsBnRelu: () => false,
  batchNormTrain,
  batchNormStats,
  batchNormEval,
  batchNormBackward,
  relu,
  reluBackward,
  add,
  addRelu,
  zeroPadSubsample,
  cropKernels,
  maxPool2d,
  maxPool2dBackward,
  adaptiveAvgPool2d,
  adaptiveAvgPool2dBackward,
  gemm,
  logSoftmax,
  logSoftmaxBackward,
  sgdStep,
};
