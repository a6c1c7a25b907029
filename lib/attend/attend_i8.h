/* attend_i8.h -- internal: the SIMD int8 kernels, included by
 * attend_i8_<isa>.c, one instruction set each, with
 *   I8_ISA     name suffix (avx2, vnni512, vbmi, avxvnni)
 *   I8_TARGET  the target attribute string
 *   I8_DP(acc, a, b)  acc + the sums of 4 products u8 a * s8 b per int32 lane
 *                     (a < 16: the 2-4 bit codes)
 *   I8_DP8(acc, a, b) the same for any u8 a (the 8-bit codes)
 *   I8_UNPACK(row, c, bits)  32 codes of a row (i8_unpack or i8_unpack_vbmi)
 * Only the dot-product instruction and the unpacking differ, so all four
 * give identical results; attend_kern.h holds the unpacking, attend.c the
 * scalar reference and the dispatch. */
#define I8_CAT2(a, b) a##_##b
#define I8_CAT(a, b) I8_CAT2(a, b)
#define I8_NAME(x) I8_CAT(x, I8_ISA)
#define I8_FN __attribute__((target(I8_TARGET)))
#define I8_DPB(acc, a, b) (bits == 8 ? I8_DP8(acc, a, b) : I8_DP(acc, a, b))

/* Integer dot products of n packed K rows with nq permuted int8 vectors
 * qp[k][d]: isum[k][o + i] for i < n rounded up to 8 (pad rows 0; o, a
 * multiple of 8, and o + n <= I8_TILE: the rows' place in the tile).
 * Each row is unpacked once and meets every query vector of the group.
 * nx: the next tile's rows to prefetch, or NULL. */
I8_FN static inline __attribute__((always_inline)) void
I8_NAME(i8_kdots)(const uint8_t *row, size_t rs, uint32_t n, const int8_t *qp, uint32_t d,
                  const int bits, const int nq, int32_t isum[][I8_TILE], uint32_t o,
                  const i8_next *nx)
{
    __m256i buf[I8_QMAX][8];
    const uint32_t nch = d / 32;
    for (uint32_t i0 = 0; i0 < n; i0 += 8) {
        if (nx)
            i8_prefetch_rows(nx, o + i0);
        for (uint32_t k = 0; k < 8; k++) {
            __m256i a[I8_QMAX];
            _Pragma("GCC unroll 16") for (int g = 0; g < I8_QMAX; g++)
                a[g] = _mm256_setzero_si256();
            if (i0 + k < n) {
                const uint8_t *r = row + (size_t)(i0 + k) * rs;
                _Pragma("GCC unroll 8") for (uint32_t c = 0; c < nch; c++) {
                    __m256i x = I8_UNPACK(r, c, bits);
                    _Pragma("GCC unroll 16") for (int g = 0; g < nq; g++)
                        a[g] = I8_DPB(a[g], x,
                                      _mm256_load_si256((const __m256i *)(qp + (size_t)g * d + 32 * c)));
                }
            }
            _Pragma("GCC unroll 16") for (int g = 0; g < nq; g++)
                buf[g][k] = a[g];
        }
        _Pragma("GCC unroll 16") for (int g = 0; g < nq; g++)
            _mm256_storeu_si256((__m256i *)&isum[g][o + i0], i8_hsum8(buf[g]));
    }
}

/* An integer sum from one or two levels: 254 a1 + a2, or with one level
 * 254 a1 (the same unit). */
I8_FN static inline __attribute__((always_inline)) __m256i I8_NAME(i8_lv)(const int32_t *a1,
                                                                          const int32_t *a2,
                                                                          const int kl)
{
    __m256i x = _mm256_mullo_epi32(_mm256_load_si256((const __m256i *)(const void *)a1),
                                   _mm256_set1_epi32(254));
    return kl == 2 ? _mm256_add_epi32(x, _mm256_load_si256((const __m256i *)(const void *)a2)) : x;
}

/* Byte p of the result = byte lo[p] of x's low half or hi[p] of its high
 * half (the other one -128: zero): a shuffle across the 128-bit lanes. */
