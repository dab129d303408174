/** Elementwise and shape ops: relu, add, addRelu, mulScalar, sum, mean, reshape, flatten, zero-pad shortcut. */
import { ShapeError } from '../errors.js';
import { record } from '../tensor/autograd.js';
import { Tensor, numelOf, shapeStr, uninitialized } from '../tensor/tensor.js';
import { kernels } from '../kernels/registry.js';
import { expectRank, expectSameShape, output } from './util.js';

export function relu(x: Tensor): Tensor {
  const y = output(x.shape, [x]);
  if (y.isMeta) return y;
  const k = kernels();
  k.relu(y.values, x.values);
  return record(y, 'relu', [x], (gy) => {
    const gx = uninitialized(x.numel);
    k.reluBackward(gx, gy, y.values);
    return [gx];
  });
}

export function add(a: Tensor, b: Tensor): Tensor {
  expectSameShape('add', a, b);
  const y = output(a.shape, [a, b]);
  if (y.isMeta) return y;
  kernels().add(y.values, a.values, b.values);
  return record(y, 'add', [a, b], (gy) => [gy, gy]);
}

/** relu(a + b) in one pass: the join of a residual block. */
export function addRelu(a: Tensor, b: Tensor): Tensor {
  expectSameShape('add_relu', a, b);
  const y = output(a.shape, [a, b]);
  if (y.isMeta) return y;
  const k = kernels();
  k.addRelu(y.values, a.values, b.values);
  return record(y, 'add_relu', [a, b], (gy) => {
    const g = uninitialized(gy.length);
    k.reluBackward(g, gy, y.values);
    return [g, g];
  });
}

export function mulScalar(x: Tensor, s: number): Tensor {
  const y = output(x.shape, [x]);
  if (y.isMeta) return y;
  const xv = x.values;
  const yv = y.values;
  for (let i = 0; i < xv.length; i++) yv[i] = xv[i]! * s;
  return record(y, 'mul_scalar', [x], (gy) => [gy.map((g) => g * s)]);
}

/** Sum of all elements, as a one-element tensor of shape []. */
export function sum(x: Tensor): Tensor {
  const y = output([], [x]);
  if (y.isMeta) return y;
  let s = 0;
  for (const v of x.values) s += v;
  y.values[0] = s;
  return record(y, 'sum', [x], (gy) => [new Float32Array(x.numel).fill(gy[0]!)]);
}

export function mean(x: Tensor): Tensor {
  if (x.numel === 0) throw new ShapeError('mean: the input is empty');
  return mulScalar(sum(x), 1 / x.numel);
}

/** Same data, new shape (one dimension may be -1). Copies nothing. */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  const known = shape.filter((d) => d !== -1);
  const inferred = shape.length - known.length;
  if (inferred > 1 || known.some((d) => !Number.isInteger(d) || d < 0)) {
    throw new ShapeError(`reshape: invalid target shape ${shapeStr(shape)}`);
  }
  const rest = numelOf(known);
  const full = shape.map((d) => (d === -1 ? (rest === 0 ? 0 : x.numel / rest) : d));
  if (numelOf(full) !== x.numel || full.some((d) => !Number.isInteger(d))) {
    throw new ShapeError(`reshape: cannot view ${shapeStr(x.shape)} (${x.numel} elements) as ${shapeStr(shape)}`);
  }
  const y = new Tensor(full, x.data);
  return record(y, 'reshape', [x], (gy) => [gy]);
}

/** Flattens dims startDim..end into one (torch.flatten(x, 1) for a classifier head). */
export function flatten(x: Tensor, startDim = 1): Tensor {
  if (startDim < 0 || startDim >= Math.max(1, x.ndim)) {
    throw new ShapeError(`flatten: start_dim ${startDim} is out of range for shape ${shapeStr(x.shape)}`);
  }
  const head = x.shape.slice(0, startDim);
  return reshape(x, [...head, numelOf(x.shape.slice(startDim))]);
}

/**
 * The parameter-free shortcut of He et al. (option A): subsample by `stride` (x[:, :, ::s, ::s])
 * and zero-pad channels from cIn to cOut, `floor((cOut-cIn)/2)` zero channels in front and the
 * rest behind (the classic CIFAR implementation pads planes/4 on each side).
 */
export function zeroPadShortcut(x: Tensor, cOut: number, stride: number): Tensor {
  expectRank('zero_pad_shortcut', 'input', x, 4, 'N, C, H, W');
  const [n, cIn, h, w] = x.shape as [number, number, number, number];
  if (cOut < cIn) throw new ShapeError(`zero_pad_shortcut: cannot pad ${cIn} channels down to ${cOut}`);
  const y = output([n, cOut, Math.ceil(h / stride), Math.ceil(w / stride)], [x]);
  if (y.isMeta) return y;
  const p = { n, cIn, h, w, cOut, stride };
  const k = kernels();
  k.zeroPadSubsample(y.values, x.values, p, false);
  return record(y, 'zero_pad_shortcut', [x], (gy) => {
    const gx = uninitialized(x.numel);
    k.zeroPadSubsample(gy, gx, p, true);
    return [gx];
  });
}

