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

/* Name of the micro-kernel in use: "avx512", "avx2" or "portable". */
const char *sgemm_isa(void);
/* Force an ISA (for tests): 0 auto, 1 portable, 2 avx2, 3 avx512. Returns the one selected. */
const char *sgemm_force_isa(int which);
#endif
