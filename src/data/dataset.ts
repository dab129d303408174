/**
 * Datasets: indexed collections of (image, label) samples.
 *
 * Layout: every sample's image is **CHW uint8** (channel planes, rows, columns; values 0..255),
 * whatever the source (IDX and CIFAR records are already CHW; ImageFolder converts the decoder's
 * HWC output). Transforms (./transforms.ts) and the DataLoader take it from there.
 *
 * Two flavours:
 *  - `Dataset` (synchronous `get(i)`): in-memory datasets such as Fashion-MNIST and CIFAR-10
 *    (InMemoryDataset). `get` returns a *view* into the dataset's storage: never mutate it.
 *  - `AsyncDataset` (`load(i): Promise<Sample>`): datasets that decode on demand (ImageFolder).
 * The DataLoader accepts either (`AnyDataset`).
 *
 * `height`/`width` are the size of every image, or 0 when images vary in size (ImageFolder): each
 * Sample carries its own size, and the loader's transform must make them uniform before batching.
 */
import { UsageError } from '../errors.js';
import { Generator } from '../tensor/rng.js';

export interface Sample {
  /** CHW uint8 pixels (channels * height * width values). Read-only. */
  image: Uint8Array;
  /** Class index in [0, numClasses). */
  label: number;
  channels: number;
  height: number;
  width: number;
}

export interface DatasetInfo {
  readonly length: number;
  readonly numClasses: number;
  readonly classes: string[];
  readonly channels: number;
  /** Height of every image, or 0 when images vary in size. */
  readonly height: number;
  /** Width of every image, or 0 when images vary in size. */
  readonly width: number;
  /** The label of sample i without loading its image (used by stratified splits). */
  labelOf?(i: number): number;
}

export interface Dataset extends DatasetInfo {
  get(i: number): Sample;
}

export interface AsyncDataset extends DatasetInfo {
  load(i: number): Promise<Sample>;
}

export type AnyDataset = Dataset | AsyncDataset;

/** True when samples must be fetched with `load` (no usable synchronous `get`). */
export function isAsyncDataset(ds: AnyDataset): ds is AsyncDataset {
  if (ds instanceof Subset) return isAsyncDataset(ds.dataset);
  return typeof (ds as Dataset).get !== 'function';
}

/** Fetches sample i of any dataset as a promise. */
export function loadSample(ds: AnyDataset, i: number): Promise<Sample> {
  return isAsyncDataset(ds) ? ds.load(i) : Promise.resolve((ds as Dataset).get(i));
}

export function checkIndex(i: number, length: number, what: string): void {
  if (!Number.isInteger(i) || i < 0 || i >= length) {
    throw new UsageError(`${what}: index ${i} out of range for a dataset of ${length} samples`);
  }
}

/** The raw arrays an InMemoryDataset shares with loader workers (SharedArrayBuffer-backed). */
export interface SharedImages {
  images: Uint8Array;
  labels: Int32Array;
  channels: number;
  height: number;
  width: number;
  classes: string[];
}

export interface InMemoryDatasetInit {
  /** N images, CHW uint8 each, back to back (N * channels * height * width bytes). */
  images: Uint8Array;
  labels: ArrayLike<number>;
  channels: number;
  height: number;
  width: number;
  classes: string[];
  /** Name in messages (default "dataset"). */
  name?: string;
}

function isShared(a: ArrayBufferView): boolean {
  return typeof SharedArrayBuffer !== 'undefined' && a.buffer instanceof SharedArrayBuffer;
}

/** Copies a Uint8Array into SharedArrayBuffer-backed memory (or returns it when it already is). */
export function toSharedBytes(a: Uint8Array): Uint8Array {
  if (isShared(a)) return a;
  const s = new Uint8Array(new SharedArrayBuffer(a.length));
  s.set(a);
  return s;
}

/**
 * Images and labels held in memory (Fashion-MNIST, CIFAR-10, or your own arrays). Storage is
 * moved into SharedArrayBuffers (once, at construction, unless already shared) so DataLoader
 * workers read it without copies.
 */
export class InMemoryDataset implements Dataset {
  readonly images: Uint8Array;
  readonly labels: Int32Array;
  readonly length: number;
  readonly channels: number;
  readonly height: number;
  readonly width: number;
  readonly classes: string[];
  readonly name: string;
  private readonly sampleSize: number;

  constructor(init: InMemoryDatasetInit) {
    const { channels, height, width, classes } = init;
    this.name = init.name ?? 'dataset';
    for (const [k, v] of [['channels', channels], ['height', height], ['width', width]] as const) {
      if (!Number.isInteger(v) || v <= 0) throw new UsageError(`${this.name}: ${k} must be a positive integer, got ${v}`);
    }
    if (classes.length === 0) throw new UsageError(`${this.name}: needs at least one class name`);
    this.sampleSize = channels * height * width;
    const n = init.labels.length;
    if (init.images.length !== n * this.sampleSize) {
      throw new UsageError(
        `${this.name}: ${n} labels need ${n} x ${channels}x${height}x${width} = ${n * this.sampleSize} image bytes, got ${init.images.length}`,
      );
    }
    const labels = new Int32Array(new SharedArrayBuffer(n * 4));
    for (let i = 0; i < n; i++) {
      const l = init.labels[i]!;
      if (!Number.isInteger(l) || l < 0 || l >= classes.length) {
        throw new UsageError(`${this.name}: label ${l} of sample ${i} is not in [0, ${classes.length})`);
      }
      labels[i] = l;
    }
    this.images = toSharedBytes(init.images);
    this.labels = labels;
    this.length = n;
    this.channels = channels;
    this.height = height;
    this.width = width;
    this.classes = [...classes];
  }

