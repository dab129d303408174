/**
 * torchvision's pretrained ImageNet weights for the ResNet family, as data: the `*_Weights`
 * enums of torchvision 0.14 (torchvision/models/resnet.py) with their download URL, parameter
 * count, ImageNet-1K accuracy and preprocessing preset (`weights.transforms()`:
 * ImageClassification with resize 256, or 232 for the V2 recipe, center crop 224, bilinear,
 * ImageNet mean/std). test/hub.test.ts checks every entry against
 * test/fixtures/images/torchvision_weights.json, which scripts/golden/gen_preprocess.py
 * --hub-data dumps from torchvision itself.
 *
 * The file name's hash prefix (the hex digits after the last "-": "0676ba61" in
 * resnet50-0676ba61.pth) is the start of the file's SHA-256, which downloads are checked against
 * (torch.hub's check_hash).
 */
import { UsageError } from '../errors.js';
import { torchvisionPreset, type TorchvisionPreprocess } from '../image/preprocess.js';

export type WeightsName = 'IMAGENET1K_V1' | 'IMAGENET1K_V2';

export interface TorchvisionWeights {
  arch: string;
  name: WeightsName;
  url: string;
  /** Last path segment of the URL: the file name in the torch hub cache. */
  fileName: string;
  /** Expected prefix of the file's SHA-256 (from the file name). */
  hashPrefix: string;
  numParams: number;
  /** ImageNet-1K validation accuracy (%), single crop, as torchvision reports it. */
  acc1: number;
  acc5: number;
  numClasses: 1000;
  preprocess: TorchvisionPreprocess;
  /** True for the enum's DEFAULT. */
  isDefault: boolean;
}

const BASE = 'https://download.pytorch.org/models/';

// arch, weights, file, num_params, acc@1, acc@5, resize size
const TABLE: readonly (readonly [string, WeightsName, string, number, number, number, 256 | 232])[] = [
  ['resnet18', 'IMAGENET1K_V1', 'resnet18-f37072fd.pth', 11689512, 69.758, 89.078, 256],
  ['resnet34', 'IMAGENET1K_V1', 'resnet34-b627a593.pth', 21797672, 73.314, 91.42, 256],
  ['resnet50', 'IMAGENET1K_V1', 'resnet50-0676ba61.pth', 25557032, 76.13, 92.862, 256],
  ['resnet50', 'IMAGENET1K_V2', 'resnet50-11ad3fa6.pth', 25557032, 80.858, 95.434, 232],
  ['resnet101', 'IMAGENET1K_V1', 'resnet101-63fe2227.pth', 44549160, 77.374, 93.546, 256],
  ['resnet101', 'IMAGENET1K_V2', 'resnet101-cd907fc2.pth', 44549160, 81.886, 95.78, 232],
  ['resnet152', 'IMAGENET1K_V1', 'resnet152-394f9c45.pth', 60192808, 78.312, 94.046, 256],
  ['resnet152', 'IMAGENET1K_V2', 'resnet152-f82ba261.pth', 60192808, 82.284, 96.002, 232],
  ['resnext50_32x4d', 'IMAGENET1K_V1', 'resnext50_32x4d-7cdf4587.pth', 25028904, 77.618, 93.698, 256],
  ['resnext50_32x4d', 'IMAGENET1K_V2', 'resnext50_32x4d-1a0047aa.pth', 25028904, 81.198, 95.34, 232],
  ['resnext101_32x8d', 'IMAGENET1K_V1', 'resnext101_32x8d-8ba56ff5.pth', 88791336, 79.312, 94.526, 256],
  ['resnext101_32x8d', 'IMAGENET1K_V2', 'resnext101_32x8d-110c445d.pth', 88791336, 82.834, 96.228, 232],
  // torchvision has a single (V1) entry for resnext101_64x4d, trained with the new recipe (232).
  ['resnext101_64x4d', 'IMAGENET1K_V1', 'resnext101_64x4d-173b62eb.pth', 83455272, 83.246, 96.454, 232],
  ['wide_resnet50_2', 'IMAGENET1K_V1', 'wide_resnet50_2-95faca4d.pth', 68883240, 78.468, 94.086, 256],
  ['wide_resnet50_2', 'IMAGENET1K_V2', 'wide_resnet50_2-9ba9bcbe.pth', 68883240, 81.602, 95.758, 232],
  ['wide_resnet101_2', 'IMAGENET1K_V1', 'wide_resnet101_2-32ee1156.pth', 126886696, 78.848, 94.284, 256],
  ['wide_resnet101_2', 'IMAGENET1K_V2', 'wide_resnet101_2-d733dc28.pth', 126886696, 82.51, 96.02, 232],
];

