/* test_seedbase.c -- the seeds' baselines (sliding, dynamickv, uncomp,
 * razor) and ATSKV offline: each policy's choice on a small problem worked
 * out by hand, the relevance of a trace layer, the keys' matrix entropy on keys whose spectrum is known, RazorAttention's
 * head selection and score sums by hand, the head-score file reader on good
 * and bad files, the induction scores of the real model (skipped without
 * it), and each policy in the online cache: within the budget, evicted
 * tokens never back. */
#include "smartkv.h"
#include "model_path.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TT 20
#define HD 64

static skv_qcfg qc(void)
{
    skv_qcfg q = {.head_dim = HD, .k_group = HD, .v_group = HD, .k_mode = SKV_QMODE_ASYM, .v_mode = SKV_QMODE_ASYM, .k_tokens = 0};
    return q;
}

/* beta giving exactly the bytes of keep[u] fp16 tokens in unit u (the rest
 * evicted), over `units` units */
static double beta_for(uint32_t units, const uint64_t *keep)
{
    skv_qcfg q = qc();
    uint64_t b = skv_alloc_pkhd_bytes(&q);
    for (uint32_t u = 0; u < units; u++)
        b += skv_bucket_file_bytes(&q, 16, keep[u]);
    /* a hair above, so that floor(beta * fp16) is exactly b */
    return ((double)b + 0.5) / (double)skv_alloc_fp16_bytes(1, units, TT, HD);
}

static void solve(const char *pol, uint32_t L, uint32_t H, double beta, const float *imp,
                  const float *kent, const skv_head_scores *hs, uint8_t *bits, uint32_t sinks,
                  uint32_t recent)
{
    skv_alloc_cfg c;
    skv_alloc_cfg_defaults(&c);
    ck_assert_int_eq(skv_policy_parse(pol, &c.policy, &c.uniform_bits), 0);
    c.budget = beta * (double)skv_alloc_fp16_bytes(1, L * H, TT, HD) /
               (double)skv_alloc_fp16_bytes(L, H, TT, HD);
    c.sinks = sinks;
    c.recent = recent;
    c.qcfg = qc();
    c.heads = hs;
    ck_assert_int_eq(skv_alloc_cfg_resolve(&c), 0);
    static float err[8 * TT * SKV_NBITS];
    for (size_t i = 0; i < sizeof err / sizeof *err; i++)
        err[i] = (float)(SKV_NBITS - i % SKV_NBITS);
    skv_alloc_problem p = {L, H, TT, imp, err, NULL, NULL, kent};
    skv_alloc_result r;
    ck_assert_msg(skv_alloc_solve(&c, &p, bits, &r) == 0, "%s: %s", pol, skv_errmsg());
    ck_assert_uint_le(r.bytes, r.budget_bytes);
}

/* unit u of bits keeps exactly the listed tokens at 16 bits, the rest at 0 */
static void expect(const uint8_t *bits, uint32_t u, const int *kept, int nk)
{
    uint8_t want[TT] = {0};
    for (int i = 0; i < nk; i++)
        want[kept[i]] = 16;
    for (int j = 0; j < TT; j++)
        ck_assert_msg(bits[u * TT + j] == want[j], "unit %u token %d: width %u, expected %u", u,
                      j, bits[u * TT + j], want[j]);
}

START_TEST(test_sliding_by_hand)
{
    uint8_t bits[TT];
    float imp[TT] = {0};
    imp[0] = 9; /* attention is not read; no sinks */
    uint64_t k6[] = {6};
    solve("sliding", 1, 1, beta_for(1, k6), imp, NULL, NULL, bits, 4, 32);
    int w[] = {14, 15, 16, 17, 18, 19};
    expect(bits, 0, w, 6);
    /* online: the newest keepable ones (token 17 already evicted) */
    skv_alloc_cfg c;
    skv_alloc_cfg_defaults(&c);
    ck_assert_int_eq(skv_policy_parse("sliding", &c.policy, &c.uniform_bits), 0);
    c.budget = beta_for(1, k6);
    c.qcfg = qc();
    ck_assert_int_eq(skv_alloc_cfg_resolve(&c), 0);
    static float err[TT * SKV_NBITS];
    for (size_t i = 0; i < sizeof err / sizeof *err; i++)
        err[i] = 1;
    uint8_t stored[TT];
    memset(stored, 16, sizeof stored);
    stored[17] = 0;
    skv_alloc_problem p = {1, 1, TT, imp, err, NULL, stored, NULL};
    skv_alloc_result r;
    ck_assert_int_eq(skv_alloc_solve(&c, &p, bits, &r), 0);
    int w2[] = {13, 14, 15, 16, 18, 19};
    expect(bits, 0, w2, 6);
}
END_TEST

