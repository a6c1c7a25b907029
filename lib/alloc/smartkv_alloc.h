/* smartkv_alloc.h -- bit allocation: which width each cached token gets.
 *
 * An allocation gives every (layer, KV head, token) of a trace one width
 * from {0, 2, 3, 4, 8, 16} (0 = evicted), chosen so that the packed cache
 * skv-quant writes (smartkv_pack.h byte model) fits a byte budget
 *   beta = cache bytes (PKHD + all PBKT chunks, framing included)
 *          / fp16 K+V bytes (2 * n_layers * n_kv_heads * n_tokens * head_dim * 2).
 *
 * The ALHD/ALOC records and their codecs are in smartkv_alhd.h.
 */
#ifndef SMARTKV_ALLOC_H
#define SMARTKV_ALLOC_H

#include "smartkv_alhd.h"
#include "smartkv_pack.h"
#include "smartkv_quant.h"
#include "smartkv_trace.h"
#include "smartkv_importance.h"

#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- widths ---- */
/* Parse "2,4,8" into a width mask; <0 (message set) on a bad list. */
SKV_EXPORT int skv_width_mask_parse(const char *s, uint32_t *mask);
/* Format a mask as "2,3,4,8,16" into buf (always NUL-terminated). */
SKV_EXPORT void skv_width_mask_format(uint32_t mask, char *buf, size_t n);

/* ---- the byte model ---- */
/* fp16 bytes of K and V: 2 * n_layers * n_kv_heads * n_tokens * head_dim * 2. */
SKV_EXPORT uint64_t skv_alloc_fp16_bytes(uint32_t n_layers, uint32_t n_kv_heads,
                                         uint64_t n_tokens, uint32_t head_dim);
/* File bytes of the PKHD chunk skv-quant writes (framing included). */
SKV_EXPORT uint64_t skv_alloc_pkhd_bytes(const skv_qcfg *c);
/* Predicted cache bytes of an allocation bits[n_layers][n_kv_heads][n_tokens]:
 * sum of skv_bucket_file_bytes over (layer, kv head, width) plus the PKHD. */
SKV_EXPORT int skv_alloc_cache_bytes(const skv_qcfg *c, uint32_t n_layers, uint32_t n_kv_heads,
                                     uint64_t n_tokens, const uint8_t *bits, uint64_t *bytes);

/* ---- the error model ----
 * Expected squared error (K and V together) of storing one token at each
 * width, err[i] for width skv_bit_widths[i]:
 *   width 0:  sum of x^2 over K and V (the token is gone)
 *   2..8:     sum over scale groups of n_g * step^2 / 12 (uniform rounding
 *             error), step = (max - min) / (2^b - 1) for asym,
 *             max|x| / (2^(b-1) - 1) for sym, max|x| / 2^(b-1) for
 *             ggml below 8 bits (q4_0's rule; q8_0's is sym's)
 *   16:       sum of x^2 * 2^-21 / 12 (fp16 rounding, half an ulp ~ |x| 2^-11)
 * made non-increasing in the width; non-finite values become 1e30. */
SKV_EXPORT void skv_alloc_token_errors(const skv_qcfg *c, const float *k, const float *v,
                                       uint64_t n, float *err /* [n][SKV_NBITS] */);

/* ---- matrix entropy of keys (uncomp) ----
 * g is the Gram matrix of unit-normalised key rows as its upper triangle,
 * row by row (SKV_GRAM_LEN(d) floats, zeroed to start), *count the rows in
 * it.  skv_gram_add adds n rows k[n][d] (zero or non-finite rows skipped);
 * skv_matrix_entropy sets *h = -sum l ln l over the eigenvalues l of
 * g / count (0 with no rows).  0 or SKV_ENOMEM. */
#define SKV_GRAM_LEN(d) ((size_t)(d) * ((size_t)(d) + 1) / 2)
SKV_EXPORT void skv_gram_add(float *g, uint64_t *count, uint32_t d, const float *k, uint64_t n);
SKV_EXPORT int skv_matrix_entropy(const float *g, uint64_t count, uint32_t d, double *h);

