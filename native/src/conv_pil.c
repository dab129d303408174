/* Pixels-in-lanes convolution (AVX-512): stride-1 "same" convolutions with at most 16 output channels,
 * and strided ones (input = output x stride) through phase planes (below).
 *
 * The other kernels put output channels in the vector lanes, which needs an NCHW output transposed
 * in registers (conv_prow.c) and the input copied into zero-bordered phase planes. With 16 output
 * channels or fewer (the first stage of the CIFAR ResNets, 16 channels on 28x28 or 32x32) the roles
 * turn around: a register holds 16 consecutive pixels of the flattened output map of one channel,
 *   c[co] += x[ci][p + off(tap)] * w[co][ci][tap]   (16 lanes p, 16 accumulators co),
 * the input read in place with one unaligned load per (ci, tap): the output map has the input's
 * size, so tap (ky, kx) is the same shift for every pixel, and a per-(vector, tap) lane mask zeroes
 * what would fall in the padding (the row before or after, or outside the plane: masked lanes are
 * not read). The weights are the broadcast operand ([ci][tap][16]: one line per (ci, tap)), the
 * accumulators go to the output rows as they are. Every lane is a real pixel but for the map's last
 * vector. ResNet-20's 16 -> 16 on 28x28 at batch 128 against the pixel-row kernel (alternating calls,
 * two threads): forward 2.84 -> 2.41 ms, backward-input 2.65 -> 2.36 ms; its 1 -> 16 stem 0.48 -> 0.27.
 * (One thread: 5.3 -> 4.7 ms, where the kernel alone, its input in L1, runs at 115 GFLOP/s.) Since
 * session 20 Winograd F(4x4) takes those 16-channel layers in all three passes (conv.c asks it first),
 * so this kernel runs the stems (1 -> 16), channel counts that are not whole 16-channel blocks, and
 * everything with RESNET_WINO=0. */
#include "conv_internal.h"
#include "gemm.h"
#include "pool.h"
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>

static int pil_off(void) {
  static int off = -1;
  return env_zero("RESNET_PIL", &off) || strcmp(sgemm_isa(), "avx512") != 0 || no_implicit();
}

/* Whether pil_forward takes this geometry: AVX-512 (and the AVX-512 paths not switched off), groups
 * 1, stride 1, output the input's size (2 * pad = (k - 1) * dilation), 1 to 16 output channels, and
 * offsets that int holds. RESNET_PIL=0 turns it off (measurements). */
int pil_ok(const conv_p *p) {
  if (p->groups != 1 || p->sh != 1 || p->sw != 1 || p->cout < 1 || p->cout > 16 || p->n < 1 || p->cin < 1) return 0;
  if (p->oh != p->h || p->ow != p->w || 2 * p->ph != (p->kh - 1) * p->dh || 2 * p->pw != (p->kw - 1) * p->dw) return 0;
  if ((long)p->cin * p->h * p->w > (1L << 28) || (long)p->kh * p->kw > PIL_MAX_TAPS) return 0;
  return !pil_off();
}

/* One image's problem: out[co][q] = sum over (ci, tap) of W[ci][tap][co] * src[ci][q + toff[tap]]
 * for the pixels q of an oh x ow output map, the lanes whose source pixel falls outside the source
 * map masked off (mk, per vector and tap); output channels in panels of 16 (W per panel). */
typedef struct {
  int cin, cout, oh, ow, taps, nv;
  long xplane, yplane; /* floats between input / output channels */
  const int *toff;
  const __mmask16 *mk; /* [vector][tap] */
  const float *W;      /* [panel][ci][tap][16], zero past cout */
  const float *bias;
  int relu;
} pil_geo;

/* The 16 pixels from q0 of output channels [co0, co0 + 16) (those below cout stored), over all
 * (ci, tap): x the image's source, y / res its output / residual at q0, channel co0. */
