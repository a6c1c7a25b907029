/* smartkv_stats.h -- fidelity of attention outputs (skv-stats compare and
 * sweep) and the Pareto front of fidelity against bytes. */
#ifndef SMARTKV_STATS_H
#define SMARTKV_STATS_H

#include "smartkv_attend.h"
#include "smartkv_pack.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SKV_CMP_NTOP 3
static const uint32_t skv_cmp_topk[SKV_CMP_NTOP] = {1, 8, 32};

/* Fidelity of a test output against a reference, over a set of output
 * vectors (one per query head and step). */
typedef struct skv_cmp {
    uint64_t n_vec;         /* output vectors compared */
    double rel_l2;          /* sqrt(sum |test-ref|^2 / sum |ref|^2) */
    double max_rel;         /* largest |test-ref| / |ref| of one vector */
    double cos;             /* mean cosine similarity of the vectors */
    int has_probs;          /* the next two are valid (both sides have PROB) */
    double kl;              /* mean KL(ref || test) of the attention rows, nats */
    double top[SKV_CMP_NTOP]; /* mean top-k overlap |topk(ref) & topk(test)| / k */
} skv_cmp;

typedef struct skv_compare {
    uint32_t n_layers;
    skv_cmp *layer;         /* [n_layers] */
    skv_cmp all;
} skv_compare;

/* Compare two attention-output sets of the same shape and steps.  KL uses
 * test probabilities floored at 1e-10 (an evicted token that the reference
 * attends to costs p*log(p/1e-10), not infinity).  Top-k sets are limited to
 * the t+1 tokens a step can attend to.  Returns 0 or <0 (SKV_EINVAL naming
 * the mismatch). */
SKV_EXPORT int skv_attn_compare(const skv_attn *ref, const skv_attn *test, skv_compare *out);
SKV_EXPORT void skv_compare_free(skv_compare *c);

/* Pareto front: on[i] = 1 when no other point has bytes <= and err <= with
 * at least one strictly smaller.  Returns 0 or <0. */
SKV_EXPORT int skv_pareto(const double *bytes, const double *err, uint32_t n, uint8_t *on);

/* ---- memory of a packed cache (skv-stats mem) ---- */
struct skv_cache;

enum skv_mem_kind {
    SKV_MEM_PAYLOAD = 0,  /* packed K/V rows (16-bit rows included) */
    SKV_MEM_SCALES,       /* quantization parameters (fp16 scales and mins) */
    SKV_MEM_INDICES,      /* token indices (u32) */
    SKV_MEM_HEADERS,      /* PKHD payload and the 64-byte PBKT headers */
    SKV_MEM_PADDING,      /* alignment of sections to 64 bytes */
    SKV_MEM_FRAMING,      /* chunk headers and CRCs (28 bytes a chunk) */
    SKV_MEM_NKINDS
};

typedef struct skv_mem {
    uint64_t total;                       /* = the sum of kind[] = PKHD + PBKT + CNTR file bytes */
    uint64_t model_bytes;                 /* PKHD cache_bytes (the byte model) */
    uint64_t fp16_bytes;                  /* fp16 K+V of the shape */
    uint64_t kind[SKV_MEM_NKINDS];
    uint64_t width_bytes[SKV_NBITS];      /* file bytes of the buckets of each width */
    uint64_t width_rows[SKV_NBITS];       /* (layer, kv head, token) rows per width (0: evicted) */
    uint64_t width_chunks[SKV_NBITS];
    uint64_t centroids;                   /* centroids of merged tokens (CNTR chunks) */
    uint64_t centroid_bytes;              /* their file bytes (in total and the kinds:
                                             rows as payload and scales, last member and
                                             count as indices) */
    uint64_t centroid_chunks;
    uint32_t n_layers;
    uint64_t *layer_rows;                 /* [n_layers][SKV_NBITS] rows per width */
    uint64_t *layer_bytes;                /* [n_layers] file bytes of the layer's buckets */
} skv_mem;

/* Account every byte of a packed cache.  Returns 0 or <0. */
SKV_EXPORT int skv_cache_mem(const struct skv_cache *c, skv_mem *m);
/* The same one layer at a time (skv_cache_reader): begin with the header
 * (PKHD) read, add each layer while it is held, end to sum the kinds. */
SKV_EXPORT int skv_mem_begin(skv_mem *m, const struct skv_cache *c);
SKV_EXPORT void skv_mem_layer(skv_mem *m, const struct skv_cache *c, uint32_t layer);
SKV_EXPORT void skv_mem_end(skv_mem *m);
SKV_EXPORT void skv_mem_free(skv_mem *m);

#ifdef __cplusplus
}
#endif
#endif
