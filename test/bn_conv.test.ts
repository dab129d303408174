/**
 * A batch norm + ReLU read by the convolution after it (Kernels.conv2d's inputBnRelu,
 * Kernels.batchNormStats, batchNormBackward's 'recompute', F.batchNormReluConv2d): the native
 * kernels give the bits of storing the batch norm's output and convolving it, on the geometries
 * whose Winograd path applies it while reading x and on those that make the input first; the
 * reference backend agrees; the fused op equals the two ops, forward and backward; training steps
 * of ResNet-20, a Bottleneck network and a plain net are bit for bit the unfused ones.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { nativeBackend, withBackend } from '../src/kernels/registry.js';
import { tsKernels } from '../src/backends/ts/index.js';
import type { BatchNormParams, Conv2dParams, Kernels } from '../src/kernels/kernels.js';
import { convOutSize } from '../src/ops/conv.js';
import * as F from '../src/ops/index.js';
import { cifarResNet } from '../src/models/registry.js';
import { ResNet } from '../src/models/resnet.js';
import type { Module } from '../src/nn/module.js';
import { backward } from '../src/tensor/autograd.js';
import { Tensor } from '../src/tensor/tensor.js';
import { Generator } from '../src/tensor/rng.js';
import { assertClose, randomArray, randomTensor, withEachIsa } from './helpers.js';

const nat = nativeBackend();
const skip = nat ? false : 'native addon not built (npm run build:native)';

function conv3x3(n: number, c: number, h: number, w: number, cOut: number, s = 1): Conv2dParams {
  return { n, cIn: c, h, w, cOut, kh: 3, kw: 3, sh: s, sw: s, ph: 1, pw: 1, dh: 1, dw: 1, groups: 1, oh: convOutSize(h, 3, s, 1, 1), ow: convOutSize(w, 3, s, 1, 1) };
}

/** [name, geometry, whether the native AVX-512 Winograd path reads the batch norm itself] (the AVX2
 * Winograd reads it on every geometry it takes: w2Reads) */
const cases: [string, Conv2dParams, boolean][] = [
  ['16 channels on 28x28 (the row copy; ResNet-20\'s first stage)', conv3x3(3, 16, 28, 28, 16), true],
  ['32 channels on 14x14 (whole map rows)', conv3x3(2, 32, 14, 14, 32), true],
  ['64 channels on 7x7, two tile rows a vector', conv3x3(3, 64, 7, 7, 64), true],
  ['16 channels on 20x23 (window by window)', conv3x3(2, 16, 20, 23, 32), true],
  ['6x6 map (converted to blocked first: the input made first)', conv3x3(2, 16, 6, 6, 16), false],
  ['stride 2 (the input made first)', conv3x3(2, 16, 13, 13, 32, 2), false],
  ['24 channels, not whole 16-channel blocks (the input made first)', conv3x3(2, 24, 9, 9, 16), false],
];

/** Whether the AVX2 Winograd (conv_wino2.c) takes p, reading the batch norm itself: 3x3 stride 1
 * padding 1, whole 8-channel vectors, maps of 3x3 or more, at most 128 x 128 channels. */
function w2Reads(p: Conv2dParams): boolean {
  return p.kh === 3 && p.sh === 1 && p.ph === 1 && p.dh === 1 && p.groups === 1 && p.cIn % 8 === 0 && p.cOut % 8 === 0 && p.h >= 3 && p.w >= 3 && p.cIn * p.cOut <= 128 * 128;
}

interface Bn {
  x: Float32Array;
  gamma: Float32Array;
  beta: Float32Array;
  p: BatchNormParams;
}

/** x with a channel's mean far from zero, negative gammas and a channel whose values all sit at one
 * value (variance 0). */
function bnInput(p: Conv2dParams, gen: Generator): Bn {
  const hw = p.h * p.w;
  const x = randomArray(p.n * p.cIn * hw, gen);
  for (let i = 0; i < hw; i++) x[2 * hw + i] = x[2 * hw + i]! * 0.1 + 40; // channel 2 of image 0
  for (let b = 0; b < p.n; b++) x.fill(1.5, (b * p.cIn + 1) * hw, (b * p.cIn + 2) * hw); // channel 1: constant
  const gamma = randomArray(p.cIn, gen);
  const beta = randomArray(p.cIn, gen, 0.5);
  return { x, gamma, beta, p: { n: p.n, c: p.cIn, hw, eps: 1e-5 } };
}

