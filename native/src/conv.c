/* Convolution on NCHW tensors, batched over images. Two paths:
 *
 * 1. Implicit GEMM (AVX-512, groups == 1; see the section below): the GEMM reads its patch operand
 *    straight from zero-padded, phase-split copies of each input image, with no patch matrix. Used for
 *    forward, backward input (stride 1: forward with the flipped kernel; strided: one implicit GEMM per
 *    output phase) and backward weight, when the junk columns the layout computes stay few enough.
 *
 * 2. im2col + packed GEMM, for everything else (groups, other ISAs, tiny maps such as 4x4 or 1x1).
 * Images are processed in chunks of `nb` so that every GEMM has at least ~2048 columns even when
 * the feature maps are tiny (a 32x32 CIFAR batch has 1x1 maps in its last stage: per-image GEMMs
 * there would be matrix-vector products). For a chunk and a group:
 *   col[K = cin_g*kh*kw][nb*P]   patches of all images side by side (column = img*P + pixel)
 *   forward          out[cout_g][nb*P] = w[cout_g][K] · col   (+ bias, residual, relu fused)
 *   backward input   dcol[K][nb*P]    = w^T · dy_chunk, then col2im adds each image's part into dx
 *   backward weight  dw[cout_g][K]    += dy_chunk · col^T
 * When nb == 1 the GEMM reads/writes the NCHW planes directly; otherwise outputs are gathered and
 * scattered around it (cheap next to the GEMM). A 1x1 stride-1 unpadded convolution needs no im2col.
 *
 * Both paths hand work out dynamically (an atomic counter) in one pool dispatch per call, so a thread
 * slowed by other processes takes less of it; pool_run_dynamic does not wait for workers that never
 * started. Scratch buffers belong to the calling thread and are reused across calls. */
#include "conv.h"
#include "gemm.h"
#include "pool.h"
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define MIN_COLS 2048
#define MAX_COL_FLOATS (8L << 20) /* 32 MB of patches per chunk at most */

typedef struct {
  float *p;
  size_t cap;
} buf_t;

static _Thread_local buf_t col_buf, tmp_buf;

static float *grow(buf_t *b, size_t n) {
  if (n > b->cap) {
    free(b->p);
    b->p = aligned_alloc(64, ((n * sizeof(float) + 63) / 64) * 64);
    b->cap = b->p ? n : 0;
    if (!b->p) abort();
  }
  return b->p;
}

static int is_pointwise(const conv_p *p) {
  return p->kh == 1 && p->kw == 1 && p->sh == 1 && p->sw == 1 && p->ph == 0 && p->pw == 0;
}

/* Valid output columns [*o0, *o1) for tap offset `shift` = kx*dw - pw: 0 <= ox*sw + shift < w. */
static void col_range(int shift, int sw, int w, int ow, int *o0, int *o1) {
  int a = shift >= 0 ? 0 : (-shift + sw - 1) / sw;
  int b = (w - 1 - shift) < 0 ? 0 : (w - 1 - shift) / sw + 1;
  if (b > ow) b = ow;
  if (a > b) a = b;
  *o0 = a;
  *o1 = b;
}

/* col[(c*kh+ky)*kw+kx][oy*ow+ox] (row stride ldcol) = x[c][oy*sh-ph+ky*dh][ox*sw-pw+kx*dw], 0 outside. */
static void im2col(const float *x, int cin, const conv_p *p, float *col, long ldcol) {
  for (int c = 0; c < cin; c++) {
    const float *xc = x + (long)c * p->h * p->w;
    for (int ky = 0; ky < p->kh; ky++) {
      for (int kx = 0; kx < p->kw; kx++) {
        float *dst = col + ((long)(c * p->kh + ky) * p->kw + kx) * ldcol;
        int shift = kx * p->dw - p->pw, o0, o1;
        col_range(shift, p->sw, p->w, p->ow, &o0, &o1);
        for (int oy = 0; oy < p->oh; oy++) {
          float *d = dst + (long)oy * p->ow;
          int iy = oy * p->sh - p->ph + ky * p->dh;
          if (iy < 0 || iy >= p->h) {
            memset(d, 0, sizeof(float) * p->ow);
            continue;
          }
          const float *s = xc + (long)iy * p->w + shift;
          for (int ox = 0; ox < o0; ox++) d[ox] = 0.0f;
          if (p->sw == 1) memcpy(d + o0, s + o0, sizeof(float) * (o1 - o0));
          else for (int ox = o0; ox < o1; ox++) d[ox] = s[(long)ox * p->sw];
          for (int ox = o1; ox < p->ow; ox++) d[ox] = 0.0f;
        }
      }
    }
  }
}

/* dx[c][iy][ix] += dcol[(c*kh+ky)*kw+kx][oy*ow+ox] (row stride ldcol): the adjoint of im2col. */
static void col2im_add(const float *col, int cin, const conv_p *p, float *dx, long ldcol) {
  for (int c = 0; c < cin; c++) {
    float *xc = dx + (long)c * p->h * p->w;
    for (int ky = 0; ky < p->kh; ky++) {
      for (int kx = 0; kx < p->kw; kx++) {
        const float *src = col + ((long)(c * p->kh + ky) * p->kw + kx) * ldcol;
        int shift = kx * p->dw - p->pw, o0, o1;
        col_range(shift, p->sw, p->w, p->ow, &o0, &o1);
        for (int oy = 0; oy < p->oh; oy++) {
          int iy = oy * p->sh - p->ph + ky * p->dh;
          if (iy < 0 || iy >= p->h) continue;
          float *d = xc + (long)iy * p->w + shift;
          const float *s = src + (long)oy * p->ow;
          if (p->sw == 1) for (int ox = o0; ox < o1; ox++) d[ox] += s[ox];
          else for (int ox = o0; ox < o1; ox++) d[(long)ox * p->sw] += s[ox];
        }
      }
    }
  }
}

/* Copies `rows` rows of `len` floats from image-major planes into a chunk matrix and back:
 * gather: dst[r][img*len + i] = src[(b0+img)*src_img + r*len + i]. */
static void gather_rows(float *dst, const float *src, int nb, int rows, long len, long src_img, long ld) {
  for (int img = 0; img < nb; img++)
    for (int r = 0; r < rows; r++) memcpy(dst + (long)r * ld + (long)img * len, src + img * src_img + (long)r * len, sizeof(float) * len);
}
static void scatter_rows(float *dst, const float *src, int nb, int rows, long len, long dst_img, long ld) {
  for (int img = 0; img < nb; img++)
    for (int r = 0; r < rows; r++) memcpy(dst + img * dst_img + (long)r * len, src + (long)r * ld + (long)img * len, sizeof(float) * len);
}

/* ---- per-image work split across threads ------------------------------------------------- */

enum { T_IM2COL, T_COL2IM, T_GATHER, T_SCATTER };

typedef struct {
  int kind, nb, rows, cin;
  const conv_p *p;
  const float *src;
  float *dst;
  long src_img, dst_img, len, ld;
  atomic_int next; /* images handed out dynamically */
} img_job;

static void img_task(void *ctx, int tid, int n) {
  img_job *j = ctx;
  for (;;) {
    long img = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
    if (img >= j->nb) break;
    switch (j->kind) {
      case T_IM2COL: im2col(j->src + img * j->src_img, j->cin, j->p, j->dst + img * j->len, j->ld); break;
      case T_COL2IM: col2im_add(j->src + img * j->len, j->cin, j->p, j->dst + img * j->dst_img, j->ld); break;
      case T_GATHER: gather_rows(j->dst + img * j->len, j->src + img * j->src_img, 1, j->rows, j->len, 0, j->ld); break;
      case T_SCATTER: scatter_rows(j->dst + img * j->dst_img, j->src + img * j->len, 1, j->rows, j->len, 0, j->ld); break;
    }
  }
}

static _Thread_local int mt = 1; /* 0 inside a chunk-parallel task: everything runs on this thread */

