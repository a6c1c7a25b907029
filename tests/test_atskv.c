/* test_atskv.c -- ATSKV's two-tier cache driven directly: the active set
 * stays within the budget after every selection, attention covers exactly
 * the active tokens, a passive token whose relevance rises is recalled, and
 * its rows come back from the zlib tier as the fp16 values that went in;
 * the learned relevance as the importance of the grouped layout. */
#include "smartkv.h"
#include "smartkv_atskv.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { HD = 64, N = 48, ODD = 5, ID = 42 };

static float r16(float x) { return skv_f16_to_f32(skv_f32_to_f16(x)); }

/* Attention of q over the tokens with probs > 0, from the original rows
 * rounded to fp16: the reference for the cache's output. */
static void reference(const float *q, const float *K, const float *V, const float *probs,
                      uint64_t n, float *out)
{
    double m = -INFINITY, z = 0, o[HD] = {0};
    double *s = malloc(n * sizeof *s);
    for (uint64_t j = 0; j < n; j++) {
        s[j] = -INFINITY;
        if (probs[j] <= 0)
            continue;
        double d = 0;
        for (int e = 0; e < HD; e++)
            d += (double)q[e] * r16(K[j * HD + e]);
        s[j] = d / sqrt(HD);
        if (s[j] > m)
            m = s[j];
    }
    for (uint64_t j = 0; j < n; j++)
        if (probs[j] > 0) {
            double p = exp(s[j] - m);
            z += p;
            for (int e = 0; e < HD; e++)
                o[e] += p * r16(V[j * HD + e]);
        }
    for (int e = 0; e < HD; e++)
        out[e] = (float)(o[e] / z);
    free(s);
}

