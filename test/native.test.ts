/**
 * Every native kernel against the TypeScript reference on awkward shapes: batch 1 and 7, odd
 * spatial sizes with stride 2, padding edges, groups, 1-channel input, channel counts that are not
 * multiples of the SIMD width, and all GEMM transpose combinations. Skipped (with a note) only
 * when the addon is not built.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MAX_THREADS, envWarnings, getNumThreads, nativeBackend, setNumThreads } from '../src/kernels/registry.js';
import { UsageError } from '../src/errors.js';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { tsKernels } from '../src/backends/ts/index.js';
import type { AdaptivePoolParams, Conv2dParams, Kernels, Pool2dParams } from '../src/kernels/kernels.js';
import { convOutSize } from '../src/ops/conv.js';
import { Generator } from '../src/tensor/rng.js';
import { assertClose, randomArray, withAvx2, withEachIsa, type Tolerance } from './helpers.js';

const nat = nativeBackend();
const skip = nat ? false : 'native addon not built (npm run build:native)';
const gen = new Generator(42);
const tol = { rtol: 1e-4, atol: 1e-5 };

/** Tolerance relative to the result's largest magnitude. `scale` 1e-5 by default; the Winograd
 * paths get 5e-5: F(4x4, 3x3) rounds to about 1.4e-5 of it at 256 channels (measured against a
 * double-precision reference), and the float32 reference itself, accumulating K = 9 * cIn terms
 * one rounding at a time, is off by up to ~1e-5 at K = 2304. Indexing mistakes are O(1). */
function scaleTol(e: Float32Array, scale = 1e-5): { rtol: number; atol: number } {
  const s = e.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
  return { rtol: 1e-4, atol: scale * Math.max(1, s) };
}

/** Whether p is a Winograd geometry (3x3, stride 1, padding 1, whole 16-channel blocks): its blocked
 * packing is Winograd (F(4x4) up to 128 channels, F(2x2) above), and on NCHW the native kernels run
 * it as F(4x4) as well (all three passes, from 16 channels). */
const winogradGeometry = (p: Conv2dParams): boolean =>
  process.env.RESNET_WINO !== '0' &&
  p.kh === 3 && p.kw === 3 && p.sh === 1 && p.sw === 1 && p.ph === 1 && p.pw === 1 && p.dh === 1 && p.dw === 1 && p.groups === 1 && p.cIn % 16 === 0 && p.cOut % 16 === 0;
/** Transform positions of its blocked packing: F(4x4) (36) up to 128 channels, F(2x2) (16) above
 * (RESNET_WINO=2 / 4, for measurements, force one). */
const winogradPositions = (p: Conv2dParams): number =>
  process.env.RESNET_WINO === '2' ? 16 : process.env.RESNET_WINO === '4' ? 36 : p.cIn <= 128 && p.cOut <= 128 ? 36 : 16;

function convCase(n: number, cIn: number, h: number, w: number, cOut: number, k: number, s: number, pad: number, d: number, groups: number): Conv2dParams {
  return { n, cIn, h, w, cOut, kh: k, kw: k, sh: s, sw: s, ph: pad, pw: pad, dh: d, dw: d, groups, oh: convOutSize(h, k, s, pad, d), ow: convOutSize(w, k, s, pad, d) };
}

const convCases: [string, Conv2dParams][] = [
  ['stem 7x7/2 batch 1, 1 channel, odd size', convCase(1, 1, 29, 31, 8, 7, 2, 3, 1, 1)],
  ['3x3/1 batch 7, 17 -> 19 channels', convCase(7, 17, 9, 11, 19, 3, 1, 1, 1, 1)],
  ['3x3/2 odd spatial, 5 -> 33 channels', convCase(2, 5, 13, 7, 33, 3, 2, 1, 1, 1)],
  ['1x1/1 pointwise batch 7, 33 -> 65', convCase(7, 33, 5, 6, 65, 1, 1, 0, 1, 1)],
  ['1x1/2 projection, odd size', convCase(3, 16, 9, 9, 32, 1, 2, 0, 1, 1)],
  ['grouped 3x3 (ResNeXt), 4 groups', convCase(2, 12, 8, 7, 20, 3, 1, 1, 1, 4)],
  ['depthwise 3x3/2', convCase(1, 6, 10, 10, 6, 3, 2, 1, 1, 6)],
  ['dilated 3x3, dilation 2, padding 2', convCase(2, 4, 11, 10, 6, 3, 1, 2, 2, 1)],
  ['padding larger than half the kernel', convCase(1, 3, 5, 5, 4, 3, 2, 3, 1, 1)],
  ['1x1 spatial (last stage of a CIFAR net: the dense product, its centre taps)', convCase(7, 64, 1, 1, 128, 3, 1, 1, 1, 1)],
  ['large enough to thread: 64 -> 64 on 28x28, batch 7', convCase(7, 64, 28, 28, 64, 3, 1, 1, 1, 1)],
  ['batch 1, 2x2 map, 64 -> 512 (the dense product, W\' of 2 MB)', convCase(1, 64, 2, 2, 512, 3, 1, 1, 1, 1)],
  ['K = 360 over two k-blocks, 16 output channels (8-row panels)', convCase(2, 40, 9, 9, 16, 3, 1, 1, 1, 1)],
  // pixel-row kernels (AVX-512): output width a multiple of 7, >= 32 output channels, K >= 128 (64 for
  // a stride-1 1x1)
  ['pixel rows: 1x1 with K = 64 on a 28-wide map (side-by-side runs stored as one), 64 -> 40', convCase(2, 64, 5, 28, 40, 1, 1, 0, 1, 1)],
  ['pixel rows: 7x7/2 stem, K = 147, to 14x14 (two runs per row), 3 -> 32', convCase(1, 3, 28, 27, 32, 7, 2, 3, 1, 1)],
  ['pixel rows: 3x3 on 14x14, batch 3, 40 output channels (a partial 32-channel panel)', convCase(3, 32, 14, 14, 40, 3, 1, 1, 1, 1)],
  ['pixel rows: 3x3/2 to 7x7, batch 1 (an odd number of 7-pixel runs)', convCase(1, 48, 13, 14, 64, 3, 2, 1, 1, 1)],
  ['pixel rows: 1x1 on 7x7 reading the input in place, 300 -> 33', convCase(2, 300, 7, 7, 33, 1, 1, 0, 1, 1)],
  ['pixel rows: dilated 3x3 on a 14-wide map, 7 rows', convCase(1, 30, 7, 14, 32, 3, 1, 2, 2, 1)],
  ['pixel rows: strided 1x1 reading x in place (pixels 2 apart), 260 -> 40, odd height', convCase(2, 260, 13, 14, 40, 1, 2, 0, 1, 1)],
  ['pixel rows, 16-channel panels: 28-pixel tiles, 13 output channels (no padding: not the same size)', convCase(2, 16, 30, 30, 13, 3, 1, 0, 1, 1)],
  ['pixel rows per image (batch 9), 14x14, a partial 32-channel panel', convCase(9, 32, 14, 14, 40, 3, 1, 1, 1, 1)],
  // pixels in lanes (AVX-512): stride-1 convolutions whose output has the input's size, at most 16
  // output channels (forward) or input channels (backward-input); whole images per work item from 4
  // per thread, else chunks of 16-pixel vectors; a map's last vector partial unless 16 divides it
  ['pixels in lanes: 16 -> 16 on 28x28, batch 9 (whole images)', convCase(9, 16, 28, 28, 16, 3, 1, 1, 1, 1)],
  ['pixels in lanes: 16 -> 16 on 32x32 (CIFAR), batch 1 (chunks of vectors)', convCase(1, 16, 32, 32, 16, 3, 1, 1, 1, 1)],
  ['pixels in lanes: the 1 -> 16 stem (K = 9) on 5x7 (35 pixels: a 3-lane last vector)', convCase(7, 1, 5, 7, 16, 3, 1, 1, 1, 1)],
  ['pixels in lanes: 5x5 kernel, padding 2, 3 -> 11 on 6x9', convCase(2, 3, 6, 9, 11, 5, 1, 2, 1, 1)],
  ['pixels in lanes: dilation 2, padding 2, 17 -> 16 on 9x10 (backward-input: 16 -> 17, not this path)', convCase(3, 17, 9, 10, 16, 3, 1, 2, 2, 1)],
  ['pixels in lanes: 1x1, 20 -> 5', convCase(2, 20, 7, 3, 5, 1, 1, 0, 1, 1)],
  ['pixels in lanes: backward-input to 16 channels from 24 (forward 16 -> 24: another path), 7x5 map', convCase(5, 16, 7, 5, 24, 3, 1, 1, 1, 1)],
  ['pixels in lanes: 1 output channel, 3x3 on a 1x1 map', convCase(3, 8, 1, 1, 1, 3, 1, 1, 1, 1)],
  ['pixel rows per image (batch 8), 7x7: 7 runs per image, a 1-run tile each', convCase(8, 40, 7, 7, 32, 3, 1, 1, 1, 1)],
  ['pixel rows per image in L2-sized chunks of tiles (batch 8, K = 256 on 28x28: 2 chunks per image)', convCase(8, 256, 28, 28, 32, 1, 1, 0, 1, 1)],
  // gathered GEMM (AVX-512): small maps; column blocks across images, several k-blocks, a partial panel
  ['gathered GEMM: 4x4 maps, batch 9 (144 columns), K = 360, 24 output channels', convCase(9, 40, 4, 4, 24, 3, 1, 1, 1, 1)],
  ['gathered GEMM: 8x8 stride 2 with padding 2, 5x5 kernel', convCase(3, 12, 8, 8, 20, 5, 2, 2, 1, 1)],
  // maps whose every output pixel sees every input pixel: one dense product over the batch, W' built
  // from the taps (conv_dense.c)
  ['dense: 2x2 maps, batch 3, 24 -> 40', convCase(3, 24, 2, 2, 40, 3, 1, 1, 1, 1)],
  ['dense: 2x2 maps, batch 9, 32 -> 48', convCase(9, 32, 2, 2, 48, 3, 1, 1, 1, 1)],
  // the backward input's panels by pixel and 32-channel run (four runs), 17 rows (a 14-row tile and a
  // tail), and two output-channel blocks (32 + 8) of the weight gradient's product
  ['dense: 2x2 maps, batch 17, 128 -> 40', convCase(17, 128, 2, 2, 40, 3, 1, 1, 1, 1)],
  ['dense: 3x3/2 of 2x2 -> 1x1 (4 of 9 taps), 20 -> 36, batch 5', convCase(5, 20, 2, 2, 36, 3, 2, 1, 1, 1)],
  ['dense: 1x2 maps (3 of 9 taps live), 7 -> 9, batch 5', convCase(5, 7, 1, 2, 9, 3, 1, 1, 1, 1)],
  ['dense: 5x5 padding 2 on 2x2 maps, 6 -> 10, batch 2', convCase(2, 6, 2, 2, 10, 5, 1, 2, 1, 1)],
  ['dense: dilation 2 on 1x1 maps (the centre tap), 6 -> 5, batch 2', convCase(2, 6, 1, 1, 5, 3, 1, 2, 2, 1)],
  // small strided maps as one GEMM with (image, output pixel) rows (conv_rows.c): forward to at most 4
  // output pixels, backward-input to at most 16, at least 64 rows
  ['rows: 3x3/2 from 4x4 to 2x2 (ResNet-18\'s 128 -> 256 on 32x32 inputs), batch 16, 24 -> 40', convCase(16, 24, 4, 4, 40, 3, 2, 1, 1, 1)],
  ['rows: backward-input of 3x3/2 from 8x8 to 4x4, batch 4, 12 -> 20', convCase(4, 12, 8, 8, 20, 3, 2, 1, 1, 1)],
  ['rows: backward-input, 5x5/2 padding 2 from 5x7 to 3x4, batch 6, 7 -> 9', convCase(6, 7, 5, 7, 9, 5, 2, 2, 1, 1)],
  ['rows: stride 3, dilation 2, 6x6 to 2x2, batch 32, 5 -> 7', convCase(32, 5, 6, 6, 7, 3, 3, 1, 2, 1)],
  // the same maps with W' past its 16 MB cap: the gathered GEMM by tap pattern (4 patterns, 4 of 9
  // taps each; channels not whole 16-channel blocks) and Winograd F(2x2) on NCHW
  ['2x2 maps, W\' past the dense cap: gathered GEMM by tap pattern, 520 -> 520, batch 3', convCase(3, 520, 2, 2, 520, 3, 1, 1, 1, 1)],
  ['2x2 maps, W\' past the dense cap: Winograd F(2x2), 528 -> 512, batch 5', convCase(5, 528, 2, 2, 512, 3, 1, 1, 1, 1)],
  // taps cropped to those that read inside the map, where the dense product would waste most of W'
  ['cropped to the live row of taps: 3x3 on 1x8 maps (dense would be 22 of 64 pairs)', convCase(3, 12, 1, 8, 20, 3, 1, 1, 1, 1)],
  // a kernel covering its whole map for a 1x1 output: a linear layer over the batch (w is W')
  ['as a linear layer: a 2x2 kernel over a 2x2 map, no padding, batch 1', convCase(1, 8, 2, 2, 12, 2, 1, 0, 1, 1)],
  ['as a linear layer: a 3x3 kernel over a 3x3 map, no padding, batch 3', convCase(3, 5, 3, 3, 7, 3, 1, 0, 1, 1)],
  // Winograd F(4x4, 3x3) on NCHW (AVX-512; 3x3/1 padding 1, whole 16-channel blocks, maps larger
  // than 2x2): weights transformed per call, activations through the blocked layout; backward-input
  // runs the same way with the flipped kernel
  ['Winograd on NCHW: 32 -> 48, odd 9x11 maps (cut edge tiles), batch 3', convCase(3, 32, 9, 11, 48, 3, 1, 1, 1, 1)],
  ['Winograd on NCHW from 16 channels: 16 -> 32, odd 13x13 maps, batch 7', convCase(7, 16, 13, 13, 32, 3, 1, 1, 1, 1)],
  ['Winograd on NCHW: 4x4 maps (one tile per image), 48 -> 32, batch 5', convCase(5, 48, 4, 4, 32, 3, 1, 1, 1, 1)],
  ['Winograd on NCHW: a 3x13 map, 64 -> 32', convCase(2, 64, 3, 13, 32, 3, 1, 1, 1, 1)],
  // maps 7-16 wide: the input transform a tile row (up to 16 columns) or two (up to 8) at a time
  ['Winograd on NCHW by tile rows: 16x16 maps (a row fills a vector), 32 -> 32, batch 2', convCase(2, 32, 16, 16, 32, 3, 1, 1, 1, 1)],
  ['Winograd on NCHW by pairs of tile rows: 11x8 maps (an odd last group), 48 -> 32, batch 7', convCase(7, 48, 11, 8, 32, 3, 1, 1, 1, 1)],
  // maps at least 28 wide: the input transform reads a blocked copy of each image's 16 channels made
  // a row at a time as the tiles reach it (chunks of tiles start and end inside images)
  ['Winograd on NCHW from a blocked copy made row by row: 32 -> 48, 30x29 maps, batch 3', convCase(3, 32, 30, 29, 48, 3, 1, 1, 1, 1)],
  ['Winograd weight gradient from the blocked copy: 16 -> 16, 31x28 maps, batch 2', convCase(2, 16, 31, 28, 16, 3, 1, 1, 1, 1)],
  ['gathered GEMM: padding wider than the kernel reaches (border outputs are the bias alone)', convCase(3, 20, 3, 3, 24, 1, 1, 1, 1, 1)],
  // backward weight by gathered GEMM (>= 64 output channels): K = 63 (a partial 32-tap panel), 66
  // channels (a partial row panel), 800 columns split over threads with partial sums
  ['gathered backward weight: K = 63, 66 output channels, split reduction', convCase(2, 7, 20, 20, 66, 3, 1, 1, 1, 1)],
  ['strided weight gradient, 32 -> 72 (not whole 16-channel blocks: pixels in lanes), 3x3/2, 14x14, batch 3', convCase(3, 32, 14, 14, 72, 3, 2, 1, 1, 1)],
  // backward weight by channels-last outer products (16-64 channels in multiples of 16; stride 1 but
  // not the Winograd geometry, 3x3 padding 1, which takes Winograd's weight gradient from 16
  // channels; stride 2 with kernels larger than 1x1)
  ['channels-last backward weight: 16 -> 48, odd 9x7 map, no padding, batch 3', convCase(3, 16, 9, 7, 48, 3, 1, 0, 1, 1)],
  ['Winograd weight gradient from 16 channels: 16 -> 16, odd 9x7 maps, batch 3', convCase(3, 16, 9, 7, 16, 3, 1, 1, 1, 1)],
  ['channels-last backward weight: dilation 2, padding 2', convCase(2, 16, 10, 9, 16, 3, 1, 2, 2, 1)],
  ['channels-last backward weight: 1x1, 16 -> 64', convCase(5, 16, 6, 5, 64, 1, 1, 0, 1, 1)],
  // stride 2 over the phase planes, channels-last (fixed blocks of up to 8 images: batch 9 makes two)
  ['channels-last backward weight, stride 2: 16 -> 32, 3x3/2, 28x28 to 14x14, batch 9', convCase(9, 16, 28, 28, 32, 3, 2, 1, 1, 1)],
  ['channels-last backward weight, stride 2: 32 -> 64, 3x3/2, odd 15x13 to 8x7', convCase(3, 32, 15, 13, 64, 3, 2, 1, 1, 1)],
  ['channels-last backward weight, stride 2: 5x5 padding 2, 48 -> 16, 20x22 (an odd number of 16-column blocks)', convCase(2, 48, 20, 22, 16, 5, 2, 2, 1, 1)],
  ['channels-last backward weight, stride 2: 2x2 without padding (no tail reads), 16 -> 16, 12x12', convCase(3, 16, 12, 12, 16, 2, 2, 0, 1, 1)],
];

