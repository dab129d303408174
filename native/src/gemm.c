/* Packed SGEMM in the style of BLIS/GotoBLAS.
 *
 * C[M,N] (row-major) = alpha * op(A) * op(B) + beta * C. The loops, outermost first:
 *   pc over K in KC blocks:  pack op(B)[pc:pc+KC, 0:N] into NR-column panels  (L3 / L2)
 *   ic over M in MC blocks:  pack op(A)[ic:ic+MC, pc:pc+KC] into MR-row panels (L2)
 *   jr over N in NR steps, ir over MC in MR steps: the micro-kernel updates an MR x NR tile of C
 *   held in registers, reading one MR-panel of A and one NR-panel of B per k.
 * Packing pads partial panels with zeros, so the micro-kernel always computes a full tile; edge
 * tiles are written through a small buffer. Transposes cost nothing: packing reads either way.
 *
 * Threads take strips of C's columns (or rows when M > N) from a shared counter, a few strips per
 * thread; each thread packs what it reads, so there is no barrier inside a GEMM.
 *
 * Micro-kernels: AVX-512 14x32 (28 zmm accumulators), AVX2+FMA 6x16 (12 ymm), portable 4x16. */
#include "gemm.h"
#include "pool.h"
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#include "simd.h"
#endif

#define KC 192
#define NC 768 /* packed B block: KC x NC floats = 768 KB, stays in the 1-2 MB L2 */
#define MC_ROWS 168 /* multiple of every MR below (14, 6, 4) */

typedef void (*ukernel_fn)(int kc, const float *Ap, const float *Bp, float *C, int ldc, float alpha, float beta);

typedef struct {
  int mr, nr;
  ukernel_fn kernel;
  const char *name;
  ukernel_fn tail; /* for a last panel with at most tail_rows real rows (NULL: the kernel) */
  int tail_rows;
} isa_t;

/* ---- portable ------------------------------------------------------------------------------ */
#define P_MR 4
#define P_NR 16
static void ukernel_portable(int kc, const float *Ap, const float *Bp, float *C, int ldc, float alpha, float beta) {
  float acc[P_MR][P_NR];
  memset(acc, 0, sizeof acc);
  for (int k = 0; k < kc; k++) {
    const float *a = Ap + k * P_MR, *b = Bp + k * P_NR;
    for (int r = 0; r < P_MR; r++)
      for (int c = 0; c < P_NR; c++) acc[r][c] += a[r] * b[c];
  }
  for (int r = 0; r < P_MR; r++)
    for (int c = 0; c < P_NR; c++)
      C[r * ldc + c] = beta == 0.0f ? alpha * acc[r][c] : alpha * acc[r][c] + beta * C[r * ldc + c];
}

#if defined(__x86_64__)
/* ---- AVX2 + FMA: 6 x 16 --------------------------------------------------------------------- */
#define A2_MR 6
#define A2_NR 16
__attribute__((target("avx2,fma"))) static void ukernel_avx2(int kc, const float *Ap, const float *Bp, float *C, int ldc, float alpha, float beta) {
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
  __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps(), c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
  __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps(), c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
  for (int k = 0; k < kc; k++) {
    __m256 b0 = _mm256_loadu_ps(Bp), b1 = _mm256_loadu_ps(Bp + 8);
    __m256 a;
    a = _mm256_broadcast_ss(Ap + 0); c00 = _mm256_fmadd_ps(a, b0, c00); c01 = _mm256_fmadd_ps(a, b1, c01);
    a = _mm256_broadcast_ss(Ap + 1); c10 = _mm256_fmadd_ps(a, b0, c10); c11 = _mm256_fmadd_ps(a, b1, c11);
    a = _mm256_broadcast_ss(Ap + 2); c20 = _mm256_fmadd_ps(a, b0, c20); c21 = _mm256_fmadd_ps(a, b1, c21);
    a = _mm256_broadcast_ss(Ap + 3); c30 = _mm256_fmadd_ps(a, b0, c30); c31 = _mm256_fmadd_ps(a, b1, c31);
    a = _mm256_broadcast_ss(Ap + 4); c40 = _mm256_fmadd_ps(a, b0, c40); c41 = _mm256_fmadd_ps(a, b1, c41);
    a = _mm256_broadcast_ss(Ap + 5); c50 = _mm256_fmadd_ps(a, b0, c50); c51 = _mm256_fmadd_ps(a, b1, c51);
    Ap += A2_MR;
    Bp += A2_NR;
  }
  __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
  __m256 acc[12] = {c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51};
  for (int r = 0; r < A2_MR; r++) {
    for (int h = 0; h < 2; h++) {
      float *p = C + r * ldc + h * 8;
      __m256 v = _mm256_mul_ps(acc[r * 2 + h], va);
      if (beta != 0.0f) v = _mm256_fmadd_ps(vb, _mm256_loadu_ps(p), v);
      _mm256_storeu_ps(p, v);
    }
  }
}

