/**
 * Batch assembly, shared by the DataLoader's main-thread path and its worker threads (so both
 * produce the same bits): transform each sample with the generator of (seed, epoch, index), then
 * stack into one float32 [B, C, H, W] buffer. A transform output still in uint8 is scaled to
 * [0, 1] (as ToFloat would).
 */
import { ShapeError } from '../errors.js';
import type { Sample } from './dataset.js';
import { sampleGenerator } from './seed.js';
import type { ImageCHW, Transform } from './transforms.js';

export interface BuiltBatch {
  x: Float32Array;
  shape: [number, number, number, number];
  y: Int32Array;
}

/**
 * Builds one batch. `sample(k)` is the k-th sample of the batch; `indices[k]` its dataset index
 * (which seeds its augmentation).
 */
export function buildBatch(
  sample: (k: number) => Sample,
  indices: Int32Array,
  seed: number,
  epoch: number,
  transform: Transform | null,
): BuiltBatch {
  const B = indices.length;
  const y = new Int32Array(B);
  let x: Float32Array | null = null;
  let C = 0;
  let H = 0;
  let W = 0;
  for (let k = 0; k < B; k++) {
    const s = sample(k);
    const idx = indices[k]!;
    if (s.image.length !== s.channels * s.height * s.width) {
      throw new ShapeError(`sample ${idx}: image has ${s.image.length} values, expected ${s.channels}x${s.height}x${s.width}`);
    }
    let img: ImageCHW = { data: s.image, channels: s.channels, height: s.height, width: s.width };
    if (transform !== null) {
      img = transform.apply(img, sampleGenerator(seed, epoch, idx));
      if (img.data.length !== img.channels * img.height * img.width) {
        throw new ShapeError(`sample ${idx}: the transform returned ${img.data.length} values for a ${img.channels}x${img.height}x${img.width} image`);
      }
    }
    if (x === null) {
      C = img.channels;
      H = img.height;
      W = img.width;
      x = new Float32Array(B * C * H * W);
    } else if (img.channels !== C || img.height !== H || img.width !== W) {
      throw new ShapeError(
        `sample ${idx} is ${img.channels}x${img.height}x${img.width} after the transform but the batch's first sample is ${C}x${H}x${W}: ` +
          'every sample of a batch must have the same size (use Resize + CenterCrop or RandomResizedCrop)',
      );
    }
    const n = C * H * W;
    const off = k * n;
    const d = img.data;
    if (d instanceof Float32Array) x.set(d, off);
    else for (let i = 0; i < n; i++) x[off + i] = d[i]! / 255;
    y[k] = s.label;
  }
  return { x: x ?? new Float32Array(0), shape: [B, C, H, W], y };
}

/** Samples packed for a worker: images back to back, with their sizes and labels. */
export interface PackedSamples {
  bytes: Uint8Array;
  /** channels, height, width per sample. */
  dims: Int32Array;
  labels: Int32Array;
}

export function packSamples(samples: readonly Sample[]): PackedSamples {
  let total = 0;
  for (const s of samples) total += s.image.length;
  const bytes = new Uint8Array(total);
  const dims = new Int32Array(samples.length * 3);
  const labels = new Int32Array(samples.length);
  let o = 0;
  samples.forEach((s, k) => {
    bytes.set(s.image, o);
    o += s.image.length;
    dims[3 * k] = s.channels;
    dims[3 * k + 1] = s.height;
    dims[3 * k + 2] = s.width;
    labels[k] = s.label;
  });
  return { bytes, dims, labels };
}

export function unpackSamples(p: PackedSamples): Sample[] {
  const out: Sample[] = [];
  let o = 0;
  for (let k = 0; k < p.labels.length; k++) {
    const channels = p.dims[3 * k]!;
    const height = p.dims[3 * k + 1]!;
    const width = p.dims[3 * k + 2]!;
    const n = channels * height * width;
    out.push({ image: p.bytes.subarray(o, o + n), label: p.labels[k]!, channels, height, width });
    o += n;
  }
  return out;
}
