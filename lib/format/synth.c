/* synth.c -- seeded synthetic attention traces (model in smartkv_synth.h). */
#include "smartkv_synth.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void skv_synth_defaults(skv_synth_cfg *c)
{
    memset(c, 0, sizeof *c);
    c->n_layers = 30;
    c->n_heads = 9;
    c->n_kv_heads = 3;
    c->head_dim = 64;
    c->n_tokens = 4096;
    c->n_prefill = 0;          /* 0: 3/4 of the tokens */
    c->dtype = SKV_F16;
    c->seed = 1;
    c->rope_theta = 100000.0f;
    c->sinks = 4;
    c->sink_logit = 7.0f;
    c->hitter_frac = 0.01f;
    c->hitter_logit = 4.0f;
    c->local_logit = 5.0f;
    c->needles = 4;
    c->needle_queries = 8;
    c->needle_logit = 10.0f;
    c->outlier_channels = 2;
    c->outlier_scale = 8.0f;
    c->noise = 1.0f;
}

/* ---- deterministic randomness: splitmix64 seeding, xoshiro256** ---- */

typedef struct { uint64_t s[4]; int have; double spare; } rng;

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void rng_seed(rng *r, uint64_t seed, uint64_t a, uint64_t b, uint64_t c)
{
    uint64_t x = seed ^ (a * 0x9e3779b97f4a7c15ull) ^ (b * 0xc2b2ae3d27d4eb4full) ^
                 (c * 0x165667b19e3779f9ull);
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix(&x);
    r->have = 0;
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t next64(rng *r)
{
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

static double uniform01(rng *r) { return (double)(next64(r) >> 11) * 0x1.0p-53; }

/* Approximately standard normal: the sum of four 16-bit uniforms (Irwin-Hall),
 * centred and scaled.  One generator call per value keeps 64K-token traces
 * fast; tails stop at 3.46 sigma, which the trace model does not need. */
static float gauss(rng *r)
{
    uint64_t x = next64(r);
    uint32_t s = (uint32_t)(x & 0xffff) + (uint32_t)((x >> 16) & 0xffff) +
                 (uint32_t)((x >> 32) & 0xffff) + (uint32_t)(x >> 48);
    /* mean 4*32767.5, variance 4*(65536^2-1)/12 */
    return ((float)s - 131070.0f) * (1.7320508f / 65536.0f);
}

/* ---- helpers ---- */

void skv_rope(float *x, uint64_t n, uint32_t d, uint64_t pos0, float theta)
{
    for (uint32_t i = 0; i + 1 < d; i += 2) {
        double freq = pow((double)theta, -(double)i / (double)d);
        /* rotate by freq per position: a complex recurrence in double, reset
         * every 1024 steps so rounding never accumulates */
        double c1 = cos(freq), s1 = sin(freq), c = 0, s = 0;
        for (uint64_t t = 0; t < n; t++) {
            if (t % 1024 == 0) {
                double a = (double)(pos0 + t) * freq;
                c = cos(a);
                s = sin(a);
            }
            float *p = x + t * d + i;
            float x0 = p[0], x1 = p[1];
            p[0] = (float)(x0 * c - x1 * s);
            p[1] = (float)(x0 * s + x1 * c);
            double cn = c * c1 - s * s1;
            s = s * c1 + c * s1;
            c = cn;
        }
    }
}

/* A random unit vector supported on channels [lo, hi). */
static void rand_dir(rng *r, float *v, uint32_t d, uint32_t lo, uint32_t hi)
{
    double n2 = 0;
    memset(v, 0, d * sizeof *v);
    for (uint32_t i = lo; i < hi; i++) {
        v[i] = gauss(r);
        n2 += (double)v[i] * v[i];
    }
    float inv = (float)(1.0 / sqrt(n2 > 0 ? n2 : 1));
    for (uint32_t i = lo; i < hi; i++)
        v[i] *= inv;
}

static void axpy(float *y, float a, const float *x, uint32_t d)
{
    for (uint32_t i = 0; i < d; i++)
        y[i] += a * x[i];
}

static uint64_t prefill_of(const skv_synth_cfg *c)
{
    return c->n_prefill ? c->n_prefill : c->n_tokens - c->n_tokens / 4;
}

int skv_synth_header(const skv_synth_cfg *c, skv_trace_hdr *h)
{
    memset(h, 0, sizeof *h);
    h->n_layers = c->n_layers;
    h->n_heads = c->n_heads;
    h->n_kv_heads = c->n_kv_heads;
    h->head_dim = c->head_dim;
    h->n_tokens = c->n_tokens;
    h->n_prefill = prefill_of(c);
    h->dtype = c->dtype;
    h->flags = SKV_TRACE_POST_ROPE;
    h->rope_theta = c->rope_theta;
    snprintf(h->model, sizeof h->model, "synth seed=%llu", (unsigned long long)c->seed);
    if (c->head_dim < 8 || c->head_dim % 2)
        return skv_error(SKV_EINVAL, "synthetic traces need an even head_dim >= 8");
    if (c->n_tokens < 2)
        return skv_error(SKV_EINVAL, "synthetic traces need at least 2 tokens");
    if (c->needles >= c->n_tokens / 2)
        return skv_error(SKV_EINVAL, "too many needles (%u) for %llu tokens", c->needles,
                         (unsigned long long)c->n_tokens);
    return skv_trace_hdr_check(h);
}

int skv_synth_needles(const skv_synth_cfg *c, uint64_t *pos)
{
    /* needles sit in the prefill, after the sinks, evenly spread with jitter */
    uint64_t pre = prefill_of(c), lo = c->sinks + 1;
    if (pre <= lo + c->needles)
        lo = 0;
    uint64_t span = pre > lo ? pre - lo : 1;
    rng r;
    rng_seed(&r, c->seed, 0xeed1e, 0, 0);
    for (uint32_t i = 0; i < c->needles; i++) {
        uint64_t slot = span / c->needles;
        uint64_t p = lo + i * slot + (slot > 1 ? next64(&r) % slot : 0);
        pos[i] = p < c->n_tokens ? p : c->n_tokens - 1;
    }
    return 0;
}

int skv_synth_layer(const skv_synth_cfg *c, uint32_t layer, float *q, float *k, float *v)
{
    const uint32_t d = c->head_dim, G = c->n_heads / c->n_kv_heads;
    const uint64_t T = c->n_tokens;
    const float sd = sqrtf((float)d);
    /* channel bands: pairs are ordered fastest first, so the slow quarter
     * (content) is at the top and the fast quarter (locality) at the bottom */
    const uint32_t slow_lo = d - d / 4, fast_hi = d / 4;
    uint64_t *needle = skv_calloc(c->needles ? c->needles : 1, sizeof *needle);
    uint8_t *role = skv_calloc((size_t)T, 1); /* 1 sink, 2 hitter, 3 needle */
    float *dirs = skv_calloc(4 * (size_t)d, sizeof(float));
    if (!needle || !role || !dirs) {
        free(needle);
        free(role);
        free(dirs);
        return SKV_ENOMEM;
    }
    skv_synth_needles(c, needle);
    for (uint64_t t = 0; t < T && t < c->sinks; t++)
        role[t] = 1;
    for (uint32_t i = 0; i < c->needles; i++)
        role[needle[i]] = 3;
    const uint64_t first_q = T > c->needle_queries ? T - c->needle_queries : 0;

    for (uint32_t g = 0; g < c->n_kv_heads; g++) {
        rng r;
        rng_seed(&r, c->seed, layer + 1, g + 1, 1);
        float *s_dir = dirs, *u_dir = dirs + d, *n_dir = dirs + 2 * (size_t)d,
              *w_dir = dirs + 3 * (size_t)d;
        rand_dir(&r, s_dir, d, slow_lo, d);
        rand_dir(&r, u_dir, d, slow_lo, d);
        rand_dir(&r, n_dir, d, slow_lo, d);
        rand_dir(&r, w_dir, d, 0, fast_hi);
        /* per-head strengths vary around the configured logits */
        float js = 0.7f + 0.6f * (float)uniform01(&r);
        float jh = 0.7f + 0.6f * (float)uniform01(&r);
        float jl = 0.5f + 1.0f * (float)uniform01(&r);
        /* logit = (a_k * a_q) / sqrt(d): split each evenly between q and k */
        float a_s = sqrtf(c->sink_logit * js * sd), a_h = sqrtf(c->hitter_logit * jh * sd);
        float a_n = sqrtf(c->needle_logit * sd), a_l = sqrtf(c->local_logit * jl * sd);
        uint32_t outl[16];
        uint32_t nout = c->outlier_channels < 16 ? c->outlier_channels : 16;
        for (uint32_t i = 0; i < nout; i++)
            outl[i] = (uint32_t)(next64(&r) % d);

        /* heavy hitters: a random subset of the remaining tokens */
        rng rh;
        rng_seed(&rh, c->seed, layer + 1, g + 1, 2);
        for (uint64_t t = 0; t < T; t++) {
            if (role[t] == 2)
                role[t] = 0;
            if (!role[t] && uniform01(&rh) < c->hitter_frac)
                role[t] = 2;
        }

        float *K = k + (size_t)g * T * d, *V = v + (size_t)g * T * d;
        for (uint64_t t = 0; t < T; t++) {
            float *kr = K + t * d, *vr = V + t * d;
            for (uint32_t i = 0; i < d; i++) {
                kr[i] = c->noise * gauss(&r);
                vr[i] = gauss(&r);
            }
            axpy(kr, a_l, w_dir, d);
            if (role[t] == 1)
                axpy(kr, a_s, s_dir, d);
            else if (role[t] == 2)
                axpy(kr, a_h, u_dir, d);
            else if (role[t] == 3)
                axpy(kr, a_n, n_dir, d);
        }
        skv_rope(K, T, d, 0, c->rope_theta);
        for (uint64_t t = 0; t < T; t++)
            for (uint32_t i = 0; i < nout; i++)
                K[t * d + outl[i]] += c->outlier_scale * (1.0f + 0.1f * gauss(&r));

        for (uint32_t hq = 0; hq < G; hq++) {
            uint32_t h = g * G + hq;
            rng rq;
            rng_seed(&rq, c->seed, layer + 1, h + 1, 3);
            float hs = 0.6f + 0.8f * (float)uniform01(&rq); /* heads differ in taste */
            float *Q = q + (size_t)h * T * d;
            for (uint64_t t = 0; t < T; t++) {
                float *qr = Q + t * d;
                for (uint32_t i = 0; i < d; i++)
                    qr[i] = c->noise * gauss(&rq);
                axpy(qr, a_s * hs, s_dir, d);
                axpy(qr, a_h * (0.5f + (float)uniform01(&rq)), u_dir, d);
                axpy(qr, a_l, w_dir, d);
                if (t >= first_q)
                    axpy(qr, a_n, n_dir, d);
            }
            skv_rope(Q, T, d, 0, c->rope_theta);
        }
    }
    free(needle);
    free(role);
    free(dirs);
    return 0;
}

int skv_synth_write(const skv_synth_cfg *c, skv_stream *s)
{
    skv_trace_hdr h;
    int rc = skv_synth_header(c, &h);
    if (rc < 0)
        return rc;
    size_t nq, nkv;
    if ((rc = skv_trace_layer_floats(&h, &nq, &nkv)) < 0)
        return rc;
    float *q = skv_malloc(nq * sizeof(float));
    float *k = skv_malloc(nkv * sizeof(float));
    float *v = skv_malloc(nkv * sizeof(float));
    if (!q || !k || !v) {
        rc = SKV_ENOMEM;
        goto out;
    }
    if ((rc = skv_trhd_write(s, &h)) < 0)
        goto out;
    const size_t per = (size_t)h.n_tokens * h.head_dim;
    for (uint32_t l = 0; l < h.n_layers && rc >= 0; l++) {
        if ((rc = skv_synth_layer(c, l, q, k, v)) < 0)
            break;
        for (uint32_t i = 0; i < h.n_heads && rc >= 0; i++)
            rc = skv_tens_write(s, SKV_TK_Q, h.dtype, l, i, 0, h.n_tokens, h.head_dim, q + i * per);
        for (uint32_t i = 0; i < h.n_kv_heads && rc >= 0; i++)
            rc = skv_tens_write(s, SKV_TK_K, h.dtype, l, i, 0, h.n_tokens, h.head_dim, k + i * per);
        for (uint32_t i = 0; i < h.n_kv_heads && rc >= 0; i++)
            rc = skv_tens_write(s, SKV_TK_V, h.dtype, l, i, 0, h.n_tokens, h.head_dim, v + i * per);
        if (rc >= 0 && c->progress)
            c->progress(c->progress_ctx, l + 1, h.n_layers);
    }
out:
    free(q);
    free(k);
    free(v);
    return rc;
}
