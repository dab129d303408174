/**
 * Stochastic gradient descent with torch.optim.SGD's exact semantics (PyTorch 1.13 / 2.x, without
 * `maximize`/`foreach`). For each parameter p with a gradient g, in parameter order:
 *
 *   d = g + weightDecay * p                                  (if weightDecay != 0)
 *   buf = d on the first step, else momentum*buf + (1-dampening)*d   (if momentum != 0)
 *   d = nesterov ? d + momentum*buf : buf                    (if momentum != 0)
 *   p -= lr * d
 *
 * Parameters whose `.grad` is null are skipped (their momentum buffer does not decay), as in
 * PyTorch. The arithmetic runs in the active backend's `sgdStep` kernel; this class owns the
 * bookkeeping: parameter groups, option validation (PyTorch's messages), momentum buffers and a
 * JSON-serialisable state dict in PyTorch's shape (state keyed by parameter index, then groups
 * holding their hyper-parameters and the indices of their parameters).
 */
import { zeroedFloats } from '../tensor/alloc.js';
import { StateDictError, UsageError } from '../errors.js';
import { kernels } from '../kernels/registry.js';
import type { Tensor } from '../tensor/tensor.js';
import { FusedUpdates, type FuseOptions, type FusedHandle } from './fused.js';

export interface SGDOptions {
  lr: number;
  momentum?: number;
  dampening?: number;
  weightDecay?: number;
  nesterov?: boolean;
}

/** A parameter group as passed to the constructor: options left out come from the defaults. */
export interface SGDParamGroupInput extends Partial<SGDOptions> {
  params: Tensor[];
}

/** A parameter group with every option resolved. Change `lr` here for per-group schedules. */
export interface SGDParamGroup {
  params: Tensor[];
  lr: number;
  momentum: number;
  dampening: number;
  weightDecay: number;
  nesterov: boolean;
}

/** Per-parameter state: the momentum buffer (when momentum != 0) and the updates applied. */
export interface SGDParamState {
  momentumBuffer?: number[];
  step: number;
}

/**
 * The serialisable state (JSON.stringify-able): `state` is keyed by the parameter's index in the
 * optimizer's order (groups in order, parameters in order within each group); `paramGroups` lists
 * each group's hyper-parameters and its parameter indices, as torch's optimizer.state_dict().
 */
export interface SGDStateDict {
  state: Record<string, SGDParamState>;
  paramGroups: { lr: number; momentum: number; dampening: number; weightDecay: number; nesterov: boolean; params: number[] }[];
}

interface ParamState {
  buf: Float32Array | null;
  step: number;
}

export class SGD {
  readonly paramGroups: SGDParamGroup[];
  private readonly state = new Map<Tensor, ParamState>();
  private readonly fused = new FusedUpdates('SGD');

  constructor(params: Tensor[] | SGDParamGroupInput[], opts: SGDOptions) {
    const defaults = resolve(opts, 'SGD');
    const list = params as (Tensor | SGDParamGroupInput)[];
    if (list.length === 0) throw new UsageError('optimizer got an empty parameter list');
    const isGroup = (x: Tensor | SGDParamGroupInput): x is SGDParamGroupInput => !('shape' in x) && Array.isArray((x as SGDParamGroupInput).params);
    const groups: SGDParamGroupInput[] = isGroup(list[0]!) ? (list as SGDParamGroupInput[]) : [{ params: list as Tensor[] }];
    if (groups.some((g) => !isGroup(g))) throw new UsageError('SGD: params must be a list of tensors or a list of {params: [...]} groups, not a mix');
    const seen = new Set<Tensor>();
    this.paramGroups = groups.map((g, i) => {
      const { params: ps, ...rest } = g;
      const group = { params: [...ps], ...resolve({ ...defaults, ...stripUndefined(rest) }, `SGD parameter group ${i}`) };
      for (const p of group.params) {
        if (seen.has(p)) throw new UsageError('some parameters appear in more than one parameter group');
        seen.add(p);
      }
      return group;
    });
  }

  /** The learning rate of the first group. */
  get lr(): number {
    return this.paramGroups[0]!.lr;
  }

