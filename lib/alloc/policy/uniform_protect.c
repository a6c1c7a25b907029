/* uniform_protect.c -- every token at one width (uniform-protect:N) but
 * the sinks and the recent window, which keep the top width: uniform
 * quantization with the protected window that the budgeted policies use,
 * beside uniform:N, which protects nothing. */
#include "policy.h"

const skv_policy_def skv_policy_uniform_protect = {
    .name = "uniform-protect",
    .summary = "every token at N bits (uniform-protect:N) but the sinks and recent "
               "window at the top width",
    .flags = SKV_PF_FIXED | SKV_PF_PROTECT,
    .solve = NULL,
};
