/* Convolution on NCHW tensors, batched over images: the entry points of conv.h, the choice among
 * the paths, weight packing, and the portable path (im2col + packed GEMM). The AVX-512 kernels are
 * in conv_prow.c (pixel rows), conv_qgrid.c (implicit GEMM on the q grid, phase planes) and
 * conv_gather.c (gathered GEMM; backward weight for wide and for narrow layers); conv_dense.c (tiny
 * maps as one dense product) and conv_rows.c (small strided maps as one GEMM with (image, pixel)
 * rows) run on any ISA. ARCHITECTURE.md says which layers take which.
 *
 * im2col + packed GEMM, for what the AVX-512 kernels do not take (groups, other ISAs, 1x1 maps).
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
 * Every path hands work out dynamically (an atomic counter) in one pool dispatch per call, so a
 * thread slowed by other processes takes less of it; pool_run_dynamic does not wait for workers that
 * never started. Scratch buffers belong to the calling thread and are reused across calls. */
#include "conv_internal.h"
#include "gemm.h"
#include "ops.h" /* add_fwd */
#include "pool.h"
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MIN_COLS 2048
#define MAX_COL_FLOATS (8L << 20) /* 32 MB of patches per chunk at most */


static _Thread_local buf_t col_buf, tmp_buf;

/* Buffers of 2 MB and more are mapped on their own (map_large, pool.c: 2 MB-aligned, advised for
 * transparent huge pages): Winograd's transformed tiles and products, phase planes, streamed whole by
 * every pass (see allocLarge in addon.c). Smaller ones, or where mmap fails, come from malloc. */
#define BIG_BUF ((size_t)2 << 20)
static void buf_release(buf_t *b) {
  if (b->maplen) unmap_large(b->p, b->maplen);
  else free(b->p);
  b->p = NULL;
  b->cap = b->maplen = 0;
}
float *grow(buf_t *b, size_t n) {
  if (n > b->cap) {
    buf_release(b);
    const size_t bytes = ((n * sizeof(float) + 63) / 64) * 64;
    size_t len = 0;
    float *m = bytes >= BIG_BUF ? map_large(bytes, &len) : NULL;
    if (m) {
      b->p = m;
      b->cap = n;
      b->maplen = len;
      return b->p;
    }
    b->p = aligned_alloc(64, bytes);
    b->cap = b->p ? n : 0;
    if (!b->p) abort();
  }
  return b->p;
}

typedef struct {
  const float *wt;
  float *Ap;
  int M, K, mr;
} pack_a_job;

/* Panels split over the threads: a training step packs every layer's weights on every call, and
 * done by one thread ahead of the parallel part this was most of a small-map convolution
 * (ResNet-18's 256-channel layers on 2x2 maps: 2 threads no faster than 1). */
static void pack_a_task(void *ctx, int tid, int n) {
  const pack_a_job *j = ctx;
  const int panels = (j->M + j->mr - 1) / j->mr;
  long lo, hi;
  pool_split(panels, tid, n, 1, &lo, &hi);
  if (lo >= hi) return;
  const int m0 = (int)lo * j->mr, m1 = (int)hi * j->mr < j->M ? (int)hi * j->mr : j->M;
  sgemm_pack_a(j->wt + (long)m0 * j->K, m1 - m0, j->K, j->mr, j->Ap + (long)m0 * j->K);
}

const float *a_panels(const float *wt, const float *wp, int M, int K, buf_t *buf) {
  if (wp) return wp;
  float *Ap = grow(buf, sgemm_packed_a_size(M, K));
  pack_a_job j = {wt, Ap, M, K, sgemm_mr(M)};
  if ((long)M * K < (1L << 16) || M <= j.mr) pack_a_task(&j, 0, 1);
  else pool_run(pack_a_task, &j);
  return Ap;
}

int env_zero(const char *name, int *cache) {
  if (*cache < 0) {
    const char *e = getenv(name);
    *cache = e != NULL && strcmp(e, "0") == 0;
  }
  return *cache;
}

long l2_bytes(void) {
  static long cached = 0;
  if (cached == 0) {
    long b = 0;
    const char *e = getenv("RESNET_L2_KB");
    if (e && *e) b = atol(e) * 1024;
#ifdef _SC_LEVEL2_CACHE_SIZE
    if (b <= 0) b = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
    if (b <= 0) b = 1L << 20;
    cached = b < (256L << 10) ? 256L << 10 : b > (16L << 20) ? 16L << 20 : b;
  }
  return cached;
}

int is_pointwise(const conv_p *p) {
  return p->kh == 1 && p->kw == 1 && p->sh == 1 && p->sw == 1 && p->ph == 0 && p->pw == 0;
}

