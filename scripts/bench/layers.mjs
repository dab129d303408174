#!/usr/bin/env node
// Layer-by-layer inference times of resnet-ts against ONNX Runtime, in one process, the two engines'
// runs alternating (both see the same phases of a shared machine).
//
//   npm run build && node scripts/bench/layers.mjs [resnet18|resnet50] [batch] [runs]
//
// resnet-ts: the compiled inference plan, every native kernel call timed (convolutions by geometry).
// ONNX Runtime: its own profiler's per-node kernel times (enableProfiling), on the model that
// `resnet bench` exported to ~/.cache/resnet-ts/bench/<arch>.onnx ($XDG_CACHE_HOME honoured; run that once first; without the
// model or onnxruntime-node, resnet-ts's column alone is printed). Each row sums, over the layers of
// one geometry, the fastest of the runs of each layer. Both engines on RESNET_NUM_THREADS (default 2)
// threads. A development tool: it shows where the time of the two engines differs.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const usage = 'usage: node scripts/bench/layers.mjs [resnet18|resnet50] [batch >= 1] [runs >= 1]';
const [arch = 'resnet50', batchArg = '1', runsArg = '20'] = process.argv.slice(2);
const batch = Number(batchArg), runs = Number(runsArg);
if (process.argv.includes('--help') || process.argv.includes('-h')) {
  console.log(usage);
  process.exit(0);
}
if (!['resnet18', 'resnet50'].includes(arch) || !Number.isInteger(batch) || batch < 1 || !Number.isInteger(runs) || runs < 1) {
  console.error(usage);
  process.exit(2);
}
const dist = (p) => path.join(root, 'dist/src', p);
if (!fs.existsSync(dist('index.js'))) {
  console.error('dist/ is missing: run `npm run build` first');
  process.exit(2);
}
const { createModel } = await import(dist('models/registry.js'));
const { compileInference } = await import(dist('inference/plan.js'));
const { Tensor } = await import(dist('tensor/tensor.js'));
const { nativeBackend, getNumThreads } = await import(dist('kernels/registry.js'));
const nb = nativeBackend();
if (!nb) {
  console.error('the native addon is not built (npm run build:native)');
  process.exit(2);
}
const threads = getNumThreads();

// resnet-ts: time every kernel call of a run, by call index (the plan makes the same calls each run)
let calls = null;
let idx = 0;
const key = (p) => `${p.cIn}->${p.cOut} ${p.h}x${p.w} k${p.kh} s${p.sh}`;
for (const name of Object.keys(nb)) {
  const f = nb[name];
  if (typeof f !== 'function') continue;
  nb[name] = function (...args) {
    const t0 = process.hrtime.bigint();
    const r = f.apply(this, args);
    if (calls) {
      const p = args.find((a) => a && typeof a === 'object' && 'cIn' in a && 'kh' in a);
      const c = (calls[idx] ??= { key: p ? key(p) : name, t: Infinity });
      c.t = Math.min(c.t, Number(process.hrtime.bigint() - t0) / 1e6);
      idx++;
    }
    return r;
  };
}
const model = createModel(arch, { numClasses: 1000 });
model.eval();
const plan = compileInference(model);
const data = new Float32Array(batch * 3 * 224 * 224);
for (let i = 0; i < data.length; i++) data[i] = Math.sin(i * 0.37) * 0.5;
const x = new Tensor([batch, 3, 224, 224], data);

// ONNX Runtime, when it and the exported model are there
const cache = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
const onnx = path.join(cache, 'resnet-ts/bench', `${arch}.onnx`);
let ort = null, session = null, feeds = null, profDir = null;
try {
  if (fs.existsSync(onnx)) {
    ort = (await import('onnxruntime-node')).default;
    profDir = fs.mkdtempSync(path.join(os.tmpdir(), 'resnet-layers-'));
    session = await ort.InferenceSession.create(onnx, {
      executionProviders: ['cpu'], intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: 'all',
      executionMode: 'sequential', enableProfiling: true, profileFilePrefix: path.join(profDir, 'ort'),
      // its pool's threads would otherwise spin on after each run, through resnet-ts's next one
      extra: { session: { intra_op: { allow_spinning: '0' } } },
    });
    feeds = { [session.inputNames[0]]: new ort.Tensor('float32', data, [batch, 3, 224, 224]) };
  } else console.error(`no ${onnx} (run \`resnet bench\` once to export it): resnet-ts only`);
} catch (e) {
  console.error(`onnxruntime-node unavailable (${e.message.split('\n')[0]}): resnet-ts only`);
  session = null;
}

