/* Tap panels: the forward convolution as the GEMM's micro-kernel over B panels gathered straight
 * from x, for the GEMM paths that are not AVX-512 (the AVX2 kernels; the AVX-512 ones have the
 * gathered GEMM of conv_gather.c).
 *
 * im2col + GEMM writes the K x N patch matrix (K = cin kh kw, N = the chunk's output pixels), and the
 * GEMM then packs it again into its B panels (nr columns, whole K): ResNet-50's 256 channels on 14x14
 * at batch 1 with the AVX2 kernels spent 18 % of its time in that packing and 7 % in im2col, the
 * micro-kernel 56 %. Here each work item is one B panel: nr consecutive output columns (image,
 * pixel), gathered from x into the panel's layout (zeros for the padding), multiplied at once while
 * it is in L1/L2 by the whole-K weight panels (sgemm_panel), the products written through a small
 * buffer into NCHW y with the bias, residual and relu epilogue (few panels with large weights: all
 * panels first, then one blocked GEMM, taps_by_panel). Each output is computed by one thread over
 * the whole K in a fixed order: the bits do not depend on the thread count. */
#include "conv.h" /* l2_bytes */
#include "conv_internal.h"
#include "gemm.h"
#include "pool.h"
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  const conv_p *p;
  const float *x, *Ap, *bias, *residual;
  float *y;
  int relu, nr, K;
  long P, ncols, npanels;
  const int *koff;     /* [K]: the tap's offset in x from its column's (ci 0, iy0, ix0) */
  const int *kdy, *kdx; /* [K]: the tap's row and column offset from the column's iy0, ix0 */
  float *Bp;            /* all panels (the GEMM mode), else NULL */
  pool_ranges items;
} taps_job;

/* Panel pn: B[k][c] for its columns c (those past ncols zero), into bp; *nc: its columns. */
static void taps_gather(const taps_job *j, long pn, float *bp, int *nc) {
  const conv_p *p = j->p;
  const int nr = j->nr, K = j->K;
  const long c0 = pn * nr;
  const int cols = j->ncols - c0 < nr ? (int)(j->ncols - c0) : nr;
  *nc = cols;
  const long HW = (long)p->h * p->w;
  for (int c = 0; c < nr; c++) {
    if (c >= cols) {
      for (int k = 0; k < K; k++) bp[(long)k * nr + c] = 0.0f;
      continue;
    }
    const long col = c0 + c, b = col / j->P, q = col % j->P;
    const int oy = (int)(q / p->ow), ox = (int)(q % p->ow);
    const int iy0 = oy * p->sh - p->ph, ix0 = ox * p->sw - p->pw;
    /* the window's first tap as an offset in x (before x where the window starts in the padding) */
    const long base = b * p->cin * HW + (long)iy0 * p->w + ix0;
    /* the column's window inside the map for every tap: no bounds checks */
    const int inside = iy0 >= 0 && ix0 >= 0 && iy0 + (p->kh - 1) * p->dh < p->h && ix0 + (p->kw - 1) * p->dw < p->w;
    if (inside) {
      const float *xb = j->x + base;
      for (int k = 0; k < K; k++) bp[(long)k * nr + c] = xb[j->koff[k]];
    } else {
      for (int k = 0; k < K; k++) {
        const int iy = iy0 + j->kdy[k], ix = ix0 + j->kdx[k];
        bp[(long)k * nr + c] = iy >= 0 && iy < p->h && ix >= 0 && ix < p->w ? j->x[base + j->koff[k]] : 0.0f;
      }
    }
  }
}

/* Products cb[co][c] (row stride ldc) of the columns [col0, col0 + cols) -> y[b][co][q] with the
 * epilogue, in runs of columns within an image. */
static void taps_store(const taps_job *j, const float *cb, long ldc, long col0, int cols) {
  const conv_p *p = j->p;
  for (int c = 0; c < cols;) {
    const long col = col0 + c, b = col / j->P, q = col % j->P;
    const int run = (int)(j->P - q < cols - c ? j->P - q : cols - c);
    for (int co = 0; co < p->cout; co++) {
      const long o = (b * p->cout + co) * j->P + q;
      const float bv = j->bias ? j->bias[co] : 0.0f;
      const float *src = cb + (long)co * ldc + c;
      float *d = j->y + o;
      const float *r = j->residual ? j->residual + o : NULL;
      for (int i = 0; i < run; i++) {
        float v = src[i] + bv;
        if (r) v += r[i];
        d[i] = j->relu ? (v > 0.0f ? v : (v != v ? v : 0.0f)) : v;
      }
    }
    c += run;
  }
}

