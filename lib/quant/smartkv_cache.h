/* smartkv_cache.h -- the packed, mixed-precision KV cache: writer (trace +
 * allocation -> stream) and in-memory reader used by the attention kernels.
 *
 * Stream layout (smartkv(5), "PACKED-CACHE CHUNKS"):
 *   HEAD, TRHD (flags | SKV_TRACE_PACKED [| SKV_TRACE_NO_QUERIES]), TOKS...,
 *   allocation chunks (ALHD, ALOC...) and ancillary chunks passed through,
 *   PKHD,
 *   for each layer: the Q TENS blocks (heads 0.., rows ascending; absent
 *   with NO_QUERIES), then the PBKT chunks of kv head 0, 1, ..., each head's
 *   buckets in ascending width (2, 3, 4, 8, 16) and parts in order,
 *   DONE.
 * A (layer, kv head) with every token evicted has no PBKT chunk; a width no
 * token uses has none either.  Buckets larger than one chunk are split into
 * parts of skv_pbkt_max_tokens() tokens (the last part holds the rest).
 *
 * ---- In memory (skv_cache_load) ----
 *
 *   skv_cache
 *     hdr, pk            trace header and quantizer settings
 *     q[layer]           float32 queries [n_heads][n_tokens][head_dim]
 *                        (NULL when the cache was written without queries)
 *     layers[layer][kv_head]  one skv_cache_head each (skv_cache_head_at);
 *                        the heads of one layer are contiguous, and layers
 *                        with no bucket share one array of empty heads
 *   skv_cache_head
 *     buckets[0..n_buckets)  skv_bucket (smartkv_pack.h), ascending width
 *                        then part; tokens of all entries are disjoint
 *   There is no per-token array: a token's width is found in the buckets
 *   (skv_cache_find, skv_cache_width), or written out densely by
 *   skv_cache_head_widths into a buffer the caller sizes, so a cache costs
 *   memory for the rows it stores, never for the tokens it declares.
 *
 * Each bucket's payload is a private copy whose start is 64-byte aligned;
 * every section (idx, k_par, k_dat, v_par, v_dat) starts at a multiple of 64
 * bytes from it, so each section start is 64-byte aligned in memory too:
 * aligned SIMD loads and a plain cudaMemcpy of [payload, payload +
 * payload_bytes) keep that alignment on the device (cudaMalloc is 256-byte
 * aligned).  Rows within a section are packed back to back (token i of the
 * bucket at k_dat + i*row_stride), NOT individually aligned.
 *
 * How an attention kernel uses it, for one (layer, kv head) and a query q:
 *   for each bucket b of *skv_cache_head_at(c, l, h):
 *     for i in 0..b->n:  token t = b->idx[i]
 *       score[t] = dot(q, K_t) with K_t decoded from
 *                  b->k_par + i*b->k_par_stride, b->k_dat + i*b->row_stride
 *                  (skv_qmath.h: skv_qm_group_par, skv_qm_unpack8, ...)
 *   softmax over the stored tokens only (evicted tokens take no part),
 *   then out = sum_t p[t] * V_t, V_t decoded the same way from v_par/v_dat.
 * Scores can be written to a dense [n_tokens] array at idx positions
 * (tokens in no bucket are evicted) or kept per bucket; causal masking is
 * a comparison of idx against the query position.  Within a bucket all rows
 * have the same width, group size and mode, so the inner loop has no
 * per-token branching.  skv_dequantize_row() decodes one row (AVX2).
 *
 * Everything in an skv_cache is read-only after loading: any number of
 * threads may use one cache at the same time.
 */
#ifndef SMARTKV_CACHE_H
#define SMARTKV_CACHE_H

#include "smartkv_alhd.h"
#include "smartkv_format.h"
#include "smartkv_pack.h"
#include "smartkv_quant.h"
#include "smartkv_trace.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- chunks kept verbatim (allocation, ancillary) ---- */
typedef struct skv_raw_chunk {
    char type[5];
    uint64_t size;
    uint64_t offset;        /* of the chunk in the stream it was read from (messages) */
    uint8_t *data;
} skv_raw_chunk;

typedef struct skv_chunk_list {
    size_t n, cap;
    skv_raw_chunk *v;
} skv_chunk_list;

/* Append a copy of c's payload.  Returns 0 or <0. */
SKV_EXPORT int skv_chunk_list_add(skv_chunk_list *l, const skv_chunk *c);
SKV_EXPORT void skv_chunk_list_free(skv_chunk_list *l);
/* Write every chunk of the list to s in order. */
SKV_EXPORT int skv_chunk_list_write(skv_stream *s, const skv_chunk_list *l);

