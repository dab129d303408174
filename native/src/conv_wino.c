/* Winograd convolutions on blocked activations (AVX-512): F(2x2, 3x3) and F(4x4, 3x3), for the
 * inference plan and, through layout conversions, for NCHW training convolutions (all three passes;
 * the weight gradient by the transposed algorithm, at the end of this file).
 *
 * A 3x3 stride-1 convolution computes each m x m output tile from an (m+2) x (m+2) input tile; in
 * the Winograd domain (Lavin & Gray 2015) that is (m+2)^2 products per channel pair instead of 9 m^2:
 *   Y = A^T [ sum_c (G g_c G^T) .* (B^T d_c B) ] A
 * The products summed over input channels are (m+2)^2 independent matrix products
 * (tiles x cin) x (cin x cout), one per position xi of the transform: 2.25x (m = 2) or 4x (m = 4)
 * fewer multiply-adds than the direct convolution, for two cheap transforms. Three passes over
 * chunks of tiles, either each pass split over the threads (shared chunks) or each chunk taken by one
 * thread through all three (private chunks, wino_private):
 *  1. input transform: V[xi][cin/16][tiles][16] = B^T d B, 16 channels of a tile per vector (read
 *     from the blocked input, whose zero border is the padding);
 *  2. per (xi, 32-channel panel): M[xi] = V[xi] x U[xi] with the pixel-row micro-kernel of
 *     conv_prow.c (a tile in the role of a pixel: 14 tiles x 32 channels per register tile), into
 *     M[xi][cout/16][tiles][16];
 *  3. output transform: Y = A^T m A, plus bias, the residual and relu, into the blocked output.
 * Weights U = G g G^T are packed once (CONV_LAYOUT_WINO2 / _WINO4: (m+2)^2 pixel-row packings of
 * cin x cout). Rounding, against a double-precision reference: F(2x2) about 1e-6 of the output's
 * largest magnitude (less than the direct convolution's long sums), F(4x4) (points 0, +-1, +-2) up
 * to about 1.4e-5 at 256 channels; wino_tile_for picks F(4x4) only where the weights are small (its
 * packing is 4x the plain weights, F(2x2)'s 16/9). */
#include "conv_internal.h"
#include "gemm.h"
#include "pool.h"
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define WMAX 36 /* transform positions of F(4x4): 6 x 6 */

int wino_tile(int layout) { return layout == CONV_LAYOUT_WINO2 ? 2 : layout == CONV_LAYOUT_WINO4 ? 4 : 0; }

/* Floats of a packing: (m+2)^2 pixel-row packings of the cin x cout products. */
long wino_packed_size(const conv_p *p, int m) { return (long)(m + 2) * (m + 2) * prow_packed_size(p->cout, p->cin, PR_NR); }

