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
 * 256 channels on 2x2), on all threads, straight into the GEMM's packed B panels (below), the taps
 * moved through 16 x 16 register transposes on AVX-512; where it can, a panel at a time, multiplied
 * at once while in L2, and dW' a block of rows at a time, folded at once, so that neither goes out
 * to memory whole. The fold adds each tap's pairs in a fixed
 * order, so the gradient's bits do not depend on the thread count (neither do the GEMM's: each element
 * of C is summed by one thread over the whole K). */
#include "conv_internal.h"
#include "gemm.h"
#include "pool.h"
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#include "simd.h"
#endif

#define DENSE_MAX_FLOATS (4L << 20) /* W' at most 16 MB */

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
  const int *tab;  /* tab[op * Pin + iq]: the tap that joins input pixel iq to output pixel op, -1 if none */
  const int *live; /* the taps some pair uses, in order; nlive of them */
  int nlive, npairs;
  const float *src;
  float *dst;
  int pin, pout;
} dense_job;

/* W' is never stored as such: the GEMMs read it as pre-packed B panels (nr = sgemm_nr() columns over
 * the whole K, Bp[panel][k][c]), built here straight from the taps, so that neither a W' matrix nor
 * the GEMM's own packing of it is written (the two had cost a third of a forward and half of a
 * backward-input call of 256 channels on 2x2 maps, W' being 4 MB; with the panels, 2 threads, best of
 * 4 x 200 calls: forward 0.97 -> 0.79 ms, backward input 0.98 -> 0.80; 256 -> 512 to 1x1 0.53 -> 0.48
 * and 0.53 -> 0.47; 512 on 1x1 0.26 -> 0.25 and 0.26 -> 0.23). The forward builds one panel at a time
 * per thread and multiplies it at once (fwd_fused_task): the 4 MB of panels had been written out
 * whole and read back. Same for the backward input where a panel takes one input pixel and taps
 * serve several pairs (bwd_fused_task), and for the weight gradient's dW' (wfold_task). Against the
 * whole panels (native/bench/abconv.sh, alternating calls, 2 threads, Intel VM), 256 channels on 2x2:
 * forward -13 to -21 % (caches flushed -21 to -29 %), backward input -6 to -11 %, weight gradient
 * -19 to -20 % (flushed -30 %); in ResNet-18 training steps (per-call minima, two builds alternating,
 * both orders) the three forwards 2.81 -> 2.19 and 3.49 -> 2.81 ms, weight gradients 2.91 -> 2.15 and
 * 3.50 -> 2.91, backward inputs 2.97 -> 2.58 and 3.45 -> 3.49.
 * Where each tap serves one pair (1x1 maps), the backward input's panels by pixel lost 22-32 % (read
 * in place, a channel's taps are 9 floats apart) and it keeps the whole panels.
 *
 * Forward: y = x . W'^T, B[k][nn] = W'[nn][k], columns nn = (co, op), rows k = (q, ci). Panels over the
 * threads; a panel's columns read, per (q, ci), the tap tap(op, q) of their output channel: with the
 * panel's channels' taps transposed first (wt[co][t][ci]: channels contiguous), each column is a run
 * along ci of one row of wt (or zeros). */
#if defined(__x86_64__)
/* 16 x 16 blocks through registers (transpose16), for the two transposes below */
__attribute__((target("avx512f"))) static void taps_transpose512(float *wt, const float *s, int cin, int kk, const int *live,
                                                                int nlive, int ci1) {
  const __mmask16 row = (__mmask16)((1u << kk) - 1);
  for (int ci0 = 0; ci0 < ci1; ci0 += 16) {
    __m512 r[16];
    for (int i = 0; i < 16; i++) r[i] = _mm512_maskz_loadu_ps(row, s + (long)(ci0 + i) * kk);
    transpose16(r);
    for (int l = 0; l < nlive; l++) _mm512_storeu_ps(wt + (long)live[l] * cin + ci0, r[live[l]]);
  }
}
__attribute__((target("avx512f"))) static void panel_rows512(float *d, const float *const *rowp, int cin) {
  for (int ci0 = 0; ci0 < cin; ci0 += 16)
    for (int cb = 0; cb < 32; cb += 16) {
      __m512 r[16];
      for (int i = 0; i < 16; i++) r[i] = rowp[cb + i] ? _mm512_loadu_ps(rowp[cb + i] + ci0) : _mm512_setzero_ps();
      transpose16(r);
      for (int i = 0; i < 16; i++) _mm512_storeu_ps(d + (long)(ci0 + i) * 32 + cb, r[i]);
    }
}
static int have512(void) {
  static int v = -1;
  if (v < 0) v = __builtin_cpu_supports("avx512f");
  return v;
}
#endif

