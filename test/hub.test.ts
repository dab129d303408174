/**
 * Downloads and caches (src/hub/) against a small HTTP server on 127.0.0.1 (random port) that
 * behaves like the Hugging Face Hub (HEAD with X-Repo-Commit / ETag / X-Linked-Etag, LFS files
 * redirected to a "CDN" path, 404s with X-Error-Code) and like download.pytorch.org. The server
 * counts requests, can break a body off mid-way, and is closed when the tests end.
 *
 * Also: torchvision's weights metadata against torchvision itself (fixture dumped by
 * scripts/golden/gen_preprocess.py --hub-data), the ImageNet class list, cache folder rules, and
 * reading a cache laid out by Python's huggingface_hub.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ResNet } from '../src/models/resnet.js';
import { manualSeed } from '../src/tensor/rng.js';
import { saveHfFolder } from '../src/io/checkpoint.js';
import { serializeSafetensors } from '../src/io/safetensors.js';
import { tensorToRaw, writeStateDict } from '../src/io/state.js';
import { createModel } from '../src/models/registry.js';
import {
  DownloadProgress,
  HubError,
  IMAGENET_CLASSES,
  TORCHVISION_WEIGHTS,
  classify,
  downloadTorchvisionWeights,
  getTorchvisionWeights,
  hashPrefixOf,
  hfFile,
  hfHubCacheDir,
  hfModelSnapshot,
  isOffline,
  loadPretrained,
  repoFolderName,
  torchHubCheckpointsDir,
  torchHubDownload,
} from '../src/hub/index.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const CLI = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');
const IMAGES = path.join(ROOT, 'test', 'fixtures', 'images');
const COMMIT = 'a'.repeat(8) + '0123456789abcdef0123456789abcdef';

// ---------------------------------------------------------------------------------------------
// The fake hub
// ---------------------------------------------------------------------------------------------

interface RepoFile {
  body: Buffer;
  /** Serve like an LFS file: X-Linked-Etag = sha256, HEAD redirects to /cdn/<sha256>. */
  lfs?: boolean;
}

const repos = new Map<string, Map<string, RepoFile>>();
const torchFiles = new Map<string, Buffer>();
/** CDN paths whose body is cut off after half (Content-Length promises all of it). */
const breakOff = new Set<string>();
const requests: string[] = [];
let server: http.Server;
let base = '';
let tmp = '';

function gitBlobSha(b: Buffer): string {
  return crypto.createHash('sha1').update(`blob ${b.length}\0`).update(b).digest('hex');
}
const sha256 = (b: Buffer): string => crypto.createHash('sha256').update(b).digest('hex');

function handle(req: http.IncomingMessage, res: http.ServerResponse): void {
  const method = req.method ?? 'GET';
  const url = new URL(req.url ?? '/', base);
  requests.push(`${method} ${url.pathname}`);
  const send = (status: number, headers: Record<string, string | number>, body?: Buffer): void => {
    res.writeHead(status, headers);
    res.end(method === 'HEAD' ? undefined : body);
  };
  let m = /^\/cdn\/([0-9a-f]{64})$/.exec(url.pathname);
  if (m) {
    for (const files of repos.values()) {
      for (const f of files.values()) {
        if (sha256(f.body) !== m[1]) continue;
        if (breakOff.has(m[1]!) && method === 'GET') {
          res.writeHead(200, { 'Content-Length': f.body.length });
          res.write(f.body.subarray(0, f.body.length >> 1), () => res.destroy());
          return;
        }
        return send(200, { 'Content-Length': f.body.length }, f.body);
      }
    }
    return send(404, {});
  }
  m = /^\/models\/([^/]+)$/.exec(url.pathname);
  if (m) {
    const b = torchFiles.get(m[1]!);
    return b ? send(200, { 'Content-Length': b.length }, b) : send(404, { 'Content-Length': 9 }, Buffer.from('not found'));
  }
  m = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname);
  if (!m) return send(404, {});
  const [, repo, , file] = m;
  const files = repos.get(repo!);
  if (!files) return send(404, { 'X-Error-Code': 'RepositoryNotFound' });
  const f = files.get(file!);
  if (!f) return send(404, { 'X-Error-Code': 'EntryNotFound', 'X-Repo-Commit': COMMIT });
  if (f.lfs) {
    const sha = sha256(f.body);
    return send(302, { Location: `${base}/cdn/${sha}`, 'X-Repo-Commit': COMMIT, 'X-Linked-Etag': `"${sha}"`, 'X-Linked-Size': f.body.length, ETag: `"${gitBlobSha(f.body)}"` });
  }
  return send(200, { 'Content-Length': f.body.length, 'X-Repo-Commit': COMMIT, ETag: `"${gitBlobSha(f.body)}"` }, f.body);
}

