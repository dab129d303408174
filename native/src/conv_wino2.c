/* Winograd F(4x4, 3x3) for CPUs without AVX-512 (the AVX2 + FMA kernels): the NCHW convolutions
 * of 3x3 stride-1 layers with padding 1 - the forward (training and the inference plan), the
 * backward-input (the forward of the flipped, transposed kernel) and the weight gradient (the
 * transposed algorithm). The
 * AVX-512 Winograd of conv_wino.c works on 16-channel blocks with its own micro-kernels; this one
 * keeps 8 channels in a vector and stays on NCHW tensors end to end:
 *
 *   Y = A^T [ sum_c U_c .* (B^T d_c B) ] A,   U = G g G^T   (Lavin & Gray 2015; points 0, +-1, +-2)
 *
 * For a chunk of tiles (each 4x4 outputs from a 6x6 input window), with this thread's own scratch:
 *  1. input transform: V[xi][c/8][t][8] = B^T d B for 8 channels of a tile at a time, the 6x6
 *     window read from NCHW x as 128-bit row pieces of 8 channel planes and turned into channel
 *     vectors by in-lane 4x4 transposes (zeros for the padding: masked loads at the map's edges);
 *  2. per position xi and 16-channel panel of cout: M[xi] = V[xi] x U[xi] with a 6-tile x 16-channel
 *     register tile (a tile's channel broadcast against two vectors of the panel), into
 *     M[xi][cout/8][t][8];
 *  3. output transform: Y = A^T m A, plus bias, transposed back to NCHW rows of 4 pixels with the
 *     residual and relu.
 * Every output is computed by one thread over all of cin in a fixed order (the bits do not depend on
 * the thread count). U is computed per call (the weights change every step in training), or packed
 * once by the inference plan (w2_pack). The input transform can read x through a batch norm + ReLU
 * (conv2d_forward_pre's prologue), in the forward and the weight gradient.
 *
 * The weight gradient: dW = G^T [ sum over tiles (B^T d B) .* (A dY A^T) ] G, with V as above and
 * Z[xi][cout/8][t][8] = A dY A^T (dY past the map's edge read as zeros); the sums over tiles run in a
 * fixed number of groups of chunks (a function of the geometry only), each group's sums by one
 * thread, added in group order at the end: again the same bits on any thread count.
 *
 * Rounding as conv_wino.c's F(4x4) (its transforms add and subtract neighbouring values: a forward
 * within a few 1e-6 of its output's scale of the exact sums). */
#include "conv.h"
#include "conv_internal.h"
#include "gemm.h"
#include "pool.h"
#include <stdlib.h>
#include <string.h>

#define NP 36 /* transform positions: 6 x 6 */
#define RT 6  /* rows of the register tile: tiles (forward) or input channels (weight gradient) */

/* Up to this many cin x cout pairs a forward runs in private chunks of tiles, each chunk reading all
 * the transformed weights (2.4 MB at 128 -> 128); beyond, split by positions and output panels over
 * the whole batch's tiles (fwd_split), which reads them once. */
#define PRIVATE_MAX_PAIRS (128L * 128)

/* Whether a geometry runs here (besides the AVX2 kernels being the ones in use: conv.c decides):
 * 3x3, stride 1, dilation 1, padding 1, groups 1, channels in whole 8-channel vectors, maps of at
 * least 3x3 (smaller ones go to the dense products first), and by `pass`:
 *  - W2_PACKED, a forward whose weights the inference plan packed once: transformed weights within
 *    9.4 MB (256 -> 256 channels);
 *  - W2_PER_CALL, a forward or backward-input that transforms them per call: within 2.4 MB (128 ->
 *    128), or 9.4 MB where the batch has 64 tiles or more (a 256 -> 256 U costs ~1.4 ms a call on
 *    two threads: more than it saves at batch 1, 256 on 14x14 2.24 against 1.38 ms, much less than
 *    it saves at training batch sizes);
 *  - W2_WEIGHT_GRADIENT: within 2.4 MB (each group of chunks keeps 36 cin cout sums). */
int w2_ok(const conv_p *p, int pass) {
  if (!(p->groups == 1 && p->kh == 3 && p->kw == 3 && p->sh == 1 && p->sw == 1 && p->dh == 1 && p->dw == 1 && p->ph == 1 &&
        p->pw == 1 && p->cin % 8 == 0 && p->cout % 8 == 0 && p->cin > 0 && p->cout > 0 && p->h >= 3 && p->w >= 3 &&
        p->oh == p->h && p->ow == p->w && p->n >= 1))
    return 0;
  const long pairs = (long)p->cin * p->cout, tiles = (long)p->n * ((p->oh + 3) / 4) * ((p->ow + 3) / 4);
  if (pass == W2_PACKED) return pairs <= 256L * 256;
  if (pass == W2_PER_CALL) return pairs <= PRIVATE_MAX_PAIRS || (pairs <= 256L * 256 && tiles >= 64);
  return pairs <= PRIVATE_MAX_PAIRS;
}

#if defined(__x86_64__)

/* The distance between positions' planes of V, M and Z for planes of n floats: whole lines, an odd
 * number of them, so that a tile's 36 stores one plane apart fall into different L1 sets. */
