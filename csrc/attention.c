/* Attention on the CPU: FlashAttention-2 tiling, forward and backward, float and double.
 *
 * Forward: each task owns BQ query rows of one (sequence, head) and walks the key tiles of
 * its band with an online softmax, so memory is O(tile) per thread (plus one transposed copy
 * of K), never Sq x Sk. Scores and P V are products of small row-major tiles done by one
 * register-blocked micro-kernel (gemm_*); key tiles outside the band are skipped, and only
 * tiles the band cuts through are masked.
 * Backward (FlashAttention-2): delta = rowsum(dout * out); P is recomputed from lse. When
 * the kv heads alone keep the threads busy (and no dbias is asked for), one task owns a kv
 * head: dK, dV of its keys and dQ of its GQA group's queries come from one P and dS per tile.
 * Otherwise one pass owns key tiles (dK, dV, summed over the GQA group), another owns query
 * tiles (dQ and dbias, P and dS recomputed). Either way no two threads add into one row.
 * Dropout (philox.h): the forward zeroes the dropped probabilities after the online softmax
 * has summed them (lse is that of P) and scales O by 1 / (1 - p) once at the end; the
 * backward regenerates the mask per tile, P~ = P keep / (1 - p) for dV and dP keep / (1 - p)
 * for dS. A key tile computes its keys' part of the generator once for all its rows
 * (dropout_keys), and calls without dropout take the code paths they took before (the choice
 * is made per tile, block or row, never per score).
 * Dense batches are "sequences at fixed offsets": one set of kernels serves both layouts
 * through seq_rows. The general kernels are written once, as a template on the element type
 * (see ATTN_TEMPLATE below), and compiled for float and double.
 */
#ifndef ATTN_TEMPLATE
#include "isa.h"  /* this ISA level's names */
#include "seqcore.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "band.h"
#include "parallel.h"
#include "philox.h"
#include "scratch.h"
#include "simd.h"

/* The general path's micro-kernel holds an MR x (2 vectors) block of C in registers, and MR
 * and NR (two vectors) divide the BQ x BK tiles: 8 rows (16 accumulators) and 64-row tiles
 * with 32 vector registers; 6 rows (12 accumulators: 4 left 8, too few to hide the FMA
 * latency) and 48-row tiles with 16. */
enum { MR = SIMD_REGS >= 32 ? 8 : 6 };

enum {
    BQ = SIMD_REGS >= 32 ? 64 : 48,  /* query rows per tile */
    BK = BQ,                         /* key rows per tile */
    NR_F32 = 2 * VF,  /* micro-kernel columns: two vectors */
    NR_F64 = 2 * VD,
    MAX_HEAD_DIM = 256,
};
_Static_assert((int)BK <= (int)DROPOUT_KEYS && (int)BK % (int)VF == 0,
               "a key tile's dropout parts fit dropout_keys");

/* GCC vectorizes loops with 256-bit vectors even where the target has 512-bit ones;
 * WIDE_LOOPS asks for 512 on a function whose scalar loops are worth it. */
#if defined(SIMD_AVX512) && defined(__GNUC__) && !defined(__clang__)
#define WIDE_LOOPS __attribute__((target("prefer-vector-width=512")))
#else
#define WIDE_LOOPS
#endif

/* fmaf/fma inline where the level has FMA; without it a libm call, so a * b + c instead. */
#if SIMD_FMA
#define MADD_F32(a, b, c) fmaf((a), (b), (c))
#define MADD_F64(a, b, c) fma((a), (b), (c))
#else
#define MADD_F32(a, b, c) ((a) * (b) + (c))
#define MADD_F64(a, b, c) ((a) * (b) + (c))
#endif

/* Element i of one (sequence, head) is row first + i * step of an array seen as (rows, width):
 * dense (B, H, S, width): first = (b * H + h) * S, step 1; packed (T, H, width):
 * first = cu[s] * H + h, step H. lse arrays are the same rows with width 1. */
typedef struct { int64_t first, step, len; } seq_rows;

static int64_t row_index(seq_rows sr, int64_t i) { return sr.first + i * sr.step; }

/* Rows j0 .. j0 + VF of one sequence (width floats each), columns c .. c + VF, transposed
 * in registers: column c + i goes to the VF floats at dst + i * ld. The fast forward's key
 * packing and the backward's K and V tiles both transpose this way. */
static inline void transpose_rows_f32(float *dst, int64_t ld, const float *src, seq_rows sr,
                                      int64_t j0, int64_t c, int64_t width) {
    vf b[VF];
    for (int i = 0; i < VF; i++) b[i] = vf_load(src + row_index(sr, j0 + i) * width + c);
    vf_transpose(b);
    for (int i = 0; i < VF; i++) vf_store(dst + i * ld, b[i]);
}

static seq_rows rows_of(const int32_t *cu, int64_t fixed_len, int64_t s, int64_t h, int64_t H) {
    seq_rows sr;
    if (cu) {
        sr.first = (int64_t)cu[s] * H + h;
        sr.step = H;
        sr.len = (int64_t)cu[s + 1] - cu[s];
    } else {
        sr.first = (s * H + h) * fixed_len;
        sr.step = 1;
        sr.len = fixed_len;
    }
    return sr;
}

static seq_rows q_rows(const seqcore_attn_problem *p, int64_t s, int64_t h) {
    return rows_of(p->cu_q, p->Sq, s, h, p->Hq);
}

static seq_rows k_rows(const seqcore_attn_problem *p, int64_t s, int64_t hk) {
    return rows_of(p->cu_k, p->Sk, s, hk, p->Hkv);
}

static int64_t query_row_count(const seqcore_attn_problem *p) {
    return p->cu_q ? (int64_t)p->cu_q[p->n_seq] * p->Hq : p->n_seq * p->Hq * p->Sq;
}

/* Keys as one token axis: dense key j of batch b is token b * Sk + j, packed ones cu_k[s] + j. */
static int64_t key_token(const seqcore_attn_problem *p, int64_t s, int64_t j) {
    return (p->cu_k ? (int64_t)p->cu_k[s] : s * p->Sk) + j;
}

static int64_t key_token_count(const seqcore_attn_problem *p) {
    return p->cu_k ? (int64_t)p->cu_k[p->n_seq] : p->n_seq * p->Sk;
}

static int64_t bias_offset(const seqcore_attn_problem *p, int64_t b, int64_t h, int64_t i) {
    return b * p->bias_strides[0] + h * p->bias_strides[1] + i * p->bias_strides[2];
}

static int64_t dbias_offset(const seqcore_attn_problem *p, int64_t b, int64_t h, int64_t i) {
    return ((b * p->Hq + h) * p->Sq + i) * p->Sk;
}

typedef struct {
    double scale, softcap;
    int64_t left, right;
    int dropout;        /* dropout on: gen and keep_scale apply */
    double keep_scale;  /* 1 / (1 - p) */
    dropout_gen gen;
} attn_opts;

static attn_opts make_opts(const seqcore_attn_problem *p) {
    attn_opts o = {p->scale, p->softcap, p->window_left, p->window_right, 0, 1, {{0}, {0}, 0}};
    if (p->dropout_scale != 0) {
        o.dropout = 1;
        o.keep_scale = p->dropout_scale;
        o.gen = dropout_gen_of(p->dropout_seed, (uint32_t)p->dropout_threshold);
    }
    return o;
}

/* The generator's head counter of (sequence s, query head h): b * Hq + h. */
static uint32_t dropout_head(const seqcore_attn_problem *p, int64_t s, int64_t h) {
    return (uint32_t)(s * p->Hq + h);
}

/* keep[t] = 1 or 0 for keys t < n of a tile's key parts, one row (query i of head g). */
static void dropout_row_mask(const dropout_gen *gen, const dropout_keys *keys, uint32_t g,
                             int64_t i, int64_t n, float *keep) {
    dropout_keep_row(gen, keys, round_up(n, VF), dropout_row_of(gen, g, (uint32_t)i), keep);
}

static band make_band(const attn_opts *o, int64_t Sq, int64_t Sk) {
    return band_of(o->left, o->right, Sq, Sk);
}

/* A tile of queries i0 .. i0 + nq by keys j0 .. j0 + nk; needs_mask unless every key of it is
 * visible to every query of it (interior tiles skip the mask). */
typedef struct {
    int64_t i0, nq, j0, nk;
    int needs_mask;
    band bd;
} tile_pos;

static tile_pos make_tile(const band *bd, int64_t i0, int64_t nq, int64_t j0, int64_t nk) {
    tile_pos t = {i0, nq, j0, nk, 0, *bd};
    t.needs_mask = !(j0 >= band_lo(bd, i0 + nq - 1) && j0 + nk <= band_hi(bd, i0));
    return t;
}

/* The keys [lo, hi) of tile t (relative to j0, within nk; lo = hi when none) query row r of
 * it sees. */
static void row_keys(const tile_pos *t, int64_t r, int64_t *lo, int64_t *hi) {
    *lo = clamp64(band_lo(&t->bd, t->i0 + r) - t->j0, 0, t->nk);
    *hi = clamp64(band_hi(&t->bd, t->i0 + r) - t->j0, *lo, t->nk);
}

/* Per MR-row block of a masked tile's product (C rows: queries, or keys for dK and dV), the
 * part it needs: [lo, hi) of its columns, or of its sum. A causal or windowed band leaves a
 * diagonal tile's blocks part of the other side: the backward's products skip the rest (a
 * third of a diagonal tile's work). */
typedef struct { int64_t lo[BQ / MR], hi[BQ / MR]; } block_ranges;

/* The keys the query blocks of t see (bands grow with the row: a block sees from its first
 * row's lo to its last row's hi), rounded out to multiples of `to`. */
