/* Kept scratch blocks (see scratch.h). */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS, MADV_HUGEPAGE under -std=c11 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "scratch.h"

#if defined(__linux__)
#include <sys/mman.h>
#define SCRATCH_MMAP 1
#endif

/* A block is HEAD bytes of header (the size of the whole mapping) and then the data. */
enum { HEAD = 64 };
#define PAGE ((size_t)4096)
#define HUGE_PAGE ((size_t)2 << 20)
/* At most this many bytes are kept in all. */
#define KEEP_BYTES ((size_t)256 << 20)

#if !defined(__STDC_NO_ATOMICS__)
#include <stdatomic.h>
/* Up to KEEP blocks wait for the next calls: a backward holds five at once (its own, the
 * gathered h, a gemm's packed B and each thread's packed A), and a forward one more. */
#define KEEP 8
static _Atomic(void *) kept[KEEP];
/* capacity of the block in each slot, readable without owning it (a block read through a
 * slot's pointer may be taken and unmapped by another thread meanwhile); only a hint: the
 * capacity of a block taken by exchange is checked again */
static atomic_size_t kept_cap[KEEP];
static atomic_size_t kept_bytes;
#endif

static size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

static size_t *head_of(void *block) { return (size_t *)((char *)block - HEAD); }

static size_t capacity(void *block) { return *head_of(block) - HEAD; }

static void *map_block(size_t bytes) {
    if (bytes > SIZE_MAX - HUGE_PAGE - HEAD)
        return NULL;
#ifdef SCRATCH_MMAP
    size_t total = round_up(HEAD + bytes, HEAD + bytes >= HUGE_PAGE ? HUGE_PAGE : PAGE);
    void *m = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return NULL;
#ifdef MADV_HUGEPAGE
    if (total >= HUGE_PAGE)  /* fewer faults and TLB misses on the packed weights */
        madvise(m, total, MADV_HUGEPAGE);
#endif
#else
    size_t total = round_up(HEAD + bytes, 64);
    void *m = aligned_alloc(64, total);
    if (!m)
        return NULL;
#endif
    *(size_t *)m = total;
    return (char *)m + HEAD;
}

static void unmap_block(void *block) {
#ifdef SCRATCH_MMAP
    munmap(head_of(block), *head_of(block));
#else
    free(head_of(block));
#endif
}

/* SEQCORE_POISON_SCRATCH=1 in the environment fills every block taken with 0xFF bytes
 * (NaN as float or double), so that a kernel reading scratch it did not write fails its
 * tests, where blocks kept from earlier calls would hide it (the test suite sets it). */
static int poison_wanted(void) {
    const char *v = getenv("SEQCORE_POISON_SCRATCH");
    return v && *v && strcmp(v, "0") != 0;
}

static void *take_block(size_t bytes);

void *seqcore_scratch_take(size_t bytes) {
    void *block = take_block(bytes);
    if (block && poison_wanted())
        memset(block, 0xFF, bytes);
    return block;
}

static void *take_block(size_t bytes) {
#ifdef KEEP
    /* the smallest kept block that is large enough: found by looking (plain loads), then
     * taken by one exchange (another thread may have taken it meanwhile: look again) */
    for (int attempt = 0; attempt < 4; attempt++) {
        int best = -1;
        size_t best_cap = 0;
        for (int i = 0; i < KEEP; i++) {
            size_t cap = atomic_load_explicit(&kept_cap[i], memory_order_relaxed);
            if (atomic_load_explicit(&kept[i], memory_order_relaxed) && cap >= bytes &&
                (best < 0 || cap < best_cap))
                best = i, best_cap = cap;
        }
        if (best < 0)
            break;
        void *b = atomic_exchange(&kept[best], NULL);
        if (b && capacity(b) >= bytes) {
            atomic_fetch_sub(&kept_bytes, capacity(b));
            return b;
        }
        if (b)  /* another block took its place: put it back */
            seqcore_scratch_give(b);
    }
    /* none fits: drop the smallest kept block, so that the kept blocks do not pile up */
    int smallest = -1;
    size_t small_cap = 0;
    for (int i = 0; i < KEEP; i++) {
        size_t cap = atomic_load_explicit(&kept_cap[i], memory_order_relaxed);
        if (atomic_load_explicit(&kept[i], memory_order_relaxed) &&
            (smallest < 0 || cap < small_cap))
            smallest = i, small_cap = cap;
    }
    if (smallest >= 0) {
        void *b = atomic_exchange(&kept[smallest], NULL);
        if (b) {
            atomic_fetch_sub(&kept_bytes, capacity(b));
            unmap_block(b);
        }
    }
#endif
    return map_block(bytes);
}

void *seqcore_scratch_take_parts(int n, const int64_t *bytes, void **part, int zeroed) {
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += round_up((size_t)bytes[i], 64);
    char *block = seqcore_scratch_take(total > 0 ? total : 64), *at = block;
    if (block && zeroed)
        memset(block, 0, total);
    for (int i = 0; i < n; i++) {
        part[i] = block && bytes[i] > 0 ? at : NULL;
        at += block ? round_up((size_t)bytes[i], 64) : 0;
    }
    return block;
}

void seqcore_scratch_give(void *block) {
    if (!block)
        return;
#ifdef KEEP
    size_t size = capacity(block);
    if (atomic_fetch_add(&kept_bytes, size) + size <= KEEP_BYTES)
        for (int i = 0; i < KEEP; i++) {
            void *empty = NULL;
            if (atomic_load_explicit(&kept[i], memory_order_relaxed))
                continue;
            atomic_store_explicit(&kept_cap[i], size, memory_order_relaxed);
            if (atomic_compare_exchange_strong(&kept[i], &empty, block))
                return;
        }
    atomic_fetch_sub(&kept_bytes, size);
#endif
    unmap_block(block);
}