/* G of F(m x m, 3x3) (a = m + 2 rows), and L with L G = I (3 x a) for unpacking. */
static const double G2[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
static const double L2[3][4] = {{1, 0, 0, 0}, {0, 1, -1, 0}, {0, 0, 0, 1}};
static const double G4[6][3] = {{0.25, 0, 0}, {-1.0 / 6, -1.0 / 6, -1.0 / 6}, {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                {1.0 / 24, 1.0 / 12, 1.0 / 6}, {1.0 / 24, -1.0 / 12, 1.0 / 6}, {0, 0, 1}};
static const double L4[3][6] = {{4, 0, 0, 0, 0, 0}, {0, -3, 3, 0, 0, 0}, {0, 0, 0, 0, 0, 1}};
static double gm(int m, int i, int j) { return m == 2 ? G2[i][j] : G4[i][j]; }
static double lm(int m, int i, int j) { return m == 2 ? L2[i][j] : L4[i][j]; }

/* U = G g G^T per (co, c), into the (m+2)^2 packings. */
void wino_pack(const float *w, const conv_p *p, int m, float *dst) {
  const int C = p->cin, M = p->cout, a = m + 2;
  const long size = prow_packed_size(M, C, PR_NR);
  memset(dst, 0, sizeof(float) * a * a * size);
  for (int co = 0; co < M; co++)
    for (int c = 0; c < C; c++) {
      const float *g = w + ((long)co * C + c) * 9;
      double t[6][3];
      for (int i = 0; i < a; i++)
        for (int j = 0; j < 3; j++) t[i][j] = gm(m, i, 0) * g[j] + gm(m, i, 1) * g[3 + j] + gm(m, i, 2) * g[6 + j];
      const long at = ((long)(co / PR_NR) * C + c) * PR_NR + co % PR_NR;
      for (int i = 0; i < a; i++)
        for (int j = 0; j < a; j++)
          dst[(i * a + j) * size + at] = (float)(t[i][0] * gm(m, j, 0) + t[i][1] * gm(m, j, 1) + t[i][2] * gm(m, j, 2));
    }
}

/* The 3x3 weights back: g = L U L^T. */
void wino_unpack(const float *src, const conv_p *p, int m, float *w) {
  const int C = p->cin, M = p->cout, a = m + 2;
  const long size = prow_packed_size(M, C, PR_NR);
  for (int co = 0; co < M; co++)
    for (int c = 0; c < C; c++) {
      const long at = ((long)(co / PR_NR) * C + c) * PR_NR + co % PR_NR;
      for (int r = 0; r < 3; r++)
        for (int q = 0; q < 3; q++) {
          double s = 0;
          for (int i = 0; i < a; i++)
            for (int j = 0; j < a; j++) {
              const double l = lm(m, r, i) * lm(m, q, j);
              if (l != 0) s += l * (double)src[(i * a + j) * size + at];
            }
          w[(((long)co * C + c) * 3 + r) * 3 + q] = (float)s;
        }
    }
}

/* Whether a geometry can run here (besides AVX-512 and blocked input, the caller's): 3x3, stride 1,
 * dilation 1, padding 1 (the border), groups 1, whole 16-channel blocks in and out. Spatial sizes
 * do not matter (edge tiles are cut), so one packing serves every input size. */
int wino_ok(const conv_p *p) {
  return p->groups == 1 && p->kh == 3 && p->kw == 3 && p->sh == 1 && p->sw == 1 && p->dh == 1 && p->dw == 1 && p->ph == 1 &&
         p->pw == 1 && p->cin % 16 == 0 && p->cout % 16 == 0 && (long)p->cin * WMAX * 4096 < (1L << 31);
}

/* The tile size for a geometry wino_ok takes: 4 when both channel counts are <= 128 (ResNet-50's
 * first two stages; F(4x4) weights are 4x the plain ones, so larger layers would cost tens of MB),
 * else 2. RESNET_WINO=0 / 2 / 4: none / F(2x2) only / F(4x4) everywhere (measurements). */
static int wino_mode(void) {
  static int mode = -1;
  if (mode < 0) {
    const char *e = getenv("RESNET_WINO");
    mode = !e ? 1 : strcmp(e, "0") == 0 ? 0 : strcmp(e, "2") == 0 ? 2 : strcmp(e, "4") == 0 ? 4 : 1;
  }
  return mode;
}
int wino_tile_for(const conv_p *p) {
  const int mode = wino_mode();
  if (mode == 0 || !wino_ok(p)) return 0;
  if (mode != 1) return mode;
  return p->cin <= 128 && p->cout <= 128 ? 4 : 2;
}

/* The tile size for an NCHW convolution with plain weights (training and eager calls: the forward,
 * the backward-input as the forward of the flipped convolution, and the weight gradient), 0 for the
 * direct kernels: as wino_tile_for's geometries (whole 16-channel blocks in and out). F(4x4), whose
 * transformed weights are computed per call (the weights change every step) and do not stay in
 * memory; F(2x2) on maps of at most 2x2 (one tile covers them; the direct kernels skip the 5 of 9
 * taps that read padding there, so F(4x4)'s 6x6 window would gain nothing: ResNet-18's 256 channels
 * on 32x32 inputs, 1.8 -> 1.1 ms a pass; conv_dense.c takes such maps first, up to its size cap).
 * Rounding: F(4x4)'s transforms add and subtract neighbouring values, so a forward is within ~3e-6
 * of its output's scale of the exact sums (ResNet-20's 16 channels on 28x28, batch 128; the direct
 * kernels ~5e-7). The 16-channel forward stayed direct until session 20 because in session 10 F(4x4)
 * there took the 20-step trajectory of test/train_steps.test.ts past 1e-4 of PyTorch's float64 one
 * (a ReLU input within rounding of zero flipping: a matter of exact bits); since session 28 that
 * trajectory's batches keep every ReLU input 5e-5 from zero (scripts/golden/README.md). ResNet-20's 16 channels on 28x28, forward, caches flushed, calls alternating
 * with the pixels-in-lanes kernel: -16 to -26 % (three runs); backward-input (ResNet-20's 16
 * channels: -17 to -19 %) and weight gradient (-24 %) took it earlier. */
int wino_nchw_tile(const conv_p *p) {
  const int mode = wino_mode();
  if (mode == 0 || !wino_ok(p) || p->n < 1) return 0;
  return mode == 2 || (p->oh <= 2 && p->ow <= 2) ? 2 : 4;
}

#if defined(__x86_64__)
typedef struct {
  const conv_p *p;
  const float *x, *U, *bias, *residual;
  float *y, *V, *M;
  int *off;             /* off[c] = (c/16) * tpad * 16 + c % 16: channel c of a tile in V[xi] */
  int m, np;            /* tile size (2 or 4); transform positions (m+2)^2 */
  int th, tw, npanels;  /* tiles per column and row of a map; 32-channel panels of cout */
  int relu;
  int y_nchw;           /* y (and residual) NCHW: the output transform transposes its tiles into it */
  int x_nchw;           /* x NCHW: the input transform reads its windows from it (F(4x4) only) */
  const float *pre_s, *pre_t; /* x_nchw: the input read as relu(x * pre_s[c] + pre_t[c]) (NULL: x as it is) */
  long t0, nt, tpad;    /* the chunk: first (batch-wide) tile, tiles, tiles padded to whole 7-tile runs */
  long usize;           /* floats per position in U */
  atomic_long next;
  pool_ranges chunks;   /* private chunks (wino_private_task), by ranges */
} wino_job;

/* A tile's image and tile row and column. */
typedef struct {
  long b;
  int ty, tx;
} tile_pos;
/* The chunk's tile t (t0 + t of the batch). */
static inline tile_pos tile_pos_of(const wino_job *j, long t) {
  const long g = j->t0 + t, per = (long)j->th * j->tw, r = g % per;
  const tile_pos q = {g / per, (int)(r / j->tw), (int)(r % j->tw)};
  return q;
}
static inline void tile_pos_inc(const wino_job *j, tile_pos *q) {
  if (++q->tx == j->tw) {
    q->tx = 0;
    if (++q->ty == j->th) {
      q->ty = 0;
      q->b++;
    }
  }
}
/* The per-tile passes' walk over items it = c * stride + t (stride: tiles per channel block, j->tpad
 * or j->nt), with the tile's position and that of the tile PF_TILES ahead kept by increments: the
 * divisions that find them had been a fifth of the input transform's time (perf: ResNet-20's
 * 16 channels on 28x28). */
typedef struct {
  long c, t, stride;
  tile_pos at, pf;
} tile_walk;
#define PF_TILES 4
static inline tile_walk tile_walk_at(const wino_job *j, long it, long stride) {
  tile_walk w;
  w.stride = stride;
  w.c = it / stride;
  w.t = it % stride;
  w.at = tile_pos_of(j, w.t);
  w.pf = tile_pos_of(j, w.t + PF_TILES);
  return w;
}
static inline void tile_walk_next(const wino_job *j, tile_walk *w) {
  if (++w->t == w->stride) {
    w->t = 0;
    w->c++;
    w->at = tile_pos_of(j, 0);
    w->pf = tile_pos_of(j, PF_TILES);
    return;
  }
  tile_pos_inc(j, &w->at);
  tile_pos_inc(j, &w->pf);
}

/* The distance between the transform positions' planes of V, M and Z, for planes of n floats: n rounded
 * up to whole lines and made an odd number of lines, so that a tile's 36 stores (or loads) one plane
 * apart fall into 36 different L1 sets (a multiple of 4 KB puts them all into one). */
static inline long plane_stride(long n) {
  const long l = (n + 15) / 16;
  return 16 * (l % 2 ? l : l + 1);
}

/* PF_TILES: tiles ahead whose NCHW lines the transforms prefetch: each tile reads or writes a few
 * rows of 16 channel planes, more streams than the hardware prefetcher follows. ResNet-20's 32
 * channels on 14x14 at batch 128, caches flushed before each call as in a training step (alternating
 * calls): forward and backward-input 13-16 % faster, the weight gradient 5-8 %; with warm caches
 * 2-9 %. */

/* Prefetches `rows` rows (row stride ld) of 16 channel planes (ch floats apart) from the first pixel
 * of the walk's tile PF_TILES ahead at (b, oy + dy, ox + dx) of an NCHW tensor of c channels; for
 * writing when `write`. */
/* (always_inline: GCC takes a function that only prefetches for one without effects and drops its
 * calls; inlined early, the prefetches stay in the caller) */
__attribute__((always_inline)) static inline void prefetch_tile(const wino_job *j, const float *base, const tile_walk *w, int c, long ch,
                                                                int rows, long ld, int dy, int dx, int write) {
  if (w->t + PF_TILES >= j->nt) return;
  const long b = w->pf.b;
  const int oy = j->m * w->pf.ty, ox = j->m * w->pf.tx;
  const char *s = (const char *)(base + b * c * ch + (long)(oy + dy) * ld + ox + dx);
  for (int l = 0; l < 16; l++, s += ch * (long)sizeof(float))
    for (int r = 0; r < rows; r++) {
      if (write) __builtin_prefetch(s + r * ld * (long)sizeof(float), 1, 3);
      else __builtin_prefetch(s + r * ld * (long)sizeof(float), 0, 3);
    }
}

/* The transform and conversion passes as ranges of items, [lo, hi) of [0, total): run through
 * pool_run, whose parts the threads take as they come (a slowed core takes fewer). */
typedef void (*range_fn)(void *ctx, long lo, long hi);
typedef struct {
  range_fn fn;
  void *ctx;
  long total;
} range_job;
static void range_task(void *c, int part, int parts) {
  range_job *r = c;
  long lo, hi;
  pool_split(r->total, part, parts, 1, &lo, &hi);
  if (hi > lo) r->fn(r->ctx, lo, hi);
}
static void run_range(range_fn fn, void *ctx, long total) {
  range_job r = {fn, ctx, total};
  pool_run(range_task, &r);
}

/* d (a vectors, `s` apart) -> B^T d, for a = 4 (F(2x2)) or 6 (F(4x4)). */
#define BT(m, d, r)                                                                                                  \
  do {                                                                                                               \
    if ((m) == 2) {                                                                                                  \
      r[0] = _mm512_sub_ps(d[0], d[2]);                                                                              \
      r[1] = _mm512_add_ps(d[1], d[2]);                                                                              \
      r[2] = _mm512_sub_ps(d[2], d[1]);                                                                              \
      r[3] = _mm512_sub_ps(d[1], d[3]);                                                                              \
    } else {                                                                                                         \
      WINO4_BT(512, d, r);                                                                                           \
    }                                                                                                                \
  } while (0)

/* Whether the NCHW path's input transform reads its windows from NCHW x itself (else x is converted
 * to blocked first): F(4x4) on maps of at least 7x7. F(2x2)'s windows overlap twice as much, and on
 * smaller maps most of a window lies outside the map: converting once is cheaper there (ResNet-18's
 * 128 channels on 4x4, weight gradient: 0.81 against 0.86-0.90 ms direct; ResNet-20's 32 channels
 * on 14x14: forward 1.81 -> 1.64 ms direct). */
static int wino_x_direct(const conv_p *p, int m) { return m == 4 && p->h >= 7 && p->w >= 7; }
int wino_reads_pre(const conv_p *p, int m) { return wino_x_direct(p, m); }

/* From this map width the input transform reading NCHW x makes a blocked copy of each image's 16
 * channels, a row at a time as the tiles reach it (one 16 x 16 transpose per 16 pixels of a row, in
 * L1), and reads its windows from the copy with plain loads, instead of loading every window's rows
 * by masked loads and transposing three times per tile. Alternating calls, caches flushed:
 * ResNet-20's 16 channels on 28x28, weight gradient -7 to -12 %; 64 channels on 32x32 -5 to -10 %
 * in all three passes; but 32 on 14x14 within 3 % either way, 64 on 7x7 (9 rows copied for 4 tiles)
 * 4-7 % slower. */
#define WINO_COPY_MIN_W 28

/* The NCHW paths' tiles in registers: rows [r0, r1) of an NCHW map (row stride ld) starting at base,
 * row r merged into lanes [s*r, s*r + 16) of v under the column mask cm << s*r. Each access is shifted
 * so that its lanes land on the row; masked-off lanes are never read or written (so the shifted
 * addresses may lie outside the buffer). */
__attribute__((target("avx512f"))) static inline __m512 tile_rows_load(__m512 v, const float *base, int r0, int r1, int s, long ld,
                                                                      __mmask16 cm) {
  for (int r = r0; r < r1; r++) v = _mm512_mask_loadu_ps(v, (__mmask16)(cm << (s * r)), base + r * ld - s * r);
  return v;
}
__attribute__((target("avx512f"))) static inline void tile_rows_store(float *base, __m512 v, int rows, int s, long ld, __mmask16 cm) {
  for (int r = 0; r < rows; r++) _mm512_mask_storeu_ps(base + r * ld - s * r, (__mmask16)(cm << (s * r)), v);
}

/* m (a vectors) -> A^T m (m outputs). */
#define AT(m, v, o)                                                                                                  \
  do {                                                                                                               \
    if ((m) == 2) {                                                                                                  \
      o[0] = _mm512_add_ps(_mm512_add_ps(v[0], v[1]), v[2]);                                                         \
      o[1] = _mm512_sub_ps(_mm512_sub_ps(v[1], v[2]), v[3]);                                                         \
    } else {                                                                                                         \
      WINO4_AT(512, v, o);                                                                                           \
    }                                                                                                                \
  } while (0)

/* The input prologue of conv2d_forward_pre: relu(v * s + t) on the lanes of mk (multiply, then add,
 * then max(0, .), as the batch norm's own pass: the same bits; NaN stays), zero on the others. */
__attribute__((target("avx512f"), always_inline)) static inline __m512 pre_apply(__m512 v, __mmask16 mk, float s, float t) {
  return _mm512_maskz_max_ps(mk, _mm512_setzero_ps(), _mm512_add_ps(_mm512_mul_ps(v, _mm512_set1_ps(s)), _mm512_set1_ps(t)));
}

/* Row y (-1 .. h: the border rows are zeros) of 16 NCHW channel planes (src, h x w each) into the
 * blocked plane [h+2][w+2][16] with a zero border: 16 channel rows transposed in registers to
 * 16-channel pixels; with ps (and pt), the 16 channels' prologue applied (pre_apply). */
__attribute__((target("avx512f"))) static void blk_row(float *plane, const float *src, int h, int w, int y, const float *ps,
                                                       const float *pt) {
  const int wp = w + 2;
  const __m512 z = _mm512_setzero_ps();
  float *brow = plane + (long)(y + 1) * wp * 16;
  if (y < 0 || y >= h) {
    for (int x = 0; x < wp; x++) _mm512_storeu_ps(brow + x * 16, z);
    return;
  }
  _mm512_storeu_ps(brow, z);
  _mm512_storeu_ps(brow + (long)(w + 1) * 16, z);
  for (int x0 = 0; x0 < w; x0 += 16) {
    const int nx = w - x0 < 16 ? w - x0 : 16;
    const __mmask16 mk = (__mmask16)((1u << nx) - 1);
    __m512 r[16];
    for (int l = 0; l < 16; l++) r[l] = _mm512_maskz_loadu_ps(mk, src + (long)l * h * w + (long)y * w + x0);
    if (ps)
      for (int l = 0; l < 16; l++) r[l] = pre_apply(r[l], mk, ps[l], pt[l]);
    transpose16(r);
    /* (unrolled and conditional: as a loop over nx, GCC copies r to the row with rep movsq, from the
     * stack after storing it there: that copy had been a third of this function's time) */
    _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) if (i < nx) _mm512_storeu_ps(brow + (long)(x0 + 1 + i) * 16, r[i]);
  }
}

/* A blocked copy (blk_row's plane) of one image's 16-channel block of an NCHW tensor of c channels of
 * h x w, made a row at a time as the tiles reach it: the transforms read their windows from it with
 * plain loads (WINO_COPY_MIN_W). Per thread and call. */
typedef struct {
  float *plane;
  char *have; /* have[y + 1]: map row y (-1 .. h) is in the plane */
  long b, blk; /* the image and channel block in it */
  int c, h, w;
  const float *ps, *pt; /* the prologue (wino_job.pre_s, pre_t), or NULL */
} row_copy;

static void row_copy_init(row_copy *rc, int c, int h, int w, const float *ps, const float *pt) {
  static _Thread_local buf_t plane_buf, have_buf;
  rc->plane = grow(&plane_buf, (size_t)(h + 2) * (w + 2) * 16);
  rc->have = (char *)grow(&have_buf, (size_t)(h + 2) / sizeof(float) + 1);
  rc->b = rc->blk = -1;
  rc->c = c;
  rc->h = h;
  rc->w = w;
  rc->ps = ps;
  rc->pt = pt;
}

/* The plane of image b, block blk of src with map rows [y0, y1) (clipped to -1 .. h) in it. */
static const float *row_copy_rows(row_copy *rc, const float *src, long b, long blk, int y0, int y1) {
  if (b != rc->b || blk != rc->blk) {
    rc->b = b;
    rc->blk = blk;
    memset(rc->have, 0, (size_t)rc->h + 2);
  }
  for (int y = y0 < -1 ? -1 : y0; y < y1 && y <= rc->h; y++)
    if (!rc->have[y + 1]) {
      blk_row(rc->plane, src + (b * rc->c + blk * 16) * (long)rc->h * rc->w, rc->h, rc->w, y, rc->ps ? rc->ps + blk * 16 : NULL,
              rc->pt ? rc->pt + blk * 16 : NULL);
      rc->have[y + 1] = 1;
    }
  return rc->plane;
}

/* F(4x4)'s input transform from NCHW x on maps at most 16 wide, a group of tiles at a time: the
 * tiles of one tile row (maps of 9-16 columns), or of two (at most 8 columns, a row of each in the
 * two halves of a vector). Per channel, the window rows' column transform (B^T d) runs on whole map
 * rows, every tile of the group at once (6 loads per channel and group instead of 6 per tile); the
 * results go through L1 into one register transpose per transform row and group (16 channels of
 * every column), where the per-tile path needs three per tile; then the row transform per tile. The
 * operations on each value are the per-tile path's, in the same order: the same bits. */
#define WINO_ROWS_MAX_W 16
#define WINO_OUT_ROWS_MAX_W 32 /* the output transform's groups: up to two vectors a row */
static int wino_rows_off = -1; /* RESNET_WINO_ROWS=0: the per-tile path (measurements) */
/* The first item at or after the group's, and the group: image b, first tile row ty0, tile rows
 * (S or fewer at the map's bottom), its first tile (may precede the range), its tiles [t, tend) within
 * the items [lo, hi) of channel block c (items c * stride + tile), and the next group's image and
 * first tile row (nb = n: none). */
typedef struct {
  long c, t, tend, b, ty0, nb, nty, first;
  int rows;
} wino_group;
static inline wino_group group_at(const wino_job *j, long it, long stride, long hi, int S) {
  wino_group g;
  const long per = (long)j->th * j->tw;
  g.c = it / stride;
  g.t = it % stride;
  const long gt = j->t0 + g.t;
  g.b = gt / per;
  g.ty0 = (gt % per) / j->tw / S * S;
  g.rows = j->th - g.ty0 < S ? (int)(j->th - g.ty0) : S;
  g.tend = g.b * per + (g.ty0 + g.rows) * j->tw - j->t0;
  if (g.tend > j->nt) g.tend = j->nt;
  if (g.c * stride + g.tend > hi) g.tend = hi - g.c * stride;
  g.nb = g.ty0 + S < j->th ? g.b : g.b + 1;
  g.nty = g.nb == g.b ? g.ty0 + S : 0;
  g.first = g.b * per + g.ty0 * j->tw - j->t0;
  return g;
}
/* Tile k of a group of tile rows of TW tiles (row *s, column *tx), or -1 where it is not in the map or
 * not in the group's range. */
static inline long group_tile(const wino_job *j, const wino_group *g, int k, int TW, int *s, int *tx) {
  *s = k / TW;
  *tx = k % TW;
  const long tt = g->first + (long)*s * j->tw + *tx;
  return *tx >= j->tw || *s >= g->rows || tt < g->t || tt >= g->tend ? -1 : tt;
}

/* Prefetches rows [r0, r1) (w floats each) of channel plane l of those from base (ch floats apart). */
__attribute__((always_inline)) static inline void prefetch_rows(const float *base, long ch, int l, int r0, int r1, int w, int write) {
  const char *s0 = (const char *)(base + l * ch + (long)r0 * w);
  const long bytes = (long)(r1 - r0) * w * (long)sizeof(float);
  for (long o = 0; o < bytes + 63; o += 64) {
    const char *a = s0 + (o < bytes ? o : bytes - 1);
    if (write) __builtin_prefetch(a, 1, 3);
    else __builtin_prefetch(a, 0, 3);
  }
}

__attribute__((target("avx512f"), always_inline)) static inline void wino_in_rows_l(wino_job *j, long lo, long hi, const int L) {
  const conv_p *p = j->p;
  const int S = 16 / L, w = p->w, h = p->h;
  const long hw = (long)h * w, vx = plane_stride((long)p->cin * j->tpad);
  const __m512 z = _mm512_setzero_ps();
  const __mmask16 cm = (__mmask16)((1u << w) - 1);
  float cbuf[6][16][16] __attribute__((aligned(64))); /* [row of B^T d][channel][lane]: a group's column transforms */
  long it = lo;
  while (it < hi) {
    const wino_group g = group_at(j, it, j->tpad, hi, S);
    float *vc = j->V + g.c * j->tpad * 16;
    if (g.t >= j->nt) { /* padding tiles of the last run: zeros */
      for (int xi = 0; xi < 36; xi++) _mm512_storeu_ps(vc + g.t * 16 + xi * vx, z);
      it++;
      continue;
    }
    const float *x0 = j->x + (g.b * p->cin + g.c * 16) * hw;
    /* the next group's rows, prefetched a channel at a time below (a burst of them stalls on the fill buffers) */
    const float *nx = j->x + (g.nb * p->cin + g.c * 16) * hw;
    const int pr0 = 4 * (int)g.nty - 1 < 0 ? 0 : 4 * (int)g.nty - 1, pr1 = 4 * ((int)g.nty + S - 1) + 5 < h ? 4 * ((int)g.nty + S - 1) + 5 : h;
    for (int l = 0; l < 16; l++) { /* columns: B^T d, on whole rows */
      const float *xl = x0 + l * hw;
      if (g.nb < p->n) prefetch_rows(nx, hw, l, pr0, pr1, w, 0);
      __m512 d[6], r[6];
      _Pragma("GCC unroll 6") for (int i = 0; i < 6; i++) {
        const int y0 = 4 * (int)g.ty0 - 1 + i;
        const int in0 = y0 >= 0 && y0 < h, in1 = S == 2 && g.rows == 2 && y0 + 4 < h;
        __m512 v = in0 ? _mm512_maskz_loadu_ps(cm, xl + (long)y0 * w) : z;
        if (in1) v = _mm512_mask_loadu_ps(v, (__mmask16)(cm << L), xl + (long)(y0 + 4) * w - L);
        if (j->pre_s) v = pre_apply(v, (__mmask16)((in0 ? cm : 0) | (in1 ? cm << L : 0)), j->pre_s[g.c * 16 + l], j->pre_t[g.c * 16 + l]);
        d[i] = v;
      }
      BT(4, d, r);
      for (int i = 0; i < 6; i++) _mm512_store_ps(cbuf[i][l], r[i]);
    }
    for (int i = 0; i < 6; i++) { /* rows: (B^T d) B, per tile */
      __m512 col[16];
      for (int l = 0; l < 16; l++) col[l] = _mm512_load_ps(cbuf[i][l]);
      transpose16(col); /* col[s*L + x]: column x of the group's tile row s, 16 channels (zero past the map) */
      _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) { /* tile (s, tx) of the group, in order */
        int s, tx;
        const long tt = group_tile(j, &g, k, L / 4, &s, &tx); /* L / 4 tiles per tile row */
        if (tt < 0) continue;
        __m512 d[6], o[6];
        _Pragma("GCC unroll 6") for (int q = 0; q < 6; q++) {
          const int x = 4 * tx - 1 + q; /* a column of the tile row: -1 and L up are outside the map */
          d[q] = x >= 0 && x < L ? col[s * L + x] : z;
        }
        BT(4, d, o);
        for (int q = 0; q < 6; q++) _mm512_storeu_ps(vc + tt * 16 + (i * 6 + q) * vx, o[q]);
      }
    }
    it = g.c * j->tpad + g.tend;
  }
}
__attribute__((target("avx512f"))) static void wino_in_rows(wino_job *j, long lo, long hi) {
  if (j->p->w <= 8) wino_in_rows_l(j, lo, hi, 8);
  else wino_in_rows_l(j, lo, hi, 16);
}