static void query_block_keys(const tile_pos *t, int64_t to, block_ranges *br) {
    for (int64_t b = 0; b * MR < t->nq; b++) {
        int64_t lo, hi, lo_last, hi_last;
        row_keys(t, b * MR, &lo, &hi);
        row_keys(t, min64(b * MR + MR, t->nq) - 1, &lo_last, &hi_last);
        br->lo[b] = lo / to * to;
        br->hi[b] = round_up(hi_last, to);
    }
}

/* The query rows of t (relative to i0) that see some key of each key block. */
static void key_block_queries(const tile_pos *t, block_ranges *br) {
    for (int64_t b = 0; b * MR < t->nk; b++) {
        int64_t first = t->j0 + b * MR, last = min64(first + MR, t->j0 + t->nk) - 1;
        br->lo[b] = clamp64(band_first_query(&t->bd, first) - t->i0, 0, t->nq);
        br->hi[b] = clamp64(band_end_query(&t->bd, last) - t->i0, br->lo[b], t->nq);
    }
}

/* The products of a forward as if every query saw every key (an upper bound): whether a call
 * is worth the threads (parallel.h). */
static double attention_work(const seqcore_attn_problem *p) {
    return 2.0 * (double)(p->D + p->Dv) * (double)query_row_count(p) * (double)p->Sk;
}

/* Cheap checks of everything the kernels index with (the API validated already). */
static int problem_ok(const seqcore_attn_problem *p, const void *q, const void *k, const void *v,
                      const void *bias) {
    if (!p || !q || !k || !v) return 0;
    if (p->n_seq < 0 || p->Hq < 0 || p->Hkv < 1 || p->Sq < 0 || p->Sk < 0) return 0;
    if (p->Hq % p->Hkv != 0) return 0;
    if (p->D < 1 || p->D > MAX_HEAD_DIM || p->Dv < 1 || p->Dv > MAX_HEAD_DIM) return 0;
    if (p->window_left < -1 || p->window_right < -1 || !(p->softcap >= 0)) return 0;
    if (!isfinite(p->scale) || !isfinite(p->softcap)) return 0;
    if (p->dropout_scale != 0 && !(p->dropout_scale >= 1 && isfinite(p->dropout_scale))) return 0;
    if (p->dropout_threshold < 0 || p->dropout_threshold > INT32_MAX) return 0;
    if (!p->cu_q != !p->cu_k) return 0;
    if (p->cu_q) {
        if (bias || p->cu_q[0] != 0 || p->cu_k[0] != 0) return 0;
        for (int64_t s = 0; s < p->n_seq; s++) {
            int64_t lq = (int64_t)p->cu_q[s + 1] - p->cu_q[s], lk = (int64_t)p->cu_k[s + 1] - p->cu_k[s];
            if (lq < 0 || lk < 0 || lq > p->Sq || lk > p->Sk) return 0;
        }
    }
    return 1;
}

/* ------------------------------------------------------------------------------------------
 * The general path (every feature: bias, softcap, any head dim, float and double) is the
 * template after `#else`: this file includes itself with `real` = float and then double.
 * The float forward first tries the fast path (after the two instantiations).
 * ------------------------------------------------------------------------------------------ */

static int fast_fwd_f32(const seqcore_attn_problem *p, const float *q, const float *k,
                        const float *v, const float *bias, float *out, float *lse);

#define ATTN_TEMPLATE
#define real float
#define VEC vf
#define V(op) vf_##op
#define VL VF
#define VMATH 1
#define NR NR_F32
#define EXP simd_expf
#define TANH simd_tanhf
#define LOG logf
#define MADD MADD_F32
#define RN(name) name##_f32
#define FAST_FWD fast_fwd_f32
#include "attention.c"

#define real double
#define VEC vd
#define V(op) vd_##op
#define VL VD
#define VMATH 0
#define NR NR_F64
#define EXP simd_exp
#define TANH tanh
#define LOG log
#define MADD MADD_F64
#define RN(name) name##_f64
#include "attention.c"
#undef ATTN_TEMPLATE

/* ---------------------------------------------------------------- forward, fast path
 *
 * Float (a bias's key stride 0 or 1), written once on the ISA level's vectors:
 * per block of FR query rows and key tile of BKF keys,
 *   1. S = Q K^T in passes of NKV vectors of keys (FR x NKV accumulators in registers:
 *      6 x 4 zmm with AVX-512, two passes over 128 keys; 6 x 2 ymm with AVX2, eight over
 *      128), softcap, bias and band mask applied as a pass stores its scores to the block's
 *      L1 buffer (a scalar tanhf per score made a softcapped forward 6x slower);
 *   2. the online softmax on each row of the buffer (base-2 max, exp2, running sum);
 *   3. O = alpha O + P V in passes of NKV vectors of Dv, the block's O in registers.
 * Per key tile, every FR-row block of the BQF-row query task reuses the key and value tiles
 * from L1. Scores are kept in base 2: q is pre-multiplied by scale * log2(e), so exp becomes
 * exp2 (one multiply fewer per score); m is then a base-2 max and lse = m ln2 + log(l).
 * K and V are packed once per call into BKF-key tiles, tile t of sequence s being tile
 * tile_base[s] + t. A key tile is BKF / KPASS panels of D x KPASS (transposed: the KPASS
 * keys of one pass side by side); a value tile is dvp / KPASS panels of BKF x KPASS (zero
 * past Dv). So each pass streams one contiguous panel (a P V pass read V in place, Dv
 * apart: packed, 1.00-1.05x at one thread on Zen 4, AVX2 and AVX-512, with the key
 * panels). */

/* Keys per tile: 128 on x86 (AVX2 and AVX-512); 64 elsewhere. A tile's softmax reductions,
 * alpha exponentials and O rescales are paid once per tile and row, so a longer tile halves
 * them; its K and V panels then no longer stay in a 32 KB L1 at D64, but each pass streams
 * one contiguous panel, which the prefetchers bring from L2 in time. On Zen 4, one thread:
 * AVX-512 128 against 64, 1.025-1.05 (the eighth session); AVX2 128 against 32, 1.05-1.11
 * (S1024 D64 1.11, D128 1.08, B4 S256 D128 1.055), S32 / S100 0.98-0.99, once K and V were
 * packed as panels and rescaling was lazy (before both, 64 against 32 was 0.95-1.00, and 32
 * had been 3-5% faster than 64 on Zen 3). */
#if defined(SIMD_AVX2) || defined(SIMD_AVX512)
#define FAST_KEY_TILE 128
#else
#define FAST_KEY_TILE 64
#endif

enum {
    NKV = SIMD_REGS >= 32 ? 4 : 2,    /* vectors of keys (or of Dv columns) per pass */
    FR_FIT = (SIMD_REGS - NKV - 1 - !SIMD_FMA) / NKV,
    FR = FR_FIT < 6 ? FR_FIT : 6,     /* query rows per register block */
    BKF = FAST_KEY_TILE,              /* keys per tile */
    BQF = 32 * FR,                    /* query rows per task: each key tile serves 32 blocks */
    KPASS = NKV * VF,                 /* keys (or Dv columns) per pass */
};
_Static_assert((int)BKF <= (int)DROPOUT_KEYS, "a key tile's dropout parts fit dropout_keys");

/* Packed K, see above. tile_base has n_seq + 1 entries; returns NULL when out of memory. */
static int64_t *key_tile_bases(const seqcore_attn_problem *p) {
    int64_t *base = malloc((size_t)(p->n_seq + 1) * sizeof(int64_t));
    if (!base) return NULL;
    base[0] = 0;
    for (int64_t s = 0; s < p->n_seq; s++)
        base[s + 1] = base[s] + cdiv(k_rows(p, s, 0).len, BKF);
    return base;
}

/* Where column c (of D) of key j (of BKF) lies in a packed tile: a tile is BKF / KPASS
 * panels of D x KPASS, so a score pass reads its panel front to back. */
static inline int64_t packed_key_at(int64_t D, int64_t c, int64_t j) {
    return j / KPASS * D * KPASS + c * KPASS + j % KPASS;
}

/* Pack the key tiles of (sequence s, kv head hk) into kp (Hkv x n_tiles x D x BKF): VF x VF
 * blocks transposed in registers, then the odd rows and columns one by one. A short tile's
 * columns past its last key are left as they are: the last pass's scores there are masked
 * to -inf by a select, whatever they hold, and the passes after it never run (zeroing them
 * cost a third of a (1, 8, 16, 64) forward: GCC makes the loop a memset per column). */
static void pack_keys_f32(const seqcore_attn_problem *p, const float *k, const int64_t *base,
                          float *kp, int64_t s, int64_t hk) {
    seq_rows kr = k_rows(p, s, hk);
    int64_t D = p->D, n_tiles = base[p->n_seq], Dv_ = D / VF * VF;
    for (int64_t t = 0; t < base[s + 1] - base[s]; t++) {
        float *dst = kp + (hk * n_tiles + base[s] + t) * D * BKF;
        int64_t j0 = t * BKF, nk = min64(BKF, kr.len - j0), j = 0;
        for (; j + VF <= nk; j += VF) {
            for (int64_t c = 0; c < Dv_; c += VF)
                transpose_rows_f32(dst + packed_key_at(D, c, j), KPASS, k, kr, j0 + j, c, D);
            for (int64_t jj = j; jj < j + VF; jj++)
                for (int64_t c = Dv_; c < D; c++)
                    dst[packed_key_at(D, c, jj)] = k[row_index(kr, j0 + jj) * D + c];
        }
        for (; j < nk; j++) {
            const float *row = k + row_index(kr, j0 + j) * D;
            for (int64_t c = 0; c < D; c++) dst[packed_key_at(D, c, j)] = row[c];
        }
    }
}

/* Where column c (of dvp) of value row j (of BKF) lies in a packed tile: dvp / KPASS panels
 * of BKF x KPASS, so a P V pass reads its panel front to back. */
static inline int64_t packed_value_at(int64_t c, int64_t j) {
    return c / KPASS * BKF * KPASS + j * KPASS + c % KPASS;
}

