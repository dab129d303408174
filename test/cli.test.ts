/**
 * The `resnet` CLI, run as a child process on the compiled dist/src/cli/main.js: help and version,
 * list, summary (against torchsummary's real output), run (against PyTorch's logits), and the
 * error contract: one `resnet: error:` line, no stack, exit 2 for usage errors and 1 for bad
 * files, and no output file after a failed run.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createModel, manualSeed, noGrad, randn, readNpy, readSafetensors, serializeSafetensors, tensor, tensorToRaw, writeNpy, type RawTensor } from '../src/index.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const CLI = path.join(ROOT, 'dist', 'src', 'cli', 'main.js');
const GOLDEN = path.join(ROOT, 'test', 'fixtures', 'golden');

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

function resnet(...args: string[]): Result {
  const r = spawnSync(process.execPath, [CLI, ...args], { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
  if (r.error) throw r.error;
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

function ok(r: Result): string {
  assert.equal(r.code, 0, `expected success, got exit ${r.code}; stderr:\n${r.stderr}`);
  assert.equal(r.stderr, '');
  return r.stdout;
}

/** A failure the user caused: exit `code`, exactly one `resnet: error:` line, no stack trace. */
function fails(r: Result, code: 1 | 2, pattern?: RegExp): string {
  const where = `stderr:\n${r.stderr}`;
  assert.equal(r.code, code, `expected exit ${code}, got ${r.code}; ${where}`);
  assert.equal(r.stdout, '', 'nothing on stdout');
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  assert.equal(lines.filter((l) => l.startsWith('resnet: error:')).length, 1, where);
  assert.ok(lines[0]!.startsWith('resnet: error: '), where);
  assert.ok(!/internal error|^\s+at /m.test(r.stderr), `no stack trace; ${where}`);
  // Usage errors add one hint line; other errors are the single line.
  if (code === 2) {
    assert.equal(lines.length, 2, where);
    assert.match(lines[1]!, /^run 'resnet( \w+)? --help' for usage$/);
  } else {
    assert.equal(lines.length, 1, where);
  }
  if (pattern) assert.match(lines[0]!, pattern);
  return lines[0]!;
}

const COMMAND_OPTIONS: Record<string, string[]> = {
  list: ['--json'],
  summary: ['--input', '--tree', '--depth', '--explain', '--num-classes', '--in-channels', '--shortcut'],
  run: ['--arch', '--weights', '--input', '--output', '--num-classes', '--in-channels', '--shortcut'],
  help: [],
};

describe('resnet help and version', () => {
  test('top-level usage lists every command (no args, --help, -h, help)', () => {
    for (const args of [[], ['--help'], ['-h'], ['help']]) {
      const out = ok(resnet(...args));
      assert.match(out, /^usage: resnet <command>/);
      for (const cmd of Object.keys(COMMAND_OPTIONS)) assert.match(out, new RegExp(`^  ${cmd} `, 'm'), `${args.join(' ')}: ${cmd}`);
    }
  });

  test('<cmd> --help shows usage, every option, defaults and an example', () => {
    for (const [cmd, opts] of Object.entries(COMMAND_OPTIONS)) {
      for (const args of [[cmd, '--help'], [cmd, '-h'], ['help', cmd]]) {
        const out = ok(resnet(...args));
        assert.match(out, new RegExp(`^usage: resnet ${cmd}`), args.join(' '));
        for (const o of [...opts, '--help']) assert.ok(out.includes(o), `${args.join(' ')} mentions ${o}`);
        assert.match(out, /^examples?:\n  resnet /m);
      }
    }
    assert.match(ok(resnet('summary', '--help')), /--input C,H,W .*\(default: /);
  });

  test('--help wins over other mistakes on the same line', () => {
    assert.match(ok(resnet('run', '--bogus', '--help')), /^usage: resnet run/);
  });

  test('--version prints the package version', () => {
    const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string };
    assert.equal(ok(resnet('--version')), `${pkg.version}\n`);
  });
});

