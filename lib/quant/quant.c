/* quant.c -- round-to-nearest quantizers and bit packing of K/V vectors:
 * scalar references that define the format, and AVX2 versions that must
 * produce the same bytes (tests/test_quant.c checks every width). */
#include "smartkv_quant.h"
#include "smartkv_qencode.h"
#include "smartkv_trace.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#include "x86_cpu.h"
#define SKV_QX86 1
#define SKV_AVX2 __attribute__((target("avx2,f16c")))
#endif

int skv_qcfg_check(const skv_qcfg *c)
{
    if (c->head_dim == 0 || c->head_dim > SKV_MAX_HEAD_DIM)
        return skv_error(SKV_EINVAL, "head_dim %u outside 1..%u", c->head_dim,
                         SKV_MAX_HEAD_DIM);
    if (c->k_group == 0 || c->head_dim % c->k_group)
        return skv_error(SKV_EINVAL, "key group %u does not divide head_dim %u", c->k_group,
                         c->head_dim);
    if (c->v_group == 0 || c->head_dim % c->v_group)
        return skv_error(SKV_EINVAL, "value group %u does not divide head_dim %u", c->v_group,
                         c->head_dim);
    if (c->k_mode < SKV_QMODE_ASYM || c->k_mode > SKV_QMODE_CHAN)
        return skv_error(SKV_EINVAL, "unknown K quantization mode %u (modes: 1 asym, 2 sym, 3 ggml, 4 channel)", c->k_mode);
    if (c->k_mode == SKV_QMODE_CHAN && (c->k_tokens < 2 || c->k_tokens > SKV_KEY_TOKENS_MAX))
        return skv_error(SKV_EINVAL, "key group of %u tokens (keys per channel: 2..%u)",
                         c->k_tokens, SKV_KEY_TOKENS_MAX);
    if (c->k_mode != SKV_QMODE_CHAN && c->k_tokens)
        return skv_error(SKV_EINVAL, "key tokens %u without keys per channel (k_mode 4); the "
                         "field is reserved (zero) otherwise", c->k_tokens);
    if (c->v_mode < SKV_QMODE_ASYM || c->v_mode > SKV_QMODE_GGML)
        return skv_error(SKV_EINVAL, "unknown V quantization mode %u (modes: 1 asym, 2 sym, 3 ggml)", c->v_mode);
    if (c->rotate & ~(SKV_ROT_KEYS | SKV_ROT_VALUES))
        return skv_error(SKV_EINVAL, "unknown rotation flags 0x%x (0x1 keys, 0x2 values)",
                         c->rotate);
    if (!c->rotate && c->rot_seed)
        return skv_error(SKV_EINVAL, "rotation seed %llu without a rotation (the field is "
                         "zero then)", (unsigned long long)c->rot_seed);
    /* the fast Walsh-Hadamard transform halves d at every level */
    if (c->rotate && (c->head_dim & (c->head_dim - 1)))
        return skv_error(SKV_EINVAL, "the Hadamard rotation needs a power-of-two head_dim, "
                         "not %u", c->head_dim);
    return 0;
}

static int check_args(uint32_t d, uint32_t bits, uint32_t group, uint32_t mode)
{
    if (!skv_bits_valid(bits))
        return skv_error(SKV_EINVAL, "bit width %u is not one of 2, 3, 4, 8, 16", bits);
    if (d == 0 || d > SKV_MAX_HEAD_DIM)
        return skv_error(SKV_EINVAL, "vector length %u outside 1..%u", d, SKV_MAX_HEAD_DIM);
    if (bits == 16)
        return 0;
    if (group == 0 || d % group)
        return skv_error(SKV_EINVAL, "group size %u does not divide vector length %u", group, d);
    if (mode < SKV_QMODE_ASYM || mode > SKV_QMODE_GGML)
        return skv_error(SKV_EINVAL, "unknown quantization mode %u", mode);
    return 0;
}

int skv_trace_values_check(uint32_t kind, uint32_t layer, uint32_t head, uint64_t row0,
                           uint64_t rows, uint32_t cols, const float *x)
{
    const size_t n = (size_t)rows * cols;
    int bad = 0;
    for (size_t i = 0; i < n; i++)
        bad |= !(fabsf(x[i]) <= SKV_FP16_MAX);  /* NaN fails too; no branch: vectorizes */
    if (!bad)
        return 0;
    size_t i = 0;
    while (fabsf(x[i]) <= SKV_FP16_MAX)
        i++;
    return skv_error(SKV_EFORMAT, "value %g is not finite or beyond the fp16 range (%s of "
                     "layer %u %s %u, token %llu, channel %zu)", (double)x[i],
                     skv_tensor_kind_name(kind), layer, kind == SKV_TK_Q ? "head" : "kv head",
                     head, (unsigned long long)(row0 + i / cols), i % cols);
}

