/* attend_avx2.c -- the float attention kernels with AVX2, FMA, F16C and
 * BMI2: rows of every width decoded eight channels at a time, packed rows
 * with their scales folded out of the dot products (attend.c picks them
 * at run time, kern_scalar beside them is the reference). */
#include "attend_kern.h"

#ifdef SKV_X86
/* 8 codes of block c of a packed row as floats (bits 2, 3, 4, 8). */
AVX2_FN static inline __m256 codes8(const uint8_t *row, uint32_t c, const int bits)
{
    const uint8_t *b = row + (size_t)c * bits;
    if (bits == 8)
        return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)b)));
    uint32_t w;
    if (bits == 2)
        w = ld16(b);
    else if (bits == 3)
        w = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16;
    else
        memcpy(&w, b, 4);
    const __m256i sh = bits == 2 ? _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14)
                     : bits == 3 ? _mm256_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21)
                                 : _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
    __m256i v = _mm256_srlv_epi32(_mm256_set1_epi32((int)w), sh);
    v = _mm256_and_si256(v, _mm256_set1_epi32((1 << bits) - 1));
    return _mm256_cvtepi32_ps(v);
}

/* Per-row scale/bias of every group for rows [t0, t0+n) of a tile. */
static inline void tile_params(const run *R, int which, uint64_t t0, uint32_t n, uint32_t d,
                               float *sc, float *bi)
{
    uint32_t grp = which ? R->vg : R->kg, mode = which ? R->vmode : R->kmode;
    uint32_t ps = which ? R->vps : R->kps, ngr = d / grp;
    const uint8_t *par = (which ? R->vp : R->kp) + t0 * ps;
    for (uint32_t i = 0; i < n; i++, par += ps)
        for (uint32_t g = 0; g < ngr; g++)
            group_par(par, g, R->bits, mode, &sc[i * ngr + g], &bi[i * ngr + g]);
}

/* Softmax of one head's tile of scores s[TILE] (rows n.. are -inf): the
 * scores to sc (or NULL) by token, the state's block begun at the tile's
 * maximum, s replaced by exp(s - m), and their sum added to st->l. */
AVX2_FN static inline __attribute__((always_inline)) void
tile_softmax(float *s, uint32_t n, const run *R, uint64_t t0, float *sc, skv_sm_state *st,
             float *acc, uint32_t d)
{
    __m256 mv = _mm256_load_ps(&s[0]);
    for (int i = 8; i < TILE; i += 8)
        mv = _mm256_max_ps(mv, _mm256_load_ps(&s[i]));
    if (sc)
        for (uint32_t i = 0; i < n; i++)
            sc[row_token(R, t0 + i)] = s[i];
    float m = skv_sm_block_begin(st, acc, hmax256(mv), d);
    __m256 mm = _mm256_set1_ps(m), lv = _mm256_setzero_ps();
    for (int i = 0; i < TILE; i += 8) {
        __m256 p = exp256(_mm256_sub_ps(_mm256_load_ps(&s[i]), mm));
        _mm256_store_ps(&s[i], p);
        lv = _mm256_add_ps(lv, p);
    }
    st->l += hsum256(lv);
}

/* Row i (of the tile), block c of 8 channels, as floats. */
#define LOAD8(dat, c)                                                                           \
    (bits == 32 ? _mm256_loadu_ps((const float *)(const void *)(dat) + 8 * (c))                 \
   : bits == 16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((dat) + 16 * (c))))         \
                : _mm256_fmadd_ps(codes8((dat), (c), bits), _mm256_broadcast_ss(&psc[(c) * 8 / grp]), \
                                  _mm256_broadcast_ss(&pbi[(c) * 8 / grp])))

