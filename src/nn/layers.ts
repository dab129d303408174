/**
 * The layers ResNets are built from, with PyTorch's names, attributes, state-dict keys and default
 * initialisation: Conv2d, BatchNorm2d, ReLU, MaxPool2d, AdaptiveAvgPool2d, Linear, Flatten,
 * Identity, Sequential.
 */
import { ShapeError } from '../errors.js';
import * as F from '../ops/index.js';
import { Tensor, empty, ones, zeros } from '../tensor/tensor.js';
import { defaultLayerInit } from './init.js';
import { Module } from './module.js';

export type IntOrPair = number | [number, number];

export interface Conv2dArgs {
  stride?: IntOrPair;
  padding?: IntOrPair;
  dilation?: IntOrPair;
  groups?: number;
  bias?: boolean;
}

export class Conv2d extends Module {
  readonly inChannels: number;
  readonly outChannels: number;
  readonly kernelSize: [number, number];
  readonly stride: [number, number];
  readonly padding: [number, number];
  readonly dilation: [number, number];
  readonly groups: number;
  readonly weight: Tensor;
  readonly bias: Tensor | null;

  constructor(inChannels: number, outChannels: number, kernelSize: IntOrPair, a: Conv2dArgs = {}) {
    super();
    const groups = a.groups ?? 1;
    for (const [n, v] of [['in_channels', inChannels], ['out_channels', outChannels], ['groups', groups]] as const) {
      if (!Number.isInteger(v) || v < 1) throw new ShapeError(`Conv2d: ${n} must be a positive integer, got ${v}`);
    }
    if (inChannels % groups !== 0) throw new ShapeError(`Conv2d: in_channels (${inChannels}) must be divisible by groups (${groups})`);
    if (outChannels % groups !== 0) throw new ShapeError(`Conv2d: out_channels (${outChannels}) must be divisible by groups (${groups})`);
    this.inChannels = inChannels;
    this.outChannels = outChannels;
    this.kernelSize = toPair(kernelSize);
    this.stride = toPair(a.stride ?? 1);
    this.padding = toPair(a.padding ?? 0);
    this.dilation = toPair(a.dilation ?? 1);
    this.groups = groups;
    this.weight = this.addParameter('weight', empty([outChannels, inChannels / groups, ...this.kernelSize]));
    this.bias = this.addParameter('bias', a.bias === false ? null : empty([outChannels]));
    defaultLayerInit(this.weight, this.bias);
  }

  forward(x: Tensor): Tensor {
    return F.conv2d(x, this.weight, this.bias, this.options);
  }

  /** The functional conv2d's options of this layer. */
  get options(): F.Conv2dOptions {
    return { stride: this.stride, padding: this.padding, dilation: this.dilation, groups: this.groups };
  }
}

export interface BatchNorm2dArgs {
  eps?: number;
  momentum?: number | null;
  affine?: boolean;
  trackRunningStats?: boolean;
}

export class BatchNorm2d extends Module {
  readonly numFeatures: number;
  readonly eps: number;
  readonly momentum: number | null;
  readonly weight: Tensor | null;
  readonly bias: Tensor | null;
  readonly runningMean: Tensor | null;
  readonly runningVar: Tensor | null;
  readonly numBatchesTracked: Tensor | null;

  constructor(numFeatures: number, a: BatchNorm2dArgs = {}) {
    super();
    if (!Number.isInteger(numFeatures) || numFeatures < 1) throw new ShapeError(`BatchNorm2d: num_features must be a positive integer, got ${numFeatures}`);
    this.numFeatures = numFeatures;
    this.eps = a.eps ?? 1e-5;
    this.momentum = a.momentum === undefined ? 0.1 : a.momentum;
    const affine = a.affine ?? true;
    const track = a.trackRunningStats ?? true;
    this.weight = this.addParameter('weight', affine ? ones([numFeatures]) : null);
    this.bias = this.addParameter('bias', affine ? zeros([numFeatures]) : null);
    this.runningMean = this.addBuffer('running_mean', track ? zeros([numFeatures]) : null);
    this.runningVar = this.addBuffer('running_var', track ? ones([numFeatures]) : null);
    this.numBatchesTracked = this.addBuffer('num_batches_tracked', track ? zeros([], 'int64') : null);
  }

  forward(x: Tensor): Tensor {
    return this.run(x, false);
  }

  /** relu(this(x)) as one op: batch norm and ReLU in the same pass, forward and backward. Runs no
   * hooks (see bnRelu in src/models/blocks.ts, which uses it only when no hook is registered). */
  forwardRelu(x: Tensor): Tensor {
    return this.run(x, true);
  }