static void per_image(int kind, int nb, int rows, int cin, const conv_p *p, const float *src, float *dst, long src_img,
                      long dst_img, long len, long ld) {
  img_job j = {kind, nb, rows, cin, p, src, dst, src_img, dst_img, len, ld, 0};
  atomic_init(&j.next, 0);
  if (nb == 1 || !mt) img_task(&j, 0, 1);
  else pool_run_dynamic(img_task, &j, nb);
}

static void gemm_pa(int ta, int tb, int M, int N, int K, const float *A, int lda, const float *Apre, const float *B, int ldb,
                    float beta, float *C, int ldc, const float *bias, int relu) {
  if (mt) sgemm_ex_pa(ta, tb, M, N, K, 1.0f, A, lda, Apre, B, ldb, beta, C, ldc, bias, relu);
  else sgemm_ex_pa_st(ta, tb, M, N, K, 1.0f, A, lda, Apre, B, ldb, beta, C, ldc, bias, relu);
}

static void gemm(int ta, int tb, int M, int N, int K, const float *A, int lda, const float *B, int ldb, float beta, float *C,
                 int ldc, const float *bias, int relu) {
  gemm_pa(ta, tb, M, N, K, A, lda, NULL, B, ldb, beta, C, ldc, bias, relu);
}

/* Floats of one group's packed weights (cout_g x K in micro-kernel panels). */
static long packed_group(const conv_p *p) {
  return (long)sgemm_packed_a_size(p->cout / p->groups, (p->cin / p->groups) * p->kh * p->kw);
}

/* Images per chunk: enough for MIN_COLS GEMM columns, within the scratch budget. */
static int chunk_images(const conv_p *p) {
  long P = (long)p->oh * p->ow;
  long K = (long)(p->cin / p->groups) * p->kh * p->kw;
  long rows = K > p->cout / p->groups ? K : p->cout / p->groups;
  long nb = P >= MIN_COLS ? 1 : (MIN_COLS + P - 1) / P;
  if (nb > p->n) nb = p->n;
  while (nb > 1 && rows * nb * P > MAX_COL_FLOATS) nb--;
  if (nb < 1) nb = 1;
  long nchunks = (p->n + nb - 1) / nb;
  nb = (p->n + nchunks - 1) / nchunks; /* equal chunks: no tiny last one */
  return (int)nb;
}

/* ---- forward ------------------------------------------------------------------------------ */

static void forward_chunk(float *y, const float *x, const float *w, const float *wp, const float *bias, const float *residual,
                          int relu, const conv_p *p, int b0, int nb) {
  const int G = p->groups, cin_g = p->cin / G, cout_g = p->cout / G;
  const long K = (long)cin_g * p->kh * p->kw, P = (long)p->oh * p->ow, HW = (long)p->h * p->w;
  const int pw = is_pointwise(p);
  const long NP = (long)nb * P;
  float *col = (pw && nb == 1) ? NULL : grow(&col_buf, (size_t)K * NP);
  float *tmp = nb == 1 ? NULL : grow(&tmp_buf, (size_t)cout_g * NP);
  for (int g = 0; g < G; g++) {
    const float *xg = x + (long)b0 * p->cin * HW + (long)g * cin_g * HW;
    float *yg = y + (long)b0 * p->cout * P + (long)g * cout_g * P;
    const float *rg = residual ? residual + (long)b0 * p->cout * P + (long)g * cout_g * P : NULL;
    const float *src = xg;
    if (!(pw && nb == 1)) {
      if (pw) per_image(T_GATHER, nb, cin_g, 0, p, xg, col, (long)p->cin * HW, 0, P, NP);
      else per_image(T_IM2COL, nb, 0, cin_g, p, xg, col, (long)p->cin * HW, 0, P, NP);
      src = col;
    }
    float *out = nb == 1 ? yg : tmp;
    float beta = 0.0f;
    if (rg) {
      if (nb == 1) {
        if (rg != yg) memcpy(yg, rg, sizeof(float) * cout_g * P);
      } else {
        per_image(T_GATHER, nb, cout_g, 0, p, rg, tmp, (long)p->cout * P, 0, P, NP);
      }
      beta = 1.0f;
    }
    gemm_pa(0, 0, cout_g, (int)NP, (int)K, w ? w + (long)g * cout_g * K : NULL, (int)K, wp ? wp + g * packed_group(p) : NULL,
            src, (int)NP, beta, out, (int)NP, bias ? bias + g * cout_g : NULL, relu);
    if (nb > 1) per_image(T_SCATTER, nb, cout_g, 0, p, tmp, yg, 0, (long)p->cout * P, P, NP);
  }
}

/* Chunks are spread over threads when there are enough of them (one pool dispatch per call, each
 * thread running whole chunks with single-threaded GEMMs); otherwise chunks run in turn and each
 * GEMM is threaded. */
typedef struct {
  int kind; /* 0 forward, 1 backward input, 2 backward weight */
  const conv_p *p;
  float *y, *dx, *dw, *partials;
  const float *x, *w, *wp, *bias, *residual, *dy;
  int relu, cb, nchunks, nblocks;
  atomic_int next; /* chunks (backward weight: blocks of chunks) are handed out dynamically */
} conv_job;

static void backward_input_chunk(float *dx, const float *dy, const float *w, const conv_p *p, int b0, int nb);
static void backward_weight_chunk(float *dw, const float *x, const float *dy, const conv_p *p, int b0, int nb, int first);

static void chunk_task(void *ctx, int tid, int n) {
  conv_job *j = ctx;
  const conv_p *p = j->p;
  mt = 0;
  if (j->kind == 2) {
    /* backward weight: units are fixed blocks of chunks, each summing into its own slot, so the
     * result does not depend on which thread ran which block */
    long wn = (long)p->cout * (p->cin / p->groups) * p->kh * p->kw;
    for (;;) {
      int blk = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
      if (blk >= j->nblocks) break;
      long c0, c1;
      pool_split(j->nchunks, blk, j->nblocks, 1, &c0, &c1);
      for (long c = c0; c < c1; c++) {
        int b0 = (int)c * j->cb, nb = p->n - b0 < j->cb ? p->n - b0 : j->cb;
        backward_weight_chunk(j->partials + blk * wn, j->x, j->dy, p, b0, nb, c == c0);
      }
    }
    mt = 1;
    return;
  }
  for (;;) {
    int c = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
    if (c >= j->nchunks) break;
    int b0 = c * j->cb, nb = p->n - b0 < j->cb ? p->n - b0 : j->cb;
    if (j->kind == 0) forward_chunk(j->y, j->x, j->w, j->wp, j->bias, j->residual, j->relu, p, b0, nb);
    else backward_input_chunk(j->dx, j->dy, j->w, p, b0, nb);
  }
  mt = 1;
}

/* Runs every chunk; returns after the work is done. For backward weight the per-thread partial
 * sums are added into dw. */
static void run_chunks(conv_job *j) {
  const conv_p *p = j->p;
  j->cb = chunk_images(p);
  j->nchunks = (p->n + j->cb - 1) / j->cb;
  int T = pool_threads();
  if (T > 1 && j->nchunks >= T) {
    long wn = (long)p->cout * (p->cin / p->groups) * p->kh * p->kw;
    if (j->kind == 2) {
      j->nblocks = j->nchunks < 2 * T ? j->nchunks : 2 * T;
      j->partials = malloc(sizeof(float) * (size_t)wn * j->nblocks);
      if (!j->partials) abort();
    }
    atomic_init(&j->next, 0);
    pool_run_dynamic(chunk_task, j, j->kind == 2 ? j->nblocks : j->nchunks);
    if (j->kind == 2) {
      memcpy(j->dw, j->partials, sizeof(float) * wn);
      for (int b = 1; b < j->nblocks; b++) {
        const float *src = j->partials + (long)b * wn;
        for (long i = 0; i < wn; i++) j->dw[i] += src[i];
      }
      free(j->partials);
    }
    return;
  }
  for (int c = 0; c < j->nchunks; c++) {
    int b0 = c * j->cb, nb = p->n - b0 < j->cb ? p->n - b0 : j->cb;
    if (j->kind == 0) forward_chunk(j->y, j->x, j->w, j->wp, j->bias, j->residual, j->relu, p, b0, nb);
    else if (j->kind == 1) backward_input_chunk(j->dx, j->dy, j->w, p, b0, nb);
    else backward_weight_chunk(j->dw, j->x, j->dy, p, b0, nb, c == 0);
  }
}

