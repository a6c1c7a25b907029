/* atskv.c -- ATSKV offline (the seeds' "learned token relevance, adaptive
 * thresholds, two tiers"; the online cache is lib/eval/atskv.c): the
 * importance is the learned relevance r = sigmoid(w . [h; a; f] + b) of
 * skv-alloc train's weights at the trace's end (SKV_PF_RELEVANCE:
 * skv_alloc_filter computes it from the trace's attention, token ids and
 * hidden states).  Each (layer, KV head) keeps its sinks and recent tokens,
 * then the tokens whose relevance is above its threshold
 * tau = beta_l * quantile({r_i}, q) with beta_l = 1 and q = 1 - k/T, the
 * fixed point of the online cache's quantile controller for k kept tokens
 * (k: what the budget allows, as for the other eviction policies), the
 * largest r first, at most k; the rest are evicted (the passive tier,
 * which holds no bytes of the cache). */
#include "policy.h"

#include <math.h>
#include <stdlib.h>

typedef struct rrank {
    double r;
    uint64_t j;
} rrank;

static int rrank_desc(const void *a, const void *b)
{
    const rrank *x = a, *y = b;
    if (x->r != y->r)
        return x->r > y->r ? -1 : 1;
    return x->j > y->j ? -1 : x->j < y->j; /* ties: newer first */
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct ctx {
    rrank *rk;
    double *srt;
} ctx;

static void choose(const solver *s, uint32_t u, uint64_t k, uint8_t *keep, void *vc)
{
    ctx *c = vc;
    const uint64_t base = (uint64_t)u * s->T, T = s->T;
    uint64_t n = 0;
    /* protected: the sinks, then the newest tokens */
    for (uint64_t j = 0; j < T && j < s->cfg->sinks && n < k; j++)
        if (sv_keepable(s, base + j)) {
            keep[j] = 1;
            n++;
        }
    for (uint64_t j = T, r = 0; j-- > 0 && r < s->cfg->recent && n < k; r++)
        if (!keep[j] && sv_keepable(s, base + j)) {
            keep[j] = 1;
            n++;
        }
    if (n >= k || !T)
        return;
    /* tau = quantile(r, 1 - k/T) over the unit's tokens */
    for (uint64_t j = 0; j < T; j++)
        c->srt[j] = s->imp[base + j];
    qsort(c->srt, T, sizeof *c->srt, cmp_d);
    double q = 1.0 - (double)k / (double)T;
    uint64_t qi = (uint64_t)floor(q * (double)(T - 1) + 0.5);
    double tau = c->srt[qi];
    uint64_t m = 0;
    for (uint64_t j = 0; j < T; j++)
        if (!keep[j] && sv_keepable(s, base + j))
            c->rk[m++] = (rrank){s->imp[base + j], j};
    qsort(c->rk, m, sizeof *c->rk, rrank_desc);
    for (uint64_t i = 0; i < m && n < k && c->rk[i].r > tau; i++, n++)
        keep[c->rk[i].j] = 1;
    /* ties at tau: the largest r left fill what the budget still allows */
    for (uint64_t i = 0; i < m && n < k; i++)
        if (!keep[c->rk[i].j]) {
            keep[c->rk[i].j] = 1;
            n++;
        }
}

static int solve(solver *s, uint64_t limit, uint64_t *cur, double *bound)
{
    (void)bound;
    ctx c = {skv_malloc((s->T ? s->T : 1) * sizeof(rrank)),
             skv_malloc((s->T ? s->T : 1) * sizeof(double))};
    int rc = c.rk && c.srt ? sv_two_level(s, limit, cur, choose, &c) : SKV_ENOMEM;
    free(c.rk);
    free(c.srt);
    return rc;
}

const skv_policy_def skv_policy_atskv = {
    .name = "atskv",
    .summary = "ATSKV: sinks, recent, then learned relevance above an adaptive threshold "
               "(--weights), rest evicted",
    .flags = SKV_PF_BUDGET | SKV_PF_EVICT | SKV_PF_IMPORTANCE | SKV_PF_RELEVANCE,
    .solve = solve,
};
