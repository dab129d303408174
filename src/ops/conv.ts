/** conv2d: validation, output shape, forward and backward (through the kernel interface). */
import { ShapeError } from '../errors.js';
import { record } from '../tensor/autograd.js';
import { Tensor, shapeStr, uninitialized } from '../tensor/tensor.js';
import type { Conv2dParams } from '../kernels/kernels.js';
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

export function conv2d(x: Tensor, w: Tensor, bias: Tensor | null = null, opts: Conv2dOptions = {}): Tensor {
  const p = conv2dParams(x, w, bias, opts);
  const y = output([p.n, p.cOut, p.oh, p.ow], [x, w, bias]);
  if (y.isMeta) return y;
  const k = kernels();
  k.conv2d(y.values, x.values, w.values, bias ? bias.values : null, p);
  const inputs = bias ? [x, w, bias] : [x, w];
  return record(y, 'conv2d', inputs, (gy, needs, sums) => {
    const gx = needs[0] ? uninitialized(x.numel) : null;
    // x's gradient plus the sum it already has (a residual block's input: its skip path's), added in
    // the kernel's own pass instead of a separate one
    const sum = sums?.pending[0];
    if (gx) k.conv2dBackwardInput(gx, gy, w.values, p, sum ?? null);
    if (gx && sum && sums) sums.added[0] = true;
    const gw = needs[1] ? uninitialized(w.numel) : null;
    if (gw) k.conv2dBackwardWeight(gw, x.values, gy, p);
    const gb = needs[2] ? sumPerChannel(gy, p.n, p.cOut, p.oh * p.ow) : null;
    return [gx, gw, gb];
  });
}
