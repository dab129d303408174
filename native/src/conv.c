/* Convolution as im2col + GEMM on NCHW tensors, batched over images.
 *
 * Images are processed in chunks of `nb` so that every GEMM has at least ~2048 columns even when
 * the feature maps are tiny (a 32x32 CIFAR batch has 1x1 maps in its last stage: per-image GEMMs
 * there would be matrix-vector products). For a chunk and a group:
 *   col[K = cin_g*kh*kw][nb*P]   patches of all images side by side (column = img*P + pixel)
 *   forward          out[cout_g][nb*P] = w[cout_g][K] · col   (+ bias, residual, relu fused)
 *   backward input   dcol[K][nb*P]    = w^T · dy_chunk, then col2im adds each image's part into dx
 *   backward weight  dw[cout_g][K]    += dy_chunk · col^T
 * When nb == 1 the GEMM reads/writes the NCHW planes directly; otherwise outputs are gathered and
 * scattered around it (cheap next to the GEMM). A 1x1 stride-1 unpadded convolution needs no im2col.
 * The GEMMs are multi-threaded; im2col, col2im and the gathers are split across threads by image.
 * Scratch buffers belong to the calling thread and are reused across calls. */
#include "conv.h"
#include "gemm.h"
#include "pool.h"
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
} img_job;

static void img_task(void *ctx, int tid, int n) {
  const img_job *j = ctx;
  long lo, hi;
  pool_split(j->nb, tid, n, 1, &lo, &hi);
  for (long img = lo; img < hi; img++) {
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
  img_job j = {kind, nb, rows, cin, p, src, dst, src_img, dst_img, len, ld};
  if (nb == 1 || !mt) img_task(&j, 0, 1);
  else pool_run_n(img_task, &j, nb);
}

static void gemm(int ta, int tb, int M, int N, int K, const float *A, int lda, const float *B, int ldb, float beta, float *C,
                 int ldc, const float *bias, int relu) {
  if (mt) sgemm_ex(ta, tb, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc, bias, relu);
  else sgemm_ex_st(ta, tb, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc, bias, relu);
}

/* Images per chunk: enough for MIN_COLS GEMM columns, within the scratch budget. */
static int chunk_images(const conv_p *p) {
  long P = (long)p->oh * p->ow;
  long K = (long)(p->cin / p->groups) * p->kh * p->kw;
  long rows = K > p->cout / p->groups ? K : p->cout / p->groups;
  long nb = P >= MIN_COLS ? 1 : (MIN_COLS + P - 1) / P;
  if (nb > p->n) nb = p->n;
  while (nb > 1 && rows * nb * P > MAX_COL_FLOATS) nb--;
  return nb < 1 ? 1 : (int)nb;
}

/* ---- forward ------------------------------------------------------------------------------ */

static void forward_chunk(float *y, const float *x, const float *w, const float *bias, const float *residual, int relu,
                          const conv_p *p, int b0, int nb) {
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
    gemm(0, 0, cout_g, (int)NP, (int)K, w + (long)g * cout_g * K, (int)K, src, (int)NP, beta, out, (int)NP,
         bias ? bias + g * cout_g : NULL, relu);
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
  const float *x, *w, *bias, *residual, *dy;
  int relu, cb, nchunks;
} conv_job;

static void backward_input_chunk(float *dx, const float *dy, const float *w, const conv_p *p, int b0, int nb);
static void backward_weight_chunk(float *dw, const float *x, const float *dy, const conv_p *p, int b0, int nb, int first);

static void chunk_task(void *ctx, int tid, int n) {
  const conv_job *j = ctx;
  const conv_p *p = j->p;
  long lo, hi;
  pool_split(j->nchunks, tid, n, 1, &lo, &hi);
  mt = 0;
  long wn = (long)p->cout * (p->cin / p->groups) * p->kh * p->kw;
  float *dw = j->kind == 2 ? (tid == 0 ? j->dw : j->partials + (long)(tid - 1) * wn) : NULL;
  if (j->kind == 2 && lo >= hi) memset(dw, 0, sizeof(float) * wn);
  for (long c = lo; c < hi; c++) {
    int b0 = (int)c * j->cb, nb = p->n - b0 < j->cb ? p->n - b0 : j->cb;
    if (j->kind == 0) forward_chunk(j->y, j->x, j->w, j->bias, j->residual, j->relu, p, b0, nb);
    else if (j->kind == 1) backward_input_chunk(j->dx, j->dy, j->w, p, b0, nb);
    else backward_weight_chunk(dw, j->x, j->dy, p, b0, nb, c == lo);
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
      j->partials = malloc(sizeof(float) * wn * (T - 1));
      if (!j->partials) abort();
    }
    pool_run_n(chunk_task, j, j->nchunks);
    if (j->kind == 2) {
      int used = T < j->nchunks ? T : j->nchunks;
      for (int t = 1; t < used; t++) {
        const float *src = j->partials + (long)(t - 1) * wn;
        for (long i = 0; i < wn; i++) j->dw[i] += src[i];
      }
      free(j->partials);
    }
    return;
  }
  for (int c = 0; c < j->nchunks; c++) {
    int b0 = c * j->cb, nb = p->n - b0 < j->cb ? p->n - b0 : j->cb;
    if (j->kind == 0) forward_chunk(j->y, j->x, j->w, j->bias, j->residual, j->relu, p, b0, nb);
    else if (j->kind == 1) backward_input_chunk(j->dx, j->dy, j->w, p, b0, nb);
    else backward_weight_chunk(j->dw, j->x, j->dy, p, b0, nb, c == 0);
  }
}

void conv2d_forward(float *y, const float *x, const float *w, const float *bias, const float *residual, int relu,
                    const conv_p *p) {
  conv_job j = {.kind = 0, .p = p, .y = y, .x = x, .w = w, .bias = bias, .residual = residual, .relu = relu};
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

void conv2d_backward_input(float *dx, const float *dy, const float *w, const conv_p *p) {
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

void conv2d_backward_weight(float *dw, const float *x, const float *dy, const conv_p *p) {
  if (p->n == 0) {
    memset(dw, 0, sizeof(float) * (size_t)p->cout * (p->cin / p->groups) * p->kh * p->kw);
    return;
  }
  conv_job j = {.kind = 2, .p = p, .dw = dw, .x = x, .dy = dy};
  run_chunks(&j);
}
