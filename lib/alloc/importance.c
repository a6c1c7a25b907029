/* importance.c -- attention replay and per-token importance (see
 * smartkv_importance.h for the modes).
 *
 * The replay is blocked like a small GEMM: a work item is one KV head and a
 * block of query positions for the query heads of its group (R <= 64 rows).
 * Its scores against keys 0..t1-1 are computed with a register-blocked
 * microkernel over key panels (16 keys x head_dim, transposed, so 16 keys
 * load as two 8-float vectors), then each row gets its softmax (max sweep, exp2 + sum
 * sweep) and, four rows at a time while they are still in L2, the weighted
 * column sums that make the importance.  Only an R x t1 score block and
 * O(tokens) accumulators exist per thread, never a T x T matrix.  Threads
 * take work items from a shared counter, most expensive first. */
#define _GNU_SOURCE
#include "smartkv_importance.h"

#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The vector helpers below are always inlined, so the AVX-argument ABI note
 * GCC gives for 32-byte vectors passed by value does not apply. */
#pragma GCC diagnostic ignored "-Wpsabi"

typedef float v8f __attribute__((vector_size(32), aligned(4)));
typedef int32_t v8i __attribute__((vector_size(32), aligned(4)));
typedef double v4d __attribute__((vector_size(32), aligned(8)));

#define SKV_LOG2E 1.4426950408889634
#define SKV_LN2 0.6931471805599453

void skv_imp_defaults(skv_imp_cfg *c)
{
    c->mode = SKV_IMP_EMA;
    c->decay = 0.9;
    c->realloc = 16;
    c->window = 32;
    c->threads = 0;
    c->flags = 0;
}

static const char *const mode_names[] = {NULL, "ema", "cumulative", "normalized", "window",
                                         "oracle"};

int skv_imp_mode_parse(const char *s)
{
    for (int i = SKV_IMP_EMA; i <= SKV_IMP_ORACLE; i++)
        if (!strcmp(s, mode_names[i]))
            return i;
    return skv_error(SKV_EINVAL, "unknown importance mode '%s' (ema, cumulative, normalized, "
                     "window, oracle)", s);
}

const char *skv_imp_mode_name(uint32_t mode)
{
    return mode >= SKV_IMP_EMA && mode <= SKV_IMP_ORACLE ? mode_names[mode] : "unknown";
}

int skv_imp_cfg_check(const skv_imp_cfg *c)
{
    if (c->mode < SKV_IMP_EMA || c->mode > SKV_IMP_ORACLE)
        return skv_error(SKV_EINVAL, "unknown importance mode %u", c->mode);
    if (!(c->decay >= 0 && c->decay < 1))
        return skv_error(SKV_EINVAL, "decay %g outside [0, 1)", c->decay);
    if (c->realloc == 0)
        return skv_error(SKV_EINVAL, "reallocation interval must be at least 1");
    if (c->window == 0)
        return skv_error(SKV_EINVAL, "window must be at least 1");
    if (c->threads > SKV_MAX_THREADS)
        return skv_error(SKV_EINVAL, "threads %u above %u", c->threads, SKV_MAX_THREADS);
    return 0;
}

uint64_t skv_imp_snapshot(const skv_imp_cfg *c, uint64_t T, uint64_t P)
{
    if (P > T)
        P = T;
    uint64_t R = c->realloc ? c->realloc : 1;
    return P + (T - P) / R * R;
}

void skv_imp_query_range(const skv_imp_cfg *c, uint64_t T, uint64_t P, uint64_t *t0,
                         uint64_t *t1)
{
    uint64_t S = skv_imp_snapshot(c, T, P);
    switch (c->mode) {
    case SKV_IMP_EMA: {
        /* Queries older than k add nothing: the replay scales a query's
         * probabilities by its weight (1 - decay) decay^age over G z (z >= 1,
         * the row's sum with its maximum at 2^0) rounded to float32, which
         * is 0 below 2^-150.  (Bounding by the smallest double instead, as
         * before, replayed 7x more queries at decay 0.9, those whose
         * float32 weights were 0 or subnormal, and at 8K tokens took 15%
         * longer than replaying every query.) */
        uint64_t k = S;
        if (c->decay <= 0)
            k = 1;
        else if (c->decay > 0 && c->decay < 1) {
            double kk = ceil((-150 * SKV_LN2 - log(1 - c->decay)) / log(c->decay)) + 1;
            if (kk < (double)S)
                k = (uint64_t)kk;
        }
        *t0 = S - (k < S ? k : S);
        *t1 = S;
        break;
    }
    case SKV_IMP_WINDOW:
        *t0 = S - (c->window < S ? c->window : S);
        *t1 = S;
        break;
    case SKV_IMP_ORACLE:
        *t0 = (P == 0 || P >= T) ? 0 : P;
        *t1 = T;
        break;
    default: /* cumulative, normalized */
        *t0 = 0;
        *t1 = S;
        break;
    }
}

