/* uncomp.c -- UNComp (Xiong et al. 2024, "UNComp: Uncertainty-Aware
 * Long-Context Compressor for Efficient Large Language Model Inference"):
 * the uncertainty of a head is the matrix entropy of its keys
 * (kentropy.c: the eigenvalue entropy of the normalised keys' covariance);
 * a head of low entropy spans few directions and is compressed harder.
 * Here each (layer, KV head) keeps tokens in proportion to its effective
 * rank exp(H) (the number of directions its keys span), and chooses them as
 * SnapKV does (the window plus the top pooled votes of the last W queries,
 * W = the recent window).  What is not modelled: UNComp's truncation of
 * the spectrum, its grouping of heads into a few discrete compression
 * ratios, and its compression of the hidden states during the prefill (a
 * speed measure that does not change the cache).  Online the entropy is over
 * every key allocated so far (a Gram matrix per head, counted as tracking
 * state). */
#include "votes_choose.h"

#include <math.h>
#include <stdlib.h>

static int solve(solver *s, uint64_t limit, uint64_t *cur, double *bound)
{
    (void)bound;
    if (!s->p->kentropy)
        return skv_error(SKV_EINVAL, "uncomp needs the matrix entropy of the keys");
    double *share = skv_calloc(s->nu, sizeof(double));
    sv_votes v = {0};
    int rc = SKV_ENOMEM;
    if (share && sv_votes_init(s, &v, 0) == 0) {
        for (uint32_t u = 0; u < s->nu; u++) {
            double h = s->p->kentropy[u];
            share[u] = exp(isfinite(h) && h > 0 ? h : 0);
        }
        rc = sv_two_level_shares(s, limit, cur, share, NULL, sv_votes_choose, &v);
    }
    free(share);
    sv_votes_free(&v);
    return rc;
}

const skv_policy_def skv_policy_uncomp = {
    .name = "uncomp",
    .summary = "UNComp: head budgets by the keys' matrix entropy (effective rank), SnapKV-style choice",
    .flags = SKV_PF_BUDGET | SKV_PF_EVICT | SKV_PF_IMPORTANCE | SKV_PF_VOTES | SKV_PF_PER_LAYER |
             SKV_PF_KENTROPY,
    .solve = solve,
};