/* Pass 1, items (channel block, tile) split evenly: V = B^T d B. Input rows and columns past the
 * border (the last tile of a map whose size is not a multiple of m) read as zero; they only feed
 * outputs that are not written. */
__attribute__((target("avx512f"))) static inline void wino_in(wino_job *j, long lo, long hi, const int m) {
  const conv_p *p = j->p;
  const int a = m + 2, np = a * a, cb = p->cin / 16, hp = p->h + 2, wp = p->w + 2;
  const long plane = (long)hp * wp * 16, img = cb * plane, vx = plane_stride((long)p->cin * j->tpad);
  const __m512 z = _mm512_setzero_ps();
  const int copy = j->x_nchw && p->w >= WINO_COPY_MIN_W;
  if (j->x_nchw && !copy && m == 4 && p->w <= WINO_ROWS_MAX_W && !env_zero("RESNET_WINO_ROWS", &wino_rows_off)) {
    wino_in_rows(j, lo, hi);
    return;
  }
  row_copy rc;
  if (copy) row_copy_init(&rc, p->cin, p->h, p->w, j->pre_s, j->pre_t);
  tile_walk wk = tile_walk_at(j, lo, j->tpad);
  for (long it = lo; it < hi; it++, tile_walk_next(j, &wk)) {
    const long c = wk.c, t = wk.t;
    float *v = j->V + c * j->tpad * 16 + t * 16;
    if (t >= j->nt) { /* padding tiles of the last run: zeros */
      for (int xi = 0; xi < np; xi++) _mm512_storeu_ps(v + xi * vx, z);
      continue;
    }
    const long b = wk.at.b;
    const int oy = m * wk.at.ty, ox = m * wk.at.tx;
    __m512 e[6][6];
    if (j->x_nchw && !copy) {
      /* the 6x6 window read from NCHW x: per channel, window rows 2g and 2g+1 by masked loads
       * shifted onto lanes [0, 6) and [8, 14) of vector g (lanes outside the map stay zero and are
       * never read), then three register transposes give its pixels, 16 channels each */
      const int iy0 = oy - 1, ix0 = ox - 1;
      const int qlo = ix0 < 0 ? -ix0 : 0, qhi = p->w - ix0 < a ? p->w - ix0 : a;
      const int ilo = iy0 < 0 ? -iy0 : 0, ihi = p->h - iy0 < a ? p->h - iy0 : a; /* window rows in the map */
      const __mmask16 cm = (__mmask16)(((1u << qhi) - 1) & ~((1u << qlo) - 1));
      const long hw = (long)p->h * p->w;
      const float *x0 = j->x + (b * p->cin + c * 16) * hw + (long)iy0 * p->w + ix0;
      /* (+4: the window's middle, within its 6 columns' line or the next) */
      prefetch_tile(j, j->x + c * 16 * hw, &wk, p->cin, hw, a, p->w, -1, 3, 0);
      __m512 g[3][16];
      for (int k = 0; k < 3; k++) {
        const int r0 = ilo - 2 * k < 0 ? 0 : ilo - 2 * k > 2 ? 2 : ilo - 2 * k;
        const int r1 = ihi - 2 * k < 0 ? 0 : ihi - 2 * k > 2 ? 2 : ihi - 2 * k;
        for (int l = 0; l < 16; l++) g[k][l] = tile_rows_load(z, x0 + l * hw + 2L * k * p->w, r0, r1, 8, p->w, cm);
        if (j->pre_s) {
          __mmask16 lm = 0; /* the lanes loaded */
          for (int r = r0; r < r1; r++) lm |= (__mmask16)(cm << (8 * r));
          for (int l = 0; l < 16; l++) g[k][l] = pre_apply(g[k][l], lm, j->pre_s[c * 16 + l], j->pre_t[c * 16 + l]);
        }
      }
      for (int k = 0; k < 3; k++) transpose16(g[k]);
      for (int q = 0; q < a; q++) { /* columns: B^T d */
        __m512 d[6], r[6];
        for (int i = 0; i < a; i++) d[i] = g[i / 2][8 * (i % 2) + q];
        BT(m, d, r);
        for (int i = 0; i < a; i++) e[i][q] = r[i];
      }
    } else {
      /* input rows oy-1 .. oy+m are buffer rows oy .. oy+m+1 (the border is row 0): of blocked x, or of
       * the blocked copy of NCHW x's image b, block c */
      const float *s = copy ? row_copy_rows(&rc, j->x, b, c, oy - 1, oy - 1 + a) + ((long)oy * wp + ox) * 16
                            : j->x + b * img + c * plane + ((long)oy * wp + ox) * 16;
      const int full = oy + a <= hp && ox + a <= wp;
      for (int q = 0; q < a; q++) { /* columns: B^T d */
        __m512 d[6], r[6];
        for (int i = 0; i < a; i++) d[i] = full || (oy + i < hp && ox + q < wp) ? _mm512_loadu_ps(s + ((long)i * wp + q) * 16) : z;
        BT(m, d, r);
        for (int i = 0; i < a; i++) e[i][q] = r[i];
      }
    }
    for (int i = 0; i < a; i++) { /* rows: (B^T d) B */
      __m512 r[6];
      BT(m, e[i], r);
      for (int q = 0; q < a; q++) _mm512_storeu_ps(v + (i * a + q) * vx, r[q]);
    }
  }
}
static void wino_in_range(void *ctx, long lo, long hi) {
  wino_job *j = ctx;
  if (j->m == 2) wino_in(j, lo, hi, 2);
  else wino_in(j, lo, hi, 4);
}
static void wino_in_pass(wino_job *j) { run_range(wino_in_range, j, (long)(j->p->cin / 16) * j->tpad); }