double skv_imp_weight(const skv_imp_cfg *c, uint64_t T, uint64_t P, uint64_t t)
{
    uint64_t t0, t1;
    skv_imp_query_range(c, T, P, &t0, &t1);
    if (t < t0 || t >= t1)
        return 0;
    if (c->mode == SKV_IMP_EMA) {
        uint64_t age = t1 - 1 - t;
        if (age == 0)
            return 1 - c->decay;
        return (1 - c->decay) * pow(c->decay, (double)age);
    }
    return 1;
}

void skv_importance_share_layers(float *imp, uint32_t L, uint32_t H, uint64_t T)
{
    size_t per = (size_t)H * T;
    for (size_t i = 0; i < per; i++) {
        double s = 0;
        for (uint32_t l = 0; l < L; l++)
            s += imp[l * per + i];
        for (uint32_t l = 0; l < L; l++)
            imp[l * per + i] = (float)s;
    }
}

/* ---- the kernel ---- */

typedef struct imp_job {
    const skv_imp_cfg *cfg;
    uint32_t d, G, n_kv, HG, BQ;
    uint64_t T, Tp, qa, qb, nblk, nhg, items;
    const float *q;      /* [n_heads][T][d] */
    const float *kt;     /* [n_kv][Tp/16][d][16] key panels */
    const float *vp;     /* [n_kv][T][dp] (output mode) */
    uint32_t dp;
    double *w;           /* [T] weight per query */
    float qscale;
    int entropy;         /* the caller reads the attention entropy (layer-aware) */
    unsigned long next;  /* shared work counter */
} imp_job;

typedef struct imp_ws {
    imp_job *job;
    float *qb;     /* [Rp][d] */
    float *s;      /* [Rp][Tp] */
    float *col;    /* [Tp] */
    double *coef;  /* [Rp] */
    float *zinv;   /* [Rp] */
    float *out;    /* [Rp][dp] */
    double *acc;   /* [n_kv][T] */
    double *ent;   /* [n_kv] */
    double *ent_n; /* [n_kv] */
} imp_ws;

#define vload(p) (*(const v8f *)(p))
#define vstore(p, v) (*(v8f *)(p) = (v))
/* m ? a : b, lane-wise (m from a vector comparison) */
#define vsel(m, a, b) ((v8f)(((v8i)(a) & (m)) | ((v8i)(b) & ~(m))))

/* 2^x for x <= 0 (x may be -inf): 2^round(x) times a degree-6 polynomial on
 * [-0.5, 0.5] (relative error ~2e-7); 0 below 2^-126. */
static inline __attribute__((always_inline)) v8f vexp2(const v8f *xp)
{
    v8f x = *xp;
    const v8f lo = {-126.f, -126.f, -126.f, -126.f, -126.f, -126.f, -126.f, -126.f};
    v8i under = x < lo;
    x = vsel(under, lo, x);
    v8i n = __builtin_convertvector(x - 0.5f, v8i); /* trunc toward 0 == round for x <= 0 */
    v8f f = x - __builtin_convertvector(n, v8f);
    v8f p = f * 1.5403530393381606e-4f + 1.3333558146428443e-3f;
    p = p * f + 9.6181291076284772e-3f;
    p = p * f + 5.5504108664821580e-2f;
    p = p * f + 2.4022650695910071e-1f;
    p = p * f + 6.9314718055994531e-1f;
    p = p * f + 1.0f;
    v8i e = (n + 127) << 23;
    v8f r = p * (v8f)e;
    return (v8f)((v8i)r & ~under);
}

