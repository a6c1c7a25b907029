/* zack.h -- private to lib/eval: the ZACK cache (smartkv_evalcache.h,
 * "ZACK") behind the same skv_ec_* calls. */
#ifndef SKV_EVAL_ZACK_H
#define SKV_EVAL_ZACK_H

#include "smartkv_evalcache.h"

skv_kv_cache *skv_zack_new(const skv_ec_cfg *c, uint32_t n_layers, uint32_t n_heads,
                           uint32_t n_kv_heads, uint32_t head_dim, uint64_t capacity);
int skv_zack_is(const skv_kv_cache *c);
int skv_zack_cfg_check(const skv_ec_cfg *c);
int skv_zack_project(skv_kv_cache *c);
void skv_zack_hold(skv_kv_cache *c, int hold);
int skv_zack_stats(const skv_kv_cache *c, skv_ec_stats *s);
void skv_zack_stats_reset(skv_kv_cache *c);

#endif
