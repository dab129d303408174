/**
 * Parity with PyTorch: every op (forward and backward) and every builder family (forward, and
 * all parameter gradients for ResNet-18 and ResNet-20) against fixtures written by Debian's
 * PyTorch 1.13 (scripts/golden/generate.py). Tolerance: |a - e| <= 1e-4·|e| + 1e-4·max|e|,
 * i.e. 1e-4 relative to each value or to the tensor's scale, whichever is looser (float32
 * summation order differs between engines, so values near zero need the scale term).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as F from '../src/ops/index.js';
import { backward } from '../src/tensor/autograd.js';
import { Tensor } from '../src/tensor/tensor.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { readStateDict, rawToTensor } from '../src/io/state.js';
import { ResNet, type ResNetOptions, type BlockKind } from '../src/models/resnet.js';
import { cifarResNet } from '../src/models/registry.js';
import { withBackend, listBackends } from '../src/kernels/registry.js';
import { assertClose } from './helpers.js';

const GOLDEN = fileURLToPath(new URL('../../test/fixtures/golden/', import.meta.url));

interface Case {
  name: string;
  kind: 'imagenet' | 'cifar';
  block?: BlockKind;
  layers?: number[];
  depth?: number;
  options: ResNetOptions & { plain?: boolean };
  input: number[];
  mode: 'eval' | 'train';
  grads: boolean;
  /** A train case reuses the weights file of the eval case of the same network. */
  weightsFrom?: string;
}

function closeToScale(actual: ArrayLike<number>, expected: ArrayLike<number>, what: string, rel = 1e-4): void {
  let scale = 0;
  for (let i = 0; i < expected.length; i++) scale = Math.max(scale, Math.abs(expected[i]!));
  assertClose(actual, expected, { rtol: rel, atol: rel * Math.max(scale, 1e-30) }, what);
}

function loadIo(name: string): Map<string, Tensor> {
  const { tensors } = readSafetensors(`${GOLDEN}${name}`);
  return new Map([...tensors].map(([k, v]) => [k, rawToTensor(v)]));
}

function get(m: Map<string, Tensor>, k: string): Tensor {
  const t = m.get(k);
  assert.ok(t, `fixture lacks tensor "${k}"`);
  return t;
}

function leaf(t: Tensor): Tensor {
  return t.clone().requiresGrad_();
}

const cases: Case[] = JSON.parse(readFileSync(`${GOLDEN}cases.json`, 'utf8'));

function build(c: Case): ResNet {
  return c.kind === 'cifar' ? cifarResNet(c.depth!, c.options) : new ResNet(c.block!, c.layers!, c.options);
}

for (const backendName of listBackends()) {
  for (const c of cases) {
    test(`[${backendName}] model parity with PyTorch: ${c.name} (${c.mode}${c.grads ? ', gradients' : ''})`, () => {
      withBackend(backendName, () => {
        const model = build(c);
        model.loadStateDict(readStateDict(`${GOLDEN}${c.weightsFrom ?? c.name}.weights.safetensors`).stateDict);
        model.train(c.mode === 'train');
        const io = loadIo(`${c.name}.io.safetensors`);
        const x = get(io, 'input');
        assert.deepEqual(x.shape, c.input);
        const logits = model.call(x);
        closeToScale(logits.values, get(io, 'logits').values, `${c.name} logits`);
        if (c.mode === 'train') {
          for (const [k, buf] of model.namedBuffers()) {
            const after = get(io, `after.${k}`);
            closeToScale(buf.values, after.values, `${c.name} ${k} after one training forward`);
          }
        }
        if (c.grads) {
          const loss = F.crossEntropy(logits, get(io, 'target').values);
          closeToScale([loss.item()], get(io, 'loss').values, `${c.name} loss`);
          backward(loss);
          const params = model.namedParameters();
          assert.ok(params.length > 10);
          for (const [k, p] of params) {
            assert.ok(p.grad, `${k} has no gradient`);
            closeToScale(p.grad, get(io, `grad.${k}`).values, `${c.name} grad of ${k}`);
          }
        }
      });
    });
  }
}

