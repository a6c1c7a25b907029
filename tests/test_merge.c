/* test_merge.c -- prune-merge (smartkv_merge.h): the online k-means step
 * against a hand-checked example and a float64 reference, the identity
 * "a centroid of n identical tokens attends exactly like the n tokens" (one
 * row, and through the cache with the model's interface), pruning to the
 * budget and the byte model, merge + mixed precision online. */
#include "smartkv.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 11) * 0x1p-53) * 2.0f - 1.0f;
}

/* x1..x5 = (0,0) (10,0) (1,0) (9,2) (0,1), values 1..5 in both channels.
 * eta = 0: c0 = mean(x1, x3, x5) = (1/3, 1/3), c1 = mean(x2, x4) = (9.5, 1);
 * eta = 0.5: c0 = (0,0) -> (0.5,0) -> (0.25,0.5), c1 = (10,0) -> (9.5,1);
 * values always the members' mean: (1+3+5)/3 = 3, (2+4)/2 = 3. */
START_TEST(test_km_hand)
{
    const float x[5][2] = {{0, 0}, {10, 0}, {1, 0}, {9, 2}, {0, 1}};
    const uint32_t want_j[5] = {0, 1, 0, 1, 0};
    for (int pass = 0; pass < 2; pass++) {
        double eta = pass ? 0.5 : 0;
        float ck[2][2] = {{0}}, cv[2][2] = {{0}};
        uint32_t cnt[2] = {0, 0};
        for (int i = 0; i < 5; i++) {
            float v[2] = {(float)(i + 1), (float)(i + 1)};
            uint32_t j = skv_km_update(&ck[0][0], &cv[0][0], cnt, 2, 2, x[i], v, eta);
            ck_assert_uint_eq(j, want_j[i]);
        }
        ck_assert_uint_eq(cnt[0], 3);
        ck_assert_uint_eq(cnt[1], 2);
        const float w0[2][2] = {{1.0f / 3, 1.0f / 3}, {0.25f, 0.5f}};
        ck_assert_float_eq_tol(ck[0][0], w0[pass][0], 1e-6);
        ck_assert_float_eq_tol(ck[0][1], w0[pass][1], 1e-6);
        ck_assert_float_eq_tol(ck[1][0], 9.5f, 1e-6);
        ck_assert_float_eq_tol(ck[1][1], 1.0f, 1e-6);
        for (int c = 0; c < 2; c++) {
            ck_assert_float_eq_tol(cv[0][c], 3.0f, 1e-6);
            ck_assert_float_eq_tol(cv[1][c], 3.0f, 1e-6);
        }
    }
}
END_TEST

/* The same rule in float64. */
static uint32_t km_ref(double *ck, double *cv, uint32_t *cnt, uint32_t K, uint32_t d,
                       const float *x, const float *v, double eta)
{
    for (uint32_t j = 0; j < K; j++)
        if (!cnt[j]) {
            for (uint32_t i = 0; i < d; i++) {
                ck[j * d + i] = x[i];
                cv[j * d + i] = v[i];
            }
            cnt[j] = 1;
            return j;
        }
    uint32_t b = 0;
    double bd = INFINITY;
    for (uint32_t j = 0; j < K; j++) {
        double s = 0;
        for (uint32_t i = 0; i < d; i++)
            s += (x[i] - ck[j * d + i]) * (x[i] - ck[j * d + i]);
        if (s < bd) {
            bd = s;
            b = j;
        }
    }
    cnt[b]++;
    double a = eta > 0 ? eta : 1.0 / cnt[b];
    for (uint32_t i = 0; i < d; i++) {
        ck[b * d + i] += a * (x[i] - ck[b * d + i]);
        cv[b * d + i] += (v[i] - cv[b * d + i]) / cnt[b];
    }
    return b;
}

/* 400 tokens from 5 separated clusters into K = 5 centroids, d = 16:
 * assignments identical, centroids within float rounding. */
