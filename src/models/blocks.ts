/**
 * Residual blocks, as torchvision.models.resnet: BasicBlock (two 3x3 convs, ResNet-18/34) and
 * Bottleneck (1x1 → 3x3 → 1x1, ResNet-50+), plus their "plain" twins without the identity path,
 * and the parameter-free option-A shortcut.
 *
 * Attribute names are the checkpoint schema: conv1, bn1, conv2, bn2, (conv3, bn3), downsample.
 */
import { UsageError } from '../errors.js';
import * as F from '../ops/index.js';
import { BatchNorm2d, Conv2d, ReLU } from '../nn/layers.js';
import { Module } from '../nn/module.js';
import type { Tensor } from '../tensor/tensor.js';

/** relu(bn(x)): one fused op unless a hook watches either module (then the two module calls, so
 * the hooks see both). */
export function bnRelu(bn: BatchNorm2d, relu: ReLU, x: Tensor): Tensor {
  return bn.observed || relu.observed ? relu.call(bn.call(x)) : bn.forwardRelu(x);
}

/** conv(relu(bn(x))): one fused op (in training the batch norm's output is never stored, where the
 * convolution applies it as it reads x: F.batchNormReluConv2d) unless a hook watches bn, the ReLU or
 * the convolution (then the module calls, so the hooks see each). */
export function bnReluConv(bn: BatchNorm2d, relu: ReLU, conv: Conv2d, x: Tensor): Tensor {
  return bn.observed || relu.observed || conv.observed ? conv.call(bnRelu(bn, relu, x)) : bn.forwardReluConv(x, conv);
}

/** relu(a + b), the join of a residual block: one fused op unless a hook watches the ReLU module. */
export function addRelu(relu: ReLU, a: Tensor, b: Tensor): Tensor {
  return relu.observed ? relu.call(F.add(a, b)) : F.addRelu(a, b);
}

/** relu(bn(x) + identity): one fused op (batch norm, add and ReLU in one pass; bn's own output
 * never stored) unless a hook watches bn or the ReLU module; then bn runs before `identity` is
 * computed, torchvision's order, so that the hooks see the calls as they would there. */
export function bnAddRelu(bn: BatchNorm2d, relu: ReLU, x: Tensor, identity: () => Tensor): Tensor {
  if (bn.observed || relu.observed) {
    const out = bn.call(x);
    return addRelu(relu, out, identity());
  }
  return bn.forwardAddRelu(x, identity());
}

/** 3x3 convolution with padding = dilation (keeps the size at stride 1), no bias. */
export function conv3x3(inPlanes: number, outPlanes: number, stride = 1, groups = 1, dilation = 1): Conv2d {
  return new Conv2d(inPlanes, outPlanes, 3, { stride, padding: dilation, groups, dilation, bias: false });
}

/** 1x1 convolution, no bias. */
export function conv1x1(inPlanes: number, outPlanes: number, stride = 1): Conv2d {
  return new Conv2d(inPlanes, outPlanes, 1, { stride, bias: false });
}

export interface BlockArgs {
  stride?: number;
  /** The shortcut branch where the identity does not fit (or on every block, option C). */
  downsample?: Module | null;
  groups?: number;
  baseWidth?: number;
  dilation?: number;
}

/** Shortcut option A: subsample + zero-pad channels; no parameters. */
export class ZeroPadShortcut extends Module {
  constructor(readonly inPlanes: number, readonly outPlanes: number, readonly stride: number) {
    super();
  }

  forward(x: Tensor): Tensor {
    return F.zeroPadShortcut(x, this.outPlanes, this.stride);
  }
}

export class BasicBlock extends Module {
  static readonly expansion = 1;
  readonly conv1: Conv2d;
  readonly bn1: BatchNorm2d;
  readonly relu: ReLU;
  readonly conv2: Conv2d;
  readonly bn2: BatchNorm2d;
  readonly downsample: Module | null;

