/* alloc.c -- allocation chunks (ALHD, ALOC), the byte and error models, the
 * in-memory allocation, and the skv-alloc filter (trace in, trace plus
 * allocation out).  The policies are in alloc_solve.c. */
#include "smartkv_alloc.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


/* ---- widths ---- */

int skv_width_index(uint32_t bits)
{
    for (int i = 0; i < SKV_NBITS; i++)
        if (skv_bit_widths[i] == bits)
            return i;
    return -1;
}

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

/* skv_qcfg_check() is defined in quant.c (merge of the quant and alloc branches). */

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

/* ---- ALHD ---- */

int skv_alhd_check(const skv_alloc_hdr *h)
{
    if (!isfinite(h->budget) || h->budget < 0)
        return skv_error(SKV_EFORMAT, "budget %g is not a finite value >= 0", h->budget);
    if (h->n_layers == 0 || h->n_layers > SKV_MAX_LAYERS)
        return skv_error(SKV_EFORMAT, "n_layers %u outside 1..%u", h->n_layers,
                         SKV_MAX_LAYERS);
    if (h->n_kv_heads == 0 || h->n_kv_heads > SKV_MAX_HEADS)
        return skv_error(SKV_EFORMAT, "n_kv_heads %u outside 1..%u", h->n_kv_heads,
                         SKV_MAX_HEADS);
    if (h->n_tokens == 0 || h->n_tokens > SKV_ALOC_MAX_TOKENS)
        return skv_error(SKV_EFORMAT, "n_tokens %llu outside 1..%llu",
                         (unsigned long long)h->n_tokens, SKV_ALOC_MAX_TOKENS);
    if (h->width_mask == 0 || (h->width_mask & ~SKV_WIDTH_MASK_ALL))
        return skv_error(SKV_EFORMAT, "width mask 0x%x: must name widths among 0,2,3,4,8,16",
                         h->width_mask);
    if (h->flags & ~SKV_ALHD_FLAGS_KNOWN)
        return skv_error(SKV_EFORMAT, "unknown allocation flags 0x%x", h->flags);
    if ((h->flags & SKV_ALHD_MERGE) ? h->clusters == 0 || h->clusters > SKV_CNTR_MAX
                                    : h->clusters != 0)
        return skv_error(SKV_EFORMAT, "clusters %u: must be 1..%u with the merge flag (0x2), "
                         "0 without", h->clusters, SKV_CNTR_MAX);
    if ((h->flags & SKV_ALHD_MERGE) && !(h->width_mask & 1u))
        return skv_error(SKV_EFORMAT, "the merge flag (0x2) needs width 0 in the allowed set");
    /* the packed cache's rules too (cache.c), so what skv-trace info accepts
     * skv-attend reads: centroids take the widest non-zero width, and are
     * not stored with keys per channel */
    if ((h->flags & SKV_ALHD_MERGE) && !(h->width_mask & ~1u))
        return skv_error(SKV_EFORMAT, "the merge flag (0x2) needs a non-zero width for the "
                         "centroids");
    if ((h->flags & SKV_ALHD_MERGE) && h->qcfg.k_mode == SKV_QMODE_CHAN)
        return skv_error(SKV_EFORMAT, "merged centroids (flag 0x2) with keys per channel "
                         "(k_mode 4) are not supported");
    if (skv_qcfg_check(&h->qcfg) < 0) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s", skv_errmsg());
        return skv_error(SKV_EFORMAT, "quantizer settings: %s", msg);
    }
    if (strlen(h->text) > SKV_ALHD_MAX_TEXT)
        return skv_error(SKV_EFORMAT, "text longer than %u bytes", SKV_ALHD_MAX_TEXT);
    return 0;
}

int skv_alhd_write(skv_stream *s, const skv_alloc_hdr *h)
{
    int rc = skv_alhd_check(h);
    if (rc < 0)
        return rc;
    size_t L = strlen(h->text);
    uint8_t buf[SKV_ALHD_FIXED_LEN + SKV_ALHD_MAX_TEXT];
    memset(buf, 0, SKV_ALHD_FIXED_LEN);
    union { double d; uint64_t u; } b = {h->budget};
    skv_put64(buf, b.u);
    skv_put32(buf + 8, h->n_layers);
    skv_put32(buf + 12, h->n_kv_heads);
    skv_put64(buf + 16, h->n_tokens);
    skv_put32(buf + 24, h->width_mask);
    skv_put32(buf + 28, h->flags);
    skv_put32(buf + 32, h->qcfg.head_dim);
    skv_put32(buf + 36, h->qcfg.k_group);
    skv_put32(buf + 40, h->qcfg.v_group);
    skv_put16(buf + 44, (uint16_t)h->qcfg.k_mode);
    skv_put16(buf + 46, (uint16_t)h->qcfg.k_tokens);
    skv_put32(buf + 48, h->qcfg.v_mode);
    skv_put32(buf + 52, h->clusters);
    skv_put64(buf + 56, h->predicted_bytes);
    skv_put16(buf + 64, (uint16_t)L);
    memcpy(buf + SKV_ALHD_FIXED_LEN, h->text, L);
    return skv_write(s, SKV_T_ALHD, buf, SKV_ALHD_FIXED_LEN + L);
}