START_TEST(test_km_vs_f64)
{
    enum { N = 400, K = 5, D = 16 };
    static float x[N][D], v[N][D], mu[K][D];
    rng = 12345;
    for (int j = 0; j < K; j++)
        for (int i = 0; i < D; i++)
            mu[j][i] = 8.0f * frand();
    for (int n = 0; n < N; n++) {
        int j = (int)((frand() + 1.0f) * 0.5f * K) % K;
        for (int i = 0; i < D; i++) {
            x[n][i] = mu[j][i] + 0.5f * frand();
            v[n][i] = frand();
        }
    }
    const double etas[2] = {0, 0.05};
    for (int e = 0; e < 2; e++) {
        float ck[K * D] = {0}, cv[K * D] = {0};
        double rk[K * D] = {0}, rv[K * D] = {0};
        uint32_t cnt[K] = {0}, rcnt[K] = {0};
        for (int n = 0; n < N; n++) {
            uint32_t a = skv_km_update(ck, cv, cnt, K, D, x[n], v[n], etas[e]);
            uint32_t b = km_ref(rk, rv, rcnt, K, D, x[n], v[n], etas[e]);
            ck_assert_uint_eq(a, b);
        }
        double err = 0;
        for (int i = 0; i < K * D; i++) {
            err = fmax(err, fabs(ck[i] - rk[i]) / (1 + fabs(rk[i])));
            err = fmax(err, fabs(cv[i] - rv[i]) / (1 + fabs(rv[i])));
        }
        ck_assert_msg(err < 2e-5, "eta %g: max rel error %g against float64", etas[e], err);
        for (int j = 0; j < K; j++)
            ck_assert_uint_eq(cnt[j], rcnt[j]);
    }
}
END_TEST

/* n copies of (k0, v0) among m other rows, against one centroid (k0, v0, n):
 * same output, and the centroid's mass is the copies' total. */
START_TEST(test_identity_row)
{
    enum { D = 64, M = 7 };
    const uint32_t ns[4] = {1, 2, 13, 1000};
    rng = 777;
    for (int t = 0; t < 4; t++) {
        uint32_t n = ns[t];
        float *k = malloc(sizeof(float) * (n + M) * D), *v = malloc(sizeof(float) * (n + M) * D);
        float *p = malloc(sizeof(float) * (n + M + 1));
        float q[D], k0[D], v0[D], o1[D], o2[D], p2[M + 1];
        ck_assert(k && v && p);
        for (int i = 0; i < D; i++) {
            q[i] = frand();
            k0[i] = 2 * frand();
            v0[i] = frand();
        }
        for (uint32_t r = 0; r < n + M; r++)
            for (int i = 0; i < D; i++) {
                k[r * D + i] = r < M ? 2 * frand() : k0[i];
                v[r * D + i] = r < M ? frand() : v0[i];
            }
        skv_pm_attend_row(q, D, 0.125f, k, v, n + M, NULL, NULL, NULL, 0, o1, p);
        uint32_t cnt = n;
        skv_pm_attend_row(q, D, 0.125f, k, v, M, k0, v0, &cnt, 1, o2, p2);
        double mass = 0;
        for (uint32_t r = M; r < n + M; r++)
            mass += p[r];
        ck_assert_msg(fabs(mass - p2[M]) < 1e-6 * fmax(1, mass), "n %u: mass %.9g vs centroid %.9g",
                      n, mass, (double)p2[M]);
        for (int r = 0; r < M; r++)
            ck_assert_float_eq_tol(p[r], p2[r], 1e-6);
        for (int i = 0; i < D; i++)
            ck_assert_msg(fabsf(o1[i] - o2[i]) < 1e-5f, "n %u dim %d: %g vs %g", n, i,
                          (double)o1[i], (double)o2[i]);
        free(k);
        free(v);
        free(p);
    }
}
END_TEST

#define L_ 2
#define H_ 4
#define KH_ 2
#define D_ 32
#define T_ 160

static float K_[L_][T_][KH_ * D_], V_[L_][T_][KH_ * D_], Q_[T_][H_ * D_];

/* Run tokens through caches in blocks of 16 (as the model does: append
 * layer l, attend its heads), comparing every output row. */
