/* smartkv_merge.h -- attention-guided pruning with online k-means merging of
 * the pruned tokens ("prune-merge", the third system of the seeds).
 *
 * A KV cache (skv_kv_cache, smartkv_model.h) that holds, per (layer, KV
 * head), a set of kept tokens (fp16 K and V rows) and up to K centroids
 * (fp16 key and value, and a member count).  Every P tokens
 * (pruning_interval) the tokens that are neither sinks (the first `sinks`
 * positions) nor recent (the last `recent` positions) are scored by the
 * attention they received from the last D query positions
 * (lookback_window), summed over the query heads of the KV head; the top B
 * (max_cache_size) stay, the others are merged into the centroids by online
 * k-means on the keys (skv_km_update), or dropped when K = 0 (pruned-only).
 *
 * Attention to a centroid c with n members uses the logit
 *     scale * q.key_c + log(n),
 * so a centroid of n identical tokens receives exactly the softmax mass of
 * those n tokens and contributes exactly their output (skv_pm_attend_row).
 *
 * Tracking.  The attention of the last D queries is kept in epochs of
 * E = gcd(P, D) query positions, D/E epochs in a ring, one float per (query
 * head, kept token) each: at a prune at position t the epochs that meet
 * [t - D, t) are summed.  A prune delayed past its schedule (skv_pm_hold,
 * e.g. a long prefill) sums the D/E newest epochs instead.
 *
 * Bytes (every one counted in beta): per (layer, KV head), each kept token
 * 4*head_dim (fp16 K+V) + 4 (its position) + 4*G*D/E (tracking, G query
 * heads per KV head); each centroid in use (one member or more)
 * 4*head_dim + 4 (count).  beta = bytes / fp16 K+V bytes of all positions
 * seen.  With a budget beta (and max_cache_size 0), B is chosen at each
 * prune so that the cache, with all K centroids in use, is at beta half-way
 * to the next prune.
 *
 * Merge + mixed precision (kept_mask with a width below 16): at each prune
 * the kept tokens get per-token widths from kept_mask (or 0: merged), the
 * budget spent as smartkv spends it: minimise sum_i s_i * err_i(w_i) (s_i
 * the token's lookback attention, err_i the expected squared error of its
 * K and V at width w, skv_alloc_token_errors; width 0 its whole norm) with
 * the bytes of the candidates within the head's share of the budget, by
 * bisection on the Lagrange multiplier.  A token's width only goes down;
 * a row below 16 bits is quantized (asym, one group per row) and held
 * dequantized.  Such a row costs 2 * (packed row + scale/min) + 4
 * (position) + 1 (width) + its tracking; sinks, recent window and new
 * tokens stay fp16 (4*head_dim + 5 + tracking).
 *
 * Threads: as the evaluation cache (smartkv_evalcache.h): attend may run
 * concurrently for different query heads of one layer; the tracking state
 * is per query head.
 */
#ifndef SMARTKV_MERGE_H
#define SMARTKV_MERGE_H

#include "smartkv_model.h"
#include "smartkv_pack.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The online k-means step, skv_km_nearest and skv_km_update, is declared
 * in smartkv_quant.h (skv-quant merges offline with it too). */

/* One query row over n rows (k, v: [n][d]) and K centroids (cnt 0 slots
 * are skipped): writes out [d] and p [n + K]: the softmax probabilities of
 * the rows, then the mass of each centroid.  Scalar, float32 with a float64
 * normaliser. */
SKV_EXPORT void skv_pm_attend_row(const float *q, uint32_t d, float scale, const float *k,
                                  const float *v, uint32_t n, const float *ck, const float *cv,
                                  const uint32_t *cnt, uint32_t K, float *out, float *p);

/* ---- the cache ---- */

typedef struct skv_pm_cfg {
    uint32_t max_cache_size;    /* B kept tokens beyond sinks and recent; 0 = from budget */
    uint32_t num_clusters;      /* K per (layer, KV head); 0 = pruned-only */
    uint32_t pruning_interval;  /* P >= 1 */
    uint32_t lookback_window;   /* D >= 1 */
    double kmeans_lr;           /* eta in [0, 1]; 0 = 1/count */
    uint32_t sinks, recent;     /* protected first / last positions */
    double budget;              /* beta when max_cache_size is 0; 0 with B 0 = never prune */
    uint32_t kept_mask;         /* widths of kept tokens (bit w: width w): 0 or 16 alone =
                                   fp16; with lower widths, merge + mixed precision (needs
                                   the budget, not max_cache_size) */
} skv_pm_cfg;

/* B 0, K 8, P 16, D 32, eta 0, sinks 4, recent 32, budget 0.25. */
SKV_EXPORT void skv_pm_defaults(skv_pm_cfg *c);
SKV_EXPORT int skv_pm_cfg_check(const skv_pm_cfg *c);
/* e.g. "prune-merge beta=0.3 K=8 P=16 D=32" */
SKV_EXPORT void skv_pm_describe(const skv_pm_cfg *c, char *buf, size_t n);

/* NULL on error (message set); free with skv_kv_cache_free. */
SKV_EXPORT skv_kv_cache *skv_pm_new(const skv_pm_cfg *c, uint32_t n_layers, uint32_t n_heads,
                                    uint32_t n_kv_heads, uint32_t head_dim, uint64_t capacity);
SKV_EXPORT int skv_pm_is(const skv_kv_cache *c);
/* hold = 1: no prune until released (a prefill); 0: every P tokens. */
SKV_EXPORT void skv_pm_hold(skv_kv_cache *c, int hold);
/* Prune every layer now (e.g. after a held prefill; all layers must hold
 * the same positions); the next prune follows P tokens later.  A no-op for
 * a cache that never prunes.  Returns 0 or <0. */
SKV_EXPORT int skv_pm_prune(skv_kv_cache *c);

typedef struct skv_pm_stats {
    uint64_t n_tokens;      /* positions seen (layer 0) */
    uint64_t kept;          /* kept rows, summed over (layer, KV head) */
    uint64_t merged;        /* tokens merged into centroids (live members) */
    uint64_t dropped;       /* tokens pruned without a centroid (K = 0) */
    uint64_t centroids;     /* non-empty centroid slots */
    uint64_t bytes;         /* byte model now (see above) */
    uint64_t track_bytes;   /* its tracking part */
    uint64_t fp16_bytes;    /* fp16 K+V bytes of n_tokens */
    uint64_t mem_bytes;     /* bytes actually held (float32 rows and centroids) */
    uint64_t n_prunes;      /* prunes of layer 0 */
    uint64_t hist[SKV_NBITS]; /* kept rows per width (skv_bit_widths; [0] unused) */
    uint64_t prune_ns, attend_ns, track_ns;
} skv_pm_stats;

SKV_EXPORT int skv_pm_stats_get(const skv_kv_cache *c, skv_pm_stats *s);
SKV_EXPORT void skv_pm_stats_reset(skv_kv_cache *c);

#ifdef __cplusplus
}
#endif
#endif
