/**
 * Shared test helpers: seeded random tensors, an element-wise closeness assertion that names the
 * worst element, and a finite-difference gradient checker for any differentiable function of
 * tensors.
 *
 * checkGradients(fn, inputs) works like torch.autograd.gradcheck, adapted to float32 storage:
 *  - y = fn(...inputs) is built with autograd on and reduced against a fixed seeded random tensor R
 *    (L = sum(y * R), computed in float64) by calling backward(y, R): the analytic gradient of every
 *    input that requires grad is then dL/dx;
 *  - the numerical gradient is the central difference (L(x + h) - L(x - h)) / (x+ - x-), where the
 *    forward runs in float32 (under noGrad) and the sums run in float64, and x+ / x- are the float32
 *    values actually stored;
 *  - every element is checked for small inputs (<= maxFullCheck elements), otherwise a seeded random
 *    sample of `samples` elements;
 *  - element i passes when |analytic - numeric| <= atol + scaleTol * scale + rtol * |numeric|, where
 *    scale is the largest |numeric| of that input (defaults 1e-5, 1e-3, 1e-2). Measured errors of
 *    the ts backend are 20-50x below these bounds; a gradient off by 2% is caught.
 * Perturbations touch the input's storage in place (bumping `version`) and are always restored.
 */
import assert from 'node:assert/strict';
import { backward, noGrad } from '../src/tensor/autograd.js';
import { Generator } from '../src/tensor/rng.js';
import { Tensor, numelOf, shapeStr } from '../src/tensor/tensor.js';

// ---- random tensors ------------------------------------------------------------------------

/** A tensor of N(0, scale^2) values from `gen` (does not require grad; chain .requiresGrad_()). */
export function randomTensor(shape: readonly number[], gen: Generator, scale = 1): Tensor {
  const data = new Float32Array(numelOf(shape));
  for (let i = 0; i < data.length; i++) data[i] = gen.normal() * scale;
  return new Tensor(shape, data);
}

/** N(0, scale^2) values pushed away from zero: every |v| >= minAbs (for kinks at 0: relu). */
export function randomTensorAwayFromZero(shape: readonly number[], gen: Generator, minAbs: number, scale = 1): Tensor {
  const t = randomTensor(shape, gen, scale);
  const d = t.values;
  for (let i = 0; i < d.length; i++) d[i] = Math.sign(d[i]! || 1) * (Math.abs(d[i]!) + minAbs);
  return t;
}

/**
 * All-distinct values, a shuffled arithmetic progression centred on 0 with step `spacing`: no two
 * elements are closer than `spacing` (for max pooling, where ties and near-ties break gradients).
 */
export function distinctValuesTensor(shape: readonly number[], gen: Generator, spacing: number): Tensor {
  const n = numelOf(shape);
  const perm = gen.permutation(n);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = (perm[i]! - (n - 1) / 2) * spacing;
  return new Tensor(shape, data);
}

/** A flat array of N(0, 1) float32 values. */
export function randomArray(n: number, gen: Generator, scale = 1): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = gen.normal() * scale;
  return a;
}

// ---- closeness -------------------------------------------------------------------------------

export interface Tolerance {
  rtol: number;
  atol: number;
}

/** "[1, 0, 3]" for flat index `i` of an array of `shape` (or just "i" without a shape). */
export function formatIndex(i: number, shape?: readonly number[]): string {
  if (!shape || shape.length === 0) return String(i);
  const idx: number[] = new Array(shape.length);
  let r = i;
  for (let k = shape.length - 1; k >= 0; k--) {
    idx[k] = r % shape[k]!;
    r = Math.floor(r / shape[k]!);
  }
  return `${i} [${idx.join(', ')}]`;
}

