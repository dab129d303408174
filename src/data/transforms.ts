/**
 * Image transforms for training and evaluation, after torchvision.transforms.
 *
 * Every transform works on one CHW image (`ImageCHW`: uint8 0..255 or float32, usually [0, 1]) and
 * takes an explicit Generator for its randomness: given the same generator state the result is
 * the same, bit for bit (the DataLoader seeds one generator per sample from (seed, epoch, index)).
 * Transforms never modify their input (the DataLoader hands them views of the dataset's memory);
 * a transform that changes nothing may return its input.
 *
 * dtype: geometric transforms (crops, flip, resize, erasing) keep the dtype (uint8 results are
 * rounded to nearest and clamped); ColorJitter keeps it (clamped to [0, 255] or [0, 1]); ToFloat
 * turns uint8 into float32 in [0, 1]; Normalize needs float32.
 *
 * Randomness does not reproduce torch's generator (ours is xoshiro128**): the same *algorithm*
 * (draw order, ranges, rejection rules) with another stream of numbers.
 *
 * Workers: the DataLoader rebuilds transforms inside worker threads from `spec()` (a type name
 * and the constructor arguments, structured-cloneable). The built-in transforms all have one. A
 * custom transform can take part by returning `{ type: 'MyTransform', args, module: import.meta.url }`
 * from spec(): the worker imports `module` and calls `MyTransform.fromSpec(...args)` when that
 * static exists, else `new MyTransform(...args)`.
 */
import { ShapeError, UsageError } from '../errors.js';
import { Generator } from '../tensor/rng.js';

export type Pixels = Uint8Array | Float32Array;

/** One image, channel-major (CHW): data[c * height * width + y * width + x]. */
export interface ImageCHW {
  data: Pixels;
  channels: number;
  height: number;
  width: number;
}

/** What a worker needs to rebuild a transform: type name, constructor arguments, optional module. */
export interface TransformSpec {
  type: string;
  args: unknown[];
  /** URL of the module exporting `type` (custom transforms only). */
  module?: string;
}

export interface Transform {
  apply(img: ImageCHW, gen: Generator): ImageCHW;
  /** A rebuildable description (needed for DataLoader workers). */
  spec?(): TransformSpec;
}

export type Size = number | readonly [number, number];
export type PaddingMode = 'constant' | 'edge' | 'reflect' | 'symmetric';

// ---- helpers ----------------------------------------------------------------------------------

/** Python's round(): halves go to the even neighbour. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

function toPair(size: Size, what: string): [number, number] {
  const p: [number, number] = typeof size === 'number' ? [size, size] : [size[0], size[1]];
  if (!p.every((v) => Number.isInteger(v) && v > 0)) throw new UsageError(`${what}: size must be a positive integer or [height, width], got ${JSON.stringify(size)}`);
  return p;
}

function checkRange(r: readonly [number, number], what: string, positive = true): [number, number] {
  if (!(r.length === 2 && Number.isFinite(r[0]) && Number.isFinite(r[1]) && r[0] <= r[1] && (!positive || r[0] > 0))) {
    throw new UsageError(`${what} must be [min, max] with ${positive ? '0 < ' : ''}min <= max, got ${JSON.stringify(r)}`);
  }
  return [r[0], r[1]];
}

function isFloat(img: ImageCHW): boolean {
  return img.data instanceof Float32Array;
}

function alloc(img: ImageCHW, n: number): Pixels {
  return isFloat(img) ? new Float32Array(n) : new Uint8Array(n);
}

function u8(v: number): number {
  return v <= 0 ? 0 : v >= 255 ? 255 : Math.round(v);
}

/** Per-channel fill values, converted for the image's dtype. */
function fillFor(img: ImageCHW, fill: number | readonly number[], what: string): number[] {
  const f = typeof fill === 'number' ? [fill] : [...fill];
  if (f.length !== 1 && f.length !== img.channels) throw new UsageError(`${what}: fill has ${f.length} values for an image of ${img.channels} channels`);
  const out = Array.from({ length: img.channels }, (_, c) => f[f.length === 1 ? 0 : c]!);
  return isFloat(img) ? out : out.map(u8);
}

/** Maps a padded coordinate p (padding `before` in front of n pixels) to a source index, or -1. */
function padIndex(p: number, n: number, before: number, mode: PaddingMode): number {
  let x = p - before;
  if (x >= 0 && x < n) return x;
  switch (mode) {
    case 'constant':
      return -1;
    case 'edge':
      return x < 0 ? 0 : n - 1;
    case 'reflect': {
      if (n === 1) return 0;
      const period = 2 * n - 2;
      x = ((x % period) + period) % period;
      return x >= n ? period - x : x;
    }
    case 'symmetric': {
      const period = 2 * n;
      x = ((x % period) + period) % period;
      return x >= n ? period - 1 - x : x;
    }
  }
}

