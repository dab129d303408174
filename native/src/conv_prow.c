/* Pixel-row convolution kernels (AVX-512): output pixels as the register tile's rows.
 *
 * The implicit GEMM of conv_qgrid.c tiles the q grid 32 columns at a time, so a small map wastes columns: a 7x7
 * output (Wq = 9) fills 49 of 64, a 14x14 one 196 of 224. Every map of a ResNet at 224x224 (112, 56,
 * 28, 14, 7) or at 28x28 (28, 14, 7) has a width that is a multiple of 7, so here the roles turn
 * around: a register tile is 7 (or 14: two runs) consecutive output pixels of one output row times 32
 * output channels,
 *   out[pixel][co] = sum_k A[pixel][k] * Wt[k][co],   A[pixel][k] = phases[off[k] + q(pixel)]
 * with A read (broadcast) from the same phase planes, and the weights as the streamed operand, packed
 * in panels of 32 output channels (K x 32 floats each, zero-padded past cout). No column is wasted;
 * the epilogue transposes the tile in registers (16x16 blocks) into its NCHW rows. Not here: the
 * choice of path (conv.c) and the phase planes (conv_qgrid.c). */
#include "conv_internal.h"
#include "gemm.h"
#include "pool.h"
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)

/* The pixel-row tile: R runs of 7 pixels (a[0..R-1] their bases in the phase planes, pixels PS floats
 * apart) x 32 channels over all K, in accumulators c0 (channels 0-15) and c1 (16-31) of pixel 7r+i
 * (declared by the caller). Each k also prefetches the input line PF floats past the last run's
 * (the next tile's, for this k: with many input planes, a 1x1 on 56x56 at batch 8, the hardware
 * prefetcher loses track and every k would wait for memory). */
/* With blocked input (pixels PS = 16 or 32 floats apart: a line each) the 16 taps of a channel block
 * fetch 16 different lines, k & 15 choosing the pixel: the whole next tile's input of that block (before,
 * all 16 had fetched the same line, its first pixel's, and the other 13 came on demand from L2 or L3).
 * ResNet-50 inference on the Intel VM, per layer, the two builds alternating (sum of per-layer minima
 * of 20 runs): the 1x1 reductions 10-23 % faster (256 -> 64 on 56x56 -11 to -21 %, 512 -> 128 on
 * 28x28 -11 to -23 %, 1024 -> 256 on 14x14 -5 to -19 %), all convolutions 2-7 % at batch 1 and 5 % at
 * batch 8. Not below PROW_PF_KMIN taps (K = 64, ResNet-50's 64 -> 256: no gain, and +12-15 % in two
 * of four runs). */
#ifndef PROW_PF_KMIN
#define PROW_PF_KMIN 128
#endif
/* and the weights' panel PROW_BPF values of k ahead (two lines): the panel (K x 32 floats, 32 KB for
 * K = 256) and the tile's inputs do not both stay in L1, and every k had waited on the panel's next
 * line from L2 (perf: the most-sampled instructions were the panel's load and the first broadcast).
 * ResNet-50 inference on the Intel VM, steps of the two builds alternating: batch 1 minima 48.6 / 45.1 /
 * 44.1 -> 42.1 / 40.6 / 39.0 ms, batch 8 330 -> 316 ms; 16 ahead against 8: 44.9 -> 38.4 and 44.3 ->
 * 42.2 ms, against 32: within 3 %. */
#ifndef PROW_BPF
#define PROW_BPF 16
#endif
#define PROW_ACCUMULATE(R, PS, PF)                                                                                     \
    _Pragma("GCC unroll 14") for (int i = 0; i < 7 * R; i++) c0[i] = c1[i] = _mm512_setzero_ps();                       \
    const float *a0 = a[0], *a1 = a[R - 1];                                                                            \
    const int pfm = (PS) >= 16 && K >= PROW_PF_KMIN ? (PS) - 1 : 0;                                                    \
    for (int k = 0; k < K; k++) {                                                                                      \
      __m512 b0 = _mm512_loadu_ps(Bp), b1 = _mm512_loadu_ps(Bp + 16);                                                  \
      const float *p0 = a0 + off[k], *p1 = a1 + off[k];                                                                \
      _mm_prefetch((const char *)(p1 + (PF) + pfm * (k & 15)), _MM_HINT_T0);                                           \
      _mm_prefetch((const char *)(Bp + PR_NR * PROW_BPF), _MM_HINT_T0);                                                \
      _mm_prefetch((const char *)(Bp + PR_NR * PROW_BPF + 16), _MM_HINT_T0);                                           \
      _Pragma("GCC unroll 7") for (int i = 0; i < 7; i++) {                                                            \
        __m512 v = _mm512_set1_ps(p0[i * PS]);                                                                          \
        c0[i] = _mm512_fmadd_ps(v, b0, c0[i]);                                                                         \
        c1[i] = _mm512_fmadd_ps(v, b1, c1[i]);                                                                         \
      }                                                                                                                \
      if (R == 2) {                                                                                                    \
        _Pragma("GCC unroll 7") for (int i = 0; i < 7; i++) {                                                          \
          __m512 v = _mm512_set1_ps(p1[i * PS]);                                                                        \
          c0[7 * (R - 1) + i] = _mm512_fmadd_ps(v, b0, c0[7 * (R - 1) + i]);                                           \
          c1[7 * (R - 1) + i] = _mm512_fmadd_ps(v, b1, c1[7 * (R - 1) + i]);                                           \
        }                                                                                                              \
      }                                                                                                                \
      Bp += PR_NR;                                                                                                     \
    }

