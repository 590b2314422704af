/* Blocked matrix multiply (see gemm.h), after the BLIS/GotoBLAS layout:
 *   for each output tile (MC x NC, one per OpenMP work item):
 *     for each KC slice of the inner dimension:
 *       pack A's MC x KC block into MR-row panels and B's KC x NC block into NR-column
 *       panels (both k-major), then run the MR x NR micro-kernel over every panel pair.
 * Packing absorbs any strides (transposed operands included) and zero-pads the edges, so
 * the micro-kernel always runs full-width loops the compiler vectorizes.
 *
 * The part after `#else` is a template compiled twice: this file includes itself with
 * `real` = float and then double, so both precisions share one text.
 */
#ifndef GEMM_TEMPLATE
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "common.h"
#include "gemm.h"
#ifdef _OPENMP
#include <omp.h>
#endif

/* MR rows x NR columns of accumulators, two vectors per row. With AVX-512 the vectors are
 * 512-bit (GCC's -march=native default is 256-bit even there; the wider ones measured ~1.6x
 * faster on one core of this machine's Xeon) and its 32 vector registers leave room for
 * 8 rows (16 accumulators; 1.2x faster than 6) in the auto-vectorized kernel, and for 12
 * (24 accumulators) in the float32 one written with intrinsics (GCC spills 12 rows of the
 * generic one). Elsewhere 6 rows fill 12 of 16 registers. MC = 12 MR rows of A per block. */
#if defined(__AVX512F__)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("prefer-vector-width=512")
#endif
#include <immintrin.h>
#define VEC_BYTES 64
#define MR_F32 12
#define MR_F64 8
#define GEMM_SIMD_F32 1
#else
#define VEC_BYTES 32
#define MR_F32 6
#define MR_F64 6
#define GEMM_SIMD_F32 0
#endif
enum { KC = 256, NC = 512, MB = 1024 };
/* A work item is an MB x NC block of C (smaller when there would be too few to share
 * between threads). Each KC slice of its B block is packed once and reused for all MB rows,
 * and each MC x KC block of A for all NC columns: packing is strided scalar copying, and
 * with MC x NC work items (B packed again for every MC rows) it took ~35% of the time of
 * x @ w_ih^T at T*B = 4096 rows. */

/* fma() compiles to one vfmadd where the target has FMA; elsewhere keep a*b + c (a libm
 * fma call would be slow). GCC does not contract a*b + c on its own under -std=c11. */
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
#define MADD_F32(a, b, c) fmaf((a), (b), (c))
#define MADD_F64(a, b, c) fma((a), (b), (c))
#else
#define MADD_F32(a, b, c) ((a) * (b) + (c))
#define MADD_F64(a, b, c) ((a) * (b) + (c))
#endif

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

static void *alloc_aligned(size_t bytes) {
    bytes = (bytes + 63) / 64 * 64;
    return aligned_alloc(64, bytes ? bytes : 64);
}

#define GEMM_TEMPLATE
#define real float
#define NR (2 * VEC_BYTES / 4)
#define MR MR_F32
#define MC (12 * MR)
#define SIMD_KERNEL GEMM_SIMD_F32
#define MADD MADD_F32
#define GN(name) name##_f32
#include "gemm.c"
#undef real
#undef NR
#undef MR
#undef MC
#undef SIMD_KERNEL
#undef MADD
#undef GN

#define real double
#define NR (2 * VEC_BYTES / 8)
#define MR MR_F64
#define MC (12 * MR)
#define SIMD_KERNEL 0
#define MADD MADD_F64
#define GN(name) name##_f64
#include "gemm.c"
#undef real
#undef NR
#undef MR
#undef MC
#undef SIMD_KERNEL
#undef MADD
#undef GN
#undef GEMM_TEMPLATE

#else /* ---- template: real, NR, MR, MC, SIMD_KERNEL, MADD, GN ---- */

/* ap[p][k][i] = A(p*MR + i, k): MR-row panels, zero rows past mc. The loops follow the
 * smaller stride of A (reads along memory, writes within the small packed block). */
