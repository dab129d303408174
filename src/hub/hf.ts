/**
 * Hugging Face Hub downloads into the standard cache (see ./cache.ts for the layout), following
 * huggingface_hub's hf_hub_download closely enough that both read each other's caches:
 *
 * 1. A revision that is a commit id, with the file already in `snapshots/<commit>/`, is served
 *    from the cache without any request (also for files recorded in `.no_exist/<commit>/`).
 * 2. Offline (HF_HUB_OFFLINE=1, or the server unreachable), `refs/<revision>` gives the commit and
 *    the snapshot gives the file; a miss is a HubError that names what is missing.
 * 3. Online: `HEAD <endpoint>/<repo>/resolve/<revision>/<file>` without following absolute
 *    redirects (relative ones are followed: renamed repos). Its headers give the commit
 *    (X-Repo-Commit), the blob name (X-Linked-Etag or ETag, quotes and W/ stripped) and, for
 *    LFS files, a redirect to the storage URL. `refs/<revision>` is updated; a snapshot entry or a
 *    blob already present is reused; otherwise the file is downloaded (atomically) into
 *    `blobs/<etag>` and linked from `snapshots/<commit>/<file>` with a relative symlink (a copy
 *    where links are not possible). LFS files (64-hex X-Linked-Etag) are checked against their
 *    SHA-256. A 404 records `.no_exist/<commit>/<file>` when the server names the commit.
 *
 * Servers that send no X-Repo-Commit (simple mirrors) are accepted: the revision name is then
 * used as the snapshot folder; without an ETag, the blob is named by the content's SHA-256.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { hfEndpoint, hfHubCacheDir, hfToken, isCommitHash, isOffline, repoFolderName } from './cache.js';
import { HubError, fetchToFile, type ProgressStream } from './download.js';

type Env = Readonly<Record<string, string | undefined>>;

export interface HfHubOptions {
  /** Branch, tag or commit (default "main"). */
  revision?: string;
  /** Cache folder (default hfHubCacheDir()). */
  cacheDir?: string;
  /** Hub endpoint (default $HF_ENDPOINT or https://huggingface.co). */
  endpoint?: string;
  /** No network (default: HF_HUB_OFFLINE). */
  offline?: boolean;
  /** Bearer token (default $HF_TOKEN). Sent to the endpoint only, never to redirect targets. */
  token?: string;
  /** Progress on stderr for files actually downloaded (default false). */
  progress?: boolean | ProgressStream;
  /** Remove partial downloads on SIGINT/SIGTERM (for command-line use). */
  removeOnSignal?: boolean;
  /** Environment to read the defaults from (default process.env). */
  env?: Env;
}

/** The network could not be used (offline, or unreachable) and the cache does not have the file. */
export class HubCacheMiss extends HubError {}

/** What hfFile found: the snapshot path, or null when the file is known not to exist. */
export interface HfFileResult {
  path: string | null;
  /** The commit the file was resolved at (or the revision name when the server sent none). */
  commit: string;
  /** True when nothing was downloaded. */
  cached: boolean;
}

const REPO_ID = /^[A-Za-z0-9][A-Za-z0-9._-]*\/[A-Za-z0-9][A-Za-z0-9._-]*$/;

/** True for "org/name" Hub repo ids. */
export function isRepoId(s: string): boolean {
  return REPO_ID.test(s) && !s.includes('..') && !s.endsWith('.git');
}

function checkRepoId(repoId: string): void {
  if (!isRepoId(repoId)) throw new HubError(`${JSON.stringify(repoId)} is not a Hugging Face repo id (expected "org/name", e.g. microsoft/resnet-50)`);
}

function checkRelPath(what: string, p: string): void {
  const parts = p.split('/');
  if (p === '' || p.startsWith('/') || p.includes('\\') || parts.some((s) => s === '' || s === '.' || s === '..')) {
    throw new HubError(`invalid ${what} ${JSON.stringify(p)}`);
  }
}

