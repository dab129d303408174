/**
 * Pretrained models in three lines:
 *
 *   const m = await loadPretrained('microsoft/resnet-50');              // Hugging Face Hub
 *   const m = await loadPretrained('resnet50', { weights: 'IMAGENET1K_V2' }); // torchvision
 *   const m = await loadPretrained('./my-model');                       // local folder or file
 *   const top5 = await classify(m, 'cat.jpg', { top: 5 });
 *
 * loadPretrained returns the model (eval mode, weights loaded strictly), the preprocessing that
 * goes with the weights (torchvision's preset for torchvision weights, the repo's
 * preprocessor_config.json for Hugging Face models) and the class names (id2label, ImageNet's
 * for torchvision weights, else "class N"). classify / classifyBatch / embed decode, preprocess
 * and run it (the compiled inference plan for logits and pooled features).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FormatError, ShapeError, StateDictError, UsageError } from '../errors.js';
import { IMAGENET_CLASSES } from '../data/imagenet_classes.js';
import { compileInference, type InferencePlan } from '../inference/plan.js';
import { readCheckpoint, resnetFromHfConfig } from '../io/checkpoint.js';
import type { HfResNetConfig } from '../io/hf.js';
import { createModel, getModelSpec, listModels } from '../models/registry.js';
import type { ResNet } from '../models/resnet.js';
import type { StateDict } from '../nn/module.js';
import { noGrad } from '../tensor/autograd.js';
import { Tensor, withMetaTensors } from '../tensor/tensor.js';
import { decodeImage } from '../image/decode.js';
import {
  hfConvNextDefaults,
  hfPreprocessFromConfig,
  preprocessImage,
  torchvisionPreset,
  type PreprocessSpec,
  type RgbImage,
} from '../image/preprocess.js';
import { hfModelSnapshot, isRepoId, type HfHubOptions } from './hf.js';
import { downloadTorchvisionWeights } from './torchvision.js';
import { HubError, type ProgressStream } from './download.js';
import { getTorchvisionWeights, isWeightsName, torchvisionWeightsForFile, type TorchvisionWeights } from './weights.js';

export interface Pretrained {
  model: ResNet;
  preprocess: PreprocessSpec;
  /** One name per class. */
  labels: readonly string[];
  /** Where the weights came from ("microsoft/resnet-50@<commit>", "torchvision resnet50 IMAGENET1K_V2", a path). */
  source: string;
  /** The local file or folder the weights were read from. */
  path: string;
  kind: 'hf' | 'torchvision' | 'file';
  /** The architecture name, when it is a registered one. */
  arch?: string;
  /** torchvision weights metadata, for torchvision weights. */
  weights?: TorchvisionWeights;
  hfConfig?: HfResNetConfig;
  /** Remarks for the user (e.g. preprocessing defaults used). */
  notes: string[];
}

export interface LoadPretrainedOptions {
  /** With an architecture name: IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT, or a weights file path. */
  weights?: string;
  /** Hub revision (branch, tag or commit; default main). */
  revision?: string;
  /** Hugging Face cache folder (default $HF_HUB_CACHE, $HF_HOME/hub or ~/.cache/huggingface/hub). */
  cacheDir?: string;
  /** torch hub checkpoint folder (default $TORCH_HOME/hub/checkpoints or ~/.cache/torch/hub/checkpoints). */
  torchHubDir?: string;
  /** Hub endpoint (default $HF_ENDPOINT or https://huggingface.co). */
  endpoint?: string;
  /** Replaces https://download.pytorch.org/models for torchvision weights. */
  torchvisionBaseUrl?: string;
  /** No network (default: HF_HUB_OFFLINE). */
  offline?: boolean;
  /** Download progress on stderr (default false). */
  progress?: boolean | ProgressStream;
  /** Remove partial downloads on SIGINT/SIGTERM (command-line use). */
  removeOnSignal?: boolean;
  env?: Readonly<Record<string, string | undefined>>;
}

