/* The vector layer of the C kernels: one set of names, one implementation per ISA level.
 *
 * Every kernel source is compiled once per ISA level (see build.py and isa.h). This header
 * gives the level being compiled its vector types and operations, so a kernel is written
 * once, in terms of VF (floats per vector), VD (doubles per vector) and SIMD_REGS (vector
 * registers), and its register blocking follows from those. In the style of Highway or
 * ATen's Vectorized<T>, but plain C: static inline functions on a vector type per level.
 *
 *   level     vf (float)  vd (double)  registers  FMA
 *   avx512    __m512      __m512d      32         yes   (AVX-512 F/BW/DQ/VL)
 *   avx2      __m256      __m256d      16         yes   (AVX2 + FMA + F16C)
 *   neon      float32x4_t float64x2_t  32         yes   (aarch64 Advanced SIMD)
 *   baseline  16-byte GCC/Clang vector extensions (SSE2 on x86-64, NEON on aarch64 by the
 *             compiler), 16 registers, a * b + c without FMA
 *
 * Operations (f32; the vd_ ones are the subset the double kernels use):
 *   vf_zero, vf_set1, vf_load, vf_store (unaligned), vf_load_n / vf_store_n (the first n
 *   lanes, 0 <= n <= VF; the load zeroes the rest), vf_add, vf_sub, vf_mul, vf_fma(a, b, c)
 *   = a * b + c, vf_fnma(a, b, c) = c - a * b, vf_max / vf_min (NaN in the second operand
 *   is returned: clamps pass NaN through), vf_reduce_add, vf_reduce_max, vf_rcp (1/x to
 *   within float rounding), vf_pow2_magic(t) = 2^n for t = n + 1.5 * 2^23 (integral n in
 *   [-127, 127]; 2^-127 gives exactly 0: the rounding trick below hands n over in t's low
 *   mantissa bits, so 2^n is one shift and one add), masks: vf_lt, vf_le, vf_select(m, a, b) (m ? a : b),
 *   vmask_lanes(lo, hi) (lanes lo <= i < hi), vf_transpose (VF x VF in registers),
 *   vf_keep(v) (v stays in a register: not re-loaded by each use).
 * Derived once for every level, at the end: vf_exp, vf_exp2_nonpos, vf_sigmoid, vf_tanh,
 * vd_exp.
 */
#ifndef SEQCORE_SIMD_H
#define SEQCORE_SIMD_H
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "isa.h"

#if SEQCORE_ISA_LEVEL == SEQCORE_ISA_AVX512
#include <immintrin.h>
#define SIMD_AVX512 1
#elif SEQCORE_ISA_LEVEL == SEQCORE_ISA_AVX2
#include <immintrin.h>
#define SIMD_AVX2 1
#elif SEQCORE_ISA_LEVEL == SEQCORE_ISA_NEON
#include <arm_neon.h>
#define SIMD_NEON 1
#else
#define SIMD_GENERIC 1
#endif

#if defined(__GNUC__)
#define SIMD_INLINE static inline __attribute__((always_inline))
#else
#define SIMD_INLINE static inline
#endif

/* ============================================================================ AVX-512 */
#if defined(SIMD_AVX512)
enum { VF = 16, VD = 8, SIMD_REGS = 32, SIMD_FMA = 1 };
typedef __m512 vf;
typedef __m512d vd;
typedef __mmask16 vmask;

SIMD_INLINE vf vf_zero(void) { return _mm512_setzero_ps(); }
SIMD_INLINE vf vf_set1(float x) { return _mm512_set1_ps(x); }
SIMD_INLINE vf vf_load(const float *p) { return _mm512_loadu_ps(p); }
SIMD_INLINE void vf_store(float *p, vf v) { _mm512_storeu_ps(p, v); }
SIMD_INLINE vmask simd_first_n16(int64_t n) {
    return n >= 16 ? (vmask)0xFFFF : n <= 0 ? (vmask)0 : (vmask)((1u << n) - 1);
}
/* Whole vectors load and store plainly, as at AVX2: a masked store does not forward to a
 * later narrower load on Zen 5 (the RNN forward reads h back lane by lane to pack it). */
