/* alloc_solve.c -- the allocation policies.
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
 * Tokens with zero importance still need an order, so every item's
 * importance is raised by 1e-9 times the mean importance (and 1e-30). */
#include "smartkv_alloc.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
} solver;

/* ---- exact bytes ---- */

static uint64_t fbytes(const solver *s, int wi, uint64_t n)
{
    if (n == 0 || skv_bit_widths[wi] == 0)
        return 0;
    const uint64_t framing = SKV_CHUNK_HEADER_LEN + SKV_CHUNK_CRC_LEN;
    uint64_t max = s->maxtok[wi], full = n / max, rest = n % max;
    uint64_t b = full * s->fullbytes[wi];
    if (rest)
        b += framing + skv_pbkt_payload_bytes(&s->q, skv_bit_widths[wi], rest);
    return b;
}

/* bytes of unit u's buckets (all its streams) */
static uint64_t unit_bytes(const solver *s, uint32_t u)
{
    uint64_t b = 0;
    for (int k = 0; k < s->na; k++)
        b += fbytes(s, s->aw[k], s->cnt[(size_t)u * SKV_NBITS + k]);
    return b * s->mult;
}

/* exact change in bytes when one item of unit u moves from position a to b */
static int64_t move_delta(const solver *s, uint32_t u, int a, int b)
{
    const uint64_t *c = s->cnt + (size_t)u * SKV_NBITS;
    int wa = s->aw[a], wb = s->aw[b];
    int64_t d = (int64_t)fbytes(s, wa, c[a] - 1) - (int64_t)fbytes(s, wa, c[a]) +
                (int64_t)fbytes(s, wb, c[b] + 1) - (int64_t)fbytes(s, wb, c[b]);
    return d * (int64_t)s->mult;
}

static void move(solver *s, uint64_t item, int b)
{
    uint32_t u = (uint32_t)(item / s->T);
    s->cnt[(size_t)u * SKV_NBITS + s->w[item]]--;
    s->cnt[(size_t)u * SKV_NBITS + b]++;
    s->w[item] = (uint8_t)b;
}

static inline float item_err(const solver *s, uint64_t item, int pos)
{
    return s->ue[item * SKV_NBITS + s->aw[pos]];
}

/* Put units [u0, u1) in the smallest configuration: protected tokens at the
 * top width, the rest at the lowest.  Returns their bytes. */
static uint64_t set_min(solver *s, uint32_t u0, uint32_t u1)
{
    uint64_t b = 0;
    for (uint32_t u = u0; u < u1; u++) {
        memset(s->cnt + (size_t)u * SKV_NBITS, 0, SKV_NBITS * sizeof(uint64_t));
        for (uint64_t j = 0; j < s->T; j++) {
            int pos = s->prot[j] ? s->top : s->lo;
            s->w[(size_t)u * s->T + j] = (uint8_t)pos;
            s->cnt[(size_t)u * SKV_NBITS + pos]++;
        }
        b += unit_bytes(s, u);
    }
    return b;
}

static uint64_t set_all(solver *s, uint32_t u0, uint32_t u1, int pos)
{
    uint64_t b = 0;
    for (uint32_t u = u0; u < u1; u++) {
        memset(s->cnt + (size_t)u * SKV_NBITS, 0, SKV_NBITS * sizeof(uint64_t));
        memset(s->w + (size_t)u * s->T, pos, s->T);
        s->cnt[(size_t)u * SKV_NBITS + pos] = s->T;
        b += unit_bytes(s, u);
    }
    return b;
}

static uint64_t bytes_of(const solver *s, uint32_t u0, uint32_t u1)
{
    uint64_t b = 0;
    for (uint32_t u = u0; u < u1; u++)
        b += unit_bytes(s, u);
    return b;
}

/* ---- the marginal-gain heap ---- */

typedef struct hent {
    double key;
    uint64_t item;
    uint8_t to, fallback;
} hent;

typedef struct heap {
    hent *v;
    size_t n, cap;
} heap;

static int hless(const hent *a, const hent *b)
{
    /* a below b: smaller key, ties broken by larger item index */
    return a->key < b->key || (a->key == b->key && a->item > b->item);
}

static void sift_down(heap *h, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < h->n && hless(&h->v[m], &h->v[l]))
            m = l;
        if (r < h->n && hless(&h->v[m], &h->v[r]))
            m = r;
        if (m == i)
            return;
        hent t = h->v[i];
        h->v[i] = h->v[m];
        h->v[m] = t;
        i = m;
    }
}

