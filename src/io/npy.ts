/**
 * NumPy .npy reader/writer (format versions 1.0, 2.0 and 3.0), dependency-free.
 *
 * Layout: magic "\x93NUMPY", major, minor, header length (u16 LE for v1, u32 LE for v2/v3), then a
 * Python dict literal such as `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }` padded
 * with spaces and a final '\n', then the raw C-order element bytes.
 *
 * What it is: a reader for little-endian f4/f8/f2/i8/i4/u1/b1 arrays (f2 widened to F32), with a
 * small hand-written parser for numpy's header literal (never eval), and a writer that reproduces
 * np.save's bytes exactly, header padding included.
 * What it is not: a reader for big-endian, Fortran-order, structured or object arrays (each is a
 * FormatError naming the problem), nor for .npz archives.
 */
import { FormatError } from '../errors.js';
import { type DType, type RawTensor, checkWritable, decodeLE, dtypeSize, encodeLE, formatError, numel, readFileBytes, writeFileAtomic } from './raw.js';

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // "\x93NUMPY"
/** np.save pads the preamble (magic + version + length + header) to a multiple of this. */
const ARRAY_ALIGN = 64;
/** np.save leaves room in the header so the first axis can grow to this many digits in place. */
const GROWTH_AXIS_MAX_DIGITS = 21;

/** descr strings we read, and the file dtype each denotes. */
const DESCR_TO_DTYPE: Record<string, DType> = {
  '<f4': 'F32',
  '<f8': 'F64',
  '<f2': 'F16',
  '<i8': 'I64',
  '<i4': 'I32',
  '|u1': 'U8',
  '|b1': 'BOOL',
};
const WRITE_DESCR: Partial<Record<DType, string>> = {
  F32: '<f4',
  F64: '<f8',
  I64: '<i8',
  I32: '<i4',
  U8: '|u1',
  BOOL: '|b1',
};

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

export function parseNpy(bytes: Uint8Array, source = 'npy'): RawTensor {
  const fail = (msg: string): never => {
    throw formatError(source, msg);
  };
  if (bytes.length < 10) fail(`file is too short (${bytes.length} bytes) to be a .npy file`);
  if (!MAGIC.every((b, i) => bytes[i] === b)) fail('not a .npy file (missing the \\x93NUMPY magic)');

  const major = bytes[6]!;
  const minor = bytes[7]!;
  if (!((major === 1 || major === 2 || major === 3) && minor === 0)) {
    fail(`unsupported .npy format version ${major}.${minor} (supported: 1.0, 2.0, 3.0)`);
  }
  const lenBytes = major === 1 ? 2 : 4;
  if (bytes.length < 8 + lenBytes) fail(`file is too short (${bytes.length} bytes) for a version ${major}.0 preamble`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const headerStart = 8 + lenBytes;
  if (headerLen > bytes.length - headerStart) {
    fail(`header length ${headerLen} exceeds the ${bytes.length - headerStart} bytes after the preamble (file truncated?)`);
  }

  const text = decodeHeaderText(bytes.subarray(headerStart, headerStart + headerLen), major, fail);
  const { dtype, shape } = interpretHeader(new PyLiteralParser(text, fail).parseHeader(), fail);

  const data = bytes.subarray(headerStart + headerLen);
  const n = numel(shape);
  const need = n * dtypeSize(dtype);
  if (data.length < need) {
    fail(`data is truncated: shape (${shape.join(', ')}) needs ${need} bytes but only ${data.length} are present`);
  }
  if (data.length > need) {
    fail(`${data.length - need} unexpected trailing bytes after the data (shape (${shape.join(', ')}) needs ${need})`);
  }
  return { ...decodeLE(data, dtype), shape };
}

/** v1/v2 headers are latin1 (every byte is a character); v3 headers are UTF-8. */
function decodeHeaderText(b: Uint8Array, major: number, fail: (m: string) => never): string {
  if (major !== 3) {
    let s = '';
    // Chunked: fromCharCode(...all) would hit the engine's argument-count limit on a huge header.
    for (let i = 0; i < b.length; i += 8192) s += String.fromCharCode(...b.subarray(i, i + 8192));
    return s;
  }
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(b);
  } catch {
    return fail('version 3.0 header is not valid UTF-8');
  }
}

