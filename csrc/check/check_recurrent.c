/* LSTM, GRU and Elman (tanh, relu) forward and backward of each level against a scalar
 * reference in double (BPTT written out): lengths, reverse, missing biases and states,
 * one-step cells, the small-batch (in place) and batch-tiled steps, odd sizes; the LSTM
 * with a projection (w_hr, torch's proj_size) on the same grid and a few of its own. */
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
    int64_t P;  /* LSTM: the projection's size (w_hr (P, H)); 0: none */
} rnn_case;

/* h's width: the projection's, or H */
static int64_t width(const rnn_case *c) { return c->P ? c->P : c->H; }

static double sigm(double x) { return 1 / (1 + exp(-x)); }

static int64_t len_b(const rnn_case *c, int64_t b) { return c->lengths ? c->lengths[b] : c->T; }

static int64_t time_at(const rnn_case *c, int64_t b, int64_t s) {
    return c->reverse ? len_b(c, b) - 1 - s : s;
}

/* gates g (G*H) = w_ih x_t + b_ih + w_hh h + b_hh, the h part kept apart in gh. */
static void pre(const rnn_case *c, const double *w_ih, const double *w_hh, const double *b_ih,
                const double *b_hh, const double *x, const double *h, double *gx, double *gh) {
    int64_t G = cell_gates[c->cell], GH = G * c->H, S = width(c);
    for (int64_t r = 0; r < GH; r++) {
        double a = b_ih ? b_ih[r] : 0, e = b_hh ? b_hh[r] : 0;
        for (int64_t i = 0; i < c->I; i++) a += w_ih[r * c->I + i] * x[i];
        for (int64_t k = 0; k < S; k++) e += w_hh[r * S + k] * h[k];
        gx[r] = a, gh[r] = e;
    }
}

/* Forward (y, h_n, c_n) and backward (every gradient) of one element at a time. With a
 * projection h = w_hr u (u the cell's output, H) is S = P wide, else S = H and h = u. */
