/**
 * Fine-tuning on an ImageFolder (issue 6): `resnet train --dataset imagefolder --data DIR` from a
 * pretrained checkpoint with a new head and a frozen backbone, `resnet eval` on the folder, the
 * folder layouts (train/ + val/, flat with a seeded split), the ImageNet-style transforms, and the
 * errors (no --data, empty folder, classes that differ from the weights').
 *
 * Tiny on purpose: 3 classes x 6 PNGs of 24x24 (class colour + noise, written with sharp), a
 * resnet18 "pretrained" checkpoint of random weights, --image-size 32, 2 epochs, 1 thread.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { createModel } from '../src/models/registry.js';
import { readStateDict, writeStateDict } from '../src/io/state.js';
import { manualSeed, Generator } from '../src/tensor/rng.js';
import { buildModel, evalTransform, loadDataset, readWeightsMetadata, recordedClasses, trainTransform } from '../src/train/setup.js';
import { loadSample } from '../src/data/index.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const CLI = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');
const ENV = { ...process.env, RESNET_NUM_THREADS: '1' };

function cli(...args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd: ROOT, encoding: 'utf8', timeout: 120_000, env: ENV });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const COLORS: Record<string, [number, number, number]> = { blue: [30, 60, 220], green: [40, 200, 60], red: [220, 40, 30] };

/** Writes `n` noisy PNGs of the class colour per class under dir/<class>/. */
async function writeFolder(dir: string, classes: readonly string[], n: number, seed = 1): Promise<void> {
  let s = seed >>> 0;
  const rand = (): number => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
  for (const c of classes) {
    mkdirSync(path.join(dir, c), { recursive: true });
    const rgb = COLORS[c] ?? [128, 128, 128];
    for (let i = 0; i < n; i++) {
      const W = 24;
      const H = 24;
      const px = Buffer.alloc(W * H * 3);
      for (let p = 0; p < W * H; p++) for (let k = 0; k < 3; k++) px[p * 3 + k] = Math.max(0, Math.min(255, Math.round(rgb[k]! + (rand() - 0.5) * 60)));
      await sharp(px, { raw: { width: W, height: H, channels: 3 } }).png().toFile(path.join(dir, c, `img${i}.png`));
    }
  }
}

const tmp = mkdtempSync(path.join(tmpdir(), 'resnet-finetune-'));
const data = path.join(tmp, 'shapes');
const ckpt = path.join(tmp, 'pretrained.safetensors');
const out = path.join(tmp, 'run');
const CLASSES = ['blue', 'green', 'red'];

test.after(() => rmSync(tmp, { recursive: true, force: true }));

