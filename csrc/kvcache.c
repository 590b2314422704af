/* Attention against a KV cache on the CPU (kvcache.h): decoding and chunked prefill.
 *
 * First the new keys and values are written into the caches (each (sequence, kv head) by
 * one thread). Then the attention runs as tasks (sequence b, kv head hk, row tile, key
 * split), scheduled by OpenMP:
 *   - a task's query rows are the Hq / Hkv query heads that read hk times the Sq queries
 *     (row r: head hk * group + r / Sq, query r % Sq), ROW_TILE at most, so a cached key is
 *     read once for the whole group (GQA) rather than once per query head;
 *   - its keys are one split of the sequence's L_b keys, walked in CHUNK-row chunks (the
 *     rows of a chunk are contiguous in dense and paged caches alike, see paged_kv.h) with
 *     an online softmax; ROW_BLOCK rows share each key row's loads;
 *   - with one split a task writes out and lse itself. When the sequences x kv heads are
 *     too few to keep the threads busy (decoding a few long sequences), each one's keys are
 *     split, and the partial results merged afterwards with merge_attention's math.
 * Decoding reads every cached key and value once per call and does ~2 (D + Dv) x group
 * flops per key: memory-bound, so the kernel aims at streaming the caches, not at the FMA
 * peak. The part after `#else` is a template compiled for float and double.
 */
#ifndef KVC_TEMPLATE
#include "isa.h"  /* this ISA level's names */
#include "seqcore.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "band.h"
#include "paged_kv.h"
#include "parallel.h"
#include "scratch.h"
#include "simd.h"

enum {
    CHUNK = 16,            /* keys per step of the online softmax (a multiple of every VF) */
    ROW_BLOCK = 4,         /* query rows sharing one key row's loads */
    ROW_TILE = 64,         /* query rows per task */
    MIN_SPLIT_KEYS = 256,  /* keys per split at least: fewer would not pay the merge */
    MAX_SPLITS = 64,
    TASKS_PER_THREAD = 4,  /* splits until there are this many tasks per thread */
    PREFETCH_CHUNKS = 2,   /* chunks ahead the next rows are prefetched */
};

/* Cheap checks of everything the kernels index with (the API validated already). */
static int problem_ok(const seqcore_kvcache_problem *p, const void *q, const void *kc,
                      const void *vc, const void *kn, const void *vn, const void *out,
                      const void *lse) {
    if (!p || p->B < 0 || p->Hq < 0 || p->Hkv < 1 || p->Sq < 0 || p->S_new < 0) return 0;
    if (p->Hq % p->Hkv || p->D < 1 || p->Dv < 1 || p->block_rows < 1 || p->num_blocks < 0) return 0;
    if (p->window_left < -1 || p->window_right < -1 || !(p->softcap >= 0)) return 0;
    if (!isfinite(p->scale) || !isfinite(p->softcap)) return 0;
    if (p->B * p->Hq * p->Sq > 0 && (!q || !out || !lse)) return 0;
    if (p->S_new > 0 && (!kn || !vn)) return 0;
    if (p->B > 0 && (!p->cache_seqlens || !kc || !vc)) return 0;
    int64_t capacity = p->block_table ? p->max_blocks * p->block_rows : p->block_rows;
    if (p->block_table && p->block_rows % CHUNK) return 0;
    if (!p->block_table && p->num_blocks != p->B) return 0;
    for (int64_t b = 0; b < p->B; b++) {
        int64_t len = (int64_t)p->cache_seqlens[b] + p->S_new;
        if (p->cache_seqlens[b] < 0 || len > capacity) return 0;
        for (int64_t t = 0; p->block_table && t < cdiv(len, p->block_rows); t++) {
            int32_t block = p->block_table[b * p->max_blocks + t];
            if (block < 0 || block >= p->num_blocks) return 0;
        }
    }
    return 1;
}

static kv_layout layout_of(const seqcore_kvcache_problem *p) {
    kv_layout kv = {p->block_table, p->max_blocks, p->block_rows, p->Hkv};
    return kv;
}

static int64_t longest(const seqcore_kvcache_problem *p) {
    int64_t most = 0;
    for (int64_t b = 0; b < p->B; b++) most = max64(most, (int64_t)p->cache_seqlens[b] + p->S_new);
    return most;
}

static int64_t row_tiles(const seqcore_kvcache_problem *p) {
    return cdiv(p->Hq / p->Hkv * p->Sq, ROW_TILE);
}

/* Splits per (sequence, kv head, row tile): one, unless there are too few tasks for the
 * threads and the keys are many. */
