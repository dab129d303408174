/**
 * Downloads of pretrained weights: the shared downloader (src/util/download.ts) with HubError as
 * its error class.
 */
import { ResnetError } from '../errors.js';
import { fetchToFile as fetchAny, type FetchResult, type FetchToFileOptions } from '../util/download.js';

export { DownloadProgress, formatBytes, type FetchResult, type FetchToFileOptions, type ProgressStream } from '../util/download.js';

/** A download, cache or offline problem (network errors, HTTP errors, hash mismatches, cache misses). */
export class HubError extends ResnetError {}

/** fetchToFile of src/util/download.ts, throwing HubErrors. */
export function fetchToFile(url: string, dest: string, opts: Omit<FetchToFileOptions, 'errorClass'> = {}): Promise<FetchResult> {
  return fetchAny(url, dest, { ...opts, errorClass: HubError });
}