/** Pads an index map (source indices, -1 = fill) by `before`/`after` entries. */
function padMap(map: Int32Array, before: number, after: number, mode: PaddingMode): Int32Array {
  const n = map.length;
  const out = new Int32Array(n + before + after);
  for (let p = 0; p < out.length; p++) {
    const x = padIndex(p, n, before, mode);
    out[p] = x < 0 ? -1 : map[x]!;
  }
  return out;
}

function identityMap(n: number): Int32Array {
  const m = new Int32Array(n);
  for (let i = 0; i < n; i++) m[i] = i;
  return m;
}

/** out[c][r][k] = img[c][rows[r]][cols[k]], or fill[c] where an index is -1. */
function gather(img: ImageCHW, rows: Int32Array, cols: Int32Array, fill: number[]): ImageCHW {
  const { channels: C, height: H, width: W, data } = img;
  const h = rows.length;
  const w = cols.length;
  const out = alloc(img, C * h * w);
  for (let c = 0; c < C; c++) {
    const f = fill[c]!;
    const src = c * H * W;
    let o = c * h * w;
    for (let r = 0; r < h; r++) {
      const y = rows[r]!;
      if (y < 0) {
        out.fill(f, o, o + w);
        o += w;
        continue;
      }
      const rowOff = src + y * W;
      for (let k = 0; k < w; k++) {
        const x = cols[k]!;
        out[o++] = x < 0 ? f : data[rowOff + x]!;
      }
    }
  }
  return { data: out, channels: C, height: h, width: w };
}

/** The h x w window at (top, left), zero-filled where it leaves the image. */
export function crop(img: ImageCHW, top: number, left: number, h: number, w: number): ImageCHW {
  const rows = new Int32Array(h);
  const cols = new Int32Array(w);
  for (let r = 0; r < h; r++) rows[r] = top + r >= 0 && top + r < img.height ? top + r : -1;
  for (let k = 0; k < w; k++) cols[k] = left + k >= 0 && left + k < img.width ? left + k : -1;
  return gather(img, rows, cols, new Array<number>(img.channels).fill(0));
}

function triangle(x: number): number {
  const a = x < 0 ? -x : x;
  return a < 1 ? 1 - a : 0;
}

interface AxisPlan {
  start: Int32Array;
  count: Int32Array;
  weights: Float64Array;
  k: number;
}

/**
 * Bilinear (triangle-filter) resampling weights along one axis, as Pillow computes them: output
 * pixel o covers input center (o + 0.5) * scale; when antialiasing a downscale the filter is
 * widened by the scale factor. Without antialiasing (or when upscaling) this is plain bilinear
 * interpolation with half-pixel centers (torch's align_corners=False). Indices stay inside the
 * [inStart, inStart + inLen) window (crop semantics).
 */
function axisPlan(inStart: number, inLen: number, outLen: number, antialias: boolean): AxisPlan {
  const scale = inLen / outLen;
  const filterscale = antialias && scale > 1 ? scale : 1;
  const support = filterscale;
  const k = Math.ceil(support) * 2 + 1;
  const start = new Int32Array(outLen);
  const count = new Int32Array(outLen);
  const weights = new Float64Array(outLen * k);
  for (let o = 0; o < outLen; o++) {
    const center = (o + 0.5) * scale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const xmax = Math.min(inLen, Math.trunc(center + support + 0.5));
    let total = 0;
    for (let x = xmin; x < xmax; x++) {
      const wt = triangle((x - center + 0.5) / filterscale);
      weights[o * k + x - xmin] = wt;
      total += wt;
    }
    if (total > 0) for (let x = 0; x < xmax - xmin; x++) weights[o * k + x]! /= total;
    start[o] = inStart + xmin;
    count[o] = xmax - xmin;
  }
  return { start, count, weights, k };
}

/**
 * Resamples the window (top, left, h, w) of `img` to outH x outW with a bilinear filter
 * (antialiased when shrinking, like torchvision's antialias=True / Pillow). uint8 in, uint8 out
 * (rounded); float in, float out.
 */
