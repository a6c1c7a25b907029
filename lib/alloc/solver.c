/* solver.c -- what every allocation policy shares: the exact byte model
 * of a candidate allocation, single-token moves, the marginal-gain heap,
 * rank-threshold assignment and the local search on the bucket lumps.
 * The policies (lib/alloc/policy/) are built from these; the driver is
 * lib/alloc/alloc_solve.c.  See solver.h for the problem. */
#include "solver.h"
#include "smartkv_error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- exact bytes ---- */

uint64_t sv_fbytes(const solver *s, int wi, uint64_t n)
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
uint64_t sv_unit_bytes(const solver *s, uint32_t u)
{
    uint64_t b = 0;
    for (int k = 0; k < s->na; k++)
        b += sv_fbytes(s, s->aw[k], s->cnt[(size_t)u * SKV_NBITS + k]);
    return b * s->mult;
}

/* exact change in bytes when one item of unit u moves from position a to b */
int64_t sv_move_delta(const solver *s, uint32_t u, int a, int b)
{
    const uint64_t *c = s->cnt + (size_t)u * SKV_NBITS;
    int wa = s->aw[a], wb = s->aw[b];
    int64_t d = (int64_t)sv_fbytes(s, wa, c[a] - 1) - (int64_t)sv_fbytes(s, wa, c[a]) +
                (int64_t)sv_fbytes(s, wb, c[b] + 1) - (int64_t)sv_fbytes(s, wb, c[b]);
    return d * (int64_t)s->mult;
}

void sv_move(solver *s, uint64_t item, int b)
{
    uint32_t u = (uint32_t)(item / s->T);
    s->cnt[(size_t)u * SKV_NBITS + s->w[item]]--;
    s->cnt[(size_t)u * SKV_NBITS + b]++;
    s->w[item] = (uint8_t)b;
}

/* Put units [u0, u1) in the smallest configuration: protected tokens at the
 * top width, the rest at the lowest.  Returns their bytes. */
uint64_t sv_set_min(solver *s, uint32_t u0, uint32_t u1)
{
    uint64_t b = 0;
    for (uint32_t u = u0; u < u1; u++) {
        memset(s->cnt + (size_t)u * SKV_NBITS, 0, SKV_NBITS * sizeof(uint64_t));
        for (uint64_t j = 0; j < s->T; j++) {
            int pos = sv_gone(s, (uint64_t)u * s->T + j) ? s->lo : s->prot[j] ? s->top : s->lo;
            s->w[(size_t)u * s->T + j] = (uint8_t)pos;
            s->cnt[(size_t)u * SKV_NBITS + pos]++;
        }
        b += sv_unit_bytes(s, u);
    }
    return b;
}

uint64_t sv_set_all(solver *s, uint32_t u0, uint32_t u1, int pos)
{
    uint64_t b = 0;
    for (uint32_t u = u0; u < u1; u++) {
        memset(s->cnt + (size_t)u * SKV_NBITS, 0, SKV_NBITS * sizeof(uint64_t));
        memset(s->w + (size_t)u * s->T, pos, s->T);
        s->cnt[(size_t)u * SKV_NBITS + pos] = s->T;
        b += sv_unit_bytes(s, u);
    }
    return b;
}

