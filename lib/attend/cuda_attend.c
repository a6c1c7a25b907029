/* cuda_attend.c -- glue between the library's packed-cache object and the
 * CUDA kernels (smartkv_cuda.h): upload a cache, and the stream-to-stream
 * attention of `skv-attend --device cuda`.  Plain C over the skv_cuda_*
 * API, so it builds with or without CUDA (the stub then reports ENODEV). */
#include "smartkv_attend.h"
#include "smartkv_cache.h"
#include "smartkv_cuda.h"
#include "smartkv_error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The kernels would need each query rotated on the host and each output
 * rotated back: not done, so a rotated cache is refused rather than wrong. */
static int rot_refused(const skv_cache *c)
{
    if (c->pk.q.rotate)
        return skv_error(SKV_EUNSUP, "rotated %s (skv-quant --rotate%s, format 1.3) have no "
                         "CUDA kernel: use --device cpu",
                         c->pk.q.rotate == SKV_ROT_VALUES ? "values" : "keys",
                         c->pk.q.rotate == SKV_ROT_VALUES ? "-values" : "");
    return 0;
}

skv_cuda_cache *skv_cuda_cache_from(const skv_cache *c)
{
    if (!c) {
        skv_error(SKV_EINVAL, "CUDA cache: no cache");
        return NULL;
    }
    if (rot_refused(c) < 0)
        return NULL;
    size_t n = 0, nh = (size_t)c->pk.n_layers * c->pk.n_kv_heads;
#define HEAD(i) skv_cache_head_at(c, (uint32_t)((i) / c->pk.n_kv_heads), \
                                  (uint32_t)((i) % c->pk.n_kv_heads))
    for (size_t i = 0; i < nh; i++)
        n += HEAD(i)->n_buckets;
    const uint8_t **p = skv_calloc(n ? n : 1, sizeof *p);
    uint64_t *sz = skv_calloc(n ? n : 1, sizeof *sz);
    skv_cuda_cache *cc = NULL;
    if (p && sz) {
        size_t k = 0;
        for (size_t i = 0; i < nh; i++)
            for (uint32_t b = 0; b < HEAD(i)->n_buckets; b++, k++) {
                p[k] = HEAD(i)->buckets[b].payload;
                sz[k] = HEAD(i)->buckets[b].payload_bytes;
            }
#undef HEAD
        skv_cuda_shape sh = {c->hdr.n_layers, c->hdr.n_heads, c->hdr.n_kv_heads,
                             c->hdr.head_dim, c->hdr.n_tokens};
        cc = skv_cuda_cache_upload(&sh, p, sz, n);
    }
    free(p);
    free(sz);
    return cc;
}

#define STEP_CHUNK 256u /* steps per kernel launch */

int skv_cuda_cache_supported(const skv_cache *c)
{
    if (c->pk.q.k_mode == SKV_QMODE_CHAN)
        return skv_error(SKV_EUNSUP, "keys per channel (k_mode 4, format 1.2) have no CUDA "
                         "kernel: use --device cpu");
    return rot_refused(c);
}