/* ---- per-head scores (razor) ----
 * RazorAttention's induction and echo scores of every (layer, query head),
 * as skv-trace heads writes them (text, heads.c; skv_induction_scores in
 * smartkv_model.h computes them with the model). */
typedef struct skv_head_scores {
    uint32_t n_layers, n_heads;
    float *induction, *echo;  /* [n_layers][n_heads], in [0, 1] */
} skv_head_scores;
/* Read a scores file; 0, or <0 with "PATH: line N: what" (hs left empty). */
SKV_EXPORT int skv_head_scores_read(const char *path, skv_head_scores *hs);
SKV_EXPORT int skv_head_scores_write(FILE *f, const skv_head_scores *hs);
SKV_EXPORT void skv_head_scores_free(skv_head_scores *hs);
/* RazorAttention's retrieval heads: the query heads in the top 14% by
 * induction score or the top 1% by echo score (the paper's protection
 * ratios; a score of 0 never counts); a KV head is a retrieval head when
 * one of its query heads is.  mask[n_layers][n_kv_heads] = 1 for those.
 * SKV_EINVAL when the shapes do not fit. */
#define SKV_RAZOR_INDUCTION 0.14
#define SKV_RAZOR_ECHO 0.01
SKV_EXPORT int skv_razor_mask(const skv_head_scores *hs, uint32_t n_layers, uint32_t n_kv_heads,
                              uint8_t *mask);

/* ---- policies ----
 * One file per policy in lib/alloc/policy/; this list names each once
 * (X(ENUM_SUFFIX, file_symbol)): a new policy is one file plus one line. */
#define SKV_POLICY_LIST(X) \
    X(SMARTKV, smartkv)         /* marginal-gain heap */ \
    X(GREEDY, greedy)           /* rank thresholds 8/4/2 fitted to the budget */ \
    X(OPTIMAL, optimal)         /* Lagrangian MCKP over convex hulls + fix-up */ \
    X(UNIFORM, uniform)         /* every token uniform_bits */ \
    X(UNIFORM_PROTECT, uniform_protect) /* uniform_bits, sinks + recent at the top */ \
    X(RANDOM, random)           /* smartkv's histogram, shuffled */ \
    X(POSITION, position)       /* newest tokens highest */ \
    X(LAYER_AWARE, layer_aware) /* per-layer budgets from attention entropy */ \
    X(Q8_0, q8_0)               /* llama.cpp q8_0 blocks for K and V */ \
    X(Q4_0, q4_0)               /* llama.cpp q4_0 blocks for K and V */ \
    X(STREAMING, streaming)     /* StreamingLLM: sinks + recent window */ \
    X(H2O, h2o)                 /* H2O: heavy hitters + recent window */ \
    X(SNAPKV, snapkv)           /* SnapKV: observation-window votes, pooled */ \
    X(MIKV, mikv)               /* MiKV: h2o's choice high, the rest low-bit */ \
    X(SLIDING, sliding)         /* sliding window: recent tokens only, no sinks */ \
    X(DYNAMICKV, dynamickv)     /* DynamicKV: layer budgets from window top-k counts */ \
    X(UNCOMP, uncomp)           /* UNComp: head budgets from key matrix entropy */ \
    X(RAZOR, razor)             /* RazorAttention: retrieval heads keep everything */ \
    X(ROCKETKV, rocketkv)       /* RocketKV: SnapKV-style eviction + top-k at decode */ \
    X(KIVI, kivi)               /* KIVI: keys per channel, fp16 residual */ \
    X(ATSKV, atskv)             /* ATSKV: learned relevance over adaptive thresholds */

enum skv_policy {
    SKV_POLICY_NONE = 0,
#define SKV_POLICY_ENUM_(ID, sym) SKV_POLICY_##ID,
    SKV_POLICY_LIST(SKV_POLICY_ENUM_)
#undef SKV_POLICY_ENUM_
    SKV_POLICY_END          /* one past the last policy */
};

