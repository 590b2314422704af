/* Attention forward and backward of each level against a scalar reference in double:
 * dense and packed (varlen) layouts, GQA, causal / window bands, softcap, bias, odd head
 * dims, a single query, keys none of a query sees; dropout (the reference draws its mask
 * with philox.h's plain ten rounds, which are first checked against Random123's known
 * answers). */
#include "check.h"
#include "../philox.h"

typedef struct {
    const char *name;
    int64_t n_seq, Hq, Hkv, Sq, Sk, D, Dv;
    int64_t left, right;  /* band (-1: unbounded) */
    double softcap;
    int bias;              /* dense only: a full (B, Hq, Sq, Sk) additive bias */
    const int32_t *cu_q, *cu_k;  /* varlen */
    double dropout_p;            /* 0: none */
    uint64_t seed;
} attn_case;

/* seqcore.reference.dropout.threshold */
static uint32_t dropout_threshold_of(double p) {
    double t = floor(p * 2147483648.0);
    return t > 2147483647.0 ? 2147483647u : (uint32_t)t;
}

/* Row of (sequence s, head h, position i) in a (rows, width) array, dense or packed. */
static int64_t row_of(const int32_t *cu, int64_t S, int64_t H, int64_t s, int64_t h, int64_t i) {
    return cu ? ((int64_t)cu[s] + i) * H + h : (s * H + h) * S + i;
}

static int64_t len_of(const int32_t *cu, int64_t S, int64_t s) {
    return cu ? (int64_t)cu[s + 1] - cu[s] : S;
}

static int visible(const attn_case *c, int64_t i, int64_t j, int64_t sq, int64_t sk) {
    int64_t diag = i + sk - sq;
    return (c->left < 0 || j >= diag - c->left) && (c->right < 0 || j <= diag + c->right);
}

