/* Convolutions of tiny maps as one dense linear layer over the batch (any ISA).
 *
 * On tiny maps (ResNet-18's last stages on 32x32 inputs: 2x2 and 1x1 maps) every output pixel's
 * window covers every input pixel, and the convolution is a matrix product over whole images: with x
 * as [n][Pin*cin] (pixel-major rows: x's NCHW rows [cin][Pin] transposed per image, a copy of 1 % of
 * the product's time) and NCHW y as [n][cout*Pout],
 *   y = x . W'^T,   W'[(co, p)][(q, ci)] = w[co][ci][tap(p, q)]   (0 where no tap joins q to p)
 * with Pin = h*w, Pout = oh*ow. Where (nearly) every pair (p, q) is joined by a tap, W' costs no more
 * multiply-adds than the taps that read inside the map (a 3x3 pad-1 convolution of 2x2 maps: 16 pairs,
 * against 36 taps of which 16 read inside), in one GEMM with the batch as its rows instead of tiny
 * per-image products or a transform pair around them (Winograd F(2x2) on 2x2 maps is a single tile:
 * the same 16 products plus the transforms).
 *   backward input   dx = dy . W'  (pixel-major, transposed back into NCHW dx with the addend)
 *   backward weight  dW' = dy^T . x, folded back: dw[co][ci][t] = sum of the pairs (p, q) of tap t
 * W' is built from w on every call (the weights change every step; 1 M floats, 4 MB, for ResNet-18's
 * 256 channels on 2x2), on all threads. Pixel-major columns make W' rows of whole channel runs: a
 * tap's weights for all ci transposed once per output channel, then copied run by run (with
 * channel-major columns, W' was built and folded element by element: 0.2-0.3 ms a call of 256
 * channels on 2x2, a quarter of the product). The fold adds each tap's pairs in a fixed order, so the
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
  const int *tab;  /* tab[op * Pin + iq] = tap_of(p, op, iq) */
  const int *live; /* the taps some pair uses, in order; nlive of them */
  int nlive, npairs;
  const float *src;
  float *dst;
  const float *add; /* the permutations: an addend of dst (or NULL) */
  int pin, pout;
} dense_job;

/* Output channels of W' over the threads. Where taps serve several pairs (3x3 on 2x2 maps: 9 taps,
 * 16 pairs), wt[t][ci] = w[co][ci][t] first (the taps of co, channels contiguous), and each row
 * (co, op) of W' is, per input pixel q, a copy of wt[tap(op, q)] or zeros; else (1x1 maps, 2x2 -> 1x1)
 * the rows are gathered from w directly. */
static void build_task(void *ctx, int tid, int n) {
  static _Thread_local buf_t tbuf;
  const dense_job *j = ctx;
  const conv_p *p = j->p;
  const int kk = p->kh * p->kw, cin = p->cin, reuse = j->npairs > j->nlive;
  const long K = (long)cin * j->pin;
  float *wt = reuse ? grow(&tbuf, (size_t)kk * cin) : NULL;
  long lo, hi;
  pool_split(p->cout, tid, n, 1, &lo, &hi);
  for (long co = lo; co < hi; co++) {
    const float *s = j->src + co * cin * kk;
    if (reuse)
      for (int ci = 0; ci < cin; ci++)
        for (int l = 0; l < j->nlive; l++) wt[(long)j->live[l] * cin + ci] = s[(long)ci * kk + j->live[l]];
    for (int op = 0; op < j->pout; op++) {
      const int *t = j->tab + (long)op * j->pin;
      float *d = j->dst + (co * j->pout + op) * K;
      for (int q = 0; q < j->pin; q++, d += cin)
        if (t[q] < 0)
          memset(d, 0, sizeof(float) * (size_t)cin);
        else if (reuse)
          memcpy(d, wt + (long)t[q] * cin, sizeof(float) * (size_t)cin);
        else
          for (int ci = 0; ci < cin; ci++) d[ci] = s[(long)ci * kk + t[q]];
    }
  }
}