/* ---- pixel-row weight panels (see the pixel-row kernels below) ---- */
#define PR_RUN 7
#define PR_NR 32
/* Panels of nr output channels (32; 16 for the 16-channel kernel): dst[(j*K + k)*nr + i] = w[(j + i)*K + k],
 * 0 past M. */
static long prow_packed_size(int M, int K, int nr) { return (long)(M + nr - 1) / nr * nr * K; }
static void prow_pack(const float *w, int M, int K, int nr, float *dst) {
  for (int j = 0; j < M; j += nr) {
    float *d = dst + (long)j * K;
    int rows = M - j < nr ? M - j : nr;
    for (int k = 0; k < K; k++) {
      for (int i = 0; i < rows; i++) d[(long)k * nr + i] = w[(long)(j + i) * K + k];
      for (int i = rows; i < nr; i++) d[(long)k * nr + i] = 0.0f;
    }
  }
}
static void prow_unpack(const float *src, int M, int K, int nr, float *w) {
  for (int j = 0; j < M; j += nr) {
    const float *s = src + (long)j * K;
    int rows = M - j < nr ? M - j : nr;
    for (int k = 0; k < K; k++)
      for (int i = 0; i < rows; i++) w[(long)(j + i) * K + k] = s[(long)k * nr + i];
  }
}
/* The panel width of a pixel-row layout (0: not one). */
static int layout_nr(int layout) { return layout == CONV_LAYOUT_PROW ? 32 : layout == CONV_LAYOUT_PROW16 ? 16 : 0; }


/* ---- implicit GEMM (AVX-512): no im2col ---------------------------------------------------------
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
#if defined(__x86_64__)
#include <immintrin.h>
#define IT 32 /* output columns per tile */

typedef struct {
  const conv_p *p;
  int Hq, Wq, nph, Lq, ntiles;
  long plane, img; /* floats per phase plane (Hq*Wq), per image (nph*cin*plane) */
  int *off;        /* K shifts */
} igeo;

static int igeo_init(igeo *g, const conv_p *p) {
  g->p = p;
  g->Hq = p->oh + ((p->kh - 1) * p->dh) / p->sh;
  g->Wq = p->ow + ((p->kw - 1) * p->dw) / p->sw;
  g->nph = p->sh * p->sw;
  g->plane = (long)g->Hq * g->Wq;
  g->img = (long)g->nph * p->cin * g->plane;
  g->Lq = p->oh * g->Wq;
  g->ntiles = (g->Lq + IT - 1) / IT;
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
static void build_phases_range(const igeo *g, const float *x, float *dst, long rstride, int c_lo, int c_hi) {
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
        s0 = shift >= 0 ? 0 : (-shift + p->sw - 1) / p->sw;
        s1 = (p->w - 1 - shift) < 0 ? 0 : (p->w - 1 - shift) / p->sw + 1;
        if (s1 > g->Wq) s1 = g->Wq;
        if (s0 > s1) s0 = s1;
        for (int r = 0; r < g->Hq; r++, d += g->Wq) {
          int iy = r * p->sh + py - p->ph;
          if (iy < 0 || iy >= p->h) {
            memset(d, 0, sizeof(float) * g->Wq);
            continue;
          }
          const float *s = xc + (long)iy * p->w + shift;
          for (int q = 0; q < s0; q++) d[q] = 0.0f;
          if (p->sw == 1) memcpy(d + s0, s + s0, sizeof(float) * (s1 - s0));
          else for (int q = s0; q < s1; q++) d[q] = s[(long)q * p->sw];
          for (int q = s1; q < g->Wq; q++) d[q] = 0.0f;
        }
      }
}
static void build_phases_rs(const igeo *g, const float *x, float *dst, long rstride) {
  build_phases_range(g, x, dst, rstride, 0, g->p->cin);
}
static void build_phases(const igeo *g, const float *x, float *dst) { build_phases_rs(g, x, dst, g->plane); }
#define PH_TAIL(g) (2 * IT + (g)->Wq + 16)

/* The first and last line of an epilogue row of len floats at o in the residual (read) and the output
 * (written), fetched while a tile computes: with many planes at once the hardware prefetcher does
 * not follow them. */
__attribute__((target("avx512f"))) static inline void prefetch_row(const float *res, const float *y, long o, int len) {
  _mm_prefetch((const char *)(res + o), _MM_HINT_T0);
  _mm_prefetch((const char *)(res + o + len - 1), _MM_HINT_T0);
  _mm_prefetch((const char *)(y + o), _MM_HINT_ET0);
  _mm_prefetch((const char *)(y + o + len - 1), _MM_HINT_ET0);
}


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
      if (getenv("PANEL_OUTER")) {
        for (int m0 = 0; m0 < j->M; m0 += j->mr) ifwd_tiles(j, (int)b, 0, g->ntiles, src, m0, m0 + j->mr < j->M ? m0 + j->mr : j->M);
      } else {
        ifwd_tiles(j, (int)b, 0, g->ntiles, src, 0, j->M);
      }
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
  if (wpacked) {
    j->Ap = wpacked;
  } else {
    float *Ap = grow(&wp_buf, sgemm_packed_a_size(j->M, j->K));
    sgemm_pack_a(wt, j->M, j->K, j->mr, Ap);
    j->Ap = Ap;
  }
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
static void implicit_forward(float *y, const float *x, const float *wt, const float *wp, const float *bias,
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
static void implicit_backward_input_strided(float *dx, const float *dy, const float *w, const conv_p *p) {
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

static void implicit_backward_weight(float *dw, const float *x, const float *dy, const conv_p *p) {
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

static int no_implicit(void) {
  static int v = -1;
  if (v < 0) v = getenv("RESNET_NO_IMPLICIT") != NULL;
  return v;
}

/* Whether the implicit GEMM applies, with at least min_pct % of its computed columns real outputs. */
static int implicit_ok(const conv_p *p, int min_pct) {
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

/* ---- pixel-row kernels (AVX-512): output pixels as the register tile's rows ---------------------
 *
 * The implicit GEMM above tiles the q grid 32 columns at a time, so a small map wastes columns: a 7x7
 * output (Wq = 9) fills 49 of 64, a 14x14 one 196 of 224. Every map of a ResNet at 224x224 (112, 56,
 * 28, 14, 7) or at 28x28 (28, 14, 7) has a width that is a multiple of 7, so here the roles turn
 * around: a register tile is 7 (or 14: two runs) consecutive output pixels of one output row times 32
 * output channels,
 *   out[pixel][co] = sum_k A[pixel][k] * Wt[k][co],   A[pixel][k] = phases[off[k] + q(pixel)]
 * with A read (broadcast) from the same phase planes, and the weights as the streamed operand, packed
 * in panels of 32 output channels (K x 32 floats each, zero-padded past cout). No column is wasted;
 * the epilogue transposes each 7-pixel run into its NCHW rows (gathers, 7 lanes). */

/* In-register transpose of a 16x16 block of floats (r[i] lane j -> r[j] lane i). */
__attribute__((target("avx512f"))) static inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; i++) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; i++) {
    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[4 * i]), _mm512_castps_pd(t[4 * i + 2])));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[4 * i]), _mm512_castps_pd(t[4 * i + 2])));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(t[4 * i + 1]), _mm512_castps_pd(t[4 * i + 3])));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(t[4 * i + 1]), _mm512_castps_pd(t[4 * i + 3])));
  }
  for (int i = 0; i < 4; i++) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0x88);
    t[4 + i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0xdd);
    t[8 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0x88);
    t[12 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0xdd);
  }
  for (int i = 0; i < 8; i++) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0x88);
    r[8 + i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0xdd);
  }
}