/* Forward and (dout given) backward of one case, all in double. */
static void ref_attention(const attn_case *c, const double *q, const double *k, const double *v,
                          const double *bias, const double *dout, double *out, double *lse,
                          double *dq, double *dk, double *dv, double *dbias) {
    int64_t D = c->D, Dv = c->Dv, group = c->Hq / c->Hkv;
    double scale = 1 / sqrt((double)D);
    double *s = malloc((size_t)(c->Sk + 1) * sizeof(double));
    double *raw = malloc((size_t)(c->Sk + 1) * sizeof(double));
    double *f = malloc((size_t)(c->Sk + 1) * sizeof(double));  /* dropout factor: 0 or 1/(1-p) */
    dropout_gen gen = dropout_gen_of(c->seed, dropout_threshold_of(c->dropout_p));
    if (dq) {
        int64_t nq = c->cu_q ? (int64_t)c->cu_q[c->n_seq] * c->Hq : c->n_seq * c->Hq * c->Sq;
        int64_t nk = c->cu_k ? (int64_t)c->cu_k[c->n_seq] * c->Hkv : c->n_seq * c->Hkv * c->Sk;
        memset(dq, 0, (size_t)(nq * D + 1) * 8);
        memset(dk, 0, (size_t)(nk * D + 1) * 8);
        memset(dv, 0, (size_t)(nk * Dv + 1) * 8);
    }
    for (int64_t sq = 0; sq < c->n_seq; sq++)
        for (int64_t h = 0; h < c->Hq; h++) {
            int64_t Lq = len_of(c->cu_q, c->Sq, sq), Lk = len_of(c->cu_k, c->Sk, sq);
            for (int64_t i = 0; i < Lq; i++) {
                int64_t qi = row_of(c->cu_q, c->Sq, c->Hq, sq, h, i);
                double m = -INFINITY;
                for (int64_t j = 0; j < Lk; j++) {
                    int64_t kj = row_of(c->cu_k, c->Sk, c->Hkv, sq, h / group, j);
                    double acc = 0;
                    for (int64_t d = 0; d < D; d++) acc += q[qi * D + d] * k[kj * D + d];
                    raw[j] = scale * acc;
                    double x = c->softcap > 0 ? c->softcap * tanh(raw[j] / c->softcap) : raw[j];
                    if (bias) x += bias[((sq * c->Hq + h) * c->Sq + i) * c->Sk + j];
                    s[j] = visible(c, i, j, Lq, Lk) ? x : -INFINITY;
                    if (s[j] > m) m = s[j];
                }
                double l = 0;
                for (int64_t j = 0; j < Lk; j++) {
                    s[j] = m == -INFINITY ? 0 : exp(s[j] - m);  /* s <- unnormalized P */
                    l += s[j];
                    f[j] = !c->dropout_p ? 1
                           : dropout_keep(&gen, (uint32_t)(sq * c->Hq + h), (uint32_t)i, (uint32_t)j)
                               ? 1 / (1 - c->dropout_p) : 0;
                }
                lse[qi] = l > 0 ? m + log(l) : -INFINITY;
                for (int64_t e = 0; e < Dv; e++) {
                    double acc = 0;
                    for (int64_t j = 0; j < Lk; j++)
                        acc += s[j] * f[j] * v[row_of(c->cu_k, c->Sk, c->Hkv, sq, h / group, j) * Dv + e];
                    out[qi * Dv + e] = l > 0 ? acc / l : 0;
                }
                if (!dq) continue;
                /* backward: dP = dout . v, delta = sum P dP, dS = P (dP - delta) */
                double delta = 0;
                for (int64_t e = 0; e < Dv; e++) delta += dout[qi * Dv + e] * out[qi * Dv + e];
                for (int64_t j = 0; j < Lk; j++) {
                    int64_t kj = row_of(c->cu_k, c->Sk, c->Hkv, sq, h / group, j);
                    double p = l > 0 ? s[j] / l : 0, dp = 0;
                    for (int64_t e = 0; e < Dv; e++) dp += dout[qi * Dv + e] * v[kj * Dv + e];
                    double ds = p * (dp * f[j] - delta);
                    if (dbias) dbias[((sq * c->Hq + h) * c->Sq + i) * c->Sk + j] = ds;
                    if (c->softcap > 0) {
                        double t = tanh(raw[j] / c->softcap);
                        ds *= 1 - t * t;
                    }
                    for (int64_t d = 0; d < D; d++) {
                        dq[qi * D + d] += scale * ds * k[kj * D + d];
                        dk[kj * D + d] += scale * ds * q[qi * D + d];
                    }
                    for (int64_t e = 0; e < Dv; e++) dv[kj * Dv + e] += p * f[j] * dout[qi * Dv + e];
                }
            }
        }
    free(s);
    free(raw);
    free(f);
}

