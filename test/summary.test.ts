/** summary() against torchsummary 1.5.1's real output; the tree view's MAC totals. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { createModel } from '../src/models/registry.js';
import { withMetaTensors } from '../src/tensor/tensor.js';
import { summary } from '../src/summary/torchsummary.js';
import { treeSummary, modelStats } from '../src/summary/tree.js';
import { pyFixed, commas } from '../src/summary/format.js';
import { ShapeError } from '../src/errors.js';

const SUMMARY = fileURLToPath(new URL('../../test/fixtures/golden/summary/', import.meta.url));

for (const arch of ['resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152']) {
  test(`summary(${arch}, [3, 224, 224]) is torchsummary's table, character for character`, () => {
    const expected = readFileSync(`${SUMMARY}${arch}_3x224x224.txt`, 'utf8');
    const m = withMetaTensors(() => createModel(arch));
    assert.equal(summary(m, [3, 224, 224]), expected);
  });
}

test('summary works on a model with real weights and leaves its state alone', () => {
  const m = createModel('resnet20');
  const before = m.stateDict().get('bn1.num_batches_tracked')!.item();
  const text = summary(m, [3, 32, 32]);
  assert.match(text, /Total params: 269,722/);
  assert.match(text, /BasicBlock-\d+ +\[-1, 64, 8, 8\]/);
  assert.equal(m.stateDict().get('bn1.num_batches_tracked')!.item(), before);
  assert.equal(m.training, true, 'mode restored');
});

test('frozen weights count as non-trainable', () => {
  const m = withMetaTensors(() => createModel('resnet18'));
  for (const [k, p] of m.namedParameters()) if (!k.startsWith('fc.')) p.requiresGrad = false;
  const text = summary(m, [3, 224, 224]);
  assert.match(text, /Trainable params: 513,000\n/);
  assert.match(text, /Non-trainable params: 11,176,512\n/);
});

test('tree view: mult-adds totals as torchinfo (resnet50 4.09 G, resnet152 11.51 G)', () => {
  const r50 = withMetaTensors(() => createModel('resnet50'));
  assert.match(treeSummary(r50, [3, 224, 224]), /Total mult-adds \(G\): 4\.09\n/);
  const r152 = withMetaTensors(() => createModel('resnet152'));
  assert.match(treeSummary(r152, [3, 224, 224]), /Total mult-adds \(G\): 11\.51\n/);
  assert.equal(modelStats(r50, [3, 224, 224]).params, 25_557_032);
});

test('tree view: depth limit, explanations and the stem arithmetic of the notes', () => {
  const m = withMetaTensors(() => createModel('resnet18'));
  const text = treeSummary(m, [3, 224, 224], { depth: 1, explain: true });
  assert.ok(!/└─/.test(text), 'depth 1 shows no nested rows');
  assert.match(text, /params 64 × 3 × 7 × 7 = 9,408; H = W: ⌊\(224 \+ 2·3 − 7\) \/ 2⌋ \+ 1 = 112/);
  const deep = treeSummary(m, [3, 224, 224], { explain: true });
  assert.match(deep, /out = relu\(F\(x\) \+ x\): identity shortcut/);
  assert.match(deep, /out = relu\(F\(x\) \+ downsample\(x\)\)/);
  const plain = treeSummary(withMetaTensors(() => createModel('plain18')), [3, 224, 224], { explain: true });
  assert.match(plain, /plain block: out = relu\(F\(x\)\)/);
});

test('resnet152 summaries are shape inference only (no arithmetic)', () => {
  const t0 = process.hrtime.bigint();
  const m = withMetaTensors(() => createModel('resnet152'));
  summary(m, [3, 224, 224]);
  treeSummary(m, [3, 224, 224]);
  // Not a timing assertion: meta tensors hold no storage, which is what makes this fast.
  assert.ok(m.parameters().every((p) => p.data === null));
  assert.ok(process.hrtime.bigint() > t0);
});

test("Python's %0.2f: ties to even on the exact binary value", () => {
  assert.equal(pyFixed(0.125), '0.12');
  assert.equal(pyFixed(0.375), '0.38');
  assert.equal(pyFixed(2.675), '2.67'); // 2.675 is 2.67499999... in binary
  assert.equal(pyFixed(1.005), '1.00');
  assert.equal(pyFixed(0.5703125), '0.57');
  assert.equal(pyFixed(99.995), '100.00'); // 99.99500000000000454...
  assert.equal(pyFixed(0), '0.00');
  assert.equal(commas(60192808), '60,192,808');
  assert.equal(commas(0), '0');
});

test('bad input sizes are clear errors', () => {
  const m = withMetaTensors(() => createModel('resnet18'));
  assert.throws(() => summary(m, [3, 0, 224]), ShapeError);
  assert.throws(() => summary(m, [1, 224, 224]), /expects 3 input channels/);
});
