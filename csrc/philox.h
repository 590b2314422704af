/* Philox-4x32-10 and the attention-dropout keep test built on it: one definition for the C
 * kernels (attention.c), the same generator as seqcore/reference/dropout.py, Triton's
 * tl.philox and cuRAND (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11;
 * Random123's known answers are checked in csrc/check/check_attention.c).
 *
 * The mask. Keyed by the 64-bit seed (k0 = its low 32 bits, k1 = its high 32 bits), counter
 *   (c0, c1, c2, c3) = (j, i, g, 0): key position j and query position i within their
 *   sequence, g = b * Hq + h (batch element or packed sequence b, query head h);
 * probability (g, i, j) is kept iff (word0 >> 1) >= threshold, threshold = min(floor(p 2^31),
 * 2^31 - 1) (seqcore.reference.dropout.threshold), kept ones scaled by 1 / (1 - p).
 *
 * Cost, and the split form. A score costs the forward ~(D + Dv) multiply-adds (128 AVX-512
 * FMAs per 16 scores at D = Dv = 64); the generator's ten rounds are 20 32x32->64-bit
 * multiplies per score. Two savings, exact (they compute the same bits):
 *   - the counter's words are (key, query, head, 0): rounds 0-2 have parts that depend only
 *     on (g, j) or only on (g, i). A key tile computes its keys' part once (dropout_keys,
 *     shared by every query row of the tile), a row its own (dropout_row), and each score
 *     starts at round 2 with one multiply; round 9 needs only word 0 (one multiply): 14 of
 *     the 20 multiplies remain per score;
 *   - the vector form (dropout_keep_vf: VF keys of one row, a vmask of simd.h) on x86 keeps
 *     the four words in 64-bit lanes, where one vpmuludq is the whole 32x32->64 product (hi
 *     = the upper half, lo = the lane itself): the upper halves may hold anything, because
 *     every word is only ever a multiplier input (vpmuludq reads the low halves) or xored
 *     into one; the even and odd keys of a vector run as two independent chains. NEON keeps
 *     32-bit lanes (umull / umull2, then uzp).
 * What remains is bound by the vector ALU ports (~85 AVX-512 operations per 16 scores):
 * measured on a 2-core AVX-512 Xeon, ~1.0 ns per score with AVX-512 and ~1.9 ns with AVX2
 * for the mask alone, so a D64 forward (B1 H8 S1024, one thread) takes ~1.5x as long with
 * dropout as without (1.51x AVX-512, 1.57x AVX2), forward + backward ~1.33x. Scalar code
 * (~14 imul and ~40 other operations per score, by count) would cost more than the rest of
 * the forward several times over.
 * Derivation of the split (round r keys K0_r = k0 + r W0, K1_r = k1 + r W1; mulhilo(a, M) =
 * (hi, lo) of the 64-bit product):
 *   round 0: (ha, la) = mulhilo(j, M0), (hg, lg) = mulhilo(g, M1);
 *            c = (hg ^ i ^ K0_0, lg, ha ^ K1_0, la)
 *   round 1: (hr, lr) = mulhilo(hg ^ i ^ K0_0, M0)                      [row part]
 *            (hb, lb) = mulhilo(ha ^ K1_0, M1);  A = hb ^ lg ^ K0_1      [key part]
 *            c = (A, lb, hr ^ x, lr) with x = la ^ K1_1
 *   round 2: (hc, lc) = mulhilo(A, M0); (hd, ld) = mulhilo(hr ^ x, M1)   [per score]
 *            c = (hd ^ y, ld, z ^ lr, w) with y = lb ^ K0_2, z = hc ^ K1_2, w = lc
 *   rounds 3-8 as usual; round 9: word0 = hi(c2 M1) ^ c1 ^ K0_9.
 * So a key's part is (x, y, z, w) and a row's (hr, lr).
 *
 * The scalar part needs only <stdint.h> (the C checks include it as it is); the vector part
 * is compiled when the including file is a kernel source (SEQCORE_ISA set, see isa.h).
 */
#ifndef SEQCORE_PHILOX_H
#define SEQCORE_PHILOX_H
#include <stdint.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u
#define PHILOX_ROUNDS 10

static inline uint32_t philox_mulhilo(uint32_t a, uint32_t m, uint32_t *hi) {
    uint64_t prod = (uint64_t)a * m;
    *hi = (uint32_t)(prod >> 32);
    return (uint32_t)prod;
}

