/* smartkv_attend.h -- decode attention on traces and packed caches, and the
 * attention-output stream (ATHD + TENS OUT/PROB, smartkv(5)).
 *
 * For each chosen query step t, layer and query head, the output is
 *   out = sum_{u <= t, u stored} softmax_u(q_t . k_u / sqrt(head_dim)) v_u
 * (causal; evicted tokens of a packed cache take no part).  Three engines:
 *   reference  float64 two-pass softmax on float32 K/V (the oracle);
 *   dense      float32 online softmax on an uncompressed f32 or f16 cache;
 *   packed     float32 online softmax on a packed cache, dequantizing each
 *              row inside the dot products, one partial state per bucket
 *              part (split further into token ranges), merged exactly.
 * The query heads that share a KV head are processed together so that each
 * K/V byte is read once per GQA group.  Work is split over a thread pool by
 * (KV head, step, token range); the split does not depend on the number of
 * threads, so results are the same for any --threads.
 */
#ifndef SMARTKV_ATTEND_H
#define SMARTKV_ATTEND_H

#include "smartkv_format.h"
#include "smartkv_softmax.h"
#include "smartkv_trace.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SKV_T_ATHD "ATHD"          /* attention-output header */
#define SKV_ATHD_FIXED_LEN 64      /* bytes before the steps list */
#define SKV_ATHD_PROBS 0x1u        /* PROB tensors follow each layer's OUT tensors */
#define SKV_ATHD_FLAGS_KNOWN 0x1u
#define SKV_ATHD_MAX_LABEL 1023u

enum skv_att_mode {
    SKV_ATT_AUTO = 0,       /* packed for a packed cache, reference for a trace */
    SKV_ATT_REFERENCE = 1,  /* float64 exact attention on float32 K/V */
    SKV_ATT_DENSE_F32 = 2,  /* dense cache, K/V float32 */
    SKV_ATT_DENSE_F16 = 3,  /* dense cache, K/V fp16, converted in the dot products */
    SKV_ATT_PACKED = 4,     /* packed mixed-precision cache */
};

/* The int8 kernels (integer dot products on packed rows): the query of each
 * head is quantized to int8 (one scale per head and step; on 8-bit rows and
 * against keys per channel two int8 vectors, a coarse one and its
 * rounding), K codes meet it in integer
 * dot products and the row's fp16 scale and bias are applied to the
 * integer sum; the softmax weights times each V row's scale are quantized
 * the same way per tile of 128 tokens (one scale per tile and head) and V
 * codes are accumulated in int32, scaled once per tile, the bias added
 * once.  They cover rows of
 * 2, 3, 4 and 8 bits with keys in one scale group per row (the default) or
 * per channel (a key group's scales folded into the query once per group),
 * values in groups of whole 32-channel chunks, and head_dim a multiple of
 * 32 (at most 256 for 8 bits, where the int32 sums would otherwise
 * overflow); other rows (16 bits, keys in several groups per row, float
 * tails, see skv-attend(1)) go to the float kernels (int8-scalar to
 * scalar, the others to avx2).  Error against the float kernels: about
 * 1e-3 of the output norm on 8-bit rows; on 2-4 bit rows a few % of the
 * error the cache's rounding itself makes (tests/test_attend.c bounds both). */
enum skv_att_kernel {
    SKV_KERNEL_AUTO = 0,    /* best the CPU supports: int8-vnni, int8-avx2, scalar */
    SKV_KERNEL_SCALAR = 1,  /* portable C reference kernels (float) */
    SKV_KERNEL_AVX2 = 2,    /* AVX2 + FMA + F16C float kernels (x86-64, runtime detected) */
    SKV_KERNEL_I8_SCALAR = 3, /* int8 arithmetic, portable C: the reference of the two below */
    SKV_KERNEL_I8_AVX2 = 4, /* int8, AVX2 vpmaddubsw/vpmaddwd */
    SKV_KERNEL_I8_VNNI = 5, /* int8, vpdpbusd (AVX-512 VNNI + VL, or AVX-VNNI) */
};
#define SKV_KERNEL_LAST SKV_KERNEL_I8_VNNI

