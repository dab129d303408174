/**
 * Pillow's resampling (libImaging/Resample.c, ImagingResample on 8-bit images), re-implemented
 * operation for operation so that a resize here gives the same bytes as `PIL.Image.resize`, which
 * is what torchvision's `F.resize` (PIL input, always antialiased) and transformers' slow image
 * processors call.
 *
 * The algorithm: a separable convolution, horizontal pass first (only over the rows the vertical
 * pass will read), then the vertical pass. For each output pixel, the filter is centred at
 * `in0 + (x + 0.5) * scale` of the input; when downscaling (scale > 1) its support is stretched by
 * `scale`, which is the antialiasing. The window is `[trunc(center - support + 0.5),
 * trunc(center + support + 0.5))` clipped to the image; the weights `filter((i - center + 0.5) /
 * filterscale)` are normalized to sum 1 (in double), then converted to 22-bit fixed point
 * (`trunc(w * 2^22 ± 0.5)`). Each pass accumulates `pixel * weight` in an int32 starting from
 * `2^21` (rounding), shifts right by 22 and clips to 0..255, so the intermediate image is uint8,
 * as in Pillow. A pass whose size does not change is skipped, as Pillow skips it.
 *
 * Everything that Pillow computes in double is computed in double here, in the same order, so the
 * coefficients are bit-identical; the integer arithmetic is exact in JavaScript numbers.
 */
import { ShapeError } from '../errors.js';

/** Pillow's filters (PIL.Image.Resampling names). NEAREST is a different code path and is not offered. */
export type ResampleFilter = 'bilinear' | 'bicubic' | 'lanczos' | 'box' | 'hamming';

/** PIL's integer codes (Image.Resampling), as preprocessor_config.json stores them in "resample". */
export const PIL_RESAMPLE_CODES: Readonly<Record<number, ResampleFilter | 'nearest'>> = {
  0: 'nearest',
  1: 'lanczos',
  2: 'bilinear',
  3: 'bicubic',
  4: 'box',
  5: 'hamming',
};

interface Filter {
  fn: (x: number) => number;
  support: number;
}

const F32_054 = Math.fround(0.54);
const F32_046 = Math.fround(0.46);

function sinc(x: number): number {
  if (x === 0.0) return 1.0;
  const px = x * Math.PI;
  return Math.sin(px) / px;
}

const FILTERS: Record<ResampleFilter, Filter> = {
  box: { fn: (x) => (x > -0.5 && x <= 0.5 ? 1.0 : 0.0), support: 0.5 },
  bilinear: {
    fn: (x) => {
      if (x < 0.0) x = -x;
      return x < 1.0 ? 1.0 - x : 0.0;
    },
    support: 1.0,
  },
  hamming: {
    fn: (x) => {
      if (x < 0.0) x = -x;
      if (x === 0.0) return 1.0;
      if (x >= 1.0) return 0.0;
      x = x * Math.PI;
      // (0.54f + 0.46f * cos(x)): float constants promoted to double, as in C.
      return (Math.sin(x) / x) * (F32_054 + F32_046 * Math.cos(x));
    },
    support: 1.0,
  },
  bicubic: {
    // a = -0.5 (Keys), written exactly as Pillow's bicubic_filter.
    fn: (x) => {
      const a = -0.5;
      if (x < 0.0) x = -x;
      if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
      if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
      return 0.0;
    },
    support: 2.0,
  },
  lanczos: { fn: (x) => (-3.0 <= x && x < 3.0 ? sinc(x) * sinc(x / 3) : 0.0), support: 3.0 },
};

const PRECISION_BITS = 32 - 8 - 2;
const ONE = 1 << PRECISION_BITS;
const HALF = 1 << (PRECISION_BITS - 1);

interface Coeffs {
  ksize: number;
  /** [xmin, count] per output position. */
  bounds: Int32Array;
  /** Fixed-point weights, ksize per output position. */
  kk: Int32Array;
}

