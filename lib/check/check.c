/* check.c -- the conformance checker of smartkv(5), one chunk at a time. */
#include "smartkv_check.h"

#include "smartkv_alloc.h"
#include "smartkv_attend.h"
#include "smartkv_cache.h"
#include "smartkv_pack.h"

#include <stdlib.h>
#include <string.h>

enum phase {
    P_START,      /* before TRHD / ATHD */
    P_TOKS,       /* token ids */
    P_LAYERS,     /* trace: Q, K, V blocks of each layer */
    P_TAIL,       /* trace: after the last layer (allocation, ancillary) */
    P_PREPK,      /* packed: allocation chunks before PKHD */
    P_PACKED,     /* packed: Q blocks and buckets */
    P_ATTN,       /* attention outputs */
};

struct skv_checker {
    enum phase phase;
    enum skv_stream_kind kind;
    skv_trace_hdr h;
    uint64_t toks;                 /* token ids seen */
    /* next TENS expected: layer, kind index (0 Q, 1 K, 2 V; attention 0 OUT,
     * 1 PROB), head, row */
    uint32_t layer, ki, head;
    uint64_t row;
    skv_alloc_seq alloc;
    /* packed cache */
    skv_pkhd pk;
    int have_pbkt;
    uint32_t pl, ph, pw, ppart, pn, plast;
    uint64_t stored, bytes;        /* rows and uncompressed file bytes of PBKT chunks */
    uint32_t *set;                 /* token indices of the current head, as read: one
                                      ascending run per width */
    size_t nset, set_cap;          /* entries; bytes allocated */
    size_t run[SKV_NBITS + 1];     /* where each width's run starts in `set` */
    uint32_t nrun;
    /* attention outputs */
    skv_athd a;
    int have_athd;
};

skv_checker *skv_checker_new(void)
{
    return skv_calloc(1, sizeof(skv_checker));
}

void skv_checker_free(skv_checker *k)
{
    if (!k)
        return;
    free(k->set);
    skv_athd_free(&k->a);
    free(k);
}

enum skv_stream_kind skv_check_kind(const skv_checker *k) { return k->kind; }

const skv_trace_hdr *skv_check_trace_hdr(const skv_checker *k)
{
    return k->kind == SKV_KIND_TRACE || k->kind == SKV_KIND_PACKED ? &k->h : NULL;
}

static int is(const skv_chunk *c, const char *t) { return skv_chunk_is(c, t); }

static int known_critical(const skv_chunk *c)
{
    static const char *const reg[] = {SKV_T_HEAD, SKV_T_DONE, SKV_T_TRHD, SKV_T_TOKS,
                                      SKV_T_TENS, SKV_T_ALHD, SKV_T_ALOC, SKV_T_PKHD,
                                      SKV_T_PBKT, SKV_T_ATHD, SKV_T_CNTR};
    for (size_t i = 0; i < sizeof reg / sizeof reg[0]; i++)
        if (is(c, reg[i]))
            return 1;
    return 0;
}

static int misplaced(const skv_chunk *c, const char *where)
{
    return skv_error(SKV_EFORMAT, "%s chunk at byte %llu %s", c->type,
                     (unsigned long long)c->offset, where);
}

/* The phase after the header and token ids. */
static enum phase after_tokens(const skv_checker *k)
{
    return k->kind == SKV_KIND_PACKED ? P_PREPK : P_LAYERS;
}

static int on_trhd(skv_checker *k, const skv_chunk *c)
{
    int rc = skv_trhd_decode(c, &k->h);
    if (rc < 0)
        return rc;
    if ((k->h.flags & SKV_TRACE_NO_QUERIES) && !(k->h.flags & SKV_TRACE_PACKED))
        return skv_error(SKV_EFORMAT, "TRHD chunk at byte %llu: flag 0x8 (queries dropped) "
                         "without 0x4 (packed)", (unsigned long long)c->offset);
    k->kind = (k->h.flags & SKV_TRACE_PACKED) ? SKV_KIND_PACKED : SKV_KIND_TRACE;
    k->phase = (k->h.flags & SKV_TRACE_HAS_TOKENS) ? P_TOKS : after_tokens(k);
    return 0;
}

