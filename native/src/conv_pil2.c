/* Pixels in lanes for AVX2 + FMA: stride-1 same-size convolutions (the 3x3 layers of a ResNet's
 * stages, forward and, as the forward of the flipped kernel, backward-input) on CPUs without AVX-512,
 * where they had run as im2col + the AVX2 GEMM. The AVX-512 kernel's scheme (conv_pil.c) with 8
 * lanes: a register holds 8 consecutive pixels of the flattened output map of one channel,
 *   c[co] += x[ci][p + off(tap)] * w[co][ci][tap]   (8 lanes p, 8 accumulators co),
 * the input read in place with one unaligned load per (ci, tap), lanes whose source pixel falls in
 * the padding masked off (per vector and tap; a vector whose lanes are all inside takes a plain
 * load), the weights the broadcast operand ([panel][ci][tap][8]: one 32-byte line per (ci, tap)), the
 * accumulators stored to the output rows as they are: no patch matrix is written and read again.
 * 8 output channels a panel: 8 accumulators, the loaded input and a broadcast in 16 registers, 9
 * loads per 8 multiply-adds. ResNet-20 training on an AMD Zen 5 VM with the AVX2 paths forced: see
 * docs/PERFORMANCE.md (session 25). RESNET_PIL2=0 turns it off (measurements). */
#include "conv_internal.h"
#include "gemm.h"
#include "pool.h"
#include "simd.h" /* lanes8 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>

/* Whether pil2_forward takes this geometry: the AVX2 GEMM in use (so neither AVX-512 nor the portable
 * path), groups 1, stride 1, output the input's size, a kernel of 2 to PIL_MAX_TAPS taps (1x1
 * layers need no im2col: their GEMM reads the input as it is), sizes that int offsets hold, and
 * where it was measured faster than im2col + GEMM (AMD Zen 5 VM, AVX2 forced, two threads, fastest
 * calls, forward / backward-input): up to 128 input channels for 3x3 (ResNet-20's 16, 32 and 64
 * channels 2.8-3.3 against 4.4-6.6 ms, ResNet-18's 64 on 8x8 1.6 against 2.6-3.4, 128 on 4x4 2.0
 * against 4.6-5.0), more where the batch has at least 32 vectors of 8 pixels (ResNet-50's 256 on 14x14
 * at batch 8 11.4 against 14.8 ms, 512 on 7x7 at batch 8 13.3-13.9 against 16.3; but at batch 1, 7
 * vectors, 3.3-4.6 against 2.5: the weights, streamed in blocks, are used by too few vectors), and no
 * map of a multiple of 1024 pixels (4 KB planes: the input rows of every channel fall in the same L1
 * sets; 64 channels on 32x32, batch 64, 47 against 33-39 ms). The forward leaves the layers of more
 * than 128 input channels to the tap panels (conv.c: pil2_fwd), which were faster there. */
int pil2_ok(const conv_p *p) {
  static int off = -1;
  if (env_zero("RESNET_PIL2", &off) || strcmp(sgemm_isa(), "avx2") != 0) return 0;
  if (p->groups != 1 || p->sh != 1 || p->sw != 1 || p->cout < 1 || p->n < 1 || p->cin < 1) return 0;
  if (p->oh != p->h || p->ow != p->w || 2 * p->ph != (p->kh - 1) * p->dh || 2 * p->pw != (p->kw - 1) * p->dw) return 0;
  const long taps = (long)p->kh * p->kw, plane = (long)p->h * p->w;
  return taps >= 2 && taps <= PIL_MAX_TAPS && plane * p->cin <= (1L << 28) && (p->cin * taps <= 128 * 9 || (long)p->n * ((plane + 7) / 8) >= 32) && plane % 1024 != 0;
}

