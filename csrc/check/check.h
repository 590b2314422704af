/* The C-level reference checks (llm.c style): every kernel of every ISA level this CPU runs
 * against a plain scalar reference written beside it, in double. Built and run by
 * `python csrc/build.py check` (make check-c; make test-arm cross-compiles it for aarch64 and
 * runs it under qemu), so a new ISA level is verified by running it.
 *
 * Each check_<family>.c holds its scalar reference and a grid of cases; check_main.c runs
 * them for each level's kernel table (kernels.h).
 */
#ifndef SEQCORE_CHECK_H
#define SEQCORE_CHECK_H
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels.h"

/* Tolerances by dtype, relative to the largest |reference| value of an output (and absolute
 * for outputs of order one): the same bars as tests/conftest.py. */
#define TOL_F32 2e-5
#define TOL_F64 1e-10
#define GRAD_TOL_F32 1e-4
#define GRAD_TOL_F64 1e-8

typedef struct {
    int cases, failures;
    int verbose;
} check_stats;

/* Deterministic inputs: splitmix64, uniform in [-1, 1) scaled. */
static inline double check_rand(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) / (double)(1ull << 52) - 1.0;
}

static inline double *check_randn(uint64_t *state, int64_t n, double scale) {
    double *a = malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    for (int64_t i = 0; i < n; i++) a[i] = scale * check_rand(state);
    return a;
}

static inline float *check_to_f32(const double *a, int64_t n) {
    float *f = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    for (int64_t i = 0; i < n; i++) f[i] = (float)a[i];
    return f;
}

/* Output buffers start as NaN, so a kernel that skips an element fails. */
static inline void *check_poisoned(int64_t n, size_t size) {
    void *p = malloc((size_t)(n > 0 ? n : 1) * size);
    memset(p, 0xFF, (size_t)(n > 0 ? n : 1) * size);
    return p;
}

/* Max |got - want| / max(1, max |want|); infinities must match exactly; NaN fails. */
static inline double check_err(const void *got, int is_f32, const double *want, int64_t n) {
    double scale = 1, worst = 0;
    for (int64_t i = 0; i < n; i++)
        if (isfinite(want[i]) && fabs(want[i]) > scale) scale = fabs(want[i]);
    for (int64_t i = 0; i < n; i++) {
        double g = is_f32 ? (double)((const float *)got)[i] : ((const double *)got)[i];
        if (isnan(g)) return INFINITY;
        if (isinf(want[i]) || isinf(g)) {
            if (g != want[i]) return INFINITY;
            continue;
        }
        double e = fabs(g - want[i]) / scale;
        if (e > worst) worst = e;
    }
    return worst;
}

/* One comparison: counts it, prints failures (and every case when verbose). */
static inline int check_report(check_stats *st, const char *isa, const char *what,
                               const char *output, double err, double tol) {
    int ok = err <= tol;
    st->cases++;
    if (!ok || st->verbose)
        printf("  %-8s %-58s %-6s err %.2e (tol %.0e)%s\n", isa, what, output, err, tol,
               ok ? "" : "  FAIL");
    st->failures += !ok;
    return ok;
}

void check_vec_math(const seqcore_kernel_table *kt, check_stats *st);
void check_convert(const seqcore_kernel_table *kt, check_stats *st);
void check_gemm(const seqcore_kernel_table *kt, check_stats *st);
void check_attention(const seqcore_kernel_table *kt, check_stats *st);
void check_kvcache(const seqcore_kernel_table *kt, check_stats *st);
void check_recurrent(const seqcore_kernel_table *kt, check_stats *st);

#endif