/* c <- Philox-4x32-10(c) with key (k0, k1). */
static inline void philox4x32_10(uint32_t c[4], uint32_t k0, uint32_t k1) {
    for (int r = 0; r < PHILOX_ROUNDS; r++) {
        uint32_t hi0, hi2;
        uint32_t lo0 = philox_mulhilo(c[0], PHILOX_M0, &hi0);
        uint32_t lo2 = philox_mulhilo(c[2], PHILOX_M1, &hi2);
        uint32_t n0 = hi2 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
        c[0] = n0, c[1] = lo2, c[2] = n2, c[3] = lo0;
        k0 += PHILOX_W0, k1 += PHILOX_W1;
    }
}

/* ------------------------------------------------------------------ the dropout mask */

/* One call's generator: the round keys of its seed and the threshold. */
typedef struct {
    uint32_t k0[PHILOX_ROUNDS], k1[PHILOX_ROUNDS];
    uint32_t threshold;  /* keep iff (word0 >> 1) >= threshold; 0 .. 2^31 - 1 */
} dropout_gen;

static inline dropout_gen dropout_gen_of(uint64_t seed, uint32_t threshold) {
    dropout_gen d;
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int r = 0; r < PHILOX_ROUNDS; r++) {
        d.k0[r] = k0 + (uint32_t)r * PHILOX_W0;
        d.k1[r] = k1 + (uint32_t)r * PHILOX_W1;
    }
    d.threshold = threshold;
    return d;
}

/* Word 0 of the generator at counter (j, i, g, 0), all ten rounds: the definition. */
static inline uint32_t dropout_word0(const dropout_gen *d, uint32_t g, uint32_t i, uint32_t j) {
    uint32_t c[4] = {j, i, g, 0};
    philox4x32_10(c, d->k0[0], d->k1[0]);
    return c[0];
}

static inline int dropout_keep(const dropout_gen *d, uint32_t g, uint32_t i, uint32_t j) {
    return (dropout_word0(d, g, i, j) >> 1) >= d->threshold;
}

/* The split form (see the top): the key parts of up to DROPOUT_KEYS consecutive keys, as
 * four arrays (the vector form loads VF of each), and a row's part. */
enum { DROPOUT_KEYS = 128 };  /* the x86 forward's key tile */
typedef struct {
    uint32_t x[DROPOUT_KEYS], y[DROPOUT_KEYS], z[DROPOUT_KEYS], w[DROPOUT_KEYS];
} dropout_keys;
typedef struct { uint32_t hr, lr; } dropout_row;

/* Key parts of keys j0 .. j0 + n (n <= DROPOUT_KEYS) of head g. */
static inline void dropout_keys_fill(const dropout_gen *d, uint32_t g, uint32_t j0, int n,
                                     dropout_keys *kp) {
    uint32_t hg, lg = philox_mulhilo(g, PHILOX_M1, &hg);
    (void)hg;
    for (int t = 0; t < n; t++) {
        uint32_t ha, la = philox_mulhilo(j0 + (uint32_t)t, PHILOX_M0, &ha);
        uint32_t hb, lb = philox_mulhilo(ha ^ d->k1[0], PHILOX_M1, &hb);
        uint32_t a = hb ^ lg ^ d->k0[1];
        uint32_t hc, lc = philox_mulhilo(a, PHILOX_M0, &hc);
        kp->x[t] = la ^ d->k1[1];
        kp->y[t] = lb ^ d->k0[2];
        kp->z[t] = hc ^ d->k1[2];
        kp->w[t] = lc;
    }
}

static inline dropout_row dropout_row_of(const dropout_gen *d, uint32_t g, uint32_t i) {
    uint32_t hg;
    (void)philox_mulhilo(g, PHILOX_M1, &hg);
    dropout_row row;
    row.lr = philox_mulhilo(hg ^ i ^ d->k0[0], PHILOX_M0, &row.hr);
    return row;
}

/* Word 0 from the parts (key t of kp, row): rounds 2-9; equals dropout_word0. */
static inline uint32_t dropout_word0_split(const dropout_gen *d, const dropout_keys *kp, int t,
                                           dropout_row row) {
    uint32_t hd, ld = philox_mulhilo(row.hr ^ kp->x[t], PHILOX_M1, &hd);
    uint32_t c0 = hd ^ kp->y[t], c1 = ld, c2 = kp->z[t] ^ row.lr, c3 = kp->w[t];
    for (int r = 3; r < PHILOX_ROUNDS - 1; r++) {
        uint32_t hi0, hi2;
        uint32_t lo0 = philox_mulhilo(c0, PHILOX_M0, &hi0);
        uint32_t lo2 = philox_mulhilo(c2, PHILOX_M1, &hi2);
        uint32_t n0 = hi2 ^ c1 ^ d->k0[r], n2 = hi0 ^ c3 ^ d->k1[r];
        c0 = n0, c1 = lo2, c2 = n2, c3 = lo0;
    }
    uint32_t hi2;
    (void)philox_mulhilo(c2, PHILOX_M1, &hi2);
    (void)c0, (void)c3;
    return hi2 ^ c1 ^ d->k0[PHILOX_ROUNDS - 1];
}

