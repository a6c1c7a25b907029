/* smartkv_evalcache.h -- a compressed KV cache in the model's decode loop.
 *
 * An skv_kv_cache (smartkv_model.h) that stores K/V the way smartkv would
 * in production, so that end-to-end quality (perplexity, KL divergence,
 * retrieval) can be measured with the compression in the loop:
 *
 *   - New tokens' K and V enter "pending" at full precision: fp16 (the
 *     values rounded to IEEE half, i.e. exactly what an fp16 cache holds;
 *     kept as float32 in memory, counted as 16-bit rows by the byte model).
 *   - Importance is tracked from the model's real attention as it runs (the
 *     prefill's query rows included): per query head, for every token,
 *       ema         I <- decay * I + (1 - decay) * a_t        (default, 0.9)
 *       cumulative  I <- I + a_t
 *       normalized  I = (sum_t a_t) / (number of queries that saw the token)
 *     The query heads of one KV head are folded by their mean (as
 *     skv_importance_layer does for a replayed trace).
 *   - Every `realloc` tokens (R, default 16) the allocator
 *     (skv_alloc_solve, any policy) re-assigns a width to every token held
 *     so far under the budget beta, and each (layer, KV head) is rebuilt
 *     as one bucket per width in the packed PBKT layout (smartkv_pack.h;
 *     each payload is checked with skv_pbkt_decode).  A reallocation
 *     happens when an append to layer 0 starts at a position >= R tokens
 *     past the last one (the model appends layer 0 first), or when the
 *     caller asks (skv_ec_realloc, e.g. right after a prefill made under
 *     skv_ec_hold).
 *   - Attention runs on the packed buckets plus the pending fp16 rows with
 *     the fused kernels of skv-attend (skv_attend_rows).
 *
 * What a real cache can and cannot do.  No full-precision copy of an
 * allocated token is kept: a token whose width is unchanged keeps its bytes
 * (copied verbatim), a downgrade requantizes the stored, dequantized value,
 * and an upgrade cannot win back the precision already lost (the stored
 * value is requantized at the wider width: more bytes, same error).  The
 * allocator is told so: for an allocated token currently at width c, the
 * expected error at any width >= c is its error at c (the error model of
 * skv_alloc_token_errors computed once, from the fp16 values, when the token
 * is first allocated), so upgrading it gains nothing.  New tokens therefore
 * stay at fp16 until their first allocation, and the library's protected
 * window (alloc.recent newest tokens, alloc.sinks first tokens) keeps the
 * most recent ones at the top width.
 *   The "idealised" mode (ideal = 1) keeps a full-precision copy of every
 * token, requantizes from it on every width change and gives the allocator
 * the plain error model (upgrades restore precision).  It is not a
 * realisable cache (it holds the fp16 cache besides the compressed one);
 * it measures what irreversibility costs.
 *
 * Accounting.  bytes is the library byte model of the whole compressed
 * cache at this moment: skv_alloc_pkhd_bytes + for every (layer, KV head,
 * width) skv_bucket_file_bytes(tokens at that width), pending tokens counted
 * at 16 bits; beta = bytes / fp16 K+V bytes of the same tokens.  The
 * tracking state (importance per query head, the per-token error model and
 * width) is reported separately as meta_bytes.
 *
 * Grouped layout (layout = SKV_EC_GROUPED, lib/eval/ecgroup.c; skv-eval(1)
 * documents the damage model and every byte).  Keys per token or per
 * channel over aligned groups of key_tokens tokens (one key width per
 * group), optionally after a randomized Hadamard rotation (queries rotated
 * alike); values per token, optionally quantized in a rotated basis and
 * decoded back (rotate_values); scales and zero points fp16 or 8-bit codes
 * on per-group fp16 grids (param_bits).  Tokens stay in a residual and leave it
 * `realloc` tokens at a time (then the allocation is solved again); the
 * first alloc.sinks tokens stay as they entered.  Residual and sinks are
 * fp16, or quantized per token at protect_bits (8 or 4) when they enter.
 * Key and value widths are separate (kv_split) or joint.  The solver spends the budget (every byte, tracking
 * state included) on the upgrade saving the most predicted damage per byte
 * (err_model: importance x squared error; importance x the squared error
 * min-max rounding gives on average, (range / (2^bits - 1))^2 / 12 per
 * number but a span's minimum and maximum, from each span's range; or the
 * logit model: key error under the recent queries' second moments,
 * non-linear in the attention it moves).  Held groups only move down,
 * requantized from what they decode to.  Rows hold exactly what their
 * codes decode to; the bytes are those of the packed codes, fp16 parameters, width map, pending rows, headers and
 * tracking state (one byte of importance per token and KV head).  kivi:N
 * (skv_ec_kivi_parse) is this layout at fixed widths, no sinks, no tracking.
 *
 * Kinds.  SKV_EC_FP16 holds every token pending forever, as IEEE fp16 rows
 * (an fp16 dense cache: the reference), SKV_EC_F32 the same as float32
 * rows without rounding (equals the model's float32 dense cache); neither
 * tracks nor allocates.
 *
 * Threads: the model calls attend concurrently for different query heads
 * of one layer; tracking state is per query head, so this is safe.  Append,
 * truncate and reallocation are single-threaded (as the model calls them).
 */