static void hpush(heap *h, hent e)
{
    size_t i = h->n++;
    h->v[i] = e;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!hless(&h->v[p], &h->v[i]))
            break;
        hent t = h->v[i];
        h->v[i] = h->v[p];
        h->v[p] = t;
        i = p;
    }
}

static hent hpop(heap *h)
{
    hent top = h->v[0];
    h->v[0] = h->v[--h->n];
    sift_down(h, 0);
    return top;
}

/* Next step of an item from position k: the next allowed width, or (hull)
 * the next vertex of the lower convex hull of (bytes, error).  Returns the
 * target position, or -1 when the item is at the top. */
static int next_step(const solver *s, uint64_t item, int k, int hull, double *key)
{
    if (k + 1 >= s->na)
        return -1;
    double ek = item_err(s, item, k);
    int best = k + 1;
    double br = -INFINITY;
    for (int m = k + 1; m < (hull ? s->na : k + 2); m++) {
        double de = ek - item_err(s, item, m);
        double dc = (double)(s->lin[s->aw[m]] - s->lin[s->aw[k]]);
        double r = de / dc;
        if (r >= br) { /* ties: the farther vertex */
            br = r;
            best = m;
        }
    }
    *key = s->imp[item] * br / s->mult;
    return best;
}

/* Fill: take steps by priority while the exact bytes of units [u0, u1)
 * (*cur) stay within limit. */
static int heap_fill(solver *s, uint32_t u0, uint32_t u1, uint64_t *cur, uint64_t limit,
                     int hull)
{
    heap h = {0};
    h.cap = (size_t)(u1 - u0) * s->T + 1;
    h.v = skv_malloc(h.cap * sizeof(hent));
    if (!h.v)
        return SKV_ENOMEM;
    for (uint64_t it = (uint64_t)u0 * s->T; it < (uint64_t)u1 * s->T; it++) {
        if (s->prot[it % s->T])
            continue;
        double key;
        int to = next_step(s, it, s->w[it], hull, &key);
        if (to >= 0)
            h.v[h.n++] = (hent){key, it, (uint8_t)to, 0};
    }
    for (size_t i = h.n / 2; i-- > 0;)
        sift_down(&h, i);
    while (h.n) {
        hent e = hpop(&h);
        uint32_t u = (uint32_t)(e.item / s->T);
        int from = s->w[e.item];
        int64_t d = move_delta(s, u, from, e.to);
        if ((int64_t)*cur + d <= (int64_t)limit) {
            move(s, e.item, e.to);
            *cur = (uint64_t)((int64_t)*cur + d);
            double key;
            int to = next_step(s, e.item, e.to, hull, &key);
            if (to >= 0)
                hpush(&h, (hent){key, e.item, (uint8_t)to, 0});
        } else if (hull && !e.fallback && e.to > from + 1) {
            /* the hull step does not fit: try the next width alone */
            double key;
            int to = next_step(s, e.item, from, 0, &key);
            hpush(&h, (hent){key, e.item, (uint8_t)to, 1});
        }
    }
    free(h.v);
    return 0;
}

/* ---- rank-threshold policies (greedy, position) ---- */

typedef struct rk {
    double key;
    uint64_t item;
} rk;

static int rk_cmp(const void *a, const void *b)
{
    const rk *x = a, *y = b;
    if (x->key != y->key)
        return x->key > y->key ? -1 : 1;
    return x->item < y->item ? -1 : x->item > y->item;
}

/* Assign: ranks < nh -> hi, < nh + nm -> mid, rest -> lo; returns bytes. */
static uint64_t rank_assign(solver *s, const rk *r, uint64_t n, uint64_t nh, int hi, int mid,
                            int lo)
{
    uint64_t nm = mid >= 0 ? (3 * nh < n - nh ? 3 * nh : n - nh) : 0;
    for (uint64_t i = 0; i < n; i++) {
        int pos = i < nh ? hi : i < nh + nm ? mid : lo;
        uint64_t it = r[i].item;
        if (s->w[it] != pos)
            move(s, it, pos);
    }
    return bytes_of(s, 0, s->nu);
}

