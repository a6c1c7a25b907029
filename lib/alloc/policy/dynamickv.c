/* dynamickv.c -- DynamicKV (Zhou et al. 2024, "DynamicKV: Task-Aware
 * Adaptive KV Cache Compression for Long Context LLMs"): the number of
 * tokens kept differs per layer and follows where the recent queries'
 * attention concentrates.  As in the paper, with the budget as a mean of bs
 * tokens per head (here: what the bytes allow with equal counts) and a
 * per-layer maximum of r_max * bs tokens per head:
 *   1. every head scores its tokens by the attention of the last W queries
 *      (the observation window, W = the recent window, SKV_PF_VOTES; the
 *      query heads of a KV head folded by their mean), max-pooled over
 *      positions (kernel SKV_SNAPKV_KERNEL; the authors' released
 *      configuration is max pooling);
 *   2. each head offers its top r_max * bs - W scores before the window;
 *   3. over all layers the top (bs - W) * heads of these scores are taken,
 *      and a layer's budget is the window plus its share of them (the count
 *      of the layer's scores among the top, divided by its heads);
 *   4. each head keeps the window and its top pooled scores, as many as its
 *      layer's budget (the bytes: exact, solver.h).
 * The paper's progressive update (re-trimming earlier layers every m layers
 * during the prefill) is a way of computing step 3 layer by layer; with the
 * whole trace at hand the final update is computed at once.  r_max = 2
 * (DKV_RMAX; our choice: the reference code's value was not available).
 * Online the allocation is redone every R tokens, evicted tokens staying
 * gone. */
#include "votes_choose.h"

#include <math.h>
#include <stdlib.h>

#define DKV_RMAX 2.0

typedef struct cand {
    double v;
    uint32_t layer;
} cand;

static int cand_desc(const void *a, const void *b)
{
    const cand *x = a, *y = b;
    if (x->v != y->v)
        return x->v > y->v ? -1 : 1;
    return (x->layer > y->layer) - (x->layer < y->layer); /* ties: lower layer first */
}

static int solve(solver *s, uint64_t limit, uint64_t *cur, double *bound)
{
    (void)bound;
    const uint32_t nu = s->nu, H = s->H, L = s->L;
    const uint64_t T = s->T;
    double *share = skv_calloc(nu, sizeof(double));
    uint64_t *k = skv_calloc(nu, sizeof(uint64_t)), *cap = skv_calloc(nu, sizeof(uint64_t));
    uint64_t *cnt = skv_calloc(L, sizeof(uint64_t));
    cand *c = NULL;
    sv_votes v = {0};
    int rc = SKV_ENOMEM;
    if (!share || !k || !cap || !cnt || sv_votes_init(s, &v, 1) < 0)
        goto out;
    /* the mean budget bs: equal counts that fit */
    for (uint32_t u = 0; u < nu; u++)
        share[u] = 1;
    if ((rc = sv_two_level_counts(s, limit, share, NULL, k, cur)) < 0)
        goto out;
    uint64_t total = 0;
    for (uint32_t u = 0; u < nu; u++)
        total += k[u];
    const double bs = (double)total / nu;
    const uint64_t W = sv_votes_window(s, (uint64_t)bs);
    uint64_t per = (uint64_t)ceil(DKV_RMAX * bs);
    per = per > W ? per - W : 0;
    rc = SKV_ENOMEM;
    if (!(c = skv_malloc((size_t)(nu * (per < T ? per : T) + 1) * sizeof(cand))))
        goto out;
    uint64_t nc = 0;
    for (uint32_t u = 0; u < nu; u++) {
        const uint64_t p = T > W ? T - W : 0, base = (uint64_t)u * T;
        sv_votes_pool(s, u, p, 1, v.pool);
        uint64_t m = 0;
        for (uint64_t j = 0; j < p; j++)
            if (sv_keepable(s, base + j))
                v.r[m++] = (sv_rank){v.pool[j], j};
        qsort(v.r, m, sizeof *v.r, sv_rank_desc);
        for (uint64_t i = 0; i < m && i < per; i++)
            c[nc++] = (cand){v.r[i].key, u / H};
    }
    qsort(c, nc, sizeof *c, cand_desc);
    uint64_t want = total > (uint64_t)nu * W ? total - (uint64_t)nu * W : 0;
    for (uint64_t i = 0; i < nc && i < want; i++)
        cnt[c[i].layer]++;
    for (uint32_t u = 0; u < nu; u++) {
        const uint32_t layer = u / H;
        share[u] = (double)W + (double)cnt[layer] / (double)H;
        cap[u] = W + per;
    }
    rc = sv_two_level_shares(s, limit, cur, share, cap, sv_votes_choose, &v);
out:
    free(share);
    free(k);
    free(cap);
    free(cnt);
    free(c);
    sv_votes_free(&v);
    return rc;
}

const skv_policy_def skv_policy_dynamickv = {
    .name = "dynamickv",
    .summary = "DynamicKV: per-layer budgets from the window's top-k attention, SnapKV-style choice",
    .flags = SKV_PF_BUDGET | SKV_PF_EVICT | SKV_PF_IMPORTANCE | SKV_PF_VOTES | SKV_PF_PER_LAYER,
    .solve = solve,
};
