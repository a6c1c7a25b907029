/* evalcache.c -- the compressed KV cache behind skv_kv_ops (see
 * smartkv_evalcache.h for what it models). */
#include "smartkv_evalcache.h"
#include "eccommon.h"
#include "ecgroup.h"
#include "smartkv_atskv.h"
#include "smartkv_attend.h"
#include "smartkv_error.h"
#include "smartkv_importance.h"
#include "smartkv_pack.h"
#include "smartkv_quant.h"
#include "zack.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* one PBKT part of a (layer, kv head) */
typedef struct ec_part {
    uint8_t *mem;           /* payload (skv_calloc) */
    uint64_t size;
} ec_part;

typedef struct ec_head {
    uint32_t n_parts;
    ec_part *parts;         /* ascending width, then part */
    skv_bucket *bk;         /* [n_parts] decoded views */
    uint8_t *bits;          /* [capacity] width of allocated tokens */
    float *err;             /* [capacity][SKV_NBITS] error model, set at first allocation */
    float *tk, *tv;         /* pending rows [tail_cap][head_dim], tokens n_alloc.. */
    uint64_t tail_cap;
    uint16_t *hk, *hv;      /* the fp16 kind's rows instead: [half_cap][head_dim] fp16 */
    uint64_t half_cap;
    float *fk, *fv;         /* ideal: every token [full_cap][head_dim] */
    uint64_t full_cap;
    float *rk, *rv;         /* rocketkv: the allocated kept rows, dequantized, */
    uint64_t *rpos;         /*   in position order, and their positions */
    uint64_t rn, rcap;
} ec_head;

typedef struct ec_cache {
    skv_kv_cache base;
    skv_ec_cfg cfg;
    uint32_t G;             /* query heads per kv head */
    int hold;
    int track;              /* importance needed by the policy */
    int votes;              /* snapkv: the last W query rows kept per query head */
    uint32_t W;             /* observation window (votes) */
    int entropy;            /* layer-aware: track attention entropy */
    int rocket;             /* rocketkv: top-k sparse attention after the first allocation */
    uint64_t *len;          /* [n_layers] positions held */
    uint64_t n_alloc;
    ec_head *heads;         /* [n_layers][n_kv_heads] */
    float *imp;             /* [n_layers][n_heads][capacity] */
    float *ring;            /* votes: [n_layers][n_heads][W][capacity] probability rows */
    uint64_t *ring_q;       /* votes: [n_layers][n_heads][W] query position + 1 of each row */
    double *ent_sum;        /* [n_layers][n_heads] */
    float *gram;            /* uncomp: [n_layers][n_kv_heads][SKV_GRAM_LEN(d)] keys' Gram */
    uint64_t *gram_n;       /* uncomp: [n_layers][n_kv_heads] keys in it, and at the last */
    uint64_t *gram_at;      /*   entropy computed (redone when the keys grew by 1/8) */
    uint64_t *ent_cnt;      /* [n_layers][n_heads] */
    /* scratch for reallocation */
    float *s_imp, *s_err, *s_ent, *s_kent;
    uint8_t *s_bits, *s_stored;
    uint64_t s_cap;
    uint32_t *src_part, *src_row;   /* [capacity] */
    uint32_t *idx;                  /* [capacity] */
    /* counters */
    skv_ec_stats st;
    _Atomic uint64_t track_ns, attend_ns;
} ec_cache;

void skv_ec_defaults(skv_ec_cfg *c)
{
    memset(c, 0, sizeof *c);
    c->kind = SKV_EC_COMPRESS;
    skv_alloc_cfg_defaults(&c->alloc);
    c->imp_mode = SKV_IMP_EMA;
    c->decay = 0.9;
    c->realloc = 16;
    c->ideal = 0;
    /* the best float kernel: an evaluation measures the compression, not the
     * int8 kernels' rounding (chosen with kernel = SKV_KERNEL_AUTO or by name) */
    c->kernel = skv_att_kernel_available(SKV_KERNEL_AVX2) ? SKV_KERNEL_AVX2 : SKV_KERNEL_SCALAR;
    skv_pm_defaults(&c->pm);
}

void skv_ec_method(skv_ec_cfg *c)
{
    c->layout = SKV_EC_GROUPED;
    c->k_layout = SKV_EC_KEYS_CHANNEL;
    c->rotate = 1;
    c->rotate_values = 1;
    c->kv_split = 1;
    c->err_model = SKV_EC_ERR_IMP_RANGE;
    c->realloc = 32;
    c->protect_bits = 8;
    c->param_bits = 8;
    c->clip = 1;
    c->head_weight = 0.5;
    c->recency = 0.25;
}

int skv_ec_cfg_check(const skv_ec_cfg *c)
{
    if (c->kind == SKV_EC_PRUNE_MERGE) {  /* merge.c */
        skv_pm_cfg p = skv_ec_pm_cfg(c);
        return skv_pm_cfg_check(&p);
    }
    if (c->kind > SKV_EC_ZACK)
        return skv_error(SKV_EINVAL, "unknown cache kind %u", c->kind);
    if (c->kind == SKV_EC_ZACK)  /* zack.c */
        return skv_zack_cfg_check(c);
    if (c->kind == SKV_EC_ATSKV) /* ATSKV (atskv.c): weights, budget, R */
        return !c->rlv ? skv_error(SKV_EINVAL, "atskv needs relevance weights (skv-alloc train)")
               : !(c->alloc.budget > 0 && isfinite(c->alloc.budget))
                   ? skv_error(SKV_EINVAL, "atskv needs a budget beta > 0")
               : !c->realloc ? skv_error(SKV_EINVAL, "reallocation interval must be >= 1")
               : c->active_bits && c->active_bits != 4 && c->active_bits != 8 &&
                       c->active_bits != 16
                   ? skv_error(SKV_EINVAL, "atskv: active rows at %u bits (4, 8 or 16)",
                               c->active_bits)
                   : 0;
    if (c->kind != SKV_EC_COMPRESS)
        return 0;
    const skv_alloc_cfg *a = &c->alloc;
    unsigned pf = skv_policy_flags(a->policy);
    if (!pf)
        return skv_error(SKV_EINVAL, "unknown policy %u", a->policy);
    if (pf & SKV_PF_RELEVANCE)
        return skv_error(SKV_EINVAL, "policy %s is offline (skv-alloc); in the decode loop the "
                         "atskv cache kind or importance atskv", skv_policy_name(a->policy));
    if (a->share_layers)
        return skv_error(SKV_EINVAL, "the online cache allocates per layer (no shared layers)");
    if (a->width_mask == 0 || (a->width_mask & ~SKV_WIDTH_MASK_ALL))
        return skv_error(SKV_EINVAL, "bad width mask 0x%x", a->width_mask);
    if ((pf & SKV_PF_FIXED) &&
        (!skv_bits_valid(a->uniform_bits) || !(a->width_mask & (1u << a->uniform_bits))))
        return skv_error(SKV_EINVAL, "uniform:%u: not an allowed width", a->uniform_bits);
    skv_alloc_cfg ra = *a;
    if (skv_alloc_cfg_resolve(&ra) < 0)
        return SKV_EINVAL;
    if ((pf & SKV_PF_BUDGET) && !(a->budget > 0 && isfinite(a->budget)))
        return skv_error(SKV_EINVAL, "policy %s needs a budget beta > 0",
                         skv_policy_name(a->policy));
    if (SKV_EC_IMP_IS_ATSKV(c->imp_mode) && c->layout != SKV_EC_GROUPED)
        return skv_error(SKV_EINVAL, "importance atskv needs the grouped layout");
    if (c->imp_mode != SKV_IMP_EMA && c->imp_mode != SKV_IMP_CUMULATIVE &&
        c->imp_mode != SKV_IMP_NORMALIZED && !SKV_EC_IMP_IS_ATSKV(c->imp_mode))
        return skv_error(SKV_EINVAL, "importance mode %s is not tracked online (ema, cumulative "
                         "or normalized)", skv_imp_mode_name(c->imp_mode) ? skv_imp_mode_name(c->imp_mode) : "?");
    if (!(c->decay >= 0 && c->decay < 1))
        return skv_error(SKV_EINVAL, "decay %g is not in [0, 1)", c->decay);
    if (c->realloc == 0)
        return skv_error(SKV_EINVAL, "reallocation interval must be >= 1");
    if (c->layout > SKV_EC_GROUPED)
        return skv_error(SKV_EINVAL, "unknown cache layout %u", c->layout);
    if (c->layout == SKV_EC_GROUPED)
        return skv_ecg_cfg_check(c);
    if (c->k_layout || c->rotate || c->kv_split || c->err_model || c->kivi_bits)
        return skv_error(SKV_EINVAL, "keys per channel, rotation, separate K/V widths, the logit "
                         "error model and kivi need the grouped layout");
    return 0;
}