/* Pass 2 for item it = (position, panel): M[xi] = V[xi] U[xi] over all the chunk's tiles, two 7-tile
 * runs per register tile (a panel of at most 16 channels: up to four runs x 16 channels,
 * prow_block_gemm16; ResNet-20's 16 channels on 28x28 at batch 128, backward-input -16 % in three
 * runs of alternating calls, hot and with caches flushed). */
static int prow16_off = -1; /* RESNET_PROW16=0: the 32-column tile there too (measurements) */
static void wino_gemm_item(const wino_job *j, long it) {
  const conv_p *p = j->p;
  const long vx = plane_stride((long)p->cin * j->tpad), mx = plane_stride((long)p->cout * j->tpad), chblk = j->tpad * 16,
             runs = j->tpad / PR_RUN;
  const int xi = (int)(it / j->npanels), panel = (int)(it % j->npanels);
  const float *Bp = j->U + xi * j->usize + (long)panel * PR_NR * p->cin;
  const int two = p->cout - panel * PR_NR > 16;
  if (!two && !env_zero("RESNET_PROW16", &prow16_off)) {
    for (long r0 = 0; r0 < runs; r0 += 4) {
      const int R = runs - r0 < 4 ? (int)(runs - r0) : 4;
      const float *a[4];
      float *yr[4];
      for (int r = 0; r < R; r++) {
        a[r] = j->V + xi * vx + (r0 + r) * PR_RUN * 16;
        yr[r] = j->M + xi * mx + (long)panel * 2 * chblk + (r0 + r) * PR_RUN * 16;
      }
      prow_block_gemm16(R, p->cin, Bp, a, j->off, yr);
    }
    return;
  }
  for (long r0 = 0; r0 < runs; r0 += 2) {
    const int R = runs - r0 < 2 ? 1 : 2;
    const float *a[2];
    float *yr[2];
    for (int r = 0; r < R; r++) {
      a[r] = j->V + xi * vx + (r0 + r) * PR_RUN * 16;
      yr[r] = j->M + xi * mx + (long)panel * 2 * chblk + (r0 + r) * PR_RUN * 16;
    }
    prow_block_gemm(R, p->cin, Bp, a, j->off, yr, chblk, two);
  }
}

/* Pass 2, items (position, panel) handed out dynamically. */
static void wino_gemm_task(void *ctx, int tid, int n) {
  (void)tid; (void)n;
  wino_job *j = ctx;
  for (;;) {
    const long it = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
    if (it >= (long)j->np * j->npanels) break;
    wino_gemm_item(j, it);
  }
}

/* Pass 3, items (channel block, tile) split evenly: Y = A^T m A, then bias, residual, relu; outputs
 * past the map's edge are not written. */
__attribute__((target("avx512f"))) static inline void wino_out(wino_job *j, long lo, long hi, const int m) {
  const conv_p *p = j->p;
  const int a = m + 2, kb = p->cout / 16, wp = p->ow + 2;
  const long plane = (long)(p->oh + 2) * wp * 16, img = kb * plane, mx = plane_stride((long)p->cout * j->tpad);
  const __m512 z = _mm512_setzero_ps();
  tile_walk wk = tile_walk_at(j, lo, j->nt);
  for (long it = lo; it < hi; it++, tile_walk_next(j, &wk)) {
    const long c = wk.c, t = wk.t;
    const float *mm = j->M + c * j->tpad * 16 + t * 16;
    __m512 e[4][6];
    for (int q = 0; q < a; q++) { /* columns: A^T m */
      __m512 v[6], o[4];
      for (int i = 0; i < a; i++) v[i] = _mm512_loadu_ps(mm + (i * a + q) * mx);
      AT(m, v, o);
      for (int i = 0; i < m; i++) e[i][q] = o[i];
    }
    const long b = wk.at.b;
    const int oy = m * wk.at.ty, ox = m * wk.at.tx;
    const __m512 vb = j->bias ? _mm512_loadu_ps(j->bias + c * 16) : z;
    if (j->y_nchw) {
      /* the tile's m x m pixels (16 channels each) transposed to 16 channels of m x m pixels, row r in
       * lanes [m*r, m*r + m), stored (residual read) a row per masked access */
      __m512 px[16];
      for (int r = 0; r < m; r++) {
        __m512 out[4];
        AT(m, e[r], out);
        for (int q = 0; q < m; q++) px[r * m + q] = _mm512_add_ps(out[q], vb);
      }
      for (int i = m * m; i < 16; i++) px[i] = z;
      transpose16(px);
      const int rows = p->oh - oy < m ? p->oh - oy : m, cols = p->ow - ox < m ? p->ow - ox : m;
      const __mmask16 colmask = (__mmask16)((1u << cols) - 1);
      const long ch0 = (b * p->cout + c * 16) * (long)p->oh * p->ow + (long)oy * p->ow + ox;
      prefetch_tile(j, j->y + c * 16 * (long)p->oh * p->ow, &wk, p->cout, (long)p->oh * p->ow, m, p->ow, 0, 0, 1);
      if (j->residual) prefetch_tile(j, j->residual + c * 16 * (long)p->oh * p->ow, &wk, p->cout, (long)p->oh * p->ow, m, p->ow, 0, 0, 0);
      for (int l = 0; l < 16; l++) {
        const long at = ch0 + (long)l * p->oh * p->ow;
        __m512 v = px[l];
        if (j->residual) v = _mm512_add_ps(v, tile_rows_load(z, j->residual + at, 0, rows, m, p->ow, colmask));
        if (j->relu) v = _mm512_max_ps(z, v); /* NaN stays NaN */
        tile_rows_store(j->y + at, v, rows, m, p->ow, colmask);
      }
      continue;
    }
    const long o = b * img + c * plane + ((long)(oy + 1) * wp + ox + 1) * 16;
    for (int r = 0; r < m && oy + r < p->oh; r++) { /* rows: (A^T m) A */
      __m512 out[4];
      AT(m, e[r], out);
      for (int q = 0; q < m && ox + q < p->ow; q++) {
        const long at = o + ((long)r * wp + q) * 16;
        __m512 v = _mm512_add_ps(out[q], vb);
        if (j->residual) v = _mm512_add_ps(v, _mm512_loadu_ps(j->residual + at));
        if (j->relu) v = _mm512_max_ps(z, v); /* NaN stays NaN */
        _mm512_storeu_ps(j->y + at, v);
      }
    }
  }
}
/* F(4x4)'s output transform into NCHW y on maps at most 32 wide, a group of tiles at a time (a tile
 * row, or two on maps at most 8 wide, as the input transform's): each tile's 4x4 pixels of 16 channels
 * go through L1, then per output row one register transpose per 16 columns (H of them) gives every
 * channel's row (of both tile rows, in the vector's halves, where there are two), stored by one masked
 * access per channel, tile row and 16 columns, where the per-tile path stores each tile's rows one by
 * one (4 per channel and tile). Each value's operations are the per-tile path's, in the same order:
 * the same bits. */
