#ifndef SEQCORE_ATTENTION_H
#define SEQCORE_ATTENTION_H
#include <stdint.h>

/* One attention problem: dense batches and packed (varlen) sequences share the kernels.
 *
 * Dense (cu_q == cu_k == NULL): n_seq = B sequences of Sq queries and Sk keys;
 *   q (B, Hq, Sq, D), k (B, Hkv, Sk, D), v (B, Hkv, Sk, Dv), out (B, Hq, Sq, Dv),
 *   lse (B, Hq, Sq); bias (optional) is read as bias[b*s0 + h*s1 + i*s2 + j*s3] with the
 *   element strides bias_strides (zero strides broadcast), dbias is a full contiguous
 *   (B, Hq, Sq, Sk) array.
 * Varlen (cu_q, cu_k: int32 (n_seq + 1) offsets, starting at 0, non-decreasing): sequence s
 *   holds rows cu[s] .. cu[s+1] of q (Tq, Hq, D), k (Tk, Hkv, D), v (Tk, Hkv, Dv),
 *   out (Tq, Hq, Dv), lse (Tq, Hq); Sq, Sk are the longest lengths; no bias.
 * All arrays contiguous. Query head h reads kv head h / (Hq / Hkv). s = scale * q.k, then
 * softcap * tanh(s / softcap) when softcap > 0, then + bias, then keys outside the band
 * (window_left/right, -1 unbounded, aligned to the bottom right) get -inf.
 * Dropout (seqcore/reference/dropout.py, csrc/philox.h): off when dropout_scale == 0 (as in
 *   a zeroed struct); else probability (sequence b, query head h, query i, key j; i and j
 *   within the sequence) is kept iff word 0 of Philox-4x32-10 keyed by dropout_seed at
 *   counter (j, i, b * Hq + h, 0), shifted right by one, is >= dropout_threshold
 *   (min(floor(p 2^31), 2^31 - 1)), and the kept ones are multiplied by dropout_scale
 *   (1 / (1 - p)) before P V; lse is that of the probabilities before dropout.
 */
typedef struct {
    int64_t n_seq, Hq, Hkv, Sq, Sk, D, Dv;
    const int32_t *cu_q;
    const int32_t *cu_k;
    double scale;
    double softcap;
    int64_t window_left, window_right;
    int64_t bias_strides[4];
    uint64_t dropout_seed;
    int64_t dropout_threshold;
    double dropout_scale;
} seqcore_attn_problem;

/* Forward: out and lse (natural log; rows that see no key: out 0, lse -inf).
 * Returns 0, -1 (invalid problem) or -2 (out of memory). */
int seqcore_attention_fwd_f32(const seqcore_attn_problem *p, const float *q, const float *k,
                              const float *v, const float *bias, float *out, float *lse);
int seqcore_attention_fwd_f64(const seqcore_attn_problem *p, const double *q, const double *k,
                              const double *v, const double *bias, double *out, double *lse);

/* Backward from the forward's out and lse: dq, dk, dv; dbias (NULL: not wanted; dense only)
 * gets the gradient of every (capped, biased) score, 0 outside the band. With dropout the
 * problem must be the forward's (same seed): the mask is regenerated, not stored. */
int seqcore_attention_bwd_f32(const seqcore_attn_problem *p, const float *dout, const float *q,
                              const float *k, const float *v, const float *bias, const float *out,
                              const float *lse, float *dq, float *dk, float *dv, float *dbias);
int seqcore_attention_bwd_f64(const seqcore_attn_problem *p, const double *dout, const double *q,
                              const double *k, const double *v, const double *bias,
                              const double *out, const double *lse, double *dq, double *dk,
                              double *dv, double *dbias);

#endif