/* The tile stored to t[(7r+i)*32 + co] for the transposing NCHW epilogue. PS = 2: a strided 1x1
 * convolution reading x in place. */
#define DEF_PROW(R, PS, NAME)                                                                                          \
  __attribute__((target("avx512f"), noinline)) static void NAME(int K, const float *Bp, const float *const *a,      \
                                                                 const int *off, float *t) {                        \
    __m512 c0[7 * R], c1[7 * R];                                                                                       \
    PROW_ACCUMULATE(R, PS, 15 * PS)                                                                                    \
    _Pragma("GCC unroll 14") for (int i = 0; i < 7 * R; i++) {                                                         \
      _mm512_store_ps(t + i * PR_NR, c0[i]);                                                                           \
      _mm512_store_ps(t + i * PR_NR + 16, c1[i]);                                                                      \
    }                                                                                                                  \
  }
DEF_PROW(1, 1, prow1)
DEF_PROW(2, 1, prow2)
DEF_PROW(1, 2, prow1s2)
DEF_PROW(2, 2, prow2s2)

/* The same tile for blocked (NCHW16c) output, epilogue from the registers: pixel i of run r is one
 * 16-channel vector at yr[r] + 16 i (channels 0-15 of the panel) and chblk floats further (16-31, when
 * `two`); bias, the residual at the same places in rr[r] (may be yr[r] itself) and relu on the way.
 * No transposes: a channel block's pixels are contiguous. PS: the input pixels' distance (1: NCHW
 * phase planes, the stem; 16: blocked input; 32: a stride-2 1x1 reading blocked x in place). */
#define DEF_PROWB(R, PS, NAME)                                                                                         \
  __attribute__((target("avx512f"), noinline)) static void NAME(int K, const float *Bp, const float *const *a,      \
                                                                 const int *off, float *const *yr,                  \
                                                                 const float *const *rr, long chblk,                \
                                                                 const float *bias, int relu, int two) {            \
    __m512 c0[7 * R], c1[7 * R];                                                                                       \
    PROW_ACCUMULATE(R, PS, 7 * PS)                                                                                     \
    const __m512 zero = _mm512_setzero_ps();                                                                           \
    const __m512 vb0 = bias ? _mm512_loadu_ps(bias) : zero, vb1 = bias && two ? _mm512_loadu_ps(bias + 16) : zero;     \
    _Pragma("GCC unroll 2") for (int r = 0; r < R; r++) {                                                              \
      float *o = yr[r];                                                                                                \
      const float *q = rr ? rr[r] : NULL;                                                                              \
      _Pragma("GCC unroll 7") for (int i = 0; i < 7; i++) {                                                            \
        __m512 v = _mm512_add_ps(c0[7 * r + i], vb0);                                                                  \
        if (q) v = _mm512_add_ps(v, _mm512_loadu_ps(q + 16 * i));                                                      \
        if (relu) v = _mm512_max_ps(zero, v); /* NaN stays NaN: max returns its second operand */                       \
        _mm512_storeu_ps(o + 16 * i, v);                                                                               \
        if (two) {                                                                                                     \
          __m512 u = _mm512_add_ps(c1[7 * r + i], vb1);                                                                \
          if (q) u = _mm512_add_ps(u, _mm512_loadu_ps(q + chblk + 16 * i));                                            \
          if (relu) u = _mm512_max_ps(zero, u);                                                                        \
          _mm512_storeu_ps(o + chblk + 16 * i, u);                                                                     \
        }                                                                                                              \
      }                                                                                                                \
    }                                                                                                                  \
  }
DEF_PROWB(1, 1, prowb1)
DEF_PROWB(2, 1, prowb2)
DEF_PROWB(1, 2, prowb1s2)
DEF_PROWB(2, 2, prowb2s2)
DEF_PROWB(1, 16, prowb1c)
DEF_PROWB(2, 16, prowb2c)
DEF_PROWB(1, 32, prowb1c2)
DEF_PROWB(2, 32, prowb2c2)

/* R (1 or 2) runs of 7 rows of a blocked matrix (row i of run r: 16-channel groups at a[r] + off[k] +
 * 16 i) times a 32-column panel, stored blocked without epilogue: the Winograd passes' products. */
__attribute__((target("avx512f"))) void prow_block_gemm(int R, int K, const float *Bp, const float *const *a, const int *off,
                                                        float *const *yr, long chblk, int two) {
  (R == 2 ? prowb2c : prowb1c)(K, Bp, a, off, yr, NULL, chblk, NULL, 0, two);
}