function interpretHeader(dict: PyValue, fail: (m: string) => never): { dtype: DType; shape: number[] } {
  if (dict.kind !== 'dict') return fail(`header must be a dict literal, got a ${dict.kind}`);
  const fields = new Map<string, PyValue>();
  for (const [k, v] of dict.entries) {
    if (k.kind !== 'str') fail(`header keys must be strings, got a ${k.kind}`);
    const key = (k as { value: string }).value;
    if (fields.has(key)) fail(`duplicate header key '${key}'`);
    if (!['descr', 'fortran_order', 'shape'].includes(key)) fail(`unexpected header key '${key}'`);
    fields.set(key, v);
  }
  for (const key of ['descr', 'fortran_order', 'shape']) {
    if (!fields.has(key)) fail(`header is missing the '${key}' key`);
  }
  const fortran = fields.get('fortran_order')!;
  if (fortran.kind !== 'bool') fail(`'fortran_order' must be True or False, got ${render(fortran)}`);
  if (fortran.value) {
    fail('Fortran-order arrays are not supported; use np.ascontiguousarray before np.save');
  }
  return { dtype: interpretDescr(fields.get('descr')!, fail), shape: interpretShape(fields.get('shape')!, fail) };
}

function interpretDescr(d: PyValue, fail: (m: string) => never): DType {
  const supported = Object.keys(DESCR_TO_DTYPE).map((s) => `'${s}'`).join(', ');
  if (d.kind === 'list') return fail('structured (record) dtypes are not supported');
  if (d.kind !== 'str') return fail(`'descr' must be a string, got ${render(d)}`);
  const descr = d.value;
  // One-byte types have no byte order; numpy writes '|' but '<', '>' and '=' mean the same.
  const normalized = /^[<>=|][ub]1$/.test(descr) ? `|${descr.slice(1)}` : descr;
  const dtype = DESCR_TO_DTYPE[normalized];
  if (dtype !== undefined) return dtype;
  if (descr.startsWith('>') && DESCR_TO_DTYPE[`<${descr.slice(1)}`] !== undefined) {
    return fail(`big-endian dtype '${descr}' is not supported; save with arr.astype('<${descr.slice(1)}')`);
  }
  return fail(`unsupported dtype '${descr}' (supported: ${supported})`);
}

function interpretShape(s: PyValue, fail: (m: string) => never): number[] {
  if (s.kind !== 'tuple' || !s.items.every((x) => x.kind === 'int' && Number.isSafeInteger(x.value) && x.value >= 0)) {
    return fail(`'shape' must be a tuple of non-negative integers, got ${render(s)}`);
  }
  return s.items.map((x) => (x as { value: number }).value);
}

// ---------------------------------------------------------------------------------------------
// Python literal parser (the subset numpy headers use)
// ---------------------------------------------------------------------------------------------

type PyValue =
  | { kind: 'str'; value: string }
  | { kind: 'bool'; value: boolean }
  | { kind: 'none' }
  | { kind: 'int'; value: number }
  | { kind: 'tuple'; items: PyValue[] }
  | { kind: 'list'; items: PyValue[] }
  | { kind: 'dict'; entries: [PyValue, PyValue][] };

/** Deep enough for any real header (structured dtypes nest a few levels); stops stack abuse. */
const MAX_DEPTH = 32;

/**
 * Recursive-descent parser for Python literals: strings ('..' or ".."), ints (with Python 2's
 * optional L suffix, which old numpy wrote in shapes), True/False/None, tuples, lists and dicts,
 * with arbitrary whitespace and trailing commas. Anything else is a FormatError with the offset.
 */
class PyLiteralParser {
  private pos = 0;

  constructor(
    private readonly text: string,
    private readonly fail: (m: string) => never,
  ) {}

  parseHeader(): PyValue {
    this.skipSpace();
    const value = this.parseValue(0);
    this.skipSpace();
    if (this.pos < this.text.length) this.error('unexpected text after the header dict');
    return value;
  }

