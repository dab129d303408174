/**
 * Training steps against PyTorch (float64 reference, scripts/golden/gen_train_steps.py): forward in
 * training mode, cross-entropy, backward, SGD with momentum and weight decay, BN running stats.
 * One step within 1e-5 of each tensor's scale; 20 steps within 1e-4 (float32 runs, PyTorch's own
 * included, stay within ~1e-6 of the float64 one at this learning rate, 0.02). The batches keep every
 * ReLU input of the float64 trajectory at least 5e-5 from zero: one within float32 rounding of it
 * flips a gradient element in some implementations' bits and separates their trajectories by up to
 * 1e-2 (see scripts/golden/gen_train_steps.py).
 */
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { readSafetensors } from '../src/io/safetensors.js';
import { rawToTensor } from '../src/io/state.js';
import { cifarResNet } from '../src/models/registry.js';
import { SGD } from '../src/optim/sgd.js';
import * as F from '../src/ops/index.js';
import { backward } from '../src/tensor/autograd.js';
import { Tensor } from '../src/tensor/tensor.js';
import { listBackends, withBackend } from '../src/kernels/registry.js';
import { assertClose } from './helpers.js';

const FILE = fileURLToPath(new URL('../../test/fixtures/golden/train_steps.safetensors', import.meta.url));
const ref = new Map([...readSafetensors(FILE).tensors].map(([k, v]) => [k, rawToTensor(v)]));
const get = (k: string): Tensor => ref.get(k)!;

function closeToScale(actual: ArrayLike<number>, expected: ArrayLike<number>, rel: number, what: string): void {
  let scale = 0;
  for (let i = 0; i < expected.length; i++) scale = Math.max(scale, Math.abs(expected[i]!));
  assertClose(actual, expected, { rtol: rel, atol: rel * Math.max(scale, 1e-12) }, what);
}

for (const backend of listBackends()) {
  test(`[${backend}] 1 and 20 SGD training steps match PyTorch`, () => {
    withBackend(backend, () => {
      const model = cifarResNet(8, { inChannels: 1, numClasses: 10, shortcut: 'A' });
      const init = new Map([...ref].filter(([k]) => k.startsWith('init.')).map(([k, t]) => [k.slice(5), t]));
      model.loadStateDict(init);
      model.train();
      const opt = new SGD(model.parameters(), { lr: 0.02, momentum: 0.9, weightDecay: 5e-4 });
      const xs = get('inputs');
      const ys = get('targets').values;
      const [steps, batch, c, h, w] = xs.shape as [number, number, number, number, number];
      const per = batch * c * h * w;
      const losses = get('losses').values;
      for (let s = 0; s < steps; s++) {
        const x = new Tensor([batch, c, h, w], xs.values.slice(s * per, (s + 1) * per));
        opt.zeroGrad();
        const loss = F.crossEntropy(model.call(x), ys.subarray(s * batch, (s + 1) * batch));
        closeToScale([loss.item()], [losses[s]!], s === 0 ? 1e-5 : 1e-4, `loss of step ${s + 1}`);
        backward(loss);
        opt.step();
        if (s === 0 || s === steps - 1) {
          const rel = s === 0 ? 1e-5 : 1e-4;
          for (const [k, t] of model.stateDict()) closeToScale(t.values, get(`step${s + 1}.${k}`).values, rel, `${k} after step ${s + 1}`);
        }
      }
    });
  });
}