I8_FN static inline __attribute__((always_inline)) __m256i I8_NAME(i8_shuf32)(__m256i x,
                                                                              __m256i lo,
                                                                              __m256i hi)
{
    __m256i a = _mm256_shuffle_epi8(_mm256_permute2x128_si256(x, x, 0x00), lo);
    __m256i b = _mm256_shuffle_epi8(_mm256_permute2x128_si256(x, x, 0x11), hi);
    return _mm256_or_si256(a, b);
}

/* i8_kchan_q in SIMD, for one key group of a run of several (keys per
 * channel): par, the group's d (scale, min) pairs; q[ng][d], the float
 * queries.  The int8 vectors into qp[2 ng][d] in the kernels' permuted
 * order (level 1 of every head, then level 2), the scales into qs, the
 * minima's constant into qsum.  Each 32-channel chunk is quantized in
 * channel order, packed to bytes, and put in the permuted order by one
 * i8_shuf32 with pidx[0], pidx[1] (i8_kfold_idx's lo and hi).  The same
 * int8 vectors and scales as i8_kchan_q; qsum's float sum in another order.
 * Not inlined: it runs once per key group, and one copy per instruction
 * set costs less compile time than one in each of the 32 kernels. */
I8_FN static __attribute__((noinline)) void
I8_NAME(i8_kfold)(const uint8_t *par, const __m256i *pidx, const float *q, const int ng,
                  uint32_t d, int8_t *qp, float *qs, float *qsum)
{
    float sc[SKV_MAX_HEAD_DIM] __attribute__((aligned(32)));
    float mn[SKV_MAX_HEAD_DIM] __attribute__((aligned(32)));
    i8_tile_par(par, 4, SKV_QMODE_ASYM, 8, d, sc, mn);
    __m256 x[SKV_MAX_HEAD_DIM / 8];
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int g = 0; g < ng; g++) {
        const float *qg = q + (size_t)g * d;
        __m256 amax = _mm256_setzero_ps(), bs = _mm256_setzero_ps();
        for (uint32_t j = 0; j < d; j += 8) {
            __m256 qv = _mm256_loadu_ps(qg + j);
            __m256 v = _mm256_mul_ps(qv, _mm256_load_ps(sc + j));
            x[j / 8] = v;
            amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v));
            bs = _mm256_add_ps(bs, _mm256_mul_ps(qv, _mm256_load_ps(mn + j)));
        }
        float am = hmax256(amax);
        float inv = am > 0 && am <= 3e38f ? 127.0f / am : 0.0f;
        qs[g] = inv > 0 ? am / (127.0f * 254.0f) : 0.0f;
        qsum[g] = hsum256(bs);
        const __m256 vi = _mm256_set1_ps(inv);
        for (uint32_t c = 0; c < d / 32; c++) {
            __m256i r[4], f[4];
            for (int k = 0; k < 4; k++)
                i8_split8(_mm256_mul_ps(x[4 * c + k], vi), &r[k], &f[k]);
            __m256i rb = _mm256_packs_epi16(_mm256_packs_epi32(r[0], r[1]),
                                            _mm256_packs_epi32(r[2], r[3]));
            __m256i fb = _mm256_packs_epi16(_mm256_packs_epi32(f[0], f[1]),
                                            _mm256_packs_epi32(f[2], f[3]));
            _mm256_store_si256((__m256i *)(void *)(qp + (size_t)g * d + 32 * c),
                               I8_NAME(i8_shuf32)(rb, pidx[0], pidx[1]));
            _mm256_store_si256((__m256i *)(void *)(qp + ((size_t)ng + g) * d + 32 * c),
                               I8_NAME(i8_shuf32)(fb, pidx[0], pidx[1]));
        }
    }
}

/* V: ia[k][d] (vt order, see i8_vchan) = sum_i w_i * codes of n (<= I8_TILE)
 * rows for nq weight vectors; w4[gv][k][quad] holds the int8 weights of rows
 * 4*quad .. 4*quad+3 (zero beyond n) for the channels of value group gv (vg
 * channels, a multiple of the 32 of a chunk).  Rows are transposed four at a time into vt (one dword = one
 * channel of four rows) so that each vpdpbusd adds four rows for eight
 * channels, and each transposed vector serves the whole group. */
