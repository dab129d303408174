/**
 * The training loop: epochs of forward / cross-entropy / backward / optimizer step, validation
 * after each epoch, a progress bar, a JSONL + CSV log, a PNG of the curves, a checkpoint after
 * every epoch (atomic), the best model exported as torchvision-named safetensors, and exact
 * resumption. A NaN or infinite loss stops the run with the last good checkpoint intact.
 *
 * Data comes from any BatchSource (see src/data); the model from the caller, so fine-tuning
 * (pretrained backbone, new head, frozen layers) is the caller's choice of model and parameters.
 */
import { appendFileSync, existsSync, mkdirSync, writeFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { ResnetError, UsageError } from '../errors.js';
import * as F from '../ops/index.js';
import { backward, noGrad } from '../tensor/autograd.js';
import { recycleGrads, type Tensor } from '../tensor/tensor.js';
import { defaultGenerator } from '../tensor/rng.js';
import type { ResNet } from '../models/resnet.js';
import { writeStateDict } from '../io/state.js';
import { compileInference, type InferencePlan } from '../inference/plan.js';
import { clipGradNorm } from './clip.js';
import { ConfusionMatrix, argmaxRows, topkCorrect } from './metrics.js';
import { ProgressBar, fmtTime } from './progress.js';
import { renderCurves, type CurvePoint } from './plot.js';
import { loadTrainingCheckpoint, saveTrainingCheckpoint } from './checkpoint.js';
import type { LRScheduler } from '../optim/schedulers.js';

export interface Batch {
  x: Tensor;
  y: Int32Array;
}

/** What the trainer needs from a data loader. */
export interface BatchSource {
  /** Batches per epoch. */
  readonly batches: number;
  /** Selects the epoch (shuffle order and augmentation depend on it, so resuming is exact). */
  setEpoch(epoch: number): void;
  [Symbol.asyncIterator](): AsyncIterator<Batch>;
}

export interface Optimizer {
  paramGroups: { lr: number; params: Tensor[] }[];
  step(): void;
  zeroGrad(): void;
  stateDict(): unknown;
  loadStateDict(s: never): void;
  /** Updates inside backward() (src/optim/fused.ts); the trainer uses it when nothing edits the gradients. */
  fuseIntoBackward?(opts?: { freeGrads?: boolean }): { remove(): void; freeGrads: boolean };
  /** Whether the caller fused it already (the trainer then neither fuses nor steps it). */
  readonly isFused?: boolean;
}

export interface TrainOptions {
  epochs: number;
  out: string;
  labelSmoothing?: number;
  clipGradNorm?: number;
  /** Step the scheduler after every batch (OneCycle, cosine) or after every epoch (MultiStep). */
  schedulerPer: 'batch' | 'epoch';
  /** Resume from out/checkpoint.safetensors if present. */
  resume?: boolean;
  classes: string[];
  /** Printed in logs and charts. */
  title: string;
  /** Free-form settings recorded in the log header and checkpoint. */
  config: Record<string, unknown>;
  quiet?: boolean;
}

export interface EpochRecord extends CurvePoint {
  lr: number;
  valTop5?: number | undefined;
  seconds: number;
  imagesPerSecond: number;
}

export class TrainingDiverged extends ResnetError {}

export interface EvalResult {
  loss: number;
  top1: number;
  top5: number;
  confusion: ConfusionMatrix;
}

/** Evaluates `model` (eval mode, no graph) through the fused inference plan. */
export async function evaluate(model: ResNet, data: BatchSource, numClasses: number, plan?: InferencePlan): Promise<EvalResult> {
  const p = plan ?? compileInference(model);
  const confusion = new ConfusionMatrix(numClasses);
  let loss = 0;
  let top1 = 0;
  let top5 = 0;
  let n = 0;
  data.setEpoch(0);
  for await (const b of data) {
    const logits = p.run(b.x);
    const bs = b.y.length;
    loss += noGrad(() => F.crossEntropy(logits, b.y)).item() * bs;
    top1 += topkCorrect(logits.values, b.y, bs, numClasses, 1);
    top5 += topkCorrect(logits.values, b.y, bs, numClasses, Math.min(5, numClasses));
    confusion.add(b.y, argmaxRows(logits.values, bs, numClasses));
    n += bs;
  }
  return { loss: loss / Math.max(1, n), top1: top1 / Math.max(1, n), top5: top5 / Math.max(1, n), confusion };
}

function writeAtomic(path: string, data: string | Buffer): void {
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, data);
  renameSync(tmp, path);
}

