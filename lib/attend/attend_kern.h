/* attend_kern.h -- internal to lib/attend: what the attention kernels share.
 * attend.c (thread pool, scalar references, dispatch, stream driver),
 * attend_avx2.c (the float AVX2 kernels) and attend_i8_<isa>.c (the int8
 * kernels, one instruction set each, from attend_i8.h) include it: a run of
 * rows and its parameters, the int8 scheme's arithmetic, the SIMD helpers,
 * and the kernel tables each of those files defines.  One file per
 * instruction set also lets the build compile them side by side. */
#ifndef SKV_ATTEND_KERN_H
#define SKV_ATTEND_KERN_H

#include "smartkv_attend.h"
#include "smartkv_pack.h"
#include "smartkv_softmax.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define SKV_X86 1
#include <immintrin.h>
#define AVX2_FN __attribute__((target("avx2,fma,f16c,bmi2")))
#endif

#define TILE 32
/* Rows per tile of the int8 kernels: each tile pays its softmax block, its
 * weights' unit and the rescaling of the sums; 128 rows ran the 32K bench
 * 10% faster than 32, the weights then two int8 levels of the largest of
 * 128 (worst error in test_attend 0.00097 against 0.00066, bound 0.002). */
#define I8_TILE 128
#define SKV_GMAX 8          /* query heads per kernel call */
#define SKV_MAX_GROUPS 128  /* parameter groups per row (head_dim / 8) */

/* ---------------------------------------------------------------- rows */

typedef struct run {
    uint32_t bits;              /* 2, 3, 4, 8, 16 (fp16 rows) or 32 (f32 rows) */
    uint32_t kg, vg, kmode, vmode;
    uint32_t kps, vps, rs;      /* parameter bytes per row (K, V), data bytes per row */
    const uint8_t *kd, *vd, *kp, *vp;
    const uint32_t *idx;        /* token of row i, or NULL: token = t0 + i */
    uint64_t t0;
    uint64_t n;                 /* rows */
    const float *bias;          /* centroids: log(member count) added to row i's logit
                                   (idx = last members); NULL for tokens */
    uint32_t kgb;               /* bytes of parameters shared by all rows (a key
                                   group per channel: kps 0, kg 1) */
    uint32_t kt;                /* keys per channel in several groups: rows per
                                   group, group j's parameters at kp + j * kgb;
                                   0: one group (or keys per token) */
} run;

static inline uint64_t row_token(const run *R, uint64_t i)
{
    return R->idx ? R->idx[i] : R->t0 + i;
}

/* IEEE fp16 bits to float (exact; portable). */
static inline float h2f(uint32_t h)
{
    uint32_t s = (h & 0x8000u) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    union { uint32_t u; float f; } x;
    if (e == 0) {
        float v = (float)m * 0x1p-24f;
        return s ? -v : v;
    }
    if (e == 31)
        x.u = s | 0x7f800000u | (m << 13);
    else
        x.u = s | ((e + 112) << 23) | (m << 13);
    return x.f;
}

static inline uint32_t ld16(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8; }

/* Scale and bias of group g of a parameter block. */
static inline void group_par(const uint8_t *par, uint32_t g, uint32_t bits, uint32_t mode,
                             float *scale, float *bias)
{
    if (mode == SKV_QMODE_ASYM) {
        *scale = h2f(ld16(par + 4 * g));
        *bias = h2f(ld16(par + 4 * g + 2));
    } else {
        float s = h2f(ld16(par + 2 * g));
        *scale = s;
        *bias = -(float)(1u << (bits - 1)) * s;
    }
}

static inline uint32_t code_at(const uint8_t *row, uint32_t bits, uint32_t j)
{
    const uint8_t *blk = row + (j >> 3) * bits;
    uint32_t k = j & 7u;
    switch (bits) {
    case 2: return (blk[k >> 2] >> (2 * (k & 3))) & 3u;
    case 3: return (((uint32_t)blk[0] | (uint32_t)blk[1] << 8 | (uint32_t)blk[2] << 16) >> (3 * k)) & 7u;
    case 4: return (blk[k >> 1] >> (4 * (k & 1))) & 15u;
    default: return blk[k];
    }
}

