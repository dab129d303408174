/* Batch norm, activations, pooling, log-softmax and SGD on raw buffers.
 *
 * Hot loops are written so the compiler vectorises them (independent lanes, no reductions that
 * need reassociation; sums use explicit 16-lane partial accumulators) and are compiled for
 * AVX-512, AVX2 and baseline x86-64 with target_clones, picked at load time. Channel-wise and
 * element-wise work is split across the pool's threads when it is large enough to pay. */
#include "ops.h"
#include "conv.h" /* CONV_BLK_BORDER: the blocked layout's zero border */
#include "conv_internal.h" /* env_zero */
#include "gemm.h" /* sgemm_isa: the kernels in use (RESNET_ISA) */
#include "pool.h"
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MV __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MV
#endif

#define LANES 16
#define PAR_MIN 32768 /* elements below which threading costs more than it saves */

MV void sum_range(const float *x, long n, double *s_out) {
  float acc[LANES] = {0};
  long i = 0;
  for (; i + LANES <= n; i += LANES)
    for (int l = 0; l < LANES; l++) acc[l] += x[i + l];
  double s = 0;
  for (int l = 0; l < LANES; l++) s += acc[l];
  for (; i < n; i++) s += x[i];
  *s_out = s;
}

MV double sum_sq_dev(const float *x, long n, float mu) {
  float acc[LANES] = {0};
  long i = 0;
  for (; i + LANES <= n; i += LANES)
    for (int l = 0; l < LANES; l++) {
      float d = x[i + l] - mu;
      acc[l] += d * d;
    }
  double s = 0;
  for (int l = 0; l < LANES; l++) s += acc[l];
  for (; i < n; i++) {
    float d = x[i] - mu;
    s += (double)d * d;
  }
  return s;
}

MV void scale_shift(float *y, const float *x, long n, float scale, float shift) {
  for (long i = 0; i < n; i++) y[i] = x[i] * scale + shift;
}

/* (x * scale + shift) + r, then relu when set: a residual block's join (relu as relu_range) */
MV void scale_shift_res(float *y, const float *x, const float *r, long n, float scale, float shift, int relu) {
  for (long i = 0; i < n; i++) {
    float v = x[i] * scale + shift;
    v = v + r[i];
    y[i] = !relu || v > 0.0f ? v : (v != v ? v : 0.0f);
  }
}

/* relu(x * scale + shift), NaN kept (as relu_range) */
MV void scale_shift_relu(float *y, const float *x, long n, float scale, float shift) {
  for (long i = 0; i < n; i++) {
    float v = x[i] * scale + shift;
    y[i] = v > 0.0f ? v : (v != v ? v : 0.0f);
  }
}

/* sum(dy), sum(dy * (x - mu)) */
MV void dot_dev(const float *dy, const float *x, long n, float mu, double *s_dy, double *s_dyx) {
  float a[LANES] = {0}, b[LANES] = {0};
  long i = 0;
  for (; i + LANES <= n; i += LANES)
    for (int l = 0; l < LANES; l++) {
      a[l] += dy[i + l];
      b[l] += dy[i + l] * (x[i + l] - mu);
    }
  double sa = 0, sb = 0;
  for (int l = 0; l < LANES; l++) {
    sa += a[l];
    sb += b[l];
  }
  for (; i < n; i++) {
    sa += dy[i];
    sb += (double)dy[i] * (x[i] - mu);
  }
  *s_dy = sa;
  *s_dyx = sb;
}

/* dx = k1 * dy + k2 * (x - mu) + k3 */
MV void bn_bwd_apply(float *dx, const float *dy, const float *x, long n, float mu, float k1, float k2, float k3) {
  for (long i = 0; i < n; i++) dx[i] = k1 * dy[i] + k2 * (x[i] - mu) + k3;
}

/* The same two with dy masked by a following relu's output y (relu backward: y <= 0 ? 0 : dy). */
MV void dot_dev_masked(const float *dy, const float *y, const float *x, long n, float mu, double *s_dy, double *s_dyx) {
  float a[LANES] = {0}, b[LANES] = {0};
  long i = 0;
  for (; i + LANES <= n; i += LANES)
    for (int l = 0; l < LANES; l++) {
      float d = dy[i + l], g = y[i + l] <= 0.0f ? 0.0f : d; /* unconditional load: if-convertible */
      a[l] += g;
      b[l] += g * (x[i + l] - mu);
    }
  double sa = 0, sb = 0;
  for (int l = 0; l < LANES; l++) {
    sa += a[l];
    sb += b[l];
  }
  for (; i < n; i++) {
    float d = dy[i], g = y[i] <= 0.0f ? 0.0f : d;
    sa += g;
    sb += (double)g * (x[i] - mu);
  }
  *s_dy = sa;
  *s_dyx = sb;
}

MV void bn_bwd_apply_masked(float *dx, const float *dy, const float *y, const float *x, long n, float mu, float k1, float k2,
                            float k3) {
  for (long i = 0; i < n; i++) {
    float d = dy[i], g = y[i] <= 0.0f ? 0.0f : d;
    dx[i] = k1 * g + k2 * (x[i] - mu) + k3;
  }
}

typedef struct {
  float *y, *mean, *invstd, *var_u, *dx, *dgamma, *dbeta;
  const float *x, *gamma, *beta, *rm, *rv, *dy, *cmean, *cinvstd;
  const float *residual; /* training forward: added before the relu (NULL: none) */
  const float *ymask; /* backward: the output of a fused relu (NULL: none) */
  float *gb;          /* backward with ymask: the masked gradient written here too (NULL: not) */
  uint16_t *bits_out; /* training forward with relu: the relu's mask bits written here (NULL: not) */
  const uint16_t *bits; /* backward with ymask: the forward's mask bits, read instead of ymask (NULL: not) */
  int relu_from_x;    /* backward with ymask: the forward's beta is in .beta, so paths that can may
                       * recompute the relu's input from x instead of reading ymask (bn_im_job.ss) */
  float *scale_out, *shift_out; /* training forward: per channel, y's scale and shift (NULL: not) */
  int n, c, training, relu;
  long hw;
  float eps;
} bn_job;

/* The per-channel scale and shift of the training forward's y = x * scale + shift: one function,
 * so that the backward's recomputed relu input has the forward's bits. */
static void bn_scale_shift(const bn_job *j, long ch, float mu, float inv, float *scale, float *shift) {
  const float g = j->gamma ? j->gamma[ch] : 1.0f, bt = j->beta ? j->beta[ch] : 0.0f;
  *scale = g * inv;
  *shift = bt - mu * *scale;
  if (j->scale_out) {
    j->scale_out[ch] = *scale;
    j->shift_out[ch] = *shift;
  }
}

static void bn_train_task(void *ctx, int tid, int nt) {
  bn_job *j = ctx;
  long lo, hi;
  pool_split(j->c, tid, nt, 1, &lo, &hi);
  const long m = (long)j->n * j->hw;
  for (long ch = lo; ch < hi; ch++) {
    double s = 0, part;
    for (int b = 0; b < j->n; b++) {
      sum_range(j->x + ((long)b * j->c + ch) * j->hw, j->hw, &part);
      s += part;
    }
    float mu = (float)(s / m);
    double ss = 0;
    for (int b = 0; b < j->n; b++) ss += sum_sq_dev(j->x + ((long)b * j->c + ch) * j->hw, j->hw, mu);
    float inv = (float)(1.0 / sqrt(ss / m + j->eps));
    j->mean[ch] = mu;
    j->invstd[ch] = inv;
    j->var_u[ch] = m > 1 ? (float)(ss / (m - 1)) : NAN;
    float scale, shift;
    bn_scale_shift(j, ch, mu, inv, &scale, &shift);
    for (int b = 0; b < j->n && j->y; b++) {
      long off = ((long)b * j->c + ch) * j->hw;
      if (j->residual) scale_shift_res(j->y + off, j->x + off, j->residual + off, j->hw, scale, shift, j->relu);
      else if (j->relu) scale_shift_relu(j->y + off, j->x + off, j->hw, scale, shift);
      else scale_shift(j->y + off, j->x + off, j->hw, scale, shift);
    }
  }
}

static void bn_eval_task(void *ctx, int tid, int nt) {
  bn_job *j = ctx;
  long lo, hi;
  pool_split(j->c, tid, nt, 1, &lo, &hi);
  for (long ch = lo; ch < hi; ch++) {
    float inv = (float)(1.0 / sqrt((double)j->rv[ch] + j->eps));
    float scale = (j->gamma ? j->gamma[ch] : 1.0f) * inv;
    float shift = (j->beta ? j->beta[ch] : 0.0f) - j->rm[ch] * scale;
    for (int b = 0; b < j->n; b++) {
      long off = ((long)b * j->c + ch) * j->hw;
      if (j->relu) scale_shift_relu(j->y + off, j->x + off, j->hw, scale, shift);
      else scale_shift(j->y + off, j->x + off, j->hw, scale, shift);
    }
  }
}

/* Batch-norm backward for channel ch from its sums over the batch (of dy and dy * (x - mean)):
 * writes dgamma and dbeta, and returns the coefficients of dx = k1 * dy + k2 * (x - mean) + k3:
 * dx = g*inv/m * (m*dy - sum(dy) - xhat*sum(dy*xhat)), xhat = (x-mu)*inv, in training; k1 * dy in
 * eval. */
static void bn_bwd_coeffs(const bn_job *j, long ch, double sdy, double sdyx, double m, float *k1, float *k2, float *k3) {
  const float inv = j->cinvstd[ch];
  const double sdyxhat = sdyx * inv;
  if (j->dgamma) j->dgamma[ch] = (float)sdyxhat;
  if (j->dbeta) j->dbeta[ch] = (float)sdy;
  const float g = j->gamma ? j->gamma[ch] : 1.0f;
  *k1 = g * inv;
  *k2 = j->training ? (float)(-g * inv * inv * sdyxhat / m) : 0.0f;
  *k3 = j->training ? (float)(-g * inv * sdy / m) : 0.0f;
}

static void bn_backward_task(void *ctx, int tid, int nt) {
  bn_job *j = ctx;
  long lo, hi;
  pool_split(j->c, tid, nt, 1, &lo, &hi);
  const double m = (double)j->n * j->hw;
  for (long ch = lo; ch < hi; ch++) {
    const float mu = j->cmean[ch];
    double sdy = 0, sdyx = 0, a, b2;
    for (int b = 0; b < j->n; b++) {
      long off = ((long)b * j->c + ch) * j->hw;
      if (j->ymask) dot_dev_masked(j->dy + off, j->ymask + off, j->x + off, j->hw, mu, &a, &b2);
      else dot_dev(j->dy + off, j->x + off, j->hw, mu, &a, &b2);
      sdy += a;
      sdyx += b2;
    }
    float k1, k2, k3;
    bn_bwd_coeffs(j, ch, sdy, sdyx, m, &k1, &k2, &k3);
    /* backwards over the images: the ones the sums pass read last are still in L2 (a channel of
     * dy, x and the relu output is ~1.2 MB for a CIFAR batch of 128: more than L2 holds) */
    for (int b = j->n - 1; b >= 0; b--) {
      long off = ((long)b * j->c + ch) * j->hw;
      if (j->ymask) bn_bwd_apply_masked(j->dx + off, j->dy + off, j->ymask + off, j->x + off, j->hw, mu, k1, k2, k3);
      else bn_bwd_apply(j->dx + off, j->dy + off, j->x + off, j->hw, mu, k1, k2, k3);
    }
  }
}

#if defined(__x86_64__)
#include <immintrin.h>
#include "simd.h" /* load16, store16 */
/* AVX-512 paths of this file (RESNET_OPS_NO_AVX512 set: the portable loops, for comparisons) */
static int has_avx512(void) {
  static int v = -1;
  if (v < 0) v = __builtin_cpu_supports("avx512f") && !getenv("RESNET_OPS_NO_AVX512");
  return v;
}
/* The vector width of this file's explicit SIMD paths (the image-by-image batch norm, max pool with
 * indices): 16 lanes (AVX-512), 8 (AVX2 + FMA: without AVX-512, or with RESNET_OPS_NO_AVX512 set), or
 * none (the scalar loops: no AVX2, or the portable kernels forced) */
