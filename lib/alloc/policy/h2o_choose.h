/* h2o_choose.h -- private to lib/alloc/policy: H2O's choice of k tokens of
 * one unit (h2o.c, mikv.c): the newest k - k/2 keepable tokens (the recent
 * window), then the k/2 other keepable tokens of largest importance (the
 * heavy hitters; ties: newer first). */
#ifndef SKV_ALLOC_H2O_CHOOSE_H
#define SKV_ALLOC_H2O_CHOOSE_H

#include "policy.h"

/* Solve with H2O's choice (sv_two_level). */
int sv_solve_h2o(solver *s, uint64_t limit, uint64_t *cur);

#endif
