/* fuzz_cache -- the packed-cache reader end to end (skv_cache_read over a
 * memory stream with recomputed CRCs): skv-stats mem's accounting, every
 * stored token found by skv_cache_find in its bucket, and, as
 * skv-quant -d does, a cache with queries is dequantized head by head and
 * written back as a trace; a cache with centroids is attended at its last
 * step. */
#include "fuzz.h"

static int one(const uint8_t *data, size_t size);

/* every CRC made right: the input reaches the decoders */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_init();
    uint8_t *fixed = fuzz_fix_crcs(data, size);
    int rc = one(fixed, size);
    free(fixed);
    return rc;
}

static int one(const uint8_t *data, size_t size)
{
    skv_stream *s = skv_open_mem(data, size, "fuzz");
    if (!s)
        return 0;
    skv_cache *c = NULL;
    int rc = skv_cache_read(s, &c);
    skv_close(s);
    if (rc < 0) {
        FUZZ_ASSERT(c == NULL);
        return 0;
    }
    FUZZ_ASSERT(c);
    /* skv-stats mem: the byte accounting must add up to the stored bytes */
    skv_mem m;
    FUZZ_ASSERT(skv_cache_mem(c, &m) == 0);
    FUZZ_ASSERT(m.total == c->pk.cache_bytes);
    skv_mem_free(&m);
    /* every stored token is found where it is, at its bucket's width (the
     * lookups behind skv_cache_width: no per-token array) */
    for (uint32_t l = 0; l < c->pk.n_layers; l++)
        for (uint32_t h = 0; h < c->pk.n_kv_heads; h++) {
            const skv_cache_head *ch = skv_cache_head_at(c, l, h);
            uint64_t n = 0;
            for (uint32_t b = 0; b < ch->n_buckets; b++)
                for (uint32_t i = 0; i < ch->buckets[b].n; i++, n++) {
                    const skv_bucket *fb = NULL;
                    uint32_t row = 0;
                    FUZZ_ASSERT(skv_cache_find(ch, ch->buckets[b].idx[i], &fb, &row) == 1);
                    FUZZ_ASSERT(fb == &ch->buckets[b] && row == i);
                }
            FUZZ_ASSERT(n == ch->n_stored);
        }
    /* skv-quant -d: dequantizing needs the queries (a head is n_tokens rows,
     * no more than one head's queries, which were read) */
    if (c->q) {
        size_t nel = (size_t)c->hdr.n_tokens * c->hdr.head_dim;
        float *k = malloc(nel * sizeof *k + 1), *v = malloc(nel * sizeof *v + 1);
        FUZZ_ASSERT(k && v);
        for (uint32_t l = 0; l < c->hdr.n_layers; l++)
            for (uint32_t h = 0; h < c->hdr.n_kv_heads; h++)
                skv_cache_dequantize_head(c, l, h, k, v);
        free(k);
        free(v);
        /* centroids (CNTR): the fused kernels attend them at the last step */
        if (c->n_centroids) {
            skv_attend_opts o = {1, SKV_KERNEL_AUTO, 0};
            skv_attend_ctx *ctx = skv_attend_new(&o);
            float *out = malloc((size_t)c->hdr.n_heads * c->hdr.head_dim * sizeof *out);
            FUZZ_ASSERT(ctx && out);
            uint64_t step = c->hdr.n_tokens - 1;
            for (uint32_t l = 0; l < c->hdr.n_layers; l++) {
                skv_kv_view L = {SKV_KV_PACKED, c->hdr.n_heads, c->hdr.n_kv_heads,
                                 c->hdr.head_dim, c->hdr.n_tokens, c->q[l], NULL, NULL,
                                 skv_cache_head_at(c, l, 0)};
                FUZZ_ASSERT(skv_attend_layer(ctx, &L, &step, 1, out, NULL) == 0);
            }
            free(out);
            skv_attend_free(ctx);
        }
    }
    skv_stream *w = skv_open_write_fd(fuzz_memfd(), "trace", -1);
    FUZZ_ASSERT(w);
    if (skv_cache_write_trace(w, c) == 0)
        FUZZ_ASSERT(skv_close(w) == 0);
    else
        skv_discard(w);
    skv_cache_free(c);
    return 0;
}
