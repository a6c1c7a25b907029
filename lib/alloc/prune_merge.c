/* prune_merge.c -- prune-merge offline: which tokens each (layer, KV head)
 * keeps, the others left to skv-quant to merge into centroids (the ALHD
 * merge flag); see skv_alloc_cfg in smartkv_alloc.h.  The decode-loop
 * version, which prunes every P tokens, is lib/eval/merge.c. */
#include "smartkv_alloc.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct pm_rank {
    float key;
    uint32_t t;
} pm_rank;

static int rank_desc(const void *a, const void *b)
{
    const pm_rank *x = a, *y = b;
    if (x->key != y->key)
        return x->key > y->key ? -1 : 1;
    return (x->t < y->t) - (x->t > y->t); /* ties: newer first */
}

static uint32_t top_width(uint32_t mask)
{
    for (int i = SKV_NBITS - 1; i > 0; i--)
        if (mask & (1u << skv_bit_widths[i]))
            return skv_bit_widths[i];
    return 0;
}

/* Bytes of the CNTR chunks the widths in bits will get. */
static uint64_t cntr_bytes(const skv_alloc_cfg *cfg, const skv_alloc_problem *p,
                           const uint8_t *bits, uint32_t top)
{
    uint64_t b = 0;
    for (size_t u = 0; cfg->pm_clusters && u < (size_t)p->n_layers * p->n_kv_heads; u++) {
        uint64_t n0 = 0;
        for (uint64_t t = 0; t < p->n_tokens; t++)
            n0 += bits[u * p->n_tokens + t] == 0;
        b += skv_cntr_file_bytes(&cfg->qcfg, top, n0 < cfg->pm_clusters ? n0 : cfg->pm_clusters);
    }
    return b;
}

int skv_pm_alloc(const skv_alloc_cfg *cfg, const skv_alloc_problem *p, uint8_t *bits,
                 skv_alloc_result *res)
{
    const uint64_t T = p->n_tokens;
    const size_t U = (size_t)p->n_layers * p->n_kv_heads;
    const skv_qcfg *q = &cfg->qcfg;
    int rc = skv_qcfg_check(q);
    if (rc < 0)
        return rc;
    const uint32_t top = top_width(cfg->width_mask);
    if (!top)
        return skv_error(SKV_EINVAL, "prune-merge needs a non-zero width in --bits");
    if (cfg->pm_clusters > SKV_CNTR_MAX ||
        skv_cntr_payload_bytes(q, top, cfg->pm_clusters) > SKV_CHUNK_MAX)
        return skv_error(SKV_EINVAL, "%u clusters at %u bits do not fit one chunk",
                         cfg->pm_clusters, top);
    memset(res, 0, sizeof *res);
    res->fp16_bytes = skv_alloc_fp16_bytes(p->n_layers, p->n_kv_heads, T, q->head_dim);
    if (cfg->budget > 0) {
        double b = floor(cfg->budget * (double)res->fp16_bytes);
        res->budget_bytes = b >= 1.8e19 ? UINT64_MAX : (uint64_t)b;
    }
    uint64_t nprot = 0;
    for (uint64_t t = 0; t < T; t++)
        nprot += t < cfg->sinks || t + cfg->recent >= T;
    /* centroid bytes per head at most (every prunable token evicted) */
    uint64_t kmax = T - nprot < cfg->pm_clusters ? T - nprot : cfg->pm_clusters;
    uint64_t cb = skv_cntr_file_bytes(q, top, kmax);
    uint64_t pkhd = skv_alloc_pkhd_bytes(q);
    res->min_bytes = pkhd + U * (skv_bucket_file_bytes(q, top, nprot) + cb);
    uint64_t B = cfg->pm_max_cache;
    if (!B && cfg->budget >= 1) {
        B = T;
    } else if (!B) {
        /* the most kept rows per head at the top width within the budget */
        if (res->budget_bytes < res->min_bytes)
            return skv_error(SKV_EINVAL, "beta %g is below the smallest prune-merge cache, "
                             "beta %.6f (the sinks and recent tokens at %u bits and %llu "
                             "centroids per head)", cfg->budget,
                             (double)res->min_bytes / (double)res->fp16_bytes, top,
                             (unsigned long long)kmax);
        uint64_t per = (res->budget_bytes - pkhd) / U - cb, lo = nprot, hi = T;
        while (lo < hi) {
            uint64_t mid = lo + (hi - lo + 1) / 2;
            if (skv_bucket_file_bytes(q, top, mid) <= per)
                lo = mid;
            else
                hi = mid - 1;
        }
        B = lo - nprot;
    }
    pm_rank *r = skv_malloc((T ? T : 1) * sizeof *r);
    if (!r)
        return SKV_ENOMEM;
    for (size_t u = 0; u < U; u++) {
        uint8_t *b = bits + u * T;
        const float *imp = p->importance + u * T;
        uint64_t m = 0;
        for (uint64_t t = 0; t < T; t++) {
            int prot = t < cfg->sinks || t + cfg->recent >= T;
            b[t] = prot ? (uint8_t)top : 0;
            if (!prot)
                r[m++] = (pm_rank){imp[t], (uint32_t)t};
        }
        qsort(r, m, sizeof *r, rank_desc);
        for (uint64_t i = 0; i < m && i < B; i++)
            b[r[i].t] = (uint8_t)top;
    }
    free(r);
    int mixed = cfg->pm_max_cache && cfg->budget > 0 && cfg->budget < 1 &&
                (cfg->width_mask & ~1u) != (1u << top);
    if (mixed) {
        /* smartkv spends the budget less the centroids on the kept tokens */
        uint64_t c = cntr_bytes(cfg, p, bits, top);
        uint64_t worst = U * cb;  /* the solver may evict more: count every centroid */
        if (res->budget_bytes <= worst + pkhd)
            return skv_error(SKV_EINVAL, "beta %g leaves nothing beside the centroids",
                             cfg->budget);
        skv_alloc_cfg sc = *cfg;
        sc.prune_merge = 0;
        sc.width_mask |= 1u;
        sc.budget = (double)(res->budget_bytes - (c > worst ? c : worst)) /
                    (double)res->fp16_bytes;
        uint8_t *stored = skv_malloc(U * T > 0 ? U * T : 1);
        if (!stored)
            return SKV_ENOMEM;
        for (size_t i = 0; i < U * T; i++)
            stored[i] = bits[i] ? 16 : 0;
        skv_alloc_problem sp = *p;
        sp.stored = stored;
        skv_alloc_result sr;
        rc = skv_alloc_solve(&sc, &sp, bits, &sr);
        free(stored);
        if (rc < 0)
            return rc;
    }
    uint64_t bytes = 0;
    if ((rc = skv_alloc_cache_bytes(q, p->n_layers, p->n_kv_heads, T, bits, &bytes)) < 0)
        return rc;
    res->bytes = bytes + cntr_bytes(cfg, p, bits, top);
    if (res->budget_bytes && res->bytes > res->budget_bytes)
        return skv_error(SKV_EINVAL, "prune-merge with B = %llu takes %llu bytes, beta %.6f; "
                         "the budget beta %g allows %llu", (unsigned long long)B,
                         (unsigned long long)res->bytes,
                         (double)res->bytes / (double)res->fp16_bytes, cfg->budget,
                         (unsigned long long)res->budget_bytes);
    for (size_t i = 0; i < U * T; i++)
        res->hist[skv_width_index(bits[i])]++;
    res->objective = skv_alloc_objective(p, bits);
    return 0;
}
