/* The vector exp / sigmoid / tanh / exp2 of each level (simd.h) against libm in double, and
 * the double exp against libm's. */
#include "check.h"

static double ref(int fn, double x) {
    switch (fn) {
    case SEQCORE_VEC_EXP: return exp(x);
    case SEQCORE_VEC_SIGMOID: return 1 / (1 + exp(-x));
    case SEQCORE_VEC_TANH: return tanh(x);
    default: return exp2(x);
    }
}

void check_vec_math(const seqcore_kernel_table *kt, check_stats *st) {
    static const char *names[] = {"exp", "sigmoid", "tanh", "exp2 (x <= 0)"};
    enum { N = 4003 };  /* odd: the masked tail runs too */
    float *x = malloc(N * sizeof(float)), *y = malloc(N * sizeof(float));
    for (int fn = 0; fn < 4; fn++) {
        /* a sweep of the range that matters, then the edges: underflow to exactly 0,
         * saturation, -inf */
        double lo = fn == SEQCORE_VEC_EXP ? -87 : fn == SEQCORE_VEC_EXP2 ? -125 : -30;
        double hi = fn == SEQCORE_VEC_EXP ? 88 : fn == SEQCORE_VEC_EXP2 ? 0 : 30;
        for (int i = 0; i < N - 3; i++) x[i] = (float)(lo + (hi - lo) * i / (N - 4));
        x[N - 3] = -INFINITY;
        x[N - 2] = fn == SEQCORE_VEC_EXP2 ? -200.0f : -1000.0f;
        x[N - 1] = fn == SEQCORE_VEC_EXP2 ? 0.0f : (fn == SEQCORE_VEC_EXP ? 0.0f : 1000.0f);
        memset(y, 0xFF, N * sizeof(float));
        kt->vec_math_f32(fn, N, x, y);
        double worst_rel = 0, worst_abs = 0;
        int edges_ok = 1;
        for (int i = 0; i < N; i++) {
            double want = ref(fn, (double)x[i]);
            if (isnan(y[i])) { worst_rel = INFINITY; continue; }
            if (fn != SEQCORE_VEC_TANH && want < 1e-37) {  /* at the bottom of float's normal range: tiny, and exactly 0
                                  * far below it (-inf included: a masked score adds nothing) */
                int exact = (fn == SEQCORE_VEC_EXP || fn == SEQCORE_VEC_EXP2) && x[i] <= -200;
                edges_ok &= exact ? y[i] == 0.0f : fabs(y[i]) < 1e-37;
                continue;
            }
            double rel = fabs(y[i] - want) / want, ab = fabs(y[i] - want);
            if (fn == SEQCORE_VEC_TANH || fn == SEQCORE_VEC_SIGMOID) {
                if (ab > worst_abs) worst_abs = ab;  /* (tanh near 0: absolute error) */
            } else if (rel > worst_rel) {
                worst_rel = rel;
            }
        }
        char what[96];
        snprintf(what, sizeof what, "vec %s, %d values (relative / absolute error)", names[fn], N);
        check_report(st, kt->isa, what, "y", fn == SEQCORE_VEC_TANH || fn == SEQCORE_VEC_SIGMOID
                                                 ? worst_abs : worst_rel, 4e-7);
        snprintf(what, sizeof what, "vec %s, underflow: tiny, -inf and far below exactly 0", names[fn]);
        check_report(st, kt->isa, what, "y", edges_ok ? 0 : INFINITY, 0);
    }
    free(x);
    free(y);
    /* vd_exp: the float64 kernels' softmax; a sweep of doubles, then its edges */
    enum { ND = 2003 };
    double *xd = malloc(ND * sizeof(double)), *yd = malloc(ND * sizeof(double));
    for (int i = 0; i < ND - 4; i++) xd[i] = -708.0 + 1416.0 * i / (ND - 5);
    xd[ND - 4] = -INFINITY, xd[ND - 3] = -1000.0, xd[ND - 2] = 0.0, xd[ND - 1] = -1e-300;
    memset(yd, 0xFF, ND * sizeof(double));
    kt->vec_exp_f64(ND, xd, yd);
    double worst = 0;
    for (int i = 0; i < ND; i++) {
        if (i == ND - 4 || i == ND - 3) continue;  /* (the zeros, below) */
        double want = exp(xd[i]), rel = fabs(yd[i] - want) / want;
        if (!(rel <= worst)) worst = isnan(rel) ? INFINITY : rel;
    }
    check_report(st, kt->isa, "vec exp float64, 2000 values in [-708, 708], 0 and -1e-300 (relative error)",
                 "y", worst, 1e-15);
    check_report(st, kt->isa, "vec exp float64, -inf and -1000 give exactly 0", "y",
                 yd[ND - 4] == 0.0 && yd[ND - 3] == 0.0 ? 0 : INFINITY, 0);
    free(xd);
    free(yd);
}
