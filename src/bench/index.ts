/**
 * `resnet bench`: times resnet-ts on the benchmark workloads and, in the same invocation, the
 * peers (ONNX Runtime, PyTorch) on the same workloads and thread count; reports medians, images
 * per second, throughput ratios, and the peak memory of ResNet-50 batch-1 inference per engine
 * (each in a fresh process). runBench() returns a JSON-serialisable report; report.ts prints it.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { fileURLToPath } from 'node:url';
import { UsageError, kernels, listBackends, setBackend } from '../index.js';
import { getNumThreads, nativeBackend, setNumThreads } from '../kernels/registry.js';
import { cpuSample, otherCores } from './cpu.js';
import { runOurs, warmProcess } from './ours.js';
import { RESNET_ALLOCATOR_ENV, defaultCacheDir, ortMemory, runJson, runOrt, runTorch, torchMemory, type EngineResult, type MemoryResult, type PeerOptions, type PeerRun } from './peers.js';
import { median, type TimingPlan } from './timing.js';
import { measureTrainMemory, type TrainMemoryReport } from './train_memory.js';
import { MEMORY_WORKLOAD, TRAIN_MEMORY, getWorkload, selectWorkloads, type Workload } from './workloads.js';

export { WORKLOADS, selectWorkloads, getWorkload, type Workload } from './workloads.js';
export { formatReport } from './report.js';

export interface BenchOptions {
  /** Comma-separated workload ids (default: every non-hidden workload). */
  only?: string;
  /** Backend to run resnet-ts on (default: the active one). */
  backend?: string;
  threads?: number;
  warmup?: number;
  /** Untimed runs of each workload in resnet-ts's process before the first round (at most a quarter
   * of the workload's time budget; 0: none): the steady state of V8's compiled JavaScript
   * (warmProcess in ours.ts). The peers run in fresh processes with the per-round warm-up only: their
   * eager code has nothing to compile. */
  processWarmup?: number;
  runs?: number;
  /** Rounds the engines take in turn (resnet-ts, ONNX Runtime, PyTorch, resnet-ts, ...), each with a
   * share of the timed runs, so that a slow phase of a shared machine falls on every engine rather
   * than on one; the median is over the runs of all rounds. */
  rounds?: number;
  /** Time budget per workload and engine, in seconds (0: none). */
  budgetS?: number;
  /** Measure ONNX Runtime and PyTorch too (default true). */
  peers?: boolean;
  /** Measure the peak RSS of ResNet-50 batch 1 when it is selected (default true). */
  memory?: boolean;
  /** Run the peers with glibc's allocator settings that resnet-ts's addon makes for itself
   * (RESNET_ALLOCATOR_ENV; default false: the peers as installed, PyTorch's training steps and
   * batch-8 inference then paying page faults that resnet-ts does not). */
  equalAllocator?: boolean;
  python?: string;
  cacheDir?: string;
  seed?: number;
  /** Progress lines (default: none). */
  log?: (msg: string) => void;
}

export const DEFAULTS = { threads: 2, warmup: 2, processWarmup: 40, runs: 9, rounds: 9, budgetS: 60, python: '/usr/bin/python3' } as const;

export const ENGINES = ['resnet-ts', 'onnxruntime', 'pytorch'] as const;
export type Engine = (typeof ENGINES)[number];

export interface WorkloadReport {
  id: string;
  title: string;
  kind: 'inference' | 'train';
  arch: string;
  batch: number;
  input: number[];
  numClasses: number;
  results: Record<Engine, EngineResult>;
  /** Throughput ratios ours/peer (> 1: resnet-ts is faster) of the medians; null when either side is missing. */
  ratios: { vsOnnxruntime: number | null; vsPytorch: number | null };
  /** The same of each engine's fastest timed run: on a machine with noisy phases (a shared VM), what
   * the engines do when nothing slows them; the medians say what a user sees over all phases. */
  fastestRatios: { vsOnnxruntime: number | null; vsPytorch: number | null };
}

