/**
 * Turns training settings into the objects the trainer runs: datasets and loaders with the
 * recipe's augmentation, the model (fresh, or from pretrained weights with a new head and an
 * optionally frozen backbone), the optimizer and the LR schedule. Shared by `resnet train`,
 * `resnet eval` and scripts.
 *
 * Datasets: Fashion-MNIST and CIFAR-10 (the seeds' recipe: pad-4 random crop + flip at the native
 * size), and ImageFolder (your own photos, root/<class>/<image>: torchvision's ImageNet recipe,
 * RandomResizedCrop + flip for training, resize to size/0.875 + center crop for evaluation,
 * ImageNet mean/std, at --image-size). An ImageFolder root with train/ and val/ (or test/)
 * sub-folders uses them; a flat root is split (seeded, stratified) by valFraction.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { StateDictError, UsageError } from '../errors.js';
import { createModel, getModelSpec, type ModelOptions } from '../models/registry.js';
import type { ResNet } from '../models/resnet.js';
import type { StateDict } from '../nn/module.js';
import { Linear } from '../nn/layers.js';
import { readCheckpoint } from '../io/checkpoint.js';
import { readSafetensors, writeSafetensors } from '../io/safetensors.js';
import { SGD } from '../optim/sgd.js';
import { AdamW } from '../optim/adamw.js';
import { LRScheduler, oneCycleLR, sequentialLR } from '../optim/schedulers.js';
import type { Tensor } from '../tensor/tensor.js';
import { IMAGE_EXTENSIONS, decodeImage } from '../image/decode.js';
import { IMAGENET_MEAN, IMAGENET_STD } from '../image/preprocess.js';
import { isRepoId, hfModelSnapshot } from '../hub/hf.js';
import { HubError, type ProgressStream } from '../hub/download.js';
import { downloadTorchvisionWeights } from '../hub/torchvision.js';
import { getTorchvisionWeights, isWeightsName } from '../hub/weights.js';
import { inferArch } from '../hub/pretrained.js';
import {
  CIFAR10_CLASSES,
  CIFAR10_MEAN,
  CIFAR10_STD,
  CenterCrop,
  Compose,
  DataLoader,
  DatasetNotFoundError,
  FASHION_MNIST_CLASSES,
  FASHION_MNIST_MEAN,
  FASHION_MNIST_STD,
  ImageFolder,
  Normalize,
  RandomCrop,
  RandomHorizontalFlip,
  RandomResizedCrop,
  Resize,
  Subset,
  ToFloat,
  loadCifar10,
  loadFashionMnist,
  type AnyDataset,
  type Transform,
} from '../data/index.js';
import type { BatchSource, Optimizer } from './trainer.js';

export type DatasetName = 'fashion-mnist' | 'cifar10' | 'imagefolder';

export const DATASET_NAMES: readonly DatasetName[] = ['fashion-mnist', 'cifar10', 'imagefolder'];

/** The architecture used when none is named: resnet20 (CIFAR-style) for the small datasets, resnet18 for ImageFolder. */
export function defaultArch(dataset: string): string {
  return dataset === 'imagefolder' ? 'resnet18' : 'resnet20';
}

export interface DataSpec {
  train: AnyDataset;
  test: AnyDataset;
  classes: readonly string[];
  channels: number;
  mean: readonly number[];
  std: readonly number[];
  /** Input size (height = width) the model sees. */
  size: number;
  /**
   * Augmentation / preprocessing recipe: 'cifar' (default; images already `size`: pad-4 random
   * crop + flip) or 'imagenet' (images of any size: RandomResizedCrop + flip; eval resize + center crop).
   */
  recipe?: 'cifar' | 'imagenet';
  /** What the two parts are, for messages ("photos/train", "photos (90% split, seed 0)"). */
  trainName?: string;
  testName?: string;
}

export interface LoadDatasetOptions {
  /** ImageFolder: input size (default 224). */
  imageSize?: number;
  /** ImageFolder without train/ + val/ sub-folders: fraction held out for validation (default 0.1). */
  valFraction?: number;
  /** Seed of that split (default 0). */
  seed?: number;
  /**
   * ImageFolder for evaluation: a folder without val/ or test/ is evaluated whole (unless
   * valFraction is given, which re-creates the training run's held-out part), and a folder with
   * only val/ (or test/) is accepted.
   */
  forEval?: boolean;
}

