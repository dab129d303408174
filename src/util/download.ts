/**
 * The one downloader of resnet-ts (pretrained weights in src/hub, datasets in src/data).
 *
 * HTTP(S) downloads, atomically: the body streams into a temporary file next to the destination
 * (`<dest>.<pid>-<random>.incomplete`), hashed (SHA-256 and MD5) as it arrives; only a complete
 * body (as long as the server's Content-Length, the connection not dropped) whose hash matches
 * what was expected is fsynced and renamed onto the destination. On any failure the temporary
 * file (and any folder the download created) is removed and a one-line error of the caller's class
 * (`errorClass`: the hub's for weights, the data layer's for datasets) says what went wrong, so the
 * destination is either absent or whole. (A process killed mid-download can leave an `.incomplete`
 * file behind; it is never read and is overwritten by name on the next try. With `removeOnSignal`,
 * SIGINT and SIGTERM remove it before the process ends as it would have.)
 *
 * Uses Node's built-in fetch (undici), which follows redirects. Plain http: and https: only;
 * proxies from HTTP(S)_PROXY are not used.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ResnetError } from '../errors.js';

// ---------------------------------------------------------------------------------------------
// Progress
// ---------------------------------------------------------------------------------------------

export interface ProgressStream {
  write(s: string): unknown;
  isTTY?: boolean;
}

export function formatBytes(n: number): string {
  if (n < 1000) return `${n} B`;
  const units = ['kB', 'MB', 'GB', 'TB'];
  let v = n;
  let i = -1;
  do {
    v /= 1000;
    i++;
  } while (v >= 1000 && i < units.length - 1);
  return `${v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0)} ${units[i]}`;
}

function formatSeconds(s: number): string {
  if (!Number.isFinite(s) || s < 0) return '?';
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)}s`;
  const m = Math.floor(s / 60);
  return `${m}m${String(Math.floor(s % 60)).padStart(2, '0')}s`;
}

/**
 * Download progress on stderr: on a terminal, one line redrawn at most 10 times a second
 * (bar, percent, bytes, speed, time left); otherwise a single line when the download ends.
 */
export class DownloadProgress {
  private readonly start = performance.now();
  private lastDraw = 0;
  private drawn = false;
  private done = 0;

  constructor(
    private readonly label: string,
    private readonly total: number | undefined,
    private readonly stream: ProgressStream = process.stderr,
  ) {}

  private get tty(): boolean {
    return Boolean(this.stream.isTTY);
  }

  update(done: number): void {
    this.done = done;
    if (!this.tty) return;
    const now = performance.now();
    if (now - this.lastDraw < 100) return;
    this.lastDraw = now;
    this.draw(now);
  }

  private draw(now: number): void {
    const secs = (now - this.start) / 1000;
    const speed = this.done / Math.max(secs, 1e-3);
    let line: string;
    if (this.total !== undefined && this.total > 0) {
      const frac = Math.min(1, this.done / this.total);
      const width = 20;
      const filled = Math.round(frac * width);
      const eta = speed > 0 ? (this.total - this.done) / speed : Infinity;
      line = `${this.label} ${'#'.repeat(filled)}${'.'.repeat(width - filled)} ${(frac * 100).toFixed(0).padStart(3)}% ${formatBytes(this.done)}/${formatBytes(this.total)} ${formatBytes(speed)}/s ETA ${formatSeconds(eta)}`;
    } else {
      line = `${this.label} ${formatBytes(this.done)} ${formatBytes(speed)}/s`;
    }
    this.stream.write(`\r\x1b[2K${line}`);
    this.drawn = true;
  }

  /** The final line: "<label>: 102 MB in 3.2s (32 MB/s)". */
  finish(): void {
    const secs = (performance.now() - this.start) / 1000;
    const line = `${this.label}: ${formatBytes(this.done)} in ${formatSeconds(secs)} (${formatBytes(this.done / Math.max(secs, 1e-3))}/s)`;
    this.stream.write(this.tty ? `\r\x1b[2K${line}\n` : `${line}\n`);
  }

  /** Ends a drawn bar (on failure) so the error starts on its own line. */
  abort(): void {
    if (this.tty && this.drawn) this.stream.write('\n');
  }
}

// ---------------------------------------------------------------------------------------------
// Download
// ---------------------------------------------------------------------------------------------

export interface FetchToFileOptions {
  headers?: Record<string, string>;
  /** Expected MD5 of the body (lowercase hex; the checksums datasets publish). */
  md5?: string;
  /** Expected SHA-256 of the body (lowercase hex). */
  sha256?: string;
  /** Expected prefix of the body's SHA-256 (torch.hub's check_hash). */
  sha256Prefix?: string;
  /** Expected size in bytes (in addition to Content-Length). */
  size?: number;
  /** Show progress on stderr (see DownloadProgress). Default false. */
  progress?: boolean | ProgressStream;
  /** Name shown in progress and errors (default: the URL). */
  label?: string;
  /** Abandon the transfer when no data arrives for this long (ms, default 60000). */
  idleTimeoutMs?: number;
  /** Remove the temporary file on SIGINT/SIGTERM, then end the process as the signal would. */
  removeOnSignal?: boolean;
  /** Class of the errors thrown (default ResnetError). */
  errorClass?: new (message: string) => ResnetError;
}

export interface FetchResult {
  bytes: number;
  sha256: string;
  md5: string;
  headers: Headers;
}

function causeOf(e: unknown): string {
  const err = e as { cause?: { code?: string; message?: string }; code?: string; message?: string; name?: string };
  const c = err?.cause;
  const s = c?.code ?? c?.message ?? err?.code ?? err?.message ?? String(e);
  return String(s).replace(/\s*[\r\n]+\s*/g, ' ');
}