static inline __attribute__((always_inline)) float hmax8(const v8f *vp)
{
    v8f v = *vp;
    float m = v[0];
    for (int i = 1; i < 8; i++)
        m = v[i] > m ? v[i] : m;
    return m;
}
static inline __attribute__((always_inline)) float hsum8(const v8f *vp)
{
    v8f v = *vp;
    return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
}

/* Scores S[r][j] = qb[r] . K[j] for r < Rp (multiple of 4), j < nkp (multiple
 * of 16).  Keys come in panels of 16: kp[j/16][c][16], so one panel (d*64
 * bytes) stays in L1 while every row quad passes over it. */
static inline __attribute__((always_inline)) void scores(const float *qb, uint32_t Rp,
                                                         uint32_t d, const float *kp,
                                                         uint64_t nkp, float *S, uint64_t ld)
{
    for (uint64_t j = 0; j < nkp; j += 16) {
        const float *panel = kp + j * d;
        for (uint32_t r = 0; r < Rp; r += 4) {
            const float *q0 = qb + (size_t)r * d, *q1 = q0 + d, *q2 = q1 + d, *q3 = q2 + d;
            v8f a00 = {0}, a01 = {0}, a10 = {0}, a11 = {0};
            v8f a20 = {0}, a21 = {0}, a30 = {0}, a31 = {0};
            const float *k = panel;
            for (uint32_t c = 0; c < d; c++, k += 16) {
                v8f k0 = vload(k), k1 = vload(k + 8);
                float b0 = q0[c], b1 = q1[c], b2 = q2[c], b3 = q3[c];
                a00 += b0 * k0;
                a01 += b0 * k1;
                a10 += b1 * k0;
                a11 += b1 * k1;
                a20 += b2 * k0;
                a21 += b2 * k1;
                a30 += b3 * k0;
                a31 += b3 * k1;
            }
            float *s = S + (size_t)r * ld + j;
            vstore(s, a00);
            vstore(s + 8, a01);
            vstore(s + ld, a10);
            vstore(s + ld + 8, a11);
            vstore(s + 2 * ld, a20);
            vstore(s + 2 * ld + 8, a21);
            vstore(s + 3 * ld, a30);
            vstore(s + 3 * ld + 8, a31);
        }
    }
}

/* col[j] + sum over 4 rows of c[r] * P[r][j] for one vector of j (rows
 * ld apart); with `first` (the item's first quad) the sum alone: col needs
 * no zeroing (0 + x is x here: the terms are >= 0). */
static inline __attribute__((always_inline)) v8f track_vec(const float *col, const float *p0,
                                                           uint64_t ld, const float *c,
                                                           uint64_t j, int first)
{
    v8f a = c[0] * vload(p0 + j) + c[1] * vload(p0 + ld + j);
    if (!first)
        a = vload(col + j) + a;
    a += c[2] * vload(p0 + 2 * ld + j) + c[3] * vload(p0 + 3 * ld + j);
    return a;
}

/* col[j] (+)= sum over 4 rows of c[r] * P[r][j], j < n (n multiple of 8). */
static inline __attribute__((always_inline)) void track4(float *col, const float *p0,
                                                         uint64_t ld, const float *c, uint64_t n,
                                                         int first)
{
    for (uint64_t j = 0; j < n; j += 8)
        vstore(col + j, track_vec(col, p0, ld, c, j, first));
}

/* The item's last quad: acc[j] += col[j] (+) its sum, for j < nk, without
 * storing col: the same floats as track4 then adding col to acc. */
static inline __attribute__((always_inline)) void track4_acc(double *acc, const float *col,
                                                             const float *p0, uint64_t ld,
                                                             const float *c, uint64_t nk,
                                                             int first)
{
    /* the rows and col run to a multiple of 16: the last vector is
     * computed whole (the same floats as before) and added up to nk */
    for (uint64_t j = 0; j < nk; j += 8) {
        v8f a = track_vec(col, p0, ld, c, j, first);
        if (j + 8 <= nk) {
            v4d lo = __builtin_convertvector(__builtin_shufflevector(a, a, 0, 1, 2, 3), v4d);
            v4d hi = __builtin_convertvector(__builtin_shufflevector(a, a, 4, 5, 6, 7), v4d);
            *(v4d *)(acc + j) += lo;
            *(v4d *)(acc + j + 4) += hi;
        } else {
            for (uint64_t i = 0; j + i < nk; i++)
                acc[j + i] += a[i];
        }
    }
}