function normalizeEtag(etag: string | null): string | undefined {
  if (etag === null) return undefined;
  const e = etag.trim().replace(/^W\//, '').replace(/^"(.*)"$/, '$1');
  // The blob's file name: refuse anything path-like.
  return /^[A-Za-z0-9._:+=-]+$/.test(e) && e !== '.' && e !== '..' ? e : undefined;
}

function readRef(storage: string, revision: string): string | undefined {
  try {
    const c = fs.readFileSync(path.join(storage, 'refs', ...revision.split('/')), 'utf8').trim();
    return c === '' ? undefined : c;
  } catch {
    return undefined;
  }
}

function writeFileAtomicSync(file: string, text: string): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}-${crypto.randomBytes(4).toString('hex')}.tmp`;
  try {
    fs.writeFileSync(tmp, text);
    fs.renameSync(tmp, file);
  } finally {
    fs.rmSync(tmp, { force: true });
  }
}

function writeRef(storage: string, revision: string, commit: string): void {
  if (revision === commit) return;
  if (readRef(storage, revision) === commit) return;
  writeFileAtomicSync(path.join(storage, 'refs', ...revision.split('/')), commit);
}

function snapshotPath(storage: string, commit: string, filename: string): string {
  return path.join(storage, 'snapshots', commit, ...filename.split('/'));
}

function noExistPath(storage: string, commit: string, filename: string): string {
  return path.join(storage, '.no_exist', commit, ...filename.split('/'));
}

/** Points snapshots/<commit>/<file> at the blob (relative symlink; a copy where links fail). */
function linkSnapshot(blob: string, pointer: string): void {
  fs.mkdirSync(path.dirname(pointer), { recursive: true });
  const tmp = `${pointer}.${process.pid}-${crypto.randomBytes(4).toString('hex')}.tmp`;
  try {
    try {
      fs.symlinkSync(path.relative(path.dirname(pointer), blob), tmp);
    } catch {
      fs.copyFileSync(blob, tmp);
    }
    fs.renameSync(tmp, pointer);
  } finally {
    fs.rmSync(tmp, { force: true });
  }
}

/** The cached copy of `filename` at `revision`, if the cache knows it (no network). */
export function cachedHfFile(repoId: string, filename: string, opts: HfHubOptions = {}): HfFileResult | undefined {
  const env = opts.env ?? process.env;
  const storage = path.join(opts.cacheDir ?? hfHubCacheDir(env), repoFolderName(repoId));
  const revision = opts.revision ?? 'main';
  const commit = isCommitHash(revision) ? revision : (readRef(storage, revision) ?? revision);
  const p = snapshotPath(storage, commit, filename);
  if (fs.existsSync(p)) return { path: p, commit, cached: true };
  if (fs.existsSync(noExistPath(storage, commit, filename))) return { path: null, commit, cached: true };
  return undefined;
}

interface HeadResult {
  status: number;
  headers: Headers;
  /** Absolute redirect target (the storage URL of an LFS file). */
  location?: string;
  /** The URL that answered (after relative redirects). */
  url: string;
}

/** How long a metadata (HEAD) request may take, as huggingface_hub's etag_timeout (10 s). */
const HEAD_TIMEOUT_MS = 10_000;

async function head(url: string, headers: Record<string, string>): Promise<HeadResult> {
  let u = url;
  for (let i = 0; i < 10; i++) {
    const res = await fetch(u, {
      method: 'HEAD',
      redirect: 'manual',
      headers: { ...headers, 'Accept-Encoding': 'identity' },
      signal: AbortSignal.timeout(HEAD_TIMEOUT_MS),
    });
    const loc = res.headers.get('location');
    if (res.status >= 300 && res.status < 400 && loc) {
      const relative = !/^[a-z][a-z0-9+.-]*:/i.test(loc) && !loc.startsWith('//');
      if (relative) {
        u = new URL(loc, u).toString();
        continue;
      }
      return { status: res.status, headers: res.headers, location: new URL(loc, u).toString(), url: u };
    }
    return { status: res.status, headers: res.headers, url: u };
  }
  throw new HubError(`${url}: too many redirects`);
}

function describeErr(e: unknown): string {
  const err = e as { cause?: { code?: string; message?: string }; message?: string; name?: string };
  if (err?.name === 'TimeoutError') return `no answer in ${HEAD_TIMEOUT_MS / 1000}s`;
  return String(err?.cause?.code ?? err?.cause?.message ?? err?.message ?? e).replace(/\s*[\r\n]+\s*/g, ' ');
}

/**
 * Resolves one file of a Hub model repo to a local path in the cache, downloading it if needed.
 * Returns `path: null` when the repo has no such file (HTTP 404 for the file, or a .no_exist
 * marker); every other problem is a HubError.
 */
export async function hfFile(repoId: string, filename: string, opts: HfHubOptions = {}): Promise<HfFileResult> {
  checkRepoId(repoId);
  checkRelPath('file name', filename);
  const env = opts.env ?? process.env;
  const revision = opts.revision ?? 'main';
  checkRelPath('revision', revision);
  const cacheDir = opts.cacheDir ?? hfHubCacheDir(env);
  const storage = path.join(cacheDir, repoFolderName(repoId));
  const offline = opts.offline ?? isOffline(env);

  // 1. A pinned commit already in the cache: no request at all.
  if (isCommitHash(revision)) {
    const hit = cachedHfFile(repoId, filename, { ...opts, cacheDir });
    if (hit) return hit;
  }
  const cachedOrThrow = (why: string): HfFileResult => {
    const hit = cachedHfFile(repoId, filename, { ...opts, cacheDir });
    if (hit) return hit;
    throw new HubCacheMiss(`${why}, and ${repoId}/${filename} (revision ${revision}) is not in the cache ${storage}`);
  };
  // 2. Offline.
  if (offline) return cachedOrThrow('HF_HUB_OFFLINE is set (no network)');

  // 3. Online.
  const endpoint = (opts.endpoint ?? hfEndpoint(env)).replace(/\/+$/, '');
  const url = `${endpoint}/${repoId}/resolve/${revision.split('/').map(encodeURIComponent).join('/')}/${filename.split('/').map(encodeURIComponent).join('/')}`;
  const token = opts.token ?? hfToken(env);
  const authHeaders: Record<string, string> = token ? { Authorization: `Bearer ${token}` } : {};
  let meta: HeadResult;
  try {
    meta = await head(url, authHeaders);
  } catch (e) {
    if (e instanceof HubError) throw e;
    // Like huggingface_hub: an unreachable server falls back to the cache.
    return cachedOrThrow(`cannot reach ${new URL(endpoint).host} (${describeErr(e)})`);
  }
  const commitHeader = meta.headers.get('x-repo-commit') ?? undefined;
  if (meta.status === 404 || meta.status === 401 || meta.status === 403) {
    const code = meta.headers.get('x-error-code');
    if (code === 'RepositoryNotFound' || code === 'GatedRepo' || meta.status !== 404) {
      const hint = token ? '' : ' (if it is private or gated, set HF_TOKEN)';
      const what = code === 'GatedRepo' ? 'is gated' : code === 'RepositoryNotFound' ? 'was not found' : `refused access (HTTP ${meta.status})`;
      throw new HubError(`repository ${repoId} ${what} at ${endpoint}${hint}`);
    }
    if (code === 'RevisionNotFound') throw new HubError(`repository ${repoId} has no revision ${JSON.stringify(revision)} at ${endpoint}`);
    // EntryNotFound (or a plain 404): the file does not exist at this revision.
    const commit = commitHeader ?? revision;
    if (commitHeader) {
      const marker = noExistPath(storage, commit, filename);
      fs.mkdirSync(path.dirname(marker), { recursive: true });
      fs.closeSync(fs.openSync(marker, 'a'));
      writeRef(storage, revision, commit);
    }
    return { path: null, commit, cached: false };
  }
  if (meta.status < 200 || meta.status >= 400) {
    throw new HubError(`${repoId}/${filename}: HTTP ${meta.status} from ${url}`);
  }
  const commit = commitHeader ?? revision;
  if (commitHeader !== undefined && !isCommitHash(commitHeader) && !/^[A-Za-z0-9._-]+$/.test(commitHeader)) {
    throw new HubError(`${url}: invalid X-Repo-Commit header ${JSON.stringify(commitHeader)}`);
  }
  const linked = normalizeEtag(meta.headers.get('x-linked-etag'));
  const etag = linked ?? normalizeEtag(meta.headers.get('etag'));
  const sizeHeader = meta.headers.get('x-linked-size') ?? (meta.status < 300 ? meta.headers.get('content-length') : null);
  const size = sizeHeader !== null && /^\d+$/.test(sizeHeader) ? Number(sizeHeader) : undefined;
  writeRef(storage, revision, commit);

  const pointer = snapshotPath(storage, commit, filename);
  if (fs.existsSync(pointer)) return { path: pointer, commit, cached: true };
  const blobs = path.join(storage, 'blobs');
  if (etag !== undefined) {
    const blob = path.join(blobs, etag);
    if (fs.existsSync(blob)) {
      linkSnapshot(blob, pointer);
      return { path: pointer, commit, cached: true };
    }
  }
  // Download. Only send the token to the endpoint's own origin.
  const target = meta.location ?? meta.url;
  const sameOrigin = new URL(target).origin === new URL(endpoint).origin;
  const dest = path.join(blobs, etag ?? `download-${process.pid}-${crypto.randomBytes(6).toString('hex')}`);
  const result = await fetchToFile(target, dest, {
    headers: sameOrigin ? authHeaders : {},
    label: `${repoId}/${filename}`,
    ...(linked !== undefined && /^[0-9a-f]{64}$/.test(linked) ? { sha256: linked } : {}),
    ...(size !== undefined ? { size } : {}),
    ...(opts.progress !== undefined ? { progress: opts.progress } : {}),
    ...(opts.removeOnSignal ? { removeOnSignal: true } : {}),
  });
  let blob = dest;
  if (etag === undefined) {
    blob = path.join(blobs, result.sha256);
    fs.renameSync(dest, blob);
  }
  linkSnapshot(blob, pointer);
  return { path: pointer, commit, cached: false };
}

/** The files that make up a transformers ResNet model repo, as resolved by hfModelSnapshot. */
export interface HfModelSnapshot {
  /** snapshots/<commit>: a folder readCheckpoint reads as a Hugging Face model folder. */
  dir: string;
  commit: string;
  /** Repo-relative names of the files present in `dir` (config, weights, preprocessor config if any). */
  files: string[];
  /** The preprocessor config's path, if the repo has one. */
  preprocessorConfig?: string;
  /** True when nothing was downloaded. */
  cached: boolean;
  /** Things worth telling the user (e.g. offline, whether a preprocessor config exists is unknown). */
  notes: string[];
}

const WEIGHT_FILES = ['model.safetensors', 'pytorch_model.bin'];
const INDEX_FILES = ['model.safetensors.index.json', 'pytorch_model.bin.index.json'];

/**
 * Resolves a transformers model repo (config.json; model.safetensors, else pytorch_model.bin,
 * else a sharded index and its shards; preprocessor_config.json if it exists) into one snapshot
 * folder of the cache, downloading what is missing. Everything is pinned to the commit that
 * config.json resolved to, so the files always belong together. Offline, a miss lists every
 * missing file.
 */
export async function hfModelSnapshot(repoId: string, opts: HfHubOptions = {}): Promise<HfModelSnapshot> {
  checkRepoId(repoId);
  const env = opts.env ?? process.env;
  const cacheDir = opts.cacheDir ?? hfHubCacheDir(env);
  const offline = opts.offline ?? isOffline(env);
  const revision = opts.revision ?? 'main';
  const storage = path.join(cacheDir, repoFolderName(repoId));
  if (offline) return offlineSnapshot(repoId, storage, revision, { ...opts, cacheDir });

  const config = await hfFile(repoId, 'config.json', { ...opts, cacheDir });
  if (config.path === null) throw new HubError(`${repoId} has no config.json (revision ${revision}); it is not a transformers model repo`);
  const pinned = { ...opts, cacheDir, revision: config.commit };
  let cached = config.cached;
  const files = ['config.json'];
  let found = false;
  for (const f of WEIGHT_FILES) {
    const r = await hfFile(repoId, f, pinned);
    cached &&= r.cached;
    if (r.path !== null) {
      files.push(f);
      found = true;
      break;
    }
  }
  if (!found) {
    for (const f of INDEX_FILES) {
      const r = await hfFile(repoId, f, pinned);
      cached &&= r.cached;
      if (r.path === null) continue;
      files.push(f);
      for (const shard of shardsOf(r.path)) {
        const s = await hfFile(repoId, shard, pinned);
        cached &&= s.cached;
        if (s.path === null) throw new HubError(`${repoId}: ${f} names the shard ${shard}, which does not exist`);
        files.push(shard);
      }
      found = true;
      break;
    }
  }
  if (!found) throw new HubError(`${repoId} has no weights (looked for ${[...WEIGHT_FILES, ...INDEX_FILES].join(', ')})`);
  const notes: string[] = [];
  let pre: HfFileResult = { path: null, commit: config.commit, cached: true };
  try {
    pre = await hfFile(repoId, 'preprocessor_config.json', pinned);
  } catch (e) {
    // The server went away after the weights came from the cache: run with the defaults, and say so.
    if (!(e instanceof HubCacheMiss)) throw e;
    notes.push(`${repoId}: whether the repo has a preprocessor_config.json is unknown (${e.message}); using ConvNextImageProcessor's defaults`);
  }
  cached &&= pre.cached;
  if (pre.path !== null) files.push('preprocessor_config.json');
  return {
    dir: path.join(storage, 'snapshots', config.commit),
    commit: config.commit,
    files,
    ...(pre.path !== null ? { preprocessorConfig: pre.path } : {}),
    cached,
    notes,
  };
}

