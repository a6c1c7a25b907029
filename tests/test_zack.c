/* test_zack.c -- ZACK (lib/eval/zack.c): principal components of small sets
 * worked by hand, the projection error equal to the discarded eigenvalues'
 * sum, a rank-1 cache reproduced exactly at rank 1, the cache's rows
 * against a float64 projection, its bytes by hand, the rank from the
 * budget, and the calibration of the real model (skipped without it). */
#include "smartkv.h"
#include "model_path.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static float h16(double x) { return skv_f16_to_f32(skv_f32_to_f16((float)x)); }

/* Rows (2,0), (-2,0), (0,1), (0,-1): mean 0, covariance diag(2, 0.5);
 * rank 1 keeps the first axis and loses the second's 0.5 per row. */
START_TEST(test_fit_hand)
{
    const float x[8] = {2, 0, -2, 0, 0, 1, 0, -1};
    double mean[2], vec[4], eig[2];
    ck_assert_int_eq(skv_zack_fit(x, 4, 2, mean, vec, eig), 0);
    ck_assert(fabs(mean[0]) < 1e-15 && fabs(mean[1]) < 1e-15);
    ck_assert(fabs(eig[0] - 2) < 1e-12);
    ck_assert(fabs(eig[1] - 0.5) < 1e-12);
    ck_assert(fabs(fabs(vec[0]) - 1) < 1e-12 && fabs(vec[1]) < 1e-12);
    ck_assert(fabs(vec[2]) < 1e-12 && fabs(fabs(vec[3]) - 1) < 1e-12);
    /* rank-1 error per row: the second coordinate's square, mean 0.5 */
    double err = 0;
    for (int t = 0; t < 4; t++) {
        double c = vec[0] * x[2 * t] + vec[1] * x[2 * t + 1];
        for (int i = 0; i < 2; i++) {
            double e = x[2 * t + i] - c * vec[i];
            err += e * e;
        }
    }
    ck_assert(fabs(err / 4 - eig[1]) < 1e-12);
}
END_TEST

/* Rows mu + a u, u = (1/2, 1/2, 1/2, 1/2), a in {-3, -1, 1, 3}: one
 * eigenvalue var(a) = 5, the others 0, the first component +-u. */
START_TEST(test_fit_rank1)
{
    const float mu[4] = {1, 2, 3, 4}, a[4] = {-3, -1, 1, 3};
    float x[16];
    for (int t = 0; t < 4; t++)
        for (int i = 0; i < 4; i++)
            x[4 * t + i] = mu[i] + a[t] * 0.5f;
    double mean[4], vec[16], eig[4];
    ck_assert_int_eq(skv_zack_fit(x, 4, 4, mean, vec, eig), 0);
    for (int i = 0; i < 4; i++) {
        ck_assert(fabs(mean[i] - mu[i]) < 1e-12);
        ck_assert(fabs(fabs(vec[i]) - 0.5) < 1e-12);
    }
    ck_assert(fabs(eig[0] - 5) < 1e-12);
    for (int j = 1; j < 4; j++)
        ck_assert(fabs(eig[j]) < 1e-12);
}
END_TEST

static uint64_t rng = 88172645463325252ull;
static double urand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) / 9007199254740992.0;
}

/* n fp16-valued rows of d with a decaying spectrum (scale 2^-j/2 along
 * axis j, then mixed by a few Givens rotations) and an offset */
static void aniso_rows(float *x, uint64_t n, uint32_t d)
{
    for (uint64_t t = 0; t < n; t++) {
        double y[64];
        for (uint32_t j = 0; j < d; j++)
            y[j] = (urand() * 2 - 1) * pow(2, -(double)j / 2) * 3;
        for (uint32_t j = 0; j + 1 < d; j++) {
            double c = cos(0.3 + j), s = sin(0.3 + j), p = y[j], q = y[j + 1];
            y[j] = c * p - s * q;
            y[j + 1] = s * p + c * q;
        }
        for (uint32_t j = 0; j < d; j++)
            x[t * d + j] = h16(y[j] + 0.25 * j);
    }
}

/* The identity behind the baseline: mean squared error of the rank-r
 * projection = sum of the discarded eigenvalues, every r (float64). */
