/**
 * ImageFolder: a dataset laid out as root/<class>/<images> (torchvision.datasets.ImageFolder).
 *
 *  - classes: the sub-folders of root, sorted by code point (Python's sorted()); class i = index i.
 *    Names starting with '.' are skipped (torchvision keeps them: .ipynb_checkpoints becomes a class).
 *  - samples: every file under a class folder (recursively, symlinks followed, sorted like
 *    torchvision's sorted(os.walk())) whose extension is in `extensions` (case-insensitive;
 *    default IMG_EXTENSIONS = torchvision's), labelled with its class.
 *  - errors: a missing root, a root without class folders, or a class folder without images
 *    (unless allowEmpty) is a DatasetNotFoundError saying what was found.
 *
 * Decoding is injected: `decode(path)` resolves to HWC pixels ({ data, width, height, channels },
 * channels 1 = gray, 2 = gray + alpha, 3 = RGB, 4 = RGBA). The dataset is asynchronous
 * (`load(i)`) and converts each image to CHW uint8 with `channels` channels (default 3): gray is
 * replicated to RGB, RGB becomes gray with Pillow's convert('L') weights (299/587/114 per mille,
 * rounded), alpha is dropped (not composited, as Pillow's convert('RGB')). Images keep their own
 * size (height/width of the dataset are 0): the loader's transform must make them uniform
 * (Resize + CenterCrop, RandomResizedCrop). Decoding runs on the calling thread's event loop (a
 * decoder such as sharp decodes off-thread); DataLoader workers then run the transforms.
 *
 * Validation split: `split(valFraction, { seed, stratified })` (see trainValSplit in
 * ./dataset.ts: seeded, stratified by default: every class split in the same proportion).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FormatError, ResnetError, UsageError } from '../errors.js';
import { checkIndex, trainValSplit, type AsyncDataset, type Sample, type SplitOptions, type Subset } from './dataset.js';
import { DatasetNotFoundError } from './errors.js';

/**
 * Decoded pixels, row-major HWC (interleaved channels). `channels` may be omitted: it is then
 * data.length / (width * height) (so src/image's decodeImage, which returns 3-channel RGB without
 * that field, can be passed as `decode` directly).
 */
export interface DecodedImage {
  data: Uint8Array;
  width: number;
  height: number;
  channels?: number;
}

export type DecodeFn = (file: string) => Promise<DecodedImage>;

/** torchvision's IMG_EXTENSIONS. */
export const IMG_EXTENSIONS: readonly string[] = Object.freeze(['.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp']);

export interface ImageFolderOptions {
  /** Decoder: path → HWC uint8 pixels. */
  decode: DecodeFn;
  /** Channels of the samples: 3 (RGB, default) or 1 (gray). */
  channels?: 1 | 3;
  /** Accepted extensions, with the dot, case-insensitive (default IMG_EXTENSIONS). */
  extensions?: readonly string[];
  /** Accept class folders without images (default false: an error naming them). */
  allowEmpty?: boolean;
}

function byCodePoint(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

function isDir(p: string): boolean {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
}

/** Files under `dir` in torchvision's order: directories by path, files by name within each. */
function walk(dir: string): string[] {
  const groups: { dir: string; files: string[] }[] = [];
  const seen = new Set<string>();
  const visit = (d: string): void => {
    let real: string;
    try {
      real = fs.realpathSync(d);
    } catch {
      return;
    }
    if (seen.has(real)) return; // symlink loop
    seen.add(real);
    const files: string[] = [];
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      if (e.name.startsWith('.')) continue;
      const p = path.join(d, e.name);
      let st: fs.Stats;
      try {
        st = fs.statSync(p);
      } catch {
        continue; // dangling link
      }
      if (st.isDirectory()) visit(p);
      else if (st.isFile()) files.push(e.name);
    }
    groups.push({ dir: d, files: files.sort(byCodePoint) });
  };
  visit(dir);
  groups.sort((a, b) => byCodePoint(a.dir, b.dir));
  return groups.flatMap((g) => g.files.map((f) => path.join(g.dir, f)));
}

export class ImageFolder implements AsyncDataset {
  readonly root: string;
  readonly classes: string[];
  readonly classToIdx: Readonly<Record<string, number>>;
  readonly samples: ReadonlyArray<{ readonly path: string; readonly label: number }>;
  readonly channels: 1 | 3;
  readonly height = 0;
  readonly width = 0;
  private readonly decode: DecodeFn;

