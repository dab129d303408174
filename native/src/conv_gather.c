/* Gathered-GEMM convolution and the wide/narrow backward-weight kernels (AVX-512).
 *
 * Gathered GEMM: for what neither the pixel-row nor the q-grid kernels take, mostly small maps (8x8 down to 1x1: ResNet-18 on 32x32
 * inputs), where im2col writes a row of a few floats per call and then the GEMM packs it again. Here
 * the GEMM's B panels (kc x 32 columns, column = image x output pixel) are gathered straight from x
 * with masked AVX-512 gathers (zeros for padding), the weights are A (micro-kernel panels), and the
 * result goes from a per-block buffer to NCHW with the bias/residual/relu epilogue. Work items are
 * blocks of GG_NB columns over all output channels, handed out dynamically. */
#include "conv_internal.h"
#include "gemm.h"
#include "pool.h"
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)

#define GG_NB 128
#define GG_KC 256

/* Output positions fall into patterns by which taps read inside the map: along each axis, runs of
 * positions with the same valid tap interval (a 3x3 pad-1 kernel gives first / interior / last), and
 * a pattern is a pair of runs. Within a pattern every listed tap is valid for every column, so its
 * GEMM has K = cin x (valid taps) and no zeros: on 2x2 maps that is 4 of the 9 taps (2.25x fewer
 * multiplies than gathering zeros for the padding), on 4x4 maps 100 of 144 on average. */
typedef struct {
  int o0, o1, k0, k1; /* positions [o0, o1) along the axis, valid taps [k0, k1) */
} tap_run;

typedef struct {
  int r, c;          /* row run and column run */
  int K;             /* cin x taps of the runs */
  long ncols, item0; /* n x positions; first work item */
  int *kidx;         /* K entries: the tap's index in the full K (the A panels' k) */
  int *koff;         /* K entries: its offset in x from a column's base */
} tap_pattern;

typedef struct {
  const conv_p *p;
  int K, M, mr, mgroups, npat;
  const float *Ap, *x, *bias, *residual;
  float *y;
  int relu;
  long P, items_per_block; /* work items per column block: mgroups */
  const tap_run *rows, *cols;
  const tap_pattern *pat;
  gg_out out; /* where output (image, channel, row, column) goes (and the residual is read) */
  atomic_long next;
  long nitems;
} gg_job;

/* C[MR x 32] (row stride ldc) = A rows kidx[0..kc) of a packed panel (ST floats per k) x B (kc x 32) + beta*C
 * (ukidx8t: the first 8 rows of a 14-row panel, for a last panel with at most 8 real rows) */
#define DEF_UKIDX(NAME, MR, ST)                                                                                     \
  __attribute__((target("avx512f"), noinline)) static void NAME(int kc, const float *Ap, const int *kidx,           \
                                                                    const float *Bp, float *C, int ldc, float beta) { \
    __m512 c0[MR], c1[MR];                                                                                          \
    _Pragma("GCC unroll 14") for (int r = 0; r < MR; r++) c0[r] = c1[r] = _mm512_setzero_ps();                      \
    for (int k = 0; k < kc; k++) {                                                                                  \
      const float *a = Ap + (long)kidx[k] * ST;                                                                     \
      const __m512 b0 = _mm512_load_ps(Bp), b1 = _mm512_load_ps(Bp + 16);                                          \
      _Pragma("GCC unroll 14") for (int r = 0; r < MR; r++) {                                                       \
        const __m512 v = _mm512_set1_ps(a[r]);                                                                      \
        c0[r] = _mm512_fmadd_ps(v, b0, c0[r]);                                                                      \
        c1[r] = _mm512_fmadd_ps(v, b1, c1[r]);                                                                      \
      }                                                                                                             \
      Bp += 32;                                                                                                     \
    }                                                                                                               \
    _Pragma("GCC unroll 14") for (int r = 0; r < MR; r++) {                                                         \
      if (beta != 0.0f) {                                                                                           \
        c0[r] = _mm512_add_ps(c0[r], _mm512_load_ps(C + r * ldc));                                                  \
        c1[r] = _mm512_add_ps(c1[r], _mm512_load_ps(C + r * ldc + 16));                                             \
      }                                                                                                             \
      _mm512_store_ps(C + r * ldc, c0[r]);                                                                          \
      _mm512_store_ps(C + r * ldc + 16, c1[r]);                                                                     \
    }                                                                                                               \
  }
DEF_UKIDX(ukidx8, 8, 8)
DEF_UKIDX(ukidx14, 14, 14)
DEF_UKIDX(ukidx8t, 8, 14)

static _Thread_local buf_t gg_b_buf, gg_c_buf;