// Pixels in lanes for strided layers (AVX-512; input = output x stride; 16-64 channels on the side it
// computes; whole images, at least 4 per thread: these run on 2 threads whatever the machine)
const pilStridedCases: [string, Conv2dParams][] = [
  ['16 -> 32, 3x3/2, 28x28 to 14x14 (forward and backward-input)', convCase(9, 16, 28, 28, 32, 3, 2, 1, 1, 1)],
  ['the 7x7/2 stem, 3 -> 64, 32x32 to 16x16 (forward)', convCase(8, 3, 32, 32, 64, 7, 2, 3, 1, 1)],
  ['32 -> 20, 3x3/2, 14x14 to 7x7 (backward-input; 7x7 forward is another path)', convCase(8, 32, 14, 14, 20, 3, 2, 1, 1, 1)],
  ['stride 3, 3x3 without padding, 36x36 to 12x12, 16 -> 17 (a partial panel)', convCase(8, 16, 36, 36, 17, 3, 3, 0, 1, 1)],
  ['1x1/2: one phase with taps, three without (backward-input: zeros + addend)', convCase(8, 16, 24, 24, 16, 1, 2, 0, 1, 1)],
  ['5x5/2 padding 2, 16 -> 24', convCase(8, 16, 28, 26, 24, 5, 2, 2, 1, 1)],
  ['4x4/2 padding 1 (an even kernel), 24 -> 16', convCase(8, 24, 28, 28, 16, 4, 2, 1, 1, 1)],
];

// The weight gradient by pixels in lanes (AVX-512; stride 1 with the output the input's size, or
// input = output x stride; maps of at least 49 pixels): images in groups of 8 (batch 9: a group of
// one), read in place, or copied side by side into one stream per channel where a map leaves more
// than a tenth of its last vector's lanes empty; output channels in blocks of 4 and (channel, tap)
// pairs in blocks of 6, both with partial last blocks here
const pilWeightCases: [string, Conv2dParams][] = [
  ['the 1 -> 16 stem on 28x28 (K = 9: a 3-pair last block), batch 9', convCase(9, 1, 28, 28, 16, 3, 1, 1, 1, 1)],
  ['the 7x7/2 stem, 3 -> 10 (a 2-channel last block), 32x32 to 16x16, K = 147', convCase(9, 3, 32, 32, 10, 7, 2, 3, 1, 1)],
  ['16 -> 24, 3x3/2, 28x28 to 14x14 (196 pixels: a 4-lane last vector)', convCase(3, 16, 28, 28, 24, 3, 2, 1, 1, 1)],
  ['stride 3 without padding, 36x36 to 12x12, 2 -> 7', convCase(9, 2, 36, 36, 7, 3, 3, 0, 1, 1)],
  ['dilation 2, padding 2, 5 -> 6 on 12x13', convCase(2, 5, 12, 13, 6, 3, 1, 2, 2, 1)],
  ['5x5/2 padding 2, 4 -> 9, 28x30 to 14x15', convCase(3, 4, 28, 30, 9, 5, 2, 2, 1, 1)],
  ['packed: 32 -> 20, 3x3/2, 14x14 to 7x7 (49-pixel maps side by side), batch 9', convCase(9, 32, 14, 14, 20, 3, 2, 1, 1, 1)],
  ['packed: 5 -> 6, 3x3 on 7x7 (the input copied), batch 11', convCase(11, 5, 7, 7, 6, 3, 1, 1, 1, 1)],
  ['packed: 3 -> 4, 5x5 on 10x10 (100 pixels: 89 % of 112 lanes), batch 3', convCase(3, 3, 10, 10, 4, 5, 1, 2, 1, 1)],
];

// Strided backward input by phases (AVX-512): each stride phase of dx a stride-1 gathered GEMM over
// dy with that phase's taps; taken where im2col's patch matrix passes 256K floats with at most 128
// output channels, phases of at least 4x4 and 16 input channels
const phaseCases: [string, Conv2dParams][] = [
  ['3x3/2 from 10x10 to 5x5, 16 -> 24, batch 120', convCase(120, 16, 10, 10, 24, 3, 2, 1, 1, 1)],
  ['3x3/3 without padding on 16x14 (phase rows no output reaches: zeros + addend), 16 -> 8, batch 114', convCase(114, 16, 16, 14, 8, 3, 3, 0, 1, 1)],
  ['5x5/2 padding 2 from 9x9 (3- and 2-tap phases), 16 -> 8, batch 27', convCase(27, 16, 9, 9, 8, 5, 2, 2, 1, 1)],
];

for (const [path, cases] of [['', convCases], [', strided backward input by phases', phaseCases], [', weight gradient by pixels in lanes', pilWeightCases]] as const) {
  for (const [name, p] of cases) test(`native conv2d forward/backward = reference${path}: ${name}`, { skip }, () => checkConv(p));
}
/** conv2dBackwardWeight of random x and dy on 1, 2 and 3 threads: the same bits. */
function weightGradientSameBitsOnThreads(p: Conv2dParams): void {
  const x = randomArray(p.n * p.cIn * p.h * p.w, gen);
  const dy = randomArray(p.n * p.cOut * p.oh * p.ow, gen);
  const before = nat!.getThreads();
  const outs = [1, 2, 3].map((t) => {
    nat!.setThreads(t);
    const dw = new Float32Array(p.cOut * p.cIn * p.kh * p.kw).fill(NaN);
    nat!.conv2dBackwardWeight(dw, x, dy, p);
    return dw;
  });
  nat!.setThreads(before);
  assert.deepEqual(outs[1], outs[0], '2 threads vs 1');
  assert.deepEqual(outs[2], outs[0], '3 threads vs 1');
}
test('the weight gradients by pixels in lanes and by channels-last outer products have the same bits on 1, 2 and 3 threads', { skip }, () => {
  // 17 images: groups of 8, 8 and 1, each summed on its own, the groups added in order (the stem by
  // pixels in lanes; the strided 16 -> 32 and 32 -> 64 by outer products over phase planes)
  for (const p of [convCase(17, 1, 28, 28, 16, 3, 1, 1, 1, 1), convCase(17, 16, 28, 28, 32, 3, 2, 1, 1, 1), convCase(17, 32, 14, 14, 64, 3, 2, 1, 1, 1), convCase(17, 32, 14, 14, 20, 3, 2, 1, 1, 1)]) {
    weightGradientSameBitsOnThreads(p);
  }
});
test('the dense product\'s weight gradient has the same bits on 1, 2 and 3 threads', { skip }, () => {
  // W' large enough that its product and the fold back into taps run on every thread
  for (const p of [convCase(33, 64, 2, 2, 72, 3, 1, 1, 1, 1), convCase(33, 96, 2, 2, 80, 3, 2, 1, 1, 1), convCase(33, 128, 1, 1, 96, 3, 1, 1, 1, 1)]) {
    weightGradientSameBitsOnThreads(p);
  }
});
for (const [name, p] of pilStridedCases) {
  test(`native conv2d forward/backward = reference, pixels in lanes strided: ${name}`, { skip }, () => {
    const before = nat!.getThreads();
    nat!.setThreads(2);
    try {
      checkConv(p);
    } finally {
      nat!.setThreads(before);
    }
  });
}

function checkAdaptiveAvgPool(x: Float32Array, p: AdaptivePoolParams, tol: Tolerance): void {
  const ny = p.n * p.c * p.oh * p.ow;
  const yr = new Float32Array(ny), yn = new Float32Array(ny).fill(NaN);
  tsKernels.adaptiveAvgPool2d(yr, x, p);
  nat!.adaptiveAvgPool2d(yn, x, p);
  assertClose(yn, yr, tol, `adaptive avg pool to ${p.oh}x${p.ow}`);
  const gr = new Float32Array(x.length), gn = new Float32Array(x.length).fill(NaN);
  tsKernels.adaptiveAvgPool2dBackward(gr, yr, p);
  nat!.adaptiveAvgPool2dBackward(gn, yr, p);
  assertClose(gn, gr, tol, `adaptive avg pool backward to ${p.oh}x${p.ow}`);
}

