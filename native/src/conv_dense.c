/* Convolutions of tiny maps as one dense linear layer over the batch (any ISA).
 *
 * On tiny maps (ResNet-18's last stages on 32x32 inputs: 2x2 and 1x1 maps) every output pixel's
 * window covers every input pixel, and the convolution is a matrix product over whole images: NCHW x
 * is [n][cin*Pin] and y is [n][cout*Pout], so
 *   y = x . W'^T,   W'[(co, p)][(ci, q)] = w[co][ci][tap(p, q)]   (0 where no tap joins q to p)
 * with Pin = h*w, Pout = oh*ow. Where (nearly) every pair (p, q) is joined by a tap, W' costs no more
 * multiply-adds than the taps that read inside the map (a 3x3 pad-1 convolution of 2x2 maps: 16 pairs,
 * against 36 taps of which 16 read inside), in one GEMM with the batch as its rows instead of tiny
 * per-image products or a transform pair around them (Winograd F(2x2) on 2x2 maps is a single tile:
 * the same 16 products plus the transforms).
 *   backward input   dx = dy . W'
 *   backward weight  dW' = dy^T . x, folded back: dw[co][ci][t] = sum of the pairs (p, q) of tap t
 * W' is built from w on every call (the weights change every step; 1 M floats, 4 MB, for ResNet-18's
 * 256 channels on 2x2), on all threads. The fold adds each tap's pairs in a fixed order, so the
 * gradient's bits do not depend on the thread count (neither do the GEMM's: each element of C is
 * summed by one thread over the whole K). */
#include "conv_internal.h"
#include "gemm.h"
#include "pool.h"
#include <stdlib.h>
#include <string.h>

#define DENSE_MAX_FLOATS (4L << 20) /* W' at most 16 MB */

/* The tap index ky*kw + kx that joins output pixel op to input pixel iq, -1 if none. */
static int tap_of(const conv_p *p, int op, int iq) {
  const int oy = op / p->ow, ox = op % p->ow, iy = iq / p->w, ix = iq % p->w;
  const int ry = iy - oy * p->sh + p->ph, rx = ix - ox * p->sw + p->pw;
  if (ry < 0 || rx < 0 || ry % p->dh || rx % p->dw) return -1;
  const int ky = ry / p->dh, kx = rx / p->dw;
  return ky < p->kh && kx < p->kw ? ky * p->kw + kx : -1;
}

/* Along one axis: the (output, input) pairs that some tap joins. */
static long live_pairs(int out, int in, int k, int s, int pad, int d) {
  long n = 0;
  for (int o = 0; o < out; o++)
    for (int t = 0; t < k; t++) {
      const long i = (long)o * s - pad + (long)t * d;
      n += i >= 0 && i < in;
    }
  return n;
}

/* Whether W' is (nearly) all live: at least 90 % of its pairs joined by a tap, so that it costs no
 * more than a tenth over the live multiply-adds (a 3x3 pad-1 convolution of 3x3 maps has 49 of 81:
 * measured slower than the direct paths; of 2x2 maps, 16 of 16; of 1x1 maps, 1 of 1, the centre tap). */
int dense_ok(const conv_p *p) {
  const long pin = (long)p->h * p->w, pout = (long)p->oh * p->ow;
  if (p->groups != 1 || p->n < 1 || pout < 1) return 0;
  /* a kernel as large as its unpadded map with one output: w is W' already (conv.c's is_linear) */
  if (p->kh == p->h && p->kw == p->w && p->ph == 0 && p->pw == 0 && pout == 1) return 0;
  if ((long)p->cout * pout * p->cin * pin > DENSE_MAX_FLOATS) return 0;
  const long live =
      live_pairs(p->oh, p->h, p->kh, p->sh, p->ph, p->dh) * live_pairs(p->ow, p->w, p->kw, p->sw, p->pw, p->dw);
  return live * 10 >= pin * pout * 9;
}

typedef struct {
  const conv_p *p;
  const int *tab; /* tab[op * Pin + iq] = tap_of(p, op, iq) */
  const float *src;
  float *dst;
  int pin, pout;
} dense_job;

/* Rows (co, op) of W' over the threads. (Built straight into the GEMM's packed panels instead, with
 * the product transposed so that W' is its A: the same time or slower, the panel stores being strided.) */
