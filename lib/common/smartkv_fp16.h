/* smartkv_fp16.h -- IEEE half <-> float32 conversions, the one scalar
 * definition used by the library (skv_f32_to_f16 and skv_f16_to_f32 in
 * lib/format/trace.c), the quantizer arithmetic (smartkv_qmath.h,
 * smartkv_qencode.h) and the CUDA kernels.  Static inline functions over
 * plain integers, usable from C, C++ and CUDA device code (__host__
 * __device__ under nvcc); round to nearest even, NaN kept quiet. */
#ifndef SMARTKV_FP16_H
#define SMARTKV_FP16_H

#include <stdint.h>

#if defined(__CUDACC__)
#define SKV_QM_FN static inline __host__ __device__
#else
#define SKV_QM_FN static inline
#endif

SKV_QM_FN float skv_qm_bits_to_f32(uint32_t u)
{
#if defined(__CUDA_ARCH__)
    return __uint_as_float(u);
#else
    union { uint32_t u; float f; } x;
    x.u = u;
    return x.f;
#endif
}

SKV_QM_FN uint32_t skv_qm_f32_to_bits(float f)
{
#if defined(__CUDA_ARCH__)
    return __float_as_uint(f);
#else
    union { float f; uint32_t u; } x;
    x.f = f;
    return x.u;
#endif
}

/* float32 -> IEEE fp16 bits, round to nearest even (same rule and NaN/Inf
 * handling as skv_f32_to_f16). */
SKV_QM_FN uint16_t skv_qm_f2h(float f)
{
    uint32_t u = skv_qm_f32_to_bits(f);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a >= 0x7f800000u)
        return (uint16_t)(sign | 0x7c00u | (a > 0x7f800000u ? (0x200u | ((a >> 13) & 0x3ffu)) : 0));
    if (a >= 0x477ff000u)
        return (uint16_t)(sign | 0x7c00u);
    if (a < 0x38800000u) {
        if (a < 0x33000000u)
            return sign;
        uint32_t e = a >> 23;
        uint32_t m = (a & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e;
        uint32_t hm = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (hm & 1)))
            hm++;
        return (uint16_t)(sign | hm);
    }
    uint32_t r = a - 0x38000000u;
    uint32_t hm = r >> 13;
    uint32_t rem = r & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (hm & 1)))
        hm++;
    return (uint16_t)(sign | hm);
}

/* IEEE fp16 (as bits) to float32, exact for every value incl. subnormals,
 * infinities and NaN (branch-light: usable in SIMD-style code). */
SKV_QM_FN float skv_qm_h2f(uint32_t h)
{
    uint32_t w = h << 16;
    uint32_t sign = w & 0x80000000u;
    uint32_t two_w = w + w;
    /* normal: shift the exponent/mantissa into place and rescale */
    float normal = skv_qm_bits_to_f32((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
    /* subnormal: use the magic-number trick */
    float denorm = skv_qm_bits_to_f32((two_w >> 17) | (126u << 23)) - 0.5f;
    union { float f; uint32_t u; } n, d;
    n.f = normal;
    d.f = denorm;
    uint32_t r = sign | (two_w < (1u << 27) ? d.u : n.u);
    return skv_qm_bits_to_f32(r);
}

#endif
