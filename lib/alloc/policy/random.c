/* random.c -- the control: smartkv's widths, shuffled among the
 * unprotected tokens of each unit (same histogram, same bytes, no
 * attention), with a seeded splitmix64. */
#include "policy.h"

#include <stdlib.h>

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void shuffle_units(solver *s, uint64_t seed)
{
    uint64_t st = seed ^ 0x5348554646ull;
    uint64_t *idx = NULL;
    for (uint32_t u = 0; u < s->nu; u++) {
        uint8_t *w = s->w + (size_t)u * s->T;
        /* Fisher-Yates over the unprotected tokens (the protected keep the top) */
        uint64_t n = 0;
        for (uint64_t j = 0; j < s->T; j++)
            n += !sv_fixed(s, (uint64_t)u * s->T + j);
        if (!idx && !(idx = skv_malloc((s->T ? s->T : 1) * sizeof(uint64_t))))
            return; /* cannot happen in practice; leaves smartkv's order */
        n = 0;
        for (uint64_t j = 0; j < s->T; j++)
            if (!sv_fixed(s, (uint64_t)u * s->T + j))
                idx[n++] = j;
        for (uint64_t i = n; i > 1; i--) {
            uint64_t k = splitmix(&st) % i;
            uint8_t t = w[idx[i - 1]];
            w[idx[i - 1]] = w[idx[k]];
            w[idx[k]] = t;
        }
    }
    free(idx);
}

static int solve(solver *s, uint64_t limit, uint64_t *cur, double *bound)
{
    (void)bound;
    int rc = sv_heap_fill(s, 0, s->nu, cur, limit, 0);
    if (rc == 0)
        shuffle_units(s, s->cfg->seed);
    return rc;
}

const skv_policy_def skv_policy_random = {
    .name = "random",
    .summary = "smartkv's width histogram shuffled over the tokens (control)",
    .flags = SKV_PF_BUDGET | SKV_PF_PROTECT | SKV_PF_IMPORTANCE,
    .solve = solve,
};
