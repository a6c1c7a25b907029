/* alloc.c -- widths, the byte and error models, the in-memory allocation,
 * and the skv-alloc filter (trace in, trace plus allocation out).  The
 * allocation records' codecs are in lib/quant/alhd.c, the policies in
 * alloc_solve.c. */
#include "smartkv_alloc.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- widths ---- */

int skv_width_mask_parse(const char *s, uint32_t *mask)
{
    uint32_t m = 0;
    const char *p = s;
    if (!*p)
        return skv_error(SKV_EINVAL, "empty width list");
    for (;;) {
        char *end;
        if (*p < '0' || *p > '9')
            return skv_error(SKV_EINVAL, "bad width list '%s' (expected e.g. 2,4,8)", s);
        unsigned long v = strtoul(p, &end, 10);
        if (v > 16 || skv_width_index((uint32_t)v) < 0)
            return skv_error(SKV_EINVAL, "width %lu is not one of 0, 2, 3, 4, 8, 16", v);
        m |= 1u << v;
        p = end;
        if (!*p)
            break;
        if (*p != ',')
            return skv_error(SKV_EINVAL, "bad width list '%s' (expected e.g. 2,4,8)", s);
        p++;
    }
    *mask = m;
    return 0;
}

void skv_width_mask_format(uint32_t mask, char *buf, size_t n)
{
    size_t at = 0;
    if (n == 0)
        return;
    buf[0] = '\0';
    for (int i = 0; i < SKV_NBITS; i++) {
        if (!(mask & (1u << skv_bit_widths[i])))
            continue;
        int w = snprintf(buf + at, n - at, "%s%u", at ? "," : "", skv_bit_widths[i]);
        if (w < 0 || (size_t)w >= n - at)
            return;
        at += (size_t)w;
    }
}

/* ---- byte model ---- */

uint64_t skv_alloc_fp16_bytes(uint32_t L, uint32_t H, uint64_t T, uint32_t d)
{
    uint64_t r;
    if (__builtin_mul_overflow((uint64_t)L * H, T, &r) ||
        __builtin_mul_overflow(r, (uint64_t)d * 4, &r))
        return UINT64_MAX;
    return r;
}

uint64_t skv_alloc_pkhd_bytes(const skv_qcfg *c)
{
    (void)c; /* the PKHD payload has a fixed size (smartkv_pack.h) */
    return skv_pkhd_file_bytes();
}


int skv_alloc_cache_bytes(const skv_qcfg *c, uint32_t L, uint32_t H, uint64_t T,
                          const uint8_t *bits, uint64_t *bytes)
{
    int rc = skv_qcfg_check(c);
    if (rc < 0)
        return rc;
    uint64_t total = skv_alloc_pkhd_bytes(c), cnt[SKV_NBITS];
    for (uint64_t s = 0; s < (uint64_t)L * H; s++) {
        memset(cnt, 0, sizeof(uint64_t) * SKV_NBITS);
        const uint8_t *b = bits + s * T;
        for (uint64_t j = 0; j < T; j++) {
            int wi = skv_width_index(b[j]);
            if (wi < 0)
                return skv_error(SKV_EINVAL, "layer %llu kv head %llu token %llu: width %u",
                                 (unsigned long long)(s / H), (unsigned long long)(s % H),
                                 (unsigned long long)j, b[j]);
            cnt[wi]++;
        }
        for (int i = 1; i < SKV_NBITS; i++)
            total += skv_bucket_file_bytes(c, skv_bit_widths[i], cnt[i]);
    }
    *bytes = total;
    return 0;
}

/* ---- error model ---- */

/* Sum over groups of n_g * step_num^2 for one vector, where the rounding
 * step is step_num / denominator(bits). */
static double range_term(const float *x, uint32_t d, uint32_t g, uint32_t mode)
{
    double acc = 0;
    for (uint32_t g0 = 0; g0 < d; g0 += g) {
        float mn = x[g0], mx = x[g0];
        for (uint32_t i = g0 + 1; i < g0 + g; i++) {
            mn = x[i] < mn ? x[i] : mn;
            mx = x[i] > mx ? x[i] : mx;
        }
        double r = mode == SKV_QMODE_ASYM ? (double)mx - mn : fmax(-(double)mn, (double)mx);
        acc += (double)g * r * r;
    }
    return acc;
}

static double levels(uint32_t bits, uint32_t mode)
{
    if (mode == SKV_QMODE_GGML && bits < 8) /* q4_0: d = max / -2^(b-1) */
        return (double)(1u << (bits - 1));
    return mode == SKV_QMODE_ASYM ? (double)((1u << bits) - 1)
                                  : (double)((1u << (bits - 1)) - 1);
}

