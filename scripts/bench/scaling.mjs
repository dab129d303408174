#!/usr/bin/env node
// Per-kernel thread scaling of one `resnet bench` workload: its steps alternate between 1 thread and
// the pool's thread count (RESNET_NUM_THREADS, default the cores) in one process, every native call
// is timed, and each call's fastest run on each thread count is kept (both see the same phases of a
// shared machine). Prints per kernel and per geometry the two times, their ratio, and the time lost
// against perfect scaling (T threads' time - 1 thread's / T): where a second core gains least.
//
//   npm run build && node scripts/bench/scaling.mjs [workload] [steps]
//
// Workloads: the ids of `resnet bench --help` (resnet20-train by default). Some kernels pick another
// path on one thread (Winograd's private chunks need two), so a ratio compares paths as well as
// threads. A development tool: it shows where the threads wait.
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const dist = (p) => path.join(root, 'dist/src', p);
const usage = 'usage: node scripts/bench/scaling.mjs [workload id] [steps >= 1]';
if (process.argv.includes('--help') || process.argv.includes('-h')) {
  console.log(usage);
  process.exit(0);
}
if (!fs.existsSync(dist('index.js'))) {
  console.error('dist/ is missing: run `npm run build` first');
  process.exit(2);
}
const { prepare } = await import(dist('bench/ours.js'));
const { WORKLOADS } = await import(dist('bench/workloads.js'));
const { nativeBackend, getNumThreads, setNumThreads } = await import(dist('kernels/registry.js'));
const [wid = 'resnet20-train', stepsArg = '12'] = process.argv.slice(2);
const workload = WORKLOADS.find((w) => w.id === wid);
const steps = Number(stepsArg);
if (!workload || !Number.isInteger(steps) || steps < 1) {
  console.error(`${usage}\nworkloads: ${WORKLOADS.map((w) => w.id).join(', ')}`);
  process.exit(2);
}
const nb = nativeBackend();
if (!nb) {
  console.error('the native addon is not built (npm run build:native)');
  process.exit(2);
}
const T = getNumThreads();
if (T < 2) {
  console.error(`${T} thread: nothing to compare (set RESNET_NUM_THREADS to 2 or more)`);
  process.exit(2);
}

// every kernel call timed, by call index within a step (a step makes the same calls each time)
const fastest = { 1: [], [T]: [] };
let threads = T, idx = 0, timing = false;
const describe = (name, args) => {
  const p = args.find((a) => a && typeof a === 'object' && !ArrayBuffer.isView(a));
  return p ? `${name} ${JSON.stringify(p).replace(/"/g, '').slice(0, 90)}` : name;
};
for (const name of Object.keys(nb)) {
  const f = nb[name];
  if (typeof f !== 'function' || name === 'setThreads') continue;
  nb[name] = function (...args) {
    const t0 = process.hrtime.bigint();
    const r = f.apply(this, args);
    if (timing) {
      const dt = Number(process.hrtime.bigint() - t0) / 1e6;
      const c = (fastest[threads][idx] ??= { name, key: describe(name, args), t: Infinity });
      c.t = Math.min(c.t, dt);
      idx++;
    }
    return r;
  };
}

const bench = prepare(workload);
for (const n of [T, 1]) {
  setNumThreads(n);
  bench.step();
}
timing = true;
for (let s = 0; s < 2 * steps; s++) {
  threads = s % 2 ? 1 : T;
  setNumThreads(threads);
  idx = 0;
  bench.step();
}
setNumThreads(T);
if (fastest[1].length !== fastest[T].length || fastest[1].some((c, i) => c.key !== fastest[T][i].key)) {
  console.error('the two thread counts made different kernel calls: no per-call comparison');
  process.exit(1);
}

const rows = (keyOf) => {
  const m = new Map();
  fastest[1].forEach((c, i) => {
    const r = m.get(keyOf(c)) ?? { n: 0, one: 0, many: 0 };
    r.n++;
    r.one += c.t;
    r.many += fastest[T][i].t;
    m.set(keyOf(c), r);
  });
  return [...m].map(([k, r]) => ({ k, ...r, lost: r.many - r.one / T })).sort((a, b) => b.lost - a.lost);
};
const fmt = (r) => `${r.one.toFixed(2).padStart(8)} ${r.many.toFixed(2).padStart(8)} ${(r.one / r.many).toFixed(2).padStart(5)}x ${r.lost.toFixed(2).padStart(7)}`;
console.log(`${workload.title} [${wid}]: fastest of ${steps} steps per thread count, ms a step`);
console.log(`${'kernel'.padEnd(28)} ${'1 thread'.padStart(8)} ${`${T} thr.`.padStart(8)} ratio    lost`);
const byKernel = rows((c) => c.name);
for (const r of byKernel) console.log(`${r.k.padEnd(28)} ${fmt(r)}`);
const total = byKernel.reduce((a, r) => ({ one: a.one + r.one, many: a.many + r.many, lost: a.lost + r.lost }), { one: 0, many: 0, lost: 0 });
console.log(`${'sum'.padEnd(28)} ${fmt(total)}`);
console.log(`\nby call geometry (the ${Math.min(20, fastest[1].length)} that lose most):`);
for (const r of rows((c) => c.key).slice(0, 20)) console.log(`${fmt(r)}  ${String(r.n).padStart(3)}x ${r.k}`);
