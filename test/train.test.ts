/** Optimizers, LR schedules, clipping, metrics and training checkpoints. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { AdamW } from '../src/optim/adamw.js';
import { SGD } from '../src/optim/sgd.js';
import { cosineAnnealingLR, linearLR, multiStepLR, oneCycleLR, sequentialLR, type LRScheduler } from '../src/optim/schedulers.js';
import { clipGradNorm } from '../src/train/clip.js';
import { ConfusionMatrix, topkCorrect } from '../src/train/metrics.js';
import { loadTrainingCheckpoint, saveTrainingCheckpoint } from '../src/train/checkpoint.js';
import { renderCurves } from '../src/train/plot.js';
import { createModel } from '../src/models/registry.js';
import { Tensor, tensor } from '../src/tensor/tensor.js';
import { assertClose } from './helpers.js';

const ref = JSON.parse(readFileSync(fileURLToPath(new URL('../../test/fixtures/golden/optim.json', import.meta.url)), 'utf8'));

function sequence(make: (o: SGD) => LRScheduler, steps: number): number[] {
  const p = tensor([0]).requiresGrad_();
  const opt = new SGD([p], { lr: 0.1, momentum: 0.9 });
  const s = make(opt);
  const out: number[] = [];
  for (let i = 0; i < steps; i++) {
    out.push(opt.lr);
    s.step();
  }
  return out;
}

test('LR schedules equal PyTorch 1.13 step by step', () => {
  const close = (a: number[], e: number[], what: string): void => assertClose(a, e, { rtol: 1e-9, atol: 1e-12 }, what);
  close(sequence((o) => multiStepLR(o, [3, 7], 0.1), 10), ref.multistep, 'MultiStepLR');
  close(sequence((o) => cosineAnnealingLR(o, 8, 0.001), 9), ref.cosine, 'CosineAnnealingLR');
  close(sequence((o) => linearLR(o, 0.1, 1, 4), 7), ref.linear, 'LinearLR');
  close(sequence((o) => oneCycleLR(o, { maxLr: 0.4, totalSteps: 20 }), 20), ref.onecycle, 'OneCycleLR');
  close(
    sequence((o) => sequentialLR(o, [{ fn: (t, b) => b * (0.1 + (0.9 * Math.min(t, 3)) / 3) }, { fn: (t, b) => (b * (1 + Math.cos((Math.PI * t) / 6))) / 2 }], [3]), 9),
    ref.sequential,
    'SequentialLR(LinearLR, CosineAnnealingLR)',
  );
});

test('scheduler state round trip resumes the same sequence; bad settings are clear errors', () => {
  const p = tensor([0]).requiresGrad_();
  const a = new SGD([p], { lr: 0.1 });
  const s1 = oneCycleLR(a, { maxLr: 0.4, totalSteps: 20 });
  for (let i = 0; i < 7; i++) s1.step();
  const b = new SGD([p], { lr: 0.1 });
  const s2 = oneCycleLR(b, { maxLr: 0.4, totalSteps: 20 });
  s2.loadStateDict(JSON.parse(JSON.stringify(s1.stateDict())));
  assert.equal(b.lr, a.lr);
  s1.step();
  s2.step();
  assert.equal(b.lr, a.lr);
  assert.throws(() => multiStepLR(a, [0]), /milestone must be a positive integer/);
  assert.throws(() => s2.loadStateDict({ name: 'MultiStepLR', t: 1, baseLrs: [0.1] }), /cannot resume a MultiStepLR schedule into a OneCycleLR/);
});

function trajectory(make: (ps: Tensor[]) => { step(): void }, r: { init: number[]; grads: number[][]; after: number[][] }, what: string): void {
  const p = tensor(r.init).requiresGrad_();
  const opt = make([p]);
  r.grads.forEach((g, i) => {
    p.grad = Float32Array.from(g);
    opt.step();
    assertClose(p.values, r.after[i]!, { rtol: 1e-5, atol: 1e-6 }, `${what} step ${i + 1}`);
  });
}

test('AdamW and SGD (nesterov, weight decay) follow PyTorch trajectories', () => {
  trajectory((ps) => new AdamW(ps, { lr: 0.01, betas: [0.9, 0.99], eps: 1e-8, weightDecay: 0.05 }), ref.adamw, 'AdamW');
  trajectory((ps) => new SGD(ps, { lr: 0.1, momentum: 0.9, nesterov: true, weightDecay: 5e-4 }), ref.sgd_nesterov, 'SGD nesterov');
  assert.throws(() => new AdamW([tensor([1])], { betas: [1, 0.9] }), /Invalid beta parameter at index 0/);
});

test('clipGradNorm scales to the max norm and returns the norm before clipping', () => {
  const a = tensor([3, 0]);
  const b = tensor([4]);
  a.grad = Float32Array.from([3, 0]);
  b.grad = Float32Array.from([4]);
  assert.equal(clipGradNorm([a, b], 1), 5);
  assertClose([...a.grad, ...b.grad], [0.6, 0, 0.8], { rtol: 1e-5, atol: 1e-6 }, 'clipped');
  assert.ok(Math.abs(clipGradNorm([a, b], 10) - 1) < 1e-6, 'already within the limit: unchanged norm 1');
});

test('top-k accuracy and the confusion matrix', () => {
  const logits = Float32Array.from([0.1, 0.9, 0.0, 0.8, 0.1, 0.1, 0.2, 0.3, 0.5]);
  assert.equal(topkCorrect(logits, [1, 1, 2], 3, 3, 1), 2);
  assert.equal(topkCorrect(logits, [0, 1, 0], 3, 3, 2), 2); // row 3: two logits beat the target
  const cm = new ConfusionMatrix(3);
  cm.add([1, 1, 2], [1, 0, 2]);
  assert.equal(cm.accuracy(), 2 / 3);
  assert.deepEqual(cm.perClassAccuracy().slice(1), [0.5, 1]);
  assert.match(cm.format(['a', 'b', 'c']), /true \\ pred/);
});

test('training checkpoints round-trip model, optimizer buffers and state exactly', () => {
  const dir = mkdtempSync(join(tmpdir(), 'ckpt-'));
  const m = createModel('resnet20', { inChannels: 1 });
  const opt = new SGD(m.parameters(), { lr: 0.1, momentum: 0.9 });
  for (const p of m.parameters()) p.grad = p.values.map((v) => v * 0.5);
  opt.step();
  const path = join(dir, 'c.safetensors');
  saveTrainingCheckpoint(path, m, { epoch: 3, optimizer: opt.stateDict(), scheduler: { t: 9 }, rng: [1, 2, 3, 4, NaN], extra: { history: [{ epoch: 1 }] } });
  const ck = loadTrainingCheckpoint(path);
  assert.equal(ck.epoch, 3);
  assert.deepEqual(ck.scheduler, { t: 9 });
  assert.deepEqual(ck.extra['history'], [{ epoch: 1 }]);
  const m2 = createModel('resnet20', { inChannels: 1 });
  m2.loadStateDict(ck.modelState);
  for (const [k, t] of m.stateDict()) assert.deepEqual(m2.stateDict().get(k)!.values, t.values, k);
  const opt2 = new SGD(m2.parameters(), { lr: 0.1, momentum: 0.9 });
  opt2.loadStateDict(ck.optimizer as never);
  assert.deepEqual(opt2.stateDict(), opt.stateDict());
  assert.throws(() => loadTrainingCheckpoint(join(dir, 'missing.safetensors')), /not found/);
});

test('the curve chart is a PNG', () => {
  const png = renderCurves([{ epoch: 1, trainLoss: 1, trainAcc: 0.5, valLoss: 0.9, valAcc: 0.6 }, { epoch: 2, trainLoss: 0.5, trainAcc: 0.8, valLoss: 0.6, valAcc: 0.7 }], 'test');
  assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
});