__attribute__((target("avx512f"))) static void pil_vector(const pil_geo *g, const float *x, long q0, int co0, float *y,
                                                          const float *res) {
  const __mmask16 *mk = g->mk + (q0 / 16) * g->taps;
  const float *W = g->W + (long)(co0 / 16) * g->cin * g->taps * 16;
  __m512 c[16];
  _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) c[i] = _mm512_setzero_ps();
  /* the next vector's input lines (the last tap's, the newest data), fetched while this one
   * computes: 16 input planes are more streams than the hardware prefetcher follows (one thread,
   * 28x28: 5.3 -> 4.65 ms) */
  for (int ci = 0; ci < g->cin; ci++) _mm_prefetch((const char *)(x + ci * g->xplane + q0 + g->toff[g->taps - 1] + 16), _MM_HINT_T0);
  for (int t = 0; t < g->taps; t++) {
    const __mmask16 m = mk[t];
    const float *xp = x + q0 + g->toff[t];
    const float *w = W + t * 16;
    for (int ci = 0; ci < g->cin; ci++, xp += g->xplane, w += (long)g->taps * 16) {
      const __m512 xv = _mm512_maskz_loadu_ps(m, xp);
      _Pragma("GCC unroll 16") for (int co = 0; co < 16; co++) c[co] = _mm512_fmadd_ps(xv, _mm512_set1_ps(w[co]), c[co]);
    }
  }
  const long P = (long)g->oh * g->ow;
  const __mmask16 sm = P - q0 >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (P - q0)) - 1);
  const __m512 zero = _mm512_setzero_ps();
  const int n = g->cout - co0;
  /* unrolled with a constant bound, so that c[] stays in registers (a loop to cout spilled it) */
  _Pragma("GCC unroll 16") for (int co = 0; co < 16; co++) {
    if (co >= n) break;
    __m512 v = c[co];
    if (g->bias) v = _mm512_add_ps(v, _mm512_set1_ps(g->bias[co0 + co]));
    if (res) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(sm, res + co * g->yplane));
    if (g->relu) v = _mm512_max_ps(zero, v); /* NaN stays NaN: max returns its second operand */
    _mm512_mask_storeu_ps(y + co * g->yplane, sm, v);
  }
}

/* Vectors [v0, v1) of an image, all panels. */
static void pil_image(const pil_geo *g, const float *x, float *y, const float *res, long v0, long v1) {
  for (long v = v0; v < v1; v++)
    for (int co0 = 0; co0 < g->cout; co0 += 16) {
      const long o = (long)co0 * g->yplane + 16 * v;
      pil_vector(g, x, 16 * v, co0, y + o, res ? res + o : NULL);
    }
}

/* The lane masks of g (into *buf): a tap with source shift (dy[t], dx[t]) reads inside the sh x sw
 * source map (width sw == ow; g's rows may be several such maps one below the other, each its own
 * padding). */
static void pil_masks(pil_geo *g, buf_t *buf, const int *dy, const int *dx, int sh, int sw) {
  const long P = (long)g->oh * g->ow;
  g->nv = (int)((P + 15) / 16);
  __mmask16 *mk = (__mmask16 *)grow(buf, ((size_t)g->nv * g->taps * sizeof(__mmask16) + sizeof(float) - 1) / sizeof(float));
  int oy = 0, ox = 0; /* the pixel of lane l of vector v, walked along */
  for (int v = 0; v < g->nv; v++) {
    int ly[16], lx[16], n = 0;
    for (; n < 16 && 16L * v + n < P; n++) {
      ly[n] = oy;
      lx[n] = ox;
      if (++ox == g->ow) ox = 0, oy++;
    }
    for (int t = 0; t < g->taps; t++) {
      unsigned m = 0;
      for (int l = 0; l < n; l++)
        if (ly[l] % sh + dy[t] >= 0 && ly[l] % sh + dy[t] < sh && lx[l] + dx[t] >= 0 && lx[l] + dx[t] < sw) m |= 1u << l;
      mk[(long)v * g->taps + t] = (__mmask16)m;
    }
  }
  g->mk = mk;
}

/* Packs g->W from plain weights: W[panel][ci][t][co % 16] = w[co * sco + ci * sci + tap[t]]. */
static void pil_pack(pil_geo *g, buf_t *buf, const float *w, long sco, long sci, const int *tap) {
  const int panels = (g->cout + 15) / 16;
  const size_t n = (size_t)panels * g->cin * g->taps * 16;
  float *W = grow(buf, n);
  memset(W, 0, sizeof(float) * n);
  for (int co = 0; co < g->cout; co++)
    for (int ci = 0; ci < g->cin; ci++)
      for (int t = 0; t < g->taps; t++)
        W[(((long)(co / 16) * g->cin + ci) * g->taps + t) * 16 + co % 16] = w[co * sco + ci * sci + tap[t]];
  g->W = W;
}

#define PIL_MAX_PHASES 16
/* The backward-input's s x s problems, one per phase of dx (taps 0: the phase gets no tap). */
typedef struct {
  pil_geo g[PIL_MAX_PHASES];
  int toff[PIL_MAX_PHASES][PIL_MAX_PHASE_TAPS];
} pil_phases;

typedef struct {
  const conv_p *p;
  pil_geo g;
  const float *x, *residual;
  float *y;
  int chunks; /* per image */
  int kind;   /* 0 same size, 1 strided forward, 2 strided backward-input */
  const pil_phases *phases; /* kind 2 */
  const float *addend;
  pool_ranges items; /* (image, chunk of vectors), by ranges of images */
} pil_job;

static void strided_forward_image(const pil_job *j, long b);
static void strided_backward_image(const pil_job *j, long b);

