/* kvcache.c -- the dense float32 KV cache behind the skv_kv_ops interface. */
#include "smartkv_model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct dense_cache {
    skv_kv_cache base;
    uint64_t len;           /* positions filled (same for every layer after a block) */
    float *k, *v;           /* [layer][kv_head][capacity][head_dim] */
} dense_cache;

static size_t slab(const skv_kv_cache *c, uint32_t layer, uint32_t kvh)
{
    return (((size_t)layer * c->n_kv_heads + kvh) * c->capacity) * c->head_dim;
}

void skv_kv_base_init(skv_kv_cache *c, const skv_kv_ops *ops, uint32_t n_layers, uint32_t n_heads,
                      uint32_t n_kv_heads, uint32_t head_dim, uint64_t capacity)
{
    c->ops = ops;
    c->n_layers = n_layers;
    c->n_heads = n_heads;
    c->n_kv_heads = n_kv_heads;
    c->head_dim = head_dim;
    c->capacity = capacity;
}

int skv_kv_append_check(const skv_kv_cache *c, uint32_t layer, uint64_t pos, uint32_t n,
                        const uint64_t *len)
{
    if (layer >= c->n_layers)
        return skv_error(SKV_EINVAL, "kv cache: layer %u out of range (%u)", layer, c->n_layers);
    if (pos > c->capacity || n > c->capacity - pos)
        return skv_error(SKV_ELIMIT, "kv cache: positions %llu..%llu exceed its capacity of %llu",
                         (unsigned long long)pos, (unsigned long long)pos + n,
                         (unsigned long long)c->capacity);
    if (!len || pos == len[layer])
        return 0;
    if (pos > len[layer])
        return skv_error(SKV_EINVAL, "kv cache: layer %u append at position %llu, %llu held",
                         layer, (unsigned long long)pos, (unsigned long long)len[layer]);
    return 1;
}

int skv_kv_attend_check(const skv_kv_cache *c, uint32_t layer, uint32_t head, uint64_t pos,
                        uint32_t n, const uint64_t *len)
{
    if (layer >= c->n_layers || head >= c->n_heads)
        return skv_error(SKV_EINVAL, "kv cache: layer %u head %u out of range", layer, head);
    if (pos + n > len[layer])
        return skv_error(SKV_EINVAL, "kv cache: attention to position %llu beyond the %llu cached",
                         (unsigned long long)(pos + n - 1), (unsigned long long)len[layer]);
    return 0;
}

int skv_kv_truncates(const skv_kv_cache *c, uint64_t n, const uint64_t *len)
{
    for (uint32_t l = 0; l < c->n_layers; l++)
        if (len[l] > n)
            return 1;
    return 0;
}

static int dense_append(skv_kv_cache *c, uint32_t layer, uint64_t pos, uint32_t n, const float *k,
                        const float *v)
{
    dense_cache *d = (dense_cache *)c;
    int rc = skv_kv_append_check(c, layer, pos, n, NULL);
    if (rc < 0)
        return rc;
    uint32_t hd = c->head_dim, row = c->n_kv_heads * hd;
    for (uint32_t h = 0; h < c->n_kv_heads; h++) {
        float *kd = d->k + slab(c, layer, h) + pos * hd, *vd = d->v + slab(c, layer, h) + pos * hd;
        for (uint32_t i = 0; i < n; i++) {
            memcpy(kd + (size_t)i * hd, k + (size_t)i * row + (size_t)h * hd, hd * sizeof(float));
            memcpy(vd + (size_t)i * hd, v + (size_t)i * row + (size_t)h * hd, hd * sizeof(float));
        }
    }
    if (pos + n > d->len)
        d->len = pos + n;
    return 0;
}