START_TEST(test_two_tiers)
{
    skv_rlv_model *m = skv_rlv_model_new(1, 0);
    /* relevance grows with the occurrences of a token's id, and with the
     * attention it gets */
    m->layers[0].w[SKV_RLV_LOG_FREQ] = 4;
    m->layers[0].w[SKV_RLV_LOG_EMA] = 0.5f;
    skv_ec_cfg cfg;
    skv_ec_defaults(&cfg);
    cfg.kind = SKV_EC_ATSKV;
    cfg.rlv = m;
    cfg.alloc.budget = 0.5;
    cfg.alloc.sinks = 1;
    cfg.alloc.recent = 2;
    cfg.realloc = 4;
    skv_kv_cache *c = skv_ec_new(&cfg, 1, 1, 1, HD, N + 1);
    ck_assert_msg(c != NULL, "%s", skv_errmsg());
    ck_assert(skv_atskv_is(c));
    float *K = malloc(sizeof(float) * (N + 1) * HD), *V = malloc(sizeof(float) * (N + 1) * HD);
    uint64_t seed = 7;
    for (int i = 0; i < (N + 1) * HD; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        double u = (double)(seed >> 11) * 0x1.0p-53;
        K[i] = (float)(0.5 + u);      /* every key leans on the all-ones query */
        V[i] = (float)(u * 4 - 2);
    }
    for (int e = 0; e < HD; e++)
        K[ODD * HD + e] = -1.0f;      /* token ODD: no attention from those queries */
    float q[HD], out[HD], ref[HD], probs[N + 1];
    for (int e = 0; e < HD; e++)
        q[e] = 0.1f;
    int32_t ids[N + 1];
    for (int p = 0; p <= N; p++)
        ids[p] = p == ODD || p >= N - 12 ? ID : 100 + p;
    int was_passive = 0;
    for (uint64_t p = 0; p < N; p += 4) {
        skv_atskv_tokens(c, ids + p, 4);
        ck_assert_int_eq(c->ops->append(c, 0, p, 4, K + p * HD, V + p * HD), 0);
        for (uint32_t r = 0; r < 4; r++) {
            ck_assert_int_eq(c->ops->attend(c, 0, 0, p + r, 1, q, HD, 1.0f / sqrtf(HD), out, HD,
                                            probs, N + 1), 0);
            reference(q, K, V, probs, p + r + 1, ref);
            for (int e = 0; e < HD; e++)
                ck_assert_msg(fabsf(out[e] - ref[e]) < 1e-4f, "step %llu: %g vs %g",
                              (unsigned long long)(p + r), out[e], ref[e]);
        }
        if (p + 4 >= 12 && probs[ODD] == 0)
            was_passive = 1;
        ck_assert_int_eq(skv_ec_realloc(c), 0);
        skv_ec_stats st;
        ck_assert_int_eq(skv_ec_stats_get(c, &st), 0);
        /* the active tier within the budget once more than the protected
         * tokens fit */
        if (p + 4 >= 16)
            ck_assert_msg(st.bytes <= 0.5 * (double)st.fp16_bytes, "t=%llu: %llu > %g",
                          (unsigned long long)(p + 4), (unsigned long long)st.bytes,
                          0.5 * (double)st.fp16_bytes);
        ck_assert_uint_eq(st.hist[0] + st.hist[SKV_NBITS - 1], p + 4);
        ck_assert_uint_eq(st.passive_rows, st.hist[0]);
        ck_assert(st.passive_rows == 0 || st.passive_bytes > st.passive_rows * HD);
    }
    ck_assert_msg(was_passive, "token %d never left the active tier", ODD);
    skv_ec_stats st;
    ck_assert_int_eq(skv_ec_stats_get(c, &st), 0);
    ck_assert_msg(st.recalls >= 1, "no recall (evictions %llu)", (unsigned long long)st.evictions);
    /* the recalled token answers a query aimed at it, from its fp16 rows */
    for (int e = 0; e < HD; e++)
        q[e] = -8.0f;
    ck_assert_int_eq(c->ops->append(c, 0, N, 1, K + N * HD, V + N * HD), 0);
    ck_assert_int_eq(c->ops->attend(c, 0, 0, N, 1, q, HD, 1.0f / sqrtf(HD), out, HD, probs, N + 1), 0);
    ck_assert_msg(probs[ODD] > 0.9f, "recalled token's attention %g", probs[ODD]);
    reference(q, K, V, probs, N + 1, ref);
    for (int e = 0; e < HD; e++)
        ck_assert_msg(fabsf(out[e] - ref[e]) < 1e-4f, "%g vs %g", out[e], ref[e]);
    /* a reset empties both tiers */
    ck_assert_int_eq(c->ops->truncate(c, 0), 0);
    ck_assert_int_eq(skv_ec_stats_get(c, &st), 0);
    ck_assert_uint_eq(st.passive_rows + st.hist[SKV_NBITS - 1], 0);
    ck_assert_int_lt(c->ops->truncate(c, 3), 0);
    /* a value fp16 cannot hold is refused, named, and leaves nothing behind */
    K[2 * HD + 5] = 1e6f;
    ck_assert_int_eq(c->ops->append(c, 0, 0, 4, K, V), SKV_EFORMAT);
    ck_assert_msg(strstr(skv_errmsg(), "token 2: K value 1e+06 is not an fp16 number"), "%s",
                  skv_errmsg());
    K[2 * HD + 5] = 0.5f;
    V[HD + 1] = NAN;
    ck_assert_int_eq(c->ops->append(c, 0, 0, 4, K, V), SKV_EFORMAT);
    ck_assert_ptr_nonnull(strstr(skv_errmsg(), "token 1: V value"));
    ck_assert_int_eq(skv_ec_stats_get(c, &st), 0);
    ck_assert_uint_eq(st.passive_rows + st.hist[SKV_NBITS - 1], 0);
    V[HD + 1] = 0.25f;
    ck_assert_int_eq(c->ops->append(c, 0, 0, 4, K, V), 0);
    ck_assert_int_eq(skv_ec_stats_get(c, &st), 0);
    ck_assert_uint_eq(st.hist[SKV_NBITS - 1], 4);
    skv_kv_cache_free(c);
    /* without weights: refused */
    cfg.rlv = NULL;
    ck_assert_ptr_null(skv_ec_new(&cfg, 1, 1, 1, HD, N));
    ck_assert_ptr_nonnull(strstr(skv_errmsg(), "weights"));
    skv_rlv_model_free(m);
    free(K);
    free(V);
}
END_TEST

/* Importance atskv in the grouped layout: the learned relevance (here a
 * model on the token-frequency feature alone, the attention being uniform)
 * decides which tokens keep wide values, flipping its sign flips the
 * choice, and its state is counted in the bytes. */
