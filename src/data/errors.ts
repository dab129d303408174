/**
 * Errors of the data layer. Both are ResnetErrors (the CLI prints them as one line):
 *  - DatasetNotFoundError: a dataset is nowhere to be found; the message names every place looked
 *    in (and why each did not qualify) and how to fix it;
 *  - DownloadError: fetching a file failed (network, HTTP status, truncated body, checksum).
 * Malformed files are FormatErrors (../errors.ts), naming the file and what is wrong.
 */
import { ResnetError } from '../errors.js';

export class DatasetNotFoundError extends ResnetError {}

export class DownloadError extends ResnetError {}