AVX2_FN static inline __attribute__((always_inline)) void
kern_avx2_body(const run *R, uint64_t r0, uint64_t r1, const float *q, uint32_t d,
               skv_sm_state *st, float *acc, float *sc, uint64_t sc_stride, const int bits,
               const int ng)
{
    float s[SKV_GMAX][TILE] __attribute__((aligned(32)));
    float sca[TILE * SKV_MAX_GROUPS], bia[TILE * SKV_MAX_GROUPS];
    const uint32_t nc = d / 8;
    for (uint64_t t0 = r0; t0 < r1; t0 += TILE) {
        uint32_t n = (uint32_t)(r1 - t0 < TILE ? r1 - t0 : TILE);
        /* scores */
        uint32_t grp = R->kg, ngr = bits < 16 ? d / grp : 0;
        if (bits < 16)
            tile_params(R, 0, t0, n, d, sca, bia);
        const uint8_t *dat = R->kd + t0 * R->rs;
        for (uint32_t i = 0; i < n; i++, dat += R->rs) {
            const float *psc = sca + i * ngr, *pbi = bia + i * ngr;
            (void)psc;
            (void)pbi;
            __m256 a[SKV_GMAX];
            for (int g = 0; g < ng; g++)
                a[g] = _mm256_setzero_ps();
            for (uint32_t c = 0; c < nc; c++) {
                __m256 x = LOAD8(dat, c);
                for (int g = 0; g < ng; g++)
                    a[g] = _mm256_fmadd_ps(_mm256_loadu_ps(q + (size_t)g * d + 8 * c), x, a[g]);
            }
            for (int g = 0; g < ng; g++)
                s[g][i] = hsum256(a[g]);
        }
        for (uint32_t i = n; i < TILE; i++)
            for (int g = 0; g < ng; g++)
                s[g][i] = -INFINITY;
        /* softmax of the tile */
        for (int g = 0; g < ng; g++) {
            tile_softmax(s[g], n, R, t0, sc ? sc + g * sc_stride : NULL, &st[g],
                         acc + (size_t)g * d, d);
        }
        /* values: block-outer so the accumulators stay in registers */
        grp = R->vg;
        ngr = bits < 16 ? d / grp : 0;
        if (bits < 16)
            tile_params(R, 1, t0, n, d, sca, bia);
        for (uint32_t c = 0; c < nc; c++) {
            __m256 a[SKV_GMAX];
            for (int g = 0; g < ng; g++)
                a[g] = _mm256_loadu_ps(acc + (size_t)g * d + 8 * c);
            dat = R->vd + t0 * R->rs;
            for (uint32_t i = 0; i < n; i++, dat += R->rs) {
                const float *psc = sca + i * ngr, *pbi = bia + i * ngr;
                (void)psc;
                (void)pbi;
                __m256 x = LOAD8(dat, c);
                for (int g = 0; g < ng; g++)
                    a[g] = _mm256_fmadd_ps(_mm256_broadcast_ss(&s[g][i]), x, a[g]);
            }
            for (int g = 0; g < ng; g++)
                _mm256_storeu_ps(acc + (size_t)g * d + 8 * c, a[g]);
        }
    }
}

/* The 8 codes of block c of a packed row, one per byte (BMI2 pdep). */
AVX2_FN static inline uint64_t codes_u8x8(const uint8_t *row, uint32_t c, const int bits)
{
    const uint8_t *b = row + (size_t)c * bits;
    uint64_t w;
    if (bits == 8) {
        memcpy(&w, b, 8);
        return w;
    }
    if (bits == 2)
        return _pdep_u64(ld16(b), 0x0303030303030303ull);
    if (bits == 3)
        return _pdep_u64((uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16,
                         0x0707070707070707ull);
    uint32_t w4;
    memcpy(&w4, b, 4);
    return _pdep_u64(w4, 0x0f0f0f0f0f0f0f0full);
}

AVX2_FN static inline __m256 u8x8_to_ps(uint64_t w)
{
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)w)));
}

/* Packed rows (2, 3, 4, 8 bits): scale and bias are folded out of the dot
 * products (q.x = s * q.codes + b * sum(q) per group), codes are expanded
 * with pdep, and each V row's codes are expanded once per tile. */
