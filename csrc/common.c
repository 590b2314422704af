#include "seqcore.h"
#ifdef _OPENMP
#include <omp.h>
#endif

int seqcore_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

int seqcore_has_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}