START_TEST(test_fit_discarded)
{
    enum { N = 300, D = 12 };
    static float x[N * D];
    aniso_rows(x, N, D);
    double mean[D], vec[D * D], eig[D];
    ck_assert_int_eq(skv_zack_fit(x, N, D, mean, vec, eig), 0);
    for (uint32_t j = 1; j < D; j++)
        ck_assert(eig[j] <= eig[j - 1]);
    for (uint32_t r = 0; r <= D; r++) {
        double err = 0, tail = 0;
        for (uint32_t j = r; j < D; j++)
            tail += eig[j];
        for (uint32_t t = 0; t < N; t++) {
            double y[D], p[D] = {0};
            for (uint32_t i = 0; i < D; i++)
                y[i] = x[t * D + i] - mean[i];
            for (uint32_t j = 0; j < r; j++) {
                double c = 0;
                for (uint32_t i = 0; i < D; i++)
                    c += vec[j * D + i] * y[i];
                for (uint32_t i = 0; i < D; i++)
                    p[i] += c * vec[j * D + i];
            }
            for (uint32_t i = 0; i < D; i++)
                err += (y[i] - p[i]) * (y[i] - p[i]);
        }
        err /= N;
        ck_assert_msg(fabs(err - tail) <= 1e-9 * (eig[0] + 1), "rank %u: error %.12g, discarded "
                      "eigenvalues %.12g", r, err, tail);
    }
}
END_TEST

/* A basis for 1 layer x 1 KV head from K rows xk and V rows xv, stored at
 * fp16 as skv_zack_calibrate does. */
static skv_zack_basis *basis_of(const float *xk, const float *xv, uint64_t n, uint32_t d)
{
    skv_zack_basis *b = calloc(1, sizeof *b);
    ck_assert_ptr_nonnull(b);
    b->n_layers = b->n_kv_heads = 1;
    b->head_dim = d;
    b->n_tokens = n;
    b->mean = malloc(2 * d * sizeof(float));
    b->vec = malloc(2 * (size_t)d * d * sizeof(float));
    b->eig = malloc(2 * d * sizeof(double));
    double *mean = malloc(d * sizeof(double)), *vec = malloc((size_t)d * d * sizeof(double));
    ck_assert(b->mean && b->vec && b->eig && mean && vec);
    for (int u = 0; u < 2; u++) {
        ck_assert_int_eq(skv_zack_fit(u ? xv : xk, n, d, mean, vec, b->eig + u * d), 0);
        for (uint32_t i = 0; i < d; i++)
            b->mean[u * d + i] = h16(mean[i]);
        for (uint32_t i = 0; i < d * d; i++)
            b->vec[(size_t)u * d * d + i] = h16(vec[i]);
    }
    free(mean);
    free(vec);
    return b;
}

static skv_ec_cfg zcfg(const skv_zack_basis *b, double beta, uint32_t sinks, uint32_t recent,
                       uint32_t R)
{
    skv_ec_cfg c;
    skv_ec_defaults(&c);
    c.kind = SKV_EC_ZACK;
    c.zack = b;
    c.alloc.budget = beta;
    c.alloc.sinks = sinks;
    c.alloc.recent = recent;
    c.realloc = R;
    c.kernel = SKV_KERNEL_SCALAR;
    return c;
}

/* d = 8, capacity 16, no sinks, no recent window, R = 4: at most 4 fp16
 * rows at capacity, so rank r costs 8 + 4*8*4 + 12*4r + 8*4r + 4*8 =
 * 168 + 80 r bytes of 512 (beta x 4 d x 16). */
START_TEST(test_rank_budget)
{
    skv_ec_cfg c = zcfg(NULL, 0.5, 0, 0, 4);
    int raised = -1;
    ck_assert_uint_eq(skv_zack_rank(&c, 8, 16, &raised), 1);   /* 256: 248 fits, 328 not */
    ck_assert_int_eq(raised, 0);
    c.alloc.budget = 0.4;                                      /* 204.8 < 248 */
    ck_assert_uint_eq(skv_zack_rank(&c, 8, 16, &raised), 1);
    ck_assert_int_eq(raised, 1);
    c.alloc.budget = 1;                                        /* 512: r = 4 (488) */
    ck_assert_uint_eq(skv_zack_rank(&c, 8, 16, &raised), 4);
    c.alloc.budget = 100;                                      /* never above d */
    ck_assert_uint_eq(skv_zack_rank(&c, 8, 16, &raised), 8);
}
END_TEST

/* K = mu + a u and V = nu + b w (u, w unit, fp16-exact): a rank-1 cache
 * gives back every row exactly at rank 1; bytes by hand. */