/* A panel of at most 16 channels (its other 16 columns zero: ResNet-20's 16-channel Winograd products)
 * as R (1-4) runs of 7 rows of a blocked matrix x 16 columns, stored blocked: the 32-column tile
 * would multiply the 16 zero columns too, half its FMAs. Each output's sum runs over k in the same
 * order as there: the same bits. The broadcast operands are addressed as a register plus a constant:
 * GCC had folded a[r] + off[k] into base + index addressing, and FMAs with an indexed memory operand
 * are split into two micro-ops (this loop is all such FMAs): the kernel alone, 112 tiles x 36
 * positions of 16 channels in L2, alternating with the indexed build, 110 -> 126 GFLOP/s on one
 * thread. */
#define DEF_PROWB16(R, NAME)                                                                                           \
  __attribute__((target("avx512f"), noinline)) static void NAME(int K, const float *Bp, const float *const *a,      \
                                                                 const int *off, float *const *yr) {                \
    __m512 c[7 * R];                                                                                                   \
    _Pragma("GCC unroll 28") for (int i = 0; i < 7 * R; i++) c[i] = _mm512_setzero_ps();                              \
    for (int k = 0; k < K; k++) {                                                                                      \
      const __m512 b = _mm512_loadu_ps(Bp);                                                                            \
      _mm_prefetch((const char *)(Bp + PR_NR * PROW_BPF), _MM_HINT_T0);                                                \
      _Pragma("GCC unroll 4") for (int r = 0; r < R; r++) {                                                            \
        const float *p = a[r] + off[k];                                                                                \
        __asm__("" : "+r"(p)); /* p in a register of its own: FMAs of base + offset, not base + index */              \
        _Pragma("GCC unroll 7") for (int i = 0; i < 7; i++) c[7 * r + i] = _mm512_fmadd_ps(_mm512_set1_ps(p[16 * i]), b, c[7 * r + i]); \
      }                                                                                                                \
      Bp += PR_NR;                                                                                                     \
    }                                                                                                                  \
    _Pragma("GCC unroll 4") for (int r = 0; r < R; r++)                                                                \
      _Pragma("GCC unroll 7") for (int i = 0; i < 7; i++) _mm512_storeu_ps(yr[r] + 16 * i, c[7 * r + i]);              \
  }
DEF_PROWB16(1, prowb16_1)
DEF_PROWB16(2, prowb16_2)
DEF_PROWB16(3, prowb16_3)
DEF_PROWB16(4, prowb16_4)

__attribute__((target("avx512f"))) void prow_block_gemm16(int R, int K, const float *Bp, const float *const *a, const int *off,
                                                          float *const *yr) {
  (R == 4 ? prowb16_4 : R == 3 ? prowb16_3 : R == 2 ? prowb16_2 : prowb16_1)(K, Bp, a, off, yr);
}

/* 28 consecutive pixels (one base, pixel i at a + off[k] + i) x 16 channels, over all K; t[i*16 + co]. */
__attribute__((target("avx512f"), noinline)) static void prow28x16(int K, const float *Bp, const float *a, const int *off,
                                                                  float *t) {
  __m512 c[28];
  _Pragma("GCC unroll 28") for (int i = 0; i < 28; i++) c[i] = _mm512_setzero_ps();
  for (int k = 0; k < K; k++) {
    const __m512 b = _mm512_loadu_ps(Bp);
    const float *p0 = a + off[k];
    _mm_prefetch((const char *)(p0 + 28), _MM_HINT_T0); /* the next tile's line (as in prow##R) */
    _Pragma("GCC unroll 28") for (int i = 0; i < 28; i++) c[i] = _mm512_fmadd_ps(_mm512_set1_ps(p0[i]), b, c[i]);
    Bp += 16;
  }
  _Pragma("GCC unroll 28") for (int i = 0; i < 28; i++) _mm512_store_ps(t + i * 16, c[i]);
}

typedef struct {
  igeo g;
  int K, M, relu, rpr; /* rpr: runs per output row (ow / 7) */
  long rowstep;        /* floats from one output row's input to the next (g.Wq; sh * w for a strided 1x1) */
  int colstep;         /* floats between neighbouring pixels' inputs (1; sw for a strided 1x1) */
  const float *Bp, *phases, *bias, *residual;
  float *y;
  long ph_img, y_img, y_ch, nruns, ntiles;
  int npanels, chunks, per_chunk; /* work item = (panel, chunk of per_chunk tiles) */
  int nr, by_image, direct;       /* panel width; items are images; the planes are x itself */
  int panel_major;                /* items (panel, chunk) panel-major, by ranges of panels (prow_exec) */
  const float *x;                 /* by_image: the input, x_img floats per image */
  long x_img;
  int yblk;                       /* blocked output: NCHW16c with a zero border (conv.h) */
  long chblk;                     /* blocked output: floats per 16-channel block of an image ((oh+2)*(ow+2)*16) */
  int ywp;                        /* blocked output: padded row width ow + 2 */
  pool_ranges items;              /* the images (by_image), else the (chunk, panel) items, chunk-major by ranges of
                                   * chunks, or panel-major by ranges of panels (panel_major) */
} prow_job;

