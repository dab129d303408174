/* Internal to the convolution sources (conv.c: dispatch, packing, im2col + GEMM; conv_qgrid.c,
 * conv_prow.c, conv_gather.c: the AVX-512 kernels). Not part of the addon's surface. */
#ifndef RESNET_CONV_INTERNAL_H
#define RESNET_CONV_INTERNAL_H
#include "conv.h"
#include <stddef.h>

/* A scratch buffer that grows on demand and is kept (thread-local instances: no allocation in
 * steady state). */
typedef struct {
  float *p;
  size_t cap;
  size_t maplen; /* bytes mapped for p (large buffers: huge-page-advised memory of their own), 0: malloc */
} buf_t;
float *grow(buf_t *b, size_t n);
/* Along one axis: the outputs [o0, o1) of [0, n) whose input o*sw + shift lies inside [0, w). */
void col_range(int shift, int sw, int w, int n, int *o0, int *o1);
/* One row of an im2col matrix or a phase plane: d[o] = s[o*sw] for o in [o0, o1), 0 elsewhere in
 * [0, n) (s already shifted to output 0). */
static inline void fill_row(float *d, const float *s, int n, int o0, int o1, int sw) {
  for (int o = 0; o < o0; o++) d[o] = 0.0f;
  if (sw == 1) {
    for (int o = o0; o < o1; o++) d[o] = s[o];
  } else {
    for (int o = o0; o < o1; o++) d[o] = s[(long)o * sw];
  }
  for (int o = o1; o < n; o++) d[o] = 0.0f;
}
int is_pointwise(const conv_p *p);
/* Weights [M][K] as the GEMM micro-kernel's A panels: wp itself when already packed, else packed
 * into buf (panel height sgemm_mr(M)). */
const float *a_panels(const float *wt, const float *wp, int M, int K, buf_t *buf);
/* Whether environment variable name is "0" (a path switched off for measurements); read once into *cache. */
int env_zero(const char *name, int *cache);
/* l2_bytes() (conv.h): cache-blocking choices that depend on it say so where they are made. */

/* Tiny maps as one dense linear layer over the batch (conv_dense.c; RESNET_DENSE=0 off): whether p
 * takes it, and its three passes. */
int dense_ok(const conv_p *p);
void dense_forward(float *y, const float *x, const float *w, const float *bias, const float *residual, int relu,
                   const conv_p *p);
void dense_backward_input(float *dx, const float *dy, const float *w, const conv_p *p, const float *addend);
void dense_backward_weight(float *dw, const float *x, const float *dy, const conv_p *p);

/* off[op * kh*kw + t]: the input pixel (iy * w + ix) that tap t reads for output pixel op, -1 in the
 * padding (malloc'd; conv_rows.c). */
int *conv_tap_offsets(const conv_p *p);
/* n images' [c][P] planes to pixel-major [P][c] rows (to_pixel_major), or back with an epilogue:
 * dst[b][c][q] = relu?(src[b][q][c] + bias[c] + add[b][c][q]) (add may be dst; NULLs: none); on all
 * threads, by images (conv_rows.c). */
void images_transpose(float *dst, const float *src, int n, int c, long P, int to_pixel_major, const float *add,
                      const float *bias, int relu);

/* Small strided maps as one GEMM with (image, output pixel) rows (conv_rows.c; RESNET_ROWS=0 off):
 * whether p takes it for the forward (backward_input 0) or the backward input, and those passes. */
int rows_ok(const conv_p *p, int backward_input);
void rows_forward(float *y, const float *x, const float *w, const float *bias, const float *residual, int relu,
                  const conv_p *p);
void rows_backward_input(float *dx, const float *dy, const float *w, const conv_p *p, const float *addend);

/* Pixel-row weight panels of nr output channels (32, or 16 for the 16-channel kernel):
 * dst[(j*K + k)*nr + i] = w[(j + i)*K + k], 0 past M. layout_nr: the panel width of a layout, 0 if
 * it is not a pixel-row one. */
#define PR_RUN 7
#define PR_NR 32
long prow_packed_size(int M, int K, int nr);
void prow_pack(const float *w, int M, int K, int nr, float *dst);
void prow_unpack(const float *src, int M, int K, int nr, float *w);
int layout_nr(int layout);
/* Winograd packings (conv_wino.c): wino_tile: m of a layout (CONV_LAYOUT_WINO2 / _WINO4), 0 for
 * others; wino_tile_for: the m a geometry gets (0: not Winograd). */