  private error(what: string): never {
    const snippet = JSON.stringify(this.text.slice(0, 80).trimEnd());
    // Padding spaces make "offset 54" of a cut-off header unhelpful on its own; say it ran out.
    const ended = this.text.slice(this.pos).trim() === '' && !what.startsWith('unexpected end');
    const where = ended ? `offset ${this.pos} (end of header)` : `offset ${this.pos}`;
    return this.fail(`malformed header at ${where}: ${what} (header: ${snippet})`);
  }

  private skipSpace(): void {
    while (this.pos < this.text.length && ' \t\r\n'.includes(this.text[this.pos]!)) this.pos++;
  }

  private parseValue(depth: number): PyValue {
    if (depth > MAX_DEPTH) this.error('literal nested too deeply');
    const c = this.text[this.pos];
    if (c === undefined) return this.error('unexpected end of header');
    if (c === "'" || c === '"') return { kind: 'str', value: this.parseString(c) };
    if (c === '(') return this.parseTuple(depth);
    if (c === '[') return { kind: 'list', items: this.parseSequence(']', depth) };
    if (c === '{') return this.parseDict(depth);
    if (/[-+0-9]/.test(c)) return this.parseInt();
    if (/[A-Za-z_]/.test(c)) return this.parseName();
    return this.error(`unexpected character ${JSON.stringify(c)}`);
  }

  private parseString(quote: string): string {
    const escapes: Record<string, string> = { n: '\n', t: '\t', r: '\r', '0': '\0', '\\': '\\', "'": "'", '"': '"' };
    let out = '';
    this.pos++; // opening quote
    for (;;) {
      const c = this.text[this.pos];
      if (c === undefined || c === '\n') return this.error('unterminated string');
      this.pos++;
      if (c === quote) return out;
      if (c === '\\') {
        const e = this.text[this.pos];
        if (e === undefined) return this.error('unterminated string');
        this.pos++;
        // Python keeps unknown escapes verbatim (backslash included).
        out += escapes[e] ?? `\\${e}`;
      } else {
        out += c;
      }
    }
  }

  /** Match a sticky regex at the current position (no slicing, no length cap). */
  private match(re: RegExp): string | undefined {
    re.lastIndex = this.pos;
    return re.exec(this.text)?.[0];
  }

  private parseInt(): PyValue {
    const m = this.match(/[-+]?[0-9]+[lL]?/y);
    if (m === undefined) return this.error('malformed number');
    this.pos += m.length;
    if (/^[.eExXjJ0-9_]/.test(this.text[this.pos] ?? '')) this.error('only integer numbers are allowed');
    return { kind: 'int', value: Number(m.replace(/[lL]$/, '')) };
  }

  private parseName(): PyValue {
    const name = this.match(/[A-Za-z_][A-Za-z0-9_]*/y)!;
    if (name === 'True' || name === 'False') {
      this.pos += name.length;
      return { kind: 'bool', value: name === 'True' };
    }
    if (name === 'None') {
      this.pos += name.length;
      return { kind: 'none' };
    }
    return this.error(`unexpected name '${name}'`);
  }

  /** Items up to `close`, comma-separated, trailing comma allowed; returns whether any comma was seen. */
  private parseItems(close: string, depth: number): { items: PyValue[]; comma: boolean } {
    this.pos++; // opening bracket
    const items: PyValue[] = [];
    let comma = false;
    for (;;) {
      this.skipSpace();
      if (this.text[this.pos] === close) {
        this.pos++;
        return { items, comma };
      }
      items.push(this.parseValue(depth + 1));
      this.skipSpace();
      const c = this.text[this.pos];
      if (c === ',') {
        comma = true;
        this.pos++;
      } else if (c !== close) {
        return this.error(`expected ',' or '${close}'`);
      }
    }
  }

  private parseSequence(close: string, depth: number): PyValue[] {
    return this.parseItems(close, depth).items;
  }

  private parseTuple(depth: number): PyValue {
    const { items, comma } = this.parseItems(')', depth);
    // As in Python, "(3)" is just a parenthesised 3; only "()" or a comma makes a tuple.
    if (items.length === 1 && !comma) return items[0]!;
    return { kind: 'tuple', items };
  }

