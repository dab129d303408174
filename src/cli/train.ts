/**
 * `resnet train` and `resnet eval`: the trainer and the evaluator on Fashion-MNIST or CIFAR-10,
 * with the seeds' recipe as defaults (SGD 0.1, momentum 0.9, weight decay 1e-4, step decay,
 * crop + flip augmentation, Kaiming init, zero-init of the last BN, batch 128).
 */
import { join } from 'node:path';
import { UsageError } from '../errors.js';
import { setNumThreads } from '../kernels/registry.js';
import { readCheckpoint } from '../io/checkpoint.js';
import { manualSeed } from '../tensor/rng.js';
import { evaluate, train } from '../train/trainer.js';
import { batchSource, buildModel, buildOptimizer, evalTransform, loadDataset, trainTransform } from '../train/setup.js';
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

const DATASETS = ['fashion-mnist', 'cifar10'] as const;

export const trainCommand: Command = {
  name: 'train',
  summary: 'Train (or fine-tune) a ResNet on Fashion-MNIST or CIFAR-10, with checkpoints, logs and curves.',
  usage: ['train [--arch resnet20] [--dataset fashion-mnist|cifar10] [--epochs N] [--batch N] [--lr X] [--out DIR] [options]'],
  details: [
    'Each epoch ends with a validation pass on the test split, a line in DIR/metrics.csv and DIR/metrics.jsonl, ' +
      'the chart DIR/curves.png, and DIR/checkpoint.safetensors (written atomically; --resume continues from it and ' +
      'reproduces an uninterrupted run exactly). The best model is DIR/best.safetensors (torchvision key names), the ' +
      'last DIR/model.safetensors. A NaN or infinite loss stops the run and leaves the last checkpoint intact.',
    'The dataset is looked for in --data DIR, then $RESNET_DATA_FASHION_MNIST / $RESNET_DATA_CIFAR10, the cache ' +
      '(~/.cache/resnet-ts), then /usr/share/datasets (Debian: apt-get install dataset-fashion-mnist); if absent it is downloaded.',
  ],
  options: {
    arch: { type: 'string', value: '<arch>', default: 'resnet20', description: "architecture (see 'resnet list'); input channels and classes follow the dataset" },
    dataset: { type: 'string', value: '<name>', default: 'fashion-mnist', description: DATASETS.join(' | ') },
    data: { type: 'string', value: 'DIR', description: 'folder holding the dataset files' },
    epochs: { type: 'string', value: 'N', default: '30', description: 'epochs to train' },
    batch: { type: 'string', value: 'N', default: '128', description: 'batch size' },
    lr: { type: 'string', value: 'X', default: '0.1', description: 'learning rate (peak for onecycle)' },
    momentum: { type: 'string', value: 'X', default: '0.9', description: 'SGD momentum' },
    'weight-decay': { type: 'string', value: 'X', default: '1e-4', description: 'weight decay (decoupled for adamw)' },
    nesterov: { type: 'boolean', description: 'Nesterov momentum' },
    optimizer: { type: 'string', value: 'sgd|adamw', default: 'sgd', description: 'optimizer' },
    schedule: { type: 'string', value: '<name>', default: 'multistep', description: 'multistep (x gamma at 50% and 75% of the epochs) | cosine | onecycle | constant' },
    milestones: { type: 'string', value: 'E,E', description: 'epochs where multistep multiplies the lr by gamma' },
    gamma: { type: 'string', value: 'X', default: '0.1', description: 'multistep factor' },
    'warmup-epochs': { type: 'string', value: 'N', default: '0', description: 'linear warm-up from lr/10 (not with onecycle)' },
    'label-smoothing': { type: 'string', value: 'X', default: '0', description: 'cross-entropy label smoothing' },
    'clip-grad-norm': { type: 'string', value: 'X', description: 'clip the global gradient norm (advised past ~150 layers)' },
    'no-augment': { type: 'boolean', description: 'no random crop / flip' },
    'no-zero-init': { type: 'boolean', description: 'keep the last BN of each block at 1 (default: zero-init residuals)' },
    shortcut: { type: 'string', value: 'A|B|C', description: 'shortcut type (default: A for CIFAR ResNets, B otherwise)' },
    pretrained: { type: 'string', value: '<path>', description: 'start from these weights (safetensors, .pth, Hugging Face folder); the head is replaced if the class count differs' },
    'freeze-backbone': { type: 'boolean', description: 'train only the final fc layer' },
    seed: { type: 'string', value: 'N', default: '0', description: 'seed of initialisation, shuffling and augmentation' },
    workers: { type: 'string', value: 'N', default: '1', description: 'worker threads preparing batches' },
    threads: { type: 'string', value: 'N', description: 'compute threads (default: all cores)' },
    out: { type: 'string', value: 'DIR', default: 'runs/<arch>-<dataset>', description: 'output folder' },
    resume: { type: 'boolean', description: 'continue from DIR/checkpoint.safetensors' },
    help: HELP_OPTION,
  },
  positionals: { min: 0, max: 0 },
  examples: ['resnet train', 'resnet train --arch resnet56 --dataset cifar10 --epochs 160 --out runs/r56', 'resnet train --out runs/x --resume'],
  async run(args) {
    const arch = str(args, 'arch') ?? 'resnet20';
    const dataset = choice(args, 'dataset', DATASETS, 'fashion-mnist');
    const epochs = intOption(args, 'epochs') ?? 30;
    const batch = intOption(args, 'batch') ?? 128;
    const seed = intOption(args, 'seed', 0) ?? 0;
    const workers = intOption(args, 'workers', 0) ?? 1;
    const threads = intOption(args, 'threads');
    const optimizer = choice(args, 'optimizer', ['sgd', 'adamw'] as const, 'sgd');
    const schedule = choice(args, 'schedule', ['multistep', 'cosine', 'onecycle', 'constant'] as const, 'multistep');
    const milestonesArg = str(args, 'milestones');
    const milestones = milestonesArg?.split(',').map((s) => {
      const n = Number(s.trim());
      if (!Number.isInteger(n) || n < 1) throw new UsageError(`--milestones must be epochs like 15,22, got ${JSON.stringify(milestonesArg)}`);
      return n;
    });
    const warmupEpochs = intOption(args, 'warmup-epochs', 0) ?? 0;
    if (warmupEpochs > 0 && schedule === 'onecycle') throw new UsageError('--warmup-epochs does not combine with --schedule onecycle (it has its own warm-up)');
    if (warmupEpochs >= epochs) throw new UsageError(`--warmup-epochs (${warmupEpochs}) must be less than --epochs (${epochs})`);
    const clip = str(args, 'clip-grad-norm') === undefined ? undefined : num(args, 'clip-grad-norm', 0, 1e-12);
    const out = str(args, 'out') ?? join('runs', `${arch}-${dataset}`);
    if (threads !== undefined) setNumThreads(threads);
    manualSeed(seed);

    const data = await loadDataset(dataset, str(args, 'data'));
    const model = buildModel({
      arch,
      numClasses: data.classes.length,
      inChannels: data.channels,
      zeroInitResidual: !flag(args, 'no-zero-init'),
      shortcut: shortcutOption(args),
      pretrained: str(args, 'pretrained'),
      freezeBackbone: flag(args, 'freeze-backbone'),
    });
    const trainData = batchSource(data.train, { batchSize: batch, shuffle: true, seed, transform: trainTransform(data, !flag(args, 'no-augment')), workers, dropLast: false });
    const testData = batchSource(data.test, { batchSize: 256, shuffle: false, seed, transform: evalTransform(data), workers });
    const { optimizer: opt, scheduler, per } = buildOptimizer(model.parameters(), {
      optimizer,
      lr: num(args, 'lr', 0.1),
      momentum: num(args, 'momentum', 0.9),
      weightDecay: num(args, 'weight-decay', 1e-4),
      nesterov: flag(args, 'nesterov'),
      schedule,
      milestones,
      gamma: num(args, 'gamma', 0.1),
      warmupEpochs,
      epochs,
      batchesPerEpoch: trainData.batches,
    });
    const config = { arch, dataset, epochs, batch, seed, optimizer, schedule, lr: opt.paramGroups[0]!.lr, argv: process.argv.slice(2) };
    const history = await train(model, opt, scheduler, trainData, testData, {
      epochs,
      out,
      labelSmoothing: num(args, 'label-smoothing', 0),
      ...(clip === undefined ? {} : { clipGradNorm: clip }),
      schedulerPer: per,
      resume: flag(args, 'resume'),
      classes: [...data.classes],
      title: `${arch} on ${dataset}`,
      config,
    });
    const last = history[history.length - 1];
    const best = Math.max(...history.map((h) => h.valAcc ?? 0));
    return last ? `final test accuracy ${(100 * (last.valAcc ?? 0)).toFixed(2)}%, best ${(100 * best).toFixed(2)}% (${out})\n` : `nothing to do: ${out} already has ${epochs} epochs\n`;
  },
};