/* One tile of a 32-channel panel with blocked output: yo[r] is run r's first pixel in channel block 0. */
__attribute__((target("avx512f"))) static void prow_tile32b(const prow_job *j, int panel, const float *const *a, const long *yo, int R) {
  const float *Bp = j->Bp + (long)panel * PR_NR * j->K;
  const int co0 = panel * PR_NR, two = j->M - co0 > 16;
  float *yr[2];
  const float *rr[2];
  for (int r = 0; r < R; r++) {
    const long o = yo[r] + (long)(co0 / 16) * j->chblk;
    yr[r] = j->y + o;
    rr[r] = j->residual ? j->residual + o : NULL;
    if (j->residual) /* 7 pixels x 16 channels: 7 lines per block, fetched while the tile computes */
      for (int h = 0; h <= two; h++)
        for (int l = 0; l < 7; l++) _mm_prefetch((const char *)(rr[r] + h * j->chblk + 16 * l), _MM_HINT_T0);
  }
  const float *const *res = j->residual ? rr : NULL;
  const float *bias = j->bias ? j->bias + co0 : NULL;
  if (j->colstep == 1) (R == 2 ? prowb2 : prowb1)(j->K, Bp, a, j->g.off, yr, res, j->chblk, bias, j->relu, two);
  else if (j->colstep == 2) (R == 2 ? prowb2s2 : prowb1s2)(j->K, Bp, a, j->g.off, yr, res, j->chblk, bias, j->relu, two);
  else if (j->colstep == 16) (R == 2 ? prowb2c : prowb1c)(j->K, Bp, a, j->g.off, yr, res, j->chblk, bias, j->relu, two);
  else (R == 2 ? prowb2c2 : prowb1c2)(j->K, Bp, a, j->g.off, yr, res, j->chblk, bias, j->relu, two);
}

/* One tile of a 32-channel panel: runs a[0..R-1] (R = 1 or 2) whose outputs start at yo[r] (channel 0). */
__attribute__((target("avx512f"))) static void prow_tile32(const prow_job *j, int panel, const float *const *a, const long *yo,
                                                           int R, float *t) {
  const __mmask16 m7 = 0x7F, hi7 = 0x3F80;
  /* lanes 7-13 <- lanes 0-6 (up7), lanes 0-6 <- lanes 7-13 (down7) */
  const __m512i up7 = _mm512_set_epi32(0, 0, 6, 5, 4, 3, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i down7 = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 13, 12, 11, 10, 9, 8, 7);
  const __m512 zero = _mm512_setzero_ps();
  const float *Bp = j->Bp + (long)panel * PR_NR * j->K;
  const int co0 = panel * PR_NR, cos = j->M - co0 < PR_NR ? j->M - co0 : PR_NR;
  if (j->residual) /* the epilogue's residual and output lines, fetched while the tile computes (as in ifwd_tiles) */
    for (int r = 0; r < R; r++)
      for (int c = 0; c < cos; c++) {
        prefetch_row(j->residual, j->y, yo[r] + (long)(co0 + c) * j->y_ch, PR_RUN);
      }
  if (j->colstep == 2) (R == 2 ? prow2s2 : prow1s2)(j->K, Bp, a, j->g.off, t);
  else (R == 2 ? prow2 : prow1)(j->K, Bp, a, j->g.off, t);
  /* epilogue: the 14 (7) pixel rows of each 16-channel half, transposed in registers, give one
   * vector per channel whose lanes 0-6 are run 0 and 7-13 run 1 (gathers cost ~20 % here) */
  for (int h = 0; h < 2 && 16 * h < cos; h++) {
    __m512 rr[16];
    for (int i = 0; i < 16; i++) rr[i] = i < PR_RUN * R ? _mm512_load_ps(t + i * PR_NR + 16 * h) : zero;
    transpose16(rr);
    const int cn = cos - 16 * h < 16 ? cos - 16 * h : 16;
    if (R == 2 && yo[1] == yo[0] + PR_RUN) {
      /* both runs in one output row, side by side (14-wide rows, or any row but its last run when
       * it has an odd count): lanes 0-13 are 14 consecutive outputs, one load and one store each */
      const __mmask16 m14 = 0x3FFF;
      for (int c = 0; c < cn; c++) {
        const int co = co0 + 16 * h + c;
        const long o = yo[0] + (long)co * j->y_ch;
        __m512 v = rr[c];
        if (j->bias) v = _mm512_add_ps(v, _mm512_set1_ps(j->bias[co]));
        if (j->residual) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m14, j->residual + o));
        if (j->relu) v = _mm512_max_ps(zero, v);
        _mm512_mask_storeu_ps(j->y + o, m14, v);
      }
      continue;
    }
    for (int c = 0; c < cn; c++) {
      const int co = co0 + 16 * h + c;
      const long o0 = yo[0] + (long)co * j->y_ch, o1 = yo[R - 1] + (long)co * j->y_ch;
      __m512 v = rr[c];
      if (j->bias) v = _mm512_add_ps(v, _mm512_set1_ps(j->bias[co]));
      if (j->residual) {
        __m512 r0 = _mm512_maskz_loadu_ps(m7, j->residual + o0);
        if (R == 2) r0 = _mm512_mask_permutexvar_ps(r0, hi7, up7, _mm512_maskz_loadu_ps(m7, j->residual + o1));
        v = _mm512_add_ps(v, r0);
      }
      if (j->relu) v = _mm512_max_ps(zero, v); /* NaN stays NaN: max returns its second operand */
      _mm512_mask_storeu_ps(j->y + o0, m7, v);
      if (R == 2) _mm512_mask_storeu_ps(j->y + o1, m7, _mm512_permutexvar_ps(down7, v));
    }
  }
}