/* Output channels of dw over the threads. Where taps serve several pairs, acc[t][ci] = the pairs of
 * tap t added in the order (op, q) (whole runs of channels at once), then dw[co][ci][t] = acc[t][ci];
 * else each pair is its tap's gradient, stored straight into dw (zeros for taps no pair uses). */
static void fold_task(void *ctx, int tid, int n) {
  static _Thread_local buf_t abuf;
  const dense_job *j = ctx;
  const conv_p *p = j->p;
  const int kk = p->kh * p->kw, cin = p->cin, reuse = j->npairs > j->nlive;
  const long K = (long)cin * j->pin;
  float *acc = reuse ? grow(&abuf, (size_t)kk * cin) : NULL;
  long lo, hi;
  pool_split(p->cout, tid, n, 1, &lo, &hi);
  for (long co = lo; co < hi; co++) {
    float *d = j->dst + co * cin * kk;
    if (j->nlive < kk) memset(d, 0, sizeof(float) * (size_t)cin * kk);
    if (reuse)
      for (int l = 0; l < j->nlive; l++) memset(acc + (long)j->live[l] * cin, 0, sizeof(float) * (size_t)cin);
    for (int op = 0; op < j->pout; op++) {
      const int *t = j->tab + (long)op * j->pin;
      const float *s = j->src + (co * j->pout + op) * K;
      for (int q = 0; q < j->pin; q++, s += cin) {
        if (t[q] < 0) continue;
        if (reuse) {
          float *a = acc + (long)t[q] * cin;
          for (int ci = 0; ci < cin; ci++) a[ci] += s[ci];
        } else {
          for (int ci = 0; ci < cin; ci++) d[(long)ci * kk + t[q]] = s[ci];
        }
      }
    }
    if (reuse)
      for (int ci = 0; ci < cin; ci++)
        for (int l = 0; l < j->nlive; l++) d[(long)ci * kk + j->live[l]] = acc[(long)j->live[l] * cin + ci];
  }
}

/* Images over the threads: dst[b][q][ci] = src[b][ci][q] (channel-major pixels to pixel-major). */
static void to_pixel_major_task(void *ctx, int tid, int n) {
  const dense_job *j = ctx;
  const int cin = j->p->cin, pin = j->pin;
  const long K = (long)cin * pin;
  long lo, hi;
  pool_split(j->p->n, tid, n, 1, &lo, &hi);
  for (long b = lo; b < hi; b++)
    for (int ci = 0; ci < cin; ci++)
      for (int q = 0; q < pin; q++) j->dst[b * K + (long)q * cin + ci] = j->src[b * K + (long)ci * pin + q];
}

/* The way back, with the addend: dst[b][ci][q] = src[b][q][ci] (+ add[b][ci][q]). */
static void from_pixel_major_task(void *ctx, int tid, int n) {
  const dense_job *j = ctx;
  const int cin = j->p->cin, pin = j->pin;
  const long K = (long)cin * pin;
  long lo, hi;
  pool_split(j->p->n, tid, n, 1, &lo, &hi);
  for (long b = lo; b < hi; b++)
    for (int ci = 0; ci < cin; ci++)
      for (int q = 0; q < pin; q++) {
        const long i = b * K + (long)ci * pin + q;
        const float v = j->src[b * K + (long)q * cin + ci];
        j->dst[i] = j->add ? j->add[i] + v : v;
      }
}

