/* Single-precision GEMM, row-major: C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C.
 * op(X) is X or X^T according to transA/transB; lda/ldb/ldc are row strides in elements.
 * Multi-threaded through the pool in pool.h; runtime dispatch AVX-512 / AVX2+FMA / portable. */
#ifndef RESNET_GEMM_H
#define RESNET_GEMM_H
#include <stddef.h>

void sgemm(int transA, int transB, int M, int N, int K, float alpha,
           const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);

/* Same, on the calling thread only (for callers that already split work across threads). */
void sgemm_st(int transA, int transB, int M, int N, int K, float alpha,
              const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);

/* With an epilogue on the final result: C += bias[row] (bias may be NULL), then relu if set.
 * To fuse a residual add, fill C with the residual and pass beta = 1. */
void sgemm_ex(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
              float beta, float *C, int ldc, const float *bias, int relu);
void sgemm_ex_st(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
                 float beta, float *C, int ldc, const float *bias, int relu);

/* Pre-packed A (weights packed once, e.g. per model): op(A) = A (no transpose), stored as
 * sgemm_pack_a writes it: row panels of mr rows over the whole K, Ap[panel][k][r], zero past M.
 * The *_pa variants read A from Apre when it is not NULL (A is then unused); Apre must have been
 * packed with mr = sgemm_mr(M), the panel height of the micro-kernel that GEMMs with M rows use. */
int sgemm_mr(int M);
size_t sgemm_packed_a_size(int M, int K);
void sgemm_pack_a(const float *A, int M, int K, int mr, float *Ap);
void sgemm_unpack_a(const float *Ap, int M, int K, int mr, float *A);
void sgemm_ex_pa(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *Apre,
                 const float *B, int ldb, float beta, float *C, int ldc, const float *bias, int relu);
void sgemm_ex_pa_st(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *Apre,
                    const float *B, int ldb, float beta, float *C, int ldc, const float *bias, int relu);

/* Pre-packed B (built by the caller straight into the micro-kernel's layout, e.g. from convolution
 * taps): column panels of nr = sgemm_nr() columns over the whole K, Bp[panel][k][c] =
 * op(B)[k][panel*nr + c], zero past N; sgemm_packed_b_size(N, K) floats. sgemm_ex_pb is sgemm_ex with
 * B read from there (no epilogue). */
size_t sgemm_packed_b_size(int N, int K);
void sgemm_ex_pb(int transA, int M, int N, int K, float alpha, const float *A, int lda, const float *Bpre, float beta,
                 float *C, int ldc);

/* Whole-K pre-packed A (sgemm_pack_a layout, mr = sgemm_mr(M)) packed on all threads: A row-major
 * M x K. */
void sgemm_pack_a_mt(const float *A, int M, int K, float *Ap);
/* One pre-packed B panel's columns on the calling thread: C[M][cols] = Apre (whole-K, as above) x Bp
 * (K x nr, one panel of sgemm_packed_b_size's layout; cols <= nr) + beta * C. For callers that build
 * B panel by panel and use each at once, while it is in cache (conv_dense.c). */
void sgemm_panel(int M, int cols, int K, const float *Apre, const float *Bp, float beta, float *C, int ldc);

/* C = Apre (whole-K, as sgemm_pack_a packs it with mr = sgemm_mr(M)) x Bpre (sgemm_ex_pb's whole-K
 * panels) + beta * C, on all threads with the GEMM's own blocking (no epilogue). */
void sgemm_papb(int M, int N, int K, const float *Apre, const float *Bpre, float beta, float *C, int ldc);

/* B (row-major K x N) packed into sgemm_ex_pb's whole-K panels on all threads. */
void sgemm_pack_b_mt(const float *B, int K, int N, float *Bp);
/* C = op(A) x B (pre-packed as above) on the calling thread: for callers that split the rows of C
 * over the threads themselves. */
void sgemm_pb_st(int transA, int M, int N, int K, const float *A, int lda, const float *Bpre, float *C, int ldc);

/* One micro-kernel call of the kernel that GEMMs with M rows use: C[mr][nr] (row stride ldc) =
 * Ap (mr x kc, packed as sgemm_pack_a packs a panel) * Bp (kc x nr, row-major panel) + beta * C,
 * for callers that pack B themselves (convolution). nr = sgemm_nr(). */
void sgemm_kernel(int M, int kc, const float *Ap, const float *Bp, float *C, int ldc, float beta);
int sgemm_nr(void);

/* Name of the micro-kernel in use: "avx512", "avx2" or "portable". */
const char *sgemm_isa(void);
/* Force an ISA (for tests): 0 auto, 1 portable, 2 avx2, 3 avx512. Returns the one selected. */
const char *sgemm_force_isa(int which);
#endif
