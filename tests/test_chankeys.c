/* test_chankeys.c -- keys per channel in the packed cache (k_mode 4, format
 * 1.2): the PBKT byte model on an example worked out by hand, the decoded
 * keys against the online cache's quantizer (lib/eval/ecgroup.c) bit for
 * bit, the partial group per token, the fused kernels against a float64
 * attention of the same codes, the validating decoder on malformed groups,
 * and the kivi:N policy's widths and bytes. */
#include "smartkv.h"
#include "../lib/eval/ecgroup.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define expect(c) do { if (!(c)) ck_abort_msg("assertion failed: %s", #c); } while (0)

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)(rng >> 40) / 16777216.0f * 2.0f - 1.0f;
}

static void fill(float *x, size_t n, int outliers)
{
    for (size_t i = 0; i < n; i++)
        x[i] = frand() * (outliers && i % 13 == 5 ? 9.0f : 1.0f);
}

/* An aligned payload of one bucket, decoded into *b (free the return). */
static void *encode(const skv_qcfg *q, uint32_t bits, const uint32_t *idx, uint32_t n,
                    const float *k, const float *v, uint64_t T, skv_bucket *b)
{
    uint64_t size = skv_pbkt_payload_bytes(q, bits, n);
    uint8_t *p = aligned_alloc(64, (size_t)(size + 63) / 64 * 64);
    ck_assert_ptr_nonnull(p);
    int rc = skv_pbkt_encode(p, size, q, 0, 0, bits, 0, idx, n, k, v);
    ck_assert_msg(rc == 0, "encode: %s", skv_errmsg());
    rc = skv_pbkt_decode(p, size, T, b);
    ck_assert_msg(rc == 0, "decode: %s", skv_errmsg());
    return p;
}

/* d = 8, 4 tokens per key group, 6 rows at 4 bits, groups of 8 channels:
 * idx 24 bytes, k_par one group block (4*8) + 2 partial rows (4 each) = 40,
 * k_dat 6*4 = 24, v_par 6*4 = 24, v_dat 24, each section padded to 64:
 * 64 + 5*64 = 384 bytes; per-token keys would have k_par 24, the same
 * 384; at 40 rows: per channel 10*32 = 320 (pad 320), per token 160 (pad 192). */
START_TEST(test_byte_model_by_hand)
{
    skv_qcfg q = {.head_dim = 8, .k_group = 8, .v_group = 8, .k_mode = SKV_QMODE_CHAN, .v_mode = SKV_QMODE_ASYM, .k_tokens = 4};
    ck_assert_int_eq(skv_qcfg_check(&q), 0);
    expect(skv_kpar_bytes(&q, 4, 6) == 40);
    expect(skv_pbkt_payload_bytes(&q, 4, 6) == 384);
    expect(skv_kpar_bytes(&q, 4, 40) == 320);
    expect(skv_pbkt_payload_bytes(&q, 4, 40) == 64 + 192 + 320 + 192 + 192 + 192);
    expect(skv_kpar_bytes(&q, 16, 40) == 0);  /* fp16 rows: no parameters */
    skv_qcfg t = q;
    t.k_mode = SKV_QMODE_ASYM;
    t.k_tokens = 0;
    expect(skv_kpar_bytes(&t, 4, 40) == 160);
    /* every part but the last holds whole key groups */
    skv_qcfg big = {.head_dim = 128, .k_group = 128, .v_group = 128, .k_mode = SKV_QMODE_CHAN, .v_mode = SKV_QMODE_ASYM, .k_tokens = 96};
    expect(skv_pbkt_max_tokens(&big, 2) % 96 == 0);
    expect(skv_pbkt_payload_bytes(&big, 2, skv_pbkt_max_tokens(&big, 2)) <= SKV_CHUNK_MAX);
    /* settings the checker refuses */
    skv_qcfg bad = q;
    bad.k_tokens = 1;
    expect(skv_qcfg_check(&bad) < 0);
    bad.k_tokens = SKV_KEY_TOKENS_MAX + 1;
    expect(skv_qcfg_check(&bad) < 0);
    bad = q;
    bad.v_mode = SKV_QMODE_CHAN;  /* values stay per token */
    expect(skv_qcfg_check(&bad) < 0);
    bad = t;
    bad.k_tokens = 32;            /* k_tokens without keys per channel */
    expect(skv_qcfg_check(&bad) < 0);
}
END_TEST

/* The keys of full groups decode to exactly what the online cache's
 * quantizer gives for the same rows; the partial group's rows to the
 * per-token asym quantizer's; values are per token, unchanged. */
