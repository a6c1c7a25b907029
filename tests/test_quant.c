/* test_quant.c -- quantizers, bit packing, fp16 helpers: error bounds, the
 * packed layout, and the AVX2 paths against the scalar reference. */
#include "smartkv.h"

#include <check.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Check's ck_assert reports every passing assertion through a pipe (a
 * system call each); these only call into Check on failure. */
#define expect(c) do { if (!(c)) ck_abort_msg("assertion failed: %s", #c); } while (0)
#define expect_msg(c, ...) do { if (!(c)) ck_abort_msg(__VA_ARGS__); } while (0)

static const uint32_t WIDTHS[4] = {2, 3, 4, 8};
static const uint32_t MODES[2] = {SKV_QMODE_ASYM, SKV_QMODE_SYM};

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 32);
}
static float frand(void) { return (float)(rnd() >> 8) / 16777216.0f * 2.0f - 1.0f; } /* [-1, 1) */

/* Fill x[d] with one of several distributions. */
static void fill(float *x, uint32_t d, int kind)
{
    for (uint32_t i = 0; i < d; i++) {
        switch (kind) {
        case 0: x[i] = frand(); break;
        case 1: x[i] = frand() * (rnd() % 16 == 0 ? 30.0f : 1.0f); break;  /* outliers */
        case 2: x[i] = 0.3f; break;                                       /* constant */
        case 3: x[i] = (rnd() & 1) ? 0.0f : -0.0f; break;                 /* signed zeros */
        case 4: x[i] = frand() * 3e-6f; break;                            /* subnormal fp16 range */
        case 5: x[i] = frand() * 65504.0f; break;                         /* near the fp16 limit */
        case 6: x[i] = 1000.0f + frand() * 1e-3f; break;                  /* offset, narrow */
        case 7: x[i] = fabsf(frand()) + 2.0f; break;                      /* all positive */
        default: x[i] = -fabsf(frand()) * 7.0f; break;                    /* all negative */
        }
    }
}
#define NKINDS 9

static uint32_t divisors_of(uint32_t d, uint32_t *g)
{
    static const uint32_t cand[] = {1, 3, 7, 8, 16, 25, 32, 50, 64, 128};
    uint32_t n = 0;
    g[n++] = d;
    for (size_t i = 0; i < sizeof cand / sizeof cand[0]; i++)
        if (cand[i] < d && d % cand[i] == 0)
            g[n++] = cand[i];
    return n;
}

/* ---- error bound ---- */

static void check_bound(const float *x, uint32_t d, uint32_t bits, uint32_t group, uint32_t mode,
                        int simd, int kind)
{
    uint8_t par[4096], dat[4096];
    float y[1024];
    int rc = simd ? skv_quantize_row_avx2(x, d, bits, group, mode, par, dat)
                  : skv_quantize_row_ref(x, d, bits, group, mode, par, dat);
    ck_assert_int_eq(rc, 0);
    skv_dequantize_row_ref(par, dat, d, bits, group, mode, y);
    float maxq = (float)((1u << bits) - 1);
    for (uint32_t g = 0; g < d / group; g++) {
        float s, b;
        skv_qm_group_par(par, g, bits, mode, &s, &b);
        expect(s >= 0 && isfinite(s) && isfinite(b));
        float mn = x[g * group], mx = mn;
        for (uint32_t j = g * group; j < (g + 1) * group; j++) {
            mn = fminf(mn, x[j]);
            mx = fmaxf(mx, x[j]);
            float eps = 1e-6f * (fabsf(x[j]) + fabsf(b) + maxq * s);
            expect_msg(fabsf(x[j] - y[j]) <= s / 2 + eps,
                          "bits %u mode %u group %u d %u kind %d ch %u: x %.9g y %.9g scale %.9g",
                          bits, mode, group, d, kind, j, (double)x[j], (double)y[j], (double)s);
        }
        /* the scale is not needlessly coarse: at most the fp16 rounding above optimal */
        float opt;
        if (mode == SKV_QMODE_ASYM)
            opt = (mx - mn + fabsf(mn) * 0x1p-10f) / maxq;
        else
            opt = fmaxf(fabsf(mn), fabsf(mx)) / (float)((1u << (bits - 1)) - 1);
        expect_msg(s <= opt * (1 + 0x1p-9f) + 0x1p-23f,
                      "scale %.9g too large (optimal about %.9g)", (double)s, (double)opt);
    }
}