/* What a policy needs and does (skv_policy_flags). */
enum skv_policy_flag {
    SKV_PF_BUDGET = 1u << 0,     /* spends a budget beta (required) */
    SKV_PF_PROTECT = 1u << 1,    /* keeps sinks and recent tokens at the top width */
    SKV_PF_IMPORTANCE = 1u << 2, /* reads the tracked importance */
    SKV_PF_ENTROPY = 1u << 3,    /* reads per-(layer, head) attention entropy */
    SKV_PF_PER_LAYER = 1u << 4,  /* cannot share widths across layers */
    SKV_PF_FIXED = 1u << 5,      /* widths fixed by the name (uniform:N), budget optional */
    SKV_PF_EVICT = 1u << 6,      /* two widths: 0 (evicted) and the top allowed one */
    SKV_PF_LOWBIT = 1u << 7,     /* two widths: the lowest non-zero and the top allowed */
    SKV_PF_CUMULATIVE = 1u << 8, /* importance is accumulated attention (any other mode
                                    the caller asks for is replaced) */
    SKV_PF_VOTES = 1u << 9,      /* importance is the attention of the last W queries
                                    before the allocation (SnapKV's observation window;
                                    W = the recent window) */
    SKV_PF_LAYOUT = 1u << 10,    /* fixes the quantizer layout (group, mode) */
    SKV_PF_KENTROPY = 1u << 11,  /* reads the matrix entropy of each (layer, KV head)'s
                                    keys (skv_alloc_problem.kentropy) */
    SKV_PF_HEADS = 1u << 12,     /* reads per-head scores (skv_alloc_cfg.heads) */
    SKV_PF_RESIDUAL = 1u << 13,  /* SKV_PF_FIXED with the newest tokens at 16 bits: the
                                    first floor(T / recent) * recent tokens at N (KIVI) */
    SKV_PF_RELEVANCE = 1u << 14, /* importance is ATSKV's learned relevance at the trace's
                                    end (skv_alloc_cfg.rlv; skv_alloc_filter computes it) */
};

/* RocketKV (rocketkv.c; stage 2 in the online cache): pages of
 * SKV_ROCKET_PAGE kept tokens, each with the element-wise min and max of
 * its keys in fp16 (SKV_ROCKET_PAGE_BYTES(d) bytes per page and KV head);
 * at decode every query attends to the top 1/SKV_ROCKET_TOPK_DIV of the
 * held tokens, ranked by its SKV_ROCKET_TOPR(d) largest |q| dimensions
 * against the page bounds. */
#define SKV_ROCKET_PAGE 16
#define SKV_ROCKET_PAGE_BYTES(d) ((uint64_t)(d) * 2 * 2)
#define SKV_ROCKET_TOPK_DIV 2
#define SKV_ROCKET_TOPR(d) ((d) / 4 ? (d) / 4 : 1)
/* auxiliary bytes of a unit holding n tokens */
#define SKV_ROCKET_AUX(n, d) \
    (((uint64_t)(n) + SKV_ROCKET_PAGE - 1) / SKV_ROCKET_PAGE * SKV_ROCKET_PAGE_BYTES(d))

/* SnapKV's pooling of the votes over positions (avg_pool1d, kernel 5,
 * stride 1, zero padding, as FasterDecoding/SnapKV's default). */
#define SKV_SNAPKV_KERNEL 5

