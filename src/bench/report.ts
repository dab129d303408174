/** Text rendering of a BenchReport: a header, one table per workload, a summary, peak memory. */
import type { BenchReport, Engine } from './index.js';
import type { EngineResult, PeerRun } from './peers.js';

/** Above this many cores used by other processes, a measurement is flagged as contended. */
export const CONTENDED = 0.1;

function cols(rows: readonly (readonly string[])[], right: readonly boolean[], indent = '  '): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => indent + r.map((c, i) => (right[i] ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ').trimEnd()).join('\n') + '\n';
}

export function fmtMsCell(ms: number): string {
  return ms.toLocaleString('en-US', { minimumFractionDigits: 2, maximumFractionDigits: 2 });
}

export function fmtImgs(v: number): string {
  return v >= 100 ? v.toFixed(1) : v >= 1 ? v.toFixed(2) : v.toFixed(3);
}

export function fmtRatio(r: number | null): string {
  if (r === null) return '-';
  return `${r >= 10 ? r.toFixed(1) : r >= 0.1 ? r.toFixed(2) : r.toPrecision(2)}x`;
}

function engineName(r: BenchReport, e: Engine): string {
  if (e === 'resnet-ts') return `resnet-ts (${r.backend})`;
  const p = e === 'onnxruntime' ? r.peers.onnxruntime : r.peers.pytorch;
  const base = e === 'onnxruntime' ? 'ONNX Runtime' : 'PyTorch';
  return p?.version ? `${base} ${p.version}` : base;
}

function resultCells(res: EngineResult, runsWanted: number): [string, string, string, string] {
  if (res.status !== 'ok') return ['-', '-', '-', res.status === 'n/a' ? res.reason : `not available: ${res.reason}`];
  const notes = [res.limited ?? ''];
  if (res.roundsMs && res.roundsMs.length > 1) notes.push(`round medians ${res.roundsMs.map((m) => fmtMsCell(m)).join(' / ')}`);
  if (res.otherCores !== null && res.otherCores !== undefined && res.otherCores > CONTENDED) {
    notes.push(`contended: other processes used ${res.otherCores.toFixed(2)} cores`);
  }
  return [fmtMsCell(res.msPerIter), fmtImgs(res.imgPerSec), `${res.runs}/${runsWanted}`, notes.filter((n) => n !== '').join('; ')];
}

function peerLine(name: string, p: Omit<PeerRun, 'results'> | null, describe: (p: Omit<PeerRun, 'results'>) => string): string {
  if (p === null) return `${name}: skipped (--no-peers)`;
  if (!p.available) return `${name}: not available (${p.reason ?? 'unknown reason'})`;
  if (p.version === undefined) return `${name}: not run (none of the selected workloads applies to it)`;
  return `${name} ${p.version} (${describe(p)})`;
}

/** A cache-line round trip between the threads above this (ns): they share no last-level cache. */
const FAR_NS = 300;

export function formatReport(r: BenchReport): string {
  const m = r.machine;
  const s = r.settings;
  const out: string[] = [];
  const date = r.date.replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
  out.push(`resnet-ts bench (resnet-ts ${r.version}), ${date}`);
  out.push(`machine:  ${m.cpu}, ${m.logicalCores} logical cores${m.caches ? ` (${m.caches})` : ''}, ${m.memoryGB} GB${m.hugePages ? `, huge pages ${m.hugePages}` : ''}; node ${m.node} (${m.platform})`);
  out.push(`          load average ${m.loadAverageStart.join(' ')} at start, ${m.loadAverageEnd.join(' ')} at end`);
  const oc = m.otherProcessesCores;
  const phases = (['resnet-ts', 'onnxruntime', 'pytorch', 'memory'] as const).filter((k) => oc[k] !== null);
  if (phases.length > 0) {
    out.push(`          CPU used by other processes (average cores): ${phases.map((k) => `${k} ${oc[k]!.toFixed(2)}`).join(', ')}`);
    const worst = Math.max(...phases.map((k) => oc[k]!));
    if (worst > CONTENDED) out.push(`          warning: other processes competed for the ${m.logicalCores} cores (up to ${worst.toFixed(2)} of a core): the affected timings are pessimistic`);
  }
  out.push(
    `settings: backend ${r.backend}${r.isa !== null ? ` (${r.isa} kernels${r.l2KB ? `, blocking sized for a ${r.l2KB} KB L2` : ''})` : ''} (registered: ${r.backends.join(', ')}), ${s.threads} thread(s)` +
      `${r.oursThreads !== s.threads ? ` (resnet-ts kernels use ${r.oursThreads}${r.backend === 'ts' ? ': the ts backend is single-threaded' : ''})` : ''}, float32`,
  );
  if (r.handoffNs) {
    const { start, end } = r.handoffNs;
    const shared = (ns: number): string => (ns > FAR_NS ? 'no shared cache' : 'a shared cache');
    out.push(
      `          threads' cache-line round trip ${start} ns at start, ${end} ns at end (${shared(start) === shared(end) ? shared(start) : `${shared(start)}, then ${shared(end)}`}: above ${FAR_NS} ns, what one core writes the other reads at about memory's speed)`,
    );
  }
  if (r.isa !== null && r.isa !== 'avx512') {
    out.push(
      `          note: without AVX-512 the native convolutions run an AVX2 Winograd (3x3 stride-1 layers up to 128 channels, 256 in inference), pixels in lanes (other 3x3 layers), tap panels (other forwards, small weight gradients) or im2col + GEMM: measured about 1.2-2.6x slower than the AVX-512 kernels (docs/PERFORMANCE.md, "Without AVX-512")`,
    );
  }
  out.push(`          ${s.rounds} round(s) in turn, each ${s.warmup} warm-up + its share of ${s.runs} timed runs; median over all; time budget ${s.budgetS > 0 ? `${s.budgetS} s` : 'none'} per workload and engine`);
  const warmed = Object.values(r.processWarmupRuns);
  if (warmed.length > 0) {
    const lo = Math.min(...warmed), hi = Math.max(...warmed);
    out.push(
      `          resnet-ts's process warmed first: ${lo === hi ? lo : `${lo}-${hi}`} untimed runs of each workload (V8 compiles a training step's JavaScript over its first ~30 steps, on a thread that takes a core from the kernels); the peers' eager code has nothing to compile`,
    );
  }
  out.push(
    `peers:    ${peerLine('ONNX Runtime', r.peers.onnxruntime, () => `onnxruntime-node, CPU provider, intra-op ${s.threads}, inter-op 1, graph optimisation all, sequential`)}`,
  );
  out.push(
    `          ${peerLine('PyTorch', r.peers.pytorch, (p) => {
      const d = p.detail ?? {};
      return `torchvision ${String(d['torchvision'])}, ${String(d['python'])}, ${String(d['threads'])} thread(s), inter-op ${String(d['interopThreads'])}`;
    })}`,
  );
  if (s.equalAllocator) {
    out.push(`          peers run with resnet-ts's allocator settings (--equal-allocator: glibc's mmap and trim thresholds at 1 GiB, as its addon sets its own)`);
  } else if (r.peers.pytorch?.available && !m.env['MALLOC_MMAP_THRESHOLD_'] && !m.env['MALLOC_TRIM_THRESHOLD_']) {
    out.push(
      `          note: PyTorch runs with glibc's allocator defaults, so its training steps and batch-8 inference include page faults that resnet-ts's allocator settings avoid; --equal-allocator gives the peers those settings (docs/PERFORMANCE.md, "PyTorch and glibc's allocator")`,
    );
  }
  out.push(`env:      ${Object.entries(m.env).map(([k, v]) => `${k}=${v ?? '(unset)'}`).join(' ')}`);
  out.push('');

  for (const w of r.workloads) {
    out.push(`${w.title}  [${w.id}]`);
    const rows: string[][] = [['engine', 'ms/iter', 'img/s', 'runs', 'note']];
    for (const e of ['resnet-ts', 'onnxruntime', 'pytorch'] as const) rows.push([engineName(r, e), ...resultCells(w.results[e], s.runs)]);
    out.push(cols(rows, [false, true, true, true, false]).trimEnd());
    out.push(`  resnet-ts vs ORT: ${fmtRatio(w.ratios.vsOnnxruntime)}   resnet-ts vs PyTorch: ${fmtRatio(w.ratios.vsPytorch)}   (throughput ratio of the medians; > 1: resnet-ts is faster)`);
    out.push(`  fastest runs: vs ORT ${fmtRatio(w.fastestRatios.vsOnnxruntime)}   vs PyTorch ${fmtRatio(w.fastestRatios.vsPytorch)}   (ratio of each engine's fastest timed run)`);
    out.push('');
  }

  if (r.workloads.length > 1) {
    out.push("summary: median ms per iteration (img/s), ratio = resnet-ts throughput / peer throughput (of the medians, and of each engine's fastest run)");
    const cell = (x: EngineResult): string =>
      x.status === 'ok' ? `${fmtMsCell(x.msPerIter)} (${fmtImgs(x.imgPerSec)})${(x.otherCores ?? 0) > CONTENDED ? '*' : ''}` : x.status === 'n/a' ? 'n/a' : 'not available';
    const rows = [['workload', `resnet-ts (${r.backend})`, 'ONNX Runtime', 'PyTorch', 'vs ORT', 'vs PyTorch', 'fastest: vs ORT', 'vs PyTorch']];
    for (const w of r.workloads) {
      rows.push([
        w.id,
        cell(w.results['resnet-ts']),
        cell(w.results.onnxruntime),
        cell(w.results.pytorch),
        fmtRatio(w.ratios.vsOnnxruntime),
        fmtRatio(w.ratios.vsPytorch),
        fmtRatio(w.fastestRatios.vsOnnxruntime),
        fmtRatio(w.fastestRatios.vsPytorch),
      ]);
    }
    out.push(cols(rows, [false, true, true, true, true, true, true, true]).trimEnd());
    if (r.workloads.some((w) => Object.values(w.results).some((x) => x.status === 'ok' && (x.otherCores ?? 0) > CONTENDED))) {
      out.push(`  * contended: other processes used more than ${CONTENDED} of a core during these runs (pessimistic)`);
    }
    out.push('');
  }

  if (r.memory) {
    out.push(`peak memory, ${r.memory.workload}: ${r.memory.method}`);
    const rows = [['engine', 'peak RSS (MB)', 'baseline (MB)', 'peak - baseline', 'note']];
    for (const e of ['resnet-ts', 'onnxruntime', 'pytorch'] as const) {
      const x = r.memory.results[e];
      rows.push(
        x.status === 'ok'
          ? [engineName(r, e), x.peakRssMB!.toFixed(0), x.baselineRssMB!.toFixed(0), (x.peakRssMB! - x.baselineRssMB!).toFixed(0), '']
          : [engineName(r, e), '-', '-', '-', `not available: ${x.reason ?? ''}`],
      );
    }
    out.push(cols(rows, [false, true, true, true, false]).trimEnd());
    out.push('');
  }
  const tm = r.trainMemory;
  if (tm && 'error' in tm) {
    out.push(`training memory against batch size: not available: ${tm.error}`, '');
  } else if (tm) {
    out.push(`training memory against batch size, ${tm.workload} (resnet-ts): ${tm.method}`);
    const rows = [['batch', 'peak RSS (MB)', 'baseline (MB)', 'peak - baseline']];
    for (const p of tm.points) rows.push([String(p.batch), p.peakRssMB.toFixed(0), p.baselineRssMB.toFixed(0), (p.peakRssMB - p.baselineRssMB).toFixed(0)]);
    out.push(cols(rows, [true, true, true, true]).trimEnd());
    out.push(`  linear fit: ${tm.interceptMB.toFixed(1)} MB + ${tm.slopeMBPerImage.toFixed(3)} MB per image; largest deviation from the line ${tm.maxDeviationPct.toFixed(1)} %`, '');
  }
  return out.join('\n');
}
