/* LSTM, GRU and Elman (tanh, relu) forward and backward of each level against a scalar
 * reference in double (BPTT written out): lengths, reverse, missing biases and states,
 * one-step cells, the small-batch (in place) and batch-tiled steps, odd sizes. */
#include "check.h"

enum { LSTM = 0, GRU = 1, RNN_TANH = 2, RNN_RELU = 3 };

static const char *const cell_names[] = {"lstm", "gru", "rnn_tanh", "rnn_relu"};
static const int64_t cell_gates[] = {4, 3, 1, 1}, cell_ws[] = {5, 4, 1, 1};

typedef struct {
    const char *name;
    int cell;
    int64_t T, B, I, H;
    const int64_t *lengths;
    int reverse, biases, states;
} rnn_case;

static double sigm(double x) { return 1 / (1 + exp(-x)); }

static int64_t len_b(const rnn_case *c, int64_t b) { return c->lengths ? c->lengths[b] : c->T; }

static int64_t time_at(const rnn_case *c, int64_t b, int64_t s) {
    return c->reverse ? len_b(c, b) - 1 - s : s;
}

/* gates g (G*H) = w_ih x_t + b_ih + w_hh h + b_hh, the h part kept apart in gh. */
static void pre(const rnn_case *c, const double *w_ih, const double *w_hh, const double *b_ih,
                const double *b_hh, const double *x, const double *h, double *gx, double *gh) {
    int64_t G = cell_gates[c->cell], GH = G * c->H;
    for (int64_t r = 0; r < GH; r++) {
        double a = b_ih ? b_ih[r] : 0, e = b_hh ? b_hh[r] : 0;
        for (int64_t i = 0; i < c->I; i++) a += w_ih[r * c->I + i] * x[i];
        for (int64_t k = 0; k < c->H; k++) e += w_hh[r * c->H + k] * h[k];
        gx[r] = a, gh[r] = e;
    }
}

