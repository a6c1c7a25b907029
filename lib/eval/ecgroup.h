/* ecgroup.h -- private to lib/eval: the grouped layout of the online cache
 * (smartkv_evalcache.h, "Grouped layout"), behind the same skv_ec_* calls. */
#ifndef SKV_EVAL_ECGROUP_H
#define SKV_EVAL_ECGROUP_H

#include "smartkv_evalcache.h"
#include "smartkv_tokenizer.h"

skv_kv_cache *skv_ecg_new(const skv_ec_cfg *c, uint32_t n_layers, uint32_t n_heads,
                          uint32_t n_kv_heads, uint32_t head_dim, uint64_t capacity);
int skv_ecg_is(const skv_kv_cache *c);
int skv_ecg_realloc(skv_kv_cache *c);
void skv_ecg_hold(skv_kv_cache *c, int hold);
int skv_ecg_stats(const skv_kv_cache *c, skv_ec_stats *s);
void skv_ecg_stats_reset(skv_kv_cache *c);
const uint8_t *skv_ecg_widths(const skv_kv_cache *c, uint32_t layer, uint32_t kv_head);
/* The same for the keys (0 where the token is evicted). */
const uint8_t *skv_ecg_key_widths(const skv_kv_cache *c, uint32_t layer, uint32_t kv_head);
int skv_ecg_cfg_check(const skv_ec_cfg *c);
/* Importance atskv (cfg->imp_mode SKV_EC_IMP_ATSKV) and head weights
 * (cfg->head_weight): the hidden-state hook (and for head weights the
 * model's output-projection gains) and the tokenizer; the ids of the next n
 * tokens (as skv_atskv_attach and skv_atskv_tokens, which hand grouped
 * caches to these).  No-op for other caches. */
void skv_ecg_attach(skv_kv_cache *c, skv_session *s, const skv_tokenizer *tk);
void skv_ecg_tokens(skv_kv_cache *c, const int32_t *ids, uint32_t n);
int skv_ecg_min_beta(const skv_ec_cfg *c, uint32_t n_layers, uint32_t n_heads,
                     uint32_t n_kv_heads, uint32_t head_dim, uint64_t n, double *beta);

/* The plan's solver on bare items (for the tests): item i has predicted
 * damage dmg[i][w] and bytes bytes[i][w] at width index w (widths 0, 2, 3,
 * 4, 8, 16), starts at sel[i] and goes up to cap[i] at most, within the
 * allowed width indices wmask, spending the bytes above cur up to limit.
 * heap: 1 the reference (a heap of every item), 0 the sorted walk that
 * reallocations run, with the hint *cross (the last walk's crossing ratio,
 * < 0 none; NULL none) and this walk's written back.  Writes the chosen
 * width indices to sel.  Returns 1 if the walk took the steps above the
 * hint unsorted, 0 if it sorted them all, < 0 on error. */
int skv_ecg_solve_items(uint32_t n, const float *dmg, const uint32_t *bytes, const uint8_t *cap,
                        uint8_t *sel, uint32_t wmask, uint64_t cur, uint64_t limit, int heap,
                        float *cross);

/* Quantizer arithmetic of the grouped layout (also used by the tests):
 * asymmetric min/max over n values x[i*stride], scale and minimum stored as
 * fp16, codes round((x - min) / scale) clamped to [0, 2^bits - 1]; writes
 * what the codes decode to into y[i*stride] (may equal x). */
void skv_ecg_quant_span(const float *x, float *y, uint32_t n, size_t stride, uint32_t bits);

/* The same with clip's range search (skv_ec_cfg.clip; clip 0: the above). */
void skv_ecg_quant_span_clip(const float *x, float *y, uint32_t n, size_t stride, uint32_t bits,
                             int clip);

/* imp-range: the energy of a row x[d] in spans of g numbers, the sum over
 * its spans of (g - 2) range^2, so that min-max rounding to b bits loses
 * about energy / (12 (2^b - 1)^2) in squared error (with clip, predicted
 * as energy / (12 (2^b)^2)). */
double skv_ecg_span_energy(const float *x, uint32_t d, uint32_t g);

#endif
