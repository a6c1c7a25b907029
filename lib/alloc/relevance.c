/* relevance.c -- ATSKV's learned token relevance: features, logistic
 * regression by Newton's method, AUC, the rlvw weights chunk, and training
 * and held-out evaluation on recorded traces (smartkv_relevance.h). */
#include "smartkv_relevance.h"

#include "smartkv_error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const feature_names[SKV_RLV_NFEAT] = {
    "ema_mean", "ema_max", "log_ema", "log_mean", "log_acc_max", "last_hit", "hit_rate",
    "entropy", "rel_pos", "log_age", "inv_age", "sink", "newline", "punct", "log_freq"};

const char *skv_rlv_feature_name(uint32_t f)
{
    return f < SKV_RLV_NFEAT ? feature_names[f] : "?";
}

uint8_t skv_rlv_token_class(const char *bytes, int n)
{
    uint8_t c = 0;
    int punct = 0, other = 0;
    for (int i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)bytes[i];
        if (ch == '\n' || ch == '\r')
            c |= SKV_RLV_TOK_NEWLINE;
        else if ((ch >= '!' && ch <= '/') || (ch >= ':' && ch <= '@') || (ch >= '[' && ch <= '`') ||
                 (ch >= '{' && ch <= '~'))
            punct = 1;
        else if (ch != ' ' && ch != '\t')
            other = 1;
    }
    if (punct && !other)
        c |= SKV_RLV_TOK_PUNCT;
    return c;
}

/* ---------------- online tracking ---------------- */

void skv_rlv_track_step(skv_rlv_tok *tok, uint64_t s, const float *mean, const float *max)
{
    memset(&tok[s], 0, sizeof tok[s]);
    tok[s].last_hit = (uint32_t)s;
    const float d = SKV_RLV_DECAY, hit = 2.0f / (float)(s + 1);
    for (uint64_t i = 0; i <= s; i++) {
        skv_rlv_tok *t = &tok[i];
        float p = mean[i], m = max[i];
        t->ema_mean = d * t->ema_mean + (1.0f - d) * p;
        t->ema_max = d * t->ema_max + (1.0f - d) * m;
        t->acc_mean += p;
        t->acc_max += m;
        if (p > 0.0f)
            t->plogp += p * logf(p);
        if (m >= hit) {
            t->last_hit = (uint32_t)s;
            t->hits++;
        }
    }
}

/* The attention features from a token's (or a group's mean token's)
 * statistics: acc the summed group-mean attention over `seen` queries, plogp
 * its sum of p log p, hits and last_hit as in skv_rlv_tok. */
static void attention_features(double ema_mean, double ema_max, double acc, double acc_max,
                               double plogp, double hits, uint64_t last_hit, double seen,
                               uint64_t t, double *x)
{
    x[SKV_RLV_EMA_MEAN] = ema_mean;
    x[SKV_RLV_EMA_MAX] = ema_max;
    x[SKV_RLV_LOG_EMA] = log(ema_mean + 1e-6);
    x[SKV_RLV_LOG_MEAN] = log(acc / (seen > 0 ? seen : 1) + 1e-6);
    x[SKV_RLV_LOG_ACC_MAX] = log(acc_max + 1e-6);
    x[SKV_RLV_LAST_HIT] = log1p((double)(t - 1 >= last_hit ? t - 1 - last_hit : 0));
    x[SKV_RLV_HIT_RATE] = seen > 0 ? hits / seen : 0;
    /* column entropy: H = log S - (sum p log p) / S over the queries seen */
    double H = 0;
    if (acc > 1e-12 && seen > 1) {
        H = (log(acc) - plogp / acc) / log(seen);
        H = H < 0 ? 0 : H > 1 ? 1 : H;
    }
    x[SKV_RLV_ENTROPY] = H;
}

static void position_features(uint64_t i, uint64_t t, uint8_t cls, uint32_t count, double *x)
{
    double age = (double)(t - i);
    x[SKV_RLV_REL_POS] = t ? (double)i / (double)t : 0;
    x[SKV_RLV_LOG_AGE] = log1p(age);
    x[SKV_RLV_INV_AGE] = 1.0 / (1.0 + age);
    x[SKV_RLV_SINK] = i < 4;
    x[SKV_RLV_NEWLINE] = (cls & SKV_RLV_TOK_NEWLINE) != 0;
    x[SKV_RLV_PUNCT] = (cls & SKV_RLV_TOK_PUNCT) != 0;
    x[SKV_RLV_LOG_FREQ] = log1p((double)count);
}

void skv_rlv_features(const skv_rlv_tok *tk, uint64_t i, uint64_t t, uint8_t cls, uint32_t count,
                      double *x)
{
    /* queries i..t-1 saw token i */
    attention_features(tk->ema_mean, tk->ema_max, tk->acc_mean, tk->acc_max, tk->plogp, tk->hits,
                       tk->last_hit, (double)(t - i), t, x);
    position_features(i, t, cls, count, x);
}

/* ---------------- compact tracking ---------------- */

double skv_rlv_log8(double x)
{
    if (!(x > 0))
        return 0;
    double c = nearbyint(16.0 * log2(x > 1 ? 1 : x)) + 255;
    return c < 1 ? 0 : exp2((c - 255) / 16.0);
}

void skv_rlv_track_step_compact(skv_rlv_tok *grp, float *ema, uint64_t s, const float *mean,
                                const float *max)
{
    const uint64_t G = SKV_RLV_GROUP;
    if (s % G == 0)
        memset(&grp[s / G], 0, sizeof grp[0]);
    ema[s] = 0;
    grp[s / G].last_hit = (uint32_t)s;   /* the group's latest token: its own position */
    const float d = SKV_RLV_DECAY, hit = 2.0f / (float)(s + 1);
    for (uint64_t g0 = 0; g0 <= s; g0 += G) {
        skv_rlv_tok *t = &grp[g0 / G];
        uint64_t end = g0 + G <= s + 1 ? g0 + G : s + 1;
        float sm = 0, sx = 0, pl = 0;
        uint32_t nh = 0;
        for (uint64_t i = g0; i < end; i++) {
            float p = mean[i], m = max[i];
            ema[i] = d * ema[i] + (1.0f - d) * p;
            sm += p;
            sx += m;
            if (p > 0.0f)
                pl += p * logf(p);
            nh += m >= hit;
        }
        /* sums over the group's tokens: the EMAs are linear, so the sum of
         * the tokens' EMAs is the EMA of the sums */
        t->ema_mean = d * t->ema_mean + (1.0f - d) * sm;
        t->ema_max = d * t->ema_max + (1.0f - d) * sx;
        t->acc_mean += sm;
        t->acc_max += sx;
        t->plogp += pl;
        t->hits += nh;
        if (nh)
            t->last_hit = (uint32_t)s;
    }
}

