/* test_stats.c -- fidelity metrics and the Pareto front. */
#include "smartkv.h"

#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* 1 layer, 1 head, head_dim 2, 4 tokens, steps {3}, with probabilities. */
static skv_attn *mk(const float out[2], const float prob[4])
{
    skv_attn *a = calloc(1, sizeof *a);
    a->h.mode = SKV_ATT_REFERENCE;
    a->h.flags = SKV_ATHD_PROBS;
    a->h.n_layers = a->h.n_heads = a->h.n_kv_heads = 1;
    a->h.head_dim = 2;
    a->h.n_tokens = 4;
    ck_assert_int_eq(skv_steps_parse("LAST", 4, &a->h.steps, &a->h.n_steps), 0);
    a->out = malloc(2 * sizeof(float));
    a->prob = malloc(4 * sizeof(float));
    memcpy(a->out, out, 2 * sizeof(float));
    memcpy(a->prob, prob, 4 * sizeof(float));
    return a;
}

START_TEST(test_identical)
{
    float o[2] = {3, 4}, p[4] = {0.1f, 0.2f, 0.3f, 0.4f};
    skv_attn *a = mk(o, p), *b = mk(o, p);
    skv_compare c;
    ck_assert_int_eq(skv_attn_compare(a, b, &c), 0);
    ck_assert_double_eq(c.all.rel_l2, 0);
    ck_assert_double_eq_tol(c.all.cos, 1, 1e-12);
    ck_assert_double_eq_tol(c.all.kl, 0, 1e-12);
    for (int i = 0; i < SKV_CMP_NTOP; i++)
        ck_assert_double_eq(c.all.top[i], 1);
    ck_assert_uint_eq(c.all.n_vec, 1);
    skv_compare_free(&c);
    skv_attn_free(a);
    skv_attn_free(b);
}
END_TEST

START_TEST(test_values)
{
    /* ref (3,4), test (3,0): |d| = 4, |ref| = 5 -> rel 0.8; cos = 9/15 = 0.6 */
    float o1[2] = {3, 4}, o2[2] = {3, 0};
    float p1[4] = {0.5f, 0.25f, 0.125f, 0.125f}, p2[4] = {0.25f, 0.5f, 0.125f, 0.125f};
    skv_attn *a = mk(o1, p1), *b = mk(o2, p2);
    skv_compare c;
    ck_assert_int_eq(skv_attn_compare(a, b, &c), 0);
    ck_assert_double_eq_tol(c.all.rel_l2, 0.8, 1e-9);
    ck_assert_double_eq_tol(c.all.max_rel, 0.8, 1e-9);
    ck_assert_double_eq_tol(c.all.cos, 0.6, 1e-9);
    /* KL = 0.5 ln 2 + 0.25 ln 0.5 = 0.25 ln 2 */
    ck_assert_double_eq_tol(c.all.kl, 0.25 * log(2.0), 1e-7);
    ck_assert_double_eq(c.all.top[0], 0);      /* argmax 0 vs 1 */
    ck_assert_double_eq(c.all.top[1], 1);      /* k = 8 capped at the 4 tokens */
    ck_assert_double_eq(c.layer[0].rel_l2, c.all.rel_l2);
    skv_compare_free(&c);
    /* an evicted token the reference attends to costs p log(p / 1e-10) */
    float p3[4] = {0, 0.5f, 0.25f, 0.25f};
    skv_attn *d = mk(o1, p3);
    ck_assert_int_eq(skv_attn_compare(a, d, &c), 0);
    double want = 0.5 * log(0.5 / 1e-10) + 0.25 * log(0.25 / 0.5) + 2 * 0.125 * log(0.125 / 0.25);
    ck_assert_double_eq_tol(c.all.kl, want, 1e-5);
    skv_compare_free(&c);
    /* shape and step mismatches are refused */
    skv_attn *e = mk(o1, p1);
    e->h.steps[0] = 2;
    ck_assert_int_eq(skv_attn_compare(a, e, &c), SKV_EINVAL);
    e->h.steps[0] = 3;
    e->h.head_dim = 1;
    ck_assert_int_eq(skv_attn_compare(a, e, &c), SKV_EINVAL);
    e->h.head_dim = 2;
    /* without probabilities on one side, KL and top-k are not computed */
    free(e->prob);
    e->prob = NULL;
    ck_assert_int_eq(skv_attn_compare(a, e, &c), 0);
    ck_assert_int_eq(c.all.has_probs, 0);
    skv_compare_free(&c);
    skv_attn_free(a);
    skv_attn_free(b);
    skv_attn_free(d);
    skv_attn_free(e);
}
END_TEST

START_TEST(test_pareto)
{
    double bytes[] = {10, 20, 20, 30, 40, 15};
    double err[] = {5, 3, 4, 3, 1, 5};
    uint8_t on[6];
    ck_assert_int_eq(skv_pareto(bytes, err, 6, on), 0);
    /* 10/5 on; 20/3 on; 20/4 dominated by 20/3; 30/3 dominated by 20/3;
     * 40/1 on; 15/5 dominated by 10/5 */
    uint8_t want[] = {1, 1, 0, 0, 1, 0};
    for (int i = 0; i < 6; i++)
        ck_assert_msg(on[i] == want[i], "point %d", i);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("stats");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_identical);
    tcase_add_test(tc, test_values);
    tcase_add_test(tc, test_pareto);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf != 0;
}