/* Work items: (image, chunk of vectors), handed out by ranges of images (strided: whole images). */
static void pil_task(void *ctx, int tid, int nt) {
  (void)nt;
  pil_job *j = ctx;
  const conv_p *p = j->p;
  const long per = (j->g.nv + j->chunks - 1) / j->chunks;
  pool_cursor cur = pool_cursor_at(&j->items, tid);
  for (;;) {
    const long it = pool_ranges_next(&j->items, &cur);
    if (it < 0) break;
    const long b = it / j->chunks;
    if (j->kind == 1) {
      strided_forward_image(j, b);
      continue;
    }
    if (j->kind == 2) {
      strided_backward_image(j, b);
      continue;
    }
    const long v0 = (it % j->chunks) * per, v1 = v0 + per < j->g.nv ? v0 + per : j->g.nv;
    const long x_img = (long)p->cin * p->h * p->w, y_img = (long)p->cout * p->oh * p->ow;
    pil_image(&j->g, j->x + b * x_img, j->y + b * y_img, j->residual ? j->residual + b * y_img : NULL, v0, v1);
  }
}

static void pil_run(pil_job *j, int whole_images) {
  const int T = pool_threads();
  const conv_p *p = j->p;
  /* whole images when there are enough of them; else chunks of vectors, ~16 items a thread */
  j->chunks = whole_images || p->n >= 4 * T ? 1 : (int)((16L * T + p->n - 1) / p->n);
  if (j->chunks > j->g.nv) j->chunks = j->g.nv;
  const long items = (long)p->n * j->chunks;
  const int nthr = items < T ? (int)items : T;
  pool_ranges_init(&j->items, items, j->chunks, nthr);
  pool_run_dynamic(pil_task, j, nthr);
}

/* floor(a / s) for s > 0 */
static int fdiv(int a, int s) { return a >= 0 ? a / s : -((-a + s - 1) / s); }

/* The taps t of p's kernel as pixels in lanes reads them: the source shift (dy[t], dx[t]) from the
 * output pixel in rows and columns of the source map, and its offset toff[t] in floats from the
 * output pixel's index, where the source is the input itself (stride 1, output the input's size) or
 * its s x s phase planes [phase][ci][plane] (stride s: tap (ky, kx) reads phase ((ky - ph) mod s,
 * (kx - pw) mod s); plane = oh * ow, or a multiple for several images' planes side by side);
 * tap[t] = t. */
static void tap_geometry(const conv_p *p, long plane, int *toff, int *dy, int *dx, int *tap) {
  const int s = p->sh, taps = p->kh * p->kw;
  const long P = plane;
  for (int t = 0; t < taps; t++) {
    tap[t] = t;
    if (s == 1) {
      dy[t] = (t / p->kw) * p->dh - p->ph;
      dx[t] = (t % p->kw) * p->dw - p->pw;
      toff[t] = dy[t] * p->w + dx[t];
      continue;
    }
    const int ry = t / p->kw - p->ph, rx = t % p->kw - p->pw; /* input offset from s * (oy, ox) */
    dy[t] = fdiv(ry, s);
    dx[t] = fdiv(rx, s);
    const int py = ry - s * dy[t], px = rx - s * dx[t];
    toff[t] = (int)(((long)(py * s + px) * p->cin) * P + (long)dy[t] * p->ow + dx[t]);
  }
}

/* y = conv(x, w) (+ bias, + residual: may be y itself, then relu), w plain [cout][cin][kh][kw]. */
void pil_forward(float *y, const float *x, const float *w, const float *bias, const float *residual, int relu,
                 const conv_p *p) {
  static _Thread_local buf_t w_buf, mk_buf;
  pil_job j = {.p = p, .x = x, .residual = residual, .y = y};
  pil_geo *g = &j.g;
  *g = (pil_geo){.cin = p->cin, .cout = p->cout, .oh = p->h, .ow = p->w, .taps = p->kh * p->kw,
                 .xplane = (long)p->h * p->w, .yplane = (long)p->h * p->w, .bias = bias, .relu = relu};
  int toff[PIL_MAX_TAPS], dy[PIL_MAX_TAPS], dx[PIL_MAX_TAPS], tap[PIL_MAX_TAPS];
  tap_geometry(p, (long)p->oh * p->ow, toff, dy, dx, tap);
  g->toff = toff;
  pil_pack(g, &w_buf, w, (long)p->cin * g->taps, g->taps, tap);
  pil_masks(g, &mk_buf, dy, dx, p->h, p->w);
  pil_run(&j, 0);
}

/* ---- stride s > 1: the output map is the input's divided by s -----------------------------------
 * Forward: the input split into its s x s phase planes (phase (py, px) holds the pixels (s a + py,
 * s b + px)), each of the output's size, so that tap (ky, kx) reads phase ((ky - ph) mod s, (kx -
 * pw) mod s) shifted by floor((ky - ph) / s) rows (likewise columns): a stride-1 problem over the
 * phase planes with all the taps. Backward-input: each phase of dx is a stride-1 problem over dy
 * with the taps whose offsets fall on it, written to a scratch and interleaved into dx with the
 * addend (two permutes per 32 floats at stride 2). Both per image (the phases stay in L2).
 * ResNet-20 at batch 128 against the previous paths (alternating calls, two threads): 16 -> 32 on
 * 28x28 backward-input 2.35 -> 1.45 ms (the strided q grid), 32 -> 64 on 14x14 2.06 -> 1.71 ms
 * (im2col), 16 -> 32 forward 1.66 -> 1.54 ms (pixel rows); ResNet-18's 7x7/2 stem on 32x32 forward
 * 2.50 -> 1.63 ms. */

