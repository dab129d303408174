/* Implicit-GEMM convolution on the q grid (AVX-512): no im2col. Also the phase planes that the
 * pixel-row kernels read, and the dot-product backward weight.
 *
 * The input of each image is rearranged once into sh*sw "phase" planes per channel, zero-padded:
 *   ph[py][px][c][r][s] = xpad[c][r*sh + py][s*sw + px],   r < Hq = oh + (kh-1)*dh/sh, s < Wq = ow + (kw-1)*dw/sw
 * so that tap (ky, kx) of channel c at output (oy, ox) is a fixed shift of the flat index q = oy*Wq + ox:
 *   xpad[c][oy*sh + ky*dh][ox*sw + kx*dw] = ph[(ky*dh)%sh][(kx*dw)%sw][c][q + ((ky*dh)/sh)*Wq + (kx*dw)/sw].
 * The GEMM's B operand is then read straight from these planes (off[k] + q, k = (c*kh+ky)*kw+kx): every
 * output row of the grid carries Wq - ow junk columns that are computed and dropped. No patch matrix
 * is written or read, so small channel counts (where im2col + packing cost as much as the FMAs) run
 * near the micro-kernel's speed.
 *   forward      out[co][q]  = sum_k w[co][k] * B[k][q]        (MR x 32 register tiles over q, stored with the
 *                                                               bias/residual/relu epilogue straight into NCHW)
 *   backward in  stride 1: a forward convolution of dy with the flipped, transposed kernel; strided: per phase
 *                (a, b) of dx, the taps that reach it, over a zero-padded copy of dy
 *   backward w   dw[co][k]  = sum_q dyq[co][q] * B[k][q]        (4 x 6 dot-product tiles along q; dyq is dy on
 *                                                               the q grid with zeros in the junk columns)
 * Caveat: in backward weight the junk columns multiply real input values by dy = 0, so an Inf in x can
 * give NaN in a dw entry that the reference leaves finite (a non-finite activation has already made the
 * loss non-finite). */
#include "conv_internal.h"
#include "gemm.h"
#include "pool.h"
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)

void igeo_geom(igeo *g, const conv_p *p) {
  g->p = p;
  g->Hq = p->oh + ((p->kh - 1) * p->dh) / p->sh;
  g->Wq = p->ow + ((p->kw - 1) * p->dw) / p->sw;
  g->nph = p->sh * p->sw;
  g->plane = (long)g->Hq * g->Wq;
  g->img = (long)g->nph * p->cin * g->plane;
  g->Lq = p->oh * g->Wq;
  g->ntiles = (g->Lq + IT - 1) / IT;
  g->off = NULL;
}

int igeo_init(igeo *g, const conv_p *p) {
  igeo_geom(g, p);
  int K = p->cin * p->kh * p->kw;
  g->off = malloc(sizeof(int) * (K + 8));
  if (!g->off) abort();
  for (int c = 0; c < p->cin; c++)
    for (int ky = 0; ky < p->kh; ky++)
      for (int kx = 0; kx < p->kw; kx++) {
        int yy = ky * p->dh, xx = kx * p->dw;
        int phs = (yy % p->sh) * p->sw + xx % p->sw;
        g->off[(c * p->kh + ky) * p->kw + kx] = (int)(((long)phs * p->cin + c) * g->plane + (long)(yy / p->sh) * g->Wq + xx / p->sw);
      }
  return K;
}

/* Phase planes of one image (x: cin planes of h*w) into dst (g->img floats + a zeroed tail). */
/* Deals a row of w floats out to two phase rows: x[ix] -> (t & 1 ? d1 : d0)[t >> 1], t = ix + pw, columns < Wq. */
__attribute__((target("avx512f"))) static void deal_row2(const float *s, int w, int pw, float *d0, float *d1, int Wq) {
  const __m512i ie = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i io = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
  for (int i = 0; i < w; i += 32) {
    int cnt = w - i < 32 ? w - i : 32;
    __m512 a = _mm512_maskz_loadu_ps((__mmask16)(cnt >= 16 ? 0xFFFF : (1u << cnt) - 1), s + i);
    __m512 b = _mm512_maskz_loadu_ps((__mmask16)(cnt >= 32 ? 0xFFFF : cnt > 16 ? (1u << (cnt - 16)) - 1 : 0), s + i + 16);
    __m512 ev = _mm512_permutex2var_ps(a, ie, b), od = _mm512_permutex2var_ps(a, io, b);
    int ne = (cnt + 1) / 2, no = cnt / 2;
    int te = i + pw, to = i + 1 + pw;
    int ce = te >> 1, co = to >> 1;
    int me = Wq - ce < ne ? Wq - ce : ne, mo = Wq - co < no ? Wq - co : no;
    if (me > 0) _mm512_mask_storeu_ps((te & 1 ? d1 : d0) + ce, (__mmask16)((1u << me) - 1), ev);
    if (mo > 0) _mm512_mask_storeu_ps((to & 1 ? d1 : d0) + co, (__mmask16)((1u << mo) - 1), od);
  }
}