static int on_toks(skv_checker *k, const skv_chunk *c)
{
    unsigned long long at = (unsigned long long)c->offset;
    if (c->raw_size < 16)
        return skv_error(SKV_EFORMAT, "TOKS chunk at byte %llu too short", at);
    uint64_t t0 = skv_get64(c->data), n = skv_get64(c->data + 8);
    if (t0 != k->toks || n == 0 || n > k->h.n_tokens - k->toks || 16 + n * 4 != c->raw_size)
        return skv_error(SKV_EFORMAT, "TOKS chunk at byte %llu: tokens %llu+%llu in %llu bytes "
                         "do not continue at %llu of %llu", at, (unsigned long long)t0,
                         (unsigned long long)n, (unsigned long long)c->raw_size,
                         (unsigned long long)k->toks, (unsigned long long)k->h.n_tokens);
    k->toks += n;
    if (k->toks == k->h.n_tokens)
        k->phase = after_tokens(k);
    return 0;
}

/* A trace or packed-cache TENS block: exactly the next expected one. */
static int on_tens(skv_checker *k, const skv_chunk *c)
{
    static const uint32_t kinds[3] = {SKV_TK_Q, SKV_TK_K, SKV_TK_V};
    const skv_trace_hdr *h = &k->h;
    skv_tens t;
    int rc = skv_tens_decode(c, &t);
    if (rc < 0)
        return rc;
    if (t.kind != kinds[k->ki] || t.layer != k->layer || t.head != k->head || t.row0 != k->row ||
        t.rows == 0 || t.rows > h->n_tokens - k->row || t.cols != h->head_dim ||
        t.dtype != h->dtype)
        return skv_error(SKV_EFORMAT, "TENS chunk at byte %llu is %s layer %u head %u rows "
                         "%llu+%llu (%u cols, %s); expected %s layer %u head %u from row %llu "
                         "(%u cols, %s)", (unsigned long long)c->offset,
                         skv_tensor_kind_name(t.kind), t.layer, t.head,
                         (unsigned long long)t.row0, (unsigned long long)t.rows, t.cols,
                         skv_dtype_name(t.dtype), skv_tensor_kind_name(kinds[k->ki]), k->layer,
                         k->head, (unsigned long long)k->row, h->head_dim,
                         skv_dtype_name(h->dtype));
    k->row += t.rows;
    if (k->row < h->n_tokens)
        return 0;
    k->row = 0;
    if (++k->head < (k->ki ? h->n_kv_heads : h->n_heads))
        return 0;
    k->head = 0;
    /* a packed cache has only the Q blocks */
    if (k->kind == SKV_KIND_TRACE && ++k->ki < 3)
        return 0;
    k->ki = 0;
    if (++k->layer == h->n_layers && k->kind == SKV_KIND_TRACE)
        k->phase = P_TAIL;
    return 0;
}

static int on_pkhd(skv_checker *k, const skv_chunk *c)
{
    /* a cache carries its allocation whole, or the ALHD alone (the default
     * of skv-quant, for the label) */
    int rc = k->alloc.have_hdr && k->alloc.next == 0 ? 0 : skv_alloc_seq_end(&k->alloc);
    if (rc < 0)
        return rc;
    if ((rc = skv_pkhd_decode(c, &k->pk)) < 0)
        return rc;
    const skv_pkhd *p = &k->pk;
    if (p->n_layers != k->h.n_layers || p->n_kv_heads != k->h.n_kv_heads ||
        p->n_tokens != k->h.n_tokens || p->q.head_dim != k->h.head_dim)
        return skv_error(SKV_EFORMAT, "PKHD chunk at byte %llu: shape differs from the trace "
                         "header", (unsigned long long)c->offset);
    if (p->fp16_bytes != skv_fp16_kv_bytes(p->n_layers, p->n_kv_heads, p->n_tokens,
                                           p->q.head_dim))
        return skv_error(SKV_EFORMAT, "PKHD chunk at byte %llu: fp16 byte count %llu is wrong",
                         (unsigned long long)c->offset, (unsigned long long)p->fp16_bytes);
    k->phase = P_PACKED;
    if (k->h.flags & SKV_TRACE_NO_QUERIES)
        k->layer = k->h.n_layers;  /* no queries to wait for */
    return 0;
}

/* Is t in the ascending run v[0..n)? */
static int run_has(const uint32_t *v, size_t n, uint32_t t)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v[mid] < t)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && v[lo] == t;
}

