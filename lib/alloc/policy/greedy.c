/* greedy.c -- the original plan's rule: the most important tokens at 8
 * bits, the next 3x as many at 4, the rest at 2 (adapted to the allowed
 * widths), the thresholds moved until the budget is spent. */
#include "policy.h"

static int solve(solver *s, uint64_t limit, uint64_t *cur, double *bound)
{
    (void)bound;
    return sv_rank_policy(s, 0, limit, cur);
}

const skv_policy_def skv_policy_greedy = {
    .name = "greedy",
    .summary = "rank thresholds 8/4/2 by importance, fitted to the budget",
    .flags = SKV_PF_BUDGET | SKV_PF_PROTECT | SKV_PF_IMPORTANCE,
    .solve = solve,
};
