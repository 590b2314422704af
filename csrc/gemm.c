/* Blocked matrix multiply (see gemm.h), after the BLIS/GotoBLAS layout:
 *   B is packed once, all of it: per KC slice of the inner dimension, NR-column panels
 *   (k-major); then each thread takes a share of C's MR x NR panels (rows or columns) and,
 *   per KC slice and MC rows, packs A's block into MR-row panels (or, for rows contiguous
 *   in k, reads them in place) and runs the MR x NR micro-kernel over every panel pair.
 * Packing absorbs any strides (transposed operands included) and zero-pads the edges, so
 * the micro-kernel always runs full-width vector loops. It is written once with the ISA
 * level's vectors (simd.h); the level sets its width and register blocking.
 *
 * The part after `#else` is a template compiled twice: this file includes itself with
 * `real` = float and then double, so both precisions share one text.
 */
#ifndef GEMM_TEMPLATE
#include "isa.h"  /* this ISA level's names */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "common.h"
#include "gemm.h"
#include "parallel.h"
#include "scratch.h"
#ifdef _OPENMP
#include <omp.h>
#endif

/* MR rows x NVEC vectors of accumulators (NR = NVEC * lanes columns), from the ISA level's
 * register file (simd.h): MR * NVEC accumulators + NVEC loaded B vectors + a broadcast A
 * value, and a temporary without FMA. That gives 12 x 2 with 32 registers (AVX-512, NEON:
 * 12 rows measured 1.2x faster than 8 on the Xeon; 6 x 4 and 8 x 3 no faster at LSTM B64),
 * 6 x 2 with 16 (AVX2: BLIS's Haswell kernel) and 5 x 2 for the FMA-less baseline.
 * MC = 12 MR rows of A per block. */
#include "simd.h"
#if defined(SIMD_AVX512) && defined(__GNUC__) && !defined(__clang__)
/* GCC's default vector width is 256 bits even with AVX-512; the loops it vectorizes here
 * (packing, edges) run faster at 512 */
#pragma GCC target("prefer-vector-width=512")
#endif
#define GEMM_NVEC 2
#define GEMM_MR_FIT ((SIMD_REGS - GEMM_NVEC - 2 - !SIMD_FMA) / GEMM_NVEC)
#define GEMM_MR (GEMM_MR_FIT < 12 ? GEMM_MR_FIT : 12)
/* KC: the inner dimension is cut into slices of KC (the B micro-panel, KC x NR, stays in
 * L1) or, when C is large, of KC_BIG: each slice after the first reads C back and writes
 * it again, and a C of T*B x 4H (32 MB for LSTM B64) goes to memory and back each time
 * (x @ w_ih^T at 4096 x 2048 x 512: 318 GF/s with KC, 344 with KC_BIG; at 512 rows C stays
 * in cache and KC is ~7% faster). */
enum { KC = 256, KC_BIG = 512 };
#define C_BIG_BYTES (8 << 20)
/* B is packed once per product, all of it: repacking B per block of rows, and A per block of
 * columns, took ~35% of the time of x @ w_ih^T at T*B = 4096 rows in an earlier version. */

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }


#define GEMM_TEMPLATE
#define real float
#define IS_F32 1
#define VEC vf
#define V(op) vf_##op
#define VL VF
#define NR (GEMM_NVEC * VF)
#define MR GEMM_MR
#define MC (12 * MR)
#define GN(name) name##_f32
#include "gemm.c"

#define real double
#define IS_F32 0
#define VEC vd
#define V(op) vd_##op
#define VL VD
#define NR (GEMM_NVEC * VD)
#define MR GEMM_MR
#define MC (12 * MR)
#define GN(name) name##_f64
#include "gemm.c"
#undef GEMM_TEMPLATE

#else /* ---- template: real, IS_F32, VEC and V(op) (its vector type and operations, see
       * simd.h), VL (its lanes), NR, MR, MC, GN ---- */

