/**
 * PyTorch checkpoints (src/io/zip.ts, src/io/pickle.ts, src/io/pth.ts) and the one-stop reader
 * (src/io/checkpoint.ts), against fixtures written by torch 1.13 (scripts/golden/gen_checkpoints.py):
 * plain, wrapped (training-checkpoint dicts, DataParallel prefixes, pickle protocol 4), strided
 * views, every storage dtype, Hugging Face folders; malicious pickles are refused without running
 * anything; malformed archives and pickles (hand-built and fuzzed) only ever raise FormatError.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { fileURLToPath } from 'node:url';
import { FormatError, StateDictError } from '../src/errors.js';
import { readCheckpoint, resnetFromHfConfig, sniffFormat } from '../src/io/checkpoint.js';
import { parseHfConfig, resnetOptionsFromHf } from '../src/io/hf.js';
import { parsePth, readPth } from '../src/io/pth.js';
import type { RawTensor } from '../src/io/raw.js';
import { readSafetensors } from '../src/io/safetensors.js';
import { rawToTensor } from '../src/io/state.js';
import { crc32, openZip } from '../src/io/zip.js';
import { ResNet, type BlockKind, type ResNetOptions } from '../src/models/resnet.js';
import type { Tensor } from '../src/tensor/tensor.js';
import { assertClose } from './helpers.js';

const FIX = fileURLToPath(new URL('../../test/fixtures/checkpoints/', import.meta.url));
const MARKER = '/tmp/resnet-ts-pwned-marker';

interface Case {
  name: string;
  block: BlockKind;
  layers: number[];
  options: ResNetOptions;
  input: number[];
  views: boolean;
  files: { pth: string; wrapped: string; io: string; hf?: string; hfbin?: string };
}

const cases: Case[] = JSON.parse(fs.readFileSync(`${FIX}cases.json`, 'utf8'));

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

function throwsFormat(fn: () => unknown, re: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof FormatError, `expected FormatError, got ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}`);
    assert.match(e.message, re);
    assert.ok(!e.message.includes('\n'), `message should be one line: ${e.message}`);
    return true;
  });
}

function fixture(name: string): Uint8Array {
  return new Uint8Array(fs.readFileSync(`${FIX}${name}`));
}

function toTensors(m: Map<string, RawTensor>): Map<string, Tensor> {
  return new Map([...m].map(([k, v]) => [k, rawToTensor(v)]));
}

function closeToScale(actual: ArrayLike<number>, expected: ArrayLike<number>, what: string, rel = 1e-4): void {
  let scale = 0;
  for (let i = 0; i < expected.length; i++) scale = Math.max(scale, Math.abs(expected[i]!));
  assertClose(actual, expected, { rtol: rel, atol: rel * Math.max(scale, 1e-30) }, what);
}

/** Loads `sd` strictly into a fresh model of case `c` and checks the eval logits. */
function checkLogits(c: Case, model: ResNet, sd: Map<string, Tensor>, what: string): void {
  model.loadStateDict(sd);
  model.eval();
  const io = readSafetensors(`${FIX}${c.files.io}`).tensors;
  const x = rawToTensor(io.get('input')!);
  const y = model.call(x);
  closeToScale(y.values, rawToTensor(io.get('logits')!).values, `${c.name} ${what} logits`);
}

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'resnet-pth-test-'));
}

/** Deterministic PRNG (mulberry32) so fuzz failures reproduce. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// ---- a ZIP writer, to build archives the reader must accept or refuse -----------------------

interface ZEntry {
  name: string;
  data: Uint8Array;
  method?: number;
  /** Store this many bytes (default: all of the compressed data). */
  storedLength?: number;
  flags?: number;
}

