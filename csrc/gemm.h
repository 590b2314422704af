/* Blocked matrix multiply for the C kernels (internal: not part of the cffi interface).
 *
 *   C (M, N) row-major with row stride ldc;  C = A @ B, or C += A @ B if accumulate,
 *   A(m, k) = a[m*sam + k*sak],  B(k, n) = b[k*sbk + n*sbn]   (any strides: the
 *   operands are packed into panels, so transposes cost nothing extra).
 *
 * Packed panels feed a register-blocked micro-kernel written with the ISA level's vectors
 * (simd.h: its width and register count set the blocking); OpenMP splits the output panels
 * across threads (for products worth the fork-join, parallel.h). Call it from outside a
 * parallel region. Returns 0, SEQCORE_EINVAL for negative sizes, SEQCORE_ENOMEM.
 */
#ifndef SEQCORE_GEMM_H
#define SEQCORE_GEMM_H
#include <stdint.h>

int seqcore_gemm_f32(int64_t M, int64_t N, int64_t K,
                     const float *a, int64_t sam, int64_t sak,
                     const float *b, int64_t sbk, int64_t sbn,
                     int accumulate, float *c, int64_t ldc);
int seqcore_gemm_f64(int64_t M, int64_t N, int64_t K,
                     const double *a, int64_t sam, int64_t sak,
                     const double *b, int64_t sbk, int64_t sbn,
                     int accumulate, double *c, int64_t ldc);

/* dst[k*ld + j] = src[j][k0 + k] for j < n, k < kc (src[j] NULL: zeros): n columns given
 * as pointers, transposed into rows of ld values. The packing step of the kernels here
 * (float: in VF x VF register blocks); no OpenMP. */
void seqcore_pack_cols_f32(int64_t kc, int64_t n, const float *const *src, int64_t k0,
                           float *dst, int64_t ld);
void seqcore_pack_cols_f64(int64_t kc, int64_t n, const double *const *src, int64_t k0,
                           double *dst, int64_t ld);

#endif
