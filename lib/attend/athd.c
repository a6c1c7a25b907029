/* athd.c -- the attention-output stream: ATHD header, OUT/PROB tensors,
 * steps lists. */
#include "smartkv_attend.h"
#include "smartkv_error.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *skv_att_mode_name(uint32_t mode)
{
    switch (mode) {
    case SKV_ATT_AUTO: return "auto";
    case SKV_ATT_REFERENCE: return "reference";
    case SKV_ATT_DENSE_F32: return "dense-fp32";
    case SKV_ATT_DENSE_F16: return "dense-fp16";
    case SKV_ATT_PACKED: return "packed";
    }
    return "unknown";
}

int skv_athd_write(skv_stream *s, const skv_athd *h)
{
    size_t a = strlen(h->source), b = strlen(h->label), n;
    if (a > SKV_MAX_NAME || b > SKV_ATHD_MAX_LABEL)
        return skv_error(SKV_EINVAL, "ATHD: source or label too long");
    if (h->n_steps == 0 || h->n_steps > h->n_tokens)
        return skv_error(SKV_EINVAL, "ATHD: %llu steps for %llu tokens",
                         (unsigned long long)h->n_steps, (unsigned long long)h->n_tokens);
    if (skv_mul_size((size_t)h->n_steps, 8, &n) < 0 || skv_add_size(n, SKV_ATHD_FIXED_LEN + a + b, &n) < 0)
        return skv_error(SKV_ELIMIT, "ATHD: too many steps");
    uint8_t *p = skv_calloc(1, n);
    if (!p)
        return SKV_ENOMEM;
    skv_put32(p + 0, h->mode);
    skv_put32(p + 4, h->flags);
    skv_put32(p + 8, h->n_layers);
    skv_put32(p + 12, h->n_heads);
    skv_put32(p + 16, h->n_kv_heads);
    skv_put32(p + 20, h->head_dim);
    skv_put64(p + 24, h->n_tokens);
    skv_put64(p + 32, h->n_steps);
    skv_put64(p + 40, h->kv_bytes);
    skv_put64(p + 48, h->fp16_bytes);
    skv_put16(p + 56, (uint16_t)a);
    skv_put16(p + 58, (uint16_t)b);
    for (uint64_t i = 0; i < h->n_steps; i++)
        skv_put64(p + SKV_ATHD_FIXED_LEN + 8 * i, h->steps[i]);
    memcpy(p + SKV_ATHD_FIXED_LEN + 8 * h->n_steps, h->source, a);
    memcpy(p + SKV_ATHD_FIXED_LEN + 8 * h->n_steps + a, h->label, b);
    int rc = skv_write(s, SKV_T_ATHD, p, n);
    free(p);
    return rc;
}

void skv_athd_free(skv_athd *h)
{
    free(h->steps);
    h->steps = NULL;
}

