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

/* Whether the window from input row iy0, column ix0 lies inside the map for every tap. */
static inline int window_inside(const conv_p *p, int iy0, int ix0) {
  return iy0 >= 0 && ix0 >= 0 && iy0 + (p->kh - 1) * p->dh < p->h && ix0 + (p->kw - 1) * p->dw < p->w;
}

/* The input under a tap (offset koff from the window's first tap at x[base], rows dy and columns dx
 * from it), 0 in the padding. */
static inline float tap_value(const conv_p *p, const float *x, long base, int iy0, int ix0, int koff, int dy, int dx) {
  const int iy = iy0 + dy, ix = ix0 + dx;
  return iy >= 0 && iy < p->h && ix >= 0 && ix < p->w ? x[base + koff] : 0.0f;
}

/* The taps k = (ci, ky, kx) of p, into buf: koff[k] (offset in x from the window's first tap),
 * then kdy[k] and kdx[k] (rows and columns from it), K entries each; returns koff. */
static int *tap_table(const conv_p *p, buf_t *buf) {
  const int K = p->cin * p->kh * p->kw, kk = p->kh * p->kw;
  int *koff = (int *)grow(buf, 3 * (size_t)K), *kdy = koff + K, *kdx = kdy + K;
  for (int k = 0; k < K; k++) {
    const int ci = k / kk, t = k % kk;
    kdy[k] = (t / p->kw) * p->dh;
    kdx[k] = (t % p->kw) * p->dw;
    koff[k] = (int)((long)ci * p->h * p->w + (long)kdy[k] * p->w + kdx[k]);
  }
  return koff;
}

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
    if (window_inside(p, iy0, ix0)) { /* no bounds checks */
      const float *xb = j->x + base;
      for (int k = 0; k < K; k++) bp[(long)k * nr + c] = xb[j->koff[k]];
    } else {
      for (int k = 0; k < K; k++) bp[(long)k * nr + c] = tap_value(p, j->x, base, iy0, ix0, j->koff[k], j->kdy[k], j->kdx[k]);
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

/* Whether the panels go one by one through the whole-K weights (at least 8 panels: 4 a thread on two
 * threads, or the weights within half an L2), else all at once through the blocked GEMM: every panel
 * streams all the weights, which the first panel of each thread reads from memory when the layer runs
 * cold in a network (ResNet-50 at batch 1 with the AVX2 kernels, in whole runs: 512 on 7x7, 4 panels
 * of 9.4 MB of weights, 2.78 ms a layer panel by panel, against 1.63 hot in `convbench`). A fixed
 * count, not one per thread: the two ways sum in different orders, and the bits may not depend on the
 * thread count (with 4 panels a thread the choice had differed between 2 and 4 threads). */
static int taps_by_panel(const conv_p *p, long panels) {
  const long K = (long)p->cin * p->kh * p->kw;
  return panels >= 8 || (long)p->cout * K * (long)sizeof(float) <= l2_bytes() / 2;
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
  const int *koff = tap_table(p, &k_buf), *kdy = koff + K, *kdx = kdy + K;
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

/* ---- the weight gradient -------------------------------------------------------------------------
 * dw[co][k] = sum over columns (image, pixel) of dy[co][col] * X[k][col], X = im2col(x): one GEMM
 * with M = cout, N = K and the columns as its reduction, both operands packed straight from the
 * tensors (dy into the A panels, x's taps into the B panels: 16 taps over all columns each) and
 * multiplied with the GEMM's own blocking (sgemm_papb), written into dw as it is [cout][cin kh kw].
 * im2col + GEMM wrote the patch matrix, then transposed it into the B panels, per chunk of images, and
 * summed the chunks' partial gradients: on maps of a few pixels its rows are a few floats (ResNet-18's
 * 128 channels on 4x4 at batch 64 with the AVX2 kernels: im2col 35 % of the time, its memsets 12 %). */
typedef struct {
  const conv_p *p;
  const float *x, *dy;
  float *Ap, *Bp;
  int K, nr, mr;
  long P, ncols;
  const int *koff, *kdy, *kdx;
} taps_bw_job;

/* A panels of dy: Ap[panel][col][r] = dy[b][panel * mr + r][q], col = b P + q (0 past cout). */
static void taps_bw_pack_a(void *ctx, int tid, int nt) {
  const taps_bw_job *j = ctx;
  const conv_p *p = j->p;
  const int mr = j->mr, panels = (p->cout + mr - 1) / mr;
  long lo, hi;
  pool_split(panels, tid, nt, 1, &lo, &hi);
  for (long pa = lo; pa < hi; pa++) {
    float *a = j->Ap + pa * mr * j->ncols;
    const int co0 = (int)pa * mr, rows = p->cout - co0 < mr ? p->cout - co0 : mr;
    for (int r = 0; r < mr; r++) {
      if (r >= rows) {
        for (long col = 0; col < j->ncols; col++) a[col * mr + r] = 0.0f;
        continue;
      }
      long col = 0;
      for (int b = 0; b < p->n; b++) {
        const float *d = j->dy + ((long)b * p->cout + co0 + r) * j->P;
        for (long q = 0; q < j->P; q++, col++) a[col * mr + r] = d[q];
      }
    }
  }
}

/* B panels of x's taps: Bp[panel][col][c] = X[panel * nr + c][col] (0 in the padding and past K). */
static void taps_bw_pack_b(void *ctx, int tid, int nt) {
  const taps_bw_job *j = ctx;
  const conv_p *p = j->p;
  const int nr = j->nr, panels = (j->K + nr - 1) / nr;
  const long HW = (long)p->h * p->w;
  long lo, hi;
  pool_split(panels, tid, nt, 1, &lo, &hi);
  for (long pk = lo; pk < hi; pk++) {
    float *bp = j->Bp + pk * nr * j->ncols;
    const int k0 = (int)pk * nr, taps = j->K - k0 < nr ? j->K - k0 : nr;
    long col = 0;
    for (int b = 0; b < p->n; b++)
      for (int oy = 0; oy < p->oh; oy++)
        for (int ox = 0; ox < p->ow; ox++, col++) {
          float *d = bp + col * nr;
          const int iy0 = oy * p->sh - p->ph, ix0 = ox * p->sw - p->pw;
          const long base = b * p->cin * HW + (long)iy0 * p->w + ix0;
          if (window_inside(p, iy0, ix0)) {
            const float *xb = j->x + base;
            for (int c = 0; c < taps; c++) d[c] = xb[j->koff[k0 + c]];
          } else {
            for (int c = 0; c < taps; c++) d[c] = tap_value(p, j->x, base, iy0, ix0, j->koff[k0 + c], j->kdy[k0 + c], j->kdx[k0 + c]);
          }
          for (int c = taps; c < nr; c++) d[c] = 0.0f;
        }
  }
}

/* Whether taps_backward_weight takes p (after the AVX2 pixels in lanes, which are faster where they
 * apply: ResNet-20's 64 on 7x7 4.9 against 6.8 ms): the tap panels' conditions, and each packed
 * operand within 8 MB (beyond, the panels stream through memory: 32 on 14x14 at batch 128, 29 MB of
 * them, 10.7 ms against 3.5). `convbench`, AVX2 forced, two threads, against im2col + GEMM:
 * ResNet-18's 128 on 4x4 2.97 against 4.19 ms, its strided 64 -> 128 on 8x8 1.25 against 2.04 and
 * 128 -> 256 on 4x4 1.09 against 2.36. RESNET_TAPS_BW=0 turns it off (measurements). */
int taps_bw_ok(const conv_p *p) {
  static int off = -1;
  if (env_zero("RESNET_TAPS_BW", &off) || !taps_ok(p)) return 0;
  const long K = (long)p->cin * p->kh * p->kw, ncols = (long)p->n * p->oh * p->ow, lim = 2L << 20;
  return ncols <= lim && (K + 15) * ncols <= lim && (long)(p->cout + 15) * ncols <= lim;
}

void taps_backward_weight(float *dw, const float *x, const float *dy, const conv_p *p) {
  static _Thread_local buf_t a_buf, b_buf, k_buf;
  const int K = p->cin * p->kh * p->kw, nr = sgemm_nr(), mr = sgemm_mr(p->cout);
  taps_bw_job j = {.p = p, .x = x, .dy = dy, .K = K, .nr = nr, .mr = mr, .P = (long)p->oh * p->ow};
  j.ncols = (long)p->n * j.P;
  j.koff = tap_table(p, &k_buf);
  j.kdy = j.koff + K;
  j.kdx = j.kdy + K;
  const int apanels = (p->cout + mr - 1) / mr, bpanels = (K + nr - 1) / nr;
  j.Ap = grow(&a_buf, (size_t)apanels * mr * j.ncols);
  j.Bp = grow(&b_buf, (size_t)bpanels * nr * j.ncols);
  const int T = pool_threads();
  pool_run_n(taps_bw_pack_a, &j, apanels < T ? apanels : T);
  pool_run_n(taps_bw_pack_b, &j, bpanels < T ? bpanels : T);
  sgemm_papb(p->cout, K, (int)j.ncols, j.Ap, j.Bp, 0.0f, dw, K);
}