typedef struct skv_alloc_cfg {
    uint32_t policy;        /* enum skv_policy */
    uint32_t uniform_bits;  /* uniform:N */
    double budget;          /* beta; 0 = none (uniform only) */
    uint32_t width_mask;    /* allowed widths */
    uint32_t sinks, recent; /* protected tokens at the top allowed width */
    uint64_t seed;          /* random */
    uint32_t share_layers;  /* one width per (kv head, token) for all layers */
    skv_qcfg qcfg;
    const skv_head_scores *heads; /* razor: induction / echo scores (not owned) */
    /* prune-merge, offline (skv_alloc_filter only; skv_pm_alloc): one prune at
     * the end of the trace.  Each (layer, KV head) keeps the sinks, the recent
     * window and the pm_max_cache tokens with the most attention from the last
     * pm_lookback queries (importance mode window, summed over the query heads
     * of the KV head); the ALHD asks skv-quant to merge the others into at most
     * pm_clusters centroids (SKV_ALHD_MERGE; 0 = pruned only).  With
     * pm_max_cache 0, B follows from the budget with the kept tokens at the top
     * allowed width.  With both B and a budget, `policy` (smartkv) spends the
     * budget, less the centroids' bytes, on the kept tokens over the allowed
     * widths (merge + mixed precision); otherwise kept tokens take the top
     * width.  Centroids are stored at the top allowed width. */
    uint32_t prune_merge;   /* 1: prune-merge */
    uint32_t pm_max_cache;  /* B; 0 = from the budget */
    uint32_t pm_clusters;   /* K <= SKV_CNTR_MAX */
    uint32_t pm_lookback;   /* D >= 1 */
    const struct skv_rlv_model *rlv;       /* atskv: relevance weights (not owned) */
    const struct skv_rlv_vocab *rlv_voc;   /* atskv: token classes, or NULL */
} skv_alloc_cfg;

SKV_EXPORT void skv_alloc_cfg_defaults(skv_alloc_cfg *c);
/* Apply what the policy fixes, once the policy is set: the width of q8_0 /
 * q4_0 and their layout (groups of 32, mode ggml, K and V); the two widths
 * of the eviction (0 and the top of width_mask) and low-bit (the lowest
 * non-zero and the top of width_mask) policies.  Idempotent; <0 (message
 * set) when the width mask leaves the policy nothing to choose. */
SKV_EXPORT int skv_alloc_cfg_resolve(skv_alloc_cfg *c);
/* The importance mode a policy needs (SKV_IMP_CUMULATIVE for h2o and mikv,
 * SKV_IMP_WINDOW for snapkv), or `mode` when it takes the caller's. */
SKV_EXPORT uint32_t skv_policy_imp_mode(uint32_t policy, uint32_t mode);
/* "smartkv", "uniform:4", "uniform-protect:4", ...; <0 with a message if unknown. */
SKV_EXPORT int skv_policy_parse(const char *s, uint32_t *policy, uint32_t *uniform_bits);
/* The name skv_policy_parse reads back: "uniform:4" for the policies whose
 * width is given in the name (SKV_PF_FIXED without fixed bits), else the name. */
SKV_EXPORT void skv_policy_format(uint32_t policy, uint32_t uniform_bits, char *buf, size_t n);
SKV_EXPORT const char *skv_policy_name(uint32_t policy);
/* SKV_PF_* of a policy; 0 for an unknown one. */
SKV_EXPORT unsigned skv_policy_flags(uint32_t policy);
/* One line describing a policy, or NULL for an unknown one. */
SKV_EXPORT const char *skv_policy_summary(uint32_t policy);

/* The allocation problem over a whole trace. */
typedef struct skv_alloc_problem {
    uint32_t n_layers, n_kv_heads;
    uint64_t n_tokens;
    const float *importance; /* [n_layers][n_kv_heads][n_tokens], finite, >= 0 */
    const float *err;        /* [n_layers][n_kv_heads][n_tokens][SKV_NBITS] */
    const float *entropy;    /* [n_layers][n_kv_heads]; layer-aware only, else may be NULL */
    /* Online caches (may be NULL): the width each token is stored at now
     * (16 for tokens not yet allocated), same shape as importance.  A token
     * stored at 0 is gone: it stays evicted under every policy.  The two-width
     * policies (SKV_PF_EVICT, SKV_PF_LOWBIT) raise no token stored below the
     * top width (its precision is lost). */
    const uint8_t *stored;
    /* [n_layers][n_kv_heads] matrix entropy of the keys so far
     * (skv_matrix_entropy); SKV_PF_KENTROPY policies only, else may be NULL */
    const float *kentropy;
} skv_alloc_problem;

