/* zack.c -- ZACK: K and V of every (layer, KV head) in a low-rank basis from
 * a calibration run (smartkv_evalcache.h, "ZACK"): the principal components
 * (LAPACK), the calibration and the cache behind skv_kv_ops. */
#include "zack.h"
#include "eccommon.h"
#include "smartkv_attend.h"
#include "smartkv_error.h"
#include "smartkv_fp16.h"
#include "smartkv_quant.h"

#include <lapacke.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- basis */

int skv_zack_fit(const float *x, uint64_t n, uint32_t d, double *mean, double *vec, double *eig)
{
    if (!n || !d || d > SKV_MAX_HEAD_DIM)
        return skv_error(SKV_EINVAL, "zack: fit of %llu rows of %u", (unsigned long long)n, d);
    double *cov = skv_calloc((size_t)d * d, sizeof *cov), *w = skv_malloc(d * sizeof *w);
    lapack_int *supp = skv_malloc(2 * (size_t)d * sizeof *supp);
    if (!cov || !w || !supp) {
        free(cov);
        free(w);
        free(supp);
        return SKV_ENOMEM;
    }
    for (uint32_t i = 0; i < d; i++)
        mean[i] = 0;
    for (uint64_t t = 0; t < n; t++)
        for (uint32_t i = 0; i < d; i++)
            mean[i] += x[t * d + i];
    for (uint32_t i = 0; i < d; i++)
        mean[i] /= (double)n;
    double y[SKV_MAX_HEAD_DIM];
    for (uint64_t t = 0; t < n; t++) {
        for (uint32_t i = 0; i < d; i++)
            y[i] = x[t * d + i] - mean[i];
        for (uint32_t j = 0; j < d; j++)  /* the lower triangle (column-major) */
            for (uint32_t i = j; i < d; i++)
                cov[(size_t)j * d + i] += y[i] * y[j];
    }
    for (size_t i = 0; i < (size_t)d * d; i++)
        cov[i] /= (double)n;
    lapack_int m = 0;
    /* every eigenpair, ascending; column j of vec (column-major) is vector j */
    lapack_int info = LAPACKE_dsyevr(LAPACK_COL_MAJOR, 'V', 'A', 'L', (lapack_int)d, cov,
                                     (lapack_int)d, 0, 0, 0, 0, 0, &m, w, vec, (lapack_int)d,
                                     supp);
    int rc = 0;
    if (info != 0 || m != (lapack_int)d)
        rc = skv_error(SKV_EINVAL, "zack: dsyevr failed (info %d, %d of %u eigenvalues)",
                       (int)info, (int)m, d);
    for (uint32_t j = 0; rc == 0 && j < d / 2; j++) {  /* to descending order */
        double *a = vec + (size_t)j * d, *b = vec + (size_t)(d - 1 - j) * d;
        for (uint32_t i = 0; i < d; i++) {
            double s = a[i];
            a[i] = b[i];
            b[i] = s;
        }
    }
    for (uint32_t j = 0; rc == 0 && j < d; j++)
        eig[j] = w[d - 1 - j];
    free(cov);
    free(w);
    free(supp);
    return rc;
}

void skv_zack_basis_free(skv_zack_basis *b)
{
    if (!b)
        return;
    free(b->mean);
    free(b->vec);
    free(b->eig);
    free(b);
}