__attribute__((target("avx512f"), always_inline)) static inline void wino_out_rows_l(wino_job *j, long lo, long hi, const int L,
                                                                                    const int H) {
  const conv_p *p = j->p;
  const int S = 16 / L, TW = L * H / 4, ow = p->ow, oh = p->oh; /* TW: tiles per tile row of a group */
  const long ohw = (long)oh * ow, mx = plane_stride((long)p->cout * j->tpad);
  const __m512 z = _mm512_setzero_ps();
  float obuf[4][32][16] __attribute__((aligned(64))); /* [tile pixel row][group column][channel] */
  memset(obuf, 0, sizeof obuf);
  long it = lo;
  while (it < hi) {
    const wino_group g = group_at(j, it, j->nt, hi, S);
    const __m512 vb = j->bias ? _mm512_loadu_ps(j->bias + g.c * 16) : z;
    unsigned keep = 0; /* group columns of the tiles in [t, tend), within the map */
    _Pragma("GCC unroll 8") for (int k = 0; k < S * TW; k++) { /* tile (s, tx) of the group, in order */
      int s, tx;
      const long tt = group_tile(j, &g, k, TW, &s, &tx);
      if (tt < 0) continue;
      const float *mm = j->M + g.c * j->tpad * 16 + tt * 16;
      __m512 e[4][6];
      for (int q = 0; q < 6; q++) { /* columns: A^T m */
        __m512 v[6], o[4];
        for (int i = 0; i < 6; i++) v[i] = _mm512_loadu_ps(mm + (i * 6 + q) * mx);
        AT(4, v, o);
        for (int i = 0; i < 4; i++) e[i][q] = o[i];
      }
      for (int r4 = 0; r4 < 4; r4++) { /* rows: (A^T m) A */
        __m512 out[4];
        AT(4, e[r4], out);
        for (int q = 0; q < 4; q++) _mm512_store_ps(obuf[r4][s * L + 4 * tx + q], _mm512_add_ps(out[q], vb));
      }
      const int cols = ow - 4 * tx < 4 ? ow - 4 * tx : 4;
      keep |= ((1u << cols) - 1) << (s * L + 4 * tx);
    }
    const long y0 = (g.b * p->cout + g.c * 16) * ohw, ny = (g.nb * p->cout + g.c * 16) * ohw;
    const int pr0 = 4 * (int)g.nty, pr1 = 4 * ((int)g.nty + S) < oh ? 4 * ((int)g.nty + S) : oh;
    for (int r4 = 0; r4 < 4; r4++) {
      for (int l = r4 * 4; l < r4 * 4 + 4 && g.nb < p->n; l++) { /* the next group's rows, spread out */
        prefetch_rows(j->y + ny, ohw, l, pr0, pr1, ow, 1);
        if (j->residual) prefetch_rows(j->residual + ny, ohw, l, pr0, pr1, ow, 0);
      }
      for (int h = 0; h < H; h++) { /* 16 group columns at a time */
        __m512 px[16];
        for (int k = 0; k < 16; k++) px[k] = _mm512_load_ps(obuf[r4][16 * h + k]);
        transpose16(px); /* px[l]: channel l's output row r4, group columns 16h + lane */
        for (int s = 0; s < S; s++) {
          const int oy = 4 * ((int)g.ty0 + s) + r4;
          /* lanes of tile row s (S = 2: a vector half) among this half's columns */
          const __mmask16 mk = (__mmask16)((keep >> (16 * h)) & (((1u << L) - 1) << (s * L)));
          if (s >= g.rows || oy >= oh || !mk) continue;
          for (int l = 0; l < 16; l++) {
            const long at = y0 + l * ohw + (long)oy * ow - s * L + 16 * h;
            __m512 v = px[l];
            if (j->residual) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk, j->residual + at));
            if (j->relu) v = _mm512_max_ps(z, v); /* NaN stays NaN */
            _mm512_mask_storeu_ps(j->y + at, mk, v);
          }
        }
      }
    }
    it = g.c * j->nt + g.tend;
  }
}
__attribute__((target("avx512f"))) static void wino_out_rows(wino_job *j, long lo, long hi) {
  if (j->p->ow <= 8) wino_out_rows_l(j, lo, hi, 8, 1);
  else if (j->p->ow <= 16) wino_out_rows_l(j, lo, hi, 16, 1);
  else wino_out_rows_l(j, lo, hi, 16, 2);
}

static void wino_out_range(void *ctx, long lo, long hi) {
  wino_job *j = ctx;
  if (j->m == 4 && j->y_nchw && j->p->ow <= WINO_OUT_ROWS_MAX_W && !env_zero("RESNET_WINO_ROWS", &wino_rows_off)) wino_out_rows(j, lo, hi);
  else if (j->m == 2) wino_out(j, lo, hi, 2);
  else wino_out(j, lo, hi, 4);
}

/* Tiles per chunk: V and M of a chunk (positions x tiles x (cin + cout) floats) within about 2 MB,
 * the two cores' L2 (measured against 1, 4 and 8 MB on ResNet-50's layers: the same at batch 1, at
 * batch 8 64 channels on 56x56 4.5 -> 3.9 ms with 2 MB against 8); whole 14-tile register tiles. */
#define WINO_CHUNK_FLOATS (1L << 19)

/* Tiles per chunk for `total` tiles: V and M of a chunk within `floats`, whole 14-tile register tiles,
 * evened out over the chunks so the last is not a sliver; 0 when that gives fewer than min_chunks. */
static long chunk_tiles_in(const wino_job *j, long total, long floats, long min_chunks) {
  long per = floats / ((long)j->np * (j->p->cin + j->p->cout)) / (2 * PR_RUN) * (2 * PR_RUN);
  if (per < 2 * PR_RUN) per = 2 * PR_RUN;
  const long nchunks = (total + per - 1) / per;
  return nchunks < min_chunks || nchunks < 1 ? 0 : (total + nchunks - 1) / nchunks;
}
/* The shared chunks' (WINO_CHUNK_FLOATS). */
static long chunk_tiles(const wino_job *j, long total) { return chunk_tiles_in(j, total, WINO_CHUNK_FLOATS, 1); }

/* Whether a forward may run as private chunks (wino_private_task): every thread takes whole chunks of
 * tiles through all three passes with its own scratch in its own L2, with no barrier between the
 * passes and no transformed data crossing cores; but each chunk reads all the transformed weights, so
 * only for weights within half an L2 (64 -> 64 channels in F(4x4): 576 KB). Minima of a training
 * step's calls, shared -> private: ResNet-20's 32 channels on 14x14 (batch 128) forward 10.4 -> 8.6 ms
 * and backward-input 9.3 -> 7.9 ms a step, its 64 channels on 7x7 6.6 -> 6.1 and 6.8 -> 5.9 ms; but
 * ResNet-18's 128 channels on 4x4 (2.4 MB of weights) 2.2 -> 2.4 ms and 256 on 2x2 (F(2x2), 4 MB)
 * 3.9 -> 4.1 ms, streaming the weights from memory once per chunk. RESNET_WINO_PRIVATE=0 turns it off
 * (measurements). */
#define WINO_PRIVATE_MAX_FLOATS (36L * 64 * 64)
static int wino_private(const conv_p *p, int np) {
  static int on = -1;
  if (on < 0) on = !(getenv("RESNET_WINO_PRIVATE") && strcmp(getenv("RESNET_WINO_PRIVATE"), "0") == 0);
  return on && (long)np * p->cin * p->cout <= WINO_PRIVATE_MAX_FLOATS;
}

/* Tiles per private chunk: V and M within half a core's L2, whole 14-tile register tiles, evened out
 * over the chunks; 0 when that gives fewer than two chunks per thread (the shared path then splits
 * each chunk's positions over the threads instead). */
static long chunk_tiles_private(const wino_job *j, long total, int T) { return chunk_tiles_in(j, total, 1L << 17, 2L * T); }

/* This thread's scratch for chunks of up to tmax tiles (V, M and the channels' offsets in V, kept
 * between calls), into j. */
static void chunk_scratch(wino_job *j, long tmax) {
  static _Thread_local buf_t vbuf, mbuf;
  static _Thread_local int *offs;
  static _Thread_local int offs_cap;
  const conv_p *p = j->p;
  tmax = (tmax + PR_RUN - 1) / PR_RUN * PR_RUN;
  j->V = grow(&vbuf, (size_t)j->np * plane_stride((long)p->cin * tmax));
  j->M = grow(&mbuf, (size_t)j->np * plane_stride((long)p->cout * tmax));
  if (offs_cap < p->cin) {
    free(offs);
    offs = malloc(sizeof(int) * (size_t)p->cin);
    if (!offs) abort();
    offs_cap = p->cin;
  }
  j->off = offs;
  j->tpad = 0;
}

/* The chunk of nt tiles from tile t0: its tiles padded to whole 7-tile runs (tpad), and the channels'
 * offsets for that padding. */
static void chunk_at(wino_job *j, long t0, long nt) {
  j->t0 = t0;
  j->nt = nt;
  const long tpad = (nt + PR_RUN - 1) / PR_RUN * PR_RUN;
  if (tpad != j->tpad) {
    j->tpad = tpad;
    for (int c = 0; c < j->p->cin; c++) j->off[c] = (int)((c / 16) * tpad * 16 + c % 16);
  }
}

/* A thread's share of a private-chunk forward: chunks of j->nt tiles taken from j->chunks, each through
 * the input transform, all (position, panel) products and the output transform, with this thread's
 * own scratch. */
static void wino_private_task(void *ctx, int tid, int n) {
  (void)n;
  wino_job *sh = ctx;
  const conv_p *p = sh->p;
  const long total = (long)p->n * sh->th * sh->tw, per = sh->nt;
  wino_job j = *sh;
  chunk_scratch(&j, per);
  pool_cursor cur = pool_cursor_at(&sh->chunks, tid);
  for (;;) {
    const long c = pool_ranges_next(&sh->chunks, &cur);
    if (c < 0) break;
    chunk_at(&j, c * per, total - c * per < per ? total - c * per : per);
    wino_in_range(&j, 0, (long)(p->cin / 16) * j.tpad);
    for (long it = 0; it < (long)j.np * j.npanels; it++) wino_gemm_item(&j, it);
    wino_out_range(&j, 0, (long)(p->cout / 16) * j.nt);
  }
}

static void wino_job_init(wino_job *j, float *y, const float *x, const float *U, const float *bias, const float *residual,
                          int relu, const conv_p *p, int m, int nchw) {
  memset(j, 0, sizeof *j);
  j->p = p; j->x = x; j->U = U; j->bias = bias; j->residual = residual; j->y = y; j->relu = relu;
  j->y_nchw = nchw;
  j->x_nchw = nchw && wino_x_direct(p, m);
  j->m = m;
  j->np = (m + 2) * (m + 2);
  j->th = (p->oh + m - 1) / m;
  j->tw = (p->ow + m - 1) / m;
  j->npanels = (p->cout + PR_NR - 1) / PR_NR;
  j->usize = prow_packed_size(p->cout, p->cin, PR_NR);
}

struct wpack_job;
static int wino_split(const wino_job *j, const struct wpack_job *wp);

/* The forward of an initialised job whose U is ready, in private chunks or in shared passes (the split
 * by panels, wino_split, is the caller's to try first: it returns 0 wherever private chunks apply). */
static void wino_run(wino_job *j) {
  const conv_p *p = j->p;
  const long total = (long)p->n * j->th * j->tw;
  const int T = pool_threads();
  if (T > 1 && wino_private(p, j->np) && (j->nt = chunk_tiles_private(j, total, T)) > 0) { /* nt: tiles per chunk */
    pool_ranges_init(&j->chunks, (total + j->nt - 1) / j->nt, 1, T);
    pool_run_dynamic(wino_private_task, j, T);
    return;
  }
  const long per = chunk_tiles(j, total);
  chunk_scratch(j, per);
  for (long t0 = 0; t0 < total; t0 += per) {
    chunk_at(j, t0, total - t0 < per ? total - t0 : per);
    wino_in_pass(j);
    atomic_init(&j->next, 0);
    const long items = (long)j->np * j->npanels;
    pool_run_dynamic(wino_gemm_task, j, items < T ? (int)items : T);
    run_range(wino_out_range, j, (long)(p->cout / 16) * j->nt);
  }
}

void wino_forward(float *y, const float *x, const float *U, const float *bias, const float *residual, int relu,
                  const conv_p *p, int m, int nchw) {
  wino_job j;
  wino_job_init(&j, y, x, U, bias, residual, relu, p, m, nchw);
  if (!wino_split(&j, NULL)) wino_run(&j);
}

/* ---- Winograd for NCHW tensors (training and the NCHW plan): weights transformed per call,
 * activations converted to and from the blocked layout around wino_forward ----------------------- */

typedef struct wpack_job {
  const float *w;
  const conv_p *p;
  int m, flip;
  float *dst;
  int stream; /* non-temporal stores (wpack_streams) */
} wpack_job;