static int ops_lanes(void) {
  static int avx2 = -1;
  if (avx2 < 0) avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const char *isa = sgemm_isa(); /* RESNET_ISA or the addon's isa(): the narrower kernels here too */
  if (has_avx512() && strcmp(isa, "avx512") == 0) return 16;
  return avx2 && strcmp(isa, "portable") != 0 ? 8 : 0;
}
/* ---- batch norm image by image (AVX-512, maps of at least 16 pixels) ----------------------------
 * The tensor is walked in memory order, an image at a time with all its channels, in two passes: the
 * per-channel sums, then the elementwise pass. Channel by channel, as the portable loops go, each
 * channel is a run of short segments a whole image apart, read three times (mean, squared deviations,
 * normalise): ResNet-20's 128 x 16 x 28 x 28 batch took 3.2x the time of copying it forward and 5.5x
 * backward. Now (minima of 100 alternating calls in one process) forward 435-525 -> 242-268 us,
 * backward 822-934 -> 506-598 us there; 16 x 16 and 7 x 7 maps 12-23 % and 15 % faster forward,
 * 35-40 % backward. The forward takes the sums of x - s and (x - s)^2, s the channel's first value, so
 * one pass gives the variance (E[(x-s)^2] - E[x-s]^2, whose cancellation is as large as (mean - s)^2
 * against the variance, not the mean's square: the two-pass result within float rounding). Sums run in
 * float within an image's segment, then in double per fixed block of images, and the blocks' sums are
 * added in block order: the bits do not depend on which thread took which block, nor on the thread
 * count. */
#define BN_BLOCKS 16
typedef struct {
  bn_job *j;
  double *part;   /* [block][channel][2] */
  const float *shift; /* training forward: per channel, subtracted before the sums (x[0][ch][0]) */
  float *k;       /* per channel: forward scale, shift; backward k1, k2, k3 */
  const float *ss; /* backward of a fused relu, recomputed: the forward's scale, shift per channel */
  int blocks;
  pool_ranges items; /* the image blocks, by ranges */
} bn_im_job;

/* The 16 lanes of v added in double. */
__attribute__((target("avx512f"))) static inline double sum_pd(__m512 v) {
  return _mm512_reduce_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(v))) +
         _mm512_reduce_add_pd(_mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
}

/* One (image, channel) segment of the backward's incoming gradient, through a fused relu when there
 * is one: g where the relu's output is not <= 0 (a NaN output passes g, as the scalar code), the
 * output read (ym) or recomputed from x as the forward computed it (ij->ss: x * s + t, multiply then
 * add as bn_im_apply_task, whose max(0, v) is <= 0 exactly where v is). Both backward passes read it
 * so. */
typedef struct {
  const float *dy, *x, *ym;
  const uint16_t *bits; /* the mask's words of the segment, read instead of ym */
  int recompute;
  __m512 s, t;
} bn_gseg;

__attribute__((target("avx512f"))) static inline bn_gseg gseg_at(const bn_im_job *ij, long off, int ch) {
  const bn_job *j = ij->j;
  const int rc = ij->ss != NULL;
  const int bits = j->ymask && !rc && j->bits;
  const bn_gseg g = {j->dy + off, j->x + off, j->ymask && !rc && !bits ? j->ymask + off : NULL,
                     bits ? j->bits + off / j->hw * ((j->hw + 15) / 16) : NULL, rc,
                     rc ? _mm512_set1_ps(ij->ss[2 * ch]) : _mm512_setzero_ps(),
                     rc ? _mm512_set1_ps(ij->ss[2 * ch + 1]) : _mm512_setzero_ps()};
  return g;
}

/* Lanes mk of the segment from i: the (masked) gradient, and x in *vx. */
__attribute__((target("avx512f"))) static inline __m512 gseg_load(const bn_gseg *sg, long i, __mmask16 mk, __m512 *vx) {
  const __m512 g = load16(sg->dy + i, mk);
  *vx = load16(sg->x + i, mk);
  __m512 v;
  if (sg->bits) return _mm512_maskz_mov_ps((__mmask16)(sg->bits[i / 16] & mk), g);
  if (sg->recompute) v = _mm512_add_ps(_mm512_mul_ps(*vx, sg->s), sg->t);
  else if (sg->ym) v = load16(sg->ym + i, mk);
  else return g;
  return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_NLE_UQ), g);
}

/* Whole vectors by plain loads and stores (load16, store16: simd.h): with masked ones for every
 * vector, in ResNet-20 steps alternating with this build on the Zen 5 VM (per-call medians, 20 steps
 * each), the batch-norm backwards took 13.5 against 8.7 ms a step, the forwards 5.4 against 3.1,
 * their statistics 1.7 against 1.0 (ResNet-18: 2.9 against 1.9, 1.4 against 1.0); the 8-lane AVX2
 * passes had been faster than them there. */
/* The block's images [b0, b1) of image-block `blk`. */
static void bn_block(const bn_im_job *ij, int blk, long *b0, long *b1) { pool_split(ij->j->n, blk, ij->blocks, 1, b0, b1); }

/* The start of image-block blk in a sums task: its images [*b0, *b1), its part of the sums zeroed
 * (returned), and the per-lane scratch (nl doubles) when there is one. */
static double *bn_sums_block(const bn_im_job *ij, int blk, long *b0, long *b1, double *lanes, size_t nl) {
  bn_block(ij, blk, b0, b1);
  double *part = ij->part + (long)blk * ij->j->c * 2;
  for (long i = 0; i < 2L * ij->j->c; i++) part[i] = 0.0;
  if (lanes) memset(lanes, 0, sizeof(double) * nl);
  return part;
}

/* Maps of at most this many pixels add each segment's float sums to per-channel double lanes (16 a
 * stat) instead of reducing them across the vector there: on 4x4 maps a segment is one vector and its
 * two horizontal reductions were most of the pass (64 x 128 x 4 x 4, minima of 200 calls, the two
 * builds in turn: forward 53 -> 44 us, backward 78 -> 65 us; 128 x 64 x 7 x 7 88-97 -> 66-77 and
 * 137-153 -> 110-119 us). The lanes are reduced once per block of images. */
#define BN_LANES_HW 64

/* Per-thread scratch of n doubles, kept. */
static double *lanes_scratch(long n) {
  static _Thread_local double *p;
  static _Thread_local long cap;
  if (cap < n) {
    free(p);
    p = aligned_alloc(64, sizeof(double) * (size_t)((n + 7) & ~7L));
    if (!p) abort();
    cap = n;
  }
  return p;
}

/* lanes[0..15] += the 16 lanes of v, in double. */
__attribute__((target("avx512f"))) static inline void add_lanes(double *lanes, __m512 v) {
  const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
  const __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
  _mm512_store_pd(lanes, _mm512_add_pd(_mm512_load_pd(lanes), lo));
  _mm512_store_pd(lanes + 8, _mm512_add_pd(_mm512_load_pd(lanes + 8), hi));
}

/* The sums of image-block blocks handed out dynamically, per channel into the block's part: forward
 * (ij->shift set) of x - s and of (x - s)^2, s the channel's first value; backward of g and of
 * g * (x - mean), g = dy (zero where a fused relu's output is <= 0). Within an image's segment in
 * float, then in double (on small maps lane by lane, reduced at the block's end).
 * A thread's blocks, and the images in a block, are taken from the last down (ij->items.desc): the
 * producer (a convolution, by the same ranges) wrote them from the first up, so the images it wrote
 * last are still in the core's L2 and come first, and the elementwise pass after this one, from the
 * first up, finds the images this pass read last (ResNet-20's 16-channel batch norms at batch 128:
 * 6.4 MB a tensor, 2 MB of L2 a core; in ResNet-20 steps, against the first-up order, per-call
 * minima summed over three alternating runs: the forwards 3-8 % faster, the backwards 0-5 %).
 * RESNET_BN_DESC=0: the first up (measurements). */
__attribute__((target("avx512f"))) static void bn_im_sums_task(void *ctx, int tid, int nt) {
  (void)nt;
  bn_im_job *ij = ctx;
  const bn_job *j = ij->j;
  const long hw = j->hw;
  const __mmask16 tail = (__mmask16)((1u << (hw & 15)) - 1);
  const __m512 zero = _mm512_setzero_ps();
  const int by_lanes = hw <= BN_LANES_HW;
  double *lanes = by_lanes ? lanes_scratch(32L * j->c) : NULL; /* [channel][stat][16] */
  pool_cursor cur = pool_cursor_at(&ij->items, tid);
  for (;;) {
    const int blk = (int)pool_ranges_next(&ij->items, &cur);
    if (blk < 0) break;
    long b0, b1;
    double *part = bn_sums_block(ij, blk, &b0, &b1, lanes, 32 * (size_t)j->c);
    for (long bi = b0; bi < b1; bi++)
      for (int ch = 0; ch < j->c; ch++) {
        const long b = ij->items.desc ? b0 + b1 - 1 - bi : bi;
        const long off = ((long)b * j->c + ch) * hw;
        __m512 a = zero, q = zero;
        if (ij->shift) {
          const __m512 s = _mm512_set1_ps(ij->shift[ch]);
          for (long i = 0; i < hw; i += 16) {
            const __mmask16 mk = hw - i >= 16 ? (__mmask16)0xFFFF : tail;
            const __m512 d = _mm512_maskz_sub_ps(mk, load16(j->x + off + i, mk), s);
            a = _mm512_add_ps(a, d);
            q = _mm512_fmadd_ps(d, d, q);
          }
        } else {
          const bn_gseg sg = gseg_at(ij, off, ch);
          const __m512 vmu = _mm512_set1_ps(j->cmean[ch]);
          float *gb = j->gb ? j->gb + off : NULL;
          for (long i = 0; i < hw; i += 16) {
            const __mmask16 mk = hw - i >= 16 ? (__mmask16)0xFFFF : tail;
            __m512 vx;
            const __m512 g = gseg_load(&sg, i, mk, &vx);
            if (gb) store16(gb + i, mk, g);
            a = _mm512_add_ps(a, g);
            q = _mm512_fmadd_ps(g, _mm512_sub_ps(vx, vmu), q);
          }
        }
        if (by_lanes) {
          add_lanes(lanes + 32L * ch, a);
          add_lanes(lanes + 32L * ch + 16, q);
        } else {
          part[2 * ch] += sum_pd(a);
          part[2 * ch + 1] += sum_pd(q);
        }
      }
    if (by_lanes)
      for (int ch = 0; ch < j->c; ch++) {
        const double *l = lanes + 32L * ch;
        part[2 * ch] = _mm512_reduce_add_pd(_mm512_add_pd(_mm512_load_pd(l), _mm512_load_pd(l + 8)));
        part[2 * ch + 1] = _mm512_reduce_add_pd(_mm512_add_pd(_mm512_load_pd(l + 16), _mm512_load_pd(l + 24)));
      }
  }
}

/* The elementwise passes over the segments [lo, hi) of (image, channel), in memory order: forward
 * y = x * k[2ch] + k[2ch+1] (then relu; no FMA, as scale_shift); backward dx = k1 g + k2 (x - mean) + k3. */
