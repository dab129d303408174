/**
 * Learning-rate schedules with PyTorch's closed forms. A schedule is a pure function of the step
 * count `t` (epochs for MultiStepLR/CosineAnnealingLR, iterations for OneCycleLR — the caller
 * decides by when it calls step()), so its whole state is `t` and resuming is exact.
 *
 *   MultiStepLR        lr = base · gamma^(number of milestones <= t)
 *   CosineAnnealingLR  lr = etaMin + (base - etaMin)·(1 + cos(π·t/tMax))/2
 *   LinearLR (warm-up) lr = base · (start + (end - start)·min(t, total)/total)
 *   OneCycleLR         cosine from maxLr/divFactor up to maxLr over pctStart of totalSteps, then
 *                      down to maxLr/(divFactor·finalDivFactor) (PyTorch's two-phase default)
 *   SequentialLR       one schedule until each milestone, then the next (its own t from 0)
 */
import { UsageError } from '../errors.js';

export interface HasLr {
  paramGroups: { lr: number }[];
}

export type LrFunction = (t: number, base: number) => number;

export class LRScheduler {
  /** Steps taken (PyTorch's last_epoch after its initial step). */
  t = 0;
  readonly baseLrs: number[];

  constructor(readonly optimizer: HasLr, readonly fn: LrFunction, readonly name: string) {
    this.baseLrs = optimizer.paramGroups.map((g) => g.lr);
    this.apply();
  }

  /** Advances one step and sets the optimizer's learning rates. */
  step(): void {
    this.t++;
    this.apply();
  }

  lrs(): number[] {
    return this.baseLrs.map((b) => this.fn(this.t, b));
  }

  private apply(): void {
    const lrs = this.lrs();
    this.optimizer.paramGroups.forEach((g, i) => (g.lr = lrs[i]!));
  }

  stateDict(): { name: string; t: number; baseLrs: number[] } {
    return { name: this.name, t: this.t, baseLrs: [...this.baseLrs] };
  }

  loadStateDict(s: { name: string; t: number; baseLrs: number[] }): void {
    if (s.name !== this.name || s.baseLrs.length !== this.baseLrs.length) {
      throw new UsageError(`cannot resume a ${s.name} schedule into a ${this.name} schedule`);
    }
    this.baseLrs.splice(0, this.baseLrs.length, ...s.baseLrs);
    this.t = s.t;
    this.apply();
  }
}

function positiveInt(name: string, v: number): void {
  if (!Number.isInteger(v) || v < 1) throw new UsageError(`${name} must be a positive integer, got ${v}`);
}

export function multiStepLR(opt: HasLr, milestones: number[], gamma = 0.1): LRScheduler {
  const ms = [...milestones].sort((a, b) => a - b);
  ms.forEach((m) => positiveInt('milestone', m));
  return new LRScheduler(opt, (t, base) => base * gamma ** ms.filter((m) => m <= t).length, 'MultiStepLR');
}

export function cosineAnnealingLR(opt: HasLr, tMax: number, etaMin = 0): LRScheduler {
  positiveInt('T_max', tMax);
  return new LRScheduler(opt, (t, base) => etaMin + ((base - etaMin) * (1 + Math.cos((Math.PI * t) / tMax))) / 2, 'CosineAnnealingLR');
}

export function linearLR(opt: HasLr, startFactor = 1 / 3, endFactor = 1, totalIters = 5): LRScheduler {
  if (!(startFactor > 0 && startFactor <= 1) || !(endFactor >= 0 && endFactor <= 1)) {
    throw new UsageError('LinearLR: start factor must be in (0, 1] and end factor in [0, 1]');
  }
  positiveInt('total_iters', totalIters);
  return new LRScheduler(opt, (t, base) => base * (startFactor + ((endFactor - startFactor) * Math.min(t, totalIters)) / totalIters), 'LinearLR');
}

export interface OneCycleOptions {
  maxLr: number;
  totalSteps: number;
  pctStart?: number;
  divFactor?: number;
  finalDivFactor?: number;
}

/** OneCycleLR with cosine annealing (PyTorch's default two-phase schedule); ignores the base lr. */
export function oneCycleLR(opt: HasLr, o: OneCycleOptions): LRScheduler {
  positiveInt('total_steps', o.totalSteps);
  const pct = o.pctStart ?? 0.3;
  const initial = o.maxLr / (o.divFactor ?? 25);
  const min = initial / (o.finalDivFactor ?? 1e4);
  const upEnd = pct * o.totalSteps - 1;
  const downEnd = o.totalSteps - 1;
  const cos = (start: number, end: number, frac: number): number => end + ((start - end) / 2) * (1 + Math.cos(Math.PI * frac));
  return new LRScheduler(
    opt,
    (t) => {
      if (t > o.totalSteps) throw new UsageError(`OneCycleLR: stepped ${t} times, more than total_steps ${o.totalSteps}`);
      return t <= upEnd ? cos(initial, o.maxLr, t / upEnd) : cos(o.maxLr, min, (t - upEnd) / (downEnd - upEnd));
    },
    'OneCycleLR',
  );
}

/** Runs `fns[i]` from milestones[i-1] on, each with its own step count starting at 0. */
export function sequentialLR(opt: HasLr, parts: { fn: LrFunction }[], milestones: number[]): LRScheduler {
  if (milestones.length !== parts.length - 1) throw new UsageError('SequentialLR: need one milestone fewer than schedules');
  return new LRScheduler(
    opt,
    (t, base) => {
      let i = 0;
      while (i < milestones.length && t >= milestones[i]!) i++;
      return parts[i]!.fn(t - (i === 0 ? 0 : milestones[i - 1]!), base);
    },
    'SequentialLR',
  );
}