/* ---- AVX-512: 14 x 32 ----------------------------------------------------------------------- */
#define A5_MR 14
#define A5_NR 32
__attribute__((target("avx512f"))) static void ukernel_avx512(int kc, const float *Ap, const float *Bp, float *C, int ldc, float alpha, float beta) {
  __m512 c[A5_MR][2];
  for (int r = 0; r < A5_MR; r++) c[r][0] = c[r][1] = _mm512_setzero_ps();
  for (int k = 0; k < kc; k++) {
    __m512 b0 = _mm512_loadu_ps(Bp), b1 = _mm512_loadu_ps(Bp + 16);
    /* B 16 k ahead, as the pixel-row kernels' panel (conv_prow.c): perf on the Intel VM sampled the B
     * loads most; whole steps of the two builds alternating: ResNet-18 training first quartiles 1-4 %
     * lower, minima and medians within the noise */
    _mm_prefetch((const char *)(Bp + A5_NR * 16), _MM_HINT_T0);
    _mm_prefetch((const char *)(Bp + A5_NR * 16 + 16), _MM_HINT_T0);
#pragma GCC unroll 14
    for (int r = 0; r < A5_MR; r++) {
      __m512 a = _mm512_set1_ps(Ap[r]);
      c[r][0] = _mm512_fmadd_ps(a, b0, c[r][0]);
      c[r][1] = _mm512_fmadd_ps(a, b1, c[r][1]);
    }
    Ap += A5_MR;
    Bp += A5_NR;
  }
  __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  for (int r = 0; r < A5_MR; r++) {
    for (int h = 0; h < 2; h++) {
      float *p = C + r * ldc + h * 16;
      __m512 v = _mm512_mul_ps(c[r][h], va);
      if (beta != 0.0f) v = _mm512_fmadd_ps(vb, _mm512_loadu_ps(p), v);
      _mm512_storeu_ps(p, v);
    }
  }
}

/* 8 x 32 over A panels of `stride` floats per k: for M = 8, 16, 24, 32, ... where 14-row panels would
 * be mostly padding (stride 8), and for the last panel of 14-row ones when at most 8 of its rows are
 * real (stride 14: M = 64 is four full panels and 8 rows, 9 % of the multiply-adds on padding). */
#define A5S_MR 8
__attribute__((target("avx512f"), always_inline)) static inline void ukernel_avx512_8s(int stride, int kc, const float *Ap,
                                                                                      const float *Bp, float *C, int ldc,
                                                                                      float alpha, float beta) {
  __m512 c[A5S_MR][2];
  for (int r = 0; r < A5S_MR; r++) c[r][0] = c[r][1] = _mm512_setzero_ps();
  for (int k = 0; k < kc; k++) {
    __m512 b0 = _mm512_loadu_ps(Bp), b1 = _mm512_loadu_ps(Bp + 16);
#pragma GCC unroll 8
    for (int r = 0; r < A5S_MR; r++) {
      __m512 a = _mm512_set1_ps(Ap[r]);
      c[r][0] = _mm512_fmadd_ps(a, b0, c[r][0]);
      c[r][1] = _mm512_fmadd_ps(a, b1, c[r][1]);
    }
    Ap += stride;
    Bp += A5_NR;
  }
  __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  for (int r = 0; r < A5S_MR; r++) {
    for (int h = 0; h < 2; h++) {
      float *p = C + r * ldc + h * 16;
      __m512 v = _mm512_mul_ps(c[r][h], va);
      if (beta != 0.0f) v = _mm512_fmadd_ps(vb, _mm512_loadu_ps(p), v);
      _mm512_storeu_ps(p, v);
    }
  }
}
__attribute__((target("avx512f"))) static void ukernel_avx512_8(int kc, const float *Ap, const float *Bp, float *C, int ldc, float alpha, float beta) {
  ukernel_avx512_8s(A5S_MR, kc, Ap, Bp, C, ldc, alpha, beta);
}
__attribute__((target("avx512f"))) static void ukernel_avx512_tail(int kc, const float *Ap, const float *Bp, float *C, int ldc, float alpha, float beta) {
  ukernel_avx512_8s(A5_MR, kc, Ap, Bp, C, ldc, alpha, beta);
}