function buildZip(entries: ZEntry[], opts: { zip64?: boolean } = {}): Uint8Array {
  const parts: Buffer[] = [];
  const central: Buffer[] = [];
  let off = 0;
  const z64 = opts.zip64 ?? false;
  for (const e of entries) {
    const name = Buffer.from(e.name, 'utf8');
    const method = e.method ?? 0;
    const comp = method === 8 ? new Uint8Array(zlib.deflateRawSync(e.data)) : e.data;
    const crc = crc32(e.data);
    const flags = 0x800 | (e.flags ?? 0);
    const localExtra = z64 ? Buffer.alloc(20) : Buffer.alloc(0);
    if (z64) {
      localExtra.writeUInt16LE(1, 0);
      localExtra.writeUInt16LE(16, 2);
      localExtra.writeBigUInt64LE(BigInt(e.data.length), 4);
      localExtra.writeBigUInt64LE(BigInt(comp.length), 12);
    }
    const lh = Buffer.alloc(30);
    lh.writeUInt32LE(0x04034b50, 0);
    lh.writeUInt16LE(z64 ? 45 : 20, 4);
    lh.writeUInt16LE(flags, 6);
    lh.writeUInt16LE(method, 8);
    lh.writeUInt32LE(crc, 14);
    lh.writeUInt32LE(z64 ? 0xffffffff : comp.length, 18);
    lh.writeUInt32LE(z64 ? 0xffffffff : e.data.length, 22);
    lh.writeUInt16LE(name.length, 26);
    lh.writeUInt16LE(localExtra.length, 28);
    const stored = Buffer.from(comp.subarray(0, e.storedLength ?? comp.length));
    parts.push(lh, name, localExtra, stored);

    const cextra = z64 ? Buffer.alloc(28) : Buffer.alloc(0);
    if (z64) {
      cextra.writeUInt16LE(1, 0);
      cextra.writeUInt16LE(24, 2);
      cextra.writeBigUInt64LE(BigInt(e.data.length), 4);
      cextra.writeBigUInt64LE(BigInt(comp.length), 12);
      cextra.writeBigUInt64LE(BigInt(off), 20);
    }
    const ch = Buffer.alloc(46);
    ch.writeUInt32LE(0x02014b50, 0);
    ch.writeUInt16LE(z64 ? 45 : 20, 4);
    ch.writeUInt16LE(z64 ? 45 : 20, 6);
    ch.writeUInt16LE(flags, 8);
    ch.writeUInt16LE(method, 10);
    ch.writeUInt32LE(crc, 16);
    ch.writeUInt32LE(z64 ? 0xffffffff : comp.length, 20);
    ch.writeUInt32LE(z64 ? 0xffffffff : e.data.length, 24);
    ch.writeUInt16LE(name.length, 28);
    ch.writeUInt16LE(cextra.length, 30);
    ch.writeUInt32LE(z64 ? 0xffffffff : off, 42);
    central.push(ch, name, cextra);
    off += 30 + name.length + localExtra.length + stored.length;
  }
  const cd = Buffer.concat(central);
  const cdOffset = off;
  const tail: Buffer[] = [cd];
  if (z64) {
    const rec = Buffer.alloc(56);
    rec.writeUInt32LE(0x06064b50, 0);
    rec.writeBigUInt64LE(44n, 4);
    rec.writeUInt16LE(45, 12);
    rec.writeUInt16LE(45, 14);
    rec.writeBigUInt64LE(BigInt(entries.length), 24);
    rec.writeBigUInt64LE(BigInt(entries.length), 32);
    rec.writeBigUInt64LE(BigInt(cd.length), 40);
    rec.writeBigUInt64LE(BigInt(cdOffset), 48);
    const loc = Buffer.alloc(20);
    loc.writeUInt32LE(0x07064b50, 0);
    loc.writeBigUInt64LE(BigInt(cdOffset + cd.length), 8);
    loc.writeUInt32LE(1, 16);
    tail.push(rec, loc);
  }
  const eocd = Buffer.alloc(22);
  eocd.writeUInt32LE(0x06054b50, 0);
  eocd.writeUInt16LE(z64 ? 0xffff : entries.length, 8);
  eocd.writeUInt16LE(z64 ? 0xffff : entries.length, 10);
  eocd.writeUInt32LE(z64 ? 0xffffffff : cd.length, 12);
  eocd.writeUInt32LE(z64 ? 0xffffffff : cdOffset, 16);
  tail.push(eocd);
  return new Uint8Array(Buffer.concat([...parts, ...tail]));
}

function extractZip(bytes: Uint8Array): ZEntry[] {
  const z = openZip(bytes, 'test');
  return [...z.entries.keys()].map((name) => ({ name, data: z.read(name).slice() }));
}

// ---- a pickle writer (protocol 2 opcodes, as torch.save emits) ------------------------------

class Pk {
  private b: number[] = [0x80, 0x02];
  raw(...bytes: number[]): this {
    this.b.push(...bytes);
    return this;
  }
  op(c: string): this {
    return this.raw(c.charCodeAt(0));
  }
  str(s: string): this {
    const u = Buffer.from(s, 'utf8');
    this.raw(0x58, u.length & 0xff, (u.length >> 8) & 0xff, (u.length >> 16) & 0xff, u.length >>> 24);
    return this.raw(...u);
  }
  int(n: number): this {
    if (n >= 0 && n < 256) return this.raw(0x4b, n);
    const b = Buffer.alloc(4);
    b.writeInt32LE(n);
    return this.raw(0x4a, ...b);
  }
  global(mod: string, name: string): this {
    return this.raw(0x63, ...Buffer.from(`${mod}\n${name}\n`, 'latin1'));
  }
  tuple(...ints: number[]): this {
    this.op('(');
    for (const i of ints) this.int(i);
    return this.op('t');
  }
  /** A _rebuild_tensor_v2 call on storage `key`. */
  tensor(o: { key?: string; type?: string; numel: number; offset?: number; size: number[]; stride: number[] }): this {
    this.global('torch._utils', '_rebuild_tensor_v2').op('(');
    this.op('(').str('storage').global('torch', o.type ?? 'FloatStorage').str(o.key ?? '0').str('cpu').int(o.numel).op('t').op('Q');
    this.int(o.offset ?? 0).tuple(...o.size).tuple(...o.stride).raw(0x89);
    this.global('collections', 'OrderedDict').op(')').op('R');
    return this.op('t').op('R');
  }
  bytes(): Uint8Array {
    return new Uint8Array([...this.b, 0x2e]);
  }
}

