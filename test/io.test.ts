/**
 * Tests for the binary tensor formats: src/io/raw.ts (dtype helpers, half floats),
 * src/io/safetensors.ts and src/io/npy.ts. Reference .npy bytes below were produced by np.save
 * (numpy 2.4) so the writer is checked byte for byte, not just against itself.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { FormatError } from '../src/errors.js';
import {
  type RawData,
  type RawTensor,
  bf16BitsToF32,
  bf16ToF32Array,
  dtypeSize,
  f16BitsToF32,
  f16ToF32Array,
  numel,
  toFloat32,
} from '../src/io/raw.js';
import { parseSafetensors, readSafetensors, serializeSafetensors, writeSafetensors } from '../src/io/safetensors.js';
import { parseNpy, readNpy, serializeNpy, writeNpy } from '../src/io/npy.js';

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const enc = new TextEncoder();

function f32(shape: number[], values: number[]): RawTensor {
  return { dtype: 'F32', shape, data: Float32Array.from(values) };
}

/** A safetensors file from raw header text and data bytes; `lenPrefix` overrides the u64 length. */
function stFile(header: string | object, data: ArrayLike<number> = [], lenPrefix?: bigint): Uint8Array {
  const json = enc.encode(typeof header === 'string' ? header : JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, lenPrefix ?? BigInt(json.length), true);
  out.set(json, 8);
  out.set(Array.from(data), 8 + json.length);
  return out;
}

/** Bytes of a little-endian Float32Array / Uint16Array, for hand-built files. */
function leBytes(a: Float32Array | Uint16Array | Int32Array): number[] {
  return Array.from(new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
}

/** Elements of a non-BigInt RawData as plain numbers. */
function nums(d: RawData): number[] {
  assert.ok(!(d instanceof BigInt64Array));
  return Array.from(d as ArrayLike<number>);
}

/** Assert that `fn` throws a FormatError (not any other error) whose one-line message matches. */
function throwsFormat(fn: () => unknown, re: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof FormatError, `expected FormatError, got ${String(e)}`);
    assert.match(e.message, re);
    assert.ok(!e.message.includes('\n'), `message should be one line: ${e.message}`);
    return true;
  });
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

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'resnet-io-test-'));
}

const b64 = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'base64'));

/** np.save outputs (numpy 2.4.6). */
const NUMPY = {
  // np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
  f32_23: 'k05VTVBZAQB2AHsnZGVzY3InOiAnPGY0JywgJ2ZvcnRyYW5fb3JkZXInOiBGYWxzZSwgJ3NoYXBlJzogKDIsIDMpLCB9ICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgIAoAACDAAADAvwAAAL8AAAA/AADAPwAAIEA=',
  // np.array([-1, 2**40, 7], np.int64)
  i64_3: 'k05VTVBZAQB2AHsnZGVzY3InOiAnPGk4JywgJ2ZvcnRyYW5fb3JkZXInOiBGYWxzZSwgJ3NoYXBlJzogKDMsKSwgfSAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgIAr//////////wAAAAAAAQAABwAAAAAAAAA=',
  // np.array(2.5)
  f8_scalar: 'k05VTVBZAQB2AHsnZGVzY3InOiAnPGY4JywgJ2ZvcnRyYW5fb3JkZXInOiBGYWxzZSwgJ3NoYXBlJzogKCksIH0gICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgIAoAAAAAAAAEQA==',
  // np.zeros((0,), np.uint8)
  u1_0: 'k05VTVBZAQB2AHsnZGVzY3InOiAnfHUxJywgJ2ZvcnRyYW5fb3JkZXInOiBGYWxzZSwgJ3NoYXBlJzogKDAsKSwgfSAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgIAo=',
  // np.array([True, False])
  b1_2: 'k05VTVBZAQB2AHsnZGVzY3InOiAnfGIxJywgJ2ZvcnRyYW5fb3JkZXInOiBGYWxzZSwgJ3NoYXBlJzogKDIsKSwgfSAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgIAoBAA==',
  // np.arange(24, dtype=np.int32).reshape(1, 2, 3, 4)
  i4_1234: 'k05VTVBZAQB2AHsnZGVzY3InOiAnPGk0JywgJ2ZvcnRyYW5fb3JkZXInOiBGYWxzZSwgJ3NoYXBlJzogKDEsIDIsIDMsIDQpLCB9ICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgIAoAAAAAAQAAAAIAAAADAAAABAAAAAUAAAAGAAAABwAAAAgAAAAJAAAACgAAAAsAAAAMAAAADQAAAA4AAAAPAAAAEAAAABEAAAASAAAAEwAAABQAAAAVAAAAFgAAABcAAAA=',
  // np.array([[1.0, -2.5, 65504], [2**-24, inf, nan]], np.float16)
  f2_23: 'k05VTVBZAQB2AHsnZGVzY3InOiAnPGYyJywgJ2ZvcnRyYW5fb3JkZXInOiBGYWxzZSwgJ3NoYXBlJzogKDIsIDMpLCB9ICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgIAoAPADB/3sBAAB8AH4=',
  // np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))
  fortran: 'k05VTVBZAQB2AHsnZGVzY3InOiAnPGY0JywgJ2ZvcnRyYW5fb3JkZXInOiBUcnVlLCAnc2hhcGUnOiAoMiwgMyksIH0gICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgIAoAAAAAAABAQAAAgD8AAIBAAAAAQAAAoEA=',
  // np.arange(3, dtype='>f4')
  bigend: 'k05VTVBZAQB2AHsnZGVzY3InOiAnPmY0JywgJ2ZvcnRyYW5fb3JkZXInOiBGYWxzZSwgJ3NoYXBlJzogKDMsKSwgfSAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgIAoAAAAAP4AAAEAAAAA=',
  // np.lib.format.write_array(f, np.arange(3, dtype=np.float32), version=(2, 0)) and (3, 0)
  v2: 'k05VTVBZAgB0AAAAeydkZXNjcic6ICc8ZjQnLCAnZm9ydHJhbl9vcmRlcic6IEZhbHNlLCAnc2hhcGUnOiAoMywpLCB9ICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgIAoAAAAAAACAPwAAAEA=',
  v3: 'k05VTVBZAwB0AAAAeydkZXNjcic6ICc8ZjQnLCAnZm9ydHJhbl9vcmRlcic6IEZhbHNlLCAnc2hhcGUnOiAoMywpLCB9ICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgIAoAAAAAAACAPwAAAEA=',
};