int wino_tile(int layout);
int wino_ok(const conv_p *p);
int wino_tile_for(const conv_p *p);
long wino_packed_size(const conv_p *p, int m);
void wino_pack(const float *w, const conv_p *p, int m, float *dst);
void wino_unpack(const float *src, const conv_p *p, int m, float *w);

#if defined(__x86_64__)
#include <immintrin.h>
#include "simd.h"

/* F(4x4, 3x3)'s one-axis transforms on vectors of W bits (512 for conv_wino.c, 256 for conv_wino2.c),
 * the same expressions at either width. BT: d (6 values) -> B^T d; AT: m (6) -> A^T m (4 outputs);
 * AZ: y (4 values of dY) -> A y (6), the weight gradient's transform of dY. */
#define WINO4_BT(W, d, r)                                                                                            \
  do {                                                                                                               \
    const __m##W c4_ = _mm##W##_set1_ps(4.0f), c5_ = _mm##W##_set1_ps(5.0f), c2_ = _mm##W##_set1_ps(2.0f);           \
    const __m##W t1_ = _mm##W##_fnmadd_ps(c4_, d[1], d[3]), t2_ = _mm##W##_fnmadd_ps(c4_, d[2], d[4]);               \
    const __m##W t3_ = _mm##W##_mul_ps(c2_, _mm##W##_sub_ps(d[3], d[1])), t4_ = _mm##W##_sub_ps(d[4], d[2]);         \
    r[0] = _mm##W##_add_ps(_mm##W##_fnmadd_ps(c5_, d[2], d[4]), _mm##W##_mul_ps(c4_, d[0]));                         \
    r[1] = _mm##W##_add_ps(t1_, t2_);                                                                                \
    r[2] = _mm##W##_sub_ps(t2_, t1_);                                                                                \
    r[3] = _mm##W##_add_ps(t4_, t3_);                                                                                \
    r[4] = _mm##W##_sub_ps(t4_, t3_);                                                                                \
    r[5] = _mm##W##_add_ps(_mm##W##_fnmadd_ps(c5_, d[3], d[5]), _mm##W##_mul_ps(c4_, d[1]));                         \
  } while (0)
#define WINO4_AT(W, m, o)                                                                                            \
  do {                                                                                                               \
    const __m##W s12_ = _mm##W##_add_ps(m[1], m[2]), d12_ = _mm##W##_sub_ps(m[1], m[2]);                             \
    const __m##W s34_ = _mm##W##_add_ps(m[3], m[4]), d34_ = _mm##W##_sub_ps(m[3], m[4]);                             \
    o[0] = _mm##W##_add_ps(_mm##W##_add_ps(m[0], s12_), s34_);                                                       \
    o[1] = _mm##W##_fmadd_ps(_mm##W##_set1_ps(2.0f), d34_, d12_);                                                    \
    o[2] = _mm##W##_fmadd_ps(_mm##W##_set1_ps(4.0f), s34_, s12_);                                                    \
    o[3] = _mm##W##_add_ps(_mm##W##_fmadd_ps(_mm##W##_set1_ps(8.0f), d34_, d12_), m[5]);                             \
  } while (0)
#define WINO4_AZ(W, y, z)                                                                                            \
  do {                                                                                                               \
    const __m##W s02_ = _mm##W##_add_ps(y[0], y[2]), s13_ = _mm##W##_add_ps(y[1], y[3]);                             \
    const __m##W q02_ = _mm##W##_fmadd_ps(_mm##W##_set1_ps(4.0f), y[2], y[0]);                                       \
    const __m##W q13_ = _mm##W##_fmadd_ps(_mm##W##_set1_ps(4.0f), y[3], y[1]);                                       \
    z[0] = y[0];                                                                                                     \
    z[1] = _mm##W##_add_ps(s02_, s13_);                                                                              \
    z[2] = _mm##W##_sub_ps(s02_, s13_);                                                                              \
    z[3] = _mm##W##_fmadd_ps(_mm##W##_set1_ps(2.0f), q13_, q02_);                                                    \
    z[4] = _mm##W##_fnmadd_ps(_mm##W##_set1_ps(2.0f), q13_, q02_);                                                   \
    z[5] = y[3];                                                                                                     \
  } while (0)
