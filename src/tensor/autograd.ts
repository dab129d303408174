/**
 * Reverse-mode automatic differentiation.
 *
 * Each differentiable op records a GradFn on its output: the inputs it read and a closure that maps
 * the output's gradient to its inputs' gradients (the rule sits beside the forward, in src/ops).
 * backward() sorts the graph topologically from the root and runs each closure once, summing the
 * gradients of tensors used more than once. Leaves that require grad accumulate into `.grad`
 * (as PyTorch does, so gradient accumulation across micro-batches works).
 *
 * Not here: higher-order gradients (gradients are plain Float32Arrays, not tensors in the graph).
 */
import { ShapeError, UsageError } from '../errors.js';
import { kernels } from '../kernels/registry.js';
import { Tensor, fitRecycleCap, markRecycled, recycle, shapeStr, trackAllocations, uninitialized } from './tensor.js';

export interface GradFn {
  /** Op name, for error messages and graph inspection ("conv2d", "add", ...). */
  readonly name: string;
  readonly inputs: readonly Tensor[];
  /**
   * Given dL/d(output), returns dL/d(input) for each input (null where `needs[i]` is false).
   * The returned arrays may be fresh or owned by the closure; the engine does not mutate them
   * unless it allocated them. `sums`, when given, lets an op fold the sum for an input used more than
   * once into its own pass: `sums.pending[i]` is the gradient summed so far for input i (read only);
   * an op may return, in a fresh array, its gradient plus that sum, and say so with
   * `sums.added[i] = true` (conv2d does, in its kernels' epilogue: a residual block's input).
   */
  backward(gradOutput: Float32Array, needs: readonly boolean[], sums?: PendingSums): (Float32Array | null)[];
  /**
   * Buffers from uninitialized() that the op keeps for its backward besides its inputs and output (a
   * relu's mask as bits): backward's recycleActivations gives them back with the graph's
   * intermediates.
   */
  readonly saved?: readonly Float32Array[];
}

/** See GradFn.backward. */
export interface PendingSums {
  readonly pending: readonly (Float32Array | undefined)[];
  readonly added: boolean[];
}

let gradDisabled = 0;

/** Whether ops currently record the graph. */
export function isGradEnabled(): boolean {
  return gradDisabled === 0;
}

/** Runs `fn` without recording any graph (inference, optimiser updates). */
export function noGrad<T>(fn: () => T): T {
  gradDisabled++;
  try {
    return fn();
  } finally {
    gradDisabled--;
  }
}

/**
 * Attaches a GradFn to `out` if grad mode is on and any input requires grad.
 * Returns `out` for chaining.
 */
export function record(out: Tensor, name: string, inputs: readonly Tensor[], backward: GradFn['backward'], saved?: readonly Float32Array[]): Tensor {
  if (gradDisabled > 0 || out.isMeta) return out;
  if (!inputs.some((t) => t.requiresGrad)) return out;
  out.requiresGrad = true;
  out.gradFn = saved === undefined ? { name, inputs, backward } : { name, inputs, backward, saved };
  return out;
}

/** Topological order (inputs before outputs) of the graph that produced `root`. */
function topoOrder(root: Tensor): Tensor[] {
  const order: Tensor[] = [];
  const seen = new Set<Tensor>();
  // Iterative DFS: ResNet-152 graphs are deep enough to trouble a recursive one.
  const stack: [Tensor, number][] = [[root, 0]];
  seen.add(root);
  while (stack.length > 0) {
    const top = stack[stack.length - 1]!;
    const [t, i] = top;
    const inputs = t.gradFn?.inputs ?? [];
    if (i < inputs.length) {
      top[1] = i + 1;
      const child = inputs[i]!;
      if (child.requiresGrad && !seen.has(child)) {
        seen.add(child);
        stack.push([child, 0]);
      }
    } else {
      order.push(t);
      stack.pop();
    }
  }
  return order;
}

