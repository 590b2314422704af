/* Runtime ISA dispatch: the public entry points of seqcore.h, forwarded to the kernel table
 * of the ISA level chosen for this CPU (see isa.h, kernels.h).
 *
 * Compiled once, for the target's baseline (no AVX here: this file runs before anything
 * knows what the CPU has). The level is the best the CPU supports unless
 * seqcore_isa_select() picks another; a level the CPU lacks is refused, so a forced level
 * is an error code, never SIGILL.
 */
#include <stdatomic.h>
#include <string.h>

#include "kernels.h"
#include "seqcore.h"

/* The levels build.py compiles for this target, best first (the same list as LEVELS there). */
#if defined(__x86_64__) || defined(_M_X64)
extern const seqcore_kernel_table seqcore_kernels_avx512, seqcore_kernels_avx2,
    seqcore_kernels_baseline;
static const seqcore_kernel_table *const tables[] = {&seqcore_kernels_avx512,
                                                     &seqcore_kernels_avx2,
                                                     &seqcore_kernels_baseline};
#elif defined(__aarch64__)
extern const seqcore_kernel_table seqcore_kernels_neon, seqcore_kernels_baseline;
static const seqcore_kernel_table *const tables[] = {&seqcore_kernels_neon,
                                                     &seqcore_kernels_baseline};
#else
extern const seqcore_kernel_table seqcore_kernels_baseline;
static const seqcore_kernel_table *const tables[] = {&seqcore_kernels_baseline};
#endif
enum { N_TABLES = sizeof tables / sizeof tables[0] };

/* Whether this CPU (and its OS, which must save the wider registers) runs `isa`. GCC's and
 * Clang's __builtin_cpu_supports read CPUID and XGETBV. AArch64 always has NEON. */
static int cpu_runs(const char *isa) {
    if (strcmp(isa, "baseline") == 0 || strcmp(isa, "neon") == 0)
        return 1;
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    /* (F16C came before AVX2 on every x86 core: the check costs nothing) */
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("f16c");
    if (strcmp(isa, "avx2") == 0)
        return avx2;
    if (strcmp(isa, "avx512") == 0)
        return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
#endif
    return 0;
}

static const seqcore_kernel_table *find(const char *isa) {
    for (int i = 0; i < N_TABLES; i++)
        if (strcmp(tables[i]->isa, isa) == 0)
            return tables[i];
    return NULL;
}

static const seqcore_kernel_table *best(void) {
    for (int i = 0; i < N_TABLES; i++)
        if (cpu_runs(tables[i]->isa))
            return tables[i];
    return tables[N_TABLES - 1];
}

static _Atomic(const seqcore_kernel_table *) active;

static const seqcore_kernel_table *kt(void) {
    const seqcore_kernel_table *t = atomic_load_explicit(&active, memory_order_acquire);
    if (!t) {  /* first call: every racing thread finds the same table */
        t = best();
        atomic_store_explicit(&active, t, memory_order_release);
    }
    return t;
}

const seqcore_kernel_table *seqcore_kernel_table_for(const char *isa) {
    const seqcore_kernel_table *t = find(isa);
    return t && cpu_runs(isa) ? t : NULL;
}

const char *seqcore_isa_compiled(void) {
#if defined(__x86_64__) || defined(_M_X64)
    return "avx512,avx2,baseline";
#elif defined(__aarch64__)
    return "neon,baseline";
#else
    return "baseline";
#endif
}

int seqcore_isa_supported(const char *isa) {
    if (!isa || !find(isa))
        return -1;
    return cpu_runs(isa);
}

int seqcore_isa_select(const char *isa) {
    const seqcore_kernel_table *t = isa ? seqcore_kernel_table_for(isa) : best();
    if (!t)
        return SEQCORE_EINVAL;
    atomic_store_explicit(&active, t, memory_order_release);
    return SEQCORE_OK;
}

