/* h2o.c -- H2O (Zhang et al. 2023, "H2O: Heavy-Hitter Oracle for
 * Efficient Generative Inference of Large Language Models"): each head
 * keeps a recent window and the heavy hitters, the tokens with the largest
 * accumulated attention (the sum over every query so far, SKV_PF_CUMULATIVE;
 * the query heads of a KV head folded by their mean), the rest evicted.
 * The kept tokens are split half and half between the two, as in the
 * paper's experiments (heavy ratio = recent ratio); their number is what the
 * budget allows.  Online, an evicted token never comes back (H2O's greedy
 * eviction); the allocation is redone every R tokens instead of every
 * token. */
#include "policy.h"

#include "h2o_choose.h"

#include <stdlib.h>

typedef struct rank {
    double key;
    uint64_t j;
} rank;

static int rank_desc(const void *a, const void *b)
{
    const rank *x = a, *y = b;
    if (x->key != y->key)
        return x->key > y->key ? -1 : 1;
    return x->j > y->j ? -1 : x->j < y->j; /* ties: newer first */
}

static void choose(const solver *s, uint32_t u, uint64_t k, uint8_t *keep, void *ctx)
{
    rank *r = ctx;
    const uint64_t base = (uint64_t)u * s->T;
    uint64_t n = 0, recent = k - k / 2;
    for (uint64_t j = s->T; j-- > 0 && n < recent;)
        if (sv_keepable(s, base + j)) {
            keep[j] = 1;
            n++;
        }
    uint64_t m = 0;
    for (uint64_t j = 0; j < s->T; j++)
        if (!keep[j] && sv_keepable(s, base + j))
            r[m++] = (rank){s->imp[base + j], j};
    qsort(r, m, sizeof *r, rank_desc);
    for (uint64_t i = 0; i < m && n < k; i++, n++)
        keep[r[i].j] = 1;
}

int sv_solve_h2o(solver *s, uint64_t limit, uint64_t *cur)
{
    rank *r = skv_malloc((s->T ? s->T : 1) * sizeof *r);
    if (!r)
        return SKV_ENOMEM;
    int rc = sv_two_level(s, limit, cur, choose, r);
    free(r);
    return rc;
}

static int solve(solver *s, uint64_t limit, uint64_t *cur, double *bound)
{
    (void)bound;
    return sv_solve_h2o(s, limit, cur);
}

const skv_policy_def skv_policy_h2o = {
    .name = "h2o",
    .summary = "H2O: heavy hitters by accumulated attention + recent window (half each), rest evicted",
    .flags = SKV_PF_BUDGET | SKV_PF_EVICT | SKV_PF_IMPORTANCE | SKV_PF_CUMULATIVE,
    .solve = solve,
};