export function resizedCrop(img: ImageCHW, top: number, left: number, h: number, w: number, outH: number, outW: number, antialias = true): ImageCHW {
  const { channels: C, height: H, width: W, data } = img;
  if (top < 0 || left < 0 || top + h > H || left + w > W || h <= 0 || w <= 0) {
    throw new ShapeError(`resizedCrop: window ${h}x${w} at (${top}, ${left}) is outside the ${H}x${W} image`);
  }
  const px = axisPlan(left, w, outW, antialias);
  const py = axisPlan(top, h, outH, antialias);
  // Horizontal pass over the window's rows: tmp[c][r][o], r in [0, h).
  const tmp = new Float64Array(C * h * outW);
  for (let c = 0; c < C; c++) {
    for (let r = 0; r < h; r++) {
      const row = c * H * W + (top + r) * W;
      const t = (c * h + r) * outW;
      for (let o = 0; o < outW; o++) {
        const s = row + px.start[o]!;
        const n = px.count[o]!;
        const wo = o * px.k;
        let acc = 0;
        for (let x = 0; x < n; x++) acc += data[s + x]! * px.weights[wo + x]!;
        tmp[t + o] = acc;
      }
    }
  }
  const out = alloc(img, C * outH * outW);
  const float = isFloat(img);
  for (let c = 0; c < C; c++) {
    for (let o = 0; o < outH; o++) {
      const s = py.start[o]! - top;
      const n = py.count[o]!;
      const wo = o * py.k;
      const dst = (c * outH + o) * outW;
      for (let x = 0; x < outW; x++) {
        let acc = 0;
        for (let y = 0; y < n; y++) acc += tmp[(c * h + s + y) * outW + x]! * py.weights[wo + y]!;
        out[dst + x] = float ? acc : u8(acc);
      }
    }
  }
  return { data: out, channels: C, height: outH, width: outW };
}

/** RGB (or gray) → gray with torchvision's weights 0.2989, 0.587, 0.114 (uint8: truncated). */
function grayscale(img: ImageCHW): Float64Array {
  const n = img.height * img.width;
  const d = img.data;
  const g = new Float64Array(n);
  if (img.channels === 1) {
    for (let i = 0; i < n; i++) g[i] = d[i]!;
    return g;
  }
  const float = isFloat(img);
  for (let i = 0; i < n; i++) {
    const v = 0.2989 * d[i]! + 0.587 * d[n + i]! + 0.114 * d[2 * n + i]!;
    g[i] = float ? v : Math.trunc(v);
  }
  return g;
}

// ---- base and registry ---------------------------------------------------------------------------

/** Base of the built-in transforms: remembers its constructor arguments for spec(). */
export abstract class BaseTransform implements Transform {
  private readonly specType: string;
  private readonly specArgs: unknown[];

  protected constructor(type: string, args: unknown[]) {
    this.specType = type;
    this.specArgs = args;
  }

  abstract apply(img: ImageCHW, gen: Generator): ImageCHW;

  spec(): TransformSpec {
    return { type: this.specType, args: this.specArgs };
  }

  toString(): string {
    return `${this.specType}(${this.specArgs.map((a) => JSON.stringify(a)).join(', ')})`;
  }
}

/** Applies transforms in order (torchvision's Compose). */
export class Compose implements Transform {
  readonly transforms: readonly Transform[];

  constructor(transforms: readonly Transform[]) {
    for (const t of transforms) {
      if (typeof t?.apply !== 'function') throw new UsageError('Compose: every element must be a transform (an object with apply(img, gen))');
    }
    this.transforms = [...transforms];
  }

  apply(img: ImageCHW, gen: Generator): ImageCHW {
    let out = img;
    for (const t of this.transforms) out = t.apply(out, gen);
    return out;
  }

  spec(): TransformSpec {
    return {
      type: 'Compose',
      args: [
        this.transforms.map((t, i) => {
          if (typeof t.spec !== 'function') throw new UsageError(`Compose: transform #${i} (${t.constructor?.name ?? 'object'}) has no spec(), so it cannot run in DataLoader workers`);
          return t.spec();
        }),
      ],
    };
  }

  toString(): string {
    return `Compose([${this.transforms.map((t) => String(t)).join(', ')}])`;
  }
}

// ---- transforms --------------------------------------------------------------------------------

/**
 * uint8 → float32 in [0, 1] (x / 255), like torchvision's ToTensor / ConvertImageDtype(float).
 * Float input is returned as it is.
 */
export class ToFloat extends BaseTransform {
  constructor() {
    super('ToFloat', []);
  }

  apply(img: ImageCHW): ImageCHW {
    if (isFloat(img)) return img;
    const d = img.data;
    const out = new Float32Array(d.length);
    for (let i = 0; i < d.length; i++) out[i] = d[i]! / 255;
    return { data: out, channels: img.channels, height: img.height, width: img.width };
  }
}

/**
 * (x - mean[c]) / std[c] per channel, in float32 arithmetic like torchvision's Normalize (so results
 * match torch bit for bit). One value broadcasts to every channel. Needs float input (put ToFloat
 * first); torchvision raises on integer tensors too.
 */
export class Normalize extends BaseTransform {
  readonly mean: readonly number[];
  readonly std: readonly number[];

