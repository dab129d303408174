/** batch_norm over dim 1 of an [N, C, ...] tensor, with PyTorch's running-statistics semantics. */
import { ShapeError } from '../errors.js';
import { record } from '../tensor/autograd.js';
import { Tensor, recycle, shapeStr, uninitialized } from '../tensor/tensor.js';
import { kernels } from '../kernels/registry.js';
import { conv2d, conv2dParams, liveWindow, type Conv2dOptions } from './conv.js';
import { output, sumPerChannel } from './util.js';

export interface BatchNormOptions {
  training: boolean;
  /** Running-stat update factor (PyTorch default 0.1); null = cumulative moving average. */
  momentum?: number | null;
  eps?: number;
  /** Only for momentum null: the count of batches seen so far, including this one. */
  numBatchesTracked?: number;
  /** Return relu(batch_norm(x)), computed in the same pass (forward and backward). */
  relu?: boolean;
  /** Added before the relu: batch_norm(x) + residual, a residual block's join, in the same pass in
   * training (in eval, after the eval kernel). Same shape as x. */
  residual?: Tensor;
}

/**
 * Training: normalises with the batch mean and biased variance; updates running_mean and
 * running_var (with the *unbiased* variance) in place, as torch.nn.functional.batch_norm does.
 * Eval: normalises with the running statistics.
 */
export function batchNorm(
  x: Tensor,
  runningMean: Tensor | null,
  runningVar: Tensor | null,
  weight: Tensor | null,
  bias: Tensor | null,
  o: BatchNormOptions,
): Tensor {
  const { n, c, hw } = checkBatchNorm(x, runningMean, runningVar, weight, bias, o);
  const res = o.residual;
  const y = output(x.shape, res ? [x, res] : [x]);
  if (y.isMeta || x.isMeta || res?.isMeta) return y;
  const p = { n, c, hw, eps: o.eps ?? 1e-5 };
  const fuse = o.relu === true;
  const k = kernels();
  const g = weight ? weight.values : null;
  const b = bias ? bias.values : null;
  let mean: Float32Array;
  let invStd: Float32Array;
  // the relu's mask as bits, where the backward cannot recompute it from x (a residual was added
  // before the relu): the backward then reads 1/32 of y's bytes for it, if the kernel wrote them.
  // Their buffer comes from uninitialized() (a kernel that writes bits writes every word), and goes
  // back at once where the kernel did not, or with the graph (GradFn.saved)
  let reluBits: Uint16Array | null = null;
  let bitsStore: Float32Array | null = null;
  if (o.training) {
    mean = new Float32Array(c);
    invStd = new Float32Array(c);
    const varU = new Float32Array(c);
    const words = n * c * Math.ceil(hw / 16);
    bitsStore = fuse && res ? uninitialized(Math.ceil(words / 2)) : null;
    const bits = bitsStore ? new Uint16Array(bitsStore.buffer, bitsStore.byteOffset, words) : null;
    if (k.batchNormTrain(y.values, mean, invStd, varU, x.values, g, b, p, fuse, res ? res.values : null, bits)) reluBits = bits;
    else if (bitsStore) {
      recycle(bitsStore);
      bitsStore = null;
    }
    updateRunningStats(runningMean, runningVar, mean, varU, o);
  } else {
    const rm = runningMean!.values;
    const rv = runningVar!.values;
    k.batchNormEval(y.values, x.values, rm, rv, g, b, p, fuse && !res);
    if (res && fuse) k.addRelu(y.values, y.values, res.values);
    else if (res) k.add(y.values, y.values, res.values);
    // Backward in eval needs the statistics as they were in forward.
    mean = rm.slice();
    invStd = rv.map((v) => 1 / Math.sqrt(v + p.eps));
  }
  const inputs = [x, ...(weight ? [weight] : []), ...(bias ? [bias] : []), ...(res ? [res] : [])];
  const name = `batch_norm${res ? '_add' : ''}${fuse ? '_relu' : ''}`;
  record(y, name, inputs, (gy, needs) => {
    const gx = uninitialized(x.numel); // the kernel computes dx with dgamma/dbeta in one pass
    const wantG = weight !== null && needs[1] === true;
    const wantB = bias !== null && needs[weight ? 2 : 1] === true;
    const dgamma = wantG ? new Float32Array(c) : null;
    const dbeta = wantB ? new Float32Array(c) : null;
    // with a residual the relu's masked gradient is the residual's as well: the kernel writes it
    // into gb from the pass that reads the mask (the relu's input, bn(x) + residual, cannot be
    // recomputed from x, so beta stays undefined and the mask is read)
    let gb = gy;
    if (res && fuse) {
      gb = uninitialized(gy.length);
      k.batchNormBackward(gx, dgamma, dbeta, gy, x.values, mean, invStd, g, o.training, p, y.values, undefined, gb, reluBits);
    } else {
      k.batchNormBackward(gx, dgamma, dbeta, gy, x.values, mean, invStd, g, o.training, p, fuse ? y.values : null, b);
    }
    const out: (Float32Array | null)[] = [needs[0] ? gx : null];
    if (weight) out.push(dgamma);
    if (bias) out.push(dbeta);
    if (res) out.push(needs[inputs.length - 1] ? gb : null);
    return out;
  }, bitsStore ? [bitsStore] : undefined);
  if (bitsStore && y.gradFn === null) recycle(bitsStore); // no graph recorded: no backward will read them
  return y;
}