/* wt[t][ci] = s[ci][t] for the live taps t (s: one output channel's weights, [cin][kk]). */
static void taps_transpose(float *wt, const float *s, int cin, int kk, const int *live, int nlive) {
  int ci = 0;
#if defined(__x86_64__)
  if (kk <= 16 && have512()) {
    ci = cin & ~15;
    if (ci) taps_transpose512(wt, s, cin, kk, live, nlive, ci);
  }
#endif
  for (; ci < cin; ci++)
    for (int l = 0; l < nlive; l++) wt[(long)live[l] * cin + ci] = s[(long)ci * kk + live[l]];
}

/* d[ci][c] = rowp[c][ci] (0 for a NULL row), ci < cin, c < nr: a panel's rows for one q. */
static void panel_rows(float *d, const float *const *rowp, int nr, int cin) {
#if defined(__x86_64__)
  if (nr == 32 && cin % 16 == 0 && have512()) {
    panel_rows512(d, rowp, cin);
    return;
  }
#endif
  for (int ci = 0; ci < cin; ci++, d += nr)
    for (int c = 0; c < nr; c++) d[c] = rowp[c] ? rowp[c][ci] : 0.0f;
}

/* Panel pj of the forward's B into d (K x nr), with the thread's scratch tbuf. */
static void fwd_panel(const dense_job *j, long pj, float *d, buf_t *tbuf) {
  const conv_p *p = j->p;
  const int kk = p->kh * p->kw, cin = p->cin, nr = sgemm_nr(), N = p->cout * j->pout;
  const float *rowp[64];
  const int nn0 = (int)pj * nr, co0 = nn0 / j->pout;
  const int co1 = (nn0 + nr - 1) / j->pout < p->cout ? (nn0 + nr - 1) / j->pout : p->cout - 1;
  /* the panel's channels' live taps first transposed to runs along ci, a channel at a time: whole
   * rows of each channel's weights read in order, even where a tap serves one pair only (512
   * channels on 1x1 maps, weights out of cache as a training step leaves them, best of 5: 0.66 ms
   * reading the centre taps in place by gathers across 32 channels' rows, 0.75 by gathers along
   * one channel at a time, 0.60 this way; with the weights in cache 0.33 / 0.33 / 0.34) */
  float *wt = grow(tbuf, (size_t)(co1 - co0 + 1) * kk * cin);
  for (int co = co0; co <= co1; co++)
    taps_transpose(wt + (long)(co - co0) * kk * cin, j->src + (long)co * cin * kk, cin, kk, j->live, j->nlive);
  for (int q = 0; q < j->pin; q++) {
    for (int c = 0; c < nr; c++) {
      const int nn = nn0 + c, t = nn < N ? j->tab[(long)(nn % j->pout) * j->pin + q] : -1;
      rowp[c] = t < 0 ? NULL : wt + ((long)(nn / j->pout - co0) * kk + t) * cin;
    }
    panel_rows(d + (long)q * cin * nr, rowp, nr, cin);
  }
}

/* Backward input: dx = dy . W', B = W' itself, rows k = (co, op), columns (q, ci). Output channels
 * over the threads (each writes its rows of every panel): w[co] transposed to wt[t][ci], then a
 * panel's row (co, op) is a run of wt[tap(op, q)] (whole panels of one q when nr divides cin;
 * element by element otherwise). */
