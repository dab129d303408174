/** log_softmax and cross_entropy (mean reduction, optional label smoothing), as in PyTorch. */
import { ShapeError } from '../errors.js';
import { record } from '../tensor/autograd.js';
import { Tensor, shapeStr } from '../tensor/tensor.js';
import { kernels } from '../kernels/registry.js';
import { expectRank, output } from './util.js';

/** Log-softmax over dim 1 of an [N, C] tensor. */
export function logSoftmax(x: Tensor): Tensor {
  expectRank('log_softmax', 'input', x, 2, 'N, C');
  const [rows, cols] = x.shape as [number, number];
  const y = output(x.shape, [x]);
  if (y.isMeta) return y;
  const k = kernels();
  k.logSoftmax(y.values, x.values, rows, cols);
  return record(y, 'log_softmax', [x], (gy) => {
    const gx = new Float32Array(x.numel);
    k.logSoftmaxBackward(gx, gy, y.values, rows, cols);
    return [gx];
  });
}

export interface CrossEntropyOptions {
  /** PyTorch's label_smoothing: the target becomes (1-e)·onehot + e/C. */
  labelSmoothing?: number;
}

/**
 * Mean cross-entropy of logits [N, C] against integer class targets (length N).
 * Equals F.cross_entropy(logits, target, label_smoothing=e) with reduction='mean'.
 */
export function crossEntropy(logits: Tensor, target: ArrayLike<number>, o: CrossEntropyOptions = {}): Tensor {
  expectRank('cross_entropy', 'logits', logits, 2, 'N, C');
  const [n, c] = logits.shape as [number, number];
  const eps = o.labelSmoothing ?? 0;
  if (!(eps >= 0 && eps <= 1)) throw new ShapeError(`cross_entropy: label_smoothing must be in [0, 1], got ${eps}`);
  if (target.length !== n) {
    throw new ShapeError(`cross_entropy: ${target.length} targets for logits of shape ${shapeStr(logits.shape)}`);
  }
  if (n === 0) throw new ShapeError('cross_entropy: empty batch');
  for (let i = 0; i < n; i++) {
    const t = target[i]!;
    if (!Number.isInteger(t) || t < 0 || t >= c) {
      throw new ShapeError(`cross_entropy: target ${i} is ${t}, expected an integer class in [0, ${c})`);
    }
  }
  const loss = output([], [logits]);
  if (loss.isMeta) return loss;
  const logp = new Float32Array(n * c);
  kernels().logSoftmax(logp, logits.values, n, c);
  let total = 0;
  for (let i = 0; i < n; i++) {
    let rowSum = 0;
    for (let j = 0; j < c; j++) rowSum += logp[i * c + j]!;
    total += -(1 - eps) * logp[i * c + target[i]!]! - (eps / c) * rowSum;
  }
  loss.values[0] = total / n;
  return record(loss, 'cross_entropy', [logits], (gy) => {
    const g = new Float32Array(n * c);
    const scale = gy[0]! / n;
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < c; j++) {
        const q = (j === target[i] ? 1 - eps : 0) + eps / c;
        g[i * c + j] = (Math.exp(logp[i * c + j]!) - q) * scale;
      }
    }
    return [g];
  });
}
