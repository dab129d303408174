/**
 * Hugging Face transformers ResNet support (src/io/hf.ts, saveHfFolder in src/io/checkpoint.ts):
 * key mapping both ways, config.json parsing/validation, and config <-> ResNet options, checked
 * on every ImageNet ResNet of the registry (meta models: shapes only, no weights).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { FormatError, UsageError } from '../src/errors.js';
import { readCheckpoint, readHfConfig, resnetFromHfConfig, saveHfFolder } from '../src/io/checkpoint.js';
import {
  hfConfigFromModel,
  hfToTorchvisionKeys,
  looksLikeHfKeys,
  parseHfConfig,
  resnetOptionsFromHf,
  torchvisionToHfKeys,
} from '../src/io/hf.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { createModel } from '../src/models/registry.js';
import { ResNet } from '../src/models/resnet.js';
import { Generator } from '../src/tensor/rng.js';
import { withMetaTensors, type Tensor } from '../src/tensor/tensor.js';
import { randomTensor } from './helpers.js';

const FIX = fileURLToPath(new URL('../../test/fixtures/checkpoints/', import.meta.url));

function throwsFormat(fn: () => unknown, re: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof FormatError, `expected FormatError, got ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`);
    assert.match(e.message, re);
    assert.ok(!e.message.includes('\n'), `message should be one line: ${e.message}`);
    return true;
  });
}

function meta(name: string): ResNet {
  return withMetaTensors(() => createModel(name));
}

function shapes(m: ResNet): Map<string, string> {
  return new Map([...m.stateDict()].map(([k, t]) => [k, t.shape.join('x')]));
}

function exportOpts(m: ResNet) {
  const o = m.options;
  return { block: o.block, layers: o.layers, widths: o.widths, stemWidth: o.stemWidth, inChannels: o.inChannels, numClasses: o.numClasses, groups: o.groups, widthPerGroup: o.widthPerGroup };
}

// ---------------------------------------------------------------------------------------------
// Key mapping
// ---------------------------------------------------------------------------------------------

test('resnet50: torchvision -> HF -> torchvision key mapping is the identity, with transformers names', () => {
  const sd = meta('resnet50').stateDict();
  const hf = torchvisionToHfKeys(sd);
  assert.equal(hf.size, sd.size);
  const names = [...hf.keys()];
  for (const k of [
    'resnet.embedder.embedder.convolution.weight',
    'resnet.embedder.embedder.normalization.weight',
    'resnet.embedder.embedder.normalization.bias',
    'resnet.embedder.embedder.normalization.running_mean',
    'resnet.embedder.embedder.normalization.running_var',
    'resnet.embedder.embedder.normalization.num_batches_tracked',
    'resnet.encoder.stages.0.layers.0.layer.0.convolution.weight',
    'resnet.encoder.stages.0.layers.0.layer.2.normalization.running_var',
    'resnet.encoder.stages.0.layers.0.shortcut.convolution.weight',
    'resnet.encoder.stages.0.layers.0.shortcut.normalization.num_batches_tracked',
    'resnet.encoder.stages.2.layers.5.layer.1.convolution.weight',
    'resnet.encoder.stages.3.layers.2.layer.2.normalization.bias',
    'classifier.1.weight',
    'classifier.1.bias',
  ]) {
    assert.ok(hf.has(k), `missing ${k}`);
  }
  assert.equal(hf.get('resnet.embedder.embedder.convolution.weight'), sd.get('conv1.weight'), 'values are carried, not copied');
  assert.equal(hf.get('resnet.encoder.stages.0.layers.0.shortcut.convolution.weight'), sd.get('layer1.0.downsample.0.weight'));
  assert.equal(hf.get('resnet.encoder.stages.3.layers.2.layer.2.normalization.bias'), sd.get('layer4.2.bn3.bias'));
  assert.equal(hf.get('classifier.1.weight'), sd.get('fc.weight'));
  assert.ok(names.every((k) => k.startsWith('resnet.') || k.startsWith('classifier.1.')));
  assert.ok(!names.some((k) => k.includes('stages.0.layers.1.shortcut')), 'only the first block of a stage projects');
  assert.equal(names.filter((k) => k.endsWith('shortcut.convolution.weight')).length, 4, 'one shortcut per stage (layer1 too: 64 -> 256)');
  const back = hfToTorchvisionKeys(hf);
  assert.deepEqual([...back.keys()], [...sd.keys()], 'identity, order kept');
  for (const [k, v] of sd) assert.equal(back.get(k), v);
  assert.ok(looksLikeHfKeys(hf.keys()));
  assert.ok(!looksLikeHfKeys(sd.keys()));
});

test('resnet18: no shortcut in stage 1 (64 -> 64, stride 1), as both torchvision and transformers build it', () => {
  const hf = torchvisionToHfKeys(meta('resnet18').stateDict());
  const shortcuts = [...hf.keys()].filter((k) => k.endsWith('shortcut.convolution.weight'));
  assert.deepEqual(shortcuts, [1, 2, 3].map((s) => `resnet.encoder.stages.${s}.layers.0.shortcut.convolution.weight`));
  assert.ok(hf.has('resnet.encoder.stages.0.layers.1.layer.1.normalization.running_mean'));
  assert.ok(!hf.has('resnet.encoder.stages.0.layers.0.layer.2.convolution.weight'), 'basic layers have two convs');
});

test('headless (ResNetModel) names: no "resnet." prefix and no classifier, and they map back', () => {
  const sd = meta('resnet34').stateDict();
  const hf = torchvisionToHfKeys(sd, { withClassifier: false });
  assert.equal(hf.size, sd.size - 2);
  assert.ok(hf.has('embedder.embedder.convolution.weight'));
  assert.ok(hf.has('encoder.stages.3.layers.2.layer.1.normalization.weight'));
  assert.ok(![...hf.keys()].some((k) => k.startsWith('resnet.') || k.startsWith('classifier')));
  const back = hfToTorchvisionKeys(hf);
  assert.deepEqual([...back.keys()], [...sd.keys()].filter((k) => !k.startsWith('fc.')));
});

test('unrecognised keys are a FormatError listing the first few and the count', () => {
  const m = new Map<string, number>([
    ['resnet.embedder.embedder.convolution.weight', 1],
    ['resnet.pooler.weight', 2],
    ['encoder.stages.0.layers.0.layer.0.convolution.bias', 3],
    ['classifier.0.weight', 4],
    ['a', 5],
    ['b', 6],
    ['c', 7],
    ['d', 8],
  ]);
  throwsFormat(() => hfToTorchvisionKeys(m, 'x.safetensors'), /x\.safetensors: 7 of 8 keys are not transformers ResNet parameter names: "resnet\.pooler\.weight", "encoder\.stages\.0\.layers\.0\.layer\.0\.convolution\.bias", "classifier\.0\.weight", "a", "b", \.\.\. and 2 more/);
  throwsFormat(() => torchvisionToHfKeys(new Map([['conv1.weight', 1], ['layer1.0.se.fc.weight', 2]])), /1 of 2 keys are not torchvision ResNet parameter names: "layer1\.0\.se\.fc\.weight"/);
  throwsFormat(() => torchvisionToHfKeys(new Map([['layer0.0.conv1.weight', 1]])), /not torchvision/);
  throwsFormat(() => hfToTorchvisionKeys(new Map([['encoder.stages.01.layers.0.layer.0.convolution.weight', 1]])), /not transformers/);
  throwsFormat(
    () => hfToTorchvisionKeys(new Map([['embedder.embedder.convolution.weight', 1], ['resnet.embedder.embedder.convolution.weight', 2]])),
    /keys collide: two keys map to "conv1\.weight"/,
  );
});

// ---------------------------------------------------------------------------------------------
// config.json
// ---------------------------------------------------------------------------------------------

test('hfConfigFromModel: resnet50 and resnet18 give the transformers configs (microsoft/resnet-50 values)', () => {
  const c50 = hfConfigFromModel(exportOpts(meta('resnet50')));
  assert.equal(c50.model_type, 'resnet');
  assert.deepEqual(c50.architectures, ['ResNetForImageClassification']);
  assert.deepEqual(c50.hidden_sizes, [256, 512, 1024, 2048]);
  assert.deepEqual(c50.depths, [3, 4, 6, 3]);
  assert.equal(c50.embedding_size, 64);
  assert.equal(c50.num_channels, 3);
  assert.equal(c50.layer_type, 'bottleneck');
  assert.equal(c50.hidden_act, 'relu');
  assert.equal(c50.downsample_in_first_stage, false);
  assert.equal(c50.downsample_in_bottleneck, false);
  const id2label = c50.id2label as Record<string, string>;
  assert.equal(Object.keys(id2label).length, 1000);
  assert.equal(id2label['999'], 'LABEL_999');
  assert.equal((c50.label2id as Record<string, number>).LABEL_7, 7);
  const c18 = hfConfigFromModel(exportOpts(meta('resnet18')));
  assert.equal(c18.layer_type, 'basic');
  assert.deepEqual(c18.hidden_sizes, [64, 128, 256, 512]);
  assert.deepEqual(c18.depths, [2, 2, 2, 2]);
  const labelled = hfConfigFromModel({ ...exportOpts(meta('resnet18')), numClasses: 2, id2label: ['cat', 'dog'] });
  assert.deepEqual(labelled.id2label, { 0: 'cat', 1: 'dog' });
  assert.deepEqual(labelled.label2id, { cat: 0, dog: 1 });
  assert.throws(() => hfConfigFromModel({ ...exportOpts(meta('resnet18')), numClasses: 3, id2label: ['cat', 'dog'] }), UsageError);
});

test('every ImageNet ResNet round-trips through config.json to an identical architecture', () => {
  for (const name of ['resnet18', 'resnet34', 'resnet50', 'resnet101', 'resnet152']) {
    const m = meta(name);
    const cfg = parseHfConfig(JSON.parse(JSON.stringify(hfConfigFromModel(exportOpts(m)))));
    const { block, layers, options } = resnetOptionsFromHf(cfg);
    const rebuilt = withMetaTensors(() => new ResNet(block, layers, options));
    assert.deepEqual(shapes(rebuilt), shapes(m), name);
  }
  // HF has no grouped / wide bottlenecks
  for (const name of ['resnext50_32x4d', 'wide_resnet50_2']) {
    assert.throws(() => hfConfigFromModel(exportOpts(meta(name))), (e: unknown) => e instanceof UsageError && /grouped or wide/.test(e.message), name);
  }
});

const base = (): Record<string, unknown> => ({
  model_type: 'resnet',
  num_channels: 3,
  embedding_size: 64,
  hidden_sizes: [256, 512, 1024, 2048],
  depths: [3, 4, 6, 3],
  layer_type: 'bottleneck',
  hidden_act: 'relu',
  downsample_in_first_stage: false,
  downsample_in_bottleneck: false,
  id2label: { 0: 'a', 1: 'b', 2: 'c' },
});

test('parseHfConfig: valid configs, and transformers defaults for omitted scalar fields', () => {
  const cfg = parseHfConfig(base());
  assert.equal(cfg.layerType, 'bottleneck');
  assert.deepEqual(cfg.labels, ['a', 'b', 'c']);
  assert.equal(cfg.numLabels, 3);
  const { options } = resnetOptionsFromHf(cfg);
  assert.deepEqual(options.widths, [64, 128, 256, 512]);
  assert.equal(options.numClasses, 3);
  assert.equal(options.stemWidth, 64);
  const minimal = parseHfConfig({ model_type: 'resnet', hidden_sizes: [8, 16], depths: [1, 2] });
  assert.equal(minimal.layerType, 'bottleneck');
  assert.equal(minimal.numChannels, 3);
  assert.equal(minimal.embeddingSize, 64);
  assert.equal(minimal.numLabels, undefined);
  assert.equal(parseHfConfig({ ...base(), id2label: undefined, num_labels: 7 }).numLabels, 7);
  assert.equal(parseHfConfig({ ...base(), num_labels: 7 }).numLabels, 3, 'id2label wins over num_labels, as in transformers');
  // basic layers ignore downsample_in_bottleneck (transformers only passes it to bottlenecks)
  const basic = parseHfConfig({ ...base(), layer_type: 'basic', hidden_sizes: [64, 128, 256, 512], downsample_in_bottleneck: true });
  assert.deepEqual(resnetOptionsFromHf(basic).options.widths, [64, 128, 256, 512]);
  // the fixtures' configs (with out_features, stage_names, transformers_version...) parse
  assert.equal(readHfConfig(`${FIX}basic_tiny_hf`).layerType, 'basic');
});

test('parseHfConfig / resnetOptionsFromHf errors name the field', () => {
  const bad = (patch: Record<string, unknown>, re: RegExp): void => throwsFormat(() => parseHfConfig({ ...base(), ...patch }, 'cfg.json'), re);
  throwsFormat(() => parseHfConfig([1, 2]), /config\.json: expected a JSON object/);
  throwsFormat(() => parseHfConfig(null), /expected a JSON object/);
  throwsFormat(() => parseHfConfig({ hidden_sizes: [4], depths: [1] }), /missing "model_type"/);
  bad({ model_type: 'vit' }, /cfg\.json: model_type is "vit", expected "resnet"/);
  bad({ hidden_sizes: undefined }, /missing "hidden_sizes"/);
  bad({ hidden_sizes: [] }, /"hidden_sizes" must be a non-empty list/);
  bad({ hidden_sizes: [256, 512, -4, 2048] }, /"hidden_sizes\[2\]" must be a positive integer, got -4/);
  bad({ hidden_sizes: [256, 512, 1024.5, 2048] }, /"hidden_sizes\[2\]" must be a positive integer/);
  bad({ depths: [3, 4, 6] }, /"hidden_sizes" has 4 stages but "depths" has 3/);
  bad({ depths: [3, 0, 6, 3] }, /"depths\[1\]" must be a positive integer, got 0/);
  bad({ layer_type: 'preact' }, /unsupported layer_type "preact"/);
  bad({ hidden_act: 'gelu' }, /unsupported hidden_act "gelu": .*only "relu"/);
  bad({ hidden_sizes: [254, 512, 1024, 2048] }, /hidden_sizes\[0\] = 254 is not divisible by 4/);
  bad({ num_channels: 0 }, /"num_channels" must be a positive integer, got 0/);
  bad({ embedding_size: '64' }, /"embedding_size" must be a positive integer, got "64"/);
  bad({ downsample_in_first_stage: 'no' }, /"downsample_in_first_stage" must be true or false/);
  bad({ id2label: ['a', 'b'] }, /"id2label" must be an object/);
  bad({ id2label: { 0: 'a', 2: 'b' } }, /"id2label" keys must be the indices 0\.\.1, got "2"/);
  bad({ id2label: { 0: 'a', x: 'b' } }, /"id2label" keys must be the indices/);
  bad({ id2label: { 0: 5 } }, /"id2label"\["0"\] must be a string/);
  bad({ id2label: undefined, num_labels: -1 }, /"num_labels" must be a non-negative integer/);
  bad({ architectures: 'ResNet' }, /"architectures" must be a list of strings/);

  const opts = (patch: Record<string, unknown>, re: RegExp, numClasses?: number): void =>
    throwsFormat(() => resnetOptionsFromHf(parseHfConfig({ ...base(), ...patch }), numClasses === undefined ? {} : { numClasses }), re);
  opts({ downsample_in_first_stage: true }, /downsample_in_first_stage = true .* not supported/);
  opts({ downsample_in_bottleneck: true }, /downsample_in_bottleneck = true puts the stride on the first 1x1 conv \(ResNet v1\); resnet-ts bottlenecks are torchvision v1\.5/);
  opts({ id2label: undefined }, /no id2label\/num_labels and no classifier weights.*classification head/);
  opts({ id2label: undefined, num_labels: 0 }, /headless \(num_labels 0\).*classification head/);
  opts({}, /number of classes must be a positive integer/, 0);
  // a classifier's size wins over a missing label count
  assert.equal(resnetOptionsFromHf(parseHfConfig({ ...base(), id2label: undefined }), { numClasses: 10 }).options.numClasses, 10);
});

// ---------------------------------------------------------------------------------------------
// saveHfFolder
// ---------------------------------------------------------------------------------------------

test('saveHfFolder writes a folder readCheckpoint reads back exactly (and that matches the fixture layout)', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'resnet-hf-test-'));
  try {
    const model = new ResNet('basic', [1, 1, 1, 1], { widths: [2, 4, 4, 8], stemWidth: 4, numClasses: 5 });
    const g = new Generator(5);
    for (const [, t] of model.stateDict()) if (t.dtype === 'float32') t.values.set(randomTensor(t.shape, g).values);
    const out = path.join(dir, 'nested', 'hf');
    saveHfFolder(out, model, ['a', 'b', 'c', 'd', 'e']);
    assert.deepEqual(fs.readdirSync(out).sort(), ['config.json', 'model.safetensors'], 'no temp files left');
    const ck = readCheckpoint(out);
    assert.equal(ck.format, 'hf');
    assert.deepEqual(ck.hfConfig!.labels, ['a', 'b', 'c', 'd', 'e']);
    const sd = model.stateDict();
    assert.deepEqual(new Set(ck.stateDict.keys()), new Set(sd.keys()));
    for (const [k, t] of sd) {
      const r: Tensor = ck.stateDict.get(k)!;
      assert.equal(r.dtype, t.dtype, k);
      assert.deepEqual(r.values, t.values, k);
    }
    const rebuilt = resnetFromHfConfig(ck.hfConfig!, ck.stateDict);
    rebuilt.loadStateDict(ck.stateDict);
    // same key names, shapes and dtypes as the Python-written fixture folder, and the same config values
    const ours = readSafetensors(path.join(out, 'model.safetensors'));
    const theirs = readSafetensors(`${FIX}basic_tiny_hf/model.safetensors`);
    assert.deepEqual(ours.metadata, { format: 'pt' });
    assert.deepEqual(new Set(ours.tensors.keys()), new Set(theirs.tensors.keys()));
    for (const [k, t] of theirs.tensors) {
      assert.deepEqual(ours.tensors.get(k)!.shape, t.shape, k);
      assert.equal(ours.tensors.get(k)!.dtype, t.dtype, k);
    }
    const cfgOurs = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
    const cfgTheirs = JSON.parse(fs.readFileSync(`${FIX}basic_tiny_hf/config.json`, 'utf8'));
    for (const k of ['model_type', 'architectures', 'num_channels', 'embedding_size', 'hidden_sizes', 'depths', 'layer_type', 'hidden_act', 'downsample_in_first_stage', 'downsample_in_bottleneck']) {
      assert.deepEqual(cfgOurs[k], cfgTheirs[k], k);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('saveHfFolder refuses networks transformers cannot express', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'resnet-hf-test-'));
  try {
    const cases: [ResNet, RegExp][] = [
      [new ResNet('basic', [1, 1, 1], { stem: 'cifar', widths: [2, 4, 8] }), /stem cifar/],
      [new ResNet('basic', [1, 1, 1, 1], { widths: [2, 4, 4, 8], stemWidth: 4, plain: true }), /plain/],
      [new ResNet('basic', [1, 1, 1, 1], { widths: [2, 4, 4, 8], stemWidth: 4, shortcut: 'C' }), /shortcut C/],
      [new ResNet('bottleneck', [1, 1, 1, 1], { widths: [2, 4, 4, 8], stemWidth: 4, replaceStrideWithDilation: [false, true, true] }), /dilation/],
      [new ResNet('bottleneck', [1, 1, 1, 1], { widths: [2, 4, 4, 8], stemWidth: 4, groups: 2, widthPerGroup: 32 }), /grouped or wide/],
    ];
    for (const [m, re] of cases) {
      assert.throws(() => saveHfFolder(path.join(dir, 'x'), m), (e: unknown) => e instanceof UsageError && re.test(e.message));
    }
    assert.equal(fs.existsSync(path.join(dir, 'x')), false, 'nothing written');
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
