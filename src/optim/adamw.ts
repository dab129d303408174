/**
 * AdamW with torch.optim.AdamW's semantics (decoupled weight decay, bias-corrected moments, no
 * amsgrad), for each parameter p with gradient g at step t:
 *
 *   p *= 1 - lr * weightDecay
 *   m = beta1*m + (1-beta1)*g;   v = beta2*v + (1-beta2)*g^2
 *   p -= (lr / (1 - beta1^t)) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
 *
 * The update runs in TypeScript (it is a small fraction of a step); state is serialisable.
 */
import { zeroedFloats } from '../tensor/alloc.js';
import { StateDictError, UsageError } from '../errors.js';
import type { Tensor } from '../tensor/tensor.js';
import { FusedUpdates, type FuseOptions, type FusedHandle } from './fused.js';

export interface AdamWOptions {
  lr?: number;
  betas?: [number, number];
  eps?: number;
  weightDecay?: number;
}

export interface AdamWParamGroup {
  params: Tensor[];
  lr: number;
  betas: [number, number];
  eps: number;
  weightDecay: number;
}

export interface AdamWStateDict {
  state: Record<string, { step: number; expAvg: number[]; expAvgSq: number[] }>;
  paramGroups: { lr: number; betas: [number, number]; eps: number; weightDecay: number; params: number[] }[];
}

export class AdamW {
  readonly paramGroups: AdamWParamGroup[];
  private readonly state = new Map<Tensor, { step: number; m: Float32Array; v: Float32Array }>();
  private readonly fused = new FusedUpdates('AdamW');

  constructor(params: Tensor[], opts: AdamWOptions = {}) {
    if (params.length === 0) throw new UsageError('optimizer got an empty parameter list');
    const g: AdamWParamGroup = { params: [...params], lr: opts.lr ?? 1e-3, betas: opts.betas ?? [0.9, 0.999], eps: opts.eps ?? 1e-8, weightDecay: opts.weightDecay ?? 1e-2 };
    check(g);
    this.paramGroups = [g];
  }

  get lr(): number {
    return this.paramGroups[0]!.lr;
  }

  set lr(v: number) {
    for (const g of this.paramGroups) g.lr = v;
    this.paramGroups.forEach(check);
  }

  params(): Tensor[] {
    return this.paramGroups.flatMap((g) => g.params);
  }

  step(): void {
    this.fused.checkStep();
    for (const g of this.paramGroups) for (const p of g.params) this.update(g, p);
  }

  /** As SGD.fuseIntoBackward(): each parameter updated inside backward(), the same result as step(). */
  fuseIntoBackward(opts: FuseOptions = {}): FusedHandle {
    const g = this.paramGroups[0]!;
    return this.fused.fuse(g.params, (p) => this.update(g, p), opts);
  }

  /** Whether fuseIntoBackward() is in effect. */
  get isFused(): boolean {
    return this.fused.active;
  }

  private update(g: AdamWParamGroup, p: Tensor): void {
    const grad = p.grad;
    if (grad === null) return;
    const [b1, b2] = g.betas;
    let st = this.state.get(p);
    if (!st) this.state.set(p, (st = { step: 0, m: zeroedFloats(p.numel), v: zeroedFloats(p.numel) }));
    st.step++;
    const w = p.values;
    const decay = 1 - g.lr * g.weightDecay;
    const bc1 = 1 - b1 ** st.step;
    const bc2Sqrt = Math.sqrt(1 - b2 ** st.step);
    const stepSize = g.lr / bc1;
    const { m, v } = st;
    for (let i = 0; i < w.length; i++) {
      const gi = grad[i]!;
      m[i] = b1 * m[i]! + (1 - b1) * gi;
      v[i] = b2 * v[i]! + (1 - b2) * gi * gi;
      w[i] = w[i]! * decay - (stepSize * m[i]!) / (Math.sqrt(v[i]!) / bc2Sqrt + g.eps);
    }
    p.version++;
    p.windowsUpdated();
  }

  zeroGrad(): void {
    for (const p of this.params()) p.grad = null;
  }

  stateDict(): AdamWStateDict {
    const params = this.params();
    const state: AdamWStateDict['state'] = {};
    params.forEach((p, i) => {
      const st = this.state.get(p);
      if (st) state[String(i)] = { step: st.step, expAvg: Array.from(st.m), expAvgSq: Array.from(st.v) };
    });
    let next = 0;
    return { state, paramGroups: this.paramGroups.map((g) => ({ lr: g.lr, betas: g.betas, eps: g.eps, weightDecay: g.weightDecay, params: g.params.map(() => next++) })) };
  }

  loadStateDict(sd: AdamWStateDict): void {
    const params = this.params();
    if (!sd || !Array.isArray(sd.paramGroups) || sd.paramGroups.length !== this.paramGroups.length) {
      throw new StateDictError('AdamW state dict does not match the optimizer (parameter groups differ)');
    }
    this.state.clear();
    for (const [key, st] of Object.entries(sd.state)) {
      const p = params[Number(key)];
      if (!p || st.expAvg.length !== p.numel || st.expAvgSq.length !== p.numel) {
        throw new StateDictError(`AdamW state for parameter ${key} does not fit the optimizer's parameters`);
      }
      this.state.set(p, { step: st.step, m: Float32Array.from(st.expAvg), v: Float32Array.from(st.expAvgSq) });
    }
    sd.paramGroups.forEach((lg, i) => Object.assign(this.paramGroups[i]!, { lr: lg.lr, betas: lg.betas, eps: lg.eps, weightDecay: lg.weightDecay }));
    this.paramGroups.forEach(check);
  }
}

function check(g: Omit<AdamWParamGroup, 'params'>): void {
  if (!(g.lr >= 0)) throw new UsageError(`Invalid learning rate: ${g.lr}`);
  if (!(g.eps >= 0)) throw new UsageError(`Invalid epsilon value: ${g.eps}`);
  if (!(g.betas[0] >= 0 && g.betas[0] < 1)) throw new UsageError(`Invalid beta parameter at index 0: ${g.betas[0]}`);
  if (!(g.betas[1] >= 0 && g.betas[1] < 1)) throw new UsageError(`Invalid beta parameter at index 1: ${g.betas[1]}`);
  if (!(g.weightDecay >= 0)) throw new UsageError(`Invalid weight_decay value: ${g.weightDecay}`);
}
