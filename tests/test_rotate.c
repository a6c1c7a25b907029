/* test_rotate.c -- the randomized Hadamard rotation in the packed cache
 * (format 1.3, skv-quant --rotate / --rotate-values): the signs are the
 * online cache's (lib/eval/ecgroup.c) bit for bit; a 16-bit rotated cache
 * attends like the unrotated one; with outlier channels, rotated 2- and
 * 3-bit keys lose less attention than unrotated ones at equal bytes; keys
 * per channel decode to the online cache's quantizer's numbers in the
 * rotated basis; every CPU kernel agrees with the float64 attention of
 * the decoded (rotated back) rows; malformed rotation fields are refused. */
#include "smartkv.h"
#include "../lib/eval/ecgroup.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define expect(c) do { if (!(c)) ck_abort_msg("assertion failed: %s", #c); } while (0)

static char tmpdir[256];

static const char *tpath(const char *name)
{
    static char b[4][512];
    static int i;
    i = (i + 1) % 4;
    snprintf(b[i], sizeof b[i], "%s/%s", tmpdir, name);
    return b[i];
}

/* The online cache's sign rule as it was written in ecgroup.c before the
 * rotation moved to lib/quant (kept here to pin the bits). */
static uint64_t old_mix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static float old_sign(uint64_t seed, size_t unit, uint32_t j)
{
    return (old_mix64(((uint64_t)unit << 20) ^ j ^ (seed << 40)) & 1) ? -1.0f : 1.0f;
}

/* A synthetic trace with outlier channels in K (skv-trace synth), loaded. */
static skv_trace *synth(uint32_t L, uint32_t H, uint32_t Hkv, uint32_t d, uint64_t T,
                        uint32_t outliers)
{
    skv_synth_cfg c;
    skv_synth_defaults(&c);
    c.n_layers = L;
    c.n_heads = H;
    c.n_kv_heads = Hkv;
    c.head_dim = d;
    c.n_tokens = T;
    c.n_prefill = T;
    c.outlier_channels = outliers;
    c.seed = 7;
    skv_stream *s = skv_open_write(tpath("t.skv"), -1);
    ck_assert_ptr_nonnull(s);
    ck_assert_msg(skv_synth_write(&c, s) == 0, "%s", skv_errmsg());
    ck_assert_int_eq(skv_close(s), 0);
    skv_trace *t = NULL;
    skv_chunk_list extra = {0};
    ck_assert_msg(skv_cache_input_load(tpath("t.skv"), &t, &extra) == 0, "%s", skv_errmsg());
    skv_chunk_list_free(&extra);
    return t;
}

/* Every token of t at `bits` with quantizer q (rotation included), written
 * to a file and read back. */
static skv_cache *quantize(const skv_trace *t, uint32_t bits, skv_qcfg q)
{
    skv_cache_plan p;
    q.head_dim = t->hdr.head_dim;
    ck_assert_msg(skv_cache_plan_uniform(&p, &t->hdr, &q, bits) == 0, "%s", skv_errmsg());
    skv_stream *s = skv_open_write(tpath("c.skv"), -1);
    ck_assert_ptr_nonnull(s);
    ck_assert_msg(skv_cache_write(s, t, &p, NULL, 0, NULL) == 0, "%s", skv_errmsg());
    ck_assert_int_eq(skv_close(s), 0);
    skv_cache_plan_free(&p);
    skv_cache *c = NULL;
    ck_assert_msg(skv_cache_load(tpath("c.skv"), &c) == 0, "%s", skv_errmsg());
    expect(c->pk.q.rotate == q.rotate && c->pk.q.rot_seed == q.rot_seed);
    return c;
}

static double rel_l2(const float *a, const float *b, size_t n)
{
    double e = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        e += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        s += (double)b[i] * b[i];
    }
    return sqrt(e / (s > 0 ? s : 1));
}