const warm = 2;
const total = { ours: [], ort: [] };
const ours = [];
for (let i = 0; i < warm + runs; i++) {
  calls = i >= warm ? ours : null;
  idx = 0;
  let t0 = performance.now();
  plan.run(x);
  if (i >= warm) total.ours.push(performance.now() - t0);
  if (session) {
    t0 = performance.now();
    await session.run(feeds);
    if (i >= warm) total.ort.push(performance.now() - t0);
  }
}
calls = null;

const rows = new Map(); // key -> {n, ours, ort}
const row = (k) => rows.get(k) ?? rows.set(k, { n: 0, ours: 0, ort: 0, nOrt: 0 }).get(k);
for (const c of ours) {
  const r = row(c.key);
  r.n++;
  r.ours += c.t;
}
if (session) {
  await session.endProfiling(); // writes ort_<date>.json into profDir
  const file = fs.readdirSync(profDir).find((n) => n.endsWith('.json'));
  if (!file) throw new Error(`ONNX Runtime wrote no profile into ${profDir}`);
  const events = JSON.parse(fs.readFileSync(path.join(profDir, file), 'utf8'));
  const best = new Map(); // node -> {key, t[]}
  for (const e of events) {
    if (e.cat !== 'Node' || !e.name.endsWith('_kernel_time')) continue;
    const a = e.args;
    let k = a.op_name;
    if (a.op_name === 'Conv') {
      const [xs, ws] = a.input_type_shape.map((s) => Object.values(s)[0]);
      const ys = Object.values(a.output_type_shape[0])[0];
      k = key({ cIn: xs[1], cOut: ws[0], h: xs[2], w: xs[3], kh: ws[2], sh: Math.round(xs[2] / ys[2]) });
    }
    const b = best.get(e.name) ?? best.set(e.name, { key: k, t: [] }).get(e.name);
    b.t.push(e.dur / 1000);
  }
  for (const b of best.values()) {
    const r = row(b.key);
    r.ort += Math.min(...b.t.slice(warm));
    r.nOrt++;
  }
  fs.rmSync(profDir, { recursive: true, force: true });
}

const med = (t) => [...t].sort((a, b) => a - b)[t.length >> 1];
const f = (v) => v.toFixed(2).padStart(8);
console.log(`${arch} batch ${batch}, ${runs} runs each, ${threads} threads; ms (sum over the layers of the fastest run of each)`);
console.log(`${'layer (in->out map kernel stride)'.padEnd(34)} ${'n'.padStart(3)} ${'resnet-ts'.padStart(9)} ${session ? 'ORT'.padStart(8) + '   ORT/ours' : ''}`);
let so = 0, sr = 0;
for (const [k, r] of rows) {
  so += r.ours;
  sr += r.ort;
  const ratio = session && r.ours > 0 && r.ort > 0 ? (r.ort / r.ours).toFixed(2).padStart(10) : '';
  console.log(`${k.padEnd(34)} ${String(r.n || r.nOrt).padStart(3)} ${r.n ? f(r.ours) + ' ' : '       -  '}${session ? (r.nOrt ? f(r.ort) : '       -') + ratio : ''}`);
}
console.log(`${'sum'.padEnd(34)}     ${f(so)} ${session ? f(sr) + (sr / so).toFixed(2).padStart(10) : ''}`);
console.log(`whole runs, median: resnet-ts ${med(total.ours).toFixed(1)} ms${session ? `, ORT ${med(total.ort).toFixed(1)} ms` : ''}`);