I8_FN static inline __attribute__((always_inline)) void
I8_NAME(i8_vacc)(const uint8_t *row, size_t rs, uint32_t n,
                 const uint32_t w4[][I8_QMAX][I8_TILE / 4], uint32_t d, uint32_t vg, const int bits,
                 const int nq, __m256i *vt, int32_t ia[][SKV_MAX_HEAD_DIM])
{
    const uint32_t nch = d / 32, nv = d / 8, nquad = (n + 3) / 4;
    for (uint32_t qd = 0; qd < nquad; qd++)
        for (uint32_t c = 0; c < nch; c++) {
            __m256i x[4];
            for (uint32_t k = 0; k < 4; k++)
                x[k] = 4 * qd + k < n ? I8_UNPACK(row + (size_t)(4 * qd + k) * rs, c, bits)
                                      : _mm256_setzero_si256();
            i8_transpose4(x, vt + (size_t)qd * nv + 4 * c);
        }
    if (nq <= 8) {
        /* two vectors of channels at a time: twice the independent sums
         * (a chain of vpdpbusd on one sum waits on its latency, about 5
         * cycles, at every step), and each broadcast weight serves both */
        for (uint32_t kv = 0; kv < nv; kv += 2) {
            __m256i a[8], b[8];
            const uint32_t(*w)[I8_TILE / 4] = w4[32 * (kv / 4) / vg];  /* kv, kv + 1: one chunk */
            _Pragma("GCC unroll 8") for (int g = 0; g < 8; g++)
                a[g] = b[g] = _mm256_setzero_si256();
            for (uint32_t qd = 0; qd < nquad; qd++) {
                __m256i x0 = _mm256_load_si256(vt + (size_t)qd * nv + kv);
                __m256i x1 = _mm256_load_si256(vt + (size_t)qd * nv + kv + 1);
                _Pragma("GCC unroll 8") for (int g = 0; g < nq && g < 8; g++) {
                    __m256i wg = _mm256_set1_epi32((int)w[g][qd]);
                    a[g] = I8_DPB(a[g], x0, wg);
                    b[g] = I8_DPB(b[g], x1, wg);
                }
            }
            _Pragma("GCC unroll 8") for (int g = 0; g < nq && g < 8; g++) {
                _mm256_storeu_si256((__m256i *)&ia[g][8 * kv], a[g]);
                _mm256_storeu_si256((__m256i *)&ia[g][8 * kv + 8], b[g]);
            }
        }
        return;
    }
    for (uint32_t kv = 0; kv < nv; kv++) {
        __m256i a[I8_QMAX];
        const uint32_t(*w)[I8_TILE / 4] = w4[32 * (kv / 4) / vg];  /* kv / 4: the chunk */
        _Pragma("GCC unroll 16") for (int g = 0; g < I8_QMAX; g++)
            a[g] = _mm256_setzero_si256();
        for (uint32_t qd = 0; qd < nquad; qd++) {
            __m256i x = _mm256_load_si256(vt + (size_t)qd * nv + kv);
            /* g < I8_QMAX: nq's bound, for the compiler's bounds checks */
            _Pragma("GCC unroll 16") for (int g = 0; g < nq && g < I8_QMAX; g++)
                a[g] = I8_DPB(a[g], x, _mm256_set1_epi32((int)w[g][qd]));
        }
        _Pragma("GCC unroll 16") for (int g = 0; g < nq; g++)
            _mm256_storeu_si256((__m256i *)&ia[g][8 * kv], a[g]);
    }
}

/* The fused kernel over rows [r0, r1) of a run of 2-, 3-, 4- or 8-bit rows
 * with one scale group per row (i8_ok); same arithmetic as kern_i8_scalar. */