/* Attention of every layer of c at `steps` with kernel kern (0: the
 * float64 reference on the trace t's own K and V) into out
 * [L][H][S][d]. */
static void attend_all(const skv_cache *c, const skv_trace *t, int kern, const uint64_t *steps,
                       uint32_t S, float *out)
{
    const skv_trace_hdr *h = &t->hdr;
    skv_attend_opts o = {1, kern ? kern : SKV_KERNEL_SCALAR, 16};
    skv_attend_ctx *ctx = skv_attend_new(&o);
    ck_assert_ptr_nonnull(ctx);
    size_t per = (size_t)h->n_heads * S * h->head_dim;
    for (uint32_t l = 0; l < h->n_layers; l++) {
        int rc;
        if (kern) {
            skv_kv_view L = {SKV_KV_PACKED, h->n_heads, h->n_kv_heads, h->head_dim, h->n_tokens,
                             t->q[l], NULL, NULL, skv_cache_head_at(c, l, 0)};
            rc = skv_attend_layer(ctx, &L, steps, S, out + l * per, NULL);
        } else {
            skv_kv_view R = {SKV_KV_F32, h->n_heads, h->n_kv_heads, h->head_dim, h->n_tokens,
                             t->q[l], t->k[l], t->v[l], NULL};
            rc = skv_attend_layer_ref(ctx, &R, steps, S, out + l * per, NULL);
        }
        ck_assert_msg(rc == 0, "%s", skv_errmsg());
    }
    skv_attend_free(ctx);
}

START_TEST(test_signs_and_transform)
{
    float s[256], x[256], y[256], z[256];
    static const uint64_t seeds[] = {0, 1, 7, (1ull << 24) + 3, ~0ull};
    for (size_t si = 0; si < sizeof seeds / sizeof *seeds; si++)
        for (size_t unit = 0; unit < 40; unit += 3) {
            skv_rot_signs(seeds[si], unit, 256, s);
            for (uint32_t j = 0; j < 256; j++)
                ck_assert_msg(s[j] == old_sign(seeds[si], unit, j),
                              "seed %llu unit %zu channel %u: not the online cache's sign",
                              (unsigned long long)seeds[si], unit, j);
        }
    /* orthogonal: norms kept, undo inverts apply (float rounding only) */
    skv_rot_signs(1, 5, 128, s);
    double n0 = 0, n1 = 0, e = 0;
    for (uint32_t j = 0; j < 128; j++)
        x[j] = (float)sin(j * 0.7) * (j == 17 ? 30.0f : 1.0f);
    skv_rot_apply(s, x, y, 128);
    skv_rot_undo(s, y, z, 128);
    float big = 0;
    for (uint32_t j = 0; j < 128; j++) {
        n0 += (double)x[j] * x[j];
        n1 += (double)y[j] * y[j];
        e += ((double)z[j] - x[j]) * ((double)z[j] - x[j]);
        big = fabsf(y[j]) > big ? fabsf(y[j]) : big;
    }
    ck_assert_msg(fabs(n1 / n0 - 1) < 1e-5, "norm ratio %g", n1 / n0);
    ck_assert_msg(sqrt(e / n0) < 1e-6, "round trip error %g", sqrt(e / n0));
    /* the outlier (30) is spread: no rotated channel keeps most of it */
    ck_assert_msg(big < 10.0f, "largest rotated channel %g", big);
    /* in place */
    memcpy(z, x, sizeof x);
    skv_rot_apply(s, z, z, 128);
    ck_assert(!memcmp(z, y, 128 * sizeof *z));
}
END_TEST