static int64_t splits_for(const seqcore_kvcache_problem *p, int64_t most, int64_t nthreads) {
    int64_t tasks = p->B * p->Hkv * row_tiles(p), want = TASKS_PER_THREAD * nthreads;
    if (tasks == 0 || tasks >= want || nthreads == 1) return 1;
    return clamp64(min64(cdiv(want, tasks), most / MIN_SPLIT_KEYS), 1, MAX_SPLITS);
}

#define KVC_TEMPLATE
#define real float
#define VEC vf
#define V(op) vf_##op
#define VL VF
#define VMATH 1
#define EXP expf
#define TANH simd_tanhf
#define LOG logf
#define RN(name) name##_f32
#include "kvcache.c"

#define real double
#define VEC vd
#define V(op) vd_##op
#define VL VD
#define VMATH 0
#define EXP simd_exp
#define TANH tanh
#define LOG log
#define RN(name) name##_f64
#include "kvcache.c"
#undef KVC_TEMPLATE

#else /* ---- template: real, VEC / V(op) / VL (its vectors, simd.h), VMATH (float: vector tanh, masked tails),
       * EXP, TANH, LOG, RN ---- */

/* The new keys and values of (sequence b, kv head hk) into the caches, at cache_seqlens[b]. */
static void RN(append)(const seqcore_kvcache_problem *p, const kv_layout *kv, real *k_cache,
                       real *v_cache, const real *k_new, const real *v_new, int64_t b,
                       int64_t hk) {
    int64_t first = p->cache_seqlens[b], D = p->D, Dv = p->Dv;
    for (int64_t t = 0; t < p->S_new; t++) {
        int64_t src = (b * p->Hkv + hk) * p->S_new + t;
        memcpy(k_cache + kv_row(kv, b, hk, first + t, D), k_new + src * D, (size_t)D * sizeof(real));
        memcpy(v_cache + kv_row(kv, b, hk, first + t, Dv), v_new + src * Dv,
               (size_t)Dv * sizeof(real));
    }
}

/* Per-thread scratch of the tasks. */
typedef struct {
    void *block;
    real *q;  /* ROW_TILE x D: the task's query rows times scale */
    real *o;  /* ROW_TILE x Dv: output accumulators (unnormalized) */
    real *m;  /* ROW_TILE: running max */
    real *l;  /* ROW_TILE: running sum of exp */
    real *s;  /* ROW_BLOCK x CHUNK: scores, then P, of one chunk */
} RN(kvc_scratch);

static int RN(scratch_alloc)(RN(kvc_scratch) *w, int64_t D, int64_t Dv) {
    int64_t r = sizeof(real), bytes[5] = {ROW_TILE * D * r, ROW_TILE * Dv * r, ROW_TILE * r,
                                         ROW_TILE * r, ROW_BLOCK * CHUNK * r};
    void *part[5];
    w->block = seqcore_scratch_take_parts(5, bytes, part, 0);
    w->q = part[0], w->o = part[1], w->m = part[2], w->l = part[3], w->s = part[4];
    return w->block != NULL;
}

/* s[r * CHUNK + j] = q_r . k_j for the nb (<= ROW_BLOCK) rows of qb (D apart) and the nk
 * key rows of kt (D apart). Two keys at a time: 2 x ROW_BLOCK independent accumulators, so
 * the FMA latency is hidden, and each key vector is loaded once for all the rows. */
static void RN(chunk_scores)(const real *restrict qb, int64_t nb, const real *restrict kt,
                             int64_t nk, int64_t D, real *restrict s) {
    const real *qr[ROW_BLOCK];
    for (int r = 0; r < ROW_BLOCK; r++) qr[r] = qb + (r < nb ? r : nb - 1) * D;
    for (int64_t j = 0; j < nk; j += 2) {
        const real *k0 = kt + j * D, *k1 = kt + (j + 1 < nk ? j + 1 : j) * D;
        VEC acc0[ROW_BLOCK], acc1[ROW_BLOCK];
        for (int r = 0; r < ROW_BLOCK; r++) acc0[r] = acc1[r] = V(zero)();
        int64_t c = 0;
        for (; c + VL <= D; c += VL) {
            VEC a = V(load)(k0 + c), b = V(load)(k1 + c);
            for (int r = 0; r < ROW_BLOCK; r++) {
                VEC x = V(load)(qr[r] + c);
                acc0[r] = V(fma)(x, a, acc0[r]);
                acc1[r] = V(fma)(x, b, acc1[r]);
            }
        }
        if (c < D) {  /* the last D % VL columns: masked loads, zeros past D */
            VEC a = V(load_n)(k0 + c, D - c), b = V(load_n)(k1 + c, D - c);
            for (int r = 0; r < ROW_BLOCK; r++) {
                VEC x = V(load_n)(qr[r] + c, D - c);
                acc0[r] = V(fma)(x, a, acc0[r]);
                acc1[r] = V(fma)(x, b, acc1[r]);
            }
        }
        for (int r = 0; r < nb; r++) {
            s[r * CHUNK + j] = V(reduce_add)(acc0[r]);
            if (j + 1 < nk) s[r * CHUNK + j + 1] = V(reduce_add)(acc1[r]);
        }
    }
}

