/**
 * Dataset downloads and the project cache folder.
 *
 * downloadFile(url, dest, { md5 | sha256 }) is the shared downloader (src/util/download.ts) with
 * DownloadError as its error class: the body streams into a temporary file next to `dest`, hashed
 * as it arrives; only a complete body whose checksum matches is fsynced and renamed onto `dest`, so
 * `dest` is either absent or whole. A connection idle for `timeoutMs` (default 60 s) is abandoned.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { fetchToFile } from '../util/download.js';
import { DownloadError } from './errors.js';

/**
 * The project cache folder: $RESNET_CACHE, else $XDG_CACHE_HOME/resnet-ts, else
 * ~/.cache/resnet-ts. Datasets are cached in sub-folders (fashion-mnist, cifar-10-batches-bin).
 */
export function cacheRoot(env: NodeJS.ProcessEnv = process.env): string {
  if (env['RESNET_CACHE']) return path.resolve(env['RESNET_CACHE']);
  const base = env['XDG_CACHE_HOME'] || path.join(os.homedir(), '.cache');
  return path.join(base, 'resnet-ts');
}

export interface DownloadOptions {
  /** Expected MD5 of the whole body, lowercase hex. */
  md5?: string;
  /** Expected SHA-256 of the whole body, lowercase hex. */
  sha256?: string;
  /** Expected size in bytes (checked in addition to the server's Content-Length). */
  size?: number;
  /** Abandon the transfer when no data arrives for this long (ms, default 60000). */
  timeoutMs?: number;
  /** Progress messages (default: none). */
  log?: (msg: string) => void;
}

export interface DownloadResult {
  path: string;
  bytes: number;
  md5: string;
  sha256: string;
}

/** Downloads `url` to `dest` atomically, verifying the checksum(s) given (the shared downloader of
 * src/util/download.ts, throwing DownloadErrors). */
export async function downloadFile(url: string, dest: string, opts: DownloadOptions = {}): Promise<DownloadResult> {
  opts.log?.(`downloading ${url} ...`);
  const r = await fetchToFile(url, dest, {
    label: url,
    errorClass: DownloadError,
    ...(opts.md5 !== undefined ? { md5: opts.md5 } : {}),
    ...(opts.sha256 !== undefined ? { sha256: opts.sha256 } : {}),
    ...(opts.size !== undefined ? { size: opts.size } : {}),
    ...(opts.timeoutMs !== undefined ? { idleTimeoutMs: opts.timeoutMs } : {}),
  });
  opts.log?.(`saved ${dest} (${r.bytes} bytes)`);
  return { path: dest, bytes: r.bytes, md5: r.md5, sha256: r.sha256 };
}

/** MD5 of a file (hex), streaming. */
export async function md5File(file: string): Promise<string> {
  const h = crypto.createHash('md5');
  await pipeline(fs.createReadStream(file), h);
  return h.digest('hex');
}

/** Writes `data` to `file` atomically (temporary file + rename). */
export function writeFileAtomic(file: string, data: Uint8Array): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.part-${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
  try {
    fs.writeFileSync(tmp, data);
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    throw e;
  }
}
