/* Small strided maps as one GEMM with (image, output pixel) rows (any ISA).
 *
 * A strided convolution of a small map (ResNet-18's 3x3/2 layers on 32x32 inputs: 8x8 -> 4x4 and
 * 4x4 -> 2x2) has a few output pixels per image: im2col's patch matrix, [(ci, tap)][(image, pixel)],
 * then has rows of 4 or 16 floats per image, written and read (col2im) a few floats at a time, and the
 * gathered GEMM (conv_gather.c) gathers its B panels with AVX-512 gathers and reads its weights by an
 * index per k. Here the patches are pixel-major,
 *   X[(b, op)][(ci, t)] = x[b][ci][tap t's input pixel for op] (0 in the padding),
 * whole rows of cin*kh*kw floats, and the weights are the GEMM's other operand as they are:
 *   forward          Y = X . w^T        (rows (b, op), columns co; transposed into NCHW y with the
 *                                        bias, residual and relu)
 *   backward input   dX = dY . w        (dY: dy transposed to (b, op) rows), added into dx through
 *                                        the taps (the addend first), image by image
 * Zeros of the padding are multiplied (a 3x3/2 pad-1 layer from 4x4 to 2x2: 25 of 36 taps live), but
 * in one GEMM of 256-1024 rows at its full speed. */
#include "conv_internal.h"
#include "gemm.h"
#include "pool.h"
#include <stdlib.h>
#include <string.h>

/* Strided, groups 1, a few output pixels per image (at most 4 for the forward, 16 for the backward
 * input) but rows enough for the GEMM, and a patch matrix of at most 4 M floats (16 MB). Measured
 * against the gathered GEMM, at batch 64 on 2 threads: 128 -> 256 from 4x4 to 2x2, forward 1.19-1.22
 * -> 0.87-0.92 ms, backward input (im2col) 1.26-1.32 -> 0.84-0.95 ms; 64 -> 128 from 8x8 to 4x4,
 * backward input (by phases) 1.03-1.05 -> 0.95-0.97 ms, but forward 0.84 -> 0.94-0.99 ms (the
 * gathered GEMM multiplies no padding: 16 % of im2col's taps there) and the weight gradient
 * 0.99-1.00 -> 1.04-1.35 ms (so it stays with the gathered GEMM's). */
int rows_ok(const conv_p *p, int backward_input) {
  const long P = (long)p->oh * p->ow, K = (long)p->cin * p->kh * p->kw;
  return p->groups == 1 && (p->sh > 1 || p->sw > 1) && p->n >= 1 && P >= 1 && P <= (backward_input ? 16 : 4) &&
         p->n * P >= 64 && p->n * P * K <= (4L << 20) && (long)p->cout * K <= (4L << 20);
}

typedef struct {
  const conv_p *p;
  const int *off; /* off[op * kk + t]: the input pixel (iy * w + ix) of tap t for output pixel op, -1 outside */
  const float *src, *add;
  float *dst;
} rows_job;

int *conv_tap_offsets(const conv_p *p) {
  const int P = p->oh * p->ow, kk = p->kh * p->kw;
  int *off = malloc(sizeof(int) * (size_t)P * kk);
  if (!off) abort();
  for (int op = 0; op < P; op++)
    for (int ky = 0; ky < p->kh; ky++)
      for (int kx = 0; kx < p->kw; kx++) {
        const int iy = (op / p->ow) * p->sh - p->ph + ky * p->dh, ix = (op % p->ow) * p->sw - p->pw + kx * p->dw;
        off[op * kk + ky * p->kw + kx] = iy >= 0 && iy < p->h && ix >= 0 && ix < p->w ? iy * p->w + ix : -1;
      }
  return off;
}

/* Images over the threads: the patch rows of image b. */
static void patches_task(void *ctx, int tid, int n) {
  const rows_job *j = ctx;
  const conv_p *p = j->p;
  const int P = p->oh * p->ow, kk = p->kh * p->kw;
  const long K = (long)p->cin * kk, hw = (long)p->h * p->w;
  long lo, hi;
  pool_split(p->n, tid, n, 1, &lo, &hi);
  for (long b = lo; b < hi; b++)
    for (int op = 0; op < P; op++) {
      const int *o = j->off + (long)op * kk;
      float *d = j->dst + (b * P + op) * K;
      const float *xb = j->src + b * p->cin * hw;
      for (int ci = 0; ci < p->cin; ci++, d += kk) {
        const float *xc = xb + ci * hw;
        for (int t = 0; t < kk; t++) d[t] = o[t] >= 0 ? xc[o[t]] : 0.0f;
      }
    }
}

typedef struct {
  float *dst;
  const float *src, *add, *bias;
  int n, c, relu, to_pixel_major;
  long P;
} transpose_job;