static long plane_of(long n) {
  const long l = (n + 15) / 16;
  return 16 * (l % 2 ? l : l + 1);
}

/* Up to 4 floats from p (the first `valid` of them; zeros after): a row piece of one channel plane. */
__attribute__((target("avx2"), always_inline)) static inline __m128 piece(const float *p, int valid) {
  switch (valid) {
    case 4: return _mm_loadu_ps(p);
    case 3: return _mm_maskload_ps(p, _mm_setr_epi32(-1, -1, -1, 0));
    case 2: return _mm_castpd_ps(_mm_load_sd((const double *)p));
    case 1: return _mm_load_ss(p);
    default: return _mm_setzero_ps();
  }
}

/* The row pieces p + l*ld (l = 0..7, `valid` floats each) of 8 channel planes as 4 vectors, one per
 * column, with the 8 channels in their lanes (channels l and l + 4 share a register: an in-lane 4x4
 * transpose then gives the columns). */
__attribute__((target("avx2"), always_inline)) static inline void pieces8(const float *p, long ld, int valid, __m256 c[4]) {
  __m256 r[4];
  for (int l = 0; l < 4; l++) r[l] = _mm256_set_m128(piece(p + (l + 4) * ld, valid), piece(p + l * ld, valid));
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  c[0] = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
  c[1] = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  c[2] = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
  c[3] = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
}

/* A call's geometry and its chunks of tiles. */
typedef struct {
  const conv_p *p;
  int th, tw;        /* tiles per column and row of a map */
  long ntiles, tc;   /* tiles of the batch; tiles per chunk (a multiple of RT) */
  long nchunks;
} w2_geo;

static void geo_init(w2_geo *g, const conv_p *p, int threads) {
  g->p = p;
  g->th = (p->oh + 3) / 4;
  g->tw = (p->ow + 3) / 4;
  g->ntiles = (long)p->n * g->th * g->tw;
  /* V and M (or Z) of a chunk within 512 KB, half a core's L2, evened out over the chunks; at least
   * two chunks a thread where there are enough tiles */
  long tc = (1L << 17) / (NP * (long)(p->cin + p->cout)) / RT * RT;
  if (tc < RT) tc = RT;
  long nch = (g->ntiles + tc - 1) / tc;
  if (nch < 2L * threads) nch = 2L * threads;
  tc = (g->ntiles + nch - 1) / nch;
  tc = (tc + RT - 1) / RT * RT;
  g->tc = tc;
  g->nchunks = (g->ntiles + tc - 1) / tc;
}

/* Rows [nt, ntp) of a channel block (at b, positions s floats apart) zeroed: the register tiles'
 * rows past a chunk's last tile. */
__attribute__((target("avx2"))) static void zero_rows(float *b, long s, long nt, long ntp) {
  for (long i = nt; i < ntp; i++)
    for (int xi = 0; xi < NP; xi++) _mm256_storeu_ps(b + xi * s + i * 8, _mm256_setzero_ps());
}

/* Tile t of the batch: image, and the first input row and column of its window. */
static inline void tile_at(const w2_geo *g, long t, long *b, int *iy0, int *ix0) {
  const long per = (long)g->th * g->tw, r = t % per;
  *b = t / per;
  *iy0 = (int)(r / g->tw) * 4 - 1;
  *ix0 = (int)(r % g->tw) * 4 - 1;
}

/* V for tiles [t0, t0 + nt) of the batch (nt <= tc): vs floats between positions, the 8-channel
 * blocks tc * 8 apart; the register tiles' rows past nt zero. With ps (and pt), x is read as
 * relu(x * ps[c] + pt[c]) (conv2d_forward_pre's prologue: multiply, add, then max(0, .) as the batch
 * norm's own pass, the same bits; NaN stays), the padding still zero. */
