/* merge.c -- attention-guided pruning with online k-means merging of the
 * pruned tokens: the k-means step, attention with centroids and the cache
 * behind skv_kv_ops (see smartkv_merge.h). */
#include "smartkv_merge.h"
#include "eccommon.h"
#include "smartkv_evalcache.h"
#include "smartkv_alloc.h"
#include "smartkv_error.h"
#include "smartkv_qmath.h"
#include "smartkv_quant.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The k-means step (skv_km_update) is in lib/quant/kmeans.c: skv-quant
 * merges offline with it too. */

/* Eight partial sums (the compiler keeps them in vector lanes); the order
 * is fixed, so results do not depend on the build's instruction set. */
static float dot(const float *a, const float *b, uint32_t d)
{
    float acc[8] = {0};
    uint32_t i = 0;
    for (; i + 8 <= d; i += 8)
        for (uint32_t j = 0; j < 8; j++)
            acc[j] += a[i + j] * b[i + j];
    for (; i < d; i++)
        acc[i & 7] += a[i] * b[i];
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

void skv_pm_attend_row(const float *q, uint32_t d, float scale, const float *k, const float *v,
                       uint32_t n, const float *ck, const float *cv, const uint32_t *cnt,
                       uint32_t K, float *out, float *p)
{
    float mx = -INFINITY;
    for (uint32_t r = 0; r < n + K; r++) {
        const float *kr = r < n ? k + (size_t)r * d : ck + (size_t)(r - n) * d;
        if (r >= n && !cnt[r - n]) {
            p[r] = -INFINITY;
            continue;
        }
        float s = dot(q, kr, d) * scale;
        if (r >= n)
            s += logf((float)cnt[r - n]);  /* the members' mass */
        p[r] = s;
        if (s > mx)
            mx = s;
    }
    double z = 0;
    for (uint32_t r = 0; r < n + K; r++) {
        p[r] = p[r] == -INFINITY ? 0.0f : expf(p[r] - mx);
        z += p[r];
    }
    const float iz = z > 0 ? (float)(1.0 / z) : 0.0f;
    memset(out, 0, d * sizeof(float));
    for (uint32_t r = 0; r < n + K; r++) {
        p[r] *= iz;
        if (p[r] == 0)
            continue;
        const float *vr = r < n ? v + (size_t)r * d : cv + (size_t)(r - n) * d;
        for (uint32_t i = 0; i < d; i++)
            out[i] += p[r] * vr[i];
    }
}

/* ---------------------------------------------------------------- config */

void skv_pm_defaults(skv_pm_cfg *c)
{
    memset(c, 0, sizeof *c);
    c->num_clusters = 8;
    c->pruning_interval = 16;
    c->lookback_window = 32;
    c->kmeans_lr = 0;
    c->sinks = 4;
    c->recent = 32;
    c->budget = 0.25;
}

#define PM_MAX_CLUSTERS 65536u
#define PM_MAX_SLOTS 64u

static uint32_t gcd_u32(uint32_t a, uint32_t b)
{
    while (b) {
        uint32_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

int skv_pm_cfg_check(const skv_pm_cfg *c)
{
    if (c->pruning_interval == 0)
        return skv_error(SKV_EINVAL, "prune-merge: pruning interval must be >= 1");
    if (c->lookback_window == 0)
        return skv_error(SKV_EINVAL, "prune-merge: lookback window must be >= 1");
    if (c->lookback_window / gcd_u32(c->pruning_interval, c->lookback_window) > PM_MAX_SLOTS)
        return skv_error(SKV_EINVAL, "prune-merge: lookback window %u needs more than %u epochs "
                         "of gcd(P, D) = %u positions", c->lookback_window, PM_MAX_SLOTS,
                         gcd_u32(c->pruning_interval, c->lookback_window));
    if (c->num_clusters > PM_MAX_CLUSTERS)
        return skv_error(SKV_EINVAL, "prune-merge: %u clusters exceed %u", c->num_clusters,
                         PM_MAX_CLUSTERS);
    if (!(c->kmeans_lr >= 0 && c->kmeans_lr <= 1))
        return skv_error(SKV_EINVAL, "prune-merge: k-means learning rate %g is not in [0, 1]",
                         c->kmeans_lr);
    if (!(c->budget >= 0 && isfinite(c->budget)))
        return skv_error(SKV_EINVAL, "prune-merge: bad budget %g", c->budget);
    const uint32_t widths = 1u << 2 | 1u << 3 | 1u << 4 | 1u << 8 | 1u << 16;
    if (c->kept_mask & ~widths)
        return skv_error(SKV_EINVAL, "prune-merge: kept widths 0x%x are not among 2, 3, 4, 8, 16",
                         c->kept_mask);
    if ((c->kept_mask & ~(1u << 16)) && (c->max_cache_size || !(c->budget > 0)))
        return skv_error(SKV_EINVAL, "prune-merge: mixed precision spends the budget: give -b "
                         "and no --max-cache-size");
    return 0;
}

static int pm_mixed(const skv_pm_cfg *c) { return (c->kept_mask & ~(1u << 16)) != 0; }

static int pm_prunes(const skv_pm_cfg *c) { return c->max_cache_size > 0 || c->budget > 0; }

void skv_pm_describe(const skv_pm_cfg *c, char *buf, size_t n)
{
    if (!pm_prunes(c)) {
        snprintf(buf, n, "prune-merge full");
        return;
    }
    char b[48];
    if (c->max_cache_size)
        snprintf(b, sizeof b, "B=%u", c->max_cache_size);
    else
        snprintf(b, sizeof b, "beta=%g", c->budget);
    char lr[32] = "";
    if (c->kmeans_lr > 0 && c->num_clusters)
        snprintf(lr, sizeof lr, " eta=%g", c->kmeans_lr);
    char sr[48] = "";
    if (c->sinks != 4 || c->recent != 32)
        snprintf(sr, sizeof sr, " sinks=%u recent=%u", c->sinks, c->recent);
    char bl[40] = "";
    if (pm_mixed(c)) {
        char wl[24];
        skv_width_mask_format(c->kept_mask | 1u << 16, wl, sizeof wl);
        snprintf(bl, sizeof bl, " bits=%s", wl);
    }
    snprintf(buf, n, "prune-merge %s K=%u P=%u D=%u%s%s%s", b, c->num_clusters,
             c->pruning_interval, c->lookback_window, lr, sr, bl);
}

/* ---------------------------------------------------------------- cache */

typedef struct pm_head {
    float *k, *v;           /* [cap][d] kept rows, fp16 values */
    uint32_t *pos;          /* [cap] their positions, ascending */
    uint8_t *w;             /* [cap] their widths (16, or lower with mixed precision) */
    uint32_t n, cap;
    float *ck, *cv;         /* [K][d] centroids, fp16 values */
    uint32_t *cnt;          /* [K] members */
    float *acc;             /* [G][m][cap] attention per epoch slot (tracking) */
    int64_t *epoch;         /* [G][m] epoch held by each slot, -1 none */
    float *sc;              /* [G][cap + K] attention scratch */
    uint64_t max_merged;    /* newest merged position + 1 (0: none) */
} pm_head;

typedef struct pm_rank {
    float score;
    uint32_t pos, row;
} pm_rank;

typedef struct pm_cache {
    skv_kv_cache base;
    skv_pm_cfg cfg;
    uint32_t G, K, E, m;    /* query heads per kv head, clusters, epoch, slots */
    int track, hold, mixed;
    skv_qcfg q;             /* mixed precision: the quantizer of rows below 16 bits */
    float *err;             /* mixed: [capacity][SKV_NBITS] prune scratch */
    uint8_t *wsel;          /* mixed: [capacity] */
    uint64_t *len;          /* [n_layers] positions seen */
    uint64_t *next;         /* [n_layers] next scheduled prune */
    pm_head *heads;         /* [n_layers][n_kv_heads] */
    pm_rank *rank;             /* [capacity] prune scratch */
    uint8_t *keep;          /* [capacity] */
    uint64_t n_prunes, prune_ns;
    _Atomic uint64_t attend_ns, track_ns;
} pm_cache;

static const skv_kv_ops pm_ops;

int skv_pm_is(const skv_kv_cache *c) { return c && c->ops == &pm_ops; }

static pm_cache *as_pm(skv_kv_cache *c) { return skv_pm_is(c) ? (pm_cache *)c : NULL; }

static pm_head *head_at(pm_cache *e, uint32_t l, uint32_t h)
{
    return &e->heads[(size_t)l * e->base.n_kv_heads + h];
}

static void *grow(void *p, size_t n, size_t size)
{
    size_t b;
    if (skv_mul_sizes(&b, 2, n, size) < 0) {
        skv_error(SKV_ELIMIT, "prune-merge: %zu rows overflow", n);
        return NULL;
    }
    return skv_realloc(p, b ? b : 1);
}

/* Make room for `need` kept rows in H (tracking and scratch follow). */
static int head_reserve(pm_cache *e, pm_head *H, uint32_t need)
{
    if (need <= H->cap)
        return 0;
    const uint32_t d = e->base.head_dim, G = e->G, m = e->m;
    uint32_t nc = H->cap ? H->cap : 64;
    while (nc < need)
        nc = nc > UINT32_MAX / 2 ? need : nc * 2;
    float *k = grow(H->k, (size_t)nc * d, sizeof(float));
    if (!k)
        return SKV_ENOMEM;
    H->k = k;
    float *v = grow(H->v, (size_t)nc * d, sizeof(float));
    if (!v)
        return SKV_ENOMEM;
    H->v = v;
    uint32_t *pos = grow(H->pos, nc, sizeof(uint32_t));
    if (!pos)
        return SKV_ENOMEM;
    H->pos = pos;
    uint8_t *w = grow(H->w, nc, 1);
    if (!w)
        return SKV_ENOMEM;
    H->w = w;
    float *sc = grow(H->sc, (size_t)G * (nc + e->K), sizeof(float));
    if (!sc)
        return SKV_ENOMEM;
    H->sc = sc;
    if (e->track) {
        float *acc = grow(NULL, (size_t)G * m * nc, sizeof(float));
        if (!acc)
            return SKV_ENOMEM;
        for (size_t s = 0; s < (size_t)G * m; s++) {
            memset(acc + s * nc, 0, (size_t)nc * sizeof(float));
            if (H->acc)
                memcpy(acc + s * nc, H->acc + s * H->cap, (size_t)H->n * sizeof(float));
        }
        free(H->acc);
        H->acc = acc;
    }
    H->cap = nc;
    return 0;
}

static void round_f16(float *x, uint32_t d)
{
    for (uint32_t i = 0; i < d; i++)
        x[i] = skv_f16_to_f32(skv_f32_to_f16(x[i]));
}

/* higher score first; ties: newer first */
static int cmp_rank(const void *a, const void *b)
{
    const pm_rank *x = a, *y = b;
    if (x->score != y->score)
        return x->score > y->score ? -1 : 1;
    return (x->pos < y->pos) - (x->pos > y->pos);
}

/* Kept tokens beyond sinks and recent at a prune at position t that holds
 * `prot` protected rows per head. */
static uint64_t budget_rows(const pm_cache *e, uint64_t t, uint64_t prot)
{
    if (e->cfg.max_cache_size)
        return e->cfg.max_cache_size;
    const uint64_t d = e->base.head_dim, half = e->cfg.pruning_interval / 2;  /* whole tokens */
    const double tok = (double)(4 * d + 4 + (e->track ? 4ull * e->G * e->m : 0));
    const double cent = (double)e->K * (double)(4 * d + 4);
    /* bytes at beta half-way to the next prune */
    double target = e->cfg.budget * (double)(t + half) * (double)(4 * d);
    double rows = floor((target - cent) / tok) - (double)prot - (double)half;
    return rows > 0 ? (uint64_t)rows : 0;
}

/* Bytes of one kept row at width w (see smartkv_merge.h). */
static uint64_t row_bytes_at(const pm_cache *e, uint32_t w)
{
    const uint32_t d = e->base.head_dim;
    uint64_t b = w == 16 ? 4ull * d
                         : 2 * (skv_row_bytes(w, d) + skv_par_bytes(w, d, d, SKV_QMODE_ASYM));
    return b + 4 + (e->mixed ? 1 : 0) + (e->track ? 4ull * e->G * e->m : 0);
}

/* The widths at multiplier lam (into e->wsel); their bytes. */
static double widths_at(pm_cache *e, const pm_head *H, uint32_t r0, uint32_t nc,
                        const uint64_t *bw, double lam)
{
    double total = 0;
    for (uint32_t i = 0; i < nc; i++) {
        const float *er = e->err + (size_t)i * SKV_NBITS;
        const double s = (double)e->rank[i].score + 1e-12; /* unattended rows: cheapest */
        double best = s * er[0];
        int bi = 0;
        for (int wi = 1; wi < SKV_NBITS; wi++) {
            uint32_t w = skv_bit_widths[wi];
            if (!(e->cfg.kept_mask & (1u << w)) || w > H->w[r0 + i])
                continue;
            double c = s * er[wi] + lam * (double)bw[wi];
            if (c < best) {
                best = c;
                bi = wi;
            }
        }
        e->wsel[i] = (uint8_t)skv_bit_widths[bi];
        total += (double)bw[bi];
    }
    return total;
}

/* Mixed precision: the widths of the nc candidate rows r0.. of H (their
 * scores in e->rank[i].score, row order) into e->wsel, the bytes within
 * the head's share R of the budget.  Each row takes the width minimising
 * s * err(w) + lambda * bytes(w) among 0 and the allowed widths at or
 * below its own; lambda is the smallest (to 1e-6 relative) that fits. */
static void choose_widths(pm_cache *e, const pm_head *H, uint32_t r0, uint32_t nc, double R)
{
    const uint32_t d = e->base.head_dim;
    uint64_t bw[SKV_NBITS];
    for (int wi = 0; wi < SKV_NBITS; wi++)
        bw[wi] = wi ? row_bytes_at(e, skv_bit_widths[wi]) : 0;
    for (uint32_t i = 0; i < nc; i++)
        skv_alloc_token_errors(&e->q, H->k + (size_t)(r0 + i) * d, H->v + (size_t)(r0 + i) * d,
                               1, e->err + (size_t)i * SKV_NBITS);
    double lo = 0, hi = 1e-12;
    for (int pass = 0; pass < 200; pass++) {
        const double lam = pass < 100 ? hi : 0.5 * (lo + hi);
        double total = widths_at(e, H, r0, nc, bw, lam);
        if (pass < 100) {          /* grow hi until it fits */
            if (total <= R)
                pass = 99;
            else {
                lo = hi;
                hi *= 4;
            }
        } else if (total <= R) {
            hi = lam;
        } else {
            lo = lam;
        }
        if (pass >= 100 && hi - lo <= 1e-6 * hi)
            break;
    }
    /* the last choice may be lo's: redo at hi, which fits */
    widths_at(e, H, r0, nc, bw, hi);
}

/* Store row r of H at width w < 16: quantized, held dequantized. */
static void lower_row(pm_cache *e, pm_head *H, uint32_t r, uint32_t w)
{
    const uint32_t d = e->base.head_dim;
    uint8_t par[64], dat[SKV_MAX_HEAD_DIM];
    for (int kv = 0; kv < 2; kv++) {
        float *x = (kv ? H->v : H->k) + (size_t)r * d;
        /* rows were fp16 when appended: the quantizer takes them */
        if (skv_quantize_row(x, d, w, d, SKV_QMODE_ASYM, par, dat) == 0)
            skv_dequantize_row(par, dat, d, w, d, SKV_QMODE_ASYM, x);
    }
    H->w[r] = (uint8_t)w;
}

static int prune_layer(pm_cache *e, uint32_t l, uint64_t t)
{
    const skv_kv_cache *c = &e->base;
    const uint32_t d = c->head_dim, G = e->G, m = e->m, K = e->K;
    const uint64_t W = e->cfg.recent, S = e->cfg.sinks;
    /* epochs summed: the m newest that end at or before t */
    const int64_t e_last = (int64_t)((t - 1) / e->E), e_first = e_last - (int64_t)m + 1;
    for (uint32_t h = 0; h < c->n_kv_heads; h++) {
        pm_head *H = head_at(e, l, h);
        uint32_t r0 = 0, r1 = H->n;
        while (r0 < H->n && H->pos[r0] < S)
            r0++;
        while (r1 > r0 && (uint64_t)H->pos[r1 - 1] + W >= t)
            r1--;
        uint32_t nc = r1 - r0;
        uint64_t B = e->mixed ? 0 : budget_rows(e, t, r0 + (H->n - r1));
        double R = 0;
        if (e->mixed) {
            const uint64_t half = e->cfg.pruning_interval / 2;
            const double cent = (double)K * (double)(4ull * d + 4);
            R = e->cfg.budget * (double)(t + half) * (double)(4ull * d) - cent -
                (double)(r0 + (H->n - r1) + half) * (double)row_bytes_at(e, 16);
            R = R > 0 ? R : 0;
            double cur = 0;
            for (uint32_t i = r0; i < r1; i++)
                cur += (double)row_bytes_at(e, H->w[i]);
            if (cur <= R)
                continue;
        } else if (nc <= B) {
            continue;
        }
        for (uint32_t i = 0; i < nc; i++) {
            double s = 0;
            for (uint32_t g = 0; g < G; g++)
                for (uint32_t sl = 0; sl < m; sl++) {
                    int64_t ep = H->epoch[g * m + sl];
                    if (ep >= e_first && ep <= e_last)
                        s += H->acc[((size_t)g * m + sl) * H->cap + r0 + i];
                }
            e->rank[i] = (pm_rank){(float)s, H->pos[r0 + i], i};
        }
        memset(e->keep, 0, nc);
        if (e->mixed) {
            choose_widths(e, H, r0, nc, R);  /* rank[i] is row r0 + i, unsorted */
            for (uint32_t i = 0; i < nc; i++) {
                e->keep[i] = e->wsel[i] != 0;
                if (e->wsel[i] && e->wsel[i] < H->w[r0 + i])
                    lower_row(e, H, r0 + i, e->wsel[i]);
            }
        } else {
            qsort(e->rank, nc, sizeof *e->rank, cmp_rank);
            for (uint64_t i = 0; i < B; i++)
                e->keep[e->rank[i].row] = 1;
        }
        /* merge the pruned ones in position order, then compact */
        uint32_t w = r0;
        for (uint32_t r = r0; r < H->n; r++) {
            int kept = r >= r1 || e->keep[r - r0];
            if (!kept) {
                if (K) {
                    uint32_t j = skv_km_update(H->ck, H->cv, H->cnt, K, d, H->k + (size_t)r * d,
                                               H->v + (size_t)r * d, e->cfg.kmeans_lr);
                    round_f16(H->ck + (size_t)j * d, d);  /* the stored centroid is fp16 */
                    round_f16(H->cv + (size_t)j * d, d);
                    if ((uint64_t)H->pos[r] + 1 > H->max_merged)
                        H->max_merged = (uint64_t)H->pos[r] + 1;
                } else if ((uint64_t)H->pos[r] + 1 > H->max_merged) {
                    H->max_merged = (uint64_t)H->pos[r] + 1;
                }
                continue;
            }
            if (w != r) {
                memcpy(H->k + (size_t)w * d, H->k + (size_t)r * d, d * sizeof(float));
                memcpy(H->v + (size_t)w * d, H->v + (size_t)r * d, d * sizeof(float));
                H->pos[w] = H->pos[r];
                H->w[w] = H->w[r];
                if (e->track)
                    for (size_t s = 0; s < (size_t)G * m; s++)
                        H->acc[s * H->cap + w] = H->acc[s * H->cap + r];
            }
            w++;
        }
        H->n = w;
    }
    if (l == 0)
        e->n_prunes++;
    return 0;
}

static uint64_t next_after(const pm_cache *e, uint64_t t)
{
    uint64_t P = e->cfg.pruning_interval;
    return (t / P + 1) * P;
}

int skv_pm_prune(skv_kv_cache *cc)
{
    pm_cache *e = as_pm(cc);
    if (!e)
        return skv_error(SKV_EINVAL, "kv cache: not a prune-merge cache");
    if (!pm_prunes(&e->cfg))
        return 0;
    const uint64_t T = e->len[0];
    for (uint32_t l = 1; l < cc->n_layers; l++)
        if (e->len[l] != T)
            return skv_error(SKV_EINVAL, "kv cache: prune with layer %u at %llu positions and "
                             "layer 0 at %llu", l, (unsigned long long)e->len[l],
                             (unsigned long long)T);
    if (T == 0)
        return 0;
    uint64_t t0 = now_ns();
    int rc;
    for (uint32_t l = 0; l < cc->n_layers; l++) {
        if ((rc = prune_layer(e, l, T)) < 0)
            return rc;
        e->next[l] = next_after(e, T);
    }
    e->prune_ns += now_ns() - t0;
    return 0;
}

void skv_pm_hold(skv_kv_cache *c, int hold)
{
    pm_cache *e = as_pm(c);
    if (e)
        e->hold = hold;
}

/* Forget positions >= T everywhere; merged tokens cannot be taken back. */
static int cut_to(pm_cache *e, uint64_t T)
{
    const skv_kv_cache *c = &e->base;
    for (uint32_t l = 0; l < c->n_layers; l++)
        for (uint32_t h = 0; h < c->n_kv_heads; h++)
            if (T > 0 && head_at(e, l, h)->max_merged > T)
                return skv_error(SKV_EINVAL, "kv cache: cannot forget positions >= %llu: "
                                 "position %llu was merged or pruned", (unsigned long long)T,
                                 (unsigned long long)head_at(e, l, h)->max_merged - 1);
    for (uint32_t l = 0; l < c->n_layers; l++) {
        for (uint32_t h = 0; h < c->n_kv_heads; h++) {
            pm_head *H = head_at(e, l, h);
            while (H->n && H->pos[H->n - 1] >= T)
                H->n--;
            if (T == 0) {
                H->max_merged = 0;
                if (e->K) {
                    memset(H->cnt, 0, e->K * sizeof *H->cnt);
                    memset(H->ck, 0, (size_t)e->K * c->head_dim * sizeof(float));
                    memset(H->cv, 0, (size_t)e->K * c->head_dim * sizeof(float));
                }
                if (e->track)
                    for (size_t s = 0; s < (size_t)e->G * e->m; s++)
                        H->epoch[s] = -1;
            }
        }
        if (e->len[l] > T)
            e->len[l] = T;
        if (T == 0)
            e->next[l] = e->cfg.pruning_interval;
    }
    return 0;
}

static int pm_append(skv_kv_cache *c, uint32_t layer, uint64_t pos, uint32_t n, const float *k,
                     const float *v)
{
    pm_cache *e = (pm_cache *)c;
    int rc;
    /* pos < held: re-evaluation of forgotten positions, dropped everywhere */
    if ((rc = skv_kv_append_check(c, layer, pos, n, e->len)) > 0)
        rc = cut_to(e, pos);
    if (rc < 0)
        return rc;
    if (!e->hold && pm_prunes(&e->cfg) && pos > 0 && pos >= e->next[layer]) {
        uint64_t t0 = now_ns();
        if ((rc = prune_layer(e, layer, pos)) < 0)
            return rc;
        e->next[layer] = next_after(e, pos);
        e->prune_ns += now_ns() - t0;
    }
    const uint32_t d = c->head_dim, row = c->n_kv_heads * d;
    for (uint32_t h = 0; h < c->n_kv_heads; h++) {
        pm_head *H = head_at(e, layer, h);
        if ((rc = head_reserve(e, H, H->n + n)) < 0)
            return rc;
        for (uint32_t i = 0; i < n; i++) {
            const float *sk = k + (size_t)i * row + (size_t)h * d;
            const float *sv = v + (size_t)i * row + (size_t)h * d;
            float *dk = H->k + (size_t)(H->n + i) * d, *dv = H->v + (size_t)(H->n + i) * d;
            if ((rc = ec_f16_row(sk, sv, dk, dv, d, layer, h, pos + i)) < 0)
                return rc;
            H->pos[H->n + i] = (uint32_t)(pos + i);
            H->w[H->n + i] = 16;
            if (e->track)
                for (size_t s = 0; s < (size_t)e->G * e->m; s++)
                    H->acc[s * H->cap + H->n + i] = 0;
        }
        H->n += n;
    }
    e->len[layer] = pos + n;
    return 0;
}

static int pm_attend(skv_kv_cache *c, uint32_t layer, uint32_t head, uint64_t pos, uint32_t n,
                     const float *q, size_t q_stride, float scale, float *out, size_t out_stride,
                     float *probs, size_t probs_stride)
{
    pm_cache *e = (pm_cache *)c;
    int rc = skv_kv_attend_check(c, layer, head, pos, n, e->len);
    if (rc < 0)
        return rc;
    const uint32_t d = c->head_dim, g = head % e->G, m = e->m;
    pm_head *H = head_at(e, layer, head / e->G);
    float *sc = H->sc + (size_t)g * (H->cap + e->K);
    uint64_t track = 0;
    for (uint32_t i = 0; i < n; i++) {
        uint64_t t0 = now_ns();
        const uint64_t qp = pos + i;
        uint32_t vis = H->n;
        while (vis && H->pos[vis - 1] > qp)
            vis--;
        float *o = out + i * out_stride;
        skv_pm_attend_row(q + i * q_stride, d, scale, H->k, H->v, vis, H->ck, H->cv, H->cnt,
                          e->K, o, sc);
        float *p = probs + i * probs_stride;
        memset(p, 0, (size_t)(pos + n) * sizeof(float));
        for (uint32_t r = 0; r < vis; r++)
            p[H->pos[r]] = sc[r];
        uint64_t t1 = now_ns();
        atomic_fetch_add_explicit(&e->attend_ns, t1 - t0, memory_order_relaxed);
        if (!e->track)
            continue;
        const int64_t ep = (int64_t)(qp / e->E);
        const uint32_t sl = (uint32_t)(ep % m);
        float *a = H->acc + ((size_t)g * m + sl) * H->cap;
        if (H->epoch[g * m + sl] != ep) {
            memset(a, 0, (size_t)H->n * sizeof(float));
            H->epoch[g * m + sl] = ep;
        }
        for (uint32_t r = 0; r < vis; r++)
            a[r] += sc[r];
        track += now_ns() - t1;
    }
    if (track)
        atomic_fetch_add_explicit(&e->track_ns, track, memory_order_relaxed);
    return 0;
}

static int pm_truncate(skv_kv_cache *c, uint64_t n)
{
    pm_cache *e = (pm_cache *)c;
    return skv_kv_truncates(c, n, e->len) ? cut_to(e, n) : 0;
}

static void pm_destroy(skv_kv_cache *c)
{
    pm_cache *e = (pm_cache *)c;
    if (e->heads)
        for (size_t i = 0; i < (size_t)c->n_layers * c->n_kv_heads; i++) {
            pm_head *H = &e->heads[i];
            free(H->k);
            free(H->v);
            free(H->pos);
            free(H->w);
            free(H->ck);
            free(H->cv);
            free(H->cnt);
            free(H->acc);
            free(H->epoch);
            free(H->sc);
        }
    free(e->heads);
    free(e->len);
    free(e->next);
    free(e->rank);
    free(e->keep);
    free(e->err);
    free(e->wsel);
    free(e);
}

static const skv_kv_ops pm_ops = {pm_append, pm_attend, pm_truncate, pm_destroy};

skv_kv_cache *skv_pm_new(const skv_pm_cfg *cfg, uint32_t n_layers, uint32_t n_heads,
                         uint32_t n_kv_heads, uint32_t head_dim, uint64_t capacity)
{
    if (!n_layers || !n_heads || !n_kv_heads || !head_dim || head_dim > SKV_MAX_HEAD_DIM ||
        !capacity || capacity > SKV_MAX_TOKENS || capacity > UINT32_MAX || n_heads % n_kv_heads)
        return skv_error(SKV_EINVAL, "kv cache: bad shape (layers %u, heads %u/%u, head_dim %u, "
                         "capacity %llu)", n_layers, n_heads, n_kv_heads, head_dim,
                         (unsigned long long)capacity), NULL;
    if (skv_pm_cfg_check(cfg) < 0)
        return NULL;
    pm_cache *e = skv_calloc(1, sizeof *e);
    if (!e)
        return NULL;
    skv_kv_base_init(&e->base, &pm_ops, n_layers, n_heads, n_kv_heads, head_dim, capacity);
    e->cfg = *cfg;
    e->G = n_heads / n_kv_heads;
    e->track = pm_prunes(cfg);
    e->K = e->track ? cfg->num_clusters : 0;
    e->E = gcd_u32(cfg->pruning_interval, cfg->lookback_window);
    e->m = cfg->lookback_window / e->E;
    e->mixed = e->track && pm_mixed(cfg);
    e->q = (skv_qcfg){.head_dim = head_dim, .k_group = head_dim, .v_group = head_dim, .k_mode = SKV_QMODE_ASYM, .v_mode = SKV_QMODE_ASYM, .k_tokens = 0};
    const size_t nh = (size_t)n_layers * n_kv_heads;
    if (!(e->len = skv_calloc(n_layers, sizeof *e->len)) ||
        !(e->next = skv_calloc(n_layers, sizeof *e->next)) ||
        !(e->heads = skv_calloc(nh, sizeof *e->heads)) ||
        !(e->rank = skv_malloc((size_t)capacity * sizeof *e->rank)) ||
        !(e->keep = skv_malloc((size_t)capacity)))
        goto fail;
    if (e->mixed && (!(e->err = skv_malloc((size_t)capacity * SKV_NBITS * sizeof(float))) ||
                     !(e->wsel = skv_malloc((size_t)capacity))))
        goto fail;
    for (uint32_t l = 0; l < n_layers; l++)
        e->next[l] = cfg->pruning_interval;
    for (size_t i = 0; i < nh; i++) {
        pm_head *H = &e->heads[i];
        if (e->K && (!(H->ck = skv_calloc((size_t)e->K * head_dim, sizeof(float))) ||
                     !(H->cv = skv_calloc((size_t)e->K * head_dim, sizeof(float))) ||
                     !(H->cnt = skv_calloc(e->K, sizeof(uint32_t)))))
            goto fail;
        if (e->track) {
            if (!(H->epoch = skv_malloc((size_t)e->G * e->m * sizeof(int64_t))))
                goto fail;
            for (size_t s = 0; s < (size_t)e->G * e->m; s++)
                H->epoch[s] = -1;
        }
        if (head_reserve(e, H, 64) < 0)
            goto fail;
    }
    return &e->base;
fail:
    pm_destroy(&e->base);
    return NULL;
}

/* ---------------------------------------------------------------- stats */

int skv_pm_stats_get(const skv_kv_cache *cc, skv_pm_stats *s)
{
    pm_cache *e = as_pm((skv_kv_cache *)cc);
    if (!e)
        return skv_error(SKV_EINVAL, "kv cache: not a prune-merge cache");
    const skv_kv_cache *c = &e->base;
    const uint64_t d = c->head_dim;
    memset(s, 0, sizeof *s);
    s->n_tokens = e->len[0];
    s->fp16_bytes = skv_alloc_fp16_bytes(c->n_layers, c->n_kv_heads, s->n_tokens, c->head_dim);
    const uint64_t trk = e->track ? 4ull * e->G * e->m : 0;
    for (uint32_t l = 0; l < c->n_layers; l++)
        for (uint32_t h = 0; h < c->n_kv_heads; h++) {
            const pm_head *H = head_at(e, l, h);
            uint64_t members = 0, live = 0;
            for (uint32_t j = 0; j < e->K; j++) {
                members += H->cnt[j];
                live += H->cnt[j] > 0;
            }
            s->kept += H->n;
            s->merged += members;
            s->centroids += live;
            s->dropped += e->len[l] - H->n - members;
            /* a centroid is stored from its first member on */
            for (uint32_t r = 0; r < H->n; r++) {
                s->bytes += row_bytes_at(e, H->w[r]);
                s->hist[skv_width_index(H->w[r])]++;
            }
            s->bytes += live * (4 * d + 4);
            s->track_bytes += H->n * trk;
            s->mem_bytes += (uint64_t)H->cap * (8 * d + 4 + (uint64_t)e->G * e->m * 4) +
                            e->K * (8 * d + 4);
        }
    s->n_prunes = e->n_prunes;
    s->prune_ns = e->prune_ns;
    s->attend_ns = atomic_load(&e->attend_ns);
    s->track_ns = atomic_load(&e->track_ns);
    return 0;
}

void skv_pm_stats_reset(skv_kv_cache *cc)
{
    pm_cache *e = as_pm(cc);
    if (!e)
        return;
    e->n_prunes = 0;
    e->prune_ns = 0;
    atomic_store(&e->attend_ns, 0);
    atomic_store(&e->track_ns, 0);
}

/* ---------------------------------------------------------------- evalcache */

skv_pm_cfg skv_ec_pm_cfg(const skv_ec_cfg *c)
{
    skv_pm_cfg p = c->pm;
    p.budget = c->alloc.budget;
    p.sinks = c->alloc.sinks;
    p.recent = c->alloc.recent;
    return p;
}

skv_kv_cache *skv_ec_pm_new(const skv_ec_cfg *c, uint32_t n_layers, uint32_t n_heads,
                            uint32_t n_kv_heads, uint32_t head_dim, uint64_t capacity)
{
    skv_pm_cfg p = skv_ec_pm_cfg(c);
    return skv_pm_new(&p, n_layers, n_heads, n_kv_heads, head_dim, capacity);
}

int skv_ec_pm_stats(const skv_kv_cache *c, skv_ec_stats *s)
{
    skv_pm_stats p;
    int rc = skv_pm_stats_get(c, &p);
    if (rc < 0)
        return rc;
    memset(s, 0, sizeof *s);
    s->n_tokens = p.n_tokens;
    s->n_alloc = p.n_tokens;
    s->bytes = p.bytes;
    s->fp16_bytes = p.fp16_bytes;
    s->mem_bytes = p.mem_bytes;
    memcpy(s->hist, p.hist, sizeof s->hist);
    s->realloc_ns = p.prune_ns;
    s->attend_ns = p.attend_ns;
    s->track_ns = p.track_ns;
    return 0;
}