int skv_zack_calibrate(skv_model *m, const int32_t *tokens, uint64_t n, skv_zack_basis **out)
{
    *out = NULL;
    const skv_model_params *p = skv_model_get_params(m);
    const uint32_t L = p->n_layers, H = p->n_kv_heads, d = p->head_dim;
    if (n < 2)
        return skv_error(SKV_EINVAL, "zack: calibration needs at least 2 tokens (%llu given)",
                         (unsigned long long)n);
    const size_t nh = (size_t)L * H;
    skv_zack_basis *b = skv_calloc(1, sizeof *b);
    skv_kv_cache *c = skv_kv_dense_new(L, p->n_heads, H, d, n);
    skv_session *s = c ? skv_session_new(m, c, n) : NULL;
    double *mean = skv_malloc(d * sizeof *mean), *vec = skv_malloc((size_t)d * d * sizeof *vec);
    int rc = SKV_ENOMEM;
    if (!b || !s || !mean || !vec || !(b->mean = skv_malloc(nh * 2 * d * sizeof(float))) ||
        !(b->vec = skv_malloc(nh * 2 * d * d * sizeof(float))) ||
        !(b->eig = skv_malloc(nh * 2 * d * sizeof(double))))
        goto out;
    b->n_layers = L;
    b->n_kv_heads = H;
    b->head_dim = d;
    b->n_tokens = n;
    for (uint64_t t = 0; t < n; t += 64) {  /* the model's block size */
        uint32_t k = (uint32_t)(n - t < 64 ? n - t : 64);
        if ((rc = skv_session_eval(s, tokens + t, k, NULL, SKV_LOGITS_NONE)) < 0)
            goto out;
    }
    for (size_t u = 0; u < nh * 2; u++) {
        uint32_t l = (uint32_t)(u / 2 / H), h = (uint32_t)(u / 2 % H);
        const float *x = u % 2 ? skv_kv_dense_values(c, l, h) : skv_kv_dense_keys(c, l, h);
        if ((rc = skv_zack_fit(x, n, d, mean, vec, b->eig + u * d)) < 0)
            goto out;
        /* what the cache stores: fp16 */
        for (uint32_t i = 0; i < d; i++)
            b->mean[u * d + i] = skv_f16_to_f32(skv_f32_to_f16((float)mean[i]));
        for (size_t i = 0; i < (size_t)d * d; i++)
            b->vec[u * d * d + i] = skv_f16_to_f32(skv_f32_to_f16((float)vec[i]));
    }
    rc = 0;
out:
    skv_session_free(s);
    skv_kv_cache_free(c);
    free(mean);
    free(vec);
    if (rc < 0)
        skv_zack_basis_free(b);
    else
        *out = b;
    return rc;
}

/* Bytes of one (layer, KV head) holding n tokens of which np are projected
 * at rank r (smartkv_evalcache.h, "ZACK"). */
static uint64_t head_bytes(uint32_t d, uint32_t r, uint64_t n, uint64_t np)
{
    uint64_t b = 8 + 4 * (uint64_t)d * (n - np) + 4 * (uint64_t)r * np;
    return np ? b + 4 * (uint64_t)d * r + 4 * (uint64_t)d : b;
}

uint32_t skv_zack_rank(const skv_ec_cfg *c, uint32_t d, uint64_t cap, int *raised)
{
    /* at capacity, at most sinks + recent + R - 1 rows are fp16 */
    uint64_t f = (uint64_t)c->alloc.sinks + c->alloc.recent + c->realloc;
    f = f < cap ? f : cap;
    const double allowed = c->alloc.budget * 4.0 * d * (double)cap;
    uint32_t r = 1;
    while (r < d && (double)head_bytes(d, r + 1, cap, cap - f) <= allowed)
        r++;
    if (raised)
        *raised = (double)head_bytes(d, 1, cap, cap - f) > allowed;
    return r;
}

/* ---------------------------------------------------------------- cache */

typedef struct zk_head {
    float *k, *v;           /* [cap][d]: fp16 rows, projected ones as mu + U_r c */
    uint64_t cap;
} zk_head;

typedef struct zk_cache {
    skv_kv_cache base;
    skv_ec_cfg cfg;
    uint32_t G, rank;
    int raised, hold;
    uint64_t *len;          /* [n_layers] positions held */
    uint64_t n_proj;        /* tokens [sinks, n_proj) are projected */
    uint64_t proj_at;       /* layer 0's length at the last projection */
    zk_head *heads;         /* [n_layers][n_kv_heads] */
    skv_ec_stats st;
    _Atomic uint64_t attend_ns;
} zk_cache;