function checkConv(p: Conv2dParams): void {
  const nx = p.n * p.cIn * p.h * p.w;
  const nw = p.cOut * (p.cIn / p.groups) * p.kh * p.kw;
  const ny = p.n * p.cOut * p.oh * p.ow;
  const x = randomArray(nx, gen);
  const w = randomArray(nw, gen, 0.3);
  const b = randomArray(p.cOut, gen);
  const dy = randomArray(ny, gen);
  const tol = winogradGeometry(p) ? 5e-5 : 1e-5;
  const yr = new Float32Array(ny);
  const yn = new Float32Array(ny).fill(NaN);
  tsKernels.conv2d(yr, x, w, b, p);
  nat!.conv2d(yn, x, w, b, p);
  assertClose(yn, yr, scaleTol(yr, tol), 'forward');
  // weights packed once (the inference plan's path); w itself is not passed
  const packed = nat!.packConvWeights(w, p);
  const yp = new Float32Array(ny).fill(NaN);
  nat!.conv2dFused(yp, x, null, b, null, false, p, packed);
  assertClose(yp, yr, scaleTol(yr, tol), 'forward with pre-packed weights');
  assert.equal(packed.layout, nat!.convPackLayout(p));
  assert.deepEqual(nat!.unpackConvWeights(packed, p), w, 'unpacked weights are the original ones');
  // fused epilogue: + residual, relu
  const res = randomArray(ny, gen);
  const fused = new Float32Array(ny);
  nat!.conv2dFused(fused, x, w, b, res, true, p);
  const expect = yr.map((v, i) => Math.max(0, v + res[i]!));
  assertClose(fused, expect, scaleTol(expect, tol), 'fused residual + relu');
  // in place: y aliases the residual
  const inplace = res.slice();
  nat!.conv2dFused(inplace, x, w, b, inplace, false, p);
  assertClose(inplace, yr.map((v, i) => v + res[i]!), scaleTol(yr, tol), 'fused residual in place');
  const dxr = new Float32Array(nx);
  const dxn = new Float32Array(nx).fill(NaN);
  tsKernels.conv2dBackwardInput(dxr, dy, w, p);
  nat!.conv2dBackwardInput(dxn, dy, w, p);
  assertClose(dxn, dxr, scaleTol(dxr, tol), 'backward input');
  // plus an addend (autograd's sum for an input used twice), separate from dx and dx itself
  const addend = randomArray(nx, gen);
  const want = dxr.map((v, i) => v + addend[i]!);
  const dxa = new Float32Array(nx).fill(NaN);
  nat!.conv2dBackwardInput(dxa, dy, w, p, addend);
  assertClose(dxa, want, scaleTol(want, tol), 'backward input + addend');
  const inplace2 = addend.slice();
  nat!.conv2dBackwardInput(inplace2, dy, w, p, inplace2);
  assertClose(inplace2, want, scaleTol(want, tol), 'backward input + addend in place');
  const dwr = new Float32Array(nw);
  const dwn = new Float32Array(nw).fill(NaN);
  tsKernels.conv2dBackwardWeight(dwr, x, dy, p);
  nat!.conv2dBackwardWeight(dwn, x, dy, p);
  assertClose(dwn, dwr, scaleTol(dwr, tol), 'backward weight');
}

test('native conv2d: weights packed for one input size still give the right answer at another', { skip }, () => {
  // 14x14 takes the pixel-row kernel (its own packed layout), 16x16 the q-grid one (micro-kernel
  // panels); on a 1x1 map the dense product over the batch (plain weights)
  const pairs = [
    [convCase(2, 24, 14, 14, 40, 3, 1, 1, 1, 1), convCase(2, 24, 16, 16, 40, 3, 1, 1, 1, 1)],
    [convCase(3, 24, 1, 1, 40, 3, 1, 1, 1, 1), convCase(2, 24, 16, 16, 40, 3, 1, 1, 1, 1)],
  ] as const;
  for (const [a, b] of pairs) {
    const w = randomArray(a.cOut * a.cIn * 9, gen, 0.3);
    for (const [packFor, runOn] of [[a, b], [b, a]] as const) {
      const packed = nat!.packConvWeights(w, packFor);
      const x = randomArray(runOn.n * runOn.cIn * runOn.h * runOn.w, gen);
      const ny = runOn.n * runOn.cOut * runOn.oh * runOn.ow;
      const yr = new Float32Array(ny);
      tsKernels.conv2d(yr, x, w, null, runOn);
      const yp = new Float32Array(ny).fill(NaN);
      nat!.conv2dFused(yp, x, null, null, null, false, runOn, packed);
      assertClose(yp, yr, scaleTol(yr), `packed for ${packFor.cIn}->${packFor.cOut} ${packFor.h}x${packFor.w}, run on ${runOn.h}x${runOn.w}`);
    }
    if (nat!.isa === 'avx512') assert.notEqual(nat!.convPackLayout(a), nat!.convPackLayout(b), 'the two sizes use different layouts');
  }
});

test("the threads' cache-line round trip: measured with two threads (a positive time), 0 with one", { skip }, () => {
  const before = nat!.getThreads();
  try {
    nat!.setThreads(2);
    const ns = nat!.handoffNs();
    assert.ok(Number.isFinite(ns) && ns > 0 && ns < 1e8, `two threads: ${ns} ns`);
    nat!.setThreads(1);
    assert.equal(nat!.handoffNs(), 0);
    // the L2 the blocking is sized by: the C library's figure (or RESNET_L2_KB), clamped to 256 KB-16 MB
    assert.ok(nat!.l2Bytes >= 256 * 1024 && nat!.l2Bytes <= 16 * 1024 * 1024 && nat!.l2Bytes % 1024 === 0, String(nat!.l2Bytes));
  } finally {
    nat!.setThreads(before);
  }
});

test('native conv2d backward weight gives the same bits on every run (reductions in a fixed order)', { skip }, () => {
  // one shape per backward-weight path: channels-last (16-64 channels), gathered GEMM (>= 64), dot
  // products (strided, narrow), im2col (groups), Winograd (whole 16-channel blocks; 40 images of 14x14:
  // several chunks of tiles, in private groups on 2 threads; 64 -> 64 on 7x7: private groups where two
  // thirds of a core's L2 hold their sums, 1 MB or more, else shared chunks); batch large enough that
  // several blocks run
  for (const p of [convCase(12, 16, 14, 14, 32, 3, 1, 0, 1, 1), convCase(9, 8, 6, 6, 64, 3, 1, 1, 1, 1), convCase(16, 8, 14, 14, 16, 3, 2, 1, 1, 1), convCase(16, 8, 6, 6, 8, 3, 1, 1, 1, 2), convCase(40, 32, 14, 14, 48, 3, 1, 1, 1, 1), convCase(30, 64, 7, 7, 64, 3, 1, 1, 1, 1)]) {
    const x = randomArray(p.n * p.cIn * p.h * p.w, gen);
    const dy = randomArray(p.n * p.cOut * p.oh * p.ow, gen);
    const first = new Float32Array(p.cOut * (p.cIn / p.groups) * p.kh * p.kw);
    nat!.conv2dBackwardWeight(first, x, dy, p);
    for (let r = 0; r < 8; r++) {
      const again = new Float32Array(first.length);
      nat!.conv2dBackwardWeight(again, x, dy, p);
      assert.deepEqual(again, first, `run ${r} of ${JSON.stringify(p)}`);
    }
  }
});

test('native gemm = reference for every transpose combination and odd sizes', { skip }, () => {
  for (const [m, n, k] of [[1, 1, 1], [7, 13, 5], [15, 33, 300], [29, 65, 17], [100, 3, 257], [16, 40, 9], [130, 70, 400], [1, 1000, 2048], [3, 37, 61], [4, 513, 300], [2, 5, 33], [16, 200, 77], [64, 300, 129]] as const) {
    // (m <= 4: the matrix-vector path of a classifier head at small batch; n >= m with several strips:
    // op(A) packed once for all of them, 8- and 14-row panels, a partial last panel, k not a multiple of 16)
    for (const ta of [false, true]) {
      for (const tb of [false, true]) {
        const a = randomArray(m * k, gen);
        const b = randomArray(k * n, gen);
        const c0 = randomArray(m * n, gen);
        for (const [alpha, beta] of [[1, 0], [0.5, 1], [2, -0.5]] as const) {
          const cr = c0.slice();
          // beta = 0: C is output only (NaN there must not leak into the result)
          const cn = beta === 0 ? new Float32Array(m * n).fill(NaN) : c0.slice();
          tsKernels.gemm(cr, a, b, m, n, k, ta, tb, alpha, beta);
          nat!.gemm(cn, a, b, m, n, k, ta, tb, alpha, beta);
          assertClose(cn, cr, scaleTol(cr), `gemm ${m}x${n}x${k} ta=${ta} tb=${tb} alpha=${alpha} beta=${beta}`);
        }
      }
    }
  }
});

test('native zero-pad shortcut (option A) and its adjoint = reference, every element written', { skip }, () => {
  for (const [n, cIn, h, w, cOut, stride] of [[3, 5, 7, 9, 11, 2], [2, 16, 28, 28, 32, 2], [64, 32, 14, 14, 64, 2], [1, 4, 5, 5, 4, 1], [2, 3, 7, 8, 6, 3], [2, 4, 9, 40, 8, 2], [1, 2, 33, 35, 2, 2]] as const) {
    const p = { n, cIn, h, w, cOut, stride };
    const ny = n * cOut * Math.ceil(h / stride) * Math.ceil(w / stride);
    const x = randomArray(n * cIn * h * w, gen);
    const yr = new Float32Array(ny);
    tsKernels.zeroPadSubsample(yr, x, p, false);
    const yn = new Float32Array(ny).fill(NaN);
    nat!.zeroPadSubsample(yn, x, p, false);
    assert.deepEqual(yn, yr, `forward ${JSON.stringify(p)}`);
    const gy = randomArray(ny, gen);
    const gr = new Float32Array(x.length).fill(NaN);
    tsKernels.zeroPadSubsample(gy, gr, p, true);
    const gn = new Float32Array(x.length).fill(NaN);
    nat!.zeroPadSubsample(gy, gn, p, true);
    assert.deepEqual(gn, gr, `adjoint ${JSON.stringify(p)}`);
    assert.ok(gr.every((v) => !Number.isNaN(v)), 'the adjoint writes every element');
  }
  assert.throws(() => nat!.zeroPadSubsample(new Float32Array(8), new Float32Array(16), { n: 1, cIn: 4, h: 2, w: 2, cOut: 2, stride: 1 }, false), /geometry/);
});

