/* ecquant.c -- the grouped layout's quantizer loops (ecquant.h): the
 * scalar references, which define the numbers, and AVX2 copies that give
 * the same bits (IEEE division and subtraction, round to nearest even,
 * the references' compare-and-select order, no fused multiply-add). */
#include "ecquant.h"
#include "smartkv_quant.h"

#include <math.h>

void skv_ecq_minmax_ref(const float *x, uint32_t n, float *mn, float *mx)
{
    float a = x[0], b = x[0];
    for (uint32_t i = 1; i < n; i++) {
        float v = x[i];
        a = v < a ? v : a;
        b = v > b ? v : b;
    }
    *mn = a;
    *mx = b;
}

/* columns c0..d-1 of minmax_cols */
static void minmax_cols_from(const float *x, uint32_t m, uint32_t d, uint32_t c0, float *mn,
                             float *mx)
{
    for (uint32_t c = c0; c < d; c++) {
        float a = x[c], b = x[c];
        for (uint32_t i = 1; i < m; i++) {
            float v = x[(size_t)i * d + c];
            a = v < a ? v : a;
            b = v > b ? v : b;
        }
        mn[c] = a;
        mx[c] = b;
    }
}

void skv_ecq_minmax_cols_ref(const float *x, uint32_t m, uint32_t d, float *mn, float *mx)
{
    minmax_cols_from(x, m, d, 0, mn, mx);
}

static inline float code1(float x, float z, float s, float qmax)
{
    float c = 0;
    if (s > 0) {
        c = nearbyintf((x - z) / s);
        c = c < 0 ? 0 : c > qmax ? qmax : c;
    }
    return z + c * s;
}

void skv_ecq_quant_ref(const float *x, float *y, uint32_t n, float z, float s, float qmax)
{
    for (uint32_t i = 0; i < n; i++)
        y[i] = code1(x[i], z, s, qmax);
}

void skv_ecq_quant_cols_ref(const float *x, float *y, uint32_t m, uint32_t d, const float *z,
                            const float *s, float qmax)
{
    for (uint32_t i = 0; i < m; i++)
        for (uint32_t c = 0; c < d; c++)
            y[(size_t)i * d + c] = code1(x[(size_t)i * d + c], z[c], s[c], qmax);
}

void skv_ecq_sqerr_ref(const float *const *a, const float *const *b, uint32_t n, uint32_t d,
                       double *out)
{
    for (uint32_t i = 0; i < n; i++) {
        double s[4] = {0, 0, 0, 0};     /* four partial sums: the AVX2 lanes */
        for (uint32_t j = 0; j < d; j++) {
            double x = (double)a[i][j] - b[i][j];
            s[j % 4] += x * x;
        }
        out[i] = (s[0] + s[1]) + (s[2] + s[3]);
    }
}

void skv_ecq_colmean_ref(const float *x, uint64_t T, uint32_t d, float *out)
{
    for (uint64_t t = 0; t < T; t++)
        for (uint32_t c = 0; c < d; c++)
            out[c] += x[t * d + c] / (float)T;
}

void skv_ecq_track_ref(float *I, const float *p, uint64_t m, float g, int mode)
{
    const float a = 1.0f - g;
    if (mode == 2)
        for (uint64_t j = 0; j < m; j++)
            I[j] = g * I[j] + a * p[j] * p[j];
    else if (mode == 1)
        for (uint64_t j = 0; j < m; j++)
            I[j] = g * I[j] + a * p[j];
    else
        for (uint64_t j = 0; j < m; j++)
            I[j] += p[j];
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

/* avx2 alone, not fma: z + c * s must stay a multiply and an add */
#define ECQ_AVX2 __attribute__((target("avx2")))

/* min: v < a ? v : a is _mm256_min_ps(v, a); max: v > b ? v : b is
 * _mm256_max_ps(v, b) (each returns its second operand unless the compare
 * holds).  Eight lanes then one reduction visit the values in another
 * order than the scalar loop, which only matters between equal values of
 * different bits: +0 and -0.  A zero result is recomputed by the loop. */
ECQ_AVX2 static void minmax_avx2(const float *x, uint32_t n, float *mn, float *mx)
{
    if (n < 16) {
        skv_ecq_minmax_ref(x, n, mn, mx);
        return;
    }
    __m256 a = _mm256_loadu_ps(x), b = a;
    uint32_t i = 8;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        a = _mm256_min_ps(v, a);
        b = _mm256_max_ps(v, b);
    }
    float la[8], lb[8];
    _mm256_storeu_ps(la, a);
    _mm256_storeu_ps(lb, b);
    float ra = la[0], rb = lb[0];
    for (int k = 1; k < 8; k++) {
        ra = la[k] < ra ? la[k] : ra;
        rb = lb[k] > rb ? lb[k] : rb;
    }
    for (; i < n; i++) {
        ra = x[i] < ra ? x[i] : ra;
        rb = x[i] > rb ? x[i] : rb;
    }
    if (ra == 0 || rb == 0 || x[0] != x[0]) {  /* a zero or a leading NaN: the loop's answer */
        skv_ecq_minmax_ref(x, n, mn, mx);
        return;
    }
    *mn = ra;
    *mx = rb;
}