#ifndef SMARTKV_EVALCACHE_H
#define SMARTKV_EVALCACHE_H

#include "smartkv_alloc.h"
#include "smartkv_merge.h"
#include "smartkv_model.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum skv_ec_kind {
    SKV_EC_COMPRESS = 0,    /* tracked, allocated, packed */
    SKV_EC_FP16 = 1,        /* reference: fp16 rows, never compressed */
    SKV_EC_F32 = 2,         /* reference: float32 rows, never compressed */
    SKV_EC_PRUNE_MERGE = 3, /* prune + merge (smartkv_merge.h), configured by pm */
    SKV_EC_ATSKV = 4,       /* ATSKV: learned relevance, active/passive tiers (smartkv_atskv.h) */
    SKV_EC_ZACK = 5,        /* ZACK: low-rank K and V per (layer, KV head), configured by zack */
};

struct skv_rlv_model;
struct skv_zack_basis;

typedef struct skv_ec_cfg {
    double decay;           /* ema, in [0, 1) */
    skv_alloc_cfg alloc;    /* policy, budget, widths, sinks, recent, seed, qcfg
                               (head_dim and groups 0 are filled from the model) */
    uint32_t kind;          /* enum skv_ec_kind */
    uint32_t imp_mode;      /* SKV_IMP_EMA, SKV_IMP_CUMULATIVE or SKV_IMP_NORMALIZED */
    uint32_t realloc;       /* R >= 1 */
    int ideal;              /* requantize from a full-precision copy */
    int kernel;             /* enum skv_att_kernel (0 = auto) */
    /* Grouped layout (layout = SKV_EC_GROUPED; see "Grouped layout" above). */
    uint32_t layout;        /* enum skv_ec_layout */
    uint32_t k_layout;      /* enum skv_ec_klayout */
    uint32_t rotate;        /* 1: randomized Hadamard rotation of keys (and queries) */
    uint32_t rotate_values; /* 1: values quantized in a randomized Hadamard basis (each
                               row decodes back to the model's basis) */
    uint32_t kv_split;      /* 1: separate widths for the key and the value of a token */
    uint32_t clip;          /* grouped: 1 sets each span's stored range at widths up to 4
                               bits by a search for the least squared error instead of
                               its minimum and maximum (ecgroup.c, span_params) */
    uint32_t err_model;     /* enum skv_ec_err */
    uint32_t key_tokens;    /* G: tokens per per-channel key group (default 32) */
    uint32_t kivi_bits;     /* kivi:N (fixed widths, no sinks, no tracking); 0 otherwise */
    uint32_t imp_power;     /* grouped: 2 tracks the EMA of p^2 (the output error of
                               independent row errors grows with sum p_i^2 e_i^2), 1
                               (default when 0) the EMA of p */
    uint32_t protect_bits;  /* grouped: width of the sinks and the residual, per token
                               (16 = fp16, the default when 0; 8 or 4) */
    uint32_t param_bits;    /* grouped: 8 stores the scale and zero point of per-channel
                               key groups and of values as 8-bit codes on a grid set by
                               fp16 super-parameters (a minimum, a maximum minimum and a
                               maximum range) per key group and per residual block of
                               values; 16 (default when 0): fp16 parameters */
    int keys_by_age;        /* grouped, split K/V widths, smartkv (others ignore it): key
                               groups weighted by 1/age (position's weights, scaled to
                               sum 1) instead of the tracked attention; values keep it
                               (an ablation: where the attention guidance pays) */
    double head_weight;     /* grouped, not uniform: > 0 scales each (layer, KV head)'s
                               predicted damage by (gain / |x|^2)^head_weight, gain the
                               output projection's of its query heads (what an error in
                               its attention output moves the residual stream by), |x|^2
                               the geometric mean over the rows entering the layer
                               (needs skv_atskv_attach; its state is counted); 0: every
                               head alike; at most 1 */
    double recency;         /* grouped, smartkv: mass of a 1/age prior (normalized to sum
                               1 over the held tokens) added to the tracked attention,
                               which sums to 1 per query; 0 = none */
    double prior;           /* attention every token is assumed to draw, as a multiple of
                               1/T, added to the importance (grouped layout; <= 0: 0.05) */
    skv_pm_cfg pm;          /* SKV_EC_PRUNE_MERGE: its budget, sinks and recent are
                               taken from alloc; realloc is the evaluation block */
    const struct skv_rlv_model *rlv;  /* ATSKV: relevance weights (skv-alloc train) */
    uint32_t active_bits;   /* ATSKV: active rows quantized per token at 4 or 8 bits (groups
                               of 32 channels, fp16 scale and minimum); 0 or 16: fp16 */
    uint32_t replan;        /* grouped: each held row re-planned at every replan-th
                               residual flush: at flush f the held key groups g with
                               g % replan == f % replan (and their tokens' values), beside
                               the groups leaving the residual; the others keep their
                               widths (0 or 1: every held row at every flush) */
    const char *offload;    /* ATSKV: the passive tier in this file instead of host memory
                               (created, refused if it exists; closed and removed with the
                               cache); NULL: host memory */
    const struct skv_zack_basis *zack;  /* SKV_EC_ZACK: the calibration's bases
                                           (skv_zack_calibrate); its budget, sinks and
                                           recent are taken from alloc, realloc is R */
} skv_ec_cfg;

