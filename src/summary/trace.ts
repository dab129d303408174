/**
 * Traces one forward pass of a model on a *meta* input (shapes only, no arithmetic), recording
 * every module call: which module, its dotted name, nesting depth, input and output shapes, and
 * the order calls started and finished. Both summaries are views of this trace.
 */
import { ShapeError } from '../errors.js';
import { Module, registerGlobalForwardHook, registerGlobalForwardPreHook } from '../nn/module.js';
import { Tensor, meta } from '../tensor/tensor.js';
import { noGrad } from '../tensor/autograd.js';

export interface CallRecord {
  module: Module;
  /** Dotted attribute path ("layer1.0.conv1"); "" for the model itself. */
  name: string;
  depth: number;
  inputShape: readonly number[];
  outputShape: readonly number[];
  /** Index in pre-order (call start) and post-order (call end, the order hooks fire). */
  startIndex: number;
  endIndex: number;
  /** Records of the calls made inside this one. */
  children: CallRecord[];
}

/** Checks a [C, H, W]-like input size given by a user. */
export function checkInputSize(inputSize: readonly number[]): void {
  if (inputSize.length === 0 || !inputSize.every((d) => Number.isInteger(d) && d >= 1)) {
    throw new ShapeError(`input size must be positive integers like [3, 224, 224], got [${inputSize.join(', ')}]`);
  }
}

/** Runs `model` on a meta tensor of shape [batch, ...inputSize] and returns the root call. */
export function trace(model: Module, inputSize: readonly number[], batch: number): CallRecord {
  checkInputSize(inputSize);
  const names = new Map<Module, string>();
  for (const [n, m] of model.namedModules()) if (!names.has(m)) names.set(m, n);
  const stack: CallRecord[] = [];
  let roots: CallRecord[] = [];
  let starts = 0;
  let ends = 0;
  const pre = registerGlobalForwardPreHook((m, x) => {
    const rec: CallRecord = { module: m, name: names.get(m) ?? '?', depth: stack.length, inputShape: x.shape, outputShape: [], startIndex: starts++, endIndex: -1, children: [] };
    (stack.length ? stack[stack.length - 1]!.children : roots).push(rec);
    stack.push(rec);
  });
  const post = registerGlobalForwardHook((_m, _x, y) => {
    const rec = stack.pop()!;
    rec.outputShape = y.shape;
    rec.endIndex = ends++;
  });
  const wasTraining = model.modules().map((m) => m.training);
  try {
    // Eval mode: shapes are the same, and batch norm needs no batch statistics for a batch of 1.
    model.eval();
    noGrad(() => model.call(meta([batch, ...inputSize]) as Tensor));
  } finally {
    pre.remove();
    post.remove();
    model.modules().forEach((m, i) => (m.training = wasTraining[i]!));
  }
  if (roots.length !== 1) throw new Error(`internal: trace expected one root call, got ${roots.length}`);
  const root = roots[0]!;
  roots = [];
  return root;
}

/** All records of a trace, in pre-order (or post-order: the order forward hooks fire). */
export function flatten(root: CallRecord, order: 'pre' | 'post' = 'pre'): CallRecord[] {
  const out: CallRecord[] = [];
  const walk = (r: CallRecord): void => {
    if (order === 'pre') out.push(r);
    r.children.forEach(walk);
    if (order === 'post') out.push(r);
  };
  walk(root);
  return out;
}