/* ---- int8 kernels: shared arithmetic ----
 * (smartkv_attend.h describes the scheme.)  Against 8-bit rows one int8
 * vector cannot hold a query or a tile's weights finely enough (the codes'
 * own rounding is 1/510 of a row's range), so each is two int8 vectors, a
 * coarse one and the rounding left over in units 254 times smaller:
 *   x ~ u * (254 * x1 + x2),   x1 = round(x / (254 u)), x2 in -127..127
 * and every integer sum is formed for both and combined in int32
 * (254 * a1 + a2): twice the integer work, the precision of ~15 bits.
 * Against 2-4 bit rows x1 alone (the query against keys per channel
 * excepted, i8_qlevels): its rounding (1/254 of the largest entry) is
 * small beside the codes' own (1/6 to 1/30 of a row's range), and the
 * integer work halves (a 32K step at beta 0.25: 12% less time for the
 * query, 7% less again for the weights).  What x1 rounds off, summed
 * (err), meets the codes' middle in float (i8_mid), so the integer sum
 * carries it only times (code - middle): half the error or less, and no
 * bias where a large weight rounds its tile's small ones to zero.  Scores:
 *   s = ((sum_j qi_j * code_j) * qs + mid * qerr) * scale + bias * sum_j q_j
 * (the bias term with the float query).  Values, per tile of I8_TILE rows
 * and per head, w_i = p_i * scale_i:
 *   acc += ws * sum_i wi_i * codes_i + mid * werr + sum_i p_i * bias_i
 * (mid * err: 0 with two levels). */
#define I8_QMAX (2 * SKV_GMAX)  /* int8 vectors per call: two per head */
#define I8_VG (SKV_MAX_HEAD_DIM / 32)  /* value groups a row: 32 channels or more each */

/* A run of keys per channel: one key group (scale and minimum per channel,
 * kgb bytes) for all its rows, no per-row key parameters. */
static inline int i8_kchan(const run *R)
{
    return R->kg == 1 && R->kps == 0 && R->kmode == SKV_QMODE_ASYM;
}

/* The int8 levels of a tile's weights: one on 2-4 bit rows, two on 8-bit
 * ones (see above). */
static inline int i8_levels(uint32_t bits)
{
    return bits == 8 ? 2 : 1;
}

/* The int8 levels of the query: as the weights', but two against keys per
 * channel, whose scales, folded into the query, stretch its range (an
 * outlier channel's scale sets the unit): on a trace of the model kivi:4's
 * attention error rose 2.0% with one level there, 0.9% with two (the
 * weights' one level; scripts/int8-fidelity). */
static inline int i8_qlevels(const run *R)
{
    return i8_kchan(R) ? 2 : i8_levels(R->bits);
}

/* With one level, what it rounds off (err, summed) meets the codes' middle
 * in float: the integer sum then carries only the rounding times (code -
 * middle), half the error or less. */
static inline float i8_mid(int levels, uint32_t bits, float err)
{
    return levels == 1 ? 0.5f * (float)((1u << bits) - 1) * err : 0.0f;
}

/* The queries of one kernel call as the int8 kernels take them: qi[2][ng][d]
 * (level 1 of every head, then level 2) and qs[g] with q ~ qs * (254 qi1 +
 * qi2); qsum[g] = sum of q (float).  Quantized once per step and head
 * group, not once per run of rows (i8_quant_q was 2.4% of a 32K step). */
typedef struct i8q {
    int8_t qi[I8_QMAX * SKV_MAX_HEAD_DIM];
    float qs[SKV_GMAX], qsum[SKV_GMAX];
    float qerr[SKV_GMAX];   /* sum of q - 254 qs qi1: what level 1 rounds off
                               (used with one level: keys per token) */
} i8q;

/* The unit of a tile's weights (|w| <= wmax; negative with a ggml scale)
 * and 1 / (254 unit), the factor to i8_split's argument. */
static inline float i8_wunit(float wmax)
{
    return wmax > 0 && wmax <= 3e38f ? wmax / (127.0f * 254.0f) : 0.0f;
}

static inline float i8_winv(float wmax)
{
    return wmax > 0 && wmax <= 3e38f ? 127.0f / wmax : 0.0f;
}

/* The SIMD kernels unpack 32 channels of a row at a time into a permuted
 * order (cheapest for each width): position p of a chunk holds channel
 * 32 * chunk + i8_perm(bits, p). */
static inline uint32_t i8_perm(int bits, uint32_t p)
{
    if (bits == 8)
        return p;
    if (bits == 4)
        return p < 16 ? 2 * p : 2 * (p - 16) + 1;
    if (bits == 2) {
        uint32_t i = p & 15, hi = p >> 4;
        return i < 8 ? 4 * i + hi : 4 * (i - 8) + 2 + hi;
    }
    return p < 8 ? p : p < 16 ? p + 8 : p < 24 ? p - 8 : p;  /* 3 */
}