export interface BenchReport {
  tool: 'resnet-ts bench';
  version: string;
  /** When the measurements started (ISO 8601). */
  date: string;
  machine: {
    cpu: string;
    /** The first core's data and unified caches as Linux lists them ("L1d 48K, L2 2048K, L3 307200K"), null elsewhere. */
    caches: string | null;
    /** Linux's transparent huge pages mode ("always", "madvise", "never"), null elsewhere: the native
     * engine advises its long-lived large buffers for huge pages, which takes effect under "madvise" and "always". */
    hugePages: string | null;
    logicalCores: number;
    memoryGB: number;
    node: string;
    platform: string;
    loadAverageStart: number[];
    loadAverageEnd: number[];
    /**
     * Average cores that other processes kept busy during each phase (null: not measurable here).
     * Above ~0.1 the phase's timings are pessimistic.
     */
    otherProcessesCores: { 'resnet-ts': number | null; onnxruntime: number | null; pytorch: number | null; memory: number | null };
    /** Environment variables that affect the engines' threading and instruction sets, as set when the bench started. */
    env: Record<string, string | null>;
  };
  /** runs: timed runs per workload and engine over all rounds; warm-up runs are per round;
   * processWarmup: the most untimed runs of each workload in resnet-ts's process before the rounds */
  settings: { threads: number; warmup: number; processWarmup: number; runs: number; rounds: number; budgetS: number; seed: number; equalAllocator: boolean };
  /** The untimed runs resnet-ts's process made of each workload before the rounds (settings.processWarmup, or fewer
   * where a quarter of the budget ran out first) */
  processWarmupRuns: Record<string, number>;
  /** Threads resnet-ts's kernels actually use (1 on the single-threaded ts backend). */
  oursThreads: number;
  backend: string;
  /** The native kernels' instruction set ("avx512", "avx2" or "portable"; RESNET_ISA forces one), null
   * on the ts backend. Without AVX-512 the convolutions take the AVX2 Winograd, pixels-in-lanes,
   * tap-panel or im2col paths (docs/PERFORMANCE.md, "Without AVX-512"). */
  isa: string | null;
  /** The round trip of a cache line between the native thread pool's first two threads, in ns, at the
   * start and at the end of the run (null on the ts backend or with one thread). Around 50-200: the
   * two cores share a last-level cache; 400-600: they do not (AMD's chiplets, sockets), and what one
   * writes the other reads at about memory's speed. A VM's vCPUs can move between the two. */
  handoffNs: { start: number; end: number } | null;
  /** The L2 size (KB) the native kernels size their blocking by (RESNET_L2_KB, else cpuid's figure
   * through the C library); null on the ts backend. */
  l2KB: number | null;
  backends: string[];
  peers: { onnxruntime: Omit<PeerRun, 'results'> | null; pytorch: Omit<PeerRun, 'results'> | null };
  workloads: WorkloadReport[];
  memory: { workload: string; method: string; results: Record<Engine, MemoryResult> } | null;
  /** resnet-ts training memory against batch size (when TRAIN_MEMORY's workload is selected) */
  trainMemory: TrainMemoryReport | { error: string } | null;
}

const ENV_KEYS = ['RESNET_BACKEND', 'RESNET_NUM_THREADS', 'RESNET_ISA', 'RESNET_OPS_NO_AVX512', 'RESNET_L2_KB', 'RESNET_HUGE_PAGES', 'RESNET_AFFINITY', 'OPENBLAS_CORETYPE', 'OPENBLAS_L2_SIZE', 'OPENBLAS_NUM_THREADS', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'ATEN_CPU_CAPABILITY', 'ONEDNN_MAX_CPU_ISA', 'MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_'];

/** The CPU's model name with its family and model numbers ("AMD EPYC (family 26, model 2)": a VM's
 * name often leaves out the generation, which the numbers give), from /proc/cpuinfo. */
