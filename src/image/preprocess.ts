/**
 * The two ImageNet preprocessing recipes pretrained ResNets expect, computed here on decoded RGB
 * pixels (uint8 HWC) with the exact arithmetic of the reference implementations:
 *
 * - `torchvision`: torchvision's `ImageClassification` preset (the weights' `transforms()`):
 *   resize the shorter side to `resizeSize` (256 for IMAGENET1K_V1, 232 for most V2 weights) with
 *   PIL's antialiased filter, the longer side to `int(resizeSize * long / short)`
 *   (`_compute_resized_output_size`); center crop `cropSize` at
 *   `top = int(round((h - crop) / 2))` (Python's round: half to even); then
 *   `float32(v) / 255`, `(x - mean) / std` in float32 (`convert_image_dtype` + `normalize`).
 * - `hf-convnext`: transformers' `ConvNextImageProcessor` (what microsoft/resnet-* use), slow PIL
 *   path: if `shortestEdge < 384`, resize the shortest edge to `int(shortestEdge / cropPct)`
 *   keeping the aspect ratio (same size rule), then center crop `shortestEdge` at
 *   `top = (h - crop) // 2` (floor); otherwise warp to `shortestEdge x shortestEdge` with no
 *   crop. Then `float32(float64(v) * rescaleFactor)` and `(x - mean) / std` in float32.
 *
 * The resize is Pillow's (./resample.ts), so the uint8 image after resize and crop is
 * byte-identical to torchvision's/transformers' on the same decoded pixels (see
 * test/image.test.ts and docs/PRETRAINED.md for the measured parity).
 */
import { FormatError, ShapeError } from '../errors.js';
import { PIL_RESAMPLE_CODES, resizeU8, type ResampleFilter } from './resample.js';

/** Decoded pixels: 8-bit sRGB, 3 channels interleaved, row-major (height x width x 3). */
export interface RgbImage {
  width: number;
  height: number;
  data: Uint8Array;
}

export type Triple = readonly [number, number, number];

export const IMAGENET_MEAN: Triple = [0.485, 0.456, 0.406];
export const IMAGENET_STD: Triple = [0.229, 0.224, 0.225];
/** transformers' IMAGENET_STANDARD_MEAN / _STD, the ConvNext processor's defaults. */
export const IMAGENET_STANDARD_MEAN: Triple = [0.5, 0.5, 0.5];
export const IMAGENET_STANDARD_STD: Triple = [0.5, 0.5, 0.5];

export interface TorchvisionPreprocess {
  kind: 'torchvision';
  resizeSize: number;
  cropSize: number;
  interpolation: ResampleFilter;
  mean: Triple;
  std: Triple;
}

export interface HfConvNextPreprocess {
  kind: 'hf-convnext';
  doResize: boolean;
  shortestEdge: number;
  cropPct: number;
  resample: ResampleFilter;
  doRescale: boolean;
  rescaleFactor: number;
  doNormalize: boolean;
  mean: Triple;
  std: Triple;
}

export type PreprocessSpec = TorchvisionPreprocess | HfConvNextPreprocess;

/** torchvision's ImageClassification preset (defaults: IMAGENET1K_V1's 256 / 224, bilinear, ImageNet mean/std). */
export function torchvisionPreset(opts: Partial<Omit<TorchvisionPreprocess, 'kind'>> = {}): TorchvisionPreprocess {
  return {
    kind: 'torchvision',
    resizeSize: opts.resizeSize ?? 256,
    cropSize: opts.cropSize ?? 224,
    interpolation: opts.interpolation ?? 'bilinear',
    mean: opts.mean ?? IMAGENET_MEAN,
    std: opts.std ?? IMAGENET_STD,
  };
}

/**
 * ConvNextImageProcessor's defaults, used when a model folder has no preprocessor_config.json:
 * size {"shortest_edge": 384} (so: warp to 384 x 384, no crop), crop_pct 224/256 (unused at 384),
 * resample BICUBIC, rescale 1/255, mean = std = [0.5, 0.5, 0.5] (IMAGENET_STANDARD_*).
 */