test('native batch norm (train, eval, backward) = reference, with 16 and 8 lanes', { skip }, () =>
  withEachIsa((isa) => {
  // its own stream: the relu checks below need data that it clips in part, whatever other tests draw
  const gen = new Generator(5);
  // maps of < 16 pixels take the column-sum paths (a 1x1 map with enough elements to thread: 64 x 520)
  // (>= 16 pixels: image by image, 16 or 8 lanes, sums per block of images; 40 images: 16 blocks of 2-3,
  // threaded; 121 and 300 pixels: partial last vectors of both widths)
  for (const [n, c, hw] of [[1, 3, 7], [7, 5, 13], [4, 17, 64], [2, 64, 300], [64, 520, 1], [9, 33, 4], [3, 40, 15], [40, 8, 121]] as const) {
    const x = randomArray(n * c * hw, gen, 2);
    const g = randomArray(c, gen);
    const bt = randomArray(c, gen);
    const p = { n, c, hw, eps: 1e-5 };
    const out = () => ({ y: new Float32Array(n * c * hw), mean: new Float32Array(c), inv: new Float32Array(c), vu: new Float32Array(c) });
    const r = out();
    const q = out();
    tsKernels.batchNormTrain(r.y, r.mean, r.inv, r.vu, x, g, bt, p);
    nat!.batchNormTrain(q.y, q.mean, q.inv, q.vu, x, g, bt, p);
    for (const k of ['y', 'mean', 'inv', 'vu'] as const) assertClose(q[k], r[k], scaleTol(r[k]), `${isa} ${n}x${c}x${hw}: train ${k}`);
    const dy = randomArray(n * c * hw, gen);
    for (const training of [true, false]) {
      const dxr = new Float32Array(n * c * hw), dgr = new Float32Array(c), dbr = new Float32Array(c);
      const dxn = new Float32Array(n * c * hw), dgn = new Float32Array(c), dbn = new Float32Array(c);
      tsKernels.batchNormBackward(dxr, dgr, dbr, dy, x, r.mean, r.inv, g, training, p);
      nat!.batchNormBackward(dxn, dgn, dbn, dy, x, r.mean, r.inv, g, training, p);
      assertClose(dxn, dxr, scaleTol(dxr), `${isa} ${n}x${c}x${hw}: backward dx (training=${training})`);
      assertClose(dgn, dgr, scaleTol(dgr), 'backward dgamma');
      assertClose(dbn, dbr, scaleTol(dbr), 'backward dbeta');
    }
    const rm = randomArray(c, gen);
    const rv = randomArray(c, gen).map((v) => Math.abs(v) + 0.1);
    const er = new Float32Array(n * c * hw), en = new Float32Array(n * c * hw);
    tsKernels.batchNormEval(er, x, rm, rv, g, null, p);
    nat!.batchNormEval(en, x, rm, rv, g, null, p);
    assertClose(en, er, scaleTol(er), 'eval (no beta)');

    // fused relu: forward = relu(bn(x)); backward with the relu output masks dy first
    const f = out();
    nat!.batchNormTrain(f.y, f.mean, f.inv, f.vu, x, g, bt, p, true);
    assert.ok(f.y.some((v) => v === 0) && f.y.some((v) => v > 0), 'relu clips some outputs');
    assertClose(f.y, r.y.map((v) => Math.max(0, v)), scaleTol(r.y), 'train + relu');
    // a residual block's join: relu(bn(x) + residual), and without the relu
    const rsd = randomArray(n * c * hw, gen);
    for (const withRelu of [true, false]) {
      const wr = out();
      const nr = out();
      tsKernels.batchNormTrain(wr.y, wr.mean, wr.inv, wr.vu, x, g, bt, p, withRelu, rsd);
      nat!.batchNormTrain(nr.y, nr.mean, nr.inv, nr.vu, x, g, bt, p, withRelu, rsd);
      assertClose(nr.y, wr.y, scaleTol(wr.y), `train + residual (relu=${withRelu})`);
    }
    assert.throws(() => nat!.batchNormTrain(f.y, f.mean, f.inv, f.vu, x, g, bt, p, true, f.y), /residual must not be its output/);
    assert.throws(() => nat!.batchNormTrain(f.y, f.mean, f.inv, f.vu, x, g, bt, p, true, rsd.subarray(1)), /shorter than the geometry/);
    assert.throws(() => nat!.batchNormBackward(new Float32Array(x.length), null, null, dy, x, f.mean, f.inv, g, true, p, f.y, bt.subarray(1)), /shorter than the geometry/);
    const fe = new Float32Array(n * c * hw);
    nat!.batchNormEval(fe, x, rm, rv, g, null, p, true);
    assertClose(fe, er.map((v) => Math.max(0, v)), scaleTol(er), 'eval + relu');
    const masked = dy.map((v, i) => (f.y[i]! <= 0 ? 0 : v));
    for (const training of [true, false]) {
      const want = new Float32Array(n * c * hw), wg = new Float32Array(c), wb = new Float32Array(c);
      tsKernels.batchNormBackward(want, wg, wb, masked, x, r.mean, r.inv, g, training, p);
      for (const [name, k] of [['ts', tsKernels], ['native', nat!]] as const) {
        const dx = new Float32Array(n * c * hw).fill(NaN), dg = new Float32Array(c), db = new Float32Array(c);
        k.batchNormBackward(dx, dg, db, dy, x, r.mean, r.inv, g, training, p, f.y);
        assertClose(dx, want, scaleTol(want), `${name} (${isa}) backward through the fused relu dx (training=${training})`);
        assertClose(dg, wg, scaleTol(wg), `${name} fused dgamma`);
        assertClose(db, wb, scaleTol(wb), `${name} fused dbeta`);
      }
    }

    // a residual join's backward: relu(bn(x) + residual)'s mask read (it cannot be recomputed from x),
    // the masked gradient written to maskedOut too: the same bits as masking first, then the
    // backward of the masked gradient (NaN outputs let the gradient through, as reluBackward)
    const j = out();
    nat!.batchNormTrain(j.y, j.mean, j.inv, j.vu, x, g, bt, p, true, rsd);
    j.y[1] = NaN;
    assert.ok(j.y.some((v) => v === 0) && j.y.some((v) => v > 0), 'the join clips some outputs');
    for (const [name, k] of [['ts', tsKernels], ['native', nat!]] as const) {
      const gb = new Float32Array(n * c * hw);
      k.reluBackward(gb, dy, j.y);
      const want = [new Float32Array(n * c * hw), new Float32Array(c), new Float32Array(c)] as const;
      k.batchNormBackward(want[0], want[1], want[2], gb, x, j.mean, j.inv, g, true, p, null, bt);
      const got = [new Float32Array(n * c * hw).fill(NaN), new Float32Array(c), new Float32Array(c)] as const;
      const gbOut = new Float32Array(n * c * hw).fill(NaN);
      k.batchNormBackward(got[0], got[1], got[2], dy, x, j.mean, j.inv, g, true, p, j.y, undefined, gbOut);
      assert.deepEqual(gbOut, gb, `${name} ${n}x${c}x${hw}: maskedOut = reluBackward`);
      got.forEach((a, i) => assert.deepEqual(a, want[i], `${name} ${n}x${c}x${hw}: output ${i} as from the masked gradient`));
    }
    const gbOut = new Float32Array(n * c * hw);
    const dxj = new Float32Array(n * c * hw);
    assert.throws(() => nat!.batchNormBackward(dxj, null, null, dy, x, j.mean, j.inv, g, true, p, j.y, bt, gbOut), /maskedOut needs reluY and no beta/);
    assert.throws(() => nat!.batchNormBackward(dxj, null, null, dy, x, j.mean, j.inv, g, true, p, null, undefined, gbOut), /maskedOut needs reluY and no beta/);
    assert.throws(() => nat!.batchNormBackward(dxj, null, null, dy, x, j.mean, j.inv, g, true, p, j.y, undefined, gbOut.subarray(1)), /shorter than the geometry/);

    // the join's relu mask as bits (the reference always writes them; native only for tensors larger
    // than a core's L2, at least 256 KB, so not these: the test below)
    const words = Math.ceil(hw / 16);
    checkReluBits(tsKernels, 'ts', x, g, bt, rsd, dy, p, true);
    checkReluBits(nat!, 'native', x, g, bt, rsd, dy, p, false);
    const bits = new Uint16Array(n * c * words);
    assert.throws(() => nat!.batchNormTrain(j.y, j.mean, j.inv, j.vu, x, g, bt, p, false, rsd, bits), /reluBits needs relu/);
    assert.throws(() => nat!.batchNormTrain(j.y, j.mean, j.inv, j.vu, x, g, bt, p, true, rsd, bits.subarray(1)), /mask shorter than the geometry/);
    assert.throws(() => nat!.batchNormTrain(j.y, j.mean, j.inv, j.vu, x, g, bt, p, true, rsd, new Float32Array(bits.length) as unknown as Uint16Array), /expected a Uint16Array/);
    assert.throws(() => nat!.batchNormBackward(dxj, null, null, dy, x, j.mean, j.inv, g, true, p, null, undefined, null, bits), /reluBits needs reluY/);
  }
  }));

/** batchNormTrain with relu, a residual and reluBits on kernels k: whether it wrote them is `expect`;
 * if it did, they are set exactly where y > 0 (padding bits clear), and the backward reads them
 * instead of reluY (a reluY that would pass everything must not change anything). */
function checkReluBits(k: Kernels, name: string, x: Float32Array, g: Float32Array, bt: Float32Array, rsd: Float32Array, dy: Float32Array, p: { n: number; c: number; hw: number; eps: number }, expect: boolean): void {
  const { n, c, hw } = p;
  const words = Math.ceil(hw / 16);
  const what = `${name} ${n}x${c}x${hw}`;
  const bits = new Uint16Array(n * c * words).fill(0xffff);
  const o = { y: new Float32Array(n * c * hw), mean: new Float32Array(c), inv: new Float32Array(c), vu: new Float32Array(c) };
  const wrote = k.batchNormTrain(o.y, o.mean, o.inv, o.vu, x, g, bt, p, true, rsd, bits);
  assert.equal(wrote, expect, `${what}: whether the relu bits were written`);
  if (!wrote) return;
  assert.ok(o.y.some((v) => v === 0) && o.y.some((v) => v > 0), `${what}: the join clips some outputs`);
  for (let s = 0; s < n * c; s++) {
    for (let w = 0; w < words; w++) {
      let want = 0;
      for (let i = 16 * w; i < Math.min(hw, 16 * w + 16); i++) if (o.y[s * hw + i]! > 0) want |= 1 << (i - 16 * w);
      if (bits[s * words + w] !== want) assert.fail(`${what}: word ${w} of map ${s} is ${bits[s * words + w]}, want ${want}`);
    }
  }
  const gb = new Float32Array(n * c * hw);
  k.reluBackward(gb, dy, o.y);
  const want = [new Float32Array(n * c * hw), new Float32Array(c), new Float32Array(c)] as const;
  k.batchNormBackward(want[0], want[1], want[2], dy, x, o.mean, o.inv, g, true, p, o.y, undefined, new Float32Array(n * c * hw));
  const got = [new Float32Array(n * c * hw).fill(NaN), new Float32Array(c), new Float32Array(c)] as const;
  const gbOut = new Float32Array(n * c * hw).fill(NaN);
  k.batchNormBackward(got[0], got[1], got[2], dy, x, o.mean, o.inv, g, true, p, new Float32Array(n * c * hw).fill(1), undefined, gbOut, bits);
  assert.ok(gbOut.every((v, i) => v === gb[i]), `${what}: maskedOut from the bits`);
  got.forEach((a, i) => assert.ok(a.every((v, j) => v === want[i][j]), `${what}: output ${i} from the bits as from reluY`));
}

test('native batch norm: the relu bits of a residual join on a tensor beyond any L2 (17.9 MB; odd maps: a partial last word), with 16 and 8 lanes', { skip }, () =>
  withEachIsa((isa) => {
  const gen = new Generator(11);
  const [n, c, hw] = [4, 16, 69997];
  const x = randomArray(n * c * hw, gen, 2), rsd = randomArray(n * c * hw, gen), dy = randomArray(n * c * hw, gen);
  const g = randomArray(c, gen), bt = randomArray(c, gen);
  const p = { n, c, hw, eps: 1e-5 };
  // written by the image-by-image passes (AVX-512 or AVX2), not by the portable channel loops
  checkReluBits(nat!, `native (${isa})`, x, g, bt, rsd, dy, p, isa !== 'portable');
  const r = { y: new Float32Array(n * c * hw), mean: new Float32Array(c), inv: new Float32Array(c), vu: new Float32Array(c) };
  const q = { y: new Float32Array(n * c * hw), mean: new Float32Array(c), inv: new Float32Array(c), vu: new Float32Array(c) };
  tsKernels.batchNormTrain(r.y, r.mean, r.inv, r.vu, x, g, bt, p, true, rsd);
  nat!.batchNormTrain(q.y, q.mean, q.inv, q.vu, x, g, bt, p, true, rsd, new Uint16Array(n * c * Math.ceil(hw / 16)));
  assertClose(q.y, r.y, scaleTol(r.y), `${isa}: train + residual + relu, bits written`);
  }));

test('native batch norm backward through a fused relu: given the forward beta, the same bits as reading the relu output, with 16 and 8 lanes', { skip }, () =>
  withEachIsa((isa) => {
  // Given beta, a backend may recompute the relu's input from x instead of reading its output
  // (AVX-512 training path). The mask must be the forward's exactly, pre-activations of exactly 0
  // included: even channels are -1, 0, 1, 0 repeated (mean exactly 0) with beta 0, so x = 0 gives 0.
  for (const [n, c, hw] of [[4, 6, 64], [40, 8, 124], [3, 5, 8], [9, 33, 4], [128, 16, 48]] as const) {
    const x = randomArray(n * c * hw, gen, 2).map((v, i) => ((Math.floor(i / hw) % c) % 2 === 0 ? [-1, 0, 1, 0][i % 4]! : v));
    const g = randomArray(c, gen);
    const bt = randomArray(c, gen).map((v, ch) => (ch % 2 === 0 ? 0 : v));
    const p = { n, c, hw, eps: 1e-5 };
    const f = { y: new Float32Array(x.length), mean: new Float32Array(c), inv: new Float32Array(c), vu: new Float32Array(c) };
    nat!.batchNormTrain(f.y, f.mean, f.inv, f.vu, x, g, bt, p, true);
    assert.equal(f.mean[0], 0, 'an exact mean');
    assert.ok(f.y.some((v, i) => v === 0 && x[i] === 0), 'pre-activations of exactly 0');
    const dy = randomArray(x.length, gen);
    const run = (beta: Float32Array | null | undefined) => {
      const dx = new Float32Array(x.length).fill(NaN), dg = new Float32Array(c), db = new Float32Array(c);
      nat!.batchNormBackward(dx, dg, db, dy, x, f.mean, f.inv, g, true, p, f.y, beta);
      return [dx, dg, db];
    };
    const read = run(undefined);
    assert.deepEqual(run(bt), read, `${isa} ${n}x${c}x${hw}: recomputed mask = read mask`);
    // without beta in the forward: the same with null
    nat!.batchNormTrain(f.y, f.mean, f.inv, f.vu, x, g, null, p, true);
    assert.deepEqual(run(null), run(undefined), `${isa} ${n}x${c}x${hw}: no beta`);
  }
  }));

test('native batch norm: a mean far from zero against a small spread, and the same result on 1, 2 and 3 threads, with 16 and 8 lanes', { skip }, () =>
  withEachIsa((isa) => {
  // 1000 + noise of 0.01: E[x^2] - E[x]^2 in float would lose everything to cancellation; the sums
  // are taken about each channel's first value (one pass), the reference two-pass in float64
  const [n, c, hw] = [24, 6, 240]; // 34,560 values: threaded
  const x = randomArray(n * c * hw, gen, 0.01).map((v, i) => v + 1000 + (i % c));
  const g = randomArray(c, gen);
  const bt = randomArray(c, gen);
  const p = { n, c, hw, eps: 1e-5 };
  const r = { y: new Float32Array(x.length), mean: new Float32Array(c), inv: new Float32Array(c), vu: new Float32Array(c) };
  tsKernels.batchNormTrain(r.y, r.mean, r.inv, r.vu, x, g, bt, p);
  const dy = randomArray(x.length, gen);
  const before = nat!.getThreads();
  const runs: Float32Array[][] = [];
  try {
    for (const t of [1, 2, 3]) {
      nat!.setThreads(t);
      const q = { y: new Float32Array(x.length), mean: new Float32Array(c), inv: new Float32Array(c), vu: new Float32Array(c) };
      nat!.batchNormTrain(q.y, q.mean, q.inv, q.vu, x, g, bt, p, true);
      const dx = new Float32Array(x.length), dg = new Float32Array(c), db = new Float32Array(c);
      nat!.batchNormBackward(dx, dg, db, dy, x, q.mean, q.inv, g, true, p, q.y);
      runs.push([q.y, q.mean, q.inv, q.vu, dx, dg, db]);
    }
  } finally {
    nat!.setThreads(before);
  }
  const [y, mean, inv, vu] = runs[0]!;
  assertClose(mean!, r.mean, { rtol: 1e-6, atol: 0 }, 'mean');
  assertClose(inv!, r.inv, { rtol: 1e-4, atol: 0 }, 'invstd (a spread of 0.01 beside a mean of 1000)');
  assertClose(vu!, r.vu, { rtol: 2e-4, atol: 0 }, 'unbiased variance');
  assertClose(y!, r.y.map((v) => Math.max(0, v)), scaleTol(r.y, 1e-4), 'output');
  for (const k of [1, 2]) runs[k]!.forEach((a, i) => assert.deepEqual(a, runs[0]![i], `${isa}, ${k + 1} threads: output ${i} as on 1 thread`));
  }));