/* One tile of the 16-channel kernel: 28 consecutive pixels of an output row at a (input) and yo
 * (output, channel 0); the epilogue transposes the two 16-pixel halves in registers. */
__attribute__((target("avx512f"))) static void prow_tile16(const prow_job *j, const float *a, long yo, float *t) {
  const __m512 zero = _mm512_setzero_ps();
  const __mmask16 m12 = 0x0FFF;
  if (j->residual)
    for (int c = 0; c < j->M; c++) {
      prefetch_row(j->residual, j->y, yo + (long)c * j->y_ch, 28);
    }
  prow28x16(j->K, j->Bp, a, j->g.off, t);
  __m512 lo[16], hi[16];
  for (int i = 0; i < 16; i++) {
    lo[i] = _mm512_load_ps(t + i * 16);
    hi[i] = i < 12 ? _mm512_load_ps(t + (16 + i) * 16) : zero;
  }
  transpose16(lo);
  transpose16(hi);
  for (int c = 0; c < j->M; c++) {
    const long o = yo + (long)c * j->y_ch;
    __m512 v0 = lo[c], v1 = hi[c];
    if (j->bias) {
      const __m512 vb = _mm512_set1_ps(j->bias[c]);
      v0 = _mm512_add_ps(v0, vb);
      v1 = _mm512_add_ps(v1, vb);
    }
    if (j->residual) {
      v0 = _mm512_add_ps(v0, _mm512_loadu_ps(j->residual + o));
      v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m12, j->residual + o + 16));
    }
    if (j->relu) {
      v0 = _mm512_max_ps(zero, v0);
      v1 = _mm512_max_ps(zero, v1);
    }
    _mm512_storeu_ps(j->y + o, v0);
    _mm512_mask_storeu_ps(j->y + o + 16, m12, v1);
  }
}

/* Runs [r0, r0 + R) of image b (image-local run indices) -> input bases a[] (in the image's planes
 * at base) and output offsets yo[]. */
static void prow_runs(const prow_job *j, long b, const float *base, long r0, int R, const float **a, long *yo) {
  for (int r = 0; r < R; r++) {
    const long ri = r0 + r;
    const int oy = (int)(ri / j->rpr), ox = (int)(ri % j->rpr) * PR_RUN;
    a[r] = base + (long)oy * j->rowstep + (long)ox * j->colstep;
    yo[r] = b * j->y_img + (j->yblk ? ((long)(oy + CONV_BLK_BORDER) * j->ywp + ox + CONV_BLK_BORDER) * 16 : (long)oy * j->g.p->ow + ox);
  }
}

/* Input offsets of the K taps for blocked input ([cin/16][h+2][w+2][16], zero border): from an
 * image's start to tap (c, ky, kx) of output (0, 0); the border stands in for padding up to one pixel,
 * so every blocked convolution reads x in place, no phase planes. */
static void blk_offsets_into(int *off, const conv_p *p) {
  const long wp = p->w + 2 * CONV_BLK_BORDER, plane = (long)(p->h + 2 * CONV_BLK_BORDER) * wp * 16;
  const long origin = ((long)(CONV_BLK_BORDER - p->ph) * wp + CONV_BLK_BORDER - p->pw) * 16;
  for (int c = 0; c < p->cin; c++)
    for (int ky = 0; ky < p->kh; ky++)
      for (int kx = 0; kx < p->kw; kx++)
        off[(c * p->kh + ky) * p->kw + kx] =
            (int)(origin + (long)(c / 16) * plane + ((long)ky * p->dh * wp + (long)kx * p->dw) * 16 + c % 16);
}

/* The blocked tap offsets of a geometry, cached per thread: the plan runs the same few dozen
 * geometries on every call, and computing K offsets took 2-25 us a layer (6 ns a tap: ResNet-50's
 * 55,000 taps, 0.3 ms of a 40 ms batch-1 run). The cache holds the last BLK_OFF_CACHE geometries. */
#define BLK_OFF_CACHE 64
typedef struct {
  conv_p p;
  int *off;
} blk_off_entry;
static const int *blk_offsets(const conv_p *p) {
  static _Thread_local blk_off_entry cache[BLK_OFF_CACHE];
  static _Thread_local int next;
  for (int i = 0; i < BLK_OFF_CACHE; i++)
    if (cache[i].off && memcmp(&cache[i].p, p, sizeof *p) == 0) return cache[i].off;
  blk_off_entry *e = &cache[next];
  next = (next + 1) % BLK_OFF_CACHE;
  free(e->off);
  e->p = *p;
  e->off = malloc(sizeof(int) * ((size_t)p->cin * p->kh * p->kw + 8));
  if (!e->off) abort();
  blk_offsets_into(e->off, p);
  return e->off;
}

static _Thread_local buf_t prow_img_buf;
static int panel_major_on = -1; /* RESNET_PROW_PANEL_MAJOR=0: chunk-major always (measurements) */