__attribute__((target("avx512f"))) static void bn_im_apply_task(void *ctx, int tid, int nt) {
  bn_im_job *ij = ctx;
  const bn_job *j = ij->j;
  const long hw = j->hw;
  const __mmask16 tail = (__mmask16)((1u << (hw & 15)) - 1);
  const __m512 zero = _mm512_setzero_ps();
  long lo, hi;
  pool_split((long)j->n * j->c, tid, nt, 1, &lo, &hi);
  for (long sg = lo; sg < hi; sg++) {
    const int ch = (int)(sg % j->c);
    const long off = sg * hw;
    if (j->y) {
      const __m512 vs = _mm512_set1_ps(ij->k[2 * ch]), vt = _mm512_set1_ps(ij->k[2 * ch + 1]);
      if (j->bits_out) { /* a residual join (relu): the relu's mask as bits too, as gseg_load reads them */
        uint16_t *bits = j->bits_out + sg * ((hw + 15) / 16);
        const float *xs = j->x + off, *rs = j->residual ? j->residual + off : NULL;
        float *ys = j->y + off;
        long w = 0;
        /* four words' bits stored together (x86: little-endian): a 16-bit store per vector, even
         * into a buffer on the stack, made this pass 20 % slower (128 x 16 x 28 x 28), four
         * vectors' in one 64-bit store 2-5 % */
        unsigned long long acc = 0;
        for (long i = 0; i < hw; i += 16, w++) {
          const __mmask16 mk = hw - i >= 16 ? (__mmask16)0xFFFF : tail;
          __m512 v = _mm512_add_ps(_mm512_mul_ps(load16(xs + i, mk), vs), vt);
          if (rs) v = _mm512_add_ps(v, load16(rs + i, mk));
          acc |= (unsigned long long)_mm512_mask_cmp_ps_mask(mk, v, zero, _CMP_NLE_UQ) << (16 * (w & 3));
          if ((w & 3) == 3) {
            memcpy(bits + w - 3, &acc, 8);
            acc = 0;
          }
          store16(ys + i, mk, _mm512_max_ps(zero, v));
        }
        for (long k = w & ~3L; k < w; k++) bits[k] = (uint16_t)(acc >> (16 * (k & 3)));
        continue;
      }
      for (long i = 0; i < hw; i += 16) {
        const __mmask16 mk = hw - i >= 16 ? (__mmask16)0xFFFF : tail;
        __m512 v = _mm512_add_ps(_mm512_mul_ps(load16(j->x + off + i, mk), vs), vt);
        if (j->residual) v = _mm512_add_ps(v, load16(j->residual + off + i, mk));
        if (j->relu) v = _mm512_max_ps(zero, v); /* NaN stays NaN: max returns its second operand */
        store16(j->y + off + i, mk, v);
      }
      continue;
    }
    const bn_gseg sg = gseg_at(ij, off, ch);
    const __m512 v1 = _mm512_set1_ps(ij->k[3 * ch]), v2 = _mm512_set1_ps(ij->k[3 * ch + 1]), v3 = _mm512_set1_ps(ij->k[3 * ch + 2]);
    const __m512 vmu = _mm512_set1_ps(j->cmean[ch]);
    for (long i = 0; i < hw; i += 16) {
      const __mmask16 mk = hw - i >= 16 ? (__mmask16)0xFFFF : tail;
      __m512 vx;
      const __m512 g = gseg_load(&sg, i, mk, &vx);
      const __m512 v = _mm512_fmadd_ps(v2, _mm512_sub_ps(vx, vmu), v3);
      store16(j->dx + off + i, mk, _mm512_fmadd_ps(v1, g, v));
    }
  }
}

/* ---- the same two passes with 8 lanes (AVX2 + FMA), for CPUs without AVX-512: the tails and the
 * relu's mask bits through lane masks made from 8-bit masks, sums of 8 lanes; otherwise as above
 * (the same segments, blocks, orders and arithmetic, so the bits differ from the AVX-512 passes only
 * by the lanes' partial sums). Before, such CPUs ran the channel loops (three strided passes over
 * each channel, and a relu's mask always read from its stored output): in ResNet-20 steps with the
 * AVX2 paths forced (Zen 5 VM, sums of per-call medians, 9 steps each, one build with and one
 * without) the batch-norm backwards 22.7 -> 9.5 ms a step, the forwards 8.3 -> 5.6 ms. */
__attribute__((target("avx2"))) static inline void add_lanes8(double *lanes, __m256 v) {
  _mm256_storeu_pd(lanes, _mm256_add_pd(_mm256_loadu_pd(lanes), _mm256_cvtps_pd(_mm256_castps256_ps128(v))));
  _mm256_storeu_pd(lanes + 4, _mm256_add_pd(_mm256_loadu_pd(lanes + 4), _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1))));
}
__attribute__((target("avx2"))) static inline double sum8_pd(__m256 v) {
  double l[8] = {0};
  add_lanes8(l, v);
  return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}
typedef struct {
  const float *dy, *x, *ym;
  const uint16_t *bits;
  int recompute;
  __m256 s, t;
} bn_gseg8;
__attribute__((target("avx2"))) static inline bn_gseg8 gseg8_at(const bn_im_job *ij, long off, int ch) {
  const bn_job *j = ij->j;
  const int rc = ij->ss != NULL;
  const int bits = j->ymask && !rc && j->bits;
  const bn_gseg8 g = {j->dy + off, j->x + off, j->ymask && !rc && !bits ? j->ymask + off : NULL,
                      bits ? j->bits + off / j->hw * ((j->hw + 15) / 16) : NULL, rc,
                      rc ? _mm256_set1_ps(ij->ss[2 * ch]) : _mm256_setzero_ps(),
                      rc ? _mm256_set1_ps(ij->ss[2 * ch + 1]) : _mm256_setzero_ps()};
  return g;
}
/* Lanes mk (lm: as a lane mask) of the segment from i: the (masked) gradient, and x in *vx. */
__attribute__((target("avx2"))) static inline __m256 gseg8_load(const bn_gseg8 *sg, long i, unsigned mk, __m256i lm, __m256 *vx) {
  const int full = mk == 0xFF;
  const __m256 g = full ? _mm256_loadu_ps(sg->dy + i) : _mm256_maskload_ps(sg->dy + i, lm);
  *vx = full ? _mm256_loadu_ps(sg->x + i) : _mm256_maskload_ps(sg->x + i, lm);
  __m256 v;
  if (sg->bits) return _mm256_and_ps(g, _mm256_castsi256_ps(lanes8((unsigned)(sg->bits[i / 16] >> (i & 8)) & mk)));
  if (sg->recompute) v = _mm256_add_ps(_mm256_mul_ps(*vx, sg->s), sg->t);
  else if (sg->ym) v = full ? _mm256_loadu_ps(sg->ym + i) : _mm256_maskload_ps(sg->ym + i, lm);
  else return g;
  return _mm256_and_ps(g, _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_NLE_UQ));
}

__attribute__((target("avx2,fma"))) static void bn_im_sums_task8(void *ctx, int tid, int nt) {
  (void)nt;
  bn_im_job *ij = ctx;
  const bn_job *j = ij->j;
  const long hw = j->hw;
  const unsigned tail = (1u << (hw & 7)) - 1;
  const __m256i tl = lanes8(tail);
  const __m256 zero = _mm256_setzero_ps();
  const int by_lanes = hw <= BN_LANES_HW;
  double *lanes = by_lanes ? lanes_scratch(16L * j->c) : NULL; /* [channel][stat][8] */
  pool_cursor cur = pool_cursor_at(&ij->items, tid);
  for (;;) {
    const int blk = (int)pool_ranges_next(&ij->items, &cur);
    if (blk < 0) break;
    long b0, b1;
    double *part = bn_sums_block(ij, blk, &b0, &b1, lanes, 16 * (size_t)j->c);
    for (long bi = b0; bi < b1; bi++)
      for (int ch = 0; ch < j->c; ch++) {
        const long b = ij->items.desc ? b0 + b1 - 1 - bi : bi;
        const long off = ((long)b * j->c + ch) * hw;
        __m256 a = zero, q = zero;
        if (ij->shift) {
          const __m256 sv = _mm256_set1_ps(ij->shift[ch]);
          for (long i = 0; i < hw; i += 8) {
            const int full = hw - i >= 8;
            const __m256 xv = full ? _mm256_loadu_ps(j->x + off + i) : _mm256_maskload_ps(j->x + off + i, tl);
            const __m256 d = full ? _mm256_sub_ps(xv, sv) : _mm256_and_ps(_mm256_sub_ps(xv, sv), _mm256_castsi256_ps(tl));
            a = _mm256_add_ps(a, d);
            q = _mm256_fmadd_ps(d, d, q);
          }
        } else {
          const bn_gseg8 sg = gseg8_at(ij, off, ch);
          const __m256 vmu = _mm256_set1_ps(j->cmean[ch]);
          float *gb = j->gb ? j->gb + off : NULL;
          for (long i = 0; i < hw; i += 8) {
            const unsigned mk = hw - i >= 8 ? 0xFF : tail;
            const __m256i lm = mk == 0xFF ? tl : lanes8(mk);
            __m256 vx;
            const __m256 g = gseg8_load(&sg, i, mk, lm, &vx);
            if (gb) {
              if (mk == 0xFF) _mm256_storeu_ps(gb + i, g);
              else _mm256_maskstore_ps(gb + i, lm, g);
            }
            a = _mm256_add_ps(a, g);
            q = _mm256_fmadd_ps(g, _mm256_sub_ps(vx, vmu), q);
          }
        }
        if (by_lanes) {
          add_lanes8(lanes + 16L * ch, a);
          add_lanes8(lanes + 16L * ch + 8, q);
        } else {
          part[2 * ch] += sum8_pd(a);
          part[2 * ch + 1] += sum8_pd(q);
        }
      }
    if (by_lanes)
      for (int ch = 0; ch < j->c; ch++) {
        const double *l = lanes + 16L * ch;
        part[2 * ch] = ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
        part[2 * ch + 1] = ((l[8] + l[9]) + (l[10] + l[11])) + ((l[12] + l[13]) + (l[14] + l[15]));
      }
  }
}

__attribute__((target("avx2,fma"))) static void bn_im_apply_task8(void *ctx, int tid, int nt) {
  bn_im_job *ij = ctx;
  const bn_job *j = ij->j;
  const long hw = j->hw;
  const unsigned tail = (1u << (hw & 7)) - 1;
  const __m256i tl = lanes8(tail);
  const __m256 zero = _mm256_setzero_ps();
  long lo, hi;
  pool_split((long)j->n * j->c, tid, nt, 1, &lo, &hi);
  for (long sg = lo; sg < hi; sg++) {
    const int ch = (int)(sg % j->c);
    const long off = sg * hw;
    if (j->y) {
      const __m256 vs = _mm256_set1_ps(ij->k[2 * ch]), vt = _mm256_set1_ps(ij->k[2 * ch + 1]);
      uint16_t *bits = j->bits_out ? j->bits_out + sg * ((hw + 15) / 16) : NULL;
      unsigned word = 0;
      for (long i = 0; i < hw; i += 8) {
        const int full = hw - i >= 8;
        __m256 v = _mm256_add_ps(_mm256_mul_ps(full ? _mm256_loadu_ps(j->x + off + i) : _mm256_maskload_ps(j->x + off + i, tl), vs), vt);
        if (j->residual) v = _mm256_add_ps(v, full ? _mm256_loadu_ps(j->residual + off + i) : _mm256_maskload_ps(j->residual + off + i, tl));
        if (bits) { /* the relu's mask as bits, as gseg8_load and the AVX-512 passes read them */
          word |= ((unsigned)_mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_NLE_UQ)) & (full ? 0xFFu : tail)) << (i & 8);
          if ((i & 8) || i + 8 >= hw) {
            bits[i / 16] = (uint16_t)word;
            word = 0;
          }
        }
        if (j->relu) v = _mm256_max_ps(zero, v); /* NaN stays NaN: max returns its second operand */
        if (full) _mm256_storeu_ps(j->y + off + i, v);
        else _mm256_maskstore_ps(j->y + off + i, tl, v);
      }
      continue;
    }
    const bn_gseg8 sg8 = gseg8_at(ij, off, ch);
    const __m256 v1 = _mm256_set1_ps(ij->k[3 * ch]), v2 = _mm256_set1_ps(ij->k[3 * ch + 1]), v3 = _mm256_set1_ps(ij->k[3 * ch + 2]);
    const __m256 vmu = _mm256_set1_ps(j->cmean[ch]);
    for (long i = 0; i < hw; i += 8) {
      const unsigned mk = hw - i >= 8 ? 0xFF : tail;
      __m256 vx;
      const __m256 g = gseg8_load(&sg8, i, mk, tl, &vx);
      const __m256 r = _mm256_fmadd_ps(v1, g, _mm256_fmadd_ps(v2, _mm256_sub_ps(vx, vmu), v3));
      if (mk == 0xFF) _mm256_storeu_ps(j->dx + off + i, r);
      else _mm256_maskstore_ps(j->dx + off + i, tl, r);
    }
  }
}

static int bn_desc(void) {
  static int off = -1;
  return !env_zero("RESNET_BN_DESC", &off);
}
/* Whether a batch norm's tensor is larger than a core's L2: the descending sums pass and the relu
 * bits (bn_train) save memory traffic only then; below it they cost (ResNet-18's 1-4 MB batch norms
 * at batch 64, steps alternating with a build without either: 4-18 % slower). */