static const skv_kv_ops zk_ops;

int skv_zack_is(const skv_kv_cache *c) { return c && c->ops == &zk_ops; }

static zk_cache *as_zk(const skv_kv_cache *c)
{
    return skv_zack_is(c) ? (zk_cache *)c : NULL;
}

/* The bases are data, not settings: skv_zack_new asks for them. */
int skv_zack_cfg_check(const skv_ec_cfg *c)
{
    if (!(c->alloc.budget > 0 && isfinite(c->alloc.budget)))
        return skv_error(SKV_EINVAL, "zack needs a budget beta > 0");
    if (!c->realloc)
        return skv_error(SKV_EINVAL, "reallocation interval must be >= 1");
    return 0;
}

/* Project x (d floats) on the first r components of basis u (mean mu):
 * r fp16 coefficients, then mu + U_r c into y. */
static void project_row(const float *mu, const float *u, uint32_t d, uint32_t r, const float *x,
                        float *y)
{
    float xc[SKV_MAX_HEAD_DIM], c[SKV_MAX_HEAD_DIM];
    for (uint32_t i = 0; i < d; i++)
        xc[i] = x[i] - mu[i];
    for (uint32_t j = 0; j < r; j++) {
        double s = 0;
        for (uint32_t i = 0; i < d; i++)
            s += (double)u[(size_t)j * d + i] * xc[i];
        c[j] = skv_f16_to_f32(skv_f32_to_f16((float)s));
    }
    for (uint32_t i = 0; i < d; i++) {
        double s = mu[i];
        for (uint32_t j = 0; j < r; j++)
            s += (double)u[(size_t)j * d + i] * c[j];
        y[i] = (float)s;
    }
}

int skv_zack_project(skv_kv_cache *cc)
{
    zk_cache *z = as_zk(cc);
    if (!z)
        return skv_error(SKV_EINVAL, "kv cache: not a zack cache");
    const skv_kv_cache *c = &z->base;
    const uint32_t d = c->head_dim;
    const uint64_t T = z->len[0];
    for (uint32_t l = 1; l < c->n_layers; l++)
        if (z->len[l] != T)
            return skv_error(SKV_EINVAL, "kv cache: projection with layer %u at %llu positions "
                             "and layer 0 at %llu", l, (unsigned long long)z->len[l],
                             (unsigned long long)T);
    z->proj_at = T;
    const uint64_t from = z->n_proj > z->cfg.alloc.sinks ? z->n_proj : z->cfg.alloc.sinks;
    const uint64_t to = T > z->cfg.alloc.recent ? T - z->cfg.alloc.recent : 0;
    if (to <= from)
        return 0;
    uint64_t t0 = now_ns();
    const skv_zack_basis *b = z->cfg.zack;
    for (uint32_t l = 0; l < c->n_layers; l++)
        for (uint32_t h = 0; h < c->n_kv_heads; h++) {
            zk_head *Z = &z->heads[(size_t)l * c->n_kv_heads + h];
            size_t u = ((size_t)l * c->n_kv_heads + h) * 2;
            for (uint64_t t = from; t < to; t++) {
                project_row(b->mean + u * d, b->vec + u * d * d, d, z->rank, Z->k + t * d,
                            Z->k + t * d);
                project_row(b->mean + (u + 1) * d, b->vec + (u + 1) * d * d, d, z->rank,
                            Z->v + t * d, Z->v + t * d);
            }
            z->st.requant_rows += to - from;
        }
    z->n_proj = to;
    z->st.n_realloc++;
    z->st.n_budget_raised += z->raised;
    skv_ec_stats s;
    if (skv_zack_stats(cc, &s) == 0 && s.fp16_bytes)
        z->st.alloc_beta_sum += (double)s.bytes / (double)s.fp16_bytes;
    z->st.realloc_ns += now_ns() - t0;
    return 0;
}

void skv_zack_hold(skv_kv_cache *c, int hold)
{
    zk_cache *z = as_zk(c);
    if (z)
        z->hold = hold;
}

