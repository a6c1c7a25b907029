/* fuzz_f16 -- float16 and bfloat16 conversion.  The input is read as
 * float32 values and as 16-bit patterns; properties checked:
 *  - every 16-bit pattern widens and narrows back to itself (NaN to NaN);
 *  - narrowing picks the nearest representable value, ties to even, and
 *    overflows to infinity only beyond the largest finite value's half ulp;
 *  - the bulk converters (SIMD where available) agree with the scalar ones. */
#include "fuzz.h"

#include <math.h>

static double f16_val(uint16_t h) { return (double)skv_f16_to_f32(h); }
static double bf16_val(uint16_t h) { return (double)skv_bf16_to_f32(h); }

/* Check that h is the round-to-nearest-even image of x in a 16-bit format. */
static void check_nearest(float x, uint16_t h, double (*val)(uint16_t), uint16_t max_finite)
{
    if (isnan(x)) {
        FUZZ_ASSERT(isnan(val(h)));
        return;
    }
    double v = val(h), d = fabs((double)x - v);
    uint16_t mag = h & 0x7fffu, sign = h & 0x8000u;
    if (isinf(v)) {
        /* only beyond the largest finite value plus half its ulp */
        double top = val(max_finite), ulp = top - val((uint16_t)(max_finite - 1));
        FUZZ_ASSERT(isinf(x) || fabs((double)x) >= top + ulp / 2);
        FUZZ_ASSERT((x < 0) == (sign != 0));
        return;
    }
    FUZZ_ASSERT(!signbit(v) == !signbit(x) || v == 0);
    /* neighbours of the same sign must not be closer */
    if (mag < max_finite) {
        double up = val((uint16_t)(h + 1));
        FUZZ_ASSERT(d < fabs((double)x - up) || (d == fabs((double)x - up) && !(h & 1)));
    }
    if (mag > 0) {
        double down = val((uint16_t)(h - 1));
        FUZZ_ASSERT(d < fabs((double)x - down) || (d == fabs((double)x - down) && !(h & 1)));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_init();
    size_t nf = size / 4, nh = size / 2;
    float *f = malloc((nf ? nf : 1) * sizeof *f);
    uint16_t *h = malloc((nh ? nh : 1) * sizeof *h);
    uint16_t *h2 = malloc((nf ? nf : 1) * sizeof *h2);
    float *g = malloc((nh ? nh : 1) * sizeof *g);
    FUZZ_ASSERT(f && h && h2 && g);
    if (nf)
        memcpy(f, data, nf * 4);
    if (nh)
        memcpy(h, data, nh * 2);

    for (size_t i = 0; i < nh; i++) {
        float w = skv_f16_to_f32(h[i]);
        uint16_t back = skv_f32_to_f16(w);
        if ((h[i] & 0x7c00u) == 0x7c00u && (h[i] & 0x3ffu))
            FUZZ_ASSERT(isnan(w) && (back & 0x7c00u) == 0x7c00u && (back & 0x3ffu));
        else
            FUZZ_ASSERT(back == h[i]);
        float b = skv_bf16_to_f32(h[i]);
        uint16_t bback = skv_f32_to_bf16(b);
        if ((h[i] & 0x7f80u) == 0x7f80u && (h[i] & 0x7fu))
            FUZZ_ASSERT(isnan(b) && isnan(skv_bf16_to_f32(bback)));
        else
            FUZZ_ASSERT(bback == h[i]);
    }
    for (size_t i = 0; i < nf; i++) {
        check_nearest(f[i], skv_f32_to_f16(f[i]), f16_val, 0x7bffu);
        check_nearest(f[i], skv_f32_to_bf16(f[i]), bf16_val, 0x7f7fu);
    }
    /* bulk converters against the scalar ones */
    skv_convert_from_f32(SKV_F16, f, h2, nf);
    for (size_t i = 0; i < nf; i++) {
        uint16_t s = skv_f32_to_f16(f[i]);
        FUZZ_ASSERT(h2[i] == s || (isnan(f[i]) && isnan(skv_f16_to_f32(h2[i]))));
    }
    skv_convert_to_f32(SKV_F16, h, g, nh);
    for (size_t i = 0; i < nh; i++) {
        float s = skv_f16_to_f32(h[i]);
        /* bit-exact (-0, NaN payloads): NOLINTNEXTLINE(bugprone-suspicious-memory-comparison) */
        FUZZ_ASSERT(!memcmp(&g[i], &s, 4) || (isnan(s) && isnan(g[i])));
    }
    skv_convert_from_f32(SKV_BF16, f, h2, nf);
    for (size_t i = 0; i < nf; i++)
        FUZZ_ASSERT(h2[i] == skv_f32_to_bf16(f[i]));
    free(f);
    free(h);
    free(h2);
    free(g);
    return 0;
}