__attribute__((target("avx512f"))) static void gg_task(void *ctx, int tid, int n) {
  (void)tid; (void)n;
  gg_job *j = ctx;
  const conv_p *p = j->p;
  const int K = j->K, M = j->M, mr = j->mr;
  const long HW = (long)p->h * p->w;
  const int Mp = (M + mr - 1) / mr * mr;
  float *Bp = grow(&gg_b_buf, (size_t)GG_KC * GG_NB);
  float *Cb = grow(&gg_c_buf, (size_t)Mp * GG_NB);
  int base[GG_NB] __attribute__((aligned(64))), ocol[GG_NB] __attribute__((aligned(64)));
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const __m512 zero = _mm512_setzero_ps();
  for (;;) {
    const long it = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
    if (it >= j->nitems) break;
    int pi = 0;
    while (pi + 1 < j->npat && j->pat[pi + 1].item0 <= it) pi++;
    const tap_pattern *pt = &j->pat[pi];
    const tap_run *rr = &j->rows[pt->r], *cr = &j->cols[pt->c];
    const long local = it - pt->item0, j0 = (local / j->mgroups) * GG_NB;
    long plo, phi;
    pool_split(Mp / mr, (int)(local % j->mgroups), j->mgroups, 1, &plo, &phi);
    const int m_lo = (int)plo * mr, m_hi = (int)phi * mr < M ? (int)phi * mr : M;
    if (m_lo >= m_hi) continue;
    const int nc = pt->ncols - j0 < GG_NB ? (int)(pt->ncols - j0) : GG_NB, ncp = (nc + 31) & ~31;
    const int pw_ = cr->o1 - cr->o0, per_img = (rr->o1 - rr->o0) * pw_;
    for (int c = 0; c < ncp; c++) {
      if (c < nc) {
        const long col = j0 + c, b = col / per_img, rem = col % per_img;
        const int oy = rr->o0 + (int)(rem / pw_), ox = cr->o0 + (int)(rem % pw_);
        base[c] = (int)(b * p->cin * HW + (long)(oy * p->sh - p->ph) * p->w + ox * p->sw - p->pw);
        ocol[c] = (int)(b * j->out.img + j->out.off + (long)oy * j->out.row + (long)ox * j->out.col);
      } else {
        base[c] = ocol[c] = 0;
      }
    }
    const int Kp = pt->K;
    for (int pc = 0; pc < Kp; pc += GG_KC) {
      const int kc = Kp - pc < GG_KC ? Kp - pc : GG_KC;
      /* B panels: Bp[panel][k][32]; every tap of the pattern is inside the map for every column */
      for (int k = 0; k < kc; k++) {
        const __m512i voff = _mm512_set1_epi32(pt->koff[pc + k]);
        for (int c0 = 0; c0 < ncp; c0 += 16) {
          const __mmask16 m = _mm512_cmplt_epi32_mask(_mm512_add_epi32(lane, _mm512_set1_epi32(c0)), _mm512_set1_epi32(nc));
          const __m512i idx = _mm512_add_epi32(_mm512_load_si512(base + c0), voff);
          _mm512_store_ps(Bp + (long)(c0 / 32) * kc * 32 + (long)k * 32 + (c0 & 31), _mm512_mask_i32gather_ps(zero, m, idx, j->x, 4));
        }
      }
      const float beta = pc == 0 ? 0.0f : 1.0f;
      for (int m0 = m_lo; m0 < m_hi; m0 += mr) {
        const float *ap = j->Ap + (long)m0 * K; /* the panel; kidx picks its k's */
        for (int c0 = 0; c0 < ncp; c0 += 32)
          (mr == 8 ? ukidx8 : m_hi - m0 <= 8 ? ukidx8t : ukidx14)(kc, ap, pt->kidx + pc, Bp + (long)(c0 / 32) * kc * 32,
                                                                 Cb + (long)m0 * GG_NB + c0, GG_NB, beta);
      }
    }
    /* epilogue: scattered outputs (column c -> ocol[c] + co * P), with bias, residual, relu */
    for (int co = m_lo; co < m_hi; co++) {
      const __m512 vb = _mm512_set1_ps(j->bias ? j->bias[co] : 0.0f);
      const __m512i vco = _mm512_set1_epi32((int)((long)co * j->out.ch));
      for (int c0 = 0; c0 < nc; c0 += 16) {
        const __mmask16 m = _mm512_cmplt_epi32_mask(_mm512_add_epi32(lane, _mm512_set1_epi32(c0)), _mm512_set1_epi32(nc));
        const __m512i o = _mm512_add_epi32(_mm512_load_si512(ocol + c0), vco);
        __m512 v = _mm512_add_ps(_mm512_load_ps(Cb + (long)co * GG_NB + c0), vb);
        if (j->residual) v = _mm512_add_ps(v, _mm512_mask_i32gather_ps(zero, m, o, j->residual, 4));
        if (j->relu) v = _mm512_max_ps(zero, v); /* NaN stays NaN: max returns its second operand */
        _mm512_mask_i32scatter_ps(j->y, m, o, v, 4);
      }
    }
  }
}