/* Pack the value tiles of (sequence s, kv head hk) into vp (Hkv x n_tiles x BKF x dvp), the
 * columns past Dv zero (a pass reads whole vectors; rows past a sequence's end are never
 * read). */
static void pack_values_f32(const seqcore_attn_problem *p, const float *v, const int64_t *base,
                            float *vp, int64_t dvp, int64_t s, int64_t hk) {
    seq_rows kr = k_rows(p, s, hk);
    int64_t Dv = p->Dv, n_tiles = base[p->n_seq];
    for (int64_t t = 0; t < base[s + 1] - base[s]; t++) {
        float *dst = vp + (hk * n_tiles + base[s] + t) * BKF * dvp;
        int64_t j0 = t * BKF, nk = min64(BKF, kr.len - j0);
        for (int64_t j = 0; j < nk; j++) {
            const float *row = v + row_index(kr, j0 + j) * Dv;
            for (int64_t c = 0; c < dvp; c += VF)
                vf_store(dst + packed_value_at(c, j), vf_load_n(row + c, Dv - c));
        }
    }
}

/* Per-thread scratch of the fast forward. */
typedef struct {
    void *block;
    float *q;   /* BQF x D: query tile times scale * log2(e) */
    float *o;   /* BQF x dvp: output accumulator (unnormalized), dvp = Dv rounded up to KPASS */
    float *l;   /* BQF: running sums of exp */
    float *m;   /* BQF: running base-2 max */
    float *s;   /* FR x BKF: scores, then P, of the current block */
    dropout_keys keys;         /* dropout: the current key tile's part of the generator */
    dropout_row rows[BQF];     /* and the task's rows' */
} fast_scratch_f32;

/* Dropout of one block of rows against one key tile (NULL: none). */
typedef struct {
    const dropout_gen *gen;
    const dropout_keys *keys;
    const dropout_row *rows;  /* the block's FR rows */
} fast_dropout;

static int fast_scratch_alloc_f32(fast_scratch_f32 *w, int64_t D, int64_t dvp) {
    int64_t f = sizeof(float), bytes[5] = {BQF * D * f, BQF * dvp * f, BQF * f, BQF * f, FR * BKF * f};
    void *part[5];
    w->block = seqcore_scratch_take_parts(5, bytes, part, 0);
    w->q = part[0], w->o = part[1], w->l = part[2], w->m = part[3], w->s = part[4];
    return w->block != NULL;
}

/* Visible keys [lo[r], hi[r]) of the block's rows within the tile (NULL: all of them). */
typedef struct { int64_t lo[FR], hi[FR]; } row_bands;

/* What a block's scores get before the band mask (NULL: nothing), in base 2 as the scores
 * are (q carries scale * log2(e)): softcap's cap2 tanh(s / cap2), cap2 = softcap * log2(e)
 * (0: none), then the bias times log2(e). The order of score_row_fixups. */
typedef struct {
    float cap2, inv_cap2;
    const float *bias_row[FR];  /* the block's rows at the tile's first key (NULL: no bias);
                                 * rows past the last query repeat the last one's */
    int64_t bias_step;          /* along keys: 1, or 0 (one value per row) */
    int64_t nk;                 /* the tile's keys: bias lanes past them are not read */
} score_mods;

static inline __attribute__((always_inline)) vf fast_score_mods_f32(const score_mods *sm, int r,
                                                                    int64_t lane0, vf v) {
    if (sm->cap2 > 0) v = vf_mul(vf_set1(sm->cap2), vf_tanh(vf_mul(v, vf_set1(sm->inv_cap2))));
    if (sm->bias_row[0]) {
        const float *b = sm->bias_row[r];
        vf bv = sm->bias_step ? vf_load_n(b + lane0, sm->nk - lane0) : vf_set1(b[0]);
        v = vf_fma(bv, vf_set1(1.4426950408889634f), v);
    }
    return v;
}

/* acc[r][c] += sum over k < K of a[r * lda + k] * panel[k * KPASS + c * VF .. + VF], for the
 * block's FR rows and nv (a constant at each call) of the panel's NKV vectors: the register
 * block product of both passes (scores: q rows times a key panel; P V: P rows times a value
 * panel). */
static inline __attribute__((always_inline)) void fast_panel_product_f32(
        vf acc[FR][NKV], const float *restrict a, int64_t lda, const float *restrict panel,
        int64_t K, const int nv) {
    for (int64_t kk = 0; kk < K; kk++) {
        vf b[NKV];
        for (int c = 0; c < nv; c++) b[c] = vf_load(panel + kk * KPASS + c * VF);
        for (int r = 0; r < FR; r++) {
            vf x = vf_set1(a[r * lda + kk]);
            for (int c = 0; c < nv; c++) acc[r][c] = vf_fma(x, b[c], acc[r][c]);
        }
    }
}

/* Scores of keys c0 .. c0 + nv VF for the block's FR rows: qb (FR x D) times the pass's
 * panel of kt, softcapped and biased (mods), masked to each row's band, into s (FR x BKF).
 * nv (1 .. NKV vectors, a constant at each call) narrows a tile's last pass to the keys it
 * has. */
static inline __attribute__((always_inline)) void fast_scores_f32(
        const float *restrict qb, int64_t D, const float *restrict kt, int64_t c0,
        const score_mods *mods, const row_bands *bands, float *restrict s, const int nv) {
    vf acc[FR][NKV];
    for (int r = 0; r < FR; r++)
        for (int c = 0; c < nv; c++) acc[r][c] = vf_zero();
    fast_panel_product_f32(acc, qb, D, kt + c0 * D, D, nv);
    const vf neg_inf = vf_set1(-INFINITY);
    for (int r = 0; r < FR; r++)
        for (int c = 0; c < nv; c++) {
            vf v = acc[r][c];
            if (mods) v = fast_score_mods_f32(mods, r, c0 + c * VF, v);
            if (bands) {
                int64_t lane0 = c0 + c * VF;
                v = vf_select(vmask_lanes(bands->lo[r] - lane0, bands->hi[r] - lane0), v, neg_inf);
            }
            vf_store(s + r * BKF + c0 + c * VF, v);
        }
}

/* The scores of a block's first nk keys, in passes of KPASS keys; the last pass as narrow
 * as its keys allow (a short sequence, or a causal diagonal block that stops at its rows'
 * last key, computed up to 48 keys it did not have with 64-key passes). Returns the keys
 * scored: nk rounded up to whole vectors. */
static inline __attribute__((always_inline)) int64_t fast_scores_all_f32(
        const float *restrict qb, int64_t D, const float *restrict kt, int64_t nk,
        const score_mods *mods, const row_bands *bands, float *restrict s) {
    int64_t c0 = 0;
    for (; nk - c0 > (NKV - 1) * VF; c0 += KPASS)
        fast_scores_f32(qb, D, kt, c0, mods, bands, s, NKV);
    int64_t nv = cdiv(nk - c0, VF);  /* (0 .. NKV - 1 vectors left) */
    if (NKV > 3 && nv == 3) fast_scores_f32(qb, D, kt, c0, mods, bands, s, 3);
    if (NKV > 2 && nv == 2) fast_scores_f32(qb, D, kt, c0, mods, bands, s, 2);
    if (nv == 1) fast_scores_f32(qb, D, kt, c0, mods, bands, s, 1);
    return round_up(nk, VF);
}

/* How far (base 2) a row's scores may rise above the max its P are taken against before
 * that max moves: P = 2^(s - m) then stays below 2^8, far inside float's range, and a row's
 * O and l are rescaled only when its max jumps by a factor of 256, nearly never after the
 * first tile (FlashAttention-4's lazy rescaling; the result is the same: lse = m ln2 +
 * log l holds for any m the row kept). Most blocks then skip alpha's exp2 and O's rescale. */
#define LAZY_RESCALE 8.0f

/* The online softmax of one row of nkp scores (base 2; masked ones -inf): s <- P in place
 * (with dropout: P, zero where dropped; l sums P before dropout); returns the factor
 * alpha = 2^(m_old - m_new) the row's O and l are to be scaled by (1: m kept). */
static inline __attribute__((always_inline)) float fast_softmax_row_f32(
        float *restrict s, int64_t nkp, float *restrict m, float *restrict l,
        const fast_dropout *drop, int r) {
    vf mx = vf_load(s);
    for (int64_t j = VF; j < nkp; j += VF) mx = vf_max(mx, vf_load(s + j));
    float m_old = *m, row_max = vf_reduce_max(mx), alpha = 1.0f;
    /* (until a row sees a key, m_old + 8 is -inf: its first finite max is always taken) */
    if (row_max > m_old + LAZY_RESCALE) {
        float a[VF];
        vf_store(a, vf_exp2_nonpos(vf_set1(m_old - row_max)));
        alpha = a[0];
        *m = row_max;
    }
    /* while a row has seen only -inf, subtract 0 so exp gives 0 rather than NaN */
    float m_use = *m == -INFINITY ? 0 : *m;
    vf mu = vf_set1(m_use), sum = vf_zero();
    for (int64_t j = 0; j < nkp; j += VF) {
        vf pr = vf_exp2_nonpos(vf_sub(vf_load(s + j), mu));
        if (drop)
            vf_store(s + j, vf_select(dropout_keep_vf(drop->gen, drop->keys, j, drop->rows[r]),
                                      pr, vf_zero()));
        else
            vf_store(s + j, pr);
        sum = vf_add(sum, pr);
    }
    *l = *l * alpha + vf_reduce_add(sum);
    return alpha;
}

/* O columns c0 .. c0 + KPASS of the block: alpha O + P V over the tile's nk keys, from the
 * value tile's panel of those columns (alpha NULL: every row's is 1). */