/* Work items are either images (by_image: each thread builds an image's planes into its own buffer
 * and runs all its tiles, panel by panel, while they are in its L2), or (panel, chunk of tiles) over
 * planes built for the whole batch beforehand. Tiles are nr == 16 ? 4 : 2 runs. */
__attribute__((target("avx512f"))) static void prow_task(void *ctx, int tid, int n) {
  (void)n;
  prow_job *j = ctx;
  const conv_p *p = j->g.p;
  float t[28 * 16 > 14 * PR_NR ? 28 * 16 : 14 * PR_NR] __attribute__((aligned(64)));
  const int rt = j->nr == 16 ? 4 : 2;
  const long per_img = (long)p->oh * j->rpr;
  if (j->by_image) {
    float *ph = j->direct ? NULL : grow(&prow_img_buf, (size_t)j->g.img);
    pool_cursor cur = pool_cursor_at(&j->items, tid);
    for (;;) {
      const long b = pool_ranges_next(&j->items, &cur);
      if (b < 0) break;
      const float *base = j->x + b * j->x_img;
      if (!j->direct) {
        build_phases(&j->g, base, ph);
        base = ph;
      }
      /* chunks of tiles whose input fits half an L2, all panels over each (the weights stay in L2) */
      const long step = (long)j->per_chunk * rt;
      for (long c0 = 0; c0 < per_img; c0 += step)
        for (int panel = 0; panel < j->npanels; panel++)
          for (long r0 = c0; r0 < c0 + step && r0 < per_img; r0 += rt) {
            const int R = per_img - r0 < rt ? (int)(per_img - r0) : rt;
            const float *a[4];
            long yo[4];
            prow_runs(j, b, base, r0, R, a, yo);
            if (j->nr == 16) prow_tile16(j, a[0], yo[0], t);
            else if (j->yblk) prow_tile32b(j, panel, a, yo, R);
            else prow_tile32(j, panel, a, yo, R, t);
          }
    }
    return;
  }
  pool_cursor cur = pool_cursor_at(&j->items, tid);
  for (;;) {
    const long it = pool_ranges_next(&j->items, &cur);
    if (it < 0) break;
    /* chunk-major: consecutive items are the panels of one chunk of tiles, whose input stays in L2
     * while the weights stream past; panel-major: the chunks of one panel, whose weights stay in L2
     * while the (small) input is read from there (see prow_exec) */
    const int panel = (int)(j->panel_major ? it / j->chunks : it % j->npanels);
    const long chunk = j->panel_major ? it % j->chunks : it / j->npanels;
    const long t0 = chunk * j->per_chunk, t1 = t0 + j->per_chunk < j->ntiles ? t0 + j->per_chunk : j->ntiles;
    for (long tile = t0; tile < t1; tile++) {
      const long r0 = tile * rt;
      const int R = j->nruns - r0 < rt ? (int)(j->nruns - r0) : rt;
      const float *a[4];
      long yo[4];
      /* runs may lie in different images (2-run tiles of odd run counts per image) */
      for (int r = 0; r < R; r++) {
        const long ri = r0 + r, b = ri / per_img;
        prow_runs(j, b, j->phases + b * j->ph_img, ri % per_img, 1, a + r, yo + r);
      }
      if (j->nr == 16) prow_tile16(j, a[0], yo[0], t);
      else if (j->yblk) prow_tile32b(j, panel, a, yo, R);
      else prow_tile32(j, panel, a, yo, R, t);
    }
  }
}

typedef struct {
  const igeo *g;
  const float *x;
  float *dst;
  long x_img;
} prow_build_job;
/* Images split over the threads, or with fewer images than threads, channels (batch 1). */
static void prow_build_task(void *ctx, int tid, int n) {
  prow_build_job *b = ctx;
  const conv_p *p = b->g->p;
  long lo, hi;
  if (p->n >= n) {
    pool_split(p->n, tid, n, 1, &lo, &hi);
    for (long i = lo; i < hi; i++) build_phases(b->g, b->x + i * b->x_img, b->dst + i * b->g->img);
    return;
  }
  pool_split((long)p->n * p->cin, tid, n, 1, &lo, &hi);
  for (long i = lo; i < hi;) {
    long img = i / p->cin, c0 = i % p->cin, c1 = c0 + (hi - i) < p->cin ? c0 + (hi - i) : p->cin;
    build_phases_range(b->g, b->x + img * b->x_img, b->dst + img * b->g->img, b->g->plane, (int)c0, (int)c1);
    i += c1 - c0;
  }
}

/* Whether the pixel-row path takes this convolution, and with which panel width (0: no). AVX-512,
 * groups 1, output width a multiple of 7, and K >= 128 (64 for a stride-1 1x1; below that the
 * transposing epilogue costs more than the tile fill gains); then
 *  - 32: at least 32 output channels; a strided 1x1 only with stride 2 along x and no padding (it
 *    reads x in place, pixels 2 apart). Measured on ResNet-50's shapes it beats the q-grid tiling
 *    everywhere else, most on small maps (7x7: 2.2x) where that tiling wastes columns;
 *  - 16: 9 to 16 output channels on maps whose width is a multiple of 28 (ResNet-20's first stage
 *    on 28x28 inputs), with K >= 64: tiles of 28 consecutive pixels x 16
 *    channels, where the q grid's 8-row tiles run at about 70 % of the FMA peak.
 * RESNET_PROW=0 turns the path off, RESNET_PROW=all lifts the K limits (both for measurements). */
