/* mikv.c -- MiKV (Yang et al. 2024, "No Token Left Behind: Reliable KV
 * Cache Compression via Importance-Aware Mixed Precision Quantization"):
 * H2O's choice of important tokens (heavy hitters by accumulated attention
 * plus a recent window, half each) kept at the top width, and the tokens H2O
 * would evict kept at the lowest allowed non-zero width (2 bits by default)
 * instead of dropped.  MiKV's outlier-aware channel balancing of the
 * low-precision part is not modelled: the low width uses the cache's
 * quantizer (per-token groups). */
#include "policy.h"

#include "h2o_choose.h"

static int solve(solver *s, uint64_t limit, uint64_t *cur, double *bound)
{
    (void)bound;
    return sv_solve_h2o(s, limit, cur);
}

const skv_policy_def skv_policy_mikv = {
    .name = "mikv",
    .summary = "MiKV: h2o's important tokens at the top width, the others at the lowest",
    .flags = SKV_PF_BUDGET | SKV_PF_LOWBIT | SKV_PF_IMPORTANCE | SKV_PF_CUMULATIVE,
    .solve = solve,
};
