/** max_pool2d and adaptive_avg_pool2d. */
import { ShapeError } from '../errors.js';
import { record } from '../tensor/autograd.js';
import { Tensor, recycle, shapeStr, uninitialized } from '../tensor/tensor.js';
import type { AdaptivePoolParams, Pool2dParams } from '../kernels/kernels.js';
import { kernels } from '../kernels/registry.js';
import { convOutSize } from './conv.js';
import { expectRank, output, pair } from './util.js';

export interface MaxPool2dOptions {
  kernelSize: number | readonly number[];
  /** Defaults to kernelSize, as in PyTorch. */
  stride?: number | readonly number[];
  padding?: number | readonly number[];
  dilation?: number | readonly number[];
}

export function maxPool2dParams(x: Tensor, o: MaxPool2dOptions): Pool2dParams {
  expectRank('max_pool2d', 'input', x, 4, 'N, C, H, W');
  const [kh, kw] = pair('max_pool2d', 'kernel_size', o.kernelSize, 1);
  const [sh, sw] = pair('max_pool2d', 'stride', o.stride ?? o.kernelSize, 1);
  const [ph, pw] = pair('max_pool2d', 'padding', o.padding ?? 0, 0);
  const [dh, dw] = pair('max_pool2d', 'dilation', o.dilation ?? 1, 1);
  if (ph * 2 > kh || pw * 2 > kw) {
    throw new ShapeError(`max_pool2d: padding (${ph}, ${pw}) must be at most half the kernel size (${kh}, ${kw})`);
  }
  const [n, c, h, w] = x.shape as [number, number, number, number];
  const oh = convOutSize(h, kh, sh, ph, dh);
  const ow = convOutSize(w, kw, sw, pw, dw);
  if (oh < 1 || ow < 1) throw new ShapeError(`max_pool2d: input ${shapeStr(x.shape)} is too small for a ${kh}x${kw} window`);
  return { n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow };
}

export function maxPool2d(x: Tensor, o: MaxPool2dOptions): Tensor {
  const p = maxPool2dParams(x, o);
  const y = output([p.n, p.c, p.oh, p.ow], [x]);
  if (y.isMeta) return y;
  const k = kernels();
  // the indices in a buffer from uninitialized() (the kernel writes one per output), which goes back
  // with the graph (GradFn.saved) or at once without one: a zero-filled Int32Array was fresh memory
  // every step, ResNet-18's 1 MB of it at batch 64 two thirds of a training step's page faults
  const store = uninitialized(y.numel);
  const argmax = new Int32Array(store.buffer, store.byteOffset, y.numel);
  k.maxPool2d(y.values, argmax, x.values, p);
  record(y, 'max_pool2d', [x], (gy) => {
    const gx = uninitialized(x.numel);
    k.maxPool2dBackward(gx, gy, argmax, p);
    return [gx];
  }, [store]);
  if (y.gradFn === null) recycle(store); // no graph recorded: no backward will read them
  return y;
}

export function adaptiveAvgPool2d(x: Tensor, outputSize: number | readonly number[]): Tensor {
  expectRank('adaptive_avg_pool2d', 'input', x, 4, 'N, C, H, W');
  const [oh, ow] = pair('adaptive_avg_pool2d', 'output_size', outputSize, 1);
  const [n, c, h, w] = x.shape as [number, number, number, number];
  if (h < 1 || w < 1) throw new ShapeError(`adaptive_avg_pool2d: input ${shapeStr(x.shape)} has an empty spatial size`);
  const p: AdaptivePoolParams = { n, c, h, w, oh, ow };
  const y = output([n, c, oh, ow], [x]);
  if (y.isMeta) return y;
  const k = kernels();
  k.adaptiveAvgPool2d(y.values, x.values, p);
  return record(y, 'adaptive_avg_pool2d', [x], (gy) => {
    const gx = uninitialized(x.numel);
    k.adaptiveAvgPool2dBackward(gx, gy, p);
    return [gx];
  });
}
