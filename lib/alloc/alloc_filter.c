/* alloc_filter.c -- the skv-alloc pipeline stage: copy a trace through
 * unchanged while replaying its attention layer by layer, then solve the
 * allocation and append ALHD + ALOC chunks before the end of the stream.
 *
 * Chunks are handled one at a time so that every trace chunk is copied
 * verbatim (skv_copy_chunk) and only one layer's Q/K/V is in memory; the
 * per-layer importance and error-model arrays (O(layers * kv heads *
 * tokens)) are kept for the global budget, which spans all layers. */
#include "smartkv_alloc.h"
#include "smartkv_quant.h"
#include "smartkv_relevance.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct filt {
    skv_trace_hdr hdr;
    int have_hdr;
    uint64_t toks;       /* token ids seen */
    uint32_t layer;      /* layer being read */
    uint32_t kind;       /* 0 Q, 1 K, 2 V */
    uint32_t head;
    uint64_t row;        /* rows of this head seen */
    skv_layer L;
    float *imp;          /* [n_layers][n_kv][T] */
    float *err;          /* [n_layers][n_kv][T][SKV_NBITS] */
    float *ent;          /* [n_layers][n_kv] */
    float *kent;         /* [n_layers][n_kv] matrix entropy of the keys (uncomp) */
    int want_kent;
    int want_ent;        /* the policy reads the attention entropy (SKV_PF_ENTROPY) */
    size_t cap[3];       /* bytes allocated of imp, err, ent (grown per layer) */
    skv_alloc_seq old;   /* an earlier allocation in the input, checked then replaced */
    skv_qcfg q;
    /* SKV_PF_RELEVANCE: the importance is the learned relevance (acfg->rlv) */
    const skv_alloc_cfg *rcfg;  /* NULL unless the policy reads the relevance */
    int32_t *ids;        /* [T] token ids (TOKS chunks) */
    skv_hidden *hs;      /* hidden states (hidn chunks), one layer kept at a time */
} filt;

static int layer_done(filt *f, const skv_imp_cfg *icfg)
{
    const skv_trace_hdr *h = &f->hdr;
    size_t per = (size_t)h->n_kv_heads * h->n_tokens, nl = (size_t)f->layer + 1;
    size_t full = (size_t)h->n_layers * per * sizeof(float);
    /* grown layer by layer: a header alone costs nothing */
    int rc;
    if ((rc = skv_grow((void **)&f->imp, &f->cap[0], nl * per * sizeof(float), full)) < 0 ||
        (rc = skv_grow((void **)&f->err, &f->cap[1], nl * per * SKV_NBITS * sizeof(float),
                       full * SKV_NBITS)) < 0 ||
        (f->want_ent &&
         (rc = skv_grow((void **)&f->ent, &f->cap[2], nl * h->n_kv_heads * sizeof(float),
                        (size_t)h->n_layers * h->n_kv_heads * sizeof(float))) < 0))
        return rc;
    rc = skv_importance_layer(icfg, h, &f->L, f->imp + (size_t)f->layer * per,
                              f->want_ent ? f->ent + (size_t)f->layer * h->n_kv_heads : NULL);
    if (rc < 0)
        return rc;
    if (f->rcfg) {
        /* the learned relevance replaces the importance (the entropies stay) */
        const float *hid = f->hs->rows[f->layer] == h->n_tokens ? f->hs->h[f->layer] : NULL;
        rc = skv_rlv_layer_relevance(f->rcfg->rlv, h, &f->L, f->ids, f->rcfg->rlv_voc, hid,
                                     f->hs->n_embd, f->imp + (size_t)f->layer * per);
        free(f->hs->h[f->layer]);   /* one layer's hidden states at a time */
        f->hs->h[f->layer] = NULL;
        if (rc < 0)
            return rc;
    }
    if (f->want_kent) {
        const uint32_t d = h->head_dim;
        float *g = skv_malloc(SKV_GRAM_LEN(d) * sizeof(float));
        if (!g)
            return SKV_ENOMEM;
        for (uint32_t kh = 0; kh < h->n_kv_heads && rc == 0; kh++) {
            double e;
            uint64_t n = 0;
            memset(g, 0, SKV_GRAM_LEN(d) * sizeof(float));
            skv_gram_add(g, &n, d, f->L.k + (size_t)kh * h->n_tokens * d, h->n_tokens);
            if ((rc = skv_matrix_entropy(g, n, d, &e)) == 0)
                f->kent[(size_t)f->layer * h->n_kv_heads + kh] = (float)e;
        }
        free(g);
        if (rc < 0)
            return rc;
    }
    for (uint32_t kh = 0; kh < h->n_kv_heads; kh++) {
        size_t at = (size_t)kh * h->n_tokens * h->head_dim;
        skv_alloc_token_errors(&f->q, f->L.k + at, f->L.v + at, h->n_tokens,
                               f->err + ((size_t)f->layer * per + (size_t)kh * h->n_tokens) *
                                            SKV_NBITS);
    }
    return 0;
}

