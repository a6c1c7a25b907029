/* smartkv.c -- the method: a max-heap of marginal gains.
 *
 * From the minimum, repeatedly take the single-width step (one token, one
 * allowed width up) with the largest importance-weighted error reduction
 * per byte that still fits the exact budget. */
#include "policy.h"

static int solve(solver *s, uint64_t limit, uint64_t *cur, double *bound)
{
    (void)bound;
    return sv_heap_fill(s, 0, s->nu, cur, limit, 0);
}

const skv_policy_def skv_policy_smartkv = {
    .name = "smartkv",
    .summary = "marginal gain: the step with the most error saved per byte first",
    .flags = SKV_PF_BUDGET | SKV_PF_PROTECT | SKV_PF_IMPORTANCE,
    .solve = solve,
};
