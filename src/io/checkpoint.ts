/**
 * One entry point for weights from anywhere: a safetensors file, a torch.save checkpoint
 * (.pth/.pt/.bin), or a Hugging Face model folder (config.json + model.safetensors or
 * pytorch_model.bin, sharded or not). Files are recognised by their bytes, not their extension;
 * transformers key names are mapped to torchvision's, so the result loads into a ResNet directly.
 *
 * And the way back: saveHfFolder writes a ResNet as a folder transformers can load with
 * ResNetForImageClassification.from_pretrained.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FormatError, UsageError } from '../errors.js';
import type { StateDict } from '../nn/module.js';
import { ResNet } from '../models/resnet.js';
import type { Tensor } from '../tensor/tensor.js';
import {
  type HfResNetConfig,
  hfConfigFromModel,
  hfToTorchvisionKeys,
  looksLikeHfKeys,
  parseHfConfig,
  resnetOptionsFromHf,
  torchvisionToHfKeys,
} from './hf.js';
import { parsePth, stripModulePrefix } from './pth.js';
import { type RawTensor, readFileBytes, writeFileAtomic } from './raw.js';
import { parseSafetensors } from './safetensors.js';
import { rawToTensor, writeStateDict } from './state.js';
import { isZip } from './zip.js';

export type CheckpointFormat = 'safetensors' | 'pth' | 'hf';

export interface Checkpoint {
  /** torchvision-named tensors in file order. */
  stateDict: StateDict;
  format: CheckpointFormat;
  /** Set for Hugging Face folders. */
  hfConfig?: HfResNetConfig;
  /** True when the file used transformers key names (mapped to torchvision's in stateDict). */
  renamedFromHf?: boolean;
}

/** What a file's bytes are: 'pth' (ZIP or legacy torch.save pickle), 'safetensors', or undefined. */
export function sniffFormat(bytes: Uint8Array): 'pth' | 'safetensors' | undefined {
  if (isZip(bytes)) return 'pth';
  if (bytes.length >= 2 && bytes[0] === 0x80 && bytes[1]! <= 5) return 'pth'; // a pickle: parsePth explains
  if (bytes.length >= 9) {
    // safetensors: u64 header length, then a JSON object.
    const n = new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
    if (n > 0n && n <= BigInt(bytes.length - 8) && bytes[8] === 0x7b /* { */) return 'safetensors';
  }
  return undefined;
}

function parseWeightsFile(bytes: Uint8Array, file: string): { tensors: Map<string, RawTensor>; format: 'pth' | 'safetensors' } {
  const kind = sniffFormat(bytes);
  if (kind === 'pth') return { tensors: parsePth(bytes, file), format: 'pth' };
  if (kind === 'safetensors') return { tensors: parseSafetensors(bytes, file).tensors, format: 'safetensors' };
  const ext = path.extname(file).toLowerCase();
  // Let the parser the extension promises produce the precise error.
  if (ext === '.safetensors') return { tensors: parseSafetensors(bytes, file).tensors, format: 'safetensors' };
  if (ext === '.pth' || ext === '.pt' || ext === '.bin' || ext === '.ckpt') return { tensors: parsePth(bytes, file), format: 'pth' };
  throw new FormatError(`${file}: unrecognised checkpoint format (expected safetensors, a torch.save ZIP archive, or a Hugging Face model folder)`);
}

function toStateDict(tensors: Map<string, RawTensor>, file: string): { stateDict: StateDict; renamedFromHf: boolean } {
  if (tensors.size === 0) throw new FormatError(`${file}: the checkpoint holds no tensors`);
  const plain = stripModulePrefix(tensors); // DataParallel "module." on every key (parsePth already strips it)
  const hf = looksLikeHfKeys(plain.keys());
  const named = hf ? hfToTorchvisionKeys(plain, file) : plain;
  const stateDict: StateDict = new Map();
  for (const [k, raw] of named) stateDict.set(k, rawToTensor(raw));
  return { stateDict, renamedFromHf: hf };
}

/**
 * Reads weights from a safetensors file, a torch.save checkpoint or a Hugging Face folder, as a
 * torchvision-named state dict. Problems are FormatErrors naming the file.
 */
export function readCheckpoint(p: string): Checkpoint {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(p);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new FormatError(code === 'ENOENT' ? `file not found: ${p}` : `${p}: cannot read (${code ?? (e as Error).message})`);
  }
  if (stat.isDirectory()) return readHfFolder(p);
  const bytes = readFileBytes(p);
  const { tensors, format } = parseWeightsFile(bytes, p);
  const { stateDict, renamedFromHf } = toStateDict(tensors, p);
  return renamedFromHf ? { stateDict, format, renamedFromHf } : { stateDict, format };
}

/** Reads and validates `<dir>/config.json`. */
export function readHfConfig(dir: string): HfResNetConfig {
  const file = path.join(dir, 'config.json');
  if (!fs.existsSync(file)) throw new FormatError(`${dir}: no config.json (expected a Hugging Face model folder, or a weights file)`);
  const text = new TextDecoder('utf-8').decode(readFileBytes(file));
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new FormatError(`${file}: not valid JSON (${(e as Error).message.replace(/\s+/g, ' ')})`);
  }
  return parseHfConfig(json, file);
}

