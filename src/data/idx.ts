/**
 * IDX files (the MNIST / Fashion-MNIST format), raw or gzipped.
 *
 * Layout (big-endian): a 4-byte magic `00 00 TT ND` (TT: element type, ND: number of dimensions),
 * ND uint32 dimensions, then the elements in row-major order. Only unsigned bytes (TT = 0x08) are
 * supported: images are magic 0x00000803 (N x rows x cols), labels 0x00000801 (N).
 *
 * Validation (each failure a FormatError naming the file and what is wrong): gzip integrity, the
 * magic's zero bytes, element type, dimension count (and the expected magic when given), a header
 * that fits the file, and a file size of exactly header + product of dims (truncated and trailing
 * bytes are both errors). Gzip is detected from the content (1f 8b), not the file name.
 */
import * as fs from 'node:fs';
import * as zlib from 'node:zlib';
import { FormatError } from '../errors.js';

export interface IdxArray {
  /** The magic number (0x00000803 for images, 0x00000801 for labels). */
  magic: number;
  dims: number[];
  /** The elements (a view into the file's bytes). */
  data: Uint8Array;
}

const TYPE_NAMES: Record<number, string> = { 0x08: 'uint8', 0x09: 'int8', 0x0b: 'int16', 0x0c: 'int32', 0x0d: 'float32', 0x0e: 'float64' };

function hex32(n: number): string {
  return `0x${(n >>> 0).toString(16).padStart(8, '0')}`;
}

/** Decompresses gzip data (detected by its 1f 8b magic); other bytes are returned as they are. */
export function maybeGunzip(bytes: Uint8Array, file: string): Uint8Array {
  if (bytes.length >= 2 && bytes[0] === 0x1f && bytes[1] === 0x8b) {
    try {
      return zlib.gunzipSync(bytes);
    } catch (e) {
      throw new FormatError(`${file}: corrupt or truncated gzip data (${(e as Error).message})`);
    }
  }
  return bytes;
}

/**
 * Parses IDX bytes (already decompressed). `expectMagic` (e.g. 0x803) is checked when given;
 * `file` names the source in errors.
 */
export function parseIdx(bytes: Uint8Array, file: string, expectMagic?: number): IdxArray {
  if (bytes.length < 4) throw new FormatError(`${file}: ${bytes.length} bytes is too short for an IDX header`);
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const magic = dv.getUint32(0, false);
  const what = expectMagic === 0x803 ? 'images (idx3-ubyte)' : expectMagic === 0x801 ? 'labels (idx1-ubyte)' : 'IDX';
  if (bytes[0] !== 0 || bytes[1] !== 0) {
    throw new FormatError(`${file}: not an IDX file: magic ${hex32(magic)} (the first two bytes must be zero${expectMagic !== undefined ? `; expected ${hex32(expectMagic)} for ${what}` : ''})`);
  }
  const type = bytes[2]!;
  const nd = bytes[3]!;
  if (type !== 0x08) {
    const name = TYPE_NAMES[type];
    throw new FormatError(`${file}: IDX element type 0x${type.toString(16).padStart(2, '0')} (${name ?? 'unknown'}) is not supported: expected 0x08 (unsigned byte)`);
  }
  if (expectMagic !== undefined && magic !== expectMagic) {
    throw new FormatError(`${file}: magic ${hex32(magic)} (${nd} dimensions), expected ${hex32(expectMagic)} for ${what}`);
  }
  if (nd === 0) throw new FormatError(`${file}: IDX header declares 0 dimensions`);
  const headerSize = 4 + 4 * nd;
  if (bytes.length < headerSize) {
    throw new FormatError(`${file}: truncated IDX header: ${nd} dimensions need ${headerSize} bytes, the file has ${bytes.length}`);
  }
  const dims: number[] = [];
  let count = 1;
  for (let i = 0; i < nd; i++) {
    const d = dv.getUint32(4 + 4 * i, false);
    dims.push(d);
    count *= d;
  }
  const body = bytes.length - headerSize;
  if (body < count) {
    throw new FormatError(`${file}: truncated: the header declares dims [${dims.join(', ')}] = ${count} bytes of data, the file has ${body} after the ${headerSize}-byte header`);
  }
  if (body > count) {
    throw new FormatError(`${file}: ${body - count} unexpected bytes after the data: the header declares dims [${dims.join(', ')}] = ${count} bytes, the file has ${body} after the ${headerSize}-byte header`);
  }
  return { magic, dims, data: bytes.subarray(headerSize) };
}

/** Reads and parses an IDX file, raw or gzipped. */
export function readIdx(file: string, expectMagic?: number): IdxArray {
  let bytes: Uint8Array;
  try {
    bytes = fs.readFileSync(file);
  } catch (e) {
    throw new FormatError(`${file}: cannot read: ${(e as Error).message}`);
  }
  return parseIdx(maybeGunzip(bytes, file), file, expectMagic);
}

/** Serialises a uint8 IDX array (for tests and tools). */
export function serializeIdx(dims: readonly number[], data: Uint8Array): Uint8Array {
  const out = new Uint8Array(4 + 4 * dims.length + data.length);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, 0x800 | dims.length, false);
  dims.forEach((d, i) => dv.setUint32(4 + 4 * i, d, false));
  out.set(data, 4 + 4 * dims.length);
  return out;
}