int skv_alhd_decode(const skv_chunk *c, skv_alloc_hdr *h)
{
    const uint8_t *p = c->data;
    unsigned long long off = (unsigned long long)c->offset;
    if (!skv_chunk_is(c, SKV_T_ALHD))
        return skv_error(SKV_EINVAL, "%s chunk at byte %llu is not ALHD", c->type, off);
    if (c->raw_size < SKV_ALHD_FIXED_LEN)
        return skv_error(SKV_EFORMAT, "ALHD chunk at byte %llu too short (%llu bytes)", off,
                         (unsigned long long)c->raw_size);
    memset(h, 0, sizeof *h);
    union { uint64_t u; double d; } b = {skv_get64(p)};
    h->budget = b.d;
    h->n_layers = skv_get32(p + 8);
    h->n_kv_heads = skv_get32(p + 12);
    h->n_tokens = skv_get64(p + 16);
    h->width_mask = skv_get32(p + 24);
    h->flags = skv_get32(p + 28);
    h->qcfg.head_dim = skv_get32(p + 32);
    h->qcfg.k_group = skv_get32(p + 36);
    h->qcfg.v_group = skv_get32(p + 40);
    h->qcfg.k_mode = skv_get16(p + 44);
    h->qcfg.k_tokens = skv_get16(p + 46);  /* the high half of k_mode (zero) before 1.2 */
    h->qcfg.v_mode = skv_get32(p + 48);
    h->clusters = skv_get32(p + 52);
    h->predicted_bytes = skv_get64(p + 56);
    size_t L = skv_get16(p + 64);
    if (L > SKV_ALHD_MAX_TEXT || SKV_ALHD_FIXED_LEN + L != c->raw_size)
        return skv_error(SKV_EFORMAT, "ALHD chunk at byte %llu: text length %zu does not match "
                         "its %llu-byte payload (limit %u)", off, L,
                         (unsigned long long)c->raw_size, SKV_ALHD_MAX_TEXT);
    if (memchr(p + SKV_ALHD_FIXED_LEN, 0, L))
        return skv_error(SKV_EFORMAT, "ALHD chunk at byte %llu: NUL inside the text", off);
    memcpy(h->text, p + SKV_ALHD_FIXED_LEN, L);
    h->text[L] = '\0';
    int rc = skv_alhd_check(h);
    if (rc < 0) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", skv_errmsg());
        return skv_error(rc, "ALHD chunk at byte %llu: %s", off, msg);
    }
    return 0;
}

/* ---- ALOC ---- */

static uint64_t aloc_pad(uint64_t n) { return (n + 3) & ~(uint64_t)3; }

int skv_aloc_write(skv_stream *s, uint32_t layer, uint32_t kv_head, uint64_t n,
                   const uint8_t *bits, const float *importance)
{
    if (n == 0 || n > SKV_ALOC_MAX_TOKENS)
        return skv_error(SKV_ELIMIT, "ALOC: %llu tokens outside 1..%llu", (unsigned long long)n,
                         SKV_ALOC_MAX_TOKENS);
    if (layer >= SKV_MAX_LAYERS || kv_head >= SKV_MAX_HEADS)
        return skv_error(SKV_EINVAL, "ALOC: layer %u / kv head %u out of range", layer, kv_head);
    for (uint64_t j = 0; j < n; j++) {
        if (skv_width_index(bits[j]) < 0)
            return skv_error(SKV_EINVAL, "ALOC layer %u kv head %u token %llu: width %u",
                             layer, kv_head, (unsigned long long)j, bits[j]);
        if (!isfinite(importance[j]) || importance[j] < 0)
            return skv_error(SKV_EINVAL, "ALOC layer %u kv head %u token %llu: importance %g",
                             layer, kv_head, (unsigned long long)j, (double)importance[j]);
    }
    uint8_t hdr[SKV_ALOC_HEADER_LEN], pad[4] = {0, 0, 0, 0};
    skv_put32(hdr, layer);
    skv_put32(hdr + 4, kv_head);
    skv_put64(hdr + 8, n);
    /* importance as little-endian f32 (the host is little-endian, see smartkv(5)) */
    const void *pieces[4] = {hdr, bits, pad, importance};
    uint64_t lens[4] = {SKV_ALOC_HEADER_LEN, n, aloc_pad(n) - n, 4 * n};
    return skv_writev(s, SKV_T_ALOC, 4, pieces, lens);
}

