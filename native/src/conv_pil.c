/* Pixels-in-lanes convolution (AVX-512): stride-1 "same" convolutions with at most 16 output channels.
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
 * (One thread: 5.3 -> 4.7 ms, where the kernel alone, its input in L1, runs at 115 GFLOP/s.) */
#include "conv_internal.h"
#include "gemm.h"
#include "pool.h"
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>

/* Whether pil_forward takes this geometry: AVX-512 (and the AVX-512 paths not switched off), groups
 * 1, stride 1, output the input's size (2 * pad = (k - 1) * dilation), 1 to 16 output channels, and
 * offsets that int holds. RESNET_PIL=0 turns it off (measurements). */
int pil_ok(const conv_p *p) {
  static int off = -1;
  if (env_zero("RESNET_PIL", &off)) return 0;
  if (p->groups != 1 || p->sh != 1 || p->sw != 1 || p->cout < 1 || p->cout > 16 || p->n < 1 || p->cin < 1) return 0;
  if (p->oh != p->h || p->ow != p->w || 2 * p->ph != (p->kh - 1) * p->dh || 2 * p->pw != (p->kw - 1) * p->dw) return 0;
  if ((long)p->cin * p->h * p->w > (1L << 28) || (long)p->kh * p->kw > 4096) return 0;
  return strcmp(sgemm_isa(), "avx512") == 0 && !no_implicit();
}

typedef struct {
  const conv_p *p;
  const float *x, *W, *bias, *residual;
  float *y;
  const __mmask16 *mk; /* [vector][tap] */
  const int *toff;     /* [tap]: the tap's shift in the flattened map */
  int taps, nv, chunks; /* vectors per map, chunks per image */
  int relu;
  atomic_long next;
} pil_job;

/* The 16 output channels (cout of them stored) of the 16 pixels from p0 over all (ci, tap): x the
 * image's input, y / res the image's output / residual at p0. */
__attribute__((target("avx512f"))) static void pil_vector(const pil_job *j, const float *x, long p0, const __mmask16 *mk,
                                                          float *y, const float *res) {
  const conv_p *p = j->p;
  const long plane = (long)p->h * p->w;
  __m512 c[16];
  _Pragma("GCC unroll 16") for (int i = 0; i < 16; i++) c[i] = _mm512_setzero_ps();
  /* the next vector's input lines (the bottom-right tap's, the newest data), fetched while this one
   * computes: 16 input planes are more streams than the hardware prefetcher follows (one thread,
   * 28x28: 5.3 -> 4.65 ms) */
  for (int ci = 0; ci < p->cin; ci++) _mm_prefetch((const char *)(x + ci * plane + p0 + j->toff[j->taps - 1] + 16), _MM_HINT_T0);
  for (int t = 0; t < j->taps; t++) {
    const __mmask16 m = mk[t];
    const float *xp = x + p0 + j->toff[t];
    const float *w = j->W + t * 16;
    for (int ci = 0; ci < p->cin; ci++, xp += plane, w += (long)j->taps * 16) {
      const __m512 xv = _mm512_maskz_loadu_ps(m, xp);
      _Pragma("GCC unroll 16") for (int co = 0; co < 16; co++) c[co] = _mm512_fmadd_ps(xv, _mm512_set1_ps(w[co]), c[co]);
    }
  }
  const __mmask16 sm = plane - p0 >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (plane - p0)) - 1);
  const __m512 zero = _mm512_setzero_ps();
  /* unrolled with a constant bound, so that c[] stays in registers (a loop to cout spilled it) */
  _Pragma("GCC unroll 16") for (int co = 0; co < 16; co++) {
    if (co >= p->cout) break;
    __m512 v = c[co];
    if (j->bias) v = _mm512_add_ps(v, _mm512_set1_ps(j->bias[co]));
    if (res) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(sm, res + co * plane));
    if (j->relu) v = _mm512_max_ps(zero, v); /* NaN stays NaN: max returns its second operand */
    _mm512_mask_storeu_ps(y + co * plane, sm, v);
  }
}

