/**
 * resnet-ts's side of the benchmark: builds the workload's model with the registry and times it on
 * the active backend. Inference runs in eval mode through the compiled inference plan (compileInference); a training step
 * is zeroGrad, forward in train mode, mean cross-entropy, backward and an SGD step (TRAIN_RECIPE), the
 * step inside backward as the trainer runs it (SGD.fuseIntoBackward: the same numbers as a step after).
 */
import { createModel } from '../models/registry.js';
import { crossEntropy } from '../ops/loss.js';
import { SGD } from '../optim/sgd.js';
import { backward } from '../tensor/autograd.js';
import { compileInference } from '../inference/plan.js';
import { Generator } from '../tensor/rng.js';
import { Tensor, recycleGrads } from '../tensor/tensor.js';
import type { ResNet } from '../models/resnet.js';
import { measure, type Measurement, type TimingPlan } from './timing.js';
import { TRAIN_RECIPE, type Workload } from './workloads.js';

/** A ready-to-run iteration of a workload (model built, input drawn). */
export interface Prepared {
  model: ResNet;
  params: number;
  /** One iteration: a forward (inference) or a full training step. */
  step: () => void;
  /** The last training loss (NaN for inference). */
  lastLoss: () => number;
}

/** Builds the model and a seeded random batch (and targets) for `w`. Not timed. */
export function prepare(w: Workload, seed = 0): Prepared {
  const gen = new Generator(seed);
  const model = createModel(w.arch, { numClasses: w.numClasses, inChannels: w.input[0] });
  const shape = [w.batch, ...w.input];
  const data = new Float32Array(shape.reduce((a, b) => a * b, 1));
  for (let i = 0; i < data.length; i++) data[i] = gen.normal();
  const x = new Tensor(shape, data);
  const params = model.numParameters();
  if (w.kind === 'inference') {
    model.eval();
    // The fused inference path (BN folded, conv+bias+residual+ReLU fused, pooled buffers).
    const plan = compileInference(model);
    return { model, params, step: () => void plan.run(x), lastLoss: () => NaN };
  }
  model.train();
  const targets = Array.from({ length: w.batch }, () => gen.int(w.numClasses));
  const weights = model.parameters();
  const opt = new SGD(weights, { ...TRAIN_RECIPE });
  opt.fuseIntoBackward({ freeGrads: true }); // as the trainer: each parameter's update inside backward(), same numbers
  let loss = NaN;
  return {
    model,
    params,
    step: () => {
      recycleGrads(weights); // zeroGrad, reusing the buffers (as the trainer does)
      const l = crossEntropy(model.call(x), targets);
      backward(l, undefined, { recycleActivations: true }); // as the trainer does (src/train/trainer.ts), SGD included
      loss = l.item();
    },
    lastLoss: () => loss,
  };
}

/**
 * The process's warm-up, before any timed round: `w` (a model of its own) runs untimed until
 * `maxRuns` runs or `budgetMs` have passed, at least one run. V8 compiles the hot JavaScript of a
 * training step (the autograd, the ops' wrappers, the optimizer) over its first ~30 steps, on a
 * background thread that takes one of two cores from the kernels meanwhile: ResNet-20 training steps
 * 5-30 of a fresh process took ~10 % longer than the steady state, and a bench round measures the 3rd
 * step of a model (docs/PERFORMANCE.md, "Timing"). Returns the runs made.
 */
export function warmProcess(w: Workload, maxRuns: number, budgetMs: number): number {
  const p = prepare(w);
  const t0 = performance.now();
  let runs = 0;
  do {
    p.step();
    runs++;
  } while (runs < maxRuns && (budgetMs <= 0 || performance.now() - t0 < budgetMs));
  return runs;
}

export interface OursResult extends Measurement {
  params: number;
}

/** Times `w` on the active backend. */
export function runOurs(w: Workload, plan: TimingPlan, onRun?: (kind: 'warmup' | 'timed', ms: number) => void): OursResult {
  const p = prepare(w);
  const m = measure(p.step, plan, w.batch, onRun);
  if (w.kind === 'train' && !Number.isFinite(p.lastLoss())) throw new Error(`internal: ${w.id} training loss is ${p.lastLoss()}`);
  return { ...m, params: p.params };
}
