/**
 * torchvision weights through the torch.hub cache ($TORCH_HOME/hub/checkpoints), as
 * `torch.hub.load_state_dict_from_url(url, check_hash=True)` does it: the file keeps its URL's
 * name; a cached file is used as is; a download is checked against the SHA-256 prefix in its
 * name (`-<8+ hex digits>.` before the extension) and discarded on mismatch, atomically either
 * way (./download.ts). HF_HUB_OFFLINE also forbids these downloads.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { isOffline, torchHubCheckpointsDir } from './cache.js';
import { HubError, fetchToFile, type ProgressStream } from './download.js';
import { hashPrefixOf, type TorchvisionWeights } from './weights.js';

export interface TorchHubOptions {
  /** Folder for the file (default torchHubCheckpointsDir()). */
  modelDir?: string;
  /** Check the SHA-256 against the prefix in the file name (default true). */
  checkHash?: boolean;
  /** No network (default: HF_HUB_OFFLINE). */
  offline?: boolean;
  progress?: boolean | ProgressStream;
  removeOnSignal?: boolean;
  env?: Readonly<Record<string, string | undefined>>;
}

/** The local path of `url` in the torch hub cache, downloading it first if needed. */
export async function torchHubDownload(url: string, opts: TorchHubOptions = {}): Promise<string> {
  const env = opts.env ?? process.env;
  let name: string;
  try {
    name = decodeURIComponent(path.posix.basename(new URL(url).pathname));
  } catch {
    throw new HubError(`${JSON.stringify(url)} is not a URL`);
  }
  if (name === '' || name === '.' || name === '..' || name.includes('/') || name.includes('\\')) throw new HubError(`${url}: no file name in the URL`);
  const dir = opts.modelDir ?? torchHubCheckpointsDir(env);
  const file = path.join(dir, name);
  if (fs.existsSync(file)) return file;
  if (opts.offline ?? isOffline(env)) throw new HubError(`HF_HUB_OFFLINE is set (no network) and ${name} is not in the torch hub cache ${dir}`);
  const prefix = opts.checkHash === false ? undefined : hashPrefixOf(name);
  await fetchToFile(url, file, {
    label: name,
    ...(prefix !== undefined ? { sha256Prefix: prefix } : {}),
    ...(opts.progress !== undefined ? { progress: opts.progress } : {}),
    ...(opts.removeOnSignal ? { removeOnSignal: true } : {}),
  });
  return file;
}

/**
 * The local path of torchvision's weights file for `w`, downloaded into the torch hub cache if
 * needed. `baseUrl` replaces https://download.pytorch.org/models (a mirror, or a test server).
 */
export async function downloadTorchvisionWeights(w: TorchvisionWeights, opts: TorchHubOptions & { baseUrl?: string } = {}): Promise<string> {
  const url = opts.baseUrl !== undefined ? `${opts.baseUrl.replace(/\/+$/, '')}/${w.fileName}` : w.url;
  return torchHubDownload(url, opts);
}