static int attend_cache(const skv_cache *c, skv_stream *out, const skv_attend_req *req)
{
    const skv_trace_hdr *h = &c->hdr;
    if (c->n_centroids)
        return skv_error(SKV_EUNSUP, "the CUDA kernels do not attend centroids, and this cache "
                         "holds %llu of merged tokens (CNTR chunks): use --device cpu",
                         (unsigned long long)c->n_centroids);
    int rc = skv_cuda_cache_supported(c);
    if (rc < 0)
        return rc;
    if (!c->q)
        return skv_error(SKV_EFORMAT, "the packed cache has no queries (skv-quant keeps them "
                         "only with --keep-queries): give its trace with --queries TRACE");
    uint64_t *steps = NULL, S = 0;
    rc = skv_steps_parse(req->steps, h->n_tokens, &steps, &S);
    if (rc < 0)
        return rc;
    skv_athd A;
    memset(&A, 0, sizeof A);
    A.mode = SKV_ATT_PACKED;
    A.n_layers = h->n_layers;
    A.n_heads = h->n_heads;
    A.n_kv_heads = h->n_kv_heads;
    A.head_dim = h->head_dim;
    A.n_tokens = h->n_tokens;
    A.n_steps = S;
    A.steps = steps;
    A.kv_bytes = c->pk.cache_bytes;
    A.fp16_bytes = c->pk.fp16_bytes;
    snprintf(A.source, sizeof A.source, "%s", h->model);
    if (req->label) {
        snprintf(A.label, sizeof A.label, "%s", req->label);
    } else {
        if (skv_cache_alloc_text(&c->extra, h, A.label, sizeof A.label) <= 0)
            snprintf(A.label, sizeof A.label, "policy=packed");
        skv_error_clear();
    }
    const uint32_t H = h->n_heads, d = h->head_dim;
    const uint64_t T = h->n_tokens;
    const uint32_t chunk = S < STEP_CHUNK ? (uint32_t)S : STEP_CHUNK;
    float *o = NULL, *qc = NULL, *oc = NULL;
    skv_cuda_cache *cc = NULL;
    size_t no, nc;
    if (skv_mul_sizes(&no, 3, (size_t)H, (size_t)S, (size_t)d) < 0 ||
        skv_mul_sizes(&nc, 3, (size_t)H, (size_t)chunk, (size_t)d) < 0) {
        rc = skv_error(SKV_ELIMIT, "attention outputs too large");
        goto done;
    }
    if (!(o = skv_malloc(no * sizeof *o)) || !(qc = skv_malloc(nc * sizeof *qc)) ||
        !(oc = skv_malloc(nc * sizeof *oc))) {
        rc = SKV_ENOMEM;
        goto done;
    }
    if (!(cc = skv_cuda_cache_from(c))) {
        rc = SKV_ENODEV; /* the message says what failed */
        goto done;
    }
    if ((rc = skv_athd_write(out, &A)) < 0)
        goto done;
    for (uint32_t l = 0; l < h->n_layers; l++) {
        for (uint64_t s0 = 0; s0 < S; s0 += chunk) {
            uint32_t sc = (uint32_t)(S - s0 < chunk ? S - s0 : chunk);
            for (uint32_t hd = 0; hd < H; hd++)
                for (uint32_t s = 0; s < sc; s++)
                    memcpy(qc + ((size_t)hd * sc + s) * d,
                           c->q[l] + ((size_t)hd * T + steps[s0 + s]) * d, d * sizeof(float));
            if ((rc = skv_cuda_attend(cc, l, 1, sc, steps + s0, qc, oc, NULL, NULL)) < 0)
                goto done;
            for (uint32_t hd = 0; hd < H; hd++)
                memcpy(o + ((size_t)hd * S + s0) * d, oc + (size_t)hd * sc * d,
                       (size_t)sc * d * sizeof(float));
        }
        if ((rc = skv_attn_write_layer(out, &A, l, o, NULL)) < 0)
            goto done;
    }
done:
    skv_cuda_cache_free(cc);
    free(o);
    free(qc);
    free(oc);
    free(steps);
    return rc < 0 ? rc : 0;
}

static int check_req(const skv_attend_req *req)
{
    if (req->mode != SKV_ATT_AUTO && req->mode != SKV_ATT_PACKED)
        return skv_error(SKV_EINVAL, "the CUDA device runs the fused packed kernel only "
                         "(no --reference or --dense)");
    if (req->probs)
        return skv_error(SKV_EINVAL, "the CUDA device does not write attention probabilities "
                         "(--probs)");
    int rc = skv_cuda_available();
    return rc < 0 ? rc : 0;
}

int skv_cuda_attend_stream(const char *in, skv_stream *out, const skv_attend_req *req)
{
    int rc = check_req(req);
    if (rc < 0)
        return rc;
    skv_cache *c = NULL;
    if ((rc = skv_cache_load(in, &c)) < 0)
        return rc;
    rc = attend_cache(c, out, req);
    skv_cache_free(c);
    return rc;
}

int skv_cuda_attend_cache(const skv_cache *c, skv_stream *out, const skv_attend_req *req)
{
    int rc = check_req(req);
    return rc < 0 ? rc : attend_cache(c, out, req);
}
