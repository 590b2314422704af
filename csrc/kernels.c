/* This ISA level's kernel table (see kernels.h; compiled once per level like the kernels,
 * so every name below is the level's own copy). */
#include "isa.h"
#include "kernels.h"
#include "gemm.h"
#include "simd.h"

/* y = f(x) elementwise with the vector math of this level (vector body, masked tail). */
static void seqcore_vec_math_f32(int fn, int64_t n, const float *x, float *y) {
    for (int64_t i = 0; i < n; i += VF) {
        vf v = vf_load_n(x + i, n - i);
        switch (fn) {
        case SEQCORE_VEC_EXP: v = vf_exp(v); break;
        case SEQCORE_VEC_SIGMOID: v = vf_sigmoid(v); break;
        case SEQCORE_VEC_TANH: v = vf_tanh(v); break;
        default: v = vf_exp2_nonpos(v); break;
        }
        vf_store_n(y + i, v, n - i);
    }
}

/* y = exp(x) elementwise with vd_exp (vector body, scalar tail from lane 0). */
static void seqcore_vec_exp_f64(int64_t n, const double *x, double *y) {
    int64_t i = 0;
    for (; i + VD <= n; i += VD) vd_store(y + i, vd_exp(vd_load(x + i)));
    for (; i < n; i++) y[i] = simd_exp(x[i]);
}

const seqcore_kernel_table seqcore_kernels = {
    SEQCORE_ISA_NAME,
    seqcore_attention_fwd_f32, seqcore_attention_fwd_f64,
    seqcore_attention_bwd_f32, seqcore_attention_bwd_f64,
    seqcore_attention_kvcache_f32, seqcore_attention_kvcache_f64,
    seqcore_lstm_fwd_f32, seqcore_lstm_fwd_f64,
    seqcore_gru_fwd_f32, seqcore_gru_fwd_f64,
    seqcore_lstm_bwd_f32, seqcore_lstm_bwd_f64,
    seqcore_gru_bwd_f32, seqcore_gru_bwd_f64,
    seqcore_rnn_fwd_f32, seqcore_rnn_fwd_f64,
    seqcore_rnn_bwd_f32, seqcore_rnn_bwd_f64,
    seqcore_lstm_proj_fwd_f32, seqcore_lstm_proj_fwd_f64,
    seqcore_lstm_proj_bwd_f32, seqcore_lstm_proj_bwd_f64,
    seqcore_f16_to_f32, seqcore_f32_to_f16,
    seqcore_gemm_f32, seqcore_gemm_f64,
    seqcore_vec_math_f32, seqcore_vec_exp_f64,
};
