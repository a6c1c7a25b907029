/* kmeans.c -- the online k-means step of prune-merge, shared by the decode
 * loop's cache (lib/eval/merge.c) and skv-quant's centroids (cache.c). */
#include "smartkv_quant.h"

#include <math.h>
#include <string.h>

uint32_t skv_km_nearest(const float *ck, const uint32_t *cnt, uint32_t K, uint32_t d,
                        const float *x)
{
    uint32_t best = 0;
    float bd = INFINITY;
    for (uint32_t j = 0; j < K; j++) {
        if (!cnt[j])
            continue;
        const float *c = ck + (size_t)j * d;
        float s = 0;
        for (uint32_t i = 0; i < d; i++) {
            float t = x[i] - c[i];
            s += t * t;
        }
        if (s < bd) {
            bd = s;
            best = j;
        }
    }
    return best;
}

uint32_t skv_km_update(float *ck, float *cv, uint32_t *cnt, uint32_t K, uint32_t d,
                       const float *x, const float *v, double eta)
{
    for (uint32_t j = 0; j < K; j++)
        if (!cnt[j]) {
            memcpy(ck + (size_t)j * d, x, d * sizeof(float));
            memcpy(cv + (size_t)j * d, v, d * sizeof(float));
            cnt[j] = 1;
            return j;
        }
    uint32_t j = skv_km_nearest(ck, cnt, K, d, x);
    float *c = ck + (size_t)j * d, *w = cv + (size_t)j * d;
    if (cnt[j] < UINT32_MAX)
        cnt[j]++;
    const float inv = 1.0f / (float)cnt[j];
    const float a = eta > 0 ? (float)eta : inv;
    for (uint32_t i = 0; i < d; i++) {
        c[i] += a * (x[i] - c[i]);
        w[i] += inv * (v[i] - w[i]);
    }
    return j;
}

