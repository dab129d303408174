/**
 * `resnet classify` / `resnet embed` and the library calls behind them, on a tiny ResNet saved
 * as a Hugging Face folder (saveHfFolder + a preprocessor_config.json) in a temp dir. Runs the
 * compiled CLI as a child process, offline (HF_HUB_OFFLINE=1), and checks the output against
 * loadPretrained / classify / embed called directly, and the error contract (one
 * `resnet: error:` line, exit 2 for usage errors, 1 for bad files).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ResNet } from '../src/models/resnet.js';
import { manualSeed } from '../src/tensor/rng.js';
import { saveHfFolder } from '../src/io/checkpoint.js';
import { readNpy } from '../src/io/npy.js';
import { writeStateDict } from '../src/io/state.js';
import { classify, classifyBatch, embed, loadPretrained, type Prediction } from '../src/hub/index.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const CLI = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');
const IMAGES = path.join(ROOT, 'test', 'fixtures', 'images');
const LABELS = ['cat', 'dog', 'bird'];

let tmp = '';
let model = '';
let photos = '';

before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'resnet-classify-'));
  model = path.join(tmp, 'tiny-hf');
  manualSeed(3);
  const net = new ResNet('basic', [1, 1, 1, 1], { widths: [4, 8, 8, 8], stemWidth: 4, numClasses: 3 });
  saveHfFolder(model, net, LABELS);
  fs.writeFileSync(
    path.join(model, 'preprocessor_config.json'),
    JSON.stringify({ crop_pct: 0.875, do_normalize: true, do_resize: true, feature_extractor_type: 'ConvNextFeatureExtractor', image_mean: [0.485, 0.456, 0.406], image_std: [0.229, 0.224, 0.225], resample: 3, size: 224 }),
  );
  photos = path.join(tmp, 'photos');
  fs.mkdirSync(path.join(photos, 'more'), { recursive: true });
  fs.copyFileSync(path.join(IMAGES, 'rocket.jpg'), path.join(photos, 'b-rocket.jpg'));
  fs.copyFileSync(path.join(IMAGES, 'chelsea.png'), path.join(photos, 'a-chelsea.png'));
  fs.copyFileSync(path.join(IMAGES, 'exif_rot6.jpg'), path.join(photos, 'more', 'c-rot.jpg'));
  fs.writeFileSync(path.join(photos, 'notes.txt'), 'not an image');
});

after(() => fs.rmSync(tmp, { recursive: true, force: true }));

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

function resnet(...args: string[]): Result {
  const r = spawnSync(process.execPath, [CLI, ...args], {
    cwd: ROOT,
    encoding: 'utf8',
    timeout: 120_000,
    env: { ...process.env, HF_HUB_OFFLINE: '1', HF_HOME: path.join(tmp, 'hf-home'), TORCH_HOME: path.join(tmp, 'torch-home') },
  });
  if (r.error) throw r.error;
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function ok(r: Result): string {
  assert.equal(r.code, 0, `expected success, got exit ${r.code}; stderr:\n${r.stderr}`);
  assert.equal(r.stderr, '');
  return r.stdout;
}

function fails(r: Result, code: 1 | 2, pattern: RegExp): void {
  const where = `stderr:\n${r.stderr}`;
  assert.equal(r.code, code, `expected exit ${code}, got ${r.code}; ${where}`);
  assert.equal(r.stdout, '');
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  assert.ok(lines[0]!.startsWith('resnet: error: '), where);
  assert.equal(lines.length, code === 2 ? 2 : 1, where);
  if (code === 2) assert.match(lines[1]!, /^run 'resnet \w+ --help' for usage$/);
  assert.ok(!/internal error|^\s+at /m.test(r.stderr), `no stack trace; ${where}`);
  assert.match(lines[0]!, pattern);
}

type Json = { image: string; predictions: Prediction[] }[];

test('classify --json: structure, probabilities sum to 1, equal to the library call', async () => {
  const img = path.join(IMAGES, 'chelsea.png');
  const out = JSON.parse(ok(resnet('classify', img, '--model', model, '--json', '--top', '3'))) as Json;
  assert.equal(out.length, 1);
  assert.equal(out[0]!.image, img);
  const preds = out[0]!.predictions;
  assert.equal(preds.length, 3);
  assert.deepEqual(preds.map((p) => p.label).sort(), [...LABELS].sort());
  for (const p of preds) {
    assert.deepEqual(Object.keys(p).sort(), ['index', 'label', 'probability']);
    assert.equal(p.label, LABELS[p.index]);
    assert.ok(p.probability > 0 && p.probability < 1);
  }
  assert.ok(Math.abs(preds.reduce((s, p) => s + p.probability, 0) - 1) < 1e-9);
  for (let i = 1; i < preds.length; i++) assert.ok(preds[i - 1]!.probability >= preds[i]!.probability, 'most probable first');
  const m = await loadPretrained(model);
  assert.deepEqual(m.labels, LABELS);
  assert.equal(m.preprocess.kind, 'hf-convnext');
  const direct = await classify(m, img, { top: 3 });
  assert.deepEqual(preds, JSON.parse(JSON.stringify(direct)));
  // The default top is 5, capped at the number of classes; a buffer classifies like its file.
  assert.equal((JSON.parse(ok(resnet('classify', img, '--model', model, '--json'))) as Json)[0]!.predictions.length, 3);
  assert.deepEqual(await classify(m, new Uint8Array(fs.readFileSync(img)), { top: 3 }), direct);
  const top1 = JSON.parse(ok(resnet('classify', img, '--model', model, '--json', '--top', '1'))) as Json;
  assert.deepEqual(top1[0]!.predictions, [preds[0]]);
});

test('classify: folders expand sorted, batches do not change results, text output', async () => {
  const out = JSON.parse(ok(resnet('classify', photos, '--model', model, '--json', '--batch', '2'))) as Json;
  assert.deepEqual(
    out.map((r) => path.relative(photos, r.image)),
    ['a-chelsea.png', 'b-rocket.jpg', path.join('more', 'c-rot.jpg')],
  );
  const one = JSON.parse(ok(resnet('classify', photos, '--model', model, '--json', '--batch', '1'))) as Json;
  for (let i = 0; i < out.length; i++) {
    out[i]!.predictions.forEach((p, j) => {
      const q = one[i]!.predictions[j]!;
      assert.equal(p.index, q.index);
      assert.ok(Math.abs(p.probability - q.probability) < 1e-6, 'batching changes nothing but rounding');
    });
  }
  const m = await loadPretrained(model);
  const lib = await classifyBatch(m, out.map((r) => r.image), { top: 5 });
  lib.forEach((preds, i) => preds.forEach((p, j) => assert.ok(Math.abs(p.probability - out[i]!.predictions[j]!.probability) < 1e-6)));
  const text = ok(resnet('classify', path.join(IMAGES, 'coffee.jpg'), '--model', model, '--top', '2'));
  const lines = text.trimEnd().split('\n');
  assert.match(lines[0]!, /^# .*tiny-hf; transformers ConvNextImageProcessor: resize 256 bicubic, crop 224, ImageNet mean\/std$/);
  assert.equal(lines[1], path.join(IMAGES, 'coffee.jpg'));
  assert.equal(lines.length, 4);
  for (const l of lines.slice(2)) assert.match(l, /^ +\d+\.\d\d% {2}(cat|dog|bird) \([012]\)$/);
});

test('embed: pooled [N, C] and stage maps [N, C, H, W], equal to the library call', async () => {
  const out = path.join(tmp, 'feats.npy');
  const text = ok(resnet('embed', path.join(IMAGES, 'chelsea.png'), path.join(IMAGES, 'rocket.jpg'), '--model', model, '--output', out));
  assert.match(text, /feats\.npy: \[2, 8\] float32 pooled features of 2 images/);
  const a = readNpy(out);
  assert.equal(a.dtype, 'F32');
  assert.deepEqual(a.shape, [2, 8]);
  const m = await loadPretrained(model);
  const lib = await embed(m, [path.join(IMAGES, 'chelsea.png'), path.join(IMAGES, 'rocket.jpg')]);
  assert.deepEqual(lib.shape, [2, 8]);
  for (let i = 0; i < 16; i++) assert.ok(Math.abs((a.data as Float32Array)[i]! - lib.values[i]!) < 1e-6);

  const maps = path.join(tmp, 'maps.npy');
  ok(resnet('embed', photos, '--model', model, '--layer', 'stage2', '--output', maps, '--batch', '2'));
  const b = readNpy(maps);
  assert.deepEqual(b.shape, [3, 8, 28, 28]);
  const s2 = await embed(m, [path.join(photos, 'a-chelsea.png')], { layer: 'stage2' });
  assert.deepEqual(s2.shape, [1, 8, 28, 28]);
  for (let i = 0; i < s2.numel; i += 97) assert.ok(Math.abs((b.data as Float32Array)[i]! - s2.values[i]!) < 1e-5);
  // Pooled features through the plan equal the module's own forward.
  const viaModule = m.model.forwardFeatures(await import('../src/hub/index.js').then((h) => h.prepareBatch([path.join(IMAGES, 'chelsea.png')], m.preprocess)));
  for (let i = 0; i < 8; i++) assert.ok(Math.abs(viaModule.values[i]! - lib.values[i]!) < 1e-5);
});

test('a plain weights file works as --model (architecture recognised from its keys)', async () => {
  // A registered architecture: a CIFAR resnet20-shaped state dict written as safetensors.
  const { createModel } = await import('../src/models/registry.js');
  manualSeed(1);
  const net = createModel('resnet20', { numClasses: 4 });
  const file = path.join(tmp, 'r20.safetensors');
  writeStateDict(file, net);
  const r = resnet('classify', path.join(IMAGES, 'gray.png'), '--model', file, '--json');
  assert.equal(r.code, 0, r.stderr);
  // The one stderr line says what was assumed.
  assert.match(r.stderr, /^resnet: note: .*r20\.safetensors: preprocessing is torchvision's default ImageNet preset \(resize 256, crop 224\); class names are not known\n$/);
  const out = JSON.parse(r.stdout) as Json;
  assert.deepEqual(out[0]!.predictions.map((p) => p.label).sort(), ['class 0', 'class 1', 'class 2', 'class 3']);
  const m = await loadPretrained('resnet20', { weights: file });
  assert.equal(m.arch, 'resnet20');
  const direct = await classify(m, path.join(IMAGES, 'gray.png'));
  assert.deepEqual(out[0]!.predictions, JSON.parse(JSON.stringify(direct)));
  assert.equal(resnet('classify', path.join(IMAGES, 'gray.png'), '--arch', 'resnet20', '--weights', file).code, 0);
});

test('errors: one line, exit 2 for usage, 1 for files and models', () => {
  const img = path.join(IMAGES, 'chelsea.png');
  const txt = path.join(photos, 'notes.txt');
  fails(resnet('classify', txt, '--model', model), 1, /notes\.txt: not an image, or not a supported format/);
  fails(resnet('classify', path.join(IMAGES, 'huge_header.png'), '--model', model), 1, /too large/);
  fails(resnet('classify', path.join(tmp, 'missing.jpg'), '--model', model), 1, /file not found: .*missing\.jpg/);
  fails(resnet('classify', img, '--model', path.join(tmp, 'no-such-model')), 2, /is not a local file or folder, nor a Hugging Face repo id/);
  fails(resnet('classify', img, '--model', 'acme/not-cached'), 1, /HF_HUB_OFFLINE is set .*acme\/not-cached .*not in the cache.*; no local file or folder "acme\/not-cached" exists either/);
  fails(resnet('classify', img), 2, /classify needs a model: --model/);
  fails(resnet('classify', '--model', model), 2, /classify needs an argument/);
  fails(resnet('classify', img, '--model', model, '--arch', 'resnet50'), 2, /either --model, or --arch with --weights/);
  fails(resnet('classify', img, '--arch', 'resnet50'), 2, /--arch resnet50 needs --weights/);
  fails(resnet('classify', img, '--arch', 'resnet18', '--weights', 'IMAGENET1K_V2'), 2, /resnet18 has no weights "IMAGENET1K_V2"/);
  fails(resnet('classify', img, '--arch', 'resnet99', '--weights', 'IMAGENET1K_V1'), 2, /unknown architecture "resnet99"/);
  fails(resnet('classify', img, '--weights', 'IMAGENET1K_V1'), 2, /needs --arch/);
  fails(resnet('classify', img, '--arch', 'resnet18', '--weights', 'IMAGENET1K_V1'), 1, /HF_HUB_OFFLINE is set .*resnet18-f37072fd\.pth is not in the torch hub cache/);
  fails(resnet('classify', img, '--model', model, '--top', '0'), 2, /--top must be a positive integer/);
  fails(resnet('classify', img, '--model', model, '--bogus'), 2, /unknown option --bogus/);
  const out = path.join(tmp, 'never.npy');
  fails(resnet('embed', img, '--model', model, '--layer', 'stage9', '--output', out), 2, /layer stage9 does not exist: the model has 4 stages/);
  fails(resnet('embed', img, '--model', model, '--layer', 'fc', '--output', out), 2, /unknown layer "fc" \(choose pooled or stage1\.\.stage4\)/);
  fails(resnet('embed', img, '--model', model), 2, /embed needs --output/);
  fails(resnet('embed', txt, '--model', model, '--output', out), 1, /not an image/);
  fails(resnet('embed', img, '--model', model, '--output', path.join(tmp, 'no-dir', 'x.npy')), 1, /does not exist/);
  assert.ok(!fs.existsSync(out), 'no output file after a failed run');
  // A broken model folder.
  const broken = path.join(tmp, 'broken-model');
  fs.mkdirSync(broken);
  fs.writeFileSync(path.join(broken, 'config.json'), '{"model_type": "resnet"');
  fails(resnet('classify', img, '--model', broken), 1, /config\.json: not valid JSON/);
});

test('--help for both commands', () => {
  for (const cmd of ['classify', 'embed']) {
    const help = ok(resnet(cmd, '--help'));
    assert.match(help, new RegExp(`^usage: resnet ${cmd} <image\\|folder>\\.\\.\\.`));
    for (const opt of ['--model', '--arch', '--weights', '--revision', '--batch']) assert.ok(help.includes(opt), `${cmd} --help mentions ${opt}`);
    assert.ok(help.includes('HF_HUB_OFFLINE'));
  }
  assert.match(ok(resnet('--help')), /classify .*\n.*embed /);
});
