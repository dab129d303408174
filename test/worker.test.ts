/** InferenceWorker: the compiled inference plan on a worker thread, with the main thread free. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InferenceWorker } from '../src/inference/worker.js';
import { compileInference } from '../src/inference/plan.js';
import { createModel } from '../src/models/registry.js';
import { writeStateDict } from '../src/io/state.js';
import { Generator } from '../src/tensor/rng.js';
import { Tensor } from '../src/tensor/tensor.js';
import { FormatError, ResnetError, ShapeError, StateDictError, UsageError } from '../src/errors.js';
import { randomTensor } from './helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'resnet-worker-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

/** resnet20 on 1 channel, with every parameter and BN statistic perturbed (so folding matters). */
function smallModel() {
  const model = createModel('resnet20', { inChannels: 1 });
  const gen = new Generator(7);
  for (const [key, t] of model.stateDict()) {
    if (t.dtype !== 'float32') continue;
    const d = t.values;
    if (key.endsWith('running_var')) for (let i = 0; i < d.length; i++) d[i] = 0.5 + gen.uniform(0, 1);
    else for (let i = 0; i < d.length; i++) d[i] = d[i]! + 0.1 * gen.normal();
    t.version++;
  }
  return model.eval();
}

const bytes = (a: Float32Array): Buffer => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

function assertBitEqual(actual: Float32Array, expected: Float32Array, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  assert.ok(bytes(actual).equals(bytes(expected)), `${what}: results differ from the main thread's`);
}

test('run/features equal compileInference on the main thread, bit for bit ({model} and {arch, weights})', async () => {
  const model = smallModel();
  const x = randomTensor([2, 1, 16, 16], new Generator(1));
  const plan = compileInference(model);
  const expected = plan.run(x);
  const f = plan.features(x);
  const expectedFeats = f.data.slice();

  const file = join(dir, 'resnet20.safetensors');
  writeStateDict(file, model);
  const fromModel = await InferenceWorker.create({ model });
  const fromFile = await InferenceWorker.create({ arch: 'resnet20', options: { inChannels: 1 }, weights: file }, { threads: 1 });
  try {
    // The caller's buffers were copied, not transferred away.
    assert.equal(model.conv1.weight.values.length, 16 * 1 * 3 * 3);
    assert.equal(fromModel.numFeatures, 64);
    assert.equal(fromModel.numClasses, 10);
    for (const [name, w] of [['{model}', fromModel], ['{arch, weights}', fromFile]] as const) {
      const y = await w.run(x);
      assert.deepEqual(y.shape, [2, 10]);
      assertBitEqual(y.values, expected.values, `${name} run`);
      const raw = await w.run({ data: x.values, shape: [2, 1, 16, 16] });
      assertBitEqual(raw.values, expected.values, `${name} run (raw input)`);
      const feats = await w.features(x);
      assert.deepEqual(feats.shape, [2, 64]);
      assertBitEqual(feats.data, expectedFeats, `${name} features`);
    }
    // Input buffers are copied before transfer: x is still intact.
    assert.equal(x.values.length, 2 * 16 * 16);
    assertBitEqual(compileInference(model).run(x).values, expected.values, 'main thread rerun');
  } finally {
    await fromModel.close();
    await fromFile.close();
  }
});

test('the main thread stays responsive while a run is in flight', async () => {
  const w = await InferenceWorker.create({ arch: 'resnet18' });
  try {
    const x = randomTensor([1, 3, 96, 96], new Generator(2));
    let ticks = 0;
    const timer = setInterval(() => ticks++, 1);
    let y: Tensor;
    try {
      y = await w.run(x);
    } finally {
      clearInterval(timer);
    }
    assert.deepEqual(y.shape, [1, 1000]);
    assert.ok(ticks > 0, 'no timer tick fired on the main thread during the run');
  } finally {
    await w.close();
  }
});

test('concurrent run() calls resolve in order with the right results', async () => {
  const model = smallModel();
  const plan = compileInference(model);
  const w = await InferenceWorker.create({ model });
  try {
    const gen = new Generator(3);
    const xs = [1, 3, 2, 1, 4].map((n) => randomTensor([n, 1, 16, 16], gen));
    const expected = xs.map((x) => plan.run(x).values.slice());
    const order: number[] = [];
    const results = await Promise.all(
      xs.map((x, i) =>
        w.run(x).then((y) => {
          order.push(i);
          return y;
        }),
      ),
    );
    assert.deepEqual(order, [0, 1, 2, 3, 4]);
    results.forEach((y, i) => {
      assert.deepEqual(y.shape, [xs[i]!.shape[0], 10]);
      assertBitEqual(y.values, expected[i]!, `request ${i}`);
    });
    assert.equal(w.pendingCount, 0);
  } finally {
    await w.close();
  }
});