/* ------------------------------------------------------------------ vector form */
#ifdef SEQCORE_ISA
#include "simd.h"

#if defined(SIMD_AVX512) || defined(SIMD_AVX2) || (defined(SIMD_GENERIC) && defined(__SSE2__))
/* x86: words in 64-bit lanes (upper halves: anything), VF / 2 keys a chain. */
#define DROPOUT_WIDE_LANES 1
#if defined(SIMD_AVX512)
typedef __m512i phx;
#define phx_set1(x) _mm512_set1_epi32((int)(x))
#define phx_load(p) _mm512_loadu_si512((const void *)(p))
#define phx_mul(a, b) _mm512_mul_epu32((a), (b))
#define phx_hi(a) _mm512_srli_epi64((a), 32)
#define phx_xor(a, b) _mm512_xor_si512((a), (b))
#define phx_xor3(a, b, c) _mm512_ternarylogic_epi32((a), (b), (c), 0x96)
/* even keys' words in the low halves, odd keys' in e and o: keep mask of the VF keys */
SIMD_INLINE vmask phx_keep(phx e, phx o, uint32_t threshold) {
    phx w = _mm512_mask_blend_epi32((__mmask16)0xAAAA, e, _mm512_slli_epi64(o, 32));
    return _mm512_cmpge_epu32_mask(w, _mm512_set1_epi32((int)(2 * threshold)));
}
#elif defined(SIMD_AVX2)
typedef __m256i phx;
#define phx_set1(x) _mm256_set1_epi32((int)(x))
#define phx_load(p) _mm256_loadu_si256((const __m256i *)(p))
#define phx_mul(a, b) _mm256_mul_epu32((a), (b))
#define phx_hi(a) _mm256_srli_epi64((a), 32)
#define phx_xor(a, b) _mm256_xor_si256((a), (b))
#define phx_xor3(a, b, c) _mm256_xor_si256(_mm256_xor_si256((a), (b)), (c))
SIMD_INLINE vmask phx_keep(phx e, phx o, uint32_t threshold) {
    phx w = _mm256_blend_epi32(e, _mm256_slli_epi64(o, 32), 0xAA);
    /* r = w >> 1 < 2^31: a signed compare with threshold - 1 (-1 when 0: all kept) */
    phx keep = _mm256_cmpgt_epi32(_mm256_srli_epi32(w, 1), _mm256_set1_epi32((int)threshold - 1));
    return _mm256_castsi256_ps(keep);
}
#else
#include <emmintrin.h>
typedef __m128i phx;
#define phx_set1(x) _mm_set1_epi32((int)(x))
#define phx_load(p) _mm_loadu_si128((const __m128i *)(p))
#define phx_mul(a, b) _mm_mul_epu32((a), (b))
#define phx_hi(a) _mm_srli_epi64((a), 32)
#define phx_xor(a, b) _mm_xor_si128((a), (b))
#define phx_xor3(a, b, c) _mm_xor_si128(_mm_xor_si128((a), (b)), (c))
SIMD_INLINE vmask phx_keep(phx e, phx o, uint32_t threshold) {
    /* (lanes: e0 o0 e1 o1 = keys 0 1 2 3) */
    phx w = _mm_unpacklo_epi32(_mm_shuffle_epi32(e, 0x08), _mm_shuffle_epi32(o, 0x08));
    phx keep = _mm_cmpgt_epi32(_mm_srli_epi32(w, 1), _mm_set1_epi32((int)threshold - 1));
    vmask m;
    memcpy(&m, &keep, sizeof m);
    return m;
}
#endif