static void bwd_panels_task(void *ctx, int tid, int n) {
  static _Thread_local buf_t tbuf;
  const dense_job *j = ctx;
  const conv_p *p = j->p;
  const int kk = p->kh * p->kw, cin = p->cin, nr = sgemm_nr(), Kc = cin * j->pin, reuse = j->npairs > j->nlive;
  const long Kg = (long)p->cout * j->pout, panels = (Kc + nr - 1) / nr;
  float *wt = reuse ? grow(&tbuf, (size_t)kk * cin) : NULL;
  long lo, hi;
  pool_split(p->cout, tid, n, 1, &lo, &hi);
  for (long co = lo; co < hi; co++) {
    /* where taps serve several pairs, transposed first; else read in place (tap t of channel ci at
     * s[ci * kk + t]) */
    const float *s = j->src + co * cin * kk;
    if (reuse) taps_transpose(wt, s, cin, kk, j->live, j->nlive);
    const float *src = reuse ? wt : s;
    const long cs = reuse ? 1 : kk, ts = reuse ? cin : 1; /* strides of ci and t in src */
    for (int op = 0; op < j->pout; op++) {
      const int *t = j->tab + (long)op * j->pin;
      for (long pj = 0; pj < panels; pj++) {
        float *d = j->dst + (pj * Kg + co * j->pout + op) * nr;
        const int col0 = (int)pj * nr;
        if (cin % nr == 0) { /* one q per panel */
          const int q = col0 / cin;
          const float *r = src + t[q] * ts + (long)(col0 % cin) * cs;
          if (t[q] < 0) memset(d, 0, sizeof(float) * (size_t)nr);
          else if (reuse) memcpy(d, r, sizeof(float) * (size_t)nr);
          else
            for (int c = 0; c < nr; c++) d[c] = r[c * cs];
        } else {
          for (int c = 0; c < nr; c++) {
            const int col = col0 + c, tq = col < Kc ? t[col / cin] : -1;
            d[c] = tq >= 0 ? src[tq * ts + (long)(col % cin) * cs] : 0.0f;
          }
        }
      }
    }
  }
}

/* Output channels of dw over the threads. Where taps serve several pairs, acc[t][ci] = the pairs of
 * tap t added in the order (op, q) (whole runs of channels at once), then dw[co][ci][t] = acc[t][ci];
 * else each pair is its tap's gradient, read in place. The [t][ci] -> [ci][t] store goes through
 * 16 x 16 register transposes on AVX-512 (the scalar loops and their strided stores had been a third
 * of the weight gradient: ResNet-18's 512 channels on 1x1 maps, one live tap of nine, and 256 on
 * 2x2). Same additions in the same order: same bits. */
#if defined(__x86_64__)
__attribute__((target("avx512f"))) static void add_rows512(float *a, const float *s, int n) {
  int i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(a + i, _mm512_add_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(s + i)));
  if (i < n) {
    const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(a + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, s + i)));
  }
}
/* d[ci][t] = row[t][ci] (0 for a NULL row), t < kk <= 16, ci < cin */
__attribute__((target("avx512f"))) static void taps_store512(float *d, const float *const *row, int kk, int cin) {
  const __mmask16 km = (__mmask16)((1u << kk) - 1);
  for (int ci0 = 0; ci0 < cin; ci0 += 16) {
    const int nc = cin - ci0 < 16 ? cin - ci0 : 16;
    const __mmask16 cm = (__mmask16)((1u << nc) - 1);
    __m512 r[16];
    for (int t = 0; t < 16; t++) r[t] = t < kk && row[t] ? _mm512_maskz_loadu_ps(cm, row[t] + ci0) : _mm512_setzero_ps();
    transpose16(r);
    for (int i = 0; i < nc; i++) _mm512_mask_storeu_ps(d + (long)(ci0 + i) * kk, km, r[i]);
  }
}
#endif
static void add_rows(float *a, const float *s, int n) {
#if defined(__x86_64__)
  if (have512()) {
    add_rows512(a, s, n);
    return;
  }
#endif
  for (int ci = 0; ci < n; ci++) a[ci] += s[ci];
}
static void taps_store(float *d, const float *const *row, int kk, int cin) {
#if defined(__x86_64__)
  if (kk <= 16 && have512()) {
    taps_store512(d, row, kk, cin);
    return;
  }
#endif
  for (int ci = 0; ci < cin; ci++)
    for (int t = 0; t < kk; t++) d[(long)ci * kk + t] = row[t] ? row[t][ci] : 0.0f;
}

/* dw[co] from g's rows (co, op) of output channel co (gco: pout x K), with the thread's scratch acc
 * (kk x cin, where taps serve several pairs) and row (kk pointers). */