int skv_athd_decode(const skv_chunk *c, skv_athd *h)
{
    memset(h, 0, sizeof *h);
    const uint8_t *p = c->data;
    unsigned long long off = (unsigned long long)c->offset;
    if (c->raw_size < SKV_ATHD_FIXED_LEN)
        return skv_error(SKV_EFORMAT, "ATHD chunk at byte %llu: %llu bytes, need at least %d", off,
                         (unsigned long long)c->raw_size, SKV_ATHD_FIXED_LEN);
    h->mode = skv_get32(p);
    h->flags = skv_get32(p + 4);
    h->n_layers = skv_get32(p + 8);
    h->n_heads = skv_get32(p + 12);
    h->n_kv_heads = skv_get32(p + 16);
    h->head_dim = skv_get32(p + 20);
    h->n_tokens = skv_get64(p + 24);
    h->n_steps = skv_get64(p + 32);
    h->kv_bytes = skv_get64(p + 40);
    h->fp16_bytes = skv_get64(p + 48);
    uint32_t a = skv_get16(p + 56), b = skv_get16(p + 58);
    if (h->mode < SKV_ATT_REFERENCE || h->mode > SKV_ATT_PACKED)
        return skv_error(SKV_EFORMAT, "ATHD chunk at byte %llu: unknown mode %u", off, h->mode);
    if (h->flags & ~SKV_ATHD_FLAGS_KNOWN)
        return skv_error(SKV_EFORMAT, "ATHD chunk at byte %llu: unknown flags 0x%x", off, h->flags);
    if (skv_get32(p + 60))
        return skv_error(SKV_EFORMAT, "ATHD chunk at byte %llu: reserved bytes 60..63 not zero", off);
    skv_trace_hdr th = {0};
    th.n_layers = h->n_layers;
    th.n_heads = h->n_heads;
    th.n_kv_heads = h->n_kv_heads;
    th.head_dim = h->head_dim;
    th.n_tokens = h->n_tokens;
    th.n_prefill = h->n_tokens;
    th.dtype = SKV_F32;
    if (skv_trace_hdr_check(&th) < 0)
        return skv_error(SKV_EFORMAT, "ATHD chunk at byte %llu: %s", off, skv_errmsg());
    if (h->n_steps == 0 || h->n_steps > h->n_tokens)
        return skv_error(SKV_EFORMAT, "ATHD chunk at byte %llu: %llu steps for %llu tokens", off,
                         (unsigned long long)h->n_steps, (unsigned long long)h->n_tokens);
    if (a > SKV_MAX_NAME || b > SKV_ATHD_MAX_LABEL)
        return skv_error(SKV_EFORMAT, "ATHD chunk at byte %llu: source %u or label %u bytes too long",
                         off, a, b);
    uint64_t need = SKV_ATHD_FIXED_LEN + 8 * h->n_steps + a + b;  /* n_steps <= 2^24 */
    if (c->raw_size < need)
        return skv_error(SKV_EFORMAT, "ATHD chunk at byte %llu: %llu bytes, need %llu for %llu "
                         "steps and the strings", off, (unsigned long long)c->raw_size,
                         (unsigned long long)need, (unsigned long long)h->n_steps);
    h->steps = skv_malloc((size_t)h->n_steps * sizeof *h->steps);
    if (!h->steps)
        return SKV_ENOMEM;
    for (uint64_t i = 0; i < h->n_steps; i++) {
        h->steps[i] = skv_get64(p + SKV_ATHD_FIXED_LEN + 8 * i);
        if (h->steps[i] >= h->n_tokens || (i && h->steps[i] <= h->steps[i - 1])) {
            int rc = skv_error(SKV_EFORMAT, "ATHD chunk at byte %llu: step %llu (%llu) not "
                               "ascending below %llu tokens", off, (unsigned long long)i,
                               (unsigned long long)h->steps[i], (unsigned long long)h->n_tokens);
            skv_athd_free(h);
            return rc;
        }
    }
    const uint8_t *str = p + SKV_ATHD_FIXED_LEN + 8 * h->n_steps;
    memcpy(h->source, str, a);
    memcpy(h->label, str + a, b);
    if (memchr(h->source, 0, a) || memchr(h->label, 0, b)) {
        skv_athd_free(h);
        return skv_error(SKV_EFORMAT, "ATHD chunk at byte %llu: NUL inside a string", off);
    }
    return 0;
}

/* ---- steps ---- */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int parse_num(const char **p, uint64_t *v)
{
    const char *s = *p;
    if (*s < '0' || *s > '9')
        return -1;
    uint64_t x = 0;
    while (*s >= '0' && *s <= '9') {
        if (x > (UINT64_MAX - 9) / 10)
            return -1;
        x = x * 10 + (uint64_t)(*s++ - '0');
    }
    *p = s;
    *v = x;
    return 0;
}