SKV_EXPORT const char *skv_att_mode_name(uint32_t mode);      /* "reference", ... */
SKV_EXPORT const char *skv_att_kernel_name(int kernel);
/* The kernel of a name ("auto", "scalar", "avx2", "int8-scalar",
 * "int8-avx2", "int8-vnni"), or -1. */
SKV_EXPORT int skv_att_kernel_parse(const char *name);
/* 1 if this build and CPU can run the kernel. */
SKV_EXPORT int skv_att_kernel_available(int kernel);

/* The probabilities pass of the kernels: p[u] = exp(p[u] - m) / l for u <
 * n (0 where p[u] is -INFINITY or l <= 0), i.e. skv_sm_prob of the state
 * {m, l} (smartkv_softmax.h); the SIMD path gives its results bit for bit.
 * kernel: the scalar kernels take the scalar loop.  Returns 0 or SKV_EINVAL. */
SKV_EXPORT int skv_att_probs(int kernel, float *p, uint64_t n, float m, float l);

/* The integer building blocks of the int8 kernels (exposed for the tests),
 * on n rows of one packed width bits (2, 3, 4, or 8 with d <= 256), row i
 * at rows + i*stride,
 * head_dim d a multiple of 32, ng (1..16) int8 vectors (the kernels use two
 * per head: a coarse one and its rounding, see attend_kern.h):
 *   dots[g*n + i]  = sum_j q[g*d + j] * code_j(row i)
 *   acc[g*d + j]  += sum_i w[g*n + i] * code_j(row i)
 * (q and w in -127..127).  kernel: one of the int8 kernels (the SIMD ones
 * must give exactly what int8-scalar gives).  Returns 0, SKV_EINVAL or
 * SKV_EUNSUP. */
SKV_EXPORT int skv_att_i8_dots(int kernel, uint32_t bits, uint32_t d, const uint8_t *rows,
                               size_t stride, uint32_t n, const int8_t *q, uint32_t ng,
                               int32_t *dots);
SKV_EXPORT int skv_att_i8_vacc(int kernel, uint32_t bits, uint32_t d, const uint8_t *rows,
                               size_t stride, uint32_t n, const int8_t *w, uint32_t ng,
                               int32_t *acc);

/* ---- the attention-output header (ATHD) ---- */
typedef struct skv_athd {
    uint32_t mode;          /* enum skv_att_mode (never AUTO) */
    uint32_t flags;         /* SKV_ATHD_* */
    uint32_t n_layers, n_heads, n_kv_heads, head_dim;
    uint64_t n_tokens;
    uint64_t n_steps;
    uint64_t kv_bytes;      /* bytes of the K/V cache attended (packed: PKHD+PBKT model) */
    uint64_t fp16_bytes;    /* fp16 K/V bytes of the same shape (for beta) */
    uint64_t *steps;        /* [n_steps] strictly ascending, < n_tokens (owned) */
    char source[SKV_MAX_NAME + 1];     /* trace source/model name */
    char label[SKV_ATHD_MAX_LABEL + 1];/* free text, e.g. the allocation policy */
} skv_athd;

SKV_EXPORT int skv_athd_write(skv_stream *s, const skv_athd *h);
/* Decode and validate; allocates h->steps (free with skv_athd_free). */
SKV_EXPORT int skv_athd_decode(const skv_chunk *c, skv_athd *h);
SKV_EXPORT void skv_athd_free(skv_athd *h);

/* Parse a steps list: "LAST" (or "last"), "all", "N", "a:b" (half-open,
 * "a:" and ":b" allowed) or a comma list of these, for a trace of n_tokens;
 * the result is sorted and duplicates removed.  Returns 0 with *steps
 * allocated, or <0 (SKV_EINVAL with a message).  steps NULL: check the
 * syntax and ranges only, allocating nothing. */