/* Region (phase, c) goes to dst + (phase*cin + c) * rstride; channels [c_lo, c_hi) only. */
void build_phases_range(const igeo *g, const float *x, float *dst, long rstride, int c_lo, int c_hi) {
  const conv_p *p = g->p;
  if (p->sh > 1 || p->sw > 1) {
    /* strided: zero every plane, then deal each input row out to its phases (one pass over x) */
    for (int ph = 0; ph < g->nph; ph++)
      for (int c = c_lo; c < c_hi; c++) memset(dst + ((long)ph * p->cin + c) * rstride, 0, sizeof(float) * g->plane);
    for (int c = c_lo; c < c_hi; c++) {
      const float *xc = x + (long)c * p->h * p->w;
      for (int iy = 0; iy < p->h; iy++) {
        int ty = iy + p->ph;
        if (ty < 0) continue;
        int py = ty % p->sh, r = ty / p->sh;
        if (r >= g->Hq) continue;
        const float *s = xc + (long)iy * p->w;
        float *d0 = dst + ((long)(py * p->sw) * p->cin + c) * rstride + (long)r * g->Wq;
        if (p->sw == 2 && p->pw >= 0) {
          deal_row2(s, p->w, p->pw, d0, d0 + (long)p->cin * rstride, g->Wq);
        } else {
          for (int ix = 0; ix < p->w; ix++) {
            int tx = ix + p->pw;
            if (tx < 0 || tx / p->sw >= g->Wq) continue;
            d0[(long)(tx % p->sw) * p->cin * rstride + tx / p->sw] = s[ix];
          }
        }
      }
    }
    return;
  }
  for (int py = 0; py < p->sh; py++)
    for (int px = 0; px < p->sw; px++)
      for (int c = c_lo; c < c_hi; c++) {
        float *d = dst + ((long)(py * p->sw + px) * p->cin + c) * rstride;
        const float *xc = x + (long)c * p->h * p->w;
        /* columns s with 0 <= s*sw + px - pw < w */
        int shift = px - p->pw, s0, s1;
        col_range(shift, p->sw, p->w, g->Wq, &s0, &s1);
        for (int r = 0; r < g->Hq; r++, d += g->Wq) {
          int iy = r * p->sh + py - p->ph;
          if (iy < 0 || iy >= p->h) {
            memset(d, 0, sizeof(float) * g->Wq);
            continue;
          }
          fill_row(d, xc + (long)iy * p->w + shift, g->Wq, s0, s1, p->sw);
        }
      }
}
void build_phases_rs(const igeo *g, const float *x, float *dst, long rstride) {
  build_phases_range(g, x, dst, rstride, 0, g->p->cin);
}
void build_phases(const igeo *g, const float *x, float *dst) { build_phases_rs(g, x, dst, g->plane); }

/* The q-grid tile: MR output channels x 32 columns over all K, in accumulators c0 (columns 0-15) and c1
 * (declared by the caller). */
#define IFWD_ACCUMULATE(MR)                                                                                            \
    _Pragma("GCC unroll 14") for (int r = 0; r < MR; r++) c0[r] = c1[r] = _mm512_setzero_ps();                         \
    for (int k = 0; k < K; k++) {                                                                                      \
      const float *bp = base + off[k];                                                                                 \
      __m512 b0 = _mm512_loadu_ps(bp), b1 = _mm512_loadu_ps(bp + 16);                                                  \
      _Pragma("GCC unroll 14") for (int r = 0; r < MR; r++) {                                                          \
        __m512 a = _mm512_set1_ps(Ap[r]);                                                                              \
        c0[r] = _mm512_fmadd_ps(a, b0, c0[r]);                                                                         \
        c1[r] = _mm512_fmadd_ps(a, b1, c1[r]);                                                                         \
      }                                                                                                                \
      Ap += MR;                                                                                                        \
    }

#define DEF_IFWD(MR)                                                                                                   \
  __attribute__((target("avx512f"), noinline)) static void ifwd##MR(int K, const float *Ap, const float *base, const int *off,  \
                                                          float *t) {                                                 \
    __m512 c0[MR], c1[MR];                                                                                             \
    IFWD_ACCUMULATE(MR)                                                                                                \
    _Pragma("GCC unroll 14") for (int r = 0; r < MR; r++) {                                                            \
      _mm512_storeu_ps(t + r * IT, c0[r]);                                                                             \
      _mm512_storeu_ps(t + r * IT + 16, c1[r]);                                                                        \
    }                                                                                                                  \
  }
DEF_IFWD(8)
DEF_IFWD(14)

