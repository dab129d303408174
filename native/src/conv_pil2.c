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
 * sets; 64 channels on 32x32, batch 64, 47 against 33-39 ms). */
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

/* lut[m]: the lanes of 8-bit mask m as vmaskmovps reads them (the sign bit of each 32-bit lane). */
__attribute__((target("avx2"))) static void lane_masks(__m256i *lut) {
  for (unsigned m = 0; m < 256; m++) {
    int32_t v[8];
    for (int l = 0; l < 8; l++) v[l] = (m >> l & 1) ? -1 : 0;
    lut[m] = _mm256_loadu_si256((const __m256i *)v);
  }
}

/* The 8 pixels from q0 of output channels [co0, co0 + 8) (those below cout stored), over the input
 * channels [ci0, ci1) and all taps: the sums start from zero (ci0 = 0) or from acc, and go to acc, or
 * (ci1 = cin) through the epilogue to y. */
__attribute__((target("avx2,fma"))) static void pil2_vector(const pil2_job *j, const __m256i *lut, const float *x, long q0,
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
      const __m256i lm = lut[m];
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
  __m256i lut[256];
  lane_masks(lut);
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
            pil2_vector(j, lut, x, 8 * v, co0, y + o, res ? res + o : NULL, ci0, ci1, acc + (v - vb) * 64);
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
 * dW[co][ci][t] = sum over images b and pixels q of dy[b][co][q] * x[b][ci][q + toff[t]] (lanes whose
 * source pixel is in the padding masked off, as in the forward). The images form at most PIL2_BLOCKS
 * fixed blocks, each summed by one thread into its own dW: per register tile of 4 output channels x 3
 * (input channel, tap) pairs, 12 accumulators of 8 pixel lanes over all the block's vectors (4 + 3
 * loads per 12 multiply-adds), then each accumulator's 8 lanes added. The blocks are added in order,
 * so the bits do not depend on the thread count. */
#define PIL2_BLOCKS 16
typedef struct {
  const conv_p *p;
  int taps, nv, blocks;
  long plane;
  const int *toff;
  const uint8_t *mk;
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

/* Images [b0, b1)'s products into d ([cout][cin * taps]): output channels [co0, co0 + 4) x pairs
 * [k0, k0 + 3) (k = ci * taps + t; those past the ends are computed on clamped indices and not stored),
 * the accumulators kept over all the images (one horizontal sum per block: on 4x4 maps an image is two
 * vectors). */
__attribute__((target("avx2,fma"))) static void pil2_bw_tile(const pil2_bw_job *j, const __m256i *lut, long b0, long b1,
                                                              int co0, int k0, float *d) {
  const conv_p *p = j->p;
  const int K = p->cin * j->taps;
  const long P = j->plane, x_img = (long)p->cin * P, y_img = (long)p->cout * P;
  long dyo[4], xo[3];
  int tk[3];
  for (int i = 0; i < 4; i++) dyo[i] = (long)(co0 + i < p->cout ? co0 + i : p->cout - 1) * P;
  for (int k = 0; k < 3; k++) {
    const int kk = k0 + k < K ? k0 + k : K - 1;
    tk[k] = kk % j->taps;
    xo[k] = (long)(kk / j->taps) * P + j->toff[tk[k]];
  }
  __m256 c[4][3];
  for (int i = 0; i < 4; i++)
    for (int k = 0; k < 3; k++) c[i][k] = _mm256_setzero_ps();
  const __m256i tail = lut[P % 8 ? (1u << (P % 8)) - 1 : 0xFF];
  for (long b = b0; b < b1; b++) {
    const float *x = j->x + b * x_img, *dy = j->dy + b * y_img;
    for (int v = 0; v < j->nv; v++) {
      const long q = 8L * v;
      const uint8_t *mk = j->mk + (long)v * j->taps;
      __m256 xv[3], g[4];
      for (int k = 0; k < 3; k++) {
        const unsigned m = mk[tk[k]];
        xv[k] = m == 0xFF ? _mm256_loadu_ps(x + xo[k] + q) : _mm256_maskload_ps(x + xo[k] + q, lut[m]);
      }
      if (P - q >= 8) {
        for (int i = 0; i < 4; i++) g[i] = _mm256_loadu_ps(dy + dyo[i] + q);
      } else { /* the map's last vector: no lanes past the plane (the buffer may end there) */
        for (int i = 0; i < 4; i++) g[i] = _mm256_maskload_ps(dy + dyo[i] + q, tail);
      }
      for (int i = 0; i < 4; i++)
        for (int k = 0; k < 3; k++) c[i][k] = _mm256_fmadd_ps(g[i], xv[k], c[i][k]);
    }
  }
  for (int i = 0; i < 4 && co0 + i < p->cout; i++)
    for (int k = 0; k < 3 && k0 + k < K; k++) d[(long)(co0 + i) * K + k0 + k] = hsum8(c[i][k]);
}

__attribute__((target("avx2,fma"))) static void pil2_bw_task(void *ctx, int tid, int nt) {
  (void)nt;
  pil2_bw_job *j = ctx;
  const conv_p *p = j->p;
  __m256i lut[256];
  lane_masks(lut);
  const int K = p->cin * j->taps;
  pool_cursor cur = pool_cursor_at(&j->items, tid);
  for (;;) {
    const long blk = pool_ranges_next(&j->items, &cur);
    if (blk < 0) break;
    long b0, b1;
    pool_split(p->n, (int)blk, j->blocks, 1, &b0, &b1);
    float *d = j->part + blk * (long)p->cout * K;
    for (int co0 = 0; co0 < p->cout; co0 += 4)
      for (int k0 = 0; k0 < K; k0 += 3) pil2_bw_tile(j, lut, b0, b1, co0, k0, d);
  }
}

/* Whether pil2_backward_weight takes this geometry: as pil2_ok, on maps of at least 14x14 pixels
 * (Zen 5 VM, AVX2 forced, two threads, fastest calls, against im2col + GEMM: ResNet-20's 1 -> 16 stem
 * 0.31 against 0.81-0.97 ms, 16 channels on 28x28 5.1-5.2 against 7.0-7.5, 32 on 14x14 5.4 against
 * 6.0-6.1; but 64 on 7x7 6.7-8.3 against 5.1-5.4, ResNet-18's 64 on 8x8 4.1-5.1 against 3.3-3.5 and
 * 128 on 4x4 8.3-11 against 3.8-4.0: the GEMM's register tile reuses each load more than these 12
 * accumulators over a few vectors do). */
int pil2_bw_ok(const conv_p *p) { return pil2_ok(p) && p->cin * p->kh * p->kw <= 128 * 9 && (long)p->h * p->w >= 14 * 14; }

/* dw [cout][cin][kh][kw] of a geometry pil2_ok takes, from x and dy (NCHW). */
void pil2_backward_weight(float *dw, const float *x, const float *dy, const conv_p *p) {
  static _Thread_local buf_t mk_buf, part_buf;
  const int taps = p->kh * p->kw;
  int toff[PIL_MAX_TAPS], nv;
  const uint8_t *mk = pil2_taps(p, toff, &mk_buf, &nv);
  const long P = (long)p->h * p->w;
  const long K = (long)p->cin * taps, wsz = (long)p->cout * K;
  pil2_bw_job j = {.p = p, .taps = taps, .nv = nv, .plane = P, .toff = toff, .mk = mk, .x = x, .dy = dy};
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
