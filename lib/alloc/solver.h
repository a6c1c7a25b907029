/* solver.h -- private to lib/alloc: the state every allocation policy works
 * on, and the shared steps they are built from (lib/alloc/solver.c).
 *
 * The problem: every item (a token of one allocation unit) gets one allowed
 * width; minimise  sum over items of importance * expected error(width)
 * subject to the byte model total (PKHD + every bucket's file bytes) being
 * at most  floor(beta * fp16 bytes).  A unit is one (layer, KV head), or
 * with share_layers one KV head across all layers (its tokens' width is the
 * same in every layer, so an item stands for n_layers stored tokens).
 *
 * Bytes are accounted exactly: per unit and width we keep the token count,
 * and a move of one item from width a to width b costs exactly
 *   F(a, n_a - 1) - F(a, n_a) + F(b, n_b + 1) - F(b, n_b)
 * (F = skv_bucket_file_bytes, times the streams per unit), so bucket
 * headers, section padding and chunk framing are paid exactly when they
 * occur: a step that would go over the budget is skipped, never taken.
 * Priorities use the linear per-token part of the cost (index + parameters
 * + packed K and V rows), which is what the step costs away from the
 * 64-byte section boundaries.
 *
 * A policy (policy.h) gets the solver with every unit at its minimum
 * (protected tokens at the top width, the rest at the lowest), *cur = the
 * bytes of that minimum without the PKHD, and limit = the budget without
 * the PKHD; it moves items (sv_move) and keeps *cur exact. */
#ifndef SKV_ALLOC_SOLVER_H
#define SKV_ALLOC_SOLVER_H

#include "smartkv_alloc.h"

typedef struct solver {
    const skv_alloc_cfg *cfg;
    const skv_alloc_problem *p;
    skv_qcfg q;
    uint32_t L, H, nu, mult;  /* units, streams per unit */
    uint64_t T, N;            /* tokens per unit, items */
    int aw[SKV_NBITS], na;    /* allowed width indices, ascending */
    int top, lo;              /* positions in aw of the top and lowest width */
    uint64_t maxtok[SKV_NBITS], fullbytes[SKV_NBITS], lin[SKV_NBITS];
    const float *ue;          /* unit errors [nu][T][SKV_NBITS] */
    float *ue_own;
    double *imp;              /* effective importance per item */
    uint8_t *prot;            /* [T] protected token */
    uint8_t *w;               /* position in aw per item */
    uint64_t *cnt;            /* [nu][SKV_NBITS] tokens per width position */
    uint64_t pkhd;
    uint64_t aux;             /* bytes the policy keeps beside the cache (rocketkv) */
} solver;

/* exact bytes of n tokens at width index wi in one bucket stream */
uint64_t sv_fbytes(const solver *s, int wi, uint64_t n);
/* bytes of unit u's buckets (all its streams) */
uint64_t sv_unit_bytes(const solver *s, uint32_t u);
/* exact change in bytes when one item of unit u moves from position a to b */
int64_t sv_move_delta(const solver *s, uint32_t u, int a, int b);
/* move one item to position b (counts follow) */
void sv_move(solver *s, uint64_t item, int b);
/* units [u0, u1) at their minimum / all at position pos; return their bytes */
uint64_t sv_set_min(solver *s, uint32_t u0, uint32_t u1);
uint64_t sv_set_all(solver *s, uint32_t u0, uint32_t u1, int pos);
uint64_t sv_bytes_of(const solver *s, uint32_t u0, uint32_t u1);
/* Next step of an item from position k: the next allowed width, or (hull)
 * the next vertex of the lower convex hull of (bytes, error); its priority
 * in *key.  Returns the target position, or -1 at the top. */
int sv_next_step(const solver *s, uint64_t item, int k, int hull, double *key);
/* Marginal gain: take steps by priority while the exact bytes of units
 * [u0, u1) (*cur) stay within limit. */
int sv_heap_fill(solver *s, uint32_t u0, uint32_t u1, uint64_t *cur, uint64_t limit, int hull);
/* Rank thresholds 8/4/2 (by importance, or by position when by_position)
 * fitted to the budget. */
int sv_rank_policy(solver *s, int by_position, uint64_t limit, uint64_t *cur);
/* Local search on the bucket lumps, at most iters rounds. */
int sv_polish(solver *s, uint64_t limit, uint64_t *cur, int iters);
/* sum of importance * error of the current assignment */
double sv_objective(const solver *s);

/* An item no policy may move: protected (kept at the top width) or gone
 * (stored at width 0 by an online cache, kept at 0). */
static inline int sv_gone(const solver *s, uint64_t item)
{
    return s->p->stored && s->p->stored[item] == 0;
}
static inline int sv_fixed(const solver *s, uint64_t item)
{
    return s->prot[item % s->T] || sv_gone(s, item);
}

/* Two-width policies (streaming, h2o, snapkv, mikv): every unit keeps k_u
 * items at the top width and the rest at the lowest; the k_u are as equal
 * across units as the exact bytes allow (round robin, one item per unit
 * per round, while it fits), each at most the unit's items that can be
 * kept (not gone, not stored below the top).  choose(s, u, k, keep, ctx)
 * marks in keep[T] which k of unit u's tokens to keep (only keepable ones).
 * Starts from every item at the lowest width. */
typedef void (*sv_choose_fn)(const solver *s, uint32_t u, uint64_t k, uint8_t *keep, void *ctx);
int sv_two_level(solver *s, uint64_t limit, uint64_t *cur, sv_choose_fn choose, void *ctx);
/* Two-width allocation with per-unit shares (dynamickv, uncomp, razor):
 * k_u = min(cap_u, keepable_u, floor(x share_u)) with the largest x whose
 * exact bytes fit, then one more item per unit (round robin) while it fits;
 * a unit with share 0 keeps nothing.  cap may be NULL.  _counts only sets the
 * counts (k[nu], *cur = their bytes; the solver's counts follow); _shares
 * also chooses the tokens as sv_two_level does. */
int sv_two_level_counts(solver *s, uint64_t limit, const double *share, const uint64_t *cap,
                        uint64_t *k, uint64_t *cur);
int sv_two_level_shares(solver *s, uint64_t limit, uint64_t *cur, const double *share,
                        const uint64_t *cap, sv_choose_fn choose, void *ctx);
/* Can item be kept at the top width (not gone, not stored below the top)? */
int sv_keepable(const solver *s, uint64_t item);
/* An sv_choose_fn (StreamingLLM's): the sinks first, then the newest tokens. */
void sv_choose_sinks_recent(const solver *s, uint32_t u, uint64_t k, uint8_t *keep, void *ctx);

static inline float sv_item_err(const solver *s, uint64_t item, int pos)
{
    return s->ue[item * SKV_NBITS + s->aw[pos]];
}

#endif
