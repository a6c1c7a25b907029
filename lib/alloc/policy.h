/* policy.h -- private to lib/alloc: one allocation policy behind one
 * interface.  Each policy is one file in lib/alloc/policy/ that defines a
 * `const skv_policy_def skv_policy_<name>`; SKV_POLICY_LIST in
 * smartkv_alloc.h names it once (its enum value and its place in the table
 * of lib/alloc/policies.c follow from that line). */
#ifndef SKV_ALLOC_POLICY_H
#define SKV_ALLOC_POLICY_H

#include "solver.h"

typedef struct skv_policy_def {
    const char *name;       /* as given to -p ("uniform" takes ":N") */
    const char *summary;    /* one line for --help and man pages */
    unsigned flags;         /* SKV_PF_* (smartkv_alloc.h) */
    uint32_t bits;          /* SKV_PF_FIXED by name (q8_0: 8); 0 = given as name:N */
    uint32_t group, qmode;  /* SKV_PF_LAYOUT: K and V scale groups and mode */
    /* Move items from the minimum to spend the budget: *cur and limit are
     * bytes without the PKHD (solver.h).  bound: optional lower bound on the
     * objective (0 when none).  Not called for SKV_PF_FIXED policies or a
     * budget >= 1.  Returns 0 or <0 (message set). */
    int (*solve)(solver *s, uint64_t limit, uint64_t *cur, double *bound);
} skv_policy_def;

/* NULL for an unknown id */
const skv_policy_def *skv_policy_def_of(uint32_t id);

#define X(ID, sym) extern const skv_policy_def skv_policy_##sym;
SKV_POLICY_LIST(X)
#undef X

#endif