static void GN(pack_a)(int64_t mc, int64_t kc, const real *a, int64_t sam, int64_t sak,
                       real *restrict ap) {
    for (int64_t p = 0; p < mc; p += MR, ap += MR * kc) {
        int64_t rows = min64(MR, mc - p);
        if (rows < MR)
            memset(ap, 0, sizeof(real) * MR * kc);
        if (sak <= sam) {
            for (int64_t i = 0; i < rows; i++)
                for (int64_t k = 0; k < kc; k++)
                    ap[k * MR + i] = a[(p + i) * sam + k * sak];
        } else {
            for (int64_t k = 0; k < kc; k++)
                for (int64_t i = 0; i < rows; i++)
                    ap[k * MR + i] = a[(p + i) * sam + k * sak];
        }
    }
}

/* bp[q][k][j] = B(k, q*NR + j): NR-column panels, zero columns past nc. */
static void GN(pack_b)(int64_t kc, int64_t nc, const real *b, int64_t sbk, int64_t sbn,
                       real *restrict bp) {
    for (int64_t q = 0; q < nc; q += NR, bp += NR * kc) {
        int64_t cols = min64(NR, nc - q);
        if (cols < NR)
            memset(bp, 0, sizeof(real) * NR * kc);
        if (sbk <= sbn) {
            for (int64_t j = 0; j < cols; j++)
                for (int64_t k = 0; k < kc; k++)
                    bp[k * NR + j] = b[k * sbk + (q + j) * sbn];
        } else {
            for (int64_t k = 0; k < kc; k++)
                for (int64_t j = 0; j < cols; j++)
                    bp[k * NR + j] = b[k * sbk + (q + j) * sbn];
        }
    }
}

#if SIMD_KERNEL
/* float32, AVX-512: C[0:mr, 0:nr] (+)= Apanel @ Bpanel with MR x 2 zmm accumulators. */
static void GN(micro)(int64_t kc, const real *restrict ap, const real *restrict bp,
                      real *restrict c, int64_t ldc, int64_t mr, int64_t nr, int accumulate) {
    __m512 acc0[MR], acc1[MR];
    for (int i = 0; i < MR; i++)
        acc0[i] = acc1[i] = _mm512_setzero_ps();
    for (int64_t k = 0; k < kc; k++, ap += MR, bp += NR) {
        __m512 b0 = _mm512_loadu_ps(bp), b1 = _mm512_loadu_ps(bp + 16);
#pragma GCC unroll 12
        for (int i = 0; i < MR; i++) {
            __m512 a = _mm512_set1_ps(ap[i]);
            acc0[i] = _mm512_fmadd_ps(a, b0, acc0[i]);
            acc1[i] = _mm512_fmadd_ps(a, b1, acc1[i]);
        }
    }
    if (mr == MR && nr == NR) {
#pragma GCC unroll 12
        for (int i = 0; i < MR; i++) {
            real *ci = c + i * ldc;
            if (accumulate) {
                acc0[i] = _mm512_add_ps(_mm512_loadu_ps(ci), acc0[i]);
                acc1[i] = _mm512_add_ps(_mm512_loadu_ps(ci + 16), acc1[i]);
            }
            _mm512_storeu_ps(ci, acc0[i]);
            _mm512_storeu_ps(ci + 16, acc1[i]);
        }
        return;
    }
    real tmp[MR][NR];
    for (int i = 0; i < MR; i++) {
        _mm512_storeu_ps(tmp[i], acc0[i]);
        _mm512_storeu_ps(tmp[i] + 16, acc1[i]);
    }
    for (int64_t i = 0; i < mr; i++)
        for (int64_t j = 0; j < nr; j++)
            c[i * ldc + j] = (accumulate ? c[i * ldc + j] : 0) + tmp[i][j];
}
#else
/* C[0:mr, 0:nr] (+)= Apanel @ Bpanel: the MR x NR accumulator block lives in registers. */
static void GN(micro)(int64_t kc, const real *restrict ap, const real *restrict bp,
                      real *restrict c, int64_t ldc, int64_t mr, int64_t nr, int accumulate) {
    real acc[MR][NR] = {{0}};
    for (int64_t k = 0; k < kc; k++, ap += MR, bp += NR)
#pragma GCC unroll 8
        for (int i = 0; i < MR; i++)
#pragma omp simd
            for (int j = 0; j < NR; j++)
                acc[i][j] = MADD(ap[i], bp[j], acc[i][j]);
    for (int64_t i = 0; i < mr; i++)
        for (int64_t j = 0; j < nr; j++)
            c[i * ldc + j] = (accumulate ? c[i * ldc + j] : 0) + acc[i][j];
}
#endif