const char *seqcore_isa_active(void) { return kt()->isa; }

/* ---- the public entry points: each forwards to the active table ---- */

int seqcore_attention_fwd_f32(const seqcore_attn_problem *p, const float *q, const float *k,
                              const float *v, const float *bias, float *out, float *lse) {
    return kt()->attention_fwd_f32(p, q, k, v, bias, out, lse);
}

int seqcore_attention_fwd_f64(const seqcore_attn_problem *p, const double *q, const double *k,
                              const double *v, const double *bias, double *out, double *lse) {
    return kt()->attention_fwd_f64(p, q, k, v, bias, out, lse);
}

int seqcore_attention_bwd_f32(const seqcore_attn_problem *p, const float *dout, const float *q,
                              const float *k, const float *v, const float *bias, const float *out,
                              const float *lse, float *dq, float *dk, float *dv, float *dbias) {
    return kt()->attention_bwd_f32(p, dout, q, k, v, bias, out, lse, dq, dk, dv, dbias);
}

int seqcore_attention_bwd_f64(const seqcore_attn_problem *p, const double *dout, const double *q,
                              const double *k, const double *v, const double *bias,
                              const double *out, const double *lse, double *dq, double *dk,
                              double *dv, double *dbias) {
    return kt()->attention_bwd_f64(p, dout, q, k, v, bias, out, lse, dq, dk, dv, dbias);
}

int seqcore_attention_kvcache_f32(const seqcore_kvcache_problem *p, const float *q,
                                  float *k_cache, float *v_cache, const float *k_new,
                                  const float *v_new, float *out, float *lse) {
    return kt()->attention_kvcache_f32(p, q, k_cache, v_cache, k_new, v_new, out, lse);
}

int seqcore_attention_kvcache_f64(const seqcore_kvcache_problem *p, const double *q,
                                  double *k_cache, double *v_cache, const double *k_new,
                                  const double *v_new, double *out, double *lse) {
    return kt()->attention_kvcache_f64(p, q, k_cache, v_cache, k_new, v_new, out, lse);
}

int seqcore_lstm_fwd_f32(int64_t T, int64_t B, int64_t I, int64_t H, const float *x,
                         const float *w_ih, const float *w_hh, const float *b_ih,
                         const float *b_hh, const float *h0, const float *c0,
                         const int64_t *lengths, int reverse, float *y, float *h_n, float *c_n,
                         float *ws) {
    return kt()->lstm_fwd_f32(T, B, I, H, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse,
                              y, h_n, c_n, ws);
}

int seqcore_lstm_fwd_f64(int64_t T, int64_t B, int64_t I, int64_t H, const double *x,
                         const double *w_ih, const double *w_hh, const double *b_ih,
                         const double *b_hh, const double *h0, const double *c0,
                         const int64_t *lengths, int reverse, double *y, double *h_n,
                         double *c_n, double *ws) {
    return kt()->lstm_fwd_f64(T, B, I, H, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, reverse,
                              y, h_n, c_n, ws);
}

int seqcore_lstm_proj_fwd_f32(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                              const float *x, const float *w_ih, const float *w_hh,
                              const float *b_ih, const float *b_hh, const float *w_hr,
                              const float *h0, const float *c0, const int64_t *lengths,
                              int reverse, float *y, float *h_n, float *c_n, float *ws) {
    return kt()->lstm_proj_fwd_f32(T, B, I, H, P, x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0,
                                   lengths, reverse, y, h_n, c_n, ws);
}

int seqcore_lstm_proj_fwd_f64(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                              const double *x, const double *w_ih, const double *w_hh,
                              const double *b_ih, const double *b_hh, const double *w_hr,
                              const double *h0, const double *c0, const int64_t *lengths,
                              int reverse, double *y, double *h_n, double *c_n, double *ws) {
    return kt()->lstm_proj_fwd_f64(T, B, I, H, P, x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0,
                                   lengths, reverse, y, h_n, c_n, ws);
}

