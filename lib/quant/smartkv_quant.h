/* smartkv_quant.h -- round-to-nearest quantizers and bit packing of single
 * K/V vectors (the format is described in smartkv_qmath.h and smartkv(5)).
 *
 * One vector of d = head_dim float32 values is quantized at a width `bits`
 * (2, 3, 4, 8 or 16) into
 *   par  skv_par_bytes(bits, d, group, mode) bytes of fp16 parameters, and
 *   dat  skv_row_bytes(bits, d) bytes of packed codes (fp16 values at 16).
 *
 * Asymmetric (zero-point) mode, per group of `group` channels:
 *   min16   = the fp16 value nearest below (or at) min(x)
 *   scale16 = the fp16 value nearest above (or at) (max(x) - min16)/(2^bits-1)
 *   q       = round_half_even(clamp((x - min16)/scale16, 0, 2^bits-1))
 * Symmetric mode:
 *   scale16 = the fp16 value nearest above (or at) max|x| / (2^(bits-1)-1)
 *   q       = round_half_even(clamp(x/scale16, -2^(bits-1), 2^(bits-1)-1)) + 2^(bits-1)
 * (all in float32 with the fp16-rounded parameters; a zero scale gives code 0
 * and then every x equals the group's min).  Rounding the parameters outward
 * keeps the whole group inside the representable range, so every element
 * satisfies |x - dequant(q)| <= scale16/2 up to float32 rounding.
 * 16-bit: x is stored as IEEE fp16 (round to nearest even).
 *
 * Inputs must be finite and within the fp16 range (|x| <= 65504); the
 * quantizers return SKV_EFORMAT otherwise (the caller names the place).
 *
 * Each operation has a scalar reference (_ref, which defines the format), an
 * AVX2 version (_avx2, bit-identical; falls back to _ref where the CPU or the
 * build lacks AVX2), and an unsuffixed dispatcher that uses the fastest
 * available (skv_quant_set_simd(0) forces the reference).
 */
#ifndef SMARTKV_QUANT_H
#define SMARTKV_QUANT_H

#include "smartkv_pack.h"
#include "smartkv_qmath.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SKV_FP16_MAX 65504.0f

/* Check a quantizer configuration: head_dim 1..SKV_MAX_HEAD_DIM, groups
 * dividing head_dim, known modes.  Returns 0 or SKV_EINVAL with a message. */
SKV_EXPORT int skv_qcfg_check(const skv_qcfg *c);

/* The values a trace must hold for skv-alloc and skv-quant alike (one rule,
 * so that an allocation is never made for a trace that cannot be packed):
 * every Q, K and V value finite and within the fp16 range.  K and V must
 * be, to be quantized; Q too, so that every attention score is finite
 * (|q.k| <= 1024 * 65504^2).  x holds rows [row0, row0 + rows) of head
 * `head` of tensor `kind` (SKV_TK_Q, _K or _V) of `layer`, cols values each.
 * Returns 0, or SKV_EFORMAT "value X is not finite or beyond the fp16 range
 * (K of layer L kv head H, token T, channel C)" for the first bad value. */
SKV_EXPORT int skv_trace_values_check(uint32_t kind, uint32_t layer, uint32_t head,
                                      uint64_t row0, uint64_t rows, uint32_t cols,
                                      const float *x);

/* Is `bits` a storable width (2, 3, 4, 8, 16)? */
static inline int skv_bits_valid(uint32_t bits)
{
    return bits == 2 || bits == 3 || bits == 4 || bits == 8 || bits == 16;
}

/* Quantize one vector x[d]; writes par and dat (sizes above).  group must
 * divide d; bits in {2,3,4,8,16}.  Returns 0, SKV_EINVAL (bad arguments) or
 * SKV_EFORMAT (a value is not finite or beyond the fp16 range). */
SKV_EXPORT int skv_quantize_row_ref(const float *x, uint32_t d, uint32_t bits, uint32_t group,
                                    uint32_t mode, uint8_t *par, uint8_t *dat);
SKV_EXPORT int skv_quantize_row_avx2(const float *x, uint32_t d, uint32_t bits, uint32_t group,
                                     uint32_t mode, uint8_t *par, uint8_t *dat);
SKV_EXPORT int skv_quantize_row(const float *x, uint32_t d, uint32_t bits, uint32_t group,
                                uint32_t mode, uint8_t *par, uint8_t *dat);

/* Dequantize one vector into out[d].  Arguments are not re-validated (the
 * bucket reader has done that); bits in {2,3,4,8,16}. */
SKV_EXPORT void skv_dequantize_row_ref(const uint8_t *par, const uint8_t *dat, uint32_t d,
                                       uint32_t bits, uint32_t group, uint32_t mode, float *out);
SKV_EXPORT void skv_dequantize_row_avx2(const uint8_t *par, const uint8_t *dat, uint32_t d,
                                        uint32_t bits, uint32_t group, uint32_t mode, float *out);
SKV_EXPORT void skv_dequantize_row(const uint8_t *par, const uint8_t *dat, uint32_t d,
                                   uint32_t bits, uint32_t group, uint32_t mode, float *out);

/* Bit packing of n codes (each < 2^bits) for bits in {2,3,4,8}: writes
 * skv_row_bytes(bits, n) bytes (the last block padded with zero codes). */
