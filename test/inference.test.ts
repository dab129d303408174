/** The compiled inference plan (BN folded, fused epilogues, pooled buffers) equals model.call. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { compileInference } from '../src/inference/plan.js';
import { createModel, cifarResNet } from '../src/models/registry.js';
import { ResNet } from '../src/models/resnet.js';
import { readStateDict } from '../src/io/state.js';
import { listBackends, nativeBackend, withBackend } from '../src/kernels/registry.js';
import { loadBinding } from '../src/backends/native/binding.js';
import { noGrad } from '../src/tensor/autograd.js';
import { randn } from '../src/tensor/tensor.js';
import { Generator } from '../src/tensor/rng.js';
import { ShapeError } from '../src/errors.js';
import { Module } from '../src/nn/module.js';
import type { Tensor } from '../src/tensor/tensor.js';
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

test('stateVersion (what the plan checks per run) sees in-place changes, replaced tensors and new children', () => {
  class Box extends Module {
    w = this.addParameter('w', randn([2]));
    forward(x: Tensor): Tensor {
      return x;
    }
    swap(t: Tensor): void {
      this.setParameter('w', t);
    }
  }
  class Outer extends Module {
    inner = this.addModule('inner', new Box());
    more: Box | null = null;
    forward(x: Tensor): Tensor {
      return x;
    }
    grow(): void {
      this.more = this.addModule('more', new Box());
    }
  }
  const o = new Outer();
  const v0 = o.stateVersion();
  assert.equal(o.stateVersion(), v0, 'stable while nothing changes');
  o.inner.w.version++;
  const v1 = o.stateVersion();
  assert.notEqual(v1, v0, 'in-place change');
  o.inner.swap(randn([2]));
  const v2 = o.stateVersion();
  assert.notEqual(v2, v1, 'replaced parameter (the cached tensor list is rebuilt)');
  o.grow();
  const v3 = o.stateVersion();
  assert.notEqual(v3, v2, 'a new child with its own parameter');
  o.more!.w.version++;
  assert.notEqual(o.stateVersion(), v3, 'in-place change in the new child');
});

test('packed weights: grouped convs, kernels cropped on 1x1 maps, backend switches and ISA changes', (t) => {
  const nat = nativeBackend();
  if (!nat) {
    t.skip('native addon not built');
    return;
  }
  // ResNeXt-style bottlenecks (groups 4) on a 20x20 input: the last stage runs 3x3 convs on 1x1 maps
  const model = new ResNet('bottleneck', [1, 1, 1, 1], { groups: 4, widthPerGroup: 16, numClasses: 7, widths: [8, 16, 24, 32], stemWidth: 8 });
  const g = new Generator(9);
  for (const [name, p] of model.namedParameters()) if (name.includes('bn')) p.values.set(randn(p.shape, g).values.map((v) => 1 + 0.2 * v));
  for (const [name, b] of model.namedBuffers()) if (name.endsWith('running_var')) b.values.fill(1.3);
  model.eval();
  const x = randn([3, 3, 20, 20], new Generator(2));
  const expected = withBackend('ts', () => noGrad(() => model.call(x))).values;
  const plan = compileInference(model);
  withBackend('native', () => closeToScale(plan.run(x).values, expected, 'native, packed'));
  withBackend('ts', () => closeToScale(plan.run(x).values, expected, 'ts after native (re-folded, unpacked)'));
  withBackend('native', () => closeToScale(plan.run(x).values, expected, 'native again (re-packed)'));
  const { binding } = loadBinding();
  const original = binding!.isa();
  try {
    // weights packed for the AVX-512 panels, run with other micro-kernels: the kernel falls back
    for (const code of [1, 2]) {
      binding!.isa(code);
      withBackend('native', () => closeToScale(plan.run(x).values, expected, `native, ISA ${binding!.isa()} with weights packed for ${original}`));
    }
  } finally {
    binding!.isa(0);
  }
  assert.equal(binding!.isa(), original);
});

test('the plan compiled and run with the AVX2 micro-kernels (its 3x3 layers by AVX2 pixels in lanes, plain weights, or above 128 channels by tap panels on the packed weights) equals model.call', () => {
  const nat = nativeBackend();
  if (!nat) return; // no addon: nothing to force
  const { binding } = loadBinding();
  const original = binding!.isa();
  try {
    if (binding!.isa(2) !== 'avx2') return; // this CPU lacks AVX2
    const model = createModel('resnet20', { inChannels: 3, numClasses: 10 });
    const g = new Generator(4);
    for (const [name, p] of model.namedParameters()) if (name.includes('bn')) p.values.set(randn(p.shape, g).values.map((v) => 1 + 0.2 * v));
    for (const [name, b] of model.namedBuffers()) if (name.endsWith('running_var')) b.values.fill(1.3);
    model.eval();
    const x = randn([3, 3, 20, 20], new Generator(5)); // 20x20, 10x10 and 5x5 maps, 16 to 64 channels
    const expected = withBackend('ts', () => noGrad(() => model.call(x))).values;
    const plan = withBackend('native', () => compileInference(model));
    withBackend('native', () => closeToScale(plan.run(x).values, expected, 'native, packed and run with AVX2'));
    binding!.isa(0);
    withBackend('native', () => closeToScale(plan.run(x).values, expected, `native, packed for AVX2, run with ${binding!.isa()}`));
    // 144 and 160 channels on 5x5 and 3x3 maps, the 7x7/2 stem, the strided 3x3: tap panels
    binding!.isa(2);
    const wide = new ResNet('basic', [1, 1, 1, 1], { numClasses: 5, widths: [16, 32, 144, 160], stemWidth: 16 });
    for (const [name, p] of wide.namedParameters()) if (name.includes('bn')) p.values.set(randn(p.shape, g).values.map((v) => 1 + 0.2 * v));
    for (const [name, b] of wide.namedBuffers()) if (name.endsWith('running_var')) b.values.fill(1.3);
    wide.eval();
    const xw = randn([2, 3, 40, 40], new Generator(6));
    const want = withBackend('ts', () => noGrad(() => wide.call(xw))).values;
    const widePlan = withBackend('native', () => compileInference(wide));
    withBackend('native', () => closeToScale(widePlan.run(xw).values, want, 'native, 144 and 160 channels, packed and run with AVX2'));
  } finally {
    binding!.isa(0);
  }
  assert.equal(binding!.isa(), original);
});

test('blocked activations (NCHW16c): the plan takes them at 224x224 on AVX-512 and equals model.call; other sizes run NCHW', (t) => {
  const nat = nativeBackend();
  if (!nat) {
    t.skip('native addon not built');
    return;
  }
  const g = new Generator(5);
  // reduced widths, whole 16-channel blocks; batch-norm statistics that are not the identity
  const models = [
    new ResNet('bottleneck', [1, 2, 1, 1], { numClasses: 5, widths: [16, 16, 32, 32], stemWidth: 16 }),
    new ResNet('basic', [2, 1, 1, 1], { numClasses: 5, widths: [16, 32, 32, 48], stemWidth: 16 }),
    // 3x3 layers of more than 128 channels: Winograd F(2x2, 3x3) (F(4x4, 3x3) up to 128)
    new ResNet('basic', [1, 1, 1, 1], { numClasses: 5, widths: [16, 32, 144, 160], stemWidth: 16 }),
  ];
  for (const model of models) {
    for (const [name, p] of model.namedParameters()) if (name.includes('bn')) p.values.set(randn(p.shape, g).values.map((v) => 1 + 0.2 * v));
    for (const [name, b] of model.namedBuffers()) if (name.endsWith('running_var')) b.values.fill(1.3);
    model.eval();
    const auto = compileInference(model);
    const nchw = compileInference(model, { layout: 'nchw' });
    const direct = compileInference(model, { winograd: false });
    const blockedNow = nat.convBlockedOk({ n: 1, cIn: 16, h: 14, w: 14, cOut: 16, kh: 3, kw: 3, sh: 1, sw: 1, ph: 1, pw: 1, dh: 1, dw: 1, groups: 1, oh: 14, ow: 14 }, true);
    withBackend('native', () => {
      for (const n of [1, 3]) {
        const x = randn([n, 3, 224, 224], new Generator(n));
        const expected = withBackend('ts', () => noGrad(() => model.call(x))).values;
        const got = auto.run(x).values;
        closeToScale(got, expected, `${model.options.block} batch ${n}, layout auto`);
        closeToScale(nchw.run(x).values, expected, `${model.options.block} batch ${n}, layout nchw`);
        closeToScale(direct.run(x).values, expected, `${model.options.block} batch ${n}, no Winograd`);
        assert.equal((auto as any).blockedFits.get(x.shape.join(',')), blockedNow, 'blocked exactly where the CPU has AVX-512');
        // features (pooled, [N, C]) agree as well
        const f = auto.features(x);
        assert.deepEqual(f.shape, [n, model.numFeatures]);
      }
      // batch 8: whole images as work items (the stem's NCHW phases and the blocked tiles per image),
      // against the NCHW plan (itself checked against model.call above)
      const x8 = randn([8, 3, 224, 224], new Generator(8));
      closeToScale(auto.run(x8).values, nchw.run(x8).values, `${model.options.block} batch 8, auto vs nchw`);
      // 96x96: map widths 48, 24, 12, 6, 3 are not whole 7-pixel runs: NCHW, still right
      const small = randn([2, 3, 96, 96], new Generator(7));
      closeToScale(auto.run(small).values, withBackend('ts', () => noGrad(() => model.call(small))).values, `${model.options.block} 96x96`);
      assert.equal((auto as any).blockedFits.get(small.shape.join(',')), false);
      // and back: the weights, repacked for the NCHW kernels, are packed for the blocked ones again
      const x = randn([1, 3, 224, 224], new Generator(1));
      closeToScale(auto.run(x).values, withBackend('ts', () => noGrad(() => model.call(x))).values, `${model.options.block} 224 again`);
    });
  }
  assert.throws(() => compileInference(models[0]!, { layout: 'nhwc' as any }), /layout must be 'auto' or 'nchw'/);
  assert.throws(() => compileInference(models[0]!, { winograd: 'yes' as any }), /winograd must be true or false/);
});