static int rank_policy(solver *s, int by_position, uint64_t limit, uint64_t *cur)
{
    /* ladder 8 / 4 / 2 (the original plan's rule), adapted to the allowed set */
    int hi = -1, mid = -1, lo = -1;
    for (int k = 0; k < s->na; k++) {
        uint32_t b = skv_bit_widths[s->aw[k]];
        if (b == 8)
            hi = k;
        if (b == 4)
            mid = k;
        if (b == 2)
            lo = k;
    }
    if (hi < 0)
        hi = s->top;
    if (lo < 0)
        lo = s->lo;
    if (mid >= 0 && !(mid > lo && mid < hi))
        mid = -1;
    uint64_t n = 0;
    rk *r = skv_malloc((s->N ? s->N : 1) * sizeof(rk));
    if (!r)
        return SKV_ENOMEM;
    for (uint64_t it = 0; it < s->N; it++) {
        uint64_t j = it % s->T;
        if (s->prot[j])
            continue;
        r[n].key = by_position ? (double)j : s->imp[it];
        r[n].item = it;
        n++;
    }
    qsort(r, n, sizeof *r, rk_cmp);
    uint64_t b0 = rank_assign(s, r, n, 0, hi, mid, lo);
    if (b0 > limit) {
        free(r);
        return skv_error(SKV_EINVAL, "%s needs more room: with every token at %u bits the "
                         "cache takes %llu bytes (the budget leaves %llu)",
                         by_position ? "position" : "greedy", skv_bit_widths[s->aw[lo]],
                         (unsigned long long)b0 + s->pkhd, (unsigned long long)limit + s->pkhd);
    }
    /* largest nh that fits (bytes grow with nh up to bucket lumps) */
    uint64_t a = 0, z = n;
    while (a < z) {
        uint64_t m = a + (z - a + 1) / 2;
        if (rank_assign(s, r, n, m, hi, mid, lo) <= limit)
            a = m;
        else
            z = m - 1;
    }
    while (rank_assign(s, r, n, a, hi, mid, lo) > limit && a > 0)
        a--;
    while (a < n && rank_assign(s, r, n, a + 1, hi, mid, lo) <= limit)
        a++;
    *cur = rank_assign(s, r, n, a, hi, mid, lo);
    /* the thresholds move in steps of four tokens; spend what is left on the
     * next tokens in rank order, one ladder level up each, where it fits */
    for (uint64_t i = a; i < n; i++) {
        uint64_t it = r[i].item;
        int from = s->w[it], to = from == lo && mid >= 0 ? mid : from == lo || from == mid ? hi : -1;
        if (to < 0)
            continue;
        int64_t d = move_delta(s, (uint32_t)(it / s->T), from, to);
        if ((int64_t)*cur + d <= (int64_t)limit) {
            move(s, it, to);
            *cur = (uint64_t)((int64_t)*cur + d);
        }
    }
    free(r);
    return 0;
}

/* ---- local search on the lumps ----
 * Within one unit and width every item's step has the same exact byte delta,
 * so the candidate moves are, per (unit, from, to), the item that gains most
 * (upgrades) or loses least (downgrades).  Take the best single upgrade that
 * fits, else the best upgrade + downgrade pair that fits and improves the
 * objective; repeat.  This spends what the padding lumps left over. */
typedef struct cand {
    double v;      /* gain (up) or loss (down), importance-weighted */
    uint64_t item;
    uint32_t u;
    uint8_t a, b;
} cand;

static int cand_gain_desc(const void *x, const void *y)
{
    const cand *p = x, *q = y;
    return p->v > q->v ? -1 : p->v < q->v ? 1 : (p->item > q->item) - (p->item < q->item);
}
static int cand_loss_asc(const void *x, const void *y)
{
    const cand *p = x, *q = y;
    return p->v < q->v ? -1 : p->v > q->v ? 1 : (p->item > q->item) - (p->item < q->item);
}