SKV_EXPORT int skv_steps_parse(const char *spec, uint64_t n_tokens, uint64_t **steps,
                               uint64_t *n_steps);

/* ---- attention outputs in memory ---- */
typedef struct skv_attn {
    skv_athd h;
    float *out;   /* [n_layers][n_heads][n_steps][head_dim] */
    float *prob;  /* [n_layers][n_heads][n_steps][n_tokens], or NULL without PROBS */
} skv_attn;

SKV_EXPORT void skv_attn_free(skv_attn *a);
/* Read a whole attention-output stream ("-" = stdin), validating the
 * header, every block's shape, and that blocks cover each tensor once. */
SKV_EXPORT int skv_attn_load(const char *path, skv_attn **out);
/* Write the OUT (and PROB) tensors of one layer: out [n_heads][n_steps][d],
 * prob [n_heads][n_steps][n_tokens] (NULL unless h->flags has PROBS). */
SKV_EXPORT int skv_attn_write_layer(skv_stream *s, const skv_athd *h, uint32_t layer,
                                    const float *out, const float *prob);
/* ATHD and every layer to an open stream (not HEAD/DONE). */
SKV_EXPORT int skv_attn_write(skv_stream *s, const skv_attn *a);

/* ---- the engine ---- */
typedef struct skv_attend_ctx skv_attend_ctx;

typedef struct skv_attend_opts {
    int threads;            /* 0 = online CPUs */
    int kernel;             /* enum skv_att_kernel */
    uint32_t split;         /* tokens per work item (0 = SKV_ATT_SPLIT) */
} skv_attend_opts;
#define SKV_ATT_SPLIT 2048u

/* Start a context (and its worker threads).  NULL on error. */
SKV_EXPORT skv_attend_ctx *skv_attend_new(const skv_attend_opts *o);
SKV_EXPORT void skv_attend_free(skv_attend_ctx *ctx);
SKV_EXPORT int skv_attend_kernel(const skv_attend_ctx *ctx);   /* kernel in use */
SKV_EXPORT int skv_attend_threads(const skv_attend_ctx *ctx);

struct skv_cache_head;   /* smartkv_cache.h */

enum skv_kv_kind { SKV_KV_F32 = 1, SKV_KV_F16 = 2, SKV_KV_PACKED = 3 };

/* One layer's queries and cache. */
typedef struct skv_kv_view {
    uint32_t kind;          /* enum skv_kv_kind */
    uint32_t n_heads, n_kv_heads, head_dim;
    uint64_t n_tokens;
    const float *q;         /* [n_heads][n_tokens][head_dim] */
    const void *k, *v;      /* F32: float, F16: uint16_t fp16 bits;
                               [n_kv_heads][n_tokens][head_dim] */
    const struct skv_cache_head *packed;  /* PACKED: [n_kv_heads] heads of this layer */
} skv_kv_view;

/* Attention of one layer for the given steps (ascending, < n_tokens):
 * out [n_heads][n_steps][head_dim]; prob (may be NULL) [n_heads][n_steps]
 * [n_tokens] gets the attention probabilities (0 for masked and evicted
 * tokens).  Returns 0 or <0. */
SKV_EXPORT int skv_attend_layer(skv_attend_ctx *ctx, const skv_kv_view *L, const uint64_t *steps,
                                uint64_t n_steps, float *out, float *prob);
/* The oracle: exact attention with float64 accumulation.  L->kind must be
 * F32.  Same outputs as skv_attend_layer. */
SKV_EXPORT int skv_attend_layer_ref(skv_attend_ctx *ctx, const skv_kv_view *L,
                                    const uint64_t *steps, uint64_t n_steps, float *out,
                                    float *prob);

/* Bytes of K/V the fused kernels read for one decode step at position t of
 * a layer (every stored row of 0..t once per KV head: payload, parameters,
 * indices).  For the benchmark's bandwidth figures. */
