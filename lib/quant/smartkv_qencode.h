/* smartkv_qencode.h -- the quantizer's arithmetic (encode side) as static
 * inline functions usable from C on the host and from CUDA device code.
 *
 * These functions restate the reference rule of smartkv_quant.h
 * (skv_quantize_row_ref) one group / one 8-value block at a time, so that the
 * CUDA pack kernel (kernels/pack.cu) produces the same bytes as the CPU
 * packer.  lib/quant/quant.c takes its parameter and code rules from here
 * too (one definition); tests/test_cuda.c checks on the CPU, for every
 * width, mode and group size, that a row quantized with these functions is
 * bit-identical to skv_quantize_row_ref (whose SIMD loops restate the rule),
 * and that skv_qm_f2h equals skv_f32_to_f16.  The fp16 conversions are
 * those of smartkv_qmath.h.
 *
 * Only float32 additions, subtractions, divisions and comparisons are used
 * (no multiply-add that a compiler could contract), each correctly rounded on
 * the host (SSE) and on the device (nvcc's default -prec-div=true, no
 * -use_fast_math), so host and device give identical results.
 */
#ifndef SMARTKV_QENCODE_H
#define SMARTKV_QENCODE_H

#include "smartkv_qmath.h"

#include <stdint.h>

#if defined(__CUDACC__)
#define SKV_QE_FN static inline __host__ __device__
#else
#define SKV_QE_FN static inline
#endif

#define SKV_QE_ROUND_MAGIC 0x1.8p23f /* (t + M) - M: round |t| < 2^22 to nearest even */

SKV_QE_FN uint16_t skv_qe_h_next_up(uint16_t h)
{
    if (h == 0x8000u)
        return 0x0001u;
    return (h & 0x8000u) ? (uint16_t)(h - 1) : (uint16_t)(h + 1);
}

SKV_QE_FN uint16_t skv_qe_h_next_down(uint16_t h)
{
    if (h == 0x0000u)
        return 0x8001u;
    return (h & 0x8000u) ? (uint16_t)(h + 1) : (uint16_t)(h - 1);
}

/* The fp16 value nearest at or above / at or below f (finite, in range). */
SKV_QE_FN uint16_t skv_qe_h_ceil(float f)
{
    uint16_t h = skv_qm_f2h(f);
    return skv_qm_h2f(h) < f ? skv_qe_h_next_up(h) : h;
}

SKV_QE_FN uint16_t skv_qe_h_floor(float f)
{
    uint16_t h = skv_qm_f2h(f);
    return skv_qm_h2f(h) > f ? skv_qe_h_next_down(h) : h;
}

/* fp16 parameters of one group from its min and max (mode 1 = asym, 2 = sym). */
SKV_QE_FN void skv_qe_params(float mn, float mx, uint32_t bits, uint32_t mode, uint16_t *s16,
                             uint16_t *m16)
{
    mn += 0.0f; /* -0 -> +0 */
    mx += 0.0f;
    if (mode == 1u) {
        uint16_t mh = skv_qe_h_floor(mn);
        float m = skv_qm_h2f(mh);
        float sc = (mx - m) / (float)((1u << bits) - 1);
        *m16 = mh;
        *s16 = skv_qe_h_ceil(sc);
    } else {
        float amax = -mn > mx ? -mn : mx;
        float sc = amax / (float)((1u << (bits - 1)) - 1);
        *s16 = skv_qe_h_ceil(sc);
        *m16 = 0;
    }
}

/* Round t (|t| < 2^22) to the nearest integer, ties to even. */
SKV_QE_FN float skv_qe_rne(float t)
{
#if defined(__CUDA_ARCH__)
    return __fsub_rn(__fadd_rn(t, SKV_QE_ROUND_MAGIC), SKV_QE_ROUND_MAGIC);
#else
    return (t + SKV_QE_ROUND_MAGIC) - SKV_QE_ROUND_MAGIC;
#endif
}