/* Forward (y, h_n, c_n) and backward (every gradient) of one element at a time. */
static void ref_rnn(const rnn_case *c, const double *x, const double *w_ih, const double *w_hh,
                    const double *b_ih, const double *b_hh, const double *h0, const double *c0,
                    const double *dy, const double *dh_n, const double *dc_n, double *y,
                    double *h_n, double *c_n, double *dx, double *dw_ih, double *dw_hh,
                    double *db_ih, double *db_hh, double *dh0, double *dc0) {
    int64_t T = c->T, B = c->B, I = c->I, H = c->H, G = cell_gates[c->cell], GH = G * H;
    memset(y, 0, (size_t)(T * B * H + 1) * 8);
    memset(dx, 0, (size_t)(T * B * I + 1) * 8);
    memset(dw_ih, 0, (size_t)(GH * I) * 8);
    memset(dw_hh, 0, (size_t)(GH * H) * 8);
    memset(db_ih, 0, (size_t)GH * 8);
    memset(db_hh, 0, (size_t)GH * 8);
    double *hs = calloc((size_t)((T + 1) * H), 8), *cs = calloc((size_t)((T + 1) * H), 8);
    double *gxs = calloc((size_t)(T * GH + 1), 8), *ghs = calloc((size_t)(T * GH + 1), 8);
    double *dh = malloc((size_t)H * 8), *dc = malloc((size_t)H * 8), *da = malloc((size_t)GH * 8);
    double *dah = malloc((size_t)GH * 8), *dhn = malloc((size_t)H * 8);
    for (int64_t b = 0; b < B; b++) {
        int64_t L = len_b(c, b);
        for (int64_t u = 0; u < H; u++) {
            hs[u] = h0 ? h0[b * H + u] : 0;
            cs[u] = c0 ? c0[b * H + u] : 0;
        }
        for (int64_t s = 0; s < L; s++) {  /* hs[s], cs[s]: the state before step s */
            int64_t t = time_at(c, b, s);
            double *gx = gxs + s * GH, *gh = ghs + s * GH, *hp = hs + s * H, *cp = cs + s * H;
            pre(c, w_ih, w_hh, b_ih, b_hh, x + (t * B + b) * I, hp, gx, gh);
            for (int64_t u = 0; u < H; u++) {
                double hn, cn = 0;
                if (c->cell == LSTM) {
                    double gi = sigm(gx[u] + gh[u]), gf = sigm(gx[H + u] + gh[H + u]);
                    double gg = tanh(gx[2 * H + u] + gh[2 * H + u]);
                    double go = sigm(gx[3 * H + u] + gh[3 * H + u]);
                    cn = gf * cp[u] + gi * gg;
                    hn = go * tanh(cn);
                } else if (c->cell == GRU) {
                    double r = sigm(gx[u] + gh[u]), z = sigm(gx[H + u] + gh[H + u]);
                    double n = tanh(gx[2 * H + u] + r * gh[2 * H + u]);
                    hn = (1 - z) * n + z * hp[u];
                } else {
                    double a = gx[u] + gh[u];
                    hn = c->cell == RNN_RELU ? (a > 0 ? a : 0) : tanh(a);
                }
                hs[(s + 1) * H + u] = hn, cs[(s + 1) * H + u] = cn;
                y[(t * B + b) * H + u] = hn;
            }
        }
        for (int64_t u = 0; u < H; u++) {
            h_n[b * H + u] = hs[L * H + u];
            if (c_n) c_n[b * H + u] = cs[L * H + u];
            dh[u] = dh_n ? dh_n[b * H + u] : 0;
            dc[u] = dc_n ? dc_n[b * H + u] : 0;
        }
        for (int64_t s = L - 1; s >= 0; s--) {
            int64_t t = time_at(c, b, s);
            double *gx = gxs + s * GH, *gh = ghs + s * GH, *hp = hs + s * H, *cp = cs + s * H;
            for (int64_t u = 0; u < H; u++) {
                double dht = dh[u] + (dy ? dy[(t * B + b) * H + u] : 0);
                if (c->cell == LSTM) {
                    double gi = sigm(gx[u] + gh[u]), gf = sigm(gx[H + u] + gh[H + u]);
                    double gg = tanh(gx[2 * H + u] + gh[2 * H + u]);
                    double go = sigm(gx[3 * H + u] + gh[3 * H + u]);
                    double tc = tanh(cs[(s + 1) * H + u]);
                    double dct = dc[u] + dht * go * (1 - tc * tc);
                    da[u] = dct * gg * gi * (1 - gi);
                    da[H + u] = dct * cp[u] * gf * (1 - gf);
                    da[2 * H + u] = dct * gi * (1 - gg * gg);
                    da[3 * H + u] = dht * tc * go * (1 - go);
                    for (int g = 0; g < 4; g++) dah[g * H + u] = da[g * H + u];
                    dc[u] = dct * gf;
                    dhn[u] = 0;
                } else if (c->cell == GRU) {
                    double r = sigm(gx[u] + gh[u]), z = sigm(gx[H + u] + gh[H + u]);
                    double n = tanh(gx[2 * H + u] + r * gh[2 * H + u]);
                    double dan = dht * (1 - z) * (1 - n * n);
                    da[u] = dah[u] = dan * gh[2 * H + u] * r * (1 - r);
                    da[H + u] = dah[H + u] = dht * (hp[u] - n) * z * (1 - z);
                    da[2 * H + u] = dan;
                    dah[2 * H + u] = dan * r;
                    dhn[u] = dht * z;
                } else {  /* the derivative of the activation at its input a */
                    double a = gx[u] + gh[u], t = tanh(a);
                    da[u] = dah[u] = dht * (c->cell == RNN_RELU ? (a > 0) : 1 - t * t);
                    dhn[u] = 0;
                }
            }
            const double *xt = x + (t * B + b) * I;
            for (int64_t r = 0; r < GH; r++) {
                for (int64_t i = 0; i < I; i++) {
                    dx[(t * B + b) * I + i] += da[r] * w_ih[r * I + i];
                    dw_ih[r * I + i] += da[r] * xt[i];
                }
                for (int64_t k = 0; k < H; k++) {
                    dw_hh[r * H + k] += dah[r] * hp[k];
                    dhn[k] += dah[r] * w_hh[r * H + k];
                }
                db_ih[r] += da[r];
                db_hh[r] += dah[r];
            }
            memcpy(dh, dhn, (size_t)H * 8);
        }
        for (int64_t u = 0; u < H; u++) {
            dh0[b * H + u] = dh[u];
            if (dc0) dc0[b * H + u] = dc[u];
        }
    }
    free(hs); free(cs); free(gxs); free(ghs); free(dh); free(dc); free(da); free(dah); free(dhn);
}

static void *cvt(int f32, double *a, int64_t n) { return !a ? NULL : f32 ? (void *)check_to_f32(a, n) : a; }

