/**
 * Fashion-MNIST (Zalando Research): 28x28 grayscale images of 10 clothing classes, 60000 for
 * training and 10000 for testing, as four IDX files (raw or .gz):
 *   train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte.
 *
 * loadFashionMnist({ split, dir }) finds the files as described in ./locate.ts:
 *   --data DIR (DIR, DIR/fashion-mnist, DIR/FashionMNIST/raw), $RESNET_DATA_FASHION_MNIST,
 *   $RESNET_DATA/fashion-mnist, <cache>/fashion-mnist, /usr/share/datasets/fashion-mnist
 *   (Debian: apt-get install dataset-fashion-mnist),
 * and otherwise downloads the split's two .gz files from the official mirrors (Zalando's S3
 * bucket, then the GitHub repository; $RESNET_FASHION_MNIST_URL or `baseUrl` replaces both),
 * checking each against the MD5 published in the Fashion-MNIST README (= torchvision's).
 * Files found on disk are not checksummed (Debian re-compresses them: other .gz bytes, same
 * content) but fully validated: IDX headers, sizes, image/label counts, labels < 10.
 */
import { FormatError } from '../errors.js';
import { InMemoryDataset } from './dataset.js';
import { downloadFile } from './download.js';
import { DatasetNotFoundError, DownloadError } from './errors.js';
import { readIdx } from './idx.js';
import { findMaybeGz, locateDataset, type Located } from './locate.js';

export const FASHION_MNIST_CLASSES: readonly string[] = Object.freeze([
  'T-shirt/top',
  'Trouser',
  'Pullover',
  'Dress',
  'Coat',
  'Sandal',
  'Shirt',
  'Sneaker',
  'Bag',
  'Ankle boot',
]);

/** Per-channel mean and std of the training images in [0, 1] (for Normalize). */
export const FASHION_MNIST_MEAN: readonly number[] = Object.freeze([0.286]);
export const FASHION_MNIST_STD: readonly number[] = Object.freeze([0.353]);

export type Split = 'train' | 'test';

/** File names (without .gz) of each split. */
export const FASHION_MNIST_FILES: Readonly<Record<Split, { images: string; labels: string }>> = Object.freeze({
  train: { images: 'train-images-idx3-ubyte', labels: 'train-labels-idx1-ubyte' },
  test: { images: 't10k-images-idx3-ubyte', labels: 't10k-labels-idx1-ubyte' },
});

/** MD5 of the official .gz files (Fashion-MNIST README; the same values torchvision checks). */
export const FASHION_MNIST_MD5: Readonly<Record<string, string>> = Object.freeze({
  'train-images-idx3-ubyte.gz': '8d4fb7e6c68d591d4c3dfef9ec88bf0d',
  'train-labels-idx1-ubyte.gz': '25c81989df183df01b3e8a0aad5dffbe',
  't10k-images-idx3-ubyte.gz': 'bef4ecab320f06d8554ea6380940ec79',
  't10k-labels-idx1-ubyte.gz': 'bb300cfdad3c16e7a12a480ee83cd310',
});

/** Official download locations, tried in order. */
export const FASHION_MNIST_URLS: readonly string[] = Object.freeze([
  'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/',
  'https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/',
]);

export const FASHION_MNIST_ENV = 'RESNET_DATA_FASHION_MNIST';
export const FASHION_MNIST_URL_ENV = 'RESNET_FASHION_MNIST_URL';
export const FASHION_MNIST_SYSTEM_DIR = '/usr/share/datasets/fashion-mnist';

export interface FashionMnistOptions {
  /** 'train' (60000 images, default) or 'test' (10000). */
  split?: Split;
  /** Explicit folder (--data DIR); when given, nothing else is searched and downloads go there. */
  dir?: string;
  /** Download when not found (default true). */
  download?: boolean;
  /** Base URL to download from instead of the official mirrors (also $RESNET_FASHION_MNIST_URL). */
  baseUrl?: string;
  /** Expected MD5 per .gz file name (default FASHION_MNIST_MD5; for private mirrors and tests). */
  md5?: Readonly<Record<string, string>>;
  /** Cache root override (default cacheRoot()). */
  cacheDir?: string;
  /** System folders searched last (default [/usr/share/datasets/fashion-mnist]). */
  systemDirs?: string[];
  /** Download idle timeout in ms (default 60000). */
  timeoutMs?: number;
  /** Progress messages (default: to stderr). */
  log?: (msg: string) => void;
  env?: NodeJS.ProcessEnv;
}

function checkFolder(split: Split): (folder: string) => string | null {
  return (folder) => {
    const f = FASHION_MNIST_FILES[split];
    const missing = [f.images, f.labels].filter((n) => findMaybeGz(folder, n) === null);
    return missing.length === 0 ? null : `missing ${missing.map((m) => `${m}[.gz]`).join(', ')}`;
  };
}