/* One mb x nc block of C, all of K: for each KC slice, pack B's kc x nc block once, then
 * for each MC rows pack A's block and run the micro-kernel over every panel pair (the B
 * micro-panel, KC x NR, stays in L1 while the A block streams from L2). */
static void GN(gemm_tile)(int64_t mb, int64_t nc, int64_t K, const real *a, int64_t sam,
                          int64_t sak, const real *b, int64_t sbk, int64_t sbn, int accumulate,
                          real *c, int64_t ldc, real *ap, real *bp) {
    for (int64_t p0 = 0; p0 < K; p0 += KC) {
        int64_t kc = min64(KC, K - p0);
        GN(pack_b)(kc, nc, b + p0 * sbk, sbk, sbn, bp);
        for (int64_t i0 = 0; i0 < mb; i0 += MC) {
            int64_t mc = min64(MC, mb - i0);
            GN(pack_a)(mc, kc, a + i0 * sam + p0 * sak, sam, sak, ap);
            for (int64_t jr = 0; jr < nc; jr += NR)
                for (int64_t ir = 0; ir < mc; ir += MR)
                    GN(micro)(kc, ap + ir * kc, bp + jr * kc, c + (i0 + ir) * ldc + jr, ldc,
                              min64(MR, mc - ir), min64(NR, nc - jr), accumulate || p0 > 0);
        }
    }
}

int GN(seqcore_gemm)(int64_t M, int64_t N, int64_t K, const real *a, int64_t sam, int64_t sak,
                     const real *b, int64_t sbk, int64_t sbn, int accumulate, real *c,
                     int64_t ldc) {
    if (M < 0 || N < 0 || K < 0 || ldc < N)
        return SEQCORE_EINVAL;
    if (M == 0 || N == 0)
        return SEQCORE_OK;
    if (K == 0) {
        if (!accumulate)
            for (int64_t m = 0; m < M; m++)
                memset(c + m * ldc, 0, (size_t)N * sizeof(real));
        return SEQCORE_OK;
    }
    /* Work items: MB x NC blocks, halved (rows first) until each thread gets >= 2. */
    int64_t nthreads = 1;
#ifdef _OPENMP
    nthreads = omp_get_max_threads();
#endif
    int64_t mb = MB, nc = NC;
    while (mb > MC && ((M + mb - 1) / mb) * ((N + nc - 1) / nc) < 2 * nthreads)
        mb /= 2;
    while (nc > NR && ((M + mb - 1) / mb) * ((N + nc - 1) / nc) < 2 * nthreads)
        nc /= 2;
    int64_t tiles_m = (M + mb - 1) / mb, tiles_n = (N + nc - 1) / nc;
    int status = SEQCORE_OK;
#pragma omp parallel
    {
        real *ap = alloc_aligned(sizeof(real) * MC * KC);
        real *bp = alloc_aligned(sizeof(real) * KC * (nc + NR));
        if (!ap || !bp) {
#pragma omp atomic write
            status = SEQCORE_ENOMEM;
        }
#pragma omp for schedule(dynamic)
        for (int64_t tile = 0; tile < tiles_m * tiles_n; tile++) {
            int64_t i0 = tile / tiles_n * mb, j0 = tile % tiles_n * nc;
            if (ap && bp)
                GN(gemm_tile)(min64(mb, M - i0), min64(nc, N - j0), K, a + i0 * sam, sam, sak,
                              b + j0 * sbn, sbk, sbn, accumulate, c + i0 * ldc + j0, ldc, ap, bp);
        }
        free(ap);
        free(bp);
    }
    return status;
}

#endif