int skv_aloc_decode(const skv_chunk *c, uint32_t *layer, uint32_t *kv_head, uint64_t *n,
                    const uint8_t **bits, const float **importance)
{
    const uint8_t *p = c->data;
    unsigned long long off = (unsigned long long)c->offset;
    if (!skv_chunk_is(c, SKV_T_ALOC))
        return skv_error(SKV_EINVAL, "%s chunk at byte %llu is not ALOC", c->type, off);
    if (c->raw_size < SKV_ALOC_HEADER_LEN)
        return skv_error(SKV_EFORMAT, "ALOC chunk at byte %llu too short (%llu bytes)", off,
                         (unsigned long long)c->raw_size);
    uint32_t l = skv_get32(p), h = skv_get32(p + 4);
    uint64_t nn = skv_get64(p + 8);
    if (l >= SKV_MAX_LAYERS || h >= SKV_MAX_HEADS)
        return skv_error(SKV_EFORMAT, "ALOC chunk at byte %llu: layer %u / kv head %u out of "
                         "range", off, l, h);
    if (nn == 0 || nn > SKV_ALOC_MAX_TOKENS ||
        SKV_ALOC_HEADER_LEN + aloc_pad(nn) + 4 * nn != c->raw_size)
        return skv_error(SKV_EFORMAT, "ALOC chunk at byte %llu (layer %u kv head %u): %llu "
                         "tokens do not match its %llu-byte payload", off, l, h,
                         (unsigned long long)nn, (unsigned long long)c->raw_size);
    const uint8_t *b = p + SKV_ALOC_HEADER_LEN;
    for (uint64_t j = 0; j < nn; j++)
        if (skv_width_index(b[j]) < 0)
            return skv_error(SKV_EFORMAT, "ALOC chunk at byte %llu (layer %u kv head %u): token "
                             "%llu has width %u, not one of 0,2,3,4,8,16", off, l, h,
                             (unsigned long long)j, b[j]);
    for (uint64_t j = nn; j < aloc_pad(nn); j++)
        if (b[j])
            return skv_error(SKV_EFORMAT, "ALOC chunk at byte %llu: nonzero padding", off);
    const uint8_t *fp = b + aloc_pad(nn);
    if ((uintptr_t)fp & 3)
        return skv_error(SKV_EFORMAT, "ALOC chunk at byte %llu: payload not 4-byte aligned "
                         "in memory", off);
    for (uint64_t j = 0; j < nn; j++) {
        float f = skv_getf32(fp + 4 * j);
        if (!isfinite(f) || f < 0)
            return skv_error(SKV_EFORMAT, "ALOC chunk at byte %llu (layer %u kv head %u): token "
                             "%llu has importance %g (must be finite, >= 0)", off, l, h,
                             (unsigned long long)j, (double)f);
    }
    *layer = l;
    *kv_head = h;
    *n = nn;
    *bits = b;
    *importance = (const float *)(const void *)fp;
    return 0;
}