int seqcore_lstm_proj_bwd_f32(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                              const float *dy, const float *dh_n, const float *dc_n,
                              const float *x, const float *w_ih, const float *w_hh,
                              const float *w_hr, const float *h0, const float *c0,
                              const int64_t *lengths, int reverse, const float *y,
                              const float *ws, float *dx, float *dw_ih, float *dw_hh,
                              float *db_ih, float *db_hh, float *dw_hr, float *dh0, float *dc0) {
    return kt()->lstm_proj_bwd_f32(T, B, I, H, P, dy, dh_n, dc_n, x, w_ih, w_hh, w_hr, h0, c0,
                                   lengths, reverse, y, ws, dx, dw_ih, dw_hh, db_ih, db_hh,
                                   dw_hr, dh0, dc0);
}

int seqcore_lstm_proj_bwd_f64(int64_t T, int64_t B, int64_t I, int64_t H, int64_t P,
                              const double *dy, const double *dh_n, const double *dc_n,
                              const double *x, const double *w_ih, const double *w_hh,
                              const double *w_hr, const double *h0, const double *c0,
                              const int64_t *lengths, int reverse, const double *y,
                              const double *ws, double *dx, double *dw_ih, double *dw_hh,
                              double *db_ih, double *db_hh, double *dw_hr, double *dh0,
                              double *dc0) {
    return kt()->lstm_proj_bwd_f64(T, B, I, H, P, dy, dh_n, dc_n, x, w_ih, w_hh, w_hr, h0, c0,
                                   lengths, reverse, y, ws, dx, dw_ih, dw_hh, db_ih, db_hh,
                                   dw_hr, dh0, dc0);
}

int seqcore_gru_fwd_f32(int64_t T, int64_t B, int64_t I, int64_t H, const float *x,
                        const float *w_ih, const float *w_hh, const float *b_ih,
                        const float *b_hh, const float *h0, const int64_t *lengths, int reverse,
                        float *y, float *h_n, float *ws) {
    return kt()->gru_fwd_f32(T, B, I, H, x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, y,
                             h_n, ws);
}

int seqcore_gru_fwd_f64(int64_t T, int64_t B, int64_t I, int64_t H, const double *x,
                        const double *w_ih, const double *w_hh, const double *b_ih,
                        const double *b_hh, const double *h0, const int64_t *lengths,
                        int reverse, double *y, double *h_n, double *ws) {
    return kt()->gru_fwd_f64(T, B, I, H, x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, y,
                             h_n, ws);
}

int seqcore_lstm_bwd_f32(int64_t T, int64_t B, int64_t I, int64_t H, const float *dy,
                         const float *dh_n, const float *dc_n, const float *x,
                         const float *w_ih, const float *w_hh, const float *h0,
                         const float *c0, const int64_t *lengths, int reverse,
                         const float *y, const float *ws, float *dx, float *dw_ih,
                         float *dw_hh, float *db_ih, float *db_hh, float *dh0, float *dc0) {
    return kt()->lstm_bwd_f32(T, B, I, H, dy, dh_n, dc_n, x, w_ih, w_hh, h0, c0, lengths,
                              reverse, y, ws, dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0);
}

int seqcore_lstm_bwd_f64(int64_t T, int64_t B, int64_t I, int64_t H, const double *dy,
                         const double *dh_n, const double *dc_n, const double *x,
                         const double *w_ih, const double *w_hh, const double *h0,
                         const double *c0, const int64_t *lengths, int reverse,
                         const double *y, const double *ws, double *dx, double *dw_ih,
                         double *dw_hh, double *db_ih, double *db_hh, double *dh0,
                         double *dc0) {
    return kt()->lstm_bwd_f64(T, B, I, H, dy, dh_n, dc_n, x, w_ih, w_hh, h0, c0, lengths,
                              reverse, y, ws, dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0);
}

