/**
 * Architecture identity with torchvision: for every builder, the state-dict keys, their order and
 * shapes, and the parameter count equal torchvision 0.14's (test/fixtures/golden/torchvision_keys.json,
 * written from torchvision itself). Plus the CIFAR family, plain twins, options and their errors.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { createModel, listModels, cifarResNet, getModelSpec } from '../src/models/registry.js';
import { ResNet } from '../src/models/resnet.js';
import { ZeroPadShortcut } from '../src/models/blocks.js';
import { withMetaTensors, Tensor, randn } from '../src/tensor/tensor.js';
import { Generator } from '../src/tensor/rng.js';
import { UsageError, StateDictError } from '../src/errors.js';
import { noGrad } from '../src/tensor/autograd.js';

const GOLDEN = fileURLToPath(new URL('../../test/fixtures/golden/', import.meta.url));
const tv: Record<string, { num_params: number; state_dict: [string, number[]][] }> = JSON.parse(
  readFileSync(`${GOLDEN}torchvision_keys.json`, 'utf8'),
);

for (const [name, ref] of Object.entries(tv)) {
  test(`${name}: state-dict keys, order, shapes and parameter count equal torchvision's`, () => {
    const m = withMetaTensors(() => createModel(name));
    const mine = [...m.stateDict()].map(([k, t]) => [k, [...t.shape]]);
    assert.deepEqual(mine, ref.state_dict);
    assert.equal(m.numParameters(), ref.num_params);
  });
}

test('the reference counts of the issue', () => {
  const count = (n: string): number => withMetaTensors(() => createModel(n)).numParameters();
  assert.equal(count('resnet50'), 25_557_032);
  assert.equal(count('resnext50_32x4d'), 25_028_904);
  assert.equal(count('wide_resnet50_2'), 68_883_240);
  assert.equal(count('resnet152'), 60_192_808);
  // He et al. Table 6: 0.27M, 0.46M, 0.66M, 0.85M, 1.7M (3-channel input, 10 classes).
  assert.equal(count('resnet20'), 269_722);
  assert.equal(count('resnet32'), 464_154);
  assert.equal(count('resnet44'), 658_586);
  assert.equal(count('resnet56'), 853_018);
  assert.equal(count('resnet110'), 1_727_962);
});

test('CIFAR ResNets: 3x3 stem with 16 filters, stages 16/32/64, no max-pool, option A by default', () => {
  const m = withMetaTensors(() => createModel('resnet20', { inChannels: 1 }));
  const keys = [...m.stateDict().keys()];
  assert.equal(m.maxpool, null);
  assert.deepEqual([...m.conv1.weight.shape], [16, 1, 3, 3]);
  assert.deepEqual(m.stages.map((s) => s.length), [3, 3, 3]);
  assert.ok(!keys.some((k) => k.includes('downsample')), 'option A has no shortcut parameters');
  assert.ok(m.stages[1]!.at(0) instanceof Object && (m.stages[1]!.at(0) as any).downsample instanceof ZeroPadShortcut);
  const b = withMetaTensors(() => createModel('resnet20', { shortcut: 'B' }));
  assert.deepEqual(
    [...b.stateDict().keys()].filter((k) => k.includes('downsample.0.weight')),
    ['layer2.0.downsample.0.weight', 'layer3.0.downsample.0.weight'],
  );
  const c = withMetaTensors(() => createModel('resnet20', { shortcut: 'C' }));
  assert.equal([...c.stateDict().keys()].filter((k) => k.endsWith('downsample.0.weight')).length, 9, 'option C: a projection on every block');
});

test('plain twins have the same layers and no identity paths', () => {
  for (const [plain, res] of [['plain20', 'resnet20'], ['plain56', 'resnet56'], ['plain18', 'resnet18'], ['plain34', 'resnet34']] as const) {
    const p = withMetaTensors(() => createModel(plain));
    const r = withMetaTensors(() => createModel(res));
    const pk = [...p.stateDict().keys()];
    assert.deepEqual(pk, [...r.stateDict().keys()].filter((k) => !k.includes('downsample')));
  }
  // A plain block's output does not contain its input: with every conv zeroed, a residual block
  // passes relu(x) through, a plain one outputs relu(bn bias) = 0 everywhere.
  const zeroConvs = (m: ResNet): void => {
    for (const [k, t] of m.stateDict()) if (k.includes('conv') && k.startsWith('layer')) t.fill_(0);
  };
  const gen = new Generator(1);
  const x = randn([1, 16, 8, 8], gen);
  for (const [name, expectIdentity] of [['resnet20', true], ['plain20', false]] as const) {
    const m = createModel(name);
    zeroConvs(m);
    m.eval();
    const block = m.stages[0]!.at(0);
    const y = noGrad(() => block.call(x));
    const passesInput = y.values.some((v, i) => v !== 0 && Math.abs(v - Math.max(0, x.values[i]!)) < 1e-6);
    assert.equal(passesInput, expectIdentity, name);
  }
});

test('zeroInitResidual zeroes the last BN of every block', () => {
  const m = createModel('resnet50', { zeroInitResidual: true });
  const bn3 = [...m.stateDict()].filter(([k]) => /layer\d\.\d+\.bn3\.weight$/.test(k));
  assert.equal(bn3.length, 16);
  assert.ok(bn3.every(([, t]) => t.values.every((v) => v === 0)));
  assert.ok([...m.stateDict()].filter(([k]) => k.endsWith('bn2.weight')).every(([, t]) => t.values.every((v) => v === 1)));
});

test('kaiming-normal fan_out init: conv weight std ≈ sqrt(2 / (C_out·k·k))', () => {
  const m = createModel('resnet18');
  const w = m.stateDict().get('layer3.0.conv2.weight')!.values;
  const std = Math.sqrt(w.reduce((s, v) => s + v * v, 0) / w.length);
  const expected = Math.sqrt(2 / (256 * 9));
  assert.ok(Math.abs(std / expected - 1) < 0.01, `std ${std} vs ${expected}`);
  const fc = m.fc.weight.values;
  const bound = 1 / Math.sqrt(512);
  assert.ok(fc.every((v) => Math.abs(v) <= bound), 'Linear keeps PyTorch default U(±1/sqrt(fan_in))');
});

test('registry: every spec builds, unknown names list the known ones', () => {
  assert.ok(listModels().length >= 25);
  for (const s of listModels()) assert.ok(withMetaTensors(() => createModel(s.name)) instanceof ResNet);
  assert.throws(() => createModel('resnet19'), (e: Error) => e instanceof UsageError && /unknown architecture "resnet19"; known: .*resnet18.*resnet50/.test(e.message));
  assert.equal(getModelSpec('resnet56').family, 'cifar_resnet');
});

test('bad options are clear errors', () => {
  assert.throws(() => new ResNet('basic', [2, 2, 2, 2], { groups: 32 }), /BasicBlock only supports groups=1/);
  assert.throws(() => new ResNet('basic', [2, 2, 2, 2], { replaceStrideWithDilation: [false, true, true] }), /dilation/);
  assert.throws(() => new ResNet('bottleneck', [3, 4, 6, 3], { replaceStrideWithDilation: [true] }), /should have 3 elements/);
  assert.throws(() => createModel('resnet18', { numClasses: 0 }), /numClasses must be a positive integer/);
  assert.throws(() => createModel('resnet18', { shortcut: 'D' as never }), /shortcut must be 'A', 'B' or 'C'/);
  assert.throws(() => cifarResNet(21), /6n\+2/);
  assert.equal(cifarResNet(14).stages[0]!.length, 2);
});

test('strict loading reports missing, unexpected and mismatched keys in one error', () => {
  const m = withMetaTensors(() => createModel('resnet20'));
  const sd = new Map(withMetaTensors(() => createModel('resnet20')).stateDict());
  sd.delete('fc.bias');
  sd.set('extra.weight', new Tensor([1], new Float32Array(1)));
  sd.set('conv1.weight', new Tensor([16, 1, 3, 3], new Float32Array(144)));
  assert.throws(
    () => m.loadStateDict(sd),
    (e: Error) =>
      e instanceof StateDictError &&
      /conv1\.weight: checkpoint \[16, 1, 3, 3\] vs model \[16, 3, 3, 3\]/.test(e.message) &&
      /1 missing key\(s\): fc\.bias/.test(e.message) &&
      /1 unexpected key\(s\): extra\.weight/.test(e.message),
  );
  sd.set('conv1.weight', new Tensor([16, 3, 3, 3], new Float32Array(432)));
  const r = m.loadStateDict(sd, { strict: false });
  assert.deepEqual(r, { missingKeys: ['fc.bias'], unexpectedKeys: ['extra.weight'] });
});

test('forward gives [N, numClasses]; input channel mismatch is a clear conv2d error', () => {
  const m = createModel('resnet20', { numClasses: 7, inChannels: 1 });
  m.eval();
  const y = noGrad(() => m.call(randn([2, 1, 28, 28], new Generator(3))));
  assert.deepEqual([...y.shape], [2, 7]);
  assert.throws(() => m.call(randn([1, 3, 28, 28])), /conv2d: weight \[16, 1, 3, 3\] expects 1 input channels .* has 3/);
});

test('fused batch norm + ReLU and add + ReLU give the same values and gradients as the module calls; hooks still see every call', async () => {
  const { backward } = await import('../src/tensor/autograd.js');
  const { registerGlobalForwardHook } = await import('../src/nn/module.js');
  const F = await import('../src/ops/index.js');
  for (const name of ['resnet20', 'resnet18']) {
    const model = createModel(name, { numClasses: 5, ...(name === 'resnet18' ? { widths: [4, 8, 8, 8], stemWidth: 4 } : {}) });
    const g = new Generator(3);
    for (const [, p] of model.namedParameters()) if (p.ndim === 1) p.values.set(randn(p.shape, g).values); // non-trivial BN affine
    const x = randn([2, 3, 20, 20], new Generator(4));
    const run = (): { out: Float32Array; grads: Float32Array[] } => {
      model.zeroGrad();
      const out = model.call(x);
      backward(F.sum(out));
      return { out: out.values.slice(), grads: model.parameters().map((p) => p.grad!.slice()) };
    };
    const fused = run();
    // a global hook makes every module observed: the blocks take the unfused path
    const seen = new Map<string, number>();
    const h = registerGlobalForwardHook((m) => void seen.set(m.typeName, (seen.get(m.typeName) ?? 0) + 1));
    const plain = run();
    h.remove();
    const blocks = name === 'resnet20' ? 9 : 8;
    assert.equal(seen.get('ReLU'), 1 + 2 * blocks, `${name}: every ReLU call is seen by hooks`);
    assert.equal(seen.get('BatchNorm2d')! >= 1 + 2 * blocks, true);
    assert.deepEqual(fused.out, plain.out, `${name}: same logits`);
    fused.grads.forEach((gr, i) => assert.deepEqual(gr, plain.grads[i], `${name}: same gradient for parameter ${i}`));
    // a hook on one ReLU module alone also disables the fusion for its block
    const block = model.stages[0]!.layers[0] as unknown as { relu: { registerForwardHook: (f: () => void) => { remove: () => void } } };
    let calls = 0;
    const hh = block.relu.registerForwardHook(() => void calls++);
    model.call(x);
    hh.remove();
    assert.equal(calls, 2, `${name}: both ReLU calls of the hooked block are seen`);
  }
});