function labelsOr(n: number, labels: readonly string[] | undefined): string[] {
  return Array.from({ length: n }, (_, i) => (labels && typeof labels[i] === 'string' ? labels[i]! : `class ${i}`));
}

function loadStrict(model: ResNet, sd: StateDict, source: string, what: string): void {
  try {
    model.loadStateDict(sd, { strict: true });
  } catch (e) {
    if (e instanceof StateDictError) throw new StateDictError(`${source} does not fit ${what}: ${e.message}`);
    throw e;
  }
  model.eval();
}

function readJson(file: string): unknown {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new FormatError(`${file}: not valid JSON (${(e as Error).message.replace(/\s+/g, ' ')})`);
  }
}

/** A model from a Hugging Face model folder (config.json + weights [+ preprocessor_config.json]). */
function fromHfFolder(dir: string, source: string, notes: string[]): Pretrained {
  const ckpt = readCheckpoint(dir);
  const cfg = ckpt.hfConfig!;
  const model = resnetFromHfConfig(cfg, ckpt.stateDict, dir);
  loadStrict(model, ckpt.stateDict, dir, 'the model its config.json describes');
  const preFile = path.join(dir, 'preprocessor_config.json');
  let preprocess: PreprocessSpec;
  if (fs.existsSync(preFile)) preprocess = hfPreprocessFromConfig(readJson(preFile), preFile);
  else {
    preprocess = hfConvNextDefaults();
    if (!notes.some((n) => n.includes('preprocessor_config.json'))) {
      notes.push(`${dir} has no preprocessor_config.json: using ConvNextImageProcessor's defaults (resize to 384x384 bicubic, mean = std = 0.5)`);
    }
  }
  return { model, preprocess, labels: labelsOr(model.fc.outFeatures, cfg.labels), source, path: dir, kind: 'hf', hfConfig: cfg, notes };
}

/**
 * The registered architecture whose state-dict keys and shapes are exactly `sd`'s (built as meta
 * models: no memory, no compute), or undefined.
 */
export function inferArch(sd: StateDict): string | undefined {
  const fc = sd.get('fc.weight');
  const conv1 = sd.get('conv1.weight');
  if (!fc || fc.ndim !== 2 || !conv1 || conv1.ndim !== 4) return undefined;
  const numClasses = fc.shape[0]!;
  const inChannels = conv1.shape[1]!;
  for (const spec of listModels()) {
    if (spec.fixed.plain) continue;
    const ok = withMetaTensors(() => {
      const m = createModel(spec.name, { numClasses, inChannels });
      const own = m.stateDict();
      if (own.size !== sd.size) return false;
      for (const [k, t] of own) {
        const o = sd.get(k);
        if (!o || o.shape.length !== t.shape.length || o.shape.some((d, i) => d !== t.shape[i])) return false;
      }
      return true;
    });
    if (ok) return spec.name;
  }
  return undefined;
}

/** A model from a single weights file (.pth / .safetensors) of a registered architecture. */
function fromFile(file: string, arch: string | undefined, notes: string[]): Pretrained {
  const ckpt = readCheckpoint(file);
  const known = torchvisionWeightsForFile(path.basename(file));
  const name = arch ?? known?.arch ?? inferArch(ckpt.stateDict);
  if (!name) throw new UsageError(`cannot tell which architecture ${file} holds (no registered model has exactly its keys and shapes); pass --arch`);
  getModelSpec(name);
  const fc = ckpt.stateDict.get('fc.weight');
  const conv1 = ckpt.stateDict.get('conv1.weight');
  const model = createModel(name, {
    ...(fc && fc.ndim === 2 ? { numClasses: fc.shape[0]! } : {}),
    ...(conv1 && conv1.ndim === 4 ? { inChannels: conv1.shape[1]! } : {}),
  });
  loadStrict(model, ckpt.stateDict, file, name);
  const w = known && known.arch === name ? known : undefined;
  if (!w) notes.push(`${file}: preprocessing is torchvision's default ImageNet preset (resize 256, crop 224); class names are not known`);
  return {
    model,
    preprocess: w ? w.preprocess : torchvisionPreset(),
    labels: w ? [...IMAGENET_CLASSES] : labelsOr(model.fc.outFeatures, undefined),
    source: w ? `torchvision ${w.arch} ${w.name} (${file})` : file,
    path: file,
    kind: w ? 'torchvision' : 'file',
    arch: name,
    ...(w ? { weights: w } : {}),
    notes,
  };
}