int skv_aloc_check(const skv_alloc_hdr *h, uint32_t layer, uint32_t kv_head, uint64_t n,
                   const uint8_t *bits)
{
    if (layer >= h->n_layers || kv_head >= h->n_kv_heads)
        return skv_error(SKV_EFORMAT, "ALOC for layer %u kv head %u outside the allocation's "
                         "%u layers x %u kv heads", layer, kv_head, h->n_layers, h->n_kv_heads);
    if (n != h->n_tokens)
        return skv_error(SKV_EFORMAT, "ALOC for layer %u kv head %u has %llu tokens, the "
                         "allocation %llu", layer, kv_head, (unsigned long long)n,
                         (unsigned long long)h->n_tokens);
    for (uint64_t j = 0; j < n; j++)
        if (!(h->width_mask & (1u << bits[j])))
            return skv_error(SKV_EFORMAT, "ALOC for layer %u kv head %u: token %llu has width "
                             "%u, not in the allowed set", layer, kv_head,
                             (unsigned long long)j, bits[j]);
    return 0;
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
    int rc;
    if (skv_chunk_is(c, SKV_T_ALHD)) {
        if (*ap)
            return skv_error(SKV_EFORMAT, "second ALHD chunk at byte %llu",
                             (unsigned long long)c->offset);
        skv_alloc_hdr h;
        if ((rc = skv_alhd_decode(c, &h)) < 0)
            return rc;
        if (!(*ap = skv_alloc_new(&h)))
            return SKV_ENOMEM;
        return 0;
    }
    if (!skv_chunk_is(c, SKV_T_ALOC))
        return skv_error(SKV_EINVAL, "%s chunk is not an allocation chunk", c->type);
    skv_alloc *a = *ap;
    if (!a)
        return skv_error(SKV_EFORMAT, "ALOC chunk at byte %llu before the ALHD chunk",
                         (unsigned long long)c->offset);
    uint32_t l, h;
    uint64_t n;
    const uint8_t *bits;
    const float *imp;
    if ((rc = skv_aloc_decode(c, &l, &h, &n, &bits, &imp)) < 0)
        return rc;
    uint64_t want = a->next;
    if (want >= (uint64_t)a->hdr.n_layers * a->hdr.n_kv_heads)
        return skv_error(SKV_EFORMAT, "ALOC chunk at byte %llu: more ALOC chunks than "
                         "%u layers x %u kv heads", (unsigned long long)c->offset,
                         a->hdr.n_layers, a->hdr.n_kv_heads);
    if (l != want / a->hdr.n_kv_heads || h != want % a->hdr.n_kv_heads)
        return skv_error(SKV_EFORMAT, "ALOC chunk at byte %llu is for layer %u kv head %u; "
                         "expected layer %llu kv head %llu", (unsigned long long)c->offset, l,
                         h, (unsigned long long)(want / a->hdr.n_kv_heads),
                         (unsigned long long)(want % a->hdr.n_kv_heads));
    if ((rc = skv_aloc_check(&a->hdr, l, h, n, bits)) < 0)
        return rc;
    memcpy(a->bits + want * n, bits, n);
    memcpy(a->importance + want * n, imp, n * sizeof(float));
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

/* ---- allocation chunks in stream order ---- */

int skv_alloc_seq_chunk(skv_alloc_seq *q, const skv_trace_hdr *th, const skv_chunk *c)
{
    unsigned long long off = (unsigned long long)c->offset;
    int rc;
    if (skv_chunk_is(c, SKV_T_ALHD)) {
        if (q->have_hdr)
            return skv_error(SKV_EFORMAT, "second ALHD chunk at byte %llu (a stream holds one "
                             "allocation)", off);
        if ((rc = skv_alhd_decode(c, &q->h)) < 0)
            return rc;
        if (q->h.n_layers != th->n_layers || q->h.n_kv_heads != th->n_kv_heads ||
            q->h.n_tokens != th->n_tokens || q->h.qcfg.head_dim != th->head_dim)
            return skv_error(SKV_EFORMAT, "ALHD chunk at byte %llu is for %u layers, %u kv "
                             "heads, %llu tokens, head_dim %u; the trace has %u, %u, %llu, %u",
                             off, q->h.n_layers, q->h.n_kv_heads,
                             (unsigned long long)q->h.n_tokens, q->h.qcfg.head_dim,
                             th->n_layers, th->n_kv_heads, (unsigned long long)th->n_tokens,
                             th->head_dim);
        q->have_hdr = 1;
        return 0;
    }
    if (!skv_chunk_is(c, SKV_T_ALOC))
        return skv_error(SKV_EINVAL, "%s chunk at byte %llu is not an allocation chunk",
                         c->type, off);
    if (!q->have_hdr)
        return skv_error(SKV_EFORMAT, "ALOC chunk at byte %llu before the allocation header "
                         "(ALHD)", off);
    uint32_t l, h;
    uint64_t n;
    const uint8_t *bits;
    const float *imp;
    if ((rc = skv_aloc_decode(c, &l, &h, &n, &bits, &imp)) < 0)
        return rc;
    if ((rc = skv_aloc_check(&q->h, l, h, n, bits)) < 0)
        return skv_error(rc, "ALOC chunk at byte %llu: %s", off, skv_errmsg());
    uint64_t at = (uint64_t)l * q->h.n_kv_heads + h;
    if (at != q->next)
        return skv_error(SKV_EFORMAT, "ALOC chunk at byte %llu is for layer %u kv head %u; "
                         "expected layer %llu kv head %llu (ascending, once each)", off, l, h,
                         (unsigned long long)(q->next / q->h.n_kv_heads),
                         (unsigned long long)(q->next % q->h.n_kv_heads));
    q->next++;
    return 0;
}

int skv_alloc_seq_end(const skv_alloc_seq *q)
{
    uint64_t want = (uint64_t)q->h.n_layers * q->h.n_kv_heads;
    if (q->have_hdr && q->next != want)
        return skv_error(SKV_EFORMAT, "the allocation ends after %llu of %llu ALOC chunks",
                         (unsigned long long)q->next, (unsigned long long)want);
    return 0;
}