export async function train(
  model: ResNet,
  optimizer: Optimizer,
  scheduler: LRScheduler | null,
  trainData: BatchSource,
  valData: BatchSource | null,
  o: TrainOptions,
): Promise<EpochRecord[]> {
  mkdirSync(o.out, { recursive: true });
  const ckptPath = join(o.out, 'checkpoint.safetensors');
  const log = (s: string): void => void (o.quiet ? undefined : process.stderr.write(`${s}\n`));
  let history: EpochRecord[] = [];
  let start = 0;
  let bestAcc = -1;
  if (o.resume && existsSync(ckptPath)) {
    const ck = loadTrainingCheckpoint(ckptPath);
    model.loadStateDict(ck.modelState);
    optimizer.loadStateDict(ck.optimizer as never);
    if (scheduler && ck.scheduler) scheduler.loadStateDict(ck.scheduler as never);
    defaultGenerator.setState(ck.rng);
    history = (ck.extra['history'] as EpochRecord[]) ?? [];
    bestAcc = (ck.extra['bestAcc'] as number) ?? -1;
    start = ck.epoch;
    log(`resumed from ${ckptPath} after epoch ${start}`);
  } else if (!o.resume) {
    writeFileSync(join(o.out, 'metrics.csv'), 'epoch,lr,train_loss,train_acc,val_loss,val_acc,val_top5,seconds,images_per_second\n');
    writeFileSync(join(o.out, 'metrics.jsonl'), `${JSON.stringify({ config: o.config })}\n`);
  }
  const numClasses = o.classes.length;
  const params = optimizer.paramGroups.flatMap((g) => g.params);
  const plan = compileInference(model);
  // Without clipping, nothing edits the gradients between backward() and the step: each parameter
  // is updated inside backward() as its gradient completes (the same numbers, fewer passes over
  // memory: src/optim/fused.ts).
  const preFused = optimizer.isFused === true;
  if (preFused && o.clipGradNorm !== undefined) {
    throw new UsageError('train(): clipGradNorm edits the gradients between backward() and the step, but this optimizer already updates inside backward() (fuseIntoBackward): remove() its handle first');
  }
  const fused = !preFused && o.clipGradNorm === undefined && optimizer.fuseIntoBackward !== undefined && params.every((p) => p.requiresGrad) ? optimizer.fuseIntoBackward() : null;
  const stepsInBackward = preFused || fused !== null;
  try {
    for (let epoch = start; epoch < o.epochs; epoch++) {
      model.train();
      trainData.setEpoch(epoch);
      const bar = new ProgressBar(`epoch ${epoch + 1}/${o.epochs}`, trainData.batches);
      const t0 = performance.now();
      let seen = 0;
      let lossSum = 0;
      let correct = 0;
      let step = 0;
      for await (const b of trainData) {
        const logits = model.call(b.x);
        const loss = F.crossEntropy(logits, b.y, { labelSmoothing: o.labelSmoothing ?? 0 });
        const lv = loss.item();
        if (!Number.isFinite(lv)) {
          throw new TrainingDiverged(
            `loss became ${lv} at epoch ${epoch + 1}, step ${step + 1}; stopping. ` +
              (existsSync(ckptPath) ? `The last good checkpoint (${ckptPath}) is intact: lower --lr or set --clip-grad-norm and resume.` : 'No checkpoint was written yet: lower --lr or set --clip-grad-norm.'),
          );
        }
        const bs = b.y.length;
        correct += topkCorrect(logits.values, b.y, bs, numClasses, 1);
        // Nothing reads this step's activations after backward, nor the last step's gradients, unless
        // a hook watches the model: their buffers then serve this step and the next (no allocation, no
        // garbage collection for them).
        const unwatched = !model.modules().some((m) => m.observed);
        if (unwatched) recycleGrads(params);
        optimizer.zeroGrad();
        if (fused) fused.freeGrads = unwatched; // likewise each gradient, right after its update
        backward(loss, undefined, { recycleActivations: unwatched });
        if (o.clipGradNorm !== undefined) clipGradNorm(params, o.clipGradNorm);
        if (!stepsInBackward) optimizer.step();
        if (scheduler && o.schedulerPer === 'batch') scheduler.step();
        seen += bs;
        lossSum += lv * bs;
        step++;
        const secs = (performance.now() - t0) / 1000;
        bar.update(step, `loss ${(lossSum / seen).toFixed(4)} acc ${((100 * correct) / seen).toFixed(2)}% ${(seen / secs).toFixed(0)} img/s lr ${optimizer.paramGroups[0]!.lr.toPrecision(3)}`);
      }
      if (scheduler && o.schedulerPer === 'epoch') scheduler.step();
      const seconds = (performance.now() - t0) / 1000;
      const rec: EpochRecord = {
        epoch: epoch + 1,
        lr: optimizer.paramGroups[0]!.lr,
        trainLoss: lossSum / Math.max(1, seen),
        trainAcc: correct / Math.max(1, seen),
        seconds,
        imagesPerSecond: seen / seconds,
      };
      if (valData) {
        const v = await evaluate(model, valData, numClasses, plan);
        rec.valLoss = v.loss;
        rec.valAcc = v.top1;
        rec.valTop5 = v.top5;
      }
      bar.finish(
        `train loss ${rec.trainLoss.toFixed(4)} acc ${(100 * rec.trainAcc).toFixed(2)}%` +
          (rec.valAcc !== undefined ? ` | val loss ${rec.valLoss!.toFixed(4)} acc ${(100 * rec.valAcc).toFixed(2)}% top5 ${(100 * rec.valTop5!).toFixed(2)}%` : '') +
          ` | ${rec.imagesPerSecond.toFixed(0)} img/s`,
      );
      history.push(rec);
      const acc = rec.valAcc ?? rec.trainAcc;
      if (acc > bestAcc) {
        bestAcc = acc;
        writeStateDict(join(o.out, 'best.safetensors'), model, { epoch: String(epoch + 1), accuracy: String(acc), arch: String(o.config['arch'] ?? '') });
      }
      appendFileSync(join(o.out, 'metrics.jsonl'), `${JSON.stringify(rec)}\n`);
      appendFileSync(
        join(o.out, 'metrics.csv'),
        `${[rec.epoch, rec.lr, rec.trainLoss, rec.trainAcc, rec.valLoss ?? '', rec.valAcc ?? '', rec.valTop5 ?? '', rec.seconds.toFixed(2), rec.imagesPerSecond.toFixed(1)].join(',')}\n`,
      );
      writeAtomic(join(o.out, 'curves.png'), renderCurves(history, o.title));
      saveTrainingCheckpoint(ckptPath, model, {
        epoch: epoch + 1,
        optimizer: optimizer.stateDict(),
        scheduler: scheduler ? scheduler.stateDict() : null,
        rng: defaultGenerator.getState(),
        extra: { history, bestAcc, config: o.config },
      });
    }
  } finally {
    fused?.remove();
  }
  writeStateDict(join(o.out, 'model.safetensors'), model, { arch: String(o.config['arch'] ?? '') });
  const total = history.reduce((s, r) => s + r.seconds, 0);
  log(`finished ${o.epochs} epochs in ${fmtTime(total)}; best accuracy ${(100 * bestAcc).toFixed(2)}%; outputs in ${o.out}`);
  return history;
}