/* Name the first bad element of x[n] (called only on failure). */
static int range_error(const float *x, uint32_t n, uint32_t base)
{
    for (uint32_t i = 0; i < n; i++)
        if (!skv_qe_in_range(x[i]))
            return skv_error(SKV_EFORMAT, "value %g at channel %u is not finite or beyond "
                             "the fp16 range", (double)x[i], base + i);
    return skv_error(SKV_EFORMAT, "value out of range");
}

/* ---- llama.cpp's block rule (SKV_QMODE_GGML), scalar only ----
 * quantize_row_q8_0_ref: d = amax / 127, q = roundf(x / d) in -127..127;
 * quantize_row_q4_0_ref (and below 8 bits): m = the value of largest
 * magnitude (the first one on ties), d = m / -2^(b-1),
 * q = min(2^b - 1, (int)(x / d + 2^(b-1) + 0.5)).  Both multiply by the
 * float32 reciprocal of the unrounded d and store d as the nearest fp16,
 * as ggml does; the code is stored offset by 2^(b-1) (x = (code -
 * 2^(b-1)) * d16, the SYM decoding). */
static uint16_t ggml_group(const float *x, uint32_t n, uint32_t bits, uint8_t *codes)
{
    const int half = 1 << (bits - 1);
    float amax = 0.0f, m = 0.0f;
    for (uint32_t i = 0; i < n; i++)
        if (amax < fabsf(x[i])) {
            amax = fabsf(x[i]);
            m = x[i];
        }
    float d = bits == 8 ? amax / 127.0f : m / (float)-half;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    for (uint32_t i = 0; i < n; i++) {
        if (bits == 8) {
            codes[i] = (uint8_t)((int)roundf(x[i] * id) + half);
        } else {
            int q = (int)(int8_t)(x[i] * id + (float)half + 0.5f);
            codes[i] = (uint8_t)(q < 2 * half - 1 ? q : 2 * half - 1);
        }
    }
    return skv_f32_to_f16(d);
}

/* ---- parameters: the rule of smartkv_qencode.h (shared with CUDA) ---- */

void skv_quant_group_params(const float *x, uint32_t n, uint32_t bits, uint32_t mode,
                            uint16_t *scale16, uint16_t *min16)
{
    if (mode == SKV_QMODE_GGML) {
        uint8_t codes[SKV_MAX_HEAD_DIM];
        *scale16 = ggml_group(x, n <= SKV_MAX_HEAD_DIM ? n : SKV_MAX_HEAD_DIM, bits, codes);
        *min16 = 0;
        return;
    }
    float mn = x[0], mx = x[0];
    for (uint32_t i = 1; i < n; i++) {
        mn = x[i] < mn ? x[i] : mn;
        mx = x[i] > mx ? x[i] : mx;
    }
    skv_qe_params(mn, mx, bits, mode, scale16, min16);
}

static void put_params(uint8_t *par, uint32_t gi, uint32_t mode, uint16_t s16, uint16_t m16)
{
    if (mode == SKV_QMODE_ASYM) {
        skv_put16(par + 4 * gi, s16);
        skv_put16(par + 4 * gi + 2, m16);
    } else {
        skv_put16(par + 2 * gi, s16);
    }
}

