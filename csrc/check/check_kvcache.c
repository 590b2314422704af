/* Attention against a KV cache (kvcache.c) of each level against a scalar reference in
 * double: dense and paged caches (a permuted block table), appended keys, ragged lengths
 * (an empty sequence, a full cache), GQA, bands, softcap, Sq > 1, and one long sequence
 * whose keys are split between threads. Rows of the caches other than the appended ones
 * must come back unchanged. */
#include "check.h"

typedef struct {
    const char *name;
    int64_t B, Hq, Hkv, Sq, D, Dv, S_new;
    int64_t rows;      /* dense: S_max; paged: block size */
    int64_t max_blocks; /* 0: dense */
    int64_t left, right;
    double softcap;
    int64_t len0;      /* cache_seqlens[b] = (len0 + 37 b) mod (capacity - S_new + 1) */
} kvc_case;

static int64_t capacity(const kvc_case *c) { return c->max_blocks ? c->max_blocks * c->rows : c->rows; }

static int64_t n_blocks(const kvc_case *c) { return c->max_blocks ? c->B * c->max_blocks + 3 : c->B; }

/* Element offset of row pos of (b, hk) in a cache of width w (the reference's own copy). */
static int64_t ref_row(const kvc_case *c, const int32_t *table, int64_t b, int64_t hk,
                       int64_t pos, int64_t w) {
    int64_t block = c->max_blocks ? table[b * c->max_blocks + pos / c->rows] : b;
    return ((block * c->Hkv + hk) * c->rows + pos % c->rows) * w;
}

/* Appends into kc/vc, then out and lse, all in double. */
static void ref_kvcache(const kvc_case *c, const int32_t *lens, const int32_t *table,
                        const double *q, double *kc, double *vc, const double *kn,
                        const double *vn, double *out, double *lse) {
    int64_t D = c->D, Dv = c->Dv, group = c->Hq / c->Hkv;
    double scale = 1 / sqrt((double)D);
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t hk = 0; hk < c->Hkv; hk++)
            for (int64_t t = 0; t < c->S_new; t++) {
                int64_t src = (b * c->Hkv + hk) * c->S_new + t, pos = lens[b] + t;
                memcpy(kc + ref_row(c, table, b, hk, pos, D), kn + src * D, (size_t)D * 8);
                memcpy(vc + ref_row(c, table, b, hk, pos, Dv), vn + src * Dv, (size_t)Dv * 8);
            }
    double *s = malloc((size_t)(capacity(c) + 1) * sizeof(double));
    for (int64_t b = 0; b < c->B; b++)
        for (int64_t h = 0; h < c->Hq; h++)
            for (int64_t i = 0; i < c->Sq; i++) {
                int64_t L = lens[b] + c->S_new, row = (b * c->Hq + h) * c->Sq + i, diag = i + L - c->Sq;
                double m = -INFINITY, l = 0;
                for (int64_t j = 0; j < L; j++) {
                    const double *kr = kc + ref_row(c, table, b, h / group, j, D);
                    double acc = 0;
                    for (int64_t d = 0; d < D; d++) acc += q[row * D + d] * kr[d];
                    acc *= scale;
                    if (c->softcap > 0) acc = c->softcap * tanh(acc / c->softcap);
                    int seen = (c->left < 0 || j >= diag - c->left) && (c->right < 0 || j <= diag + c->right);
                    s[j] = seen ? acc : -INFINITY;
                    if (s[j] > m) m = s[j];
                }
                for (int64_t j = 0; j < L; j++) l += s[j] = m == -INFINITY ? 0 : exp(s[j] - m);
                lse[row] = l > 0 ? m + log(l) : -INFINITY;
                for (int64_t e = 0; e < Dv; e++) {
                    double acc = 0;
                    for (int64_t j = 0; j < L; j++) acc += s[j] * vc[ref_row(c, table, b, h / group, j, Dv) + e];
                    out[row * Dv + e] = l > 0 ? acc / l : 0;
                }
            }
    free(s);
}