/* The maxima m[r] of 4 score rows over [0, len[r]) (-inf for len 0), in
 * one pass: four rows' loads in flight at once, where the scores pass left
 * the rows in the last-level cache. */
static inline __attribute__((always_inline)) void max4(const float *s0, uint64_t ld,
                                                       const uint64_t *len, float *m)
{
    const v8f ninf = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY,
                      -INFINITY, -INFINITY};
    v8f mv[4] = {ninf, ninf, ninf, ninf};
    const float *s1 = s0 + ld, *s2 = s1 + ld, *s3 = s2 + ld;
    uint64_t lo = len[0];
    for (int r = 1; r < 4; r++)
        lo = len[r] < lo ? len[r] : lo;
    uint64_t j = 0;
    for (; j + 8 <= lo; j += 8) {
        v8f x0 = vload(s0 + j), x1 = vload(s1 + j), x2 = vload(s2 + j), x3 = vload(s3 + j);
        mv[0] = vsel(x0 > mv[0], x0, mv[0]);
        mv[1] = vsel(x1 > mv[1], x1, mv[1]);
        mv[2] = vsel(x2 > mv[2], x2, mv[2]);
        mv[3] = vsel(x3 > mv[3], x3, mv[3]);
    }
    for (int r = 0; r < 4; r++) {
        const float *s = s0 + r * ld;
        uint64_t k = j;
        v8f x = mv[r];
        for (; k + 8 <= len[r]; k += 8) {
            v8f y = vload(s + k);
            x = vsel(y > x, y, x);
        }
        float mr = hmax8(&x);
        for (; k < len[r]; k++)
            mr = s[k] > mr ? s[k] : mr;
        m[r] = mr;
    }
}

/* Tracking riding in an exponential pass: the previous quad's probability
 * rows p0 (ld apart) with weights c, added to col over [ja, jb) (multiples
 * of 8).  The exponentials keep the vector units busy on rows in L2; the
 * tracking's loads and FMAs fit beside them. */
typedef struct track_part {
    float *col;
    const float *p0;
    const float *c;
    uint64_t ld, ja, jb;
    int first; /* the item's first quad: col is written, not added to */
} track_part;

/* Softmax of one row in place over [0, len) (exp2 domain) given its
 * maximum m, zeros in [len, lenp).  Returns the sum; *es gets sum
 * e*(s-m) when es != NULL.  tp (or NULL): tracking done in the same loop,
 * with the sums of track4 in the same order. */
static inline __attribute__((always_inline)) double softmax_row(float *s, uint64_t len,
                                                                uint64_t lenp, float m,
                                                                double *es,
                                                                const track_part *tp)
{
    v8f sum = {0}, esv = {0};
    uint64_t j = 0;
#define EXP8(j)                                                                                   \
    do {                                                                                          \
        v8f x = vload(s + (j)) - m;                                                               \
        v8f e = vexp2(&x);                                                                        \
        vstore(s + (j), e);                                                                       \
        sum += e;                                                                                 \
        if (es)                                                                                   \
            esv += e * x;                                                                         \
    } while (0)
    if (tp) {
        float *col = tp->col;
        const float *p0 = tp->p0, *c = tp->c;
        uint64_t ld = tp->ld, l8 = len & ~(uint64_t)7;
        uint64_t a = tp->ja < l8 ? tp->ja : l8, b = tp->jb < l8 ? tp->jb : l8;
        for (; j < a; j += 8)
            EXP8(j);
        int first = tp->first;
        for (; j < b; j += 8) {
            EXP8(j);
            vstore(col + j, track_vec(col, p0, ld, c, j, first));
        }
        for (uint64_t k = b > tp->ja ? b : tp->ja; k < tp->jb; k += 8)
            vstore(col + k, track_vec(col, p0, ld, c, k, first));
    }
    for (; j + 8 <= len; j += 8)
        EXP8(j);
#undef EXP8
    double tot = hsum8(&sum), tes = hsum8(&esv);
    for (; j < len; j++) {
        float x = s[j] - m;
        float e = exp2f(x);
        s[j] = e;
        tot += e;
        tes += (double)e * x;
    }
    for (; j < lenp; j++)
        s[j] = 0;
    if (es)
        *es = tes;
    return tot;
}

