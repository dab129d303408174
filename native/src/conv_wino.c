/* Winograd F(2x2, 3x3) convolutions on blocked activations (AVX-512, the inference plan).
 *
 * A 3x3 stride-1 convolution computes each 2x2 output tile from a 4x4 input tile; in the Winograd
 * domain (Lavin & Gray 2015) that is 16 products per channel pair instead of 36:
 *   Y = A^T [ sum_c (G g_c G^T) .* (B^T d_c B) ] A
 * The 16 element-wise products summed over input channels are 16 independent matrix products
 * (tiles x cin) x (cin x cout), one per position xi of the 4x4 transform: 2.25x fewer
 * multiply-adds than the direct convolution, for two cheap transforms. Three passes over chunks of
 * tiles, each split over the threads:
 *  1. input transform: V[xi][cin/16][tiles][16] = B^T d B, 16 channels of a tile per vector (read
 *     from the blocked input, whose zero border is the padding);
 *  2. per (xi, 32-channel panel): M[xi] = V[xi] x U[xi] with the pixel-row micro-kernel of
 *     conv_prow.c (a tile in the role of a pixel: 14 tiles x 32 channels per register tile), into
 *     M[xi][cout/16][tiles][16];
 *  3. output transform: Y = A^T m A, plus bias, the residual and relu, into the blocked output.
 * Weights U = G g G^T are packed once (CONV_LAYOUT_WINO2: 16 pixel-row packings of cin x cout).
 * Rounding differs from the direct convolution by a few units in the last place (the transforms
 * add and subtract neighbouring values; F(2x2) has the smallest error of the Winograd family). */
#include "conv_internal.h"
#include "gemm.h"
#include "pool.h"
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define WX 16 /* transform positions: 4 x 4 */

/* Floats of a packing: 16 pixel-row packings of the cin x cout products. */
long wino_packed_size(const conv_p *p) { return WX * prow_packed_size(p->cout, p->cin, PR_NR); }

/* U = G g G^T per (co, c), G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1], into the 16 packings. */
void wino_pack(const float *w, const conv_p *p, float *dst) {
  static const double G[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
  const int C = p->cin, M = p->cout;
  const long size = prow_packed_size(M, C, PR_NR);
  memset(dst, 0, sizeof(float) * WX * size);
  for (int co = 0; co < M; co++)
    for (int c = 0; c < C; c++) {
      const float *g = w + ((long)co * C + c) * 9;
      double t[4][3];
      for (int i = 0; i < 4; i++)
        for (int j = 0; j < 3; j++) t[i][j] = G[i][0] * g[j] + G[i][1] * g[3 + j] + G[i][2] * g[6 + j];
      const long at = ((long)(co / PR_NR) * C + c) * PR_NR + co % PR_NR;
      for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++)
          dst[(i * 4 + j) * size + at] = (float)(t[i][0] * G[j][0] + t[i][1] * G[j][1] + t[i][2] * G[j][2]);
    }
}

/* The 3x3 weights back: L G = I for L = [1 0 0 0; 0 1 -1 0; 0 0 0 1], so g = L U L^T. */
void wino_unpack(const float *src, const conv_p *p, float *w) {
  static const int L[3][4] = {{1, 0, 0, 0}, {0, 1, -1, 0}, {0, 0, 0, 1}};
  const int C = p->cin, M = p->cout;
  const long size = prow_packed_size(M, C, PR_NR);
  for (int co = 0; co < M; co++)
    for (int c = 0; c < C; c++) {
      const long at = ((long)(co / PR_NR) * C + c) * PR_NR + co % PR_NR;
      for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++) {
          double s = 0;
          for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++) s += L[a][i] * L[b][j] * (double)src[(i * 4 + j) * size + at];
          w[(((long)co * C + c) * 3 + a) * 3 + b] = (float)s;
        }
    }
}

#if defined(__x86_64__)

/* Whether a geometry runs here (besides AVX-512 and blocked input, the caller's): 3x3, stride 1,
 * dilation 1, padding 1 (the border), groups 1, whole 16-channel blocks in and out. Spatial sizes
 * do not matter (edge tiles are cut), so one packing serves every input size. RESNET_WINO=0 turns it
 * off (measurements). */
int wino_ok(const conv_p *p) {
  static int off = -1;
  if (env_zero("RESNET_WINO", &off)) return 0;
  return p->groups == 1 && p->kh == 3 && p->kw == 3 && p->sh == 1 && p->sw == 1 && p->dh == 1 && p->dw == 1 && p->ph == 1 &&
         p->pw == 1 && p->cin % 16 == 0 && p->cout % 16 == 0 && p->n >= 1 && p->oh >= 1 && p->ow >= 1 &&
         (long)p->cin * WX * 4096 < (1L << 31);
}