/**
 * The SHA-256 prefix a torchvision-style file name promises: the 8 or more lowercase hex digits
 * between the last "-" and the extension ("resnet50-0676ba61.pth" -> "0676ba61"), or undefined.
 */
export function hashPrefixOf(fileName: string): string | undefined {
  return /-([0-9a-f]{8,})\.[^-]*$/.exec(fileName)?.[1];
}

function build(): TorchvisionWeights[] {
  const archs = new Set(TABLE.map((r) => r[0]));
  const out: TorchvisionWeights[] = [];
  for (const arch of archs) {
    const rows = TABLE.filter((r) => r[0] === arch);
    // DEFAULT is the newest entry (V2 where it exists), as in torchvision.
    const def = rows[rows.length - 1]![1];
    for (const [, name, fileName, numParams, acc1, acc5, resize] of rows) {
      out.push({
        arch,
        name,
        url: BASE + fileName,
        fileName,
        hashPrefix: hashPrefixOf(fileName)!,
        numParams,
        acc1,
        acc5,
        numClasses: 1000,
        preprocess: torchvisionPreset({ resizeSize: resize, cropSize: 224 }),
        isDefault: name === def,
      });
    }
  }
  return out;
}

/** Every known torchvision ResNet weights entry. */
export const TORCHVISION_WEIGHTS: readonly TorchvisionWeights[] = Object.freeze(build());

/** True when `s` names torchvision weights ("IMAGENET1K_V1", "IMAGENET1K_V2" or "DEFAULT", any case, optionally "Enum.NAME"). */
export function isWeightsName(s: string): boolean {
  return /^(?:\w+_Weights\.)?(IMAGENET1K_V[12]|DEFAULT)$/i.test(s.trim());
}

/**
 * The entry for `arch` and `name` (IMAGENET1K_V1, IMAGENET1K_V2 or DEFAULT; case-insensitive;
 * "ResNet50_Weights.IMAGENET1K_V2" is accepted too). Unknown combinations are UsageErrors that
 * list what exists.
 */
export function getTorchvisionWeights(arch: string, name: string): TorchvisionWeights {
  const rows = TORCHVISION_WEIGHTS.filter((w) => w.arch === arch);
  if (rows.length === 0) {
    const archs = [...new Set(TORCHVISION_WEIGHTS.map((w) => w.arch))].join(', ');
    throw new UsageError(`torchvision has no pretrained weights for ${JSON.stringify(arch)} (weights exist for ${archs})`);
  }
  const n = name.trim().replace(/^\w+_Weights\./i, '').toUpperCase();
  const hit = n === 'DEFAULT' ? rows.find((w) => w.isDefault) : rows.find((w) => w.name === n);
  if (!hit) throw new UsageError(`${arch} has no weights ${JSON.stringify(name)} (choose ${rows.map((w) => w.name).join(', ')} or DEFAULT)`);
  return hit;
}

/** The entry whose file name is `fileName` (a torch hub cache file such as resnet50-0676ba61.pth), if any. */
export function torchvisionWeightsForFile(fileName: string): TorchvisionWeights | undefined {
  return TORCHVISION_WEIGHTS.find((w) => w.fileName === fileName);
}