/* The blocked transform gives the plain loop's bits at every size. */
START_TEST(test_fwht_same_bits)
{
    srand(77);
    float x[256], y[256];
    for (uint32_t d = 1; d <= 256; d *= 2)
        for (int rep = 0; rep < 50; rep++) {
            for (uint32_t j = 0; j < d; j++)
                x[j] = ((float)rand() / RAND_MAX - 0.5f) * (rep % 5 ? 2.0f : 3e5f);
            memcpy(y, x, d * sizeof *x);
            float sign[256], r[256], u[256];
            skv_rot_signs(5, (uint64_t)rep, d, sign);
            for (uint32_t j = 0; j < d; j++)
                u[j] = x[j] * sign[j];
            skv_fwht_ref(u, d);                 /* rot_apply by hand */
            skv_rot_apply(sign, x, r, d);
            ck_assert_msg(!memcmp(r, u, d * sizeof *r), "d %u: apply differs", d);
            memcpy(u, x, d * sizeof *x);
            skv_fwht_ref(u, d);                 /* rot_undo by hand */
            for (uint32_t j = 0; j < d; j++)
                u[j] *= sign[j];
            skv_rot_undo(sign, x, r, d);
            ck_assert_msg(!memcmp(r, u, d * sizeof *r), "d %u: undo differs", d);
            skv_fwht(x, d);
            skv_fwht_ref(y, d);
            ck_assert_msg(!memcmp(x, y, d * sizeof *x), "d %u: the transforms differ", d);
            int was = skv_quant_set_simd(0);    /* the blocked C loop too */
            memcpy(x, u, d * sizeof *x);
            memcpy(y, u, d * sizeof *x);
            skv_fwht(x, d);
            skv_fwht_ref(y, d);
            skv_quant_set_simd(was);
            ck_assert_msg(!memcmp(x, y, d * sizeof *x), "d %u: the C loop differs", d);
        }
}
END_TEST

/* 16 bits: the rotated cache attends like the unrotated one, and both like
 * the trace (fp16 rounding of the rows only); decoding rotates back. */
START_TEST(test_16bit_same_attention)
{
    enum { L = 2, H = 4, Hkv = 2, d = 64, T = 96, S = 4 };
    skv_trace *t = synth(L, H, Hkv, d, T, 4);
    const uint64_t steps[S] = {5, 40, 77, T - 1};
    skv_qcfg q = {.k_group = d, .v_group = d, .k_mode = SKV_QMODE_ASYM,
                  .v_mode = SKV_QMODE_ASYM};
    skv_cache *c0 = quantize(t, 16, q);
    q.rotate = SKV_ROT_KEYS | SKV_ROT_VALUES;
    q.rot_seed = 3;
    skv_cache *c1 = quantize(t, 16, q);
    expect(c0->pk.cache_bytes == c1->pk.cache_bytes);  /* rotation costs no byte */
    size_t n = (size_t)L * H * S * d;
    float *o0 = malloc(n * 4), *o1 = malloc(n * 4), *ref = malloc(n * 4);
    ck_assert(o0 && o1 && ref);
    attend_all(c0, t, 0, steps, S, ref);
    attend_all(c0, t, SKV_KERNEL_SCALAR, steps, S, o0);
    attend_all(c1, t, SKV_KERNEL_SCALAR, steps, S, o1);
    double e0 = rel_l2(o0, ref, n), e1 = rel_l2(o1, ref, n), e01 = rel_l2(o1, o0, n);
    ck_assert_msg(e0 < 1e-3 && e1 < 1e-3 && e01 < 1e-3,
                  "16-bit: unrotated %g, rotated %g, between them %g", e0, e1, e01);
    /* decoded rows are the trace's rows again (fp16 rounding in the rotated basis) */
    float *k = malloc((size_t)T * d * 4), *v = malloc((size_t)T * d * 4);
    ck_assert(k && v);
    for (uint32_t l = 0; l < L; l++)
        for (uint32_t kh = 0; kh < Hkv; kh++) {
            skv_cache_dequantize_head(c1, l, kh, k, v);
            double ek = rel_l2(k, t->k[l] + (size_t)kh * T * d, (size_t)T * d);
            double ev = rel_l2(v, t->v[l] + (size_t)kh * T * d, (size_t)T * d);
            ck_assert_msg(ek < 1e-3 && ev < 1e-3, "layer %u head %u: decoded K %g V %g", l, kh,
                          ek, ev);
        }
    free(k);
    free(v);
    free(o0);
    free(o1);
    free(ref);
    skv_cache_free(c0);
    skv_cache_free(c1);
    skv_trace_free(t);
}
END_TEST