/* The same tile when its 32 columns are 32 consecutive outputs (no junk columns, tile inside the
 * map): the epilogue (bias, residual, relu) runs on the accumulators and stores straight into the
 * output rows (row r at y + r * ych); y may be the residual itself. */
#define DEF_IFWD_DIRECT(MR)                                                                                            \
  __attribute__((target("avx512f"), noinline)) static void ifwd##MR##d(int K, const float *Ap, const float *base,        \
                                                                     const int *off, float *y, const float *res,      \
                                                                     long ych, const float *bias, int relu, int rows) { \
    __m512 c0[MR], c1[MR];                                                                                             \
    IFWD_ACCUMULATE(MR)                                                                                                \
    const __m512 zero = _mm512_setzero_ps();                                                                           \
    _Pragma("GCC unroll 14") for (int r = 0; r < MR; r++) {                                                            \
      if (r >= rows) break;                                                                                            \
      float *yr = y + r * ych;                                                                                         \
      __m512 v0 = c0[r], v1 = c1[r];                                                                                   \
      if (bias) {                                                                                                      \
        const __m512 vb = _mm512_set1_ps(bias[r]);                                                                     \
        v0 = _mm512_add_ps(v0, vb);                                                                                    \
        v1 = _mm512_add_ps(v1, vb);                                                                                    \
      }                                                                                                                \
      if (res) {                                                                                                       \
        v0 = _mm512_add_ps(v0, _mm512_loadu_ps(res + r * ych));                                                        \
        v1 = _mm512_add_ps(v1, _mm512_loadu_ps(res + r * ych + 16));                                                   \
      }                                                                                                                \
      if (relu) {                                                                                                      \
        v0 = _mm512_max_ps(zero, v0);                                                                                  \
        v1 = _mm512_max_ps(zero, v1);                                                                                  \
      }                                                                                                                \
      _mm512_storeu_ps(yr, v0);                                                                                        \
      _mm512_storeu_ps(yr + 16, v1);                                                                                   \
    }                                                                                                                  \
  }
DEF_IFWD_DIRECT(8)
DEF_IFWD_DIRECT(14)

typedef struct ifwd_job ifwd_job;
struct ifwd_job {
  igeo g;
  int K, M, mr;
  const float *Ap, *x, *bias, *residual, *phases;
  float *y;
  int relu, by_image, grain;
  /* output (oy, ox) of channel co, image b goes to y[b*y_img + co*y_ch + (oy*ysd + y0)*OW + ox*xsd + x0] */
  long y_img, y_ch;
  int OW, ysd, xsd, y0, x0;
  /* input planes of image b (g.img floats) */
  void (*build)(const ifwd_job *j, long b, float *dst);
  long x_img;
  int pad_t, pad_l, src_h, src_w; /* for build_padded */
  int mgroups; /* > 1: output channels split into this many groups as separate work items */
  int direct; /* the input planes are x itself (1x1, stride 1, no padding, whole tiles): no copy */
  atomic_long next; /* work items are handed out dynamically: a thread slowed by other processes takes fewer */
};

static void build_default(const ifwd_job *j, long b, float *dst) { build_phases(&j->g, j->x + b * j->x_img, dst); }

/* Zero-padded copy of an image's planes: dst[c][i][jj] = x[c][i - pad_t][jj - pad_l] (g.Hq x g.Wq, cin = g.p->cin). */
static void build_padded(const ifwd_job *j, long b, float *dst) {
  const igeo *g = &j->g;
  const float *x = j->x + b * j->x_img;
  /* copy columns [pad_l, pad_l + src_w) clipped to [0, Wq) */
  int s0 = j->pad_l, s1 = j->pad_l + j->src_w;
  if (s0 < 0) s0 = 0;
  if (s1 > g->Wq) s1 = g->Wq;
  for (int c = 0; c < g->p->cin; c++) {
    const float *xc = x + (long)c * j->src_h * j->src_w;
    float *d = dst + (long)c * g->plane;
    for (int i = 0; i < g->Hq; i++, d += g->Wq) {
      int iy = i - j->pad_t;
      if (iy < 0 || iy >= j->src_h || s1 <= s0) {
        memset(d, 0, sizeof(float) * g->Wq);
        continue;
      }
      for (int q = 0; q < s0; q++) d[q] = 0.0f;
      memcpy(d + s0, xc + (long)iy * j->src_w + (s0 - j->pad_l), sizeof(float) * (s1 - s0));
      for (int q = s1; q < g->Wq; q++) d[q] = 0.0f;
    }
  }
}

static _Thread_local buf_t ph_buf, wp_buf, ph_all_buf;

