/* sliding.c -- sliding-window attention as a cache policy (the baseline of
 * StreamingLLM's paper, Xiao et al. 2024, "window attention"; and of the
 * seeds): every (layer, KV head) keeps only its most recent tokens, as many
 * as the budget allows, with no attention sinks; everything older is
 * evicted.  No attention is read.  Online an evicted token never comes
 * back. */
#include "policy.h"

static void choose(const solver *s, uint32_t u, uint64_t k, uint8_t *keep, void *ctx)
{
    (void)ctx;
    uint64_t n = 0, base = (uint64_t)u * s->T;
    for (uint64_t j = s->T; j-- > 0 && n < k;)
        if (sv_keepable(s, base + j)) {
            keep[j] = 1;
            n++;
        }
}

static int solve(solver *s, uint64_t limit, uint64_t *cur, double *bound)
{
    (void)bound;
    return sv_two_level(s, limit, cur, choose, NULL);
}

const skv_policy_def skv_policy_sliding = {
    .name = "sliding",
    .summary = "sliding window: the longest recent window the budget allows, no sinks, rest evicted",
    .flags = SKV_PF_BUDGET | SKV_PF_EVICT,
    .solve = solve,
};
