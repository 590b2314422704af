/* The causal / sliding-window band: which keys a query sees. One definition for every C
 * kernel (attention.c, kvcache.c); the Python reference and the Triton kernels hold the same
 * rule (seqcore/reference/attention.py band, kernels/_common.py band_mask).
 *
 * Keys are aligned to the bottom right: with off = Sk - Sq, query i sees key j iff
 *   (left  < 0 or j >= i + off - left) and (right < 0 or j <= i + off + right),
 * -1 meaning unbounded (causal is right = 0, folded in by the caller).
 */
#ifndef SEQCORE_BAND_H
#define SEQCORE_BAND_H
#include <stdint.h>

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
static inline int64_t clamp64(int64_t x, int64_t lo, int64_t hi) { return min64(max64(x, lo), hi); }
static inline int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
static inline int64_t round_up(int64_t a, int64_t b) { return cdiv(a, b) * b; }

/* The visible keys of query i in one sequence: [band_lo(i), band_hi(i)); both grow with i. */
typedef struct { int64_t off, left, right, Sq, Sk; } band;

static inline band band_of(int64_t left, int64_t right, int64_t Sq, int64_t Sk) {
    band bd = {Sk - Sq, left, right, Sq, Sk};
    return bd;
}

static inline int64_t band_lo(const band *bd, int64_t i) {
    return bd->left < 0 ? 0 : clamp64(i + bd->off - bd->left, 0, bd->Sk);
}

static inline int64_t band_hi(const band *bd, int64_t i) {
    return bd->right < 0 ? bd->Sk : clamp64(i + bd->off + bd->right + 1, 0, bd->Sk);
}

/* First query whose band reaches key j (band_hi(i) > j). */
static inline int64_t band_first_query(const band *bd, int64_t j) {
    return bd->right < 0 ? 0 : clamp64(j - bd->off - bd->right, 0, bd->Sq);
}

/* One past the last query whose band starts at or before key j (band_lo(i) <= j). */
static inline int64_t band_end_query(const band *bd, int64_t j) {
    return bd->left < 0 ? bd->Sq : clamp64(j - bd->off + bd->left + 1, 0, bd->Sq);
}

#endif