int seqcore_gru_bwd_f32(int64_t T, int64_t B, int64_t I, int64_t H, const float *dy,
                        const float *dh_n, const float *x, const float *w_ih,
                        const float *w_hh, const float *h0, const int64_t *lengths,
                        int reverse, const float *y, const float *ws, float *dx,
                        float *dw_ih, float *dw_hh, float *db_ih, float *db_hh, float *dh0) {
    return kt()->gru_bwd_f32(T, B, I, H, dy, dh_n, x, w_ih, w_hh, h0, lengths, reverse, y, ws,
                             dx, dw_ih, dw_hh, db_ih, db_hh, dh0);
}

int seqcore_gru_bwd_f64(int64_t T, int64_t B, int64_t I, int64_t H, const double *dy,
                        const double *dh_n, const double *x, const double *w_ih,
                        const double *w_hh, const double *h0, const int64_t *lengths,
                        int reverse, const double *y, const double *ws, double *dx,
                        double *dw_ih, double *dw_hh, double *db_ih, double *db_hh,
                        double *dh0) {
    return kt()->gru_bwd_f64(T, B, I, H, dy, dh_n, x, w_ih, w_hh, h0, lengths, reverse, y, ws,
                             dx, dw_ih, dw_hh, db_ih, db_hh, dh0);
}

int seqcore_rnn_fwd_f32(int64_t T, int64_t B, int64_t I, int64_t H, const float *x,
                        const float *w_ih, const float *w_hh, const float *b_ih,
                        const float *b_hh, const float *h0, const int64_t *lengths, int reverse,
                        int relu, float *y, float *h_n, float *ws) {
    return kt()->rnn_fwd_f32(T, B, I, H, x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, relu,
                             y, h_n, ws);
}

int seqcore_rnn_fwd_f64(int64_t T, int64_t B, int64_t I, int64_t H, const double *x,
                        const double *w_ih, const double *w_hh, const double *b_ih,
                        const double *b_hh, const double *h0, const int64_t *lengths,
                        int reverse, int relu, double *y, double *h_n, double *ws) {
    return kt()->rnn_fwd_f64(T, B, I, H, x, w_ih, w_hh, b_ih, b_hh, h0, lengths, reverse, relu,
                             y, h_n, ws);
}

int seqcore_rnn_bwd_f32(int64_t T, int64_t B, int64_t I, int64_t H, const float *dy,
                        const float *dh_n, const float *x, const float *w_ih,
                        const float *w_hh, const float *h0, const int64_t *lengths,
                        int reverse, int relu, const float *y, const float *ws, float *dx,
                        float *dw_ih, float *dw_hh, float *db_ih, float *db_hh, float *dh0) {
    return kt()->rnn_bwd_f32(T, B, I, H, dy, dh_n, x, w_ih, w_hh, h0, lengths, reverse, relu, y,
                             ws, dx, dw_ih, dw_hh, db_ih, db_hh, dh0);
}

int seqcore_rnn_bwd_f64(int64_t T, int64_t B, int64_t I, int64_t H, const double *dy,
                        const double *dh_n, const double *x, const double *w_ih,
                        const double *w_hh, const double *h0, const int64_t *lengths,
                        int reverse, int relu, const double *y, const double *ws, double *dx,
                        double *dw_ih, double *dw_hh, double *db_ih, double *db_hh,
                        double *dh0) {
    return kt()->rnn_bwd_f64(T, B, I, H, dy, dh_n, x, w_ih, w_hh, h0, lengths, reverse, relu, y,
                             ws, dx, dw_ih, dw_hh, db_ih, db_hh, dh0);
}

int seqcore_f16_to_f32(const uint16_t *src, float *dst, int64_t n) {
    return kt()->f16_to_f32(src, dst, n);
}

int seqcore_f32_to_f16(const float *src, uint16_t *dst, int64_t n) {
    return kt()->f32_to_f16(src, dst, n);
}
