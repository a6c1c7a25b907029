/* ggml_quants.c -- ggml block types: dequantization and dot products.
 *
 * Block layouts follow ggml (ggml-common.h); each is a plain struct whose
 * size is asserted.  Values are little-endian; GGUF data is read in place,
 * so the host must be little-endian too.  Every type has a scalar reference
 * (the *_ref functions); the AVX2/FMA/F16C path is chosen at run time and the
 * tests compare the two.
 */
#include "smartkv_gguf.h"
#include "smartkv_trace.h"
#include "x86_cpu.h"

#include <math.h>
#include <string.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "GGUF tensors are read in place: a little-endian host is required"
#endif

#include "ggml_blocks.h"

typedef struct type_info {
    const char *name;
    uint32_t elems, bytes;
} type_info;

static const type_info *info(uint32_t t)
{
    static const type_info f32 = {"f32", 1, 4}, f16 = {"f16", 1, 2}, bf16 = {"bf16", 1, 2},
                           q40 = {"q4_0", QK, sizeof(blk_q4_0)}, q41 = {"q4_1", QK, sizeof(blk_q4_1)},
                           q50 = {"q5_0", QK, sizeof(blk_q5_0)}, q51 = {"q5_1", QK, sizeof(blk_q5_1)},
                           q80 = {"q8_0", QK, sizeof(blk_q8_0)},
                           q4k = {"q4_K", QK_K, sizeof(blk_q4_K)},
                           q5k = {"q5_K", QK_K, sizeof(blk_q5_K)},
                           q6k = {"q6_K", QK_K, sizeof(blk_q6_K)};
    switch (t) {
    case SKV_GGML_F32: return &f32;
    case SKV_GGML_F16: return &f16;
    case SKV_GGML_BF16: return &bf16;
    case SKV_GGML_Q4_0: return &q40;
    case SKV_GGML_Q4_1: return &q41;
    case SKV_GGML_Q5_0: return &q50;
    case SKV_GGML_Q5_1: return &q51;
    case SKV_GGML_Q8_0: return &q80;
    case SKV_GGML_Q4_K: return &q4k;
    case SKV_GGML_Q5_K: return &q5k;
    case SKV_GGML_Q6_K: return &q6k;
    default: return NULL;
    }
}

const char *skv_ggml_type_name(uint32_t t) { return info(t) ? info(t)->name : NULL; }
uint32_t skv_ggml_block_elems(uint32_t t) { return info(t) ? info(t)->elems : 0; }
uint32_t skv_ggml_block_bytes(uint32_t t) { return info(t) ? info(t)->bytes : 0; }

int skv_ggml_row_bytes(uint32_t t, uint64_t n, uint64_t *out)
{
    const type_info *ti = info(t);
    if (!ti)
        return skv_error(SKV_EUNSUP, "unsupported ggml type %u", t);
    if (n % ti->elems)
        return skv_error(SKV_EFORMAT, "row of %llu %s elements is not a whole number of blocks",
                         (unsigned long long)n, ti->name);
    if (__builtin_mul_overflow(n / ti->elems, (uint64_t)ti->bytes, out))
        return skv_error(SKV_ELIMIT, "row of %llu %s elements: size overflows",
                         (unsigned long long)n, ti->name);
    return 0;
}

static inline float h2f(half h) { return skv_f16_to_f32(h); }

/* ---------------- scalar reference ---------------- */

static inline void get_scale_min_k4(int j, const uint8_t *q, uint8_t *d, uint8_t *m)
{
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4));
    }
}

