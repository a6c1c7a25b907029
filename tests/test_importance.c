/* test_importance.c -- importance modes against a brute-force float64 replay. */
#include "smartkv.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_state;
static double urand(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return ((rng_state >> 11) + 0.5) / 9007199254740992.0;
}
static double nrand(void)
{
    return sqrt(-2 * log(urand())) * cos(6.283185307179586 * urand());
}

typedef struct {
    skv_trace_hdr h;
    skv_layer L;
} small_trace;

static void make_trace(small_trace *s, uint32_t nh, uint32_t nkv, uint32_t d, uint64_t T,
                       uint64_t P, double scale, uint64_t seed)
{
    memset(s, 0, sizeof *s);
    s->h.n_layers = 1;
    s->h.n_heads = nh;
    s->h.n_kv_heads = nkv;
    s->h.head_dim = d;
    s->h.n_tokens = T;
    s->h.n_prefill = P;
    s->h.dtype = SKV_F32;
    rng_state = seed * 2654435761u + 1;
    s->L.q = malloc(sizeof(float) * nh * T * d);
    s->L.k = malloc(sizeof(float) * nkv * T * d);
    s->L.v = malloc(sizeof(float) * nkv * T * d);
    for (size_t i = 0; i < (size_t)nh * T * d; i++)
        s->L.q[i] = (float)(nrand() * scale);
    for (size_t i = 0; i < (size_t)nkv * T * d; i++) {
        s->L.k[i] = (float)(nrand() * scale);
        s->L.v[i] = (float)nrand();
    }
}

static void free_trace(small_trace *s)
{
    skv_layer_free(&s->L);
}

/* Folded attention a_t[j] of KV head h (mean over its query heads), float64. */
static void brute_attn(const small_trace *s, uint32_t h, uint64_t t, double *a, double *ent)
{
    uint32_t d = s->h.head_dim, G = s->h.n_heads / s->h.n_kv_heads;
    uint64_t T = s->h.n_tokens;
    double *sc = malloc(sizeof(double) * (t + 1));
    for (uint64_t j = 0; j < T; j++)
        a[j] = 0;
    *ent = 0;
    for (uint32_t g = 0; g < G; g++) {
        const float *q = s->L.q + ((size_t)(h * G + g) * T + t) * d;
        double m = -INFINITY, z = 0;
        for (uint64_t j = 0; j <= t; j++) {
            const float *k = s->L.k + ((size_t)h * T + j) * d;
            double dot = 0;
            for (uint32_t c = 0; c < d; c++)
                dot += (double)q[c] * k[c];
            sc[j] = dot / sqrt((double)d);
            if (sc[j] > m)
                m = sc[j];
        }
        for (uint64_t j = 0; j <= t; j++)
            z += exp(sc[j] - m);
        for (uint64_t j = 0; j <= t; j++) {
            double p = exp(sc[j] - m) / z;
            a[j] += p / G;
            if (p > 0)
                *ent -= p * log(p) / G;
        }
    }
    free(sc);
}

/* Reference importance of every KV head for a mode, float64, written
 * independently of the library's weight formulas (ema stepwise). */