static int dense_attend(skv_kv_cache *c, uint32_t layer, uint32_t head, uint64_t pos, uint32_t n,
                        const float *q, size_t q_stride, float scale, float *out, size_t out_stride,
                        float *probs, size_t probs_stride)
{
    dense_cache *d = (dense_cache *)c;
    if (layer >= c->n_layers || head >= c->n_heads)
        return skv_error(SKV_EINVAL, "kv cache: layer %u head %u out of range", layer, head);
    if (pos + n > d->len)
        return skv_error(SKV_EINVAL, "kv cache: attention to position %llu beyond the %llu cached",
                         (unsigned long long)(pos + n - 1), (unsigned long long)d->len);
    uint32_t hd = c->head_dim;
    uint32_t kvh = head / (c->n_heads / c->n_kv_heads);
    const float *K = d->k + slab(c, layer, kvh), *V = d->v + slab(c, layer, kvh);
    size_t ctx = pos + n;
    for (uint32_t i = 0; i < n; i++) {
        const float *qi = q + i * q_stride;
        float *p = probs + i * probs_stride, *o = out + i * out_stride;
        size_t last = pos + i;   /* inclusive */
        float mx = -INFINITY;
        for (size_t j = 0; j <= last; j++) {
            float s = skv_vec_dot(qi, K + j * hd, hd) * scale;
            p[j] = s;
            if (s > mx)
                mx = s;
        }
        double sum = 0;
        for (size_t j = 0; j <= last; j++) {
            float e = expf(p[j] - mx);
            p[j] = e;
            sum += e;
        }
        float inv = (float)(1.0 / sum);
        memset(o, 0, hd * sizeof(float));
        for (size_t j = 0; j <= last; j++) {
            p[j] *= inv;
            skv_vec_axpy(o, p[j], V + j * hd, hd);
        }
        for (size_t j = last + 1; j < ctx; j++)
            p[j] = 0;
    }
    return 0;
}

static int dense_truncate(skv_kv_cache *c, uint64_t n)
{
    dense_cache *d = (dense_cache *)c;
    if (n < d->len)
        d->len = n;
    return 0;
}

static void dense_destroy(skv_kv_cache *c)
{
    dense_cache *d = (dense_cache *)c;
    free(d->k);
    free(d->v);
    free(d);
}

static const skv_kv_ops dense_ops = {dense_append, dense_attend, dense_truncate, dense_destroy};

skv_kv_cache *skv_kv_dense_new(uint32_t n_layers, uint32_t n_heads, uint32_t n_kv_heads,
                               uint32_t head_dim, uint64_t capacity)
{
    if (!n_layers || !n_heads || !n_kv_heads || !head_dim || !capacity || n_heads % n_kv_heads)
        return skv_error(SKV_EINVAL, "kv cache: bad shape (layers %u, heads %u/%u, head_dim %u, "
                         "capacity %llu)", n_layers, n_heads, n_kv_heads, head_dim,
                         (unsigned long long)capacity), NULL;
    size_t n;
    if (skv_mul_sizes(&n, 5, (size_t)n_layers, (size_t)n_kv_heads, (size_t)capacity,
                      (size_t)head_dim, sizeof(float)) < 0)
        return skv_error(SKV_ELIMIT, "kv cache: size overflows"), NULL;
    dense_cache *d = skv_calloc(1, sizeof *d);
    if (!d)
        return NULL;
    d->k = skv_malloc(n);
    d->v = d->k ? skv_malloc(n) : NULL;
    if (!d->v) {
        free(d->k);
        free(d);
        return NULL;
    }
    skv_kv_base_init(&d->base, &dense_ops, n_layers, n_heads, n_kv_heads, head_dim, capacity);
    return &d->base;
}

float *skv_kv_dense_keys(skv_kv_cache *c, uint32_t layer, uint32_t kv_head)
{
    if (!c || c->ops != &dense_ops || layer >= c->n_layers || kv_head >= c->n_kv_heads)
        return NULL;
    return ((dense_cache *)c)->k + slab(c, layer, kv_head);
}

float *skv_kv_dense_values(skv_kv_cache *c, uint32_t layer, uint32_t kv_head)
{
    if (!c || c->ops != &dense_ops || layer >= c->n_layers || kv_head >= c->n_kv_heads)
        return NULL;
    return ((dense_cache *)c)->v + slab(c, layer, kv_head);
}

void skv_kv_cache_free(skv_kv_cache *c)
{
    if (c)
        c->ops->destroy(c);
}