int skv_ec_kivi_parse(const char *s, skv_ec_cfg *c)
{
    if (strncmp(s, "kivi:", 5) != 0)
        return 0;
    char *end;
    unsigned long b = strtoul(s + 5, &end, 10);
    if (*end || end == s + 5 || !(b == 2 || b == 3 || b == 4 || b == 8))
        return skv_error(SKV_EINVAL, "%s: kivi takes 2, 3, 4 or 8 bits", s);
    c->kind = SKV_EC_COMPRESS;
    c->layout = SKV_EC_GROUPED;
    c->k_layout = SKV_EC_KEYS_CHANNEL;
    c->key_tokens = 32;
    c->kivi_bits = (uint32_t)b;
    c->alloc.policy = SKV_POLICY_UNIFORM;
    c->alloc.uniform_bits = (uint32_t)b;
    c->alloc.width_mask = 1u << b;
    c->rotate = 0;
    c->kv_split = 0;
    if (c->realloc % 32)
        c->realloc = 32;
    return 1;
}

int skv_ec_min_beta(const skv_ec_cfg *c, uint32_t n_layers, uint32_t n_heads,
                    uint32_t n_kv_heads, uint32_t head_dim, uint64_t n, double *beta)
{
    *beta = 1;
    if (c->kind != SKV_EC_COMPRESS)
        return 0;
    if (skv_ec_cfg_check(c) < 0)
        return SKV_EINVAL;
    if (!n || !head_dim || !n_layers || !n_kv_heads)
        return skv_error(SKV_EINVAL, "min beta: empty shape");
    if (c->layout == SKV_EC_GROUPED)
        return skv_ecg_min_beta(c, n_layers, n_heads, n_kv_heads, head_dim, n, beta);
    skv_qcfg q = c->alloc.qcfg;
    q.head_dim = head_dim;
    q.k_group = q.k_group ? q.k_group : head_dim;
    q.v_group = q.v_group ? q.v_group : head_dim;
    q.k_mode = q.k_mode ? q.k_mode : SKV_QMODE_ASYM;
    q.v_mode = q.v_mode ? q.v_mode : SKV_QMODE_ASYM;
    unsigned pf = skv_policy_flags(c->alloc.policy);
    uint32_t lo = 16;
    if (pf & SKV_PF_FIXED)
        lo = c->alloc.uniform_bits;
    else
        for (int i = SKV_NBITS - 1; i > 0; i--)
            if (c->alloc.width_mask & (1u << skv_bit_widths[i]))
                lo = skv_bit_widths[i];
    uint64_t prot = (pf & SKV_PF_PROTECT) ? (uint64_t)c->alloc.sinks + c->alloc.recent : 0;
    prot = prot < n ? prot : n;
    uint64_t unit = lo == 16 ? skv_bucket_file_bytes(&q, 16, n)
                             : skv_bucket_file_bytes(&q, 16, prot) +
                                   skv_bucket_file_bytes(&q, lo, n - prot);
    uint64_t bytes = skv_alloc_pkhd_bytes(&q) + (uint64_t)n_layers * n_kv_heads * unit;
    if (pf & SKV_PF_IMPORTANCE)  /* as skv_ec_stats_get counts it */
        bytes += (uint64_t)n_layers * n_kv_heads * n * (1 + SKV_NBITS * sizeof(float)) +
                 (uint64_t)n_layers * n_heads * n * sizeof(float);
    *beta = (double)bytes / (double)skv_alloc_fp16_bytes(n_layers, n_kv_heads, n, head_dim);
    return 0;
}

void skv_ec_describe(const skv_ec_cfg *c, char *buf, size_t n)
{
    if (c->kind == SKV_EC_PRUNE_MERGE) {  /* merge.c */
        skv_pm_cfg p = skv_ec_pm_cfg(c);
        skv_pm_describe(&p, buf, n);
        return;
    }
    if (c->kind == SKV_EC_FP16) {
        snprintf(buf, n, "fp16");
        return;
    }
    if (c->kind == SKV_EC_F32) {
        snprintf(buf, n, "f32");
        return;
    }
    if (c->kind == SKV_EC_ZACK) {
        snprintf(buf, n, "zack beta=%g R=%u", c->alloc.budget, c->realloc);
        if (c->alloc.sinks != 4 || c->alloc.recent != 32) {
            size_t w = strlen(buf);
            snprintf(buf + w, n > w ? n - w : 0, " sinks=%u recent=%u", c->alloc.sinks,
                     c->alloc.recent);
        }
        return;
    }
    if (c->kind == SKV_EC_ATSKV) {
        if (c->active_bits && c->active_bits < 16)
            snprintf(buf, n, "%s beta=%g R=%u active=%u",
                     c->rlv && c->rlv->label ? c->rlv->label : "atskv", c->alloc.budget,
                     c->realloc, c->active_bits);
        else
            snprintf(buf, n, "%s beta=%g R=%u", c->rlv && c->rlv->label ? c->rlv->label : "atskv",
                     c->alloc.budget, c->realloc);
        return;
    }
    const skv_alloc_cfg *a = &c->alloc;
    const unsigned pf = skv_policy_flags(a->policy);
    char pol[32];
    if (c->kivi_bits) {
        snprintf(buf, n, "kivi:%u residual=%u", c->kivi_bits, c->realloc);
        return;
    }
    skv_policy_format(a->policy, a->uniform_bits, pol, sizeof pol);
    char imp[48];
    if (pf & SKV_PF_VOTES)
        snprintf(imp, sizeof imp, "votes:%u", a->recent);
    else if (pf & SKV_PF_CUMULATIVE)
        snprintf(imp, sizeof imp, "cumulative");
    else if (SKV_EC_IMP_IS_ATSKV(c->imp_mode))
        snprintf(imp, sizeof imp, c->imp_mode == SKV_EC_IMP_ATSKV ? "atskv-full" : "atskv");
    else if (c->imp_mode == SKV_IMP_EMA)
        snprintf(imp, sizeof imp, "ema:%g", c->decay);
    else
        snprintf(imp, sizeof imp, "%s", skv_imp_mode_name(c->imp_mode));
    char extra[96] = "";
    size_t w = 0;
    if (!(pf & SKV_PF_FIXED) && a->width_mask != SKV_WIDTH_MASK_DEFAULT) {
        char wl[32];
        skv_width_mask_format(a->width_mask, wl, sizeof wl);
        w += (size_t)snprintf(extra + w, sizeof extra - w, " bits=%s", wl);
    }
    if (a->qcfg.k_group && w < sizeof extra)
        w += (size_t)snprintf(extra + w, sizeof extra - w, " group=%u", a->qcfg.k_group);
    if (!(pf & SKV_PF_FIXED) && (a->sinks != 4 || a->recent != 32) && w < sizeof extra)
        w += (size_t)snprintf(extra + w, sizeof extra - w, " sinks=%u recent=%u", a->sinks,
                              a->recent);
    if (c->ideal && w < sizeof extra)
        w += (size_t)snprintf(extra + w, sizeof extra - w, " ideal");
    if (c->layout == SKV_EC_GROUPED && w < sizeof extra)
        w += (size_t)snprintf(extra + w, sizeof extra - w, " %s%s%s%s%s",
                              c->k_layout ? "kch" : "ktok", c->rotate ? "+rot" : "",
                              c->rotate_values ? " vrot" : "",
                              c->kv_split ? " kv" : "",
                              c->err_model == SKV_EC_ERR_LOGIT ? " logit" :
                              c->err_model == SKV_EC_ERR_IMP_RANGE ? " range" : "");
    /* the grouped layout tracks attention for smartkv alone (ecgroup.c) */
    const int gtrack = c->layout == SKV_EC_GROUPED && a->policy == SKV_POLICY_SMARTKV;
    if (gtrack && c->imp_power == 2 && w < sizeof extra)
        w += (size_t)snprintf(extra + w, sizeof extra - w, " p2");
    if (gtrack && c->recency > 0 && w < sizeof extra)
        w += (size_t)snprintf(extra + w, sizeof extra - w, " rec=%g", c->recency);
    if (gtrack && c->keys_by_age && w < sizeof extra)
        w += (size_t)snprintf(extra + w, sizeof extra - w, " kage");
    if (c->layout == SKV_EC_GROUPED && c->protect_bits && c->protect_bits < 16 && !c->kivi_bits &&
        w < sizeof extra)
        w += (size_t)snprintf(extra + w, sizeof extra - w, " protect=%u", c->protect_bits);
    if (c->layout == SKV_EC_GROUPED && c->clip && w < sizeof extra)
        w += (size_t)snprintf(extra + w, sizeof extra - w, " clip");
    if (c->layout == SKV_EC_GROUPED && c->param_bits == 8 && !c->kivi_bits && w < sizeof extra)
        w += (size_t)snprintf(extra + w, sizeof extra - w, " p8");
    if (c->layout == SKV_EC_GROUPED && c->head_weight > 0 && !(pf & SKV_PF_FIXED) &&
        !c->kivi_bits && w < sizeof extra)
        w += (size_t)snprintf(extra + w, sizeof extra - w, " hw=%g", c->head_weight);
    if (c->layout == SKV_EC_GROUPED && c->k_layout && c->key_tokens && c->key_tokens != 32 &&
        w < sizeof extra)
        w += (size_t)snprintf(extra + w, sizeof extra - w, " kt=%u", c->key_tokens);
    if (c->layout == SKV_EC_GROUPED && c->replan > 1 && !(pf & SKV_PF_FIXED) && w < sizeof extra)
        w += (size_t)snprintf(extra + w, sizeof extra - w, " replan=%u", c->replan);
    if (c->layout == SKV_EC_GROUPED && c->prior > 0 && w < sizeof extra)
        snprintf(extra + w, sizeof extra - w, " prior=%g", c->prior);
    if (pf & SKV_PF_FIXED)
        snprintf(buf, n, "%s R=%u%s", pol, c->realloc, extra);
    else if (!(pf & SKV_PF_IMPORTANCE))
        snprintf(buf, n, "%s beta=%g R=%u%s", pol, a->budget, c->realloc, extra);
    else
        snprintf(buf, n, "%s beta=%g %s R=%u%s", pol, a->budget, imp, c->realloc, extra);
}

