/**
 * Peak memory of resnet-ts on one workload, measured in a fresh process so that nothing else the
 * benchmark did (other models, peers' results) inflates it. Run by src/bench/index.ts:
 *
 *   node rss_worker.js '{"workload": "resnet50-b1", "backend": "ts", "threads": 2}'
 *
 * Builds the model, runs two iterations, and prints {backend, baselineRssMB, peakRssMB, params}
 * (`"batch": N` in the argument overrides the workload's batch size, for train_memory.ts):
 * baseline is the RSS after loading resnet-ts (the Node runtime and the library), peak is the
 * kernel's high-water mark of this process's resident memory (see memory.ts: VmHWM, not maxrss).
 * `threads` sets the native backend's thread count (as the benchmarking process does).
 */
import { kernels, setBackend, setNumThreads } from '../kernels/registry.js';
import '../index.js'; // whatever registers extra backends (the native addon) on import
import { currentRssMB, peakRssMB } from './memory.js';
import { prepare } from './ours.js';
import { getWorkload } from './workloads.js';

const cfg = JSON.parse(process.argv[2] ?? '{}') as { workload: string; backend?: string; threads?: number; batch?: number };
if (cfg.backend !== undefined) setBackend(cfg.backend);
if (cfg.threads !== undefined) setNumThreads(cfg.threads);
const baselineRssMB = currentRssMB();
const w = getWorkload(cfg.workload);
const p = prepare(cfg.batch !== undefined ? { ...w, batch: cfg.batch } : w);
p.step();
p.step();
process.stdout.write(JSON.stringify({ backend: kernels().name, baselineRssMB, peakRssMB: peakRssMB(), params: p.params }) + '\n');