test('fine-tune resnet18 on an ImageFolder with a frozen backbone, then evaluate it', async () => {
  await writeFolder(data, CLASSES, 6);
  writeFileSync(path.join(data, 'red', 'notes.txt'), 'not an image');
  manualSeed(123);
  writeStateDict(ckpt, createModel('resnet18', { numClasses: 1000 }));

  const r = cli('train', '--dataset', 'imagefolder', '--data', data, '--pretrained', ckpt, '--freeze-backbone', '--image-size', '32', '--epochs', '2', '--batch', '4', '--lr', '0.05', '--out', out, '--workers', '0', '--threads', '1');
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /^final validation accuracy \d+\.\d\d%, best \d+\.\d\d%/);
  for (const f of ['best.safetensors', 'model.safetensors', 'metrics.csv', 'curves.png']) assert.ok(existsSync(path.join(out, f)), f);
  // the run records its whole recipe; unset options are the defaults of docs/RESULTS.md's run
  const config = JSON.parse(readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').split('\n')[0]!).config;
  assert.deepEqual(
    { schedule: config.schedule, momentum: config.momentum, weightDecay: config.weightDecay, nesterov: config.nesterov, warmupEpochs: config.warmupEpochs, batch: config.batch },
    { schedule: 'cosine', momentum: 0.9, weightDecay: 5e-4, nesterov: true, warmupEpochs: 1, batch: 4 },
  );

  const pre = readStateDict(ckpt).stateDict;
  const best = readStateDict(path.join(out, 'best.safetensors'));
  const last = readStateDict(path.join(out, 'model.safetensors')).stateDict;
  assert.deepEqual(best.stateDict.get('fc.weight')!.shape, [3, 512]);
  assert.deepEqual(best.stateDict.get('fc.bias')!.shape, [3]);
  // Frozen backbone: every parameter (not the BN running statistics, which update in train mode) is the checkpoint's.
  for (const k of ['conv1.weight', 'bn1.weight', 'bn1.bias', 'layer1.0.conv1.weight', 'layer4.1.conv2.weight', 'layer4.1.bn2.weight', 'layer3.0.downsample.0.weight']) {
    assert.deepEqual(Array.from(last.get(k)!.values), Array.from(pre.get(k)!.values), `${k} changed`);
    assert.deepEqual(Array.from(best.stateDict.get(k)!.values), Array.from(pre.get(k)!.values), `${k} changed (best)`);
  }
  // The head trained: the final fc differs from the fresh head the run started with (same seed, same construction).
  manualSeed(0);
  const start = buildModel({ arch: 'resnet18', numClasses: 3, inChannels: 3, zeroInitResidual: true, pretrained: ckpt, freezeBackbone: true });
  const fc0 = Array.from(start.fc.weight.values);
  const fc1 = Array.from(last.get('fc.weight')!.values);
  assert.ok(fc0.some((v, i) => v !== fc1[i]), 'fc.weight did not change');
  assert.deepEqual(Array.from(start.conv1.weight.values), Array.from(pre.get('conv1.weight')!.values));

  // What eval needs is recorded in the metadata.
  assert.equal(best.metadata['arch'], 'resnet18');
  assert.equal(best.metadata['dataset'], 'imagefolder');
  assert.equal(best.metadata['image_size'], '32');
  assert.deepEqual(JSON.parse(best.metadata['classes']!), CLASSES);
  assert.deepEqual(recordedClasses(readWeightsMetadata(path.join(out, 'model.safetensors'))), CLASSES);

  const e = cli('eval', '--dataset', 'imagefolder', '--data', data, '--weights', path.join(out, 'best.safetensors'), '--arch', 'resnet18', '--image-size', '32');
  assert.equal(e.code, 0, e.stderr);
  assert.match(e.stdout, /\(resnet18\) on .*shapes \(whole folder\) \(18 images\)/);
  assert.match(e.stdout, /top-1 accuracy \d+\.\d\d%/);
  for (const c of CLASSES) assert.match(e.stdout, new RegExp(`\\d ${c} +\\d+\\.\\d\\d%`));

  // Dataset, architecture and size from the metadata; the held-out part of the training split.
  const j = cli('eval', '--data', data, '--weights', path.join(out, 'best.safetensors'), '--val-fraction', '0.1', '--json');
  assert.equal(j.code, 0, j.stderr);
  const res = JSON.parse(j.stdout);
  assert.equal(res.arch, 'resnet18');
  assert.equal(res.dataset, 'imagefolder');
  assert.equal(res.images, 3);
  assert.deepEqual(Object.keys(res.perClass), CLASSES);
  assert.ok(res.top1 >= 0 && res.top1 <= 1);

  // A folder with other classes is refused.
  const other = path.join(tmp, 'other');
  await writeFolder(other, ['blue', 'red'], 1);
  const m = cli('eval', '--dataset', 'imagefolder', '--data', other, '--weights', path.join(out, 'best.safetensors'));
  assert.equal(m.code, 1);
  assert.match(m.stderr, /^resnet: error: .*was trained on 3 classes \(blue, green, red\) but .*other.* has 2 \(blue, red\)\n$/);
});

