/* Where a key (or value) row lies in a KV cache, dense or paged: the one definition the
 * append and the attention of kvcache.c both use.
 *
 * Dense (B, Hkv, S_max, width): row `pos` of sequence b is slot pos of block b
 * (block_rows = S_max). Paged (num_blocks, Hkv, block_rows, width): it is slot
 * pos % block_rows of block block_table[b][pos / block_rows]. Rows pos .. pos + 15 with pos a
 * multiple of 16 are contiguous either way (block_rows is a multiple of 16 when paged).
 */
#ifndef SEQCORE_PAGED_KV_H
#define SEQCORE_PAGED_KV_H
#include <stdint.h>

typedef struct {
    const int32_t *table;  /* (B, max_blocks) or NULL: dense */
    int64_t max_blocks, block_rows, Hkv;
} kv_layout;

/* Element offset of row pos of (sequence b, kv head hk) in a cache of rows `width` long. */
static inline int64_t kv_row(const kv_layout *kv, int64_t b, int64_t hk, int64_t pos,
                             int64_t width) {
    int64_t block = kv->table ? kv->table[b * kv->max_blocks + pos / kv->block_rows] : b;
    int64_t slot = kv->table ? pos % kv->block_rows : pos;
    return ((block * kv->Hkv + hk) * kv->block_rows + slot) * width;
}

#endif