function httpStatusText(status: number, statusText: string): string {
  return `HTTP ${status}${statusText ? ` ${statusText}` : ''}`;
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

/** Downloads `url` to `dest` atomically (see the module comment); returns size, SHA-256 and MD5. */
export async function fetchToFile(url: string, dest: string, opts: FetchToFileOptions = {}): Promise<FetchResult> {
  const Err = opts.errorClass ?? ResnetError;
  const label = opts.label ?? url;
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new Err(`${label}: not a valid URL: ${url}`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Err(`${label}: only http: and https: URLs are supported, got ${url}`);
  const dir = path.dirname(dest);
  let created: string | undefined;
  try {
    created = fs.mkdirSync(dir, { recursive: true });
  } catch (e) {
    throw new Err(`cannot create the folder ${dir} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  const tmp = `${dest}.${process.pid}-${crypto.randomBytes(4).toString('hex')}.incomplete`;
  const idle = opts.idleTimeoutMs ?? 60_000;
  const ac = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  let bytes = 0;
  let total: number | undefined;
  const arm = (): void => {
    if (timer) clearTimeout(timer);
    timer = setTimeout(() => {
      const of = total !== undefined ? ` of ${total}` : '';
      ac.abort(new Err(`${label}: no data for ${idle / 1000} s after ${bytes}${of} bytes from ${url}`));
    }, idle);
  };
  const stream: ProgressStream | undefined = opts.progress === true ? process.stderr : opts.progress ? opts.progress : undefined;
  let progress: DownloadProgress | undefined;
  let fh: fs.promises.FileHandle | undefined;
  const onSignal = (sig: NodeJS.Signals): void => {
    try {
      fs.rmSync(tmp, { force: true });
    } catch {
      // best effort
    }
    process.removeListener('SIGINT', onSignal);
    process.removeListener('SIGTERM', onSignal);
    process.kill(process.pid, sig);
  };
  if (opts.removeOnSignal) {
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
  }
  try {
    arm();
    let res: Response;
    try {
      res = await fetch(url, { headers: opts.headers ?? {}, redirect: 'follow', signal: ac.signal });
    } catch (e) {
      if (ac.signal.aborted && ac.signal.reason instanceof Err) throw ac.signal.reason;
      throw new Err(`${label}: cannot reach ${u.host} (${causeOf(e)})`);
    }
    if (!res.ok) {
      await res.body?.cancel().catch(() => undefined);
      const what = res.status === 404 ? 'not found (HTTP 404)' : httpStatusText(res.status, res.statusText);
      throw new Err(`${label}: ${what} at ${url}`);
    }
    const lenHeader = res.headers.get('content-length');
    const announced = lenHeader !== null && /^\d+$/.test(lenHeader) ? Number(lenHeader) : undefined;
    total = announced ?? opts.size;
    if (stream) progress = new DownloadProgress(`downloading ${label}`, total, stream);
    const hash = crypto.createHash('sha256');
    const md5 = crypto.createHash('md5');
    fh = await fs.promises.open(tmp, 'wx');
    if (res.body) {
      try {
        for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
          arm();
          hash.update(chunk);
          md5.update(chunk);
          let off = 0;
          while (off < chunk.length) {
            const { bytesWritten } = await fh.write(chunk, off, chunk.length - off);
            off += bytesWritten;
          }
          bytes += chunk.length;
          progress?.update(bytes);
        }
      } catch (e) {
        if (ac.signal.aborted && ac.signal.reason instanceof Err) throw ac.signal.reason;
        if (e instanceof ResnetError) throw e;
        const of = total !== undefined ? ` of ${total}` : '';
        throw new Err(`${label}: the download broke off after ${bytes}${of} bytes (${causeOf(e)})`);
      }
    }
    if (announced !== undefined && bytes !== announced) {
      throw new Err(`${label}: the connection closed after ${bytes} of ${announced} bytes`);
    }
    if (opts.size !== undefined && bytes !== opts.size) {
      throw new Err(`${label}: expected ${opts.size} bytes, got ${bytes}`);
    }
    const digest = hash.digest('hex');
    const md5Digest = md5.digest('hex');
    if (opts.sha256 !== undefined && digest !== opts.sha256.toLowerCase()) {
      throw new Err(`${label}: SHA-256 mismatch (expected ${opts.sha256}, got ${digest}); the download was discarded`);
    }
    if (opts.md5 !== undefined && md5Digest !== opts.md5.toLowerCase()) {
      throw new Err(`${label}: MD5 mismatch (expected ${opts.md5}, got ${md5Digest}); the download was discarded`);
    }
    if (opts.sha256Prefix !== undefined && !digest.startsWith(opts.sha256Prefix.toLowerCase())) {
      throw new Err(`${label}: invalid hash value (the file name promises SHA-256 ${opts.sha256Prefix}..., got ${digest.slice(0, 16)}...); the download was discarded`);
    }
    await fh.sync();
    await fh.close();
    fh = undefined;
    fs.renameSync(tmp, dest);
    progress?.finish();
    return { bytes, sha256: digest, md5: md5Digest, headers: res.headers };
  } catch (e) {
    progress?.abort();
    if (fh) await fh.close().catch(() => undefined);
    try {
      fs.rmSync(tmp, { force: true });
    } catch {
      // best effort: the original error is the one to report
    }
    removeEmptyDirs(dir, created);
    if (e instanceof ResnetError) throw e;
    const code = (e as NodeJS.ErrnoException).code;
    throw new Err(`${label}: cannot write ${dest} (${code ?? causeOf(e)})`);
  } finally {
    if (timer) clearTimeout(timer);
    if (opts.removeOnSignal) {
      process.removeListener('SIGINT', onSignal);
      process.removeListener('SIGTERM', onSignal);
    }
  }
}