function f32Bytes(values: number[]): Uint8Array {
  return new Uint8Array(new Float32Array(values).buffer);
}

/** A torch-like archive: <root>/data.pkl, <root>/data/<key>, <root>/version. */
function torchZip(pkl: Uint8Array, storages: Record<string, Uint8Array> = {}, root = 'archive', extra: ZEntry[] = []): Uint8Array {
  const prefix = root === '' ? '' : `${root}/`;
  return buildZip([
    { name: `${prefix}data.pkl`, data: pkl },
    ...Object.entries(storages).map(([k, d]) => ({ name: `${prefix}data/${k}`, data: d })),
    { name: `${prefix}version`, data: new TextEncoder().encode('3\n') },
    ...extra,
  ]);
}

const SIX = f32Bytes([0, 1, 2, 3, 4, 5]);

function oneTensor(spec: Parameters<Pk['tensor']>[0]): Uint8Array {
  return new Pk().op('}').str('w').tensor(spec).op('s').bytes();
}

// ---------------------------------------------------------------------------------------------
// Fixtures written by torch 1.13
// ---------------------------------------------------------------------------------------------

for (const c of cases) {
  test(`torch.save fixture ${c.name}: plain state dict loads strictly and reproduces PyTorch's logits`, () => {
    const raw = readPth(`${FIX}${c.files.pth}`);
    const model = new ResNet(c.block, c.layers, c.options);
    assert.deepEqual([...raw.keys()], [...model.stateDict().keys()], 'keys in state_dict() order');
    const nbt = raw.get('bn1.num_batches_tracked')!;
    assert.equal(nbt.dtype, 'I64');
    assert.deepEqual(nbt.shape, []);
    assert.equal((nbt.data as BigInt64Array)[0], 7n);
    checkLogits(c, model, toTensors(raw), 'plain .pth');
  });

  test(`torch.save fixture ${c.name}: wrapped training checkpoint loads the same tensors`, () => {
    const plain = readPth(`${FIX}${c.files.pth}`);
    const wrapped = readPth(`${FIX}${c.files.wrapped}`);
    assert.deepEqual([...wrapped.keys()], [...plain.keys()], 'wrapper picked, "module." prefix stripped');
    for (const [k, t] of plain) {
      const w = wrapped.get(k)!;
      assert.deepEqual(w.shape, t.shape, k);
      assert.deepEqual(w.data, t.data, `${k}: ${c.views ? 'strided views gathered correctly' : 'same values'}`);
    }
    const ck = readCheckpoint(`${FIX}${c.files.wrapped}`);
    assert.equal(ck.format, 'pth');
    checkLogits(c, new ResNet(c.block, c.layers, c.options), ck.stateDict, 'wrapped .pth');
  });

  if (c.files.hf) {
    test(`Hugging Face folder ${c.files.hf}: config builds the same ResNet and reproduces the logits`, () => {
      const ck = readCheckpoint(`${FIX}${c.files.hf}`);
      assert.equal(ck.format, 'hf');
      assert.ok(ck.hfConfig);
      const { block, layers, options } = resnetOptionsFromHf(ck.hfConfig, { numClasses: ck.stateDict.get('fc.weight')!.shape[0] });
      assert.equal(block, c.block);
      assert.deepEqual(layers, c.layers);
      assert.deepEqual(options.widths, c.options.widths);
      assert.equal(options.stemWidth, c.options.stemWidth);
      assert.equal(options.numClasses, c.options.numClasses);
      const model = new ResNet(block, layers, options);
      assert.deepEqual(new Set(ck.stateDict.keys()), new Set(model.stateDict().keys()));
      checkLogits(c, model, ck.stateDict, 'HF folder');
      // and through the helper, from the config's labels alone
      checkLogits(c, resnetFromHfConfig(ck.hfConfig), ck.stateDict, 'HF folder (resnetFromHfConfig)');
    });
  }
  if (c.files.hfbin) {
    test(`Hugging Face folder ${c.files.hfbin} with pytorch_model.bin loads like model.safetensors`, () => {
      const ck = readCheckpoint(`${FIX}${c.files.hfbin}`);
      assert.equal(ck.format, 'hf');
      checkLogits(c, resnetFromHfConfig(ck.hfConfig!, ck.stateDict), ck.stateDict, 'HF folder (.bin)');
    });
  }
}

test('strided, permuted, offset and 0-dim tensors of every storage dtype decode exactly', () => {
  const got = readPth(`${FIX}dtypes.pth`);
  const expected: Record<string, { dtype: string; shape: number[]; values: (number | string)[] }> = JSON.parse(fs.readFileSync(`${FIX}dtypes.json`, 'utf8'));
  assert.deepEqual([...got.keys()], Object.keys(expected));
  for (const [k, e] of Object.entries(expected)) {
    const t = got.get(k)!;
    assert.deepEqual(t.shape, e.shape, k);
    const half = e.dtype === 'F16' || e.dtype === 'BF16';
    assert.equal(t.dtype, half ? 'F32' : e.dtype === 'BOOL' ? 'BOOL' : e.dtype, k);
    if (half) assert.equal(t.sourceDType, e.dtype, k);
    const values = t.data instanceof BigInt64Array ? [...t.data].map(String) : Array.from(t.data as ArrayLike<number>);
    assert.deepEqual(values, e.values, k);
  }
});

