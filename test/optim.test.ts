/**
 * SGD (src/optim/sgd.ts) against torch.optim.SGD's algorithm, computed independently here in
 * float64: a tiny Linear(3 -> 2) classifier trained with cross-entropy, whose gradient is written
 * out by hand (dL/dlogits = (softmax - onehot) / N), so the reference shares no code with the
 * engine (not the ops, not the autograd, not the sgdStep kernel). Also: nesterov, weight decay,
 * dampening, parameters without gradients, parameter groups, option validation with PyTorch's
 * messages, and a state-dict round trip (through JSON) that continues the exact trajectory.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Linear, Tensor, UsageError, StateDictError, backward, tensor } from '../src/index.js';
import { add, crossEntropy, mulScalar, sum } from '../src/ops/index.js';
import { SGD, type SGDOptions } from '../src/optim/sgd.js';
import { AdamW } from '../src/optim/adamw.js';
import { createModel } from '../src/models/registry.js';
import { Generator } from '../src/tensor/rng.js';
import { randn } from '../src/tensor/tensor.js';

const X = [
  [0.5, -1.2, 0.3],
  [1.5, 0.2, -0.7],
  [-0.4, 0.9, 1.1],
  [0.05, -0.3, -1.6],
];
const Y = [0, 1, 1, 0];
const W0 = [
  [0.2, -0.1, 0.4],
  [-0.3, 0.25, 0.1],
];
const B0 = [0.05, -0.02];

function tinyModel(): Linear {
  const m = new Linear(3, 2);
  m.weight.values.set(W0.flat());
  m.bias!.values.set(B0);
  return m;
}

/** Plain float64 state of the reference: weights, bias and one momentum buffer per parameter. */
interface Ref {
  w: number[];
  b: number[];
  bufW: number[] | null;
  bufB: number[] | null;
}

/** Mean cross-entropy gradient of the linear model, by hand, in float64. */
function refGrads(w: number[], b: number[]): { gw: number[]; gb: number[] } {
  const n = X.length;
  const gw = new Array<number>(6).fill(0);
  const gb = [0, 0];
  for (let i = 0; i < n; i++) {
    const z = [0, 1].map((o) => b[o]! + X[i]!.reduce((s, xv, j) => s + xv * w[o * 3 + j]!, 0));
    const mx = Math.max(...z);
    const e = z.map((v) => Math.exp(v - mx));
    const s = e[0]! + e[1]!;
    for (let o = 0; o < 2; o++) {
      const d = (e[o]! / s - (Y[i] === o ? 1 : 0)) / n;
      gb[o]! += d;
      for (let j = 0; j < 3; j++) gw[o * 3 + j]! += d * X[i]![j]!;
    }
  }
  return { gw, gb };
}

/** torch.optim.SGD's update (docs' pseudo-code) of one parameter, in float64. */
function refUpdate(p: number[], g: number[], buf: number[] | null, o: Required<SGDOptions>): number[] | null {
  const d = g.map((gv, i) => gv + o.weightDecay * p[i]!);
  let out = d;
  let nb = buf;
  if (o.momentum !== 0) {
    nb = buf === null ? [...d] : buf.map((v, i) => o.momentum * v + (1 - o.dampening) * d[i]!);
    out = o.nesterov ? d.map((v, i) => v + o.momentum * nb![i]!) : nb;
  }
  for (let i = 0; i < p.length; i++) p[i]! -= o.lr * out[i]!;
  return nb;
}

function full(o: SGDOptions): Required<SGDOptions> {
  return { momentum: 0, dampening: 0, weightDecay: 0, nesterov: false, ...o };
}

function refTrajectory(o: SGDOptions, steps: number): { w: number[]; b: number[] }[] {
  const r: Ref = { w: W0.flat(), b: [...B0], bufW: null, bufB: null };
  const out: { w: number[]; b: number[] }[] = [];
  for (let s = 0; s < steps; s++) {
    const { gw, gb } = refGrads(r.w, r.b);
    r.bufW = refUpdate(r.w, gw, r.bufW, full(o));
    r.bufB = refUpdate(r.b, gb, r.bufB, full(o));
    out.push({ w: [...r.w], b: [...r.b] });
  }
  return out;
}