/* Runs of output positions along one axis with the same valid tap interval. */
static int tap_runs(int out, int in, int k, int s, int pad, int d, tap_run *runs) {
  int n = 0;
  for (int o = 0; o < out; o++) {
    int k0 = 0, k1 = k;
    while (k0 < k1 && o * s - pad + k0 * d < 0) k0++;
    while (k1 > k0 && o * s - pad + (k1 - 1) * d >= in) k1--;
    if (n > 0 && runs[n - 1].k0 == k0 && runs[n - 1].k1 == k1 && runs[n - 1].o1 == o) {
      runs[n - 1].o1 = o + 1;
    } else {
      runs[n] = (tap_run){o, o + 1, k0, k1};
      n++;
    }
  }
  return n;
}

/* Whether the gathered GEMM takes a convolution that the other AVX-512 paths do not: groups 1, not
 * pointwise (a plain GEMM reads a 1x1 stride-1 convolution's input as it is), and indices that fit
 * the 32-bit gathers. RESNET_GG=0 turns it off (measurements). */
int gg_ok(const conv_p *p) {
  if (p->groups != 1 || strcmp(sgemm_isa(), "avx512") != 0 || p->n < 1 || no_implicit() || sgemm_nr() != 32) return 0;
  if (is_pointwise(p)) return 0;
  static int off = -1;
  if (env_zero("RESNET_GG", &off)) return 0;
  return (long)p->n * p->cin * p->h * p->w < (1L << 31) - (1L << 20) && (long)p->n * p->cout * p->oh * p->ow < (1L << 31) - (1L << 20);
}

void gg_forward(float *y, const float *x, const float *wt, const float *wp, const float *bias,
                       const float *residual, int relu, const conv_p *p) {
  const long P = (long)p->oh * p->ow;
  const gg_out o = {(long)p->cout * P, P, p->ow, 1, 0};
  gg_forward_to(y, x, wt, wp, bias, residual, relu, p, &o);
}

void gg_forward_to(float *y, const float *x, const float *wt, const float *wp, const float *bias, const float *residual,
                   int relu, const conv_p *p, const gg_out *out) {
  static _Thread_local buf_t gg_w_buf;
  gg_job j;
  memset(&j, 0, sizeof j);
  j.p = p;
  j.out = *out;
  j.K = p->cin * p->kh * p->kw;
  j.M = p->cout;
  j.mr = sgemm_mr(j.M);
  j.Ap = a_panels(wt, wp, j.M, j.K, &gg_w_buf);
  j.x = x; j.bias = bias; j.residual = residual; j.y = y; j.relu = relu;
  j.P = (long)p->oh * p->ow;
  tap_run *rows = malloc(sizeof(tap_run) * ((size_t)p->oh + p->ow));
  if (!rows) abort();
  tap_run *cols = rows + p->oh;
  const int nr = tap_runs(p->oh, p->h, p->kh, p->sh, p->ph, p->dh, rows), ncr = tap_runs(p->ow, p->w, p->kw, p->sw, p->pw, p->dw, cols);
  tap_pattern *pat = calloc((size_t)nr * ncr, sizeof(tap_pattern));
  int *idx = malloc(sizeof(int) * 2 * (size_t)nr * ncr * j.K);
  if (!pat || !idx) abort();
  /* output channels split into groups of panels when the columns are few (batch 1, small maps) */
  long blocks_all = 0;
  int npat = 0;
  for (int r = 0; r < nr; r++)
    for (int c = 0; c < ncr; c++) {
      tap_pattern *pt = &pat[npat];
      pt->r = r; pt->c = c;
      pt->kidx = idx + (long)npat * 2 * j.K;
      pt->koff = pt->kidx + j.K;
      int K = 0;
      for (int ci = 0; ci < p->cin; ci++)
        for (int ky = rows[r].k0; ky < rows[r].k1; ky++)
          for (int kx = cols[c].k0; kx < cols[c].k1; kx++) {
            pt->kidx[K] = (ci * p->kh + ky) * p->kw + kx;
            pt->koff[K] = (int)((long)ci * p->h * p->w + (long)ky * p->dh * p->w + kx * p->dw);
            K++;
          }
      pt->K = K;
      pt->ncols = (long)p->n * (rows[r].o1 - rows[r].o0) * (cols[c].o1 - cols[c].o0);
      if (K == 0) continue; /* outputs that see only padding: bias alone, written below */
      blocks_all += (pt->ncols + GG_NB - 1) / GG_NB;
      npat++;
    }
  int T = pool_threads(), panels = (j.M + j.mr - 1) / j.mr;
  j.mgroups = 1;
  if (blocks_all < 4L * T && T > 1) {
    j.mgroups = (int)((4L * T + blocks_all - 1) / (blocks_all ? blocks_all : 1));
    if (j.mgroups > panels) j.mgroups = panels;
  }
  long item = 0;
  for (int i = 0; i < npat; i++) {
    pat[i].item0 = item;
    item += (pat[i].ncols + GG_NB - 1) / GG_NB * j.mgroups;
  }
  j.nitems = item;
  j.npat = npat;
  j.rows = rows; j.cols = cols; j.pat = pat;
  if (npat < nr * ncr) {
    /* a kernel larger than padding + map: some outputs read no input at all (only the bias) */
    for (int r = 0; r < nr; r++)
      for (int c = 0; c < ncr; c++) {
        if (rows[r].k0 < rows[r].k1 && cols[c].k0 < cols[c].k1) continue;
        for (int b = 0; b < p->n; b++)
          for (int co = 0; co < p->cout; co++)
            for (int oy = rows[r].o0; oy < rows[r].o1; oy++)
              for (int ox = cols[c].o0; ox < cols[c].o1; ox++) {
                const long o = b * out->img + out->off + co * out->ch + oy * out->row + ox * out->col;
                float v = (bias ? bias[co] : 0.0f) + (residual ? residual[o] : 0.0f);
                y[o] = relu ? (v > 0.0f ? v : (v != v ? v : 0.0f)) : v;
              }
      }
  }
  atomic_init(&j.next, 0);
  if (j.nitems > 0) pool_run_dynamic(gg_task, &j, j.nitems < T ? (int)j.nitems : T);
  free(idx);
  free(pat);
  free(rows);
}


