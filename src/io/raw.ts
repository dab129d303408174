/**
 * RawTensor: the plain, file-level view of a tensor (dtype, shape, flat little-endian-decoded data)
 * shared by the safetensors and .npy readers/writers, plus dtype helpers and half-float conversion.
 *
 * This is NOT the library's Tensor type: no strides, no autograd, no ops. Files are decoded into
 * RawTensor and the model code converts from there (usually with `toFloat32`).
 *
 * Also holds the two tiny file helpers both formats need (read with clear errors, atomic write),
 * so the format modules stay pure byte-in/byte-out functions plus thin fs wrappers.
 */
import * as fs from 'node:fs';
import { FormatError } from '../errors.js';

export type DType = 'F32' | 'F16' | 'BF16' | 'F64' | 'I64' | 'I32' | 'U8' | 'BOOL';
export type RawData = Float32Array | Float64Array | BigInt64Array | Int32Array | Uint8Array;

export interface RawTensor {
  /** Dtype of `data`. Parsing never yields F16/BF16 here: half floats are widened to F32. */
  dtype: DType;
  shape: number[];
  /** Row-major (C-order) elements; length === numel(shape). */
  data: RawData;
  /** Set only when parsing widened a half-float file dtype ('F16' | 'BF16') to F32. */
  sourceDType?: DType;
}

export const DTYPES: readonly DType[] = ['F32', 'F16', 'BF16', 'F64', 'I64', 'I32', 'U8', 'BOOL'];

const SIZES: Record<DType, number> = { F32: 4, F16: 2, BF16: 2, F64: 8, I64: 8, I32: 4, U8: 1, BOOL: 1 };

export function isDType(s: unknown): s is DType {
  return typeof s === 'string' && Object.prototype.hasOwnProperty.call(SIZES, s);
}

/** Bytes per element as stored in a file. */
export function dtypeSize(d: DType): number {
  return SIZES[d];
}

/** Number of elements; the empty shape [] is a scalar with one element. */
export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** True for a shape made only of non-negative safe integers (what both formats allow). */
export function isValidShape(shape: unknown): shape is number[] {
  return Array.isArray(shape) && shape.every((d) => typeof d === 'number' && Number.isSafeInteger(d) && d >= 0);
}

// ---------------------------------------------------------------------------------------------
// Half floats
// ---------------------------------------------------------------------------------------------

/** IEEE 754 binary16 bits -> number. Exact, including subnormals, ±0, ±inf and NaN. */
export function f16BitsToF32(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exp = (bits >> 10) & 0x1f;
  const man = bits & 0x3ff;
  if (exp === 0) return sign * man * 2 ** -24; // subnormal (and ±0): no implicit leading 1
  if (exp === 31) return man === 0 ? sign * Infinity : NaN;
  return sign * (1 + man / 1024) * 2 ** (exp - 15);
}

// bfloat16 is the top half of a float32, so the conversion is a 16-bit shift through shared memory.
const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

/** bfloat16 bits -> number. Exact for every value (bf16 is truncated float32). */
export function bf16BitsToF32(bits: number): number {
  scratchU32[0] = (bits & 0xffff) << 16;
  return scratchF32[0]!;
}

// 65536-entry table: converting a large F16 checkpoint element by element with Math.pow is slow,
// and 256 KiB once is cheap. Built on first use only.
let f16Table: Float32Array | undefined;

/** Widen binary16 values to float32 (all f16 values are exactly representable in f32). */
export function f16ToF32Array(src: Uint16Array): Float32Array {
  if (!f16Table) {
    f16Table = new Float32Array(65536);
    for (let i = 0; i < 65536; i++) f16Table[i] = f16BitsToF32(i);
  }
  const table = f16Table;
  const out = new Float32Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = table[src[i]!]!;
  return out;
}

/** Widen bfloat16 values to float32 (exact). */
export function bf16ToF32Array(src: Uint16Array): Float32Array {
  const out = new Float32Array(src.length);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < src.length; i++) bits[i] = src[i]! << 16;
  return out;
}

/** Any RawTensor's values as a fresh Float32Array (always a copy, never aliases `raw.data`). */
export function toFloat32(raw: RawTensor): Float32Array {
  const { data } = raw;
  if (data instanceof BigInt64Array) {
    // Typed-array constructors refuse to mix BigInt and Number, so convert element by element.
    const out = new Float32Array(data.length);
    for (let i = 0; i < data.length; i++) out[i] = Number(data[i]!);
    return out;
  }
  return new Float32Array(data);
}

// ---------------------------------------------------------------------------------------------
// Byte <-> typed array (little-endian files)
// ---------------------------------------------------------------------------------------------

const HOST_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

/** Reverse each `size`-byte group in place (only used on big-endian hosts). */
function swapBytes(bytes: Uint8Array, size: number): void {
  if (size === 1) return;
  for (let i = 0; i + size <= bytes.length; i += size) {
    for (let a = i, b = i + size - 1; a < b; a++, b--) {
      const t = bytes[a]!;
      bytes[a] = bytes[b]!;
      bytes[b] = t;
    }
  }
}