/* Whether pil_forward_strided / pil_backward_input_strided take this geometry: as pil_ok but stride
 * s = sh = sw in 2..4 without dilation, input s times the output (h = s oh, w = s ow), 16 to 64
 * channels on the side that pixels in lanes computes (output channels forward, input channels
 * backward: the stem's 3-channel backward-input ran 3x slower), maps that fill the lanes (below)
 * and at least 4 images a thread. */
int pil_strided_ok(const conv_p *p, int backward) {
  const int s = p->sh;
  if (p->groups != 1 || s < 2 || s > 4 || p->sw != s || p->dh != 1 || p->dw != 1 || p->n < 4 * pool_threads()) return 0;
  /* backward from 7x7 (32 -> 64 on 14x14: -36 %), forward from 12x12 (on 7x7 it lost 14 % to the
   * pixel-row tiles; the 7x7/2 stem of ResNet-18 on 32x32, to 16x16: -35 %) */
  const long P = (long)p->oh * p->ow;
  if (p->h != s * p->oh || p->w != s * p->ow || P < (backward ? 49 : 144) || (long)p->kh * p->kw > PIL_MAX_PHASE_TAPS) return 0;
  const int side = backward ? p->cin : p->cout; /* its 16-channel panels: at least one full */
  if (side < 16 || side > 64 || p->cin < 1 || p->cout < 1) return 0;
  if ((long)p->cin * p->h * p->w > (1L << 28) || (long)p->cout * p->h * p->w > (1L << 28)) return 0;
  return !pil_off();
}

static _Thread_local buf_t phase_buf;

/* The s x s phase planes of image x ([phase][ci][oh * ow], the planes P floats apart: oh * ow, or
 * more for several images' planes side by side). */
__attribute__((target("avx512f"))) static void split_phases(const conv_p *p, const float *x, float *ph, long P) {
  const int s = p->sh, ow = p->ow;
  const long HW = (long)p->h * p->w;
  const __m512i ev = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i od = _mm512_add_epi32(ev, _mm512_set1_epi32(1));
  for (int ci = 0; ci < p->cin; ci++)
    for (int a = 0; a < p->oh; a++)
      for (int py = 0; py < s; py++) {
        const float *row = x + ci * HW + (long)(s * a + py) * p->w;
        float *d0 = ph + ((long)(py * s) * p->cin + ci) * P + (long)a * ow;
        if (s == 2) {
          float *d1 = d0 + (long)p->cin * P;
          for (int b = 0; b < ow; b += 16) {
            const int n = ow - b < 16 ? ow - b : 16; /* outputs; 2n inputs */
            const __mmask16 m0 = 2 * n >= 16 ? 0xFFFF : (__mmask16)((1u << (2 * n)) - 1);
            const __mmask16 m1 = 2 * n <= 16 ? 0 : (__mmask16)((1u << (2 * n - 16)) - 1);
            const __m512 v0 = _mm512_maskz_loadu_ps(m0, row + 2 * b), v1 = _mm512_maskz_loadu_ps(m1, row + 2 * b + 16);
            const __mmask16 sm = (__mmask16)((1u << n) - 1);
            _mm512_mask_storeu_ps(d0 + b, sm, _mm512_permutex2var_ps(v0, ev, v1));
            _mm512_mask_storeu_ps(d1 + b, sm, _mm512_permutex2var_ps(v0, od, v1));
          }
          continue;
        }
        for (int px = 0; px < s; px++) {
          float *d = d0 + (long)px * p->cin * P;
          for (int b = 0; b < ow; b++) d[b] = row[s * b + px];
        }
      }
}

static void strided_forward_image(const pil_job *j, long b) {
  const conv_p *p = j->p;
  const long P = (long)p->oh * p->ow;
  float *ph = grow(&phase_buf, (size_t)p->sh * p->sw * p->cin * P);
  split_phases(p, j->x + b * p->cin * p->h * p->w, ph, P);
  const long y_img = (long)p->cout * P;
  pil_image(&j->g, ph, j->y + b * y_img, j->residual ? j->residual + b * y_img : NULL, 0, j->g.nv);
}