/**
 * Asserts |actual[i] - expected[i]| <= atol + rtol * |expected[i]| for every i (NaN never passes
 * unless both sides are NaN and `equalNan`). On failure the message names the number of bad
 * elements and the worst one (largest |diff| / tolerance) with both values.
 */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tol: Tolerance,
  message = 'values differ',
  opts: { shape?: readonly number[]; equalNan?: boolean; label?: (i: number) => string } = {},
): void {
  assert.equal(actual.length, expected.length, `${message}: length ${actual.length} != expected length ${expected.length}`);
  let bad = 0;
  let worst = -1;
  let worstRatio = -1;
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i]!;
    const e = expected[i]!;
    let ratio: number;
    if (Number.isNaN(a) || Number.isNaN(e)) {
      ratio = opts.equalNan && Number.isNaN(a) && Number.isNaN(e) ? 0 : Infinity;
    } else if (a === e) {
      ratio = 0; // covers equal infinities
    } else {
      ratio = Math.abs(a - e) / (tol.atol + tol.rtol * Math.abs(e));
      if (Number.isNaN(ratio)) ratio = Infinity;
    }
    if (ratio > 1) bad++;
    if (ratio > worstRatio) {
      worstRatio = ratio;
      worst = i;
    }
  }
  if (bad > 0) {
    const a = actual[worst]!;
    const e = expected[worst]!;
    assert.fail(
      `${message}: ${bad} of ${actual.length} elements outside rtol=${tol.rtol}, atol=${tol.atol}; ` +
        `worst at index ${opts.label ? opts.label(worst) : formatIndex(worst, opts.shape)}: actual ${a}, expected ${e}, |diff| ${Math.abs(a - e)} ` +
        `(${worstRatio.toPrecision(3)}x the tolerance)`,
    );
  }
}

// ---- gradient checking -----------------------------------------------------------------------

export interface GradCheckOptions {
  /** Finite-difference step (default 1e-2: float32 forwards need a large step). */
  h?: number;
  /** Relative tolerance on |analytic - numeric| (default 1e-2). */
  rtol?: number;
  /** Absolute tolerance floor (default 1e-5). */
  atol?: number;
  /**
   * Absolute tolerance relative to the input's gradient scale (the largest |numeric| among its
   * checked elements), added to `atol` (default 1e-3): float32 rounding noise in the finite
   * difference grows with the size of the gradients, not with each element's own size.
   */
  scaleTol?: number;
  /** Inputs with at most this many elements are checked in full (default 300). */
  maxFullCheck?: number;
  /** Elements sampled from larger inputs (default 50). */
  samples?: number;
  /** Seed of R and of the element sampling (default 0). */
  seed?: number;
  /** Name used in failure messages. */
  name?: string;
}

export interface InputGradReport {
  input: number;
  checked: number;
  maxAbsErr: number;
  /** max |analytic - numeric| / max(|numeric|, 1e-3 * scale), where scale = max |numeric|. */
  maxRelErr: number;
  /** Largest |numeric| among checked elements. */
  scale: number;
}

export interface GradCheckReport {
  inputs: InputGradReport[];
  /** Number of perturbed forward evaluations. */
  evaluations: number;
}

/** L = sum(y * r) in float64. */
function dot64(y: Float32Array, r: Float32Array): number {
  let s = 0;
  for (let i = 0; i < y.length; i++) s += y[i]! * r[i]!;
  return s;
}

function chooseIndices(n: number, maxFull: number, samples: number, gen: Generator): number[] {
  if (n <= maxFull) return Array.from({ length: n }, (_, i) => i);
  return Array.from(gen.permutation(n).subarray(0, Math.min(samples, n))).sort((a, b) => a - b);
}

/**
 * Compares the analytic gradients of `fn` with central differences for every input that requires
 * grad (see the file comment). Leaves each input's analytic gradient in `.grad` (any previous
 * `.grad` is cleared first). Throws an AssertionError naming the input, element and both values on
 * the first input whose gradient mismatches; returns per-input error statistics otherwise.
 */
