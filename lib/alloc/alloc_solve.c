/* alloc_solve.c -- the allocation driver: checks a configuration, sets up
 * the solver (solver.h) at the smallest cache the settings allow, lets the
 * policy (lib/alloc/policy/) spend the budget, writes the widths out and
 * checks them against the library byte model.
 *
 * Tokens with zero importance still need an order, so every item's
 * importance is raised by 1e-9 times the mean importance (and 1e-30). */
#include "policy.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void skv_alloc_cfg_defaults(skv_alloc_cfg *c)
{
    memset(c, 0, sizeof *c);
    c->policy = SKV_POLICY_SMARTKV;
    c->budget = 0.25;
    c->width_mask = SKV_WIDTH_MASK_DEFAULT;
    c->sinks = 4;
    c->recent = 32;
    c->seed = 1;
    c->qcfg.k_mode = SKV_QMODE_ASYM;
    c->qcfg.v_mode = SKV_QMODE_ASYM;
}

double skv_alloc_objective(const skv_alloc_problem *p, const uint8_t *bits)
{
    double o = 0;
    uint64_t n = (uint64_t)p->n_layers * p->n_kv_heads * p->n_tokens;
    for (uint64_t i = 0; i < n; i++) {
        int wi = skv_width_index(bits[i]);
        if (wi >= 0)
            o += (double)p->importance[i] * p->err[i * SKV_NBITS + wi];
    }
    return o;
}

static void solver_free(solver *s)
{
    free(s->ue_own);
    free(s->imp);
    free(s->prot);
    free(s->w);
    free(s->cnt);
}

/* Every item at position pos, except the gone ones (at the lowest). */
static uint64_t sv_set_all_kept(solver *s, int pos)
{
    sv_set_all(s, 0, s->nu, pos);
    for (uint64_t it = 0; it < s->N; it++)
        if (sv_gone(s, it))
            sv_move(s, it, s->lo);
    return sv_bytes_of(s, 0, s->nu);
}