function tinyModel(numClasses: number): ResNet {
  manualSeed(7);
  return new ResNet('basic', [1, 1, 1, 1], { widths: [4, 8, 8, 8], stemWidth: 4, numClasses });
}

const PREPROCESSOR = Buffer.from(
  JSON.stringify({ crop_pct: 0.875, do_normalize: true, do_resize: true, feature_extractor_type: 'ConvNextFeatureExtractor', image_mean: [0.485, 0.456, 0.406], image_std: [0.229, 0.224, 0.225], resample: 3, size: 224 }),
);

before(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'resnet-hub-'));
  const folder = path.join(tmp, 'src-model');
  saveHfFolder(folder, tinyModel(3), ['cat', 'dog', 'bird']);
  const config = fs.readFileSync(path.join(folder, 'config.json'));
  const weights = fs.readFileSync(path.join(folder, 'model.safetensors'));
  repos.set('acme/tiny-resnet', new Map([
    ['config.json', { body: config }],
    ['model.safetensors', { body: weights, lfs: true }],
    ['preprocessor_config.json', { body: PREPROCESSOR }],
  ]));
  // No preprocessor config; weights body breaks off.
  repos.set('acme/broken', new Map([
    ['config.json', { body: config }],
    ['model.safetensors', { body: Buffer.concat([weights, Buffer.from('x')]), lfs: true }],
  ]));
  breakOff.add(sha256(Buffer.concat([weights, Buffer.from('x')])));
  repos.set('acme/no-weights', new Map([['config.json', { body: config }]]));
  // torchvision-style files: one whose name promises its hash, one that lies.
  const sd = Buffer.from(serializeSafetensors(new Map([...tinyModel(5).stateDict()].map(([k, t]) => [k, tensorToRaw(t)]))));
  const good = `tiny-${sha256(sd).slice(0, 8)}.pth`;
  torchFiles.set(good, sd);
  torchFiles.set('tiny-deadbeef.pth', sd);
  torchFiles.set('resnet18-f37072fd.pth', sd);
  server = http.createServer(handle);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(async () => {
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  fs.rmSync(tmp, { recursive: true, force: true });
});

function freshEnv(extra: Record<string, string> = {}): Record<string, string> {
  const home = fs.mkdtempSync(path.join(tmp, 'home-'));
  return { HF_HOME: path.join(home, 'hf'), TORCH_HOME: path.join(home, 'torch'), HF_ENDPOINT: base, ...extra };
}

