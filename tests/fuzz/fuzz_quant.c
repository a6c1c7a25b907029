/* fuzz_quant -- quantize/pack/unpack/dequantize round trips on one vector.
 * Input: bits selector, mode, group selector, head_dim, then float32 values.
 * Checked: the AVX2 and reference quantizers and dequantizers agree bit for
 * bit; packing then unpacking codes gives them back; every dequantized value
 * is within half a quantization step of the input (fp16 rounding at 16). */
#include "fuzz.h"

#include <math.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_init();
    if (size < 4)
        return 0;
    static const uint32_t widths[5] = {2, 3, 4, 8, 16};
    uint32_t bits = widths[data[0] % 5];
    uint32_t mode = data[1] & 1 ? SKV_QMODE_SYM : SKV_QMODE_ASYM;
    uint32_t d = (uint32_t)data[3] % 256 + 1;
    uint32_t group = (uint32_t)data[2] % d + 1;
    while (d % group)
        group--;
    float x[256] = {0};
    size_t have = (size - 4) / 4;
    memcpy(x, data + 4, (have < d ? have : d) * 4);

    uint64_t pb = skv_par_bytes(bits, d, group, mode), rb = skv_row_bytes(bits, d);
    uint8_t par[2][1024 + 64], dat[2][512 + 64]; /* max: 256 groups x 4, 256 x 2 bytes */
    memset(par, 0xee, sizeof par);
    memset(dat, 0xee, sizeof dat);
    int r0 = skv_quantize_row_ref(x, d, bits, group, mode, par[0], dat[0]);
    int r1 = skv_quantize_row_avx2(x, d, bits, group, mode, par[1], dat[1]);
    FUZZ_ASSERT(r0 == r1);
    if (r0 < 0) {
        int bad = 0; /* only non-finite or out-of-range input is refused */
        for (uint32_t i = 0; i < d; i++)
            bad |= !isfinite(x[i]) || fabsf(x[i]) > SKV_FP16_MAX;
        FUZZ_ASSERT(bad);
        return 0;
    }
    FUZZ_ASSERT(!memcmp(par[0], par[1], pb) && !memcmp(dat[0], dat[1], rb));
    /* nothing written beyond the documented sizes */
    FUZZ_ASSERT(par[0][pb] == 0xee && dat[0][rb] == 0xee);

    float y[2][256];
    skv_dequantize_row_ref(par[0], dat[0], d, bits, group, mode, y[0]);
    skv_dequantize_row_avx2(par[0], dat[0], d, bits, group, mode, y[1]);
    FUZZ_ASSERT(!memcmp(y[0], y[1], d * sizeof(float))); /* NOLINT(bugprone-suspicious-memory-comparison): bit-identical by contract */
    for (uint32_t g = 0; g < d; g += group) {
        if (bits == 16) {
            for (uint32_t i = g; i < g + group; i++)
                FUZZ_ASSERT(y[0][i] == skv_f16_to_f32(skv_f32_to_f16(x[i])));
            continue;
        }
        uint16_t s16, m16;
        skv_quant_group_params(x + g, group, bits, mode, &s16, &m16);
        double step = skv_f16_to_f32(s16), tol = step / 2 * (1 + 1e-5) + 1e-6 * fabs(step);
        double m = mode == SKV_QMODE_ASYM ? fabs((double)skv_f16_to_f32(m16)) : 0;
        for (uint32_t i = g; i < g + group; i++) {
            double e = fabs((double)x[i] - (double)y[0][i]);
            /* "up to float32 rounding": of x, and of x - min and min + code *
             * scale (asym), which round at the group minimum's magnitude: a
             * small x in a group reaching -897 may land on a tie and round to
             * the code half a step away (crashes/quant/asym-offset-...).
             * Plus an absolute 1e-40 for groups of float32 denormals whose
             * scale underflows to 0. */
            FUZZ_ASSERT(e <= tol + 4e-7 * (fabs((double)x[i]) + m) + 1e-40);
        }
    }
    if (bits != 16) {
        /* codes: unpack, repack, unpack again */
        uint8_t codes[2][256], again[1024];
        skv_unpack_codes_ref(dat[0], d, bits, codes[0]);
        skv_unpack_codes_avx2(dat[0], d, bits, codes[1]);
        FUZZ_ASSERT(!memcmp(codes[0], codes[1], d));
        for (uint32_t i = 0; i < d; i++)
            FUZZ_ASSERT(codes[0][i] < (1u << bits));
        skv_pack_codes_ref(codes[0], d, bits, again);
        FUZZ_ASSERT(!memcmp(again, dat[0], rb));
        skv_pack_codes_avx2(codes[0], d, bits, again);
        FUZZ_ASSERT(!memcmp(again, dat[0], rb));
    }
    return 0;
}
