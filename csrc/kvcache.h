#ifndef SEQCORE_KVCACHE_H
#define SEQCORE_KVCACHE_H
#include <stdint.h>

/* Attention against a KV cache (decoding, chunked prefill), dense or paged.
 *
 * q (B, Hq, Sq, D); the caches are dense, k_cache (B, Hkv, S_max, D) and v_cache
 * (B, Hkv, S_max, Dv) with block_table NULL and block_rows = S_max, num_blocks = B; or
 * paged, (num_blocks, Hkv, block_rows, D|Dv) with block_table (B, max_blocks) int32: token
 * position t of sequence b is slot t % block_rows of block block_table[b][t / block_rows]
 * (block_rows a multiple of 16). k_new (B, Hkv, S_new, D) and v_new (B, Hkv, S_new, Dv), if
 * S_new > 0, are first written into the caches at positions cache_seqlens[b] ..; sequence b
 * then attends over L_b = cache_seqlens[b] + S_new keys, the band (window_left/right, -1
 * unbounded) aligned to the bottom right of its own L_b. Query head h reads kv head
 * h / (Hq / Hkv); s = scale * q.k, then softcap * tanh(s / softcap) when softcap > 0.
 * out (B, Hq, Sq, Dv), lse (B, Hq, Sq) (natural log; rows that see no key: out 0, lse -inf).
 * Only the rows of the new keys are written in the caches. Returns 0, -1 (invalid: sizes,
 * a length past the capacity, a block index out of range) or -2 (out of memory).
 */
typedef struct {
    int64_t B, Hq, Hkv, Sq, D, Dv, S_new;
    int64_t num_blocks, block_rows, max_blocks;
    const int32_t *cache_seqlens;
    const int32_t *block_table;
    double scale;
    double softcap;
    int64_t window_left, window_right;
} seqcore_kvcache_problem;

int seqcore_attention_kvcache_f32(const seqcore_kvcache_problem *p, const float *q,
                                  float *k_cache, float *v_cache, const float *k_new,
                                  const float *v_new, float *out, float *lse);
int seqcore_attention_kvcache_f64(const seqcore_kvcache_problem *p, const double *q,
                                  double *k_cache, double *v_cache, const double *k_new,
                                  const double *v_new, double *out, double *lse);

#endif
