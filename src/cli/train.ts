/**
 * `resnet train` and `resnet eval`: the trainer and the evaluator on Fashion-MNIST, CIFAR-10 or
 * an ImageFolder of your own images. The defaults are the recipe of docs/RESULTS.md (ResNet-20 on
 * Fashion-MNIST, 94 %+): 35 epochs, SGD 0.1 with Nesterov momentum 0.9, weight decay 5e-4, one
 * epoch of linear warm-up then cosine decay, crop + flip augmentation, Kaiming init, zero-init of
 * the last BN, batch 128. The seeds' recipe is `--schedule multistep --weight-decay 1e-4
 * --no-nesterov --warmup-epochs 0`. Fine-tuning: --pretrained (file, HF folder, torchvision weights name, Hub repo id),
 * a new head for the dataset's classes, optionally --freeze-backbone.
 *
 * The exported weights (best.safetensors, model.safetensors) record in their metadata the
 * architecture, the dataset, its class names (JSON) and, for ImageFolder, the input size, so that
 * `resnet eval` picks them up and refuses a folder whose classes differ.
 */
import { basename, join, resolve } from 'node:path';
import { DatasetNotFoundError } from '../data/errors.js';
import { StateDictError, UsageError } from '../errors.js';
import { setNumThreads } from '../kernels/registry.js';
import { readCheckpoint } from '../io/checkpoint.js';
import { inferArch } from '../hub/pretrained.js';
import { manualSeed } from '../tensor/rng.js';
import { evaluate, train } from '../train/trainer.js';
import {
  DATASET_NAMES,
  addWeightsMetadata,
  batchSource,
  buildModel,
  buildOptimizer,
  defaultArch,
  evalTransform,
  loadDataset,
  pretrainedArch,
  readWeightsMetadata,
  recordedClasses,
  resolvePretrained,
  trainTransform,
  type LoadDatasetOptions,
} from '../train/setup.js';
import { HELP_OPTION, flag, intOption, shortcutOption, str, type Command, type ParsedArgs } from './args.js';

function num(args: ParsedArgs, name: string, dflt: number, min = 0): number {
  const v = str(args, name);
  if (v === undefined) return dflt;
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n) || n < min) throw new UsageError(`--${name} must be a number >= ${min}, got ${JSON.stringify(v)}`);
  return n;
}

function choice<T extends string>(args: ParsedArgs, name: string, options: readonly T[], dflt: T): T {
  const v = str(args, name) ?? dflt;
  if (!options.includes(v as T)) throw new UsageError(`--${name} must be one of ${options.join(', ')}, got ${JSON.stringify(v)}`);
  return v as T;
}

const DATASETS = DATASET_NAMES;

/** --image-size, --val-fraction and --seed as loadDataset options (only those given). */
function datasetOptions(args: ParsedArgs, seed: number): LoadDatasetOptions {
  const imageSize = intOption(args, 'image-size');
  const vf = str(args, 'val-fraction');
  const valFraction = vf === undefined ? undefined : num(args, 'val-fraction', 0.1, 0);
  if (valFraction !== undefined && valFraction >= 1) throw new UsageError(`--val-fraction must be in [0, 1), got ${JSON.stringify(vf)}`);
  return { ...(imageSize !== undefined ? { imageSize } : {}), ...(valFraction !== undefined ? { valFraction } : {}), seed };
}

function listClasses(c: readonly string[]): string {
  return c.length > 8 ? `${c.slice(0, 8).join(', ')} and ${c.length - 8} more` : c.join(', ');
}

/** Nesterov momentum unless --no-nesterov (both flags together are a usage error). */
function nesterovOption(args: ParsedArgs): boolean {
  if (flag(args, 'nesterov') && flag(args, 'no-nesterov')) throw new UsageError('--nesterov and --no-nesterov contradict each other');
  return !flag(args, 'no-nesterov');
}

