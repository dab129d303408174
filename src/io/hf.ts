/**
 * Hugging Face `transformers` ResNet checkpoints (model_type "resnet", e.g. microsoft/resnet-50):
 * config.json <-> ResNet options, and HF <-> torchvision state-dict key names.
 *
 * What transformers builds (models/resnet/modeling_resnet.py), and how it maps onto torchvision:
 *   embedder.embedder      ResNetConvLayer(num_channels -> embedding_size, 7x7 stride 2, BN, act)
 *                          + MaxPool(3, 2, 1)                        == conv1/bn1/relu/maxpool
 *   encoder.stages[s]      ResNetStage of depths[s] layers with out_channels = hidden_sizes[s];
 *                          the first layer has stride 2, except in stage 0, whose stride is 1
 *                          unless downsample_in_first_stage          == layer{s+1}
 *   layers[l].shortcut     ResNetShortCut (1x1 conv, stride, + BN) whenever
 *                          in_channels != out_channels or stride != 1, else nn.Identity (no
 *                          keys): exactly torchvision's downsample rule (option B)
 *   layers[l].layer[k]     ResNetConvLayer k: basic = two 3x3 (stride on the first);
 *                          bottleneck = 1x1 (out/4) -> 3x3 -> 1x1 (out), reduction 4, with the
 *                          stride on the 3x3 (torchvision's v1.5) unless
 *                          downsample_in_bottleneck, which moves it to the first 1x1 (v1)
 *   classifier             Sequential(Flatten, Linear(hidden_sizes[-1], num_labels)) == fc
 * So hidden_sizes are the OUTPUT channels of each stage (planes * expansion) and a torchvision
 * ResNet (groups 1, width_per_group 64, option-B shortcuts, ImageNet stem) is exactly an HF ResNet
 * with downsample_in_first_stage = downsample_in_bottleneck = false. HF has no grouped or wider
 * bottlenecks, so ResNeXt / Wide ResNet cannot be expressed; and the two downsample flags set to
 * true describe networks resnet-ts does not build (they are refused by name).
 */
import { FormatError, UsageError } from '../errors.js';
import type { BlockKind, ResNetOptions } from '../models/resnet.js';
import { formatError } from './raw.js';

export interface HfResNetConfig {
  modelType: 'resnet';
  numChannels: number;
  embeddingSize: number;
  /** Output channels of each stage (planes * expansion). */
  hiddenSizes: number[];
  depths: number[];
  layerType: BlockKind;
  hiddenAct: 'relu';
  downsampleInFirstStage: boolean;
  downsampleInBottleneck: boolean;
  /** Class names by index, when the config has id2label. */
  labels?: string[];
  /** Number of labels from id2label (or num_labels); undefined when the config states neither. */
  numLabels?: number;
  architectures?: string[];
}

/** transformers' ResNetConfig defaults for the scalar fields a config.json may omit. */
const DEFAULTS = {
  num_channels: 3,
  embedding_size: 64,
  layer_type: 'bottleneck',
  hidden_act: 'relu',
  downsample_in_first_stage: false,
  downsample_in_bottleneck: false,
} as const;

/** transformers' ResNetBottleNeckLayer reduction (not configurable). */
const REDUCTION = 4;