/* s[j] <- exp(s[j] - sub) for the CHUNK scores of a row (-inf gives 0); returns their sum. */
static real RN(exp_chunk)(real *restrict s, real sub) {
    VEC sum = V(zero)(), mu = V(set1)(sub);
    for (int64_t j = 0; j < CHUNK; j += VL) {
        VEC pr = V(exp)(V(sub)(V(load)(s + j), mu));
        V(store)(s + j, pr);
        sum = V(add)(sum, pr);
    }
    return V(reduce_add)(sum);
}

/* s[j] <- softcap tanh(s[j] / softcap) over a chunk of scores (the lanes past its keys are
 * masked after), in vectors for float: a libm tanh per score made a softcapped decode step
 * a third slower. */
static void RN(softcap_chunk)(real *restrict s, real softcap) {
    real inv_cap = 1 / softcap;
    int64_t j = 0;
#if VMATH
    for (; j < CHUNK; j += VL)
        V(store)(s + j, V(mul)(V(set1)(softcap), V(tanh)(V(mul)(V(load)(s + j), V(set1)(inv_cap)))));
#endif
    for (; j < CHUNK; j++) s[j] = softcap * TANH(s[j] * inv_cap);
}

/* o_r <- alpha_r o_r + sum_j p_rj v_j for the nb rows of ob (Dv apart) over the chunk's nk
 * value rows (Dv apart): each value vector is loaded once for all the rows, whose
 * accumulators are independent chains. */
static void RN(chunk_pv)(const real *restrict p, int64_t nb, const real *restrict vt,
                         int64_t nk, int64_t Dv, const real *alpha, real *restrict ob) {
    const real *pr[ROW_BLOCK];
    real *orow[ROW_BLOCK];
    VEC a[ROW_BLOCK];
    for (int r = 0; r < ROW_BLOCK; r++) {
        int rr = r < nb ? r : (int)nb - 1;  /* (rows past nb repeat the last; not stored) */
        pr[r] = p + rr * CHUNK, orow[r] = ob + rr * Dv, a[r] = V(set1)(alpha[rr]);
    }
    for (int64_t c = 0; c < Dv; c += VL) {
        int64_t n = Dv - c;  /* the last vector is masked past Dv */
        VEC acc[ROW_BLOCK];
        for (int r = 0; r < ROW_BLOCK; r++) acc[r] = V(mul)(V(load_n)(orow[r] + c, n), a[r]);
        if (n >= VL) {
            for (int64_t j = 0; j < nk; j++) {
                VEC x = V(load)(vt + j * Dv + c);
                for (int r = 0; r < ROW_BLOCK; r++) acc[r] = V(fma)(V(set1)(pr[r][j]), x, acc[r]);
            }
        } else {
            for (int64_t j = 0; j < nk; j++) {
                VEC x = V(load_n)(vt + j * Dv + c, n);
                for (int r = 0; r < ROW_BLOCK; r++) acc[r] = V(fma)(V(set1)(pr[r][j]), x, acc[r]);
            }
        }
        for (int r = 0; r < nb; r++) V(store_n)(orow[r] + c, acc[r], n);
    }
}

/* Asks for n rows (width apart, contiguous) to be brought into cache. Decoding streams the
 * caches from memory once per call: without this, one core read them at a third of the
 * bandwidth a plain sequential read gets (the hardware prefetchers lose the stream at every
 * chunk, and a paged cache's blocks are scattered). */
static void RN(prefetch_rows)(const real *rows, int64_t n, int64_t width) {
    const char *at = (const char *)rows, *stop = (const char *)(rows + n * width);
    for (; at < stop; at += 64) __builtin_prefetch(at);
}