/* R runs of 7 pixels (a[0..R-1] their bases in the phase planes, pixels PS floats apart) x 32 channels, over
 * all K; t[(7r+i)*32 + co]. PS = 2: a strided 1x1 convolution reading x in place. */
#define DEF_PROW(R, PS, NAME)                                                                                             \
  __attribute__((target("avx512f"), noinline)) static void NAME(int K, const float *Bp, const float *const *a,         \
                                                         const int *off, float *t) {                           \
    __m512 c0[7 * R], c1[7 * R];                                                                               \
    _Pragma("GCC unroll 14") for (int i = 0; i < 7 * R; i++) c0[i] = c1[i] = _mm512_setzero_ps();               \
    const float *a0 = a[0], *a1 = a[R - 1];                                                                    \
    for (int k = 0; k < K; k++) {                                                                              \
      __m512 b0 = _mm512_loadu_ps(Bp), b1 = _mm512_loadu_ps(Bp + 16);                                          \
      const float *p0 = a0 + off[k], *p1 = a1 + off[k];                                                        \
      /* the next tile's input line of this k: with many input planes (1x1 on 56x56 at batch 8) the    \
       * hardware prefetcher loses track, and every k would wait for memory */                         \
      _mm_prefetch((const char *)(p1 + 15 * PS), _MM_HINT_T0);                                         \
      _Pragma("GCC unroll 7") for (int i = 0; i < 7; i++) {                                                    \
        __m512 v = _mm512_set1_ps(p0[i * PS]);                                                                  \
        c0[i] = _mm512_fmadd_ps(v, b0, c0[i]);                                                                 \
        c1[i] = _mm512_fmadd_ps(v, b1, c1[i]);                                                                 \
      }                                                                                                        \
      if (R == 2) {                                                                                            \
        _Pragma("GCC unroll 7") for (int i = 0; i < 7; i++) {                                                  \
          __m512 v = _mm512_set1_ps(p1[i * PS]);                                                                \
          c0[7 * (R - 1) + i] = _mm512_fmadd_ps(v, b0, c0[7 * (R - 1) + i]);                                   \
          c1[7 * (R - 1) + i] = _mm512_fmadd_ps(v, b1, c1[7 * (R - 1) + i]);                                   \
        }                                                                                                      \
      }                                                                                                        \
      Bp += PR_NR;                                                                                             \
    }                                                                                                          \
    _Pragma("GCC unroll 14") for (int i = 0; i < 7 * R; i++) {                                                  \
      _mm512_store_ps(t + i * PR_NR, c0[i]);                                                                   \
      _mm512_store_ps(t + i * PR_NR + 16, c1[i]);                                                              \
    }                                                                                                          \
  }
DEF_PROW(1, 1, prow1)
DEF_PROW(2, 1, prow2)
DEF_PROW(1, 2, prow1s2)
DEF_PROW(2, 2, prow2s2)

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
  const float *x;                 /* by_image: the input, x_img floats per image */
  long x_img;
  atomic_long next;
} prow_job;

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
    yo[r] = b * j->y_img + (long)oy * j->g.p->ow + ox;
  }
}

static _Thread_local buf_t prow_img_buf;

/* Work items are either images (by_image: each thread builds an image's planes into its own buffer
 * and runs all its tiles, panel by panel, while they are in its L2), or (panel, chunk of tiles) over
 * planes built for the whole batch beforehand. Tiles are nr == 16 ? 4 : 2 runs. */
