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
    /* the smallest kept block that is large enough; the others go back */
    void *found[KEEP], *best = NULL;
    int n = 0;
    for (int i = 0; i < KEEP; i++)
        if ((found[n] = atomic_exchange(&kept[i], NULL))) {
            atomic_fetch_sub(&kept_bytes, capacity(found[n]));
            n++;
        }
    for (int i = 0; i < n; i++)
        if (capacity(found[i]) >= bytes && (!best || capacity(found[i]) < capacity(best)))
            best = found[i];
    /* none fits: the smallest is dropped, so that the kept blocks do not pile up */
    void *drop = NULL;
    for (int i = 0; i < n && !best; i++)
        if (!drop || capacity(found[i]) < capacity(drop))
            drop = found[i];
    for (int i = 0; i < n; i++)
        if (found[i] != best && found[i] != drop)
            seqcore_scratch_give(found[i]);
    if (drop)
        unmap_block(drop);
    if (best)
        return best;
#endif
    return map_block(bytes);
}

void seqcore_scratch_give(void *block) {
    if (!block)
        return;
#ifdef KEEP
    size_t size = capacity(block);
    if (atomic_fetch_add(&kept_bytes, size) + size <= KEEP_BYTES)
        for (int i = 0; i < KEEP; i++) {
            void *empty = NULL;
            if (atomic_compare_exchange_strong(&kept[i], &empty, block))
                return;
        }
    atomic_fetch_sub(&kept_bytes, size);
#endif
    unmap_block(block);
}
