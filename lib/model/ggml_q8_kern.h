/* ggml_q8_kern.h -- internal template, included by ggml_q8.c once per
 * instruction set: the integer dot products of ggml weight blocks with q8
 * activation blocks.  The includer defines
 *   KN(name)        the name of this copy's function (a suffix per set),
 *   KTARGET         its target attribute,
 *   ACC_U8I8(acc, a, b)  acc plus 8 int32 lanes, each the sum of 4 adjacent
 *                   u8 x i8 products (maddubs + madd on AVX2, vpdpbusd
 *                   with VNNI; the AVX2 form saturates at 16 bits per pair),
 *   KVNNI           1 when ACC_U8I8 is vpdpbusd (no 16-bit saturation).
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
            __m256i p = ACC_U8I8(_mm256_setzero_si256(), q, KN(xload)(y));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * y->d), _mm256_cvtepi32_ps(p), acc[t]);
            sm[t] += m * (y->d * (float)y->sum);
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
            __m256i p = ACC_U8I8(_mm256_setzero_si256(), aq, _mm256_sign_epi8(KN(xload)(y), q));
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
            __m256i p = ACC_U8I8(_mm256_setzero_si256(), aq, _mm256_sign_epi8(KN(xload)(y), q));
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

/* ---- groups of 8 packed rows: lane r of every vector is row r ---- */

KINL __m256i KN(bcast4)(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

/* Decode streams every weight once per token, from DRAM (or a last-level
 * cache shared with other cores), and the hardware prefetcher alone keeps
 * too few lines in flight for one core: the lines X8_PREFETCH bytes ahead
 * are asked for while this block computes.  Groups lie one after another,
 * so ahead of a group's end is the next group's start. */
#ifndef X8_PREFETCH
#define X8_PREFETCH 4096
#endif
KINL void KN(prefetch)(const uint8_t *g, size_t bb)
{
    for (size_t o = 0; o < bb; o += 64)
        _mm_prefetch((const char *)g + X8_PREFETCH + o, _MM_HINT_T0);
}

/* q4_0 and q4_1: 4 loads of 32 bytes give 8 columns groups of 4 for 8 rows */
KINL void KN(x8_q4_body)(const uint8_t *g, const int q41, const skv_q8_block *x, size_t xs,
                         size_t nb, const uint32_t NT, float *out, size_t ldo)
{
    const size_t bb = q41 ? 160 : 144;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    for (size_t i = 0; i < nb; i++, g += bb) {
        const uint8_t *qs = g + (q41 ? 32 : 16);
        KN(prefetch)(g, bb);
        __m256i s[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                        _mm256_setzero_si256()};
        for (int c = 0; c < 4; c++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
            __m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
            for (uint32_t t = 0; t < NT; t++) {
                const int8_t *xq = x[t * xs + i].qs;
                s[t] = ACC_U8I8(s[t], lo, KN(bcast4)(xq + 4 * c));
                s[t] = ACC_U8I8(s[t], hi, KN(bcast4)(xq + 16 + 4 * c));
            }
        }
        __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)g));
        __m256 m = q41 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(g + 16))) : d;
        for (uint32_t t = 0; t < NT; t++) {
            const skv_q8_block *y = x + t * xs + i;
            __m256i si = s[t];
            if (!q41)
                si = _mm256_sub_epi32(si, _mm256_set1_epi32(8 * y->sum));
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(y->d)), _mm256_cvtepi32_ps(si),
                                     acc[t]);
            if (q41)
                acc[t] = _mm256_fmadd_ps(m, _mm256_set1_ps(y->d * (float)y->sum), acc[t]);
        }
    }
    for (uint32_t t = 0; t < NT; t++)
        _mm256_storeu_ps(out + t * ldo, acc[t]);
}

/* q8_0: 8 loads of 32 bytes.  VNNI: w + 128 is unsigned, minus 128 sum(x)
 * after; AVX2: |w| times x with w's sign (w + 128 would saturate maddubs). */
KINL void KN(x8_q8_body)(const uint8_t *g, const skv_q8_block *x, size_t xs, size_t nb,
                         const uint32_t NT, float *out, size_t ldo)
{
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};
    for (size_t i = 0; i < nb; i++, g += 16 + 256) {
        KN(prefetch)(g, 16 + 256);
        __m256i s[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                        _mm256_setzero_si256()};
        for (int c = 0; c < 8; c++) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(g + 16 + 32 * c));
#if KVNNI
            __m256i u = _mm256_xor_si256(v, _mm256_set1_epi8((char)0x80));
            for (uint32_t t = 0; t < NT; t++)
                s[t] = ACC_U8I8(s[t], u, KN(bcast4)(x[t * xs + i].qs + 4 * c));
#else
            __m256i a = _mm256_sign_epi8(v, v);
            for (uint32_t t = 0; t < NT; t++)
                s[t] = ACC_U8I8(s[t], a, _mm256_sign_epi8(KN(bcast4)(x[t * xs + i].qs + 4 * c), v));
#endif
        }
        __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)g));
        for (uint32_t t = 0; t < NT; t++) {
            const skv_q8_block *y = x + t * xs + i;
            __m256i si = s[t];
#if KVNNI
            si = _mm256_sub_epi32(si, _mm256_set1_epi32(128 * y->sum));
#endif
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(y->d)), _mm256_cvtepi32_ps(si),
                                     acc[t]);
        }
    }
    for (uint32_t t = 0; t < NT; t++)
        _mm256_storeu_ps(out + t * ldo, acc[t]);
}

#define KN_X8(call)                                                                          \
    switch (nt) {                                                                             \
    case 1: call(1); break;                                                                   \
    case 2: call(2); break;                                                                   \
    case 3: call(3); break;                                                                   \
    default: call(4); break;                                                                  \
    }

KTARGET static void KN(x8_dot)(uint32_t type, const void *g, const skv_q8_block *x, size_t xs,
                               size_t nb, uint32_t nt, float *out, size_t ldo)
{
#define Q40(NT) KN(x8_q4_body)(g, 0, x, xs, nb, NT, out, ldo)
#define Q41(NT) KN(x8_q4_body)(g, 1, x, xs, nb, NT, out, ldo)
#define Q80(NT) KN(x8_q8_body)(g, x, xs, nb, NT, out, ldo)
    switch (type) {
    case SKV_GGML_Q4_0: KN_X8(Q40) break;
    case SKV_GGML_Q4_1: KN_X8(Q41) break;
    case SKV_GGML_Q8_0: KN_X8(Q80) break;
    default: break;
    }
#undef Q40
#undef Q41
#undef Q80
}

#undef KN_X8
#undef KN_BY_NT
#undef KINL