/* All tiles of items [lo, hi) (item = image*ntiles + tile); ph points at the image's phases. */
__attribute__((target("avx512f"))) static void ifwd_tiles(const ifwd_job *j, int b, int t0, int t1, const float *ph, int m_lo, int m_hi) {
  const igeo *g = &j->g;
  const conv_p *p = g->p;
  float t[14 * IT] __attribute__((aligned(64)));
  for (int tile = t0; tile < t1; tile++) {
    int q0 = tile * IT;
    /* segments of the tile that are real outputs: tile column tc, length len, output index o */
    int seg_tc[IT], seg_len[IT], seg_o[IT], ns = 0;
    for (int q = q0; q < q0 + IT && q < j->g.Lq;) {
      int oy = q / g->Wq, ox = q % g->Wq;
      int rowend = q - ox + g->Wq;
      if (ox < p->ow) {
        int len = p->ow - ox;
        if (q + len > q0 + IT) len = q0 + IT - q;
        seg_tc[ns] = q - q0; seg_len[ns] = len; seg_o[ns] = (oy * j->ysd + j->y0) * j->OW + ox * j->xsd + j->x0; ns++;
      }
      q = rowend;
    }
    const float *base = ph + q0;
    for (int m0 = m_lo; m0 < m_hi; m0 += j->mr) {
      const float *ap = j->Ap + (long)m0 * j->K;
      /* the epilogue's rows lie in mr different planes, too many streams for the hardware prefetcher:
       * fetch the residual and output lines while the tile computes (ResNet-50 batch 8: the 64 -> 256
       * expansions + shortcut on 56x56 maps 10-13 -> 8 ms) */
      if (j->residual && j->xsd == 1) {
        int rows = j->M - m0 < j->mr ? j->M - m0 : j->mr;
        for (int r = 0; r < rows; r++) {
          const long ob = (long)b * j->y_img + (long)(m0 + r) * j->y_ch;
          for (int s = 0; s < ns; s++) prefetch_row(j->residual, j->y, ob + seg_o[s], seg_len[s]);
        }
      }
      int rows = j->M - m0 < j->mr ? j->M - m0 : j->mr;
      if (ns == 1 && seg_len[0] == IT && seg_tc[0] == 0 && j->xsd == 1) {
        /* 32 consecutive outputs: epilogue from the registers */
        const long ob = (long)b * j->y_img + (long)m0 * j->y_ch + seg_o[0];
        (j->mr == 8 ? ifwd8d : ifwd14d)(j->K, ap, base, g->off, j->y + ob, j->residual ? j->residual + ob : NULL, j->y_ch,
                                        j->bias ? j->bias + m0 : NULL, j->relu, rows);
        continue;
      }
      if (j->mr == 8) ifwd8(j->K, ap, base, g->off, t);
      else ifwd14(j->K, ap, base, g->off, t);
      for (int r = 0; r < rows; r++) {
        int co = m0 + r;
        long ob = (long)b * j->y_img + (long)co * j->y_ch;
        float *yo = j->y + ob;
        const float *ro = j->residual ? j->residual + ob : NULL;
        const float *tr = t + r * IT;
        float bv = j->bias ? j->bias[co] : 0.0f;
        if (j->xsd == 2 && !ro) {
          /* every other element: expand 8 values to the even lanes of a 16-lane masked store */
          const __m512i idx = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
          const __m512 vb = _mm512_set1_ps(bv), zero = _mm512_setzero_ps();
          for (int s = 0; s < ns; s++) {
            const float *src = tr + seg_tc[s];
            float *d = yo + seg_o[s];
            for (int i = 0; i < seg_len[s]; i += 8) {
              int cnt = seg_len[s] - i < 8 ? seg_len[s] - i : 8;
              __m512 v = _mm512_add_ps(_mm512_permutexvar_ps(idx, _mm512_maskz_loadu_ps((__mmask16)((1u << cnt) - 1), src + i)), vb);
              if (j->relu) v = _mm512_max_ps(zero, v);
              _mm512_mask_storeu_ps(d + 2 * i, (__mmask16)(0x5555u & ((1u << (2 * cnt)) - 1)), v);
            }
          }
          continue;
        }
        if (j->xsd != 1) {
          for (int s = 0; s < ns; s++)
            for (int i = 0; i < seg_len[s]; i++) {
              long o = seg_o[s] + (long)i * j->xsd;
              float v = tr[seg_tc[s] + i] + bv + (ro ? ro[o] : 0.0f);
              yo[o] = j->relu ? (v > 0.0f ? v : (v != v ? v : 0.0f)) : v;
            }
          continue;
        }
        /* explicit vectors, not loops left to the vectoriser: y may be the residual buffer itself
         * (the plan adds the shortcut in place), and GCC's runtime alias check then falls back to
         * scalar code; reading a vector of the residual before storing the same vector is safe */
        const __m512 vb = _mm512_set1_ps(bv), zero = _mm512_setzero_ps();
        for (int s = 0; s < ns; s++) {
          const float *src = tr + seg_tc[s];
          float *d = yo + seg_o[s];
          const float *rr = ro ? ro + seg_o[s] : NULL;
          int len = seg_len[s];
          for (int i = 0; i < len; i += 16) {
            int cnt = len - i < 16 ? len - i : 16;
            __mmask16 m = (__mmask16)(cnt == 16 ? 0xFFFFu : (1u << cnt) - 1);
            __m512 v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, src + i), vb);
            if (rr) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, rr + i));
            if (j->relu) v = _mm512_max_ps(zero, v); /* NaN stays NaN: max returns its second operand */
            _mm512_mask_storeu_ps(d + i, m, v);
          }
        }
      }
    }
  }
}