static int bn_beyond_l2(const bn_job *j) { return (long)j->n * j->c * j->hw * (long)sizeof(float) > l2_bytes(); }
/* Runs the sums task over the image blocks, then adds the blocks' sums in order into sum[ch][2]. */
static void bn_im_sums(bn_im_job *ij, double *sum) {
  static _Thread_local double *part;
  static _Thread_local long cap;
  const bn_job *j = ij->j;
  ij->blocks = j->n < BN_BLOCKS ? j->n : BN_BLOCKS;
  if (cap < (long)ij->blocks * j->c * 2) {
    free(part);
    cap = (long)ij->blocks * j->c * 2;
    part = malloc(sizeof(double) * (size_t)cap);
    if (!part) abort();
  }
  ij->part = part;
  pool_ranges_init(&ij->items, ij->blocks, 1, pool_threads());
  ij->items.desc = bn_desc() && bn_beyond_l2(j);
  const pool_fn task = ops_lanes() == 16 ? bn_im_sums_task : bn_im_sums_task8;
  if ((long)j->n * j->c * j->hw < PAR_MIN) task(ij, 0, 1);
  else pool_run_dynamic(task, ij, pool_threads());
  for (long i = 0; i < 2L * j->c; i++) sum[i] = 0.0;
  for (int blk = 0; blk < ij->blocks; blk++)
    for (long i = 0; i < 2L * j->c; i++) sum[i] += part[(long)blk * j->c * 2 + i];
}
static void bn_im_apply(bn_im_job *ij) {
  const pool_fn task = ops_lanes() == 16 ? bn_im_apply_task : bn_im_apply_task8;
  if ((long)ij->j->n * ij->j->c * ij->j->hw < PAR_MIN) task(ij, 0, 1);
  else pool_run(task, ij);
}

static void bn_train_im(bn_job *j) {
  const int c = j->c;
  const double m = (double)j->n * j->hw;
  double *sum = malloc(sizeof(double) * 2 * (size_t)c);
  float *shift = malloc(sizeof(float) * (size_t)c), *k = malloc(sizeof(float) * 2 * (size_t)c);
  if (!sum || !shift || !k) abort();
  for (int ch = 0; ch < c; ch++) shift[ch] = j->x[(long)ch * j->hw];
  bn_im_job ij = {.j = j, .shift = shift, .k = k};
  bn_im_sums(&ij, sum);
  for (int ch = 0; ch < c; ch++) {
    const double d = sum[2 * ch] / m, var = fmax(sum[2 * ch + 1] / m - d * d, 0.0);
    const float mu = (float)(shift[ch] + d), inv = (float)(1.0 / sqrt(var + j->eps));
    j->mean[ch] = mu;
    j->invstd[ch] = inv;
    j->var_u[ch] = m > 1 ? (float)(var * m / (m - 1)) : NAN;
    bn_scale_shift(j, ch, mu, inv, k + 2 * ch, k + 2 * ch + 1);
  }
  if (j->y) bn_im_apply(&ij);
  free(sum);
  free(shift);
  free(k);
}

static void bn_backward_im(bn_job *j) {
  const int c = j->c;
  double *sum = malloc(sizeof(double) * 2 * (size_t)c);
  float *k = malloc(sizeof(float) * 3 * (size_t)c);
  if (!sum || !k) abort();
  float *ss = NULL;
  if (j->relu_from_x && j->training) {
    /* the relu's input recomputed from x: two streams a pass instead of three (128 x 16 x 28 x 28,
     * hot: 591 -> 390 us; a ResNet-20 step's batch-norm backwards 9.5 -> 7.4 ms) */
    ss = malloc(sizeof(float) * 2 * (size_t)c);
    if (!ss) abort();
    for (int ch = 0; ch < c; ch++) bn_scale_shift(j, ch, j->cmean[ch], j->cinvstd[ch], ss + 2 * ch, ss + 2 * ch + 1);
  }
  bn_im_job ij = {.j = j, .k = k, .ss = ss};
  bn_im_sums(&ij, sum);
  for (int ch = 0; ch < c; ch++) bn_bwd_coeffs(j, ch, sum[2 * ch], sum[2 * ch + 1], (double)j->n * j->hw, k + 3 * ch, k + 3 * ch + 1, k + 3 * ch + 2);
  if (j->gb) { /* the sums pass wrote the masked gradient: the elementwise pass reads it, one stream */
    j->dy = j->gb;
    j->ymask = NULL;
  }
  bn_im_apply(&ij);
  free(sum);
  free(k);
  free(ss);
}
#endif

/* ---- batch norm on small maps (hw < 16): ResNet-18 on 32x32 inputs ends on 4- and 1-pixel maps,
 * where a channel is a few floats per image, a whole row of channels apart; the per-channel loops
 * then cost a call, a horizontal reduction and a cache line per image and float (0.3-0.6 ms for a
 * 64 x 512 x 1 x 1 batch). Here each thread takes a range of channels, which is one contiguous
 * segment of every image's row, and sums columns over the images (double, vectorised), then
 * reduces each channel's hw columns. Same arithmetic as the channel loops up to summation order. */

/* per-thread scratch of n doubles / floats, kept */
static double *scratch_d(int which, long n) {
  static _Thread_local double *p[3];
  static _Thread_local long cap[3];
  if (cap[which] < n) {
    free(p[which]);
    p[which] = malloc(sizeof(double) * (size_t)n);
    if (!p[which]) abort();
    cap[which] = n;
  }
  return p[which];
}

/* d where the relu's output y is positive (or NaN), else 0: y <= 0 ? 0 : d, by bits. */
static inline float relu_mask(float d, float y) {
  uint32_t u;
  memcpy(&u, &d, sizeof u);
  u &= (uint32_t)0 - (uint32_t) !(y <= 0.0f);
  memcpy(&d, &u, sizeof d);
  return d;
}
MV static void col_sum(double *restrict s, const float *x, long len) {
  for (long i = 0; i < len; i++) s[i] += x[i];
}
MV static void col_sum_sq_dev(double *restrict s, const float *x, const double *mu, long len) {
  for (long i = 0; i < len; i++) {
    const float d = x[i] - (float)mu[i];
    s[i] += (double)(d * d);
  }
}
MV static void col_scale_shift(float *y, const float *x, const float *r, const double *scale, const double *shift, long len,
                               int relu) {
  for (long i = 0; i < len; i++) {
    float v = x[i] * (float)scale[i] + (float)shift[i];
    if (r) v = v + r[i];
    y[i] = relu ? (v > 0.0f ? v : (v != v ? v : 0.0f)) : v;
  }
}
MV static void col_dot_dev(double *restrict sa, double *restrict sb, const float *dy, const float *ym, const float *x,
                           const double *mu, long len) {
  /* one loop per case, the mask as bits: a select that GCC would not if-convert here (float and
   * double mixed) kept these loops scalar (ResNet-18's 64 x 256 x 2 x 2 backward 316 -> 60 us on
   * one thread) */
  if (ym)
    for (long i = 0; i < len; i++) {
      const float g = relu_mask(dy[i], ym[i]);
      sa[i] += g;
      sb[i] += (double)g * (x[i] - (float)mu[i]);
    }
  else
    for (long i = 0; i < len; i++) {
      sa[i] += dy[i];
      sb[i] += (double)dy[i] * (x[i] - (float)mu[i]);
    }
}
MV static void col_bwd_apply(float *dx, const float *dy, const float *ym, const float *x, const double *mu, const double *k,
                             long len) {
  /* k: k1, k2, k3 per column, 3 * len */
  if (ym)
    for (long i = 0; i < len; i++) {
      const float g = relu_mask(dy[i], ym[i]);
      dx[i] = (float)k[i] * g + (float)k[len + i] * (x[i] - (float)mu[i]) + (float)k[2 * len + i];
    }
  else
    for (long i = 0; i < len; i++) dx[i] = (float)k[i] * dy[i] + (float)k[len + i] * (x[i] - (float)mu[i]) + (float)k[2 * len + i];
}

static void bn_train_small_task(void *ctx, int tid, int nt) {
  bn_job *j = ctx;
  long lo, hi;
  pool_split(j->c, tid, nt, 1, &lo, &hi);
  if (hi <= lo) return;
  const long hw = j->hw, k0 = lo * hw, len = (hi - lo) * hw, row = (long)j->c * hw, m = (long)j->n * hw;
  double *s = scratch_d(0, len), *mu = scratch_d(1, len), *sc = scratch_d(2, 2 * len);
  for (long i = 0; i < len; i++) s[i] = 0;
  for (int b = 0; b < j->n; b++) col_sum(s, j->x + b * row + k0, len);
  for (long ch = lo; ch < hi; ch++) {
    double t = 0;
    for (long q = 0; q < hw; q++) t += s[(ch - lo) * hw + q];
    const float mf = (float)(t / m);
    for (long q = 0; q < hw; q++) mu[(ch - lo) * hw + q] = mf;
  }
  for (long i = 0; i < len; i++) s[i] = 0;
  for (int b = 0; b < j->n; b++) col_sum_sq_dev(s, j->x + b * row + k0, mu, len);
  for (long ch = lo; ch < hi; ch++) {
    double ss = 0;
    for (long q = 0; q < hw; q++) ss += s[(ch - lo) * hw + q];
    const float mf = (float)mu[(ch - lo) * hw], inv = (float)(1.0 / sqrt(ss / m + j->eps));
    j->mean[ch] = mf;
    j->invstd[ch] = inv;
    j->var_u[ch] = m > 1 ? (float)(ss / (m - 1)) : NAN;
    float scale, shift;
    bn_scale_shift(j, ch, mf, inv, &scale, &shift);
    for (long q = 0; q < hw; q++) {
      sc[(ch - lo) * hw + q] = scale;
      sc[len + (ch - lo) * hw + q] = shift;
    }
  }
  for (int b = 0; b < j->n && j->y; b++)
    col_scale_shift(j->y + b * row + k0, j->x + b * row + k0, j->residual ? j->residual + b * row + k0 : NULL, sc, sc + len,
                    len, j->relu);
}

static void bn_backward_small_task(void *ctx, int tid, int nt) {
  bn_job *j = ctx;
  long lo, hi;
  pool_split(j->c, tid, nt, 1, &lo, &hi);
  if (hi <= lo) return;
  const long hw = j->hw, k0 = lo * hw, len = (hi - lo) * hw, row = (long)j->c * hw;
  const double m = (double)j->n * hw;
  double *s = scratch_d(0, 2 * len), *mu = scratch_d(1, len), *k = scratch_d(2, 3 * len);
  for (long i = 0; i < 2 * len; i++) s[i] = 0;
  for (long ch = lo; ch < hi; ch++)
    for (long q = 0; q < hw; q++) mu[(ch - lo) * hw + q] = j->cmean[ch];
  for (int b = 0; b < j->n; b++)
    col_dot_dev(s, s + len, j->dy + b * row + k0, j->ymask ? j->ymask + b * row + k0 : NULL, j->x + b * row + k0, mu, len);
  for (long ch = lo; ch < hi; ch++) {
    double sdy = 0, sdyx = 0;
    for (long q = 0; q < hw; q++) {
      sdy += s[(ch - lo) * hw + q];
      sdyx += s[len + (ch - lo) * hw + q];
    }
    float k1, k2, k3;
    bn_bwd_coeffs(j, ch, sdy, sdyx, m, &k1, &k2, &k3);
    for (long q = 0; q < hw; q++) {
      k[(ch - lo) * hw + q] = k1;
      k[len + (ch - lo) * hw + q] = k2;
      k[2 * len + (ch - lo) * hw + q] = k3;
    }
  }
  for (int b = 0; b < j->n; b++)
    col_bwd_apply(j->dx + b * row + k0, j->dy + b * row + k0, j->ymask ? j->ymask + b * row + k0 : NULL, j->x + b * row + k0, mu, k, len);
}

#define BN_SMALL_HW 16 /* maps below this many pixels take the column-sum paths */

static void run_channels(pool_fn fn, bn_job *j) {
  long total = (long)j->n * j->c * j->hw;
  if (total < PAR_MIN) fn(j, 0, 1);
  else pool_run_n(fn, j, j->c);
}