static double id_width_gap(float w_freq, uint32_t imp, double budget, uint64_t *meta,
                           double *beta)
{
    enum { T = 64, BLK = 16, HEADS = 2 };
    skv_rlv_model *m = skv_rlv_model_new(1, 0);
    m->layers[0].w[SKV_RLV_LOG_FREQ] = w_freq;
    m->layers[0].bias = -2.0 * w_freq;    /* away from sigmoid's flat ends */
    skv_ec_cfg cfg;
    skv_ec_defaults(&cfg);
    cfg.layout = SKV_EC_GROUPED;
    cfg.k_layout = SKV_EC_KEYS_TOKEN;
    cfg.kv_split = 1;
    cfg.realloc = BLK;
    cfg.alloc.sinks = 0;
    cfg.alloc.width_mask = (1u << 2) | (1u << 16);
    cfg.alloc.budget = budget;
    cfg.imp_mode = imp;
    cfg.rlv = m;
    skv_kv_cache *c = skv_ec_new(&cfg, 1, HEADS, 1, HD, T);
    ck_assert_msg(c != NULL, "%s", skv_errmsg());
    float *K = malloc(sizeof(float) * T * HD), *V = malloc(sizeof(float) * T * HD);
    float q[BLK * HD], out[BLK * HD], probs[BLK * T];
    uint64_t seed = 11;
    for (int i = 0; i < T * HD; i++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        double u = (double)(seed >> 11) * 0x1.0p-53;
        K[i] = 0.25f;                 /* equal keys: uniform attention */
        V[i] = (float)(u * 4 - 2);
    }
    for (int i = 0; i < BLK * HD; i++)
        q[i] = 0.1f;
    int32_t ids[T];
    for (int p = 0; p < T; p++)
        ids[p] = p % 3 == 0 ? ID : 100 + p;
    for (uint64_t p = 0; p < T; p += BLK) {
        skv_atskv_tokens(c, ids + p, BLK);
        ck_assert_int_eq(c->ops->append(c, 0, p, BLK, K + p * HD, V + p * HD), 0);
        for (uint32_t h = 0; h < HEADS; h++)
            ck_assert_int_eq(c->ops->attend(c, 0, h, p, BLK, q, HD, 1.0f / sqrtf(HD), out, HD,
                                            probs, T), 0);
    }
    ck_assert_int_eq(skv_ec_realloc(c), 0);
    skv_ec_stats st;
    ck_assert_int_eq(skv_ec_stats_get(c, &st), 0);
    ck_assert_uint_eq(st.n_alloc, T);
    *meta = st.meta_bytes;
    *beta = (double)(st.bytes + st.meta_bytes) / (double)st.fp16_bytes;
    const uint8_t *vb = skv_ec_widths(c, 0, 0);
    ck_assert_ptr_nonnull(vb);
    double wi = 0, wo = 0;
    int ni = 0, no = 0;
    for (int p = 0; p < T; p++) {
        if (ids[p] == ID) {
            wi += vb[p];
            ni++;
        } else {
            wo += vb[p];
            no++;
        }
    }
    skv_kv_cache_free(c);
    skv_rlv_model_free(m);
    free(K);
    free(V);
    return wi / ni - wo / no;
}

