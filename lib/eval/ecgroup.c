/* ecgroup.c -- the grouped layout of the online cache: keys per channel
 * over aligned token groups (or per token), an optional randomized
 * Hadamard rotation, separate key and value widths, an error model that
 * predicts attention damage, and a byte model that counts every byte
 * (smartkv_evalcache.h, "Grouped layout").
 *
 * Storage is simulated exactly: every quantized row holds what its codes
 * decode to (the fp16-rounded scale and minimum times the code), so the
 * attention the model sees is the attention of the stored codes; the byte
 * model counts the packed codes, parameters, width map, pending rows,
 * headers and tracking state that a packed implementation would hold. */
#include "ecgroup.h"
#include "eccommon.h"
#include "ecquant.h"
#include "smartkv_attend.h"
#include "smartkv_error.h"
#include "smartkv_importance.h"
#include "smartkv_pack.h"
#include "smartkv_quant.h"
#include "smartkv_relevance.h"
#include "smartkv_tokenizer.h"
#include "smartkv_trace.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define ECG_HEAD_BYTES 64u      /* cache header */
#define ECG_UNIT_BYTES 16u      /* per (layer, kv head): token count, width counts */
#define ECG_NW 6                /* widths 0 (evicted), 2, 3, 4, 8, 16 */
#define ECG_PB 64u              /* learned importance: query rows buffered per attend */

static const uint8_t ecg_widths[ECG_NW] = {0, 2, 3, 4, 8, 16};

typedef struct gh {
    float *k, *v;           /* [cap][d] fp16 values or what the codes decode to
                               (keys in the rotated basis when rotating) */
    uint8_t *kb, *vb;       /* [cap] key / value width of each token (16: fp16) */
    float *vsup;            /* 8-bit parameters: [cap / RES][3] super-parameters of the
                               values of each residual block (zlo, zhi, rmax) */
    float *ek, *ev;         /* imp-range: [cap] each token's key (value) energy when it
                               was quantized (key_energy, skv_ecg_span_energy) */
    float sign[SKV_MAX_HEAD_DIM];
} gh;

typedef struct item {
    uint32_t unit;          /* layer * n_kv_heads + kv head */
    uint8_t kind;           /* 0 key, 1 value, 2 key and value (joint widths) */
    uint8_t cap;            /* highest useful width index (committed: current) */
    uint8_t sel;            /* chosen width index */
    uint8_t fresh;          /* tokens still fp16 pending */
    uint64_t t0;
    uint32_t m;             /* tokens */
    uint32_t bl;            /* its bytes per width: ecg.lad[bl] */
    float e[ECG_NW];        /* predicted damage per width */
} item;

typedef struct ecg {
    skv_kv_cache base;
    skv_ec_cfg cfg;
    uint32_t G, KT, RES, sinks, PB;  /* PB: bits of sinks and residual rows */
    uint32_t PQ;            /* bits of a quantized group's scale and zero point (8 or 16) */
    uint32_t wmask;         /* allowed width indices (bit i: ecg_widths[i]) */
    int hold, track, fixed, qtrack;
    int evict;              /* width 0 allowed: a token's value item may evict it */
    int lo_nz;              /* lowest allowed non-zero width index */
    uint32_t ktok;          /* evicting: key code bytes of one kept token at lo_nz,
                               paid by its value item instead of its key group */
    uint64_t *len, n_alloc;
    uint64_t n_flush;       /* residual flushes since the cache was made (replan) */
    gh *heads;
    float *imp;             /* [L][H][cap] per query head (folded per kv head at solve) */
    float *q2;              /* [L][H][d] EMA of the squared (rotated) query */
    /* importance atskv (SKV_EC_IMP_IS_ATSKV): the learned relevance's state */
    const skv_rlv_model *rlv;
    int rcompact;           /* the compact tracker (SKV_EC_IMP_ATSKV_COMPACT) */
    skv_rlv_tok *rtk;       /* [L][KV][cap] attention features (smartkv_relevance.h);
                               compact: [L][KV][cap / 32 + 1] group sums */
    float *rema;            /* compact: [L][KV][cap] each token's EMA */
    float *hterm;           /* [L][cap] w_h . h of each token (compact: fp16-rounded) */
    int32_t *ids;           /* [cap] token ids (-1 unknown) */
    uint32_t *count;        /* [cap] occurrences of ids[i] among the tokens held */
    uint8_t *cls;           /* [cap] token classes */
    double *rel;            /* [cap] scratch: relevance of one (layer, KV head) */
    float *fold;            /* [2][cap] scratch: group mean and max of one query row */
    float *pbuf;            /* [H][ECG_PB][cap] probabilities of the last attend */
    uint64_t pb_pos;
    uint32_t pb_rows;
    int pb_layer;           /* layer whose probabilities wait to be folded, -1 none */
    int rerr;               /* error from the hidden-state hook */
    /* head_weight: a unit's damage scaled by what its attention output moves
     * the residual stream by, relative to the stream (unit_scale) */
    float *hgain;           /* [L][KV] the output projection's gain, mean over the unit's
                               query heads (skv_model_head_out_gain); set by attach */
    int hw_ready;           /* hgain holds the attached model's gains */
    double *lx;             /* [L] sum of ln|x|^2 over the rows entering the layer */
    uint64_t *nx;           /* [L] those rows */
    const skv_tokenizer *tok;
    float scale;
    item *it;
    size_t n_it, cap_it;
    uint32_t *lad;          /* [3][KT + 1][ECG_NW] bytes of an item by kind, tokens, width
                               (the same for most items: 24 bytes fewer an item) */
    void *sv;               /* the solver's scratch, kept: a plan every flush */
    size_t sv_cap;
    float cross;            /* the last walk's crossing ratio (solve), < 0 none */
    skv_ec_stats st;
    _Atomic uint64_t track_ns, attend_ns;
} ecg;

static const skv_kv_ops ecg_ops;

