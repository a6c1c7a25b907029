/* smartkv_trace.h -- attention traces: per-layer queries, keys and values.
 *
 * On disk (smartkv(5)): a TRHD chunk, optional TOKS chunks, then for each
 * layer in order the TENS blocks of Q (heads 0..n_heads-1), then K and V
 * (kv heads 0..n_kv_heads-1), each head's rows split into ascending blocks
 * of at most SKV_CHUNK_MAX bytes.  In memory every element is float32.
 */
#ifndef SMARTKV_TRACE_H
#define SMARTKV_TRACE_H

#include "smartkv_format.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum skv_dtype { SKV_F32 = 1, SKV_F16 = 2, SKV_BF16 = 3 };

/* Tensor kinds carried by TENS chunks. */
enum skv_tensor_kind {
    SKV_TK_Q = 1,      /* queries  [n_heads][n_tokens][head_dim] */
    SKV_TK_K = 2,      /* keys     [n_kv_heads][n_tokens][head_dim] */
    SKV_TK_V = 3,      /* values   [n_kv_heads][n_tokens][head_dim] */
    SKV_TK_OUT = 4,    /* attention outputs [n_heads][n_steps][head_dim] */
    SKV_TK_PROB = 5,   /* attention probabilities [n_heads][n_steps][n_tokens] */
    SKV_TK_HIDDEN = 6, /* hidden states [n_tokens][n_embd] (hidn chunks only) */
};

/* Ancillary chunk: a block of one layer's hidden states (the residual stream
 * entering the layer), payload laid out like TENS with kind 6 and head 0.
 * Ancillary so that every tool that does not use it skips or passes it. */
#define SKV_T_HIDN "hidn"

#define SKV_TRACE_POST_ROPE 0x1u  /* keys (and queries) are post-RoPE */
#define SKV_TRACE_HAS_TOKENS 0x2u /* TOKS chunks follow the header */
#define SKV_TRACE_PACKED 0x4u     /* K and V are a packed cache (PKHD/PBKT), not TENS */
#define SKV_TRACE_NO_QUERIES 0x8u /* Q blocks were dropped (skv-quant --drop-queries) */
#define SKV_TRACE_FLAGS_KNOWN 0xfu

/* Documented limits: a header beyond them is rejected before allocation. */
#define SKV_MAX_LAYERS 1024u
#define SKV_MAX_HEADS 1024u
#define SKV_MAX_HEAD_DIM 1024u
#define SKV_MAX_TOKENS (1ull << 24)   /* 16 Mi tokens */
#define SKV_MAX_NAME 255u

#define SKV_TRHD_FIXED_LEN 52   /* bytes before the two strings */
#define SKV_TENS_HEADER_LEN 40  /* TENS sub-header before the elements */

typedef struct skv_trace_hdr {
    uint32_t n_layers;
    uint32_t n_heads;       /* query heads */
    uint32_t n_kv_heads;    /* key/value heads (GQA: n_heads % n_kv_heads == 0) */
    uint32_t head_dim;
    uint64_t n_tokens;
    uint64_t n_prefill;     /* tokens before the first decode step */
    uint32_t dtype;         /* element type on disk (enum skv_dtype) */
    uint32_t flags;         /* SKV_TRACE_* */
    float rope_theta;       /* 0 when unknown or not applied */
    char model[SKV_MAX_NAME + 1];     /* model or source name */
    char tokenizer[SKV_MAX_NAME + 1]; /* tokenizer source, may be empty */
} skv_trace_hdr;

/* One TENS block, decoded. */
typedef struct skv_tens {
    uint32_t kind;      /* enum skv_tensor_kind */
    uint32_t dtype;
    uint32_t layer;
    uint32_t head;
    uint64_t row0;      /* first row (token or step) */
    uint64_t rows;
    uint32_t cols;      /* head_dim, or n_tokens for probabilities */
    const uint8_t *data;/* rows*cols elements of dtype, little-endian */
} skv_tens;

SKV_EXPORT size_t skv_dtype_size(uint32_t dtype);   /* 0 if unknown */
SKV_EXPORT const char *skv_dtype_name(uint32_t dtype);
SKV_EXPORT int skv_dtype_parse(const char *name);    /* <0 if unknown */
SKV_EXPORT const char *skv_tensor_kind_name(uint32_t kind);