/* Keys (1,0), (0,1), (1,1)/sqrt2 (any length: rows are normalised):
 * S = [[1 + 1/2, 1/2], [1/2, 1 + 1/2]] / 3 = [[1/2, 1/6], [1/6, 1/2]],
 * eigenvalues 2/3 and 1/3, H = ln 3 - (2/3) ln 2.  One direction: 0; three
 * orthogonal directions equally often (in 64 dimensions): ln 3. */
START_TEST(test_matrix_entropy_by_hand)
{
    float g[SKV_GRAM_LEN(HD)];
    uint64_t n = 0;
    double h;
    memset(g, 0, sizeof g);
    float k2[] = {2, 0, 0, 3, 5, 5};
    skv_gram_add(g, &n, 2, k2, 3);
    ck_assert_uint_eq(n, 3);
    ck_assert_float_eq(g[0], 1.5f); /* (0,0), (0,1), (1,1) */
    ck_assert_float_eq(g[1], 0.5f);
    ck_assert_float_eq(g[2], 1.5f);
    ck_assert_int_eq(skv_matrix_entropy(g, n, 2, &h), 0);
    ck_assert_double_eq_tol(h, log(3.0) - 2.0 / 3.0 * log(2.0), 1e-7);
    static float k[6][HD];
    memset(k, 0, sizeof k);
    for (int i = 0; i < 6; i++)
        k[i][0] = (float)(i + 1) * (i & 1 ? -1 : 1);
    memset(g, 0, sizeof g);
    n = 0;
    skv_gram_add(g, &n, HD, &k[0][0], 6);
    ck_assert_int_eq(skv_matrix_entropy(g, n, HD, &h), 0);
    ck_assert_double_eq_tol(h, 0, 1e-12);
    memset(k, 0, sizeof k);
    for (int i = 0; i < 6; i++)
        k[i][(i % 3) * 20 + 1] = 0.5f;
    memset(g, 0, sizeof g);
    n = 0;
    skv_gram_add(g, &n, HD, &k[0][0], 6);
    ck_assert_int_eq(skv_matrix_entropy(g, n, HD, &h), 0);
    ck_assert_double_eq_tol(h, log(3.0), 1e-7);
    /* a rotated version: the same spectrum */
    memset(k, 0, sizeof k);
    float c = 0.6f, s = 0.8f;
    for (int i = 0; i < 6; i++) {
        int d = i % 3;
        float e[3] = {0, 0, 0};
        e[d] = 1;
        k[i][0] = c * e[0] - s * e[1];
        k[i][1] = s * e[0] + c * e[1];
        k[i][2] = e[2];
    }
    memset(g, 0, sizeof g);
    n = 0;
    skv_gram_add(g, &n, HD, &k[0][0], 6);
    ck_assert_int_eq(skv_matrix_entropy(g, n, HD, &h), 0);
    ck_assert_double_eq_tol(h, log(3.0), 1e-6);
    /* no rows (or only zero rows): 0 */
    memset(g, 0, sizeof g);
    memset(k, 0, sizeof k);
    n = 0;
    skv_gram_add(g, &n, HD, &k[0][0], 2);
    ck_assert_uint_eq(n, 0);
    ck_assert_int_eq(skv_matrix_entropy(g, n, HD, &h), 0);
    ck_assert_double_eq(h, 0);
}
END_TEST

/* uncomp, two units with key entropies 0 and ln 3 (effective ranks 1 and 3)
 * and bytes for 8 tokens: 2 and 6.  W = recent = 1.  Unit 0: the window 19
 * and the top pooled vote: a vote at 5 pools to 0.2 at 3..7, ties newer
 * first: 7.  Unit 1 has no votes: 19, then ties newer first: 14..18. */
START_TEST(test_uncomp_by_hand)
{
    uint8_t bits[2 * TT];
    float imp[2 * TT] = {0};
    imp[5] = 1;
    float kent[2] = {0, (float)log(3.0)};
    uint64_t k[] = {2, 6};
    solve("uncomp", 1, 2, beta_for(2, k), imp, kent, NULL, bits, 4, 1);
    int u0[] = {7, 19}, u1[] = {14, 15, 16, 17, 18, 19};
    expect(bits, 0, u0, 2);
    expect(bits, 1, u1, 6);
    /* without the entropy it refuses */
    skv_alloc_cfg c;
    skv_alloc_cfg_defaults(&c);
    ck_assert_int_eq(skv_policy_parse("uncomp", &c.policy, &c.uniform_bits), 0);
    c.qcfg = qc();
    ck_assert_int_eq(skv_alloc_cfg_resolve(&c), 0);
    c.budget = 0.3;
    static float err[2 * TT * SKV_NBITS];
    skv_alloc_problem p = {1, 2, TT, imp, err, NULL, NULL, NULL};
    skv_alloc_result r;
    ck_assert_int_eq(skv_alloc_solve(&c, &p, bits, &r), SKV_EINVAL);
}
END_TEST

