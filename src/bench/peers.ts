/**
 * The peers of `resnet bench`, measured in child processes of the same invocation:
 *
 * - ONNX Runtime (onnxruntime-node, a devDependency): torchvision's resnet18/resnet50 exported to
 *   ONNX once by scripts/bench/export_onnx.py (cached), timed by ort_worker.js (InferenceSession.run,
 *   CPU provider, intraOpNumThreads = threads, interOpNumThreads = 1, optimisation level 'all',
 *   sequential execution). Inference only.
 * - PyTorch: scripts/bench/torch_bench.py (torch.set_num_threads(threads), inference_mode in eval,
 *   training with torch.optim.SGD), run with the configured Python (default /usr/bin/python3).
 *
 * Neither is a dependency of the library: when one is missing its results say "not available"
 * and why, and the benchmark goes on.
 */
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Measurement, TimingPlan } from './timing.js';
import type { Workload } from './workloads.js';

export type EngineResult =
  | ({ status: 'ok'; params?: number } & Measurement)
  | { status: 'n/a'; reason: string }
  | { status: 'unavailable'; reason: string };

export interface PeerRun {
  available: boolean;
  /** e.g. "1.30.0"; absent when not available. */
  version?: string;
  reason?: string;
  /** Extra facts the peer reported (threads, environment). */
  detail?: Record<string, unknown>;
  results: Record<string, EngineResult>;
}

export interface MemoryResult {
  status: 'ok' | 'unavailable';
  reason?: string;
  peakRssMB?: number;
  baselineRssMB?: number;
}

export interface PeerOptions {
  threads: number;
  plan: TimingPlan;
  python: string;
  cacheDir: string;
  seed: number;
  log: (msg: string) => void;
  /** The peers' environment (default: this process's). */
  env?: NodeJS.ProcessEnv;
}

/** glibc's allocator settings resnet-ts's addon makes with mallopt when it loads (addon.c,
 * tune_malloc): freed buffers are kept for reuse instead of going back to the system, so a training
 * loop does not fault fresh pages in every step. Given to a peer through glibc's tunables, which
 * read these variables at start-up. */
export const RESNET_ALLOCATOR_ENV = { MALLOC_MMAP_THRESHOLD_: '1073741824', MALLOC_TRIM_THRESHOLD_: '1073741824' } as const;

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const SCRIPTS = path.join(ROOT, 'scripts', 'bench');
const ORT_WORKER = fileURLToPath(new URL('./ort_worker.js', import.meta.url));
/** Architectures export_onnx.py can export (torchvision's ImageNet ResNets). */
const ONNX_ARCHES = new Set(['resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152']);

export function defaultCacheDir(): string {
  const base = process.env['XDG_CACHE_HOME'] || path.join(os.homedir(), '.cache');
  return path.join(base, 'resnet-ts', 'bench');
}

/** Generous wall-clock limit for a child: the budget of every workload plus start-up, in whole
 * milliseconds (spawnSync refuses a fractional timeout, and a round's share of the budget, 60 s / 9
 * rounds, is one). */
export function childTimeoutMs(plan: TimingPlan, n: number): number {
  const per = plan.budgetMs > 0 ? plan.budgetMs * 2.5 : 30 * 60_000;
  return Math.ceil(120_000 + per * n);
}