int skv_quantize_chan_ref(const float *x, size_t stride, uint32_t n, uint32_t d, uint32_t bits,
                          uint8_t *par, uint8_t *dat)
{
    if (bits < 2 || bits > 8 || !skv_bits_valid(bits) || n == 0 || d == 0 ||
        d > SKV_MAX_HEAD_DIM)
        return skv_error(SKV_EINVAL, "keys per channel: bad width %u, rows %u or channels %u",
                         bits, n, d);
    const uint64_t rb = skv_row_bytes(bits, d);
    const float qmax = (float)((1u << bits) - 1u);
    uint8_t codes[SKV_MAX_HEAD_DIM];
    for (uint32_t r = 0; r < n; r++)
        for (uint32_t c = 0; c < d; c++)
            if (!skv_qe_in_range(x[r * stride + c]))
                return skv_error(SKV_EFORMAT, "value %g at row %u channel %u is not finite or "
                                 "beyond the fp16 range", (double)x[r * stride + c], r, c);
    for (uint32_t c = 0; c < d; c++) {
        float mn = x[c], mx = x[c];
        for (uint32_t r = 1; r < n; r++) {
            float a = x[r * stride + c];
            mn = a < mn ? a : mn;
            mx = a > mx ? a : mx;
        }
        uint16_t s16 = skv_f32_to_f16((mx - mn) / qmax), z16 = skv_f32_to_f16(mn);
        skv_put16(par + 4 * (size_t)c, s16);
        skv_put16(par + 4 * (size_t)c + 2, z16);
    }
    for (uint32_t r = 0; r < n; r++) {
        for (uint32_t c = 0; c < d; c++) {
            float s = skv_f16_to_f32((uint16_t)skv_get16(par + 4 * (size_t)c));
            float z = skv_f16_to_f32((uint16_t)skv_get16(par + 4 * (size_t)c + 2));
            float q = 0;
            if (s > 0) {
                q = nearbyintf((x[r * stride + c] - z) / s);
                q = q < 0 ? 0 : q > qmax ? qmax : q;
            }
            codes[c] = (uint8_t)q;
        }
        skv_pack_codes_ref(codes, d, bits, dat + r * rb);
    }
    return 0;
}

/* ---- packing, reference ---- */

void skv_pack_codes_ref(const uint8_t *codes, uint32_t n, uint32_t bits, uint8_t *out)
{
    uint32_t nb = (n + 7) / 8;
    uint32_t mask = (1u << bits) - 1u;
    for (uint32_t b = 0; b < nb; b++) {
        uint64_t w = 0;
        for (uint32_t k = 0; k < 8; k++) {
            uint32_t j = b * 8 + k;
            uint64_t c = j < n ? (codes[j] & mask) : 0;
            w |= c << (k * bits);
        }
        for (uint32_t i = 0; i < bits; i++)
            out[b * bits + i] = (uint8_t)(w >> (8 * i));
    }
}

void skv_unpack_codes_ref(const uint8_t *in, uint32_t n, uint32_t bits, uint8_t *codes)
{
    uint32_t mask = (1u << bits) - 1u;
    for (uint32_t j = 0; j < n; j++) {
        const uint8_t *blk = in + (j / 8) * bits;
        uint64_t w = 0;
        for (uint32_t i = 0; i < bits; i++)
            w |= (uint64_t)blk[i] << (8 * i);
        codes[j] = (uint8_t)((w >> ((j % 8) * bits)) & mask);
    }
}

/* ---- quantize / dequantize, reference ---- */

static void f16_row_ref(const float *x, uint32_t d, uint8_t *dat)
{
    for (uint32_t i = 0; i < d; i++)
        skv_put16(dat + 2 * i, skv_f32_to_f16(x[i]));
}

/* Codes of one group with the reference rule. */
static void group_codes_ref(const float *x, uint32_t n, uint32_t bits, uint32_t mode,
                            uint16_t s16, uint16_t m16, uint8_t *codes)
{
    float s = skv_qm_h2f(s16), m = skv_qm_h2f(m16);
    for (uint32_t i = 0; i < n; i++)
        codes[i] = (uint8_t)skv_qe_code(x[i], bits, mode, s, m);
}

int skv_quantize_row_ref(const float *x, uint32_t d, uint32_t bits, uint32_t group,
                         uint32_t mode, uint8_t *par, uint8_t *dat)
{
    int rc = check_args(d, bits, group, mode);
    if (rc < 0)
        return rc;
    for (uint32_t i = 0; i < d; i++)
        if (!skv_qe_in_range(x[i]))
            return range_error(x, d, 0);
    if (bits == 16) {
        f16_row_ref(x, d, dat);
        return 0;
    }
    uint8_t codes[SKV_MAX_HEAD_DIM];
    for (uint32_t g = 0; g < d / group; g++) {
        if (mode == SKV_QMODE_GGML) {
            skv_put16(par + 2 * g, ggml_group(x + g * group, group, bits, codes + g * group));
            continue;
        }
        uint16_t s16, m16;
        skv_quant_group_params(x + g * group, group, bits, mode, &s16, &m16);
        put_params(par, g, mode, s16, m16);
        group_codes_ref(x + g * group, group, bits, mode, s16, m16, codes + g * group);
    }
    skv_pack_codes_ref(codes, d, bits, dat);
    return 0;
}