static void brute_importance(const small_trace *s, const skv_imp_cfg *c, double *imp,
                             double *entropy)
{
    uint64_t T = s->h.n_tokens, P = s->h.n_prefill;
    uint64_t R = c->realloc;
    uint64_t S = P + (T - P) / R * R;
    uint64_t qa = 0, qb = S;
    if (c->mode == SKV_IMP_WINDOW)
        qa = S > c->window ? S - c->window : 0;
    if (c->mode == SKV_IMP_ORACLE) {
        qa = (P == 0 || P >= T) ? 0 : P;
        qb = T;
    }
    /* entropy is averaged over the queries the library replays */
    uint64_t ea, eb;
    skv_imp_query_range(c, T, P, &ea, &eb);
    double *a = malloc(sizeof(double) * T);
    for (uint32_t h = 0; h < s->h.n_kv_heads; h++) {
        double *I = imp + (size_t)h * T;
        double esum = 0, en = 0;
        for (uint64_t j = 0; j < T; j++)
            I[j] = 0;
        uint64_t t_start = c->mode == SKV_IMP_EMA ? 0 : qa;
        for (uint64_t t = t_start; t < qb; t++) {
            double e;
            brute_attn(s, h, t, a, &e);
            if (c->mode == SKV_IMP_EMA) {
                for (uint64_t j = 0; j < T; j++)
                    I[j] = c->decay * I[j] + (1 - c->decay) * a[j];
            } else {
                for (uint64_t j = 0; j < T; j++)
                    I[j] += a[j];
            }
            if (t >= ea && t < eb) {
                esum += e;
                en += 1;
            }
        }
        if (c->mode == SKV_IMP_NORMALIZED)
            for (uint64_t j = 0; j < T; j++)
                I[j] = j < S ? I[j] / (double)(S - j) : 0;
        if (entropy)
            entropy[h] = en > 0 ? esum / en : 0;
    }
    free(a);
}

static void compare(const small_trace *s, const skv_imp_cfg *c, const char *what)
{
    uint64_t T = s->h.n_tokens;
    uint32_t H = s->h.n_kv_heads;
    float *imp = malloc(sizeof(float) * H * T);
    float ent[16];
    double *ref = malloc(sizeof(double) * H * T);
    double rent[16];
    int rc = skv_importance_layer(c, &s->h, &s->L, imp, ent);
    ck_assert_msg(rc == 0, "%s: %s", what, skv_errmsg());
    brute_importance(s, c, ref, rent);
    double mx = 0;
    for (size_t i = 0; i < (size_t)H * T; i++)
        mx = fmax(mx, ref[i]);
    for (size_t i = 0; i < (size_t)H * T; i++) {
        double tol = 2e-4 * fabs(ref[i]) + 1e-6 * mx + 1e-30;
        ck_assert_msg(fabs(imp[i] - ref[i]) <= tol,
                      "%s: T=%llu kv head %zu token %zu: got %.9g want %.9g", what,
                      (unsigned long long)T, i / T, i % T, (double)imp[i], ref[i]);
    }
    for (uint32_t h = 0; h < H; h++)
        ck_assert_msg(fabs(ent[h] - rent[h]) <= 1e-4 * fabs(rent[h]) + 1e-5,
                      "%s: entropy of kv head %u: got %g want %g", what, h, (double)ent[h],
                      rent[h]);
    free(imp);
    free(ref);
}

static const struct {
    uint32_t nh, nkv, d;
    uint64_t T, P;
} shapes[] = {
    {2, 1, 8, 1, 0},    {4, 2, 20, 5, 3},    {6, 2, 64, 70, 40},  {3, 3, 13, 33, 33},
    {8, 2, 32, 133, 0}, {4, 1, 24, 100, 40}, {2, 2, 17, 48, 16},
};

static void all_shapes(uint32_t mode, uint32_t threads)
{
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        small_trace s;
        make_trace(&s, shapes[i].nh, shapes[i].nkv, shapes[i].d, shapes[i].T, shapes[i].P,
                   1.6, 100 + i);
        skv_imp_cfg c;
        skv_imp_defaults(&c);
        c.mode = mode;
        c.threads = threads;
        c.window = 7;
        char what[96];
        snprintf(what, sizeof what, "%s threads=%u shape %zu", skv_imp_mode_name(mode),
                 threads, i);
        compare(&s, &c, what);
        c.realloc = 1;
        c.decay = 0.5;
        compare(&s, &c, what);
        free_trace(&s);
    }
}