static double run_pair(skv_kv_cache *a, skv_kv_cache *b)
{
    static float oa[H_ * D_], ob[H_ * D_], pa[T_], pb[T_];
    double worst = 0;
    for (uint32_t p0 = 0; p0 < T_; p0 += 16)
        for (uint32_t l = 0; l < L_; l++) {
            ck_assert_msg(a->ops->append(a, l, p0, 16, &K_[l][p0][0], &V_[l][p0][0]) == 0, "%s",
                          skv_errmsg());
            ck_assert_msg(b->ops->append(b, l, p0, 16, &K_[l][p0][0], &V_[l][p0][0]) == 0, "%s",
                          skv_errmsg());
            for (uint32_t h = 0; h < H_; h++)
                for (uint32_t i = 0; i < 16; i++) {
                    ck_assert_int_eq(a->ops->attend(a, l, h, p0 + i, 1, &Q_[p0 + i][h * D_], 0,
                                                    0.2f, oa, 0, pa, 0), 0);
                    ck_assert_int_eq(b->ops->attend(b, l, h, p0 + i, 1, &Q_[p0 + i][h * D_], 0,
                                                    0.2f, ob, 0, pb, 0), 0);
                    for (int j = 0; j < D_; j++)
                        worst = fmax(worst, fabsf(oa[j] - ob[j]));
                }
        }
    return worst;
}

/* Random sinks and recent tokens, every other token one repeated (k0, v0)
 * per (layer, kv head): pruning to B = 4 with one centroid merges only
 * copies of (k0, v0) (the random ones are recent or sinks, or kept), so the
 * cache attends exactly like the full one. */
START_TEST(test_identity_cache)
{
    rng = 4242;
    for (int l = 0; l < L_; l++)
        for (int h = 0; h < KH_; h++) {
            float k0[D_], v0[D_];
            for (int j = 0; j < D_; j++) {
                k0[j] = frand();
                v0[j] = frand();
            }
            for (int t = 0; t < T_; t++)
                for (int j = 0; j < D_; j++) {
                    int plain = t < 4 || t >= T_ - 48;  /* sinks, the last window */
                    K_[l][t][h * D_ + j] = plain ? frand() : k0[j];
                    V_[l][t][h * D_ + j] = plain ? frand() : v0[j];
                }
        }
    for (int t = 0; t < T_; t++)
        for (int j = 0; j < H_ * D_; j++)
            Q_[t][j] = frand();
    skv_pm_cfg full, pm;
    skv_pm_defaults(&full);
    full.budget = 0;
    full.num_clusters = 0;
    skv_pm_defaults(&pm);
    pm.max_cache_size = 4;
    pm.num_clusters = 1;
    skv_kv_cache *a = skv_pm_new(&full, L_, H_, KH_, D_, T_);
    skv_kv_cache *b = skv_pm_new(&pm, L_, H_, KH_, D_, T_);
    ck_assert(a && b);
    double worst = run_pair(a, b);
    ck_assert_msg(worst < 1e-5, "merged cache differs from full by %g", worst);
    skv_pm_stats sa, sb;
    ck_assert_int_eq(skv_pm_stats_get(a, &sa), 0);
    ck_assert_int_eq(skv_pm_stats_get(b, &sb), 0);
    ck_assert_uint_eq(sa.kept, (uint64_t)L_ * KH_ * T_);
    ck_assert_uint_gt(sb.n_prunes, 5);
    ck_assert_uint_eq(sb.kept + sb.merged, (uint64_t)L_ * KH_ * T_);
    ck_assert_uint_eq(sb.dropped, 0);
    ck_assert_uint_eq(sb.centroids, L_ * KH_);
    ck_assert_uint_lt(sb.kept, sa.kept / 2);
    /* the same with random tokens differs (the test can fail) */
    rng = 99;
    for (int l = 0; l < L_; l++)
        for (int t = 0; t < T_; t++)
            for (int j = 0; j < KH_ * D_; j++)
                K_[l][t][j] = 2 * frand();
    skv_kv_cache_free(a);
    skv_kv_cache_free(b);
    a = skv_pm_new(&full, L_, H_, KH_, D_, T_);
    b = skv_pm_new(&pm, L_, H_, KH_, D_, T_);
    worst = run_pair(a, b);
    ck_assert_msg(worst > 1e-3, "random tokens merged without any error (%g)", worst);
    skv_kv_cache_free(a);
    skv_kv_cache_free(b);
}
END_TEST

/* A planted token that every query attends survives pruning; kept rows
 * follow the budget; bytes are the documented byte model. */