START_TEST(test_grouped_importance)
{
    uint64_t meta;
    double beta;
    double up = id_width_gap(4, SKV_EC_IMP_ATSKV, 0.6, &meta, &beta);
    ck_assert_msg(up > 4, "frequent ids not kept wider: mean width gap %g", up);
    /* the state: a tracker per token and KV head, w_h . h per token and
     * layer, the token ids and counts, the weights (bias + one per feature) */
    ck_assert_uint_eq(meta, 64 * (sizeof(skv_rlv_tok) + 4 + 8) + 8 + 4 * SKV_RLV_NFEAT);
    ck_assert_msg(beta <= 0.6 + 1e-9, "beta %g over the budget", beta);
    double down = id_width_gap(-4, SKV_EC_IMP_ATSKV, 0.6, &meta, &beta);
    ck_assert_msg(down < -4, "negative weight did not flip the choice: gap %g", down);
    /* the compact tracker: the frequency feature is exact there, so the
     * same choice; its state by hand: 64 one-byte EMAs, 2 groups of 28
     * bytes, 64 ids of 4 bytes (no hidden-state term: no w_h . h), the
     * weights.  The budget is lowered by the state it saves (2184 bytes),
     * so that K and V get the same bytes and the choice still binds. */
    const double cb = 0.6 - 2184.0 / (64.0 * HD * 4);
    up = id_width_gap(4, SKV_EC_IMP_ATSKV_COMPACT, cb, &meta, &beta);
    ck_assert_msg(up > 4, "compact: frequent ids not kept wider: mean width gap %g", up);
    ck_assert_uint_eq(meta, 64 + 2 * 28 + 64 * 4 + 8 + 4 * SKV_RLV_NFEAT);
    ck_assert_msg(beta <= cb + 1e-9, "compact: beta %g over the budget", beta);
    down = id_width_gap(-4, SKV_EC_IMP_ATSKV_COMPACT, cb, &meta, &beta);
    ck_assert_msg(down < -4, "compact: negative weight did not flip the choice: gap %g", down);
    /* refused without weights, or outside the grouped layout */
    skv_ec_cfg cfg;
    skv_ec_defaults(&cfg);
    cfg.imp_mode = SKV_EC_IMP_ATSKV;
    ck_assert_int_lt(skv_ec_cfg_check(&cfg), 0);
    cfg.layout = SKV_EC_GROUPED;
    ck_assert_int_lt(skv_ec_cfg_check(&cfg), 0);
    ck_assert_ptr_nonnull(strstr(skv_errmsg(), "weights"));
}
END_TEST

/* --active-bits 4: the active rows hold 4-bit codes (per token, groups of
 * 32 channels): fewer bytes per active row by exactly the packed width, and
 * the rows the attention reads are within half a step of the fp16 ones. */
START_TEST(test_active_bits)
{
    enum { T = 16 };
    skv_rlv_model *m = skv_rlv_model_new(1, 0);
    uint64_t bytes[2];
    float outs[2][HD];
    float K[T * HD], V[T * HD], q[HD], probs[T];
    for (int i = 0; i < T * HD; i++) {
        K[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
        V[i] = (float)((i * 53) % 97) / 48.0f - 1.0f;
    }
    for (int e = 0; e < HD; e++)
        q[e] = 0.05f * (float)(e % 7);
    for (int b = 0; b < 2; b++) {
        skv_ec_cfg cfg;
        skv_ec_defaults(&cfg);
        cfg.kind = SKV_EC_ATSKV;
        cfg.rlv = m;
        cfg.alloc.budget = 1;
        cfg.active_bits = b ? 4 : 0;
        skv_kv_cache *c = skv_ec_new(&cfg, 1, 1, 1, HD, T);
        ck_assert_msg(c != NULL, "%s", skv_errmsg());
        skv_ec_hold(c, 1);
        ck_assert_int_eq(c->ops->append(c, 0, 0, T, K, V), 0);
        ck_assert_int_eq(c->ops->attend(c, 0, 0, T - 1, 1, q, HD, 1.0f / sqrtf(HD), outs[b], HD,
                                        probs, T), 0);
        skv_ec_stats st;
        ck_assert_int_eq(skv_ec_stats_get(c, &st), 0);
        ck_assert_uint_eq(st.hist[SKV_NBITS - 1], T);
        bytes[b] = st.bytes;
        skv_kv_cache_free(c);
    }
    /* per row: 4 * HD fp16 bytes against 2 * (HD / 2 + 4 * HD / 32) */
    ck_assert_uint_eq(bytes[0] - bytes[1], (uint64_t)T * (4 * HD - 2 * (HD / 2 + 4 * HD / 32)));
    double diff = 0;
    for (int e = 0; e < HD; e++)
        diff += fabs((double)outs[0][e] - outs[1][e]);
    /* a 4-bit step of a [-1, 1] group is 2/15: outputs move, but not far */
    ck_assert_msg(diff > 0 && diff / HD < 2.0 / 15, "mean |diff| %g", diff / HD);
    skv_rlv_model_free(m);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("atskv");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_two_tiers);
    tcase_add_test(tc, test_grouped_importance);
    tcase_add_test(tc, test_active_bits);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf ? 1 : 0;
}