static void taps_task(void *ctx, int tid, int nt) {
  (void)nt;
  taps_job *j = ctx;
  const conv_p *p = j->p;
  static _Thread_local buf_t b_buf, c_buf;
  float *bp = grow(&b_buf, (size_t)j->K * j->nr);
  float *cb = grow(&c_buf, (size_t)p->cout * j->nr);
  pool_cursor cur = pool_cursor_at(&j->items, tid);
  for (;;) {
    const long pn = pool_ranges_next(&j->items, &cur);
    if (pn < 0) break;
    int cols;
    taps_gather(j, pn, bp, &cols);
    sgemm_panel(p->cout, cols, j->K, j->Ap, bp, 0.0f, cb, j->nr);
    taps_store(j, cb, j->nr, pn * j->nr, cols);
  }
}

/* Few panels and weights beyond L2: all panels gathered first (into j->Bp, on all threads), then one
 * GEMM with the GEMM's own blocking over both packed operands, which reads the weights once per K
 * block instead of once per panel. */
static void taps_gather_task(void *ctx, int tid, int nt) {
  taps_job *j = ctx;
  long lo, hi;
  pool_split(j->npanels, tid, nt, 1, &lo, &hi);
  for (long pn = lo; pn < hi; pn++) {
    int cols;
    taps_gather(j, pn, j->Bp + pn * j->nr * (long)j->K, &cols);
  }
}

/* Whether taps_forward takes p: the AVX2 GEMM kernels, one group, not 1x1 (a 1x1 stride-1 layer's
 * GEMM reads x as it is). RESNET_TAPS=0 turns it off (measurements). */
int taps_ok(const conv_p *p) {
  static int off = -1;
  if (env_zero("RESNET_TAPS", &off) || strcmp(sgemm_isa(), "avx2") != 0) return 0;
  if (p->groups != 1 || p->n < 1 || p->cin < 1 || p->cout < 1 || (p->kh == 1 && p->kw == 1)) return 0;
  const long K = (long)p->cin * p->kh * p->kw;
  if (K > (1L << 20) || (long)p->n * p->cin * p->h * p->w > (1L << 31) - 1) return 0;
  return 1;
}

/* Whether the panels go one by one through the whole-K weights (each thread at least 4 panels, or
 * the weights within half an L2), else all at once through the blocked GEMM: every panel streams all
 * the weights, which the first panel of each thread reads from memory when the layer runs cold in a
 * network (ResNet-50 at batch 1 with the AVX2 kernels, in whole runs: 512 on 7x7, 4 panels of 9.4
 * MB of weights, 2.78 ms a layer panel by panel, against 1.63 hot in `convbench`). */
static int taps_by_panel(const conv_p *p, long panels) {
  const long K = (long)p->cin * p->kh * p->kw;
  return panels >= 4L * pool_threads() || (long)p->cout * K * (long)sizeof(float) <= l2_bytes() / 2;
}

/* y = conv(x, w) + bias (+ residual: may be y itself, then relu); wp: w packed as sgemm_pack_a packs
 * it (mr = sgemm_mr(cout)), or NULL (packed here). */
void taps_forward(float *y, const float *x, const float *w, const float *wp, const float *bias, const float *residual,
                  int relu, const conv_p *p) {
  static _Thread_local buf_t a_buf, k_buf;
  const int K = p->cin * p->kh * p->kw;
  const float *Ap = wp;
  if (!Ap) {
    float *a = grow(&a_buf, sgemm_packed_a_size(p->cout, K));
    sgemm_pack_a_mt(w, p->cout, K, a);
    Ap = a;
  }
  int *koff = (int *)grow(&k_buf, 3 * (size_t)K), *kdy = koff + K, *kdx = kdy + K;
  const int kk = p->kh * p->kw;
  for (int k = 0; k < K; k++) {
    const int ci = k / kk, t = k % kk;
    kdy[k] = (t / p->kw) * p->dh;
    kdx[k] = (t % p->kw) * p->dw;
    koff[k] = (int)((long)ci * p->h * p->w + (long)kdy[k] * p->w + kdx[k]);
  }
  taps_job j = {.p = p, .x = x, .Ap = Ap, .bias = bias, .residual = residual, .y = y, .relu = relu,
                .nr = sgemm_nr(), .K = K, .P = (long)p->oh * p->ow, .koff = koff, .kdy = kdy, .kdx = kdx};
  j.ncols = (long)p->n * j.P;
  j.npanels = (j.ncols + j.nr - 1) / j.nr;
  const int T = pool_threads();
  if (!taps_by_panel(p, j.npanels)) {
    static _Thread_local buf_t all_buf, out_buf;
    j.Bp = grow(&all_buf, (size_t)j.npanels * j.nr * K);
    pool_run_n(taps_gather_task, &j, (int)(j.npanels < T ? j.npanels : T));
    float *cb = grow(&out_buf, (size_t)p->cout * j.ncols);
    sgemm_papb(p->cout, (int)j.ncols, K, Ap, j.Bp, 0.0f, cb, (int)j.ncols);
    taps_store(&j, cb, j.ncols, 0, (int)j.ncols);
    return;
  }
  const int nthr = j.npanels < T ? (int)j.npanels : T;
  pool_ranges_init(&j.items, j.npanels, 1, nthr);
  pool_run_dynamic(taps_task, &j, nthr);
}