static void run_case(const seqcore_kernel_table *kt, check_stats *st, const attn_case *c,
                     uint64_t seed) {
    int64_t nq = c->cu_q ? (int64_t)c->cu_q[c->n_seq] * c->Hq : c->n_seq * c->Hq * c->Sq;
    int64_t nk = c->cu_k ? (int64_t)c->cu_k[c->n_seq] * c->Hkv : c->n_seq * c->Hkv * c->Sk;
    int64_t nb = c->bias ? c->n_seq * c->Hq * c->Sq * c->Sk : 0;
    double *q = check_randn(&seed, nq * c->D, 1.5), *k = check_randn(&seed, nk * c->D, 1.5);
    double *v = check_randn(&seed, nk * c->Dv, 1), *dout = check_randn(&seed, nq * c->Dv, 1);
    double *bias = c->bias ? check_randn(&seed, nb, 2) : NULL;
    double *out = malloc((size_t)(nq * c->Dv + 1) * 8), *lse = malloc((size_t)(nq + 1) * 8);
    double *dq = malloc((size_t)(nq * c->D + 1) * 8), *dk = malloc((size_t)(nk * c->D + 1) * 8);
    double *dv = malloc((size_t)(nk * c->Dv + 1) * 8);
    double *dbias = c->bias ? calloc((size_t)nb + 1, 8) : NULL;
    ref_attention(c, q, k, v, bias, dout, out, lse, dq, dk, dv, dbias);
    seqcore_attn_problem p = {c->n_seq, c->Hq, c->Hkv, c->Sq, c->Sk, c->D, c->Dv, c->cu_q,
                              c->cu_k, 1 / sqrt((double)c->D), c->softcap, c->left, c->right,
                              {c->Sq * c->Sk * c->Hq, c->Sq * c->Sk, c->Sk, 1}, c->seed,
                              dropout_threshold_of(c->dropout_p),
                              c->dropout_p ? 1 / (1 - c->dropout_p) : 0};
    for (int f32 = 1; f32 >= 0; f32--) {
        size_t es = f32 ? 4 : 8;
        void *qq = f32 ? (void *)check_to_f32(q, nq * c->D) : q;
        void *kk = f32 ? (void *)check_to_f32(k, nk * c->D) : k;
        void *vv = f32 ? (void *)check_to_f32(v, nk * c->Dv) : v;
        void *dd = f32 ? (void *)check_to_f32(dout, nq * c->Dv) : dout;
        void *bb = !bias ? NULL : f32 ? (void *)check_to_f32(bias, nb) : bias;
        void *o = check_poisoned(nq * c->Dv, es), *l = check_poisoned(nq, es);
        void *gq = check_poisoned(nq * c->D, es), *gk = check_poisoned(nk * c->D, es);
        void *gv = check_poisoned(nk * c->Dv, es), *gb = bias ? check_poisoned(nb, es) : NULL;
        int fs = f32 ? kt->attention_fwd_f32(&p, qq, kk, vv, bb, o, l)
                     : kt->attention_fwd_f64(&p, qq, kk, vv, bb, o, l);
        int bs = fs ? fs : f32 ? kt->attention_bwd_f32(&p, dd, qq, kk, vv, bb, o, l, gq, gk, gv, gb)
                               : kt->attention_bwd_f64(&p, dd, qq, kk, vv, bb, o, l, gq, gk, gv, gb);
        char what[96];
        snprintf(what, sizeof what, "attention %s %s", c->name, f32 ? "f32" : "f64");
        double tol = f32 ? TOL_F32 : TOL_F64, gtol = f32 ? GRAD_TOL_F32 : GRAD_TOL_F64;
        check_report(st, kt->isa, what, "out", fs ? INFINITY : check_err(o, f32, out, nq * c->Dv), tol);
        check_report(st, kt->isa, what, "lse", fs ? INFINITY : check_err(l, f32, lse, nq), tol);
        check_report(st, kt->isa, what, "dq", bs ? INFINITY : check_err(gq, f32, dq, nq * c->D), gtol);
        check_report(st, kt->isa, what, "dk", bs ? INFINITY : check_err(gk, f32, dk, nk * c->D), gtol);
        check_report(st, kt->isa, what, "dv", bs ? INFINITY : check_err(gv, f32, dv, nk * c->Dv), gtol);
        if (bias)
            check_report(st, kt->isa, what, "dbias", bs ? INFINITY : check_err(gb, f32, dbias, nb), gtol);
        if (f32) { free(qq); free(kk); free(vv); free(dd); free(bb); }
        free(o); free(l); free(gq); free(gk); free(gv); free(gb);
    }
    free(q); free(k); free(v); free(dout); free(bias); free(out); free(lse);
    free(dq); free(dk); free(dv); free(dbias);
}

/* philox.h: Random123's known answers for Philox-4x32-10 (kat_vectors), and the split form
 * the kernels use against the ten rounds, over a grid of counters and seeds. */