/* out[r][:] = sum_j S[r][j] * V[j][:] for 4 rows r (dp multiple of 8; rows
 * may have different lengths, S is zero beyond each row's length).  Keys go
 * in tiles of 128 so the V tile stays in L1 across the column blocks. */
static inline __attribute__((always_inline)) void pv4(float *out, uint32_t ldo, const float *s0,
                                                      uint64_t ld, uint64_t len,
                                                      const float *vp, uint32_t dp)
{
    const float *s1 = s0 + ld, *s2 = s1 + ld, *s3 = s2 + ld;
    for (uint32_t r = 0; r < 4; r++)
        memset(out + (size_t)r * ldo, 0, dp * sizeof(float));
    for (uint64_t jt = 0; jt < len; jt += 128) {
        uint64_t je = jt + 128 < len ? jt + 128 : len;
        uint32_t c0 = 0;
        for (; c0 + 16 <= dp; c0 += 16) {
            float *o0 = out + c0, *o1 = o0 + ldo, *o2 = o1 + ldo, *o3 = o2 + ldo;
            v8f a00 = vload(o0), a01 = vload(o0 + 8), a10 = vload(o1), a11 = vload(o1 + 8);
            v8f a20 = vload(o2), a21 = vload(o2 + 8), a30 = vload(o3), a31 = vload(o3 + 8);
            const float *v = vp + jt * dp + c0;
            for (uint64_t j = jt; j < je; j++, v += dp) {
                v8f v0 = vload(v), v1 = vload(v + 8);
                float e0 = s0[j], e1 = s1[j], e2 = s2[j], e3 = s3[j];
                a00 += e0 * v0;
                a01 += e0 * v1;
                a10 += e1 * v0;
                a11 += e1 * v1;
                a20 += e2 * v0;
                a21 += e2 * v1;
                a30 += e3 * v0;
                a31 += e3 * v1;
            }
            vstore(o0, a00);
            vstore(o0 + 8, a01);
            vstore(o1, a10);
            vstore(o1 + 8, a11);
            vstore(o2, a20);
            vstore(o2 + 8, a21);
            vstore(o3, a30);
            vstore(o3 + 8, a31);
        }
        if (c0 < dp) {
            v8f a0 = vload(out + c0), a1 = vload(out + ldo + c0);
            v8f a2 = vload(out + 2 * ldo + c0), a3 = vload(out + 3 * ldo + c0);
            const float *v = vp + jt * dp + c0;
            for (uint64_t j = jt; j < je; j++, v += dp) {
                v8f v0 = vload(v);
                a0 += s0[j] * v0;
                a1 += s1[j] * v0;
                a2 += s2[j] * v0;
                a3 += s3[j] * v0;
            }
            vstore(out + c0, a0);
            vstore(out + ldo + c0, a1);
            vstore(out + 2 * ldo + c0, a2);
            vstore(out + 3 * ldo + c0, a3);
        }
    }
}