/* Images over the threads: one image's [c][P] <-> [P][c], with the epilogue on the way back. */
static void images_transpose_task(void *ctx, int tid, int nt) {
  const transpose_job *j = ctx;
  const long img = (long)j->c * j->P;
  long lo, hi;
  pool_split(j->n, tid, nt, 1, &lo, &hi);
  for (long b = lo; b < hi; b++) {
    const float *s = j->src + b * img;
    float *d = j->dst + b * img;
    if (j->to_pixel_major) {
      for (int c = 0; c < j->c; c++)
        for (long q = 0; q < j->P; q++) d[q * j->c + c] = s[c * j->P + q];
      continue;
    }
    const float *a = j->add ? j->add + b * img : NULL;
    for (int c = 0; c < j->c; c++) {
      const float bv = j->bias ? j->bias[c] : 0.0f;
      for (long q = 0; q < j->P; q++) {
        float v = s[q * j->c + c] + bv;
        if (a) v += a[c * j->P + q];
        d[c * j->P + q] = j->relu ? (v > 0.0f ? v : (v != v ? v : 0.0f)) : v;
      }
    }
  }
}

void images_transpose(float *dst, const float *src, int n, int c, long P, int to_pixel_major, const float *add,
                      const float *bias, int relu) {
  transpose_job j = {dst, src, add, bias, n, c, relu, to_pixel_major, P};
  pool_run_n(images_transpose_task, &j, (long)n * c * P < (1L << 15) ? 1 : n);
}

/* Images over the threads: dx[b] = addend[b] (or 0), then each patch gradient added into its input
 * pixel, in the order (op, ci, t). */
static void scatter_task(void *ctx, int tid, int n) {
  const rows_job *j = ctx;
  const conv_p *p = j->p;
  const int P = p->oh * p->ow, kk = p->kh * p->kw;
  const long K = (long)p->cin * kk, hw = (long)p->h * p->w, nx = p->cin * hw;
  long lo, hi;
  pool_split(p->n, tid, n, 1, &lo, &hi);
  for (long b = lo; b < hi; b++) {
    float *dxb = j->dst + b * nx;
    if (!j->add) memset(dxb, 0, sizeof(float) * (size_t)nx);
    else if (j->add != j->dst) memcpy(dxb, j->add + b * nx, sizeof(float) * (size_t)nx);
    for (int op = 0; op < P; op++) {
      const int *o = j->off + (long)op * kk;
      const float *s = j->src + (b * P + op) * K;
      for (int ci = 0; ci < p->cin; ci++, s += kk) {
        float *dc = dxb + ci * hw;
        for (int t = 0; t < kk; t++)
          if (o[t] >= 0) dc[o[t]] += s[t];
      }
    }
  }
}

static void run_images(pool_fn fn, rows_job *j) {
  const conv_p *p = j->p;
  const long work = (long)p->n * p->oh * p->ow * p->cin * p->kh * p->kw;
  pool_run_n(fn, j, work < (1L << 15) ? 1 : p->n);
}

static _Thread_local buf_t patch_buf, out_buf;

/* The patch rows of x, in a per-thread buffer that is kept. */
static const float *patches(const float *x, const conv_p *p, const int *off) {
  const long M = (long)p->n * p->oh * p->ow, K = (long)p->cin * p->kh * p->kw;
  float *X = grow(&patch_buf, (size_t)(M * K));
  rows_job j = {p, off, x, NULL, X};
  run_images(patches_task, &j);
  return X;
}

void rows_forward(float *y, const float *x, const float *w, const float *bias, const float *residual, int relu,
                  const conv_p *p) {
  const int M = p->n * p->oh * p->ow, K = p->cin * p->kh * p->kw;
  int *off = conv_tap_offsets(p);
  const float *X = patches(x, p, off);
  float *Y = grow(&out_buf, (size_t)M * p->cout);
  sgemm_ex(0, 1, M, p->cout, K, 1.0f, X, K, w, K, 0.0f, Y, p->cout, NULL, 0);
  images_transpose(y, Y, p->n, p->cout, (long)p->oh * p->ow, 0, residual, bias, relu);
  free(off);
}

void rows_backward_input(float *dx, const float *dy, const float *w, const conv_p *p, const float *addend) {
  const int M = p->n * p->oh * p->ow, K = p->cin * p->kh * p->kw;
  int *off = conv_tap_offsets(p);
  float *dY = grow(&out_buf, (size_t)M * p->cout), *dX = grow(&patch_buf, (size_t)M * K);
  images_transpose(dY, dy, p->n, p->cout, (long)p->oh * p->ow, 1, NULL, NULL, 0);
  sgemm_ex(0, 0, M, K, p->cout, 1.0f, dY, p->cout, w, K, 0.0f, dX, K, NULL, 0);
  rows_job j = {p, off, dX, addend, dx};
  run_images(scatter_task, &j);
  free(off);
}