/* The keys of one task: split `split` of `n_splits` of the sequence's L keys. */
static void RN(split_keys)(int64_t L, int64_t split, int64_t n_splits, int64_t *lo, int64_t *hi) {
    int64_t len = round_up(cdiv(L, n_splits), CHUNK);
    *lo = min64(split * len, L);
    *hi = min64(*lo + len, L);
}

/* Task (b, hk, row tile, split): its rows' online softmax over its keys; then out and lse,
 * or (several splits) the split's normalized partial output and lse. */
static void RN(task)(const seqcore_kvcache_problem *p, const kv_layout *kv, const real *q,
                     const real *k_cache, const real *v_cache, real *out, real *lse,
                     real *part_o, real *part_lse, int64_t n_splits, int64_t b, int64_t hk,
                     int64_t tile, int64_t split, RN(kvc_scratch) *w) {
    int64_t D = p->D, Dv = p->Dv, Sq = p->Sq, group = p->Hq / p->Hkv;
    int64_t r0 = tile * ROW_TILE, nr = min64(ROW_TILE, group * Sq - r0);
    int64_t L = (int64_t)p->cache_seqlens[b] + p->S_new, k_lo, k_hi;
    RN(split_keys)(L, split, n_splits, &k_lo, &k_hi);
    band bd = band_of(p->window_left, p->window_right, Sq, L);
    int64_t lo[ROW_TILE], hi[ROW_TILE], first = k_hi, end = k_lo;
    for (int64_t r = 0; r < nr; r++) {  /* the rows' queries, scaled, and visible keys */
        int64_t h = hk * group + (r0 + r) / Sq, i = (r0 + r) % Sq;
        const real *src = q + ((b * p->Hq + h) * Sq + i) * D;
        for (int64_t c = 0; c < D; c++) w->q[r * D + c] = (real)(src[c] * p->scale);
        lo[r] = max64(band_lo(&bd, i), k_lo);
        hi[r] = min64(band_hi(&bd, i), k_hi);
        if (lo[r] < hi[r]) first = min64(first, lo[r]), end = max64(end, hi[r]);
        w->m[r] = -INFINITY;
        w->l[r] = 0;
        memset(w->o + r * Dv, 0, (size_t)Dv * sizeof(real));
    }
    for (int64_t j0 = first / CHUNK * CHUNK; first < end && j0 < end; j0 += CHUNK) {
        int64_t nk = min64(CHUNK, end - j0);  /* (rows past `end` are never read) */
        const real *kt = k_cache + kv_row(kv, b, hk, j0, D);
        const real *vt = v_cache + kv_row(kv, b, hk, j0, Dv);
        int64_t ahead = j0 + PREFETCH_CHUNKS * CHUNK;
        if (ahead < end) {
            RN(prefetch_rows)(k_cache + kv_row(kv, b, hk, ahead, D), min64(CHUNK, end - ahead), D);
            RN(prefetch_rows)(v_cache + kv_row(kv, b, hk, ahead, Dv), min64(CHUNK, end - ahead), Dv);
        }
        for (int64_t rb = 0; rb < nr; rb += ROW_BLOCK) {
            int64_t nb = min64(ROW_BLOCK, nr - rb);
            real alpha[ROW_BLOCK];
            RN(chunk_scores)(w->q + rb * D, nb, kt, nk, D, w->s);
            for (int64_t r = rb; r < rb + nb; r++) {  /* the online softmax of each row */
                real *s = w->s + (r - rb) * CHUNK, m_new = w->m[r];
                if (p->softcap > 0) RN(softcap_chunk)(s, (real)p->softcap);
                for (int64_t j = 0; j < CHUNK; j++) {
                    int64_t key = j0 + j;
                    if (j >= nk || key < lo[r] || key >= hi[r]) {
                        s[j] = -INFINITY;
                        continue;
                    }
                    m_new = s[j] > m_new ? s[j] : m_new;
                }
                alpha[r - rb] = 1;
                if (m_new == -INFINITY) {  /* no key of this chunk for the row: P = 0 */
                    for (int64_t j = 0; j < CHUNK; j++) s[j] = 0;
                    continue;
                }
                alpha[r - rb] = EXP(w->m[r] - m_new);
                w->l[r] = w->l[r] * alpha[r - rb] + RN(exp_chunk)(s, m_new);
                w->m[r] = m_new;
            }
            RN(chunk_pv)(w->s, nb, vt, nk, Dv, alpha, w->o + rb * Dv);
        }
    }
    for (int64_t r = 0; r < nr; r++) {
        int64_t h = hk * group + (r0 + r) / Sq, i = (r0 + r) % Sq;
        int64_t row = (b * p->Hq + h) * Sq + i;
        real l = w->l[r], inv = l > 0 ? 1 / l : 0;
        real row_lse = l > 0 ? w->m[r] + LOG(l) : -INFINITY;
        real *dst = n_splits == 1 ? out + row * Dv : part_o + (row * n_splits + split) * Dv;
        for (int64_t c = 0; c < Dv; c++) dst[c] = w->o[r * Dv + c] * inv;
        if (n_splits == 1)
            lse[row] = row_lse;
        else
            part_lse[row * n_splits + split] = row_lse;
    }
}