void skv_alloc_token_errors(const skv_qcfg *c, const float *k, const float *v, uint64_t n,
                            float *err)
{
    const uint32_t d = c->head_dim;
    for (uint64_t t = 0; t < n; t++) {
        const float *kr = k + t * d, *vr = v + t * d;
        double e = 0;
        for (uint32_t i = 0; i < d; i++)
            e += (double)kr[i] * kr[i] + (double)vr[i] * vr[i];
        double rk = range_term(kr, d, c->k_group, c->k_mode);
        double rv = range_term(vr, d, c->v_group, c->v_mode);
        float *o = err + t * SKV_NBITS;
        double prev = e;
        for (int i = 0; i < SKV_NBITS; i++) {
            uint32_t b = skv_bit_widths[i];
            double x;
            if (b == 0)
                x = e;
            else if (b == 16)
                x = e * (1.0 / 2097152.0) / 12.0; /* 2^-21 / 12 */
            else {
                double lk = levels(b, c->k_mode), lv = levels(b, c->v_mode);
                x = (rk / (lk * lk) + rv / (lv * lv)) / 12.0;
            }
            if (!(x <= prev)) /* also catches NaN */
                x = prev;
            if (!(x < 1e30))
                x = 1e30;
            o[i] = (float)x;
            prev = x;
        }
    }
}

/* ---- in memory ---- */

skv_alloc *skv_alloc_new(const skv_alloc_hdr *h)
{
    if (skv_alhd_check(h) < 0)
        return NULL;
    size_t n;
    if (skv_mul_sizes(&n, 3, (size_t)h->n_layers, (size_t)h->n_kv_heads, (size_t)h->n_tokens)) {
        skv_error(SKV_ELIMIT, "allocation too large");
        return NULL;
    }
    skv_alloc *a = skv_calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->hdr = *h;
    a->have_hdr = 1;
    a->bits = skv_calloc(n, 1);
    a->importance = skv_calloc(n, sizeof(float));
    if (!a->bits || !a->importance) {
        skv_alloc_free(a);
        return NULL;
    }
    return a;
}

void skv_alloc_free(skv_alloc *a)
{
    if (!a)
        return;
    free(a->bits);
    free(a->importance);
    free(a);
}

int skv_alloc_write(skv_stream *s, const skv_alloc *a)
{
    int rc = skv_alhd_write(s, &a->hdr);
    const uint64_t T = a->hdr.n_tokens;
    for (uint32_t l = 0; rc == 0 && l < a->hdr.n_layers; l++)
        for (uint32_t h = 0; rc == 0 && h < a->hdr.n_kv_heads; h++) {
            size_t at = ((size_t)l * a->hdr.n_kv_heads + h) * T;
            rc = skv_aloc_write(s, l, h, T, a->bits + at, a->importance + at);
        }
    return rc;
}

int skv_alloc_collect(skv_alloc **ap, const skv_chunk *c)
{
    /* the in-order checker holds the rules; no trace to match here */
    skv_alloc *a = *ap;
    skv_alloc_seq q;
    memset(&q, 0, sizeof q);
    if (a) {
        q.have_hdr = 1;
        q.h = a->hdr;
        q.next = a->next;
    }
    int rc = skv_alloc_seq_chunk(&q, NULL, c);
    if (rc < 0)
        return rc;
    if (!a)
        return (*ap = skv_alloc_new(&q.h)) ? 0 : SKV_ENOMEM;
    /* an ALOC, checked in full: in order, n_tokens widths, padding, importance */
    const uint64_t n = a->hdr.n_tokens;
    memcpy(a->bits + a->next * n, c->data + SKV_ALOC_HEADER_LEN, n);
    memcpy(a->importance + a->next * n, c->data + SKV_ALOC_HEADER_LEN + ((n + 3) & ~3ull),
           n * sizeof(float));
    a->next++;
    return 0;
}

int skv_alloc_collect_done(const skv_alloc *a)
{
    if (!a)
        return skv_error(SKV_EFORMAT, "no allocation (ALHD chunk) in the stream");
    uint64_t all = (uint64_t)a->hdr.n_layers * a->hdr.n_kv_heads;
    if (a->next != all)
        return skv_error(SKV_EFORMAT, "allocation incomplete: %llu of %llu ALOC chunks",
                         (unsigned long long)a->next, (unsigned long long)all);
    return 0;
}

int skv_alloc_match_trace(const skv_alloc_hdr *a, const skv_trace_hdr *t)
{
    if (a->n_layers != t->n_layers || a->n_kv_heads != t->n_kv_heads ||
        a->n_tokens != t->n_tokens || a->qcfg.head_dim != t->head_dim)
        return skv_error(SKV_EFORMAT, "allocation is for %u layers x %u kv heads x %llu tokens "
                         "(head_dim %u), the trace has %u x %u x %llu (head_dim %u)",
                         a->n_layers, a->n_kv_heads, (unsigned long long)a->n_tokens,
                         a->qcfg.head_dim, t->n_layers, t->n_kv_heads,
                         (unsigned long long)t->n_tokens, t->head_dim);
    return 0;
}