static void ifwd_task(void *ctx, int tid, int n) {
  ifwd_job *j = ctx;
  const igeo *g = &j->g;
  if (j->by_image) {
    float *ph = j->direct ? NULL : grow(&ph_buf, (size_t)g->img + PH_TAIL(g));
    if (ph) memset(ph + g->img, 0, sizeof(float) * PH_TAIL(g));
    for (;;) {
      long b = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
      if (b >= g->p->n) break;
      const float *src = j->x + b * j->x_img;
      if (!j->direct) {
        j->build(j, b, ph);
        src = ph;
      }
      ifwd_tiles(j, (int)b, 0, g->ntiles, src, 0, j->M);
    }
  } else {
    if (j->mgroups > 1) {
      /* few tiles (batch 1, small maps): items are (tile, group of output channels) */
      long total = (long)g->p->n * g->ntiles * j->mgroups;
      int panels = (j->M + j->mr - 1) / j->mr;
      for (;;) {
        long it = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (it >= total) break;
        long bt = it / j->mgroups;
        int mg = (int)(it % j->mgroups), b = (int)(bt / g->ntiles), t0 = (int)(bt % g->ntiles);
        long plo, phi;
        pool_split(panels, mg, j->mgroups, 1, &plo, &phi);
        int m_lo = (int)plo * j->mr, m_hi = (int)phi * j->mr < j->M ? (int)phi * j->mr : j->M;
        if (m_lo < m_hi) ifwd_tiles(j, b, t0, t0 + 1, j->phases + (long)b * g->img, m_lo, m_hi);
      }
      return;
    }
    long total = (long)g->p->n * g->ntiles;
    for (;;) {
      long it = atomic_fetch_add_explicit(&j->next, j->grain, memory_order_relaxed);
      if (it >= total) break;
      long hi = it + j->grain < total ? it + j->grain : total;
      while (it < hi) {
        int b = (int)(it / g->ntiles), t0 = (int)(it % g->ntiles);
        long t1 = g->ntiles < t0 + (hi - it) ? g->ntiles : t0 + (hi - it);
        ifwd_tiles(j, b, t0, (int)t1, j->phases + (long)b * g->img, 0, j->M);
        it += t1 - t0;
      }
    }
  }
}


/* Runs an implicit GEMM whose geometry (g, K), output mapping and builder are set: wt is M x K. */
static void ifwd_run(ifwd_job *j, const float *wt, const float *wpacked) {
  const conv_p *p = j->g.p;
  j->mr = sgemm_mr(j->M); /* 8 or 14: the GEMM's choice, so that pre-packed weights serve both */
  j->Ap = a_panels(wt, wpacked, j->M, j->K, &wp_buf);
  int T = pool_threads();
  j->by_image = p->n >= 4 * T || T == 1;
  atomic_init(&j->next, 0);
  if (!j->by_image) {
    if (j->direct) {
      j->phases = j->x;
    } else {
      float *ph = grow(&ph_all_buf, (size_t)p->n * j->g.img + PH_TAIL(&j->g));
      for (int b = 0; b < p->n; b++) j->build(j, b, ph + (long)b * j->g.img);
      memset(ph + (long)p->n * j->g.img, 0, sizeof(float) * PH_TAIL(&j->g));
      j->phases = ph;
    }
    long items = (long)p->n * j->g.ntiles;
    j->grain = (int)(items / (8 * T)) > 1 ? (int)(items / (8 * T)) : 1;
    int panels = (j->M + j->mr - 1) / j->mr;
    j->mgroups = 1;
    if (items < 8L * T && panels > 1) {
      j->mgroups = (int)((8L * T + items - 1) / items);
      if (j->mgroups > panels) j->mgroups = panels;
      items *= j->mgroups;
    }
    pool_run_dynamic(ifwd_task, j, items < 1 << 30 ? (int)items : 1 << 30);
  } else {
    pool_run_dynamic(ifwd_task, j, p->n);
  }
}