void skv_dequantize_row_ref(const uint8_t *par, const uint8_t *dat, uint32_t d, uint32_t bits,
                            uint32_t group, uint32_t mode, float *out)
{
    if (bits == 16) {
        for (uint32_t j = 0; j < d; j++)
            out[j] = skv_qm_h2f(skv_qm_ld16(dat + 2 * j));
        return;
    }
    for (uint32_t g = 0; g < d / group; g++) {
        float s, b;
        skv_qm_group_par(par, g, bits, mode, &s, &b);
        for (uint32_t j = g * group; j < (g + 1) * group; j++)
            out[j] = skv_qm_dequant(skv_qm_code(dat, bits, j), s, b);
    }
}

/* ---- AVX2 ---- */

#ifdef SKV_QX86

SKV_AVX2 static inline __m256i shift_counts(uint32_t bits)
{
    int b = (int)bits;
    return _mm256_setr_epi32(0, b, 2 * b, 3 * b, 4 * b, 5 * b, 6 * b, 7 * b);
}

/* Pack four blocks of 8 codes (dword lanes, each < 2^bits) into 4*bits bytes. */
SKV_AVX2 static inline void pack4_avx2(__m256i a, __m256i b, __m256i c, __m256i d,
                                       uint32_t bits, __m256i sh, uint8_t *out)
{
    if (bits == 8) {
        __m256i ab = _mm256_packus_epi32(a, b);
        __m256i cd = _mm256_packus_epi32(c, d);
        __m256i abcd = _mm256_packus_epi16(ab, cd);
        abcd = _mm256_permutevar8x32_epi32(abcd, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)out, abcd);
        return;
    }
    a = _mm256_sllv_epi32(a, sh);
    b = _mm256_sllv_epi32(b, sh);
    c = _mm256_sllv_epi32(c, sh);
    d = _mm256_sllv_epi32(d, sh);
    /* fields do not overlap, so sums are ORs */
    __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(a, b), _mm256_hadd_epi32(c, d));
    __m128i w = _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
    if (bits == 4) {
        _mm_storeu_si128((__m128i *)out, w);
    } else if (bits == 2) {
        w = _mm_shuffle_epi8(w, _mm_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1,
                                              -1, -1));
        _mm_storel_epi64((__m128i *)out, w);
    } else { /* 3 */
        w = _mm_shuffle_epi8(w, _mm_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1,
                                              -1, -1));
        _mm_storel_epi64((__m128i *)out, w);
        uint32_t tail = (uint32_t)_mm_extract_epi32(w, 2);
        memcpy(out + 8, &tail, 4);
    }
}

/* Codes of 8 values with one group's parameters (dword lanes). */
SKV_AVX2 static inline __m256i codes8_avx2(__m256 v, uint32_t mode, __m256 s, __m256 m,
                                           __m256 lo, __m256 hi, __m256i add, int zero_scale)
{
    __m256 t;
    if (zero_scale)
        t = _mm256_setzero_ps();
    else if (mode == SKV_QMODE_ASYM)
        t = _mm256_div_ps(_mm256_sub_ps(v, m), s);
    else
        t = _mm256_div_ps(v, s);
    t = _mm256_min_ps(_mm256_max_ps(t, lo), hi);
    return _mm256_add_epi32(_mm256_cvtps_epi32(t), add);
}

/* min, max and range check of x[n]; returns 1 if every value is in range. */
SKV_AVX2 static int minmax_avx2(const float *x, uint32_t n, float *mnp, float *mxp)
{
    __m256 vmn = _mm256_set1_ps(__builtin_inff()), vmx = _mm256_set1_ps(-__builtin_inff());
    __m256 lim = _mm256_set1_ps(SKV_FP16_MAX);
    __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 ok = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        vmn = _mm256_min_ps(vmn, v);
        vmx = _mm256_max_ps(vmx, v);
        ok = _mm256_and_ps(ok, _mm256_cmp_ps(_mm256_and_ps(v, absmask), lim, _CMP_LE_OQ));
    }
    __m128 mn4 = _mm_min_ps(_mm256_castps256_ps128(vmn), _mm256_extractf128_ps(vmn, 1));
    __m128 mx4 = _mm_max_ps(_mm256_castps256_ps128(vmx), _mm256_extractf128_ps(vmx, 1));
    mn4 = _mm_min_ps(mn4, _mm_movehl_ps(mn4, mn4));
    mx4 = _mm_max_ps(mx4, _mm_movehl_ps(mx4, mx4));
    mn4 = _mm_min_ss(mn4, _mm_shuffle_ps(mn4, mn4, 1));
    mx4 = _mm_max_ss(mx4, _mm_shuffle_ps(mx4, mx4, 1));
    float mn = _mm_cvtss_f32(mn4), mx = _mm_cvtss_f32(mx4);
    int good = _mm256_movemask_ps(ok) == 0xff;
    for (; i < n; i++) {
        good &= skv_qe_in_range(x[i]);
        mn = x[i] < mn ? x[i] : mn;
        mx = x[i] > mx ? x[i] : mx;
    }
    *mnp = mn;
    *mxp = mx;
    return good;
}