static uint64_t mix64(uint64_t z)
{
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int widx(uint32_t bits)
{
    for (int i = 0; i < ECG_NW; i++)
        if (ecg_widths[i] == bits)
            return i;
    return -1;
}

static float h16(float x) { return skv_f16_to_f32(skv_f32_to_f16(x)); }

/* exp2f(-u / 16) for u = 0..255, the values grid_range returns, one call
 * each ahead of time (the same calls, so the same numbers). */
static float pow_range[256];
static pthread_once_t pow_once = PTHREAD_ONCE_INIT;

static void pow_init(void)
{
    for (int c = 0; c < 256; c++)
        pow_range[c] = exp2f(-(float)c / 16.0f);
}

static float grid_zero(float mn, float zlo, float zhi);
static float grid_range(float r, float rmax);

/* The zero point z and scale s of [lo, hi] as they are stored: on the
 * 8-bit grid sup (zlo, zhi, rmax; grid_zero, grid_range; r the range
 * qmax s, as the grid holds it) or, sup NULL, as fp16 numbers. */

static void snap_params(const float *sup, float lo, float hi, float qmax, float *z, float *s,
                        float *r)
{
    if (sup) {
        *z = grid_zero(lo, sup[0], sup[1]);
        *r = grid_range(hi - *z, sup[2]);
        *s = *r / qmax;
    } else {
        *z = h16(lo);
        *s = h16((hi - lo) / qmax);
        *r = *s * qmax;
    }
}

/* clip: min-max rounding puts its end levels on the extremes, so half a
 * step on each side holds no number and a span's error is that of 2^b - 1
 * steps where 2^b would fit (for numbers spread evenly, (1 - 2^-b)^2 of
 * the error: 0.56 at 2 bits, 0.77 at 3, 0.88 at 4).  At widths up to 4
 * bits the range [mn + a R, mx - b R] (R = mx - mn, a and b in steps of
 * R / 32) with the least squared error, parameters snapped as stored, is
 * kept instead: a = b from 1 step up to 10, until two in a row do no
 * better than the best (the error is about unimodal in the shrink: the
 * best is 1-2 steps at 4 bits, 4-6 at 2), then from the best, a and b each
 * moved one step.  Min-max (a = b = 0) is the first tried, so no span's
 * error grows.  (Every shrink to 10 and two passes of moves took twice
 * the time per span for 1-2% less error.)  At 8 bits (0.99) clip keeps
 * min-max: nothing to gain, and the extremes it would cut are the numbers
 * that draw attention. */
#define CLIP_MAX_BITS 4
#define CLIP_STEPS 32
#define CLIP_SYM 10
#define CLIP_MOVES 4
static const int clip_da[4] = {-1, 1, 0, 0}, clip_db[4] = {0, 0, -1, 1};

/* The k-th range tried after min-max, from the best (a, b) so far: 0 when
 * it is not one (a step below 0, an empty range, or a shrink after the
 * scan has stopped: miss = the shrinks since the last better one). */
static int clip_try(int k, int a, int b, int miss, float mn, float mx, float *lo, float *hi,
                    int *ta, int *tb)
{
    if (k < CLIP_SYM) {
        if (miss >= 2)
            return 0;
        *ta = *tb = k + 1;
    } else {
        int m = (k - CLIP_SYM) % 4;
        *ta = a + clip_da[m];
        *tb = b + clip_db[m];
    }
    const float st = (mx - mn) / CLIP_STEPS;
    *lo = mn + (float)*ta * st;
    *hi = mx - (float)*tb * st;
    return *ta >= 0 && *tb >= 0 && *hi > *lo;
}

static void span_params(const float *x, uint32_t n, size_t stride, uint32_t bits, int clip,
                        const float *sup, float mn, float mx, float *z, float *s, float *r)
{
    const float qmax = (float)((1u << bits) - 1u);
    snap_params(sup, mn, mx, qmax, z, s, r);
    if (!clip || bits > CLIP_MAX_BITS || !(mx > mn) || n <= 2)
        return;
    float best = skv_ecq_err(x, n, stride, *z, *s, qmax);
    int a = 0, b = 0, miss = 0;
    for (int k = 0; k < CLIP_SYM + CLIP_MOVES; k++) {
        float lo, hi, zz, ss, rr;
        int ta, tb;
        if (!clip_try(k, a, b, miss, mn, mx, &lo, &hi, &ta, &tb)) {
            miss = 2;
            continue;
        }
        snap_params(sup, lo, hi, qmax, &zz, &ss, &rr);
        float e = skv_ecq_err(x, n, stride, zz, ss, qmax);
        if (e < best)
            best = e, a = ta, b = tb, *z = zz, *s = ss, *r = rr, miss = 0;
        else
            miss++;
    }
}

/* span_params for each column of the rows x[m][d] (keys per channel), all
 * columns taking the same steps side by side: z, s, r per column. */
static void clip_cols(const float *x, uint32_t m, uint32_t d, uint32_t bits, int clip,
                      const float *sup, const float *mn, const float *mx, float *z, float *s,
                      float *r)
{
    const float qmax = (float)((1u << bits) - 1u);
    for (uint32_t c = 0; c < d; c++)
        snap_params(sup, mn[c], mx[c], qmax, z + c, s + c, r + c);
    if (!clip || bits > CLIP_MAX_BITS || m <= 2)
        return;
    float best[SKV_MAX_HEAD_DIM], e[SKV_MAX_HEAD_DIM], zz[SKV_MAX_HEAD_DIM],
        ss[SKV_MAX_HEAD_DIM], rr[SKV_MAX_HEAD_DIM];
    int a[SKV_MAX_HEAD_DIM] = {0}, b[SKV_MAX_HEAD_DIM] = {0}, miss[SKV_MAX_HEAD_DIM] = {0},
        ta[SKV_MAX_HEAD_DIM], tb[SKV_MAX_HEAD_DIM], ok[SKV_MAX_HEAD_DIM];
    skv_ecq_err_cols(x, m, d, z, s, qmax, best);
    for (int k = 0; k < CLIP_SYM + CLIP_MOVES; k++) {
        int any = 0;
        for (uint32_t c = 0; c < d; c++) {
            float lo, hi;
            ok[c] = mx[c] > mn[c] && clip_try(k, a[c], b[c], miss[c], mn[c], mx[c], &lo, &hi,
                                              ta + c, tb + c);
            if (ok[c])
                snap_params(sup, lo, hi, qmax, zz + c, ss + c, rr + c);
            else
                zz[c] = z[c], ss[c] = s[c], rr[c] = r[c], miss[c] = 2;
            any |= ok[c];
        }
        if (!any)
            continue;
        skv_ecq_err_cols(x, m, d, zz, ss, qmax, e);
        for (uint32_t c = 0; c < d; c++) {
            if (!ok[c])
                continue;
            if (e[c] < best[c])
                best[c] = e[c], a[c] = ta[c], b[c] = tb[c], z[c] = zz[c], s[c] = ss[c],
                r[c] = rr[c], miss[c] = 0;
            else
                miss[c]++;
        }
    }
}

/* A span quantized with fp16 parameters (min-max, or clip's search). */
void skv_ecg_quant_span_clip(const float *x, float *y, uint32_t n, size_t stride, uint32_t bits,
                             int clip)
{
    if (bits >= 16) {
        for (uint32_t i = 0; i < n; i++)
            y[i * stride] = x[i * stride];
        return;
    }
    float mn = x[0], mx = x[0];
    for (uint32_t i = 1; i < n; i++) {
        float a = x[i * stride];
        mn = a < mn ? a : mn;
        mx = a > mx ? a : mx;
    }
    const float qmax = (float)((1u << bits) - 1u);
    float z, s, r;
    span_params(x, n, stride, bits, clip, NULL, mn, mx, &z, &s, &r);
    for (uint32_t i = 0; i < n; i++) {
        float c = 0;
        if (s > 0) {
            c = nearbyintf((x[i * stride] - z) / s);
            c = c < 0 ? 0 : c > qmax ? qmax : c;
        }
        y[i * stride] = z + c * s;
    }
}

void skv_ecg_quant_span(const float *x, float *y, uint32_t n, size_t stride, uint32_t bits)
{
    skv_ecg_quant_span_clip(x, y, n, stride, bits, 0);
}

/* fp16 roundings that never move x inward: a floor for a grid's lowest
 * zero point, a ceiling for its largest range (fp16 keeps 11 bits). */
static float h16_down(float x)
{
    float y = h16(x);
    return y <= x ? y : h16(x - fabsf(x) * 0x1p-10f - 0x1p-24f);
}

static float h16_up(float x)
{
    float y = h16(x);
    return y >= x ? y : h16(x + fabsf(x) * 0x1p-10f + 0x1p-24f);
}

/* 8-bit parameters (param_bits 8).  A span's zero point is the largest
 * of 256 steps from zlo to zhi not above its minimum; its range (qmax
 * times the scale) the smallest rmax * 2^(-u/16), u = 0..255, that still
 * reaches its maximum: 2.2% coarser steps on average than fp16
 * parameters, at half their bytes. */
static float grid_zero(float mn, float zlo, float zhi)
{
    float st = (zhi - zlo) / 255.0f;
    if (!(st > 0))
        return zlo;
    float k = floorf((mn - zlo) / st);
    k = k < 0 ? 0 : k > 255 ? 255 : k;
    return zlo + k * st;
}

static float grid_range(float r, float rmax)
{
    if (!(r > 0) || !(rmax > 0))
        return 0;
    float u = floorf(16.0f * log2f(rmax / r));
    u = u < 0 ? 0 : u > 255 ? 255 : u;
    return rmax * pow_range[(int)u];    /* exp2f(-u / 16.0f) */
}

/* A contiguous span's zero point and range (qmax times its scale) on the
 * grid (zlo, zhi, rmax): without clip the same at every width, so the
 * damage model finds them once for all the widths it tries. */
static void span_grid(const float *x, uint32_t n, const float sup[3], uint32_t bits, int clip,
                      float *z, float *range)
{
    float mn, mx, s;
    skv_ecq_minmax(x, n, &mn, &mx);
    span_params(x, n, 1, bits, clip, sup, mn, mx, z, &s, range);
}

/* The super-parameters of n spans from their minima and maxima: zlo, zhi
 * over the minima, then the largest range above each span's zero point
 * on that grid. */
static void grid_fit(const float *mn, const float *mx, uint32_t n, float sup[3])
{
    float zlo = INFINITY, zhi = -INFINITY, rmax = 0;
    for (uint32_t i = 0; i < n; i++) {
        zlo = mn[i] < zlo ? mn[i] : zlo;
        zhi = mn[i] > zhi ? mn[i] : zhi;
    }
    sup[0] = h16_down(zlo);
    sup[1] = h16(zhi) >= sup[0] ? h16(zhi) : sup[0];
    for (uint32_t i = 0; i < n; i++) {
        float r = mx[i] - grid_zero(mn[i], sup[0], sup[1]);
        rmax = r > rmax ? r : rmax;
    }
    sup[2] = h16_up(rmax);
}

/* The grid of the columns of rows [m][d] (keys per channel), then each
 * column's zero point and range on it (at bits, if clip). */
typedef struct kgrid {
    float z[SKV_MAX_HEAD_DIM], range[SKV_MAX_HEAD_DIM];
} kgrid;

static void key_grid(const float *x, uint32_t m, uint32_t d, uint32_t bits, int clip, kgrid *g)
{
    float mn[SKV_MAX_HEAD_DIM], mx[SKV_MAX_HEAD_DIM], sup[3], s[SKV_MAX_HEAD_DIM];
    skv_ecq_minmax_cols(x, m, d, mn, mx);
    grid_fit(mn, mx, d, sup);
    clip_cols(x, m, d, bits, clip, sup, mn, mx, g->z, s, g->range);
}

/* The rotation is the packed format's (rotate.c, skv_rot_*): a cache file
 * written with the same seed holds the same rotated rows. */
static void rotate(const gh *H, const float *x, float *y, uint32_t d)
{
    skv_rot_apply(H->sign, x, y, d);
}

static void unrotate(const gh *H, const float *x, float *y, uint32_t d)
{
    skv_rot_undo(H->sign, x, y, d);
}

/* ---------------------------------------------------------------- config */

int skv_ecg_cfg_check(const skv_ec_cfg *c)
{
    const skv_alloc_cfg *a = &c->alloc;
    uint32_t p = a->policy;
    if (p != SKV_POLICY_SMARTKV && p != SKV_POLICY_RANDOM && p != SKV_POLICY_POSITION &&
        p != SKV_POLICY_UNIFORM)
        return skv_error(SKV_EINVAL, "the grouped layout supports smartkv, random, position, "
                         "uniform:N and kivi:N (not %s)", skv_policy_name(p));
    if (c->k_layout > SKV_EC_KEYS_CHANNEL || c->err_model > SKV_EC_ERR_IMP_RANGE || c->rotate > 1 ||
        c->rotate_values > 1 || c->kv_split > 1 || c->clip > 1 ||
        !(c->head_weight >= 0 && c->head_weight <= 1))
        return skv_error(SKV_EINVAL, "grouped layout: bad key layout, error model or flag");
    if ((a->width_mask & 1u) && !c->kv_split && p != SKV_POLICY_UNIFORM)
        return skv_error(SKV_EINVAL, "grouped layout: eviction (width 0) needs separate key "
                         "and value widths (--kv-split)");
    if (c->param_bits && c->param_bits != 8 && c->param_bits != 16)
        return skv_error(SKV_EINVAL, "grouped layout: parameters at %u bits (8 or 16)",
                         c->param_bits);
    if (c->replan > 1u << 20)
        return skv_error(SKV_EINVAL, "grouped layout: a full plan every %u flushes (at most "
                         "%u)", c->replan, 1u << 20);
    if (c->keys_by_age && !c->kv_split)
        return skv_error(SKV_EINVAL, "grouped layout: keys weighted by age need split K/V "
                         "widths (--kv-split)");
    if (c->imp_power > 2)
        return skv_error(SKV_EINVAL, "grouped layout: importance power %u (1 or 2)", c->imp_power);
    if (SKV_EC_IMP_IS_ATSKV(c->imp_mode) &&
        (p != SKV_POLICY_SMARTKV || !c->rlv || c->imp_power == 2 || c->recency > 0))
        return skv_error(SKV_EINVAL, "importance atskv: needs relevance weights (skv-alloc train) "
                         "and policy smartkv, without importance power 2 or a recency prior");
    if (c->protect_bits && c->protect_bits != 4 && c->protect_bits != 8 && c->protect_bits != 16)
        return skv_error(SKV_EINVAL, "grouped layout: protected rows at %u bits (4, 8 or 16)",
                         c->protect_bits);
    uint32_t kt = c->key_tokens ? c->key_tokens : 32;
    if (c->k_layout == SKV_EC_KEYS_CHANNEL) {
        if (kt < 2 || kt > 4096)
            return skv_error(SKV_EINVAL, "key group of %u tokens (2..4096)", kt);
        if (c->realloc % kt)
            return skv_error(SKV_EINVAL, "with keys per channel the residual (R = %u) must be a "
                             "multiple of the key group (%u tokens)", c->realloc, kt);
    }
    return 0;
}

/* ---------------------------------------------------------------- helpers */

static ecg *as_g(const skv_kv_cache *c)
{
    return c && c->ops == &ecg_ops ? (ecg *)c : NULL;
}

int skv_ecg_is(const skv_kv_cache *c) { return as_g(c) != NULL; }

static gh *head_at(ecg *e, uint32_t l, uint32_t h)
{
    return &e->heads[(size_t)l * e->base.n_kv_heads + h];
}

static uint32_t kbytes(const ecg *e, uint32_t m, uint32_t bits)
{
    const uint32_t d = e->base.head_dim;
    if (bits == 0 || m == 0)
        return 0;
    if (bits >= 16)
        return m * d * 2;
    if (e->cfg.k_layout == SKV_EC_KEYS_CHANNEL)
        return (m * d * bits + 7) / 8 + (e->PQ == 8 ? 2 * d + 6 : 4 * d);
    return m * ((d * bits + 7) / 8 + 4 * (d / e->cfg.alloc.qcfg.k_group));
}

static uint32_t vbytes(const ecg *e, uint32_t m, uint32_t bits)
{
    const uint32_t d = e->base.head_dim;
    if (bits == 0)
        return 0;
    if (bits >= 16)
        return m * d * 2;
    if (e->PQ == 8)     /* plus the block's 6 bytes of super-parameters, rounded up */
        return m * ((d * bits + 7) / 8 + 2 * (d / e->cfg.alloc.qcfg.v_group) +
                    (6 + e->RES - 1) / e->RES);
    return m * ((d * bits + 7) / 8 + 4 * (d / e->cfg.alloc.qcfg.v_group));
}

/* Bytes of one protected (sink or residual) token, key and value, at
 * e->PB bits per token (per-token parameters per k_group / v_group). */
static uint32_t pbytes(const ecg *e)
{
    const uint32_t d = e->base.head_dim, b = e->PB;
    if (b >= 16)
        return 4 * d;
    return (d * b + 7) / 8 + 4 * (d / e->cfg.alloc.qcfg.k_group) + (d * b + 7) / 8 +
           4 * (d / e->cfg.alloc.qcfg.v_group);
}

/* Bytes of an item of m tokens (kind: 0 key group, 1 value, 2 both) at
 * width bits.  Evicting, a kept token pays its key codes at the lowest
 * width through its value item. */
static uint32_t item_bytes(const ecg *e, int kind, uint32_t m, uint32_t bits)
{
    uint32_t b = kind == 1 ? vbytes(e, 1, bits) :
                 kind == 0 ? kbytes(e, m, bits) : kbytes(e, m, bits) + vbytes(e, m, bits);
    if (e->evict && bits)
        b = kind == 1 ? b + e->ktok : b - m * e->ktok;
    return b;
}

/* An item's bytes per width. */
static inline const uint32_t *bytes_of(const ecg *e, const item *it)
{
    return e->lad + (size_t)it->bl * ECG_NW;
}

static uint32_t nbits_for(uint32_t n)
{
    uint32_t b = 0;
    while ((1u << b) < n)
        b++;
    return b;
}

/* Width map bits per key item and per value token (0 when fixed). */
static void map_bits(const ecg *e, uint32_t *kb, uint32_t *vb)
{
    uint32_t n = (uint32_t)__builtin_popcount(e->wmask);
    /* joint widths: a value takes its key's width, one map entry */
    *kb = e->fixed ? 0 : nbits_for(n);
    *vb = e->fixed || !e->cfg.kv_split ? 0 : nbits_for(n);
}

/* Quantize the key rows [t0, t0+m) of H at width bits from src into dst
 * (both [m][d]); kg: src's grid (keys per channel with 8-bit parameters),
 * or NULL to find it. */
static void quant_keys_grid(const ecg *e, const kgrid *kg, const float *src, float *dst,
                            uint32_t m, uint32_t bits)
{
    const uint32_t d = e->base.head_dim;
    if (bits >= 16) {
        if (dst != src)
            memcpy(dst, src, (size_t)m * d * sizeof(float));
        return;
    }
    if (e->cfg.k_layout == SKV_EC_KEYS_CHANNEL && e->PQ == 8) {
        kgrid own;
        if (!kg) {
            key_grid(src, m, d, bits, (int)e->cfg.clip, &own);
            kg = &own;
        }
        const float qmax = (float)((1u << bits) - 1u);
        float s[SKV_MAX_HEAD_DIM];
        for (uint32_t c = 0; c < d; c++)
            s[c] = kg->range[c] / qmax;
        skv_ecq_quant_cols(src, dst, m, d, kg->z, s, qmax);
    } else if (e->cfg.k_layout == SKV_EC_KEYS_CHANNEL) {
        /* fp16 parameters: min-max (skv_ecg_quant_span's, column by
         * column) or clip's, all columns side by side */
        float mn[SKV_MAX_HEAD_DIM], mx[SKV_MAX_HEAD_DIM], z[SKV_MAX_HEAD_DIM],
            s[SKV_MAX_HEAD_DIM], r[SKV_MAX_HEAD_DIM];
        skv_ecq_minmax_cols(src, m, d, mn, mx);
        clip_cols(src, m, d, bits, (int)e->cfg.clip, NULL, mn, mx, z, s, r);
        skv_ecq_quant_cols(src, dst, m, d, z, s, (float)((1u << bits) - 1u));
    } else {
        uint32_t g = e->cfg.alloc.qcfg.k_group;
        for (uint32_t t = 0; t < m; t++)
            for (uint32_t j = 0; j < d; j += g)
                skv_ecg_quant_span_clip(src + (size_t)t * d + j, dst + (size_t)t * d + j, g, 1,
                                        bits, (int)e->cfg.clip);
    }
}

static void quant_keys(const ecg *e, const float *src, float *dst, uint32_t m, uint32_t bits)
{
    quant_keys_grid(e, NULL, src, dst, m, bits);
}

/* The grids of the value spans of rows x[m][d] of tokens t0.. (8-bit
 * parameters; x rotated when rotating values): z and range, [m][d / g]. */
static void value_grid(const ecg *e, const gh *H, uint64_t t0, const float *x, uint32_t m,
                       float *z, float *range)
{
    const uint32_t d = e->base.head_dim, g = e->cfg.alloc.qcfg.v_group, ns = d / g;
    for (uint32_t t = 0; t < m; t++)
        for (uint32_t j = 0; j < ns; j++)
            span_grid(x + (size_t)t * d + j * g, g, H->vsup + (t0 + t) / e->RES * 3, 2, 0,
                      z + (size_t)t * ns + j, range + (size_t)t * ns + j);
}

/* Value rows of tokens [t0, t0 + m) of H (8-bit parameters: on the grids
 * of their residual blocks).  With rotate_values, src is in the model's
 * basis, or already rotated if pre (the damage model rotates a row once for
 * every width it tries), and so is dst (the damage model's squared errors
 * need no rotation back: the rotation keeps distances).  gz, grange: the
 * rows' value_grid (pre only), or NULL to find them. */
static void quant_values_pre(const ecg *e, const gh *H, uint64_t t0, const float *src, float *dst,
                             uint32_t m, uint32_t bits, int pre, const float *gz,
                             const float *grange)
{
    const uint32_t d = e->base.head_dim, g = e->cfg.alloc.qcfg.v_group, ns = d / g;
    if (bits >= 16) {
        if (dst != src)
            memcpy(dst, src, (size_t)m * d * sizeof(float));
        return;
    }
    const float qmax = (float)((1u << bits) - 1u);
    for (uint32_t t = 0; t < m; t++) {
        float rs[SKV_MAX_HEAD_DIM], rq[SKV_MAX_HEAD_DIM];
        const float *row = src + (size_t)t * d;
        if (e->cfg.rotate_values && !pre)
            rotate(H, row, rs, d);
        else
            memcpy(rs, row, d * sizeof(float));
        for (uint32_t j = 0; j < ns; j++) {
            if (e->PQ == 8) {
                float z, range;
                if (gz) {
                    z = gz[(size_t)t * ns + j];
                    range = grange[(size_t)t * ns + j];
                } else {
                    span_grid(rs + j * g, g, H->vsup + (t0 + t) / e->RES * 3, bits,
                              (int)e->cfg.clip, &z, &range);
                }
                skv_ecq_quant(rs + j * g, rq + j * g, g, z, range / qmax, qmax);
            } else {
                skv_ecg_quant_span_clip(rs + j * g, rq + j * g, g, 1, bits, (int)e->cfg.clip);
            }
        }
        if (e->cfg.rotate_values && !pre)
            unrotate(H, rq, dst + (size_t)t * d, d);
        else
            memcpy(dst + (size_t)t * d, rq, d * sizeof(float));
    }
}

static void quant_values(const ecg *e, const gh *H, uint64_t t0, const float *src, float *dst,
                         uint32_t m, uint32_t bits)
{
    quant_values_pre(e, H, t0, src, dst, m, bits, 0, NULL, NULL);
}

/* ---------------------------------------------------------------- create */

static void ecg_destroy(skv_kv_cache *c)
{
    ecg *e = (ecg *)c;
    if (e->heads)
        for (size_t i = 0; i < (size_t)c->n_layers * c->n_kv_heads; i++) {
            free(e->heads[i].k);
            free(e->heads[i].v);
            free(e->heads[i].kb);
            free(e->heads[i].vb);
            free(e->heads[i].vsup);
            free(e->heads[i].ek);
            free(e->heads[i].ev);
        }
    free(e->heads);
    free(e->len);
    free(e->imp);
    free(e->q2);
    free(e->rtk);
    free(e->rema);
    free(e->hterm);
    free(e->ids);
    free(e->count);
    free(e->cls);
    free(e->rel);
    free(e->fold);
    free(e->pbuf);
    free(e->hgain);
    free(e->lx);
    free(e->nx);
    free(e->it);
    free(e->lad);
    free(e->sv);
    free(e);
}

skv_kv_cache *skv_ecg_new(const skv_ec_cfg *cfg, uint32_t n_layers, uint32_t n_heads,
                          uint32_t n_kv_heads, uint32_t head_dim, uint64_t capacity)
{
    if (skv_ecg_cfg_check(cfg) < 0)
        return NULL;
    pthread_once(&pow_once, pow_init);
    if ((cfg->rotate || cfg->rotate_values) && (head_dim & (head_dim - 1)))
        return skv_error(SKV_EINVAL, "rotation needs a power-of-two head_dim (%u)", head_dim),
               NULL;
    ecg *e = skv_calloc(1, sizeof *e);
    if (!e)
        return NULL;
    skv_kv_base_init(&e->base, &ecg_ops, n_layers, n_heads, n_kv_heads, head_dim, capacity);
    e->cfg = *cfg;
    e->cross = -1;
    skv_qcfg *q = &e->cfg.alloc.qcfg;
    q->head_dim = head_dim;
    if (cfg->kivi_bits) {
        /* KIVI: values per token in groups of 32 channels */
        q->v_group = head_dim % 32 == 0 ? 32 : head_dim;
    }
    if (!q->k_group || head_dim % q->k_group)
        q->k_group = head_dim;
    if (!q->v_group || head_dim % q->v_group)
        q->v_group = head_dim;
    e->G = n_heads / n_kv_heads;
    e->scale = 1.0f / sqrtf((float)head_dim);  /* the model's score scale */
    e->KT = cfg->k_layout == SKV_EC_KEYS_CHANNEL ? (cfg->key_tokens ? cfg->key_tokens : 32) : 1;
    e->cfg.key_tokens = e->KT;
    e->RES = cfg->realloc;
    e->PB = cfg->protect_bits && !cfg->kivi_bits ? cfg->protect_bits : 16;
    e->PQ = cfg->param_bits == 8 && !cfg->kivi_bits ? 8 : 16;
    e->fixed = cfg->alloc.policy == SKV_POLICY_UNIFORM;
    e->sinks = e->fixed ? 0 : cfg->alloc.sinks;
    if (e->fixed) {
        int wi = widx(cfg->alloc.uniform_bits);
        if (wi < 0) {
            skv_error(SKV_EINVAL, "uniform:%u is not a width", cfg->alloc.uniform_bits);
            goto fail;
        }
        e->wmask = 1u << wi;
    } else {
        for (int i = 0; i < ECG_NW; i++)
            if (cfg->alloc.width_mask & (1u << ecg_widths[i]))
                e->wmask |= 1u << i;
        if (!e->wmask) {
            skv_error(SKV_EINVAL, "no allowed width");
            goto fail;
        }
    }
    e->evict = (e->wmask & 1u) != 0;
    e->lo_nz = 1;
    while (e->lo_nz < ECG_NW - 1 && !(e->wmask & (1u << e->lo_nz)))
        e->lo_nz++;
    e->ktok = cfg->k_layout == SKV_EC_KEYS_CHANNEL ? (head_dim * ecg_widths[e->lo_nz] + 7) / 8
                                                   : kbytes(e, 1, ecg_widths[e->lo_nz]);
    if (!(e->lad = skv_malloc((size_t)3 * (e->KT + 1) * ECG_NW * sizeof *e->lad)))
        goto fail;
    for (uint32_t kind = 0; kind < 3; kind++)
        for (uint32_t m = 0; m <= e->KT; m++)
            for (int j = 0; j < ECG_NW; j++)
                e->lad[(kind * (e->KT + 1) + m) * ECG_NW + j] =
                    item_bytes(e, (int)kind, m, ecg_widths[j]);
    e->track = cfg->alloc.policy == SKV_POLICY_SMARTKV;
    e->qtrack = !e->fixed && cfg->err_model == SKV_EC_ERR_LOGIT;
    size_t nh = (size_t)n_layers * n_kv_heads, rows;
    if (skv_mul_sizes(&rows, 3, (size_t)capacity, (size_t)head_dim, sizeof(float)) < 0) {
        skv_error(SKV_ELIMIT, "kv cache: capacity %llu overflows", (unsigned long long)capacity);
        goto fail;
    }
    if (!(e->len = skv_calloc(n_layers, sizeof *e->len)) ||
        !(e->heads = skv_calloc(nh, sizeof *e->heads)))
        goto fail;
    for (size_t i = 0; i < nh; i++) {
        gh *H = &e->heads[i];
        if (!(H->k = skv_malloc(rows)) || !(H->v = skv_malloc(rows)) ||
            !(H->kb = skv_calloc((size_t)capacity, 1)) || !(H->vb = skv_calloc((size_t)capacity, 1)))
            goto fail;
        if (e->PQ == 8 && !(H->vsup = skv_calloc((size_t)(capacity / e->RES + 1) * 3, sizeof(float))))
            goto fail;
        if (cfg->err_model == SKV_EC_ERR_IMP_RANGE &&
            (!(H->ek = skv_calloc((size_t)capacity, sizeof(float))) ||
             !(H->ev = skv_calloc((size_t)capacity, sizeof(float)))))
            goto fail;
        skv_rot_signs(cfg->alloc.seed, i, head_dim, H->sign);
    }
    if (e->track && !(e->imp = skv_calloc((size_t)n_layers * n_heads * capacity, sizeof(float))))
        goto fail;
    if (e->qtrack && !(e->q2 = skv_calloc((size_t)n_layers * n_heads * head_dim, sizeof(float))))
        goto fail;
    e->pb_layer = -1;
    if (cfg->head_weight > 0 && !e->fixed &&
        (!(e->hgain = skv_calloc((size_t)n_layers * n_kv_heads, sizeof(float))) ||
         !(e->lx = skv_calloc(n_layers, sizeof(double))) ||
         !(e->nx = skv_calloc(n_layers, sizeof(uint64_t)))))
        goto fail;
    if (e->track && SKV_EC_IMP_IS_ATSKV(cfg->imp_mode)) {
        e->rlv = cfg->rlv;
        e->rcompact = cfg->imp_mode == SKV_EC_IMP_ATSKV_COMPACT;
        if (e->rlv->n_layers < n_layers) {
            skv_error(SKV_EINVAL, "importance atskv: the weights cover %u layers, the model has %u",
                      e->rlv->n_layers, n_layers);
            goto fail;
        }
        size_t pb;
        if (skv_mul_sizes(&pb, 3, (size_t)n_heads * ECG_PB, (size_t)capacity, sizeof(float)) < 0) {
            skv_error(SKV_ELIMIT, "kv cache: capacity %llu overflows", (unsigned long long)capacity);
            goto fail;
        }
        free(e->imp);   /* the relevance replaces the attention EMA */
        e->imp = NULL;
        size_t ntk = e->rcompact ? (size_t)capacity / SKV_RLV_GROUP + 1 : (size_t)capacity;
        if (!(e->rtk = skv_calloc(nh * ntk, sizeof *e->rtk)) ||
            (e->rcompact && !(e->rema = skv_calloc(nh * (size_t)capacity, sizeof(float)))) ||
            !(e->hterm = skv_calloc((size_t)n_layers * capacity, sizeof(float))) ||
            !(e->ids = skv_malloc((size_t)capacity * sizeof(int32_t))) ||
            !(e->count = skv_calloc((size_t)capacity, sizeof(uint32_t))) ||
            !(e->cls = skv_calloc((size_t)capacity, 1)) ||
            !(e->rel = skv_calloc((size_t)capacity, sizeof(double))) ||
            !(e->fold = skv_calloc(2 * (size_t)capacity, sizeof(float))) ||
            !(e->pbuf = skv_malloc(pb)))
            goto fail;
        for (uint64_t i = 0; i < capacity; i++)
            e->ids[i] = -1;
    }
    return &e->base;
fail:
    ecg_destroy(&e->base);
    return NULL;
}

/* ---------------------------------------------------------------- ops */

static int cut_to(ecg *e, uint64_t T)
{
    const skv_kv_cache *c = &e->base;
    if (T && T < e->n_alloc)
        return skv_error(SKV_EINVAL, "kv cache: the grouped layout cannot forget allocated "
                         "tokens (cut to %llu of %llu)", (unsigned long long)T,
                         (unsigned long long)e->n_alloc);
    /* a group's sums hold its tokens' statistics: part of them cannot go */
    for (uint32_t l = 0; e->rcompact && T % SKV_RLV_GROUP && l < c->n_layers; l++)
        if (e->len[l] > T)
            return skv_error(SKV_EINVAL, "importance atskv: the compact tracker cannot forget "
                             "part of a group of %u tokens (cut to %llu)", SKV_RLV_GROUP,
                             (unsigned long long)T);
    if (T == 0) {
        e->n_alloc = 0;
        e->n_flush = 0;
        if (e->q2)
            memset(e->q2, 0, (size_t)c->n_layers * c->n_heads * c->head_dim * sizeof(float));
        if (e->lx) {
            memset(e->lx, 0, c->n_layers * sizeof(double));
            memset(e->nx, 0, c->n_layers * sizeof(uint64_t));
        }
    }
    for (uint32_t l = 0; l < c->n_layers; l++)
        if (e->len[l] > T)
            e->len[l] = T;
    if (e->imp)
        for (size_t r = 0; r < (size_t)c->n_layers * c->n_heads; r++)
            memset(e->imp + r * c->capacity + T, 0, (size_t)(c->capacity - T) * sizeof(float));
    if (e->rlv) {
        /* the trackers of tokens >= T restart when their position is
         * evaluated again (skv_rlv_track_step initialises them) */
        e->pb_layer = -1;
        if (T == 0) {
            for (uint64_t i = 0; i < c->capacity; i++)
                e->ids[i] = -1;
            e->rerr = 0;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- learned importance */

/* Fold the waiting layer's attention into the relevance trackers (mean and
 * maximum over the query heads of each KV head), as atskv.c does. */
static void rlv_fold(ecg *e)
{
    if (e->pb_layer < 0)
        return;
    const skv_kv_cache *c = &e->base;
    const uint32_t l = (uint32_t)e->pb_layer, G = e->G;
    const uint64_t cap = c->capacity;
    e->pb_layer = -1;
    uint64_t t0 = now_ns();
    float *mean = e->fold, *mx = e->fold + cap;
    const size_t ntk = e->rcompact ? cap / SKV_RLV_GROUP + 1 : cap;
    for (uint32_t kv = 0; kv < c->n_kv_heads; kv++) {
        size_t u = (size_t)l * c->n_kv_heads + kv;
        skv_rlv_tok *tk = e->rtk + u * ntk;
        for (uint32_t r = 0; r < e->pb_rows; r++) {
            uint64_t s = e->pb_pos + r;
            for (uint64_t i = 0; i <= s; i++) {
                float sm = 0, m = 0;
                for (uint32_t g = 0; g < G; g++) {
                    float p = e->pbuf[((size_t)(kv * G + g) * ECG_PB + r) * cap + i];
                    sm += p;
                    m = p > m ? p : m;
                }
                mean[i] = sm / (float)G;
                mx[i] = m;
            }
            if (e->rcompact)
                skv_rlv_track_step_compact(tk, e->rema + u * cap, s, mean, mx);
            else
                skv_rlv_track_step(tk, s, mean, mx);
        }
    }
    atomic_fetch_add_explicit(&e->track_ns, now_ns() - t0, memory_order_relaxed);
}

/* Token classes and id counts of positions [pos, pos+n) as layer 0 appends
 * them (O(n) per token: fine at evaluation lengths). */
static void rlv_note_tokens(ecg *e, uint64_t pos, uint32_t n)
{
    for (uint64_t p = pos; p < pos + n; p++) {
        int32_t id = e->ids[p];
        uint32_t cnt = 1;
        for (uint64_t j = 0; j < p && id >= 0; j++)
            if (e->ids[j] == id) {
                e->count[j]++;
                cnt++;
            }
        e->count[p] = id >= 0 ? cnt : 0;
        e->cls[p] = 0;
        if (e->tok && id >= 0) {
            char b[64];
            int k = skv_token_bytes(e->tok, id, 0, b, sizeof b);
            e->cls[p] = k > 0 ? skv_rlv_token_class(b, k < (int)sizeof b ? k : (int)sizeof b) : 0;
        }
    }
}

/* Relevance of every token of (layer l, KV head h) at T positions, as the
 * importance: r normalised to sum 1 (like the attention the EMA tracks,
 * so that the prior keeps its meaning). */
static void rlv_importance(ecg *e, uint32_t l, uint32_t h, uint64_t T)
{
    const skv_kv_cache *c = &e->base;
    const size_t u = (size_t)l * c->n_kv_heads + h;
    const skv_rlv_tok *tk = e->rtk + u * (e->rcompact ? c->capacity / SKV_RLV_GROUP + 1
                                                      : c->capacity);
    double sum = 0;
    for (uint64_t i = 0; i < T; i++) {
        double x[SKV_RLV_NFEAT];
        uint32_t cnt = e->ids[i] >= 0 ? e->count[i] : 0;
        if (e->rcompact)
            skv_rlv_features_compact(tk, e->rema + u * c->capacity, i, T, e->cls[i], cnt, x);
        else
            skv_rlv_features(&tk[i], i, T, e->cls[i], cnt, x);
        double z = skv_rlv_logit(e->rlv, l, x, e->hterm[(size_t)l * c->capacity + i]);
        e->rel[i] = 1.0 / (1.0 + exp(-z));
        sum += e->rel[i];
    }
    for (uint64_t i = 0; i < T; i++)
        e->rel[i] = sum > 0 ? e->rel[i] / sum : 1.0 / (double)T;
}

/* Bytes of the learned importance's state for T tokens: per (layer, KV
 * head, token) the tracker, per (layer, token) w_h . h when the weights have
 * a hidden-state term, per token its id and count, and the predictor's
 * weights.  Compact: the tracker of skv_rlv_compact_bytes, w_h . h as fp16,
 * the id only (counts and classes follow from the ids). */
static uint64_t rlv_bytes(const skv_rlv_model *m, int compact, uint32_t L, uint32_t KV,
                          uint64_t T)
{
    uint64_t w = (uint64_t)L * (8 + 4 * (SKV_RLV_NFEAT + (uint64_t)m->n_embd));
    if (compact)
        return (uint64_t)L * KV * skv_rlv_compact_bytes(T) + (m->n_embd ? (uint64_t)L * T * 2 : 0) +
               T * sizeof(int32_t) + w;
    return (uint64_t)L * KV * T * sizeof(skv_rlv_tok) + (uint64_t)L * T * sizeof(float) +
           T * (sizeof(int32_t) + sizeof(uint32_t)) + w;
}

/* Bytes of head_weight's state: per unit its gain (f32), per layer the
 * sum of logs (f64) and its row count (u64). */
static uint64_t hw_bytes(uint32_t L, uint32_t KV)
{
    return (uint64_t)L * KV * 4 + (uint64_t)L * 16;
}

static void hidden_hook(void *ctx, uint32_t layer, uint64_t pos, uint32_t n, const float *x,
                        uint32_t n_embd)
{
    ecg *e = ctx;
    if (e->lx && layer < e->base.n_layers) {
        /* a geometric mean: a few tokens with massive activations (sinks)
         * would rule an arithmetic one */
        uint64_t t0 = now_ns();
        for (uint32_t i = 0; i < n; i++) {
            double q = skv_vec_dot(x + (size_t)i * n_embd, x + (size_t)i * n_embd, n_embd);
            if (q > 0 && isfinite(q)) {
                e->lx[layer] += log(q);
                e->nx[layer]++;
            }
        }
        atomic_fetch_add_explicit(&e->track_ns, now_ns() - t0, memory_order_relaxed);
    }
    if (!e->rlv)
        return;
    uint64_t cap = e->base.capacity, m = pos < cap ? (cap - pos < n ? cap - pos : n) : 0;
    float *ht = m ? e->hterm + (size_t)layer * cap + pos : NULL;
    int rc = skv_rlv_hidden_terms(e->rlv, layer, x, (uint32_t)m, n_embd, ht);
    if (rc < 0)
        e->rerr = rc;
    for (uint64_t i = 0; e->rcompact && i < m; i++)
        ht[i] = h16(ht[i]);     /* the two bytes it is counted as */
}

void skv_ecg_attach(skv_kv_cache *c, skv_session *s, const skv_tokenizer *tk)
{
    ecg *e = as_g(c);
    if (!e || (!e->rlv && !e->hgain))
        return;
    e->tok = tk;
    if (e->hgain) {
        const skv_kv_cache *b = &e->base;
        const uint32_t G = e->G;
        float *g = skv_malloc((size_t)b->n_layers * b->n_heads * sizeof *g);
        if (!g || skv_model_head_out_gain(skv_session_model(s), g) < 0) {
            free(g);
            /* reported by the next append */
            e->rerr = skv_error(SKV_ENOMEM, "head weights: out of memory");
            return;
        }
        for (uint32_t u = 0; u < b->n_layers * b->n_kv_heads; u++) {
            double m = 0;
            for (uint32_t j = 0; j < G; j++)
                m += g[(size_t)u * G + j];
            e->hgain[u] = (float)(m / G);
        }
        free(g);
        e->hw_ready = 1;
    }
    skv_session_set_hidden_hook(s, hidden_hook, e);
}

void skv_ecg_tokens(skv_kv_cache *c, const int32_t *ids, uint32_t n)
{
    ecg *e = as_g(c);
    if (!e || !e->rlv)
        return;
    uint64_t p = e->len[0];     /* the next tokens start where layer 0 ends */
    for (uint32_t i = 0; i < n && p + i < c->capacity; i++)
        e->ids[p + i] = ids[i];
}

static int ecg_append(skv_kv_cache *c, uint32_t layer, uint64_t pos, uint32_t n, const float *k,
                      const float *v)
{
    ecg *e = (ecg *)c;
    int rc;
    if (e->rerr)
        return e->rerr;
    rlv_fold(e);
    if (e->rlv && n > ECG_PB)
        return skv_error(SKV_EINVAL, "importance atskv: %u rows in one append (at most %u)", n,
                         ECG_PB);
    /* pos < held: re-evaluation of forgotten positions, dropped everywhere */
    if ((rc = skv_kv_append_check(c, layer, pos, n, e->len)) > 0)
        rc = cut_to(e, pos);
    if (rc < 0)
        return rc;
    if (layer == 0 && !e->hold && pos >= e->n_alloc + e->RES)
        if ((rc = skv_ecg_realloc(c)) < 0)
            return rc;
    const uint32_t d = c->head_dim, row = c->n_kv_heads * d;
    for (uint32_t h = 0; h < c->n_kv_heads; h++) {
        gh *H = head_at(e, layer, h);
        for (uint32_t i = 0; i < n; i++) {
            float *dk = H->k + (pos + i) * d, *dv = H->v + (pos + i) * d;
            const float *sk = k + (size_t)i * row + (size_t)h * d;
            const float *sv = v + (size_t)i * row + (size_t)h * d;
            if ((rc = ec_f16_row(sk, sv, dk, dv, d, layer, h, pos + i)) < 0)
                return rc;
            if (e->cfg.rotate) {
                float tmp[SKV_MAX_HEAD_DIM] = {0};
                rotate(H, dk, tmp, d);
                memcpy(dk, tmp, d * sizeof(float));
            }
            if (e->PB < 16) {
                /* protected rows quantized per token as they enter; a group
                 * leaving the residual is quantized from what they decode to */
                const uint32_t gk = e->cfg.alloc.qcfg.k_group, gv = e->cfg.alloc.qcfg.v_group;
                for (uint32_t j = 0; j < d; j += gk)
                    skv_ecg_quant_span(dk + j, dk + j, gk, 1, e->PB);
                float rv[SKV_MAX_HEAD_DIM];
                if (e->cfg.rotate_values)
                    rotate(H, dv, rv, d);
                else
                    memcpy(rv, dv, d * sizeof(float));
                for (uint32_t j = 0; j < d; j += gv)
                    skv_ecg_quant_span(rv + j, rv + j, gv, 1, e->PB);
                if (e->cfg.rotate_values)
                    unrotate(H, rv, dv, d);
                else
                    memcpy(dv, rv, d * sizeof(float));
            }
            H->kb[pos + i] = H->vb[pos + i] = 16;
        }
    }
    e->len[layer] = pos + n;
    if (e->rlv) {
        if (layer == 0)
            rlv_note_tokens(e, pos, n);
        /* the attention of this block follows: ecg_attend fills pbuf */
        e->pb_layer = (int)layer;
        e->pb_pos = pos;
        e->pb_rows = n;
    }
    return 0;
}

/* Attention of one query over the rows [0, lim] of H that are not evicted
 * (value width 0), in float64 sums: a reference loop, slow at long
 * contexts, that only runs when eviction is allowed (the README's rows
 * come from it; a float version moved one row's KL by 10%).  prob gets
 * n_prob entries (0 for evicted tokens and beyond lim). */
static void attend_masked(const gh *H, const float *q, uint32_t d, float scale, uint64_t lim,
                          float *out, float *prob, uint64_t n_prob)
{
    double mx = -INFINITY;
    for (uint64_t t = 0; t <= lim; t++) {
        if (!H->vb[t]) {
            prob[t] = 0;
            continue;
        }
        const float *k = H->k + t * d;
        double sc = 0;
        for (uint32_t j = 0; j < d; j++)
            sc += (double)q[j] * k[j];
        sc *= scale;
        prob[t] = (float)sc;
        mx = sc > mx ? sc : mx;
    }
    double z = 0, acc[SKV_MAX_HEAD_DIM] = {0};
    for (uint64_t t = 0; t <= lim; t++) {
        if (!H->vb[t])
            continue;
        double w = exp((double)prob[t] - mx);
        z += w;
        prob[t] = (float)w;
        const float *v = H->v + t * d;
        for (uint32_t j = 0; j < d; j++)
            acc[j] += w * v[j];
    }
    for (uint64_t t = 0; t <= lim; t++)
        prob[t] = z > 0 ? (float)(prob[t] / z) : 0;
    for (uint64_t t = lim + 1; t < n_prob; t++)
        prob[t] = 0;
    for (uint32_t j = 0; j < d; j++)
        out[j] = z > 0 ? (float)(acc[j] / z) : 0;
}

static int ecg_attend(skv_kv_cache *c, uint32_t layer, uint32_t head, uint64_t pos, uint32_t n,
                      const float *q, size_t q_stride, float scale, float *out, size_t out_stride,
                      float *probs, size_t probs_stride)
{
    ecg *e = (ecg *)c;
    int rc = skv_kv_attend_check(c, layer, head, pos, n, e->len);
    if (rc < 0)
        return rc;
    uint64_t t0 = now_ns();
    const uint32_t d = c->head_dim;
    const gh *H = head_at(e, layer, head / e->G);
    skv_att_rows R = {d, 0, NULL, H->k, H->v, 0, e->len[layer], NULL, NULL};
    uint64_t ctx = pos + n;
    size_t r = (size_t)layer * c->n_heads + head;
    for (uint32_t i = 0; i < n; i++) {
        float qr[SKV_MAX_HEAD_DIM] = {0};
        const float *qi = q + i * q_stride;
        if (e->cfg.rotate) {
            rotate(H, qi, qr, d);
            qi = qr;
        }
        if (e->evict)
            attend_masked(H, qi, d, scale, pos + i, out + i * out_stride,
                          probs + i * probs_stride, ctx);
        else if ((rc = skv_attend_rows(e->cfg.kernel, &R, qi, 1, scale, pos + i,
                                       out + i * out_stride, probs + i * probs_stride, 0,
                                       ctx)) < 0)
            return rc;
        if (e->q2) {
            float *Q = e->q2 + r * d;
            const float g = (float)e->cfg.decay;
            for (uint32_t j = 0; j < d; j++)
                Q[j] = g * Q[j] + (1 - g) * qi[j] * qi[j];
        }
    }
    uint64_t t1 = now_ns();
    atomic_fetch_add_explicit(&e->attend_ns, t1 - t0, memory_order_relaxed);
    if (e->rlv) {
        if (n > ECG_PB)
            return skv_error(SKV_EINVAL, "importance atskv: %u query rows in one call (at most "
                             "%u)", n, ECG_PB);
        for (uint32_t i = 0; i < n; i++)
            memcpy(e->pbuf + ((size_t)head * ECG_PB + i) * c->capacity, probs + i * probs_stride,
                   (pos + i + 1) * sizeof(float));
        atomic_fetch_add_explicit(&e->track_ns, now_ns() - t1, memory_order_relaxed);
        return 0;
    }
    if (!e->track)
        return 0;
    ec_track(e->imp + r * c->capacity, probs, probs_stride, pos, n, e->cfg.imp_mode == SKV_IMP_EMA,
             (float)e->cfg.decay, e->cfg.imp_power);
    atomic_fetch_add_explicit(&e->track_ns, now_ns() - t1, memory_order_relaxed);
    return 0;
}

static int ecg_truncate(skv_kv_cache *c, uint64_t n)
{
    ecg *e = (ecg *)c;
    return skv_kv_truncates(c, n, e->len) ? cut_to(e, n) : 0;
}

static const skv_kv_ops ecg_ops = {ecg_append, ecg_attend, ecg_truncate, ecg_destroy};

void skv_ecg_hold(skv_kv_cache *c, int hold)
{
    ecg *e = as_g(c);
    if (e)
        e->hold = hold;
}

/* ---------------------------------------------------------------- bytes */

/* Bytes of the cache if tokens [0, na) are allocated with the widths in
 * kb/vb and tokens [na, len) are pending; *meta gets the tracking state. */
static uint64_t cache_bytes(const ecg *e, uint64_t na, uint64_t *meta)
{
    const skv_kv_cache *c = &e->base;
    const uint32_t d = c->head_dim;
    uint32_t mbk, mbv;
    map_bits(e, &mbk, &mbv);
    uint64_t bytes = ECG_HEAD_BYTES, mb = 0;
    /* a value row's bytes by its width; with 8-bit parameters its block's
     * 6 bytes are counted below, once per block */
    uint32_t vrow[17];
    for (uint32_t b = 0; b <= 16; b++)
        vrow[b] = e->PQ == 8 && b && b < 16 ? (d * b + 7) / 8 + 2 * (d / e->cfg.alloc.qcfg.v_group)
                                           : vbytes(e, 1, b);
    for (uint32_t l = 0; l < c->n_layers; l++)
        for (uint32_t h = 0; h < c->n_kv_heads; h++) {
            const gh *H = &e->heads[(size_t)l * c->n_kv_heads + h];
            uint64_t T = e->len[l], a = na < T ? na : T, s = e->sinks < a ? e->sinks : a;
            uint64_t nk = 0, nv = 0;
            bytes += ECG_UNIT_BYTES + (T - a + s) * pbytes(e);  /* pending and sinks */
            for (uint64_t t0 = 0; t0 < a; t0 += e->KT) {
                uint64_t lo = t0 > s ? t0 : s, hi = t0 + e->KT < a ? t0 + e->KT : a;
                if (lo >= hi)
                    continue;
                uint32_t kept = 0, bits = 0;
                for (uint64_t t = lo; t < hi; t++)
                    if (H->vb[t]) {     /* evicted tokens hold no key codes */
                        bits = kept++ ? bits : H->kb[t];
                    }
                bytes += kbytes(e, kept, bits);
                nk++;
            }
            for (uint64_t t = s; t < a; t++)
                bytes += vrow[H->vb[t]];
            nv += a - s;
            if (e->PQ == 8) /* 6 bytes of super-parameters per block with a quantized value */
                for (uint64_t b0 = 0; b0 < a; b0 += e->RES) {
                    uint64_t t = b0 > s ? b0 : s, hi = b0 + e->RES < a ? b0 + e->RES : a;
                    while (t < hi && !(H->vb[t] && H->vb[t] < 16))
                        t++;
                    bytes += t < hi ? 6 : 0;
                }
            bytes += (nk * mbk + nv * mbv + 7) / 8;
            if (e->track && !e->rlv)
                mb += T;                    /* importance, 8-bit log, folded per kv head */
            if (e->qtrack)
                mb += 2ull * d;             /* query second moments, fp16 */
        }
    if (e->rlv)
        mb += rlv_bytes(e->rlv, e->rcompact, c->n_layers, c->n_kv_heads, e->len[0]);
    if (e->hgain)
        mb += hw_bytes(c->n_layers, c->n_kv_heads);
    *meta = mb;
    return bytes;
}

int skv_ecg_stats(const skv_kv_cache *cc, skv_ec_stats *s)
{
    ecg *e = as_g(cc);
    if (!e)
        return skv_error(SKV_EINVAL, "kv cache: not a grouped cache");
    const skv_kv_cache *c = &e->base;
    *s = e->st;
    s->track_ns = atomic_load(&e->track_ns);
    s->attend_ns = atomic_load(&e->attend_ns);
    s->n_tokens = e->len[0];
    s->n_alloc = e->n_alloc < e->len[0] ? e->n_alloc : e->len[0];
    s->fp16_bytes = skv_alloc_fp16_bytes(c->n_layers, c->n_kv_heads, s->n_tokens, c->head_dim);
    s->bytes = cache_bytes(e, e->n_alloc, &s->meta_bytes);
    s->mem_bytes = 0;
    memset(s->hist, 0, sizeof s->hist);
    for (uint32_t l = 0; l < c->n_layers; l++)
        for (uint32_t h = 0; h < c->n_kv_heads; h++) {
            const gh *H = head_at(e, l, h);
            for (uint64_t t = 0; t < s->n_alloc; t++) {
                int a = skv_width_index(H->kb[t]), b = skv_width_index(H->vb[t]);
                if (a >= 0)
                    s->hist[a]++;
                if (b >= 0)
                    s->hist[b]++;
            }
            s->mem_bytes += e->len[l] * 2ull * c->head_dim * sizeof(float);
        }
    return 0;
}

void skv_ecg_stats_reset(skv_kv_cache *cc)
{
    ecg *e = as_g(cc);
    if (!e)
        return;
    memset(&e->st, 0, sizeof e->st);
    atomic_store(&e->track_ns, 0);
    atomic_store(&e->attend_ns, 0);
}

const uint8_t *skv_ecg_widths(const skv_kv_cache *cc, uint32_t layer, uint32_t kv_head)
{
    ecg *e = as_g(cc);
    if (!e || layer >= cc->n_layers || kv_head >= cc->n_kv_heads)
        return NULL;
    return head_at(e, layer, kv_head)->vb;
}

const uint8_t *skv_ecg_key_widths(const skv_kv_cache *cc, uint32_t layer, uint32_t kv_head)
{
    ecg *e = as_g(cc);
    if (!e || layer >= cc->n_layers || kv_head >= cc->n_kv_heads)
        return NULL;
    return head_at(e, layer, kv_head)->kb;
}

/* ---------------------------------------------------------------- solve */

typedef struct hent {
    double r;
    uint32_t i;
    uint8_t j;
} hent;

static void hpush(hent *h, size_t *n, hent x)
{
    size_t i = (*n)++;
    while (i) {
        size_t p = (i - 1) / 2;
        if (h[p].r >= x.r)
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = x;
}

static hent hpop(hent *h, size_t *n)
{
    hent top = h[0], x = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        double mr = x.r;
        if (l < *n && h[l].r > mr) {
            m = l;
            mr = h[l].r;
        }
        if (r < *n && h[r].r > mr)
            m = r;
        if (m == i)
            break;
        h[i] = h[m];
        i = m;
    }
    if (*n)
        h[i] = x;
    return top;
}

/* Best upgrade of an item from width index sel within `room` bytes: the
 * largest damage saved per byte (ties: the narrower width).  -1 if none. */
static int next_step(const ecg *e, const item *it, int sel, uint64_t room, double *ratio)
{
    const uint32_t *b = bytes_of(e, it);
    double best = 0;
    int bj = -1;
    for (int j = sel + 1; j <= it->cap; j++) {
        if (!(e->wmask & (1u << j)))
            continue;
        double db = (double)b[j] - b[sel], de = (double)it->e[sel] - it->e[j];
        if (db <= 0 || db > (double)room || de <= 0)
            continue;
        if (de / db > best) {
            best = de / db;
            bj = j;
        }
    }
    *ratio = best;
    return bj;
}

static int best_step(const ecg *e, const item *it, uint64_t room, hent *out, uint32_t idx)
{
    double r;
    int j = next_step(e, it, it->sel, room, &r);
    if (j < 0)
        return 0;
    out->r = r;
    out->i = idx;
    out->j = (uint8_t)j;
    return 1;
}

/* A hull step of the sorted walk: key = the ratio's float bits (positive
 * floats order as their bits), the width index (3 bits) and the item's
 * (29); db its bytes over the item's previous hull point, carried so that
 * the walk need not read the item. */
typedef struct hstep {
    uint64_t key;
    uint32_t db;
} hstep;

#define HS_ITEM(k) ((uint32_t)(k) & ((1u << 29) - 1))
#define HS_WIDTH(k) ((uint32_t)((k) >> 29) & 7)

/* Sorts n steps by their keys' high 32 bits, descending, stable (three
 * 11-bit LSD passes); tmp holds n.  Returns the array that holds the
 * result. */
static hstep *radix_desc(hstep *a, hstep *tmp, size_t n)
{
    for (int sh = 32; sh < 64; sh += 11) {
        size_t cnt[2048] = {0}, sum = 0;
        for (size_t i = 0; i < n; i++)
            cnt[(~a[i].key >> sh) & 2047]++;
        for (size_t k = 0; k < 2048; k++) {
            size_t c = cnt[k];
            cnt[k] = sum;
            sum += c;
        }
        for (size_t i = 0; i < n; i++)
            tmp[cnt[(~a[i].key >> sh) & 2047]++] = a[i];
        hstep *t = a;
        a = tmp;
        tmp = t;
    }
    return a;
}

/* Pops the best step: taken if it still fits, then the item's next best
 * step within the bytes left is pushed. */
static void heap_take(ecg *e, hent *hp, size_t *nh, uint64_t *cur, uint64_t limit)
{
    hent x = hpop(hp, nh);
    item *it = &e->it[x.i];
    const uint32_t *b = bytes_of(e, it);
    uint64_t db = b[x.j] - b[it->sel];
    if (*cur + db <= limit) {
        *cur += db;
        it->sel = x.j;
    }
    hent y;
    if (best_step(e, it, limit - *cur, &y, x.i))
        hpush(hp, nh, y);
}

/* The greedy solver, by its reference: from every item's starting width,
 * spend the bytes above `cur` up to `limit` on the upgrades that save the
 * most damage per byte.  A heap holds each item's best step within the
 * room left when it was pushed; a popped step is taken if it still fits,
 * and the item's next best step is pushed. */
static int solve_heap(ecg *e, uint64_t cur, uint64_t limit)
{
    hent *hp = skv_malloc((e->n_it + 1) * sizeof *hp);
    if (!hp)
        return SKV_ENOMEM;
    size_t nh = 0;
    for (size_t i = 0; i < e->n_it; i++) {
        hent x;
        if (best_step(e, &e->it[i], limit - cur, &x, (uint32_t)i))
            hpush(hp, &nh, x);
    }
    while (nh)
        heap_take(e, hp, &nh, &cur, limit);
    free(hp);
    return 0;
}

/* The same steps as solve_heap (up to ties, and ratios that round to the
 * same float), without a heap of every item, which was 40% of a plan in
 * cache misses.  Without a room limit an item's best steps walk the upper
 * convex hull of its (bytes, damage) points, whose ratios never rise, so
 * all items' hull steps are sorted once (a radix sort of float ratios) and
 * walked in that order: a hull step is the reference's heap entry as long
 * as it fitted the room left when that entry was pushed.  When it did not,
 * or when it no longer fits, the item's best step within the room goes to
 * a small heap, merged with the sorted steps by ratio, and the item leaves
 * the sorted walk.
 *
 * Most steps are taken (in a decode, 97% of them: a plan mostly puts the
 * held rows back where they were), so with a hint -- twice the ratio at
 * which the last plan's walk first found a step that did not fit -- the
 * steps above it are neither sorted nor walked: when they fit the room
 * together, the walk takes them all before any other, in whatever order.
 * Their order mattered only through the room an item's next step is
 * compared with, and that comparison comes out the same when the step fits
 * the room left after all of them; if some item's does not, or they do not
 * fit together, every step is sorted as without a hint.  *cross: the hint
 * in (< 0 none), this walk's crossing out (0 if every step fitted).
 * Returns 1 if the steps above the hint were taken unsorted, else 0. */
static int solve(ecg *e, uint64_t cur, uint64_t limit, float *cross)
{
    const size_t n = e->n_it;
    if (n >= 1u << 29)
        return skv_error(SKV_ENOMEM, "kv cache: %zu items to plan, beyond 2^29", n);
    size_t ns = 0;  /* at most one step per allowed width above the start */
    uint8_t above[ECG_NW][ECG_NW] = {{0}};  /* [sel][cap]: allowed widths in (sel, cap] */
    for (int a = 0; a < ECG_NW; a++)
        for (int c = a + 1; c < ECG_NW; c++)
            above[a][c] = (uint8_t)(above[a][c - 1] + !!(e->wmask & (1u << c)));
    for (size_t i = 0; i < n; i++)
        ns += above[e->it[i].sel][e->it[i].cap];
    /* key (and the sort's second half), hp, room, inh, sel */
    size_t need = (2 * ns + 1) * sizeof(hstep) + (n + 1) * (sizeof(hent) + 8 + 2);
    if (need > e->sv_cap || !e->sv) {
        void *p = skv_realloc(e->sv, need);
        if (!p)
            return SKV_ENOMEM;
        e->sv = p;
        e->sv_cap = need;
    }
    hstep *key = e->sv;
    hent *hp = (hent *)(key + 2 * ns + 1);
    uint64_t *room = (uint64_t *)(hp + n + 1);      /* at the entry's push */
    uint8_t *inh = (uint8_t *)(room + n + 1);       /* 1: its entry is in hp */
    uint8_t *sel = inh + n + 1;     /* the walk's widths (items' once in hp) */
    memset(inh, 0, n + 1);
    /* the hint as float bits: a step is above it when its ratio's bits are
     * greater (positive floats order as their bits) */
    uint32_t hb = 0;
    uint64_t r_up = 0;
    int split = *cross >= 0;
    if (split) {
        float h = *cross * 2;
        memcpy(&hb, &h, sizeof hb);
    }
    for (;;) {
        uint64_t up = 0, first = 0;     /* bytes above the hint; the largest first
                                           step below it of an item with steps above */
        ns = 0;
        for (size_t i = 0; i < n; i++) {
            const item *it = &e->it[i];
            const uint32_t *b = bytes_of(e, it);
            double r;
            int t, s = it->sel, sh = it->sel;
            room[i] = limit - cur;
            for (; (t = next_step(e, it, s, UINT64_MAX, &r)) >= 0; s = t) {
                float f = (float)r;
                uint32_t u, db = b[t] - b[s];
                memcpy(&u, &f, sizeof u);
                if (split && u > hb) {  /* hull ratios never rise: a prefix */
                    up += db;
                    sh = t;
                    continue;
                }
                if (s == sh && sh != it->sel && db > first)
                    first = db;
                key[ns].key = (uint64_t)u << 32 | (uint32_t)t << 29 | (uint32_t)i;
                key[ns++].db = db;
            }
            sel[i] = (uint8_t)sh;
            if (sh != it->sel)
                room[i] = UINT64_MAX;   /* the room after every step above the hint */
        }
        if (!split)
            break;
        if (up <= limit - cur && first <= limit - cur - up) {
            cur += up;
            r_up = limit - cur;
            break;
        }
        split = 0;  /* sort them all */
    }
    const hstep *srt = radix_desc(key, key + ns, ns);
    /* The walk reads an item only once the heap holds something (near the
     * budget's end): its steps' bytes are in the keys, and the room at an
     * item's last step is at least the room left, so it is read only when
     * a step does not fit that. */
    size_t k = 0, nh = 0;
    int crossed = 0;
    *cross = 0;
    for (;;) {
        while (k < ns && inh[HS_ITEM(srt[k].key)])
            k++;
        uint32_t i = 0, j = 0, db = 0;
        int walk = k < ns;
        if (walk) {
            i = HS_ITEM(srt[k].key);
            j = HS_WIDTH(srt[k].key);
            db = srt[k].db;
        }
        if (walk && nh) {   /* the sorted step's exact ratio against the heap's best */
            const item *it = &e->it[i];
            const uint32_t *b = bytes_of(e, it);
            double rs = ((double)it->e[sel[i]] - it->e[j]) / ((double)b[j] - b[sel[i]]);
            walk = rs >= hp[0].r;
        }
        if (walk) {
            k++;
            if (db <= limit - cur) {
                cur += db;
                sel[i] = (uint8_t)j;
                room[i] = limit - cur;  /* its next hull step's push */
                continue;
            }
            if (!crossed) {     /* the next plan's hint */
                uint32_t u = (uint32_t)(srt[k - 1].key >> 32);
                memcpy(cross, &u, sizeof u);
                crossed = 1;
            }
            item *it = &e->it[i];
            hent y;
            /* the reference pushed a smaller step (the hull step did not
             * fit the room at its push), or this one fitted then, not now */
            uint64_t ri = room[i] == UINT64_MAX ? r_up : room[i];
            uint64_t r = db > ri ? ri : limit - cur;
            inh[i] = 1;
            it->sel = sel[i];
            if (best_step(e, it, r, &y, i))
                hpush(hp, &nh, y);
        } else if (nh) {
            heap_take(e, hp, &nh, &cur, limit);
        } else {
            break;
        }
    }
    for (size_t i = 0; i < n; i++)
        if (!inh[i])
            e->it[i].sel = sel[i];
    return split;
}

int skv_ecg_solve_items(uint32_t n, const float *dmg, const uint32_t *bytes, const uint8_t *cap,
                        uint8_t *sel, uint32_t wmask, uint64_t cur, uint64_t limit, int heap,
                        float *cross)
{
    ecg g;
    memset(&g, 0, sizeof g);
    g.wmask = wmask;
    g.n_it = n;
    g.it = skv_calloc(n ? n : 1, sizeof *g.it);
    g.lad = skv_malloc((n ? n : 1) * ECG_NW * sizeof *g.lad);
    if (!g.it || !g.lad) {
        free(g.it);
        free(g.lad);
        return SKV_ENOMEM;
    }
    memcpy(g.lad, bytes, (size_t)n * ECG_NW * sizeof *g.lad);
    for (uint32_t i = 0; i < n; i++) {
        memcpy(g.it[i].e, dmg + (size_t)i * ECG_NW, sizeof g.it[i].e);
        g.it[i].bl = i;
        g.it[i].cap = cap[i];
        g.it[i].sel = sel[i];
    }
    float none = -1;
    int rc = heap ? solve_heap(&g, cur, limit) : solve(&g, cur, limit, cross ? cross : &none);
    for (uint32_t i = 0; i < n && rc >= 0; i++)
        sel[i] = g.it[i].sel;
    free(g.it);
    free(g.lad);
    free(g.sv);
    return rc;
}

static int grow_items(ecg *e, size_t n)
{
    if (n <= e->cap_it)
        return 0;
    size_t nc = e->cap_it ? e->cap_it : 1024;
    while (nc < n)
        nc *= 2;
    item *ni = skv_realloc(e->it, nc * sizeof *ni);
    if (!ni)
        return SKV_ENOMEM;
    e->it = ni;
    e->cap_it = nc;
    return 0;
}

/* The logit model's damage per token of a key row kq (quantized) against
 * k, and of a value row.  (Importance x squared error sums the squared
 * errors of all rows and widths at once: skv_ecq_sqerr.) */
static double key_damage(const ecg *e, const float *k, const float *kq, const float *Q2,
                         double w, double vdev)
{
    const uint32_t d = e->base.head_dim;
    double s = 0;
    for (uint32_t j = 0; j < d; j++) {
        double x = (double)k[j] - kq[j];
        s += Q2[j] * x * x;
    }
    s *= (double)e->scale * e->scale;
    if (s > 10)
        s = 10;
    /* E[(e^delta - 1)^2] for a logit error delta ~ N(0, s): the mass a
     * token gains or loses, non-linear once the error is large */
    double g = exp(2 * s) - 2 * exp(s / 2) + 1;
    return w * g * vdev;
}

static double val_damage(const ecg *e, const float *v, const float *vq, double w)
{
    double s = 0;
    for (uint32_t j = 0; j < e->base.head_dim; j++) {
        double x = (double)v[j] - vq[j];
        s += x * x;
    }
    return w * s;
}

/* imp-range.  Min-max rounding to 2^b - 1 steps leaves each number an
 * error of about (range / (2^b - 1))^2 / 12 on average, range being its
 * span's: so a row's squared error at any width is its energy (the sum over
 * its numbers of their span's range^2) over 12 (2^b - 1)^2.  Energies are
 * found when a row is first quantized (and when a key group is requantized
 * over fewer tokens) and kept: requantizing a row keeps its spans' ranges,
 * up to the grid's rounding, so they are what its stored ranges give, and
 * a held item's damage needs none of its numbers.  Against the squared
 * errors themselves (imp-mse) the method's rows came out from 16% lower to
 * 10% higher in KL at the same bytes: an expected error, not one draw of
 * the rounding, and a plan about 3x cheaper.
 * A span of n numbers has its minimum and maximum exact: n - 2 carry the
 * error (a key group's m tokens: (m - 2) / m of each token's share). */
double skv_ecg_span_energy(const float *x, uint32_t d, uint32_t g)
{
    double s = 0;
    for (uint32_t j = 0; j < d; j += g) {
        float mn, mx;
        skv_ecq_minmax(x + j, g, &mn, &mx);
        s += (double)(g > 2 ? g - 2 : 0) * ((double)mx - mn) * ((double)mx - mn);
    }
    return s;
}

/* The key energy of m rows x[m][d] of a group (keys per channel: each
 * token has one number in each channel's span), stored for their tokens. */
static void key_energy(const ecg *e, gh *H, const float *x, uint32_t m, const uint32_t *idx,
                       uint64_t t0)
{
    const uint32_t d = e->base.head_dim;
    if (e->cfg.k_layout == SKV_EC_KEYS_CHANNEL) {
        float mn[SKV_MAX_HEAD_DIM], mx[SKV_MAX_HEAD_DIM];
        double s = 0;
        skv_ecq_minmax_cols(x, m, d, mn, mx);
        for (uint32_t c = 0; c < d; c++)
            s += ((double)mx[c] - mn[c]) * ((double)mx[c] - mn[c]);
        s *= m > 2 ? (double)(m - 2) / m : 0;
        for (uint32_t r = 0; r < m; r++)
            H->ek[t0 + idx[r]] = (float)s;
    } else {
        for (uint32_t r = 0; r < m; r++)
            H->ek[t0 + idx[r]] =
                (float)skv_ecg_span_energy(x + (size_t)r * d, d, e->cfg.alloc.qcfg.k_group);
    }
}

/* An item's cap and damage per width under imp-range (the rows' weights
 * in wt[token]); a fresh item's energies found first (idx, x: room for KT
 * rows). */
static void range_item(const ecg *e, gh *H, item *it, const double *wt, const float *vbar,
                       uint32_t *idx, float *x)
{
    const uint32_t d = e->base.head_dim;
    const uint64_t t0 = it->t0;
    uint64_t first = t0;    /* a held key group skips its evicted tokens */
    if (it->kind != 1)
        while (first < t0 + it->m - 1 && !H->vb[first])
            first++;
    it->cap = (uint8_t)(it->fresh ? ECG_NW - 1 : widx(it->kind == 1 ? H->vb[t0] : H->kb[first]));
    /* the damage is needed at the allowed widths below cap only (keys are
     * never width 0) */
    if (!(e->wmask & ((1u << it->cap) - 1) & (it->kind == 1 ? ~0u : ~1u)))
        return;
    if (it->fresh) {
        uint32_t n = 0;
        for (uint32_t t = 0; t < it->m; t++)
            if (it->kind == 1 || H->vb[t0 + t])
                idx[n++] = t;
        if (it->kind != 1) {
            for (uint32_t r = 0; r < n; r++)
                memcpy(x + (size_t)r * d, H->k + (t0 + idx[r]) * d, d * sizeof(float));
            key_energy(e, H, x, n, idx, t0);
        }
        if (it->kind != 0)
            for (uint32_t r = 0; r < n; r++) {
                const float *row = H->v + (t0 + idx[r]) * d;
                if (e->cfg.rotate_values) {
                    rotate(H, row, x, d);
                    row = x;
                }
                H->ev[t0 + idx[r]] = (float)skv_ecg_span_energy(row, d, e->cfg.alloc.qcfg.v_group);
            }
    }
    double en = 0;
    if (it->kind == 1)
        en = wt[t0] * H->ev[t0];
    else
        for (uint64_t t = t0; t < t0 + it->m; t++)
            if (H->vb[t])
                en += wt[t] * (H->ek[t] + (it->kind == 2 ? H->ev[t] : 0));
    for (int j = 0; j < it->cap; j++) {
        if (!(e->wmask & (1u << j)) || (j == 0 && it->kind != 1))
            continue;
        /* evicted (width 0): the output moves toward vbar */
        /* clip's ranges fit 2^b steps where min-max fits 2^b - 1 */
        const uint32_t b = ecg_widths[j];
        double q = (double)((1u << b) - (e->cfg.clip && b <= CLIP_MAX_BITS ? 0u : 1u));
        it->e[j] = j ? (float)(en / (12 * q * q))
                     : (float)val_damage(e, H->v + t0 * d, vbar, wt[t0]);
    }
}

/* head_weight: the scale of unit u's predicted damage.  An error e in the
 * output of a query head moves the residual stream by about
 * |e|^2 gain (skv_model_head_out_gain), and what the layers after make of
 * it is relative to the stream it joins: gain / |x|^2, with |x|^2 the
 * geometric mean over the rows that entered the unit's layer.  Without the
 * attached model's gains every unit weighs 1. */
static double unit_scale(const ecg *e, uint32_t u)
{
    const uint32_t l = u / e->base.n_kv_heads;
    if (!e->hw_ready || !e->nx[l])
        return 1;
    return exp(e->cfg.head_weight * (log((double)e->hgain[u]) - e->lx[l] / (double)e->nx[l]));
}

/* Every token's importance weight in [lo, hi) of unit u (layer l, KV head
 * h), into wt[token]: the tracked importance as the cache holds it (or the
 * learned relevance, 1/age, a seeded random score), plus the prior; with
 * keys_by_age (wk not NULL) the key groups' weights into wk[token]: 1/age
 * scaled by 1/H_T to sum 1 as the tracked attention does, the same floor and
 * head scale. */
static void unit_weights(const ecg *e, uint32_t u, uint64_t lo, uint64_t hi, uint64_t T,
                         double hT, double *wt, double *wk)
{
    const skv_kv_cache *c = &e->base;
    const uint32_t l = u / c->n_kv_heads, h = u % c->n_kv_heads, G = e->G;
    const int sq = e->track && e->cfg.imp_power == 2;
    const uint64_t wkey = 0x57a7ull + e->cfg.alloc.seed;
    /* a token not attended lately may be attended later */
    const double pr = (e->cfg.prior > 0 ? e->cfg.prior : 0.05) / (double)T;
    const double f = unit_scale(e, u);
    /* folded per kv head, one byte: a log in steps of 1/16 (of p) or 1/8
     * (of p^2: twice the octaves) */
    if (e->track && !e->rlv && hi > lo)
        skv_ecq_imp_fold(e->imp + ((size_t)l * c->n_heads + h * G) * c->capacity + lo,
                         c->capacity, G, hi - lo, sq, wt + lo);
    for (uint64_t tt = lo; tt < hi; tt++) {
        double w;
        if (e->rlv) {
            w = e->rel[tt];
        } else if (e->track) {
            w = wt[tt];
            if (e->cfg.recency > 0)     /* H2O's recent window, as a prior */
                w += e->cfg.recency / (hT * (double)(T - tt));
        } else if (e->cfg.alloc.policy == SKV_POLICY_POSITION) {
            w = 1.0 / (double)(T - tt);
        } else {
            w = (double)(mix64(wkey ^ ((uint64_t)u << 32) ^ tt) >> 11) * 0x1.0p-53;
        }
        wt[tt] = (w + (sq ? pr * pr : pr)) * f;
        if (wk)
            wk[tt] = (1.0 / (hT * (double)(T - tt)) + (sq ? pr * pr : pr)) * f;
    }
}

/* A planned item's widths into its tokens; fresh items are quantized from
 * what they hold, downgrades requantized (buf: room for KT rows, idx for
 * KT indices; rng: the imp-range model, whose key energies follow a key
 * group's kept tokens). */
static void apply_item(ecg *e, const item *it, float *buf, uint32_t *idx, int rng)
{
    const uint32_t d = e->base.head_dim;
    gh *H = &e->heads[it->unit];
    uint32_t bits = ecg_widths[it->sel];
    int changed = it->fresh || it->sel < it->cap;
    if (!it->fresh && it->sel < it->cap)
        e->st.downgrades++;
    uint32_t nrow = 0;
    for (uint32_t t = 0; t < it->m; t++) {
        uint64_t tt = it->t0 + t;
        if (it->kind != 0)
            H->vb[tt] = (uint8_t)bits;
        if (it->kind != 1)
            H->kb[tt] = (uint8_t)(H->vb[tt] ? bits : 0);
        if (H->vb[tt])
            idx[nrow++] = t;
    }
    if (!changed || bits >= 16 || !nrow)
        return;
    e->st.requant_rows += nrow;
    if (it->kind != 0) /* values are per token: in place */
        quant_values(e, H, it->t0, H->v + it->t0 * d, H->v + it->t0 * d, it->m, bits);
    if (it->kind != 1) {
        for (uint32_t r = 0; r < nrow; r++)
            memcpy(buf + (size_t)r * d, H->k + (it->t0 + idx[r]) * d, d * sizeof(float));
        if (rng && !it->fresh && e->cfg.k_layout == SKV_EC_KEYS_CHANNEL)
            key_energy(e, H, buf, nrow, idx, it->t0);   /* fewer tokens, maybe */
        quant_keys(e, buf, buf, nrow, bits);
        for (uint32_t r = 0; r < nrow; r++)
            memcpy(H->k + (it->t0 + idx[r]) * d, buf + (size_t)r * d, d * sizeof(float));
    }
}

int skv_ecg_realloc(skv_kv_cache *cc)
{
    ecg *e = as_g(cc);
    if (!e)
        return skv_error(SKV_EINVAL, "kv cache: not a grouped cache");
    const skv_kv_cache *c = &e->base;
    const uint32_t L = c->n_layers, KH = c->n_kv_heads, d = c->head_dim, G = e->G;
    uint64_t T = e->len[0];
    for (uint32_t l = 1; l < L; l++)
        if (e->len[l] != T)
            return skv_error(SKV_EINVAL, "kv cache: reallocation with layer %u at %llu positions "
                             "and layer 0 at %llu", l, (unsigned long long)e->len[l],
                             (unsigned long long)T);
    uint64_t na = T / e->RES * e->RES, old = e->n_alloc;
    if (na <= old)
        return 0;
    uint64_t t_start = now_ns();
    int rc;
    /* replan K: each flush re-weighs the held key groups g with g % K ==
     * flush % K (and their tokens' values) beside the groups leaving the
     * residual; the others keep their widths.  Every held row is re-planned
     * at every K-th flush, and each flush costs 1/K of a full plan.  (All
     * held rows at once at every K-th flush, and none between, starved the
     * groups placed between, which found the budget spent: KL 1.2-1.8x
     * this one's at the same K.)  The first flush is full. */
    const uint64_t flush = e->n_flush++;
    const uint32_t RP = e->cfg.replan > 1 ? e->cfg.replan : 1;
    const int full = RP == 1 || old == 0;
    rlv_fold(e);
    const int joint = !e->cfg.kv_split;
    if (e->PQ == 8) { /* the value grids of the blocks leaving the residual */
        const uint32_t g = e->cfg.alloc.qcfg.v_group, ns = d / g;
        float *mn = skv_malloc((size_t)e->RES * ns * 2 * sizeof *mn);
        if (!mn)
            return SKV_ENOMEM;
        float *mx = mn + (size_t)e->RES * ns;
        for (uint32_t u = 0; u < L * KH; u++)
            for (uint64_t b0 = old; b0 < na; b0 += e->RES) {
                uint64_t lo = b0 > e->sinks ? b0 : e->sinks;
                float *sup = e->heads[u].vsup + b0 / e->RES * 3;
                if (lo >= b0 + e->RES) {
                    sup[0] = sup[1] = sup[2] = 0;
                    continue;
                }
                uint32_t n = 0;     /* spans, in row order */
                for (uint64_t t = lo; t < b0 + e->RES; t++) {
                    float rs[SKV_MAX_HEAD_DIM];
                    const float *row = e->heads[u].v + t * d;
                    if (e->cfg.rotate_values) {
                        rotate(&e->heads[u], row, rs, d);
                        row = rs;
                    }
                    for (uint32_t j = 0; j < ns; j++, n++)
                        skv_ecq_minmax(row + j * g, g, mn + n, mx + n);
                }
                grid_fit(mn, mx, n, sup);
            }
        free(mn);
    }
    /* items */
    e->n_it = 0;
    for (uint32_t u = 0; u < L * KH; u++) {
        uint64_t s = e->sinks < na ? e->sinks : na;
        for (uint64_t t0 = 0; t0 < na; t0 += e->KT) {
            uint64_t lo = t0 > s ? t0 : s, hi = t0 + e->KT;
            if (lo >= hi)
                continue;
            if (lo < old && !full && (t0 / e->KT) % RP != flush % RP)
                continue;   /* not this flush's slice: keeps its widths */
            if (lo < old) {
                /* a held group whose tokens are all evicted has nothing left */
                const gh *H = &e->heads[u];
                uint64_t t = lo;
                while (t < hi && !H->vb[t])
                    t++;
                if (t == hi)
                    continue;
            }
            if ((rc = grow_items(e, e->n_it + 1 + (joint ? 0 : e->KT))) < 0)
                return rc;
            item *it = &e->it[e->n_it++];
            memset(it, 0, sizeof *it);
            it->unit = u;
            it->kind = joint ? 2 : 0;
            it->t0 = lo;
            it->m = (uint32_t)(hi - lo);
            it->fresh = lo >= old;
            if (!joint)
                for (uint64_t t = lo; t < hi; t++) {
                    item *iv = &e->it[e->n_it++];
                    memset(iv, 0, sizeof *iv);
                    iv->unit = u;
                    iv->kind = 1;
                    iv->t0 = t;
                    iv->m = 1;
                    iv->fresh = t >= old;
                }
        }
    }
    /* damage and bytes per width */
    /* the logit model's damage is per row; importance x squared error is a
     * sum of squared errors (key_damage, val_damage), found in lanes */
    const int lanes = e->cfg.err_model != SKV_EC_ERR_LOGIT;
    const int rng = e->cfg.err_model == SKV_EC_ERR_IMP_RANGE;
    const size_t npair = (size_t)2 * ECG_NW * e->KT;
    float *buf = skv_malloc((size_t)e->KT * d * sizeof(float) * (7 + (lanes ? 2 * ECG_NW : 0)));
    uint32_t *idx = skv_malloc((size_t)e->KT * sizeof *idx);
    double *wr = skv_malloc(((size_t)e->KT * 2 + npair) * sizeof *wr);
    const float **pa = skv_malloc(npair * 2 * sizeof *pa);
    double *wt = skv_malloc((na ? na : 1) * sizeof *wt);  /* weights of one unit's tokens */
    /* keys_by_age: the key groups' weights */
    const int by_age = e->cfg.keys_by_age && e->track && !e->rlv;
    double *wk = by_age ? skv_malloc((na ? na : 1) * sizeof *wk) : NULL;
    if (!buf || !idx || !wr || !pa || !wt || (by_age && !wk)) {
        free(buf);
        free(idx);
        free(wr);
        free(pa);
        free(wt);
        free(wk);
        return SKV_ENOMEM;
    }
    double *vdr = wr + e->KT, *sqe = wr + 2 * e->KT;
    const float **pb = pa + npair;
    float *qbuf = buf + (size_t)7 * e->KT * d;  /* lanes: [width][keys, values][KT][d] */
    float *kin = buf + (size_t)2 * e->KT * d, *vrot = buf + (size_t)4 * e->KT * d;
    float *vgz = buf + (size_t)5 * e->KT * d, *vgr = buf + (size_t)6 * e->KT * d;
    kgrid kg;
    float vbar[SKV_MAX_HEAD_DIM] = {0}, q2[SKV_MAX_HEAD_DIM] = {0};
    uint32_t last_unit = UINT32_MAX;
    double hT = 0;  /* harmonic number: the 1/age prior sums to 1 over T tokens */
    for (uint64_t a = 1; a <= T; a++)
        hT += 1.0 / (double)a;
    for (size_t i = 0; i < e->n_it; i++) {
        item *it = &e->it[i];
        uint32_t l = it->unit / KH, h = it->unit % KH;
        gh *H = &e->heads[it->unit];
        if (it->unit != last_unit) {
            last_unit = it->unit;
            memset(vbar, 0, sizeof vbar);
            if (e->evict || !lanes)     /* the eviction's damage, the logit model's */
                skv_ecq_colmean(H->v, T, d, vbar);
            memset(q2, 0, sizeof q2);
            if (e->q2)
                for (uint32_t g = 0; g < G; g++)
                    for (uint32_t j = 0; j < d; j++)
                        q2[j] += e->q2[((size_t)l * c->n_heads + h * G + g) * d + j] / (float)G;
            if (e->rlv)
                rlv_importance(e, l, h, T);
            unit_weights(e, it->unit, e->sinks < na ? e->sinks : na, na, T, hT, wt, wk);
        }
        it->bl = it->kind * (e->KT + 1) + it->m;
        memset(it->e, 0, sizeof it->e);
        const double *iw = it->kind == 0 && wk ? wk : wt;  /* keys_by_age: the keys' */
        if (rng) {
            range_item(e, H, it, iw, vbar, idx, kin);
            continue;
        }
        /* the rows this item holds: a held key group skips its evicted tokens */
        uint32_t nrow = 0;
        for (uint32_t t = 0; t < it->m; t++)
            if (it->kind == 1 || H->vb[it->t0 + t])
                idx[nrow++] = t;
        int curw = it->kind == 1 ? widx(H->vb[it->t0]) : widx(H->kb[it->t0 + idx[0]]);
        it->cap = (uint8_t)(it->fresh ? ECG_NW - 1 : curw);
        /* the damage is needed at the allowed widths below cap only: a held
         * item at its lowest allowed width has none to compute */
        int below = 0;
        for (int j = 0; j < it->cap; j++)
            below |= (e->wmask & (1u << j)) && (j || it->kind == 1);
        for (uint32_t r = 0; below && r < nrow; r++) {
            if (it->kind != 1)
                memcpy(kin + (size_t)r * d, H->k + (it->t0 + idx[r]) * d, d * sizeof(float));
            if (it->kind != 0 || !lanes)    /* a key group's values: the logit model's vdr */
                memcpy(kin + (size_t)(e->KT + r) * d, H->v + (it->t0 + idx[r]) * d,
                       d * sizeof(float));
        }
        /* each row's importance weight and |v - vbar|^2 */
        for (uint32_t r = 0; below && r < nrow; r++) {
            wr[r] = iw[it->t0 + idx[r]];
            vdr[r] = 0;
            if (it->kind != 0 && e->cfg.rotate_values)
                rotate(H, kin + (size_t)(e->KT + r) * d, vrot + (size_t)r * d, d);
            if (it->kind != 1 && !lanes)    /* the logit model's */
                for (uint32_t q = 0; q < d; q++) {
                    double x = (double)kin[(size_t)(e->KT + r) * d + q] - vbar[q];
                    vdr[r] += x * x;
                }
        }
        /* the grids of the rows, the same at every width tried */
        const float *K = kin, *V = kin + (size_t)e->KT * d, *VQ = e->cfg.rotate_values ? vrot : V;
        /* (with clip each width has its own) */
        const int kg_on = e->cfg.k_layout == SKV_EC_KEYS_CHANNEL && e->PQ == 8 && !e->cfg.clip;
        const int vg_on = e->PQ == 8 && !e->cfg.clip;
        int nj = 0, js[ECG_NW];
        if (below && it->kind != 1 && kg_on)
            key_grid(K, nrow, d, 2, 0, &kg);
        if (below && it->kind != 0 && vg_on)
            value_grid(e, H, it->t0, VQ, nrow, vgz, vgr);
        for (int j = 0; j < ECG_NW; j++) {
            uint32_t bits = ecg_widths[j];
            if (j >= it->cap || (bits == 0 && it->kind != 1) || !(e->wmask & (1u << j)))
                continue;  /* no loss against what is held; keys are never width 0;
                              the solver never visits a width not allowed */
            if (lanes) {    /* quantized now, their damage below */
                float *kq = qbuf + (size_t)2 * nj * e->KT * d, *vq = kq + (size_t)e->KT * d;
                if (it->kind != 1)
                    quant_keys_grid(e, kg_on ? &kg : NULL, K, kq, nrow, bits);
                if (it->kind != 0 && bits)
                    quant_values_pre(e, H, it->t0, VQ, vq, nrow, bits, e->cfg.rotate_values,
                                     vg_on ? vgz : NULL, vg_on ? vgr : NULL);
                js[nj++] = j;
                continue;
            }
            double dmg = 0;
            if (it->kind != 1)
                quant_keys_grid(e, kg_on ? &kg : NULL, K, buf, nrow, bits);
            if (it->kind != 0 && bits)
                quant_values_pre(e, H, it->t0, VQ, buf + (size_t)e->KT * d, nrow, bits,
                                 e->cfg.rotate_values, vg_on ? vgz : NULL,
                                 vg_on ? vgr : NULL);
            for (uint32_t r = 0; r < nrow; r++) {
                const double w = wr[r];
                if (it->kind != 1)
                    dmg += key_damage(e, K + (size_t)r * d, buf + (size_t)r * d, q2, w, vdr[r]);
                if (it->kind != 0)
                    /* evicted: its attention mass goes to the others, the
                     * output moves toward their mean */
                    dmg += bits ? val_damage(e, VQ + (size_t)r * d, buf + (size_t)(e->KT + r) * d, w)
                                : val_damage(e, V + (size_t)r * d, vbar, w);
            }
            it->e[j] = (float)dmg;
        }
        /* importance x squared error: the squared errors of every row at
         * every width in one call (independent sums, run side by side),
         * then each width's sum over rows in the order above */
        uint32_t np = 0;
        for (int u = 0; u < nj; u++) {
            const float *kq = qbuf + (size_t)2 * u * e->KT * d, *vq = kq + (size_t)e->KT * d;
            for (uint32_t r = 0; r < nrow; r++) {
                if (it->kind != 1) {
                    pa[np] = K + (size_t)r * d;
                    pb[np++] = kq + (size_t)r * d;
                }
                if (it->kind != 0) {  /* evicted: the output moves toward vbar */
                    int ev0 = !ecg_widths[js[u]];
                    pa[np] = (ev0 ? V : VQ) + (size_t)r * d;
                    pb[np++] = ev0 ? vbar : vq + (size_t)r * d;
                }
            }
        }
        skv_ecq_sqerr(pa, pb, np, d, sqe);
        np = 0;
        for (int u = 0; u < nj; u++) {
            double dmg = 0;
            for (uint32_t r = 0; r < nrow; r++) {
                if (it->kind != 1)
                    dmg += wr[r] * sqe[np++];
                if (it->kind != 0)
                    dmg += wr[r] * sqe[np++];
            }
            it->e[js[u]] = (float)dmg;
        }
    }
    free(pa);
    free(wt);
    free(wk);
    /* solve: start at the lowest allowed width, spend the budget by damage
     * saved per byte */
    int lo = 0;
    while (!(e->wmask & (1u << lo)))
        lo++;
    uint64_t fixed_meta, base = 0, limit = 0;
    uint64_t fp16 = skv_alloc_fp16_bytes(L, KH, T, d);
    double budget = e->fixed ? 0 : e->cfg.alloc.budget * (double)fp16;
    /* With eviction allowed every new token starts evicted and is kept when
     * that saves the most damage per byte.  (Evicting only when the lowest
     * non-zero width cannot fit was tried: KL 0.124 against 0.092 at budget
     * 0.2 on GPL-3, since most tokens then sit at 2 bits.) */
    {
        const int ev = e->evict;
        for (size_t i = 0; i < e->n_it; i++) {
            item *it = &e->it[i];
            int l0 = e->evict && (!ev || it->kind != 1) ? e->lo_nz : lo;  /* keys: never 0 */
            it->sel = (uint8_t)(l0 <= it->cap ? l0 : it->cap);
            if (!(e->wmask & (1u << it->sel)))
                it->sel = (uint8_t)l0;
        }
        /* bytes at the minimum (the widths are written now, the rows are
         * quantized when applied below) */
        for (size_t i = 0; i < e->n_it; i++) {
            const item *it = &e->it[i];
            gh *H = &e->heads[it->unit];
            for (uint32_t t = 0; t < it->m; t++) {
                if (it->kind != 1)
                    H->kb[it->t0 + t] = ecg_widths[it->sel];
                if (it->kind != 0)
                    H->vb[it->t0 + t] = ecg_widths[it->sel];
            }
        }
        base = cache_bytes(e, na, &fixed_meta) + fixed_meta;
        if (ev)     /* every new token evicted: the key groups' share is estimated (>= exact) */
            for (size_t i = 0; i < e->n_it; i++)
                if (e->it[i].kind != 1)
                    base += bytes_of(e, &e->it[i])[e->it[i].sel];
    }
    limit = budget > (double)base ? (uint64_t)budget : base;
    if (!e->fixed && budget < (double)base)
        e->st.n_budget_raised++;
    uint64_t cur = base;
    if (!e->fixed && e->cfg.alloc.budget < 1) {
        if ((rc = solve(e, cur, limit, &e->cross)) < 0) {
            free(buf);
            free(wr);
            free(idx);
            return rc;
        }
    } else if (!e->fixed) {
        for (size_t i = 0; i < e->n_it; i++)
            e->it[i].sel = e->it[i].cap;
    }
    /* apply: a key group after its tokens' values (a value at width 0
     * evicts its token); the items of a group are its key item, then (kv
     * split) its tokens' value items, so each key item waits for the next
     * key item or the end */
    const item *pend = NULL;
    for (size_t i = 0; i < e->n_it; i++) {
        const item *it = &e->it[i];
        if (it->kind == 1) {
            apply_item(e, it, buf, idx, rng);
            continue;
        }
        if (pend)
            apply_item(e, pend, buf, idx, rng);
        pend = it;
    }
    if (pend)
        apply_item(e, pend, buf, idx, rng);
    free(buf);
    free(wr);
    free(idx);
    e->n_alloc = na;
    uint64_t meta;
    uint64_t now = cache_bytes(e, na, &meta) + meta;
    e->st.n_realloc++;
    e->st.alloc_beta_sum += (double)now / (double)fp16;
    e->st.realloc_ns += now_ns() - t_start;
    return 0;
}

int skv_ecg_min_beta(const skv_ec_cfg *cfg, uint32_t n_layers, uint32_t n_heads,
                     uint32_t n_kv_heads, uint32_t head_dim, uint64_t n, double *beta)
{
    (void)n_heads;
    ecg e;
    memset(&e, 0, sizeof e);
    e.base.head_dim = head_dim;
    e.cfg = *cfg;
    skv_qcfg *q = &e.cfg.alloc.qcfg;
    if (cfg->kivi_bits)
        q->v_group = head_dim % 32 == 0 ? 32 : head_dim;
    if (!q->k_group || head_dim % q->k_group)
        q->k_group = head_dim;
    if (!q->v_group || head_dim % q->v_group)
        q->v_group = head_dim;
    e.KT = cfg->k_layout == SKV_EC_KEYS_CHANNEL ? (cfg->key_tokens ? cfg->key_tokens : 32) : 1;
    e.fixed = cfg->alloc.policy == SKV_POLICY_UNIFORM;
    e.sinks = e.fixed ? 0 : cfg->alloc.sinks;
    int lo = -1;
    for (int i = 0; i < ECG_NW; i++)
        if (e.fixed ? ecg_widths[i] == cfg->alloc.uniform_bits
                    : (cfg->alloc.width_mask & (1u << ecg_widths[i])) != 0) {
            e.wmask |= 1u << i;
            if (lo < 0)
                lo = i;
        }
    if (lo < 0 || !n)
        return skv_error(SKV_EINVAL, "no allowed width");
    uint32_t mbk, mbv;
    map_bits(&e, &mbk, &mbv);
    e.PB = cfg->protect_bits && !cfg->kivi_bits ? cfg->protect_bits : 16;
    e.PQ = cfg->param_bits == 8 && !cfg->kivi_bits ? 8 : 16;
    e.RES = cfg->realloc ? cfg->realloc : 1;
    uint64_t s = e.sinks < n ? e.sinks : n, unit = ECG_UNIT_BYTES + s * pbytes(&e), nk = 0;
    for (uint64_t t0 = 0; t0 < n; t0 += e.KT) {
        uint64_t a = t0 > s ? t0 : s, b = t0 + e.KT < n ? t0 + e.KT : n;
        if (a < b) {
            unit += kbytes(&e, (uint32_t)(b - a), ecg_widths[lo]);
            nk++;
        }
    }
    unit += (n - s) * vbytes(&e, 1, ecg_widths[lo]) + (nk * mbk + (n - s) * mbv + 7) / 8;
    if (cfg->alloc.policy == SKV_POLICY_SMARTKV && !SKV_EC_IMP_IS_ATSKV(cfg->imp_mode))
        unit += n;
    if (!e.fixed && cfg->err_model == SKV_EC_ERR_LOGIT)
        unit += 2ull * head_dim;
    uint64_t extra = SKV_EC_IMP_IS_ATSKV(cfg->imp_mode) && cfg->rlv
                         ? rlv_bytes(cfg->rlv, cfg->imp_mode == SKV_EC_IMP_ATSKV_COMPACT,
                                     n_layers, n_kv_heads, n) : 0;
    if (cfg->head_weight > 0 && !e.fixed)
        extra += hw_bytes(n_layers, n_kv_heads);
    *beta = (double)(ECG_HEAD_BYTES + (uint64_t)n_layers * n_kv_heads * unit + extra) /
            (double)skv_alloc_fp16_bytes(n_layers, n_kv_heads, n, head_dim);
    return 0;
}