/** A loopback port nothing listens on (bound, then closed). */
async function deadPort(): Promise<number> {
  const s = http.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

function countSince(start: number, method?: string): number {
  return requests.slice(start).filter((r) => method === undefined || r.startsWith(`${method} `)).length;
}

function filesUnder(dir: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return (fs.readdirSync(dir, { recursive: true }) as string[]).map((p) => p.split(path.sep).join('/')).sort();
}

// ---------------------------------------------------------------------------------------------
// Hugging Face
// ---------------------------------------------------------------------------------------------

test('an HF repo downloads into the standard cache layout and loads', async () => {
  const env = freshEnv();
  const start = requests.length;
  const m = await loadPretrained('acme/tiny-resnet', { env });
  const storage = path.join(env.HF_HOME!, 'hub', repoFolderName('acme/tiny-resnet'));
  assert.equal(storage, path.join(hfHubCacheDir(env), 'models--acme--tiny-resnet'));
  assert.equal(fs.readFileSync(path.join(storage, 'refs', 'main'), 'utf8'), COMMIT);
  const snap = path.join(storage, 'snapshots', COMMIT);
  assert.equal(m.path, snap);
  assert.equal(m.source, `acme/tiny-resnet@${COMMIT}`);
  for (const f of ['config.json', 'model.safetensors', 'preprocessor_config.json']) {
    const p = path.join(snap, f);
    assert.ok(fs.lstatSync(p).isSymbolicLink(), `${f} is a symlink`);
    const target = fs.readlinkSync(p);
    assert.ok(target.startsWith(`..${path.sep}..${path.sep}blobs${path.sep}`), `${f} -> ${target} is relative`);
    assert.deepEqual(fs.readFileSync(p), repos.get('acme/tiny-resnet')!.get(f)!.body);
  }
  const files = repos.get('acme/tiny-resnet')!;
  const blobs = filesUnder(path.join(storage, 'blobs'));
  assert.deepEqual(blobs, [gitBlobSha(files.get('config.json')!.body), gitBlobSha(PREPROCESSOR), sha256(files.get('model.safetensors')!.body)].sort());
  assert.deepEqual(m.labels, ['cat', 'dog', 'bird']);
  assert.equal(m.preprocess.kind, 'hf-convnext');
  assert.equal(m.model.fc.outFeatures, 3);
  // 3 HEADs, 3 GETs (the LFS file from the CDN path).
  assert.equal(countSince(start, 'HEAD'), 3);
  assert.equal(countSince(start, 'GET'), 3);
  assert.ok(requests.slice(start).includes(`GET /cdn/${sha256(files.get('model.safetensors')!.body)}`));
  const top = await classify(m, path.join(IMAGES, 'chelsea.png'), { top: 3 });
  assert.equal(top.length, 3);
  assert.ok(Math.abs(top.reduce((s, p) => s + p.probability, 0) - 1) < 1e-9);

  // Second call: one HEAD (config.json at main), everything else from the cache, pinned to the commit.
  const again = requests.length;
  const m2 = await loadPretrained('acme/tiny-resnet', { env });
  assert.equal(m2.path, snap);
  assert.deepEqual(requests.slice(again), ['HEAD /acme/tiny-resnet/resolve/main/config.json']);

  // Offline with the cache: no request at all.
  const off = requests.length;
  const m3 = await loadPretrained('acme/tiny-resnet', { env: { ...env, HF_HUB_OFFLINE: '1' } });
  assert.equal(m3.path, snap);
  assert.equal(countSince(off), 0);
  assert.deepEqual(await classify(m3, path.join(IMAGES, 'chelsea.png'), { top: 3 }), top);

  // An unreachable server falls back to the cache, as huggingface_hub does.
  const m4 = await loadPretrained('acme/tiny-resnet', { env: { ...env, HF_ENDPOINT: `http://127.0.0.1:${await deadPort()}` } });
  assert.equal(m4.path, snap);
  assert.equal(m4.preprocess.kind === 'hf-convnext' && m4.preprocess.shortestEdge, 224);
});

test('HF_HUB_OFFLINE without a cache: a clear error naming what is missing, and no request', async () => {
  const env = freshEnv({ HF_HUB_OFFLINE: '1' });
  assert.ok(isOffline(env));
  const start = requests.length;
  await assert.rejects(loadPretrained('acme/tiny-resnet', { env }), (e: unknown) => {
    assert.ok(e instanceof HubError);
    assert.match(e.message, /HF_HUB_OFFLINE is set .*acme\/tiny-resnet .*not in the cache: .*models--acme--tiny-resnet does not exist/);
    return true;
  });
  assert.equal(countSince(start), 0, 'no request');
  // A partial cache: config.json only.
  const online = freshEnv();
  await hfFile('acme/tiny-resnet', 'config.json', { env: online });
  const off = requests.length;
  await assert.rejects(loadPretrained('acme/tiny-resnet', { env: { ...online, HF_HUB_OFFLINE: 'true' } }), /not fully cached in .*snapshots.*: missing model\.safetensors or pytorch_model\.bin/);
  assert.equal(countSince(off), 0, 'no request');
});

test('404s: unknown repo, missing weights; optional files are remembered in .no_exist', async () => {
  const env = freshEnv();
  await assert.rejects(loadPretrained('acme/nope', { env }), (e: unknown) => {
    assert.ok(e instanceof HubError);
    assert.match(e.message, /^repository acme\/nope was not found at http:\/\/127\.0\.0\.1:\d+ \(if it is private or gated, set HF_TOKEN\); no local file or folder "acme\/nope" exists either$/);
    return true;
  });
  await assert.rejects(hfModelSnapshot('acme/no-weights', { env }), /acme\/no-weights has no weights \(looked for model\.safetensors, pytorch_model\.bin/);
  const storage = path.join(hfHubCacheDir(env), repoFolderName('acme/no-weights'));
  assert.ok(fs.existsSync(path.join(storage, '.no_exist', COMMIT, 'model.safetensors')));
  // Known-missing files are not asked for again at a pinned commit.
  const start = requests.length;
  const r = await hfFile('acme/no-weights', 'model.safetensors', { env, revision: COMMIT });
  assert.equal(r.path, null);
  assert.equal(countSince(start), 0);
  // Not an org/name id and not a path.
  await assert.rejects(loadPretrained('not a model', { env }), /is not a local file or folder, nor a Hugging Face repo id/);
  await assert.rejects(loadPretrained('resnet50', { env }), /resnet50 needs weights/);
});

test('a body that breaks off mid-way is an error and leaves no file in the cache', async () => {
  const env = freshEnv();
  await assert.rejects(loadPretrained('acme/broken', { env }), (e: unknown) => {
    assert.ok(e instanceof HubError, String(e));
    assert.match(e.message, /acme\/broken\/model\.safetensors: (the download broke off|the connection closed) after \d+ (of \d+ )?bytes/);
    assert.ok(!e.message.includes('\n'));
    return true;
  });
  const storage = path.join(hfHubCacheDir(env), repoFolderName('acme/broken'));
  const left = filesUnder(storage);
  assert.ok(!left.some((f) => f.includes('model.safetensors')), `no weights pointer: ${left.join(', ')}`);
  assert.ok(!left.some((f) => f.endsWith('.incomplete')), `no temporary file: ${left.join(', ')}`);
  const blobs = filesUnder(path.join(storage, 'blobs'));
  assert.equal(blobs.length, 1, `only config.json's blob: ${blobs.join(', ')}`);
});

test('a cache laid out by Python huggingface_hub is read offline', async () => {
  // What huggingface_hub writes: refs/main, blobs/<etag>, snapshots/<commit>/<file> -> ../../blobs/<etag>,
  // and .no_exist/<commit>/<file> for files it found missing.
  const cache = path.join(tmp, 'py-cache');
  const storage = path.join(cache, 'models--microsoft--resnet-50');
  const commit = 'f'.repeat(40);
  const files = repos.get('acme/tiny-resnet')!;
  fs.mkdirSync(path.join(storage, 'refs'), { recursive: true });
  fs.writeFileSync(path.join(storage, 'refs', 'main'), commit);
  fs.mkdirSync(path.join(storage, 'blobs'));
  fs.mkdirSync(path.join(storage, 'snapshots', commit), { recursive: true });
  for (const f of ['config.json', 'model.safetensors']) {
    const body = files.get(f)!.body;
    const etag = f === 'model.safetensors' ? sha256(body) : gitBlobSha(body);
    fs.writeFileSync(path.join(storage, 'blobs', etag), body);
    fs.symlinkSync(path.join('..', '..', 'blobs', etag), path.join(storage, 'snapshots', commit, f));
  }
  fs.mkdirSync(path.join(storage, '.no_exist', commit), { recursive: true });
  fs.writeFileSync(path.join(storage, '.no_exist', commit, 'preprocessor_config.json'), '');
  const start = requests.length;
  const m = await loadPretrained('microsoft/resnet-50', { env: { HF_HUB_CACHE: cache, HF_HUB_OFFLINE: '1', HF_ENDPOINT: base } });
  assert.equal(countSince(start), 0);
  assert.equal(m.path, path.join(storage, 'snapshots', commit));
  // No preprocessor config in the repo: ConvNextImageProcessor's defaults.
  assert.equal(m.preprocess.kind, 'hf-convnext');
  assert.equal(m.preprocess.kind === 'hf-convnext' && m.preprocess.shortestEdge, 384);
  assert.ok(m.notes.some((n) => /no preprocessor_config\.json/.test(n)));
});

test('cache folders follow the HF and torch conventions', () => {
  const home = os.homedir();
  assert.equal(hfHubCacheDir({}), path.join(home, '.cache', 'huggingface', 'hub'));
  assert.equal(hfHubCacheDir({ XDG_CACHE_HOME: '/x' }), path.join('/x', 'huggingface', 'hub'));
  assert.equal(hfHubCacheDir({ HF_HOME: '/h' }), path.join('/h', 'hub'));
  assert.equal(hfHubCacheDir({ HF_HOME: '/h', HF_HUB_CACHE: '/c' }), path.resolve('/c'));
  assert.equal(torchHubCheckpointsDir({}), path.join(home, '.cache', 'torch', 'hub', 'checkpoints'));
  assert.equal(torchHubCheckpointsDir({ TORCH_HOME: '/t' }), path.join('/t', 'hub', 'checkpoints'));
  assert.equal(torchHubCheckpointsDir({ XDG_CACHE_HOME: '/x' }), path.join('/x', 'torch', 'hub', 'checkpoints'));
  for (const v of ['1', 'true', 'ON', 'yes']) assert.ok(isOffline({ HF_HUB_OFFLINE: v }), v);
  for (const v of ['0', '', 'false']) assert.ok(!isOffline({ HF_HUB_OFFLINE: v }), v);
  assert.equal(repoFolderName('microsoft/resnet-50'), 'models--microsoft--resnet-50');
});

// ---------------------------------------------------------------------------------------------
// torch hub / torchvision
// ---------------------------------------------------------------------------------------------

test('torch hub downloads: hash prefix checked, mismatch removes the file, cache reused', async () => {
  const env = freshEnv();
  const dir = torchHubCheckpointsDir(env);
  const good = [...torchFiles.keys()].find((k) => k.startsWith('tiny-') && k !== 'tiny-deadbeef.pth')!;
  const start = requests.length;
  const file = await torchHubDownload(`${base}/models/${good}`, { env });
  assert.equal(file, path.join(dir, good));
  assert.deepEqual(fs.readFileSync(file), torchFiles.get(good));
  assert.equal(await torchHubDownload(`${base}/models/${good}`, { env }), file);
  assert.equal(countSince(start), 1, 'the second call uses the cached file');

  await assert.rejects(torchHubDownload(`${base}/models/tiny-deadbeef.pth`, { env }), (e: unknown) => {
    assert.ok(e instanceof HubError);
    assert.match(e.message, /tiny-deadbeef\.pth: invalid hash value \(the file name promises SHA-256 deadbeef\.\.\., got [0-9a-f]{16}\.\.\.\); the download was discarded/);
    return true;
  });
  assert.deepEqual(filesUnder(dir), [good], 'nothing left from the failed download');

  // torchvision's own entries: the file name's hash is checked (this server's file is not the real one).
  const w = getTorchvisionWeights('resnet18', 'IMAGENET1K_V1');
  await assert.rejects(downloadTorchvisionWeights(w, { env, baseUrl: `${base}/models` }), /resnet18-f37072fd\.pth: invalid hash value/);
  assert.ok(!fs.existsSync(path.join(dir, w.fileName)));
  await assert.rejects(torchHubDownload(`${base}/models/missing-12345678.pth`, { env }), /missing-12345678\.pth: not found \(HTTP 404\)/);
  await assert.rejects(downloadTorchvisionWeights(w, { env: { ...env, HF_HUB_OFFLINE: '1' } }), /HF_HUB_OFFLINE is set .*resnet18-f37072fd\.pth is not in the torch hub cache/);
  // A connection refused is a HubError too.
  const port = await deadPort();
  await assert.rejects(torchHubDownload(`http://127.0.0.1:${port}/x-12345678.pth`, { env }), /cannot reach 127\.0\.0\.1:\d+ \(ECONNREFUSED\)/);
});

test("torchvision weights from the torch hub cache: strict load, the weights' preset, ImageNet labels", async () => {
  // The real files are not reachable offline: a random resnet18 saved under the real name stands
  // in (the file is recognised by its bytes, so safetensors works as well as a torch.save .pth).
  const env = { ...freshEnv(), HF_HUB_OFFLINE: '1' };
  const dir = torchHubCheckpointsDir(env);
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, 'resnet18-f37072fd.pth');
  fs.copyFileSync(path.join(tmp, 'src-model', 'model.safetensors'), file);
  await assert.rejects(loadPretrained('resnet18', { weights: 'IMAGENET1K_V1', env }), /does not fit resnet18/);
  manualSeed(11);
  writeStateDict(file, createModel('resnet18'));
  const m = await loadPretrained('resnet18', { weights: 'DEFAULT', env });
  assert.equal(m.kind, 'torchvision');
  assert.equal(m.path, file);
  assert.equal(m.source, 'torchvision resnet18 IMAGENET1K_V1');
  assert.deepEqual(m.preprocess, getTorchvisionWeights('resnet18', 'IMAGENET1K_V1').preprocess);
  assert.equal(m.labels.length, 1000);
  assert.equal(m.labels[0], 'tench');
  const top = await classify(m, path.join(IMAGES, 'rocket.jpg'), { top: 2 });
  assert.equal(top[0]!.label, IMAGENET_CLASSES[top[0]!.index]);
  // The same file given as a path: recognised by its torchvision name.
  const byPath = await loadPretrained(file, { env });
  assert.equal(byPath.kind, 'torchvision');
  assert.equal(byPath.arch, 'resnet18');
  // And from the command line.
  const r = await run(['classify', path.join(IMAGES, 'rocket.jpg'), '--arch', 'resnet18', '--weights', 'IMAGENET1K_V1', '--top', '2', '--json'], env);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stderr, '');
  const out = JSON.parse(r.stdout) as { predictions: { label: string; index: number; probability: number }[] }[];
  assert.deepEqual(out[0]!.predictions.map((p) => [p.label, p.index]), top.map((p) => [p.label, p.index]));
});