/** A .npy v1.0 file with the given header text, padded numpy-style to a multiple of `align`. */
function npyFile(header: string, data: ArrayLike<number> = [], align = 64, withNewline = true): Uint8Array {
  let h = header;
  if (withNewline) {
    const pad = (align - ((10 + h.length + 1) % align)) % align;
    h = h + ' '.repeat(pad) + '\n';
  }
  const out = new Uint8Array(10 + h.length + data.length);
  out.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0], 0);
  new DataView(out.buffer).setUint16(8, h.length, true);
  for (let i = 0; i < h.length; i++) out[10 + i] = h.charCodeAt(i);
  out.set(Array.from(data), 10 + h.length);
  return out;
}

// ---------------------------------------------------------------------------------------------
// raw.ts
// ---------------------------------------------------------------------------------------------

test('dtypeSize and numel', () => {
  assert.equal(dtypeSize('F32'), 4);
  assert.equal(dtypeSize('F16'), 2);
  assert.equal(dtypeSize('BF16'), 2);
  assert.equal(dtypeSize('F64'), 8);
  assert.equal(dtypeSize('I64'), 8);
  assert.equal(dtypeSize('I32'), 4);
  assert.equal(dtypeSize('U8'), 1);
  assert.equal(dtypeSize('BOOL'), 1);
  assert.equal(numel([]), 1);
  assert.equal(numel([0]), 0);
  assert.equal(numel([2, 0, 3]), 0);
  assert.equal(numel([2, 3, 4]), 24);
});

test('f16 -> f32 conversion of known values', () => {
  const cases: [number, number][] = [
    [0x3c00, 1.0],
    [0xc100, -2.5],
    [0x7bff, 65504],
    [0x0001, 2 ** -24], // smallest subnormal
    [0x03ff, 1023 * 2 ** -24], // largest subnormal
    [0x0400, 2 ** -14], // smallest normal
    [0x7c00, Infinity],
    [0xfc00, -Infinity],
    [0x0000, 0],
    [0x3555, 0.333251953125],
  ];
  for (const [bits, want] of cases) assert.equal(f16BitsToF32(bits), want, `0x${bits.toString(16)}`);
  assert.ok(Object.is(f16BitsToF32(0x8000), -0));
  assert.ok(Number.isNaN(f16BitsToF32(0x7e00)));
  assert.ok(Number.isNaN(f16BitsToF32(0xfc01)));
  const arr = f16ToF32Array(Uint16Array.from([0x3c00, 0xc100, 0x7bff, 0x0001, 0x7c00, 0x7e00, 0x8000]));
  assert.deepEqual(Array.from(arr.subarray(0, 5)), [1, -2.5, 65504, 2 ** -24, Infinity]);
  assert.ok(Number.isNaN(arr[5]!));
  assert.ok(Object.is(arr[6], -0));
});

test('bf16 -> f32 conversion of known values', () => {
  const cases: [number, number][] = [
    [0x3f80, 1.0],
    [0xc020, -2.5],
    [0x4780, 65536], // bf16 cannot hold 65504; nearest values are 65280 and 65536
    [0x477f, 65280],
    [0x0001, 2 ** -133], // smallest subnormal
    [0x0080, 2 ** -126], // smallest normal
    [0x7f7f, 3.3895313892515355e38], // largest finite
    [0x7f80, Infinity],
    [0xff80, -Infinity],
  ];
  for (const [bits, want] of cases) assert.equal(bf16BitsToF32(bits), want, `0x${bits.toString(16)}`);
  assert.ok(Object.is(bf16BitsToF32(0x8000), -0));
  assert.ok(Number.isNaN(bf16BitsToF32(0x7fc0)));
  const arr = bf16ToF32Array(Uint16Array.from([0x3f80, 0xc020, 0x0001, 0xff80, 0x7fc0]));
  assert.deepEqual(Array.from(arr.subarray(0, 4)), [1, -2.5, 2 ** -133, -Infinity]);
  assert.ok(Number.isNaN(arr[4]!));
});

test('toFloat32 converts every dtype and always copies', () => {
  const src = Float32Array.from([1, 2]);
  const out = toFloat32({ dtype: 'F32', shape: [2], data: src });
  assert.deepEqual(Array.from(out), [1, 2]);
  out[0] = 9;
  assert.equal(src[0], 1, 'must not alias the input');
  assert.deepEqual(Array.from(toFloat32({ dtype: 'F64', shape: [2], data: Float64Array.from([0.5, -3]) })), [0.5, -3]);
  assert.deepEqual(Array.from(toFloat32({ dtype: 'I64', shape: [2], data: BigInt64Array.from([-7n, 1n << 40n]) })), [-7, 2 ** 40]);
  assert.deepEqual(Array.from(toFloat32({ dtype: 'I32', shape: [2], data: Int32Array.from([-1, 5]) })), [-1, 5]);
  assert.deepEqual(Array.from(toFloat32({ dtype: 'U8', shape: [2], data: Uint8Array.from([0, 255]) })), [0, 255]);
  assert.deepEqual(Array.from(toFloat32({ dtype: 'BOOL', shape: [2], data: Uint8Array.from([1, 0]) })), [1, 0]);
});

// ---------------------------------------------------------------------------------------------
// safetensors: round trips and layout
// ---------------------------------------------------------------------------------------------

