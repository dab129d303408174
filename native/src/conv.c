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

static void per_image(int kind, int nb, int rows, int cin, const conv_p *p, const float *src, float *dst, long src_img,
                      long dst_img, long len, long ld) {
  img_job j = {kind, nb, rows, cin, p, src, dst, src_img, dst_img, len, ld};
  if (nb == 1) img_task(&j, 0, 1);
  else pool_run_n(img_task, &j, nb);
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

void conv2d_forward(float *y, const float *x, const float *w, const float *bias, const float *residual, int relu,
                    const conv_p *p) {
  const int G = p->groups, cin_g = p->cin / G, cout_g = p->cout / G;
  const long K = (long)cin_g * p->kh * p->kw, P = (long)p->oh * p->ow, HW = (long)p->h * p->w;
  const int pw = is_pointwise(p), cb = chunk_images(p);
  for (int b0 = 0; b0 < p->n; b0 += cb) {
    const int nb = p->n - b0 < cb ? p->n - b0 : cb;
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
      sgemm_ex(0, 0, cout_g, (int)NP, (int)K, 1.0f, w + (long)g * cout_g * K, (int)K, src, (int)NP, beta, out, (int)NP,
               bias ? bias + g * cout_g : NULL, relu);
      if (nb > 1) per_image(T_SCATTER, nb, cout_g, 0, p, tmp, yg, 0, (long)p->cout * P, P, NP);
    }
  }
}

/* ---- backward input ----------------------------------------------------------------------- */

void conv2d_backward_input(float *dx, const float *dy, const float *w, const conv_p *p) {
  const int G = p->groups, cin_g = p->cin / G, cout_g = p->cout / G;
  const long K = (long)cin_g * p->kh * p->kw, P = (long)p->oh * p->ow, HW = (long)p->h * p->w;
  const int pw = is_pointwise(p), cb = chunk_images(p);
  if (!pw) memset(dx, 0, sizeof(float) * (size_t)p->n * p->cin * HW);
  for (int b0 = 0; b0 < p->n; b0 += cb) {
    const int nb = p->n - b0 < cb ? p->n - b0 : cb;
    const long NP = (long)nb * P;
    float *dcol = (pw && nb == 1) ? NULL : grow(&col_buf, (size_t)K * NP);
    float *dyc = nb == 1 ? NULL : grow(&tmp_buf, (size_t)cout_g * NP);
    for (int g = 0; g < G; g++) {
      const float *dyg = dy + (long)b0 * p->cout * P + (long)g * cout_g * P;
      float *dxg = dx + (long)b0 * p->cin * HW + (long)g * cin_g * HW;
      const float *src = dyg;
      if (nb > 1) {
        per_image(T_GATHER, nb, cout_g, 0, p, dyg, dyc, (long)p->cout * P, 0, P, NP);
        src = dyc;
      }
      float *dst = (pw && nb == 1) ? dxg : dcol;
      sgemm(1, 0, (int)K, (int)NP, cout_g, 1.0f, w + (long)g * cout_g * K, (int)K, src, (int)NP, 0.0f, dst, (int)NP);
      if (pw && nb > 1) per_image(T_SCATTER, nb, cin_g, 0, p, dcol, dxg, 0, (long)p->cin * HW, P, NP);
      else if (!pw) per_image(T_COL2IM, nb, 0, cin_g, p, dcol, dxg, 0, (long)p->cin * HW, P, NP);
    }
  }
}

/* ---- backward weight ---------------------------------------------------------------------- */

void conv2d_backward_weight(float *dw, const float *x, const float *dy, const conv_p *p) {
  const int G = p->groups, cin_g = p->cin / G, cout_g = p->cout / G;
  const long K = (long)cin_g * p->kh * p->kw, P = (long)p->oh * p->ow, HW = (long)p->h * p->w;
  const int pw = is_pointwise(p), cb = chunk_images(p);
  if (p->n == 0) memset(dw, 0, sizeof(float) * (size_t)p->cout * K);
  for (int b0 = 0; b0 < p->n; b0 += cb) {
    const int nb = p->n - b0 < cb ? p->n - b0 : cb;
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
      sgemm(0, 1, cout_g, (int)K, (int)NP, 1.0f, dsrc, (int)NP, src, (int)NP, b0 == 0 ? 0.0f : 1.0f,
            dw + (long)g * cout_g * K, (int)K);
    }
  }
}