/* The keep mask of keys t .. t + VF of kp (t a multiple of VF) for one row. */
SIMD_INLINE vmask dropout_keep_vf(const dropout_gen *d, const dropout_keys *kp, int64_t t,
                                  dropout_row row) {
    const phx m0 = phx_set1(PHILOX_M0), m1 = phx_set1(PHILOX_M1);
    phx x = phx_xor(phx_load(kp->x + t), phx_set1(row.hr));
    phx z = phx_xor(phx_load(kp->z + t), phx_set1(row.lr));
    phx y = phx_load(kp->y + t), w = phx_load(kp->w + t);
    /* chain 0: even keys (the low halves); chain 1: odd keys */
    phx c0[2], c1[2], c2[2], c3[2];
    phx xs[2] = {x, phx_hi(x)}, ys[2] = {y, phx_hi(y)}, zs[2] = {z, phx_hi(z)};
    phx ws[2] = {w, phx_hi(w)};
    for (int h = 0; h < 2; h++) {  /* round 2 */
        phx p2 = phx_mul(xs[h], m1);
        c0[h] = phx_xor(phx_hi(p2), ys[h]);
        c1[h] = p2;
        c2[h] = zs[h];
        c3[h] = ws[h];
    }
    for (int r = 3; r < PHILOX_ROUNDS - 1; r++) {
        const phx k0 = phx_set1(d->k0[r]), k1 = phx_set1(d->k1[r]);
        for (int h = 0; h < 2; h++) {
            phx p0 = phx_mul(c0[h], m0), p2 = phx_mul(c2[h], m1);
            c0[h] = phx_xor3(phx_hi(p2), c1[h], k0);
            c1[h] = p2;
            c2[h] = phx_xor3(phx_hi(p0), c3[h], k1);
            c3[h] = p0;
        }
    }
    const phx k9 = phx_set1(d->k0[PHILOX_ROUNDS - 1]);
    phx word[2];
    for (int h = 0; h < 2; h++) word[h] = phx_xor3(phx_hi(phx_mul(c2[h], m1)), c1[h], k9);
    return phx_keep(word[0], word[1], d->threshold);
}

#elif defined(SIMD_NEON) || (defined(SIMD_GENERIC) && defined(__ARM_NEON) && defined(__aarch64__))
/* aarch64: 32-bit lanes, VF = 4 keys. */
#include <arm_neon.h>
SIMD_INLINE uint32x4_t phx_mulhilo(uint32x4_t a, uint32x4_t m, uint32x4_t *hi) {
    uint32x4_t pl = vreinterpretq_u32_u64(vmull_u32(vget_low_u32(a), vget_low_u32(m)));
    uint32x4_t ph = vreinterpretq_u32_u64(vmull_high_u32(a, m));
    *hi = vuzp2q_u32(pl, ph);
    return vuzp1q_u32(pl, ph);
}

SIMD_INLINE vmask dropout_keep_vf(const dropout_gen *d, const dropout_keys *kp, int64_t t,
                                  dropout_row row) {
    const uint32x4_t m0 = vdupq_n_u32(PHILOX_M0), m1 = vdupq_n_u32(PHILOX_M1);
    uint32x4_t x = veorq_u32(vld1q_u32(kp->x + t), vdupq_n_u32(row.hr));
    uint32x4_t hd, ld = phx_mulhilo(x, m1, &hd);
    uint32x4_t c0 = veorq_u32(hd, vld1q_u32(kp->y + t)), c1 = ld;
    uint32x4_t c2 = veorq_u32(vld1q_u32(kp->z + t), vdupq_n_u32(row.lr)), c3 = vld1q_u32(kp->w + t);
    for (int r = 3; r < PHILOX_ROUNDS - 1; r++) {
        uint32x4_t hi0, hi2;
        uint32x4_t lo0 = phx_mulhilo(c0, m0, &hi0), lo2 = phx_mulhilo(c2, m1, &hi2);
        c0 = veorq_u32(veorq_u32(hi2, c1), vdupq_n_u32(d->k0[r]));
        c2 = veorq_u32(veorq_u32(hi0, c3), vdupq_n_u32(d->k1[r]));
        c1 = lo2, c3 = lo0;
    }
    uint32x4_t hi2;
    (void)phx_mulhilo(c2, m1, &hi2);
    uint32x4_t word = veorq_u32(veorq_u32(hi2, c1), vdupq_n_u32(d->k0[PHILOX_ROUNDS - 1]));
    uint32x4_t keep = vcgeq_u32(vshrq_n_u32(word, 1), vdupq_n_u32(d->threshold));
#if defined(SIMD_NEON)
    return keep;
#else
    vmask m;
    memcpy(&m, &keep, sizeof m);
    return m;
#endif
}

#else
/* Other targets: lane by lane. */
SIMD_INLINE vmask dropout_keep_vf(const dropout_gen *d, const dropout_keys *kp, int64_t t,
                                  dropout_row row) {
    vmask m;
    for (int l = 0; l < VF; l++)
        m[l] = (dropout_word0_split(d, kp, (int)t + l, row) >> 1) >= d->threshold ? -1 : 0;
    return m;
}
#endif

/* keep[t] = 1 or 0 for keys t < n of kp (n rounded up to VF, <= DROPOUT_KEYS): one row. */
SIMD_INLINE void dropout_keep_row(const dropout_gen *d, const dropout_keys *kp, int64_t n,
                                  dropout_row row, float *keep) {
    const vf one = vf_set1(1.0f), zero = vf_zero();
    for (int64_t t = 0; t < n; t += VF)
        vf_store(keep + t, vf_select(dropout_keep_vf(d, kp, t, row), one, zero));
}
#endif /* SEQCORE_ISA */

#endif
