/* LSTM, GRU and Elman RNN over sequences, forward and backward (see recurrent.h).
 *
 * The loops below are the same for every cell; what a cell is (its G gates, its workspace,
 * its pointwise forward update and chain rule) is one description per cell, in cell_*.h
 * (see "the cells" in the template), which these loops call for each block of units.
 *
 * Forward (one OpenMP parallel region, for calls worth the threads: parallel.h): each thread
 * owns a slice of hidden units and, per step, computes all G gates of them and applies the
 * cell update on the spot, so no gate tensor goes back to memory; one barrier per step. h
 * is kept in two buffers so the next step can read it while this one writes. Two steps:
 *   - few rows (batch 1, or under TILE_MIN_ROWS steps x batch), weights in place
 *     (fwd_block_in_place): every gate is a dot product of
 *     a weight row with an h row, k along the vector lanes (dots). Per chunk of steps
 *     (CHUNK_ROWS rows of T*B) each thread first computes the input projections of its own
 *     units, xg = x @ w_ih^T, reading w_ih once for all the chunk's rows. Nothing is packed,
 *     so a cell (one step) or a short sequence pays for no repacking of the weights.
 *   - otherwise batch-tiled (fwd_block_tiled): the step is a real matmul. Each thread
 *     packs the parts of w_hh and w_ih it alone reads (no barrier), x is packed per chunk,
 *     and tile_rows (R rows x all G gates of one vector of units: LSTM 6 x 4 with 32 vector
 *     registers, 3 x 4 with 16) computes first the chunk's input projections of its units
 *     (project_tiled: each slice of packed w_ih serves all the chunk's rows), then at each
 *     step the recurrent part; the finished tile holds every gate for the update.
 * The register blocking of both comes from the ISA level (simd.h). Scratch (packed weights,
 * the projections, packed x) comes from seqcore_scratch_take: kept between calls, so its
 * megabytes are not faulted in on every call.
 * Backward through time, the same ownership of hidden units (each thread packs its own
 * columns of w_hh first):
 *   phase 1 (per step, own units): the pointwise chain rule -> gate pre-activation
 *            gradients dG_t (stored for all t, and packed for phase 2);  barrier;
 *   phase 2 (own units): dh_{t-1} += dG_t @ w_hh (step_micro).
 *   Then dx = dG @ w_ih, dw_ih = dG^T x, dw_hh = dG^T h_prev as large matmuls over all
 *   steps (gemm.c), and the bias gradients as column sums of dG.
 * The LSTM projection (torch's proj_size, w_hr) is the same loops with one more phase per
 * step in each direction (see "the projection" in the template).
 *
 * The part after `#else` is a template compiled twice: this file includes itself with
 * `real` = float and then double.
 */
#ifndef RNN_TEMPLATE
#include "isa.h"  /* this ISA level's names */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "common.h"
#include "gemm.h"
#include "recurrent.h"
#include "parallel.h"
#include "scratch.h"
#include "simd.h"

/* Most batch rows per step_micro call (the backward's dh += dG @ w_hh): a call takes `rows`
 * = 1, 2, 4 or SMR of them (see step_rows); rows past B are zero padding. SMR x 2 vector
 * accumulators plus 2 loaded weight vectors and a broadcast: 8 rows with 32 vector
 * registers (as tuned on AVX-512), 6 with 16 (12 accumulators; 4 rows left 8, too few to
 * hide the FMA latency). */
enum { SMR = SIMD_REGS >= 32 ? 8 : 6 };

/* Hidden units per block: two vectors of the ISA level (simd.h). As in gemm.c, GCC is asked
 * for 512-bit auto-vectorized loops where the level has them. */
#if defined(SIMD_AVX512) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("prefer-vector-width=512")
#endif
/* Batch rows of a tile of the batch-tiled step (tile_rows) for G gates: the most (up to 8)
 * whose R * G accumulator vectors leave registers for min(R, G) operands kept per k (the G
 * weight vectors, or the R broadcast h values, whichever are fewer), one more operand and
 * (no FMA) a product: 6 x 4 (LSTM) and 8 x 3 (GRU) with 32 registers, 3 x 4 and 4 x 3 with
 * 16 (2 x 4 kept the weights: 8 accumulators, too few to hide the FMA latency); 8 x 1
 * (Elman) with either. */
#define TILE_FITS(R, G) ((R) * (G) + ((R) < (G) ? (R) : (G)) + 1 + !SIMD_FMA <= SIMD_REGS)
#define TILE_R(G)                                                                           \
    (TILE_FITS(8, G) ? 8 : TILE_FITS(7, G) ? 7 : TILE_FITS(6, G) ? 6 : TILE_FITS(5, G) ? 5  \
     : TILE_FITS(4, G) ? 4 : TILE_FITS(3, G) ? 3 : TILE_FITS(2, G) ? 2 : 1)
/* The batch-tiled step (see tile_rows) packs the weights once per call and then runs the
 * steps at nearly the FMA peak; reading the weights in place (fwd_block_in_place) packs
 * nothing and runs dot products. Packing pays once a call has enough rows (steps x batch)
 * to reuse them, and never at batch 1. Measured on Zen 3 (AVX2, I = H = 512): T64 with B2
 * ran 1.3x faster tiled; T16 B4 and T8 B8 broke even; T2 B16, T1 (a cell) at any batch
 * and every B1 ran faster in place. */
enum { TILE_MIN_ROWS = 96 };

/* k slice of the batch-tiled step: the slice of a 16-unit block's packed w_hh
 * (TILE_KSLICE x 4 gates x 64 B = 32 KB for LSTM f32) stays in L1 while every batch group
 * uses it, and h streams from L2. */
enum { TILE_KSLICE = 128 };
/* Floats ahead within a weight row that the in-place step's dot products prefetch. */
enum { DOT_PREFETCH = 128 };
/* Rows (steps x batch) of the input projection per chunk (see rnn_fwd): in place, and
 * batch-tiled (project_tiled). The tiled chunk's projections (2 MB for LSTM H512 at 256
 * rows) are read back by its steps: from 512 rows on they came from L3, and T64 B64 ran
 * 2% slower at AVX2 (Rocket Lake, one thread; AVX-512 even, B8 and B16 1-2% faster at
 * 256). */
enum { CHUNK_ROWS = 512, TILE_CHUNK_ROWS = 256 };

#if SIMD_FMA
#define RNN_MADD_F32(a, b, c) fmaf((a), (b), (c))
#define RNN_MADD_F64(a, b, c) fma((a), (b), (c))
#else
#define RNN_MADD_F32(a, b, c) ((a) * (b) + (c))
#define RNN_MADD_F64(a, b, c) ((a) * (b) + (c))
#endif

/* For kernels whose loop bounds must be constants at each call (register blocking). */
#if defined(__GNUC__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE inline
#endif

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* Scalar float exp and tanh: lane 0 of the vector math (simd.h), so scalar paths compute
 * what the vector cell updates do. */
static inline float exp_f32(float x) { return simd_expf(x); }
static inline float tanh_f32(float x) { return 1.0f - 2.0f / (exp_f32(2.0f * x) + 1.0f); }

static int64_t len_of(const int64_t *lengths, int64_t b, int64_t T) {
    return lengths ? lengths[b] : T;
}

/* Time index of step s of an element with `len` valid steps: its first len steps in
 * order, or the last of them first when reversed. */
static int64_t time_of(int64_t s, int64_t len, int reverse) {
    return reverse ? len - 1 - s : s;
}

/* Packed index of (batch row b, column k) in a buffer of ncol columns: hp[grp][k][i]
 * (batch rows interleaved in groups, so one k holds a group's rows side by side). */
static inline int64_t packed_at(int64_t b, int64_t k, int64_t ncol, int64_t rows) {
    return (b / rows * ncol + k) * rows + b % rows;
}

/* Steps the time loop runs: the longest length. */
static int64_t max_len(const int64_t *lengths, int64_t B, int64_t T) {
    if (!lengths)
        return B > 0 ? T : 0;
    int64_t m = 0;
    for (int64_t b = 0; b < B; b++)
        m = lengths[b] > m ? lengths[b] : m;
    return m;
}

static int check_sizes(int64_t T, int64_t B, int64_t I, int64_t H, const int64_t *lengths) {
    if (T < 0 || B < 0 || I < 1 || H < 1)
        return SEQCORE_EINVAL;
    for (int64_t b = 0; lengths && b < B; b++)
        if (lengths[b] < 0 || lengths[b] > T)
            return SEQCORE_EINVAL;
    return SEQCORE_OK;
}

/* This thread's share [lo, hi) of n work items (the same share at every step). */
static void thread_share(int64_t n, int64_t *lo, int64_t *hi) {
    int64_t t = 0, nt = 1;
#ifdef _OPENMP
    t = omp_get_thread_num();
    nt = omp_get_num_threads();
#endif
    *lo = n * t / nt;
    *hi = n * (t + 1) / nt;
}

/* memset to 0 of `bytes` bytes; nothing for none (an empty part of
 * seqcore_scratch_take_parts is NULL, and memset(NULL, 0, 0) is undefined) */
static void zero_bytes(void *at, int64_t bytes) {
    if (bytes > 0)
        memset(at, 0, (size_t)bytes);
}

#define RNN_TEMPLATE
#define real float
#define VEC vf
#define V(op) vf_##op
#define NV VF
#define NR (2 * VF)
#define MADD RNN_MADD_F32
#define EXP exp_f32
#define TANH tanh_f32
#define RN(name) name##_f32
#define UPDATE_SIMD 1
#include "recurrent.c"

