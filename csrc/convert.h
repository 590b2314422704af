#ifndef SEQCORE_CONVERT_H
#define SEQCORE_CONVERT_H
#include <stdint.h>

/* float16 (IEEE binary16, as uint16_t bits) <-> float32, elementwise over n values: a
 * float16 call's arrays are widened to float32 for the kernels and its results narrowed
 * back. Narrowing rounds to nearest even (subnormals kept, overflow to inf, NaN stays NaN:
 * NumPy's astype, bit for bit). Return 0, or -1 (SEQCORE_EINVAL) for n < 0 or a NULL array
 * with n > 0. */
int seqcore_f16_to_f32(const uint16_t *src, float *dst, int64_t n);
int seqcore_f32_to_f16(const float *src, uint16_t *dst, int64_t n);

#endif