test("native max pool with indices on each ISA's path (AVX-512 loops, AVX2 gathers, the scalar loop) = reference: NaNs, ties, -inf windows", { skip }, async () => {
  const { loadBinding } = await import('../src/backends/native/binding.js');
  const b = loadBinding().binding!;
  const original = b.isa();
  const cases = [[1, 3, 9, 9, 3, 2, 1], [64, 4, 16, 16, 3, 2, 1], [7, 2, 8, 7, 2, 2, 0], [2, 5, 11, 6, 3, 1, 1], [1, 3, 40, 41, 3, 2, 1], [3, 4, 35, 34, 3, 2, 0], [2, 3, 5, 4, 3, 2, 1], [1, 2, 7, 70, 3, 2, 1], [3, 8, 16, 16, 3, 2, 1, 2], [2, 3, 30, 29, 3, 3, 1, 1, 2]] as const;
  try {
    for (const code of [0, 2, 1]) {
      const isa = b.isa(code);
      if (code !== 0 && isa !== (code === 2 ? 'avx2' : 'portable')) continue; // this CPU lacks it
      // the last two: rows dilated 2 (the 3-wide stride-2 row path, its rows dh apart); columns
      // dilated 2 at stride 3 (the general loops)
      for (const [n, c, h, w, k, s, pad, dh = 1, dw = 1] of cases) {
        const p: Pool2dParams = { n, c, h, w, kh: k, kw: k, sh: s, sw: s, ph: pad, pw: pad, dh, dw, oh: convOutSize(h, k, s, pad, dh), ow: convOutSize(w, k, s, pad, dw) };
        const what = `${isa}: ${n}x${c}x${h}x${w}, ${k}x${k}/${s} pad ${pad} dilation ${dh},${dw}`;
        const x = randomArray(n * c * h * w, gen);
        const ny = n * c * p.oh * p.ow;
        const xm = x.slice();
        for (let i = 0; i < 7; i++) xm[Math.floor(gen.random() * x.length)] = NaN;
        const xt = x.map((v) => Math.max(0, Math.round(v))); // ties: the first maximum in window order
        const xinf = new Float32Array(x.length).fill(-Infinity); // no tap greater: each window's first
        for (const [name, input] of [['NaNs', xm], ['ties', xt], ['-inf', xinf]] as const) {
          const yr = new Float32Array(ny), ar = new Int32Array(ny), yn = new Float32Array(ny).fill(7), an = new Int32Array(ny).fill(-7);
          tsKernels.maxPool2d(yr, ar, input, p);
          nat!.maxPool2d(yn, an, input, p);
          assert.deepEqual(an, ar, `${what}, ${name}: indices`);
          assert.deepEqual(yn, yr, `${what}, ${name}: values`);
        }
      }
    }
  } finally {
    b.isa(0);
    assert.equal(b.isa(), original);
  }
});

test('native elementwise, pooling, log-softmax and SGD = reference', { skip }, () => {
  for (const n of [1, 15, 17, 100_003]) {
    const a = randomArray(n, gen);
    const b = randomArray(n, gen);
    for (const op of ['relu', 'add', 'addRelu', 'reluBackward'] as const) {
      const r = new Float32Array(n), q = new Float32Array(n);
      if (op === 'relu') (tsKernels.relu(r, a), nat!.relu(q, a));
      else if (op === 'reluBackward') (tsKernels.reluBackward(r, b, a), nat!.reluBackward(q, b, a));
      else (tsKernels[op](r, a, b), nat![op](q, a, b));
      assert.deepEqual(q, r, `${op} on ${n} elements`);
    }
  }
  const nan = new Float32Array([NaN, -1, 2]);
  const out = new Float32Array(3);
  nat!.relu(out, nan);
  assert.ok(Number.isNaN(out[0]!) && out[1] === 0 && out[2] === 2, 'relu propagates NaN');
  const poolCases = [[1, 3, 9, 9, 3, 2, 1], [3, 8, 16, 16, 3, 2, 1], [7, 2, 8, 7, 2, 2, 0], [2, 5, 11, 6, 3, 1, 1], [1, 64, 112, 111, 3, 2, 1], [3, 4, 35, 34, 3, 2, 0], [2, 3, 5, 4, 3, 2, 1], [1, 2, 7, 70, 3, 2, 1], [3, 8, 16, 16, 3, 2, 1, 2]] as const;
  // the last: rows dilated 2, columns not (the 3-wide stride-2 row path, its rows dh apart)
  for (const [n, c, h, w, k, s, pad, dh = 1] of poolCases) {
    const p: Pool2dParams = { n, c, h, w, kh: k, kw: k, sh: s, sw: s, ph: pad, pw: pad, dh, dw: 1, oh: convOutSize(h, k, s, pad, dh), ow: convOutSize(w, k, s, pad, 1) };
    const x = randomArray(n * c * h * w, gen);
    const xm = x.slice(); // for max pool: a few NaNs, which win their windows (as in PyTorch)
    for (let i = 0; i < 5; i++) xm[Math.floor(gen.random() * x.length)] = NaN;
    const ny = n * c * p.oh * p.ow;
    const yr = new Float32Array(ny), yn = new Float32Array(ny), ar = new Int32Array(ny), an = new Int32Array(ny);
    tsKernels.maxPool2d(yr, ar, xm, p);
    nat!.maxPool2d(yn, an, xm, p);
    assert.deepEqual(yn, yr);
    assert.deepEqual(an, ar);
    // ties (ReLU outputs are full of zeros): the first maximum in window order, on every path
    const xt = x.map((v) => Math.max(0, Math.round(v)));
    const yt = new Float32Array(ny), at = new Int32Array(ny), ytn = new Float32Array(ny), atn = new Int32Array(ny);
    tsKernels.maxPool2d(yt, at, xt, p);
    nat!.maxPool2d(ytn, atn, xt, p);
    assert.deepEqual(atn, at, 'max pool argmax with ties');
    // all -inf: no tap is ever greater, so each window keeps its first tap inside the map
    const xinf = new Float32Array(x.length).fill(-Infinity);
    tsKernels.maxPool2d(yt, at, xinf, p);
    nat!.maxPool2d(ytn, atn, xinf, p);
    assert.deepEqual(atn, at, 'max pool argmax of -inf windows');
    const yi = new Float32Array(ny).fill(7);
    nat!.maxPool2dNoIndices(yi, xm, p);
    assert.deepEqual(yi, yr, 'max pool without indices (inference path)');
    const dy = randomArray(ny, gen);
    const dxr = new Float32Array(x.length), dxn = new Float32Array(x.length);
    tsKernels.maxPool2dBackward(dxr, dy, ar, p);
    nat!.maxPool2dBackward(dxn, dy, an, p);
    assertClose(dxn, dxr, tol, 'maxpool backward');
    checkAdaptiveAvgPool(x, { n, c, h, w, oh: 3, ow: 2 }, tol);
    checkAdaptiveAvgPool(x, { n, c, h, w, oh: 1, ow: 1 }, tol); // global: its own paths
  }
  // the global average of 1x1 maps (ResNet-18's head on 32x32 inputs): a copy, and back
  checkAdaptiveAvgPool(randomArray(3 * 70, gen), { n: 3, c: 70, h: 1, w: 1, oh: 1, ow: 1 }, { rtol: 0, atol: 0 });
  // a global average large enough to be split over the threads (ResNet-20's head: 128 x 64 x 7 x 7),
  // the same bits on one and on two threads
  {
    const gp = { n: 9, c: 70, h: 9, w: 7, oh: 1, ow: 1 };
    const gx = randomArray(gp.n * gp.c * gp.h * gp.w, gen, 3);
    const before = nat!.getThreads();
    try {
      const run = (threads: number): [Float32Array, Float32Array] => {
        nat!.setThreads(threads);
        const y = new Float32Array(gp.n * gp.c).fill(NaN), dx = new Float32Array(gx.length).fill(NaN);
        nat!.adaptiveAvgPool2d(y, gx, gp);
        nat!.adaptiveAvgPool2dBackward(dx, y, gp);
        return [y, dx];
      };
      nat!.setThreads(2);
      checkAdaptiveAvgPool(gx, gp, tol);
      const [y1, d1] = run(1);
      const [y2, d2] = run(2);
      assert.deepEqual(y2, y1, 'global average pool: the bits of one thread');
      assert.deepEqual(d2, d1, 'its backward: the bits of one thread');
    } finally {
      nat!.setThreads(before);
    }
  }
  const logits = randomArray(7 * 13, gen, 5);
  const lr = new Float32Array(91), ln = new Float32Array(91);
  tsKernels.logSoftmax(lr, logits, 7, 13);
  nat!.logSoftmax(ln, logits, 7, 13);
  assertClose(ln, lr, tol, 'log softmax');
  const g = randomArray(91, gen);
  const gr = new Float32Array(91), gn = new Float32Array(91);
  tsKernels.logSoftmaxBackward(gr, g, lr, 7, 13);
  nat!.logSoftmaxBackward(gn, g, lr, 7, 13);
  assertClose(gn, gr, tol, 'log softmax backward');
  for (const nesterov of [false, true]) {
    const p0 = randomArray(37, gen), grad = randomArray(37, gen);
    const pr = p0.slice(), pn = p0.slice(), br = new Float32Array(37), bn = new Float32Array(37);
    for (let step = 0; step < 3; step++) {
      const sp = { lr: 0.1, momentum: 0.9, dampening: 0, weightDecay: 1e-4, nesterov, firstStep: step === 0 };
      tsKernels.sgdStep(pr, grad, br, sp);
      nat!.sgdStep(pn, grad, bn, sp);
    }
    assertClose(pn, pr, tol, `sgd nesterov=${nesterov}`);
    assertClose(bn, br, tol, 'sgd momentum buffer');
  }
});

test('native cropKernels and sgdStep with a kernel window = reference (the window cut from the updated kernels)', { skip }, () => {
  const gen = new Generator(31);
  // 37 kernels of 5x4 (odd rows, threads split them); windows: one tap (the strided loop), 3x2, whole
  for (const win of [{ ky0: 2, kx0: 1, kh: 1, kw: 1 }, { ky0: 1, kx0: 2, kh: 3, kw: 2 }, { ky0: 0, kx0: 0, kh: 5, kw: 4 }]) {
    const rows = 37, src = randomArray(rows * 20, gen), len = rows * win.kh * win.kw;
    const dr = new Float32Array(len), dn = new Float32Array(len).fill(NaN);
    tsKernels.cropKernels(dr, src, rows, 5, 4, win);
    nat!.cropKernels(dn, src, rows, 5, 4, win);
    assert.deepEqual(dn, dr, `crop ${JSON.stringify(win)}`);
    assert.equal(dr[len - 1], src[(rows - 1) * 20 + (win.ky0 + win.kh - 1) * 4 + win.kx0 + win.kw - 1], 'the last kernel\'s last tap');
    // sgdStep with the window: the same update as without, and the window of the updated kernels;
    // large enough (> 32 K floats) to run on the pool, by blocks of kernels
    const big = 2000, p0 = randomArray(big * 20, gen), grad = randomArray(big * 20, gen);
    const pa = p0.slice(), pb = p0.slice(), ba = new Float32Array(big * 20), bb = new Float32Array(big * 20);
    const dst = new Float32Array(big * win.kh * win.kw).fill(NaN), want = new Float32Array(dst.length);
    for (let step = 0; step < 2; step++) {
      const sp = { lr: 0.1, momentum: 0.9, dampening: 0, weightDecay: 1e-4, nesterov: false, firstStep: step === 0 };
      nat!.sgdStep(pa, grad, ba, sp);
      nat!.sgdStep(pb, grad, bb, sp, { dst, rows: big, skh: 5, skw: 4, win });
    }
    assert.deepEqual(pb, pa, 'parameters as without the window');
    assert.deepEqual(bb, ba, 'momentum as without the window');
    nat!.cropKernels(want, pa, big, 5, 4, win);
    assert.deepEqual(dst, want, 'the window of the updated kernels');
    const rdst = new Float32Array(dst.length), pr = p0.slice();
    tsKernels.sgdStep(pr, grad, null, { lr: 0.1, momentum: 0, dampening: 0, weightDecay: 0, nesterov: false, firstStep: true }, { dst: rdst, rows: big, skh: 5, skw: 4, win });
    tsKernels.cropKernels(want, pr, big, 5, 4, win);
    assert.deepEqual(rdst, want, 'reference: the window of its update');
  }
  assert.throws(() => nat!.cropKernels(new Float32Array(4), new Float32Array(36), 4, 3, 3, { ky0: 2, kx0: 0, kh: 2, kw: 1 }), /bad kernel window/);
  assert.throws(() => nat!.cropKernels(new Float32Array(3), new Float32Array(36), 4, 3, 3, { ky0: 1, kx0: 1, kh: 1, kw: 1 }), /shorter than the geometry/);
  const sp = { lr: 0.1, momentum: 0, dampening: 0, weightDecay: 0, nesterov: false, firstStep: true };
  assert.throws(() => nat!.sgdStep(new Float32Array(36), new Float32Array(36), null, sp, { dst: new Float32Array(5), rows: 5, skh: 3, skw: 3, win: { ky0: 1, kx0: 1, kh: 1, kw: 1 } }), /window does not fit the parameter/);
});