export function cpuModel(file = '/proc/cpuinfo'): string {
  try {
    const info = fs.readFileSync(file, 'utf8');
    const m = /^model name\s*:\s*(.+)$/m.exec(info);
    const family = /^cpu family\s*:\s*(\d+)$/m.exec(info)?.[1];
    const model = /^model\s*:\s*(\d+)$/m.exec(info)?.[1];
    if (m) return `${m[1]!.trim()}${family !== undefined && model !== undefined ? ` (family ${family}, model ${model})` : ''}`;
  } catch {
    // not Linux: fall through
  }
  return os.cpus()[0]?.model ?? 'unknown';
}

/**
 * The first core's data and unified caches from sysfs, "L1d 48K, L2 2048K, L3 307200K"; null where
 * they cannot be read (not Linux). The native engine sizes some of its blocking by the L2, so results
 * from machines with other caches are not comparable kernel for kernel.
 */
export function cpuCaches(dir = '/sys/devices/system/cpu/cpu0/cache'): string | null {
  try {
    const out: string[] = [];
    for (const e of fs.readdirSync(dir).filter((n) => /^index\d+$/.test(n)).sort((a, b) => +a.slice(5) - +b.slice(5))) {
      const read = (f: string): string => fs.readFileSync(`${dir}/${e}/${f}`, 'utf8').trim();
      const type = read('type');
      if (type === 'Instruction') continue;
      out.push(`L${read('level')}${type === 'Data' ? 'd' : ''} ${read('size')}`);
    }
    return out.length > 0 ? out.join(', ') : null;
  } catch {
    return null;
  }
}

/** The transparent huge pages mode Linux selected (the bracketed word of its sysfs file), null where
 * it cannot be read. */
export function hugePagesMode(file = '/sys/kernel/mm/transparent_hugepage/enabled'): string | null {
  try {
    return /\[(\w+)\]/.exec(fs.readFileSync(file, 'utf8'))?.[1] ?? null;
  } catch {
    return null;
  }
}

