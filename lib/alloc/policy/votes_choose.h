/* votes_choose.h -- private to lib/alloc/policy: SnapKV's choice of k
 * tokens of one unit from observation-window votes (snapkv.c; also
 * dynamickv.c, uncomp.c): the window (the newest W = recent tokens, or
 * ceil(k/2) below 2W kept tokens), then the other keepable tokens of
 * largest pooled vote (ties: newer first). */
#ifndef SKV_ALLOC_VOTES_CHOOSE_H
#define SKV_ALLOC_VOTES_CHOOSE_H

#include "policy.h"

typedef struct sv_rank {
    double key;
    uint64_t j;
} sv_rank;

typedef struct sv_votes {
    int maxpool;    /* 0: average pooling (SnapKV), 1: max pooling (DynamicKV) */
    sv_rank *r;     /* [T] scratch */
    double *pool;   /* [T] scratch */
} sv_votes;

/* Scratch for one solve; 0 or SKV_ENOMEM.  sv_votes_free frees it. */
int sv_votes_init(const solver *s, sv_votes *v, int maxpool);
void sv_votes_free(sv_votes *v);
/* The window kept when a unit keeps k tokens. */
uint64_t sv_votes_window(const solver *s, uint64_t k);
/* Pooled votes of unit u's tokens [0, p) into pool[0..p) (kernel
 * SKV_SNAPKV_KERNEL, zero padding, average divided by the kernel, or max). */
void sv_votes_pool(const solver *s, uint32_t u, uint64_t p, int maxpool, double *pool);
/* sv_choose_fn; ctx is a sv_votes */
void sv_votes_choose(const solver *s, uint32_t u, uint64_t k, uint8_t *keep, void *ctx);
/* descending key, ties newer first (qsort) */
int sv_rank_desc(const void *a, const void *b);

#endif