/* ---------------------------------------------------------------- helpers */

static ec_cache *as_ec(skv_kv_cache *c);
static const skv_kv_ops ec_ops;
static int rocket_refresh(ec_cache *e, uint32_t l, uint32_t h);

static ec_cache *as_ec(skv_kv_cache *c)
{
    return c && c->ops == &ec_ops ? (ec_cache *)c : NULL;
}

int skv_ec_is(const skv_kv_cache *c)
{
    return (c && c->ops == &ec_ops) || skv_ecg_is(c) || skv_zack_is(c);
}

static ec_head *head_at(ec_cache *e, uint32_t l, uint32_t h)
{
    return &e->heads[(size_t)l * e->base.n_kv_heads + h];
}

static void free_parts(ec_head *H)
{
    for (uint32_t i = 0; i < H->n_parts; i++)
        free(H->parts[i].mem);
    free(H->parts);
    free(H->bk);
    H->parts = NULL;
    H->bk = NULL;
    H->n_parts = 0;
}

/* Grow a pair of row arrays to hold at least n rows of d values of esz
 * bytes (the capacity doubles from 64).  *k and *v are updated as each
 * reallocation succeeds, so a failure leaks nothing. */
static int grow_pair(void **k, void **v, uint64_t *cap, uint64_t n, uint32_t d, size_t esz)
{
    if (n <= *cap)
        return 0;
    uint64_t nc = *cap ? *cap : 64;
    while (nc < n)
        nc *= 2;
    size_t bytes;
    if (skv_mul_sizes(&bytes, 3, (size_t)nc, (size_t)d, esz) < 0)
        return skv_error(SKV_ELIMIT, "kv cache: %llu rows overflow", (unsigned long long)nc);
    void *nk = skv_realloc(*k, bytes);
    if (!nk)
        return SKV_ENOMEM;
    *k = nk;
    void *nv = skv_realloc(*v, bytes);
    if (!nv)
        return SKV_ENOMEM;
    *v = nv;
    *cap = nc;
    return 0;
}

/* grow_pair for float rows. */
static int grow_rows(float **k, float **v, uint64_t *cap, uint64_t n, uint32_t d)
{
    void *pk = *k, *pv = *v;
    int rc = grow_pair(&pk, &pv, cap, n, d, sizeof(float));
    *k = pk;
    *v = pv;
    return rc;
}

static uint32_t width_pos(uint32_t bits)
{
    int i = skv_width_index(bits);
    return i < 0 ? 0 : (uint32_t)i;
}

/* ---------------------------------------------------------------- rebuild */

/* Rebuild head (l, h) so that tokens 0..T-1 have widths nb[0..T) (non-zero),
 * taking rows from the old parts (tokens < old_alloc), the pending rows
 * (tokens >= old_alloc) or, in ideal mode, the full-precision copy. */