static inline __attribute__((always_inline)) void fast_pv_f32(
        const float *restrict pb, const float *restrict vt, int64_t nk, int64_t c0,
        const float *alpha, float *restrict ob, int64_t dvp) {
    vf acc[FR][NKV];
    for (int r = 0; r < FR; r++) {
        vf a = vf_set1(alpha ? alpha[r] : 1.0f);
        for (int c = 0; c < NKV; c++) {
            acc[r][c] = vf_load(ob + r * dvp + c0 + c * VF);
            if (alpha) acc[r][c] = vf_mul(acc[r][c], a);
        }
    }
    fast_panel_product_f32(acc, pb, BKF, vt + c0 * BKF, nk, NKV);
    for (int r = 0; r < FR; r++)
        for (int c = 0; c < NKV; c++) vf_store(ob + r * dvp + c0 + c * VF, acc[r][c]);
}

/* One FR-row block against one key tile: scores, online softmax, O += P V. A short tile
 * (the last of a sequence) computes only the passes its nk keys need. Written once, compiled
 * twice: the plain block (no score mods, no dropout) and the one with either or both. */
static inline __attribute__((always_inline)) void fast_block_any_f32(
        const float *restrict qb, int64_t D, const float *restrict kt, const float *restrict vt,
        int64_t nk, int64_t dvp, const score_mods *mods, const row_bands *bands,
        float *restrict m, float *restrict l, float *restrict ob, float *restrict s,
        const fast_dropout *drop) {
    int64_t nkp = fast_scores_all_f32(qb, D, kt, nk, mods, bands, s);
    float alpha[FR];
    int rescale = 0;
    for (int r = 0; r < FR; r++) {
        alpha[r] = fast_softmax_row_f32(s + r * BKF, nkp, m + r, l + r, drop, r);
        rescale |= alpha[r] != 1.0f;
    }
    for (int64_t c0 = 0; c0 < dvp; c0 += KPASS)
        fast_pv_f32(s, vt, nk, c0, rescale ? alpha : NULL, ob, dvp);
}

static void fast_block_f32(
        const float *restrict qb, int64_t D, const float *restrict kt, const float *restrict vt,
        int64_t nk, int64_t dvp, const row_bands *bands,
        float *restrict m, float *restrict l, float *restrict ob, float *restrict s) {
    fast_block_any_f32(qb, D, kt, vt, nk, dvp, NULL, bands, m, l, ob, s, NULL);
}

static void fast_block_general_f32(
        const float *restrict qb, int64_t D, const float *restrict kt, const float *restrict vt,
        int64_t nk, int64_t dvp, const score_mods *mods, const row_bands *bands,
        float *restrict m, float *restrict l, float *restrict ob, float *restrict s,
        const fast_dropout *drop) {
    fast_block_any_f32(qb, D, kt, vt, nk, dvp, mods, bands, m, l, ob, s, drop);
}

/* Output rows i0 .. i0 + BQF of (sequence sq, query head h), fast path. */
static void fast_tile_f32(const seqcore_attn_problem *p, const attn_opts *o, const float *q,
                          const float *kp, const int64_t *base, const float *vp,
                          const float *bias, float *out, float *lse, int64_t sq, int64_t h,
                          int64_t i0, fast_scratch_f32 *w) {
    int64_t hk = h / (p->Hq / p->Hkv);
    seq_rows qr = q_rows(p, sq, h), kr = k_rows(p, sq, hk);
    if (i0 >= qr.len) return;
    int64_t D = p->D, Dv = p->Dv, dvp = round_up(Dv, KPASS);
    int64_t nq = min64(BQF, qr.len - i0), mq = round_up(nq, FR);
    band bd = make_band(o, qr.len, kr.len);
    load_rows_f32(w->q, D, q, qr, i0, nq, mq, D, (float)(o->scale * 1.4426950408889634));
    for (int64_t r = 0; r < mq; r++) {
        w->m[r] = -INFINITY;
        w->l[r] = 0;
        for (int64_t c = 0; c < dvp; c++) w->o[r * dvp + c] = 0;
    }
    uint32_t g = dropout_head(p, sq, h);
    if (o->dropout)
        for (int64_t r = 0; r < mq; r++)
            w->rows[r] = dropout_row_of(&o->gen, g, (uint32_t)(i0 + r));
    score_mods sm = {0}, *mods = bias || o->softcap > 0 ? &sm : NULL;
    if (o->softcap > 0) {
        sm.cap2 = (float)(o->softcap * 1.4426950408889634);
        sm.inv_cap2 = 1 / sm.cap2;
    }
    sm.bias_step = p->bias_strides[3];
    const float *kp_head = kp + (hk * base[p->n_seq] + base[sq]) * D * BKF;
    const float *vp_head = vp + (hk * base[p->n_seq] + base[sq]) * BKF * dvp;
    int64_t j_begin = band_lo(&bd, i0), j_end = band_hi(&bd, i0 + nq - 1);
    for (int64_t j0 = j_begin / BKF * BKF; j0 < j_end; j0 += BKF) {
        tile_pos t = make_tile(&bd, i0, nq, j0, min64(BKF, kr.len - j0));
        const float *kt = kp_head + j0 * D;  /* tile j0 / BKF, D * BKF floats each */
        const float *vt = vp_head + j0 * dvp;  /* BKF * dvp floats a tile */
        int masked = t.needs_mask || t.nk < BKF;
        if (o->dropout)
            dropout_keys_fill(&o->gen, g, (uint32_t)j0, (int)round_up(t.nk, KPASS), &w->keys);
        for (int64_t r0 = 0; r0 < mq; r0 += FR) {
            /* a block none of whose rows sees a key of this tile would leave m, l and o as
             * they are (all its scores are -inf): skip it (the upper part of tall diagonal
             * tiles under a causal mask) */
            int64_t i_last = min64(i0 + r0 + FR, i0 + nq) - 1;
            if (t.needs_mask && (band_hi(&bd, i_last) <= j0 || band_lo(&bd, i0 + r0) >= j0 + t.nk))
                continue;
            /* nk: the keys up to the last one a row of the block sees; past it every P is
             * 0, so the block's score passes and P V stop there (the diagonal tiles of a
             * causal mask: 5-13% of a causal forward) */
            row_bands rb;
            int64_t nk = masked ? 0 : t.nk;
            for (int r = 0; masked && r < FR; r++) {
                int64_t i = i0 + r0 + r;
                rb.lo[r] = t.needs_mask ? band_lo(&bd, i) - j0 : 0;
                rb.hi[r] = min64(t.needs_mask ? band_hi(&bd, i) - j0 : BKF, t.nk);
                nk = max64(nk, rb.hi[r]);
            }
            if (nk <= 0) continue;  /* (no row sees a key: as the skip above) */
            if (o->dropout || mods) {
                sm.nk = t.nk;
                for (int r = 0; bias && r < FR; r++)
                    sm.bias_row[r] = bias + bias_offset(p, sq, h, i0 + min64(r0 + r, nq - 1))
                                     + j0 * sm.bias_step;
                fast_dropout drop = {&o->gen, &w->keys, w->rows + r0};
                fast_block_general_f32(w->q + r0 * D, D, kt, vt, nk, dvp, mods,
                                       masked ? &rb : NULL, w->m + r0, w->l + r0,
                                       w->o + r0 * dvp, w->s, o->dropout ? &drop : NULL);
            } else {
                fast_block_f32(w->q + r0 * D, D, kt, vt, nk, dvp, masked ? &rb : NULL,
                               w->m + r0, w->l + r0, w->o + r0 * dvp, w->s);
            }
        }
    }
    float keep_scale = (float)o->keep_scale;
    for (int64_t r = 0; r < nq; r++) {
        int64_t row = row_index(qr, i0 + r);
        float l = w->l[r];
        float *dst = out + row * Dv, inv_l = l > 0 ? 1 / l : 0;
        if (o->dropout) inv_l *= keep_scale;
        for (int64_t c = 0; c < Dv; c++) dst[c] = w->o[r * dvp + c] * inv_l;
        lse[row] = l > 0 ? w->m[r] * 0.6931471805599453f + logf(l) : -INFINITY;
    }
}

/* The fast forward; returns -3 when it does not apply (the caller takes the general path). */
static int fast_fwd_f32(const seqcore_attn_problem *p, const float *q, const float *k,
                        const float *v, const float *bias, float *out, float *lse) {
    if (bias && p->bias_strides[3] != 0 && p->bias_strides[3] != 1) return -3;
    attn_opts o = make_opts(p);
    int64_t n_tiles = cdiv(p->Sq, BQF), n_heads = p->n_seq * p->Hq, n_tasks = n_heads * n_tiles;
    int64_t dvp = round_up(p->Dv, KPASS);
    int64_t *base = key_tile_bases(p);
    if (!base) return SEQCORE_ENOMEM;
    /* (kept scratch, see scratch.h: megabytes of packed keys are not faulted in per call) */
    int64_t n_packed = p->Hkv * base[p->n_seq], f = sizeof(float);
    int64_t bytes[2] = {max64(1, n_packed * p->D * BKF * f), max64(1, n_packed * BKF * dvp * f)};
    void *part[2];
    void *packed = seqcore_scratch_take_parts(2, bytes, part, 0);
    if (!packed) { free(base); return SEQCORE_ENOMEM; }
    float *kp = part[0], *vp = part[1];
    int status = SEQCORE_OK;
#pragma omp parallel if (seqcore_worth_threads(attention_work(p)))
    {
#pragma omp for schedule(dynamic)
        for (int64_t sh = 0; sh < p->n_seq * p->Hkv; sh++) {
            pack_keys_f32(p, k, base, kp, sh / p->Hkv, sh % p->Hkv);
            pack_values_f32(p, v, base, vp, dvp, sh / p->Hkv, sh % p->Hkv);
        }
        fast_scratch_f32 w;
        int ok = fast_scratch_alloc_f32(&w, p->D, dvp);
        if (!ok) {
#pragma omp atomic write
            status = SEQCORE_ENOMEM;
        }
#pragma omp for schedule(dynamic)
        for (int64_t task = 0; task < n_tasks; task++) {
            if (!ok) continue;
            /* heavy (last, under a causal mask) query tiles first, as in the general path */
            int64_t tile = n_tiles - 1 - task / n_heads, seq_head = task % n_heads;
            fast_tile_f32(p, &o, q, kp, base, vp, bias, out, lse, seq_head / p->Hq,
                          seq_head % p->Hq, tile * BQF, &w);
        }
        seqcore_scratch_give(w.block);
    }
    seqcore_scratch_give(packed);
    free(base);
    return status;
}