/** precompute_coeffs + normalize_coeffs_8bpc. */
function precomputeCoeffs(inSize: number, in0: number, in1: number, outSize: number, filter: Filter): Coeffs {
  // in0/in1 are C floats; their difference is computed in float, then widened.
  const scale = Math.fround(in1 - in0) / outSize;
  const filterscale = scale < 1.0 ? 1.0 : scale;
  const support = filter.support * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Int32Array(outSize * ksize);
  const k = new Float64Array(ksize);
  const ss = 1.0 / filterscale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = in0 + (xx + 0.5) * scale;
    let ww = 0.0;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    for (let x = 0; x < xmax; x++) {
      const w = filter.fn((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (let x = 0; x < xmax; x++) if (ww !== 0.0) k[x]! /= ww;
    const base = xx * ksize;
    for (let x = 0; x < xmax; x++) {
      const v = k[x]!;
      kk[base + x] = v < 0 ? Math.trunc(-0.5 + v * ONE) : Math.trunc(0.5 + v * ONE);
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, bounds, kk };
}

function clip8(ss: number): number {
  const v = ss >> PRECISION_BITS;
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/**
 * Resizes an interleaved uint8 image (`channels` values per pixel, row-major) to outW x outH with
 * Pillow's algorithm and filter. Returns a new buffer (or a copy when the size is unchanged, as
 * Pillow's resize returns a copy).
 */
export function resizeU8(
  src: Uint8Array,
  width: number,
  height: number,
  channels: number,
  outW: number,
  outH: number,
  filter: ResampleFilter,
): Uint8Array {
  const f = FILTERS[filter];
  if (!f) throw new ShapeError(`resize: unknown filter ${JSON.stringify(filter)}`);
  for (const [name, v] of [['width', width], ['height', height], ['output width', outW], ['output height', outH]] as const) {
    if (!Number.isSafeInteger(v) || v < 1) throw new ShapeError(`resize: ${name} must be a positive integer, got ${v}`);
  }
  if (src.length !== width * height * channels) {
    throw new ShapeError(`resize: buffer has ${src.length} bytes, expected ${width}x${height}x${channels} = ${width * height * channels}`);
  }
  if (outW === width && outH === height) return src.slice();
  const needH = outW !== width;
  const needV = outH !== height;
  const horiz = precomputeCoeffs(width, 0, width, outW, f);
  const vert = precomputeCoeffs(height, 0, height, outH, f);

  let img = src;
  let w = width;
  let h = height;
  if (needH) {
    // Only the rows the vertical pass reads: [first, last).
    const first = vert.bounds[0]!;
    const last = vert.bounds[(outH - 1) * 2]! + vert.bounds[(outH - 1) * 2 + 1]!;
    const rows = needV ? last - first : height;
    const y0 = needV ? first : 0;
    if (needV) for (let i = 0; i < outH; i++) vert.bounds[i * 2]! -= first;
    img = horizontalPass(src, width, channels, y0, rows, outW, horiz);
    w = outW;
    h = rows;
  }
  if (needV) img = verticalPass(img, w, h, channels, outH, vert);
  return img;
}

function horizontalPass(src: Uint8Array, width: number, channels: number, y0: number, rows: number, outW: number, c: Coeffs): Uint8Array {
  const out = new Uint8Array(outW * rows * channels);
  const { ksize, bounds, kk } = c;
  const rowStride = width * channels;
  for (let yy = 0; yy < rows; yy++) {
    const rowIn = (yy + y0) * rowStride;
    const rowOut = yy * outW * channels;
    for (let xx = 0; xx < outW; xx++) {
      const xmin = bounds[xx * 2]!;
      const xmax = bounds[xx * 2 + 1]!;
      const kb = xx * ksize;
      for (let ch = 0; ch < channels; ch++) {
        let ss = HALF;
        let p = rowIn + xmin * channels + ch;
        for (let x = 0; x < xmax; x++, p += channels) ss += src[p]! * kk[kb + x]!;
        out[rowOut + xx * channels + ch] = clip8(ss);
      }
    }
  }
  return out;
}

function verticalPass(src: Uint8Array, width: number, _height: number, channels: number, outH: number, c: Coeffs): Uint8Array {
  const rowStride = width * channels;
  const out = new Uint8Array(outH * rowStride);
  const { ksize, bounds, kk } = c;
  const acc = new Int32Array(rowStride);
  for (let yy = 0; yy < outH; yy++) {
    const ymin = bounds[yy * 2]!;
    const ymax = bounds[yy * 2 + 1]!;
    const kb = yy * ksize;
    acc.fill(HALF);
    // Row-wise accumulation: the same sums as Pillow's per-pixel loop (integer adds, exact).
    for (let y = 0; y < ymax; y++) {
      const wgt = kk[kb + y]!;
      const row = (y + ymin) * rowStride;
      for (let i = 0; i < rowStride; i++) acc[i]! += src[row + i]! * wgt;
    }
    const o = yy * rowStride;
    for (let i = 0; i < rowStride; i++) out[o + i] = clip8(acc[i]!);
  }
  return out;
}
