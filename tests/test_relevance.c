/* test_relevance.c -- ATSKV relevance: logistic regression against optima
 * known in closed form or solved here in float64, AUC, token classes, the
 * tracker, and the rlvw weights chunk. */
#include "smartkv.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const skv_logreg_opts fit_opts = {0.0, 1e-10, 50};

START_TEST(test_intercept_only)
{
    /* no features: the optimum is the log-odds of the base rate */
    uint8_t y[10] = {1, 0, 0, 1, 0, 0, 0, 1, 0, 0};
    double b = 0;
    skv_logreg_result r;
    ck_assert_int_eq(skv_logreg_fit(NULL, y, 10, 0, &fit_opts, NULL, &b, &r), 0);
    ck_assert_double_eq_tol(b, log(3.0 / 7.0), 1e-9);
    ck_assert(r.grad_norm <= 1e-10);
}
END_TEST

/* x = +1: 30 positives, 10 negatives; x = -1: 10 positives, 30 negatives
 * (x is already standardised).  The stationarity condition is
 * sigmoid(w) - 0.75 + l2 * w = 0, b = 0; without l2, w = log 3. */
static void symmetric(double *X, uint8_t *y)
{
    int k = 0;
    for (int i = 0; i < 40; i++, k++) {
        X[k] = 1;
        y[k] = i < 30;
    }
    for (int i = 0; i < 40; i++, k++) {
        X[k] = -1;
        y[k] = i < 10;
    }
}

START_TEST(test_symmetric_optimum)
{
    double X[80], w, b;
    uint8_t y[80];
    symmetric(X, y);
    skv_logreg_opts o = fit_opts;
    ck_assert_int_eq(skv_logreg_fit(X, y, 80, 1, &o, &w, &b, NULL), 0);
    ck_assert_double_eq_tol(w, log(3.0), 1e-8);
    ck_assert_double_eq_tol(b, 0, 1e-9);
    for (int li = 0; li < 3; li++) {
        o.l2 = (double[]){0.01, 0.1, 1.0}[li];
        /* bisection in float64 on the stationarity condition */
        double lo = 0, hi = 10;
        for (int it = 0; it < 200; it++) {
            double mid = 0.5 * (lo + hi);
            if (1 / (1 + exp(-mid)) - 0.75 + o.l2 * mid > 0)
                hi = mid;
            else
                lo = mid;
        }
        ck_assert_int_eq(skv_logreg_fit(X, y, 80, 1, &o, &w, &b, NULL), 0);
        ck_assert_double_eq_tol(w, 0.5 * (lo + hi), 1e-8);
        ck_assert_double_eq_tol(b, 0, 1e-9);
    }
}
END_TEST

static uint64_t rng_state = 12345;
static double urand(void)
{
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(rng_state >> 11) * 0x1.0p-53;
}

START_TEST(test_kkt_and_determinism)
{
    /* 3 features on different scales plus a constant column; labels from
     * a noisy linear rule.  At the returned solution the gradient of the
     * standardised objective, computed here, must vanish. */
    enum { N = 2000, D = 4 };
    double *X = malloc(sizeof(double) * N * D), w[D], b, w2[D], b2;
    uint8_t *y = malloc(N);
    for (int i = 0; i < N; i++) {
        double a = urand() * 2 - 1, c = 100 * urand(), e = urand() - 0.5;
        X[i * D] = a;
        X[i * D + 1] = c;
        X[i * D + 2] = e;
        X[i * D + 3] = 7;
        y[i] = 2 * a + 0.03 * (c - 50) + 0.5 * e + (urand() - 0.5) * 2 > 0;
    }
    skv_logreg_opts o = {0.01, 1e-10, 50};
    skv_logreg_result r;
    ck_assert_int_eq(skv_logreg_fit(X, y, N, D, &o, w, &b, &r), 0);
    ck_assert(r.iters >= 2 && r.iters < 20);
    ck_assert(w[3] == 0);   /* the constant column is left out */
    double mu[3] = {0}, sd[3] = {0};
    for (int j = 0; j < 3; j++) {
        for (int i = 0; i < N; i++)
            mu[j] += X[i * D + j] / N;
        for (int i = 0; i < N; i++)
            sd[j] += (X[i * D + j] - mu[j]) * (X[i * D + j] - mu[j]) / N;
        sd[j] = sqrt(sd[j]);
    }
    double g[4] = {0};
    for (int i = 0; i < N; i++) {
        double z = b;
        for (int j = 0; j < 3; j++)
            z += w[j] * X[i * D + j];
        double e = 1 / (1 + exp(-z)) - y[i];
        g[0] += e / N;
        for (int j = 0; j < 3; j++)
            g[j + 1] += e * (X[i * D + j] - mu[j]) / sd[j] / N;
    }
    for (int j = 0; j < 3; j++)
        g[j + 1] += o.l2 * w[j] * sd[j];
    for (int j = 0; j < 4; j++)
        ck_assert_msg(fabs(g[j]) < 1e-8, "gradient %d = %g", j, g[j]);
    ck_assert(w[0] > 0 && w[1] > 0 && w[2] > 0);
    /* deterministic: the same input gives bit-identical weights */
    ck_assert_int_eq(skv_logreg_fit(X, y, N, D, &o, w2, &b2, NULL), 0);
    ck_assert(memcmp(w, w2, sizeof w) == 0 && b == b2);
    /* too few steps for the tolerance: an error, not a silent result */
    o.max_iter = 1;
    o.tol = 1e-14;
    ck_assert_int_eq(skv_logreg_fit(X, y, N, D, &o, w2, &b2, NULL), SKV_ELIMIT);
    ck_assert_ptr_nonnull(strstr(skv_errmsg(), "after 1 Newton"));
    free(X);
    free(y);
}
END_TEST