export const evalCommand: Command = {
  name: 'eval',
  summary: 'Evaluate trained weights on a dataset: accuracy, per-class accuracy, confusion matrix.',
  usage: ['eval --weights <file> [--arch resnet20] [--dataset fashion-mnist|cifar10] [--data DIR] [--split test|train] [--json]'],
  options: {
    weights: { type: 'string', value: '<file>', description: 'weights (safetensors, .pth, Hugging Face folder)' },
    arch: { type: 'string', value: '<arch>', default: 'the "arch" recorded in the file, else resnet20', description: 'architecture' },
    dataset: { type: 'string', value: '<name>', default: 'fashion-mnist', description: DATASETS.join(' | ') },
    data: { type: 'string', value: 'DIR', description: 'folder holding the dataset files' },
    split: { type: 'string', value: 'test|train', default: 'test', description: 'which split to evaluate' },
    shortcut: { type: 'string', value: 'A|B|C', description: 'shortcut type the weights were trained with' },
    batch: { type: 'string', value: 'N', default: '256', description: 'batch size' },
    json: { type: 'boolean', description: 'print JSON' },
    help: HELP_OPTION,
  },
  positionals: { min: 0, max: 0 },
  examples: ['resnet eval --weights runs/resnet20-fashion-mnist/best.safetensors'],
  async run(args) {
    const weights = str(args, 'weights');
    if (!weights) throw new UsageError('eval needs --weights <file>');
    const dataset = choice(args, 'dataset', DATASETS, 'fashion-mnist');
    const split = choice(args, 'split', ['test', 'train'] as const, 'test');
    const { stateDict } = readCheckpoint(weights);
    const data = await loadDataset(dataset, str(args, 'data'));
    const arch = str(args, 'arch') ?? 'resnet20';
    const model = buildModel({ arch, numClasses: data.classes.length, inChannels: data.channels, shortcut: shortcutOption(args) });
    model.loadStateDict(stateDict);
    model.eval();
    const src = batchSource(split === 'test' ? data.test : data.train, { batchSize: intOption(args, 'batch') ?? 256, shuffle: false, seed: 0, transform: evalTransform(data), workers: 1 });
    const r = await evaluate(model, src, data.classes.length);
    const perClass = r.confusion.perClassAccuracy();
    if (flag(args, 'json')) {
      return `${JSON.stringify({ weights, arch, dataset, split, images: r.confusion.total(), top1: r.top1, top5: r.top5, loss: r.loss, perClass: Object.fromEntries(data.classes.map((c, i) => [c, perClass[i]])), confusion: Array.from({ length: data.classes.length }, (_, i) => Array.from(r.confusion.counts.subarray(i * data.classes.length, (i + 1) * data.classes.length))) })}\n`;
    }
    const lines = [
      `${weights} on ${dataset} ${split} (${r.confusion.total()} images)`,
      `top-1 accuracy ${(100 * r.top1).toFixed(2)}%   top-5 ${(100 * r.top5).toFixed(2)}%   loss ${r.loss.toFixed(4)}`,
      '',
      'per-class accuracy:',
      ...data.classes.map((c, i) => `  ${String(i).padStart(2)} ${c.padEnd(14)} ${(100 * perClass[i]!).toFixed(2)}%`),
      '',
      'confusion matrix (rows: true class, columns: predicted):',
      r.confusion.format([...data.classes]),
    ];
    return `${lines.join('\n')}\n`;
  },
};