SIMD_INLINE vf vf_load_n(const float *p, int64_t n) {
    return n >= 16 ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(simd_first_n16(n), p);
}
SIMD_INLINE void vf_store_n(float *p, vf v, int64_t n) {
    if (n >= 16) _mm512_storeu_ps(p, v);
    else _mm512_mask_storeu_ps(p, simd_first_n16(n), v);
}
SIMD_INLINE vf vf_add(vf a, vf b) { return _mm512_add_ps(a, b); }
SIMD_INLINE vf vf_sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
SIMD_INLINE vf vf_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
SIMD_INLINE vf vf_fma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
SIMD_INLINE vf vf_fnma(vf a, vf b, vf c) { return _mm512_fnmadd_ps(a, b, c); }
SIMD_INLINE vf vf_max(vf a, vf b) { return _mm512_max_ps(a, b); }
SIMD_INLINE vf vf_min(vf a, vf b) { return _mm512_min_ps(a, b); }
SIMD_INLINE float vf_reduce_add(vf v) { return _mm512_reduce_add_ps(v); }
SIMD_INLINE float vf_reduce_max(vf v) { return _mm512_reduce_max_ps(v); }
SIMD_INLINE vf vf_rcp(vf v) {  /* rcp14 and one Newton step: error ~2^-28 */
    vf r = _mm512_rcp14_ps(v);
    return _mm512_fmadd_ps(r, _mm512_fnmadd_ps(v, r, _mm512_set1_ps(1.0f)), r);
}
SIMD_INLINE vf vf_pow2_magic(vf t) {
    return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_slli_epi32(_mm512_castps_si512(t), 23),
                                                _mm512_set1_epi32(127 << 23)));
}
SIMD_INLINE vmask vf_lt(vf a, vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
SIMD_INLINE vmask vf_le(vf a, vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_LE_OQ); }
SIMD_INLINE vf vf_select(vmask m, vf a, vf b) { return _mm512_mask_blend_ps(m, b, a); }
SIMD_INLINE vmask vmask_lanes(int64_t lo, int64_t hi) {
    lo = lo < 0 ? 0 : lo;
    return (vmask)(simd_first_n16(hi) & ~simd_first_n16(lo));
}

/* r[i][j] <- r[j][i] for 16 x 16 floats: unpacks within 128-bit lanes, then moves of whole
 * lanes (64 shuffles instead of 256 scalar copies). */