  constructor(inPlanes: number, planes: number, a: BlockArgs = {}) {
    super();
    if ((a.groups ?? 1) !== 1 || (a.baseWidth ?? 64) !== 64) {
      throw new UsageError('BasicBlock only supports groups=1 and widthPerGroup=64 (use a Bottleneck network for ResNeXt/Wide ResNet)');
    }
    if ((a.dilation ?? 1) > 1) throw new UsageError('BasicBlock does not support dilation > 1 (replaceStrideWithDilation needs Bottleneck)');
    this.conv1 = this.addModule('conv1', conv3x3(inPlanes, planes, a.stride ?? 1));
    this.bn1 = this.addModule('bn1', new BatchNorm2d(planes));
    this.relu = this.addModule('relu', new ReLU());
    this.conv2 = this.addModule('conv2', conv3x3(planes, planes));
    this.bn2 = this.addModule('bn2', new BatchNorm2d(planes));
    this.downsample = this.addModule('downsample', a.downsample ?? null);
  }

  /** The residual branch F(x) up to its last batch norm (exclusive). */
  protected branch(x: Tensor): Tensor {
    return bnReluConv(this.bn1, this.relu, this.conv2, this.conv1.call(x));
  }

  forward(x: Tensor): Tensor {
    // Order of calls as torchvision (residual branch, then downsample), so summaries list rows alike.
    return bnAddRelu(this.bn2, this.relu, this.branch(x), () => (this.downsample ? this.downsample.call(x) : x));
  }

  /** The BN whose weight zero-init-residual sets to 0. */
  get lastBn(): BatchNorm2d {
    return this.bn2;
  }
}

export class Bottleneck extends Module {
  /** torchvision's Bottleneck places the stride on the 3x3 conv ("ResNet V1.5"), not the first 1x1. */
  static readonly expansion = 4;
  readonly conv1: Conv2d;
  readonly bn1: BatchNorm2d;
  readonly conv2: Conv2d;
  readonly bn2: BatchNorm2d;
  readonly conv3: Conv2d;
  readonly bn3: BatchNorm2d;
  readonly relu: ReLU;
  readonly downsample: Module | null;

  constructor(inPlanes: number, planes: number, a: BlockArgs = {}) {
    super();
    const groups = a.groups ?? 1;
    const width = Math.floor(planes * ((a.baseWidth ?? 64) / 64)) * groups;
    if (width < 1) throw new UsageError(`Bottleneck: width ${width} (planes ${planes}, widthPerGroup ${a.baseWidth}, groups ${groups}) must be positive`);
    this.conv1 = this.addModule('conv1', conv1x1(inPlanes, width));
    this.bn1 = this.addModule('bn1', new BatchNorm2d(width));
    this.conv2 = this.addModule('conv2', conv3x3(width, width, a.stride ?? 1, groups, a.dilation ?? 1));
    this.bn2 = this.addModule('bn2', new BatchNorm2d(width));
    this.conv3 = this.addModule('conv3', conv1x1(width, planes * Bottleneck.expansion));
    this.bn3 = this.addModule('bn3', new BatchNorm2d(planes * Bottleneck.expansion));
    this.relu = this.addModule('relu', new ReLU());
    this.downsample = this.addModule('downsample', a.downsample ?? null);
  }

  /** The residual branch F(x) up to its last batch norm (exclusive). */
  protected branch(x: Tensor): Tensor {
    const out = bnReluConv(this.bn1, this.relu, this.conv2, this.conv1.call(x));
    return bnReluConv(this.bn2, this.relu, this.conv3, out);
  }

  forward(x: Tensor): Tensor {
    return bnAddRelu(this.bn3, this.relu, this.branch(x), () => (this.downsample ? this.downsample.call(x) : x));
  }

  get lastBn(): BatchNorm2d {
    return this.bn3;
  }
}

/** BasicBlock without the identity path: relu(bn2(conv2(relu(bn1(conv1(x)))))). */
export class PlainBasicBlock extends BasicBlock {
  override forward(x: Tensor): Tensor {
    return bnRelu(this.bn2, this.relu, this.branch(x));
  }
}

/** Bottleneck without the identity path. */
export class PlainBottleneck extends Bottleneck {
  override forward(x: Tensor): Tensor {
    return bnRelu(this.bn3, this.relu, this.branch(x));
  }
}

export type BlockClass = typeof BasicBlock | typeof Bottleneck;