/* Channel of entry x of the V accumulators: four rows' chunks are
 * transposed so that vector 4*chunk + k, lane l holds position
 * 4k + l (l < 4) or 16 + 4k + l - 4 of the chunk. */
static inline uint32_t i8_vchan(int bits, uint32_t x)
{
    uint32_t r = x & 31, k = r >> 3, l = r & 7;
    return (x & ~31u) + i8_perm(bits, l < 4 ? 4 * k + l : 12 + 4 * k + l);
}

/* The query's int8 vectors qi[ng][d] in the kernels' permuted order.  Not
 * inlined (nor i8_kfold_idx): each runs once per kernel call, and inlined
 * into the 32 kernels they changed the hot loops' code, 5% slower warm. */
static __attribute__((noinline, unused)) void i8_permute_q(const int8_t *qi, uint32_t ng,
                                                           uint32_t d, int bits, int8_t *qp)
{
    for (uint32_t g = 0; g < ng; g++)
        for (uint32_t c = 0; c < d; c += 32)
            for (uint32_t p = 0; p < 32; p++)
                qp[(size_t)g * d + c + p] = qi[(size_t)g * d + c + i8_perm(bits, p)];
}

/* The byte shuffle of i8_kfold: eight int32 vectors of a chunk's channels
 * 0-7, ..., 24-31 packed to bytes (packs_epi32, then packs_epi16, each per
 * 128-bit lane) hold channel c at byte 16 ((c / 4) & 1) + 4 (c / 8) + c % 4;
 * position p of the permuted chunk wants channel i8_perm(bits, p).  lo
 * picks from the low 128 bits, hi from the high (-128: none). */
static __attribute__((noinline, unused)) void i8_kfold_idx(int bits, int8_t *lo, int8_t *hi)
{
    for (uint32_t p = 0; p < 32; p++) {
        uint32_t c = i8_perm(bits, p), b = 16 * ((c / 4) & 1) + 4 * (c / 8) + c % 4;
        lo[p] = b < 16 ? (int8_t)b : (int8_t)-128;
        hi[p] = b >= 16 ? (int8_t)(b - 16) : (int8_t)-128;
    }
}

/* A kernel: rows [r0, r1) of a run folded into the state of ng heads
 * (float; i8_fn: the int8 kernels, with the query quantized in i8q). */
typedef void (*kern_fn)(const run *, uint64_t, uint64_t, const float *, uint32_t, skv_sm_state *,
                        float *, float *, uint64_t);
typedef void (*i8_fn)(const run *, uint64_t, uint64_t, const float *, const i8q *, uint32_t,
                      skv_sm_state *, float *, float *, uint64_t);

#ifdef SKV_X86
AVX2_FN static inline __m256 exp256(__m256 x)
{
    /* x <= 0; Cephes-style expf: 2^n * p(r), rel. error ~1e-7 */
    const __m256 lo = _mm256_set1_ps(-87.0f);
    __m256 zero_mask = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_max_ps(x, lo);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 y = _mm256_set1_ps(1.9875691500E-4f);
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507E-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073E-3f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894E-2f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459E-1f));
    y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201E-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    y = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
    return _mm256_andnot_ps(zero_mask, y);
}

AVX2_FN static inline float hsum256(__m256 v)
{
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    a = _mm_add_ss(a, _mm_movehdup_ps(a));
    return _mm_cvtss_f32(a);
}

AVX2_FN static inline float h2f_f16c(const uint8_t *p)
{
    return _cvtsh_ss((unsigned short)ld16(p));
}

/* Scale/bias of group g (F16C conversion). */
AVX2_FN static inline void group_par_f16c(const uint8_t *par, uint32_t g, const int bits,
                                          uint32_t mode, float *scale, float *bias)
{
    if (mode == SKV_QMODE_ASYM) {
        *scale = h2f_f16c(par + 4 * g);
        *bias = h2f_f16c(par + 4 * g + 2);
    } else {
        float sc = h2f_f16c(par + 2 * g);
        *scale = sc;
        *bias = -(float)(1u << (bits - 1)) * sc;
    }
}

/* ---- int8 kernels: SIMD ---- */

AVX2_FN static inline float hmax256(__m256 v)
{
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    return _mm_cvtss_f32(m4);
}

/* 32 codes (chunk c) of a packed row as bytes, in i8_perm order.  Loads
 * stay inside the row. */