export interface BackwardOptions {
  /** Keep the graph for another backward() through it (as PyTorch's retain_graph). */
  retainGraph?: boolean;
  /**
   * Declares the graph's intermediate tensors dead once the gradients are computed: their buffers
   * go back to the allocator that makes the next ones (a training step then allocates almost
   * nothing, and V8 stops collecting garbage for it), and reading one of those tensors afterwards
   * throws. Untouched: the root, leaves (parameters, inputs), tensors listed in `keep`, tensors with
   * gradient hooks or retainGrad(), and any buffer a leaf shares (views of parameters). Tensors that
   * share storage with a recycled one outside the graph (`detach()`) see it reused: do not keep
   * them either. Not with retainGraph.
   */
  recycleActivations?: boolean;
  /** With recycleActivations: intermediates to leave alone (logits you read after backward). */
  keep?: readonly Tensor[];
}

/**
 * Computes gradients of `root` with respect to every leaf that requires grad.
 * `gradOutput` defaults to 1 for a one-element root (a loss).
 */
export function backward(root: Tensor, gradOutput?: Float32Array, opts: BackwardOptions = {}): void {
  if (opts.recycleActivations && opts.retainGraph) {
    throw new UsageError('backward(): recycleActivations frees the tensors a retained graph would need; pass one of the two');
  }
  if (opts.keep !== undefined && !opts.recycleActivations) {
    throw new UsageError('backward(): keep only applies with recycleActivations: true');
  }
  if (opts.keep !== undefined && !(Array.isArray(opts.keep) && opts.keep.every((t) => t instanceof Tensor))) {
    throw new UsageError('backward(): keep must be an array of tensors');
  }
  if (!root.requiresGrad) {
    throw new ShapeError('backward(): this tensor does not require grad (was it computed under noGrad, or from no parameters?)');
  }
  if (root.isMeta) throw new ShapeError('backward(): cannot differentiate a meta tensor');
  let seed = gradOutput;
  if (seed === undefined) {
    if (root.numel !== 1) {
      throw new ShapeError(`backward(): gradOutput is required for a non-scalar output of shape ${shapeStr(root.shape)}`);
    }
    seed = new Float32Array([1]);
  } else if (seed.length !== root.numel) {
    throw new ShapeError(`backward(): gradOutput has ${seed.length} elements, output ${shapeStr(root.shape)} has ${root.numel}`);
  }

  const order = topoOrder(root);
  const grads = new Map<Tensor, Float32Array>();
  // Arrays the engine allocated itself may be summed into in place; others belong to an op.
  const owned = new Set<Float32Array>();
  grads.set(root, seed);
  // Gradient arrays made during this backward (by the ops' backward functions or the sums here):
  // once consumed and held by nobody else, they go back to uninitialized() for the next ones.
  const made = new Set<Float32Array>();
  const outer = trackAllocations(made);
  try {
    walk(order, grads, owned, made, opts);
  } finally {
    trackAllocations(outer);
  }
  if (opts.recycleActivations) recycleIntermediates(order, root, opts.keep ?? []);
}

/** backward's recycleActivations: takes the storage of every intermediate of the (used) graph. */
function recycleIntermediates(order: readonly Tensor[], root: Tensor, keep: readonly Tensor[]): void {
  const kept = new Set<ArrayBufferLike>();
  for (const t of order) {
    if (t.gradFn === null || t === root || t.hooks.length > 0 || t.retainsGrad || keep.includes(t)) kept.add(t.values.buffer);
  }
  const taken = new Set<ArrayBufferLike>();
  const give: Float32Array[] = [];
  for (const t of order) {
    const fn = t.gradFn;
    if (fn?.saved !== undefined) {
      // an op's own saved buffers: dead with the graph, whether or not its output is kept
      for (const d of fn.saved) {
        if (kept.has(d.buffer) || taken.has(d.buffer)) continue;
        taken.add(d.buffer);
        give.push(d);
      }
      t.gradFn = { name: fn.name, inputs: fn.inputs, backward: fn.backward };
    }
    const d = t.values;
    if (kept.has(d.buffer)) continue;
    if (!taken.has(d.buffer)) {
      taken.add(d.buffer);
      give.push(d);
    }
    markRecycled(t);
  }
  fitRecycleCap(give.reduce((a, d) => a + d.byteLength, 0));
  for (const d of give) recycle(d);
}

