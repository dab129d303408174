/**
 * Which backend runs the kernels. The TypeScript reference is always registered; the native addon
 * registers itself when it loads and then becomes the default. `RESNET_BACKEND=ts|native`
 * overrides the choice at start-up (another name: the default, with a warning); `setBackend` at run
 * time.
 */
import { isMainThread } from 'node:worker_threads';
import { setLargeAllocator } from '../tensor/alloc.js';
import { UsageError } from '../errors.js';
import { tsKernels } from '../backends/ts/index.js';
import { loadBinding } from '../backends/native/binding.js';
import { nativeKernels, type NativeKernels } from '../backends/native/index.js';
import type { Kernels } from './kernels.js';

const backends = new Map<string, Kernels>([[tsKernels.name, tsKernels]]);
let active: Kernels = tsKernels;
let native: NativeKernels | null = null;

export function registerBackend(k: Kernels, makeDefault = true): void {
  backends.set(k.name, k);
  const wanted = process.env['RESNET_BACKEND'];
  if (wanted ? wanted === k.name : makeDefault) active = k;
}

export function listBackends(): string[] {
  return [...backends.keys()];
}

export function setBackend(name: string): void {
  const k = backends.get(name);
  if (!k) throw new UsageError(`unknown backend "${name}"; available: ${listBackends().join(', ')}`);
  active = k;
}

/** The kernels every op dispatches to. */
export function kernels(): Kernels {
  return active;
}

/** Runs `fn` with backend `name` active (tests compare backends this way). */
export function withBackend<T>(name: string, fn: () => T): T {
  const prev = active;
  setBackend(name);
  try {
    return fn();
  } finally {
    active = prev;
  }
}

/** The native backend, or null when the addon is not available. */
export function nativeBackend(): NativeKernels | null {
  return native;
}

/** The native thread pool's limit (MAX_THREADS in native/src/pool.c). */
export const MAX_THREADS = 64;

/** Whether n is a thread count the native pool takes: an integer from 1 to MAX_THREADS. */
export function isThreadCount(n: number): boolean {
  return Number.isInteger(n) && n >= 1 && n <= MAX_THREADS;
}

/** Threads the native kernels use (1 on the TypeScript backend, which is single-threaded), 1 to MAX_THREADS. */
export function setNumThreads(n: number): void {
  if (!isThreadCount(n)) throw new UsageError(`thread count must be an integer from 1 to ${MAX_THREADS}, got ${n}`);
  native?.setThreads(n);
}

export function getNumThreads(): number {
  return native ? native.getThreads() : 1;
}

/**
 * Warnings for environment variables this module reads whose values it cannot honour: a backend
 * name that is not registered (RESNET_BACKEND=Native had silently left the TypeScript kernels
 * active, ~100x slower), an instruction set that is not one (or that this CPU lacks), a thread
 * count outside 1 to MAX_THREADS. Each names what runs instead.
 */
export function envWarnings(env: NodeJS.ProcessEnv, registered: readonly string[], active: string, isa: string | null, threads: number | null): string[] {
  const out: string[] = [];
  const backend = env['RESNET_BACKEND'];
  if (backend !== undefined && backend !== '' && !registered.includes(backend) && !(backend === 'native' && isa === null)) {
    out.push(`RESNET_BACKEND=${backend} names no backend (registered: ${registered.join(', ')}); using ${active}`);
  }
  const want = env['RESNET_ISA'];
  if (isa !== null && want !== undefined && want !== '' && want !== isa) {
    out.push(
      ['avx512', 'avx2', 'portable'].includes(want)
        ? `RESNET_ISA=${want}: this CPU does not have it; the native kernels use ${isa}`
        : `RESNET_ISA=${want} is not avx512, avx2 or portable; the native kernels use ${isa}`,
    );
  }
  const n = env['RESNET_NUM_THREADS'];
  if (threads !== null && n !== undefined && n !== '' && (!/^\d+$/.test(n.trim()) || Number(n) < 1 || Number(n) !== threads)) {
    out.push(`RESNET_NUM_THREADS=${n} is not a thread count from 1 to ${MAX_THREADS}; the native kernels use ${threads}`);
  }
  return out;
}

// Load the addon once. Missing addon: everything works on the TypeScript reference, with one
// warning (unless the TypeScript backend was asked for explicitly).
{
  const { binding, error } = loadBinding();
  if (binding) {
    native = nativeKernels(binding);
    registerBackend(native);
    // large buffers on huge-page-advised memory of their own (RESNET_HUGE_PAGES=0: as usual)
    if (process.env['RESNET_HUGE_PAGES'] !== '0') setLargeAllocator((bytes) => binding.allocLarge(bytes));
  } else if (process.env['RESNET_BACKEND'] !== 'ts') {
    process.emitWarning(`${error}; using the TypeScript reference kernels (much slower)`, { code: 'RESNET_NO_NATIVE' });
  }
  const wanted = process.env['RESNET_BACKEND'];
  if (native && wanted !== undefined && wanted !== '' && !backends.has(wanted)) active = native; // the default, with a warning
  if (isMainThread) { // once, not again in every worker thread
    for (const w of envWarnings(process.env, listBackends(), active.name, native?.isa ?? null, native ? native.getThreads() : null)) {
      process.emitWarning(w, { code: 'RESNET_BAD_ENV' });
    }
  }
}