/* ---- gathered GEMM for backward weight (AVX-512) ------------------------------------------------
 *   dw[co][k] = sum_j dy[co][j] * X[k][j],   j = (image, output pixel), X[k][j] the input under tap k
 * as a GEMM with the reduction over j: A = dy, packed once into micro-kernel panels over all j
 * (shared by the threads); B panels (j x 32 taps) gathered from x per block of GG_KC values of j;
 * each work item owns a 32-column panel of dw (and, when there are few panels, a share of j whose
 * partial sums are added at the end). */
typedef struct {
  const conv_p *p;
  int K, M, mr, npanels, jsplits;
  long J, P;
  const float *x, *Ap;
  float *dw, *partials;
  const int *koff, *kdy, *kdx;
  atomic_long next;
} ggw_job;

typedef struct {
  const ggw_job *g;
  const float *dy;
  float *Ap;
} ggw_pack_job;

static void ggw_pack_task(void *ctx, int tid, int n) {
  ggw_pack_job *pj = ctx;
  const ggw_job *g = pj->g;
  const int mr = g->mr, M = g->M;
  const long P = g->P;
  long lo, hi;
  pool_split(g->p->n, tid, n, 1, &lo, &hi);
  for (int m0 = 0; m0 < M; m0 += mr) {
    float *panel = pj->Ap + (long)m0 * g->J;
    for (long b = lo; b < hi; b++) {
      float *d = panel + b * P * mr;
      for (int r = 0; r < mr; r++) {
        if (m0 + r >= M) {
          for (long q = 0; q < P; q++) d[q * mr + r] = 0.0f;
          continue;
        }
        const float *s = pj->dy + (b * M + m0 + r) * P;
        for (long q = 0; q < P; q++) d[q * mr + r] = s[q];
      }
    }
  }
}

