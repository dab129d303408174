/**
 * Training checkpoints: everything needed to continue a run exactly — model parameters and
 * buffers, optimizer state (momentum buffers as tensors), scheduler step, RNG and data-order state,
 * the epoch and the metrics history — in one safetensors file. Written to a temporary file and
 * renamed, so a process killed mid-save leaves the previous checkpoint intact.
 *
 * Layout: tensors "model.<state-dict key>" and "optim.<param index>.<field>"; the rest is JSON in
 * the "resnet-ts.train" metadata entry.
 */
import { FormatError } from '../errors.js';
import type { Module } from '../nn/module.js';
import { readSafetensors, writeSafetensors } from '../io/safetensors.js';
import type { RawTensor } from '../io/raw.js';
import { rawToTensor, tensorToRaw } from '../io/state.js';
import { Tensor } from '../tensor/tensor.js';

const META_KEY = 'resnet-ts.train';

export interface TrainingState {
  /** Epochs completed. */
  epoch: number;
  optimizer: unknown;
  scheduler: unknown;
  rng: number[];
  extra: Record<string, unknown>;
}

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

/** Moves long number arrays (momentum buffers) out of the JSON into tensors. */
function extractArrays(value: unknown, path: string, out: [string, RawTensor][]): Json {
  if (Array.isArray(value) && value.length > 16 && value.every((v) => typeof v === 'number')) {
    const key = `optim.${path}`;
    out.push([key, { dtype: 'F32', shape: [value.length], data: Float32Array.from(value as number[]) }]);
    return { $tensor: key };
  }
  if (Array.isArray(value)) return value.map((v, i) => extractArrays(v, `${path}.${i}`, out));
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, extractArrays(v, path ? `${path}.${k}` : k, out)]));
  }
  return value as Json;
}

function restoreArrays(value: Json, tensors: Map<string, RawTensor>, source: string): unknown {
  if (Array.isArray(value)) return value.map((v) => restoreArrays(v, tensors, source));
  if (value !== null && typeof value === 'object') {
    if (typeof value['$tensor'] === 'string') {
      const t = tensors.get(value['$tensor']);
      if (!t) throw new FormatError(`${source}: checkpoint refers to missing tensor "${value['$tensor']}"`);
      return Array.from(t.data as Float32Array);
    }
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, restoreArrays(v, tensors, source)]));
  }
  return value;
}

export function saveTrainingCheckpoint(path: string, model: Module, state: TrainingState): void {
  const entries: [string, RawTensor][] = [...model.stateDict()].map(([k, t]) => [`model.${k}`, tensorToRaw(t)]);
  const json = extractArrays({ epoch: state.epoch, optimizer: state.optimizer, scheduler: state.scheduler, rng: state.rng, extra: state.extra }, '', entries);
  writeSafetensors(path, entries, { [META_KEY]: JSON.stringify(json), format: 'resnet-ts training checkpoint v1' });
}

export interface LoadedCheckpoint extends TrainingState {
  modelState: Map<string, Tensor>;
}

export function loadTrainingCheckpoint(path: string): LoadedCheckpoint {
  const { tensors, metadata } = readSafetensors(path);
  const meta = metadata[META_KEY];
  if (meta === undefined) throw new FormatError(`${path}: not a resnet-ts training checkpoint (no "${META_KEY}" metadata); to start from weights use --pretrained`);
  let parsed: Json;
  try {
    parsed = JSON.parse(meta) as Json;
  } catch {
    throw new FormatError(`${path}: the training state is not valid JSON`);
  }
  const s = restoreArrays(parsed, tensors, path) as TrainingState;
  if (typeof s.epoch !== 'number' || !Array.isArray(s.rng)) throw new FormatError(`${path}: the training state lacks its epoch or RNG state`);
  const modelState = new Map<string, Tensor>();
  for (const [k, t] of tensors) if (k.startsWith('model.')) modelState.set(k.slice(6), rawToTensor(t));
  return { ...s, modelState };
}