static int on_trhd(filt *f, const skv_chunk *c, const skv_alloc_cfg *acfg)
{
    int rc;
    if (f->have_hdr)
        return skv_error(SKV_EFORMAT, "second TRHD chunk at byte %llu",
                         (unsigned long long)c->offset);
    if ((rc = skv_trhd_decode(c, &f->hdr)) < 0)
        return rc;
    f->have_hdr = 1;
    const skv_trace_hdr *h = &f->hdr;
    if (h->flags & (SKV_TRACE_PACKED | SKV_TRACE_NO_QUERIES))
        return skv_error(SKV_EFORMAT, "this stream holds a packed cache, not a trace; "
                         "allocate on the trace before skv-quant");
    if (h->n_tokens > SKV_ALOC_MAX_TOKENS)
        return skv_error(SKV_ELIMIT, "%llu tokens: an allocation holds at most %llu",
                         (unsigned long long)h->n_tokens, SKV_ALOC_MAX_TOKENS);
    f->q = acfg->qcfg;
    f->q.head_dim = h->head_dim;
    if (!f->q.k_group)
        f->q.k_group = h->head_dim;
    if (!f->q.v_group)
        f->q.v_group = h->head_dim;
    if (f->q.k_mode == SKV_QMODE_CHAN && (skv_policy_flags(acfg->policy) & SKV_PF_LAYOUT) &&
        h->head_dim % f->q.v_group)
        f->q.v_group = h->head_dim;  /* kivi: as skv_alloc_cfg_resolve with head_dim known */
    if ((rc = skv_qcfg_check(&f->q)) < 0)
        return rc; /* SKV_EINVAL: a setting that does not fit this trace */
    size_t per, nerr;
    if (skv_mul_sizes(&per, 3, (size_t)h->n_layers, (size_t)h->n_kv_heads, (size_t)h->n_tokens) ||
        skv_mul_sizes(&nerr, 3, per, (size_t)SKV_NBITS, sizeof(float)))
        return skv_error(SKV_ELIMIT, "trace too large to allocate");
    if ((skv_policy_flags(acfg->policy) & SKV_PF_KENTROPY) &&
        !(f->kent = skv_calloc((size_t)h->n_layers * h->n_kv_heads, sizeof(float))))
        return SKV_ENOMEM;
    f->want_kent = f->kent != NULL;
    f->want_ent = (skv_policy_flags(acfg->policy) & SKV_PF_ENTROPY) != 0;
    if (skv_policy_flags(acfg->policy) & SKV_PF_RELEVANCE) {
        if (!acfg->rlv)
            return skv_error(SKV_EINVAL, "policy %s needs relevance weights (skv-alloc train)",
                             skv_policy_name(acfg->policy));
        f->rcfg = acfg;
        if (!(f->ids = skv_malloc((size_t)h->n_tokens * sizeof *f->ids)) ||
            !(f->hs = skv_hidden_new(h->n_layers, h->n_tokens)))
            return SKV_ENOMEM;
        for (uint64_t i = 0; i < h->n_tokens; i++)
            f->ids[i] = -1;
    }
    return 0; /* buffers grow as the layers arrive (on_tens, layer_done) */
}