START_TEST(test_error_bound)
{
    float x[1024];
    const uint32_t dims[] = {128, 100, 64, 7, 1};
    for (int simd = 0; simd < 2; simd++)
        for (size_t di = 0; di < sizeof dims / sizeof dims[0]; di++) {
            uint32_t d = dims[di], groups[16];
            uint32_t ng = divisors_of(d, groups);
            for (int kind = 0; kind < NKINDS; kind++)
                for (int rep = 0; rep < 4; rep++) {
                    fill(x, d, kind);
                    for (int w = 0; w < 4; w++)
                        for (int m = 0; m < 2; m++)
                            for (uint32_t gi = 0; gi < ng; gi++)
                                check_bound(x, d, WIDTHS[w], groups[gi], MODES[m], simd, kind);
                }
        }
}
END_TEST

START_TEST(test_fp16_rows)
{
    float x[300], y[300];
    uint8_t dat[600];
    for (int kind = 0; kind < NKINDS; kind++) {
        fill(x, 300, kind);
        ck_assert_int_eq(skv_quantize_row(x, 300, 16, 300, SKV_QMODE_ASYM, NULL, dat), 0);
        skv_dequantize_row(NULL, dat, 300, 16, 300, SKV_QMODE_ASYM, y);
        for (int i = 0; i < 300; i++) {
            float want = skv_f16_to_f32(skv_f32_to_f16(x[i]));
            expect(memcmp(&want, &y[i], 4) == 0);
            expect(fabsf(x[i] - y[i]) <= fabsf(x[i]) * 0x1p-11f + 0x1p-25f);
        }
    }
}
END_TEST

START_TEST(test_constant_rows_exact)
{
    /* one distinct value: every element decodes to itself, asym and sym */
    float x[64], y[64];
    uint8_t par[64], dat[64];
    const float vals[] = {0.0f, 0.3f, -2.5f, 1000.125f, 3e-7f};
    for (size_t v = 0; v < sizeof vals / sizeof vals[0]; v++)
        for (int w = 0; w < 4; w++) {
            for (int i = 0; i < 64; i++)
                x[i] = vals[v];
            ck_assert_int_eq(skv_quantize_row(x, 64, WIDTHS[w], 64, SKV_QMODE_ASYM, par, dat), 0);
            skv_dequantize_row(par, dat, 64, WIDTHS[w], 64, SKV_QMODE_ASYM, y);
            float s, b;
            skv_qm_group_par(par, 0, WIDTHS[w], SKV_QMODE_ASYM, &s, &b);
            for (int i = 0; i < 64; i++)
                expect(fabsf(y[i] - x[i]) <= s / 2 + 1e-6f * fabsf(x[i]));
        }
    memset(x, 0, sizeof x);
    ck_assert_int_eq(skv_quantize_row(x, 64, 4, 64, SKV_QMODE_SYM, par, dat), 0);
    skv_dequantize_row(par, dat, 64, 4, 64, SKV_QMODE_SYM, y);
    for (int i = 0; i < 64; i++)
        expect(y[i] == 0.0f);
}
END_TEST

START_TEST(test_bad_values)
{
    float x[40];
    uint8_t par[64], dat[128];
    const float bad[] = {NAN, INFINITY, -INFINITY, 65600.0f, -70000.0f};
    for (size_t b = 0; b < sizeof bad / sizeof bad[0]; b++)
        for (uint32_t pos = 0; pos < 40; pos += 13) {
            fill(x, 40, 0);
            x[pos] = bad[b];
            const uint32_t ws[] = {2, 3, 4, 8, 16};
            for (int w = 0; w < 5; w++) {
                ck_assert_int_eq(skv_quantize_row_ref(x, 40, ws[w], 8, SKV_QMODE_ASYM, par, dat),
                                 SKV_EFORMAT);
                ck_assert_int_eq(skv_quantize_row_avx2(x, 40, ws[w], 8, SKV_QMODE_SYM, par, dat),
                                 SKV_EFORMAT);
                char want[32];
                snprintf(want, sizeof want, "channel %u", pos);
                expect_msg(strstr(skv_errmsg(), want), "message: %s", skv_errmsg());
            }
        }
    /* the limit itself is allowed */
    for (int i = 0; i < 40; i++)
        x[i] = (i & 1) ? 65504.0f : -65504.0f;
    ck_assert_int_eq(skv_quantize_row(x, 40, 2, 40, SKV_QMODE_ASYM, par, dat), 0);
    ck_assert_int_eq(skv_quantize_row(x, 40, 16, 40, SKV_QMODE_ASYM, par, dat), 0);
    /* bad arguments */
    ck_assert_int_eq(skv_quantize_row(x, 40, 5, 40, SKV_QMODE_ASYM, par, dat), SKV_EINVAL);
    ck_assert_int_eq(skv_quantize_row(x, 40, 4, 16, SKV_QMODE_ASYM, par, dat), SKV_EINVAL);
    ck_assert_int_eq(skv_quantize_row(x, 40, 4, 40, 7, par, dat), SKV_EINVAL);
    ck_assert_int_eq(skv_quantize_row(x, 0, 4, 1, SKV_QMODE_ASYM, par, dat), SKV_EINVAL);
}
END_TEST