/* Outlier channels: at 2 and 3 bits, keys per token over the whole row,
 * the rotated cache's attention is closer to the exact one than the
 * unrotated cache's, at the same bytes. */
START_TEST(test_outliers_rotated_better)
{
    enum { L = 2, H = 4, Hkv = 2, d = 64, T = 128, S = 6 };
    skv_trace *t = synth(L, H, Hkv, d, T, 4);
    const uint64_t steps[S] = {10, 30, 60, 90, 110, T - 1};
    size_t n = (size_t)L * H * S * d;
    float *o = malloc(n * 4), *ref = malloc(n * 4);
    ck_assert(o && ref);
    attend_all(NULL, t, 0, steps, S, ref);
    for (uint32_t bits = 2; bits <= 3; bits++) {
        skv_qcfg q = {.k_group = d, .v_group = d, .k_mode = SKV_QMODE_ASYM,
                      .v_mode = SKV_QMODE_ASYM};
        skv_cache *c0 = quantize(t, bits, q);
        attend_all(c0, t, SKV_KERNEL_SCALAR, steps, S, o);
        double e0 = rel_l2(o, ref, n);
        q.rotate = SKV_ROT_KEYS;
        q.rot_seed = 1;
        skv_cache *c1 = quantize(t, bits, q);
        attend_all(c1, t, SKV_KERNEL_SCALAR, steps, S, o);
        double e1 = rel_l2(o, ref, n);
        printf("test_rotate: %u-bit keys, outlier channels: attention rel_l2 %.4f unrotated, "
               "%.4f rotated (%llu bytes each)\n", bits, e0, e1,
               (unsigned long long)c1->pk.cache_bytes);
        expect(c0->pk.cache_bytes == c1->pk.cache_bytes);
        ck_assert_msg(e1 < e0, "%u bits: rotated %g is not below unrotated %g", bits, e1, e0);
        skv_cache_free(c0);
        skv_cache_free(c1);
    }
    free(o);
    free(ref);
    skv_trace_free(t);
}
END_TEST

/* Keys per channel (kivi's layout) in the rotated basis: every full key
 * group decodes to exactly what the online cache's quantizer gives for
 * the rows rotated with the online cache's signs (old_sign, the rule of
 * ecgroup.c), so a file and skv-eval --rotate kivi:N hold the same keys. */
START_TEST(test_chan_keys_online_cache)
{
    enum { L = 1, H = 2, Hkv = 2, d = 64, T = 96, G = 32 };
    skv_trace *t = synth(L, H, Hkv, d, T, 4);
    const uint64_t seed = 5;
    for (uint32_t bits = 2; bits <= 4; bits++) {
        skv_qcfg q = {.k_group = d, .v_group = 32, .k_mode = SKV_QMODE_CHAN,
                      .v_mode = SKV_QMODE_ASYM, .k_tokens = G, .rotate = SKV_ROT_KEYS,
                      .rot_seed = seed};
        skv_cache *c = quantize(t, bits, q);
        for (uint32_t kh = 0; kh < Hkv; kh++) {
            const skv_cache_head *h = skv_cache_head_at(c, 0, kh);
            ck_assert_int_eq(h->n_buckets, 1);
            const skv_bucket *b = &h->buckets[0];
            expect(b->rotate == SKV_ROT_KEYS && b->rot_seed == seed && b->k_full == T);
            float *dk = calloc((size_t)T * d, 4), *src = malloc((size_t)G * d * 4);
            float *ref = malloc((size_t)G * d * 4), s[d];
            ck_assert(dk && src && ref);
            skv_bucket_dequantize(b, dk, NULL);
            for (uint32_t j = 0; j < d; j++)
                s[j] = old_sign(seed, kh, j);
            for (uint32_t g = 0; g < T / G; g++) {
                for (uint32_t r = 0; r < G; r++) {
                    const float *x = t->k[0] + ((size_t)kh * T + g * G + r) * d;
                    for (uint32_t j = 0; j < d; j++)
                        src[r * d + j] = x[j] * s[j];
                    skv_fwht(src + r * d, d);
                }
                for (uint32_t ch = 0; ch < d; ch++)
                    skv_ecg_quant_span(src + ch, ref + ch, G, d, bits);
                ck_assert_msg(!memcmp(ref, dk + (size_t)g * G * d, (size_t)G * d * 4),
                              "%u-bit head %u group %u differs from the online cache", bits,
                              kh, g);
            }
            free(dk);
            free(src);
            free(ref);
        }
        skv_cache_free(c);
    }
    skv_trace_free(t);
}
END_TEST