static void ref_rnn(const rnn_case *c, const double *x, const double *w_ih, const double *w_hh,
                    const double *b_ih, const double *b_hh, const double *w_hr,
                    const double *h0, const double *c0, const double *dy, const double *dh_n,
                    const double *dc_n, double *y, double *h_n, double *c_n, double *dx,
                    double *dw_ih, double *dw_hh, double *db_ih, double *db_hh, double *dw_hr,
                    double *dh0, double *dc0) {
    int64_t T = c->T, B = c->B, I = c->I, H = c->H, G = cell_gates[c->cell], GH = G * H;
    int64_t S = width(c);
    memset(y, 0, (size_t)(T * B * S + 1) * 8);
    memset(dx, 0, (size_t)(T * B * I + 1) * 8);
    memset(dw_ih, 0, (size_t)(GH * I) * 8);
    memset(dw_hh, 0, (size_t)(GH * S) * 8);
    memset(db_ih, 0, (size_t)GH * 8);
    memset(db_hh, 0, (size_t)GH * 8);
    if (dw_hr) memset(dw_hr, 0, (size_t)(S * H) * 8);
    double *hs = calloc((size_t)((T + 1) * S), 8), *cs = calloc((size_t)((T + 1) * H), 8);
    double *us = calloc((size_t)(T * H + 1), 8);
    double *gxs = calloc((size_t)(T * GH + 1), 8), *ghs = calloc((size_t)(T * GH + 1), 8);
    double *dh = malloc((size_t)S * 8), *dc = malloc((size_t)H * 8), *da = malloc((size_t)GH * 8);
    double *dah = malloc((size_t)GH * 8), *dhn = malloc((size_t)S * 8);
    double *dlh = malloc((size_t)S * 8), *du = malloc((size_t)H * 8);
    for (int64_t b = 0; b < B; b++) {
        int64_t L = len_b(c, b);
        for (int64_t k = 0; k < S; k++) hs[k] = h0 ? h0[b * S + k] : 0;
        for (int64_t u = 0; u < H; u++) cs[u] = c0 ? c0[b * H + u] : 0;
        for (int64_t s = 0; s < L; s++) {  /* hs[s], cs[s]: the state before step s */
            int64_t t = time_at(c, b, s);
            double *gx = gxs + s * GH, *gh = ghs + s * GH, *hp = hs + s * S, *cp = cs + s * H;
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
                us[s * H + u] = hn, cs[(s + 1) * H + u] = cn;
            }
            for (int64_t k = 0; k < S; k++) {  /* h = w_hr u, or u */
                double h = 0;
                if (c->P)
                    for (int64_t u = 0; u < H; u++) h += w_hr[k * H + u] * us[s * H + u];
                else
                    h = us[s * H + k];
                hs[(s + 1) * S + k] = h;
                y[(t * B + b) * S + k] = h;
            }
        }
        for (int64_t k = 0; k < S; k++) {
            h_n[b * S + k] = hs[L * S + k];
            dh[k] = dh_n ? dh_n[b * S + k] : 0;
        }
        for (int64_t u = 0; u < H; u++) {
            if (c_n) c_n[b * H + u] = cs[L * H + u];
            dc[u] = dc_n ? dc_n[b * H + u] : 0;
        }
        for (int64_t s = L - 1; s >= 0; s--) {
            int64_t t = time_at(c, b, s);
            double *gx = gxs + s * GH, *gh = ghs + s * GH, *hp = hs + s * S, *cp = cs + s * H;
            for (int64_t k = 0; k < S; k++) dlh[k] = dh[k] + (dy ? dy[(t * B + b) * S + k] : 0);
            for (int64_t u = 0; u < H; u++) {  /* du = w_hr^T dL/dh, dw_hr += dL/dh u^T */
                double d = 0;
                if (c->P)
                    for (int64_t k = 0; k < S; k++) {
                        d += dlh[k] * w_hr[k * H + u];
                        dw_hr[k * H + u] += dlh[k] * us[s * H + u];
                    }
                else
                    d = dlh[u];
                du[u] = d;
            }
            for (int64_t k = 0; k < S; k++) dhn[k] = 0;  /* (GRU adds its direct part) */
            for (int64_t u = 0; u < H; u++) {
                double dht = du[u];  /* (dL/du: dL/dh without a projection) */
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
                }
            }
            const double *xt = x + (t * B + b) * I;
            for (int64_t r = 0; r < GH; r++) {
                for (int64_t i = 0; i < I; i++) {
                    dx[(t * B + b) * I + i] += da[r] * w_ih[r * I + i];
                    dw_ih[r * I + i] += da[r] * xt[i];
                }
                for (int64_t k = 0; k < S; k++) {
                    dw_hh[r * S + k] += dah[r] * hp[k];
                    dhn[k] += dah[r] * w_hh[r * S + k];
                }
                db_ih[r] += da[r];
                db_hh[r] += dah[r];
            }
            memcpy(dh, dhn, (size_t)S * 8);
        }
        for (int64_t k = 0; k < S; k++) dh0[b * S + k] = dh[k];
        for (int64_t u = 0; u < H; u++)
            if (dc0) dc0[b * H + u] = dc[u];
    }
    free(hs); free(cs); free(us); free(gxs); free(ghs); free(dh); free(dc); free(da); free(dah);
    free(dhn); free(dlh); free(du);
}

static void *cvt(int f32, double *a, int64_t n) { return !a ? NULL : f32 ? (void *)check_to_f32(a, n) : a; }