#else /* ---- template: real, VEC / V(op) / VL (its vectors, simd.h), VMATH (float: vector tanh, masked tails),
       * NR (micro-kernel columns), EXP, TANH, LOG, MADD, RN, FAST_FWD (float only: the fast
       * forward, tried first; -3 when it does not apply) ---- */

/* C[M x N] (+)= A[M x K] B[K x N] (accumulate: += else =), row-major with leading dims;
 * M % MR == 0, N % NR == 0. a_transposed: A is stored as its transpose (K x M, row-major),
 * so P^T dout and dS^T Q read P and dS as they come (no transposed copies).
 * An MR x NR block of C stays in registers (two vectors per row) while the k loop
 * streams a row of B and broadcasts a column of A. */
static inline __attribute__((always_inline)) void RN(gemm_any)(
        int64_t M, int64_t N, int64_t K, const real *restrict A, int64_t lda, int a_transposed,
        const real *restrict B, int64_t ldb, real *restrict C, int64_t ldc, int accumulate,
        const block_ranges *n_clip, const block_ranges *k_clip) {
    for (int64_t m = 0; m < M; m += MR) {
        int64_t n_lo = n_clip ? n_clip->lo[m / MR] : 0, n_hi = n_clip ? n_clip->hi[m / MR] : N;
        int64_t k_lo = k_clip ? k_clip->lo[m / MR] : 0, k_hi = k_clip ? k_clip->hi[m / MR] : K;
        for (int64_t n = n_lo; n < n_hi; n += NR) {
            VEC acc[MR][2];
            for (int r = 0; r < MR; r++) {
                acc[r][0] = accumulate ? V(load)(C + (m + r) * ldc + n) : V(zero)();
                acc[r][1] = accumulate ? V(load)(C + (m + r) * ldc + n + VL) : V(zero)();
            }
            for (int64_t kk = k_lo; kk < k_hi; kk++) {
                VEC b0 = V(load)(B + kk * ldb + n), b1 = V(load)(B + kk * ldb + n + VL);
                for (int r = 0; r < MR; r++) {
                    VEC a = V(set1)(a_transposed ? A[kk * lda + m + r] : A[(m + r) * lda + kk]);
                    acc[r][0] = V(fma)(a, b0, acc[r][0]);
                    acc[r][1] = V(fma)(a, b1, acc[r][1]);
                }
            }
            for (int r = 0; r < MR; r++) {
                V(store)(C + (m + r) * ldc + n, acc[r][0]);
                V(store)(C + (m + r) * ldc + n + VL, acc[r][1]);
            }
        }
    }
}

static void RN(gemm)(int64_t M, int64_t N, int64_t K, const real *restrict A,
                                  int64_t lda, const real *restrict B, int64_t ldb,
                                  real *restrict C, int64_t ldc, int accumulate) {
    RN(gemm_any)(M, N, K, A, lda, 0, B, ldb, C, ldc, accumulate, NULL, NULL);
}

/* The same for a masked tile: each MR-row block of C computes the columns n_clip gives it
 * (multiples of NR; NULL: all) from the part of the sum k_clip gives it (NULL: all). */
static void RN(gemm_clipped)(int64_t M, int64_t N, int64_t K, const real *restrict A,
                             int64_t lda, const real *restrict B, int64_t ldb,
                             real *restrict C, int64_t ldc, int accumulate,
                             const block_ranges *n_clip, const block_ranges *k_clip) {
    RN(gemm_any)(M, N, K, A, lda, 0, B, ldb, C, ldc, accumulate, n_clip, k_clip);
}

/* C (+)= A^T B, A stored K x M row-major. */
static void RN(gemm_at)(int64_t M, int64_t N, int64_t K, const real *restrict A,
                                     int64_t lda, const real *restrict B, int64_t ldb,
                                     real *restrict C, int64_t ldc, int accumulate) {
    RN(gemm_any)(M, N, K, A, lda, 1, B, ldb, C, ldc, accumulate, NULL, NULL);
}

static void RN(gemm_at_clipped)(int64_t M, int64_t N, int64_t K, const real *restrict A,
                                int64_t lda, const real *restrict B, int64_t ldb,
                                real *restrict C, int64_t ldc, int accumulate,
                                const block_ranges *k_clip) {
    RN(gemm_any)(M, N, K, A, lda, 1, B, ldb, C, ldc, accumulate, NULL, k_clip);
}

/* dst[r][c] = mul * row (i0 + r) of one sequence, c < width; zero padding up to
 * n_pad rows and ld columns (the micro-kernel reads whole blocks). */
static void RN(load_rows)(real *restrict dst, int64_t ld, const real *restrict src, seq_rows sr,
                          int64_t i0, int64_t n, int64_t n_pad, int64_t width, real mul) {
    for (int64_t r = 0; r < n_pad; r++) {
        real *restrict out = dst + r * ld;
        int64_t c = 0;
        if (r < n) {
            const real *restrict row = src + row_index(sr, i0 + r) * width;
            for (; c < width; c++) out[c] = mul * row[c];
        }
        for (; c < ld; c++) out[c] = 0;
    }
}

/* dst[c][r] = row (j0 + r) of one sequence, c < width, r < n (dst has BK columns). */
static void RN(load_rows_transposed)(real *restrict dst, const real *restrict src, seq_rows sr,
                                     int64_t j0, int64_t n, int64_t width) {
    int64_t r = 0;
#if VMATH
    /* float: VF x VF blocks transposed in registers (element by element, these copies were
     * 3% of an S256 backward); the odd rows and columns below */
    int64_t wv = width / VF * VF;
    for (; r + VF <= n; r += VF) {
        for (int64_t c = 0; c < wv; c += VF)
            transpose_rows_f32(dst + c * BK + r, BK, src, sr, j0 + r, c, width);
        for (int64_t i = r; i < r + VF; i++)
            for (int64_t c = wv; c < width; c++) dst[c * BK + i] = src[row_index(sr, j0 + i) * width + c];
    }
#endif
    for (; r < n; r++) {
        const real *restrict row = src + row_index(sr, j0 + r) * width;
        for (int64_t c = 0; c < width; c++) dst[c * BK + r] = row[c];
    }
}

/* Softcap, bias and band mask on one row of raw scores (keys j0 + lo .. j0 + hi of query
 * i: the tile's, or the row's band within it). tanh_out (may be NULL) keeps tanh(s /
 * softcap) for the backward. */
static void RN(score_row_fixups)(real *restrict s, real *restrict tanh_out, const tile_pos *t,
                                 int64_t r, int64_t lo, int64_t hi, const attn_opts *o,
                                 const real *restrict bias_row, int64_t bias_stride) {
    if (o->softcap > 0) {
        real cap = (real)o->softcap, inv_cap = (real)(1 / o->softcap);
        int64_t j = lo;
#if VMATH
        /* the vector tanh of simd.h (a libm call per score was most of a softcapped
         * backward) */
        for (; j + VL <= hi; j += VL) {
            VEC th = V(tanh)(V(mul)(V(load)(s + j), V(set1)(inv_cap)));
            if (tanh_out) V(store)(tanh_out + j, th);
            V(store)(s + j, V(mul)(V(set1)(cap), th));
        }
#endif
        for (; j < hi; j++) {
            real th = TANH(s[j] * inv_cap);
            if (tanh_out) tanh_out[j] = th;
            s[j] = cap * th;
        }
    }
    if (bias_row)
        for (int64_t j = lo; j < hi; j++) s[j] += bias_row[(t->j0 + j) * bias_stride];
    if (t->needs_mask) {
        int64_t band_l, band_h;
        row_keys(t, r, &band_l, &band_h);
        for (int64_t j = lo; j < hi; j++)
            if (j < band_l || j >= band_h) s[j] = -INFINITY;
    }
}

/* ---------------------------------------------------------------- forward */

/* Per-thread scratch of the forward pass (one allocation, carved). */
typedef struct {
    void *block;
    real *q;      /* BQ x D: the query tile, times scale */
    real *v;      /* BK x dvp: the value tile, columns zero-padded (when Dv needs padding) */
    real *s;      /* BQ x BK: scores, then exp(scores - running max) */
    real *o;      /* BQ x dvp: output accumulator (unnormalized) */
    real *m, *l;  /* BQ: running max and running sum of exp per query row */
    dropout_keys keys;  /* dropout: the current key tile's part of the generator */
    float keep[BK];     /* and one row's mask */
} RN(fwd_scratch);

static int RN(fwd_scratch_alloc)(RN(fwd_scratch) *w, int64_t D, int64_t dvp) {
    int64_t r = sizeof(real), bytes[6] = {BQ * D * r, BK * dvp * r, BQ * BK * r, BQ * dvp * r,
                                         BQ * r, BQ * r};
    void *part[6];
    w->block = seqcore_scratch_take_parts(6, bytes, part, 1);
    w->q = part[0], w->v = part[1], w->s = part[2], w->o = part[3], w->m = part[4], w->l = part[5];
    return w->block != NULL;
}

/* K transposed once per call, (Hkv, D, ldt): column = key token (see key_token), so each
 * query tile reads its score operand as row-major D x BK blocks instead of transposing.
 * ldt leaves BK zero columns past the last token for the padded reads of the last tile. */
