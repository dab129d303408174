/**
 * Tests for the data layer (src/data/): IDX parsing and validation, Fashion-MNIST (real files from
 * /usr/share/datasets/fashion-mnist when installed), CIFAR-10 binary batches and the tar reader,
 * dataset lookup and its error messages, downloads against a local HTTP server (127.0.0.1, random
 * port: checksum mismatch, dropped connections, redirects, stalls), ImageFolder with a fake PNM
 * decoder, every transform's semantics and determinism, and the DataLoader (shapes, dropLast,
 * seeded shuffling per epoch, resume, workers = 0 vs 2 identical, errors from workers, and no hang
 * after an early break: checked in child processes with a timeout).
 *
 * All fixtures are generated into temporary folders, removed at the end.
 */
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath, pathToFileURL } from 'node:url';
import * as zlib from 'node:zlib';
import { FormatError, ShapeError, UsageError } from '../src/errors.js';
import { Generator } from '../src/tensor/rng.js';
import {
  CIFAR10_CLASSES,
  adjustBrightness,
  adjustContrast,
  adjustSaturation,
  resizedCrop,
  CenterCrop,
  ColorJitter,
  Compose,
  DataLoader,
  DatasetNotFoundError,
  DownloadError,
  FASHION_MNIST_CLASSES,
  FASHION_MNIST_MEAN,
  FASHION_MNIST_STD,
  FASHION_MNIST_SYSTEM_DIR,
  ImageFolder,
  InMemoryDataset,
  Normalize,
  RandomCrop,
  RandomErasing,
  RandomHorizontalFlip,
  RandomResizedCrop,
  Resize,
  Subset,
  ToFloat,
  buildTar,
  downloadFile,
  hflip,
  loadCifar10,
  loadFashionMnist,
  locateFashionMnist,
  parseCifarBatch,
  parseIdx,
  parseTar,
  readCifar10,
  readFashionMnist,
  readIdx,
  roundHalfEven,
  serializeIdx,
  trainValSplit,
  transformFromSpec,
  type Batch,
  type DecodedImage,
  type Dataset,
  type ImageCHW,
  type Sample,
  type Transform,
} from '../src/data/index.js';

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'resnet-data-test-'));
after(() => fs.rmSync(TMP, { recursive: true, force: true }));
let tmpCount = 0;
function tmpDir(name = 'd'): string {
  const d = path.join(TMP, `${name}-${tmpCount++}`);
  fs.mkdirSync(d, { recursive: true });
  return d;
}

const noLog = (): void => {};
const DATA_INDEX = fileURLToPath(new URL('../src/data/index.js', import.meta.url));

function md5(b: Uint8Array): string {
  return crypto.createHash('md5').update(b).digest('hex');
}

/** n images of rows x cols with pixel (k, y, x) = (k * 7 + y * cols + x) & 255, labels k % 10. */
function fixtureIdx(n: number, rows: number, cols: number): { images: Uint8Array; labels: Uint8Array; pixels: Uint8Array } {
  const pixels = new Uint8Array(n * rows * cols);
  for (let k = 0; k < n; k++) for (let i = 0; i < rows * cols; i++) pixels[k * rows * cols + i] = (k * 7 + i) & 255;
  const lbl = Uint8Array.from({ length: n }, (_, k) => k % 10);
  return { images: serializeIdx([n, rows, cols], pixels), labels: serializeIdx([n], lbl), pixels };
}

/** Writes a Fashion-MNIST split (images gzipped, labels raw unless gzLabels) into dir. */
function writeFashion(dir: string, split: 'train' | 'test', n = 12, gzLabels = false): Uint8Array {
  const f = fixtureIdx(n, 4, 3);
  const pre = split === 'train' ? 'train' : 't10k';
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, `${pre}-images-idx3-ubyte.gz`), zlib.gzipSync(f.images));
  if (gzLabels) fs.writeFileSync(path.join(dir, `${pre}-labels-idx1-ubyte.gz`), zlib.gzipSync(f.labels));
  else fs.writeFileSync(path.join(dir, `${pre}-labels-idx1-ubyte`), f.labels);
  return f.pixels;
}

function throwsWith(fn: () => unknown, cls: new (...a: never[]) => Error, ...parts: (string | RegExp)[]): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof cls, `expected ${cls.name}, got ${(e as Error)?.name}: ${(e as Error)?.message}`);
    for (const p of parts) {
      if (typeof p === 'string') assert.ok(e.message.includes(p), `message ${JSON.stringify(e.message)} lacks ${JSON.stringify(p)}`);
      else assert.match(e.message, p);
    }
    return true;
  });
}

async function rejectsWith(p: Promise<unknown>, cls: new (...a: never[]) => Error, ...parts: (string | RegExp)[]): Promise<Error> {
  let err: Error | null = null;
  try {
    await p;
  } catch (e) {
    err = e as Error;
  }
  assert.ok(err !== null, 'expected a rejection');
  assert.ok(err instanceof cls, `expected ${cls.name}, got ${err.name}: ${err.message}`);
  for (const q of parts) {
    if (typeof q === 'string') assert.ok(err.message.includes(q), `message ${JSON.stringify(err.message)} lacks ${JSON.stringify(q)}`);
    else assert.match(err.message, q);
  }
  return err;
}

type Handler = (req: http.IncomingMessage, res: http.ServerResponse) => void;