export function hfConvNextDefaults(): HfConvNextPreprocess {
  return {
    kind: 'hf-convnext',
    doResize: true,
    shortestEdge: 384,
    cropPct: 224 / 256,
    resample: 'bicubic',
    doRescale: true,
    rescaleFactor: 1 / 255,
    doNormalize: true,
    mean: IMAGENET_STANDARD_MEAN,
    std: IMAGENET_STANDARD_STD,
  };
}

const SUPPORTED_PROCESSORS = new Set(['ConvNextImageProcessor', 'ConvNextFeatureExtractor', 'ConvNextImageProcessorFast']);

/**
 * The preprocessing described by a parsed preprocessor_config.json (ConvNextImageProcessor /
 * ConvNextFeatureExtractor, as microsoft/resnet-* ship). Absent keys take the processor's
 * defaults (hfConvNextDefaults); other processor types and malformed values are FormatErrors.
 */
export function hfPreprocessFromConfig(json: unknown, source = 'preprocessor_config.json'): HfConvNextPreprocess {
  const fail = (m: string): never => {
    throw new FormatError(`${source}: ${m}`);
  };
  if (typeof json !== 'object' || json === null || Array.isArray(json)) return fail('expected a JSON object');
  const o = json as Record<string, unknown>;
  const get = (k: string): unknown => (Object.prototype.hasOwnProperty.call(o, k) && o[k] !== null ? o[k] : undefined);
  const type = get('image_processor_type') ?? get('feature_extractor_type');
  if (type !== undefined && (typeof type !== 'string' || !SUPPORTED_PROCESSORS.has(type))) {
    fail(`unsupported image processor ${JSON.stringify(type)} (resnet-ts implements ConvNextImageProcessor, which microsoft/resnet-* use)`);
  }
  const spec = hfConvNextDefaults();
  const bool = (k: string, d: boolean): boolean => {
    const v = get(k);
    if (v === undefined) return d;
    if (typeof v !== 'boolean') return fail(`"${k}" must be true or false, got ${JSON.stringify(v)}`);
    return v;
  };
  const num = (k: string, d: number, ok: (n: number) => boolean, what: string): number => {
    const v = get(k);
    if (v === undefined) return d;
    if (typeof v !== 'number' || !Number.isFinite(v) || !ok(v)) return fail(`"${k}" must be ${what}, got ${JSON.stringify(v)}`);
    return v;
  };
  const triple = (k: string, d: Triple): Triple => {
    const v = get(k);
    if (v === undefined) return d;
    if (typeof v === 'number' && Number.isFinite(v)) return [v, v, v];
    if (!Array.isArray(v) || v.length !== 3 || !v.every((x) => typeof x === 'number' && Number.isFinite(x))) {
      return fail(`"${k}" must be a number or a list of 3 numbers (one per RGB channel), got ${JSON.stringify(v)}`);
    }
    return [v[0], v[1], v[2]] as Triple;
  };
  spec.doResize = bool('do_resize', true);
  spec.doRescale = bool('do_rescale', true);
  spec.doNormalize = bool('do_normalize', true);
  const size = get('size');
  if (size !== undefined) {
    if (typeof size === 'number') spec.shortestEdge = size;
    else if (typeof size === 'object' && !Array.isArray(size) && typeof (size as Record<string, unknown>)['shortest_edge'] === 'number') {
      spec.shortestEdge = (size as Record<string, number>)['shortest_edge']!;
    } else {
      fail(`"size" must be an integer or {"shortest_edge": N} for ConvNextImageProcessor, got ${JSON.stringify(size)}`);
    }
    if (!Number.isSafeInteger(spec.shortestEdge) || spec.shortestEdge < 1 || spec.shortestEdge > 16384) {
      fail(`"size" must be a positive integer (at most 16384), got ${JSON.stringify(size)}`);
    }
  }
  spec.cropPct = num('crop_pct', spec.cropPct, (n) => n > 0 && n <= 4, 'a number in (0, 4]');
  const resample = get('resample');
  if (resample !== undefined) {
    const f = typeof resample === 'number' ? PIL_RESAMPLE_CODES[resample] : undefined;
    if (f === undefined) fail(`"resample" must be a PIL filter code 0..5, got ${JSON.stringify(resample)}`);
    if (f === 'nearest') fail('"resample" 0 (NEAREST) is not supported; use 2 (BILINEAR) or 3 (BICUBIC)');
    spec.resample = f as ResampleFilter;
  }
  spec.rescaleFactor = num('rescale_factor', spec.rescaleFactor, (n) => n > 0, 'a positive number');
  spec.mean = triple('image_mean', spec.mean);
  spec.std = triple('image_std', spec.std);
  if (spec.std.some((s) => s === 0)) fail('"image_std" must not contain 0');
  return spec;
}