START_TEST(test_ema) { all_shapes(SKV_IMP_EMA, 1); all_shapes(SKV_IMP_EMA, 3); }
END_TEST
START_TEST(test_cumulative) { all_shapes(SKV_IMP_CUMULATIVE, 2); }
END_TEST
START_TEST(test_normalized) { all_shapes(SKV_IMP_NORMALIZED, 2); }
END_TEST
START_TEST(test_window) { all_shapes(SKV_IMP_WINDOW, 2); }
END_TEST
START_TEST(test_oracle) { all_shapes(SKV_IMP_ORACLE, 2); }
END_TEST

/* Long enough that EMA weights underflow and the replay stops early, and
 * that a query block spans several key tiles. */
START_TEST(test_long_ema)
{
    small_trace s;
    make_trace(&s, 2, 1, 16, 1100, 500, 1.0, 7);
    skv_imp_cfg c;
    skv_imp_defaults(&c);
    c.decay = 0.3;
    uint64_t t0, t1;
    skv_imp_query_range(&c, 1100, 500, &t0, &t1);
    ck_assert_uint_gt(t0, 0);
    ck_assert_uint_eq(t1, 500 + 592);
    compare(&s, &c, "long ema");
    free_trace(&s);
}
END_TEST

START_TEST(test_snapshot)
{
    skv_imp_cfg c;
    skv_imp_defaults(&c);
    /* after the prefill, then every R decode steps */
    ck_assert_uint_eq(skv_imp_snapshot(&c, 100, 40), 88);
    ck_assert_uint_eq(skv_imp_snapshot(&c, 100, 0), 96);
    ck_assert_uint_eq(skv_imp_snapshot(&c, 15, 0), 0);
    ck_assert_uint_eq(skv_imp_snapshot(&c, 40, 40), 40);
    c.realloc = 1;
    ck_assert_uint_eq(skv_imp_snapshot(&c, 100, 40), 100);

    /* ema at R=16 equals a float64 EMA stopped at the snapshot, tokens after
     * it are 0, and it differs from the EMA over every step */
    small_trace s;
    make_trace(&s, 2, 1, 8, 100, 40, 1.5, 3);
    skv_imp_defaults(&c);
    float imp16[100], imp1[100];
    ck_assert_int_eq(skv_importance_layer(&c, &s.h, &s.L, imp16, NULL), 0);
    compare(&s, &c, "snapshot R=16");
    for (int j = 88; j < 100; j++)
        ck_assert_float_eq(imp16[j], 0.0f);
    c.realloc = 1;
    ck_assert_int_eq(skv_importance_layer(&c, &s.h, &s.L, imp1, NULL), 0);
    double diff = 0;
    for (int j = 0; j < 100; j++)
        diff += fabs(imp16[j] - imp1[j]);
    ck_assert(diff > 1e-3);
    /* stepping the EMA by hand from the R=16 snapshot reproduces R=1 */
    c.realloc = 16;
    double a[100], ent, I[100];
    for (int j = 0; j < 100; j++)
        I[j] = imp16[j];
    for (uint64_t t = 88; t < 100; t++) {
        brute_attn(&s, 0, t, a, &ent);
        for (int j = 0; j < 100; j++)
            I[j] = c.decay * I[j] + (1 - c.decay) * a[j];
    }
    for (int j = 0; j < 100; j++)
        ck_assert_msg(fabs(I[j] - imp1[j]) <= 1e-4 * fabs(imp1[j]) + 1e-7, "token %d", j);
    free_trace(&s);
}
END_TEST

/* GQA: two query heads share one KV head, one looks only at token 0, the
 * other sees every key alike: the folded importance is their mean. */