/* Valid output columns [*o0, *o1) for tap offset `shift` = kx*dw - pw: 0 <= ox*sw + shift < w. */
void col_range(int shift, int sw, int w, int n, int *o0, int *o1) {
  int a = shift >= 0 ? 0 : (-shift + sw - 1) / sw;
  int b = (w - 1 - shift) < 0 ? 0 : (w - 1 - shift) / sw + 1;
  if (b > n) b = n;
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
          fill_row(d, xc + (long)iy * p->w + shift, p->ow, o0, o1, p->sw);
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

/* ---- pixel-row weight panels (the kernels are in conv_prow.c) ---- */
/* Panels of nr output channels (32; 16 for the 16-channel kernel): dst[(j*K + k)*nr + i] = w[(j + i)*K + k],
 * 0 past M. */
long prow_packed_size(int M, int K, int nr) { return (long)(M + nr - 1) / nr * nr * K; }
void prow_pack(const float *w, int M, int K, int nr, float *dst) {
  for (int j = 0; j < M; j += nr) {
    float *d = dst + (long)j * K;
    int rows = M - j < nr ? M - j : nr;
    for (int k = 0; k < K; k++) {
      for (int i = 0; i < rows; i++) d[(long)k * nr + i] = w[(long)(j + i) * K + k];
      for (int i = rows; i < nr; i++) d[(long)k * nr + i] = 0.0f;
    }
  }
}
void prow_unpack(const float *src, int M, int K, int nr, float *w) {
  for (int j = 0; j < M; j += nr) {
    const float *s = src + (long)j * K;
    int rows = M - j < nr ? M - j : nr;
    for (int k = 0; k < K; k++)
      for (int i = 0; i < rows; i++) w[(long)(j + i) * K + k] = s[(long)k * nr + i];
  }
}
/* The panel width of a pixel-row layout (0: not one). */
int layout_nr(int layout) { return layout == CONV_LAYOUT_PROW ? 32 : layout == CONV_LAYOUT_PROW16 ? 16 : 0; }



/* A convolution whose kernel covers its whole map without padding, for a 1x1 output, is a linear layer
 * over the batch: NCHW x is [n][cin*h*w] in the order of the weights' [co][ci][ky][kx]. So are, once
 * cropped to their live taps, a 3x3 convolution of 1x1 maps (ResNet-18's last stage on 32x32 inputs)
 * and the stride-2 3x3 of 2x2 maps to 1x1 (its first block). One GEMM over all images instead of one
 * matrix-vector product per image (64 x 512 x 512: 3.5 -> ~0.6 ms a pass; 64 x 256 -> 512, 2x2 -> 1x1:
 * 1.6–1.9 -> 1.0–1.3 ms forward). */
static int is_linear(const conv_p *p) {
  return p->groups == 1 && p->kh == p->h && p->kw == p->w && (p->kh == 1 || p->dh == 1) && (p->kw == 1 || p->dw == 1) &&
         p->oh == 1 && p->ow == 1 && p->ph == 0 && p->pw == 0 && p->n > 0;
}

/* Whether p's forward (backward_input 0) or backward input runs as one GEMM with (image, pixel) rows
 * (conv_rows.c). */
static int rows(const conv_p *p, int backward_input) {
  static int off = -1;
  return !env_zero("RESNET_ROWS", &off) && rows_ok(p, backward_input);
}

/* Whether the AVX-512 kernels run at all (blocked layout, Winograd): the ISA, not switched off. */
static int avx512_paths(void) { return strcmp(sgemm_isa(), "avx512") == 0 && !no_implicit(); }
/* The Winograd tile for an NCHW convolution with plain weights here, 0: another path. */
static int nchw_wino(const conv_p *p) { return avx512_paths() ? wino_nchw_tile(p) : 0; }
/* Whether the AVX2 Winograd (conv_wino2.c) takes pass W2_PACKED (the forward with the plan's
 * CONV_LAYOUT_W2), W2_PER_CALL (a forward or backward-input with plain weights) or W2_WEIGHT_GRADIENT
 * of an NCHW convolution: the AVX2 kernels in use, not switched off (RESNET_WINO=0: no Winograd at
 * all; RESNET_WINO2=0: this one). */
static int wino2(const conv_p *p, int pass) {
  static int off = -1, off2 = -1;
  return strcmp(sgemm_isa(), "avx2") == 0 && !no_implicit() && !env_zero("RESNET_WINO", &off) && !env_zero("RESNET_WINO2", &off2) &&
         w2_ok(p, pass);
}

/* Whether the forward runs the AVX2 pixels in lanes (pil2_ok): not for more than 128 input channels
 * where the tap panels take the layer (conv_taps.c; AVX2 forced on the Zen 5 VM, two threads, fastest
 * calls: ResNet-50's 256 on 14x14 at batch 8 10.1 against 11.7 ms, 512 on 7x7 10.1 against 13.9;
 * 128 on 28x28 11.4 against 11.0 and the smaller ones stay with pil2). The backward-input keeps
 * pil2_ok: the tap panels are a forward only. */
#if defined(__x86_64__)
static int pil2_fwd(const conv_p *p) {
  return pil2_ok(p) && !((long)p->cin * p->kh * p->kw > 128 * 9 && taps_ok(p));
}
#endif

static void forward_impl(float *y, const float *x, const float *w, const float *wp, const float *bias, const float *residual,
                         int relu, const conv_p *p) {
  if (w && is_linear(p)) {
    /* y[n][co] = x[n][:] . w[co][:] (+ residual) + bias[co], then relu */
    const long ny = (long)p->n * p->cout;
    const int K = p->cin * p->kh * p->kw;
    if (residual && residual != y) memcpy(y, residual, sizeof(float) * ny);
    sgemm_ex(0, 1, p->n, p->cout, K, 1.0f, x, K, w, K, residual ? 1.0f : 0.0f, y, p->cout, NULL, 0);
    if (bias || relu)
      for (long i = 0; i < ny; i++) {
        const float v = y[i] + (bias ? bias[i % p->cout] : 0.0f);
        y[i] = relu ? (v > 0.0f ? v : (v != v ? v : 0.0f)) : v;
      }
    return;
  }
  if (w && rows(p, 0)) {
    rows_forward(y, x, w, bias, residual, relu, p);
    return;
  }
#if defined(__x86_64__)
  /* Winograd F(4x4, 3x3) where it applies (plain weights: training, and calls without a packing) */
  const int wm = w ? nchw_wino(p) : 0;
  if (wm) {
    wino_forward_nchw(y, x, w, 0, bias, residual, relu, p, wm, NULL, NULL);
    return;
  }
  if (wp ? wino2(p, W2_PACKED) : w && wino2(p, W2_PER_CALL)) { /* wp: CONV_LAYOUT_W2 (conv2d_forward_packed checked it) */
    w2_forward_nchw(y, x, w, wp, 0, bias, residual, relu, p, NULL, NULL);
    return;
  }
  if (w && pil_ok(p)) {
    pil_forward(y, x, w, bias, residual, relu, p);
    return;
  }
  if (w && pil2_fwd(p)) {
    pil2_forward(y, x, w, (long)p->cin * p->kh * p->kw, (long)p->kh * p->kw, 0, bias, residual, relu, p);
    return;
  }
  if (w && pil_strided_ok(p, 0)) {
    pil_forward_strided(y, x, w, bias, residual, relu, p);
    return;
  }
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
  if (taps_ok(p)) {
    taps_forward(y, x, w, wp, bias, residual, relu, p);
    return;
  }
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

#if defined(__x86_64__)
/* Strided backward input by per-phase implicit GEMMs, when the phase grids waste little (dx phases
 * of 7x7 lose to im2col). */
static int strided_implicit_ok(const conv_p *p) {
  long nr = (p->h + p->sh - 1) / p->sh, nt = (p->w + p->sw - 1) / p->sw;
  long wq = nt + ((p->kw - 1) * p->dw + p->sw - 1) / p->sw, tiles = (nr * wq + IT - 1) / IT;
  return p->groups == 1 && (p->sh > 1 || p->sw > 1) && p->sh <= 64 && p->sw <= 64 && p->kh <= 64 && p->kw <= 64 &&
         strcmp(sgemm_isa(), "avx512") == 0 && p->cin >= 4 && p->n >= 1 && !no_implicit() && nr * nt * 100 >= tiles * IT * 80;
}

/* ---- strided backward input by phases (small maps) -----------------------------------------
 * With stride s (dilation 1), input row iy = s*jy + ry of phase ry receives only the taps
 * ky = ky0 + m*s, ky0 = (ry + pad) mod s, from output row oy = jy + c - m, c = (ry + pad - ky0) / s:
 * each phase of dx is a stride-1 correlation of dy with those taps, flipped (u = nt - 1 - m), with
 * top padding nt - 1 - c, and the channels swapped. The phases together apply each tap once to each
 * output pixel, so no zeros are multiplied and no patch matrix is written (im2col's patches of a
 * 3x3/2 layer from 8x8 to 4x4 hold 16 % padding, and its col2im is a second pass over them); each
 * phase is the gathered GEMM's small-map case, writing its pixels of dx in place (the addend as its
 * residual). */
typedef struct {
  int first, count, pad; /* first tap, taps, padding of the phase's correlation */
} phase_taps;

/* The taps of phase r along one axis (kernel k, stride s, padding pad); 0 if the phase has none or
 * would need negative padding. */
static int phase_of(int r, int k, int s, int pad, phase_taps *t) {
  t->first = (r + pad) % s;
  t->count = t->first < k ? (k - 1 - t->first) / s + 1 : 0;
  t->pad = t->count - 1 - (r + pad - t->first) / s;
  return t->count > 0 && t->pad >= 0;
}

static int phases_ok(const conv_p *p) {
  if (p->groups != 1 || (p->sh == 1 && p->sw == 1) || p->dh != 1 || p->dw != 1 || !gg_ok(p)) return 0;
  /* Taken where im2col's patch matrix outgrows L2 with few products per element: its GEMM's K is
   * cout, and the matrix is written, then read again by col2im (ResNet-18's 64 -> 128 from 8x8 to
   * 4x4 at batch 64: 590K floats, K = 128; 1.7-2.6 -> 1.2-1.7 ms, -31 to -35 %). Measured slower
   * with many products per element (256 -> 512 from 14x14 at batch 8, K = 512: +24 %), with a
   * patch matrix inside L2 (32 -> 64 from 10x10 at batch 32: +7-13 %), on 2x2 phases (four small
   * GEMMs against im2col's one: 128 -> 256 from 4x4, +49 %) and for a 3-channel stem (4x slower). */
  const long patch = (long)p->cin * p->kh * p->kw * p->n * p->oh * p->ow;
  if (p->h / p->sh < 4 || p->w / p->sw < 4 || p->cin < 16 || p->cout > 128 || patch <= (256L << 10) ||
      (long)p->n * p->cin * p->h * p->w >= (1L << 31) - (1L << 20))
    return 0;
  phase_taps t;
  for (int r = 0; r < p->sh; r++)
    if (!phase_of(r, p->kh, p->sh, p->ph, &t)) return 0;
  for (int r = 0; r < p->sw; r++)
    if (!phase_of(r, p->kw, p->sw, p->pw, &t)) return 0;
  return 1;
}

static void phases_backward_input(float *dx, const float *dy, const float *w, const conv_p *p, const float *addend) {
  static _Thread_local buf_t wbuf;
  const int kk = p->kh * p->kw;
  for (int ry = 0; ry < p->sh; ry++)
    for (int rx = 0; rx < p->sw; rx++) {
      phase_taps ty, tx;
      phase_of(ry, p->kh, p->sh, p->ph, &ty);
      phase_of(rx, p->kw, p->sw, p->pw, &tx);
      const conv_p q = {p->n, p->cout, p->oh, p->ow, p->cin, ty.count, tx.count, 1, 1, ty.pad, tx.pad, 1, 1, 1,
                        (p->h - ry + p->sh - 1) / p->sh, (p->w - rx + p->sw - 1) / p->sw};
      /* wt[ci][(co, u, v)] = w[co][ci][first + (count-1-u)*s][...]: the phase's taps, flipped */
      const long K = (long)p->cout * q.kh * q.kw;
      float *wt = grow(&wbuf, (size_t)p->cin * K);
      for (int ci = 0; ci < p->cin; ci++)
        for (int co = 0; co < p->cout; co++) {
          const float *src = w + ((long)co * p->cin + ci) * kk;
          float *d = wt + ci * K + (long)co * q.kh * q.kw;
          for (int u = 0; u < q.kh; u++)
            for (int v = 0; v < q.kw; v++)
              d[u * q.kw + v] = src[(ty.first + (q.kh - 1 - u) * p->sh) * p->kw + tx.first + (q.kw - 1 - v) * p->sw];
        }
      const long hw = (long)p->h * p->w;
      const gg_out o = {(long)p->cin * hw, hw, (long)p->sh * p->w, p->sw, (long)ry * p->w + rx};
      gg_forward_to(dx, dy, wt, NULL, NULL, addend, 0, &q, &o);
    }
}
#endif

/* dx = the input gradient (+ addend: the forward paths' residual epilogue, which may read dx itself,
 * or the GEMM's beta; paths without such an epilogue, the strided ones, add it afterwards). */
static void backward_input_impl(float *dx, const float *dy, const float *w, const conv_p *p, const float *addend) {
  if (is_linear(p)) { /* dx[n][k] = dy[n][:] . w[:][k] */
    const int K = p->cin * p->kh * p->kw;
    if (addend && addend != dx) memcpy(dx, addend, sizeof(float) * (size_t)p->n * K);
    sgemm_ex(0, 0, p->n, K, p->cout, 1.0f, dy, p->cout, w, K, addend ? 1.0f : 0.0f, dx, K, NULL, 0);
    return;
  }
#if defined(__x86_64__)
  /* stride 1: dx is the forward convolution of dy with the flipped, transposed kernel */
  if (p->sh == 1 && p->sw == 1 && p->groups == 1) {
    conv_p q = {p->n, p->cout, p->oh, p->ow, p->cin, p->kh, p->kw, 1, 1, (p->kh - 1) * p->dh - p->ph,
                (p->kw - 1) * p->dw - p->pw, p->dh, p->dw, 1, p->h, p->w};
    const int wm = avx512_paths() ? wino_nchw_tile(&q) : 0;
    if (wm) {
      wino_forward_nchw(dx, dy, w, 1, NULL, addend, 0, &q, wm, NULL, NULL);
      return;
    }
    if (wino2(&q, W2_PER_CALL)) {
      w2_forward_nchw(dx, dy, w, NULL, 1, NULL, addend, 0, &q, NULL, NULL);
      return;
    }
    if (pil2_ok(&q)) { /* dx[c] += dy[co] * w[co][c][kk - 1 - t] */
      pil2_forward(dx, dy, w, (long)p->kh * p->kw, (long)p->cin * p->kh * p->kw, 1, NULL, addend, 0, &q);
      return;
    }
    if (q.ph >= 0 && q.pw >= 0 && q.oh == (p->oh + 2 * q.ph - (p->kh - 1) * p->dh) && q.ow == (p->ow + 2 * q.pw - (p->kw - 1) * p->dw) &&
        (pil_ok(&q) || prow_ok(&q) || implicit_ok(&q, 65) || gg_ok(&q))) {
      const int use_implicit = implicit_ok(&q, 85) || (!gg_ok(&q) && implicit_ok(&q, 65));
      long K = (long)p->cout * p->kh * p->kw;
      const int kk = p->kh * p->kw;
      if (!pil_ok(&q) && !prow_ok(&q) && !use_implicit) {
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
        gg_forward(dx, dy, NULL, Ap, NULL, addend, 0, &q);
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
      if (pil_ok(&q)) pil_forward(dx, dy, wt, NULL, addend, 0, &q);
      else if (prow_ok(&q)) prow_forward(dx, dy, wt, NULL, NULL, addend, 0, &q);
      else implicit_forward(dx, dy, wt, NULL, NULL, addend, 0, &q);
      free(wt);
      return;
    }
  }
#endif
  if (rows(p, 1)) {
    rows_backward_input(dx, dy, w, p, addend);
    return;
  }
#if defined(__x86_64__)
  if (pil_strided_ok(p, 1)) {
    pil_backward_input_strided(dx, dy, w, p, addend);
    return;
  }
  if (phases_ok(p) && !strided_implicit_ok(p)) {
    phases_backward_input(dx, dy, w, p, addend);
    return;
  }
#endif
  if (addend) {
    const long nx = (long)p->n * p->cin * p->h * p->w;
    if (addend == dx) {
      static _Thread_local buf_t acc_buf;
      float *t = grow(&acc_buf, (size_t)nx);
      backward_input_impl(t, dy, w, p, NULL);
      add_fwd(dx, dx, t, nx);
    } else {
      backward_input_impl(dx, dy, w, p, NULL);
      add_fwd(dx, dx, addend, nx);
    }
    return;
  }
#if defined(__x86_64__)
  if (strided_implicit_ok(p)) {
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
  if (is_linear(p)) { /* dw[co][k] = sum over images of dy[n][co] x[n][k]; each element by one thread, in order */
    const int K = p->cin * p->kh * p->kw;
    sgemm_ex(1, 0, p->cout, K, p->n, 1.0f, dy, p->cout, x, K, 0.0f, dw, K, NULL, 0);
    return;
  }
#if defined(__x86_64__)
  const int wm = avx512_paths() ? wino_nchw_tile(p) : 0;
  if (wm) {
    wino_backward_weight_nchw(dw, x, dy, p, wm, NULL, NULL);
    return;
  }
  if (wino2(p, W2_WEIGHT_GRADIENT)) {
    w2_backward_weight_nchw(dw, x, dy, p, NULL, NULL);
    return;
  }
  if (p->sh > 1 && bwt_ok(p)) { /* strided: the outer products over phase planes (conv_gather.c) */
    bwt_backward_weight(dw, x, dy, p);
    return;
  }
  if (pil_bw_ok(p)) {
    pil_backward_weight(dw, x, dy, p);
    return;
  }
  if (pil2_bw_ok(p)) {
    pil2_backward_weight(dw, x, dy, p);
    return;
  }
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
  if (taps_bw_ok(p)) {
    taps_backward_weight(dw, x, dy, p);
    return;
  }
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

typedef struct {
  const float *src;
  float *dst;
  long rows;
  int skh, skw, dkh, dkw, ky0, kx0, scatter;
} crop_job;

/* Rows (co, ci) split over the threads: the cropped window [ky0, +dkh) x [kx0, +dkw) of each source
 * kernel copied out (scatter 0), or written back into a zeroed full kernel (scatter 1). */
static void crop_task(void *ctx, int tid, int n) {
  crop_job *j = ctx;
  long lo, hi;
  pool_split(j->rows, tid, n, 1, &lo, &hi);
  if (!j->scatter) {
    crop_kernel_rows(j->dst, j->src, lo, hi, j->skh, j->skw, j->ky0, j->kx0, j->dkh, j->dkw);
    return;
  }
  const int sk = j->skh * j->skw, dk = j->dkh * j->dkw;
  for (long r = lo; r < hi; r++) {
    float *d = j->dst + r * sk;
    for (int t = 0; t < sk; t++) d[t] = 0.0f;
    for (int i = 0; i < j->dkh; i++)
      for (int jj = 0; jj < j->dkw; jj++) d[(j->ky0 + i) * j->skw + j->kx0 + jj] = j->src[r * dk + i * j->dkw + jj];
  }
}

/* The cropped weights (p's kernels cut to q's window), in a per-thread buffer that is kept: a 3x3
 * convolution of a 1x1 map reads only the centre taps, but they lie spread over the whole kernel
 * array (ResNet-18's 512 channels on 32x32 inputs: 9.4 MB for 1 MB of taps), so the copy runs on all
 * threads and without a fresh allocation (its page faults) per call. */
static float *crop_weights(const float *w, const conv_p *p, const conv_p *q, int ky0, int kx0) {
  static _Thread_local buf_t crop_buf;
  const long rows = (long)p->cout * (p->cin / p->groups);
  float *wq = grow(&crop_buf, (size_t)rows * q->kh * q->kw);
  conv2d_crop_kernels(wq, w, rows, p->kh, p->kw, ky0, kx0, q->kh, q->kw);
  return wq;
}

/* The window [ky0, ky0+dkh) x [kx0, kx0+dkw) of each of `rows` skh x skw kernels, copied out (the
 * kernel interface's cropKernels: the ops layer caches a weight's live taps across calls). */
void conv2d_crop_kernels(float *dst, const float *src, long rows, int skh, int skw, int ky0, int kx0, int dkh, int dkw) {
  crop_job j = {src, dst, rows, skh, skw, dkh, dkw, ky0, kx0, 0};
  pool_run_n(crop_task, &j, rows < (1 << 14) ? 1 : pool_threads());
}

/* Whether p runs as a dense linear layer (conv_dense.c) in all three passes. */
static int dense(const conv_p *p) {
  static int off = -1;
  return !env_zero("RESNET_DENSE", &off) && dense_ok(p);
}

/* The packed layout that forward_impl reads for this geometry: CONV_LAYOUT_PLAIN (the paths that take
 * plain weights: Winograd on NCHW, pixels in lanes), CONV_LAYOUT_PROW / _PROW16 (pixel-row panels of
 * 32 / 16 channels) or the A-panel height of the GEMM micro-kernel. Cropped geometries unpack the
 * weights anyway. */
int conv2d_pack_layout(const conv_p *p) {
  if (dense(p)) return CONV_LAYOUT_PLAIN;
#if defined(__x86_64__)
  conv_p q;
  int ky0, kx0;
  if (!crop(p, &q, &ky0, &kx0)) {
    if (wino2(p, W2_PACKED)) return CONV_LAYOUT_W2;
    /* the paths forward_impl takes with plain weights before any packed one */
    if (nchw_wino(p) || pil_ok(p) || pil_strided_ok(p, 0) || pil2_fwd(p)) return CONV_LAYOUT_PLAIN;
    const int nr = prow_nr(p);
    if (nr) return nr == 16 ? CONV_LAYOUT_PROW16 : CONV_LAYOUT_PROW;
  }
#endif
  return sgemm_mr(p->cout / p->groups);
}

static long layout_size(const conv_p *p, int layout) {
  if (wino_tile(layout)) return wino_packed_size(p, wino_tile(layout));
#if defined(__x86_64__)
  if (layout == CONV_LAYOUT_W2) return w2_packed_size(p);
#endif
  if (layout == CONV_LAYOUT_PLAIN) return (long)p->cout * (p->cin / p->groups) * p->kh * p->kw;
  const int cout_g = p->cout / p->groups, K = (p->cin / p->groups) * p->kh * p->kw;
  if (layout_nr(layout)) return prow_packed_size(p->cout, K, layout_nr(layout));
  return (long)(cout_g + layout - 1) / layout * layout * K * p->groups;
}
long conv2d_layout_size(const conv_p *p, int layout) {
  if (wino_tile(layout)) return p->groups == 1 && p->kh == 3 && p->kw == 3 ? layout_size(p, layout) : -1;
  if (layout == CONV_LAYOUT_PLAIN) return layout_size(p, layout);
#if defined(__x86_64__)
  /* the packing depends on the channels only: any input size can unpack it */
  if (layout == CONV_LAYOUT_W2) return p->groups == 1 && p->kh == 3 && p->kw == 3 && p->cin % 8 == 0 && p->cout % 8 == 0 ? layout_size(p, layout) : -1;
#endif
  if (layout_nr(layout) ? p->groups != 1 : (layout < 1 || layout > 64)) return -1;
  return layout_size(p, layout);
}
long conv2d_packed_size(const conv_p *p) { return layout_size(p, conv2d_pack_layout(p)); }

int conv2d_pack_weights(float *wp, const float *w, const conv_p *p) {
  const int cout_g = p->cout / p->groups, K = (p->cin / p->groups) * p->kh * p->kw, layout = conv2d_pack_layout(p);
  if (layout == CONV_LAYOUT_PLAIN) {
    memcpy(wp, w, sizeof(float) * (size_t)layout_size(p, layout));
    return layout;
  }
#if defined(__x86_64__)
  if (layout == CONV_LAYOUT_W2) {
    w2_pack(w, p, wp);
    return layout;
  }
#endif
  if (layout_nr(layout)) {
    prow_pack(w, p->cout, K, layout_nr(layout), wp);
    return layout;
  }
  for (int g = 0; g < p->groups; g++) sgemm_pack_a(w + (long)g * cout_g * K, cout_g, K, layout, wp + g * packed_group(p));
  return layout;
}

void conv2d_unpack_weights(float *w, const float *wp, int layout, const conv_p *p) {
  const int cout_g = p->cout / p->groups, K = (p->cin / p->groups) * p->kh * p->kw;
  if (wino_tile(layout)) {
    wino_unpack(wp, p, wino_tile(layout), w);
    return;
  }
  if (layout == CONV_LAYOUT_PLAIN) {
    memcpy(w, wp, sizeof(float) * (size_t)layout_size(p, layout));
    return;
  }
#if defined(__x86_64__)
  if (layout == CONV_LAYOUT_W2) {
    w2_unpack(wp, p, w);
    return;
  }
#endif
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
  if (wp && layout == CONV_LAYOUT_PLAIN) { /* plain weights are the weights */
    if (!w) w = wp;
    wp = NULL;
  }
  conv_p q;
  int ky0, kx0;
  if (dense(p)) {
    if (!w) w = tmp = unpack_weights(wp, layout, p);
    dense_forward(y, x, w, bias, residual, relu, p);
  } else if (!crop(p, &q, &ky0, &kx0)) {
    forward_impl(y, x, w, wp, bias, residual, relu, p);
  } else {
    if (!w) w = tmp = unpack_weights(wp, layout, p);
    float *wq = crop_weights(w, p, &q, ky0, kx0);
    forward_impl(y, x, wq, NULL, bias, residual, relu, &q);
  }
  free(tmp);
}

int conv2d_blocked_ok(const conv_p *p, int x_blocked, int winograd) {
#if defined(__x86_64__)
  conv_p q;
  int ky0, kx0;
  if (!avx512_paths()) return 0;
  if (winograd && x_blocked && wino_tile_for(p)) return 1;
  return !crop(p, &q, &ky0, &kx0) && prow_blocked_ok(p, x_blocked);
#else
  (void)p; (void)x_blocked; (void)winograd;
  return 0;
#endif
}

int conv2d_blocked_layout(const conv_p *p, int winograd) {
  const int m = winograd ? wino_tile_for(p) : 0;
  return m == 4 ? CONV_LAYOUT_WINO4 : m == 2 ? CONV_LAYOUT_WINO2 : CONV_LAYOUT_PROW;
}

int conv2d_pack_weights_blocked(float *wp, const float *w, const conv_p *p, int winograd) {
  const int layout = conv2d_blocked_layout(p, winograd);
  if (wino_tile(layout)) wino_pack(w, p, wino_tile(layout), wp);
  else prow_pack(w, p->cout, (p->cin / p->groups) * p->kh * p->kw, PR_NR, wp);
  return layout;
}

/* Element (block b, row y, column x, lane l) of a blocked buffer of h x w maps (conv.h). */
static long blk_at(long b, int y, int x, int l, int h, int w) {
  const int B = CONV_BLK_BORDER;
  return ((b * (h + 2 * B) + y + B) * (w + 2 * B) + x + B) * 16 + l;
}
/* Blocked (interior) <-> NCHW for n images of c channels (a multiple of 16) of h x w. */
static void blocked_to_nchw(float *dst, const float *src, int n, int c, int h, int w) {
  for (long b = 0; b < (long)n * (c / 16); b++)
    for (int y = 0; y < h; y++)
      for (int x = 0; x < w; x++)
        for (int l = 0; l < 16; l++) dst[((b * 16 + l) * h + y) * w + x] = src[blk_at(b, y, x, l, h, w)];
}
static void nchw_to_blocked(float *dst, const float *src, int n, int c, int h, int w) {
  for (long b = 0; b < (long)n * (c / 16); b++)
    for (int y = 0; y < h; y++)
      for (int x = 0; x < w; x++)
        for (int l = 0; l < 16; l++) dst[blk_at(b, y, x, l, h, w)] = src[((b * 16 + l) * h + y) * w + x];
}

int conv2d_forward_blocked(float *y, const float *x, const float *wp, int layout, const float *bias, const float *residual,
                           int relu, const conv_p *p, int x_blocked) {
  const int m = wino_tile(layout);
  if ((layout != CONV_LAYOUT_PROW && !(m && wino_ok(p))) || p->groups != 1 || p->cout % 16 || (x_blocked && p->cin % 16))
    return -1;
#if defined(__x86_64__)
  if (m ? x_blocked && avx512_paths() : conv2d_blocked_ok(p, x_blocked, 0)) {
    if (m) wino_forward(y, x, wp, bias, residual, relu, p, m, 0);
    else prow_forward_blocked(y, x, wp, bias, residual, relu, p, x_blocked);
    return 0;
  }
#endif
  /* no AVX-512 (a forced ISA) or a geometry outside the fast path: through NCHW, slowly but right */
  const long hw = (long)p->h * p->w, ohw = (long)p->oh * p->ow, ny = (long)p->n * p->cout * ohw;
  const long K = (long)p->cin * p->kh * p->kw;
  float *w = malloc(sizeof(float) * p->cout * K), *yt = malloc(sizeof(float) * ny);
  float *xt = x_blocked ? malloc(sizeof(float) * p->n * p->cin * hw) : NULL, *rt = residual ? malloc(sizeof(float) * ny) : NULL;
  if (!w || !yt || (x_blocked && !xt) || (residual && !rt)) abort();
  conv2d_unpack_weights(w, wp, layout, p);
  if (xt) blocked_to_nchw(xt, x, p->n, p->cin, p->h, p->w);
  if (rt) blocked_to_nchw(rt, residual, p->n, p->cout, p->oh, p->ow);
  conv2d_forward(yt, xt ? xt : x, w, bias, rt, relu, p);
  nchw_to_blocked(y, yt, p->n, p->cout, p->oh, p->ow);
  free(w); free(yt); free(xt); free(rt);
  return 0;
}

void conv2d_forward(float *y, const float *x, const float *w, const float *bias, const float *residual, int relu,
                    const conv_p *p) {
  conv2d_forward_packed(y, x, w, NULL, 0, bias, residual, relu, p);
}

void conv2d_backward_input_add(float *dx, const float *dy, const float *w, const conv_p *p, const float *addend) {
  conv_p q;
  int ky0, kx0;
  if (dense(p)) {
    dense_backward_input(dx, dy, w, p, addend);
    return;
  }
  if (!crop(p, &q, &ky0, &kx0)) {
    backward_input_impl(dx, dy, w, p, addend);
    return;
  }
  float *wq = crop_weights(w, p, &q, ky0, kx0);
  backward_input_impl(dx, dy, wq, &q, addend);
}
void conv2d_backward_input(float *dx, const float *dy, const float *w, const conv_p *p) { conv2d_backward_input_add(dx, dy, w, p, NULL); }

void conv2d_backward_weight(float *dw, const float *x, const float *dy, const conv_p *p) {
  conv_p q;
  int ky0, kx0;
  if (dense(p)) {
    dense_backward_weight(dw, x, dy, p);
    return;
  }
  if (!crop(p, &q, &ky0, &kx0)) {
    backward_weight_impl(dw, x, dy, p);
    return;
  }
  static _Thread_local buf_t dwq_buf;
  const long rows = (long)p->cout * (p->cin / p->groups);
  float *dwq = grow(&dwq_buf, (size_t)rows * q.kh * q.kw);
  backward_weight_impl(dwq, x, dy, &q);
  /* the cropped gradient back into the full kernels, zeros elsewhere (as crop_weights, on all threads) */
  crop_job j = {dwq, dw, rows, p->kh, p->kw, q.kh, q.kw, ky0, kx0, 1};
  pool_run_n(crop_task, &j, rows < (1 << 14) ? 1 : pool_threads());
}

/* ---- the input prologue (conv.h: conv2d_forward_pre) ----------------------------------------
 * A training batch norm + relu whose only consumer is this convolution need not store its output:
 * the NCHW Winograd path applies it in its input transforms, where it reads x anyway (ResNet-20's and
 * ResNet-18's second 3x3 of each block). */

/* The path that applies the prologue while reading x: the AVX-512 Winograd's tile, PRE_W2 (the AVX2
 * Winograd, whose input transform always reads NCHW x), or 0 (none: x is made first); the path the
 * forward and the weight gradient take (conv2d_forward_packed, conv2d_backward_weight) is that one. */
#define PRE_W2 (-1)
static int pre_path(const conv_p *p) {
#if defined(__x86_64__)
  conv_p q;
  int ky0, kx0;
  if (p->n == 0 || dense(p) || crop(p, &q, &ky0, &kx0) || is_linear(p) || rows(p, 0)) return 0;
  if (wino2(p, W2_WEIGHT_GRADIENT)) return PRE_W2; /* the forward takes every such geometry too */
  const int wm = avx512_paths() ? wino_nchw_tile(p) : 0;
  return wm && wino_reads_pre(p, wm) ? wm : 0;
#else
  (void)p;
  return 0;
#endif
}
int conv2d_reads_pre(const conv_p *p) { return pre_path(p) != 0; }

void conv2d_forward_pre(float *y, const float *x, const float *w, const float *bias, const float *pre_s, const float *pre_t,
                        const conv_p *p) {
#if defined(__x86_64__)
  const int wm = pre_path(p);
  if (wm == PRE_W2) {
    w2_forward_nchw(y, x, w, NULL, 0, bias, NULL, 0, p, pre_s, pre_t);
    return;
  }
  if (wm) {
    wino_forward_nchw(y, x, w, 0, bias, NULL, 0, p, wm, pre_s, pre_t);
    return;
  }
#endif
  float *xm = bn_relu_made(x, pre_s, pre_t, p->n, p->cin, (long)p->h * p->w);
  conv2d_forward(y, xm, w, bias, NULL, 0, p);
  free(xm);
}

void conv2d_backward_weight_pre(float *dw, const float *x, const float *dy, const float *pre_s, const float *pre_t,
                                const conv_p *p) {
#if defined(__x86_64__)
  const int wm = pre_path(p);
  if (wm == PRE_W2) {
    w2_backward_weight_nchw(dw, x, dy, p, pre_s, pre_t);
    return;
  }
  if (wm) {
    wino_backward_weight_nchw(dw, x, dy, p, wm, pre_s, pre_t);
    return;
  }
#endif
  float *xm = bn_relu_made(x, pre_s, pre_t, p->n, p->cin, (long)p->h * p->w);
  conv2d_backward_weight(dw, xm, dy, p);
  free(xm);
}