static int rebuild_head(ec_cache *e, uint32_t l, uint32_t h, const uint8_t *nb, uint64_t T,
                        uint64_t old_alloc)
{
    ec_head *H = head_at(e, l, h);
    const skv_qcfg *q = &e->cfg.alloc.qcfg;
    const uint32_t d = q->head_dim;
    int rc = 0;
    /* where each old allocated token lives */
    for (uint32_t p = 0; p < H->n_parts; p++) {
        const skv_bucket *b = &H->bk[p];
        for (uint32_t i = 0; i < b->n; i++) {
            e->src_part[b->idx[i]] = p;
            e->src_row[b->idx[i]] = i;
        }
    }
    /* count parts */
    uint64_t cnt[SKV_NBITS] = {0};
    for (uint64_t t = 0; t < T; t++)
        cnt[width_pos(nb[t])]++;
    uint32_t np = 0;
    for (int w = 1; w < SKV_NBITS; w++)
        if (cnt[w]) {
            uint64_t mx = skv_pbkt_max_tokens(q, skv_bit_widths[w]);
            np += (uint32_t)((cnt[w] + mx - 1) / mx);
        }
    ec_part *parts = np ? skv_calloc(np, sizeof *parts) : NULL;
    skv_bucket *bk = np ? skv_calloc(np, sizeof *bk) : NULL;
    if (np && (!parts || !bk)) {
        free(parts);
        free(bk);
        return SKV_ENOMEM;
    }
    float xk[SKV_MAX_HEAD_DIM], xv[SKV_MAX_HEAD_DIM];
    uint32_t pi = 0;
    for (int w = 1; w < SKV_NBITS && rc == 0; w++) {
        if (!cnt[w])
            continue;
        const uint32_t bits = skv_bit_widths[w];
        const uint64_t mx = skv_pbkt_max_tokens(q, bits);
        const uint64_t rb = skv_row_bytes(bits, d);
        const uint64_t kpb = skv_par_bytes(bits, d, q->k_group, q->k_mode);
        const uint64_t vpb = skv_par_bytes(bits, d, q->v_group, q->v_mode);
        uint64_t n_idx = 0;
        for (uint64_t t = 0; t < T; t++)
            if (nb[t] == bits)
                e->idx[n_idx++] = (uint32_t)t;
        for (uint64_t i0 = 0, part = 0; i0 < n_idx && rc == 0; i0 += mx, part++, pi++) {
            uint32_t n = (uint32_t)(n_idx - i0 < mx ? n_idx - i0 : mx);
            uint64_t size = skv_pbkt_payload_bytes(q, bits, n);
            uint8_t *m = skv_calloc(1, (size_t)size);
            if (!m) {
                rc = SKV_ENOMEM;
                break;
            }
            parts[pi].mem = m;
            parts[pi].size = size;
            /* the documented PBKT layout (smartkv_pack.h) */
            uint64_t o_idx = SKV_PBKT_HEADER_LEN;
            uint64_t o_kp = o_idx + skv_align64(4 * (uint64_t)n);
            uint64_t o_kd = o_kp + skv_align64(n * kpb);
            uint64_t o_vp = o_kd + skv_align64(n * rb);
            uint64_t o_vd = o_vp + skv_align64(n * vpb);
            skv_put32(m, l);
            skv_put32(m + 4, h);
            skv_put32(m + 8, bits);
            skv_put32(m + 12, n);
            skv_put32(m + 16, d);
            skv_put32(m + 20, q->k_group);
            skv_put32(m + 24, q->v_group);
            skv_put32(m + 28, q->k_mode);
            skv_put32(m + 32, q->v_mode);
            skv_put32(m + 36, (uint32_t)part);
            for (uint32_t i = 0; i < n; i++) {
                uint32_t t = e->idx[i0 + i];
                skv_put32(m + o_idx + 4 * (uint64_t)i, t);
                uint8_t *kp = m + o_kp + i * kpb, *kd = m + o_kd + i * rb;
                uint8_t *vp = m + o_vp + i * vpb, *vd = m + o_vd + i * rb;
                const float *sk, *sv;
                if (t < old_alloc && H->bits[t] == bits) {
                    const skv_bucket *ob = &H->bk[e->src_part[t]];
                    uint32_t r = e->src_row[t];
                    memcpy(kp, ob->k_par + (size_t)r * ob->k_par_stride, kpb);
                    memcpy(kd, ob->k_dat + (size_t)r * ob->row_stride, rb);
                    memcpy(vp, ob->v_par + (size_t)r * ob->v_par_stride, vpb);
                    memcpy(vd, ob->v_dat + (size_t)r * ob->row_stride, rb);
                    continue;
                }
                if (!e->cfg.ideal && t < old_alloc && H->bits[t] == 0) {
                    rc = skv_error(SKV_EINVAL, "kv cache: internal: layer %u kv head %u token "
                                   "%u was evicted and cannot come back", l, h, t);
                    break;
                }
                if (e->cfg.ideal) {
                    sk = H->fk + (size_t)t * d;
                    sv = H->fv + (size_t)t * d;
                } else if (t >= old_alloc) {
                    sk = H->tk + (size_t)(t - old_alloc) * d;
                    sv = H->tv + (size_t)(t - old_alloc) * d;
                } else {
                    const skv_bucket *ob = &H->bk[e->src_part[t]];
                    uint32_t r = e->src_row[t];
                    skv_dequantize_row(ob->k_par + (size_t)r * ob->k_par_stride,
                                       ob->k_dat + (size_t)r * ob->row_stride, d, ob->bits,
                                       ob->k_group, ob->k_mode, xk);
                    skv_dequantize_row(ob->v_par + (size_t)r * ob->v_par_stride,
                                       ob->v_dat + (size_t)r * ob->row_stride, d, ob->bits,
                                       ob->v_group, ob->v_mode, xv);
                    sk = xk;
                    sv = xv;
                    e->st.requant_rows++;
                }
                if (t < old_alloc) {
                    if (bits > H->bits[t])
                        e->st.upgrades++;
                    else
                        e->st.downgrades++;
                }
                if ((rc = skv_quantize_row(sk, d, bits, q->k_group, q->k_mode, kp, kd)) < 0 ||
                    (rc = skv_quantize_row(sv, d, bits, q->v_group, q->v_mode, vp, vd)) < 0) {
                    rc = skv_error(rc, "kv cache: layer %u kv head %u token %u at %u bits: %s", l,
                                   h, t, bits, skv_errmsg());
                    break;
                }
            }
            if (rc == 0 && (rc = skv_pbkt_decode(m, size, T, &bk[pi])) < 0)
                rc = skv_error(rc, "kv cache: internal: layer %u kv head %u %u-bit bucket: %s",
                               l, h, bits, skv_errmsg());
        }
    }
    if (rc < 0) {
        for (uint32_t i = 0; i < np; i++)
            free(parts[i].mem);
        free(parts);
        free(bk);
        return rc;
    }
    free_parts(H);
    H->parts = parts;
    H->bk = bk;
    H->n_parts = np;
    if (H->bits != nb)
        memcpy(H->bits, nb, (size_t)T);
    return 0;
}

/* Make every layer hold only tokens < T, with the allocation state for
 * tokens < min(T, n_alloc) kept.  Pending rows beyond T are dropped. */
static int cut_to(ec_cache *e, uint64_t T)
{
    const skv_kv_cache *c = &e->base;
    int rc;
    if (T < e->n_alloc) {
        for (uint32_t l = 0; l < c->n_layers; l++)
            for (uint32_t h = 0; h < c->n_kv_heads; h++) {
                ec_head *H = head_at(e, l, h);
                if (T == 0)
                    free_parts(H);
                else if ((rc = rebuild_head(e, l, h, H->bits, T, e->n_alloc)) < 0)
                    return rc;
                if (e->rocket && (rc = rocket_refresh(e, l, h)) < 0)
                    return rc;
            }
        e->n_alloc = T;
    }
    for (uint32_t l = 0; l < c->n_layers; l++)
        if (e->len[l] > T)
            e->len[l] = T;
    /* tracking state of forgotten tokens (and queries) */
    if (e->ring_q)
        for (size_t i = 0; i < (size_t)c->n_layers * c->n_heads * e->W; i++)
            if (e->ring_q[i] > T)
                e->ring_q[i] = 0;
    if (e->imp)
        for (size_t r = 0; r < (size_t)c->n_layers * c->n_heads; r++)
            memset(e->imp + r * c->capacity + T, 0, (size_t)(c->capacity - T) * sizeof(float));
    if (T == 0 && e->ent_sum) {
        memset(e->ent_sum, 0, (size_t)c->n_layers * c->n_heads * sizeof(double));
        memset(e->ent_cnt, 0, (size_t)c->n_layers * c->n_heads * sizeof(uint64_t));
    }
    if (T == 0 && e->gram) { /* like the entropy: forgotten only all at once */
        size_t nh = (size_t)c->n_layers * c->n_kv_heads;
        memset(e->gram, 0, nh * SKV_GRAM_LEN(c->head_dim) * sizeof(float));
        memset(e->gram_n, 0, nh * sizeof(uint64_t));
        memset(e->gram_at, 0, nh * sizeof(uint64_t));
    }
    return 0;
}

/* rocketkv: the kept rows of (l, h) as the attention reads them (the
 * packed rows dequantized), in position order, for stage 2 */
typedef struct kr {
    uint64_t pos, src;
} kr;

static int kr_cmp(const void *a, const void *b)
{
    const kr *x = a, *y = b;
    return (x->pos > y->pos) - (x->pos < y->pos);
}

static int rocket_refresh(ec_cache *e, uint32_t l, uint32_t h)
{
    ec_head *H = head_at(e, l, h);
    const uint32_t d = e->base.head_dim;
    uint64_t n = 0;
    for (uint32_t p = 0; p < H->n_parts; p++)
        n += H->bk[p].n;
    if (n > H->rcap) {
        free(H->rk);
        free(H->rv);
        free(H->rpos);
        H->rcap = 0;
        if (!(H->rk = skv_malloc(n * d * sizeof(float))) ||
            !(H->rv = skv_malloc(n * d * sizeof(float))) ||
            !(H->rpos = skv_malloc(n * sizeof(uint64_t))))
            return SKV_ENOMEM;
        H->rcap = n;
    }
    H->rn = 0;
    if (n == 0)
        return 0;
    float *tk = skv_malloc(n * d * sizeof(float));
    float *tv = skv_malloc(n * d * sizeof(float));
    kr *ord = skv_malloc(n * sizeof(kr));
    if (!tk || !tv || !ord) {
        free(tk);
        free(tv);
        free(ord);
        return SKV_ENOMEM;
    }
    uint64_t at = 0;
    for (uint32_t p = 0; p < H->n_parts; p++) {
        const skv_bucket *b = &H->bk[p];
        for (uint32_t i = 0; i < b->n; i++, at++) { /* row by row, packed order */
            skv_dequantize_row(b->k_par + (size_t)i * b->k_par_stride,
                               b->k_dat + (size_t)i * b->row_stride, d, b->bits, b->k_group,
                               b->k_mode, tk + at * d);
            skv_dequantize_row(b->v_par + (size_t)i * b->v_par_stride,
                               b->v_dat + (size_t)i * b->row_stride, d, b->bits, b->v_group,
                               b->v_mode, tv + at * d);
            ord[at] = (kr){b->idx[i], at};
        }
    }
    qsort(ord, n, sizeof *ord, kr_cmp);
    for (uint64_t i = 0; i < n; i++) {
        memcpy(H->rk + i * d, tk + ord[i].src * d, d * sizeof(float));
        memcpy(H->rv + i * d, tv + ord[i].src * d, d * sizeof(float));
        H->rpos[i] = ord[i].pos;
    }
    H->rn = n;
    free(tk);
    free(tv);
    free(ord);
    return 0;
}