function walk(order: Tensor[], grads: Map<Tensor, Float32Array>, owned: Set<Float32Array>, made: Set<Float32Array>, opts: BackwardOptions): void {
  for (let k = order.length - 1; k >= 0; k--) {
    const t = order[k]!;
    let g = grads.get(t);
    if (g === undefined) continue;
    grads.delete(t);
    for (const hook of t.hooks) {
      const r = hook(g);
      if (r) g = r;
    }
    const fn = t.gradFn;
    if (fn === null) {
      if (t.grad === null && unshared(g, t, grads, made)) {
        t.grad = g; // nobody else holds g: the leaf takes it instead of a copy (PyTorch's AccumulateGrad steals too)
        made.delete(g);
        owned.delete(g);
      } else {
        accumulate(t, g); // copies or adds g: it is consumed
        release(g, t, grads, owned, made);
      }
      for (const hook of t.postAccumulateGradHooks) hook(t);
      continue;
    }
    if (t.retainsGrad) accumulate(t, g); // accumulates across backward calls, like PyTorch's retain_grad
    const needs = fn.inputs.map((x) => x.requiresGrad);
    const sums = pendingSums(fn.inputs, needs, grads);
    const inGrads = fn.backward(g, needs, sums);
    for (let i = 0; i < fn.inputs.length; i++) {
      const x = fn.inputs[i]!;
      const gx = inGrads[i];
      if (!needs[i] || gx == null) continue;
      if (gx.length !== x.numel) {
        throw new Error(`internal: ${fn.name} backward returned ${gx.length} gradients for an input of ${x.numel}`);
      }
      const prev = grads.get(x);
      if (sums.added[i] === true && prev !== undefined && prev === sums.pending[i] && gx !== prev) {
        // the op returned its gradient plus the sum so far, in a fresh array: that is the sum now
        grads.set(x, gx);
        owned.add(gx);
        release(prev, x, grads, owned, made);
        continue;
      }
      if (prev === undefined) {
        // An op may hand the same array to several inputs (add returns [g, g]); it must then
        // never be summed into in place, so it stops being "owned".
        grads.set(x, gx);
        owned.delete(gx);
      } else if (owned.has(prev)) {
        addInto(prev, gx);
      } else {
        const sum = uninitialized(prev.length);
        kernels().add(sum, prev, gx);
        owned.add(sum);
        grads.set(x, sum);
      }
    }
    if (!opts.retainGraph) t.gradFn = freed(fn);
    release(g, t, grads, owned, made);
  }
}

/** The gradients summed so far for an op's inputs (GradFn.backward's sums), for inputs that appear
 * once among its inputs. */
function pendingSums(inputs: readonly Tensor[], needs: readonly boolean[], grads: Map<Tensor, Float32Array>): PendingSums {
  const pending = inputs.map((x, i) => (needs[i] && inputs.indexOf(x) === inputs.lastIndexOf(x) ? grads.get(x) : undefined));
  return { pending, added: [] };
}

/** t's gradient g is consumed: its buffer is reused unless this backward did not make it, a hook saw
 * it (and may keep it), or another tensor's pending gradient is the same array (add hands g on to
 * its inputs; a gradient summed into another one has been read by then). */
function release(g: Float32Array, t: Tensor, grads: Map<Tensor, Float32Array>, owned: Set<Float32Array>, made: Set<Float32Array>): void {
  if (!unshared(g, t, grads, made)) return;
  made.delete(g);
  owned.delete(g);
  recycle(g);
}

/** Whether nothing but the engine holds t's gradient g (see release). */
function unshared(g: Float32Array, t: Tensor, grads: Map<Tensor, Float32Array>, made: Set<Float32Array>): boolean {
  if (!made.has(g) || t.hooks.length > 0) return false;
  for (const v of grads.values()) if (v.buffer === g.buffer) return false;
  return true;
}

/** Replaces a used GradFn so that its saved tensors can be collected; a second backward fails clearly. */
function freed(fn: GradFn): GradFn {
  return {
    name: fn.name,
    inputs: fn.inputs,
    ...(fn.saved === undefined ? {} : { saved: fn.saved }),
    backward() {
      throw new ShapeError(
        `backward(): the graph through "${fn.name}" was already freed by an earlier backward(); pass {retainGraph: true} to the first call`,
      );
    },
  };
}

function accumulate(leaf: Tensor, g: Float32Array): void {
  if (leaf.grad === null) leaf.grad = g.slice();
  else addInto(leaf.grad, g);
}

/** dst += src, through the active backend's add kernel (native: vectorised and threaded). */
function addInto(dst: Float32Array, src: Float32Array): void {
  kernels().add(dst, dst, src);
}