START_TEST(test_gqa_fold)
{
    small_trace s;
    const uint64_t T = 20;
    make_trace(&s, 2, 1, 4, T, 0, 0, 1);
    for (uint64_t j = 0; j < T; j++) {
        float *k = s.L.k + j * 4;
        memset(k, 0, 16);
        if (j == 0)
            k[0] = 10;
        float *q0 = s.L.q + j * 4, *q1 = s.L.q + (T + j) * 4;
        memset(q0, 0, 16);
        memset(q1, 0, 16);
        q0[0] = 10; /* score 50 on token 0, 0 elsewhere */
    }
    skv_imp_cfg c;
    skv_imp_defaults(&c);
    c.mode = SKV_IMP_CUMULATIVE;
    c.realloc = 1;
    float imp[20];
    ck_assert_int_eq(skv_importance_layer(&c, &s.h, &s.L, imp, NULL), 0);
    for (uint64_t j = 0; j < T; j++) {
        double want = 0;
        for (uint64_t t = j; t < T; t++)
            want += 0.5 * (j == 0 ? 1.0 : 0.0) + 0.5 / (double)(t + 1);
        if (j > 0) /* head 0's leftover exp(-50) mass is below float precision */
            ck_assert_msg(fabs(imp[j] - want) < 1e-5, "token %llu: %g vs %g",
                          (unsigned long long)j, (double)imp[j], want);
        else
            ck_assert_msg(fabs(imp[j] - want) < 1e-4 * want, "token 0: %g vs %g",
                          (double)imp[j], want);
    }
    /* per-step mass: cumulative importance sums to the number of queries */
    double tot = 0;
    for (uint64_t j = 0; j < T; j++)
        tot += imp[j];
    ck_assert(fabs(tot - (double)T) < 1e-4);
    free_trace(&s);
}
END_TEST

START_TEST(test_flags_and_errors)
{
    small_trace s;
    make_trace(&s, 4, 2, 24, 50, 10, 1.0, 9);
    skv_imp_cfg c;
    skv_imp_defaults(&c);
    float imp[100];
    c.flags = SKV_IMP_F_OUTPUT;
    ck_assert_int_eq(skv_importance_layer(&c, &s.h, &s.L, imp, NULL), 0);
    compare(&s, &c, "with outputs");
    c.flags = SKV_IMP_F_NO_TRACK;
    ck_assert_int_eq(skv_importance_layer(&c, &s.h, &s.L, imp, NULL), 0);
    for (int i = 0; i < 100; i++)
        ck_assert_float_eq(imp[i], 0.0f);
    c.flags = 0;
    c.decay = 1.0;
    ck_assert_int_eq(skv_importance_layer(&c, &s.h, &s.L, imp, NULL), SKV_EINVAL);
    c.decay = 0.9;
    c.realloc = 0;
    ck_assert_int_eq(skv_importance_layer(&c, &s.h, &s.L, imp, NULL), SKV_EINVAL);
    c.realloc = 16;
    s.L.k[5] = NAN;
    ck_assert_int_eq(skv_importance_layer(&c, &s.h, &s.L, imp, NULL), SKV_EFORMAT);
    ck_assert(strstr(skv_errmsg(), "non-finite") != NULL);
    ck_assert_int_eq(skv_imp_mode_parse("oracle"), SKV_IMP_ORACLE);
    ck_assert_int_lt(skv_imp_mode_parse("bogus"), 0);
    free_trace(&s);
}
END_TEST

START_TEST(test_share_layers)
{
    float imp[2 * 3 * 4];
    for (int i = 0; i < 24; i++)
        imp[i] = (float)i;
    skv_importance_share_layers(imp, 2, 3, 4);
    for (int i = 0; i < 12; i++) {
        ck_assert_float_eq(imp[i], (float)(i + i + 12));
        ck_assert_float_eq(imp[12 + i], (float)(i + i + 12));
    }
}
END_TEST

int main(void)
{
    Suite *su = suite_create("importance");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_ema);
    tcase_add_test(tc, test_cumulative);
    tcase_add_test(tc, test_normalized);
    tcase_add_test(tc, test_window);
    tcase_add_test(tc, test_oracle);
    tcase_add_test(tc, test_long_ema);
    tcase_add_test(tc, test_snapshot);
    tcase_add_test(tc, test_gqa_fold);
    tcase_add_test(tc, test_flags_and_errors);
    tcase_add_test(tc, test_share_layers);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf != 0;
}
