/**
 * CIFAR-10, binary version (https://www.cs.toronto.edu/~kriz/cifar.html): 32x32 RGB images of 10
 * classes, 50000 for training (data_batch_1.bin .. data_batch_5.bin) and 10000 for testing
 * (test_batch.bin). Each file is a sequence of 3073-byte records: 1 label byte, then 3072 pixel
 * bytes (1024 red, 1024 green, 1024 blue, each a row-major 32x32 plane: already CHW).
 * batches.meta.txt lists the class names, one per line.
 *
 * loadCifar10({ split, dir }) looks (./locate.ts) in: --data DIR (DIR, DIR/cifar-10-batches-bin),
 * $RESNET_DATA_CIFAR10, $RESNET_DATA/cifar-10-batches-bin, <cache>/cifar-10-batches-bin,
 * /usr/share/datasets/cifar-10-batches-bin; else downloads cifar-10-binary.tar.gz
 * ($RESNET_CIFAR10_URL or `url` overrides the address), checks its MD5, and extracts the batch
 * files (only those: no path from the archive is trusted) atomically; the archive is then deleted.
 *
 * Validation: every batch file's size is a positive multiple of 3073 bytes; every label < 10;
 * batches.meta.txt (optional; the standard names are used without it) lists exactly 10 names.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { FormatError } from '../errors.js';
import { InMemoryDataset } from './dataset.js';
import { downloadFile, writeFileAtomic } from './download.js';
import { DatasetNotFoundError, DownloadError } from './errors.js';
import { locateDataset, type Located } from './locate.js';
import { parseTar } from './tar.js';
import type { Split } from './fashion_mnist.js';

export const CIFAR10_CLASSES: readonly string[] = Object.freeze([
  'airplane',
  'automobile',
  'bird',
  'cat',
  'deer',
  'dog',
  'frog',
  'horse',
  'ship',
  'truck',
]);

/** Per-channel mean and std of the training images in [0, 1] (for Normalize). */
export const CIFAR10_MEAN: readonly number[] = Object.freeze([0.4914, 0.4822, 0.4465]);
export const CIFAR10_STD: readonly number[] = Object.freeze([0.247, 0.2435, 0.2616]);

export const CIFAR10_FILES: Readonly<Record<Split, readonly string[]>> = Object.freeze({
  train: ['data_batch_1.bin', 'data_batch_2.bin', 'data_batch_3.bin', 'data_batch_4.bin', 'data_batch_5.bin'],
  test: ['test_batch.bin'],
});
export const CIFAR10_META = 'batches.meta.txt';
export const CIFAR10_URL = 'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz';
export const CIFAR10_MD5 = 'c32a1d4ab5d03f1284b67883e8d87530';
export const CIFAR10_ENV = 'RESNET_DATA_CIFAR10';
export const CIFAR10_URL_ENV = 'RESNET_CIFAR10_URL';
export const CIFAR10_DIR = 'cifar-10-batches-bin';
export const CIFAR10_SYSTEM_DIR = '/usr/share/datasets/cifar-10-batches-bin';

const RECORD = 3073;
const PIXELS = 3072;

export interface Cifar10Options {
  /** 'train' (50000 images, default) or 'test' (10000). */
  split?: Split;
  /** Explicit folder (--data DIR); when given, nothing else is searched and downloads go there. */
  dir?: string;
  /** Download when not found (default true). */
  download?: boolean;
  /** Archive URL instead of the official one (also $RESNET_CIFAR10_URL). */
  url?: string;
  /** Expected MD5 of the archive (default CIFAR10_MD5; for private mirrors and tests). */
  md5?: string;
  cacheDir?: string;
  systemDirs?: string[];
  timeoutMs?: number;
  log?: (msg: string) => void;
  env?: NodeJS.ProcessEnv;
}

/** Parses one binary batch into CHW images and labels; `file` names it in errors. */
export function parseCifarBatch(bytes: Uint8Array, file: string): { images: Uint8Array; labels: Uint8Array; count: number } {
  if (bytes.length === 0) throw new FormatError(`${file}: empty file (expected records of ${RECORD} bytes)`);
  if (bytes.length % RECORD !== 0) {
    throw new FormatError(
      `${file}: size ${bytes.length} is not a multiple of the ${RECORD}-byte record (1 label + ${PIXELS} pixels): ` +
        `${Math.floor(bytes.length / RECORD)} whole records and ${bytes.length % RECORD} stray bytes (truncated, or not a CIFAR-10 binary batch)`,
    );
  }
  const count = bytes.length / RECORD;
  const images = new Uint8Array(count * PIXELS);
  const labels = new Uint8Array(count);
  for (let r = 0; r < count; r++) {
    const l = bytes[r * RECORD]!;
    if (l >= CIFAR10_CLASSES.length) {
      throw new FormatError(`${file}: record ${r} has label ${l}, expected 0..${CIFAR10_CLASSES.length - 1} (a CIFAR-100 file?)`);
    }
    labels[r] = l;
    images.set(bytes.subarray(r * RECORD + 1, (r + 1) * RECORD), r * PIXELS);
  }
  return { images, labels, count };
}

/** Reads batches.meta.txt (class names, one per line); null when absent. */
export function readCifarMeta(dir: string): string[] | null {
  const f = path.join(dir, CIFAR10_META);
  if (!fs.existsSync(f)) return null;
  const names = fs
    .readFileSync(f, 'utf8')
    .split(/\r?\n/)
    .map((s) => s.trim())
    .filter((s) => s.length > 0);
  if (names.length !== CIFAR10_CLASSES.length) {
    throw new FormatError(`${f}: lists ${names.length} class names, expected ${CIFAR10_CLASSES.length}`);
  }
  return names;
}

