/**
 * PyTorch checkpoints (.pth / .pt / .bin written by torch.save >= 1.6), read without Python and
 * without executing anything.
 *
 * The file is a ZIP archive (src/io/zip.ts) holding `<root>/data.pkl` (the pickled object),
 * `<root>/data/<key>` (one raw little-endian storage per key), `<root>/version` and, in newer
 * versions, `<root>/byteorder`. The pickle is decoded by the restricted unpickler
 * (src/io/pickle.ts) with exactly the globals a state dict needs — collections.OrderedDict,
 * torch._utils._rebuild_tensor_v2 / _rebuild_parameter / _rebuild_parameter_with_state and the
 * torch.*Storage types — which is what torch.load(weights_only=True) allows for one. Any other
 * global (os.system, builtins.eval, ...) is refused before it can be used; nothing is executed.
 *
 * Tensors may be views: _rebuild_tensor_v2's storage offset and strides are honoured (gathered
 * into a contiguous copy) and every index is checked against the storage. Data is only decoded
 * for the tensors actually returned (an optimizer state next to the weights is never copied).
 *
 * The top-level object may be a state dict, or a training checkpoint dict holding one under
 * "state_dict", "model_state_dict" or "model"; a "module." prefix on every key (DataParallel) is
 * removed. The legacy (pre-1.6) non-ZIP format is recognised and refused with a hint.
 */
import { FormatError } from '../errors.js';
import { type DType, type RawData, type RawTensor, decodeLE, dtypeSize, formatError, readFileBytes } from './raw.js';
import { PyDict, PyGlobal, PyList, PyTuple, describePy, unpickle } from './pickle.js';
import { isZip, openZip, type ZipArchive } from './zip.js';

/** Keys of a training-checkpoint dict that may hold the state dict, in order of preference. */
export const STATE_DICT_KEYS = ['state_dict', 'model_state_dict', 'model'] as const;

const REFUSAL_HINT = 'only tensors and state dicts are allowed; this is what torch.load(weights_only=True) permits';

/** Storage classes torch pickles (as globals inside persistent ids) and the file dtype of each. */
const STORAGE_DTYPES: Record<string, DType> = {
  FloatStorage: 'F32',
  HalfStorage: 'F16',
  BFloat16Storage: 'BF16',
  DoubleStorage: 'F64',
  LongStorage: 'I64',
  IntStorage: 'I32',
  ByteStorage: 'U8',
  BoolStorage: 'BOOL',
};

// ---------------------------------------------------------------------------------------------
// Values the unpickler produces for torch objects
// ---------------------------------------------------------------------------------------------

/** A torch.*Storage class used as a value (never called). dtype undefined: a type we cannot read. */
class StorageType {
  constructor(
    readonly name: string,
    readonly dtype: DType | undefined,
  ) {}
}

/** A storage referenced by a persistent id: `<root>/data/<key>`, numel elements of `dtype`. */
class StorageRef {
  private decoded: RawData | undefined;
  constructor(
    readonly key: string,
    readonly dtype: DType,
    readonly numel: number,
    private readonly bytes: Uint8Array,
    private readonly bigEndian: boolean,
  ) {}

  /** Elements [begin, end) as a fresh RawTensor data array (half floats widened to F32). */
  slice(begin: number, end: number): Pick<RawTensor, 'dtype' | 'data' | 'sourceDType'> {
    const size = dtypeSize(this.dtype);
    return decode(this.bytes.subarray(begin * size, end * size), this.dtype, this.bigEndian);
  }

  /** The whole storage decoded once (for strided gathers). */
  all(): RawData {
    if (!this.decoded) this.decoded = this.slice(0, this.numel).data;
    return this.decoded;
  }
}

/** A tensor whose bounds were checked during unpickling; data is decoded on first use. */
export class LazyTensor {
  private value: RawTensor | undefined;
  constructor(
    readonly storage: StorageRef,
    readonly offset: number,
    readonly shape: number[],
    readonly stride: number[],
    readonly numel: number,
    readonly isParameter: boolean,
  ) {}