void pil_forward_strided(float *y, const float *x, const float *w, const float *bias, const float *residual, int relu,
                         const conv_p *p) {
  static _Thread_local buf_t w_buf, mk_buf;
  const long P = (long)p->oh * p->ow;
  pil_job j = {.p = p, .x = x, .residual = residual, .y = y, .kind = 1};
  pil_geo *g = &j.g;
  *g = (pil_geo){.cin = p->cin, .cout = p->cout, .oh = p->oh, .ow = p->ow, .taps = p->kh * p->kw, .xplane = P,
                 .yplane = P, .bias = bias, .relu = relu};
  int toff[PIL_MAX_PHASE_TAPS], dy[PIL_MAX_PHASE_TAPS], dx[PIL_MAX_PHASE_TAPS], tap[PIL_MAX_PHASE_TAPS];
  tap_geometry(p, P, toff, dy, dx, tap);
  g->toff = toff;
  pil_pack(g, &w_buf, w, (long)p->cin * g->taps, g->taps, tap);
  pil_masks(g, &mk_buf, dy, dx, p->oh, p->ow);
  pil_run(&j, 1);
}


/* dx[ci][s a + py][s b + px] = phase (py, px)[ci][a][b] (+ addend at the same place) */
__attribute__((target("avx512f"))) static void interleave_phases(const conv_p *p, const float *ph, float *dx, const float *ad) {
  const int s = p->sh, ow = p->ow;
  const long P = (long)p->oh * ow, HW = (long)p->h * p->w;
  const __m512i lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i hi = _mm512_add_epi32(lo, _mm512_set1_epi32(8));
  for (int ci = 0; ci < p->cin; ci++)
    for (int y = 0; y < p->h; y++) {
      const int a = y / s, py = y % s;
      float *d = dx + ci * HW + (long)y * p->w;
      const float *r = ad ? ad + ci * HW + (long)y * p->w : NULL;
      const float *q0 = ph + ((long)(py * s) * p->cin + ci) * P + (long)a * ow;
      if (s == 2) {
        const float *q1 = q0 + (long)p->cin * P;
        for (int b = 0; b < ow; b += 16) {
          const int n = ow - b < 16 ? ow - b : 16; /* from each phase; 2n outputs */
          const __mmask16 m = (__mmask16)((1u << n) - 1);
          const __mmask16 m0 = 2 * n >= 16 ? 0xFFFF : (__mmask16)((1u << (2 * n)) - 1);
          const __mmask16 m1 = 2 * n <= 16 ? 0 : (__mmask16)((1u << (2 * n - 16)) - 1);
          const __m512 e = _mm512_maskz_loadu_ps(m, q0 + b), o = _mm512_maskz_loadu_ps(m, q1 + b);
          __m512 v0 = _mm512_permutex2var_ps(e, lo, o), v1 = _mm512_permutex2var_ps(e, hi, o);
          if (r) {
            v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, r + 2 * b));
            v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, r + 2 * b + 16));
          }
          _mm512_mask_storeu_ps(d + 2 * b, m0, v0);
          _mm512_mask_storeu_ps(d + 2 * b + 16, m1, v1);
        }
        continue;
      }
      for (int px = 0; px < s; px++) {
        const float *q = q0 + (long)px * p->cin * P;
        for (int bb = 0; bb < ow; bb++) d[s * bb + px] = q[bb] + (r ? r[s * bb + px] : 0.0f);
      }
    }
}

static void strided_backward_image(const pil_job *j, long b) {
  const conv_p *p = j->p;
  const pil_phases *ps = j->phases;
  const int s = p->sh;
  const long P = (long)p->oh * p->ow, HW = (long)p->h * p->w;
  float *ph = grow(&phase_buf, (size_t)s * s * p->cin * P);
  const float *dy = j->x + b * p->cout * P;
  for (int f = 0; f < s * s; f++) {
    float *o = ph + (long)f * p->cin * P;
    if (ps->g[f].taps == 0) memset(o, 0, sizeof(float) * (size_t)p->cin * P);
    else pil_image(&ps->g[f], dy, o, NULL, 0, ps->g[f].nv);
  }
  interleave_phases(p, ph, j->y + b * p->cin * HW, j->addend ? j->addend + b * p->cin * HW : NULL);
}