/* One output row from its splits' partial results: merge_attention's math, weights
 * exp(lse_s - max lse); a row no split saw gives out 0, lse -inf. */
static void RN(merge_splits)(const real *part_o, const real *part_lse, int64_t n_splits,
                             int64_t Dv, real *out, real *lse) {
    real m = -INFINITY, total = 0;
    for (int64_t s = 0; s < n_splits; s++) m = part_lse[s] > m ? part_lse[s] : m;
    for (int64_t c = 0; c < Dv; c++) out[c] = 0;
    if (m == -INFINITY) {
        *lse = -INFINITY;
        return;
    }
    for (int64_t s = 0; s < n_splits; s++) {
        real weight = EXP(part_lse[s] - m);  /* (0 for a split that saw no key) */
        total += weight;
        for (int64_t c = 0; c < Dv; c++) out[c] += weight * part_o[s * Dv + c];
    }
    for (int64_t c = 0; c < Dv; c++) out[c] /= total;
    *lse = m + LOG(total);
}

int RN(seqcore_attention_kvcache)(const seqcore_kvcache_problem *p, const real *q,
                                  real *k_cache, real *v_cache, const real *k_new,
                                  const real *v_new, real *out, real *lse) {
    if (!problem_ok(p, q, k_cache, v_cache, k_new, v_new, out, lse)) return SEQCORE_EINVAL;
    kv_layout kv = layout_of(p);
    int64_t most = longest(p), tiles = row_tiles(p), n_rows = p->B * p->Hq * p->Sq;
    double work = 2.0 * (double)(p->D + p->Dv) * (double)n_rows * (double)most;
    int parallel = seqcore_worth_threads(work + (double)p->B * p->Hkv * p->S_new * (p->D + p->Dv));
    int64_t n_splits = splits_for(p, most, parallel ? seqcore_max_threads() : 1);
    int64_t n_tasks = p->B * p->Hkv * tiles * n_splits;
    real *part_o = NULL, *part_lse = NULL;
    if (n_splits > 1) {
        part_o = seqcore_scratch_take((size_t)(n_rows * n_splits * (p->Dv + 1)) * sizeof(real));
        if (!part_o) return SEQCORE_ENOMEM;
        part_lse = part_o + n_rows * n_splits * p->Dv;
    }
    int status = SEQCORE_OK;
#pragma omp parallel if (parallel)
    {
#pragma omp for schedule(static)
        for (int64_t bh = 0; bh < p->B * p->Hkv; bh++)
            RN(append)(p, &kv, k_cache, v_cache, k_new, v_new, bh / p->Hkv, bh % p->Hkv);
        /* (the implied barrier: every new key is in place before any task reads it) */
        RN(kvc_scratch) w;
        int ok = RN(scratch_alloc)(&w, p->D, p->Dv);
        if (!ok) {
#pragma omp atomic write
            status = SEQCORE_ENOMEM;
        }
#pragma omp for schedule(dynamic)
        for (int64_t task = 0; task < n_tasks; task++) {
            if (!ok) continue;
            int64_t split = task % n_splits, rest = task / n_splits;
            int64_t tile = rest % tiles, bh = rest / tiles;
            RN(task)(p, &kv, q, k_cache, v_cache, out, lse, part_o, part_lse, n_splits,
                     bh / p->Hkv, bh % p->Hkv, tile, split, &w);
        }
        seqcore_scratch_give(w.block);
        if (n_splits > 1) {
#pragma omp for schedule(static)
            for (int64_t row = 0; row < n_rows; row++)
                RN(merge_splits)(part_o + row * n_splits * p->Dv, part_lse + row * n_splits,
                                 n_splits, p->Dv, out + row * p->Dv, lse + row);
        }
    }
    seqcore_scratch_give(part_o);
    return status;
}

#undef real
#undef VEC
#undef V
#undef VL
#undef VMATH
#undef EXP
#undef TANH
#undef LOG
#undef RN
#endif