__attribute__((target("avx512f"))) static void ggw_task(void *ctx, int tid, int n) {
  (void)n;
  ggw_job *g = ctx;
  const conv_p *p = g->p;
  const int K = g->K, M = g->M, mr = g->mr;
  const long HW = (long)p->h * p->w, P = g->P;
  float *Bp = grow(&gg_b_buf, (size_t)GG_KC * 32);
  float tile[14 * 32] __attribute__((aligned(64)));
  const __m512i vh = _mm512_set1_epi32(p->h), vw = _mm512_set1_epi32(p->w);
  for (;;) {
    long it = atomic_fetch_add_explicit(&g->next, 1, memory_order_relaxed);
    if (it >= (long)g->npanels * g->jsplits) break;
    int panel = (int)(it / g->jsplits), split = (int)(it % g->jsplits);
    long jlo, jhi;
    pool_split(g->J, split, g->jsplits, GG_KC, &jlo, &jhi);
    float *dw = split == 0 ? g->dw : g->partials + (long)(split - 1) * M * K;
    int k0 = panel * 32, kcols = K - k0 < 32 ? K - k0 : 32;
    (void)tid;
    /* taps of this panel (past K: never in bounds) */
    __m512i ko[2], kyv[2], kxv[2];
    for (int h = 0; h < 2; h++) {
      int tmpo[16], tmpy[16], tmpx[16];
      for (int i = 0; i < 16; i++) {
        int k = k0 + h * 16 + i;
        tmpo[i] = k < K ? g->koff[k] : 0;
        tmpy[i] = k < K ? g->kdy[k] : -(1 << 28);
        tmpx[i] = k < K ? g->kdx[k] : -(1 << 28);
      }
      ko[h] = _mm512_loadu_si512(tmpo); kyv[h] = _mm512_loadu_si512(tmpy); kxv[h] = _mm512_loadu_si512(tmpx);
    }
    for (long j0 = jlo; j0 < jhi; j0 += GG_KC) {
      int jc = jhi - j0 < GG_KC ? (int)(jhi - j0) : GG_KC;
      for (int jj = 0; jj < jc; jj++) {
        long j = j0 + jj, b = j / P, pix = j % P;
        int oy = (int)(pix / p->ow), ox = (int)(pix % p->ow);
        int iy0 = oy * p->sh - p->ph, ix0 = ox * p->sw - p->pw;
        const float *xb = g->x + b * p->cin * HW + (long)iy0 * p->w + ix0;
        const __m512i viy = _mm512_set1_epi32(iy0), vix = _mm512_set1_epi32(ix0);
        for (int h = 0; h < 2; h++) {
          __mmask16 m = _mm512_cmplt_epu32_mask(_mm512_add_epi32(viy, kyv[h]), vh) & _mm512_cmplt_epu32_mask(_mm512_add_epi32(vix, kxv[h]), vw);
          /* masked lanes are not read: xb + koff may point outside x only where the mask is off */
          _mm512_store_ps(Bp + (long)jj * 32 + h * 16, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, ko[h], xb, 4));
        }
      }
      float beta = j0 == jlo ? 0.0f : 1.0f;
      for (int m0 = 0; m0 < M; m0 += mr) {
        const float *ap = g->Ap + (long)m0 * g->J + j0 * mr;
        int rows = M - m0 < mr ? M - m0 : mr;
        float *c = dw + (long)m0 * K + k0;
        if (rows == mr && kcols == 32) {
          sgemm_kernel(M, jc, ap, Bp, c, K, beta);
        } else {
          sgemm_kernel(M, jc, ap, Bp, tile, 32, 0.0f);
          for (int r = 0; r < rows; r++)
            for (int q = 0; q < kcols; q++) c[(long)r * K + q] = beta == 0.0f ? tile[r * 32 + q] : c[(long)r * K + q] + tile[r * 32 + q];
        }
      }
    }
    if (jlo >= jhi) /* an empty share still owns its partial panel */
      for (int r = 0; r < M; r++) memset(dw + (long)r * K + k0, 0, sizeof(float) * kcols);
  }
}

/* Gathers cost the same per 32 taps whatever cout is; from 64 output channels on they are small next
 * to the FMAs (measured: 64 x 7x7 1.7x, ResNet-18's 4x4 and 2x2 maps 1.5-1.8x faster than the q-grid
 * dot products or im2col; with 16 or 32 channels those win). Strided layers with fewer than 64 input
 * channels whose q grid wastes little keep the q grid (ResNet-20's 32 -> 64 stride-2 layer, 14x14 ->
 * 7x7: 2.54-2.62 -> 2.03-2.08 ms; ResNet-18's 7x7 stem on 32x32: 2.67-2.83 -> 2.41-2.44 ms, calls
 * alternating in one process). RESNET_GGW=0 turns it off. */
int ggw_ok(const conv_p *p) {
  static int off = -1;
  if (env_zero("RESNET_GGW", &off)) return 0;
  return p->cout >= 64 && gg_ok(p) && (long)p->n * p->oh * p->ow < (1L << 31) / 16 && !(p->sh > 1 && p->cin < 64 && implicit_ok(p, 70));
}