static void fold_co(const dense_job *j, long co, const float *gco, float *acc, const float **row) {
  const conv_p *p = j->p;
  const int kk = p->kh * p->kw, cin = p->cin, reuse = j->npairs > j->nlive;
  const long K = (long)cin * j->pin;
  for (int t = 0; t < kk; t++) row[t] = NULL;
  if (reuse)
    for (int l = 0; l < j->nlive; l++) {
      float *a = acc + (long)j->live[l] * cin;
      memset(a, 0, sizeof(float) * (size_t)cin);
      row[j->live[l]] = a;
    }
  for (int op = 0; op < j->pout; op++) {
    const int *t = j->tab + (long)op * j->pin;
    const float *s = gco + op * K;
    for (int q = 0; q < j->pin; q++, s += cin) {
      if (t[q] < 0) continue;
      if (reuse) add_rows(acc + (long)t[q] * cin, s, cin);
      else row[t[q]] = s; /* the tap's one pair */
    }
  }
  taps_store(j->dst + co * cin * kk, row, kk, cin);
}

/* The weight gradient by blocks of output channels: a thread takes a block, computes its rows of
 * dW' = dy^T . x into its own buffer (256 KB at most; x pre-packed once for all blocks) and folds
 * them at once, while they are in L2 (dW' whole is 4 MB for ResNet-18's 256 channels on 2x2 maps,
 * and had gone out to memory between the product and the fold). */
typedef struct {
  dense_job d;
  const float *dy, *Bp; /* Bp: pixel-major x as the product's pre-packed B (n x K) */
  int cb;               /* output channels a block */
  pool_ranges items;    /* the blocks, by ranges */
} wfold_job;

static void wfold_task(void *ctx, int tid, int n) {
  (void)n;
  static _Thread_local buf_t gbuf, abuf;
  static _Thread_local const float **rowb;
  static _Thread_local int rowcap;
  wfold_job *f = ctx;
  const dense_job *j = &f->d;
  const conv_p *p = j->p;
  const int kk = p->kh * p->kw, N = p->cout * j->pout, K = p->cin * j->pin;
  float *g = grow(&gbuf, (size_t)f->cb * j->pout * K);
  float *acc = j->npairs > j->nlive ? grow(&abuf, (size_t)kk * p->cin) : NULL;
  if (rowcap < kk) {
    free(rowb);
    rowb = malloc(sizeof(*rowb) * (size_t)kk);
    if (!rowb) abort();
    rowcap = kk;
  }
  pool_cursor cur = pool_cursor_at(&f->items, tid);
  for (;;) {
    const long blk = pool_ranges_next(&f->items, &cur), co0 = blk * f->cb;
    if (blk < 0) break;
    const long co1 = co0 + f->cb < p->cout ? co0 + f->cb : p->cout;
    sgemm_pb_st(1, (int)((co1 - co0) * j->pout), K, p->n, f->dy + co0 * j->pout, N, f->Bp, g, K);
    for (long co = co0; co < co1; co++) fold_co(j, co, g + (co - co0) * j->pout * K, acc, rowb);
  }
}

/* The job's pair table for p (j->tab to be freed by the caller). */
static void job_init(dense_job *j, const conv_p *p, const float *src, float *dst) {
  const int pin = p->h * p->w, pout = p->oh * p->ow;
  const int kk = p->kh * p->kw;
  int *tab = malloc(sizeof(int) * ((size_t)pin * pout + 2 * (size_t)kk));
  if (!tab) abort();
  int *live = tab + (long)pin * pout, *used = live + kk, nlive = 0, npairs = 0;
  memset(used, 0, sizeof(int) * (size_t)kk);
  /* the pairs: each output pixel's taps that read inside the map (a tap reads one pixel per output) */
  int *off = conv_tap_offsets(p);
  for (long i = 0; i < (long)pin * pout; i++) tab[i] = -1;
  for (int op = 0; op < pout; op++)
    for (int t = 0; t < kk; t++)
      if (off[op * kk + t] >= 0) tab[op * pin + off[op * kk + t]] = t, used[t] = 1, npairs++;
  free(off);
  for (int t = 0; t < kk; t++)
    if (used[t]) live[nlive++] = t;
  *j = (dense_job){p, tab, live, nlive, npairs, src, dst, pin, pout};
}

/* W' for j (made by job_init from w) as the backward input's pre-packed B, whole, in a per-thread
 * buffer that is kept. */
static const float *bwd_panels(dense_job *j) {
  static _Thread_local buf_t wbuf;
  const conv_p *p = j->p;
  const int N = p->cout * j->pout, K = p->cin * j->pin;
  j->dst = grow(&wbuf, sgemm_packed_b_size(K, N));
  pool_run_n(bwd_panels_task, j, (long)N * K < (1L << 15) ? 1 : p->cout);
  return j->dst;
}