/* ---- PKHD ---- */
typedef struct skv_pkhd {
    skv_qcfg q;             /* head_dim, groups and modes of K and V */
    uint32_t n_layers;
    uint32_t n_kv_heads;
    uint64_t n_tokens;
    uint64_t cache_bytes;   /* byte model: PKHD + all PBKT chunks, framing
                               included, as written without compression */
    uint64_t fp16_bytes;    /* 2 * n_layers * n_kv_heads * n_tokens * head_dim * 2 */
    uint64_t n_stored;      /* (layer, kv head, token) rows stored (bits > 0) */
    int rot_seed_known;     /* reading: q.rot_seed was set by the first PBKT (the PKHD
                               has the rotation flags, the buckets the seed) */
} skv_pkhd;

SKV_EXPORT int skv_pkhd_write(skv_stream *s, const skv_pkhd *p);
SKV_EXPORT int skv_pkhd_decode(const skv_chunk *c, skv_pkhd *p);
/* A bucket's rotation (format 1.3) against its cache's PKHD: the same flags,
 * and one seed in every bucket (the first one read sets p->q.rot_seed).
 * Returns 0 or SKV_EFORMAT saying what differs. */
SKV_EXPORT int skv_pkhd_rot_match(skv_pkhd *p, const skv_bucket *b);
/* fp16 bytes of K and V for a shape; 0 on overflow. */
SKV_EXPORT uint64_t skv_fp16_kv_bytes(uint32_t n_layers, uint32_t n_kv_heads, uint64_t n_tokens,
                                      uint32_t head_dim);

/* ---- what to write: a width per (layer, kv head, token) ---- */
typedef struct skv_cache_plan {
    skv_qcfg q;
    uint32_t n_layers, n_kv_heads;
    uint64_t n_tokens;
    uint8_t *bits;          /* [n_layers][n_kv_heads][n_tokens]: 0,2,3,4,8,16; NULL
                               when `uniform` says every token has one width */
    uint32_t uniform;       /* with bits NULL: the width of every token */
    int from_alloc;         /* 1 when read from ALHD/ALOC chunks */
    double alloc_beta;      /* ALHD: budget requested */
    uint64_t alloc_bytes;   /* ALHD: cache bytes predicted by the allocator */
    uint32_t alloc_mask;    /* ALHD: allowed widths (bit b set: width b allowed) */
    char alloc_text[1024];  /* ALHD: "policy=... " description */
    uint32_t merge_clusters;/* ALHD flag SKV_ALHD_MERGE: the width-0 tokens of each
                               (layer, kv head) are merged into at most this many
                               centroids (a CNTR chunk), else 0 */
    uint32_t merge_bits;    /* width of the centroids: the top width allowed */
} skv_cache_plan;

/* Every token of every (layer, kv head) at `bits` (2, 3, 4, 8 or 16). */
SKV_EXPORT int skv_cache_plan_uniform(skv_cache_plan *p, const skv_trace_hdr *h,
                                      const skv_qcfg *q, uint32_t bits);
/* From the ALHD and ALOC chunks in `chunks` (as collected by
 * skv_cache_input_load), checked against the trace shape h: exactly one
 * ALHD, one ALOC per (layer, kv head), widths valid and allowed by the
 * ALHD mask.  No ALHD at all gives SKV_EFORMAT "no allocation ...". */
SKV_EXPORT int skv_cache_plan_from_chunks(skv_cache_plan *p, const skv_trace_hdr *h,
                                          const skv_chunk_list *chunks);
SKV_EXPORT void skv_cache_plan_free(skv_cache_plan *p);
/* The description of the allocation in `chunks` (its ALHD text, checked
 * against h) into out: 1, or 0 when there is no ALHD chunk, <0 on a bad one. */
SKV_EXPORT int skv_cache_alloc_text(const skv_chunk_list *chunks, const skv_trace_hdr *h,
                                    char *out, size_t n);
/* The byte model of a plan: PKHD + all buckets' file bytes + the CNTR
 * chunks of a merging plan (min(clusters, evicted tokens) centroids per
 * (layer, kv head) at merge_bits).  Returns 0 or <0. */
SKV_EXPORT int skv_cache_plan_bytes(const skv_cache_plan *p, uint64_t *bytes);

/* Load a trace (whole, float32) keeping the chunks that are not part of it:
 * ALHD/ALOC and ancillary chunks go to *extra in stream order; any other
 * unknown critical chunk is an error.  Returns 0 or <0. */
SKV_EXPORT int skv_cache_input_load(const char *path, skv_trace **t, skv_chunk_list *extra);

/* ---- writer ---- */
/* Every Q, K and V value of t finite and within the fp16 range
 * (skv_trace_values_check, the rule skv-alloc applies as it reads): 0, or
 * SKV_EFORMAT naming the first bad value.  skv_cache_write checks it first. */
SKV_EXPORT int skv_trace_check_values(const skv_trace *t);

