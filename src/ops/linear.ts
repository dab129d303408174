/** linear (y = x W^T + b) through the kernel GEMM. */
import { ShapeError } from '../errors.js';
import { record } from '../tensor/autograd.js';
import { Tensor, shapeStr, uninitialized } from '../tensor/tensor.js';
import { kernels } from '../kernels/registry.js';
import { expectRank, output } from './util.js';

export function linear(x: Tensor, w: Tensor, b: Tensor | null = null): Tensor {
  expectRank('linear', 'input', x, 2, 'N, in_features');
  expectRank('linear', 'weight', w, 2, 'out_features, in_features');
  const [m, kIn] = x.shape as [number, number];
  const [nOut, kW] = w.shape as [number, number];
  if (kIn !== kW) {
    throw new ShapeError(`linear: input ${shapeStr(x.shape)} has ${kIn} features but weight ${shapeStr(w.shape)} expects ${kW}`);
  }
  if (b !== null && (b.ndim !== 1 || b.shape[0] !== nOut)) {
    throw new ShapeError(`linear: bias must have shape [${nOut}], got ${shapeStr(b.shape)}`);
  }
  const y = output([m, nOut], [x, w, b]);
  if (y.isMeta) return y;
  const k = kernels();
  const yv = y.values;
  if (b !== null) for (let i = 0; i < m; i++) yv.set(b.values, i * nOut);
  k.gemm(yv, x.values, w.values, m, nOut, kIn, false, true, 1, b === null ? 0 : 1);
  return record(y, 'linear', b ? [x, w, b] : [x, w], (gy, needs) => {
    let gx: Float32Array | null = null;
    let gw: Float32Array | null = null;
    let gb: Float32Array | null = null;
    // beta 0: the GEMM writes every element (the kernel contract), so no zero-fill
    if (needs[0]) k.gemm((gx = uninitialized(m * kIn)), gy, w.values, m, kIn, nOut, false, false, 1, 0);
    if (needs[1]) k.gemm((gw = uninitialized(nOut * kIn)), gy, x.values, nOut, kIn, m, true, false, 1, 0);
    if (needs[2]) {
      gb = new Float32Array(nOut);
      for (let i = 0; i < m; i++) for (let j = 0; j < nOut; j++) gb[j]! += gy[i * nOut + j]!;
    }
    return [gx, gw, gb];
  });
}