START_TEST(test_auc)
{
    double s[4] = {0.1, 0.4, 0.35, 0.8};
    uint8_t y[4] = {0, 0, 1, 1};
    ck_assert_double_eq_tol(skv_auc(s, y, 4), 0.75, 1e-12);
    double t[4] = {1, 1, 1, 1};
    ck_assert_double_eq_tol(skv_auc(t, y, 4), 0.5, 1e-12);
    uint8_t one[4] = {1, 1, 1, 1};
    ck_assert(isnan(skv_auc(s, one, 4)));
    double u[5] = {5, 4, 3, 2, 1};
    uint8_t v[5] = {1, 1, 0, 0, 0};
    ck_assert_double_eq_tol(skv_auc(u, v, 5), 1.0, 1e-12);
}
END_TEST

START_TEST(test_token_class_and_tracker)
{
    ck_assert_uint_eq(skv_rlv_token_class("\n", 1), SKV_RLV_TOK_NEWLINE);
    ck_assert_uint_eq(skv_rlv_token_class(",", 1), SKV_RLV_TOK_PUNCT);
    ck_assert_uint_eq(skv_rlv_token_class(" .", 2), SKV_RLV_TOK_PUNCT);
    ck_assert_uint_eq(skv_rlv_token_class(" the", 4), 0);
    ck_assert_uint_eq(skv_rlv_token_class(".\n", 2), SKV_RLV_TOK_NEWLINE | SKV_RLV_TOK_PUNCT);
    /* two tokens, three query steps */
    skv_rlv_tok tk[3];
    float m0[1] = {1}, x0[1] = {1};
    float m1[2] = {0.25f, 0.75f}, x1[2] = {0.5f, 1.0f};
    float m2[3] = {0.5f, 0.25f, 0.25f}, x2[3] = {0.5f, 0.5f, 0.25f};
    skv_rlv_track_step(tk, 0, m0, x0);
    skv_rlv_track_step(tk, 1, m1, x1);
    skv_rlv_track_step(tk, 2, m2, x2);
    double x[SKV_RLV_NFEAT];
    skv_rlv_features(&tk[0], 0, 3, SKV_RLV_TOK_PUNCT, 2, x);
    /* ema: ((0.1 * 1) * 0.9 + 0.1 * 0.25) * 0.9 + 0.1 * 0.5 */
    ck_assert_double_eq_tol(x[SKV_RLV_EMA_MEAN], (0.09 + 0.025) * 0.9 + 0.05, 1e-6);
    ck_assert_double_eq_tol(x[SKV_RLV_LOG_MEAN], log(1.75 / 3 + 1e-6), 1e-6);
    /* hits (max >= 2/visible): step 0 (1 >= 2), no; step 1 (0.5 >= 1) no;
     * step 2 (0.5 >= 0.667) no */
    ck_assert_double_eq_tol(x[SKV_RLV_HIT_RATE], 0, 1e-12);
    ck_assert_double_eq_tol(x[SKV_RLV_LAST_HIT], log1p(2), 1e-12);
    /* column entropy of (1, 0.25, 0.5) normalised by log 3 */
    double S = 1.75, H = 0;
    for (int i = 0; i < 3; i++) {
        double p = (double[]){1, 0.25, 0.5}[i] / S;
        H -= p * log(p);
    }
    ck_assert_double_eq_tol(x[SKV_RLV_ENTROPY], H / log(3), 1e-5);
    ck_assert_double_eq_tol(x[SKV_RLV_SINK], 1, 1e-12);
    ck_assert_double_eq_tol(x[SKV_RLV_PUNCT], 1, 1e-12);
    ck_assert_double_eq_tol(x[SKV_RLV_LOG_FREQ], log(3), 1e-12);
    skv_rlv_features(&tk[1], 1, 3, 0, 0, x);
    ck_assert_double_eq_tol(x[SKV_RLV_HIT_RATE], 0.5, 1e-12); /* step 1: 1 >= 2/2 */
}
END_TEST