static int on_toks(filt *f, const skv_chunk *c)
{
    const skv_trace_hdr *h = &f->hdr;
    if (!(h->flags & SKV_TRACE_HAS_TOKENS) || f->layer || f->kind || f->head || f->row)
        return skv_error(SKV_EFORMAT, "unexpected TOKS chunk at byte %llu",
                         (unsigned long long)c->offset);
    if (c->raw_size < 16)
        return skv_error(SKV_EFORMAT, "TOKS chunk at byte %llu too short",
                         (unsigned long long)c->offset);
    uint64_t t0 = skv_get64(c->data), n = skv_get64(c->data + 8);
    if (t0 != f->toks || n == 0 || n > h->n_tokens - f->toks || 16 + n * 4 != c->raw_size)
        return skv_error(SKV_EFORMAT, "TOKS chunk at byte %llu: tokens %llu+%llu do not "
                         "continue at %llu within %llu tokens", (unsigned long long)c->offset,
                         (unsigned long long)t0, (unsigned long long)n,
                         (unsigned long long)f->toks, (unsigned long long)h->n_tokens);
    if (f->ids)
        for (uint64_t i = 0; i < n; i++)
            f->ids[t0 + i] = (int32_t)skv_get32(c->data + 16 + 4 * i);
    f->toks += n;
    return 0;
}

static int on_tens(filt *f, const skv_chunk *c, const skv_imp_cfg *icfg)
{
    const skv_trace_hdr *h = &f->hdr;
    static const uint32_t kinds[3] = {SKV_TK_Q, SKV_TK_K, SKV_TK_V};
    int rc;
    if ((h->flags & SKV_TRACE_HAS_TOKENS) && f->toks < h->n_tokens)
        return skv_error(SKV_EFORMAT, "TENS chunk at byte %llu before all token ids",
                         (unsigned long long)c->offset);
    if (f->layer >= h->n_layers)
        return skv_error(SKV_EFORMAT, "TENS chunk at byte %llu after the last layer",
                         (unsigned long long)c->offset);
    skv_tens t;
    if ((rc = skv_tens_decode(c, &t)) < 0)
        return rc;
    if (t.kind != kinds[f->kind] || t.layer != f->layer || t.head != f->head ||
        t.row0 != f->row || t.rows == 0 || t.rows > h->n_tokens - f->row ||
        t.cols != h->head_dim || t.dtype != h->dtype)
        return skv_error(SKV_EFORMAT, "TENS chunk at byte %llu is %s layer %u head %u rows "
                         "%llu+%llu (%u cols, %s); expected %s layer %u head %u from row %llu "
                         "(%u cols, %s)", (unsigned long long)c->offset,
                         skv_tensor_kind_name(t.kind), t.layer, t.head,
                         (unsigned long long)t.row0, (unsigned long long)t.rows, t.cols,
                         skv_dtype_name(t.dtype), skv_tensor_kind_name(kinds[f->kind]),
                         f->layer, f->head, (unsigned long long)f->row, h->head_dim,
                         skv_dtype_name(h->dtype));
    float **dst = f->kind == 0 ? &f->L.q : f->kind == 1 ? &f->L.k : &f->L.v;
    size_t at = ((size_t)f->head * h->n_tokens + f->row) * h->head_dim;
    size_t full = (size_t)(f->kind ? h->n_kv_heads : h->n_heads) * h->n_tokens * h->head_dim;
    if ((rc = skv_grow((void **)dst, &f->L.cap[f->kind], (at + (size_t)t.rows * h->head_dim) *
                       sizeof(float), full * sizeof(float))) < 0)
        return rc;
    skv_tens_to_f32(&t, *dst + at);
    /* skv-quant's rule, so that no allocation is made for a trace it refuses */
    if ((rc = skv_trace_values_check(t.kind, t.layer, t.head, t.row0, t.rows, t.cols,
                                     *dst + at)) < 0)
        return rc;
    f->row += t.rows;
    if (f->row < h->n_tokens)
        return 0;
    f->row = 0;
    uint32_t nh = f->kind == 0 ? h->n_heads : h->n_kv_heads;
    if (++f->head < nh)
        return 0;
    f->head = 0;
    if (++f->kind < 3)
        return 0;
    f->kind = 0;
    f->L.index = f->layer;
    if ((rc = layer_done(f, icfg)) < 0)
        return rc;
    f->layer++;
    return 0;
}