typedef struct {
  const conv_p *p;
  const float *x, *U, *bias, *residual;
  float *y, *V, *M;
  const int *off;       /* off[c] = (c/16) * tpad * 16 + c % 16: channel c of a tile in V[xi] */
  int th, tw, npanels;  /* tiles per column and row of a map; 32-channel panels of cout */
  int relu;
  long t0, nt, tpad;    /* the chunk: first (batch-wide) tile, tiles, tiles padded to whole 7-tile runs */
  long usize;           /* floats per position in U */
  atomic_long next;
} wino_job;

/* Image, first output row and column of the chunk's tile t. */
static inline void tile_at(const wino_job *j, long t, long *b, int *oy, int *ox) {
  const long g = j->t0 + t, per = (long)j->th * j->tw, r = g % per;
  *b = g / per;
  *oy = 2 * (int)(r / j->tw);
  *ox = 2 * (int)(r % j->tw);
}

/* Pass 1, items (channel block, tile) split evenly: B^T d B with B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0;
 * 0 1 0 -1]. Input rows and columns past the border (odd output sizes: the last tile's second
 * output row or column, which is not written) read as zero. */
__attribute__((target("avx512f"))) static void wino_in_task(void *ctx, int tid, int n) {
  wino_job *j = ctx;
  const conv_p *p = j->p;
  const int cb = p->cin / 16, hp = p->h + 2, wp = p->w + 2;
  const long plane = (long)hp * wp * 16, img = cb * plane, vx = (long)p->cin * j->tpad;
  long lo, hi;
  pool_split((long)cb * j->tpad, tid, n, 1, &lo, &hi);
  const __m512 z = _mm512_setzero_ps();
  for (long it = lo; it < hi; it++) {
    const long c = it / j->tpad, t = it % j->tpad;
    float *v = j->V + c * j->tpad * 16 + t * 16;
    if (t >= j->nt) { /* padding tiles of the last run: zeros */
      for (int xi = 0; xi < WX; xi++) _mm512_storeu_ps(v + xi * vx, z);
      continue;
    }
    long b;
    int oy, ox;
    tile_at(j, t, &b, &oy, &ox);
    /* input rows oy-1 .. oy+2 are buffer rows oy .. oy+3 (the border is row 0) */
    const float *s = j->x + b * img + c * plane + ((long)oy * wp + ox) * 16;
    __m512 d[4][4];
    const int full = oy + 3 < hp && ox + 3 < wp;
    for (int r = 0; r < 4; r++)
      for (int q = 0; q < 4; q++)
        d[r][q] = full || (oy + r < hp && ox + q < wp) ? _mm512_loadu_ps(s + ((long)r * wp + q) * 16) : z;
    __m512 e[4][4];
    for (int q = 0; q < 4; q++) { /* columns: B^T d */
      e[0][q] = _mm512_sub_ps(d[0][q], d[2][q]);
      e[1][q] = _mm512_add_ps(d[1][q], d[2][q]);
      e[2][q] = _mm512_sub_ps(d[2][q], d[1][q]);
      e[3][q] = _mm512_sub_ps(d[1][q], d[3][q]);
    }
    for (int r = 0; r < 4; r++) { /* rows: (B^T d) B */
      _mm512_storeu_ps(v + (r * 4 + 0) * vx, _mm512_sub_ps(e[r][0], e[r][2]));
      _mm512_storeu_ps(v + (r * 4 + 1) * vx, _mm512_add_ps(e[r][1], e[r][2]));
      _mm512_storeu_ps(v + (r * 4 + 2) * vx, _mm512_sub_ps(e[r][2], e[r][1]));
      _mm512_storeu_ps(v + (r * 4 + 3) * vx, _mm512_sub_ps(e[r][1], e[r][3]));
    }
  }
}

/* Pass 2, items (position, panel) handed out dynamically: M[xi] = V[xi] U[xi] over all the chunk's
 * tiles, two 7-tile runs per register tile. */