/* rocketkv's stage 2 for query rows pos..pos+n-1 of one query head: each
 * attends to the top 1/SKV_ROCKET_TOPK_DIV of the held tokens (the kept
 * allocated rows and the pending ones up to itself) that skv_rocket_select
 * picks, exactly (float64 scores and softmax); the others get probability
 * 0. */
static int rocket_attend(ec_cache *e, const ec_head *H, uint32_t layer, uint64_t pos, uint32_t n,
                         const float *q, size_t q_stride, float scale, float *out,
                         size_t out_stride, float *probs, size_t probs_stride)
{
    const uint32_t d = e->base.head_dim;
    const uint64_t na = e->n_alloc, mmax = H->rn + (e->len[layer] - na);
    const float **rows = skv_malloc((mmax + 1) * sizeof *rows);
    const float **vals = skv_malloc((mmax + 1) * sizeof *vals);
    uint64_t *rp = skv_malloc((mmax + 1) * sizeof *rp), *sel = skv_malloc((mmax + 1) * sizeof *sel);
    double *sc = skv_malloc((mmax + 1) * sizeof *sc);
    void *work = skv_malloc(SKV_ROCKET_WORK_BYTES(d, mmax));
    int rc = SKV_ENOMEM;
    if (!rows || !vals || !rp || !sel || !sc || !work)
        goto out;
    for (uint64_t j = 0; j < H->rn; j++) {
        rows[j] = H->rk + j * d;
        vals[j] = H->rv + j * d;
        rp[j] = H->rpos[j];
    }
    for (uint32_t i = 0; i < n; i++) {
        const uint64_t qp = pos + i;
        uint64_t m = H->rn;
        for (uint64_t t = na; t <= qp; t++, m++) {
            rows[m] = H->tk + (t - na) * d;
            vals[m] = H->tv + (t - na) * d;
            rp[m] = t;
        }
        const float *qi = q + i * q_stride;
        uint64_t k = (m + SKV_ROCKET_TOPK_DIV - 1) / SKV_ROCKET_TOPK_DIV;
        uint64_t ns = skv_rocket_select(qi, d, rows, m, k, SKV_ROCKET_TOPR(d), SKV_ROCKET_PAGE,
                                        sel, work);
        double mx = -INFINITY, z = 0;
        for (uint64_t a = 0; a < ns; a++) {
            const float *kr_ = rows[sel[a]];
            double s = 0;
            for (uint32_t c = 0; c < d; c++)
                s += (double)qi[c] * kr_[c];
            sc[a] = s * scale;
            mx = sc[a] > mx ? sc[a] : mx;
        }
        for (uint64_t a = 0; a < ns; a++)
            z += (sc[a] = exp(sc[a] - mx));
        float *o = out + i * out_stride, *pr = probs + i * probs_stride;
        memset(pr, 0, (size_t)(pos + n) * sizeof(float));
        double acc[SKV_MAX_HEAD_DIM] = {0};
        for (uint64_t a = 0; a < ns; a++) {
            double p = sc[a] / z;
            pr[rp[sel[a]]] = (float)p;
            for (uint32_t c = 0; c < d; c++)
                acc[c] += p * vals[sel[a]][c];
        }
        for (uint32_t c = 0; c < d; c++)
            o[c] = (float)acc[c];
    }
    rc = 0;
out:
    free(rows);
    free(vals);
    free(rp);
    free(sel);
    free(sc);
    free(work);
    return rc;
}

/* ---------------------------------------------------------------- realloc */

static int scratch(ec_cache *e, uint64_t T)
{
    if (T <= e->s_cap)
        return 0;
    const skv_kv_cache *c = &e->base;
    size_t n = (size_t)c->n_layers * c->n_kv_heads * c->capacity;
    free(e->s_imp);
    free(e->s_err);
    free(e->s_bits);
    free(e->s_stored);
    e->s_imp = skv_malloc(n * sizeof(float));
    e->s_err = skv_malloc(n * SKV_NBITS * sizeof(float));
    e->s_bits = skv_malloc(n);
    e->s_stored = skv_malloc(n);
    if (!e->s_imp || !e->s_err || !e->s_bits || !e->s_stored) {
        e->s_cap = 0;
        return SKV_ENOMEM;
    }
    e->s_cap = c->capacity;
    return 0;
}

/* SnapKV's votes of KV head (l, h) over tokens 0..T-1: the probability
 * rows of the last W queries before T (each query head's ring of rows),
 * summed over the window and averaged over the query heads of the group. */
static void fold_votes(const ec_cache *e, uint32_t l, uint32_t h, uint64_t T, float *dst)
{
    const skv_kv_cache *c = &e->base;
    memset(dst, 0, (size_t)T * sizeof(float));
    for (uint32_t g = 0; g < e->G; g++) {
        size_t r = (size_t)l * c->n_heads + (size_t)h * e->G + g;
        for (uint32_t slot = 0; slot < e->W; slot++) {
            uint64_t q1 = e->ring_q[r * e->W + slot]; /* query position + 1 */
            if (!q1 || q1 > T || q1 + e->W <= T)
                continue; /* empty, forgotten, or before the window */
            const float *p = e->ring + (r * e->W + slot) * c->capacity;
            for (uint64_t j = 0; j < q1; j++)
                dst[j] += p[j];
        }
    }
    for (uint64_t j = 0; j < T; j++)
        dst[j] /= (float)e->G;
}