static void check_philox(const char *isa, check_stats *st) {
    uint32_t c[4] = {0, 0, 0, 0};
    philox4x32_10(c, 0, 0);
    int ok = c[0] == 0x6627e8d5u && c[1] == 0xe169c58du && c[2] == 0xbc57ac4cu && c[3] == 0x9b00dbd8u;
    check_report(st, isa, "philox4x32-10 known answer: counter 0, key 0", "words", ok ? 0 : INFINITY, 0);
    uint32_t d[4] = {0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u};
    philox4x32_10(d, 0xa4093822u, 0x299f31d0u);
    ok = d[0] == 0xd16cfe09u && d[1] == 0x94fdccebu && d[2] == 0x5001e420u && d[3] == 0x24126ea1u;
    check_report(st, isa, "philox4x32-10 known answer: pi digits", "words", ok ? 0 : INFINITY, 0);
    /* dropout_word0 is the definition, word 0 at counter (j, i, g, 0) keyed by the seed:
     * test_dropout.py checks seqcore.reference.dropout the same way, and the attention cases
     * below hold the kernels to that */
    uint32_t e[4] = {0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0};
    philox4x32_10(e, 0xa4093822u, 0x299f31d0u);
    dropout_gen gen = dropout_gen_of(0x299f31d0a4093822ull, 0);
    ok = dropout_word0(&gen, 0x13198a2eu, 0x85a308d3u, 0x243f6a88u) == e[0];
    check_report(st, isa, "dropout: word 0 at counter (j, i, g, 0) keyed by the seed", "word0",
                 ok ? 0 : INFINITY, 0);
    const uint64_t seeds[] = {0, 7, 0x0123456789abcdefull, 0xffffffffffffffffull};
    const uint32_t heads[] = {0, 1, 37, 0xfffffffeu}, starts[] = {0, 64, 0xffffffc0u};
    for (int a = 0; a < 4; a++)
        for (int b = 0; b < 4; b++)
            for (int e = 0; e < 3; e++) {
                gen = dropout_gen_of(seeds[a], 1u << 30);
                dropout_keys keys;
                dropout_keys_fill(&gen, heads[b], starts[e], DROPOUT_KEYS, &keys);
                for (uint32_t i = 0; i < 70; i += 3) {
                    dropout_row row = dropout_row_of(&gen, heads[b], starts[e] + i);
                    for (int t = 0; t < DROPOUT_KEYS; t++)
                        ok &= dropout_word0_split(&gen, &keys, t, row) ==
                              dropout_word0(&gen, heads[b], starts[e] + i, starts[e] + (uint32_t)t);
                }
            }
    check_report(st, isa, "dropout: split rounds equal the ten rounds", "word0", ok ? 0 : INFINITY, 0);
}

