/**
 * `resnet run`: logits of a trained model on a .npy batch. Everything that can be checked is
 * checked before the forward pass, and the output file is written (atomically) only at the end,
 * so a failed run never leaves or creates an output file.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  FormatError,
  ShapeError,
  StateDictError,
  createModel,
  getModelSpec,
  noGrad,
  readStateDict,
  readTensorNpy,
  withMetaTensors,
  writeTensorNpy,
  type ModelOptions,
  type ShortcutType,
  type StateDict,
} from '../index.js';
import { HELP_OPTION, intOption, required, shortcutOption, type Command } from './args.js';

export const runCommand: Command = {
  name: 'run',
  summary: 'Run a model with weights from a safetensors file on an N×C×H×W float32 .npy batch and save the logits as .npy.',
  usage: ['run --arch <arch> --weights <file.safetensors> --input <x.npy> --output <y.npy> [--num-classes N] [--in-channels C] [--shortcut A|B|C]'],
  details: [
    'The weights are loaded strictly (every key of the model, nothing else, same shapes); the model runs in eval mode ' +
      '(batch norm uses its running statistics). The number of classes, the input channels and the shortcut type are ' +
      'read off the weights file unless given. The output is a float32 [N, classes] array; it is written only if ' +
      'everything succeeded.',
  ],
  options: {
    arch: { type: 'string', value: '<arch>', description: "architecture name (see 'resnet list')" },
    weights: { type: 'string', value: '<file.safetensors>', description: 'state dict with torchvision key names' },
    input: { type: 'string', value: '<x.npy>', description: 'float32 array of shape [N, C, H, W]' },
    output: { type: 'string', value: '<y.npy>', description: 'where to write the float32 logits [N, classes]' },
    'num-classes': { type: 'string', value: 'N', default: "fc.weight's rows in the weights file", description: 'outputs of the final fc layer' },
    'in-channels': { type: 'string', value: 'C', default: "conv1.weight's input channels in the weights file", description: 'input channels of the first conv' },
    shortcut: { type: 'string', value: 'A|B|C', default: 'the one whose keys match the weights file', description: 'shortcut type (A zero-pad, B project where the shape changes, C project everywhere)' },
    help: HELP_OPTION,
  },
  positionals: { min: 0, max: 0 },
  examples: ['resnet run --arch resnet20 --weights cifar10.safetensors --input batch.npy --output logits.npy'],
  run(args) {
    const arch = required(args, 'run', 'arch', '<arch>');
    const weightsPath = required(args, 'run', 'weights', '<file.safetensors>');
    const inputPath = required(args, 'run', 'input', '<x.npy>');
    const outputPath = required(args, 'run', 'output', '<y.npy>');
    getModelSpec(arch);
    const numClassesArg = intOption(args, 'num-classes');
    const inChannelsArg = intOption(args, 'in-channels');
    const shortcutArg = shortcutOption(args);
    checkOutputPath(outputPath);

    // Weights first: they decide the model's shape when options are left out.
    const { stateDict } = readStateDict(weightsPath);
    if (stateDict.size === 0) throw new FormatError(`${weightsPath}: the file holds no tensors`);
    const fcRows = dim(stateDict, 'fc.weight', 2, 0);
    const convIn = dim(stateDict, 'conv1.weight', 4, 1);
    const opts: ModelOptions = {};
    const numClasses = numClassesArg ?? fcRows;
    const inChannels = inChannelsArg ?? convIn ?? 3;
    if (numClasses !== undefined) opts.numClasses = numClasses;
    opts.inChannels = inChannels;
    const shortcut = shortcutArg ?? inferShortcut(arch, stateDict);
    if (shortcut !== undefined) opts.shortcut = shortcut;

    // Then the input, before the (slow) model construction.
    const x = readTensorNpy(inputPath);
    const shapeText = `[${x.shape.join(', ')}]`;
    if (x.ndim !== 4) {
      const hint = x.ndim === 3 && x.shape[0] === inChannels ? ' (add a batch dimension: x[None])' : '';
      throw new ShapeError(`${inputPath}: expected a 4-D N×C×H×W array with ${inChannels} channel(s), got shape ${shapeText}${hint}`);
    }
    if (x.shape[1] !== inChannels) {
      const src = inChannelsArg !== undefined ? '--in-channels' : convIn !== undefined ? `conv1.weight in ${weightsPath}` : 'the default';
      throw new ShapeError(`${inputPath}: shape ${shapeText} has ${x.shape[1]} channel(s), but the model takes ${inChannels} (from ${src})`);
    }
    if (x.shape.some((d) => d === 0)) throw new ShapeError(`${inputPath}: shape ${shapeText} is empty`);

    const model = createModel(arch, opts);
    try {
      model.loadStateDict(stateDict, { strict: true });
    } catch (e) {
      if (e instanceof StateDictError) throw new StateDictError(`${weightsPath} does not fit ${arch}: ${e.message}`);
      throw e;
    }
    model.eval();
    let y;
    try {
      y = noGrad(() => model.call(x));
    } catch (e) {
      if (e instanceof ShapeError) throw new ShapeError(`${arch} cannot run on ${inputPath} (shape ${shapeText}): ${e.message}`);
      throw e;
    }
    writeTensorNpy(outputPath, y);
    return `${outputPath}: logits [${y.shape.join(', ')}] (${arch}, ${y.shape[1]} classes, ${inChannels} input channel${inChannels === 1 ? '' : 's'})\n`;
  },
};

/** `shape[axis]` of a tensor of rank `ndim` in the state dict, if there is one. */
function dim(sd: StateDict, key: string, ndim: number, axis: number): number | undefined {
  const t = sd.get(key);
  return t && t.ndim === ndim && t.shape[axis]! >= 1 ? t.shape[axis] : undefined;
}

/**
 * The shortcut type whose state-dict keys are exactly the file's (they differ in which blocks
 * have a `downsample`), trying the architecture's default first; undefined (the default) when
 * none matches, so the strict load reports the differences against the default model.
 */
function inferShortcut(arch: string, sd: StateDict): ShortcutType | undefined {
  const keys = (o: ModelOptions): string[] => withMetaTensors(() => [...createModel(arch, o).stateDict().keys()]);
  const same = (k: string[]): boolean => k.length === sd.size && k.every((key) => sd.has(key));
  if (same(keys({}))) return undefined;
  return (['A', 'B', 'C'] as const).find((s) => same(keys({ shortcut: s })));
}

/** Fails early (before any work) when the output cannot be written where asked. */
function checkOutputPath(p: string): void {
  const dir = path.dirname(path.resolve(p));
  let st: fs.Stats | undefined;
  try {
    st = fs.statSync(dir);
  } catch {
    throw new FormatError(`${p}: cannot write the output: directory ${dir} does not exist`);
  }
  if (!st.isDirectory()) throw new FormatError(`${p}: cannot write the output: ${dir} is not a directory`);
  if (fs.statSync(p, { throwIfNoEntry: false })?.isDirectory()) throw new FormatError(`${p}: cannot write the output: it is a directory`);
}