typedef struct {
  float *dst;
  const float *x, *s, *t;
  int c;
  long hw, segs;
} relu_made_job;
static void relu_made_task(void *ctx, int part, int parts) {
  const relu_made_job *j = ctx;
  long lo, hi;
  pool_split(j->segs, part, parts, 1, &lo, &hi);
  for (long sg = lo; sg < hi; sg++) {
    const float s = j->s[sg % j->c], t = j->t[sg % j->c];
    const float *x = j->x + sg * j->hw;
    float *d = j->dst + sg * j->hw;
    for (long i = 0; i < j->hw; i++) {
      const float v = x[i] * s + t;
      d[i] = v > 0.0f || v != v ? v : 0.0f;
    }
  }
}
float *bn_relu_made(const float *x, const float *scale, const float *shift, int n, int c, long hw) {
  const long segs = (long)n * c;
  float *d = malloc(sizeof(float) * (size_t)(segs * hw > 0 ? segs * hw : 1));
  if (!d) abort();
  relu_made_job j = {d, x, scale, shift, c, hw, segs};
  pool_run_n(relu_made_task, &j, segs * hw < PAR_MIN ? 1 : pool_threads());
  return d;
}

void bn_stats(float *mean, float *invstd, float *var_unbiased, float *scale, float *shift, const float *x,
              const float *gamma, const float *beta, int n, int c, long hw, float eps) {
  bn_job j = {.mean = mean, .invstd = invstd, .var_u = var_unbiased, .x = x, .gamma = gamma, .beta = beta, .n = n,
              .c = c, .hw = hw, .eps = eps, .scale_out = scale, .shift_out = shift};
  if (hw < BN_SMALL_HW && !getenv("RESNET_BN_NO_SMALL")) run_channels(bn_train_small_task, &j);
#if defined(__x86_64__)
  else if (ops_lanes()) bn_train_im(&j);
#endif
  else run_channels(bn_train_task, &j);
}

int bn_train(float *y, float *mean, float *invstd, float *var_unbiased, const float *x, const float *gamma,
             const float *beta, int n, int c, long hw, float eps, int relu, const float *residual, uint16_t *relu_bits) {
  bn_job j = {.y = y, .mean = mean, .invstd = invstd, .var_u = var_unbiased, .x = x, .gamma = gamma, .beta = beta,
              .n = n, .c = c, .hw = hw, .eps = eps, .relu = relu, .residual = residual};
  if (hw < BN_SMALL_HW && !getenv("RESNET_BN_NO_SMALL")) {
    run_channels(bn_train_small_task, &j);
    return 0;
  }
#if defined(__x86_64__)
  if (ops_lanes()) {
    j.bits_out = relu && bn_beyond_l2(&j) ? relu_bits : NULL;
    bn_train_im(&j);
    return j.bits_out != NULL;
  }
#endif
  run_channels(bn_train_task, &j);
  return 0;
}

void bn_eval(float *y, const float *x, const float *rm, const float *rv, const float *gamma, const float *beta, int n,
             int c, long hw, float eps, int relu) {
  bn_job j = {.y = y, .x = x, .rm = rm, .rv = rv, .gamma = gamma, .beta = beta, .n = n, .c = c, .hw = hw, .eps = eps,
              .relu = relu};
  run_channels(bn_eval_task, &j);
}

void bn_backward(float *dx, float *dgamma, float *dbeta, const float *dy, const float *x, const float *mean,
                 const float *invstd, const float *gamma, int training, int n, int c, long hw, const float *relu_y,
                 int relu_from_x, const float *beta, float *masked_out, const uint16_t *relu_bits) {
  const int made_y = !relu_y && relu_from_x == 2; /* a fused relu whose output was never stored */
  if (!relu_y && !made_y) relu_from_x = 0;          /* no relu */
  bn_job j = {.dx = dx, .dgamma = dgamma, .dbeta = dbeta, .dy = dy, .x = x, .cmean = mean, .cinvstd = invstd,
              .gamma = gamma, .training = training, .n = n, .c = c, .hw = hw, .ymask = relu_y,
              .relu_from_x = relu_from_x && !getenv("RESNET_BN_READ_MASK"), .beta = beta,
              .gb = relu_y && !relu_from_x ? masked_out : NULL, .bits = relu_y ? relu_bits : NULL};
  if (masked_out && !j.gb) abort(); /* the addon checks: masked_out only with relu_y, read */
  /* the path: small maps by column sums, else AVX-512 image by image, else channel by channel */
  const int small = hw < BN_SMALL_HW && !getenv("RESNET_BN_NO_SMALL");
#if defined(__x86_64__)
  const int im = !small && ops_lanes();
#else
  const int im = 0;
#endif
  float *made = NULL;
  if (made_y && !(im && j.relu_from_x && training)) {
    /* the relu's output was never stored and this path reads it: made here, as the forward's bn_stats
     * scale and shift give it */
    float *st = malloc(sizeof(float) * 2 * (size_t)c);
    if (!st) abort();
    for (int ch = 0; ch < c; ch++) bn_scale_shift(&j, ch, mean[ch], invstd[ch], st + ch, st + c + ch);
    made = bn_relu_made(x, st, st + c, n, c, hw);
    free(st);
    j.ymask = made;
    j.relu_from_x = 0;
  }
  /* the image-by-image path writes the masked gradient in its sums pass; the others mask first, in
   * a pass of their own, and go on from the masked gradient */
  if (j.gb && !im) {
    relu_bwd(j.gb, dy, relu_y, (long)n * c * hw);
    j.dy = j.gb;
    j.ymask = NULL;
    j.gb = NULL;
  }
  if (small) run_channels(bn_backward_small_task, &j);
#if defined(__x86_64__)
  else if (im) bn_backward_im(&j);
#endif
  else run_channels(bn_backward_task, &j);
  free(made);
}

/* ---- element-wise ------------------------------------------------------------------------- */

MV void relu_range(float *y, const float *x, long n) {
  for (long i = 0; i < n; i++) {
    float v = x[i];
    y[i] = v > 0.0f ? v : (v != v ? v : 0.0f);
  }
}
MV void relu_bwd_range(float *dx, const float *dy, const float *y, long n) {
  for (long i = 0; i < n; i++) {
    float d = dy[i]; /* loaded unconditionally so the select vectorises */
    dx[i] = y[i] <= 0.0f ? 0.0f : d;
  }
}
MV void add_range(float *y, const float *a, const float *b, long n) {
  for (long i = 0; i < n; i++) y[i] = a[i] + b[i];
}
MV void add_relu_range(float *y, const float *a, const float *b, long n) {
  for (long i = 0; i < n; i++) {
    float v = a[i] + b[i];
    y[i] = v > 0.0f ? v : (v != v ? v : 0.0f);
  }
}

typedef struct {
  int op;
  float *y;
  const float *a, *b, *c;
  long n;
} ew_job;

static void ew_task(void *ctx, int tid, int nt) {
  ew_job *j = ctx;
  long lo, hi;
  pool_split(j->n, tid, nt, 16, &lo, &hi);
  long len = hi - lo;
  if (len <= 0) return;
  switch (j->op) {
    case 0: relu_range(j->y + lo, j->a + lo, len); break;
    case 1: relu_bwd_range(j->y + lo, j->a + lo, j->b + lo, len); break;
    case 2: add_range(j->y + lo, j->a + lo, j->b + lo, len); break;
    case 3: add_relu_range(j->y + lo, j->a + lo, j->b + lo, len); break;
  }
}

static void ew(int op, float *y, const float *a, const float *b, long n) {
  ew_job j = {op, y, a, b, NULL, n};
  if (n < PAR_MIN) ew_task(&j, 0, 1);
  else pool_run(ew_task, &j);
}

void relu_fwd(float *y, const float *x, long n) { ew(0, y, x, NULL, n); }

typedef struct {
  float *y, *x;
  int n, cin, h, w, cout, stride, adjoint;
} zp_job;

#if defined(__x86_64__)
/* Stride 2 on AVX-512, a plane at a time. Adjoint: each even row of x is the y row's values in the
 * even lanes (one zero-masked permute per 16 floats), each odd row zeros, every float written once
 * (the scalar loop cleared the plane first, then scattered); forward: each y row the even lanes of
 * two vectors of an even x row (one two-source permute per 16 outputs). ResNet-20's shortcuts at
 * batch 128 (16 -> 32 on 28x28, 32 -> 64 on 14x14), caches flushed, medians of 40 calls against the
 * scalar loops: forward -6 to -21 %, adjoint -17 to -27 %. */
__attribute__((target("avx512f"))) static void zp_adjoint_s2(float *xp, const float *yp, int h, int w) {
  const int ow = (w + 1) / 2;
  const __m512i half = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
  for (int iy = 0; iy < h; iy++) {
    float *xr = xp + (long)iy * w;
    const float *yr = yp + (long)(iy / 2) * ow;
    for (int x0 = 0; x0 < w; x0 += 16) {
      const int nx = w - x0 < 16 ? w - x0 : 16, ny = (nx + 1) / 2;
      __m512 v = _mm512_setzero_ps();
      if (!(iy & 1)) v = _mm512_maskz_permutexvar_ps((__mmask16)0x5555, half, _mm512_maskz_loadu_ps((__mmask16)((1u << ny) - 1), yr + x0 / 2));
      _mm512_mask_storeu_ps(xr + x0, (__mmask16)((1u << nx) - 1), v);
    }
  }
}
__attribute__((target("avx512f"))) static void zp_forward_s2(float *yp, const float *xp, int h, int w) {
  const int oh = (h + 1) / 2, ow = (w + 1) / 2;
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  for (int oy = 0; oy < oh; oy++) {
    const float *xr = xp + (long)(2 * oy) * w;
    float *yr = yp + (long)oy * ow;
    for (int o0 = 0; o0 < ow; o0 += 16) {
      const int nx = w - 2 * o0, no = ow - o0 < 16 ? ow - o0 : 16;
      const __mmask16 m0 = nx >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nx) - 1);
      const __mmask16 m1 = nx >= 32 ? (__mmask16)0xFFFF : nx > 16 ? (__mmask16)((1u << (nx - 16)) - 1) : 0;
      const __m512 a = _mm512_maskz_loadu_ps(m0, xr + 2 * o0), b = _mm512_maskz_loadu_ps(m1, xr + 2 * o0 + 16);
      _mm512_mask_storeu_ps(yr + o0, (__mmask16)((1u << no) - 1), _mm512_permutex2var_ps(a, even, b));
    }
  }
}
#endif

/* Items: output planes (b, co) forward, input planes (b, ci) adjoint. */
static void zp_task(void *ctx, int tid, int nt) {
  zp_job *j = ctx;
  const int s = j->stride, oh = (j->h + s - 1) / s, ow = (j->w + s - 1) / s, front = (j->cout - j->cin) / 2;
  const long plane = (long)oh * ow, in = (long)j->h * j->w;
#if defined(__x86_64__)
  const int s2 = s == 2 && has_avx512();
#else
  const int s2 = 0;
#endif
  long lo, hi;
  pool_split((long)j->n * (j->adjoint ? j->cin : j->cout), tid, nt, 1, &lo, &hi);
  for (long it = lo; it < hi; it++) {
    if (j->adjoint) {
      const long b = it / j->cin, c = it % j->cin;
      float *xp = j->x + it * in;
      const float *yp = j->y + (b * j->cout + c + front) * plane;
#if defined(__x86_64__)
      if (s2) {
        zp_adjoint_s2(xp, yp, j->h, j->w);
        continue;
      }
#endif
      if (s != 1) memset(xp, 0, sizeof(float) * in);
      for (int oy = 0; oy < oh; oy++)
        for (int ox = 0; ox < ow; ox++) xp[(long)oy * s * j->w + (long)ox * s] = yp[(long)oy * ow + ox];
    } else {
      const long b = it / j->cout, c = it % j->cout - front;
      float *yp = j->y + it * plane;
      if (c < 0 || c >= j->cin) {
        memset(yp, 0, sizeof(float) * plane);
        continue;
      }
      const float *xp = j->x + (b * j->cin + c) * in;
#if defined(__x86_64__)
      if (s2) {
        zp_forward_s2(yp, xp, j->h, j->w);
        continue;
      }
#endif
      for (int oy = 0; oy < oh; oy++)
        for (int ox = 0; ox < ow; ox++) yp[(long)oy * ow + ox] = xp[(long)oy * s * j->w + (long)ox * s];
    }
  }
}

