/**
 * Downloads with atomic writes and checksums, and the project cache folder.
 *
 * downloadFile(url, dest, { md5 | sha256 }) streams the body into a temporary file next to `dest`
 * (`dest.part-<pid>-<random>`), hashing as it goes; only when the body is complete (the length the
 * server announced, the connection not dropped) and the checksum matches is the file fsynced and
 * renamed onto `dest`, so `dest` is either absent or whole. On any failure the temporary file is
 * removed and a DownloadError names the URL and what went wrong. Redirects (301/302/303/307/308)
 * are followed (at most 5); a connection idle for `timeoutMs` (default 60 s) is abandoned.
 * Plain http: and https: only; proxies (HTTP_PROXY) are not supported.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as os from 'node:os';
import * as path from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
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

const MAX_REDIRECTS = 5;

function errText(e: unknown): string {
  if (e instanceof Error) {
    const code = (e as NodeJS.ErrnoException).code;
    return code && !e.message.includes(code) ? `${e.message} (${code})` : e.message;
  }
  return String(e);
}

/** Downloads `url` to `dest` atomically, verifying the checksum(s) given. See the module comment. */
export async function downloadFile(url: string, dest: string, opts: DownloadOptions = {}): Promise<DownloadResult> {
  const timeoutMs = opts.timeoutMs ?? 60_000;
  const created = fs.mkdirSync(path.dirname(dest), { recursive: true });
  const tmp = `${dest}.part-${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
  try {
    const r = await fetchTo(url, tmp, timeoutMs, opts.log, 0);
    if (opts.size !== undefined && r.bytes !== opts.size) {
      throw new DownloadError(`${url}: got ${r.bytes} bytes, expected ${opts.size}`);
    }
    if (opts.md5 !== undefined && r.md5 !== opts.md5.toLowerCase()) {
      throw new DownloadError(`${url}: md5 mismatch: expected ${opts.md5.toLowerCase()}, got ${r.md5} (corrupt download or a mirror serving a different file)`);
    }
    if (opts.sha256 !== undefined && r.sha256 !== opts.sha256.toLowerCase()) {
      throw new DownloadError(`${url}: sha256 mismatch: expected ${opts.sha256.toLowerCase()}, got ${r.sha256} (corrupt download or a mirror serving a different file)`);
    }
    const fd = fs.openSync(tmp, 'r+');
    try {
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, dest);
    opts.log?.(`saved ${dest} (${r.bytes} bytes)`);
    return { ...r, path: dest };
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    removeEmptyDirs(path.dirname(dest), created);
    if (e instanceof DownloadError) throw e;
    throw new DownloadError(`downloading ${url} failed: ${errText(e)}`);
  }
}

/** Removes `dir` and its parents up to `top` (the first folder mkdir created) while they are empty. */
function removeEmptyDirs(dir: string, top: string | undefined): void {
  if (top === undefined) return;
  for (let d = path.resolve(dir); ; d = path.dirname(d)) {
    try {
      fs.rmdirSync(d);
    } catch {
      return; // not empty (or gone)
    }
    if (d === path.resolve(top) || path.dirname(d) === d) return;
  }
}

async function fetchTo(
  url: string,
  file: string,
  timeoutMs: number,
  log: ((msg: string) => void) | undefined,
  redirects: number,
): Promise<{ bytes: number; md5: string; sha256: string }> {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new DownloadError(`not a valid URL: ${url}`);
  }
  const mod = u.protocol === 'https:' ? https : u.protocol === 'http:' ? http : null;
  if (mod === null) throw new DownloadError(`${url}: only http: and https: URLs are supported`);

  let timedOut = false;
  const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
    const req = mod.get(u, { agent: false, headers: { 'user-agent': 'resnet-ts' } }, resolve);
    req.setTimeout(timeoutMs, () => {
      timedOut = true;
      req.destroy(new DownloadError(`${url}: no response for ${timeoutMs / 1000} s`));
    });
    req.on('error', reject);
  });
  const status = res.statusCode ?? 0;
  if ([301, 302, 303, 307, 308].includes(status)) {
    res.resume();
    const loc = res.headers.location;
    if (!loc) throw new DownloadError(`${url}: HTTP ${status} redirect without a Location header`);
    if (redirects >= MAX_REDIRECTS) throw new DownloadError(`${url}: more than ${MAX_REDIRECTS} redirects`);
    return fetchTo(new URL(loc, u).toString(), file, timeoutMs, log, redirects + 1);
  }
  if (status !== 200) {
    res.resume();
    throw new DownloadError(`${url}: HTTP ${status} ${res.statusMessage ?? ''}`.trimEnd());
  }
  const lenHeader = res.headers['content-length'];
  const announced = lenHeader !== undefined ? Number(lenHeader) : undefined;
  log?.(`downloading ${url}${announced !== undefined ? ` (${(announced / 2 ** 20).toFixed(1)} MiB)` : ''} ...`);
  const md5 = crypto.createHash('md5');
  const sha = crypto.createHash('sha256');
  let bytes = 0;
  const tap = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      md5.update(chunk);
      sha.update(chunk);
      bytes += chunk.length;
      cb(null, chunk);
    },
  });
  // The socket timeout set on the request keeps applying while the body streams.
  try {
    await pipeline(res, tap, fs.createWriteStream(file));
  } catch (e) {
    const of = announced !== undefined ? ` of ${announced}` : '';
    if (timedOut) throw new DownloadError(`${url}: no data for ${timeoutMs / 1000} s after ${bytes}${of} bytes`);
    if (!res.complete) throw new DownloadError(`${url}: connection lost after ${bytes}${of} bytes (${errText(e)})`);
    throw e;
  }
  if (!res.complete) throw new DownloadError(`${url}: connection closed after ${bytes} bytes, before the end of the body`);
  if (announced !== undefined && bytes !== announced) {
    throw new DownloadError(`${url}: connection closed after ${bytes} of ${announced} bytes`);
  }
  return { bytes, md5: md5.digest('hex'), sha256: sha.digest('hex') };
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