/* dst[q][k][j] = S(q*width + j, k): panels of `width` rows of S (n x kc, strides s_n and
 * s_k), zero rows past n. The loops follow the smaller stride of S (reads along memory,
 * writes within the small packed block). Inlined with a constant width at both uses. */
static inline void GN(pack_panels)(int64_t n, int64_t kc, const real *src, int64_t s_n,
                                   int64_t s_k, int width, real *restrict dst) {
    for (int64_t q = 0; q < n; q += width, dst += width * kc) {
        int64_t rows = min64(width, n - q);
        if (rows < width)
            memset(dst, 0, sizeof(real) * width * kc);
        if (s_n == 1 && rows == width && width % VL == 0) {
            /* the panel's rows lie side by side in memory: whole vectors (GCC made this
             * loop a memmove call per 64 bytes, ~8% of an LSTM B8 backward) */
            for (int64_t k = 0; k < kc; k++)
                for (int v = 0; v < width; v += VL)
                    V(store)(dst + k * width + v, V(load)(src + q + k * s_k + v));
        } else if (s_k <= s_n) {
            for (int64_t j = 0; j < rows; j++)
                for (int64_t k = 0; k < kc; k++)
                    dst[k * width + j] = src[(q + j) * s_n + k * s_k];
        } else if (rows == width) {  /* (a constant count: copied inline, no memmove call) */
            for (int64_t k = 0; k < kc; k++)
                for (int j = 0; j < width; j++)
                    dst[k * width + j] = src[(q + j) * s_n + k * s_k];
        } else {
            for (int64_t k = 0; k < kc; k++)
                for (int64_t j = 0; j < rows; j++)
                    dst[k * width + j] = src[(q + j) * s_n + k * s_k];
        }
    }
}

/* ap[p][k][i] = A(p*MR + i, k): MR-row panels of an mc x kc block of A. */
static void GN(pack_a)(int64_t mc, int64_t kc, const real *a, int64_t sam, int64_t sak,
                       real *restrict ap) {
    GN(pack_panels)(mc, kc, a, sam, sak, MR, ap);
}

/* bp[q][k][j] = B(k, q*NR + j): NR-column panels of a kc x nc block of B. */
static void GN(pack_b)(int64_t kc, int64_t nc, const real *b, int64_t sbk, int64_t sbn,
                       real *restrict bp) {
    GN(pack_panels)(nc, kc, b, sbn, sbk, NR, bp);
}

void GN(seqcore_pack_cols)(int64_t kc, int64_t n, const real *const *src, int64_t k0, real *dst,
                           int64_t ld) {
    int64_t j0 = 0;
#if IS_F32
    /* VF x VF blocks transposed in registers: scalar copies run at ~1 value per cycle,
     * which made packing w_ih and w_hh ~15% of the LSTM B1 forward */
    for (; j0 + VF <= n; j0 += VF) {
        int64_t k = 0;
        for (; k + VF <= kc; k += VF) {
            vf r[VF];
            for (int j = 0; j < VF; j++)
                r[j] = src[j0 + j] ? vf_load(src[j0 + j] + k0 + k) : vf_zero();
            vf_transpose(r);
            for (int i = 0; i < VF; i++)
                vf_store(dst + (k + i) * ld + j0, r[i]);
        }
        for (; k < kc; k++)
            for (int64_t j = j0; j < j0 + VF; j++)
                dst[k * ld + j] = src[j] ? src[j][k0 + k] : 0;
    }
#endif
    /* a cache line of each column at a time: the values written then stay in a few KB of
     * L1 (a whole column at once can touch more lines than L1 holds, a miss per store) */
    enum { KS = 64 / sizeof(real) };
    for (int64_t ks = 0; ks < kc; ks += KS)
        for (int64_t j = j0; j < n; j++)
            for (int64_t k = ks; k < min64(ks + KS, kc); k++)
                dst[k * ld + j] = src[j] ? src[j][k0 + k] : 0;
}

