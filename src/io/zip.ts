/**
 * A small, strict ZIP reader: enough for the archives torch.save writes (and any ordinary ZIP of
 * stored or deflated entries), dependency-free apart from node:zlib for deflate.
 *
 * Layout read: the end-of-central-directory record (EOCD) at the end of the file, the ZIP64 EOCD
 * record and locator when the classic fields overflow, the central directory (one record per
 * entry: sizes, CRC, method, offset of the local header), and each entry's local header (whose
 * own name/extra lengths say where the data starts: torch pads the local extra field so storages
 * start 64-byte aligned, so the central and local extra lengths differ).
 *
 * Every offset and length is checked against the bytes actually present; anything malformed,
 * truncated, encrypted, multi-disk or compressed with another method is a one-line FormatError.
 * CRCs are not verified by default, like torch.load (which accepts archives written with
 * torch.serialization.set_crc32_options(False)); pass { verifyCrc: true } to check them.
 */
import * as zlib from 'node:zlib';
import { formatError } from './raw.js';

export interface ZipEntry {
  name: string;
  /** 0 = stored, 8 = deflate. */
  method: number;
  flags: number;
  crc32: number;
  compressedSize: number;
  size: number;
  localHeaderOffset: number;
}

const SIG_LOCAL = 0x04034b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_EOCD = 0x06054b50;
const SIG_EOCD64 = 0x06064b50;
const SIG_EOCD64_LOCATOR = 0x07064b50;
const U16_MAX = 0xffff;
const U32_MAX = 0xffffffff;

/** True when `bytes` starts like a ZIP archive (a local header, or the EOCD of an empty archive). */
export function isZip(bytes: Uint8Array): boolean {
  if (bytes.length < 4) return false;
  const sig = (bytes[0]! | (bytes[1]! << 8) | (bytes[2]! << 16) | (bytes[3]! << 24)) >>> 0;
  return sig === SIG_LOCAL || sig === SIG_EOCD;
}

export class ZipArchive {
  /** Entries by name, in central-directory order. */
  readonly entries: Map<string, ZipEntry>;
  private readonly bytes: Uint8Array;
  private readonly source: string;

  constructor(bytes: Uint8Array, source = 'zip') {
    this.bytes = bytes;
    this.source = source;
    this.entries = readCentralDirectory(bytes, (m) => this.fail(m));
  }

  has(name: string): boolean {
    return this.entries.has(name);
  }

  /**
   * The uncompressed bytes of entry `name` (a view into the file for stored entries: do not
   * mutate). Throws a FormatError if the entry is missing or its data is out of bounds or corrupt.
   */
  read(name: string, opts: { verifyCrc?: boolean } = {}): Uint8Array {
    const e = this.entries.get(name);
    if (!e) return this.fail(`entry ${JSON.stringify(name)} is missing from the archive`);
    const what = `entry ${JSON.stringify(name)}`;
    const b = this.bytes;
    const off = e.localHeaderOffset;
    if (off + 30 > b.length) this.fail(`${what}: local header at offset ${off} lies past the end of the file (${b.length} bytes; truncated?)`);
    const dv = view(b);
    if (dv.getUint32(off, true) !== SIG_LOCAL) this.fail(`${what}: no local file header at offset ${off} (corrupt archive)`);
    const nameLen = dv.getUint16(off + 26, true);
    const extraLen = dv.getUint16(off + 28, true);
    const start = off + 30 + nameLen + extraLen;
    const end = start + e.compressedSize;
    if (end > b.length) {
      this.fail(`${what}: data [${start}, ${end}) lies past the end of the file (${b.length} bytes; truncated?)`);
    }
    const raw = b.subarray(start, end);
    let out: Uint8Array;
    if (e.method === 0) {
      if (e.compressedSize !== e.size) this.fail(`${what}: stored entry has compressed size ${e.compressedSize} but size ${e.size}`);
      out = raw;
    } else if (e.method === 8) {
      let inflated: Buffer;
      try {
        // maxOutputLength stops a deflate bomb from allocating more than the entry claims.
        inflated = zlib.inflateRawSync(raw, { maxOutputLength: Math.max(e.size, 1) });
      } catch (err) {
        return this.fail(`${what}: deflate data is corrupt (${(err as Error).message})`);
      }
      if (inflated.length !== e.size) this.fail(`${what}: inflates to ${inflated.length} bytes but the directory says ${e.size}`);
      out = new Uint8Array(inflated.buffer, inflated.byteOffset, inflated.byteLength);
    } else {
      return this.fail(`${what}: compression method ${e.method} is not supported (only stored and deflate)`);
    }
    if (opts.verifyCrc) {
      const crc = crc32(out);
      if (crc !== e.crc32) this.fail(`${what}: CRC-32 mismatch (file says ${hex(e.crc32)}, data gives ${hex(crc)}): the archive is corrupt`);
    }
    return out;
  }