/* A cache holds the cache: skv-quant drops the queries unless asked to keep
 * them (skv-attend can take them from the trace: skv_cache_queries_from). */
#define SKV_CACHE_DROP_QUERIES 0x1u

typedef struct skv_cache_stats {
    uint64_t model_bytes;   /* byte model (= PKHD cache_bytes) */
    uint64_t cache_bytes;   /* PKHD + PBKT bytes as written (less when compressed) */
    uint64_t fp16_bytes;
    uint64_t stream_bytes;  /* bytes written to the stream, DONE excluded */
    uint64_t hist[SKV_NBITS];  /* rows per width, indexed like skv_bit_widths */
    uint64_t n_pbkt;        /* PBKT chunks written */
} skv_cache_stats;

/* Write the packed cache of trace t according to plan p to an open stream
 * (everything after HEAD and before DONE; the caller closes or discards).
 * `pass` chunks (may be NULL) are written after TOKS and before PKHD.
 * When p came from an allocation, its predicted bytes must equal the byte
 * model (else SKV_EFORMAT: the two tools disagree); a value skv-alloc
 * would refuse is SKV_EFORMAT before anything is written.  Uncompressed, the
 * PKHD and PBKT chunks take exactly model_bytes (checked).  st may be NULL. */
SKV_EXPORT int skv_cache_write(skv_stream *s, const skv_trace *t, const skv_cache_plan *p,
                               const skv_chunk_list *pass, unsigned flags,
                               skv_cache_stats *st);

/* ---- streaming quantizer (skv-quant) ---- */

/* Keep the allocation record (ALOC chunks) in the cache; the ALHD is kept
 * whenever the cache was made from an allocation. */
#define SKV_CACHE_KEEP_ALLOC 0x2u

typedef struct skv_quantize_opts {
    uint32_t uniform;       /* 0: the input's allocation; else every token at this width */
    skv_qcfg q;             /* with uniform: groups (0: head_dim) and modes; always:
                               rotate and rot_seed (the allocation has no rotation) */
    unsigned flags;         /* SKV_CACHE_DROP_QUERIES, SKV_CACHE_KEEP_ALLOC */
    void (*progress)(void *ctx, uint64_t done, uint64_t total); /* layers written */
    void *progress_ctx;
} skv_quantize_opts;

/* Quantize the trace read from `in` (open for reading; closed by this
 * function, also on failure) into a packed cache written to `out`
 * (everything after HEAD and before DONE), holding one layer at a time.
 * The allocation follows the trace's last layer, so the input is read
 * twice: `path` is reopened when it is a regular file, otherwise the first
 * reading copies the stream to an unlinked temporary file in $TMPDIR.
 * `first`, when not NULL, is the first chunk after HEAD, already read from
 * `in` (not with uniform).  The plan is returned in *plan (free it with
 * skv_cache_plan_free; nothing to free on failure).  Returns 0 or <0. */
SKV_EXPORT int skv_cache_quantize(skv_stream *in, const skv_chunk *first, const char *path,
                                  skv_stream *out, const skv_quantize_opts *o,
                                  skv_cache_plan *plan, skv_cache_stats *st);

/* ---- reader ---- */
/* The centroids of one (layer, kv head) (a CNTR chunk), allocated when the
 * chunk arrives (a head record stays small: a header may declare 2^20). */
typedef struct skv_cache_cent {
    skv_bucket rows;        /* rows.idx: each centroid's last member, ascending (a
                               query at position t attends those with last <= t) */
    const uint32_t *cnt;    /* member counts */
    float *bias;            /* log(cnt[i]), added to centroid i's logit */
    void *mem;              /* internal: the payload's allocation */
} skv_cache_cent;

typedef struct skv_cache_head {
    uint32_t n_buckets;
    skv_bucket *buckets;    /* ascending width, then part */
    uint64_t n_stored;      /* sum of buckets[i].n */
    void **owned;           /* internal: allocations behind the payloads */
    struct skv_cache_cent *cent;  /* centroids of merged tokens, or NULL */
} skv_cache_head;

typedef struct skv_cache {
    skv_trace_hdr hdr;      /* as stored: flags include SKV_TRACE_PACKED */
    skv_pkhd pk;
    int32_t *tokens;        /* [n_tokens] when SKV_TRACE_HAS_TOKENS, else NULL */
    float **q;              /* [n_layers] -> [n_heads][n_tokens][head_dim], or NULL */
    skv_cache_head **layers; /* [n_layers] -> [n_kv_heads] heads; every layer
                               without a bucket points to `empty` */
    skv_cache_head *empty;  /* internal: [n_kv_heads] heads with no bucket */
    skv_chunk_list extra;   /* ALHD/ALOC and ancillary chunks, stream order */
    uint64_t stored_bytes;  /* PKHD + PBKT bytes as read (compressed size) */
    uint64_t n_centroids;   /* centroids over all heads read so far (CNTR chunks) */
} skv_cache;