test('torchvision weights metadata equals torchvision 0.14\'s enums', () => {
  const tv = JSON.parse(fs.readFileSync(path.join(IMAGES, 'torchvision_weights.json'), 'utf8')) as Record<
    string,
    { default: string; weights: Record<string, { url: string; num_params: number; acc1: number; acc5: number; resize: number; crop: number; interpolation: string; mean: number[]; std: number[]; categories: number }> }
  >;
  let n = 0;
  for (const [arch, e] of Object.entries(tv)) {
    for (const [name, w] of Object.entries(e.weights)) {
      const ours = getTorchvisionWeights(arch, name);
      n++;
      assert.equal(ours.url, w.url);
      assert.equal(ours.numParams, w.num_params);
      assert.equal(ours.acc1, w.acc1);
      assert.equal(ours.acc5, w.acc5);
      assert.equal(ours.preprocess.resizeSize, w.resize);
      assert.equal(ours.preprocess.cropSize, w.crop);
      assert.equal(ours.preprocess.interpolation, w.interpolation);
      assert.deepEqual([...ours.preprocess.mean], w.mean);
      assert.deepEqual([...ours.preprocess.std], w.std);
      assert.equal(ours.numClasses, w.categories);
      assert.equal(ours.hashPrefix, /-([0-9a-f]+)\.pth$/.exec(w.url)![1]);
    }
    assert.equal(getTorchvisionWeights(arch, 'DEFAULT').name, e.default, `${arch} DEFAULT`);
  }
  assert.equal(n, TORCHVISION_WEIGHTS.length);
  assert.equal(getTorchvisionWeights('resnet50', 'ResNet50_Weights.imagenet1k_v1').url, 'https://download.pytorch.org/models/resnet50-0676ba61.pth');
  assert.equal(getTorchvisionWeights('resnet50', 'IMAGENET1K_V2').url, 'https://download.pytorch.org/models/resnet50-11ad3fa6.pth');
  assert.throws(() => getTorchvisionWeights('resnet18', 'IMAGENET1K_V2'), /resnet18 has no weights "IMAGENET1K_V2" \(choose IMAGENET1K_V1 or DEFAULT\)/);
  assert.throws(() => getTorchvisionWeights('resnet20', 'DEFAULT'), /torchvision has no pretrained weights for "resnet20"/);
  assert.equal(hashPrefixOf('resnet50-0676ba61.pth'), '0676ba61');
  assert.equal(hashPrefixOf('resnext50_32x4d-7cdf4587.pth'), '7cdf4587');
  assert.equal(hashPrefixOf('model.pth'), undefined);
  assert.equal(IMAGENET_CLASSES.length, 1000);
  assert.equal(IMAGENET_CLASSES[0], 'tench');
  assert.equal(IMAGENET_CLASSES[281], 'tabby');
  assert.equal(IMAGENET_CLASSES[999], 'toilet tissue');
});

