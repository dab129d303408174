/**
 * Turns training settings into the objects the trainer runs: datasets and loaders with the
 * recipe's augmentation, the model (fresh, or from pretrained weights with a new head and an
 * optionally frozen backbone), the optimizer and the LR schedule. Shared by `resnet train`,
 * `resnet eval` and scripts.
 */
import { StateDictError, UsageError } from '../errors.js';
import { createModel, getModelSpec, type ModelOptions } from '../models/registry.js';
import type { ResNet } from '../models/resnet.js';
import { Linear } from '../nn/layers.js';
import { readCheckpoint } from '../io/checkpoint.js';
import { SGD } from '../optim/sgd.js';
import { AdamW } from '../optim/adamw.js';
import { LRScheduler, oneCycleLR, sequentialLR } from '../optim/schedulers.js';
import type { Tensor } from '../tensor/tensor.js';
import {
  CIFAR10_CLASSES,
  CIFAR10_MEAN,
  CIFAR10_STD,
  Compose,
  DataLoader,
  FASHION_MNIST_CLASSES,
  FASHION_MNIST_MEAN,
  FASHION_MNIST_STD,
  Normalize,
  RandomCrop,
  RandomHorizontalFlip,
  ToFloat,
  loadCifar10,
  loadFashionMnist,
  type AnyDataset,
  type Transform,
} from '../data/index.js';
import type { BatchSource, Optimizer } from './trainer.js';

export type DatasetName = 'fashion-mnist' | 'cifar10';

export interface DataSpec {
  train: AnyDataset;
  test: AnyDataset;
  classes: readonly string[];
  channels: number;
  mean: readonly number[];
  std: readonly number[];
  size: number;
}

export async function loadDataset(name: string, dir?: string): Promise<DataSpec> {
  const opts = dir === undefined ? {} : { dir };
  if (name === 'fashion-mnist') {
    const [train, test] = await Promise.all([loadFashionMnist({ ...opts, split: 'train' }), loadFashionMnist({ ...opts, split: 'test' })]);
    return { train, test, classes: FASHION_MNIST_CLASSES, channels: 1, mean: FASHION_MNIST_MEAN, std: FASHION_MNIST_STD, size: 28 };
  }
  if (name === 'cifar10') {
    const [train, test] = await Promise.all([loadCifar10({ ...opts, split: 'train' }), loadCifar10({ ...opts, split: 'test' })]);
    return { train, test, classes: CIFAR10_CLASSES, channels: 3, mean: CIFAR10_MEAN, std: CIFAR10_STD, size: 32 };
  }
  throw new UsageError(`unknown dataset "${name}" (known: fashion-mnist, cifar10)`);
}

/** The seeds' recipe: random crop with 4 pixels of padding + horizontal flip, then normalize. */
export function trainTransform(d: DataSpec, augment: boolean): Transform {
  const norm = [new ToFloat(), new Normalize([...d.mean], [...d.std])];
  return new Compose(augment ? [new RandomCrop(d.size, 4), new RandomHorizontalFlip(), ...norm] : norm);
}

export function evalTransform(d: DataSpec): Transform {
  return new Compose([new ToFloat(), new Normalize([...d.mean], [...d.std])]);
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

export interface ModelSetup {
  arch: string;
  numClasses: number;
  inChannels: number;
  zeroInitResidual?: boolean;
  shortcut?: ModelOptions['shortcut'];
  /** Weights to start from (any format readCheckpoint reads); the head is replaced when its size differs. */
  pretrained?: string | undefined;
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
    const { stateDict } = readCheckpoint(s.pretrained);
    const fcW = stateDict.get('fc.weight');
    const keepHead = fcW !== undefined && fcW.shape[0] === s.numClasses && fcW.shape[1] === model.fc.inFeatures;
    if (!keepHead) {
      stateDict.delete('fc.weight');
      stateDict.delete('fc.bias');
    }
    const { missingKeys, unexpectedKeys } = model.loadStateDict(stateDict, { strict: false });
    const missingBody = missingKeys.filter((k) => !k.startsWith('fc.'));
    if (missingBody.length || unexpectedKeys.length) {
      throw new StateDictError(
        `${s.pretrained} does not fit ${s.arch}: ` +
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