/* Read a whole packed cache from an open stream (up to and including DONE)
 * or from a path ("-" = stdin), validating everything: chunk order, every
 * PBKT field and size, indices ascending and in range, each token in at
 * most one bucket, canonical part splitting, and the PKHD totals. */
SKV_EXPORT int skv_cache_read(skv_stream *s, skv_cache **out);
SKV_EXPORT int skv_cache_load(const char *path, skv_cache **out);
/* As skv_cache_read, for a caller that has already read the first chunk
 * after HEAD (the TRHD, to tell a packed cache from a trace): `first` is
 * that chunk, read from s just before. */
SKV_EXPORT int skv_cache_read_after(skv_stream *s, const skv_chunk *first, skv_cache **out);
SKV_EXPORT void skv_cache_free(skv_cache *c);

/* ---- reading one layer at a time ----
 *
 * skv_cache_reader_open() reads a packed cache up to and including its PKHD
 * (c->hdr, c->pk, c->tokens and c->extra are then set; `first` as in
 * skv_cache_read_after, or NULL).  skv_cache_reader_next() returns 1 with
 * *layer set when that layer's queries and buckets are in c (the previous
 * layer's are freed then), 0 at the end once DONE and the PKHD totals are
 * verified, <0 on error.  Only the layer handed out (and the first chunk
 * of the next) is held; ancillary chunks after the PKHD are skipped.  The
 * reader owns s. */
typedef struct skv_cache_reader skv_cache_reader;
SKV_EXPORT skv_cache_reader *skv_cache_reader_open(skv_stream *s, const skv_chunk *first);
SKV_EXPORT const skv_cache *skv_cache_reader_cache(const skv_cache_reader *r);
SKV_EXPORT int skv_cache_reader_next(skv_cache_reader *r, uint32_t *layer);
SKV_EXPORT void skv_cache_reader_close(skv_cache_reader *r);

/* Queries for a cache that has none, one layer at a time from a trace
 * (checked against the cache's shape and token ids as by
 * skv_cache_queries_from). */
SKV_EXPORT skv_trace_reader *skv_cache_queries_open(const skv_cache *c, const char *path);
/* Give c the queries of the trace at path ("-" = stdin), read one layer at a
 * time: it must have the cache's shape and, when both carry token ids, the
 * same ids.  Replaces any queries c has.  Returns 0 or <0. */
SKV_EXPORT int skv_cache_queries_from(skv_cache *c, const char *path);

static inline const skv_cache_head *skv_cache_head_at(const skv_cache *c, uint32_t layer,
                                                     uint32_t kv_head)
{
    return &c->layers[layer][kv_head];
}

/* Where token t of a head is stored: returns 1 with *b and *row (its
 * position in b) set, or 0 if the token is evicted.  O(widths * log n). */
SKV_EXPORT int skv_cache_find(const skv_cache_head *h, uint64_t t, const skv_bucket **b,
                              uint32_t *row);
/* The width token t of a head is stored at, 0 when it is evicted. */
SKV_EXPORT uint32_t skv_cache_width(const skv_cache_head *h, uint64_t t);
/* Every token's width (0 = evicted) into out[n_tokens], n_tokens of the
 * cache the head belongs to. */
SKV_EXPORT void skv_cache_head_widths(const skv_cache_head *h, uint64_t n_tokens, uint8_t *out);

/* Dequantize one (layer, kv head) into k and v [n_tokens][head_dim]
 * (either may be NULL); evicted tokens become zero rows (centroids are not
 * tokens: they are left out). */
SKV_EXPORT void skv_cache_dequantize_head(const skv_cache *c, uint32_t layer, uint32_t kv_head,
                                          float *k, float *v);

/* Write the cache back as a plain float32 trace (TRHD, TOKS, layers of
 * Q/K/V TENS with K and V dequantized, then the extra chunks) to an open
 * stream.  Fails with SKV_EFORMAT if the cache has no queries or holds
 * centroids (a trace cannot). */
SKV_EXPORT int skv_cache_write_trace(skv_stream *s, const skv_cache *c);
/* The same from a packed cache read one layer at a time from `in` (owned
 * and closed), its queries from the cache or, when `queries` is not NULL,
 * from that trace read alongside (*qbad, may be NULL, is set to 1 when the
 * failure is that trace's).  The allocation is written only when whole
 * (an ALHD without ALOC chunks is dropped).  Returns 0 or <0. */
SKV_EXPORT int skv_cache_dequantize_stream(skv_stream *in, const char *queries, skv_stream *out,
                                           int *qbad);

#ifdef __cplusplus
}
#endif
#endif
