/**
 * `resnet classify`: top-k ImageNet (or the checkpoint's own) classes of images, with a model
 * from the Hugging Face Hub, torchvision's weights, or a local folder / file. Also the model
 * options and image expansion that `resnet embed` shares.
 *
 * Everything checkable is checked before anything is downloaded: options, then the input paths
 * (explicitly named files must be images: their headers are read), then the model. Downloads
 * show progress on stderr; stdout has only the results.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FormatError, UsageError } from '../errors.js';
import { getModelSpec } from '../models/registry.js';
import { listImageFiles, probeImage } from '../image/index.js';
import { describePreprocess } from '../image/preprocess.js';
import { classifyBatch, loadPretrained, type Prediction, type Pretrained } from '../hub/pretrained.js';
import { getTorchvisionWeights, isWeightsName } from '../hub/weights.js';
import { HELP_OPTION, flag, intOption, str, type OptionSpec, type ParsedArgs, type Command } from './args.js';

/** The options that choose a model (classify and embed). */
export const MODEL_OPTIONS: Record<string, OptionSpec> = {
  model: { type: 'string', value: '<name|path>', description: 'Hugging Face repo id (org/name), or a local model folder or weights file' },
  arch: { type: 'string', value: '<arch>', description: "architecture for --weights (see 'resnet list')" },
  weights: { type: 'string', value: '<W|file>', description: "torchvision weights (IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT) or a weights file" },
  revision: { type: 'string', value: '<rev>', default: 'main', description: 'Hub branch, tag or commit for --model org/name' },
};

export const MODEL_DETAILS =
  'Models: --model org/name downloads config.json, the weights and preprocessor_config.json from the Hugging Face Hub ' +
  '($HF_ENDPOINT) into its cache ($HF_HUB_CACHE, $HF_HOME/hub or ~/.cache/huggingface/hub); --arch resnet50 --weights ' +
  "IMAGENET1K_V2 downloads torchvision's file into the torch hub cache ($TORCH_HOME/hub/checkpoints) and checks its hash; " +
  'a local folder or file works wherever a name does. HF_HUB_OFFLINE=1 forbids the network (the caches must hold the files).';

export interface ModelChoice {
  name: string;
  weights?: string;
  revision?: string;
}

/** Validates the model options (no I/O beyond checking paths exist). */
export function modelChoice(args: ParsedArgs, cmd: string): ModelChoice {
  const model = str(args, 'model');
  const arch = str(args, 'arch');
  const weights = str(args, 'weights');
  const revision = str(args, 'revision');
  for (const [k, v] of [['model', model], ['arch', arch], ['weights', weights], ['revision', revision]] as const) {
    if (v === '') throw new UsageError(`--${k} must not be empty`);
  }
  if (model !== undefined && (arch !== undefined || weights !== undefined)) {
    throw new UsageError('use either --model, or --arch with --weights, not both');
  }
  if (model !== undefined) return { name: model, ...(revision !== undefined ? { revision } : {}) };
  if (arch !== undefined) {
    getModelSpec(arch);
    if (weights === undefined) throw new UsageError(`--arch ${arch} needs --weights (IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT or a weights file)`);
    if (isWeightsName(weights) && !fs.existsSync(weights)) getTorchvisionWeights(arch, weights);
    return { name: arch, weights };
  }
  if (weights !== undefined) {
    if (isWeightsName(weights) && !fs.existsSync(weights)) throw new UsageError(`--weights ${weights} needs --arch (e.g. --arch resnet50)`);
    return { name: weights };
  }
  throw new UsageError(`${cmd} needs a model: --model <org/name|path>, or --arch <arch> --weights <W|file>`);
}

/** Loads the chosen model (downloading with progress on stderr); prints its notes as warnings. */
export async function loadChosenModel(choice: ModelChoice): Promise<Pretrained> {
  const m = await loadPretrained(choice.name, {
    ...(choice.weights !== undefined ? { weights: choice.weights } : {}),
    ...(choice.revision !== undefined ? { revision: choice.revision } : {}),
    progress: true,
    removeOnSignal: true,
  });
  for (const n of m.notes) process.stderr.write(`resnet: note: ${n}\n`);
  return m;
}

/** The image files the positionals name (folders expanded); explicitly named files must be images. */
export async function imageInputs(positionals: readonly string[]): Promise<string[]> {
  const files = listImageFiles(positionals);
  for (const p of positionals) {
    if (!fs.statSync(p).isDirectory()) await probeImage(p);
  }
  return files;
}

function pct(p: number): string {
  return `${(p * 100).toFixed(2)}%`;
}

export const classifyCommand: Command = {
  name: 'classify',
  summary: 'Classify images (JPEG, PNG, WebP; files or folders) with a pretrained model and print the top classes.',
  usage: ['classify <image|folder>... (--model <org/name|path> | --arch <arch> --weights <W|file>) [--top K] [--batch N] [--json]'],
  details: [
    'Each image is decoded (EXIF orientation applied, converted to RGB), preprocessed exactly as the weights expect ' +
      "(torchvision's preset, or the repo's preprocessor_config.json) and classified; probabilities are the softmax " +
      "of the logits. Labels come from the checkpoint's id2label, ImageNet's classes for torchvision weights, or \"class N\". " +
      'A folder contributes every image in it (recursively, sorted).',
    MODEL_DETAILS,
  ],
  options: {
    ...MODEL_OPTIONS,
    top: { type: 'string', value: 'K', default: '5', description: 'classes to show per image' },
    batch: { type: 'string', value: 'N', default: '8', description: 'images per forward pass' },
    json: { type: 'boolean', description: 'print JSON: [{"image", "predictions": [{"label", "index", "probability"}]}]' },
    help: HELP_OPTION,
  },
  positionals: { min: 1, max: Number.POSITIVE_INFINITY },
  examples: [
    'resnet classify cat.jpg --model microsoft/resnet-50',
    'resnet classify photos/ --arch resnet50 --weights IMAGENET1K_V2 --top 3 --json',
  ],
  async run(args) {
    const top = intOption(args, 'top') ?? 5;
    const batch = intOption(args, 'batch') ?? 8;
    const choice = modelChoice(args, 'classify');
    const files = await imageInputs(args.positionals);
    const m = await loadChosenModel(choice);
    const results: { image: string; predictions: Prediction[] }[] = [];
    for (let i = 0; i < files.length; i += batch) {
      const chunk = files.slice(i, i + batch);
      const preds = await classifyBatch(m, chunk, { top });
      chunk.forEach((f, j) => results.push({ image: f, predictions: preds[j]! }));
    }
    if (flag(args, 'json')) return `${JSON.stringify(results, null, 2)}\n`;
    const lines: string[] = [`# ${m.source}; ${describePreprocess(m.preprocess)}`];
    for (const r of results) {
      lines.push(r.image);
      for (const p of r.predictions) lines.push(`  ${pct(p.probability).padStart(7)}  ${p.label} (${p.index})`);
    }
    return `${lines.join('\n')}\n`;
  },
};

/** Fails early (before any work) when the output file cannot be written where asked. */
export function checkOutputPath(p: string): void {
  const dir = path.dirname(path.resolve(p));
  const st = fs.statSync(dir, { throwIfNoEntry: false });
  if (!st) throw new FormatError(`${p}: cannot write the output: directory ${dir} does not exist`);
  if (!st.isDirectory()) throw new FormatError(`${p}: cannot write the output: ${dir} is not a directory`);
  if (fs.statSync(p, { throwIfNoEntry: false })?.isDirectory()) throw new FormatError(`${p}: cannot write the output: it is a directory`);
}