typedef struct {
  const conv_p *p;
  int taps, nv, chunks;
  long plane;          /* h * w: floats between channels of the input and of the output */
  const int *toff;     /* [tap]: the tap's source offset from the output pixel */
  const uint8_t *mk;   /* [vector][tap]: lanes whose source pixel is inside the map */
  const float *W;      /* [panel][ci][tap][8], zero past cout */
  const float *x, *bias, *residual;
  float *y;
  int relu;
  int cb;              /* input channels per block: a panel's weights for a block stay in L1 */
  pool_ranges items;   /* (image, chunk of vectors), by ranges of images */
} pil2_job;

/* The 8 pixels from q0 of output channels [co0, co0 + 8) (those below cout stored), over the input
 * channels [ci0, ci1) and all taps: the sums start from zero (ci0 = 0) or from acc, and go to acc, or
 * (ci1 = cin) through the epilogue to y. */
__attribute__((target("avx2,fma"))) static void pil2_vector(const pil2_job *j, const float *x, long q0,
                                                             int co0, float *y, const float *res, int ci0, int ci1, float *acc) {
  const conv_p *p = j->p;
  const uint8_t *mk = j->mk + (q0 / 8) * j->taps;
  const float *W = j->W + (long)(co0 / 8) * p->cin * j->taps * 8;
  __m256 c[8];
  for (int i = 0; i < 8; i++) c[i] = ci0 == 0 ? _mm256_setzero_ps() : _mm256_loadu_ps(acc + 8 * i);
  const long wstep = (long)j->taps * 8;
  for (int t = 0; t < j->taps; t++) {
    const unsigned m = mk[t];
    if (m == 0) continue;
    const float *xp = x + q0 + j->toff[t] + (long)ci0 * j->plane;
    const float *w = W + t * 8 + ci0 * wstep;
    if (m == 0xFF) {
      for (int ci = ci0; ci < ci1; ci++, xp += j->plane, w += wstep) {
        const __m256 xv = _mm256_loadu_ps(xp);
        _Pragma("GCC unroll 8") for (int co = 0; co < 8; co++) c[co] = _mm256_fmadd_ps(xv, _mm256_broadcast_ss(w + co), c[co]);
      }
    } else {
      const __m256i lm = lanes8(m);
      for (int ci = ci0; ci < ci1; ci++, xp += j->plane, w += wstep) {
        const __m256 xv = _mm256_maskload_ps(xp, lm);
        _Pragma("GCC unroll 8") for (int co = 0; co < 8; co++) c[co] = _mm256_fmadd_ps(xv, _mm256_broadcast_ss(w + co), c[co]);
      }
    }
  }
  if (ci1 < p->cin) {
    for (int i = 0; i < 8; i++) _mm256_storeu_ps(acc + 8 * i, c[i]);
    return;
  }
  const long P = j->plane;
  const int nl = P - q0 >= 8 ? 8 : (int)(P - q0);
  const int n = p->cout - co0;
  const __m256 zero = _mm256_setzero_ps();
  _Pragma("GCC unroll 8") for (int co = 0; co < 8; co++) {
    if (co >= n) break;
    __m256 v = c[co];
    if (j->bias) v = _mm256_add_ps(v, _mm256_set1_ps(j->bias[co0 + co]));
    float *d = y + co * P;
    if (nl == 8) {
      if (res) v = _mm256_add_ps(v, _mm256_loadu_ps(res + co * P));
      if (j->relu) v = _mm256_max_ps(zero, v); /* NaN stays NaN: max returns its second operand */
      _mm256_storeu_ps(d, v);
    } else { /* the map's last, partial vector: lane by lane (a masked store is slow on some AMD cores) */
      float tmp[8];
      _mm256_storeu_ps(tmp, v);
      for (int l = 0; l < nl; l++) {
        float s = tmp[l] + (res ? res[co * P + l] : 0.0f);
        d[l] = j->relu ? (s > 0.0f ? s : (s != s ? s : 0.0f)) : s;
      }
    }
  }
}