  /** Sets the learning rate of every group (what a simple scheduler needs). */
  set lr(v: number) {
    checkLr(v);
    for (const g of this.paramGroups) g.lr = v;
  }

  /** All parameters, in the optimizer's index order (the keys of stateDict().state). */
  params(): Tensor[] {
    return this.paramGroups.flatMap((g) => g.params);
  }

  /** One update of every parameter that has a gradient. */
  step(): void {
    this.fused.checkStep();
    for (const g of this.paramGroups) {
      checkGroup(g, 'SGD');
      for (const p of g.params) this.update(g, p);
    }
  }

  /**
   * From now on, every backward() updates each parameter as soon as its gradient is complete
   * (src/optim/fused.ts): the same result as backward() then step(), with the gradients still in
   * cache; step() then throws. Not with gradient clipping or accumulation. The groups' options
   * (lr set by a scheduler) are read at each update. `freeGrads`: the gradients are given back right
   * after their update (FuseOptions). Returns the handle that ends it.
   */
  fuseIntoBackward(opts: FuseOptions = {}): FusedHandle {
    const groupOf = new Map<Tensor, SGDParamGroup>();
    for (const g of this.paramGroups) for (const p of g.params) groupOf.set(p, g);
    return this.fused.fuse(this.params(), (p) => {
      // every group, every time: an lr made invalid between steps then throws before any parameter
      // of this backward() has moved, not halfway through them
      for (const g of this.paramGroups) checkGroup(g, 'SGD');
      this.update(groupOf.get(p)!, p);
    }, opts);
  }

  /** Whether fuseIntoBackward() is in effect. */
  get isFused(): boolean {
    return this.fused.active;
  }

  private update(g: SGDParamGroup, p: Tensor): void {
    const grad = p.grad;
    if (grad === null) return;
    const param = p.values;
    if (grad.length !== param.length) {
      throw new UsageError(`SGD: a parameter of shape [${p.shape.join(', ')}] has a gradient of ${grad.length} elements`);
    }
    let st = this.state.get(p);
    if (st === undefined) {
      st = { buf: null, step: 0 };
      this.state.set(p, st);
    }
    let firstStep = false;
    if (g.momentum !== 0 && st.buf === null) {
      st.buf = zeroedFloats(param.length);
      firstStep = true;
    }
    // a convolution's live taps kept with the weights are cut in the update's own pass
    const window = p.keptWindow();
    const opts = { lr: g.lr, momentum: g.momentum, dampening: g.dampening, weightDecay: g.weightDecay, nesterov: g.nesterov, firstStep };
    kernels().sgdStep(param, grad, g.momentum !== 0 ? st.buf : null, opts, window);
    st.step++;
    p.version++;
    p.windowsUpdated(window?.dst ?? null);
  }

  /** Clears the gradients: null (the default, as PyTorch 2's set_to_none) or zero-filled. */
  zeroGrad(setToNone = true): void {
    for (const p of this.params()) {
      if (setToNone) p.grad = null;
      else p.grad?.fill(0);
    }
  }

  stateDict(): SGDStateDict {
    const index = new Map<Tensor, number>();
    this.params().forEach((p, i) => index.set(p, i));
    const state: Record<string, SGDParamState> = {};
    for (const [p, st] of this.state) {
      const i = index.get(p);
      if (i === undefined) continue;
      state[String(i)] = st.buf === null ? { step: st.step } : { momentumBuffer: Array.from(st.buf), step: st.step };
    }
    let next = 0;
    const paramGroups = this.paramGroups.map((g) => ({
      lr: g.lr,
      momentum: g.momentum,
      dampening: g.dampening,
      weightDecay: g.weightDecay,
      nesterov: g.nesterov,
      params: g.params.map(() => next++),
    }));
    return { state, paramGroups };
  }

