/**
 * `resnet embed`: features of images as a float32 .npy, with the same model choices as
 * `resnet classify`: the pooled features [N, C] (the classifier's input: 2048 for ResNet-50) or
 * a stage's feature maps [N, C, H, W]. Rows follow the inputs in order, folders expanded sorted.
 * The file is written atomically, only after every image succeeded.
 */
import { ShapeError } from '../errors.js';
import { Tensor } from '../tensor/tensor.js';
import { writeTensorNpy } from '../io/state.js';
import { features, parseLayer, prepareBatch } from '../hub/pretrained.js';
import { HELP_OPTION, intOption, required, str, type Command } from './args.js';
import { MODEL_DETAILS, MODEL_OPTIONS, checkOutputPath, imageInputs, loadChosenModel, modelChoice } from './classify.js';

export const embedCommand: Command = {
  name: 'embed',
  summary: 'Write image features (pooled, or a stage\'s feature maps) of a pretrained model to a .npy file.',
  usage: ['embed <image|folder>... (--model <org/name|path> | --arch <arch> --weights <W|file>) [--layer pooled|stage1..stage4] --output <feats.npy> [--batch N]'],
  details: [
    'pooled: the globally averaged features the classifier reads, float32 [N, C] (C = 2048 for ResNet-50, 512 for ResNet-18). ' +
      'stageK: the output of stage K (layerK in torchvision), float32 [N, C, H, W]. Images are preprocessed as for classify; ' +
      'rows follow the inputs in order (folders expanded recursively, sorted).',
    MODEL_DETAILS,
  ],
  options: {
    ...MODEL_OPTIONS,
    layer: { type: 'string', value: 'pooled|stageK', default: 'pooled', description: 'which activations to write' },
    output: { type: 'string', value: '<feats.npy>', description: 'where to write the float32 array' },
    batch: { type: 'string', value: 'N', default: '8', description: 'images per forward pass' },
    help: HELP_OPTION,
  },
  positionals: { min: 1, max: Number.POSITIVE_INFINITY },
  examples: [
    'resnet embed photos/ --model microsoft/resnet-50 --output feats.npy',
    'resnet embed cat.jpg --arch resnet18 --weights IMAGENET1K_V1 --layer stage3 --output maps.npy',
  ],
  async run(args) {
    const output = required(args, 'embed', 'output', '<feats.npy>');
    const layer = str(args, 'layer') ?? 'pooled';
    parseLayer(layer);
    const batch = intOption(args, 'batch') ?? 8;
    const choice = modelChoice(args, 'embed');
    checkOutputPath(output);
    const files = await imageInputs(args.positionals);
    const m = await loadChosenModel(choice);
    parseLayer(layer, m.model);
    let out: Float32Array | undefined;
    let rowShape: number[] = [];
    for (let i = 0; i < files.length; i += batch) {
      const chunk = files.slice(i, i + batch);
      const f = features(m, await prepareBatch(chunk, m.preprocess), layer);
      const per = f.numel / chunk.length;
      if (!out) {
        rowShape = f.shape.slice(1);
        out = new Float32Array(files.length * per);
      } else if (f.shape.slice(1).join() !== rowShape.join()) {
        throw new ShapeError(`embed: batch ${i / batch} has rows of shape [${f.shape.slice(1).join(', ')}], expected [${rowShape.join(', ')}]`);
      }
      out.set(f.values, i * per);
    }
    const t = new Tensor([files.length, ...rowShape], out!);
    writeTensorNpy(output, t);
    const what = layer === 'pooled' ? 'pooled features' : `${layer} feature maps`;
    return `${output}: [${t.shape.join(', ')}] float32 ${what} of ${files.length} image${files.length === 1 ? '' : 's'} (${m.source})\n`;
  },
};