static inline __attribute__((always_inline)) void run_item(imp_ws *ws, uint64_t item)
{
    imp_job *J = ws->job;
    const uint32_t d = J->d;
    uint64_t per_blk = (uint64_t)J->n_kv * J->nhg;
    uint64_t blk = J->nblk - 1 - item / per_blk;
    uint32_t h = (uint32_t)(item % per_blk / J->nhg);
    uint32_t g0 = (uint32_t)(item % J->nhg) * J->HG;
    uint32_t ng = J->G - g0 < J->HG ? J->G - g0 : J->HG;
    uint64_t ta = J->qa + blk * J->BQ;
    uint64_t tb = ta + J->BQ < J->qb ? ta + J->BQ : J->qb;
    uint32_t nb = (uint32_t)(tb - ta);
    uint32_t R = ng * nb, Rp = (R + 3) & ~3u;
    uint64_t nk = tb, nkp = (nk + 15) & ~(uint64_t)15;
    uint64_t ld = J->Tp;
    int track = !(J->cfg->flags & SKV_IMP_F_NO_TRACK), ent = track && J->entropy;

    /* gather the scaled queries; pad rows are zero */
    for (uint32_t gi = 0; gi < ng; gi++) {
        const float *src = J->q + (((size_t)h * J->G + g0 + gi) * J->T + ta) * d;
        for (uint32_t i = 0; i < nb; i++)
            for (uint32_t c = 0; c < d; c++)
                ws->qb[((size_t)gi * nb + i) * d + c] = src[(size_t)i * d + c] * J->qscale;
    }
    memset(ws->qb + (size_t)R * d, 0, (size_t)(Rp - R) * d * sizeof(float));

    scores(ws->qb, Rp, d, J->kt + (size_t)h * d * J->Tp, nkp, ws->s, ld);

    float tc[4] = {0, 0, 0, 0}; /* the previous quad's tracking weights */
    const uint64_t q8 = (nkp / 8 + 3) / 4 * 8; /* a quarter of the columns, whole vectors */
    for (uint32_t r0 = 0; r0 < Rp; r0 += 4) {
        uint64_t rl[4] = {0, 0, 0, 0};
        float m[4];
        for (uint32_t r = r0; r < r0 + 4; r++)
            rl[r - r0] = r < R ? ta + r % nb + 1 : 0;
        max4(ws->s + (size_t)r0 * ld, ld, rl, m);
        /* the previous quad's tracking rides in this quad's exponential
         * passes, a quarter of the columns in each */
        track_part tp = {ws->col, ws->s + (size_t)(r0 ? r0 - 4 : 0) * ld, tc, ld, 0, 0, r0 == 4};
        for (uint32_t r = r0; r < r0 + 4; r++) {
            float *s = ws->s + (size_t)r * ld;
            tp.ja = (r - r0) * q8 < nkp ? (r - r0) * q8 : nkp;
            tp.jb = tp.ja + q8 < nkp ? tp.ja + q8 : nkp;
            if (r >= R) {
                if (track && r0)
                    track4(tp.col + tp.ja, tp.p0 + tp.ja, ld, tc, tp.jb - tp.ja, tp.first);
                memset(s, 0, nkp * sizeof(float));
                ws->coef[r] = 0;
                ws->zinv[r] = 0;
                continue;
            }
            uint64_t t = ta + r % nb;
            double es = 0;
            double z = softmax_row(s, t + 1, nkp, m[r - r0], ent ? &es : NULL,
                                   track && r0 ? &tp : NULL);
            ws->coef[r] = J->w[t] / ((double)J->G * z);
            if (ent) {
                /* entropy in nats: ln Z - ln2 * sum p (s - m), with Z in 2^ units */
                ws->ent[h] += log(z) - SKV_LN2 * es / z;
                ws->ent_n[h] += 1;
            }
            ws->zinv[r] = (float)(1.0 / z);
        }
        if (J->cfg->flags & SKV_IMP_F_OUTPUT) {
            /* attention outputs for the benchmark baseline (then discarded) */
            float *o = ws->out + (size_t)r0 * J->dp;
            uint64_t len = 0;
            for (uint32_t r = r0; r < r0 + 4 && r < R; r++)
                if (ta + r % nb + 1 > len)
                    len = ta + r % nb + 1;
            pv4(o, J->dp, ws->s + (size_t)r0 * ld, ld, len, J->vp + (size_t)h * J->T * J->dp,
                J->dp);
            for (uint32_t r = r0; r < r0 + 4; r++)
                for (uint32_t c = 0; c < J->dp; c++)
                    o[(size_t)(r - r0) * J->dp + c] *= ws->zinv[r];
        }
        for (uint32_t r = 0; r < 4; r++)
            tc[r] = (float)ws->coef[r0 + r];
    }
    if (track) {
        /* the last quad, straight into the thread's sums */
        track4_acc(ws->acc + (size_t)h * J->T, ws->col, ws->s + (size_t)(Rp - 4) * ld, ld, tc,
                   nk, Rp == 4);
    }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target("avx2,fma"))) static void run_item_avx2(imp_ws *ws, uint64_t item)
{
    run_item(ws, item);
}
#define SKV_HAVE_AVX2_PATH 1
#endif
static void run_item_generic(imp_ws *ws, uint64_t item)
{
    run_item(ws, item);
}