START_TEST(test_same_numbers_as_online_cache)
{
    const uint32_t d = 64, G = 32, T = 200;
    float *k = malloc((size_t)T * d * sizeof *k), *v = malloc((size_t)T * d * sizeof *v);
    float *dk = calloc((size_t)T * d, sizeof *dk), *dv = calloc((size_t)T * d, sizeof *dv);
    float *ref = malloc((size_t)G * d * sizeof *ref), *pv = calloc((size_t)T * d, sizeof *pv);
    ck_assert(k && v && dk && dv && ref && pv);
    fill(k, (size_t)T * d, 1);
    fill(v, (size_t)T * d, 0);
    /* a bucket of every third token: groups are consecutive rows of the
     * bucket, not of the sequence */
    uint32_t idx[T], n = 0;
    for (uint32_t t = 0; t < T; t += 3)
        idx[n++] = t;
    static const uint32_t widths[] = {2, 3, 4, 8};
    for (int wi = 0; wi < 4; wi++) {
        uint32_t bits = widths[wi];
        skv_qcfg q = {.head_dim = d, .k_group = 16, .v_group = 32, .k_mode = SKV_QMODE_CHAN, .v_mode = SKV_QMODE_ASYM, .k_tokens = G};
        skv_bucket b;
        void *p = encode(&q, bits, idx, n, k, v, T, &b);
        expect(b.k_tokens == G && b.k_full == n / G * G && b.k_tail_par);
        skv_bucket_dequantize(&b, dk, dv);
        for (uint32_t g = 0; g < n / G; g++) {
            float src[32 * 64];
            for (uint32_t r = 0; r < G; r++)
                memcpy(src + r * d, k + (size_t)idx[g * G + r] * d, d * sizeof(float));
            for (uint32_t c = 0; c < d; c++)
                skv_ecg_quant_span(src + c, ref + c, G, d, bits);
            for (uint32_t r = 0; r < G; r++)
                ck_assert_msg(!memcmp(ref + r * d, dk + (size_t)idx[g * G + r] * d,
                                      d * sizeof(float)),
                              "%u-bit group %u row %u differs from the online cache", bits, g, r);
        }
        for (uint32_t i = b.k_full; i < n; i++) {
            uint8_t par[64], dat[128];
            float row[64];
            ck_assert_int_eq(skv_quantize_row_ref(k + (size_t)idx[i] * d, d, bits, 16,
                                                  SKV_QMODE_ASYM, par, dat), 0);
            skv_dequantize_row_ref(par, dat, d, bits, 16, SKV_QMODE_ASYM, row);
            ck_assert_msg(!memcmp(row, dk + (size_t)idx[i] * d, sizeof row),
                          "%u-bit partial-group row %u", bits, i);
        }
        /* values: as a per-token bucket stores them */
        skv_qcfg pt = q;
        pt.k_mode = SKV_QMODE_ASYM;
        pt.k_tokens = 0;
        skv_bucket b2;
        void *p2 = encode(&pt, bits, idx, n, k, v, T, &b2);
        skv_bucket_dequantize(&b2, NULL, pv);
        ck_assert(!memcmp(pv, dv, (size_t)T * d * sizeof(float)));
        free(p2);
        free(p);
    }
    free(k);
    free(v);
    free(dk);
    free(dv);
    free(ref);
    free(pv);
}
END_TEST

/* The fused kernels on a head of two buckets (2 and 4 bits, keys per
 * channel, partial groups in both) against float64 attention over the
 * dequantized rows computed here, and against the library's reference. */