SKV_AVX2 static int f16_row_avx2(const float *x, uint32_t d, uint8_t *dat)
{
    __m256 lim = _mm256_set1_ps(SKV_FP16_MAX);
    __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 ok = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    uint32_t i = 0;
    for (; i + 8 <= d; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        ok = _mm256_and_ps(ok, _mm256_cmp_ps(_mm256_and_ps(v, absmask), lim, _CMP_LE_OQ));
        _mm_storeu_si128((__m128i *)(dat + 2 * i),
                         _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    int good = _mm256_movemask_ps(ok) == 0xff;
    for (; i < d; i++) {
        good &= skv_qe_in_range(x[i]);
        skv_put16(dat + 2 * i, skv_f32_to_f16(x[i]));
    }
    return good ? 0 : range_error(x, d, 0);
}

SKV_AVX2 static int quantize_row_avx2(const float *x, uint32_t d, uint32_t bits, uint32_t group,
                                      uint32_t mode, uint8_t *par, uint8_t *dat)
{
    if (bits == 16)
        return f16_row_avx2(x, d, dat);
    uint32_t ng = d / group;
    if (group % 8 && ng > 1)  /* blocks of 8 would straddle groups */
        return skv_quantize_row_ref(x, d, bits, group, mode, par, dat);
    float sg[SKV_MAX_HEAD_DIM], mg[SKV_MAX_HEAD_DIM];
    uint16_t s16[SKV_MAX_HEAD_DIM], m16[SKV_MAX_HEAD_DIM];
    for (uint32_t g = 0; g < ng; g++) {
        float mn, mx;
        if (!minmax_avx2(x + g * group, group, &mn, &mx))
            return range_error(x, d, 0);
        skv_qe_params(mn, mx, bits, mode, &s16[g], &m16[g]);
        put_params(par, g, mode, s16[g], m16[g]);
        sg[g] = skv_qm_h2f(s16[g]);
        mg[g] = skv_qm_h2f(m16[g]);
    }
    const __m256i sh = shift_counts(bits);
    __m256 lo, hi;
    __m256i add;
    if (mode == SKV_QMODE_ASYM) {
        lo = _mm256_setzero_ps();
        hi = _mm256_set1_ps((float)((1u << bits) - 1));
        add = _mm256_setzero_si256();
    } else {
        float half = (float)(1u << (bits - 1));
        lo = _mm256_set1_ps(-half);
        hi = _mm256_set1_ps(half - 1);
        add = _mm256_set1_epi32((int)half);
    }
    uint32_t nfull = d / 8, blk = 0;
    __m256i q[4];
    /* groups are whole blocks here (or there is one group) */
    for (; blk + 4 <= nfull; blk += 4) {
        for (int k = 0; k < 4; k++) {
            uint32_t g = (blk + (uint32_t)k) * 8 / group;
            __m256 v = _mm256_loadu_ps(x + (blk + (uint32_t)k) * 8);
            /* g < ng: group divides d (checked by the dispatcher) */
            q[k] = codes8_avx2(v, mode, _mm256_set1_ps(sg[g]), _mm256_set1_ps(mg[g]), lo, hi, /* NOLINT(clang-analyzer-core.CallAndMessage) */
                               add, sg[g] == 0);
        }
        pack4_avx2(q[0], q[1], q[2], q[3], bits, sh, dat + blk * bits);
    }
    if (blk * 8 < d) {
        /* up to three full blocks and a partial one: codes, then the reference packer */
        uint8_t codes[32];
        uint32_t n = d - blk * 8;
        for (uint32_t g0 = blk * 8, i = 0; i < n;) {
            uint32_t g = g0 / group, end = (g + 1) * group - g0;
            if (end > n - i)
                end = n - i;
            group_codes_ref(x + g0, end, bits, mode, s16[g], m16[g], codes + i); /* NOLINT(clang-analyzer-core.CallAndMessage): g < ng as above */
            i += end;
            g0 += end;
        }
        skv_pack_codes_ref(codes, n, bits, dat + blk * bits);
    }
    return 0;
}

/* Codes of block blk of a packed row (bits 2..8) in dword lanes. */
SKV_AVX2 static inline __m256i block_codes_avx2(const uint8_t *row, uint32_t bits, uint32_t blk,
                                                __m256i sh, __m256i mask)
{
    const uint8_t *p = row + blk * bits;
    if (bits == 8)
        return _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
    uint32_t w = bits == 2 ? skv_qm_ld16(p) : bits == 3 ? skv_qm_ld24(p) : skv_qm_ld32(p);
    return _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)w), sh), mask);
}