int skv_ec_realloc(skv_kv_cache *cc)
{
    if (skv_ecg_is(cc))
        return skv_ecg_realloc(cc);
    if (skv_pm_is(cc))  /* merge.c */
        return skv_pm_prune(cc);
    if (skv_atskv_is(cc))
        return skv_atskv_select(cc);
    if (skv_zack_is(cc))  /* zack.c */
        return skv_zack_project(cc);
    ec_cache *e = as_ec(cc);
    if (!e)
        return skv_error(SKV_EINVAL, "kv cache: not a compressed cache");
    const skv_kv_cache *c = &e->base;
    if (e->cfg.kind != SKV_EC_COMPRESS)
        return 0;
    uint64_t T = e->len[0];
    for (uint32_t l = 1; l < c->n_layers; l++)
        if (e->len[l] != T)
            return skv_error(SKV_EINVAL, "kv cache: reallocation with layer %u at %llu positions "
                             "and layer 0 at %llu", l, (unsigned long long)e->len[l],
                             (unsigned long long)T);
    if (T == e->n_alloc)
        return 0;
    uint64_t t_start = now_ns();
    int rc;
    const uint32_t L = c->n_layers, KH = c->n_kv_heads, G = e->G;
    const skv_qcfg *q = &e->cfg.alloc.qcfg;
    uint64_t old = e->n_alloc;
    if ((rc = scratch(e, T)) < 0)
        return rc;
    /* error model of the newly allocated tokens, from their fp16 values */
    for (uint32_t l = 0; l < L; l++)
        for (uint32_t h = 0; h < KH; h++) {
            ec_head *H = head_at(e, l, h);
            skv_alloc_token_errors(q, H->tk, H->tv, T - old, H->err + old * SKV_NBITS);
            if (e->gram) { /* uncomp: the keys' matrix entropy, every key so far */
                const uint32_t d = c->head_dim;
                size_t u = (size_t)l * KH + h;
                float *g = e->gram + u * SKV_GRAM_LEN(d);
                double he;
                skv_gram_add(g, &e->gram_n[u], d, H->tk, T - old);
                /* an eigen solve per head is O(d^3): redone only when the
                 * keys grew by an eighth since the last one */
                if (!e->gram_at[u] || e->gram_n[u] >= e->gram_at[u] + e->gram_at[u] / 8 + 1) {
                    if ((rc = skv_matrix_entropy(g, e->gram_n[u], d, &he)) < 0)
                        return rc;
                    e->s_kent[u] = (float)he;
                    e->gram_at[u] = e->gram_n[u];
                }
            }
            for (uint64_t t = old; t < T; t++)
                H->bits[t] = 16;  /* pending rows are fp16 */
        }
    /* the problem: importance folded over the GQA group, effective errors */
    for (uint32_t l = 0; l < L; l++)
        for (uint32_t h = 0; h < KH; h++) {
            float *dst = e->s_imp + ((size_t)l * KH + h) * T;
            float *de = e->s_err + ((size_t)l * KH + h) * T * SKV_NBITS;
            const ec_head *H = head_at(e, l, h);
            if (e->votes)
                fold_votes(e, l, h, T, dst);
            /* the widths tokens are stored at (an evicted one is gone; the
             * idealised cache can restore anything) */
            if (!e->cfg.ideal)
                memcpy(e->s_stored + ((size_t)l * KH + h) * T, H->bits, (size_t)T);
            for (uint64_t t = 0; t < T; t++) {
                double s = 0;
                if (e->votes) {
                    s = dst[t];
                } else if (e->track) {
                    for (uint32_t g = 0; g < G; g++)
                        s += e->imp[((size_t)l * c->n_heads + h * G + g) * c->capacity + t];
                    s /= G;
                }
                if (e->cfg.imp_mode == SKV_IMP_NORMALIZED)
                    s /= (double)(T - t);
                dst[t] = isfinite(s) && s > 0 ? (float)s : 0.0f;
                const float *er = H->err + t * SKV_NBITS;
                float *o = de + t * SKV_NBITS;
                uint32_t cur = width_pos(H->bits[t]);
                for (int i = 0; i < SKV_NBITS; i++)
                    o[i] = (!e->cfg.ideal && t < old && (uint32_t)i >= cur) ? er[cur] : er[i];
            }
        }
    float *ent = NULL;
    if (e->entropy) {
        ent = e->s_ent;
        for (uint32_t l = 0; l < L; l++)
            for (uint32_t h = 0; h < KH; h++) {
                double s = 0;
                for (uint32_t g = 0; g < G; g++) {
                    size_t r = (size_t)l * c->n_heads + h * G + g;
                    s += e->ent_cnt[r] ? e->ent_sum[r] / (double)e->ent_cnt[r] : 0;
                }
                ent[l * KH + h] = (float)(s / G);
            }
    }
    skv_alloc_problem P = {L, KH, T, e->s_imp, e->s_err, ent,
                           e->cfg.ideal ? NULL : e->s_stored, e->gram ? e->s_kent : NULL};
    skv_alloc_cfg ac = e->cfg.alloc;
    ac.seed = e->cfg.alloc.seed + e->st.n_realloc;
    unsigned pf = skv_policy_flags(ac.policy);
    if (pf & SKV_PF_FIXED)
        ac.budget = 0;
    skv_alloc_result res;
    rc = skv_alloc_solve(&ac, &P, e->s_bits, &res);
    if (rc == SKV_EINVAL && !(pf & SKV_PF_FIXED) && res.min_bytes > res.budget_bytes &&
        res.fp16_bytes) {
        /* few tokens yet: the framing of the buckets does not fit the budget;
         * solve at the smallest cache these settings allow */
        skv_error_clear();
        ac.budget = ((double)res.min_bytes + 1.0) / (double)res.fp16_bytes;
        rc = skv_alloc_solve(&ac, &P, e->s_bits, &res);
        e->st.n_budget_raised++;
    }
    if (rc < 0)
        return skv_error(rc, "kv cache: allocation at %llu tokens: %s", (unsigned long long)T,
                         skv_errmsg());
    for (uint32_t l = 0; l < L; l++)
        for (uint32_t h = 0; h < KH; h++) {
            /* rebuild_head needs the old widths of allocated tokens; pending
             * ones were marked 16 above but live in the tail */
            if ((rc = rebuild_head(e, l, h, e->s_bits + ((size_t)l * KH + h) * T, T, old)) < 0)
                return rc;
            if (e->rocket && (rc = rocket_refresh(e, l, h)) < 0)
                return rc;
        }
    e->n_alloc = T;
    e->st.n_realloc++;
    e->st.alloc_beta_sum += (double)res.bytes / (double)res.fp16_bytes;
    e->st.realloc_ns += now_ns() - t_start;
    return 0;
}

void skv_ec_hold(skv_kv_cache *c, int hold)
{
    skv_ecg_hold(c, hold);
    skv_pm_hold(c, hold);  /* merge.c; no-op for other caches */
    skv_atskv_hold(c, hold);
    skv_zack_hold(c, hold);
    ec_cache *e = as_ec(c);
    if (e)
        e->hold = hold;
}

/* ---------------------------------------------------------------- ops */

/* The fp16 kind's append: rows stored as fp16 (decode attention over a long
 * cache is bound by the bytes it reads), after ec_f16_row's range check. */
static int append_half(ec_cache *e, uint32_t layer, uint64_t pos, uint32_t n, const float *k,
                       const float *v)
{
    const uint32_t d = e->base.head_dim, row = e->base.n_kv_heads * d;
    int rc;
    for (uint32_t h = 0; h < e->base.n_kv_heads; h++) {
        ec_head *H = head_at(e, layer, h);
        void *pk = H->hk, *pv = H->hv;
        rc = grow_pair(&pk, &pv, &H->half_cap, pos + n, d, sizeof(uint16_t));
        H->hk = pk;
        H->hv = pv;
        if (rc < 0)
            return rc;
        for (uint32_t i = 0; i < n; i++) {
            float fk[SKV_MAX_HEAD_DIM], fv[SKV_MAX_HEAD_DIM];
            size_t o = (size_t)i * row + (size_t)h * d;
            uint16_t *dk = H->hk + (pos + i) * d, *dv = H->hv + (pos + i) * d;
            if ((rc = ec_f16_row(k + o, v + o, fk, fv, d, layer, h, pos + i)) < 0)
                return rc;
            for (uint32_t j = 0; j < d; j++) {
                dk[j] = skv_f32_to_f16(fk[j]);
                dv[j] = skv_f32_to_f16(fv[j]);
            }
        }
    }
    return 0;
}

static int ec_append(skv_kv_cache *c, uint32_t layer, uint64_t pos, uint32_t n, const float *k,
                     const float *v)
{
    ec_cache *e = (ec_cache *)c;
    int rc;
    /* pos < held: re-evaluation of forgotten positions, dropped everywhere */
    if ((rc = skv_kv_append_check(c, layer, pos, n, e->len)) > 0)
        rc = cut_to(e, pos);
    if (rc < 0)
        return rc;
    if (layer == 0 && !e->hold && e->cfg.kind == SKV_EC_COMPRESS && pos > e->n_alloc &&
        pos - e->n_alloc >= e->cfg.realloc) {
        if ((rc = skv_ec_realloc(c)) < 0)
            return rc;
    }
    const uint32_t d = c->head_dim, row = c->n_kv_heads * d;
    const uint64_t base = pos - e->n_alloc;
    if (e->cfg.kind == SKV_EC_FP16) {
        if ((rc = append_half(e, layer, pos, n, k, v)) < 0)
            return rc;
        e->len[layer] = pos + n;
        return 0;
    }
    for (uint32_t h = 0; h < c->n_kv_heads; h++) {
        ec_head *H = head_at(e, layer, h);
        if ((rc = grow_rows(&H->tk, &H->tv, &H->tail_cap, base + n, d)) < 0)
            return rc;
        if (e->cfg.ideal && (rc = grow_rows(&H->fk, &H->fv, &H->full_cap, pos + n, d)) < 0)
            return rc;
        for (uint32_t i = 0; i < n; i++) {
            float *dk = H->tk + (base + i) * d, *dv = H->tv + (base + i) * d;
            const float *sk = k + (size_t)i * row + (size_t)h * d;
            const float *sv = v + (size_t)i * row + (size_t)h * d;
            if (e->cfg.kind == SKV_EC_F32) {
                memcpy(dk, sk, d * sizeof(float));
                memcpy(dv, sv, d * sizeof(float));
            } else if ((rc = ec_f16_row(sk, sv, dk, dv, d, layer, h, pos + i)) < 0) {
                return rc;
            }
            if (e->cfg.ideal) {
                memcpy(H->fk + (pos + i) * d, dk, d * sizeof(float));
                memcpy(H->fv + (pos + i) * d, dv, d * sizeof(float));
            }
        }
    }
    e->len[layer] = pos + n;
    return 0;
}