/** Runs a child and parses the JSON object on the last line of its stdout. */
function runJson(cmd: string, args: string[], timeoutMs: number, env?: NodeJS.ProcessEnv): { json?: Record<string, unknown>; error?: string } {
  let r: SpawnSyncReturns<string>;
  try {
    r = spawnSync(cmd, args, { encoding: 'utf8', timeout: timeoutMs, maxBuffer: 64 * 2 ** 20, env: env ?? process.env });
  } catch (e) {
    return { error: (e as Error).message };
  }
  if (r.error) {
    const code = (r.error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return { error: `${cmd} not found` };
    if (code === 'ETIMEDOUT') return { error: `${path.basename(args[0] ?? cmd)} timed out after ${Math.round(timeoutMs / 1000)} s` };
    return { error: r.error.message };
  }
  const last = r.stdout.trim().split('\n').pop() ?? '';
  let json: Record<string, unknown> | undefined;
  try {
    json = JSON.parse(last) as Record<string, unknown>;
  } catch {
    json = undefined;
  }
  if (json && typeof json['error'] === 'string') return { error: json['error'] };
  if (r.status !== 0 || json === undefined) {
    const why = (r.stderr || r.stdout).trim().split('\n').filter((l) => l.trim() !== '').pop() ?? `exit status ${r.status}`;
    return { error: `${path.basename(args[0] ?? cmd)} failed: ${why}` };
  }
  return { json };
}

function unavailable(workloads: readonly Workload[], reason: string): PeerRun {
  return { available: false, reason, results: Object.fromEntries(workloads.map((w) => [w.id, { status: 'unavailable', reason }])) };
}

function ortApplicable(w: Workload): string | null {
  if (w.kind !== 'inference') return 'inference only';
  if (!ONNX_ARCHES.has(w.arch) || w.input[0] !== 3 || w.numClasses !== 1000) return `no ONNX export for ${w.arch}`;
  return null;
}

/** Exports (or finds cached) ONNX files for `arches`; returns arch -> path, or an error. */
export function ensureOnnx(arches: string[], o: PeerOptions): { files?: Record<string, string>; error?: string } {
  const files = Object.fromEntries(arches.map((a) => [a, path.join(o.cacheDir, `${a}.onnx`)]));
  const missing = arches.filter((a) => !(fs.statSync(files[a]!, { throwIfNoEntry: false })?.size ?? 0));
  if (missing.length === 0) return { files };
  o.log(`exporting ${missing.join(', ')} to ONNX in ${o.cacheDir} (once) ...`);
  const r = runJson(o.python, [path.join(SCRIPTS, 'export_onnx.py'), o.cacheDir, ...missing], 600_000);
  if (r.error) return { error: `ONNX export failed: ${r.error}` };
  return { files };
}

function toResults(workloads: readonly Workload[], raw: unknown, skip: (w: Workload) => string | null): Record<string, EngineResult> {
  const got = (raw ?? {}) as Record<string, Measurement & { params?: number }>;
  const out: Record<string, EngineResult> = {};
  for (const w of workloads) {
    const why = skip(w);
    const m = got[w.id];
    out[w.id] = why !== null ? { status: 'n/a', reason: why } : m ? { status: 'ok', ...m } : { status: 'unavailable', reason: 'no result' };
  }
  return out;
}

/** Times the applicable workloads with ONNX Runtime. */
export function runOrt(workloads: readonly Workload[], o: PeerOptions): PeerRun {
  const todo = workloads.filter((w) => ortApplicable(w) === null);
  if (todo.length === 0) return { available: true, results: toResults(workloads, {}, ortApplicable) };
  const probe = runJson(process.execPath, [ORT_WORKER, JSON.stringify({ models: {}, workloads: [], plan: o.plan, threads: o.threads, seed: o.seed, mode: 'time' })], 60_000, o.env);
  if (probe.error) return unavailable(workloads, probe.error);
  const onnx = ensureOnnx([...new Set(todo.map((w) => w.arch))], o);
  if (onnx.error) return { ...unavailable(workloads, onnx.error), version: String(probe.json!['version']) };
  o.log(`onnxruntime ${String(probe.json!['version'])}: ${todo.map((w) => w.id).join(', ')} ...`);
  const cfg = { models: onnx.files, workloads: todo, plan: o.plan, threads: o.threads, seed: o.seed, mode: 'time' };
  const r = runJson(process.execPath, [ORT_WORKER, JSON.stringify(cfg)], childTimeoutMs(o.plan, todo.length), o.env);
  if (r.error) return { ...unavailable(workloads, r.error), version: String(probe.json!['version']) };
  return {
    available: true,
    version: String(r.json!['version']),
    detail: { provider: 'cpu', intraOpNumThreads: o.threads, interOpNumThreads: 1, graphOptimizationLevel: 'all', executionMode: 'sequential', models: onnx.files },
    results: toResults(workloads, r.json!['results'], ortApplicable),
  };
}

const TORCH_SCRIPT = path.join(SCRIPTS, 'torch_bench.py');

/** Times every workload with PyTorch. */
export function runTorch(workloads: readonly Workload[], o: PeerOptions): PeerRun {
  if (!fs.existsSync(TORCH_SCRIPT)) return unavailable(workloads, `${TORCH_SCRIPT} not found`);
  o.log(`pytorch (${o.python}): ${workloads.map((w) => w.id).join(', ')} ...`);
  const cfg = { workloads, threads: o.threads, warmup: o.plan.warmup, runs: o.plan.runs, budgetMs: o.plan.budgetMs, seed: o.seed, mode: 'time' };
  const r = runJson(o.python, [TORCH_SCRIPT, JSON.stringify(cfg)], childTimeoutMs(o.plan, workloads.length), o.env);
  if (r.error) return unavailable(workloads, r.error);
  const j = r.json!;
  return {
    available: true,
    version: String(j['torch']),
    detail: { torchvision: j['torchvision'], threads: j['threads'], interopThreads: j['interopThreads'], env: j['env'], python: o.python },
    results: toResults(workloads, j['results'], () => null),
  };
}

function memoryFrom(r: { json?: Record<string, unknown>; error?: string }): MemoryResult {
  if (r.error) return { status: 'unavailable', reason: r.error };
  return { status: 'ok', peakRssMB: Number(r.json!['peakRssMB']), baselineRssMB: Number(r.json!['baselineRssMB']) };
}

/** Peak RSS of ONNX Runtime on `w` in a fresh worker (two runs). */
export function ortMemory(w: Workload, o: PeerOptions): MemoryResult {
  const why = ortApplicable(w);
  if (why !== null) return { status: 'unavailable', reason: why };
  const onnx = ensureOnnx([w.arch], o);
  if (onnx.error) return { status: 'unavailable', reason: onnx.error };
  const cfg = { models: onnx.files, workloads: [w], plan: o.plan, threads: o.threads, seed: o.seed, mode: 'rss' };
  return memoryFrom(runJson(process.execPath, [ORT_WORKER, JSON.stringify(cfg)], 300_000, o.env));
}

/** Peak RSS of PyTorch on `w` in a fresh interpreter (two runs). */
export function torchMemory(w: Workload, o: PeerOptions): MemoryResult {
  const cfg = { workloads: [w], threads: o.threads, seed: o.seed, mode: 'rss' };
  return memoryFrom(runJson(o.python, [TORCH_SCRIPT, JSON.stringify(cfg)], 300_000, o.env));
}

export { runJson };