/* imp_mode of the grouped layout (policy smartkv): the learned relevance of
 * rlv (skv-alloc train, smartkv_relevance.h) replaces the attention EMA as
 * the importance.  Its state (per token and KV head the attention features,
 * per token and layer w_h . h, the token ids, the weights) is counted in
 * meta_bytes, inside the budget.  The caller must attach the session and
 * pass the token ids (skv_atskv_attach, skv_atskv_tokens). */
#define SKV_EC_IMP_ATSKV 16u
/* The same with the compact tracker (smartkv_relevance.h: per token one
 * byte, per group of 32 tokens one summed tracker) instead of 28 bytes per
 * token and KV head; w_h . h then held as fp16. */
#define SKV_EC_IMP_ATSKV_COMPACT 17u
#define SKV_EC_IMP_IS_ATSKV(m) ((m) == SKV_EC_IMP_ATSKV || (m) == SKV_EC_IMP_ATSKV_COMPACT)

enum skv_ec_layout {
    SKV_EC_PACKED = 0,      /* PBKT buckets, one width per token (the library's format) */
    SKV_EC_GROUPED = 1,     /* key groups, separate K/V widths, byte model below */
};
enum skv_ec_klayout {
    SKV_EC_KEYS_TOKEN = 0,  /* per token, groups of alloc.qcfg.k_group channels */
    SKV_EC_KEYS_CHANNEL = 1,/* per channel over aligned groups of key_tokens tokens */
};
enum skv_ec_err {
    SKV_EC_ERR_IMP_MSE = 0, /* importance x squared error of K and V */
    SKV_EC_ERR_LOGIT = 1,   /* attention damage: logit error under the recent queries */
    SKV_EC_ERR_IMP_RANGE = 2,/* importance x the squared error the rows' ranges predict */
};

/* Parse "kivi:N" (N = 2, 3, 4 or 8) into c (grouped layout, keys per
 * channel over 32 tokens, values per token in groups of 32 channels, the
 * residual = c->realloc).  Returns 1 if s names kivi, 0 if not, <0 on a bad
 * width. */
SKV_EXPORT int skv_ec_kivi_parse(const char *s, skv_ec_cfg *c);

/* beta (every byte, tracking state included) of the smallest cache these
 * settings allow once n tokens are held and allocated: what a budget must
 * at least be.  Returns 0 or <0. */
SKV_EXPORT int skv_ec_min_beta(const skv_ec_cfg *c, uint32_t n_layers, uint32_t n_heads,
                               uint32_t n_kv_heads, uint32_t head_dim, uint64_t n, double *beta);

/* smartkv, budget 0.25, library allocation defaults, ema 0.9, R = 16. */
SKV_EXPORT void skv_ec_defaults(skv_ec_cfg *c);
/* The method's configuration on top of c (skv-eval --method): the grouped
 * layout, keys per channel over 32 tokens after a randomized Hadamard
 * rotation, values quantized in a rotated basis, separate K/V widths, the
 * imp-range error model, a 32-token residual (R = 32), sinks and residual
 * at 8 bits, 8-bit scales and zero points, clipped ranges, head weights
 * 0.5 and a recency prior of 0.25.  The policy, budget and widths are left
 * as they are. */