uint64_t sv_bytes_of(const solver *s, uint32_t u0, uint32_t u1)
{
    uint64_t b = 0;
    for (uint32_t u = u0; u < u1; u++)
        b += sv_unit_bytes(s, u);
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
int sv_next_step(const solver *s, uint64_t item, int k, int hull, double *key)
{
    if (k + 1 >= s->na)
        return -1;
    double ek = sv_item_err(s, item, k);
    int best = k + 1;
    double br = -INFINITY;
    for (int m = k + 1; m < (hull ? s->na : k + 2); m++) {
        double de = ek - sv_item_err(s, item, m);
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
int sv_heap_fill(solver *s, uint32_t u0, uint32_t u1, uint64_t *cur, uint64_t limit,
                     int hull)
{
    heap h = {0};
    h.cap = (size_t)(u1 - u0) * s->T + 1;
    h.v = skv_malloc(h.cap * sizeof(hent));
    if (!h.v)
        return SKV_ENOMEM;
    for (uint64_t it = (uint64_t)u0 * s->T; it < (uint64_t)u1 * s->T; it++) {
        if (sv_fixed(s, it))
            continue;
        double key;
        int to = sv_next_step(s, it, s->w[it], hull, &key);
        if (to >= 0)
            h.v[h.n++] = (hent){key, it, (uint8_t)to, 0};
    }
    for (size_t i = h.n / 2; i-- > 0;)
        sift_down(&h, i);
    while (h.n) {
        hent e = hpop(&h);
        uint32_t u = (uint32_t)(e.item / s->T);
        int from = s->w[e.item];
        int64_t d = sv_move_delta(s, u, from, e.to);
        if ((int64_t)*cur + d <= (int64_t)limit) {
            sv_move(s, e.item, e.to);
            *cur = (uint64_t)((int64_t)*cur + d);
            double key;
            int to = sv_next_step(s, e.item, e.to, hull, &key);
            if (to >= 0)
                hpush(&h, (hent){key, e.item, (uint8_t)to, 0});
        } else if (hull && !e.fallback && e.to > from + 1) {
            /* the hull step does not fit: try the next width alone */
            double key;
            int to = sv_next_step(s, e.item, from, 0, &key);
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
            sv_move(s, it, pos);
    }
    return sv_bytes_of(s, 0, s->nu);
}

int sv_rank_policy(solver *s, int by_position, uint64_t limit, uint64_t *cur)
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
        if (sv_fixed(s, it))
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
        int64_t d = sv_move_delta(s, (uint32_t)(it / s->T), from, to);
        if ((int64_t)*cur + d <= (int64_t)limit) {
            sv_move(s, it, to);
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

int sv_polish(solver *s, uint64_t limit, uint64_t *cur, int iters)
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
            if (sv_fixed(s, x))
                continue;
            uint32_t u = (uint32_t)(x / s->T);
            int a = s->w[x];
            double ea = sv_item_err(s, x, a);
            for (int b = 0; b < na; b++) {
                if (b == a)
                    continue;
                double v = s->imp[x] * (b > a ? ea - sv_item_err(s, x, b) : sv_item_err(s, x, b) - ea);
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
            int64_t d = sv_move_delta(s, up[i].u, up[i].a, up[i].b);
            if ((int64_t)*cur + d <= (int64_t)limit) {
                sv_move(s, up[i].item, up[i].b);
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
                int64_t d1 = sv_move_delta(s, dn[k].u, dn[k].a, dn[k].b);
                sv_move(s, dn[k].item, dn[k].b);
                int64_t d2 = sv_move_delta(s, up[i].u, up[i].a, up[i].b);
                if ((int64_t)*cur + d1 + d2 <= (int64_t)limit) {
                    sv_move(s, up[i].item, up[i].b);
                    *cur = (uint64_t)((int64_t)*cur + d1 + d2);
                    done = 1;
                } else {
                    sv_move(s, dn[k].item, dn[k].a);
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

double sv_objective(const solver *s)
{
    double o = 0;
    for (uint64_t x = 0; x < s->N; x++)
        o += s->imp[x] * sv_item_err(s, x, s->w[x]);
    return o;
}


/* ---- two-width policies ---- */

int sv_keepable(const solver *s, uint64_t item)
{
    if (!s->p->stored)
        return 1;
    return s->p->stored[item] >= skv_bit_widths[s->aw[s->top]];
}

void sv_choose_sinks_recent(const solver *s, uint32_t u, uint64_t k, uint8_t *keep, void *ctx)
{
    (void)ctx;
    uint64_t n = 0, base = (uint64_t)u * s->T;
    for (uint64_t j = 0; j < s->T && j < s->cfg->sinks && n < k; j++)
        if (sv_keepable(s, base + j)) {
            keep[j] = 1;
            n++;
        }
    for (uint64_t j = s->T; j-- > 0 && n < k;)
        if (!keep[j] && sv_keepable(s, base + j)) {
            keep[j] = 1;
            n++;
        }
}

/* then which tokens: unit u keeps the k[u] tokens choose marks */
static int choose_all(solver *s, const uint64_t *k, uint8_t *keep, sv_choose_fn choose,
                      void *ctx)
{
    const int lo = s->lo, top = s->top;
    for (uint32_t u = 0; u < s->nu; u++) {
        memset(keep, 0, s->T);
        choose(s, u, k[u], keep, ctx);
        uint64_t n = 0;
        for (uint64_t j = 0; j < s->T; j++) {
            uint64_t it = (uint64_t)u * s->T + j;
            s->w[it] = (uint8_t)(keep[j] && sv_keepable(s, it) ? top : lo);
            n += s->w[it] == top;
        }
        if (n != k[u])
            return skv_error(SKV_EINVAL, "internal: unit %u keeps %llu tokens, not %llu", u,
                             (unsigned long long)n, (unsigned long long)k[u]);
    }
    return 0;
}

int sv_two_level(solver *s, uint64_t limit, uint64_t *cur, sv_choose_fn choose, void *ctx)
{
    const uint32_t nu = s->nu;
    const int lo = s->lo, top = s->top;
    uint64_t *avail = skv_calloc(nu, sizeof(uint64_t)), *k = skv_calloc(nu, sizeof(uint64_t));
    uint8_t *stop = skv_calloc(nu, 1), *keep = skv_malloc(s->T ? s->T : 1);
    int rc = SKV_ENOMEM;
    if (!avail || !k || !stop || !keep)
        goto out;
    *cur = sv_set_all(s, 0, nu, lo);
    for (uint32_t u = 0; u < nu; u++)
        for (uint64_t j = 0; j < s->T; j++)
            avail[u] += (uint64_t)sv_keepable(s, (uint64_t)u * s->T + j);
    /* the counts first: bytes depend on them only */
    for (int more = 1; more;) {
        more = 0;
        for (uint32_t u = 0; u < nu; u++) {
            if (stop[u] || k[u] >= avail[u])
                continue;
            int64_t d = sv_move_delta(s, u, lo, top);
            if ((int64_t)*cur + d > (int64_t)limit) {
                stop[u] = 1;
                continue;
            }
            uint64_t *c = s->cnt + (size_t)u * SKV_NBITS;
            c[lo]--;
            c[top]++;
            k[u]++;
            *cur = (uint64_t)((int64_t)*cur + d);
            more = 1;
        }
    }
    rc = choose_all(s, k, keep, choose, ctx);
out:
    free(avail);
    free(k);
    free(stop);
    free(keep);
    return rc;
}

/* bytes of every unit with k[u] items at the top width, the rest at the lowest */
static uint64_t counts_bytes(solver *s, const uint64_t *k)
{
    uint64_t b = 0;
    for (uint32_t u = 0; u < s->nu; u++) {
        uint64_t *c = s->cnt + (size_t)u * SKV_NBITS;
        memset(c, 0, SKV_NBITS * sizeof(uint64_t));
        c[s->top] += k[u];
        c[s->lo] += s->T - k[u];
        b += sv_unit_bytes(s, u);
    }
    return b;
}

int sv_two_level_counts(solver *s, uint64_t limit, const double *share, const uint64_t *cap,
                        uint64_t *k, uint64_t *cur)
{
    const uint32_t nu = s->nu;
    uint64_t *avail = skv_calloc(nu, sizeof(uint64_t)), *t = skv_calloc(nu, sizeof(uint64_t));
    uint8_t *stop = skv_calloc(nu, 1);
    int rc = SKV_ENOMEM;
    if (!avail || !t || !stop)
        goto out;
    double smin = 0;
    for (uint32_t u = 0; u < nu; u++) {
        for (uint64_t j = 0; j < s->T; j++)
            avail[u] += (uint64_t)sv_keepable(s, (uint64_t)u * s->T + j);
        if (cap && cap[u] < avail[u])
            avail[u] = cap[u];
        if (!(share[u] >= 0) || !isfinite(share[u])) {
            rc = skv_error(SKV_EINVAL, "internal: unit %u has share %g", u, share[u]);
            goto out;
        }
        if (share[u] > 0 && (smin == 0 || share[u] < smin))
            smin = share[u];
    }
    /* the largest x with k[u] = min(avail[u], floor(x share[u])) within the
     * limit (bytes never fall as a count grows: the lowest width is 0 here,
     * or the count only moves items up) */
    double a = 0, z = smin > 0 ? (double)(s->T + 1) / smin : 0;
    for (int it = 0; it < 200 && z > 0 && a < z; it++) {
        double x = 0.5 * (a + z);
        if (x <= a || x >= z)
            break;
        for (uint32_t u = 0; u < nu; u++) {
            double v = floor(x * share[u]);
            t[u] = v >= (double)avail[u] ? avail[u] : (uint64_t)v;
        }
        if (counts_bytes(s, t) <= limit)
            a = x;
        else
            z = x;
    }
    for (uint32_t u = 0; u < nu; u++) {
        double v = floor(a * share[u]);
        k[u] = v >= (double)avail[u] ? avail[u] : (uint64_t)v;
    }
    *cur = counts_bytes(s, k);
    if (*cur > limit) {
        rc = skv_error(SKV_EINVAL, "internal: counts over the limit (%llu > %llu)",
                       (unsigned long long)*cur, (unsigned long long)limit);
        goto out;
    }
    /* what rounding left: one more item per unit, round robin, where it fits */
    for (int more = 1; more;) {
        more = 0;
        for (uint32_t u = 0; u < nu; u++) {
            if (stop[u] || k[u] >= avail[u] || share[u] <= 0)
                continue;
            int64_t d = sv_move_delta(s, u, s->lo, s->top);
            if ((int64_t)*cur + d > (int64_t)limit) {
                stop[u] = 1;
                continue;
            }
            uint64_t *c = s->cnt + (size_t)u * SKV_NBITS;
            c[s->lo]--;
            c[s->top]++;
            k[u]++;
            *cur = (uint64_t)((int64_t)*cur + d);
            more = 1;
        }
    }
    rc = 0;
out:
    free(avail);
    free(t);
    free(stop);
    return rc;
}

int sv_two_level_shares(solver *s, uint64_t limit, uint64_t *cur, const double *share,
                        const uint64_t *cap, sv_choose_fn choose, void *ctx)
{
    uint64_t *k = skv_calloc(s->nu, sizeof(uint64_t));
    uint8_t *keep = skv_malloc(s->T ? s->T : 1);
    int rc = SKV_ENOMEM;
    if (k && keep) {
        sv_set_all(s, 0, s->nu, s->lo);
        rc = sv_two_level_counts(s, limit, share, cap, k, cur);
        if (rc == 0)
            rc = choose_all(s, k, keep, choose, ctx);
    }
    free(k);
    free(keep);
    return rc;
}