function shardsOf(indexFile: string): string[] {
  let map: unknown;
  try {
    map = (JSON.parse(fs.readFileSync(indexFile, 'utf8')) as { weight_map?: unknown }).weight_map;
  } catch (e) {
    throw new HubError(`${indexFile}: not valid JSON (${(e as Error).message})`);
  }
  if (typeof map !== 'object' || map === null) throw new HubError(`${indexFile}: missing "weight_map"`);
  const shards = [...new Set(Object.values(map as Record<string, unknown>))];
  for (const s of shards) {
    if (typeof s !== 'string' || s !== path.basename(s) || s === '.' || s === '..') throw new HubError(`${indexFile}: invalid shard name ${JSON.stringify(s)}`);
  }
  return shards as string[];
}

function offlineSnapshot(repoId: string, storage: string, revision: string, opts: HfHubOptions): HfModelSnapshot {
  const prefix = `HF_HUB_OFFLINE is set (no network) and ${repoId} (revision ${revision})`;
  if (!fs.existsSync(storage)) throw new HubError(`${prefix} is not in the cache: ${storage} does not exist`);
  const commit = isCommitHash(revision) ? revision : (readRef(storage, revision) ?? revision);
  const have = (f: string): HfFileResult | undefined => cachedHfFile(repoId, f, { ...opts, revision: commit });
  const missing: string[] = [];
  const files: string[] = [];
  const config = have('config.json');
  if (config?.path) files.push('config.json');
  else missing.push('config.json');
  let weights = WEIGHT_FILES.find((f) => have(f)?.path);
  if (weights) files.push(weights);
  else {
    const index = INDEX_FILES.find((f) => have(f)?.path);
    if (index) {
      files.push(index);
      for (const s of shardsOf(have(index)!.path!)) {
        if (have(s)?.path) files.push(s);
        else missing.push(s);
      }
      weights = index;
    } else missing.push(WEIGHT_FILES.join(' or '));
  }
  if (missing.length) throw new HubError(`${prefix} is not fully cached in ${path.join(storage, 'snapshots', commit)}: missing ${missing.join(', ')}`);
  const pre = have('preprocessor_config.json');
  if (pre?.path) files.push('preprocessor_config.json');
  const notes =
    pre === undefined
      ? [`${repoId}: preprocessor_config.json is not in the cache and HF_HUB_OFFLINE is set, so whether the repo has one is unknown; using ConvNextImageProcessor's defaults`]
      : [];
  return {
    dir: path.join(storage, 'snapshots', commit),
    commit,
    files,
    ...(pre?.path ? { preprocessorConfig: pre.path } : {}),
    cached: true,
    notes,
  };
}