static int polish(solver *s, uint64_t limit, uint64_t *cur, int iters)
{
    const int na = s->na;
    size_t nt = (size_t)s->nu * na * na;
    cand *best = skv_malloc(nt * sizeof(cand));
    cand *up = skv_malloc(nt * sizeof(cand)), *dn = skv_malloc(nt * sizeof(cand));
    if (!best || !up || !dn) {
        free(best);
        free(up);
        free(dn);
        return SKV_ENOMEM;
    }
    for (int it = 0; it < iters; it++) {
        for (size_t i = 0; i < nt; i++)
            best[i].item = UINT64_MAX;
        for (uint64_t x = 0; x < s->N; x++) {
            if (s->prot[x % s->T])
                continue;
            uint32_t u = (uint32_t)(x / s->T);
            int a = s->w[x];
            double ea = item_err(s, x, a);
            for (int b = 0; b < na; b++) {
                if (b == a)
                    continue;
                double v = s->imp[x] * (b > a ? ea - item_err(s, x, b) : item_err(s, x, b) - ea);
                cand *c = &best[((size_t)u * na + a) * na + b];
                if (c->item == UINT64_MAX || (b > a ? v > c->v : v < c->v))
                    *c = (cand){v, x, u, (uint8_t)a, (uint8_t)b};
            }
        }
        size_t nup = 0, ndn = 0;
        for (size_t i = 0; i < nt; i++) {
            if (best[i].item == UINT64_MAX)
                continue;
            if (best[i].b > best[i].a)
                up[nup++] = best[i];
            else
                dn[ndn++] = best[i];
        }
        qsort(up, nup, sizeof(cand), cand_gain_desc);
        qsort(dn, ndn, sizeof(cand), cand_loss_asc);
        int done = 0;
        for (size_t i = 0; i < nup && !done; i++) {
            if (up[i].v <= 0)
                break;
            int64_t d = move_delta(s, up[i].u, up[i].a, up[i].b);
            if ((int64_t)*cur + d <= (int64_t)limit) {
                move(s, up[i].item, up[i].b);
                *cur = (uint64_t)((int64_t)*cur + d);
                done = 1;
            }
        }
        for (size_t i = 0; i < nup && !done; i++) {
            for (size_t k = 0; k < ndn && !done; k++) {
                if (up[i].v - dn[k].v <= 1e-12 * fabs(up[i].v))
                    break;
                if (dn[k].item == up[i].item)
                    continue;
                int64_t d1 = move_delta(s, dn[k].u, dn[k].a, dn[k].b);
                move(s, dn[k].item, dn[k].b);
                int64_t d2 = move_delta(s, up[i].u, up[i].a, up[i].b);
                if ((int64_t)*cur + d1 + d2 <= (int64_t)limit) {
                    move(s, up[i].item, up[i].b);
                    *cur = (uint64_t)((int64_t)*cur + d1 + d2);
                    done = 1;
                } else {
                    move(s, dn[k].item, dn[k].a);
                }
            }
        }
        if (!done)
            break;
    }
    free(best);
    free(up);
    free(dn);
    return 0;
}

static double solver_objective(const solver *s)
{
    double o = 0;
    for (uint64_t x = 0; x < s->N; x++)
        o += s->imp[x] * item_err(s, x, s->w[x]);
    return o;
}

/* ---- optimal: convex-hull MCKP ---- */

typedef struct seg {
    double slope; /* importance-weighted error reduction per byte */
    double gain;  /* importance-weighted error reduction */
    double cost;  /* linear bytes */
    uint64_t item;
    uint8_t to;
} seg;

static int seg_cmp(const void *a, const void *b)
{
    const seg *x = a, *y = b;
    if (x->slope != y->slope)
        return x->slope > y->slope ? -1 : 1;
    if (x->item != y->item)
        return x->item < y->item ? -1 : 1;
    return x->to < y->to ? -1 : x->to > y->to;
}

/* The exact optimum of the linear-cost relaxation is the prefix of hull
 * segments sorted by slope (the Lagrange multiplier is the slope where the
 * budget runs out); it is a lower bound of the exact problem, and its
 * integral part, taken under a budget that reserves every bucket's fixed
 * overhead, is feasible.  The fix-up fills what is left by hull steps with
 * exact bytes. */