test('imagefolder layouts: train/ + val/ sub-folders, or a seeded stratified split; ImageNet-style transforms', async () => {
  const split = path.join(tmp, 'split');
  await writeFolder(path.join(split, 'train'), ['blue', 'red'], 3, 7);
  await writeFolder(path.join(split, 'val'), ['blue', 'red'], 2, 8);
  const d = await loadDataset('imagefolder', split, { imageSize: 16 });
  assert.equal(d.train.length, 6);
  assert.equal(d.test.length, 4);
  assert.deepEqual(d.classes, ['blue', 'red']);
  assert.equal(d.testName, path.join(split, 'val'));
  assert.equal(d.channels, 3);

  // Eval transform: resize to round(16 / 0.875) = 18, center crop 16; train: RandomResizedCrop 16.
  const s = await loadSample(d.test, 0);
  const img = { data: s.image, channels: 3, height: s.height, width: s.width };
  const ev = evalTransform(d).apply(img, new Generator(0));
  const tr = trainTransform(d, true).apply(img, new Generator(0));
  for (const t of [ev, tr]) {
    assert.deepEqual([t.channels, t.height, t.width], [3, 16, 16]);
    assert.ok(t.data instanceof Float32Array);
  }
  // A blue image, normalized with ImageNet mean/std: blue channel high, red low.
  assert.ok(ev.data[2 * 256 + 8 * 16 + 8]! > 1 && ev.data[8 * 16 + 8]! < 0);

  // Flat folder: 10% of each class (round(6 * 0.1) = 1) held out, the same for the same seed.
  const flat = await loadDataset('imagefolder', data, { imageSize: 16, seed: 3 });
  assert.equal(flat.train.length, 15);
  assert.equal(flat.test.length, 3);
  const again = await loadDataset('imagefolder', data, { imageSize: 16, seed: 3 });
  assert.deepEqual(Array.from((again.test as unknown as { indices: Int32Array }).indices), Array.from((flat.test as unknown as { indices: Int32Array }).indices));
  const half = await loadDataset('imagefolder', data, { valFraction: 0.5 });
  assert.equal(half.test.length, 9);
  assert.equal(half.size, 224);

  // train/ and val/ with different classes.
  const bad = path.join(tmp, 'bad');
  await writeFolder(path.join(bad, 'train'), ['blue', 'red'], 1);
  await writeFolder(path.join(bad, 'val'), ['blue', 'green'], 1);
  await assert.rejects(loadDataset('imagefolder', bad), /different class folders \(blue, red vs blue, green\)/);
  await assert.rejects(loadDataset('imagefolder', split, { valFraction: 0.2 }), /--val-fraction does not apply/);
  await assert.rejects(loadDataset('cifar10', undefined, { imageSize: 64 }), /--image-size applies to --dataset imagefolder only/);
});

test('imagefolder errors: no --data is a usage error; an empty folder is a one-line error', () => {
  const u = cli('train', '--dataset', 'imagefolder', '--epochs', '1');
  assert.equal(u.code, 2);
  assert.match(u.stderr, /^resnet: error: --dataset imagefolder needs --data DIR .*\nrun 'resnet train --help' for usage\n$/);

  const empty = path.join(tmp, 'empty');
  mkdirSync(empty, { recursive: true });
  const r = cli('train', '--dataset', 'imagefolder', '--data', empty, '--epochs', '1', '--out', path.join(tmp, 'never'));
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^resnet: error: ImageFolder: .*empty has no class folders .*\n$/);
  assert.equal(r.stderr.split('\n').length, 2);
  assert.ok(!existsSync(path.join(tmp, 'never')));

  const e = cli('eval', '--dataset', 'imagefolder', '--weights', ckpt);
  assert.equal(e.code, 2);
  assert.match(e.stderr, /needs --data DIR/);

  const h = cli('train', '--help');
  assert.equal(h.code, 0);
  assert.match(h.stdout, /resnet18 for imagefolder/);
  assert.match(h.stdout, /--image-size/);
});