/* Every CPU kernel on a rotated cache (keys and values, per-token and
 * per-channel keys) against the float64 attention of the decoded rows
 * rotated back into the model's basis. */
START_TEST(test_kernels_agree)
{
    enum { L = 2, H = 4, Hkv = 2, d = 64, T = 80, S = 4 };
    skv_trace *t = synth(L, H, Hkv, d, T, 2);
    const uint64_t steps[S] = {3, 33, 64, T - 1};
    size_t n = (size_t)L * H * S * d, per = (size_t)T * d * Hkv;
    float *o = malloc(n * 4), *ref = malloc(n * 4);
    skv_trace dec = *t;
    float *dk[L], *dv[L];
    ck_assert(o && ref);
    static const int kernels[] = {SKV_KERNEL_SCALAR, SKV_KERNEL_AVX2, SKV_KERNEL_I8_SCALAR,
                                  SKV_KERNEL_I8_AVX2, SKV_KERNEL_I8_VNNI};
    for (int mode = 0; mode < 2; mode++) {
        skv_qcfg q = {.k_group = mode ? d : 32, .v_group = 32,
                      .k_mode = mode ? SKV_QMODE_CHAN : SKV_QMODE_ASYM,
                      .v_mode = SKV_QMODE_ASYM, .k_tokens = mode ? 16 : 0,
                      .rotate = SKV_ROT_KEYS | SKV_ROT_VALUES, .rot_seed = 11};
        skv_cache *c = quantize(t, 4, q);
        for (uint32_t l = 0; l < L; l++) {
            dk[l] = malloc(per * 4);
            dv[l] = malloc(per * 4);
            ck_assert(dk[l] && dv[l]);
            for (uint32_t kh = 0; kh < Hkv; kh++)
                skv_cache_dequantize_head(c, l, kh, dk[l] + kh * (size_t)T * d,
                                          dv[l] + kh * (size_t)T * d);
        }
        dec.k = dk;
        dec.v = dv;
        attend_all(NULL, &dec, 0, steps, S, ref);
        /* the int8 kernels (on 4-bit rows one int8 level of the weights, and
         * of the query against keys per token) within 15% of the rounding's
         * own error, as test_attend bounds them */
        attend_all(NULL, t, 0, steps, S, o);
        double qerr = rel_l2(ref, o, n);
        for (size_t ki = 0; ki < sizeof kernels / sizeof *kernels; ki++) {
            if (!skv_att_kernel_available(kernels[ki])) {
                printf("test_rotate: %s skipped (not on this CPU)\n",
                       skv_att_kernel_name(kernels[ki]));
                continue;
            }
            attend_all(c, t, kernels[ki], steps, S, o);
            double e = rel_l2(o, ref, n);
            double tol = kernels[ki] >= SKV_KERNEL_I8_SCALAR ? 0.15 * qerr : 1e-5;
            ck_assert_msg(e < tol, "%s keys %s: rel error %g against float64 (tolerance %g)",
                          skv_att_kernel_name(kernels[ki]), mode ? "per channel" : "per token",
                          e, tol);
        }
        for (uint32_t l = 0; l < L; l++) {
            free(dk[l]);
            free(dv[l]);
        }
        skv_cache_free(c);
    }
    free(o);
    free(ref);
    skv_trace_free(t);
}
END_TEST