static int ec_attend(skv_kv_cache *c, uint32_t layer, uint32_t head, uint64_t pos, uint32_t n,
                     const float *q, size_t q_stride, float scale, float *out, size_t out_stride,
                     float *probs, size_t probs_stride)
{
    ec_cache *e = (ec_cache *)c;
    int rc = skv_kv_attend_check(c, layer, head, pos, n, e->len);
    if (rc < 0)
        return rc;
    uint64_t t0 = now_ns();
    const ec_head *H = head_at(e, layer, head / e->G);
    skv_att_rows R = {c->head_dim, H->n_parts, H->bk, H->tk, H->tv, e->n_alloc,
                      e->len[layer] - e->n_alloc, H->hk, H->hv};
    uint64_t ctx = pos + n;
    if (e->rocket && e->n_alloc > 0) { /* RocketKV's stage 2 after the first eviction */
        if ((rc = rocket_attend(e, H, layer, pos, n, q, q_stride, scale, out, out_stride, probs,
                                probs_stride)) < 0)
            return rc;
    } else {
        for (uint32_t i = 0; i < n; i++)
            if ((rc = skv_attend_rows(e->cfg.kernel, &R, q + i * q_stride, 1, scale, pos + i,
                                      out + i * out_stride, probs + i * probs_stride, 0, ctx)) < 0)
                return rc;
    }
    uint64_t t1 = now_ns();
    atomic_fetch_add_explicit(&e->attend_ns, t1 - t0, memory_order_relaxed);
    size_t r = (size_t)layer * c->n_heads + head;
    if (e->votes) {
        /* keep the rows of the newest W queries (SnapKV's observation window) */
        const uint32_t W = e->W ? e->W : 1; /* >= 1 by construction */
        for (uint32_t i = n > W ? n - W : 0; i < n; i++) {
            uint64_t qp = pos + i, slot = qp % W;
            memcpy(e->ring + (r * W + slot) * c->capacity, probs + i * probs_stride,
                   (size_t)(qp + 1) * sizeof(float));
            e->ring_q[r * W + slot] = qp + 1;
        }
        atomic_fetch_add_explicit(&e->track_ns, now_ns() - t1, memory_order_relaxed);
        return 0;
    }
    if (!e->track)
        return 0;
    ec_track(e->imp + r * c->capacity, probs, probs_stride, pos, n, e->cfg.imp_mode == SKV_IMP_EMA,
             (float)e->cfg.decay, 1);
    for (uint32_t i = 0; i < n && e->entropy; i++) {
        const float *p = probs + i * probs_stride;
        double s = 0;
        for (uint64_t j = 0; j < pos + i + 1; j++)
            if (p[j] > 0)
                s -= (double)p[j] * log((double)p[j]);
        e->ent_sum[r] += s;
        e->ent_cnt[r]++;
    }
    atomic_fetch_add_explicit(&e->track_ns, now_ns() - t1, memory_order_relaxed);
    return 0;
}

static int ec_truncate(skv_kv_cache *c, uint64_t n)
{
    ec_cache *e = (ec_cache *)c;
    return skv_kv_truncates(c, n, e->len) ? cut_to(e, n) : 0;
}

static void ec_destroy(skv_kv_cache *c)
{
    ec_cache *e = (ec_cache *)c;
    if (e->heads)
        for (size_t i = 0; i < (size_t)c->n_layers * c->n_kv_heads; i++) {
            ec_head *H = &e->heads[i];
            free_parts(H);
            free(H->bits);
            free(H->err);
            free(H->tk);
            free(H->tv);
            free(H->hk);
            free(H->hv);
            free(H->fk);
            free(H->fv);
            free(H->rk);
            free(H->rv);
            free(H->rpos);
        }
    free(e->heads);
    free(e->len);
    free(e->imp);
    free(e->ring);
    free(e->ring_q);
    free(e->ent_sum);
    free(e->ent_cnt);
    free(e->gram);
    free(e->gram_n);
    free(e->gram_at);
    free(e->s_kent);
    free(e->s_imp);
    free(e->s_err);
    free(e->s_ent);
    free(e->s_bits);
    free(e->s_stored);
    free(e->src_part);
    free(e->src_row);
    free(e->idx);
    free(e);
}

static const skv_kv_ops ec_ops = {ec_append, ec_attend, ec_truncate, ec_destroy};

