/* q8_0.c -- llama.cpp's 8-bit KV-cache block type (ggml-quants.c,
 * quantize_row_q8_0_ref): blocks of 32 elements of K and of V, one fp16
 * scale d = max|x| / 127 per block, codes round(x / d) in -127..127.  Every
 * token at 8 bits in groups of 32, quantizer mode ggml (smartkv_quant.h);
 * no budget to spend (SKV_PF_FIXED), nothing protected. */
#include "policy.h"

const skv_policy_def skv_policy_q8_0 = {
    .name = "q8_0",
    .summary = "llama.cpp q8_0: 8 bits, blocks of 32, fp16 scale amax/127 (K and V)",
    .flags = SKV_PF_FIXED | SKV_PF_LAYOUT,
    .bits = 8,
    .group = 32,
    .qmode = SKV_QMODE_GGML,
};