static real *RN(transpose_keys)(const seqcore_attn_problem *p, const real *k, int64_t ldt) {
    real *kt = seqcore_scratch_take((size_t)max64(1, p->Hkv * p->D * ldt) * sizeof(real));
    if (!kt) return NULL;
    int64_t n_tok = ldt - BK;
#pragma omp parallel for schedule(static) if (seqcore_worth_threads(attention_work(p)))
    for (int64_t hd = 0; hd < p->Hkv * p->D; hd++)
        for (int64_t tok = n_tok; tok < ldt; tok++) kt[hd * ldt + tok] = 0;
#pragma omp parallel for schedule(dynamic) if (seqcore_worth_threads(attention_work(p)))
    for (int64_t sh = 0; sh < p->n_seq * p->Hkv; sh++) {
        int64_t s = sh / p->Hkv, hk = sh % p->Hkv;
        seq_rows kr = k_rows(p, s, hk);
        real *dst = kt + hk * p->D * ldt + key_token(p, s, 0);
        for (int64_t j = 0; j < kr.len; j++) {
            const real *row = k + row_index(kr, j) * p->D;
            for (int64_t c = 0; c < p->D; c++) dst[c * ldt + j] = row[c];
        }
    }
    return kt;
}

/* s[j] <- exp(s[j] - sub) for j < n (-inf gives 0); returns their sum, with the vector exp
 * of simd.h (a libm call per score would not vectorize: a third of a float64 forward). */
static real RN(exp_row)(real *restrict s, int64_t n, real sub) {
    VEC sum = V(zero)(), mu = V(set1)(sub);
    int64_t j = 0;
    for (; j + VL <= n; j += VL) {
        VEC pr = V(exp)(V(sub)(V(load)(s + j), mu));
        V(store)(s + j, pr);
        sum = V(add)(sum, pr);
    }
    real tail = 0;
#if VMATH
    if (j < n) {  /* (float: one masked vector for the tail) */
        VEC pr = V(exp)(V(sub)(V(load_n)(s + j, n - j), mu));
        V(store_n)(s + j, pr, n - j);
        sum = V(add)(sum, V(select)(vmask_lanes(0, n - j), pr, V(zero)()));
    }
#else
    for (; j < n; j++) tail += s[j] = EXP(s[j] - sub);  /* (EXP: lane 0 of V(exp)) */
#endif
    return V(reduce_add)(sum) + tail;
}

/* ds[j] <- P[j] (dP[j] - delta): the gradient of the scaled score, from dP = dO V^T. */
static void RN(dscore_row)(real *restrict ds, const real *restrict prob, int64_t n, real delta) {
    for (int64_t j = 0; j < n; j++) ds[j] = prob[j] * (ds[j] - delta);
}

/* One key tile of the online softmax for query row r: s <- exp(s - new max) in place (the
 * padding columns up to nkp hold -inf), o row rescaled by exp(old max - new max). */
static void RN(online_softmax_row)(real *restrict s, int64_t nkp, real *restrict m,
                                   real *restrict l, real *restrict o, int64_t dvp) {
    real lane_max[NR];
    for (int c = 0; c < NR; c++) lane_max[c] = -INFINITY;
    for (int64_t j = 0; j < nkp; j += NR)
        for (int c = 0; c < NR; c++) lane_max[c] = s[j + c] > lane_max[c] ? s[j + c] : lane_max[c];
    /* fold the lanes in halves: a tree, not a chain of NR dependent steps */
    for (int half = NR / 2; half > 0; half /= 2)
        for (int c = 0; c < half; c++)
            lane_max[c] = lane_max[c + half] > lane_max[c] ? lane_max[c + half] : lane_max[c];
    real m_new = lane_max[0] > *m ? lane_max[0] : *m;
    /* while a row has seen only -inf, subtract 0 so exp gives 0 rather than NaN */
    real m_use = m_new == -INFINITY ? 0 : m_new;
    real alpha = EXP(*m - m_use);
    real sum = RN(exp_row)(s, nkp, m_use);
    *l = *l * alpha + sum;
    *m = m_new;
    if (alpha != 1)
        for (int64_t c = 0; c < dvp; c++) o[c] *= alpha;
}

/* Output rows i0 .. i0 + BQ of (sequence sq, query head h). */
static void RN(fwd_tile)(const seqcore_attn_problem *p, const attn_opts *o, const real *q,
                         const real *kt, int64_t ldt, const real *v, const real *bias,
                         real *out, real *lse, int64_t sq, int64_t h, int64_t i0,
                         RN(fwd_scratch) *w) {
    int64_t hk = h / (p->Hq / p->Hkv);
    seq_rows qr = q_rows(p, sq, h), kr = k_rows(p, sq, hk);
    if (i0 >= qr.len) return;
    int64_t D = p->D, Dv = p->Dv, dvp = round_up(Dv, NR);
    int64_t nq = min64(BQ, qr.len - i0), mq = round_up(nq, MR);
    band bd = make_band(o, qr.len, kr.len);
    RN(load_rows)(w->q, D, q, qr, i0, nq, mq, D, (real)o->scale);
    for (int64_t r = 0; r < mq; r++) {
        w->m[r] = -INFINITY;
        w->l[r] = 0;
        for (int64_t c = 0; c < dvp; c++) w->o[r * dvp + c] = 0;
    }
    int64_t j_begin = band_lo(&bd, i0), j_end = band_hi(&bd, i0 + nq - 1);
    uint32_t g = dropout_head(p, sq, h);
    for (int64_t j0 = j_begin / BK * BK; j0 < j_end; j0 += BK) {
        tile_pos t = make_tile(&bd, i0, nq, j0, min64(BK, kr.len - j0));
        int64_t nkp = round_up(t.nk, NR);
        if (o->dropout)
            dropout_keys_fill(&o->gen, g, (uint32_t)j0, (int)round_up(t.nk, VF), &w->keys);
        const real *kt_tile = kt + hk * D * ldt + key_token(p, sq, j0);
        /* V rows serve the micro-kernel in place when Dv is a whole number of its blocks */
        const real *v_tile = v + row_index(kr, j0) * Dv;
        int64_t ldv = kr.step * Dv;
        if (dvp != Dv) {
            RN(load_rows)(w->v, dvp, v, kr, j0, t.nk, t.nk, Dv, 1);
            v_tile = w->v;
            ldv = dvp;
        }
        RN(gemm)(mq, nkp, D, w->q, D, kt_tile, ldt, w->s, BK, 0);
        for (int64_t r = 0; r < nq; r++) {
            real *s = w->s + r * BK;
            const real *bias_row = bias ? bias + bias_offset(p, sq, h, i0 + r) : NULL;
            RN(score_row_fixups)(s, NULL, &t, r, 0, t.nk, o, bias_row, p->bias_strides[3]);
            for (int64_t j = t.nk; j < nkp; j++) s[j] = -INFINITY;
            RN(online_softmax_row)(s, nkp, &w->m[r], &w->l[r], w->o + r * dvp, dvp);
            if (o->dropout) {  /* (l summed P before dropout) */
                dropout_row_mask(&o->gen, &w->keys, g, i0 + r, t.nk, w->keep);
                for (int64_t j = 0; j < t.nk; j++) s[j] *= w->keep[j];
            }
        }
        RN(gemm)(mq, dvp, t.nk, w->s, BK, v_tile, ldv, w->o, dvp, 1);
    }
    for (int64_t r = 0; r < nq; r++) {
        int64_t row = row_index(qr, i0 + r);
        real *dst = out + row * Dv, l = w->l[r];
        real inv_l = l > 0 ? 1 / l : 0;
        if (o->dropout) inv_l *= (real)o->keep_scale;
        for (int64_t c = 0; c < Dv; c++) dst[c] = w->o[r * dvp + c] * inv_l;
        lse[row] = l > 0 ? w->m[r] + LOG(l) : -INFINITY;
    }
}

int RN(seqcore_attention_fwd)(const seqcore_attn_problem *p, const real *q, const real *k,
                              const real *v, const real *bias, real *out, real *lse) {
    if (!problem_ok(p, q, k, v, bias) || !out || !lse) return SEQCORE_EINVAL;
#ifdef FAST_FWD
    int fast = FAST_FWD(p, q, k, v, bias, out, lse);
    if (fast != -3) return fast;
#endif
    attn_opts o = make_opts(p);
    int64_t n_tiles = cdiv(p->Sq, BQ), n_heads = p->n_seq * p->Hq, n_tasks = n_heads * n_tiles;
    int64_t dvp = round_up(p->Dv, NR), ldt = key_token_count(p) + BK;
    real *kt = RN(transpose_keys)(p, k, ldt);
    if (!kt) return SEQCORE_ENOMEM;
    int status = SEQCORE_OK;
#pragma omp parallel if (n_tasks > 1 && seqcore_worth_threads(attention_work(p)))
    {
        RN(fwd_scratch) w;
        int ok = RN(fwd_scratch_alloc)(&w, p->D, dvp);
        if (!ok) {
#pragma omp atomic write
            status = SEQCORE_ENOMEM;
        }
#pragma omp for schedule(dynamic)
        for (int64_t task = 0; task < n_tasks; task++) {
            if (!ok) continue;
            /* the last query tiles see the most keys under a causal mask: hand those out
             * first, for every head, so the dynamic schedule ends on light tiles */
            int64_t tile = n_tiles - 1 - task / n_heads, seq_head = task % n_heads;
            RN(fwd_tile)(p, &o, q, kt, ldt, v, bias, out, lse, seq_head / p->Hq,
                         seq_head % p->Hq, tile * BQ, &w);
        }
        seqcore_scratch_give(w.block);
    }
    seqcore_scratch_give(kt);
    return status;
}

/* ---------------------------------------------------------------- backward */