/* Whether the per-call U is stored with non-temporal stores: where it outgrows half an L2 (64 -> 64
 * channels in F(4x4), 590 KB, and up), its 36 planes lie tens of KB apart and every store line was
 * first read from memory (write-allocate) for nothing, the products reading U back from L3 or memory
 * either way. In-process A/B of the calls (alternating, fastest and median of 40, two threads, this
 * session's Zen 5 VM): ResNet-18's 128 channels on 4x4 at batch 64, forward -15 % (median 0.684 ->
 * 0.582 ms), with caches flushed before each call -14 %, backward-input -8 %; 64 on 8x8 -15 % / -13 %;
 * ResNet-20's 64 on 7x7 at batch 128 -7 to -10 %; 32 and 16 channels (U of 147 and 37 KB, kept
 * with ordinary stores) unchanged. ResNet-18 training steps, alternating: forward calls 10.2 -> 9.6 ms
 * a step, backward-input 8.9 -> 8.8. The same bits (the same values, stored otherwise). */
static int wpack_streams(const conv_p *p, int m) { return wino_packed_size(p, m) * (long)sizeof(float) > l2_bytes() / 2; }

/* U = G g G^T for 16 consecutive output channels at a time (the packing is contiguous in them),
 * their 3x3 kernels gathered from w: w[co][c] (flip 0), or for the backward-input convolution
 * w[c][co] turned by 180 degrees (flip 1: w is then the forward layer's [cin = p->cout][p->cin]). */
__attribute__((target("avx512f"))) static void wpack_range(void *ctx, long lo, long hi) {
  wpack_job *j = ctx;
  const conv_p *p = j->p;
  const int m = j->m, a = m + 2, C = p->cin, M = p->cout;
  const long size = prow_packed_size(M, C, PR_NR);
  float g4[6][3], *gt = &g4[0][0];
  for (int i = 0; i < a; i++)
    for (int k = 0; k < 3; k++) gt[i * 3 + k] = (float)gm(m, i, k);
  /* lane l reads output channel co0 + l: w[(co*C + c)*9 + t] or w[(c*M + co)*9 + 8 - t]; each lane's
   * 9 taps by one masked load, then a register transpose (9 gathers of 16 lanes were slower) */
  const long lstride = j->flip ? 9 : 9L * C;
  for (long it = lo; it < hi; it++) {
    const int co0 = (int)(it / C) * 16, c = (int)(it % C);
    const float *base = j->flip ? j->w + ((long)c * M + co0) * 9 : j->w + ((long)co0 * C + c) * 9;
    __m512 g[16];
    for (int l = 0; l < 16; l++) g[l] = _mm512_maskz_loadu_ps((__mmask16)0x1FF, base + l * lstride);
    transpose16(g);
    if (j->flip)
      for (int t = 0; t < 4; t++) {
        const __m512 tmp = g[t];
        g[t] = g[8 - t];
        g[8 - t] = tmp;
      }
    __m512 t3[6][3]; /* G g */
    for (int i = 0; i < a; i++)
      for (int k = 0; k < 3; k++)
        t3[i][k] = _mm512_fmadd_ps(_mm512_set1_ps(gt[i * 3 + 0]), g[k],
                                   _mm512_fmadd_ps(_mm512_set1_ps(gt[i * 3 + 1]), g[3 + k], _mm512_mul_ps(_mm512_set1_ps(gt[i * 3 + 2]), g[6 + k])));
    float *d = j->dst + ((long)(co0 / PR_NR) * C + c) * PR_NR + co0 % PR_NR; /* 64-byte aligned: grow()'s
                                                                               buffer, size and PR_NR multiples of 16 */
    for (int i = 0; i < a; i++)
      for (int q = 0; q < a; q++) { /* (G g) G^T */
        const __m512 u = _mm512_fmadd_ps(t3[i][0], _mm512_set1_ps(gt[q * 3 + 0]),
                                         _mm512_fmadd_ps(t3[i][1], _mm512_set1_ps(gt[q * 3 + 1]), _mm512_mul_ps(t3[i][2], _mm512_set1_ps(gt[q * 3 + 2]))));
        if (j->stream) _mm512_stream_ps(d + (i * a + q) * size, u);
        else _mm512_storeu_ps(d + (i * a + q) * size, u);
      }
  }
  if (j->stream) _mm_sfence(); /* the streamed stores visible before the pool's barrier hands U on */
}

typedef struct {
  float *blk;         /* [n][c/16][h+2][w+2][16] */
  const float *src;   /* NCHW */
  int h, w;
} conv_job_blk;

/* NCHW -> blocked with a zero border, items (image, channel block, row). */
static void blk_convert_range(void *ctx, long lo, long hi) {
  conv_job_blk *j = ctx;
  for (long it = lo; it < hi; it++) {
    const long bc = it / j->h;
    const int y = (int)(it % j->h);
    float *plane = j->blk + bc * (long)(j->h + 2) * (j->w + 2) * 16;
    const float *src = j->src + bc * 16 * (long)j->h * j->w;
    blk_row(plane, src, j->h, j->w, y, NULL, NULL);
    if (y == 0) blk_row(plane, src, j->h, j->w, -1, NULL, NULL);
    if (y == j->h - 1) blk_row(plane, src, j->h, j->w, j->h, NULL, NULL);
  }
}

/* What the input transform of an NCHW path reads: x itself (wino_x_direct), or x converted to the
 * blocked layout in *buf. */
static const float *nchw_input(const float *x, const conv_p *p, int m, buf_t *buf) {
  if (wino_x_direct(p, m)) return x;
  float *xb = grow(buf, (size_t)p->n * p->cin * (p->h + 2) * (p->w + 2));
  conv_job_blk cj = {xb, x, p->h, p->w};
  run_range(blk_convert_range, &cj, (long)p->n * (p->cin / 16) * p->h);
  return xb;
}

/* Split by output channels: for weights too large for private chunks (wino_private) and a batch of one
 * or two chunks of tiles, each thread takes a share of the 32-channel panels through every pass:
 * it transforms its panels' weights, transforms the whole chunk's input itself (the other threads do
 * the same: the input transform is the cheap pass), multiplies for its panels only and runs the output
 * transform of its channels. Nothing one core writes is read by the other, where the shared passes
 * hand V, U and M across cores at every barrier. The items and their sums are the shared passes', so
 * the bits are the same. On an Intel Xeon VM (2 MB L2, where data written by one core and read by the
 * other costs most) ResNet-18's 128 channels on 4x4 at batch 64 (64 tiles, 2.4 MB of transformed
 * weights) had run on two threads barely faster than on one (forward 1.10 -> 0.98 ms, backward-input
 * 1.14 -> 0.91). The inference plan's blocked forward (U transformed once per model) takes it too:
 * ResNet-50 at batch 1, alternating calls of the two builds, 128 channels on 28x28 0.49-0.54 -> 0.38-0.39
 * ms, 256 on 14x14 0.72 -> 0.64, 512 on 7x7 (F(2x2)) 1.15-1.19 -> 1.09 (batch 8: more chunks, not
 * split). RESNET_WINO_SPLIT=0 turns it off (measurements). */
typedef struct {
  wino_job j;
  const wpack_job *wp;
  long per;   /* tiles per chunk */
  int parts;  /* shares of the panels, handed out dynamically */
  atomic_long next;
} wino_split_job;

static void wino_split_task(void *ctx, int tid, int n) {
  (void)tid; (void)n;
  wino_split_job *s = ctx;
  const conv_p *p = s->j.p;
  const long total = (long)p->n * s->j.th * s->j.tw, kb = p->cout / 16;
  wino_job j = s->j;
  int scratch = 0;
  for (;;) {
    const long part = atomic_fetch_add_explicit(&s->next, 1, memory_order_relaxed);
    if (part >= s->parts) break;
    long plo, phi;
    pool_split(j.npanels, (int)part, s->parts, 1, &plo, &phi);
    if (plo >= phi) continue;
    const long cb0 = plo * (PR_NR / 16), cb1 = phi * (PR_NR / 16) < kb ? phi * (PR_NR / 16) : kb;
    if (s->wp) wpack_range((void *)s->wp, cb0 * p->cin, cb1 * p->cin);
    if (!scratch) {
      chunk_scratch(&j, s->per);
      scratch = 1;
    }
    for (long t0 = 0; t0 < total; t0 += s->per) {
      chunk_at(&j, t0, total - t0 < s->per ? total - t0 : s->per);
      wino_in_range(&j, 0, (long)(p->cin / 16) * j.tpad);
      for (long xi = 0; xi < j.np; xi++)
        for (long panel = plo; panel < phi; panel++) wino_gemm_item(&j, xi * j.npanels + panel);
      wino_out_range(&j, cb0 * j.nt, cb1 * j.nt);
    }
  }
}

/* The forward by panels (above) for job j (its U transformed by wp first, where wp is not NULL) where it
 * applies; 0 when it does not (nothing done). */
static int wino_split(const wino_job *j, const wpack_job *wp) {
  static int off = -1;
  const conv_p *p = j->p;
  const int T = pool_threads();
  if (T < 2 || env_zero("RESNET_WINO_SPLIT", &off) || j->npanels < T) return 0;
  wino_split_job s;
  memset(&s, 0, sizeof s);
  s.j = *j;
  const long total = (long)p->n * s.j.th * s.j.tw;
  if (wino_private(p, s.j.np) && chunk_tiles_private(&s.j, total, T) > 0) return 0;
  s.per = chunk_tiles(&s.j, total);
  if ((total + s.per - 1) / s.per > 2) return 0;
  s.wp = wp;
  s.parts = T;
  atomic_init(&s.next, 0);
  pool_run_dynamic(wino_split_task, &s, T);
  return 1;
}

/* y = conv(x, w) + bias (+ residual) (then relu) on NCHW tensors through the blocked Winograd path
 * with tile m (wino_nchw_tile): w transformed here (flip: w is the forward layer's kernel and this
 * is its backward-input convolution, see wpack_range), x read as nchw_input says, the output
 * transform writing NCHW y itself. The scratch buffers are per calling thread and kept. */
void wino_forward_nchw(float *y, const float *x, const float *w, int flip, const float *bias, const float *residual, int relu,
                       const conv_p *p, int m, const float *pre_s, const float *pre_t) {
  static _Thread_local buf_t ubuf, xbuf;
  if (pre_s && !wino_x_direct(p, m)) abort(); /* conv.c asks wino_reads_pre first */
  float *U = grow(&ubuf, (size_t)wino_packed_size(p, m));
  wpack_job wj = {w, p, m, flip, U, wpack_streams(p, m)};
  const float *xin = nchw_input(x, p, m, &xbuf);
  wino_job j;
  wino_job_init(&j, y, xin, U, bias, residual, relu, p, m, 1);
  j.pre_s = pre_s;
  j.pre_t = pre_t;
  if (wino_split(&j, &wj)) return;
  run_range(wpack_range, &wj, (long)(p->cout / 16) * p->cin);
  wino_run(&j);
}