/** Checks batchNorm's arguments (shapes, eval statistics, enough values per channel); returns the
 * kernel view [n, c, hw]. */
function checkBatchNorm(x: Tensor, runningMean: Tensor | null, runningVar: Tensor | null, weight: Tensor | null, bias: Tensor | null, o: BatchNormOptions): { n: number; c: number; hw: number } {
  if (x.ndim < 2) throw new ShapeError(`batch_norm: input must be at least 2-D (N, C, ...), got ${shapeStr(x.shape)}`);
  const n = x.shape[0]!;
  const c = x.shape[1]!;
  const hw = x.numel / Math.max(1, n * c);
  for (const [name, t] of [['running_mean', runningMean], ['running_var', runningVar], ['weight', weight], ['bias', bias]] as const) {
    if (t !== null && (t.ndim !== 1 || t.shape[0] !== c)) {
      throw new ShapeError(`batch_norm: ${name} must have shape [${c}] to match input ${shapeStr(x.shape)}, got ${shapeStr(t.shape)}`);
    }
  }
  if (!o.training && (runningMean === null || runningVar === null)) {
    throw new ShapeError('batch_norm: eval mode needs running_mean and running_var');
  }
  const res = o.residual;
  if (res !== undefined && (res.ndim !== x.ndim || res.shape.some((d, i) => d !== x.shape[i]))) {
    throw new ShapeError(`batch_norm: residual must have the input's shape ${shapeStr(x.shape)}, got ${shapeStr(res.shape)}`);
  }
  if (o.training && n * hw <= 1) {
    throw new ShapeError(`batch_norm: expected more than 1 value per channel when training, got input ${shapeStr(x.shape)}`);
  }
  return { n, c, hw };
}

/** The running statistics' update of a training batch norm (PyTorch's: the unbiased variance). */
function updateRunningStats(runningMean: Tensor | null, runningVar: Tensor | null, mean: Float32Array, varU: Float32Array, o: BatchNormOptions): void {
  if (!runningMean || !runningVar || runningMean.isMeta) return;
  const mom = o.momentum === null ? 1 / Math.max(1, o.numBatchesTracked ?? 1) : (o.momentum ?? 0.1);
  const rm = runningMean.values;
  const rv = runningVar.values;
  for (let i = 0; i < mean.length; i++) {
    rm[i] = (1 - mom) * rm[i]! + mom * mean[i]!;
    rv[i] = (1 - mom) * rv[i]! + mom * varU[i]!;
  }
  runningMean.version++;
  runningVar.version++;
}