void ggw_backward_weight(float *dw, const float *x, const float *dy, const conv_p *p) {
  static _Thread_local buf_t ggw_a_buf;
  ggw_job g;
  memset(&g, 0, sizeof g);
  g.p = p;
  g.K = p->cin * p->kh * p->kw;
  g.M = p->cout;
  g.mr = sgemm_mr(g.M);
  g.P = (long)p->oh * p->ow;
  g.J = (long)p->n * g.P;
  g.x = x; g.dw = dw;
  int *koff = malloc(sizeof(int) * 3 * (size_t)g.K);
  if (!koff) abort();
  int *kdy = koff + g.K, *kdx = kdy + g.K;
  for (int k = 0; k < g.K; k++) {
    int c = k / (p->kh * p->kw), t = k % (p->kh * p->kw), ky = t / p->kw, kx = t % p->kw;
    kdy[k] = ky * p->dh; kdx[k] = kx * p->dw;
    koff[k] = (int)((long)c * p->h * p->w + (long)kdy[k] * p->w + kdx[k]);
  }
  g.koff = koff; g.kdy = kdy; g.kdx = kdx;
  const int Mp = (g.M + g.mr - 1) / g.mr * g.mr;
  float *Ap = grow(&ggw_a_buf, (size_t)Mp * g.J);
  ggw_pack_job pj = {&g, dy, Ap};
  pool_run_n(ggw_pack_task, &pj, p->n);
  g.Ap = Ap;
  g.npanels = (g.K + 31) / 32;
  int T = pool_threads();
  g.jsplits = 1;
  if (T > 1 && g.npanels < 4 * T) {
    long blocks = (g.J + GG_KC - 1) / GG_KC;
    g.jsplits = (4 * T + g.npanels - 1) / g.npanels;
    if (g.jsplits > blocks) g.jsplits = (int)blocks;
    if (g.jsplits < 1) g.jsplits = 1;
  }
  if (g.jsplits > 1) {
    g.partials = malloc(sizeof(float) * (size_t)(g.jsplits - 1) * g.M * g.K);
    if (!g.partials) abort();
  }
  atomic_init(&g.next, 0);
  long items = (long)g.npanels * g.jsplits;
  pool_run_dynamic(ggw_task, &g, items < T ? (int)items : T);
  long wn = (long)g.M * g.K;
  for (int s = 1; s < g.jsplits; s++) {
    const float *src = g.partials + (long)(s - 1) * wn;
    for (long i = 0; i < wn; i++) dw[i] += src[i];
  }
  free(g.partials);
  free(koff);
}


/* ---- backward weight, channels-last outer products (AVX-512) -------------------------------------
 * For 16/32/48/64 channels (ResNet-20's layers). Per image, the input is copied into zero-padded
 * channels-last planes X[(r*Wq + s)*cin + c] and dy onto the q grid as dyT[q*cout + co] (zeros in
 * the junk columns of each row), both with 16x16 in-register transposes. Then for every tap
 * t = (ky, kx) and 16x16 block of (c, co):
 *   dw[co][c][t] += sum_q X[(q + ky*Wq + kx)*cin + c] * dyT[q*cout + co]
 * a register tile of 16 input channels (broadcast from one contiguous 64-byte row) x 16 output
 * channels (one vector), 16 FMAs per q. Stride-2 layers take the q grid's phase planes (conv_qgrid.c)
 * channels-last, one per phase: tap (ky, kx) reads phase (ky % 2, kx % 2) shifted by
 * (ky / 2) * Wq + kx / 2, and the q grid is the phases' width. The images form fixed blocks (of
 * BWT_IMAGES, at most BWT_MAX_BLOCKS blocks) handed out to the threads, each block with its own
 * partial sums [tap][c][co], added in block order at the end: the bits do not depend on the thread
 * count. */
typedef struct {
  const conv_p *p;
  const float *x, *dy;
  float *partials; /* per block of images: kk * cin * cout floats */
  int Hq, Wq, Lq, nblocks;
  igeo g; /* strided: the phase planes' geometry */
  atomic_long next;
} bwt_job;

__attribute__((target("avx512f"), noinline)) static void bwt16(long Q, const float *xq, long xs, const float *dq, long ds,
                                                              float *acc, long lda) {
  __m512 c[16];
  _Pragma("GCC unroll 16") for (int r = 0; r < 16; r++) c[r] = _mm512_setzero_ps();
  for (long q = 0; q < Q; q++, xq += xs, dq += ds) {
    const __m512 b = _mm512_load_ps(dq);
    _Pragma("GCC unroll 16") for (int r = 0; r < 16; r++) c[r] = _mm512_fmadd_ps(_mm512_set1_ps(xq[r]), b, c[r]);
  }
  _Pragma("GCC unroll 16") for (int r = 0; r < 16; r++) _mm512_storeu_ps(acc + r * lda, _mm512_add_ps(_mm512_loadu_ps(acc + r * lda), c[r]));
}

/* dst[i*ld + c] = src[c*ss + i] for 16 channels c and cnt (<= 16) positions i: one 16x16 transpose */
__attribute__((target("avx512f"))) static void t16_store(const float *src, long ss, int cnt, float *dst, long ld) {
  const __mmask16 m = (__mmask16)(cnt >= 16 ? 0xFFFFu : (1u << cnt) - 1);
  __m512 r[16];
  for (int c = 0; c < 16; c++) r[c] = _mm512_maskz_loadu_ps(m, src + c * ss);
  transpose16(r);
  for (int i = 0; i < cnt; i++) _mm512_store_ps(dst + i * ld, r[i]);
}