  constructor(mean: number | readonly number[], std: number | readonly number[]) {
    const m = typeof mean === 'number' ? [mean] : [...mean];
    const s = typeof std === 'number' ? [std] : [...std];
    super('Normalize', [m, s]);
    if (m.length === 0 || s.length === 0) throw new UsageError('Normalize: mean and std need at least one value');
    if (s.some((v) => v === 0 || !Number.isFinite(v))) throw new UsageError(`Normalize: std must be non-zero and finite, got [${s.join(', ')}]`);
    this.mean = m.map(Math.fround);
    this.std = s.map(Math.fround);
  }

  apply(img: ImageCHW): ImageCHW {
    if (!isFloat(img)) throw new UsageError('Normalize expects a float image: put ToFloat() before it');
    const C = img.channels;
    for (const [k, v] of [['mean', this.mean], ['std', this.std]] as const) {
      if (v.length !== 1 && v.length !== C) throw new UsageError(`Normalize: ${v.length} ${k} values for an image of ${C} channels`);
    }
    const n = img.height * img.width;
    const d = img.data;
    const out = new Float32Array(d.length);
    for (let c = 0; c < C; c++) {
      const m = this.mean[this.mean.length === 1 ? 0 : c]!;
      const s = this.std[this.std.length === 1 ? 0 : c]!;
      for (let i = c * n; i < (c + 1) * n; i++) out[i] = Math.fround(d[i]! - m) / s;
    }
    return { data: out, channels: C, height: img.height, width: img.width };
  }
}

export type Padding = number | readonly [number, number] | readonly [number, number, number, number];

export interface RandomCropOptions {
  /** Pad further (each side) when the image is still smaller than the crop (default false). */
  padIfNeeded?: boolean;
  /** Value of constant padding: one number or one per channel, in the image's range (default 0). */
  fill?: number | readonly number[];
  /** 'constant' (default), 'edge', 'reflect' or 'symmetric', as torchvision. */
  paddingMode?: PaddingMode;
}

/**
 * torchvision's RandomCrop(size, padding, pad_if_needed, fill, padding_mode): pads the image
 * (padding: all sides; [left/right, top/bottom]; or [left, top, right, bottom]), pads again by the
 * shortfall when padIfNeeded, then crops `size` at top = int(H' - h + 1), left = int(W' - w + 1)
 * (no draw when the padded image already has the crop's size). Same algorithm; the padding is
 * virtual (no padded copy is made).
 */
export class RandomCrop extends BaseTransform {
  readonly size: [number, number];
  readonly padding: [number, number, number, number];
  readonly padIfNeeded: boolean;
  readonly fill: number | readonly number[];
  readonly paddingMode: PaddingMode;

  constructor(size: Size, padding: Padding = 0, opts: RandomCropOptions = {}) {
    super('RandomCrop', [size, padding, opts]);
    this.size = toPair(size, 'RandomCrop');
    const p = typeof padding === 'number' ? [padding] : [...padding];
    const ltrb: [number, number, number, number] =
      p.length === 1 ? [p[0]!, p[0]!, p[0]!, p[0]!] : p.length === 2 ? [p[0]!, p[1]!, p[0]!, p[1]!] : p.length === 4 ? [p[0]!, p[1]!, p[2]!, p[3]!] : [-1, 0, 0, 0];
    if (!ltrb.every((v) => Number.isInteger(v) && v >= 0)) {
      throw new UsageError(`RandomCrop: padding must be a non-negative integer, [left/right, top/bottom] or [left, top, right, bottom], got ${JSON.stringify(padding)}`);
    }
    this.padding = ltrb;
    this.padIfNeeded = opts.padIfNeeded ?? false;
    this.fill = opts.fill ?? 0;
    this.paddingMode = opts.paddingMode ?? 'constant';
    if (!['constant', 'edge', 'reflect', 'symmetric'].includes(this.paddingMode)) throw new UsageError(`RandomCrop: unknown paddingMode '${this.paddingMode}'`);
  }

  private maps: { h: number; w: number; rows: Int32Array; cols: Int32Array } | null = null;
  private fills: { key: string; fill: number[] } | null = null;

  /** Padded-coordinate → source index maps for an h x w input (cached: inputs usually share a size). */
  private indexMaps(h: number, w: number): { rows: Int32Array; cols: Int32Array } {
    if (this.maps !== null && this.maps.h === h && this.maps.w === w) return this.maps;
    const [th, tw] = this.size;
    const [l, t, r, b] = this.padding;
    let rows = padMap(identityMap(h), t, b, this.paddingMode);
    let cols = padMap(identityMap(w), l, r, this.paddingMode);
    if (this.padIfNeeded && cols.length < tw) {
      const e = tw - cols.length;
      cols = padMap(cols, e, e, this.paddingMode);
    }
    if (this.padIfNeeded && rows.length < th) {
      const e = th - rows.length;
      rows = padMap(rows, e, e, this.paddingMode);
    }
    this.maps = { h, w, rows, cols };
    return this.maps;
  }

