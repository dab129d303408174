/**
 * Image decoding with sharp (libvips): JPEG, PNG and WebP (also GIF and TIFF, first frame) to
 * 8-bit sRGB RGB pixels, HWC, with:
 *
 * - EXIF orientation applied (`.rotate()`), so a portrait phone photo is upright;
 * - grayscale expanded to RGB, CMYK converted to sRGB (libvips' ICC transform), palette images
 *   expanded, and alpha dropped without compositing, as PIL's `.convert('RGB')` does;
 * - embedded ICC profiles ignored (`ignoreIcc`): PIL, and therefore torchvision and
 *   transformers, ignore them, and the models were trained on those pixels. With this, JPEG and
 *   PNG decoding is byte-identical to PIL's (measured in test/image.test.ts);
 * - refusal of non-images, unsupported formats and absurd sizes (over MAX_IMAGE_PIXELS) as
 *   one-line FormatErrors; the size is read from the header before anything is decoded.
 *
 * sharp is loaded on first use, so importing resnet-ts costs nothing for code that never decodes
 * an image.
 */
import * as fs from 'node:fs';
import { FormatError, ResnetError } from '../errors.js';
import type { RgbImage } from './preprocess.js';

/** The largest image decoded, in pixels (width x height): 100 megapixels (10,000 x 10,000). */
export const MAX_IMAGE_PIXELS = 100_000_000;

/** Formats accepted, as sharp's metadata names them. */
const FORMATS: Record<string, string> = { jpeg: 'JPEG', png: 'PNG', webp: 'WebP', gif: 'GIF', tiff: 'TIFF' };

/** File extensions treated as images when a folder is expanded (lower case, with the dot). */
export const IMAGE_EXTENSIONS: readonly string[] = ['.jpg', '.jpeg', '.jpe', '.jfif', '.png', '.webp', '.gif', '.tif', '.tiff'];

type SharpFn = typeof import('sharp').default;
let sharpPromise: Promise<SharpFn> | undefined;

async function loadSharp(): Promise<SharpFn> {
  sharpPromise ??= import('sharp').then(
    (m) => m.default,
    (e: unknown) => {
      sharpPromise = undefined;
      const first = String((e as Error)?.message ?? e).split('\n')[0];
      throw new ResnetError(`image decoding needs the "sharp" package, which failed to load: ${first}`);
    },
  );
  return sharpPromise;
}

export interface DecodeOptions {
  /** Refuse images with more pixels than this (default MAX_IMAGE_PIXELS). */
  maxPixels?: number;
  /** Name used in error messages for buffers (default "image buffer"). */
  name?: string;
}

function oneLine(s: string): string {
  return s.replace(/\s*[\r\n]+\s*/g, ' ').trim();
}

/** Reads the header only: format and size, or a FormatError for anything that is not an accepted image. */
export async function probeImage(input: string | Uint8Array, opts: DecodeOptions = {}): Promise<{ format: string; width: number; height: number }> {
  const name = typeof input === 'string' ? input : (opts.name ?? 'image buffer');
  if (typeof input === 'string') {
    let st: fs.Stats;
    try {
      st = await fs.promises.stat(input);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new FormatError(code === 'ENOENT' ? `file not found: ${input}` : `${input}: cannot read (${code ?? (e as Error).message})`);
    }
    if (st.isDirectory()) throw new FormatError(`${input}: is a directory, not an image`);
    if (st.size === 0) throw new FormatError(`${input}: file is empty, not an image`);
  } else if (input.length === 0) {
    throw new FormatError(`${name}: empty buffer, not an image`);
  }
  const sharp = await loadSharp();
  let meta: import('sharp').Metadata;
  try {
    meta = await sharp(toSharpInput(input), { limitInputPixels: false, failOn: 'none' }).metadata();
  } catch (e) {
    const msg = oneLine(String((e as Error)?.message ?? e));
    if (/unsupported image format/i.test(msg)) {
      throw new FormatError(`${name}: not an image, or not a supported format (expected JPEG, PNG or WebP)`);
    }
    throw new FormatError(`${name}: cannot read the image (${msg})`);
  }
  const format = meta.format ?? 'unknown';
  if (!Object.prototype.hasOwnProperty.call(FORMATS, format)) {
    throw new FormatError(`${name}: unsupported image format ${format.toUpperCase()} (expected JPEG, PNG or WebP)`);
  }
  const width = meta.width ?? 0;
  const height = meta.height ?? 0;
  if (width < 1 || height < 1) throw new FormatError(`${name}: the ${FORMATS[format]} header has no valid size`);
  const max = opts.maxPixels ?? MAX_IMAGE_PIXELS;
  if (width * height > max) {
    throw new FormatError(
      `${name}: ${width}x${height} pixels (${((width * height) / 1e6).toFixed(0)} megapixels) is too large; the limit is ${(max / 1e6).toFixed(0)} megapixels`,
    );
  }
  return { format: FORMATS[format]!, width, height };
}

function toSharpInput(input: string | Uint8Array): string | Buffer {
  return typeof input === 'string' ? input : Buffer.from(input.buffer, input.byteOffset, input.byteLength);
}

/**
 * Decodes an image file or in-memory encoded image to 8-bit RGB (see the module comment). Every
 * problem with the input is a one-line FormatError naming it.
 */
export async function decodeImage(input: string | Uint8Array, opts: DecodeOptions = {}): Promise<RgbImage> {
  const name = typeof input === 'string' ? input : (opts.name ?? 'image buffer');
  const info0 = await probeImage(input, opts);
  const sharp = await loadSharp();
  let out: { data: Buffer; info: import('sharp').OutputInfo };
  try {
    out = await sharp(toSharpInput(input), {
      limitInputPixels: opts.maxPixels ?? MAX_IMAGE_PIXELS,
      failOn: 'error',
      ignoreIcc: true,
    })
      .rotate()
      .toColourspace('srgb')
      .removeAlpha()
      .raw({ depth: 'uchar' })
      .toBuffer({ resolveWithObject: true });
  } catch (e) {
    throw new FormatError(`${name}: cannot decode the ${info0.format} image (${oneLine(String((e as Error)?.message ?? e))})`);
  }
  const { data, info } = out;
  if (info.channels !== 3 || data.length !== info.width * info.height * 3) {
    throw new FormatError(`${name}: decoded to ${info.channels} channels (${info.width}x${info.height}), expected RGB`);
  }
  return { width: info.width, height: info.height, data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) };
}