AVX2_FN static inline __attribute__((always_inline)) __m256i
i8_unpack(const uint8_t *row, uint32_t c, const int bits)
{
    const __m128i m15 = _mm_set1_epi8(0x0f);
    if (bits == 8)
        return _mm256_loadu_si256((const __m256i *)(const void *)(row + 32 * (size_t)c));
    if (bits == 4) {
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)(row + 16 * (size_t)c));
        return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(x, 4), m15), _mm_and_si128(x, m15));
    }
    if (bits == 2) {
        __m128i x = _mm_loadl_epi64((const __m128i *)(const void *)(row + 8 * (size_t)c));
        __m128i nb = _mm_unpacklo_epi64(_mm_and_si128(x, m15),
                                        _mm_and_si128(_mm_srli_epi16(x, 4), m15));
        const __m128i m3 = _mm_set1_epi8(3);
        return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(nb, 2), m3), _mm_and_si128(nb, m3));
    }
    /* 3 bits: each value's 16-bit window, shifted to the top by a multiply,
     * then down: blocks 0 and 1 in A, 2 and 3 in B (one per 128-bit lane) */
    const uint8_t *p = row + 12 * (size_t)c;
    uint32_t w2;
    memcpy(&w2, p + 8, 4);
    __m128i x = _mm_unpacklo_epi64(_mm_loadl_epi64((const __m128i *)(const void *)p),
                                   _mm_cvtsi32_si128((int)w2));
    __m256i xx = _mm256_broadcastsi128_si256(x);
    const __m256i ca = _mm256_setr_epi8(0, 1, 0, 1, 0, 1, 1, 2, 1, 2, 1, 2, 2, 3, 2, 3, 3, 4, 3, 4,
                                        3, 4, 4, 5, 4, 5, 4, 5, 5, 6, 5, 6);
    const __m256i cbk = _mm256_setr_epi8(6, 7, 6, 7, 6, 7, 7, 8, 7, 8, 7, 8, 8, 9, 8, 9, 9, 10, 9,
                                         10, 9, 10, 10, 11, 10, 11, 10, 11, 11, 12, 11, 12);
    const __m256i mul = _mm256_setr_epi16(1 << 13, 1 << 10, 1 << 7, 1 << 12, 1 << 9, 1 << 6,
                                          1 << 11, 1 << 8, 1 << 13, 1 << 10, 1 << 7, 1 << 12,
                                          1 << 9, 1 << 6, 1 << 11, 1 << 8);
    __m256i a = _mm256_srli_epi16(_mm256_mullo_epi16(_mm256_shuffle_epi8(xx, ca), mul), 13);
    __m256i b = _mm256_srli_epi16(_mm256_mullo_epi16(_mm256_shuffle_epi8(xx, cbk), mul), 13);
    return _mm256_packus_epi16(a, b);
}

/* i8_unpack with AVX-512 VBMI: the bytes holding each eight codes into a
 * qword (vpermb; 3-bit rows only), vpmultishiftqb takes each code's bits
 * from its offset, one mask: three instructions where i8_unpack takes five
 * (4 bits) to nine (3 bits).  The same bytes in the same order (i8_perm). */