void zero_pad_subsample(float *y, float *x, int n, int cin, int h, int w, int cout, int stride, int adjoint) {
  zp_job j = {y, x, n, cin, h, w, cout, stride, adjoint};
  const long elems = (long)n * cout * ((h + stride - 1) / stride) * ((w + stride - 1) / stride);
  if (elems < PAR_MIN) zp_task(&j, 0, 1);
  else pool_run(zp_task, &j);
}
void relu_bwd(float *dx, const float *dy, const float *y, long n) { ew(1, dx, dy, y, n); }
void add_fwd(float *y, const float *a, const float *b, long n) { ew(2, y, a, b, n); }
void add_relu_fwd(float *y, const float *a, const float *b, long n) { ew(3, y, a, b, n); }

/* ---- pooling ------------------------------------------------------------------------------ */

#if defined(__x86_64__)
/* Outputs [ox0, ox0 + cnt) (cnt <= 16) of row oy whose windows lie inside the map along x: one lane
 * per output, gathers per tap, the same selection as the scalar loop (3-wide stride-2 windows take
 * maxpool_argmax_k3s2). */
__attribute__((target("avx512f"))) static void maxpool_argmax16(float *yr, int32_t *ar, const float *xp, const pool_p *p,
                                                                int ox0, int cnt, int by, int ky0, int ky1) {
  const __mmask16 m = (__mmask16)(cnt >= 16 ? 0xFFFFu : (1u << cnt) - 1);
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const __m512i bx = _mm512_add_epi32(_mm512_mullo_epi32(_mm512_add_epi32(lane, _mm512_set1_epi32(ox0)), _mm512_set1_epi32(p->sw)),
                                      _mm512_set1_epi32(-p->pw));
  __m512i bi = _mm512_add_epi32(bx, _mm512_set1_epi32((by + ky0 * p->dh) * p->w));
  __m512 best = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, bi, xp, 4);
  for (int ky = ky0; ky < ky1; ky++) {
    const __m512i rowi = _mm512_add_epi32(bx, _mm512_set1_epi32((by + ky * p->dh) * p->w));
    for (int kx = 0; kx < p->kw; kx++) {
      const __m512i idx = _mm512_add_epi32(rowi, _mm512_set1_epi32(kx * p->dw));
      const __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, xp, 4);
      const __mmask16 take = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
      best = _mm512_mask_mov_ps(best, take, v);
      bi = _mm512_mask_mov_epi32(bi, take, idx);
    }
  }
  _mm512_mask_storeu_ps(yr + ox0, m, best);
  _mm512_mask_storeu_epi32(ar + ox0, m, bi);
}
#endif

#if defined(__x86_64__)
/* Outputs [o, o + cnt) (cnt <= 16) of row oy of a 3-wide, stride-2 window along x (ResNet-18's pool
 * after the stem), borders included: the taps of a row from masked loads (positions outside the row
 * read as -inf, never taken) and even/odd permutes, each lane's index starting at its window's first
 * tap inside the map; the same selection as the scalar loop (the first maximum in window order, a NaN
 * taken). On 16x16 maps (8 outputs a row) the column outside maxpool_argmax16's interior took a
 * scalar loop per row and the interior a gather (64 x 64 x 16 x 16: 0.80 ms). */
__attribute__((target("avx512f"))) static void maxpool_argmax_k3s2(float *yr, int32_t *ar, const float *xp, const pool_p *p,
                                                                   int o, int cnt, int by, int ky0, int ky1) {
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  const __m512 ninf = _mm512_set1_ps(-INFINITY);
  const int start = 2 * o - p->pw; /* the row position of lane 0's first tap */
  /* positions start + i, i in [0, 34), that lie in the row and in some window: bits of i */
  const int lo = start < 0 ? -start : 0, hi0 = p->w - start, need = 2 * cnt + 1;
  const int hi = hi0 < need ? hi0 : need;
  const uint64_t valid = hi > lo ? (((uint64_t)1 << hi) - 1) & ~(((uint64_t)1 << lo) - 1) : 0;
  const __mmask16 ma0 = (__mmask16)valid, ma1 = (__mmask16)(valid >> 16);
  const __mmask16 mb0 = (__mmask16)(valid >> 2), mb1 = (__mmask16)(valid >> 18);
  const __mmask16 m = (__mmask16)(cnt >= 16 ? 0xFFFFu : (1u << cnt) - 1);
  const __m512i bx = _mm512_add_epi32(_mm512_slli_epi32(lane, 1), _mm512_set1_epi32(start));
  __m512 best = ninf;
  __m512i bi = _mm512_add_epi32(_mm512_max_epi32(bx, _mm512_setzero_si512()), _mm512_set1_epi32((by + ky0 * p->dh) * p->w));
  for (int ky = ky0; ky < ky1; ky++) {
    const long row = (long)(by + ky * p->dh) * p->w;
    const float *r = xp + row + start;
    const __m512 a0 = _mm512_mask_loadu_ps(ninf, ma0, r), a1 = _mm512_mask_loadu_ps(ninf, ma1, r + 16);
    const __m512 b0 = _mm512_mask_loadu_ps(ninf, mb0, r + 2), b1 = _mm512_mask_loadu_ps(ninf, mb1, r + 18);
    const __m512 tap[3] = {_mm512_permutex2var_ps(a0, ev, a1), _mm512_permutex2var_ps(a0, od, a1), _mm512_permutex2var_ps(b0, ev, b1)};
    const __m512i rowi = _mm512_add_epi32(bx, _mm512_set1_epi32((int)row));
    for (int kx = 0; kx < 3; kx++) {
      const __mmask16 take = _mm512_cmp_ps_mask(tap[kx], best, _CMP_GT_OQ) | _mm512_cmp_ps_mask(tap[kx], tap[kx], _CMP_UNORD_Q);
      best = _mm512_mask_mov_ps(best, take, tap[kx]);
      bi = _mm512_mask_mov_epi32(bi, take, _mm512_add_epi32(rowi, _mm512_set1_epi32(kx)));
    }
  }
  _mm512_mask_storeu_ps(yr + o, m, best);
  _mm512_mask_storeu_epi32(ar + o, m, bi);
}

/* Running maximum that keeps a NaN once it has seen one: max_ps returns its second operand when
 * either is NaN, so a NaN in acc is put back afterwards. */
__attribute__((target("avx512f"))) static inline __m512 nanmax512(__m512 acc, __m512 v) {
  return _mm512_mask_mov_ps(_mm512_max_ps(acc, v), _mm512_cmp_ps_mask(acc, acc, _CMP_UNORD_Q), acc);
}
/* One plane without argmax for the ResNet stem's pool (3 taps wide, stride 2 along x, no dilation):
 * per 16 outputs, the valid input rows are max-reduced in registers (32 + 32 floats at the window
 * starts and 2 further on), then even/odd lanes are separated with permutes: output ox is the max
 * of input columns 2ox - pw + {0, 1, 2}. The separable scalar path spent ~1.9 ms on the 64x112x112
 * stem output. Columns whose window crosses the border take the scalar loop. */
__attribute__((target("avx512f"))) static void maxpool_plane_k3s2(float *yp, const float *xp, const pool_p *p) {
  const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  int ox0 = 0, ox1 = p->ow;
  while (ox0 < p->ow && ox0 * 2 - p->pw < 0) ox0++;
  while (ox1 > ox0 && (ox1 - 1) * 2 - p->pw + 2 >= p->w) ox1--;
  for (int oy = 0; oy < p->oh; oy++) {
    int by = oy * p->sh - p->ph, ky0 = 0, ky1 = p->kh;
    while (ky0 < ky1 && by + ky0 * p->dh < 0) ky0++;
    while (ky1 > ky0 && by + (ky1 - 1) * p->dh >= p->h) ky1--;
    float *yr = yp + (long)oy * p->ow;
    for (int ox = 0; ox < p->ow; ox++) {
      if (ox == ox0 && ox1 > ox0 && ky0 < ky1) {
        for (int o = ox0; o < ox1; o += 16) {
          const int cnt = ox1 - o < 16 ? ox1 - o : 16;
          /* A: base[0, 2cnt), B: base[2, 2cnt + 1) (masked lanes are never read from memory) */
          const unsigned na = 2 * cnt, nb = 2 * cnt - 1;
          const __mmask16 ma0 = (__mmask16)(na >= 16 ? 0xFFFFu : (1u << na) - 1), ma1 = (__mmask16)(na >= 32 ? 0xFFFFu : na > 16 ? (1u << (na - 16)) - 1 : 0);
          const __mmask16 mb0 = (__mmask16)(nb >= 16 ? 0xFFFFu : (1u << nb) - 1), mb1 = (__mmask16)(nb > 16 ? (1u << (nb - 16)) - 1 : 0);
          __m512 a0 = _mm512_set1_ps(-INFINITY), a1 = a0, b0 = a0, b1 = a0;
          for (int ky = ky0; ky < ky1; ky++) {
            const float *base = xp + (long)(by + ky * p->dh) * p->w + o * 2 - p->pw;
            a0 = nanmax512(a0, _mm512_maskz_loadu_ps(ma0, base));
            a1 = nanmax512(a1, _mm512_maskz_loadu_ps(ma1, base + 16));
            b0 = nanmax512(b0, _mm512_maskz_loadu_ps(mb0, base + 2));
            b1 = nanmax512(b1, _mm512_maskz_loadu_ps(mb1, base + 18));
          }
          __m512 r = nanmax512(_mm512_permutex2var_ps(a0, ev, a1), _mm512_permutex2var_ps(a0, od, a1));
          r = nanmax512(r, _mm512_permutex2var_ps(b0, ev, b1));
          _mm512_mask_storeu_ps(yr + o, (__mmask16)(cnt >= 16 ? 0xFFFFu : (1u << cnt) - 1), r);
        }
        ox = ox1 - 1;
        continue;
      }
      float best = -INFINITY;
      for (int ky = ky0; ky < ky1; ky++)
        for (int kx = 0; kx < 3; kx++) {
          const int ix = ox * 2 - p->pw + kx;
          if (ix < 0 || ix >= p->w) continue;
          const float v = xp[(long)(by + ky * p->dh) * p->w + ix];
          best = (v > best || v != v) ? v : best;
        }
      yr[ox] = best;
    }
  }
}
#endif

#if defined(__x86_64__)
/* Row oy's outputs [ox0, ox1), whose windows lie inside the map along x, over the taps ky in
 * [ky0, ky1) (by: the window's first row), 8 at a time with AVX2 for CPUs without AVX-512: gathers of
 * each tap's 8 inputs, maxpool_plane_argmax's selects as masks (the same values and indices). The
 * scalar loop, a chain of dependent selects per window, took 4.5 ms for ResNet-18's 64 x 64 x 16 x 16
 * batch (the AVX-512 loops: 0.5-0.8, this one 1.0). */
__attribute__((target("avx2"))) static void maxpool_argmax_row8(float *yr, int32_t *ar, const float *xp, const pool_p *p, int ox0,
                                                                int ox1, int by, int ky0, int ky1) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int o = ox0; o < ox1; o += 8) {
    const int cnt = ox1 - o < 8 ? ox1 - o : 8;
    const __m256i live = lanes8((1u << cnt) - 1);
    const __m256i step = _mm256_mullo_epi32(_mm256_add_epi32(lane, _mm256_set1_epi32(o)), _mm256_set1_epi32(p->sw));
    __m256 best = _mm256_setzero_ps();
    __m256i bi = _mm256_setzero_si256();
    for (int ky = ky0; ky < ky1; ky++)
      for (int kx = 0; kx < p->kw; kx++) {
        const __m256i idx = _mm256_add_epi32(step, _mm256_set1_epi32((by + ky * p->dh) * p->w - p->pw + kx * p->dw));
        const __m256 v = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), xp, idx, _mm256_castsi256_ps(live), 4);
        if (ky == ky0 && kx == 0) {
          best = v;
          bi = idx;
          continue;
        }
        const __m256 take = _mm256_or_ps(_mm256_cmp_ps(v, best, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        best = _mm256_blendv_ps(best, v, take);
        bi = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(bi), _mm256_castsi256_ps(idx), take));
      }
    _mm256_maskstore_ps(yr + o, live, best);
    _mm256_maskstore_epi32(ar + o, live, bi);
  }
}
#endif