/* Vectors a band takes through every block of input channels, their partial sums in a scratch
 * between blocks: a block's weights (cb channels x taps x 8 floats, ~18 KB) are read from L1 by all
 * the band's vectors instead of streaming from L2 for each vector (ResNet-50's 128 on 28x28 at batch 8
 * 14.8 -> 10.8 ms; larger layers, above, only so). */
#define PIL2_BAND 8
__attribute__((target("avx2,fma"))) static void pil2_task(void *ctx, int tid, int nt) {
  (void)nt;
  pil2_job *j = ctx;
  const conv_p *p = j->p;
  float acc[PIL2_BAND * 64]; /* a band's partial sums between blocks of input channels */
  const long per = (j->nv + j->chunks - 1) / j->chunks;
  const long x_img = (long)p->cin * j->plane, y_img = (long)p->cout * j->plane;
  pool_cursor cur = pool_cursor_at(&j->items, tid);
  for (;;) {
    const long it = pool_ranges_next(&j->items, &cur);
    if (it < 0) break;
    const long b = it / j->chunks, v0 = (it % j->chunks) * per, v1 = v0 + per < j->nv ? v0 + per : j->nv;
    const float *x = j->x + b * x_img;
    float *y = j->y + b * y_img;
    const float *res = j->residual ? j->residual + b * y_img : NULL;
    for (long vb = v0; vb < v1; vb += PIL2_BAND) {
      const long ve = vb + PIL2_BAND < v1 ? vb + PIL2_BAND : v1;
      for (int co0 = 0; co0 < p->cout; co0 += 8)
        for (int ci0 = 0; ci0 < p->cin; ci0 += j->cb) {
          const int ci1 = ci0 + j->cb < p->cin ? ci0 + j->cb : p->cin;
          for (long v = vb; v < ve; v++) {
            const long o = (long)co0 * j->plane + 8 * v;
            pil2_vector(j, x, 8 * v, co0, y + o, res ? res + o : NULL, ci0, ci1, acc + (v - vb) * 64);
          }
        }
    }
  }
}

/* The taps' source offsets toff[t] from the output pixel, and the lane masks [vector][tap] (into
 * *buf): lane l of vector v is output pixel 8 v + l, set where tap t's source pixel is inside the
 * map. Returns the masks; *nv: the vectors of a map. */
static const uint8_t *pil2_taps(const conv_p *p, int *toff, buf_t *buf, int *nv) {
  const int taps = p->kh * p->kw;
  int dy[PIL_MAX_TAPS], dx[PIL_MAX_TAPS];
  for (int t = 0; t < taps; t++) {
    dy[t] = (t / p->kw) * p->dh - p->ph;
    dx[t] = (t % p->kw) * p->dw - p->pw;
    toff[t] = dy[t] * p->w + dx[t];
  }
  const long P = (long)p->h * p->w;
  *nv = (int)((P + 7) / 8);
  uint8_t *mk = (uint8_t *)grow(buf, ((size_t)*nv * taps + sizeof(float) - 1) / sizeof(float));
  for (int v = 0; v < *nv; v++)
    for (int t = 0; t < taps; t++) {
      unsigned m = 0;
      for (int l = 0; l < 8 && 8L * v + l < P; l++) {
        const int oy = (int)((8L * v + l) / p->w), ox = (int)((8L * v + l) % p->w);
        if (oy + dy[t] >= 0 && oy + dy[t] < p->h && ox + dx[t] >= 0 && ox + dx[t] < p->w) m |= 1u << l;
      }
      mk[(long)v * taps + t] = (uint8_t)m;
    }
  return mk;
}

/* y = conv(x, w) (+ bias, + residual: may be y itself, then relu) for a geometry pil2_ok takes; w is
 * read as w[co * sco + ci * sci + tap_of(t)], where tap_of(t) = t, or kk - 1 - t with flip (the
 * backward-input's kernel: w of the forward layer [cin = p->cout][p->cin] turned by 180 degrees). */