/* dst[k*ld + c] = src[c*lds + k] for c < 8, k < kc8 (a multiple of 8), by 8x8 transposes. */
__attribute__((target("avx2"))) static void transpose_block8(const float *src, long lds, int kc8, float *dst, int ld) {
  __m256 r[8];
  for (int k = 0; k < kc8; k += 8) {
    for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + i * lds + k);
    transpose8(r);
    for (int i = 0; i < 8; i++) _mm256_storeu_ps(dst + (long)(k + i) * ld, r[i]);
  }
}
#endif

static int have_avx2 = -1;

static const isa_t ISA_PORTABLE = {P_MR, P_NR, ukernel_portable, "portable", NULL, 0};
#if defined(__x86_64__)
static const isa_t ISA_AVX2 = {A2_MR, A2_NR, ukernel_avx2, "avx2", NULL, 0};
static const isa_t ISA_AVX512 = {A5_MR, A5_NR, ukernel_avx512, "avx512", ukernel_avx512_tail, A5S_MR};
static const isa_t ISA_AVX512_8 = {A5S_MR, A5_NR, ukernel_avx512_8, "avx512", NULL, 0};
#endif
static const isa_t *isa = NULL;

static const isa_t *detect(void) {
#if defined(__x86_64__)
  __builtin_cpu_init();
  const char *force = getenv("RESNET_ISA");
  if (force && !strcmp(force, "portable")) return &ISA_PORTABLE;
  if (force && !strcmp(force, "avx2") && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return &ISA_AVX2;
  if (__builtin_cpu_supports("avx512f") && !(force && !strcmp(force, "avx2"))) return &ISA_AVX512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return &ISA_AVX2;
#endif
  return &ISA_PORTABLE;
}

static const isa_t *get_isa(void) {
  if (!isa) isa = detect();
  return isa;
}

const char *sgemm_isa(void) { return get_isa()->name; }

const char *sgemm_force_isa(int which) {
  switch (which) {
    case 1: isa = &ISA_PORTABLE; break;
#if defined(__x86_64__)
    case 2: if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) isa = &ISA_AVX2; break;
    case 3: if (__builtin_cpu_supports("avx512f")) isa = &ISA_AVX512; break;
#endif
    default: isa = detect();
  }
  return get_isa()->name;
}

/* ---- packing -------------------------------------------------------------------------------- */

#if defined(__x86_64__)
static int have_avx512 = -1;
/* One panel of pack_a for op(A) = A (rows r < rows <= mr <= 16 of A, row stride lda, from column k0):
 * 16 columns at a time, rows loaded whole and transposed in registers, each column's mr floats (zero
 * past `rows`) stored at once; the scalar loop strides down 14 rows per column. */
__attribute__((target("avx512f"))) static void pack_a_panel512(int mr, const float *A, int lda, int rows, int kc, float *dst) {
  const __mmask16 out = (__mmask16)((1u << mr) - 1);
  for (int k = 0; k < kc; k += 16) {
    const int n = kc - k < 16 ? kc - k : 16;
    const __mmask16 in = (__mmask16)((1u << n) - 1);
    __m512 r[16];
    for (int i = 0; i < 16; i++) r[i] = i < rows ? _mm512_maskz_loadu_ps(in, A + (long)i * lda + k) : _mm512_setzero_ps();
    transpose16(r);
    for (int i = 0; i < n; i++) _mm512_mask_storeu_ps(dst + (long)(k + i) * mr, out, r[i]);
  }
}
#endif