#define IT 32 /* output columns per q-grid tile */

/* Geometry of the phase planes (conv_qgrid.c). */
typedef struct {
  const conv_p *p;
  int Hq, Wq, nph, Lq, ntiles;
  long plane, img; /* floats per phase plane (Hq*Wq), per image (nph*cin*plane) */
  int *off;        /* K shifts */
} igeo;
#define PH_TAIL(g) (2 * IT + (g)->Wq + 16)
int igeo_init(igeo *g, const conv_p *p);
/* The geometry fields only (g->off NULL). */
void igeo_geom(igeo *g, const conv_p *p);
void build_phases_range(const igeo *g, const float *x, float *dst, long rstride, int c_lo, int c_hi);
void build_phases_rs(const igeo *g, const float *x, float *dst, long rstride);
void build_phases(const igeo *g, const float *x, float *dst);
int no_implicit(void);

/* The AVX-512 paths: whether each takes a geometry, and the passes it implements. */
int implicit_ok(const conv_p *p, int min_pct);
void implicit_forward(float *y, const float *x, const float *wt, const float *wp, const float *bias,
                      const float *residual, int relu, const conv_p *p);
void implicit_backward_input_strided(float *dx, const float *dy, const float *w, const conv_p *p);
void implicit_backward_weight(float *dw, const float *x, const float *dy, const conv_p *p);
/* Pixels in lanes (conv_pil.c): stride-1 same-size convolutions with at most 16 output channels;
 * strided ones whose input is the output times the stride (forward, backward-input). */
#define PIL_MAX_TAPS 1024       /* taps of a same-size kernel (32 x 32) */
#define PIL_MAX_PHASE_TAPS 64   /* taps of a strided kernel */
int pil_ok(const conv_p *p);
void pil_forward(float *y, const float *x, const float *w, const float *bias, const float *residual, int relu,
                 const conv_p *p);
int pil_strided_ok(const conv_p *p, int backward);
void pil_forward_strided(float *y, const float *x, const float *w, const float *bias, const float *residual, int relu,
                         const conv_p *p);
void pil_backward_input_strided(float *dx, const float *dy, const float *w, const conv_p *p, const float *addend);
/* Tap panels (conv_taps.c): the forward through B panels gathered from x, on the AVX2 GEMM's
 * machines; wp: w packed as sgemm_pack_a packs it (mr = sgemm_mr(cout)), or NULL. */
int taps_ok(const conv_p *p);
void taps_forward(float *y, const float *x, const float *w, const float *wp, const float *bias, const float *residual,
                  int relu, const conv_p *p);
/* The weight gradient as one GEMM over packed dy and x's tap panels (RESNET_TAPS_BW=0: off). */
int taps_bw_ok(const conv_p *p);
void taps_backward_weight(float *dw, const float *x, const float *dy, const conv_p *p);
/* Pixels in lanes for AVX2 (conv_pil2.c): stride-1 same-size convolutions of 2 taps or more on the
 * AVX2 GEMM's machines; w read as w[co * sco + ci * sci + t] (flip: tap kk - 1 - t). */
int pil2_ok(const conv_p *p);
void pil2_forward(float *y, const float *x, const float *w, long sco, long sci, int flip, const float *bias,
                  const float *residual, int relu, const conv_p *p);
int pil2_bw_ok(const conv_p *p);
void pil2_backward_weight(float *dw, const float *x, const float *dy, const conv_p *p);
/* Winograd F(4x4, 3x3) for the AVX2 kernels on NCHW tensors (conv_wino2.c): whether it takes a
 * geometry (3x3 stride 1 padding 1, channels in whole 8-channel vectors), the forward (flip: the
 * backward-input as the forward of the flipped kernel, w then the layer's own; packed: the weights
 * as w2_pack leaves them, else transformed from w) and the weight gradient; with pre_s and pre_t, x
 * is read as relu(x * pre_s[c] + pre_t[c]) (conv2d_forward_pre's prologue). */
#define W2_WEIGHT_GRADIENT 0
#define W2_PER_CALL 1
#define W2_PACKED 2
int w2_ok(const conv_p *p, int pass);
void w2_forward_nchw(float *y, const float *x, const float *w, const float *packed, int flip, const float *bias,
                     const float *residual, int relu, const conv_p *p, const float *pre_s, const float *pre_t);