test('progress: redrawn on a terminal, one line otherwise', () => {
  const out: string[] = [];
  const tty = { isTTY: true, write: (s: string) => out.push(s) };
  const p = new DownloadProgress('downloading x', 1_000_000, tty);
  p.update(500_000);
  p.finish();
  assert.match(out[0]!, /^\r\x1b\[2Kdownloading x #{10}\.{10}  50% 500 kB\/1.00 MB .*\/s ETA/);
  assert.match(out.at(-1)!, /^\r\x1b\[2Kdownloading x: 500 kB in .* \(.*\/s\)\n$/);
  const lines: string[] = [];
  const q = new DownloadProgress('downloading y', 10, { write: (s: string) => lines.push(s) });
  q.update(5);
  q.update(10);
  q.finish();
  assert.equal(lines.length, 1);
  assert.match(lines[0]!, /^downloading y: 10 B in .*\n$/);
});

// ---------------------------------------------------------------------------------------------
// The command line against the fake hub
// ---------------------------------------------------------------------------------------------

function run(args: string[], env: Record<string, string>): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

test('resnet classify --model org/name downloads once (one progress line per file when not a terminal)', async () => {
  const env = freshEnv();
  const img = path.join(IMAGES, 'coffee.jpg');
  const r = await run(['classify', img, '--model', 'acme/tiny-resnet', '--json'], env);
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stderr.split('\n').filter(Boolean);
  assert.equal(lines.length, 3, r.stderr);
  for (const l of lines) assert.match(l, /^downloading acme\/tiny-resnet\/(config\.json|model\.safetensors|preprocessor_config\.json): .* in .*\(.*\/s\)$/);
  const out = JSON.parse(r.stdout) as { image: string; predictions: { label: string }[] }[];
  assert.equal(out[0]!.image, img);
  assert.deepEqual(out[0]!.predictions.map((p) => p.label).sort(), ['bird', 'cat', 'dog']);
  const again = await run(['classify', img, '--model', 'acme/tiny-resnet', '--json'], { ...env, HF_HUB_OFFLINE: '1' });
  assert.equal(again.code, 0, again.stderr);
  assert.equal(again.stderr, '');
  assert.equal(again.stdout, r.stdout);
  const missing = await run(['classify', img, '--model', 'acme/nope'], env);
  assert.equal(missing.code, 1);
  assert.match(missing.stderr, /^resnet: error: repository acme\/nope was not found at http:\/\/127\.0\.0\.1:\d+ .*; no local file or folder "acme\/nope" exists either\n$/);
});