static void run_case(const seqcore_kernel_table *kt, check_stats *st, const rnn_case *c,
                     uint64_t seed) {
    int64_t T = c->T, B = c->B, I = c->I, H = c->H, G = cell_gates[c->cell], GH = G * H;
    int64_t S = width(c), P = c->P;  /* (h's width; the projection's size, 0 without one) */
    int lstm = c->cell == LSTM, relu = c->cell == RNN_RELU;
    double w = 1 / sqrt((double)H);
    double *x = check_randn(&seed, T * B * I, 1), *w_ih = check_randn(&seed, GH * I, w);
    double *w_hh = check_randn(&seed, GH * S, 1 / sqrt((double)S));
    double *w_hr = P ? check_randn(&seed, P * H, w) : NULL;
    double *b_ih = c->biases ? check_randn(&seed, GH, w) : NULL;
    double *b_hh = c->biases ? check_randn(&seed, GH, w) : NULL;
    double *h0 = c->states ? check_randn(&seed, B * S, 1) : NULL;
    double *c0 = c->states && lstm ? check_randn(&seed, B * H, 1) : NULL;
    double *dy = check_randn(&seed, T * B * S, 1), *dh_n = check_randn(&seed, B * S, 1);
    double *dc_n = lstm ? check_randn(&seed, B * H, 1) : NULL;
    double *y = malloc((size_t)(T * B * S + 1) * 8), *h_n = malloc((size_t)(B * S + 1) * 8);
    double *c_n = lstm ? malloc((size_t)(B * H + 1) * 8) : NULL;
    double *dx = malloc((size_t)(T * B * I + 1) * 8), *dw_ih = malloc((size_t)GH * I * 8);
    double *dw_hh = malloc((size_t)GH * S * 8), *db_ih = malloc((size_t)GH * 8);
    double *db_hh = malloc((size_t)GH * 8), *dh0 = malloc((size_t)(B * S + 1) * 8);
    double *dc0 = lstm ? malloc((size_t)(B * H + 1) * 8) : NULL;
    double *dw_hr = P ? malloc((size_t)(P * H) * 8) : NULL;
    ref_rnn(c, x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, dy, dh_n, dc_n, y, h_n, c_n, dx, dw_ih,
            dw_hh, db_ih, db_hh, dw_hr, dh0, dc0);
    for (int f32 = 1; f32 >= 0; f32--) {
        size_t es = f32 ? 4 : 8;
        int64_t nws = T * B * cell_ws[c->cell] * H;
        void *X = cvt(f32, x, T * B * I), *Wi = cvt(f32, w_ih, GH * I), *Wh = cvt(f32, w_hh, GH * S);
        void *Wr = cvt(f32, w_hr, P * H);
        void *Bi = cvt(f32, b_ih, GH), *Bh = cvt(f32, b_hh, GH), *H0 = cvt(f32, h0, B * S);
        void *C0 = cvt(f32, c0, B * H), *DY = cvt(f32, dy, T * B * S), *DH = cvt(f32, dh_n, B * S);
        void *DC = cvt(f32, dc_n, B * H);
        void *Y = check_poisoned(T * B * S, es), *HN = check_poisoned(B * S, es);
        void *CN = check_poisoned(B * H, es), *WS = check_poisoned(nws, es);
        void *gx = check_poisoned(T * B * I, es), *gwi = check_poisoned(GH * I, es);
        void *gwh = check_poisoned(GH * S, es), *gbi = check_poisoned(GH, es);
        void *gbh = check_poisoned(GH, es), *gh0 = check_poisoned(B * S, es);
        void *gc0 = check_poisoned(B * H, es), *gwr = check_poisoned(P * H, es);
        int fs, bs;
        if (lstm && P) {
            fs = f32 ? kt->lstm_proj_fwd_f32(T, B, I, H, P, X, Wi, Wh, Bi, Bh, Wr, H0, C0, c->lengths, c->reverse, Y, HN, CN, WS)
                     : kt->lstm_proj_fwd_f64(T, B, I, H, P, X, Wi, Wh, Bi, Bh, Wr, H0, C0, c->lengths, c->reverse, Y, HN, CN, WS);
            bs = fs ? fs : f32 ? kt->lstm_proj_bwd_f32(T, B, I, H, P, DY, DH, DC, X, Wi, Wh, Wr, H0, C0, c->lengths, c->reverse, Y, WS, gx, gwi, gwh, gbi, gbh, gwr, gh0, gc0)
                               : kt->lstm_proj_bwd_f64(T, B, I, H, P, DY, DH, DC, X, Wi, Wh, Wr, H0, C0, c->lengths, c->reverse, Y, WS, gx, gwi, gwh, gbi, gbh, gwr, gh0, gc0);
        } else if (lstm) {
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
        char what[112];
        if (P)
            snprintf(what, sizeof what, "lstm P%d %s %s", (int)P, c->name, f32 ? "f32" : "f64");
        else
            snprintf(what, sizeof what, "%s %s %s", cell_names[c->cell], c->name, f32 ? "f32" : "f64");
        double tol = f32 ? TOL_F32 : TOL_F64, gtol = f32 ? GRAD_TOL_F32 : GRAD_TOL_F64;
#define CMP(out, got, want, n, t) \
    check_report(st, kt->isa, what, out, (fs || bs) ? INFINITY : check_err(got, f32, want, n), t)
        CMP("y", Y, y, T * B * S, tol);
        CMP("h_n", HN, h_n, B * S, tol);
        if (lstm) CMP("c_n", CN, c_n, B * H, tol);
        CMP("dx", gx, dx, T * B * I, gtol);
        CMP("dw_ih", gwi, dw_ih, GH * I, gtol);
        CMP("dw_hh", gwh, dw_hh, GH * S, gtol);
        CMP("db_ih", gbi, db_ih, GH, gtol);
        CMP("db_hh", gbh, db_hh, GH, gtol);
        CMP("dh0", gh0, dh0, B * S, gtol);
        if (lstm) CMP("dc0", gc0, dc0, B * H, gtol);
        if (P) CMP("dw_hr", gwr, dw_hr, P * H, gtol);
#undef CMP
        if (f32) { free(X); free(Wi); free(Wh); free(Wr); free(Bi); free(Bh); free(H0); free(C0); free(DY); free(DH); free(DC); }
        free(Y); free(HN); free(CN); free(WS); free(gx); free(gwi); free(gwh); free(gbi); free(gbh);
        free(gh0); free(gc0); free(gwr);
    }
    free(x); free(w_ih); free(w_hh); free(w_hr); free(b_ih); free(b_hh); free(h0); free(c0);
    free(dy); free(dh_n); free(dc_n); free(y); free(h_n); free(c_n); free(dx); free(dw_ih);
    free(dw_hh); free(db_ih); free(db_hh); free(dh0); free(dc0); free(dw_hr);
}

void check_recurrent(const seqcore_kernel_table *kt, check_stats *st) {
    static const int64_t len3[] = {5, 0, 2}, len20[] = {9, 1, 9, 0, 4, 9, 9, 2, 7, 9,
                                                        3, 9, 8, 9, 0, 6, 9, 5, 9, 1};
    static const int64_t len40[] = {3, 0, 40, 17, 40, 1, 0, 25, 40, 9, 40, 33, 2, 40, 40, 12,
                                    0, 40, 38, 5, 40, 21, 40, 7, 40, 40, 1, 40, 30, 40, 14,
                                    40, 0, 40, 26, 40, 40, 3, 40, 11};
    /* every case of the grid without a projection, and for LSTM again with one (P: about
     * half of H, odd where H is) */
    for (int cell = LSTM; cell <= RNN_RELU; cell++)
        for (int proj = 0; proj <= (cell == LSTM); proj++) {
            const rnn_case cases[] = {
                /* name, cell, T, B, I, H, lengths, reverse, biases, states, P */
                {"T5 B3 I7 H10", cell, 5, 3, 7, 10, NULL, 0, 1, 1, 4},
                {"T5 B3 lengths {5,0,2}", cell, 5, 3, 7, 10, len3, 0, 1, 1, 3},
                {"T5 B3 lengths reverse", cell, 5, 3, 7, 10, len3, 1, 1, 1, 7},
                {"no biases or states", cell, 4, 2, 5, 9, NULL, 0, 0, 0, 4},
                {"cell T1 B1 I33 H40", cell, 1, 1, 33, 40, NULL, 0, 1, 1, 17},
                {"T3 B8 I20 H37 (in place, vector tails)", cell, 3, 8, 20, 37, NULL, 1, 1, 1, 19},
                {"T9 B20 I19 H33 lengths (batch-tiled)", cell, 9, 20, 19, 33, len20, 0, 1, 1, 17},
                {"T9 B20 reverse lengths (batch-tiled)", cell, 9, 20, 19, 33, len20, 1, 1, 1, 13},
                {"T0 B2", cell, 0, 2, 3, 4, NULL, 0, 1, 1, 3},
                {"T1 B21 I9 H17 (cells of a batch, in place)", cell, 1, 21, 9, 17, NULL, 0, 1, 1, 8},
                {"T40 B3 I6 H11 (batch-tiled at batch 3)", cell, 40, 3, 6, 11, NULL, 1, 1, 1, 5},
                {"T4 B30 I130 H140 (batch-tiled, k slices)", cell, 4, 30, 130, 140, NULL, 0, 1, 1, 70},
                {"T30 B20 I5 H12 reverse (batch-tiled, 3 chunks)", cell, 30, 20, 5, 12, NULL, 1, 1, 1, 6},
            };
            for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
                rnn_case c = cases[i];
                c.P = proj ? c.P : 0;
                run_case(kt, st, &c, 1000 + 31 * i + cell + 7 * proj);
            }
        }
    /* the projection's own: P = 1, P = H - 1, B 1 over many steps, a large tiled batch with
     * lengths (several groups, the last partial), P over a vector and odd */
    const rnn_case proj_cases[] = {
        {"T6 B4 I5 H9", LSTM, 6, 4, 5, 9, NULL, 0, 1, 1, 1},
        {"T30 B5 I3 H8 (batch-tiled)", LSTM, 30, 5, 3, 8, NULL, 1, 1, 1, 1},
        {"T5 B3 I4 H6 lengths (P = H - 1)", LSTM, 5, 3, 4, 6, len3, 0, 1, 1, 5},
        {"T50 B1 I7 H21 reverse (in place)", LSTM, 50, 1, 7, 21, NULL, 1, 1, 1, 10},
        {"T40 B40 I9 H50 lengths (batch-tiled)", LSTM, 40, 40, 9, 50, len40, 0, 1, 1, 37},
        {"T40 B40 lengths reverse, no biases or states", LSTM, 40, 40, 9, 50, len40, 1, 0, 0, 37},
    };
    for (size_t i = 0; i < sizeof proj_cases / sizeof proj_cases[0]; i++)
        run_case(kt, st, &proj_cases[i], 5000 + 31 * i);
}