void pil2_forward(float *y, const float *x, const float *w, long sco, long sci, int flip, const float *bias,
                  const float *residual, int relu, const conv_p *p) {
  static _Thread_local buf_t w_buf, mk_buf;
  const int taps = p->kh * p->kw, panels = (p->cout + 7) / 8;
  int toff[PIL_MAX_TAPS], nv;
  const uint8_t *mk = pil2_taps(p, toff, &mk_buf, &nv);
  /* W[panel][ci][t][co % 8], packed on every call, also from the inference plan's plain weights: in a
   * profile of ResNet-50's 3x3 layers with AVX2 forced, this packing (with its zeroing) took ~1.5 % of
   * the time of the kernel itself, not worth a packed layout of its own */
  const size_t nw = (size_t)panels * p->cin * taps * 8;
  float *W = grow(&w_buf, nw);
  memset(W, 0, sizeof(float) * nw);
  for (int co = 0; co < p->cout; co++)
    for (int ci = 0; ci < p->cin; ci++)
      for (int t = 0; t < taps; t++)
        W[(((long)(co / 8) * p->cin + ci) * taps + t) * 8 + co % 8] = w[co * sco + ci * sci + (flip ? taps - 1 - t : t)];
  const long P = (long)p->h * p->w;
  pil2_job j = {.p = p, .taps = taps, .nv = nv, .plane = P, .toff = toff, .mk = mk, .W = W, .x = x, .bias = bias,
                .residual = residual, .y = y, .relu = relu};
  /* a panel's weights for a block within about 18 KB, less than half of L1 */
  j.cb = (int)(18 * 1024 / (taps * 8 * (long)sizeof(float)));
  if (j.cb < 1) j.cb = 1;
  const int T = pool_threads();
  /* whole images when there are enough of them; else chunks of vectors, ~16 items a thread */
  j.chunks = p->n >= 4 * T ? 1 : (int)((16L * T + p->n - 1) / p->n);
  if (j.chunks > nv) j.chunks = nv;
  const long items = (long)p->n * j.chunks;
  const int nthr = items < T ? (int)items : T;
  pool_ranges_init(&j.items, items, j.chunks, nthr);
  pool_run_dynamic(pil2_task, &j, nthr);
}

/* ---- the weight gradient ---------------------------------------------------------------------
 * dW[co][ci][t] = sum over images b and pixels of dy[b][co][y][x] * x[b][ci][y + dy(t)][x + dx(t)].
 * The images form at most PIL2_BLOCKS fixed blocks, each summed by one thread, and a block's images
 * are taken a chunk of R output rows (or of several whole maps) at a time, copied into two buffers
 * with the padding made explicit: xp[ci] the R + kh - 1 input rows the chunk's taps read, each
 * w + 2 pw wide with zero columns (and zero rows outside the map); gp[co] the chunk's R rows of dy at
 * the same width, zero in the extra columns. On these flattened grids every tap is one offset,
 * koff(t) = ky dh W2 + kx dw,
 *   dW[co][ci][t] += sum over q of gp[co][q] * xp[ci][q + koff(t)],
 * with no lane masks (the extra columns' products are zero). Stride 2: xp[ci] holds the chunk's four
 * phase planes (even and odd rows x columns) and a tap is an offset on its phase's plane. A register tile
 * of 4 output channels x 3 (input channel, tap) pairs keeps 12 accumulators of 8 lanes (3 + 4 loads
 * per 12 multiply-adds); the tiles' accumulators live in a per-thread array between chunks (loaded
 * and stored once per chunk and tile) and are added lane by lane at the block's end. The blocks are
 * added in order, so the bits do not depend on the thread count. The earlier version (a tile's
 * accumulators over the whole block, streaming the block from L2 with masked loads, 4 of them
 * spilled to the stack) took 5.1-5.8 ms for ResNet-20's 16 channels on 28x28. */
#define PIL2_BLOCKS 16
/* floats of a chunk's two buffers (128 KB: within L2; chunks of 6, 12 and 64 K floats measured slower
 * or no faster, Zen 5 VM: fewer chunks, fewer loads and stores of the tiles' accumulators) */
