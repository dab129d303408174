/**
 * ResNet, shaped like torchvision.models.resnet.ResNet, with the options the paper's experiments
 * need on top (each defaults to torchvision's behaviour, so defaults give identical networks):
 *
 * - `shortcut` 'B' (torchvision: 1x1 projection where the shape changes), 'A' (zero-padding
 *   identity, no parameters) or 'C' (a projection on every block) — the A/B/C study of He et al.
 * - `plain`: the same stack with the identity paths removed (the degradation experiment).
 * - `stem: 'cifar'`, `widths`, `stemWidth`: the CIFAR networks of §4.2 (3x3 stem, 16/32/64, no
 *   max-pool) and reduced widths for small tests; Hugging Face configs map onto these too.
 */
import { UsageError } from '../errors.js';
import * as F from '../ops/index.js';
import { kaimingNormal_, constant_ } from '../nn/init.js';
import { AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Linear, MaxPool2d, ReLU, Sequential } from '../nn/layers.js';
import { Module } from '../nn/module.js';
import type { Tensor } from '../tensor/tensor.js';
import { BasicBlock, Bottleneck, PlainBasicBlock, PlainBottleneck, ZeroPadShortcut, bnRelu, conv1x1, type BlockClass } from './blocks.js';

export type ShortcutType = 'A' | 'B' | 'C';

export interface ResNetOptions {
  numClasses?: number;
  inChannels?: number;
  /** Grouped 3x3 convs (ResNeXt cardinality). Bottleneck only. */
  groups?: number;
  /** Bottleneck width per group; 128 gives Wide ResNet-50-2. */
  widthPerGroup?: number;
  /** One flag per stage after the first: replace its stride by dilation. */
  replaceStrideWithDilation?: readonly boolean[];
  /** Zero the last BN of each block so every block starts as the identity. */
  zeroInitResidual?: boolean;
  shortcut?: ShortcutType;
  plain?: boolean;
  /** Planes of each stage; its length is the number of stages. */
  widths?: readonly number[];
  stemWidth?: number;
  stem?: 'imagenet' | 'cifar';
}

export type BlockKind = 'basic' | 'bottleneck';

export class ResNet extends Module {
  readonly conv1: Conv2d;
  readonly bn1: BatchNorm2d;
  readonly relu: ReLU;
  readonly maxpool: MaxPool2d | null;
  readonly stages: Sequential[];
  readonly avgpool: AdaptiveAvgPool2d;
  readonly fc: Linear;
  readonly numFeatures: number;
  readonly options: Readonly<Required<ResNetOptions>> & { block: BlockKind; layers: readonly number[] };

  private inplanes: number;
  private dilation = 1;

  constructor(block: BlockKind, layers: readonly number[], o: ResNetOptions = {}) {
    super();
    const stem = o.stem ?? 'imagenet';
    const widths = o.widths ?? (stem === 'cifar' ? [16, 32, 64] : [64, 128, 256, 512]);
    const stemWidth = o.stemWidth ?? widths[0]!;
    const opts = {
      numClasses: o.numClasses ?? (stem === 'cifar' ? 10 : 1000),
      inChannels: o.inChannels ?? 3,
      groups: o.groups ?? 1,
      widthPerGroup: o.widthPerGroup ?? 64,
      replaceStrideWithDilation: o.replaceStrideWithDilation ?? layers.slice(1).map(() => false),
      zeroInitResidual: o.zeroInitResidual ?? false,
      shortcut: o.shortcut ?? (stem === 'cifar' ? 'A' : 'B'),
      plain: o.plain ?? false,
      widths,
      stemWidth,
      stem,
      block,
      layers,
    };
    validate(opts);
    this.options = opts;
    const blockClass: BlockClass = block === 'basic' ? (opts.plain ? PlainBasicBlock : BasicBlock) : opts.plain ? PlainBottleneck : Bottleneck;

    this.inplanes = stemWidth;
    this.conv1 = this.addModule(
      'conv1',
      stem === 'cifar'
        ? new Conv2d(opts.inChannels, stemWidth, 3, { stride: 1, padding: 1, bias: false })
        : new Conv2d(opts.inChannels, stemWidth, 7, { stride: 2, padding: 3, bias: false }),
    );
    this.bn1 = this.addModule('bn1', new BatchNorm2d(stemWidth));
    this.relu = this.addModule('relu', new ReLU());
    this.maxpool = stem === 'cifar' ? null : this.addModule('maxpool', new MaxPool2d({ kernelSize: 3, stride: 2, padding: 1 }));
    this.stages = layers.map((n, i) =>
      this.addModule(`layer${i + 1}`, this.makeLayer(blockClass, widths[i]!, n, i === 0 ? 1 : 2, i === 0 ? false : opts.replaceStrideWithDilation[i - 1]!)),
    );
    this.avgpool = this.addModule('avgpool', new AdaptiveAvgPool2d([1, 1]));
    this.numFeatures = widths[widths.length - 1]! * blockClass.expansion;
    this.fc = this.addModule('fc', new Linear(this.numFeatures, opts.numClasses));

    for (const m of this.modules()) {
      if (m instanceof Conv2d) kaimingNormal_(m.weight, { mode: 'fan_out' });
      else if (m instanceof BatchNorm2d && m.weight && m.bias) {
        constant_(m.weight, 1);
        constant_(m.bias, 0);
      }
    }
    if (opts.zeroInitResidual) {
      for (const m of this.modules()) {
        if ((m instanceof BasicBlock || m instanceof Bottleneck) && m.lastBn.weight) constant_(m.lastBn.weight, 0);
      }
    }
  }