/* ---- Winograd weight gradient (training, NCHW): dW = G^T [ sum over tiles (B^T d B) .* (A dY A^T) ] G
 * (the transpose of the forward algorithm), the sum over tiles being one long reduction per
 * transform position and channel pair ----------------------------------------------------------- */

/* dY tile (m x m, 16 channels per vector) -> Z = A dY A^T ((m+2) x (m+2)); A = (A^T)^T. */
#define AZ(m, v, r)                                                                                                  \
  do {                                                                                                               \
    if ((m) == 2) {                                                                                                  \
      r[0] = v[0];                                                                                                   \
      r[1] = _mm512_add_ps(v[0], v[1]);                                                                              \
      r[2] = _mm512_sub_ps(v[0], v[1]);                                                                              \
      r[3] = _mm512_sub_ps(_mm512_setzero_ps(), v[1]);                                                               \
    } else {                                                                                                         \
      WINO4_AZ(512, v, r);                                                                                           \
    }                                                                                                                \
  } while (0)

typedef struct {
  wino_job j;          /* geometry, chunk, V (the input's transform) */
  const float *dy;     /* dY, NCHW */
  float *Z;            /* Z[xi][cout/16][tpad][16] */
  float *dU;           /* dU[xi][cin][cout] */
  int assign;          /* the first chunk into dU: its sums are stored, not added (no zeroing pass) */
  atomic_long next;
} wbw_job;

/* Z of the chunk's tiles, items (output-channel block, tile) split evenly; dY past the map's edge reads
 * as zero (tiles are cut there) and padding tiles are zero. */
__attribute__((target("avx512f"))) static inline void wbw_z(wbw_job *w, long lo, long hi, const int m) {
  const wino_job *j = &w->j;
  const conv_p *p = j->p;
  const int a = m + 2;
  const long ohw = (long)p->oh * p->ow, zx = plane_stride((long)p->cout * j->tpad);
  const __m512 zero = _mm512_setzero_ps();
  tile_walk wk = tile_walk_at(j, lo, j->tpad);
  for (long it = lo; it < hi; it++, tile_walk_next(j, &wk)) {
    const long c = wk.c, t = wk.t;
    float *z = w->Z + c * j->tpad * 16 + t * 16;
    if (t >= j->nt) {
      for (int xi = 0; xi < a * a; xi++) _mm512_storeu_ps(z + xi * zx, zero);
      continue;
    }
    const long b = wk.at.b;
    const int oy = m * wk.at.ty, ox = m * wk.at.tx;
    /* the tile read from NCHW dY, per channel row r onto lanes [m*r, m*r + m) (zero past the map's
     * edge), then transposed in registers to m x m pixels of 16 channels (a blocked copy of dY's rows,
     * as the input transform's, measured 3-7 % slower here: one transpose per tile either way) */
    __m512 px[16];
    const int rows = p->oh - oy < m ? p->oh - oy : m, cols = p->ow - ox < m ? p->ow - ox : m;
    const __mmask16 colmask = (__mmask16)((1u << cols) - 1);
    const float *d0 = w->dy + (b * p->cout + c * 16) * ohw + (long)oy * p->ow + ox;
    prefetch_tile(j, w->dy + c * 16 * ohw, &wk, p->cout, ohw, m, p->ow, 0, 0, 0);
    for (int l = 0; l < 16; l++) px[l] = tile_rows_load(zero, d0 + l * ohw, 0, rows, m, p->ow, colmask);
    transpose16(px);
    __m512 e[6][4];
    for (int q = 0; q < m; q++) { /* columns: A dY */
      __m512 v[4], r[6];
      for (int i = 0; i < m; i++) v[i] = px[i * m + q];
      AZ(m, v, r);
      for (int i = 0; i < a; i++) e[i][q] = r[i];
    }
    for (int i = 0; i < a; i++) { /* rows: (A dY) A^T */
      __m512 r[6];
      AZ(m, e[i], r);
      for (int q = 0; q < a; q++) _mm512_storeu_ps(z + (i * a + q) * zx, r[q]);
    }
  }
}
static void wbw_z_range(void *ctx, long lo, long hi) {
  wbw_job *w = ctx;
  if (w->j.m == 2) wbw_z(w, lo, hi, 2);
  else wbw_z(w, lo, hi, 4);
}

/* Tiles ahead whose V and Z lines an item's reduction prefetches (each tile: a line of each from L2,
 * for 16 FMAs; perf had sampled the first FMAs after the loads most). ResNet-20 at batch 128,
 * alternating calls, hot and caches flushed: weight gradients of 16 channels on 28x28 -7 to -13 %,
 * 32 on 14x14 -4 to -9 %, 64 on 7x7 -8 to -10 % (16 ahead: the same). */
#ifndef WBW_PF
#define WBW_PF 8
#endif
/* Item it = (position, output-channel block) of the chunk's products: for every input-channel block a
 * 16 x 16 register tile, acc[ci] (16 output channels) += V[ci] * Z over the chunk's tiles, added to
 * the item's part of dU. */
__attribute__((target("avx512f"))) static void wbw_gemm_item(const wbw_job *w, long it) {
  const wino_job *j = &w->j;
  const conv_p *p = j->p;
  const int cib = p->cin / 16, cob = p->cout / 16;
  const long vx = plane_stride((long)p->cin * j->tpad), zx = plane_stride((long)p->cout * j->tpad), T = j->tpad;
  const int xi = (int)(it / cob), co = (int)(it % cob);
  const float *z = w->Z + xi * zx + (long)co * T * 16;
  for (int ci = 0; ci < cib; ci++) {
    const float *v = j->V + xi * vx + (long)ci * T * 16;
    __m512 acc[16];
    for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_ps();
    for (long t = 0; t < T; t++) {
      _mm_prefetch((const char *)(z + (t + WBW_PF) * 16), _MM_HINT_T0);
      _mm_prefetch((const char *)(v + (t + WBW_PF) * 16), _MM_HINT_T0);
      const __m512 zv = _mm512_loadu_ps(z + t * 16);
      _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(v[t * 16 + i]), zv, acc[i]);
    }
    float *d = w->dU + ((long)xi * p->cin + ci * 16) * p->cout + co * 16;
    if (w->assign)
      for (int i = 0; i < 16; i++) _mm512_storeu_ps(d + (long)i * p->cout, acc[i]);
    else
      for (int i = 0; i < 16; i++) _mm512_storeu_ps(d + (long)i * p->cout, _mm512_add_ps(_mm512_loadu_ps(d + (long)i * p->cout), acc[i]));
  }
}

/* The items handed out dynamically, each owning its part of dU (so the sums run in the same order
 * whichever thread takes them). */
static void wbw_gemm_task(void *ctx, int tid, int n) {
  (void)tid; (void)n;
  wbw_job *w = ctx;
  for (;;) {
    const long it = atomic_fetch_add_explicit(&w->next, 1, memory_order_relaxed);
    if (it >= (long)w->j.np * (w->j.p->cout / 16)) break;
    wbw_gemm_item(w, it);
  }
}

/* Private chunks for the weight gradient (as wino_private_task for the forward): the chunks form at
 * most WBW_GROUPS groups of consecutive chunks, and a thread takes a group through all its chunks'
 * passes, summing into the group's own dU; the groups' sums are added in group order (du_reduce_range,
 * then the back-transform reads the one sum), so the bits do not depend on which thread took which
 * group. The back-transform had summed the groups itself: per item 36 positions x the groups' lines,
 * each a dU apart, more streams than the prefetchers follow (in a profile of ResNet-20's 64 channels on
 * 7x7 at batch 128, 15 % of the call); the reduction first, in memory order: that call -5 %, ResNet-18's
 * 64 on 8x8 at batch 64 -4 % (alternating calls, caches flushed; hot -10 to -20 %). Same bits. */
#define WBW_GROUPS 8
/* The weight gradient's V and Z scratch, per thread and kept: one pair whichever path (private groups,
 * split, shared chunks) a thread runs, so a thread that has run several keeps one. */
static _Thread_local buf_t wbw_vbuf, wbw_zbuf;
/* and only while a group's sums (positions x cin x cout floats) fit in two thirds of a core's L2
 * (l2_bytes), beside a chunk that then overflows into L3: 32 -> 32 channels in F(4x4) (147 KB of sums)
 * and 64 -> 64 (590 KB) on an L2 of 1 MB or more, everything wino_private takes. Session 7 had set a
 * third, tuned on an AMD Zen 4 VM (1 MB L2) with that session's first version of these groups, where
 * 64 -> 64 had been slower private (ResNet-20's 7x7 maps 1.40 -> 2.00 ms); on an Intel Xeon VM (2 MB L2)
 * private had been the faster (2.0 -> 1.4 ms; ResNet-18's 64 on 8x8 at batch 64: 1.1 -> 0.7 ms), the
 * shared chunks gaining nothing from the second thread. On an AMD Zen 5 VM (1 MB L2, its two vCPUs on
 * different chiplets most of the time, session 25) the shared chunks ran at 1.2-1.8 ms, private groups
 * at 0.75-0.98 (ResNet-18's 64 on 8x8: 0.57-0.91 -> 0.45-0.58), best of calls; in ResNet-20 training
 * steps (alternating) the median step 80.6 -> 75.3 ms. Not re-measured on Zen 4. */
static int wbw_private_fits(long usz) { return usz * (long)sizeof(float) <= l2_bytes() * 2 / 3; }
typedef struct {
  wbw_job w;      /* geometry, the input (j.x) and dY */
  long per, cpg;  /* tiles per chunk, chunks per group */
  int groups;
  float *dUg;     /* [groups][positions][cin][cout] */
  pool_ranges items; /* the groups, by ranges */
} wbw_private_job;
static void wbw_private_task(void *ctx, int tid, int n) {
  (void)n;
  wbw_private_job *sh = ctx;
  const conv_p *p = sh->w.j.p;
  const long total = (long)p->n * sh->w.j.th * sh->w.j.tw, usz = (long)sh->w.j.np * p->cin * p->cout;
  wbw_job w = sh->w;
  wino_job *j = &w.j;
  j->V = grow(&wbw_vbuf, (size_t)j->np * plane_stride((long)p->cin * sh->per));
  w.Z = grow(&wbw_zbuf, (size_t)j->np * plane_stride((long)p->cout * sh->per));
  pool_cursor cur = pool_cursor_at(&sh->items, tid);
  for (;;) {
    const long g = pool_ranges_next(&sh->items, &cur);
    if (g < 0) break;
    w.dU = sh->dUg + g * usz;
    for (long c = g * sh->cpg; c < (g + 1) * sh->cpg && c * sh->per < total; c++) {
      w.assign = c == g * sh->cpg;
      j->t0 = c * sh->per;
      j->nt = j->tpad = total - j->t0 < sh->per ? total - j->t0 : sh->per;
      wino_in_range(j, 0, (long)(p->cin / 16) * j->tpad);
      wbw_z_range(&w, 0, (long)(p->cout / 16) * j->tpad);
      for (long it = 0; it < (long)j->np * (p->cout / 16); it++) wbw_gemm_item(&w, it);
    }
  }
}

