/**
 * `resnet bench`: resnet-ts against ONNX Runtime and PyTorch on the same workloads, threads and
 * machine, in one invocation (see src/bench/ and docs/PERFORMANCE.md). Progress goes to stderr
 * (unless --quiet); the table, or with --json the report object, goes to stdout.
 */
import * as fs from 'node:fs';
import { UsageError } from '../index.js';
import { DEFAULTS, WORKLOADS, formatReport, runBench } from '../bench/index.js';
import { HELP_OPTION, flag, intOption, str, type Command, type ParsedArgs } from './args.js';

function budgetOption(args: ParsedArgs): number | undefined {
  const v = str(args, 'budget');
  if (v === undefined) return undefined;
  const n = /^\s*\d+(\.\d+)?\s*$/.test(v) ? Number(v) : NaN;
  if (!Number.isFinite(n)) throw new UsageError(`--budget must be a number of seconds >= 0 (0: no budget), got ${JSON.stringify(v)}`);
  return n;
}

export const benchCommand: Command = {
  name: 'bench',
  summary: 'Benchmark inference and training speed against ONNX Runtime and PyTorch on this machine.',
  usage: ['bench [--only <ids>] [--backend ts|native] [--threads N] [--warmup N] [--process-warmup N] [--runs N] [--rounds N] [--budget S] [--no-peers] [--equal-allocator] [--json]'],
  details: [
    'Workloads (float32): ' +
      WORKLOADS.filter((w) => !w.hidden)
        .map((w) => `${w.id} (${w.title})`)
        .join('; ') +
      '. Hidden smoke tests: ' +
      WORKLOADS.filter((w) => w.hidden)
        .map((w) => w.id)
        .join(', ') +
      '.',
    'Each engine runs the warm-up runs, then the timed runs, and reports the median in ms per iteration and images/s. ' +
      'The engines take turns in rounds (resnet-ts, ONNX Runtime, PyTorch, then again), each round with its warm-up and a ' +
      'share of the timed runs, so that a slow phase of a shared machine hits every engine instead of one; the median is ' +
      'over all rounds\' runs. The ratios compare the medians, and also each engine\'s fastest run (what it does when ' +
      'nothing slows it). ' +
      "Before the first round resnet-ts's own process runs each workload untimed (--process-warmup): V8 compiles the " +
      "JavaScript of a training step over its first ~30 steps on a background thread, which takes a core from the kernels; " +
      'the peers run eager code in fresh processes and get the per-round warm-up. ' +
      'A time budget per workload and engine cuts the number of runs for a slow engine (the note column says so). ' +
      'Peers run in child processes of the same invocation with the same thread count: ONNX Runtime (onnxruntime-node; ' +
      'torchvision models exported once to ONNX with scripts/bench/export_onnx.py and cached) and PyTorch ' +
      '(scripts/bench/torch_bench.py); a missing peer is reported as not available. When resnet50-b1 is selected, the ' +
      'peak RSS of each engine on it is measured in a fresh process.',
  ],
  options: {
    only: { type: 'string', value: '<ids>', default: 'all workloads', description: 'comma-separated workload ids, e.g. resnet50-b1,resnet20-train' },
    backend: { type: 'string', value: 'ts|native', default: 'the active backend', description: 'resnet-ts kernel backend' },
    threads: { type: 'string', value: 'N', default: String(DEFAULTS.threads), description: 'threads for every engine' },
    warmup: { type: 'string', value: 'N', default: String(DEFAULTS.warmup), description: 'warm-up runs per workload, engine and round' },
    'process-warmup': {
      type: 'string',
      value: 'N',
      default: String(DEFAULTS.processWarmup),
      description: "untimed runs of each workload in resnet-ts's process before the first round, at most a quarter of its budget (0: none): the steady state of V8's compiled JavaScript",
    },
    runs: { type: 'string', value: 'N', default: String(DEFAULTS.runs), description: 'timed runs per workload and engine, over all rounds (the median is reported)' },
    rounds: { type: 'string', value: 'N', default: String(DEFAULTS.rounds), description: 'rounds the engines take in turn (at most --runs)' },
    budget: { type: 'string', value: 'S', default: String(DEFAULTS.budgetS), description: 'time budget per workload and engine in seconds (0: none)' },
    'no-peers': { type: 'boolean', description: 'measure resnet-ts only' },
    'no-memory': { type: 'boolean', description: 'skip the peak-memory measurements (resnet50-b1 inference per engine; resnet20-train at batch 32-256)' },
    'equal-allocator': { type: 'boolean', description: "run the peers with glibc's allocator settings that resnet-ts uses (mmap and trim thresholds at 1 GiB: no page faults in every training step)" },
    json: { type: 'boolean', description: 'print the report as a JSON object instead of tables' },
    save: { type: 'string', value: '<file.json>', description: 'also write the JSON report to a file' },
    python: { type: 'string', value: '<path>', default: DEFAULTS.python, description: 'Python interpreter with torch and torchvision' },
    'cache-dir': { type: 'string', value: '<dir>', default: '~/.cache/resnet-ts/bench', description: 'where exported ONNX models are cached' },
    quiet: { type: 'boolean', short: 'q', description: 'no progress lines on stderr' },
    help: HELP_OPTION,
  },
  positionals: { min: 0, max: 0 },
  examples: ['resnet bench', 'resnet bench --only resnet50-b1,resnet20-train --runs 5', 'resnet bench --backend ts --no-peers --json'],
  run(args) {
    const quiet = flag(args, 'quiet');
    const save = str(args, 'save');
    const opts = {
      only: str(args, 'only'),
      backend: str(args, 'backend'),
      threads: intOption(args, 'threads'),
      warmup: intOption(args, 'warmup', 0),
      processWarmup: intOption(args, 'process-warmup', 0),
      runs: intOption(args, 'runs'),
      rounds: intOption(args, 'rounds'),
      budgetS: budgetOption(args),
      peers: !flag(args, 'no-peers'),
      memory: !flag(args, 'no-memory'),
      equalAllocator: flag(args, 'equal-allocator'),
      python: str(args, 'python'),
      cacheDir: str(args, 'cache-dir'),
      log: quiet ? undefined : (msg: string): void => void process.stderr.write(`bench: ${msg}\n`),
    };
    const report = runBench(Object.fromEntries(Object.entries(opts).filter(([, v]) => v !== undefined)));
    const json = JSON.stringify(report, null, 2) + '\n';
    if (save !== undefined) fs.writeFileSync(save, json);
    return flag(args, 'json') ? json : formatReport(report);
  },
};