/** batchNormStats' outputs (and that they match batchNormTrain's statistics). */
function stats(k: Kernels, bn: Bn): { mean: Float32Array; invStd: Float32Array; varU: Float32Array; scale: Float32Array; shift: Float32Array } {
  const c = bn.p.c;
  const r = { mean: new Float32Array(c), invStd: new Float32Array(c), varU: new Float32Array(c), scale: new Float32Array(c), shift: new Float32Array(c) };
  k.batchNormStats(r.mean, r.invStd, r.varU, r.scale, r.shift, bn.x, bn.gamma, bn.beta, bn.p);
  return r;
}

/** Whether a and b hold the same values (NaN equal to NaN). */
function sameBits(a: Float32Array, b: Float32Array, what: string): void {
  assert.equal(a.length, b.length, `${what}: length`);
  for (let i = 0; i < a.length; i++) {
    if (!(a[i] === b[i] || (Number.isNaN(a[i]) && Number.isNaN(b[i])))) assert.fail(`${what}: element ${i} is ${a[i]}, expected ${b[i]} (the same bits)`);
  }
}

for (const [name, p, reads] of cases) {
  test(`native conv2d reading a batch norm + relu = convolving its stored output, same bits (AVX-512, and the AVX2 kernels): ${name}`, { skip }, () => withEachIsa((isa) => {
    const k = nat!;
    const gen = new Generator(7);
    const bn = bnInput(p, gen);
    const expectReads = isa === 'avx512' ? reads : isa === 'avx2' ? w2Reads(p) : false;
    assert.equal(k.conv2dReadsBnRelu(p), expectReads, `${isa}: conv2dReadsBnRelu`);
    const s = stats(k, bn);
    // the statistics are batchNormTrain's
    const y = new Float32Array(bn.x.length);
    const mean = new Float32Array(p.cIn);
    const invStd = new Float32Array(p.cIn);
    const varU = new Float32Array(p.cIn);
    k.batchNormTrain(y, mean, invStd, varU, bn.x, bn.gamma, bn.beta, bn.p, true);
    sameBits(s.mean, mean, 'mean');
    sameBits(s.invStd, invStd, 'invStd');
    sameBits(s.varU, varU, 'varUnbiased');
    const w = randomArray(p.cOut * p.cIn * 9, gen, 0.2);
    const bias = randomArray(p.cOut, gen);
    const pre = { scale: s.scale, shift: s.shift };
    const ny = p.n * p.cOut * p.oh * p.ow;
    const want = new Float32Array(ny);
    k.conv2d(want, y, w, bias, p);
    const got = new Float32Array(ny).fill(123);
    k.conv2d(got, bn.x, w, bias, p, pre);
    sameBits(got, want, 'forward');
    const dy = randomArray(ny, gen);
    const dwWant = new Float32Array(w.length);
    k.conv2dBackwardWeight(dwWant, y, dy, p);
    const dwGot = new Float32Array(w.length).fill(123);
    k.conv2dBackwardWeight(dwGot, bn.x, dy, p, pre);
    sameBits(dwGot, dwWant, 'weight gradient');
    // the reference backend: the same statistics, and the same results within rounding
    const r = stats(tsKernels, bn);
    assertClose(r.mean, s.mean, { rtol: 1e-6, atol: 1e-6 }, 'reference mean');
    assertClose(r.invStd, s.invStd, { rtol: 1e-5, atol: 1e-6 }, 'reference invStd');
    assertClose(r.scale, s.scale, { rtol: 1e-5, atol: 1e-6 }, 'reference scale');
    const ref = new Float32Array(ny);
    tsKernels.conv2d(ref, bn.x, w, bias, p, { scale: r.scale, shift: r.shift });
    const scale = want.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
    assertClose(ref, want, { rtol: 1e-4, atol: 1e-4 * scale }, 'reference forward');
  }));
}

