/**
 * A small reader for tar archives (POSIX ustar, plus the GNU long-name 'L' and pax 'x' path
 * extensions that GNU tar and Python's tarfile write). Enough for dataset archives: regular files
 * and directories; links and devices are listed as 'other'. Header checksums are verified and a
 * truncated archive is a FormatError naming the file.
 */
import { FormatError } from '../errors.js';

export interface TarEntry {
  /** Path inside the archive ('/'-separated, as stored). */
  name: string;
  type: 'file' | 'dir' | 'other';
  /** The raw typeflag character ('0', '5', ...). */
  typeflag: string;
  /** File contents (a view into the archive bytes); empty for non-files. */
  data: Uint8Array;
}

const dec = new TextDecoder();

function cstr(b: Uint8Array, off: number, len: number): string {
  let end = off;
  while (end < off + len && b[end] !== 0) end++;
  return dec.decode(b.subarray(off, end));
}

function octal(b: Uint8Array, off: number, len: number, file: string, at: number, field: string): number {
  if (b[off]! & 0x80) {
    // GNU base-256 for large values.
    let v = b[off]! & 0x7f;
    for (let i = 1; i < len; i++) v = v * 256 + b[off + i]!;
    return v;
  }
  const s = cstr(b, off, len).trim();
  if (s === '') return 0;
  if (!/^[0-7]+$/.test(s)) throw new FormatError(`${file}: tar header at offset ${at} has a malformed ${field} field ${JSON.stringify(s)}`);
  return parseInt(s, 8);
}

function isZeroBlock(b: Uint8Array, off: number): boolean {
  for (let i = off; i < off + 512; i++) if (b[i] !== 0) return false;
  return true;
}

function paxPath(data: Uint8Array): string | null {
  const text = dec.decode(data);
  let path: string | null = null;
  let i = 0;
  while (i < text.length) {
    const sp = text.indexOf(' ', i);
    if (sp < 0) break;
    const len = parseInt(text.slice(i, sp), 10);
    if (!(len > 0)) break;
    const rec = text.slice(sp + 1, i + len - 1);
    const eq = rec.indexOf('=');
    if (eq > 0 && rec.slice(0, eq) === 'path') path = rec.slice(eq + 1);
    i += len;
  }
  return path;
}

/** Lists the entries of an (uncompressed) tar archive. */
export function parseTar(bytes: Uint8Array, file: string): TarEntry[] {
  const entries: TarEntry[] = [];
  let off = 0;
  let longName: string | null = null;
  while (off + 512 <= bytes.length) {
    if (isZeroBlock(bytes, off)) return entries;
    const stored = octal(bytes, off + 148, 8, file, off, 'checksum');
    let sum = 0;
    let signedSum = 0;
    for (let i = 0; i < 512; i++) {
      const v = i >= 148 && i < 156 ? 0x20 : bytes[off + i]!;
      sum += v;
      signedSum += v > 127 ? v - 256 : v;
    }
    if (stored !== sum && stored !== signedSum) {
      throw new FormatError(`${file}: tar header at offset ${off} has a bad checksum (stored ${stored}, computed ${sum}): corrupt archive or not a tar file`);
    }
    let name = cstr(bytes, off, 100);
    const size = octal(bytes, off + 124, 12, file, off, 'size');
    const typeflag = String.fromCharCode(bytes[off + 156]!) || '0';
    const magic = cstr(bytes, off + 257, 6);
    const version = cstr(bytes, off + 263, 2);
    if (magic === 'ustar' && version !== ' ') {
      // POSIX ustar (GNU's "ustar  " uses the prefix bytes for other things).
      const prefix = cstr(bytes, off + 345, 155);
      if (prefix) name = `${prefix}/${name}`;
    }
    const start = off + 512;
    if (start + size > bytes.length) {
      throw new FormatError(`${file}: truncated tar archive: entry ${JSON.stringify(name)} needs ${size} bytes at offset ${start}, the archive has ${bytes.length - start}`);
    }
    const data = bytes.subarray(start, start + size);
    off = start + Math.ceil(size / 512) * 512;
    if (typeflag === 'L') {
      longName = cstr(data, 0, data.length);
      continue;
    }
    if (typeflag === 'x') {
      longName = paxPath(data) ?? longName;
      continue;
    }
    if (typeflag === 'g') continue;
    if (longName !== null) {
      name = longName;
      longName = null;
    }
    const type = typeflag === '0' || typeflag === '\0' || typeflag === '7' ? 'file' : typeflag === '5' ? 'dir' : 'other';
    entries.push({ name, type, typeflag, data: type === 'file' ? data : new Uint8Array(0) });
  }
  if (off < bytes.length) {
    throw new FormatError(`${file}: truncated tar archive: ${bytes.length - off} stray bytes at offset ${off} (a header is 512 bytes)`);
  }
  // Archives should end with two zero blocks; tolerate their absence when the entries are whole.
  return entries;
}

/** Builds a ustar archive from files (for tests and tools). */
export function buildTar(files: { name: string; data: Uint8Array; type?: 'file' | 'dir' }[]): Uint8Array {
  const enc = new TextEncoder();
  const blocks: Uint8Array[] = [];
  for (const f of files) {
    const h = new Uint8Array(512);
    const put = (s: string, off: number, len: number): void => {
      const b = enc.encode(s);
      if (b.length > len) throw new Error(`buildTar: ${JSON.stringify(s)} does not fit ${len} bytes`);
      h.set(b, off);
    };
    const isDir = f.type === 'dir';
    const size = isDir ? 0 : f.data.length;
    put(f.name, 0, 100);
    put(isDir ? '0000755' : '0000644', 100, 8);
    put('0000000', 108, 8);
    put('0000000', 116, 8);
    put(size.toString(8).padStart(11, '0'), 124, 12);
    put('00000000000', 136, 12);
    h.fill(0x20, 148, 156);
    h[156] = (isDir ? '5' : '0').charCodeAt(0);
    put('ustar', 257, 6);
    put('00', 263, 2);
    let sum = 0;
    for (const v of h) sum += v;
    put(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8);
    blocks.push(h);
    if (!isDir) {
      const body = new Uint8Array(Math.ceil(size / 512) * 512);
      body.set(f.data);
      blocks.push(body);
    }
  }
  blocks.push(new Uint8Array(1024));
  const out = new Uint8Array(blocks.reduce((a, b) => a + b.length, 0));
  let o = 0;
  for (const b of blocks) {
    out.set(b, o);
    o += b.length;
  }
  return out;
}