#define real double
#define VEC vd
#define V(op) vd_##op
#define NV VD
#define NR (2 * VD)
#define MADD RNN_MADD_F64
#define EXP exp
#define TANH tanh
#define RN(name) name##_f64
#define UPDATE_SIMD 0
#include "recurrent.c"
#undef RNN_TEMPLATE

#else /* ---- template: real, VEC / V(op) (its vectors, simd.h), NV (units per vector), NR
        * (hidden units per block: two vectors), MADD, EXP, TANH, RN, UPDATE_SIMD (float: the
        * cell updates with the vector math of simd.h; the cells' files are part of it) ---- */

/* One call's arrays and sizes. Forward and backward fill the parts they use. */
struct RN(cell);
struct RN(rnn) {
    const struct RN(cell) *cell;     /* what is pointwise (see the cells below) */
    int reverse;
    int64_t T, B, I, H, G, nws;      /* G: the cell's gates; nws: ws width per (t, b) */
    int64_t P;                       /* h's features: H, or the projection's (w_hr (P, H)) */
    int64_t nblk, rows, ngrp;        /* blocks of NR hidden units, groups of `rows` batch rows */
    int tiled;                       /* forward: batch-tiled step, else weights in place */
    const int64_t *lengths;
    const real *x, *w_ih, *w_hh, *b_hh, *h0, *c0, *dy;
    const real *w_hr;                /* the projection (see "the projection"), or NULL */
    real *u;                         /* with w_hr: the cell outputs before it (forward: B x H
                                      * of this step; backward: T x B x H, for dw_hr) */
    real *dht, *dhp, *wrp;           /* backward with w_hr: dL/dh_t (T x B x P), the step's
                                      * packed, and w_hr packed by unit blocks */
    real *y, *ws;                    /* forward outputs (ws may be NULL) */
    const real *ys, *wss;            /* backward inputs: the forward's y and ws */
    real *h, *c;                     /* forward state (the h_n/c_n outputs) */
    real *dh, *dc;                   /* backward state (the dh0/dc0 outputs) */
    real *xg;                        /* forward: input projections of the times from xg_t0 */
    int64_t xg_t0, xgw;              /*   (chunk, B, xgw), columns as xcol orders them */
    real *xbias;                     /* forward: the biases added to xg (G*H) */
    real *xpack, *wip;               /* tiled forward: packed x of the chunk's steps (from */
    real *xproj;                     /*   xp_s0), w_ih packed as wp, and the chunk's input */
    int64_t xp_s0, xp_chunk;         /*   projections (tiles, xp_chunk steps) */
    real *dgx, *dgh;                 /* backward: gate gradients, x side and h side */
    real *wp;                        /* w_hh packed for the time loop */
};

/* ---- the projection ----
 * torch's proj_size: with w_hr (P, H) the cell's output u_t (H) is projected,
 *   h_t = u_t @ w_hr^T  (P features),
 * and h_t is what y, h_n and the recurrence (w_hh (G*H, P)) see; c stays H wide. It is the
 * same time loops with the state P wide (where they say P, it is H without one), plus one
 * phase per step in each direction, since a projected row needs all of u's row:
 *   forward, after the step's cell updates (u to p->u) and a barrier: each thread forms its
 *     slice of h's P columns, h = u @ w_hr^T (dots, w_hr in place; fwd_project), then a
 *     second barrier before the next step reads h;
 *   backward, phase 1 starts from dL/dh_t (P: carried + dy, formed by the owners of P's
 *     columns and kept for all t in dht), du = dL/dh_t @ w_hr (H, own units; step_micro on
 *     w_hr packed by unit blocks), then the cell's chain rule from du, which also writes
 *     u_t (ubwd.out); phase 2 owns P's columns (dh = dG @ w_hh); a second barrier.
 *     Afterwards dw_hr = dht^T u as one matmul over all steps.
 * Only for a cell whose output has no direct path back to h_{t-1} (LSTM: u = o * tanh(c)):
 * the direct part of its chain rule would be H wide, not P. */

/* ---- the cells ----
 * What differs between LSTM, GRU and Elman is pointwise, and lives in one file per cell
 * (cell_*.h): its description below, a forward update of a block of units from their
 * gates' pre-activation parts, and the chain rule of a block of units back to the gates.
 * Everything else here (the time loops, packing, tiles, dots, the weight-gradient matmuls)
 * is the same for every cell, sized by G and nws. A new cell is one cell_*.h, its #include
 * below and its entry points. */

/* A forward update's view of element b at time t, units [u0, u0 + nu), every pointer from
 * u0: the recurrent part of unit j of gate g at acc[g * gs + j], its input part (without
 * biases) at xg[g * xs + j] and the folded biases at xb[g * xs + j]; b_hh (NULL: zeros)
 * for the gates that do not fold it, gate g at b_hh[g * H + j]; the state rows of b (h, and
 * c for LSTM) updated in place; the output rows y and ws (NULL: not kept) of (t, b), ws
 * value k at ws[k * H + j]. With a projection h and y both point at b's row of u (the
 * cell's output; the projection forms h and y from it). */
struct RN(ufwd) {
    int64_t nu, H, gs, xs;
    const real *acc, *xg, *xb, *b_hh;
    real *h, *c, *y, *ws;
};

/* A backward chain rule's view of element b at one of its valid steps (time t), units
 * [u0, u0 + nu), every pointer from u0: this step's ws row, the previous step's (NULL at
 * the first step), the state the step started from (h_prev: y of the previous step or h0;
 * NULL: zeros) and c0 (NULL: zeros); dy (NULL: zeros); the carried dh (in: dL/dh_t without
 * dy; out: the direct part of dL/dh_{t-1}, to which phase 2 adds dG @ w_hh) and dc (LSTM).
 * The gate gradients go to dgx / dgh (x and h sides, row (t, b), gate g at g * H + j) and
 * to the packed dgp (gate g of unit j at dgp[(g * H + j) * rows], see packed_at). With a
 * projection: dh is du (in: dL/du_t; out: ignored), dy and h_prev are NULL, and the cell
 * writes its output u_t to out (else NULL). */
struct RN(ubwd) {
    int64_t nu, H, rows;
    const real *ws, *ws_prev, *h_prev, *c0, *dy;
    real *dh, *dc, *dgx, *dgh, *dgp, *out;
};

/* One cell: what the generic loops know of it. */
struct RN(cell) {
    int G;           /* gates: w_ih is (G*H, I), w_hh (G*H, H); 1, 3 or 4 (see tile_step) */
    int ws_width;    /* ws values per unit: nws = ws_width * H */
    int hh_folded;   /* gates [0, hh_folded) add b_hh into the input projection (input_bias);
                      * the rest get it from the view (GRU's n: inside r * (W_hn h + b_hn)) */
    int split_dg;    /* the x and h sides of dG differ (GRU): dgh is an array of its own */
    void (*fwd)(const struct RN(ufwd) *u);
    void (*bwd)(const struct RN(ubwd) *u);
};

static inline real RN(sigmoid)(real v) { return 1 / (1 + EXP(-v)); }

/* acc[i][j] = sum_k hp[k][i] * wp[k][j]: ROWS batch rows by NR hidden units, with both
 * operands packed k-major so the inner loop is one vector FMA per row. ROWS is a constant
 * in each call below, so the accumulators stay in registers. With few rows (B = 1, 2) one
 * chain of ROWS x 2 accumulators would leave the FMA units waiting on their 4-cycle latency
 * (2 units need >= 8 independent sums): k is then split into KS interleaved chains, summed
 * at the end (KS * ROWS = 4 -> 8 accumulator vectors). */
static inline __attribute__((always_inline)) void RN(step_micro_rows)(
        int64_t K, const real *restrict hp, const real *restrict wp, real acc[SMR][NR], int ROWS,
        int accumulate) {
    enum { KS_MAX = 4 };
    const int KS = ROWS >= 4 ? 1 : 4 / ROWS;
    VEC sum[KS_MAX][SMR][2];
    for (int s = 0; s < KS; s++)
        for (int i = 0; i < ROWS; i++) sum[s][i][0] = sum[s][i][1] = V(zero)();
    int64_t k = 0;
    for (; k + KS <= K; k += KS, hp += KS * ROWS, wp += KS * NR)
#pragma GCC unroll 4
        for (int s = 0; s < KS; s++) {
            VEC w0 = V(load)(wp + s * NR), w1 = V(load)(wp + s * NR + NV);
            V(keep)(w0);
            V(keep)(w1);
#pragma GCC unroll 8
            for (int i = 0; i < ROWS; i++) {
                VEC h = V(set1)(hp[s * ROWS + i]);
                sum[s][i][0] = V(fma)(h, w0, sum[s][i][0]);
                sum[s][i][1] = V(fma)(h, w1, sum[s][i][1]);
            }
        }
    for (; k < K; k++, hp += ROWS, wp += NR) {
        VEC w0 = V(load)(wp), w1 = V(load)(wp + NV);
        for (int i = 0; i < ROWS; i++) {
            VEC h = V(set1)(hp[i]);
            sum[0][i][0] = V(fma)(h, w0, sum[0][i][0]);
            sum[0][i][1] = V(fma)(h, w1, sum[0][i][1]);
        }
    }
#pragma GCC unroll 4
    for (int s = 1; s < KS; s++)
        for (int i = 0; i < ROWS; i++) {
            sum[0][i][0] = V(add)(sum[0][i][0], sum[s][i][0]);
            sum[0][i][1] = V(add)(sum[0][i][1], sum[s][i][1]);
        }
    for (int i = 0; i < ROWS; i++) {
        if (accumulate) {
            sum[0][i][0] = V(add)(sum[0][i][0], V(load)(acc[i]));
            sum[0][i][1] = V(add)(sum[0][i][1], V(load)(acc[i] + NV));
        }
        V(store)(acc[i], sum[0][i][0]);
        V(store)(acc[i] + NV, sum[0][i][1]);
    }
}

/* acc (+)= the product above (+= when accumulate: a later slice of k). */
static void RN(step_micro)(int64_t K, int64_t rows, const real *hp, const real *wp,
                           real acc[SMR][NR], int accumulate) {
    switch (rows) {
    case 1: RN(step_micro_rows)(K, hp, wp, acc, 1, accumulate); break;
    case 2: RN(step_micro_rows)(K, hp, wp, acc, 2, accumulate); break;
    case 4: RN(step_micro_rows)(K, hp, wp, acc, 4, accumulate); break;
    default: RN(step_micro_rows)(K, hp, wp, acc, SMR, accumulate); break;
    }
}

/* Backward packing of the column blocks [lo, hi) of w (nrow x ncol): wp[blk][r][j] =
 * w[r][blk*NR + j] (zero past ncol), for dG @ w_hh (and dL/dh @ w_hr). */
static void RN(pack_w_bwd)(const real *w, int64_t nrow, int64_t ncol, real *restrict wp,
                           int64_t lo, int64_t hi) {
    for (int64_t blk = lo; blk < hi; blk++) {
        int64_t u0 = blk * NR, nu = ncol - u0 < NR ? ncol - u0 : NR;
        real *dst = wp + blk * nrow * NR;
        /* two vectors a row (a memcpy call per 64 bytes was ~8% of an LSTM B8 backward) */
        for (int64_t r = 0; r < nrow; r++, dst += NR) {
            const real *src = w + r * ncol + u0;
            V(store)(dst, V(load_n)(src, nu));
            V(store)(dst + NV, V(load_n)(src + NV, nu - NV));
        }
    }
}

/* Column of gate g of unit u in xg and xbias: gate-major (g*H + u) as in w_ih, except for
 * the batch-tiled step, which orders them by its unit blocks, [ub][g][NV]: the thread that
 * owns a block computes those columns of the input projection itself (see
 * time_loop_fwd), so the cell updates read projections from their own core's cache, and
 * the G gates of a block sit side by side. */
static inline int64_t RN(xcol)(const struct RN(rnn) *p, int64_t g, int64_t u) {
    return p->tiled ? (u / NV * p->G + g) * NV + u % NV : g * p->H + u;
}

/* The biases that add straight into the gates: b_ih, and b_hh of the cell's first
 * hh_folded gates (all but GRU's n part, which sits inside r * (W_hn h + b_hn)). The cell
 * updates add them to xg as they read it (a separate pass over xg cost ~5% of the LSTM
 * forward at B64). */
static void RN(input_bias)(const struct RN(rnn) *p, const real *b_ih, real *bias) {
    for (int64_t r = 0; r < p->G * p->H; r++) {
        int folds_hh = r / p->H < p->cell->hh_folded;
        bias[RN(xcol)(p, r / p->H, r % p->H)] =
            (b_ih ? b_ih[r] : 0) + (p->b_hh && folds_hh ? p->b_hh[r] : 0);
    }
}

/* ---- the cells' helpers and the cells ---- */

/* Unit j's gate gradients of a scalar chain rule: dx_side[g] to dgx, dh_side[g] to dgh and
 * the packed dgp. */
static inline void RN(put_unit_grads)(const struct RN(ubwd) *u, int64_t j, int G,
                                      const real *dx_side, const real *dh_side) {
    for (int g = 0; g < G; g++) {
        u->dgx[g * u->H + j] = dx_side[g];
        u->dgh[g * u->H + j] = dh_side[g];
        u->dgp[(g * u->H + j) * u->rows] = dh_side[g];
    }
}

#if UPDATE_SIMD
/* The first n lanes of d to dgp at column `at` (g * H + j): consecutive units of one row
 * are `rows` apart there. */
static inline void RN(put_grad_transposed)(const struct RN(ubwd) *u, int64_t at, int64_t n,
                                           VEC d) {
    real lanes[NV];
    V(store)(lanes, d);
    real *dst = u->dgp + at * u->rows;
    for (int64_t l = 0; l < (n < NV ? n : NV); l++) dst[l * u->rows] = lanes[l];
}

/* The first n lanes of d as the gradient at column `at` of a cell whose x and h sides agree
 * (not split_dg): to dgx and dgp. */
static inline void RN(put_grad)(const struct RN(ubwd) *u, int64_t at, int64_t n, VEC d) {
    V(store_n)(u->dgx + at, d, n);
    RN(put_grad_transposed)(u, at, n, d);
}

/* The same for a cell whose sides differ (split_dg): the x side dx to dgx, the h side dh to
 * dgh and dgp. */
static inline void RN(put_grad_sides)(const struct RN(ubwd) *u, int64_t at, int64_t n, VEC dx,
                                      VEC dh) {
    V(store_n)(u->dgx + at, dx, n);
    V(store_n)(u->dgh + at, dh, n);
    RN(put_grad_transposed)(u, at, n, dh);
}
#endif

#include "cell_lstm.h"
#include "cell_gru.h"
#include "cell_elman.h"

/* The cell update at step s of batch group grp for the units [u0, u0 + nu) from their
 * gates' recurrent parts (unit j of gate g of the group's row i at acc[i * rs + g * gs + j])
 * and input parts (laid out as acc in xacc, or NULL: in the chunk's xg), and the new h
 * packed into hnext (with a projection, u_t into p->u: fwd_project forms h). */
static void RN(fwd_update)(const struct RN(rnn) *p, int64_t s, int64_t u0, int64_t nu,
                           int64_t grp, const real *acc, const real *xacc, int64_t rs,
                           int64_t gs, real *hnext) {
    int64_t H = p->H;  /* (h is H wide here, as it is without a projection) */
    struct RN(ufwd) u = {.nu = nu, .H = H, .gs = gs,
                         .xs = p->tiled ? NV : H,  /* gate stride in xg and xbias (see xcol) */
                         .xb = p->xbias + RN(xcol)(p, 0, u0),
                         .b_hh = p->b_hh ? p->b_hh + u0 : NULL};
    for (int64_t i = 0, b = grp * p->rows; i < p->rows && b < p->B; i++, b++) {
        int64_t len = len_of(p->lengths, b, p->T);
        if (s < len) {  /* else the element is done: its state is carried */
            int64_t t = time_of(s, len, p->reverse), row = t * p->B + b;
            u.acc = acc + i * rs;
            u.xg = xacc ? xacc + i * rs
                        : p->xg + (row - p->xg_t0 * p->B) * p->xgw + RN(xcol)(p, 0, u0);
            u.h = p->h + b * H + u0, u.c = p->c ? p->c + b * H + u0 : NULL;
            u.y = p->y + row * H + u0, u.ws = p->ws ? p->ws + row * p->nws + u0 : NULL;
            if (p->w_hr)
                u.h = u.y = p->u + b * H + u0;
            p->cell->fwd(&u);
        }
        if (p->w_hr)
            continue;
        real *dst = hnext + packed_at(b, u0, H, p->rows);
        for (int64_t j = 0; j < nu; j++)
            dst[j * p->rows] = p->h[b * H + u0 + j];
    }
}

/* ---- in-place step (few rows, see TILE_MIN_ROWS) ----
 * With few batch rows a step reads all of w_hh (and the projection all of w_ih) for a few
 * dot products per row: the time goes to streaming the weights, whatever their layout.
 * Packing them first (a read and a write of both, per call) then costs as much as several
 * steps, and a cell (one step) would pay it on every call. So these steps read the weights
 * as they lie: every gate pre-activation is a dot product of a weight row with an h (or x)
 * row, k along the vector lanes, summed across the lanes once at the end. */

/* Weight rows per dot-product block for M batch rows: M * R accumulators, the M batch
 * vectors kept, one weight vector streamed (and a product without FMA). */
#define DOT_R_FIT(M) ((SIMD_REGS - (M) - 1 - !SIMD_FMA) / (M))
#define DOT_R(M) (DOT_R_FIT(M) < 8 ? DOT_R_FIT(M) : 8)

/* out[m * ldo + r] = a_m . w_r for m < mv, r < rv: rows of a (lda apart) and of w (ldw
 * apart), K long. M and R are constants (the register block); rows past mv / rv repeat the
 * last valid one and are not stored. */
static ALWAYS_INLINE void RN(dots)(int64_t K, const real *restrict a, int64_t lda, int64_t mv,
                                   const real *restrict w, int64_t ldw, int64_t rv,
                                   real *restrict out, int64_t ldo, const int M, const int R) {
    enum { MMAX = 4, RMAX = 8 };
    const real *ar[MMAX], *wr[RMAX];
    VEC acc[MMAX][RMAX];
    for (int m = 0; m < M; m++) ar[m] = a + (m < mv ? m : mv - 1) * lda;
    for (int r = 0; r < R; r++) wr[r] = w + (r < rv ? r : rv - 1) * ldw;
#pragma GCC unroll 4
    for (int m = 0; m < MMAX; m++)
#pragma GCC unroll 8
        for (int r = 0; r < RMAX; r++) acc[m][r] = V(zero)();
    int64_t k = 0;
    for (; k + NV <= K; k += NV) {
        VEC av[MMAX];
#pragma GCC unroll 4
        for (int m = 0; m < M; m++) {
            av[m] = V(load)(ar[m] + k);
            V(keep)(av[m]);
        }
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            VEC wv = V(load)(wr[r] + k);
            __builtin_prefetch(wr[r] + k + DOT_PREFETCH);
#pragma GCC unroll 4
            for (int m = 0; m < M; m++) acc[m][r] = V(fma)(av[m], wv, acc[m][r]);
        }
    }
    if (k < K) {  /* the last K % NV values: masked loads, zeros past K */
        for (int m = 0; m < M; m++) {
            VEC av = V(load_n)(ar[m] + k, K - k);
            for (int r = 0; r < R; r++) acc[m][r] = V(fma)(av, V(load_n)(wr[r] + k, K - k), acc[m][r]);
        }
    }
    for (int m = 0; m < M && m < mv; m++)
        for (int r = 0; r < R && r < rv; r++) out[m * ldo + r] = V(reduce_add)(acc[m][r]);
}