SKV_AVX2 static void dequantize_row_avx2(const uint8_t *par, const uint8_t *dat, uint32_t d,
                                         uint32_t bits, uint32_t group, uint32_t mode,
                                         float *out)
{
    uint32_t j = 0;
    if (bits == 16) {
        for (; j + 8 <= d; j += 8)
            _mm256_storeu_ps(out + j,
                             _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(dat + 2 * j))));
        for (; j < d; j++)
            out[j] = skv_qm_h2f(skv_qm_ld16(dat + 2 * j));
        return;
    }
    uint32_t ng = d / group;
    if (group % 8 && ng > 1) {
        skv_dequantize_row_ref(par, dat, d, bits, group, mode, out);
        return;
    }
    const __m256i sh = shift_counts(bits);
    const __m256i mask = _mm256_set1_epi32((int)((1u << bits) - 1));
    uint32_t nfull = d / 8, gcur = UINT32_MAX;
    float s = 0, b = 0;
    __m256 vs = _mm256_setzero_ps(), vb = _mm256_setzero_ps();
    for (uint32_t blk = 0; blk < nfull; blk++) {
        uint32_t g = blk * 8 / group;
        if (g != gcur) {
            skv_qm_group_par(par, g, bits, mode, &s, &b);
            vs = _mm256_set1_ps(s);
            vb = _mm256_set1_ps(b);
            gcur = g;
        }
        __m256 f = _mm256_cvtepi32_ps(block_codes_avx2(dat, bits, blk, sh, mask));
        /* q*scale is exact, so mul+add equals the reference (and an FMA) */
        _mm256_storeu_ps(out + blk * 8, _mm256_add_ps(_mm256_mul_ps(f, vs), vb));
    }
    for (j = nfull * 8; j < d; j++) {
        skv_qm_group_par(par, j / group, bits, mode, &s, &b);
        out[j] = skv_qm_dequant(skv_qm_code(dat, bits, j), s, b);
    }
}

SKV_AVX2 static void pack_codes_avx2(const uint8_t *codes, uint32_t n, uint32_t bits,
                                     uint8_t *out)
{
    const __m256i sh = shift_counts(bits);
    const __m256i mask = _mm256_set1_epi32((int)((1u << bits) - 1));
    uint32_t blk = 0, nfull = n / 8;
    for (; blk + 4 <= nfull; blk += 4) {
        __m256i q[4];
        for (int k = 0; k < 4; k++)
            q[k] = _mm256_and_si256(
                _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(codes + (blk + (uint32_t)k) * 8))),
                mask);
        pack4_avx2(q[0], q[1], q[2], q[3], bits, sh, out + blk * bits);
    }
    if (blk * 8 < n)
        skv_pack_codes_ref(codes + blk * 8, n - blk * 8, bits, out + blk * bits);
}