START_TEST(test_kernels_vs_float64)
{
    enum { d = 64, T = 150, H = 2, S = 3 };
    const uint32_t G = 16;
    float *k = malloc((size_t)T * d * sizeof *k), *v = malloc((size_t)T * d * sizeof *v);
    float *q = malloc((size_t)H * T * d * sizeof *q);
    float *dk = calloc((size_t)T * d, sizeof *dk), *dv = calloc((size_t)T * d, sizeof *dv);
    ck_assert(k && v && q && dk && dv);
    fill(k, (size_t)T * d, 1);
    fill(v, (size_t)T * d, 0);
    fill(q, (size_t)H * T * d, 0);
    uint32_t i2[T], i4[T], n2 = 0, n4 = 0;
    for (uint32_t t = 0; t < T; t++) {
        if (t % 5 == 1)
            i4[n4++] = t;
        else
            i2[n2++] = t;
    }
    skv_qcfg qc = {.head_dim = d, .k_group = d, .v_group = 32, .k_mode = SKV_QMODE_CHAN, .v_mode = SKV_QMODE_ASYM, .k_tokens = G};
    skv_bucket bk[2];
    void *p2 = encode(&qc, 2, i2, n2, k, v, T, &bk[0]);
    void *p4 = encode(&qc, 4, i4, n4, k, v, T, &bk[1]);
    expect(n2 % G && n4 % G);  /* both have a partial group */
    skv_bucket_dequantize(&bk[0], dk, dv);
    skv_bucket_dequantize(&bk[1], dk, dv);
    skv_cache_head head = {2, bk, n2 + n4, NULL, NULL};
    const uint64_t steps[S] = {10, 77, T - 1};
    /* float64 attention by hand, over the dequantized rows (want) and
     * over the rows before rounding (unrounded) */
    double want[H][S][d], unrounded[H][S][d];
    for (int w = 0; w < 2; w++) {
        const float *kk = w ? k : dk, *vv = w ? v : dv;
        for (uint32_t h = 0; h < H; h++)
            for (int s = 0; s < S; s++) {
                uint64_t t = steps[s];
                double sc[T], mx = -1e300, sum = 0;
                for (uint64_t u = 0; u <= t; u++) {
                    double a = 0;
                    for (uint32_t j = 0; j < d; j++)
                        a += (double)q[((size_t)h * T + t) * d + j] * kk[u * d + j];
                    sc[u] = a / sqrt((double)d);
                    mx = sc[u] > mx ? sc[u] : mx;
                }
                for (uint64_t u = 0; u <= t; u++)
                    sum += (sc[u] = exp(sc[u] - mx));
                for (uint32_t j = 0; j < d; j++) {
                    double o = 0;
                    for (uint64_t u = 0; u <= t; u++)
                        o += sc[u] / sum * vv[u * d + j];
                    (w ? unrounded : want)[h][s][j] = o;
                }
            }
    }
    double qerr = 0;  /* the rounding's own error, squared */
    for (uint32_t h = 0; h < H; h++)
        for (int s = 0; s < S; s++)
            for (uint32_t j = 0; j < d; j++)
                qerr += (want[h][s][j] - unrounded[h][s][j]) * (want[h][s][j] - unrounded[h][s][j]);
    skv_kv_view L = {SKV_KV_PACKED, H, 1, d, T, q, NULL, NULL, &head};
    skv_kv_view R = {SKV_KV_F32, H, 1, d, T, q, dk, dv, NULL};
    const int kernels[] = {SKV_KERNEL_SCALAR, SKV_KERNEL_AVX2, SKV_KERNEL_I8_SCALAR};
    for (int ki = 0; ki < 4; ki++) {
        int kern = ki < 3 ? kernels[ki] : -1;
        if (kern > 0 && !skv_att_kernel_available(kern))
            continue;  /* a kernel this CPU lacks: the others still run */
        skv_attend_opts o = {1, kern > 0 ? kern : SKV_KERNEL_SCALAR, 32};
        skv_attend_ctx *ctx = skv_attend_new(&o);
        ck_assert_ptr_nonnull(ctx);
        float out[H * S * d];
        int rc = kern > 0 ? skv_attend_layer(ctx, &L, steps, S, out, NULL)
                          : skv_attend_layer_ref(ctx, &R, steps, S, out, NULL);
        ck_assert_msg(rc == 0, "%s", skv_errmsg());
        double err = 0, norm = 0;
        for (uint32_t h = 0; h < H; h++)
            for (int s = 0; s < S; s++)
                for (uint32_t j = 0; j < d; j++) {
                    double e = out[((size_t)h * S + s) * d + j] - want[h][s][j];
                    err += e * e;
                    norm += want[h][s][j] * want[h][s][j];
                }
        /* float kernels: float32 rounding; int8-scalar takes the full key
         * groups of 16 tokens (the query folded per group in two int8
         * levels, the weights in one: within 15% of the rounding's own
         * error, as test_attend bounds the int8 kernels) and leaves the
         * partial groups to the float kernels */
        if (kern == SKV_KERNEL_I8_SCALAR)
            ck_assert_msg(sqrt(err / qerr) < 0.15, "int8-scalar: error %g of the rounding's own",
                          sqrt(err / qerr));
        else
            ck_assert_msg(sqrt(err / norm) < 1e-5, "kernel %d: relative error %g", kern,
                          sqrt(err / norm));
        skv_attend_free(ctx);
    }
    free(p2);
    free(p4);
    free(k);
    free(v);
    free(q);
    free(dk);
    free(dv);
}
END_TEST