/** Where Fashion-MNIST's `split` is (or would be downloaded to). */
export function locateFashionMnist(opts: FashionMnistOptions = {}): Located {
  const split = opts.split ?? 'train';
  return locateDataset(
    {
      name: 'Fashion-MNIST',
      ...(opts.dir !== undefined ? { dir: opts.dir } : {}),
      ...(opts.cacheDir !== undefined ? { cacheDir: opts.cacheDir } : {}),
      env: FASHION_MNIST_ENV,
      sub: 'fashion-mnist',
      dirSubs: ['fashion-mnist', 'FashionMNIST/raw'],
      systemDirs: opts.systemDirs ?? [FASHION_MNIST_SYSTEM_DIR],
      check: checkFolder(split),
    },
    opts.env ?? process.env,
  );
}

/** Reads and validates one split from a folder holding its two IDX files (raw or .gz). */
export function readFashionMnist(dir: string, split: Split = 'train'): InMemoryDataset {
  const names = FASHION_MNIST_FILES[split];
  const imgFile = findMaybeGz(dir, names.images);
  const lblFile = findMaybeGz(dir, names.labels);
  if (imgFile === null || lblFile === null) {
    throw new DatasetNotFoundError(`Fashion-MNIST ${split}: ${dir} has no ${imgFile === null ? names.images : names.labels}[.gz]`);
  }
  const img = readIdx(imgFile, 0x803);
  const lbl = readIdx(lblFile, 0x801);
  const [n, rows, cols] = img.dims as [number, number, number];
  if (rows === 0 || cols === 0) throw new FormatError(`${imgFile}: images of ${rows}x${cols} pixels`);
  if (n === 0) throw new FormatError(`${imgFile}: holds 0 images`);
  if (lbl.dims[0] !== n) {
    throw new FormatError(`${lblFile}: ${lbl.dims[0]} labels but ${imgFile} has ${n} images (the counts must match)`);
  }
  const labels = lbl.data;
  for (let i = 0; i < n; i++) {
    if (labels[i]! >= FASHION_MNIST_CLASSES.length) {
      throw new FormatError(`${lblFile}: label ${labels[i]} of sample ${i} is not a class (expected 0..${FASHION_MNIST_CLASSES.length - 1})`);
    }
  }
  return new InMemoryDataset({
    images: img.data,
    labels,
    channels: 1,
    height: rows,
    width: cols,
    classes: [...FASHION_MNIST_CLASSES],
    name: `Fashion-MNIST ${split}`,
  });
}

function notFoundMessage(split: Split, loc: Located, extra: string): string {
  const f = FASHION_MNIST_FILES[split];
  return (
    `Fashion-MNIST (${split}) not found. Looked in: ${loc.looked.join('; ')}. ` +
    `Fix: install Debian's package (apt-get install dataset-fashion-mnist), or put ${f.images}.gz and ${f.labels}.gz ` +
    `in a folder and pass --data DIR (or set $${FASHION_MNIST_ENV}=DIR)${extra}`
  );
}

/**
 * Fashion-MNIST's `split` as an InMemoryDataset (1x28x28 uint8 images), found on disk or
 * downloaded (see the module comment).
 */
export async function loadFashionMnist(opts: FashionMnistOptions = {}): Promise<InMemoryDataset> {
  const split = opts.split ?? 'train';
  if (split !== 'train' && split !== 'test') throw new DatasetNotFoundError(`Fashion-MNIST has splits 'train' and 'test', not '${String(split)}'`);
  const loc = locateFashionMnist(opts);
  if (loc.found !== null) return readFashionMnist(loc.found, split);
  if (opts.download === false) {
    throw new DatasetNotFoundError(notFoundMessage(split, loc, ', or allow the download.'));
  }
  const env = opts.env ?? process.env;
  const override = opts.baseUrl ?? env[FASHION_MNIST_URL_ENV];
  const bases = override ? [override] : [...FASHION_MNIST_URLS];
  const md5 = opts.md5 ?? FASHION_MNIST_MD5;
  const log = opts.log ?? ((m: string) => process.stderr.write(`${m}\n`));
  const f = FASHION_MNIST_FILES[split];
  for (const name of [f.images, f.labels]) {
    if (findMaybeGz(loc.target, name) !== null) continue;
    const file = `${name}.gz`;
    const errors: string[] = [];
    let ok = false;
    for (const base of bases) {
      const url = new URL(file, base.endsWith('/') ? base : `${base}/`).toString();
      try {
        await downloadFile(url, `${loc.target}/${file}`, {
          ...(md5[file] !== undefined ? { md5: md5[file] } : {}),
          ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
          log,
        });
        ok = true;
        break;
      } catch (e) {
        if (!(e instanceof DownloadError)) throw e;
        errors.push(e.message);
      }
    }
    if (!ok) {
      const err = new DatasetNotFoundError(notFoundMessage(split, loc, `. The download into ${loc.target} failed: ${errors.join('; ')}`));
      throw err;
    }
  }
  return readFashionMnist(loc.target, split);
}