int skv_alloc_solve(const skv_alloc_cfg *cfg, const skv_alloc_problem *p, uint8_t *bits,
                    skv_alloc_result *res)
{
    int rc;
    solver S, *s = &S;
    memset(s, 0, sizeof S);
    memset(res, 0, sizeof *res);
    /* what the policy fixes (widths, layout); the layout must already be
     * the caller's, since it quantizes with it */
    skv_alloc_cfg rcfg = *cfg;
    if ((rc = skv_alloc_cfg_resolve(&rcfg)) < 0)
        return rc;
    if (memcmp(&rcfg.qcfg, &cfg->qcfg, sizeof rcfg.qcfg) != 0)
        return skv_error(SKV_EINVAL, "policy %s needs its quantizer layout (groups %u/%u, modes "
                         "%u/%u; skv_alloc_cfg_resolve)", skv_policy_name(cfg->policy),
                         rcfg.qcfg.k_group, rcfg.qcfg.v_group, rcfg.qcfg.k_mode,
                         rcfg.qcfg.v_mode);
    cfg = &rcfg;
    s->cfg = cfg;
    s->p = p;
    s->q = cfg->qcfg;
    if ((rc = skv_qcfg_check(&s->q)) < 0)
        return rc;
    if (p->n_layers == 0 || p->n_kv_heads == 0 || p->n_tokens == 0)
        return skv_error(SKV_EINVAL, "empty allocation problem");
    if (cfg->width_mask == 0 || (cfg->width_mask & ~SKV_WIDTH_MASK_ALL))
        return skv_error(SKV_EINVAL, "bad width mask 0x%x", cfg->width_mask);
    const skv_policy_def *pol = skv_policy_def_of(cfg->policy);
    if (!pol)
        return skv_error(SKV_EINVAL, "unknown policy %u", cfg->policy);
    if (!isfinite(cfg->budget) || cfg->budget < 0)
        return skv_error(SKV_EINVAL, "budget %g is not a finite value >= 0", cfg->budget);
    if ((pol->flags & SKV_PF_PER_LAYER) && cfg->share_layers)
        return skv_error(SKV_EINVAL, "%s allocates per layer; it cannot be combined "
                         "with shared layers", pol->name);
    if (p->stored && cfg->share_layers)
        return skv_error(SKV_EINVAL, "stored widths (an online cache) cannot share layers");
    if (p->stored && !(cfg->width_mask & 1u)) {
        uint64_t n = (uint64_t)p->n_layers * p->n_kv_heads * p->n_tokens;
        for (uint64_t i = 0; i < n; i++)
            if (p->stored[i] == 0)
                return skv_error(SKV_EINVAL, "evicted tokens need width 0 in the allowed set");
    }
    s->L = p->n_layers;
    s->H = p->n_kv_heads;
    s->T = p->n_tokens;
    s->mult = cfg->share_layers ? s->L : 1;
    s->nu = cfg->share_layers ? s->H : s->L * s->H;
    s->N = (uint64_t)s->nu * s->T;
    s->pkhd = skv_alloc_pkhd_bytes(&s->q);
    res->fp16_bytes = skv_alloc_fp16_bytes(s->L, s->H, s->T, s->q.head_dim);

    for (int i = 0; i < SKV_NBITS; i++) {
        uint32_t b = skv_bit_widths[i];
        if (cfg->width_mask & (1u << b))
            s->aw[s->na++] = i;
        if (b) {
            s->maxtok[i] = skv_pbkt_max_tokens(&s->q, b);
            s->fullbytes[i] = SKV_CHUNK_HEADER_LEN + SKV_CHUNK_CRC_LEN +
                              skv_pbkt_payload_bytes(&s->q, b, s->maxtok[i]);
            s->lin[i] = 4 + skv_par_bytes(b, s->q.head_dim, s->q.k_group, s->q.k_mode) +
                        skv_par_bytes(b, s->q.head_dim, s->q.v_group, s->q.v_mode) +
                        2 * skv_row_bytes(b, s->q.head_dim);
        }
    }
    s->top = s->na - 1;
    s->lo = 0;
    for (int k = 0; k + 1 < s->na; k++)
        if (s->lin[s->aw[k]] >= s->lin[s->aw[k + 1]])
            return skv_error(SKV_EINVAL, "with these groups %u-bit tokens cost no more than "
                             "%u-bit ones; use larger --group", skv_bit_widths[s->aw[k + 1]],
                             skv_bit_widths[s->aw[k]]);
    if ((pol->flags & SKV_PF_FIXED) && !(cfg->width_mask & (1u << cfg->uniform_bits)))
        return skv_error(SKV_EINVAL, "uniform:%u: width %u is not in the allowed set",
                         cfg->uniform_bits, cfg->uniform_bits);

    size_t nerr;
    rc = SKV_ENOMEM;
    if (skv_mul_sizes(&nerr, 2, (size_t)s->N, (size_t)SKV_NBITS)) {
        rc = skv_error(SKV_ELIMIT, "allocation problem too large");
        goto out;
    }
    s->imp = skv_malloc((size_t)s->N * sizeof(double));
    s->prot = skv_calloc((size_t)s->T, 1);
    s->w = skv_calloc((size_t)s->N, 1);
    s->cnt = skv_calloc((size_t)s->nu, SKV_NBITS * sizeof(uint64_t));
    if (!s->imp || !s->prot || !s->w || !s->cnt)
        goto out;
    if (cfg->share_layers) {
        s->ue_own = skv_calloc(nerr, sizeof(float));
        if (!s->ue_own)
            goto out;
        for (uint32_t l = 0; l < s->L; l++)
            for (size_t i = 0; i < nerr; i++)
                s->ue_own[i] += p->err[(size_t)l * nerr + i];
        s->ue = s->ue_own;
    } else {
        s->ue = p->err;
    }
    double mean = 0;
    for (uint64_t it = 0; it < s->N; it++) {
        /* with share_layers, layer 0 holds the importance summed over layers */
        double v = p->importance[it];
        s->imp[it] = v;
        mean += v;
    }
    mean /= (double)s->N;
    for (uint64_t it = 0; it < s->N; it++)
        s->imp[it] += 1e-9 * mean + 1e-30;
    if (pol->flags & SKV_PF_PROTECT)
        for (uint64_t j = 0; j < s->T; j++)
            s->prot[j] = j < cfg->sinks || j + cfg->recent >= s->T;

    uint64_t budget = 0, cur = 0;
    if (cfg->budget > 0) {
        double b = floor(cfg->budget * (double)res->fp16_bytes);
        budget = b >= 1.8e19 ? UINT64_MAX : (uint64_t)b;
    }
    res->budget_bytes = budget;
    uint64_t minb = s->pkhd + sv_set_min(s, 0, s->nu);
    res->min_bytes = minb;

    if (pol->flags & SKV_PF_FIXED) {
        int pos = 0;
        for (int k = 0; k < s->na; k++)
            if (skv_bit_widths[s->aw[k]] == cfg->uniform_bits)
                pos = k;
        cur = sv_set_all_kept(s, pos);
        if (pol->flags & SKV_PF_RESIDUAL) {  /* kivi:N: the residual at 16 bits */
            uint64_t R = cfg->recent, nq = R ? s->T / R * R : s->T;
            for (uint64_t it = 0; it < s->N; it++)
                if (it % s->T >= nq)
                    sv_move(s, it, s->top);
            cur = sv_bytes_of(s, 0, s->nu);
        }
        if (pol->flags & SKV_PF_PROTECT) {   /* uniform-protect:N */
            for (uint64_t it = 0; it < s->N; it++)
                if (s->prot[it % s->T] && !sv_gone(s, it))
                    sv_move(s, it, s->top);
            cur = sv_bytes_of(s, 0, s->nu);
        }
        if (budget && cur + s->pkhd > budget) {
            rc = skv_error(SKV_EINVAL, "%s:%u takes %llu bytes, beta %.6g of the fp16 "
                           "cache; the budget beta %g allows %llu", pol->name, cfg->uniform_bits,
                           (unsigned long long)cur + s->pkhd,
                           (double)(cur + s->pkhd) / (double)res->fp16_bytes, cfg->budget,
                           (unsigned long long)budget);
            goto out;
        }
    } else if (cfg->budget >= 1) {
        cur = sv_set_all_kept(s, s->top); /* no compression asked for */
    } else {
        if (budget == 0) {
            rc = skv_error(SKV_EINVAL, "policy %s needs a budget beta > 0",
                           skv_policy_name(cfg->policy));
            goto out;
        }
        if (budget < minb) {
            char wl[32];
            skv_width_mask_format(cfg->width_mask, wl, sizeof wl);
            rc = skv_error(SKV_EINVAL, "budget beta %g (%llu bytes) is below the smallest cache "
                           "these settings allow: beta %.6f (%llu bytes, %u protected tokens "
                           "at %u bits, the rest at %u bits; widths %s)",
                           cfg->budget, (unsigned long long)budget,
                           (double)minb / (double)res->fp16_bytes, (unsigned long long)minb,
                           (unsigned)(cfg->sinks + cfg->recent < s->T ? cfg->sinks + cfg->recent
                                                                      : s->T),
                           skv_bit_widths[s->aw[s->top]], skv_bit_widths[s->aw[s->lo]], wl);
            goto out;
        }
        uint64_t limit = budget - s->pkhd;
        cur = minb - s->pkhd;
        rc = pol->solve(s, limit, &cur, &res->bound);
        if (rc < 0)
            goto out;
    }

    /* write the widths out, one row per (layer, kv head) */
    for (uint32_t l = 0; l < s->L; l++)
        for (uint32_t h = 0; h < s->H; h++) {
            uint32_t u = cfg->share_layers ? h : l * s->H + h;
            uint8_t *dst = bits + ((size_t)l * s->H + h) * s->T;
            const uint8_t *w = s->w + (size_t)u * s->T;
            for (uint64_t j = 0; j < s->T; j++)
                dst[j] = (uint8_t)skv_bit_widths[s->aw[w[j]]];
        }
    uint64_t check;
    if ((rc = skv_alloc_cache_bytes(&s->q, s->L, s->H, s->T, bits, &check)) < 0)
        goto out;
    if (check != cur + s->pkhd) {
        rc = skv_error(SKV_EINVAL, "internal: byte model %llu differs from the tracked %llu",
                       (unsigned long long)check, (unsigned long long)cur + s->pkhd);
        goto out;
    }
    if (budget && cfg->budget < 1 && check + s->aux > budget) {
        rc = skv_error(SKV_EINVAL, "internal: allocation over budget (%llu > %llu)",
                       (unsigned long long)check, (unsigned long long)budget);
        goto out;
    }
    res->bytes = check;
    res->aux_bytes = s->aux;
    res->objective = skv_alloc_objective(p, bits);
    uint64_t n = (uint64_t)s->L * s->H * s->T;
    for (uint64_t i = 0; i < n; i++)
        res->hist[skv_width_index(bits[i])]++;
    rc = 0;
out:
    solver_free(s);
    return rc;
}
