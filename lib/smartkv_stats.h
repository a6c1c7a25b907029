/* smartkv_stats.h -- fidelity of attention outputs (skv-stats compare and
 * sweep) and the Pareto front of fidelity against bytes. */
#ifndef SMARTKV_STATS_H
#define SMARTKV_STATS_H

#include "smartkv_attend.h"

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

#ifdef __cplusplus
}
#endif
#endif