typedef struct {
  const conv_p *p;
  const float *dU;  /* [groups][positions][cin][cout]: dU is their sum, in group order */
  float *dw;
  int m, groups;
} wback_job;
/* 16 values of dU at offset o: the groups' sums added in group order. */
__attribute__((target("avx512f"))) static inline __m512 du_sum(const wback_job *j, long o) {
  const long usz = (long)(j->m + 2) * (j->m + 2) * j->p->cin * j->p->cout;
  __m512 s = _mm512_loadu_ps(j->dU + o);
  for (int g = 1; g < j->groups; g++) s = _mm512_add_ps(s, _mm512_loadu_ps(j->dU + g * usz + o));
  return s;
}
/* G of F(2x2) and F(4x4) in float, for the back-transform's constant-folded loops. */
static const float G2F[4][3] = {{1, 0, 0}, {0.5f, 0.5f, 0.5f}, {0.5f, -0.5f, 0.5f}, {0, 0, 1}};
static const float G4F[6][3] = {{0.25f, 0, 0}, {(float)(-1.0 / 6), (float)(-1.0 / 6), (float)(-1.0 / 6)},
                                {(float)(-1.0 / 6), (float)(1.0 / 6), (float)(-1.0 / 6)},
                                {(float)(1.0 / 24), (float)(1.0 / 12), (float)(1.0 / 6)},
                                {(float)(1.0 / 24), (float)(-1.0 / 12), (float)(1.0 / 6)}, {0, 0, 1}};

/* dW[co][ci] = G^T dU G, 16 output channels per vector, items (input channel, output block); m a
 * constant, so that the zeros of G drop out of the unrolled loops. A column q of dU at a time, its a
 * values loaded once: they had been loaded once per row of G^T and waited on L3 (dU is 2.4 MB for 128
 * channels), and the zeros of G were tested in the loops (ResNet-18's 128 channels on 4x4, weight
 * gradient: one thread 1.18 -> 1.02 ms, two 0.73 -> 0.64 ms). The products are summed in the same order
 * as before, so the bits did not change. */
__attribute__((target("avx512f"), always_inline)) static inline void wback_items(const wback_job *j, long lo, long hi, const int m) {
  const conv_p *p = j->p;
  const int a = m + 2;
  const float(*g)[3] = m == 2 ? G2F : G4F;
  for (long it = lo; it < hi; it++) {
    const int ci = (int)(it % p->cin), co0 = (int)(it / p->cin) * 16;
    __m512 t[3][6]; /* G^T dU */
    for (int q = 0; q < a; q++) {
      __m512 du[6];
      for (int i = 0; i < a; i++) du[i] = du_sum(j, ((long)(i * a + q) * p->cin + ci) * p->cout + co0);
      for (int k = 0; k < 3; k++) {
        __m512 s = _mm512_setzero_ps();
        for (int i = 0; i < a; i++)
          if (g[i][k] != 0.0f) s = _mm512_fmadd_ps(_mm512_set1_ps(g[i][k]), du[i], s);
        t[k][q] = s;
      }
    }
    float *d = j->dw + ((long)co0 * p->cin + ci) * 9;
    __m512 o[16]; /* o[k*3 + l]: lanes = output channels; transposed to 9 taps per channel */
    for (int k = 0; k < 3; k++)
      for (int l = 0; l < 3; l++) { /* (G^T dU) G */
        __m512 s = _mm512_setzero_ps();
        for (int q = 0; q < a; q++)
          if (g[q][l] != 0.0f) s = _mm512_fmadd_ps(t[k][q], _mm512_set1_ps(g[q][l]), s);
        o[k * 3 + l] = s;
      }
    for (int i = 9; i < 16; i++) o[i] = _mm512_setzero_ps();
    transpose16(o);
    for (int l = 0; l < 16; l++) _mm512_mask_storeu_ps(d + (long)l * 9 * p->cin, (__mmask16)0x1FF, o[l]);
  }
}
/* The groups' sums added into the first group's, in group order (du_sum's order), 16 floats an item:
 * one pass over the groups' buffers in memory order; the back-transform then reads one buffer. */
__attribute__((target("avx512f"))) static void du_reduce_range(void *ctx, long lo, long hi) {
  const wback_job *j = ctx;
  float *d = (float *)j->dU;
  for (long it = lo; it < hi; it++) _mm512_storeu_ps(d + it * 16, du_sum(j, it * 16));
}
__attribute__((target("avx512f"))) static void wback_range(void *ctx, long lo, long hi) {
  const wback_job *j = ctx;
  if (j->m == 2) wback_items(j, lo, hi, 2);
  else wback_items(j, lo, hi, 4);
}

/* The weight gradient split by output channels, as the forward's wino_split: for sums too large for
 * private groups and one or two chunks of tiles, each thread takes a share of the 16-channel output
 * blocks through every pass (the whole chunk's input transform, dY's transform, the products and the
 * back-transform of its blocks), so that nothing crosses cores; the items and their order are the
 * shared chunks', so are the bits. ResNet-18's 128 channels on 4x4 at batch 64 had run slower on two
 * threads than on one on the Intel VM (1.17 -> 1.35 ms). */
typedef struct {
  wbw_job w;
  float *dw;
  long per, total;
  int parts;
  atomic_long next;
} wbw_split_job;

static void wbw_split_task(void *ctx, int tid, int n) {
  (void)tid; (void)n;
  wbw_split_job *s = ctx;
  const conv_p *p = s->w.j.p;
  const long cob = p->cout / 16;
  wbw_job w = s->w;
  wino_job *j = &w.j;
  int scratch = 0;
  for (;;) {
    const long part = atomic_fetch_add_explicit(&s->next, 1, memory_order_relaxed);
    if (part >= s->parts) break;
    long c0, c1;
    pool_split(cob, (int)part, s->parts, 1, &c0, &c1);
    if (c0 >= c1) continue;
    if (!scratch) {
      j->V = grow(&wbw_vbuf, (size_t)j->np * plane_stride((long)p->cin * s->per));
      w.Z = grow(&wbw_zbuf, (size_t)j->np * plane_stride((long)p->cout * s->per));
      scratch = 1;
    }
    for (j->t0 = 0; j->t0 < s->total; j->t0 += s->per) {
      w.assign = j->t0 == 0;
      j->nt = s->total - j->t0 < s->per ? s->total - j->t0 : s->per;
      j->tpad = j->nt;
      wino_in_range(j, 0, (long)(p->cin / 16) * j->tpad);
      wbw_z_range(&w, c0 * j->tpad, c1 * j->tpad);
      for (long xi = 0; xi < j->np; xi++)
        for (long co = c0; co < c1; co++) wbw_gemm_item(&w, xi * cob + co);
    }
    wback_job bj = {p, w.dU, s->dw, j->m, 1};
    wback_range(&bj, c0 * p->cin, c1 * p->cin);
  }
}

/* wino_backward_weight_nchw's gradient by output blocks (above) where it applies; 0 when it does not. */
static int wbw_split(const wbw_job *w, float *dw, long per, long total) {
  static int off = -1;
  const int T = pool_threads();
  if (T < 2 || env_zero("RESNET_WINO_SPLIT", &off) || w->j.p->cout / 16 < T || (total + per - 1) / per > 2) return 0;
  wbw_split_job s;
  memset(&s, 0, sizeof s);
  s.w = *w;
  s.dw = dw;
  s.per = per;
  s.total = total;
  s.parts = T;
  atomic_init(&s.next, 0);
  pool_run_dynamic(wbw_split_task, &s, T);
  return 1;
}

/* dw = the weight gradient of the 3x3 stride-1 convolution p (wino_nchw_tile) from x and dy (NCHW). */
void wino_backward_weight_nchw(float *dw, const float *x, const float *dy, const conv_p *p, int m, const float *pre_s,
                               const float *pre_t) {
  static _Thread_local buf_t xbuf, ubuf;
  if (pre_s && !wino_x_direct(p, m)) abort(); /* conv.c asks wino_reads_pre first */
  wbw_job w;
  memset(&w, 0, sizeof w);
  wino_job *j = &w.j;
  j->pre_s = pre_s;
  j->pre_t = pre_t;
  j->p = p;
  j->m = m;
  j->np = (m + 2) * (m + 2);
  j->th = (p->oh + m - 1) / m;
  j->tw = (p->ow + m - 1) / m;
  j->x = nchw_input(x, p, m, &xbuf);
  j->x_nchw = wino_x_direct(p, m);
  w.dy = dy;
  const long total = (long)p->n * j->th * j->tw, usz = (long)j->np * p->cin * p->cout;
  const int T = pool_threads();
  long per;
  if (T > 1 && wino_private(p, j->np) && wbw_private_fits(usz) && (per = chunk_tiles_private(j, total, T)) > 0) {
    wbw_private_job sh;
    memset(&sh, 0, sizeof sh);
    sh.w = w;
    sh.per = per;
    const long nchunks = (total + per - 1) / per;
    sh.cpg = (nchunks + WBW_GROUPS - 1) / WBW_GROUPS;
    sh.groups = (int)((nchunks + sh.cpg - 1) / sh.cpg);
    if (sh.groups >= 2 * T) {
      sh.dUg = grow(&ubuf, (size_t)sh.groups * usz);
      pool_ranges_init(&sh.items, sh.groups, 1, T);
      pool_run_dynamic(wbw_private_task, &sh, T);
      wback_job bj = {p, sh.dUg, dw, m, sh.groups};
      run_range(du_reduce_range, &bj, usz / 16); /* the groups' sums into the first group's dU */
      bj.groups = 1;
      run_range(wback_range, &bj, (long)p->cin * (p->cout / 16));
      return;
    }
  }
  per = chunk_tiles(j, total);
  w.dU = grow(&ubuf, (size_t)usz);
  if (wbw_split(&w, dw, per, total)) return;
  j->V = grow(&wbw_vbuf, (size_t)j->np * plane_stride((long)p->cin * per));
  w.Z = grow(&wbw_zbuf, (size_t)j->np * plane_stride((long)p->cout * per));
  /* no zeroing pass over dU (2.4 MB for 128 channels, on one thread): the first chunk's sums are
   * stored (ResNet-18's 128 on 4x4, weight gradient: 0.65 -> 0.60 ms; 64 on 8x8 0.68 -> 0.64 ms) */
  for (j->t0 = 0; j->t0 < total; j->t0 += per) {
    w.assign = j->t0 == 0;
    j->nt = total - j->t0 < per ? total - j->t0 : per;
    j->tpad = j->nt; /* no register-tile runs here: the reduction runs over the tiles themselves */
    wino_in_pass(j);
    run_range(wbw_z_range, &w, (long)(p->cout / 16) * j->tpad);
    atomic_init(&w.next, 0);
    const long items = (long)j->np * (p->cout / 16);
    pool_run_dynamic(wbw_gemm_task, &w, items < T ? (int)items : T);
  }
  wback_job bj = {p, w.dU, dw, m, 1};
  run_range(wback_range, &bj, (long)p->cin * (p->cout / 16));
}
#endif