/* One plane with argmax (training): the first maximum in window order, NaN wins (as PyTorch). */
static void maxpool_plane_argmax(float *yp, int32_t *ap, const float *xp, const pool_p *p) {
  /* [vx0, vx1): outputs whose windows lie inside the map along x (the vector path's columns) */
  int vx0 = 0, vx1 = p->ow;
  while (vx0 < p->ow && vx0 * p->sw - p->pw < 0) vx0++;
  while (vx1 > vx0 && (vx1 - 1) * p->sw - p->pw + (p->kw - 1) * p->dw >= p->w) vx1--;
#if defined(__x86_64__)
  /* with padding below 3 every window has a tap inside the row: maxpool_argmax_k3s2's first index */
  const int lanes = ops_lanes();
  const int k3s2 = p->kw == 3 && p->sw == 2 && p->dw == 1 && p->pw < 3 && lanes == 16;
#endif
  for (int oy = 0; oy < p->oh; oy++) {
    /* taps inside the map: ky in [ky0, ky1) (then kx likewise per column), no bounds tests inside */
    int ky0 = 0, ky1 = p->kh, by = oy * p->sh - p->ph;
    while (ky0 < ky1 && by + ky0 * p->dh < 0) ky0++;
    while (ky1 > ky0 && by + (ky1 - 1) * p->dh >= p->h) ky1--;
#if defined(__x86_64__)
    if (k3s2 && ky0 < ky1) {
      for (int o = 0; o < p->ow; o += 16)
        maxpool_argmax_k3s2(yp + (long)oy * p->ow, ap + (long)oy * p->ow, xp, p, o, p->ow - o < 16 ? p->ow - o : 16, by, ky0, ky1);
      continue;
    }
#endif
    for (int ox = 0; ox < p->ow; ox++) {
#if defined(__x86_64__)
      if (lanes && ox == vx0 && ky0 < ky1 && vx1 - vx0 >= 4) {
        if (lanes == 16)
          for (int o = vx0; o < vx1; o += 16)
            maxpool_argmax16(yp + (long)oy * p->ow, ap + (long)oy * p->ow, xp, p, o, vx1 - o < 16 ? vx1 - o : 16, by, ky0, ky1);
        else
          maxpool_argmax_row8(yp + (long)oy * p->ow, ap + (long)oy * p->ow, xp, p, vx0, vx1, by, ky0, ky1);
        ox = vx1 - 1;
        continue;
      }
#endif
      int kx0 = 0, kx1 = p->kw, bx = ox * p->sw - p->pw;
      while (kx0 < kx1 && bx + kx0 * p->dw < 0) kx0++;
      while (kx1 > kx0 && bx + (kx1 - 1) * p->dw >= p->w) kx1--;
      float best = -INFINITY;
      int32_t bi = -1;
      if (ky0 < ky1 && kx0 < kx1) {
        bi = (by + ky0 * p->dh) * p->w + bx + kx0 * p->dw;
        best = xp[bi];
        for (int ky = ky0; ky < ky1; ky++) {
          const int rowi = (by + ky * p->dh) * p->w + bx;
          for (int kx = kx0; kx < kx1; kx++) {
            const int idx = rowi + kx * p->dw;
            const float v = xp[idx];
            /* the first maximum in window order; a NaN wins (as PyTorch); branch-free selects */
            const int take = (v > best) | (v != v);
            best = take ? v : best;
            bi = take ? idx : bi;
          }
        }
      }
      yp[oy * p->ow + ox] = best;
      ap[oy * p->ow + ox] = bi;
    }
  }
}

/* The running maximum that keeps a NaN once it has seen one. */
static inline float nanmax(float acc, float v) { return (v > acc || v != v) ? v : acc; }

/* Max over the valid rows of each window into row[0, w) (contiguous: vectorised). */
MV static void rows_max(float *row, const float *xp, const pool_p *p, int oy) {
  for (int ix = 0; ix < p->w; ix++) row[ix] = -INFINITY;
  for (int ky = 0; ky < p->kh; ky++) {
    int iy = oy * p->sh - p->ph + ky * p->dh;
    if (iy < 0 || iy >= p->h) continue;
    const float *xr = xp + (long)iy * p->w;
    for (int ix = 0; ix < p->w; ix++) row[ix] = nanmax(row[ix], xr[ix]);
  }
}

/* One plane without argmax (inference): the window maximum is separable, rows first. */
MV static void cols_max(float *yr, const float *row, const pool_p *p, int ox0, int ox1) {
  /* interior outputs: every tap inside the row */
  for (int ox = ox0; ox < ox1; ox++) {
    const float *r = row + ox * p->sw - p->pw;
    float best = r[0];
    for (int kx = 1; kx < p->kw; kx++) best = nanmax(best, r[kx * p->dw]);
    yr[ox] = best;
  }
}

static void maxpool_plane(float *yp, const float *xp, const pool_p *p, float *row) {
  /* [ox0, ox1): outputs whose window lies inside the row */
  int ox0 = 0, ox1 = p->ow;
  while (ox0 < p->ow && ox0 * p->sw - p->pw < 0) ox0++;
  while (ox1 > ox0 && (ox1 - 1) * p->sw - p->pw + (p->kw - 1) * p->dw >= p->w) ox1--;
  for (int oy = 0; oy < p->oh; oy++) {
    rows_max(row, xp, p, oy);
    float *yr = yp + (long)oy * p->ow;
    for (int ox = 0; ox < p->ow; ox++) {
      if (ox == ox0 && ox1 > ox0) {
        cols_max(yr, row, p, ox0, ox1);
        ox = ox1 - 1;
        continue;
      }
      float best = -INFINITY;
      for (int kx = 0; kx < p->kw; kx++) {
        int ix = ox * p->sw - p->pw + kx * p->dw;
        if (ix >= 0 && ix < p->w) best = nanmax(best, row[ix]);
      }
      yr[ox] = best;
    }
  }
}

typedef struct {
  float *y;
  int32_t *argmax;
  const float *x;
  const pool_p *p;
} maxpool_job;

static void maxpool_task(void *ctx, int tid, int nt) {
  maxpool_job *j = ctx;
  const pool_p *p = j->p;
  long lo, hi, in = (long)p->h * p->w, out = (long)p->oh * p->ow;
  pool_split((long)p->n * p->c, tid, nt, 1, &lo, &hi);
#if defined(__x86_64__)
  const int k3s2 = !j->argmax && p->kw == 3 && p->sw == 2 && p->dw == 1 && ops_lanes() == 16;
#endif
  float *row = j->argmax ? NULL : malloc(sizeof(float) * (p->w > 0 ? p->w : 1));
  if (!j->argmax && !row) abort();
  for (long pl = lo; pl < hi; pl++) {
    if (j->argmax) maxpool_plane_argmax(j->y + pl * out, j->argmax + pl * out, j->x + pl * in, p);
#if defined(__x86_64__)
    else if (k3s2) maxpool_plane_k3s2(j->y + pl * out, j->x + pl * in, p);
#endif
    else maxpool_plane(j->y + pl * out, j->x + pl * in, p, row);
  }
  free(row);
}

void maxpool_fwd(float *y, int32_t *argmax, const float *x, const pool_p *p) {
  maxpool_job j = {y, argmax, x, p};
  long planes = (long)p->n * p->c;
  if (planes * p->oh * p->ow * p->kh * p->kw < PAR_MIN || planes < 2) maxpool_task(&j, 0, 1);
  else pool_run_n(maxpool_task, &j, planes < 1 << 30 ? (int)planes : 1 << 30);
}

/* ---- blocked (NCHW16c) pooling for the inference plan: [n][c/16][h][w][16], c a multiple of 16 ---- */
/* The taps of output (oy, ox) inside the map: BODY runs with `v` at the tap's 16-channel vector. */
#define FOR_BLK_TAPS(p, xb, oy, ox, BODY)                                                                            \
  for (int ky = 0; ky < (p)->kh; ky++) {                                                                             \
    const int iy = (oy) * (p)->sh - (p)->ph + ky * (p)->dh;                                                          \
    if (iy < 0 || iy >= (p)->h) continue;                                                                            \
    for (int kx = 0; kx < (p)->kw; kx++) {                                                                           \
      const int ix = (ox) * (p)->sw - (p)->pw + kx * (p)->dw;                                                        \
      if (ix < 0 || ix >= (p)->w) continue;                                                                          \
      const float *v = (xb) + ((long)(iy + CONV_BLK_BORDER) * ((p)->w + 2 * CONV_BLK_BORDER) + ix + CONV_BLK_BORDER) * 16; \
      BODY                                                                                                           \
    }                                                                                                                \
  }

/* One output row of one 16-channel block: every tap is a 16-lane vector (portable loops). */
static void maxpool_blk_row(float *yr, const float *xb, const pool_p *p, int oy) {
  for (int ox = 0; ox < p->ow; ox++) {
    float best[16];
    for (int l = 0; l < 16; l++) best[l] = -INFINITY;
    FOR_BLK_TAPS(p, xb, oy, ox, for (int l = 0; l < 16; l++) best[l] = (v[l] > best[l] || v[l] != v[l]) ? v[l] : best[l];)
    for (int l = 0; l < 16; l++) yr[(long)ox * 16 + l] = best[l];
  }
}

#if defined(__x86_64__)
/* The same row with explicit 16-lane vectors (GCC leaves the loop above scalar: 3 ms on the stem's
 * 64x112x112 output, 0.08 ms here). */
__attribute__((target("avx512f"))) static void maxpool_blk_row512(float *yr, const float *xb, const pool_p *p, int oy) {
  /* the window's rows inside the map, and the outputs whose columns all are: those take the taps
   * without a test each (ResNet's stem pool, 3x3/2 on 112x112, is every output but the first row and
   * column; 64 channels at batch 8, two threads, hot: median 1.03 -> 0.53 ms, batch 1 0.107 -> 0.051;
   * ONNX Runtime's MaxPool took 0.54 ms at batch 8 in scripts/bench/layers.mjs, this one 1.62) */
  const int by = oy * p->sh - p->ph, W2 = p->w + 2 * CONV_BLK_BORDER;
  int ky0 = 0, ky1 = p->kh;
  while (ky0 < ky1 && by + ky0 * p->dh < 0) ky0++;
  while (ky1 > ky0 && by + (ky1 - 1) * p->dh >= p->h) ky1--;
  int ox0 = 0, ox1 = p->ow;
  while (ox0 < ox1 && ox0 * p->sw - p->pw < 0) ox0++;
  while (ox1 > ox0 && (ox1 - 1) * p->sw - p->pw + (p->kw - 1) * p->dw >= p->w) ox1--;
  for (int ox = 0; ox < p->ow; ox++) {
    if (ox == ox0 && ox1 > ox0 && ky1 > ky0) {
      const long rstep = (long)p->dh * W2 * 16;
      const float *r0 = xb + ((long)(by + ky0 * p->dh + CONV_BLK_BORDER) * W2 + CONV_BLK_BORDER - p->pw) * 16;
      if (p->kw == 3 && p->dw == 1) {
        for (; ox < ox1; ox++) {
          const float *v = r0 + (long)ox * p->sw * 16;
          __m512 best = nanmax512(nanmax512(_mm512_loadu_ps(v), _mm512_loadu_ps(v + 16)), _mm512_loadu_ps(v + 32));
          for (int ky = ky0 + 1; ky < ky1; ky++) {
            v += rstep;
            best = nanmax512(nanmax512(nanmax512(best, _mm512_loadu_ps(v)), _mm512_loadu_ps(v + 16)), _mm512_loadu_ps(v + 32));
          }
          _mm512_storeu_ps(yr + (long)ox * 16, best);
        }
      } else {
        for (; ox < ox1; ox++) {
          __m512 best = _mm512_set1_ps(-INFINITY);
          const float *v = r0 + (long)ox * p->sw * 16;
          for (int ky = ky0; ky < ky1; ky++, v += rstep)
            for (int kx = 0; kx < p->kw; kx++) best = nanmax512(best, _mm512_loadu_ps(v + (long)kx * p->dw * 16));
          _mm512_storeu_ps(yr + (long)ox * 16, best);
        }
      }
      if (ox >= p->ow) break;
    }
    __m512 best = _mm512_set1_ps(-INFINITY);
    FOR_BLK_TAPS(p, xb, oy, ox, best = nanmax512(best, _mm512_loadu_ps(v));)
    _mm512_storeu_ps(yr + (long)ox * 16, best);
  }
}
#endif

typedef struct {
  float *y;
  const float *x;
  const pool_p *p;
} maxpool_blk_job;