export async function loadDataset(name: string, dir?: string, opts: LoadDatasetOptions = {}): Promise<DataSpec> {
  if (name === 'imagefolder') {
    if (dir === undefined || dir === '') {
      throw new UsageError('--dataset imagefolder needs --data DIR (a folder of <class>/<image> sub-folders, or of train/ and val/ folders laid out so)');
    }
    return loadImageFolder(dir, opts);
  }
  if (opts.imageSize !== undefined) throw new UsageError(`--image-size applies to --dataset imagefolder only (${name} is used at its native size)`);
  if (opts.valFraction !== undefined) throw new UsageError(`--val-fraction applies to --dataset imagefolder only (${name} has its own test split)`);
  const o = dir === undefined ? {} : { dir };
  if (name === 'fashion-mnist') {
    const [train, test] = await Promise.all([loadFashionMnist({ ...o, split: 'train' }), loadFashionMnist({ ...o, split: 'test' })]);
    return { train, test, classes: FASHION_MNIST_CLASSES, channels: 1, mean: FASHION_MNIST_MEAN, std: FASHION_MNIST_STD, size: 28, recipe: 'cifar' };
  }
  if (name === 'cifar10') {
    const [train, test] = await Promise.all([loadCifar10({ ...o, split: 'train' }), loadCifar10({ ...o, split: 'test' })]);
    return { train, test, classes: CIFAR10_CLASSES, channels: 3, mean: CIFAR10_MEAN, std: CIFAR10_STD, size: 32, recipe: 'cifar' };
  }
  throw new UsageError(`unknown dataset "${name}" (known: ${DATASET_NAMES.join(', ')})`);
}

function isDir(p: string): boolean {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
}

/** The train/ and val/ (or test/) sub-folders of an ImageFolder root, where they exist. */
export function imageFolderLayout(dir: string): { train?: string; val?: string } {
  const train = path.join(dir, 'train');
  const val = ['val', 'test'].map((n) => path.join(dir, n)).find(isDir);
  return { ...(isDir(train) ? { train } : {}), ...(val !== undefined ? { val } : {}) };
}

/**
 * An ImageFolder dataset (decoded with sharp; JPEG, PNG, WebP, GIF, TIFF) with the ImageNet recipe:
 * DIR/train + DIR/val (or DIR/test) when they exist, else DIR split by valFraction (see
 * LoadDatasetOptions for evaluation).
 */
export async function loadImageFolder(dir: string, opts: LoadDatasetOptions = {}): Promise<DataSpec> {
  const size = opts.imageSize ?? 224;
  if (!Number.isInteger(size) || size < 1) throw new UsageError(`--image-size must be a positive integer, got ${size}`);
  const valFraction = opts.valFraction;
  if (valFraction !== undefined && !(valFraction >= 0 && valFraction < 1)) throw new UsageError(`--val-fraction must be in [0, 1), got ${valFraction}`);
  const seed = opts.seed ?? 0;
  if (!fs.existsSync(dir)) throw new DatasetNotFoundError(`ImageFolder: ${dir} does not exist`);
  const folder = (root: string): ImageFolder => new ImageFolder(root, { decode: decodeImage, extensions: IMAGE_EXTENSIONS, channels: 3 });
  const layout = imageFolderLayout(dir);
  const base = { channels: 3, mean: [...IMAGENET_MEAN], std: [...IMAGENET_STD], size, recipe: 'imagenet' as const };
  const pct = (f: number): string => `${Math.round(f * 1000) / 10}%`;
  if (layout.val !== undefined && (layout.train !== undefined || opts.forEval)) {
    if (valFraction !== undefined) {
      throw new UsageError(`--val-fraction does not apply: ${dir} has its own ${path.basename(layout.val)}/ folder`);
    }
    const test = folder(layout.val);
    let train: ImageFolder | Subset = new Subset(test, []);
    if (layout.train !== undefined) {
      const tr = folder(layout.train);
      if (tr.classes.join('\0') !== test.classes.join('\0')) {
        throw new DatasetNotFoundError(
          `ImageFolder: ${layout.train} and ${layout.val} have different class folders (${describeClasses(tr.classes)} vs ${describeClasses(test.classes)}); both need the same ones`,
        );
      }
      train = tr;
    }
    return { ...base, train, test, classes: test.classes, trainName: layout.train ?? '(none)', testName: layout.val };
  }
  if (layout.val !== undefined && layout.train === undefined) {
    throw new DatasetNotFoundError(`ImageFolder: ${dir} has ${path.basename(layout.val)}/ but no train/ folder (expected ${dir}/train/<class>/<image>)`);
  }
  const root = layout.train ?? dir;
  const all = folder(root);
  if (opts.forEval && valFraction === undefined) {
    return { ...base, train: all, test: all, classes: all.classes, trainName: root, testName: `${root} (whole folder)` };
  }
  const f = valFraction ?? 0.1;
  const { train, val } = all.split(f, { seed, stratified: true });
  return {
    ...base,
    train,
    test: val,
    classes: all.classes,
    trainName: `${root} (${pct(1 - f)} split, seed ${seed})`,
    testName: `${root} (${pct(f)} held out, seed ${seed})`,
  };
}