void skv_rlv_features_compact(const skv_rlv_tok *grp, const float *ema, uint64_t i, uint64_t t,
                              uint8_t cls, uint32_t count, double *x)
{
    const uint64_t G = SKV_RLV_GROUP, g0 = i / G * G, end = g0 + G < t ? g0 + G : t;
    const skv_rlv_tok *g = &grp[i / G];
    const double n = (double)(end > g0 ? end - g0 : 1);
    /* queries seen, summed over the group's tokens: sum of (t - j), j in [g0, end) */
    const double seen = n * (double)t - 0.5 * n * (double)(g0 + end - 1);
    double e = skv_rlv_log8(ema[i]);
    /* the max-over-heads EMA: the token's EMA times its group's max/mean ratio */
    double emx = g->ema_mean > 0 ? e * g->ema_max / g->ema_mean : 0;
    /* the rest: the group's mean token (sums / n, queries seen / n) */
    attention_features(e, emx, g->acc_mean / n, g->acc_max / n, g->plogp / n, g->hits / n,
                       g->last_hit, seen / n, t, x);
    position_features(i, t, cls, count, x);
}

uint64_t skv_rlv_compact_bytes(uint64_t T)
{
    return T + (T + SKV_RLV_GROUP - 1) / SKV_RLV_GROUP * sizeof(skv_rlv_tok);
}

/* ---------------- weights ---------------- */

skv_rlv_model *skv_rlv_model_new(uint32_t n_layers, uint32_t n_embd)
{
    if (!n_layers || n_layers > SKV_MAX_LAYERS || n_embd > SKV_MAX_TOKENS) {
        skv_error(SKV_EINVAL, "relevance model: %u layers, n_embd %u out of range", n_layers,
                  n_embd);
        return NULL;
    }
    skv_rlv_model *m = skv_calloc(1, sizeof *m);
    if (!m)
        return NULL;
    m->n_layers = n_layers;
    m->n_embd = n_embd;
    if (!(m->layers = skv_calloc(n_layers, sizeof *m->layers))) {
        free(m);
        return NULL;
    }
    for (uint32_t l = 0; l < n_layers; l++)
        m->layers[l].beta = 1.0f;
    if (n_embd)
        for (uint32_t l = 0; l < n_layers; l++)
            if (!(m->layers[l].wh = skv_calloc(n_embd, sizeof(float)))) {
                skv_rlv_model_free(m);
                return NULL;
            }
    return m;
}

void skv_rlv_model_free(skv_rlv_model *m)
{
    if (!m)
        return;
    if (m->layers)
        for (uint32_t l = 0; l < m->n_layers; l++)
            free(m->layers[l].wh);
    free(m->layers);
    free(m);
}

double skv_rlv_hidden_term(const skv_rlv_model *m, uint32_t layer, const float *h)
{
    if (!m->n_embd || !h)
        return 0;
    const float *w = m->layers[layer].wh;
    double s = 0;
    for (uint32_t e = 0; e < m->n_embd; e++)
        s += (double)w[e] * h[e];
    return s;
}

int skv_rlv_hidden_terms(const skv_rlv_model *m, uint32_t layer, const float *x, uint32_t n,
                         uint32_t n_embd, float *out)
{
    if (m->n_embd && m->n_embd != n_embd)
        return skv_error(SKV_EINVAL, "the relevance weights expect hidden states of %u, the "
                         "model has %u", m->n_embd, n_embd);
    for (uint32_t i = 0; i < n; i++)
        out[i] = (float)skv_rlv_hidden_term(m, layer, x + (size_t)i * n_embd);
    return 0;
}

double skv_rlv_logit(const skv_rlv_model *m, uint32_t layer, const double *x, double hterm)
{
    const skv_rlv_layer *L = &m->layers[layer];
    double z = L->bias + hterm;
    for (int f = 0; f < SKV_RLV_NFEAT; f++)
        z += L->w[f] * x[f];
    return z;
}

#define RLVW_FIXED 24

int skv_rlv_write(skv_stream *s, const skv_rlv_model *m)
{
    /* the fixed part, the weights, then beta_l (4 bytes: absent in older files) */
    size_t n = RLVW_FIXED + 4 * ((size_t)SKV_RLV_NFEAT + m->n_embd) + 4;
    uint8_t *p = skv_malloc(n);
    if (!p)
        return SKV_ENOMEM;
    int rc = 0;
    for (uint32_t l = 0; l < m->n_layers && rc == 0; l++) {
        const skv_rlv_layer *L = &m->layers[l];
        memset(p, 0, RLVW_FIXED);
        skv_put32(p, l);
        skv_put32(p + 4, m->n_layers);
        skv_put32(p + 8, SKV_RLV_NFEAT);
        skv_put32(p + 12, m->n_embd);
        uint64_t b;
        memcpy(&b, &L->bias, 8);
        skv_put64(p + 16, b);
        for (uint32_t f = 0; f < SKV_RLV_NFEAT; f++) {
            uint32_t u;
            memcpy(&u, &L->w[f], 4);
            skv_put32(p + RLVW_FIXED + 4 * f, u);
        }
        for (uint32_t e = 0; e < m->n_embd; e++) {
            uint32_t u;
            memcpy(&u, &L->wh[e], 4);
            skv_put32(p + RLVW_FIXED + 4 * ((size_t)SKV_RLV_NFEAT + e), u);
        }
        uint32_t ub;
        memcpy(&ub, &L->beta, 4);
        skv_put32(p + n - 4, ub);
        rc = skv_write(s, SKV_T_RLVW, p, n);
    }
    free(p);
    return rc;
}