static void describe(char *buf, size_t n, const skv_alloc_cfg *a, const skv_imp_cfg *i)
{
    char wl[32];
    skv_width_mask_format(a->width_mask, wl, sizeof wl);
    char pol[32];
    if (a->prune_merge) {
        snprintf(buf, n, "policy=prune-merge beta=%.10g max-cache-size=%u num-clusters=%u "
                 "lookback-window=%u kmeans-learning-rate=0 bits=%s sinks=%u recent=%u%s",
                 a->budget, a->pm_max_cache, a->pm_clusters, a->pm_lookback, wl, a->sinks,
                 a->recent, a->pm_max_cache && a->budget > 0 ? " kept=smartkv" : "");
        return;
    }
    skv_policy_format(a->policy, a->uniform_bits, pol, sizeof pol);
    snprintf(buf, n, "policy=%s beta=%.10g importance=%s decay=%.10g realloc=%u window=%u "
             "bits=%s sinks=%u recent=%u seed=%llu share-layers=%u",
             pol, a->budget, skv_imp_mode_name(i->mode), i->decay, i->realloc, i->window, wl,
             a->sinks, a->recent, (unsigned long long)a->seed, a->share_layers ? 1u : 0u);
    size_t w = strlen(buf);
    if (a->qcfg.k_mode == SKV_QMODE_CHAN && w < n)
        snprintf(buf + w, n - w, " keys=channel key-tokens=%u", a->qcfg.k_tokens);
}

