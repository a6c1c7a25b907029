/* snapkv.c -- SnapKV (Li et al. 2024, "SnapKV: LLM Knows What You Are
 * Looking For Before Generation"), following FasterDecoding/SnapKV's
 * update_kv: the last W queries (the observation window, W = the recent
 * window, 32 by default as in the reference) vote for earlier tokens with
 * their attention summed over the window (SKV_PF_VOTES; the query heads of a
 * KV head folded by their mean); the votes of the tokens before the window
 * are pooled over positions (avg_pool1d, kernel SKV_SNAPKV_KERNEL = 5,
 * stride 1, zero padding, divided by the kernel); each head keeps the
 * window plus the top-voted earlier tokens, as many as the budget allows,
 * the rest evicted.  SnapKV requires a capacity above W; where the budget
 * keeps k < 2W tokens, the window kept is the newest ceil(k/2) (the votes
 * still come from the last W queries).  Online the compression happens at every allocation
 * (after a prefill, SnapKV's own point, and every R tokens afterwards, where
 * the tokens decoded since the last one are kept at fp16 until then); the
 * pooling runs over token positions, evicted tokens voting 0. */
#include "votes_choose.h"

#include <stdlib.h>
#include <string.h>

int sv_rank_desc(const void *a, const void *b)
{
    const sv_rank *x = a, *y = b;
    if (x->key != y->key)
        return x->key > y->key ? -1 : 1;
    return x->j > y->j ? -1 : x->j < y->j; /* ties: newer first */
}

int sv_votes_init(const solver *s, sv_votes *v, int maxpool)
{
    v->maxpool = maxpool;
    v->r = skv_malloc((s->T ? s->T : 1) * sizeof(sv_rank));
    v->pool = skv_malloc((s->T ? s->T : 1) * sizeof(double));
    if (v->r && v->pool)
        return 0;
    sv_votes_free(v);
    return SKV_ENOMEM;
}

void sv_votes_free(sv_votes *v)
{
    free(v->r);
    free(v->pool);
    v->r = NULL;
    v->pool = NULL;
}

uint64_t sv_votes_window(const solver *s, uint64_t k)
{
    /* SnapKV needs a capacity above W, so below 2W kept tokens the window
     * kept is half of them */
    return k >= 2 * (uint64_t)s->cfg->recent ? s->cfg->recent : (k + 1) / 2;
}

void sv_votes_pool(const solver *s, uint32_t u, uint64_t p, int maxpool, double *pool)
{
    const uint64_t base = (uint64_t)u * s->T;
    const int h = SKV_SNAPKV_KERNEL / 2;
    for (uint64_t j = 0; j < p; j++) {
        double a = 0;
        for (int o = -h; o <= h; o++) {
            int64_t t = (int64_t)j + o;
            double x = t >= 0 && (uint64_t)t < p ? s->p->importance[base + (uint64_t)t] : 0;
            a = maxpool ? (x > a ? x : a) : a + x;
        }
        pool[j] = maxpool ? a : a / SKV_SNAPKV_KERNEL;
    }
}

void sv_votes_choose(const solver *s, uint32_t u, uint64_t k, uint8_t *keep, void *vc)
{
    sv_votes *c = vc;
    const uint64_t T = s->T, base = (uint64_t)u * T, W = sv_votes_window(s, k);
    uint64_t n = 0, p = T;
    while (p > 0 && T - p < W && n < k) {
        p--;
        if (sv_keepable(s, base + p)) {
            keep[p] = 1;
            n++;
        }
    }
    if (n >= k)
        return;
    sv_votes_pool(s, u, p, c->maxpool, c->pool);
    uint64_t m = 0;
    for (uint64_t j = 0; j < p; j++)
        if (sv_keepable(s, base + j))
            c->r[m++] = (sv_rank){c->pool[j], j};
    qsort(c->r, m, sizeof *c->r, sv_rank_desc);
    for (uint64_t i = 0; i < m && n < k; i++, n++)
        keep[c->r[i].j] = 1;
}

static int solve(solver *s, uint64_t limit, uint64_t *cur, double *bound)
{
    (void)bound;
    sv_votes v;
    int rc = sv_votes_init(s, &v, 0);
    if (rc == 0)
        rc = sv_two_level(s, limit, cur, sv_votes_choose, &v);
    sv_votes_free(&v);
    return rc;
}

const skv_policy_def skv_policy_snapkv = {
    .name = "snapkv",
    .summary = "SnapKV: window + top pooled votes of the last W queries, rest evicted",
    .flags = SKV_PF_BUDGET | SKV_PF_EVICT | SKV_PF_IMPORTANCE | SKV_PF_VOTES,
    .solve = solve,
};