/** Reads and validates one split from a folder holding its batch files. */
export function readCifar10(dir: string, split: Split = 'train'): InMemoryDataset {
  const files = CIFAR10_FILES[split].map((n) => path.join(dir, n));
  const missing = files.filter((f) => !fs.existsSync(f));
  if (missing.length > 0) throw new DatasetNotFoundError(`CIFAR-10 ${split}: ${dir} has no ${missing.map((f) => path.basename(f)).join(', ')}`);
  const classes = readCifarMeta(dir) ?? [...CIFAR10_CLASSES];
  const sizes = files.map((f) => fs.statSync(f).size);
  const total = sizes.reduce((a, b) => a + Math.floor(b / RECORD), 0);
  const images = new Uint8Array(new SharedArrayBuffer(total * PIXELS));
  const labels = new Uint8Array(total);
  let n = 0;
  for (const f of files) {
    const b = parseCifarBatch(fs.readFileSync(f), f);
    if (n + b.count > total) throw new FormatError(`${f}: changed size while being read`);
    images.set(b.images, n * PIXELS);
    labels.set(b.labels, n);
    n += b.count;
  }
  return new InMemoryDataset({ images, labels, channels: 3, height: 32, width: 32, classes, name: `CIFAR-10 ${split}` });
}

function checkFolder(split: Split): (folder: string) => string | null {
  return (folder) => {
    const missing = CIFAR10_FILES[split].filter((n) => !fs.existsSync(path.join(folder, n)));
    return missing.length === 0 ? null : `missing ${missing.join(', ')}`;
  };
}

export function locateCifar10(opts: Cifar10Options = {}): Located {
  return locateDataset(
    {
      name: 'CIFAR-10',
      ...(opts.dir !== undefined ? { dir: opts.dir } : {}),
      ...(opts.cacheDir !== undefined ? { cacheDir: opts.cacheDir } : {}),
      env: CIFAR10_ENV,
      sub: CIFAR10_DIR,
      dirSubs: [CIFAR10_DIR],
      systemDirs: opts.systemDirs ?? [CIFAR10_SYSTEM_DIR],
      check: checkFolder(opts.split ?? 'train'),
    },
    opts.env ?? process.env,
  );
}

/**
 * Extracts the CIFAR-10 batch files (data_batch_*.bin, test_batch.bin, batches.meta.txt,
 * readme.html) of a cifar-10-binary.tar.gz into `dest`, each written atomically. Other entries are
 * ignored; entry paths are never used as output paths. Returns the names written.
 */
export function extractCifar10Archive(tgz: Uint8Array, file: string, dest: string): string[] {
  let tar: Uint8Array;
  try {
    tar = zlib.gunzipSync(tgz);
  } catch (e) {
    throw new FormatError(`${file}: corrupt or truncated gzip data (${(e as Error).message})`);
  }
  const wanted = new Set([...CIFAR10_FILES.train, ...CIFAR10_FILES.test, CIFAR10_META, 'readme.html']);
  const written: string[] = [];
  for (const e of parseTar(tar, file)) {
    if (e.type !== 'file') continue;
    const base = e.name.split('/').pop()!;
    if (!wanted.has(base)) continue;
    writeFileAtomic(path.join(dest, base), e.data);
    written.push(base);
  }
  const need = [...CIFAR10_FILES.train, ...CIFAR10_FILES.test].filter((n) => !written.includes(n));
  if (need.length > 0) throw new FormatError(`${file}: the archive lacks ${need.join(', ')}`);
  return written;
}

/**
 * CIFAR-10's `split` as an InMemoryDataset (3x32x32 uint8 images), found on disk or downloaded
 * (see the module comment).
 */
export async function loadCifar10(opts: Cifar10Options = {}): Promise<InMemoryDataset> {
  const split = opts.split ?? 'train';
  if (split !== 'train' && split !== 'test') throw new DatasetNotFoundError(`CIFAR-10 has splits 'train' and 'test', not '${String(split)}'`);
  const loc = locateCifar10(opts);
  if (loc.found !== null) return readCifar10(loc.found, split);
  const fix =
    `Fix: download ${CIFAR10_URL} (binary version), extract it and pass --data DIR (the folder holding ${CIFAR10_DIR}/ or its files), ` +
    `or set $${CIFAR10_ENV}=DIR`;
  const head = `CIFAR-10 (${split}) not found. Looked in: ${loc.looked.join('; ')}. `;
  if (opts.download === false) throw new DatasetNotFoundError(`${head}${fix}, or allow the download.`);
  const env = opts.env ?? process.env;
  const url = opts.url ?? env[CIFAR10_URL_ENV] ?? CIFAR10_URL;
  // An explicit --data DIR receives DIR/cifar-10-batches-bin/; other targets are that folder.
  const dest = opts.dir !== undefined ? path.join(loc.target, CIFAR10_DIR) : loc.target;
  const archive = path.join(dest, 'cifar-10-binary.tar.gz');
  const log = opts.log ?? ((m: string) => process.stderr.write(`${m}\n`));
  try {
    await downloadFile(url, archive, {
      md5: opts.md5 ?? CIFAR10_MD5,
      ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
      log,
    });
  } catch (e) {
    if (!(e instanceof DownloadError)) throw e;
    throw new DatasetNotFoundError(`${head}${fix}. The download into ${dest} failed: ${e.message}`);
  }
  try {
    log(`extracting ${archive} ...`);
    extractCifar10Archive(fs.readFileSync(archive), archive, dest);
  } finally {
    fs.rmSync(archive, { force: true });
  }
  return readCifar10(dest, split);
}
