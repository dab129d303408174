/**
 * Weight initialisation, with PyTorch's formulas (torch.nn.init): same distributions and scales,
 * drawn from resnet-ts's own seedable generator. Meta tensors are left alone.
 */
import { ShapeError } from '../errors.js';
import { Generator, defaultGenerator } from '../tensor/rng.js';
import { Tensor, shapeStr } from '../tensor/tensor.js';

export type FanMode = 'fan_in' | 'fan_out';

/** fan_in = size(1)·receptive field, fan_out = size(0)·receptive field (as torch.nn.init). */
export function fans(t: Tensor): { fanIn: number; fanOut: number } {
  if (t.ndim < 2) throw new ShapeError(`init: fan in/out needs a tensor with at least 2 dims, got ${shapeStr(t.shape)}`);
  const receptive = t.shape.slice(2).reduce((a, b) => a * b, 1);
  return { fanIn: t.shape[1]! * receptive, fanOut: t.shape[0]! * receptive };
}

/** Gain for leaky_relu with negative slope a (relu: a = 0 → sqrt(2)). */
export function leakyReluGain(a: number): number {
  return Math.sqrt(2 / (1 + a * a));
}

export function uniform_(t: Tensor, low: number, high: number, gen: Generator = defaultGenerator): Tensor {
  if (t.data) {
    for (let i = 0; i < t.data.length; i++) t.data[i] = gen.uniform(low, high);
    t.version++;
  }
  return t;
}

export function normal_(t: Tensor, mean: number, std: number, gen: Generator = defaultGenerator): Tensor {
  if (t.data) {
    for (let i = 0; i < t.data.length; i++) t.data[i] = mean + std * gen.normal();
    t.version++;
  }
  return t;
}

export function constant_(t: Tensor, v: number): Tensor {
  return t.fill_(v);
}

/** kaiming_normal_(mode, nonlinearity='relu' or leaky slope a). */
export function kaimingNormal_(t: Tensor, opts: { a?: number; mode?: FanMode } = {}, gen: Generator = defaultGenerator): Tensor {
  const { fanIn, fanOut } = fans(t);
  const fan = (opts.mode ?? 'fan_in') === 'fan_in' ? fanIn : fanOut;
  return normal_(t, 0, leakyReluGain(opts.a ?? 0) / Math.sqrt(fan), gen);
}

/** kaiming_uniform_: U(-b, b) with b = gain·sqrt(3/fan). */
export function kaimingUniform_(t: Tensor, opts: { a?: number; mode?: FanMode } = {}, gen: Generator = defaultGenerator): Tensor {
  const { fanIn, fanOut } = fans(t);
  const fan = (opts.mode ?? 'fan_in') === 'fan_in' ? fanIn : fanOut;
  const bound = leakyReluGain(opts.a ?? 0) * Math.sqrt(3 / fan);
  return uniform_(t, -bound, bound, gen);
}

/**
 * PyTorch's default for Conv2d and Linear (reset_parameters): weight kaiming_uniform_(a=√5),
 * i.e. U(±1/√fan_in), and bias U(±1/√fan_in).
 */
export function defaultLayerInit(weight: Tensor, bias: Tensor | null, gen: Generator = defaultGenerator): void {
  kaimingUniform_(weight, { a: Math.sqrt(5) }, gen);
  if (bias) {
    const { fanIn } = fans(weight);
    const bound = fanIn > 0 ? 1 / Math.sqrt(fanIn) : 0;
    uniform_(bias, -bound, bound, gen);
  }
}