int prow_nr(const conv_p *p) {
  if (p->groups != 1 || strcmp(sgemm_isa(), "avx512") != 0 || p->n < 1 || no_implicit()) return 0;
  if (p->ow % PR_RUN != 0) return 0;
  long K = (long)p->cin * p->kh * p->kw;
  long Hq = p->oh + ((p->kh - 1) * p->dh) / p->sh, Wq = p->ow + ((p->kw - 1) * p->dw) / p->sw;
  if (K > (1L << 24) || Hq * Wq * p->sh * p->sw * p->cin > (1L << 26)) return 0;
  static int mode = -1; /* RESNET_PROW: 0 off, "all" without the K limits (experiments) */
  if (mode < 0) {
    const char *e = getenv("RESNET_PROW");
    mode = !e ? 1 : strcmp(e, "0") == 0 ? 0 : strcmp(e, "all") == 0 ? 2 : 1;
  }
  if (mode == 0) return 0;
  const int pw1 = p->kh == 1 && p->kw == 1;
  if (p->cout >= 32) {
    if (pw1 && (p->sh > 1 || p->sw > 1) && !(p->sw == 2 && p->ph == 0 && p->pw == 0)) return 0;
    /* a stride-1 1x1 from K = 64 (ResNet-50's 64 -> 256 expansions on 56x56 maps: as fast as the q
     * grid at batch 1, 15-30 % faster at batch 8; 128 -> 512: ~10 %), others from K = 128 (the 7x7
     * stem, K = 147: 5-9 %) */
    const int kmin = pw1 && p->sh == 1 && p->sw == 1 ? 64 : 128;
    return mode == 2 || K >= kmin ? 32 : 0;
  }
  if (p->cout >= 9 && p->ow % 28 == 0 && !(pw1 && (p->sh > 1 || p->sw > 1))) return mode == 2 || K >= 64 ? 16 : 0;
  return 0;
}
int prow_ok(const conv_p *p) { return prow_nr(p) != 0; }

/* The pixel-row convolution with panels of nr channels; xblk / yblk: input / output blocked
 * (NCHW16c, nr 32 only). */