/* ---- packed layout ---- */

START_TEST(test_layout_hand_examples)
{
    uint8_t out[16];
    /* 3-bit: codes 1..7,0 in one 24-bit little-endian word:
     * bits (LSB first) 100 010 110 001 101 011 111 000 -> D1 58 1F */
    const uint8_t c3[8] = {1, 2, 3, 4, 5, 6, 7, 0};
    skv_pack_codes_ref(c3, 8, 3, out);
    expect((out[0]) == (0xD1));
    expect((out[1]) == (0x58));
    expect((out[2]) == (0x1F));
    skv_pack_codes_avx2(c3, 8, 3, out);
    expect(out[0] == 0xD1 && out[1] == 0x58 && out[2] == 0x1F);
    /* 3 values only: the rest of the block is zero padding */
    skv_pack_codes_ref(c3, 3, 3, out);
    expect(out[0] == 0xD1 && out[1] == 0x00 && out[2] == 0x00);
    /* 2-bit: 1,2,3,0 -> 1 | 2<<2 | 3<<4 = 0x39; then 3,3,3,3 -> 0xFF */
    const uint8_t c2[8] = {1, 2, 3, 0, 3, 3, 3, 3};
    skv_pack_codes_ref(c2, 8, 2, out);
    expect(out[0] == 0x39 && out[1] == 0xFF);
    /* 4-bit: low nibble first */
    const uint8_t c4[8] = {0xA, 0x5, 0, 0xF, 1, 2, 3, 4};
    skv_pack_codes_ref(c4, 8, 4, out);
    expect(out[0] == 0x5A && out[1] == 0xF0 && out[2] == 0x21 && out[3] == 0x43);
    expect((skv_row_bytes(3, 8)) == (3));
    expect((skv_row_bytes(3, 9)) == (6));
    expect((skv_row_bytes(2, 128)) == (32));
    expect((skv_row_bytes(4, 100)) == (52));
    /* random access helpers agree */
    for (uint32_t j = 0; j < 8; j++)
        expect((skv_qm_code((const uint8_t *)"\xD1\x58\x1F", 3, j)) == (c3[j]));
}
END_TEST

/* Compile-time shapes of the packed blocks (8 values each). */
typedef struct { uint8_t b[2]; } blk2;
typedef struct { uint8_t b[3]; } blk3;
typedef struct { uint8_t b[4]; } blk4;
typedef struct { uint8_t b[8]; } blk8;
_Static_assert(sizeof(blk2) == 2 && sizeof(blk3) == 3 && sizeof(blk4) == 4 && sizeof(blk8) == 8,
               "a block of 8 values takes `bits` bytes");

START_TEST(test_pack_roundtrip)
{
    uint8_t codes[1100], back[1100], p1[1100], p2[1100];
    for (int w = 0; w < 4; w++) {
        uint32_t bits = WIDTHS[w];
        for (uint32_t n = 1; n <= 1030; n += (n < 80 ? 1 : 37)) {
            for (uint32_t i = 0; i < n; i++)
                codes[i] = (uint8_t)(rnd() & ((1u << bits) - 1));
            uint64_t nb = skv_row_bytes(bits, n);
            memset(p1, 0xAA, sizeof p1);
            memset(p2, 0x55, sizeof p2);
            skv_pack_codes_ref(codes, n, bits, p1);
            skv_pack_codes_avx2(codes, n, bits, p2);
            expect_msg(memcmp(p1, p2, nb) == 0, "pack bits %u n %u", bits, n);
            expect((p1[nb]) == (0xAA));   /* no write past the row */
            expect((p2[nb]) == (0x55));
            memset(back, 0xEE, sizeof back);
            skv_unpack_codes_ref(p1, n, bits, back);
            expect(memcmp(back, codes, n) == 0);
            expect((back[n]) == (0xEE));
            memset(back, 0xEE, sizeof back);
            skv_unpack_codes_avx2(p1, n, bits, back);
            expect_msg(memcmp(back, codes, n) == 0, "unpack bits %u n %u", bits, n);
            expect((back[n]) == (0xEE));
            for (uint32_t j = 0; j < n; j++)
                expect((skv_qm_code(p1, bits, j)) == (codes[j]));
            uint8_t u8[8];
            skv_qm_unpack8(p1, bits, (n - 1) / 8, u8);
            for (uint32_t k = 0; k < 8 && ((n - 1) / 8) * 8 + k < n; k++)
                expect((u8[k]) == (codes[((n - 1) / 8) * 8 + k]));
        }
    }
}
END_TEST

/* ---- AVX2 against the reference ---- */

