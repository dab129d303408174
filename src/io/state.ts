/**
 * Bridges between file tensors (RawTensor: safetensors/.npy entries) and engine Tensors, and the
 * state-dict file helpers built on them: load a model's weights from a safetensors file, save a
 * model as torchvision-named safetensors.
 *
 * PyTorch writes `num_batches_tracked` as I64: it becomes an int64-tagged tensor here and is
 * written back as I64, so files round-trip.
 */
import { FormatError, StateDictError } from '../errors.js';
import type { Module, StateDict } from '../nn/module.js';
import { Tensor } from '../tensor/tensor.js';
import { toFloat32, type RawTensor } from './raw.js';
import { readSafetensors, writeSafetensors } from './safetensors.js';
import { readNpy, writeNpy } from './npy.js';

export function rawToTensor(raw: RawTensor): Tensor {
  const isInt = raw.dtype === 'I64' || raw.dtype === 'I32' || raw.dtype === 'U8' || raw.dtype === 'BOOL';
  return new Tensor(raw.shape, toFloat32(raw), raw.dtype === 'I64' ? 'int64' : isInt ? 'int64' : 'float32');
}

export function tensorToRaw(t: Tensor): RawTensor {
  const v = t.values;
  if (t.dtype === 'int64') {
    const data = new BigInt64Array(v.length);
    for (let i = 0; i < v.length; i++) data[i] = BigInt(Math.round(v[i]!));
    return { dtype: 'I64', shape: [...t.shape], data };
  }
  return { dtype: 'F32', shape: [...t.shape], data: v };
}

/** Reads a safetensors file as a state dict (key order preserved). */
export function readStateDict(path: string): { stateDict: StateDict; metadata: Record<string, string> } {
  const { tensors, metadata } = readSafetensors(path);
  const stateDict: StateDict = new Map();
  for (const [k, raw] of tensors) stateDict.set(k, rawToTensor(raw));
  return { stateDict, metadata };
}

/** Writes a state dict (or a module's) as safetensors: F32, with num_batches_tracked as I64. */
export function writeStateDict(path: string, sd: StateDict | Module, metadata: Record<string, string> = {}): void {
  const map = sd instanceof Map ? sd : sd.stateDict();
  const entries: [string, RawTensor][] = [...map].map(([k, t]) => [k, tensorToRaw(t)]);
  writeSafetensors(path, entries, metadata);
}

/** Loads weights from a safetensors file into `model`; problems name the file. */
export function loadWeights(model: Module, path: string, opts: { strict?: boolean } = {}): void {
  const { stateDict } = readStateDict(path);
  if (stateDict.size === 0) throw new FormatError(`${path}: the file holds no tensors`);
  try {
    model.loadStateDict(stateDict, opts);
  } catch (e) {
    if (e instanceof StateDictError) throw new StateDictError(`${path} does not fit the model: ${e.message}`);
    throw e;
  }
}

/** Reads a float32 .npy array as a tensor; other dtypes are refused with a hint. */
export function readTensorNpy(path: string): Tensor {
  const raw = readNpy(path);
  if (raw.dtype !== 'F32' || raw.sourceDType !== undefined) {
    throw new FormatError(`${path}: expected a float32 array, got ${raw.sourceDType ?? raw.dtype} (convert with x.astype(np.float32))`);
  }
  return new Tensor(raw.shape, raw.data as Float32Array);
}

export function writeTensorNpy(path: string, t: Tensor): void {
  writeNpy(path, tensorToRaw(t));
}