SKV_EXPORT void skv_pack_codes_ref(const uint8_t *codes, uint32_t n, uint32_t bits, uint8_t *out);
SKV_EXPORT void skv_pack_codes_avx2(const uint8_t *codes, uint32_t n, uint32_t bits, uint8_t *out);
SKV_EXPORT void skv_pack_codes(const uint8_t *codes, uint32_t n, uint32_t bits, uint8_t *out);
/* Unpack n codes of a packed row into codes[n]. */
SKV_EXPORT void skv_unpack_codes_ref(const uint8_t *in, uint32_t n, uint32_t bits, uint8_t *codes);
SKV_EXPORT void skv_unpack_codes_avx2(const uint8_t *in, uint32_t n, uint32_t bits, uint8_t *codes);
SKV_EXPORT void skv_unpack_codes(const uint8_t *in, uint32_t n, uint32_t bits, uint8_t *codes);

/* Keys per channel (SKV_QMODE_CHAN, smartkv_pack.h): quantize one group of
 * n rows of d channels (row r at x + r*stride) at bits 2, 3, 4 or 8, the
 * arithmetic of the online cache's grouped layout (lib/eval/ecgroup.c) so
 * that both give the same numbers: per channel, min and max over the n
 * rows, min16 = fp16 nearest to the min, scale16 = fp16 nearest to
 * (max - min) / (2^bits - 1), code = round_half_even((x - min16) /
 * scale16) clamped to [0, 2^bits - 1] (0 when scale16 is 0).  Writes par
 * (4*d bytes: scale16, min16 per channel) and n packed rows, row r at
 * dat + r*skv_row_bytes(bits, d).  A row decodes with skv_dequantize_row(par,
 * row, d, bits, 1, SKV_QMODE_ASYM, out).  Returns 0, SKV_EINVAL or
 * SKV_EFORMAT (a value not finite or beyond the fp16 range; names row and
 * channel). */
SKV_EXPORT int skv_quantize_chan_ref(const float *x, size_t stride, uint32_t n, uint32_t d,
                                     uint32_t bits, uint8_t *par, uint8_t *dat);

/* ---- randomized Hadamard rotation (rotate.c) ----
 * y = H D x / sqrt(d): D the diagonal of random signs of one (layer, KV
 * head), H the Walsh-Hadamard matrix; orthogonal, so q.k and every norm are
 * unchanged (up to float rounding) while an outlier channel is spread over
 * all d channels.  d must be a power of two (<= SKV_MAX_HEAD_DIM).  The
 * packed cache (SKV_ROT_KEYS, SKV_ROT_VALUES in skv_qcfg.rotate) and the
 * online cache (skv-eval --rotate) use exactly these functions. */
/* sign[j] of unit = layer * n_kv_heads + kv_head: -1 when bit 0 of
 * splitmix64((unit << 20) ^ j ^ (seed << 40)) is set, else +1 (smartkv(5)). */
SKV_EXPORT void skv_rot_signs(uint64_t seed, uint64_t unit, uint32_t d, float *sign);
/* In-place Walsh-Hadamard transform of x[d], scaled by 1/sqrt(d) (AVX2
 * where the dispatchers use SIMD). */
SKV_EXPORT void skv_fwht(float *x, uint32_t d);
SKV_EXPORT void skv_fwht_ref(float *x, uint32_t d);  /* the plain loop: the same bits */
/* y = H D x (y may equal x). */
SKV_EXPORT void skv_rot_apply(const float *sign, const float *x, float *y, uint32_t d);
/* y = D H x, the inverse (y may equal x). */
SKV_EXPORT void skv_rot_undo(const float *sign, const float *x, float *y, uint32_t d);

/* 1 if the _avx2 functions really use AVX2 on this CPU and build. */
SKV_EXPORT int skv_quant_have_avx2(void);
/* Enable (1) or disable (0) SIMD in the dispatchers; returns the previous
 * setting.  Also disabled by the environment variable SKV_NO_SIMD=1. */
SKV_EXPORT int skv_quant_set_simd(int on);
/* 1 if the dispatchers use SIMD now. */
SKV_EXPORT int skv_quant_simd(void);

/* The fp16 parameters of one group as the quantizer chooses them (exposed
 * for tests and kernels that quantize on the fly). */
SKV_EXPORT void skv_quant_group_params(const float *x, uint32_t n, uint32_t bits, uint32_t mode,
                                       uint16_t *scale16, uint16_t *min16);

/* ---- online k-means (the merge step) ----
 *
 * Centroids ck, cv: [K][d]; cnt [K] (0 = empty slot).  One token (x, v):
 * the first empty slot takes it as it is (count 1); otherwise the nearest
 * centroid j by squared L2 distance on the keys (ties: lowest j) absorbs
 * it: cnt_j += 1,
 *     key    ck_j += a * (x - ck_j),  a = eta if eta > 0, else 1/cnt_j
 *     value  cv_j += (v - cv_j) / cnt_j   (the mean of the members' values)
 * With eta = 0 the key is the exact mean of the members (MacQueen); a
 * fixed eta weights recent members more.  Returns the slot used. */
SKV_EXPORT uint32_t skv_km_nearest(const float *ck, const uint32_t *cnt, uint32_t K, uint32_t d,
                                   const float *x);
SKV_EXPORT uint32_t skv_km_update(float *ck, float *cv, uint32_t *cnt, uint32_t K, uint32_t d,
                                  const float *x, const float *v, double eta);

#ifdef __cplusplus
}
#endif
#endif
