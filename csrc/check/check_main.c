/* seqcore-check [-v] [level ...]: the C reference checks at every ISA level this build has
 * and this CPU runs (or the named ones), on one thread and on all of them (a kernel must not
 * depend on how its work is split). Exit status 1 if any check fails; a named level the CPU
 * cannot run is an error too. */
#include "check.h"
#ifdef _OPENMP
#include <omp.h>
#endif

static void run_level(const seqcore_kernel_table *kt, check_stats *st, int threads) {
    int before = st->failures;
#ifdef _OPENMP
    omp_set_num_threads(threads);
#endif
    check_vec_math(kt, st);
    check_convert(kt, st);
    check_gemm(kt, st);
    check_attention(kt, st);
    check_kvcache(kt, st);
    check_recurrent(kt, st);
    printf("%-8s %d thread(s): %s (%d failures)\n", kt->isa, threads,
           st->failures == before ? "ok" : "FAILED", st->failures - before);
}

int main(int argc, char **argv) {
    check_stats st = {0, 0, 0};
    const char *named[8];
    int n_named = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-v") == 0) st.verbose = 1;
        else if (n_named < 8) named[n_named++] = argv[i];
    }
    printf("seqcore C checks: levels compiled %s\n", seqcore_isa_compiled());
    char levels[64];
    snprintf(levels, sizeof levels, "%s", seqcore_isa_compiled());
    int ran = 0;
    for (char *isa = strtok(levels, ","); isa; isa = strtok(NULL, ",")) {
        int wanted = n_named == 0;
        for (int i = 0; i < n_named; i++) wanted |= strcmp(named[i], isa) == 0;
        if (!wanted) continue;
        const seqcore_kernel_table *kt = seqcore_kernel_table_for(isa);
        if (!kt) {
            printf("%-8s skipped: this CPU cannot run it\n", isa);
            if (n_named) st.failures++;
            continue;
        }
        int most = 1;
#ifdef _OPENMP
        most = omp_get_max_threads() > 1 ? omp_get_max_threads() : 3;
#endif
        run_level(kt, &st, 1);
        run_level(kt, &st, most);
        ran++;
    }
    printf("%d level(s), %d comparisons, %d failures\n", ran, st.cases, st.failures);
    return st.failures || !ran ? 1 : 0;
}
