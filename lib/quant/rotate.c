/* rotate.c -- the randomized Hadamard rotation of keys, queries and values
 * (smartkv_quant.h): one definition for the online cache (lib/eval/
 * ecgroup.c) and the packed file format (smartkv(5), format 1.3), so a
 * cache file rotates exactly as skv-eval --rotate does. */
#include "smartkv_quant.h"

#include <math.h>
#include <string.h>

/* splitmix64's finalizer: every bit of the input reaches bit 0 */
static uint64_t mix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void skv_rot_signs(uint64_t seed, uint64_t unit, uint32_t d, float *sign)
{
    /* unit < 2^20 and j < 2^10 do not overlap; the seed's low 24 bits do not
     * overlap them either (the high 40 bits are shifted out) */
    for (uint32_t j = 0; j < d; j++)
        sign[j] = (mix64((unit << 20) ^ j ^ (seed << 40)) & 1) ? -1.0f : 1.0f;
}

void skv_fwht_ref(float *x, uint32_t d)
{
    for (uint32_t h = 1; h < d; h *= 2)
        for (uint32_t i = 0; i < d; i += 2 * h)
            for (uint32_t j = i; j < i + h; j++) {
                float a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
    float r = 1.0f / sqrtf((float)d);
    for (uint32_t j = 0; j < d; j++)
        x[j] *= r;
}

/* The butterflies of one stage are independent, so any order gives the
 * same bits: stages 1, 2 and 4 run inside each block of 8 (in registers),
 * the wider ones 8 lanes at a time (vectorized).  skv_fwht_ref is the
 * plain loop, kept as the reference the tests compare with. */
static void fwht_blocks(float *x, uint32_t d)
{
    for (uint32_t i = 0; i < d; i += 8) {
        float a[8], b[8];
        memcpy(a, x + i, sizeof a);
        for (int k = 0; k < 8; k += 2) {
            b[k] = a[k] + a[k + 1];
            b[k + 1] = a[k] - a[k + 1];
        }
        for (int k = 0; k < 8; k += 4)
            for (int j = k; j < k + 2; j++) {
                a[j] = b[j] + b[j + 2];
                a[j + 2] = b[j] - b[j + 2];
            }
        for (int j = 0; j < 4; j++) {
            b[j] = a[j] + a[j + 4];
            b[j + 4] = a[j] - a[j + 4];
        }
        memcpy(x + i, b, sizeof b);
    }
    for (uint32_t h = 8; h < d; h *= 2)
        for (uint32_t i = 0; i < d; i += 2 * h)
            for (uint32_t j = i; j < i + h; j += 8) {
                float *p = x + j, *q = x + j + h;
                for (int k = 0; k < 8; k++) {
                    float a = p[k], b = q[k];
                    p[k] = a + b;
                    q[k] = a - b;
                }
            }
    float r = 1.0f / sqrtf((float)d);
    for (uint32_t j = 0; j < d; j++)
        x[j] *= r;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define FWHT_AVX2 1

/* One block of 8 through stages 1, 2 and 4: at each, the partner lanes
 * are swapped in (a permute), the lower lane of a pair takes a + b and the
 * upper b' - a' with b' the swapped-in lower value: a[j] - a[j + h] as
 * the loop has it.  Additions commute exactly, so v + swapped is a + b. */
__attribute__((target("avx2"))) static inline __m256 fwht8_avx2(__m256 v)
{
    __m256 w = _mm256_permute_ps(v, 0xb1);  /* 1 0 3 2 */
    v = _mm256_blend_ps(_mm256_add_ps(v, w), _mm256_sub_ps(w, v), 0xaa);
    w = _mm256_permute_ps(v, 0x4e);         /* 2 3 0 1 */
    v = _mm256_blend_ps(_mm256_add_ps(v, w), _mm256_sub_ps(w, v), 0xcc);
    w = _mm256_permute2f128_ps(v, v, 0x01); /* the other half */
    return _mm256_blend_ps(_mm256_add_ps(v, w), _mm256_sub_ps(w, v), 0xf0);
}

/* The usual head, d = 64, all in registers: y = H (x * pre) / 8, then
 * times post (pre, post: signs, or NULL). */
__attribute__((target("avx2"))) static void fwht64_avx2(const float *x, float *y,
                                                        const float *pre, const float *post)
{
    __m256 v[8];
    for (int i = 0; i < 8; i++) {
        __m256 a = _mm256_loadu_ps(x + 8 * i);
        if (pre)
            a = _mm256_mul_ps(a, _mm256_loadu_ps(pre + 8 * i));
        v[i] = fwht8_avx2(a);
    }
    for (int h = 1; h < 8; h *= 2)
        for (int i = 0; i < 8; i += 2 * h)
            for (int j = i; j < i + h; j++) {
                __m256 a = v[j], b = v[j + h];
                v[j] = _mm256_add_ps(a, b);
                v[j + h] = _mm256_sub_ps(a, b);
            }
    const __m256 r = _mm256_set1_ps(1.0f / sqrtf(64.0f));
    for (int i = 0; i < 8; i++) {
        __m256 a = _mm256_mul_ps(v[i], r);
        if (post)
            a = _mm256_mul_ps(a, _mm256_loadu_ps(post + 8 * i));
        _mm256_storeu_ps(y + 8 * i, a);
    }
}

__attribute__((target("avx2"))) static void fwht_avx2(float *x, uint32_t d)
{
    if (d == 64) {
        fwht64_avx2(x, x, NULL, NULL);
        return;
    }
    for (uint32_t i = 0; i < d; i += 8)
        _mm256_storeu_ps(x + i, fwht8_avx2(_mm256_loadu_ps(x + i)));
    for (uint32_t h = 8; h < d; h *= 2)
        for (uint32_t i = 0; i < d; i += 2 * h)
            for (uint32_t j = i; j < i + h; j += 8) {
                __m256 a = _mm256_loadu_ps(x + j), b = _mm256_loadu_ps(x + j + h);
                _mm256_storeu_ps(x + j, _mm256_add_ps(a, b));
                _mm256_storeu_ps(x + j + h, _mm256_sub_ps(a, b));
            }
    const __m256 r = _mm256_set1_ps(1.0f / sqrtf((float)d));
    for (uint32_t j = 0; j < d; j += 8)
        _mm256_storeu_ps(x + j, _mm256_mul_ps(_mm256_loadu_ps(x + j), r));
}
#endif

void skv_fwht(float *x, uint32_t d)
{
    if (d % 8) {
        skv_fwht_ref(x, d);
        return;
    }
#ifdef FWHT_AVX2
    if (skv_quant_simd()) {
        fwht_avx2(x, d);
        return;
    }
#endif
    fwht_blocks(x, d);
}

void skv_rot_apply(const float *sign, const float *x, float *y, uint32_t d)
{
#ifdef FWHT_AVX2
    if (d == 64 && skv_quant_simd()) {
        fwht64_avx2(x, y, sign, NULL);
        return;
    }
#endif
    for (uint32_t j = 0; j < d; j++)
        y[j] = x[j] * sign[j];
    skv_fwht(y, d);
}

void skv_rot_undo(const float *sign, const float *x, float *y, uint32_t d)
{
#ifdef FWHT_AVX2
    if (d == 64 && skv_quant_simd()) {
        fwht64_avx2(x, y, NULL, sign);
        return;
    }
#endif
    if (y != x)
        memcpy(y, x, d * sizeof *y);
    skv_fwht(y, d);
    for (uint32_t j = 0; j < d; j++)
        y[j] *= sign[j];
}
