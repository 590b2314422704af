/* Blocked matrix multiply for the C kernels (internal: not part of the cffi interface).
 *
 *   C (M, N) row-major with row stride ldc;  C = A @ B, or C += A @ B if accumulate,
 *   A(m, k) = a[m*sam + k*sak],  B(k, n) = b[k*sbk + n*sbn]   (any strides: the
 *   operands are packed into panels, so transposes cost nothing extra).
 *
 * Packed panels feed a register-blocked micro-kernel written with the ISA level's vectors
 * (simd.h: its width and register count set the blocking); OpenMP splits the output panels
 * across threads. Call it from outside a parallel region. Returns 0, SEQCORE_EINVAL for negative sizes, SEQCORE_ENOMEM.
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

/* The same with B packed beforehand, for several products with one B (the recurrent
 * forward's chunks of steps times w_ih^T), each thread of a parallel region computing and
 * packing its own share: bp holds packed_b_size(K, N) elements (64-byte alignment not
 * required), filled by pack_b_cols_share below. */
int64_t seqcore_gemm_packed_b_size_f32(int64_t K, int64_t N);
int64_t seqcore_gemm_packed_b_size_f64(int64_t K, int64_t N);
/* Share `part` of `parts` of the product (the NR-column panels split in order; parts
 * in order cover C), computed by the calling thread alone, without OpenMP: for use inside
 * a parallel region, one part per thread. */
int seqcore_gemm_packed_share_f32(int64_t M, int64_t N, int64_t K, const float *a, int64_t sam,
                                  int64_t sak, const float *bp, int accumulate, float *c,
                                  int64_t ldc, int64_t part, int64_t parts);
int seqcore_gemm_packed_share_f64(int64_t M, int64_t N, int64_t K, const double *a,
                                  int64_t sam, int64_t sak, const double *bp, int accumulate,
                                  double *c, int64_t ldc, int64_t part, int64_t parts);
/* dst[k*ld + j] = src[j][k0 + k] for j < n, k < kc (src[j] NULL: zeros): n columns given
 * as pointers, transposed into rows of ld values. The packing step of the kernels here
 * (float: in VF x VF register blocks); no OpenMP. */
void seqcore_pack_cols_f32(int64_t kc, int64_t n, const float *const *src, int64_t k0,
                           float *dst, int64_t ld);
void seqcore_pack_cols_f64(int64_t kc, int64_t n, const double *const *src, int64_t k0,
                           double *dst, int64_t ld);

/* Packs, by the calling thread alone, the part of packed B that
 * share `part` of `parts` of gemm_packed_share reads, B given by its columns: B(k, n) =
 * bcol[n][k] (NULL: a column of zeros). Each thread of a parallel region can pack the
 * panels it will use itself, with no barrier between packing and the product. */
void seqcore_gemm_pack_b_cols_share_f32(int64_t K, int64_t N, const float *const *bcol,
                                        float *bp, int64_t part, int64_t parts);
void seqcore_gemm_pack_b_cols_share_f64(int64_t K, int64_t N, const double *const *bcol,
                                        double *bp, int64_t part, int64_t parts);

#endif