void w2_backward_weight_nchw(float *dw, const float *x, const float *dy, const conv_p *p, const float *pre_s, const float *pre_t);
/* CONV_LAYOUT_W2, for the inference plan (the forward's transformed weights computed once): floats,
 * packing (w2_forward_nchw's `packed`) and the plain weights back (stored as they are after the
 * transformed ones: exact). */
long w2_packed_size(const conv_p *p);
void w2_pack(const float *w, const conv_p *p, float *dst);
void w2_unpack(const float *src, const conv_p *p, float *w);
int pil_bw_ok(const conv_p *p);
void pil_backward_weight(float *dw, const float *x, const float *dy, const conv_p *p);
int prow_nr(const conv_p *p);
int prow_ok(const conv_p *p);
void prow_forward(float *y, const float *x, const float *wt, const float *wp, const float *bias,
                  const float *residual, int relu, const conv_p *p);
int prow_blocked_ok(const conv_p *p, int xblk);
void prow_forward_blocked(float *y, const float *x, const float *wp, const float *bias, const float *residual, int relu,
                          const conv_p *p, int xblk);
void prow_block_gemm(int R, int K, const float *Bp, const float *const *a, const int *off, float *const *yr, long chblk,
                     int two);
void prow_block_gemm16(int R, int K, const float *Bp, const float *const *a, const int *off, float *const *yr);
/* Winograd F(m x m, 3x3), m = 2 or 4, on blocked activations (conv_wino.c); nchw: y and the
 * residual are NCHW instead (the output transform transposes its tiles into them), and so is x for
 * m = 4 (the input transform reads its windows from it). */
void wino_forward(float *y, const float *x, const float *U, const float *bias, const float *residual, int relu,
                  const conv_p *p, int m, int nchw);
/* The same on NCHW tensors with plain weights (transformed per call; flip: w is the forward layer's
 * kernel of the backward-input convolution p), 0 from wino_nchw_tile: not this way (for the
 * backward-input, ask with the flipped convolution; for the weight gradient, with the forward's). */
int wino_nchw_tile(const conv_p *p);
/* pre_s, pre_t (NULL: none; only where wino_reads_pre(p, m)): the input x read as relu(x * pre_s[c] +
 * pre_t[c]) per input channel c (conv.h: conv2d_forward_pre). */
int wino_reads_pre(const conv_p *p, int m);
void wino_forward_nchw(float *y, const float *x, const float *w, int flip, const float *bias, const float *residual, int relu,
                       const conv_p *p, int m, const float *pre_s, const float *pre_t);
void wino_backward_weight_nchw(float *dw, const float *x, const float *dy, const conv_p *p, int m, const float *pre_s,
                               const float *pre_t);
int gg_ok(const conv_p *p);
/* Where the gathered GEMM's output element (image b, channel co, row oy, column ox) lies:
 * b*img + co*ch + oy*row + ox*col + off (gg_forward: NCHW y). */
typedef struct {
  long img, ch, row, col, off;
} gg_out;
void gg_forward_to(float *y, const float *x, const float *wt, const float *wp, const float *bias, const float *residual,
                   int relu, const conv_p *p, const gg_out *out);
void gg_forward(float *y, const float *x, const float *wt, const float *wp, const float *bias,
                const float *residual, int relu, const conv_p *p);
int ggw_ok(const conv_p *p);
void ggw_backward_weight(float *dw, const float *x, const float *dy, const conv_p *p);
int bwt_ok(const conv_p *p);
void bwt_backward_weight(float *dw, const float *x, const float *dy, const conv_p *p);

/* The first and last line of an epilogue row of len floats at o in the residual (read) and the output
 * (written), fetched while a tile computes: with many planes at once the hardware prefetcher does
 * not follow them. */
__attribute__((target("avx512f"))) static inline void prefetch_row(const float *res, const float *y, long o, int len) {
  _mm_prefetch((const char *)(res + o), _MM_HINT_T0);
  _mm_prefetch((const char *)(res + o + len - 1), _MM_HINT_T0);
  _mm_prefetch((const char *)(y + o), _MM_HINT_ET0);
  _mm_prefetch((const char *)(y + o + len - 1), _MM_HINT_ET0);
}

#endif
#endif
