/**
 * Expanding command-line inputs into image files: a file is taken as given (and must decode as
 * an image); a folder contributes every file with an image extension inside it, recursively,
 * in sorted order (code-point order of the path relative to the folder), skipping hidden entries
 * (names starting with ".") and not following linked folders. A folder with no images is an error, as is a missing path.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FormatError } from '../errors.js';
import { IMAGE_EXTENSIONS } from './decode.js';

export function isImageFileName(name: string): boolean {
  return IMAGE_EXTENSIONS.includes(path.extname(name).toLowerCase());
}

function walk(dir: string, rel: string, out: string[]): void {
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(path.join(dir, rel), { withFileTypes: true });
  } catch (e) {
    throw new FormatError(`${path.join(dir, rel)}: cannot list the folder (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  const names = entries.filter((e) => !e.name.startsWith('.')).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const e of names) {
    const r = rel === '' ? e.name : path.join(rel, e.name);
    let isDir = e.isDirectory();
    let isFile = e.isFile();
    if (e.isSymbolicLink()) {
      // Linked files count; linked folders are not followed (no cycles).
      isDir = false;
      isFile = fs.statSync(path.join(dir, r), { throwIfNoEntry: false })?.isFile() ?? false;
    }
    if (isDir) walk(dir, r, out);
    else if (isFile && isImageFileName(e.name)) out.push(path.join(dir, r));
  }
}

/** The image files named by `inputs` (files and folders), in order; folders expanded sorted. */
export function listImageFiles(inputs: readonly string[]): string[] {
  const out: string[] = [];
  for (const p of inputs) {
    const st = fs.statSync(p, { throwIfNoEntry: false });
    if (!st) throw new FormatError(`file not found: ${p}`);
    if (st.isDirectory()) {
      const found: string[] = [];
      walk(p, '', found);
      if (found.length === 0) throw new FormatError(`${p}: the folder has no images (${IMAGE_EXTENSIONS.join(' ')})`);
      out.push(...found);
    } else {
      out.push(p);
    }
  }
  return out;
}