static int optimal_policy(solver *s, uint64_t limit, uint64_t *cur, double *bound)
{
    size_t nseg = 0, cap = (size_t)s->N * (size_t)(s->na - 1) + 1;
    seg *g = skv_malloc(cap * sizeof(seg));
    if (!g)
        return SKV_ENOMEM;
    double base = 0; /* objective of the minimal configuration */
    uint64_t lin0 = 0;
    for (uint64_t it = 0; it < s->N; it++) {
        int k = s->w[it];
        base += s->imp[it] * item_err(s, it, k);
        lin0 += s->lin[s->aw[k]] * s->mult;
        if (s->prot[it % s->T])
            continue;
        double key;
        int m;
        while ((m = next_step(s, it, k, 1, &key)) >= 0) {
            double gain = s->imp[it] * ((double)item_err(s, it, k) - item_err(s, it, m));
            double cost = (double)(s->lin[s->aw[m]] - s->lin[s->aw[k]]) * s->mult;
            g[nseg++] = (seg){gain / cost, gain, cost, it, (uint8_t)m};
            k = m;
        }
    }
    qsort(g, nseg, sizeof *g, seg_cmp);
    /* lower bound: fractional prefix under the linear budget `limit` */
    double room = (double)limit - (double)lin0, obj = base;
    for (size_t i = 0; i < nseg && room > 0; i++) {
        double f = g[i].cost <= room ? 1.0 : room / g[i].cost;
        obj -= f * g[i].gain;
        room -= f * g[i].cost;
    }
    *bound = obj;
    /* integral prefix under the budget minus every bucket's worst overhead */
    uint64_t reserve = 0;
    for (int k = 0; k < s->na; k++) {
        int wi = s->aw[k];
        if (!skv_bit_widths[wi])
            continue;
        uint64_t chunks = (s->T + s->maxtok[wi] - 1) / s->maxtok[wi];
        reserve += chunks * (SKV_CHUNK_HEADER_LEN + SKV_CHUNK_CRC_LEN + SKV_PBKT_HEADER_LEN +
                             5 * (SKV_ALIGN - 1));
    }
    reserve *= (uint64_t)s->nu * s->mult;
    double lroom = (double)limit - (double)reserve - (double)lin0;
    for (size_t i = 0; i < nseg; i++) {
        if (g[i].cost > lroom)
            break;
        lroom -= g[i].cost;
        move(s, g[i].item, g[i].to);
    }
    free(g);
    *cur = bytes_of(s, 0, s->nu);
    if (*cur > limit) /* cannot happen: the reserve covers all overhead */
        return skv_error(SKV_EINVAL, "optimal: reserved overhead exceeded");
    int rc = heap_fill(s, 0, s->nu, cur, limit, 1);
    if (rc == 0)
        rc = polish(s, limit, cur, 64);
    if (rc < 0)
        return rc;
    /* the marginal-gain fill from the minimum, polished, is a second
     * candidate: keep whichever is better, so the oracle is never beaten by
     * smartkv on the lumps */
    uint8_t *keep = skv_malloc(s->N ? s->N : 1);
    uint64_t *kcnt = skv_malloc((size_t)s->nu * SKV_NBITS * sizeof(uint64_t));
    if (!keep || !kcnt) {
        free(keep);
        free(kcnt);
        return SKV_ENOMEM;
    }
    memcpy(keep, s->w, s->N);
    memcpy(kcnt, s->cnt, (size_t)s->nu * SKV_NBITS * sizeof(uint64_t));
    uint64_t kcur = *cur;
    double kobj = solver_objective(s);
    *cur = set_min(s, 0, s->nu);
    rc = heap_fill(s, 0, s->nu, cur, limit, 0);
    if (rc == 0)
        rc = polish(s, limit, cur, 64);
    if (rc == 0 && solver_objective(s) >= kobj) {
        memcpy(s->w, keep, s->N);
        memcpy(s->cnt, kcnt, (size_t)s->nu * SKV_NBITS * sizeof(uint64_t));
        *cur = kcur;
    }
    free(keep);
    free(kcnt);
    return rc;
}

/* ---- layer-aware ---- */

static int layer_aware_policy(solver *s, uint64_t limit, uint64_t *cur)
{
    const uint32_t L = s->L, H = s->H;
    double *wt = skv_calloc(L, sizeof(double));
    uint64_t *mn = skv_calloc(L, sizeof(uint64_t)), *mx = skv_calloc(L, sizeof(uint64_t));
    double *share = skv_calloc(L, sizeof(double));
    uint8_t *capped = skv_calloc(L, 1);
    int rc = SKV_ENOMEM;
    if (!wt || !mn || !mx || !share || !capped)
        goto out;
    uint64_t summin = 0;
    for (uint32_t l = 0; l < L; l++) {
        mx[l] = set_all(s, l * H, (l + 1) * H, s->top);
        mn[l] = set_min(s, l * H, (l + 1) * H);
        summin += mn[l];
        double e = 0;
        for (uint32_t h = 0; h < H; h++)
            e += s->p->entropy ? fmax(0.0, (double)s->p->entropy[l * H + h]) : 1.0;
        wt[l] = e / H + 1e-12;
    }
    /* water-filling: the room above the minimum, split by entropy, capped at
     * what a layer can use */
    double left = (double)(limit - summin);
    for (int iter = 0; iter < (int)L + 1 && left > 0.5; iter++) {
        double wsum = 0;
        for (uint32_t l = 0; l < L; l++)
            if (!capped[l])
                wsum += wt[l];
        if (wsum <= 0)
            break;
        double given = 0;
        for (uint32_t l = 0; l < L; l++) {
            if (capped[l])
                continue;
            double add = left * wt[l] / wsum, room = (double)(mx[l] - mn[l]) - share[l];
            if (add >= room) {
                add = room;
                capped[l] = 1;
            }
            share[l] += add;
            given += add;
        }
        left -= given;
    }
    *cur = summin;
    for (uint32_t l = 0; l < L; l++) {
        uint64_t cl = mn[l];
        if ((rc = heap_fill(s, l * H, (l + 1) * H, &cl, mn[l] + (uint64_t)share[l], 0)) < 0)
            goto out;
        *cur += cl - mn[l];
    }
    /* what the per-layer budgets left over goes to a final global pass */
    rc = heap_fill(s, 0, s->nu, cur, limit, 0);
out:
    free(wt);
    free(mn);
    free(mx);
    free(share);
    free(capped);
    return rc;
}