/**
 * Loads a pretrained ResNet with its preprocessing and labels.
 *
 * `nameOrPath` is one of:
 * - a local path: a Hugging Face model folder, or a weights file (.pth, .safetensors; the
 *   architecture is recognised from its keys and shapes; to name it, use
 *   loadPretrained(arch, { weights: file }));
 * - a Hub repo id "org/name" (downloaded into the Hugging Face cache);
 * - a registered architecture name with `opts.weights` (IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT:
 *   torchvision's weights, downloaded into the torch hub cache; or a weights file path).
 */
export async function loadPretrained(nameOrPath: string, opts: LoadPretrainedOptions = {}): Promise<Pretrained> {
  const notes: string[] = [];
  const hubOpts: HfHubOptions = {
    ...(opts.revision !== undefined ? { revision: opts.revision } : {}),
    ...(opts.cacheDir !== undefined ? { cacheDir: opts.cacheDir } : {}),
    ...(opts.endpoint !== undefined ? { endpoint: opts.endpoint } : {}),
    ...(opts.offline !== undefined ? { offline: opts.offline } : {}),
    ...(opts.progress !== undefined ? { progress: opts.progress } : {}),
    ...(opts.removeOnSignal ? { removeOnSignal: true } : {}),
    ...(opts.env !== undefined ? { env: opts.env } : {}),
  };
  if (opts.weights !== undefined) {
    const arch = nameOrPath;
    getModelSpec(arch);
    if (isWeightsName(opts.weights) && !fs.existsSync(opts.weights)) {
      const w = getTorchvisionWeights(arch, opts.weights);
      const file = await downloadTorchvisionWeights(w, {
        ...(opts.torchHubDir !== undefined ? { modelDir: opts.torchHubDir } : {}),
        ...(opts.torchvisionBaseUrl !== undefined ? { baseUrl: opts.torchvisionBaseUrl } : {}),
        ...(opts.offline !== undefined ? { offline: opts.offline } : {}),
        ...(opts.progress !== undefined ? { progress: opts.progress } : {}),
        ...(opts.removeOnSignal ? { removeOnSignal: true } : {}),
        ...(opts.env !== undefined ? { env: opts.env } : {}),
      });
      const { stateDict } = readCheckpoint(file);
      const model = createModel(arch);
      loadStrict(model, stateDict, file, arch);
      return {
        model,
        preprocess: w.preprocess,
        labels: [...IMAGENET_CLASSES],
        source: `torchvision ${arch} ${w.name}`,
        path: file,
        kind: 'torchvision',
        arch,
        weights: w,
        notes,
      };
    }
    if (!fs.existsSync(opts.weights)) {
      throw new UsageError(`--weights ${JSON.stringify(opts.weights)} is neither IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT nor an existing file`);
    }
    if (fs.statSync(opts.weights).isDirectory()) {
      return fromHfFolder(opts.weights, opts.weights, notes);
    }
    return fromFile(opts.weights, arch, notes);
  }
  const st = fs.statSync(nameOrPath, { throwIfNoEntry: false });
  if (st?.isDirectory()) return fromHfFolder(nameOrPath, nameOrPath, notes);
  if (st) return fromFile(nameOrPath, undefined, notes);
  if (isRepoId(nameOrPath)) {
    let snap;
    try {
      snap = await hfModelSnapshot(nameOrPath, hubOpts);
    } catch (e) {
      // "models/tiny" may be a mistyped local path rather than a repo id: say so.
      if (e instanceof HubError) throw new HubError(`${e.message}; no local file or folder ${JSON.stringify(nameOrPath)} exists either`);
      throw e;
    }
    notes.push(...snap.notes);
    return fromHfFolder(snap.dir, `${nameOrPath}@${snap.commit}`, notes);
  }
  if (listModels().some((s) => s.name === nameOrPath)) {
    throw new UsageError(`${nameOrPath} needs weights: IMAGENET1K_V1, IMAGENET1K_V2 or DEFAULT (torchvision), or a weights file`);
  }
  throw new UsageError(`model ${JSON.stringify(nameOrPath)} is not a local file or folder, nor a Hugging Face repo id ("org/name")`);
}

