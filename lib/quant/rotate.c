/* rotate.c -- the randomized Hadamard rotation of keys, queries and values
 * (smartkv_quant.h): one definition for the online cache (lib/eval/
 * ecgroup.c) and the packed file format (smartkv(5), format 1.3), so a
 * cache file rotates exactly as skv-eval --rotate does. */
#include "smartkv_quant.h"

#include <math.h>
#include <string.h>

/* splitmix64's finalizer: every bit of the input reaches bit 0 */
static uint64_t mix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void skv_rot_signs(uint64_t seed, uint64_t unit, uint32_t d, float *sign)
{
    /* unit < 2^20 and j < 2^10 do not overlap; the seed's low 24 bits do not
     * overlap them either (the high 40 bits are shifted out) */
    for (uint32_t j = 0; j < d; j++)
        sign[j] = (mix64((unit << 20) ^ j ^ (seed << 40)) & 1) ? -1.0f : 1.0f;
}

void skv_fwht_ref(float *x, uint32_t d)
{
    for (uint32_t h = 1; h < d; h *= 2)
        for (uint32_t i = 0; i < d; i += 2 * h)
            for (uint32_t j = i; j < i + h; j++) {
                float a = x[j], b = x[j + h];
                x[j] = a + b;
                x[j + h] = a - b;
            }
    float r = 1.0f / sqrtf((float)d);
    for (uint32_t j = 0; j < d; j++)
        x[j] *= r;
}

/* The butterflies of one stage are independent, so any order gives the
 * same bits: stages 1, 2 and 4 run inside each block of 8 (in registers),
 * the wider ones 8 lanes at a time (vectorized).  skv_fwht_ref is the
 * plain loop, kept as the reference the tests compare with. */
void skv_fwht(float *x, uint32_t d)
{
    if (d % 8) {
        skv_fwht_ref(x, d);
        return;
    }
    for (uint32_t i = 0; i < d; i += 8) {
        float a[8], b[8];
        memcpy(a, x + i, sizeof a);
        for (int k = 0; k < 8; k += 2) {
            b[k] = a[k] + a[k + 1];
            b[k + 1] = a[k] - a[k + 1];
        }
        for (int k = 0; k < 8; k += 4)
            for (int j = k; j < k + 2; j++) {
                a[j] = b[j] + b[j + 2];
                a[j + 2] = b[j] - b[j + 2];
            }
        for (int j = 0; j < 4; j++) {
            b[j] = a[j] + a[j + 4];
            b[j + 4] = a[j] - a[j + 4];
        }
        memcpy(x + i, b, sizeof b);
    }
    for (uint32_t h = 8; h < d; h *= 2)
        for (uint32_t i = 0; i < d; i += 2 * h)
            for (uint32_t j = i; j < i + h; j += 8) {
                float *p = x + j, *q = x + j + h;
                for (int k = 0; k < 8; k++) {
                    float a = p[k], b = q[k];
                    p[k] = a + b;
                    q[k] = a - b;
                }
            }
    float r = 1.0f / sqrtf((float)d);
    for (uint32_t j = 0; j < d; j++)
        x[j] *= r;
}

void skv_rot_apply(const float *sign, const float *x, float *y, uint32_t d)
{
    for (uint32_t j = 0; j < d; j++)
        y[j] = x[j] * sign[j];
    skv_fwht(y, d);
}

void skv_rot_undo(const float *sign, const float *x, float *y, uint32_t d)
{
    if (y != x)
        memcpy(y, x, d * sizeof *y);
    skv_fwht(y, d);
    for (uint32_t j = 0; j < d; j++)
        y[j] *= sign[j];
}