  /**
   * Restores buffers, step counts and group hyper-parameters from stateDict() output (also after a
   * JSON round trip). The groups must have the same sizes, and each buffer its parameter's size.
   */
  loadStateDict(sd: SGDStateDict): void {
    if (sd === null || typeof sd !== 'object' || !Array.isArray(sd.paramGroups) || sd.state === null || typeof sd.state !== 'object') {
      throw new StateDictError('SGD state dict must be an object with "state" and "paramGroups"');
    }
    if (sd.paramGroups.length !== this.paramGroups.length) {
      throw new StateDictError(`loaded state dict has ${sd.paramGroups.length} parameter group(s), the optimizer has ${this.paramGroups.length}`);
    }
    const params = this.params();
    const groups = sd.paramGroups.map((lg, i) => {
      const own = this.paramGroups[i]!;
      if (!Array.isArray(lg.params) || lg.params.length !== own.params.length) {
        throw new StateDictError(`loaded state dict's parameter group ${i} has ${lg.params?.length ?? 0} parameter(s), the optimizer's has ${own.params.length}`);
      }
      return resolve({ lr: lg.lr, momentum: lg.momentum, dampening: lg.dampening, weightDecay: lg.weightDecay, nesterov: lg.nesterov }, `loaded parameter group ${i}`);
    });
    // Map the file's indices to our parameters through the groups (as PyTorch does).
    const byIndex = new Map<number, Tensor>();
    sd.paramGroups.forEach((lg, gi) => lg.params.forEach((idx, j) => byIndex.set(idx, this.paramGroups[gi]!.params[j]!)));
    const next = new Map<Tensor, ParamState>();
    for (const [key, st] of Object.entries(sd.state)) {
      const p = byIndex.get(Number(key));
      if (p === undefined) throw new StateDictError(`loaded state dict has state for parameter ${key}, which no group lists (the optimizer has ${params.length} parameters)`);
      const step = st.step ?? 0;
      if (!Number.isSafeInteger(step) || step < 0) throw new StateDictError(`parameter ${key}: step must be a non-negative integer, got ${String(st.step)}`);
      let buf: Float32Array | null = null;
      if (st.momentumBuffer !== undefined) {
        if (!Array.isArray(st.momentumBuffer) || st.momentumBuffer.length !== p.numel) {
          const n = Array.isArray(st.momentumBuffer) ? st.momentumBuffer.length : 'no';
          throw new StateDictError(`parameter ${key}: momentum buffer has ${n} elements, the parameter [${p.shape.join(', ')}] has ${p.numel}`);
        }
        buf = Float32Array.from(st.momentumBuffer);
      }
      next.set(p, { buf, step });
    }
    groups.forEach((g, i) => Object.assign(this.paramGroups[i]!, g));
    this.state.clear();
    for (const [p, st] of next) this.state.set(p, st);
  }
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

function resolve(o: Partial<SGDOptions>, what: string): Omit<SGDParamGroup, 'params'> {
  if (o.lr === undefined) throw new UsageError(`${what}: lr is required`);
  const g = {
    lr: o.lr,
    momentum: o.momentum ?? 0,
    dampening: o.dampening ?? 0,
    weightDecay: o.weightDecay ?? 0,
    nesterov: o.nesterov ?? false,
  };
  checkGroup(g, what);
  return g;
}

function checkLr(lr: number): void {
  if (typeof lr !== 'number' || !(lr >= 0)) throw new UsageError(`Invalid learning rate: ${lr}`);
}

/** PyTorch's checks and messages ("Invalid learning rate: -1"), plus finiteness. */
function checkGroup(g: Omit<SGDParamGroup, 'params'>, what: string): void {
  checkLr(g.lr);
  if (typeof g.momentum !== 'number' || !(g.momentum >= 0)) throw new UsageError(`Invalid momentum value: ${g.momentum}`);
  if (typeof g.weightDecay !== 'number' || !(g.weightDecay >= 0)) throw new UsageError(`Invalid weight_decay value: ${g.weightDecay}`);
  if (typeof g.dampening !== 'number' || Number.isNaN(g.dampening)) throw new UsageError(`${what}: dampening must be a number, got ${g.dampening}`);
  if (g.nesterov && (g.momentum <= 0 || g.dampening !== 0)) throw new UsageError('Nesterov momentum requires a momentum and zero dampening');
}