/* Dequantize one block (elems(t) values). */
static void dequant_block_ref(uint32_t t, const uint8_t *src, float *y)
{
    switch (t) {
    case SKV_GGML_F32:
        memcpy(y, src, 4);
        break;
    case SKV_GGML_F16: {
        half h;
        memcpy(&h, src, 2);
        y[0] = h2f(h);
        break;
    }
    case SKV_GGML_BF16: {
        half h;
        memcpy(&h, src, 2);
        y[0] = skv_bf16_to_f32(h);
        break;
    }
    case SKV_GGML_Q4_0: {
        const blk_q4_0 *b = (const blk_q4_0 *)src;
        float d = h2f(b->d);
        for (int j = 0; j < QK / 2; j++) {
            y[j] = ((b->qs[j] & 0xF) - 8) * d;
            y[j + QK / 2] = ((b->qs[j] >> 4) - 8) * d;
        }
        break;
    }
    case SKV_GGML_Q4_1: {
        const blk_q4_1 *b = (const blk_q4_1 *)src;
        float d = h2f(b->d), m = h2f(b->m);
        for (int j = 0; j < QK / 2; j++) {
            y[j] = (b->qs[j] & 0xF) * d + m;
            y[j + QK / 2] = (b->qs[j] >> 4) * d + m;
        }
        break;
    }
    case SKV_GGML_Q5_0: {
        const blk_q5_0 *b = (const blk_q5_0 *)src;
        float d = h2f(b->d);
        uint32_t qh;
        memcpy(&qh, b->qh, 4);
        for (int j = 0; j < QK / 2; j++) {
            int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
            y[j] = (((b->qs[j] & 0xF) | h0) - 16) * d;
            y[j + QK / 2] = (((b->qs[j] >> 4) | h1) - 16) * d;
        }
        break;
    }
    case SKV_GGML_Q5_1: {
        const blk_q5_1 *b = (const blk_q5_1 *)src;
        float d = h2f(b->d), m = h2f(b->m);
        uint32_t qh;
        memcpy(&qh, b->qh, 4);
        for (int j = 0; j < QK / 2; j++) {
            int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
            y[j] = ((b->qs[j] & 0xF) | h0) * d + m;
            y[j + QK / 2] = ((b->qs[j] >> 4) | h1) * d + m;
        }
        break;
    }
    case SKV_GGML_Q8_0: {
        const blk_q8_0 *b = (const blk_q8_0 *)src;
        float d = h2f(b->d);
        for (int j = 0; j < QK; j++)
            y[j] = b->qs[j] * d;
        break;
    }
    case SKV_GGML_Q4_K: {
        const blk_q4_K *b = (const blk_q4_K *)src;
        const uint8_t *q = b->qs;
        float d = h2f(b->d), min = h2f(b->dmin);
        int is = 0;
        for (int j = 0; j < QK_K; j += 64) {
            uint8_t sc, m;
            get_scale_min_k4(is + 0, b->scales, &sc, &m);
            float d1 = d * sc, m1 = min * m;
            get_scale_min_k4(is + 1, b->scales, &sc, &m);
            float d2 = d * sc, m2 = min * m;
            for (int l = 0; l < 32; l++)
                *y++ = d1 * (q[l] & 0xF) - m1;
            for (int l = 0; l < 32; l++)
                *y++ = d2 * (q[l] >> 4) - m2;
            q += 32;
            is += 2;
        }
        break;
    }
    case SKV_GGML_Q5_K: {
        const blk_q5_K *b = (const blk_q5_K *)src;
        const uint8_t *ql = b->qs, *qh = b->qh;
        float d = h2f(b->d), min = h2f(b->dmin);
        int is = 0;
        unsigned u1 = 1, u2 = 2;
        for (int j = 0; j < QK_K; j += 64) {
            uint8_t sc, m;
            get_scale_min_k4(is + 0, b->scales, &sc, &m);
            float d1 = d * sc, m1 = min * m;
            get_scale_min_k4(is + 1, b->scales, &sc, &m);
            float d2 = d * sc, m2 = min * m;
            for (int l = 0; l < 32; l++)
                *y++ = d1 * ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
            for (int l = 0; l < 32; l++)
                *y++ = d2 * ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
            ql += 32;
            is += 2;
            u1 <<= 2;
            u2 <<= 2;
        }
        break;
    }
    case SKV_GGML_Q6_K: {
        const blk_q6_K *b = (const blk_q6_K *)src;
        float d = h2f(b->d);
        const uint8_t *ql = b->ql, *qh = b->qh;
        const int8_t *sc = b->scales;
        for (int n = 0; n < QK_K; n += 128) {
            for (int l = 0; l < 32; l++) {
                int is = l / 16;
                int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * sc[is + 0] * q1;
                y[l + 32] = d * sc[is + 2] * q2;
                y[l + 64] = d * sc[is + 4] * q3;
                y[l + 96] = d * sc[is + 6] * q4;
            }
            y += 128;
            ql += 64;
            qh += 32;
            sc += 8;
        }
        break;
    }
    }
}

void skv_ggml_dequant_ref(uint32_t t, const void *src, float *dst, size_t n)
{
    const type_info *ti = info(t);
    if (!ti)
        return;
    const uint8_t *p = src;
    for (size_t i = 0; i < n; i += ti->elems, p += ti->bytes)
        dequant_block_ref(t, p, dst + i);
}