const WEIGHT_FILES = ['model.safetensors', 'pytorch_model.bin'];
const INDEX_FILES = ['model.safetensors.index.json', 'pytorch_model.bin.index.json'];

function readHfFolder(dir: string): Checkpoint {
  const hfConfig = readHfConfig(dir);
  let tensors: Map<string, RawTensor> | undefined;
  let source = dir;
  for (const f of WEIGHT_FILES) {
    const file = path.join(dir, f);
    if (fs.existsSync(file)) {
      tensors = parseWeightsFile(readFileBytes(file), file).tensors;
      source = file;
      break;
    }
  }
  if (!tensors) {
    for (const f of INDEX_FILES) {
      const file = path.join(dir, f);
      if (fs.existsSync(file)) {
        tensors = readSharded(dir, file);
        source = file;
        break;
      }
    }
  }
  if (!tensors) throw new FormatError(`${dir}: no weights (expected one of ${[...WEIGHT_FILES, ...INDEX_FILES].join(', ')})`);
  const { stateDict } = toStateDict(tensors, source);
  // The classifier must agree with the config's labels.
  const fc = stateDict.get('fc.weight');
  if (fc && hfConfig.numLabels !== undefined && hfConfig.numLabels > 0 && fc.shape[0] !== hfConfig.numLabels) {
    throw new FormatError(`${source}: the classifier has ${fc.shape[0]} outputs but config.json lists ${hfConfig.numLabels} labels`);
  }
  return { stateDict, format: 'hf', hfConfig, renamedFromHf: true };
}

function readSharded(dir: string, indexFile: string): Map<string, RawTensor> {
  let index: unknown;
  try {
    index = JSON.parse(new TextDecoder('utf-8').decode(readFileBytes(indexFile)));
  } catch (e) {
    if (e instanceof FormatError) throw e;
    throw new FormatError(`${indexFile}: not valid JSON (${(e as Error).message.replace(/\s+/g, ' ')})`);
  }
  const map = (index as { weight_map?: unknown } | null)?.weight_map;
  if (typeof map !== 'object' || map === null || Array.isArray(map)) throw new FormatError(`${indexFile}: missing "weight_map" object`);
  const shards = new Set<string>();
  for (const [k, v] of Object.entries(map)) {
    // Shard names are plain file names in the folder: never paths (no escaping the folder).
    if (typeof v !== 'string' || v === '' || v !== path.basename(v) || v === '.' || v === '..') {
      throw new FormatError(`${indexFile}: weight_map entry ${JSON.stringify(k)} names ${JSON.stringify(v)}, not a file in the folder`);
    }
    shards.add(v);
  }
  const out = new Map<string, RawTensor>();
  for (const s of shards) {
    const file = path.join(dir, s);
    for (const [k, t] of parseWeightsFile(readFileBytes(file), file).tensors) {
      if (out.has(k)) throw new FormatError(`${file}: tensor ${JSON.stringify(k)} also appears in another shard`);
      out.set(k, t);
    }
  }
  return out;
}

/**
 * A ResNet shaped like an HF config; the number of classes comes from the state dict's fc.weight
 * when given (else from the config's labels). Weights are not loaded.
 */
export function resnetFromHfConfig(cfg: HfResNetConfig, stateDict?: ReadonlyMap<string, Tensor>, source?: string): ResNet {
  const fc = stateDict?.get('fc.weight');
  const { block, layers, options } = resnetOptionsFromHf(cfg, { numClasses: fc?.shape[0], source });
  return new ResNet(block, layers, options);
}

/**
 * Writes `model` as a Hugging Face folder: config.json (ResNetForImageClassification) and
 * model.safetensors with transformers key names (num_batches_tracked as I64). Weights are
 * written first, each file atomically, so a folder with a config.json always has its weights.
 */
export function saveHfFolder(dir: string, model: ResNet, id2label?: readonly string[] | Record<string | number, string>): void {
  const o = model.options;
  const problems: string[] = [];
  if (o.stem !== 'imagenet') problems.push(`stem ${o.stem}`);
  if (o.plain) problems.push('plain (no shortcuts)');
  if (o.shortcut !== 'B') problems.push(`shortcut ${o.shortcut}`);
  if (o.replaceStrideWithDilation.some((d) => d)) problems.push('dilation');
  if (problems.length) {
    throw new UsageError(`this ResNet cannot be saved as a Hugging Face ResNet (${problems.join(', ')}); only torchvision-style ImageNet ResNets with option-B shortcuts can`);
  }
  const config = hfConfigFromModel({
    block: o.block,
    layers: o.layers,
    widths: o.widths,
    stemWidth: o.stemWidth,
    inChannels: o.inChannels,
    numClasses: o.numClasses,
    groups: o.groups,
    widthPerGroup: o.widthPerGroup,
    ...(id2label !== undefined ? { id2label } : {}),
  });
  try {
    fs.mkdirSync(dir, { recursive: true });
  } catch (e) {
    throw new FormatError(`${dir}: cannot create folder (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  const sd = torchvisionToHfKeys(model.stateDict(), { withClassifier: true });
  writeStateDict(path.join(dir, 'model.safetensors'), sd, { format: 'pt' });
  writeFileAtomic(path.join(dir, 'config.json'), new TextEncoder().encode(`${JSON.stringify(config, null, 2)}\n`));
}
