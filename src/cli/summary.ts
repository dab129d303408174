/** `resnet summary <arch>`: the torchsummary table, or the hierarchical tree with mult-adds. */
import { ShapeError, UsageError, createModel, getModelSpec, summary, treeSummary, withMetaTensors, type ModelOptions } from '../index.js';
import { HELP_OPTION, flag, intOption, parseInputSize, shortcutOption, str, type Command } from './args.js';

export const summaryCommand: Command = {
  name: 'summary',
  summary: "Print a model's layer table (torchsummary 1.5.1's exact format) or, with --tree, its call tree with mult-adds.",
  usage: ['summary <arch> [--input C,H,W] [--tree [--depth N] [--explain]] [--num-classes N] [--in-channels C] [--shortcut A|B|C]'],
  details: [
    "The model is built from shapes only (no weights are allocated), so even resnet152 prints at once. " +
      "Run 'resnet list' for the architectures.",
  ],
  options: {
    input: { type: 'string', value: 'C,H,W', default: "the architecture's: 3,224,224 (ImageNet) or 3,32,32 (CIFAR), C taken from --in-channels", description: 'input size, without the batch dimension' },
    tree: { type: 'boolean', description: 'print the hierarchical view (input/output shapes, kernels, parameters, mult-adds at batch 1)' },
    depth: { type: 'string', value: 'N', default: 'all', description: 'with --tree: deepest nesting level shown (0 = the model only)' },
    explain: { type: 'boolean', description: 'with --tree: add the shape and parameter arithmetic under each layer' },
    'num-classes': { type: 'string', value: 'N', default: '1000 for ImageNet models, 10 for CIFAR ones', description: 'outputs of the final fc layer' },
    'in-channels': { type: 'string', value: 'C', default: '3', description: 'input channels of the first conv' },
    shortcut: { type: 'string', value: 'A|B|C', default: 'B for ImageNet models, A for CIFAR ones', description: 'shortcut type of He et al.: A zero-pad, B project where the shape changes, C project everywhere' },
    help: HELP_OPTION,
  },
  positionals: { min: 1, max: 1 },
  examples: ['resnet summary resnet18', 'resnet summary resnet50 --tree --depth 2', 'resnet summary resnet20 --in-channels 1 --tree --explain'],
  run(args) {
    const arch = args.positionals[0]!;
    const spec = getModelSpec(arch);
    const opts: ModelOptions = {};
    const numClasses = intOption(args, 'num-classes');
    const inChannels = intOption(args, 'in-channels');
    const shortcut = shortcutOption(args);
    if (numClasses !== undefined) opts.numClasses = numClasses;
    if (inChannels !== undefined) opts.inChannels = inChannels;
    if (shortcut !== undefined) opts.shortcut = shortcut;
    const depth = intOption(args, 'depth', 0);
    const tree = flag(args, 'tree');
    if (!tree && (depth !== undefined || flag(args, 'explain'))) {
      throw new UsageError(`${depth !== undefined ? '--depth' : '--explain'} only applies to the tree view (add --tree)`);
    }

    const modelChannels = inChannels ?? 3;
    const inputArg = str(args, 'input');
    const [, h, w] = spec.defaultInput;
    const input = inputArg !== undefined ? parseInputSize(inputArg) : [modelChannels, h, w];
    if (input[0] !== modelChannels) {
      const hint = inChannels === undefined ? `; add --in-channels ${input[0]} to build a ${input[0]}-channel model` : '';
      throw new UsageError(
        `--input ${input.join(',')} has ${input[0]} channel(s) but the ${arch} model takes ${modelChannels}${hint}`,
      );
    }

    return withMetaTensors(() => {
      const model = createModel(arch, opts);
      try {
        return tree ? treeSummary(model, input, depth !== undefined ? { depth, explain: flag(args, 'explain') } : { explain: flag(args, 'explain') }) : summary(model, input);
      } catch (e) {
        // An input too small for the downsampling (e.g. 3,8,8 for resnet50) fails inside an op.
        if (e instanceof ShapeError) throw new ShapeError(`${arch} cannot take input ${input.join('x')}: ${e.message}`);
        throw e;
      }
    });
  },
};