  apply(img: ImageCHW, gen: Generator): ImageCHW {
    const [th, tw] = this.size;
    const { rows, cols } = this.indexMaps(img.height, img.width);
    const fkey = `${img.channels}/${isFloat(img)}`;
    if (this.fills === null || this.fills.key !== fkey) this.fills = { key: fkey, fill: fillFor(img, this.fill, 'RandomCrop') };
    const H = rows.length;
    const W = cols.length;
    if (H < th || W < tw) throw new ShapeError(`RandomCrop: crop size ${th}x${tw} is larger than the (padded) image ${H}x${W}`);
    let i = 0;
    let j = 0;
    if (!(H === th && W === tw)) {
      i = gen.int(H - th + 1);
      j = gen.int(W - tw + 1);
    }
    return gather(img, rows.subarray(i, i + th), cols.subarray(j, j + tw), this.fills.fill);
  }
}

/** Mirrors left-right when a uniform draw is < p (torchvision's RandomHorizontalFlip; one draw per call). */
export class RandomHorizontalFlip extends BaseTransform {
  readonly p: number;

  constructor(p = 0.5) {
    super('RandomHorizontalFlip', [p]);
    if (!(p >= 0 && p <= 1)) throw new UsageError(`RandomHorizontalFlip: p must be in [0, 1], got ${p}`);
    this.p = p;
  }

  apply(img: ImageCHW, gen: Generator): ImageCHW {
    if (!(gen.random() < this.p)) return img;
    return hflip(img);
  }
}

/** The left-right mirror image. */
export function hflip(img: ImageCHW): ImageCHW {
  const { channels: C, height: H, width: W, data } = img;
  const out = alloc(img, data.length);
  for (let row = 0; row < C * H; row++) {
    const o = row * W;
    for (let x = 0; x < W; x++) out[o + x] = data[o + W - 1 - x]!;
  }
  return { data: out, channels: C, height: H, width: W };
}

export interface RandomResizedCropOptions {
  /** Range of the crop's area as a fraction of the image (default [0.08, 1]). */
  scale?: readonly [number, number];
  /** Range of the crop's aspect ratio w/h (default [3/4, 4/3]), sampled log-uniformly. */
  ratio?: readonly [number, number];
  /** Antialias when shrinking (default true, as torchvision >= 0.17). */
  antialias?: boolean;
}

/**
 * torchvision's RandomResizedCrop: up to 10 attempts to draw area = H*W*U(scale) and
 * ratio = exp(U(log ratio)), w = round(sqrt(area*ratio)), h = round(sqrt(area/ratio)) (Python's
 * round), accepted when 0 < w <= W and 0 < h <= H, then top = int(H - h + 1), left = int(W - w + 1);
 * otherwise the center crop of the whole image clamped to the ratio range. The crop is resized to
 * `size` with bilinear interpolation (antialiased by default).
 */
export class RandomResizedCrop extends BaseTransform {
  readonly size: [number, number];
  readonly scale: [number, number];
  readonly ratio: [number, number];
  readonly antialias: boolean;

  constructor(size: Size, opts: RandomResizedCropOptions = {}) {
    super('RandomResizedCrop', [size, opts]);
    this.size = toPair(size, 'RandomResizedCrop');
    this.scale = checkRange(opts.scale ?? [0.08, 1], 'RandomResizedCrop: scale');
    this.ratio = checkRange(opts.ratio ?? [3 / 4, 4 / 3], 'RandomResizedCrop: ratio');
    this.antialias = opts.antialias ?? true;
  }

  /** The crop window (top, left, height, width) for an image of H x W. */
  getParams(H: number, W: number, gen: Generator): [number, number, number, number] {
    const area = H * W;
    const logR0 = Math.log(this.ratio[0]);
    const logR1 = Math.log(this.ratio[1]);
    for (let attempt = 0; attempt < 10; attempt++) {
      const targetArea = area * gen.uniform(this.scale[0], this.scale[1]);
      const aspect = Math.exp(gen.uniform(logR0, logR1));
      const w = roundHalfEven(Math.sqrt(targetArea * aspect));
      const h = roundHalfEven(Math.sqrt(targetArea / aspect));
      if (w > 0 && w <= W && h > 0 && h <= H) {
        const i = gen.int(H - h + 1);
        const j = gen.int(W - w + 1);
        return [i, j, h, w];
      }
    }
    const inRatio = W / H;
    let w: number;
    let h: number;
    if (inRatio < this.ratio[0]) {
      w = W;
      h = roundHalfEven(w / this.ratio[0]);
    } else if (inRatio > this.ratio[1]) {
      h = H;
      w = roundHalfEven(h * this.ratio[1]);
    } else {
      w = W;
      h = H;
    }
    return [Math.floor((H - h) / 2), Math.floor((W - w) / 2), h, w];
  }