  private fail(message: string): never {
    throw formatError(this.source, message);
  }
}

/** Parses the directory of a ZIP archive; `source` names it in errors. */
export function openZip(bytes: Uint8Array, source = 'zip'): ZipArchive {
  return new ZipArchive(bytes, source);
}

function view(b: Uint8Array): DataView {
  return new DataView(b.buffer, b.byteOffset, b.byteLength);
}

function hex(n: number): string {
  return `0x${(n >>> 0).toString(16).padStart(8, '0')}`;
}

/** A u64 as a number, refusing values past 2^53 (no file is that large; it is corruption). */
function u64(dv: DataView, off: number, what: string, fail: (m: string) => never): number {
  const v = dv.getBigUint64(off, true);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) fail(`${what} ${v} is impossibly large (corrupt archive)`);
  return Number(v);
}

interface Eocd {
  pos: number;
  entries: number;
  cdSize: number;
  cdOffset: number;
}

function findEocd(b: Uint8Array, fail: (m: string) => never): Eocd {
  if (b.length < 22) fail(`file is too short (${b.length} bytes) to be a ZIP archive`);
  const dv = view(b);
  // The EOCD is 22 bytes plus a comment of at most 65535 bytes, at the very end of the file.
  // Prefer a candidate whose comment length reaches exactly the end of the file.
  const lowest = Math.max(0, b.length - 22 - U16_MAX);
  let fallback = -1;
  let pos = -1;
  for (let i = b.length - 22; i >= lowest; i--) {
    if (dv.getUint32(i, true) !== SIG_EOCD) continue;
    if (i + 22 + dv.getUint16(i + 20, true) === b.length) {
      pos = i;
      break;
    }
    if (fallback < 0) fallback = i;
  }
  if (pos < 0) pos = fallback;
  if (pos < 0) fail('no end-of-central-directory record found (not a ZIP archive, or truncated)');
  const disk = dv.getUint16(pos + 4, true);
  const cdDisk = dv.getUint16(pos + 6, true);
  let entriesOnDisk = dv.getUint16(pos + 8, true);
  let entries = dv.getUint16(pos + 10, true);
  let cdSize = dv.getUint32(pos + 12, true);
  let cdOffset = dv.getUint32(pos + 16, true);
  let limit = pos; // the central directory must end before the record that describes it

  const needs64 = entries === U16_MAX || entriesOnDisk === U16_MAX || cdSize === U32_MAX || cdOffset === U32_MAX;
  const loc = pos - 20;
  if (loc >= 0 && dv.getUint32(loc, true) === SIG_EOCD64_LOCATOR) {
    const recOff = u64(dv, loc + 8, 'ZIP64 end-of-central-directory offset', fail);
    if (recOff + 56 > loc) fail(`ZIP64 end-of-central-directory record offset ${recOff} is out of bounds`);
    if (dv.getUint32(recOff, true) !== SIG_EOCD64) fail(`no ZIP64 end-of-central-directory record at offset ${recOff} (corrupt archive)`);
    const e64d = u64(dv, recOff + 24, 'ZIP64 entry count', fail);
    const e64 = u64(dv, recOff + 32, 'ZIP64 entry count', fail);
    const size64 = u64(dv, recOff + 40, 'ZIP64 central directory size', fail);
    const off64 = u64(dv, recOff + 48, 'ZIP64 central directory offset', fail);
    // Writers either saturate the classic fields or repeat the value; anything else is corruption.
    const agree = (classic: number, max: number, v64: number): boolean => classic === max || classic === v64;
    if (!agree(entriesOnDisk, U16_MAX, e64d) || !agree(entries, U16_MAX, e64) || !agree(cdSize, U32_MAX, size64) || !agree(cdOffset, U32_MAX, off64)) {
      fail('the ZIP64 and classic end-of-central-directory records disagree (corrupt archive)');
    }
    entriesOnDisk = e64d;
    entries = e64;
    cdSize = size64;
    cdOffset = off64;
    const disk64 = dv.getUint32(recOff + 16, true);
    const cdDisk64 = dv.getUint32(recOff + 20, true);
    if (disk64 !== 0 || cdDisk64 !== 0) fail('multi-disk (split) ZIP archives are not supported');
    limit = recOff;
  } else if (needs64) {
    fail('the end-of-central-directory record needs ZIP64 fields but the ZIP64 locator is missing (corrupt archive)');
  }
  if (disk !== 0 || cdDisk !== 0) fail('multi-disk (split) ZIP archives are not supported');
  if (entriesOnDisk !== entries) fail(`entry counts disagree (${entriesOnDisk} on this disk, ${entries} in total)`);
  if (cdOffset + cdSize > limit) {
    fail(`central directory [${cdOffset}, ${cdOffset + cdSize}) runs past its end record at ${limit} (corrupt or truncated archive)`);
  }
  // Each central record is at least 46 bytes, which bounds the loop below on hostile counts.
  if (entries * 46 > cdSize) fail(`central directory of ${cdSize} bytes cannot hold ${entries} entries`);
  return { pos, entries, cdSize, cdOffset };
}

