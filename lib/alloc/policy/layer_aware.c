/* layer_aware.c -- per-layer budgets from attention entropy: the room above
 * the minimum is water-filled across layers in proportion to their mean
 * attention entropy (capped at what a layer can use), each layer filled by
 * marginal gain, and what is left spent by a final global pass. */
#include "policy.h"

#include <math.h>
#include <stdlib.h>

static int solve(solver *s, uint64_t limit, uint64_t *cur, double *bound)
{
    (void)bound;
    const uint32_t L = s->L, H = s->H;
    double *wt = skv_calloc(L, sizeof(double));
    uint64_t *mn = skv_calloc(L, sizeof(uint64_t)), *mx = skv_calloc(L, sizeof(uint64_t));
    double *share = skv_calloc(L, sizeof(double));
    uint8_t *capped = skv_calloc(L, 1);
    int rc = SKV_ENOMEM;
    if (!wt || !mn || !mx || !share || !capped)
        goto out;
    uint64_t summin = 0;
    for (uint32_t l = 0; l < L; l++) {
        mx[l] = sv_set_all(s, l * H, (l + 1) * H, s->top);
        mn[l] = sv_set_min(s, l * H, (l + 1) * H);
        summin += mn[l];
        double e = 0;
        for (uint32_t h = 0; h < H; h++)
            e += s->p->entropy ? fmax(0.0, (double)s->p->entropy[l * H + h]) : 1.0;
        wt[l] = e / H + 1e-12;
    }
    /* water-filling: the room above the minimum, split by entropy, capped at
     * what a layer can use */
    double left = (double)(limit - summin);
    for (int iter = 0; iter < (int)L + 1 && left > 0.5; iter++) {
        double wsum = 0;
        for (uint32_t l = 0; l < L; l++)
            if (!capped[l])
                wsum += wt[l];
        if (wsum <= 0)
            break;
        double given = 0;
        for (uint32_t l = 0; l < L; l++) {
            if (capped[l])
                continue;
            double add = left * wt[l] / wsum, room = (double)(mx[l] - mn[l]) - share[l];
            if (add >= room) {
                add = room;
                capped[l] = 1;
            }
            share[l] += add;
            given += add;
        }
        left -= given;
    }
    *cur = summin;
    for (uint32_t l = 0; l < L; l++) {
        uint64_t cl = mn[l];
        if ((rc = sv_heap_fill(s, l * H, (l + 1) * H, &cl, mn[l] + (uint64_t)share[l], 0)) < 0)
            goto out;
        *cur += cl - mn[l];
    }
    /* what the per-layer budgets left over goes to a final global pass */
    rc = sv_heap_fill(s, 0, s->nu, cur, limit, 0);
out:
    free(wt);
    free(mn);
    free(mx);
    free(share);
    free(capped);
    return rc;
}


const skv_policy_def skv_policy_layer_aware = {
    .name = "layer-aware",
    .summary = "per-layer budgets from attention entropy, marginal gain within",
    .flags = SKV_PF_BUDGET | SKV_PF_PROTECT | SKV_PF_IMPORTANCE | SKV_PF_ENTROPY | SKV_PF_PER_LAYER,
    .solve = solve,
};