SKV_EXPORT void skv_ec_method(skv_ec_cfg *c);
/* Check a configuration (policy, importance mode, decay, R, widths). */
SKV_EXPORT int skv_ec_cfg_check(const skv_ec_cfg *c);

/* A cache for a model shape and at most `capacity` positions; free with
 * skv_kv_cache_free.  NULL on error (message set). */
SKV_EXPORT skv_kv_cache *skv_ec_new(const skv_ec_cfg *c, uint32_t n_layers, uint32_t n_heads,
                                    uint32_t n_kv_heads, uint32_t head_dim, uint64_t capacity);
/* 1 if c was made by skv_ec_new. */
SKV_EXPORT int skv_ec_is(const skv_kv_cache *c);
/* Allocate now, over every token appended so far (every layer must hold
 * the same positions).  No-op when nothing is pending or for the reference
 * kinds.  Returns 0 or <0. */
SKV_EXPORT int skv_ec_realloc(skv_kv_cache *c);
/* hold = 1: no automatic reallocation (a prefill kept at fp16, then
 * skv_ec_realloc); 0: back to every R tokens. */
SKV_EXPORT void skv_ec_hold(skv_kv_cache *c, int hold);

typedef struct skv_ec_stats {
    uint64_t n_tokens;      /* positions held (layer 0) */
    uint64_t n_alloc;       /* covered by the last allocation; the rest are pending */
    uint64_t bytes;         /* byte model of the cache now (see above) */
    uint64_t fp16_bytes;    /* fp16 K+V bytes of n_tokens */
    uint64_t mem_bytes;     /* K/V bytes actually held: payloads, pending rows
                               (float32; fp16 in the fp16 kind), the idealised copy */
    uint64_t meta_bytes;    /* tracking state: importance, error model, widths */
    uint64_t hist[SKV_NBITS];  /* allocated rows per width (skv_bit_widths order) */
    /* counters since creation or skv_ec_stats_reset: */
    uint64_t n_realloc;     /* reallocations */
    double alloc_beta_sum;  /* sum over reallocations of beta right after each */
    uint64_t n_budget_raised;  /* reallocations whose budget was below the smallest
                                  cache the settings allow (solved at that minimum) */
    uint64_t requant_rows;  /* token rows (K+V of one head) requantized */
    uint64_t upgrades, downgrades;  /* width changes of allocated tokens */
    uint64_t track_ns;      /* time in importance tracking, summed over threads */
    uint64_t realloc_ns;    /* time in reallocation (solve + rebuild) */
    uint64_t attend_ns;     /* time in attention, summed over threads */
    /* ATSKV's passive tier (0 for other kinds): */
    uint64_t passive_rows;  /* (layer, KV head, token) rows in the passive tier now */
    uint64_t passive_bytes; /* its bytes now: zlib blobs and headers, their tokens' state */
    uint64_t evictions, recalls;   /* rows moved active -> passive, passive -> active */
    uint64_t recall_ns;     /* time in recalls (read back, inflate and copy back) */
    uint64_t offload_written, offload_read;  /* bytes written to / read from the offload
                                                file (counters) */
    uint64_t offload_file;  /* the offload file's size now */
} skv_ec_stats;

/* RocketKV's stage 2 (rocket.c): the tokens one query attends to among m
 * candidates rows[0..m) (key rows of d floats, position order): the top
 * topk by the score of their page (pages of `page` candidates; the query's
 * topr largest |q_i| dimensions against the page's fp16 key min/max).
 * Writes their indices, ascending, to sel[] and returns their count
 * (min(topk, m)).  work: SKV_ROCKET_WORK_BYTES(d, m) bytes. */
#define SKV_ROCKET_DIMS_BYTES(d) ((((size_t)(d) * 4) + 15) & ~(size_t)15)
#define SKV_ROCKET_WORK_BYTES(d, m) (SKV_ROCKET_DIMS_BYTES(d) + ((size_t)(m) + 1) * 16)
SKV_EXPORT uint64_t skv_rocket_select(const float *q, uint32_t d, const float *const *rows,
                                      uint64_t m, uint64_t topk, uint32_t topr, uint32_t page,
                                      uint64_t *sel, void *work);

SKV_EXPORT int skv_ec_stats_get(const skv_kv_cache *c, skv_ec_stats *s);
SKV_EXPORT void skv_ec_stats_reset(skv_kv_cache *c);

/* The widths of the last allocation of one (layer, kv head): [n_alloc]
 * bytes, or NULL (out of range, not an evalcache). */
SKV_EXPORT const uint8_t *skv_ec_widths(const skv_kv_cache *c, uint32_t layer, uint32_t kv_head);

