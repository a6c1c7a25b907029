/* ecquant.c -- the grouped layout's quantizer loops (ecquant.h): the
 * scalar references, which define the numbers, and AVX2 copies that give
 * the same bits (IEEE division and subtraction, round to nearest even,
 * the references' compare-and-select order, no fused multiply-add). */
#include "ecquant.h"
#include "smartkv_quant.h"

#include <math.h>
#include <pthread.h>
#include <string.h>

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

float skv_ecq_err_ref(const float *x, uint32_t n, size_t stride, float z, float s, float qmax)
{
    float e[8] = {0, 0, 0, 0, 0, 0, 0, 0};     /* the AVX2 lanes */
    for (uint32_t i = 0; i < n; i++) {
        float u = x[i * stride] - code1(x[i * stride], z, s, qmax);
        e[i % 8] += u * u;
    }
    return ((e[0] + e[1]) + (e[2] + e[3])) + ((e[4] + e[5]) + (e[6] + e[7]));
}

static void err_cols_from(const float *x, uint32_t m, uint32_t d, uint32_t c0, const float *z,
                          const float *s, float qmax, float *err)
{
    for (uint32_t c = c0; c < d; c++) {
        float e = 0;
        for (uint32_t i = 0; i < m; i++) {
            float v = x[(size_t)i * d + c], u = v - code1(v, z[c], s[c], qmax);
            e += u * u;
        }
        err[c] = e;
    }
}

