/**
 * The benchmark harness (src/bench, `resnet bench`) on the hidden smoke-test workload "tiny"
 * (CIFAR ResNet-20 inference, batch 2) without peers: the report's structure, the text table,
 * the CLI's --json output and its usage errors, the "not available" path of a missing Python, and
 * the time-budget rules of the Timer on synthetic durations. No assertion depends on speed.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { UsageError, kernels, nativeBackend } from '../src/index.js';
import { WORKLOADS, cpuCaches, cpuModel, fastestRatio, formatReport, hugePagesMode, runBench, selectWorkloads, type BenchReport } from '../src/bench/index.js';
import type { EngineResult } from '../src/bench/peers.js';
import { Timer, median, type TimingPlan } from '../src/bench/timing.js';
import { childTimeoutMs } from '../src/bench/peers.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const CLI = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');

function resnet(...args: string[]): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd: ROOT, encoding: 'utf8', timeout: 120_000, env: { ...process.env, RESNET_BACKEND: 'ts' } });
  if (r.error) throw r.error;
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** The structure every report has, whatever the numbers. */
function checkReport(r: BenchReport, ids: string[]): void {
  assert.equal(r.tool, 'resnet-ts bench');
  assert.ok(!Number.isNaN(Date.parse(r.date)));
  assert.equal(typeof r.machine.cpu, 'string');
  assert.ok(r.machine.cpu.length > 0);
  assert.ok(r.machine.logicalCores >= 1);
  assert.ok(r.machine.caches === null || /^L1d? \d+[KM](, L\d+d? \d+[KM])*$/.test(r.machine.caches), `caches: ${r.machine.caches}`);
  assert.ok(r.machine.hugePages === null || ['always', 'madvise', 'never'].includes(r.machine.hugePages), `hugePages: ${r.machine.hugePages}`);
  assert.ok('RESNET_HUGE_PAGES' in r.machine.env);
  assert.equal(r.machine.node, process.version);
  assert.equal(r.machine.loadAverageStart.length, 3);
  assert.deepEqual(Object.keys(r.machine.otherProcessesCores), ['resnet-ts', 'onnxruntime', 'pytorch', 'memory']);
  const oc = r.machine.otherProcessesCores['resnet-ts'];
  assert.ok(oc === null || (Number.isFinite(oc) && oc >= 0));
  assert.ok('OPENBLAS_CORETYPE' in r.machine.env);
  assert.equal(typeof r.backend, 'string');
  assert.ok(r.backends.includes(r.backend));
  assert.ok(r.oursThreads >= 1);
  assert.deepEqual(r.workloads.map((w) => w.id), ids);
  for (const w of r.workloads) {
    assert.deepEqual(Object.keys(w.results).sort(), ['onnxruntime', 'pytorch', 'resnet-ts']);
    const ours = w.results['resnet-ts'];
    assert.equal(ours.status, 'ok');
    if (ours.status !== 'ok') continue;
    assert.ok(Number.isFinite(ours.msPerIter) && ours.msPerIter > 0);
    assert.ok(Math.abs(ours.imgPerSec - (w.batch * 1000) / ours.msPerIter) < 1e-9 * ours.imgPerSec);
    assert.equal(ours.samplesMs.length, ours.runs);
    assert.ok(ours.runs >= 1);
    assert.ok(ours.limited === null || typeof ours.limited === 'string');
    assert.equal(typeof ours.params, 'number');
    assert.ok(ours.otherCores === null || (Number.isFinite(ours.otherCores) && ours.otherCores >= 0));
  }
}