test('native batch norm backward with the relu recomputed (never stored) = reading the stored relu output, same bits; reference agrees', { skip }, () => {
  const k = nat!;
  const gen = new Generator(11);
  // a map of 16+ pixels (image by image, recomputed there) and one of 9 (channel columns: the
  // relu output made first); a tensor beyond a core's L2 (the descending sums pass)
  for (const [n, c, hw] of [[3, 16, 49], [5, 7, 9], [64, 16, 784]] as const) {
    const p: BatchNormParams = { n, c, hw, eps: 1e-5 };
    const x = randomArray(n * c * hw, gen);
    const gamma = randomArray(c, gen);
    const beta = randomArray(c, gen, 0.5);
    const y = new Float32Array(x.length);
    const mean = new Float32Array(c);
    const invStd = new Float32Array(c);
    const varU = new Float32Array(c);
    k.batchNormTrain(y, mean, invStd, varU, x, gamma, beta, p, true);
    const dy = randomArray(x.length, gen);
    const run = (kk: Kernels, relu: Float32Array | 'recompute'): [Float32Array, Float32Array, Float32Array] => {
      const dx = new Float32Array(x.length).fill(7);
      const dg = new Float32Array(c);
      const db = new Float32Array(c);
      kk.batchNormBackward(dx, dg, db, dy, x, mean, invStd, gamma, true, p, relu, beta);
      return [dx, dg, db];
    };
    const want = run(k, y);
    const got = run(k, 'recompute');
    sameBits(got[0], want[0], `dx ${n}x${c}x${hw}`);
    sameBits(got[1], want[1], `dgamma ${n}x${c}x${hw}`);
    sameBits(got[2], want[2], `dbeta ${n}x${c}x${hw}`);
    if (n * c * hw < 1e5) {
      const ref = run(tsKernels, 'recompute');
      assertClose(ref[0], want[0], { rtol: 1e-4, atol: 1e-5 }, `reference dx ${n}x${c}x${hw}`);
      assertClose(ref[1], want[1], { rtol: 1e-4, atol: 1e-4 }, `reference dgamma ${n}x${c}x${hw}`);
    }
  }
  assert.throws(() => k.batchNormBackward(new Float32Array(8), null, null, new Float32Array(8), new Float32Array(8), new Float32Array(1), new Float32Array(1), null, true, { n: 2, c: 1, hw: 4, eps: 1e-5 }, 'recompute'), /recompute\) needs beta/);
});

for (const backend of ['native', 'ts'] as const) {
  test(`[${backend}] F.batchNormReluConv2d = conv2d(relu(batchNorm(x))): values, every gradient, running statistics`, { skip: backend === 'native' ? skip : false }, () => {
    withBackend(backend, () => {
      for (const [name, p, convBias] of [['fused geometry', conv3x3(2, 16, 9, 11, 16), false], ['stride 2 (the two ops)', conv3x3(2, 16, 9, 9, 32, 2), true]] as const) {
        const gen = new Generator(3);
        const make = (): { x: Tensor; g: Tensor; b: Tensor; w: Tensor; cb: Tensor | null; rm: Tensor; rv: Tensor } => {
          const g2 = new Generator(5);
          return {
            x: randomTensor([p.n, p.cIn, p.h, p.w], g2).requiresGrad_(),
            g: randomTensor([p.cIn], g2).requiresGrad_(),
            b: randomTensor([p.cIn], g2, 0.5).requiresGrad_(),
            w: randomTensor([p.cOut, p.cIn, 3, 3], g2, 0.2).requiresGrad_(),
            cb: convBias ? randomTensor([p.cOut], g2).requiresGrad_() : null,
            rm: randomTensor([p.cIn], g2),
            rv: new Tensor([p.cIn], new Float32Array(p.cIn).fill(2)),
          };
        };
        const a = make();
        const b = make();
        const conv = { stride: p.sh, padding: 1 };
        const o = { training: true, momentum: 0.1, eps: 1e-5 };
        const ya = F.batchNormReluConv2d(a.x, a.rm, a.rv, a.g, a.b, o, a.w, a.cb, conv);
        const yb = F.conv2d(F.batchNorm(b.x, b.rm, b.rv, b.g, b.b, { ...o, relu: true }), b.w, b.cb, conv);
        const seed = randomTensor(ya.shape, gen);
        backward(ya, seed.values);
        backward(yb, seed.values);
        const exact = backend === 'native';
        const cmp = (u: Float32Array, v: Float32Array, what: string): void => (exact ? sameBits(u, v, `${name}: ${what}`) : assertClose(u, v, { rtol: 1e-4, atol: 1e-5 }, `${name}: ${what}`));
        cmp(ya.values, yb.values, 'output');
        for (const key of ['x', 'g', 'b', 'w'] as const) cmp(a[key].grad!, b[key].grad!, `${key} gradient`);
        if (a.cb) cmp(a.cb.grad!, b.cb!.grad!, 'conv bias gradient');
        sameBits(a.rm.values, b.rm.values, `${name}: running mean`);
        sameBits(a.rv.values, b.rv.values, `${name}: running var`);
      }
      // eval mode: the two ops, with the running statistics
      const gen = new Generator(9);
      const x = randomTensor([2, 16, 8, 8], gen);
      const w = randomTensor([16, 16, 3, 3], gen, 0.2);
      const rm = randomTensor([16], gen);
      const rv = new Tensor([16], new Float32Array(16).fill(0.5));
      const e = F.batchNormReluConv2d(x, rm, rv, null, null, { training: false }, w, null, { padding: 1 });
      const want = F.conv2d(F.batchNorm(x, rm, rv, null, null, { training: false, relu: true }), w, null, { padding: 1 });
      sameBits(e.values, want.values, 'eval');
      assert.throws(() => F.batchNormReluConv2d(x, rm, rv, randomTensor([8], gen), null, { training: true }, w, null, { padding: 1 }), /weight must have shape \[16\]/);
      assert.throws(() => F.batchNormReluConv2d(x, rm, rv, null, null, { training: true }, randomTensor([16, 8, 3, 3], gen), null, { padding: 1 }), /expects 8 input channels/);
    });
  });
}