START_TEST(test_cache_rank1_exact)
{
    enum { D = 8, N = 16 };
    float k[N * D], v[N * D];
    for (int t = 0; t < N; t++)
        for (int i = 0; i < D; i++) {
            float a = (float)(t - 7.5) * 2;    /* mean 0: the mean is mu exactly */
            k[t * D + i] = (float)(i + 1) + (i < 4 ? a * 0.5f : 0);
            v[t * D + i] = (float)-i + (i >= 4 ? (float)(t % 2 ? 3 : -3) * 0.5f : 0);
        }
    skv_zack_basis *b = basis_of(k, v, N, D);
    skv_ec_cfg c = zcfg(b, 0.5, 0, 0, 4);
    skv_kv_cache *kc = skv_ec_new(&c, 1, 2, 1, D, N);
    ck_assert_msg(kc != NULL, "%s", skv_errmsg());
    ck_assert_int_eq(kc->ops->append(kc, 0, 0, N, k, v), 0);
    ck_assert_int_eq(skv_ec_realloc(kc), 0);
    const float *rk, *rv;
    ck_assert_uint_eq(skv_zack_rows(kc, 0, 0, &rk, &rv), N);
    for (int i = 0; i < N * D; i++) {
        ck_assert_msg(rk[i] == k[i], "K %d: %g vs %g", i, rk[i], k[i]);
        ck_assert_msg(rv[i] == v[i], "V %d: %g vs %g", i, rv[i], v[i]);
    }
    skv_ec_stats s;
    ck_assert_int_eq(skv_ec_stats_get(kc, &s), 0);
    ck_assert_uint_eq(s.n_alloc, N);
    ck_assert_uint_eq(s.fp16_bytes, 512);
    ck_assert_uint_eq(s.bytes, 8 + 4 * 1 * N + 4 * D * 1 + 4 * D);   /* 136 */
    ck_assert_uint_eq(s.n_realloc, 1);
    skv_kv_cache_free(kc);
    skv_zack_basis_free(b);
}
END_TEST

/* Calibrated on one set, applied to another: sinks and the recent window
 * stay bit-exact, every other row equals a float64 projection with the
 * fp16 coefficients; applied to the calibration rows themselves (no sinks,
 * no window), the cache's mean squared error is the discarded eigenvalues'
 * sum (to 1%: the fp16 basis and coefficients). */
START_TEST(test_cache_vs_f64)
{
    enum { D = 16, N = 256, S = 2, W = 8, R = 8 };
    static float ck[N * D], cv[N * D], k[N * D], v[N * D];
    aniso_rows(ck, N, D);
    aniso_rows(cv, N, D);
    skv_zack_basis *b = basis_of(ck, cv, N, D);
    for (int pass = 0; pass < 2; pass++) {
        /* the second pass projects every row: the identity holds over all */
        const uint32_t s0 = pass ? 0 : S, w0 = pass ? 0 : W;
        skv_ec_cfg c = zcfg(b, 0.45, s0, w0, R);
        int raised;
        const uint32_t r = skv_zack_rank(&c, D, N, &raised);
        ck_assert(r > 1 && r < D && !raised);
        if (pass == 0)
            aniso_rows(k, N, D), aniso_rows(v, N, D);
        else
            memcpy(k, ck, sizeof k), memcpy(v, cv, sizeof v);
        skv_kv_cache *kc = skv_ec_new(&c, 1, 2, 1, D, N);
        ck_assert_ptr_nonnull(kc);
        /* R rows at a time, as the decode loop appends them */
        for (uint64_t t = 0; t < N; t += R)
            ck_assert_int_eq(kc->ops->append(kc, 0, t, R, k + t * D, v + t * D), 0);
        ck_assert_int_eq(skv_ec_realloc(kc), 0);
        const float *rk, *rv;
        ck_assert_uint_eq(skv_zack_rows(kc, 0, 0, &rk, &rv), N);
        double sq[2] = {0, 0};
        for (uint32_t t = 0; t < N; t++)
            for (int u = 0; u < 2; u++) {
                const float *x = (u ? v : k) + t * D, *y = (u ? rv : rk) + t * D;
                if (t < s0 || t >= N - w0) {
                    ck_assert(memcmp(x, y, D * sizeof(float)) == 0);
                    continue;
                }
                const float *mu = b->mean + u * D, *U = b->vec + (size_t)u * D * D;
                double ref[D];
                for (uint32_t i = 0; i < D; i++)
                    ref[i] = mu[i];
                for (uint32_t j = 0; j < r; j++) {
                    double cc = 0;
                    for (uint32_t i = 0; i < D; i++)
                        cc += (double)U[j * D + i] * ((double)x[i] - mu[i]);
                    cc = h16(cc);
                    for (uint32_t i = 0; i < D; i++)
                        ref[i] += (double)U[j * D + i] * cc;
                }
                for (uint32_t i = 0; i < D; i++) {
                    ck_assert_msg(fabs(y[i] - ref[i]) <= 1e-5 * (1 + fabs(ref[i])),
                                  "row %u %c[%u]: %.9g vs float64 %.9g", t, u ? 'V' : 'K', i,
                                  (double)y[i], ref[i]);
                    sq[u] += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
                }
            }
        if (pass == 1)  /* on the calibration rows: the discarded eigenvalues */
            for (int u = 0; u < 2; u++) {
                double tail = 0;
                for (uint32_t j = r; j < D; j++)
                    tail += b->eig[u * D + j];
                double mse = sq[u] / N;
                ck_assert_msg(fabs(mse - tail) <= 0.01 * tail, "%c: mse %.6g, discarded "
                              "eigenvalues %.6g", u ? 'V' : 'K', mse, tail);
            }
        skv_ec_stats s;
        ck_assert_int_eq(skv_ec_stats_get(kc, &s), 0);
        ck_assert_uint_eq(s.bytes,
                          8 + 4 * D * (s0 + w0) + 4 * r * (N - s0 - w0) + 4 * D * r + 4 * D);
        ck_assert_msg((double)s.bytes <= c.alloc.budget * (double)s.fp16_bytes, "beta %.4f",
                      (double)s.bytes / (double)s.fp16_bytes);
        skv_kv_cache_free(kc);
    }
    skv_zack_basis_free(b);
}
END_TEST