static void *worker(void *arg)
{
    imp_ws *ws = arg;
    imp_job *J = ws->job;
    void (*fn)(imp_ws *, uint64_t) = run_item_generic;
#ifdef SKV_HAVE_AVX2_PATH
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        fn = run_item_avx2;
#endif
    for (;;) {
        unsigned long i = __atomic_fetch_add(&J->next, 1, __ATOMIC_RELAXED);
        if (i >= J->items)
            break;
        fn(ws, i);
    }
    return NULL;
}

static void ws_free(imp_ws *ws)
{
    free(ws->qb);
    free(ws->s);
    free(ws->col);
    free(ws->coef);
    free(ws->zinv);
    free(ws->out);
    free(ws->acc);
    free(ws->ent);
    free(ws->ent_n);
}

static uint32_t online_cpus(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > (long)SKV_MAX_THREADS ? SKV_MAX_THREADS : (uint32_t)n;
}

int skv_importance_layer(const skv_imp_cfg *c, const skv_trace_hdr *h, const skv_layer *L,
                         float *imp, float *entropy)
{
    int rc = skv_imp_cfg_check(c);
    if (rc < 0)
        return rc;
    if ((rc = skv_trace_hdr_check(h)) < 0)
        return rc;
    const uint32_t d = h->head_dim, n_kv = h->n_kv_heads, G = h->n_heads / h->n_kv_heads;
    const uint64_t T = h->n_tokens, Tp = (T + 15) & ~(uint64_t)15;
    imp_job J;
    memset(&J, 0, sizeof J);
    J.cfg = c;
    J.d = d;
    J.G = G;
    J.n_kv = n_kv;
    J.T = T;
    J.Tp = Tp;
    J.q = L->q;
    J.qscale = (float)(SKV_LOG2E / sqrt((double)d));
    J.entropy = entropy != NULL;
    skv_imp_query_range(c, T, h->n_prefill, &J.qa, &J.qb);

    /* rows per item: at most 64, and a score block of at most ~64 MiB */
    uint64_t cap = ((uint64_t)64 << 20) / (4 * Tp);
    if (cap > 64)
        cap = 64;
    if (cap < 1)
        cap = 1;
    J.HG = G < cap ? G : (uint32_t)cap;
    J.BQ = (uint32_t)(cap / J.HG);
    if (J.BQ < 1)
        J.BQ = 1;
    J.nhg = (G + J.HG - 1) / J.HG;
    J.nblk = J.qb > J.qa ? (J.qb - J.qa + J.BQ - 1) / J.BQ : 0;
    J.items = J.nblk * n_kv * J.nhg;
    uint32_t Rmax = J.HG * J.BQ, Rp = (Rmax + 3) & ~3u;
    J.dp = (d + 7) & ~7u;

    uint32_t nt = c->threads ? c->threads : online_cpus();
    if (nt > J.items)
        nt = J.items ? (uint32_t)J.items : 1;

    size_t nkt, nacc;
    float *kt = NULL, *vp = NULL;
    imp_ws *ws = NULL;
    pthread_t *tid = NULL;
    rc = SKV_ENOMEM;
    if (skv_mul_sizes(&nkt, 3, (size_t)n_kv, (size_t)d, (size_t)Tp) ||
        skv_mul_sizes(&nacc, 2, (size_t)n_kv, (size_t)T)) {
        rc = skv_error(SKV_ELIMIT, "importance: layer too large");
        goto out;
    }
    J.w = skv_calloc((size_t)T, sizeof(double));
    kt = skv_calloc(nkt, sizeof(float));
    ws = skv_calloc(nt, sizeof *ws);
    tid = skv_calloc(nt, sizeof *tid);
    if (!J.w || !kt || !ws || !tid)
        goto out;
    for (uint64_t t = J.qa; t < J.qb; t++)
        J.w[t] = skv_imp_weight(c, T, h->n_prefill, t);
    /* keys in panels of 16 per KV head, only those a replayed query sees */
    for (uint32_t hh = 0; hh < n_kv; hh++) {
        const float *k = L->k + (size_t)hh * T * d;
        float *dst = kt + (size_t)hh * d * Tp;
        for (uint64_t j = 0; j < J.qb; j++)
            for (uint32_t cc = 0; cc < d; cc++)
                dst[(j & ~(uint64_t)15) * d + (size_t)cc * 16 + (j & 15)] = k[(size_t)j * d + cc];
    }
    J.kt = kt;
    if (c->flags & SKV_IMP_F_OUTPUT) {
        vp = skv_calloc((size_t)n_kv * T, (size_t)J.dp * sizeof(float));
        if (!vp)
            goto out;
        for (uint32_t hh = 0; hh < n_kv; hh++)
            for (uint64_t j = 0; j < T; j++)
                memcpy(vp + ((size_t)hh * T + j) * J.dp, L->v + ((size_t)hh * T + j) * d,
                       d * sizeof(float));
        J.vp = vp;
    }
    for (uint32_t i = 0; i < nt; i++) {
        ws[i].job = &J;
        ws[i].qb = skv_calloc((size_t)Rp * d, sizeof(float));
        ws[i].s = skv_malloc((size_t)Rp * Tp * sizeof(float));
        ws[i].col = skv_malloc(Tp * sizeof(float));
        ws[i].coef = skv_calloc(Rp, sizeof(double));
        ws[i].zinv = skv_calloc(Rp, sizeof(float));
        ws[i].out = skv_calloc((size_t)Rp * J.dp, sizeof(float));
        ws[i].acc = skv_calloc(nacc, sizeof(double));
        ws[i].ent = skv_calloc(n_kv, sizeof(double));
        ws[i].ent_n = skv_calloc(n_kv, sizeof(double));
        if (!ws[i].qb || !ws[i].s || !ws[i].col || !ws[i].coef || !ws[i].zinv || !ws[i].out || !ws[i].acc ||
            !ws[i].ent || !ws[i].ent_n) {
            /* under a memory cap, fewer threads rather than none: each
             * holds a row block's scores over the layer, so on a 16-core
             * machine the scratch alone passed a cap that 2 threads meet */
            if (i == 0 || !skv_get_max_mem())
                goto out;
            ws_free(&ws[i]);
            memset(&ws[i], 0, sizeof ws[i]);
            nt = i;
            skv_error_clear();
            break;
        }
    }
    uint32_t started = 1;
    for (uint32_t i = 1; i < nt; i++) {
        if (pthread_create(&tid[i], NULL, worker, &ws[i]) != 0)
            break; /* fewer threads: the rest of the work is done by those running */
        started++;
    }
    worker(&ws[0]);
    for (uint32_t i = 1; i < started; i++)
        pthread_join(tid[i], NULL);

    /* reduce */
    uint64_t S = skv_imp_snapshot(c, T, h->n_prefill);
    for (uint32_t hh = 0; hh < n_kv; hh++) {
        double en = 0, enn = 0;
        for (uint32_t i = 0; i < nt; i++) {
            en += ws[i].ent[hh];
            enn += ws[i].ent_n[hh];
        }
        if (entropy)
            entropy[hh] = enn > 0 ? (float)(en / enn) : 0.0f;
        for (uint64_t j = 0; j < T; j++) {
            double s = 0;
            for (uint32_t i = 0; i < nt; i++)
                s += ws[i].acc[(size_t)hh * T + j];
            if (c->mode == SKV_IMP_NORMALIZED)
                s = j < S ? s / (double)(S - j) : 0;
            if (!isfinite(s) || (entropy && !isfinite(entropy[hh]))) {
                rc = skv_error(SKV_EFORMAT, "layer %u kv head %u token %llu: non-finite "
                               "attention (NaN or Inf in the queries or keys)", L->index, hh,
                               (unsigned long long)j);
                goto out;
            }
            imp[(size_t)hh * T + j] = (float)s;
        }
    }
    rc = 0;
out:
    if (ws)
        for (uint32_t i = 0; i < nt; i++)
            ws_free(&ws[i]);
    free(ws);
    free(tid);
    free(kt);
    free(vp);
    free(J.w);
    return rc;
}