export const trainCommand: Command = {
  name: 'train',
  summary: 'Train (or fine-tune) a ResNet on Fashion-MNIST, CIFAR-10 or a folder of your images, with checkpoints, logs and curves.',
  usage: [
    'train [--arch resnet20] [--dataset fashion-mnist|cifar10] [--epochs N] [--batch N] [--lr X] [--out DIR] [options]',
    'train --dataset imagefolder --data DIR [--pretrained <weights>] [--freeze-backbone] [--image-size N] [options]',
  ],
  details: [
    'The defaults are the recipe that reached 94.15% test accuracy on Fashion-MNIST with ResNet-20 (docs/RESULTS.md): ' +
      '35 epochs, batch 128, SGD lr 0.1 with Nesterov momentum 0.9, weight decay 5e-4, 1 epoch of linear warm-up then ' +
      'cosine decay, random crop (4 px padding) + horizontal flip, zero-initialised last BN of each block. The seeds\' ' +
      'step-decay recipe is --schedule multistep --weight-decay 1e-4 --no-nesterov --warmup-epochs 0.',
    'Each epoch ends with a validation pass on the test split, a line in DIR/metrics.csv and DIR/metrics.jsonl, ' +
      'the chart DIR/curves.png, and DIR/checkpoint.safetensors (written atomically; --resume continues from it and ' +
      'reproduces an uninterrupted run exactly). The best model is DIR/best.safetensors (torchvision key names), the ' +
      'last DIR/model.safetensors. A NaN or infinite loss stops the run and leaves the last checkpoint intact.',
    'The dataset is looked for in --data DIR, then $RESNET_DATA_FASHION_MNIST / $RESNET_DATA_CIFAR10, the cache ' +
      '(~/.cache/resnet-ts), then /usr/share/datasets (Debian: apt-get install dataset-fashion-mnist); if absent it is downloaded.',
    '--dataset imagefolder trains on your own images (JPEG, PNG, WebP, GIF, TIFF): --data DIR holds one sub-folder per ' +
      'class (DIR/<class>/<image>; the class names are the folder names); if DIR has train/ and val/ (or test/) ' +
      'sub-folders laid out so, they are used, else --val-fraction of each class is held out for validation (seeded by ' +
      '--seed). Training crops a random part of each image resized to --image-size (RandomResizedCrop) and flips it; ' +
      'validation resizes to --image-size/0.875 and takes the center crop; ImageNet mean/std. The class names go into ' +
      'the metadata of the exported weights.',
    'Fine-tuning: --pretrained takes a weights file (.safetensors, .pth), a Hugging Face model folder or repo id ' +
      '(microsoft/resnet-18), or torchvision weights (IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT, for --arch); without ' +
      '--arch the architecture is recognised from the weights. The fc head is replaced by a fresh one for the ' +
      "dataset's classes; --freeze-backbone trains only that head (BatchNorm running statistics still update, as in " +
      'PyTorch). A lower --lr (e.g. 0.01) usually suits fine-tuning.',
  ],
  options: {
    arch: {
      type: 'string',
      value: '<arch>',
      default: 'resnet20 (resnet18 for imagefolder; with --pretrained, the architecture of the weights)',
      description: "architecture (see 'resnet list'); input channels and classes follow the dataset",
    },
    dataset: { type: 'string', value: '<name>', default: 'fashion-mnist', description: DATASETS.join(' | ') },
    data: { type: 'string', value: 'DIR', description: 'folder holding the dataset files (required for imagefolder: the image folder)' },
    'image-size': { type: 'string', value: 'N', default: '224', description: 'imagefolder: input size the images are cropped/resized to (e.g. 64 for small images)' },
    'val-fraction': { type: 'string', value: 'X', default: '0.1', description: 'imagefolder without train/ and val/ sub-folders: fraction of each class held out for validation' },
    epochs: { type: 'string', value: 'N', default: '35', description: 'epochs to train' },
    batch: { type: 'string', value: 'N', default: '128', description: 'batch size' },
    lr: { type: 'string', value: 'X', default: '0.1', description: 'learning rate (peak for onecycle)' },
    momentum: { type: 'string', value: 'X', default: '0.9', description: 'SGD momentum' },
    'weight-decay': { type: 'string', value: 'X', default: '5e-4', description: 'weight decay (decoupled for adamw)' },
    nesterov: { type: 'boolean', description: 'Nesterov momentum (the default)' },
    'no-nesterov': { type: 'boolean', description: 'plain (heavy-ball) momentum' },
    optimizer: { type: 'string', value: 'sgd|adamw', default: 'sgd', description: 'optimizer' },
    schedule: { type: 'string', value: '<name>', default: 'cosine', description: 'cosine | multistep (x gamma at 50% and 75% of the epochs) | onecycle | constant' },
    milestones: { type: 'string', value: 'E,E', description: 'epochs where multistep multiplies the lr by gamma' },
    gamma: { type: 'string', value: 'X', default: '0.1', description: 'multistep factor' },
    'warmup-epochs': { type: 'string', value: 'N', default: '1 (0 with onecycle, which has its own, or with --epochs 1)', description: 'linear warm-up from lr/10' },
    'label-smoothing': { type: 'string', value: 'X', default: '0', description: 'cross-entropy label smoothing' },
    'clip-grad-norm': { type: 'string', value: 'X', description: 'clip the global gradient norm (advised past ~150 layers)' },
    'no-augment': { type: 'boolean', description: 'no random crop / flip' },
    'no-zero-init': { type: 'boolean', description: 'keep the last BN of each block at 1 (default: zero-init residuals)' },
    shortcut: { type: 'string', value: 'A|B|C', description: 'shortcut type (default: A for CIFAR ResNets, B otherwise)' },
    pretrained: {
      type: 'string',
      value: '<weights>',
      description: 'start from these weights (safetensors, .pth, Hugging Face folder or repo id, IMAGENET1K_V1|IMAGENET1K_V2|DEFAULT); the head is replaced if the class count differs',
    },
    'freeze-backbone': { type: 'boolean', description: 'train only the final fc layer' },
    seed: { type: 'string', value: 'N', default: '0', description: 'seed of initialisation, shuffling and augmentation' },
    workers: { type: 'string', value: 'N', default: '1', description: 'worker threads preparing batches' },
    threads: { type: 'string', value: 'N', description: 'compute threads (default: all cores)' },
    out: { type: 'string', value: 'DIR', default: 'runs/<arch>-<dataset> (imagefolder: runs/<arch>-<folder name>)', description: 'output folder' },
    resume: { type: 'boolean', description: 'continue from DIR/checkpoint.safetensors' },
    help: HELP_OPTION,
  },
  positionals: { min: 0, max: 0 },
  examples: [
    'resnet train',
    'resnet train --arch resnet56 --dataset cifar10 --epochs 160 --out runs/r56',
    'resnet train --out runs/x --resume',
    'resnet train --dataset imagefolder --data photos --pretrained IMAGENET1K_V1 --freeze-backbone --lr 0.01 --epochs 10',
  ],
  async run(args) {
    const archArg = str(args, 'arch');
    const dataset = choice(args, 'dataset', DATASETS, 'fashion-mnist');
    const epochs = intOption(args, 'epochs') ?? 35;
    const batch = intOption(args, 'batch') ?? 128;
    const seed = intOption(args, 'seed', 0) ?? 0;
    const workers = intOption(args, 'workers', 0) ?? 1;
    const threads = intOption(args, 'threads');
    const optimizer = choice(args, 'optimizer', ['sgd', 'adamw'] as const, 'sgd');
    const schedule = choice(args, 'schedule', ['multistep', 'cosine', 'onecycle', 'constant'] as const, 'cosine');
    const milestonesArg = str(args, 'milestones');
    const milestones = milestonesArg?.split(',').map((s) => {
      const n = Number(s.trim());
      if (!Number.isInteger(n) || n < 1) throw new UsageError(`--milestones must be epochs like 15,22, got ${JSON.stringify(milestonesArg)}`);
      return n;
    });
    const warmupEpochs = intOption(args, 'warmup-epochs', 0) ?? (schedule === 'onecycle' || epochs === 1 ? 0 : 1);
    if (warmupEpochs > 0 && schedule === 'onecycle') throw new UsageError('--warmup-epochs does not combine with --schedule onecycle (it has its own warm-up)');
    if (warmupEpochs >= epochs) throw new UsageError(`--warmup-epochs (${warmupEpochs}) must be less than --epochs (${epochs})`);
    const clip = str(args, 'clip-grad-norm') === undefined ? undefined : num(args, 'clip-grad-norm', 0, 1e-12);
    const dataDir = str(args, 'data');
    const dataOpts = datasetOptions(args, seed);
    if (threads !== undefined) setNumThreads(threads);
    manualSeed(seed);

    const data = await loadDataset(dataset, dataDir, dataOpts);
    const pretrainedSpec = str(args, 'pretrained');
    const pretrained = pretrainedSpec === undefined ? undefined : await resolvePretrained(pretrainedSpec, archArg ?? defaultArch(dataset), { progress: true, removeOnSignal: true });
    const arch = archArg ?? (pretrained && pretrainedArch(pretrained)) ?? defaultArch(dataset);
    const dataName = dataset === 'imagefolder' ? basename(resolve(dataDir!)) : dataset;
    const out = str(args, 'out') ?? join('runs', `${arch}-${dataName}`);
    const model = buildModel({
      arch,
      numClasses: data.classes.length,
      inChannels: data.channels,
      zeroInitResidual: !flag(args, 'no-zero-init'),
      shortcut: shortcutOption(args),
      pretrained,
      freezeBackbone: flag(args, 'freeze-backbone'),
    });
    if (data.train.length === 0) throw new DatasetNotFoundError(`no training images in ${data.trainName ?? dataset}`);
    const trainData = batchSource(data.train, { batchSize: batch, shuffle: true, seed, transform: trainTransform(data, !flag(args, 'no-augment')), workers, dropLast: false });
    // No validation images (--val-fraction 0): the best model is chosen by training accuracy.
    const testData = data.test.length === 0 ? null : batchSource(data.test, { batchSize: 256, shuffle: false, seed, transform: evalTransform(data), workers });
    const recipe = {
      momentum: num(args, 'momentum', 0.9),
      weightDecay: num(args, 'weight-decay', 5e-4),
      nesterov: nesterovOption(args),
      warmupEpochs,
    };
    const { optimizer: opt, scheduler, per } = buildOptimizer(model.parameters(), {
      optimizer,
      lr: num(args, 'lr', 0.1),
      momentum: recipe.momentum,
      weightDecay: recipe.weightDecay,
      nesterov: recipe.nesterov,
      schedule,
      milestones,
      gamma: num(args, 'gamma', 0.1),
      warmupEpochs,
      epochs,
      batchesPerEpoch: trainData.batches,
    });
    const config = {
      arch,
      dataset,
      ...(dataset === 'imagefolder' ? { data: resolve(dataDir!), imageSize: data.size, train: data.trainName, val: data.testName } : {}),
      ...(pretrained ? { pretrained: pretrained.source, freezeBackbone: flag(args, 'freeze-backbone') } : {}),
      epochs,
      batch,
      seed,
      optimizer,
      schedule,
      lr: opt.paramGroups[0]!.lr,
      ...recipe,
      argv: process.argv.slice(2),
    };
    const history = await train(model, opt, scheduler, trainData, testData, {
      epochs,
      out,
      labelSmoothing: num(args, 'label-smoothing', 0),
      ...(clip === undefined ? {} : { clipGradNorm: clip }),
      schedulerPer: per,
      resume: flag(args, 'resume'),
      classes: [...data.classes],
      title: `${arch} on ${dataName}`,
      config,
    });
    // What `resnet eval` needs to check and preprocess a dataset for these weights.
    const record: Record<string, string> = {
      dataset,
      classes: JSON.stringify(data.classes),
      ...(dataset === 'imagefolder' ? { image_size: String(data.size) } : {}),
      ...(pretrained ? { pretrained: pretrained.source } : {}),
    };
    for (const f of ['best.safetensors', 'model.safetensors']) addWeightsMetadata(join(out, f), record);
    const last = history[history.length - 1];
    const what = testData === null ? 'training' : dataset === 'imagefolder' ? 'validation' : 'test';
    const accOf = (h: (typeof history)[number]): number => (testData === null ? h.trainAcc : (h.valAcc ?? 0));
    const best = Math.max(...history.map(accOf));
    return last ? `final ${what} accuracy ${(100 * accOf(last)).toFixed(2)}%, best ${(100 * best).toFixed(2)}% (${out})\n` : `nothing to do: ${out} already has ${epochs} epochs\n`;
  },
};

