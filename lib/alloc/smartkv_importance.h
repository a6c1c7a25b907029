/* smartkv_importance.h -- per-token importance from replayed attention.
 *
 * Replay decoding over one trace layer: every query position t (the prefill
 * block too, causally: query t sees keys 0..t) and every query head gives
 *   a_t = softmax(q_t . K[0..t] / sqrt(head_dim)).
 * The query heads that share a KV head (GQA) are folded by their mean, so a
 * KV head's a_t still sums to 1.  Each mode is a weighted sum over queries,
 *   I[j] = post(j) * sum_t w(t) * a_t[j],
 * computed streaming (O(tokens) memory per head, never a T x T matrix):
 *
 *   S = n_prefill + R * floor((n_tokens - n_prefill) / R)   (R = realloc)
 *   is the last reallocation point: after the prefill and every R decode
 *   steps.  The online modes see the queries t < S only (tokens j >= S have
 *   importance 0; skv-alloc protects them as --recent).
 *   ema:        I <- decay * I + (1 - decay) * a_t for t = 0..S-1, from 0:
 *               w(t) = (1 - decay) * decay^(S-1-t)   (w underflowing to 0
 *               in double precision ends the replay early)
 *   cumulative: w(t) = 1 for t < S
 *   normalized: w(t) = 1 for t < S, post(j) = 1 / (S - j) (the number of
 *               queries that could see token j), 0 for j >= S
 *   window:     w(t) = 1 for S - W <= t < S
 *   oracle:     w(t) = 1 for the decode steps t >= n_prefill (all queries
 *               when n_prefill is 0 or n_tokens): the attention each token
 *               will receive, known in hindsight (for regret measurements)
 */
#ifndef SMARTKV_IMPORTANCE_H
#define SMARTKV_IMPORTANCE_H

#include "smartkv_trace.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum skv_imp_mode {
    SKV_IMP_EMA = 1,
    SKV_IMP_CUMULATIVE,
    SKV_IMP_NORMALIZED,
    SKV_IMP_WINDOW,
    SKV_IMP_ORACLE,
};

/* Flags for benchmarks (the tracking-overhead measurement). */
#define SKV_IMP_F_OUTPUT 0x1u   /* also compute the attention outputs a_t . V (discarded) */
#define SKV_IMP_F_NO_TRACK 0x2u /* replay attention only: no importance accumulation */

#define SKV_MAX_THREADS 256u

typedef struct skv_imp_cfg {
    uint32_t mode;      /* enum skv_imp_mode */
    double decay;       /* ema: in [0, 1) */
    uint32_t realloc;   /* R >= 1 */
    uint32_t window;    /* W >= 1 */
    uint32_t threads;   /* 0 = one per online CPU */
    uint32_t flags;     /* SKV_IMP_F_* */
} skv_imp_cfg;

SKV_EXPORT void skv_imp_defaults(skv_imp_cfg *c); /* ema, 0.9, 16, 32, 0 */
SKV_EXPORT int skv_imp_mode_parse(const char *s);  /* <0 with a message */
SKV_EXPORT const char *skv_imp_mode_name(uint32_t mode);
SKV_EXPORT int skv_imp_cfg_check(const skv_imp_cfg *c);

/* The last reallocation point S described above. */
SKV_EXPORT uint64_t skv_imp_snapshot(const skv_imp_cfg *c, uint64_t n_tokens, uint64_t n_prefill);
/* The queries replayed: [*t0, *t1), every query outside has weight 0. */
SKV_EXPORT void skv_imp_query_range(const skv_imp_cfg *c, uint64_t n_tokens, uint64_t n_prefill,
                                    uint64_t *t0, uint64_t *t1);
/* Weight w(t) of query t (0 outside the replayed range). */
SKV_EXPORT double skv_imp_weight(const skv_imp_cfg *c, uint64_t n_tokens, uint64_t n_prefill,
                                 uint64_t t);

/* Importance of one layer: imp[n_kv_heads][n_tokens] from the layer's
 * float32 Q and K (V only with SKV_IMP_F_OUTPUT).  entropy (may be NULL)
 * receives per KV head the mean attention entropy (nats) over the replayed
 * queries and query heads; with NULL it is not computed (a multiply-add
 * per score; only layer-aware reads it).  Returns 0 or <0 (SKV_EFORMAT for non-finite
 * attention: NaN or Inf in Q or K). */
SKV_EXPORT int skv_importance_layer(const skv_imp_cfg *c, const skv_trace_hdr *h,
                                    const skv_layer *L, float *imp, float *entropy);

/* --share-layers: replace imp[l][h][j] by its sum over layers, in every layer. */
SKV_EXPORT void skv_importance_share_layers(float *imp, uint32_t n_layers, uint32_t n_kv_heads,
                                            uint64_t n_tokens);

#ifdef __cplusplus
}
#endif
#endif