// ---------------------------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------------------------

export type ImageInput = string | Uint8Array | RgbImage;

export interface Prediction {
  label: string;
  index: number;
  probability: number;
}

function isRgb(x: ImageInput): x is RgbImage {
  return typeof x === 'object' && !(x instanceof Uint8Array) && 'width' in x && 'height' in x && 'data' in x;
}

async function toRgb(x: ImageInput): Promise<RgbImage> {
  return isRgb(x) ? x : decodeImage(x);
}

/** Decodes (in parallel) and preprocesses images into one [N, 3, H, W] batch. */
export async function prepareBatch(images: readonly ImageInput[], preprocess: PreprocessSpec): Promise<Tensor> {
  if (images.length === 0) throw new UsageError('no images');
  const decoded = await Promise.all(images.map(toRgb));
  const xs = decoded.map((img) => preprocessImage(img, preprocess));
  const [c, h, w] = xs[0]!.shape;
  xs.forEach((x, i) => {
    if (x.shape[1] !== h || x.shape[2] !== w) {
      const name = typeof images[i] === 'string' ? (images[i] as string) : `image ${i}`;
      throw new ShapeError(`${name}: preprocessed to ${x.shape[1]}x${x.shape[2]}, but the batch is ${h}x${w} (the preprocessing does not crop to a fixed size)`);
    }
  });
  const data = new Float32Array(xs.length * c * h * w);
  xs.forEach((x, i) => data.set(x.data, i * c * h * w));
  return new Tensor([xs.length, c, h, w], data);
}

const plans = new WeakMap<ResNet, InferencePlan | null>();

function planFor(model: ResNet): InferencePlan | null {
  if (!plans.has(model)) {
    let p: InferencePlan | null = null;
    try {
      p = compileInference(model);
    } catch {
      p = null; // plain (shortcut-free) networks: run the module itself
    }
    plans.set(model, p);
  }
  return plans.get(model)!;
}

function modelOf(m: Pretrained | ResNet): ResNet {
  return 'model' in m && 'preprocess' in m ? m.model : (m as ResNet);
}

/** Logits [N, classes] for a preprocessed batch (eval mode). */
export function logits(model: Pretrained | ResNet, x: Tensor): Tensor {
  const net = modelOf(model);
  net.eval();
  const plan = planFor(net);
  return plan ? plan.run(x) : noGrad(() => net.call(x));
}

/** Softmax (in float64) and the top-k classes of each row, most probable first (ties: lower index first). */
export function topK(logitsT: Tensor, labels: readonly string[], k: number): Prediction[][] {
  const [n, c] = logitsT.shape as [number, number];
  const v = logitsT.values;
  const kk = Math.max(1, Math.min(k, c));
  const out: Prediction[][] = [];
  for (let i = 0; i < n; i++) {
    const row = v.subarray(i * c, (i + 1) * c);
    let max = -Infinity;
    for (let j = 0; j < c; j++) if (row[j]! > max) max = row[j]!;
    const p = new Float64Array(c);
    let sum = 0;
    for (let j = 0; j < c; j++) {
      p[j] = Math.exp(row[j]! - max);
      sum += p[j]!;
    }
    const idx = Array.from({ length: c }, (_, j) => j);
    idx.sort((a, b) => p[b]! - p[a]! || a - b);
    out.push(idx.slice(0, kk).map((j) => ({ label: labels[j] ?? `class ${j}`, index: j, probability: p[j]! / sum })));
  }
  return out;
}