I8_FN static inline __attribute__((always_inline)) void
I8_NAME(kern_i8_body)(const run *R, uint64_t r0, uint64_t r1, const float *q, const i8q *Q,
                      uint32_t d, skv_sm_state *st, float *acc, float *sc, uint64_t sc_stride,
                      const int bits, const int ng)
{
    int8_t qp[I8_QMAX * SKV_MAX_HEAD_DIM] __attribute__((aligned(32)));
    const float *qs = Q->qs, *qsum = Q->qsum;
    /* keys per channel in several groups (R->kt): each group's query folded
     * (i8_kfold) from the float queries in the permuted order */
    const uint32_t kt = R->kt;
    float qsg[SKV_GMAX] = {0}, qsumg[SKV_GMAX] = {0};
    __m256i pidx[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
    uint64_t cur = UINT64_MAX;  /* the group qp holds */
    float accp[SKV_GMAX * SKV_MAX_HEAD_DIM] __attribute__((aligned(32)));
    float s[SKV_GMAX][I8_TILE] __attribute__((aligned(32)));
    float ksc[I8_TILE] __attribute__((aligned(32))), kbi[I8_TILE] __attribute__((aligned(32)));
    float vsc[I8_VG][I8_TILE] __attribute__((aligned(32)));
    float vbi[I8_VG][I8_TILE] __attribute__((aligned(32)));
    int32_t isum[I8_QMAX][I8_TILE] __attribute__((aligned(32)));
    int32_t ia[I8_QMAX][SKV_MAX_HEAD_DIM] __attribute__((aligned(32)));
    uint32_t w4[I8_VG][I8_QMAX][I8_TILE / 4];
    __m256i vt[I8_TILE / 4 * SKV_MAX_HEAD_DIM / 8];
    const uint32_t nv = d / 8, vg = R->vg, nvg = d / vg;
    const uint32_t vpw = R->vmode == SKV_QMODE_ASYM ? 4 : 2;  /* parameter bytes a group */
    const __m256i bsel = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                          -1, 0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                          -1, -1);
    const int kl = i8_levels(bits), kq = i8_qlevels(R);  /* int8 levels: weights, query */
    if (kt) {
        int8_t lo[32], hi[32];
        i8_kfold_idx(bits, lo, hi);
        pidx[0] = _mm256_loadu_si256((const __m256i *)(const void *)lo);
        pidx[1] = _mm256_loadu_si256((const __m256i *)(const void *)hi);
    } else {
        i8_permute_q(Q->qi, (uint32_t)(kq * ng), d, bits, qp);  /* the levels used */
    }
    for (int g = 0; g < ng; g++)
        for (uint32_t x = 0; x < d; x++)
            accp[(size_t)g * d + x] = acc[(size_t)g * d + i8_vchan(bits, x)];
    for (uint64_t t0 = r0; t0 < r1; t0 += I8_TILE) {
        uint32_t n = (uint32_t)(r1 - t0 < I8_TILE ? r1 - t0 : I8_TILE);
        const int n8 = (int)(n + 7) & ~7;  /* short runs (a key group) pay for n rows */
        /* the next tile's rows, fetched while this one computes; after the
         * last tile the run's next rows, the next work item's first tile */
        uint64_t t1 = t0 + I8_TILE;
        i8_next nx = {R, t1, t1 < R->n ? (uint32_t)(R->n - t1 < I8_TILE ? R->n - t1 : I8_TILE) : 0};
        if (i8_kchan(R) && !kt)  /* keys per channel: folded into Q */
            for (int i = 0; i < n8; i++)
                ksc[i] = kbi[i] = (uint32_t)i < n;
        else
            i8_tile_par(R->kp + t0 * R->kps, R->kps, R->kmode, bits, n, ksc, kbi);
        for (uint32_t gv = 0; gv < nvg; gv++)
            i8_tile_par(R->vp + t0 * R->vps + gv * vpw, R->vps, R->vmode, bits, n, vsc[gv],
                        vbi[gv]);
        /* scores: (254 a1 + a2) * qs * scale + bias * sum(q) */
        for (uint32_t a = 0; a < n;) {
            /* keys per channel in groups: rows [a, b) of the tile in group j
             * (one call site of i8_kdots: it is large, inlined) */
            uint32_t b = n;
            if (kt) {
                uint64_t j = (t0 + a) / kt;
                b = (j + 1) * kt - t0 < n ? (uint32_t)((j + 1) * kt - t0) : n;
                if (j != cur) {
                    I8_NAME(i8_kfold)(R->kp + j * R->kgb, pidx, q, ng, d, qp, qsg, qsumg);
                    cur = j;
                }
            }
            I8_NAME(i8_kdots)(R->kd + (t0 + a) * R->rs, R->rs, b - a, qp, d, bits, kq * ng,
                              isum, a, &nx);
            for (int g = 0; kt && g < ng; g++) {  /* keys per channel: two levels */
                __m256 vq = _mm256_set1_ps(qsg[g]), vs = _mm256_set1_ps(qsumg[g]);
                for (uint32_t i = a; i < b; i += 8) {
                    __m256i x = I8_NAME(i8_lv)(isum[g] + i, isum[ng + g] + i, 2);
                    _mm256_store_ps(&s[g][i], _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(x), vq), vs));
                }
            }
            a = b;
        }
        if (kt)
            for (int g = 0; g < ng; g++)
                for (int i = (int)n; i < n8; i++)
                    s[g][i] = -INFINITY;
        for (int g = 0; !kt && g < ng; g++) {
            __m256 vq = _mm256_set1_ps(qs[g]), vs = _mm256_set1_ps(qsum[g]);
            __m256 vm = _mm256_set1_ps(i8_mid(kq, (uint32_t)bits, Q->qerr[g]));
            for (uint32_t i = 0; i < n; i += 8) {
                __m256i a = I8_NAME(i8_lv)(isum[g] + i, isum[ng + g] + i, kq);
                __m256 f = _mm256_mul_ps(_mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(a), vq), vm),
                                         _mm256_load_ps(&ksc[i]));
                _mm256_store_ps(&s[g][i], _mm256_add_ps(f, _mm256_mul_ps(_mm256_load_ps(&kbi[i]), vs)));
            }
            for (int i = (int)n; i < n8; i++)
                s[g][i] = -INFINITY;
        }
        /* softmax of the tile; per value group the weights p * V scale in
         * int8 (two levels on 8-bit rows) and the bias sum */
        float wu[I8_VG][SKV_GMAX], bsum[I8_VG][SKV_GMAX];
        float wmid[I8_VG][SKV_GMAX];  /* one level: the rounding's sum at the middle code */
        for (int g = 0; g < ng; g++) {
            __m256 mv = _mm256_load_ps(&s[g][0]);
            for (int i = 8; i < n8; i += 8)
                mv = _mm256_max_ps(mv, _mm256_load_ps(&s[g][i]));
            float mx = hmax256(mv);
            if (sc)
                for (uint32_t i = 0; i < n; i++)
                    sc[g * sc_stride + row_token(R, t0 + i)] = s[g][i];
            float m = skv_sm_block_begin(&st[g], accp + (size_t)g * d, mx, d);
            __m256 mm = _mm256_set1_ps(m), lv = _mm256_setzero_ps();
            for (int i = 0; i < n8; i += 8) {
                __m256 p = exp256(_mm256_sub_ps(_mm256_load_ps(&s[g][i]), mm));
                lv = _mm256_add_ps(lv, p);
                _mm256_store_ps(&s[g][i], p);
            }
            st[g].l += hsum256(lv);
            for (uint32_t gv = 0; gv < nvg; gv++) {
                __m256 wv = _mm256_setzero_ps(), bv = _mm256_setzero_ps();
                for (int i = 0; i < n8; i += 8) {
                    __m256 p = _mm256_load_ps(&s[g][i]);
                    bv = _mm256_add_ps(bv, _mm256_mul_ps(p, _mm256_load_ps(&vbi[gv][i])));
                    p = _mm256_mul_ps(p, _mm256_load_ps(&vsc[gv][i]));
                    wv = _mm256_max_ps(wv, _mm256_andnot_ps(_mm256_set1_ps(-0.0f), p));
                }
                bsum[gv][g] = hsum256(bv);
                float wmax = hmax256(wv);
                wu[gv][g] = i8_wunit(wmax);
                __m256 inv = _mm256_set1_ps(i8_winv(wmax)), ev = _mm256_setzero_ps();
                for (int i = 0; i < n8; i += 8) {
                    __m256 p = _mm256_mul_ps(_mm256_load_ps(&s[g][i]), _mm256_load_ps(&vsc[gv][i]));
                    __m256i r, f;
                    __m256 t = _mm256_mul_ps(p, inv);
                    i8_split8(t, &r, &f);
                    ev = _mm256_add_ps(ev, _mm256_and_ps(_mm256_cmp_ps(t, t, _CMP_ORD_Q),
                                                         _mm256_sub_ps(t, _mm256_cvtepi32_ps(r))));
                    /* byte 0 of each int32 -> one dword per 4 rows */
                    __m256i w1 = _mm256_shuffle_epi8(r, bsel);
                    w4[gv][g][i / 4] = (uint32_t)_mm256_extract_epi32(w1, 0);
                    w4[gv][g][i / 4 + 1] = (uint32_t)_mm256_extract_epi32(w1, 4);
                    if (kl == 2) {  /* level 2 (8-bit rows only) */
                        __m256i w2 = _mm256_shuffle_epi8(f, bsel);
                        w4[gv][ng + g][i / 4] = (uint32_t)_mm256_extract_epi32(w2, 0);
                        w4[gv][ng + g][i / 4 + 1] = (uint32_t)_mm256_extract_epi32(w2, 4);
                    }
                }
                wmid[gv][g] = i8_mid(kl, (uint32_t)bits, hsum256(ev) * (254.0f * wu[gv][g]));
            }
        }
        I8_NAME(i8_vacc)(R->vd + t0 * R->rs, R->rs, n, (const uint32_t(*)[I8_QMAX][I8_TILE / 4])w4,
                         d, vg, bits, kl * ng, vt, ia);
        for (int g = 0; g < ng; g++) {
            float *ap = accp + (size_t)g * d;
            for (uint32_t x = 0; x < nv; x++) {
                uint32_t gv = 32 * (x / 4) / vg;  /* x / 4: the chunk */
                __m256 ws = _mm256_set1_ps(wu[gv][g]);
                __m256 bs = _mm256_set1_ps(bsum[gv][g] + wmid[gv][g]);
                __m256i a = I8_NAME(i8_lv)(ia[g] + 8 * x, ia[ng + g] + 8 * x, kl);
                __m256 f = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(a), ws), bs);
                _mm256_store_ps(ap + 8 * x, _mm256_add_ps(_mm256_load_ps(ap + 8 * x), f));
            }
        }
    }
    for (int g = 0; g < ng; g++)
        for (uint32_t x = 0; x < d; x++)
            acc[(size_t)g * d + i8_vchan(bits, x)] = accp[(size_t)g * d + x];
}