/* Ap[panel][k][r] = op(A)[i0 + panel*mr + r][k0 + k], zero-padded past M. */
static void pack_a(int mr, int transA, const float *A, int lda, int i0, int mc, int k0, int kc, float *Ap) {
#if defined(__x86_64__)
  if (have_avx512 < 0) have_avx512 = __builtin_cpu_supports("avx512f");
  if (!transA && have_avx512 && mr <= 16) {
    for (int p = 0; p < mc; p += mr)
      pack_a_panel512(mr, A + (long)(i0 + p) * lda + k0, lda, mc - p < mr ? mc - p : mr, kc, Ap + (long)p * kc);
    return;
  }
#endif
  for (int p = 0; p < mc; p += mr) {
    int rows = mc - p < mr ? mc - p : mr;
    for (int k = 0; k < kc; k++) {
      float *dst = Ap + (long)p * kc + (long)k * mr;
      if (transA) {
        const float *src = A + (long)(k0 + k) * lda + i0 + p;
        int r = 0;
        for (; r < rows; r++) dst[r] = src[r];
        for (; r < mr; r++) dst[r] = 0.0f;
      } else {
        const float *src = A + (long)(i0 + p) * lda + k0 + k;
        int r = 0;
        for (; r < rows; r++) dst[r] = src[(long)r * lda];
        for (; r < mr; r++) dst[r] = 0.0f;
      }
    }
  }
}

/* Bp[panel][k][c] = op(B)[k0 + k][j0 + panel*nr + c], zero-padded past N. */
static void pack_b(int nr, int transB, const float *B, int ldb, int k0, int kc, int j0, int nc, float *Bp) {
  for (int p = 0; p < nc; p += nr) {
    int cols = nc - p < nr ? nc - p : nr;
    float *dst = Bp + (long)p * kc;
    if (!transB) {
      for (int k = 0; k < kc; k++) {
        const float *src = B + (long)(k0 + k) * ldb + j0 + p;
        float *d = dst + (long)k * nr;
        int c = 0;
        for (; c < cols; c++) d[c] = src[c];
        for (; c < nr; c++) d[c] = 0.0f;
      }
    } else {
      int c0 = 0, k8 = 0;
#if defined(__x86_64__)
      if (have_avx2 < 0) have_avx2 = __builtin_cpu_supports("avx2");
      if (have_avx2) {
        /* full 8-column groups, k in multiples of 8: SIMD transposes; the rest below */
        k8 = kc & ~7;
        for (; c0 + 8 <= cols && k8 > 0; c0 += 8)
          transpose_block8(B + (long)(j0 + p + c0) * ldb + k0, ldb, k8, dst + c0, nr);
        if (k8 == 0) c0 = 0;
      }
#endif
      for (int k = 0; k < kc; k++) {
        float *d = dst + (long)k * nr;
        int c = k < k8 ? c0 : 0;
        for (; c < cols; c++) d[c] = B[(long)(j0 + p + c) * ldb + k0 + k];
        for (; c < nr; c++) d[c] = 0.0f;
      }
    }
  }
}

/* Per-thread packing buffers, grown on demand and kept (no allocation in steady state). */
static _Thread_local float *buf_a = NULL, *buf_b = NULL;
static _Thread_local size_t cap_a = 0, cap_b = 0;

static float *grow(float **buf, size_t *cap, size_t n) {
  if (n > *cap) {
    free(*buf);
    *buf = aligned_alloc(64, ((n * sizeof(float) + 63) / 64) * 64);
    *cap = *buf ? n : 0;
  }
  return *buf;
}

/* The whole GEMM for rows [m0, m1) and columns [n0, n1) of C, on this thread. */
/* Epilogue on a finished tile: C += bias[row], then relu. */
static void epilogue(float *c, int ldc, int rows, int cols, const float *bias, int relu) {
  for (int r = 0; r < rows; r++) {
    float *p = c + (long)r * ldc;
    float bv = bias ? bias[r] : 0.0f;
    if (relu)
      for (int q = 0; q < cols; q++) { float v = p[q] + bv; p[q] = v > 0.0f ? v : (v != v ? v : 0.0f); }
    else if (bias)
      for (int q = 0; q < cols; q++) p[q] += bv;
  }
}

/* One micro-kernel's tile: C[rows][cols] (rows <= mr, cols <= nr) = alpha * Ap (mr x kc panel) * Bp
 * (kc x nr panel) + beta * C; a partial tile through a scratch tile (the kernels store whole tiles). */