START_TEST(test_prune_budget_bytes)
{
    rng = 31337;
    for (int l = 0; l < L_; l++)
        for (int t = 0; t < T_; t++)
            for (int j = 0; j < KH_ * D_; j++) {
                K_[l][t][j] = 0.3f * frand();
                V_[l][t][j] = frand();
            }
    for (int t = 0; t < T_; t++)
        for (int j = 0; j < H_ * D_; j++)
            Q_[t][j] = 1.0f;
    for (int l = 0; l < L_; l++)
        for (int j = 0; j < KH_ * D_; j++)
            K_[l][40][j] = 1.0f;  /* planted at position 40 */
    for (int k = 0; k < 2; k++) {
        skv_pm_cfg c;
        skv_pm_defaults(&c);
        c.budget = 0.5;
        c.recent = 8;
        c.num_clusters = k ? 4 : 0;
        skv_kv_cache *a = skv_pm_new(&c, L_, H_, KH_, D_, T_);
        ck_assert(a);
        static float o[D_], p[T_];
        for (uint32_t p0 = 0; p0 < T_; p0 += 16)
            for (uint32_t l = 0; l < L_; l++) {
                ck_assert_int_eq(a->ops->append(a, l, p0, 16, &K_[l][p0][0], &V_[l][p0][0]), 0);
                for (uint32_t h = 0; h < H_; h++)
                    for (uint32_t i = 0; i < 16; i++) {
                        ck_assert_int_eq(a->ops->attend(a, l, h, p0 + i, 1, &Q_[p0 + i][h * D_],
                                                        0, 0.2f, o, 0, p, 0), 0);
                        if (p0 + i >= 40)
                            ck_assert_float_gt(p[40], 0.1f);  /* still held and attended */
                    }
            }
        skv_pm_stats s;
        ck_assert_int_eq(skv_pm_stats_get(a, &s), 0);
        const uint64_t trk = 4ull * (H_ / KH_) * 2; /* G query heads, D/gcd(P,D) = 2 epochs */
        ck_assert_uint_eq(s.bytes, s.kept * (4 * D_ + 4 + trk) + s.centroids * (4 * D_ + 4));
        ck_assert_uint_eq(s.centroids, (uint64_t)L_ * KH_ * c.num_clusters);  /* all in use */
        ck_assert_uint_eq(s.track_bytes, s.kept * trk);
        ck_assert_uint_eq(s.fp16_bytes, (uint64_t)L_ * KH_ * T_ * 4 * D_);
        double beta = (double)s.bytes / (double)s.fp16_bytes;
        /* the last prune (at 144) aimed at 0.5 at 152; 16 rows came since */
        ck_assert_msg(beta < 0.6 && beta > 0.4, "K %u: beta %g", c.num_clusters, beta);
        ck_assert_uint_eq(s.kept + s.merged + s.dropped, (uint64_t)L_ * KH_ * T_);
        if (k)
            ck_assert_uint_eq(s.dropped, 0);
        else
            ck_assert_uint_eq(s.merged, 0);
        /* forgetting a merged or pruned position is refused; 0 resets */
        ck_assert_int_lt(a->ops->truncate(a, 50), 0);
        ck_assert_int_eq(a->ops->truncate(a, 0), 0);
        ck_assert_int_eq(skv_pm_stats_get(a, &s), 0);
        ck_assert_uint_eq(s.kept + s.merged, 0);
        skv_kv_cache_free(a);
    }
}
END_TEST

/* Merge + mixed precision online: one run of the cache over the planted
 * data of test_prune_budget_bytes with kept tokens at 4/8/16 bits.  Rows
 * below 16 bits are used, the planted token is still attended, bytes are
 * the documented byte model row by row (the width byte included), and at
 * the same budget it keeps more rows than fp16 alone.  Returns the stats. */