export interface ClassifyOptions {
  /** How many classes to return (default 5). */
  top?: number;
  /** Preprocessing for a bare ResNet (default: torchvision's 256/224 preset). */
  preprocess?: PreprocessSpec;
  /** Class names for a bare ResNet (default "class N"). */
  labels?: readonly string[];
}

/** The top classes of each image (files, encoded buffers or decoded RGB). */
export async function classifyBatch(model: Pretrained | ResNet, images: readonly ImageInput[], opts: ClassifyOptions = {}): Promise<Prediction[][]> {
  const pre = 'preprocess' in model && 'model' in model ? model.preprocess : (opts.preprocess ?? torchvisionPreset());
  const net = modelOf(model);
  const labels = 'labels' in model && 'model' in model ? model.labels : labelsOr(net.fc.outFeatures, opts.labels);
  const x = await prepareBatch(images, opts.preprocess ?? pre);
  return topK(logits(net, x), opts.labels ?? labels, opts.top ?? 5);
}

/** The top classes of one image, most probable first: [{ label, index, probability }]. */
export async function classify(model: Pretrained | ResNet, image: ImageInput, opts: ClassifyOptions = {}): Promise<Prediction[]> {
  return (await classifyBatch(model, [image], opts))[0]!;
}

/** Which activations `embed` returns: the pooled features (the fc input) or a stage's feature map. */
export type EmbedLayer = 'pooled' | `stage${number}`;

/** Checks a --layer value against a model; returns the stage count to run (0 for pooled). */
export function parseLayer(layer: string, model?: ResNet): number {
  if (layer === 'pooled') return 0;
  const m = /^stage([1-9]\d*)$/.exec(layer);
  const n = model ? model.stages.length : undefined;
  const choices = `pooled or stage1..stage${n ?? 4}`;
  if (!m) throw new UsageError(`unknown layer ${JSON.stringify(layer)} (choose ${choices})`);
  const k = Number(m[1]);
  if (n !== undefined && k > n) throw new UsageError(`layer ${layer} does not exist: the model has ${n} stages (choose ${choices})`);
  return k;
}

/**
 * Features of a preprocessed batch: pooled [N, C] (through the inference plan) or the output of
 * stage k [N, C, H, W] (stem and stages 1..k, eval mode, no graph).
 */
export function features(model: Pretrained | ResNet, x: Tensor, layer: EmbedLayer | string = 'pooled'): Tensor {
  const net = modelOf(model);
  const k = parseLayer(layer, net);
  net.eval();
  if (k === 0) {
    const plan = planFor(net);
    if (plan) {
      const f = plan.features(x);
      return new Tensor(f.shape, f.data.slice());
    }
    return noGrad(() => net.forwardFeatures(x));
  }
  return noGrad(() => {
    let y = net.forwardStem(x);
    for (let i = 0; i < k; i++) y = net.stages[i]!.call(y);
    return y;
  });
}

/** Features of images (see `features`). */
export async function embed(model: Pretrained | ResNet, images: readonly ImageInput[], opts: { layer?: EmbedLayer | string; preprocess?: PreprocessSpec } = {}): Promise<Tensor> {
  const pre = opts.preprocess ?? ('preprocess' in model && 'model' in model ? model.preprocess : torchvisionPreset());
  const layer = opts.layer ?? 'pooled';
  parseLayer(layer, modelOf(model));
  return features(model, await prepareBatch(images, pre), layer);
}