SKV_EXPORT uint64_t skv_attend_bytes_read(const skv_kv_view *L, uint64_t t);

/* ---- live caches: one KV head on the calling thread ----
 * For a cache that changes between decode steps (skv-eval's compressed
 * cache behind the model's skv_kv_ops): the rows of one KV head are the
 * buckets of a packed head (any number, tokens disjoint, idx ascending in
 * each) plus an optional tail of consecutive float32 rows (tokens
 * tail_t0 .. tail_t0 + n_tail - 1, not in any bucket), or of IEEE fp16
 * rows when tail_hk is set (half the bytes to read: decode attention over
 * a long fp16 cache is bound by memory bandwidth). */
typedef struct skv_att_rows {
    uint32_t head_dim;
    uint32_t n_buckets;
    const struct skv_bucket *buckets;  /* smartkv_pack.h */
    const float *tail_k, *tail_v;      /* [n_tail][head_dim] */
    uint64_t tail_t0, n_tail;
    const uint16_t *tail_hk, *tail_hv; /* [n_tail][head_dim] fp16; NULL: tail_k/tail_v */
} skv_att_rows;
#define SKV_ATT_ROWS_MAX_Q 8           /* query vectors per call */

/* Attention of ng (1..SKV_ATT_ROWS_MAX_Q) query vectors q[ng][head_dim]
 * (scores are scale * q.k) over every stored token <= limit, with the
 * same fused kernels as skv_attend_layer (kernel: enum skv_att_kernel;
 * AUTO = the best available), folded into one online-softmax state per
 * query in bucket order, then the tail.  out[ng][head_dim] (zeros when no
 * token qualifies).  prob (may be NULL): row g at prob + g*prob_stride
 * gets n_prob entries, the probability of each token (0 for tokens not
 * stored or beyond limit); limit < n_prob is then required.  Runs on the
 * calling thread only; any number of calls may run at once.  Returns 0 or
 * <0 (SKV_EINVAL). */
SKV_EXPORT int skv_attend_rows(int kernel, const skv_att_rows *rows, const float *q, uint32_t ng,
                               float scale, uint64_t limit, float *out, float *prob,
                               size_t prob_stride, uint64_t n_prob);

/* ---- whole streams (what skv-attend does) ---- */
typedef struct skv_attend_req {
    uint32_t mode;          /* enum skv_att_mode; AUTO picks by input */
    const char *steps;      /* steps spec (NULL = "LAST") */
    int probs;              /* also write PROB tensors */
    const char *label;      /* ATHD label (NULL: the allocation's description) */
} skv_attend_req;

/* Read a trace or packed cache from `in` ("-" = stdin), compute attention
 * and write ATHD and the OUT/PROB tensors to the open stream `out`.  Both
 * are read one layer at a time (a trace with an allocation in PACKED mode
 * is packed layer by layer into an unlinked temporary file first).
 * Returns 0 or <0. */
SKV_EXPORT int skv_attend_stream(skv_attend_ctx *ctx, const char *in, skv_stream *out,
                                 const skv_attend_req *req);
/* The same, a packed cache's queries read alongside it, layer by layer,
 * from the trace `queries` (NULL: the cache's own); *qbad (may be NULL) is
 * set to 1 when the failure is that trace's. */
SKV_EXPORT int skv_attend_stream_queries(skv_attend_ctx *ctx, const char *in,
                                         const char *queries, skv_stream *out,
                                         const skv_attend_req *req, int *qbad);

struct skv_cache;
/* The same for a packed cache already in memory (AUTO = PACKED; REFERENCE
 * attends over the dequantized rows, evicted tokens absent). */
SKV_EXPORT int skv_attend_cache(skv_attend_ctx *ctx, const struct skv_cache *c, skv_stream *out,
                                const skv_attend_req *req);

#ifdef __cplusplus
}
#endif
#endif