static _Thread_local buf_t bwt_x_buf, bwt_d_buf;
#define BWT_IMAGES 8      /* images per block of partial sums */
#define BWT_MAX_BLOCKS 32 /* and at most this many blocks (larger batches: larger blocks) */

/* Floats per channels-last phase plane of the strided case: the plane and a zeroed tail that the last
 * q's shifted reads reach (up to (kh-1)/sh rows and (kw-1)/sw columns past the grid's end). */
static long bwt_phase_cl(const bwt_job *j) { return (j->g.plane + j->Wq + 16) * j->p->cin; }

/* X for a stride-2 layer: image xb's phase planes channels-last, straight from its rows. Per input row
 * and 16-channel block, 16 columns at a time: one 16x16 transpose (t16 rows), and each column's 16
 * channels stored where its phase plane has it (padded column u = ix + pw: phase u % 2, column
 * u / 2). Everything the rows do not reach (the padding, the tail) is zero. */
__attribute__((target("avx512f"))) static void bwt_phases(const bwt_job *j, const float *xb, float *X) {
  const conv_p *p = j->p;
  const long cl = bwt_phase_cl(j), HW = (long)p->h * p->w;
  const int Wq = j->Wq, Hq = j->Hq, cin = p->cin;
  memset(X, 0, sizeof(float) * (size_t)(4 * cl));
  for (int iy = 0; iy < p->h; iy++) {
    const int ty = iy + p->ph, r = ty >> 1;
    if (r >= Hq) continue;
    float *row = X + (long)(ty & 1) * 2 * cl + (long)r * Wq * cin; /* phase (ty % 2, 0); px = 1 is cl further */
    for (int c0 = 0; c0 < cin; c0 += 16)
      for (int ix0 = 0; ix0 < p->w; ix0 += 16) {
        const int cnt = p->w - ix0 < 16 ? p->w - ix0 : 16;
        const __mmask16 m = (__mmask16)(cnt >= 16 ? 0xFFFFu : (1u << cnt) - 1);
        __m512 v[16];
        for (int c = 0; c < 16; c++) v[c] = _mm512_maskz_loadu_ps(m, xb + (c0 + c) * HW + (long)iy * p->w + ix0);
        transpose16(v); /* v[i]: column ix0 + i, 16 channels */
        for (int i = 0; i < cnt; i++) {
          const int u = ix0 + i + p->pw;
          if (u >> 1 < Wq) _mm512_storeu_ps(row + (long)(u & 1) * cl + (long)(u >> 1) * cin + c0, v[i]);
        }
      }
  }
}

__attribute__((target("avx512f"))) static void bwt_task(void *ctx, int tid, int n) {
  (void)n;
  bwt_job *j = ctx;
  const conv_p *p = j->p;
  const int cin = p->cin, cout = p->cout, kk = p->kh * p->kw, Wq = j->Wq, Hq = j->Hq, Lq = j->Lq;
  const int strided = p->sh > 1 || p->sw > 1;
  const long xsz = strided ? j->g.nph * bwt_phase_cl(j) : ((long)Hq * Wq + p->kw + 16) * cin, dsz = (long)Lq * cout;
  float *X = grow(&bwt_x_buf, (size_t)xsz), *D = grow(&bwt_d_buf, (size_t)dsz);
  const long HW = (long)p->h * p->w, P = (long)p->oh * p->ow;
  for (;;) {
    /* units are fixed blocks of images, each summing into its own slot (deterministic bits) */
    const long blk = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
    if (blk >= j->nblocks) break;
    float *acc = j->partials + blk * kk * cin * cout;
    long b0, b1;
    pool_split(p->n, (int)blk, j->nblocks, 1, &b0, &b1);
    for (long b = b0; b < b1; b++) {
      const float *xb = j->x + b * cin * HW;
      if (strided) bwt_phases(j, xb, X);
      else { /* X: zero, then the image's rows transposed in 16-channel blocks */
        memset(X, 0, sizeof(float) * xsz);
        for (int iy = 0; iy < p->h; iy++) {
          float *row = X + ((long)(iy + p->ph) * Wq + p->pw) * cin;
          for (int c0 = 0; c0 < cin; c0 += 16)
            for (int ix = 0; ix < p->w; ix += 16)
              t16_store(xb + (long)c0 * HW + (long)iy * p->w + ix, HW, p->w - ix < 16 ? p->w - ix : 16, row + (long)ix * cin + c0, cin);
        }
      }
      /* dyT on the q grid, zero junk columns */
      const float *db = j->dy + b * cout * P;
      for (int oy = 0; oy < p->oh; oy++) {
        float *row = D + (long)oy * Wq * cout;
        for (int co0 = 0; co0 < cout; co0 += 16)
          for (int ox = 0; ox < p->ow; ox += 16)
            t16_store(db + (long)co0 * P + (long)oy * p->ow + ox, P, p->ow - ox < 16 ? p->ow - ox : 16, row + (long)ox * cout + co0, cout);
        memset(row + (long)p->ow * cout, 0, sizeof(float) * (Wq - p->ow) * cout);
      }
      for (int t = 0; t < kk; t++) {
        const int ky = t / p->kw, kx = t % p->kw;
        /* strided: phase (ky % 2, kx % 2), shifted by (ky / 2) rows and (kx / 2) columns */
        const float *xt = strided ? X + ((ky % 2) * 2 + kx % 2) * bwt_phase_cl(j) + ((long)(ky / 2) * Wq + kx / 2) * cin
                                  : X + ((long)ky * p->dh * Wq + (long)kx * p->dw) * cin;
        for (int c0 = 0; c0 < cin; c0 += 16)
          for (int co0 = 0; co0 < cout; co0 += 16)
            bwt16(Lq, xt + c0, cin, D + co0, cout, acc + ((long)t * cin + c0) * cout + co0, cout);
      }
    }
  }
}