static void cut_to(zk_cache *z, uint64_t T)
{
    for (uint32_t l = 0; l < z->base.n_layers; l++)
        if (z->len[l] > T)
            z->len[l] = T;
    if (z->n_proj > T)
        z->n_proj = T;
    if (z->proj_at > T)
        z->proj_at = T;
}

static int zk_append(skv_kv_cache *c, uint32_t layer, uint64_t pos, uint32_t n, const float *k,
                     const float *v)
{
    zk_cache *z = (zk_cache *)c;
    int rc;
    /* pos < held: re-evaluation of forgotten positions, dropped everywhere */
    if ((rc = skv_kv_append_check(c, layer, pos, n, z->len)) > 0) {
        cut_to(z, pos);
        rc = 0;
    }
    if (rc < 0)
        return rc;
    if (layer == 0 && !z->hold && pos >= z->proj_at + z->cfg.realloc &&
        (rc = skv_zack_project(c)) < 0)
        return rc;
    const uint32_t d = c->head_dim, row = c->n_kv_heads * d;
    for (uint32_t h = 0; h < c->n_kv_heads; h++) {
        zk_head *Z = &z->heads[(size_t)layer * c->n_kv_heads + h];
        if (pos + n > Z->cap) {
            uint64_t nc = Z->cap ? Z->cap : 64;
            while (nc < pos + n)
                nc *= 2;
            nc = nc < c->capacity ? nc : c->capacity;
            float *nk = skv_realloc(Z->k, (size_t)nc * d * sizeof(float));
            if (!nk)
                return SKV_ENOMEM;
            Z->k = nk;
            float *nv = skv_realloc(Z->v, (size_t)nc * d * sizeof(float));
            if (!nv)
                return SKV_ENOMEM;
            Z->v = nv;
            Z->cap = nc;
        }
        for (uint32_t i = 0; i < n; i++) {
            const float *sk = k + (size_t)i * row + (size_t)h * d;
            const float *sv = v + (size_t)i * row + (size_t)h * d;
            float *dk = Z->k + (pos + i) * d, *dv = Z->v + (pos + i) * d;
            if ((rc = ec_f16_row(sk, sv, dk, dv, d, layer, h, pos + i)) < 0)
                return rc;
        }
    }
    z->len[layer] = pos + n;
    return 0;
}

static int zk_attend(skv_kv_cache *c, uint32_t layer, uint32_t head, uint64_t pos, uint32_t n,
                     const float *q, size_t q_stride, float scale, float *out, size_t out_stride,
                     float *probs, size_t probs_stride)
{
    zk_cache *z = (zk_cache *)c;
    int rc = skv_kv_attend_check(c, layer, head, pos, n, z->len);
    if (rc < 0)
        return rc;
    uint64_t t0 = now_ns();
    const zk_head *Z = &z->heads[(size_t)layer * c->n_kv_heads + head / z->G];
    /* every row as one tail of dense rows: the reconstruction is in place */
    skv_att_rows R = {c->head_dim, 0, NULL, Z->k, Z->v, 0, z->len[layer], NULL, NULL};
    for (uint32_t i = 0; i < n; i++)
        if ((rc = skv_attend_rows(z->cfg.kernel, &R, q + i * q_stride, 1, scale, pos + i,
                                  out + i * out_stride, probs + i * probs_stride, 0, pos + n)) < 0)
            return rc;
    atomic_fetch_add_explicit(&z->attend_ns, now_ns() - t0, memory_order_relaxed);
    return 0;
}

static int zk_truncate(skv_kv_cache *c, uint64_t n)
{
    zk_cache *z = (zk_cache *)c;
    if (skv_kv_truncates(c, n, z->len))
        cut_to(z, n);
    return 0;
}