/* Check a header's fields against the limits and each other. */
SKV_EXPORT int skv_trace_hdr_check(const skv_trace_hdr *h);
/* Bytes of one layer's Q, K and V as float32 (checked; <0 on overflow). */
SKV_EXPORT int skv_trace_layer_floats(const skv_trace_hdr *h, size_t *nq, size_t *nkv);

/* Chunk codecs.  Decoders validate every field and length. */
SKV_EXPORT int skv_trhd_write(skv_stream *s, const skv_trace_hdr *h);
SKV_EXPORT int skv_trhd_decode(const skv_chunk *c, skv_trace_hdr *h);
SKV_EXPORT int skv_tens_decode(const skv_chunk *c, skv_tens *t);
/* Write rows [row0, row0+rows) of one head from float32 data, converting to
 * dtype and splitting into blocks that fit a chunk. */
SKV_EXPORT int skv_tens_write(skv_stream *s, uint32_t kind, uint32_t dtype, uint32_t layer,
                              uint32_t head, uint64_t row0, uint64_t rows, uint32_t cols,
                              const float *data);
/* Write rows already in dtype form (no conversion), splitting as needed. */
SKV_EXPORT int skv_tens_write_raw(skv_stream *s, uint32_t kind, uint32_t dtype, uint32_t layer,
                                  uint32_t head, uint64_t row0, uint64_t rows, uint32_t cols,
                                  const void *data);
/* Convert a decoded block's elements to float32 (rows*cols values). */
SKV_EXPORT void skv_tens_to_f32(const skv_tens *t, float *out);
/* hidn chunks: write rows [row0, row0+rows) of layer's hidden states (cols =
 * n_embd floats each), converting to dtype and splitting into blocks; decode
 * one (checks kind 6, head 0, shape against the payload). */
SKV_EXPORT int skv_hidn_write(skv_stream *s, uint32_t dtype, uint32_t layer, uint64_t row0,
                              uint64_t rows, uint32_t cols, const float *data);
SKV_EXPORT int skv_hidn_decode(const skv_chunk *c, skv_tens *t);

/* Hidden states gathered from hidn chunks: per layer [n_tokens][n_embd]
 * float32.  Blocks of a layer must arrive in order and cover every row
 * exactly once; n_embd is set by the first block.  skv_hidden_complete()
 * says whether layers 0..n_layers-1 are all covered. */
typedef struct skv_hidden {
    uint32_t n_layers, n_embd;
    uint64_t n_tokens;
    float **h;              /* [n_layers], each NULL until its first block */
    uint64_t *rows;         /* rows received per layer */
} skv_hidden;

SKV_EXPORT skv_hidden *skv_hidden_new(uint32_t n_layers, uint64_t n_tokens);
SKV_EXPORT void skv_hidden_free(skv_hidden *hs);
/* Take one hidn chunk (others: returns 0, untouched).  <0 on a bad block. */
SKV_EXPORT int skv_hidden_add(skv_hidden *hs, const skv_chunk *c);
SKV_EXPORT int skv_hidden_complete(const skv_hidden *hs);
SKV_EXPORT int skv_toks_write(skv_stream *s, uint64_t t0, uint64_t n, const int32_t *ids);

/* Element conversion (round-to-nearest-even; NaN and Inf preserved). */
SKV_EXPORT uint16_t skv_f32_to_f16(float f);
SKV_EXPORT float skv_f16_to_f32(uint16_t h);
SKV_EXPORT uint16_t skv_f32_to_bf16(float f);
SKV_EXPORT float skv_bf16_to_f32(uint16_t h);
SKV_EXPORT void skv_convert_to_f32(uint32_t dtype, const void *src, float *dst, size_t n);
SKV_EXPORT void skv_convert_from_f32(uint32_t dtype, const float *src, void *dst, size_t n);