/**
 * conv2d(relu(batchNorm(x, ...)), w, convBias, convOpts): a block's batch norm + ReLU and the 3x3
 * convolution after it. In training, where the backend's convolution applies the batch norm while it
 * reads x (Kernels.conv2dReadsBnRelu: the native NCHW Winograd path), the batch norm's output is
 * never stored: its pass only takes the statistics, the convolution and its weight gradient read x
 * through the per-channel scale and shift (and ReLU), and the backward recomputes the ReLU's mask from
 * x. The same values as the two ops (the convolution's input has the same bits), one elementwise pass
 * over the activation fewer each way. Elsewhere (eval, the reference backend, other geometries) it is
 * those two ops.
 */
export function batchNormReluConv2d(
  x: Tensor,
  runningMean: Tensor | null,
  runningVar: Tensor | null,
  weight: Tensor | null,
  bias: Tensor | null,
  o: Omit<BatchNormOptions, 'relu' | 'residual'>,
  w: Tensor,
  convBias: Tensor | null,
  convOpts: Conv2dOptions = {},
): Tensor {
  const unfused = (): Tensor => conv2d(batchNorm(x, runningMean, runningVar, weight, bias, { ...o, relu: true }), w, convBias, convOpts);
  if (!o.training || x.isMeta || w.isMeta || x.ndim !== 4) return unfused();
  const { n, c, hw } = checkBatchNorm(x, runningMean, runningVar, weight, bias, o);
  const p = conv2dParams(x, w, convBias, convOpts);
  const k = kernels();
  if (liveWindow(p) !== null || !k.conv2dReadsBnRelu(p)) return unfused();
  const bnp = { n, c, hw, eps: o.eps ?? 1e-5 };
  const g = weight ? weight.values : null;
  const b = bias ? bias.values : null;
  const mean = new Float32Array(c);
  const invStd = new Float32Array(c);
  const varU = new Float32Array(c);
  const pre = { scale: new Float32Array(c), shift: new Float32Array(c) };
  k.batchNormStats(mean, invStd, varU, pre.scale, pre.shift, x.values, g, b, bnp);
  updateRunningStats(runningMean, runningVar, mean, varU, o);
  const y = output([p.n, p.cOut, p.oh, p.ow], [x, w, convBias, weight, bias]);
  k.conv2d(y.values, x.values, w.values, convBias ? convBias.values : null, p, pre);
  const inputs = [x, w, ...(convBias ? [convBias] : []), ...(weight ? [weight] : []), ...(bias ? [bias] : [])];
  let at = 2;
  const iConvBias = convBias ? at++ : -1;
  const iGamma = weight ? at++ : -1;
  const iBeta = bias ? at++ : -1;
  return record(y, 'batch_norm_relu_conv2d', inputs, (gy, needs) => {
    const out: (Float32Array | null)[] = inputs.map(() => null);
    const wantG = iGamma >= 0 && needs[iGamma] === true;
    const wantB = iBeta >= 0 && needs[iBeta] === true;
    if (needs[0] || wantG || wantB) {
      // the gradient of the batch norm's (never stored) output, then through the batch norm, its
      // ReLU's mask recomputed from x
      const gBn = uninitialized(x.numel);
      k.conv2dBackwardInput(gBn, gy, w.values, p, null);
      const gx = uninitialized(x.numel);
      const dgamma = wantG ? new Float32Array(c) : null;
      const dbeta = wantB ? new Float32Array(c) : null;
      k.batchNormBackward(gx, dgamma, dbeta, gBn, x.values, mean, invStd, g, true, bnp, 'recompute', b);
      recycle(gBn);
      if (needs[0]) out[0] = gx;
      else recycle(gx);
      if (wantG) out[iGamma] = dgamma;
      if (wantB) out[iBeta] = dbeta;
    }
    if (needs[1]) {
      const gw = uninitialized(w.numel);
      k.conv2dBackwardWeight(gw, x.values, gy, p, pre);
      out[1] = gw;
    }
    if (iConvBias >= 0 && needs[iConvBias]) out[iConvBias] = sumPerChannel(gy, p.n, p.cOut, p.oh * p.ow);
    return out;
  });
}