test('safetensors round trip of every writable dtype, empty and scalar tensors, metadata', () => {
  const tensors = new Map<string, RawTensor>([
    ['fc.weight', f32([2, 3], [1, -2, 3.5, 0, 1e-30, -1e30])],
    ['steps', { dtype: 'I64', shape: [3], data: BigInt64Array.from([-1n, 0n, (1n << 62n) + 5n]) }],
    ['empty', f32([0], [])],
    ['empty2d', { dtype: 'I64', shape: [4, 0], data: new BigInt64Array(0) }],
    ['scalar', f32([], [42])],
    ['f64', { dtype: 'F64', shape: [2], data: Float64Array.from([Math.PI, -0]) }],
    ['i32', { dtype: 'I32', shape: [1, 2], data: Int32Array.from([-2147483648, 2147483647]) }],
    ['u8', { dtype: 'U8', shape: [3], data: Uint8Array.from([0, 128, 255]) }],
    ['mask', { dtype: 'BOOL', shape: [2], data: Uint8Array.from([1, 0]) }],
  ]);
  const metadata = { format: 'pt', note: 'héllo "quoted" \u2713' };
  const bytes = serializeSafetensors(tensors, metadata);
  const back = parseSafetensors(bytes);
  assert.deepEqual(back.metadata, metadata);
  assert.deepEqual([...back.tensors.keys()], [...tensors.keys()]);
  for (const [name, t] of tensors) assert.deepEqual(back.tensors.get(name), t, name);
  // Parsed arrays are fresh and aligned, not views into the file buffer.
  assert.notEqual(back.tensors.get('fc.weight')!.data.buffer, bytes.buffer);
});

test('safetensors writer layout: 8-byte aligned, space padded, offsets packed in order', () => {
  const bytes = serializeSafetensors([
    ['a', f32([1], [1])],
    ['b', { dtype: 'U8', shape: [3], data: Uint8Array.from([1, 2, 3]) }],
  ]);
  const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  assert.equal((8 + n) % 8, 0);
  const header = new TextDecoder().decode(bytes.subarray(8, 8 + n));
  assert.equal(
    header.trimEnd(),
    '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[3],"data_offsets":[4,7]}}',
  );
  assert.match(header, /^\{.*\} *$/);
  assert.equal(bytes.length, 8 + n + 7);
  assert.deepEqual(Array.from(bytes.subarray(8 + n)), [0, 0, 0x80, 0x3f, 1, 2, 3]);
});

test('safetensors keeps header key order, including integer-like names', () => {
  const names = ['10', '2', 'b', '0', 'a'];
  const bytes = serializeSafetensors(names.map((n, i) => [n, f32([1], [i])] as [string, RawTensor]));
  const back = parseSafetensors(bytes);
  assert.deepEqual([...back.tensors.keys()], names);
  assert.deepEqual(
    names.map((n) => back.tensors.get(n)!.data[0]),
    [0, 1, 2, 3, 4],
  );
  // A hand-written header in a different order than the data: order still follows the header.
  const file = stFile(
    '{"z":{"dtype":"U8","shape":[1],"data_offsets":[1,2]},"__metadata__":{"k":"v"},"1":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}',
    [7, 9],
  );
  const p = parseSafetensors(file);
  assert.deepEqual([...p.tensors.keys()], ['z', '1']);
  assert.equal(p.tensors.get('z')!.data[0], 9);
  assert.deepEqual(p.metadata, { k: 'v' });
});

test('safetensors with an unaligned data section and an unaligned input view', () => {
  // Header of odd length, no padding: the data section starts at an odd file offset.
  const values = Float32Array.from([1.5, -2, 3.25]);
  const ints = Int32Array.from([-5, 6]);
  let header = JSON.stringify({
    x: { dtype: 'F32', shape: [3], data_offsets: [0, 12] },
    y: { dtype: 'I32', shape: [2], data_offsets: [12, 20] },
  });
  if ((8 + header.length) % 2 === 0) header += ' ';
  const file = stFile(header, [...leBytes(values), ...leBytes(ints)]);
  assert.equal((8 + header.length) % 2, 1);
  // And the file itself sits at an odd offset inside a larger buffer.
  const big = new Uint8Array(file.length + 3);
  big.set(file, 3);
  const p = parseSafetensors(big.subarray(3));
  assert.deepEqual(nums(p.tensors.get('x')!.data), [1.5, -2, 3.25]);
  assert.deepEqual(nums(p.tensors.get('y')!.data), [-5, 6]);
  assert.equal(p.tensors.get('x')!.data.byteOffset % 4, 0);
});

test('safetensors F16 and BF16 are widened to F32 with sourceDType recorded', () => {
  const h = Uint16Array.from([0x3c00, 0xc100, 0x7bff, 0x0001, 0x7c00, 0x7e00]);
  const b = Uint16Array.from([0x3f80, 0xc020, 0x0001, 0x7f80]);
  const file = stFile(
    {
      half: { dtype: 'F16', shape: [2, 3], data_offsets: [0, 12] },
      brain: { dtype: 'BF16', shape: [4], data_offsets: [12, 20] },
    },
    [...leBytes(h), ...leBytes(b)],
  );
  const p = parseSafetensors(file);
  const half = p.tensors.get('half')!;
  assert.equal(half.dtype, 'F32');
  assert.equal(half.sourceDType, 'F16');
  assert.deepEqual(half.shape, [2, 3]);
  assert.ok(half.data instanceof Float32Array);
  assert.deepEqual(nums(half.data).slice(0, 5), [1, -2.5, 65504, 2 ** -24, Infinity]);
  assert.ok(Number.isNaN(half.data[5]));
  const brain = p.tensors.get('brain')!;
  assert.equal(brain.dtype, 'F32');
  assert.equal(brain.sourceDType, 'BF16');
  assert.deepEqual(nums(brain.data), [1, -2.5, 2 ** -133, Infinity]);
  // Plain F32 tensors carry no sourceDType at all (not even `undefined`).
  const plain = parseSafetensors(serializeSafetensors([['w', f32([1], [1])]])).tensors.get('w')!;
  assert.ok(!('sourceDType' in plain));
});

