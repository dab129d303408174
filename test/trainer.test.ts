/**
 * The trainer end to end on a tiny synthetic dataset: it learns, writes its logs, chart and
 * checkpoints, resumes bit for bit (N epochs straight == N/2 + resume + N/2), and stops on a NaN
 * loss with the last checkpoint intact.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InMemoryDataset } from '../src/data/index.js';
import { Compose, Normalize, RandomCrop, RandomHorizontalFlip, ToFloat } from '../src/data/transforms.js';
import { cifarResNet } from '../src/models/registry.js';
import { manualSeed, Generator } from '../src/tensor/rng.js';
import { train, TrainingDiverged } from '../src/train/trainer.js';
import { batchSource, buildOptimizer } from '../src/train/setup.js';
import { readStateDict } from '../src/io/state.js';
import type { Tensor } from '../src/tensor/tensor.js';
import type { SGD } from '../src/optim/sgd.js';
import { UsageError } from '../src/errors.js';

/** 64 8x8 gray images of 2 classes: bright top half vs bright bottom half, with noise. */
function toyData(seed: number): InMemoryDataset {
  const g = new Generator(seed);
  const n = 64;
  const images = new Uint8Array(n * 64);
  const labels = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    labels[i] = i % 2;
    for (let p = 0; p < 64; p++) {
      const top = p < 32;
      const bright = (labels[i] === 0) === top;
      images[i * 64 + p] = Math.max(0, Math.min(255, (bright ? 200 : 50) + Math.round(g.normal() * 20)));
    }
  }
  return new InMemoryDataset({ images, labels, channels: 1, height: 8, width: 8, classes: ['top', 'bottom'] });
}

async function run(out: string, epochs: number, resume: boolean, std = 0.25): Promise<void> {
  const lr = 0.05;
  manualSeed(3);
  const model = cifarResNet(8, { inChannels: 1, numClasses: 2 });
  const tf = new Compose([new RandomCrop(8, 1), new RandomHorizontalFlip(), new ToFloat(), new Normalize([0.5], [std])]);
  const data = toyData(1);
  const tr = batchSource(data, { batchSize: 16, shuffle: true, seed: 7, transform: tf, workers: 0 });
  const va = batchSource(toyData(2), { batchSize: 32, shuffle: false, seed: 7, transform: new Compose([new ToFloat(), new Normalize([0.5], [0.25])]), workers: 0 });
  const { optimizer, scheduler, per } = buildOptimizer(model.parameters(), {
    optimizer: 'sgd', lr, momentum: 0.9, weightDecay: 1e-4, nesterov: false, schedule: 'cosine', gamma: 0.1, warmupEpochs: 0, epochs: 4, batchesPerEpoch: tr.batches,
  });
  await train(model, optimizer, scheduler, tr, va, { epochs, out, schedulerPer: per, resume, classes: ['top', 'bottom'], title: 'toy', config: { arch: 'resnet8' }, quiet: true });
}

test('training learns, logs, charts, checkpoints — and resuming reproduces the uninterrupted run bit for bit', async () => {
  const straight = mkdtempSync(join(tmpdir(), 'straight-'));
  const split = mkdtempSync(join(tmpdir(), 'split-'));
  await run(straight, 4, false);
  await run(split, 2, false);
  await run(split, 4, true);
  for (const f of ['metrics.csv', 'metrics.jsonl', 'curves.png', 'checkpoint.safetensors', 'best.safetensors', 'model.safetensors']) {
    assert.ok(existsSync(join(straight, f)), `${f} written`);
  }
  const csv = readFileSync(join(straight, 'metrics.csv'), 'utf8').trim().split('\n');
  assert.equal(csv.length, 5, 'header + 4 epochs');
  const lastAcc = Number(csv[4]!.split(',')[5]);
  assert.ok(lastAcc > 0.9, `learned the toy task (val acc ${lastAcc})`);
  const a = readStateDict(join(straight, 'model.safetensors')).stateDict;
  const b = readStateDict(join(split, 'model.safetensors')).stateDict;
  assert.equal(a.size, b.size);
  for (const [k, t] of a) assert.deepEqual(b.get(k)!.values, t.values, `${k} identical after resume`);
  const splitCsv = readFileSync(join(split, 'metrics.csv'), 'utf8').trim().split('\n');
  assert.deepEqual(splitCsv.map((l) => l.split(',').slice(0, 7)), csv.map((l) => l.split(',').slice(0, 7)), 'same metrics epoch by epoch');
});

test('a NaN loss stops training with a clear error and the last checkpoint intact', async () => {
  const out = mkdtempSync(join(tmpdir(), 'nan-'));
  await run(out, 1, false);
  const before = readFileSync(join(out, 'checkpoint.safetensors'));
  // a broken input pipeline (std ~ 0 turns pixels into infinities) makes the loss non-finite
  await assert.rejects(run(out, 3, true, 1e-40), (e: Error) => e instanceof TrainingDiverged && /loss became (NaN|Infinity)/.test(e.message) && /checkpoint .* is intact/.test(e.message));
  assert.deepEqual(readFileSync(join(out, 'checkpoint.safetensors')), before);
});