/* C[0:mr, 0:nr] (+)= A @ Bpanel with MR x NVEC vector accumulators. A is either a packed
 * panel (packed: A(i, k) = ap[k*MR + i]) or read in place from row-major rows
 * (A(i, k) = ap[i*lda + k]; rows past mr repeat row mr - 1, whose results are dropped).
 * Reading A in place saves the strided scalar copy that packing it costs (T*B x I values,
 * once per block of columns), and its rows stream through L1 in order just as well. */
static inline __attribute__((always_inline)) void GN(micro_impl)(
        int64_t kc, const real *restrict ap, int64_t lda, const real *restrict bp,
        real *restrict c, int64_t ldc, int64_t mr, int64_t nr, int accumulate, const int packed) {
    enum { NVEC = GEMM_NVEC, LANES = NR / GEMM_NVEC };
    VEC acc[MR][NVEC];
    const real *arow[MR];
    for (int i = 0; i < MR; i++) {
        for (int v = 0; v < NVEC; v++)
            acc[i][v] = V(zero)();
        arow[i] = packed ? ap + i : ap + (i < mr ? i : mr - 1) * lda;
    }
    /* the C tile is read (accumulate) and written at the end: fetch its lines now, so the
     * misses overlap the k loop instead of stalling after it (as BLIS's kernels do) */
    for (int i = 0; i < MR && i < mr; i++) {
        __builtin_prefetch(c + i * ldc, 1);
        __builtin_prefetch(c + i * ldc + NR - 1, 1);
    }
    if (!packed && mr == MR) {
        /* full panel in place: rows i = 3g + r are read as group[g] + r * lda, so the loop
         * holds one pointer per three rows and lda (12 row pointers do not fit in x86's 16
         * general registers: GCC kept some in vector registers and on the stack, ~15% of an
         * AVX-512 gemm's time on Zen 4) */
        enum { GROUPS = (MR + 2) / 3 };
        const real *group[GROUPS];
        for (int g = 0; g < GROUPS; g++)
            group[g] = ap + 3 * g * lda;
        for (int64_t k = 0; k < kc; k++, bp += NR) {
            VEC b[NVEC];
#pragma GCC unroll 4
            for (int v = 0; v < NVEC; v++)
                b[v] = V(load)(bp + LANES * v);
#pragma GCC unroll 12
            for (int i = 0; i < MR; i++) {
                VEC a = V(set1)(group[i / 3][k + (i % 3) * lda]);
#pragma GCC unroll 4
                for (int v = 0; v < NVEC; v++)
                    acc[i][v] = V(fma)(a, b[v], acc[i][v]);
            }
        }
    } else {
        const int64_t ks = packed ? MR : 1;
        for (int64_t k = 0; k < kc; k++, bp += NR) {
            VEC b[NVEC];
#pragma GCC unroll 4
            for (int v = 0; v < NVEC; v++)
                b[v] = V(load)(bp + LANES * v);
#pragma GCC unroll 12
            for (int i = 0; i < MR; i++) {
                VEC a = V(set1)(arow[i][k * ks]);
#pragma GCC unroll 4
                for (int v = 0; v < NVEC; v++)
                    acc[i][v] = V(fma)(a, b[v], acc[i][v]);
            }
        }
    }
    if (mr == MR && nr == NR) {
#pragma GCC unroll 12
        for (int i = 0; i < MR; i++) {
            real *ci = c + i * ldc;
#pragma GCC unroll 4
            for (int v = 0; v < NVEC; v++) {
                if (accumulate)
                    acc[i][v] = V(add)(V(load)(ci + LANES * v), acc[i][v]);
                V(store)(ci + LANES * v, acc[i][v]);
            }
        }
        return;
    }
    real tmp[MR][NR];
    for (int i = 0; i < MR; i++)
        for (int v = 0; v < NVEC; v++)
            V(store)(tmp[i] + LANES * v, acc[i][v]);
    for (int64_t i = 0; i < mr; i++)
        for (int64_t j = 0; j < nr; j++)
            c[i * ldc + j] = (accumulate ? c[i * ldc + j] : 0) + tmp[i][j];
}

