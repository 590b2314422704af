/* Work memory for the kernels' calls (internal: not part of the cffi interface).
 *
 * A call that needs megabytes of scratch (the recurrent forward's packed weights: 8 MB for
 * LSTM H512) would otherwise get them from malloc on every call, and glibc maps blocks that
 * large afresh each time: the kernel faults in and zeroes every page on first touch, ~3,000
 * page faults and ~10% of the LSTM B64 forward. Blocks given back here are kept (a few, of
 * bounded size) for the next call instead, mapped with transparent huge pages where Linux
 * offers them, and outside malloc's heap, so that malloc's own thresholds (which adapt to
 * the sizes freed) are left as the rest of the process set them.
 *
 * Thread-safe: the kept blocks are taken and given back by atomic exchanges; calls that
 * find none allocate their own. Memory is uninitialized and 64-byte aligned.
 */
#ifndef SEQCORE_SCRATCH_H
#define SEQCORE_SCRATCH_H
#include <stddef.h>
#include <stdint.h>

/* At least `bytes` of memory, or NULL when out of memory. */
void *seqcore_scratch_take(size_t bytes);
/* Gives back a block from seqcore_scratch_take (NULL: nothing). */
void seqcore_scratch_give(void *block);
/* One block cut into n parts of bytes[i] bytes, each 64-byte aligned, at part[i] (NULL when
 * bytes[i] is 0), all zero when `zeroed`; returns the block (to give back), NULL when out
 * of memory. Every kernel's per-call or per-thread work memory is carved here. */
void *seqcore_scratch_take_parts(int n, const int64_t *bytes, void **part, int zeroed);

#endif
