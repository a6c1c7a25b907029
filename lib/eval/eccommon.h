/* eccommon.h -- private to lib/eval: the small pieces every online cache
 * (evalcache.c, ecgroup.c, merge.c, zack.c, atskv.c) shares. */
#ifndef SKV_EVAL_ECCOMMON_H
#define SKV_EVAL_ECCOMMON_H

#include "ecquant.h"
#include "smartkv_error.h"
#include "smartkv_quant.h"
#include "smartkv_trace.h"

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* Monotonic time in ns, for the time counters of skv_ec_stats. */
static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Stores a key row sk and a value row sv of d values at fp16 precision
 * (the model's) into dk and dv.  Returns 0, or SKV_EFORMAT (message: layer,
 * kv head, token and the value) when a value is NaN, infinite or beyond the
 * fp16 range; the rows are then partly written. */
static inline int ec_f16_row(const float *sk, const float *sv, float *dk, float *dv, uint32_t d,
                             uint32_t layer, uint32_t kv_head, uint64_t token)
{
    for (uint32_t j = 0; j < d; j++) {
        if (!(fabsf(sk[j]) <= SKV_FP16_MAX) || !(fabsf(sv[j]) <= SKV_FP16_MAX))
            return skv_error(SKV_EFORMAT, "kv cache: layer %u kv head %u token %llu: "
                             "%s value %g is not an fp16 number", layer, kv_head,
                             (unsigned long long)token, fabsf(sk[j]) <= SKV_FP16_MAX ? "V" : "K",
                             (double)(fabsf(sk[j]) <= SKV_FP16_MAX ? sv[j] : sk[j]));
        dk[j] = skv_f16_to_f32(skv_f32_to_f16(sk[j]));
        dv[j] = skv_f16_to_f32(skv_f32_to_f16(sv[j]));
    }
    return 0;
}

/* Adds the attention rows of n queries at pos.. (row i: pos+i+1 entries at
 * probs + i*stride) to the importance I of their head: with ema, a moving
 * average of decay g over p (power 1) or p^2 (power 2), else the sum of p. */
static inline void ec_track(float *I, const float *probs, size_t stride, uint64_t pos, uint32_t n,
                            int ema, float g, uint32_t power)
{
    for (uint32_t i = 0; i < n; i++)
        skv_ecq_track(I, probs + i * stride, pos + i + 1, g, ema ? (power == 2 ? 2 : 1) : 0);
}

#endif
