/* razor.c -- RazorAttention (Tang et al. 2024, "RazorAttention: Efficient
 * KV Cache Compression Through Retrieval Heads"): the retrieval heads (the
 * induction and echo heads found by the model's attention on a repeated
 * random sequence, skv_razor_mask) keep their whole cache; every other head
 * keeps the attention sinks (--sinks, 4) and a recent window, as long as the
 * bytes left allow (equal across those heads).  Retrieval KV heads are
 * served first; a budget too small for all of them leaves each the same
 * count of sinks and recent tokens.  RazorAttention's compensation token
 * (the mean of the dropped tokens, one per head) is not modelled. */
#include "policy.h"

#include <stdlib.h>

static int solve(solver *s, uint64_t limit, uint64_t *cur, double *bound)
{
    (void)bound;
    if (!s->cfg->heads)
        return skv_error(SKV_EINVAL, "razor needs head scores (--heads FILE, from skv-trace heads)");
    uint8_t *mask = skv_malloc(s->nu);
    double *share = skv_calloc(s->nu, sizeof(double));
    int rc = SKV_ENOMEM;
    if (mask && share && (rc = skv_razor_mask(s->cfg->heads, s->L, s->H, mask)) == 0) {
        for (uint32_t u = 0; u < s->nu; u++)
            share[u] = mask[u] ? 1e9 : 1.0; /* retrieval heads first */
        rc = sv_two_level_shares(s, limit, cur, share, NULL, sv_choose_sinks_recent, NULL);
    }
    free(mask);
    free(share);
    return rc;
}

const skv_policy_def skv_policy_razor = {
    .name = "razor",
    .summary = "RazorAttention: retrieval heads (induction/echo) keep all, others sinks + recent",
    .flags = SKV_PF_BUDGET | SKV_PF_EVICT | SKV_PF_PER_LAYER | SKV_PF_HEADS,
    .solve = solve,
};
