/**
 * Finding a dataset folder on disk. Every dataset with files on disk (Fashion-MNIST, CIFAR-10)
 * is looked for in this order, the first folder that has all the files of the requested split
 * winning:
 *
 *   1. `dir` (the CLI's --data DIR): DIR itself, then DIR/<sub> for each of the dataset's usual
 *      sub-folder names. When `dir` is given, nothing else is searched (and a download goes there).
 *   2. $<SPECIFIC_ENV> (RESNET_DATA_FASHION_MNIST, RESNET_DATA_CIFAR10): that folder itself.
 *   3. $RESNET_DATA/<sub>: a general data folder with one sub-folder per dataset
 *      (fashion-mnist, cifar-10-batches-bin).
 *   4. the project cache: cacheRoot()/<sub> ($RESNET_CACHE, else ~/.cache/resnet-ts).
 *   5. system folders (/usr/share/datasets/fashion-mnist: Debian's dataset-fashion-mnist).
 *
 * When none qualifies the caller downloads (into `dir`, else $<SPECIFIC_ENV>, else
 * $RESNET_DATA/<sub>, else the cache) or throws a DatasetNotFoundError listing every place and why
 * it did not qualify.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { cacheRoot } from './download.js';

export interface LocateSpec {
  /** The dataset's name in messages ("Fashion-MNIST"). */
  name: string;
  /** Explicit folder (--data). */
  dir?: string;
  /** Dataset-specific environment variable. */
  env: string;
  /** Sub-folder name under $RESNET_DATA and the cache (first one is the download target). */
  sub: string;
  /** Sub-folders of an explicit `dir` also searched (besides `dir` itself). */
  dirSubs: string[];
  /** System folders searched last. */
  systemDirs: string[];
  /** Override of the cache root (tests; default cacheRoot()). */
  cacheDir?: string;
  /** Returns null when `folder` has what is needed, else a short reason ("missing x, y"). */
  check: (folder: string) => string | null;
}

export interface Located {
  /** The folder with the files, or null when none qualified. */
  found: string | null;
  /** Every place looked in, as "label (reason)" lines (for error messages). */
  looked: string[];
  /** Where to download to when nothing was found. */
  target: string;
}

function describe(folder: string, check: (f: string) => string | null): string | null {
  let st: fs.Stats;
  try {
    st = fs.statSync(folder);
  } catch {
    return 'no such folder';
  }
  if (!st.isDirectory()) return 'not a folder';
  return check(folder);
}

export function locateDataset(spec: LocateSpec, env: NodeJS.ProcessEnv = process.env): Located {
  const looked: string[] = [];
  const tryDir = (folder: string, label: string): boolean => {
    const why = describe(folder, spec.check);
    if (why === null) return true;
    looked.push(`${label}${label === folder ? '' : ` = ${folder}`} (${why})`);
    return false;
  };
  if (spec.dir !== undefined) {
    const dir = path.resolve(spec.dir);
    for (const f of [dir, ...spec.dirSubs.map((s) => path.join(dir, s))]) {
      if (tryDir(f, f)) return { found: f, looked, target: dir };
    }
    return { found: null, looked: looked.map((l) => `--data ${l}`), target: dir };
  }
  const specific = env[spec.env];
  if (specific) {
    if (tryDir(path.resolve(specific), `$${spec.env}`)) return { found: path.resolve(specific), looked, target: path.resolve(specific) };
  } else looked.push(`$${spec.env} (not set)`);
  const general = env['RESNET_DATA'];
  if (general) {
    const f = path.join(path.resolve(general), spec.sub);
    if (tryDir(f, `$RESNET_DATA/${spec.sub}`)) return { found: f, looked, target: f };
  } else looked.push('$RESNET_DATA (not set)');
  const cache = path.join(spec.cacheDir ?? cacheRoot(env), spec.sub);
  if (tryDir(cache, cache)) return { found: cache, looked, target: cache };
  for (const s of spec.systemDirs) if (tryDir(s, s)) return { found: s, looked, target: cache };
  const target = specific ? path.resolve(specific) : general ? path.join(path.resolve(general), spec.sub) : cache;
  return { found: null, looked, target };
}

/** "name" or "name.gz", whichever exists in `folder` (the uncompressed one preferred), else null. */
export function findMaybeGz(folder: string, name: string): string | null {
  for (const n of [name, `${name}.gz`]) {
    const f = path.join(folder, n);
    try {
      if (fs.statSync(f).isFile()) return f;
    } catch {
      /* absent */
    }
  }
  return null;
}
