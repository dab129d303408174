/**
 * Training memory against batch size: the issue asks that it grow linearly. Each batch size runs in
 * a fresh process (rss_worker.js with a batch override: build the model, two training steps) and
 * reports its peak resident memory above the baseline; a least-squares line through those points
 * gives the memory per image, and the largest distance of a point from the line says how linear it
 * is.
 */
import { runJson } from './peers.js';

export interface TrainMemoryPoint {
  batch: number;
  peakRssMB: number;
  baselineRssMB: number;
}

export interface TrainMemoryReport {
  workload: string;
  method: string;
  points: TrainMemoryPoint[];
  /** least-squares fit of (peak - baseline) = intercept + slope * batch */
  slopeMBPerImage: number;
  interceptMB: number;
  /** largest |point - line| as a percentage of the point's own (peak - baseline) */
  maxDeviationPct: number;
}

/** Least-squares line y = a + b x; returns [a, b]. */
export function fitLine(xs: readonly number[], ys: readonly number[]): [number, number] {
  const n = xs.length;
  if (n < 2 || ys.length !== n) throw new Error('fitLine needs at least two points');
  const mx = xs.reduce((s, v) => s + v, 0) / n;
  const my = ys.reduce((s, v) => s + v, 0) / n;
  let sxy = 0;
  let sxx = 0;
  for (let i = 0; i < n; i++) {
    sxy += (xs[i]! - mx) * (ys[i]! - my);
    sxx += (xs[i]! - mx) ** 2;
  }
  const b = sxx === 0 ? 0 : sxy / sxx;
  return [my - b * mx, b];
}

export function summarise(workload: string, points: TrainMemoryPoint[]): TrainMemoryReport {
  const xs = points.map((p) => p.batch);
  const ys = points.map((p) => p.peakRssMB - p.baselineRssMB);
  const [a, b] = fitLine(xs, ys);
  const dev = Math.max(...ys.map((y, i) => (Math.abs(y - (a + b * xs[i]!)) / Math.max(y, 1e-9)) * 100));
  return {
    workload,
    method: 'peak resident memory (VmHWM) above the baseline of a fresh process per batch size: build the model, two training steps',
    points,
    slopeMBPerImage: +b.toFixed(3),
    interceptMB: +a.toFixed(1),
    maxDeviationPct: +dev.toFixed(1),
  };
}

/** Runs the workload's training step at each batch size in a fresh process (see rss_worker.ts). */
export function measureTrainMemory(
  worker: string,
  workload: string,
  batches: readonly number[],
  backend: string,
  threads: number,
  env: NodeJS.ProcessEnv,
): TrainMemoryReport | { error: string } {
  const points: TrainMemoryPoint[] = [];
  for (const batch of batches) {
    const r = runJson(process.execPath, [worker, JSON.stringify({ workload, backend, threads, batch })], 600_000, env);
    if (r.error) return { error: `batch ${batch}: ${r.error}` };
    points.push({ batch, peakRssMB: Number(r.json!['peakRssMB']), baselineRssMB: Number(r.json!['baselineRssMB']) });
  }
  return summarise(workload, points);
}
