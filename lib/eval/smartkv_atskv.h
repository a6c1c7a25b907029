/* smartkv_atskv.h -- ATSKV in the decode loop: learned relevance, adaptive
 * per-layer thresholds and a two-tier (active / passive) store.
 *
 * An skv_kv_cache (smartkv_model.h) made by skv_ec_new for kind
 * SKV_EC_ATSKV (smartkv_evalcache.h), so skv_ec_stats_get, skv_ec_hold,
 * skv_ec_realloc and the evaluations work on it unchanged.
 *
 *   - Every token enters the active tier at fp16 (values rounded to IEEE
 *     half).  Attention runs over the active tokens only.
 *   - Relevance r = sigmoid(logit) per (layer, KV head, token) from the
 *     predictor of skv-alloc train (smartkv_relevance.h): attention features
 *     tracked from the attention the model really computes here (a token in
 *     the passive tier gets none, so its attention features decay), the
 *     handcrafted features (token ids from skv_atskv_tokens), and w_h . h
 *     taken once from the hidden state when the token is written
 *     (skv_atskv_attach installs the session's hidden-state hook).
 *   - Every R tokens (and on skv_ec_realloc) each layer selects its active
 *     set: tau_l(t) = beta_l * quantile({r_i}, q_l(t)), active = r > tau_l
 *     plus the protected sinks and recent tokens, never more than the layer's
 *     share of the budget (the lowest r above tau go first).  q_l(t) is
 *     steered at every selection to hold the active-memory target:
 *     q_l += gain * (active fraction wanted by the threshold - target).
 *     beta_l = 1 for every layer (the controller absorbs any scale).
 *   - Tokens leaving the active tier go to the passive tier: their fp16 K
 *     and V rows, per selection and (layer, KV head), as one zlib blob in
 *     host memory; their rows in the active store are zeroed.  A passive
 *     token whose relevance rises above tau again is recalled (its blob
 *     inflated, the rows copied back): counted and timed.
 *
 * Accounting (skv_ec_stats): bytes = the active tier: per active (layer,
 * KV head, token) the fp16 K+V rows, its tracking state, its w_h . h and its
 * position index; plus the predictor's weights and the token-id table.
 * passive_bytes = the zlib blobs and their headers plus the passive tokens'
 * tracking state, w_h . h and blob index.  beta = bytes / fp16 K+V bytes.
 */
#ifndef SMARTKV_ATSKV_H
#define SMARTKV_ATSKV_H

#include "smartkv_evalcache.h"
#include "smartkv_model.h"
#include "smartkv_relevance.h"
#include "smartkv_tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Made by skv_ec_new for kind SKV_EC_ATSKV (cfg->rlv must be set). */
skv_kv_cache *skv_atskv_new(const skv_ec_cfg *cfg, uint32_t n_layers, uint32_t n_heads,
                            uint32_t n_kv_heads, uint32_t head_dim, uint64_t capacity);
SKV_EXPORT int skv_atskv_is(const skv_kv_cache *c);
/* Install the hidden-state hook on the session that uses c, and the
 * tokenizer for the token classes (may be NULL).  Grouped caches are handed
 * to skv_ecg_attach (importance atskv, head weights).  No-op for other
 * caches. */
SKV_EXPORT void skv_atskv_attach(skv_kv_cache *c, skv_session *s, const skv_tokenizer *tk);
/* The ids of the next n tokens the session will evaluate (before
 * skv_session_eval).  No-op for other caches. */
SKV_EXPORT void skv_atskv_tokens(skv_kv_cache *c, const int32_t *ids, uint32_t n);

/* The evalcache entry points for this kind. */
int skv_atskv_stats(const skv_kv_cache *c, skv_ec_stats *s);
void skv_atskv_stats_reset(skv_kv_cache *c);
int skv_atskv_select(skv_kv_cache *c);
void skv_atskv_hold(skv_kv_cache *c, int hold);

#ifdef __cplusplus
}
#endif
#endif