/* One kernel per width and head count, the two known to the compiler.
 * SKV_FEW_KERNELS (the sanitized and fuzzing builds): every one calls a
 * single copy that takes both at run time; the same source, compiled once
 * instead of 32 times (under clang with ASan one instruction set's file
 * took 230 s). */
#ifdef SKV_FEW_KERNELS
I8_FN static __attribute__((noinline)) void
I8_NAME(kern_i8_any)(const run *R, uint64_t r0, uint64_t r1, const float *q, const i8q *Q,
                     uint32_t d, skv_sm_state *st, float *acc, float *sc, uint64_t ss,
                     const int bits, const int ng)
{
    I8_NAME(kern_i8_body)(R, r0, r1, q, Q, d, st, acc, sc, ss, bits, ng);
}
#define I8_BODY I8_NAME(kern_i8_any)
#else
#define I8_BODY I8_NAME(kern_i8_body)
#endif
#define I8_KB(B, G)                                                                            \
    I8_FN static void I8_CAT(I8_CAT(I8_CAT(kern_i8, I8_ISA), B), G)(                         \
        const run *R, uint64_t r0, uint64_t r1, const float *q, const i8q *Q, uint32_t d,       \
        skv_sm_state *st, float *acc, float *sc, uint64_t ss)                                   \
    {                                                                                           \
        I8_BODY(R, r0, r1, q, Q, d, st, acc, sc, ss, B, G);                                     \
    }