static void run_job(pool_fn fn, const conv_p *p, const float *src, float *dst, const float *add) {
  const int pin = p->h * p->w, pout = p->oh * p->ow;
  const int kk = p->kh * p->kw;
  int *tab = malloc(sizeof(int) * ((size_t)pin * pout + 2 * (size_t)kk));
  if (!tab) abort();
  int *live = tab + (long)pin * pout, *used = live + kk, nlive = 0, npairs = 0;
  memset(used, 0, sizeof(int) * (size_t)kk);
  for (int op = 0; op < pout; op++)
    for (int iq = 0; iq < pin; iq++) {
      const int t = tab[op * pin + iq] = tap_of(p, op, iq);
      if (t >= 0) used[t] = 1, npairs++;
    }
  for (int t = 0; t < kk; t++)
    if (used[t]) live[nlive++] = t;
  dense_job j = {p, tab, live, nlive, npairs, src, dst, add, pin, pout};
  const int per_image = fn == to_pixel_major_task || fn == from_pixel_major_task;
  const long work = per_image ? (long)p->n * p->cin * pin : (long)p->cout * pout * p->cin * pin;
  pool_run_n(fn, &j, work < (1L << 15) ? 1 : per_image ? p->n : p->cout);
  free(tab);
}

/* W' for p from w, in a per-thread buffer that is kept. */
static const float *dense_weights(const float *w, const conv_p *p) {
  static _Thread_local buf_t wbuf;
  float *wd = grow(&wbuf, (size_t)p->cout * p->oh * p->ow * p->cin * p->h * p->w);
  run_job(build_task, p, w, wd, NULL);
  return wd;
}

/* x (or dx) with pixel-major rows, in a per-thread buffer that is kept; x itself for 1-pixel maps. */
static const float *pixel_major(const float *x, const conv_p *p) {
  static _Thread_local buf_t xbuf;
  if (p->h * p->w == 1) return x;
  float *xp = grow(&xbuf, (size_t)p->n * p->cin * p->h * p->w);
  run_job(to_pixel_major_task, p, x, xp, NULL);
  return xp;
}

void dense_forward(float *y, const float *x, const float *w, const float *bias, const float *residual, int relu,
                   const conv_p *p) {
  const int pout = p->oh * p->ow, N = p->cout * pout, K = p->cin * p->h * p->w;
  const long ny = (long)p->n * N;
  const float *wd = dense_weights(w, p), *xp = pixel_major(x, p);
  if (residual && residual != y) memcpy(y, residual, sizeof(float) * (size_t)ny);
  sgemm_ex(0, 1, p->n, N, K, 1.0f, xp, K, wd, K, residual ? 1.0f : 0.0f, y, N, NULL, 0);
  if (bias || relu)
    for (long i = 0; i < ny; i++) {
      const float v = y[i] + (bias ? bias[(i % N) / pout] : 0.0f);
      y[i] = relu ? (v > 0.0f ? v : (v != v ? v : 0.0f)) : v;
    }
}

void dense_backward_input(float *dx, const float *dy, const float *w, const conv_p *p, const float *addend) {
  static _Thread_local buf_t dbuf;
  const int N = p->cout * p->oh * p->ow, K = p->cin * p->h * p->w;
  const float *wd = dense_weights(w, p);
  if (p->h * p->w == 1) {
    if (addend && addend != dx) memcpy(dx, addend, sizeof(float) * (size_t)p->n * K);
    sgemm_ex(0, 0, p->n, K, N, 1.0f, dy, N, wd, K, addend ? 1.0f : 0.0f, dx, K, NULL, 0);
    return;
  }
  float *dxp = grow(&dbuf, (size_t)p->n * K);
  sgemm_ex(0, 0, p->n, K, N, 1.0f, dy, N, wd, K, 0.0f, dxp, K, NULL, 0);
  run_job(from_pixel_major_task, p, dxp, dx, addend);
}

void dense_backward_weight(float *dw, const float *x, const float *dy, const conv_p *p) {
  static _Thread_local buf_t gbuf;
  const int N = p->cout * p->oh * p->ow, K = p->cin * p->h * p->w;
  float *g = grow(&gbuf, (size_t)N * K);
  sgemm_ex(1, 0, N, K, p->n, 1.0f, dy, N, pixel_major(x, p), K, 0.0f, g, K, NULL, 0);
  run_job(fold_task, p, g, dw, NULL);
}