/* dynamickv, 2 layers x 1 KV head, bytes for 8 tokens: equal counts 4 and
 * 4, so bs = 4, W = 1 (recent 1), r_max * bs - W = 7 candidates a head.
 * Layer 0 votes 1.0 at token 3 (max-pooled: 1.0 at 1..5), layer 1 0.5 at 2
 * and 10 (0.5 at 0..4 and 8..12).  The top 8 - 2 = 6 candidates over both
 * layers: the five 1.0 of layer 0 and one 0.5 of layer 1, so the layers get
 * 1 + 5 = 6 and 1 + 1 = 2 tokens.  Layer 0 keeps 19 and 1..5; layer 1 keeps
 * 19 and the newest of its ties, 12. */
START_TEST(test_dynamickv_by_hand)
{
    uint8_t bits[2 * TT];
    float imp[2 * TT] = {0};
    imp[3] = 1;
    imp[TT + 2] = 0.5f;
    imp[TT + 10] = 0.5f;
    uint64_t k[] = {4, 4};
    solve("dynamickv", 2, 1, beta_for(2, k), imp, NULL, NULL, bits, 4, 1);
    int u0[] = {1, 2, 3, 4, 5, 19}, u1[] = {12, 19};
    expect(bits, 0, u0, 6);
    expect(bits, 1, u1, 2);
    /* as concentrated in both layers: votes 1.0 and 0.9 at token 0 pool to
     * three tokens each (0..2), the top 6 are three of each layer, so the
     * budgets stay 4 and 4: the window and 0..2 */
    memset(imp, 0, sizeof imp);
    imp[0] = 1;
    imp[TT] = 0.9f;
    solve("dynamickv", 2, 1, beta_for(2, k), imp, NULL, NULL, bits, 4, 1);
    int e[] = {0, 1, 2, 19};
    expect(bits, 0, e, 4);
    expect(bits, 1, e, 4);
}
END_TEST

/* RazorAttention's selection, 2 layers x 4 query heads x 2 KV heads: the
 * top ceil(0.14 * 8) = 2 by induction, (0,1) 0.9 and (1,2) 0.5, and the top
 * ceil(0.01 * 8) = 1 by echo, (0,3): KV heads (0,0), (1,1) and (0,1).  With
 * bytes for 3 x 20 + 6 tokens, those keep everything and (1,0) keeps its 2
 * sinks and the newest 4. */
START_TEST(test_razor_by_hand)
{
    float ind[8] = {0.1f, 0.9f, 0, 0, 0, 0, 0.5f, 0.2f}, echo[8] = {0, 0, 0, 0.3f, 0, 0, 0, 0};
    skv_head_scores hs = {2, 4, ind, echo};
    uint8_t mask[4];
    ck_assert_int_eq(skv_razor_mask(&hs, 2, 2, mask), 0);
    ck_assert_uint_eq(mask[0], 1);
    ck_assert_uint_eq(mask[1], 1);
    ck_assert_uint_eq(mask[2], 0);
    ck_assert_uint_eq(mask[3], 1);
    ck_assert_int_eq(skv_razor_mask(&hs, 2, 3, mask), SKV_EINVAL); /* 4 % 3 */
    ck_assert_int_eq(skv_razor_mask(&hs, 3, 2, mask), SKV_EINVAL); /* layers */
    uint8_t bits[4 * TT];
    float imp[4 * TT] = {0};
    uint64_t k[] = {TT, TT, 6, TT};
    solve("razor", 2, 2, beta_for(4, k), imp, NULL, &hs, bits, 2, 32);
    int all[TT], s[] = {0, 1, 16, 17, 18, 19};
    for (int j = 0; j < TT; j++)
        all[j] = j;
    expect(bits, 0, all, TT);
    expect(bits, 1, all, TT);
    expect(bits, 2, s, 6);
    expect(bits, 3, all, TT);
}
END_TEST

/* n = 3: queries 3, 4, 5 look for 1, 2, 3 (induction) and 0, 1, 2 (echo);
 * a row before the second copy does not count. */
START_TEST(test_induction_rows_by_hand)
{
    float p[4][6] = {{0}};
    p[0][1] = 0.9f;           /* query 2: ignored */
    p[1][1] = 0.5f;           /* query 3 */
    p[1][0] = 0.25f;
    p[2][2] = 1.0f;           /* query 4 */
    p[3][3] = 0.2f;           /* query 5 */
    p[3][2] = 0.4f;
    double a = 0, b = 0;
    skv_induction_rows(3, 2, 4, &p[0][0], 6, &a, &b);
    ck_assert_double_eq_tol(a, 0.5 + 1.0 + 0.2, 1e-7);
    ck_assert_double_eq_tol(b, 0.25 + 0.4, 1e-7);
}
END_TEST