  asParameter(): LazyTensor {
    return new LazyTensor(this.storage, this.offset, this.shape, this.stride, this.numel, true);
  }

  get dtype(): DType {
    return this.storage.dtype;
  }

  materialize(): RawTensor {
    if (!this.value) this.value = gather(this);
    return this.value;
  }
}

function decode(bytes: Uint8Array, dtype: DType, bigEndian: boolean): Pick<RawTensor, 'dtype' | 'data' | 'sourceDType'> {
  if (!bigEndian) return decodeLE(bytes, dtype);
  const size = dtypeSize(dtype);
  const swapped = bytes.slice();
  for (let i = 0; i + size <= swapped.length; i += size) swapped.subarray(i, i + size).reverse();
  return decodeLE(swapped, dtype);
}

function isContiguous(shape: readonly number[], stride: readonly number[]): boolean {
  let expected = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    if (shape[d]! !== 1 && stride[d]! !== expected) return false;
    expected *= shape[d]!;
  }
  return true;
}

/** Copy a (possibly strided) view into a contiguous RawTensor. Bounds were checked at build time. */
function gather(t: LazyTensor): RawTensor {
  const { storage, offset, shape, stride, numel } = t;
  if (numel === 0 || isContiguous(shape, stride)) {
    return { ...storage.slice(offset, offset + numel), shape: [...shape] };
  }
  const src = storage.all();
  const out = new (src.constructor as new (n: number) => RawData)(numel);
  const nd = shape.length;
  const idx = new Array<number>(nd).fill(0);
  let s = offset;
  for (let i = 0; i < numel; i++) {
    (out as unknown as unknown[])[i] = (src as unknown as unknown[])[s];
    // Odometer increment over the multi-index, keeping the storage index in step.
    for (let d = nd - 1; d >= 0; d--) {
      idx[d]!++;
      s += stride[d]!;
      if (idx[d]! < shape[d]!) break;
      s -= stride[d]! * shape[d]!;
      idx[d] = 0;
    }
  }
  const raw: RawTensor = { dtype: storage.dtype === 'F16' || storage.dtype === 'BF16' ? 'F32' : storage.dtype, shape: [...shape], data: out };
  if (storage.dtype === 'F16' || storage.dtype === 'BF16') raw.sourceDType = storage.dtype;
  return raw;
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/** Legacy torch.save (< 1.6) starts with a pickled magic number 0x1950a86a20f9469cfc6c. */
const LEGACY_MAGIC = [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

function isLegacy(bytes: Uint8Array): boolean {
  if (bytes.length >= LEGACY_MAGIC.length && LEGACY_MAGIC.every((b, i) => bytes[i] === b)) return true;
  // The even older tar-based format: a tar header with "ustar" at offset 257.
  return bytes.length > 262 && new TextDecoder('latin1').decode(bytes.subarray(257, 262)) === 'ustar';
}

/** The pickled object of a torch.save ZIP checkpoint, with tensors as LazyTensor. */
export function unpicklePth(bytes: Uint8Array, source = 'pth'): unknown {
  const fail = (m: string): never => {
    throw formatError(source, m);
  };
  if (bytes.length === 0) fail('file is empty');
  if (!isZip(bytes)) {
    if (isLegacy(bytes)) {
      fail('legacy (pre-1.6) torch.save format is not supported; re-save with torch.save(..., _use_new_zipfile_serialization=True)');
    }
    if (bytes[0] === 0x80) {
      fail('this is a bare pickle, not a torch.save archive; only ZIP checkpoints written by torch.save >= 1.6 are supported');
    }
    fail('not a PyTorch checkpoint: torch.save writes a ZIP archive (starting with "PK\\x03\\x04")');
  }
  const zip = openZip(bytes, source);
  const pkls = [...zip.entries.keys()].filter((n) => /^(?:[^/]*\/)?data\.pkl$/.test(n));
  if (pkls.length === 0) fail('the ZIP archive has no data.pkl: it was not written by torch.save');
  if (pkls.length > 1) fail(`the ZIP archive has several data.pkl records (${pkls.slice(0, 3).join(', ')}); expected one`);
  const pkl = pkls[0]!;
  const root = pkl.slice(0, pkl.length - 'data.pkl'.length); // "archive/" or ""
  const bigEndian = readByteOrder(zip, `${root}byteorder`, fail);

  const storages = new Map<string, StorageRef>();

  const persistentLoad = (pid: unknown): unknown => {
    if (!(pid instanceof PyTuple) || pid.items.length !== 5 || pid.items[0] !== 'storage') {
      return fail(`unsupported persistent id (${describePy(pid)}); expected ('storage', type, key, location, numel)`);
    }
    const [, type, key, location, numel] = pid.items;
    if (!(type instanceof StorageType)) return fail(`persistent id names ${describePy(type)} instead of a storage type`);
    if (typeof key !== 'string') return fail(`storage key is ${describePy(key)}, not a string`);
    if (typeof location !== 'string') return fail(`storage location is ${describePy(location)}, not a string`);
    if (typeof numel !== 'number' || !Number.isSafeInteger(numel) || numel < 0) {
      return fail(`storage ${JSON.stringify(key)} has an invalid element count (${describePy(numel)})`);
    }
    if (type.dtype === undefined) {
      return fail(`unsupported tensor storage type torch.${type.name} (supported: ${Object.keys(STORAGE_DTYPES).map((s) => `torch.${s}`).join(', ')})`);
    }
    const cached = storages.get(key);
    if (cached) {
      if (cached.dtype !== type.dtype || cached.numel !== numel) fail(`storage ${JSON.stringify(key)} is referenced with different types or sizes`);
      return cached;
    }
    const name = `${root}data/${key}`;
    if (!zip.has(name)) fail(`storage ${JSON.stringify(key)} referenced by the pickle is missing from the archive (no ${JSON.stringify(name)})`);
    const data = zip.read(name);
    const need = numel * dtypeSize(type.dtype);
    if (data.length < need) {
      fail(`storage ${JSON.stringify(key)} should hold ${numel} ${type.dtype} elements (${need} bytes) but its record has ${data.length} bytes`);
    }
    const ref = new StorageRef(key, type.dtype, numel, data, bigEndian);
    storages.set(key, ref);
    return ref;
  };

  const rebuildTensor = (args: readonly unknown[]): LazyTensor => {
    if (args.length < 6 || args.length > 7) fail(`_rebuild_tensor_v2 takes 6 or 7 arguments, got ${args.length}`);
    const [storage, offset, size, stride, requiresGrad] = args;
    if (!(storage instanceof StorageRef)) return fail(`_rebuild_tensor_v2: first argument is ${describePy(storage)}, not a storage`);
    if (typeof offset !== 'number' || !Number.isSafeInteger(offset) || offset < 0) {
      return fail(`_rebuild_tensor_v2: storage offset ${describePy(offset)} is not a non-negative integer`);
    }
    const shape = intTuple(size, 'size', fail);
    const strides = intTuple(stride, 'stride', fail);
    if (strides.length !== shape.length) fail(`_rebuild_tensor_v2: size has ${shape.length} dimensions but stride has ${strides.length}`);
    if (typeof requiresGrad !== 'boolean') fail(`_rebuild_tensor_v2: requires_grad is ${describePy(requiresGrad)}, not a bool`);
    let numel = 1;
    let last = offset;
    for (let d = 0; d < shape.length; d++) {
      numel *= shape[d]!;
      if (shape[d]! > 0) last += (shape[d]! - 1) * strides[d]!;
    }
    if (!Number.isSafeInteger(numel) || !Number.isSafeInteger(last)) fail(`_rebuild_tensor_v2: size [${shape.join(', ')}] is impossibly large`);
    const what = `tensor of size [${shape.join(', ')}] (stride [${strides.join(', ')}], offset ${offset}) on storage ${JSON.stringify(storage.key)}`;
    if (numel > 0 && last >= storage.numel) fail(`${what} reaches element ${last}, past the storage's ${storage.numel} elements`);
    if (numel === 0 && offset > storage.numel) fail(`${what} starts past the storage's ${storage.numel} elements`);
    if (numel > storage.numel) fail(`${what} has more elements than its storage (${storage.numel}); expanded views are not supported`);
    return new LazyTensor(storage, offset, shape, strides, numel, false);
  };

  const rebuildParameter = (args: readonly unknown[]): LazyTensor => {
    if (args.length < 3 || args.length > 4) fail(`_rebuild_parameter takes 3 or 4 arguments, got ${args.length}`);
    const data = args[0];
    if (!(data instanceof LazyTensor)) return fail(`_rebuild_parameter: data is ${describePy(data)}, not a tensor`);
    return data.asParameter();
  };

  const orderedDict = (args: readonly unknown[]): PyDict => {
    const d = new PyDict(true);
    if (args.length === 0) return d;
    const items = args.length === 1 ? args[0] : undefined;
    if (!(items instanceof PyList || items instanceof PyTuple)) return fail('collections.OrderedDict: expected no arguments or one list of pairs');
    for (const it of items.items) {
      if (!(it instanceof PyTuple) || it.items.length !== 2) fail('collections.OrderedDict: items must be (key, value) pairs');
      d.map.set((it as PyTuple).items[0], (it as PyTuple).items[1]);
    }
    return d;
  };

  const resolveGlobal = (module: string, name: string): unknown => {
    const q = `${module}.${name}`;
    switch (q) {
      case 'collections.OrderedDict':
        return new PyGlobal(module, name, orderedDict, orderedDict);
      case 'torch._utils._rebuild_tensor_v2':
        return new PyGlobal(module, name, rebuildTensor);
      case 'torch._utils._rebuild_parameter':
      case 'torch._utils._rebuild_parameter_with_state':
        return new PyGlobal(module, name, rebuildParameter);
      case 'torch.storage._load_from_bytes':
        return fail('refusing torch.storage._load_from_bytes: storages pickled as bytes (legacy format) are not supported; re-save with torch.save(...) from torch >= 1.6');
    }
    // torch.FloatStorage etc. are only ever values inside persistent ids: never called.
    if (module === 'torch' && /^[A-Z][A-Za-z0-9]*Storage$/.test(name)) {
      return new StorageType(name, STORAGE_DTYPES[name]);
    }
    return undefined;
  };

  return unpickle(zip.read(pkl), { source, resolveGlobal, persistentLoad, refusalHint: REFUSAL_HINT });
}

function readByteOrder(zip: ZipArchive, name: string, fail: (m: string) => never): boolean {
  if (!zip.has(name)) return false;
  const text = new TextDecoder('latin1').decode(zip.read(name)).trim();
  if (text === 'little') return false;
  if (text === 'big') return true;
  return fail(`byteorder record says ${JSON.stringify(text.slice(0, 20))}; expected "little" or "big"`);
}

function intTuple(v: unknown, what: string, fail: (m: string) => never): number[] {
  if (!(v instanceof PyTuple)) return fail(`_rebuild_tensor_v2: ${what} is ${describePy(v)}, not a tuple`);
  if (v.items.length > 64) fail(`_rebuild_tensor_v2: ${what} has ${v.items.length} dimensions`);
  return v.items.map((x) => {
    if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < 0) {
      return fail(`_rebuild_tensor_v2: ${what} (${v.items.map((y) => describePy(y)).join(', ')}) must hold non-negative integers`);
    }
    return x;
  });
}

// ---------------------------------------------------------------------------------------------
// Picking the state dict
// ---------------------------------------------------------------------------------------------

function isTensorDict(d: PyDict): boolean {
  if (d.map.size === 0) return false;
  for (const [k, v] of d.map) if (typeof k !== 'string' || !(v instanceof LazyTensor)) return false;
  return true;
}

function keyList(d: PyDict): string {
  const keys = [...d.map.keys()].map((k) => (typeof k === 'string' ? JSON.stringify(k.length > 30 ? `${k.slice(0, 27)}...` : k) : describePy(k)));
  return keys.length > 8 ? `${keys.slice(0, 8).join(', ')}, ... (${keys.length} keys)` : keys.join(', ');
}

/** The state dict inside an unpickled checkpoint object, or a FormatError explaining why not. */
export function selectStateDict(obj: unknown, source = 'pth'): Map<string, LazyTensor> {
  const fail = (m: string): never => {
    throw formatError(source, m);
  };
  const expected = `expected a state dict (a dict of name -> tensor) or a dict holding one under ${STATE_DICT_KEYS.map((k) => `"${k}"`).join(', ')}`;
  if (obj instanceof LazyTensor) fail(`the checkpoint holds a single tensor, not a state dict; ${expected}`);
  if (!(obj instanceof PyDict)) return fail(`the checkpoint holds ${describePy(obj)}; ${expected} (was a whole model saved with torch.save(model)? save model.state_dict() instead)`);
  let sd: PyDict | undefined;
  if (isTensorDict(obj)) sd = obj;
  else {
    for (const k of STATE_DICT_KEYS) {
      const v = obj.map.get(k);
      if (v instanceof PyDict && isTensorDict(v)) {
        sd = v;
        break;
      }
    }
  }
  if (!sd) {
    if (obj.map.size === 0) fail(`the checkpoint is an empty dict; ${expected}`);
    const tensors = [...obj.map.values()].filter((v) => v instanceof LazyTensor).length;
    if (tensors > 0) {
      const bad = [...obj.map].filter(([k, v]) => typeof k !== 'string' || !(v instanceof LazyTensor)).map(([k, v]) => `${typeof k === 'string' ? JSON.stringify(k) : describePy(k)}: ${describePy(v)}`);
      fail(`the checkpoint dict mixes ${tensors} tensors with ${bad.length} other values (${bad.slice(0, 4).join('; ')}${bad.length > 4 ? '; ...' : ''}); ${expected}`);
    }
    for (const k of STATE_DICT_KEYS) {
      if (obj.map.has(k)) fail(`the checkpoint's "${k}" entry is ${describePy(obj.map.get(k))}, not a dict of tensors; ${expected}`);
    }
    fail(`the checkpoint dict (keys ${keyList(obj)}) holds no tensors; ${expected}`);
  }
  const out = new Map<string, LazyTensor>();
  for (const [k, v] of sd!.map) out.set(k as string, v as LazyTensor);
  return stripModulePrefix(out);
}

/** Removes a leading "module." (DataParallel / DistributedDataParallel) when every key has it. */
export function stripModulePrefix<T>(sd: Map<string, T>): Map<string, T> {
  const p = 'module.';
  if (sd.size === 0 || ![...sd.keys()].every((k) => k.startsWith(p) && k.length > p.length)) return sd;
  return new Map([...sd].map(([k, v]) => [k.slice(p.length), v]));
}

/**
 * Reads a torch.save checkpoint (bytes of a .pth/.pt/.bin) as a state dict of RawTensors in the
 * pickle's key order. Half-float tensors are widened to F32 (sourceDType records the original).
 */
export function parsePth(bytes: Uint8Array, source = 'pth'): Map<string, RawTensor> {
  const lazy = selectStateDict(unpicklePth(bytes, source), source);
  // Views of one storage decode separately; bound the total so hostile aliasing cannot exhaust memory.
  const budget = 4 * bytes.length + (1 << 20);
  let produced = 0;
  const out = new Map<string, RawTensor>();
  for (const [k, t] of lazy) {
    produced += t.numel * dtypeSize(t.dtype);
    if (produced > budget) {
      throw new FormatError(`${source}: the tensors reference ${produced}+ bytes, far more than the ${bytes.length}-byte file holds (overlapping views?)`);
    }
    out.set(k, t.materialize());
  }
  return out;
}

export function readPth(path: string): Map<string, RawTensor> {
  return parsePth(readFileBytes(path), path);
}
