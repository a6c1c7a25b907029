/* ggml_q8.c -- integer dot products of ggml weight blocks with int8
 * activations (ggml's vec_dot with block_q8_1 operands).
 *
 * The model quantizes each activation row once per matrix product and then
 * multiplies the weight blocks in integers: 32 multiply-adds per instruction
 * instead of 8 float ones, and no per-element conversion of the weights.
 * The scalar functions are the reference; the AVX2 (maddubs/madd) and
 * vpdpbusd copies (VEX-encoded AVX-VNNI, or the EVEX form of AVX-512 VNNI
 * on YMM registers for CPUs that have only that one: AMD Zen 4, Intel
 * before Alder Lake / Sapphire Rapids) come from one template
 * (ggml_q8_kern.h), are chosen at run time and are tested against it.
 * Quantization is identical bit for bit in every path (the same float
 * operations, round to nearest even), so paths differ only in the order
 * of the float sums.
 */
#include "smartkv_gguf.h"
#include "smartkv_trace.h"
#include "x86_cpu.h"

#include <math.h>
#include <string.h>

#include "ggml_blocks.h"

_Static_assert(sizeof(skv_q8_block) == 40, "q8 activation block");
_Static_assert(SKV_Q8_BLOCK == QK, "activation blocks match the legacy weight blocks");

int skv_ggml_q8_supported(uint32_t type)
{
    return type == SKV_GGML_Q4_0 || type == SKV_GGML_Q4_1 || type == SKV_GGML_Q8_0;
}

/* ---------------- scalar reference ---------------- */

void skv_q8_quantize_ref(const float *x, skv_q8_block *y, size_t n)
{
    for (size_t i = 0; i < n / QK; i++, x += QK) {
        float amax = 0;
        for (int j = 0; j < QK; j++)
            amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int j = 0; j < QK; j++) {
            int q = (int)nearbyintf(x[j] * id);
            y[i].qs[j] = (int8_t)q;
            sum += q;
        }
        y[i].d = d;
        y[i].sum = sum;
    }
}

static void dot_q8_ref_row(uint32_t type, const uint8_t *w, const skv_q8_block *x, size_t nb,
                           float *out)
{
    float sum = 0;
    for (size_t i = 0; i < nb; i++) {
        const skv_q8_block *y = x + i;
        int sumi = 0;
        float d = 0, m = 0;
        switch (type) {
        case SKV_GGML_Q4_0: {
            const blk_q4_0 *b = (const blk_q4_0 *)w + i;
            for (int j = 0; j < QK / 2; j++)
                sumi += ((b->qs[j] & 0xF) - 8) * y->qs[j] + ((b->qs[j] >> 4) - 8) * y->qs[j + QK / 2];
            d = skv_f16_to_f32(b->d);
            break;
        }
        case SKV_GGML_Q4_1: {
            const blk_q4_1 *b = (const blk_q4_1 *)w + i;
            for (int j = 0; j < QK / 2; j++)
                sumi += (b->qs[j] & 0xF) * y->qs[j] + (b->qs[j] >> 4) * y->qs[j + QK / 2];
            d = skv_f16_to_f32(b->d);
            m = skv_f16_to_f32(b->m);
            break;
        }
        case SKV_GGML_Q8_0: {
            const blk_q8_0 *b = (const blk_q8_0 *)w + i;
            for (int j = 0; j < QK; j++)
                sumi += b->qs[j] * y->qs[j];
            d = skv_f16_to_f32(b->d);
            break;
        }
        default:
            return;
        }
        sum += d * y->d * (float)sumi + m * (y->d * (float)y->sum);
    }
    *out = sum;
}

void skv_ggml_dot_q8_ref(uint32_t type, const void *w, const skv_q8_block *x, size_t x_stride,
                         size_t n, uint32_t nt, float *out)
{
    if (!skv_ggml_q8_supported(type))
        return;
    for (uint32_t t = 0; t < nt && t < 4; t++)
        dot_q8_ref_row(type, w, x + t * x_stride, n / QK, out + t);
}

/* ---------------- rows packed in groups of 8 ---------------- */

/* bytes of one block of a group: scales, then 8 rows of quants */
static size_t x8_block_bytes(uint32_t type)
{
    switch (type) {
    case SKV_GGML_Q4_0: return 16 + 128;
    case SKV_GGML_Q4_1: return 32 + 128;
    case SKV_GGML_Q8_0: return 16 + 256;
    default: return 0;
    }
}