static float get_f32(const uint8_t *p)
{
    uint32_t u = skv_get32(p);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

int skv_rlv_load(const char *path, skv_rlv_model **out)
{
    *out = NULL;
    skv_stream *s = skv_open_read(path);
    if (!s)
        return SKV_EIO;
    skv_rlv_model *m = NULL;
    uint8_t *seen = NULL;
    skv_chunk c;
    int rc;
    while ((rc = skv_read(s, &c)) > 0) {
        if (!skv_chunk_is(&c, SKV_T_RLVW))
            continue;
        const uint8_t *p = c.data;
        if (c.raw_size < RLVW_FIXED) {
            rc = skv_error(SKV_EFORMAT, "rlvw chunk at byte %llu too short",
                           (unsigned long long)c.offset);
            break;
        }
        uint32_t l = skv_get32(p), nl = skv_get32(p + 4), nf = skv_get32(p + 8),
                 ne = skv_get32(p + 12);
        if (!m) {
            if (nf != SKV_RLV_NFEAT) {
                rc = skv_error(SKV_EFORMAT, "rlvw chunk at byte %llu: %u features, this version "
                               "knows %u", (unsigned long long)c.offset, nf, SKV_RLV_NFEAT);
                break;
            }
            if (!(m = skv_rlv_model_new(nl, ne)) || !(seen = skv_calloc(nl, 1))) {
                rc = SKV_ENOMEM;
                break;
            }
        }
        uint64_t body = RLVW_FIXED + 4 * ((uint64_t)nf + ne);
        if (nl != m->n_layers || nf != SKV_RLV_NFEAT || ne != m->n_embd || l >= nl || seen[l] ||
            (c.raw_size != body && c.raw_size != body + 4)) {
            rc = skv_error(SKV_EFORMAT, "rlvw chunk at byte %llu: layer %u of %u, %u features, "
                           "n_embd %u, %llu bytes: inconsistent with the first (%u layers, "
                           "n_embd %u) or repeated", (unsigned long long)c.offset, l, nl, nf, ne,
                           (unsigned long long)c.raw_size, m->n_layers, m->n_embd);
            break;
        }
        seen[l] = 1;
        skv_rlv_layer *L = &m->layers[l];
        uint64_t b = skv_get64(p + 16);
        memcpy(&L->bias, &b, 8);
        int finite = isfinite(L->bias);
        for (uint32_t f = 0; f < nf; f++)
            finite &= isfinite(L->w[f] = get_f32(p + RLVW_FIXED + 4 * f));
        for (uint32_t e = 0; e < ne; e++)
            finite &= isfinite(L->wh[e] = get_f32(p + RLVW_FIXED + 4 * ((size_t)nf + e)));
        L->beta = c.raw_size == body + 4 ? get_f32(p + body) : 1.0f;
        if (!(L->beta > 0) || !isfinite(L->beta)) {
            rc = skv_error(SKV_EFORMAT, "rlvw chunk at byte %llu: beta %g is not a positive "
                           "number", (unsigned long long)c.offset, (double)L->beta);
            break;
        }
        if (!finite) {
            rc = skv_error(SKV_EFORMAT, "rlvw chunk at byte %llu: a weight is not finite",
                           (unsigned long long)c.offset);
            break;
        }
    }
    if (rc == 0 && !m)
        rc = skv_error(SKV_EFORMAT, "no relevance weights (rlvw chunks) in the stream");
    for (uint32_t l = 0; rc == 0 && l < m->n_layers; l++)
        if (!seen[l])
            rc = skv_error(SKV_EFORMAT, "rlvw: layer %u of %u is missing", l, m->n_layers);
    skv_close(s);
    free(seen);
    if (rc < 0) {
        skv_rlv_model_free(m);
        return rc;
    }
    *out = m;
    return 0;
}

/* ---------------- the selection ---------------- */

static int cmp_rank_desc(const void *x, const void *y)
{
    const skv_rlv_rank *p = x, *q = y;
    if (p->r != q->r)
        return p->r < q->r ? 1 : -1;
    return (p->i > q->i) - (p->i < q->i);
}

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

uint64_t skv_rlv_select(const double *r, uint64_t t, double q, double beta, uint64_t K,
                        uint64_t sinks, uint64_t recent, skv_rlv_rank *rk, double *srt,
                        uint8_t *keep)
{
    if (!t)
        return 0;
    for (uint64_t i = 0; i < t; i++) {
        srt[i] = r[i];
        rk[i] = (skv_rlv_rank){.r = r[i], .i = i};
    }
    qsort(srt, t, sizeof *srt, cmp_dbl);
    double tau = beta * srt[(uint64_t)floor(q * (double)(t - 1) + 0.5)];
    uint64_t above = 0, nk = 0;
    for (uint64_t i = 0; i < t; i++) {
        above += r[i] > tau;
        keep[i] = i < sinks || t - i <= recent;
        nk += keep[i];
    }
    qsort(rk, t, sizeof *rk, cmp_rank_desc);
    for (uint64_t m = 0; m < t && nk < K; m++)
        if (!keep[rk[m].i] && rk[m].r > tau) {
            keep[rk[m].i] = 1;
            nk++;
        }
    return above;
}

/* ---------------- the threshold scale beta_l ---------------- */

double skv_rlv_sel_recall(const skv_rlv_sel *S, double target, double beta)
{
    uint64_t tmax = 0;
    for (uint32_t j = 0; j < S->n_steps; j++)
        tmax = S->t[j] > tmax ? S->t[j] : tmax;
    skv_rlv_rank *rk = skv_malloc((size_t)tmax * sizeof *rk + 1);
    double *srt = skv_malloc((size_t)tmax * sizeof *srt + 1);
    uint8_t *keep = skv_malloc((size_t)tmax + 1);
    if (!rk || !srt || !keep) {
        free(rk);
        free(srt);
        free(keep);
        return NAN;
    }
    double q = 1 - target < 0 ? 0 : 1 - target, rec = 0;
    uint64_t n = 0;
    for (uint32_t j = 0; j < S->n_steps; j++) {
        const uint64_t t = S->t[j], K = (uint64_t)floor(target * (double)t);
        if (!t)
            continue;
        double frac = 0;
        for (uint32_t k = 0; k < S->n_heads; k++) {
            const uint64_t o = S->off[(size_t)k * S->n_steps + j];
            const float *f = S->fut + o;
            uint64_t above = skv_rlv_select(S->r + o, t, q, beta, K, SKV_RLV_BETA_SINKS,
                                            SKV_RLV_BETA_RECENT, rk, srt, keep);
            frac += (double)above / (double)t;
            double all = 0, got = 0;
            for (uint64_t i = 0; i < t; i++) {
                all += f[i];
                got += keep[i] ? f[i] : 0;
            }
            rec += all > 0 ? got / all : 1;
            n++;
        }
        /* the controller of skv-eval -p atskv (gain 0.5 per selection) */
        q += 0.5 * (frac / S->n_heads - (double)K / (double)t);
        q = q < 0 ? 0 : q > 1 ? 1 : q;
    }
    free(rk);
    free(srt);
    free(keep);
    return n ? rec / (double)n : 0;
}

double skv_rlv_fit_beta(const skv_rlv_sel *S, double target, double *recall)
{
    double rec[17], best = -INFINITY;
    for (int k = -8; k <= 8; k++) {
        rec[k + 8] = skv_rlv_sel_recall(S, target, exp2(k / 4.0));
        if (rec[k + 8] != rec[k + 8])
            return NAN;
        best = rec[k + 8] > best ? rec[k + 8] : best;
    }
    /* nearest 1 among the best: the default unless the data say otherwise */
    for (int d = 0; d <= 8; d++)
        for (int k = -d; k <= d; k += d ? 2 * d : 1)
            if (rec[k + 8] >= best - 1e-9) {
                if (recall)
                    *recall = rec[k + 8];
                return exp2(k / 4.0);
            }
    return 1;
}

/* ---------------- logistic regression ---------------- */

static double softplus(double z) { return z > 0 ? z + log1p(exp(-z)) : log1p(exp(z)); }
static double sigmoid(double z)
{
    if (z >= 0)
        return 1.0 / (1.0 + exp(-z));
    double e = exp(z);
    return e / (1.0 + e);
}

/* In-place Cholesky of the k x k matrix A (lower triangle); 0 or -1. */
static int cholesky(double *A, uint32_t k)
{
    for (uint32_t j = 0; j < k; j++) {
        double s = A[(size_t)j * k + j];
        for (uint32_t p = 0; p < j; p++)
            s -= A[(size_t)j * k + p] * A[(size_t)j * k + p];
        if (!(s > 0))
            return -1;
        double d = sqrt(s);
        A[(size_t)j * k + j] = d;
        for (uint32_t i = j + 1; i < k; i++) {
            double t = A[(size_t)i * k + j];
            for (uint32_t p = 0; p < j; p++)
                t -= A[(size_t)i * k + p] * A[(size_t)j * k + p];
            A[(size_t)i * k + j] = t / d;
        }
    }
    return 0;
}

static void chol_solve(const double *L, uint32_t k, const double *b, double *x)
{
    for (uint32_t i = 0; i < k; i++) {
        double t = b[i];
        for (uint32_t p = 0; p < i; p++)
            t -= L[(size_t)i * k + p] * x[p];
        x[i] = t / L[(size_t)i * k + i];
    }
    for (uint32_t i = k; i-- > 0;) {
        double t = x[i];
        for (uint32_t p = i + 1; p < k; p++)
            t -= L[(size_t)p * k + i] * x[p];
        x[i] = t / L[(size_t)i * k + i];
    }
}

/* Objective at theta (theta[0] bias, then k-1 weights on Z columns). */
static double objective(const double *Z, const uint8_t *y, uint64_t n, uint32_t k,
                        const double *th, double l2)
{
    double J = 0;
    for (uint64_t r = 0; r < n; r++) {
        const double *z = Z + r * (k - 1);
        double s = th[0];
        for (uint32_t j = 1; j < k; j++)
            s += th[j] * z[j - 1];
        J += softplus(s) - (y[r] ? s : 0);
    }
    J /= (double)n;
    for (uint32_t j = 1; j < k; j++)
        J += 0.5 * l2 * th[j] * th[j];
    return J;
}

int skv_logreg_fit(const double *X, const uint8_t *y, uint64_t n, uint32_t d,
                   const skv_logreg_opts *o, double *w, double *b, skv_logreg_result *res)
{
    if (!n || (d && !X))
        return skv_error(SKV_EINVAL, "logistic regression: no samples");
    /* standardise; constant columns are left out of the fit */
    double *mu = skv_calloc(d + 1, sizeof *mu), *sd = skv_calloc(d + 1, sizeof *sd);
    uint32_t *col = skv_calloc(d + 1, sizeof *col);
    double *Z = NULL, *H = NULL, *g = NULL, *th = NULL, *dir = NULL, *tn = NULL;
    int rc = SKV_ENOMEM;
    if (!mu || !sd || !col)
        goto out;
    uint32_t k = 1; /* bias + used columns */
    for (uint32_t j = 0; j < d; j++) {
        double s = 0, s2 = 0;
        for (uint64_t r = 0; r < n; r++)
            s += X[r * d + j];
        mu[j] = s / (double)n;
        for (uint64_t r = 0; r < n; r++)
            s2 += (X[r * d + j] - mu[j]) * (X[r * d + j] - mu[j]);
        sd[j] = sqrt(s2 / (double)n);
        if (sd[j] > 1e-12 * (1 + fabs(mu[j])))
            col[k++ - 1] = j;
    }
    size_t zn;
    if (skv_mul_sizes(&zn, 3, (size_t)n, (size_t)(k > 1 ? k - 1 : 1), sizeof(double)) < 0) {
        rc = skv_error(SKV_ELIMIT, "logistic regression: %llu x %u samples too many",
                       (unsigned long long)n, k);
        goto out;
    }
    Z = skv_malloc(zn);
    H = skv_malloc((size_t)k * k * sizeof *H);
    g = skv_malloc(k * sizeof *g);
    th = skv_calloc(k, sizeof *th);
    dir = skv_malloc(k * sizeof *dir);
    tn = skv_malloc(k * sizeof *tn);
    if (!Z || !H || !g || !th || !dir || !tn)
        goto out;
    for (uint64_t r = 0; r < n; r++)
        for (uint32_t j = 1; j < k; j++) {
            uint32_t c = col[j - 1];
            Z[r * (k - 1) + j - 1] = (X[r * d + c] - mu[c]) / sd[c];
        }
    uint64_t npos = 0;
    for (uint64_t r = 0; r < n; r++)
        npos += y[r] != 0;
    /* start from the base rate (clamped: one class may be absent) */
    double pb = ((double)npos + 0.5) / ((double)n + 1.0);
    th[0] = log(pb / (1 - pb));
    double J = objective(Z, y, n, k, th, o->l2), gmax = INFINITY;
    uint32_t it;
    rc = SKV_ELIMIT;
    for (it = 0; it <= o->max_iter; it++) {
        memset(g, 0, k * sizeof *g);
        memset(H, 0, (size_t)k * k * sizeof *H);
        for (uint64_t r = 0; r < n; r++) {
            const double *z = Z + r * (k - 1);
            double s = th[0];
            for (uint32_t j = 1; j < k; j++)
                s += th[j] * z[j - 1];
            double p = sigmoid(s), e = p - (y[r] ? 1.0 : 0.0), wt = p * (1 - p);
            g[0] += e;
            H[0] += wt;
            for (uint32_t i = 1; i < k; i++) {
                double zi = z[i - 1];
                g[i] += e * zi;
                double wz = wt * zi;
                H[(size_t)i * k] += wz;
                for (uint32_t j = 1; j <= i; j++)
                    H[(size_t)i * k + j] += wz * z[j - 1];
            }
        }
        gmax = 0;
        for (uint32_t i = 0; i < k; i++) {
            g[i] = g[i] / (double)n + (i ? o->l2 * th[i] : 0);
            for (uint32_t j = 0; j <= i; j++)
                H[(size_t)i * k + j] = H[(size_t)i * k + j] / (double)n + (i == j && i ? o->l2 : 0);
            if (fabs(g[i]) > gmax)
                gmax = fabs(g[i]);
        }
        if (gmax <= o->tol) {
            rc = 0;
            break;
        }
        if (it == o->max_iter)
            break;
        /* H is positive definite (l2 > 0 or curvature from the data); if
         * rounding says otherwise, take a gradient step instead */
        if (cholesky(H, k) < 0)
            for (uint32_t i = 0; i < k; i++)
                for (uint32_t j = 0; j <= i; j++)
                    H[(size_t)i * k + j] = i == j;
        chol_solve(H, k, g, dir);
        double slope = 0;
        for (uint32_t i = 0; i < k; i++)
            slope += g[i] * dir[i];
        double step = 1, Jn = J;
        if (slope <= 1e-13 * (1 + fabs(J))) {
            /* the decrease is below the objective's rounding: near the
             * optimum Newton's full step is safe (quadratic convergence),
             * and the gradient test above decides */
            for (uint32_t i = 0; i < k; i++)
                th[i] -= dir[i];
            J = objective(Z, y, n, k, th, o->l2);
            continue;
        }
        for (int ls = 0; ls < 60; ls++) {
            for (uint32_t i = 0; i < k; i++)
                tn[i] = th[i] - step * dir[i];
            Jn = objective(Z, y, n, k, tn, o->l2);
            if (Jn <= J - 1e-4 * step * slope)
                break;
            step *= 0.5;
        }
        if (!(Jn <= J)) /* no descent possible in floating point: at the optimum */
            break;
        memcpy(th, tn, k * sizeof *th);
        J = Jn;
    }
    if (rc == SKV_ELIMIT)
        skv_error(SKV_ELIMIT, "logistic regression: max |gradient| %.3g > %.3g after %u Newton "
                  "steps", gmax, o->tol, it);
    /* back to the raw scale */
    for (uint32_t j = 0; j < d; j++)
        w[j] = 0;
    *b = th[0];
    for (uint32_t j = 1; j < k; j++) {
        uint32_t c = col[j - 1];
        w[c] = th[j] / sd[c];
        *b -= th[j] * mu[c] / sd[c];
    }
    if (res) {
        res->iters = it;
        res->grad_norm = gmax;
        res->loss = J;
    }
out:
    free(mu);
    free(sd);
    free(col);
    free(Z);
    free(H);
    free(g);
    free(th);
    free(dir);
    free(tn);
    return rc;
}

typedef struct {
    double s;
    uint8_t y;
} scored;

static int cmp_scored(const void *a, const void *b)
{
    double x = ((const scored *)a)->s, y = ((const scored *)b)->s;
    return (x > y) - (x < y);
}

double skv_auc(const double *score, const uint8_t *y, uint64_t n)
{
    scored *v = skv_malloc((size_t)n * sizeof *v + 1);
    if (!v)
        return NAN;
    uint64_t np = 0;
    for (uint64_t i = 0; i < n; i++) {
        v[i].s = score[i];
        v[i].y = y[i] != 0;
        np += v[i].y;
    }
    uint64_t nn = n - np;
    if (!np || !nn) {
        free(v);
        return NAN;
    }
    qsort(v, (size_t)n, sizeof *v, cmp_scored);
    /* Mann-Whitney: sum of the positives' ranks, ties at their mean rank */
    double rs = 0;
    for (uint64_t i = 0; i < n;) {
        uint64_t j = i;
        while (j < n && v[j].s == v[i].s)
            j++;
        double mid = 0.5 * (double)(i + 1 + j);
        for (uint64_t k = i; k < j; k++)
            if (v[k].y)
                rs += mid;
        i = j;
    }
    free(v);
    return (rs - 0.5 * (double)np * (double)(np + 1)) / ((double)np * (double)nn);
}

/* ---------------- samples from traces ---------------- */

void skv_rlv_defaults(skv_rlv_cfg *c)
{
    memset(c, 0, sizeof *c);
    c->horizon = 32;
    c->label_q = 0.8;
    c->t0 = 64;
    c->stride = 16;
    c->hidden_dims = 32;
    c->max_samples = 20000;
    c->max_tokens = 2048;
    c->seed = 1;
    c->beta_target = 0.25;
    c->fit.l2 = 1e-3;
    c->fit.tol = 1e-8;
    c->fit.max_iter = 50;
}

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double unif(uint64_t *s) { return (double)(splitmix(s) >> 11) * 0x1.0p-53; }

typedef struct {
    uint64_t n, cap;
    double *x;      /* [n][NFEAT] */
    uint8_t *y;
    uint32_t *tok;  /* token index of each sample */
    /* beta_l's fit (when sel): every token at every sample step, rows as in
     * skv_rlv_sel, features in sx */
    int sel;
    uint32_t heads, steps;
    uint64_t rows;
    uint64_t *st, *soff;
    double *sx;
    float *sfut;
} sample_set;

static int samples_push(sample_set *S, const double *x, uint8_t y, uint32_t tok)
{
    if (S->n == S->cap) {
        uint64_t nc = S->cap ? S->cap * 2 : 4096;
        double *nx = skv_realloc(S->x, (size_t)nc * SKV_RLV_NFEAT * sizeof(double));
        if (nx)
            S->x = nx;
        uint8_t *ny = skv_realloc(S->y, (size_t)nc);
        if (ny)
            S->y = ny;
        uint32_t *nt = skv_realloc(S->tok, (size_t)nc * sizeof(uint32_t));
        if (nt)
            S->tok = nt;
        if (!nx || !ny || !nt)
            return skv_error(SKV_ENOMEM, "out of memory for %llu samples", (unsigned long long)nc);
        S->cap = nc;
    }
    memcpy(S->x + S->n * SKV_RLV_NFEAT, x, SKV_RLV_NFEAT * sizeof(double));
    S->y[S->n] = y;
    S->tok[S->n] = tok;
    S->n++;
    return 0;
}

static void samples_free(sample_set *S)
{
    free(S->x);
    free(S->y);
    free(S->tok);
    free(S->st);
    free(S->soff);
    free(S->sx);
    free(S->sfut);
    memset(S, 0, sizeof *S);
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static int is_sample_step(const skv_rlv_cfg *c, uint64_t t, uint64_t n)
{
    return t >= c->t0 && t >= 1 && (t - c->t0) % c->stride == 0 && t + c->horizon <= n;
}

/* Samples of one layer: for each KV group, replay causal attention over
 * the first n tokens, fold it into the trackers, and at each sample step
 * emit (features, label) for tokens 0..t-1, each kept with probability keep. */
static int layer_samples(const skv_trace_hdr *h, const skv_layer *L, uint64_t n,
                         const int32_t *tokens, const skv_rlv_vocab *voc, const skv_rlv_cfg *c,
                         double keep, uint64_t *rng, sample_set *S)
{
    uint32_t hd = h->head_dim, G = h->n_heads / h->n_kv_heads;
    uint64_t N = h->n_tokens, tri = n * (n + 1) / 2;
    float *pm = skv_malloc((size_t)tri * sizeof(float)), *px = skv_malloc((size_t)tri * sizeof(float));
    float *sc = skv_malloc((size_t)n * sizeof(float)), *fut = skv_malloc((size_t)n * sizeof(float));
    float *srt = skv_malloc((size_t)n * sizeof(float));
    skv_rlv_tok *tk = skv_malloc((size_t)n * sizeof *tk);
    uint32_t vn = voc && voc->cls ? voc->n : 0;
    uint32_t *count = NULL;
    int32_t maxid = -1;
    int rc = SKV_ENOMEM;
    for (uint64_t i = 0; tokens && i < n; i++)
        if (tokens[i] > maxid)
            maxid = tokens[i];
    if (!pm || !px || !sc || !fut || !srt || !tk ||
        !(count = skv_calloc((size_t)maxid + 2, sizeof *count)))
        goto out;
    if (S->sel) {
        uint64_t ns = 0, rows = 0;
        for (uint64_t t = 0; t < n; t++)
            if (is_sample_step(c, t, n)) {
                ns++;
                rows += t;
            }
        rows *= h->n_kv_heads;
        free(S->st);
        free(S->soff);
        free(S->sx);
        free(S->sfut);
        S->heads = h->n_kv_heads;
        S->steps = (uint32_t)ns;
        S->rows = 0;
        S->st = skv_malloc(ns * sizeof *S->st + 1);
        S->soff = skv_malloc(ns * h->n_kv_heads * sizeof *S->soff + 1);
        S->sx = skv_malloc((size_t)rows * SKV_RLV_NFEAT * sizeof(double) + 1);
        S->sfut = skv_malloc((size_t)rows * sizeof(float) + 1);
        if (!S->st || !S->soff || !S->sx || !S->sfut)
            goto out;
    }
    const float scale = 1.0f / sqrtf((float)hd);
    for (uint32_t kv = 0; kv < h->n_kv_heads; kv++) {
        const float *K = L->k + (size_t)kv * N * hd;
        memset(pm, 0, (size_t)tri * sizeof(float));
        memset(px, 0, (size_t)tri * sizeof(float));
        for (uint32_t gh = 0; gh < G; gh++) {
            const float *Q = L->q + (size_t)(kv * G + gh) * N * hd;
            for (uint64_t s = 0; s < n; s++) {
                const float *q = Q + s * hd;
                float mx = -INFINITY;
                for (uint64_t j = 0; j <= s; j++) {
                    const float *k = K + j * hd;
                    float d = 0;
                    for (uint32_t e = 0; e < hd; e++)
                        d += q[e] * k[e];
                    sc[j] = d * scale;
                    if (sc[j] > mx)
                        mx = sc[j];
                }
                if (!isfinite(mx)) {
                    rc = skv_error(SKV_EFORMAT, "layer %u: attention of query %llu is not finite",
                                   L->index, (unsigned long long)s);
                    goto out;
                }
                double z = 0;
                for (uint64_t j = 0; j <= s; j++)
                    z += (sc[j] = expf(sc[j] - mx));
                float iz = (float)(1.0 / z);
                float *rm = pm + s * (s + 1) / 2, *rx = px + s * (s + 1) / 2;
                for (uint64_t j = 0; j <= s; j++) {
                    float p = sc[j] * iz;
                    rm[j] += p / (float)G;
                    if (p > rx[j])
                        rx[j] = p;
                }
            }
        }
        memset(count, 0, ((size_t)maxid + 2) * sizeof *count);
        uint32_t step = 0;
        for (uint64_t s = 0; s < n; s++) {
            if (is_sample_step(c, s, n)) {
                uint64_t t = s;
                for (uint64_t i = 0; i < t; i++)
                    fut[i] = 0;
                for (uint64_t q = t; q < t + c->horizon; q++) {
                    const float *rm = pm + q * (q + 1) / 2;
                    for (uint64_t i = 0; i < t; i++)
                        fut[i] += rm[i];
                }
                memcpy(srt, fut, (size_t)t * sizeof(float));
                qsort(srt, (size_t)t, sizeof(float), cmp_float);
                uint64_t qi = (uint64_t)floor(c->label_q * (double)(t - 1) + 0.5);
                float thr = srt[qi];
                if (S->sel) {
                    S->st[step] = t;
                    S->soff[(size_t)kv * S->steps + step] = S->rows;
                }
                for (uint64_t i = 0; i < t; i++) {
                    double x[SKV_RLV_NFEAT];
                    int32_t id = tokens ? tokens[i] : -1;
                    uint8_t cls = id >= 0 && (uint32_t)id < vn ? voc->cls[id] : 0;
                    skv_rlv_features(&tk[i], i, t, cls, id >= 0 ? count[id] : 0, x);
                    if (S->sel) {
                        memcpy(S->sx + S->rows * SKV_RLV_NFEAT, x, sizeof x);
                        S->sfut[S->rows++] = fut[i];
                    }
                    if (keep < 1 && unif(rng) >= keep)
                        continue;
                    if ((rc = samples_push(S, x, fut[i] >= thr, (uint32_t)i)) < 0)
                        goto out;
                }
                step++;
            }
            skv_rlv_track_step(tk, s, pm + s * (s + 1) / 2, px + s * (s + 1) / 2);
            if (tokens && tokens[s] >= 0)
                count[tokens[s]]++;
        }
    }
    rc = 0;
out:
    free(pm);
    free(px);
    free(sc);
    free(fut);
    free(srt);
    free(tk);
    free(count);
    return rc;
}

static double expected_samples(const skv_rlv_cfg *c, const skv_trace_hdr *h, uint64_t n)
{
    double e = 0;
    for (uint64_t t = 0; t < n; t++)
        if (is_sample_step(c, t, n))
            e += (double)t;
    return e * h->n_kv_heads;
}

static int rlv_cfg_check(const skv_rlv_cfg *c)
{
    if (!c->horizon || !c->stride || !(c->label_q > 0 && c->label_q < 1) || !c->max_samples ||
        c->max_tokens < 2 || !(c->fit.l2 >= 0) || !(c->fit.tol > 0) || c->hidden_dims > 4096)
        return skv_error(SKV_EINVAL, "relevance: bad settings (horizon %u, stride %u, q %g, "
                         "samples %llu, tokens %llu, l2 %g, tol %g, hidden dims %u)", c->horizon,
                         c->stride, c->label_q, (unsigned long long)c->max_samples,
                         (unsigned long long)c->max_tokens, c->fit.l2, c->fit.tol, c->hidden_dims);
    return 0;
}

/* The walk over a trace shared by training and evaluation. */
typedef struct {
    const skv_rlv_cfg *c;
    const skv_rlv_vocab *voc;
    skv_hidden *hs;
    int need_hidden;
    /* per layer: called with the samples and the layer's hidden states */
    int (*layer)(void *ctx, uint32_t l, const skv_trace_hdr *h, const sample_set *S,
                 const float *hid, uint32_t n_embd);
    void *ctx;
    uint32_t n_layers;
    int sel;        /* keep every token of every step (beta_l's fit) */
} walk;

static int hidden_cb(void *ctx, const skv_chunk *c)
{
    walk *w = ctx;
    if (skv_chunk_is(c, SKV_T_HIDN)) {
        if (!w->hs)
            return 0;
        return skv_hidden_add(w->hs, c);
    }
    if (skv_chunk_is_critical(c->type))
        return skv_error(SKV_EFORMAT, "unexpected %s chunk at byte %llu", c->type,
                         (unsigned long long)c->offset);
    return 0;
}

static int walk_trace(const char *path, walk *w)
{
    int rc = rlv_cfg_check(w->c);
    if (rc < 0)
        return rc;
    skv_trace_reader *r = skv_trace_reader_open(path, hidden_cb, w);
    if (!r)
        return SKV_EIO;
    const skv_trace_hdr *h = &r->hdr;
    uint64_t n = h->n_tokens < w->c->max_tokens ? h->n_tokens : w->c->max_tokens;
    w->n_layers = h->n_layers;
    skv_layer L = {0};
    sample_set S = {.sel = w->sel};
    if (n < (uint64_t)w->c->t0 + w->c->horizon + 1) {
        rc = skv_error(SKV_EINVAL, "%llu tokens are too few: the first sample step is %u and "
                       "labels look %u queries ahead", (unsigned long long)n, w->c->t0,
                       w->c->horizon);
        goto out;
    }
    if (!(w->hs = skv_hidden_new(h->n_layers, h->n_tokens))) {
        rc = SKV_ENOMEM;
        goto out;
    }
    double keep = (double)w->c->max_samples / expected_samples(w->c, h, n);
    while ((rc = skv_trace_next_layer(r, &L)) > 0) {
        uint32_t l = L.index;
        if (w->need_hidden && w->hs->rows[l] != h->n_tokens) {
            rc = skv_error(SKV_EFORMAT, "layer %u has %llu of %llu hidden-state rows (record "
                           "with skv-trace record --hidden, or train with --hidden-dims 0)", l,
                           (unsigned long long)w->hs->rows[l], (unsigned long long)h->n_tokens);
            break;
        }
        uint64_t rng = w->c->seed * 0x100000001b3ull + l;
        S.n = 0;
        if ((rc = layer_samples(h, &L, n, r->tokens, w->voc, w->c, keep, &rng, &S)) < 0 ||
            (rc = w->layer(w->ctx, l, h, &S, w->hs->h[l], w->hs->n_embd)) < 0)
            break;
        free(w->hs->h[l]); /* one layer's hidden states at a time */
        w->hs->h[l] = NULL;
    }
out:
    samples_free(&S);
    skv_layer_free(&L);
    skv_hidden_free(w->hs);
    w->hs = NULL;
    skv_trace_reader_close(r);
    return rc;
}

/* Seeded Gaussian projection [dims][E], rows scaled by 1/sqrt(E). */
static float *projection(uint64_t seed, uint32_t layer, uint32_t dims, uint32_t E)
{
    float *P = skv_malloc((size_t)dims * E * sizeof(float) + 1);
    if (!P)
        return NULL;
    uint64_t s = seed ^ (0xa5a5a5a5ull + layer * 0x9e3779b97f4a7c15ull);
    for (size_t i = 0; i < (size_t)dims * E; i++) {
        double u1 = unif(&s), u2 = unif(&s);
        P[i] = (float)(sqrt(-2 * log(u1 + 1e-300)) * cos(2 * M_PI * u2) / sqrt((double)E));
    }
    return P;
}

typedef struct {
    const skv_rlv_cfg *c;
    skv_rlv_model *m, *m0;  /* with and without the hidden-state term */
    skv_rlv_eval *ev;
} train_ctx;

static double *scores_of(const skv_rlv_model *m, uint32_t l, const sample_set *S,
                         const float *hid, uint32_t E)
{
    double *sc = skv_malloc((size_t)S->n * sizeof *sc + 1);
    if (!sc)
        return NULL;
    for (uint64_t r = 0; r < S->n; r++) {
        double ht = m->n_embd && hid ? skv_rlv_hidden_term(m, l, hid + (size_t)S->tok[r] * E) : 0;
        sc[r] = skv_rlv_logit(m, l, S->x + r * SKV_RLV_NFEAT, ht);
    }
    return sc;
}

static void eval_layer(skv_rlv_eval *e, const sample_set *S, const skv_rlv_model *m,
                       const skv_rlv_model *m0, uint32_t l, const float *hid, uint32_t E)
{
    e->n = S->n;
    e->pos = 0;
    for (uint64_t r = 0; r < S->n; r++)
        e->pos += S->y[r];
    double *sc = skv_malloc((size_t)S->n * sizeof *sc + 1);
    e->auc_ema = e->auc_nohid = e->auc_learned = NAN;
    if (sc) {
        for (uint64_t r = 0; r < S->n; r++)
            sc[r] = S->x[r * SKV_RLV_NFEAT + SKV_RLV_EMA_MEAN];
        e->auc_ema = skv_auc(sc, S->y, S->n);
        free(sc);
    }
    if (m0 && (sc = scores_of(m0, l, S, NULL, 0))) {
        e->auc_nohid = skv_auc(sc, S->y, S->n);
        free(sc);
    }
    if (m && (sc = scores_of(m, l, S, hid, E))) {
        e->auc_learned = skv_auc(sc, S->y, S->n);
        free(sc);
    }
}

static int fit_one(const sample_set *S, uint32_t d, const double *X, const skv_rlv_cfg *c,
                   double *w, double *b, skv_logreg_result *res)
{
    int rc = skv_logreg_fit(X, S->y, S->n, d, &c->fit, w, b, res);
    return rc;
}

/* beta_l from the selection replayed with the fitted weights on every
 * token of every sample step (the training trace). */
static int fit_layer_beta(train_ctx *T, uint32_t l, const sample_set *S, const float *hid,
                          uint32_t E)
{
    double *r = skv_malloc((size_t)S->rows * sizeof *r + 1);
    if (!r)
        return SKV_ENOMEM;
    for (uint32_t k = 0; k < S->heads; k++)
        for (uint32_t j = 0; j < S->steps; j++) {
            uint64_t o = S->soff[(size_t)k * S->steps + j];
            for (uint64_t i = 0; i < S->st[j]; i++) {
                double ht = T->m->n_embd && hid ? skv_rlv_hidden_term(T->m, l, hid + (size_t)i * E)
                                                : 0;
                double z = skv_rlv_logit(T->m, l, S->sx + (o + i) * SKV_RLV_NFEAT, ht);
                r[o + i] = 1.0 / (1.0 + exp(-z));
            }
        }
    skv_rlv_sel sel = {S->heads, S->steps, S->st, S->soff, r, S->sfut};
    double b = skv_rlv_fit_beta(&sel, T->c->beta_target, &T->ev[l].recall);
    if (b == b)
        T->ev[l].recall1 = skv_rlv_sel_recall(&sel, T->c->beta_target, 1.0);
    free(r);
    if (b != b)
        return SKV_ENOMEM;
    T->m->layers[l].beta = (float)b;
    T->m0->layers[l].beta = (float)b;
    T->ev[l].beta = b;
    return 0;
}

static int train_layer(void *ctx, uint32_t l, const skv_trace_hdr *h, const sample_set *S,
                       const float *hid, uint32_t E)
{
    train_ctx *T = ctx;
    const skv_rlv_cfg *c = T->c;
    uint32_t D = c->hidden_dims && E ? c->hidden_dims : 0, d = SKV_RLV_NFEAT + D;
    if (!T->m) {
        if (!(T->m = skv_rlv_model_new(h->n_layers, D ? E : 0)) ||
            !(T->m0 = skv_rlv_model_new(h->n_layers, 0)) ||
            !(T->ev = skv_calloc(h->n_layers, sizeof *T->ev)))
            return SKV_ENOMEM;
    }
    if (D && T->m->n_embd != E)
        return skv_error(SKV_EFORMAT, "layer %u: hidden width %u, earlier layers %u", l, E,
                         T->m->n_embd);
    double *X = skv_malloc((size_t)S->n * d * sizeof *X + 1), w[SKV_RLV_NFEAT + 4096], b;
    float *P = D ? projection(c->seed, l, D, E) : NULL;
    int rc = SKV_ENOMEM;
    if (!X || (D && !P))
        goto out;
    skv_logreg_result res;
    /* without the hidden state */
    if ((rc = fit_one(S, SKV_RLV_NFEAT, S->x, c, w, &b, &res)) < 0)
        goto out;
    T->m0->layers[l].bias = b;
    for (int f = 0; f < SKV_RLV_NFEAT; f++)
        T->m0->layers[l].w[f] = (float)w[f];
    /* with it: features then the projected hidden state */
    for (uint64_t r = 0; r < S->n; r++) {
        double *xr = X + r * d;
        memcpy(xr, S->x + r * SKV_RLV_NFEAT, SKV_RLV_NFEAT * sizeof(double));
        const float *hv = D ? hid + (size_t)S->tok[r] * E : NULL;
        for (uint32_t k = 0; k < D; k++) {
            const float *p = P + (size_t)k * E;
            double s = 0;
            for (uint32_t e = 0; e < E; e++)
                s += (double)p[e] * hv[e];
            xr[SKV_RLV_NFEAT + k] = s;
        }
    }
    if ((rc = fit_one(S, d, X, c, w, &b, &res)) < 0)
        goto out;
    skv_rlv_layer *Ly = &T->m->layers[l];
    Ly->bias = b;
    for (int f = 0; f < SKV_RLV_NFEAT; f++)
        Ly->w[f] = (float)w[f];
    for (uint32_t e = 0; e < E && D; e++) {
        double s = 0;
        for (uint32_t k = 0; k < D; k++)
            s += w[SKV_RLV_NFEAT + k] * P[(size_t)k * E + e];
        Ly->wh[e] = (float)s;
    }
    T->ev[l].iters = res.iters;
    T->ev[l].grad_norm = res.grad_norm;
    eval_layer(&T->ev[l], S, T->m, T->m0, l, hid, E);
    T->ev[l].beta = 1;
    T->ev[l].recall = T->ev[l].recall1 = NAN;
    if (S->sel && (rc = fit_layer_beta(T, l, S, hid, E)) < 0)
        goto out;
    rc = 0;
out:
    free(X);
    free(P);
    return rc;
}

int skv_rlv_train(const char *path, const skv_rlv_cfg *c, const skv_rlv_vocab *voc,
                  skv_rlv_model **out, skv_rlv_model **nohid, skv_rlv_eval **ev,
                  uint32_t *n_layers)
{
    train_ctx T = {c, NULL, NULL, NULL};
    walk w = {c, voc, NULL, c->hidden_dims > 0, train_layer, &T, 0, c->beta_target > 0};
    int rc = walk_trace(path, &w);
    if (rc == 0 && (!T.m || !T.ev))
        rc = skv_error(SKV_EFORMAT, "no layers to train on");
    if (rc < 0) {
        skv_rlv_model_free(T.m);
        skv_rlv_model_free(T.m0);
        free(T.ev);
        return rc;
    }
    *out = T.m;
    if (nohid)
        *nohid = T.m0;
    else
        skv_rlv_model_free(T.m0);
    if (ev)
        *ev = T.ev;
    else
        free(T.ev);
    if (n_layers)
        *n_layers = w.n_layers;
    return 0;
}

typedef struct {
    const skv_rlv_model *m, *m0;
    skv_rlv_eval *ev;
} eval_ctx;

static int evaluate_layer(void *ctx, uint32_t l, const skv_trace_hdr *h, const sample_set *S,
                          const float *hid, uint32_t E)
{
    eval_ctx *X = ctx;
    if (!X->ev && !(X->ev = skv_calloc(h->n_layers, sizeof *X->ev)))
        return SKV_ENOMEM;
    if (l >= X->m->n_layers)
        return skv_error(SKV_EINVAL, "the trace has layer %u, the weights only %u layers", l,
                         X->m->n_layers);
    if (X->m->n_embd && X->m->n_embd != E)
        return skv_error(SKV_EFORMAT, "layer %u: hidden width %u, the weights expect %u", l, E,
                         X->m->n_embd);
    eval_layer(&X->ev[l], S, X->m, X->m0, l, hid, E);
    return 0;
}

int skv_rlv_evaluate(const char *path, const skv_rlv_cfg *c, const skv_rlv_vocab *voc,
                     const skv_rlv_model *m, const skv_rlv_model *nohid, skv_rlv_eval **ev,
                     uint32_t *n_layers)
{
    eval_ctx X = {m, nohid, NULL};
    walk w = {c, voc, NULL, m->n_embd > 0, evaluate_layer, &X, 0, 0};
    int rc = walk_trace(path, &w);
    if (rc == 0 && !X.ev)
        rc = skv_error(SKV_EFORMAT, "no layers to evaluate");
    if (rc < 0) {
        free(X.ev);
        return rc;
    }
    *ev = X.ev;
    if (n_layers)
        *n_layers = w.n_layers;
    return 0;
}

/* ---------------------------------------------------------------- relevance of a trace layer */

int skv_rlv_layer_relevance(const skv_rlv_model *m, const skv_trace_hdr *h, const skv_layer *L,
                            const int32_t *tokens, const skv_rlv_vocab *voc, const float *hidden,
                            uint32_t n_embd, float *out)
{
    const uint32_t hd = h->head_dim, G = h->n_heads / h->n_kv_heads, l = L->index;
    const uint64_t n = h->n_tokens;
    if (l >= m->n_layers)
        return skv_error(SKV_EINVAL, "relevance: the weights cover %u layers, the trace has "
                         "layer %u", m->n_layers, l);
    if (m->n_embd && (!hidden || n_embd != m->n_embd))
        return skv_error(SKV_EFORMAT, "layer %u: the weights need hidden states of %u (record "
                         "with skv-trace record --hidden)", l, m->n_embd);
    float *sc = skv_malloc((size_t)n * sizeof(float)), *mean = skv_malloc((size_t)n * sizeof(float));
    float *mx = skv_malloc((size_t)n * sizeof(float));
    skv_rlv_tok *tk = skv_malloc((size_t)n * sizeof *tk);
    uint32_t vn = voc && voc->cls ? voc->n : 0;
    int32_t maxid = -1;
    for (uint64_t i = 0; tokens && i < n; i++)
        maxid = tokens[i] > maxid ? tokens[i] : maxid;
    uint32_t *count = skv_calloc((size_t)maxid + 2, sizeof *count);
    int rc = SKV_ENOMEM;
    if (!sc || !mean || !mx || !tk || !count)
        goto out;
    for (uint64_t i = 0; tokens && i < n; i++)
        if (tokens[i] >= 0)
            count[tokens[i]]++;
    const float scale = 1.0f / sqrtf((float)hd);
    for (uint32_t kv = 0; kv < h->n_kv_heads; kv++) {
        const float *K = L->k + (size_t)kv * n * hd;
        /* every query folded in, as the decode loop's trackers would have it */
        for (uint64_t s = 0; s < n; s++) {
            memset(mean, 0, (size_t)(s + 1) * sizeof(float));
            memset(mx, 0, (size_t)(s + 1) * sizeof(float));
            for (uint32_t gh = 0; gh < G; gh++) {
                const float *q = L->q + ((size_t)(kv * G + gh) * n + s) * hd;
                float top = -INFINITY;
                for (uint64_t j = 0; j <= s; j++) {
                    const float *k = K + j * hd;
                    float d = 0;
                    for (uint32_t e = 0; e < hd; e++)
                        d += q[e] * k[e];
                    sc[j] = d * scale;
                    top = sc[j] > top ? sc[j] : top;
                }
                if (!isfinite(top)) {
                    rc = skv_error(SKV_EFORMAT, "layer %u: attention of query %llu is not finite",
                                   l, (unsigned long long)s);
                    goto out;
                }
                double z = 0;
                for (uint64_t j = 0; j <= s; j++)
                    z += (sc[j] = expf(sc[j] - top));
                float iz = (float)(1.0 / z);
                for (uint64_t j = 0; j <= s; j++) {
                    float p = sc[j] * iz;
                    mean[j] += p / (float)G;
                    mx[j] = p > mx[j] ? p : mx[j];
                }
            }
            skv_rlv_track_step(tk, s, mean, mx);
        }
        for (uint64_t i = 0; i < n; i++) {
            double x[SKV_RLV_NFEAT];
            int32_t id = tokens ? tokens[i] : -1;
            uint8_t cls = id >= 0 && (uint32_t)id < vn ? voc->cls[id] : 0;
            skv_rlv_features(&tk[i], i, n, cls, id >= 0 ? count[id] : 0, x);
            double ht = m->n_embd ? skv_rlv_hidden_term(m, l, hidden + (size_t)i * n_embd) : 0;
            double z = skv_rlv_logit(m, l, x, ht);
            out[(size_t)kv * n + i] = (float)(1.0 / (1.0 + exp(-z)));
        }
    }
    rc = 0;
out:
    free(sc);
    free(mean);
    free(mx);
    free(tk);
    free(count);
    return rc;
}