/* Per-thread scratch of the backward passes. */
typedef struct {
    void *block;
    real *q;      /* BQ x dp: query tile times scale */
    real *dout;   /* BQ x dvp: output-gradient tile */
    real *kt;     /* D x BK: key tile transposed */
    real *vt;     /* Dv x BK: value tile transposed */
    real *kk;     /* BK x dp: key tile (for dQ) */
    real *s;      /* BQ x BK: scores, then P */
    real *ds;     /* BQ x BK: dP, then dS (gradient of the raw scaled score) */
    real *th;     /* BQ x BK: tanh(s / softcap) */
    real *dk;     /* BK x dp: dK accumulator */
    real *dv;     /* BK x dvp: dV accumulator */
    real *dq;     /* BQ x dp: dQ accumulator */
    real *lse, *delta;  /* BQ: per query row */
    dropout_keys keys;  /* dropout: the key parts of tile keys_j0 of head keys_g */
    int64_t keys_g, keys_j0;
    float keep[BK];     /* and one row's mask */
} RN(bwd_scratch);

static int RN(bwd_scratch_alloc)(RN(bwd_scratch) *w, int64_t D, int64_t dp, int64_t Dv, int64_t dvp) {
    int64_t sizes[13] = {BQ * dp, BQ * dvp, D * BK, Dv * BK, BK * dp, BQ * BK, BQ * BK, BQ * BK,
                         BK * dp, BK * dvp, BQ * dp, BQ, BQ};
    real **parts[13] = {&w->q, &w->dout, &w->kt, &w->vt, &w->kk, &w->s, &w->ds, &w->th,
                         &w->dk, &w->dv, &w->dq, &w->lse, &w->delta};
    int64_t bytes[13];
    void *part[13];
    for (int i = 0; i < 13; i++) bytes[i] = sizes[i] * (int64_t)sizeof(real);
    w->block = seqcore_scratch_take_parts(13, bytes, part, 1);
    for (int i = 0; i < 13; i++) *parts[i] = part[i];
    w->keys_g = w->keys_j0 = -1;
    return w->block != NULL;
}

/* Query-side tile inputs: q (times scale), dout, lse and delta of rows i0 .. i0 + nq. */
static void RN(bwd_load_queries)(const seqcore_attn_problem *p, const attn_opts *o,
                                 const real *q, const real *dout, const real *lse,
                                 const real *delta, seq_rows qr, int64_t i0, int64_t nq,
                                 RN(bwd_scratch) *w) {
    int64_t mq = round_up(nq, MR);
    RN(load_rows)(w->q, round_up(p->D, NR), q, qr, i0, nq, mq, p->D, (real)o->scale);
    RN(load_rows)(w->dout, round_up(p->Dv, NR), dout, qr, i0, nq, mq, p->Dv, 1);
    for (int64_t r = 0; r < nq; r++) {
        int64_t row = row_index(qr, i0 + r);
        w->lse[r] = lse[row];
        w->delta[r] = delta[row];
    }
}

/* P and dS of one tile, recomputed from lse: w->s <- P, w->ds <- dS (gradient of the scaled
 * raw score; zero where masked). dbias (may be NULL) gets the gradient of the biased score.
 * With dropout (f = keep / (1 - p)): dS = P (dP f - delta), and w->s <- P f (for dV). */
WIDE_LOOPS static void RN(bwd_tile_grads)(const seqcore_attn_problem *p, const attn_opts *o,
                                          const tile_pos *t, const real *bias, real *dbias,
                                          int64_t sq, int64_t h, RN(bwd_scratch) *w) {
    int64_t mq = round_up(t->nq, MR), nkp = round_up(t->nk, NR);
    block_ranges cols;  /* a masked tile: each row block's products stop at its keys */
    if (t->needs_mask) query_block_keys(t, NR, &cols);
    const block_ranges *clip = t->needs_mask ? &cols : NULL;
    RN(gemm_clipped)(mq, nkp, p->D, w->q, round_up(p->D, NR), w->kt, BK, w->s, BK, 0, clip, NULL);
    RN(gemm_clipped)(mq, nkp, p->Dv, w->dout, round_up(p->Dv, NR), w->vt, BK, w->ds, BK, 0, clip,
                     NULL);
    /* restrict and nk in a local: without them the stores below might alias t and each
     * other, and the exp loop stays scalar (a third of the backward's time) */
    int64_t nk = t->nk;
    uint32_t g = dropout_head(p, sq, h);
    if (o->dropout && (w->keys_g != (int64_t)g || w->keys_j0 != t->j0)) {
        dropout_keys_fill(&o->gen, g, (uint32_t)t->j0, (int)round_up(nk, VF), &w->keys);
        w->keys_g = g;
        w->keys_j0 = t->j0;
    }
    for (int64_t r = 0; r < t->nq; r++) {
        real *restrict s = w->s + r * BK, *restrict ds = w->ds + r * BK;
        real *restrict th = w->th + r * BK;
        /* the row's keys [lo, hi): outside them P and dS are 0 (and the products above may
         * have left anything there) */
        int64_t lo = 0, hi = nk;
        if (t->needs_mask) row_keys(t, r, &lo, &hi);
        const real *bias_row = bias ? bias + bias_offset(p, sq, h, t->i0 + r) : NULL;
        RN(score_row_fixups)(s, th, t, r, lo, hi, o, bias_row, p->bias_strides[3]);
        /* a row that sees no key has lse -inf and gets P = 0 (not exp(-inf + inf)) */
        real row_lse = w->lse[r] == -INFINITY ? INFINITY : w->lse[r], row_delta = w->delta[r];
        real *db = dbias ? dbias + dbias_offset(p, sq, h, t->i0 + r) + t->j0 : NULL;
        RN(exp_row)(s + lo, hi - lo, row_lse);
        if (o->dropout) {
            float *restrict keep = w->keep;
            real f = (real)o->keep_scale;
            dropout_row_mask(&o->gen, &w->keys, g, t->i0 + r, nk, keep);
            for (int64_t j = lo; j < hi; j++) {
                real pf = keep[j] * f;
                ds[j] = s[j] * (ds[j] * pf - row_delta);
                s[j] *= pf;
            }
        } else {
            RN(dscore_row)(ds + lo, s + lo, hi - lo, row_delta);
        }
        for (int64_t j = 0; j < lo; j++) s[j] = ds[j] = 0;
        for (int64_t j = hi; j < nk; j++) s[j] = ds[j] = 0;
        if (db)  /* (the gradient of the biased score: before softcap's chain rule) */
            for (int64_t j = 0; j < nk; j++) db[j] = ds[j];
        if (o->softcap > 0)
            for (int64_t j = lo; j < hi; j++) ds[j] *= 1 - th[j] * th[j];
    }
}

/* delta[row] = dout[row] . out[row] for every query row of (sequence sq, head h). */
static void RN(bwd_delta)(const seqcore_attn_problem *p, const real *dout, const real *out,
                          real *delta, int64_t sq, int64_t h) {
    seq_rows qr = q_rows(p, sq, h);
    for (int64_t i = 0; i < qr.len; i++) {
        int64_t row = row_index(qr, i);
        const real *a = dout + row * p->Dv, *b = out + row * p->Dv;
        /* in vectors: the compiler keeps a scalar sum's order, one add per element after
         * another (a tenth of an S32 backward) */
        VEC acc = V(zero)();
        int64_t c = 0;
        for (; c + VL <= p->Dv; c += VL) acc = V(fma)(V(load)(a + c), V(load)(b + c), acc);
        real sum = V(reduce_add)(acc);
        for (; c < p->Dv; c++) sum = MADD(a[c], b[c], sum);
        delta[row] = sum;
    }
}

/* dK, dV of key rows j0 .. j0 + BK of (sequence sq, kv head hk), summed over the query heads
 * of its GQA group: one task owns these rows, so no two threads add into them.
 * dq_acc (may be NULL): when the task owns the whole kv head (bwd_head), dS K of each tile is
 * added there too, (group, ld_rows, dp) unscaled rows, so P and dS serve dQ without being
 * recomputed by a second pass. */
static void RN(bwd_dkdv_tile)(const seqcore_attn_problem *p, const attn_opts *o, const real *dout,
                              const real *q, const real *k, const real *v, const real *bias,
                              const real *lse, const real *delta, real *dk, real *dv,
                              int64_t sq, int64_t hk, int64_t j0, RN(bwd_scratch) *w,
                              real *dq_acc, int64_t ld_rows) {
    seq_rows kr = k_rows(p, sq, hk);
    if (j0 >= kr.len) return;
    int64_t D = p->D, Dv = p->Dv, dp = round_up(D, NR), dvp = round_up(Dv, NR);
    int64_t nk = min64(BK, kr.len - j0), mk = round_up(nk, MR), group = p->Hq / p->Hkv;
    RN(load_rows_transposed)(w->kt, k, kr, j0, nk, D);
    RN(load_rows_transposed)(w->vt, v, kr, j0, nk, Dv);
    if (dq_acc) RN(load_rows)(w->kk, dp, k, kr, j0, nk, nk, D, 1);
    for (int64_t i = 0; i < BK * dp; i++) w->dk[i] = 0;
    for (int64_t i = 0; i < BK * dvp; i++) w->dv[i] = 0;
    for (int64_t h = hk * group; h < (hk + 1) * group; h++) {
        seq_rows qr = q_rows(p, sq, h);
        band bd = make_band(o, qr.len, kr.len);
        int64_t i_begin = band_first_query(&bd, j0);
        int64_t i_end = band_end_query(&bd, j0 + nk - 1);
        for (int64_t i0 = i_begin / BQ * BQ; i0 < i_end; i0 += BQ) {
            tile_pos t = make_tile(&bd, i0, min64(BQ, qr.len - i0), j0, nk);
            RN(bwd_load_queries)(p, o, q, dout, lse, delta, qr, i0, t.nq, w);
            RN(bwd_tile_grads)(p, o, &t, bias, NULL, sq, h, w);
            /* key rows nk .. mk of dK, dV pick up whatever P and dS hold past column nk:
             * they are never written out. A masked tile's key blocks sum only the query
             * rows that see them, its query blocks only the keys they see. */
            block_ranges rows, keys;
            if (t.needs_mask) {
                key_block_queries(&t, &rows);
                query_block_keys(&t, 1, &keys);
            }
            const block_ranges *row_clip = t.needs_mask ? &rows : NULL;
            const block_ranges *key_clip = t.needs_mask ? &keys : NULL;
            RN(gemm_at_clipped)(mk, dvp, t.nq, w->s, BK, w->dout, dvp, w->dv, dvp, 1, row_clip);
            RN(gemm_at_clipped)(mk, dp, t.nq, w->ds, BK, w->q, dp, w->dk, dp, 1,  /* scale * q */
                                row_clip);
            if (dq_acc)
                RN(gemm_clipped)(round_up(t.nq, MR), dp, nk, w->ds, BK, w->kk, dp,
                                 dq_acc + ((h - hk * group) * ld_rows + i0) * dp, dp, 1, NULL,
                                 key_clip);
        }
    }
    for (int64_t j = 0; j < nk; j++) {
        int64_t row = row_index(kr, j0 + j);
        for (int64_t c = 0; c < D; c++) dk[row * D + c] = w->dk[j * dp + c];
        for (int64_t c = 0; c < Dv; c++) dv[row * Dv + c] = w->dv[j * dvp + c];
    }
}