float skv_ggml_dot_ref(uint32_t t, const void *w, const float *x, size_t n)
{
    const type_info *ti = info(t);
    if (!ti)
        return NAN;
    float tmp[QK_K], sum = 0;
    const uint8_t *p = w;
    for (size_t i = 0; i < n; i += ti->elems, p += ti->bytes) {
        dequant_block_ref(t, p, tmp);
        for (uint32_t j = 0; j < ti->elems; j++)
            sum += tmp[j] * x[i + j];
    }
    return sum;
}

static float vec_dot_ref(const float *a, const float *b, size_t n)
{
    float s = 0;
    for (size_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static void vec_axpy_ref(float *y, float a, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        y[i] += a * x[i];
}

/* ---------------- AVX2 / FMA / F16C ---------------- */

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_X86 1
#include <immintrin.h>

#define AVX2 __attribute__((target("avx2,fma,f16c")))

AVX2 static inline float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

AVX2 static inline float h2f_x(half h) { return _cvtsh_ss(h); }

AVX2 static float vec_dot_avx2(const float *a, const float *b, size_t n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(),
           s3 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= n; i += 8)
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    float s = hsum8(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

AVX2 static void vec_axpy_avx2(float *y, float a, const float *x, size_t n)
{
    __m256 va = _mm256_set1_ps(a);
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++)
        y[i] += a * x[i];
}

/* 16 packed nibbles -> 32 floats: low nibbles are elements 0..15. */
AVX2 static inline void nibbles_to_f32(const uint8_t *qs, __m256 out[4])
{
    __m128i v = _mm_loadu_si128((const __m128i *)qs);
    __m128i m = _mm_set1_epi8(0x0F);
    __m128i lo = _mm_and_si128(v, m), hi = _mm_and_si128(_mm_srli_epi16(v, 4), m);
    out[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
    out[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
    out[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
    out[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
}

AVX2 static inline void i8x32_to_f32(const int8_t *qs, __m256 out[4])
{
    for (int k = 0; k < 4; k++)
        out[k] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(qs + 8 * k))));
}

/* Q6_K: one super-block -> 256 floats. */
AVX2 static void dequant_q6k_avx2(const blk_q6_K *b, float *y)
{
    float d = h2f_x(b->d);
    const uint8_t *ql = b->ql, *qh = b->qh;
    const int8_t *sc = b->scales;
    const __m128i m4 = _mm_set1_epi8(0x0F), m3 = _mm_set1_epi8(3), o32 = _mm_set1_epi8(32);
    for (int n = 0; n < QK_K; n += 128) {
        for (int l = 0; l < 32; l += 16) {
            int is = l / 16;
            __m128i L0 = _mm_loadu_si128((const __m128i *)(ql + l));
            __m128i L1 = _mm_loadu_si128((const __m128i *)(ql + l + 32));
            __m128i H = _mm_loadu_si128((const __m128i *)(qh + l));
            __m128i q[4];
            q[0] = _mm_or_si128(_mm_and_si128(L0, m4), _mm_slli_epi16(_mm_and_si128(H, m3), 4));
            q[1] = _mm_or_si128(_mm_and_si128(L1, m4),
                                _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(H, 2), m3), 4));
            q[2] = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(L0, 4), m4),
                                _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(H, 4), m3), 4));
            q[3] = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(L1, 4), m4),
                                _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(H, 6), m3), 4));
            for (int k = 0; k < 4; k++) {
                __m128i s = _mm_sub_epi8(q[k], o32);
                __m256 scale = _mm256_set1_ps(d * sc[is + 2 * k]);
                __m256 a = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(s));
                __m256 c = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(s, 8)));
                _mm256_storeu_ps(y + 32 * k + l, _mm256_mul_ps(a, scale));
                _mm256_storeu_ps(y + 32 * k + l + 8, _mm256_mul_ps(c, scale));
            }
        }
        y += 128;
        ql += 64;
        qh += 32;
        sc += 8;
    }
}