function describeClasses(c: readonly string[]): string {
  return c.length > 6 ? `${c.slice(0, 6).join(', ')} and ${c.length - 6} more` : c.join(', ');
}

/**
 * The training transform. 'cifar' recipe: random crop with 4 pixels of padding + horizontal flip,
 * then normalize. 'imagenet' recipe: RandomResizedCrop(size) + horizontal flip, then normalize.
 * Without augmentation, the evaluation transform.
 */
export function trainTransform(d: DataSpec, augment: boolean): Transform {
  if (!augment) return evalTransform(d);
  const norm = [new ToFloat(), new Normalize([...d.mean], [...d.std])];
  if (d.recipe === 'imagenet') return new Compose([new RandomResizedCrop(d.size), new RandomHorizontalFlip(), ...norm]);
  return new Compose([new RandomCrop(d.size, 4), new RandomHorizontalFlip(), ...norm]);
}

/**
 * The evaluation transform: normalize ('cifar'), or torchvision's classic ImageNet preset
 * ('imagenet'): resize the shorter side to round(size / 0.875) (256 for 224), center crop `size`.
 */
export function evalTransform(d: DataSpec): Transform {
  const norm = [new ToFloat(), new Normalize([...d.mean], [...d.std])];
  if (d.recipe === 'imagenet') return new Compose([new Resize(Math.round(d.size / 0.875)), new CenterCrop(d.size), ...norm]);
  return new Compose(norm);
}

/** A DataLoader seen as the trainer's BatchSource. */
export function batchSource(ds: AnyDataset, o: { batchSize: number; shuffle: boolean; seed: number; transform: Transform; workers: number; dropLast?: boolean }): BatchSource {
  const loader = new DataLoader(ds, { batchSize: o.batchSize, shuffle: o.shuffle, seed: o.seed, transform: o.transform, workers: o.workers, dropLast: o.dropLast ?? false, persistentWorkers: o.workers > 0 });
  const n = ds.length;
  return {
    batches: o.dropLast ? Math.floor(n / o.batchSize) : Math.ceil(n / o.batchSize),
    setEpoch: (e) => loader.setEpoch(e),
    [Symbol.asyncIterator]: () => loader[Symbol.asyncIterator](),
  };
}

/** Pretrained weights read into memory: where they came from and the torchvision-named tensors. */
export interface PretrainedWeights {
  source: string;
  stateDict: StateDict;
}

export interface ResolvePretrainedOptions {
  /** Download progress on stderr (default false). */
  progress?: boolean | ProgressStream;
  /** Remove partial downloads on SIGINT/SIGTERM (command-line use). */
  removeOnSignal?: boolean;
}

/**
 * Reads pretrained weights from anything `resnet classify` loads: a local file (.safetensors,
 * .pth) or Hugging Face model folder; a torchvision weights name (IMAGENET1K_V1, IMAGENET1K_V2,
 * DEFAULT) for `arch`, from the torch hub cache or downloaded; a Hub repo id ("microsoft/resnet-18"),
 * from the Hugging Face cache or downloaded.
 */