test('the trainer recycles activations only while no forward hook watches the model', async () => {
  const go = async (hooked: boolean): Promise<Tensor[]> => {
    manualSeed(3);
    const model = cifarResNet(8, { inChannels: 1, numClasses: 2 });
    const layer1 = new Map(model.namedModules()).get('layer1')!;
    const seen: Tensor[] = [];
    if (hooked) {
      layer1.registerForwardHook((_m, _x, y) => void seen.push(y));
    } else {
      // The same outputs, taken without a hook (one that is not there cannot stop recycling).
      const call = layer1.call.bind(layer1);
      layer1.call = (x: Tensor): Tensor => {
        const y = call(x);
        seen.push(y);
        return y;
      };
    }
    const tr = batchSource(toyData(1), { batchSize: 32, shuffle: false, seed: 7, transform: new Compose([new ToFloat(), new Normalize([0.5], [0.25])]), workers: 0 });
    const { optimizer, scheduler, per } = buildOptimizer(model.parameters(), {
      optimizer: 'sgd', lr: 0.05, momentum: 0.9, weightDecay: 0, nesterov: false, schedule: 'cosine', gamma: 0.1, warmupEpochs: 0, epochs: 1, batchesPerEpoch: tr.batches,
    });
    await train(model, optimizer, scheduler, tr, null, { epochs: 1, out: mkdtempSync(join(tmpdir(), 'hooked-')), schedulerPer: per, classes: ['top', 'bottom'], title: 'toy', config: {}, quiet: true });
    return seen;
  };
  const watched = await go(true);
  assert.equal(watched.length, 2);
  for (const y of watched) assert.ok(y.values.every(Number.isFinite), 'a hook keeps what it saw, readable after the step');
  const unwatched = await go(false);
  assert.equal(unwatched.length, 2);
  for (const y of unwatched) assert.equal(y.isRecycled, true, 'unwatched activations go back to the allocator');
});

test('without clipping the trainer updates inside backward: the models of step() after backward, bit for bit; its hooks end with train()', async () => {
  const go = async (fused: boolean): Promise<Map<string, Tensor>> => {
    manualSeed(3);
    const model = cifarResNet(8, { inChannels: 1, numClasses: 2 });
    const tf = new Compose([new RandomCrop(8, 1), new RandomHorizontalFlip(), new ToFloat(), new Normalize([0.5], [0.25])]);
    const tr = batchSource(toyData(1), { batchSize: 16, shuffle: true, seed: 7, transform: tf, workers: 0 });
    const { optimizer, scheduler, per } = buildOptimizer(model.parameters(), {
      optimizer: 'sgd', lr: 0.05, momentum: 0.9, weightDecay: 1e-4, nesterov: true, schedule: 'cosine', gamma: 0.1, warmupEpochs: 1, epochs: 2, batchesPerEpoch: tr.batches,
    });
    // without fuseIntoBackward the trainer has to step after backward
    const stepper = { paramGroups: optimizer.paramGroups, step: () => optimizer.step(), zeroGrad: () => optimizer.zeroGrad(), stateDict: () => optimizer.stateDict(), loadStateDict: (s: never) => optimizer.loadStateDict(s) };
    let steps = 0;
    const step = optimizer.step.bind(optimizer);
    optimizer.step = (): void => {
      steps++;
      step();
    };
    await train(model, fused ? optimizer : stepper, scheduler, tr, null, { epochs: 2, out: mkdtempSync(join(tmpdir(), 'fused-')), schedulerPer: per, classes: ['top', 'bottom'], title: 'toy', config: {}, quiet: true });
    assert.equal(steps, fused ? 0 : 2 * tr.batches, fused ? 'no step() after backward: the updates ran inside it' : 'a step() per batch');
    if (fused) {
      assert.equal((optimizer as SGD).isFused, false, 'train() removed its hooks');
      assert.ok(model.parameters().every((p) => p.postAccumulateGradHooks.length === 0));
      optimizer.step(); // works again (no gradients left: nothing moves)
    }
    return new Map(model.stateDict());
  };
  const fused = await go(true);
  const stepped = await go(false);
  for (const [k, t] of stepped) assert.deepEqual(fused.get(k)!.values, t.values, `${k} bit-identical`);
});

test('an optimizer the caller fused already trains as fused (not fused twice, not stepped); with clipping it is refused', async () => {
  const go = async (prefuse: boolean, clip?: number): Promise<Map<string, Tensor>> => {
    manualSeed(3);
    const model = cifarResNet(8, { inChannels: 1, numClasses: 2 });
    const tr = batchSource(toyData(1), { batchSize: 16, shuffle: false, seed: 7, transform: new Compose([new ToFloat(), new Normalize([0.5], [0.25])]), workers: 0 });
    const { optimizer, scheduler, per } = buildOptimizer(model.parameters(), {
      optimizer: 'sgd', lr: 0.05, momentum: 0.9, weightDecay: 1e-4, nesterov: false, schedule: 'cosine', gamma: 0.1, warmupEpochs: 0, epochs: 1, batchesPerEpoch: tr.batches,
    });
    const handle = prefuse ? (optimizer as SGD).fuseIntoBackward() : null;
    await train(model, optimizer, scheduler, tr, null, { epochs: 1, out: mkdtempSync(join(tmpdir(), 'prefused-')), schedulerPer: per, classes: ['top', 'bottom'], title: 'toy', config: {}, quiet: true, ...(clip !== undefined ? { clipGradNorm: clip } : {}) });
    if (handle) assert.equal((optimizer as SGD).isFused, true, "the caller's fusing outlives train()");
    handle?.remove();
    return new Map(model.stateDict());
  };
  const pre = await go(true);
  const own = await go(false);
  for (const [k, t] of own) assert.deepEqual(pre.get(k)!.values, t.values, `${k} bit-identical`);
  await assert.rejects(go(true, 1), (e: Error) => e instanceof UsageError && /clipGradNorm .* already updates inside backward/.test(e.message));
});