test('safetensors tolerates gaps and trailing bytes in the data section, and an empty header object', () => {
  const p = parseSafetensors(stFile({ a: { dtype: 'U8', shape: [1], data_offsets: [2, 3] } }, [0, 0, 5, 0, 0]));
  assert.equal(p.tensors.get('a')!.data[0], 5);
  const empty = parseSafetensors(stFile('{}'));
  assert.equal(empty.tensors.size, 0);
  assert.deepEqual(empty.metadata, {});
  // Zero-length tensors may share an offset with anything.
  const z = parseSafetensors(
    stFile(
      {
        a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] },
        e: { dtype: 'F32', shape: [0], data_offsets: [2, 2] },
      },
      [0, 0, 0, 0],
    ),
  );
  assert.deepEqual(z.tensors.get('e')!.shape, [0]);
});

// ---------------------------------------------------------------------------------------------
// safetensors: every malformed input is a FormatError with a precise message
// ---------------------------------------------------------------------------------------------

const T = (dtype: unknown, shape: unknown, data_offsets: unknown) => ({ dtype, shape, data_offsets });

test('safetensors: length prefix errors', () => {
  throwsFormat(() => parseSafetensors(new Uint8Array(0)), /^safetensors: file is too short \(0 bytes\)/);
  throwsFormat(() => parseSafetensors(new Uint8Array(7), 'm.st'), /^m\.st: file is too short \(7 bytes\) to hold the 8-byte header length$/);
  throwsFormat(() => parseSafetensors(new Uint8Array(8)), /header length is 0/);
  throwsFormat(() => parseSafetensors(stFile('{}', [], 0n)), /header length is 0/);
  throwsFormat(() => parseSafetensors(stFile('{}', [], 3n)), /header length 3 exceeds the 2 bytes after the length prefix/);
  throwsFormat(() => parseSafetensors(stFile('{}', [], 200_000_000n)), /header length 200000000 exceeds the 100000000-byte \(100 MB\) limit/);
  throwsFormat(() => parseSafetensors(stFile('{}', [], (1n << 64n) - 1n)), /header length 18446744073709551615 exceeds .*100 MB/);
  throwsFormat(() => parseSafetensors(stFile('{}', [], (1n << 53n) + 1n)), /100 MB/);
});