static void run_pm(const skv_pm_cfg *c, skv_pm_stats *s, float *planted_min)
{
    skv_kv_cache *a = skv_pm_new(c, L_, H_, KH_, D_, T_);
    ck_assert_msg(a != NULL, "%s", skv_errmsg());
    static float o[D_], p[T_];
    *planted_min = 1;
    for (uint32_t p0 = 0; p0 < T_; p0 += 16)
        for (uint32_t l = 0; l < L_; l++) {
            ck_assert_int_eq(a->ops->append(a, l, p0, 16, &K_[l][p0][0], &V_[l][p0][0]), 0);
            for (uint32_t h = 0; h < H_; h++)
                for (uint32_t i = 0; i < 16; i++) {
                    ck_assert_int_eq(a->ops->attend(a, l, h, p0 + i, 1, &Q_[p0 + i][h * D_],
                                                    0, 0.2f, o, 0, p, 0), 0);
                    if (p0 + i >= 40 && p[40] < *planted_min)
                        *planted_min = p[40];
                }
        }
    ck_assert_int_eq(skv_pm_stats_get(a, s), 0);
    skv_kv_cache_free(a);
}

START_TEST(test_mixed_budget)
{
    rng = 4242;
    for (int l = 0; l < L_; l++)
        for (int t = 0; t < T_; t++)
            for (int j = 0; j < KH_ * D_; j++) {
                K_[l][t][j] = 0.3f * frand();
                V_[l][t][j] = frand();
            }
    for (int t = 0; t < T_; t++)
        for (int j = 0; j < H_ * D_; j++)
            Q_[t][j] = 1.0f;
    for (int l = 0; l < L_; l++)
        for (int j = 0; j < KH_ * D_; j++)
            K_[l][40][j] = 1.0f;
    skv_pm_cfg c;
    skv_pm_defaults(&c);
    c.budget = 0.5;
    c.recent = 8;
    c.num_clusters = 4;
    skv_pm_stats f, f16, m;
    float pf, pf16, pm;
    run_pm(&c, &f, &pf);
    c.kept_mask = 1u << 16;  /* 16 alone: exactly the fp16 cache */
    run_pm(&c, &f16, &pf16);
    ck_assert_uint_eq(f16.bytes, f.bytes);
    ck_assert_uint_eq(f16.kept, f.kept);
    ck_assert_float_eq(pf16, pf);
    c.kept_mask = 1u << 4 | 1u << 8 | 1u << 16;
    run_pm(&c, &m, &pm);
    ck_assert_float_gt(pm, 0.1f);  /* the planted token: still held and attended */
    const uint64_t trk = 4ull * (H_ / KH_) * 2;
    uint64_t bytes = m.centroids * (4 * D_ + 4), rows = 0;
    for (int wi = 1; wi < SKV_NBITS; wi++) {
        uint32_t w = skv_bit_widths[wi];
        uint64_t rb = w == 16 ? 4 * D_
                              : 2 * (skv_row_bytes(w, D_) + skv_par_bytes(w, D_, D_, SKV_QMODE_ASYM));
        bytes += m.hist[wi] * (rb + 4 + 1 + trk);
        rows += m.hist[wi];
    }
    ck_assert_uint_eq(rows, m.kept);
    ck_assert_uint_eq(m.bytes, bytes);
    ck_assert_uint_eq(m.hist[skv_width_index(2)] + m.hist[skv_width_index(3)], 0);
    ck_assert_uint_gt(m.hist[skv_width_index(4)] + m.hist[skv_width_index(8)], 0);
    ck_assert_uint_eq(m.kept + m.merged + m.dropped, (uint64_t)L_ * KH_ * T_);
    double bm = (double)m.bytes / (double)m.fp16_bytes, bf = (double)f.bytes / (double)f.fp16_bytes;
    ck_assert_msg(bm < 0.6 && bm > 0.4, "mixed beta %g", bm);
    ck_assert_msg(fabs(bm - bf) < 0.03, "mixed beta %g, fp16 beta %g", bm, bf);
    ck_assert_msg(m.kept > f.kept, "mixed kept %llu rows, fp16 %llu", (unsigned long long)m.kept,
                  (unsigned long long)f.kept);
    /* settings mixed precision cannot take */
    c.max_cache_size = 10;
    ck_assert_int_eq(skv_pm_cfg_check(&c), SKV_EINVAL);
    c.max_cache_size = 0;
    c.budget = 0;
    ck_assert_int_eq(skv_pm_cfg_check(&c), SKV_EINVAL);
    c.budget = 0.5;
    c.kept_mask |= 1u << 5;
    ck_assert_int_eq(skv_pm_cfg_check(&c), SKV_EINVAL);
    c.kept_mask = 1u << 4 | 1u << 16;
    char buf[96];
    skv_pm_describe(&c, buf, sizeof buf);
    ck_assert_str_eq(buf, "prune-merge beta=0.5 K=4 P=16 D=32 sinks=4 recent=8 bits=4,16");
}
END_TEST

