/**
 * Where large float buffers that live long come from: by default `new Float32Array`; the native
 * backend installs an allocator that maps them on memory of their own, 2 MB-aligned and advised for
 * transparent huge pages (native/src/addon.c, allocLarge), since the kernels stream such buffers
 * whole and on 4 KB pages a stream pays a page walk every 64 cache lines. Used for parameters
 * (Module.addParameter), the optimizers' state, and the inference plan's pooled activations and
 * packed weights; not for the activations and gradients of a step (uninitialized()): the mappings
 * are unmapped by Node-API finalizers, which run only when the event loop turns, so buffers dropped
 * inside a synchronous loop would stay mapped until it ends. No imports, so that the kernel registry
 * can install the allocator while it loads (tensor.ts imports the registry: a cycle otherwise).
 */

/** Buffers of at least this many bytes go to the large allocator (2 MB, one huge page). */
export const LARGE_BYTES = 2 ** 21;

type LargeAllocator = (bytes: number) => ArrayBuffer | null;
let largeAlloc: LargeAllocator | null = null;

/** Installs (or with null removes) the allocator for large buffers: it returns a zero-filled
 * ArrayBuffer of exactly `bytes` bytes, or null to fall back to the usual allocation. */
export function setLargeAllocator(f: LargeAllocator | null): void {
  largeAlloc = f;
}

/** A zero-filled ArrayBuffer of n floats from the large allocator, or null (small, none installed, or
 * it declined). */
export function largeFloatBuffer(n: number): ArrayBuffer | null {
  if (largeAlloc === null || n * 4 < LARGE_BYTES) return null;
  const b = largeAlloc(n * 4);
  return b !== null && b.byteLength === n * 4 ? b : null;
}

/** A zero-filled Float32Array of n elements that owns its whole ArrayBuffer. */
export function zeroedFloats(n: number): Float32Array {
  const b = largeFloatBuffer(n);
  return b !== null ? new Float32Array(b) : new Float32Array(n);
}
