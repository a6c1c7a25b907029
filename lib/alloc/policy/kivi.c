/* kivi.c -- KIVI (Liu et al., "KIVI: A Tuning-Free Asymmetric 2bit
 * Quantization for KV Cache", ICML 2024) as an offline policy (kivi:N):
 * keys per channel over groups of k_tokens tokens (32) and values per
 * token in groups of 32 channels, both asymmetric at N bits, and the newest
 * tokens fp16: tokens leave the residual R (--recent, a multiple of the key
 * group) R at a time, so the first floor(T / R) * R tokens are quantized and
 * the rest stay at 16 bits, as in the online cache (lib/eval/ecgroup.c).
 * The driver (alloc_solve.c) sets the widths; skv_alloc_cfg_resolve the
 * layout (keys SKV_QMODE_CHAN). */
#include "policy.h"

const skv_policy_def skv_policy_kivi = {
    .name = "kivi",
    .summary = "KIVI (kivi:N): keys per channel over 32 tokens, values per token, N bits; "
               "the newest tokens (a residual of --recent R, left R at a time) fp16",
    .flags = SKV_PF_FIXED | SKV_PF_LAYOUT | SKV_PF_RESIDUAL,
    .group = 32,
    .qmode = SKV_QMODE_CHAN,
    .solve = NULL,
};
