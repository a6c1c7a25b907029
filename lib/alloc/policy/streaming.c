/* streaming.c -- StreamingLLM (Xiao et al. 2024, "Efficient Streaming
 * Language Models with Attention Sinks"): the first `sinks` tokens (the
 * attention sinks, 4 in the paper) plus a window of the most recent tokens,
 * everything else evicted.  The window is as long as the budget allows
 * (every (layer, KV head) keeps the same number of tokens, at the top
 * allowed width, 16 by default); no attention is read. */
#include "policy.h"

static int solve(solver *s, uint64_t limit, uint64_t *cur, double *bound)
{
    (void)bound;
    return sv_two_level(s, limit, cur, sv_choose_sinks_recent, NULL);
}

const skv_policy_def skv_policy_streaming = {
    .name = "streaming",
    .summary = "StreamingLLM: sinks + the longest recent window the budget allows, rest evicted",
    .flags = SKV_PF_BUDGET | SKV_PF_EVICT,
    .solve = solve,
};