/* Forward through the implicit GEMM; wt is the cout x K weight matrix, or wp the same packed. */
void implicit_forward(float *y, const float *x, const float *wt, const float *wp, const float *bias,
                             const float *residual, int relu, const conv_p *p) {
  ifwd_job j;
  memset(&j, 0, sizeof j);
  j.K = igeo_init(&j.g, p);
  j.M = p->cout;
  j.x = x; j.bias = bias; j.residual = residual; j.y = y; j.relu = relu;
  j.y_ch = (long)p->oh * p->ow;
  j.y_img = p->cout * j.y_ch;
  j.OW = p->ow; j.ysd = j.xsd = 1;
  j.build = build_default;
  j.x_img = (long)p->cin * p->h * p->w;
  /* 1x1, stride 1, unpadded: the planes are x's own; tiles must not read past the last image */
  j.direct = is_pointwise(p) && p->dh >= 1 && p->dw >= 1 && j.g.Lq % IT == 0 && j.g.img == j.x_img;
  ifwd_run(&j, wt, wp);
  free(j.g.off);
}

/* Backward input of a strided convolution, one phase of dx at a time: dx[c][r*sh + a][t*sw + b'] collects the taps
 * with (a + ph - ky*dh) % sh == 0 and (b' + pw - kx*dw) % sw == 0, each reading dy at (r + ey, t + ex), ey = (a + ph -
 * ky*dh) / sh: a stride-1 implicit GEMM over a zero-padded copy of dy with K = cout * (taps of the phase). */
static int floordiv(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
void implicit_backward_input_strided(float *dx, const float *dy, const float *w, const conv_p *p) {
  int tys[64], txs[64], nty, ntx;
  for (int a = 0; a < p->sh; a++)
    for (int bb = 0; bb < p->sw; bb++) {
      int nr = a < p->h ? (p->h - a + p->sh - 1) / p->sh : 0, nt = bb < p->w ? (p->w - bb + p->sw - 1) / p->sw : 0;
      if (nr == 0 || nt == 0) continue;
      nty = ntx = 0;
      for (int ky = 0; ky < p->kh; ky++)
        if ((a + p->ph - ky * p->dh) % p->sh == 0) tys[nty++] = ky;
      for (int kx = 0; kx < p->kw; kx++)
        if ((bb + p->pw - kx * p->dw) % p->sw == 0) txs[ntx++] = kx;
      int ntap = nty * ntx;
      if (ntap == 0) {
        for (int n = 0; n < p->n; n++)
          for (int c = 0; c < p->cin; c++)
            for (int r = 0; r < nr; r++)
              for (int t = 0; t < nt; t++) dx[(((long)n * p->cin + c) * p->h + r * p->sh + a) * p->w + t * p->sw + bb] = 0.0f;
        continue;
      }
      int eymin = 1 << 30, eymax = -(1 << 30), exmin = 1 << 30, exmax = -(1 << 30);
      for (int i = 0; i < nty; i++) {
        int e = floordiv(a + p->ph - tys[i] * p->dh, p->sh);
        if (e < eymin) eymin = e;
        if (e > eymax) eymax = e;
      }
      for (int i = 0; i < ntx; i++) {
        int e = floordiv(bb + p->pw - txs[i] * p->dw, p->sw);
        if (e < exmin) exmin = e;
        if (e > exmax) exmax = e;
      }
      conv_p q = *p;
      q.cin = p->cout; q.cout = p->cin; q.oh = nr; q.ow = nt; q.h = p->oh; q.w = p->ow;
      ifwd_job j;
      memset(&j, 0, sizeof j);
      igeo *g = &j.g;
      g->p = &q;
      g->nph = 1;
      g->Hq = nr + eymax - eymin;
      g->Wq = nt + exmax - exmin;
      g->plane = (long)g->Hq * g->Wq;
      g->img = (long)q.cin * g->plane;
      g->Lq = nr * g->Wq;
      g->ntiles = (g->Lq + IT - 1) / IT;
      j.K = p->cout * ntap;
      g->off = malloc(sizeof(int) * (j.K + 8));
      float *wt = malloc(sizeof(float) * (size_t)j.K * p->cin);
      if (!g->off || !wt) abort();
      for (int co = 0; co < p->cout; co++)
        for (int iy = 0; iy < nty; iy++)
          for (int ix = 0; ix < ntx; ix++) {
            int k = (co * nty + iy) * ntx + ix, ky = tys[iy], kx = txs[ix];
            int ey = floordiv(a + p->ph - ky * p->dh, p->sh), ex = floordiv(bb + p->pw - kx * p->dw, p->sw);
            g->off[k] = (int)((long)co * g->plane + (long)(ey - eymin) * g->Wq + (ex - exmin));
            for (int c = 0; c < p->cin; c++) wt[(long)c * j.K + k] = w[(((long)co * p->cin + c) * p->kh + ky) * p->kw + kx];
          }
      j.M = p->cin;
      j.x = dy; j.y = dx;
      j.y_ch = (long)p->h * p->w;
      j.y_img = p->cin * j.y_ch;
      j.OW = p->w; j.ysd = p->sh; j.xsd = p->sw; j.y0 = a; j.x0 = bb;
      j.build = build_padded;
      j.x_img = (long)p->cout * p->oh * p->ow;
      j.pad_t = -eymin; j.pad_l = -exmin; j.src_h = p->oh; j.src_w = p->ow;
      ifwd_run(&j, wt, NULL);
      free(wt);
      free(g->off);
    }
}

/* ---- backward weight: dot-product tiles ---- */
#define DR 4
#define DC 6
__attribute__((target("avx512f"))) static void idot(long L, const float *const *a, const float *const *b, float *out) {
  __m512 acc[DR][DC];
  _Pragma("GCC unroll 4") for (int i = 0; i < DR; i++) _Pragma("GCC unroll 6") for (int jj = 0; jj < DC; jj++) acc[i][jj] = _mm512_setzero_ps();
  const float *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3];
  const float *b0 = b[0], *b1 = b[1], *b2 = b[2], *b3 = b[3], *b4 = b[4], *b5 = b[5];
  for (long q = 0; q < L; q += 16) {
    __m512 d[DR] = {_mm512_loadu_ps(a0 + q), _mm512_loadu_ps(a1 + q), _mm512_loadu_ps(a2 + q), _mm512_loadu_ps(a3 + q)};
    __m512 v;
#define DOTCOL(J, BP) v = _mm512_loadu_ps(BP + q); \
    acc[0][J] = _mm512_fmadd_ps(d[0], v, acc[0][J]); acc[1][J] = _mm512_fmadd_ps(d[1], v, acc[1][J]); \
    acc[2][J] = _mm512_fmadd_ps(d[2], v, acc[2][J]); acc[3][J] = _mm512_fmadd_ps(d[3], v, acc[3][J]);
    DOTCOL(0, b0) DOTCOL(1, b1) DOTCOL(2, b2) DOTCOL(3, b3) DOTCOL(4, b4) DOTCOL(5, b5)
#undef DOTCOL
  }
  _Pragma("GCC unroll 4") for (int i = 0; i < DR; i++) _Pragma("GCC unroll 6") for (int jj = 0; jj < DC; jj++) out[i * DC + jj] += _mm512_reduce_add_ps(acc[i][jj]);
}