/** Runs fn against an HTTP server on 127.0.0.1 (random port) serving `routes`; always closes it. */
async function withServer(routes: Record<string, Handler>, fn: (base: string, hits: string[]) => Promise<void>): Promise<void> {
  const hits: string[] = [];
  const server = http.createServer((req, res) => {
    hits.push(req.url ?? '');
    const h = routes[req.url ?? ''];
    if (h) h(req, res);
    else {
      res.statusCode = 404;
      res.end('not found');
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  try {
    await fn(`http://127.0.0.1:${port}`, hits);
  } finally {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

const serve =
  (body: Uint8Array): Handler =>
  (_req, res) => {
    res.writeHead(200, { 'content-length': body.length, 'content-type': 'application/octet-stream' });
    res.end(body);
  };

function filesIn(dir: string): string[] {
  return fs.existsSync(dir) ? fs.readdirSync(dir).sort() : [];
}

function img(data: number[] | Uint8Array | Float32Array, channels: number, height: number, width: number): ImageCHW {
  const d = data instanceof Uint8Array || data instanceof Float32Array ? data : Float32Array.from(data);
  return { data: d, channels, height, width };
}

/** A random uint8 CHW image. */
function randomU8(c: number, h: number, w: number, seed: number): ImageCHW {
  const g = new Generator(seed);
  const d = new Uint8Array(c * h * w);
  for (let i = 0; i < d.length; i++) d[i] = g.int(256);
  return { data: d, channels: c, height: h, width: w };
}

function px(im: ImageCHW, c: number, y: number, x: number): number {
  return im.data[c * im.height * im.width + y * im.width + x]!;
}

function sameImage(a: ImageCHW, b: ImageCHW, msg = ''): void {
  assert.deepEqual([a.channels, a.height, a.width], [b.channels, b.height, b.width], msg);
  assert.equal(a.data.constructor, b.data.constructor, msg);
  assert.deepEqual(Array.from(a.data), Array.from(b.data), msg);
}

/** A small in-memory dataset: n images c x h x w of random bytes, labels i % classes. */
function memDataset(n: number, c: number, h: number, w: number, classes = 10, seed = 3): InMemoryDataset {
  const g = new Generator(seed);
  const images = new Uint8Array(n * c * h * w);
  for (let i = 0; i < images.length; i++) images[i] = g.int(256);
  return new InMemoryDataset({
    images,
    labels: Array.from({ length: n }, (_, i) => i % classes),
    channels: c,
    height: h,
    width: w,
    classes: Array.from({ length: classes }, (_, i) => `c${i}`),
  });
}

async function collect(loader: AsyncIterable<Batch>): Promise<Batch[]> {
  const out: Batch[] = [];
  for await (const b of loader) out.push(b);
  return out;
}

function sameBatches(a: Batch[], b: Batch[]): void {
  assert.equal(a.length, b.length);
  for (let i = 0; i < a.length; i++) {
    assert.deepEqual(a[i]!.x.shape, b[i]!.x.shape, `batch ${i} shape`);
    assert.deepEqual(Array.from(a[i]!.indices), Array.from(b[i]!.indices), `batch ${i} indices`);
    assert.deepEqual(Array.from(a[i]!.y), Array.from(b[i]!.y), `batch ${i} labels`);
    assert.ok(Buffer.from(a[i]!.x.values.buffer).equals(Buffer.from(b[i]!.x.values.buffer)), `batch ${i} pixels differ`);
  }
}

// ---------------------------------------------------------------------------------------------
// IDX
// ---------------------------------------------------------------------------------------------

test('IDX: generated files parse, raw and gzipped', () => {
  const dir = tmpDir('idx');
  const f = fixtureIdx(5, 4, 3);
  fs.writeFileSync(path.join(dir, 'i.idx'), f.images);
  fs.writeFileSync(path.join(dir, 'i.idx.gz'), zlib.gzipSync(f.images));
  for (const name of ['i.idx', 'i.idx.gz']) {
    const a = readIdx(path.join(dir, name), 0x803);
    assert.equal(a.magic, 0x803);
    assert.deepEqual(a.dims, [5, 4, 3]);
    assert.deepEqual(Array.from(a.data), Array.from(f.pixels));
  }
  const l = parseIdx(f.labels, 'labels', 0x801);
  assert.deepEqual(Array.from(l.data), [0, 1, 2, 3, 4]);
});

test('IDX: every header problem is a FormatError naming the file and the problem', () => {
  const good = fixtureIdx(2, 2, 2).images;
  const F = 'file.idx';
  throwsWith(() => parseIdx(new Uint8Array(3), F), FormatError, F, 'too short');
  throwsWith(() => parseIdx(Uint8Array.from([1, 2, 8, 3, 0, 0, 0, 0]), F, 0x803), FormatError, F, 'not an IDX file', 'first two bytes must be zero');
  const badType = good.slice();
  badType[2] = 0x0d;
  throwsWith(() => parseIdx(badType, F, 0x803), FormatError, F, 'type 0x0d (float32) is not supported');
  throwsWith(() => parseIdx(fixtureIdx(2, 2, 2).labels, F, 0x803), FormatError, F, 'magic 0x00000801', 'expected 0x00000803');
  throwsWith(() => parseIdx(Uint8Array.from([0, 0, 8, 0]), F), FormatError, F, '0 dimensions');
  throwsWith(() => parseIdx(good.subarray(0, 10), F, 0x803), FormatError, F, 'truncated IDX header');
  throwsWith(() => parseIdx(good.subarray(0, good.length - 1), F, 0x803), FormatError, F, 'truncated', 'dims [2, 2, 2] = 8 bytes', 'has 7');
  const extra = new Uint8Array(good.length + 3);
  extra.set(good);
  throwsWith(() => parseIdx(extra, F, 0x803), FormatError, F, '3 unexpected bytes after the data');
  // Corrupt gzip (truncated stream).
  const dir = tmpDir('idxgz');
  const gz = zlib.gzipSync(fixtureIdx(50, 8, 8).images);
  const file = path.join(dir, 'cut.gz');
  fs.writeFileSync(file, gz.subarray(0, gz.length - 20));
  throwsWith(() => readIdx(file), FormatError, file, 'gzip');
  throwsWith(() => readIdx(path.join(dir, 'absent')), FormatError, 'absent', 'cannot read');
});

test('Fashion-MNIST reader: layout, classes, and dataset-level validation', () => {
  const dir = tmpDir('fm');
  const pixels = writeFashion(dir, 'train', 12);
  const ds = readFashionMnist(dir, 'train');
  assert.equal(ds.length, 12);
  assert.deepEqual([ds.channels, ds.height, ds.width], [1, 4, 3]);
  assert.deepEqual(ds.classes, FASHION_MNIST_CLASSES);
  assert.equal(ds.numClasses, 10);
  const s = ds.get(5);
  assert.equal(s.label, 5);
  assert.deepEqual(Array.from(s.image), Array.from(pixels.subarray(5 * 12, 6 * 12)));
  assert.deepEqual(ds.classCounts(), [2, 2, 1, 1, 1, 1, 1, 1, 1, 1]);

  // Count mismatch.
  const bad1 = tmpDir('fm-bad');
  writeFashion(bad1, 'train', 12);
  fs.writeFileSync(path.join(bad1, 'train-labels-idx1-ubyte'), serializeIdx([11], new Uint8Array(11)));
  throwsWith(() => readFashionMnist(bad1, 'train'), FormatError, 'train-labels-idx1-ubyte', '11 labels', '12 images');
  // Label out of range.
  const bad2 = tmpDir('fm-bad');
  writeFashion(bad2, 'train', 12);
  const lbl = new Uint8Array(12);
  lbl[7] = 10;
  fs.writeFileSync(path.join(bad2, 'train-labels-idx1-ubyte'), serializeIdx([12], lbl));
  throwsWith(() => readFashionMnist(bad2, 'train'), FormatError, 'train-labels-idx1-ubyte', 'label 10 of sample 7');
  // Labels where images belong.
  const bad3 = tmpDir('fm-bad');
  writeFashion(bad3, 'train', 12);
  fs.writeFileSync(path.join(bad3, 'train-images-idx3-ubyte.gz'), zlib.gzipSync(serializeIdx([12], lbl)));
  throwsWith(() => readFashionMnist(bad3, 'train'), FormatError, 'train-images-idx3-ubyte.gz', 'expected 0x00000803');
  // Zero images.
  const bad4 = tmpDir('fm-bad');
  fs.writeFileSync(path.join(bad4, 't10k-images-idx3-ubyte'), serializeIdx([0, 28, 28], new Uint8Array(0)));
  fs.writeFileSync(path.join(bad4, 't10k-labels-idx1-ubyte'), serializeIdx([0], new Uint8Array(0)));
  throwsWith(() => readFashionMnist(bad4, 'test'), FormatError, 't10k-images-idx3-ubyte', '0 images');
});

const haveRealFashion = fs.existsSync(path.join(FASHION_MNIST_SYSTEM_DIR, 'train-images-idx3-ubyte.gz'));

test(
  'Fashion-MNIST: the real files from /usr/share/datasets/fashion-mnist',
  { skip: haveRealFashion ? false : `${FASHION_MNIST_SYSTEM_DIR} not installed (apt-get install dataset-fashion-mnist)` },
  async () => {
    const train = await loadFashionMnist({ split: 'train', env: {}, cacheDir: tmpDir('nocache'), download: false });
    const testSplit = await loadFashionMnist({ split: 'test', env: {}, cacheDir: tmpDir('nocache'), download: false });
    assert.equal(train.length, 60000);
    assert.equal(testSplit.length, 10000);
    assert.deepEqual([train.channels, train.height, train.width], [1, 28, 28]);
    assert.deepEqual(train.classCounts(), new Array(10).fill(6000));
    assert.deepEqual(testSplit.classCounts(), new Array(10).fill(1000));
    let sum = 0;
    for (const v of train.images) sum += v;
    assert.ok(Math.abs(sum / train.images.length / 255 - FASHION_MNIST_MEAN[0]!) < 1e-3);
  },
);

// ---------------------------------------------------------------------------------------------
// Lookup and "not found" messages
// ---------------------------------------------------------------------------------------------

test('lookup order: --data (and its sub-folders), env vars, RESNET_DATA, cache, system', () => {
  const explicit = tmpDir('explicit');
  writeFashion(path.join(explicit, 'FashionMNIST', 'raw'), 'train');
  assert.equal(locateFashionMnist({ dir: explicit, env: {} }).found, path.join(explicit, 'FashionMNIST', 'raw'));

  const specific = tmpDir('specific');
  writeFashion(specific, 'train');
  const general = tmpDir('general');
  writeFashion(path.join(general, 'fashion-mnist'), 'train');
  const cache = tmpDir('cache');
  writeFashion(path.join(cache, 'fashion-mnist'), 'train');
  const system = tmpDir('system');
  writeFashion(system, 'train');
  const base = { cacheDir: cache, systemDirs: [system] };
  assert.equal(locateFashionMnist({ ...base, env: { RESNET_DATA_FASHION_MNIST: specific, RESNET_DATA: general } }).found, specific);
  assert.equal(locateFashionMnist({ ...base, env: { RESNET_DATA: general } }).found, path.join(general, 'fashion-mnist'));
  assert.equal(locateFashionMnist({ ...base, env: {} }).found, path.join(cache, 'fashion-mnist'));
  assert.equal(locateFashionMnist({ cacheDir: tmpDir('empty'), systemDirs: [system], env: {} }).found, system);
  // RESNET_CACHE is the default cache root.
  assert.equal(locateFashionMnist({ systemDirs: [], env: { RESNET_CACHE: cache } }).found, path.join(cache, 'fashion-mnist'));
  // The test split is looked for separately.
  assert.equal(locateFashionMnist({ ...base, split: 'test', env: {} }).found, null);
});

test('missing dataset: the error names every place looked in and how to fix it', async () => {
  const cache = tmpDir('c');
  const sys = path.join(TMP, 'no-such-system-dir');
  const partial = tmpDir('partial');
  writeFashion(partial, 'train');
  fs.rmSync(path.join(partial, 'train-labels-idx1-ubyte'));
  const err = await rejectsWith(
    loadFashionMnist({ download: false, cacheDir: cache, systemDirs: [sys], env: { RESNET_DATA_FASHION_MNIST: partial } }),
    DatasetNotFoundError,
    'Fashion-MNIST (train) not found',
    `$RESNET_DATA_FASHION_MNIST = ${partial} (missing train-labels-idx1-ubyte[.gz])`,
    '$RESNET_DATA (not set)',
    `${path.join(cache, 'fashion-mnist')} (no such folder)`,
    `${sys} (no such folder)`,
    'apt-get install dataset-fashion-mnist',
    '--data DIR',
  );
  assert.ok(!err.message.includes('\n'), 'one-line message');
  const dir = tmpDir('x');
  await rejectsWith(loadFashionMnist({ dir, download: false, env: {} }), DatasetNotFoundError, `--data ${dir} (missing train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz])`, path.join(dir, 'fashion-mnist'));
  await rejectsWith(loadCifar10({ download: false, cacheDir: cache, systemDirs: [], env: {} }), DatasetNotFoundError, 'CIFAR-10 (train) not found', '$RESNET_DATA_CIFAR10 (not set)', 'cifar-10-binary.tar.gz');
});

// ---------------------------------------------------------------------------------------------
// Downloads (local server only)
// ---------------------------------------------------------------------------------------------

test('download: Fashion-MNIST from a local mirror into the cache, checksummed, then found there', async () => {
  const src = tmpDir('mirror');
  writeFashion(src, 'train', 12, true);
  const files = ['train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'];
  const bodies = Object.fromEntries(files.map((f) => [f, fs.readFileSync(path.join(src, f))]));
  const sums = Object.fromEntries(files.map((f) => [f, md5(bodies[f]!)]));
  const cache = tmpDir('dlcache');
  await withServer(Object.fromEntries(files.map((f) => [`/fm/${f}`, serve(bodies[f]!)])), async (base, hits) => {
    const opts = { cacheDir: cache, systemDirs: [], env: { RESNET_FASHION_MNIST_URL: `${base}/fm/` }, md5: sums, log: noLog };
    const ds = await loadFashionMnist(opts);
    assert.equal(ds.length, 12);
    assert.deepEqual(filesIn(path.join(cache, 'fashion-mnist')), files);
    assert.equal(hits.length, 2);
    await loadFashionMnist(opts);
    assert.equal(hits.length, 2, 'second load comes from the cache');
  });
});

test('download: checksum mismatch is an error and leaves no file', async () => {
  const body = zlib.gzipSync(fixtureIdx(3, 2, 2).images);
  await withServer({ '/f.gz': serve(body) }, async (base) => {
    const dir = tmpDir('dl');
    const dest = path.join(dir, 'f.gz');
    await rejectsWith(downloadFile(`${base}/f.gz`, dest, { md5: '0'.repeat(32) }), DownloadError, 'MD5 mismatch', `got ${md5(body)}`);
    assert.deepEqual(filesIn(dir), []);
    await rejectsWith(downloadFile(`${base}/f.gz`, dest, { sha256: 'ab'.repeat(32) }), DownloadError, 'SHA-256 mismatch');
    assert.deepEqual(filesIn(dir), []);
    const ok = await downloadFile(`${base}/f.gz`, dest, { md5: md5(body) });
    assert.equal(ok.bytes, body.length);
    assert.deepEqual(filesIn(dir), ['f.gz']);

    // Through the dataset loader: the official checksums do not match the fixture.
    const cache = tmpDir('dlc');
    await rejectsWith(
      loadFashionMnist({ cacheDir: cache, systemDirs: [], env: {}, baseUrl: `${base}/nothing/`, log: noLog }),
      DatasetNotFoundError,
      'HTTP 404',
      'apt-get install dataset-fashion-mnist',
    );
    assert.deepEqual(filesIn(path.join(cache, 'fashion-mnist')), []);
  });
});

test('download: a dropped connection, a stall, HTTP errors and redirects', async () => {
  const body = crypto.randomBytes(5000);
  const routes: Record<string, Handler> = {
    '/drop': (_req, res) => {
      res.writeHead(200, { 'content-length': body.length });
      res.write(body.subarray(0, 1000), () => setTimeout(() => res.socket?.destroy(), 10));
    },
    '/drop-chunked': (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      res.write(body.subarray(0, 1000), () => setTimeout(() => res.socket?.destroy(), 10));
    },
    '/stall': (_req, res) => {
      res.writeHead(200, { 'content-length': body.length });
      res.write(body.subarray(0, 10));
    },
    '/gone': (_req, res) => {
      res.statusCode = 410;
      res.end();
    },
    '/moved': (_req, res) => {
      res.writeHead(302, { location: '/ok' });
      res.end();
    },
    '/ok': serve(body),
  };
  await withServer(routes, async (base) => {
    const dir = tmpDir('drop');
    const dest = path.join(dir, 'out.bin');
    await rejectsWith(downloadFile(`${base}/drop`, dest), DownloadError, `${base}/drop`, 'after 1000 of 5000 bytes');
    assert.deepEqual(filesIn(dir), []);
    await rejectsWith(downloadFile(`${base}/drop-chunked`, dest), DownloadError, `${base}/drop-chunked`, 'after 1000 bytes');
    assert.deepEqual(filesIn(dir), []);
    await rejectsWith(downloadFile(`${base}/stall`, dest, { timeoutMs: 300 }), DownloadError, `${base}/stall`, 'no data for 0.3 s after 10 of 5000 bytes');
    assert.deepEqual(filesIn(dir), []);
    // Folders the download created are removed again on failure.
    await rejectsWith(downloadFile(`${base}/drop`, path.join(dir, 'new', 'sub', 'x.bin')), DownloadError);
    assert.deepEqual(filesIn(dir), []);
    await rejectsWith(downloadFile(`${base}/gone`, dest), DownloadError, 'HTTP 410');
    await rejectsWith(downloadFile(`${base}/ok`, dest, { size: 1 }), DownloadError, 'expected 1 bytes, got 5000');
    assert.deepEqual(filesIn(dir), []);
    const r = await downloadFile(`${base}/moved`, dest, { md5: md5(body) });
    assert.equal(r.bytes, 5000);
    assert.ok(fs.readFileSync(dest).equals(body));
    await rejectsWith(downloadFile('ftp://example.invalid/x', dest), DownloadError, 'only http: and https:');
  });
});

// ---------------------------------------------------------------------------------------------
// CIFAR-10 and tar
// ---------------------------------------------------------------------------------------------

/** A CIFAR batch of `n` records; pixel p of record r = (r * 31 + p) & 255, label (r + first) % 10. */
function cifarBatch(n: number, first = 0): Uint8Array {
  const b = new Uint8Array(n * 3073);
  for (let r = 0; r < n; r++) {
    b[r * 3073] = (r + first) % 10;
    for (let p = 0; p < 3072; p++) b[r * 3073 + 1 + p] = (r * 31 + p) & 255;
  }
  return b;
}

function cifarFiles(): { name: string; data: Uint8Array }[] {
  return [
    ...[1, 2, 3, 4, 5].map((k) => ({ name: `data_batch_${k}.bin`, data: cifarBatch(3, k) })),
    { name: 'test_batch.bin', data: cifarBatch(2) },
    { name: 'batches.meta.txt', data: new TextEncoder().encode(`${CIFAR10_CLASSES.join('\n')}\n\n`) },
  ];
}

test('CIFAR-10: binary batches from generated files, and their validation', () => {
  const dir = tmpDir('cifar');
  for (const f of cifarFiles()) fs.writeFileSync(path.join(dir, f.name), f.data);
  const train = readCifar10(dir, 'train');
  assert.equal(train.length, 15);
  assert.deepEqual([train.channels, train.height, train.width], [3, 32, 32]);
  assert.deepEqual(train.classes, CIFAR10_CLASSES);
  const s = train.get(4); // data_batch_2, record 1
  assert.equal(s.label, 3);
  assert.equal(s.image[0], 31);
  assert.equal(s.image[1024], (31 + 1024) & 255, 'green plane follows red');
  assert.equal(readCifar10(dir, 'test').length, 2);

  throwsWith(() => parseCifarBatch(cifarBatch(2).subarray(0, 6000), 'b.bin'), FormatError, 'b.bin', 'not a multiple of the 3073-byte record', '1 whole records');
  throwsWith(() => parseCifarBatch(new Uint8Array(0), 'b.bin'), FormatError, 'b.bin', 'empty');
  const badLabel = cifarBatch(2);
  badLabel[3073] = 42;
  throwsWith(() => parseCifarBatch(badLabel, 'b.bin'), FormatError, 'b.bin', 'record 1 has label 42');
  fs.writeFileSync(path.join(dir, 'batches.meta.txt'), 'a\nb\n');
  throwsWith(() => readCifar10(dir, 'train'), FormatError, 'batches.meta.txt', '2 class names');
  fs.rmSync(path.join(dir, 'batches.meta.txt'));
  assert.deepEqual(readCifar10(dir, 'test').classes, CIFAR10_CLASSES, 'default names without meta file');
  fs.rmSync(path.join(dir, 'data_batch_3.bin'));
  throwsWith(() => readCifar10(dir, 'train'), DatasetNotFoundError, 'data_batch_3.bin');
});

test('tar reader: round trip, corruption, and archives written by GNU tar', () => {
  const files = [
    { name: 'top/', data: new Uint8Array(0), type: 'dir' as const },
    { name: 'top/a.bin', data: Uint8Array.from([1, 2, 3]) },
    { name: 'top/empty', data: new Uint8Array(0) },
    { name: 'top/big.bin', data: crypto.randomBytes(1500) },
  ];
  const tar = buildTar(files);
  const entries = parseTar(tar, 'x.tar');
  assert.deepEqual(
    entries.map((e) => [e.name, e.type, e.data.length]),
    [['top/', 'dir', 0], ['top/a.bin', 'file', 3], ['top/empty', 'file', 0], ['top/big.bin', 'file', 1500]],
  );
  assert.ok(Buffer.from(entries[3]!.data).equals(files[3]!.data));
  const corrupt = tar.slice();
  corrupt[512 + 10] ^= 0xff; // a name byte of the second header
  throwsWith(() => parseTar(corrupt, 'x.tar'), FormatError, 'x.tar', 'bad checksum');
  throwsWith(() => parseTar(tar.subarray(0, 512 * 5 + 100), 'x.tar'), FormatError, 'x.tar', 'truncated');

  const which = spawnSync('tar', ['--version'], { encoding: 'utf8' });
  if (which.status !== 0) return; // no system tar: the generated archive above still covers ustar
  const dir = tmpDir('gnutar');
  const long = `${'d'.repeat(60)}/${'f'.repeat(70)}.bin`;
  fs.mkdirSync(path.join(dir, 'src', path.dirname(long)), { recursive: true });
  fs.writeFileSync(path.join(dir, 'src', long), 'hello');
  for (const format of ['gnu', 'posix', 'ustar']) {
    const out = path.join(dir, `${format}.tar`);
    const r = spawnSync('tar', [`--format=${format}`, '-cf', out, '-C', path.join(dir, 'src'), '.'], { encoding: 'utf8' });
    if (r.status !== 0) continue;
    const e = parseTar(fs.readFileSync(out), out).find((x) => x.type === 'file');
    assert.equal(e?.name.replace(/^\.\//, ''), long, format);
    assert.equal(new TextDecoder().decode(e!.data), 'hello', format);
  }
});

test('download: CIFAR-10 archive from a local server, md5-checked, extracted, archive removed', async () => {
  const tgz = zlib.gzipSync(buildTar(cifarFiles().map((f) => ({ ...f, name: `cifar-10-batches-bin/${f.name}` }))));
  await withServer({ '/c.tgz': serve(tgz) }, async (base) => {
    const cache = tmpDir('cc');
    const ds = await loadCifar10({ split: 'test', url: `${base}/c.tgz`, md5: md5(tgz), cacheDir: cache, systemDirs: [], env: {}, log: noLog });
    assert.equal(ds.length, 2);
    const folder = path.join(cache, 'cifar-10-batches-bin');
    assert.ok(!filesIn(folder).some((f) => f.includes('tar.gz') || f.includes('.part')), filesIn(folder).join(' '));
    assert.equal((await loadCifar10({ split: 'train', cacheDir: cache, systemDirs: [], env: {}, download: false })).length, 15);
    // --data DIR: the archive's folder lands inside DIR.
    const dir = tmpDir('cd');
    await loadCifar10({ dir, url: `${base}/c.tgz`, md5: md5(tgz), env: {}, log: noLog });
    assert.ok(fs.existsSync(path.join(dir, 'cifar-10-batches-bin', 'data_batch_5.bin')));
    // A wrong checksum leaves nothing behind.
    const cache2 = tmpDir('cc2');
    await rejectsWith(loadCifar10({ url: `${base}/c.tgz`, cacheDir: cache2, systemDirs: [], env: {}, log: noLog }), DatasetNotFoundError, 'MD5 mismatch', 'c32a1d4ab5d03f1284b67883e8d87530');
    assert.deepEqual(filesIn(path.join(cache2, 'cifar-10-batches-bin')), []);
  });
});

// ---------------------------------------------------------------------------------------------
// ImageFolder
// ---------------------------------------------------------------------------------------------

function writePnm(file: string, w: number, h: number, channels: 1 | 3, data: Uint8Array): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const head = new TextEncoder().encode(`${channels === 3 ? 'P6' : 'P5'}\n# test\n${w} ${h}\n255\n`);
  fs.writeFileSync(file, Buffer.concat([head, data]));
}

/** A tiny binary PPM/PGM decoder: the fake decoder injected into ImageFolder. */
async function decodePnm(file: string): Promise<DecodedImage> {
  const b = fs.readFileSync(file);
  let pos = 0;
  const token = (): string => {
    for (;;) {
      while (pos < b.length && /\s/.test(String.fromCharCode(b[pos]!))) pos++;
      if (b[pos] !== 0x23) break;
      while (pos < b.length && b[pos] !== 0x0a) pos++;
    }
    const start = pos;
    while (pos < b.length && !/\s/.test(String.fromCharCode(b[pos]!))) pos++;
    return b.subarray(start, pos).toString('latin1');
  };
  const magic = token();
  if (magic !== 'P6' && magic !== 'P5') throw new Error(`not a binary PNM (${JSON.stringify(magic)})`);
  const width = Number(token());
  const height = Number(token());
  if (Number(token()) !== 255) throw new Error('maxval must be 255');
  pos++;
  const channels = magic === 'P6' ? 3 : 1;
  const data = new Uint8Array(b.subarray(pos, pos + width * height * channels));
  if (data.length !== width * height * channels) throw new Error('truncated PNM');
  return { data, width, height, channels };
}

function makeImageFolder(): string {
  const root = tmpDir('imgs');
  // cat: 3 images (one upper-case extension, one in a sub-folder), plus a non-image file.
  writePnm(path.join(root, 'cat', 'b.ppm'), 3, 2, 3, Uint8Array.from({ length: 18 }, (_, i) => i * 10));
  writePnm(path.join(root, 'cat', 'A.PPM'), 2, 2, 3, new Uint8Array(12).fill(200));
  writePnm(path.join(root, 'cat', 'sub', 'c.ppm'), 4, 3, 3, new Uint8Array(36).fill(50));
  fs.writeFileSync(path.join(root, 'cat', 'notes.txt'), 'not an image');
  // dog: grayscale images.
  for (let k = 0; k < 4; k++) writePnm(path.join(root, 'dog', `d${k}.pgm`), 5, 4, 1, new Uint8Array(20).fill(k * 60));
  fs.mkdirSync(path.join(root, '.hidden'));
  writePnm(path.join(root, '.hidden', 'x.ppm'), 1, 1, 3, new Uint8Array(3));
  return root;
}

test('ImageFolder: classes, sorted samples, decoding to CHW, channel conversion', async () => {
  const root = makeImageFolder();
  const ds = new ImageFolder(root, { decode: decodePnm });
  assert.deepEqual(ds.classes, ['cat', 'dog']);
  assert.deepEqual(ds.classToIdx, { cat: 0, dog: 1 });
  assert.deepEqual(
    ds.samples.map((s) => [path.relative(root, s.path), s.label]),
    [['cat/A.PPM', 0], ['cat/b.ppm', 0], ['cat/sub/c.ppm', 0], ['dog/d0.pgm', 1], ['dog/d1.pgm', 1], ['dog/d2.pgm', 1], ['dog/d3.pgm', 1]],
  );
  assert.equal(ds.length, 7);
  assert.equal(ds.height, 0, 'sizes vary');
  const b = await ds.load(1);
  assert.deepEqual([b.channels, b.height, b.width, b.label], [3, 2, 3, 0]);
  // HWC (i * 10) → CHW: red plane holds pixels 0, 3, 6, ... of the interleaved data.
  assert.deepEqual(Array.from(b.image.subarray(0, 6)), [0, 30, 60, 90, 120, 150]);
  assert.deepEqual(Array.from(b.image.subarray(6, 12)), [10, 40, 70, 100, 130, 160]);
  const g = await ds.load(5);
  assert.deepEqual([g.channels, g.height, g.width], [3, 4, 5]);
  assert.ok(g.image.every((v) => v === 120), 'gray replicated to RGB');
  const gray = new ImageFolder(root, { decode: decodePnm, channels: 1 });
  const b1 = await gray.load(1);
  assert.equal(b1.channels, 1);
  // Pillow's L = (299 R + 587 G + 114 B) / 1000, rounded: pixel 0 = (0, 10, 20).
  assert.equal(b1.image[0], Math.round((0 * 299 + 10 * 587 + 20 * 114) / 1000));
  assert.equal((await gray.load(3)).image[0], 0);
});

test('ImageFolder: clear errors for empty or broken folders and images', async () => {
  const empty = tmpDir('empty');
  throwsWith(() => new ImageFolder(empty, { decode: decodePnm }), DatasetNotFoundError, empty, 'no class folders');
  throwsWith(() => new ImageFolder(path.join(empty, 'nope'), { decode: decodePnm }), DatasetNotFoundError, 'does not exist');
  fs.mkdirSync(path.join(empty, 'a'));
  fs.writeFileSync(path.join(empty, 'a', 'x.gif'), 'gif');
  throwsWith(() => new ImageFolder(empty, { decode: decodePnm }), DatasetNotFoundError, 'no images', '1 x .gif');
  const root = makeImageFolder();
  fs.mkdirSync(path.join(root, 'zebra'));
  throwsWith(() => new ImageFolder(root, { decode: decodePnm }), DatasetNotFoundError, 'without images', 'zebra', 'allowEmpty');
  assert.equal(new ImageFolder(root, { decode: decodePnm, allowEmpty: true }).numClasses, 3);
  throwsWith(() => new ImageFolder(root, {} as never), UsageError, 'decode');
  const broken = makeImageFolder();
  fs.writeFileSync(path.join(broken, 'cat', 'b.ppm'), 'P3 garbage');
  const ds = new ImageFolder(broken, { decode: decodePnm });
  await rejectsWith(ds.load(1), FormatError, path.join(broken, 'cat', 'b.ppm'), 'cannot decode', 'not a binary PNM');
  const liar = new ImageFolder(root, { decode: async () => ({ data: new Uint8Array(5), width: 2, height: 2, channels: 3 }), allowEmpty: true });
  await rejectsWith(liar.load(0), FormatError, 'A.PPM', 'returned 5 bytes for a 2x2x3 image');
  const odd = new ImageFolder(root, { decode: async () => ({ data: new Uint8Array(10), width: 2, height: 2 }), allowEmpty: true });
  await rejectsWith(odd.load(0), FormatError, 'A.PPM', '2.5 channels');
  // Without `channels` (src/image's decodeImage returns { width, height, data } RGB): inferred.
  const rgbOnly = new ImageFolder(root, { decode: async () => ({ data: new Uint8Array(12).fill(9), width: 2, height: 2 }), allowEmpty: true });
  assert.deepEqual([(await rgbOnly.load(0)).channels, (await rgbOnly.load(0)).image.length], [3, 12]);
});

test('train/val split: seeded, stratified or not, disjoint and complete', () => {
  const ds = memDataset(103, 1, 2, 2, 10);
  const a = trainValSplit(ds, 0.2, { seed: 5 });
  const b = trainValSplit(ds, 0.2, { seed: 5 });
  const c = trainValSplit(ds, 0.2, { seed: 6 });
  assert.deepEqual(Array.from(a.val.indices), Array.from(b.val.indices));
  assert.notDeepEqual(Array.from(a.val.indices), Array.from(c.val.indices));
  const all = [...a.train.indices, ...a.val.indices].sort((x, y) => x - y);
  assert.deepEqual(all, Array.from({ length: 103 }, (_, i) => i));
  // Stratified: every class (10 or 11 samples) sends 2 to validation.
  const perClass = new Array(10).fill(0);
  for (let i = 0; i < a.val.length; i++) perClass[a.val.labelOf(i)]++;
  assert.deepEqual(perClass, new Array(10).fill(2));
  assert.equal(a.val.get(0).label, a.val.labelOf(0));
  const u = trainValSplit(ds, 0.2, { seed: 5, stratified: false });
  assert.equal(u.val.length, Math.round(103 * 0.2));
  assert.throws(() => trainValSplit(ds, 1), UsageError);
  const folder = new ImageFolder(makeImageFolder(), { decode: decodePnm });
  const s = folder.split(0.5, { seed: 1 });
  assert.deepEqual([s.train.length, s.val.length], [3, 4]); // cat: round(1.5) = 2 of 3 to val; dog: 2 of 4
});

// ---------------------------------------------------------------------------------------------
// Transforms
// ---------------------------------------------------------------------------------------------

const RANDOM_TRANSFORMS: [string, Transform][] = [
  ['RandomCrop', new RandomCrop(6, 2)],
  ['RandomHorizontalFlip', new RandomHorizontalFlip()],
  ['RandomResizedCrop', new RandomResizedCrop(5)],
  ['ColorJitter', new ColorJitter({ brightness: 0.4, contrast: 0.4, saturation: 0.4 })],
  ['RandomErasing', new RandomErasing({ p: 0.7 })],
];

test('transforms: deterministic given the generator, varying across seeds, never mutating input', () => {
  const src = randomU8(3, 8, 9, 1);
  const copy = src.data.slice();
  for (const [name, t] of RANDOM_TRANSFORMS) {
    const outs = new Set<string>();
    for (let seed = 0; seed < 12; seed++) {
      const a = t.apply(src, new Generator(seed));
      const b = t.apply(src, new Generator(seed));
      sameImage(a, b, `${name} seed ${seed}`);
      outs.add(Buffer.from(a.data.buffer, a.data.byteOffset, a.data.byteLength).toString('hex'));
    }
    assert.ok(outs.size > 1, `${name} should vary with the seed`);
    assert.deepEqual(Array.from(src.data), Array.from(copy), `${name} mutated its input`);
  }
});

test('transforms: rebuilt from spec() they give the same results (what workers do)', async () => {
  const t = new Compose([
    new RandomResizedCrop([6, 7], { scale: [0.3, 1] }),
    new RandomCrop(6, [1, 2], { fill: [1, 2, 3] }),
    new RandomHorizontalFlip(0.3),
    new ColorJitter({ brightness: 0.5, contrast: [0.5, 1.5], saturation: 0.2 }),
    new ToFloat(),
    new Normalize([0.5, 0.4, 0.3], [0.2, 0.25, 0.3]),
    new RandomErasing({ p: 0.9, value: 'random' }),
    new Resize(9),
    new CenterCrop(7),
  ]);
  const t2 = await transformFromSpec(structuredClone(t.spec()));
  const src = randomU8(3, 10, 12, 2);
  for (let seed = 0; seed < 5; seed++) sameImage(t.apply(src, new Generator(seed)), t2.apply(src, new Generator(seed)));
});

test('flip: an exact mirror; p = 1 always, p = 0 never', () => {
  const src = randomU8(2, 3, 5, 4);
  const m = hflip(src);
  for (let c = 0; c < 2; c++) for (let y = 0; y < 3; y++) for (let x = 0; x < 5; x++) assert.equal(px(m, c, y, x), px(src, c, y, 4 - x));
  sameImage(hflip(m), src);
  sameImage(new RandomHorizontalFlip(1).apply(src, new Generator(1)), m);
  assert.equal(new RandomHorizontalFlip(0).apply(src, new Generator(1)), src);
});

test('RandomCrop with padding: the output is the input shifted, zero outside', () => {
  const src = randomU8(1, 28, 28, 5);
  const t = new RandomCrop(28, 4);
  for (let seed = 0; seed < 20; seed++) {
    const g = new Generator(seed);
    const out = t.apply(src, new Generator(seed));
    const i = g.int(9) - 4; // padded 36 x 36: 9 positions for a 28 x 28 crop
    const j = g.int(9) - 4;
    for (let y = 0; y < 28; y++) {
      for (let x = 0; x < 28; x++) {
        const sy = y + i;
        const sx = x + j;
        const want = sy >= 0 && sy < 28 && sx >= 0 && sx < 28 ? px(src, 0, sy, sx) : 0;
        assert.equal(px(out, 0, y, x), want, `seed ${seed} at (${y}, ${x}) shift (${i}, ${j})`);
      }
    }
  }
  // No padding, crop = image: returned as is, no draw.
  const g = new Generator(9);
  const same = new RandomCrop(28).apply(src, g);
  sameImage(same, src);
  assert.deepEqual(g.getState(), new Generator(9).getState());
  // Padding modes as torch.nn.functional.pad / torchvision: row [1, 2, 3] padded by 2.
  const row = img([1, 2, 3], 1, 1, 3);
  const pad = (mode: 'constant' | 'edge' | 'reflect' | 'symmetric'): number[] =>
    Array.from(new RandomCrop([1, 7], [2, 0], { paddingMode: mode, fill: 9 }).apply(row, new Generator(0)).data);
  assert.deepEqual(pad('constant'), [9, 9, 1, 2, 3, 9, 9]);
  assert.deepEqual(pad('edge'), [1, 1, 1, 2, 3, 3, 3]);
  assert.deepEqual(pad('reflect'), [3, 2, 1, 2, 3, 2, 1]);
  assert.deepEqual(pad('symmetric'), [2, 1, 1, 2, 3, 3, 2]);
  // padIfNeeded pads by the shortfall on both sides.
  const small = new RandomCrop([3, 5], 0, { padIfNeeded: true }).apply(img([1, 2, 3], 1, 1, 3), new Generator(0));
  assert.deepEqual([small.height, small.width], [3, 5]);
  throwsWith(() => new RandomCrop(40).apply(src, new Generator(0)), ShapeError, '40x40', '28x28');
});

test('ToFloat and Normalize: values', () => {
  const u = img(Uint8Array.from([0, 51, 255, 102]), 1, 2, 2);
  const f = new ToFloat().apply(u);
  assert.deepEqual(Array.from(f.data), [0, 0.2, 1, 0.4].map(Math.fround));
  const n = new Normalize([0.5, 0.25], [0.5, 2]).apply(img([0, 1, 0.5, 0.25], 2, 1, 2));
  assert.deepEqual(Array.from(n.data), [-1, 1, 0.125, 0]);
  const bc = new Normalize(0.5, 0.5).apply(img([1, 0], 2, 1, 1));
  assert.deepEqual(Array.from(bc.data), [1, -1]);
  throwsWith(() => new Normalize(0.5, 0.5).apply(u), UsageError, 'ToFloat');
  throwsWith(() => new Normalize([1, 2, 3], [1, 1, 1]).apply(img([1, 2], 2, 1, 1)), UsageError, '3 mean values', '2 channels');
  throwsWith(() => new Normalize(0, 0), UsageError, 'std');
});

test('ColorJitter: identity at 0, and the definitions of brightness, contrast and saturation', () => {
  const src = randomU8(3, 4, 5, 6);
  const f = new ToFloat().apply(src);
  for (const im of [src, f]) {
    const same = new ColorJitter({ brightness: 0, contrast: 0, saturation: 0 }).apply(im, new Generator(3));
    sameImage(same, im);
    sameImage(new ColorJitter({ brightness: [1, 1] }).apply(im, new Generator(3)), im);
  }
  // Brightness: x * f, clamped.
  const b = new ColorJitter({ brightness: [2, 2] }).apply(f, new Generator(0));
  f.data.forEach((v, i) => assert.equal(b.data[i], Math.fround(Math.min(1, v * 2))));
  // Contrast 0: every pixel becomes the mean of the grayscale image.
  const gray = (i: number): number => 0.2989 * f.data[i]! + 0.587 * f.data[20 + i]! + 0.114 * f.data[40 + i]!;
  let mean = 0;
  for (let i = 0; i < 20; i++) mean += gray(i) / 20;
  const c = new ColorJitter({ contrast: [0, 0] }).apply(f, new Generator(0));
  c.data.forEach((v) => assert.ok(Math.abs(v - mean) < 1e-6));
  // Saturation 0: the grayscale image in every channel.
  const s = new ColorJitter({ saturation: [0, 0] }).apply(f, new Generator(0));
  for (let ch = 0; ch < 3; ch++) for (let i = 0; i < 20; i++) assert.ok(Math.abs(s.data[ch * 20 + i]! - gray(i)) < 1e-6);
  // Saturation is a no-op on one channel; contrast uses the image's own mean there.
  const one = randomU8(1, 3, 3, 7);
  sameImage(new ColorJitter({ saturation: [0, 0] }).apply(one, new Generator(0)), one);
  const c1 = new ColorJitter({ contrast: [0, 0] }).apply(one, new Generator(0));
  const m1 = Array.from(one.data).reduce((a, v) => a + v, 0) / 9;
  assert.ok(c1.data.every((v) => v === Math.round(m1)));
  throwsWith(() => new ColorJitter({ hue: 0.1 }), UsageError, 'hue');
  throwsWith(() => new ColorJitter({ brightness: -1 }), UsageError, 'brightness');
});

test('RandomErasing: erases one rectangle within the scale and ratio bounds; p = 0 never', () => {
  const f = new ToFloat().apply(randomU8(3, 20, 24, 8));
  const t = new RandomErasing({ p: 1, value: [7, 8, 9] });
  let erasedSome = 0;
  for (let seed = 0; seed < 30; seed++) {
    const out = t.apply(f, new Generator(seed));
    const changed: [number, number][] = [];
    for (let y = 0; y < 20; y++) for (let x = 0; x < 24; x++) if (px(out, 0, y, x) !== px(f, 0, y, x)) changed.push([y, x]);
    if (changed.length === 0) continue;
    erasedSome++;
    const ys = changed.map((p) => p[0]);
    const xs = changed.map((p) => p[1]);
    const [y0, y1, x0, x1] = [Math.min(...ys), Math.max(...ys), Math.min(...xs), Math.max(...xs)];
    const h = y1 - y0 + 1;
    const w = x1 - x0 + 1;
    assert.equal(changed.length, h * w, 'a full rectangle');
    for (let y = y0; y <= y1; y++) for (let x = x0; x <= x1; x++) assert.deepEqual([px(out, 0, y, x), px(out, 1, y, x), px(out, 2, y, x)], [7, 8, 9]);
    assert.ok(h < 20 && w < 24);
    assert.ok(h * w <= 0.33 * 480 * 1.2 + 4 && h * w >= 0.02 * 480 * 0.5, `area ${h * w}`);
  }
  assert.ok(erasedSome >= 25, `erased ${erasedSome} of 30`);
  assert.equal(new RandomErasing({ p: 0 }).apply(f, new Generator(0)), f);
  const noise = new RandomErasing({ p: 1, value: 'random' }).apply(f, new Generator(2));
  assert.ok(Array.from(noise.data).some((v) => v < 0), 'standard normal noise');
  throwsWith(() => new RandomErasing({ p: 1, value: 'random' }).apply(randomU8(1, 9, 9, 1), new Generator(0)), UsageError, 'float');
});

test('RandomResizedCrop: size, full-image identity, fallback center crop', () => {
  const src = randomU8(3, 16, 16, 9);
  for (let seed = 0; seed < 10; seed++) {
    const out = new RandomResizedCrop([8, 12]).apply(src, new Generator(seed));
    assert.deepEqual([out.channels, out.height, out.width], [3, 8, 12]);
  }
  sameImage(new RandomResizedCrop(16, { scale: [1, 1], ratio: [1, 1] }).apply(src, new Generator(1)), src);
  // Ratio 10 never fits a square: 10 attempts, then the center crop w = W, h = round(W / 10).
  const t = new RandomResizedCrop(4, { ratio: [10, 10] });
  assert.deepEqual(t.getParams(16, 16, new Generator(0)), [7, 0, 2, 16]);
  assert.deepEqual(t.getParams(1, 100, new Generator(0)), [0, 45, 1, 10]);
});

test('Resize and CenterCrop: sizes, bilinear values, torchvision rounding', () => {
  const r = new Resize(2);
  assert.deepEqual(r.outputSize(4, 6), [2, 3]);
  assert.deepEqual(r.outputSize(7, 3), [4, 2]);
  assert.deepEqual(new Resize(10, { maxSize: 12 }).outputSize(10, 20), [6, 12]);
  // Upscaling [0, 1] to 4: torch's linear interpolation with align_corners=False.
  assert.deepEqual(Array.from(new Resize([1, 4]).apply(img([0, 1], 1, 1, 2)).data), [0, 0.25, 0.75, 1]);
  // Downscaling [0, 1, 2, 3] to 2: antialiased (Pillow's triangle filter) vs plain bilinear.
  const aa = new Resize([1, 2]).apply(img([0, 1, 2, 3], 1, 1, 4)).data;
  assert.ok(Math.abs(aa[0]! - 5 / 7) < 1e-6 && Math.abs(aa[1]! - (3 - 5 / 7)) < 1e-6, `${Array.from(aa)}`);
  assert.deepEqual(Array.from(new Resize([1, 2], { antialias: false }).apply(img([0, 1, 2, 3], 1, 1, 4)).data), [0.5, 2.5]);
  const u = new Resize([2, 2]).apply(img(Uint8Array.from([0, 255, 255, 0, 10, 20, 30, 40, 50]), 1, 3, 3));
  assert.ok(u.data instanceof Uint8Array);
  const same = randomU8(1, 5, 5, 1);
  assert.equal(new Resize(5).apply(same), same);

  const row = img([0, 1, 2, 3, 4], 1, 1, 5);
  assert.deepEqual(Array.from(new CenterCrop([1, 2]).apply(row).data), [2, 3], 'round(1.5) = 2');
  assert.deepEqual(Array.from(new CenterCrop([1, 4]).apply(row).data), [0, 1, 2, 3], 'round(0.5) = 0');
  const padded = new CenterCrop(4).apply(img([1, 2, 3, 4], 1, 2, 2));
  assert.deepEqual(Array.from(padded.data), [0, 0, 0, 0, 0, 1, 2, 0, 0, 3, 4, 0, 0, 0, 0, 0]);
  assert.deepEqual([roundHalfEven(0.5), roundHalfEven(1.5), roundHalfEven(2.5), roundHalfEven(-0.5), roundHalfEven(2.4)], [0, 2, 2, -0, 2]);
});

interface RefCase {
  kind: string;
  y: string;
  size?: number | [number, number];
  shape?: number[];
  box?: [number, number, number, number];
  mode?: 'constant' | 'edge' | 'reflect' | 'symmetric';
  pad?: [number, number, number, number];
  f?: number;
  mean?: number[];
  std?: number[];
}

test('transforms match torchvision 0.14 (test/fixtures/data/torchvision_ref.json)', () => {
  const ref = JSON.parse(fs.readFileSync(fileURLToPath(new URL('../../test/fixtures/data/torchvision_ref.json', import.meta.url)), 'utf8')) as {
    shape: [number, number, number];
    x: string;
    u: string;
    cases: RefCase[];
  };
  const f32 = (b64: string): Float32Array => {
    const b = Buffer.from(b64, 'base64');
    return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
  };
  const u8 = (b64: string): Uint8Array => new Uint8Array(Buffer.from(b64, 'base64'));
  const [C, H, W] = ref.shape;
  const x: ImageCHW = { data: f32(ref.x), channels: C, height: H, width: W };
  const u: ImageCHW = { data: u8(ref.u), channels: C, height: H, width: W };
  const first = (im: ImageCHW): ImageCHW => ({ ...im, data: im.data.slice(0, H * W), channels: 1 });
  for (const c of ref.cases) {
    const name = `${c.kind} ${JSON.stringify(c.size ?? c.box ?? c.mode ?? c.f ?? '')}`;
    let got: ImageCHW;
    let tol = 0; // exact unless stated
    const size = c.size as [number, number];
    switch (c.kind) {
      case 'resize_f_aa':
        got = new Resize(size).apply(x);
        tol = 1e-6;
        break;
      case 'resize_f':
        got = new Resize(size, { antialias: false }).apply(x);
        tol = 1e-6;
        break;
      case 'resize_u_aa':
        got = new Resize(size).apply(u);
        tol = 1; // rounding of the uint8 result
        break;
      case 'resize_pil':
        got = new Resize(size).apply(first(u));
        tol = 1; // Pillow computes in fixed point
        break;
      case 'resize_short':
        got = new Resize(c.size as number).apply(x);
        assert.deepEqual([got.channels, got.height, got.width], c.shape);
        tol = 1e-6;
        break;
      case 'resized_crop':
        got = resizedCrop(x, ...c.box!, ...(c.size as [number, number]), true);
        tol = 1e-6;
        break;
      case 'center_crop':
        got = new CenterCrop(size).apply(x);
        break;
      case 'pad': {
        const [l, t, r, b] = c.pad!;
        got = new RandomCrop([H + t + b, W + l + r], c.pad!, { paddingMode: c.mode! }).apply(x, new Generator(0));
        break;
      }
      case 'brightness':
        got = adjustBrightness(x, c.f!);
        tol = 1e-6;
        break;
      case 'contrast':
        got = adjustContrast(x, c.f!);
        tol = 1e-6;
        break;
      case 'contrast_gray':
        got = adjustContrast(first(x), c.f!);
        tol = 1e-6;
        break;
      case 'saturation':
        got = adjustSaturation(x, c.f!);
        tol = 1e-6;
        break;
      case 'normalize':
        got = new Normalize(c.mean!, c.std!).apply(x);
        break;
      case 'to_float':
        got = new ToFloat().apply(u);
        break;
      default:
        throw new Error(`unknown reference case ${c.kind}`);
    }
    const want = got.data instanceof Uint8Array ? u8(c.y) : f32(c.y);
    assert.equal(got.data.length, want.length, `${name}: size`);
    let worst = 0;
    for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got.data[i]! - want[i]!));
    assert.ok(worst <= tol, `${name}: max difference ${worst} > ${tol}`);
  }
  assert.equal(ref.cases.length, 29);
});

// ---------------------------------------------------------------------------------------------
// DataLoader
// ---------------------------------------------------------------------------------------------

const AUGMENT = (): Compose =>
  new Compose([
    new RandomCrop(6, 2),
    new RandomHorizontalFlip(),
    new ColorJitter({ brightness: 0.3, contrast: 0.3, saturation: 0.3 }),
    new ToFloat(),
    new Normalize([0.5, 0.5, 0.5], [0.25, 0.25, 0.25]),
    new RandomErasing({ p: 0.5 }),
  ]);

test('DataLoader: batch shapes, labels, indices, dropLast, uint8 scaled without a transform', async () => {
  const ds = memDataset(10, 1, 2, 3, 4);
  const loader = new DataLoader(ds, { batchSize: 4 });
  assert.equal(loader.length, 3);
  const batches = await collect(loader);
  assert.deepEqual(batches.map((b) => b.x.shape), [[4, 1, 2, 3], [4, 1, 2, 3], [2, 1, 2, 3]]);
  assert.deepEqual(Array.from(batches[2]!.indices), [8, 9]);
  assert.deepEqual(Array.from(batches[2]!.y), [0, 1]);
  assert.equal(batches[1]!.x.values[6], Math.fround(ds.images[5 * 6]! / 255), 'sample 5 starts batch 1 at element 6');
  const dropped = new DataLoader(ds, { batchSize: 4, dropLast: true });
  assert.equal(dropped.length, 2);
  assert.deepEqual((await collect(dropped)).map((b) => b.indices.length), [4, 4]);
  assert.equal((await collect(new DataLoader(ds, { batchSize: 20, dropLast: true }))).length, 0);
  assert.throws(() => new DataLoader(ds, { batchSize: 0 }), UsageError);
  assert.throws(() => new DataLoader(ds, { workers: -1 }), UsageError);
});

test('DataLoader: shuffling reproducible by seed and epoch; epochs advance; setEpoch replays', async () => {
  const ds = memDataset(50, 3, 8, 8);
  const mk = (seed: number): DataLoader => new DataLoader(ds, { batchSize: 8, shuffle: true, seed, transform: AUGMENT() });
  const a = mk(1);
  const e0 = await collect(a);
  assert.equal(a.epoch, 1);
  const e1 = await collect(a);
  assert.equal(a.epoch, 2);
  const order0 = e0.flatMap((b) => Array.from(b.indices));
  const order1 = e1.flatMap((b) => Array.from(b.indices));
  assert.deepEqual([...order0].sort((x, y) => x - y), Array.from({ length: 50 }, (_, i) => i));
  assert.notDeepEqual(order0, order1, 'each epoch has its own order');
  sameBatches(await collect(mk(1)), e0);
  const b = mk(1);
  b.setEpoch(1);
  sameBatches(await collect(b), e1);
  const other = (await collect(mk(2))).flatMap((x) => Array.from(x.indices));
  assert.notDeepEqual(other, order0);
  assert.deepEqual(Array.from(a.order(0)), order0);
});

test('DataLoader: state()/loadState() resumes mid-epoch exactly', async () => {
  const ds = memDataset(40, 3, 8, 8);
  const opts = { batchSize: 6, shuffle: true, seed: 11, transform: AUGMENT() };
  const ref = new DataLoader(ds, opts);
  ref.setEpoch(3);
  const full = await collect(ref);
  const a = new DataLoader(ds, opts);
  a.setEpoch(3);
  let k = 0;
  for await (const _ of a) if (++k === 2) break;
  const saved = JSON.parse(JSON.stringify(a.state()));
  assert.deepEqual([saved.epoch, saved.position], [3, 2]);
  const b = new DataLoader(ds, opts);
  b.loadState(saved);
  sameBatches(await collect(b), full.slice(2));
  assert.equal(b.epoch, 4);
  assert.throws(() => new DataLoader(ds, { ...opts, batchSize: 5 }).loadState(saved), UsageError);
});

test('DataLoader: workers = 0 and workers = 2 give identical batches (shared, subset and packed datasets)', async () => {
  const ds = memDataset(70, 3, 8, 8);
  const plain: Dataset = {
    length: 33,
    numClasses: 10,
    classes: ds.classes,
    channels: 3,
    height: 8,
    width: 8,
    get: (i: number): Sample => ({ ...ds.get(i * 2), label: i % 10 }),
  };
  for (const d of [ds, new Subset(ds, Array.from({ length: 30 }, (_, i) => 69 - 2 * i)), plain] as Dataset[]) {
    const opts = { batchSize: 7, shuffle: true, seed: 42, transform: AUGMENT() };
    const w0 = new DataLoader(d, { ...opts, workers: 0 });
    const w2 = new DataLoader(d, { ...opts, workers: 2, prefetch: 3 });
    w0.setEpoch(2);
    w2.setEpoch(2);
    sameBatches(await collect(w2), await collect(w0));
  }
});

test('DataLoader: persistent workers are reused across epochs, give the same batches, and close()', async () => {
  const ds = memDataset(45, 3, 8, 8);
  const opts = { batchSize: 8, shuffle: true, seed: 9, transform: AUGMENT() };
  const ref = new DataLoader(ds, opts);
  const want = [await collect(ref), await collect(ref)];
  const p = new DataLoader(ds, { ...opts, workers: 2, persistentWorkers: true });
  const poolOf = (l: DataLoader): unknown => (l as unknown as { pool: unknown }).pool;
  sameBatches(await collect(p), want[0]!);
  const pool = poolOf(p);
  assert.ok(pool !== null);
  sameBatches(await collect(p), want[1]!);
  assert.equal(poolOf(p), pool, 'same threads for the second epoch');
  // An early break leaves the pool up; the loader state says where to continue.
  p.setEpoch(0);
  for await (const _ of p) break;
  assert.equal(poolOf(p), pool);
  sameBatches(await collect(p), want[0]!.slice(1));
  await p.close();
  assert.equal(poolOf(p), null);
  p.setEpoch(1);
  sameBatches(await collect(p), want[1]!); // a new pool after close()
  await p.close();
});

test('DataLoader: ImageFolder (async) with Resize + CenterCrop, workers 0 vs 2', async () => {
  const folder = new ImageFolder(makeImageFolder(), { decode: decodePnm });
  const transform = new Compose([new Resize(4), new CenterCrop(3), new RandomHorizontalFlip(), new ToFloat()]);
  const opts = { batchSize: 3, shuffle: true, seed: 3, transform };
  const a = await collect(new DataLoader(folder, opts));
  assert.deepEqual(a.map((b) => b.x.shape), [[3, 3, 3, 3], [3, 3, 3, 3], [1, 3, 3, 3]]);
  sameBatches(await collect(new DataLoader(folder, { ...opts, workers: 2 })), a);
  // Without a size-unifying transform, mixed sizes in one batch are a clear error.
  await rejectsWith(collect(new DataLoader(folder, { batchSize: 7 })), ShapeError, 'same size');
});

test('DataLoader: errors in workers surface like on the main thread; transforms need spec() for workers', async () => {
  const ds = memDataset(10, 1, 4, 4);
  const bad = new Compose([new ToFloat(), new Normalize([0.5, 0.5, 0.5], [1, 1, 1])]);
  const e0 = await rejectsWith(collect(new DataLoader(ds, { batchSize: 4, transform: bad })), UsageError, '3 mean values');
  const e2 = await rejectsWith(collect(new DataLoader(ds, { batchSize: 4, transform: bad, workers: 2 })), UsageError);
  assert.equal(e2.message, e0.message);
  const custom: Transform = { apply: (im) => im };
  throwsWith(() => new DataLoader(ds, { transform: custom, workers: 1 }), UsageError, 'spec()');
  throwsWith(() => new DataLoader(ds, { transform: new Compose([new ToFloat(), custom]), workers: 1 }), UsageError, 'transform #1');
  assert.equal((await collect(new DataLoader(ds, { transform: custom, batchSize: 5 }))).length, 2);
});

test('DataLoader: custom transforms reach workers through spec().module; a crashing worker is an error, not a hang', async () => {
  const dir = tmpDir('custom');
  const mod = path.join(dir, 'custom.mjs');
  fs.writeFileSync(
    mod,
    `import { isMainThread } from 'node:worker_threads';
export class AddNoise {
  constructor(scale) { this.scale = scale; }
  apply(img, gen) {
    const data = Float32Array.from(img.data, (v) => v / 255 + this.scale * gen.normal());
    return { ...img, data };
  }
  spec() { return { type: 'AddNoise', args: [this.scale], module: import.meta.url }; }
}
export class Crash {
  static fromSpec() { return new Crash(); }
  apply(img) { if (!isMainThread) process.exit(3); return img; }
  spec() { return { type: 'Crash', args: [], module: import.meta.url }; }
}
`,
  );
  const m = (await import(pathToFileURL(mod).href)) as { AddNoise: new (s: number) => Transform; Crash: new () => Transform };
  const ds = memDataset(20, 1, 4, 4);
  const opts = { batchSize: 6, shuffle: true, seed: 4, transform: new m.AddNoise(0.1) };
  sameBatches(await collect(new DataLoader(ds, { ...opts, workers: 2 })), await collect(new DataLoader(ds, opts)));
  await rejectsWith(collect(new DataLoader(ds, { batchSize: 4, transform: new m.Crash(), workers: 2 })), Error, 'exited unexpectedly (code 3)');
  const p = new DataLoader(ds, { batchSize: 4, transform: new m.Crash(), workers: 2, persistentWorkers: true });
  await rejectsWith(collect(p), Error, 'exited unexpectedly');
  await rejectsWith(collect(p), Error, 'exited unexpectedly'); // a fresh pool, crashing again
  await p.close();
});

function runChild(code: string): { status: number | null; signal: string | null; out: string; ms: number } {
  const t = Date.now();
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], { encoding: 'utf8', timeout: 20_000 });
  return { status: r.status, signal: r.signal, out: `${r.stdout}${r.stderr}`, ms: Date.now() - t };
}

test('DataLoader: breaking out early (or abandoning the iterator) with workers lets the process exit', () => {
  const setup = `
    import * as D from ${JSON.stringify(DATA_INDEX)};
    const n = 2000, images = new Uint8Array(n * 3 * 16 * 16);
    const ds = new D.InMemoryDataset({ images, labels: Array.from({ length: n }, (_, i) => i % 10), channels: 3, height: 16, width: 16, classes: Array.from({ length: 10 }, String) });
    const loader = new D.DataLoader(ds, { batchSize: 16, shuffle: true, workers: 2, transform: new D.Compose([new D.RandomCrop(16, 2), new D.ToFloat()]) });
  `;
  const broke = runChild(`${setup}
    let k = 0;
    for await (const b of loader) { if (++k === 3) break; }
    console.log('done', k, loader.position);
  `);
  assert.equal(broke.signal, null, `killed after ${broke.ms} ms (hung?): ${broke.out}`);
  assert.equal(broke.status, 0, broke.out);
  assert.match(broke.out, /done 3 3/);
  const abandoned = runChild(`${setup}
    const it = loader[Symbol.asyncIterator]();
    const first = await it.next();
    console.log('got', first.value.x.shape.join('x'));
  `);
  assert.equal(abandoned.signal, null, `killed after ${abandoned.ms} ms (hung?): ${abandoned.out}`);
  assert.equal(abandoned.status, 0, abandoned.out);
  assert.match(abandoned.out, /got 16x3x16x16/);
  const persistent = runChild(`${setup}
    const p = new D.DataLoader(ds, { batchSize: 64, workers: 2, persistentWorkers: true });
    let k = 0;
    for await (const b of p) k++;
    for await (const b of p) { k++; break; }
    console.log('persistent', k);
  `);
  assert.equal(persistent.signal, null, `killed after ${persistent.ms} ms (hung?): ${persistent.out}`);
  assert.equal(persistent.status, 0, persistent.out);
  assert.match(persistent.out, /persistent 33/);
});

test(
  'DataLoader on the real Fashion-MNIST: workers 0 vs 2 agree on the first batches',
  { skip: haveRealFashion ? false : `${FASHION_MNIST_SYSTEM_DIR} not installed` },
  async () => {
    const ds = await loadFashionMnist({ split: 'test', env: {}, cacheDir: tmpDir('nc'), download: false });
    const transform = new Compose([new RandomCrop(28, 4), new RandomHorizontalFlip(), new ToFloat(), new Normalize(FASHION_MNIST_MEAN, FASHION_MNIST_STD)]);
    const take = async (workers: number): Promise<Batch[]> => {
      const out: Batch[] = [];
      for await (const b of new DataLoader(ds, { batchSize: 128, shuffle: true, seed: 7, transform, workers })) {
        out.push(b);
        if (out.length === 6) break;
      }
      return out;
    };
    const a = await take(0);
    sameBatches(await take(2), a);
    assert.deepEqual(a[0]!.x.shape, [128, 1, 28, 28]);
  },
);