describe('runBench (in process)', () => {
  test('tiny workload, no peers: report structure and text table', () => {
    const r = runBench({ only: 'tiny', peers: false, warmup: 0, processWarmup: 0, runs: 1, budgetS: 0 });
    checkReport(r, ['tiny']);
    assert.equal(r.backend, kernels().name);
    const w = r.workloads[0]!;
    assert.equal(w.kind, 'inference');
    assert.equal(w.batch, 2);
    assert.deepEqual(w.input, [3, 32, 32]);
    assert.equal(w.results['resnet-ts'].status === 'ok' && w.results['resnet-ts'].runs, 1);
    assert.equal(w.results['resnet-ts'].status === 'ok' && w.results['resnet-ts'].params, 269_722);
    for (const peer of ['onnxruntime', 'pytorch'] as const) assert.deepEqual(w.results[peer], { status: 'n/a', reason: 'skipped (--no-peers)' });
    assert.deepEqual(w.ratios, { vsOnnxruntime: null, vsPytorch: null });
    assert.deepEqual(w.fastestRatios, { vsOnnxruntime: null, vsPytorch: null });
    assert.deepEqual(r.peers, { onnxruntime: null, pytorch: null });
    assert.equal(r.memory, null, 'memory is measured only for resnet50-b1');
    assert.deepEqual(r.settings, { threads: 2, warmup: 0, processWarmup: 0, runs: 1, rounds: 1, budgetS: 0, seed: 0, equalAllocator: false }, 'rounds: at most the runs');
    JSON.parse(JSON.stringify(r)); // serialisable

    const text = formatReport(r);
    assert.match(text, /^resnet-ts bench /);
    assert.ok(text.includes(`machine:  ${r.machine.cpu}`));
    assert.match(text, /^CIFAR ResNet-20 inference, 3x32x32, batch 2 \(smoke test\) {2}\[tiny\]$/m);
    assert.match(text, /^ {2}engine\s+ms\/iter\s+img\/s\s+runs\s+note$/m);
    assert.match(text, new RegExp(`^  resnet-ts \\(${r.backend}\\)\\s+[\\d,]+\\.\\d\\d\\s+[\\d.]+\\s+1/1( {2}contended: .*)?$`, 'm'));
    assert.match(text, /^ {2}resnet-ts vs ORT: - {3}resnet-ts vs PyTorch: -/m);
    assert.match(text, /^ {2}fastest runs: vs ORT - {3}vs PyTorch - {3}\(ratio of each engine's fastest timed run\)$/m);
  });

  test("the process warm-up: resnet-ts's untimed runs of each workload before the rounds, in the report", () => {
    const r = runBench({ only: 'tiny,tiny-train', peers: false, warmup: 0, processWarmup: 3, runs: 1, budgetS: 0 });
    assert.equal(r.settings.processWarmup, 3);
    assert.deepEqual(r.processWarmupRuns, { tiny: 3, 'tiny-train': 3 });
    assert.match(formatReport(r), /^ {10}resnet-ts's process warmed first: 3 untimed runs of each workload \(V8 compiles /m);
    // a quarter of the time budget caps it: 1 ms leaves room for the one run that is always made
    const capped = runBench({ only: 'tiny-train', peers: false, warmup: 0, processWarmup: 1000, runs: 1, budgetS: 0.004 });
    assert.ok(capped.processWarmupRuns['tiny-train']! >= 1 && capped.processWarmupRuns['tiny-train']! < 1000, String(capped.processWarmupRuns['tiny-train']));
    assert.throws(() => runBench({ only: 'tiny', peers: false, processWarmup: -1 }), /--process-warmup must be an integer >= 0, got -1/);
  });

  test("the native kernels' instruction set in the settings line, and a note when it is not AVX-512", () => {
    const r = runBench({ only: 'tiny', peers: false, warmup: 0, processWarmup: 0, runs: 1, budgetS: 0 });
    const nb = nativeBackend();
    assert.equal(r.isa, nb !== null && kernels() === nb ? nb.isa : null);
    const line = (t: string): string => t.split('\n').find((l) => l.startsWith('settings: '))!;
    const noted = (t: string): boolean => /note: without AVX-512 the native convolutions run an AVX2 Winograd \(3x3 stride-1 layers up to 128 channels, 256 in inference\), pixels in lanes \(other 3x3 layers\), tap panels \(other forwards, small weight gradients\) or im2col \+ GEMM: measured about 1\.2-2\.6x slower/.test(t);
    assert.equal(r.l2KB, r.isa !== null ? nb!.l2Bytes / 1024 : null);
    r.backend = 'native';
    r.isa = 'avx512';
    r.l2KB = null;
    assert.match(line(formatReport(r)), /^settings: backend native \(avx512 kernels\) \(registered: /);
    r.l2KB = 1024;
    assert.match(line(formatReport(r)), /^settings: backend native \(avx512 kernels, blocking sized for a 1024 KB L2\) \(registered: /);
    r.l2KB = null;
    assert.equal(noted(formatReport(r)), false);
    r.isa = 'avx2';
    assert.match(line(formatReport(r)), /^settings: backend native \(avx2 kernels\) /);
    assert.ok(noted(formatReport(r)), 'avx2: the note on the im2col path');
    r.backend = 'ts';
    r.isa = null;
    assert.match(line(formatReport(r)), /^settings: backend ts \(registered: /);
    assert.equal(noted(formatReport(r)), false);
  });

  test("the threads' cache-line round trip at start and end, and what it says about the caches", () => {
    const r = runBench({ only: 'tiny', peers: false, warmup: 0, processWarmup: 0, runs: 1, budgetS: 0 });
    const nb = nativeBackend();
    if (nb !== null && kernels() === nb && r.oursThreads > 1) {
      assert.ok(r.handoffNs !== null && r.handoffNs.start > 0 && r.handoffNs.end > 0, JSON.stringify(r.handoffNs));
    } else {
      assert.equal(r.handoffNs, null);
    }
    const line = (t: string): string | undefined => t.split('\n').find((l) => l.includes("threads' cache-line round trip"));
    r.handoffNs = { start: 480, end: 455 };
    assert.equal(line(formatReport(r)), "          threads' cache-line round trip 480 ns at start, 455 ns at end (no shared cache: above 300 ns, what one core writes the other reads at about memory's speed)");
    r.handoffNs = { start: 120, end: 470 };
    assert.match(line(formatReport(r))!, /120 ns at start, 470 ns at end \(a shared cache, then no shared cache: /);
    r.handoffNs = null;
    assert.equal(line(formatReport(r)), undefined);
  });

  test('rounds: the engines take turns, the runs are shared out, the median is over all of them', () => {
    const r = runBench({ only: 'tiny', peers: false, warmup: 0, processWarmup: 0, runs: 5, rounds: 2, budgetS: 0 });
    assert.equal(r.settings.rounds, 2);
    const ours = r.workloads[0]!.results['resnet-ts'];
    assert.ok(ours.status === 'ok');
    assert.equal(ours.runs, 5);
    assert.equal(ours.samplesMs.length, 5);
    assert.equal(ours.roundsMs?.length, 2, 'one median per round');
    const sorted = [...ours.samplesMs].sort((a, b) => a - b);
    assert.equal(ours.msPerIter, sorted[2], 'median of all rounds together');
    assert.match(formatReport(r), /round medians [\d.]+ \/ [\d.]+/);
    assert.throws(() => runBench({ only: 'tiny', peers: false, rounds: 0 }), (e: unknown) => e instanceof UsageError && /--rounds must be an integer >= 1/.test(e.message));
  });

  test("fastest-run ratios: each engine's fastest timed run, in the workload lines and the summary", () => {
    const ok = (samplesMs: number[]): EngineResult => ({ status: 'ok', msPerIter: 0, imgPerSec: 0, runs: samplesMs.length, warmup: 0, samplesMs, limited: null, otherCores: null });
    assert.equal(fastestRatio(ok([10, 12, 30]), ok([15, 11, 40])), 1.1);
    assert.equal(fastestRatio(ok([10]), { status: 'n/a', reason: 'inference only' }), null);
    const r = runBench({ only: 'tiny,tiny-train', peers: false, warmup: 0, processWarmup: 0, runs: 1, budgetS: 0 });
    for (const w of r.workloads) w.fastestRatios = { vsOnnxruntime: 1.5, vsPytorch: 2.25 };
    const text = formatReport(r);
    assert.match(text, /^ {2}fastest runs: vs ORT 1\.50x {3}vs PyTorch 2\.25x {3}\(ratio of each engine's fastest timed run\)$/m);
    assert.match(text, /^ {2}tiny-train .* 1\.50x +2\.25x$/m, 'summary columns');
  });

  test("a peer child's time limit is whole milliseconds for any number of rounds (spawnSync refuses fractions)", () => {
    for (const rounds of [1, 3, 7, 9]) {
      const t = childTimeoutMs({ warmup: 2, runs: 9, budgetMs: 60_000 / rounds }, 4);
      assert.ok(Number.isInteger(t) && t > 0, `${rounds} rounds: ${t}`);
    }
  });

  test('a training workload runs SGD steps', () => {
    const r = runBench({ only: 'tiny-train', peers: false, warmup: 0, processWarmup: 0, runs: 1 });
    checkReport(r, ['tiny-train']);
    assert.equal(r.workloads[0]!.kind, 'train');
  });

  test('a peer that none of the selected workloads applies to is "not run", with no version or settings', () => {
    const r = runBench({ only: 'tiny-train', peers: false, warmup: 0, processWarmup: 0, runs: 1 });
    r.peers.onnxruntime = { available: true };
    assert.match(formatReport(r), /^peers: {4}ONNX Runtime: not run \(none of the selected workloads applies to it\)$/m);
    r.peers.onnxruntime = { available: true, version: '1.30.0' };
    assert.match(formatReport(r), /^peers: {4}ONNX Runtime 1\.30\.0 \(onnxruntime-node, CPU provider, /m);
  });

  test('a missing Python makes PyTorch "not available", not an error', () => {
    const r = runBench({ only: 'tiny', warmup: 0, processWarmup: 0, runs: 1, python: '/nonexistent/python3' });
    const w = r.workloads[0]!;
    assert.deepEqual(w.results.pytorch, { status: 'unavailable', reason: '/nonexistent/python3 not found' });
    assert.equal(r.peers.pytorch?.available, false);
    assert.equal(w.ratios.vsPytorch, null);
    // ONNX Runtime has no export of the CIFAR ResNet: not applicable (whether or not it is installed).
    assert.equal(w.results.onnxruntime.status === 'ok', false);
    assert.match(formatReport(r), /not available: \/nonexistent\/python3 not found/);
  });

  test("--equal-allocator gives the peers resnet-ts's allocator settings; by default they get this process's environment", () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'resnet-fake-python-'));
    try {
      // a stand-in for Python that reports the two variables as torch_bench.py does
      const fake = path.join(dir, 'python3');
      fs.writeFileSync(
        fake,
        '#!/bin/sh\nprintf \'{"torch":"0.0-fake","torchvision":"0.0","threads":1,"interopThreads":1,"results":{},"env":{"MALLOC_MMAP_THRESHOLD_":"%s","MALLOC_TRIM_THRESHOLD_":"%s"}}\\n\' "$MALLOC_MMAP_THRESHOLD_" "$MALLOC_TRIM_THRESHOLD_"\n',
        { mode: 0o755 },
      );
      const equal = runBench({ only: 'tiny', warmup: 0, processWarmup: 0, runs: 1, budgetS: 0, python: fake, equalAllocator: true });
      assert.equal(equal.settings.equalAllocator, true);
      assert.deepEqual(equal.peers.pytorch?.detail?.['env'], { MALLOC_MMAP_THRESHOLD_: '1073741824', MALLOC_TRIM_THRESHOLD_: '1073741824' });
      assert.match(formatReport(equal), /^ {10}peers run with resnet-ts's allocator settings \(--equal-allocator: /m);
      const plain = runBench({ only: 'tiny', warmup: 0, processWarmup: 0, runs: 1, budgetS: 0, python: fake });
      assert.equal(plain.settings.equalAllocator, false);
      const inherited = { MALLOC_MMAP_THRESHOLD_: process.env['MALLOC_MMAP_THRESHOLD_'] ?? '', MALLOC_TRIM_THRESHOLD_: process.env['MALLOC_TRIM_THRESHOLD_'] ?? '' };
      assert.deepEqual(plain.peers.pytorch?.detail?.['env'], inherited);
      const noted = /^ {10}note: PyTorch runs with glibc's allocator defaults/m.test(formatReport(plain));
      assert.equal(noted, inherited.MALLOC_MMAP_THRESHOLD_ === '' && inherited.MALLOC_TRIM_THRESHOLD_ === '', 'the note only where the user set neither');
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test('bad options are UsageErrors, raised before measuring', () => {
    assert.throws(() => runBench({ only: 'resnet50-b1,nope' }), (e: unknown) => e instanceof UsageError && /unknown workload "nope"; known: resnet18-b1, /.test(e.message));
    assert.throws(() => runBench({ only: ' , ' }), UsageError);
    assert.throws(() => runBench({ only: 'tiny', backend: 'cuda' }), (e: unknown) => e instanceof UsageError && /unknown backend "cuda"; available: .*ts/.test(e.message));
    assert.throws(() => runBench({ only: 'tiny', threads: 0 }), UsageError);
  });

  test('workload selection: defaults, order, duplicates', () => {
    const all = selectWorkloads();
    assert.deepEqual(all.map((w) => w.id), ['resnet18-b1', 'resnet18-b8', 'resnet50-b1', 'resnet50-b8', 'resnet18-train', 'resnet20-train']);
    assert.deepEqual(selectWorkloads('resnet20-train, resnet50-b1,resnet20-train').map((w) => w.id), ['resnet20-train', 'resnet50-b1']);
    const r20 = WORKLOADS.find((w) => w.id === 'resnet20-train')!;
    assert.deepEqual([r20.arch, r20.input, r20.batch, r20.kind], ['resnet20', [1, 28, 28], 128, 'train']);
  });
});

describe('resnet bench (CLI)', () => {
  test('--json prints the report object', () => {
    const r = resnet('bench', '--only', 'tiny', '--no-peers', '--json', '--runs', '1', '--warmup', '0', '--process-warmup', '0', '--quiet');
    assert.equal(r.code, 0, r.stderr);
    const report = JSON.parse(r.stdout) as BenchReport;
    checkReport(report, ['tiny']);
    assert.equal(report.backend, 'ts');
  });

  test('text output by default; progress on stderr', () => {
    const r = resnet('bench', '--only', 'tiny', '--no-peers', '--runs', '1', '--warmup', '0', '--process-warmup', '0');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /\[tiny\]/);
    assert.match(r.stderr, /^bench: resnet-ts \(ts\): tiny \.\.\.$/m);
  });

  test('a bad --only name is one clear usage error', () => {
    const r = resnet('bench', '--only', 'resnet50-b2');
    assert.equal(r.code, 2);
    assert.equal(r.stdout, '');
    const lines = r.stderr.trim().split('\n');
    assert.match(lines[0]!, /^resnet: error: unknown workload "resnet50-b2"; known: resnet18-b1, resnet18-b8, resnet50-b1, resnet50-b8, resnet18-train, resnet20-train, tiny, tiny-train$/);
    assert.equal(lines[1], "run 'resnet bench --help' for usage");
  });

  test('bad --backend, --runs and --budget are usage errors', () => {
    const b = resnet('bench', '--backend', 'gpu', '--only', 'tiny');
    assert.equal(b.code, 2);
    assert.match(b.stderr, /^resnet: error: unknown backend "gpu"; available: .*\bts\b/m);
    assert.equal(resnet('bench', '--runs', '0').code, 2);
    assert.match(resnet('bench', '--budget', 'soon').stderr, /--budget must be a number of seconds/);
    assert.match(resnet('bench', '--process-warmup', 'lots').stderr, /--process-warmup must be an integer >= 0, got "lots"/);
  });

  test('--help lists the options and the workloads', () => {
    const r = resnet('bench', '--help');
    assert.equal(r.code, 0);
    for (const o of ['--only', '--backend', '--threads', '--warmup', '--process-warmup', '--runs', '--budget', '--no-peers', '--json', 'resnet20-train', 'resnet50-b8']) {
      assert.ok(r.stdout.includes(o), o);
    }
  });
});

describe('Timer: warm-up, runs and the time budget (synthetic durations)', () => {
  /** Drives a Timer with a constant run time; returns the runs it asked for and its result. */
  function drive(plan: TimingPlan, ms: number): { kinds: string[]; r: ReturnType<Timer['result']> } {
    const t = new Timer(plan);
    const kinds: string[] = [];
    for (let k = t.next(); k !== 'done'; k = t.next()) {
      kinds.push(k);
      t.record(k, ms);
      assert.ok(kinds.length < 100);
    }
    return { kinds, r: t.result(4) };
  }

  test('fast runs: the full plan', () => {
    const { kinds, r } = drive({ warmup: 2, runs: 7, budgetMs: 60_000 }, 10);
    assert.deepEqual(kinds, ['warmup', 'warmup', ...Array<string>(7).fill('timed')]);
    assert.equal(r.limited, null);
    assert.equal(r.msPerIter, 10);
    assert.equal(r.imgPerSec, 400);
  });

  test('slow runs: fewer runs within the budget, and it says so', () => {
    const { kinds, r } = drive({ warmup: 2, runs: 7, budgetMs: 60_000 }, 12_000);
    assert.deepEqual(kinds, ['warmup', 'warmup', 'timed', 'timed', 'timed']);
    assert.equal(r.limited, '3 of 7 runs, 2 of 2 warm-up (60 s time budget)');
    const mid = drive({ warmup: 2, runs: 7, budgetMs: 60_000 }, 25_000);
    assert.deepEqual(mid.kinds, ['warmup', 'timed']);
  });

  test('a run over half the budget: the first run is the only (cold) sample', () => {
    const { kinds, r } = drive({ warmup: 2, runs: 7, budgetMs: 60_000 }, 40_000);
    assert.deepEqual(kinds, ['warmup']);
    assert.equal(r.runs, 1);
    assert.equal(r.warmup, 0);
    assert.match(r.limited!, /^1 cold run \(no warm-up\)/);
  });

  test('no budget, no warm-up', () => {
    assert.deepEqual(drive({ warmup: 0, runs: 3, budgetMs: 0 }, 1e9).kinds, ['timed', 'timed', 'timed']);
  });

  test('median', () => {
    assert.equal(median([3, 1, 2]), 2);
    assert.equal(median([4, 1, 3, 2]), 2.5);
  });
});

describe('training memory against batch size', () => {
  test('the least-squares line and the deviation from it', async () => {
    const { fitLine, summarise } = await import('../src/bench/train_memory.js');
    const [a, b] = fitLine([32, 64, 128, 256], [10 + 0.5 * 32, 10 + 0.5 * 64, 10 + 0.5 * 128, 10 + 0.5 * 256]);
    assert.ok(Math.abs(a - 10) < 1e-9 && Math.abs(b - 0.5) < 1e-12);
    const pts = [32, 64, 128].map((batch) => ({ batch, baselineRssMB: 50, peakRssMB: 50 + 20 + batch }));
    pts.push({ batch: 256, baselineRssMB: 50, peakRssMB: 50 + 20 + 256 + 60 }); // one point off the line
    const s = summarise('w', pts);
    assert.ok(s.slopeMBPerImage > 1 && s.maxDeviationPct > 5, JSON.stringify(s));
    assert.throws(() => fitLine([1], [1]), /two points/);
  });

  test('each batch size runs in a fresh process and reports its peak above the baseline', async () => {
    const { measureTrainMemory } = await import('../src/bench/train_memory.js');
    const worker = fileURLToPath(new URL('../src/bench/rss_worker.js', import.meta.url));
    const r = measureTrainMemory(worker, 'tiny-train', [2, 8], kernels().name, 1, process.env);
    assert.ok(!('error' in r), JSON.stringify(r));
    if ('error' in r) return;
    assert.deepEqual(r.points.map((p) => p.batch), [2, 8]);
    for (const p of r.points) assert.ok(p.peakRssMB >= p.baselineRssMB && p.baselineRssMB > 10, JSON.stringify(p));
    const bad = measureTrainMemory(worker, 'no-such-workload', [2], kernels().name, 1, process.env);
    assert.ok('error' in bad && /batch 2/.test(bad.error), JSON.stringify(bad));
  });
});

test('hugePagesMode reads the selected mode from sysfs, null when missing or unbracketed', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'thp-'));
  try {
    const f = path.join(dir, 'enabled');
    fs.writeFileSync(f, 'always [madvise] never\n');
    assert.equal(hugePagesMode(f), 'madvise');
    fs.writeFileSync(f, '[always] madvise never\n');
    assert.equal(hugePagesMode(f), 'always');
    fs.writeFileSync(f, 'always madvise never\n');
    assert.equal(hugePagesMode(f), null);
    assert.equal(hugePagesMode(path.join(dir, 'missing')), null);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('cpuModel names the CPU with its family and model numbers, or the name alone where they are missing', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'resnet-cpuinfo-'));
  try {
    const f = path.join(dir, 'cpuinfo');
    fs.writeFileSync(f, 'processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\nstepping\t: 1\n\nprocessor\t: 1\ncpu family\t: 26\nmodel\t\t: 2\nmodel name\t: AMD EPYC\n');
    assert.equal(cpuModel(f), 'AMD EPYC (family 26, model 2)');
    fs.writeFileSync(f, 'processor\t: 0\nmodel name\t: Some CPU\n');
    assert.equal(cpuModel(f), 'Some CPU');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('cpuCaches lists the data and unified caches from sysfs in index order, skips instruction caches, null without sysfs', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'caches-'));
  try {
    const entries: [string, string, string, string][] = [['index0', '1', 'Data', '48K'], ['index1', '1', 'Instruction', '32K'], ['index2', '2', 'Unified', '2048K'], ['index10', '4', 'Unified', '1M'], ['index3', '3', 'Unified', '307200K']];
    for (const [name, level, type, size] of entries) {
      fs.mkdirSync(path.join(dir, name));
      fs.writeFileSync(path.join(dir, name, 'level'), `${level}\n`);
      fs.writeFileSync(path.join(dir, name, 'type'), `${type}\n`);
      fs.writeFileSync(path.join(dir, name, 'size'), `${size}\n`);
    }
    fs.mkdirSync(path.join(dir, 'uevent-like'));
    assert.equal(cpuCaches(dir), 'L1d 48K, L2 2048K, L3 307200K, L4 1M');
    assert.equal(cpuCaches(path.join(dir, 'missing')), null);
    fs.rmSync(path.join(dir, 'index2', 'size'));
    assert.equal(cpuCaches(dir), null, 'an unreadable entry: null, not a partial list');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