static void prow_exec(float *y, const float *x, const float *wt, const float *wp, const float *bias, const float *residual,
                      int relu, const conv_p *p, int nr, int xblk, int yblk) {
  static _Thread_local buf_t prow_w_buf, prow_ph_buf;
  prow_job j;
  memset(&j, 0, sizeof j);
  /* blocked input: cached offsets (not the phase planes' ones) */
  int *own_off = NULL;
  if (xblk) {
    igeo_geom(&j.g, p);
    j.K = p->cin * p->kh * p->kw;
    j.g.off = (int *)blk_offsets(p);
  } else {
    j.K = igeo_init(&j.g, p);
    own_off = j.g.off;
  }
  j.M = p->cout;
  j.bias = bias; j.residual = residual; j.y = y; j.relu = relu;
  j.y_ch = (long)p->oh * p->ow;
  j.yblk = yblk;
  j.ywp = p->ow + 2 * CONV_BLK_BORDER;
  j.chblk = (long)(p->oh + 2 * CONV_BLK_BORDER) * j.ywp * 16;
  j.y_img = yblk ? (long)(p->cout / 16) * j.chblk : (long)p->cout * j.y_ch;
  j.rpr = p->ow / PR_RUN;
  j.nruns = (long)p->n * p->oh * j.rpr;
  const int runs_per_tile = nr == 16 ? 4 : 2;
  j.ntiles = (j.nruns + runs_per_tile - 1) / runs_per_tile;
  long x_img = xblk ? (long)p->cin * (p->h + 2 * CONV_BLK_BORDER) * (p->w + 2 * CONV_BLK_BORDER) : (long)p->cin * p->h * p->w;
  if (!wp) {
    float *b = grow(&prow_w_buf, prow_packed_size(j.M, j.K, nr));
    prow_pack(wt, j.M, j.K, nr, b);
    wp = b;
  }
  j.Bp = wp;
  j.nr = nr;
  const int pw1 = p->kh == 1 && p->kw == 1 && p->ph == 0 && p->pw == 0;
  if (xblk) {
    /* x in place: pixels 16 floats apart times the stride (prow_blocked_ok: stride 1 or 2 along x) */
    j.phases = x;
    j.rowstep = (long)p->sh * (p->w + 2 * CONV_BLK_BORDER) * 16;
    j.colstep = 16 * p->sw;
    j.g.img = x_img;
  } else {
    j.rowstep = j.g.Wq;
    j.colstep = 1;
    if (pw1 && p->sw == 2) {
      /* strided 1x1: x in place; tap k is channel k */
      j.phases = x;
      j.rowstep = (long)p->sh * p->w;
      j.colstep = 2;
      for (int k = 0; k < j.K; k++) j.g.off[k] = (int)((long)k * p->h * p->w);
      j.g.img = x_img;
    } else if (is_pointwise(p) && j.g.img == x_img) {
      j.phases = x;
    }
  }
  j.direct = j.phases == x;
  j.x = x;
  j.x_img = x_img;
  j.npanels = (j.M + nr - 1) / nr;
  int T = pool_threads();
  /* per image when there are images enough and the weights stay in L2 across them (every image
   * streams all panels) */
  j.by_image = p->n >= 4 * T && (long)j.npanels * nr * j.K * 4 <= (512L << 10);
  /* tiles per chunk: the input of a chunk (about cin x kh input rows x the tiles' width span) fits
   * in half an L2, so that all the panels of a chunk find it there (ResNet-50's strided 1x1 at
   * batch 8, one thread: each panel had streamed the whole batch's input from L3, 23-27 -> 16.5 ms) */
  const long tile_bytes = (long)p->cin * p->kh * ((long)PR_RUN * runs_per_tile * p->sw + p->kw) * 4;
  const long fit = (512L << 10) / (tile_bytes > 0 ? tile_bytes : 1);
  if (j.by_image) {
    j.per_chunk = fit >= 1 ? (int)(fit < (1L << 30) ? fit : 1L << 30) : 1;
    const int nthr = p->n < T ? p->n : T;
    pool_ranges_init(&j.items, p->n, 1, nthr);
    pool_run_dynamic(prow_task, &j, nthr);
    free(own_off);
    return;
  }
  if (!j.direct) {
    float *ph = grow(&prow_ph_buf, (size_t)p->n * j.g.img);
    prow_build_job bj = {&j.g, x, ph, x_img};
    const long items = (long)p->n * p->cin;
    pool_run_n(prow_build_task, &bj, items < (1 << 30) ? (int)items : 1 << 30);
    j.phases = ph;
  }
  j.ph_img = j.g.img;
  /* items: panels x tile chunks, at least ~16 per thread (measured: 8 left one thread idle at the end of
   * ResNet-50's 56x56 layers at batch 1, 1.6 vs 1.2 ms), chunks no smaller than one tile */
  long want = 16L * T;
  long chunks = (want + j.npanels - 1) / j.npanels;
  if (chunks > j.ntiles) chunks = j.ntiles;
  if (chunks < 1) chunks = 1;
  j.per_chunk = (int)((j.ntiles + chunks - 1) / chunks);
  if (fit >= 1 && fit < j.per_chunk) j.per_chunk = (int)fit; /* and input that fits (above) */
  j.chunks = (int)((j.ntiles + j.per_chunk - 1) / j.per_chunk);
  long items = (long)j.npanels * j.chunks;
  const int nthr = items < T ? (int)items : T;
  /* Where the whole input fits in half an L2 and the weights are larger (ResNet-50's 1x1 layers on
   * 14x14 and 7x7 maps at batch 1: 1-8 MB of weights, 0.1-1 MB of input), each thread takes a range
   * of panels with all their chunks: every weight is read from memory once, by one thread. Chunk-major
   * ranges had every thread stream all the weights past its chunks (2048 -> 512 on 7x7, batch 1,
   * caches flushed, alternating calls: -9 to -11 % in three runs; 1024 -> 256 on 14x14 0 to -6 %). */
  const long x_bytes = (long)p->n * x_img * 4, w_bytes = (long)j.npanels * nr * j.K * 4;
  j.panel_major = !env_zero("RESNET_PROW_PANEL_MAJOR", &panel_major_on) && x_bytes <= l2_bytes() / 2 && w_bytes > x_bytes;
  pool_ranges_init(&j.items, items, j.panel_major ? j.chunks : j.npanels, nthr);
  pool_run_dynamic(prow_task, &j, nthr);
  free(own_off);
}

void prow_forward(float *y, const float *x, const float *wt, const float *wp, const float *bias,
                  const float *residual, int relu, const conv_p *p) {
  prow_exec(y, x, wt, wp, bias, residual, relu, p, prow_nr(p), 0, 0);
}

/* Whether prow_forward_blocked takes this geometry (besides AVX-512, checked by the caller): groups 1,
 * whole 16-channel output blocks, whole 7-pixel runs, blocked input in whole blocks, sizes that the
 * int offsets hold. */
int prow_blocked_ok(const conv_p *p, int xblk) {
  if (p->groups != 1 || p->n < 1 || p->cout % 16 || p->ow % PR_RUN) return 0;
  /* blocked input: padding within the border, and a pixel step the kernels have (16 or 32 floats) */
  if (xblk && (p->cin % 16 || p->ph > CONV_BLK_BORDER || p->pw > CONV_BLK_BORDER || (p->sw != 1 && p->sw != 2))) return 0;
  long K = (long)p->cin * p->kh * p->kw;
  long Hq = p->oh + ((p->kh - 1) * p->dh) / p->sh, Wq = p->ow + ((p->kw - 1) * p->dw) / p->sw;
  return K <= (1L << 24) && Hq * Wq * p->sh * p->sw * p->cin <= (1L << 26) && (long)p->h * p->w * p->cin <= (1L << 26);
}

void prow_forward_blocked(float *y, const float *x, const float *wp, const float *bias, const float *residual, int relu,
                          const conv_p *p, int xblk) {
  prow_exec(y, x, NULL, wp, bias, residual, relu, p, PR_NR, xblk, 1);
}

#endif