#define VBMI_FN __attribute__((target("avx2,fma,f16c,bmi2,avx512f,avx512vl,avx512vnni,avx512vbmi")))
VBMI_FN static inline __attribute__((always_inline)) __m256i
i8_unpack_vbmi(const uint8_t *row, uint32_t c, const int bits)
{
    if (bits == 8)
        return _mm256_loadu_si256((const __m256i *)(const void *)(row + 32 * (size_t)c));
    if (bits == 4) {
        /* qwords: even channels of bytes 0-7, of 8-15, odd of 0-7, of 8-15 */
        __m128i x = _mm_loadu_si128((const __m128i *)(const void *)(row + 16 * (size_t)c));
        const __m256i ctl = _mm256_setr_epi8(0, 8, 16, 24, 32, 40, 48, 56, 0, 8, 16, 24, 32, 40,
                                             48, 56, 4, 12, 20, 28, 36, 44, 52, 60, 4, 12, 20,
                                             28, 36, 44, 52, 60);
        return _mm256_and_si256(_mm256_multishift_epi64_epi8(ctl, _mm256_broadcastsi128_si256(x)),
                                _mm256_set1_epi8(15));
    }
    if (bits == 2) {
        /* qword k: channels 4i + (0, 2, 1, 3)[k] of the chunk's 64 bits */
        uint64_t w;
        memcpy(&w, row + 8 * (size_t)c, 8);
        const __m256i ctl = _mm256_setr_epi8(0, 8, 16, 24, 32, 40, 48, 56, 4, 12, 20, 28, 36, 44,
                                             52, 60, 2, 10, 18, 26, 34, 42, 50, 58, 6, 14, 22,
                                             30, 38, 46, 54, 62);
        return _mm256_and_si256(
            _mm256_multishift_epi64_epi8(ctl, _mm256_set1_epi64x((long long)w)),
            _mm256_set1_epi8(3));
    }
    /* 3 bits: qword k gets the 3 bytes of eight codes (blocks 0, 2, 1, 3) */
    const uint8_t *p = row + 12 * (size_t)c;
    uint32_t w2;
    memcpy(&w2, p + 8, 4);
    __m128i x = _mm_unpacklo_epi64(_mm_loadl_epi64((const __m128i *)(const void *)p),
                                   _mm_cvtsi32_si128((int)w2));
    const __m256i idx = _mm256_setr_epi8(0, 1, 2, 0, 0, 0, 0, 0, 6, 7, 8, 0, 0, 0, 0, 0, 3, 4, 5,
                                         0, 0, 0, 0, 0, 9, 10, 11, 0, 0, 0, 0, 0);
    const __m256i ctl = _mm256_setr_epi8(0, 3, 6, 9, 12, 15, 18, 21, 0, 3, 6, 9, 12, 15, 18, 21,
                                         0, 3, 6, 9, 12, 15, 18, 21, 0, 3, 6, 9, 12, 15, 18, 21);
    __m256i y = _mm256_permutexvar_epi8(idx, _mm256_zextsi128_si256(x));
    return _mm256_and_si256(_mm256_multishift_epi64_epi8(ctl, y), _mm256_set1_epi8(7));
}

/* x[0..3]: the same chunk of four rows -> t[k], lane l = the four rows'
 * bytes at position 4k + l (l < 4) or 12 + 4k + l (l >= 4). */
AVX2_FN static inline __attribute__((always_inline)) void i8_transpose4(const __m256i *x,
                                                                        __m256i *t)
{
    __m256i a = _mm256_unpacklo_epi8(x[0], x[1]), b = _mm256_unpackhi_epi8(x[0], x[1]);
    __m256i c = _mm256_unpacklo_epi8(x[2], x[3]), e = _mm256_unpackhi_epi8(x[2], x[3]);
    _mm256_store_si256(t + 0, _mm256_unpacklo_epi16(a, c));
    _mm256_store_si256(t + 1, _mm256_unpackhi_epi16(a, c));
    _mm256_store_si256(t + 2, _mm256_unpacklo_epi16(b, e));
    _mm256_store_si256(t + 3, _mm256_unpackhi_epi16(b, e));
}

/* i8_split on eight lanes (t = x / (254 u)): the two int8 levels, as
 * int32 lanes in -127..127 (NaN lands on 127 here, on 0 in i8_split). */