function readCentralDirectory(b: Uint8Array, fail: (m: string) => never): Map<string, ZipEntry> {
  const { entries: count, cdSize, cdOffset } = findEocd(b, fail);
  const dv = view(b);
  const end = cdOffset + cdSize;
  const utf8 = new TextDecoder('utf-8', { fatal: true });
  const latin1 = new TextDecoder('latin1');
  const out = new Map<string, ZipEntry>();
  let p = cdOffset;
  for (let i = 0; i < count; i++) {
    if (p + 46 > end) fail(`central directory record ${i} at offset ${p} runs past the directory's end (${end})`);
    if (dv.getUint32(p, true) !== SIG_CENTRAL) fail(`bad central directory record signature at offset ${p} (corrupt archive)`);
    const flags = dv.getUint16(p + 8, true);
    const method = dv.getUint16(p + 10, true);
    const crc = dv.getUint32(p + 16, true);
    let compressedSize = dv.getUint32(p + 20, true);
    let size = dv.getUint32(p + 24, true);
    const nameLen = dv.getUint16(p + 28, true);
    const extraLen = dv.getUint16(p + 30, true);
    const commentLen = dv.getUint16(p + 32, true);
    let disk = dv.getUint16(p + 34, true);
    let localHeaderOffset = dv.getUint32(p + 42, true);
    const next = p + 46 + nameLen + extraLen + commentLen;
    if (next > end) fail(`central directory record ${i} at offset ${p} runs past the directory's end (${end})`);
    const nameBytes = b.subarray(p + 46, p + 46 + nameLen);
    let name: string;
    try {
      name = flags & 0x800 ? utf8.decode(nameBytes) : latin1.decode(nameBytes);
    } catch {
      return fail(`central directory record ${i} has a name that is not valid UTF-8`);
    }
    const what = `entry ${JSON.stringify(name)}`;

    // ZIP64 extended information: the 64-bit values of exactly those fields that are saturated,
    // in the order uncompressed size, compressed size, local header offset, disk number.
    let q = p + 46 + nameLen;
    const extraEnd = q + extraLen;
    let saw64 = false;
    while (q + 4 <= extraEnd) {
      const id = dv.getUint16(q, true);
      const len = dv.getUint16(q + 2, true);
      const body = q + 4;
      if (body + len > extraEnd) fail(`${what}: extra field runs past its record`);
      if (id === 0x0001 && !saw64) {
        saw64 = true;
        let r = body;
        const take = (field: string): number => {
          if (r + 8 > body + len) fail(`${what}: ZIP64 extra field is too short for the ${field}`);
          const v = u64(dv, r, `${what}: ZIP64 ${field}`, fail);
          r += 8;
          return v;
        };
        if (size === U32_MAX) size = take('size');
        if (compressedSize === U32_MAX) compressedSize = take('compressed size');
        if (localHeaderOffset === U32_MAX) localHeaderOffset = take('local header offset');
        if (disk === U16_MAX) {
          if (r + 4 > body + len) fail(`${what}: ZIP64 extra field is too short for the disk number`);
          disk = dv.getUint32(r, true);
        }
      }
      q = body + len;
    }
    if (size === U32_MAX || compressedSize === U32_MAX || localHeaderOffset === U32_MAX) {
      if (!saw64) fail(`${what}: sizes need a ZIP64 extra field, which is missing`);
    }
    if (disk !== 0) fail(`${what}: lies on disk ${disk}; multi-disk archives are not supported`);
    if (flags & 0x1) fail(`${what}: is encrypted; encrypted archives are not supported`);
    if (localHeaderOffset + 30 > cdOffset) {
      fail(`${what}: local header offset ${localHeaderOffset} is not before the central directory (${cdOffset})`);
    }
    if (localHeaderOffset + compressedSize > cdOffset) {
      fail(`${what}: its ${compressedSize} bytes of data at offset ${localHeaderOffset} overlap the central directory (corrupt archive)`);
    }
    if (out.has(name)) fail(`duplicate entry ${JSON.stringify(name)}`);
    out.set(name, { name, method, flags, crc32: crc, compressedSize, size, localHeaderOffset });
    p = next;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// CRC-32 (IEEE), for verifyCrc: node's zlib.crc32 where available (Node >= 20.15), else a table.
// ---------------------------------------------------------------------------------------------

let crcTable: Uint32Array | undefined;

export function crc32(data: Uint8Array): number {
  const native = (zlib as { crc32?: (d: Uint8Array, v?: number) => number }).crc32;
  if (typeof native === 'function') return native(data) >>> 0;
  if (!crcTable) {
    crcTable = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      crcTable[n] = c >>> 0;
    }
  }
  let c = 0xffffffff;
  for (let i = 0; i < data.length; i++) c = crcTable[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
