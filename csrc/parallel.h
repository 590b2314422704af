/* When a kernel call is worth the threads (internal: not part of the cffi interface).
 *
 * An OpenMP parallel region wakes the other threads and waits for all of them at its end:
 * a few microseconds on 2 cores, more on many. Below SEQCORE_PARALLEL_MIN_FLOPS of work
 * (about 10 us on one core) a call runs on the calling thread alone, so small calls (a
 * tiny attention, one RNN cell step) cost no fork-join.
 */
#ifndef SEQCORE_PARALLEL_H
#define SEQCORE_PARALLEL_H
#include "common.h"

#define SEQCORE_PARALLEL_MIN_FLOPS 4e5

static inline int seqcore_worth_threads(double flops) {
    return flops >= SEQCORE_PARALLEL_MIN_FLOPS && seqcore_max_threads() > 1;
}

#endif