AVX2_FN static inline __attribute__((always_inline)) void
kern_avx2_packed(const run *R, uint64_t r0, uint64_t r1, const float *q, uint32_t d,
                 skv_sm_state *st, float *acc, float *sc, uint64_t sc_stride, const int bits,
                 const int ng)
{
    float s[SKV_GMAX][TILE] __attribute__((aligned(32)));
    uint8_t cb[TILE * SKV_MAX_HEAD_DIM] __attribute__((aligned(32)));
    float pw[SKV_GMAX * SKV_MAX_GROUPS * TILE];
    float bsum[SKV_GMAX][SKV_MAX_GROUPS];
    float qsum[SKV_GMAX][SKV_MAX_GROUPS];
    const uint32_t nc = d / 8, kg = R->kg, vg = R->vg;
    /* keys per channel (a run of one key group, bucket_runs): the group's
     * scales fold into the query, its zero points into one bias per head:
     * q.x = (q*scale).codes + q.min */
    const int kchan = R->kps == 0 && kg == 1;
    float qk[SKV_GMAX * SKV_MAX_HEAD_DIM], qb[SKV_GMAX] = {0};
    for (int g = 0; kchan && g < ng; g++)
        for (uint32_t c = 0; c < d; c++) {
            float scl, bi;
            group_par_f16c(R->kp, c, bits, R->kmode, &scl, &bi);
            qk[(size_t)g * d + c] = q[(size_t)g * d + c] * scl;
            qb[g] += q[(size_t)g * d + c] * bi;
        }
    const uint32_t kng = kchan ? 0 : d / kg, vng = d / vg, kcpg = kg / 8, vcpg = vg / 8;
    for (int g = 0; g < ng; g++)
        for (uint32_t gi = 0; gi < kng; gi++) {
            float a = 0;
            for (uint32_t j = gi * kg; j < (gi + 1) * kg; j++)
                a += q[(size_t)g * d + j];
            qsum[g][gi] = a;
        }
    for (uint64_t t0 = r0; t0 < r1; t0 += TILE) {
        uint32_t n = (uint32_t)(r1 - t0 < TILE ? r1 - t0 : TILE);
        /* scores */
        const uint8_t *row = R->kd + t0 * R->rs, *par = R->kp + t0 * R->kps;
        for (uint32_t i = 0; kchan && i < n; i++, row += R->rs) {
            __m256 a[SKV_GMAX];
            for (int g = 0; g < ng; g++)
                a[g] = _mm256_setzero_ps();
            for (uint32_t c = 0; c < nc; c++) {
                __m256 x = u8x8_to_ps(codes_u8x8(row, c, bits));
                for (int g = 0; g < ng; g++)
                    a[g] = _mm256_fmadd_ps(_mm256_loadu_ps(qk + (size_t)g * d + 8 * c), x, a[g]);
            }
            for (int g = 0; g < ng; g++)
                s[g][i] = hsum256(a[g]) + qb[g];
        }
        for (uint32_t i = 0; !kchan && i < n; i++, row += R->rs, par += R->kps) {
            __m256 tot[SKV_GMAX];
            float bias[SKV_GMAX];
            for (int g = 0; g < ng; g++) {
                tot[g] = _mm256_setzero_ps();
                bias[g] = 0;
            }
            float s1 = 1;
            for (uint32_t gi = 0; gi < kng; gi++) {
                float scl, bi;
                group_par_f16c(par, gi, bits, R->kmode, &scl, &bi);
                __m256 a[SKV_GMAX];
                for (int g = 0; g < ng; g++)
                    a[g] = _mm256_setzero_ps();
                for (uint32_t c = gi * kcpg; c < (gi + 1) * kcpg; c++) {
                    __m256 x = u8x8_to_ps(codes_u8x8(row, c, bits));
                    for (int g = 0; g < ng; g++)
                        a[g] = _mm256_fmadd_ps(_mm256_loadu_ps(q + (size_t)g * d + 8 * c), x, a[g]);
                }
                if (kng == 1) {
                    for (int g = 0; g < ng; g++)
                        tot[g] = a[g];
                    s1 = scl;
                } else {
                    __m256 sv = _mm256_set1_ps(scl);
                    for (int g = 0; g < ng; g++)
                        tot[g] = _mm256_fmadd_ps(a[g], sv, tot[g]);
                }
                for (int g = 0; g < ng; g++)
                    bias[g] += bi * qsum[g][gi];
            }
            for (int g = 0; g < ng; g++)
                s[g][i] = hsum256(tot[g]) * s1 + bias[g];
        }
        for (uint32_t i = n; i < TILE; i++)
            for (int g = 0; g < ng; g++)
                s[g][i] = -INFINITY;
        /* softmax of the tile */
        for (int g = 0; g < ng; g++) {
            tile_softmax(s[g], n, R, t0, sc ? sc + g * sc_stride : NULL, &st[g],
                         acc + (size_t)g * d, d);
            for (uint32_t gi = 0; gi < vng; gi++)
                bsum[g][gi] = 0;
        }
        /* values: expand the tile's codes once, fold p*scale, sum p*bias */
        row = R->vd + t0 * R->rs;
        par = R->vp + t0 * R->vps;
        for (uint32_t i = 0; i < n; i++, row += R->rs, par += R->vps) {
            if (bits == 8)
                memcpy(cb + (size_t)i * d, row, d);
            else
                for (uint32_t c = 0; c < nc; c++) {
                    uint64_t w = codes_u8x8(row, c, bits);
                    memcpy(cb + (size_t)i * d + 8 * c, &w, 8);
                }
            for (uint32_t gi = 0; gi < vng; gi++) {
                float scl, bi;
                group_par_f16c(par, gi, bits, R->vmode, &scl, &bi);
                for (int g = 0; g < ng; g++) {
                    pw[((size_t)g * vng + gi) * TILE + i] = s[g][i] * scl;
                    bsum[g][gi] += s[g][i] * bi;
                }
            }
        }
        for (uint32_t c = 0; c < nc; c++) {
            uint32_t gi = c / vcpg;
            __m256 a[SKV_GMAX];
            for (int g = 0; g < ng; g++)
                a[g] = _mm256_loadu_ps(acc + (size_t)g * d + 8 * c);
            const uint8_t *cr = cb + 8 * c;
            for (uint32_t i = 0; i < n; i++, cr += d) {
                __m256 x = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)cr)));
                for (int g = 0; g < ng; g++)
                    a[g] = _mm256_fmadd_ps(_mm256_broadcast_ss(&pw[((size_t)g * vng + gi) * TILE + i]),
                                           x, a[g]);
            }
            for (int g = 0; g < ng; g++)
                _mm256_storeu_ps(acc + (size_t)g * d + 8 * c,
                                 _mm256_add_ps(a[g], _mm256_set1_ps(bsum[g][gi])));
        }
    }
}