/* dx = the backward-input of the strided convolution p (+ addend, which may be dx itself). */
void pil_backward_input_strided(float *dx, const float *dy, const float *w, const conv_p *p, const float *addend) {
  static _Thread_local buf_t w_buf[PIL_MAX_PHASES], mk_buf[PIL_MAX_PHASES];
  static _Thread_local pil_phases ps;
  const int s = p->sh, KK = p->kh * p->kw;
  const long P = (long)p->oh * p->ow;
  for (int py = 0; py < s; py++)
    for (int px = 0; px < s; px++) {
      const int f = py * s + px;
      pil_geo *g = &ps.g[f];
      *g = (pil_geo){.cin = p->cout, .cout = p->cin, .oh = p->oh, .ow = p->ow, .xplane = P, .yplane = P};
      int dys[PIL_MAX_PHASE_TAPS], dxs[PIL_MAX_PHASE_TAPS], tap[PIL_MAX_PHASE_TAPS], n = 0;
      /* dx pixel (s a + py, s b + px) takes tap (ky, kx) from dy (a + dy, b + dx) where
       * s (a + dy) + ky - ph = s a + py */
      for (int ky = 0; ky < p->kh; ky++)
        for (int kx = 0; kx < p->kw; kx++) {
          const int ry = py + p->ph - ky, rx = px + p->pw - kx;
          if (ry - s * fdiv(ry, s) != 0 || rx - s * fdiv(rx, s) != 0) continue;
          dys[n] = ry / s;
          dxs[n] = rx / s;
          ps.toff[f][n] = dys[n] * p->ow + dxs[n];
          tap[n++] = ky * p->kw + kx;
        }
      g->taps = n;
      g->toff = ps.toff[f];
      if (n == 0) continue;
      pil_pack(g, &w_buf[f], w, KK, (long)p->cin * KK, tap);
      pil_masks(g, &mk_buf[f], dys, dxs, p->oh, p->ow);
    }
  pil_job j = {.p = p, .x = dy, .y = dx, .addend = addend, .kind = 2, .phases = &ps};
  j.g.nv = 1;
  pil_run(&j, 1);
}

/* ---- weight gradient ------------------------------------------------------------------------------
 * dw[co][ci][t] = sum over images and output pixels q of dy[co][q] * src[ci][q + toff[t]], the source
 * being the input (stride 1, same size) or its phase planes (strided), read as the forward reads
 * them: 16 pixels in lanes, one masked load per (ci, tap) and vector. The images come in groups of
 * BW_IMAGES; where a map's last vector would leave more than a tenth of its lanes empty (a 7x7 map
 * fills 49 of 64), a group's gradients and sources are copied side by side into one stream per
 * channel ([co][images * P], [phase][ci][images * P]) so that the lanes run on across images, the
 * masks keeping every tap within its image; else they are read in place (the phase planes split
 * per image). A register tile of BW_CO output channels x BW_K (ci, tap) pairs keeps BW_CO x BW_K
 * vectors of partial sums over the group (BW_CO + BW_K loads a vector for BW_CO x BW_K
 * multiply-adds), summed across the lanes at its end. Each group sums into its own slot and the
 * slots are added in order: the bits do not depend on the thread count. */
#define BW_CO 4
#define BW_K 6
#define BW_IMAGES 8

typedef struct {
  int toff[PIL_MAX_TAPS];
  pil_geo g; /* of a stream of images: oh = images x the output's rows; xplane = its length */
} bw_stream;

typedef struct {
  const conv_p *p;
  int packed;           /* groups copied into one stream each; else read image by image */
  bw_stream full, last; /* packed: the streams of the groups of BW_IMAGES images and of the last
                         * group (the same when it has as many); else full is one image's, last unset */
  const float *x, *dy;
  float *part; /* [group][cout][cin * taps] */
  int groups;
  pool_ranges items; /* the groups, by ranges */
} pil_bw_job;

/* Pairs [k0, k0 + BW_K) (k = ci * taps + t): their offsets in the source stream, and their lane masks
 * per vector gathered into mb[vector][BW_K] (mask 0 past K), so that the block's loop reads them
 * through one pointer. */
static void bw_pairs(const pil_geo *g, long k0, long K, long *sk, __mmask16 *mb) {
  for (int k = 0; k < BW_K; k++) {
    const long kk = k0 + k < K ? k0 + k : k0;
    const int t = (int)(kk % g->taps);
    sk[k] = (kk / g->taps) * g->xplane + g->toff[t];
    for (int v = 0; v < g->nv; v++) mb[v * BW_K + k] = k0 + k < K ? g->mk[(long)v * g->taps + t] : 0;
  }
}

/* The block of output channels [co0, co0 + BW_CO) x pairs [k0, k0 + BW_K) over n streams of geometry
 * g (sources src[i], gradients dys[i] [cout][length]), into out[co][k] (row stride K), with the
 * pairs' offsets sk and masks mb (bw_pairs); channels past the end read `zero` (a zero row), and
 * neither they nor pairs past the end are stored. */