AVX2_FN static inline __attribute__((always_inline)) void i8_split8(__m256 t, __m256i *x1,
                                                                    __m256i *x2)
{
    const __m256 c127 = _mm256_set1_ps(127.0f), m127 = _mm256_set1_ps(-127.0f);
    t = _mm256_max_ps(_mm256_min_ps(t, c127), m127);
    __m256 r = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 f = _mm256_round_ps(_mm256_mul_ps(_mm256_sub_ps(t, r), _mm256_set1_ps(254.0f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    f = _mm256_max_ps(_mm256_min_ps(f, c127), m127);
    *x1 = _mm256_cvtps_epi32(r);
    *x2 = _mm256_cvtps_epi32(f);
}

/* The lane sums of v[0..7], one per lane. */
AVX2_FN static inline __attribute__((always_inline)) __m256i i8_hsum8(const __m256i *v)
{
    __m256i h01 = _mm256_hadd_epi32(v[0], v[1]), h23 = _mm256_hadd_epi32(v[2], v[3]);
    __m256i h45 = _mm256_hadd_epi32(v[4], v[5]), h67 = _mm256_hadd_epi32(v[6], v[7]);
    __m256i a = _mm256_hadd_epi32(h01, h23), b = _mm256_hadd_epi32(h45, h67);
    return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20),
                            _mm256_permute2x128_si256(a, b, 0x31));
}

/* Scale and bias of rows [0, n) of a single-group parameter section
 * (stride 2: sym/ggml scale; 4: asym scale, min) into sc[I8_TILE], bi[I8_TILE],
 * zeros beyond n up to a multiple of 8: eight rows per F16C conversion. */
AVX2_FN static inline __attribute__((always_inline)) void
i8_tile_par(const uint8_t *par, uint32_t ps, uint32_t mode, const int bits, uint32_t n, float *sc,
            float *bi)
{
    uint32_t i = 0;
    if (mode == SKV_QMODE_ASYM && ps == 4) {
        for (; i + 8 <= n; i += 8) {
            __m256i x = _mm256_loadu_si256((const __m256i *)(const void *)(par + 4 * (size_t)i));
            /* halves: s0 m0 s1 m1 ... -> scales in the low 4 words of each lane */
            x = _mm256_shuffle_epi8(x, _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10,
                                                        11, 14, 15, 0, 1, 4, 5, 8, 9, 12, 13, 2, 3,
                                                        6, 7, 10, 11, 14, 15));
            x = _mm256_permute4x64_epi64(x, 0xd8); /* scales 0-7, then mins 0-7 */
            _mm256_store_ps(sc + i, _mm256_cvtph_ps(_mm256_castsi256_si128(x)));
            _mm256_store_ps(bi + i, _mm256_cvtph_ps(_mm256_extracti128_si256(x, 1)));
        }
    } else if (mode != SKV_QMODE_ASYM && ps == 2) {
        __m256 off = _mm256_set1_ps(-(float)(1u << (bits - 1)));
        for (; i + 8 <= n; i += 8) {
            __m256 v = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(par + 2 * (size_t)i)));
            _mm256_store_ps(sc + i, v);
            _mm256_store_ps(bi + i, _mm256_mul_ps(v, off));
        }
    }
    for (; i < n; i++)
        group_par_f16c(par + (size_t)i * ps, 0, bits, mode, &sc[i], &bi[i]);
    for (; i < ((n + 7) & ~7u); i++)  /* the pad rows the kernels read */
        sc[i] = bi[i] = 0;
}

/* The rows of the next tile (n of them from row t; n = 0: none), which a
 * kernel prefetches eight at a time while it computes the current tile:
 * the int8 kernels are compute-bound, so a cold cache need not stall them,
 * and a few lines per step keep the fill buffers free for the demand loads. */
typedef struct i8_next {
    const run *R;
    uint64_t t;
    uint32_t n;
} i8_next;

static inline __attribute__((always_inline)) void i8_prefetch(const uint8_t *p, uint64_t n)
{
    for (uint64_t o = 0; o < n; o += 64)
        _mm_prefetch((const char *)(p + o), _MM_HINT_T0);
}

static inline __attribute__((always_inline)) void i8_prefetch_rows(const i8_next *nx, uint32_t i0)
{
    if (i0 >= nx->n)
        return;
    const run *R = nx->R;
    uint64_t t = nx->t + i0, m = nx->n - i0 < 8 ? nx->n - i0 : 8;
    i8_prefetch(R->kd + t * R->rs, m * R->rs);
    i8_prefetch(R->vd + t * R->rs, m * R->rs);
    /* parameters: 2 or 4 bytes a row, a line per 16 or 32 rows */
    if (i0 % 16 == 0) {
        i8_prefetch(R->kp + t * R->kps, 1);
        i8_prefetch(R->vp + t * R->vps, 1);
    }
}

/* attend_avx2.c: the float kernel for rows of `bits` and ng heads */
kern_fn skv_att_avx2_kernel(uint32_t bits, uint32_t ng);

/* attend_i8_<isa>.c: the int8 kernels by width (2, 3, 4, 8) and heads, and
 * the blocks of skv_att_i8_dots / skv_att_i8_vacc */
#define SKV_ATT_I8_DECL(isa)                                                                    \
    extern const i8_fn skv_att_i8_kernels_##isa[4][SKV_GMAX];                                 \
    void skv_att_i8_dots_rows_##isa(const uint8_t *rows, size_t stride, uint32_t n,           \
                                    const int8_t *qp, uint32_t d, int bits, int nq,           \
                                    int32_t *dots);                                           \
    void skv_att_i8_vacc_rows_##isa(const uint8_t *rows, size_t stride, uint32_t n,           \
                                    const int8_t *w, uint32_t d, int bits, int nq,            \
                                    int32_t *acc);
SKV_ATT_I8_DECL(avx2)
SKV_ATT_I8_DECL(vnni512)
SKV_ATT_I8_DECL(vbmi)
SKV_ATT_I8_DECL(avxvnni)
#endif /* SKV_X86 */

#endif