/** A one-line description ("torchvision: resize 256 bilinear, crop 224, ImageNet mean/std"). */
export function describePreprocess(p: PreprocessSpec): string {
  const stats = (m: Triple, s: Triple): string =>
    m.join() === IMAGENET_MEAN.join() && s.join() === IMAGENET_STD.join() ? 'ImageNet mean/std' : `mean [${m.join(', ')}] std [${s.join(', ')}]`;
  if (p.kind === 'torchvision') return `torchvision: resize ${p.resizeSize} ${p.interpolation}, crop ${p.cropSize}, ${stats(p.mean, p.std)}`;
  const size = !p.doResize
    ? 'no resize'
    : p.shortestEdge < 384
      ? `resize ${Math.trunc(p.shortestEdge / p.cropPct)} ${p.resample}, crop ${p.shortestEdge}`
      : `resize to ${p.shortestEdge}x${p.shortestEdge} ${p.resample}`;
  return `transformers ConvNextImageProcessor: ${size}, ${p.doNormalize ? stats(p.mean, p.std) : 'no normalization'}`;
}

/** torchvision's _compute_resized_output_size / transformers' get_resize_output_image_size for one int. */
export function shorterSideSize(width: number, height: number, size: number): { width: number; height: number } {
  const [short, long] = width <= height ? [width, height] : [height, width];
  const newLong = Math.trunc((size * long) / short);
  return width <= height ? { width: size, height: newLong } : { width: newLong, height: size };
}

/** Python's round() on a float (half to even), as int(round(x)) in torchvision's center_crop. */
function pyRound(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** Largest resized image we agree to make (pixels): guards extreme aspect ratios (1 x 100000). */
const MAX_RESIZED_PIXELS = 64 * 1024 * 1024;

function resizeImage(img: RgbImage, w: number, h: number, filter: ResampleFilter): RgbImage {
  if (w * h > MAX_RESIZED_PIXELS) {
    throw new ShapeError(`image ${img.width}x${img.height} would be resized to ${w}x${h}: its aspect ratio is too extreme for this preprocessing`);
  }
  return { width: w, height: h, data: resizeU8(img.data, img.width, img.height, 3, w, h, filter) };
}

/** Crops (top, left, h, w), padding with zeros where the box leaves the image (as both libraries pad with 0). */
function crop(img: RgbImage, top: number, left: number, h: number, w: number): RgbImage {
  const out = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) {
    const sy = top + y;
    if (sy < 0 || sy >= img.height) continue;
    for (let x = 0; x < w; x++) {
      const sx = left + x;
      if (sx < 0 || sx >= img.width) continue;
      const s = (sy * img.width + sx) * 3;
      const d = (y * w + x) * 3;
      out[d] = img.data[s]!;
      out[d + 1] = img.data[s + 1]!;
      out[d + 2] = img.data[s + 2]!;
    }
  }
  return { width: w, height: h, data: out };
}

/** torchvision.transforms.functional.center_crop on a PIL image (pads with 0 when too small). */
function torchvisionCenterCrop(img: RgbImage, size: number): RgbImage {
  let { width: iw, height: ih } = img;
  let padTop = 0;
  let padLeft = 0;
  if (size > iw || size > ih) {
    // pad [left, top, right, bottom] = [(c - w) // 2, (c - h) // 2, (c - w + 1) // 2, (c - h + 1) // 2]
    padLeft = size > iw ? Math.floor((size - iw) / 2) : 0;
    padTop = size > ih ? Math.floor((size - ih) / 2) : 0;
    const padRight = size > iw ? Math.floor((size - iw + 1) / 2) : 0;
    const padBottom = size > ih ? Math.floor((size - ih + 1) / 2) : 0;
    iw += padLeft + padRight;
    ih += padTop + padBottom;
  }
  const top = pyRound((ih - size) / 2.0) - padTop;
  const left = pyRound((iw - size) / 2.0) - padLeft;
  return crop(img, top, left, size, size);
}