/* Code of one value given the group's decoded parameters s = fp16(scale),
 * m = fp16(min) (asym); bits 2..8. */
SKV_QE_FN uint32_t skv_qe_code(float x, uint32_t bits, uint32_t mode, float s, float m)
{
    if (mode == 1u) {
        float maxq = (float)((1u << bits) - 1);
        float t = s > 0 ? (x - m) / s : 0.0f;
        t = t < 0 ? 0 : t;
        t = t > maxq ? maxq : t;
        return (uint32_t)(int)skv_qe_rne(t);
    }
    float half = (float)(1u << (bits - 1));
    float t = s > 0 ? x / s : 0.0f;
    t = t < -half ? -half : t;
    t = t > half - 1 ? half - 1 : t;
    return (uint32_t)((int)skv_qe_rne(t) + (int)half);
}

/* Pack 8 codes (each < 2^bits) into the `bits` bytes of one block. */
SKV_QE_FN void skv_qe_pack8(const uint32_t c[8], uint32_t bits, uint8_t *out)
{
    uint64_t w = 0;
    for (uint32_t k = 0; k < 8; k++)
        w |= (uint64_t)(c[k] & ((1u << bits) - 1u)) << (k * bits);
    for (uint32_t i = 0; i < bits; i++)
        out[i] = (uint8_t)(w >> (8 * i));
}

/* Is x finite and within the fp16 range (the quantizer's input domain)? */
SKV_QE_FN int skv_qe_in_range(float x)
{
    return x >= -65504.0f && x <= 65504.0f;
}

/* Quantize one row x[d] at bits (2..8) with `group` channels per scale:
 * writes the parameters and the packed row exactly as skv_quantize_row_ref
 * does.  The caller has checked the arguments and the input range.  (The
 * CUDA kernel splits the same steps across threads.) */
SKV_QE_FN void skv_qe_quantize_row(const float *x, uint32_t d, uint32_t bits, uint32_t group,
                                   uint32_t mode, uint8_t *par, uint8_t *dat)
{
    for (uint32_t g = 0; g < d / group; g++) {
        const float *xg = x + g * group;
        float mn = xg[0], mx = xg[0];
        for (uint32_t i = 1; i < group; i++) {
            mn = xg[i] < mn ? xg[i] : mn;
            mx = xg[i] > mx ? xg[i] : mx;
        }
        uint16_t s16, m16;
        skv_qe_params(mn, mx, bits, mode, &s16, &m16);
        if (mode == 1u) {
            par[4 * g] = (uint8_t)s16;
            par[4 * g + 1] = (uint8_t)(s16 >> 8);
            par[4 * g + 2] = (uint8_t)m16;
            par[4 * g + 3] = (uint8_t)(m16 >> 8);
        } else {
            par[2 * g] = (uint8_t)s16;
            par[2 * g + 1] = (uint8_t)(s16 >> 8);
        }
    }
    for (uint32_t b = 0; b < (d + 7) / 8; b++) {
        uint32_t c[8];
        for (uint32_t k = 0; k < 8; k++) {
            uint32_t j = b * 8 + k;
            c[k] = 0;
            if (j < d) {
                uint32_t g = j / group;
                uint32_t s16 = mode == 1u ? (uint32_t)par[4 * g] | (uint32_t)par[4 * g + 1] << 8
                                          : (uint32_t)par[2 * g] | (uint32_t)par[2 * g + 1] << 8;
                uint32_t m16 = mode == 1u ? (uint32_t)par[4 * g + 2] | (uint32_t)par[4 * g + 3] << 8
                                          : 0u;
                c[k] = skv_qe_code(x[j], bits, mode, skv_qm_h2f(s16),
                                   skv_qm_h2f(m16));
            }
        }
        skv_qe_pack8(c, bits, dat + b * bits);
    }
}

#endif
