/* The ISA level a kernel source is being compiled for, and the names that carry it.
 *
 * build.py compiles every kernel source (attention.c, kvcache.c, gemm.c, recurrent.c, convert.c,
 * kernels.c) once
 * per ISA level of the target (x86-64: baseline, avx2, avx512; aarch64: baseline, neon), with
 * -DSEQCORE_ISA=<level> and that level's instruction-set flags, and links all of them into
 * one extension. So that the copies can sit side by side, the names the kernel files share
 * get the level as a suffix here (seqcore_gemm_f32 -> seqcore_gemm_f32_avx2): each level's
 * attention calls its own level's gemm. What the rest of the library calls is one table per
 * level (kernels.h); dispatch.c picks the table when the library loads.
 *
 * A new entry point shared between kernel files, or called through the table, gets one line
 * below; a forgotten one fails the link with a duplicate symbol, never silently.
 */
#ifndef SEQCORE_ISA_H
#define SEQCORE_ISA_H

#define SEQCORE_ISA_BASELINE 0
#define SEQCORE_ISA_AVX2 1
#define SEQCORE_ISA_AVX512 2
#define SEQCORE_ISA_NEON 3
#define SEQCORE_ISA_LEVEL_OF_baseline SEQCORE_ISA_BASELINE
#define SEQCORE_ISA_LEVEL_OF_avx2 SEQCORE_ISA_AVX2
#define SEQCORE_ISA_LEVEL_OF_avx512 SEQCORE_ISA_AVX512
#define SEQCORE_ISA_LEVEL_OF_neon SEQCORE_ISA_NEON

#ifndef SEQCORE_ISA
#error "kernel sources are compiled once per ISA level by csrc/build.py (-DSEQCORE_ISA=<level>)"
#endif

#define SEQCORE_ISA_CAT2(a, b) a##b
#define SEQCORE_ISA_CAT(a, b) SEQCORE_ISA_CAT2(a, b)
#define SEQCORE_ISA_STR2(a) #a
#define SEQCORE_ISA_STR(a) SEQCORE_ISA_STR2(a)
#define SEQCORE_ISA_LEVEL SEQCORE_ISA_CAT(SEQCORE_ISA_LEVEL_OF_, SEQCORE_ISA)
#define SEQCORE_ISA_NAME SEQCORE_ISA_STR(SEQCORE_ISA)
/* name_<level>: a symbol of this level's copy */
#define ISA_SYMBOL(name) SEQCORE_ISA_CAT(SEQCORE_ISA_CAT(name, _), SEQCORE_ISA)

/* The flags build.py passes must match the level: a mismatch would run AVX2 code as
 * "baseline" (SIGILL on an older CPU) or lose the fast paths. */
#if SEQCORE_ISA_LEVEL == SEQCORE_ISA_AVX512 && \
    !(defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && \
      defined(__AVX512VL__) && defined(__FMA__) && defined(__F16C__))
#error "the avx512 level needs -mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma -mf16c"
#endif
#if SEQCORE_ISA_LEVEL == SEQCORE_ISA_AVX2 && \
    (!(defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)) || defined(__AVX512F__))
#error "the avx2 level needs -mavx2 -mfma -mf16c and no AVX-512"
#endif
#if SEQCORE_ISA_LEVEL == SEQCORE_ISA_BASELINE && (defined(__AVX__) || defined(__FMA__))
#error "the baseline level must not use AVX or FMA (x86-64 baseline: SSE2)"
#endif
#if SEQCORE_ISA_LEVEL == SEQCORE_ISA_NEON && !(defined(__aarch64__) && defined(__ARM_NEON))
#error "the neon level is for aarch64"
#endif

/* Public entry points (seqcore.h): dispatch.c defines the unsuffixed ones. */
#define seqcore_attention_fwd_f32 ISA_SYMBOL(seqcore_attention_fwd_f32)
#define seqcore_attention_fwd_f64 ISA_SYMBOL(seqcore_attention_fwd_f64)
#define seqcore_attention_bwd_f32 ISA_SYMBOL(seqcore_attention_bwd_f32)
#define seqcore_attention_bwd_f64 ISA_SYMBOL(seqcore_attention_bwd_f64)
#define seqcore_attention_kvcache_f32 ISA_SYMBOL(seqcore_attention_kvcache_f32)
#define seqcore_attention_kvcache_f64 ISA_SYMBOL(seqcore_attention_kvcache_f64)
#define seqcore_lstm_fwd_f32 ISA_SYMBOL(seqcore_lstm_fwd_f32)
#define seqcore_lstm_fwd_f64 ISA_SYMBOL(seqcore_lstm_fwd_f64)
#define seqcore_gru_fwd_f32 ISA_SYMBOL(seqcore_gru_fwd_f32)
#define seqcore_gru_fwd_f64 ISA_SYMBOL(seqcore_gru_fwd_f64)
#define seqcore_lstm_bwd_f32 ISA_SYMBOL(seqcore_lstm_bwd_f32)
#define seqcore_lstm_bwd_f64 ISA_SYMBOL(seqcore_lstm_bwd_f64)
#define seqcore_gru_bwd_f32 ISA_SYMBOL(seqcore_gru_bwd_f32)
#define seqcore_gru_bwd_f64 ISA_SYMBOL(seqcore_gru_bwd_f64)
#define seqcore_rnn_fwd_f32 ISA_SYMBOL(seqcore_rnn_fwd_f32)
#define seqcore_rnn_fwd_f64 ISA_SYMBOL(seqcore_rnn_fwd_f64)
#define seqcore_rnn_bwd_f32 ISA_SYMBOL(seqcore_rnn_bwd_f32)
#define seqcore_rnn_bwd_f64 ISA_SYMBOL(seqcore_rnn_bwd_f64)
#define seqcore_lstm_proj_fwd_f32 ISA_SYMBOL(seqcore_lstm_proj_fwd_f32)
#define seqcore_lstm_proj_fwd_f64 ISA_SYMBOL(seqcore_lstm_proj_fwd_f64)
#define seqcore_lstm_proj_bwd_f32 ISA_SYMBOL(seqcore_lstm_proj_bwd_f32)
#define seqcore_lstm_proj_bwd_f64 ISA_SYMBOL(seqcore_lstm_proj_bwd_f64)
#define seqcore_f16_to_f32 ISA_SYMBOL(seqcore_f16_to_f32)
#define seqcore_f32_to_f16 ISA_SYMBOL(seqcore_f32_to_f16)
/* Shared between kernel files (gemm.h) */
#define seqcore_gemm_f32 ISA_SYMBOL(seqcore_gemm_f32)
#define seqcore_gemm_f64 ISA_SYMBOL(seqcore_gemm_f64)
#define seqcore_pack_cols_f32 ISA_SYMBOL(seqcore_pack_cols_f32)
#define seqcore_pack_cols_f64 ISA_SYMBOL(seqcore_pack_cols_f64)
/* This level's table (kernels.h) */
#define seqcore_kernels ISA_SYMBOL(seqcore_kernels)

#endif