const xT = (): Tensor => tensor(X.flat(), [4, 3]);

function trainStep(m: Linear, opt: SGD): number {
  opt.zeroGrad();
  const loss = crossEntropy(m.call(xT()), Y);
  backward(loss);
  opt.step();
  return loss.item();
}

function assertClose(actual: ArrayLike<number>, expected: readonly number[], what: string, tol = 2e-6): void {
  assert.equal(actual.length, expected.length, what);
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i]!;
    const e = expected[i]!;
    assert.ok(Math.abs(a - e) <= tol * (1 + Math.abs(e)), `${what}[${i}]: got ${a}, expected ${e}`);
  }
}

function checkTrajectory(o: SGDOptions, steps = 5): void {
  const ref = refTrajectory(o, steps);
  const m = tinyModel();
  const opt = new SGD(m.parameters(), o);
  for (let s = 0; s < steps; s++) {
    trainStep(m, opt);
    assertClose(m.weight.values, ref[s]!.w, `step ${s + 1} weight`);
    assertClose(m.bias!.values, ref[s]!.b, `step ${s + 1} bias`);
  }
  // The trajectory must actually move (a no-op optimizer would fail above only by luck).
  assert.ok(Math.abs(m.weight.values[0]! - W0[0]![0]!) > 1e-3);
}

describe('SGD trajectory vs torch.optim.SGD (hand-computed, float64)', () => {
  test('plain SGD, 5 steps', () => checkTrajectory({ lr: 0.5 }));
  test('momentum 0.9, 5 steps', () => checkTrajectory({ lr: 0.1, momentum: 0.9 }));
  test('momentum with dampening', () => checkTrajectory({ lr: 0.1, momentum: 0.8, dampening: 0.3 }));
  test('nesterov', () => checkTrajectory({ lr: 0.1, momentum: 0.9, nesterov: true }));
  test('weight decay (with momentum, the ResNet recipe)', () => checkTrajectory({ lr: 0.1, momentum: 0.9, weightDecay: 5e-4 }));
  test('weight decay without momentum', () => checkTrajectory({ lr: 0.3, weightDecay: 0.1 }));
  test('nesterov + weight decay', () => checkTrajectory({ lr: 0.05, momentum: 0.5, weightDecay: 0.01, nesterov: true }));

  test('first step sets the buffer to the gradient (no dampening applied), as PyTorch', () => {
    const p = tensor([1, 2]).requiresGrad_();
    const opt = new SGD([p], { lr: 1, momentum: 0.9, dampening: 0.5 });
    p.grad = new Float32Array([1, 1]);
    opt.step();
    assert.deepEqual(p.toArray(), [0, 1]);
    opt.step(); // buf = 0.9*1 + 0.5*1 = 1.4
    assertClose(p.values, [-1.4, -0.4], 'second step');
  });
});