export async function resolvePretrained(spec: string, arch: string | undefined, opts: ResolvePretrainedOptions = {}): Promise<PretrainedWeights> {
  const dl = { ...(opts.progress !== undefined ? { progress: opts.progress } : {}), ...(opts.removeOnSignal ? { removeOnSignal: true } : {}) };
  if (fs.existsSync(spec)) return { source: spec, stateDict: readCheckpoint(spec).stateDict };
  if (isWeightsName(spec)) {
    if (arch === undefined) throw new UsageError(`--pretrained ${spec} names torchvision weights: say for which architecture with --arch`);
    const w = getTorchvisionWeights(arch, spec);
    const file = await downloadTorchvisionWeights(w, dl);
    return { source: `torchvision ${arch} ${w.name}`, stateDict: readCheckpoint(file).stateDict };
  }
  if (isRepoId(spec)) {
    let dir: string;
    try {
      dir = (await hfModelSnapshot(spec, dl)).dir;
    } catch (e) {
      if (e instanceof HubError) throw new HubError(`${e.message}; no local file or folder ${JSON.stringify(spec)} exists either`);
      throw e;
    }
    return { source: spec, stateDict: readCheckpoint(dir).stateDict };
  }
  return { source: spec, stateDict: readCheckpoint(spec).stateDict }; // "file not found"
}

/** The registered architecture whose keys and shapes are exactly those of `weights` (head included), if any. */
export function pretrainedArch(weights: PretrainedWeights): string | undefined {
  return inferArch(weights.stateDict);
}

export interface ModelSetup {
  arch: string;
  numClasses: number;
  inChannels: number;
  zeroInitResidual?: boolean;
  shortcut?: ModelOptions['shortcut'];
  /**
   * Weights to start from: a path (any format readCheckpoint reads) or weights already read
   * (resolvePretrained). The head is replaced when its size differs.
   */
  pretrained?: string | PretrainedWeights | undefined;
  /** Train only the fc layer (BatchNorm running statistics of the backbone still update in train mode, as in PyTorch). */
  freezeBackbone?: boolean;
}

export function buildModel(s: ModelSetup): ResNet {
  getModelSpec(s.arch);
  const model = createModel(s.arch, {
    numClasses: s.numClasses,
    inChannels: s.inChannels,
    ...(s.zeroInitResidual === undefined ? {} : { zeroInitResidual: s.zeroInitResidual }),
    ...(s.shortcut === undefined ? {} : { shortcut: s.shortcut }),
  });
  if (s.pretrained) {
    const source = typeof s.pretrained === 'string' ? s.pretrained : s.pretrained.source;
    const stateDict = new Map(typeof s.pretrained === 'string' ? readCheckpoint(s.pretrained).stateDict : s.pretrained.stateDict);
    const fcW = stateDict.get('fc.weight');
    const keepHead = fcW !== undefined && fcW.shape[0] === s.numClasses && fcW.shape[1] === model.fc.inFeatures;
    if (!keepHead) {
      stateDict.delete('fc.weight');
      stateDict.delete('fc.bias');
    }
    let missingKeys: string[];
    let unexpectedKeys: string[];
    try {
      ({ missingKeys, unexpectedKeys } = model.loadStateDict(stateDict, { strict: false }));
    } catch (e) {
      if (e instanceof StateDictError) throw new StateDictError(`${source} does not fit ${s.arch}: ${e.message}`);
      throw e;
    }
    const missingBody = missingKeys.filter((k) => !k.startsWith('fc.'));
    if (missingBody.length || unexpectedKeys.length) {
      throw new StateDictError(
        `${source} does not fit ${s.arch}: ` +
          [missingBody.length ? `missing ${missingBody.slice(0, 8).join(', ')}${missingBody.length > 8 ? ` and ${missingBody.length - 8} more` : ''}` : '', unexpectedKeys.length ? `unexpected ${unexpectedKeys.slice(0, 8).join(', ')}` : '']
            .filter(Boolean)
            .join('; '),
      );
    }
    if (!keepHead) {
      // A fresh head for the new classes (PyTorch's default Linear init).
      const fc = new Linear(model.fc.inFeatures, s.numClasses);
      model.fc.weight.copy_(fc.weight);
      model.fc.bias!.copy_(fc.bias!);
    }
  }
  if (s.freezeBackbone) {
    for (const [k, p] of model.namedParameters()) p.requiresGrad = k.startsWith('fc.');
  }
  return model;
}

export interface OptimSetup {
  optimizer: 'sgd' | 'adamw';
  lr: number;
  momentum: number;
  weightDecay: number;
  nesterov: boolean;
  schedule: 'multistep' | 'cosine' | 'onecycle' | 'constant';
  milestones?: number[] | undefined;
  gamma: number;
  warmupEpochs: number;
  epochs: number;
  batchesPerEpoch: number;
}