void check_attention(const seqcore_kernel_table *kt, check_stats *st) {
    check_philox(kt->isa, st);
    static const int32_t cu_q[] = {0, 5, 5, 40, 41}, cu_k[] = {0, 7, 12, 80, 80};
    const attn_case cases[] = {
        /* name, n_seq, Hq, Hkv, Sq, Sk, D, Dv, left, right, softcap, bias, cu */
        {"B2 H4/kv2 Sq37 Sk53 D24 Dv20", 2, 4, 2, 37, 53, 24, 20, -1, -1, 0, 0, NULL, NULL},
        {"... causal", 2, 4, 2, 37, 53, 24, 20, -1, 0, 0, 0, NULL, NULL},
        {"... window (8, 3)", 2, 4, 2, 37, 53, 24, 20, 8, 3, 0, 0, NULL, NULL},
        {"... softcap 5 + bias", 2, 4, 2, 37, 53, 24, 20, -1, -1, 5, 1, NULL, NULL},
        {"... causal + bias", 2, 4, 2, 37, 53, 24, 20, -1, 0, 0, 1, NULL, NULL},
        {"B1 H2 S130 D64 (several key tiles)", 1, 2, 2, 130, 130, 64, 64, -1, -1, 0, 0, NULL, NULL},
        {"B1 H2 S200 D64 causal", 1, 2, 2, 200, 200, 64, 64, -1, 0, 0, 0, NULL, NULL},
        {"B3 H2 Sq1 Sk70 D32 (decode)", 3, 2, 1, 1, 70, 32, 32, -1, 0, 0, 0, NULL, NULL},
        {"Sq9 Sk4 causal (rows that see no key)", 1, 2, 2, 9, 4, 16, 16, -1, 0, 0, 0, NULL, NULL},
        {"Sk0 (no keys at all)", 1, 2, 2, 3, 0, 8, 8, -1, -1, 0, 0, NULL, NULL},
        {"D256 Dv256", 1, 1, 1, 5, 9, 256, 256, -1, -1, 0, 0, NULL, NULL},
        {"B1 H2 S100 D128 causal (shorter key tiles)", 1, 2, 2, 100, 100, 128, 128, -1, 0, 0, 0, NULL, NULL},
        {"D1 Dv3", 1, 3, 1, 6, 6, 1, 3, -1, -1, 0, 0, NULL, NULL},
        {"varlen 4 seqs (one empty)", 4, 4, 2, 35, 68, 16, 24, -1, -1, 0, 0, cu_q, cu_k},
        {"varlen causal + softcap", 4, 4, 2, 35, 68, 16, 24, -1, 0, 3, 0, cu_q, cu_k},
        /* dropout: the fast forward (float, no bias or softcap), the general one, backward */
        {"dropout 0.17 B2 H4/kv2 Sq37 Sk53 D24 Dv20", 2, 4, 2, 37, 53, 24, 20, -1, -1, 0, 0, NULL, NULL, 0.17, 0x0123456789abcdefull},
        {"dropout 0.5 ... causal", 2, 4, 2, 37, 53, 24, 20, -1, 0, 0, 0, NULL, NULL, 0.5, 2024},
        {"dropout 0.17 ... window (8, 3)", 2, 4, 2, 37, 53, 24, 20, 8, 3, 0, 0, NULL, NULL, 0.17, 5},
        {"dropout 0.5 ... softcap 5 + bias", 2, 4, 2, 37, 53, 24, 20, -1, -1, 5, 1, NULL, NULL, 0.5, 0xfedcba9876543210ull},
        {"dropout 0.17 B1 H2 S200 D64 causal", 1, 2, 2, 200, 200, 64, 64, -1, 0, 0, 0, NULL, NULL, 0.17, 99},
        {"dropout 0.5 B1 H2 S130 D64 + bias", 1, 2, 2, 130, 130, 64, 64, -1, -1, 0, 1, NULL, NULL, 0.5, 1ull << 40},
        {"dropout 0.17 B3 H2 Sq1 Sk70 D32 (decode)", 3, 2, 1, 1, 70, 32, 32, -1, 0, 0, 0, NULL, NULL, 0.17, 3},
        {"dropout 0.5 Sq9 Sk4 causal (rows that see no key)", 1, 2, 2, 9, 4, 16, 16, -1, 0, 0, 0, NULL, NULL, 0.5, 4},
        {"dropout 0.17 B1 H2 S100 D128 causal", 1, 2, 2, 100, 100, 128, 128, -1, 0, 0, 0, NULL, NULL, 0.17, 6},
        {"dropout 0.5 D1 Dv3", 1, 3, 1, 6, 6, 1, 3, -1, -1, 0, 0, NULL, NULL, 0.5, 8},
        {"dropout 0.17 varlen 4 seqs (one empty)", 4, 4, 2, 35, 68, 16, 24, -1, -1, 0, 0, cu_q, cu_k, 0.17, 0x0123456789abcdefull},
        {"dropout 0.5 varlen causal + softcap", 4, 4, 2, 35, 68, 16, 24, -1, 0, 3, 0, cu_q, cu_k, 0.5, 77},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_case(kt, st, &cases[i], 100 + i);
}
