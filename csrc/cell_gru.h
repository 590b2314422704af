/* The GRU cell (torch.nn.GRU), pointwise: gates r, z, n, with the x parts a_x (biases
 * b_ih in) and the h parts a_h (biases b_hh in) of their pre-activations
 *   r = sigmoid(a_xr + a_hr), z = sigmoid(a_xz + a_hz), n = tanh(a_xn + r * a_hn)
 *   h' = (1 - z) * n + z * h.
 * b_hh of r and z folds into the input projection; b_hn stays inside r * (W_hn h + b_hn).
 * ws per unit: [r, z, n, a_hn] (4H). The x and h sides of dG differ in the n gate.
 *
 * Part of recurrent.c's template (real, VEC / V, RN, UPDATE_SIMD, the unit views): included
 * there once per element type, so no include guard.
 */

static void RN(gru_fwd)(const struct RN(ufwd) *u) {
    int64_t H = u->H, nu = u->nu, gs = u->gs, xs = u->xs;  /* (in locals: see lstm_fwd) */
    const real *acc = u->acc, *xg = u->xg, *xb = u->xb;
    const real *b_hn = u->b_hh ? u->b_hh + 2 * H : NULL;
    real *h_state = u->h, *y = u->y, *ws = u->ws;
#if UPDATE_SIMD
    for (int64_t j = 0; j < nu; j += NV) {
        int64_t n = nu - j;  /* the last vector is masked past nu */
        VEC pre[3];
        for (int g = 0; g < 3; g++)
            pre[g] = V(add)(V(load_n)(xg + g * xs + j, n), V(load_n)(xb + g * xs + j, n));
        VEC hn = V(load_n)(acc + 2 * gs + j, n);
        if (b_hn)
            hn = V(add)(hn, V(load_n)(b_hn + j, n));
        VEC r = V(sigmoid)(V(add)(pre[0], V(load_n)(acc + j, n)));
        VEC z = V(sigmoid)(V(add)(pre[1], V(load_n)(acc + gs + j, n)));
        VEC nn = V(tanh)(V(fma)(r, hn, pre[2]));
        VEC h = V(fma)(V(sub)(V(set1)(1.0f), z), nn, V(mul)(z, V(load_n)(h_state + j, n)));
        V(store_n)(h_state + j, h, n);
        V(store_n)(y + j, h, n);
        if (ws) {
            V(store_n)(ws + j, r, n);
            V(store_n)(ws + H + j, z, n);
            V(store_n)(ws + 2 * H + j, nn, n);
            V(store_n)(ws + 3 * H + j, hn, n);
        }
    }
#else
#pragma omp simd
    for (int64_t j = 0; j < nu; j++) {
        real hn = acc[2 * gs + j] + (b_hn ? b_hn[j] : 0);
        real r = RN(sigmoid)((xg[j] + xb[j]) + acc[j]);
        real z = RN(sigmoid)((xg[xs + j] + xb[xs + j]) + acc[1 * gs + j]);
        real n = TANH((xg[2 * xs + j] + xb[2 * xs + j]) + r * hn);
        real h = (1 - z) * n + z * h_state[j];
        h_state[j] = h, y[j] = h;
        if (ws)
            ws[j] = r, ws[H + j] = z, ws[2 * H + j] = n, ws[3 * H + j] = hn;
    }
#endif
}

/* The chain rule, dht = dL/dh_t (carried + dy), da_n = dht * (1 - z) * (1 - n^2):
 *   da_r = da_n * a_hn * r(1 - r)   (both sides)
 *   da_z = dht * (h_prev - n) * z(1 - z)   (both sides)
 *   x side of n: da_n;  h side of n: da_n * r
 * and the direct part of dL/dh_{t-1}, through z * h_{t-1}: dht * z. */
static void RN(gru_bwd)(const struct RN(ubwd) *u) {
    int64_t H = u->H, nu = u->nu;
    const real *w = u->ws, *dy = u->dy, *hp = u->h_prev;
    real *dh = u->dh;
#if UPDATE_SIMD
    /* (the scalar form was ~9% of a GRU B64 forward + backward) */
    const VEC one = V(set1)(1.0f);
    for (int64_t j = 0; j < nu; j += NV) {
        int64_t n = nu - j;  /* the last vector is masked past nu */
        VEC r = V(load_n)(w + j, n), z = V(load_n)(w + H + j, n);
        VEC nn = V(load_n)(w + 2 * H + j, n), hn = V(load_n)(w + 3 * H + j, n);
        VEC h_prev = hp ? V(load_n)(hp + j, n) : V(zero)();
        VEC dht = V(load_n)(dh + j, n);
        if (dy)
            dht = V(add)(dht, V(load_n)(dy + j, n));
        VEC dan = V(mul)(V(mul)(dht, V(sub)(one, z)), V(fnma)(nn, nn, one));
        VEC dar = V(mul)(V(mul)(V(mul)(dan, hn), r), V(sub)(one, r));
        VEC daz = V(mul)(V(mul)(V(mul)(dht, V(sub)(h_prev, nn)), z), V(sub)(one, z));
        V(store_n)(dh + j, V(mul)(dht, z), n);
        RN(put_grad_sides)(u, j, n, dar, dar);
        RN(put_grad_sides)(u, H + j, n, daz, daz);
        RN(put_grad_sides)(u, 2 * H + j, n, dan, V(mul)(dan, r));
    }
#else
    for (int64_t j = 0; j < nu; j++) {
        real dht = dh[j] + (dy ? dy[j] : 0);
        real r = w[j], z = w[H + j], n = w[2 * H + j], hn = w[3 * H + j];
        real h_prev = hp ? hp[j] : 0;
        real dan = dht * (1 - z) * (1 - n * n);
        real dx_side[3], dh_side[3];
        dx_side[0] = dh_side[0] = dan * hn * r * (1 - r);
        dx_side[1] = dh_side[1] = dht * (h_prev - n) * z * (1 - z);
        dx_side[2] = dan;
        dh_side[2] = dan * r;
        dh[j] = dht * z;
        RN(put_unit_grads)(u, j, 3, dx_side, dh_side);
    }
#endif
}

static const struct RN(cell) RN(gru_cell) = {
    .G = 3, .ws_width = 4, .hh_folded = 2, .split_dg = 1,
    .fwd = RN(gru_fwd), .bwd = RN(gru_bwd),
};
