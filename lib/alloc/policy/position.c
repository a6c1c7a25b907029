/* position.c -- greedy's 8/4/2 ladder ranked by position instead of
 * importance: the newest tokens get the widest codes (a recency baseline
 * that needs no attention). */
#include "policy.h"

static int solve(solver *s, uint64_t limit, uint64_t *cur, double *bound)
{
    (void)bound;
    return sv_rank_policy(s, 1, limit, cur);
}

const skv_policy_def skv_policy_position = {
    .name = "position",
    .summary = "newest tokens highest (greedy's ladder by position)",
    .flags = SKV_PF_BUDGET | SKV_PF_PROTECT,
    .solve = solve,
};