typedef struct skv_alloc_result {
    uint64_t fp16_bytes;     /* denominator of beta */
    uint64_t budget_bytes;   /* floor(beta * fp16_bytes), 0 when none */
    uint64_t min_bytes;      /* smallest cache the settings allow */
    uint64_t bytes;          /* predicted cache bytes of the allocation */
    double objective;        /* sum of importance * expected error */
    double bound;            /* optimal only: lower bound on the objective (the
                                linear-cost relaxation), else 0 */
    uint64_t hist[SKV_NBITS];/* tokens per width over all (layer, kv head) */
    uint64_t aux_bytes;      /* state the policy keeps beside the cache (rocketkv's
                                page key bounds); bytes + aux_bytes fit the budget */
} skv_alloc_result;

/* Solve: fill bits[n_layers][n_kv_heads][n_tokens].  With share_layers the
 * importance must be equal across layers (skv_importance_share_layers).
 * SKV_EINVAL (message set) for settings that cannot work: budget below the
 * smallest cache, uniform width not allowed, bad qcfg. */
SKV_EXPORT int skv_alloc_solve(const skv_alloc_cfg *cfg, const skv_alloc_problem *p,
                               uint8_t *bits, skv_alloc_result *res);
/* The offline prune-merge allocation (see skv_alloc_cfg): bits as
 * skv_alloc_solve, res->bytes includes the CNTR chunks skv-quant will
 * write (min(K, evicted tokens) centroids per head at the top width).
 * p->importance must be the window importance of the last pm_lookback
 * queries.  SKV_EINVAL (message set) when the budget cannot hold the
 * protected tokens and the centroids. */
SKV_EXPORT int skv_pm_alloc(const skv_alloc_cfg *cfg, const skv_alloc_problem *p, uint8_t *bits,
                            skv_alloc_result *res);
/* Sum of importance * err[width] over every (layer, kv head, token). */
SKV_EXPORT double skv_alloc_objective(const skv_alloc_problem *p, const uint8_t *bits);

/* ---- a whole allocation in memory ---- */
typedef struct skv_alloc {
    skv_alloc_hdr hdr;
    uint8_t *bits;      /* [n_layers][n_kv_heads][n_tokens] */
    float *importance;  /* same shape */
    uint64_t next;      /* collector: ALOC chunks seen so far */
    int have_hdr;
} skv_alloc;

/* Allocate bits/importance for a header (zeroed).  NULL on error. */
SKV_EXPORT skv_alloc *skv_alloc_new(const skv_alloc_hdr *h);
SKV_EXPORT void skv_alloc_free(skv_alloc *a);
/* Write ALHD and every ALOC in order. */
SKV_EXPORT int skv_alloc_write(skv_stream *s, const skv_alloc *a);
/* Collect an allocation chunk by chunk: pass every ALHD/ALOC chunk in
 * stream order; *a is created at the ALHD.  Checks order and shape.
 * skv_alloc_collect_done() checks that every ALOC arrived. */
SKV_EXPORT int skv_alloc_collect(skv_alloc **a, const skv_chunk *c);
SKV_EXPORT int skv_alloc_collect_done(const skv_alloc *a);
/* Check an allocation against a trace header (shape and head_dim). */
SKV_EXPORT int skv_alloc_match_trace(const skv_alloc_hdr *a, const skv_trace_hdr *t);

/* ---- the skv-alloc filter ----
 * Read a trace from in, copy it to out unchanged (ancillary chunks too;
 * an earlier allocation is dropped), replay its attention layer by layer
 * for importance, solve, and append ALHD + ALOCs before the end.  *out_alloc
 * (if not NULL) receives the allocation, *res the summary.  Returns 0 or <0;
 * SKV_EINVAL means a setting does not fit this trace (budget too small, group
 * not dividing head_dim, ...). */
SKV_EXPORT int skv_alloc_filter(skv_stream *in, skv_stream *out, const skv_alloc_cfg *acfg,
                                const skv_imp_cfg *icfg, skv_alloc **out_alloc,
                                skv_alloc_result *res);

#ifdef __cplusplus
}
#endif
#endif