__attribute__((target("avx2,fma"))) static void input_transform(const w2_geo *g, const float *x, const float *ps, const float *pt,
                                                                 long t0, long nt, float *V, long vs) {
  const conv_p *p = g->p;
  const long HW = (long)p->h * p->w, tc = g->tc;
  const int ncb = p->cin / 8;
  const long ntp = (nt + RT - 1) / RT * RT;
  for (int cb = 0; cb < ncb; cb++) {
    float *vb = V + cb * tc * 8;
    const __m256 vs8 = ps ? _mm256_loadu_ps(ps + cb * 8) : _mm256_setzero_ps(), vt8 = ps ? _mm256_loadu_ps(pt + cb * 8) : vs8;
    for (long i = 0; i < nt; i++) {
      long b;
      int iy0, ix0;
      tile_at(g, t0 + i, &b, &iy0, &ix0);
      const float *xc = x + (b * p->cin + cb * 8) * HW;
      /* the window's columns ix0 .. ix0+5 as two pieces: from ix0 (4) and ix0 + 4 (2), or where the
       * window starts in the padding, from column 0 (4 + 1) one column later */
      const int shift = ix0 < 0, c0 = ix0 < 0 ? 0 : ix0;
      int v0 = p->w - c0, v1 = p->w - (c0 + 4);
      v0 = v0 < 0 ? 0 : v0 > 4 ? 4 : v0;
      v1 = v1 < 0 ? 0 : v1 > 2 - shift ? 2 - shift : v1;
      const int k0 = shift, k1 = shift + v0 + v1; /* the window's columns inside the map */
      __m256 rows[6][6];
      for (int r = 0; r < 6; r++) {
        const int iy = iy0 + r;
        if (iy < 0 || iy >= p->h) {
          for (int k = 0; k < 6; k++) rows[r][k] = _mm256_setzero_ps();
          continue;
        }
        const float *xr = xc + (long)iy * p->w + c0;
        __m256 a[4], e[4], d[6];
        pieces8(xr, HW, v0, a);
        if (v1 > 0) pieces8(xr + 4, HW, v1, e);
        else e[0] = e[1] = _mm256_setzero_ps();
        if (shift) {
          d[0] = _mm256_setzero_ps();
          d[1] = a[0], d[2] = a[1], d[3] = a[2], d[4] = a[3], d[5] = e[0];
        } else {
          d[0] = a[0], d[1] = a[1], d[2] = a[2], d[3] = a[3], d[4] = e[0], d[5] = e[1];
        }
        if (ps)
          for (int k = k0; k < k1; k++) d[k] = _mm256_max_ps(_mm256_setzero_ps(), _mm256_add_ps(_mm256_mul_ps(d[k], vs8), vt8));
        WINO4_BT(256, d, rows[r]);
      }
      for (int k = 0; k < 6; k++) {
        __m256 d[6], o[6];
        for (int r = 0; r < 6; r++) d[r] = rows[r][k];
        WINO4_BT(256, d, o);
        for (int a = 0; a < 6; a++) _mm256_storeu_ps(vb + (a * 6 + k) * vs + i * 8, o[a]);
      }
    }
    zero_rows(vb, vs, nt, ntp);
  }
}

/* The call's transformed weights U[xi][cout/16][cin][16] (the panels' lanes past cout zero). */
typedef struct {
  const float *w;
  const conv_p *p;
  int flip;
  float *U;
  long us; /* floats per position */
} upack_job;

/* U = G g G^T for 8 output channels o (lanes) of input channel c per item: their 3x3 kernels
 * gathered from w[o][c] (flip 0), or for the backward-input convolution from w[c][o] turned by 180
 * degrees (flip 1: w is then the forward layer's [cin = p->cout][p->cin]). */
__attribute__((target("avx2,fma"))) static void upack_task(void *ctx, int part, int parts) {
  const upack_job *j = ctx;
  const conv_p *p = j->p;
  const int C = p->cin, Mo = p->cout, nob = Mo / 8;
  long lo, hi;
  pool_split((long)C * nob, part, parts, 1, &lo, &hi);
  const long so = j->flip ? 9 : 9L * C;
  const __m256i idx = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32((int)so));
  const __m256 q4 = _mm256_set1_ps(0.25f), s6 = _mm256_set1_ps(1.0f / 6), s12 = _mm256_set1_ps(1.0f / 12),
               s24 = _mm256_set1_ps(1.0f / 24);
  for (long it = lo; it < hi; it++) {
    const int c = (int)(it / nob), o0 = (int)(it % nob) * 8;
    const float *base = j->flip ? j->w + ((long)c * Mo + o0) * 9 : j->w + ((long)o0 * C + c) * 9;
    __m256 g[9];
    for (int k = 0; k < 9; k++) g[k] = _mm256_i32gather_ps(base + (j->flip ? 8 - k : k), idx, 4);
    /* t = G g (6 x 3), then u = t G^T (6 x 6); G's rows (1/4, 0, 0), -(1, 1, 1)/6, (-1, 1, -1)/6,
     * (1/24, 1/12, 1/6), (1/24, -1/12, 1/6), (0, 0, 1) */
    __m256 t[6][3];
    for (int k = 0; k < 3; k++) {
      const __m256 a = g[k], b = g[3 + k], e = g[6 + k], ae = _mm256_add_ps(a, e);
      t[0][k] = _mm256_mul_ps(q4, a);
      t[1][k] = _mm256_mul_ps(s6, _mm256_sub_ps(_mm256_setzero_ps(), _mm256_add_ps(ae, b)));
      t[2][k] = _mm256_mul_ps(s6, _mm256_sub_ps(b, ae));
      const __m256 f = _mm256_fmadd_ps(s24, a, _mm256_mul_ps(s6, e));
      t[3][k] = _mm256_fmadd_ps(s12, b, f);
      t[4][k] = _mm256_fnmadd_ps(s12, b, f);
      t[5][k] = e;
    }
    float *d = j->U + (long)(o0 / 16) * C * 16 + (long)c * 16 + o0 % 16;
    for (int i = 0; i < 6; i++) {
      const __m256 a = t[i][0], b = t[i][1], e = t[i][2], ae = _mm256_add_ps(a, e);
      const __m256 f = _mm256_fmadd_ps(s24, a, _mm256_mul_ps(s6, e));
      const __m256 u[6] = {_mm256_mul_ps(q4, a), _mm256_mul_ps(s6, _mm256_sub_ps(_mm256_setzero_ps(), _mm256_add_ps(ae, b))),
                           _mm256_mul_ps(s6, _mm256_sub_ps(b, ae)), _mm256_fmadd_ps(s12, b, f), _mm256_fnmadd_ps(s12, b, f), e};
      for (int q = 0; q < 6; q++) _mm256_storeu_ps(d + (i * 6 + q) * j->us, u[q]);
    }
  }
}