test('sniffFormat and readCheckpoint recognise files by content, not extension', () => {
  const dir = tmpDir();
  try {
    fs.copyFileSync(`${FIX}basic_tiny.pth`, path.join(dir, 'weights.safetensors'));
    fs.copyFileSync(`${FIX}basic_tiny_hf/model.safetensors`, path.join(dir, 'weights.pth'));
    assert.equal(readCheckpoint(path.join(dir, 'weights.safetensors')).format, 'pth');
    const st = readCheckpoint(path.join(dir, 'weights.pth'));
    assert.equal(st.format, 'safetensors');
    assert.equal(st.renamedFromHf, true, 'HF key names mapped');
    assert.ok(st.stateDict.has('layer1.0.conv1.weight'));
    assert.equal(sniffFormat(new Uint8Array([1, 2, 3])), undefined);
    fs.writeFileSync(path.join(dir, 'junk.bin'), 'hello world, not a checkpoint');
    throwsFormat(() => readCheckpoint(path.join(dir, 'junk.bin')), /not a PyTorch checkpoint/);
    fs.writeFileSync(path.join(dir, 'junk.txt'), 'hello world, not a checkpoint');
    throwsFormat(() => readCheckpoint(path.join(dir, 'junk.txt')), /unrecognised checkpoint format/);
    fs.writeFileSync(path.join(dir, 'empty.pth'), '');
    throwsFormat(() => readCheckpoint(path.join(dir, 'empty.pth')), /file is empty/);
    throwsFormat(() => readCheckpoint(path.join(dir, 'missing.pth')), /file not found/);
    throwsFormat(() => readCheckpoint(dir), /no config\.json/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('Hugging Face folder problems are FormatErrors: bad JSON, no weights, classifier/labels mismatch, sharded index', () => {
  const dir = tmpDir();
  try {
    const cfg = JSON.parse(fs.readFileSync(`${FIX}basic_tiny_hf/config.json`, 'utf8'));
    fs.writeFileSync(path.join(dir, 'config.json'), '{"model_type": "resnet",');
    throwsFormat(() => readCheckpoint(dir), /config\.json: not valid JSON/);
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(cfg));
    throwsFormat(() => readCheckpoint(dir), /no weights/);
    // sharded: an index naming one shard
    fs.copyFileSync(`${FIX}basic_tiny_hf/model.safetensors`, path.join(dir, 'model-00001-of-00001.safetensors'));
    const st = readSafetensors(`${FIX}basic_tiny_hf/model.safetensors`);
    const weightMap = Object.fromEntries([...st.tensors.keys()].map((k) => [k, 'model-00001-of-00001.safetensors']));
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map: weightMap }));
    const ck = readCheckpoint(dir);
    assert.equal(ck.stateDict.size, st.tensors.size);
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'), JSON.stringify({ weight_map: { a: '../../etc/passwd' } }));
    throwsFormat(() => readCheckpoint(dir), /not a file in the folder/);
    fs.rmSync(path.join(dir, 'model.safetensors.index.json'));
    // labels disagree with the classifier
    fs.copyFileSync(`${FIX}basic_tiny_hf/model.safetensors`, path.join(dir, 'model.safetensors'));
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...cfg, id2label: { 0: 'a', 1: 'b' } }));
    throwsFormat(() => readCheckpoint(dir), /classifier has 5 outputs but config\.json lists 2 labels/);
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...cfg, layer_type: 'bottleneck', hidden_sizes: [8, 16, 16, 32] }));
    const ck2 = readCheckpoint(dir); // the config parses; the mismatch shows when loading
    assert.throws(() => resnetFromHfConfig(ck2.hfConfig!, ck2.stateDict).loadStateDict(ck2.stateDict), StateDictError);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

// ---------------------------------------------------------------------------------------------
// Malicious pickles: refused, nothing runs
// ---------------------------------------------------------------------------------------------

test('malicious checkpoints (os.system / builtins.eval via REDUCE) are refused and nothing runs', () => {
  fs.rmSync(MARKER, { force: true });
  throwsFormat(() => readPth(`${FIX}malicious_system.pth`), /refusing to load global "posix\.system" \(only tensors and state dicts are allowed; this is what torch\.load\(weights_only=True\) permits\)/);
  throwsFormat(() => readCheckpoint(`${FIX}malicious_eval.pth`), /refusing to load global "builtins\.eval"/);
  assert.equal(fs.existsSync(MARKER), false, 'the payload must never run');
});