test('the addon refuses buffers shorter than the geometry instead of overrunning them', { skip }, () => {
  const p = convCase(1, 3, 8, 8, 4, 3, 1, 1, 1, 1);
  assert.throws(() => nat!.conv2d(new Float32Array(10), new Float32Array(192), new Float32Array(108), null, p), /shorter than the geometry/);
  // backward-input's addend (the gradient summed so far) is checked like dx
  assert.throws(() => nat!.conv2dBackwardInput(new Float32Array(192), new Float32Array(256), new Float32Array(108), p, new Float32Array(191)), /shorter than the geometry/);
  assert.throws(() => nat!.conv2d(new Float32Array(256), new Float32Array(192), new Float32Array(108), new Float32Array(4) as never, { ...p, groups: 2 }), /invalid convolution geometry/);
  // packed weights: an unknown layout, or a buffer shorter than that layout needs for the geometry
  const packed = nat!.packConvWeights(new Float32Array(108), p);
  const y = new Float32Array(256), x = new Float32Array(192);
  assert.throws(() => nat!.conv2dFused(y, x, null, null, null, false, p, { data: packed.data, layout: 999 }), /invalid packed-weight layout/);
  assert.throws(() => nat!.conv2dFused(y, x, null, null, null, false, p, { data: packed.data.subarray(1), layout: packed.layout }), /shorter than the geometry/);
  assert.throws(() => nat!.unpackConvWeights({ data: packed.data, layout: 0 }, p), /invalid packed-weight layout/);
  const grouped = convCase(1, 4, 8, 8, 4, 3, 1, 1, 1, 2); // pixel-row panels exist only for groups = 1
  assert.throws(() => nat!.conv2dFused(y, new Float32Array(256), null, null, null, false, grouped, { data: new Float32Array(4096), layout: 1032 }), /invalid packed-weight layout/);
});

test('thread count can be changed and results do not depend on it', { skip }, () => {
  const p = convCase(3, 16, 14, 14, 32, 3, 1, 1, 1, 1);
  const x = randomArray(p.n * 16 * 196, gen);
  const w = randomArray(32 * 16 * 9, gen);
  const before = nat!.getThreads();
  const outs: Float32Array[] = [];
  for (const t of [1, 2, 3]) {
    nat!.setThreads(t);
    assert.equal(nat!.getThreads(), t);
    const y = new Float32Array(p.n * 32 * 196);
    nat!.conv2d(y, x, w, null, p);
    outs.push(y);
  }
  nat!.setThreads(before);
  assertClose(outs[1]!, outs[0]!, scaleTol(outs[0]!), '2 threads vs 1');
  assertClose(outs[2]!, outs[0]!, scaleTol(outs[0]!), '3 threads vs 1');
});

/** Random data for a 3x3 geometry and the reference's three passes (the forward with bias, a residual and relu). */
function winogradReference(p: Conv2dParams) {
  const nx = p.n * p.cIn * p.h * p.w, ny = p.n * p.cOut * p.oh * p.ow;
  const x = randomArray(nx, gen);
  const w = randomArray(p.cOut * p.cIn * 9, gen, 0.3);
  const bias = randomArray(p.cOut, gen);
  const res = randomArray(ny, gen);
  const dy = randomArray(ny, gen);
  const yr = new Float32Array(ny);
  tsKernels.conv2d(yr, x, w, bias, p);
  const expect = yr.map((v, i) => Math.max(0, v + res[i]!));
  const dxr = new Float32Array(nx);
  tsKernels.conv2dBackwardInput(dxr, dy, w, p);
  const dwr = new Float32Array(w.length);
  tsKernels.conv2dBackwardWeight(dwr, x, dy, p);
  return { x, w, bias, res, dy, expect, dxr, dwr };
}

/** The native NCHW passes: forward (bias, residual, relu), backward input, backward weight. */
function nchwPasses(p: Conv2dParams, x: Float32Array, w: Float32Array, bias: Float32Array, res: Float32Array, dy: Float32Array): Float32Array[] {
  const y = new Float32Array(res.length).fill(NaN);
  nat!.conv2dFused(y, x, w, bias, res, true, p);
  const dx = new Float32Array(x.length).fill(NaN);
  nat!.conv2dBackwardInput(dx, dy, w, p);
  const dw = new Float32Array(w.length).fill(NaN);
  nat!.conv2dBackwardWeight(dw, x, dy, p);
  return [y, dx, dw];
}

/** The native blocked forward (the inference plan's: weights packed once), returned as NCHW. */
function blockedForward(p: Conv2dParams, x: Float32Array, w: Float32Array, bias: Float32Array, res: Float32Array): Float32Array {
  const y = toBlocked(res, p.n, p.cOut, p.oh, p.ow);
  nat!.conv2dBlocked(y, toBlocked(x, p.n, p.cIn, p.h, p.w), bias, y, true, p, nat!.packConvWeightsBlocked(w, p, true), true);
  return fromBlocked(y, p.n, p.cOut, p.oh, p.ow);
}

test('Winograd in private chunks (each thread its own tiles through all three passes) = reference, forward and backward-input with the same bits as one thread', { skip }, () => {
  // two threads, and enough tiles for at least two chunks each (else the chunks are shared): NCHW 32 -> 32
  // on 28x28 (441 tiles, 8 chunks, the last of 49); 32 -> 48 on odd 13x13 maps (192 tiles in 5 chunks, the last
  // one shorter, cut edge tiles); blocked 64 -> 32 on 14x14 (batch 12, 7 chunks)
  const cases: [Conv2dParams, boolean][] = [
    [convCase(9, 32, 28, 28, 32, 3, 1, 1, 1, 1), false],
    // 64 -> 64 on 7x7, batch 30 (120 tiles, 5 chunks): the weight gradient's private groups where two
    // thirds of a core's L2 hold their sums (590 KB: an L2 of 1 MB or more), else the shared chunks
    [convCase(30, 64, 7, 7, 64, 3, 1, 1, 1, 1), false],
    [convCase(12, 32, 13, 13, 48, 3, 1, 1, 1, 1), false],
    [convCase(12, 64, 14, 14, 32, 3, 1, 1, 1, 1), true],
  ];
  const before = nat!.getThreads();
  try {
    for (const [p, blocked] of cases) {
      const { x, w, bias, res, dy, expect, dxr, dwr } = winogradReference(p);
      const runs = [1, 2].map((t) => {
        nat!.setThreads(t);
        return blocked ? [blockedForward(p, x, w, bias, res)] : nchwPasses(p, x, w, bias, res, dy);
      });
      const what = `${p.cIn} -> ${p.cOut} on ${p.h}x${p.w}, batch ${p.n}${blocked ? ', blocked' : ''}`;
      assertClose(runs[1]![0]!, expect, scaleTol(expect, 5e-5), `${what}: conv + bias + residual, relu`);
      assert.deepEqual(runs[1]![0], runs[0]![0], `${what}: 2 threads (private chunks) and 1 give the same bits`);
      if (!blocked) {
        assertClose(runs[1]![1]!, dxr, scaleTol(dxr, 5e-5), `${what}: backward input`);
        assert.deepEqual(runs[1]![1], runs[0]![1], `${what}: backward input, 2 threads and 1`);
        // the weight gradient's groups of chunks sum in their own order: close to one thread's (the
        // shared chunks), not equal
        assertClose(runs[1]![2]!, dwr, scaleTol(dwr, 5e-5), `${what}: backward weight`);
        assertClose(runs[0]![2]!, dwr, scaleTol(dwr, 5e-5), `${what}: backward weight, one thread`);
      }
    }
  } finally {
    nat!.setThreads(before);
  }
});

test('Winograd split by output channels (each thread its panels through every pass) = reference, with the bits of one thread in all three passes and in the blocked forward', { skip }, () => {
  // weights beyond the private chunks' limit and one or two chunks of tiles: 128 -> 128 on 4x4 (one tile
  // per image, batch 9), 128 -> 96 on odd 7x5 maps (cut edge tiles; three 32-channel panels shared out
  // unevenly; 96 -> 128 is its backward-input), 528 -> 512 on 2x2 in F(2x2), past the dense product's cap
  const cases = [convCase(9, 128, 4, 4, 128, 3, 1, 1, 1, 1), convCase(3, 128, 7, 5, 96, 3, 1, 1, 1, 1), convCase(5, 528, 2, 2, 512, 3, 1, 1, 1, 1)];
  const before = nat!.getThreads();
  try {
    for (const p of cases) {
      const { x, w, bias, res, dy, expect, dxr, dwr } = winogradReference(p);
      const runs = [1, 2].map((t) => {
        nat!.setThreads(t);
        // the three NCHW passes, then the blocked layout's forward (the inference plan's)
        return [...nchwPasses(p, x, w, bias, res, dy), blockedForward(p, x, w, bias, res)] as const;
      });
      const what = `${p.cIn} -> ${p.cOut} on ${p.h}x${p.w}, batch ${p.n}`;
      assertClose(runs[1][3]!, expect, scaleTol(expect, 5e-5), `${what}: blocked conv + bias + residual, relu`);
      assert.deepEqual(runs[1][3], runs[0][3], `${what}: blocked forward, 2 threads (split) and 1 give the same bits`);
      assertClose(runs[1][0]!, expect, scaleTol(expect, 5e-5), `${what}: conv + bias + residual, relu`);
      assertClose(runs[1][1]!, dxr, scaleTol(dxr, 5e-5), `${what}: backward input`);
      assertClose(runs[1][2]!, dwr, scaleTol(dwr, 5e-5), `${what}: backward weight`);
      for (const [i, pass] of ['forward', 'backward input', 'backward weight'].entries())
        assert.deepEqual(runs[1][i], runs[0][i], `${what}: ${pass}, 2 threads (split) and 1 give the same bits`);
    }
  } finally {
    nat!.setThreads(before);
  }
});

test('every compiled micro-kernel (AVX-512, AVX2, portable) gives the reference result, forward and backward', { skip }, async () => {
  const { loadBinding } = await import('../src/backends/native/binding.js');
  const b = loadBinding().binding!;
  const p = convCase(2, 17, 9, 9, 24, 3, 2, 1, 1, 1);
  const x = randomArray(p.n * 17 * 81, gen);
  const w = randomArray(24 * 17 * 9, gen);
  const yr = new Float32Array(p.n * 24 * p.oh * p.ow);
  tsKernels.conv2d(yr, x, w, null, p);
  const original = b.isa();
  try {
    for (const [code, name] of [[1, 'portable'], [2, 'avx2'], [3, 'avx512']] as const) {
      const got = b.isa(code);
      if (got !== name) continue; // this CPU lacks it
      const y = new Float32Array(yr.length);
      nat!.conv2d(y, x, w, null, p);
      assertClose(y, yr, scaleTol(yr), `conv2d with the ${name} micro-kernel`);
      // the dense product of 2x2 maps: its B panels are built for the ISA's panel width (32 or 16
      // columns), channel runs of whole panels (48 channels: 16 divides them, 32 does not)
      const pd = convCase(3, 48, 2, 2, 40, 3, 1, 1, 1, 1);
      const xd = randomArray(3 * 48 * 4, gen), wd = randomArray(40 * 48 * 9, gen), dyd = randomArray(3 * 40 * 4, gen);
      const ydr = new Float32Array(3 * 40 * 4), ydn = new Float32Array(ydr.length);
      tsKernels.conv2d(ydr, xd, wd, null, pd);
      nat!.conv2d(ydn, xd, wd, null, pd);
      assertClose(ydn, ydr, scaleTol(ydr), `dense forward with the ${name} micro-kernel`);
      const dxr = new Float32Array(xd.length), dxn = new Float32Array(xd.length);
      tsKernels.conv2dBackwardInput(dxr, dyd, wd, pd);
      nat!.conv2dBackwardInput(dxn, dyd, wd, pd);
      assertClose(dxn, dxr, scaleTol(dxr), `dense backward input with the ${name} micro-kernel`);
      // the training passes of a 3x3 layer whose AVX-512 paths are Winograd (16 -> 16, stride 1) and
      // pixels in lanes (16 -> 32, stride 2): im2col + GEMM with the narrower micro-kernels
      for (const pt of [convCase(3, 16, 10, 9, 16, 3, 1, 1, 1, 1), convCase(5, 16, 11, 10, 32, 3, 2, 1, 1, 1)]) {
        const xt = randomArray(pt.n * pt.cIn * pt.h * pt.w, gen), wt = randomArray(pt.cOut * pt.cIn * 9, gen);
        const dyt = randomArray(pt.n * pt.cOut * pt.oh * pt.ow, gen);
        const yr2 = new Float32Array(dyt.length), yn2 = new Float32Array(dyt.length);
        tsKernels.conv2d(yr2, xt, wt, null, pt);
        nat!.conv2d(yn2, xt, wt, null, pt);
        assertClose(yn2, yr2, scaleTol(yr2), `${pt.cIn} -> ${pt.cOut} stride ${pt.sh} forward with the ${name} micro-kernel`);
        const dxr2 = new Float32Array(xt.length), dxn2 = new Float32Array(xt.length);
        tsKernels.conv2dBackwardInput(dxr2, dyt, wt, pt);
        nat!.conv2dBackwardInput(dxn2, dyt, wt, pt);
        assertClose(dxn2, dxr2, scaleTol(dxr2), `${pt.cIn} -> ${pt.cOut} stride ${pt.sh} backward input with the ${name} micro-kernel`);
        const dwr2 = new Float32Array(wt.length), dwn2 = new Float32Array(wt.length);
        tsKernels.conv2dBackwardWeight(dwr2, xt, dyt, pt);
        nat!.conv2dBackwardWeight(dwn2, xt, dyt, pt);
        assertClose(dwn2, dwr2, scaleTol(dwr2), `${pt.cIn} -> ${pt.cOut} stride ${pt.sh} weight gradient with the ${name} micro-kernel`);
      }
      const m = 37, n = 41, k = 29;
      const a = randomArray(m * k, gen), bb = randomArray(k * n, gen);
      const cr = new Float32Array(m * n), cn = new Float32Array(m * n);
      tsKernels.gemm(cr, a, bb, m, n, k, true, true, 1, 0);
      nat!.gemm(cn, a, bb, m, n, k, true, true, 1, 0);
      assertClose(cn, cr, scaleTol(cr), `gemm with the ${name} micro-kernel`);
    }
  } finally {
    b.isa(0);
    assert.equal(b.isa(), original);
  }
});