__attribute__((target("avx512f"))) static void bw_block(const pil_geo *g, int cout, int n, const float *const *src,
                                                       const float *const *dys, int co0, long k0, float *out, long K,
                                                       const long *sk, const __mmask16 *mb, const float *zero) {
  const long L = (long)g->oh * g->ow;
  const int nco = cout - co0 < BW_CO ? cout - co0 : BW_CO;
  const int nk = K - k0 < BW_K ? (int)(K - k0) : BW_K;
  const __mmask16 tail = L % 16 ? (__mmask16)((1u << (L % 16)) - 1) : (__mmask16)0xFFFF;
  __m512 acc[BW_CO][BW_K];
  _Pragma("GCC unroll 8") for (int r = 0; r < BW_CO; r++) _Pragma("GCC unroll 8") for (int k = 0; k < BW_K; k++) acc[r][k] = _mm512_setzero_ps();
  for (int i = 0; i < n; i++) {
    const float *d[BW_CO];
    _Pragma("GCC unroll 8") for (int r = 0; r < BW_CO; r++) d[r] = r < nco ? dys[i] + (long)(co0 + r) * L : zero;
    const float *s = src[i];
    const __mmask16 *m = mb;
    for (int v = 0; v < g->nv; v++, s += 16, m += BW_K) {
      const __mmask16 dm = v == g->nv - 1 ? tail : (__mmask16)0xFFFF;
      __m512 dv[BW_CO];
      _Pragma("GCC unroll 8") for (int r = 0; r < BW_CO; r++) dv[r] = _mm512_maskz_loadu_ps(dm, d[r] + 16L * v);
      _Pragma("GCC unroll 8") for (int k = 0; k < BW_K; k++) {
        const __m512 xv = _mm512_maskz_loadu_ps(m[k], s + sk[k]);
        _Pragma("GCC unroll 8") for (int r = 0; r < BW_CO; r++) acc[r][k] = _mm512_fmadd_ps(dv[r], xv, acc[r][k]);
      }
    }
  }
  /* unrolled with constant bounds, so that acc[] stays in registers (as pil_vector's c[]) */
  _Pragma("GCC unroll 8") for (int r = 0; r < BW_CO; r++) _Pragma("GCC unroll 8") for (int k = 0; k < BW_K; k++) {
    if (r < nco && k < nk) out[(long)(co0 + r) * K + k0 + k] = _mm512_reduce_add_ps(acc[r][k]);
  }
}

/* Groups of images handed out in order: the group's streams (packed: the gradients copied, the input
 * copied or split into phase planes side by side; else the input split per image where strided), then
 * every block, into the group's slot. */
static void bw_task(void *ctx, int tid, int nt) {
  (void)nt;
  static _Thread_local buf_t src_buf, dy_buf, mb_buf, zero_buf;
  pil_bw_job *j = ctx;
  const conv_p *p = j->p;
  const int s = p->sh;
  const long P = (long)p->oh * p->ow, K = (long)p->cin * j->full.g.taps, HW = (long)p->h * p->w;
  const long L = (long)BW_IMAGES * P < (long)p->n * P ? (long)BW_IMAGES * P : (long)p->n * P; /* a group's pixels */
  const int nv = j->full.g.nv; /* the most vectors of a stream (the last group's are fewer or as many) */
  __mmask16 *mb = (__mmask16 *)grow(&mb_buf, ((size_t)nv * BW_K * sizeof(__mmask16) + sizeof(float) - 1) / sizeof(float));
  float *zero = grow(&zero_buf, (size_t)nv * 16);
  memset(zero, 0, sizeof(float) * (size_t)nv * 16);
  float *src = s > 1 || j->packed ? grow(&src_buf, (size_t)s * s * p->cin * L) : NULL;
  float *dys = j->packed ? grow(&dy_buf, (size_t)p->cout * L) : NULL;
  pool_cursor cur = pool_cursor_at(&j->items, tid);
  for (;;) {
    const long grp = pool_ranges_next(&j->items, &cur);
    if (grp < 0) break;
    const long b0 = grp * BW_IMAGES;
    const int nimg = p->n - b0 < BW_IMAGES ? (int)(p->n - b0) : BW_IMAGES;
    const pil_geo *g = j->packed && grp == j->groups - 1 ? &j->last.g : &j->full.g;
    const float *srcs[BW_IMAGES], *dyi[BW_IMAGES];
    const long len = j->packed ? nimg * P : P, img = (long)s * s * p->cin * P; /* a stream's pixels; phase planes per image */
    for (int i = 0; i < nimg; i++) {
      const float *xi = j->x + (b0 + i) * p->cin * HW, *di = j->dy + (b0 + i) * p->cout * P;
      srcs[i] = s > 1 ? src + i * img : xi;
      dyi[i] = di;
      if (!j->packed) {
        if (s > 1) split_phases(p, xi, src + i * img, P);
        continue;
      }
      if (s > 1) split_phases(p, xi, src + i * P, len);
      else
        for (int ci = 0; ci < p->cin; ci++) memcpy(src + ci * len + i * P, xi + ci * HW, sizeof(float) * (size_t)P);
      for (int co = 0; co < p->cout; co++) memcpy(dys + co * len + i * P, di + co * P, sizeof(float) * (size_t)P);
    }
    const int n = j->packed ? 1 : nimg;
    if (j->packed) {
      srcs[0] = src;
      dyi[0] = dys;
    }
    float *out = j->part + grp * p->cout * K;
    for (long k0 = 0; k0 < K; k0 += BW_K) {
      long sk[BW_K];
      bw_pairs(g, k0, K, sk, mb);
      for (int co0 = 0; co0 < p->cout; co0 += BW_CO) bw_block(g, p->cout, n, srcs, dyi, co0, k0, out, K, sk, mb, zero);
    }
  }
}