/* Work items: (image, chunk of vectors), handed out in order. */
__attribute__((target("avx512f"))) static void pil_task(void *ctx, int tid, int nt) {
  (void)tid; (void)nt;
  pil_job *j = ctx;
  const conv_p *p = j->p;
  const long plane = (long)p->h * p->w, per = (j->nv + j->chunks - 1) / j->chunks;
  for (;;) {
    const long it = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
    if (it >= (long)p->n * j->chunks) break;
    const long b = it / j->chunks, v0 = (it % j->chunks) * per, v1 = v0 + per < j->nv ? v0 + per : j->nv;
    const float *x = j->x + b * p->cin * plane;
    float *y = j->y + b * p->cout * plane;
    const float *res = j->residual ? j->residual + b * p->cout * plane : NULL;
    for (long v = v0; v < v1; v++) pil_vector(j, x, 16 * v, j->mk + v * j->taps, y + 16 * v, res ? res + 16 * v : NULL);
  }
}

/* y = conv(x, w) (+ bias, + residual: may be y itself, then relu), w plain [cout][cin][kh][kw]. */
void pil_forward(float *y, const float *x, const float *w, const float *bias, const float *residual, int relu,
                 const conv_p *p) {
  static _Thread_local buf_t w_buf, mk_buf;
  const int taps = p->kh * p->kw;
  const long plane = (long)p->h * p->w;
  const int nv = (int)((plane + 15) / 16);
  /* weights as [ci][tap][16], zero past cout */
  float *W = grow(&w_buf, (size_t)p->cin * taps * 16);
  memset(W, 0, sizeof(float) * (size_t)p->cin * taps * 16);
  for (int co = 0; co < p->cout; co++)
    for (int ci = 0; ci < p->cin; ci++)
      for (int t = 0; t < taps; t++) W[((long)ci * taps + t) * 16 + co] = w[((long)co * p->cin + ci) * taps + t];
  /* per (vector, tap): the lanes whose input pixel lies inside the map */
  __mmask16 *mk = (__mmask16 *)grow(&mk_buf, ((size_t)nv * taps * sizeof(__mmask16) + sizeof(float) - 1) / sizeof(float));
  int toff[4096];
  for (int t = 0; t < taps; t++) toff[t] = ((t / p->kw) * p->dh - p->ph) * p->w + (t % p->kw) * p->dw - p->pw;
  int oy = 0, ox = 0; /* the pixel of lane l of vector v, walked along */
  for (int v = 0; v < nv; v++) {
    int ly[16], lx[16], n = 0;
    for (; n < 16 && 16L * v + n < plane; n++) {
      ly[n] = oy;
      lx[n] = ox;
      if (++ox == p->w) ox = 0, oy++;
    }
    for (int t = 0; t < taps; t++) {
      const int dy = (t / p->kw) * p->dh - p->ph, dx = (t % p->kw) * p->dw - p->pw;
      unsigned m = 0;
      for (int l = 0; l < n; l++)
        if (ly[l] + dy >= 0 && ly[l] + dy < p->h && lx[l] + dx >= 0 && lx[l] + dx < p->w) m |= 1u << l;
      mk[(long)v * taps + t] = (__mmask16)m;
    }
  }
  pil_job j = {.p = p, .x = x, .W = W, .bias = bias, .residual = residual, .y = y, .mk = mk, .toff = toff,
               .taps = taps, .nv = nv, .relu = relu};
  /* whole images when there are enough of them; else chunks of vectors, ~16 items a thread */
  const int T = pool_threads();
  j.chunks = p->n >= 4 * T ? 1 : (int)((16L * T + p->n - 1) / p->n);
  if (j.chunks > nv) j.chunks = nv;
  atomic_init(&j.next, 0);
  const long items = (long)p->n * j.chunks;
  pool_run_dynamic(pil_task, &j, items < T ? (int)items : T);
}

#endif