uint64_t skv_q8x8_bytes(uint32_t type, uint64_t n, uint64_t rows)
{
    uint64_t out;
    if (!x8_block_bytes(type) || !n || n % QK || !rows || rows % 8 ||
        __builtin_mul_overflow(rows / 8 * (n / QK), (uint64_t)x8_block_bytes(type), &out))
        return 0;
    return out;
}

void skv_q8x8_pack(uint32_t type, const void *src, size_t row_bytes, uint64_t n, uint64_t rows,
                   void *dst)
{
    const size_t bb = x8_block_bytes(type), nb = n / QK;
    if (!skv_q8x8_bytes(type, n, rows))
        return;
    uint8_t *o = dst;
    for (uint64_t g = 0; g < rows / 8; g++)
        for (size_t i = 0; i < nb; i++, o += bb)
            for (int r = 0; r < 8; r++) {
                const uint8_t *row = (const uint8_t *)src + (g * 8 + (uint64_t)r) * row_bytes;
                if (type == SKV_GGML_Q4_1) {
                    const blk_q4_1 *b = (const blk_q4_1 *)row + i;
                    memcpy(o + 2 * r, &b->d, 2);
                    memcpy(o + 16 + 2 * r, &b->m, 2);
                    for (int c = 0; c < 4; c++)
                        memcpy(o + 32 + 32 * c + 4 * r, b->qs + 4 * c, 4);
                } else if (type == SKV_GGML_Q4_0) {
                    const blk_q4_0 *b = (const blk_q4_0 *)row + i;
                    memcpy(o + 2 * r, &b->d, 2);
                    for (int c = 0; c < 4; c++)
                        memcpy(o + 16 + 32 * c + 4 * r, b->qs + 4 * c, 4);
                } else {
                    const blk_q8_0 *b = (const blk_q8_0 *)row + i;
                    memcpy(o + 2 * r, &b->d, 2);
                    for (int c = 0; c < 8; c++)
                        memcpy(o + 16 + 32 * c + 4 * r, b->qs + 4 * c, 4);
                }
            }
}

static float h16(const uint8_t *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return skv_f16_to_f32(h);
}

/* The reference reads the packed layout directly: it defines it. */
void skv_q8x8_dot_ref(uint32_t type, const void *g, const skv_q8_block *x, size_t x_stride,
                      size_t n, uint32_t nt, float *out, size_t ldo)
{
    const size_t bb = x8_block_bytes(type), nb = n / QK;
    if (!bb)
        return;
    for (uint32_t t = 0; t < nt && t < 4; t++)
        for (int r = 0; r < 8; r++) {
            float sum = 0;
            const uint8_t *b = g;
            for (size_t i = 0; i < nb; i++, b += bb) {
                const skv_q8_block *y = x + t * x_stride + i;
                int sumi = 0;
                float m = 0;
                if (type == SKV_GGML_Q8_0) {
                    for (int c = 0; c < 8; c++)
                        for (int p = 0; p < 4; p++)
                            sumi += (int8_t)b[16 + 32 * c + 4 * r + p] * y->qs[4 * c + p];
                } else {
                    const uint8_t *qs = b + (type == SKV_GGML_Q4_1 ? 32 : 16);
                    int off = type == SKV_GGML_Q4_0 ? 8 : 0;
                    for (int c = 0; c < 4; c++)
                        for (int p = 0; p < 4; p++) {
                            int q = qs[32 * c + 4 * r + p];
                            sumi += ((q & 0xF) - off) * y->qs[4 * c + p] +
                                    ((q >> 4) - off) * y->qs[16 + 4 * c + p];
                        }
                    if (type == SKV_GGML_Q4_1)
                        m = h16(b + 16 + 2 * r);
                }
                sum += h16(b + 2 * r) * y->d * (float)sumi + m * (y->d * (float)y->sum);
            }
            out[t * ldo + (size_t)r] = sum;
        }
}

/* ---------------- AVX2, AVX-VNNI ---------------- */

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_X86 1
#include <immintrin.h>

#define AVX2 __attribute__((target("avx2,fma,f16c")))