START_TEST(test_errors)
{
    skv_ec_cfg c = zcfg(NULL, 0.3, 4, 32, 16);
    ck_assert_ptr_null(skv_ec_new(&c, 1, 2, 1, 8, 16));
    ck_assert_ptr_nonnull(strstr(skv_errmsg(), "calibration"));
    c.alloc.budget = 0;
    ck_assert_int_lt(skv_ec_cfg_check(&c), 0);
    double m[2], vv[4], e[2];
    ck_assert_int_lt(skv_zack_fit(NULL, 0, 2, m, vv, e), 0);
    /* a basis of another shape */
    float x[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    skv_zack_basis *b = basis_of(x, x, 4, 2);
    c = zcfg(b, 0.3, 0, 0, 4);
    ck_assert_ptr_null(skv_ec_new(&c, 2, 2, 1, 2, 16));
    skv_zack_basis_free(b);
}
END_TEST

/* The real model: one basis per (layer, KV head), eigenvalues descending
 * and >= 0 (to rounding), unit components at fp16. */
START_TEST(test_calibrate_model)
{
    const char *mp = test_model_path();
    if (!mp) {
        report_skip("zack calibration", 1);
        return;
    }
    skv_model *m = skv_model_load(mp, 1);
    ck_assert_ptr_nonnull(m);
    const skv_model_params *p = skv_model_get_params(m);
    int32_t ids[80];
    for (int i = 0; i < 80; i++)
        ids[i] = 100 + (i * 37) % 900;
    skv_zack_basis *b;
    ck_assert_int_eq(skv_zack_calibrate(m, ids, 80, &b), 0);
    ck_assert_uint_eq(b->n_layers, p->n_layers);
    ck_assert_uint_eq(b->n_kv_heads, p->n_kv_heads);
    const uint32_t d = p->head_dim;
    for (size_t u = 0; u < (size_t)p->n_layers * p->n_kv_heads * 2; u++) {
        const double *e = b->eig + u * d;
        ck_assert(e[0] > 0);
        for (uint32_t j = 1; j < d; j++)
            ck_assert(e[j] <= e[j - 1] && e[j] > -1e-9 * e[0]);
        double n2 = 0;
        for (uint32_t i = 0; i < d; i++)
            n2 += (double)b->vec[u * d * d + i] * b->vec[u * d * d + i];
        ck_assert(fabs(n2 - 1) < 1e-2);
    }
    skv_zack_basis_free(b);
    skv_model_free(m);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("zack");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_fit_hand);
    tcase_add_test(tc, test_fit_rank1);
    tcase_add_test(tc, test_fit_discarded);
    tcase_add_test(tc, test_rank_budget);
    tcase_add_test(tc, test_cache_rank1_exact);
    tcase_add_test(tc, test_cache_vs_f64);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_calibrate_model);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf ? EXIT_FAILURE : EXIT_SUCCESS;
}