/* x (or dx) with pixel-major rows, in a per-thread buffer that is kept; x itself for 1-pixel maps. */
static const float *pixel_major(const float *x, const conv_p *p) {
  static _Thread_local buf_t xbuf;
  if (p->h * p->w == 1) return x;
  float *xp = grow(&xbuf, (size_t)p->n * p->cin * p->h * p->w);
  images_transpose(xp, x, p->n, p->cin, (long)p->h * p->w, 1, NULL, NULL, 0);
  return xp;
}

/* A B panel built and used at once (fwd_fused_task): the GEMM's A packed first, whole (the batch's
 * rows over all of K: 280 KB for ResNet-18's 256 channels on 2x2 maps), then each thread takes panels
 * in turn, builds one into its own buffer (K x nr: 128 KB there) and multiplies it while it is in L2;
 * W' is never written out whole (4 MB there, which had gone out to memory and come back). */
typedef struct {
  dense_job d;
  const float *Ap; /* the GEMM's A, whole-K packed (sgemm_pack_a_mt) */
  float *c;        /* C, row stride N */
  float beta;
  pool_ranges items;  /* the task's items (panels, or 32-channel runs), by ranges */
} fused_job;

/* Runs a fused job of `items` items whose pair table is made (job_init) on all threads, then frees the table. */
static void run_fused(pool_fn fn, fused_job *f, long items) {
  pool_ranges_init(&f->items, items, 1, pool_threads());
  pool_run_dynamic(fn, f, pool_threads());
  free((void *)f->d.tab);
}

static void fwd_fused_task(void *ctx, int tid, int n) {
  (void)n;
  static _Thread_local buf_t tbuf, pbuf;
  fused_job *f = ctx;
  const dense_job *j = &f->d;
  const int nr = sgemm_nr(), N = j->p->cout * j->pout;
  const long K = (long)j->p->cin * j->pin;
  float *panel = grow(&pbuf, (size_t)K * nr);
  pool_cursor cur = pool_cursor_at(&f->items, tid);
  for (;;) {
    const long pj = pool_ranges_next(&f->items, &cur);
    if (pj < 0) break;
    fwd_panel(j, pj, panel, &tbuf);
    const int cols = N - pj * nr < nr ? (int)(N - pj * nr) : nr;
    sgemm_panel(j->p->n, cols, (int)K, f->Ap, panel, f->beta, f->c + pj * nr, N);
  }
}

void dense_forward(float *y, const float *x, const float *w, const float *bias, const float *residual, int relu,
                   const conv_p *p) {
  static _Thread_local buf_t abuf;
  const int pout = p->oh * p->ow, N = p->cout * pout, K = p->cin * p->h * p->w;
  const long ny = (long)p->n * N;
  float *Ap = grow(&abuf, sgemm_packed_a_size(p->n, K));
  sgemm_pack_a_mt(pixel_major(x, p), p->n, K, Ap);
  if (residual && residual != y) memcpy(y, residual, sizeof(float) * (size_t)ny);
  fused_job f = {.Ap = Ap, .c = y, .beta = residual ? 1.0f : 0.0f};
  job_init(&f.d, p, w, NULL);
  run_fused(fwd_fused_task, &f, (N + sgemm_nr() - 1) / sgemm_nr());
  if (bias || relu)
    for (long i = 0; i < ny; i++) {
      const float v = y[i] + (bias ? bias[(i % N) / pout] : 0.0f);
      y[i] = relu ? (v > 0.0f ? v : (v != v ? v : 0.0f)) : v;
    }
}

/* The backward input's panels the same way, where whole panels take one input pixel q and nr channels
 * (cin % nr == 0): a thread takes a run of nr channels, transposes those channels' taps of every
 * output channel once (wt[co][t][nr]: 288 KB for 256 channels), then builds and multiplies the
 * panels of each q from it. */