static void run_case(const seqcore_kernel_table *kt, check_stats *st, const rnn_case *c,
                     uint64_t seed) {
    int64_t T = c->T, B = c->B, I = c->I, H = c->H, G = cell_gates[c->cell], GH = G * H;
    int lstm = c->cell == LSTM, relu = c->cell == RNN_RELU;
    double w = 1 / sqrt((double)H);
    double *x = check_randn(&seed, T * B * I, 1), *w_ih = check_randn(&seed, GH * I, w);
    double *w_hh = check_randn(&seed, GH * H, w);
    double *b_ih = c->biases ? check_randn(&seed, GH, w) : NULL;
    double *b_hh = c->biases ? check_randn(&seed, GH, w) : NULL;
    double *h0 = c->states ? check_randn(&seed, B * H, 1) : NULL;
    double *c0 = c->states && lstm ? check_randn(&seed, B * H, 1) : NULL;
    double *dy = check_randn(&seed, T * B * H, 1), *dh_n = check_randn(&seed, B * H, 1);
    double *dc_n = lstm ? check_randn(&seed, B * H, 1) : NULL;
    double *y = malloc((size_t)(T * B * H + 1) * 8), *h_n = malloc((size_t)(B * H + 1) * 8);
    double *c_n = lstm ? malloc((size_t)(B * H + 1) * 8) : NULL;
    double *dx = malloc((size_t)(T * B * I + 1) * 8), *dw_ih = malloc((size_t)GH * I * 8);
    double *dw_hh = malloc((size_t)GH * H * 8), *db_ih = malloc((size_t)GH * 8);
    double *db_hh = malloc((size_t)GH * 8), *dh0 = malloc((size_t)(B * H + 1) * 8);
    double *dc0 = lstm ? malloc((size_t)(B * H + 1) * 8) : NULL;
    ref_rnn(c, x, w_ih, w_hh, b_ih, b_hh, h0, c0, dy, dh_n, dc_n, y, h_n, c_n, dx, dw_ih, dw_hh,
            db_ih, db_hh, dh0, dc0);
    for (int f32 = 1; f32 >= 0; f32--) {
        size_t es = f32 ? 4 : 8;
        int64_t nws = T * B * cell_ws[c->cell] * H;
        void *X = cvt(f32, x, T * B * I), *Wi = cvt(f32, w_ih, GH * I), *Wh = cvt(f32, w_hh, GH * H);
        void *Bi = cvt(f32, b_ih, GH), *Bh = cvt(f32, b_hh, GH), *H0 = cvt(f32, h0, B * H);
        void *C0 = cvt(f32, c0, B * H), *DY = cvt(f32, dy, T * B * H), *DH = cvt(f32, dh_n, B * H);
        void *DC = cvt(f32, dc_n, B * H);
        void *Y = check_poisoned(T * B * H, es), *HN = check_poisoned(B * H, es);
        void *CN = check_poisoned(B * H, es), *WS = check_poisoned(nws, es);
        void *gx = check_poisoned(T * B * I, es), *gwi = check_poisoned(GH * I, es);
        void *gwh = check_poisoned(GH * H, es), *gbi = check_poisoned(GH, es);
        void *gbh = check_poisoned(GH, es), *gh0 = check_poisoned(B * H, es);
        void *gc0 = check_poisoned(B * H, es);
        int fs, bs;
        if (lstm) {
            fs = f32 ? kt->lstm_fwd_f32(T, B, I, H, X, Wi, Wh, Bi, Bh, H0, C0, c->lengths, c->reverse, Y, HN, CN, WS)
                     : kt->lstm_fwd_f64(T, B, I, H, X, Wi, Wh, Bi, Bh, H0, C0, c->lengths, c->reverse, Y, HN, CN, WS);
            bs = fs ? fs : f32 ? kt->lstm_bwd_f32(T, B, I, H, DY, DH, DC, X, Wi, Wh, H0, C0, c->lengths, c->reverse, Y, WS, gx, gwi, gwh, gbi, gbh, gh0, gc0)
                               : kt->lstm_bwd_f64(T, B, I, H, DY, DH, DC, X, Wi, Wh, H0, C0, c->lengths, c->reverse, Y, WS, gx, gwi, gwh, gbi, gbh, gh0, gc0);
        } else if (c->cell == GRU) {
            fs = f32 ? kt->gru_fwd_f32(T, B, I, H, X, Wi, Wh, Bi, Bh, H0, c->lengths, c->reverse, Y, HN, WS)
                     : kt->gru_fwd_f64(T, B, I, H, X, Wi, Wh, Bi, Bh, H0, c->lengths, c->reverse, Y, HN, WS);
            bs = fs ? fs : f32 ? kt->gru_bwd_f32(T, B, I, H, DY, DH, X, Wi, Wh, H0, c->lengths, c->reverse, Y, WS, gx, gwi, gwh, gbi, gbh, gh0)
                               : kt->gru_bwd_f64(T, B, I, H, DY, DH, X, Wi, Wh, H0, c->lengths, c->reverse, Y, WS, gx, gwi, gwh, gbi, gbh, gh0);
        } else {
            fs = f32 ? kt->rnn_fwd_f32(T, B, I, H, X, Wi, Wh, Bi, Bh, H0, c->lengths, c->reverse, relu, Y, HN, WS)
                     : kt->rnn_fwd_f64(T, B, I, H, X, Wi, Wh, Bi, Bh, H0, c->lengths, c->reverse, relu, Y, HN, WS);
            bs = fs ? fs : f32 ? kt->rnn_bwd_f32(T, B, I, H, DY, DH, X, Wi, Wh, H0, c->lengths, c->reverse, relu, Y, WS, gx, gwi, gwh, gbi, gbh, gh0)
                               : kt->rnn_bwd_f64(T, B, I, H, DY, DH, X, Wi, Wh, H0, c->lengths, c->reverse, relu, Y, WS, gx, gwi, gwh, gbi, gbh, gh0);
        }
        char what[96];
        snprintf(what, sizeof what, "%s %s %s", cell_names[c->cell], c->name, f32 ? "f32" : "f64");
        double tol = f32 ? TOL_F32 : TOL_F64, gtol = f32 ? GRAD_TOL_F32 : GRAD_TOL_F64;
#define CMP(out, got, want, n, t) \
    check_report(st, kt->isa, what, out, (fs || bs) ? INFINITY : check_err(got, f32, want, n), t)
        CMP("y", Y, y, T * B * H, tol);
        CMP("h_n", HN, h_n, B * H, tol);
        if (lstm) CMP("c_n", CN, c_n, B * H, tol);
        CMP("dx", gx, dx, T * B * I, gtol);
        CMP("dw_ih", gwi, dw_ih, GH * I, gtol);
        CMP("dw_hh", gwh, dw_hh, GH * H, gtol);
        CMP("db_ih", gbi, db_ih, GH, gtol);
        CMP("db_hh", gbh, db_hh, GH, gtol);
        CMP("dh0", gh0, dh0, B * H, gtol);
        if (lstm) CMP("dc0", gc0, dc0, B * H, gtol);
#undef CMP
        if (f32) { free(X); free(Wi); free(Wh); free(Bi); free(Bh); free(H0); free(C0); free(DY); free(DH); free(DC); }
        free(Y); free(HN); free(CN); free(WS); free(gx); free(gwi); free(gwh); free(gbi); free(gbh);
        free(gh0); free(gc0);
    }
    free(x); free(w_ih); free(w_hh); free(b_ih); free(b_hh); free(h0); free(c0); free(dy);
    free(dh_n); free(dc_n); free(y); free(h_n); free(c_n); free(dx); free(dw_ih); free(dw_hh);
    free(db_ih); free(db_hh); free(dh0); free(dc0);
}