AVX2 static void dequant_avx2(uint32_t t, const void *src, float *y, size_t n)
{
    const uint8_t *p = src;
    switch (t) {
    case SKV_GGML_F32:
        memcpy(y, src, n * 4);
        return;
    case SKV_GGML_F16: {
        size_t i = 0;
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(y + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 2 * i))));
        for (; i < n; i++) {
            half h;
            memcpy(&h, p + 2 * i, 2);
            y[i] = h2f_x(h);
        }
        return;
    }
    case SKV_GGML_Q4_0:
        for (size_t i = 0; i < n; i += QK) {
            const blk_q4_0 *b = (const blk_q4_0 *)(p + i / QK * sizeof(blk_q4_0));
            __m256 v[4], d = _mm256_set1_ps(h2f_x(b->d)), o = _mm256_set1_ps(-8.0f);
            nibbles_to_f32(b->qs, v);
            for (int k = 0; k < 4; k++)
                _mm256_storeu_ps(y + i + 8 * k, _mm256_mul_ps(_mm256_add_ps(v[k], o), d));
        }
        return;
    case SKV_GGML_Q4_1:
        for (size_t i = 0; i < n; i += QK) {
            const blk_q4_1 *b = (const blk_q4_1 *)(p + i / QK * sizeof(blk_q4_1));
            __m256 v[4], d = _mm256_set1_ps(h2f_x(b->d)), m = _mm256_set1_ps(h2f_x(b->m));
            nibbles_to_f32(b->qs, v);
            for (int k = 0; k < 4; k++)
                _mm256_storeu_ps(y + i + 8 * k, _mm256_fmadd_ps(v[k], d, m));
        }
        return;
    case SKV_GGML_Q8_0:
        for (size_t i = 0; i < n; i += QK) {
            const blk_q8_0 *b = (const blk_q8_0 *)(p + i / QK * sizeof(blk_q8_0));
            __m256 v[4], d = _mm256_set1_ps(h2f_x(b->d));
            i8x32_to_f32(b->qs, v);
            for (int k = 0; k < 4; k++)
                _mm256_storeu_ps(y + i + 8 * k, _mm256_mul_ps(v[k], d));
        }
        return;
    case SKV_GGML_Q6_K:
        for (size_t i = 0; i < n; i += QK_K)
            dequant_q6k_avx2((const blk_q6_K *)(p + i / QK_K * sizeof(blk_q6_K)), y + i);
        return;
    default:
        skv_ggml_dequant_ref(t, src, y, n);
    }
}

AVX2 static float dot_avx2(uint32_t t, const void *w, const float *x, size_t n)
{
    const uint8_t *p = w;
    __m256 acc = _mm256_setzero_ps();
    switch (t) {
    case SKV_GGML_F32:
        return vec_dot_avx2(w, x, n);
    case SKV_GGML_F16: {
        __m256 a1 = _mm256_setzero_ps();
        size_t i = 0;
        for (; i + 16 <= n; i += 16) {
            acc = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 2 * i))),
                                  _mm256_loadu_ps(x + i), acc);
            a1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 2 * i + 16))),
                                 _mm256_loadu_ps(x + i + 8), a1);
        }
        float s = hsum8(_mm256_add_ps(acc, a1));
        for (; i < n; i++) {
            half h;
            memcpy(&h, p + 2 * i, 2);
            s += h2f_x(h) * x[i];
        }
        return s;
    }
    case SKV_GGML_Q4_0: {
        const __m256 o = _mm256_set1_ps(-8.0f);
        for (size_t i = 0; i < n; i += QK) {
            const blk_q4_0 *b = (const blk_q4_0 *)(p + i / QK * sizeof(blk_q4_0));
            __m256 v[4];
            nibbles_to_f32(b->qs, v);
            __m256 s = _mm256_mul_ps(_mm256_add_ps(v[0], o), _mm256_loadu_ps(x + i));
            s = _mm256_fmadd_ps(_mm256_add_ps(v[1], o), _mm256_loadu_ps(x + i + 8), s);
            s = _mm256_fmadd_ps(_mm256_add_ps(v[2], o), _mm256_loadu_ps(x + i + 16), s);
            s = _mm256_fmadd_ps(_mm256_add_ps(v[3], o), _mm256_loadu_ps(x + i + 24), s);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f_x(b->d)), s, acc);
        }
        return hsum8(acc);
    }
    case SKV_GGML_Q4_1: {
        /* sum_j (q_j d + m) x_j = d * sum q_j x_j + m * sum x_j */
        __m256 accm = _mm256_setzero_ps();
        for (size_t i = 0; i < n; i += QK) {
            const blk_q4_1 *b = (const blk_q4_1 *)(p + i / QK * sizeof(blk_q4_1));
            __m256 v[4];
            nibbles_to_f32(b->qs, v);
            __m256 x0 = _mm256_loadu_ps(x + i), x1 = _mm256_loadu_ps(x + i + 8),
                   x2 = _mm256_loadu_ps(x + i + 16), x3 = _mm256_loadu_ps(x + i + 24);
            __m256 s = _mm256_mul_ps(v[0], x0);
            s = _mm256_fmadd_ps(v[1], x1, s);
            s = _mm256_fmadd_ps(v[2], x2, s);
            s = _mm256_fmadd_ps(v[3], x3, s);
            __m256 xs = _mm256_add_ps(_mm256_add_ps(x0, x1), _mm256_add_ps(x2, x3));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f_x(b->d)), s, acc);
            accm = _mm256_fmadd_ps(_mm256_set1_ps(h2f_x(b->m)), xs, accm);
        }
        return hsum8(_mm256_add_ps(acc, accm));
    }
    case SKV_GGML_Q8_0:
        for (size_t i = 0; i < n; i += QK) {
            const blk_q8_0 *b = (const blk_q8_0 *)(p + i / QK * sizeof(blk_q8_0));
            __m256 v[4];
            i8x32_to_f32(b->qs, v);
            __m256 s = _mm256_mul_ps(v[0], _mm256_loadu_ps(x + i));
            s = _mm256_fmadd_ps(v[1], _mm256_loadu_ps(x + i + 8), s);
            s = _mm256_fmadd_ps(v[2], _mm256_loadu_ps(x + i + 16), s);
            s = _mm256_fmadd_ps(v[3], _mm256_loadu_ps(x + i + 24), s);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f_x(b->d)), s, acc);
        }
        return hsum8(acc);
    default: {
        /* Other types: dequantize a block at a time, then a SIMD dot. */
        const type_info *ti = info(t);
        if (!ti)
            return NAN;
        float tmp[QK_K], s = 0;
        for (size_t i = 0; i < n; i += ti->elems, p += ti->bytes) {
            if (t == SKV_GGML_Q6_K)
                dequant_q6k_avx2((const blk_q6_K *)p, tmp);
            else
                dequant_block_ref(t, p, tmp);
            s += vec_dot_avx2(tmp, x + i, ti->elems);
        }
        return s;
    }
    }
}
#else
#define HAVE_X86 0
#endif

