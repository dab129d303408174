/**
 * ONNX Runtime peer of `resnet bench`, run as a child process by src/bench/peers.ts (ORT's API is
 * asynchronous and its native library is best kept out of the measuring process).
 *
 * usage: node ort_worker.js '<config JSON>'   with {models: {arch: path.onnx}, workloads, plan,
 * threads, seed, mode: 'time' | 'rss'}. Sessions use the CPU execution provider with
 * intraOpNumThreads = threads, interOpNumThreads = 1, graphOptimizationLevel 'all' and sequential
 * execution. Prints one JSON object: {version, results: {id: Measurement}, baselineRssMB,
 * peakRssMB}, or {error} (exit 3) when onnxruntime-node cannot be loaded.
 */
import { Generator } from '../tensor/rng.js';
import { currentRssMB, peakRssMB } from './memory.js';
import { measureAsync, type TimingPlan } from './timing.js';
import type { Workload } from './workloads.js';

interface OrtSession {
  readonly inputNames: readonly string[];
  run(feeds: Record<string, unknown>): Promise<Record<string, unknown>>;
}
interface OrtModule {
  InferenceSession: { create(path: string, options: Record<string, unknown>): Promise<OrtSession> };
  Tensor: new (type: 'float32', data: Float32Array, dims: readonly number[]) => unknown;
  env: { versions?: { node?: string; common?: string } };
}

export interface OrtWorkerConfig {
  models: Record<string, string>;
  workloads: Workload[];
  plan: TimingPlan;
  threads: number;
  seed: number;
  mode: 'time' | 'rss';
}

async function main(): Promise<void> {
  const cfg = JSON.parse(process.argv[2] ?? '{}') as OrtWorkerConfig;
  let ort: OrtModule;
  try {
    const name = 'onnxruntime-node';
    ort = (await import(name)) as OrtModule;
  } catch (e) {
    process.stdout.write(JSON.stringify({ error: `cannot load onnxruntime-node: ${(e as Error).message.split('\n')[0]}` }) + '\n');
    process.exitCode = 3;
    return;
  }
  const baselineRssMB = currentRssMB();
  const sessions = new Map<string, OrtSession>();
  const results: Record<string, unknown> = {};
  for (const w of cfg.workloads) {
    const file = cfg.models[w.arch];
    if (file === undefined) throw new Error(`no ONNX model for ${w.arch}`);
    let s = sessions.get(w.arch);
    if (s === undefined) {
      s = await ort.InferenceSession.create(file, {
        executionProviders: ['cpu'],
        intraOpNumThreads: cfg.threads,
        interOpNumThreads: 1,
        graphOptimizationLevel: 'all',
        executionMode: 'sequential',
      });
      sessions.set(w.arch, s);
    }
    const gen = new Generator(cfg.seed);
    const dims = [w.batch, ...w.input];
    const data = new Float32Array(dims.reduce((a, b) => a * b, 1));
    for (let i = 0; i < data.length; i++) data[i] = gen.normal();
    const feeds = { [s.inputNames[0]!]: new ort.Tensor('float32', data, dims) };
    const session = s;
    if (cfg.mode === 'rss') {
      await session.run(feeds);
      await session.run(feeds);
      results[w.id] = {};
    } else {
      results[w.id] = await measureAsync(() => session.run(feeds), cfg.plan, w.batch);
    }
  }
  const version = ort.env.versions?.node ?? ort.env.versions?.common ?? 'unknown';
  process.stdout.write(JSON.stringify({ version, results, baselineRssMB, peakRssMB: peakRssMB() }) + '\n');
}

main().catch((e: unknown) => {
  process.stdout.write(JSON.stringify({ error: String((e as Error).message ?? e).split('\n')[0] }) + '\n');
  process.exitCode = 4;
});