/* ---- random: smartkv's widths shuffled within each unit ---- */

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void shuffle_units(solver *s, uint64_t seed)
{
    uint64_t st = seed ^ 0x5348554646ull;
    uint64_t *idx = NULL;
    for (uint32_t u = 0; u < s->nu; u++) {
        uint8_t *w = s->w + (size_t)u * s->T;
        /* Fisher-Yates over the unprotected tokens (the protected keep the top) */
        uint64_t n = 0;
        for (uint64_t j = 0; j < s->T; j++)
            n += !s->prot[j];
        if (!idx && !(idx = skv_malloc((s->T ? s->T : 1) * sizeof(uint64_t))))
            return; /* cannot happen in practice; leaves smartkv's order */
        n = 0;
        for (uint64_t j = 0; j < s->T; j++)
            if (!s->prot[j])
                idx[n++] = j;
        for (uint64_t i = n; i > 1; i--) {
            uint64_t k = splitmix(&st) % i;
            uint8_t t = w[idx[i - 1]];
            w[idx[i - 1]] = w[idx[k]];
            w[idx[k]] = t;
        }
    }
    free(idx);
}

/* ---- driver ---- */

void skv_alloc_cfg_defaults(skv_alloc_cfg *c)
{
    memset(c, 0, sizeof *c);
    c->policy = SKV_POLICY_SMARTKV;
    c->budget = 0.25;
    c->width_mask = SKV_WIDTH_MASK_DEFAULT;
    c->sinks = 4;
    c->recent = 32;
    c->seed = 1;
    c->qcfg.k_mode = SKV_QMODE_ASYM;
    c->qcfg.v_mode = SKV_QMODE_ASYM;
}

static const char *const policy_names[] = {NULL,     "smartkv", "greedy",  "optimal",
                                           "uniform", "random",  "position", "layer-aware"};

const char *skv_policy_name(uint32_t p)
{
    return p >= SKV_POLICY_SMARTKV && p <= SKV_POLICY_LAYER_AWARE ? policy_names[p] : "unknown";
}

int skv_policy_parse(const char *str, uint32_t *policy, uint32_t *ubits)
{
    if (!strncmp(str, "uniform:", 8)) {
        char *end;
        const char *n = str + 8;
        unsigned long v = (*n >= '0' && *n <= '9') ? strtoul(n, &end, 10) : 99;
        if (v > 16 || *end || skv_width_index((uint32_t)v) < 0)
            return skv_error(SKV_EINVAL, "uniform:N needs N in 0, 2, 3, 4, 8, 16 (got '%s')",
                             str);
        *policy = SKV_POLICY_UNIFORM;
        *ubits = (uint32_t)v;
        return 0;
    }
    for (uint32_t p = SKV_POLICY_SMARTKV; p <= SKV_POLICY_LAYER_AWARE; p++)
        if (p != SKV_POLICY_UNIFORM && !strcmp(str, policy_names[p])) {
            *policy = p;
            *ubits = 0;
            return 0;
        }
    return skv_error(SKV_EINVAL, "unknown policy '%s' (smartkv, greedy, optimal, uniform:N, "
                     "random, position, layer-aware)", str);
}

double skv_alloc_objective(const skv_alloc_problem *p, const uint8_t *bits)
{
    double o = 0;
    uint64_t n = (uint64_t)p->n_layers * p->n_kv_heads * p->n_tokens;
    for (uint64_t i = 0; i < n; i++) {
        int wi = skv_width_index(bits[i]);
        if (wi >= 0)
            o += (double)p->importance[i] * p->err[i * SKV_NBITS + wi];
    }
    return o;
}

static void solver_free(solver *s)
{
    free(s->ue_own);
    free(s->imp);
    free(s->prot);
    free(s->w);
    free(s->cnt);
}