/* Floats per position of U. */
static long u_stride(const conv_p *p) { return (long)(p->cout + 15) / 16 * p->cin * 16; }

/* U for p (flip: the backward-input's flipped kernel, as upack_task), into U (NP * u_stride floats). */
static void upack_into(const float *w, const conv_p *p, int flip, float *U) {
  const int npan = (p->cout + 15) / 16;
  const long us = u_stride(p);
  if (p->cout % 16) /* the last panel's upper half */
    for (int xi = 0; xi < NP; xi++)
      for (int c = 0; c < p->cin; c++) memset(U + xi * us + (long)(npan - 1) * p->cin * 16 + c * 16 + 8, 0, 8 * sizeof(float));
  upack_job j = {w, p, flip, U, us};
  const long items = (long)p->cin * (p->cout / 8);
  const int T = pool_threads();
  pool_run_n(upack_task, &j, items < 64 ? 1 : T);
}

long w2_packed_size(const conv_p *p) { return NP * u_stride(p) + (long)p->cout * p->cin * 9; }
void w2_pack(const float *w, const conv_p *p, float *dst) {
  upack_into(w, p, 0, dst);
  memcpy(dst + NP * u_stride(p), w, sizeof(float) * (size_t)p->cout * p->cin * 9);
}
void w2_unpack(const float *src, const conv_p *p, float *w) {
  memcpy(w, src + NP * u_stride(p), sizeof(float) * (size_t)p->cout * p->cin * 9);
}

/* M[r][0..15] = sum over k < K of a(r, k) * B[k][0..15] for the register tile's RT rows r, where
 * a(r, k) = A[(k / 8) * as + r * 8 + k % 8] (V: a tile's channels, 8-channel blocks as apart) and B
 * is a 16-wide panel (U); stored to m0 + r * 8 (lanes 0..7) and m1 + r * 8 (8..15; m1 NULL: not). */
__attribute__((target("avx2,fma"))) static void fwd_tile(const float *A, long as, int K, const float *B, float *m0, float *m1) {
  /* the 12 sums as named variables: GCC had kept an array of them on the stack, a store per multiply-add */
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00, c40 = c00,
         c41 = c00, c50 = c00, c51 = c00;
  for (int kb = 0; kb < K; kb += 8, A += as)
    for (int l = 0; l < 8; l++, B += 16) {
      const __m256 b0 = _mm256_loadu_ps(B), b1 = _mm256_loadu_ps(B + 8);
      __m256 a;
#define FWD_ROW(r)                                                                                                    \
  a = _mm256_broadcast_ss(A + r * 8 + l);                                                                            \
  c##r##0 = _mm256_fmadd_ps(a, b0, c##r##0);                                                                         \
  c##r##1 = _mm256_fmadd_ps(a, b1, c##r##1);
      FWD_ROW(0) FWD_ROW(1) FWD_ROW(2) FWD_ROW(3) FWD_ROW(4) FWD_ROW(5)
#undef FWD_ROW
    }
  _mm256_storeu_ps(m0, c00), _mm256_storeu_ps(m0 + 8, c10), _mm256_storeu_ps(m0 + 16, c20);
  _mm256_storeu_ps(m0 + 24, c30), _mm256_storeu_ps(m0 + 32, c40), _mm256_storeu_ps(m0 + 40, c50);
  if (m1) {
    _mm256_storeu_ps(m1, c01), _mm256_storeu_ps(m1 + 8, c11), _mm256_storeu_ps(m1 + 16, c21);
    _mm256_storeu_ps(m1 + 24, c31), _mm256_storeu_ps(m1 + 32, c41), _mm256_storeu_ps(m1 + 40, c51);
  }
}

typedef struct {
  w2_geo g;
  const float *x, *U, *bias, *res;
  const float *ps, *pt; /* the input's prologue (input_transform), or NULL */
  float *y;
  int relu;
  long us;
  pool_ranges chunks;
} fwd_job;

/* The output transform of tiles [t0, t0 + nt) from M (ms floats between positions, 8-channel blocks
 * tc * 8 apart) into NCHW y, with bias, residual and relu. */
