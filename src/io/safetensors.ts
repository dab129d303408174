/**
 * safetensors reader/writer (https://github.com/huggingface/safetensors), dependency-free.
 *
 * Layout: u64 little-endian header length N, N bytes of UTF-8 JSON, then the data section. The JSON
 * maps tensor names to {dtype, shape, data_offsets: [begin, end]} (offsets relative to the data
 * section) plus an optional "__metadata__" object of string -> string.
 *
 * What it is: a strict parser that validates every header field against the bytes actually present
 * and throws a one-line FormatError for anything malformed; a writer that emits the same layout as
 * the reference implementation (space-padded header, 8-byte aligned data, tensors packed in order).
 * What it is not: lazy/mmap loading, or a writer for F16/BF16 (parsing widens those to F32).
 * Dtypes other than F32/F16/BF16/F64/I64/I32/U8/BOOL (I8, F8_*, ...) are rejected by name.
 */
import { FormatError } from '../errors.js';
import {
  DTYPES,
  type RawTensor,
  checkWritable,
  decodeLE,
  dtypeSize,
  encodeLE,
  formatError,
  isDType,
  isValidShape,
  numel,
  readFileBytes,
  writeFileAtomic,
} from './raw.js';

export interface SafetensorsFile {
  /** Tensors in the header's key order. */
  tensors: Map<string, RawTensor>;
  metadata: Record<string, string>;
}

/** Same limit as the reference implementation: a larger header is an attack or corruption. */
const MAX_HEADER_BYTES = 100_000_000;
const METADATA_KEY = '__metadata__';

interface Entry {
  name: string;
  dtype: RawTensor['dtype'];
  shape: number[];
  begin: number;
  end: number;
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

export function parseSafetensors(bytes: Uint8Array, source = 'safetensors'): SafetensorsFile {
  const fail = (msg: string): never => {
    throw formatError(source, msg);
  };
  if (bytes.length < 8) fail(`file is too short (${bytes.length} bytes) to hold the 8-byte header length`);

  const headerLen = readHeaderLength(bytes, fail);
  const text = decodeHeader(bytes.subarray(8, 8 + headerLen), fail);
  const header = parseHeaderJson(text, fail);
  const data = bytes.subarray(8 + headerLen);

  const entries: Entry[] = [];
  let metadata: Record<string, string> = {};
  for (const name of topLevelKeys(text, fail)) {
    const value = header[name];
    if (name === METADATA_KEY) metadata = checkMetadata(value, fail);
    else entries.push(checkEntry(name, value, data.length, fail));
  }
  checkNoOverlap(entries, fail);

  const tensors = new Map<string, RawTensor>();
  for (const e of entries) {
    tensors.set(e.name, { ...decodeLE(data.subarray(e.begin, e.end), e.dtype), shape: e.shape });
  }
  return { tensors, metadata };
}

function readHeaderLength(bytes: Uint8Array, fail: (m: string) => never): number {
  // Read as u64 and compare as bigint: a corrupt prefix can exceed 2^53 and must not round.
  const n = new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true);
  if (n === 0n) fail('header length is 0 (expected a JSON header)');
  if (n > BigInt(MAX_HEADER_BYTES)) fail(`header length ${n} exceeds the ${MAX_HEADER_BYTES}-byte (100 MB) limit`);
  if (n > BigInt(bytes.length - 8)) {
    fail(`header length ${n} exceeds the ${bytes.length - 8} bytes after the length prefix (file truncated?)`);
  }
  return Number(n);
}

function decodeHeader(headerBytes: Uint8Array, fail: (m: string) => never): string {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(headerBytes);
  } catch {
    return fail('header is not valid UTF-8');
  }
}

function parseHeaderJson(text: string, fail: (m: string) => never): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    return fail(`header is not valid JSON (${oneLine((e as Error).message)})`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return fail(`header must be a JSON object, got ${describe(value)}`);
  }
  return value as Record<string, unknown>;
}