static void zk_destroy(skv_kv_cache *c)
{
    zk_cache *z = (zk_cache *)c;
    if (z->heads)
        for (size_t i = 0; i < (size_t)c->n_layers * c->n_kv_heads; i++) {
            free(z->heads[i].k);
            free(z->heads[i].v);
        }
    free(z->heads);
    free(z->len);
    free(z);
}

static const skv_kv_ops zk_ops = {zk_append, zk_attend, zk_truncate, zk_destroy};

skv_kv_cache *skv_zack_new(const skv_ec_cfg *cfg, uint32_t n_layers, uint32_t n_heads,
                           uint32_t n_kv_heads, uint32_t head_dim, uint64_t capacity)
{
    if (skv_zack_cfg_check(cfg) < 0)
        return NULL;
    const skv_zack_basis *b = cfg->zack;
    if (!b)
        return skv_error(SKV_EINVAL, "zack needs a calibration basis (skv_zack_calibrate)"),
               NULL;
    if (b->n_layers != n_layers || b->n_kv_heads != n_kv_heads || b->head_dim != head_dim)
        return skv_error(SKV_EINVAL, "zack: the basis is for %u layers x %u KV heads x %u, the "
                         "cache %u x %u x %u", b->n_layers, b->n_kv_heads, b->head_dim, n_layers,
                         n_kv_heads, head_dim), NULL;
    zk_cache *z = skv_calloc(1, sizeof *z);
    if (!z)
        return NULL;
    skv_kv_base_init(&z->base, &zk_ops, n_layers, n_heads, n_kv_heads, head_dim, capacity);
    z->cfg = *cfg;
    z->G = n_heads / n_kv_heads;
    z->rank = skv_zack_rank(cfg, head_dim, capacity, &z->raised);
    if (!(z->len = skv_calloc(n_layers, sizeof *z->len)) ||
        !(z->heads = skv_calloc((size_t)n_layers * n_kv_heads, sizeof *z->heads))) {
        zk_destroy(&z->base);
        return NULL;
    }
    return &z->base;
}

uint64_t skv_zack_rows(const skv_kv_cache *c, uint32_t layer, uint32_t kv_head, const float **k,
                       const float **v)
{
    zk_cache *z = as_zk(c);
    if (!z || layer >= c->n_layers || kv_head >= c->n_kv_heads)
        return 0;
    const zk_head *Z = &z->heads[(size_t)layer * c->n_kv_heads + kv_head];
    *k = Z->k;
    *v = Z->v;
    return z->len[layer];
}

int skv_zack_stats(const skv_kv_cache *cc, skv_ec_stats *s)
{
    zk_cache *z = as_zk(cc);
    if (!z)
        return skv_error(SKV_EINVAL, "kv cache: not a zack cache");
    const skv_kv_cache *c = &z->base;
    const uint32_t d = c->head_dim;
    *s = z->st;
    s->attend_ns = atomic_load(&z->attend_ns);
    s->n_tokens = z->len[0];
    s->n_alloc = z->n_proj;
    s->fp16_bytes = skv_alloc_fp16_bytes(c->n_layers, c->n_kv_heads, s->n_tokens, d);
    memset(s->hist, 0, sizeof s->hist);
    s->bytes = 0;
    s->mem_bytes = 0;
    s->meta_bytes = 0;
    const uint32_t S = z->cfg.alloc.sinks;
    for (uint32_t l = 0; l < c->n_layers; l++) {
        const uint64_t n = z->len[l], e = z->n_proj < n ? z->n_proj : n;
        s->bytes += (uint64_t)c->n_kv_heads * head_bytes(d, z->rank, n, e > S ? e - S : 0);
        for (uint32_t h = 0; h < c->n_kv_heads; h++)
            s->mem_bytes += z->heads[(size_t)l * c->n_kv_heads + h].cap * d * 2 * sizeof(float);
    }
    return 0;
}

void skv_zack_stats_reset(skv_kv_cache *c)
{
    zk_cache *z = as_zk(c);
    if (!z)
        return;
    memset(&z->st, 0, sizeof z->st);
    atomic_store(&z->attend_ns, 0);
}
