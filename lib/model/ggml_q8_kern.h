/* ggml_q8_kern.h -- internal template, included by ggml_q8.c once per
 * instruction set: the integer dot products of ggml weight blocks with q8
 * activation blocks.  The includer defines
 *   KN(name)        the name of this copy's function (a suffix per set),
 *   KTARGET         its target attribute,
 *   DOT_U8I8(a, b)  8 int32 lanes, each the sum of 4 adjacent u8 x i8
 *                   products (maddubs + madd on AVX2, vpdpbusd with VNNI).
 * Each block's integer sum is scaled once by the product of the two block
 * scales; NT activation rows share every weight block loaded. */

#define KINL KTARGET static inline __attribute__((always_inline))

KINL float KN(hsum)(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 16 bytes of nibbles -> 32 bytes 0..15: low nibbles first (ggml order). */
KINL __m256i KN(nib32)(const uint8_t *qs)
{
    __m128i v = _mm_loadu_si128((const __m128i *)qs);
    __m256i x = _mm256_inserti128_si256(_mm256_castsi128_si256(v), _mm_srli_epi16(v, 4), 1);
    return _mm256_and_si256(x, _mm256_set1_epi8(0x0F));
}

KINL __m256i KN(xload)(const skv_q8_block *y) { return _mm256_loadu_si256((const __m256i *)y->qs); }

/* q4_1: sum_j (d q_j + m) x_j = d dx sum q_j qx_j + m s. */
KINL void KN(q4_1_body)(const blk_q4_1 *b, const skv_q8_block *x, size_t xs, size_t nb,
                        const uint32_t NT, float *out)
{
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    float sm[4] = {0, 0, 0, 0};
    for (size_t i = 0; i < nb; i++) {
        __m256i q = KN(nib32)(b[i].qs);
        float d = _cvtsh_ss(b[i].d), m = _cvtsh_ss(b[i].m);
        for (uint32_t t = 0; t < NT; t++) {
            const skv_q8_block *y = x + t * xs + i;
            __m256i p = DOT_U8I8(q, KN(xload)(y));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * y->d), _mm256_cvtepi32_ps(p), acc[t]);
            sm[t] += m * y->s;
        }
    }
    for (uint32_t t = 0; t < NT; t++)
        out[t] = KN(hsum)(acc[t]) + sm[t];
}

/* Signed weights (q4_0 after -8, q8_0): |w| times x with w's sign. */
KINL void KN(q4_0_body)(const blk_q4_0 *b, const skv_q8_block *x, size_t xs, size_t nb,
                        const uint32_t NT, float *out)
{
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    const __m256i o8 = _mm256_set1_epi8(8);
    for (size_t i = 0; i < nb; i++) {
        __m256i q = _mm256_sub_epi8(KN(nib32)(b[i].qs), o8), aq = _mm256_sign_epi8(q, q);
        float d = _cvtsh_ss(b[i].d);
        for (uint32_t t = 0; t < NT; t++) {
            const skv_q8_block *y = x + t * xs + i;
            __m256i p = DOT_U8I8(aq, _mm256_sign_epi8(KN(xload)(y), q));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * y->d), _mm256_cvtepi32_ps(p), acc[t]);
        }
    }
    for (uint32_t t = 0; t < NT; t++)
        out[t] = KN(hsum)(acc[t]);
}

KINL void KN(q8_0_body)(const blk_q8_0 *b, const skv_q8_block *x, size_t xs, size_t nb,
                        const uint32_t NT, float *out)
{
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    for (size_t i = 0; i < nb; i++) {
        __m256i q = _mm256_loadu_si256((const __m256i *)b[i].qs), aq = _mm256_sign_epi8(q, q);
        float d = _cvtsh_ss(b[i].d);
        for (uint32_t t = 0; t < NT; t++) {
            const skv_q8_block *y = x + t * xs + i;
            __m256i p = DOT_U8I8(aq, _mm256_sign_epi8(KN(xload)(y), q));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * y->d), _mm256_cvtepi32_ps(p), acc[t]);
        }
    }
    for (uint32_t t = 0; t < NT; t++)
        out[t] = KN(hsum)(acc[t]);
}

/* One copy of each body per row count, so the accumulators stay in registers. */
#define KN_BY_NT(body, blk)                                                                   \
    switch (nt) {                                                                             \
    case 1: body((const blk *)w, x, xs, nb, 1, out); break;                                  \
    case 2: body((const blk *)w, x, xs, nb, 2, out); break;                                  \
    case 3: body((const blk *)w, x, xs, nb, 3, out); break;                                  \
    default: body((const blk *)w, x, xs, nb, 4, out); break;                                 \
    }

KTARGET static void KN(dot_q8)(uint32_t type, const void *w, const skv_q8_block *x, size_t xs,
                               size_t nb, uint32_t nt, float *out)
{
    switch (type) {
    case SKV_GGML_Q4_0: KN_BY_NT(KN(q4_0_body), blk_q4_0) break;
    case SKV_GGML_Q4_1: KN_BY_NT(KN(q4_1_body), blk_q4_1) break;
    case SKV_GGML_Q8_0: KN_BY_NT(KN(q8_0_body), blk_q8_0) break;
    default: break;
    }
}

#undef KN_BY_NT
#undef KINL
