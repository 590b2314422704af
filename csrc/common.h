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

#endif