__attribute__((target("avx2,fma"))) static void output_transform(const fwd_job *j, long t0, long nt, const float *M, long ms) {
  const conv_p *p = j->g.p;
  const long OHW = (long)p->oh * p->ow, tc = j->g.tc;
  const __m128 z4 = _mm_setzero_ps();
  for (int cb = 0; cb < p->cout / 8; cb++) {
    const float *mb = M + cb * tc * 8;
    const __m256 vb = j->bias ? _mm256_loadu_ps(j->bias + cb * 8) : _mm256_setzero_ps();
    for (long i = 0; i < nt; i++) {
      long b;
      int iy0, ix0;
      tile_at(&j->g, t0 + i, &b, &iy0, &ix0);
      const int oy0 = iy0 + 1, ox0 = ix0 + 1;
      __m256 cols[6][4];
      for (int a = 0; a < 6; a++) {
        __m256 m[6];
        for (int k = 0; k < 6; k++) m[k] = _mm256_loadu_ps(mb + (a * 6 + k) * ms + i * 8);
        WINO4_AT(256, m, cols[a]);
      }
      const int rows = p->oh - oy0 < 4 ? p->oh - oy0 : 4, valid = p->ow - ox0 < 4 ? p->ow - ox0 : 4;
      const __m128i mask = _mm_cmpgt_epi32(_mm_set1_epi32(valid), _mm_setr_epi32(0, 1, 2, 3));
      const long o = (b * p->cout + cb * 8) * OHW + (long)oy0 * p->ow + ox0;
      for (int q = 0; q < 4; q++) {
        __m256 m[6], out[4];
        for (int a = 0; a < 6; a++) m[a] = cols[a][q];
        WINO4_AT(256, m, out);
        cols[0][q] = out[0], cols[1][q] = out[1], cols[2][q] = out[2], cols[3][q] = out[3];
      }
      for (int r = 0; r < rows; r++) {
        /* row r's 4 pixels (vectors of 8 channels) -> 8 channels' rows of 4 pixels */
        const __m256 o0 = _mm256_add_ps(cols[r][0], vb), o1 = _mm256_add_ps(cols[r][1], vb);
        const __m256 o2 = _mm256_add_ps(cols[r][2], vb), o3 = _mm256_add_ps(cols[r][3], vb);
        const __m256 t0 = _mm256_unpacklo_ps(o0, o1), t1 = _mm256_unpackhi_ps(o0, o1);
        const __m256 t2 = _mm256_unpacklo_ps(o2, o3), t3 = _mm256_unpackhi_ps(o2, o3);
        const __m256 u[4] = {_mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0)), _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2)),
                             _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0)), _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2))};
        for (int l = 0; l < 8; l++) {
          __m128 v = l < 4 ? _mm256_castps256_ps128(u[l]) : _mm256_extractf128_ps(u[l - 4], 1);
          const long at = o + l * OHW + (long)r * p->ow;
          if (j->res) v = _mm_add_ps(v, valid == 4 ? _mm_loadu_ps(j->res + at) : _mm_maskload_ps(j->res + at, mask));
          if (j->relu) v = _mm_max_ps(z4, v); /* NaN stays NaN */
          if (valid == 4) _mm_storeu_ps(j->y + at, v);
          else _mm_maskstore_ps(j->y + at, mask, v);
        }
      }
    }
  }
}

/* A thread's share of the forward: chunks of tiles through the three passes with its own scratch. */
__attribute__((target("avx2,fma"))) static void fwd_task(void *ctx, int tid, int n) {
  (void)n;
  fwd_job *j = ctx;
  const conv_p *p = j->g.p;
  static _Thread_local buf_t vbuf, mbuf;
  const long tc = j->g.tc, vs = plane_of((long)p->cin * tc), ms = plane_of((long)p->cout * tc);
  float *V = grow(&vbuf, (size_t)NP * vs), *M = grow(&mbuf, (size_t)NP * ms);
  const int npan = (p->cout + 15) / 16;
  pool_cursor cur = pool_cursor_at(&j->chunks, tid);
  for (;;) {
    const long c = pool_ranges_next(&j->chunks, &cur);
    if (c < 0) break;
    const long t0 = c * tc, nt = j->g.ntiles - t0 < tc ? j->g.ntiles - t0 : tc;
    input_transform(&j->g, j->x, j->ps, j->pt, t0, nt, V, vs);
    for (int xi = 0; xi < NP; xi++)
      for (int pn = 0; pn < npan; pn++) {
        const float *Bp = j->U + xi * j->us + (long)pn * p->cin * 16;
        float *m0 = M + xi * ms + (long)(2 * pn) * tc * 8;
        float *m1 = 2 * pn + 1 < p->cout / 8 ? m0 + tc * 8 : NULL;
        for (long r = 0; r < nt; r += RT) fwd_tile(V + xi * vs + r * 8, tc * 8, p->cin, Bp, m0 + r * 8, m1 ? m1 + r * 8 : NULL);
      }
    output_transform(j, t0, nt, M, ms);
  }
}

/* The forward split by passes over the whole batch (more than PRIVATE_MAX_PAIRS channel pairs): the
 * input transform of all tiles (ranges of whole register tiles per part), then items (position,
 * 16-channel panel) each multiplying all tiles by its panel of U (read once, 16 KB at 256 input
 * channels; the items of one position share V[xi] in the caches), then the output transform. Each
 * output is still summed by one item in a fixed order. */
