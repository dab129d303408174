/** The compiled inference plan (BN folded, fused epilogues, pooled buffers) equals model.call. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { compileInference } from '../src/inference/plan.js';
import { createModel, cifarResNet } from '../src/models/registry.js';
import { ResNet } from '../src/models/resnet.js';
import { readStateDict } from '../src/io/state.js';
import { listBackends, withBackend } from '../src/kernels/registry.js';
import { noGrad } from '../src/tensor/autograd.js';
import { randn } from '../src/tensor/tensor.js';
import { Generator } from '../src/tensor/rng.js';
import { ShapeError } from '../src/errors.js';
import { assertClose } from './helpers.js';

const GOLDEN = fileURLToPath(new URL('../../test/fixtures/golden/', import.meta.url));
const cases = JSON.parse(readFileSync(`${GOLDEN}cases.json`, 'utf8')) as any[];

function closeToScale(a: Float32Array, e: Float32Array, what: string): void {
  const scale = e.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
  assertClose(a, e, { rtol: 1e-4, atol: 1e-4 * scale }, what);
}

for (const backend of listBackends()) {
  for (const c of cases.filter((c) => c.mode === 'eval')) {
    test(`[${backend}] plan equals model.call: ${c.name}`, () => {
      withBackend(backend, () => {
        const model = c.kind === 'cifar' ? cifarResNet(c.depth, c.options) : new ResNet(c.block, c.layers, c.options);
        model.loadStateDict(readStateDict(`${GOLDEN}${c.weightsFrom ?? c.name}.weights.safetensors`).stateDict);
        model.eval();
        const x = randn(c.input, new Generator(5));
        const expected = noGrad(() => model.call(x));
        const plan = compileInference(model);
        closeToScale(plan.run(x).values, expected.values, `${c.name} first run`);
        closeToScale(plan.run(x).values, expected.values, `${c.name} second run (recycled buffers)`);
      });
    });
  }
}

test('the plan re-folds when weights change, and rejects bad inputs', () => {
  const model = createModel('resnet20', { inChannels: 1 });
  model.eval();
  const plan = compileInference(model);
  const x = randn([2, 1, 12, 12], new Generator(1));
  const before = plan.run(x).values.slice();
  model.bn1.runningMean!.values.fill(0.5);
  model.bn1.runningMean!.version++;
  const after = plan.run(x).values;
  closeToScale(after, noGrad(() => model.call(x)).values, 'after a weight change');
  assert.ok(after.some((v, i) => v !== before[i]), 'output changed with the weights');
  assert.throws(() => plan.run(randn([2, 3, 12, 12])), ShapeError);
  assert.throws(() => plan.run(randn([3, 12, 12])), /4-D/);
});