void skv_ecq_err_cols_ref(const float *x, uint32_t m, uint32_t d, const float *z, const float *s,
                          float qmax, float *err)
{
    err_cols_from(x, m, d, 0, z, s, qmax, err);
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

/* The powers of two that imp8 returns, exp2((c - 255) / 16) and (/ 8) for
 * c = 0..255, and the mantissas 2^((k + 1/2) / steps) where its rounding
 * turns, one call each ahead of time. */
static double pow_imp16[256], pow_imp8[256];
static double thr_imp16[16], thr_imp8[8];
static pthread_once_t imp_once = PTHREAD_ONCE_INIT;

static void imp_init(void)
{
    for (int c = 0; c < 256; c++) {
        pow_imp16[c] = exp2((c - 255) / 16.0);
        pow_imp8[c] = exp2((c - 255) / 8.0);
    }
    for (int k = 0; k < 16; k++)
        thr_imp16[k] = exp2((k + 0.5) / 16.0);
    for (int k = 0; k < 8; k++)
        thr_imp8[k] = exp2((k + 0.5) / 8.0);
}

static double imp8(double x, int steps8)
{
    if (!(x > 0))
        return 0;
    if (x >= 1)
        return 1;
    /* nearbyint(steps log2 x) without a log2 per token: x = m 2^e with m
     * in [1, 2), and round(steps log2 m) counts the thresholds
     * 2^((k + 1/2) / steps) at or below m (none is a double) */
    uint64_t u;
    memcpy(&u, &x, sizeof u);
    int ex = (int)((u >> 52) & 0x7ff) - 1023;
    if (ex < -64)
        return 0;
    u = (u & ((1ull << 52) - 1)) | (1023ull << 52);
    double m;
    memcpy(&m, &u, sizeof m);
    const int st = steps8 ? 8 : 16;
    const double *thr = steps8 ? thr_imp8 : thr_imp16;
    int k = 0;
    for (int h = st / 2; h; h /= 2)
        k += m >= thr[k + h - 1] ? h : 0;
    k += m >= thr[k];
    int c = st * ex + k + 255;
    return c < 1 ? 0 : (steps8 ? pow_imp8 : pow_imp16)[c];
}

static void imp_fold_from(const float *I, size_t stride, uint32_t G, uint64_t t0, uint64_t n,
                          int steps8, double *w)
{
    for (uint64_t t = t0; t < n; t++) {
        double s = 0;
        for (uint32_t g = 0; g < G; g++)
            s += I[g * stride + t];
        w[t] = imp8(s / G, steps8);
    }
}

void skv_ecq_imp_fold_ref(const float *I, size_t stride, uint32_t G, uint64_t n, int steps8,
                          double *w)
{
    pthread_once(&imp_once, imp_init);
    imp_fold_from(I, stride, G, 0, n, steps8, w);
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

/* The reference's eight partial sums are the lanes; u * u then an add. */
ECQ_AVX2 static float err_avx2(const float *x, uint32_t n, float z, float s, float qmax)
{
    const __m256 vz = _mm256_set1_ps(z), vs = _mm256_set1_ps(s), vq = _mm256_set1_ps(qmax);
    __m256 e = _mm256_setzero_ps();
    uint32_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i), u = _mm256_sub_ps(v, code8(v, vz, vs, vq));
        e = _mm256_add_ps(e, _mm256_mul_ps(u, u));
    }
    float l[8];
    _mm256_storeu_ps(l, e);
    for (; i < n; i++) {
        float u = x[i] - code1(x[i], z, s, qmax);
        l[i % 8] += u * u;
    }
    return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

/* Eight columns in the lanes, each summed over the rows in order. */
ECQ_AVX2 static void err_cols_avx2(const float *x, uint32_t m, uint32_t d, const float *z,
                                   const float *s, float qmax, float *err)
{
    const __m256 vq = _mm256_set1_ps(qmax);
    uint32_t c = 0;
    for (; c + 8 <= d; c += 8) {
        const __m256 vz = _mm256_loadu_ps(z + c), vs = _mm256_loadu_ps(s + c);
        __m256 e = _mm256_setzero_ps();
        for (uint32_t i = 0; i < m; i++) {
            __m256 v = _mm256_loadu_ps(x + (size_t)i * d + c);
            __m256 u = _mm256_sub_ps(v, code8(v, vz, vs, vq));
            e = _mm256_add_ps(e, _mm256_mul_ps(u, u));
        }
        _mm256_storeu_ps(err + c, e);
    }
    err_cols_from(x, m, d, c, z, s, qmax, err);
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
/* imp8 on four tokens: the threshold count as sixteen (eight) compares
 * instead of the search, the code's power by a gather; the sums in the
 * reference's order, the same division */
ECQ_AVX2 static void imp_fold_avx2(const float *I, size_t stride, uint32_t G, uint64_t n,
                                   int steps8, double *w)
{
    const int st = steps8 ? 8 : 16;
    const double *thr = steps8 ? thr_imp8 : thr_imp16, *pw = steps8 ? pow_imp8 : pow_imp16;
    const __m256d vg = _mm256_set1_pd((double)G), one = _mm256_set1_pd(1), zero = _mm256_setzero_pd();
    const __m256i mant = _mm256_set1_epi64x((long long)((1ull << 52) - 1));
    const __m256i bias = _mm256_set1_epi64x(1023ll << 52);
    const __m256i off = _mm256_set1_epi64x(255 - 1023ll * st);  /* c = st E + k + off */
    uint64_t t = 0;
    for (; t + 4 <= n; t += 4) {
        __m256d s = zero;
        for (uint32_t g = 0; g < G; g++)
            s = _mm256_add_pd(s, _mm256_cvtps_pd(_mm_loadu_ps(I + g * stride + t)));
        __m256d x = _mm256_div_pd(s, vg);
        __m256i u = _mm256_castpd_si256(x);
        __m256d m = _mm256_castsi256_pd(_mm256_or_si256(_mm256_and_si256(u, mant), bias));
        __m256i k = _mm256_setzero_si256();
        for (int i = 0; i < st; i++)
            k = _mm256_sub_epi64(k, _mm256_castpd_si256(
                                        _mm256_cmp_pd(m, _mm256_set1_pd(thr[i]), _CMP_GE_OQ)));
        __m256i e = _mm256_srli_epi64(u, 52);   /* x > 0: no sign bit */
        __m256i c = _mm256_add_epi64(_mm256_add_epi64(steps8 ? _mm256_slli_epi64(e, 3)
                                                             : _mm256_slli_epi64(e, 4), k), off);
        __m256d in = _mm256_and_pd(_mm256_cmp_pd(x, zero, _CMP_GT_OQ),
                                   _mm256_cmp_pd(x, one, _CMP_LT_OQ));
        __m256d ok = _mm256_and_pd(in, _mm256_castsi256_pd(
                                           _mm256_cmpgt_epi64(c, _mm256_setzero_si256())));
        __m256i ci = _mm256_and_si256(c, _mm256_castpd_si256(ok));
        __m256d r = _mm256_mask_i64gather_pd(zero, pw, ci, ok, 8);
        r = _mm256_blendv_pd(r, one, _mm256_cmp_pd(x, one, _CMP_GE_OQ));
        _mm256_storeu_pd(w + t, r);
    }
    imp_fold_from(I, stride, G, t, n, steps8, w);
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

float skv_ecq_err(const float *x, uint32_t n, size_t stride, float z, float s, float qmax)
{
#ifdef ECQ_HAVE_AVX2
    if (stride == 1 && skv_ecq_simd())
        return err_avx2(x, n, z, s, qmax);
#endif
    return skv_ecq_err_ref(x, n, stride, z, s, qmax);
}

void skv_ecq_err_cols(const float *x, uint32_t m, uint32_t d, const float *z, const float *s,
                      float qmax, float *err)
{
#ifdef ECQ_HAVE_AVX2
    if (skv_ecq_simd()) {
        err_cols_avx2(x, m, d, z, s, qmax, err);
        return;
    }
#endif
    skv_ecq_err_cols_ref(x, m, d, z, s, qmax, err);
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

void skv_ecq_imp_fold(const float *I, size_t stride, uint32_t G, uint64_t n, int steps8,
                      double *w)
{
    pthread_once(&imp_once, imp_init);
#ifdef ECQ_HAVE_AVX2
    if (skv_ecq_simd()) {
        imp_fold_avx2(I, stride, G, n, steps8, w);
        return;
    }
#endif
    imp_fold_from(I, stride, G, 0, n, steps8, w);
}
