/* rocketkv.c -- RocketKV (Behnam et al. 2025, "RocketKV: Accelerating
 * Long-Context LLM Inference via Two-Stage KV Cache Compression"), stage 1:
 * at the end of the prefill a coarse SnapKV-style eviction keeps, per KV
 * head, the observation window (the last W = recent queries) and the tokens
 * with the largest votes of that window (summed over the window, the query
 * heads of a KV head folded together, max-pooled over positions as in the
 * reference implementation; kernel SKV_SNAPKV_KERNEL).  Stage 2 (hybrid
 * sparse attention at every decode step) lives in the online cache
 * (lib/eval/evalcache.c): it needs, per page of SKV_ROCKET_PAGE kept
 * tokens, the element-wise min and max of the keys; those bytes are
 * reserved here, so that cache + bounds fit the budget (aux_bytes).
 * Every KV head keeps the same count (the exact bytes decide). */
#include "votes_choose.h"

#include <stdlib.h>

static uint64_t aux_of(const solver *s, const uint64_t *k)
{
    uint64_t a = 0;
    for (uint32_t u = 0; u < s->nu; u++)
        a += SKV_ROCKET_AUX(k[u], s->q.head_dim) * s->mult;
    return a;
}

static int solve(solver *s, uint64_t limit, uint64_t *cur, double *bound)
{
    (void)bound;
    double *share = skv_malloc(s->nu * sizeof(double));
    uint64_t *k = skv_calloc(s->nu, sizeof(uint64_t));
    sv_votes v = {0};
    int rc = SKV_ENOMEM;
    if (!share || !k || sv_votes_init(s, &v, 1) < 0)
        goto out;
    for (uint32_t u = 0; u < s->nu; u++)
        share[u] = 1;
    /* the largest limit for the cache alone whose counts leave room for
     * their page bounds (both grow with the counts) */
    uint64_t a = 0, z = limit;
    while (a < z) {
        uint64_t m = a + (z - a + 1) / 2;
        if ((rc = sv_two_level_counts(s, m, share, NULL, k, cur)) < 0)
            goto out;
        if (*cur + aux_of(s, k) <= limit)
            a = m;
        else
            z = m - 1;
    }
    sv_set_all(s, 0, s->nu, s->lo);
    rc = sv_two_level_shares(s, a, cur, share, NULL, sv_votes_choose, &v);
    if (rc == 0) {
        for (uint32_t u = 0; u < s->nu; u++)
            k[u] = s->cnt[(size_t)u * SKV_NBITS + s->top];
        s->aux = aux_of(s, k);
    }
out:
    free(share);
    free(k);
    sv_votes_free(&v);
    return rc;
}

const skv_policy_def skv_policy_rocketkv = {
    .name = "rocketkv",
    .summary = "RocketKV: SnapKV-style eviction (max-pooled votes), page key bounds for top-k decode",
    .flags = SKV_PF_BUDGET | SKV_PF_EVICT | SKV_PF_IMPORTANCE | SKV_PF_VOTES,
    .solve = solve,
};