describe('SGD bookkeeping', () => {
  test('parameters without a gradient are untouched, and their buffers do not decay', () => {
    const a = tensor([1, 2, 3]).requiresGrad_();
    const b = tensor([4, 5]).requiresGrad_();
    const opt = new SGD([a, b], { lr: 0.1, momentum: 0.9, weightDecay: 0.1 });
    a.grad = new Float32Array([1, 1, 1]);
    b.grad = new Float32Array([1, 1]);
    opt.step();
    const bAfter1 = b.toArray();
    const vB = b.version;
    b.grad = null;
    a.grad = new Float32Array([1, 1, 1]);
    opt.step();
    assert.deepEqual(b.toArray(), bAfter1, 'b skipped');
    assert.equal(b.version, vB, 'b version unchanged');
    // b's buffer is still its first-step value: one more step with gradient 1 uses 0.9*buf + g.
    b.grad = new Float32Array([1, 1]);
    opt.step();
    const sd = opt.stateDict();
    assert.equal(sd.state['1']!.step, 2);
    assert.equal(sd.state['0']!.step, 3);
    // Reference for b (gradient 1, wd 0.1): buf1 = d1; the skipped step leaves it; buf3 = 0.9*buf1 + d3.
    const b0 = [4, 5];
    const d1 = b0.map((v) => 1 + 0.1 * v);
    const b1 = b0.map((v, i) => v - 0.1 * d1[i]!);
    const d3 = b1.map((v) => 1 + 0.1 * v);
    const buf3 = d1.map((v, i) => 0.9 * v + d3[i]!);
    assertClose(sd.state['1']!.momentumBuffer!, buf3, 'b buffer');
    assertClose(b.values, b1.map((v, i) => v - 0.1 * buf3[i]!), 'b after its second update');
  });

  test('a parameter that never had a gradient has no state', () => {
    const a = tensor([1]).requiresGrad_();
    const b = tensor([2]).requiresGrad_();
    const opt = new SGD([a, b], { lr: 0.1, momentum: 0.9 });
    a.grad = new Float32Array([1]);
    opt.step();
    assert.deepEqual(Object.keys(opt.stateDict().state), ['0']);
    assert.deepEqual(b.toArray(), [2]);
  });

  test('step bumps the version of updated parameters', () => {
    const a = tensor([1]).requiresGrad_();
    const opt = new SGD([a], { lr: 0.1 });
    a.grad = new Float32Array([1]);
    const v = a.version;
    opt.step();
    assert.equal(a.version, v + 1);
  });

  test('zeroGrad sets gradients to null, or zero-fills them', () => {
    const a = tensor([1, 2]).requiresGrad_();
    const opt = new SGD([a], { lr: 0.1 });
    a.grad = new Float32Array([3, 4]);
    opt.zeroGrad(false);
    assert.deepEqual(Array.from(a.grad!), [0, 0]);
    opt.zeroGrad();
    assert.equal(a.grad, null);
  });

  test('parameter groups override the defaults; lr setter sets every group', () => {
    const a = tensor([1]).requiresGrad_();
    const b = tensor([1]).requiresGrad_();
    const opt = new SGD([{ params: [a] }, { params: [b], lr: 0.5, weightDecay: 0.1 }], { lr: 0.1 });
    assert.equal(opt.paramGroups[0]!.lr, 0.1);
    assert.equal(opt.paramGroups[1]!.lr, 0.5);
    assert.equal(opt.paramGroups[1]!.weightDecay, 0.1);
    assert.equal(opt.paramGroups[0]!.weightDecay, 0);
    a.grad = new Float32Array([1]);
    b.grad = new Float32Array([1]);
    opt.step();
    assertClose(a.values, [0.9], 'a');
    assertClose(b.values, [1 - 0.5 * 1.1], 'b');
    assert.equal(opt.lr, 0.1);
    opt.lr = 0.01;
    assert.deepEqual(opt.paramGroups.map((g) => g.lr), [0.01, 0.01]);
  });

  test("invalid options fail with PyTorch's messages", () => {
    const p = [tensor([1]).requiresGrad_()];
    const bad = (o: SGDOptions, msg: RegExp): void => {
      assert.throws(() => new SGD(p, o), (e: unknown) => e instanceof UsageError && msg.test(e.message));
    };
    bad({ lr: -0.1 }, /^Invalid learning rate: -0\.1$/);
    bad({ lr: NaN }, /^Invalid learning rate: NaN$/);
    bad({ lr: 0.1, momentum: -1 }, /^Invalid momentum value: -1$/);
    bad({ lr: 0.1, weightDecay: -1 }, /^Invalid weight_decay value: -1$/);
    bad({ lr: 0.1, nesterov: true }, /^Nesterov momentum requires a momentum and zero dampening$/);
    bad({ lr: 0.1, momentum: 0.9, dampening: 0.1, nesterov: true }, /^Nesterov momentum requires a momentum and zero dampening$/);
    assert.throws(() => new SGD([], { lr: 0.1 }), /empty parameter list/);
    assert.throws(() => new SGD([{ params: p }, { params: p }], { lr: 0.1 }), /more than one parameter group/);
    assert.throws(() => new SGD(p, { lr: 0.1 }).lr = -1, /^UsageError: Invalid learning rate: -1$/);
    assert.doesNotThrow(() => new SGD(p, { lr: 0 }));
  });
});