/* ---- Streaming reader: one layer at a time ----
 *
 * skv_trace_reader_open() reads up to and including TRHD and any TOKS.
 * skv_trace_next_layer() then fills the next layer's float32 Q/K/V,
 * checking that blocks arrive in canonical order and cover every row.
 * Chunks that are not part of the trace (other critical types, ancillary
 * chunks) are handed to the `other` callback if set (return <0 to stop),
 * else kept in order in r->extra for the caller to inspect; unknown critical
 * chunks are still the caller's to reject. */
typedef struct skv_layer {
    uint32_t index;
    float *q;   /* [n_heads][n_tokens][head_dim] */
    float *k;   /* [n_kv_heads][n_tokens][head_dim] */
    float *v;   /* [n_kv_heads][n_tokens][head_dim] */
    size_t cap[3]; /* bytes of q, k, v the reader allocated; 0: the caller's */
} skv_layer;

typedef int (*skv_chunk_fn)(void *ctx, const skv_chunk *c);

typedef struct skv_trace_reader {
    skv_stream *s;
    skv_trace_hdr hdr;
    int32_t *tokens;        /* n_tokens ids when SKV_TRACE_HAS_TOKENS, else NULL */
    uint32_t next_layer;
    skv_chunk_fn other;     /* callback for non-trace chunks (may be NULL) */
    void *other_ctx;
    int at_end;             /* DONE seen */
    skv_chunk pending;      /* a chunk read ahead but not yet consumed */
    int has_pending;
} skv_trace_reader;

/* Open path ("-" = stdin), read the header.  `other` sees chunks before
 * TRHD too.  Returns NULL on error. */
SKV_EXPORT skv_trace_reader *skv_trace_reader_open(const char *path, skv_chunk_fn other,
                                                   void *ctx);
/* The same over a stream opened for reading (positioned after HEAD); the
 * reader owns s from then on, also when it fails. */
SKV_EXPORT skv_trace_reader *skv_trace_reader_open_stream(skv_stream *s, skv_chunk_fn other,
                                                          void *ctx);
/* Returns 1 with *layer filled, 0 after the last layer once the rest of the
 * stream and its DONE chunk have been read and verified, <0 on error.  If
 * layer->q is NULL on entry the buffers are allocated and grow as the rows
 * arrive, so a header that declares a huge layer costs only the bytes that
 * follow it (free them with skv_layer_free; pass them back for the next
 * layer); otherwise the caller's full-size buffers are filled. */
SKV_EXPORT int skv_trace_next_layer(skv_trace_reader *r, skv_layer *layer);
SKV_EXPORT void skv_layer_free(skv_layer *layer);
/* Read on to the end of the stream (after the last layer), passing chunks to
 * the callback.  Returns 0 or <0. */
SKV_EXPORT int skv_trace_reader_finish(skv_trace_reader *r);
SKV_EXPORT void skv_trace_reader_close(skv_trace_reader *r);

/* ---- Whole trace in memory (for small traces and tests) ---- */
typedef struct skv_trace {
    skv_trace_hdr hdr;
    float **q, **k, **v;    /* per layer, as in skv_layer */
    int32_t *tokens;        /* or NULL */
} skv_trace;

SKV_EXPORT skv_trace *skv_trace_new(const skv_trace_hdr *h);  /* zeroed tensors */
SKV_EXPORT void skv_trace_free(skv_trace *t);
SKV_EXPORT int skv_trace_load(const char *path, skv_trace **out);
/* The same, handing chunks that are not part of the trace to `other` (see
 * skv_trace_reader_open); skv_trace_load rejects unknown critical ones. */
SKV_EXPORT int skv_trace_load_with(const char *path, skv_chunk_fn other, void *ctx,
                                   skv_trace **out);
/* Read every layer left in r (then the rest of the stream) into a new trace.
 * Memory grows with the rows read, not with the header's shape.  The
 * caller still closes r.  Returns 0 or <0. */
SKV_EXPORT int skv_trace_read_all(skv_trace_reader *r, skv_trace **out);
/* Write a whole trace (HEAD..DONE) to path with the header's dtype. */
SKV_EXPORT int skv_trace_save(const skv_trace *t, const char *path, int level);
/* Write the trace chunks only (TRHD, TOKS, layers) to an open stream. */
SKV_EXPORT int skv_trace_write(skv_stream *s, const skv_trace *t);

#ifdef __cplusplus
}
#endif
#endif