static void wino_gemm_task(void *ctx, int tid, int n) {
  (void)tid; (void)n;
  wino_job *j = ctx;
  const conv_p *p = j->p;
  const long vx = (long)p->cin * j->tpad, mx = (long)p->cout * j->tpad, chblk = j->tpad * 16, runs = j->tpad / PR_RUN;
  for (;;) {
    const long it = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
    if (it >= (long)WX * j->npanels) break;
    const int xi = (int)(it / j->npanels), panel = (int)(it % j->npanels);
    const float *Bp = j->U + xi * j->usize + (long)panel * PR_NR * p->cin;
    const int two = p->cout - panel * PR_NR > 16;
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
}

/* Pass 3, items (channel block, tile) split evenly: A^T m A with A^T = [1 1 1 0; 0 1 -1 -1], then
 * bias, residual, relu; outputs past an odd map edge are not written. */
__attribute__((target("avx512f"))) static void wino_out_task(void *ctx, int tid, int n) {
  wino_job *j = ctx;
  const conv_p *p = j->p;
  const int kb = p->cout / 16, wp = p->ow + 2;
  const long plane = (long)(p->oh + 2) * wp * 16, img = kb * plane, mx = (long)p->cout * j->tpad;
  long lo, hi;
  pool_split((long)kb * j->nt, tid, n, 1, &lo, &hi);
  const __m512 z = _mm512_setzero_ps();
  for (long it = lo; it < hi; it++) {
    const long c = it / j->nt, t = it % j->nt;
    const float *m = j->M + c * j->tpad * 16 + t * 16;
    __m512 e[2][4];
    for (int q = 0; q < 4; q++) {
      const __m512 m0 = _mm512_loadu_ps(m + (0 * 4 + q) * mx), m1 = _mm512_loadu_ps(m + (1 * 4 + q) * mx);
      const __m512 m2 = _mm512_loadu_ps(m + (2 * 4 + q) * mx), m3 = _mm512_loadu_ps(m + (3 * 4 + q) * mx);
      e[0][q] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
      e[1][q] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
    }
    long b;
    int oy, ox;
    tile_at(j, t, &b, &oy, &ox);
    const __m512 vb = j->bias ? _mm512_loadu_ps(j->bias + c * 16) : z;
    const long o = b * img + c * plane + ((long)(oy + 1) * wp + ox + 1) * 16;
    for (int r = 0; r < 2; r++) {
      if (oy + r >= p->oh) break;
      __m512 out[2] = {_mm512_add_ps(_mm512_add_ps(e[r][0], e[r][1]), e[r][2]), _mm512_sub_ps(_mm512_sub_ps(e[r][1], e[r][2]), e[r][3])};
      for (int q = 0; q < 2 && ox + q < p->ow; q++) {
        const long at = o + ((long)r * wp + q) * 16;
        __m512 v = _mm512_add_ps(out[q], vb);
        if (j->residual) v = _mm512_add_ps(v, _mm512_loadu_ps(j->residual + at));
        if (j->relu) v = _mm512_max_ps(z, v); /* NaN stays NaN */
        _mm512_storeu_ps(j->y + at, v);
      }
    }
  }
}

/* Tiles per chunk: V and M of a chunk (16 x tiles x (cin + cout) floats) within about 8 MB, so that
 * the passes find them in L3 (at batch 8 the whole batch's would not fit); whole 14-tile register
 * tiles. */
#define WINO_CHUNK_FLOATS (2L << 20)

void wino_forward(float *y, const float *x, const float *U, const float *bias, const float *residual, int relu,
                  const conv_p *p) {
  static _Thread_local buf_t vbuf, mbuf;
  static _Thread_local int *offs;
  static _Thread_local int offs_cap;
  wino_job j;
  memset(&j, 0, sizeof j);
  j.p = p; j.x = x; j.U = U; j.bias = bias; j.residual = residual; j.y = y; j.relu = relu;
  j.th = (p->oh + 1) / 2;
  j.tw = (p->ow + 1) / 2;
  j.npanels = (p->cout + PR_NR - 1) / PR_NR;
  j.usize = prow_packed_size(p->cout, p->cin, PR_NR);
  const long total = (long)p->n * j.th * j.tw;
  long per = WINO_CHUNK_FLOATS / ((long)WX * (p->cin + p->cout)) / (2 * PR_RUN) * (2 * PR_RUN);
  if (per < 2 * PR_RUN) per = 2 * PR_RUN;
  if (per > total) per = total;
  /* even chunks: the last one is not a sliver */
  const long nchunks = (total + per - 1) / per;
  per = (total + nchunks - 1) / nchunks;
  const long tpad_max = (per + PR_RUN - 1) / PR_RUN * PR_RUN;
  j.V = grow(&vbuf, (size_t)WX * p->cin * tpad_max);
  j.M = grow(&mbuf, (size_t)WX * p->cout * tpad_max);
  if (offs_cap < p->cin) {
    free(offs);
    offs = malloc(sizeof(int) * (size_t)p->cin);
    if (!offs) abort();
    offs_cap = p->cin;
  }
  j.off = offs;
  const int T = pool_threads();
  for (j.t0 = 0; j.t0 < total; j.t0 += per) {
    j.nt = total - j.t0 < per ? total - j.t0 : per;
    const long tpad = (j.nt + PR_RUN - 1) / PR_RUN * PR_RUN;
    if (tpad != j.tpad || j.t0 == 0) {
      j.tpad = tpad;
      for (int c = 0; c < p->cin; c++) offs[c] = (int)((c / 16) * tpad * 16 + c % 16);
    }
    pool_run(wino_in_task, &j);
    atomic_init(&j.next, 0);
    const long items = (long)WX * j.npanels;
    pool_run_dynamic(wino_gemm_task, &j, items < T ? (int)items : T);
    pool_run(wino_out_task, &j);
  }
}
#endif