static int on_pbkt(skv_checker *k, const skv_chunk *c)
{
    const skv_pkhd *p = &k->pk;
    unsigned long long at = (unsigned long long)c->offset;
    skv_bucket b;
    int rc = skv_pbkt_decode(c->data, c->raw_size, p->n_tokens, &b);
    if (rc < 0)
        return skv_error(rc, "PBKT chunk at byte %llu: %s", at, skv_errmsg());
    if (b.layer >= p->n_layers || b.kv_head >= p->n_kv_heads)
        return skv_error(SKV_EFORMAT, "PBKT chunk at byte %llu: layer %u kv head %u out of "
                         "range", at, b.layer, b.kv_head);
    if (b.head_dim != p->q.head_dim || b.k_group != p->q.k_group || b.v_group != p->q.v_group ||
        b.k_mode != p->q.k_mode || b.v_mode != p->q.v_mode || b.k_tokens != p->q.k_tokens)
        return skv_error(SKV_EFORMAT, "PBKT chunk at byte %llu: quantizer settings differ "
                         "from the PKHD chunk's", at);
    if ((rc = skv_pkhd_rot_match(&k->pk, &b)) < 0)
        return skv_error(rc, "PBKT chunk at byte %llu (layer %u kv head %u): %s", at, b.layer,
                         b.kv_head, skv_errmsg());
    uint32_t w = (uint32_t)skv_width_index(b.bits);
    int same_head = k->have_pbkt && k->pl == b.layer && k->ph == b.kv_head;
    const char *bad = NULL;
    if (b.layer >= k->layer)
        bad = "before the queries of its layer are complete";
    else if (same_head && k->pw == w) {
        if (b.part != k->ppart + 1)
            bad = "part number out of sequence";
        else if (k->pn != skv_pbkt_max_tokens(&p->q, b.bits))
            bad = "follows a part that is not full";
        else if (b.idx[0] <= k->plast)
            bad = "token indices not ascending across parts";
    } else if (b.part != 0)
        bad = "first part of a bucket is not part 0";
    else if (k->have_pbkt && (b.layer < k->pl || (b.layer == k->pl && (b.kv_head < k->ph ||
             (b.kv_head == k->ph && w <= k->pw)))))
        bad = "out of order (layers, kv heads and widths must ascend)";
    if (bad)
        return skv_error(SKV_EFORMAT, "PBKT chunk at byte %llu (layer %u kv head %u %u-bit part "
                         "%u): %s", at, b.layer, b.kv_head, b.bits, b.part, bad);
    /* no token in two buckets of one head: the indices read so far (memory
     * for the rows read, not for n_tokens) form one ascending run per width,
     * so each new token is looked up in the runs of the earlier widths */
    if (!same_head)
        k->nset = k->nrun = 0;
    if (!same_head || k->pw != w)
        k->run[k->nrun++] = k->nset;
    k->run[k->nrun] = k->nset;
    for (uint32_t i = 0; i < b.n; i++)
        for (uint32_t r = 0; r + 1 < k->nrun; r++)
            if (run_has(k->set + k->run[r], k->run[r + 1] - k->run[r], b.idx[i]))
                return skv_error(SKV_EFORMAT, "PBKT chunk at byte %llu: token %u of layer %u "
                                 "kv head %u is already stored in another bucket", at,
                                 b.idx[i], b.layer, b.kv_head);
    if ((rc = skv_grow((void **)&k->set, &k->set_cap, (k->nset + b.n) * sizeof *k->set,
                       (size_t)p->n_tokens * sizeof *k->set)) < 0)
        return rc;
    memcpy(k->set + k->nset, b.idx, (size_t)b.n * sizeof *k->set);
    k->nset += b.n;
    k->have_pbkt = 1;
    k->pl = b.layer;
    k->ph = b.kv_head;
    k->pw = w;
    k->ppart = b.part;
    k->pn = b.n;
    k->plast = b.idx[b.n - 1];
    k->stored += b.n;
    k->bytes += SKV_CHUNK_HEADER_LEN + c->raw_size + SKV_CHUNK_CRC_LEN;
    return 0;
}