#define I8_KBG(B) I8_KB(B, 1) I8_KB(B, 2) I8_KB(B, 3) I8_KB(B, 4) I8_KB(B, 5) I8_KB(B, 6)       \
    I8_KB(B, 7) I8_KB(B, 8)
I8_KBG(2) I8_KBG(3) I8_KBG(4) I8_KBG(8)
#undef I8_KBG
#undef I8_KB
#undef I8_BODY

#define I8_KROW(B)                                                                             \
    { I8_CAT(I8_CAT(I8_CAT(kern_i8, I8_ISA), B), 1), I8_CAT(I8_CAT(I8_CAT(kern_i8, I8_ISA), B), 2), \
      I8_CAT(I8_CAT(I8_CAT(kern_i8, I8_ISA), B), 3), I8_CAT(I8_CAT(I8_CAT(kern_i8, I8_ISA), B), 4), \
      I8_CAT(I8_CAT(I8_CAT(kern_i8, I8_ISA), B), 5), I8_CAT(I8_CAT(I8_CAT(kern_i8, I8_ISA), B), 6), \
      I8_CAT(I8_CAT(I8_CAT(kern_i8, I8_ISA), B), 7), I8_CAT(I8_CAT(I8_CAT(kern_i8, I8_ISA), B), 8) }
