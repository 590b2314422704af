/* The LSTM cell (torch.nn.LSTM), pointwise: gates i, f, g, o of pre-activations a,
 *   i = sigmoid(a_i), f = sigmoid(a_f), g = tanh(a_g), o = sigmoid(a_o)
 *   c' = f * c + i * g,  h' = o * tanh(c').
 * Every bias adds straight into its gate. ws per unit: [i, f, g, o, c'] (5H); the backward's
 * derivatives are functions of these and of the previous step's c.
 * h' has no direct path back to h, so the cell takes a projection (torch's proj_size, see
 * "the projection" in recurrent.c): h' is then u = o * tanh(c'), projected by the loops,
 * and the chain rule writes u back (ubwd.out) for dw_hr.
 *
 * Part of recurrent.c's template (real, VEC / V, RN, UPDATE_SIMD, the unit views): included
 * there once per element type, so no include guard.
 */

static void RN(lstm_fwd)(const struct RN(ufwd) *u) {
    /* (the view in locals: a store through a float pointer may alias it, so each use of
     * u->... after one would be reloaded) */
    int64_t H = u->H, nu = u->nu, gs = u->gs, xs = u->xs;
    const real *acc = u->acc, *xg = u->xg, *xb = u->xb;
    real *c_state = u->c, *h_state = u->h, *y = u->y, *ws = u->ws;
#if UPDATE_SIMD
    for (int64_t j = 0; j < nu; j += NV) {
        int64_t n = nu - j;  /* the last vector is masked past nu */
        VEC pre[4];
        for (int g = 0; g < 4; g++)
            pre[g] = V(add)(V(add)(V(load_n)(xg + g * xs + j, n), V(load_n)(xb + g * xs + j, n)),
                            V(load_n)(acc + g * gs + j, n));
        VEC gi = V(sigmoid)(pre[0]), gf = V(sigmoid)(pre[1]);
        VEC gg = V(tanh)(pre[2]), go = V(sigmoid)(pre[3]);
        VEC c = V(fma)(gf, V(load_n)(c_state + j, n), V(mul)(gi, gg));
        VEC h = V(mul)(go, V(tanh)(c));
        V(store_n)(c_state + j, c, n);
        V(store_n)(h_state + j, h, n);
        V(store_n)(y + j, h, n);
        if (ws) {
            V(store_n)(ws + j, gi, n);
            V(store_n)(ws + H + j, gf, n);
            V(store_n)(ws + 2 * H + j, gg, n);
            V(store_n)(ws + 3 * H + j, go, n);
            V(store_n)(ws + 4 * H + j, c, n);
        }
    }
#else
#pragma omp simd
    for (int64_t j = 0; j < nu; j++) {
        real gi = RN(sigmoid)((xg[j] + xb[j]) + acc[j]);
        real gf = RN(sigmoid)((xg[xs + j] + xb[xs + j]) + acc[1 * gs + j]);
        real gg = TANH((xg[2 * xs + j] + xb[2 * xs + j]) + acc[2 * gs + j]);
        real go = RN(sigmoid)((xg[3 * xs + j] + xb[3 * xs + j]) + acc[3 * gs + j]);
        real c = gf * c_state[j] + gi * gg;
        real h = go * TANH(c);
        c_state[j] = c, h_state[j] = h, y[j] = h;
        if (ws)
            ws[j] = gi, ws[H + j] = gf, ws[2 * H + j] = gg, ws[3 * H + j] = go, ws[4 * H + j] = c;
    }
#endif
}

/* The chain rule, dht = dL/dh_t (carried + dy):
 *   dc_t = dc + dht * o * (1 - tanh(c)^2)        (dc: carried from step t + 1)
 *   da_i = dc_t * g * i(1 - i)   da_f = dc_t * c_prev * f(1 - f)
 *   da_g = dc_t * i * (1 - g^2)  da_o = dht * tanh(c) * o(1 - o)
 * carrying dc = dc_t * f and no direct part of dh (dh_{t-1} is all dG @ w_hh). The x and h
 * sides of dG are the same. */
static void RN(lstm_bwd)(const struct RN(ubwd) *u) {
    int64_t H = u->H, nu = u->nu;
    const real *w = u->ws, *dy = u->dy;
    /* c_prev: the c of the previous step (in its ws), or c0 */
    const real *c_prev = u->ws_prev ? u->ws_prev + 4 * H : u->c0;
    real *dh = u->dh, *dc = u->dc, *out = u->out;  /* (in locals: see lstm_fwd) */
#if UPDATE_SIMD
    /* (the scalar form, one libm-free tanh and a dozen products per unit, was ~10% of the
     * LSTM B8 forward + backward) */
    const VEC one = V(set1)(1.0f);
    for (int64_t j = 0; j < nu; j += NV) {
        int64_t n = nu - j;  /* the last vector is masked past nu */
        VEC gi = V(load_n)(w + j, n), gf = V(load_n)(w + H + j, n);
        VEC gg = V(load_n)(w + 2 * H + j, n), go = V(load_n)(w + 3 * H + j, n);
        VEC c = V(load_n)(w + 4 * H + j, n);
        VEC cp = c_prev ? V(load_n)(c_prev + j, n) : V(zero)();
        VEC dht = V(load_n)(dh + j, n);
        if (dy)
            dht = V(add)(dht, V(load_n)(dy + j, n));
        VEC tc = V(tanh)(c);
        VEC dct = V(add)(V(load_n)(dc + j, n), V(mul)(V(mul)(dht, go), V(fnma)(tc, tc, one)));
        VEC d[4];
        d[0] = V(mul)(V(mul)(V(mul)(dct, gg), gi), V(sub)(one, gi));
        d[1] = V(mul)(V(mul)(V(mul)(dct, cp), gf), V(sub)(one, gf));
        d[2] = V(mul)(V(mul)(dct, gi), V(fnma)(gg, gg, one));
        d[3] = V(mul)(V(mul)(V(mul)(dht, tc), go), V(sub)(one, go));
        V(store_n)(dc + j, V(mul)(dct, gf), n);
        V(store_n)(dh + j, V(zero)(), n);
        if (out)
            V(store_n)(out + j, V(mul)(go, tc), n);
        for (int g = 0; g < 4; g++)
            RN(put_grad)(u, g * H + j, n, d[g]);
    }
#else
    for (int64_t j = 0; j < nu; j++) {
        real dht = dh[j] + (dy ? dy[j] : 0);
        real gi = w[j], gf = w[H + j], gg = w[2 * H + j], go = w[3 * H + j], c = w[4 * H + j];
        real cp = c_prev ? c_prev[j] : 0;
        real tc = TANH(c);
        real dct = dc[j] + dht * go * (1 - tc * tc);
        real d[4];
        d[0] = dct * gg * gi * (1 - gi);
        d[1] = dct * cp * gf * (1 - gf);
        d[2] = dct * gi * (1 - gg * gg);
        d[3] = dht * tc * go * (1 - go);
        dc[j] = dct * gf;
        dh[j] = 0;
        if (out)
            out[j] = go * tc;
        RN(put_unit_grads)(u, j, 4, d, d);
    }
#endif
}

static const struct RN(cell) RN(lstm_cell) = {
    .G = 4, .ws_width = 5, .hh_folded = 4, .split_dg = 0,
    .fwd = RN(lstm_fwd), .bwd = RN(lstm_bwd),
};