test('a bad input shape rejects with ShapeError and the worker keeps working', async () => {
  const model = smallModel();
  const w = await InferenceWorker.create({ model });
  try {
    const gen = new Generator(4);
    await assert.rejects(w.run(randomTensor([2, 3, 16, 16], gen)), (e: Error) => {
      assert.ok(e instanceof ShapeError, `expected ShapeError, got ${e.name}`);
      assert.equal(e.name, 'ShapeError');
      assert.match(e.message, /expected 1 input channels, got input \[2, 3, 16, 16\]/);
      return true;
    });
    await assert.rejects(w.run(randomTensor([1, 16, 16], gen)), (e: Error) => e instanceof ShapeError && /must be 4-D/.test(e.message));
    await assert.rejects(w.features(randomTensor([1, 16, 16], gen)), (e: Error) => e instanceof ShapeError && /must be 4-D/.test(e.message));
    await assert.rejects(w.run({ data: new Float32Array(5), shape: [1, 1, 2, 2] }), (e: Error) => e instanceof ShapeError && /5 elements/.test(e.message));
    // A failing request between good ones does not disturb them.
    const x = randomTensor([1, 1, 16, 16], gen);
    const [a, bad, b] = await Promise.allSettled([w.run(x), w.run(randomTensor([1, 2, 16, 16], gen)), w.run(x)]);
    assert.equal(bad.status, 'rejected');
    assert.ok(a.status === 'fulfilled' && b.status === 'fulfilled');
    const expected = compileInference(model).run(x).values;
    assertBitEqual(a.value.values, expected, 'before the failure');
    assertBitEqual(b.value.values, expected, 'after the failure');
  } finally {
    await w.close();
  }
});

test('create() rejects with the worker-side error class: missing weights, bad arch, weights that do not fit', async () => {
  const missing = join(dir, 'no-such-file.safetensors');
  await assert.rejects(InferenceWorker.create({ arch: 'resnet20', weights: missing }), (e: Error) => {
    assert.ok(e instanceof FormatError, `expected FormatError, got ${e.name}`);
    assert.equal(e.message, `file not found: ${missing}`);
    return true;
  });
  await assert.rejects(InferenceWorker.create({ arch: 'resnet7' }), (e: Error) => e instanceof UsageError && /unknown architecture "resnet7"/.test(e.message));
  const file = join(dir, 'one-channel.safetensors');
  writeStateDict(file, createModel('resnet20', { inChannels: 1 }));
  await assert.rejects(
    InferenceWorker.create({ arch: 'resnet20', weights: file }),
    (e: Error) => e instanceof StateDictError && e.message.includes(file) && /conv1\.weight/.test(e.message),
  );
  await assert.rejects(InferenceWorker.create({ arch: 'resnet20' }, { threads: 0 }), UsageError);
});

test('close() rejects pending and later requests clearly', async () => {
  const w = await InferenceWorker.create({ model: smallModel() });
  const x = randomTensor([1, 1, 16, 16], new Generator(5));
  const inFlight = assert.rejects(w.run(x), (e: Error) => e instanceof ResnetError && /closed before this request was answered/.test(e.message));
  await w.close();
  await inFlight;
  await assert.rejects(w.run(x), (e: Error) => e instanceof UsageError && e.message === 'InferenceWorker: run() called after close()');
  await assert.rejects(w.features(x), (e: Error) => e instanceof UsageError && /features\(\) called after close\(\)/.test(e.message));
  await w.close(); // idempotent
});

test('an unclosed worker does not keep the process alive', () => {
  const mod = new URL('../src/inference/worker.js', import.meta.url).href;
  const script = `
    import { InferenceWorker } from ${JSON.stringify(mod)};
    const w = await InferenceWorker.create({ arch: 'resnet20', options: { inChannels: 1 } });
    const y = await w.run({ data: new Float32Array(256), shape: [1, 1, 16, 16] });
    console.log(y.shape.join('x'));
  `;
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 15_000, env: { ...process.env, RESNET_NUM_THREADS: '1' } });
  assert.equal(out.trim(), '1x10');
});
