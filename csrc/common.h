#ifndef SEQCORE_COMMON_H
#define SEQCORE_COMMON_H
#include <stdint.h>

#define SEQCORE_OK 0
#define SEQCORE_EINVAL (-1)
#define SEQCORE_ENOMEM (-2)

/* Threads an OpenMP region would use (1 when built without OpenMP). */
int seqcore_max_threads(void);
/* 1 if built with OpenMP. */
int seqcore_has_openmp(void);

/* ISA levels (dispatch.c): the kernels are compiled once per level and one level runs.
 * Levels compiled into this build, best first, comma-separated ("avx512,avx2,baseline"). */
const char *seqcore_isa_compiled(void);
/* 1 if this CPU runs level `isa`, 0 if it lacks it, -1 if no such level is compiled. */
int seqcore_isa_supported(const char *isa);
/* Run the kernels at level `isa` from now on (NULL: the best this CPU runs). Returns 0, or
 * -1 (SEQCORE_EINVAL) for a level that is not compiled or that the CPU lacks. Not while
 * kernels run. */
int seqcore_isa_select(const char *isa);
/* The level the kernels run at. */
const char *seqcore_isa_active(void);

#endif