static void maxpool_blk_task(void *ctx, int tid, int nt) {
  const maxpool_blk_job *j = ctx;
  const pool_p *p = j->p;
  long lo, hi;
  pool_split((long)p->n * (p->c / 16) * p->oh, tid, nt, 1, &lo, &hi);
  const int B = CONV_BLK_BORDER;
  for (long r = lo; r < hi; r++) {
    const long blk = r / p->oh;
    const int oy = (int)(r % p->oh);
    float *yr = j->y + ((blk * (p->oh + 2 * B) + oy + B) * (p->ow + 2 * B) + B) * 16;
    const float *xb = j->x + blk * (p->h + 2 * B) * (p->w + 2 * B) * 16;
#if defined(__x86_64__)
    if (has_avx512()) {
      maxpool_blk_row512(yr, xb, p, oy);
      continue;
    }
#endif
    maxpool_blk_row(yr, xb, p, oy);
  }
}

void maxpool_fwd_blocked(float *y, const float *x, const pool_p *p) {
  maxpool_blk_job j = {y, x, p};
  const long rows = (long)p->n * (p->c / 16) * p->oh;
  if (rows * p->ow * 16 * p->kh * p->kw < PAR_MIN || rows < 2) maxpool_blk_task(&j, 0, 1);
  else pool_run(maxpool_blk_task, &j);
}

/* y[b][c] = mean of channel c of image b over its hw pixels (x blocked). */
MV void avgpool_global_blocked(float *y, const float *x, int n, int c, int h, int w) {
  const int B = CONV_BLK_BORDER;
  for (long blk = 0; blk < (long)n * (c / 16); blk++) {
    double acc[16] = {0};
    for (int r = 0; r < h; r++) {
      const float *xr = x + ((blk * (h + 2 * B) + r + B) * (w + 2 * B) + B) * 16;
      for (long i = 0; i < w; i++)
        for (int l = 0; l < 16; l++) acc[l] += xr[i * 16 + l];
    }
    for (int l = 0; l < 16; l++) y[blk * 16 + l] = (float)(acc[l] / ((double)h * w));
  }
}

typedef struct {
  float *dx;
  const float *dy;
  const int32_t *argmax;
  const pool_p *p;
} maxpool_bwd_job;

/* Planes [lo, hi) of a part: zeroed, then each output's gradient added at its argmax, in order. */
static void maxpool_bwd_task(void *ctx, int part, int parts) {
  const maxpool_bwd_job *j = ctx;
  const pool_p *p = j->p;
  const long in = (long)p->h * p->w, out = (long)p->oh * p->ow;
  long lo, hi;
  pool_split((long)p->n * p->c, part, parts, 1, &lo, &hi);
  if (hi <= lo) return;
  memset(j->dx + lo * in, 0, sizeof(float) * (size_t)((hi - lo) * in));
  for (long pl = lo; pl < hi; pl++) {
    float *dxp = j->dx + pl * in;
    const float *dyp = j->dy + pl * out;
    const int32_t *ap = j->argmax + pl * out;
    for (long i = 0; i < out; i++)
      if (ap[i] >= 0) dxp[ap[i]] += dyp[i];
  }
}

/* By planes on the pool (it ran on one thread: ResNet-18's stem pool on 32x32 inputs, 64 x 64 x 16 x
 * 16, took as long on two threads as on one, 0.47 ms a step). */
void maxpool_bwd(float *dx, const float *dy, const int32_t *argmax, const pool_p *p) {
  maxpool_bwd_job j = {dx, dy, argmax, p};
  const long planes = (long)p->n * p->c;
  if (planes * p->h * p->w < PAR_MIN || planes < 2) maxpool_bwd_task(&j, 0, 1);
  else pool_run_n(maxpool_bwd_task, &j, planes < 1 << 30 ? (int)planes : 1 << 30);
}

/* The global average pool's planes [part of parts]: forward (y, x) vectorised sums, backward (dx, dy)
 * each plane filled with its share; planes are independent, so the threads' split changes nothing. */
typedef struct {
  float *out;
  const float *in;
  long planes, hw;
  int backward;
} gap_job;
static void gap_task(void *ctx, int part, int parts) {
  const gap_job *j = ctx;
  long lo, hi;
  pool_split(j->planes, part, parts, 1, &lo, &hi);
  for (long pl = lo; pl < hi; pl++) {
    if (j->backward) {
      const float g = j->in[pl] / (float)j->hw;
      float *dxp = j->out + pl * j->hw;
      for (long i = 0; i < j->hw; i++) dxp[i] = g;
    } else {
      double s;
      sum_range(j->in + pl * j->hw, j->hw, &s);
      j->out[pl] = (float)(s / j->hw);
    }
  }
}
static void global_avgpool(float *out, const float *in, long planes, long hw, int backward) {
  gap_job j = {out, in, planes, hw, backward};
  pool_run_n(gap_task, &j, planes * hw < PAR_MIN ? 1 : pool_threads());
}

void adaptive_avgpool_fwd(float *y, const float *x, int n, int c, int h, int w, int oh, int ow) {
  if (oh == 1 && ow == 1) { /* global average (every ResNet's head): vectorised sums, on all threads */
    const long hw = (long)h * w;
    if (hw == 1) { /* 1x1 maps (ResNet-18 on 32x32 inputs): a copy, not a call per plane (0.2 ms) */
      memcpy(y, x, sizeof(float) * (size_t)n * c);
      return;
    }
    global_avgpool(y, x, (long)n * c, hw, 0);
    return;
  }
  for (long pl = 0; pl < (long)n * c; pl++) {
    const float *xp = x + pl * h * w;
    for (int oy = 0; oy < oh; oy++) {
      int y0 = (oy * h) / oh, y1 = ((oy + 1) * h + oh - 1) / oh;
      for (int ox = 0; ox < ow; ox++) {
        int x0 = (ox * w) / ow, x1 = ((ox + 1) * w + ow - 1) / ow;
        double s = 0;
        for (int iy = y0; iy < y1; iy++)
          for (int ix = x0; ix < x1; ix++) s += xp[iy * w + ix];
        y[pl * oh * ow + oy * ow + ox] = (float)(s / ((y1 - y0) * (x1 - x0)));
      }
    }
  }
}

void adaptive_avgpool_bwd(float *dx, const float *dy, int n, int c, int h, int w, int oh, int ow) {
  if (oh == 1 && ow == 1) { /* global average: each plane filled with its share, one contiguous store run */
    global_avgpool(dx, dy, (long)n * c, (long)h * w, 1);
    return;
  }
  memset(dx, 0, sizeof(float) * (long)n * c * h * w);
  for (long pl = 0; pl < (long)n * c; pl++) {
    float *dxp = dx + pl * h * w;
    for (int oy = 0; oy < oh; oy++) {
      int y0 = (oy * h) / oh, y1 = ((oy + 1) * h + oh - 1) / oh;
      for (int ox = 0; ox < ow; ox++) {
        int x0 = (ox * w) / ow, x1 = ((ox + 1) * w + ow - 1) / ow;
        float g = dy[pl * oh * ow + oy * ow + ox] / ((y1 - y0) * (x1 - x0));
        for (int iy = y0; iy < y1; iy++)
          for (int ix = x0; ix < x1; ix++) dxp[iy * w + ix] += g;
      }
    }
  }
}

/* ---- log-softmax, SGD --------------------------------------------------------------------- */

void log_softmax_fwd(float *y, const float *x, int rows, int cols) {
  for (int r = 0; r < rows; r++) {
    const float *xr = x + (long)r * cols;
    float *yr = y + (long)r * cols;
    float mx = -INFINITY;
    for (int j = 0; j < cols; j++) mx = xr[j] > mx ? xr[j] : mx;
    double s = 0;
    for (int j = 0; j < cols; j++) s += exp((double)xr[j] - mx);
    float lse = (float)(mx + log(s));
    for (int j = 0; j < cols; j++) yr[j] = xr[j] - lse;
  }
}

void log_softmax_bwd(float *dx, const float *dy, const float *y, int rows, int cols) {
  for (int r = 0; r < rows; r++) {
    const float *dyr = dy + (long)r * cols, *yr = y + (long)r * cols;
    float *dxr = dx + (long)r * cols;
    double s = 0;
    for (int j = 0; j < cols; j++) s += dyr[j];
    for (int j = 0; j < cols; j++) dxr[j] = (float)(dyr[j] - exp((double)yr[j]) * s);
  }
}

MV void sgd_range(float *param, const float *grad, float *buf, long n, float lr, float momentum, float dampening,
                  float wd, int nesterov, int first) {
  for (long i = 0; i < n; i++) {
    float d = grad[i];
    if (wd != 0.0f) d += wd * param[i];
    if (momentum != 0.0f && buf) {
      float v = first ? d : momentum * buf[i] + (1.0f - dampening) * d;
      buf[i] = v;
      d = nesterov ? d + momentum * v : v;
    }
    param[i] -= lr * d;
  }
}

void crop_kernel_rows(float *dst, const float *src, long r0, long r1, int skh, int skw, int ky0, int kx0, int dkh, int dkw) {
  const long sk = (long)skh * skw, dk = (long)dkh * dkw;
  const float *s = src + (long)ky0 * skw + kx0;
  if (dk == 1) { /* a centre tap: one strided read a kernel (the loop GCC keeps tight; generic: 3-4x slower) */
    for (long r = r0; r < r1; r++) dst[r] = s[r * sk];
    return;
  }
  for (long r = r0; r < r1; r++)
    for (int i = 0; i < dkh; i++)
      for (int jj = 0; jj < dkw; jj++) dst[r * dk + i * dkw + jj] = s[r * sk + (long)i * skw + jj];
}

typedef struct {
  float *param, *buf;
  const float *grad;
  long n;
  float lr, momentum, dampening, wd;
  int nesterov, first;
  const sgd_crop *crop;
} sgd_job;

/* Rows [r0, r1) of the updated kernels cut to the window (as conv2d_crop_kernels). */
static void sgd_crop_rows(const sgd_crop *c, const float *param, long r0, long r1) {
  crop_kernel_rows(c->dst, param, r0, r1, c->skh, c->skw, c->ky0, c->kx0, c->dkh, c->dkw);
}

#define SGD_CROP_ROWS 1024 /* kernels updated, then cut, at a time: 36 KB a stream for 3x3 kernels */

static void sgd_task(void *ctx, int tid, int nt) {
  sgd_job *j = ctx;
  long lo, hi;
  if (j->crop) {
    /* by whole kernels, a block at a time: the window is read while the block is in L1 */
    const sgd_crop *c = j->crop;
    const long sk = (long)c->skh * c->skw;
    pool_split(c->rows, tid, nt, 16, &lo, &hi);
    for (long r0 = lo; r0 < hi; r0 += SGD_CROP_ROWS) {
      const long r1 = r0 + SGD_CROP_ROWS < hi ? r0 + SGD_CROP_ROWS : hi;
      sgd_range(j->param + r0 * sk, j->grad + r0 * sk, j->buf ? j->buf + r0 * sk : NULL, (r1 - r0) * sk, j->lr, j->momentum,
                j->dampening, j->wd, j->nesterov, j->first);
      sgd_crop_rows(c, j->param, r0, r1);
    }
    return;
  }
  pool_split(j->n, tid, nt, 16, &lo, &hi);
  if (hi > lo)
    sgd_range(j->param + lo, j->grad + lo, j->buf ? j->buf + lo : NULL, hi - lo, j->lr, j->momentum, j->dampening, j->wd,
              j->nesterov, j->first);
}

/* Elementwise, so split over the threads when large (memory-bound: ResNet-18's 11.7 M parameters,
 * five streams of 47 MB a step, 8.5 -> 5.6 ms on two threads). With `crop` (param holds crop->rows
 * kernels of skh x skw), the updated kernels' window is also written to crop->dst in the same pass:
 * a convolution's live taps (ResNet-18's 512-channel 3x3 kernels on 1x1 maps: their centre taps, 1 MB
 * of 9.4) made while the block just updated is in cache, where a separate cut read the 9.4 MB from
 * memory again (1.5 ms a step for four layers). */
void sgd_step(float *param, const float *grad, float *buf, long n, float lr, float momentum, float dampening,
              float weight_decay, int nesterov, int first_step, const sgd_crop *crop) {
  sgd_job j = {param, buf, grad, n, lr, momentum, dampening, weight_decay, nesterov, first_step, crop};
  if (n < PAR_MIN) sgd_task(&j, 0, 1);
  else pool_run(sgd_task, &j);
}