/**
 * The top-level keys of already-validated JSON text, in file order. JSON.parse cannot give us that:
 * JS objects list integer-like keys ("0", "1", ...) first, and silently keep the last of duplicate
 * keys. Scanning the text is cheap because validity is already established.
 */
function topLevelKeys(text: string, fail: (m: string) => never): string[] {
  const keys: string[] = [];
  const seen = new Set<string>();
  let depth = 0;
  let expectKey = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      let j = i + 1;
      while (text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      if (depth === 1 && expectKey) {
        const key = JSON.parse(text.slice(i, j + 1)) as string;
        if (seen.has(key)) fail(`duplicate key ${JSON.stringify(key)} in header`);
        seen.add(key);
        keys.push(key);
        expectKey = false;
      }
      i = j;
    } else if (c === '{' || c === '[') {
      depth++;
      if (depth === 1) expectKey = true;
    } else if (c === '}' || c === ']') {
      depth--;
    } else if (c === ',' && depth === 1) {
      expectKey = true;
    }
  }
  return keys;
}

function checkMetadata(value: unknown, fail: (m: string) => never): Record<string, string> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return fail(`"${METADATA_KEY}" must be an object of strings, got ${describe(value)}`);
  }
  for (const [k, v] of Object.entries(value)) {
    if (typeof v !== 'string') fail(`"${METADATA_KEY}" value for ${JSON.stringify(k)} must be a string, got ${describe(v)}`);
  }
  // fromEntries defines own properties, so a "__proto__" key stays data rather than a prototype.
  return Object.fromEntries(Object.entries(value as Record<string, string>));
}

function checkEntry(name: string, value: unknown, dataLen: number, fail: (m: string) => never): Entry {
  const what = `tensor ${JSON.stringify(name)}`;
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return fail(`${what} is not an object with dtype, shape and data_offsets (got ${describe(value)})`);
  }
  const v = value as Record<string, unknown>;
  for (const field of ['dtype', 'shape', 'data_offsets']) {
    if (!Object.prototype.hasOwnProperty.call(v, field)) fail(`${what} is missing "${field}"`);
  }
  const { dtype, shape, data_offsets: offsets } = v;
  if (!isDType(dtype)) fail(`${what} has unsupported dtype ${describe(dtype)} (supported: ${DTYPES.join(', ')})`);
  if (!isValidShape(shape)) fail(`${what} shape ${describe(shape)} is not an array of non-negative integers`);
  if (
    !Array.isArray(offsets) ||
    offsets.length !== 2 ||
    !offsets.every((o) => typeof o === 'number' && Number.isSafeInteger(o) && o >= 0)
  ) {
    return fail(`${what} data_offsets ${describe(offsets)} are not two non-negative integers [begin, end]`);
  }
  const [begin, end] = offsets as [number, number];
  const d = dtype as RawTensor['dtype'];
  const s = shape as number[];
  if (begin > end) fail(`${what} data_offsets [${begin}, ${end}] have begin after end`);
  if (end > dataLen) fail(`${what} data_offsets [${begin}, ${end}] exceed the data section (${dataLen} bytes)`);
  const need = numel(s) * dtypeSize(d);
  if (need !== end - begin) {
    fail(`${what} has dtype ${d} and shape [${s.join(', ')}] (${need} bytes) but data_offsets [${begin}, ${end}] span ${end - begin} bytes`);
  }
  return { name, dtype: d, shape: [...s], begin, end };
}

/**
 * Two tensors sharing bytes means a corrupt or malicious header. Gaps are tolerated (they cost
 * nothing to read around); empty tensors occupy no bytes and cannot overlap anything.
 */