export function buildOptimizer(params: Tensor[], o: OptimSetup): { optimizer: Optimizer; scheduler: LRScheduler | null; per: 'batch' | 'epoch' } {
  const trainable = params.filter((p) => p.requiresGrad);
  if (trainable.length === 0) throw new UsageError('no trainable parameters (is everything frozen?)');
  const optimizer: Optimizer =
    o.optimizer === 'adamw'
      ? new AdamW(trainable, { lr: o.lr, weightDecay: o.weightDecay })
      : new SGD(trainable, { lr: o.lr, momentum: o.momentum, weightDecay: o.weightDecay, nesterov: o.nesterov });
  const total = o.epochs * o.batchesPerEpoch;
  const warm = o.warmupEpochs * o.batchesPerEpoch;
  let main: ((t: number, base: number) => number) | null;
  switch (o.schedule) {
    case 'constant':
      main = null;
      break;
    case 'onecycle':
      return { optimizer, scheduler: oneCycleLR(optimizer, { maxLr: o.lr, totalSteps: total }), per: 'batch' };
    case 'cosine':
      main = (t, base) => (base * (1 + Math.cos((Math.PI * t) / Math.max(1, total - warm)))) / 2;
      break;
    case 'multistep': {
      const ms = (o.milestones ?? [Math.round(o.epochs * 0.5), Math.round(o.epochs * 0.75)]).map((e) => e * o.batchesPerEpoch - warm);
      main = (t, base) => base * o.gamma ** ms.filter((m) => m <= t).length;
      break;
    }
    default:
      throw new UsageError(`unknown schedule "${String(o.schedule)}" (multistep, cosine, onecycle, constant)`);
  }
  const steady = main ?? ((_t: number, base: number) => base);
  // Every schedule steps per batch (smooth decay; MultiStep milestones are whole epochs).
  if (warm > 0) {
    const warmup = (t: number, base: number): number => base * (0.1 + (0.9 * t) / warm);
    return { optimizer, scheduler: sequentialLR(optimizer, [{ fn: warmup }, { fn: steady }], [warm]), per: 'batch' };
  }
  return { optimizer, scheduler: new LRScheduler(optimizer, steady, o.schedule), per: 'batch' };
}

// ---------------------------------------------------------------------------------------------
// What a run records in its exported weights
// ---------------------------------------------------------------------------------------------

/**
 * The `__metadata__` of a safetensors file, reading only its header; {} for anything else (a .pth
 * file, a folder, an unreadable or malformed file: readCheckpoint reports those).
 */
export function readWeightsMetadata(file: string): Record<string, string> {
  let fd: number | undefined;
  try {
    if (!fs.statSync(file).isFile()) return {};
    fd = fs.openSync(file, 'r');
    const head = Buffer.alloc(8);
    if (fs.readSync(fd, head, 0, 8, 0) !== 8) return {};
    const n = Number(head.readBigUInt64LE(0));
    if (!(n > 0 && n <= 100_000_000)) return {};
    const json = Buffer.alloc(n);
    if (fs.readSync(fd, json, 0, n, 8) !== n) return {};
    const meta = (JSON.parse(json.toString('utf8')) as Record<string, unknown>)['__metadata__'];
    if (meta === null || typeof meta !== 'object') return {};
    return Object.fromEntries(Object.entries(meta).filter((e): e is [string, string] => typeof e[1] === 'string'));
  } catch {
    return {};
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

/** The class names recorded in weights metadata ("classes": a JSON array of strings), if any. */
export function recordedClasses(meta: Record<string, string>): string[] | undefined {
  const raw = meta['classes'];
  if (raw === undefined) return undefined;
  try {
    const v: unknown = JSON.parse(raw);
    return Array.isArray(v) && v.every((c) => typeof c === 'string') ? (v as string[]) : undefined;
  } catch {
    return undefined;
  }
}

/** Adds entries to the metadata of a safetensors file (rewritten atomically); no-op when the file is absent. */
export function addWeightsMetadata(file: string, extra: Record<string, string>): void {
  if (!fs.existsSync(file)) return;
  const { tensors, metadata } = readSafetensors(file);
  writeSafetensors(file, tensors, { ...metadata, ...extra });
}