int skv_alloc_solve(const skv_alloc_cfg *cfg, const skv_alloc_problem *p, uint8_t *bits,
                    skv_alloc_result *res)
{
    int rc;
    solver S, *s = &S;
    memset(s, 0, sizeof S);
    memset(res, 0, sizeof *res);
    s->cfg = cfg;
    s->p = p;
    s->q = cfg->qcfg;
    if ((rc = skv_qcfg_check(&s->q)) < 0)
        return rc;
    if (p->n_layers == 0 || p->n_kv_heads == 0 || p->n_tokens == 0)
        return skv_error(SKV_EINVAL, "empty allocation problem");
    if (cfg->width_mask == 0 || (cfg->width_mask & ~SKV_WIDTH_MASK_ALL))
        return skv_error(SKV_EINVAL, "bad width mask 0x%x", cfg->width_mask);
    if (cfg->policy < SKV_POLICY_SMARTKV || cfg->policy > SKV_POLICY_LAYER_AWARE)
        return skv_error(SKV_EINVAL, "unknown policy %u", cfg->policy);
    if (!isfinite(cfg->budget) || cfg->budget < 0)
        return skv_error(SKV_EINVAL, "budget %g is not a finite value >= 0", cfg->budget);
    if (cfg->policy == SKV_POLICY_LAYER_AWARE && cfg->share_layers)
        return skv_error(SKV_EINVAL, "layer-aware allocates per layer; it cannot be combined "
                         "with shared layers");
    s->L = p->n_layers;
    s->H = p->n_kv_heads;
    s->T = p->n_tokens;
    s->mult = cfg->share_layers ? s->L : 1;
    s->nu = cfg->share_layers ? s->H : s->L * s->H;
    s->N = (uint64_t)s->nu * s->T;
    s->pkhd = skv_alloc_pkhd_bytes(&s->q);
    res->fp16_bytes = skv_alloc_fp16_bytes(s->L, s->H, s->T, s->q.head_dim);

    for (int i = 0; i < SKV_NBITS; i++) {
        uint32_t b = skv_bit_widths[i];
        if (cfg->width_mask & (1u << b))
            s->aw[s->na++] = i;
        if (b) {
            s->maxtok[i] = skv_pbkt_max_tokens(&s->q, b);
            s->fullbytes[i] = SKV_CHUNK_HEADER_LEN + SKV_CHUNK_CRC_LEN +
                              skv_pbkt_payload_bytes(&s->q, b, s->maxtok[i]);
            s->lin[i] = 4 + skv_par_bytes(b, s->q.head_dim, s->q.k_group, s->q.k_mode) +
                        skv_par_bytes(b, s->q.head_dim, s->q.v_group, s->q.v_mode) +
                        2 * skv_row_bytes(b, s->q.head_dim);
        }
    }
    s->top = s->na - 1;
    s->lo = 0;
    for (int k = 0; k + 1 < s->na; k++)
        if (s->lin[s->aw[k]] >= s->lin[s->aw[k + 1]])
            return skv_error(SKV_EINVAL, "with these groups %u-bit tokens cost no more than "
                             "%u-bit ones; use larger --group", skv_bit_widths[s->aw[k + 1]],
                             skv_bit_widths[s->aw[k]]);
    if (cfg->policy == SKV_POLICY_UNIFORM && !(cfg->width_mask & (1u << cfg->uniform_bits)))
        return skv_error(SKV_EINVAL, "uniform:%u: width %u is not in the allowed set",
                         cfg->uniform_bits, cfg->uniform_bits);

    size_t nerr;
    rc = SKV_ENOMEM;
    if (skv_mul_sizes(&nerr, 2, (size_t)s->N, (size_t)SKV_NBITS)) {
        rc = skv_error(SKV_ELIMIT, "allocation problem too large");
        goto out;
    }
    s->imp = skv_malloc((size_t)s->N * sizeof(double));
    s->prot = skv_calloc((size_t)s->T, 1);
    s->w = skv_calloc((size_t)s->N, 1);
    s->cnt = skv_calloc((size_t)s->nu, SKV_NBITS * sizeof(uint64_t));
    if (!s->imp || !s->prot || !s->w || !s->cnt)
        goto out;
    if (cfg->share_layers) {
        s->ue_own = skv_calloc(nerr, sizeof(float));
        if (!s->ue_own)
            goto out;
        for (uint32_t l = 0; l < s->L; l++)
            for (size_t i = 0; i < nerr; i++)
                s->ue_own[i] += p->err[(size_t)l * nerr + i];
        s->ue = s->ue_own;
    } else {
        s->ue = p->err;
    }
    double mean = 0;
    for (uint64_t it = 0; it < s->N; it++) {
        /* with share_layers, layer 0 holds the importance summed over layers */
        double v = p->importance[it];
        s->imp[it] = v;
        mean += v;
    }
    mean /= (double)s->N;
    for (uint64_t it = 0; it < s->N; it++)
        s->imp[it] += 1e-9 * mean + 1e-30;
    if (cfg->policy != SKV_POLICY_UNIFORM) /* uniform protects nothing */
        for (uint64_t j = 0; j < s->T; j++)
            s->prot[j] = j < cfg->sinks || j + cfg->recent >= s->T;

    uint64_t budget = 0, cur = 0;
    if (cfg->budget > 0) {
        double b = floor(cfg->budget * (double)res->fp16_bytes);
        budget = b >= 1.8e19 ? UINT64_MAX : (uint64_t)b;
    }
    res->budget_bytes = budget;
    uint64_t minb = s->pkhd + set_min(s, 0, s->nu);
    res->min_bytes = minb;

    if (cfg->policy == SKV_POLICY_UNIFORM) {
        int pos = 0;
        for (int k = 0; k < s->na; k++)
            if (skv_bit_widths[s->aw[k]] == cfg->uniform_bits)
                pos = k;
        cur = set_all(s, 0, s->nu, pos);
        if (budget && cur + s->pkhd > budget) {
            rc = skv_error(SKV_EINVAL, "uniform:%u takes %llu bytes, beta %.6g of the fp16 "
                           "cache; the budget beta %g allows %llu", cfg->uniform_bits,
                           (unsigned long long)cur + s->pkhd,
                           (double)(cur + s->pkhd) / (double)res->fp16_bytes, cfg->budget,
                           (unsigned long long)budget);
            goto out;
        }
    } else if (cfg->budget >= 1) {
        cur = set_all(s, 0, s->nu, s->top); /* no compression asked for */
    } else {
        if (budget == 0) {
            rc = skv_error(SKV_EINVAL, "policy %s needs a budget beta > 0",
                           skv_policy_name(cfg->policy));
            goto out;
        }
        if (budget < minb) {
            char wl[32];
            skv_width_mask_format(cfg->width_mask, wl, sizeof wl);
            rc = skv_error(SKV_EINVAL, "budget beta %g (%llu bytes) is below the smallest cache "
                           "these settings allow: beta %.6f (%llu bytes, %u protected tokens "
                           "at %u bits, the rest at %u bits; widths %s)",
                           cfg->budget, (unsigned long long)budget,
                           (double)minb / (double)res->fp16_bytes, (unsigned long long)minb,
                           (unsigned)(cfg->sinks + cfg->recent < s->T ? cfg->sinks + cfg->recent
                                                                      : s->T),
                           skv_bit_widths[s->aw[s->top]], skv_bit_widths[s->aw[s->lo]], wl);
            goto out;
        }
        uint64_t limit = budget - s->pkhd;
        cur = minb - s->pkhd;
        switch (cfg->policy) {
        case SKV_POLICY_SMARTKV:
        case SKV_POLICY_RANDOM:
            rc = heap_fill(s, 0, s->nu, &cur, limit, 0);
            if (rc == 0 && cfg->policy == SKV_POLICY_RANDOM)
                shuffle_units(s, cfg->seed);
            break;
        case SKV_POLICY_GREEDY:
            rc = rank_policy(s, 0, limit, &cur);
            break;
        case SKV_POLICY_POSITION:
            rc = rank_policy(s, 1, limit, &cur);
            break;
        case SKV_POLICY_OPTIMAL:
            rc = optimal_policy(s, limit, &cur, &res->bound);
            break;
        case SKV_POLICY_LAYER_AWARE:
            rc = layer_aware_policy(s, limit, &cur);
            break;
        }
        if (rc < 0)
            goto out;
    }

    /* write the widths out, one row per (layer, kv head) */
    for (uint32_t l = 0; l < s->L; l++)
        for (uint32_t h = 0; h < s->H; h++) {
            uint32_t u = cfg->share_layers ? h : l * s->H + h;
            uint8_t *dst = bits + ((size_t)l * s->H + h) * s->T;
            const uint8_t *w = s->w + (size_t)u * s->T;
            for (uint64_t j = 0; j < s->T; j++)
                dst[j] = (uint8_t)skv_bit_widths[s->aw[w[j]]];
        }
    uint64_t check;
    if ((rc = skv_alloc_cache_bytes(&s->q, s->L, s->H, s->T, bits, &check)) < 0)
        goto out;
    if (check != cur + s->pkhd) {
        rc = skv_error(SKV_EINVAL, "internal: byte model %llu differs from the tracked %llu",
                       (unsigned long long)check, (unsigned long long)cur + s->pkhd);
        goto out;
    }
    if (budget && cfg->budget < 1 && check > budget) {
        rc = skv_error(SKV_EINVAL, "internal: allocation over budget (%llu > %llu)",
                       (unsigned long long)check, (unsigned long long)budget);
        goto out;
    }
    res->bytes = check;
    res->objective = skv_alloc_objective(p, bits);
    uint64_t n = (uint64_t)s->L * s->H * s->T;
    for (uint64_t i = 0; i < n; i++)
        res->hist[skv_width_index(bits[i])]++;
    rc = 0;
out:
    solver_free(s);
    return rc;
}