static void bwd_fused_task(void *ctx, int tid, int n) {
  (void)n;
  static _Thread_local buf_t wbuf, pbuf;
  fused_job *f = ctx;
  const dense_job *j = &f->d;
  const conv_p *p = j->p;
  const int kk = p->kh * p->kw, cin = p->cin, nr = sgemm_nr(), Kg = p->cout * j->pout, N = cin * j->pin;
  const int reuse = j->npairs > j->nlive; /* else each tap serves one pair: read in place, as bwd_panels_task */
  float *wt = reuse ? grow(&wbuf, (size_t)p->cout * kk * nr) : NULL, *panel = grow(&pbuf, (size_t)Kg * nr);
  pool_cursor cur = pool_cursor_at(&f->items, tid);
  for (;;) {
    const long r = pool_ranges_next(&f->items, &cur);
    if (r < 0) break;
    const int ci0 = (int)r * nr;
    if (reuse)
      for (int co = 0; co < p->cout; co++) {
        /* the run's taps of each output channel are nr * kk floats a whole kernel row apart: fetched
         * two channels ahead (a stride the hardware prefetchers do not follow across 256 rows) */
        if (co + 2 < p->cout) {
          const char *nx = (const char *)(j->src + ((long)(co + 2) * cin + ci0) * kk);
          for (long b = 0; b < (long)nr * kk * (long)sizeof(float); b += 64) __builtin_prefetch(nx + b);
        }
        taps_transpose(wt + (long)co * kk * nr, j->src + ((long)co * cin + ci0) * kk, nr, kk, j->live, j->nlive);
      }
    for (int q = 0; q < j->pin; q++) {
      for (int co = 0; co < p->cout; co++)
        for (int op = 0; op < j->pout; op++) {
          const int t = j->tab[(long)op * j->pin + q];
          float *d = panel + ((long)co * j->pout + op) * nr;
          if (t < 0) memset(d, 0, sizeof(float) * (size_t)nr);
          else if (reuse) memcpy(d, wt + ((long)co * kk + t) * nr, sizeof(float) * (size_t)nr);
          else { /* the tap's one pair: read in place */
            const float *sw = j->src + ((long)co * cin + ci0) * kk + t;
            for (int c = 0; c < nr; c++) d[c] = sw[(long)c * kk];
          }
        }
      sgemm_panel(p->n, nr, Kg, f->Ap, panel, f->beta, f->c + (long)q * cin + ci0, N);
    }
  }
}

void dense_backward_input(float *dx, const float *dy, const float *w, const conv_p *p, const float *addend) {
  static _Thread_local buf_t dbuf, abuf;
  const int N = p->cout * p->oh * p->ow, K = p->cin * p->h * p->w;
  const int direct = p->h * p->w == 1; /* pixel-major dx is NCHW dx */
  float *c = direct ? dx : grow(&dbuf, (size_t)p->n * K);
  if (direct && addend && addend != dx) memcpy(dx, addend, sizeof(float) * (size_t)p->n * K);
  fused_job f = {.c = c, .beta = direct && addend ? 1.0f : 0.0f};
  job_init(&f.d, p, w, NULL);
  if (f.d.npairs > f.d.nlive && p->cin % sgemm_nr() == 0) {
    float *Ap = grow(&abuf, sgemm_packed_a_size(p->n, N));
    sgemm_pack_a_mt(dy, p->n, N, Ap);
    f.Ap = Ap;
    run_fused(bwd_fused_task, &f, p->cin / sgemm_nr());
  } else {
    sgemm_ex_pb(0, p->n, K, N, 1.0f, dy, N, bwd_panels(&f.d), f.beta, c, K);
    free((void *)f.d.tab);
  }
  if (!direct) images_transpose(dx, c, p->n, p->cin, (long)p->h * p->w, 0, addend, NULL, 0);
}

void dense_backward_weight(float *dw, const float *x, const float *dy, const conv_p *p) {
  static _Thread_local buf_t bbuf;
  const int pout = p->oh * p->ow, K = p->cin * p->h * p->w;
  float *Bp = grow(&bbuf, sgemm_packed_b_size(K, p->n));
  sgemm_pack_b_mt(pixel_major(x, p), p->n, K, Bp);
  wfold_job f = {.dy = dy, .Bp = Bp};
  const long cb = (1L << 16) / ((long)pout * K);
  f.cb = (int)(cb < 1 ? 1 : cb > p->cout ? p->cout : cb);
  job_init(&f.d, p, NULL, dw);
  pool_ranges_init(&f.items, (p->cout + f.cb - 1) / f.cb, 1, pool_threads());
  pool_run_dynamic(wfold_task, &f, pool_threads());
  free((void *)f.d.tab);
}