/* ---------------- dispatch ---------------- */

static int simd_state = -1;   /* level in use; -1: not yet detected */

static int detect(void)
{
#if HAVE_X86
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") || !skv_x86_f16c())
        return SKV_SIMD_SCALAR;
    return skv_x86_avxvnni() || skv_x86_avx512vnni() ? SKV_SIMD_VNNI : SKV_SIMD_AVX2;
#else
    return SKV_SIMD_SCALAR;
#endif
}

int skv_simd_level(void)
{
    int s = __atomic_load_n(&simd_state, __ATOMIC_RELAXED);
    if (s < 0) {
        s = detect();
        __atomic_store_n(&simd_state, s, __ATOMIC_RELAXED);
    }
    return s;
}

int skv_simd_set_level(int max)
{
    int d = detect();
    __atomic_store_n(&simd_state, max < d ? (max < 0 ? 0 : max) : d, __ATOMIC_RELAXED);
    return skv_simd_level();
}

int skv_simd_active(void) { return skv_simd_level() != SKV_SIMD_SCALAR; }

int skv_simd_enable(int on)
{
    return skv_simd_set_level(on ? SKV_SIMD_VNNI : SKV_SIMD_SCALAR) != SKV_SIMD_SCALAR;
}

void skv_ggml_dequant(uint32_t t, const void *src, float *dst, size_t n)
{
#if HAVE_X86
    if (skv_simd_active()) {
        dequant_avx2(t, src, dst, n);
        return;
    }
#endif
    skv_ggml_dequant_ref(t, src, dst, n);
}

float skv_ggml_dot(uint32_t t, const void *w, const float *x, size_t n)
{
#if HAVE_X86
    if (skv_simd_active())
        return dot_avx2(t, w, x, n);
#endif
    return skv_ggml_dot_ref(t, w, x, n);
}

float skv_vec_dot(const float *a, const float *b, size_t n)
{
#if HAVE_X86
    if (skv_simd_active())
        return vec_dot_avx2(a, b, n);
#endif
    return vec_dot_ref(a, b, n);
}

void skv_vec_axpy(float *y, float a, const float *x, size_t n)
{
#if HAVE_X86
    if (skv_simd_active()) {
        vec_axpy_avx2(y, a, x, n);
        return;
    }
#endif
    vec_axpy_ref(y, a, x, n);
}
