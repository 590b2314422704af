/* The Elman cell (torch.nn.RNN), pointwise: one gate,
 *   h' = act(a),  a = x @ w_ih^T + b_ih + h @ w_hh^T + b_hh,  act = tanh or relu.
 * Both biases fold into the input projection. ws per unit: [h'] (H): both derivatives are
 * functions of the output, tanh' = 1 - h'^2 and relu' = (h' > 0) (torch's relu backward
 * masks by output > 0 too). The x and h sides of dG are the same.
 * Two cells, one per activation: `relu` is a constant in each, so the branch folds away.
 *
 * Part of recurrent.c's template (real, VEC / V, RN, UPDATE_SIMD, the unit views): included
 * there once per element type, so no include guard.
 */

static ALWAYS_INLINE void RN(elman_fwd)(const struct RN(ufwd) *u, const int relu) {
    int64_t nu = u->nu;  /* (the view in locals: see lstm_fwd) */
    const real *acc = u->acc, *xg = u->xg, *xb = u->xb;
    real *h_state = u->h, *y = u->y, *ws = u->ws;
#if UPDATE_SIMD
    for (int64_t j = 0; j < nu; j += NV) {
        int64_t n = nu - j;  /* the last vector is masked past nu */
        VEC a = V(add)(V(add)(V(load_n)(xg + j, n), V(load_n)(xb + j, n)), V(load_n)(acc + j, n));
        /* (max returns its second operand for NaN: relu passes NaN through, as torch's) */
        VEC h = relu ? V(max)(V(zero)(), a) : V(tanh)(a);
        V(store_n)(h_state + j, h, n);
        V(store_n)(y + j, h, n);
        if (ws)
            V(store_n)(ws + j, h, n);
    }
#else
#pragma omp simd
    for (int64_t j = 0; j < nu; j++) {
        real a = (xg[j] + xb[j]) + acc[j];
        real h = relu ? (a < 0 ? 0 : a) : TANH(a);  /* (NaN < 0 is false: NaN passes) */
        h_state[j] = h, y[j] = h;
        if (ws)
            ws[j] = h;
    }
#endif
}

/* The chain rule: da = dht * act'(h'), dht = dL/dh_t (carried + dy); no direct part of dh
 * (dh_{t-1} is all da @ w_hh). */
static ALWAYS_INLINE void RN(elman_bwd)(const struct RN(ubwd) *u, const int relu) {
    int64_t nu = u->nu;
    const real *h_out = u->ws, *dy = u->dy;
    real *dh = u->dh;
#if UPDATE_SIMD
    const VEC one = V(set1)(1.0f), zero = V(zero)();
    for (int64_t j = 0; j < nu; j += NV) {
        int64_t n = nu - j;  /* the last vector is masked past nu */
        VEC h = V(load_n)(h_out + j, n), dht = V(load_n)(dh + j, n);
        if (dy)
            dht = V(add)(dht, V(load_n)(dy + j, n));
        VEC da = relu ? V(select)(V(lt)(zero, h), dht, zero) : V(mul)(dht, V(fnma)(h, h, one));
        V(store_n)(dh + j, zero, n);
        RN(put_grad)(u, j, n, da);
    }
#else
    for (int64_t j = 0; j < nu; j++) {
        real dht = dh[j] + (dy ? dy[j] : 0), h = h_out[j];
        real da = relu ? (h > 0 ? dht : 0) : dht * (1 - h * h);
        dh[j] = 0;
        RN(put_unit_grads)(u, j, 1, &da, &da);
    }
#endif
}

static void RN(elman_tanh_fwd)(const struct RN(ufwd) *u) { RN(elman_fwd)(u, 0); }
static void RN(elman_relu_fwd)(const struct RN(ufwd) *u) { RN(elman_fwd)(u, 1); }
static void RN(elman_tanh_bwd)(const struct RN(ubwd) *u) { RN(elman_bwd)(u, 0); }
static void RN(elman_relu_bwd)(const struct RN(ubwd) *u) { RN(elman_bwd)(u, 1); }

static const struct RN(cell) RN(elman_tanh_cell) = {
    .G = 1, .ws_width = 1, .hh_folded = 1, .split_dg = 0,
    .fwd = RN(elman_tanh_fwd), .bwd = RN(elman_tanh_bwd),
};
static const struct RN(cell) RN(elman_relu_cell) = {
    .G = 1, .ws_width = 1, .hh_folded = 1, .split_dg = 0,
    .fwd = RN(elman_relu_fwd), .bwd = RN(elman_relu_bwd),
};
