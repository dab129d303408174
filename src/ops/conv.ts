/** conv2d: validation, output shape, forward and backward (through the kernel interface). */
import { ShapeError } from '../errors.js';
import { record } from '../tensor/autograd.js';
import { Tensor, shapeStr, uninitialized } from '../tensor/tensor.js';
import type { Conv2dParams, KernelWindow } from '../kernels/kernels.js';
import { kernels } from '../kernels/registry.js';
import { expectRank, output, pair, sumPerChannel } from './util.js';

export interface Conv2dOptions {
  stride?: number | readonly number[];
  padding?: number | readonly number[];
  dilation?: number | readonly number[];
  groups?: number;
}

/** Output length of a convolution or pooling window along one axis (PyTorch's formula). */
export function convOutSize(size: number, k: number, s: number, p: number, d: number): number {
  return Math.floor((size + 2 * p - d * (k - 1) - 1) / s) + 1;
}

/** Checks shapes and returns the kernel geometry of conv2d(x, w). */
export function conv2dParams(x: Tensor, w: Tensor, bias: Tensor | null, o: Conv2dOptions): Conv2dParams {
  expectRank('conv2d', 'input', x, 4, 'N, C, H, W');
  expectRank('conv2d', 'weight', w, 4, 'C_out, C_in/groups, kH, kW');
  const [sh, sw] = pair('conv2d', 'stride', o.stride ?? 1, 1);
  const [ph, pw] = pair('conv2d', 'padding', o.padding ?? 0, 0);
  const [dh, dw] = pair('conv2d', 'dilation', o.dilation ?? 1, 1);
  const groups = o.groups ?? 1;
  const [n, cIn, h, wd] = x.shape as [number, number, number, number];
  const [cOut, cinG, kh, kw] = w.shape as [number, number, number, number];
  if (!Number.isInteger(groups) || groups < 1) throw new ShapeError(`conv2d: groups must be a positive integer, got ${groups}`);
  if (cIn % groups !== 0 || cOut % groups !== 0) {
    throw new ShapeError(`conv2d: input channels (${cIn}) and output channels (${cOut}) must both be divisible by groups (${groups})`);
  }
  if (cinG * groups !== cIn) {
    throw new ShapeError(
      `conv2d: weight ${shapeStr(w.shape)} expects ${cinG * groups} input channels (groups=${groups}), but the input ${shapeStr(x.shape)} has ${cIn}`,
    );
  }
  if (bias !== null && (bias.ndim !== 1 || bias.shape[0] !== cOut)) {
    throw new ShapeError(`conv2d: bias must have shape [${cOut}], got ${shapeStr(bias.shape)}`);
  }
  const oh = convOutSize(h, kh, sh, ph, dh);
  const ow = convOutSize(wd, kw, sw, pw, dw);
  if (oh < 1 || ow < 1) {
    throw new ShapeError(
      `conv2d: input ${shapeStr(x.shape)} is too small for a ${kh}x${kw} kernel (stride ${sh}, padding ${ph}, dilation ${dh}): output would be ${oh}x${ow}`,
    );
  }
  return { n, cIn, h, w: wd, cOut, kh, kw, sh, sw, ph, pw, dh, dw, groups, oh, ow };
}

/** Along one axis: the first and one-past-last tap whose inputs, over all outputs, meet the map. */
function liveTaps(k: number, d: number, s: number, pad: number, size: number, out: number): [number, number] {
  let a = 0;
  let b = k;
  const dead = (t: number): boolean => (out - 1) * s - pad + t * d < 0 || t * d - pad > size - 1;
  while (a < b && dead(a)) a++;
  while (b > a && dead(b - 1)) b--;
  return [a, b];
}

/**
 * The taps of a convolution that read inside its input for some output, when that is not all of them
 * (3x3 pad-1 kernels on 1x1 maps: the centre tap; a 3x3/2 from 2x2 to 1x1: a 2x2 window): the
 * cropped geometry q (the same outputs: the bottom/right padding is implicit in oh/ow) and the
 * window. The others only ever multiply padding. The native kernels crop so too (conv.c's crop()),
 * per call; here the cropped weights are kept with the weight tensor (Tensor.kernelWindow), made
 * once per weight version for the forward and the backward input, or by the optimizer right after
 * its update, while the weights are in cache: ResNet-18's 512-channel 1x1 maps read 1 MB of centre
 * taps instead of 9.4 MB of weights.
 */
export function liveWindow(p: Conv2dParams): { q: Conv2dParams; win: KernelWindow } | null {
  const [a, b] = liveTaps(p.kh, p.dh, p.sh, p.ph, p.h, p.oh);
  const [c, d] = liveTaps(p.kw, p.dw, p.sw, p.pw, p.w, p.ow);
  if (b <= a || d <= c || (a === 0 && b === p.kh && c === 0 && d === p.kw)) return null;
  const ph = p.ph - a * p.dh;
  const pw = p.pw - c * p.dw;
  if (ph < 0 || pw < 0) return null;
  return { q: { ...p, kh: b - a, kw: d - c, ph, pw }, win: { ky0: a, kx0: c, kh: b - a, kw: d - c } };
}

export function conv2d(x: Tensor, w: Tensor, bias: Tensor | null = null, opts: Conv2dOptions = {}): Tensor {
  const p = conv2dParams(x, w, bias, opts);
  const y = output([p.n, p.cOut, p.oh, p.ow], [x, w, bias]);
  if (y.isMeta) return y;
  const k = kernels();
  const live = liveWindow(p);
  // the weights and geometry of the forward and backward input: the live taps only, where some are not
  const g = live === null ? p : live.q;
  const wLive = (): Float32Array =>
    live === null ? w.values : w.kernelWindow({ rows: p.cOut * (p.cIn / p.groups), skh: p.kh, skw: p.kw, win: live.win });
  k.conv2d(y.values, x.values, wLive(), bias ? bias.values : null, g);
  const inputs = bias ? [x, w, bias] : [x, w];
  return record(y, 'conv2d', inputs, (gy, needs, sums) => {
    const gx = needs[0] ? uninitialized(x.numel) : null;
    // x's gradient plus the sum it already has (a residual block's input: its skip path's), added in
    // the kernel's own pass instead of a separate one
    const sum = sums?.pending[0];
    if (gx) k.conv2dBackwardInput(gx, gy, wLive(), g, sum ?? null);
    if (gx && sum && sums) sums.added[0] = true;
    const gw = needs[1] ? uninitialized(w.numel) : null;
    if (gw) k.conv2dBackwardWeight(gw, x.values, gy, p);
    const gb = needs[2] ? sumPerChannel(gy, p.n, p.cOut, p.oh * p.ow) : null;
    return [gx, gw, gb];
  });
}