const nets: [string, () => Module, number, number][] = [
  ['ResNet-20', () => cifarResNet(20, { inChannels: 1, numClasses: 10, shortcut: 'A' }), 1, 28],
  ['a Bottleneck network (16-channel 3x3s on 16x16 and 8x8, CIFAR stem)', () => new ResNet('bottleneck', [2, 1], { stem: 'cifar', widths: [16, 16], inChannels: 3, numClasses: 10 }), 3, 16],
  ['a plain (no skips) ResNet-8', () => cifarResNet(8, { inChannels: 1, numClasses: 10, plain: true }), 1, 14],
];
for (const [name, make, cin, hw] of nets) {
  test(`[native] a training step of ${name} through the fused blocks has the bits of the module-by-module one (a hook on the ReLUs)`, { skip }, () => {
    withBackend('native', () => {
      const run = (hooked: boolean): { loss: number; grads: Float32Array[]; state: Float32Array[] } => {
        const m = make();
        const gen = new Generator(1);
        for (const p of m.parameters()) p.values.set(randomArray(p.numel, gen, 0.2));
        m.train();
        const handles = hooked ? [...m.modules()].filter((x) => x.constructor.name === 'ReLU').map((r) => r.registerForwardHook(() => {})) : [];
        const x = randomTensor([24, cin, hw, hw], gen);
        const loss = F.crossEntropy(m.call(x), Int32Array.from({ length: 24 }, (_, i) => i % 10));
        backward(loss);
        for (const h of handles) h.remove();
        return { loss: loss.item(), grads: m.parameters().map((p) => p.grad!), state: [...m.stateDict().values()].map((t) => t.values) };
      };
      const fused = run(false);
      const plain = run(true);
      assert.equal(fused.loss, plain.loss);
      fused.grads.forEach((g, i) => sameBits(g, plain.grads[i]!, `gradient ${i}`));
      fused.state.forEach((s, i) => sameBits(s, plain.state[i]!, `state ${i}`));
    });
  });
}

test('the addon refuses a batch norm read by a convolution with short or missing buffers, clearly', { skip }, async () => {
  const { loadBinding } = await import('../src/backends/native/binding.js');
  const b = loadBinding().binding!;
  const k = nat!;
  const p = conv3x3(2, 16, 8, 8, 16);
  const geo = Int32Array.from([p.n, p.cIn, p.h, p.w, p.cOut, 3, 3, 1, 1, 1, 1, 1, 1, 1, p.oh, p.ow]);
  const x = new Float32Array(2 * 16 * 64);
  const w = new Float32Array(16 * 16 * 9);
  const c16 = new Float32Array(16);
  assert.throws(() => k.conv2d(new Float32Array(x.length), x, w, null, p, { scale: new Float32Array(15), shift: c16 }), /shorter than the geometry/);
  assert.throws(() => k.conv2dBackwardWeight(new Float32Array(w.length), x, x, p, { scale: c16, shift: new Float32Array(3) }), /shorter than the geometry/);
  assert.throws(() => b.conv2dBackwardWeight(new Float32Array(w.length), x, x, geo, c16), /expected a Float32Array/);
  assert.throws(() => k.batchNormStats(c16, c16, c16, c16, new Float32Array(8), x, null, null, { n: 2, c: 16, hw: 64, eps: 1e-5 }), /shorter than the geometry/);
  assert.throws(() => b.batchNormBackward(x, null, null, x, x, c16, c16, null, true, 2, 16, 64, 1 as never), /expected a Float32Array/);
});