void check_recurrent(const seqcore_kernel_table *kt, check_stats *st) {
    static const int64_t len3[] = {5, 0, 2}, len20[] = {9, 1, 9, 0, 4, 9, 9, 2, 7, 9,
                                                        3, 9, 8, 9, 0, 6, 9, 5, 9, 1};
    for (int cell = LSTM; cell <= RNN_RELU; cell++) {
        const rnn_case cases[] = {
            /* name, cell, T, B, I, H, lengths, reverse, biases, states */
            {"T5 B3 I7 H10", cell, 5, 3, 7, 10, NULL, 0, 1, 1},
            {"T5 B3 lengths {5,0,2}", cell, 5, 3, 7, 10, len3, 0, 1, 1},
            {"T5 B3 lengths reverse", cell, 5, 3, 7, 10, len3, 1, 1, 1},
            {"no biases or states", cell, 4, 2, 5, 9, NULL, 0, 0, 0},
            {"cell T1 B1 I33 H40", cell, 1, 1, 33, 40, NULL, 0, 1, 1},
            {"T3 B8 I20 H37 (in place, vector tails)", cell, 3, 8, 20, 37, NULL, 1, 1, 1},
            {"T9 B20 I19 H33 lengths (batch-tiled)", cell, 9, 20, 19, 33, len20, 0, 1, 1},
            {"T9 B20 reverse lengths (batch-tiled)", cell, 9, 20, 19, 33, len20, 1, 1, 1},
            {"T0 B2", cell, 0, 2, 3, 4, NULL, 0, 1, 1},
            {"T1 B21 I9 H17 (cells of a batch, in place)", cell, 1, 21, 9, 17, NULL, 0, 1, 1},
            {"T40 B3 I6 H11 (batch-tiled at batch 3)", cell, 40, 3, 6, 11, NULL, 1, 1, 1},
            {"T4 B30 I130 H140 (batch-tiled, k slices)", cell, 4, 30, 130, 140, NULL, 0, 1, 1},
        };
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
            run_case(kt, st, &cases[i], 1000 + 31 * i + cell);
    }
}