  apply(img: ImageCHW, gen: Generator): ImageCHW {
    const [i, j, h, w] = this.getParams(img.height, img.width, gen);
    return resizedCrop(img, i, j, h, w, this.size[0], this.size[1], this.antialias);
  }
}

export type FactorRange = number | readonly [number, number];

export interface ColorJitterOptions {
  /** x ≥ 0 → factor ~ U(max(0, 1 - x), 1 + x); or an explicit [min, max]. 0 (default) = off. */
  brightness?: FactorRange;
  contrast?: FactorRange;
  saturation?: FactorRange;
}

/**
 * torchvision's ColorJitter for brightness, contrast and saturation (no hue), in a random order:
 *  - brightness f: x * f;
 *  - contrast f: f * x + (1 - f) * mean, mean = mean of the grayscale image (0.2989 R + 0.587 G +
 *    0.114 B; the image itself for 1 channel);
 *  - saturation f: f * x + (1 - f) * gray(x) per pixel; a no-op for 1-channel images;
 * each clamped to [0, 1] (float) or [0, 255] (uint8). Each factor is drawn uniformly from its range,
 * after a random permutation of the three operations (torchvision permutes four, with hue).
 * A parameter of 0 (or [1, 1]) disables that operation and draws nothing for it.
 * Differences: uint8 results are rounded (torchvision's tensor path truncates, PIL rounds); hue is
 * not supported. Apply before Normalize (the clamping assumes [0, 1] or [0, 255] images).
 */
export class ColorJitter extends BaseTransform {
  readonly brightness: [number, number] | null;
  readonly contrast: [number, number] | null;
  readonly saturation: [number, number] | null;

  constructor(opts: ColorJitterOptions & { hue?: number } = {}) {
    super('ColorJitter', [opts]);
    if (opts.hue !== undefined && opts.hue !== 0) throw new UsageError('ColorJitter: hue is not supported (brightness, contrast and saturation are)');
    this.brightness = ColorJitter.range(opts.brightness, 'brightness');
    this.contrast = ColorJitter.range(opts.contrast, 'contrast');
    this.saturation = ColorJitter.range(opts.saturation, 'saturation');
  }

  private static range(v: FactorRange | undefined, what: string): [number, number] | null {
    if (v === undefined) return null;
    let r: [number, number];
    if (typeof v === 'number') {
      if (!(v >= 0) || !Number.isFinite(v)) throw new UsageError(`ColorJitter: ${what} must be a non-negative number, got ${v}`);
      r = [Math.max(0, 1 - v), 1 + v];
    } else {
      r = checkRange(v, `ColorJitter: ${what}`, false);
      if (r[0] < 0) throw new UsageError(`ColorJitter: ${what} range must be non-negative, got ${JSON.stringify(v)}`);
    }
    return r[0] === 1 && r[1] === 1 ? null : r;
  }

  apply(img: ImageCHW, gen: Generator): ImageCHW {
    if (img.channels !== 1 && img.channels !== 3) throw new ShapeError(`ColorJitter: needs a 1- or 3-channel image, got ${img.channels} channels`);
    const order = gen.permutation(3);
    const b = this.brightness ? gen.uniform(this.brightness[0], this.brightness[1]) : null;
    const c = this.contrast ? gen.uniform(this.contrast[0], this.contrast[1]) : null;
    const s = this.saturation ? gen.uniform(this.saturation[0], this.saturation[1]) : null;
    let out = img;
    for (const op of order) {
      if (op === 0 && b !== null) out = adjustBrightness(out, b);
      else if (op === 1 && c !== null) out = adjustContrast(out, c);
      else if (op === 2 && s !== null) out = adjustSaturation(out, s);
    }
    return out;
  }
}

/** ratio * x + (1 - ratio) * other(i), clamped to the dtype's range; a new image. */
function blend(img: ImageCHW, ratio: number, other: (i: number) => number): ImageCHW {
  const d = img.data;
  const float = isFloat(img);
  const bound = float ? 1 : 255;
  const out = alloc(img, d.length);
  for (let i = 0; i < d.length; i++) {
    const v = ratio * d[i]! + (1 - ratio) * other(i);
    out[i] = float ? (v < 0 ? 0 : v > bound ? bound : v) : u8(v);
  }
  return { data: out, channels: img.channels, height: img.height, width: img.width };
}

export function adjustBrightness(img: ImageCHW, factor: number): ImageCHW {
  return blend(img, factor, () => 0);
}

export function adjustContrast(img: ImageCHW, factor: number): ImageCHW {
  const g = grayscale(img);
  let sum = 0;
  for (let i = 0; i < g.length; i++) sum += g[i]!;
  const mean = sum / g.length;
  return blend(img, factor, () => mean);
}