int skv_alloc_filter(skv_stream *in, skv_stream *out, const skv_alloc_cfg *acfg,
                     const skv_imp_cfg *icfg, skv_alloc **out_alloc, skv_alloc_result *res)
{
    filt F, *f = &F;
    memset(f, 0, sizeof F);
    skv_alloc *a = NULL;
    skv_alloc_result r;
    memset(&r, 0, sizeof r);
    if (out_alloc)
        *out_alloc = NULL;
    /* what the policy fixes: widths, layout, importance mode (snapkv's
     * observation window is the recent window) */
    skv_alloc_cfg ra = *acfg;
    skv_imp_cfg ri = *icfg;
    int rc = skv_alloc_cfg_resolve(&ra);
    if (rc < 0)
        return rc;
    ri.mode = skv_policy_imp_mode(ra.policy, ri.mode);
    if ((skv_policy_flags(ra.policy) & SKV_PF_VOTES) && ra.recent)
        ri.window = ra.recent;
    if (ra.prune_merge) {
        /* scores: the attention of the last D queries (the lookback window) */
        if (ra.share_layers)
            return skv_error(SKV_EINVAL, "prune-merge keeps tokens per layer; it cannot share "
                             "layers");
        ri.mode = SKV_IMP_WINDOW;
        ri.window = ra.pm_lookback;
    }
    acfg = &ra;
    icfg = &ri;
    if ((rc = skv_imp_cfg_check(icfg)) < 0)
        return rc;
    for (;;) {
        skv_chunk c;
        rc = skv_read(in, &c);
        if (rc < 0)
            goto out;
        if (rc == 0)
            break;
        if (skv_chunk_is(&c, SKV_T_TRHD)) {
            rc = on_trhd(f, &c, acfg);
        } else if (skv_chunk_is(&c, SKV_T_TOKS) || skv_chunk_is(&c, SKV_T_TENS)) {
            if (!f->have_hdr)
                rc = skv_error(SKV_EFORMAT, "%s chunk at byte %llu before the trace header",
                               c.type, (unsigned long long)c.offset);
            else if (skv_chunk_is(&c, SKV_T_TOKS))
                rc = on_toks(f, &c);
            else
                rc = on_tens(f, &c, icfg);
        } else if (skv_chunk_is(&c, SKV_T_ALHD) || skv_chunk_is(&c, SKV_T_ALOC)) {
            /* an earlier allocation: checked like any input, then replaced by ours */
            if (!f->have_hdr || f->layer < f->hdr.n_layers)
                rc = skv_error(SKV_EFORMAT, "%s chunk at byte %llu before the last layer",
                               c.type, (unsigned long long)c.offset);
            else
                rc = skv_alloc_seq_chunk(&f->old, &f->hdr, &c);
            if (rc < 0)
                goto out;
            continue;
        } else if (skv_chunk_is(&c, SKV_T_HIDN) && f->hs) {
            rc = skv_hidden_add(f->hs, &c);
        } else if (skv_chunk_is_critical(c.type)) {
            rc = skv_error(SKV_EUNSUP, "unknown critical chunk %s at byte %llu", c.type,
                           (unsigned long long)c.offset);
        }
        if (rc < 0)
            goto out;
        if ((rc = skv_copy_chunk(out, &c)) < 0)
            goto out;
    }
    if (!f->have_hdr) {
        rc = skv_error(SKV_EFORMAT, "no trace header (TRHD) in the stream");
        goto out;
    }
    const skv_trace_hdr *h = &f->hdr;
    if (f->layer < h->n_layers) {
        rc = skv_error(SKV_EFORMAT, "stream ends inside layer %u (%s head %u, row %llu of %llu)",
                       f->layer, skv_tensor_kind_name(f->kind + 1), f->head,
                       (unsigned long long)f->row, (unsigned long long)h->n_tokens);
        goto out;
    }
    if ((rc = skv_alloc_seq_end(&f->old)) < 0)
        goto out;
    skv_layer_free(&f->L);
    if (acfg->share_layers)
        skv_importance_share_layers(f->imp, h->n_layers, h->n_kv_heads, h->n_tokens);

    skv_alloc_hdr ah;
    memset(&ah, 0, sizeof ah);
    ah.budget = acfg->budget;
    ah.n_layers = h->n_layers;
    ah.n_kv_heads = h->n_kv_heads;
    ah.n_tokens = h->n_tokens;
    ah.width_mask = acfg->width_mask | (acfg->prune_merge ? 1u : 0u);
    ah.flags = acfg->share_layers ? SKV_ALHD_SHARE_LAYERS : 0;
    if (acfg->prune_merge && acfg->pm_clusters) {
        ah.flags |= SKV_ALHD_MERGE;
        ah.clusters = acfg->pm_clusters;
    }
    ah.qcfg = f->q;
    describe(ah.text, sizeof ah.text, acfg, icfg);
    if (!(a = skv_alloc_new(&ah))) {
        rc = SKV_ENOMEM;
        goto out;
    }
    skv_alloc_cfg cfg = *acfg;
    cfg.qcfg = f->q;
    skv_alloc_problem p = {h->n_layers, h->n_kv_heads, h->n_tokens, f->imp, f->err, f->ent, NULL,
                           f->kent};
    if ((rc = (cfg.prune_merge ? skv_pm_alloc : skv_alloc_solve)(&cfg, &p, a->bits, &r)) < 0)
        goto out;
    a->hdr.predicted_bytes = r.bytes;
    memcpy(a->importance, f->imp, (size_t)h->n_layers * h->n_kv_heads * h->n_tokens *
                                      sizeof(float));
    if ((rc = skv_alloc_write(out, a)) < 0)
        goto out;
    rc = 0;
out:
    skv_layer_free(&f->L);
    free(f->imp);
    free(f->err);
    free(f->ent);
    free(f->kent);
    free(f->ids);
    skv_hidden_free(f->hs);
    if (rc == 0 && out_alloc)
        *out_alloc = a;
    else
        skv_alloc_free(a);
    if (res)
        *res = r;
    return rc;
}