int skv_steps_parse(const char *spec, uint64_t n_tokens, uint64_t **steps, uint64_t *n_steps)
{
    if (steps)
        *steps = NULL;
    *n_steps = 0;
    if (!spec)
        spec = "LAST";
    if (n_tokens == 0 || n_tokens > SKV_MAX_TOKENS)
        return skv_error(SKV_EINVAL, "steps: bad token count %llu", (unsigned long long)n_tokens);
    /* first pass: count, second: fill */
    uint64_t *v = NULL, cap = 0, n = 0;
    const char *p = spec;
    for (;;) {
        uint64_t a, b;
        const char *item = p;
        if (!strncmp(p, "LAST", 4) || !strncmp(p, "last", 4)) {
            a = n_tokens - 1;
            b = n_tokens;
            p += 4;
        } else if (!strncmp(p, "all", 3) || !strncmp(p, "ALL", 3)) {
            a = 0;
            b = n_tokens;
            p += 3;
        } else {
            a = 0;
            b = n_tokens;
            int have_a = parse_num(&p, &a) == 0;
            if (*p == ':') {
                p++;
                if (*p >= '0' && *p <= '9') {
                    if (parse_num(&p, &b) < 0)
                        goto bad;
                } else if (!have_a && !(*p == ',' || *p == 0)) {
                    goto bad;
                }
            } else if (have_a) {
                b = a + 1;
            } else {
                goto bad;
            }
            if (a >= b) {
                free(v);
                return skv_error(SKV_EINVAL, "steps '%.*s' is empty: END must be above START "
                                 "(a:b is half-open)", (int)strcspn(item, ","), item);
            }
            if (b > n_tokens) {
                free(v);
                return skv_error(SKV_EINVAL, "steps '%.*s' out of range: the trace has %llu "
                                 "tokens (steps 0..%llu)", (int)strcspn(item, ","), item,
                                 (unsigned long long)n_tokens, (unsigned long long)n_tokens - 1);
            }
        }
        if (*p != ',' && *p != 0)
            goto bad;
        if (!steps) { /* the syntax only: nothing to hold */
            if (*p == 0)
                return 0;
            p++;
            continue;
        }
        if (!v || n + (b - a) > cap) {
            uint64_t nc = n + (b - a);
            uint64_t *nv = skv_realloc(v, (size_t)nc * sizeof *v);
            if (!nv) {
                free(v);
                return SKV_ENOMEM;
            }
            v = nv;
            cap = nc;
        }
        for (uint64_t t = a; t < b; t++)
            v[n++] = t;
        if (*p == 0)
            break;
        p++;
        if (n > 4 * n_tokens) {  /* repeated items: keep memory bounded */
            qsort(v, (size_t)n, sizeof *v, cmp_u64);
            uint64_t m = 0;
            for (uint64_t i = 0; i < n; i++)
                if (!m || v[i] != v[m - 1])
                    v[m++] = v[i];
            n = m;
        }
    }
    qsort(v, (size_t)n, sizeof *v, cmp_u64);
    uint64_t m = 0;
    for (uint64_t i = 0; i < n; i++)
        if (!m || v[i] != v[m - 1])
            v[m++] = v[i];
    *steps = v;
    *n_steps = m;
    return 0;
bad:
    free(v);
    return skv_error(SKV_EINVAL, "bad steps '%s': use LAST, all, N, a:b or a comma list", spec);
}

/* ---- writing ---- */

int skv_attn_write_layer(skv_stream *s, const skv_athd *h, uint32_t layer, const float *out,
                         const float *prob)
{
    int rc;
    size_t per = (size_t)h->n_steps * h->head_dim;
    for (uint32_t hd = 0; hd < h->n_heads; hd++)
        if ((rc = skv_tens_write(s, SKV_TK_OUT, SKV_F32, layer, hd, 0, h->n_steps, h->head_dim,
                                 out + hd * per)) < 0)
            return rc;
    if (!(h->flags & SKV_ATHD_PROBS))
        return 0;
    if (h->n_tokens > UINT32_MAX)
        return skv_error(SKV_ELIMIT, "probabilities: %llu tokens do not fit a TENS row",
                         (unsigned long long)h->n_tokens);
    size_t pp = (size_t)h->n_steps * h->n_tokens;
    for (uint32_t hd = 0; hd < h->n_heads; hd++)
        if ((rc = skv_tens_write(s, SKV_TK_PROB, SKV_F32, layer, hd, 0, h->n_steps,
                                 (uint32_t)h->n_tokens, prob + hd * pp)) < 0)
            return rc;
    return 0;
}

int skv_attn_write(skv_stream *s, const skv_attn *a)
{
    int rc = skv_athd_write(s, &a->h);
    if (rc < 0)
        return rc;
    size_t per_out = (size_t)a->h.n_heads * a->h.n_steps * a->h.head_dim;
    size_t per_prob = (size_t)a->h.n_heads * a->h.n_steps * a->h.n_tokens;
    for (uint32_t l = 0; l < a->h.n_layers; l++)
        if ((rc = skv_attn_write_layer(s, &a->h, l, a->out + l * per_out,
                                       a->prob ? a->prob + l * per_prob : NULL)) < 0)
            return rc;
    return 0;
}

/* ---- reading ---- */

void skv_attn_free(skv_attn *a)
{
    if (!a)
        return;
    skv_athd_free(&a->h);
    free(a->out);
    free(a->prob);
    free(a);
}