  /** torchvision's _make_layer, with the shortcut options. */
  private makeLayer(block: BlockClass, planes: number, blocks: number, stride: number, dilate: boolean): Sequential {
    const { groups, widthPerGroup: baseWidth, shortcut, plain } = this.options;
    const previousDilation = this.dilation;
    if (dilate) {
      this.dilation *= stride;
      stride = 1;
    }
    const out = planes * block.expansion;
    const shortcutFor = (inp: number, s: number): Module | null => {
      if (plain) return null;
      const changes = s !== 1 || inp !== out;
      if (shortcut === 'C' || (shortcut === 'B' && changes)) return new Sequential(conv1x1(inp, out, s), new BatchNorm2d(out));
      if (shortcut === 'A' && changes) return new ZeroPadShortcut(inp, out, s);
      return null;
    };
    const list: Module[] = [
      new block(this.inplanes, planes, { stride, downsample: shortcutFor(this.inplanes, stride), groups, baseWidth, dilation: previousDilation }),
    ];
    this.inplanes = out;
    for (let i = 1; i < blocks; i++) {
      list.push(new block(this.inplanes, planes, { downsample: shortcutFor(this.inplanes, 1), groups, baseWidth, dilation: this.dilation }));
    }
    return new Sequential(...list);
  }

  /** The stem: conv1 → bn1 → relu (→ maxpool). */
  forwardStem(x: Tensor): Tensor {
    const y = bnRelu(this.bn1, this.relu, this.conv1.call(x));
    return this.maxpool ? this.maxpool.call(y) : y;
  }

  /** Pooled features [N, numFeatures] (the input of fc): for embeddings and transfer learning. */
  forwardFeatures(x: Tensor): Tensor {
    let y = this.forwardStem(x);
    for (const s of this.stages) y = s.call(y);
    return F.flatten(this.avgpool.call(y), 1);
  }

  forward(x: Tensor): Tensor {
    return this.fc.call(this.forwardFeatures(x));
  }
}

function validate(o: Required<ResNetOptions> & { block: BlockKind; layers: readonly number[] }): void {
  const posInt = (v: number): boolean => Number.isInteger(v) && v >= 1;
  if (o.layers.length < 1 || !o.layers.every(posInt)) throw new UsageError(`ResNet: layers must be positive integers, got [${o.layers.join(', ')}]`);
  if (o.widths.length !== o.layers.length || !o.widths.every(posInt)) {
    throw new UsageError(`ResNet: widths must be ${o.layers.length} positive integers (one per stage), got [${o.widths.join(', ')}]`);
  }
  for (const [name, v] of [['numClasses', o.numClasses], ['inChannels', o.inChannels], ['groups', o.groups], ['widthPerGroup', o.widthPerGroup], ['stemWidth', o.stemWidth]] as const) {
    if (!posInt(v)) throw new UsageError(`ResNet: ${name} must be a positive integer, got ${v}`);
  }
  if (o.replaceStrideWithDilation.length !== o.layers.length - 1) {
    throw new UsageError(`ResNet: replaceStrideWithDilation should have ${o.layers.length - 1} elements (one per stage after the first), got ${o.replaceStrideWithDilation.length}`);
  }
  if (!['A', 'B', 'C'].includes(o.shortcut)) throw new UsageError(`ResNet: shortcut must be 'A', 'B' or 'C', got ${JSON.stringify(o.shortcut)}`);
  if (o.stem !== 'imagenet' && o.stem !== 'cifar') throw new UsageError(`ResNet: stem must be 'imagenet' or 'cifar', got ${JSON.stringify(o.stem)}`);
}