describe('resnet list', () => {
  test('table: every architecture with family, parameters, mult-adds and input', () => {
    const out = ok(resnet('list'));
    assert.match(out, /^resnet50\s+resnet\s+25,557,032\s+4\.09\s+3x224x224$/m);
    assert.match(out, /^resnet18\s+resnet\s+11,689,512\s+1\.81\s+3x224x224$/m);
    assert.match(out, /^resnet20\s+cifar_resnet\s+269,722\s+\S+\s+3x32x32$/m);
    const lines = out.trimEnd().split('\n');
    assert.equal(lines.length, 1 + 25, 'header + one row per architecture');
    // Aligned: the params column ends at the same position on every line.
    const ends = new Set(lines.slice(1).map((l) => l.search(/\d(?=\s+\d+\.\d\d\s)/)));
    assert.equal(ends.size, 1);
  });

  test('--json: an array of objects', () => {
    const entries = JSON.parse(ok(resnet('list', '--json'))) as { name: string; family: string; params: number; multAdds: number; defaultInput: number[] }[];
    assert.equal(entries.length, 25);
    const r50 = entries.find((e) => e.name === 'resnet50')!;
    assert.equal(r50.family, 'resnet');
    assert.equal(r50.params, 25_557_032);
    assert.equal((r50.multAdds / 1e9).toFixed(2), '4.09');
    assert.deepEqual(r50.defaultInput, [3, 224, 224]);
  });
});

describe('resnet summary', () => {
  test('resnet18 prints exactly torchsummary 1.5.1 output', () => {
    const golden = fs.readFileSync(path.join(GOLDEN, 'summary', 'resnet18_3x224x224.txt'), 'utf8');
    assert.equal(ok(resnet('summary', 'resnet18')), golden);
    assert.equal(ok(resnet('summary', 'resnet18', '--input', '3,224,224')), golden);
  });

  test('--tree: resnet50 totals 4.09 G mult-adds; --depth and --explain', () => {
    const out = ok(resnet('summary', 'resnet50', '--tree'));
    assert.ok(out.includes('Total mult-adds (G): 4.09'));
    assert.ok(out.includes('Total params: 25,557,032'));
    const shallow = ok(resnet('summary', 'resnet50', '--tree', '--depth', '1'));
    assert.ok(!shallow.includes('Bottleneck'));
    assert.ok(ok(resnet('summary', 'resnet18', '--tree', '--depth', '1', '--explain')).includes('↳ params 64 × 3 × 7 × 7 = 9,408'));
  });

  test('resnet152 is built from shapes only, so it is quick', () => {
    const t0 = Date.now();
    assert.ok(ok(resnet('summary', 'resnet152')).includes('Total params: 60,192,808'));
    assert.ok(Date.now() - t0 < 5000);
  });

  test('--in-channels 1 changes the default input to 1,H,W', () => {
    const out = ok(resnet('summary', 'resnet20', '--in-channels', '1'));
    assert.match(out, /^\s+Conv2d-1\s+\[-1, 16, 32, 32\]\s+144$/m);
    assert.match(out, /^Input size \(MB\): 0\.00$/m);
    assert.ok(ok(resnet('summary', 'resnet20', '--in-channels', '1', '--input', '1,28,28', '--num-classes', '7')).includes('[-1, 7]'));
  });

  test('--shortcut changes the network', () => {
    const a = ok(resnet('summary', 'resnet20', '--tree'));
    const b = ok(resnet('summary', 'resnet20', '--tree', '--shortcut', 'B'));
    assert.ok(a.includes('Total params: 269,722'));
    assert.ok(!b.includes('Total params: 269,722'));
  });

  test('usage errors: one line, exit 2', () => {
    fails(resnet('summary', 'resnet9'), 2, /unknown architecture "resnet9"; known: .*resnet18.*resnet110/);
    fails(resnet('summary', 'resnet18', '--input', '3,224'), 2, /--input must be C,H,W.*"3,224"/);
    fails(resnet('summary', 'resnet18', '--input', '3,x,224'), 2, /--input must be C,H,W.*"3,x,224"/);
    fails(resnet('summary', 'resnet18', '--input', '0,224,224'), 2, /--input must be C,H,W.*"0,224,224"/);
    fails(resnet('summary', 'resnet18', '--input', '1,224,224'), 2, /1 channel.*takes 3.*--in-channels 1/);
    fails(resnet('summary', 'resnet20', '--in-channels', '1', '--input', '3,32,32'), 2, /3 channel.*takes 1/);
    fails(resnet('summary', 'resnet18', '--bogus'), 2, /unknown option --bogus/);
    fails(resnet('summary', 'resnet18', '--input'), 2, /--input needs a value/);
    fails(resnet('summary', 'resnet18', '--tree=yes'), 2, /--tree does not take a value/);
    fails(resnet('summary', 'resnet18', '--depth', '2'), 2, /--tree/);
    fails(resnet('summary', 'resnet18', '--tree', '--depth', '-1'), 2, /--depth needs a value \(--depth N\); for a value that starts with "-", write --depth=VALUE/);
    fails(resnet('summary', 'resnet18', '--tree', '--depth=-1'), 2, /--depth must be/);
    fails(resnet('summary', 'resnet18', '--num-classes', 'ten'), 2, /--num-classes must be a positive integer/);
    fails(resnet('summary', 'resnet18', '--shortcut', 'D'), 2, /--shortcut must be A, B or C/);
    fails(resnet('summary'), 2, /needs an argument/);
    fails(resnet('summary', 'resnet18', 'resnet34'), 2, /unexpected argument "resnet34"/);
    fails(resnet('frobnicate'), 2, /unknown command "frobnicate".*summary/);
    fails(resnet('--frobnicate'), 2, /unknown option "--frobnicate"/);
    fails(resnet('list', '--tree'), 2, /unknown option --tree/);
  });
});

