/* smartkv_qmath.h -- dequantization arithmetic and bit unpacking, shared by
 * the C library, the CPU attention kernels and the CUDA kernels.
 *
 * Everything here is a static inline function over plain bytes, usable from
 * C (any compiler), C++ and CUDA device code (__host__ __device__ under
 * nvcc).  It defines the packed format's arithmetic; lib/quant/quant.c implements
 * the quantizer and the bulk (SIMD) loops on top of the same rules.
 *
 * Packed row (one K or V vector of head_dim values at `bits` in {2,3,4,8}):
 * values in channel order, padded with zero codes to a multiple of 8.  Every
 * block of 8 values occupies exactly `bits` bytes, so block b starts at byte
 * b*bits of the row, and within the block the little-endian word of `bits`
 * bytes holds value j (0..7) in bits [j*bits, j*bits+bits).  (2-bit: four
 * values per byte, 3-bit: eight per three bytes, 4-bit: two per byte, low
 * bits first; 8-bit: one per byte.)
 *
 * Parameters of one vector: for each group of `group` channels (group
 * divides head_dim), little-endian IEEE fp16 values:
 *   asym (SKV_QMODE_ASYM): scale, min      (4 bytes per group)
 *   sym  (SKV_QMODE_SYM):  scale           (2 bytes per group)
 * A code q decodes to
 *   x = q * scale + bias      bias = min (asym) or -2^(bits-1) * scale (sym)
 * evaluated in float32.  Because scale is an fp16 value and q < 256, the
 * product q*scale and (sym) bias are exact in float32, so the result has a
 * single rounding: a fused multiply-add and a separate multiply and add give
 * bit-identical values.  Kernels may use either (or fold scale and bias into
 * dot products: sum_i w_i*x_i = scale*sum_i w_i*q_i + bias*sum_i w_i).
 *
 * 16-bit rows are plain IEEE fp16 values (no parameters).
 */
#ifndef SMARTKV_QMATH_H
#define SMARTKV_QMATH_H

#include "smartkv_fp16.h"

#include <stdint.h>


/* Byte access that works on any alignment, host or device. */
SKV_QM_FN uint32_t skv_qm_ld16(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }
SKV_QM_FN uint32_t skv_qm_ld24(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16;
}
SKV_QM_FN uint32_t skv_qm_ld32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Scale and bias of group gi of a vector's parameter bytes. */
SKV_QM_FN void skv_qm_group_par(const uint8_t *par, uint32_t gi, uint32_t bits, uint32_t mode,
                                float *scale, float *bias)
{
    if (mode == 1u /* SKV_QMODE_ASYM */) {
        *scale = skv_qm_h2f(skv_qm_ld16(par + 4 * gi));
        *bias = skv_qm_h2f(skv_qm_ld16(par + 4 * gi + 2));
    } else {
        float s = skv_qm_h2f(skv_qm_ld16(par + 2 * gi));
        *scale = s;
        *bias = -(float)(1u << (bits - 1)) * s;
    }
}

/* Code of value j of a packed row (random access). */
SKV_QM_FN uint32_t skv_qm_code(const uint8_t *row, uint32_t bits, uint32_t j)
{
    const uint8_t *blk = row + (j >> 3) * bits;
    uint32_t k = j & 7u;
    switch (bits) {
    case 2: return (blk[k >> 2] >> (2 * (k & 3))) & 3u;
    case 3: return (skv_qm_ld24(blk) >> (3 * k)) & 7u;
    case 4: return (blk[k >> 1] >> (4 * (k & 1))) & 15u;
    default: return blk[k];
    }
}

/* The 8 codes of block b of a packed row. */
SKV_QM_FN void skv_qm_unpack8(const uint8_t *row, uint32_t bits, uint32_t b, uint8_t out[8])
{
    const uint8_t *blk = row + b * bits;
    if (bits == 8) {
        for (int k = 0; k < 8; k++)
            out[k] = blk[k];
        return;
    }
    uint32_t w = bits == 2 ? skv_qm_ld16(blk) : bits == 3 ? skv_qm_ld24(blk) : skv_qm_ld32(blk);
    uint32_t mask = (1u << bits) - 1u;
    for (int k = 0; k < 8; k++)
        out[k] = (uint8_t)((w >> (k * bits)) & mask);
}

/* Dequantize one code. */
SKV_QM_FN float skv_qm_dequant(uint32_t q, float scale, float bias)
{
    return (float)q * scale + bias;
}

/* Value j of a quantized vector (random access; bits 2..8, or 16 where the
 * row holds fp16 values and par is unused). */
SKV_QM_FN float skv_qm_value(const uint8_t *par, const uint8_t *row, uint32_t bits,
                             uint32_t group, uint32_t mode, uint32_t j)
{
    if (bits == 16)
        return skv_qm_h2f(skv_qm_ld16(row + 2 * j));
    float s, b;
    skv_qm_group_par(par, j / group, bits, mode, &s, &b);
    return skv_qm_dequant(skv_qm_code(row, bits, j), s, b);
}

#endif