/**
 * Decode little-endian element bytes of file dtype `dtype` into a RawTensor's data.
 * Always copies into a fresh ArrayBuffer: file buffers are frequently unaligned (a safetensors
 * data section starts wherever the header ends; Node Buffers live at arbitrary pool offsets), and
 * typed arrays require element alignment. The caller has already checked the byte length.
 */
export function decodeLE(bytes: Uint8Array, dtype: DType): Pick<RawTensor, 'dtype' | 'data' | 'sourceDType'> {
  const copy = new Uint8Array(bytes.length);
  copy.set(bytes);
  if (!HOST_LITTLE_ENDIAN) swapBytes(copy, dtypeSize(dtype));
  const buf = copy.buffer;
  switch (dtype) {
    case 'F32': return { dtype, data: new Float32Array(buf) };
    case 'F64': return { dtype, data: new Float64Array(buf) };
    case 'I64': return { dtype, data: new BigInt64Array(buf) };
    case 'I32': return { dtype, data: new Int32Array(buf) };
    case 'U8':
    case 'BOOL': return { dtype, data: copy };
    case 'F16': return { dtype: 'F32', data: f16ToF32Array(new Uint16Array(buf)), sourceDType: 'F16' };
    case 'BF16': return { dtype: 'F32', data: bf16ToF32Array(new Uint16Array(buf)), sourceDType: 'BF16' };
  }
}

/** The typed-array class each writable dtype must carry; used to reject lying RawTensors. */
function dataMatches(dtype: DType, data: RawData): boolean {
  switch (dtype) {
    case 'F32': return data instanceof Float32Array;
    case 'F64': return data instanceof Float64Array;
    case 'I64': return data instanceof BigInt64Array;
    case 'I32': return data instanceof Int32Array;
    case 'U8':
    case 'BOOL': return data instanceof Uint8Array;
    case 'F16':
    case 'BF16': return false;
  }
}

/**
 * Check a RawTensor about to be written: known dtype, valid shape, data of the right class and
 * length. Half floats are rejected because the writers only emit what the readers produce (F32).
 */
export function checkWritable(t: RawTensor, what: string): void {
  if (!isDType(t.dtype)) {
    throw new FormatError(`${what}: unknown dtype ${JSON.stringify(t.dtype)} (supported: ${DTYPES.join(', ')})`);
  }
  if (t.dtype === 'F16' || t.dtype === 'BF16') {
    throw new FormatError(`${what}: writing ${t.dtype} is not supported; convert to F32 first`);
  }
  if (!isValidShape(t.shape)) {
    throw new FormatError(`${what}: shape ${JSON.stringify(t.shape)} is not an array of non-negative integers`);
  }
  if (!dataMatches(t.dtype, t.data)) {
    const cls = (t.data as { constructor?: { name?: string } } | null)?.constructor?.name ?? typeof t.data;
    throw new FormatError(`${what}: dtype ${t.dtype} does not match data of type ${cls}`);
  }
  const n = numel(t.shape);
  if (t.data.length !== n) {
    throw new FormatError(`${what}: data has ${t.data.length} elements but shape [${t.shape.join(', ')}] needs ${n}`);
  }
}

/** Little-endian bytes of a (checked) RawTensor's data. A view on little-endian hosts; never mutate. */
export function encodeLE(t: RawTensor): Uint8Array {
  const d = t.data;
  const view = new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
  if (HOST_LITTLE_ENDIAN) return view;
  const copy = view.slice();
  swapBytes(copy, dtypeSize(t.dtype));
  return copy;
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/**
 * A FormatError "<source>: <message>" that is guaranteed to be one line: names and strings taken
 * from a hostile file may contain newlines or other control characters, which are shown escaped.
 */
export function formatError(source: string, message: string): FormatError {
  const text = `${source}: ${message}`.replace(/[\u0000-\u001f\u007f\u2028\u2029]/g, (c) =>
    `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
  return new FormatError(text);
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

/** Read a whole file as a plain Uint8Array; missing, unreadable or empty files are FormatErrors. */
export function readFileBytes(path: string): Uint8Array {
  let buf: Buffer;
  try {
    buf = fs.readFileSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new FormatError(`file not found: ${path}`);
    if (code === 'EISDIR') throw new FormatError(`${path}: is a directory, not a file`);
    throw new FormatError(`${path}: cannot read file (${code ?? (e as Error).message})`);
  }
  if (buf.length === 0) throw new FormatError(`${path}: file is empty`);
  // A plain Uint8Array view: Buffer overrides slice() with view semantics, which would surprise callers.
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}

/**
 * Write via `${path}.tmp-<pid>` + rename, so a crash or a concurrent reader never sees a
 * half-written file. The temp file is removed if anything fails; failures are FormatErrors.
 */
export function writeFileAtomic(path: string, bytes: Uint8Array): void {
  const tmp = `${path}.tmp-${process.pid}`;
  try {
    fs.writeFileSync(tmp, bytes);
    fs.renameSync(tmp, path);
  } catch (e) {
    try {
      fs.rmSync(tmp, { force: true });
    } catch {
      // Best effort: the original error is the one worth reporting.
    }
    // A bad output path is the user's mistake, so report it as a ResnetError, not a crash.
    const code = (e as NodeJS.ErrnoException).code;
    throw new FormatError(`${path}: cannot write file (${code ?? (e as Error).message})`);
  }
}