AVX2 static void quantize_avx2(const float *x, skv_q8_block *y, size_t n)
{
    const __m256 sign = _mm256_set1_ps(-0.0f);
    /* packs interleave the 128-bit lanes: this restores element order */
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (size_t i = 0; i < n / QK; i++, x += QK) {
        __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8), v2 = _mm256_loadu_ps(x + 16),
               v3 = _mm256_loadu_ps(x + 24);
        __m256 mx = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                                  _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
        __m128 m4 = _mm_max_ps(_mm256_extractf128_ps(mx, 1), _mm256_castps256_ps128(mx));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float amax = _mm_cvtss_f32(m4);
        float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        __m256 vid = _mm256_set1_ps(id);
        /* cvtps rounds to nearest even, as nearbyintf does in the reference */
        __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, vid));
        __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, vid));
        __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, vid));
        __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, vid));
        __m256i s = _mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
        _mm256_storeu_si256((__m256i *)y[i].qs, _mm256_permutevar8x32_epi32(p, perm));
        y[i].d = d;
        y[i].sum = _mm_cvtsi128_si32(s4);
    }
}

#define KN(name) name##_avx2
#define KTARGET AVX2
#define KVNNI 0
#define ACC_U8I8(acc, a, b) \
    _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1)))
#include "ggml_q8_kern.h"
#undef KN
#undef KTARGET
#undef KVNNI
#undef ACC_U8I8

#define KN(name) name##_vnni
#define KTARGET __attribute__((target("avx2,fma,f16c,avxvnni")))
#define KVNNI 1
#define ACC_U8I8(acc, a, b) _mm256_dpbusd_avx_epi32(acc, a, b)
#include "ggml_q8_kern.h"
#undef KN
#undef KTARGET
#undef KVNNI
#undef ACC_U8I8

/* the same instruction, EVEX-encoded: AVX-512 VNNI with VL, 256-bit */
#define KN(name) name##_vnni512
#define KTARGET __attribute__((target("avx2,fma,f16c,avx512vnni,avx512vl")))
#define KVNNI 1
#define ACC_U8I8(acc, a, b) _mm256_dpbusd_epi32(acc, a, b)
#include "ggml_q8_kern.h"
#undef KN
#undef KTARGET
#undef KVNNI
#undef ACC_U8I8

/* at the VNNI level: 1 when the VEX form is there, else the EVEX one */
static int vex_vnni(void)
{
    static int s = -1;
    int v = __atomic_load_n(&s, __ATOMIC_RELAXED);
    if (v < 0) {
        v = skv_x86_avxvnni();
        __atomic_store_n(&s, v, __ATOMIC_RELAXED);
    }
    return v;
}
#else
#define HAVE_X86 0
#endif

/* ---------------- dispatch ---------------- */

void skv_q8_quantize(const float *x, skv_q8_block *y, size_t n)
{
#if HAVE_X86
    if (skv_simd_level() >= SKV_SIMD_AVX2) {
        quantize_avx2(x, y, n);
        return;
    }
#endif
    skv_q8_quantize_ref(x, y, n);
}

void skv_ggml_dot_q8(uint32_t type, const void *w, const skv_q8_block *x, size_t x_stride,
                     size_t n, uint32_t nt, float *out)
{
    if (!skv_ggml_q8_supported(type) || !nt)
        return;
    if (nt > 4)
        nt = 4;
#if HAVE_X86
    int level = skv_simd_level();
    if (level >= SKV_SIMD_VNNI) {
        if (vex_vnni())
            dot_q8_vnni(type, w, x, x_stride, n / QK, nt, out);
        else
            dot_q8_vnni512(type, w, x, x_stride, n / QK, nt, out);
        return;
    }
    if (level >= SKV_SIMD_AVX2) {
        dot_q8_avx2(type, w, x, x_stride, n / QK, nt, out);
        return;
    }
#endif
    skv_ggml_dot_q8_ref(type, w, x, x_stride, n, nt, out);
}

void skv_q8x8_dot(uint32_t type, const void *g, const skv_q8_block *x, size_t x_stride, size_t n,
                  uint32_t nt, float *out, size_t ldo)
{
    if (!x8_block_bytes(type) || !nt)
        return;
    if (nt > 4)
        nt = 4;
#if HAVE_X86
    int level = skv_simd_level();
    if (level >= SKV_SIMD_VNNI) {
        if (vex_vnni())
            x8_dot_vnni(type, g, x, x_stride, n / QK, nt, out, ldo);
        else
            x8_dot_vnni512(type, g, x, x_stride, n / QK, nt, out, ldo);
        return;
    }
    if (level >= SKV_SIMD_AVX2) {
        x8_dot_avx2(type, g, x, x_stride, n / QK, nt, out, ldo);
        return;
    }
#endif
    skv_q8x8_dot_ref(type, g, x, x_stride, n, nt, out, ldo);
}