/* Groups 1, channel counts multiples of 16 up to 64 (wider layers take the gathered GEMM); stride 1, or
 * stride 2 undilated with padding (the phase planes). */
int bwt_ok(const conv_p *p) {
  static int off = -1;
  if (env_zero("RESNET_BWT", &off)) return 0;
  if (p->groups != 1 || strcmp(sgemm_isa(), "avx512") != 0 || p->n < 1 || no_implicit()) return 0;
  if (p->cin % 16 || p->cout % 16 || p->cin > 64 || p->cout > 64) return 0;
  if (p->sh == 2 && p->sw == 2) {
    igeo g;
    igeo_geom(&g, p);
    /* (a 1x1 kernel reads one phase of four: its gradient is a plain GEMM, elsewhere); X, the four
     * channels-last phase planes with their tails (bwt_phase_cl), within the stride-1 case's bound */
    return p->kh * p->kw > 1 && p->dh == 1 && p->dw == 1 && p->ph >= 0 && p->pw >= 0 &&
           4 * (g.plane + g.Wq + 16) * p->cin < (1L << 24);
  }
  if (p->sh != 1 || p->sw != 1) return 0;
  long Wq = p->ow + (long)(p->kw - 1) * p->dw, Hq = p->oh + (long)(p->kh - 1) * p->dh;
  /* the planes are the padded input: ph/pw as given, and no output reading past them */
  return p->ph >= 0 && p->pw >= 0 && Wq == p->w + 2L * p->pw && Hq == p->h + 2L * p->ph && Hq * Wq * p->cin < (1L << 24);
}

void bwt_backward_weight(float *dw, const float *x, const float *dy, const conv_p *p) {
  bwt_job j;
  memset(&j, 0, sizeof j);
  j.p = p; j.x = x; j.dy = dy;
  j.Wq = p->ow + (p->kw - 1) * p->dw;
  j.Hq = p->oh + (p->kh - 1) * p->dh;
  if (p->sh > 1 || p->sw > 1) { /* the phase planes' grid */
    igeo_geom(&j.g, p);
    j.Wq = j.g.Wq;
    j.Hq = j.g.Hq;
  }
  j.Lq = p->oh * j.Wq;
  const int T = pool_threads(), kk = p->kh * p->kw;
  /* fixed blocks of images: the bits do not depend on the thread count */
  const long blocks = (p->n + BWT_IMAGES - 1) / BWT_IMAGES;
  j.nblocks = (int)(blocks < BWT_MAX_BLOCKS ? blocks : BWT_MAX_BLOCKS);
  const int used = j.nblocks;
  const long per = (long)kk * p->cin * p->cout;
  j.partials = calloc((size_t)per * used, sizeof(float));
  if (!j.partials) abort();
  atomic_init(&j.next, 0);
  pool_run_dynamic(bwt_task, &j, used < T ? used : T);
  /* sum the blocks in order, then [t][c][co] -> [co][c][t] */
  for (int s = 1; s < used; s++)
    for (long i = 0; i < per; i++) j.partials[i] += j.partials[(long)s * per + i];
  for (int t = 0; t < kk; t++)
    for (int c = 0; c < p->cin; c++)
      for (int co = 0; co < p->cout; co++) dw[((long)co * p->cin + c) * kk + t] = j.partials[((long)t * p->cin + c) * p->cout + co];
  free(j.partials);
}

#endif
