/* alhd.c -- the allocation records ALHD and ALOC (smartkv_alhd.h): codecs,
 * field checks, and the in-order checker every reader of a stream uses. */
#include "smartkv_alhd.h"
#include "smartkv_quant.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* ---- widths ---- */

int skv_width_index(uint32_t bits)
{
    for (int i = 0; i < SKV_NBITS; i++)
        if (skv_bit_widths[i] == bits)
            return i;
    return -1;
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
        if (th && (q->h.n_layers != th->n_layers || q->h.n_kv_heads != th->n_kv_heads ||
            q->h.n_tokens != th->n_tokens || q->h.qcfg.head_dim != th->head_dim))
            return skv_error(SKV_EFORMAT, "the allocation is for another shape (%u layers, "
                             "%u kv heads, %llu tokens, head_dim %u) than the trace (%u, %u, "
                             "%llu, %u) (ALHD chunk at byte %llu)",
                             q->h.n_layers, q->h.n_kv_heads,
                             (unsigned long long)q->h.n_tokens, q->h.qcfg.head_dim,
                             th->n_layers, th->n_kv_heads, (unsigned long long)th->n_tokens,
                             th->head_dim, off);
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
