/* float16 <-> float32 (convert.c) of each level against the definition of binary16: every
 * half widened, and every finite half, every midpoint between neighbours (ties to even),
 * overflow and NaN narrowed. */
#include "check.h"

/* The value of half h from its fields, in double: (-1)^s 2^(e - 15) (1 + m / 1024), or
 * 2^-24 m for subnormals. */
static double half_value(uint16_t h) {
    int s = h >> 15, e = (h >> 10) & 0x1F, m = h & 0x3FF;
    double mag = e == 0x1F ? (m ? NAN : INFINITY) : e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
    return s ? -mag : mag;
}

void check_convert(const seqcore_kernel_table *kt, check_stats *st) {
    enum { NH = 1 << 16 };
    uint16_t *h = malloc(NH * sizeof(uint16_t)), *back = malloc(2 * NH * sizeof(uint16_t));
    float *f = malloc(2 * NH * sizeof(float));
    for (int i = 0; i < NH; i++) h[i] = (uint16_t)i;
    kt->f16_to_f32(h, f, NH);
    int wrong = 0;
    for (int i = 0; i < NH; i++) {
        double want = half_value(h[i]);
        wrong += isnan(want) ? !isnan(f[i]) : (double)f[i] != want || !signbit(f[i]) != !signbit(want);
    }
    check_report(st, kt->isa, "float16 -> float32, all 65536 halves", "f", wrong, 0);

    /* narrowing: the finite non-negative halves 0 .. 0x7BFF, then the midpoints between
     * neighbours (in float exactly: 12 significant bits), then 65520 and NaN */
    int n = 0, n_fin = 0x7C00;
    for (int i = 0; i < n_fin; i++) f[n++] = (float)half_value((uint16_t)i);
    for (int i = 0; i + 1 < n_fin; i++)
        f[n++] = (float)((half_value((uint16_t)i) + half_value((uint16_t)(i + 1))) / 2);
    f[n++] = 65520.0f;
    f[n++] = NAN;
    kt->f32_to_f16(f, back, n);
    wrong = 0;
    for (int i = 0; i < n_fin; i++) wrong += back[i] != i;
    for (int i = 0; i + 1 < n_fin; i++) {  /* a tie goes to the even neighbour */
        uint16_t even = (i & 1) ? (uint16_t)(i + 1) : (uint16_t)i;
        wrong += back[n_fin + i] != even;
    }
    wrong += back[n - 2] != 0x7C00;                                   /* overflow: inf */
    wrong += (back[n - 1] & 0x7C00) != 0x7C00 || (back[n - 1] & 0x3FF) == 0;  /* NaN */
    check_report(st, kt->isa, "float32 -> float16: halves, midpoints (to even), 65520, NaN", "h",
                 wrong, 0);
    free(h);
    free(back);
    free(f);
}