test('every global outside the allow-list is refused, wherever it appears', () => {
  const refused: [string, string][] = [
    ['os', 'system'],
    ['subprocess', 'Popen'],
    ['builtins', 'getattr'],
    ['__builtin__', 'eval'],
    ['torch._utils', '_rebuild_device_tensor_from_numpy'],
    ['torch', 'load'],
    ['collections', 'defaultdict'],
    ['numpy.core.multiarray', '_reconstruct'],
  ];
  for (const [m, n] of refused) {
    // after a valid tensor, inside the state dict, called through NEWOBJ
    const pkl = new Pk().op('}').str('w').tensor({ numel: 6, size: [6], stride: [1] }).op('s').str('x').global(m, n).str('ls').raw(0x85).raw(0x81).op('s').bytes();
    throwsFormat(() => parsePth(torchZip(pkl, { 0: SIX })), new RegExp(`refusing to load global "${`${m}.${n}`.replace(/\./g, '\\.')}"`));
  }
  // STACK_GLOBAL with a name carrying control characters: still one line
  const sg = new Pk().str('os').str('sys\ntem').raw(0x93).bytes();
  throwsFormat(() => parsePth(torchZip(sg)), /refusing to load global "os\.sys\\ntem"/);
  throwsFormat(() => parsePth(torchZip(new Pk().global('torch.storage', '_load_from_bytes').bytes())), /_load_from_bytes.*legacy/);
  // allowed globals cannot be misused as callables
  throwsFormat(() => parsePth(torchZip(new Pk().global('torch', 'FloatStorage').op(')').op('R').bytes())), /not a callable global/);
  throwsFormat(() => parsePth(torchZip(new Pk().global('torch._utils', '_rebuild_tensor_v2').op(')').raw(0x81).bytes())), /cannot be instantiated/);
  throwsFormat(() => parsePth(torchZip(new Pk().global('torch._utils', '_rebuild_tensor_v2').str('x').raw(0x85).op('R').bytes())), /takes 6 or 7 arguments/);
  throwsFormat(() => parsePth(torchZip(new Pk().op(']').op(')').op('b').bytes())), /BUILD .* not supported/);
});

// ---------------------------------------------------------------------------------------------
// Hand-built archives: views, bounds, dtypes, layout variants
// ---------------------------------------------------------------------------------------------

function values(t: RawTensor): number[] {
  return Array.from(t.data as ArrayLike<number>);
}

test('_rebuild_tensor_v2 honours storage offsets and strides', () => {
  const get = (spec: Parameters<Pk['tensor']>[0]): RawTensor => parsePth(torchZip(oneTensor(spec), { 0: SIX })).get('w')!;
  assert.deepEqual(values(get({ numel: 6, size: [2, 3], stride: [3, 1] })), [0, 1, 2, 3, 4, 5]);
  assert.deepEqual(values(get({ numel: 6, size: [3, 2], stride: [1, 3] })), [0, 3, 1, 4, 2, 5]);
  assert.deepEqual(values(get({ numel: 6, offset: 1, size: [2], stride: [2] })), [1, 3]);
  assert.deepEqual(values(get({ numel: 6, offset: 5, size: [], stride: [] })), [5]);
  assert.deepEqual(values(get({ numel: 6, offset: 2, size: [2, 2], stride: [0, 1] })), [2, 3, 2, 3]);
  assert.deepEqual(get({ numel: 6, offset: 6, size: [0, 3], stride: [3, 1] }).shape, [0, 3]);
});