function packageVersion(): string {
  try {
    const pkg = JSON.parse(fs.readFileSync(fileURLToPath(new URL('../../../package.json', import.meta.url)), 'utf8')) as { version?: string };
    return pkg.version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

function positiveInt(v: number | undefined, name: string, dflt: number, min = 1): number {
  if (v === undefined) return dflt;
  if (!Number.isSafeInteger(v) || v < min) throw new UsageError(`--${name} must be an integer >= ${min}, got ${v}`);
  return v;
}

function ratio(ours: EngineResult, peer: EngineResult): number | null {
  return ours.status === 'ok' && peer.status === 'ok' ? ours.imgPerSec / peer.imgPerSec : null;
}

/** ratio() of the fastest runs (time ratio peer/ours: the batch is the same). */
export function fastestRatio(ours: EngineResult, peer: EngineResult): number | null {
  return ours.status === 'ok' && peer.status === 'ok' && ours.samplesMs.length > 0 && peer.samplesMs.length > 0
    ? Math.min(...peer.samplesMs) / Math.min(...ours.samplesMs)
    : null;
}

const RSS_WORKER = fileURLToPath(new URL('./rss_worker.js', import.meta.url));

/** Runs the benchmark. Throws UsageError for bad options before measuring anything. */
export function runBench(o: BenchOptions = {}): BenchReport {
  const workloads = selectWorkloads(o.only);
  if (o.backend !== undefined) {
    if (!listBackends().includes(o.backend)) throw new UsageError(`unknown backend "${o.backend}"; available: ${listBackends().join(', ')}`);
    setBackend(o.backend);
  }
  const threads = positiveInt(o.threads, 'threads', DEFAULTS.threads);
  const plan: TimingPlan = {
    warmup: positiveInt(o.warmup, 'warmup', DEFAULTS.warmup, 0),
    runs: positiveInt(o.runs, 'runs', DEFAULTS.runs),
    budgetMs: (o.budgetS ?? DEFAULTS.budgetS) * 1000,
  };
  if (!(plan.budgetMs >= 0)) throw new UsageError(`--budget must be a number of seconds >= 0, got ${o.budgetS}`);
  const processWarmup = positiveInt(o.processWarmup, 'process-warmup', DEFAULTS.processWarmup, 0);
  const seed = o.seed ?? 0;
  const env = Object.fromEntries(ENV_KEYS.map((k) => [k, process.env[k] ?? null])); // as the user set it
  const log = o.log ?? ((): void => {});
  // Threads of the native kernels (the ts backend is single-threaded); child processes get the
  // same count through RESNET_NUM_THREADS, which the native thread pool reads at start-up.
  setNumThreads(threads);
  process.env['RESNET_NUM_THREADS'] = String(threads);
  const backend = kernels().name;
  const nb = kernels() === nativeBackend() ? nativeBackend() : null; // the native kernels, when they are the ones measured
  const isa = nb ? nb.isa : null;
  const oursThreads = getNumThreads();
  const handoff = (): number | null => (nb && oursThreads > 1 ? Math.round(nb.handoffNs()) : null);
  const handoffStart = handoff();
  const loadAverageStart = os.loadavg().map((x) => +x.toFixed(2));
  const date = new Date().toISOString();

  // Rounds: resnet-ts (in this process), then the peers (child processes), again and again; each
  // round takes a share of the timed runs (the first rounds the remainder) and of the budget.
  const rounds = Math.min(positiveInt(o.rounds, 'rounds', DEFAULTS.rounds), plan.runs);
  const roundPlan = (r: number): TimingPlan => ({
    warmup: plan.warmup,
    runs: Math.floor(plan.runs / rounds) + (r < plan.runs % rounds ? 1 : 0),
    budgetMs: plan.budgetMs / rounds,
  });
  const wantPeers = o.peers ?? true;
  const equalAllocator = o.equalAllocator ?? false;
  const peerEnv: NodeJS.ProcessEnv = equalAllocator ? { ...process.env, ...RESNET_ALLOCATOR_ENV } : process.env;
  const peerOptions = (p: TimingPlan): PeerOptions => ({ threads, plan: p, python: o.python ?? DEFAULTS.python, cacheDir: o.cacheDir ?? defaultCacheDir(), seed, log, env: peerEnv });
  const skipped = (): PeerRun => ({ available: false, reason: 'skipped (--no-peers)', results: Object.fromEntries(workloads.map((w) => [w.id, { status: 'n/a', reason: 'skipped (--no-peers)' }])) });
  const oursRounds: Record<string, EngineResult>[] = [];
  const ortRounds: PeerRun[] = [];
  const torchRounds: PeerRun[] = [];
  const busy = { ours: [] as (number | null)[], ort: [] as (number | null)[], torch: [] as (number | null)[] };
  const processWarmupRuns: Record<string, number> = {};
  if (processWarmup > 0)
    for (const w of workloads) {
      log(`resnet-ts (${backend}): ${w.id}: warming the process (up to ${processWarmup} untimed runs) ...`);
      processWarmupRuns[w.id] = warmProcess(w, processWarmup, plan.budgetMs / 4);
    }
  for (let r = 0; r < rounds; r++) {
    const rp = roundPlan(r);
    if (rounds > 1) log(`round ${r + 1} of ${rounds}`);
    const c0 = cpuSample();
    const oursRound: Record<string, EngineResult> = {};
    for (const w of workloads) {
      log(`resnet-ts (${backend}): ${w.id} ...`);
      const m = runOurs(w, rp, (kind, ms) => log(`  ${kind} ${fmtMs(ms)}`));
      oursRound[w.id] = { status: 'ok', ...m };
      log(`  ${w.id}: ${fmtMs(m.msPerIter)} per iteration (median of ${m.runs})${m.limited ? ` [${m.limited}]` : ''}`);
    }
    oursRounds.push(oursRound);
    const po = peerOptions(rp);
    const c1 = cpuSample();
    // a peer found unavailable (not installed) in the first round is not asked again
    ortRounds.push(wantPeers && (r === 0 || ortRounds[0]!.available) ? runOrt(workloads, po) : (ortRounds[0] ?? skipped()));
    const c2 = cpuSample();
    torchRounds.push(wantPeers && (r === 0 || torchRounds[0]!.available) ? runTorch(workloads, po) : (torchRounds[0] ?? skipped()));
    const c3 = cpuSample();
    busy.ours.push(otherCores(c0, c1));
    busy.ort.push(otherCores(c1, c2));
    busy.torch.push(otherCores(c2, c3));
  }
  const ours = mergeRounds(workloads, oursRounds);
  const ort = mergePeer(workloads, ortRounds);
  const torch = mergePeer(workloads, torchRounds);
  const c3 = cpuSample();
  const po = peerOptions(plan);

  // 3. Peak memory of ResNet-50 batch 1, each engine in a fresh process.
  let memory: BenchReport['memory'] = null;
  if ((o.memory ?? true) && workloads.some((w) => w.id === MEMORY_WORKLOAD)) {
    const w = getWorkload(MEMORY_WORKLOAD);
    log(`peak memory of ${w.id} (fresh processes) ...`);
    const childEnv = { ...process.env, RESNET_NUM_THREADS: String(threads) };
    const oursMem = runJson(process.execPath, [RSS_WORKER, JSON.stringify({ workload: w.id, backend, threads })], 600_000, childEnv);
    const off: MemoryResult = { status: 'unavailable', reason: 'skipped (--no-peers)' };
    memory = {
      workload: w.id,
      method: 'peak resident memory (VmHWM) of a fresh process that loads the engine, builds the model and runs 2 iterations; baseline = RSS after loading the engine',
      results: {
        'resnet-ts': oursMem.error ? { status: 'unavailable', reason: oursMem.error } : { status: 'ok', peakRssMB: Number(oursMem.json!['peakRssMB']), baselineRssMB: Number(oursMem.json!['baselineRssMB']) },
        onnxruntime: wantPeers ? (ort.available ? ortMemory(w, po) : { status: 'unavailable', reason: ort.reason ?? 'not available' }) : off,
        pytorch: wantPeers ? (torch.available ? torchMemory(w, po) : { status: 'unavailable', reason: torch.reason ?? 'not available' }) : off,
      },
    };
  }

  // 4. Training memory against batch size (resnet-ts only), each batch size in a fresh process.
  let trainMemory: BenchReport['trainMemory'] = null;
  if ((o.memory ?? true) && workloads.some((w) => w.id === TRAIN_MEMORY.workload)) {
    log(`training memory of ${TRAIN_MEMORY.workload} at batch ${TRAIN_MEMORY.batches.join(', ')} (fresh processes) ...`);
    trainMemory = measureTrainMemory(RSS_WORKER, TRAIN_MEMORY.workload, TRAIN_MEMORY.batches, backend, threads, { ...process.env, RESNET_NUM_THREADS: String(threads) });
  }

  const c4 = cpuSample();
  const round = (x: number | null): number | null => (x === null ? null : +x.toFixed(2));
  const mean = (xs: (number | null)[]): number | null => (xs.some((x) => x === null) ? null : xs.reduce((a: number, x) => a + x!, 0) / xs.length);
  const otherProcessesCores = {
    'resnet-ts': round(mean(busy.ours)),
    onnxruntime: wantPeers ? round(mean(busy.ort)) : null,
    pytorch: wantPeers ? round(mean(busy.torch)) : null,
    memory: memory ? round(otherCores(c3, c4)) : null,
  };
  const peerInfo = (p: PeerRun): Omit<PeerRun, 'results'> => {
    const { results: _r, ...rest } = p;
    void _r;
    return rest;
  };
  return {
    tool: 'resnet-ts bench',
    version: packageVersion(),
    date,
    machine: {
      cpu: cpuModel(),
      caches: cpuCaches(),
      hugePages: hugePagesMode(),
      logicalCores: typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length,
      memoryGB: +(os.totalmem() / 2 ** 30).toFixed(1),
      node: process.version,
      platform: `${process.platform} ${process.arch}`,
      loadAverageStart,
      loadAverageEnd: os.loadavg().map((x) => +x.toFixed(2)),
      otherProcessesCores,
      env,
    },
    settings: { threads, warmup: plan.warmup, processWarmup, runs: plan.runs, rounds, budgetS: plan.budgetMs / 1000, seed, equalAllocator },
    processWarmupRuns,
    oursThreads,
    backend,
    isa,
    handoffNs: handoffStart !== null ? { start: handoffStart, end: handoff()! } : null,
    l2KB: nb ? nb.l2Bytes / 1024 : null,
    backends: listBackends(),
    peers: { onnxruntime: wantPeers ? peerInfo(ort) : null, pytorch: wantPeers ? peerInfo(torch) : null },
    workloads: workloads.map((w: Workload) => {
      const results = { 'resnet-ts': ours[w.id]!, onnxruntime: ort.results[w.id]!, pytorch: torch.results[w.id]! };
      return {
        id: w.id,
        title: w.title,
        kind: w.kind,
        arch: w.arch,
        batch: w.batch,
        input: [...w.input],
        numClasses: w.numClasses,
        results,
        ratios: { vsOnnxruntime: ratio(results['resnet-ts'], results.onnxruntime), vsPytorch: ratio(results['resnet-ts'], results.pytorch) },
        fastestRatios: {
          vsOnnxruntime: fastestRatio(results['resnet-ts'], results.onnxruntime),
          vsPytorch: fastestRatio(results['resnet-ts'], results.pytorch),
        },
      };
    }),
    memory,
    trainMemory,
  };
}

/** One engine's results over the rounds: per workload the timed runs of every round that measured
 * it, their median, and the rounds' medians (roundsMs); a workload no round measured keeps the
 * first round's reason. */
function mergeRounds(workloads: readonly Workload[], rounds: Record<string, EngineResult>[]): Record<string, EngineResult> {
  const out: Record<string, EngineResult> = {};
  for (const w of workloads) {
    const got = rounds.map((r) => r[w.id]!);
    const ok = got.filter((g): g is Extract<EngineResult, { status: 'ok' }> => g.status === 'ok');
    if (ok.length === 0) {
      out[w.id] = got[0]!;
      continue;
    }
    const samplesMs = ok.flatMap((g) => g.samplesMs);
    const msPerIter = median(samplesMs);
    const limited = [...new Set(ok.map((g) => g.limited).filter((l): l is string => l !== null))];
    if (ok.length < got.length) limited.push(`${got.length - ok.length} of ${got.length} rounds failed`);
    const busyCores = ok.map((g) => g.otherCores);
    out[w.id] = {
      ...ok[0]!,
      msPerIter,
      imgPerSec: (w.batch * 1000) / msPerIter,
      runs: samplesMs.length,
      warmup: ok.reduce((a, g) => a + g.warmup, 0),
      samplesMs,
      roundsMs: ok.map((g) => g.msPerIter),
      limited: limited.length ? limited.join('; ') : null,
      otherCores: busyCores.some((b) => b === null) ? null : busyCores.reduce((a: number, b) => a + b!, 0) / busyCores.length,
    };
  }
  return out;
}

function mergePeer(workloads: readonly Workload[], rounds: PeerRun[]): PeerRun {
  const ok = rounds.filter((r) => r.available);
  if (ok.length === 0) return rounds[0]!;
  return { ...ok[0]!, results: mergeRounds(workloads, ok.map((r) => r.results)) };
}

export function fmtMs(ms: number): string {
  return ms >= 10_000 ? `${(ms / 1000).toFixed(1)} s` : ms >= 100 ? `${ms.toFixed(0)} ms` : `${ms.toFixed(2)} ms`;
}
