/**
 * Seed derivation for the data pipeline. Every random decision of the loader comes from a
 * Generator seeded by a hash of (seed, stream, ...): the shuffle of epoch e uses
 * deriveSeed(seed, SHUFFLE, e) and the augmentation of dataset sample i in epoch e uses
 * deriveSeed(seed, AUGMENT, e, i). So results depend on the seed, the epoch and the sample index
 * only: not on batch size, worker count, or which worker did the work, and resuming at epoch e
 * replays epoch e exactly.
 */
import { Generator } from '../tensor/rng.js';

/** murmur3's 32-bit finaliser: a bijection on uint32 with full avalanche. */
function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** A 32-bit seed from a list of integers (any safe integers, negative included). */
export function deriveSeed(...parts: number[]): number {
  let h = 0x243f6a88;
  for (const p of parts) {
    const lo = p >>> 0;
    const hi = Math.floor(p / 4294967296) >>> 0;
    h = fmix32((h ^ fmix32((lo + 0x9e3779b9) >>> 0)) >>> 0);
    h = fmix32((h ^ fmix32((hi + 0x7f4a7c15) >>> 0)) >>> 0);
  }
  return h;
}

/** Stream tags, so that shuffle and augmentation draws never share a seed. */
export const SHUFFLE_STREAM = 0x5348;
export const AUGMENT_STREAM = 0x4147;

/** The generator that shuffles epoch `epoch`. */
export function shuffleGenerator(seed: number, epoch: number): Generator {
  return new Generator(deriveSeed(seed, SHUFFLE_STREAM, epoch));
}

/** The generator for the augmentation of dataset sample `index` in epoch `epoch`. */
export function sampleGenerator(seed: number, epoch: number, index: number): Generator {
  return new Generator(deriveSeed(seed, AUGMENT_STREAM, epoch, index));
}
