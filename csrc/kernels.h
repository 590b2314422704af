/* One table of every kernel entry point per ISA level (internal: not part of the cffi
 * interface). kernels.c fills it once per level (the names inside it carry the level, see
 * isa.h); dispatch.c holds the tables, picks one when the library loads and forwards each
 * public entry point of seqcore.h to it; the C checks (csrc/check/) run every table the CPU
 * supports against plain scalar references.
 */
#ifndef SEQCORE_KERNELS_H
#define SEQCORE_KERNELS_H
#include <stdint.h>

#include "seqcore.h"

/* What a level computes its vector exp / sigmoid / tanh as, on n floats (for the checks). */
enum { SEQCORE_VEC_EXP = 0, SEQCORE_VEC_SIGMOID = 1, SEQCORE_VEC_TANH = 2, SEQCORE_VEC_EXP2 = 3 };

typedef struct {
    const char *isa;  /* "baseline", "avx2", "avx512", "neon" */
    __typeof__(seqcore_attention_fwd_f32) *attention_fwd_f32;
    __typeof__(seqcore_attention_fwd_f64) *attention_fwd_f64;
    __typeof__(seqcore_attention_bwd_f32) *attention_bwd_f32;
    __typeof__(seqcore_attention_bwd_f64) *attention_bwd_f64;
    __typeof__(seqcore_attention_kvcache_f32) *attention_kvcache_f32;
    __typeof__(seqcore_attention_kvcache_f64) *attention_kvcache_f64;
    __typeof__(seqcore_lstm_fwd_f32) *lstm_fwd_f32;
    __typeof__(seqcore_lstm_fwd_f64) *lstm_fwd_f64;
    __typeof__(seqcore_gru_fwd_f32) *gru_fwd_f32;
    __typeof__(seqcore_gru_fwd_f64) *gru_fwd_f64;
    __typeof__(seqcore_lstm_bwd_f32) *lstm_bwd_f32;
    __typeof__(seqcore_lstm_bwd_f64) *lstm_bwd_f64;
    __typeof__(seqcore_gru_bwd_f32) *gru_bwd_f32;
    __typeof__(seqcore_gru_bwd_f64) *gru_bwd_f64;
    __typeof__(seqcore_rnn_fwd_f32) *rnn_fwd_f32;
    __typeof__(seqcore_rnn_fwd_f64) *rnn_fwd_f64;
    __typeof__(seqcore_rnn_bwd_f32) *rnn_bwd_f32;
    __typeof__(seqcore_rnn_bwd_f64) *rnn_bwd_f64;
    __typeof__(seqcore_lstm_proj_fwd_f32) *lstm_proj_fwd_f32;
    __typeof__(seqcore_lstm_proj_fwd_f64) *lstm_proj_fwd_f64;
    __typeof__(seqcore_lstm_proj_bwd_f32) *lstm_proj_bwd_f32;
    __typeof__(seqcore_lstm_proj_bwd_f64) *lstm_proj_bwd_f64;
    __typeof__(seqcore_f16_to_f32) *f16_to_f32;
    __typeof__(seqcore_f32_to_f16) *f32_to_f16;
    /* internal, for the checks */
    int (*gemm_f32)(int64_t M, int64_t N, int64_t K, const float *a, int64_t sam, int64_t sak,
                    const float *b, int64_t sbk, int64_t sbn, int accumulate, float *c,
                    int64_t ldc);
    int (*gemm_f64)(int64_t M, int64_t N, int64_t K, const double *a, int64_t sam,
                    int64_t sak, const double *b, int64_t sbk, int64_t sbn, int accumulate,
                    double *c, int64_t ldc);
    void (*vec_math_f32)(int fn, int64_t n, const float *x, float *y);
    void (*vec_exp_f64)(int64_t n, const double *x, double *y);
} seqcore_kernel_table;

/* The table of level `isa` (dispatch.c), or NULL when it is not compiled or this CPU lacks
 * it. Every level's entry points can be called side by side. */
const seqcore_kernel_table *seqcore_kernel_table_for(const char *isa);

#endif