#define KB(B, G)                                                                            \
    AVX2_FN static void kern_avx2_##B##_##G(const run *R, uint64_t r0, uint64_t r1,          \
                                            const float *q, uint32_t d, skv_sm_state *st,     \
                                            float *acc, float *sc, uint64_t ss)               \
    {                                                                                        \
        if ((B) <= 8)                                                                        \
            kern_avx2_packed(R, r0, r1, q, d, st, acc, sc, ss, B, G);                        \
        else                                                                                 \
            kern_avx2_body(R, r0, r1, q, d, st, acc, sc, ss, B, G);                          \
    }
#define KBG(B) KB(B, 1) KB(B, 2) KB(B, 3) KB(B, 4) KB(B, 5) KB(B, 6) KB(B, 7) KB(B, 8)
KBG(2) KBG(3) KBG(4) KBG(8) KBG(16) KBG(32)

#define KROW(B)                                                                              \
    { kern_avx2_##B##_1, kern_avx2_##B##_2, kern_avx2_##B##_3, kern_avx2_##B##_4,              \
      kern_avx2_##B##_5, kern_avx2_##B##_6, kern_avx2_##B##_7, kern_avx2_##B##_8 }
static const kern_fn avx2_kernels[6][SKV_GMAX] = {KROW(2), KROW(3), KROW(4), KROW(8), KROW(16),
                                                  KROW(32)};

kern_fn skv_att_avx2_kernel(uint32_t bits, uint32_t ng)
{
    int b = bits == 2 ? 0 : bits == 3 ? 1 : bits == 4 ? 2 : bits == 8 ? 3 : bits == 16 ? 4 : 5;
    return avx2_kernels[b][ng - 1];
}

#endif /* SKV_X86 */