interface OpCase {
  name: string;
  op: string;
  attrs: Record<string, unknown>;
  inputs: string[];
  outputs: string[];
}

const opCases: OpCase[] = JSON.parse(readFileSync(`${GOLDEN}ops.json`, 'utf8'));
const opTensors = loadIo('ops.safetensors');

function runOp(c: OpCase, t: (k: string) => Tensor): Map<string, Float32Array> {
  const a = c.attrs as Record<string, any>;
  const out = new Map<string, Float32Array>();
  const grads = (inputs: Record<string, Tensor>, y: Tensor, gy: Tensor): void => {
    out.set('y', y.values.slice());
    backward(y, gy.values);
    for (const [k, v] of Object.entries(inputs)) if (v.grad) out.set(`g${k}`, v.grad);
  };
  switch (c.op) {
    case 'conv2d': {
      const x = leaf(t('x'));
      const w = leaf(t('w'));
      const b = a['bias'] ? leaf(t('b')) : null;
      const y = F.conv2d(x, w, b, { stride: a['stride'], padding: a['padding'], dilation: a['dilation'], groups: a['groups'] });
      grads(b ? { x, w, b } : { x, w }, y, t('gy'));
      break;
    }
    case 'batch_norm': {
      const x = leaf(t('x'));
      const w = leaf(t('w'));
      const b = leaf(t('b'));
      const rm = t('running_mean').clone();
      const rv = t('running_var').clone();
      const y = F.batchNorm(x, rm, rv, w, b, { training: a['training'], momentum: a['momentum'], eps: a['eps'] });
      out.set('running_mean_after', rm.values);
      out.set('running_var_after', rv.values);
      grads({ x, w, b }, y, t('gy'));
      break;
    }
    case 'max_pool2d': {
      const x = leaf(t('x'));
      grads({ x }, F.maxPool2d(x, { kernelSize: a['kernel'], stride: a['stride'], padding: a['padding'], dilation: a['dilation'] }), t('gy'));
      break;
    }
    case 'adaptive_avg_pool2d': {
      const x = leaf(t('x'));
      grads({ x }, F.adaptiveAvgPool2d(x, a['outputSize']), t('gy'));
      break;
    }
    case 'linear': {
      const x = leaf(t('x'));
      const w = leaf(t('w'));
      const b = leaf(t('b'));
      grads({ x, w, b }, F.linear(x, w, b), t('gy'));
      break;
    }
    case 'log_softmax': {
      const x = leaf(t('x'));
      grads({ x }, F.logSoftmax(x), t('gy'));
      break;
    }
    case 'relu': {
      const x = leaf(t('x'));
      grads({ x }, F.relu(x), t('gy'));
      break;
    }
    case 'cross_entropy': {
      const logits = leaf(t('logits'));
      const loss = F.crossEntropy(logits, t('target').values, { labelSmoothing: a['labelSmoothing'] });
      out.set('loss', loss.values.slice());
      backward(loss);
      out.set('glogits', logits.grad!);
      break;
    }
    default:
      assert.fail(`unknown op "${c.op}" in ops.json`);
  }
  return out;
}

for (const backendName of listBackends()) {
  for (const c of opCases) {
    test(`[${backendName}] op parity with PyTorch: ${c.name}`, () => {
      withBackend(backendName, () => {
        const result = runOp(c, (k) => get(opTensors, `${c.name}.${k}`));
        for (const o of c.outputs) {
          const mine = result.get(o);
          assert.ok(mine, `${c.name}: op produced no "${o}"`);
          closeToScale(mine, get(opTensors, `${c.name}.${o}`).values, `${c.name}.${o}`);
        }
      });
    });
  }
}