  /** relu(this(x) + residual) as one op (a residual block's join: the batch norm's own output is
   * never stored, in training). Runs no hooks (see addRelu in src/models/blocks.ts). */
  forwardAddRelu(x: Tensor, residual: Tensor): Tensor {
    return this.run(x, true, residual);
  }

  /** conv(relu(this(x))) as one op (F.batchNormReluConv2d: in training the batch norm's output is
   * never stored where the convolution can apply it as it reads x). Runs no hooks of this module
   * or of conv (see bnReluConv in src/models/blocks.ts, which uses it only when none is registered). */
  forwardReluConv(x: Tensor, conv: Conv2d): Tensor {
    return this.run(x, true, undefined, conv);
  }

  private run(x: Tensor, relu: boolean, residual?: Tensor, conv?: Conv2d): Tensor {
    if (x.ndim !== 4) throw new ShapeError(`BatchNorm2d: expected 4-D input (N, C, H, W), got ${x.ndim}-D`);
    if (x.shape[1] !== this.numFeatures) {
      throw new ShapeError(`BatchNorm2d: expected ${this.numFeatures} channels, got input with ${x.shape[1]}`);
    }
    // As PyTorch: batch statistics in training or when no running stats are tracked.
    const useBatchStats = this.training || this.runningMean === null;
    let nbt: number | undefined;
    if (this.training && this.numBatchesTracked && !x.isMeta && this.numBatchesTracked.data) {
      nbt = ++this.numBatchesTracked.data[0]!;
      this.numBatchesTracked.version++;
    }
    const o = { training: useBatchStats, momentum: this.momentum, eps: this.eps, ...(nbt === undefined ? {} : { numBatchesTracked: nbt }) };
    if (conv) return F.batchNormReluConv2d(x, this.runningMean, this.runningVar, this.weight, this.bias, o, conv.weight, conv.bias, conv.options);
    return F.batchNorm(x, this.runningMean, this.runningVar, this.weight, this.bias, { ...o, relu, ...(residual === undefined ? {} : { residual }) });
  }
}

export class ReLU extends Module {
  forward(x: Tensor): Tensor {
    return F.relu(x);
  }
}

export class Identity extends Module {
  forward(x: Tensor): Tensor {
    return x;
  }
}

export class Flatten extends Module {
  constructor(readonly startDim = 1) {
    super();
  }

  forward(x: Tensor): Tensor {
    return F.flatten(x, this.startDim);
  }
}

export class MaxPool2d extends Module {
  constructor(readonly options: F.MaxPool2dOptions) {
    super();
  }

  forward(x: Tensor): Tensor {
    return F.maxPool2d(x, this.options);
  }
}

export class AdaptiveAvgPool2d extends Module {
  constructor(readonly outputSize: IntOrPair) {
    super();
  }

  forward(x: Tensor): Tensor {
    return F.adaptiveAvgPool2d(x, this.outputSize);
  }
}

export class Linear extends Module {
  readonly weight: Tensor;
  readonly bias: Tensor | null;

  constructor(readonly inFeatures: number, readonly outFeatures: number, opts: { bias?: boolean } = {}) {
    super();
    for (const [n, v] of [['in_features', inFeatures], ['out_features', outFeatures]] as const) {
      if (!Number.isInteger(v) || v < 1) throw new ShapeError(`Linear: ${n} must be a positive integer, got ${v}`);
    }
    this.weight = this.addParameter('weight', empty([outFeatures, inFeatures]));
    this.bias = this.addParameter('bias', opts.bias === false ? null : empty([outFeatures]));
    defaultLayerInit(this.weight, this.bias);
  }

  forward(x: Tensor): Tensor {
    return F.linear(x, this.weight, this.bias);
  }
}

/** Children named "0", "1", ... run in order (torch.nn.Sequential). */
export class Sequential extends Module {
  readonly layers: Module[];

  constructor(...layers: Module[]) {
    super();
    this.layers = layers;
    layers.forEach((m, i) => this.addModule(String(i), m));
  }

  forward(x: Tensor): Tensor {
    let y = x;
    for (const m of this.layers) y = m.call(y);
    return y;
  }

  get length(): number {
    return this.layers.length;
  }

  at(i: number): Module {
    const m = this.layers[i];
    if (!m) throw new ShapeError(`Sequential: index ${i} out of range (length ${this.layers.length})`);
    return m;
  }
}

function toPair(v: IntOrPair): [number, number] {
  return typeof v === 'number' ? [v, v] : [v[0], v[1]];
}
