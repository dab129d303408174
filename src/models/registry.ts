/**
 * The model zoo: one-line builders (as torchvision's) and a registry that creates a model by name.
 * Builders are data: each entry names its block, stage depths and options. Names never repeat
 * (the registry refuses a duplicate), and an unknown name lists the known ones.
 */
import { UsageError } from '../errors.js';
import { ResNet, type BlockKind, type ResNetOptions } from './resnet.js';

export interface ModelSpec {
  name: string;
  family: 'resnet' | 'resnext' | 'wide_resnet' | 'cifar_resnet' | 'plain' | 'cifar_plain';
  block: BlockKind;
  layers: readonly number[];
  /** Options fixed by the architecture (user options are applied on top, except these). */
  fixed: ResNetOptions;
  /** Input [C, H, W] the architecture was designed for (summaries and `resnet list` use it). */
  defaultInput: readonly [number, number, number];
  description: string;
}

const specs = new Map<string, ModelSpec>();

function define(spec: ModelSpec): void {
  if (specs.has(spec.name)) throw new Error(`model "${spec.name}" is registered twice`);
  specs.set(spec.name, spec);
}

const IMAGENET: [number, number, number] = [3, 224, 224];
const CIFAR: [number, number, number] = [3, 32, 32];

const imagenetDepths: [number, BlockKind, number[]][] = [
  [18, 'basic', [2, 2, 2, 2]],
  [34, 'basic', [3, 4, 6, 3]],
  [50, 'bottleneck', [3, 4, 6, 3]],
  [101, 'bottleneck', [3, 4, 23, 3]],
  [152, 'bottleneck', [3, 8, 36, 3]],
];
for (const [depth, block, layers] of imagenetDepths) {
  define({ name: `resnet${depth}`, family: 'resnet', block, layers, fixed: {}, defaultInput: IMAGENET, description: `ResNet-${depth} (He et al. 2015; torchvision v1.5 bottleneck)` });
  define({ name: `plain${depth}`, family: 'plain', block, layers, fixed: { plain: true }, defaultInput: IMAGENET, description: `plain twin of ResNet-${depth} (no identity paths)` });
}
const variants: [string, ModelSpec['family'], number[], ResNetOptions, string][] = [
  ['resnext50_32x4d', 'resnext', [3, 4, 6, 3], { groups: 32, widthPerGroup: 4 }, 'ResNeXt-50 32x4d (Xie et al. 2016)'],
  ['resnext101_32x8d', 'resnext', [3, 4, 23, 3], { groups: 32, widthPerGroup: 8 }, 'ResNeXt-101 32x8d'],
  ['resnext101_64x4d', 'resnext', [3, 4, 23, 3], { groups: 64, widthPerGroup: 4 }, 'ResNeXt-101 64x4d'],
  ['wide_resnet50_2', 'wide_resnet', [3, 4, 6, 3], { widthPerGroup: 128 }, 'Wide ResNet-50-2 (Zagoruyko & Komodakis 2016)'],
  ['wide_resnet101_2', 'wide_resnet', [3, 4, 23, 3], { widthPerGroup: 128 }, 'Wide ResNet-101-2'],
];
for (const [name, family, layers, fixed, description] of variants) {
  define({ name, family, block: 'bottleneck', layers, fixed, defaultInput: IMAGENET, description });
}
for (const depth of [20, 32, 44, 56, 110]) {
  const n = (depth - 2) / 6;
  const layers = [n, n, n];
  define({ name: `resnet${depth}`, family: 'cifar_resnet', block: 'basic', layers, fixed: { stem: 'cifar' }, defaultInput: CIFAR, description: `CIFAR ResNet-${depth} (He et al. 2015, §4.2; 6n+2 with n=${n})` });
  define({ name: `plain${depth}`, family: 'cifar_plain', block: 'basic', layers, fixed: { stem: 'cifar', plain: true }, defaultInput: CIFAR, description: `CIFAR plain-${depth} (no identity paths)` });
}

/** Options a user may set on a registered architecture. */
export type ModelOptions = Pick<ResNetOptions, 'numClasses' | 'inChannels' | 'zeroInitResidual' | 'shortcut' | 'replaceStrideWithDilation'>;

export function listModels(): ModelSpec[] {
  return [...specs.values()];
}

export function getModelSpec(name: string): ModelSpec {
  const s = specs.get(name);
  if (!s) throw new UsageError(`unknown architecture "${name}"; known: ${[...specs.keys()].join(', ')}`);
  return s;
}

export function createModel(name: string, opts: ModelOptions = {}): ResNet {
  const s = getModelSpec(name);
  return new ResNet(s.block, s.layers, { ...opts, ...s.fixed });
}

/** The CIFAR ResNet of depth 6n+2 (20, 32, 44, 56, 110, or any other such depth). */
export function cifarResNet(depth: number, opts: ModelOptions & { plain?: boolean } = {}): ResNet {
  if (!Number.isInteger(depth) || depth < 8 || (depth - 2) % 6 !== 0) {
    throw new UsageError(`CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...), got ${depth}`);
  }
  const n = (depth - 2) / 6;
  return new ResNet('basic', [n, n, n], { ...opts, stem: 'cifar' });
}

type Builder = (opts?: ModelOptions) => ResNet;
const builder = (name: string): Builder => (opts = {}) => createModel(name, opts);

export const resnet18 = builder('resnet18');
export const resnet34 = builder('resnet34');
export const resnet50 = builder('resnet50');
export const resnet101 = builder('resnet101');
export const resnet152 = builder('resnet152');
export const resnext50_32x4d = builder('resnext50_32x4d');
export const resnext101_32x8d = builder('resnext101_32x8d');
export const resnext101_64x4d = builder('resnext101_64x4d');
export const wide_resnet50_2 = builder('wide_resnet50_2');
export const wide_resnet101_2 = builder('wide_resnet101_2');
export const resnet20 = builder('resnet20');
export const resnet32 = builder('resnet32');
export const resnet44 = builder('resnet44');
export const resnet56 = builder('resnet56');
export const resnet110 = builder('resnet110');
export const plain18 = builder('plain18');
export const plain34 = builder('plain34');
export const plain20 = builder('plain20');
export const plain56 = builder('plain56');