/* The decoder on malformed rotation fields, and the writer's refusals. */
START_TEST(test_refused)
{
    const uint32_t d = 8, T = 4;
    float k[32], v[32];
    for (int i = 0; i < 32; i++)
        k[i] = v[i] = (float)i / 7.0f;
    uint32_t idx[4] = {0, 1, 2, 3};
    skv_qcfg q = {.head_dim = d, .k_group = d, .v_group = d, .k_mode = SKV_QMODE_ASYM,
                  .v_mode = SKV_QMODE_ASYM, .rotate = SKV_ROT_KEYS, .rot_seed = 9};
    uint64_t size = skv_pbkt_payload_bytes(&q, 4, 4);
    uint8_t *p = aligned_alloc(64, (size_t)(size + 63) / 64 * 64);
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(skv_pbkt_encode(p, size, &q, 0, 0, 4, 0, idx, 4, k, v), 0);
    skv_bucket b;
    ck_assert_msg(skv_pbkt_decode(p, size, T, &b) == 0, "%s", skv_errmsg());
    expect(b.rotate == SKV_ROT_KEYS && b.rot_seed == 9);
    static const struct { uint32_t off; uint8_t val; const char *what; } bad[] = {
        {44, 4, "unknown rotation flags 0x4"}, {47, 1, "unknown rotation flags"},
        {44, 0, "rotation seed 9 without a rotation"}, {56, 1, "reserved"}, {63, 1, "reserved"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        uint8_t *m = aligned_alloc(64, (size_t)(size + 63) / 64 * 64);
        ck_assert_ptr_nonnull(m);
        memcpy(m, p, (size_t)size);
        m[bad[i].off] = bad[i].val;
        ck_assert_msg(skv_pbkt_decode(m, size, T, &b) < 0, "case %zu accepted", i);
        ck_assert_msg(strstr(skv_errmsg(), bad[i].what), "case %zu: '%s'", i, skv_errmsg());
        free(m);
    }
    free(p);
    /* a head_dim that is not a power of two */
    skv_qcfg odd = q;
    odd.head_dim = odd.k_group = odd.v_group = 48;
    expect(skv_qcfg_check(&odd) < 0 && strstr(skv_errmsg(), "power-of-two head_dim"));
    /* the rotation without its seed's flag (seed set, rotate 0) */
    skv_qcfg ns = q;
    ns.rotate = 0;
    expect(skv_qcfg_check(&ns) < 0);
    /* centroids are not rotated */
    uint32_t cnt[1] = {2}, last[1] = {3};
    uint64_t cs = skv_cntr_payload_bytes(&q, 4, 1);
    uint8_t *cp = aligned_alloc(64, (size_t)(cs + 63) / 64 * 64);
    ck_assert_ptr_nonnull(cp);
    expect(skv_cntr_encode(cp, cs, &q, 0, 0, 4, 1, cnt, last, k, v) < 0);
    free(cp);
}
END_TEST

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "%s/skv-rotate-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR")
                                                                             : "/tmp");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    Suite *s = suite_create("rotate");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_signs_and_transform);
    tcase_add_test(tc, test_fwht_same_bits);
    tcase_add_test(tc, test_16bit_same_attention);
    tcase_add_test(tc, test_outliers_rotated_better);
    tcase_add_test(tc, test_chan_keys_online_cache);
    tcase_add_test(tc, test_kernels_agree);
    tcase_add_test(tc, test_refused);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    static const char *const files[] = {"t.skv", "c.skv"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++)
        unlink(tpath(files[i]));
    rmdir(tmpdir);
    return nf ? 1 : 0;
}