__attribute__((target("avx512f"))) static void prow_task(void *ctx, int tid, int n) {
  (void)tid; (void)n;
  prow_job *j = ctx;
  const conv_p *p = j->g.p;
  float t[28 * 16 > 14 * PR_NR ? 28 * 16 : 14 * PR_NR] __attribute__((aligned(64)));
  const int rt = j->nr == 16 ? 4 : 2;
  const long per_img = (long)p->oh * j->rpr;
  if (j->by_image) {
    float *ph = j->direct ? NULL : grow(&prow_img_buf, (size_t)j->g.img);
    for (;;) {
      const long b = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
      if (b >= p->n) break;
      const float *base = j->x + b * j->x_img;
      if (!j->direct) {
        build_phases(&j->g, base, ph);
        base = ph;
      }
      for (int panel = 0; panel < j->npanels; panel++)
        for (long r0 = 0; r0 < per_img; r0 += rt) {
          const int R = per_img - r0 < rt ? (int)(per_img - r0) : rt;
          const float *a[4];
          long yo[4];
          prow_runs(j, b, base, r0, R, a, yo);
          if (j->nr == 16) prow_tile16(j, a[0], yo[0], t);
          else prow_tile32(j, panel, a, yo, R, t);
        }
    }
    return;
  }
  for (;;) {
    const long it = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
    if (it >= (long)j->npanels * j->chunks) break;
    const int panel = (int)(it / j->chunks);
    const long t0 = (it % j->chunks) * j->per_chunk, t1 = t0 + j->per_chunk < j->ntiles ? t0 + j->per_chunk : j->ntiles;
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
 * groups 1, output width a multiple of 7, and K >= 256 (128 for a stride-1 1x1; below that the
 * transposing epilogue costs more than the tile fill gains); then
 *  - 32: at least 32 output channels; a strided 1x1 only with stride 2 along x and no padding (it
 *    reads x in place, pixels 2 apart). Measured on ResNet-50's shapes it beats the q-grid tiling
 *    everywhere else, most on small maps (7x7: 2.2x) where that tiling wastes columns;
 *  - 16: 9 to 16 output channels on maps whose width is a multiple of 28 (ResNet-20's first stage
 *    on 28x28 inputs), with K >= 64: tiles of 28 consecutive pixels x 16
 *    channels, where the q grid's 8-row tiles run at about 70 % of the FMA peak.
 * RESNET_PROW=0 turns the path off, RESNET_PROW=all lifts the K limits (both for measurements). */
static int prow_nr(const conv_p *p) {
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
    /* a stride-1 1x1 from K = 128 (ResNet-50's 128 -> 512 expansions: ~10 % faster than the q grid) */
    const int kmin = pw1 && p->sh == 1 && p->sw == 1 ? 128 : 256;
    return mode == 2 || K >= kmin ? 32 : 0;
  }
  if (p->cout >= 9 && p->ow % 28 == 0 && !(pw1 && (p->sh > 1 || p->sw > 1))) return mode == 2 || K >= 64 ? 16 : 0;
  return 0;
}
static int prow_ok(const conv_p *p) { return prow_nr(p) != 0; }

static void prow_forward(float *y, const float *x, const float *wt, const float *wp, const float *bias,
                         const float *residual, int relu, const conv_p *p) {
  static _Thread_local buf_t prow_w_buf, prow_ph_buf;
  prow_job j;
  memset(&j, 0, sizeof j);
  j.K = igeo_init(&j.g, p);
  j.M = p->cout;
  j.bias = bias; j.residual = residual; j.y = y; j.relu = relu;
  j.y_ch = (long)p->oh * p->ow;
  j.y_img = (long)p->cout * j.y_ch;
  j.rpr = p->ow / PR_RUN;
  j.nruns = (long)p->n * p->oh * j.rpr;
  const int nr = prow_nr(p), runs_per_tile = nr == 16 ? 4 : 2;
  j.ntiles = (j.nruns + runs_per_tile - 1) / runs_per_tile;
  long x_img = (long)p->cin * p->h * p->w;
  if (!wp) {
    float *b = grow(&prow_w_buf, prow_packed_size(j.M, j.K, nr));
    prow_pack(wt, j.M, j.K, nr, b);
    wp = b;
  }
  j.Bp = wp;
  j.nr = nr;
  j.rowstep = j.g.Wq;
  j.colstep = 1;
  if (p->kh == 1 && p->kw == 1 && p->ph == 0 && p->pw == 0 && p->sw == 2) {
    /* strided 1x1: x in place; tap k is channel k */
    j.phases = x;
    j.rowstep = (long)p->sh * p->w;
    j.colstep = 2;
    for (int k = 0; k < j.K; k++) j.g.off[k] = (int)((long)k * p->h * p->w);
    x_img = (long)p->cin * p->h * p->w;
    j.g.img = x_img;
  } else if (is_pointwise(p) && j.g.img == x_img) {
    j.phases = x;
  }
  j.direct = j.phases == x;
  j.x = x;
  j.x_img = x_img;
  j.npanels = (j.M + nr - 1) / nr;
  int T = pool_threads();
  /* per image when there are images enough and the weights stay in L2 across them (every image
   * streams all panels) */
  j.by_image = p->n >= 4 * T && (long)j.npanels * nr * j.K * 4 <= (512L << 10);
  if (j.by_image) {
    atomic_init(&j.next, 0);
    pool_run_dynamic(prow_task, &j, p->n < T ? p->n : T);
    free(j.g.off);
    return;
  }
  if (!j.direct) {
    float *ph = grow(&prow_ph_buf, (size_t)p->n * j.g.img);
    prow_build_job bj = {&j.g, x, ph, x_img};
    pool_run_n(prow_build_task, &bj, (long)p->n * p->cin < (1 << 30) ? p->n * p->cin : 1 << 30);
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
  j.chunks = (int)((j.ntiles + j.per_chunk - 1) / j.per_chunk);
  atomic_init(&j.next, 0);
  long items = (long)j.npanels * j.chunks;
  pool_run_dynamic(prow_task, &j, items < T ? (int)items : T);
  free(j.g.off);
}

/* ---- gathered GEMM (AVX-512): small maps without im2col ------------------------------------------
 *
 * For what neither kernel above takes, mostly small maps (8x8 down to 1x1: ResNet-18 on 32x32
 * inputs), where im2col writes a row of a few floats per call and then the GEMM packs it again. Here
 * the GEMM's B panels (kc x 32 columns, column = image x output pixel) are gathered straight from x
 * with masked AVX-512 gathers (zeros for padding), the weights are A (micro-kernel panels), and the
 * result goes from a per-block buffer to NCHW with the bias/residual/relu epilogue. Work items are
 * blocks of GG_NB columns over all output channels, handed out dynamically. */
#define GG_NB 128
#define GG_KC 256

typedef struct {
  const conv_p *p;
  int K, M, mr;
  const float *Ap, *x, *bias, *residual;
  float *y;
  int relu;
  long ncols, P;
  int mgroups; /* output channels split into this many groups of panels (few column blocks) */
  atomic_long next;
} gg_job;

static _Thread_local buf_t gg_b_buf, gg_c_buf;

__attribute__((target("avx512f"))) static void gg_task(void *ctx, int tid, int n) {
  (void)tid; (void)n;
  gg_job *j = ctx;
  const conv_p *p = j->p;
  const int K = j->K, M = j->M, mr = j->mr, kk = p->kh * p->kw;
  const long HW = (long)p->h * p->w, P = j->P;
  const int Mp = (M + mr - 1) / mr * mr;
  float *Bp = grow(&gg_b_buf, (size_t)GG_KC * GG_NB);
  float *Cb = grow(&gg_c_buf, (size_t)Mp * GG_NB);
  int base[GG_NB] __attribute__((aligned(64))), iy0[GG_NB] __attribute__((aligned(64))), ix0[GG_NB] __attribute__((aligned(64)));
  const long nblocks = (j->ncols + GG_NB - 1) / GG_NB;
  for (;;) {
    long it = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
    if (it >= nblocks * j->mgroups) break;
    long j0 = (it / j->mgroups) * GG_NB;
    long plo, phi;
    pool_split(Mp / mr, (int)(it % j->mgroups), j->mgroups, 1, &plo, &phi);
    const int m_lo = (int)plo * mr, m_hi = (int)phi * mr < M ? (int)phi * mr : M;
    if (m_lo >= m_hi) continue;
    int nc = j->ncols - j0 < GG_NB ? (int)(j->ncols - j0) : GG_NB;
    int ncp = (nc + 31) & ~31; /* whole 32-column panels; columns past nc read nothing (masked) */
    for (int c = 0; c < ncp; c++) {
      if (c < nc) {
        long col = j0 + c, b = col / P, pix = col % P;
        int oy = (int)(pix / p->ow), ox = (int)(pix % p->ow);
        iy0[c] = oy * p->sh - p->ph;
        ix0[c] = ox * p->sw - p->pw;
        base[c] = (int)(b * p->cin * HW + (long)iy0[c] * p->w + ix0[c]);
      } else {
        iy0[c] = ix0[c] = -(1 << 28); /* out of bounds for every tap: gathers nothing */
        base[c] = 0;
      }
    }
    const __m512i vh = _mm512_set1_epi32(p->h), vw = _mm512_set1_epi32(p->w);
    for (int pc = 0; pc < K; pc += GG_KC) {
      int kc = K - pc < GG_KC ? K - pc : GG_KC;
      /* B panels: Bp[panel][k][32] */
      for (int k = 0; k < kc; k++) {
        int kg = pc + k, c = kg / kk, t = kg % kk, ky = t / p->kw, kx = t % p->kw;
        int dy = ky * p->dh, dx = kx * p->dw;
        const __m512i vdy = _mm512_set1_epi32(dy), vdx = _mm512_set1_epi32(dx);
        const __m512i voff = _mm512_set1_epi32((int)((long)c * HW + (long)dy * p->w + dx));
        for (int c0 = 0; c0 < ncp; c0 += 16) {
          __m512i iy = _mm512_add_epi32(_mm512_load_si512(iy0 + c0), vdy), ix = _mm512_add_epi32(_mm512_load_si512(ix0 + c0), vdx);
          /* 0 <= iy < h and 0 <= ix < w, as unsigned compares */
          __mmask16 m = _mm512_cmplt_epu32_mask(iy, vh) & _mm512_cmplt_epu32_mask(ix, vw);
          __m512i idx = _mm512_add_epi32(_mm512_load_si512(base + c0), voff);
          __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, j->x, 4);
          _mm512_store_ps(Bp + (long)(c0 / 32) * kc * 32 + (long)k * 32 + (c0 & 31), v);
        }
      }
      float beta = pc == 0 ? 0.0f : 1.0f;
      for (int m0 = m_lo; m0 < m_hi; m0 += mr) {
        const float *ap = j->Ap + (long)m0 * K + (long)pc * mr;
        for (int c0 = 0; c0 < ncp; c0 += 32) sgemm_kernel(M, kc, ap, Bp + (long)(c0 / 32) * kc * 32, Cb + (long)m0 * GG_NB + c0, GG_NB, beta);
      }
    }
    /* epilogue: columns [j0, j0 + nc) are runs of consecutive pixels of one image each */
    const __m512 zero = _mm512_setzero_ps();
    for (int c = 0; c < nc;) {
      long col = j0 + c, b = col / P, pix = col % P;
      int len = (int)(P - pix < nc - c ? P - pix : nc - c);
      for (int co = m_lo; co < m_hi; co++) {
        long o = (b * M + co) * P + pix;
        const float *src = Cb + (long)co * GG_NB + c;
        const __m512 vb = _mm512_set1_ps(j->bias ? j->bias[co] : 0.0f);
        for (int i = 0; i < len; i += 16) {
          int cnt = len - i < 16 ? len - i : 16;
          __mmask16 mk = (__mmask16)(cnt == 16 ? 0xFFFFu : (1u << cnt) - 1);
          __m512 v = _mm512_add_ps(_mm512_maskz_loadu_ps(mk, src + i), vb);
          if (j->residual) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk, j->residual + o + i));
          if (j->relu) v = _mm512_max_ps(zero, v);
          _mm512_mask_storeu_ps(j->y + o + i, mk, v);
        }
      }
      c += len;
    }
  }
}