typedef struct {
  fwd_job *j;
  float *V, *M;
  long vs, ms, groups; /* groups: the tiles' register tiles (RT rows each) */
  int npan;
} split_job;
static void split_range(long total, long unit, int part, int parts, long *lo, long *hi) {
  pool_split(total, part, parts, 1, lo, hi);
  *lo *= unit;
  *hi *= unit;
}
__attribute__((target("avx2,fma"))) static void split_in_task(void *ctx, int part, int parts) {
  const split_job *s = ctx;
  long lo, hi;
  split_range(s->groups, RT, part, parts, &lo, &hi);
  if (hi > s->j->g.ntiles) hi = s->j->g.ntiles;
  if (hi > lo) input_transform(&s->j->g, s->j->x, s->j->ps, s->j->pt, lo, hi - lo, s->V + lo * 8, s->vs);
}
__attribute__((target("avx2,fma"))) static void split_gemm_task(void *ctx, int part, int parts) {
  const split_job *s = ctx;
  const fwd_job *j = s->j;
  const conv_p *p = j->g.p;
  const long tc = j->g.tc;
  long lo, hi;
  pool_split((long)NP * s->npan, part, parts, 1, &lo, &hi);
  for (long it = lo; it < hi; it++) {
    const int xi = (int)(it / s->npan), pn = (int)(it % s->npan);
    const float *Bp = j->U + xi * j->us + (long)pn * p->cin * 16;
    float *m0 = s->M + xi * s->ms + (long)(2 * pn) * tc * 8;
    float *m1 = 2 * pn + 1 < p->cout / 8 ? m0 + tc * 8 : NULL;
    for (long r = 0; r < s->groups * RT; r += RT) fwd_tile(s->V + xi * s->vs + r * 8, tc * 8, p->cin, Bp, m0 + r * 8, m1 ? m1 + r * 8 : NULL);
  }
}
__attribute__((target("avx2,fma"))) static void split_out_task(void *ctx, int part, int parts) {
  const split_job *s = ctx;
  long lo, hi;
  split_range(s->groups, RT, part, parts, &lo, &hi);
  if (hi > s->j->g.ntiles) hi = s->j->g.ntiles;
  if (hi > lo) output_transform(s->j, lo, hi - lo, s->M + lo * 8, s->ms);
}
static void fwd_split(fwd_job *j) {
  static _Thread_local buf_t vbuf, mbuf;
  const conv_p *p = j->g.p;
  split_job s;
  s.j = j;
  s.groups = (j->g.ntiles + RT - 1) / RT;
  j->g.tc = s.groups * RT; /* one chunk: every tile */
  j->g.nchunks = 1;
  s.vs = plane_of((long)p->cin * j->g.tc);
  s.ms = plane_of((long)p->cout * j->g.tc);
  s.V = grow(&vbuf, (size_t)NP * s.vs);
  s.M = grow(&mbuf, (size_t)NP * s.ms);
  s.npan = (p->cout + 15) / 16;
  pool_run(split_in_task, &s);
  pool_run(split_gemm_task, &s);
  pool_run(split_out_task, &s);
}

void w2_forward_nchw(float *y, const float *x, const float *w, const float *packed, int flip, const float *bias,
                     const float *residual, int relu, const conv_p *p, const float *pre_s, const float *pre_t) {
  static _Thread_local buf_t ubuf;
  fwd_job j;
  const int T = pool_threads();
  geo_init(&j.g, p, T);
  j.x = x;
  j.ps = pre_s;
  j.pt = pre_t;
  j.bias = bias;
  j.res = residual;
  j.y = y;
  j.relu = relu;
  j.us = u_stride(p);
  if (packed) j.U = packed;
  else {
    float *U = grow(&ubuf, (size_t)NP * j.us);
    upack_into(w, p, flip, U);
    j.U = U;
  }
  if ((long)p->cin * p->cout > PRIVATE_MAX_PAIRS) {
    fwd_split(&j);
    return;
  }
  pool_ranges_init(&j.chunks, j.g.nchunks, 1, T);
  pool_run_dynamic(fwd_task, &j, T);
}

/* ---- weight gradient ---- */

/* Z for tiles [t0, t0 + nt) of dY (cout channels, oh x ow) into Z (zs floats between positions,
 * 8-channel blocks tc * 8 apart); the sums over tiles (bw_tile) read no rows past nt. */
__attribute__((target("avx2,fma"))) static void dy_transform(const w2_geo *g, const float *dy, long t0, long nt, float *Z, long zs) {
  const conv_p *p = g->p;
  const long OHW = (long)p->oh * p->ow, tc = g->tc;
  for (int cb = 0; cb < p->cout / 8; cb++) {
    float *zb = Z + cb * tc * 8;
    for (long i = 0; i < nt; i++) {
      long b;
      int iy0, ix0;
      tile_at(g, t0 + i, &b, &iy0, &ix0);
      const int oy0 = iy0 + 1, ox0 = ix0 + 1;
      const int rows = p->oh - oy0 < 4 ? p->oh - oy0 : 4, valid = p->ow - ox0 < 4 ? p->ow - ox0 : 4;
      const float *dc = dy + (b * p->cout + cb * 8) * OHW + (long)oy0 * p->ow + ox0;
      __m256 rz[4][6];
      for (int r = 0; r < 4; r++) {
        __m256 c[4];
        if (r < rows) pieces8(dc + (long)r * p->ow, OHW, valid, c);
        else c[0] = c[1] = c[2] = c[3] = _mm256_setzero_ps();
        WINO4_AZ(256, c, rz[r]);
      }
      for (int k = 0; k < 6; k++) {
        __m256 c[4], z[6];
        for (int r = 0; r < 4; r++) c[r] = rz[r][k];
        WINO4_AZ(256, c, z);
        for (int a = 0; a < 6; a++) _mm256_storeu_ps(zb + (a * 6 + k) * zs + i * 8, z[a]);
      }
    }
  }
}

