/**
 * summary(): the table of the `torchsummary` package, release 1.5.1, reproduced character for
 * character. Its rules, which this file follows:
 * - a row per call of every module except Sequential/ModuleList containers and the model itself,
 *   in the order the calls *finish* (forward hooks fire after children), named
 *   "<ClassName>-<row number>"; a module called twice (a block's ReLU) gives two rows;
 * - output shape with the batch dimension printed as -1;
 * - parameters: weight + bias of the module only (a block's row shows 0; BN running statistics
 *   are buffers and not counted); "trainable" follows weight.requiresGrad;
 * - sizes assume 4 bytes per number, the forward/backward size doubles the activations, the input
 *   size uses batch -1 and the absolute value, all printed with "%0.2f".
 */
import type { Module } from '../nn/module.js';
import { Sequential } from '../nn/layers.js';
import { Tensor } from '../tensor/tensor.js';
import { commas, pyFixed, pyList } from './format.js';
import { flatten, trace } from './trace.js';

const RULE = '-'.repeat(64);
const DOUBLE = '='.repeat(64);

function row(a: string, b: string, c: string): string {
  return `${a.padStart(20)}  ${b.padStart(25)} ${c.padStart(15)}`;
}

/** Weight and bias element counts, as torchsummary's hasattr(module, "weight") test sees them. */
function ownWeightAndBias(m: Module): { params: number; trainable: boolean | null } {
  const w = (m as unknown as { weight?: unknown }).weight;
  const b = (m as unknown as { bias?: unknown }).bias;
  if (!(w instanceof Tensor)) return { params: 0, trainable: null };
  return { params: w.numel + (b instanceof Tensor ? b.numel : 0), trainable: w.requiresGrad };
}

/**
 * The torchsummary table for `model` on inputs of size `inputSize` ([C, H, W]), as a string
 * ending in a newline (what `summary(model, (3, 224, 224))` prints).
 */
export function summary(model: Module, inputSize: readonly number[], opts: { batchSize?: number } = {}): string {
  const batchSize = opts.batchSize ?? -1;
  // torchsummary runs a batch of 2 "for batchnorm"; shapes do not depend on it.
  const root = trace(model, inputSize, 2);
  const lines = [RULE, row('Layer (type)', 'Output Shape', 'Param #'), DOUBLE];
  let totalParams = 0;
  let trainableParams = 0;
  let totalOutput = 0;
  let idx = 0;
  for (const rec of flatten(root, 'post')) {
    if (rec === root || rec.module instanceof Sequential) continue;
    idx++;
    const outShape = [batchSize, ...rec.outputShape.slice(1)];
    const { params, trainable } = ownWeightAndBias(rec.module);
    lines.push(row(`${rec.module.typeName}-${idx}`, pyList(outShape), commas(params)));
    totalParams += params;
    totalOutput += outShape.reduce((a, b) => a * b, 1);
    if (trainable === true) trainableParams += params;
  }
  const totalInputSize = Math.abs((inputSize.reduce((a, b) => a * b, 1) * batchSize * 4) / 1024 ** 2);
  const totalOutputSize = Math.abs((2 * totalOutput * 4) / 1024 ** 2);
  const totalParamsSize = Math.abs((totalParams * 4) / 1024 ** 2);
  const totalSize = totalParamsSize + totalOutputSize + totalInputSize;
  lines.push(
    DOUBLE,
    `Total params: ${commas(totalParams)}`,
    `Trainable params: ${commas(trainableParams)}`,
    `Non-trainable params: ${commas(totalParams - trainableParams)}`,
    RULE,
    `Input size (MB): ${pyFixed(totalInputSize)}`,
    `Forward/backward pass size (MB): ${pyFixed(totalOutputSize)}`,
    `Params size (MB): ${pyFixed(totalParamsSize)}`,
    `Estimated Total Size (MB): ${pyFixed(totalSize)}`,
    RULE,
  );
  return lines.join('\n') + '\n';
}