/** transformers.image_transforms.center_crop (floor division; pads with 0 when too small). */
function hfCenterCrop(img: RgbImage, size: number): RgbImage {
  const { width: ow, height: oh } = img;
  let top = Math.floor((oh - size) / 2);
  let left = Math.floor((ow - size) / 2);
  if (top < 0 || left < 0 || top + size > oh || left + size > ow) {
    const nh = Math.max(size, oh);
    const nw = Math.max(size, ow);
    const topPad = Math.ceil((nh - oh) / 2);
    const leftPad = Math.ceil((nw - ow) / 2);
    // crop [top + topPad, ...] of the padded image == [top, ...] of the original shifted by 0
    top = Math.max(0, top + topPad) - topPad;
    left = Math.max(0, left + leftPad) - leftPad;
  }
  return crop(img, top, left, size, size);
}

/** The uint8 image after resize and crop (HWC), before any float conversion. */
export function resizeAndCrop(img: RgbImage, spec: PreprocessSpec): RgbImage {
  checkImage(img);
  if (spec.kind === 'torchvision') {
    const s = shorterSideSize(img.width, img.height, spec.resizeSize);
    const resized = s.width === img.width && s.height === img.height ? img : resizeImage(img, s.width, s.height, spec.interpolation);
    return torchvisionCenterCrop(resized, spec.cropSize);
  }
  if (!spec.doResize) return img;
  if (spec.shortestEdge < 384) {
    const edge = Math.trunc(spec.shortestEdge / spec.cropPct);
    const s = shorterSideSize(img.width, img.height, edge);
    return hfCenterCrop(resizeImage(img, s.width, s.height, spec.resample), spec.shortestEdge);
  }
  return resizeImage(img, spec.shortestEdge, spec.shortestEdge, spec.resample);
}

/**
 * Float32 CHW [3, H, W] model input for one decoded image, with the reference implementation's
 * float32 rounding at every step.
 */
export function preprocessImage(img: RgbImage, spec: PreprocessSpec): { data: Float32Array; shape: [number, number, number] } {
  const small = resizeAndCrop(img, spec);
  return { data: normalizeToChw(small, spec), shape: [3, small.height, small.width] };
}

/** uint8 HWC -> normalized float32 CHW, following the spec's arithmetic. */
export function normalizeToChw(img: RgbImage, spec: PreprocessSpec): Float32Array {
  const { width: w, height: h, data } = img;
  const hw = w * h;
  const out = new Float32Array(3 * hw);
  const f = Math.fround;
  // 256-entry lookup per channel: every step rounded to float32 exactly as torch/numpy do.
  for (let c = 0; c < 3; c++) {
    const m = f(spec.mean[c]!);
    const s = f(spec.std[c]!);
    const lut = new Float32Array(256);
    for (let v = 0; v < 256; v++) {
      let x: number;
      if (spec.kind === 'torchvision') {
        x = f(v / 255); // convert_image_dtype: float32(v) / 255 (float32 division)
        x = f(f(x - m) / s); // normalize: sub_(mean).div_(std) in float32
      } else {
        x = spec.doRescale ? f(v * spec.rescaleFactor) : v; // float64 multiply, then astype(float32)
        if (spec.doNormalize) x = f(f(x - m) / s);
      }
      lut[v] = x;
    }
    const plane = out.subarray(c * hw, (c + 1) * hw);
    for (let i = 0; i < hw; i++) plane[i] = lut[data[i * 3 + c]!]!;
  }
  return out;
}

function checkImage(img: RgbImage): void {
  if (!Number.isSafeInteger(img.width) || !Number.isSafeInteger(img.height) || img.width < 1 || img.height < 1) {
    throw new ShapeError(`image size must be positive integers, got ${img.width}x${img.height}`);
  }
  if (img.data.length !== img.width * img.height * 3) {
    throw new ShapeError(`image ${img.width}x${img.height} needs ${img.width * img.height * 3} bytes of RGB, got ${img.data.length}`);
  }
}