int skv_attn_load(const char *path, skv_attn **res)
{
    *res = NULL;
    skv_stream *s = skv_open_read(path);
    if (!s)
        return SKV_EIO;
    skv_attn *a = skv_calloc(1, sizeof *a);
    int rc = a ? 0 : SKV_ENOMEM;
    skv_chunk c;
    int have_hdr = 0;
    size_t n_out = 0, n_prob = 0, rows_total = 0, ocap = 0, pcap = 0;
    /* expected position: layer, kind, head, next row */
    uint32_t el = 0, ek = SKV_TK_OUT, eh = 0;
    uint64_t er = 0;
    while (rc == 0 && (rc = skv_read(s, &c)) == 1) {
        rc = 0;
        if (skv_chunk_is(&c, SKV_T_ATHD)) {
            if (have_hdr) {
                rc = skv_error(SKV_EFORMAT, "second ATHD chunk at byte %llu",
                               (unsigned long long)c.offset);
                break;
            }
            if ((rc = skv_athd_decode(&c, &a->h)) < 0)
                break;
            have_hdr = 1;
            if (skv_mul_sizes(&n_out, 4, (size_t)a->h.n_layers, (size_t)a->h.n_heads,
                              (size_t)a->h.n_steps, (size_t)a->h.head_dim) < 0 ||
                skv_mul_sizes(&n_prob, 4, (size_t)a->h.n_layers, (size_t)a->h.n_heads,
                              (size_t)a->h.n_steps, (size_t)a->h.n_tokens) < 0 ||
                skv_mul_size(n_out, sizeof(float), &rows_total) < 0 ||
                skv_mul_size(n_prob, sizeof(float), &rows_total) < 0) {
                rc = skv_error(SKV_ELIMIT, "ATHD at byte %llu: outputs too large",
                               (unsigned long long)c.offset);
                break;
            }
            /* out and prob grow as their blocks arrive (below) */
            continue;
        }
        if (skv_chunk_is(&c, SKV_T_TENS)) {
            if (!have_hdr) {
                rc = skv_error(SKV_EFORMAT, "TENS chunk at byte %llu before the ATHD header",
                               (unsigned long long)c.offset);
                break;
            }
            skv_tens t;
            if ((rc = skv_tens_decode(&c, &t)) < 0)
                break;
            const skv_athd *h = &a->h;
            int probs = (h->flags & SKV_ATHD_PROBS) != 0;
            uint64_t cols = t.kind == SKV_TK_OUT ? h->head_dim : h->n_tokens;
            if (el >= h->n_layers || t.kind != ek || t.layer != el || t.head != eh || t.row0 != er ||
                t.rows > h->n_steps - er || t.cols != cols || t.dtype != SKV_F32) {
                rc = skv_error(SKV_EFORMAT, "TENS chunk at byte %llu (kind %u, dtype %u, layer "
                               "%u, head %u, rows %llu+%llu, cols %u) out of order or shape; "
                               "expected kind %u layer %u head %u row %llu", (unsigned long long)c.offset,
                               t.kind, t.dtype, t.layer, t.head, (unsigned long long)t.row0,
                               (unsigned long long)t.rows, t.cols, ek, el, eh,
                               (unsigned long long)er);
                break;
            }
            int po = t.kind == SKV_TK_OUT;
            size_t at = (((size_t)el * h->n_heads + eh) * h->n_steps + er) * (size_t)cols;
            if ((rc = skv_grow(po ? (void **)&a->out : (void **)&a->prob, po ? &ocap : &pcap,
                               (at + (size_t)t.rows * cols) * sizeof(float),
                               (po ? n_out : n_prob) * sizeof(float))) < 0)
                break;
            skv_tens_to_f32(&t, (po ? a->out : a->prob) + at);
            er += t.rows;
            if (er == h->n_steps) {
                er = 0;
                if (++eh == h->n_heads) {
                    eh = 0;
                    if (ek == SKV_TK_OUT && probs) {
                        ek = SKV_TK_PROB;
                    } else {
                        ek = SKV_TK_OUT;
                        el++;
                    }
                }
            }
            continue;
        }
        if (skv_chunk_is(&c, SKV_T_TRHD)) {
            rc = skv_error(SKV_EFORMAT, "this is a trace or packed cache, not an attention "
                           "output (no ATHD header; make one with skv-attend)");
            break;
        }
        if (skv_chunk_is_critical(c.type)) {
            rc = skv_error(SKV_EUNSUP, "unknown critical chunk %s at byte %llu in an "
                           "attention-output stream", c.type, (unsigned long long)c.offset);
            break;
        }
    }
    if (rc == 0) {
        if (!have_hdr)
            rc = skv_error(SKV_EFORMAT, "no attention-output header (ATHD): not a skv-attend output");
        else if (el != a->h.n_layers)
            rc = skv_error(SKV_EFORMAT, "attention outputs end at layer %u of %u (kind %u head %u)",
                           el, a->h.n_layers, ek, eh);
    }
    if (rc < 0) {
        /* keep the message, close quietly */
        char msg[512];
        snprintf(msg, sizeof msg, "%s", skv_errmsg());
        skv_close(s);
        skv_attn_free(a);
        return skv_error(rc, "%s", msg);
    }
    rc = skv_close(s);
    if (rc < 0) {
        skv_attn_free(a);
        return rc;
    }
    *res = a;
    return 0;
}