START_TEST(test_cfg_errors)
{
    skv_pm_cfg c;
    skv_pm_defaults(&c);
    ck_assert_int_eq(skv_pm_cfg_check(&c), 0);
    c.pruning_interval = 0;
    ck_assert_int_eq(skv_pm_cfg_check(&c), SKV_EINVAL);
    skv_pm_defaults(&c);
    c.kmeans_lr = 1.5;
    ck_assert_int_eq(skv_pm_cfg_check(&c), SKV_EINVAL);
    skv_pm_defaults(&c);
    c.pruning_interval = 64;
    c.lookback_window = 65 * 64;
    ck_assert_int_eq(skv_pm_cfg_check(&c), SKV_EINVAL);
    skv_pm_defaults(&c);
    ck_assert_ptr_null(skv_pm_new(&c, 1, 3, 2, 64, 100));
    char buf[96];
    skv_pm_describe(&c, buf, sizeof buf);
    ck_assert_str_eq(buf, "prune-merge beta=0.25 K=8 P=16 D=32");
}
END_TEST


/* ---- offline: centroids in the packed cache (CNTR) ---- */

static skv_cache *pack(const skv_trace *t, const skv_cache_plan *p)
{
    char path[] = "/tmp/skv-test-merge-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    skv_stream *s = skv_open_write(path, -1);
    ck_assert_ptr_nonnull(s);
    int rc = skv_cache_write(s, t, p, NULL, 0, NULL);
    ck_assert_msg(rc == 0, "write: %s", skv_errmsg());
    ck_assert_int_eq(skv_close(s), 0);
    skv_cache *c = NULL;
    rc = skv_cache_load(path, &c);
    ck_assert_msg(rc == 0, "load: %s", skv_errmsg());
    unlink(path);
    return c;
}

/* KV head 0: tokens 10..19 share one K/V row; KV head 1: tokens 30..34.
 * Evicted and merged (one centroid per head, counts 10 and 5, exact means),
 * the packed cache must attend exactly like the cache that stores them, for
 * every query after a centroid's last member, and must leave a centroid out
 * before it (steps 20..29: head 1's tokens 30..34 not yet seen in either). */