export function adjustSaturation(img: ImageCHW, factor: number): ImageCHW {
  if (img.channels === 1) return img;
  const g = grayscale(img);
  const n = g.length;
  return blend(img, factor, (i) => g[i % n]!);
}

export interface RandomErasingOptions {
  /** Probability of erasing (default 0.5). */
  p?: number;
  /** Range of the erased area as a fraction of the image (default [0.02, 0.33]). */
  scale?: readonly [number, number];
  /** Range of the erased rectangle's aspect ratio h/w (default [0.3, 3.3]), log-uniform. */
  ratio?: readonly [number, number];
  /** Fill: a number, one per channel, or 'random' (standard normal noise; float images only). */
  value?: number | readonly number[] | 'random';
}

/**
 * torchvision's RandomErasing (Zhong et al.): with probability p, up to 10 attempts to draw
 * area = H*W*U(scale) and ratio = exp(U(log ratio)), h = round(sqrt(area*ratio)),
 * w = round(sqrt(area/ratio)), accepted when h < H and w < W; the rectangle at
 * top = int(H - h + 1), left = int(W - w + 1) is set to `value`. When all attempts fail the image
 * is unchanged. Usually placed after Normalize (value 0 = the mean).
 */
export class RandomErasing extends BaseTransform {
  readonly p: number;
  readonly scale: [number, number];
  readonly ratio: [number, number];
  readonly value: number | readonly number[] | 'random';

  constructor(opts: RandomErasingOptions = {}) {
    super('RandomErasing', [opts]);
    this.p = opts.p ?? 0.5;
    if (!(this.p >= 0 && this.p <= 1)) throw new UsageError(`RandomErasing: p must be in [0, 1], got ${this.p}`);
    this.scale = checkRange(opts.scale ?? [0.02, 0.33], 'RandomErasing: scale', false);
    this.ratio = checkRange(opts.ratio ?? [0.3, 3.3], 'RandomErasing: ratio');
    this.value = opts.value ?? 0;
    if (this.value !== 'random' && !(typeof this.value === 'number' || Array.isArray(this.value))) {
      throw new UsageError(`RandomErasing: value must be a number, a list of numbers or 'random'`);
    }
  }

  apply(img: ImageCHW, gen: Generator): ImageCHW {
    if (!(gen.random() < this.p)) return img;
    const { channels: C, height: H, width: W } = img;
    if (this.value === 'random' && !isFloat(img)) throw new UsageError("RandomErasing: value 'random' needs a float image (put ToFloat() first)");
    const fill = this.value === 'random' ? null : fillFor(img, this.value, 'RandomErasing');
    const area = H * W;
    const logR0 = Math.log(this.ratio[0]);
    const logR1 = Math.log(this.ratio[1]);
    for (let attempt = 0; attempt < 10; attempt++) {
      const eraseArea = area * gen.uniform(this.scale[0], this.scale[1]);
      const aspect = Math.exp(gen.uniform(logR0, logR1));
      const h = roundHalfEven(Math.sqrt(eraseArea * aspect));
      const w = roundHalfEven(Math.sqrt(eraseArea / aspect));
      if (!(h < H && w < W)) continue;
      let noise: Float32Array | null = null;
      if (fill === null) {
        noise = new Float32Array(C * h * w);
        for (let k = 0; k < noise.length; k++) noise[k] = gen.normal();
      }
      const i = gen.int(H - h + 1);
      const j = gen.int(W - w + 1);
      return erase(img, i, j, h, w, fill ?? noise!);
    }
    return img;
  }
}

/**
 * A copy of `img` with the h x w rectangle at (top, left) set to `value`: per-channel numbers, or a
 * C*h*w array of values.
 */
export function erase(img: ImageCHW, top: number, left: number, h: number, w: number, value: readonly number[] | Float32Array): ImageCHW {
  const { channels: C, height: H, width: W } = img;
  const out = img.data.slice();
  const perPixel = value instanceof Float32Array;
  let k = 0;
  for (let c = 0; c < C; c++) {
    for (let y = top; y < top + h; y++) {
      const o = c * H * W + y * W;
      for (let x = left; x < left + w; x++) out[o + x] = perPixel ? value[k++]! : value[c]!;
    }
  }
  return { data: out, channels: C, height: H, width: W };
}

export interface ResizeOptions {
  /** Cap on the longer side when `size` is one number (torchvision's max_size). */
  maxSize?: number;
  /** Antialias when shrinking (default true, as torchvision >= 0.17). */
  antialias?: boolean;
}

/**
 * torchvision's Resize with bilinear interpolation: `size` one number → the shorter side becomes
 * `size` and the longer int(size * long / short) (capped by maxSize); [h, w] → exactly that. An
 * image already of the target size is returned unchanged.
 */