  get numClasses(): number {
    return this.classes.length;
  }

  get(i: number): Sample {
    checkIndex(i, this.length, this.name);
    const off = i * this.sampleSize;
    return {
      image: this.images.subarray(off, off + this.sampleSize),
      label: this.labels[i]!,
      channels: this.channels,
      height: this.height,
      width: this.width,
    };
  }

  labelOf(i: number): number {
    checkIndex(i, this.length, this.name);
    return this.labels[i]!;
  }

  /** Number of samples per class. */
  classCounts(): number[] {
    const c = new Array<number>(this.classes.length).fill(0);
    for (let i = 0; i < this.length; i++) c[this.labels[i]!]!++;
    return c;
  }

  /** The shared storage, for loader workers. */
  share(): SharedImages {
    return { images: this.images, labels: this.labels, channels: this.channels, height: this.height, width: this.width, classes: this.classes };
  }

  /** Rebuilds a dataset around shared storage (in a worker). No copy. */
  static fromShared(s: SharedImages): InMemoryDataset {
    return new InMemoryDataset({ images: s.images, labels: s.labels, channels: s.channels, height: s.height, width: s.width, classes: s.classes });
  }
}

/**
 * The samples `indices` of `dataset`, in that order (like torch.utils.data.Subset). Works for
 * synchronous and asynchronous datasets: `get` is usable when the underlying dataset is synchronous.
 */
export class Subset<D extends AnyDataset = AnyDataset> implements Dataset, AsyncDataset {
  readonly dataset: D;
  readonly indices: Int32Array;

  constructor(dataset: D, indices: ArrayLike<number>) {
    this.dataset = dataset;
    this.indices = Int32Array.from(indices as ArrayLike<number>);
    for (const i of this.indices) checkIndex(i, dataset.length, 'Subset');
  }

  get length(): number {
    return this.indices.length;
  }
  get numClasses(): number {
    return this.dataset.numClasses;
  }
  get classes(): string[] {
    return this.dataset.classes;
  }
  get channels(): number {
    return this.dataset.channels;
  }
  get height(): number {
    return this.dataset.height;
  }
  get width(): number {
    return this.dataset.width;
  }

  /** Index into the underlying dataset of sample i of this subset. */
  sourceIndex(i: number): number {
    checkIndex(i, this.indices.length, 'Subset');
    return this.indices[i]!;
  }

  get(i: number): Sample {
    if (isAsyncDataset(this.dataset)) throw new UsageError('Subset.get: the underlying dataset is asynchronous: use load(i)');
    return (this.dataset as Dataset).get(this.sourceIndex(i));
  }

  load(i: number): Promise<Sample> {
    return loadSample(this.dataset, this.sourceIndex(i));
  }

  labelOf(i: number): number {
    const j = this.sourceIndex(i);
    if (this.dataset.labelOf) return this.dataset.labelOf(j);
    if (!isAsyncDataset(this.dataset)) return (this.dataset as Dataset).get(j).label;
    throw new UsageError('Subset.labelOf: the underlying dataset has no labelOf()');
  }
}

export interface SplitOptions {
  /** Seed of the split (default 0): the same seed always gives the same split. */
  seed?: number;
  /**
   * Stratified (default true): each class is split separately, so both parts keep the class
   * proportions; class c sends round(n_c * valFraction) samples to validation, but never all of
   * them when it has 2 or more (at least one stays in training). Not stratified: a seeded
   * permutation of all samples, the first round(n * valFraction) going to validation.
   */
  stratified?: boolean;
}

/**
 * Splits a dataset into training and validation Subsets, seeded. Indices inside each part are in
 * ascending order (the DataLoader shuffles). Needs `labelOf` (or a synchronous `get`) when
 * stratified.
 */
export function trainValSplit<D extends AnyDataset>(
  dataset: D,
  valFraction: number,
  opts: SplitOptions = {},
): { train: Subset<D>; val: Subset<D> } {
  if (!(valFraction >= 0 && valFraction < 1)) throw new UsageError(`valFraction must be in [0, 1), got ${valFraction}`);
  const gen = new Generator(opts.seed ?? 0);
  const n = dataset.length;
  const isVal = new Uint8Array(n);
  if (opts.stratified ?? true) {
    const labelOf = (i: number): number => {
      if (dataset.labelOf) return dataset.labelOf(i);
      if (!isAsyncDataset(dataset)) return (dataset as Dataset).get(i).label;
      throw new UsageError('trainValSplit: stratified split needs labelOf() on an asynchronous dataset');
    };
    const byClass: number[][] = Array.from({ length: dataset.numClasses }, () => []);
    for (let i = 0; i < n; i++) byClass[labelOf(i)]!.push(i);
    for (const members of byClass) {
      let k = Math.round(members.length * valFraction);
      if (members.length >= 2) k = Math.min(k, members.length - 1);
      const p = gen.permutation(members.length);
      for (let j = 0; j < k; j++) isVal[members[p[j]!]!] = 1;
    }
  } else {
    const k = Math.round(n * valFraction);
    const p = gen.permutation(n);
    for (let j = 0; j < k; j++) isVal[p[j]!] = 1;
  }
  const train: number[] = [];
  const val: number[] = [];
  for (let i = 0; i < n; i++) (isVal[i] ? val : train).push(i);
  return { train: new Subset(dataset, train), val: new Subset(dataset, val) };
}
