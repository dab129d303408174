/**
 * Reference 2-D convolution (forward, input-gradient, weight-gradient) in plain TypeScript.
 *
 * Direct loops, written for clarity first: for every (output channel, input channel, kernel tap)
 * the innermost loop walks a contiguous output row, with the valid column range computed once per
 * tap so there is no bounds test per element. All three passes share `forEachTap`, so the
 * index arithmetic exists once.
 */
import type { Conv2dParams } from '../../kernels/kernels.js';

type TapFn = (yOff: number, xOff: number, wIdx: number, oxStart: number, oxEnd: number, xStep: number) => void;

/**
 * Calls `fn` once per (batch, output channel, input channel, tap, output row) with:
 * yOff  - offset of output row start in y (n, co, oy, 0);
 * xOff  - offset in x of the input element feeding output column 0 of that row (may be "virtual");
 * wIdx  - index of the weight;
 * oxStart/oxEnd - the valid output columns; xStep - the input stride between output columns.
 */
function forEachTap(p: Conv2dParams, fn: TapFn): void {
  const { n, cIn, h, w, cOut, kh, kw, sh, sw, ph, pw, dh, dw, groups, oh, ow } = p;
  const cinG = cIn / groups;
  const coutG = cOut / groups;
  for (let b = 0; b < n; b++) {
    for (let co = 0; co < cOut; co++) {
      const g = Math.floor(co / coutG);
      const yPlane = (b * cOut + co) * oh * ow;
      for (let ci = 0; ci < cinG; ci++) {
        const xPlane = (b * cIn + g * cinG + ci) * h * w;
        for (let ky = 0; ky < kh; ky++) {
          for (let kx = 0; kx < kw; kx++) {
            const wIdx = ((co * cinG + ci) * kh + ky) * kw + kx;
            const colShift = kx * dw - pw;
            // valid ox: 0 <= ox*sw + colShift < w
            const oxStart = Math.max(0, Math.ceil(-colShift / sw));
            const oxEnd = Math.min(ow, Math.floor((w - 1 - colShift) / sw) + 1);
            if (oxStart >= oxEnd) continue;
            for (let oy = 0; oy < oh; oy++) {
              const iy = oy * sh - ph + ky * dh;
              if (iy < 0 || iy >= h) continue;
              fn(yPlane + oy * ow, xPlane + iy * w + colShift, wIdx, oxStart, oxEnd, sw);
            }
          }
        }
      }
    }
  }
}

export function conv2d(y: Float32Array, x: Float32Array, w: Float32Array, bias: Float32Array | null, p: Conv2dParams): void {
  const plane = p.oh * p.ow;
  for (let b = 0; b < p.n; b++) {
    for (let co = 0; co < p.cOut; co++) {
      const off = (b * p.cOut + co) * plane;
      y.fill(bias === null ? 0 : bias[co]!, off, off + plane);
    }
  }
  forEachTap(p, (yOff, xOff, wIdx, s, e, step) => {
    const wv = w[wIdx]!;
    for (let ox = s; ox < e; ox++) y[yOff + ox]! += wv * x[xOff + ox * step]!;
  });
}

export function conv2dBackwardInput(dx: Float32Array, dy: Float32Array, w: Float32Array, p: Conv2dParams, addend: Float32Array | null = null): void {
  const out = addend === dx ? new Float32Array(dx.length) : dx.fill(0);
  forEachTap(p, (yOff, xOff, wIdx, s, e, step) => {
    const wv = w[wIdx]!;
    for (let ox = s; ox < e; ox++) out[xOff + ox * step]! += wv * dy[yOff + ox]!;
  });
  if (addend) for (let i = 0; i < dx.length; i++) dx[i] = addend[i]! + out[i]!; // as autograd's add(sum, gradient)
}

export function conv2dBackwardWeight(dw: Float32Array, x: Float32Array, dy: Float32Array, p: Conv2dParams): void {
  dw.fill(0);
  forEachTap(p, (yOff, xOff, wIdx, s, e, step) => {
    let acc = 0;
    for (let ox = s; ox < e; ox++) acc += dy[yOff + ox]! * x[xOff + ox * step]!;
    dw[wIdx]! += acc;
  });
}