/* out[m * ldo + j] = a_m . w_j for m < M, j < n (any M and n): blocks of dots, weight rows
 * outermost, so each block of them is read from memory once and serves every row of a from
 * L1 (the other order read the weights once per 4 rows of a). */
static void RN(dots_block)(int64_t K, const real *a, int64_t lda, int64_t M, const real *w,
                           int64_t ldw, int64_t n, real *out, int64_t ldo) {
    const int64_t R = M == 1 ? DOT_R(1) : M == 2 ? DOT_R(2) : DOT_R(4);
    for (int64_t j0 = 0; j0 < n; j0 += R) {
        const real *wj = w + j0 * ldw;
        for (int64_t m0 = 0; m0 < M; m0 += 4) {
            int64_t mv = M - m0 < 4 ? M - m0 : 4;
            const real *am = a + m0 * lda;
            real *om = out + m0 * ldo + j0;
            if (M == 1)
                RN(dots)(K, am, lda, 1, wj, ldw, n - j0, om, ldo, 1, DOT_R(1));
            else if (M == 2)
                RN(dots)(K, am, lda, 2, wj, ldw, n - j0, om, ldo, 2, DOT_R(2));
            else  /* (R = DOT_R(4) rows for every block of 4 rows of a, the last maybe fewer) */
                RN(dots)(K, am, lda, mv, wj, ldw, n - j0, om, ldo, 4, DOT_R(4));
        }
    }
}