/* CNTR: once per (layer, kv head), after that head's PBKT chunks. */
static int on_cntr(skv_checker *k, const skv_chunk *c)
{
    const skv_pkhd *p = &k->pk;
    unsigned long long at = (unsigned long long)c->offset;
    skv_bucket b;
    const uint32_t *cnt;
    int rc = skv_cntr_decode(c->data, c->raw_size, p->n_tokens, &b, &cnt);
    if (rc < 0)
        return skv_error(rc, "CNTR chunk at byte %llu: %s", at, skv_errmsg());
    int same_head = k->have_pbkt && k->pl == b.layer && k->ph == b.kv_head;
    const char *bad = NULL;
    if (b.layer >= p->n_layers || b.kv_head >= p->n_kv_heads)
        bad = "layer or kv head out of range";
    else if (b.head_dim != p->q.head_dim || b.k_group != p->q.k_group ||
             b.v_group != p->q.v_group || b.k_mode != p->q.k_mode || b.v_mode != p->q.v_mode)
        bad = "quantizer settings differ from the PKHD chunk's";
    else if (p->q.rotate)
        bad = "centroids in a rotated cache (PKHD rotation flags set)";
    else if (b.layer >= k->layer)
        bad = "before the queries of its layer are complete";
    else if (k->have_pbkt && (b.layer < k->pl || (b.layer == k->pl && (b.kv_head < k->ph ||
             (b.kv_head == k->ph && k->pw >= SKV_NBITS)))))
        bad = "out of order (after the buckets of its head, once per head, heads ascending)";
    if (!bad) {
        /* the head's stored tokens are the runs of indices read (none when
         * the head has no bucket) */
        if (!same_head)
            k->nset = k->nrun = 0;
        k->run[k->nrun] = k->nset;
        uint64_t members = 0;
        for (uint32_t i = 0; i < b.n; i++) {
            uint32_t t = b.idx[i];
            members += skv_get32((const uint8_t *)(cnt + i));
            for (uint32_t r = 0; r < k->nrun && !bad; r++)
                if (run_has(k->set + k->run[r], k->run[r + 1] - k->run[r], t))
                    bad = "a centroid's last member is a stored token";
        }
        if (members > p->n_tokens - k->nset)
            bad = "more members than the head's evicted tokens";
    }
    if (bad)
        return skv_error(SKV_EFORMAT, "CNTR chunk at byte %llu (layer %u kv head %u): %s", at,
                         b.layer, b.kv_head, bad);
    k->have_pbkt = 1;
    k->pl = b.layer;
    k->ph = b.kv_head;
    k->pw = SKV_NBITS;
    k->bytes += SKV_CHUNK_HEADER_LEN + c->raw_size + SKV_CHUNK_CRC_LEN;
    return 0;
}

static int on_attn_tens(skv_checker *k, const skv_chunk *c)
{
    const skv_athd *h = &k->a;
    skv_tens t;
    int rc = skv_tens_decode(c, &t);
    if (rc < 0)
        return rc;
    uint32_t kind = k->ki ? SKV_TK_PROB : SKV_TK_OUT;
    uint64_t cols = kind == SKV_TK_OUT ? h->head_dim : h->n_tokens;
    if (k->layer >= h->n_layers || t.kind != kind || t.layer != k->layer || t.head != k->head ||
        t.row0 != k->row || t.rows == 0 || t.rows > h->n_steps - k->row || t.cols != cols ||
        t.dtype != SKV_F32)
        return skv_error(SKV_EFORMAT, "TENS chunk at byte %llu (%s layer %u head %u rows "
                         "%llu+%llu, %u cols) out of order or shape; expected %s layer %u head "
                         "%u from row %llu", (unsigned long long)c->offset,
                         skv_tensor_kind_name(t.kind), t.layer, t.head,
                         (unsigned long long)t.row0, (unsigned long long)t.rows, t.cols,
                         skv_tensor_kind_name(kind), k->layer, k->head,
                         (unsigned long long)k->row);
    k->row += t.rows;
    if (k->row < h->n_steps)
        return 0;
    k->row = 0;
    if (++k->head < h->n_heads)
        return 0;
    k->head = 0;
    if (!k->ki && (h->flags & SKV_ATHD_PROBS)) {
        k->ki = 1;
        return 0;
    }
    k->ki = 0;
    k->layer++;
    return 0;
}