test('safetensors: header text errors', () => {
  const bad = stFile('{"a":1}');
  bad[10] = 0xff; // not UTF-8
  throwsFormat(() => parseSafetensors(bad, 'x.safetensors'), /^x\.safetensors: header is not valid UTF-8$/);
  throwsFormat(() => parseSafetensors(stFile('{"a": ')), /header is not valid JSON \(/);
  throwsFormat(() => parseSafetensors(stFile('{"a":{}} trailing')), /header is not valid JSON/);
  throwsFormat(() => parseSafetensors(stFile('[]')), /header must be a JSON object, got \[\]/);
  throwsFormat(() => parseSafetensors(stFile('null')), /header must be a JSON object, got null/);
  throwsFormat(() => parseSafetensors(stFile('42')), /header must be a JSON object, got 42/);
  throwsFormat(() => parseSafetensors(stFile('"s"')), /header must be a JSON object/);
  const dup = '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}';
  throwsFormat(() => parseSafetensors(stFile(dup, [1])), /duplicate key "a" in header/);
});

test('safetensors: entry errors', () => {
  const p = (h: object, data: number[] = [], src = 'f.st') => () => parseSafetensors(stFile(h, data), src);
  throwsFormat(p({ w: 5 }), /^f\.st: tensor "w" is not an object with dtype, shape and data_offsets \(got 5\)$/);
  throwsFormat(p({ w: null }), /tensor "w" is not an object.*got null/);
  throwsFormat(p({ w: [1] }), /tensor "w" is not an object.*got \[1\]/);
  throwsFormat(p({ w: { shape: [1], data_offsets: [0, 4] } }), /tensor "w" is missing "dtype"/);
  throwsFormat(p({ w: { dtype: 'F32', data_offsets: [0, 4] } }), /tensor "w" is missing "shape"/);
  throwsFormat(p({ w: { dtype: 'F32', shape: [1] } }), /tensor "w" is missing "data_offsets"/);
  throwsFormat(
    p({ w: T('I8', [1], [0, 1]) }, [0]),
    /tensor "w" has unsupported dtype "I8" \(supported: F32, F16, BF16, F64, I64, I32, U8, BOOL\)/,
  );
  throwsFormat(p({ w: T('f32', [1], [0, 4]) }), /unsupported dtype "f32"/);
  throwsFormat(p({ w: T(7, [1], [0, 4]) }), /unsupported dtype 7/);
  throwsFormat(p({ w: T('F32', 'abc', [0, 4]) }), /tensor "w" shape "abc" is not an array of non-negative integers/);
  throwsFormat(p({ w: T('F32', [-1], [0, 4]) }), /shape \[-1\] is not an array of non-negative integers/);
  throwsFormat(p({ w: T('F32', [1.5], [0, 4]) }), /shape \[1\.5\]/);
  throwsFormat(p({ w: T('F32', ['1'], [0, 4]) }), /shape \["1"\]/);
  throwsFormat(p({ w: T('F32', [2 ** 60], [0, 4]) }), /shape \[1152921504606847000\]/);
  throwsFormat(p({ w: T('F32', [1], [0]) }), /tensor "w" data_offsets \[0\] are not two non-negative integers \[begin, end\]/);
  throwsFormat(p({ w: T('F32', [1], [0, 4, 8]) }), /data_offsets \[0,4,8\] are not two/);
  throwsFormat(p({ w: T('F32', [1], [-4, 0]) }), /data_offsets \[-4,0\] are not two/);
  throwsFormat(p({ w: T('F32', [1], [0, 4.5]) }), /data_offsets \[0,4\.5\] are not two/);
  throwsFormat(p({ w: T('F32', [1], '0,4') }), /data_offsets "0,4" are not two/);
  throwsFormat(p({ w: T('F32', [1], [8, 4]) }, new Array(8).fill(0)), /tensor "w" data_offsets \[8, 4\] have begin after end/);
});

test('safetensors: data section errors', () => {
  throwsFormat(
    () => parseSafetensors(stFile({ 'fc.weight': T('F32', [1000], [0, 4000]) }, new Array(3996).fill(0)), 'model.safetensors'),
    /^model\.safetensors: tensor "fc\.weight" data_offsets \[0, 4000\] exceed the data section \(3996 bytes\)$/,
  );
  throwsFormat(
    () => parseSafetensors(stFile({ w: T('F32', [2, 3], [0, 20]) }, new Array(24).fill(0))),
    /tensor "w" has dtype F32 and shape \[2, 3\] \(24 bytes\) but data_offsets \[0, 20\] span 20 bytes/,
  );
  throwsFormat(
    () => parseSafetensors(stFile({ w: T('F32', [], [0, 8]) }, new Array(8).fill(0))),
    /dtype F32 and shape \[\] \(4 bytes\) but data_offsets \[0, 8\] span 8 bytes/,
  );
  throwsFormat(
    () =>
      parseSafetensors(
        stFile({ a: T('F32', [2], [0, 8]), b: T('F32', [2], [4, 12]) }, new Array(12).fill(0)),
      ),
    /tensors "a" \[0, 8\] and "b" \[4, 12\] overlap in the data section/,
  );
  // Overlap is found regardless of header order, and exact duplicates overlap too.
  throwsFormat(
    () =>
      parseSafetensors(
        stFile({ b: T('U8', [4], [4, 8]), c: T('U8', [1], [9, 10]), a: T('U8', [4], [4, 8]) }, new Array(10).fill(0)),
      ),
    /tensors "(a|b)" \[4, 8\] and "(a|b)" \[4, 8\] overlap/,
  );
});

test('safetensors: metadata errors', () => {
  throwsFormat(() => parseSafetensors(stFile({ __metadata__: { a: 1 } })), /"__metadata__" value for "a" must be a string, got 1/);
  throwsFormat(() => parseSafetensors(stFile({ __metadata__: { a: null } })), /value for "a" must be a string, got null/);
  throwsFormat(() => parseSafetensors(stFile({ __metadata__: ['x'] })), /"__metadata__" must be an object of strings, got \["x"\]/);
  throwsFormat(() => parseSafetensors(stFile({ __metadata__: 'x' })), /"__metadata__" must be an object of strings/);
  // A "__proto__" metadata key is plain data, not a prototype change.
  const p = parseSafetensors(stFile('{"__metadata__":{"__proto__":"x","k":"v"}}'));
  assert.equal(Object.getPrototypeOf(p.metadata), Object.prototype);
  assert.deepEqual(Object.keys(p.metadata), ['__proto__', 'k']);
});

test('safetensors: serializer rejects tensors that lie about themselves', () => {
  throwsFormat(
    () => serializeSafetensors([['w', { dtype: 'F32', shape: [2], data: Int32Array.from([1, 2]) }]]),
    /tensor "w": dtype F32 does not match data of type Int32Array/,
  );
  throwsFormat(() => serializeSafetensors([['w', f32([2, 2], [1, 2, 3])]]), /tensor "w": data has 3 elements but shape \[2, 2\] needs 4/);
  throwsFormat(() => serializeSafetensors([['w', { dtype: 'F16', shape: [1], data: Float32Array.from([1]) }]]), /writing F16 is not supported/);
  throwsFormat(() => serializeSafetensors([['w', f32([-1], [])]]), /shape \[-1\] is not an array of non-negative integers/);
  throwsFormat(
    () => serializeSafetensors([['w', { dtype: 'X' as never, shape: [1], data: Float32Array.from([1]) }]]),
    /unknown dtype "X"/,
  );
  throwsFormat(() => serializeSafetensors([['__metadata__', f32([1], [1])]]), /name is reserved for metadata/);
  throwsFormat(() => serializeSafetensors([['w', f32([1], [1])], ['w', f32([1], [1])]]), /tensor "w": duplicate name/);
  throwsFormat(() => serializeSafetensors([], { a: 1 as never }), /metadata value for "a" must be a string, got 1/);
});

test('safetensors files: read/write, atomic write, missing and empty files', () => {
  const dir = tmpDir();
  try {
    const file = path.join(dir, 'model.safetensors');
    const tensors = new Map<string, RawTensor>([['w', f32([2], [1, 2])]]);
    writeSafetensors(file, tensors, { format: 'pt' });
    assert.deepEqual(fs.readdirSync(dir), ['model.safetensors'], 'no temp file left behind');
    const back = readSafetensors(file);
    assert.deepEqual(back.tensors.get('w'), tensors.get('w'));
    assert.deepEqual(back.metadata, { format: 'pt' });
    // Overwrite in place.
    writeSafetensors(file, [['v', f32([1], [3])]]);
    assert.deepEqual([...readSafetensors(file).tensors.keys()], ['v']);
    // A failed serialization leaves the existing file untouched and names the path.
    throwsFormat(() => writeSafetensors(file, [['x', f32([2], [1])]]), /model\.safetensors: tensor "x": data has 1 elements/);
    assert.deepEqual([...readSafetensors(file).tensors.keys()], ['v']);
    assert.deepEqual(fs.readdirSync(dir), ['model.safetensors']);
    // Errors name the file.
    throwsFormat(() => readSafetensors(path.join(dir, 'nope.safetensors')), /^file not found: .*nope\.safetensors$/);
    const empty = path.join(dir, 'empty.safetensors');
    fs.writeFileSync(empty, new Uint8Array(0));
    throwsFormat(() => readSafetensors(empty), /empty\.safetensors: file is empty/);
    const bad = path.join(dir, 'bad.safetensors');
    fs.writeFileSync(bad, stFile({ w: T('F32', [2], [0, 8]) }, [0, 0, 0, 0]));
    throwsFormat(() => readSafetensors(bad), /bad\.safetensors: tensor "w" data_offsets \[0, 8\] exceed the data section \(4 bytes\)/);
    throwsFormat(() => readSafetensors(dir), /is a directory/);
    throwsFormat(() => writeSafetensors(path.join(dir, 'no', 'such', 'dir.st'), []), /dir\.st: cannot write file \(ENOENT\)/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('safetensors fuzz: mutated files parse or throw FormatError, nothing else', { timeout: 30_000 }, () => {
  const base = serializeSafetensors(
    [
      ['conv1.weight', f32([2, 1, 2, 2], [1, 2, 3, 4, 5, 6, 7, 8])],
      ['bn.num_batches_tracked', { dtype: 'I64', shape: [], data: BigInt64Array.from([3n]) }],
      ['fc.bias', f32([3], [0.5, -0.5, 0])],
      ['empty', f32([0], [])],
      ['mask', { dtype: 'BOOL', shape: [2], data: Uint8Array.from([1, 0]) }],
    ],
    { format: 'pt' },
  );
  const headerLen = Number(new DataView(base.buffer).getBigUint64(0, true));
  const interesting = enc.encode('{}[]",:0123456789-.e \\u');
  const rand = rng(0x5eed);
  const int = (n: number) => Math.floor(rand() * n);
  let ok = 0;
  let failed = 0;
  for (let iter = 0; iter < 4000; iter++) {
    let bytes = base.slice();
    const kind = iter % 5;
    if (kind === 0) {
      // Flip a few header bytes to JSON-significant characters.
      for (let k = 0, n = 1 + int(3); k < n; k++) bytes[8 + int(headerLen)] = interesting[int(interesting.length)]!;
    } else if (kind === 1) {
      bytes = bytes.slice(0, int(bytes.length + 1)); // truncate anywhere, including to 0
    } else if (kind === 2) {
      const choices = [0n, 1n, BigInt(int(bytes.length)), BigInt(headerLen + int(17) - 8), BigInt(int(2 ** 32)), (1n << 63n) + 7n, (1n << 64n) - 1n];
      new DataView(bytes.buffer).setBigUint64(0, choices[int(choices.length)]!, true);
    } else if (kind === 3) {
      // Perturb a digit in the header (shapes and offsets).
      const digits: number[] = [];
      for (let i = 8; i < 8 + headerLen; i++) if (bytes[i]! >= 0x30 && bytes[i]! <= 0x39) digits.push(i);
      bytes[digits[int(digits.length)]!] = 0x30 + int(10);
    } else {
      // Random byte anywhere (header, padding or data), sometimes several.
      for (let k = 0, n = 1 + int(4); k < n; k++) bytes[int(bytes.length)] = int(256);
    }
    try {
      parseSafetensors(bytes, 'fuzz');
      ok++;
    } catch (e) {
      assert.ok(e instanceof FormatError, `iteration ${iter}: ${String(e)}`);
      assert.match(e.message, /^fuzz: /);
      assert.ok(!e.message.includes('\n'));
      failed++;
    }
  }
  // The fuzz must exercise both outcomes to mean anything.
  assert.ok(ok > 100, `only ${ok} mutations parsed`);
  assert.ok(failed > 1000, `only ${failed} mutations failed`);
});

// ---------------------------------------------------------------------------------------------
// npy
// ---------------------------------------------------------------------------------------------

test("npy writer reproduces np.save's exact bytes for float32 (2, 3)", () => {
  const header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  // Preamble: 6 magic + 2 version + 2 length = 10 bytes; header padded with spaces to 118 bytes
  // including the final '\n', so the data starts at byte 128 (a multiple of 64).
  const expectedHeader = header + ' '.repeat(118 - header.length - 1) + '\n';
  const values = Float32Array.from([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5]);
  const expected = new Uint8Array(128 + 24);
  expected.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 0x01, 0x00, 118, 0], 0);
  for (let i = 0; i < expectedHeader.length; i++) expected[10 + i] = expectedHeader.charCodeAt(i);
  expected.set(leBytes(values), 128);

  const written = serializeNpy({ dtype: 'F32', shape: [2, 3], data: values });
  assert.deepEqual(written, expected);
  assert.deepEqual(written, b64(NUMPY.f32_23), 'identical to np.save output');
  const back = parseNpy(expected);
  assert.deepEqual(back, { dtype: 'F32', shape: [2, 3], data: values });
});

test('npy writer matches np.save for other dtypes and shapes', () => {
  const cases: [keyof typeof NUMPY, RawTensor][] = [
    ['i64_3', { dtype: 'I64', shape: [3], data: BigInt64Array.from([-1n, 1n << 40n, 7n]) }],
    ['f8_scalar', { dtype: 'F64', shape: [], data: Float64Array.from([2.5]) }],
    ['u1_0', { dtype: 'U8', shape: [0], data: new Uint8Array(0) }],
    ['b1_2', { dtype: 'BOOL', shape: [2], data: Uint8Array.from([1, 0]) }],
    ['i4_1234', { dtype: 'I32', shape: [1, 2, 3, 4], data: Int32Array.from({ length: 24 }, (_, i) => i) }],
  ];
  for (const [name, t] of cases) {
    const ref = b64(NUMPY[name]);
    assert.deepEqual(serializeNpy(t), ref, `${name}: bytes differ from np.save`);
    assert.deepEqual(parseNpy(ref), t, `${name}: parse`);
  }
});

test('npy reads f2 (widened), v2.0 and v3.0 files', () => {
  const half = parseNpy(b64(NUMPY.f2_23));
  assert.equal(half.dtype, 'F32');
  assert.equal(half.sourceDType, 'F16');
  assert.deepEqual(half.shape, [2, 3]);
  assert.deepEqual(nums(half.data).slice(0, 5), [1, -2.5, 65504, 2 ** -24, Infinity]);
  assert.ok(Number.isNaN(half.data[5]));
  for (const v of ['v2', 'v3'] as const) {
    assert.deepEqual(parseNpy(b64(NUMPY[v])), { dtype: 'F32', shape: [3], data: Float32Array.from([0, 1, 2]) }, v);
  }
});

test('npy header parser accepts numpy formatting variants', () => {
  const data = leBytes(Float32Array.from([1, 2, 3]));
  const variants = [
    "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }",
    "{'descr':'<f4','fortran_order':False,'shape':(3,)}",
    '{"descr": "<f4", "fortran_order": False, "shape": (3,)}',
    "{'shape': (3,), 'fortran_order': False, 'descr': '<f4'}",
    "{ 'descr' : '<f4' ,\t'fortran_order' : False , 'shape' : ( 3 , ) , }",
    "{'descr': '<f4', 'fortran_order': False, 'shape': (3L,), }", // Python 2 era numpy
  ];
  for (const h of variants) {
    assert.deepEqual(parseNpy(npyFile(h, data)).data, Float32Array.from([1, 2, 3]), h);
    // Old writers aligned to 16 bytes; some omit the newline entirely.
    assert.deepEqual(parseNpy(npyFile(h, data, 16)).shape, [3], `${h} (16-aligned)`);
    assert.deepEqual(parseNpy(npyFile(h, data, 1, false)).shape, [3], `${h} (no newline)`);
  }
  const scalar = parseNpy(npyFile("{'descr': '<i4', 'fortran_order': False, 'shape': (), }", leBytes(Int32Array.from([-9]))));
  assert.deepEqual(scalar, { dtype: 'I32', shape: [], data: Int32Array.from([-9]) });
  const matrix = parseNpy(npyFile("{'descr': '|u1', 'fortran_order': False, 'shape': (2, 2,), }", [1, 2, 3, 4]));
  assert.deepEqual(matrix.shape, [2, 2]);
  // One-byte types have no byte order, so '<u1' / '>b1' are fine too.
  assert.equal(parseNpy(npyFile("{'descr': '<u1', 'fortran_order': False, 'shape': (1,), }", [7])).dtype, 'U8');
  assert.equal(parseNpy(npyFile("{'descr': '>b1', 'fortran_order': False, 'shape': (1,), }", [1])).dtype, 'BOOL');
  // fortran_order True is rejected even where the layout would coincide (1-D): np.save never writes it.
  throwsFormat(
    () => parseNpy(npyFile("{'descr': '<f4', 'fortran_order': True, 'shape': (1,), }", [0, 0, 0, 0])),
    /Fortran-order arrays are not supported/,
  );
});

test('npy round trips every writable dtype, empty and scalar arrays', () => {
  const cases: RawTensor[] = [
    f32([2, 2], [1, -0, Infinity, 1e-40]),
    f32([0], []),
    f32([3, 0, 2], []),
    f32([], [7]),
    { dtype: 'F64', shape: [1], data: Float64Array.from([Math.E]) },
    { dtype: 'I64', shape: [2], data: BigInt64Array.from([-(1n << 63n), (1n << 63n) - 1n]) },
    { dtype: 'I32', shape: [1], data: Int32Array.from([-3]) },
    { dtype: 'U8', shape: [2], data: Uint8Array.from([0, 255]) },
    { dtype: 'BOOL', shape: [1, 1], data: Uint8Array.from([1]) },
    f32([123456789012, 0], []), // a first axis with many digits: growth padding shrinks
  ];
  for (const t of cases) {
    const bytes = serializeNpy(t);
    const headerLen = new DataView(bytes.buffer).getUint16(8, true);
    assert.equal((10 + headerLen) % 64, 0, 'preamble is 64-byte aligned');
    assert.equal(bytes[10 + headerLen - 1], 0x0a, 'header ends with a newline');
    assert.deepEqual(parseNpy(bytes), t, JSON.stringify(t.shape));
  }
  const one = new TextDecoder().decode(serializeNpy(f32([5], [1, 2, 3, 4, 5])).subarray(10, 80));
  assert.match(one, /'shape': \(5,\), \}/, 'one-element shapes keep the trailing comma');
});

test('npy: every malformed input is a FormatError with a precise message', () => {
  const good = (h: string, data: number[] = [0, 0, 0, 0]) => npyFile(h, data);
  const hdr = (descr: string, fortran: string, shape: string) => `{'descr': ${descr}, 'fortran_order': ${fortran}, 'shape': ${shape}, }`;
  throwsFormat(() => parseNpy(new Uint8Array(5), 'a.npy'), /^a\.npy: file is too short \(5 bytes\) to be a \.npy file$/);
  throwsFormat(() => parseNpy(enc.encode('PK\x03\x04 this is a zip file')), /^npy: not a \.npy file \(missing the \\x93NUMPY magic\)$/);
  const v9 = good(hdr("'<f4'", 'False', '(1,)'));
  v9[6] = 9;
  throwsFormat(() => parseNpy(v9), /unsupported \.npy format version 9\.0 \(supported: 1\.0, 2\.0, 3\.0\)/);
  const v11 = good(hdr("'<f4'", 'False', '(1,)'));
  v11[7] = 1;
  throwsFormat(() => parseNpy(v11), /unsupported \.npy format version 1\.1/);
  const v2short = new Uint8Array([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 2, 0, 0, 0]);
  throwsFormat(() => parseNpy(v2short), /file is too short \(10 bytes\) for a version 2\.0 preamble/);
  const longHeader = good(hdr("'<f4'", 'False', '(1,)'));
  new DataView(longHeader.buffer).setUint16(8, 60000, true);
  throwsFormat(() => parseNpy(longHeader), /header length 60000 exceeds the \d+ bytes after the preamble/);

  throwsFormat(() => parseNpy(b64(NUMPY.fortran), 'w.npy'), /^w\.npy: Fortran-order arrays are not supported; use np\.ascontiguousarray/);
  throwsFormat(() => parseNpy(b64(NUMPY.bigend)), /big-endian dtype '>f4' is not supported/);
  throwsFormat(() => parseNpy(good(hdr("'>i8'", 'False', '(1,)'))), /big-endian dtype '>i8'/);
  throwsFormat(() => parseNpy(good(hdr("'<c8'", 'False', '(1,)'))), /unsupported dtype '<c8' \(supported: '<f4', '<f8', '<f2', '<i8', '<i4', '\|u1', '\|b1'\)/);
  throwsFormat(() => parseNpy(good(hdr("'|O'", 'False', '(1,)'))), /unsupported dtype '\|O'/);
  throwsFormat(() => parseNpy(good(hdr("[('x', '<f4')]", 'False', '(1,)'))), /structured \(record\) dtypes are not supported/);
  throwsFormat(() => parseNpy(good(hdr('4', 'False', '(1,)'))), /'descr' must be a string, got 4/);
  throwsFormat(() => parseNpy(good(hdr("'<f4'", '0', '(1,)'))), /'fortran_order' must be True or False, got 0/);
  throwsFormat(() => parseNpy(good(hdr("'<f4'", 'False', '[1]'))), /'shape' must be a tuple of non-negative integers, got \[1\]/);
  throwsFormat(() => parseNpy(good(hdr("'<f4'", 'False', '(1)'))), /'shape' must be a tuple of non-negative integers, got 1$/);
  throwsFormat(() => parseNpy(good(hdr("'<f4'", 'False', '(-1,)'))), /'shape' must be a tuple.*got \(-1,\)/);
  throwsFormat(() => parseNpy(good(hdr("'<f4'", 'False', "('1',)"))), /'shape' must be a tuple.*got \('1',\)/);
  throwsFormat(() => parseNpy(good(hdr("'<f4'", 'False', '(1.5,)'))), /only integer numbers are allowed/);
  throwsFormat(() => parseNpy(good("{'descr': '<f4', 'shape': (1,), }")), /header is missing the 'fortran_order' key/);
  throwsFormat(() => parseNpy(good("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}")), /unexpected header key 'x'/);
  throwsFormat(() => parseNpy(good("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (1,)}")), /duplicate header key 'descr'/);
  throwsFormat(() => parseNpy(good("{1: '<f4'}")), /header keys must be strings, got a int/);
  throwsFormat(() => parseNpy(good("('descr', '<f4')")), /header must be a dict literal, got a tuple/);
  throwsFormat(() => parseNpy(good("{'descr': '<f4, 'fortran_order': False}")), /malformed header at offset \d+/);
  throwsFormat(() => parseNpy(good("{'descr': '<f4'")), /malformed header at offset \d+ \(end of header\): expected ',' or '}'/);
  throwsFormat(() => parseNpy(good("{'descr': '<f4' 'x'}")), /expected ',' or '}'/);
  throwsFormat(() => parseNpy(good("{'descr' '<f4'}")), /expected ':' after a dict key/);
  throwsFormat(() => parseNpy(good("{'descr': __import__('os')}")), /unexpected name '__import__'/);
  throwsFormat(() => parseNpy(good("{'descr': '<f4'} extra")), /unexpected text after the header dict/);
  // Control characters from the file are escaped so the message stays on one line.
  throwsFormat(() => parseNpy(good(hdr("'<f4\\n'", 'False', '(1,)'))), /unsupported dtype '<f4\\u000a'/);
  throwsFormat(() => parseNpy(good('{' + '('.repeat(100) + '}')), /nested too deeply/);
  throwsFormat(() => parseNpy(good("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", [])), /data is truncated: shape \(1\) needs 4 bytes but only 0 are present/);
  throwsFormat(
    () => parseNpy(good("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", new Array(20).fill(0)), 'x.npy'),
    /^x\.npy: data is truncated: shape \(2, 3\) needs 24 bytes but only 20 are present$/,
  );
  throwsFormat(() => parseNpy(good("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", [0, 0, 0, 0, 1])), /1 unexpected trailing bytes after the data \(shape \(1\) needs 4\)/);
  const v3 = b64(NUMPY.v3);
  v3[15] = 0xff; // inside the header text
  throwsFormat(() => parseNpy(v3), /version 3\.0 header is not valid UTF-8/);
  // Writer-side checks.
  throwsFormat(() => serializeNpy({ dtype: 'BF16', shape: [1], data: Float32Array.from([1]) }), /^npy: writing BF16 is not supported/);
  throwsFormat(() => serializeNpy({ dtype: 'I64', shape: [1], data: Float64Array.from([1]) }), /dtype I64 does not match data of type Float64Array/);
});

test('npy files: read/write, atomic write, missing file', () => {
  const dir = tmpDir();
  try {
    const file = path.join(dir, 'x.npy');
    const t = f32([2, 3], [1, 2, 3, 4, 5, 6]);
    writeNpy(file, t);
    assert.deepEqual(fs.readdirSync(dir), ['x.npy']);
    assert.deepEqual(readNpy(file), t);
    throwsFormat(() => writeNpy(file, f32([2], [1])), /x\.npy: data has 1 elements but shape \[2\] needs 2/);
    assert.deepEqual(readNpy(file), t, 'failed write leaves the old file');
    throwsFormat(() => readNpy(path.join(dir, 'missing.npy')), /^file not found: .*missing\.npy$/);
    const trunc = path.join(dir, 't.npy');
    fs.writeFileSync(trunc, serializeNpy(t).subarray(0, 140));
    throwsFormat(() => readNpy(trunc), /t\.npy: data is truncated: shape \(2, 3\) needs 24 bytes but only 12 are present/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('npy fuzz: mutated files parse or throw FormatError, nothing else', { timeout: 30_000 }, () => {
  const base = serializeNpy(f32([2, 3], [1, 2, 3, 4, 5, 6]));
  const interesting = enc.encode("{}()[]',:0123456789-TFLN \"\\");
  const rand = rng(42);
  const int = (n: number) => Math.floor(rand() * n);
  let failed = 0;
  for (let iter = 0; iter < 3000; iter++) {
    let bytes = base.slice();
    const kind = iter % 3;
    if (kind === 0) for (let k = 0, n = 1 + int(3); k < n; k++) bytes[10 + int(118)] = interesting[int(interesting.length)]!;
    else if (kind === 1) bytes = bytes.slice(0, int(bytes.length + 1));
    else for (let k = 0, n = 1 + int(3); k < n; k++) bytes[int(bytes.length)] = int(256);
    try {
      parseNpy(bytes, 'fuzz');
    } catch (e) {
      assert.ok(e instanceof FormatError, `iteration ${iter}: ${String(e)}`);
      assert.match(e.message, /^fuzz: /);
      failed++;
    }
  }
  assert.ok(failed > 500, `only ${failed} mutations failed`);
});