/* The input projections of M rows of x (from x_rows) for this thread's unit blocks
 * [lo, hi), w_ih read in place: xg[m][g*H + u] (xcol's untiled order). */
static void RN(project_in_place)(const struct RN(rnn) *p, int64_t M, const real *x_rows,
                                 int64_t lo, int64_t hi) {
    int64_t H = p->H, I = p->I;
    for (int64_t ub = lo; ub < hi; ub++) {
        int64_t u0 = ub * NV, nu = H - u0 < NV ? H - u0 : NV;
        for (int64_t g = 0; g < p->G; g++)
            RN(dots_block)(I, x_rows, I, M, p->w_ih + (g * H + u0) * I, I, nu,
                           p->xg + RN(xcol)(p, g, u0), p->xgw);
    }
}

/* Step s for the unit block ub (NV units, all G gates) and every batch row: the recurrent
 * part of the gates from hcur (B x P, as it lies) and w_hh in place, then the updates. */
static void RN(fwd_block_in_place)(const struct RN(rnn) *p, int64_t s, int64_t ub,
                                   const real *hcur, real *hnext, real *acc) {
    int64_t H = p->H, P = p->P, G = p->G, u0 = ub * NV, nu = H - u0 < NV ? H - u0 : NV;
    /* acc: this thread's B x G x NV partial sums, [b][g][j] */
    for (int64_t g = 0; g < G; g++)
        RN(dots_block)(P, hcur, P, p->B, p->w_hh + (g * H + u0) * P, P, nu, acc + g * NV,
                       G * NV);
    for (int64_t b = 0; b < p->B; b++)
        RN(fwd_update)(p, s, u0, nu, b, acc + b * G * NV, NULL, 0, NV, hnext);
}

/* ---- batch-tiled step (enough rows, see TILE_MIN_ROWS) ----
 * With many batch rows the per-step product h (B x H) @ w_hh^T is a real matmul, and the
 * step_micro blocks (8 rows x 2 vectors of one gate: 16 accumulators, 10 loads per 16 FMAs,
 * the partial sums of every gate and group going through memory) ran it at about half
 * the FMA peak. Here a tile is R batch rows x all G gates of NV hidden units (one vector
 * per gate): R * G = TILE_R(G) * G accumulators (LSTM 6 x 4, GRU 8 x 3 with 32 vector
 * registers; 2 x 4 and 4 x 3 with 16), G + R
 * loads per R * G FMAs, and when the last k slice is done the tile holds every gate of its
 * units, so the cell update runs straight from it. */

/* wp[ub][k][g][j] = w[g*H + ub*NV + j][k] (zero past H) for the unit blocks [lo, hi) of
 * w = w_hh or w_ih (G*H x K): per k, the G gate vectors of one block of NV units side by
 * side, so a tile streams its operand in order. */
static void RN(pack_w_tiled)(const struct RN(rnn) *p, const real *w, int64_t K,
                             real *restrict wp, int64_t lo, int64_t hi) {
    int64_t H = p->H, G = p->G;
    for (int64_t ub = lo; ub < hi; ub++) {
        const real *rows[4 * NV];
        for (int64_t g = 0; g < G; g++)
            for (int64_t j = 0, u = ub * NV; j < NV; j++, u++)
                rows[g * NV + j] = u < H ? w + (g * H + u) * K : NULL;
        RN(seqcore_pack_cols)(K, G * NV, rows, 0, wp + ub * K * G * NV, G * NV);
    }
}

/* x of the steps [s0, s1) packed as h is (packed_at, I columns), share `part` of `parts`
 * of the (step, group) pairs: xpack[s - s0][grp][k][i] = x[t][grp*rows + i][k], t the time
 * of step s of that element (zeros past B or its length). */
static void RN(pack_x_steps)(const struct RN(rnn) *p, int64_t s0, int64_t s1, int64_t part,
                             int64_t parts) {
    int64_t I = p->I, R = p->rows, n = (s1 - s0) * p->ngrp;
    for (int64_t item = n * part / parts; item < n * (part + 1) / parts; item++) {
        int64_t s = s0 + item / p->ngrp, grp = item % p->ngrp;
        const real *rows[8];  /* TILE_R <= 8 */
        for (int64_t i = 0, b = grp * R; i < R; i++, b++) {
            int64_t len = b < p->B ? len_of(p->lengths, b, p->T) : 0;
            rows[i] = s < len ? p->x + (time_of(s, len, p->reverse) * p->B + b) * I : NULL;
        }
        RN(seqcore_pack_cols)(I, R, rows, 0, p->xpack + item * I * R, R);
    }
}

/* acc[i][g][j] (+)= sum over kc values of k of hp[k][i] * wp[k][g][j]: R rows (packed h of
 * one batch group) by G gates x NV units. R and G are constants in each call (see
 * tile_step), so the accumulators stay in registers. acc is read first unless `first`. */
