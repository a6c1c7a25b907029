/* optimal.c -- the oracle: a Lagrangian multiple-choice knapsack over the
 * lower convex hulls of each token's (bytes, error), fixed up with exact
 * bytes, polished, and compared with smartkv's fill (the better one wins).
 * Reports the relaxation's lower bound on the objective. */
#include "policy.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct seg {
    double slope; /* importance-weighted error reduction per byte */
    double gain;  /* importance-weighted error reduction */
    double cost;  /* linear bytes */
    uint64_t item;
    uint8_t to;
} seg;

static int seg_cmp(const void *a, const void *b)
{
    const seg *x = a, *y = b;
    if (x->slope != y->slope)
        return x->slope > y->slope ? -1 : 1;
    if (x->item != y->item)
        return x->item < y->item ? -1 : 1;
    return x->to < y->to ? -1 : x->to > y->to;
}

/* The exact optimum of the linear-cost relaxation is the prefix of hull
 * segments sorted by slope (the Lagrange multiplier is the slope where the
 * budget runs out); it is a lower bound of the exact problem, and its
 * integral part, taken under a budget that reserves every bucket's fixed
 * overhead, is feasible.  The fix-up fills what is left by hull steps with
 * exact bytes. */
static int solve(solver *s, uint64_t limit, uint64_t *cur, double *bound)
{
    size_t nseg = 0, cap = (size_t)s->N * (size_t)(s->na - 1) + 1;
    seg *g = skv_malloc(cap * sizeof(seg));
    if (!g)
        return SKV_ENOMEM;
    double base = 0; /* objective of the minimal configuration */
    uint64_t lin0 = 0;
    for (uint64_t it = 0; it < s->N; it++) {
        int k = s->w[it];
        base += s->imp[it] * sv_item_err(s, it, k);
        lin0 += s->lin[s->aw[k]] * s->mult;
        if (sv_fixed(s, it))
            continue;
        double key;
        int m;
        while ((m = sv_next_step(s, it, k, 1, &key)) >= 0) {
            double gain = s->imp[it] * ((double)sv_item_err(s, it, k) - sv_item_err(s, it, m));
            double cost = (double)(s->lin[s->aw[m]] - s->lin[s->aw[k]]) * s->mult;
            g[nseg++] = (seg){gain / cost, gain, cost, it, (uint8_t)m};
            k = m;
        }
    }
    qsort(g, nseg, sizeof *g, seg_cmp);
    /* lower bound: fractional prefix under the linear budget `limit` */
    double room = (double)limit - (double)lin0, obj = base;
    for (size_t i = 0; i < nseg && room > 0; i++) {
        double f = g[i].cost <= room ? 1.0 : room / g[i].cost;
        obj -= f * g[i].gain;
        room -= f * g[i].cost;
    }
    *bound = obj;
    /* integral prefix under the budget minus every bucket's worst overhead */
    uint64_t reserve = 0;
    for (int k = 0; k < s->na; k++) {
        int wi = s->aw[k];
        if (!skv_bit_widths[wi])
            continue;
        uint64_t chunks = (s->T + s->maxtok[wi] - 1) / s->maxtok[wi];
        reserve += chunks * (SKV_CHUNK_HEADER_LEN + SKV_CHUNK_CRC_LEN + SKV_PBKT_HEADER_LEN +
                             5 * (SKV_ALIGN - 1));
    }
    reserve *= (uint64_t)s->nu * s->mult;
    double lroom = (double)limit - (double)reserve - (double)lin0;
    for (size_t i = 0; i < nseg; i++) {
        if (g[i].cost > lroom)
            break;
        lroom -= g[i].cost;
        sv_move(s, g[i].item, g[i].to);
    }
    free(g);
    *cur = sv_bytes_of(s, 0, s->nu);
    if (*cur > limit) /* cannot happen: the reserve covers all overhead */
        return skv_error(SKV_EINVAL, "optimal: reserved overhead exceeded");
    int rc = sv_heap_fill(s, 0, s->nu, cur, limit, 1);
    if (rc == 0)
        rc = sv_polish(s, limit, cur, 64);
    if (rc < 0)
        return rc;
    /* the marginal-gain fill from the minimum, polished, is a second
     * candidate: keep whichever is better, so the oracle is never beaten by
     * smartkv on the lumps */
    uint8_t *keep = skv_malloc(s->N ? s->N : 1);
    uint64_t *kcnt = skv_malloc((size_t)s->nu * SKV_NBITS * sizeof(uint64_t));
    if (!keep || !kcnt) {
        free(keep);
        free(kcnt);
        return SKV_ENOMEM;
    }
    memcpy(keep, s->w, s->N);
    memcpy(kcnt, s->cnt, (size_t)s->nu * SKV_NBITS * sizeof(uint64_t));
    uint64_t kcur = *cur;
    double kobj = sv_objective(s);
    *cur = sv_set_min(s, 0, s->nu);
    rc = sv_heap_fill(s, 0, s->nu, cur, limit, 0);
    if (rc == 0)
        rc = sv_polish(s, limit, cur, 64);
    if (rc == 0 && sv_objective(s) >= kobj) {
        memcpy(s->w, keep, s->N);
        memcpy(s->cnt, kcnt, (size_t)s->nu * SKV_NBITS * sizeof(uint64_t));
        *cur = kcur;
    }
    free(keep);
    free(kcnt);
    return rc;
}


const skv_policy_def skv_policy_optimal = {
    .name = "optimal",
    .summary = "Lagrangian knapsack over convex hulls + fix-up (oracle, reports a bound)",
    .flags = SKV_PF_BUDGET | SKV_PF_PROTECT | SKV_PF_IMPORTANCE,
    .solve = solve,
};
