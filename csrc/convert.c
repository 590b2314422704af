/* float16 <-> float32 (convert.h), compiled once per ISA level: F16C on the x86 vector
 * levels (vcvtph2ps / vcvtps2ph, 8 values an instruction), NEON's fcvtl / fcvtn on aarch64,
 * and everywhere the plain bit arithmetic below, which also does the tails. NumPy converts
 * float16 one value at a time (~2.5 ns each here): a float16 attention call spent as long
 * converting as computing. */
#include <string.h>

#include "isa.h"
#include "kernels.h"
#include "parallel.h"
#include "simd.h"

/* ---- scalar, bit by bit (the reference the vector paths must equal) */

static inline uint32_t float_bits(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }
static inline float bits_float(uint32_t u) { float x; memcpy(&x, &u, 4); return x; }

static inline float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF;
    if (exp == 0x1F)  /* inf; NaN quieted, its payload kept (as vcvtph2ps and fcvtl do) */
        return bits_float(sign | 0x7F800000u | (man ? 0x400000u : 0) | (man << 13));
    if (exp == 0) {   /* zero, subnormal: man * 2^-24, exact in float */
        float mag = (float)man * 5.9604644775390625e-8f;
        return bits_float(sign | float_bits(mag));
    }
    return bits_float(sign | ((exp + 112) << 23) | (man << 13));
}

static inline uint16_t float_to_half(float x) {
    uint32_t u = float_bits(x), sign = (u >> 16) & 0x8000, a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u)  /* NaN: quiet, the top of the payload kept */
        return (uint16_t)(sign | 0x7E00 | ((a >> 13) & 0x3FF));
    if (a >= 0x477FF000u)  /* >= 65520 (the midpoint above the largest half) and inf */
        return (uint16_t)(sign | 0x7C00);
    if (a < 0x38800000u) {  /* below 2^-14: a subnormal half, in units of 2^-24 */
        float units = bits_float(a) * 16777216.0f;  /* exact (a power of two) */
        /* rounded to an integer, half to even, by float's own rounding: units + 2^23 has
         * a unit last place (1024 is the smallest normal half, whose bits follow on) */
        float r = (units + 8388608.0f) - 8388608.0f;
        return (uint16_t)(sign | (uint32_t)r);
    }
    /* normal: drop 13 mantissa bits, round half to even (a carry into the exponent is
     * right, up to inf) */
    uint32_t rounded = a + 0xFFFu + ((a >> 13) & 1u);
    return (uint16_t)(sign | ((rounded - 0x38000000u) >> 13));
}

static void f16_to_f32_run(const uint16_t *src, float *dst, int64_t n) {
    int64_t i = 0;
#if defined(SIMD_AVX2) || defined(SIMD_AVX512)
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
#elif defined(SIMD_NEON)
    for (; i + 4 <= n; i += 4)
        vst1q_f32(dst + i, vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(src + i))));
#endif
    for (; i < n; i++) dst[i] = half_to_float(src[i]);
}

static void f32_to_f16_run(const float *src, uint16_t *dst, int64_t n) {
    int64_t i = 0;
#if defined(SIMD_AVX2) || defined(SIMD_AVX512)
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#elif defined(SIMD_NEON)
    for (; i + 4 <= n; i += 4)
        vst1_u16(dst + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(src + i))));
#endif
    for (; i < n; i++) dst[i] = float_to_half(src[i]);
}

/* run(src + i0, dst + i0, len) over chunks of n values (elements of src_size / dst_size
 * bytes), on threads once a call is long enough to pay for them (~1 ns a value). */
enum { CONVERT_CHUNK = 1 << 16 };

static int run_chunks(void (*run)(const void *, void *, int64_t), const void *src, void *dst,
                      int64_t n, int64_t src_size, int64_t dst_size) {
    if (n < 0 || (n > 0 && (!src || !dst))) return SEQCORE_EINVAL;
    int64_t chunks = (n + CONVERT_CHUNK - 1) / CONVERT_CHUNK;
#pragma omp parallel for schedule(static) if (chunks > 1 && seqcore_worth_threads(8.0 * n))
    for (int64_t c = 0; c < chunks; c++) {
        int64_t i0 = c * CONVERT_CHUNK, len = n - i0 < CONVERT_CHUNK ? n - i0 : CONVERT_CHUNK;
        run((const char *)src + i0 * src_size, (char *)dst + i0 * dst_size, len);
    }
    return SEQCORE_OK;
}

static void widen(const void *src, void *dst, int64_t n) { f16_to_f32_run(src, dst, n); }
static void narrow(const void *src, void *dst, int64_t n) { f32_to_f16_run(src, dst, n); }

int seqcore_f16_to_f32(const uint16_t *src, float *dst, int64_t n) {
    return run_chunks(widen, src, dst, n, sizeof *src, sizeof *dst);
}

int seqcore_f32_to_f16(const float *src, uint16_t *dst, int64_t n) {
    return run_chunks(narrow, src, dst, n, sizeof *src, sizeof *dst);
}