const i8_fn I8_NAME(skv_att_i8_kernels)[4][SKV_GMAX] = {I8_KROW(2), I8_KROW(3), I8_KROW(4),
                                                        I8_KROW(8)};
#undef I8_KROW

/* The building blocks for skv_att_i8_dots / skv_att_i8_vacc (any bits, nq). */
I8_FN void I8_NAME(skv_att_i8_dots_rows)(const uint8_t *rows, size_t stride, uint32_t n,
                                         const int8_t *qp, uint32_t d, int bits, int nq,
                                         int32_t *dots)
{
    int32_t isum[I8_QMAX][I8_TILE] __attribute__((aligned(32)));
    for (uint32_t i0 = 0; i0 < n; i0 += I8_TILE) {
        uint32_t m = n - i0 < I8_TILE ? n - i0 : I8_TILE;
        I8_NAME(i8_kdots)(rows + (size_t)i0 * stride, stride, m, qp, d, bits, nq, isum, 0, NULL);
        _Pragma("GCC unroll 16") for (int g = 0; g < nq; g++)
            for (uint32_t i = 0; i < m; i++)
                dots[(size_t)g * n + i0 + i] = isum[g][i];
    }
}

I8_FN void I8_NAME(skv_att_i8_vacc_rows)(const uint8_t *rows, size_t stride, uint32_t n,
                                         const int8_t *w, uint32_t d, int bits, int nq,
                                         int32_t *acc)
{
    int32_t ia[I8_QMAX][SKV_MAX_HEAD_DIM] __attribute__((aligned(32)));
    uint32_t w4[1][I8_QMAX][I8_TILE / 4];
    __m256i vt[I8_TILE / 4 * SKV_MAX_HEAD_DIM / 8];
    for (uint32_t i0 = 0; i0 < n; i0 += I8_TILE) {
        uint32_t m = n - i0 < I8_TILE ? n - i0 : I8_TILE;
        _Pragma("GCC unroll 16") for (int g = 0; g < nq; g++)
            for (uint32_t k = 0; k < I8_TILE / 4; k++) {
                uint32_t x = 0;
                for (uint32_t b = 0; b < 4; b++)
                    if (4 * k + b < m)
                        x |= (uint32_t)(uint8_t)w[(size_t)g * n + i0 + 4 * k + b] << (8 * b);
                w4[0][g][k] = x;
            }
        I8_NAME(i8_vacc)(rows + (size_t)i0 * stride, stride, m,
                         (const uint32_t(*)[I8_QMAX][I8_TILE / 4])w4, d, d, bits, nq, vt, ia);
        _Pragma("GCC unroll 16") for (int g = 0; g < nq; g++)
            for (uint32_t x = 0; x < d; x++)
                acc[(size_t)g * d + i8_vchan(bits, x)] += ia[g][x];
    }
}

#undef I8_DPB
#undef I8_FN
#undef I8_NAME
#undef I8_CAT
#undef I8_CAT2
