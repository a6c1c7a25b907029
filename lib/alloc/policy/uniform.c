/* uniform.c -- every token at one width (uniform:N), no budget to spend,
 * nothing protected: the plain INTn cache.  The driver sets the widths
 * (SKV_PF_FIXED) and checks them against a budget when one is given. */
#include "policy.h"

const skv_policy_def skv_policy_uniform = {
    .name = "uniform",
    .summary = "every token at N bits (uniform:N), nothing protected",
    .flags = SKV_PF_FIXED,
    .solve = NULL,
};