/** The native passes of convolution p against the reference: the forward with bias, a residual read
 * from the output itself and relu, and with the weights packed once (the inference plan's; the plain
 * weights come back exactly); the backward input, alone and with an addend; the weight gradient;
 * and the same bits of all three on one thread as on the pool's threads (each output is summed by
 * one thread in a fixed order, or blocks of images are added in a fixed order). */
function checkConvPasses(p: Conv2dParams, what: string): void {
  // the AVX2 Winograd's geometries (whole 8-channel vectors): F(4x4)'s rounding grows with the
  // channels, ~1.4e-5 of the output's scale at 256 (1e-5 had failed once by 1.01x there)
  const tol = p.kh === 3 && p.kw === 3 && p.sh === 1 && p.sw === 1 && p.ph === 1 && p.pw === 1 && p.dh === 1 && p.dw === 1 && p.cIn % 8 === 0 && p.cOut % 8 === 0 ? 5e-5 : 1e-5;
  const x = randomArray(p.n * p.cIn * p.h * p.w, gen), w = randomArray(p.cOut * p.cIn * p.kh * p.kw, gen);
  const bias = randomArray(p.cOut, gen), res = randomArray(p.n * p.cOut * p.oh * p.ow, gen);
  const plain = new Float32Array(res.length);
  tsKernels.conv2d(plain, x, w, bias, p);
  const expect = plain.map((v, i) => Math.max(0, v + res[i]!));
  const y = Float32Array.from(res); // the residual read from the output itself
  nat!.conv2dFused(y, x, w, bias, y, true, p);
  assertClose(y, expect, scaleTol(expect, tol), `${what}: forward + bias + residual, relu`);
  const packed = nat!.packConvWeights(w, p);
  assert.equal(packed.layout, nat!.convPackLayout(p));
  const yp = new Float32Array(res.length).fill(NaN);
  nat!.conv2dFused(yp, x, null, bias, res, true, p, packed);
  assertClose(yp, expect, scaleTol(expect, tol), `${what}: forward with the packed weights`);
  assert.deepEqual(nat!.unpackConvWeights(packed, p), w, `${what}: unpacked weights`);
  const dy = randomArray(res.length, gen), dxr = new Float32Array(x.length), dxn = new Float32Array(x.length);
  tsKernels.conv2dBackwardInput(dxr, dy, w, p);
  nat!.conv2dBackwardInput(dxn, dy, w, p);
  assertClose(dxn, dxr, scaleTol(dxr, tol), `${what}: backward input`);
  const add = randomArray(x.length, gen), dxa = new Float32Array(x.length);
  nat!.conv2dBackwardInput(dxa, dy, w, p, add);
  assertClose(dxa, dxr.map((v, i) => v + add[i]!), scaleTol(dxr, tol), `${what}: backward input + addend`);
  const dwr = new Float32Array(w.length), dwn = new Float32Array(w.length);
  tsKernels.conv2dBackwardWeight(dwr, x, dy, p);
  nat!.conv2dBackwardWeight(dwn, x, dy, p);
  assertClose(dwn, dwr, scaleTol(dwr, tol), `${what}: weight gradient`);
  const before = nat!.getThreads();
  try {
    nat!.setThreads(1);
    const y1 = Float32Array.from(res), dx1 = new Float32Array(x.length), dw1 = new Float32Array(w.length);
    nat!.conv2dFused(y1, x, w, bias, y1, true, p);
    nat!.conv2dBackwardInput(dx1, dy, w, p);
    nat!.conv2dBackwardWeight(dw1, x, dy, p);
    assert.deepEqual(y1, y, `${what}: forward, one thread and ${before}`);
    assert.deepEqual(dx1, dxn, `${what}: backward input, one thread and ${before}`);
    assert.deepEqual(dw1, dwn, `${what}: weight gradient, one thread and ${before}`);
  } finally {
    nat!.setThreads(before);
  }
}

test('AVX2 pixels in lanes (stride-1 same-size convolutions without AVX-512; the weight gradient of stride 2 too) and tap panels (the forward of the others; the weight gradient of small ones) = reference on odd shapes: every pass (checkConvPasses)', { skip }, () =>
  withAvx2(() => {
    const cases = [
      convCase(1, 1, 7, 5, 3, 3, 1, 1, 1, 1), // 1 input channel, 3 outputs (one partial panel), odd map
      convCase(7, 5, 13, 11, 13, 3, 1, 1, 1, 1), // batch 7, 13 outputs (a whole and a partial panel)
      convCase(3, 16, 28, 28, 16, 3, 1, 1, 1, 1), // ResNet-20's first stage
      convCase(4, 64, 7, 7, 64, 3, 1, 1, 1, 1), // its last: 49 pixels, the last vector one lane
      convCase(2, 9, 7, 8, 17, 5, 1, 2, 1, 1), // 5x5 kernel
      convCase(2, 6, 9, 9, 10, 3, 1, 2, 2, 1), // dilation 2
      convCase(5, 8, 3, 3, 8, 3, 1, 1, 1, 1), // a map smaller than a vector
      // 160 input channels: the backward-input's blocks of 64, 64 and 32 summed through the band's
      // scratch; 9x9 maps, 11 vectors an image (a band of 8 and one of 3); 33 vectors in the batch.
      // Its forward, above 128 input channels, by tap panels
      convCase(3, 160, 9, 9, 12, 3, 1, 1, 1, 1),
      // tap panels (the forward of strided layers and of more than 128 input channels, and the weight
      // gradient where pixels in lanes does not take it and the panels stay small): 49 pixels,
      // so panels of 16 columns span images; 20 outputs (a partial micro-kernel panel); dilation 2 at
      // the map's edges; one input channel at stride 2 (the strided cases below take them too)
      convCase(3, 144, 7, 7, 20, 3, 1, 1, 1, 1),
      convCase(2, 130, 9, 9, 5, 3, 1, 2, 2, 1),
      convCase(5, 1, 11, 11, 3, 3, 2, 1, 1, 1),
      // few panels (25 columns) and weights beyond half an L2 (4.7 MB): all panels, then one GEMM
      convCase(1, 256, 5, 5, 512, 3, 1, 1, 1, 1),
      // the weight gradient's too (maps of 7x7 or more): 11 outputs and 45 (input, tap) pairs, not
      // whole register tiles; 20 images in 16 blocks of one or two; the 1 -> 16 stem
      convCase(20, 5, 15, 14, 11, 3, 1, 1, 1, 1),
      convCase(2, 1, 28, 28, 16, 3, 1, 1, 1, 1),
      // maps larger than a chunk: rows 0-10 and 11-18 of each image
      convCase(2, 64, 19, 19, 64, 3, 1, 1, 1, 1),
      // many whole maps a chunk: 40 images in 16 blocks of two or three, each block one partial chunk
      convCase(40, 8, 7, 7, 6, 3, 1, 1, 1, 1),
      // the strided weight gradient through phase planes: 3x3/2 on an odd map (8x8 out), a 7x7/2
      // stem (padding 3), and one whose maps need chunks of rows (16x16 out of 31x31, 32 channels)
      convCase(3, 5, 16, 15, 7, 3, 2, 1, 1, 1),
      convCase(2, 3, 20, 19, 9, 7, 2, 3, 1, 1),
      convCase(2, 32, 31, 31, 8, 3, 2, 1, 1, 1),
    ];
    for (const p of cases) checkConvPasses(p, `${p.cIn} -> ${p.cOut}, ${p.kh}x${p.kw} dilation ${p.dh} on ${p.h}x${p.w}, batch ${p.n}`);
  }));

test('AVX2 Winograd F(4x4) (3x3 stride-1 layers in whole 8-channel vectors without AVX-512) = reference on odd shapes: every pass (checkConvPasses), NaN', { skip }, () =>
  withAvx2(() => {
    const cases = [
      // batch 7; 24 input channels (three vectors); 8 outputs (half of a 16-channel panel); a 5x6 map:
      // the last tile row one row, the last tile column two columns
      convCase(7, 24, 5, 6, 8, 3, 1, 1, 1, 1),
      // batch 1 on the smallest map taken (one tile, both edges in it); 40 outputs: 2.5 panels
      convCase(1, 8, 3, 3, 40, 3, 1, 1, 1, 1),
      // odd sizes: 13 rows (a last tile of one row), 17 columns (one column); 3 images
      convCase(3, 16, 13, 17, 16, 3, 1, 1, 1, 1),
      // the largest weights taken (128 -> 128): tiles of a chunk fewer than a register tile's rows
      convCase(2, 128, 6, 6, 128, 3, 1, 1, 1, 1),
      // more chunks than the weight gradient's groups: each group sums two chunks
      convCase(13, 64, 16, 16, 64, 3, 1, 1, 1, 1),
      // 8 -> 16 on a 7x7 map: two tiles a row, the second past the edge; batch 5
      convCase(5, 8, 7, 7, 16, 3, 1, 1, 1, 1),
      // beyond 128 x 128 channels the plan's packed forward (split by positions and panels over all
      // the batch's tiles: 18 tiles in three register tiles; 136 outputs: 8.5 panels), and with 64
      // tiles or more the forward and backward-input with plain weights too; the weight gradient by
      // the direct kernels
      convCase(3, 136, 7, 9, 136, 3, 1, 1, 1, 1),
      convCase(1, 256, 6, 5, 248, 3, 1, 1, 1, 1),
      convCase(4, 136, 13, 13, 136, 3, 1, 1, 1, 1),
    ];
    for (const p of cases) checkConvPasses(p, `${p.cIn} -> ${p.cOut} on ${p.h}x${p.w}, batch ${p.n}`);
    // NaN in x reaches the outputs whose windows hold it (as the direct kernels), and relu keeps it
    const p = convCase(1, 8, 8, 8, 8, 3, 1, 1, 1, 1);
    const x = randomArray(8 * 64, gen), w = randomArray(8 * 8 * 9, gen);
    x[3 * 8 + 3] = NaN; // channel 0, row 3, column 3
    const y = new Float32Array(8 * 64);
    nat!.conv2dFused(y, x, w, null, null, true, p);
    for (let co = 0; co < 8; co++)
      for (let r = 0; r < 8; r++)
        for (let c = 0; c < 8; c++) {
          const near = Math.abs(r - 3) <= 1 && Math.abs(c - 3) <= 1;
          if (near) assert.ok(Number.isNaN(y[(co * 8 + r) * 8 + c]!), `NaN at ${co}, ${r}, ${c}`);
        }
  }));

/** Index of (image b, channel ch, row y, column x) in a blocked buffer of c channels of h x w maps:
 * NCHW16c with a one-pixel zero border, [n][c/16][h+2][w+2][16]. */
function blockedIndex(b: number, ch: number, y: number, x: number, c: number, h: number, w: number): number {
  return (((b * (c / 16) + (ch >> 4)) * (h + 2) + y + 1) * (w + 2) + x + 1) * 16 + (ch & 15);
}
/** NCHW -> blocked (border zero, or `border` to check that a kernel leaves it alone) and back. */
function toBlocked(x: Float32Array, n: number, c: number, h: number, w: number, border = 0): Float32Array {
  const y = new Float32Array(n * c * (h + 2) * (w + 2)).fill(border);
  for (let b = 0; b < n; b++) for (let ch = 0; ch < c; ch++) for (let i = 0; i < h; i++) for (let j = 0; j < w; j++) y[blockedIndex(b, ch, i, j, c, h, w)] = x[((b * c + ch) * h + i) * w + j]!;
  return y;
}
function fromBlocked(y: Float32Array, n: number, c: number, h: number, w: number): Float32Array {
  const x = new Float32Array(n * c * h * w);
  for (let b = 0; b < n; b++) for (let ch = 0; ch < c; ch++) for (let i = 0; i < h; i++) for (let j = 0; j < w; j++) x[((b * c + ch) * h + i) * w + j] = y[blockedIndex(b, ch, i, j, c, h, w)]!;
  return x;
}
/** Whether the border of a blocked buffer still holds only `v`. */
function borderIs(y: Float32Array, n: number, c: number, h: number, w: number, v: number): boolean {
  const inside = new Uint8Array(y.length);
  for (let b = 0; b < n; b++) for (let ch = 0; ch < c; ch++) for (let i = 0; i < h; i++) for (let j = 0; j < w; j++) inside[blockedIndex(b, ch, i, j, c, h, w)] = 1;
  return y.every((x, i) => inside[i] === 1 || Object.is(x, v));
}