/* D[r][0..15] (+)= sum over tiles k < K of V(r, k) * Z(k, 0..15) for RT input channels r: V(r, k) =
 * a[r][k * 8] (each row's pointer into its channel block), Z(k, .) = z0[k * 8], z1[k * 8] (two
 * 8-channel blocks of cout; z1 NULL: only the first); D rows ld apart, accumulated unless first. */
__attribute__((target("avx2,fma"))) static void bw_tile(const float *const a[RT], long K, const float *z0, const float *z1, float *D,
                                                        long ld, int rows, int first) {
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, c31 = c00, c40 = c00,
         c41 = c00, c50 = c00, c51 = c00; /* named: see fwd_tile */
  const float *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3], *a4 = a[4], *a5 = a[5];
  if (!z1) z1 = z0;
  for (long k = 0; k < K; k++) {
    const __m256 b0 = _mm256_loadu_ps(z0 + k * 8), b1 = _mm256_loadu_ps(z1 + k * 8);
    __m256 v;
#define BW_ROW(r)                                                                                                     \
  v = _mm256_broadcast_ss(a##r + k * 8);                                                                             \
  c##r##0 = _mm256_fmadd_ps(v, b0, c##r##0);                                                                         \
  c##r##1 = _mm256_fmadd_ps(v, b1, c##r##1);
    BW_ROW(0) BW_ROW(1) BW_ROW(2) BW_ROW(3) BW_ROW(4) BW_ROW(5)
#undef BW_ROW
  }
  const __m256 c[RT][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
  for (int r = 0; r < rows; r++) {
    float *d = D + r * ld;
    if (first) {
      _mm256_storeu_ps(d, c[r][0]);
      _mm256_storeu_ps(d + 8, c[r][1]);
    } else {
      _mm256_storeu_ps(d, _mm256_add_ps(_mm256_loadu_ps(d), c[r][0]));
      _mm256_storeu_ps(d + 8, _mm256_add_ps(_mm256_loadu_ps(d + 8), c[r][1]));
    }
  }
}

typedef struct {
  w2_geo g;
  const float *x, *dy;
  const float *ps, *pt; /* x's prologue (input_transform), or NULL */
  float *dU;   /* [groups][NP][cin][coutp] */
  long coutp;  /* cout rounded up to 16 */
  long gsize;  /* floats per group's sums */
  long per;    /* chunks per group */
  int groups;
  pool_ranges items;
} bw_job;

/* Group gr's sums over its chunks' tiles, with this thread's scratch. */
__attribute__((target("avx2,fma"))) static void bw_group(const bw_job *j, int gr, float *V, long vs, float *Z, long zs) {
  const conv_p *p = j->g.p;
  const long tc = j->g.tc;
  float *D = j->dU + gr * j->gsize;
  const long c0 = gr * j->per, c1 = c0 + j->per < j->g.nchunks ? c0 + j->per : j->g.nchunks;
  for (long c = c0; c < c1; c++) {
    const long t0 = c * tc, nt = j->g.ntiles - t0 < tc ? j->g.ntiles - t0 : tc;
    input_transform(&j->g, j->x, j->ps, j->pt, t0, nt, V, vs);
    dy_transform(&j->g, j->dy, t0, nt, Z, zs);
    for (int xi = 0; xi < NP; xi++)
      for (int i0 = 0; i0 < p->cin; i0 += RT) {
        const int rows = p->cin - i0 < RT ? p->cin - i0 : RT;
        const float *a[RT];
        for (int r = 0; r < RT; r++) {
          const int i = i0 + (r < rows ? r : 0);
          a[r] = V + xi * vs + (long)(i / 8) * tc * 8 + i % 8;
        }
        for (int ob = 0; ob < p->cout / 8; ob += 2) {
          const float *z0 = Z + xi * zs + (long)ob * tc * 8;
          const float *z1 = ob + 1 < p->cout / 8 ? z0 + tc * 8 : NULL;
          bw_tile(a, nt, z0, z1, D + ((long)xi * p->cin + i0) * j->coutp + ob * 8, j->coutp, rows, c == c0);
        }
      }
  }
}

__attribute__((target("avx2,fma"))) static void bw_task(void *ctx, int tid, int n) {
  (void)n;
  bw_job *j = ctx;
  const conv_p *p = j->g.p;
  static _Thread_local buf_t vbuf, zbuf;
  const long tc = j->g.tc, vs = plane_of((long)p->cin * tc), zs = plane_of((long)p->cout * tc);
  float *V = grow(&vbuf, (size_t)NP * vs), *Z = grow(&zbuf, (size_t)NP * zs);
  pool_cursor cur = pool_cursor_at(&j->items, tid);
  for (;;) {
    const long gr = pool_ranges_next(&j->items, &cur);
    if (gr < 0) break;
    bw_group(j, (int)gr, V, vs, Z, zs);
  }
}

typedef struct {
  const bw_job *j;
  float *dw;
} bwout_job;

/* dW[o][i] = G^T dU G for 8 output channels (lanes) of input channel i per item, dU the groups' sums
 * added in group order. */
__attribute__((target("avx2,fma"))) static void bwout_task(void *ctx, int part, int parts) {
  const bwout_job *o = ctx;
  const bw_job *j = o->j;
  const conv_p *p = j->g.p;
  const int C = p->cin, nob = p->cout / 8;
  long lo, hi;
  pool_split((long)C * nob, part, parts, 1, &lo, &hi);
  const __m256 q4 = _mm256_set1_ps(0.25f), s6 = _mm256_set1_ps(1.0f / 6), s12 = _mm256_set1_ps(1.0f / 12),
               s24 = _mm256_set1_ps(1.0f / 24);
  for (long it = lo; it < hi; it++) {
    const int i = (int)(it / nob), o0 = (int)(it % nob) * 8;
    __m256 u[6][6];
    for (int xi = 0; xi < NP; xi++) {
      const float *s = j->dU + ((long)xi * C + i) * j->coutp + o0;
      __m256 v = _mm256_loadu_ps(s);
      for (int gr = 1; gr < j->groups; gr++) v = _mm256_add_ps(v, _mm256_loadu_ps(s + gr * j->gsize));
      u[xi / 6][xi % 6] = v;
    }
    /* s = dU G (6 x 3), then dW = G^T s (3 x 3); G's columns: (1/4, -1/6, -1/6, 1/24, 1/24, 0),
     * (0, -1/6, 1/6, 1/12, -1/12, 0), (0, -1/6, -1/6, 1/6, 1/6, 1) */
    __m256 s[6][3];
    for (int a = 0; a < 6; a++) {
      const __m256 *r = u[a];
      const __m256 p12 = _mm256_add_ps(r[1], r[2]), m12 = _mm256_sub_ps(r[2], r[1]);
      const __m256 p34 = _mm256_add_ps(r[3], r[4]), m34 = _mm256_sub_ps(r[3], r[4]);
      s[a][0] = _mm256_fmadd_ps(s24, p34, _mm256_fnmadd_ps(s6, p12, _mm256_mul_ps(q4, r[0])));
      s[a][1] = _mm256_fmadd_ps(s12, m34, _mm256_mul_ps(s6, m12));
      s[a][2] = _mm256_add_ps(_mm256_mul_ps(s6, _mm256_sub_ps(p34, p12)), r[5]);
    }
    float out[9][8];
    for (int k = 0; k < 3; k++) {
      const __m256 p12 = _mm256_add_ps(s[1][k], s[2][k]), m12 = _mm256_sub_ps(s[2][k], s[1][k]);
      const __m256 p34 = _mm256_add_ps(s[3][k], s[4][k]), m34 = _mm256_sub_ps(s[3][k], s[4][k]);
      _mm256_storeu_ps(out[0 * 3 + k], _mm256_fmadd_ps(s24, p34, _mm256_fnmadd_ps(s6, p12, _mm256_mul_ps(q4, s[0][k]))));
      _mm256_storeu_ps(out[1 * 3 + k], _mm256_fmadd_ps(s12, m34, _mm256_mul_ps(s6, m12)));
      _mm256_storeu_ps(out[2 * 3 + k], _mm256_add_ps(_mm256_mul_ps(s6, _mm256_sub_ps(p34, p12)), s[5][k]));
    }
    for (int l = 0; l < 8; l++)
      for (int t = 0; t < 9; t++) o->dw[((long)(o0 + l) * C + i) * 9 + t] = out[t][l];
  }
}

/* Groups of chunks for the weight gradient's sums: up to 8 (a descheduled thread's share then goes to
 * the others), fewer where their sums would exceed 4 MB, at least 2; a function of the geometry only. */
static int bw_groups(const w2_geo *g, long gsize) {
  long gr = (4L << 20) / (gsize * (long)sizeof(float));
  if (gr > 8) gr = 8;
  if (gr < 2) gr = 2;
  if (gr > g->nchunks) gr = g->nchunks;
  return (int)gr;
}

void w2_backward_weight_nchw(float *dw, const float *x, const float *dy, const conv_p *p, const float *pre_s, const float *pre_t) {
  static _Thread_local buf_t dubuf;
  bw_job j;
  /* the chunking may not depend on the thread count here (the groups' sums would change): as for two */
  geo_init(&j.g, p, 2);
  j.x = x;
  j.dy = dy;
  j.ps = pre_s;
  j.pt = pre_t;
  j.coutp = (p->cout + 15) / 16 * 16;
  j.gsize = (long)NP * p->cin * j.coutp;
  j.groups = bw_groups(&j.g, j.gsize);
  j.per = (j.g.nchunks + j.groups - 1) / j.groups;
  j.groups = (int)((j.g.nchunks + j.per - 1) / j.per);
  j.dU = grow(&dubuf, (size_t)j.groups * j.gsize);
  const int T = pool_threads();
  pool_ranges_init(&j.items, j.groups, 1, T);
  pool_run_dynamic(bw_task, &j, T);
  bwout_job o = {&j, dw};
  pool_run(bwout_task, &o);
}

#endif