SIMD_INLINE void vf_transpose(vf r[16]) {
    vf t[16], u[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {  /* lane L of u[i + c]: column 4L + c of rows i..i+3 */
        __m512d a = _mm512_castps_pd(t[i]), b = _mm512_castps_pd(t[i + 1]);
        __m512d c = _mm512_castps_pd(t[i + 2]), d = _mm512_castps_pd(t[i + 3]);
        u[i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        u[i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        u[i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        u[i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    for (int c = 0; c < 4; c++) {  /* column 4L + c: lane L of u[c], u[4+c], u[8+c], u[12+c] */
        vf v0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88);
        vf v1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xDD);
        vf v2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88);
        vf v3 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xDD);
        r[c] = _mm512_shuffle_f32x4(v0, v2, 0x88);
        r[8 + c] = _mm512_shuffle_f32x4(v0, v2, 0xDD);
        r[4 + c] = _mm512_shuffle_f32x4(v1, v3, 0x88);
        r[12 + c] = _mm512_shuffle_f32x4(v1, v3, 0xDD);
    }
}

SIMD_INLINE vd vd_zero(void) { return _mm512_setzero_pd(); }
SIMD_INLINE vd vd_set1(double x) { return _mm512_set1_pd(x); }
SIMD_INLINE vd vd_load(const double *p) { return _mm512_loadu_pd(p); }
SIMD_INLINE void vd_store(double *p, vd v) { _mm512_storeu_pd(p, v); }
SIMD_INLINE vd vd_load_n(const double *p, int64_t n) {
    return _mm512_maskz_loadu_pd((__mmask8)simd_first_n16(n < 8 ? n : 8), p);
}
SIMD_INLINE void vd_store_n(double *p, vd v, int64_t n) {
    _mm512_mask_storeu_pd(p, (__mmask8)simd_first_n16(n < 8 ? n : 8), v);
}
SIMD_INLINE vd vd_add(vd a, vd b) { return _mm512_add_pd(a, b); }
SIMD_INLINE vd vd_mul(vd a, vd b) { return _mm512_mul_pd(a, b); }
SIMD_INLINE vd vd_fma(vd a, vd b, vd c) { return _mm512_fmadd_pd(a, b, c); }
SIMD_INLINE double vd_reduce_add(vd v) { return _mm512_reduce_add_pd(v); }
SIMD_INLINE vd vd_sub(vd a, vd b) { return _mm512_sub_pd(a, b); }
SIMD_INLINE vd vd_fnma(vd a, vd b, vd c) { return _mm512_fnmadd_pd(a, b, c); }
SIMD_INLINE vd vd_max(vd a, vd b) { return _mm512_max_pd(a, b); }
SIMD_INLINE vd vd_min(vd a, vd b) { return _mm512_min_pd(a, b); }
SIMD_INLINE vd vd_pow2_magic(vd t) {
    return _mm512_castsi512_pd(_mm512_add_epi64(_mm512_slli_epi64(_mm512_castpd_si512(t), 52),
                                                _mm512_set1_epi64((int64_t)1023 << 52)));
}

/* ============================================================================ AVX2 + FMA */
#elif defined(SIMD_AVX2)
enum { VF = 8, VD = 4, SIMD_REGS = 16, SIMD_FMA = 1 };
typedef __m256 vf;
typedef __m256d vd;
typedef __m256 vmask;  /* all-ones lanes */

SIMD_INLINE vf vf_zero(void) { return _mm256_setzero_ps(); }
SIMD_INLINE vf vf_set1(float x) { return _mm256_set1_ps(x); }
SIMD_INLINE vf vf_load(const float *p) { return _mm256_loadu_ps(p); }
SIMD_INLINE void vf_store(float *p, vf v) { _mm256_storeu_ps(p, v); }
SIMD_INLINE __m256i simd_first_n8(int64_t n) {
    n = n < 0 ? 0 : n > 8 ? 8 : n;
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
/* Whole vectors load and store plainly: vmaskmovps is microcoded on AMD cores (a masked
 * store of every vector made the LSTM cell update ~10% of a B64 forward on Zen 3). */
SIMD_INLINE vf vf_load_n(const float *p, int64_t n) {
    return n >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, simd_first_n8(n));
}
SIMD_INLINE void vf_store_n(float *p, vf v, int64_t n) {
    if (n >= 8) _mm256_storeu_ps(p, v);
    else _mm256_maskstore_ps(p, simd_first_n8(n), v);
}
SIMD_INLINE vf vf_add(vf a, vf b) { return _mm256_add_ps(a, b); }
SIMD_INLINE vf vf_sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
SIMD_INLINE vf vf_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
SIMD_INLINE vf vf_fma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
SIMD_INLINE vf vf_fnma(vf a, vf b, vf c) { return _mm256_fnmadd_ps(a, b, c); }
SIMD_INLINE vf vf_max(vf a, vf b) { return _mm256_max_ps(a, b); }
SIMD_INLINE vf vf_min(vf a, vf b) { return _mm256_min_ps(a, b); }
SIMD_INLINE float vf_reduce_add(vf v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
SIMD_INLINE float vf_reduce_max(vf v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}
SIMD_INLINE vf vf_rcp(vf v) {  /* rcpps (12 bits) and one Newton step: error ~2^-23 */
    vf r = _mm256_rcp_ps(v);
    return _mm256_fmadd_ps(r, _mm256_fnmadd_ps(v, r, _mm256_set1_ps(1.0f)), r);
}
SIMD_INLINE vf vf_pow2_magic(vf t) {
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_slli_epi32(_mm256_castps_si256(t), 23),
                                                _mm256_set1_epi32(127 << 23)));
}
SIMD_INLINE vmask vf_lt(vf a, vf b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
SIMD_INLINE vmask vf_le(vf a, vf b) { return _mm256_cmp_ps(a, b, _CMP_LE_OQ); }
SIMD_INLINE vf vf_select(vmask m, vf a, vf b) { return _mm256_blendv_ps(b, a, m); }
SIMD_INLINE vmask vmask_lanes(int64_t lo, int64_t hi) {
    return _mm256_castsi256_ps(_mm256_andnot_si256(simd_first_n8(lo), simd_first_n8(hi)));
}

/* r[i][j] <- r[j][i] for 8 x 8 floats (24 shuffles). */
SIMD_INLINE void vf_transpose(vf r[8]) {
    vf t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int c = 0; c < 4; c++) {
        r[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
        r[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
    }
}

SIMD_INLINE vd vd_zero(void) { return _mm256_setzero_pd(); }
SIMD_INLINE vd vd_set1(double x) { return _mm256_set1_pd(x); }
SIMD_INLINE vd vd_load(const double *p) { return _mm256_loadu_pd(p); }
SIMD_INLINE void vd_store(double *p, vd v) { _mm256_storeu_pd(p, v); }
SIMD_INLINE __m256i simd_first_n4x64(int64_t n) {
    n = n < 0 ? 0 : n > 4 ? 4 : n;
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
}
SIMD_INLINE vd vd_load_n(const double *p, int64_t n) {
    return n >= 4 ? _mm256_loadu_pd(p) : _mm256_maskload_pd(p, simd_first_n4x64(n));
}
SIMD_INLINE void vd_store_n(double *p, vd v, int64_t n) {
    if (n >= 4) _mm256_storeu_pd(p, v);
    else _mm256_maskstore_pd(p, simd_first_n4x64(n), v);
}
SIMD_INLINE vd vd_add(vd a, vd b) { return _mm256_add_pd(a, b); }
SIMD_INLINE vd vd_mul(vd a, vd b) { return _mm256_mul_pd(a, b); }
SIMD_INLINE vd vd_fma(vd a, vd b, vd c) { return _mm256_fmadd_pd(a, b, c); }
SIMD_INLINE double vd_reduce_add(vd v) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}
SIMD_INLINE vd vd_sub(vd a, vd b) { return _mm256_sub_pd(a, b); }
SIMD_INLINE vd vd_fnma(vd a, vd b, vd c) { return _mm256_fnmadd_pd(a, b, c); }
SIMD_INLINE vd vd_max(vd a, vd b) { return _mm256_max_pd(a, b); }
SIMD_INLINE vd vd_min(vd a, vd b) { return _mm256_min_pd(a, b); }
SIMD_INLINE vd vd_pow2_magic(vd t) {
    return _mm256_castsi256_pd(_mm256_add_epi64(_mm256_slli_epi64(_mm256_castpd_si256(t), 52),
                                                _mm256_set1_epi64x((int64_t)1023 << 52)));
}

/* ============================================================================ NEON */
#elif defined(SIMD_NEON)
enum { VF = 4, VD = 2, SIMD_REGS = 32, SIMD_FMA = 1 };
typedef float32x4_t vf;
typedef float64x2_t vd;
typedef uint32x4_t vmask;

SIMD_INLINE vf vf_zero(void) { return vdupq_n_f32(0.0f); }
SIMD_INLINE vf vf_set1(float x) { return vdupq_n_f32(x); }
SIMD_INLINE vf vf_load(const float *p) { return vld1q_f32(p); }
SIMD_INLINE void vf_store(float *p, vf v) { vst1q_f32(p, v); }
SIMD_INLINE vf vf_load_n(const float *p, int64_t n) {  /* no masked loads: lane by lane */
    if (n >= 4) return vld1q_f32(p);
    float tmp[4] = {0, 0, 0, 0};
    for (int64_t i = 0; i < n; i++) tmp[i] = p[i];
    return vld1q_f32(tmp);
}
SIMD_INLINE void vf_store_n(float *p, vf v, int64_t n) {
    if (n >= 4) { vst1q_f32(p, v); return; }
    float tmp[4];
    vst1q_f32(tmp, v);
    for (int64_t i = 0; i < n; i++) p[i] = tmp[i];
}
SIMD_INLINE vf vf_add(vf a, vf b) { return vaddq_f32(a, b); }
SIMD_INLINE vf vf_sub(vf a, vf b) { return vsubq_f32(a, b); }
SIMD_INLINE vf vf_mul(vf a, vf b) { return vmulq_f32(a, b); }
SIMD_INLINE vf vf_fma(vf a, vf b, vf c) { return vfmaq_f32(c, a, b); }
SIMD_INLINE vf vf_fnma(vf a, vf b, vf c) { return vfmsq_f32(c, a, b); }
/* x86 semantics (the second operand when either is NaN), which the clamps rely on */
SIMD_INLINE vf vf_max(vf a, vf b) { return vbslq_f32(vcgtq_f32(a, b), a, b); }
SIMD_INLINE vf vf_min(vf a, vf b) { return vbslq_f32(vcltq_f32(a, b), a, b); }
SIMD_INLINE float vf_reduce_add(vf v) { return vaddvq_f32(v); }
SIMD_INLINE float vf_reduce_max(vf v) { return vmaxvq_f32(v); }
SIMD_INLINE vf vf_rcp(vf v) {  /* frecpe (8 bits) and two Newton steps */
    vf r = vrecpeq_f32(v);
    r = vmulq_f32(r, vrecpsq_f32(v, r));
    return vmulq_f32(r, vrecpsq_f32(v, r));
}
SIMD_INLINE vf vf_pow2_magic(vf t) {
    return vreinterpretq_f32_s32(vaddq_s32(vshlq_n_s32(vreinterpretq_s32_f32(t), 23),
                                           vdupq_n_s32(127 << 23)));
}
SIMD_INLINE vmask vf_lt(vf a, vf b) { return vcltq_f32(a, b); }
SIMD_INLINE vmask vf_le(vf a, vf b) { return vcleq_f32(a, b); }
SIMD_INLINE vf vf_select(vmask m, vf a, vf b) { return vbslq_f32(m, a, b); }
SIMD_INLINE vmask vmask_lanes(int64_t lo, int64_t hi) {
    lo = lo < -1 ? -1 : lo > 5 ? 5 : lo;
    hi = hi < -1 ? -1 : hi > 5 ? 5 : hi;
    const int32_t iota[4] = {0, 1, 2, 3};
    int32x4_t i = vld1q_s32(iota);
    return vandq_u32(vcgeq_s32(i, vdupq_n_s32((int32_t)lo)), vcltq_s32(i, vdupq_n_s32((int32_t)hi)));
}
SIMD_INLINE void vf_transpose(vf r[4]) {
    float32x4x2_t a = vtrnq_f32(r[0], r[1]), b = vtrnq_f32(r[2], r[3]);
    r[0] = vcombine_f32(vget_low_f32(a.val[0]), vget_low_f32(b.val[0]));
    r[1] = vcombine_f32(vget_low_f32(a.val[1]), vget_low_f32(b.val[1]));
    r[2] = vcombine_f32(vget_high_f32(a.val[0]), vget_high_f32(b.val[0]));
    r[3] = vcombine_f32(vget_high_f32(a.val[1]), vget_high_f32(b.val[1]));
}

SIMD_INLINE vd vd_zero(void) { return vdupq_n_f64(0.0); }
SIMD_INLINE vd vd_set1(double x) { return vdupq_n_f64(x); }
SIMD_INLINE vd vd_load(const double *p) { return vld1q_f64(p); }
SIMD_INLINE void vd_store(double *p, vd v) { vst1q_f64(p, v); }
SIMD_INLINE vd vd_load_n(const double *p, int64_t n) {
    if (n >= 2) return vld1q_f64(p);
    double tmp[2] = {n > 0 ? p[0] : 0.0, 0.0};
    return vld1q_f64(tmp);
}
SIMD_INLINE void vd_store_n(double *p, vd v, int64_t n) {
    if (n >= 2) vst1q_f64(p, v);
    else if (n == 1) p[0] = vgetq_lane_f64(v, 0);
}
SIMD_INLINE vd vd_add(vd a, vd b) { return vaddq_f64(a, b); }
SIMD_INLINE vd vd_mul(vd a, vd b) { return vmulq_f64(a, b); }
SIMD_INLINE vd vd_fma(vd a, vd b, vd c) { return vfmaq_f64(c, a, b); }
SIMD_INLINE double vd_reduce_add(vd v) { return vaddvq_f64(v); }
SIMD_INLINE vd vd_sub(vd a, vd b) { return vsubq_f64(a, b); }
SIMD_INLINE vd vd_fnma(vd a, vd b, vd c) { return vfmsq_f64(c, a, b); }
SIMD_INLINE vd vd_max(vd a, vd b) { return vmaxq_f64(a, b); }
SIMD_INLINE vd vd_min(vd a, vd b) { return vminq_f64(a, b); }
SIMD_INLINE vd vd_pow2_magic(vd t) {
    return vreinterpretq_f64_s64(vaddq_s64(vshlq_n_s64(vreinterpretq_s64_f64(t), 52),
                                           vdupq_n_s64((int64_t)1023 << 52)));
}

/* ============================================================================ baseline */
#else
/* GCC/Clang vector extensions: 16 bytes, which the compiler lowers to the target's baseline
 * SIMD (SSE2 on x86-64); no FMA (a * b + c rounds twice, as the scalar code does). */
enum { VF = 4, VD = 2, SIMD_REGS = 16, SIMD_FMA = 0 };
typedef float vf __attribute__((vector_size(16), aligned(16)));
typedef double vd __attribute__((vector_size(16), aligned(16)));
typedef int32_t vmask __attribute__((vector_size(16), aligned(16)));
typedef float vf_u __attribute__((vector_size(16), aligned(4)));    /* unaligned access */
typedef double vd_u __attribute__((vector_size(16), aligned(8)));

SIMD_INLINE vf vf_zero(void) { return (vf){0, 0, 0, 0}; }
SIMD_INLINE vf vf_set1(float x) { return (vf){x, x, x, x}; }
SIMD_INLINE vf vf_load(const float *p) { return *(const vf_u *)p; }
SIMD_INLINE void vf_store(float *p, vf v) { *(vf_u *)p = v; }
SIMD_INLINE vf vf_load_n(const float *p, int64_t n) {
    if (n >= 4) return vf_load(p);
    vf v = vf_zero();
    for (int64_t i = 0; i < n; i++) v[i] = p[i];
    return v;
}
SIMD_INLINE void vf_store_n(float *p, vf v, int64_t n) {
    if (n >= 4) { vf_store(p, v); return; }
    for (int64_t i = 0; i < n; i++) p[i] = v[i];
}
SIMD_INLINE vf vf_add(vf a, vf b) { return a + b; }
SIMD_INLINE vf vf_sub(vf a, vf b) { return a - b; }
SIMD_INLINE vf vf_mul(vf a, vf b) { return a * b; }
SIMD_INLINE vf vf_fma(vf a, vf b, vf c) { return a * b + c; }
SIMD_INLINE vf vf_fnma(vf a, vf b, vf c) { return c - a * b; }
/* (a cast between vector types of one size reinterprets the bits) */
SIMD_INLINE vf vf_select(vmask m, vf a, vf b) { return (vf)(((vmask)a & m) | ((vmask)b & ~m)); }
SIMD_INLINE vmask vf_lt(vf a, vf b) { return (vmask)(a < b); }
SIMD_INLINE vmask vf_le(vf a, vf b) { return (vmask)(a <= b); }
SIMD_INLINE vf vf_max(vf a, vf b) { return vf_select(a > b, a, b); }
SIMD_INLINE vf vf_min(vf a, vf b) { return vf_select(a < b, a, b); }
SIMD_INLINE float vf_reduce_add(vf v) { return (v[0] + v[2]) + (v[1] + v[3]); }
SIMD_INLINE float vf_reduce_max(vf v) {
    float a = v[0] > v[2] ? v[0] : v[2], b = v[1] > v[3] ? v[1] : v[3];
    return a > b ? a : b;
}
SIMD_INLINE vf vf_rcp(vf v) { return vf_set1(1.0f) / v; }
SIMD_INLINE vf vf_pow2_magic(vf t) { return (vf)(((vmask)t << 23) + (127 << 23)); }
SIMD_INLINE vmask vmask_lanes(int64_t lo, int64_t hi) {
    lo = lo < -1 ? -1 : lo > 5 ? 5 : lo;
    hi = hi < -1 ? -1 : hi > 5 ? 5 : hi;
    const vmask iota = {0, 1, 2, 3};
    return (iota >= (int32_t)lo) & (iota < (int32_t)hi);
}
SIMD_INLINE void vf_transpose(vf r[4]) {
    vf t0 = {r[0][0], r[1][0], r[2][0], r[3][0]}, t1 = {r[0][1], r[1][1], r[2][1], r[3][1]};
    vf t2 = {r[0][2], r[1][2], r[2][2], r[3][2]}, t3 = {r[0][3], r[1][3], r[2][3], r[3][3]};
    r[0] = t0, r[1] = t1, r[2] = t2, r[3] = t3;
}

SIMD_INLINE vd vd_zero(void) { return (vd){0, 0}; }
SIMD_INLINE vd vd_set1(double x) { return (vd){x, x}; }
SIMD_INLINE vd vd_load(const double *p) { return *(const vd_u *)p; }
SIMD_INLINE void vd_store(double *p, vd v) { *(vd_u *)p = v; }
SIMD_INLINE vd vd_load_n(const double *p, int64_t n) {
    if (n >= 2) return vd_load(p);
    return (vd){n > 0 ? p[0] : 0.0, 0.0};
}
SIMD_INLINE void vd_store_n(double *p, vd v, int64_t n) {
    if (n >= 2) vd_store(p, v);
    else if (n == 1) p[0] = v[0];
}
SIMD_INLINE vd vd_add(vd a, vd b) { return a + b; }
SIMD_INLINE vd vd_mul(vd a, vd b) { return a * b; }
SIMD_INLINE vd vd_fma(vd a, vd b, vd c) { return a * b + c; }
SIMD_INLINE double vd_reduce_add(vd v) { return v[0] + v[1]; }
SIMD_INLINE vd vd_sub(vd a, vd b) { return a - b; }
SIMD_INLINE vd vd_fnma(vd a, vd b, vd c) { return c - a * b; }
SIMD_INLINE vd vd_max(vd a, vd b) { return (vd){a[0] > b[0] ? a[0] : b[0], a[1] > b[1] ? a[1] : b[1]}; }
SIMD_INLINE vd vd_min(vd a, vd b) { return (vd){a[0] < b[0] ? a[0] : b[0], a[1] < b[1] ? a[1] : b[1]}; }
SIMD_INLINE vd vd_pow2_magic(vd t) {
    typedef int64_t vdbits __attribute__((vector_size(16), aligned(16)));
    return (vd)(((vdbits)t << 52) + ((int64_t)1023 << 52));
}
#endif

/* vf_keep(v) / vd_keep(v): v stays in a register. A loaded operand that several FMAs use is
 * otherwise re-read from memory by each of them (GCC folds the load into every FMA), which
 * doubles the loads of a 2 x 4 tile and makes it load-bound on 16-register levels. */
#if defined(__GNUC__) && (defined(SIMD_AVX2) || defined(SIMD_AVX512))
#define vf_keep(v) __asm__("" : "+v"(v))
#define vd_keep(v) __asm__("" : "+v"(v))
#elif defined(__GNUC__) && defined(SIMD_NEON)
#define vf_keep(v) __asm__("" : "+w"(v))
#define vd_keep(v) __asm__("" : "+w"(v))
#else
#define vf_keep(v) ((void)0)
#define vd_keep(v) ((void)0)
#endif

/* ============================================================ derived, for every level */

/* The exp functions round with t = x + 1.5 * 2^23 (n = t - 1.5 * 2^23 is x rounded to the
 * nearest integer, |x| < 2^22) and build 2^n from t's bits (vf_pow2_magic): two adds and a
 * shift instead of a round, a conversion, a compare and a blend. */
#define SIMD_ROUND_MAGIC 12582912.0f

/* exp(x) = 2^n exp(r), x = n ln2 + r, |r| <= ln2/2; exp(r) by a degree-6 minimax polynomial
 * (relative error 1.7e-8, below float rounding). x is clamped to [-88, 88]: below
 * log(FLT_MIN) = -87.34 (and -inf) n reaches -127 and the result is exactly 0, at the top
 * 2^n stays finite; NaN stays NaN. */
SIMD_INLINE vf vf_exp(vf x) {
    const vf magic = vf_set1(SIMD_ROUND_MAGIC);
    vf xc = vf_max(vf_set1(-88.0f), vf_min(vf_set1(88.0f), x));  /* (NaN passes) */
    vf t = vf_fma(xc, vf_set1(1.44269504f), magic);
    vf n = vf_sub(t, magic);
    vf r = vf_fnma(n, vf_set1(0.693145752f), xc);  /* ln2 split: n * hi is exact */
    r = vf_fnma(n, vf_set1(1.42860677e-6f), r);
    vf p = vf_set1(1.38368458e-3f);
    p = vf_fma(p, r, vf_set1(8.37481581e-3f));
    p = vf_fma(p, r, vf_set1(4.16682251e-2f));
    p = vf_fma(p, r, vf_set1(1.66664198e-1f));
    p = vf_fma(p, r, vf_set1(4.99999911e-1f));
    p = vf_fma(p, r, vf_set1(1.0f));
    p = vf_fma(p, r, vf_set1(1.0f));
    return vf_mul(p, vf_pow2_magic(t));
}

/* exp(x) for doubles, as vf_exp: x = n ln2 + r, |r| <= ln2/2 (t = x log2(e) + 1.5 * 2^52
 * rounds), exp(r) by its degree-13 Taylor polynomial (truncation < 5e-18, so a few ulp of
 * rounding in all), 2^n from t's bits. x is clamped to [-709, 709]: from -708.8 down (and
 * -inf) n reaches -1023 and the result is exactly 0 (exp there is below DBL_MIN); NaN stays
 * NaN where vd_max / vd_min pass it. */
SIMD_INLINE vd vd_exp(vd x) {
    const vd magic = vd_set1(6755399441055744.0);  /* 1.5 * 2^52 */
    vd xc = vd_max(vd_set1(-709.0), vd_min(vd_set1(709.0), x));
    vd t = vd_fma(xc, vd_set1(1.4426950408889634), magic);
    vd n = vd_sub(t, magic);
    vd r = vd_fnma(n, vd_set1(6.93147180369123816490e-01), xc);  /* ln2 hi: n * hi is exact */
    r = vd_fnma(n, vd_set1(1.90821492927058770002e-10), r);
    vd p = vd_set1(1.0 / 6227020800.0);                            /* 1/13! */
    static const double inv_fact[13] = {1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0,
                                        1.0 / 362880.0, 1.0 / 40320.0, 1.0 / 5040.0,
                                        1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0,
                                        0.5, 1.0, 1.0};           /* 1/12! .. 1/0! */
    for (int i = 0; i < 13; i++) p = vd_fma(p, r, vd_set1(inv_fact[i]));
    return vd_mul(p, vd_pow2_magic(t));
}

/* 2^x for x <= 0 (scores minus their running max, in base 2; the fast attention forward
 * lets them reach LAZY_RESCALE = 8 above it, and any x up to 127 is as exact): 2^n 2^r, n = round(x),
 * |r| <= 1/2, 2^r by its degree-6 Taylor polynomial in r ln2 (relative error < 2e-7);
 * x <= -126.5 (also -inf) gives exactly 0, so masked scores add nothing. */
SIMD_INLINE vf vf_exp2_nonpos(vf x) {
    const vf magic = vf_set1(SIMD_ROUND_MAGIC);
    x = vf_max(vf_set1(-127.0f), x);  /* (max returns its second operand, x, when x is NaN) */
    vf t = vf_add(x, magic);
    vf r = vf_sub(x, vf_sub(t, magic));  /* exact */
    vf p = vf_set1(1.5403530393381606e-4f);               /* ln2^6 / 720 */
    p = vf_fma(p, r, vf_set1(1.3333558146428443e-3f));    /* ln2^5 / 120 */
    p = vf_fma(p, r, vf_set1(9.618129107628477e-3f));     /* ln2^4 / 24 */
    p = vf_fma(p, r, vf_set1(5.550410866482158e-2f));     /* ln2^3 / 6 */
    p = vf_fma(p, r, vf_set1(0.2402265069591007f));       /* ln2^2 / 2 */
    p = vf_fma(p, r, vf_set1(0.6931471805599453f));       /* ln2 */
    p = vf_fma(p, r, vf_set1(1.0f));
    return vf_mul(p, vf_pow2_magic(t));
}

/* 1 / (1 + exp(-x)); the reciprocal, not a division (vdivps is slow and not pipelined
 * on some cores: 5 divisions per LSTM unit were ~8% of a forward). */
SIMD_INLINE vf vf_sigmoid(vf x) {
    return vf_rcp(vf_add(vf_set1(1.0f), vf_exp(vf_sub(vf_zero(), x))));
}

/* 1 - 2 / (exp(2x) + 1): absolute error ~1e-7 near 0, exact limits at +-inf. */
SIMD_INLINE vf vf_tanh(vf x) {
    vf e = vf_exp(vf_add(x, x));
    return vf_fnma(vf_set1(2.0f), vf_rcp(vf_add(e, vf_set1(1.0f))), vf_set1(1.0f));
}

/* Scalar exp / tanh for float with the same algorithm (lane 0 of the vector form), so a
 * scalar tail computes what the vector body does. */
SIMD_INLINE float simd_expf(float x) {
    float out[VF];
    vf_store(out, vf_exp(vf_set1(x)));
    return out[0];
}
SIMD_INLINE double simd_exp(double x) {
    double out[VD];
    vd_store(out, vd_exp(vd_set1(x)));
    return out[0];
}
SIMD_INLINE float simd_tanhf(float x) {
    float out[VF];
    vf_store(out, vf_tanh(vf_set1(x)));
    return out[0];
}

#endif
