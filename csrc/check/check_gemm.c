/* gemm.c's blocked product against the triple loop: odd sizes, transposed operands (any
 * strides), accumulate, K = 0. */
#include "check.h"

static void ref_gemm(int64_t M, int64_t N, int64_t K, const double *a, int64_t sam, int64_t sak,
                     const double *b, int64_t sbk, int64_t sbn, int accumulate, const double *c0,
                     double *c) {
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double acc = accumulate ? c0[m * N + n] : 0;
            for (int64_t k = 0; k < K; k++) acc += a[m * sam + k * sak] * b[k * sbk + n * sbn];
            c[m * N + n] = acc;
        }
}

void check_gemm(const seqcore_kernel_table *kt, check_stats *st) {
    static const int64_t shapes[][3] = {{1, 1, 1}, {7, 13, 5}, {33, 65, 17}, {100, 37, 300},
                                        {12, 32, 0}, {250, 70, 513}};
    uint64_t seed = 11;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (int accumulate = 0; accumulate < 2; accumulate++) {
                    int64_t M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
                    double *a = check_randn(&seed, M * K, 1), *b = check_randn(&seed, K * N, 1);
                    double *c0 = check_randn(&seed, M * N, 1), *want = malloc((size_t)(M * N + 1) * 8);
                    int64_t sam = ta ? 1 : K, sak = ta ? M : 1, sbk = tb ? 1 : N, sbn = tb ? K : 1;
                    ref_gemm(M, N, K, a, sam, sak, b, sbk, sbn, accumulate, c0, want);
                    float *af = check_to_f32(a, M * K), *bf = check_to_f32(b, K * N);
                    float *cf = check_to_f32(c0, M * N);
                    double *cd = malloc((size_t)(M * N + 1) * 8);
                    memcpy(cd, c0, (size_t)(M * N) * 8);
                    int s32 = kt->gemm_f32(M, N, K, af, sam, sak, bf, sbk, sbn, accumulate, cf, N);
                    int s64 = kt->gemm_f64(M, N, K, a, sam, sak, b, sbk, sbn, accumulate, cd, N);
                    char what[96];
                    snprintf(what, sizeof what, "gemm %lldx%lldx%lld%s%s%s", (long long)M,
                             (long long)N, (long long)K, ta ? " A^T" : "", tb ? " B^T" : "",
                             accumulate ? " +=" : "");
                    /* float: K products of order-one values, rounding grows with sqrt(K) */
                    double tol32 = 1e-6 * (8 + sqrt((double)K) * 4);
                    check_report(st, kt->isa, what, "f32",
                                 s32 ? INFINITY : check_err(cf, 1, want, M * N), tol32);
                    check_report(st, kt->isa, what, "f64",
                                 s64 ? INFINITY : check_err(cd, 0, want, M * N), TOL_F64);
                    free(a); free(b); free(c0); free(want); free(af); free(bf); free(cf); free(cd);
                }
}