export class Resize extends BaseTransform {
  readonly size: number | [number, number];
  readonly maxSize: number | undefined;
  readonly antialias: boolean;

  constructor(size: Size, opts: ResizeOptions = {}) {
    super('Resize', [size, opts]);
    if (typeof size === 'number') {
      if (!Number.isInteger(size) || size <= 0) throw new UsageError(`Resize: size must be a positive integer or [height, width], got ${size}`);
      this.size = size;
    } else this.size = toPair(size, 'Resize');
    this.maxSize = opts.maxSize;
    if (this.maxSize !== undefined && typeof this.size === 'number' && !(this.maxSize > this.size)) {
      throw new UsageError(`Resize: maxSize (${this.maxSize}) must be larger than size (${this.size})`);
    }
    this.antialias = opts.antialias ?? true;
  }

  /** The output [height, width] for an H x W input. */
  outputSize(H: number, W: number): [number, number] {
    if (typeof this.size !== 'number') return this.size;
    const [short, long] = W <= H ? [W, H] : [H, W];
    let newShort = this.size;
    let newLong = Math.trunc((this.size * long) / short);
    if (this.maxSize !== undefined && newLong > this.maxSize) {
      newShort = Math.trunc((this.maxSize * newShort) / newLong);
      newLong = this.maxSize;
    }
    return W <= H ? [newLong, newShort] : [newShort, newLong];
  }

  apply(img: ImageCHW): ImageCHW {
    const [h, w] = this.outputSize(img.height, img.width);
    if (h === img.height && w === img.width) return img;
    return resizedCrop(img, 0, 0, img.height, img.width, h, w, this.antialias);
  }
}

/**
 * torchvision's CenterCrop: the window at top = round((H - h) / 2), left = round((W - w) / 2)
 * (Python's round); an image smaller than the crop is first zero-padded to it (extra pixel on the
 * bottom/right).
 */
export class CenterCrop extends BaseTransform {
  readonly size: [number, number];

  constructor(size: Size) {
    super('CenterCrop', [size]);
    this.size = toPair(size, 'CenterCrop');
  }

  apply(img: ImageCHW): ImageCHW {
    const [th, tw] = this.size;
    let { height: H, width: W } = img;
    // Zero padding (left/top get floor of half the shortfall) folded into the crop offsets.
    const padTop = th > H ? Math.floor((th - H) / 2) : 0;
    const padLeft = tw > W ? Math.floor((tw - W) / 2) : 0;
    if (th > H) H = th;
    if (tw > W) W = tw;
    if (H === img.height && W === img.width && th === H && tw === W) return img;
    const top = roundHalfEven((H - th) / 2) - padTop;
    const left = roundHalfEven((W - tw) / 2) - padLeft;
    return crop(img, top, left, th, tw);
  }
}

// ---- rebuilding from specs (workers) ---------------------------------------------------------------

type Builder = (args: unknown[]) => Transform;

const BUILTIN: Record<string, Builder> = {
  ToFloat: () => new ToFloat(),
  Normalize: (a) => new Normalize(a[0] as number[], a[1] as number[]),
  RandomCrop: (a) => new RandomCrop(a[0] as Size, a[1] as Padding, a[2] as RandomCropOptions),
  RandomHorizontalFlip: (a) => new RandomHorizontalFlip(a[0] as number),
  RandomResizedCrop: (a) => new RandomResizedCrop(a[0] as Size, a[1] as RandomResizedCropOptions),
  ColorJitter: (a) => new ColorJitter(a[0] as ColorJitterOptions),
  RandomErasing: (a) => new RandomErasing(a[0] as RandomErasingOptions),
  Resize: (a) => new Resize(a[0] as Size, a[1] as ResizeOptions),
  CenterCrop: (a) => new CenterCrop(a[0] as Size),
};

/** Rebuilds a transform from its spec (built-in types, Compose, or `module` exports). */
export async function transformFromSpec(spec: TransformSpec): Promise<Transform> {
  if (spec.module !== undefined) {
    const mod = (await import(spec.module)) as Record<string, any>;
    const C = mod[spec.type];
    if (typeof C !== 'function') throw new UsageError(`transform spec: ${spec.module} does not export ${spec.type}`);
    return typeof C.fromSpec === 'function' ? C.fromSpec(...spec.args) : new C(...spec.args);
  }
  if (spec.type === 'Compose') {
    const parts = spec.args[0] as TransformSpec[];
    return new Compose(await Promise.all(parts.map(transformFromSpec)));
  }
  const b = BUILTIN[spec.type];
  if (b === undefined) throw new UsageError(`transform spec: unknown transform type '${spec.type}' (custom transforms need a 'module' URL)`);
  return b(spec.args);
}
