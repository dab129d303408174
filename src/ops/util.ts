/** Helpers shared by the op files: output allocation (meta-aware) and argument checks. */
import { ShapeError } from '../errors.js';
import { Tensor, shapeStr, uninitialized } from '../tensor/tensor.js';

/** Allocates an op's output: meta if any input is meta (shape inference only), else uninitialised
 * storage (every op writes its whole output). */
export function output(shape: readonly number[], inputs: readonly (Tensor | null)[]): Tensor {
  const isMeta = inputs.some((t) => t !== null && t.isMeta);
  return new Tensor(shape, isMeta ? null : uninitialized(shape.reduce((a, b) => a * b, 1)));
}

export function expectRank(op: string, what: string, t: Tensor, rank: number, layout = ''): void {
  if (t.ndim !== rank) {
    throw new ShapeError(`${op}: ${what} must be ${rank}-D${layout ? ` (${layout})` : ''}, got shape ${shapeStr(t.shape)}`);
  }
}

export function expectSameShape(op: string, a: Tensor, b: Tensor): void {
  if (a.ndim !== b.ndim || a.shape.some((d, i) => d !== b.shape[i])) {
    throw new ShapeError(`${op}: shapes ${shapeStr(a.shape)} and ${shapeStr(b.shape)} must be equal`);
  }
}

/** Normalises an int-or-pair argument ("stride: 2" or "stride: [2, 1]"). */
export function pair(op: string, name: string, v: number | readonly number[], min: number): [number, number] {
  const p: [number, number] = typeof v === 'number' ? [v, v] : [v[0] ?? NaN, v[1] ?? NaN];
  if ((typeof v !== 'number' && v.length !== 2) || !p.every((x) => Number.isInteger(x) && x >= min)) {
    throw new ShapeError(`${op}: ${name} must be an integer >= ${min} or a pair of them, got ${JSON.stringify(v)}`);
  }
  return p;
}

/** Sum of `g` over the batch and spatial dims, per channel: the gradient of a per-channel bias. */
export function sumPerChannel(g: Float32Array, n: number, c: number, hw: number): Float32Array {
  const out = new Float32Array(c);
  for (let b = 0; b < n; b++) {
    for (let ch = 0; ch < c; ch++) {
      let s = 0;
      const off = (b * c + ch) * hw;
      for (let i = 0; i < hw; i++) s += g[off + i]!;
      out[ch]! += s;
    }
  }
  return out;
}