typedef struct {
  igeo g;
  int K, nbc, nblocks;
  const float *x, *dy;
  float *dw, *partials; /* partials: one slot of cout * K floats per block of chunks */
  atomic_long next;     /* next block */
} ibw_job;

static _Thread_local buf_t dyq_buf;

static void ibw_task(void *ctx, int tid, int n) {
  ibw_job *j = ctx;
  const igeo *g = &j->g;
  const conv_p *p = g->p;
  const int K = j->K, M = p->cout;
  const long P = (long)p->oh * p->ow, R = g->plane; /* per-image q stride */
  /* chunk layout: region (phase, c) = [img][plane] for the chunk's images, so that a tap is one shift
   * over the whole chunk: x(region, img i, q) at (phase*cin + c)*cs + i*R + q. */
  const int NRG = g->nph * p->cin;
  int nbc = j->nbc;
  const long cs = (long)nbc * R; /* region stride */
  long L = (cs + 15) & ~15L;
  size_t xs_n = (size_t)NRG * cs + R + 64 + PH_TAIL(g);
  float *xs = grow(&ph_buf, xs_n);
  float *dq = grow(&dyq_buf, (size_t)M * L);
  int *off2 = malloc(sizeof(int) * (K + DC));
  if (!off2) abort();
  for (int k = 0; k < K; k++) {
    int c = k / (p->kh * p->kw);
    long o = g->off[k] - (long)c * g->plane; /* phase base + in-plane shift, for c = 0 */
    long phs = o / ((long)p->cin * g->plane);
    long inpl = o - phs * p->cin * g->plane;
    off2[k] = (int)((phs * p->cin + c) * cs + inpl);
  }
  const long nchunks = (p->n + nbc - 1) / nbc;
  for (;;) {
    /* units are fixed blocks of chunks, each summing into its own slot (deterministic bits) */
    const long blk = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
    if (blk >= j->nblocks) break;
    float *dw = j->partials + blk * (long)M * K;
    memset(dw, 0, sizeof(float) * M * K);
    long c0, c1;
    pool_split(nchunks, (int)blk, j->nblocks, 1, &c0, &c1);
    for (long ci = c0; ci < c1; ci++) {
    const long b0 = ci * nbc;
    int nb = p->n - b0 < nbc ? (int)(p->n - b0) : nbc;
    long Lc = ((long)nb * R + 15) & ~15L;
    for (int i = 0; i < nb; i++) build_phases_rs(g, j->x + (b0 + i) * (long)p->cin * p->h * p->w, xs + (long)i * R, cs);
    /* what reads past the chunk's images may touch must be finite: zero it */
    for (int rg = 0; rg + 1 < NRG; rg++)
      if (nb < nbc) memset(xs + rg * cs + (long)nb * R, 0, sizeof(float) * (cs - (long)nb * R));
    memset(xs + (long)(NRG - 1) * cs + (long)nb * R, 0, sizeof(float) * (xs_n - ((long)(NRG - 1) * cs + (long)nb * R)));
    for (int co = 0; co < M; co++) {
      float *d = dq + (long)co * L;
      for (int i = 0; i < nb; i++) {
        const float *s = j->dy + ((b0 + i) * (long)M + co) * P;
        float *di = d + (long)i * R;
        for (int oy = 0; oy < p->oh; oy++) {
          memcpy(di + (long)oy * g->Wq, s + (long)oy * p->ow, sizeof(float) * p->ow);
          for (int q = p->ow; q < g->Wq; q++) di[(long)oy * g->Wq + q] = 0.0f;
        }
        memset(di + g->Lq, 0, sizeof(float) * (R - g->Lq));
      }
      memset(d + (long)nb * R, 0, sizeof(float) * (Lc - (long)nb * R));
    }
    for (int m0 = 0; m0 < M; m0 += DR) {
      const float *a[DR];
      for (int i = 0; i < DR; i++) a[i] = dq + (long)(m0 + i < M ? m0 + i : M - 1) * L;
      for (int k0 = 0; k0 < K; k0 += DC) {
        const float *bb[DC];
        for (int i = 0; i < DC; i++) bb[i] = xs + off2[k0 + i < K ? k0 + i : K - 1];
        float out[DR * DC] = {0};
        idot(Lc, a, bb, out);
        for (int r = 0; r < DR && m0 + r < M; r++)
          for (int c = 0; c < DC && k0 + c < K; c++) dw[(long)(m0 + r) * K + k0 + c] += out[r * DC + c];
      }
    }
    }
  }
  free(off2);
}