  constructor(root: string, opts: ImageFolderOptions) {
    if (typeof opts?.decode !== 'function') throw new UsageError('ImageFolder: options.decode (path => Promise<{ data, width, height, channels }>) is required');
    this.decode = opts.decode;
    this.channels = opts.channels ?? 3;
    if (this.channels !== 1 && this.channels !== 3) throw new UsageError(`ImageFolder: channels must be 1 or 3, got ${String(opts.channels)}`);
    const exts = new Set((opts.extensions ?? IMG_EXTENSIONS).map((e) => (e.startsWith('.') ? e : `.${e}`).toLowerCase()));
    this.root = path.resolve(root);
    if (!fs.existsSync(this.root)) throw new DatasetNotFoundError(`ImageFolder: ${this.root} does not exist`);
    if (!isDir(this.root)) throw new DatasetNotFoundError(`ImageFolder: ${this.root} is not a folder`);
    const classes = fs
      .readdirSync(this.root)
      .filter((n) => !n.startsWith('.') && isDir(path.join(this.root, n)))
      .sort(byCodePoint);
    if (classes.length === 0) {
      throw new DatasetNotFoundError(`ImageFolder: ${this.root} has no class folders (expected ${this.root}/<class>/<image>, e.g. cat/001.jpg)`);
    }
    const samples: { path: string; label: number }[] = [];
    const empty: string[] = [];
    const ignored = new Map<string, number>();
    classes.forEach((c, label) => {
      let count = 0;
      for (const f of walk(path.join(this.root, c))) {
        const ext = path.extname(f).toLowerCase();
        if (exts.has(ext)) {
          samples.push({ path: f, label });
          count++;
        } else ignored.set(ext || '(none)', (ignored.get(ext || '(none)') ?? 0) + 1);
      }
      if (count === 0) empty.push(c);
    });
    const extList = [...exts].join(' ');
    const ignoredText = ignored.size > 0 ? `; files with other extensions were ignored: ${[...ignored].map(([e, n]) => `${n} x ${e}`).join(', ')}` : '';
    if (samples.length === 0) {
      throw new DatasetNotFoundError(`ImageFolder: no images in ${this.root} (${classes.length} class folders; extensions looked for: ${extList}${ignoredText})`);
    }
    if (empty.length > 0 && !opts.allowEmpty) {
      throw new DatasetNotFoundError(`ImageFolder: class folders without images in ${this.root}: ${empty.join(', ')} (extensions looked for: ${extList}${ignoredText}; pass allowEmpty to accept)`);
    }
    this.classes = classes;
    this.classToIdx = Object.freeze(Object.fromEntries(classes.map((c, i) => [c, i])));
    this.samples = Object.freeze(samples.map((s) => Object.freeze(s)));
  }

  get length(): number {
    return this.samples.length;
  }

  get numClasses(): number {
    return this.classes.length;
  }

  labelOf(i: number): number {
    checkIndex(i, this.samples.length, 'ImageFolder');
    return this.samples[i]!.label;
  }

  /** Decodes sample i into CHW uint8 with `channels` channels. */
  async load(i: number): Promise<Sample> {
    checkIndex(i, this.samples.length, 'ImageFolder');
    const { path: file, label } = this.samples[i]!;
    let img: DecodedImage;
    try {
      img = await this.decode(file);
    } catch (e) {
      if (e instanceof ResnetError) throw e;
      throw new FormatError(`${file}: cannot decode image: ${(e as Error)?.message ?? String(e)}`);
    }
    return { image: toCHW(img, this.channels, file), label, channels: this.channels, height: img.height, width: img.width };
  }

  /** Seeded train/validation split (stratified by default); see trainValSplit. */
  split(valFraction: number, opts: SplitOptions = {}): { train: Subset<ImageFolder>; val: Subset<ImageFolder> } {
    return trainValSplit(this, valFraction, opts);
  }
}

/** HWC (1..4 channels) → CHW with `out` channels (1 or 3). */
export function toCHW(img: DecodedImage, out: 1 | 3, file = 'image'): Uint8Array {
  const { data, width: W, height: H } = img;
  if (!(Number.isInteger(W) && W > 0 && Number.isInteger(H) && H > 0)) throw new FormatError(`${file}: decoder returned a ${W}x${H} image`);
  const C = img.channels ?? (data?.length ?? 0) / (W * H);
  if (!(Number.isInteger(C) && C >= 1 && C <= 4)) throw new FormatError(`${file}: decoder returned ${C} channels (expected 1 to 4)`);
  if (!(data instanceof Uint8Array) || data.length !== W * H * C) {
    throw new FormatError(`${file}: decoder returned ${data?.length} bytes for a ${W}x${H}x${C} image (expected ${W * H * C} uint8 values, HWC)`);
  }
  const n = W * H;
  const res = new Uint8Array(out * n);
  const hasColor = C >= 3;
  if (out === 3) {
    for (let p = 0; p < n; p++) {
      const s = p * C;
      if (hasColor) {
        res[p] = data[s]!;
        res[n + p] = data[s + 1]!;
        res[2 * n + p] = data[s + 2]!;
      } else {
        const g = data[s]!;
        res[p] = g;
        res[n + p] = g;
        res[2 * n + p] = g;
      }
    }
  } else {
    for (let p = 0; p < n; p++) {
      const s = p * C;
      res[p] = hasColor ? (data[s]! * 19595 + data[s + 1]! * 38470 + data[s + 2]! * 7471 + 0x8000) >>> 16 : data[s]!;
    }
  }
  return res;
}