int skv_check_chunk(skv_checker *k, const skv_chunk *c)
{
    if (!skv_chunk_is_critical(c->type))
        return 0;  /* ancillary: anywhere */
    if (!known_critical(c))
        return skv_error(SKV_EUNSUP, "unknown critical chunk %s at byte %llu (a reader must "
                         "reject a critical type it does not know)", c->type,
                         (unsigned long long)c->offset);
    if (is(c, SKV_T_HEAD) || is(c, SKV_T_DONE))
        return misplaced(c, "inside the stream");
    if (k->phase == P_START) {
        if (is(c, SKV_T_TRHD))
            return on_trhd(k, c);
        if (is(c, SKV_T_ATHD)) {
            int rc = skv_athd_decode(c, &k->a);
            if (rc < 0)
                return rc;
            k->kind = SKV_KIND_ATTN;
            k->phase = P_ATTN;
            return 0;
        }
        return misplaced(c, "before the stream's header (TRHD or ATHD)");
    }
    if (is(c, SKV_T_TRHD) || is(c, SKV_T_ATHD))
        return misplaced(c, "after the stream's header (a second header)");
    switch (k->phase) {
    case P_TOKS:
        if (is(c, SKV_T_TOKS))
            return on_toks(k, c);
        return misplaced(c, "inside the token ids");
    case P_LAYERS:
        if (is(c, SKV_T_TENS))
            return on_tens(k, c);
        return misplaced(c, k->kind == SKV_KIND_TRACE ? "inside the trace's layers"
                                                       : "inside the packed cache");
    case P_TAIL:
        if (is(c, SKV_T_ALHD) || is(c, SKV_T_ALOC))
            return skv_alloc_seq_chunk(&k->alloc, &k->h, c);
        return misplaced(c, is(c, SKV_T_TENS) ? "after the last layer"
                                              : "in a trace (not a packed cache)");
    case P_PREPK:
        if (is(c, SKV_T_ALHD) || is(c, SKV_T_ALOC))
            return skv_alloc_seq_chunk(&k->alloc, &k->h, c);
        if (is(c, SKV_T_PKHD))
            return on_pkhd(k, c);
        return misplaced(c, "before the packed-cache header (PKHD)");
    case P_PACKED: {
        if (is(c, SKV_T_TENS)) {
            if (k->layer >= k->h.n_layers)
                return misplaced(c, k->h.flags & SKV_TRACE_NO_QUERIES
                                    ? "in a packed cache without queries"
                                    : "after the last layer's queries");
            if (k->have_pbkt && k->pl >= k->layer)
                return misplaced(c, "after the buckets of its layer");
            return on_tens(k, c);
        }
        if (is(c, SKV_T_PBKT))
            return on_pbkt(k, c);
        if (is(c, SKV_T_CNTR))
            return on_cntr(k, c);
        return misplaced(c, "inside the packed cache");
    }
    case P_ATTN:
        if (is(c, SKV_T_TENS))
            return on_attn_tens(k, c);
        return misplaced(c, "in an attention-output stream");
    default:
        return misplaced(c, "unexpected");
    }
}

int skv_check_end(skv_checker *k)
{
    const skv_trace_hdr *h = &k->h;
    switch (k->phase) {
    case P_START:
        return 0;  /* only ancillary chunks: nothing was promised */
    case P_TOKS:
        return skv_error(SKV_EFORMAT, "stream ends inside the token ids (%llu of %llu)",
                         (unsigned long long)k->toks, (unsigned long long)h->n_tokens);
    case P_LAYERS:
        return skv_error(SKV_EFORMAT, "stream ends inside layer %u (%s head %u, row %llu of "
                         "%llu)", k->layer, skv_tensor_kind_name(k->ki + 1), k->head,
                         (unsigned long long)k->row, (unsigned long long)h->n_tokens);
    case P_TAIL:
        return skv_alloc_seq_end(&k->alloc);
    case P_PREPK:
        return skv_error(SKV_EFORMAT, "packed cache without its header (PKHD chunk)");
    case P_PACKED:
        if (k->layer < h->n_layers)
            return skv_error(SKV_EFORMAT, "stream ends inside the queries (layer %u head %u row "
                             "%llu)", k->layer, k->head, (unsigned long long)k->row);
        if (k->stored != k->pk.n_stored)
            return skv_error(SKV_EFORMAT, "the buckets hold %llu rows, the PKHD chunk says %llu",
                             (unsigned long long)k->stored, (unsigned long long)k->pk.n_stored);
        if (k->bytes + skv_pkhd_file_bytes() != k->pk.cache_bytes)
            return skv_error(SKV_EFORMAT, "the buckets and centroids take %llu bytes, the PKHD "
                             "chunk says %llu",
                             (unsigned long long)(k->bytes + skv_pkhd_file_bytes()),
                             (unsigned long long)k->pk.cache_bytes);
        return 0;
    case P_ATTN:
        if (k->layer < k->a.n_layers)
            return skv_error(SKV_EFORMAT, "attention outputs end at layer %u of %u", k->layer,
                             k->a.n_layers);
        return 0;
    }
    return 0;
}