test('tensors reaching past their storage, short or missing records, unknown storage types: FormatError', () => {
  const parse = (spec: Parameters<Pk['tensor']>[0], data: Record<string, Uint8Array> = { 0: SIX }): Map<string, RawTensor> => parsePth(torchZip(oneTensor(spec), data));
  throwsFormat(() => parse({ numel: 6, offset: 1, size: [2, 3], stride: [3, 1] }), /reaches element 6, past the storage's 6 elements/);
  throwsFormat(() => parse({ numel: 6, size: [3, 3], stride: [3, 1] }), /past the storage/);
  throwsFormat(() => parse({ numel: 6, offset: 7, size: [0], stride: [1] }), /starts past the storage/);
  throwsFormat(() => parse({ numel: 6, size: [10], stride: [0] }), /expanded views are not supported/);
  throwsFormat(() => parse({ numel: 6, size: [2, 3], stride: [3] }), /size has 2 dimensions but stride has 1/);
  throwsFormat(() => parse({ numel: 8, size: [8], stride: [1] }), /should hold 8 F32 elements \(32 bytes\) but its record has 24 bytes/);
  throwsFormat(() => parse({ numel: 6, key: '7', size: [6], stride: [1] }), /storage "7" referenced by the pickle is missing/);
  throwsFormat(() => parse({ numel: 6, type: 'ShortStorage', size: [6], stride: [1] }), /unsupported tensor storage type torch\.ShortStorage/);
  throwsFormat(() => parse({ numel: 6, type: 'ComplexFloatStorage', size: [6], stride: [1] }), /unsupported tensor storage type/);
  const negStride = new Pk().op('}').str('w').global('torch._utils', '_rebuild_tensor_v2').op('(').op('(').str('storage').global('torch', 'FloatStorage').str('0').str('cpu').int(6).op('t').op('Q')
    .int(0).tuple(2).op('(').int(-1).op('t').raw(0x89).op('}').op('t').op('R').op('s').bytes();
  throwsFormat(() => parsePth(torchZip(negStride, { 0: SIX })), /must hold non-negative integers/);
  // a persistent id that is not a storage
  throwsFormat(() => parsePth(torchZip(new Pk().str('x').op('Q').bytes())), /unsupported persistent id/);
});

test('archive layout variants: any root folder, no folder, deflate, ZIP64, big-endian storages', () => {
  const pkl = oneTensor({ numel: 6, size: [2, 3], stride: [3, 1] });
  for (const root of ['archive', 'my_model', '']) {
    assert.deepEqual(values(parsePth(torchZip(pkl, { 0: SIX }, root)).get('w')!), [0, 1, 2, 3, 4, 5], `root ${JSON.stringify(root)}`);
  }
  const entries = extractZip(fixture('basic_tiny.pth'));
  const reference = parsePth(fixture('basic_tiny.pth'));
  for (const variant of [{ zip64: true }, { deflate: true }, { zip64: true, deflate: true }]) {
    const bytes = buildZip(entries.map((e) => ({ ...e, method: variant.deflate ? 8 : 0 })), { zip64: variant.zip64 ?? false });
    const got = parsePth(bytes, 'variant');
    assert.deepEqual([...got.keys()], [...reference.keys()]);
    for (const [k, t] of reference) assert.deepEqual(got.get(k)!.data, t.data, `${JSON.stringify(variant)} ${k}`);
  }
  const be = new Uint8Array(SIX);
  for (let i = 0; i < be.length; i += 4) be.subarray(i, i + 4).reverse();
  const big = torchZip(pkl, { 0: be }, 'archive', [{ name: 'archive/byteorder', data: new TextEncoder().encode('big') }]);
  assert.deepEqual(values(parsePth(big).get('w')!), [0, 1, 2, 3, 4, 5]);
  const weird = torchZip(pkl, { 0: SIX }, 'archive', [{ name: 'archive/byteorder', data: new TextEncoder().encode('middle') }]);
  throwsFormat(() => parsePth(weird), /byteorder record says "middle"/);
});

test('CRC-32 is only verified on request (torch.load does not verify it either)', () => {
  const bytes = torchZip(oneTensor({ numel: 6, size: [6], stride: [1] }), { 0: SIX });
  const z = openZip(bytes);
  assert.doesNotThrow(() => z.read('archive/data/0', { verifyCrc: true }));
  const off = z.entries.get('archive/data/0')!.localHeaderOffset + 30 + 'archive/data/0'.length;
  const bad = bytes.slice();
  bad[off] ^= 0x40;
  assert.doesNotThrow(() => parsePth(bad));
  throwsFormat(() => openZip(bad).read('archive/data/0', { verifyCrc: true }), /CRC-32 mismatch/);
});

test('the top-level object must be a state dict or a checkpoint dict holding one', () => {
  const t = (spec = { numel: 6, size: [6], stride: [1] }): Pk => new Pk().tensor(spec);
  throwsFormat(() => parsePth(torchZip(new Pk().op(']').bytes())), /holds list of 0; expected a state dict/);
  throwsFormat(() => parsePth(torchZip(t().bytes(), { 0: SIX })), /single tensor, not a state dict/);
  throwsFormat(() => parsePth(torchZip(new Pk().op('}').str('epoch').int(3).op('s').bytes())), /\(keys "epoch"\) holds no tensors/);
  throwsFormat(() => parsePth(torchZip(new Pk().op('}').bytes())), /empty dict/);
  const mixed = new Pk().op('}').str('w').tensor({ numel: 6, size: [6], stride: [1] }).op('s').str('epoch').int(3).op('s').bytes();
  throwsFormat(() => parsePth(torchZip(mixed, { 0: SIX })), /mixes 1 tensors with 1 other values \("epoch": int 3\)/);
  throwsFormat(() => parsePth(torchZip(new Pk().op('}').str('state_dict').int(5).op('s').bytes())), /"state_dict" entry is int 5/);
  // "module." is only stripped when every key has it
  const partial = new Pk().op('}').str('module.a').tensor({ numel: 6, size: [6], stride: [1] }).op('s').str('b').tensor({ numel: 6, size: [6], stride: [1] }).op('s').bytes();
  assert.deepEqual([...parsePth(torchZip(partial, { 0: SIX })).keys()], ['module.a', 'b']);
});

test('legacy, bare-pickle, empty, truncated and corrupt archives are FormatErrors', () => {
  throwsFormat(() => readPth(`${FIX}legacy.pth`), /legacy \(pre-1\.6\) torch\.save format is not supported; re-save with torch\.save\(\.\.\., _use_new_zipfile_serialization=True\)/);
  throwsFormat(() => parsePth(new Pk().op('}').bytes()), /bare pickle/);
  throwsFormat(() => parsePth(new Uint8Array(0)), /file is empty/);
  throwsFormat(() => parsePth(new Uint8Array([0x50, 0x4b, 0x03, 0x04])), /too short/);
  const good = fixture('basic_tiny.pth');
  for (const n of [4, 30, 100, 1000, good.length >> 1, good.length - 23, good.length - 22, good.length - 1]) {
    throwsFormat(() => parsePth(good.subarray(0, n), 'trunc'), /trunc: /);
  }
  // the central directory's location comes from the end records (torch always writes ZIP64 ones)
  const dv = new DataView(good.buffer, good.byteOffset, good.byteLength);
  const eocd = good.length - 22;
  assert.equal(dv.getUint32(eocd, true), 0x06054b50);
  assert.equal(dv.getUint32(eocd - 20, true), 0x07064b50, 'torch writes a ZIP64 locator');
  const rec = Number(dv.getBigUint64(eocd - 20 + 8, true));
  const cdOffset = dv.getUint32(eocd + 16, true);
  assert.equal(Number(dv.getBigUint64(rec + 48, true)), cdOffset);
  const badSig = good.slice();
  badSig[cdOffset] ^= 0xff;
  throwsFormat(() => parsePth(badSig), /bad central directory record signature/);
  const badOff = good.slice();
  new DataView(badOff.buffer).setBigUint64(rec + 48, BigInt(cdOffset + 1000), true);
  new DataView(badOff.buffer).setUint32(eocd + 16, 0xffffffff, true);
  throwsFormat(() => parsePth(badOff), /central directory .* runs past/);
  const disagree = good.slice();
  new DataView(disagree.buffer).setUint32(eocd + 16, cdOffset + 1000, true);
  throwsFormat(() => parsePth(disagree), /ZIP64 and classic end-of-central-directory records disagree/);
  const badCount = good.slice();
  new DataView(badCount.buffer).setBigUint64(rec + 32, 9999n, true);
  new DataView(badCount.buffer).setUint16(eocd + 10, 0xffff, true);
  throwsFormat(() => parsePth(badCount), /entry counts disagree|cannot hold/);
  const noLocator = good.slice();
  noLocator[eocd - 20] ^= 0xff;
  new DataView(noLocator.buffer).setUint32(eocd + 16, 0xffffffff, true);
  throwsFormat(() => parsePth(noLocator), /ZIP64 locator is missing/);
  const badLocal = good.slice();
  new DataView(badLocal.buffer).setUint32(cdOffset + 42, 5, true); // first entry's local header offset
  throwsFormat(() => parsePth(badLocal), /no local file header/);
  // method, encryption, duplicates, missing data.pkl, corrupt deflate
  const pkl = oneTensor({ numel: 6, size: [6], stride: [1] });
  throwsFormat(() => parsePth(buildZip([{ name: 'a/data.pkl', data: pkl, method: 12 }])), /compression method 12 is not supported/);
  throwsFormat(() => parsePth(buildZip([{ name: 'a/data.pkl', data: pkl, flags: 1 }])), /encrypted/);
  throwsFormat(() => parsePth(buildZip([{ name: 'a/data.pkl', data: pkl }, { name: 'a/data.pkl', data: pkl }])), /duplicate entry/);
  throwsFormat(() => parsePth(buildZip([{ name: 'a/data.pkl', data: pkl }, { name: 'b/data.pkl', data: pkl }])), /several data\.pkl/);
  throwsFormat(() => parsePth(buildZip([{ name: 'a/version', data: pkl }])), /no data\.pkl/);
  const deflated = buildZip([{ name: 'a/data.pkl', data: pkl, method: 8 }]);
  const z = openZip(deflated);
  const start = 30 + 'a/data.pkl'.length;
  const corrupt = deflated.slice();
  for (let i = 0; i < z.entries.get('a/data.pkl')!.compressedSize; i++) corrupt[start + i] = 0xff;
  throwsFormat(() => parsePth(corrupt), /deflate data is corrupt|inflates to/);
  throwsFormat(() => parsePth(buildZip([{ name: 'a/data.pkl', data: pkl, storedLength: 10 }])), /./);
  // a pickle without STOP, with an unknown opcode, with a bad memo reference
  throwsFormat(() => parsePth(torchZip(pkl.subarray(0, pkl.length - 1), { 0: SIX })), /without a STOP opcode/);
  throwsFormat(() => parsePth(torchZip(new Uint8Array([0x80, 0x02, 0xff, 0x2e]))), /unsupported opcode 0xff/);
  throwsFormat(() => parsePth(torchZip(new Uint8Array([0x80, 0x02, 0x68, 0x09, 0x2e]))), /memo key 9 was never stored/);
  throwsFormat(() => parsePth(torchZip(new Uint8Array([0x80, 0x02, 0x73, 0x2e]))), /stack underflow/);
  throwsFormat(() => parsePth(torchZip(new Uint8Array([0x80, 0x09, 0x2e]))), /unsupported pickle protocol 9/);
});

// ---------------------------------------------------------------------------------------------
// Fuzzing: mutated archives, pickles and configs raise FormatError/StateDictError only
// ---------------------------------------------------------------------------------------------

function cat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function mutate(src: Uint8Array, r: () => number): Uint8Array {
  const pick = (n: number): number => Math.floor(r() * n);
  let b: Uint8Array = src.slice();
  const rounds = 1 + pick(3);
  for (let i = 0; i < rounds; i++) {
    const n = b.length;
    if (n === 0) break;
    switch (pick(7)) {
      case 0: // flip bits
        for (let k = 0; k < 1 + pick(4); k++) b[pick(n)] ^= 1 << pick(8);
        break;
      case 1: // interesting values
        b[pick(n)] = [0, 0xff, 0x7f, 0x80, 0x2e, 0x28, 0x52, 0x51][pick(8)]!;
        break;
      case 2: // truncate
        b = b.slice(0, pick(n));
        break;
      case 3: { // insert random bytes
        const at = pick(n);
        const ins = Uint8Array.from({ length: 1 + pick(8) }, () => pick(256));
        b = cat(b.subarray(0, at), ins, b.subarray(at));
        break;
      }
      case 4: { // delete a range
        const at = pick(n);
        b = cat(b.subarray(0, at), b.subarray(Math.min(n, at + 1 + pick(16))));
        break;
      }
      case 5: { // duplicate a range
        const at = pick(n);
        const len = 1 + pick(32);
        b = cat(b.subarray(0, at + len), b.subarray(at, at + len), b.subarray(at + len));
        break;
      }
      default: { // overwrite a 4-byte field with a large / small number
        if (n < 4) break;
        const at = pick(n - 3);
        new DataView(b.buffer).setUint32(at, [0xffffffff, 0, 1, 0x7fffffff, n, n + 1][pick(6)]!, true);
      }
    }
  }
  return b;
}

function onlyOurErrors(fn: () => void, what: string): void {
  try {
    fn();
  } catch (e) {
    if (e instanceof FormatError || e instanceof StateDictError) {
      assert.ok(!e.message.includes('\n'), `${what}: multi-line message ${e.message}`);
      return;
    }
    throw new assert.AssertionError({ message: `${what}: threw ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)}` });
  }
}

test('fuzz: 1500 mutated checkpoints (whole file and pickle only) fail only with FormatError/StateDictError', () => {
  const c = cases.find((x) => x.name === 'basic_tiny')!;
  const model = new ResNet(c.block, c.layers, c.options);
  const base = fixture('basic_tiny_wrapped.pth');
  const entries = extractZip(base);
  const pklIndex = entries.findIndex((e) => e.name.endsWith('data.pkl'));
  const r = rng(20240601);
  const t0 = Date.now();
  let parsed = 0;
  for (let i = 0; i < 1500; i++) {
    let bytes: Uint8Array;
    if (i % 2 === 0) bytes = mutate(base, r);
    else {
      const es = entries.map((e, j) => (j === pklIndex ? { ...e, data: mutate(e.data, r) } : e));
      bytes = buildZip(es, { zip64: i % 6 === 1 });
    }
    onlyOurErrors(() => {
      const sd = parsePth(bytes, 'fuzz');
      parsed++;
      model.loadStateDict(toTensors(sd), { strict: i % 4 === 1 });
    }, `mutation ${i}`);
  }
  const ms = Date.now() - t0;
  assert.ok(parsed > 0 && parsed < 1500, `some mutations should still parse (${parsed})`);
  assert.ok(ms < 20_000, `fuzz took ${ms} ms`);
});

test('fuzz: 1500 mutated config.json (values and text) fail only with FormatError', () => {
  const cfg = JSON.parse(fs.readFileSync(`${FIX}bottleneck_tiny_hf/config.json`, 'utf8')) as Record<string, unknown>;
  const keys = [...Object.keys(cfg), 'num_labels', 'extra'];
  const pool: unknown[] = [undefined, null, 0, -1, 1.5, 3, 4, 1e300, 2 ** 53, 'relu', 'gelu', 'basic', 'bottleneck', 'resnet', 'vit', '', true, false,
    [], [1], [0], [4, 8], [-4, 8], [8, 8, 8, 8], [1, 1, 1, 1, 1], [[1]], ['a'], {}, { 0: 'a' }, { 1: 'a' }, { 0: 1 }, { '00': 'a' }, { __proto__: 'x' }];
  const r = rng(77);
  const pick = <T>(a: readonly T[]): T => a[Math.floor(r() * a.length)]!;
  let accepted = 0;
  for (let i = 0; i < 1200; i++) {
    const m: Record<string, unknown> = structuredClone(cfg);
    for (let k = 0; k < 1 + Math.floor(r() * 3); k++) {
      const key = pick(keys);
      const v = pick(pool);
      if (v === undefined) delete m[key];
      else m[key] = structuredClone(v);
    }
    onlyOurErrors(() => {
      const parsed = parseHfConfig(m, 'fuzz');
      const o = resnetOptionsFromHf(parsed, r() < 0.5 ? { numClasses: 5 } : {});
      assert.ok(o.options.widths!.every((w) => Number.isSafeInteger(w) && w >= 1));
      accepted++;
    }, `config mutation ${i}`);
  }
  assert.ok(accepted > 0, 'some mutated configs are still valid');
  // text-level mutations, through the folder reader
  const dir = tmpDir();
  try {
    fs.copyFileSync(`${FIX}bottleneck_tiny_hf/model.safetensors`, path.join(dir, 'model.safetensors'));
    const text = new TextEncoder().encode(JSON.stringify(cfg, null, 1));
    for (let i = 0; i < 300; i++) {
      fs.writeFileSync(path.join(dir, 'config.json'), mutate(text, r));
      onlyOurErrors(() => void readCheckpoint(dir), `config text mutation ${i}`);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
