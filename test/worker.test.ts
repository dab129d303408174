/** InferenceWorker and TrainingWorker: the compiled inference plan, and training steps, on a worker thread with the main thread free. */
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

/** Awaits `work` while a 1 ms timer runs on this thread: its result and how many ticks fired. */
async function ticksDuring<T>(work: Promise<T>): Promise<[T, number]> {
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  try {
    return [await work, ticks];
  } finally {
    clearInterval(timer);
  }
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
    const [y, ticks] = await ticksDuring(w.run(x));
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
  await assert.rejects(InferenceWorker.create({ arch: 'resnet20' }, { threads: 65 }), (e: Error) => e instanceof UsageError && /threads must be an integer from 1 to 64, got 65/.test(e.message));
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

// ---- TrainingWorker: forward and backward off the main thread ----------------------------------

test('TrainingWorker: steps equal the same steps on the main thread, bit for bit; run, stateDict, lr', async () => {
  const { TrainingWorker } = await import('../src/train/worker.js');
  const { SGD } = await import('../src/optim/sgd.js');
  const { crossEntropy } = await import('../src/ops/loss.js');
  const { backward, noGrad } = await import('../src/tensor/autograd.js');
  const model = smallModel().train();
  const initial = model.stateDict();
  const snapshot = new Map([...initial].map(([k, t]) => [k, t.values.slice()]));
  const sgd = { lr: 0.05, momentum: 0.9, weightDecay: 5e-4, nesterov: true };
  const w = await TrainingWorker.create({ model }, { sgd, labelSmoothing: 0.1 });
  // the reference: the same steps here, on a copy
  const ref = smallModel().train();
  ref.loadStateDict(initial);
  const opt = new SGD(ref.parameters(), sgd);
  try {
    assert.equal(w.numClasses, 10);
    const batches = [0, 1, 2].map((i) => ({ x: randomTensor([4, 1, 12, 12], new Generator(20 + i)), y: [i % 10, 3, 7, 9] }));
    for (const [i, b] of batches.entries()) {
      const lr = i === 2 ? 0.01 : undefined; // a schedule from the caller
      const loss = await w.step(b.x, b.y, lr === undefined ? {} : { lr });
      opt.zeroGrad();
      const l = crossEntropy(ref.call(b.x), b.y, { labelSmoothing: 0.1 });
      backward(l);
      if (lr !== undefined) opt.paramGroups[0]!.lr = lr;
      opt.step();
      assert.equal(loss, l.item(), `step ${i}: loss`);
    }
    const got = await w.stateDict();
    const want = ref.stateDict();
    assert.deepEqual([...got.keys()], [...want.keys()], 'torchvision keys, in order');
    for (const [k, t] of want) assertBitEqual(got.get(k)!.values, t.values, k);
    // the caller's model was copied, not trained
    for (const [k, t] of model.stateDict()) assertBitEqual(t.values, snapshot.get(k)!, `caller's ${k}`);
    // run: eval mode, no graph
    const x = batches[0]!.x;
    ref.eval();
    const expected = noGrad(() => ref.call(x));
    assertBitEqual((await w.run(x)).values, expected.values, 'run() logits');
  } finally {
    await w.close();
  }
});

test('TrainingWorker: the main thread stays responsive during a step; bad requests reject clearly and the worker goes on', async () => {
  const { TrainingWorker } = await import('../src/train/worker.js');
  const w = await TrainingWorker.create({ arch: 'resnet18', options: { numClasses: 10 } }, { sgd: { lr: 0.1, momentum: 0.9 } });
  try {
    const x = randomTensor([8, 3, 64, 64], new Generator(4));
    const [loss, ticks] = await ticksDuring(w.step(x, [0, 1, 2, 3, 4, 5, 6, 7]));
    assert.ok(Number.isFinite(loss));
    assert.ok(ticks > 0, 'no timer tick fired on the main thread during the step');
    const before = await w.stateDict();
    await assert.rejects(w.step(x, [0, 1, 2]), (e: Error) => e instanceof ShapeError && /3 targets for a batch of 8/.test(e.message));
    await assert.rejects(w.step(x, [0, 1, 2, 3, 4, 5, 6, 10]), (e: Error) => e instanceof ShapeError && /target 7 is 10, expected a class in \[0, 10\)/.test(e.message));
    await assert.rejects(w.step(x, [0, 1, 2, 3, 4, 5, 6, 1.5]), (e: Error) => e instanceof ShapeError && /target 7 is 1.5/.test(e.message));
    await assert.rejects(w.step(randomTensor([8, 64, 64], new Generator(5)), [0]), (e: Error) => e instanceof ShapeError && /must be 4-D/.test(e.message));
    await assert.rejects(w.step(x, [0, 1, 2, 3, 4, 5, 6, 7], { lr: -1 }), (e: Error) => e instanceof UsageError && /lr must be/.test(e.message));
    const after = await w.stateDict();
    for (const [k, t] of before) assertBitEqual(after.get(k)!.values, t.values, `${k} untouched by the rejected steps`);
    assert.ok(Number.isFinite(await w.step(x, [7, 6, 5, 4, 3, 2, 1, 0])), 'still training');
  } finally {
    await w.close();
  }
  await assert.rejects(w.step(randomTensor([1, 3, 32, 32], new Generator(6)), [0]), (e: Error) => e instanceof UsageError && /step\(\) called after close\(\)/.test(e.message));
});

test('TrainingWorker.create rejects bad options and bad SGD settings with their classes', async () => {
  const { TrainingWorker } = await import('../src/train/worker.js');
  const spec = { arch: 'resnet20', options: { inChannels: 1 } };
  await assert.rejects(TrainingWorker.create(spec, {} as never), (e: Error) => e instanceof UsageError && /sgd: \{ lr/.test(e.message));
  await assert.rejects(TrainingWorker.create(spec, { sgd: { lr: 0.1 }, labelSmoothing: 2 }), (e: Error) => e instanceof UsageError && /labelSmoothing/.test(e.message));
  await assert.rejects(TrainingWorker.create(spec, { sgd: { lr: 0.1 }, threads: 0 }), (e: Error) => e instanceof UsageError && /threads/.test(e.message));
  await assert.rejects(TrainingWorker.create(spec, { sgd: { lr: -1 } }), (e: Error) => e instanceof UsageError && /Invalid learning rate: -1/.test(e.message));
  await assert.rejects(TrainingWorker.create({ arch: 'resnet7' }, { sgd: { lr: 0.1 } }), (e: Error) => e instanceof UsageError && /unknown architecture "resnet7"/.test(e.message));
});