START_TEST(test_identity_packed)
{
    const uint32_t H = 4, KV = 2, d = 32;
    const uint64_t T = 64;
    skv_trace_hdr h;
    memset(&h, 0, sizeof h);
    h.n_layers = 1;
    h.n_heads = H;
    h.n_kv_heads = KV;
    h.head_dim = d;
    h.n_tokens = T;
    h.n_prefill = T;
    h.dtype = SKV_F16;
    snprintf(h.model, sizeof h.model, "identity");
    skv_trace *t = skv_trace_new(&h);
    ck_assert_ptr_nonnull(t);
    for (size_t i = 0; i < (size_t)H * T * d; i++)
        t->q[0][i] = skv_f16_to_f32(skv_f32_to_f16(2.0f * frand()));
    for (size_t i = 0; i < (size_t)KV * T * d; i++) {
        t->k[0][i] = skv_f16_to_f32(skv_f32_to_f16(2.0f * frand()));
        t->v[0][i] = skv_f16_to_f32(skv_f32_to_f16(frand()));
    }
    for (uint64_t u = 11; u < 20; u++) {
        memcpy(t->k[0] + u * d, t->k[0] + 10 * d, d * sizeof(float));
        memcpy(t->v[0] + u * d, t->v[0] + 10 * d, d * sizeof(float));
    }
    for (uint64_t u = 31; u < 35; u++) {
        memcpy(t->k[0] + (T + u) * d, t->k[0] + (T + 30) * d, d * sizeof(float));
        memcpy(t->v[0] + (T + u) * d, t->v[0] + (T + 30) * d, d * sizeof(float));
    }
    skv_qcfg q = {.head_dim = d, .k_group = d, .v_group = d, .k_mode = SKV_QMODE_ASYM, .v_mode = SKV_QMODE_ASYM, .k_tokens = 0};
    skv_cache_plan pa, pb;
    ck_assert_int_eq(skv_cache_plan_uniform(&pa, &h, &q, 16), 0);
    ck_assert_int_eq(skv_cache_plan_uniform(&pb, &h, &q, 16), 0);
    for (uint64_t u = 10; u < 20; u++)
        pb.bits[u] = 0;
    for (uint64_t u = 30; u < 35; u++)
        pb.bits[T + u] = 0;
    pb.merge_clusters = 1;
    pb.merge_bits = 16;
    skv_cache *ca = pack(t, &pa), *cb = pack(t, &pb);
    const skv_cache_head *hb = skv_cache_head_at(cb, 0, 0), *hb1 = skv_cache_head_at(cb, 0, 1);
    ck_assert_uint_eq(cb->n_centroids, 2);
    ck_assert_ptr_nonnull(hb->cent);
    ck_assert_ptr_nonnull(hb1->cent);
    ck_assert_uint_eq(hb->cent->rows.n, 1);
    ck_assert_uint_eq(hb1->cent->rows.n, 1);
    ck_assert_uint_eq(hb->cent->cnt[0], 10);
    ck_assert_uint_eq(hb1->cent->cnt[0], 5);
    ck_assert_uint_eq(hb->cent->rows.idx[0], 19);
    ck_assert_uint_eq(hb1->cent->rows.idx[0], 34);
    ck_assert_uint_eq(hb->n_stored, T - 10);
    ck_assert_uint_eq(hb1->n_stored, T - 5);
    uint64_t bytes = 0;
    ck_assert_int_eq(skv_cache_plan_bytes(&pb, &bytes), 0);
    ck_assert_uint_eq(bytes, cb->pk.cache_bytes);
    ck_assert_uint_eq(cb->stored_bytes, cb->pk.cache_bytes);

    uint64_t steps[T];
    uint64_t ns = 0;
    for (uint64_t u = 20; u < T; u++)
        if (u < 30 || u >= 34)
            steps[ns++] = u;
    for (int kernel = SKV_KERNEL_SCALAR; kernel <= SKV_KERNEL_AVX2; kernel++) {
        if (!skv_att_kernel_available(kernel))
            continue;
        skv_attend_opts o = {1, kernel, 0};
        skv_attend_ctx *ctx = skv_attend_new(&o);
        ck_assert_ptr_nonnull(ctx);
        float *oa = calloc((size_t)H * ns * d, sizeof *oa), *ob = calloc((size_t)H * ns * d, sizeof *ob);
        skv_kv_view La = {SKV_KV_PACKED, H, KV, d, T, t->q[0], NULL, NULL,
                          skv_cache_head_at(ca, 0, 0)};
        skv_kv_view Lb = La;
        Lb.packed = hb;
        ck_assert_int_eq(skv_attend_layer(ctx, &La, steps, ns, oa, NULL), 0);
        ck_assert_int_eq(skv_attend_layer(ctx, &Lb, steps, ns, ob, NULL), 0);
        double worst = 0, mx = 0;
        for (size_t i = 0; i < (size_t)H * ns * d; i++) {
            worst = fmax(worst, fabs((double)oa[i] - ob[i]));
            mx = fmax(mx, fabs((double)oa[i]));
        }
        /* the same sums in another order, and log(n) rounded once */
        ck_assert_msg(worst <= 1e-6 * mx, "%s kernel: outputs differ by %g (max |out| %g)",
                      skv_att_kernel_name(kernel), worst, mx);
        free(oa);
        free(ob);
        skv_attend_free(ctx);
    }
    skv_cache_free(ca);
    skv_cache_free(cb);
    skv_cache_plan_free(&pa);
    skv_cache_plan_free(&pb);
    skv_trace_free(t);
}
END_TEST

int main(void)
{
    Suite *su = suite_create("merge");
    TCase *tc = tcase_create("merge");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_km_hand);
    tcase_add_test(tc, test_km_vs_f64);
    tcase_add_test(tc, test_identity_row);
    tcase_add_test(tc, test_identity_cache);
    tcase_add_test(tc, test_prune_budget_bytes);
    tcase_add_test(tc, test_mixed_budget);
    tcase_add_test(tc, test_cfg_errors);
    tcase_add_test(tc, test_identity_packed);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf != 0;
}