static void micro_tile(const isa_t *I, int rows, int cols, int kc, const float *ap, const float *bp, float *c, int ldc,
                       float alpha, float beta) {
  const int mr = I->mr, nr = I->nr;
  const int short_tail = I->tail && rows <= I->tail_rows;
  const ukernel_fn kern = short_tail ? I->tail : I->kernel;
  if (cols == nr && rows == (short_tail ? I->tail_rows : mr)) {
    kern(kc, ap, bp, c, ldc, alpha, beta);
    return;
  }
  float tile[A5_MR * A5_NR > A2_MR * A2_NR ? A5_MR * A5_NR : 64 * 64];
  kern(kc, ap, bp, tile, nr, 1.0f, 0.0f);
  for (int r = 0; r < rows; r++)
    for (int q = 0; q < cols; q++) {
      float v = alpha * tile[r * nr + q];
      c[(long)r * ldc + q] = beta == 0.0f ? v : v + beta * c[(long)r * ldc + q];
    }
}

static void gemm_block(const isa_t *I, int transA, int transB, int m0, int m1, int n0, int n1, int K, float alpha,
                       const float *A, int lda, const float *Apre, const float *B, int ldb, const float *Bpre, float beta,
                       float *C, int ldc, const float *bias, int relu) {
  const int mr = I->mr, nr = I->nr;
  int N = n1 - n0;
  if (m1 <= m0 || N <= 0) return;
  if (K == 0) {
    for (int i = m0; i < m1; i++)
      for (int j = n0; j < n1; j++) C[(long)i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[(long)i * ldc + j];
    if (bias || relu) epilogue(C + (long)m0 * ldc + n0, ldc, m1 - m0, N, bias ? bias + m0 : NULL, relu);
    return;
  }
  const int post = bias != NULL || relu;
  float *Bp = grow(&buf_b, &cap_b, (size_t)KC * NC);
  float *Ap = Apre ? NULL : grow(&buf_a, &cap_a, (size_t)KC * MC_ROWS);
  if (!Bp || (!Ap && !Apre)) abort();
  for (int jc = 0; jc < N; jc += NC) {
  int nc = N - jc < NC ? N - jc : NC;
  for (int pc = 0; pc < K; pc += KC) {
    int kc = K - pc < KC ? K - pc : KC;
    float b = pc == 0 ? beta : 1.0f;
    if (!Bpre) pack_b(nr, transB, B, ldb, pc, kc, n0 + jc, nc, Bp);
    for (int ic = m0; ic < m1; ic += MC_ROWS) {
      int mc = m1 - ic < MC_ROWS ? m1 - ic : MC_ROWS;
      if (!Apre) pack_a(mr, transA, A, lda, ic, mc, pc, kc, Ap);
      for (int jr = 0; jr < nc; jr += nr) {
        int cols = nc - jr < nr ? nc - jr : nr;
        /* pre-packed: whole-K panels (n0 + jc + jr is a multiple of nr) */
        const float *bp = Bpre ? Bpre + (long)(n0 + jc + jr) * K + (long)pc * nr : Bp + (long)jr * kc;
        for (int ir = 0; ir < mc; ir += mr) {
          int rows = mc - ir < mr ? mc - ir : mr;
          /* pre-packed: whole-K panels, so the k-block starts pc*mr floats into the panel */
          const float *ap = Apre ? Apre + (long)(ic + ir) * K + (long)pc * mr : Ap + (long)ir * kc;
          float *c = C + (long)(ic + ir) * ldc + n0 + jc + jr;
          micro_tile(I, rows, cols, kc, ap, bp, c, ldc, alpha, b);
          if (post && pc + kc == K) epilogue(c, ldc, rows, cols, bias ? bias + ic + ir : NULL, relu);
        }
      }
    }
  }
  }
}

typedef struct {
  const isa_t *I;
  int transA, transB, M, N, K, lda, ldb, ldc, splitN;
  float alpha, beta;
  const float *A, *Apre, *B, *Bpre;
  float *C;
  const float *bias;
  int relu;
  int units;        /* strips of C handed out dynamically (a few per thread, so that a thread slowed by */
  atomic_int next;  /* other processes takes fewer of them) */
} gemm_job;

static void gemm_task(void *p, int tid, int n) {
  gemm_job *j = p;
  long lo, hi;
  for (;;) {
    int u = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
    if (u >= j->units) break;
    if (j->splitN) {
      pool_split(j->N, u, j->units, j->I->nr, &lo, &hi);
      gemm_block(j->I, j->transA, j->transB, 0, j->M, (int)lo, (int)hi, j->K, j->alpha, j->A, j->lda, j->Apre, j->B, j->ldb,
                 j->Bpre, j->beta, j->C, j->ldc, j->bias, j->relu);
    } else {
      pool_split(j->M, u, j->units, j->I->mr, &lo, &hi);
      gemm_block(j->I, j->transA, j->transB, (int)lo, (int)hi, 0, j->N, j->K, j->alpha, j->A, j->lda, j->Apre, j->B, j->ldb,
                 j->Bpre, j->beta, j->C, j->ldc, j->bias, j->relu);
    }
  }
}


/* Whole-K panels of B (row-major K x N; sgemm_ex_pb's layout), panels split over the threads. */
typedef struct {
  int nr;
  const float *B;
  int K, N;
  float *Bp;
} pack_b_job;
static void pack_b_task(void *ctx, int tid, int n) {
  pack_b_job *j = ctx;
  long lo, hi;
  pool_split((j->N + j->nr - 1) / j->nr, tid, n, 1, &lo, &hi);
  for (long pj = lo; pj < hi; pj++) {
    const int j0 = (int)pj * j->nr;
    pack_b(j->nr, 0, j->B, j->N, 0, j->K, j0, j->N - j0 < j->nr ? j->N - j0 : j->nr, j->Bp + (long)j0 * j->K);
  }
}

/* Whole-K panels of op(A) (the pre-packed layout), panels split over the threads. */
typedef struct {
  int mr, transA;
  const float *A;
  int lda, M, K;
  float *Ap;
} pack_job;
static void pack_task(void *ctx, int tid, int n) {
  pack_job *j = ctx;
  long lo, hi;
  pool_split(j->M, tid, n, j->mr, &lo, &hi);
  if (hi > lo) pack_a(j->mr, j->transA, j->A, j->lda, (int)lo, (int)(hi - lo), 0, j->K, j->Ap + lo * j->K);
}

/* The AVX-512 14-row kernel wastes most of a panel on M = 16 or 32 (ResNet-20's channel counts);
 * an 8-row kernel then does less padded work. */
static const isa_t *pick(int M) {
  const isa_t *I = get_isa();
#if defined(__x86_64__)
  if (I == &ISA_AVX512) {
    long pad14 = (M + 13) / 14 * 14, pad8 = (M + 7) / 8 * 8;
    if (pad14 * 100 > pad8 * 115) return &ISA_AVX512_8;
  }
#endif
  return I;
}

int sgemm_mr(int M) { return pick(M)->mr; }

void sgemm_kernel(int M, int kc, const float *Ap, const float *Bp, float *C, int ldc, float beta) {
  pick(M)->kernel(kc, Ap, Bp, C, ldc, 1.0f, beta);
}
int sgemm_nr(void) { return get_isa()->nr; }

size_t sgemm_packed_a_size(int M, int K) {
  int mr = sgemm_mr(M);
  return (size_t)((M + mr - 1) / mr) * mr * (size_t)K;
}

void sgemm_pack_a(const float *A, int M, int K, int mr, float *Ap) {
  for (int p0 = 0; p0 < M; p0 += mr) {
    int rows = M - p0 < mr ? M - p0 : mr;
    float *d = Ap + (long)p0 * K;
    for (int k = 0; k < K; k++, d += mr) {
      int r = 0;
      for (; r < rows; r++) d[r] = A[(long)(p0 + r) * K + k];
      for (; r < mr; r++) d[r] = 0.0f;
    }
  }
}

void sgemm_unpack_a(const float *Ap, int M, int K, int mr, float *A) {
  for (int i = 0; i < M; i++) {
    const float *s = Ap + (long)(i / mr) * mr * K + i % mr;
    for (int k = 0; k < K; k++) A[(long)i * K + k] = s[(long)k * mr];
  }
}

/* ---- a few rows of C: matrix-vector products ------------------------------------------------ */
/* With M <= SMALL_M (a classifier head at batch 1-4), packing all of op(B) into panels and running
 * a 14-row micro-kernel on one real row costs more than the multiplies (ResNet-50's fc at batch 1:
 * 0.74 ms for 4 MFLOP). Each row of C is then a sequence of dot products (transB: rows of B) or of
 * scaled row updates (B row-major), vectorised by the compiler, columns split across threads. */
#define SMALL_M 4
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MV __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MV
#endif

typedef struct {
  int transB, M, N, K, lda, ldb, ldc;
  float alpha, beta;
  const float *A, *B;
  float *C;
} gemv_job;

/* dot product with 16 independent partial sums (vectorises without reassociation flags) */
MV static float dot16(const float *a, const float *b, int K) {
  float acc[16] = {0};
  int k = 0;
  for (; k + 16 <= K; k += 16)
    for (int l = 0; l < 16; l++) acc[l] += a[k + l] * b[k + l];
  float s = 0.0f;
  for (int l = 0; l < 16; l++) s += acc[l];
  for (; k < K; k++) s += a[k] * b[k];
  return s;
}

MV static void axpy_row(float *c, const float *b, float a, int n) {
  for (int j = 0; j < n; j++) c[j] += a * b[j];
}

static void gemv_task(void *p, int tid, int nt) {
  const gemv_job *j = p;
  long lo, hi;
  pool_split(j->N, tid, nt, 16, &lo, &hi);
  for (int i = 0; i < j->M; i++) {
    const float *a = j->A + (long)i * j->lda;
    float *c = j->C + (long)i * j->ldc;
    if (j->transB) {
      for (long q = lo; q < hi; q++) {
        float v = j->alpha * dot16(a, j->B + q * j->ldb, j->K);
        c[q] = j->beta == 0.0f ? v : v + j->beta * c[q];
      }
    } else {
      for (long q = lo; q < hi; q++) c[q] = j->beta == 0.0f ? 0.0f : j->beta * c[q];
      for (int k = 0; k < j->K; k++) axpy_row(c + lo, j->B + (long)k * j->ldb + lo, j->alpha * a[k], (int)(hi - lo));
    }
  }
}

static void gemv(int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb, float beta,
                 float *C, int ldc, int threaded) {
  gemv_job j = {transB, M, N, K, lda, ldb, ldc, alpha, beta, A, B, C};
  if (!threaded || (double)M * N * K < 1e5 || pool_threads() == 1) gemv_task(&j, 0, 1);
  else pool_run(gemv_task, &j);
}

static void gemm_mt(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *Apre,
                    const float *B, int ldb, const float *Bpre, float beta, float *C, int ldc, const float *bias, int relu) {
  const isa_t *I = pick(M);
  if (M <= SMALL_M && !Apre && !Bpre && !transA) {
    gemv(transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, 1);
    if (bias || relu) epilogue(C, ldc, M, N, bias, relu);
    return;
  }
  double flops = 2.0 * M * N * K;
  if (Apre && transA) abort();
  gemm_job j = {I, transA, transB, M, N, K, lda, ldb, ldc, N >= M, alpha, beta, A, Apre, B, Bpre, C, bias, relu, 1, 0};
  atomic_init(&j.next, 0);
  if (flops < 2e5 || pool_threads() == 1) {
    gemm_task(&j, 0, 1);
    return;
  }
  /* at most as many strips as there are tiles along the split dimension */
  int tiles = j.splitN ? (N + I->nr - 1) / I->nr : (M + I->mr - 1) / I->mr;
  int T = pool_threads();
  j.units = tiles < 3 * T ? tiles : 3 * T;
  if (j.splitN && !Apre && j.units > 1) {
    /* every strip reads all of op(A): packed once here, by all threads, instead of once per strip and
     * k-block (ResNet-18's 2x2 -> 1x1 stride-2 layer as a GEMM, 64 x 512 x 1024: the strips' packing
     * had cost as much as a third of the products) */
    static _Thread_local float *shared_a;
    static _Thread_local size_t shared_cap;
    const size_t need = (size_t)((M + I->mr - 1) / I->mr) * I->mr * (size_t)K;
    float *Ap = grow(&shared_a, &shared_cap, need);
    if (!Ap) abort();
    pack_job pj = {I->mr, transA, A, lda, M, K, Ap};
    pool_run(pack_task, &pj);
    j.Apre = Ap;
    j.transA = 0;
  }
  pool_run_dynamic(gemm_task, &j, j.units);
}

void sgemm_ex_pa(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *Apre,
                 const float *B, int ldb, float beta, float *C, int ldc, const float *bias, int relu) {
  gemm_mt(transA, transB, M, N, K, alpha, A, lda, Apre, B, ldb, NULL, beta, C, ldc, bias, relu);
}

size_t sgemm_packed_b_size(int N, int K) {
  const int nr = get_isa()->nr;
  return (size_t)((N + nr - 1) / nr) * nr * (size_t)K;
}

void sgemm_ex_pb(int transA, int M, int N, int K, float alpha, const float *A, int lda, const float *Bpre, float beta,
                 float *C, int ldc) {
  gemm_mt(transA, 0, M, N, K, alpha, A, lda, NULL, NULL, 0, Bpre, beta, C, ldc, NULL, 0);
}

void sgemm_papb(int M, int N, int K, const float *Apre, const float *Bpre, float beta, float *C, int ldc) {
  gemm_mt(0, 0, M, N, K, 1.0f, NULL, K, Apre, NULL, 0, Bpre, beta, C, ldc, NULL, 0);
}

void sgemm_panel(int M, int cols, int K, const float *Apre, const float *Bp, float beta, float *C, int ldc) {
  const isa_t *I = pick(M);
  /* whole K a micro-kernel call (the accumulators stay in registers; K-blocked as gemm_block, with
   * C re-read per block, ResNet-18's 256 channels on 2x2 maps ran about 8 % slower: three runs) */
  for (int ir = 0; ir < M; ir += I->mr)
    micro_tile(I, M - ir < I->mr ? M - ir : I->mr, cols, K, Apre + (long)ir * K, Bp, C + (long)ir * ldc, ldc, 1.0f, beta);
}

void sgemm_pb_st(int transA, int M, int N, int K, const float *A, int lda, const float *Bpre, float *C, int ldc) {
  gemm_block(pick(M), transA, 0, 0, M, 0, N, K, 1.0f, A, lda, NULL, NULL, 0, Bpre, 0.0f, C, ldc, NULL, 0);
}

void sgemm_pack_b_mt(const float *B, int K, int N, float *Bp) {
  pack_b_job pj = {get_isa()->nr, B, K, N, Bp};
  const long panels = (N + pj.nr - 1) / pj.nr;
  if ((long)K * N < (1L << 16) || pool_threads() == 1) pack_b_task(&pj, 0, 1);
  else pool_run_n(pack_b_task, &pj, (int)(panels < 64 ? panels : 64));
}

void sgemm_pack_a_mt(const float *A, int M, int K, float *Ap) {
  pack_job pj = {sgemm_mr(M), 0, A, K, M, K, Ap};
  if ((long)M * K < (1L << 16) || pool_threads() == 1) pack_task(&pj, 0, 1);
  else pool_run(pack_task, &pj);
}

void sgemm_ex(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
              float beta, float *C, int ldc, const float *bias, int relu) {
  sgemm_ex_pa(transA, transB, M, N, K, alpha, A, lda, NULL, B, ldb, beta, C, ldc, bias, relu);
}

void sgemm_ex_pa_st(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *Apre,
                    const float *B, int ldb, float beta, float *C, int ldc, const float *bias, int relu) {
  if (Apre && transA) abort();
  if (M <= SMALL_M && !Apre && !transA) {
    gemv(transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, 0);
    if (bias || relu) epilogue(C, ldc, M, N, bias, relu);
    return;
  }
  gemm_block(pick(M), transA, transB, 0, M, 0, N, K, alpha, A, lda, Apre, B, ldb, NULL, beta, C, ldc, bias, relu);
}

void sgemm_ex_st(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                 float beta, float *C, int ldc, const float *bias, int relu) {
  sgemm_ex_pa_st(transA, transB, M, N, K, alpha, A, lda, NULL, B, ldb, beta, C, ldc, bias, relu);
}

void sgemm_st(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
              float beta, float *C, int ldc) {
  sgemm_ex_st(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, NULL, 0);
}

void sgemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
           float beta, float *C, int ldc) {
  sgemm_ex(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, NULL, 0);
}