void implicit_backward_weight(float *dw, const float *x, const float *dy, const conv_p *p) {
  ibw_job j;
  memset(&j, 0, sizeof j);
  j.K = igeo_init(&j.g, p);
  j.x = x; j.dy = dy; j.dw = dw;
  long per_img = ((long)j.g.nph * p->cin + p->cout) * j.g.plane * 4;
  /* a chunk's planes should stay in L2, but each dot product must run long enough (>= ~1024 columns) to
   * amortise its 24 horizontal sums */
  int nbc = (int)((640L << 10) / (per_img > 0 ? per_img : 1));
  if ((long)nbc * j.g.plane < 1024) nbc = (int)((1024 + j.g.plane - 1) / j.g.plane);
  if (nbc < 1) nbc = 1;
  int T = pool_threads();
  long per_thread = (p->n + 4 * T - 1) / (4 * T); /* >= 4 chunks per thread, handed out dynamically */
  if (T > 1 && nbc > per_thread) nbc = (int)per_thread;
  if (nbc < 1) nbc = 1;
  j.nbc = nbc;
  atomic_init(&j.next, 0);
  const long nchunks = (p->n + nbc - 1) / nbc;
  j.nblocks = (int)(nchunks < 2L * T ? nchunks : 2L * T);
  long wn = (long)p->cout * j.K;
  j.partials = malloc(sizeof(float) * (size_t)wn * j.nblocks);
  if (!j.partials) abort();
  pool_run_dynamic(ibw_task, &j, j.nblocks < T ? j.nblocks : T);
  memcpy(dw, j.partials, sizeof(float) * wn);
  for (int b = 1; b < j.nblocks; b++) {
    const float *src = j.partials + (long)b * wn;
    for (long i = 0; i < wn; i++) dw[i] += src[i];
  }
  free(j.partials);
  free(j.g.off);
}

int no_implicit(void) {
  static int v = -1;
  if (v < 0) v = getenv("RESNET_NO_IMPLICIT") != NULL; /* set at all: every AVX-512 path off */
  return v;
}

/* Whether the implicit GEMM applies, with at least min_pct % of its computed columns real outputs. */
int implicit_ok(const conv_p *p, int min_pct) {
  if (p->groups != 1 || strcmp(sgemm_isa(), "avx512") != 0 || p->n < 1 || p->cout < 4) return 0;
  if (no_implicit()) return 0;
  igeo g;
  g.Hq = p->oh + ((p->kh - 1) * p->dh) / p->sh;
  g.Wq = p->ow + ((p->kw - 1) * p->dw) / p->sw;
  long Lq = (long)p->oh * g.Wq, tiles = (Lq + IT - 1) / IT;
  long P = (long)p->oh * p->ow;
  if ((long)g.Hq * g.Wq * p->sh * p->sw * p->cin > (1L << 26)) return 0;
  /* a few tiles in all (batch 1, 7x7 maps) with a weight matrix beyond L2: every tile would stream the
   * whole matrix again; the packed GEMM reuses it better */
  if ((long)p->n * tiles < 4 && (long)p->cout * p->cin * p->kh * p->kw > (256L << 10)) return 0;
  return P * 100 >= tiles * IT * min_pct;
}

#endif