static void build_task(void *ctx, int tid, int n) {
  const dense_job *j = ctx;
  const conv_p *p = j->p;
  const int kk = p->kh * p->kw;
  const long K = (long)p->cin * j->pin;
  long lo, hi;
  pool_split((long)p->cout * j->pout, tid, n, 1, &lo, &hi);
  for (long r = lo; r < hi; r++) {
    const int co = (int)(r / j->pout), op = (int)(r % j->pout);
    const int *t = j->tab + (long)op * j->pin;
    float *d = j->dst + r * K;
    for (int ci = 0; ci < p->cin; ci++, d += j->pin) {
      const float *s = j->src + ((long)co * p->cin + ci) * kk;
      for (int q = 0; q < j->pin; q++) d[q] = t[q] >= 0 ? s[t[q]] : 0.0f;
    }
  }
}

/* Output channels of dw over the threads: dw[co] = 0, then each pair of dW' added to its tap, in the
 * order (op, ci, iq). */
static void fold_task(void *ctx, int tid, int n) {
  const dense_job *j = ctx;
  const conv_p *p = j->p;
  const int kk = p->kh * p->kw;
  const long K = (long)p->cin * j->pin;
  long lo, hi;
  pool_split(p->cout, tid, n, 1, &lo, &hi);
  for (long co = lo; co < hi; co++) {
    float *d = j->dst + co * p->cin * kk;
    memset(d, 0, sizeof(float) * (size_t)p->cin * kk);
    for (int op = 0; op < j->pout; op++) {
      const int *t = j->tab + (long)op * j->pin;
      const float *s = j->src + (co * j->pout + op) * K;
      for (int ci = 0; ci < p->cin; ci++, s += j->pin)
        for (int q = 0; q < j->pin; q++)
          if (t[q] >= 0) d[(long)ci * kk + t[q]] += s[q];
    }
  }
}

static void run_job(pool_fn fn, const conv_p *p, const float *src, float *dst) {
  const int pin = p->h * p->w, pout = p->oh * p->ow;
  int *tab = malloc(sizeof(int) * (size_t)pin * pout);
  if (!tab) abort();
  for (int op = 0; op < pout; op++)
    for (int iq = 0; iq < pin; iq++) tab[op * pin + iq] = tap_of(p, op, iq);
  dense_job j = {p, tab, src, dst, pin, pout};
  const long work = (long)p->cout * pout * p->cin * pin;
  pool_run_n(fn, &j, work < (1L << 15) ? 1 : (fn == fold_task ? p->cout : p->cout * pout));
  free(tab);
}

/* W' for p from w, in a per-thread buffer that is kept. */
static const float *dense_weights(const float *w, const conv_p *p) {
  static _Thread_local buf_t wbuf;
  float *wd = grow(&wbuf, (size_t)p->cout * p->oh * p->ow * p->cin * p->h * p->w);
  run_job(build_task, p, w, wd);
  return wd;
}

void dense_forward(float *y, const float *x, const float *w, const float *bias, const float *residual, int relu,
                   const conv_p *p) {
  const int pout = p->oh * p->ow, N = p->cout * pout, K = p->cin * p->h * p->w;
  const long ny = (long)p->n * N;
  const float *wd = dense_weights(w, p);
  if (residual && residual != y) memcpy(y, residual, sizeof(float) * (size_t)ny);
  sgemm_ex(0, 1, p->n, N, K, 1.0f, x, K, wd, K, residual ? 1.0f : 0.0f, y, N, NULL, 0);
  if (bias || relu)
    for (long i = 0; i < ny; i++) {
      const float v = y[i] + (bias ? bias[(i % N) / pout] : 0.0f);
      y[i] = relu ? (v > 0.0f ? v : (v != v ? v : 0.0f)) : v;
    }
}

void dense_backward_input(float *dx, const float *dy, const float *w, const conv_p *p, const float *addend) {
  const int N = p->cout * p->oh * p->ow, K = p->cin * p->h * p->w;
  const float *wd = dense_weights(w, p);
  if (addend && addend != dx) memcpy(dx, addend, sizeof(float) * (size_t)p->n * K);
  sgemm_ex(0, 0, p->n, K, N, 1.0f, dy, N, wd, K, addend ? 1.0f : 0.0f, dx, K, NULL, 0);
}

void dense_backward_weight(float *dw, const float *x, const float *dy, const conv_p *p) {
  static _Thread_local buf_t gbuf;
  const int N = p->cout * p->oh * p->ow, K = p->cin * p->h * p->w;
  float *g = grow(&gbuf, (size_t)N * K);
  sgemm_ex(1, 0, N, K, p->n, 1.0f, dy, N, x, K, 0.0f, g, K, NULL, 0);
  run_job(fold_task, p, g, dw);
}