SKV_AVX2 static void unpack_codes_avx2(const uint8_t *in, uint32_t n, uint32_t bits,
                                       uint8_t *codes)
{
    const __m256i sh = shift_counts(bits);
    const __m256i mask = _mm256_set1_epi32((int)((1u << bits) - 1));
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    uint32_t blk = 0, nfull = n / 8;
    for (; blk + 4 <= nfull; blk += 4) {
        __m256i a = block_codes_avx2(in, bits, blk, sh, mask);
        __m256i b = block_codes_avx2(in, bits, blk + 1, sh, mask);
        __m256i c = block_codes_avx2(in, bits, blk + 2, sh, mask);
        __m256i d = block_codes_avx2(in, bits, blk + 3, sh, mask);
        __m256i v = _mm256_packus_epi16(_mm256_packus_epi32(a, b), _mm256_packus_epi32(c, d));
        _mm256_storeu_si256((__m256i *)(codes + blk * 8), _mm256_permutevar8x32_epi32(v, perm));
    }
    if (blk * 8 < n)
        skv_unpack_codes_ref(in + blk * bits, n - blk * 8, bits, codes + blk * 8);
}

static int cpu_has_avx2(void)
{
    static int v = -1;
    if (v < 0) {
        unsigned a, b, c, d;
        v = skv_x86_f16c() && __get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & bit_AVX2);
    }
    return v;
}
#else
static int cpu_has_avx2(void) { return 0; }
#endif

int skv_quant_have_avx2(void)
{
    return cpu_has_avx2();
}

static int simd_on = -1;

static int use_simd(void)
{
    if (simd_on < 0)
        simd_on = cpu_has_avx2() && !skv_env_flag("SKV_NO_SIMD");
    return simd_on;
}

int skv_quant_simd(void)
{
    return use_simd();
}

int skv_quant_set_simd(int on)
{
    int prev = use_simd();
    simd_on = on && cpu_has_avx2();
    return prev;
}

int skv_quantize_row_avx2(const float *x, uint32_t d, uint32_t bits, uint32_t group,
                          uint32_t mode, uint8_t *par, uint8_t *dat)
{
#ifdef SKV_QX86
    if (cpu_has_avx2() && mode != SKV_QMODE_GGML) { /* GGML: the reference only */
        int rc = check_args(d, bits, group, mode);
        return rc < 0 ? rc : quantize_row_avx2(x, d, bits, group, mode, par, dat);
    }
#endif
    return skv_quantize_row_ref(x, d, bits, group, mode, par, dat);
}

void skv_dequantize_row_avx2(const uint8_t *par, const uint8_t *dat, uint32_t d, uint32_t bits,
                             uint32_t group, uint32_t mode, float *out)
{
#ifdef SKV_QX86
    if (cpu_has_avx2()) {
        dequantize_row_avx2(par, dat, d, bits, group, mode, out);
        return;
    }
#endif
    skv_dequantize_row_ref(par, dat, d, bits, group, mode, out);
}

void skv_pack_codes_avx2(const uint8_t *codes, uint32_t n, uint32_t bits, uint8_t *out)
{
#ifdef SKV_QX86
    if (cpu_has_avx2()) {
        pack_codes_avx2(codes, n, bits, out);
        return;
    }
#endif
    skv_pack_codes_ref(codes, n, bits, out);
}

void skv_unpack_codes_avx2(const uint8_t *in, uint32_t n, uint32_t bits, uint8_t *codes)
{
#ifdef SKV_QX86
    if (cpu_has_avx2()) {
        unpack_codes_avx2(in, n, bits, codes);
        return;
    }
#endif
    skv_unpack_codes_ref(in, n, bits, codes);
}

int skv_quantize_row(const float *x, uint32_t d, uint32_t bits, uint32_t group, uint32_t mode,
                     uint8_t *par, uint8_t *dat)
{
    return use_simd() ? skv_quantize_row_avx2(x, d, bits, group, mode, par, dat)
                      : skv_quantize_row_ref(x, d, bits, group, mode, par, dat);
}

void skv_dequantize_row(const uint8_t *par, const uint8_t *dat, uint32_t d, uint32_t bits,
                        uint32_t group, uint32_t mode, float *out)
{
    if (use_simd())
        skv_dequantize_row_avx2(par, dat, d, bits, group, mode, out);
    else
        skv_dequantize_row_ref(par, dat, d, bits, group, mode, out);
}

void skv_pack_codes(const uint8_t *codes, uint32_t n, uint32_t bits, uint8_t *out)
{
    if (use_simd())
        skv_pack_codes_avx2(codes, n, bits, out);
    else
        skv_pack_codes_ref(codes, n, bits, out);
}

void skv_unpack_codes(const uint8_t *in, uint32_t n, uint32_t bits, uint8_t *codes)
{
    if (use_simd())
        skv_unpack_codes_avx2(in, n, bits, codes);
    else
        skv_unpack_codes_ref(in, n, bits, codes);
}
