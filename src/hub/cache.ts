/**
 * Where downloads live, following the two ecosystems' conventions so that their caches are
 * shared with Python:
 *
 * - Hugging Face Hub (huggingface_hub's constants): `$HF_HUB_CACHE`, else the legacy
 *   `$HUGGINGFACE_HUB_CACHE`, else `$HF_HOME/hub`, with HF_HOME defaulting to
 *   `$XDG_CACHE_HOME/huggingface` or `~/.cache/huggingface`. Inside it, one folder per repo
 *   (`models--org--name`) holding `refs/<revision>` (the commit a branch or tag pointed to),
 *   `blobs/<etag>` (file contents, named by the server's ETag: the SHA-256 for LFS files, the git
 *   blob SHA-1 for small ones), `snapshots/<commit>/<file>` (relative symlinks into blobs/) and
 *   `.no_exist/<commit>/<file>` (empty markers for files known not to exist).
 * - torch.hub: `$TORCH_HOME/hub/checkpoints`, TORCH_HOME defaulting to `$XDG_CACHE_HOME/torch`
 *   or `~/.cache/torch`, files under their URL's last path segment.
 *
 * HF_HUB_OFFLINE is true for "1", "ON", "YES" or "TRUE" (any case), as huggingface_hub reads it.
 */
import * as os from 'node:os';
import * as path from 'node:path';

type Env = Readonly<Record<string, string | undefined>>;

function expandUser(p: string): string {
  if (p === '~') return os.homedir();
  if (p.startsWith('~/')) return path.join(os.homedir(), p.slice(2));
  return p;
}

function nonEmpty(v: string | undefined): string | undefined {
  return v !== undefined && v !== '' ? v : undefined;
}

function xdgCache(env: Env): string {
  return expandUser(nonEmpty(env['XDG_CACHE_HOME']) ?? '~/.cache');
}

/** $HF_HOME (default $XDG_CACHE_HOME/huggingface or ~/.cache/huggingface). */
export function hfHome(env: Env = process.env): string {
  return path.resolve(expandUser(nonEmpty(env['HF_HOME']) ?? path.join(xdgCache(env), 'huggingface')));
}

/** The Hugging Face Hub cache folder. */
export function hfHubCacheDir(env: Env = process.env): string {
  const explicit = nonEmpty(env['HF_HUB_CACHE']) ?? nonEmpty(env['HUGGINGFACE_HUB_CACHE']);
  return explicit !== undefined ? path.resolve(expandUser(explicit)) : path.join(hfHome(env), 'hub');
}

/** $TORCH_HOME (default $XDG_CACHE_HOME/torch or ~/.cache/torch). */
export function torchHome(env: Env = process.env): string {
  return path.resolve(expandUser(nonEmpty(env['TORCH_HOME']) ?? path.join(xdgCache(env), 'torch')));
}

/** torch.hub's checkpoint folder: $TORCH_HOME/hub/checkpoints. */
export function torchHubCheckpointsDir(env: Env = process.env): string {
  return path.join(torchHome(env), 'hub', 'checkpoints');
}

/** True when HF_HUB_OFFLINE asks for no network at all. */
export function isOffline(env: Env = process.env): boolean {
  const v = env['HF_HUB_OFFLINE'];
  return v !== undefined && ['1', 'ON', 'YES', 'TRUE'].includes(v.trim().toUpperCase());
}

/** The Hub endpoint: $HF_ENDPOINT or https://huggingface.co (no trailing slash). */
export function hfEndpoint(env: Env = process.env): string {
  return (nonEmpty(env['HF_ENDPOINT']) ?? 'https://huggingface.co').replace(/\/+$/, '');
}

/** A Hub token from $HF_TOKEN (or the legacy $HUGGING_FACE_HUB_TOKEN), for gated or private repos. */
export function hfToken(env: Env = process.env): string | undefined {
  return nonEmpty(env['HF_TOKEN']) ?? nonEmpty(env['HUGGING_FACE_HUB_TOKEN']);
}

/** "org/name" -> "models--org--name" (huggingface_hub's repo_folder_name for models). */
export function repoFolderName(repoId: string): string {
  return `models--${repoId.split('/').join('--')}`;
}

/** True for a 40-hex-digit git commit id. */
export function isCommitHash(s: string): boolean {
  return /^[0-9a-f]{40}$/.test(s);
}