static void GN(micro)(int64_t kc, const real *ap, const real *bp, real *c, int64_t ldc,
                      int64_t mr, int64_t nr, int accumulate) {
    GN(micro_impl)(kc, ap, 0, bp, c, ldc, mr, nr, accumulate, 1);
}

static void GN(micro_rows)(int64_t kc, const real *a, int64_t lda, const real *bp, real *c,
                           int64_t ldc, int64_t mr, int64_t nr, int accumulate) {
    GN(micro_impl)(kc, a, lda, bp, c, ldc, mr, nr, accumulate, 0);
}

/* Packed B: for each slice of kcb values of k (from p0), the NR-column panels of all N
 * columns, kc x NR each: slice p0 starts at bp + p0 * npad(N). */
static int64_t GN(npad)(int64_t N) { return (N + NR - 1) / NR * NR; }

static int64_t GN(packed_b_size)(int64_t K, int64_t N) {
    return K > 0 && N > 0 ? K * GN(npad)(N) : 1;
}

/* Packs B's panels, shared out among the threads of the enclosing parallel region (a
 * worksharing loop: every thread of the region must call it; it ends with a barrier). */
static void GN(pack_b_shared)(int64_t K, int64_t N, const real *b, int64_t sbk, int64_t sbn,
                              real *bp, int64_t kcb) {
    int64_t slices = (K + kcb - 1) / kcb, panels = (N + NR - 1) / NR;
#pragma omp for schedule(static)
    for (int64_t item = 0; item < slices * panels; item++) {
        int64_t p0 = item / panels * kcb, q = item % panels * NR, kc = min64(kcb, K - p0);
        GN(pack_b)(kc, min64(NR, N - q), b + p0 * sbk + q * sbn, sbk, sbn,
                   bp + p0 * GN(npad)(N) + q * kc);
    }
}

/* This thread's part of C = A @ Bpacked, called by every thread of a parallel region.
 * Each thread takes a rectangle of MR x NR panels: a share of the row panels (all columns)
 * or of the column panels (all rows), whichever splits more evenly (rows when equal: no
 * A block is then packed by two threads). Within it, per KC slice and MC rows: A's block
 * is packed once (or read in place) and used against every B panel; each B micro-panel
 * (KC x NR) stays in L1 across the block's MR-row panels. */
static int GN(gemm_rect)(int64_t M, int64_t N, int64_t K, const real *a, int64_t sam,
                         int64_t sak, const real *bp, int64_t kcb, int64_t r0, int64_t r1,
                         int64_t c0, int64_t c1, int accumulate, real *c, int64_t ldc);

static int GN(gemm_part)(int64_t M, int64_t N, int64_t K, const real *a, int64_t sam,
                         int64_t sak, const real *bp, int64_t kcb, int accumulate, real *c,
                         int64_t ldc) {
    int64_t t = 0, nt = 1;
#ifdef _OPENMP
    t = omp_get_thread_num();
    nt = omp_get_num_threads();
#endif
    int64_t pm = (M + MR - 1) / MR, pn = (N + NR - 1) / NR;
    /* the busiest thread's panels, relative to an even split, for each way of splitting */
    int64_t rows_busiest = (pm + nt - 1) / nt * pn, cols_busiest = (pn + nt - 1) / nt * pm;
    int64_t r0 = 0, r1 = pm, c0 = 0, c1 = pn;
    if (rows_busiest <= cols_busiest)
        r0 = pm * t / nt, r1 = pm * (t + 1) / nt;
    else
        c0 = pn * t / nt, c1 = pn * (t + 1) / nt;
    return GN(gemm_rect)(M, N, K, a, sam, sak, bp, kcb, r0, r1, c0, c1, accumulate, c, ldc);
}