function describe(v: unknown): string {
  let s: string;
  try {
    s = v === undefined ? 'undefined' : (JSON.stringify(v) ?? String(v));
  } catch {
    s = Object.prototype.toString.call(v);
  }
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

/**
 * Validates a parsed config.json of a transformers ResNet. model_type, hidden_sizes and depths
 * are required; num_channels, embedding_size, layer_type, hidden_act and the downsample flags
 * default as in transformers' ResNetConfig. Every problem is a one-line FormatError.
 */
export function parseHfConfig(json: unknown, source = 'config.json'): HfResNetConfig {
  const fail = (m: string): never => {
    throw formatError(source, m);
  };
  if (typeof json !== 'object' || json === null || Array.isArray(json)) return fail(`expected a JSON object, got ${describe(json)}`);
  const o = json as Record<string, unknown>;
  // Own properties only (never the prototype); undefined (possible from JS callers) counts as absent.
  const has = (k: string): boolean => Object.prototype.hasOwnProperty.call(o, k) && o[k] !== undefined;
  const get = (k: string): unknown => (has(k) ? o[k] : undefined);

  if (!has('model_type')) fail('missing "model_type" (expected "resnet": a Hugging Face transformers ResNet config)');
  if (o.model_type !== 'resnet') fail(`model_type is ${describe(o.model_type)}, expected "resnet" (only transformers ResNet checkpoints are supported)`);

  const posInt = (k: string, v: unknown): number => {
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) return fail(`"${k}" must be a positive integer, got ${describe(v)}`);
    return v;
  };
  const intList = (k: string): number[] => {
    if (!has(k)) return fail(`missing "${k}"`);
    const v = o[k];
    if (!Array.isArray(v) || v.length === 0) return fail(`"${k}" must be a non-empty list of positive integers, got ${describe(v)}`);
    return v.map((x, i) => posInt(`${k}[${i}]`, x));
  };
  const bool = (k: keyof typeof DEFAULTS): boolean => {
    const v = has(k) ? o[k] : DEFAULTS[k];
    if (typeof v !== 'boolean') return fail(`"${k}" must be true or false, got ${describe(v)}`);
    return v;
  };

  const hiddenSizes = intList('hidden_sizes');
  const depths = intList('depths');
  if (hiddenSizes.length !== depths.length) {
    fail(`"hidden_sizes" has ${hiddenSizes.length} stages but "depths" has ${depths.length}; they must match`);
  }
  const numChannels = posInt('num_channels', has('num_channels') ? o.num_channels : DEFAULTS.num_channels);
  const embeddingSize = posInt('embedding_size', has('embedding_size') ? o.embedding_size : DEFAULTS.embedding_size);
  const layerType = has('layer_type') ? o.layer_type : DEFAULTS.layer_type;
  if (layerType !== 'basic' && layerType !== 'bottleneck') fail(`unsupported layer_type ${describe(layerType)} (expected "basic" or "bottleneck")`);
  const hiddenAct = has('hidden_act') ? o.hidden_act : DEFAULTS.hidden_act;
  if (hiddenAct !== 'relu') fail(`unsupported hidden_act ${describe(hiddenAct)}: resnet-ts blocks use ReLU, so only "relu" is supported`);
  if (layerType === 'bottleneck') {
    hiddenSizes.forEach((h, i) => {
      if (h % REDUCTION !== 0) fail(`hidden_sizes[${i}] = ${h} is not divisible by ${REDUCTION}, the bottleneck reduction`);
    });
  }

  const cfg: HfResNetConfig = {
    modelType: 'resnet',
    numChannels,
    embeddingSize,
    hiddenSizes,
    depths,
    layerType: layerType as BlockKind,
    hiddenAct: 'relu',
    downsampleInFirstStage: bool('downsample_in_first_stage'),
    downsampleInBottleneck: bool('downsample_in_bottleneck'),
  };

  const id2label = get('id2label');
  if (id2label !== undefined && id2label !== null) {
    if (typeof id2label !== 'object' || Array.isArray(id2label)) fail(`"id2label" must be an object of index -> label, got ${describe(id2label)}`);
    const entries = Object.entries(id2label as Record<string, unknown>);
    const labels: string[] = new Array<string>(entries.length);
    for (const [k, v] of entries) {
      if (!/^(0|[1-9]\d*)$/.test(k) || Number(k) >= entries.length) {
        fail(`"id2label" keys must be the indices 0..${entries.length - 1}, got ${describe(k)}`);
      }
      if (typeof v !== 'string') fail(`"id2label"[${describe(k)}] must be a string, got ${describe(v)}`);
      labels[Number(k)] = v as string;
    }
    cfg.labels = labels;
    cfg.numLabels = labels.length;
  }
  const numLabels = get('num_labels');
  if (cfg.numLabels === undefined && numLabels !== undefined && numLabels !== null) {
    if (typeof numLabels !== 'number' || !Number.isSafeInteger(numLabels) || numLabels < 0) fail(`"num_labels" must be a non-negative integer, got ${describe(numLabels)}`);
    cfg.numLabels = numLabels as number;
  }
  const archs = get('architectures');
  if (archs !== undefined && archs !== null) {
    if (!Array.isArray(archs) || !archs.every((a) => typeof a === 'string')) fail(`"architectures" must be a list of strings, got ${describe(archs)}`);
    cfg.architectures = [...(archs as string[])];
  }
  return cfg;
}

