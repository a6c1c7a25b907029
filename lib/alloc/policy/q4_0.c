/* q4_0.c -- llama.cpp's 4-bit KV-cache block type (ggml-quants.c,
 * quantize_row_q4_0_ref): blocks of 32 elements of K and of V, one fp16
 * scale d = m / -8 where m is the element of largest magnitude (with its
 * sign), codes min(15, (int)(x / d + 8.5)), decoded as (q - 8) * d.  Every
 * token at 4 bits in groups of 32, quantizer mode ggml (smartkv_quant.h);
 * no budget to spend (SKV_PF_FIXED), nothing protected. */
#include "policy.h"

const skv_policy_def skv_policy_q4_0 = {
    .name = "q4_0",
    .summary = "llama.cpp q4_0: 4 bits, blocks of 32, fp16 scale max/-8 (K and V)",
    .flags = SKV_PF_FIXED | SKV_PF_LAYOUT,
    .bits = 4,
    .group = 32,
    .qmode = SKV_QMODE_GGML,
};