static ALWAYS_INLINE void RN(tile_rows)(int64_t kc, const real *restrict hp, int64_t hs,
                                 const real *restrict wp, real *restrict acc, int first,
                                 const int R, const int G) {
    enum { RMAX = 8 };
    VEC sum[RMAX][4];
    /* all of them, not only R x G: GCC 12 warns of maybe-uninitialized ones otherwise (it
     * drops the unused ones) */
#pragma GCC unroll 8
    for (int i = 0; i < RMAX; i++)
#pragma GCC unroll 4
        for (int g = 0; g < 4; g++)
            sum[i][g] = V(zero)();
#pragma GCC unroll 8
    for (int i = 0; i < R; i++)
#pragma GCC unroll 4
        for (int g = 0; g < G; g++)
            sum[i][g] = first ? V(zero)() : V(load)(acc + (i * G + g) * NV);
    /* full tiles step h by the constant R: with hs in a register GCC 12 spills one of the
     * 6 x 4 LSTM accumulators */
    const int64_t hstep = R == TILE_R(G) ? R : hs;
    for (int64_t k = 0; k < kc; k++, hp += hstep, wp += G * NV) {
        if (R < G) {  /* keep the R broadcast h values, stream the G weight vectors */
            VEC h[RMAX];
#pragma GCC unroll 8
            for (int i = 0; i < R; i++) {
                h[i] = V(set1)(hp[i]);
                V(keep)(h[i]);
            }
#pragma GCC unroll 4
            for (int g = 0; g < G; g++) {
                VEC w = V(load)(wp + g * NV);
                V(keep)(w);
#pragma GCC unroll 8
                for (int i = 0; i < R; i++)
                    sum[i][g] = V(fma)(h[i], w, sum[i][g]);
            }
        } else {  /* keep the G weight vectors, stream the R broadcast h values */
            VEC w[4];
#pragma GCC unroll 4
            for (int g = 0; g < G; g++) {
                w[g] = V(load)(wp + g * NV);
                V(keep)(w[g]);
            }
#pragma GCC unroll 8
            for (int i = 0; i < R; i++) {
                VEC h = V(set1)(hp[i]);
#pragma GCC unroll 4
                for (int g = 0; g < G; g++)
                    sum[i][g] = V(fma)(h, w[g], sum[i][g]);
            }
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < R; i++)
#pragma GCC unroll 4
        for (int g = 0; g < G; g++)
            V(store)(acc + (i * G + g) * NV, sum[i][g]);
}

/* Rows per batch group of the tiled step (TILE_R: from the level's registers). */
static int64_t RN(tile_rows_for)(int64_t G) { return TILE_R(G); }

/* tile_rows for `rows` of the group's hs rows (the last group of B holds fewer than hs,
 * and computing its padding rows cost ~3% of the step at LSTM B64: 64 = 10 x 6 + 4). */
#define TILE_CASES(G)                                                                       \
    switch (rows < TILE_R(G) ? rows : TILE_R(G)) {                                        \
    case 1: RN(tile_rows)(kc, hp, hs, wp, acc, first, 1, G); break;                      \
    case 2: RN(tile_rows)(kc, hp, hs, wp, acc, first, 2 <= TILE_R(G) ? 2 : 1, G); break; \
    case 3: RN(tile_rows)(kc, hp, hs, wp, acc, first, 3 <= TILE_R(G) ? 3 : 1, G); break; \
    case 4: RN(tile_rows)(kc, hp, hs, wp, acc, first, 4 <= TILE_R(G) ? 4 : 1, G); break; \
    case 5: RN(tile_rows)(kc, hp, hs, wp, acc, first, 5 <= TILE_R(G) ? 5 : 1, G); break; \
    case 6: RN(tile_rows)(kc, hp, hs, wp, acc, first, 6 <= TILE_R(G) ? 6 : 1, G); break; \
    case 7: RN(tile_rows)(kc, hp, hs, wp, acc, first, 7 <= TILE_R(G) ? 7 : 1, G); break; \
    default: RN(tile_rows)(kc, hp, hs, wp, acc, first, TILE_R(G), G); break;              \
    }

/* (G a constant in each case: a cell with another number of gates adds its case) */
static void RN(tile_step)(int64_t kc, int64_t G, int64_t rows, const real *hp, int64_t hs,
                          const real *wp, real *acc, int first) {
    switch (G) {
    case 4: TILE_CASES(4) break;
    case 3: TILE_CASES(3) break;
    default: TILE_CASES(1) break;
    }
}
#undef TILE_CASES

/* acc[n] (+)= the product of the packed rows of n batch groups (hp: K columns, as
 * packed_at lays them out; group n of a step is batch group n % ngrp) with a unit block's
 * packed weights (wp: K x G x NV), k in slices of TILE_KSLICE: each slice of wp is used by
 * all groups while it is in L1. */
static void RN(tiles_groups)(const struct RN(rnn) *p, int64_t K, const real *hp,
                             const real *wp, real *acc, int64_t n) {
    int64_t G = p->G, R = p->rows, tile = R * G * NV;
    for (int64_t k0 = 0; k0 < K; k0 += TILE_KSLICE) {
        int64_t kc = K - k0 < TILE_KSLICE ? K - k0 : TILE_KSLICE;
        for (int64_t grp = 0; grp < n; grp++)
            RN(tile_step)(kc, G, p->B - grp % p->ngrp * R, hp + (grp * K + k0) * R, R,
                          wp + k0 * G * NV, acc + grp * tile, k0 == 0);
    }
}

/* The input projections of the steps [s0, s1) (x packed in xpack) for this thread's unit
 * blocks [lo, hi), before those steps: xproj[ub][s - s0][grp] (tiles, laid out as acc). */
static void RN(project_tiled)(const struct RN(rnn) *p, int64_t s0, int64_t s1, int64_t lo,
                              int64_t hi) {
    int64_t I = p->I, G = p->G, tile = p->rows * G * NV;
    for (int64_t ub = lo; ub < hi; ub++)
        RN(tiles_groups)(p, I, p->xpack, p->wip + ub * I * G * NV,
                         p->xproj + ub * p->xp_chunk * p->ngrp * tile, (s1 - s0) * p->ngrp);
}

/* Step s for the unit block ub (NV units, all G gates) and every batch group: the recurrent
 * part h @ w_hh^T of its gates (into acc, ngrp x R x G x NV), then the cell updates straight
 * from it and from the chunk's projections (project_tiled, laid out as acc). The
 * projections were once computed here too, with w_ih packed like w_hh: that read all of
 * w_ih again at every step, as many bytes as w_hh for the same few rows, and made T64 B8
 * (I = H = 512, AVX-512, Rocket Lake) 13-19% slower and T64 B2 1.6x slower than projecting
 * per chunk; T64 B64 within 2% either way. */
static void RN(fwd_block_tiled)(const struct RN(rnn) *p, int64_t s, int64_t ub,
                                const real *hcur, real *hnext, real *acc) {
    int64_t H = p->H, P = p->P, G = p->G, tile = p->rows * G * NV;
    const real *xacc = p->xproj + (ub * p->xp_chunk + s - p->xp_s0) * p->ngrp * tile;
    RN(tiles_groups)(p, P, hcur, p->wp + ub * P * G * NV, acc, p->ngrp);
    int64_t u0 = ub * NV, nu = H - u0 < NV ? H - u0 : NV;
    for (int64_t grp = 0; grp < p->ngrp; grp++)
        RN(fwd_update)(p, s, u0, nu, grp, acc + grp * tile, xacc + grp * tile, G * NV, NV,
                       hnext);
}

/* Per-thread partial sums (the recurrent part) of fwd_block_tiled or fwd_block_in_place. */
static int64_t RN(accbuf_size)(const struct RN(rnn) *p) {
    return p->tiled ? p->ngrp * p->rows * p->G * NV : p->B * p->G * NV;
}

/* The projection of step s (see "the projection") for this thread's blocks [lo, hi) of NV
 * columns of h: h = u @ w_hr^T for the elements at one of their steps (w_hr read in place,
 * dots: out, B x NV, of the thread's scratch), to the state, y and hnext; the others' h is
 * carried. */
static void RN(fwd_project)(const struct RN(rnn) *p, int64_t s, int64_t lo, int64_t hi,
                            real *hnext, real *out) {
    int64_t B = p->B, H = p->H, P = p->P;
    for (int64_t pb = lo; pb < hi; pb++) {
        int64_t c0 = pb * NV, nc = P - c0 < NV ? P - c0 : NV;
        RN(dots_block)(H, p->u, H, B, p->w_hr + c0 * H, H, nc, out, NV);
        for (int64_t b = 0; b < B; b++) {
            int64_t len = len_of(p->lengths, b, p->T);
            real *h = p->h + b * P + c0, *dst = hnext + packed_at(b, c0, P, p->rows);
            if (s < len) {
                real *y = p->y + (time_of(s, len, p->reverse) * B + b) * P + c0;
                for (int64_t j = 0; j < nc; j++)
                    h[j] = y[j] = out[b * NV + j];
            }
            for (int64_t j = 0; j < nc; j++)
                dst[j * p->rows] = h[j];
        }
    }
}

/* Steps [s0, s1) for this thread's blocks [lo, hi) of NV units (and with a projection its
 * blocks [plo, phi) of NV columns of h). */
static void RN(time_steps_fwd)(const struct RN(rnn) *p, real *hpack, int64_t one, int64_t s0,
                               int64_t s1, int64_t lo, int64_t hi, int64_t plo, int64_t phi,
                               real *mybuf) {
    for (int64_t s = s0; s < s1; s++) {
        const real *hcur = hpack + (s & 1) * one;
        real *hnext = hpack + ((s + 1) & 1) * one;
        /* This thread's rows of w_hh (2 MB per thread for LSTM H512: all of its L2) are
         * read once per step. In the same order every step, LRU would evict each line
         * just before its next use; alternating the direction makes each step start on
         * the blocks the previous one read last, which are still cached. */
        for (int64_t n = 0; n < hi - lo; n++) {
            int64_t blk = s & 1 ? hi - 1 - n : lo + n;
            if (p->tiled)
                RN(fwd_block_tiled)(p, s, blk, hcur, hnext, mybuf);
            else
                RN(fwd_block_in_place)(p, s, blk, hcur, hnext, mybuf);
        }
#pragma omp barrier
        if (p->w_hr) {  /* all of u is written: project it */
            RN(fwd_project)(p, s, plo, phi, hnext, mybuf);
#pragma omp barrier
        }
    }
}


/* The time loop, in chunks of `chunk` steps: per chunk, each thread prepares its share of
 * the chunk's input projections (in place: xg = x @ w_ih^T for the columns of its own
 * units; tiled: x packed by all threads, a barrier, then xproj for its own units), then the
 * steps, one barrier after each. */
static void RN(time_loop_fwd)(struct RN(rnn) *p, real *hpack, int64_t steps, int64_t chunk,
                              real *accbufs) {
    int64_t one = p->ngrp * p->P * p->rows;  /* size of one packed h buffer */
    int64_t B = p->B, I = p->I;
    double flops = 2.0 * (double)steps * B * ((p->I + p->P) * p->G * p->H +
                                              (p->w_hr ? p->H * p->P : 0));
#pragma omp parallel if (seqcore_worth_threads(flops))
    {
        int64_t lo, hi, plo = 0, phi = 0;
        thread_share(ceil_div(p->H, NV), &lo, &hi);
        if (p->w_hr)  /* (its blocks of h's columns) */
            thread_share(ceil_div(p->P, NV), &plo, &phi);
        int64_t tid = 0, nthreads = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        nthreads = omp_get_num_threads();
#endif
        /* Each thread packs the parts of w_ih^T and w_hh that it alone reads: in parallel,
         * with no barrier (serial, the packing took ~20% of the LSTM B1 forward), and
         * into its own core's cache. */
        if (p->tiled) {
            RN(pack_w_tiled)(p, p->w_hh, p->P, p->wp, lo, hi);
            RN(pack_w_tiled)(p, p->w_ih, I, p->wip, lo, hi);
        }
        real *mybuf = accbufs ? accbufs + tid * RN(accbuf_size)(p) : NULL;
        /* this thread's view of the call: where the current chunk starts is its own */
        struct RN(rnn) mine = *p;
        for (int64_t s0 = 0; s0 < steps; s0 += chunk) {
            int64_t s1 = s0 + chunk < steps ? s0 + chunk : steps;
            if (p->tiled) {  /* x packed, then projected for the units of each thread */
                RN(pack_x_steps)(p, s0, s1, tid, nthreads);
                mine.xp_s0 = s0;
#pragma omp barrier
                /* (every share of xpack is written: each unit block reads all of them) */
                RN(project_tiled)(p, s0, s1, lo, hi);
            } else {
                /* times [t0, t0 + s1 - s0) of the steps [s0, s1) (one chunk of all steps
                 * when lengths and reverse: see rnn_fwd); each thread projects and then
                 * reads only the columns of its own units: no barrier */
                int64_t t0 = p->reverse && !p->lengths ? p->T - s1 : s0;
                RN(project_in_place)(p, (s1 - s0) * B, p->x + t0 * B * I, lo, hi);
                mine.xg_t0 = t0;
            }
            RN(time_steps_fwd)(&mine, hpack, one, s0, s1, lo, hi, plo, phi, mybuf);
        }
    }
}

static void RN(init_state)(real *state, const real *given, int64_t n) {
    if (n == 0)  /* (an empty batch may come with NULL pointers: memset(NULL, 0, 0) is UB) */
        return;
    if (given)
        memcpy(state, given, (size_t)n * sizeof(real));
    else
        memset(state, 0, (size_t)n * sizeof(real));
}

static int RN(rnn_fwd)(struct RN(rnn) *p, const real *b_ih) {
    int64_t T = p->T, B = p->B, H = p->H, P = p->P, GH = p->G * H;
    RN(init_state)(p->h, p->h0, B * P);
    if (p->c)  /* (LSTM) */
        RN(init_state)(p->c, p->c0, B * H);
    if (p->lengths && T * B * H > 0) {  /* else every step writes all of y and ws */
        memset(p->y, 0, (size_t)(T * B * P) * sizeof(real));
        if (p->ws)
            memset(p->ws, 0, (size_t)(T * B * p->nws) * sizeof(real));
    }
    int64_t steps = max_len(p->lengths, B, T);
    if (steps == 0)
        return SEQCORE_OK;
    if (B >= 2 && steps * B >= TILE_MIN_ROWS) {  /* batch-tiled: groups of tile_rows_for(G) rows */
        p->tiled = 1;
        p->rows = RN(tile_rows_for)(p->G);
        p->ngrp = ceil_div(B, p->rows);
    } else {
        /* weights in place; h as it lies (one row per group: packed_at is the plain layout) */
        p->rows = 1;
        p->ngrp = B;
    }
    /* The time loop runs in chunks of steps. Each chunk's input projections are computed
     * first, w_ih read once for all the chunk's rows (in place, or packed when tiled): they
     * are still in cache when its steps read them, and the buffer is small (all T at once:
     * 32 MB for LSTM B64). In place with lengths and reverse the elements' steps do not map
     * to common times: one chunk of all of them. The tiled path packs each chunk's x at each
     * element's own time instead (any chunk). */
    int64_t chunk = p->lengths && p->reverse && !p->tiled
                        ? steps : ceil_div(p->tiled ? TILE_CHUNK_ROWS : CHUNK_ROWS, B);
    chunk = chunk < steps ? chunk : steps;
    p->xgw = p->tiled ? ceil_div(H, NV) * NV * p->G : GH;  /* (see xcol) */
    int64_t nthreads = 1;
#ifdef _OPENMP
    nthreads = omp_get_max_threads();
#endif
    int64_t accsize = RN(accbuf_size)(p), I = p->I, rs = (int64_t)sizeof(real);
    int tiled = p->tiled;
    p->xp_chunk = chunk;
    /* The scratch, in one block: xbias; tiled, packed w_hh (wp), packed x and w_ih; the
     * projections (in place xg, tiled xproj); h (two buffers, packed when tiled);
     * per-thread partial sums; with w_hr, u. */
    int64_t bytes[9] = {p->xgw * rs,
                        tiled ? ceil_div(H, NV) * NV * p->G * P * rs : 0,
                        tiled ? chunk * p->ngrp * p->rows * I * rs : 0,
                        tiled ? ceil_div(H, NV) * NV * p->G * I * rs : 0,
                        tiled ? 0 : chunk * B * p->xgw * rs,
                        2 * p->ngrp * p->rows * P * rs,
                        nthreads * accsize * rs,
                        tiled ? ceil_div(H, NV) * chunk * p->ngrp * p->rows * p->G * NV * rs : 0,
                        p->w_hr ? B * H * rs : 0};
    void *part[9];
    void *scratch = seqcore_scratch_take_parts(9, bytes, part, 0);
    p->xbias = part[0], p->wp = part[1], p->xpack = part[2], p->wip = part[3], p->xg = part[4];
    real *hpack = part[5], *accbufs = part[6];
    p->xproj = part[7], p->u = part[8];
    if (!scratch)
        return SEQCORE_ENOMEM;
    zero_bytes(p->xbias, bytes[0]);  /* (padding columns stay zero) */
    RN(input_bias)(p, b_ih, p->xbias);
    zero_bytes(hpack, bytes[5]);  /* (padding rows stay zero) */
    zero_bytes(p->u, bytes[8]);  /* (rows of elements that are done are projected unused) */
    for (int64_t b = 0; b < B; b++)
        for (int64_t k = 0; k < P; k++)
            hpack[packed_at(b, k, P, p->rows)] = p->h[b * P + k];
    RN(time_loop_fwd)(p, hpack, steps, chunk, accbufs);
    seqcore_scratch_give(scratch);
    return SEQCORE_OK;
}

/* ---- backward ---- */

/* Phase 1 of step s for (blk, grp): gate gradients of own units into dgx/dgh (indexed by
 * time) and into the packed dgp (rows of elements that are done stay zero there). With a
 * projection the chain rule starts from du = dL/dh_t @ w_hr (own units), and u_t is kept. */
static void RN(bwd_point_block)(const struct RN(rnn) *p, int64_t s, int64_t blk, int64_t grp,
                                real *dgp) {
    int64_t H = p->H, P = p->P, B = p->B, G = p->G, GH = G * H, u0 = blk * NR;
    struct RN(ubwd) u = {.nu = H - u0 < NR ? H - u0 : NR, .H = H, .rows = p->rows};
    real du[SMR][NR];
    if (p->w_hr)  /* (rows of elements that are done: unused) */
        RN(step_micro)(P, p->rows, p->dhp + grp * P * p->rows, p->wrp + blk * P * NR, du, 0);
    for (int64_t i = 0, b = grp * p->rows; i < p->rows && b < B; i++, b++) {
        int64_t len = len_of(p->lengths, b, p->T);
        u.dgp = dgp + packed_at(b, u0, GH, p->rows);
        if (s >= len) {  /* dh, dc are carried unchanged; no gate gradients */
            for (int64_t g = 0; g < G; g++)
                for (int64_t j = 0; j < u.nu; j++) u.dgp[(g * H + j) * p->rows] = 0;
            continue;
        }
        int64_t row = time_of(s, len, p->reverse) * B + b;
        int64_t prev = s > 0 ? time_of(s - 1, len, p->reverse) * B + b : -1;
        u.ws = p->wss + row * p->nws + u0;
        u.ws_prev = prev >= 0 ? p->wss + prev * p->nws + u0 : NULL;
        u.c0 = p->c0 ? p->c0 + b * H + u0 : NULL;
        u.dc = p->dc ? p->dc + b * H + u0 : NULL;
        u.dgx = p->dgx + row * GH + u0, u.dgh = p->dgh + row * GH + u0;
        if (p->w_hr) {  /* (h, y, dy and dh are P wide: the cell sees none of them) */
            u.h_prev = u.dy = NULL;
            u.dh = du[i], u.out = p->u + row * H + u0;
        } else {
            u.h_prev = prev >= 0 ? p->ys + prev * H + u0 : p->h0 ? p->h0 + b * H + u0 : NULL;
            u.dy = p->dy ? p->dy + row * H + u0 : NULL;
            u.dh = p->dh + b * H + u0;
        }
        p->cell->bwd(&u);
    }
}

/* With a projection, for (blk, grp), blk a block of NR of h's P columns: dL/dh_t of step s
 * for the elements at one of their steps, the carried dh plus dy, into dht (at its time)
 * and packed into dhp for phase 1. */
static void RN(bwd_dh_step)(const struct RN(rnn) *p, int64_t s, int64_t blk, int64_t grp) {
    int64_t B = p->B, P = p->P;
    for (int64_t i = 0, b = grp * p->rows; i < p->rows && b < B; i++, b++) {
        int64_t len = len_of(p->lengths, b, p->T);
        if (s >= len)
            continue;
        int64_t row = time_of(s, len, p->reverse) * B + b;
        real *dst = p->dhp + packed_at(b, blk * NR, P, p->rows);
        for (int64_t j = 0, c = blk * NR; j < NR && c < P; j++, c++) {
            real v = p->dh[b * P + c] + (p->dy ? p->dy[row * P + c] : 0);
            p->dht[row * P + c] = dst[j * p->rows] = v;
        }
    }
}

/* Phase 2 for (blk, grp), blk a block of NR of h's P columns: dh[:, own] += dG_t @ w_hh[:,
 * own] (the cell left the direct part in dh); with a projection the elements at one of
 * their steps take dh = dG_t @ w_hh (the cell's direct part went to its du), the others
 * keep theirs. */
static void RN(bwd_matmul_block)(const struct RN(rnn) *p, int64_t s, int64_t blk, int64_t grp,
                                 const real *dgp) {
    int64_t P = p->P, GH = p->G * p->H;
    real acc[SMR][NR];
    RN(step_micro)(GH, p->rows, dgp + grp * GH * p->rows, p->wp + blk * GH * NR, acc, 0);
    for (int64_t i = 0, b = grp * p->rows; i < p->rows && b < p->B; i++, b++) {
        int keep = !p->w_hr || s >= len_of(p->lengths, b, p->T);
        for (int64_t j = 0, c = blk * NR; j < NR && c < P; j++, c++)
            p->dh[b * P + c] = (keep ? p->dh[b * P + c] : 0) + acc[i][j];
    }
}

static void RN(time_loop_bwd)(const struct RN(rnn) *p, real *dgpack, int64_t steps) {
    int64_t one = p->ngrp * p->G * p->H * p->rows;  /* size of one packed dG buffer */
    double flops = 2.0 * steps * p->B * p->H * (p->G * p->P + (p->w_hr ? p->P : 0));
#pragma omp parallel if (seqcore_worth_threads(flops))
    {
        int64_t lo, hi, plo, phi;  /* this thread's blocks of units, and of h's columns */
        thread_share(p->nblk, &lo, &hi);
        thread_share(ceil_div(p->P, NR), &plo, &phi);
        /* only this thread reads its blocks of the packed w_hh (phase 2) and w_hr (phase
         * 1): no barrier */
        RN(pack_w_bwd)(p->w_hh, p->G * p->H, p->P, p->wp, plo, phi);
        if (p->w_hr) {
            RN(pack_w_bwd)(p->w_hr, p->P, p->H, p->wrp, lo, hi);
            for (int64_t blk = plo; blk < phi && steps > 0; blk++)
                for (int64_t grp = 0; grp < p->ngrp; grp++)
                    RN(bwd_dh_step)(p, steps - 1, blk, grp);
#pragma omp barrier
        }
        for (int64_t s = steps - 1; s >= 0; s--) {
            /* two buffers: phase 1 of the next step may start while others are in phase 2 */
            real *dgp = dgpack + (s & 1) * one;
            for (int64_t blk = lo; blk < hi; blk++)
                for (int64_t grp = 0; grp < p->ngrp; grp++)
                    RN(bwd_point_block)(p, s, blk, grp, dgp);
#pragma omp barrier
            for (int64_t blk = plo; blk < phi; blk++)
                for (int64_t grp = 0; grp < p->ngrp; grp++) {
                    RN(bwd_matmul_block)(p, s, blk, grp, dgp);
                    if (p->w_hr && s > 0)
                        RN(bwd_dh_step)(p, s - 1, blk, grp);
                }
            if (p->w_hr) {  /* phase 1 of the next step reads all of dhp */
#pragma omp barrier
            }
        }
    }
}

/* h_prev (T, B, P): the state each valid step started from (zero elsewhere). */
static void RN(gather_h_prev)(const struct RN(rnn) *p, real *h_prev) {
    int64_t B = p->B, H = p->P;  /* (h's width) */
    for (int64_t b = 0; b < B; b++) {
        int64_t len = len_of(p->lengths, b, p->T);
        for (int64_t s = 0; s < len; s++) {
            real *dst = h_prev + (time_of(s, len, p->reverse) * B + b) * H;
            if (s > 0)
                memcpy(dst, p->ys + (time_of(s - 1, len, p->reverse) * B + b) * H,
                       (size_t)H * sizeof(real));
            else if (p->h0)
                memcpy(dst, p->h0 + b * H, (size_t)H * sizeof(real));
        }
    }
}

static void RN(column_sums)(const real *a, int64_t rows, int64_t cols, real *sums) {
    memset(sums, 0, (size_t)cols * sizeof(real));
    for (int64_t m = 0; m < rows; m++)
        for (int64_t r = 0; r < cols; r++)
            sums[r] += a[m * cols + r];
}

/* dw_hh = dG^T h_prev, h_prev (T, B, P) the state each step started from. Without lengths
 * it is y shifted by one step (and h0 at the first): two products on y as it lies, no copy.
 * With lengths the rows are gathered first. */
static int RN(dw_hh_grad)(const struct RN(rnn) *p, real *dw_hh) {
    int64_t T = p->T, B = p->B, H = p->P, GH = p->G * p->H, TB = T * B;  /* (H: h's width) */
    if (!p->lengths) {
        /* forward order: step t (t >= 1) started from y[t - 1]; reversed: from y[t + 1] */
        const real *dg_rest = p->dgh + (p->reverse ? 0 : B * GH);
        const real *h_rest = p->ys + (p->reverse ? B * H : 0);
        const real *dg_first = p->dgh + (p->reverse ? (T - 1) * B * GH : 0);
        int64_t rest = T > 0 ? (T - 1) * B : 0;  /* (T = 0: zeros) */
        int status = RN(seqcore_gemm)(GH, H, rest, dg_rest, 1, GH, h_rest, H, 1, 0, dw_hh, H);
        if (!status && p->h0 && T > 0)
            status = RN(seqcore_gemm)(GH, H, B, dg_first, 1, GH, p->h0, H, 1, 1, dw_hh, H);
        return status;
    }
    real *h_prev = seqcore_scratch_take((size_t)(TB * H) * sizeof(real));
    if (!h_prev)
        return SEQCORE_ENOMEM;
    memset(h_prev, 0, (size_t)(TB * H) * sizeof(real));
    RN(gather_h_prev)(p, h_prev);
    int status = RN(seqcore_gemm)(GH, H, TB, p->dgh, 1, GH, h_prev, H, 1, 0, dw_hh, H);
    seqcore_scratch_give(h_prev);
    return status;
}

/* The matmuls over all steps once dG is known (and with a projection dw_hr = dht^T u). */
static int RN(weight_grads)(const struct RN(rnn) *p, real *dx, real *dw_ih, real *dw_hh,
                            real *db_ih, real *db_hh, real *dw_hr) {
    int64_t TB = p->T * p->B, I = p->I, H = p->H, P = p->P, GH = p->G * H;
    int status = RN(seqcore_gemm)(TB, I, GH, p->dgx, GH, 1, p->w_ih, I, 1, 0, dx, I);
    if (!status)
        status = RN(seqcore_gemm)(GH, I, TB, p->dgx, 1, GH, p->x, I, 1, 0, dw_ih, I);
    if (!status)
        status = RN(dw_hh_grad)(p, dw_hh);
    if (!status && p->w_hr)
        status = RN(seqcore_gemm)(P, H, TB, p->dht, 1, P, p->u, H, 1, 0, dw_hr, H);
    RN(column_sums)(p->dgx, TB, GH, db_ih);
    RN(column_sums)(p->dgh, TB, GH, db_hh);
    return status;
}

static int RN(rnn_bwd)(struct RN(rnn) *p, const real *dh_n, const real *dc_n, real *dx,
                       real *dw_ih, real *dw_hh, real *db_ih, real *db_hh, real *dw_hr) {
    int64_t T = p->T, B = p->B, H = p->H, P = p->P, GH = p->G * H;
    RN(init_state)(p->dh, dh_n, B * P);
    if (p->dc)  /* (LSTM) */
        RN(init_state)(p->dc, dc_n, B * H);
    int64_t steps = max_len(p->lengths, B, T);
    /* scratch: the gate gradients, x side and h side (one array unless split_dg), packed
     * w_hh and packed gate gradients (two buffers); with a projection dht, u, packed dht
     * and packed w_hr */
    int64_t rs = (int64_t)sizeof(real), proj = p->w_hr != NULL;
    int64_t bytes[8] = {T * B * GH * rs, p->cell->split_dg ? T * B * GH * rs : 0,
                        ceil_div(P, NR) * NR * GH * rs, 2 * p->ngrp * p->rows * GH * rs,
                        proj ? T * B * P * rs : 0, proj ? T * B * H * rs : 0,
                        proj ? p->ngrp * p->rows * P * rs : 0,
                        proj ? p->nblk * NR * P * rs : 0};
    void *part[8];
    void *scratch = seqcore_scratch_take_parts(8, bytes, part, 0);
    if (!scratch)
        return SEQCORE_ENOMEM;
    p->dgx = part[0], p->dgh = part[1] ? part[1] : part[0], p->wp = part[2];
    real *dgpack = part[3];
    p->dht = part[4], p->u = part[5], p->dhp = part[6], p->wrp = part[7];
    if (p->lengths) {  /* the steps past an element's length leave its gradients zero */
        zero_bytes(p->dgx, bytes[0]);
        if (part[1])
            zero_bytes(p->dgh, bytes[1]);
        zero_bytes(p->dht, bytes[4]);  /* (and its rows of dht and u, for dw_hr) */
        zero_bytes(p->u, bytes[5]);
    }
    zero_bytes(dgpack, bytes[3]);  /* (padding rows stay zero) */
    zero_bytes(p->dhp, bytes[6]);
    RN(time_loop_bwd)(p, dgpack, steps);
    int status = RN(weight_grads)(p, dx, dw_ih, dw_hh, db_ih, db_hh, dw_hr);
    seqcore_scratch_give(scratch);
    return status;
}

/* ---- entry points ---- */

/* Batch rows per step_micro call: SMR unless its padding would waste more than a few rows
 * (B8 with SMR 6: 12 rows computed for 8), then 4, 2 or 1. */
static int64_t RN(step_rows)(int64_t B) {
    if (B >= SMR && ceil_div(B, SMR) * SMR * 100 <= 115 * B)
        return SMR;
    return B >= 4 ? 4 : B >= 2 ? 2 : 1;
}

static struct RN(rnn) RN(problem)(const struct RN(cell) *cell, int64_t T, int64_t B,
                                  int64_t I, int64_t H, const int64_t *lengths, int reverse) {
    struct RN(rnn) p = {0};
    p.cell = cell, p.reverse = reverse != 0;
    p.T = T, p.B = B, p.I = I, p.H = H, p.P = H, p.G = cell->G;
    p.nws = cell->ws_width * H;
    p.rows = RN(step_rows)(B);
    p.nblk = ceil_div(H, NR), p.ngrp = ceil_div(B, p.rows);
    p.lengths = lengths;
    return p;
}

/* h's width P: w_hr NULL and P = H (no projection), or w_hr (P, H) with P >= 1. */
static int RN(check_proj)(int64_t H, int64_t P, const real *w_hr) {
    return w_hr ? P < 1 : P != H;
}

int RN(seqcore_lstm_proj_fwd)(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                              const real *x, const real *w_ih, const real *w_hh,
                              const real *b_ih, const real *b_hh, const real *w_hr,
                              const real *h0, const real *c0, const int64_t *lengths,
                              int reverse, real *y, real *h_n, real *c_n, real *ws) {
    if (check_sizes(T, B, I, H, lengths) || RN(check_proj)(H, P, w_hr) || !x || !w_ih ||
        !w_hh || !y || !h_n || !c_n)
        return SEQCORE_EINVAL;
    struct RN(rnn) p = RN(problem)(&RN(lstm_cell), T, B, I, H, lengths, reverse);
    p.P = P, p.w_hr = w_hr;
    p.x = x, p.w_ih = w_ih, p.w_hh = w_hh, p.b_hh = b_hh, p.h0 = h0, p.c0 = c0;
    p.y = y, p.h = h_n, p.c = c_n, p.ws = ws;
    return RN(rnn_fwd)(&p, b_ih);
}

int RN(seqcore_lstm_fwd)(int64_t T, int64_t B, int64_t I, int64_t H, const real *x,
                         const real *w_ih, const real *w_hh, const real *b_ih,
                         const real *b_hh, const real *h0, const real *c0,
                         const int64_t *lengths, int reverse, real *y, real *h_n, real *c_n,
                         real *ws) {
    return RN(seqcore_lstm_proj_fwd)(T, B, I, H, H, x, w_ih, w_hh, b_ih, b_hh, NULL, h0, c0,
                                     lengths, reverse, y, h_n, c_n, ws);
}

int RN(seqcore_gru_fwd)(int64_t T, int64_t B, int64_t I, int64_t H, const real *x,
                        const real *w_ih, const real *w_hh, const real *b_ih,
                        const real *b_hh, const real *h0, const int64_t *lengths, int reverse,
                        real *y, real *h_n, real *ws) {
    if (check_sizes(T, B, I, H, lengths) || !x || !w_ih || !w_hh || !y || !h_n)
        return SEQCORE_EINVAL;
    struct RN(rnn) p = RN(problem)(&RN(gru_cell), T, B, I, H, lengths, reverse);
    p.x = x, p.w_ih = w_ih, p.w_hh = w_hh, p.b_hh = b_hh, p.h0 = h0;
    p.y = y, p.h = h_n, p.ws = ws;
    return RN(rnn_fwd)(&p, b_ih);
}

int RN(seqcore_lstm_proj_bwd)(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                              const real *dy, const real *dh_n, const real *dc_n,
                              const real *x, const real *w_ih, const real *w_hh,
                              const real *w_hr, const real *h0, const real *c0,
                              const int64_t *lengths, int reverse, const real *y,
                              const real *ws, real *dx, real *dw_ih, real *dw_hh, real *db_ih,
                              real *db_hh, real *dw_hr, real *dh0, real *dc0) {
    if (check_sizes(T, B, I, H, lengths) || RN(check_proj)(H, P, w_hr) || !x || !w_ih ||
        !w_hh || !y || !ws || !dx || !dw_ih || !dw_hh || !db_ih || !db_hh || !dh0 || !dc0 ||
        (w_hr && !dw_hr))
        return SEQCORE_EINVAL;
    struct RN(rnn) p = RN(problem)(&RN(lstm_cell), T, B, I, H, lengths, reverse);
    p.P = P, p.w_hr = w_hr;
    p.x = x, p.w_ih = w_ih, p.w_hh = w_hh, p.h0 = h0, p.c0 = c0, p.dy = dy;
    p.ys = y, p.wss = ws, p.dh = dh0, p.dc = dc0;
    return RN(rnn_bwd)(&p, dh_n, dc_n, dx, dw_ih, dw_hh, db_ih, db_hh, dw_hr);
}

int RN(seqcore_lstm_bwd)(int64_t T, int64_t B, int64_t I, int64_t H, const real *dy,
                         const real *dh_n, const real *dc_n, const real *x,
                         const real *w_ih, const real *w_hh, const real *h0, const real *c0,
                         const int64_t *lengths, int reverse, const real *y, const real *ws,
                         real *dx, real *dw_ih, real *dw_hh, real *db_ih, real *db_hh,
                         real *dh0, real *dc0) {
    return RN(seqcore_lstm_proj_bwd)(T, B, I, H, H, dy, dh_n, dc_n, x, w_ih, w_hh, NULL, h0,
                                     c0, lengths, reverse, y, ws, dx, dw_ih, dw_hh, db_ih,
                                     db_hh, NULL, dh0, dc0);
}

int RN(seqcore_gru_bwd)(int64_t T, int64_t B, int64_t I, int64_t H, const real *dy,
                        const real *dh_n, const real *x, const real *w_ih, const real *w_hh,
                        const real *h0, const int64_t *lengths, int reverse, const real *y,
                        const real *ws, real *dx, real *dw_ih, real *dw_hh, real *db_ih,
                        real *db_hh, real *dh0) {
    if (check_sizes(T, B, I, H, lengths) || !x || !w_ih || !w_hh || !y || !ws || !dx ||
        !dw_ih || !dw_hh || !db_ih || !db_hh || !dh0)
        return SEQCORE_EINVAL;
    struct RN(rnn) p = RN(problem)(&RN(gru_cell), T, B, I, H, lengths, reverse);
    p.x = x, p.w_ih = w_ih, p.w_hh = w_hh, p.h0 = h0, p.dy = dy;
    p.ys = y, p.wss = ws, p.dh = dh0;
    return RN(rnn_bwd)(&p, dh_n, NULL, dx, dw_ih, dw_hh, db_ih, db_hh, NULL);
}

int RN(seqcore_rnn_fwd)(int64_t T, int64_t B, int64_t I, int64_t H, const real *x,
                        const real *w_ih, const real *w_hh, const real *b_ih,
                        const real *b_hh, const real *h0, const int64_t *lengths, int reverse,
                        int relu, real *y, real *h_n, real *ws) {
    if (check_sizes(T, B, I, H, lengths) || !x || !w_ih || !w_hh || !y || !h_n)
        return SEQCORE_EINVAL;
    const struct RN(cell) *cell = relu ? &RN(elman_relu_cell) : &RN(elman_tanh_cell);
    struct RN(rnn) p = RN(problem)(cell, T, B, I, H, lengths, reverse);
    p.x = x, p.w_ih = w_ih, p.w_hh = w_hh, p.b_hh = b_hh, p.h0 = h0;
    p.y = y, p.h = h_n, p.ws = ws;
    return RN(rnn_fwd)(&p, b_ih);
}

int RN(seqcore_rnn_bwd)(int64_t T, int64_t B, int64_t I, int64_t H, const real *dy,
                        const real *dh_n, const real *x, const real *w_ih, const real *w_hh,
                        const real *h0, const int64_t *lengths, int reverse, int relu,
                        const real *y, const real *ws, real *dx, real *dw_ih, real *dw_hh,
                        real *db_ih, real *db_hh, real *dh0) {
    if (check_sizes(T, B, I, H, lengths) || !x || !w_ih || !w_hh || !y || !ws || !dx ||
        !dw_ih || !dw_hh || !db_ih || !db_hh || !dh0)
        return SEQCORE_EINVAL;
    const struct RN(cell) *cell = relu ? &RN(elman_relu_cell) : &RN(elman_tanh_cell);
    struct RN(rnn) p = RN(problem)(cell, T, B, I, H, lengths, reverse);
    p.x = x, p.w_ih = w_ih, p.w_hh = w_hh, p.h0 = h0, p.dy = dy;
    p.ys = y, p.wss = ws, p.dh = dh0;
    return RN(rnn_bwd)(&p, dh_n, NULL, dx, dw_ih, dw_hh, db_ih, db_hh, NULL);
}

/* End of one instantiation: its parameters are undefined for the next. */
#undef real
#undef NR
#undef NV
#undef MADD
#undef EXP
#undef TANH
#undef RN
#undef VEC
#undef V
#undef UPDATE_SIMD

#endif