START_TEST(test_simd_bit_exact)
{
    float x[1024], y1[1024], y2[1024];
    uint8_t par1[8192], par2[8192], dat1[4096], dat2[4096];
    uint32_t dims[90], nd = 0;
    for (uint32_t d = 1; d <= 70; d++)
        dims[nd++] = d;
    const uint32_t more[] = {96, 100, 120, 127, 128, 129, 200, 256, 1000, 1024};
    for (size_t i = 0; i < sizeof more / sizeof more[0]; i++)
        dims[nd++] = more[i];
    const uint32_t ws[5] = {2, 3, 4, 8, 16};
    for (uint32_t di = 0; di < nd; di++) {
        uint32_t d = dims[di], groups[16];
        uint32_t ng = divisors_of(d, groups);
        for (int kind = 0; kind < NKINDS; kind++) {
            fill(x, d, kind);
            for (int w = 0; w < 5; w++)
                for (int m = 0; m < 2; m++)
                    for (uint32_t gi = 0; gi < ng; gi++) {
                        uint32_t bits = ws[w], g = groups[gi];
                        uint64_t pb = skv_par_bytes(bits, d, g, MODES[m]);
                        uint64_t rb = skv_row_bytes(bits, d);
                        memset(par1, 1, pb + 8);
                        memset(par2, 1, pb + 8);
                        memset(dat1, 2, rb + 8);
                        memset(dat2, 2, rb + 8);
                        ck_assert_int_eq(skv_quantize_row_ref(x, d, bits, g, MODES[m], par1, dat1), 0);
                        ck_assert_int_eq(skv_quantize_row_avx2(x, d, bits, g, MODES[m], par2, dat2), 0);
                        expect_msg(memcmp(par1, par2, pb + 8) == 0 &&
                                      memcmp(dat1, dat2, rb + 8) == 0,
                                      "quantize differs: d %u bits %u group %u mode %u kind %d", d,
                                      bits, g, MODES[m], kind);
                        skv_dequantize_row_ref(par1, dat1, d, bits, g, MODES[m], y1);
                        skv_dequantize_row_avx2(par1, dat1, d, bits, g, MODES[m], y2);
                        expect_msg(memcmp(y1, y2, d * sizeof(float)) == 0,
                                      "dequantize differs: d %u bits %u group %u mode %u", d, bits,
                                      g, MODES[m]);
                        /* random access agrees with the bulk decoder */
                        uint32_t j = rnd() % d;
                        float v = skv_qm_value(par1, dat1, bits, g, MODES[m], j);
                        expect(memcmp(&v, &y1[j], 4) == 0);
                    }
        }
    }
}
END_TEST

START_TEST(test_h2f_exhaustive)
{
    for (uint32_t h = 0; h < 65536; h++) {
        float a = skv_qm_h2f(h), b = skv_f16_to_f32((uint16_t)h);
        if (isnan(b))
            expect(isnan(a));
        else
            expect_msg(memcmp(&a, &b, 4) == 0, "h %04x: %g vs %g", h, (double)a, (double)b);
    }
}
END_TEST

START_TEST(test_group_params_direction)
{
    /* min rounds down and scale rounds up to fp16 */
    for (int i = 0; i < 20000; i++) {
        float x[2] = {frand() * 100.0f, frand() * 100.0f};
        uint16_t s16, m16;
        skv_quant_group_params(x, 2, 4, SKV_QMODE_ASYM, &s16, &m16);
        float mn = fminf(x[0], x[1]), mx = fmaxf(x[0], x[1]);
        float m = skv_f16_to_f32(m16), s = skv_f16_to_f32(s16);
        expect(m <= mn);
        expect(mn - m < fabsf(mn) * 0x1p-10f + 0x1p-24f);
        expect(m + 15.0f * s >= mx - fabsf(mx) * 0x1p-22f);
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("quant");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_error_bound);
    tcase_add_test(tc, test_fp16_rows);
    tcase_add_test(tc, test_constant_rows_exact);
    tcase_add_test(tc, test_bad_values);
    tcase_add_test(tc, test_layout_hand_examples);
    tcase_add_test(tc, test_pack_roundtrip);
    tcase_add_test(tc, test_h2f_exhaustive);
    tcase_add_test(tc, test_group_params_direction);
    suite_add_tcase(s, tc);
    if (skv_quant_have_avx2()) {
        TCase *ts = tcase_create("simd");
        tcase_set_timeout(ts, 120);
        tcase_add_test(ts, test_simd_bit_exact);
        suite_add_tcase(s, ts);
    } else {
        printf("SKIP: test_simd_bit_exact (this CPU or build has no AVX2; the _avx2 "
               "functions fall back to the reference)\n");
    }
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf != 0;
}