skv_kv_cache *skv_ec_new(const skv_ec_cfg *cfg, uint32_t n_layers, uint32_t n_heads,
                         uint32_t n_kv_heads, uint32_t head_dim, uint64_t capacity)
{
    if (!n_layers || !n_heads || !n_kv_heads || !head_dim || head_dim > SKV_MAX_HEAD_DIM ||
        !capacity || capacity > SKV_MAX_TOKENS || n_heads % n_kv_heads)
        return skv_error(SKV_EINVAL, "kv cache: bad shape (layers %u, heads %u/%u, head_dim %u, "
                         "capacity %llu)", n_layers, n_heads, n_kv_heads, head_dim,
                         (unsigned long long)capacity), NULL;
    if (cfg->kind == SKV_EC_PRUNE_MERGE)  /* merge.c */
        return skv_ec_pm_new(cfg, n_layers, n_heads, n_kv_heads, head_dim, capacity);
    if (skv_ec_cfg_check(cfg) < 0)
        return NULL;
    if (cfg->kind == SKV_EC_COMPRESS && cfg->layout == SKV_EC_GROUPED)
        return skv_ecg_new(cfg, n_layers, n_heads, n_kv_heads, head_dim, capacity);
    if (cfg->kind == SKV_EC_ZACK)
        return skv_zack_new(cfg, n_layers, n_heads, n_kv_heads, head_dim, capacity);
    if (cfg->kind == SKV_EC_ATSKV)
        return skv_atskv_new(cfg, n_layers, n_heads, n_kv_heads, head_dim, capacity);
    ec_cache *e = skv_calloc(1, sizeof *e);
    if (!e)
        return NULL;
    skv_kv_base_init(&e->base, &ec_ops, n_layers, n_heads, n_kv_heads, head_dim, capacity);
    e->cfg = *cfg;
    e->G = n_heads / n_kv_heads;
    if (cfg->kind == SKV_EC_COMPRESS) {
        /* what the policy fixes: widths, layout, importance mode */
        if (skv_alloc_cfg_resolve(&e->cfg.alloc) < 0)
            goto fail;
        e->cfg.imp_mode = skv_policy_imp_mode(cfg->alloc.policy, cfg->imp_mode);
    }
    skv_qcfg *q = &e->cfg.alloc.qcfg;
    q->head_dim = head_dim;
    if (!q->k_group)
        q->k_group = head_dim;
    if (!q->v_group)
        q->v_group = head_dim;
    if (!q->k_mode)
        q->k_mode = SKV_QMODE_ASYM;
    if (!q->v_mode)
        q->v_mode = SKV_QMODE_ASYM;
    int compress = cfg->kind == SKV_EC_COMPRESS;
    if (compress && skv_qcfg_check(q) < 0)
        goto fail;
    if (e->cfg.ideal && !compress)
        e->cfg.ideal = 0;
    unsigned pf = skv_policy_flags(cfg->alloc.policy);
    e->votes = compress && (pf & SKV_PF_VOTES);
    e->track = compress && (pf & SKV_PF_IMPORTANCE) && !e->votes;
    e->W = e->cfg.alloc.recent ? e->cfg.alloc.recent : 1;
    e->entropy = compress && (pf & SKV_PF_ENTROPY);
    e->rocket = compress && cfg->alloc.policy == SKV_POLICY_ROCKETKV;
    size_t nh = (size_t)n_layers * n_kv_heads, ni;
    if (!(e->len = skv_calloc(n_layers, sizeof *e->len)) ||
        !(e->heads = skv_calloc(nh, sizeof *e->heads)))
        goto fail;
    if (compress) {
        size_t ne;
        if (skv_mul_sizes(&ne, 3, (size_t)capacity, (size_t)SKV_NBITS, sizeof(float)) < 0) {
            skv_error(SKV_ELIMIT, "kv cache: capacity %llu overflows", (unsigned long long)capacity);
            goto fail;
        }
        for (size_t i = 0; i < nh; i++)
            if (!(e->heads[i].bits = skv_calloc((size_t)capacity, 1)) ||
                !(e->heads[i].err = skv_malloc(ne)))
                goto fail;
        if (!(e->src_part = skv_malloc((size_t)capacity * 4)) ||
            !(e->src_row = skv_malloc((size_t)capacity * 4)) ||
            !(e->idx = skv_malloc((size_t)capacity * 4)))
            goto fail;
        if (e->track) {
            if (skv_mul_sizes(&ni, 4, (size_t)n_layers, (size_t)n_heads, (size_t)capacity,
                              sizeof(float)) < 0) {
                skv_error(SKV_ELIMIT, "kv cache: importance state overflows");
                goto fail;
            }
            if (!(e->imp = skv_calloc(1, ni)))
                goto fail;
        }
        if (e->votes) {
            size_t nr;
            if (skv_mul_sizes(&nr, 5, (size_t)n_layers, (size_t)n_heads, (size_t)e->W,
                              (size_t)capacity, sizeof(float)) < 0) {
                skv_error(SKV_ELIMIT, "kv cache: observation window state overflows");
                goto fail;
            }
            if (!(e->ring = skv_malloc(nr)) ||
                !(e->ring_q = skv_calloc((size_t)n_layers * n_heads * e->W, sizeof(uint64_t))))
                goto fail;
        }
        if (e->entropy &&
            (!(e->ent_sum = skv_calloc((size_t)n_layers * n_heads, sizeof(double))) ||
             !(e->ent_cnt = skv_calloc((size_t)n_layers * n_heads, sizeof(uint64_t))) ||
             !(e->s_ent = skv_calloc(nh, sizeof(float)))))
            goto fail;
        if ((pf & SKV_PF_KENTROPY) &&
            (!(e->gram = skv_calloc(nh * SKV_GRAM_LEN(head_dim), sizeof(float))) ||
             !(e->gram_n = skv_calloc(nh, sizeof(uint64_t))) ||
             !(e->gram_at = skv_calloc(nh, sizeof(uint64_t))) ||
             !(e->s_kent = skv_calloc(nh, sizeof(float)))))
            goto fail;
    }
    return &e->base;
fail:
    ec_destroy(&e->base);
    return NULL;
}

/* ---------------------------------------------------------------- stats */

int skv_ec_stats_get(const skv_kv_cache *cc, skv_ec_stats *s)
{
    if (skv_ecg_is(cc))
        return skv_ecg_stats(cc, s);
    if (skv_pm_is(cc))  /* merge.c */
        return skv_ec_pm_stats(cc, s);
    if (skv_atskv_is(cc))
        return skv_atskv_stats(cc, s);
    if (skv_zack_is(cc))
        return skv_zack_stats(cc, s);
    ec_cache *e = as_ec((skv_kv_cache *)cc);
    if (!e)
        return skv_error(SKV_EINVAL, "kv cache: not a compressed cache");
    const skv_kv_cache *c = &e->base;
    const uint32_t d = c->head_dim;
    *s = e->st;
    s->track_ns = atomic_load(&e->track_ns);
    s->attend_ns = atomic_load(&e->attend_ns);
    s->n_tokens = e->len[0];
    s->n_alloc = e->n_alloc;
    s->fp16_bytes = skv_alloc_fp16_bytes(c->n_layers, c->n_kv_heads, s->n_tokens, d);
    memset(s->hist, 0, sizeof s->hist);
    s->mem_bytes = 0;
    s->meta_bytes = 0;
    if (e->cfg.kind != SKV_EC_COMPRESS) {
        s->bytes = e->cfg.kind == SKV_EC_F32 ? 2 * s->fp16_bytes : s->fp16_bytes;
        s->mem_bytes = e->cfg.kind == SKV_EC_F32 ? 2 * s->fp16_bytes : s->fp16_bytes;
        return 0;
    }
    const skv_qcfg *q = &e->cfg.alloc.qcfg;
    uint64_t bytes = skv_alloc_pkhd_bytes(q);
    for (uint32_t l = 0; l < c->n_layers; l++)
        for (uint32_t h = 0; h < c->n_kv_heads; h++) {
            const ec_head *H = head_at(e, l, h);
            uint64_t cnt[SKV_NBITS] = {0};
            for (uint32_t p = 0; p < H->n_parts; p++) {
                cnt[width_pos(H->bk[p].bits)] += H->bk[p].n;
                s->mem_bytes += H->parts[p].size;
            }
            for (int w = 0; w < SKV_NBITS; w++)
                s->hist[w] += cnt[w];
            uint64_t pend = e->len[l] > e->n_alloc ? e->len[l] - e->n_alloc : 0;
            cnt[width_pos(16)] += pend;
            for (int w = 1; w < SKV_NBITS; w++)
                bytes += skv_bucket_file_bytes(q, skv_bit_widths[w], cnt[w]);
            if (e->rocket) { /* stage 2's page key bounds over every held token */
                bytes += SKV_ROCKET_AUX(H->rn + pend, d);
                s->mem_bytes += H->rn * d * 2 * sizeof(float); /* the dequantized copy */
            }
            s->mem_bytes += pend * d * 2 * sizeof(float);
            if (e->cfg.ideal)
                s->mem_bytes += (uint64_t)e->len[l] * d * 2 * sizeof(float);
            /* width + error model per allocated token (the allocator's input;
             * uniform needs neither) */
            if (e->track || e->votes)
                s->meta_bytes += e->n_alloc * (1 + SKV_NBITS * sizeof(float));
        }
    if (e->track)
        s->meta_bytes += (uint64_t)c->n_layers * c->n_heads * s->n_tokens * sizeof(float);
    if (e->gram) /* uncomp: one Gram matrix per (layer, kv head) */
        s->meta_bytes += (uint64_t)c->n_layers * c->n_kv_heads *
                         (SKV_GRAM_LEN(d) * sizeof(float) + 2 * sizeof(uint64_t) + sizeof(float));
    if (e->votes) /* the window's rows */
        s->meta_bytes += (uint64_t)c->n_layers * c->n_heads *
                         (s->n_tokens < e->W ? s->n_tokens : e->W) * s->n_tokens * sizeof(float);
    s->bytes = bytes;
    return 0;
}

void skv_ec_stats_reset(skv_kv_cache *cc)
{
    skv_ecg_stats_reset(cc);
    skv_atskv_stats_reset(cc);
    skv_zack_stats_reset(cc);
    ec_cache *e = as_ec(cc);
    if (!e)
        return;
    memset(&e->st, 0, sizeof e->st);
    atomic_store(&e->track_ns, 0);
    atomic_store(&e->attend_ns, 0);
}

const uint8_t *skv_ec_widths(const skv_kv_cache *cc, uint32_t layer, uint32_t kv_head)
{
    if (skv_ecg_is(cc))
        return skv_ecg_widths(cc, layer, kv_head);
    ec_cache *e = as_ec((skv_kv_cache *)cc);
    if (!e || e->cfg.kind != SKV_EC_COMPRESS || layer >= cc->n_layers || kv_head >= cc->n_kv_heads)
        return NULL;
    return head_at(e, layer, kv_head)->bits;
}