/* Rows [r0, r1) x columns [c0, c1) of MR x NR panels of C. */
static int GN(gemm_rect)(int64_t M, int64_t N, int64_t K, const real *a, int64_t sam,
                         int64_t sak, const real *bp, int64_t kcb, int64_t r0, int64_t r1,
                         int64_t c0, int64_t c1, int accumulate, real *c, int64_t ldc) {
    if (r0 >= r1 || c0 >= c1)
        return SEQCORE_OK;
    int in_place = sak == 1;
    real *ap = in_place ? NULL : seqcore_scratch_take(sizeof(real) * MC * kcb);
    if (!in_place && !ap)
        return SEQCORE_ENOMEM;
    int64_t m_end = min64(r1 * MR, M), n_end = min64(c1 * NR, N);
    for (int64_t p0 = 0; p0 < K; p0 += kcb) {
        int64_t kc = min64(kcb, K - p0);
        const real *bslice = bp + p0 * GN(npad)(N);
        int acc = accumulate || p0 > 0;
        for (int64_t i0 = r0 * MR; i0 < m_end; i0 += MC) {
            int64_t mc = min64(MC, m_end - i0);
            const real *ablk = a + i0 * sam + p0 * sak;
            if (!in_place)
                GN(pack_a)(mc, kc, ablk, sam, sak, ap);
            for (int64_t j0 = c0 * NR; j0 < n_end; j0 += NR)
                for (int64_t ir = 0; ir < mc; ir += MR) {
                    real *cij = c + (i0 + ir) * ldc + j0;
                    int64_t mr = min64(MR, mc - ir), nr = min64(NR, n_end - j0);
                    if (in_place) {
                        GN(micro_rows)(kc, ablk + ir * sam, sam, bslice + j0 * kc, cij, ldc, mr,
                                       nr, acc);
                        continue;
                    }
                    GN(micro)(kc, ap + ir * kc, bslice + j0 * kc, cij, ldc, mr, nr, acc);
                }
        }
    }
    seqcore_scratch_give(ap);
    return SEQCORE_OK;
}

/* C = A @ B (K == 0: zeros) for callers outside parallel regions; 0 or an error. */
static int GN(gemm_trivial)(int64_t M, int64_t N, int64_t K, int accumulate, real *c,
                            int64_t ldc) {
    if (M < 0 || N < 0 || K < 0 || ldc < N)
        return SEQCORE_EINVAL;
    if (K == 0 && !accumulate)
        for (int64_t m = 0; m < M; m++)
            memset(c + m * ldc, 0, (size_t)N * sizeof(real));
    return SEQCORE_OK;
}

int GN(seqcore_gemm)(int64_t M, int64_t N, int64_t K, const real *a, int64_t sam, int64_t sak,
                     const real *b, int64_t sbk, int64_t sbn, int accumulate, real *c,
                     int64_t ldc) {
    if (M < 0 || N < 0 || K < 0 || ldc < N || M == 0 || N == 0 || K == 0)
        return GN(gemm_trivial)(M, N, K, accumulate, c, ldc);
    /* B is packed once, all of it, by all threads (it is read by every row block) */
    /* (packed panels live in scratch blocks, kept between calls: the megabytes of a packed
     * B are not faulted in afresh each time) */
    real *bp = seqcore_scratch_take(sizeof(real) * GN(packed_b_size)(K, N));
    if (!bp)
        return SEQCORE_ENOMEM;
    int64_t kcb = (double)M * N * sizeof(real) > C_BIG_BYTES ? KC_BIG : KC;
    int status = SEQCORE_OK;
#pragma omp parallel if (seqcore_worth_threads(2.0 * M * N * K))
    {
        GN(pack_b_shared)(K, N, b, sbk, sbn, bp, kcb);
        int s = GN(gemm_part)(M, N, K, a, sam, sak, bp, kcb, accumulate, c, ldc);
        if (s) {
#pragma omp atomic write
            status = s;
        }
    }
    seqcore_scratch_give(bp);
    return status;
}

/* End of one instantiation: its parameters are undefined for the next. */
#undef real
#undef IS_F32
#undef VEC
#undef V
#undef VL
#undef NR
#undef MR
#undef MC
#undef GN

#endif