/* Whether the gathered GEMM takes a convolution that the other AVX-512 paths do not: groups 1, not
 * pointwise (a plain GEMM reads a 1x1 stride-1 convolution's input as it is), and indices that fit
 * the 32-bit gathers. RESNET_GG=0 turns it off (measurements). */
static int gg_ok(const conv_p *p) {
  if (p->groups != 1 || strcmp(sgemm_isa(), "avx512") != 0 || p->n < 1 || no_implicit() || sgemm_nr() != 32) return 0;
  if (is_pointwise(p)) return 0;
  const char *e = getenv("RESNET_GG");
  if (e && strcmp(e, "0") == 0) return 0;
  return (long)p->n * p->cin * p->h * p->w < (1L << 31) - (1L << 20);
}

static void gg_forward(float *y, const float *x, const float *wt, const float *wp, const float *bias,
                       const float *residual, int relu, const conv_p *p) {
  static _Thread_local buf_t gg_w_buf;
  gg_job j;
  memset(&j, 0, sizeof j);
  j.p = p;
  j.K = p->cin * p->kh * p->kw;
  j.M = p->cout;
  j.mr = sgemm_mr(j.M);
  if (wp) {
    j.Ap = wp;
  } else {
    float *Ap = grow(&gg_w_buf, sgemm_packed_a_size(j.M, j.K));
    sgemm_pack_a(wt, j.M, j.K, j.mr, Ap);
    j.Ap = Ap;
  }
  j.x = x; j.bias = bias; j.residual = residual; j.y = y; j.relu = relu;
  j.P = (long)p->oh * p->ow;
  j.ncols = (long)p->n * j.P;
  atomic_init(&j.next, 0);
  long items = (j.ncols + GG_NB - 1) / GG_NB;
  int T = pool_threads(), panels = (j.M + j.mr - 1) / j.mr;
  j.mgroups = 1;
  if (items < 4L * T && T > 1) {
    j.mgroups = (int)((4L * T + items - 1) / items);
    if (j.mgroups > panels) j.mgroups = panels;
  }
  items *= j.mgroups;
  pool_run_dynamic(gg_task, &j, items < T ? (int)items : T);
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
 * dot products or im2col; with 16 or 32 channels those win). RESNET_GGW=0 turns it off. */
static int ggw_ok(const conv_p *p) {
  const char *e = getenv("RESNET_GGW");
  if (e && strcmp(e, "0") == 0) return 0;
  return p->cout >= 64 && gg_ok(p) && (long)p->n * p->oh * p->ow < (1L << 31) / 16;
}