static const char *write_tmp(const char *name, const char *text)
{
    static char path[256];
    snprintf(path, sizeof path, "%s/%s", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", name);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    return path;
}

START_TEST(test_head_scores_file)
{
    skv_head_scores hs;
    const char *p = write_tmp("skv-test-heads-ok.txt",
                              "# comment\nlayers 1 heads 2\n0 0 0.5 0.25\n\n0 1 0 1\n");
    ck_assert_msg(skv_head_scores_read(p, &hs) == 0, "%s", skv_errmsg());
    ck_assert_uint_eq(hs.n_layers, 1);
    ck_assert_uint_eq(hs.n_heads, 2);
    ck_assert_float_eq(hs.induction[0], 0.5f);
    ck_assert_float_eq(hs.echo[1], 1.0f);
    /* written back and read again: the same */
    char wpath[256];
    snprintf(wpath, sizeof wpath, "%s.2", p);
    FILE *f = fopen(wpath, "w");
    ck_assert_int_eq(skv_head_scores_write(f, &hs), 0);
    fclose(f);
    skv_head_scores hs2;
    ck_assert_int_eq(skv_head_scores_read(wpath, &hs2), 0);
    ck_assert_float_eq(hs2.induction[0], 0.5f);
    ck_assert_float_eq(hs2.echo[0], 0.25f);
    skv_head_scores_free(&hs2);
    skv_head_scores_free(&hs);
    remove(wpath);
    remove(p);
    static const struct {
        const char *text, *msg;
    } bad[] = {
        {"", "expected 'layers L heads H'"},
        {"layers 0 heads 2\n", "expected 'layers L heads H'"},
        {"layers 1 heads 2\n0 0 0.5 0.1\n", "ends after 1 of 2 heads"},
        {"layers 1 heads 2\n0 0 0.5 0.1\n0 2 0 0\n", "line 3: expected '0 1"},
        {"layers 1 heads 2\n0 0 1.5 0.1\n0 1 0 0\n", "scores in [0, 1]"},
        {"layers 1 heads 2\n0 0 nan 0.1\n0 1 0 0\n", "scores in [0, 1]"},
        {"layers 1 heads 1\n0 0 0.5 0.1\n0 1 0 0\n", "more than 1 x 1 heads"},
        {"layers 1 heads 1\n0 0 0.5 0.1 x\n", "line 2"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        p = write_tmp("skv-test-heads-bad.txt", bad[i].text);
        ck_assert_int_eq(skv_head_scores_read(p, &hs), SKV_EFORMAT);
        ck_assert_msg(strstr(skv_errmsg(), bad[i].msg) != NULL, "%zu: %s", i, skv_errmsg());
        ck_assert_ptr_null(hs.induction);
        remove(p);
    }
    ck_assert_int_eq(skv_head_scores_read("/nonexistent/heads.txt", &hs), SKV_EIO);
}
END_TEST

/* The real model has induction heads: at least one head attends to the
 * token after the earlier occurrence with more than half its mass; every
 * score is a probability mass in [0, 1]. */
START_TEST(test_induction_model)
{
    const char *mp = test_model_path();
    if (!mp) {
        report_skip("induction", 1);
        return;
    }
    skv_model *m = skv_model_load(mp, 1);
    ck_assert_ptr_nonnull(m);
    const skv_model_params *p = skv_model_get_params(m);
    size_t n = (size_t)p->n_layers * p->n_heads;
    float *ind = calloc(n, sizeof(float)), *echo = calloc(n, sizeof(float));
    ck_assert_int_eq(skv_induction_scores(m, 64, 1, ind, echo), 0);
    float best = 0;
    for (size_t i = 0; i < n; i++) {
        ck_assert(ind[i] >= 0 && ind[i] <= 1 && echo[i] >= 0 && echo[i] <= 1);
        best = ind[i] > best ? ind[i] : best;
    }
    ck_assert_msg(best > 0.5f, "best induction score %g", (double)best);
    ck_assert_int_eq(skv_induction_scores(m, 1, 1, ind, echo), SKV_EINVAL);
    free(ind);
    free(echo);
    skv_model_free(m);
}
END_TEST

/* RocketKV's stage 2 by hand: d = 2, pages of 2, the top 1 dimension of
 * |q|.  Keys (1,0) (3,0) | (0,5) (-2,0).  q = (1, 0.5): dimension 0, q > 0
 * reads the page maxima 3 and 0: page 0 wins, tokens 0 and 1.  q = (-1,
 * 0.5): the minima 1 and -2 score -1 and 2: page 1, tokens 2 and 3.  top 3
 * with q = (1, 0.5): page 0 and the newer token of page 1 (3). */
START_TEST(test_rocket_select_by_hand)
{
    float k[4][2] = {{1, 0}, {3, 0}, {0, 5}, {-2, 0}};
    const float *rows[4] = {k[0], k[1], k[2], k[3]};
    uint64_t sel[4];
    static char work[SKV_ROCKET_WORK_BYTES(2, 4)];
    float q1[2] = {1, 0.5f}, q2[2] = {-1, 0.5f};
    ck_assert_uint_eq(skv_rocket_select(q1, 2, rows, 4, 2, 1, 2, sel, work), 2);
    ck_assert_uint_eq(sel[0], 0);
    ck_assert_uint_eq(sel[1], 1);
    ck_assert_uint_eq(skv_rocket_select(q2, 2, rows, 4, 2, 1, 2, sel, work), 2);
    ck_assert_uint_eq(sel[0], 2);
    ck_assert_uint_eq(sel[1], 3);
    ck_assert_uint_eq(skv_rocket_select(q1, 2, rows, 4, 3, 1, 2, sel, work), 3);
    ck_assert_uint_eq(sel[0], 0);
    ck_assert_uint_eq(sel[1], 1);
    ck_assert_uint_eq(sel[2], 3);
    /* q = (1, 1): one dimension (ties: the lower, 0) picks page 0 (3 vs 0);
     * both dimensions pick page 1 (0 + 5 = 5 against 3 + 0) */
    float q3[2] = {1, 1};
    ck_assert_uint_eq(skv_rocket_select(q3, 2, rows, 4, 2, 1, 2, sel, work), 2);
    ck_assert_uint_eq(sel[0], 0);
    ck_assert_uint_eq(skv_rocket_select(q3, 2, rows, 4, 2, 2, 2, sel, work), 2);
    ck_assert_uint_eq(sel[0], 2);
    ck_assert_uint_eq(sel[1], 3);
    /* top-k of at least m: everything */
    ck_assert_uint_eq(skv_rocket_select(q1, 2, rows, 4, 9, 1, 2, sel, work), 4);
}
END_TEST

/* rocketkv's stage 1: the page bounds are paid from the budget.  Bytes for
 * 6 kept tokens plus their one page (SKV_ROCKET_PAGE_BYTES = 256): 6 kept,
 * W = 1: 19 and the top max-pooled votes (a vote at 9 pools to 7..11, ties
 * newer first: 11, 10, 9, 8, 7).  Bytes for 6 tokens without the page: one
 * token less room than 6 + page, so 5 (the largest count whose cache and
 * page fit). */
START_TEST(test_rocketkv_stage1_by_hand)
{
    uint8_t bits[TT];
    float imp[TT] = {0};
    imp[9] = 1;
    skv_qcfg q = qc();
    uint64_t fp = skv_alloc_fp16_bytes(1, 1, TT, HD);
    uint64_t b6 = skv_alloc_pkhd_bytes(&q) + skv_bucket_file_bytes(&q, 16, 6);
    solve("rocketkv", 1, 1, ((double)(b6 + SKV_ROCKET_PAGE_BYTES(HD)) + 0.5) / (double)fp, imp,
          NULL, NULL, bits, 4, 1);
    int w[] = {7, 8, 9, 10, 11, 19};
    expect(bits, 0, w, 6);
    solve("rocketkv", 1, 1, ((double)b6 + 0.5) / (double)fp, imp, NULL, NULL, bits, 4, 1);
    uint64_t k5 = skv_alloc_pkhd_bytes(&q) + skv_bucket_file_bytes(&q, 16, 5) +
                  SKV_ROCKET_PAGE_BYTES(HD);
    ck_assert_uint_le(k5, b6); /* 5 and a page fit, 6 and a page do not */
    int w5[] = {8, 9, 10, 11, 19};
    expect(bits, 0, w5, 5);
}
END_TEST

/* ---------------------------------------------------------------- online */

#define L_ 2
#define H_ 4
#define KH_ 2
#define D_ 64
#define T_ 160

static float K[L_][T_][KH_ * D_], V[L_][T_][KH_ * D_], Q[T_][H_ * D_];
static uint64_t rng = 88172645463325252ull;
static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((double)(rng >> 11) * 0x1p-53 * 2 - 1);
}

static float OUT[D_ * 16], PR[16 * T_];

/* Each new policy in the online cache, decoding 16 tokens at a time after a
 * 64-token prefill: the measured bytes stay within beta (the realloc's
 * result, after the pending rows were allocated), and a token evicted once
 * is never kept again. */
/* ATSKV offline: sinks, recent, then the relevance above the adaptive
 * threshold, largest first, as many as the budget keeps. */
START_TEST(test_atskv_by_hand)
{
    uint8_t bits[TT];
    float rel[TT];
    for (int j = 0; j < TT; j++)
        rel[j] = 0.1f + 0.01f * (float)j;
    rel[5] = 0.9f;
    rel[9] = 0.8f;
    rel[11] = 0.95f;
    rel[0] = 0.0f;      /* a sink is kept whatever its relevance */
    uint64_t k8[] = {8};
    solve("atskv", 1, 1, beta_for(1, k8), rel, NULL, NULL, bits, 2, 3);
    int w[] = {0, 1, 5, 9, 11, 17, 18, 19};
    expect(bits, 0, w, 8);
    /* one fewer: the lowest relevance above the threshold goes */
    uint64_t k7[] = {7};
    solve("atskv", 1, 1, beta_for(1, k7), rel, NULL, NULL, bits, 2, 3);
    int w7[] = {0, 1, 5, 11, 17, 18, 19};
    expect(bits, 0, w7, 7);
}
END_TEST

/* The relevance of a trace layer: with a weight on the token-frequency
 * feature only, repeated ids score higher; with a weight on the EMA of the
 * attention only, the key every query attends to scores highest. */
START_TEST(test_atskv_layer_relevance)
{
    enum { N = 24, D = 8, HQ = 2 };
    skv_trace_hdr h;
    memset(&h, 0, sizeof h);
    h.n_layers = 1;
    h.n_heads = HQ;
    h.n_kv_heads = 1;
    h.head_dim = D;
    h.n_tokens = N;
    static float q[HQ * N * D], k[N * D], v[N * D];
    for (int i = 0; i < HQ * N * D; i++)
        q[i] = i % D == 0 ? 4.0f : 0.0f;
    for (int t = 0; t < N; t++)
        for (int j = 0; j < D; j++)
            k[t * D + j] = j == 0 && t == 7 ? 3.0f : 0.01f * (float)((t * 7 + j) % 5);
    skv_layer L;
    memset(&L, 0, sizeof L);
    L.q = q;
    L.k = k;
    L.v = v;
    int32_t ids[N];
    for (int t = 0; t < N; t++)
        ids[t] = t % 4 == 1 ? 50 : 100 + t;
    float r[N];
    skv_rlv_model *m = skv_rlv_model_new(1, 0);
    m->layers[0].w[SKV_RLV_LOG_FREQ] = 2;
    m->layers[0].bias = -3;
    ck_assert_int_eq(skv_rlv_layer_relevance(m, &h, &L, ids, NULL, NULL, 0, r), 0);
    for (int t = 0; t < N; t++) {
        ck_assert(r[t] > 0 && r[t] < 1);
        if (t % 4 == 1)
            ck_assert_msg(r[t] > r[0] + 0.2f, "token %d: %g vs %g", t, r[t], r[0]);
        else
            ck_assert_float_eq_tol(r[t], r[0], 1e-6);
    }
    m->layers[0].w[SKV_RLV_LOG_FREQ] = 0;
    m->layers[0].w[SKV_RLV_EMA_MEAN] = 10;
    ck_assert_int_eq(skv_rlv_layer_relevance(m, &h, &L, ids, NULL, NULL, 0, r), 0);
    for (int t = 0; t < N; t++)
        if (t != 7)
            ck_assert_msg(r[7] > r[t], "token %d: %g >= %g", t, r[t], r[7]);
    /* weights with a hidden-state term need the hidden states */
    skv_rlv_model *mh = skv_rlv_model_new(1, 4);
    ck_assert_int_lt(skv_rlv_layer_relevance(mh, &h, &L, ids, NULL, NULL, 0, r), 0);
    ck_assert_ptr_nonnull(strstr(skv_errmsg(), "hidden"));
    skv_rlv_model_free(mh);
    skv_rlv_model_free(m);
}
END_TEST

START_TEST(test_online_new_policies)
{
    static const char *pols[] = {"sliding", "dynamickv", "uncomp", "razor", "rocketkv"};
    float ind[L_ * H_] = {0.9f, 0, 0, 0, 0, 0, 0, 0}, ech[L_ * H_] = {0};
    skv_head_scores hs = {L_, H_, ind, ech};
    for (size_t pi = 0; pi < sizeof pols / sizeof *pols; pi++) {
        rng = 88172645463325252ull;
        for (int l = 0; l < L_; l++)
            for (int t = 0; t < T_; t++)
                for (int j = 0; j < KH_ * D_; j++) {
                    K[l][t][j] = frand() * 2.0f * (j % D_ < 8 ? 1.0f : 0.1f * (float)(1 + j / D_));
                    V[l][t][j] = frand();
                }
        for (int t = 0; t < T_; t++)
            for (int j = 0; j < H_ * D_; j++)
                Q[t][j] = frand();
        skv_ec_cfg c;
        skv_ec_defaults(&c);
        ck_assert_int_eq(skv_policy_parse(pols[pi], &c.alloc.policy, &c.alloc.uniform_bits), 0);
        c.alloc.budget = 0.4;
        c.alloc.heads = &hs;
        skv_kv_cache *k = skv_ec_new(&c, L_, H_, KH_, D_, T_);
        ck_assert_msg(k != NULL, "%s: %s", pols[pi], skv_errmsg());
        uint8_t gone[L_][KH_][T_];
        memset(gone, 0, sizeof gone);
        for (uint32_t p0 = 0; p0 < T_; p0 += 16) {
            for (uint32_t l = 0; l < L_; l++) {
                ck_assert_int_eq(k->ops->append(k, l, p0, 16, &K[l][p0][0], &V[l][p0][0]), 0);
                for (uint32_t h = 0; h < H_; h++)
                    ck_assert_msg(k->ops->attend(k, l, h, p0, 16, &Q[p0][h * D_], H_ * D_,
                                                 0.125f, OUT, D_, PR, T_) == 0,
                                  "%s", skv_errmsg());
            }
            if (p0 < 48)
                continue;
            ck_assert_msg(skv_ec_realloc(k) == 0, "%s: %s", pols[pi], skv_errmsg());
            skv_ec_stats st;
            ck_assert_int_eq(skv_ec_stats_get(k, &st), 0);
            ck_assert_msg((double)st.bytes <= 0.4 * (double)st.fp16_bytes + 1,
                          "%s at %u: %llu bytes, fp16 %llu", pols[pi], p0 + 16,
                          (unsigned long long)st.bytes, (unsigned long long)st.fp16_bytes);
            uint64_t kept = 0;
            for (uint32_t l = 0; l < L_; l++)
                for (uint32_t h = 0; h < KH_; h++) {
                    const uint8_t *w = skv_ec_widths(k, l, h);
                    for (uint32_t t = 0; t < p0 + 16; t++) {
                        ck_assert_msg(!(gone[l][h][t] && w[t]), "%s: token %u back", pols[pi], t);
                        gone[l][h][t] = w[t] == 0;
                        kept += w[t] != 0;
                    }
                }
            ck_assert_uint_gt(kept, 0);
        }
        if (pi == 3) { /* razor: KV head (0, 0) serves the retrieval head */
            const uint8_t *w = skv_ec_widths(k, 0, 0);
            for (uint32_t t = 0; t < T_; t++)
                ck_assert_uint_eq(w[t], 16);
        }
        skv_kv_cache_free(k);
    }
}
END_TEST

static float f16r(float x) { return skv_f16_to_f32(skv_f32_to_f16(x)); }

/* rocketkv online: a 64-token prefill, its eviction, then 16 decode rows
 * one at a time.  Every decode row of every query head attends to exactly
 * ceil(m/2) of its m held tokens (the kept ones and the pending ones up to
 * itself), those skv_rocket_select picks over the fp16 rows, and its output
 * is float64 attention over exactly them; the bytes include the page
 * bounds of every held token and stay within beta plus the pending rows. */
START_TEST(test_online_rocketkv)
{
    rng = 88172645463325252ull;
    for (int l = 0; l < L_; l++)
        for (int t = 0; t < T_; t++)
            for (int j = 0; j < KH_ * D_; j++) {
                K[l][t][j] = frand() * 2.0f;
                V[l][t][j] = frand();
            }
    for (int t = 0; t < T_; t++)
        for (int j = 0; j < H_ * D_; j++)
            Q[t][j] = frand();
    skv_ec_cfg c;
    skv_ec_defaults(&c);
    ck_assert_int_eq(skv_policy_parse("rocketkv", &c.alloc.policy, &c.alloc.uniform_bits), 0);
    c.alloc.budget = 0.45;
    skv_kv_cache *k = skv_ec_new(&c, L_, H_, KH_, D_, T_);
    ck_assert_ptr_nonnull(k);
    static float pre_out[D_ * 64], pre_pr[64 * T_];
    skv_ec_hold(k, 1);
    for (uint32_t l = 0; l < L_; l++) {
        ck_assert_int_eq(k->ops->append(k, l, 0, 64, &K[l][0][0], &V[l][0][0]), 0);
        for (uint32_t h = 0; h < H_; h++)
            ck_assert_int_eq(k->ops->attend(k, l, h, 0, 64, &Q[0][h * D_], H_ * D_, 0.125f,
                                            pre_out, D_, pre_pr, T_), 0);
    }
    skv_ec_hold(k, 0);
    ck_assert_msg(skv_ec_realloc(k) == 0, "%s", skv_errmsg());
    skv_ec_stats st;
    ck_assert_int_eq(skv_ec_stats_get(k, &st), 0);
    ck_assert_msg((double)st.bytes <= 0.45 * (double)st.fp16_bytes, "%llu of %llu",
                  (unsigned long long)st.bytes, (unsigned long long)st.fp16_bytes);
    static const float *rows[T_], *vals[T_];
    static float fk[T_][D_], fv[T_][D_];
    static uint64_t pos[T_], sel[T_];
    static char work[SKV_ROCKET_WORK_BYTES(D_, T_)];
    for (uint32_t p = 64; p < 80; p++) {
        for (uint32_t l = 0; l < L_; l++) {
            ck_assert_int_eq(k->ops->append(k, l, p, 1, &K[l][p][0], &V[l][p][0]), 0);
            for (uint32_t h = 0; h < H_; h++) {
                float out[D_], pr[T_];
                ck_assert_int_eq(k->ops->attend(k, l, h, p, 1, &Q[p][h * D_], H_ * D_, 0.125f,
                                                out, D_, pr, T_), 0);
                /* the reference */
                const uint32_t kh = h / (H_ / KH_);
                const uint8_t *w = skv_ec_widths(k, l, kh);
                uint64_t m = 0;
                for (uint32_t t = 0; t <= p; t++)
                    if (t >= 64 || w[t]) {
                        for (int j = 0; j < D_; j++) {
                            fk[m][j] = f16r(K[l][t][kh * D_ + j]);
                            fv[m][j] = f16r(V[l][t][kh * D_ + j]);
                        }
                        rows[m] = fk[m];
                        vals[m] = fv[m];
                        pos[m++] = t;
                    }
                uint64_t want = (m + 1) / 2;
                uint64_t ns = skv_rocket_select(&Q[p][h * D_], D_, rows, m, want, D_ / 4,
                                                SKV_ROCKET_PAGE, sel, work);
                ck_assert_uint_eq(ns, want);
                double sc[T_], mx = -1e300, z = 0, o[D_] = {0};
                for (uint64_t a = 0; a < ns; a++) {
                    double s = 0;
                    for (int j = 0; j < D_; j++)
                        s += (double)Q[p][h * D_ + j] * rows[sel[a]][j];
                    sc[a] = 0.125 * s;
                    mx = sc[a] > mx ? sc[a] : mx;
                }
                for (uint64_t a = 0; a < ns; a++)
                    z += (sc[a] = exp(sc[a] - mx));
                uint32_t nz = 0;
                for (uint32_t t = 0; t <= p; t++)
                    nz += pr[t] > 0;
                ck_assert_uint_eq(nz, ns);
                for (uint64_t a = 0; a < ns; a++) {
                    ck_assert_double_eq_tol(pr[pos[sel[a]]], sc[a] / z, 1e-6);
                    for (int j = 0; j < D_; j++)
                        o[j] += sc[a] / z * vals[sel[a]][j];
                }
                for (int j = 0; j < D_; j++)
                    ck_assert_double_eq_tol(out[j], o[j], 1e-5);
            }
        }
        ck_assert_int_eq(skv_ec_stats_get(k, &st), 0);
        /* pending rows are fp16 until the next allocation: the budget plus
         * their rows and pages at most */
        uint64_t pend = (uint64_t)L_ * KH_ * (p + 1 - 64);
        ck_assert_uint_le(st.bytes, (uint64_t)(0.45 * (double)((uint64_t)L_ * KH_ * 64 * D_ * 4)) +
                                        pend * (4 + 4 * D_) + 4096 + L_ * KH_ * 2 * 256);
    }
    skv_kv_cache_free(k);
}
END_TEST

int main(void)
{
    Suite *su = suite_create("seedbase");
    TCase *tc = tcase_create("seedbase");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_sliding_by_hand);
    tcase_add_test(tc, test_matrix_entropy_by_hand);
    tcase_add_test(tc, test_uncomp_by_hand);
    tcase_add_test(tc, test_dynamickv_by_hand);
    tcase_add_test(tc, test_razor_by_hand);
    tcase_add_test(tc, test_induction_rows_by_hand);
    tcase_add_test(tc, test_head_scores_file);
    tcase_add_test(tc, test_induction_model);
    tcase_add_test(tc, test_online_new_policies);
    tcase_add_test(tc, test_rocket_select_by_hand);
    tcase_add_test(tc, test_rocketkv_stage1_by_hand);
    tcase_add_test(tc, test_online_rocketkv);
    tcase_add_test(tc, test_atskv_by_hand);
    tcase_add_test(tc, test_atskv_layer_relevance);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf != 0;
}