/* Malformed groups: the decoder refuses them with the field named. */
START_TEST(test_decoder_refuses)
{
    const uint32_t d = 8, T = 20;
    float k[20 * 8], v[20 * 8];
    fill(k, sizeof k / sizeof *k, 0);
    fill(v, sizeof v / sizeof *v, 0);
    uint32_t idx[10];
    for (uint32_t i = 0; i < 10; i++)
        idx[i] = 2 * i;
    skv_qcfg q = {.head_dim = d, .k_group = d, .v_group = d, .k_mode = SKV_QMODE_CHAN, .v_mode = SKV_QMODE_ASYM, .k_tokens = 4};
    skv_bucket b;
    uint8_t *p = encode(&q, 3, idx, 10, k, v, T, &b);
    uint64_t size = skv_pbkt_payload_bytes(&q, 3, 10);
    static const struct { uint32_t off, val; const char *what; } bad[] = {
        {40, 0, "key group"}, {40, 1, "key group"}, {40, 5000, "key group"},
        {28, 1, "key tokens"},        /* per-token keys with k_tokens set */
        {32, 4, "V quantization mode"}, {56, 1, "reserved"},  /* 44..55: rotation (1.3) */
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        uint8_t *m = aligned_alloc(64, (size_t)(size + 63) / 64 * 64);
        ck_assert_ptr_nonnull(m);
        memcpy(m, p, (size_t)size);
        m[bad[i].off] = (uint8_t)bad[i].val;
        m[bad[i].off + 1] = (uint8_t)(bad[i].val >> 8);
        ck_assert_msg(skv_pbkt_decode(m, size, T, &b) < 0, "case %zu accepted", i);
        ck_assert_msg(strstr(skv_errmsg(), bad[i].what), "case %zu: '%s'", i, skv_errmsg());
        free(m);
    }
    /* padding after the partial group's parameters must be zero */
    ck_assert_int_eq(skv_pbkt_decode(p, size, T, &b), 0);
    uint64_t kp_end = (uint64_t)(b.k_par - p) + skv_bucket_kpar_bytes(&b);
    p[kp_end] = 1;
    ck_assert(skv_pbkt_decode(p, size, T, &b) < 0);
    free(p);
}
END_TEST

/* kivi:N: the first floor(T / R) * R tokens at N bits, the rest fp16; the
 * byte model's total matches the buckets. */
START_TEST(test_kivi_policy)
{
    const uint32_t L = 2, H = 2, T = 100;
    skv_alloc_cfg c;
    skv_alloc_cfg_defaults(&c);
    ck_assert_int_eq(skv_policy_parse("kivi:2", &c.policy, &c.uniform_bits), 0);
    c.budget = 0;
    c.recent = 32;
    c.qcfg.head_dim = 64;
    c.qcfg.k_group = 64;
    ck_assert_msg(skv_alloc_cfg_resolve(&c) == 0, "%s", skv_errmsg());
    expect(c.qcfg.k_mode == SKV_QMODE_CHAN && c.qcfg.k_tokens == 32 && c.qcfg.v_group == 32);
    expect(c.width_mask == (1u << 2 | 1u << 16));
    size_t N = (size_t)L * H * T;
    float *imp = calloc(N, sizeof *imp), *err = calloc(N * SKV_NBITS, sizeof *err);
    uint8_t *bits = calloc(N, 1);
    ck_assert(imp && err && bits);
    skv_alloc_problem p = {L, H, T, imp, err, NULL, NULL, NULL};
    skv_alloc_result r;
    ck_assert_msg(skv_alloc_solve(&c, &p, bits, &r) == 0, "%s", skv_errmsg());
    for (size_t i = 0; i < N; i++)
        ck_assert_int_eq(bits[i], i % T < 96 ? 2 : 16);
    uint64_t want = skv_pkhd_file_bytes() +
                    (uint64_t)L * H * (skv_bucket_file_bytes(&c.qcfg, 2, 96) +
                                       skv_bucket_file_bytes(&c.qcfg, 16, 4));
    expect(r.bytes == want);
    /* a residual that is not a multiple of the key group, and widths kivi lacks */
    skv_alloc_cfg b2;
    skv_alloc_cfg_defaults(&b2);
    ck_assert_int_eq(skv_policy_parse("kivi:4", &b2.policy, &b2.uniform_bits), 0);
    b2.recent = 40;
    expect(skv_alloc_cfg_resolve(&b2) < 0);
    ck_assert_int_eq(skv_policy_parse("kivi:16", &b2.policy, &b2.uniform_bits), 0);
    b2.recent = 32;
    expect(skv_alloc_cfg_resolve(&b2) < 0);
    free(imp);
    free(err);
    free(bits);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("chankeys");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_byte_model_by_hand);
    tcase_add_test(tc, test_same_numbers_as_online_cache);
    tcase_add_test(tc, test_kernels_vs_float64);
    tcase_add_test(tc, test_decoder_refuses);
    tcase_add_test(tc, test_kivi_policy);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf ? 1 : 0;
}