/* Each column's loop is the reference's, eight columns at a time. */
ECQ_AVX2 static void minmax_cols_avx2(const float *x, uint32_t m, uint32_t d, float *mn,
                                      float *mx)
{
    uint32_t c = 0;
    for (; c + 8 <= d; c += 8) {
        __m256 a = _mm256_loadu_ps(x + c), b = a;
        for (uint32_t i = 1; i < m; i++) {
            __m256 v = _mm256_loadu_ps(x + (size_t)i * d + c);
            a = _mm256_min_ps(v, a);
            b = _mm256_max_ps(v, b);
        }
        _mm256_storeu_ps(mn + c, a);
        _mm256_storeu_ps(mx + c, b);
    }
    minmax_cols_from(x, m, d, c, mn, mx);
}

/* code1 on eight lanes: c < 0 ? 0 : c is _mm256_max_ps(0, c), c > qmax ?
 * qmax : c is _mm256_min_ps(qmax, c) (NaN passes through both, as there). */
ECQ_AVX2 static inline __m256 code8(__m256 x, __m256 z, __m256 s, __m256 qmax)
{
    const __m256 zero = _mm256_setzero_ps();
    __m256 c = _mm256_round_ps(_mm256_div_ps(_mm256_sub_ps(x, z), s),
                               _MM_FROUND_CUR_DIRECTION | _MM_FROUND_NO_EXC);
    c = _mm256_min_ps(qmax, _mm256_max_ps(zero, c));
    c = _mm256_and_ps(c, _mm256_cmp_ps(s, zero, _CMP_GT_OQ)); /* !(s > 0): code 0 */
    return _mm256_add_ps(z, _mm256_mul_ps(c, s));
}

ECQ_AVX2 static void quant_avx2(const float *x, float *y, uint32_t n, float z, float s,
                                float qmax)
{
    const __m256 vz = _mm256_set1_ps(z), vs = _mm256_set1_ps(s), vq = _mm256_set1_ps(qmax);
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, code8(_mm256_loadu_ps(x + i), vz, vs, vq));
    for (; i < n; i++)
        y[i] = code1(x[i], z, s, qmax);
}

ECQ_AVX2 static void quant_cols_avx2(const float *x, float *y, uint32_t m, uint32_t d,
                                     const float *z, const float *s, float qmax)
{
    const __m256 vq = _mm256_set1_ps(qmax);
    for (uint32_t i = 0; i < m; i++) {
        const float *xi = x + (size_t)i * d;
        float *yi = y + (size_t)i * d;
        uint32_t c = 0;
        for (; c + 8 <= d; c += 8)
            _mm256_storeu_ps(yi + c, code8(_mm256_loadu_ps(xi + c), _mm256_loadu_ps(z + c),
                                           _mm256_loadu_ps(s + c), vq));
        for (; c < d; c++)
            yi[c] = code1(xi[c], z[c], s[c], qmax);
    }
}
/* Each row's squared differences in four double lanes (j % 4), summed as
 * (0 + 1) + (2 + 3): the reference's order (the float to double
 * conversions are exact; a multiply, then an add).  Four rows side by
 * side keep the adds independent. */
ECQ_AVX2 static double sum4(__m256d s)
{
    double l[4];
    _mm256_storeu_pd(l, s);
    return (l[0] + l[1]) + (l[2] + l[3]);
}

/* s + (a[0..3] - b[0..3])^2 in double lanes */
ECQ_AVX2 static __m256d sq4(__m256d s, const float *a, const float *b)
{
    __m256d x = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(a)), _mm256_cvtps_pd(_mm_loadu_ps(b)));
    return _mm256_add_pd(s, _mm256_mul_pd(x, x));
}