export function checkGradients(fn: (...ts: Tensor[]) => Tensor, inputs: Tensor[], opts: GradCheckOptions = {}): GradCheckReport {
  const h = opts.h ?? 1e-2;
  const rtol = opts.rtol ?? 1e-2;
  const atol = opts.atol ?? 1e-5;
  const scaleTol = opts.scaleTol ?? 1e-3;
  const maxFull = opts.maxFullCheck ?? 300;
  const samples = opts.samples ?? 50;
  const seed = opts.seed ?? 0;
  const name = opts.name ?? 'checkGradients';

  const checked = inputs.map((t, i) => ({ t, i })).filter(({ t }) => t.requiresGrad);
  assert.ok(checked.length > 0, `${name}: no input requires grad, nothing to check`);
  for (const t of inputs) t.grad = null;

  // Analytic: backward(y, R).
  const y = fn(...inputs);
  assert.ok(y.requiresGrad && y.gradFn !== null, `${name}: the output is not attached to the graph`);
  const rGen = new Generator(seed * 7919 + 1);
  const r = randomArray(y.numel, rGen);
  const yForward = y.values.slice();
  backward(y, r.slice());
  for (const [i, t] of inputs.entries()) {
    if (!t.requiresGrad) assert.equal(t.grad, null, `${name}: input ${i} does not require grad but received one`);
  }

  // The forward must be a pure function of the inputs (no hidden state such as running stats
  // leaking into the output), or finite differences would measure something else.
  const evalLoss = (): number => noGrad(() => dot64(fn(...inputs).values, r));
  const yAgain = noGrad(() => fn(...inputs).values.slice());
  assertClose(yAgain, yForward, { rtol: 1e-6, atol: 1e-7 }, `${name}: the forward is not repeatable`);

  const sampler = new Generator(seed * 104729 + 2);
  const report: GradCheckReport = { inputs: [], evaluations: 0 };
  for (const { t, i } of checked) {
    const data = t.values;
    const analytic = t.grad ?? new Float32Array(t.numel); // no gradient reaching it = zero gradient
    assert.equal(analytic.length, t.numel, `${name}: gradient of input ${i} has the wrong length`);
    const idx = chooseIndices(t.numel, maxFull, samples, sampler);
    const numeric = new Float64Array(idx.length);
    const got = new Float64Array(idx.length);
    for (let k = 0; k < idx.length; k++) {
      const j = idx[k]!;
      const orig = data[j]!;
      try {
        data[j] = orig + h;
        const xp = data[j]!;
        t.version++;
        const lp = evalLoss();
        data[j] = orig - h;
        const xm = data[j]!;
        t.version++;
        const lm = evalLoss();
        numeric[k] = (lp - lm) / (xp - xm);
      } finally {
        data[j] = orig;
        t.version++;
      }
      got[k] = analytic[j]!;
      report.evaluations += 2;
    }
    let scale = 0;
    for (const v of numeric) scale = Math.max(scale, Math.abs(v));
    let maxAbsErr = 0;
    let maxRelErr = 0;
    for (let k = 0; k < idx.length; k++) {
      const e = Math.abs(got[k]! - numeric[k]!);
      maxAbsErr = Math.max(maxAbsErr, e);
      maxRelErr = Math.max(maxRelErr, e / Math.max(Math.abs(numeric[k]!), 1e-3 * scale, 1e-12));
    }
    assertClose(
      got,
      numeric,
      { rtol, atol: atol + scaleTol * scale },
      `${name}: gradient mismatch for input ${i} ${shapeStr(t.shape)} (analytic vs numeric, h=${h}, ` +
        `${idx.length === t.numel ? 'all' : `${idx.length} sampled`} elements checked)`,
      // Name the element by its position in the input, not in the sample.
      { label: (k) => formatIndex(idx[k]!, t.shape) },
    );
    report.inputs.push({ input: i, checked: idx.length, maxAbsErr, maxRelErr, scale });
  }
  return report;
}

/** Runs fn(isa, select) with the native addon's instruction-set switch (its isa(): select(2) asks for
 * the AVX2 kernels, as RESNET_ISA=avx2 does, and returns what is in use), restoring the selection
 * after. Needs the native addon. */
async function restoringIsa(fn: (isa: string, select: (level: number) => string) => void): Promise<void> {
  const { loadBinding } = await import('../src/backends/native/binding.js');
  const b = loadBinding().binding!;
  const original = b.isa();
  try {
    fn(original, (level) => b.isa(level));
  } finally {
    b.isa(0);
    assert.equal(b.isa(), original);
  }
}

/** Runs fn on the native kernels as selected and, where those are AVX-512, again with the AVX2 ones
 * (the AVX2 convolution paths, the batch norm with 8 lanes instead of 16), restoring the selection
 * after. Needs the native addon. */
export function withEachIsa(fn: (isa: string) => void): Promise<void> {
  return restoringIsa((original, select) => {
    fn(original);
    if (original === 'avx512' && select(2) === 'avx2') fn('avx2');
  });
}

/** Runs fn with the AVX2 kernels selected, restoring the selection after; nothing where this CPU
 * lacks AVX2. Needs the native addon. */
export function withAvx2(fn: () => void): Promise<void> {
  return restoringIsa((_original, select) => {
    if (select(2) === 'avx2') fn();
  });
}
