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

/* MR rows x NR columns of accumulators, two vectors per row. With AVX-512 the vectors are
 * 512-bit (GCC's -march=native default is 256-bit even there; the wider ones measured ~1.6x
 * faster on one core of this machine's Xeon) and its 32 vector registers leave room for
 * 8 rows (16 accumulators; 1.2x faster than 6). Elsewhere 6 rows fill 12 of 16 registers. */
#if defined(__AVX512F__)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("prefer-vector-width=512")
#endif
#define VEC_BYTES 64
enum { MR = 8, MC = 128, KC = 256, NC = 256 };
#else
#define VEC_BYTES 32
enum { MR = 6, MC = 96, KC = 256, NC = 256 };
#endif

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
#define MADD MADD_F32
#define GN(name) name##_f32
#include "gemm.c"
#undef real
#undef NR
#undef MADD
#undef GN

#define real double
#define NR (2 * VEC_BYTES / 8)
#define MADD MADD_F64
#define GN(name) name##_f64
#include "gemm.c"
#undef real
#undef NR
#undef MADD
#undef GN
#undef GEMM_TEMPLATE

#else /* ---- template: real, NR, MADD, GN ---- */

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

/* One MC x NC output tile, all of K. */
static void GN(gemm_tile)(int64_t mc, int64_t nc, int64_t K, const real *a, int64_t sam,
                          int64_t sak, const real *b, int64_t sbk, int64_t sbn, int accumulate,
                          real *c, int64_t ldc, real *ap, real *bp) {
    for (int64_t p0 = 0; p0 < K; p0 += KC) {
        int64_t kc = min64(KC, K - p0);
        GN(pack_a)(mc, kc, a + p0 * sak, sam, sak, ap);
        GN(pack_b)(kc, nc, b + p0 * sbk, sbk, sbn, bp);
        for (int64_t jr = 0; jr < nc; jr += NR)
            for (int64_t ir = 0; ir < mc; ir += MR)
                GN(micro)(kc, ap + ir * kc, bp + jr * kc, c + ir * ldc + jr, ldc,
                          min64(MR, mc - ir), min64(NR, nc - jr), accumulate || p0 > 0);
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
    int64_t tiles_m = (M + MC - 1) / MC, tiles_n = (N + NC - 1) / NC;
    int status = SEQCORE_OK;
#pragma omp parallel
    {
        real *ap = alloc_aligned(sizeof(real) * MC * KC);
        real *bp = alloc_aligned(sizeof(real) * KC * (NC + NR));
        if (!ap || !bp) {
#pragma omp atomic write
            status = SEQCORE_ENOMEM;
        }
#pragma omp for schedule(dynamic)
        for (int64_t tile = 0; tile < tiles_m * tiles_n; tile++) {
            int64_t i0 = tile / tiles_n * MC, j0 = tile % tiles_n * NC;
            if (ap && bp)
                GN(gemm_tile)(min64(MC, M - i0), min64(NC, N - j0), K, a + i0 * sam, sam, sak,
                              b + j0 * sbn, sbk, sbn, accumulate, c + i0 * ldc + j0, ldc, ap, bp);
        }
        free(ap);
        free(bp);
    }
    return status;
}

#endif