/* The stream of a group of `images` images for geometry p (into *st: its tap offsets and masks). */
static void bw_stream_at(bw_stream *st, const conv_p *p, int images, buf_t *mk_buf) {
  pil_geo *g = &st->g;
  const long len = (long)images * p->oh * p->ow;
  *g = (pil_geo){.cin = p->cin, .cout = p->cout, .oh = images * p->oh, .ow = p->ow, .taps = p->kh * p->kw, .xplane = len};
  int dys[PIL_MAX_TAPS], dxs[PIL_MAX_TAPS], tap[PIL_MAX_TAPS];
  tap_geometry(p, len, st->toff, dys, dxs, tap);
  g->toff = st->toff;
  pil_masks(g, mk_buf, dys, dxs, p->sh == 1 ? p->h : p->oh, p->sh == 1 ? p->w : p->ow);
}

/* Whether pil_backward_weight takes this geometry: the forward's (pil_ok without its channel limit, or
 * pil_strided_ok's maps), on maps of at least 49 pixels (ResNet-18's strided layers to 4x4 and 2x2
 * lost 30-180 % packed) and with a group's sources and gradients within ~640 KB of L2. Against the
 * other paths (alternating calls, 2 threads, caches flushed): ResNet-20's 1 -> 16 stem on 28x28
 * (batch 128) 0.52 -> 0.34 ms, its 16 -> 32 3x3/2 2.15 -> 1.93 ms, 32 -> 64 3x3/2 to 7x7 (packed)
 * 2.09 -> 1.79-1.85 ms; ResNet-18's 7x7/2 stem on 32x32 (batch 64) 2.46 -> 1.99 ms. Packing the
 * stems' groups (whole lanes already) cost 12-50 %, hence the in-place reading. Other 3x3 layers the
 * Winograd paths do not take gain too (batch 64: 24 channels on 9x9 0.89 -> 0.36 ms, packed; 16 -> 32
 * 3x3/2 on 16x16 0.45-0.61 -> 0.28-0.34 ms); 1x1 kernels lose (above). RESNET_PIL_BW=0 turns it off
 * (measurements). */
int pil_bw_ok(const conv_p *p) {
  static int off = -1;
  if (env_zero("RESNET_PIL_BW", &off) || pil_off() || p->groups != 1 || p->n < 1 || p->cin < 1 || p->cout < 1) return 0;
  if (p->kh * p->kw == 1) return 0; /* a 1x1 kernel's gradient is a plain GEMM: 64 -> 64 on 8x8 at batch 64 0.20 -> 0.27 ms here */
  const int s = p->sh;
  const long P = (long)p->oh * p->ow;
  if (P < 49 || (long)BW_IMAGES * ((long)s * s * p->cin + p->cout) * P > 160L * 1024) return 0;
  if (s == 1) return p->sw == 1 && p->oh == p->h && p->ow == p->w && 2 * p->ph == (p->kh - 1) * p->dh &&
                     2 * p->pw == (p->kw - 1) * p->dw && (long)p->kh * p->kw <= PIL_MAX_TAPS;
  return s <= 4 && p->sw == s && p->dh == 1 && p->dw == 1 && p->h == s * p->oh && p->w == s * p->ow &&
         (long)p->kh * p->kw <= PIL_MAX_PHASE_TAPS;
}

/* dw = the weight gradient of p (pil_bw_ok) from x and dy. */
void pil_backward_weight(float *dw, const float *x, const float *dy, const conv_p *p) {
  static _Thread_local buf_t mk_full, mk_last, part_buf;
  pil_bw_job j = {.p = p, .x = x, .dy = dy};
  j.groups = (p->n + BW_IMAGES - 1) / BW_IMAGES;
  const long P = (long)p->oh * p->ow;
  j.packed = P * 10 < (P + 15) / 16 * 16 * 9; /* under 90 % of the lanes real pixels */
  if (j.packed) {
    bw_stream_at(&j.full, p, p->n < BW_IMAGES ? p->n : BW_IMAGES, &mk_full);
    bw_stream_at(&j.last, p, p->n - (j.groups - 1) * BW_IMAGES, &mk_last);
  } else {
    bw_stream_at(&j.full, p, 1, &mk_full);
  }
  const long K = (long)p->cin * p->kh * p->kw, wsz = (long)p->cout * K;
  j.part = grow(&part_buf, (size_t)j.groups * wsz);
  const int T = pool_threads(), nthr = j.groups < T ? j.groups : T;
  pool_ranges_init(&j.items, j.groups, 1, nthr);
  pool_run_dynamic(bw_task, &j, nthr);
  memcpy(dw, j.part, sizeof(float) * (size_t)wsz);
  for (int grp = 1; grp < j.groups; grp++)
    for (long i = 0; i < wsz; i++) dw[i] += j.part[grp * wsz + i];
}

#endif