ECQ_AVX2 static void sqerr_avx2(const float *const *a, const float *const *b, uint32_t n,
                                uint32_t d, double *out)
{
    if (d % 4) {
        skv_ecq_sqerr_ref(a, b, n, d, out);
        return;
    }
    uint32_t i = 0;
    for (; i + 4 <= n; i += 4) {
        __m256d s0 = _mm256_setzero_pd(), s1 = s0, s2 = s0, s3 = s0;
        for (uint32_t j = 0; j < d; j += 4) {
            s0 = sq4(s0, a[i] + j, b[i] + j);
            s1 = sq4(s1, a[i + 1] + j, b[i + 1] + j);
            s2 = sq4(s2, a[i + 2] + j, b[i + 2] + j);
            s3 = sq4(s3, a[i + 3] + j, b[i + 3] + j);
        }
        out[i] = sum4(s0);
        out[i + 1] = sum4(s1);
        out[i + 2] = sum4(s2);
        out[i + 3] = sum4(s3);
    }
    for (; i < n; i++) {
        __m256d s = _mm256_setzero_pd();
        for (uint32_t j = 0; j < d; j += 4)
            s = sq4(s, a[i] + j, b[i] + j);
        out[i] = sum4(s);
    }
}
ECQ_AVX2 static void colmean_avx2(const float *x, uint64_t T, uint32_t d, float *out)
{
    const __m256 n = _mm256_set1_ps((float)T);
    uint32_t c = 0;
    for (; c + 8 <= d; c += 8) {
        __m256 s = _mm256_loadu_ps(out + c);
        for (uint64_t t = 0; t < T; t++)
            s = _mm256_add_ps(s, _mm256_div_ps(_mm256_loadu_ps(x + t * d + c), n));
        _mm256_storeu_ps(out + c, s);
    }
    for (; c < d; c++)
        for (uint64_t t = 0; t < T; t++)
            out[c] += x[t * d + c] / (float)T;
}
/* the reference's products and sum, eight at a time (no fused
 * multiply-add, so the same roundings) */
ECQ_AVX2 static void track_avx2(float *I, const float *p, uint64_t m, float g, int mode)
{
    const float a = 1.0f - g;
    const __m256 vg = _mm256_set1_ps(g), va = _mm256_set1_ps(a);
    uint64_t j = 0;
    for (; j + 8 <= m; j += 8) {
        __m256 x = _mm256_loadu_ps(p + j), y = _mm256_loadu_ps(I + j);
        if (mode == 0) {
            y = _mm256_add_ps(y, x);
        } else {
            __m256 t = _mm256_mul_ps(va, x);
            if (mode == 2)
                t = _mm256_mul_ps(t, x);
            y = _mm256_add_ps(_mm256_mul_ps(vg, y), t);
        }
        _mm256_storeu_ps(I + j, y);
    }
    skv_ecq_track_ref(I + j, p + j, m - j, g, mode);
}
#define ECQ_HAVE_AVX2 1
#endif

int skv_ecq_simd(void)
{
#ifdef ECQ_HAVE_AVX2
    return skv_quant_simd();
#else
    return 0;
#endif
}

void skv_ecq_minmax(const float *x, uint32_t n, float *mn, float *mx)
{
#ifdef ECQ_HAVE_AVX2
    if (skv_ecq_simd()) {
        minmax_avx2(x, n, mn, mx);
        return;
    }
#endif
    skv_ecq_minmax_ref(x, n, mn, mx);
}

void skv_ecq_minmax_cols(const float *x, uint32_t m, uint32_t d, float *mn, float *mx)
{
#ifdef ECQ_HAVE_AVX2
    if (skv_ecq_simd()) {
        minmax_cols_avx2(x, m, d, mn, mx);
        return;
    }
#endif
    skv_ecq_minmax_cols_ref(x, m, d, mn, mx);
}

void skv_ecq_quant(const float *x, float *y, uint32_t n, float z, float s, float qmax)
{
#ifdef ECQ_HAVE_AVX2
    if (skv_ecq_simd()) {
        quant_avx2(x, y, n, z, s, qmax);
        return;
    }
#endif
    skv_ecq_quant_ref(x, y, n, z, s, qmax);
}

void skv_ecq_quant_cols(const float *x, float *y, uint32_t m, uint32_t d, const float *z,
                        const float *s, float qmax)
{
#ifdef ECQ_HAVE_AVX2
    if (skv_ecq_simd()) {
        quant_cols_avx2(x, y, m, d, z, s, qmax);
        return;
    }
#endif
    skv_ecq_quant_cols_ref(x, y, m, d, z, s, qmax);
}

void skv_ecq_sqerr(const float *const *a, const float *const *b, uint32_t n, uint32_t d,
                   double *out)
{
#ifdef ECQ_HAVE_AVX2
    if (skv_ecq_simd()) {
        sqerr_avx2(a, b, n, d, out);
        return;
    }
#endif
    skv_ecq_sqerr_ref(a, b, n, d, out);
}

void skv_ecq_colmean(const float *x, uint64_t T, uint32_t d, float *out)
{
#ifdef ECQ_HAVE_AVX2
    if (skv_ecq_simd()) {
        colmean_avx2(x, T, d, out);
        return;
    }
#endif
    skv_ecq_colmean_ref(x, T, d, out);
}

void skv_ecq_track(float *I, const float *p, uint64_t m, float g, int mode)
{
#ifdef ECQ_HAVE_AVX2
    if (skv_ecq_simd()) {
        track_avx2(I, p, m, g, mode);
        return;
    }
#endif
    skv_ecq_track_ref(I, p, m, g, mode);
}