// blocked activations (NCHW16c), the inference plan's layout on AVX-512: [case, x blocked]
const blockedCases: [string, Conv2dParams, boolean][] = [
  ['stem 7x7/2 reading NCHW, 3 -> 32, odd input width', convCase(1, 3, 28, 27, 32, 7, 2, 3, 1, 1), false],
  ['3x3/1, 32 -> 48 (a half panel), batch 2', convCase(2, 32, 14, 14, 48, 3, 1, 1, 1, 1), true],
  ['3x3/1 per image (batch 9)', convCase(9, 32, 14, 14, 64, 3, 1, 1, 1, 1), true],
  ['3x3/2 from an odd height to 7x7', convCase(1, 64, 13, 14, 32, 3, 2, 1, 1, 1), true],
  ['1x1/1 reading x in place, K = 64 on a 28-wide map', convCase(2, 64, 5, 28, 48, 1, 1, 0, 1, 1), true],
  ['1x1/2 reading x in place (pixels 32 floats apart)', convCase(2, 32, 13, 14, 32, 1, 2, 0, 1, 1), true],
  ['16 channels in and out, 7x7, batch 8 (one run per tile)', convCase(8, 16, 7, 7, 16, 3, 1, 1, 1, 1), true],
  ['1x1/2 reading NCHW in place', convCase(1, 16, 6, 14, 32, 1, 2, 0, 1, 1), false],
  ['dilated 3x3 (dilation 2, padding 2: more than the border, so the conversion fallback)', convCase(1, 16, 9, 14, 32, 3, 1, 2, 2, 1), true],
  ['per image in L2-sized chunks of tiles (batch 8, K = 256 on 28x28)', convCase(8, 256, 28, 28, 32, 1, 1, 0, 1, 1), true],
  // 3x3 stride 1 padding 1 on blocked input runs as Winograd F(2x2, 3x3), any map size
  ['Winograd: odd 5x9 maps (cut edge tiles), 16 -> 48, batch 3', convCase(3, 16, 5, 9, 48, 3, 1, 1, 1, 1), true],
  ['Winograd: 1x1 map, 32 -> 16', convCase(2, 32, 1, 1, 16, 3, 1, 1, 1, 1), true],
  ['Winograd F(2x2): several chunks of tiles (batch 7, 256 -> 256 on 14x13)', convCase(7, 256, 14, 13, 256, 3, 1, 1, 1, 1), true],
  ['Winograd F(4x4): several chunks of tiles (batch 5, 128 -> 128 on 28x27)', convCase(5, 128, 28, 27, 128, 3, 1, 1, 1, 1), true],
];


for (const [name, p, xBlocked] of blockedCases) {
  test(`native conv2d on blocked activations = reference: ${name}`, { skip }, async () => {
    const { loadBinding } = await import('../src/backends/native/binding.js');
    const b = loadBinding().binding!;
    const ny = p.n * p.cOut * p.oh * p.ow, nyb = p.n * p.cOut * (p.oh + 2) * (p.ow + 2);
    const x = randomArray(p.n * p.cIn * p.h * p.w, gen);
    const w = randomArray(p.cOut * p.cIn * p.kh * p.kw, gen, 0.3);
    const bias = randomArray(p.cOut, gen);
    const res = randomArray(ny, gen);
    const yr = new Float32Array(ny);
    tsKernels.conv2d(yr, x, w, bias, p);
    const xin = xBlocked ? toBlocked(x, p.n, p.cIn, p.h, p.w) : x;
    const original = b.isa();
    // Winograd geometries: both packings (Winograd, and the direct pixel-row one)
    for (const winograd of winogradGeometry(p) ? [true, false] : [true]) try {
      const packed = nat!.packConvWeightsBlocked(w, p, winograd);
      const wino = winograd && winogradGeometry(p);
      assert.equal(packed.data.length, (wino ? winogradPositions(p) * p.cIn : p.cIn * p.kh * p.kw) * Math.ceil(p.cOut / 32) * 32);
      // the weights come back from either packing (the conversion fallback reads them so)
      assertClose(nat!.unpackConvWeights(packed, p), w, { rtol: 1e-5, atol: 1e-6 }, 'unpacked weights');
      // the AVX-512 kernels where this CPU has them, then the conversion fallback of other ISAs
      for (const code of [0, 2]) {
        const isa = b.isa(code);
        // direct: pixel-row tiles need whole 7-pixel runs; Winograd takes any map size
        const fast = isa === 'avx512' && (wino ? xBlocked : (!xBlocked || (p.ph <= 1 && p.pw <= 1 && p.dh === 1)) && p.ow % 7 === 0);
        if (code === 0) assert.equal(nat!.convBlockedOk(p, xBlocked, winograd), fast, 'fast path exactly on AVX-512, padding within the border');
        // every interior output written, the border left alone (7 here; zero in the plan)
        const y = toBlocked(new Float32Array(ny).fill(NaN), p.n, p.cOut, p.oh, p.ow, 7);
        nat!.conv2dBlocked(y, xin, bias, null, false, p, packed, xBlocked);
        // (the direct packing's conversion fallback runs NCHW convolutions, which take Winograd too)
        const tol = winogradGeometry(p) ? 5e-5 : 1e-5;
        assertClose(fromBlocked(y, p.n, p.cOut, p.oh, p.ow), yr, scaleTol(yr, tol), `${isa}: conv + bias`);
        assert.ok(borderIs(y, p.n, p.cOut, p.oh, p.ow, 7), `${isa}: the output's border untouched`);
        assert.equal(y.length, nyb);
        const inplace = toBlocked(res, p.n, p.cOut, p.oh, p.ow); // the residual added in place, then relu
        nat!.conv2dBlocked(inplace, xin, bias, inplace, true, p, packed, xBlocked);
        const expect = yr.map((v, i) => Math.max(0, v + res[i]!));
        assertClose(fromBlocked(inplace, p.n, p.cOut, p.oh, p.ow), expect, scaleTol(expect, tol), `${isa}: + residual in place, relu`);
      }
    } finally {
      b.isa(0);
      assert.equal(b.isa(), original);
    }
  });
}

test('native blocked convolution refuses what it cannot run, clearly', { skip }, () => {
  const p = convCase(1, 16, 7, 7, 24, 3, 1, 1, 1, 1); // 24 output channels: not whole 16-channel blocks
  assert.equal(nat!.convBlockedOk(p, true), false);
  const packed = nat!.packConvWeightsBlocked(randomArray(24 * 16 * 9, gen), p);
  assert.throws(() => nat!.conv2dBlocked(new Float32Array(24 * 81), new Float32Array(16 * 81), null, null, false, p, packed, true), /blocked activations/);
  const q = convCase(1, 16, 7, 7, 32, 3, 1, 1, 1, 1);
  const other = nat!.packConvWeights(randomArray(32 * 16 * 9, gen), convCase(1, 16, 8, 8, 32, 3, 1, 1, 1, 1));
  assert.notEqual(other.layout, nat!.packConvWeightsBlocked(randomArray(32 * 16 * 9, gen), q).layout);
  assert.throws(() => nat!.conv2dBlocked(new Float32Array(32 * 81), new Float32Array(16 * 81), null, null, false, q, other, true), /layout|blocked/);
  // buffers without the border are too short
  const ok = nat!.packConvWeightsBlocked(randomArray(32 * 16 * 9, gen), q);
  assert.throws(() => nat!.conv2dBlocked(new Float32Array(32 * 49), new Float32Array(16 * 81), null, null, false, q, ok, true), /shorter/);
});

test('native blocked max pool and global average pool = reference', { skip }, () => {
  for (const [n, c, h, w, k, s, pad] of [[1, 64, 112, 111, 3, 2, 1], [3, 32, 9, 8, 3, 2, 1], [2, 16, 7, 7, 2, 2, 0]] as const) {
    const p: Pool2dParams = { n, c, h, w, kh: k, kw: k, sh: s, sw: s, ph: pad, pw: pad, dh: 1, dw: 1, oh: convOutSize(h, k, s, pad, 1), ow: convOutSize(w, k, s, pad, 1) };
    const x = randomArray(n * c * h * w, gen);
    for (let i = 0; i < 7; i++) x[Math.floor(gen.random() * x.length)] = NaN; // NaN wins its windows
    const yr = new Float32Array(n * c * p.oh * p.ow), ar = new Int32Array(yr.length);
    tsKernels.maxPool2d(yr, ar, x, p);
    // the input's border is 5 here: the pool must not read it (windows are clipped to the map)
    const yb = toBlocked(new Float32Array(yr.length).fill(NaN), n, c, p.oh, p.ow, 7);
    nat!.maxPool2dBlocked(yb, toBlocked(x, n, c, h, w, 5), p);
    assert.deepEqual(fromBlocked(yb, n, c, p.oh, p.ow), yr, `max pool ${n}x${c}x${h}x${w}`);
    assert.ok(borderIs(yb, n, c, p.oh, p.ow, 7), 'max pool leaves the output border alone');
    const clean = x.map((v) => (Number.isNaN(v) ? 0.5 : v));
    const ar2 = new Float32Array(n * c);
    tsKernels.adaptiveAvgPool2d(ar2, clean, { n, c, h, w, oh: 1, ow: 1 });
    const ab = new Float32Array(n * c).fill(NaN);
    nat!.avgPoolGlobalBlocked(ab, toBlocked(clean, n, c, h, w, 1e6), n, c, h, w); // the border is not averaged
    assertClose(ab, ar2, tol, 'global average pool');
  }
  const p: Pool2dParams = { n: 1, c: 24, h: 4, w: 4, kh: 2, kw: 2, sh: 2, sw: 2, ph: 0, pw: 0, dh: 1, dw: 1, oh: 2, ow: 2 };
  assert.throws(() => nat!.maxPool2dBlocked(new Float32Array(96), new Float32Array(384), p), /multiple of 16/);
  assert.throws(() => nat!.avgPoolGlobalBlocked(new Float32Array(24), new Float32Array(864), 1, 24, 4, 4), /multiple of 16/);
});

test('environment variables the kernels cannot honour get a warning that says what runs instead', () => {
  const reg = ['ts', 'native'];
  assert.deepEqual(envWarnings({}, reg, 'native', 'avx512', 2), []);
  assert.deepEqual(envWarnings({ RESNET_BACKEND: 'ts', RESNET_ISA: 'avx2', RESNET_NUM_THREADS: '1' }, reg, 'ts', 'avx2', 1), []);
  assert.deepEqual(envWarnings({ RESNET_BACKEND: 'Native' }, reg, 'native', 'avx512', 2), ['RESNET_BACKEND=Native names no backend (registered: ts, native); using native']);
  assert.deepEqual(envWarnings({ RESNET_BACKEND: 'native' }, ['ts'], 'ts', null, null), [], 'a missing addon has its own warning');
  assert.deepEqual(envWarnings({ RESNET_ISA: 'avx-2' }, reg, 'native', 'avx512', 2), ['RESNET_ISA=avx-2 is not avx512, avx2 or portable; the native kernels use avx512']);
  assert.deepEqual(envWarnings({ RESNET_ISA: 'avx512' }, reg, 'native', 'avx2', 2), ['RESNET_ISA=avx512: this CPU does not have it; the native kernels use avx2']);
  assert.deepEqual(envWarnings({ RESNET_ISA: 'avx2' }, ['ts'], 'ts', null, null), [], 'no native kernels: nothing to narrow');
  for (const n of ['two', '0', '-1', '1.5', '100']) {
    assert.deepEqual(envWarnings({ RESNET_NUM_THREADS: n }, reg, 'native', 'avx512', n === '100' ? 64 : 2), [`RESNET_NUM_THREADS=${n} is not a thread count from 1 to 64; the native kernels use ${n === '100' ? 64 : 2}`]);
  }
  assert.deepEqual(envWarnings({ RESNET_NUM_THREADS: '3' }, reg, 'native', 'avx512', 3), []);
});

test('RESNET_BACKEND with a name no backend has: the default backend and a warning, not the slow reference in silence', { skip }, () => {
  const index = fileURLToPath(new URL('../src/index.js', import.meta.url));
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', `const m = await import(${JSON.stringify(index)}); console.log(m.kernels().name);`], {
    encoding: 'utf8',
    timeout: 60_000,
    env: { ...process.env, RESNET_BACKEND: 'Native' },
  });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), 'native');
  assert.match(r.stderr, /RESNET_BAD_ENV.*RESNET_BACKEND=Native names no backend \(registered: ts, native\); using native/);
});

test('setNumThreads takes 1 to MAX_THREADS and says so otherwise (the pool had clamped 100 to 64 in silence)', () => {
  const before = getNumThreads();
  for (const n of [0, -1, 1.5, MAX_THREADS + 1, 100, Number.NaN]) {
    assert.throws(() => setNumThreads(n), (e: unknown) => e instanceof UsageError && e.message === `thread count must be an integer from 1 to ${MAX_THREADS}, got ${n}`);
  }
  assert.equal(getNumThreads(), before, 'a refused count changes nothing');
});
