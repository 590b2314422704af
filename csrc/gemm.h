/* Blocked matrix multiply for the C kernels (internal: not part of the cffi interface).
 *
 *   C (M, N) row-major with row stride ldc;  C = A @ B, or C += A @ B if accumulate,
 *   A(m, k) = a[m*sam + k*sak],  B(k, n) = b[k*sbk + n*sbn]   (any strides: the
 *   operands are packed into panels, so transposes cost nothing extra).
 *
 * Packed panels feed a register-blocked micro-kernel (auto-vectorized, FMA where the
 * target has it); OpenMP splits the output tiles across threads. Call it from outside
 * a parallel region. Returns 0, SEQCORE_EINVAL for negative sizes, SEQCORE_ENOMEM.
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

#endif