// ---------------------------------------------------------------------------------------------
// run
// ---------------------------------------------------------------------------------------------

/** The safetensors bytes with its JSON header rewritten by `edit` (data section unchanged). */
function rewriteHeader(bytes: Uint8Array, edit: (h: Record<string, { dtype: string; shape: number[]; data_offsets: number[] }>) => void): Uint8Array {
  const n = Number(new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true));
  const header = JSON.parse(Buffer.from(bytes.subarray(8, 8 + n)).toString('utf8')) as Parameters<typeof edit>[0];
  edit(header);
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - ((8 + json.length) % 8)) % 8);
  const prefix = new Uint8Array(8);
  new DataView(prefix.buffer).setBigUint64(0, BigInt(json.length), true);
  return Buffer.concat([prefix, Buffer.from(json, 'utf8'), bytes.subarray(8 + n)]);
}

function f32(shape: number[], seed: number): RawTensor {
  manualSeed(seed);
  return tensorToRaw(randn(shape));
}

describe('resnet run', () => {
  let dir: string;
  let good: string;
  let goodBytes: Uint8Array;
  let goodInput: string;
  let expected: Float32Array;
  let outputs = 0;
  /** A fresh output path in the temp dir (so "not created" is meaningful for every case). */
  const out = (): string => path.join(dir, `y${outputs++}.npy`);
  const write = (name: string, bytes: Uint8Array): string => {
    const p = path.join(dir, name);
    fs.writeFileSync(p, bytes);
    return p;
  };

  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'resnet-cli-'));
    // A 1-channel, 10-class CIFAR ResNet-20 (shortcut A), like the golden resnet20_a case.
    manualSeed(7);
    const model = createModel('resnet20', { inChannels: 1, numClasses: 10 });
    goodBytes = serializeSafetensors([...model.stateDict()].map(([k, t]) => [k, tensorToRaw(t)] as [string, RawTensor]));
    good = write('good.safetensors', goodBytes);
    const x = f32([2, 1, 28, 28], 11);
    goodInput = path.join(dir, 'x.npy');
    writeNpy(goodInput, x);
    model.eval();
    expected = noGrad(() => model.call(tensor(x.data as Float32Array, x.shape))).values;
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  const run = (o: { arch?: string; weights?: string; input?: string; output: string; extra?: string[] }): Result => {
    const args = ['run'];
    if (o.arch !== undefined) args.push('--arch', o.arch);
    if (o.weights !== undefined) args.push('--weights', o.weights);
    if (o.input !== undefined) args.push('--input', o.input);
    args.push('--output', o.output, ...(o.extra ?? []));
    return resnet(...args);
  };

  test('classes, input channels and shortcut inferred from the weights; logits match the library', () => {
    const y = out();
    const stdout = ok(run({ arch: 'resnet20', weights: good, input: goodInput, output: y }));
    assert.match(stdout, /logits \[2, 10\]/);
    const logits = readNpy(y);
    assert.equal(logits.dtype, 'F32');
    assert.deepEqual(logits.shape, [2, 10]);
    assert.deepEqual([...logits.data], [...expected]);
  });

  test('golden: resnet20_a (1 channel, 10 classes, option A) reproduces PyTorch logits', (t) => {
    const weights = path.join(GOLDEN, 'resnet20_a.weights.safetensors');
    const io = path.join(GOLDEN, 'resnet20_a.io.safetensors');
    if (!fs.existsSync(weights) || !fs.existsSync(io)) {
      t.skip('golden fixtures not generated (npm run golden)');
      return;
    }
    const cases = JSON.parse(fs.readFileSync(path.join(GOLDEN, 'cases.json'), 'utf8')) as { name: string; depth: number; input: number[]; mode: string; options: { numClasses: number; inChannels: number; shortcut: string } }[];
    const c = cases.find((k) => k.name === 'resnet20_a')!;
    assert.equal(c.depth, 20);
    assert.equal(c.mode, 'eval');
    const { tensors } = readSafetensors(io);
    const input = tensors.get('input')!;
    const want = tensors.get('logits')!;
    assert.deepEqual(input.shape, c.input);
    const x = path.join(dir, 'golden_x.npy');
    writeNpy(x, input);
    const y = out();
    ok(run({ arch: 'resnet20', weights, input: x, output: y }));
    const got = readNpy(y);
    assert.deepEqual(got.shape, [c.input[0], c.options.numClasses]);
    const scale = Math.max(...[...want.data].map((v) => Math.abs(Number(v))));
    const maxErr = Math.max(...[...got.data].map((v, i) => Math.abs(Number(v) - Number(want.data[i]))));
    assert.ok(maxErr <= 1e-4 * scale, `max |error| ${maxErr} > 1e-4 × ${scale}`);
  });

  test('usage errors (exit 2) create no output', () => {
    const cases: [Parameters<typeof run>[0], RegExp][] = [
      [{ arch: 'resnet20', input: goodInput, output: out() }, /needs --weights/],
      [{ weights: good, input: goodInput, output: out() }, /needs --arch/],
      [{ arch: 'resnet20', weights: good, output: out() }, /needs --input/],
      [{ arch: 'resnet9', weights: good, input: goodInput, output: out() }, /unknown architecture "resnet9"; known: /],
      [{ arch: 'resnet20', weights: good, input: goodInput, output: out(), extra: ['--num-classes', '0'] }, /--num-classes/],
      [{ arch: 'resnet20', weights: good, input: goodInput, output: out(), extra: ['--bogus'] }, /unknown option --bogus/],
      [{ arch: 'resnet20', weights: good, input: goodInput, output: out(), extra: ['--weights'] }, /--weights needs a value/],
    ];
    for (const [o, re] of cases) {
      fails(run(o), 2, re);
      assert.ok(!fs.existsSync(o.output), `${o.output} must not exist`);
    }
    fails(resnet('run', '--arch', 'resnet20', '--weights', good, '--input', goodInput), 2, /needs --output/);
  });

  test('bad weight files (exit 1) name the file and create no output', () => {
    const dv = (b: Uint8Array) => new DataView(b.buffer, b.byteOffset, b.byteLength);
    const headerLen = Number(dv(goodBytes).getBigUint64(0, true));
    const dataLen = goodBytes.length - 8 - headerLen;
    const files: [string, RegExp][] = [
      [path.join(dir, 'missing.safetensors'), /file not found: .*missing\.safetensors/],
      [write('empty.safetensors', new Uint8Array(0)), /empty\.safetensors: file is empty/],
      [write('short.safetensors', goodBytes.subarray(0, 5)), /short\.safetensors: .*too short/],
      [write('truncated_header.safetensors', goodBytes.subarray(0, 8 + headerLen - 10)), /truncated_header\.safetensors: header length/],
      [write('truncated.safetensors', goodBytes.subarray(0, goodBytes.length - 1000)), /truncated\.safetensors: .*exceed the data section/],
      [
        write('offsets.safetensors', rewriteHeader(goodBytes, (h) => (h['fc.bias']!.data_offsets = [dataLen, dataLen + 40]))),
        /offsets\.safetensors: tensor "fc\.bias" data_offsets \[\d+, \d+\] exceed the data section/,
      ],
      [write('dtype.safetensors', rewriteHeader(goodBytes, (h) => (h['fc.bias']!.dtype = 'I8'))), /dtype\.safetensors: tensor "fc\.bias" has unsupported dtype "I8"/],
      [write('json.safetensors', rewriteHeader(goodBytes, () => {}).map((b, i) => (i === 8 ? 0x5b : b))), /json\.safetensors: header is not valid JSON/],
      [write('notensors.safetensors', serializeSafetensors([])), /holds no tensors/],
    ];
    for (const [weights, re] of files) {
      const y = out();
      fails(run({ arch: 'resnet20', weights, input: goodInput, output: y }), 1, re);
      assert.ok(!fs.existsSync(y), `${weights}: ${y} must not exist`);
    }
  });

  test('weights of another architecture: the message lists the keys', () => {
    let y = out();
    fails(run({ arch: 'resnet32', weights: good, input: goodInput, output: y }), 1, /good\.safetensors does not fit resnet32: .*missing key\(s\): layer1\.3\.conv1\.weight/);
    assert.ok(!fs.existsSync(y));
    y = out();
    fails(run({ arch: 'resnet18', weights: good, input: goodInput, output: y }), 1, /does not fit resnet18: .*conv1\.weight: checkpoint \[16, 1, 3, 3\] vs model \[64, 1, 7, 7\]/);
    assert.ok(!fs.existsSync(y));
    y = out();
    fails(run({ arch: 'resnet20', weights: good, input: goodInput, output: y, extra: ['--num-classes', '100'] }), 1, /fc\.weight: checkpoint \[10, 64\] vs model \[100, 64\]/);
    assert.ok(!fs.existsSync(y));
  });

  test('bad inputs (exit 1) name the file and shape and create no output', () => {
    const f64: RawTensor = { dtype: 'F64', shape: [2, 1, 28, 28], data: new Float64Array(2 * 28 * 28) };
    const inputs: [string, RegExp][] = [
      [path.join(dir, 'nope.npy'), /file not found: .*nope\.npy/],
      [(writeNpy(path.join(dir, 'f64.npy'), f64), path.join(dir, 'f64.npy')), /f64\.npy: expected a float32 array, got F64/],
      [(writeNpy(path.join(dir, 'rank3.npy'), f32([1, 28, 28], 1)), path.join(dir, 'rank3.npy')), /rank3\.npy: expected a 4-D .* 1 channel.*got shape \[1, 28, 28\]/],
      [(writeNpy(path.join(dir, 'rank2.npy'), f32([28, 28], 1)), path.join(dir, 'rank2.npy')), /rank2\.npy: expected a 4-D .*got shape \[28, 28\]/],
      [(writeNpy(path.join(dir, 'rgb.npy'), f32([2, 3, 28, 28], 1)), path.join(dir, 'rgb.npy')), /rgb\.npy: shape \[2, 3, 28, 28\] has 3 channel\(s\), but the model takes 1/],
      [write('garbage.npy', new TextEncoder().encode('not a numpy file at all')), /garbage\.npy: not a \.npy file/],
    ];
    for (const [input, re] of inputs) {
      const y = out();
      fails(run({ arch: 'resnet20', weights: good, input, output: y }), 1, re);
      assert.ok(!fs.existsSync(y), `${input}: ${y} must not exist`);
    }
  });

  test('a failed run leaves an existing output file untouched; unwritable outputs fail early', () => {
    const y = write('keep.npy', new TextEncoder().encode('old'));
    fails(run({ arch: 'resnet20', weights: path.join(dir, 'missing.safetensors'), input: goodInput, output: y }), 1);
    assert.equal(fs.readFileSync(y, 'utf8'), 'old');
    fails(run({ arch: 'resnet20', weights: good, input: goodInput, output: path.join(dir, 'no', 'such', 'dir', 'y.npy') }), 1, /does not exist/);
    fails(run({ arch: 'resnet20', weights: good, input: goodInput, output: dir }), 1, /is a directory/);
    assert.deepEqual(fs.readdirSync(dir).filter((f) => f.includes('.tmp-')), [], 'no temp files left behind');
  });
});

test('the resnet bin is executable and runs by itself (npx resnet executes it directly)', () => {
  assert.ok((fs.statSync(CLI).mode & 0o111) !== 0, `${CLI} is not executable: the build must chmod it (scripts/bin-exec.mjs)`);
  const r = spawnSync(CLI, ['--version'], { cwd: ROOT, encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /\d+\.\d+\.\d+/);
});