static void ggw_backward_weight(float *dw, const float *x, const float *dy, const conv_p *p) {
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
 * For 16/32/48/64 channels on stride-1 maps (ResNet-20's layers). Per image, the input is copied into
 * zero-padded channels-last planes X[(r*Wq + s)*cin + c] and dy onto the q grid as dyT[q*cout + co]
 * (zeros in the kw-1 junk columns of each row), both with 16x16 in-register transposes. Then for
 * every tap t = (ky, kx) and 16x16 block of (c, co):
 *   dw[co][c][t] += sum_q X[(q + ky*Wq + kx)*cin + c] * dyT[q*cout + co]
 * a register tile of 16 input channels (broadcast from one contiguous 64-byte row) x 16 output
 * channels (one vector), 16 FMAs per q. Images are spread over threads, each with its own partial
 * sums [tap][c][co], added in a fixed order at the end. */
typedef struct {
  const conv_p *p;
  const float *x, *dy;
  float *partials; /* per block of images: kk * cin * cout floats */
  int Hq, Wq, Lq, nblocks;
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

__attribute__((target("avx512f"))) static void bwt_task(void *ctx, int tid, int n) {
  (void)n;
  bwt_job *j = ctx;
  const conv_p *p = j->p;
  const int cin = p->cin, cout = p->cout, kk = p->kh * p->kw, Wq = j->Wq, Hq = j->Hq, Lq = j->Lq;
  const long xsz = ((long)Hq * Wq + p->kw + 16) * cin, dsz = (long)Lq * cout;
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
    /* X: zero, then the image's rows transposed in 16-channel blocks */
    memset(X, 0, sizeof(float) * xsz);
    const float *xb = j->x + b * cin * HW;
    for (int iy = 0; iy < p->h; iy++) {
      float *row = X + ((long)(iy + p->ph) * Wq + p->pw) * cin;
      for (int c0 = 0; c0 < cin; c0 += 16)
        for (int ix = 0; ix < p->w; ix += 16)
          t16_store(xb + (long)c0 * HW + (long)iy * p->w + ix, HW, p->w - ix < 16 ? p->w - ix : 16, row + (long)ix * cin + c0, cin);
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
      const float *xt = X + ((long)ky * p->dh * Wq + (long)kx * p->dw) * cin;
      for (int c0 = 0; c0 < cin; c0 += 16)
        for (int co0 = 0; co0 < cout; co0 += 16)
          bwt16(Lq, xt + c0, cin, D + co0, cout, acc + ((long)t * cin + c0) * cout + co0, cout);
    }
    }
  }
}

/* Stride 1, groups 1, channel counts multiples of 16 up to 64 (wider layers take the gathered GEMM). */
static int bwt_ok(const conv_p *p) {
  const char *e = getenv("RESNET_BWT");
  if (e && strcmp(e, "0") == 0) return 0;
  if (p->groups != 1 || strcmp(sgemm_isa(), "avx512") != 0 || p->n < 1 || no_implicit()) return 0;
  if (p->sh != 1 || p->sw != 1 || p->cin % 16 || p->cout % 16 || p->cin > 64 || p->cout > 64) return 0;
  long Wq = p->ow + (long)(p->kw - 1) * p->dw, Hq = p->oh + (long)(p->kh - 1) * p->dh;
  /* the planes are the padded input: ph/pw as given, and no output reading past them */
  return p->ph >= 0 && p->pw >= 0 && Wq == p->w + 2L * p->pw && Hq == p->h + 2L * p->ph && Hq * Wq * p->cin < (1L << 24);
}

static void bwt_backward_weight(float *dw, const float *x, const float *dy, const conv_p *p) {
  bwt_job j;
  memset(&j, 0, sizeof j);
  j.p = p; j.x = x; j.dy = dy;
  j.Wq = p->ow + (p->kw - 1) * p->dw;
  j.Hq = p->oh + (p->kh - 1) * p->dh;
  j.Lq = p->oh * j.Wq;
  const int T = pool_threads(), kk = p->kh * p->kw;
  j.nblocks = p->n < 2 * T ? p->n : 2 * T;
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

static void forward_impl(float *y, const float *x, const float *w, const float *wp, const float *bias, const float *residual,
                         int relu, const conv_p *p) {
#if defined(__x86_64__)
  if (prow_ok(p)) {
    prow_forward(y, x, w, wp, bias, residual, relu, p);
    return;
  }
  /* below 85 % useful columns (8x8 maps and smaller) the gathered GEMM is faster */
  if (implicit_ok(p, 85) || (!gg_ok(p) && implicit_ok(p, 65))) {
    implicit_forward(y, x, w, wp, bias, residual, relu, p);
    return;
  }
  if (gg_ok(p)) {
    gg_forward(y, x, w, wp, bias, residual, relu, p);
    return;
  }
#endif
  conv_job j = {.kind = 0, .p = p, .y = y, .x = x, .w = w, .wp = wp, .bias = bias, .residual = residual, .relu = relu};
  run_chunks(&j);
}

/* ---- backward input ----------------------------------------------------------------------- */

static void backward_input_chunk(float *dx, const float *dy, const float *w, const conv_p *p, int b0, int nb) {
  const int G = p->groups, cin_g = p->cin / G, cout_g = p->cout / G;
  const long K = (long)cin_g * p->kh * p->kw, P = (long)p->oh * p->ow, HW = (long)p->h * p->w;
  const int pw = is_pointwise(p);
  const long NP = (long)nb * P;
  float *dcol = (pw && nb == 1) ? NULL : grow(&col_buf, (size_t)K * NP);
  float *dyc = nb == 1 ? NULL : grow(&tmp_buf, (size_t)cout_g * NP);
  if (!pw) memset(dx + (long)b0 * p->cin * HW, 0, sizeof(float) * (size_t)nb * p->cin * HW);
  for (int g = 0; g < G; g++) {
    const float *dyg = dy + (long)b0 * p->cout * P + (long)g * cout_g * P;
    float *dxg = dx + (long)b0 * p->cin * HW + (long)g * cin_g * HW;
    const float *src = dyg;
    if (nb > 1) {
      per_image(T_GATHER, nb, cout_g, 0, p, dyg, dyc, (long)p->cout * P, 0, P, NP);
      src = dyc;
    }
    float *dst = (pw && nb == 1) ? dxg : dcol;
    gemm(1, 0, (int)K, (int)NP, cout_g, w + (long)g * cout_g * K, (int)K, src, (int)NP, 0.0f, dst, (int)NP, NULL, 0);
    if (pw && nb > 1) per_image(T_SCATTER, nb, cin_g, 0, p, dcol, dxg, 0, (long)p->cin * HW, P, NP);
    else if (!pw) per_image(T_COL2IM, nb, 0, cin_g, p, dcol, dxg, 0, (long)p->cin * HW, P, NP);
  }
}

static void backward_input_impl(float *dx, const float *dy, const float *w, const conv_p *p) {
#if defined(__x86_64__)
  /* stride 1: dx is the forward convolution of dy with the flipped, transposed kernel */
  if (p->sh == 1 && p->sw == 1 && p->groups == 1) {
    conv_p q = {p->n, p->cout, p->oh, p->ow, p->cin, p->kh, p->kw, 1, 1, (p->kh - 1) * p->dh - p->ph,
                (p->kw - 1) * p->dw - p->pw, p->dh, p->dw, 1, p->h, p->w};
    if (q.ph >= 0 && q.pw >= 0 && q.oh == (p->oh + 2 * q.ph - (p->kh - 1) * p->dh) && q.ow == (p->ow + 2 * q.pw - (p->kw - 1) * p->dw) &&
        (prow_ok(&q) || implicit_ok(&q, 65) || gg_ok(&q))) {
      const int use_implicit = implicit_ok(&q, 85) || (!gg_ok(&q) && implicit_ok(&q, 65));
      long K = (long)p->cout * p->kh * p->kw;
      const int kk = p->kh * p->kw;
      if (!prow_ok(&q) && !use_implicit) {
        /* the gathered GEMM reads A panels: pack the flipped, transposed kernel straight into them,
         * A[c][co*kk + t] = w[co][c][kk-1-t] (consecutive panel rows c are kk floats apart in w) */
        const int mr = sgemm_mr(p->cin);
        float *Ap = malloc(sizeof(float) * sgemm_packed_a_size(p->cin, (int)K));
        if (!Ap) abort();
        for (int c0 = 0; c0 < p->cin; c0 += mr) {
          float *d = Ap + (long)c0 * K;
          const int rows = p->cin - c0 < mr ? p->cin - c0 : mr;
          for (int co = 0; co < p->cout; co++)
            for (int t = 0; t < kk; t++, d += mr) {
              const float *s = w + ((long)co * p->cin + c0) * kk + (kk - 1 - t);
              int r = 0;
              for (; r < rows; r++) d[r] = s[(long)r * kk];
              for (; r < mr; r++) d[r] = 0.0f;
            }
        }
        gg_forward(dx, dy, NULL, Ap, NULL, NULL, 0, &q);
        free(Ap);
        return;
      }
      float *wt = malloc(sizeof(float) * K * p->cin);
      if (!wt) abort();
      /* in 32 x 32 blocks of (c, co): a plain loop nest strides through one of the two matrices */
      for (int c0 = 0; c0 < p->cin; c0 += 32)
        for (int co0 = 0; co0 < p->cout; co0 += 32)
          for (int c = c0; c < c0 + 32 && c < p->cin; c++)
            for (int co = co0; co < co0 + 32 && co < p->cout; co++) {
              const float *s = w + ((long)co * p->cin + c) * kk;
              float *d = wt + (long)c * K + (long)co * kk;
              for (int t = 0; t < kk; t++) d[kk - 1 - t] = s[t]; /* (ky, kx) -> (kh-1-ky, kw-1-kx) */
            }
      if (prow_ok(&q)) prow_forward(dx, dy, wt, NULL, NULL, NULL, 0, &q);
      else implicit_forward(dx, dy, wt, NULL, NULL, NULL, 0, &q);
      free(wt);
      return;
    }
  }
  /* strided: per-phase implicit GEMMs, when the phase grids waste little (dx phases of 7x7 lose to im2col) */
  long nr = (p->h + p->sh - 1) / p->sh, nt = (p->w + p->sw - 1) / p->sw;
  long wq = nt + ((p->kw - 1) * p->dw + p->sw - 1) / p->sw, tiles = (nr * wq + IT - 1) / IT;
  if (p->groups == 1 && (p->sh > 1 || p->sw > 1) && p->sh <= 64 && p->sw <= 64 && p->kh <= 64 && p->kw <= 64 &&
      strcmp(sgemm_isa(), "avx512") == 0 && p->cin >= 4 && p->n >= 1 && !no_implicit() && nr * nt * 100 >= tiles * IT * 80) {
    implicit_backward_input_strided(dx, dy, w, p);
    return;
  }
#endif
  conv_job j = {.kind = 1, .p = p, .dx = dx, .dy = dy, .w = w};
  run_chunks(&j);
}

/* ---- backward weight ---------------------------------------------------------------------- */

/* dw = (first ? 0 : dw) + sum over the chunk's images. */
static void backward_weight_chunk(float *dw, const float *x, const float *dy, const conv_p *p, int b0, int nb, int first) {
  const int G = p->groups, cin_g = p->cin / G, cout_g = p->cout / G;
  const long K = (long)cin_g * p->kh * p->kw, P = (long)p->oh * p->ow, HW = (long)p->h * p->w;
  const int pw = is_pointwise(p);
  const long NP = (long)nb * P;
  float *col = (pw && nb == 1) ? NULL : grow(&col_buf, (size_t)K * NP);
  float *dyc = nb == 1 ? NULL : grow(&tmp_buf, (size_t)cout_g * NP);
  for (int g = 0; g < G; g++) {
    const float *xg = x + (long)b0 * p->cin * HW + (long)g * cin_g * HW;
    const float *dyg = dy + (long)b0 * p->cout * P + (long)g * cout_g * P;
    const float *src = xg, *dsrc = dyg;
    if (!(pw && nb == 1)) {
      if (pw) per_image(T_GATHER, nb, cin_g, 0, p, xg, col, (long)p->cin * HW, 0, P, NP);
      else per_image(T_IM2COL, nb, 0, cin_g, p, xg, col, (long)p->cin * HW, 0, P, NP);
      src = col;
    }
    if (nb > 1) {
      per_image(T_GATHER, nb, cout_g, 0, p, dyg, dyc, (long)p->cout * P, 0, P, NP);
      dsrc = dyc;
    }
    gemm(0, 1, cout_g, (int)K, (int)NP, dsrc, (int)NP, src, (int)NP, first ? 0.0f : 1.0f, dw + (long)g * cout_g * K, (int)K,
         NULL, 0);
  }
}

static void backward_weight_impl(float *dw, const float *x, const float *dy, const conv_p *p) {
  if (p->n == 0) {
    memset(dw, 0, sizeof(float) * (size_t)p->cout * (p->cin / p->groups) * p->kh * p->kw);
    return;
  }
#if defined(__x86_64__)
  if (bwt_ok(p)) {
    bwt_backward_weight(dw, x, dy, p);
    return;
  }
  if (ggw_ok(p)) {
    ggw_backward_weight(dw, x, dy, p);
    return;
  }
  if (implicit_ok(p, 70)) {
    implicit_backward_weight(dw, x, dy, p);
    return;
  }
#endif
  conv_job j = {.kind = 2, .p = p, .dw = dw, .x = x, .dy = dy};
  run_chunks(&j);
}

/* ---- taps that only ever read padding ------------------------------------------------------
 * On tiny maps most of a kernel can lie in the padding for every output (a 3x3 pad-1 convolution of a
 * 1x1 map only uses its centre tap: ResNet-18's last stage on 32x32 inputs). The outer rows/columns of
 * taps that read no input element for any output are cropped off, which gives the same convolution with a
 * smaller kernel and padding (the bottom/right padding is implicit in oh/ow). */

/* First and one-past-last tap index whose input range [k*d - pad, (out-1)*s - pad + k*d] meets [0, in). */
static void live_taps(int k, int d, int s, int pad, int in, int out, int *k0, int *k1) {
  int a = 0, b = k;
  while (a < b && ((long)(out - 1) * s - pad + (long)a * d < 0 || (long)a * d - pad > in - 1)) a++;
  while (b > a && ((long)(out - 1) * s - pad + (long)(b - 1) * d < 0 || (long)(b - 1) * d - pad > in - 1)) b--;
  *k0 = a;
  *k1 = b;
}

/* The cropped geometry in *q and its [ky0, ky0+q->kh) x [kx0, kx0+q->kw) window; 0 when nothing is cropped. */
static int crop(const conv_p *p, conv_p *q, int *ky0, int *kx0) {
  int a, b, c, d;
  if (p->n <= 0 || p->oh <= 0 || p->ow <= 0) return 0;
  live_taps(p->kh, p->dh, p->sh, p->ph, p->h, p->oh, &a, &b);
  live_taps(p->kw, p->dw, p->sw, p->pw, p->w, p->ow, &c, &d);
  if (b <= a || d <= c || (a == 0 && b == p->kh && c == 0 && d == p->kw)) return 0;
  *q = *p;
  q->kh = b - a; q->kw = d - c;
  q->ph = p->ph - a * p->dh; q->pw = p->pw - c * p->dw;
  if (q->ph < 0 || q->pw < 0) return 0;
  *ky0 = a;
  *kx0 = c;
  return 1;
}

static float *crop_weights(const float *w, const conv_p *p, const conv_p *q, int ky0, int kx0) {
  long rows = (long)p->cout * (p->cin / p->groups);
  float *wq = malloc(sizeof(float) * rows * q->kh * q->kw);
  if (!wq) abort();
  for (long r = 0; r < rows; r++)
    for (int i = 0; i < q->kh; i++)
      for (int jj = 0; jj < q->kw; jj++)
        wq[(r * q->kh + i) * q->kw + jj] = w[(r * p->kh + ky0 + i) * p->kw + kx0 + jj];
  return wq;
}

/* The packed layout that forward_impl reads for this geometry: CONV_LAYOUT_PROW / _PROW16 (pixel-row
 * panels of 32 / 16 channels) or the A-panel height of the GEMM micro-kernel. Cropped geometries unpack the weights anyway. */
int conv2d_pack_layout(const conv_p *p) {
#if defined(__x86_64__)
  conv_p q;
  int ky0, kx0;
  if (!crop(p, &q, &ky0, &kx0)) {
    const int nr = prow_nr(p);
    if (nr) return nr == 16 ? CONV_LAYOUT_PROW16 : CONV_LAYOUT_PROW;
  }
#endif
  return sgemm_mr(p->cout / p->groups);
}

static long layout_size(const conv_p *p, int layout) {
  const int cout_g = p->cout / p->groups, K = (p->cin / p->groups) * p->kh * p->kw;
  if (layout_nr(layout)) return prow_packed_size(p->cout, K, layout_nr(layout));
  return (long)(cout_g + layout - 1) / layout * layout * K * p->groups;
}
long conv2d_layout_size(const conv_p *p, int layout) {
  if (layout_nr(layout) ? p->groups != 1 : (layout < 1 || layout > 64)) return -1;
  return layout_size(p, layout);
}
long conv2d_packed_size(const conv_p *p) { return layout_size(p, conv2d_pack_layout(p)); }

int conv2d_pack_weights(float *wp, const float *w, const conv_p *p) {
  const int cout_g = p->cout / p->groups, K = (p->cin / p->groups) * p->kh * p->kw, layout = conv2d_pack_layout(p);
  if (layout_nr(layout)) {
    prow_pack(w, p->cout, K, layout_nr(layout), wp);
    return layout;
  }
  for (int g = 0; g < p->groups; g++) sgemm_pack_a(w + (long)g * cout_g * K, cout_g, K, layout, wp + g * packed_group(p));
  return layout;
}

void conv2d_unpack_weights(float *w, const float *wp, int layout, const conv_p *p) {
  const int cout_g = p->cout / p->groups, K = (p->cin / p->groups) * p->kh * p->kw;
  if (layout_nr(layout)) {
    prow_unpack(wp, p->cout, K, layout_nr(layout), w);
    return;
  }
  const long group = (long)(cout_g + layout - 1) / layout * layout * K;
  for (int g = 0; g < p->groups; g++) sgemm_unpack_a(wp + g * group, cout_g, K, layout, w + (long)g * cout_g * K);
}

/* The plain weight matrix back from packed weights (a malloc'd copy). */
static float *unpack_weights(const float *wp, int layout, const conv_p *p) {
  float *w = malloc(sizeof(float) * p->cout * (p->cin / p->groups) * p->kh * p->kw);
  if (!w) abort();
  conv2d_unpack_weights(w, wp, layout, p);
  return w;
}

void conv2d_forward_packed(float *y, const float *x, const float *w, const float *wp, int layout, const float *bias,
                           const float *residual, int relu, const conv_p *p) {
  float *tmp = NULL;
  if (wp && layout != conv2d_pack_layout(p)) {
    /* packed for another geometry or micro-kernel (the ISA was switched since): use the plain weights */
    if (!w) w = tmp = unpack_weights(wp, layout, p);
    wp = NULL;
  }
  conv_p q;
  int ky0, kx0;
  if (!crop(p, &q, &ky0, &kx0)) {
    forward_impl(y, x, w, wp, bias, residual, relu, p);
  } else {
    if (!w) w = tmp = unpack_weights(wp, layout, p);
    float *wq = crop_weights(w, p, &q, ky0, kx0);
    forward_impl(y, x, wq, NULL, bias, residual, relu, &q);
    free(wq);
  }
  free(tmp);
}

void conv2d_forward(float *y, const float *x, const float *w, const float *bias, const float *residual, int relu,
                    const conv_p *p) {
  conv2d_forward_packed(y, x, w, NULL, 0, bias, residual, relu, p);
}

void conv2d_backward_input(float *dx, const float *dy, const float *w, const conv_p *p) {
  conv_p q;
  int ky0, kx0;
  if (!crop(p, &q, &ky0, &kx0)) {
    backward_input_impl(dx, dy, w, p);
    return;
  }
  float *wq = crop_weights(w, p, &q, ky0, kx0);
  backward_input_impl(dx, dy, wq, &q);
  free(wq);
}

void conv2d_backward_weight(float *dw, const float *x, const float *dy, const conv_p *p) {
  conv_p q;
  int ky0, kx0;
  if (!crop(p, &q, &ky0, &kx0)) {
    backward_weight_impl(dw, x, dy, p);
    return;
  }
  long rows = (long)p->cout * (p->cin / p->groups);
  float *dwq = malloc(sizeof(float) * rows * q.kh * q.kw);
  if (!dwq) abort();
  backward_weight_impl(dwq, x, dy, &q);
  memset(dw, 0, sizeof(float) * rows * p->kh * p->kw);
  for (long r = 0; r < rows; r++)
    for (int i = 0; i < q.kh; i++)
      for (int jj = 0; jj < q.kw; jj++) dw[(r * p->kh + ky0 + i) * p->kw + kx0 + jj] = dwq[(r * q.kh + i) * q.kw + jj];
  free(dwq);
}