/* Short description of a configuration, e.g. "smartkv beta=0.3 ema:0.9 R=16". */
SKV_EXPORT void skv_ec_describe(const skv_ec_cfg *c, char *buf, size_t n);

/* ---- prune-merge behind the functions above (merge.c) ----
 * skv_ec_new, skv_ec_cfg_check, skv_ec_describe, skv_ec_realloc (prune
 * now), skv_ec_hold and skv_ec_stats_get hand SKV_EC_PRUNE_MERGE to these.
 * In the stats, bytes include the tracking state (meta_bytes 0), hist
 * counts the kept rows at 16 bits and n_realloc is 0. */
SKV_EXPORT skv_pm_cfg skv_ec_pm_cfg(const skv_ec_cfg *c);
SKV_EXPORT skv_kv_cache *skv_ec_pm_new(const skv_ec_cfg *c, uint32_t n_layers, uint32_t n_heads,
                                       uint32_t n_kv_heads, uint32_t head_dim, uint64_t capacity);
SKV_EXPORT int skv_ec_pm_stats(const skv_kv_cache *c, skv_ec_stats *s);

/* ---- ZACK (zack.c): a low-rank projection of K and V per (layer, KV head)
 * (Zhang and Shen 2024, "ZACK: Zero-Overhead LLM Inference Acceleration via
 * Dimensionality Compression of the Key-Value Cache").
 *
 * Basis.  A calibration run (skv_zack_calibrate: the model over other text
 * with a dense float32 cache) gives, per (layer, KV head), the mean and the
 * covariance (1/n, float64) of the keys and of the values; their
 * eigenvectors (LAPACK dsyevr), by descending eigenvalue, are the principal
 * components.  The cache stores the mean and the first r components at fp16.
 *
 * Cache (kind SKV_EC_ZACK).  Tokens enter at fp16.  The first alloc.sinks
 * tokens stay fp16; every realloc (R) tokens, the tokens older than the
 * alloc.recent newest are projected: r fp16 coefficients c = U_r^T (x - mu)
 * for the key and r for the value, and the attention reads mu + U_r c (what
 * a low-rank kernel computes as q.mu + (U_r^T q).c).  The rank r is one for
 * every head, the largest whose bytes at the cache's capacity fit
 * alloc.budget x fp16 (skv_zack_rank; at least 1).  Bytes per (layer, KV
 * head): fp16 rows (sinks, recent, pending) 4 d each, projected tokens 4 r
 * each, once any token is projected the basis 2 x d x r fp16 and the means
 * 2 x d fp16, and 8 bytes (rank, count).  No tracking state. */
typedef struct skv_zack_basis {
    uint32_t n_layers, n_kv_heads, head_dim;
    uint64_t n_tokens;      /* calibration tokens */
    float *mean;            /* [n_layers][n_kv_heads][2][head_dim]: K then V, fp16 values */
    float *vec;             /* [n_layers][n_kv_heads][2][head_dim][head_dim]: component j
                               (j-th largest eigenvalue) at + j * head_dim, fp16 values */
    double *eig;            /* [n_layers][n_kv_heads][2][head_dim], descending */
} skv_zack_basis;

/* Principal components of n rows x[n][d] in float64: mean[d], the
 * eigenvalues eig[d] of the covariance (1/n) in descending order and their
 * unit eigenvectors, component j at vec + j * d.  Returns 0 or <0. */
SKV_EXPORT int skv_zack_fit(const float *x, uint64_t n, uint32_t d, double *mean, double *vec,
                            double *eig);
/* The bases of the model's keys and values over tokens[0..n) (one context,
 * n >= 2), as above.  *out: free with skv_zack_basis_free.  0 or <0. */
SKV_EXPORT int skv_zack_calibrate(skv_model *m, const int32_t *tokens, uint64_t n,
                                  skv_zack_basis **out);
SKV_EXPORT void skv_zack_basis_free(skv_zack_basis *b);
/* The rank of a ZACK cache of these settings and capacity (see above);
 * *raised = 1 when even rank 1 exceeds the budget. */
SKV_EXPORT uint32_t skv_zack_rank(const skv_ec_cfg *c, uint32_t head_dim, uint64_t capacity,
                                  int *raised);
/* The rows the attention of a ZACK cache reads for (layer, kv head): *k and
 * *v point at n rows of head_dim floats (projected ones as mu + U_r c).
 * Returns n, or 0 (not a ZACK cache, out of range). */
SKV_EXPORT uint64_t skv_zack_rows(const skv_kv_cache *c, uint32_t layer, uint32_t kv_head,
                                  const float **k, const float **v);

#ifdef __cplusplus
}
#endif
#endif