/* dQ (and dbias) of query rows i0 .. i0 + BQ of (sequence sq, query head h). */
static void RN(bwd_dq_tile)(const seqcore_attn_problem *p, const attn_opts *o, const real *dout,
                            const real *q, const real *k, const real *v, const real *bias,
                            const real *lse, const real *delta, real *dq, real *dbias,
                            int64_t sq, int64_t h, int64_t i0, RN(bwd_scratch) *w) {
    seq_rows qr = q_rows(p, sq, h), kr = k_rows(p, sq, h / (p->Hq / p->Hkv));
    if (i0 >= qr.len) return;
    int64_t D = p->D, dp = round_up(D, NR);
    int64_t nq = min64(BQ, qr.len - i0), mq = round_up(nq, MR);
    band bd = make_band(o, qr.len, kr.len);
    RN(bwd_load_queries)(p, o, q, dout, lse, delta, qr, i0, nq, w);
    for (int64_t i = 0; i < BQ * dp; i++) w->dq[i] = 0;
    if (dbias)  /* scores outside the band have gradient 0 */
        for (int64_t r = 0; r < nq; r++)
            for (int64_t j = 0; j < kr.len; j++) dbias[dbias_offset(p, sq, h, i0 + r) + j] = 0;
    int64_t j_begin = band_lo(&bd, i0), j_end = band_hi(&bd, i0 + nq - 1);
    for (int64_t j0 = j_begin / BK * BK; j0 < j_end; j0 += BK) {
        tile_pos t = make_tile(&bd, i0, nq, j0, min64(BK, kr.len - j0));
        RN(load_rows_transposed)(w->kt, k, kr, j0, t.nk, D);
        RN(load_rows_transposed)(w->vt, v, kr, j0, t.nk, p->Dv);
        RN(load_rows)(w->kk, dp, k, kr, j0, t.nk, t.nk, D, 1);
        RN(bwd_tile_grads)(p, o, &t, bias, dbias, sq, h, w);
        block_ranges keys;  /* (as in bwd_dkdv_tile) */
        if (t.needs_mask) query_block_keys(&t, 1, &keys);
        RN(gemm_clipped)(mq, dp, t.nk, w->ds, BK, w->kk, dp, w->dq, dp, 1, NULL,
                         t.needs_mask ? &keys : NULL);
    }
    real scale = (real)o->scale;
    for (int64_t r = 0; r < nq; r++) {
        real *dst = dq + row_index(qr, i0 + r) * D;
        for (int64_t c = 0; c < D; c++) dst[c] = scale * w->dq[r * dp + c];
    }
}

/* Every key tile of (sequence sq, kv head hk), and dQ of the query heads of its GQA group
 * (FlashAttention-2's single pass): the task owns all their rows, so the dS of a tile goes
 * into dK and dQ at once. dq_acc: group x round_up(Sq, BQ) x dp, per thread. */
static void RN(bwd_head)(const seqcore_attn_problem *p, const attn_opts *o, const real *dout,
                         const real *q, const real *k, const real *v, const real *bias,
                         const real *lse, const real *delta, real *dq, real *dk, real *dv,
                         int64_t sq, int64_t hk, RN(bwd_scratch) *w, real *dq_acc) {
    seq_rows kr = k_rows(p, sq, hk);
    int64_t D = p->D, dp = round_up(D, NR), group = p->Hq / p->Hkv, ld_rows = round_up(p->Sq, BQ);
    for (int64_t i = 0; i < group * ld_rows * dp; i++) dq_acc[i] = 0;
    for (int64_t j0 = 0; j0 < kr.len; j0 += BK)
        RN(bwd_dkdv_tile)(p, o, dout, q, k, v, bias, lse, delta, dk, dv, sq, hk, j0, w, dq_acc,
                          ld_rows);
    real scale = (real)o->scale;
    for (int64_t g = 0; g < group; g++) {  /* rows that see no key get 0 */
        seq_rows qr = q_rows(p, sq, hk * group + g);
        for (int64_t i = 0; i < qr.len; i++) {
            real *dst = dq + row_index(qr, i) * D;
            const real *acc = dq_acc + (g * ld_rows + i) * dp;
            for (int64_t c = 0; c < D; c++) dst[c] = scale * acc[c];
        }
    }
}

int RN(seqcore_attention_bwd)(const seqcore_attn_problem *p, const real *dout, const real *q,
                              const real *k, const real *v, const real *bias, const real *out,
                              const real *lse, real *dq, real *dk, real *dv, real *dbias) {
    if (!problem_ok(p, q, k, v, bias) || !dout || !out || !lse || !dq || !dk || !dv)
        return SEQCORE_EINVAL;
    if (dbias && p->cu_q) return SEQCORE_EINVAL;
    attn_opts o = make_opts(p);
    int64_t dp = round_up(p->D, NR), dvp = round_up(p->Dv, NR);
    int64_t n_q_tiles = cdiv(p->Sq, BQ), n_k_tiles = cdiv(p->Sk, BK);
    int64_t n_heads = p->n_seq * p->Hq;
    real *delta = seqcore_scratch_take((size_t)max64(1, query_row_count(p)) * sizeof(real));
    if (!delta) return SEQCORE_ENOMEM;
    /* One pass per kv head (dQ with dK, dV: P and dS computed once, not twice) when the kv
     * heads alone keep the threads evenly busy (dense heads are equal work, so a multiple of
     * the thread count will do; packed sequences differ in length and want several heads a
     * thread), there is no dbias, and the per-thread dQ accumulator stays small; else a
     * dK/dV pass over key tiles, then a dQ pass over query tiles. */
    int64_t n_kv_heads = p->n_seq * p->Hkv, threads = seqcore_max_threads();
    int64_t dq_acc_len = p->Hq / p->Hkv * round_up(p->Sq, BQ) * dp;
    int balanced = n_kv_heads >= 4 * threads || (!p->cu_q && n_kv_heads % threads == 0);
    int fused = !dbias && dq_acc_len <= ((int64_t)1 << 22) && balanced;
    int status = SEQCORE_OK;
#pragma omp parallel if (n_heads > 1 && seqcore_worth_threads(2.5 * attention_work(p)))
    {
        RN(bwd_scratch) w;
        int ok = RN(bwd_scratch_alloc)(&w, p->D, dp, p->Dv, dvp);
        real *dq_acc = fused && ok ? seqcore_scratch_take((size_t)dq_acc_len * sizeof(real)) : NULL;
        if (!ok || (fused && !dq_acc)) {
            ok = 0;
#pragma omp atomic write
            status = SEQCORE_ENOMEM;
        }
#pragma omp for schedule(static)
        for (int64_t sh = 0; sh < n_heads; sh++)
            RN(bwd_delta)(p, dout, out, delta, sh / p->Hq, sh % p->Hq);
        /* (the implicit barrier after each loop orders the passes) */
        if (fused) {
#pragma omp for schedule(dynamic)
            for (int64_t sh = 0; sh < n_kv_heads; sh++)
                if (ok)
                    RN(bwd_head)(p, &o, dout, q, k, v, bias, lse, delta, dq, dk, dv,
                                 sh / p->Hkv, sh % p->Hkv, &w, dq_acc);
        } else {
#pragma omp for schedule(dynamic)
            for (int64_t task = 0; task < p->n_seq * p->Hkv * n_k_tiles; task++) {
                if (!ok) continue;
                int64_t tile = task % n_k_tiles, seq_head = task / n_k_tiles;
                RN(bwd_dkdv_tile)(p, &o, dout, q, k, v, bias, lse, delta, dk, dv,
                                  seq_head / p->Hkv, seq_head % p->Hkv, tile * BK, &w, NULL, 0);
            }
#pragma omp for schedule(dynamic)
            for (int64_t task = 0; task < n_heads * n_q_tiles; task++) {
                if (!ok) continue;
                /* heavy (last, under a causal mask) query tiles first */
                int64_t tile = n_q_tiles - 1 - task / n_heads, seq_head = task % n_heads;
                RN(bwd_dq_tile)(p, &o, dout, q, k, v, bias, lse, delta, dq, dbias,
                                seq_head / p->Hq, seq_head % p->Hq, tile * BQ, &w);
            }
        }
        seqcore_scratch_give(dq_acc);
        seqcore_scratch_give(w.block);
    }
    seqcore_scratch_give(delta);
    return status;
}

/* End of one instantiation: its parameters are undefined for the next. */
#undef real
#undef VEC
#undef V
#undef VL
#undef VMATH
#undef NR
#undef EXP
#undef TANH
#undef LOG
#undef MADD
#undef RN
#undef FAST_FWD
#endif