static void run_case(const seqcore_kernel_table *kt, check_stats *st, const kvc_case *c,
                     uint64_t seed) {
    int64_t NB = n_blocks(c), nq = c->B * c->Hq * c->Sq, nn = c->B * c->Hkv * c->S_new;
    int64_t nkc = NB * c->Hkv * c->rows;
    int32_t *lens = malloc((size_t)(c->B + 1) * sizeof(int32_t));
    int32_t *table = malloc((size_t)(c->B * c->max_blocks + 1) * sizeof(int32_t));
    for (int64_t b = 0; b < c->B; b++) lens[b] = (int32_t)((c->len0 + 37 * b) % (capacity(c) - c->S_new + 1));
    for (int64_t i = 0; i < c->B * c->max_blocks; i++)  /* a permutation of the blocks */
        table[i] = (int32_t)((i * 7 + 3) % NB);
    double *q = check_randn(&seed, nq * c->D, 1.5), *kn = check_randn(&seed, nn * c->D, 1.5);
    double *vn = check_randn(&seed, nn * c->Dv, 1);
    double *kc0 = check_randn(&seed, nkc * c->D, 1.5), *vc0 = check_randn(&seed, nkc * c->Dv, 1);
    double *kc = malloc((size_t)(nkc * c->D + 1) * 8), *vc = malloc((size_t)(nkc * c->Dv + 1) * 8);
    memcpy(kc, kc0, (size_t)nkc * c->D * 8);
    memcpy(vc, vc0, (size_t)nkc * c->Dv * 8);
    double *out = malloc((size_t)(nq * c->Dv + 1) * 8), *lse = malloc((size_t)(nq + 1) * 8);
    ref_kvcache(c, lens, table, q, kc, vc, kn, vn, out, lse);
    seqcore_kvcache_problem p = {c->B, c->Hq, c->Hkv, c->Sq, c->D, c->Dv, c->S_new, NB, c->rows,
                                 c->max_blocks, lens, c->max_blocks ? table : NULL,
                                 1 / sqrt((double)c->D), c->softcap, c->left, c->right};
    for (int f32 = 1; f32 >= 0; f32--) {
        size_t es = f32 ? 4 : 8;
        void *qq = f32 ? (void *)check_to_f32(q, nq * c->D) : q;
        void *kk = f32 ? (void *)check_to_f32(kn, nn * c->D) : kn;
        void *vv = f32 ? (void *)check_to_f32(vn, nn * c->Dv) : vn;
        void *gkc = f32 ? (void *)check_to_f32(kc0, nkc * c->D) : malloc((size_t)(nkc * c->D + 1) * 8);
        void *gvc = f32 ? (void *)check_to_f32(vc0, nkc * c->Dv) : malloc((size_t)(nkc * c->Dv + 1) * 8);
        if (!f32) {
            memcpy(gkc, kc0, (size_t)nkc * c->D * 8);
            memcpy(gvc, vc0, (size_t)nkc * c->Dv * 8);
        }
        void *o = check_poisoned(nq * c->Dv, es), *l = check_poisoned(nq, es);
        int rc = f32 ? kt->attention_kvcache_f32(&p, qq, gkc, gvc, kk, vv, o, l)
                     : kt->attention_kvcache_f64(&p, qq, gkc, gvc, kk, vv, o, l);
        char what[96];
        snprintf(what, sizeof what, "kvcache %s %s", c->name, f32 ? "f32" : "f64");
        /* the caches after the append: every row as the reference left it (its own copy of
         * the rows it did not write is the original, so this checks those too) */
        double tol = f32 ? TOL_F32 : TOL_F64, copy_tol = f32 ? 1e-7 : 0;  /* (rounding to f32) */
        check_report(st, kt->isa, what, "out", rc ? INFINITY : check_err(o, f32, out, nq * c->Dv), tol);
        check_report(st, kt->isa, what, "lse", rc ? INFINITY : check_err(l, f32, lse, nq), tol);
        check_report(st, kt->isa, what, "k_cache", rc ? INFINITY : check_err(gkc, f32, kc, nkc * c->D), copy_tol);
        check_report(st, kt->isa, what, "v_cache", rc ? INFINITY : check_err(gvc, f32, vc, nkc * c->Dv), copy_tol);
        if (f32) { free(qq); free(kk); free(vv); }
        free(gkc); free(gvc); free(o); free(l);
    }
    free(lens); free(table); free(q); free(kn); free(vn); free(kc0); free(vc0); free(kc); free(vc);
    free(out); free(lse);
}

void check_kvcache(const seqcore_kernel_table *kt, check_stats *st) {
    const kvc_case cases[] = {
        /* name, B, Hq, Hkv, Sq, D, Dv, S_new, rows, max_blocks, left, right, softcap, len0 */
        {"dense B3 H4/kv2 Sq1 D24 Dv20 decode", 3, 4, 2, 1, 24, 20, 1, 70, 0, -1, 0, 0, 5},
        {"dense B3 Sq7 S_new5 causal", 3, 4, 2, 7, 24, 20, 5, 70, 0, -1, 0, 0, 0},
        {"dense B2 Sq1 no new keys, a full cache", 2, 2, 1, 1, 16, 16, 0, 40, 0, -1, -1, 0, 40},
        {"paged B4 bs16 H4/kv1 Sq1 S_new1", 4, 4, 1, 1, 32, 32, 1, 16, 5, -1, 0, 0, 11},
        {"paged B3 bs32 Sq7 S_new5 window (9, 2) softcap 3", 3, 4, 2, 7, 16, 24, 5, 32, 3, 9, 2, 3, 20},
        {"paged B2 bs16 Sq20 (row tiles) causal", 2, 8, 2, 20, 8, 8, 3, 16, 4, -1, 0, 0, 30},
        {"dense B1 H4/kv1 Sq1 D64 2000 keys (split)", 1, 4, 1, 1, 64, 64, 1, 2048, 0, -1, 0, 0, 1999},
        {"paged B1 bs64 D64 1500 keys window (700, 0) (split)", 1, 4, 1, 1, 64, 48, 2, 64, 24, 700, 0, 0, 1500},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(kt, st, &cases[i], 300 + i);
}
