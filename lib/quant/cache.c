/* cache.c -- the packed KV cache: allocation plans, writer, validating
 * reader, and the way back to a plain trace. */
#include "smartkv_cache.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- chunk lists ---- */

int skv_chunk_list_add(skv_chunk_list *l, const skv_chunk *c)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        skv_raw_chunk *v = skv_realloc(l->v, cap * sizeof *v);
        if (!v)
            return SKV_ENOMEM;
        l->v = v;
        l->cap = cap;
    }
    skv_raw_chunk *r = &l->v[l->n];
    memcpy(r->type, c->type, 5);
    r->size = c->raw_size;
    r->offset = c->offset;
    r->data = skv_malloc((size_t)c->raw_size);
    if (!r->data)
        return SKV_ENOMEM;
    memcpy(r->data, c->data, (size_t)c->raw_size);
    l->n++;
    return 0;
}

void skv_chunk_list_free(skv_chunk_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i].data);
    free(l->v);
    memset(l, 0, sizeof *l);
}

int skv_chunk_list_write(skv_stream *s, const skv_chunk_list *l)
{
    for (size_t i = 0; l && i < l->n; i++) {
        int rc = skv_write(s, l->v[i].type, l->v[i].data, l->v[i].size);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* ---- PKHD ---- */

uint64_t skv_fp16_kv_bytes(uint32_t n_layers, uint32_t n_kv_heads, uint64_t n_tokens,
                           uint32_t head_dim)
{
    uint64_t r;
    if (__builtin_mul_overflow((uint64_t)n_layers * n_kv_heads, n_tokens, &r) ||
        __builtin_mul_overflow(r, (uint64_t)head_dim * 4, &r))
        return 0;
    return r;
}

int skv_pkhd_write(skv_stream *s, const skv_pkhd *p)
{
    uint8_t b[SKV_PKHD_LEN];
    memset(b, 0, sizeof b);
    skv_put32(b, p->q.head_dim);
    skv_put32(b + 4, p->q.k_group);
    skv_put32(b + 8, p->q.v_group);
    skv_put16(b + 12, (uint16_t)p->q.k_mode);
    skv_put16(b + 14, (uint16_t)p->q.rotate);  /* the seed is in every PBKT */
    skv_put32(b + 16, p->q.v_mode);
    skv_put32(b + 20, p->n_layers);
    skv_put32(b + 24, p->n_kv_heads);
    skv_put32(b + 28, p->q.k_tokens);
    skv_put64(b + 32, p->n_tokens);
    skv_put64(b + 40, p->cache_bytes);
    skv_put64(b + 48, p->fp16_bytes);
    skv_put64(b + 56, p->n_stored);
    return skv_write(s, SKV_T_PKHD, b, sizeof b);
}

int skv_pkhd_decode(const skv_chunk *c, skv_pkhd *p)
{
    const uint8_t *b = c->data;
    if (c->raw_size != SKV_PKHD_LEN)
        return skv_error(SKV_EFORMAT, "PKHD chunk at byte %llu has %llu bytes, expected %u",
                         (unsigned long long)c->offset, (unsigned long long)c->raw_size,
                         SKV_PKHD_LEN);
    memset(p, 0, sizeof *p);
    p->q.head_dim = skv_get32(b);
    p->q.k_group = skv_get32(b + 4);
    p->q.v_group = skv_get32(b + 8);
    p->q.k_mode = skv_get16(b + 12);
    p->q.rotate = skv_get16(b + 14);  /* the high half of k_mode (zero) before 1.3 */
    p->q.v_mode = skv_get32(b + 16);
    p->n_layers = skv_get32(b + 20);
    p->n_kv_heads = skv_get32(b + 24);
    p->n_tokens = skv_get64(b + 32);
    p->cache_bytes = skv_get64(b + 40);
    p->fp16_bytes = skv_get64(b + 48);
    p->n_stored = skv_get64(b + 56);
    p->q.k_tokens = skv_get32(b + 28);  /* reserved (zero) before format 1.2 */
    if (skv_qcfg_check(&p->q) < 0)
        return skv_error(SKV_EFORMAT, "PKHD chunk at byte %llu: %s",
                         (unsigned long long)c->offset, skv_errmsg());
    return 0;
}

int skv_pkhd_rot_match(skv_pkhd *p, const skv_bucket *b)
{
    if (b->rotate != p->q.rotate)
        return skv_error(SKV_EFORMAT, "rotation flags 0x%x differ from the PKHD chunk's 0x%x",
                         b->rotate, p->q.rotate);
    if (p->rot_seed_known && b->rot_seed != p->q.rot_seed)
        return skv_error(SKV_EFORMAT, "rotation seed %llu differs from the first bucket's %llu "
                         "(one seed per cache)", (unsigned long long)b->rot_seed,
                         (unsigned long long)p->q.rot_seed);
    p->q.rot_seed = b->rot_seed;
    p->rot_seed_known = 1;
    return 0;
}

/* ---- plans ---- */

static int plan_alloc(skv_cache_plan *p, const skv_trace_hdr *h)
{
    memset(p, 0, sizeof *p);
    p->n_layers = h->n_layers;
    p->n_kv_heads = h->n_kv_heads;
    p->n_tokens = h->n_tokens;
    size_t n;
    if (skv_mul_sizes(&n, 3, (size_t)h->n_layers, (size_t)h->n_kv_heads, (size_t)h->n_tokens))
        return skv_error(SKV_ELIMIT, "allocation size overflows");
    p->bits = skv_malloc(n);
    return p->bits ? 0 : SKV_ENOMEM;
}

void skv_cache_plan_free(skv_cache_plan *p)
{
    free(p->bits);
    p->bits = NULL;
}

int skv_cache_plan_uniform(skv_cache_plan *p, const skv_trace_hdr *h, const skv_qcfg *q,
                           uint32_t bits)
{
    if (!skv_bits_valid(bits))
        return skv_error(SKV_EINVAL, "uniform width %u is not one of 2, 3, 4, 8, 16", bits);
    if (q->head_dim != h->head_dim)
        return skv_error(SKV_EINVAL, "quantizer head_dim %u differs from the trace's %u",
                         q->head_dim, h->head_dim);
    int rc = skv_qcfg_check(q);
    if (rc < 0 || (rc = plan_alloc(p, h)) < 0)
        return rc;
    p->q = *q;
    memset(p->bits, (int)bits, (size_t)h->n_layers * h->n_kv_heads * h->n_tokens);
    return 0;
}

/* A kept chunk as the stream reader gives it, for the allocation records'
 * decoders (smartkv_alhd.h): one decoder and one set of rules for
 * skv-alloc, skv-quant and this reader. */
static skv_chunk chunk_view(const skv_raw_chunk *r)
{
    skv_chunk c;
    memset(&c, 0, sizeof c);
    memcpy(c.type, r->type, 5);
    c.size = c.raw_size = r->size;
    c.offset = r->offset;
    c.data = r->data;
    return c;
}

/* An ALHD decoded, checked and matched against the trace's shape. */
static int read_alhd(const skv_raw_chunk *r, const skv_trace_hdr *h, skv_alloc_hdr *a)
{
    skv_alloc_seq q;
    memset(&q, 0, sizeof q);
    skv_chunk c = chunk_view(r);
    int rc = skv_alloc_seq_chunk(&q, h, &c);
    if (rc == 0)
        *a = q.h;
    return rc;
}

/* The ALHD's text on one line. */
static void alhd_text(const skv_alloc_hdr *a, char *out, size_t n)
{
    if (n == 0)
        return;
    size_t L = strnlen(a->text, n - 1);  /* cut at n - 1 bytes, as snprintf would */
    memcpy(out, a->text, L);
    out[L] = '\0';
    for (char *s = out; *s; s++)
        if (*s == '\n')
            *s = ' ';
}

static void plan_from_alhd(skv_cache_plan *p, const skv_alloc_hdr *a)
{
    p->alloc_beta = a->budget;
    p->alloc_mask = a->width_mask;
    p->q = a->qcfg;
    p->alloc_bytes = a->predicted_bytes;
    p->merge_clusters = a->clusters;
    p->merge_bits = 0;  /* centroids take the widest width allowed */
    for (int i = SKV_NBITS - 1; i > 0 && a->clusters && !p->merge_bits; i--)
        if (a->width_mask & (1u << skv_bit_widths[i]))
            p->merge_bits = skv_bit_widths[i];
    alhd_text(a, p->alloc_text, sizeof p->alloc_text);
}

int skv_cache_alloc_text(const skv_chunk_list *chunks, const skv_trace_hdr *h, char *out,
                         size_t n)
{
    for (size_t i = 0; chunks && i < chunks->n; i++)
        if (!memcmp(chunks->v[i].type, SKV_T_ALHD, 4)) {
            skv_alloc_hdr a;
            int rc = read_alhd(&chunks->v[i], h, &a);
            if (rc < 0)
                return rc;
            alhd_text(&a, out, n);
            return 1;
        }
    return 0;
}

int skv_cache_plan_from_chunks(skv_cache_plan *p, const skv_trace_hdr *h,
                               const skv_chunk_list *chunks)
{
    int rc;
    size_t nalhd = 0, naloc = 0, nheads = (size_t)h->n_layers * h->n_kv_heads;
    /* counts only: the order (one ALHD, then the ALOCs) is the checker's */
    for (size_t i = 0; chunks && i < chunks->n; i++) {
        nalhd += !memcmp(chunks->v[i].type, SKV_T_ALHD, 4);
        naloc += !memcmp(chunks->v[i].type, SKV_T_ALOC, 4);
    }
    if (!nalhd)
        return skv_error(SKV_EFORMAT, "no allocation in the stream (run skv-alloc first, or "
                         "use --uniform N)");
    /* counted before the plan is allocated: its size must be backed by data */
    if (naloc != nheads)
        return skv_error(SKV_EFORMAT, "the allocation has %zu ALOC chunks for %zu (layer, kv "
                         "head) pairs", naloc, nheads);
    if ((rc = plan_alloc(p, h)) < 0)
        return rc;
    skv_alloc_seq q;
    memset(&q, 0, sizeof q);
    for (size_t i = 0; i < chunks->n; i++) {
        const skv_raw_chunk *r = &chunks->v[i];
        if (memcmp(r->type, SKV_T_ALHD, 4) != 0 && memcmp(r->type, SKV_T_ALOC, 4) != 0)
            continue;
        skv_chunk c = chunk_view(r);
        if ((rc = skv_alloc_seq_chunk(&q, h, &c)) < 0)
            goto fail;
        if (!memcmp(r->type, SKV_T_ALHD, 4)) {
            plan_from_alhd(p, &q.h);
            continue;
        }
        /* checked in full by skv_alloc_seq_chunk: in order, n_tokens widths
         * allowed by the ALHD */
        uint64_t hi = (uint64_t)skv_get32(r->data) * h->n_kv_heads + skv_get32(r->data + 4);
        memcpy(p->bits + hi * h->n_tokens, r->data + SKV_ALOC_HEADER_LEN, h->n_tokens);
    }
    if ((rc = skv_alloc_seq_end(&q)) < 0)
        goto fail;
    p->from_alloc = 1;
    return 0;
fail:
    skv_cache_plan_free(p);
    return rc;
}

/* Tokens per width of one head's widths array. */
static int count_widths(const uint8_t *bits, uint64_t n, uint64_t cnt[SKV_NBITS],
                        uint32_t layer, uint32_t kv_head)
{
    memset(cnt, 0, SKV_NBITS * sizeof cnt[0]);
    for (uint64_t t = 0; t < n; t++) {
        int wi = skv_width_index(bits[t]);
        if (wi < 0)
            return skv_error(SKV_EINVAL, "layer %u kv head %u token %llu: width %u is not one "
                             "of 0, 2, 3, 4, 8, 16", layer, kv_head, (unsigned long long)t,
                             bits[t]);
        cnt[wi]++;
    }
    return 0;
}

int skv_cache_plan_bytes(const skv_cache_plan *p, uint64_t *bytes)
{
    uint64_t total = skv_pkhd_file_bytes(), cnt[SKV_NBITS];
    if (!p->bits) { /* every token at p->uniform */
        *bytes = total + (uint64_t)p->n_layers * p->n_kv_heads *
                             skv_bucket_file_bytes(&p->q, p->uniform, p->n_tokens);
        return 0;
    }
    for (uint32_t l = 0; l < p->n_layers; l++)
        for (uint32_t h = 0; h < p->n_kv_heads; h++) {
            const uint8_t *b = p->bits + ((size_t)l * p->n_kv_heads + h) * p->n_tokens;
            int rc = count_widths(b, p->n_tokens, cnt, l, h);
            if (rc < 0)
                return rc;
            for (int i = 1; i < SKV_NBITS; i++)
                total += skv_bucket_file_bytes(&p->q, skv_bit_widths[i], cnt[i]);
            if (p->merge_clusters)
                total += skv_cntr_file_bytes(&p->q, p->merge_bits,
                                             cnt[0] < p->merge_clusters ? cnt[0]
                                                                        : p->merge_clusters);
        }
    *bytes = total;
    return 0;
}

/* ---- reading the input trace ---- */

typedef struct {
    skv_chunk_list *extra;
} input_ctx;

static int keep_chunk(void *ctx, const skv_chunk *c)
{
    input_ctx *x = ctx;
    if (skv_chunk_is(c, SKV_T_ALHD) || skv_chunk_is(c, SKV_T_ALOC) ||
        !skv_chunk_is_critical(c->type))
        return skv_chunk_list_add(x->extra, c);
    if (skv_chunk_is(c, SKV_T_PKHD) || skv_chunk_is(c, SKV_T_PBKT))
        return skv_error(SKV_EFORMAT, "%s chunk at byte %llu: the input is already a packed "
                         "cache", c->type, (unsigned long long)c->offset);
    return skv_error(SKV_EUNSUP, "unknown critical chunk %s at byte %llu", c->type,
                     (unsigned long long)c->offset);
}

static int check_alloc_chunks(const skv_trace_hdr *h, const skv_chunk_list *extra,
                              const char *what);

int skv_cache_input_load(const char *path, skv_trace **out, skv_chunk_list *extra)
{
    input_ctx ctx = {extra};
    int rc = skv_trace_load_with(path, keep_chunk, &ctx, out);
    /* an allocation is checked even when it will not be used (--uniform),
     * since it is passed on into the packed cache */
    if (rc == 0 && (rc = check_alloc_chunks(&(*out)->hdr, extra, "")) < 0) {
        skv_trace_free(*out);
        *out = NULL;
    }
    return rc;
}

/* ---- writer ---- */

int skv_trace_check_values(const skv_trace *t)
{
    const skv_trace_hdr *h = &t->hdr;
    const size_t per = (size_t)h->n_tokens * h->head_dim;
    int rc = 0;
    for (uint32_t l = 0; rc == 0 && l < h->n_layers; l++) {
        for (uint32_t i = 0; rc == 0 && i < h->n_heads; i++)
            rc = skv_trace_values_check(SKV_TK_Q, l, i, 0, h->n_tokens, h->head_dim,
                                        t->q[l] + i * per);
        for (uint32_t i = 0; rc == 0 && i < h->n_kv_heads; i++)
            rc = skv_trace_values_check(SKV_TK_K, l, i, 0, h->n_tokens, h->head_dim,
                                        t->k[l] + i * per);
        for (uint32_t i = 0; rc == 0 && i < h->n_kv_heads; i++)
            rc = skv_trace_values_check(SKV_TK_V, l, i, 0, h->n_tokens, h->head_dim,
                                        t->v[l] + i * per);
    }
    return rc;
}

typedef struct cent_ord {
    uint32_t last, j;
} cent_ord;

static int by_last(const void *a, const void *b)
{
    const cent_ord *x = a, *y = b;
    return (x->last > y->last) - (x->last < y->last);
}

/* The CNTR chunk of one (layer, kv head): its n0 evicted tokens ev[] (in
 * position order) merged by online k-means on the keys with step 1/count
 * (every centroid the exact mean of its members), at most
 * p->merge_clusters centroids, ordered by their last member. */
static int write_centroids(skv_stream *s, const skv_cache_plan *p, uint32_t l, uint32_t kh,
                           const uint32_t *ev, uint64_t n0, const float *K, const float *V)
{
    const uint32_t d = p->q.head_dim;
    const uint32_t nc = (uint32_t)(n0 < p->merge_clusters ? n0 : p->merge_clusters);
    if (skv_cntr_payload_bytes(&p->q, p->merge_bits, nc) > SKV_CHUNK_MAX)
        return skv_error(SKV_ELIMIT, "%u centroids of layer %u kv head %u do not fit one chunk",
                         nc, l, kh);
    float *ck = skv_calloc((size_t)nc * d * 2, sizeof *ck);
    uint32_t *cnt = skv_calloc(nc, sizeof *cnt), *last = skv_calloc(nc, sizeof *last);
    uint32_t *scnt = skv_calloc(nc, sizeof *scnt), *slast = skv_calloc(nc, sizeof *slast);
    float *sk = skv_calloc((size_t)nc * d * 2, sizeof *sk);
    cent_ord *o = skv_calloc(nc, sizeof *o);
    uint64_t size = skv_cntr_payload_bytes(&p->q, p->merge_bits, nc);
    uint8_t *buf = skv_malloc((size_t)size);
    int rc = 0;
    if (!ck || !cnt || !last || !scnt || !slast || !sk || !o || !buf)
        rc = SKV_ENOMEM;
    for (uint64_t i = 0; i < n0 && rc == 0; i++) {
        uint32_t t = ev[i];
        uint32_t j = skv_km_update(ck, ck + (size_t)nc * d, cnt, nc, d, K + (size_t)t * d,
                                   V + (size_t)t * d, 0.0);
        last[j] = t;  /* tokens come in position order */
    }
    if (rc == 0) {
        for (uint32_t j = 0; j < nc; j++)
            o[j] = (cent_ord){last[j], j};
        qsort(o, nc, sizeof *o, by_last);
        for (uint32_t i = 0; i < nc; i++) {
            uint32_t j = o[i].j;
            scnt[i] = cnt[j];
            slast[i] = last[j];
            memcpy(sk + (size_t)i * d, ck + (size_t)j * d, d * sizeof *sk);
            memcpy(sk + ((size_t)nc + i) * d, ck + ((size_t)nc + j) * d, d * sizeof *sk);
        }
        rc = skv_cntr_encode(buf, size, &p->q, l, kh, p->merge_bits, nc, scnt, slast, sk,
                             sk + (size_t)nc * d);
        if (rc < 0)
            rc = skv_error(rc, "centroids of layer %u kv head %u: %s", l, kh, skv_errmsg());
    }
    if (rc == 0)
        rc = skv_write(s, SKV_T_CNTR, buf, size);
    free(ck);
    free(cnt);
    free(last);
    free(scnt);
    free(slast);
    free(sk);
    free(o);
    free(buf);
    return rc;
}

/* One cache being written: the header as written, the plan, and the
 * scratch buffers reused from layer to layer. */
typedef struct cwriter {
    skv_stream *s;
    const skv_cache_plan *p;
    skv_trace_hdr h;
    unsigned flags;
    skv_cache_stats *st;
    uint64_t model;
    uint32_t *order;        /* allocated with the first layer: never for a header alone */
    uint8_t *row;           /* a uniform plan's widths of one head */
    uint8_t *buf;
    size_t bufcap;
    float *rk, *rv;         /* rotating: one head's rotated K and V [T][d] */
} cwriter;

static int cw_begin(cwriter *w, skv_stream *s, const skv_trace_hdr *th, const int32_t *tokens,
                    const skv_cache_plan *p, const skv_chunk_list *pass, unsigned flags,
                    skv_cache_stats *st)
{
    int rc;
    memset(w, 0, sizeof *w);
    if (p->n_layers != th->n_layers || p->n_kv_heads != th->n_kv_heads ||
        p->n_tokens != th->n_tokens || p->q.head_dim != th->head_dim)
        return skv_error(SKV_EINVAL, "the plan's shape differs from the trace's");
    if ((rc = skv_qcfg_check(&p->q)) < 0)
        return rc;
    if (p->q.rotate && p->merge_clusters)
        return skv_error(SKV_EINVAL, "the allocation merges evicted tokens into centroids, "
                         "which are not rotated: no rotation with merged tokens");
    memset(st, 0, sizeof *st);
    skv_pkhd pk = {.q = p->q, .n_layers = th->n_layers, .n_kv_heads = th->n_kv_heads,
                   .n_tokens = th->n_tokens};
    pk.fp16_bytes = skv_fp16_kv_bytes(th->n_layers, th->n_kv_heads, th->n_tokens, th->head_dim);
    if ((rc = skv_cache_plan_bytes(p, &pk.cache_bytes)) < 0)
        return rc;
    const size_t T = (size_t)th->n_tokens;
    if (!p->bits)
        pk.n_stored = (uint64_t)th->n_layers * th->n_kv_heads * T;
    for (size_t i = 0; p->bits && i < (size_t)th->n_layers * th->n_kv_heads * T; i++)
        pk.n_stored += p->bits[i] != 0;
    if (p->from_alloc && p->alloc_bytes != pk.cache_bytes)
        return skv_error(SKV_EFORMAT, "the allocation predicts %llu cache bytes but the "
                         "packed cache takes %llu (skv-alloc and skv-quant disagree on the "
                         "byte model)", (unsigned long long)p->alloc_bytes,
                         (unsigned long long)pk.cache_bytes);
    w->s = s;
    w->p = p;
    w->h = *th;
    w->flags = flags;
    w->st = st;
    w->model = pk.cache_bytes;
    w->h.flags |= SKV_TRACE_PACKED;
    if (flags & SKV_CACHE_DROP_QUERIES)
        w->h.flags |= SKV_TRACE_NO_QUERIES;
    if ((w->h.flags & SKV_TRACE_HAS_TOKENS) && !tokens)
        return skv_error(SKV_EINVAL, "the trace header flags token ids the trace does not hold");
    if ((rc = skv_trhd_write(s, &w->h)) < 0)
        return rc;
    if ((w->h.flags & SKV_TRACE_HAS_TOKENS) && (rc = skv_toks_write(s, 0, T, tokens)) < 0)
        return rc;
    if ((rc = skv_chunk_list_write(s, pass)) < 0)
        return rc;
    uint64_t before = skv_stream_offset(s);
    if ((rc = skv_pkhd_write(s, &pk)) < 0)
        return rc;
    st->cache_bytes += skv_stream_offset(s) - before;
    return 0;
}

/* Layer l: its queries (unless dropped), then the buckets of each kv head.
 * q is [n_heads][T][d], k and v [n_kv_heads][T][d]. */
static int cw_layer(cwriter *w, uint32_t l, const float *q, const float *k, const float *v)
{
    const skv_trace_hdr *h = &w->h;
    const skv_cache_plan *p = w->p;
    skv_cache_stats *st = w->st;
    const size_t T = (size_t)h->n_tokens, d = h->head_dim;
    int rc = 0;
    /* skv-alloc's rule: every value, not only the rows the plan stores, so
     * that both tools accept the same traces */
    for (uint32_t i = 0; q && rc == 0 && i < h->n_heads; i++)
        rc = skv_trace_values_check(SKV_TK_Q, l, i, 0, h->n_tokens, h->head_dim, q + i * T * d);
    for (uint32_t i = 0; rc == 0 && i < h->n_kv_heads; i++)
        rc = skv_trace_values_check(SKV_TK_K, l, i, 0, h->n_tokens, h->head_dim, k + i * T * d);
    for (uint32_t i = 0; rc == 0 && i < h->n_kv_heads; i++)
        rc = skv_trace_values_check(SKV_TK_V, l, i, 0, h->n_tokens, h->head_dim, v + i * T * d);
    if (rc < 0)
        return rc;
    if (!w->order && !(w->order = skv_malloc((T ? T : 1) * sizeof(uint32_t))))
        return SKV_ENOMEM;
    if (!p->bits && !w->row) {
        if (!(w->row = skv_malloc(T ? T : 1)))
            return SKV_ENOMEM;
        memset(w->row, (int)p->uniform, T);
    }
    if (!(w->flags & SKV_CACHE_DROP_QUERIES))
        for (uint32_t i = 0; i < h->n_heads && rc == 0; i++)
            rc = skv_tens_write(w->s, SKV_TK_Q, h->dtype, l, i, 0, T, (uint32_t)d, q + i * T * d);
    for (uint32_t kh = 0; kh < h->n_kv_heads && rc == 0; kh++) {
        const uint8_t *bits = p->bits ? p->bits + ((size_t)l * h->n_kv_heads + kh) * T : w->row;
        uint64_t cnt[SKV_NBITS], start[SKV_NBITS], pos[SKV_NBITS];
        if ((rc = count_widths(bits, T, cnt, l, kh)) < 0)
            break;
        /* counting sort: token indices grouped by width, ascending within */
        start[0] = 0;
        for (int wi = 1; wi < SKV_NBITS; wi++)
            start[wi] = start[wi - 1] + cnt[wi - 1];
        memcpy(pos, start, sizeof pos);
        for (size_t tk = 0; tk < T; tk++)
            w->order[pos[skv_width_index(bits[tk])]++] = (uint32_t)tk;
        for (int wi = 0; wi < SKV_NBITS; wi++)
            st->hist[wi] += cnt[wi];
        const float *K = k + (size_t)kh * T * d, *V = v + (size_t)kh * T * d;
        if (p->q.rotate) {
            /* the rows are quantized in the rotated basis (skv_rot_*), so the
             * buckets decode to rotated rows */
            if ((!w->rk && !(w->rk = skv_malloc((T ? T : 1) * d * sizeof *w->rk))) ||
                (!w->rv && !(w->rv = skv_malloc((T ? T : 1) * d * sizeof *w->rv))))
                return SKV_ENOMEM;
            float sign[SKV_MAX_HEAD_DIM];
            skv_rot_signs(p->q.rot_seed, (uint64_t)l * h->n_kv_heads + kh, (uint32_t)d, sign);
            for (size_t t = 0; t < T; t++) {
                if (p->q.rotate & SKV_ROT_KEYS)
                    skv_rot_apply(sign, K + t * d, w->rk + t * d, (uint32_t)d);
                if (p->q.rotate & SKV_ROT_VALUES)
                    skv_rot_apply(sign, V + t * d, w->rv + t * d, (uint32_t)d);
            }
            if (p->q.rotate & SKV_ROT_KEYS)
                K = w->rk;
            if (p->q.rotate & SKV_ROT_VALUES)
                V = w->rv;
        }
        for (int wi = 1; wi < SKV_NBITS && rc == 0; wi++) {
            uint32_t bw = skv_bit_widths[wi];
            uint64_t max = skv_pbkt_max_tokens(&p->q, bw);
            for (uint64_t done = 0, part = 0; done < cnt[wi] && rc == 0; part++) {
                uint64_t n = cnt[wi] - done < max ? cnt[wi] - done : max;
                uint64_t size = skv_pbkt_payload_bytes(&p->q, bw, n);
                if (size > w->bufcap) {
                    uint8_t *nb = skv_realloc(w->buf, (size_t)size);
                    if (!nb)
                        return SKV_ENOMEM;
                    w->buf = nb;
                    w->bufcap = (size_t)size;
                }
                rc = skv_pbkt_encode(w->buf, size, &p->q, l, kh, bw, (uint32_t)part,
                                     w->order + start[wi] + done, (uint32_t)n, K, V);
                if (rc < 0)
                    break;
                uint64_t before = skv_stream_offset(w->s);
                if ((rc = skv_write(w->s, SKV_T_PBKT, w->buf, size)) < 0)
                    break;
                st->cache_bytes += skv_stream_offset(w->s) - before;
                st->n_pbkt++;
                done += n;
            }
        }
        if (rc == 0 && p->merge_clusters && cnt[0]) {
            uint64_t before = skv_stream_offset(w->s);
            rc = write_centroids(w->s, p, l, kh, w->order, cnt[0], K, V);
            st->cache_bytes += skv_stream_offset(w->s) - before;
        }
    }
    return rc < 0 ? rc : 0;
}

static int cw_end(cwriter *w)
{
    skv_cache_stats *st = w->st;
    st->model_bytes = w->model;
    st->fp16_bytes = skv_fp16_kv_bytes(w->h.n_layers, w->h.n_kv_heads, w->h.n_tokens,
                                       w->h.head_dim);
    st->stream_bytes = skv_stream_offset(w->s);
    if (skv_stream_level(w->s) < 0 && st->cache_bytes != st->model_bytes)
        return skv_error(SKV_EFORMAT, "internal error: wrote %llu cache bytes, the byte model "
                         "says %llu", (unsigned long long)st->cache_bytes,
                         (unsigned long long)st->model_bytes);
    return 0;
}

static void cw_free(cwriter *w)
{
    free(w->order);
    free(w->row);
    free(w->buf);
    free(w->rk);
    free(w->rv);
    w->order = NULL;
    w->row = NULL;
    w->buf = NULL;
    w->rk = w->rv = NULL;
}

int skv_cache_write(skv_stream *s, const skv_trace *t, const skv_cache_plan *p,
                    const skv_chunk_list *pass, unsigned flags, skv_cache_stats *st)
{
    skv_cache_stats local;
    cwriter w;
    int rc = cw_begin(&w, s, &t->hdr, t->tokens, p, pass, flags, st ? st : &local);
    for (uint32_t l = 0; rc == 0 && l < t->hdr.n_layers; l++)
        rc = cw_layer(&w, l, t->q[l], t->k[l], t->v[l]);
    if (rc == 0)
        rc = cw_end(&w);
    cw_free(&w);
    return rc;
}

/* ---- streaming quantizer ---- */

/* Pass 2: chunks that are not part of the trace. */
typedef struct qpass {
    skv_stream *out;
    int started;            /* the header is written: ancillary chunks go straight out */
    int uniform;            /* an input allocation is checked, not used */
    skv_chunk_list pending; /* ancillary chunks before the header was written */
    skv_chunk_list alloc;   /* with uniform: the input's allocation, checked at the end */
} qpass;

static int qpass_chunk(void *ctx, const skv_chunk *c)
{
    qpass *x = ctx;
    if (skv_chunk_is(c, SKV_T_ALHD) || skv_chunk_is(c, SKV_T_ALOC))
        return x->uniform ? skv_chunk_list_add(&x->alloc, c) : 0; /* read in pass 1 */
    if (skv_chunk_is(c, SKV_T_PKHD) || skv_chunk_is(c, SKV_T_PBKT))
        return skv_error(SKV_EFORMAT, "%s chunk at byte %llu: the input is already a packed "
                         "cache", c->type, (unsigned long long)c->offset);
    if (skv_chunk_is_critical(c->type))
        return skv_error(SKV_EUNSUP, "unknown critical chunk %s at byte %llu", c->type,
                         (unsigned long long)c->offset);
    return x->started ? skv_copy_chunk(x->out, c) : skv_chunk_list_add(&x->pending, c);
}

/* Pass 1: the allocation chunks (and the header, to check them against),
 * copying every chunk to the spool when there is one. */
static int quant_pass1(skv_stream *in, const skv_chunk *first, skv_stream *spool,
                       skv_trace_hdr *h, skv_chunk_list *alloc)
{
    int rc, have = 0;
    skv_chunk c;
    for (int i = 0;; i++) {
        if (i == 0 && first)
            c = *first;
        else if ((rc = skv_read(in, &c)) <= 0)
            break;
        if (skv_chunk_is(&c, SKV_T_TRHD) && !have) {
            if ((rc = skv_trhd_decode(&c, h)) < 0)
                return rc;
            have = 1;
        } else if (skv_chunk_is(&c, SKV_T_ALHD) || skv_chunk_is(&c, SKV_T_ALOC)) {
            if ((rc = skv_chunk_list_add(alloc, &c)) < 0)
                return rc;
        }
        if (spool && (rc = skv_copy_chunk(spool, &c)) < 0)
            return skv_error(rc, "temporary copy of the input: %s", skv_errmsg());
    }
    if (rc < 0)
        return rc;
    if (!have)
        return skv_error(SKV_EFORMAT, "no trace header (TRHD) in stream");
    if (h->flags & (SKV_TRACE_PACKED | SKV_TRACE_NO_QUERIES))
        return skv_error(SKV_EFORMAT, "this stream holds a packed cache, not a trace");
    return 0;
}

/* An unlinked temporary file in $TMPDIR (nothing to clean up on a signal). */
static int spool_fd(void)
{
    const char *td = getenv("TMPDIR");
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s/skv-spool.XXXXXX", td && *td ? td : "/tmp");
    int fd = mkstemp(tmp);
    if (fd < 0)
        return skv_error(SKV_EIO, "cannot create a temporary file in %s: %s",
                         td && *td ? td : "/tmp", strerror(errno));
    unlink(tmp);
    return fd;
}

static int is_regular(const char *path)
{
    struct stat st;
    return path && strcmp(path, "-") != 0 && stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int skv_cache_quantize(skv_stream *in, const skv_chunk *first, const char *path,
                       skv_stream *out, const skv_quantize_opts *o, skv_cache_plan *plan,
                       skv_cache_stats *st)
{
    int rc = 0, fd = -1;
    skv_chunk_list alloc = {0}, pass = {0};
    qpass x = {.out = out, .uniform = o->uniform != 0};
    skv_stream *s2 = NULL;
    skv_trace_reader *r = NULL;
    skv_layer L = {0};
    char name[256] = "";
    cwriter w;
    memset(&w, 0, sizeof w);
    memset(plan, 0, sizeof *plan);
    skv_cache_stats local;
    if (!st)
        st = &local;
    if (!o->uniform) {
        /* the allocation follows the last layer: read the input once for
         * it, then again for the layers (a file is reopened, a pipe is
         * copied to a temporary file on the way) */
        skv_trace_hdr h;
        skv_stream *spool = NULL;
        int reg = is_regular(path);
        if (!reg) {
            if ((fd = spool_fd()) < 0)
                return fd;
            if (!(spool = skv_open_write_fd(fd, "(temporary copy)", SKV_LEVEL_KEEP))) {
                rc = SKV_EIO;
                goto done;
            }
        }
        rc = quant_pass1(in, first, spool, &h, &alloc);
        if (rc == 0 && o->progress) /* the reading is over (before its file is closed) */
            o->progress(o->progress_ctx, 0, h.n_layers);
        snprintf(name, sizeof name, "%s", skv_stream_name(in));
        skv_close(in);
        in = NULL;
        if (spool) {
            if (rc == 0)
                rc = skv_close(spool);
            else
                skv_discard(spool);
        }
        if (rc == 0 && (rc = skv_cache_plan_from_chunks(plan, &h, &alloc)) < 0)
            goto done;
        if (rc < 0)
            goto done;
        if (reg) {
            s2 = skv_open_read(path);
        } else if (lseek(fd, 0, SEEK_SET) != 0) {
            rc = skv_error(SKV_EIO, "temporary copy of the input: %s", strerror(errno));
            goto done;
        } else {
            s2 = skv_open_fd(fd, name);
        }
        if (!s2) {
            rc = SKV_EIO;
            goto done;
        }
        for (size_t i = 0; i < alloc.n; i++) {
            int aloc = !memcmp(alloc.v[i].type, SKV_T_ALOC, 4);
            skv_chunk ch = {.raw_size = alloc.v[i].size, .size = alloc.v[i].size,
                            .data = alloc.v[i].data};
            memcpy(ch.type, alloc.v[i].type, 5);
            if ((!aloc || (o->flags & SKV_CACHE_KEEP_ALLOC)) &&
                (rc = skv_chunk_list_add(&pass, &ch)) < 0)
                goto done;
        }
        skv_chunk_list_free(&alloc);
    } else {
        if (first) {
            rc = skv_error(SKV_EINVAL, "skv_cache_quantize: --uniform reads from the start");
            goto done;
        }
        s2 = in;
        in = NULL;
    }
    r = skv_trace_reader_open_stream(s2, qpass_chunk, &x);
    s2 = NULL;
    if (!r) {
        rc = SKV_EFORMAT;
        goto done;
    }
    const skv_trace_hdr *h = &r->hdr;
    if (o->uniform) {
        skv_qcfg q = o->q;
        q.head_dim = h->head_dim;
        if (!q.k_group)
            q.k_group = h->head_dim;
        if (!q.v_group)
            q.v_group = h->head_dim;
        if ((rc = skv_qcfg_check(&q)) < 0)
            goto done;
        if (!skv_bits_valid(o->uniform) || !o->uniform) {
            rc = skv_error(SKV_EINVAL, "width %u is not one of 2, 3, 4, 8, 16", o->uniform);
            goto done;
        }
        /* no widths array: nothing the size of the header's shape before
         * its data has been read */
        plan->q = q;
        plan->n_layers = h->n_layers;
        plan->n_kv_heads = h->n_kv_heads;
        plan->n_tokens = h->n_tokens;
        plan->uniform = o->uniform;
    } else if (h->n_layers != plan->n_layers || h->n_kv_heads != plan->n_kv_heads ||
               h->n_tokens != plan->n_tokens || h->head_dim != plan->q.head_dim) {
        rc = skv_error(SKV_EFORMAT, "the input changed between its two readings");
        goto done;
    }
    /* the rotation is skv-quant's choice, not the allocation's (the byte
     * model does not depend on it) */
    plan->q.rotate = o->q.rotate;
    plan->q.rot_seed = o->q.rotate ? o->q.rot_seed : 0;
    for (size_t i = 0; i < x.pending.n; i++) {
        skv_chunk ch = {.raw_size = x.pending.v[i].size, .size = x.pending.v[i].size,
                        .data = x.pending.v[i].data};
        memcpy(ch.type, x.pending.v[i].type, 5);
        if ((rc = skv_chunk_list_add(&pass, &ch)) < 0)
            goto done;
    }
    skv_chunk_list_free(&x.pending);
    if ((rc = cw_begin(&w, out, h, r->tokens, plan, &pass, o->flags, st)) < 0)
        goto done;
    if (o->uniform && o->progress)
        o->progress(o->progress_ctx, 0, h->n_layers);
    x.started = 1;
    skv_chunk_list_free(&pass);
    for (uint32_t l = 0; l < h->n_layers; l++) {
        rc = skv_trace_next_layer(r, &L);
        if (rc == 0)
            rc = skv_error(SKV_EFORMAT, "the trace ends before layer %u", l);
        if (rc < 0 || (rc = cw_layer(&w, l, L.q, L.k, L.v)) < 0)
            goto done;
        if (o->progress)
            o->progress(o->progress_ctx, l + 1, h->n_layers);
    }
    if ((rc = skv_trace_reader_finish(r)) < 0)
        goto done;
    if (o->uniform && (rc = check_alloc_chunks(h, &x.alloc, "")) < 0)
        goto done;
    rc = cw_end(&w);
done:
    skv_trace_reader_close(r);
    skv_close(s2);
    skv_close(in);
    if (fd >= 0)
        close(fd);
    skv_layer_free(&L);
    cw_free(&w);
    skv_chunk_list_free(&alloc);
    skv_chunk_list_free(&pass);
    skv_chunk_list_free(&x.pending);
    skv_chunk_list_free(&x.alloc);
    if (rc < 0)
        skv_cache_plan_free(plan);
    return rc < 0 ? rc : 0;
}

/* ---- queries from the trace ---- */

static int ignore_chunk(void *ctx, const skv_chunk *c)
{
    (void)ctx;
    (void)c;
    return 0;
}

skv_trace_reader *skv_cache_queries_open(const skv_cache *c, const char *path)
{
    skv_trace_reader *r = skv_trace_reader_open(path, ignore_chunk, NULL);
    if (!r)
        return NULL;
    const skv_trace_hdr *h = &r->hdr, *ch = &c->hdr;
    int rc = 0;
    if (h->flags & (SKV_TRACE_PACKED | SKV_TRACE_NO_QUERIES))
        rc = skv_error(SKV_EFORMAT, "not a trace with queries (%s)",
                       h->flags & SKV_TRACE_PACKED ? "a packed cache" : "its queries were dropped");
    else if (h->n_layers != ch->n_layers || h->n_heads != ch->n_heads ||
             h->n_kv_heads != ch->n_kv_heads || h->n_tokens != ch->n_tokens ||
             h->head_dim != ch->head_dim)
        rc = skv_error(SKV_EFORMAT, "the trace's shape (%u layers, %u heads, %u kv heads, %llu "
                       "tokens, head_dim %u) is not the cache's (%u, %u, %u, %llu, %u)",
                       h->n_layers, h->n_heads, h->n_kv_heads, (unsigned long long)h->n_tokens,
                       h->head_dim, ch->n_layers, ch->n_heads, ch->n_kv_heads,
                       (unsigned long long)ch->n_tokens, ch->head_dim);
    else if (r->tokens && c->tokens)
        for (uint64_t t = 0; t < h->n_tokens; t++)
            if (r->tokens[t] != c->tokens[t]) {
                rc = skv_error(SKV_EFORMAT, "not the trace of this cache: token %llu is id %d "
                               "in the trace, %d in the cache", (unsigned long long)t,
                               r->tokens[t], c->tokens[t]);
                break;
            }
    if (rc < 0) {
        skv_trace_reader_close(r);
        return NULL;
    }
    return r;
}

int skv_cache_queries_from(skv_cache *c, const char *path)
{
    skv_trace_reader *r = skv_cache_queries_open(c, path);
    if (!r)
        return SKV_EFORMAT;
    const skv_trace_hdr *h = &r->hdr, *ch = &c->hdr;
    int rc = 0;
    float **q = NULL;
    if (!(q = skv_calloc(h->n_layers, sizeof *q)))
        rc = SKV_ENOMEM;
    for (uint32_t l = 0; rc == 0 && l < h->n_layers; l++) {
        skv_layer L = {0};
        rc = skv_trace_next_layer(r, &L);
        if (rc == 0)
            rc = skv_error(SKV_EFORMAT, "the trace ends before layer %u", l);
        if (rc < 0)
            break;
        rc = 0;
        q[l] = L.q; /* keep the queries, drop K and V at once */
        L.q = NULL;
        skv_layer_free(&L);
    }
    if (rc == 0)
        rc = skv_trace_reader_finish(r);
    skv_trace_reader_close(r);
    if (rc < 0) {
        for (uint32_t l = 0; q && l < h->n_layers; l++)
            free(q[l]);
        free(q);
        return rc;
    }
    if (c->q) {
        for (uint32_t l = 0; l < ch->n_layers; l++)
            free(c->q[l]);
        free(c->q);
    }
    c->q = q;
    c->hdr.flags &= ~SKV_TRACE_NO_QUERIES;
    return 0;
}

/* ---- reader ---- */

static void cent_free(skv_cache_head *h)
{
    if (h->cent) {
        free(h->cent->mem);
        free(h->cent->bias);
        free(h->cent);
        h->cent = NULL;
    }
}

void skv_cache_free(skv_cache *c)
{
    if (!c)
        return;
    for (uint32_t l = 0; c->layers && l < c->pk.n_layers; l++) {
        if (c->layers[l] == c->empty)
            continue;
        for (uint32_t kh = 0; kh < c->pk.n_kv_heads; kh++) {
            skv_cache_head *h = &c->layers[l][kh];
            for (uint32_t b = 0; b < h->n_buckets; b++)
                free(h->owned[b]);
            free(h->owned);
            free(h->buckets);
            cent_free(h);
        }
        free(c->layers[l]);
    }
    free(c->layers);
    free(c->empty);
    if (c->q) {
        for (uint32_t l = 0; l < c->pk.n_layers; l++)
            free(c->q[l]);
        free(c->q);
    }
    free(c->tokens);
    skv_chunk_list_free(&c->extra);
    free(c);
}

typedef struct {
    skv_cache *c;
    int state;              /* 0 before TRHD, 1 header read, 2 PKHD read */
    uint64_t toks;          /* token ids read */
    uint32_t ql, qh;        /* next expected Q block: layer, head, row */
    uint64_t qrow;
    size_t tcap, qcap;      /* bytes allocated of tokens and of q[ql] so far */
    int have_pbkt;          /* a PBKT was read: key of the last one */
    uint32_t pl, ph, pw, ppart, pn, plast;
    uint64_t rel_bytes, rel_stored; /* of the layers a layer reader has released */
} rd;

/* Token t in a run of buckets of one width (its parts: disjoint, ascending
 * token ranges): 1 with *bi (bucket within the run) and *row set, or 0. */
static int run_find(const skv_bucket *b, uint32_t n, uint64_t t, uint32_t *bi, uint32_t *row)
{
    uint32_t lo = 0, hi = n;  /* parts [0, lo) start at or before t */
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (b[mid].idx[0] <= t)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return 0;
    const skv_bucket *p = &b[lo - 1];
    uint32_t a = 0, z = p->n;  /* first index >= t */
    while (a < z) {
        uint32_t mid = a + (z - a) / 2;
        if (p->idx[mid] < t)
            a = mid + 1;
        else
            z = mid;
    }
    if (a == p->n || p->idx[a] != t)
        return 0;
    *bi = lo - 1;
    *row = a;
    return 1;
}

static int add_bucket(skv_cache_head *h, const skv_bucket *b, void *mem)
{
    /* grow by powers of two */
    if ((h->n_buckets & (h->n_buckets - 1)) == 0) {
        size_t cap = h->n_buckets ? (size_t)h->n_buckets * 2 : 4;
        skv_bucket *nb = skv_realloc(h->buckets, cap * sizeof *nb);
        if (!nb)
            return SKV_ENOMEM;
        h->buckets = nb;
        void **no = skv_realloc(h->owned, cap * sizeof *no);
        if (!no)
            return SKV_ENOMEM;
        h->owned = no;
    }
    h->buckets[h->n_buckets] = *b;
    h->owned[h->n_buckets] = mem;
    h->n_buckets++;
    return 0;
}

static int read_pkhd(rd *r, const skv_chunk *ch)
{
    skv_cache *c = r->c;
    int rc = skv_pkhd_decode(ch, &c->pk);
    if (rc < 0)
        return rc;
    const skv_pkhd *p = &c->pk;
    if (p->n_layers != c->hdr.n_layers || p->n_kv_heads != c->hdr.n_kv_heads ||
        p->n_tokens != c->hdr.n_tokens || p->q.head_dim != c->hdr.head_dim)
        return skv_error(SKV_EFORMAT, "PKHD chunk at byte %llu: shape differs from the trace "
                         "header", (unsigned long long)ch->offset);
    if (p->fp16_bytes != skv_fp16_kv_bytes(p->n_layers, p->n_kv_heads, p->n_tokens,
                                           p->q.head_dim))
        return skv_error(SKV_EFORMAT, "PKHD chunk at byte %llu: fp16 byte count %llu is wrong",
                         (unsigned long long)ch->offset, (unsigned long long)p->fp16_bytes);
    /* A pointer per layer, all to one array of empty heads: a layer's own
     * records, its queries and its buckets are allocated as its chunks
     * arrive, so a header alone costs a few KiB whatever shape it declares. */
    c->layers = skv_calloc(p->n_layers, sizeof(skv_cache_head *));
    c->empty = skv_calloc(p->n_kv_heads, sizeof *c->empty);
    if (!c->layers || !c->empty)
        return SKV_ENOMEM;
    for (uint32_t l = 0; l < p->n_layers; l++)
        c->layers[l] = c->empty;
    if (!(c->hdr.flags & SKV_TRACE_NO_QUERIES)) {
        c->q = skv_calloc(p->n_layers, sizeof *c->q);
        if (!c->q)
            return SKV_ENOMEM;
    } else {
        r->ql = p->n_layers;  /* nothing to wait for */
    }
    c->stored_bytes += SKV_CHUNK_HEADER_LEN + ch->size + SKV_CHUNK_CRC_LEN;
    r->state = 2;
    return 0;
}

static int read_q(rd *r, const skv_chunk *ch)
{
    skv_cache *c = r->c;
    const skv_trace_hdr *h = &c->hdr;
    skv_tens t;
    int rc = skv_tens_decode(ch, &t);
    if (rc < 0)
        return rc;
    if (!c->q || r->ql >= h->n_layers)
        return skv_error(SKV_EFORMAT, "unexpected TENS chunk at byte %llu (%s)",
                         (unsigned long long)ch->offset,
                         c->q ? "after the last layer's queries" : "the cache has no queries");
    if (r->have_pbkt && r->pl >= r->ql)
        return skv_error(SKV_EFORMAT, "TENS chunk at byte %llu: queries of layer %u after its "
                         "buckets", (unsigned long long)ch->offset, r->ql);
    if (t.kind != SKV_TK_Q || t.layer != r->ql || t.head != r->qh || t.row0 != r->qrow ||
        t.rows == 0 || t.rows > h->n_tokens - r->qrow || t.cols != h->head_dim ||
        t.dtype != h->dtype)
        return skv_error(SKV_EFORMAT, "TENS chunk at byte %llu is %s layer %u head %u rows "
                         "%llu+%llu; expected Q layer %u head %u from row %llu (%u cols, %s)",
                         (unsigned long long)ch->offset, skv_tensor_kind_name(t.kind), t.layer,
                         t.head, (unsigned long long)t.row0, (unsigned long long)t.rows, r->ql,
                         r->qh, (unsigned long long)r->qrow, h->head_dim,
                         skv_dtype_name(h->dtype));
    size_t at = ((size_t)r->qh * h->n_tokens + r->qrow) * h->head_dim;
    size_t full = (size_t)h->n_heads * h->n_tokens * h->head_dim * sizeof(float);
    if ((rc = skv_grow((void **)&c->q[r->ql], &r->qcap, (at + (size_t)t.rows * h->head_dim) *
                       sizeof(float), full)) < 0)
        return rc;
    skv_tens_to_f32(&t, c->q[r->ql] + at);
    r->qrow += t.rows;
    if (r->qrow == h->n_tokens) {
        r->qrow = 0;
        if (++r->qh == h->n_heads) {
            r->qh = 0;
            r->ql++;
            r->qcap = 0;
        }
    }
    return 0;
}

/* A private 64-byte aligned copy of a chunk's payload (*mem: to free). */
static uint8_t *aligned_copy(const skv_chunk *ch, uint8_t **mem)
{
    if (!(*mem = skv_malloc((size_t)ch->raw_size + SKV_ALIGN)))
        return NULL;
    uint8_t *al = (uint8_t *)(((uintptr_t)*mem + SKV_ALIGN - 1) & ~(uintptr_t)(SKV_ALIGN - 1));
    memcpy(al, ch->data, (size_t)ch->raw_size);
    return al;
}

static int read_pbkt(rd *r, const skv_chunk *ch)
{
    skv_cache *c = r->c;
    const skv_pkhd *p = &c->pk;
    unsigned long long at = (unsigned long long)ch->offset;
    uint8_t *mem, *al = aligned_copy(ch, &mem);
    if (!al)
        return SKV_ENOMEM;
    skv_bucket b;
    int rc = skv_pbkt_decode(al, ch->raw_size, p->n_tokens, &b);
    if (rc < 0) {
        free(mem);
        return skv_error(rc, "PBKT chunk at byte %llu: %s", at, skv_errmsg());
    }
    if (b.layer >= p->n_layers || b.kv_head >= p->n_kv_heads) {
        free(mem);
        return skv_error(SKV_EFORMAT, "PBKT chunk at byte %llu: layer %u kv head %u out of "
                         "range", at, b.layer, b.kv_head);
    }
    if (b.head_dim != p->q.head_dim || b.k_group != p->q.k_group ||
        b.v_group != p->q.v_group || b.k_mode != p->q.k_mode || b.v_mode != p->q.v_mode ||
        b.k_tokens != p->q.k_tokens) {
        free(mem);
        return skv_error(SKV_EFORMAT, "PBKT chunk at byte %llu: quantizer settings differ "
                         "from the PKHD chunk's", at);
    }
    if ((rc = skv_pkhd_rot_match(&c->pk, &b)) < 0) {
        free(mem);
        return skv_error(rc, "PBKT chunk at byte %llu (layer %u kv head %u): %s", at, b.layer,
                         b.kv_head, skv_errmsg());
    }
    /* order: queries of this layer complete; (layer, head, width, part) increasing */
    uint32_t w = (uint32_t)skv_width_index(b.bits);
    const char *bad = NULL;
    if (b.layer >= r->ql && c->q)
        bad = "before the queries of its layer are complete";
    else if (r->have_pbkt && r->pl == b.layer && r->ph == b.kv_head && r->pw == w) {
        if (b.part != r->ppart + 1)
            bad = "part number out of sequence";
        else if (r->pn != skv_pbkt_max_tokens(&p->q, b.bits))
            bad = "follows a part that is not full";
        else if (b.idx[0] <= r->plast)
            bad = "token indices not ascending across parts";
    } else if (b.part != 0)
        bad = "first part of a bucket is not part 0";
    else if (r->have_pbkt && (b.layer < r->pl || (b.layer == r->pl && (b.kv_head < r->ph ||
             (b.kv_head == r->ph && w <= r->pw)))))
        bad = "out of order (layers, kv heads and widths must ascend)";
    if (bad) {
        free(mem);
        return skv_error(SKV_EFORMAT, "PBKT chunk at byte %llu (layer %u kv head %u %u-bit part "
                         "%u): %s", at, b.layer, b.kv_head, b.bits, b.part, bad);
    }
    /* no token in two buckets of the head: parts of one width ascend (checked
     * above), so each token is looked up in the runs of the earlier widths;
     * no per-token array, whatever n_tokens the header declares */
    if (c->layers[b.layer] == c->empty &&
        !(c->layers[b.layer] = skv_calloc(p->n_kv_heads, sizeof *c->empty))) {
        c->layers[b.layer] = c->empty;
        free(mem);
        return SKV_ENOMEM;
    }
    skv_cache_head *h = &c->layers[b.layer][b.kv_head];
    uint32_t run[SKV_NBITS + 1], nrun = 0, lim = 0;
    while (lim < h->n_buckets && h->buckets[lim].bits != b.bits)
        lim++;  /* buckets [0, lim) have smaller widths; the rest are parts of this one */
    for (uint32_t i = 0; i < lim; i++)
        if (i == 0 || h->buckets[i].bits != h->buckets[i - 1].bits)
            run[nrun++] = i;
    run[nrun] = lim;
    for (uint32_t i = 0; i < b.n; i++)
        for (uint32_t k = 0; k < nrun; k++) {
            uint32_t bi, row;
            if (run_find(h->buckets + run[k], run[k + 1] - run[k], b.idx[i], &bi, &row)) {
                uint32_t tok = b.idx[i];  /* b.idx points into mem */
                free(mem);
                return skv_error(SKV_EFORMAT, "PBKT chunk at byte %llu: token %u of layer %u "
                                 "kv head %u is already stored at %u bits", at, tok,
                                 b.layer, b.kv_head, h->buckets[run[k]].bits);
            }
        }
    if ((rc = add_bucket(h, &b, mem)) < 0) {
        free(mem);
        return rc;
    }
    h->n_stored += b.n;
    r->have_pbkt = 1;
    r->pl = b.layer;
    r->ph = b.kv_head;
    r->pw = w;
    r->ppart = b.part;
    r->pn = b.n;
    r->plast = b.idx[b.n - 1];
    c->stored_bytes += SKV_CHUNK_HEADER_LEN + ch->size + SKV_CHUNK_CRC_LEN;
    return 0;
}

/* CNTR: after the PBKT chunks of its (layer, kv head), at most one per head
 * (key width slot SKV_NBITS, above every bucket's). */
static int read_cntr(rd *r, const skv_chunk *ch)
{
    skv_cache *c = r->c;
    const skv_pkhd *p = &c->pk;
    unsigned long long at = (unsigned long long)ch->offset;
    uint8_t *mem, *al = aligned_copy(ch, &mem);
    if (!al)
        return SKV_ENOMEM;
    skv_bucket b;
    const uint32_t *cnt = NULL;
    const char *bad = NULL;
    int rc = skv_cntr_decode(al, ch->raw_size, p->n_tokens, &b, &cnt);
    if (rc < 0) {
        free(mem);
        return skv_error(rc, "CNTR chunk at byte %llu: %s", at, skv_errmsg());
    }
    if (b.layer >= p->n_layers || b.kv_head >= p->n_kv_heads)
        bad = "layer or kv head out of range";
    else if (b.head_dim != p->q.head_dim || b.k_group != p->q.k_group ||
             b.v_group != p->q.v_group || b.k_mode != p->q.k_mode || b.v_mode != p->q.v_mode)
        bad = "quantizer settings differ from the PKHD chunk's";
    else if (p->q.rotate)
        bad = "centroids in a rotated cache (PKHD rotation flags set)";
    else if (b.layer >= r->ql && c->q)
        bad = "before the queries of its layer are complete";
    else if (r->have_pbkt && (b.layer < r->pl || (b.layer == r->pl && (b.kv_head < r->ph ||
             (b.kv_head == r->ph && r->pw >= SKV_NBITS)))))
        bad = "out of order (after the buckets of its head, once per head, heads ascending)";
    if (!bad && c->layers[b.layer] == c->empty &&
        !(c->layers[b.layer] = skv_calloc(p->n_kv_heads, sizeof *c->empty))) {
        c->layers[b.layer] = c->empty;
        free(mem);
        return SKV_ENOMEM;
    }
    /* its buckets are all read (they come first): a last member must be
     * one of the head's evicted tokens, found by the sparse lookup */
    const skv_cache_head *h = bad ? NULL : &c->layers[b.layer][b.kv_head];
    uint64_t members = 0;
    for (uint32_t i = 0; !bad && i < b.n; i++) {
        members += cnt[i];
        if (skv_cache_width(h, b.idx[i]))
            bad = "a centroid's last member is a stored token";
    }
    if (!bad && members > p->n_tokens - h->n_stored)
        bad = "more members than the head's evicted tokens";
    if (bad) {
        free(mem);
        return skv_error(SKV_EFORMAT, "CNTR chunk at byte %llu (layer %u kv head %u): %s", at,
                         b.layer, b.kv_head, bad);
    }
    skv_cache_cent *ce = skv_calloc(1, sizeof *ce);
    float *bias = skv_malloc((size_t)b.n * sizeof *bias);
    if (!ce || !bias) {
        free(ce);
        free(bias);
        free(mem);
        return SKV_ENOMEM;
    }
    for (uint32_t i = 0; i < b.n; i++)
        bias[i] = logf((float)cnt[i]);
    ce->rows = b;
    ce->cnt = cnt;
    ce->bias = bias;
    ce->mem = mem;
    c->layers[b.layer][b.kv_head].cent = ce;
    c->n_centroids += b.n;
    r->have_pbkt = 1;
    r->pl = b.layer;
    r->ph = b.kv_head;
    r->pw = SKV_NBITS;
    c->stored_bytes += SKV_CHUNK_HEADER_LEN + ch->size + SKV_CHUNK_CRC_LEN;
    return 0;
}

static int read_finish(rd *r)
{
    skv_cache *c = r->c;
    const skv_pkhd *p = &c->pk;
    if (r->state < 2)
        return skv_error(SKV_EFORMAT, r->state ? "no packed-cache header (PKHD chunk)"
                                               : "no trace header (TRHD chunk)");
    if (c->q && r->ql < p->n_layers)
        return skv_error(SKV_EFORMAT, "stream ends inside the queries (layer %u head %u row "
                         "%llu)", r->ql, r->qh, (unsigned long long)r->qrow);
    if (r->toks < ((c->hdr.flags & SKV_TRACE_HAS_TOKENS) ? c->hdr.n_tokens : 0))
        return skv_error(SKV_EFORMAT, "stream ends inside the token ids (%llu of %llu)",
                         (unsigned long long)r->toks, (unsigned long long)c->hdr.n_tokens);
    uint64_t bytes = skv_pkhd_file_bytes() + r->rel_bytes, stored = r->rel_stored;
    for (size_t i = 0; i < (size_t)p->n_layers * p->n_kv_heads; i++) {
        if (c->layers[i / p->n_kv_heads] == c->empty)
            continue;  /* no bucket in the layer */
        const skv_cache_head *h = &c->layers[i / p->n_kv_heads][i % p->n_kv_heads];
        uint64_t cnt[SKV_NBITS] = {0};
        for (uint32_t b = 0; b < h->n_buckets; b++)
            cnt[skv_width_index(h->buckets[b].bits)] += h->buckets[b].n;
        for (int w = 1; w < SKV_NBITS; w++)
            bytes += skv_bucket_file_bytes(&p->q, skv_bit_widths[w], cnt[w]);
        if (h->cent)
            bytes += skv_cntr_file_bytes(&p->q, h->cent->rows.bits, h->cent->rows.n);
        stored += h->n_stored;
    }
    if (stored != p->n_stored)
        return skv_error(SKV_EFORMAT, "the buckets hold %llu rows, the PKHD chunk says %llu "
                         "(missing or extra PBKT chunks)", (unsigned long long)stored,
                         (unsigned long long)p->n_stored);
    if (bytes != p->cache_bytes)
        return skv_error(SKV_EFORMAT, "the buckets and centroids take %llu bytes, the PKHD "
                         "chunk says %llu",
                         (unsigned long long)bytes, (unsigned long long)p->cache_bytes);
    return 0;
}

/* The allocation chunks a cache carries are checked as skv-quant checks them,
 * though only their text is used after loading. */
static int check_alloc_chunks(const skv_trace_hdr *h, const skv_chunk_list *extra,
                              const char *what)
{
    const skv_raw_chunk *alhd = NULL;
    size_t nalhd = 0, naloc = 0;
    for (size_t i = 0; i < extra->n; i++) {
        if (!memcmp(extra->v[i].type, SKV_T_ALHD, 4) && !nalhd++)
            alhd = &extra->v[i];
        naloc += !memcmp(extra->v[i].type, SKV_T_ALOC, 4);
    }
    int rc = 0;
    skv_cache_plan plan;
    if (nalhd == 1 && naloc == 0 && what[0]) {
        /* a cache keeps the ALHD alone by default (skv-quant without
         * --keep-alloc): the header is checked, there are no widths */
        skv_alloc_hdr a;
        rc = read_alhd(alhd, h, &a);
    } else if (nalhd || naloc) {
        if ((rc = skv_cache_plan_from_chunks(&plan, h, extra)) == 0)
            skv_cache_plan_free(&plan);
    }
    if (rc < 0 && what[0])
        return skv_error(rc, "%s: %s", what, skv_errmsg());
    return rc;
}

static int read_chunk(rd *r, const skv_chunk *ch)
{
    skv_cache *c = r->c;
    unsigned long long at = (unsigned long long)ch->offset;
    int rc;
    if (skv_chunk_is(ch, SKV_T_TRHD)) {
        if (r->state != 0)
            return skv_error(SKV_EFORMAT, "second TRHD chunk at byte %llu", at);
        if ((rc = skv_trhd_decode(ch, &c->hdr)) < 0)
            return rc;
        if (!(c->hdr.flags & SKV_TRACE_PACKED))
            return skv_error(SKV_EFORMAT, "this stream is a plain trace, not a packed cache "
                             "(make one with skv-quant)");
        r->state = 1;
        return 0;
    }
    if (r->state == 0) {
        if (!skv_chunk_is_critical(ch->type))
            return skv_chunk_list_add(&c->extra, ch);
        return skv_error(SKV_EFORMAT, "%s chunk at byte %llu before the trace header",
                         ch->type, at);
    }
    uint64_t want_toks = (c->hdr.flags & SKV_TRACE_HAS_TOKENS) ? c->hdr.n_tokens : 0;
    if (skv_chunk_is(ch, SKV_T_TOKS)) {
        if (r->state != 1 || r->toks >= want_toks)
            return skv_error(SKV_EFORMAT, "unexpected TOKS chunk at byte %llu", at);
        if (ch->raw_size < 16)
            return skv_error(SKV_EFORMAT, "TOKS chunk at byte %llu too short", at);
        uint64_t t0 = skv_get64(ch->data), n = skv_get64(ch->data + 8);
        if (t0 != r->toks || n == 0 || n > want_toks - r->toks || 16 + n * 4 != ch->raw_size)
            return skv_error(SKV_EFORMAT, "TOKS chunk at byte %llu: tokens %llu+%llu do not "
                             "continue at %llu", at, (unsigned long long)t0,
                             (unsigned long long)n, (unsigned long long)r->toks);
        if ((rc = skv_grow((void **)&c->tokens, &r->tcap, (size_t)(r->toks + n) * 4,
                           (size_t)want_toks * 4)) < 0)
            return rc;
        memcpy(c->tokens + r->toks, ch->data + 16, n * 4);
        r->toks += n;
        return 0;
    }
    if (r->state == 1 && r->toks < want_toks)
        return skv_error(SKV_EFORMAT, "%s chunk at byte %llu inside the token ids", ch->type, at);
    if (skv_chunk_is(ch, SKV_T_ALHD) || skv_chunk_is(ch, SKV_T_ALOC)) {
        if (r->state != 1)
            return skv_error(SKV_EFORMAT, "%s chunk at byte %llu after the packed-cache "
                             "header", ch->type, at);
        return skv_chunk_list_add(&c->extra, ch);
    }
    if (skv_chunk_is(ch, SKV_T_PKHD)) {
        if (r->state != 1)
            return skv_error(SKV_EFORMAT, "second PKHD chunk at byte %llu", at);
        if ((rc = check_alloc_chunks(&c->hdr, &c->extra, "the cache's allocation")) < 0)
            return rc;
        return read_pkhd(r, ch);
    }
    if (skv_chunk_is(ch, SKV_T_TENS) || skv_chunk_is(ch, SKV_T_PBKT) ||
        skv_chunk_is(ch, SKV_T_CNTR)) {
        if (r->state != 2)
            return skv_error(SKV_EFORMAT, "%s chunk at byte %llu before the packed-cache header "
                             "(PKHD)", ch->type, at);
        return skv_chunk_is(ch, SKV_T_TENS)   ? read_q(r, ch)
               : skv_chunk_is(ch, SKV_T_PBKT) ? read_pbkt(r, ch)
                                              : read_cntr(r, ch);
    }
    if (!skv_chunk_is_critical(ch->type))
        return skv_chunk_list_add(&c->extra, ch);
    return skv_error(SKV_EUNSUP, "unknown critical chunk %s at byte %llu", ch->type, at);
}

int skv_cache_read(skv_stream *s, skv_cache **out)
{
    *out = NULL;
    rd r;
    memset(&r, 0, sizeof r);
    r.c = skv_calloc(1, sizeof *r.c);
    if (!r.c)
        return SKV_ENOMEM;
    int rc;
    skv_chunk ch;
    while ((rc = skv_read(s, &ch)) > 0)
        if ((rc = read_chunk(&r, &ch)) < 0)
            break;
    if (rc == 0)
        rc = read_finish(&r);
    if (rc < 0) {
        skv_cache_free(r.c);
        return rc;
    }
    *out = r.c;
    return 0;
}

int skv_cache_read_after(skv_stream *s, const skv_chunk *first, skv_cache **out)
{
    *out = NULL;
    rd r;
    memset(&r, 0, sizeof r);
    r.c = skv_calloc(1, sizeof *r.c);
    if (!r.c)
        return SKV_ENOMEM;
    int rc = read_chunk(&r, first);
    skv_chunk ch;
    if (rc == 0) {
        while ((rc = skv_read(s, &ch)) > 0)
            if ((rc = read_chunk(&r, &ch)) < 0)
                break;
    }
    if (rc == 0)
        rc = read_finish(&r);
    if (rc < 0) {
        skv_cache_free(r.c);
        return rc;
    }
    *out = r.c;
    return 0;
}

int skv_cache_load(const char *path, skv_cache **out)
{
    *out = NULL;
    skv_stream *s = skv_open_read(path);
    if (!s)
        return SKV_EIO;
    int rc = skv_cache_read(s, out);
    skv_close(s);
    return rc;
}

/* ---- one layer at a time ---- */

struct skv_cache_reader {
    skv_stream *s;
    rd r;
    uint32_t next;          /* next layer to hand out */
    uint32_t avail;         /* layers below this are complete */
    int held, end;
    uint32_t held_layer;
};

/* Free a layer's buckets and queries, counting them for the PKHD totals. */
static void release_layer(rd *r, uint32_t l)
{
    skv_cache *c = r->c;
    const skv_pkhd *p = &c->pk;
    if (c->layers && c->layers[l] && c->layers[l] != c->empty) {
        for (uint32_t kh = 0; kh < p->n_kv_heads; kh++) {
            skv_cache_head *h = &c->layers[l][kh];
            uint64_t cnt[SKV_NBITS] = {0};
            for (uint32_t b = 0; b < h->n_buckets; b++) {
                cnt[skv_width_index(h->buckets[b].bits)] += h->buckets[b].n;
                free(h->owned[b]);
            }
            for (int w = 1; w < SKV_NBITS; w++)
                r->rel_bytes += skv_bucket_file_bytes(&p->q, skv_bit_widths[w], cnt[w]);
            if (h->cent)
                r->rel_bytes += skv_cntr_file_bytes(&p->q, h->cent->rows.bits, h->cent->rows.n);
            r->rel_stored += h->n_stored;
            free(h->owned);
            free(h->buckets);
            cent_free(h);
        }
        free(c->layers[l]);
        c->layers[l] = c->empty;
    }
    if (c->q) {
        free(c->q[l]);
        c->q[l] = NULL;
    }
}

skv_cache_reader *skv_cache_reader_open(skv_stream *s, const skv_chunk *first)
{
    skv_cache_reader *cr = skv_calloc(1, sizeof *cr);
    if (!cr || !(cr->r.c = skv_calloc(1, sizeof *cr->r.c))) {
        free(cr);
        skv_close(s);
        return NULL;
    }
    cr->s = s;
    int rc = first ? read_chunk(&cr->r, first) : 0;
    while (rc == 0 && cr->r.state < 2) {
        skv_chunk ch;
        if ((rc = skv_read(s, &ch)) == 0)
            rc = read_finish(&cr->r); /* says which header is missing */
        else if (rc > 0)
            rc = read_chunk(&cr->r, &ch);
    }
    if (rc < 0) {
        skv_cache_reader_close(cr);
        return NULL;
    }
    return cr;
}

const skv_cache *skv_cache_reader_cache(const skv_cache_reader *cr)
{
    return cr->r.c;
}

int skv_cache_reader_next(skv_cache_reader *cr, uint32_t *layer)
{
    rd *r = &cr->r;
    skv_cache *c = r->c;
    const uint32_t L = c->pk.n_layers;
    int rc;
    if (cr->held) {
        release_layer(r, cr->held_layer);
        cr->held = 0;
    }
    while (cr->next >= cr->avail) {
        if (cr->end)
            return 0;
        skv_chunk ch;
        if ((rc = skv_read(cr->s, &ch)) < 0)
            return rc;
        if (rc == 0) {
            if ((rc = read_finish(r)) < 0)
                return rc;
            cr->avail = L;
            cr->end = 1;
            continue;
        }
        if (!skv_chunk_is_critical(ch.type))
            continue;
        /* a chunk of layer l means every layer before l is complete */
        uint32_t touched = skv_chunk_is(&ch, SKV_T_TENS) ? r->ql : 0;
        if ((rc = read_chunk(r, &ch)) < 0)
            return rc;
        if (skv_chunk_is(&ch, SKV_T_PBKT) || skv_chunk_is(&ch, SKV_T_CNTR))
            touched = r->pl;
        if (touched > cr->avail)
            cr->avail = touched < L ? touched : L;
    }
    uint32_t l = cr->next++;
    cr->held = 1;
    cr->held_layer = l;
    *layer = l;
    return 1;
}

void skv_cache_reader_close(skv_cache_reader *cr)
{
    if (!cr)
        return;
    skv_close(cr->s);
    skv_cache_free(cr->r.c);
    free(cr);
}

int skv_cache_find(const skv_cache_head *h, uint64_t t, const skv_bucket **bp, uint32_t *row)
{
    for (uint32_t i = 0, j; i < h->n_buckets; i = j) {
        for (j = i + 1; j < h->n_buckets && h->buckets[j].bits == h->buckets[i].bits; j++)
            ;
        uint32_t bi;
        if (run_find(h->buckets + i, j - i, t, &bi, row)) {
            *bp = &h->buckets[i + bi];
            return 1;
        }
    }
    return 0;
}

uint32_t skv_cache_width(const skv_cache_head *h, uint64_t t)
{
    const skv_bucket *b;
    uint32_t row;
    return skv_cache_find(h, t, &b, &row) ? b->bits : 0;
}

void skv_cache_head_widths(const skv_cache_head *h, uint64_t n_tokens, uint8_t *out)
{
    memset(out, 0, (size_t)n_tokens);
    for (uint32_t b = 0; b < h->n_buckets; b++)
        for (uint32_t i = 0; i < h->buckets[b].n; i++)
            out[h->buckets[b].idx[i]] = (uint8_t)h->buckets[b].bits;
}

void skv_cache_dequantize_head(const skv_cache *c, uint32_t layer, uint32_t kv_head, float *k,
                               float *v)
{
    const skv_cache_head *h = skv_cache_head_at(c, layer, kv_head);
    size_t n = (size_t)c->pk.n_tokens * c->pk.q.head_dim;
    if (k)
        memset(k, 0, n * sizeof(float));
    if (v)
        memset(v, 0, n * sizeof(float));
    for (uint32_t b = 0; b < h->n_buckets; b++)
        skv_bucket_dequantize(&h->buckets[b], k, v);
    /* rotated rows back to the model's basis (the trace's keys and values) */
    const uint32_t rot = c->pk.q.rotate, d = c->pk.q.head_dim;
    if (!rot || !h->n_buckets)
        return;
    float sign[SKV_MAX_HEAD_DIM];
    skv_rot_signs(h->buckets[0].rot_seed, (uint64_t)layer * c->pk.n_kv_heads + kv_head, d, sign);
    for (uint32_t b = 0; b < h->n_buckets; b++)
        for (uint32_t i = 0; i < h->buckets[b].n; i++) {
            size_t t = h->buckets[b].idx[i];
            if (k && (rot & SKV_ROT_KEYS))
                skv_rot_undo(sign, k + t * d, k + t * d, d);
            if (v && (rot & SKV_ROT_VALUES))
                skv_rot_undo(sign, v + t * d, v + t * d, d);
        }
}

int skv_cache_write_trace(skv_stream *s, const skv_cache *c)
{
    if (c->n_centroids)
        return skv_error(SKV_EFORMAT, "the cache holds %llu centroids of merged tokens, which "
                         "a trace cannot hold", (unsigned long long)c->n_centroids);
    if (!c->q)
        return skv_error(SKV_EFORMAT, "the cache has no queries, and a trace needs them "
                         "(skv-quant keeps them only with --keep-queries; give the trace with "
                         "--queries TRACE)");
    skv_trace_hdr h = c->hdr;
    h.flags &= ~(SKV_TRACE_PACKED | SKV_TRACE_NO_QUERIES);
    h.dtype = SKV_F32;
    int rc;
    if ((rc = skv_trhd_write(s, &h)) < 0)
        return rc;
    if ((h.flags & SKV_TRACE_HAS_TOKENS) && (rc = skv_toks_write(s, 0, h.n_tokens, c->tokens)) < 0)
        return rc;
    const size_t T = (size_t)h.n_tokens, d = h.head_dim;
    float *k = skv_malloc(T * d * sizeof(float)), *v = skv_malloc(T * d * sizeof(float));
    if (!k || !v) {
        free(k);
        free(v);
        return SKV_ENOMEM;
    }
    for (uint32_t l = 0; l < h.n_layers && rc == 0; l++) {
        for (uint32_t i = 0; i < h.n_heads && rc == 0; i++)
            rc = skv_tens_write(s, SKV_TK_Q, SKV_F32, l, i, 0, T, (uint32_t)d, c->q[l] + i * T * d);
        /* K of every kv head, then V of every kv head (canonical trace order) */
        for (int kind = SKV_TK_K; kind <= SKV_TK_V && rc == 0; kind++)
            for (uint32_t kh = 0; kh < h.n_kv_heads && rc == 0; kh++) {
                skv_cache_dequantize_head(c, l, kh, kind == SKV_TK_K ? k : NULL,
                                          kind == SKV_TK_V ? v : NULL);
                rc = skv_tens_write(s, (uint32_t)kind, SKV_F32, l, kh, 0, T, (uint32_t)d,
                                    kind == SKV_TK_K ? k : v);
            }
    }
    free(k);
    free(v);
    if (rc < 0)
        return rc;
    return skv_chunk_list_write(s, &c->extra);
}

int skv_cache_dequantize_stream(skv_stream *in, const char *queries, skv_stream *out,
                                int *qbad)
{
    int qb = 0, rc = 0;
    if (!qbad)
        qbad = &qb;
    *qbad = 0;
    skv_cache_reader *cr = skv_cache_reader_open(in, NULL);
    if (!cr)
        return SKV_EFORMAT;
    skv_cache *c = cr->r.c;
    skv_trace_reader *qr = NULL;
    skv_layer Q = {0};
    float *k = NULL, *v = NULL;
    if (queries && !(qr = skv_cache_queries_open(c, queries))) {
        *qbad = 1;
        rc = SKV_EFORMAT;
        goto done;
    }
    /* the allocation says so before any layer is read (the ALHD was checked) */
    for (size_t i = 0; i < c->extra.n; i++)
        if (!memcmp(c->extra.v[i].type, SKV_T_ALHD, 4) && c->extra.v[i].size >= 32 &&
            (skv_get32(c->extra.v[i].data + 28) & 2u)) {
            rc = skv_error(SKV_EFORMAT, "the cache's allocation merges evicted tokens into "
                           "centroids, which a trace cannot hold");
            goto done;
        }
    if (!qr && !c->q) {
        rc = skv_error(SKV_EFORMAT, "the cache has no queries, and a trace needs them "
                       "(skv-quant keeps them only with --keep-queries; give the trace with "
                       "--queries TRACE)");
        goto done;
    }
    skv_trace_hdr h = c->hdr;
    h.flags &= ~(SKV_TRACE_PACKED | SKV_TRACE_NO_QUERIES);
    h.dtype = SKV_F32;
    if ((rc = skv_trhd_write(out, &h)) < 0 ||
        ((h.flags & SKV_TRACE_HAS_TOKENS) &&
         (rc = skv_toks_write(out, 0, h.n_tokens, c->tokens)) < 0))
        goto done;
    const size_t T = (size_t)h.n_tokens, d = h.head_dim;
    uint32_t l;
    while ((rc = skv_cache_reader_next(cr, &l)) == 1) {
        if (c->n_centroids) {
            rc = skv_error(SKV_EFORMAT, "the cache holds centroids of merged tokens (layer %u), "
                           "which a trace cannot hold", l);
            goto done;
        }
        /* with the first layer read: never for a header alone */
        if (!k && (!(k = skv_malloc(T * d * sizeof(float))) ||
                   !(v = skv_malloc(T * d * sizeof(float))))) {
            rc = SKV_ENOMEM;
            goto done;
        }
        const float *q = c->q ? c->q[l] : NULL;
        if (qr) {
            if ((rc = skv_trace_next_layer(qr, &Q)) <= 0) {
                *qbad = 1;
                if (rc == 0)
                    rc = skv_error(SKV_EFORMAT, "the trace ends before layer %u", l);
                goto done;
            }
            q = Q.q;
        }
        for (uint32_t i = 0; i < h.n_heads && rc >= 0; i++)
            rc = skv_tens_write(out, SKV_TK_Q, SKV_F32, l, i, 0, T, (uint32_t)d, q + i * T * d);
        /* K of every kv head, then V of every kv head (canonical trace order) */
        for (int kind = SKV_TK_K; kind <= SKV_TK_V && rc >= 0; kind++)
            for (uint32_t kh = 0; kh < h.n_kv_heads && rc >= 0; kh++) {
                skv_cache_dequantize_head(c, l, kh, kind == SKV_TK_K ? k : NULL,
                                          kind == SKV_TK_V ? v : NULL);
                rc = skv_tens_write(out, (uint32_t)kind, SKV_F32, l, kh, 0, T, (uint32_t)d,
                                    kind == SKV_TK_K ? k : v);
            }
        if (rc < 0)
            goto done;
    }
    if (rc < 0)
        goto done;
    if (qr && (rc = skv_trace_reader_finish(qr)) < 0) {
        *qbad = 1;
        goto done;
    }
    /* an ALHD without its ALOC chunks would make the trace unusable for
     * skv-quant: the allocation goes along only when it is whole */
    int aloc = 0;
    for (size_t i = 0; i < c->extra.n; i++)
        aloc |= !memcmp(c->extra.v[i].type, SKV_T_ALOC, 4);
    for (size_t i = 0; i < c->extra.n && rc >= 0; i++)
        if (aloc || memcmp(c->extra.v[i].type, SKV_T_ALHD, 4) != 0)
            rc = skv_write(out, c->extra.v[i].type, c->extra.v[i].data, c->extra.v[i].size);
done:
    free(k);
    free(v);
    skv_layer_free(&Q);
    skv_trace_reader_close(qr);
    skv_cache_reader_close(cr);
    return rc < 0 ? rc : 0;
}