  private parseDict(depth: number): PyValue {
    this.pos++; // '{'
    const entries: [PyValue, PyValue][] = [];
    for (;;) {
      this.skipSpace();
      if (this.text[this.pos] === '}') {
        this.pos++;
        return { kind: 'dict', entries };
      }
      const key = this.parseValue(depth + 1);
      this.skipSpace();
      if (this.text[this.pos] !== ':') this.error("expected ':' after a dict key");
      this.pos++;
      this.skipSpace();
      entries.push([key, this.parseValue(depth + 1)]);
      this.skipSpace();
      const c = this.text[this.pos];
      if (c === ',') this.pos++;
      else if (c !== '}') this.error("expected ',' or '}'");
    }
  }
}

/** Python-like rendering of a parsed value, for error messages. */
function render(v: PyValue): string {
  switch (v.kind) {
    case 'str': return `'${v.value}'`;
    case 'bool': return v.value ? 'True' : 'False';
    case 'none': return 'None';
    case 'int': return String(v.value);
    case 'tuple': return v.items.length === 1 ? `(${render(v.items[0]!)},)` : `(${v.items.map(render).join(', ')})`;
    case 'list': return `[${v.items.map(render).join(', ')}]`;
    case 'dict': return `{${v.entries.map(([k, x]) => `${render(k)}: ${render(x)}`).join(', ')}}`;
  }
}

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

/** Serialize exactly as np.save does (version 1.0 unless the header needs 2.0's longer length). */
export function serializeNpy(t: RawTensor): Uint8Array {
  checkWritable(t, 'npy');
  const descr = WRITE_DESCR[t.dtype]!;
  const header = npyHeaderText(descr, t.shape);
  const preamble = wrapHeader(header);
  const data = encodeLE(t);
  const out = new Uint8Array(preamble.length + data.length);
  out.set(preamble, 0);
  out.set(data, preamble.length);
  return out;
}

/** numpy's header dict text: sorted keys, repr() values, ", " after every item. */
function npyHeaderText(descr: string, shape: number[]): string {
  const shapeRepr = shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(', ')})`;
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shapeRepr}, }`;
  // np.save (numpy >= 1.23) reserves space so the first axis can grow without rewriting the file.
  if (shape.length > 0) header += ' '.repeat(Math.max(0, GROWTH_AXIS_MAX_DIGITS - String(shape[0]).length));
  return header;
}

/** Magic + version + length + header + spaces + '\n', padded to ARRAY_ALIGN (as numpy's _wrap_header). */
function wrapHeader(header: string): Uint8Array {
  for (const major of [1, 2]) {
    const lenBytes = major === 1 ? 2 : 4;
    const hlen = header.length + 1;
    const padlen = ARRAY_ALIGN - ((6 + 2 + lenBytes + hlen) % ARRAY_ALIGN);
    const total = hlen + padlen;
    if (major === 1 && total > 0xffff) continue;
    const out = new Uint8Array(8 + lenBytes + total);
    out.set(MAGIC, 0);
    out[6] = major;
    out[7] = 0;
    const view = new DataView(out.buffer);
    if (major === 1) view.setUint16(8, total, true);
    else view.setUint32(8, total, true);
    // The header is ASCII (descr codes, digits, punctuation), so char codes are the bytes.
    for (let i = 0; i < header.length; i++) out[8 + lenBytes + i] = header.charCodeAt(i);
    out.fill(0x20, 8 + lenBytes + header.length, out.length - 1);
    out[out.length - 1] = 0x0a;
    return out;
  }
  throw new FormatError(`npy: header of ${header.length} bytes is too large`);
}

// ---------------------------------------------------------------------------------------------
// Files
// ---------------------------------------------------------------------------------------------

export function readNpy(path: string): RawTensor {
  return parseNpy(readFileBytes(path), path);
}

export function writeNpy(path: string, t: RawTensor): void {
  let bytes: Uint8Array;
  try {
    bytes = serializeNpy(t);
  } catch (e) {
    // Re-label serializer errors with the destination path so the user knows which write failed.
    if (e instanceof FormatError) throw new FormatError(e.message.replace(/^npy:/, `${path}:`));
    throw e;
  }
  writeFileAtomic(path, bytes);
}