START_TEST(test_rlvw_roundtrip)
{
    char dir[] = "/tmp/skv-rlv-XXXXXX", path[64], cmd[96];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/w.skv", dir);
    skv_rlv_model *m = skv_rlv_model_new(2, 3), *u = NULL;
    for (uint32_t l = 0; l < 2; l++) {
        m->layers[l].bias = -1.5 + l;
        for (int f = 0; f < SKV_RLV_NFEAT; f++)
            m->layers[l].w[f] = (float)(f * 0.5 - l);
        for (int e = 0; e < 3; e++)
            m->layers[l].wh[e] = (float)(e + 10 * l);
        m->layers[l].beta = 0.75f + (float)l;
    }
    skv_stream *s = skv_open_write(path, -1);
    ck_assert_int_eq(skv_rlv_write(s, m), 0);
    ck_assert_int_eq(skv_close(s), 0);
    ck_assert_int_eq(skv_rlv_load(path, &u), 0);
    ck_assert_uint_eq(u->n_layers, 2);
    ck_assert_uint_eq(u->n_embd, 3);
    for (uint32_t l = 0; l < 2; l++) {
        ck_assert(u->layers[l].bias == m->layers[l].bias);
        ck_assert(memcmp(u->layers[l].w, m->layers[l].w, sizeof m->layers[l].w) == 0);
        ck_assert(memcmp(u->layers[l].wh, m->layers[l].wh, 3 * sizeof(float)) == 0);
        ck_assert(u->layers[l].beta == m->layers[l].beta);
    }
    float h[3] = {1, 2, 3};
    ck_assert_double_eq_tol(skv_rlv_hidden_term(u, 1, h), 10 + 22 + 36, 1e-9);
    skv_rlv_model_free(u);
    /* layer 0 of 2 only, then layer 0 twice */
    uint8_t p[24 + 4 * (SKV_RLV_NFEAT + 3)] = {0};
    p[4] = 2;
    p[8] = SKV_RLV_NFEAT;
    p[12] = 3;
    s = skv_open_write(path, -1);
    ck_assert_int_eq(skv_write(s, SKV_T_RLVW, p, sizeof p), 0);
    ck_assert_int_eq(skv_close(s), 0);
    ck_assert_int_lt(skv_rlv_load(path, &u), 0);
    ck_assert_ptr_nonnull(strstr(skv_errmsg(), "layer 1 of 2 is missing"));
    ck_assert_ptr_null(u);
    s = skv_open_write(path, -1);
    ck_assert_int_eq(skv_write(s, SKV_T_RLVW, p, sizeof p), 0);
    ck_assert_int_eq(skv_write(s, SKV_T_RLVW, p, sizeof p), 0);
    ck_assert_int_eq(skv_close(s), 0);
    ck_assert_int_lt(skv_rlv_load(path, &u), 0);
    ck_assert_ptr_nonnull(strstr(skv_errmsg(), "repeated"));
    /* chunks written before beta_l (no trailing 4 bytes) read with beta 1 */
    s = skv_open_write(path, -1);
    ck_assert_int_eq(skv_write(s, SKV_T_RLVW, p, sizeof p), 0);
    p[0] = 1;
    ck_assert_int_eq(skv_write(s, SKV_T_RLVW, p, sizeof p), 0);
    ck_assert_int_eq(skv_close(s), 0);
    ck_assert_int_eq(skv_rlv_load(path, &u), 0);
    ck_assert(u->layers[0].beta == 1.0f && u->layers[1].beta == 1.0f);
    skv_rlv_model_free(u);
    /* a beta that is not a positive number */
    uint8_t pb[sizeof p + 4];
    memcpy(pb, p, sizeof p);
    skv_put32(pb + sizeof p, 0xbf800000u); /* -1.0f */
    s = skv_open_write(path, -1);
    ck_assert_int_eq(skv_write(s, SKV_T_RLVW, pb, sizeof pb), 0);
    ck_assert_int_eq(skv_close(s), 0);
    ck_assert_int_lt(skv_rlv_load(path, &u), 0);
    ck_assert_ptr_nonnull(strstr(skv_errmsg(), "beta"));
    /* no weights at all */
    s = skv_open_write(path, -1);
    ck_assert_int_eq(skv_close(s), 0);
    ck_assert_int_lt(skv_rlv_load(path, &u), 0);
    ck_assert_ptr_nonnull(strstr(skv_errmsg(), "no relevance weights"));
    skv_rlv_model_free(m);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

/* Features at step t (queries 0..t-1 folded in) of the full and compact
 * trackers. */
static void check_compact(const skv_rlv_tok *full, const skv_rlv_tok *grp, const float *ema,
                          uint64_t t)
{
    for (uint64_t i = 0; i < t; i++) {
        double xf[SKV_RLV_NFEAT], xc[SKV_RLV_NFEAT];
        skv_rlv_features(&full[i], i, t, SKV_RLV_TOK_PUNCT, 3, xf);
        skv_rlv_features_compact(grp, ema, i, t, SKV_RLV_TOK_PUNCT, 3, xc);
        /* the 8-bit log code: within 2^(1/32) - 1 = 2.2% */
        double e = xf[SKV_RLV_EMA_MEAN];
        ck_assert_msg(fabs(xc[SKV_RLV_EMA_MEAN] - e) <= 0.0219 * e, "token %llu ema %g vs %g",
                      (unsigned long long)i, xc[SKV_RLV_EMA_MEAN], e);
        ck_assert_double_eq_tol(xc[SKV_RLV_LOG_EMA], xf[SKV_RLV_LOG_EMA], 0.0222);
        ck_assert_msg(fabs(xc[SKV_RLV_EMA_MAX] - xf[SKV_RLV_EMA_MAX]) <=
                          0.0219 * xf[SKV_RLV_EMA_MAX] + 1e-6,
                      "token %llu ema max %g vs %g", (unsigned long long)i,
                      xc[SKV_RLV_EMA_MAX], xf[SKV_RLV_EMA_MAX]);
        for (int f = SKV_RLV_REL_POS; f < SKV_RLV_NFEAT; f++)
            ck_assert(xc[f] == xf[f]);
        /* the group's mean token, by hand from the full trackers */
        uint64_t g0 = i / 32 * 32, end = g0 + 32 < t ? g0 + 32 : t;
        double acc = 0, hits = 0, seen = 0;
        uint32_t last = 0;
        for (uint64_t j = g0; j < end; j++) {
            acc += full[j].acc_mean;
            hits += full[j].hits;
            seen += (double)(t - j);
            last = full[j].last_hit > last ? full[j].last_hit : last;
        }
        ck_assert_double_eq_tol(xc[SKV_RLV_LOG_MEAN], log(acc / seen + 1e-6), 1e-5);
        ck_assert_double_eq_tol(xc[SKV_RLV_HIT_RATE], hits / seen, 1e-6);
        ck_assert_double_eq_tol(xc[SKV_RLV_LAST_HIT], log1p((double)(t - 1 - last)), 1e-12);
    }
}

/* The compact tracker against the full one on the same random attention
 * stream: its group sums are the sums of the full trackers' fields, its
 * EMA features within the 8-bit log step, the others the group's mean
 * token, the position and token features exact.  Its bytes, by hand. */
START_TEST(test_compact_tracker)
{
    enum { T = 70 };    /* groups of 32, 32 and 6 tokens */
    skv_rlv_tok full[T], grp[T / SKV_RLV_GROUP + 1];
    float ema[T], mean[T], mx[T];
    uint64_t st = 99;
    for (uint64_t s = 0; s < T; s++) {
        double z = 0;
        for (uint64_t i = 0; i <= s; i++) {
            st = st * 6364136223846793005ull + 1442695040888963407ull;
            mean[i] = (float)exp(4.0 * (double)(st >> 11) * 0x1.0p-53);
            z += mean[i];
        }
        for (uint64_t i = 0; i <= s; i++) {
            mean[i] = (float)(mean[i] / z);
            mx[i] = 2 * mean[i];    /* the same max/mean ratio for every token */
        }
        skv_rlv_track_step(full, s, mean, mx);
        skv_rlv_track_step_compact(grp, ema, s, mean, mx);
        if (s + 1 == 40 || s + 1 == T)
            check_compact(full, grp, ema, s + 1);
    }
    for (uint32_t g = 0; g * SKV_RLV_GROUP < T; g++) {
        double f[6] = {0};
        uint32_t last = 0;
        for (uint32_t i = g * SKV_RLV_GROUP; i < T && i < (g + 1) * SKV_RLV_GROUP; i++) {
            f[0] += full[i].ema_mean;
            f[1] += full[i].ema_max;
            f[2] += full[i].acc_mean;
            f[3] += full[i].acc_max;
            f[4] += full[i].plogp;
            f[5] += full[i].hits;
            last = full[i].last_hit > last ? full[i].last_hit : last;
        }
        const skv_rlv_tok *c = &grp[g];
        const double got[6] = {c->ema_mean, c->ema_max, c->acc_mean, c->acc_max, c->plogp, c->hits};
        for (int k = 0; k < 6; k++)
            ck_assert_msg(fabs(got[k] - f[k]) <= 1e-5 * (1 + fabs(f[k])), "group %u field %d: %g "
                          "vs %g", g, k, got[k], f[k]);
        ck_assert_uint_eq(c->last_hit, last);
    }
    /* bytes of 70 tokens: 70 one-byte EMAs, 3 groups of 28 bytes */
    ck_assert_uint_eq(sizeof(skv_rlv_tok), 28);
    ck_assert_uint_eq(skv_rlv_compact_bytes(70), 70 + 3 * 28);
    ck_assert_uint_eq(skv_rlv_compact_bytes(64), 64 + 2 * 28);
    ck_assert_uint_eq(skv_rlv_compact_bytes(0), 0);
}
END_TEST

/* beta_l on a hand-made selection: one KV head, one step of 44 tokens; the
 * sinks (0-3) and recent tokens (12-43) are kept, K = floor(0.884 * 44) = 38
 * leaves 2 of the free tokens 4..11 (r .1 .2 .3 .4 .5 .5 .5 .9).  q = 0.116
 * puts quantile(r, q) at r = .5: at beta 1 only the .9 is above tau and the
 * mass of token 8 (r .5) is lost; at 2^(-1/4) = 0.84 tau is 0.42 and tokens
 * 11 and 8 are kept (recall 1), as at every smaller scale: the fit is the one
 * nearest 1, 2^(-1/4).  With distinct r and the mass on the top two, beta 1
 * is already best and stays. */
START_TEST(test_fit_beta)
{
    enum { N = 44 };
    double r[N];
    float fut[N] = {0};
    const double fr[8] = {.1, .2, .3, .4, .5, .5, .5, .9};
    for (int i = 0; i < N; i++)
        r[i] = i >= 4 && i < 12 ? fr[i - 4] : 0.95;
    fut[8] = fut[11] = 1;
    uint64_t t = N, off = 0;
    skv_rlv_sel S = {.n_heads = 1, .n_steps = 1, .t = &t, .off = &off, .r = r, .fut = fut};
    ck_assert_double_eq_tol(skv_rlv_sel_recall(&S, 0.884, 1.0), 0.5, 1e-12);
    ck_assert_double_eq_tol(skv_rlv_sel_recall(&S, 0.884, exp2(-0.25)), 1.0, 1e-12);
    ck_assert_double_eq_tol(skv_rlv_sel_recall(&S, 0.884, 2.0), 0.0, 1e-12);
    double rec = 0;
    ck_assert_double_eq_tol(skv_rlv_fit_beta(&S, 0.884, &rec), exp2(-0.25), 1e-12);
    ck_assert_double_eq_tol(rec, 1.0, 1e-12);
    for (int i = 4; i < 12; i++)
        r[i] = 0.1 * (i - 3);
    fut[8] = 0;
    fut[10] = 1;
    ck_assert_double_eq_tol(skv_rlv_fit_beta(&S, 0.884, &rec), 1.0, 1e-12);
    ck_assert_double_eq_tol(rec, 1.0, 1e-12);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("relevance");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_intercept_only);
    tcase_add_test(tc, test_symmetric_optimum);
    tcase_add_test(tc, test_kkt_and_determinism);
    tcase_add_test(tc, test_auc);
    tcase_add_test(tc, test_token_class_and_tracker);
    tcase_add_test(tc, test_rlvw_roundtrip);
    tcase_add_test(tc, test_compact_tracker);
    tcase_add_test(tc, test_fit_beta);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf ? 1 : 0;
}
