/**
 * Timing: warm-up runs, then timed runs, reported as the median, under a time budget per workload.
 *
 * The budget keeps a slow engine (the TypeScript reference backend needs seconds per ResNet
 * forward) from taking minutes per workload: after every run the remaining budget is divided by
 * the last run's time. Warm-ups continue only while room for min(runs, 3) timed runs remains,
 * timed runs only while another one fits; at least one timed run is always made. When even the
 * first warm-up took more than half the budget, it becomes the single (cold) sample rather than
 * paying for a second run. Every shortfall is stated in `limited`, so a reader never mistakes a
 * one-run number for a median of seven. scripts/bench/torch_bench.py implements the same rules.
 *
 * Each measurement also records how much CPU other processes used meanwhile (cpu.ts), since the
 * machine may be shared: a contended measurement is flagged rather than silently reported.
 */
import { cpuSample, otherCores } from './cpu.js';

export interface TimingPlan {
  warmup: number;
  runs: number;
  /** Time budget of one workload in ms; 0 or Infinity means none. */
  budgetMs: number;
}

export interface Measurement {
  /** Median of the timed runs (ms per iteration). */
  msPerIter: number;
  /** Images per second at the median: batch * 1000 / msPerIter. */
  imgPerSec: number;
  /** Timed runs made (the median is over these). */
  runs: number;
  /** Warm-up runs made. */
  warmup: number;
  samplesMs: number[];
  /** With several rounds (bench --rounds): each round's median, in order. */
  roundsMs?: number[];
  /** Why fewer runs than asked were made (null when the plan was followed). */
  limited: string | null;
  /** Average cores other processes kept busy during the runs (null where not measurable). */
  otherCores: number | null;
}

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Decides run by run what to do next; feed it each run's duration. */
export class Timer {
  private warmDone = 0;
  private readonly samples: number[] = [];
  private elapsed = 0;
  private last = 0;
  private cold = false;
  private finished = false;

  constructor(private readonly plan: TimingPlan) {}

  private get budget(): number {
    return this.plan.budgetMs > 0 ? this.plan.budgetMs : Infinity;
  }

  /** What the next run is, or 'done'. */
  next(): 'warmup' | 'timed' | 'done' {
    if (this.finished) return 'done';
    const { warmup, runs } = this.plan;
    const started = this.warmDone + this.samples.length > 0;
    const affordable = started ? Math.floor((this.budget - this.elapsed) / Math.max(this.last, 1e-6)) : Infinity;
    if (this.warmDone < warmup && this.samples.length === 0) {
      if (!started || affordable >= 1 + Math.min(runs, 3)) return 'warmup';
    }
    if (this.samples.length < runs && (this.samples.length === 0 || affordable >= 1)) return 'timed';
    this.finished = true;
    return 'done';
  }

  record(kind: 'warmup' | 'timed', ms: number): void {
    this.elapsed += ms;
    this.last = ms;
    if (kind === 'timed') {
      this.samples.push(ms);
      return;
    }
    this.warmDone++;
    // The first warm-up alone took over half the budget: it is the measurement (cold).
    if (this.warmDone === 1 && ms * 2 > this.budget) {
      this.warmDone = 0;
      this.samples.push(ms);
      this.cold = true;
      this.finished = true;
    }
  }

  result(batch: number, others: number | null = null): Measurement {
    const { warmup, runs, budgetMs } = this.plan;
    if (this.samples.length === 0) throw new Error('internal: no timed run was made');
    const ms = median(this.samples);
    let limited: string | null = null;
    const budget = `${+(budgetMs / 1000).toFixed(1)} s time budget`;
    if (this.cold) {
      limited = `1 cold run (no warm-up): one run takes over half the ${budget}`;
    } else if (this.samples.length < runs || this.warmDone < warmup) {
      limited = `${this.samples.length} of ${runs} runs, ${this.warmDone} of ${warmup} warm-up (${budget})`;
    }
    return {
      msPerIter: ms,
      imgPerSec: (batch * 1000) / ms,
      runs: this.samples.length,
      warmup: this.warmDone,
      samplesMs: this.samples.map((s) => +s.toFixed(3)),
      limited,
      otherCores: others === null ? null : +others.toFixed(2),
    };
  }
}

/** Times a synchronous function under `plan`. */
export function measure(fn: () => void, plan: TimingPlan, batch: number, onRun?: (kind: 'warmup' | 'timed', ms: number) => void): Measurement {
  const t = new Timer(plan);
  const c0 = cpuSample();
  for (let k = t.next(); k !== 'done'; k = t.next()) {
    const t0 = performance.now();
    fn();
    const ms = performance.now() - t0;
    t.record(k, ms);
    onRun?.(k, ms);
  }
  return t.result(batch, otherCores(c0, cpuSample()));
}

/** Times an asynchronous function under `plan` (ONNX Runtime's session.run). */
export async function measureAsync(fn: () => Promise<unknown>, plan: TimingPlan, batch: number): Promise<Measurement> {
  const t = new Timer(plan);
  const c0 = cpuSample();
  for (let k = t.next(); k !== 'done'; k = t.next()) {
    const t0 = performance.now();
    await fn();
    t.record(k, performance.now() - t0);
  }
  return t.result(batch, otherCores(c0, cpuSample()));
}