export interface HfResNetOptions {
  block: BlockKind;
  layers: number[];
  options: ResNetOptions;
}

/**
 * The ResNet (block, layers, options) equal to an HF config. `numClasses` (e.g. from the
 * checkpoint's classifier weights) wins over the config's label count; with neither, or with a
 * headless config (num_labels 0), there is no classification head to build and this throws.
 */
export function resnetOptionsFromHf(cfg: HfResNetConfig, opts: { numClasses?: number; source?: string } = {}): HfResNetOptions {
  const source = opts.source ?? 'config.json';
  const fail = (m: string): never => {
    throw formatError(source, m);
  };
  if (cfg.downsampleInFirstStage) {
    fail('downsample_in_first_stage = true (stride 2 in the first stage) is not supported: resnet-ts, like torchvision, never strides in layer1');
  }
  if (cfg.downsampleInBottleneck && cfg.layerType === 'bottleneck') {
    fail('downsample_in_bottleneck = true puts the stride on the first 1x1 conv (ResNet v1); resnet-ts bottlenecks are torchvision v1.5 (stride on the 3x3) and cannot load it');
  }
  const expansion = cfg.layerType === 'bottleneck' ? REDUCTION : 1;
  const numClasses = opts.numClasses ?? (cfg.numLabels !== undefined && cfg.numLabels > 0 ? cfg.numLabels : undefined);
  if (numClasses === undefined) {
    fail(
      cfg.numLabels === 0
        ? 'the config is headless (num_labels 0) and no classifier weights were given: a classification head is needed to build a ResNet'
        : 'the config has no id2label/num_labels and no classifier weights were given: a classification head (its number of classes) is needed to build a ResNet',
    );
  }
  if (!Number.isSafeInteger(numClasses) || numClasses! < 1) fail(`number of classes must be a positive integer, got ${describe(numClasses)}`);
  return {
    block: cfg.layerType,
    layers: [...cfg.depths],
    options: {
      numClasses,
      inChannels: cfg.numChannels,
      widths: cfg.hiddenSizes.map((h) => h / expansion),
      stemWidth: cfg.embeddingSize,
      groups: 1,
      widthPerGroup: 64,
      shortcut: 'B',
      plain: false,
      stem: 'imagenet',
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Key names
// ---------------------------------------------------------------------------------------------

const N = '(0|[1-9]\\d*)';
const BN = '(weight|bias|running_mean|running_var|num_batches_tracked)';
const HF_STEM_CONV = /^embedder\.embedder\.convolution\.weight$/;
const HF_STEM_BN = new RegExp(`^embedder\\.embedder\\.normalization\\.${BN}$`);
const HF_CONV = new RegExp(`^encoder\\.stages\\.${N}\\.layers\\.${N}\\.layer\\.${N}\\.convolution\\.weight$`);
const HF_BN = new RegExp(`^encoder\\.stages\\.${N}\\.layers\\.${N}\\.layer\\.${N}\\.normalization\\.${BN}$`);
const HF_SC_CONV = new RegExp(`^encoder\\.stages\\.${N}\\.layers\\.${N}\\.shortcut\\.convolution\\.weight$`);
const HF_SC_BN = new RegExp(`^encoder\\.stages\\.${N}\\.layers\\.${N}\\.shortcut\\.normalization\\.${BN}$`);
const HF_FC = /^classifier\.1\.(weight|bias)$/;

const TV_CONV1 = /^conv1\.weight$/;
const TV_BN1 = new RegExp(`^bn1\\.${BN}$`);
const TV_CONV = new RegExp(`^layer([1-9]\\d*)\\.${N}\\.conv([1-9]\\d*)\\.weight$`);
const TV_BN = new RegExp(`^layer([1-9]\\d*)\\.${N}\\.bn([1-9]\\d*)\\.${BN}$`);
const TV_DS_CONV = new RegExp(`^layer([1-9]\\d*)\\.${N}\\.downsample\\.0\\.weight$`);
const TV_DS_BN = new RegExp(`^layer([1-9]\\d*)\\.${N}\\.downsample\\.1\\.${BN}$`);
const TV_FC = /^fc\.(weight|bias)$/;

/** One HF key (with or without the "resnet." prefix) as its torchvision name, or undefined. */
export function hfKeyToTorchvision(key: string): string | undefined {
  if (HF_FC.test(key)) return key.replace(HF_FC, 'fc.$1');
  const k = key.startsWith('resnet.') ? key.slice('resnet.'.length) : key;
  let m: RegExpExecArray | null;
  if (HF_STEM_CONV.test(k)) return 'conv1.weight';
  if ((m = HF_STEM_BN.exec(k))) return `bn1.${m[1]}`;
  if ((m = HF_CONV.exec(k))) return `layer${+m[1]! + 1}.${m[2]}.conv${+m[3]! + 1}.weight`;
  if ((m = HF_BN.exec(k))) return `layer${+m[1]! + 1}.${m[2]}.bn${+m[3]! + 1}.${m[4]}`;
  if ((m = HF_SC_CONV.exec(k))) return `layer${+m[1]! + 1}.${m[2]}.downsample.0.weight`;
  if ((m = HF_SC_BN.exec(k))) return `layer${+m[1]! + 1}.${m[2]}.downsample.1.${m[3]}`;
  return undefined;
}

/** One torchvision key as its HF name (ResNetForImageClassification style), or undefined. */
export function torchvisionKeyToHf(key: string, prefix = 'resnet.'): string | undefined {
  let m: RegExpExecArray | null;
  if (TV_FC.test(key)) return key.replace(TV_FC, 'classifier.1.$1');
  if (TV_CONV1.test(key)) return `${prefix}embedder.embedder.convolution.weight`;
  if ((m = TV_BN1.exec(key))) return `${prefix}embedder.embedder.normalization.${m[1]}`;
  if ((m = TV_CONV.exec(key))) return `${prefix}encoder.stages.${+m[1]! - 1}.layers.${m[2]}.layer.${+m[3]! - 1}.convolution.weight`;
  if ((m = TV_BN.exec(key))) return `${prefix}encoder.stages.${+m[1]! - 1}.layers.${m[2]}.layer.${+m[3]! - 1}.normalization.${m[4]}`;
  if ((m = TV_DS_CONV.exec(key))) return `${prefix}encoder.stages.${+m[1]! - 1}.layers.${m[2]}.shortcut.convolution.weight`;
  if ((m = TV_DS_BN.exec(key))) return `${prefix}encoder.stages.${+m[1]! - 1}.layers.${m[2]}.shortcut.normalization.${m[3]}`;
  return undefined;
}

function unrecognised(keys: string[], total: number, what: string, source: string): FormatError {
  const shown = keys.slice(0, 5).map((k) => JSON.stringify(k.length > 80 ? `${k.slice(0, 77)}...` : k)).join(', ');
  return formatError(source, `${keys.length} of ${total} keys are not ${what}: ${shown}${keys.length > 5 ? `, ... and ${keys.length - 5} more` : ''}`);
}

function renameAll<T>(sd: ReadonlyMap<string, T>, rename: (k: string) => string | undefined, what: string, source: string, skip?: (k: string) => boolean): Map<string, T> {
  const out = new Map<string, T>();
  const bad: string[] = [];
  for (const [k, v] of sd) {
    if (skip?.(k)) continue;
    const nk = rename(k);
    if (nk === undefined) bad.push(k);
    else if (out.has(nk)) throw formatError(source, `keys collide: two keys map to ${JSON.stringify(nk)} (one is ${JSON.stringify(k)})`);
    else out.set(nk, v);
  }
  if (bad.length) throw unrecognised(bad, sd.size, what, source);
  return out;
}

/**
 * Renames a transformers ResNet state dict (ResNetForImageClassification's "resnet."-prefixed
 * keys, or ResNetModel's unprefixed ones) to torchvision names; order is kept. Any key that is
 * not part of a transformers ResNet is a FormatError listing the first few.
 */
export function hfToTorchvisionKeys<T>(sd: ReadonlyMap<string, T>, source = 'state dict'): Map<string, T> {
  return renameAll(sd, hfKeyToTorchvision, 'transformers ResNet parameter names', source);
}

/**
 * Renames a torchvision-named ResNet state dict to transformers names: with `withClassifier`
 * (the default) as ResNetForImageClassification ("resnet." prefix, fc -> classifier.1), without
 * it as a headless ResNetModel (no prefix; fc.* is dropped).
 */
export function torchvisionToHfKeys<T>(sd: ReadonlyMap<string, T>, opts: { withClassifier?: boolean; source?: string } = {}): Map<string, T> {
  const withClassifier = opts.withClassifier ?? true;
  return renameAll(
    sd,
    (k) => torchvisionKeyToHf(k, withClassifier ? 'resnet.' : ''),
    'torchvision ResNet parameter names',
    opts.source ?? 'state dict',
    withClassifier ? undefined : (k) => TV_FC.test(k),
  );
}

/** True when a state dict's keys look like a transformers ResNet (any key maps and none is torchvision's). */
export function looksLikeHfKeys(keys: Iterable<string>): boolean {
  let any = false;
  for (const k of keys) {
    if (/^(resnet\.)?(embedder|encoder)\./.test(k) || HF_FC.test(k)) any = true;
    else return false;
  }
  return any;
}

// ---------------------------------------------------------------------------------------------
// Writing a config
// ---------------------------------------------------------------------------------------------

export interface HfExportOptions {
  block: BlockKind;
  layers: readonly number[];
  /** Planes of each stage (torchvision's widths). */
  widths: readonly number[];
  stemWidth: number;
  inChannels: number;
  numClasses: number;
  /** Class names by index (array) or index -> name; default "LABEL_<i>", as transformers. */
  id2label?: readonly string[] | Record<string | number, string>;
  /** Must be 1 / 64 (HF has no grouped or wide bottlenecks). */
  groups?: number;
  widthPerGroup?: number;
}

/**
 * The config.json transformers would load for this ResNet as ResNetForImageClassification.
 * Networks HF cannot express (grouped or wide bottlenecks) are a UsageError.
 */
export function hfConfigFromModel(opts: HfExportOptions): Record<string, unknown> {
  const { block, layers, widths, stemWidth, inChannels, numClasses } = opts;
  if ((opts.groups ?? 1) !== 1 || (opts.widthPerGroup ?? 64) !== 64) {
    throw new UsageError(
      `Hugging Face ResNet has no grouped or wide bottlenecks (groups ${opts.groups ?? 1}, width per group ${opts.widthPerGroup ?? 64}); only groups 1 / width 64 can be exported`,
    );
  }
  if (block !== 'basic' && block !== 'bottleneck') throw new UsageError(`unknown block ${describe(block)}`);
  if (layers.length === 0 || layers.length !== widths.length) throw new UsageError(`layers and widths must have the same, non-zero length`);
  const expansion = block === 'bottleneck' ? REDUCTION : 1;
  let labels: string[];
  if (opts.id2label === undefined) labels = Array.from({ length: numClasses }, (_, i) => `LABEL_${i}`);
  else if (Array.isArray(opts.id2label)) labels = [...(opts.id2label as readonly string[])];
  else {
    const rec = opts.id2label as Record<string, string>;
    labels = Array.from({ length: numClasses }, (_, i) => {
      const v = rec[String(i)];
      if (typeof v !== 'string') throw new UsageError(`id2label has no name for class ${i}`);
      return v;
    });
  }
  if (labels.length !== numClasses) throw new UsageError(`id2label has ${labels.length} names but the model has ${numClasses} classes`);
  const id2label: Record<string, string> = {};
  const label2id: Record<string, number> = {};
  labels.forEach((l, i) => {
    id2label[String(i)] = l;
    label2id[l] = i;
  });
  return {
    architectures: ['ResNetForImageClassification'],
    model_type: 'resnet',
    num_channels: inChannels,
    embedding_size: stemWidth,
    hidden_sizes: widths.map((w) => w * expansion),
    depths: [...layers],
    layer_type: block,
    hidden_act: 'relu',
    downsample_in_first_stage: false,
    downsample_in_bottleneck: false,
    id2label,
    label2id,
    torch_dtype: 'float32',
  };
}