function checkNoOverlap(entries: Entry[], fail: (m: string) => never): void {
  const sorted = entries.filter((e) => e.end > e.begin).sort((a, b) => a.begin - b.begin || a.end - b.end);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!;
    const cur = sorted[i]!;
    if (cur.begin < prev.end) {
      fail(
        `tensors ${JSON.stringify(prev.name)} [${prev.begin}, ${prev.end}] and ` +
          `${JSON.stringify(cur.name)} [${cur.begin}, ${cur.end}] overlap in the data section`,
      );
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

export function serializeSafetensors(
  tensors: Iterable<[string, RawTensor]> | Map<string, RawTensor>,
  metadata?: Record<string, string>,
): Uint8Array {
  return serialize(tensors, metadata, 'safetensors');
}

function serialize(
  tensors: Iterable<[string, RawTensor]>,
  metadata: Record<string, string> | undefined,
  source: string,
): Uint8Array {
  // Build the JSON by hand: JSON.stringify of an object would move integer-like names to the front.
  const parts: string[] = [];
  if (metadata !== undefined) parts.push(`${JSON.stringify(METADATA_KEY)}:${metadataJson(metadata, source)}`);

  const blobs: Uint8Array[] = [];
  const seen = new Set<string>();
  let offset = 0;
  for (const [name, t] of tensors) {
    const what = `${source}: tensor ${JSON.stringify(name)}`;
    if (typeof name !== 'string') throw new FormatError(`${source}: tensor names must be strings, got ${describe(name)}`);
    if (name === METADATA_KEY) throw new FormatError(`${what}: name is reserved for metadata`);
    if (seen.has(name)) throw new FormatError(`${what}: duplicate name`);
    seen.add(name);
    checkWritable(t, what);
    const blob = encodeLE(t);
    const entry = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + blob.length] };
    parts.push(`${JSON.stringify(name)}:${JSON.stringify(entry)}`);
    blobs.push(blob);
    offset += blob.length;
  }

  const json = new TextEncoder().encode(`{${parts.join(',')}}`);
  // Pad with spaces (valid JSON whitespace) so the data section starts 8-byte aligned in the file.
  const headerLen = json.length + ((8 - ((8 + json.length) % 8)) % 8);
  const out = new Uint8Array(8 + headerLen + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerLen), true);
  out.set(json, 8);
  out.fill(0x20, 8 + json.length, 8 + headerLen);
  let pos = 8 + headerLen;
  for (const blob of blobs) {
    out.set(blob, pos);
    pos += blob.length;
  }
  return out;
}

function metadataJson(metadata: Record<string, string>, source: string): string {
  if (typeof metadata !== 'object' || metadata === null || Array.isArray(metadata)) {
    throw new FormatError(`${source}: metadata must be an object of strings, got ${describe(metadata)}`);
  }
  const parts: string[] = [];
  for (const [k, v] of Object.entries(metadata)) {
    if (typeof v !== 'string') {
      throw new FormatError(`${source}: metadata value for ${JSON.stringify(k)} must be a string, got ${describe(v)}`);
    }
    parts.push(`${JSON.stringify(k)}:${JSON.stringify(v)}`);
  }
  return `{${parts.join(',')}}`;
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

export function readSafetensors(path: string): SafetensorsFile {
  return parseSafetensors(readFileBytes(path), path);
}

export function writeSafetensors(
  path: string,
  tensors: Iterable<[string, RawTensor]> | Map<string, RawTensor>,
  metadata?: Record<string, string>,
): void {
  // Serialize fully before touching the filesystem, so a bad tensor never leaves a partial file.
  writeFileAtomic(path, serialize(tensors, metadata, path));
}

// ---------------------------------------------------------------------------------------------
// Message helpers
// ---------------------------------------------------------------------------------------------

/** A short one-line rendering of an arbitrary (JSON-derived or caller) value for error messages. */
function describe(v: unknown): string {
  let s: string;
  try {
    s = v === undefined ? 'undefined' : typeof v === 'bigint' ? `${v}n` : (JSON.stringify(v) ?? String(v));
  } catch {
    s = Object.prototype.toString.call(v);
  }
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

function oneLine(s: string): string {
  return s.replace(/\s+/g, ' ').trim();
}