#define PIL2_BW_CHUNK_FLOATS (32 * 1024)
typedef struct {
  const conv_p *p;
  int taps, blocks, rows; /* rows: output rows a chunk */
  int imgs;               /* images a chunk (whole maps: rows = h), else 1 */
  int W2;                 /* the padded row width: w + 2 pw (stride 1), ow + (kw - 1) / S (stride S) */
  int halo;               /* input rows (of a phase plane) a chunk reads past its output rows */
  long ps, xs, gs;        /* floats between xp's phase planes, between channels of xp and of gp */
  int ct, kt;             /* register tiles: ceil(cout / 4), ceil(K / 3) */
  const float *x, *dy;
  float *part; /* [block][cout][cin * taps] */
  pool_ranges items;
} pil2_bw_job;

/* The 8 lanes of v added (in a fixed order). */
__attribute__((target("avx2"))) static inline float hsum8(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

/* acc[12][8] += over the nq vectors: gp rows g[0..3] times xp at x[0..2] (4 x 3 products). */
__attribute__((target("avx2,fma"))) static void pil2_bw_tile(const float *g0, const float *g1, const float *g2, const float *g3,
                                                              const float *x0, const float *x1, const float *x2, long nq, int ng, long xi, long gi,
                                                              float *acc) {
  __m256 c00 = _mm256_load_ps(acc), c01 = _mm256_load_ps(acc + 8), c02 = _mm256_load_ps(acc + 16);
  __m256 c10 = _mm256_load_ps(acc + 24), c11 = _mm256_load_ps(acc + 32), c12 = _mm256_load_ps(acc + 40);
  __m256 c20 = _mm256_load_ps(acc + 48), c21 = _mm256_load_ps(acc + 56), c22 = _mm256_load_ps(acc + 64);
  __m256 c30 = _mm256_load_ps(acc + 72), c31 = _mm256_load_ps(acc + 80), c32 = _mm256_load_ps(acc + 88);
  for (int im = 0; im < ng; im++, g0 += gi, g1 += gi, g2 += gi, g3 += gi, x0 += xi, x1 += xi, x2 += xi)
  for (long q = 0; q < 8 * nq; q += 8) {
    const __m256 a = _mm256_loadu_ps(x0 + q), b = _mm256_loadu_ps(x1 + q), c = _mm256_loadu_ps(x2 + q);
    __m256 g = _mm256_load_ps(g0 + q);
    c00 = _mm256_fmadd_ps(g, a, c00);
    c01 = _mm256_fmadd_ps(g, b, c01);
    c02 = _mm256_fmadd_ps(g, c, c02);
    g = _mm256_load_ps(g1 + q);
    c10 = _mm256_fmadd_ps(g, a, c10);
    c11 = _mm256_fmadd_ps(g, b, c11);
    c12 = _mm256_fmadd_ps(g, c, c12);
    g = _mm256_load_ps(g2 + q);
    c20 = _mm256_fmadd_ps(g, a, c20);
    c21 = _mm256_fmadd_ps(g, b, c21);
    c22 = _mm256_fmadd_ps(g, c, c22);
    g = _mm256_load_ps(g3 + q);
    c30 = _mm256_fmadd_ps(g, a, c30);
    c31 = _mm256_fmadd_ps(g, b, c31);
    c32 = _mm256_fmadd_ps(g, c, c32);
  }
  _mm256_store_ps(acc, c00), _mm256_store_ps(acc + 8, c01), _mm256_store_ps(acc + 16, c02);
  _mm256_store_ps(acc + 24, c10), _mm256_store_ps(acc + 32, c11), _mm256_store_ps(acc + 40, c12);
  _mm256_store_ps(acc + 48, c20), _mm256_store_ps(acc + 56, c21), _mm256_store_ps(acc + 64, c22);
  _mm256_store_ps(acc + 72, c30), _mm256_store_ps(acc + 80, c31), _mm256_store_ps(acc + 88, c32);
}

/* Rows [r0, r0 + nr) of image b's output into the chunk buffers (see above): plain loops, not memcpy
 * and memset, whose calls cost more than their few floats on 7x7 maps. */
__attribute__((target("avx2"))) static void pil2_bw_fill(const pil2_bw_job *j, long b, int r0, int nr, float *xp, float *gp,
                                                         long nq) {
  const conv_p *p = j->p;
  const long P = (long)p->h * p->w, OP = (long)p->oh * p->ow;
  const int W2 = j->W2, w = p->w, pw = p->pw, ow = p->ow, S = p->sh, xr = nr + j->halo;
  for (int ci = 0; ci < p->cin; ci++) {
    const float *src = j->x + ((long)b * p->cin + ci) * P;
    for (int ph = 0; ph < S * S; ph++) { /* stride 1: one plane; stride S: the S x S phases */
      const int ay = ph / S, ax = ph % S;
      float *d = xp + ci * j->xs + ph * j->ps;
      for (int rr = 0; rr < xr; rr++, d += W2) {
        const int sy = S * (r0 + rr) + ay - p->ph;
        if (sy < 0 || sy >= p->h) {
          for (int c = 0; c < W2; c++) d[c] = 0.0f;
          continue;
        }
        const float *s = src + (long)sy * w;
        if (S == 1) {
          for (int c = 0; c < pw; c++) d[c] = d[pw + w + c] = 0.0f;
          for (int c = 0; c < w; c++) d[pw + c] = s[c];
        } else
          for (int c = 0; c < W2; c++) {
            const int sx = S * c + ax - pw;
            d[c] = sx >= 0 && sx < w ? s[sx] : 0.0f;
          }
      }
      for (long c = 0; c < j->ps - (long)xr * W2; c++) d[c] = 0.0f; /* what the last vectors' taps read past the rows */
    }
  }
  for (int co = 0; co < p->cout; co++) {
    const float *src = j->dy + ((long)b * p->cout + co) * OP + (long)r0 * ow;
    float *d = gp + co * j->gs;
    for (int r = 0; r < nr; r++, d += W2) {
      for (int c = 0; c < ow; c++) d[c] = src[(long)r * ow + c];
      for (int c = ow; c < W2; c++) d[c] = 0.0f;
    }
    for (long c = 0; c < 8 * nq - (long)nr * W2; c++) d[c] = 0.0f;
  }
}

__attribute__((target("avx2,fma"))) static void pil2_bw_task(void *ctx, int tid, int nt) {
  (void)nt;
  static _Thread_local buf_t xbuf, gbuf, abuf;
  pil2_bw_job *j = ctx;
  const conv_p *p = j->p;
  const int K = p->cin * j->taps;
  const long xi = j->xs * p->cin, gi = j->gs * p->cout; /* floats between a chunk's images */
  float *xp = grow(&xbuf, (size_t)(xi * j->imgs)), *gp = grow(&gbuf, (size_t)(gi * j->imgs));
  const size_t asz = (size_t)j->ct * j->kt * 96;
  float *acc = grow(&abuf, asz);
  long koff[PIL_MAX_TAPS];
  for (int t = 0; t < j->taps; t++) {
    const int ky = t / p->kw, kx = t % p->kw, S = p->sh;
    koff[t] = S == 1 ? (long)ky * p->dh * j->W2 + (long)kx * p->dw : (long)((ky % S) * S + kx % S) * j->ps + (long)(ky / S) * j->W2 + kx / S;
  }
  pool_cursor cur = pool_cursor_at(&j->items, tid);
  for (;;) {
    const long blk = pool_ranges_next(&j->items, &cur);
    if (blk < 0) break;
    long b0, b1;
    pool_split(p->n, (int)blk, j->blocks, 1, &b0, &b1);
    memset(acc, 0, sizeof(float) * asz);
    for (long b = b0; b < b1; b += j->imgs)
      for (int r0 = 0; r0 < p->oh; r0 += j->rows) {
        const int nr = p->oh - r0 < j->rows ? p->oh - r0 : j->rows;
        const long nq = ((long)nr * j->W2 + 7) / 8;
        const int ng = b1 - b < j->imgs ? (int)(b1 - b) : j->imgs;
        for (int im = 0; im < ng; im++) pil2_bw_fill(j, b + im, r0, nr, xp + im * xi, gp + im * gi, nq);
        for (int ct = 0; ct < j->ct; ct++) {
          const float *g[4];
          for (int i = 0; i < 4; i++) g[i] = gp + (4 * ct + i < p->cout ? 4 * ct + i : p->cout - 1) * j->gs;
          for (int kt = 0; kt < j->kt; kt++) {
            const float *xk[3];
            for (int k = 0; k < 3; k++) {
              const int kk = 3 * kt + k < K ? 3 * kt + k : K - 1; /* past the end: computed, not stored */
              xk[k] = xp + (kk / j->taps) * j->xs + koff[kk % j->taps];
            }
            pil2_bw_tile(g[0], g[1], g[2], g[3], xk[0], xk[1], xk[2], nq, ng, xi, gi, acc + ((long)ct * j->kt + kt) * 96);
          }
        }
      }
    float *d = j->part + blk * (long)p->cout * K;
    for (int co = 0; co < p->cout; co++)
      for (int k = 0; k < K; k++) d[(long)co * K + k] = hsum8(_mm256_load_ps(acc + ((long)(co / 4) * j->kt + k / 3) * 96 + (co % 4 * 3 + k % 3) * 8));
  }
}

/* Whether pil2_backward_weight takes this geometry: as pil2_ok, on maps of at least 7x7 pixels
 * (Zen 5 VM, AVX2 forced, two threads, fastest of 30 calls alternating with im2col + GEMM, caches
 * flushed before each: ResNet-20's 16 channels on 28x28 5.2-5.9 -> 3.0-3.5 ms, 32 on 14x14 5.2-6.2 ->
 * 3.5-3.9, 64 on 7x7 4.8-5.4 -> 4.0-4.3 (in training steps 6.4 -> 4.5 ms a call), ResNet-18's 64 on 8x8
 * even (2.8-3.8 both); but 128 on 4x4 5.6-7.6 against 3.7: a 4x4 map is 3 vectors of 6-wide padded
 * rows, so most of the work is the padding and the accumulators' loads and stores). */
/* The chunks of pil2_backward_weight for p (into j): their rows and images, the buffers' strides. */
static void pil2_bw_plan(const conv_p *p, pil2_bw_job *j) {
  const int taps = p->kh * p->kw, S = p->sh;
  const long K = (long)p->cin * taps;
  j->taps = taps;
  j->ct = (p->cout + 3) / 4;
  j->kt = (int)((K + 2) / 3);
  /* a tap's offset on the plane it reads: rows and columns past the output pixel's */
  const int rows_past = S == 1 ? (p->kh - 1) * p->dh : (p->kh - 1) / S, cols_past = S == 1 ? (p->kw - 1) * p->dw : (p->kw - 1) / S;
  j->W2 = p->ow + cols_past;
  j->halo = rows_past;
  /* the chunk's output rows: as many as the two buffers hold within PIL2_BW_CHUNK_FLOATS, at least one */
  const long per_row_x = (long)p->cin * S * S;
  for (j->rows = p->oh; j->rows > 1; j->rows--)
    if ((per_row_x * (j->rows + j->halo) + (long)p->cout * j->rows) * j->W2 <= PIL2_BW_CHUNK_FLOATS) break;
  const long nq = ((long)j->rows * j->W2 + 7) / 8;
  j->gs = 8 * nq;
  j->imgs = 1;
  if (j->rows == p->oh) /* whole maps: as many images a chunk as the budget holds */
    while (j->imgs < 64 && j->imgs < p->n &&
           (per_row_x * (j->rows + j->halo) + (long)p->cout * j->rows) * j->W2 * (j->imgs + 1) <= PIL2_BW_CHUNK_FLOATS)
      j->imgs++;
  /* a plane: its rows, and what the last vector's farthest tap reads past them, in whole lines */
  const long pneed = 8 * nq + (long)rows_past * j->W2 + cols_past;
  j->ps = ((long)(j->rows + j->halo) * j->W2 > pneed ? (long)(j->rows + j->halo) * j->W2 : pneed);
  j->ps = (j->ps + 15) & ~15L;
  j->xs = j->ps * S * S;
}

/* Whether pil2_backward_weight takes this geometry: stride 1 as pil2_ok, stride 2 through phase
 * planes, on output maps of at least 7x7 pixels, where the tiles' accumulators (loaded and stored
 * once per chunk) are at most 64 KB per vector of a chunk (Zen 5 VM, AVX2 forced, two threads, fastest
 * of 30 calls alternating with im2col + GEMM, caches flushed before each: ResNet-20's 16 channels on
 * 28x28 5.2-5.9 -> 3.0-3.5 ms, 32 on 14x14 5.2-6.2 -> 3.5-3.9, 64 on 7x7 4.8-5.4 -> 4.0-4.3 (in
 * training steps 6.4 -> 4.5 ms a call), its strided 16 -> 32 3.0 -> 2.2, 32 -> 64 2.8 -> 2.4;
 * ResNet-18's 64 on 8x8 even (2.8-3.8 both); but 128 on 4x4 5.6-7.6 against 3.7 (a 4x4 map is 3
 * vectors of 6-wide padded rows: mostly padding and the accumulators' loads and stores), and 64 -> 128
 * and 128 -> 256 stride 2 on 16x16 inputs 1.8 -> 3.0 and 5.2 -> 15 ms: 9 and 5 vectors a chunk against
 * 2.4 and 9.4 MB of accumulators). */
int pil2_bw_ok(const conv_p *p) {
  static int off = -1;
  if (env_zero("RESNET_PIL2", &off) || strcmp(sgemm_isa(), "avx2") != 0) return 0;
  const int taps = p->kh * p->kw;
  if (p->groups != 1 || p->cout < 1 || p->n < 1 || p->cin < 1 || taps < 2 || taps > PIL_MAX_TAPS || p->cin * taps > 128 * 9) return 0;
  if ((long)p->oh * p->ow < 7 * 7 || (long)p->h * p->w * p->cin > (1L << 28)) return 0;
  if (!pil2_ok(p) && !(p->sh == 2 && p->sw == 2 && p->dh == 1 && p->dw == 1 && p->ph < p->kh && p->pw < p->kw)) return 0;
  pil2_bw_job j;
  pil2_bw_plan(p, &j);
  return (long)j.ct * j.kt * 96 * (long)sizeof(float) <= 65536L * ((long)j.rows * j.W2 + 7) / 8 * j.imgs;
}

/* dw [cout][cin][kh][kw] of a geometry pil2_bw_ok takes, from x and dy (NCHW). */
void pil2_backward_weight(float *dw, const float *x, const float *dy, const conv_p *p) {
  static _Thread_local buf_t part_buf;
  const long wsz = (long)p->cout * p->cin * p->kh * p->kw;
  pil2_bw_job j = {.p = p, .x = x, .dy = dy};
  pil2_bw_plan(p, &j);
  j.blocks = p->n < PIL2_BLOCKS ? p->n : PIL2_BLOCKS;
  j.part = grow(&part_buf, (size_t)j.blocks * wsz);
  const int T = pool_threads();
  pool_ranges_init(&j.items, j.blocks, 1, T);
  pool_run_dynamic(pil2_bw_task, &j, T);
  for (long i = 0; i < wsz; i++) { /* the blocks' sums in block order */
    float s = j.part[i];
    for (int blk = 1; blk < j.blocks; blk++) s += j.part[blk * wsz + i];
    dw[i] = s;
  }
}
#endif