describe('SGD state dict', () => {
  test('round trip (through JSON) continues the identical trajectory', () => {
    const o: SGDOptions = { lr: 0.1, momentum: 0.9, weightDecay: 5e-4, nesterov: true };
    // Reference run: 6 uninterrupted steps.
    const m1 = tinyModel();
    const opt1 = new SGD(m1.parameters(), o);
    for (let s = 0; s < 6; s++) trainStep(m1, opt1);

    // Interrupted run: 3 steps, save model + optimizer, rebuild both, 3 more steps.
    const m2 = tinyModel();
    const opt2 = new SGD(m2.parameters(), o);
    for (let s = 0; s < 3; s++) trainStep(m2, opt2);
    const saved = JSON.parse(JSON.stringify(opt2.stateDict())) as ReturnType<SGD['stateDict']>;
    assert.equal(saved.paramGroups.length, 1);
    assert.deepEqual(saved.paramGroups[0]!.params, [0, 1]);
    assert.equal(saved.state['0']!.step, 3);
    assert.equal(saved.state['0']!.momentumBuffer!.length, 6);
    const weights = m2.stateDict();

    const m3 = new Linear(3, 2);
    m3.loadStateDict(weights);
    const opt3 = new SGD(m3.parameters(), { lr: 1 }); // hyper-parameters come from the state dict
    opt3.loadStateDict(saved);
    assert.equal(opt3.lr, 0.1);
    assert.equal(opt3.paramGroups[0]!.nesterov, true);
    for (let s = 0; s < 3; s++) trainStep(m3, opt3);
    assert.deepEqual(Array.from(m3.weight.values), Array.from(m1.weight.values), 'bit-identical weights');
    assert.deepEqual(Array.from(m3.bias!.values), Array.from(m1.bias!.values), 'bit-identical bias');
    assert.deepEqual(opt3.stateDict(), opt1.stateDict());
  });

  test('a state dict that does not fit is refused', () => {
    const m = tinyModel();
    const opt = new SGD(m.parameters(), { lr: 0.1, momentum: 0.9 });
    trainStep(m, opt);
    const sd = opt.stateDict();
    const other = new SGD([tensor([1]).requiresGrad_(), tensor([1, 2]).requiresGrad_()], { lr: 0.1, momentum: 0.9 });
    assert.throws(() => other.loadStateDict(sd), (e: unknown) => e instanceof StateDictError && /momentum buffer has 6 elements/.test(e.message));
    const single = new SGD([tensor([1]).requiresGrad_()], { lr: 0.1 });
    assert.throws(() => single.loadStateDict(sd), /parameter group 0 has 2 parameter\(s\), the optimizer's has 1/);
    const two = new SGD([{ params: [m.weight] }, { params: [m.bias!] }], { lr: 0.1 });
    assert.throws(() => two.loadStateDict(sd), /1 parameter group\(s\), the optimizer has 2/);
  });
});

describe('updates inside backward (fuseIntoBackward)', () => {
  /** Two identical ResNet-20s (1x8x8 inputs), one stepped after backward, one fused, for `steps` steps. */
  function compare(make: (ps: Tensor[]) => SGD | AdamW, steps: number, between?: (o: SGD | AdamW, s: number) => void, freeGrads = false): void {
    const a = createModel('resnet20', { numClasses: 5, inChannels: 1 }).train();
    const b = createModel('resnet20', { numClasses: 5, inChannels: 1 }).train();
    b.loadStateDict(a.stateDict());
    const oa = make(a.parameters()), ob = make(b.parameters());
    const handle = ob.fuseIntoBackward({ freeGrads });
    assert.equal(ob.isFused, true);
    const gen = new Generator(4);
    for (let s = 0; s < steps; s++) {
      const x = randn([3, 1, 8, 8], gen);
      const y = [s % 5, (s + 2) % 5, 4];
      for (const [m, o] of [[a, oa], [b, ob]] as const) {
        o.zeroGrad();
        backward(crossEntropy(m.call(x), y), undefined, { recycleActivations: true });
        if (o === oa) o.step();
        else if (freeGrads) assert.ok(b.parameters().every((p) => p.grad === null), 'freeGrads: every gradient given back');
        else assert.ok(b.parameters().every((p) => p.grad !== null), 'the gradients stay readable');
        between?.(o, s);
      }
    }
    const pa = a.namedParameters(), pb = b.namedParameters();
    pa.forEach(([name, t], i) => assert.deepEqual(Array.from(pb[i]![1].values), Array.from(t.values), `${name} bit-identical`));
    assert.deepEqual(ob.stateDict(), oa.stateDict(), 'optimizer state identical');
    handle.remove();
    assert.equal(ob.isFused, false);
  }

  test('SGD (momentum, weight decay, nesterov, two groups, lr changed between steps): step()\'s numbers bit for bit', () => {
    compare((ps) => new SGD([{ params: ps.slice(0, 10), lr: 0.05 }, { params: ps.slice(10) }], { lr: 0.1, momentum: 0.9, weightDecay: 5e-4, nesterov: true }), 4, (o, s) => {
      (o as SGD).lr = 0.1 / (s + 2);
    });
  });

  test("AdamW: step()'s numbers bit for bit", () => {
    compare((ps) => new AdamW(ps, { lr: 0.01, weightDecay: 0.05 }), 3);
  });

  test('freeGrads: the same numbers, each gradient given back after its update', () => {
    compare((ps) => new SGD(ps, { lr: 0.1, momentum: 0.9, weightDecay: 5e-4 }), 3, undefined, true);
    assert.throws(() => new SGD([tensor([1]).requiresGrad_()], { lr: 0.1 }).fuseIntoBackward({ freeGrads: 1 as never }), /freeGrads must be a boolean/);
  });

  test('a parameter read twice is updated once, with its summed gradient', () => {
    const w = tensor([1, 2]).requiresGrad_();
    const opt = new SGD([w], { lr: 0.5 });
    opt.fuseIntoBackward();
    backward(add(sum(mulScalar(w, 3)), sum(w))); // d/dw = 3 + 1
    assert.deepEqual(Array.from(w.grad!), [4, 4]);
    assert.deepEqual(Array.from(w.values), [-1, 0]);
  });

  test('step() refuses while fused and works after remove(); fusing twice and frozen parameters are refused', () => {
    const m = tinyModel();
    const opt = new SGD(m.parameters(), { lr: 0.1 });
    const h = opt.fuseIntoBackward();
    assert.throws(() => opt.step(), (e: unknown) => e instanceof UsageError && /already updates every parameter inside backward/.test(e.message));
    assert.throws(() => opt.fuseIntoBackward(), /already fused/);
    h.remove();
    h.remove(); // idempotent
    const before = Array.from(m.weight.values);
    trainStep(m, opt);
    assert.notDeepEqual(Array.from(m.weight.values), before, 'step() updates again');
    const frozen = tensor([1]);
    assert.throws(() => new SGD([m.weight, frozen], { lr: 0.1 }).fuseIntoBackward(), /1 parameter\(s\) do not require grad/);
    // an lr made invalid between steps throws before any parameter moves
    const opt2 = new SGD(m.parameters(), { lr: 0.1 });
    opt2.fuseIntoBackward();
    opt2.paramGroups[0]!.lr = -1;
    const w0 = Array.from(m.weight.values), b0 = Array.from(m.bias!.values);
    assert.throws(() => backward(crossEntropy(m.call(xT()), Y)), /Invalid learning rate: -1/);
    assert.deepEqual(Array.from(m.weight.values), w0);
    assert.deepEqual(Array.from(m.bias!.values), b0);
  });

  test('registerPostAccumulateGradHook: leaves that require grad, called after the gradient accumulates', () => {
    const x = tensor([1, 2, 3]).requiresGrad_();
    const seen: number[][] = [];
    const h = x.registerPostAccumulateGradHook((t) => void seen.push(Array.from(t.grad!)));
    backward(sum(mulScalar(x, 2)));
    backward(sum(x)); // accumulates: the hook sees the running total
    assert.deepEqual(seen, [[2, 2, 2], [3, 3, 3]]);
    h.remove();
    backward(sum(x));
    assert.equal(seen.length, 2, 'removed');
    assert.throws(() => mulScalar(x, 2).registerPostAccumulateGradHook(() => undefined), /cannot be registered on non-leaf tensors/);
    assert.throws(() => tensor([1]).registerPostAccumulateGradHook(() => undefined), /doesn't require gradient/);
  });
});