export const evalCommand: Command = {
  name: 'eval',
  summary: 'Evaluate trained weights on a dataset: accuracy, per-class accuracy, confusion matrix.',
  usage: [
    'eval --weights <file> [--arch resnet20] [--dataset fashion-mnist|cifar10] [--data DIR] [--split test|train] [--json]',
    'eval --weights <file> --dataset imagefolder --data DIR [--image-size N] [--json]',
  ],
  details: [
    '--dataset imagefolder evaluates DIR/val (or DIR/test; with --split train, DIR/train), else the whole of DIR ' +
      '(--val-fraction X with the training run\'s --seed re-creates the part it held out), resized to --image-size/0.875 ' +
      'and center-cropped to --image-size. Weights written by `resnet train` carry their class names: a folder whose ' +
      'classes differ is refused.',
  ],
  options: {
    weights: { type: 'string', value: '<file>', description: 'weights (safetensors, .pth, Hugging Face folder)' },
    arch: { type: 'string', value: '<arch>', default: 'the "arch" recorded in the file, else recognised from the weights, else resnet20 (resnet18 for imagefolder)', description: 'architecture' },
    dataset: { type: 'string', value: '<name>', default: 'the dataset recorded in the file, else fashion-mnist', description: DATASETS.join(' | ') },
    data: { type: 'string', value: 'DIR', description: 'folder holding the dataset files (required for imagefolder: the image folder)' },
    split: { type: 'string', value: 'test|train', default: 'test', description: 'which split to evaluate (imagefolder: val/ or test/, or train/)' },
    'image-size': { type: 'string', value: 'N', default: 'the size recorded in the file, else 224', description: 'imagefolder: input size (as in training)' },
    'val-fraction': { type: 'string', value: 'X', description: 'imagefolder without val/ or test/: evaluate only the part a training run with this --val-fraction held out' },
    seed: { type: 'string', value: 'N', default: '0', description: 'the training run\'s --seed (with --val-fraction)' },
    shortcut: { type: 'string', value: 'A|B|C', description: 'shortcut type the weights were trained with' },
    batch: { type: 'string', value: 'N', default: '256', description: 'batch size' },
    json: { type: 'boolean', description: 'print JSON' },
    help: HELP_OPTION,
  },
  positionals: { min: 0, max: 0 },
  examples: ['resnet eval --weights runs/resnet20-fashion-mnist/best.safetensors', 'resnet eval --weights runs/resnet18-photos/best.safetensors --dataset imagefolder --data photos'],
  async run(args) {
    const weights = str(args, 'weights');
    if (!weights) throw new UsageError('eval needs --weights <file>');
    const meta = readWeightsMetadata(weights);
    const dataset = choice(args, 'dataset', DATASETS, (DATASETS as readonly string[]).includes(meta['dataset'] ?? '') ? (meta['dataset'] as (typeof DATASETS)[number]) : 'fashion-mnist');
    const split = choice(args, 'split', ['test', 'train'] as const, 'test');
    const seed = intOption(args, 'seed', 0) ?? 0;
    const dataOpts = datasetOptions(args, seed);
    const recordedSize = Number(meta['image_size']);
    if (dataset === 'imagefolder' && dataOpts.imageSize === undefined && Number.isInteger(recordedSize) && recordedSize > 0) dataOpts.imageSize = recordedSize;
    if (dataset === 'imagefolder' && !str(args, 'data')) await loadDataset(dataset, undefined); // the usage error, before reading weights
    const { stateDict } = readCheckpoint(weights);
    const data = await loadDataset(dataset, str(args, 'data'), { ...dataOpts, forEval: true });
    const recorded = recordedClasses(meta);
    if (recorded && recorded.join('\0') !== data.classes.join('\0')) {
      throw new StateDictError(
        `${weights} was trained on ${recorded.length} classes (${listClasses(recorded)}) but ${data.testName ?? dataset} has ${data.classes.length} (${listClasses(data.classes)})`,
      );
    }
    const arch = str(args, 'arch') ?? (meta['arch'] || undefined) ?? inferArch(stateDict) ?? defaultArch(dataset);
    const model = buildModel({ arch, numClasses: data.classes.length, inChannels: data.channels, shortcut: shortcutOption(args) });
    try {
      model.loadStateDict(stateDict);
    } catch (e) {
      if (e instanceof StateDictError) throw new StateDictError(`${weights} does not fit ${arch} with ${data.classes.length} classes and ${data.channels} input channels: ${e.message}`);
      throw e;
    }
    model.eval();
    const ds = split === 'test' ? data.test : data.train;
    const where = dataset === 'imagefolder' ? ((split === 'test' ? data.testName : data.trainName) ?? str(args, 'data')!) : `${dataset} ${split}`;
    if (ds.length === 0) throw new DatasetNotFoundError(`no images to evaluate in ${where}`);
    const src = batchSource(ds, { batchSize: intOption(args, 'batch') ?? 256, shuffle: false, seed: 0, transform: evalTransform(data), workers: 1 });
    const r = await evaluate(model, src, data.classes.length);
    const perClass = r.confusion.perClassAccuracy();
    if (flag(args, 'json')) {
      return `${JSON.stringify({ weights, arch, dataset, split, ...(dataset === 'imagefolder' ? { data: where } : {}), images: r.confusion.total(), top1: r.top1, top5: r.top5, loss: r.loss, perClass: Object.fromEntries(data.classes.map((c, i) => [c, perClass[i]])), confusion: Array.from({ length: data.classes.length }, (_, i) => Array.from(r.confusion.counts.subarray(i * data.classes.length, (i + 1) * data.classes.length))) })}\n`;
    }
    const lines = [
      `${weights} (${arch}) on ${where} (${r.confusion.total()} images)`,
      `top-1 accuracy ${(100 * r.top1).toFixed(2)}%   top-5 ${(100 * r.top5).toFixed(2)}%   loss ${r.loss.toFixed(4)}`,
      '',
      'per-class accuracy:',
      ...data.classes.map((c, i) => `  ${String(i).padStart(2)} ${c.padEnd(Math.max(14, ...data.classes.map((n) => n.length)))} ${(100 * perClass[i]!).toFixed(2)}%`),
      '',
      'confusion matrix (rows: true class, columns: predicted):',
      r.confusion.format([...data.classes]),
    ];
    return `${lines.join('\n')}\n`;
  },
};
