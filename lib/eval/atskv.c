/* atskv.c -- ATSKV's two-tier cache in the decode loop (smartkv_atskv.h). */
#include "smartkv_atskv.h"

#include "eccommon.h"
#include "ecgroup.h"

#include "smartkv_error.h"
#include "smartkv_trace.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define ATS_GAIN 0.5        /* quantile controller gain per selection */

enum { T_NONE = 0, T_ACTIVE = 1, T_PASSIVE = 2 };

typedef struct {
    uint8_t *z;             /* zlib stream of rows x (K, V) fp16 rows (NULL: in the file) */
    uint64_t off;           /* offloaded: where the stream starts in the file */
    uint32_t zlen, rows, live;
} blob;

typedef struct {
    float *k, *v;           /* [cap][hd], fp16-rounded; zero when not active */
    uint8_t *tier;          /* [cap] */
    skv_rlv_tok *tk;        /* [cap] */
    uint32_t *blob_of, *row_of;   /* passive tokens: where their rows are */
    blob *blobs;
    uint32_t n_blobs, cap_blobs;
    uint64_t n_active, n_passive;
} ats_head;

typedef struct {
    skv_kv_cache base;
    skv_ec_cfg cfg;
    const skv_rlv_model *rlv;
    ats_head *heads;        /* [layer][kv] */
    float *hterm;           /* [layer][cap]: w_h . h */
    double *q;              /* [layer] quantile controller */
    uint64_t *len;          /* [layer] positions held */
    uint64_t *last_sel;     /* [layer] t of the last selection */
    int32_t *ids;           /* [cap] token ids (-1 unknown) */
    uint64_t n_ids;
    uint32_t *count;        /* [cap] occurrences of ids[i] among tokens appended so far */
    const skv_tokenizer *tok;
    float *pbuf;            /* [n_heads][block][cap] probabilities of the last attend */
    uint32_t pb_rows;
    uint64_t pb_pos;
    int pb_layer;           /* layer whose probabilities wait to be folded, -1 none */
    int hold, err;
    uint32_t n_embd;
    skv_ec_stats st;
    _Atomic uint64_t attend_ns;
    uint64_t recall_ns;
    int fd;                 /* --offload: the passive tier's file, or -1 */
    char *path;
    uint64_t f_end;         /* bytes in the file (blobs are appended) */
} ats_cache;

#define PB_BLOCK 64u

static const skv_kv_ops ats_ops;

static ats_cache *as_ats(skv_kv_cache *c) { return c && c->ops == &ats_ops ? (ats_cache *)c : NULL; }
int skv_atskv_is(const skv_kv_cache *c) { return c && c->ops == &ats_ops; }

static ats_head *head_at(ats_cache *a, uint32_t l, uint32_t kv)
{
    return &a->heads[(size_t)l * a->base.n_kv_heads + kv];
}

static float r16(float x) { return skv_f16_to_f32(skv_f32_to_f16(x)); }

/* ---------------------------------------------------------------- tiers */

static void blobs_clear(ats_head *H)
{
    for (uint32_t b = 0; b < H->n_blobs; b++)
        free(H->blobs[b].z);
    H->n_blobs = 0;
}

/* pwrite/pread of the whole range (the offload file). */
static int write_all(ats_cache *a, const uint8_t *p, size_t n, uint64_t off)
{
    while (n) {
        ssize_t w = pwrite(a->fd, p, n, (off_t)off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return skv_error(SKV_EIO, "%s: cannot write %zu bytes at offset %llu: %s", a->path, n,
                             (unsigned long long)off, w < 0 ? strerror(errno) : "no progress");
        p += w;
        n -= (size_t)w;
        off += (uint64_t)w;
    }
    return 0;
}

static int read_all(ats_cache *a, uint8_t *p, size_t n, uint64_t off)
{
    while (n) {
        ssize_t r = pread(a->fd, p, n, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return skv_error(SKV_EIO, "%s: cannot read %zu bytes at offset %llu: %s", a->path, n,
                             (unsigned long long)off, r < 0 ? strerror(errno) : "file truncated");
        p += r;
        n -= (size_t)r;
        off += (uint64_t)r;
    }
    return 0;
}

/* Move the listed active tokens of one head to the passive tier as one blob. */
static int evict(ats_cache *a, ats_head *H, const uint32_t *idx, uint32_t n)
{
    if (!n)
        return 0;
    uint32_t hd = a->base.head_dim;
    size_t raw = (size_t)n * 2 * hd * sizeof(uint16_t);
    uint16_t *buf = skv_malloc(raw);
    uLongf zl = compressBound((uLong)raw);
    uint8_t *z = skv_malloc(zl);
    if (!buf || !z) {
        free(buf);
        free(z);
        return SKV_ENOMEM;
    }
    for (uint32_t r = 0; r < n; r++) {
        uint64_t i = idx[r];
        for (uint32_t e = 0; e < hd; e++) {
            buf[(size_t)r * 2 * hd + e] = skv_f32_to_f16(H->k[i * hd + e]);
            buf[(size_t)r * 2 * hd + hd + e] = skv_f32_to_f16(H->v[i * hd + e]);
        }
    }
    if (compress2(z, &zl, (const Bytef *)buf, (uLong)raw, 1) != Z_OK) {
        free(buf);
        free(z);
        return skv_error(SKV_EZLIB, "atskv: zlib compress failed");
    }
    free(buf);
    if (H->n_blobs == H->cap_blobs) {
        uint32_t nc = H->cap_blobs ? H->cap_blobs * 2 : 16;
        blob *nb = skv_realloc(H->blobs, nc * sizeof *nb);
        if (!nb) {
            free(z);
            return SKV_ENOMEM;
        }
        H->blobs = nb;
        H->cap_blobs = nc;
    }
    blob *B = &H->blobs[H->n_blobs];
    B->zlen = (uint32_t)zl;
    if (a->fd >= 0) {
        /* offloaded: the stream goes to the end of the file */
        int rc = write_all(a, z, zl, a->f_end);
        free(z);
        if (rc < 0)
            return rc;
        B->z = NULL;
        B->off = a->f_end;
        a->f_end += zl;
        a->st.offload_written += zl;
    } else {
        uint8_t *zs = skv_realloc(z, zl ? zl : 1);
        B->z = zs ? zs : z;
    }
    B->rows = B->live = n;
    for (uint32_t r = 0; r < n; r++) {
        uint64_t i = idx[r];
        H->tier[i] = T_PASSIVE;
        H->blob_of[i] = H->n_blobs;
        H->row_of[i] = r;
        memset(H->k + i * hd, 0, hd * sizeof(float));
        memset(H->v + i * hd, 0, hd * sizeof(float));
    }
    H->n_blobs++;
    H->n_active -= n;
    H->n_passive += n;
    a->st.evictions += n;
    return 0;
}

static int recall(ats_cache *a, ats_head *H, uint64_t i)
{
    uint64_t t0 = now_ns();
    uint32_t hd = a->base.head_dim;
    blob *B = &H->blobs[H->blob_of[i]];
    uLongf raw = (uLongf)B->rows * 2 * hd * sizeof(uint16_t);
    uint16_t *buf = skv_malloc(raw);
    uint8_t *zf = NULL;
    if (!buf)
        return SKV_ENOMEM;
    const uint8_t *zs = B->z;
    if (!zs) {      /* offloaded: read the stream back */
        int rc;
        if (!(zf = skv_malloc(B->zlen ? B->zlen : 1))) {
            free(buf);
            return SKV_ENOMEM;
        }
        if ((rc = read_all(a, zf, B->zlen, B->off)) < 0) {
            free(buf);
            free(zf);
            return rc;
        }
        a->st.offload_read += B->zlen;
        zs = zf;
    }
    int zr = uncompress((Bytef *)buf, &raw, zs, B->zlen);
    free(zf);
    if (zr != Z_OK) {
        free(buf);
        return skv_error(SKV_EZLIB, "atskv: a passive blob does not inflate");
    }
    const uint16_t *row = buf + (size_t)H->row_of[i] * 2 * hd;
    for (uint32_t e = 0; e < hd; e++) {
        H->k[i * hd + e] = skv_f16_to_f32(row[e]);
        H->v[i * hd + e] = skv_f16_to_f32(row[hd + e]);
    }
    free(buf);
    if (--B->live == 0) {
        free(B->z);     /* an offloaded blob's bytes stay in the file until a reset */
        B->z = NULL;
        B->zlen = 0;
    }
    H->tier[i] = T_ACTIVE;
    H->n_active++;
    H->n_passive--;
    a->st.recalls++;
    a->recall_ns += now_ns() - t0;
    return 0;
}

/* ---------------------------------------------------------------- bytes */

/* Per (layer, KV head, token): tracking state, w_h . h, position index. */
#define TOK_META (sizeof(skv_rlv_tok) + sizeof(float) + sizeof(uint32_t))

static uint64_t fixed_bytes(const ats_cache *a)
{
    /* predictor weights, token ids and their counts */
    return (uint64_t)a->base.n_layers * (8 + 4 * (SKV_RLV_NFEAT + (uint64_t)a->rlv->n_embd)) +
           a->n_ids * (sizeof(int32_t) + sizeof(uint32_t));
}

/* Channels per scale group of a quantized active row (active_bits). */
static uint32_t active_group(uint32_t hd) { return hd % 32 == 0 ? 32 : hd; }

static uint64_t active_row_bytes(const ats_cache *a)
{
    const uint32_t hd = a->base.head_dim, b = a->cfg.active_bits;
    if (b && b < 16)    /* K and V: packed codes + an fp16 scale and minimum per group */
        return 2ull * ((hd * b + 7) / 8 + 4 * (hd / active_group(hd))) + TOK_META;
    return 4ull * hd + TOK_META;
}

/* ---------------------------------------------------------------- selection */

static uint8_t tok_class(const ats_cache *a, int32_t id)
{
    if (!a->tok || id < 0)
        return 0;
    char buf[64];
    int n = skv_token_bytes(a->tok, id, 0, buf, sizeof buf);
    return n > 0 ? skv_rlv_token_class(buf, n < (int)sizeof buf ? n : (int)sizeof buf) : 0;
}

static int select_layer(ats_cache *a, uint32_t l)
{
    uint64_t t = a->len[l];
    if (!t)
        return 0;
    uint64_t t0 = now_ns();
    const skv_alloc_cfg *ac = &a->cfg.alloc;
    uint32_t KVH = a->base.n_kv_heads;
    /* the layer's share of the budget, per KV head, in active tokens */
    double fp16_head = (double)t * 4.0 * a->base.head_dim;
    double avail = ac->budget * fp16_head -
                   (double)fixed_bytes(a) / ((double)a->base.n_layers * KVH);
    /* room is kept for the R tokens that arrive before the next selection,
     * so that the active tier stays within the budget between selections */
    double fit = avail / (double)active_row_bytes(a) - a->cfg.realloc;
    uint64_t K = fit > 0 ? (uint64_t)fit : 0;
    skv_rlv_rank *rk = skv_malloc(t * sizeof *rk);
    double *r = skv_malloc(t * sizeof *r), *srt = skv_malloc(t * sizeof *srt);
    uint32_t *ev = skv_malloc(t * sizeof *ev);
    uint8_t *keep = skv_malloc(t);
    int rc = SKV_ENOMEM;
    if (!rk || !r || !srt || !ev || !keep)
        goto out;
    double frac_sum = 0;
    for (uint32_t kv = 0; kv < KVH; kv++) {
        ats_head *H = head_at(a, l, kv);
        for (uint64_t i = 0; i < t; i++) {
            double x[SKV_RLV_NFEAT];
            int32_t id = i < a->n_ids ? a->ids[i] : -1;
            skv_rlv_features(&H->tk[i], i, t, tok_class(a, id), id >= 0 ? a->count[i] : 0, x);
            double z = skv_rlv_logit(a->rlv, l, x, a->hterm[(size_t)l * a->base.capacity + i]);
            r[i] = 1.0 / (1.0 + exp(-z));
        }
        /* tau = beta_l * quantile(r, q_l); active: protected first, then
         * above tau by r, at most K */
        uint64_t above = skv_rlv_select(r, t, a->q[l], (double)a->rlv->layers[l].beta, K,
                                        ac->sinks, ac->recent, rk, srt, keep);
        frac_sum += (double)above / (double)t;
        uint32_t ne = 0;
        for (uint64_t i = 0; i < t; i++) {
            if (keep[i] && H->tier[i] == T_PASSIVE) {
                if ((rc = recall(a, H, i)) < 0)
                    goto out;
            } else if (!keep[i] && H->tier[i] == T_ACTIVE) {
                ev[ne++] = (uint32_t)i;
            }
        }
        if ((rc = evict(a, H, ev, ne)) < 0)
            goto out;
    }
    /* steer q_l so that the threshold alone asks for the target fraction */
    double target = t ? (double)K / (double)t : 0;
    double qn = a->q[l] + ATS_GAIN * (frac_sum / KVH - target);
    a->q[l] = qn < 0 ? 0 : qn > 1 ? 1 : qn;
    a->last_sel[l] = t;
    a->st.n_realloc += l == 0;
    rc = 0;
out:
    a->st.realloc_ns += now_ns() - t0;
    free(rk);
    free(r);
    free(srt);
    free(ev);
    free(keep);
    return rc;
}

/* Fold the waiting layer's attention into the trackers (group mean and max
 * over the query heads of each KV head), then select if it is time. */
static int fold(ats_cache *a)
{
    if (a->pb_layer < 0)
        return 0;
    uint32_t l = (uint32_t)a->pb_layer;
    a->pb_layer = -1;
    uint64_t t0 = now_ns();
    uint32_t H = a->base.n_heads, KVH = a->base.n_kv_heads, G = H / KVH;
    uint64_t cap = a->base.capacity;
    float *mean = skv_malloc(cap * sizeof(float)), *mx = skv_malloc(cap * sizeof(float));
    if (!mean || !mx) {
        free(mean);
        free(mx);
        return SKV_ENOMEM;
    }
    for (uint32_t kv = 0; kv < KVH; kv++) {
        ats_head *Hd = head_at(a, l, kv);
        for (uint32_t r = 0; r < a->pb_rows; r++) {
            uint64_t s = a->pb_pos + r;
            for (uint64_t i = 0; i <= s; i++) {
                float sm = 0, m = 0;
                for (uint32_t g = 0; g < G; g++) {
                    float p = a->pbuf[((size_t)(kv * G + g) * PB_BLOCK + r) * cap + i];
                    sm += p;
                    if (p > m)
                        m = p;
                }
                mean[i] = sm / (float)G;
                mx[i] = m;
            }
            skv_rlv_track_step(Hd->tk, s, mean, mx);
        }
    }
    free(mean);
    free(mx);
    a->st.track_ns += now_ns() - t0;
    if (!a->hold && a->len[l] >= a->last_sel[l] + a->cfg.realloc)
        return select_layer(a, l);
    return 0;
}

/* ---------------------------------------------------------------- kv ops */

static int ats_append(skv_kv_cache *c, uint32_t layer, uint64_t pos, uint32_t n, const float *k,
                      const float *v)
{
    ats_cache *a = as_ats(c);
    int rc;
    if (a->err)
        return a->err;
    if ((rc = fold(a)) < 0)
        return rc;
    if (n > PB_BLOCK)
        return skv_error(SKV_EINVAL, "atskv: %u rows in one append (at most %u)", n, PB_BLOCK);
    if ((rc = skv_kv_append_check(c, layer, pos, n, a->len)) > 0) /* no re-evaluation */
        return skv_error(SKV_EINVAL, "atskv: append at %llu (+%u), layer %u holds %llu",
                         (unsigned long long)pos, n, layer, (unsigned long long)a->len[layer]);
    if (rc < 0)
        return rc;
    uint32_t hd = c->head_dim, KVH = c->n_kv_heads;
    /* every value must be an fp16 number, checked before anything changes */
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t kv = 0; kv < KVH; kv++) {
            float tk[SKV_MAX_HEAD_DIM], tv[SKV_MAX_HEAD_DIM];
            const size_t o = (size_t)i * KVH * hd + (size_t)kv * hd;
            if ((rc = ec_f16_row(k + o, v + o, tk, tv, hd, layer, kv, pos + i)) < 0)
                return rc;
        }
    for (uint32_t kv = 0; kv < KVH; kv++) {
        ats_head *H = head_at(a, layer, kv);
        for (uint32_t i = 0; i < n; i++) {
            uint64_t p = pos + i;
            const float *kr = k + (size_t)i * KVH * hd + (size_t)kv * hd;
            const float *vr = v + (size_t)i * KVH * hd + (size_t)kv * hd;
            for (uint32_t e = 0; e < hd; e++) {
                H->k[p * hd + e] = r16(kr[e]);
                H->v[p * hd + e] = r16(vr[e]);
            }
            if (a->cfg.active_bits && a->cfg.active_bits < 16) {
                /* the active tier holds what the codes decode to */
                const uint32_t g = active_group(hd), b = a->cfg.active_bits;
                for (uint32_t e = 0; e < hd; e += g) {
                    skv_ecg_quant_span(H->k + p * hd + e, H->k + p * hd + e, g, 1, b);
                    skv_ecg_quant_span(H->v + p * hd + e, H->v + p * hd + e, g, 1, b);
                }
            }
            H->tier[p] = T_ACTIVE;
            H->n_active++;
        }
    }
    if (layer == 0) {
        /* occurrences of each id among the tokens held (O(n) per token: fine
         * at evaluation lengths; a hash table in production) */
        for (uint32_t i = 0; i < n; i++) {
            uint64_t p = pos + i;
            int32_t id = p < a->n_ids ? a->ids[p] : -1;
            uint32_t cnt = 1;
            for (uint64_t j = 0; j < p && id >= 0; j++)
                if (a->ids[j] == id) {
                    a->count[j]++;
                    cnt++;
                }
            a->count[p] = id >= 0 ? cnt : 0;
        }
    }
    /* the attention of this block follows: attend() fills pbuf */
    a->pb_layer = (int)layer;
    a->pb_pos = pos;
    a->pb_rows = n;
    a->len[layer] = pos + n;
    return 0;
}

static int ats_attend(skv_kv_cache *c, uint32_t layer, uint32_t head, uint64_t pos, uint32_t n,
                      const float *q, size_t q_stride, float scale, float *out, size_t out_stride,
                      float *probs, size_t probs_stride)
{
    ats_cache *a = as_ats(c);
    uint64_t t0 = now_ns();
    uint32_t hd = c->head_dim, G = c->n_heads / c->n_kv_heads;
    ats_head *H = head_at(a, layer, head / G);
    if (n > PB_BLOCK)
        return skv_error(SKV_EINVAL, "atskv: %u query rows in one call (at most %u)", n, PB_BLOCK);
    for (uint32_t r = 0; r < n; r++) {
        uint64_t P = pos + r;
        const float *qr = q + r * q_stride;
        float *pr = probs + r * probs_stride, *o = out + r * out_stride;
        float mx = -INFINITY;
        for (uint64_t j = 0; j <= P; j++) {
            if (H->tier[j] != T_ACTIVE) {
                pr[j] = -INFINITY;
                continue;
            }
            const float *kr = H->k + j * hd;
            float d = 0;
            for (uint32_t e = 0; e < hd; e++)
                d += qr[e] * kr[e];
            pr[j] = d * scale;
            if (pr[j] > mx)
                mx = pr[j];
        }
        double z = 0;
        for (uint64_t j = 0; j <= P; j++) {
            pr[j] = H->tier[j] == T_ACTIVE ? expf(pr[j] - mx) : 0.0f;
            z += pr[j];
        }
        float iz = (float)(1.0 / z);
        memset(o, 0, hd * sizeof(float));
        for (uint64_t j = 0; j <= P; j++) {
            pr[j] *= iz;
            if (pr[j] != 0) {
                const float *vr = H->v + j * hd;
                for (uint32_t e = 0; e < hd; e++)
                    o[e] += pr[j] * vr[e];
            }
        }
        for (uint64_t j = P + 1; j < pos + n; j++)
            pr[j] = 0;
        memcpy(a->pbuf + ((size_t)head * PB_BLOCK + r) * c->capacity, pr, (P + 1) * sizeof(float));
    }
    atomic_fetch_add(&a->attend_ns, now_ns() - t0);
    return 0;
}

static int ats_truncate(skv_kv_cache *c, uint64_t n)
{
    ats_cache *a = as_ats(c);
    if (n != 0)
        return skv_error(SKV_EUNSUP, "atskv: truncation to %llu positions (only to 0)",
                         (unsigned long long)n);
    a->pb_layer = -1;
    for (uint32_t l = 0; l < c->n_layers; l++) {
        a->len[l] = a->last_sel[l] = 0;
        a->q[l] = 1 - a->cfg.alloc.budget;
        if (a->q[l] < 0)
            a->q[l] = 0;
        for (uint32_t kv = 0; kv < c->n_kv_heads; kv++) {
            ats_head *H = head_at(a, l, kv);
            blobs_clear(H);
            memset(H->tier, 0, c->capacity);
            H->n_active = H->n_passive = 0;
        }
    }
    for (uint64_t i = 0; i < c->capacity; i++)
        a->ids[i] = -1;
    a->n_ids = 0;
    a->err = 0;
    if (a->fd >= 0 && a->f_end) {
        if (ftruncate(a->fd, 0) < 0)
            return skv_error(SKV_EIO, "%s: cannot truncate: %s", a->path, strerror(errno));
        a->f_end = 0;
    }
    return 0;
}

static void ats_destroy(skv_kv_cache *c)
{
    ats_cache *a = as_ats(c);
    if (!a)
        return;
    if (a->heads)
        for (size_t h = 0; h < (size_t)c->n_layers * c->n_kv_heads; h++) {
            ats_head *H = &a->heads[h];
            blobs_clear(H);
            free(H->blobs);
            free(H->k);
            free(H->v);
            free(H->tier);
            free(H->tk);
            free(H->blob_of);
            free(H->row_of);
        }
    free(a->heads);
    free(a->hterm);
    free(a->q);
    free(a->len);
    free(a->last_sel);
    free(a->ids);
    free(a->count);
    free(a->pbuf);
    if (a->fd >= 0) {
        /* the file is this cache's scratch: closed and removed */
        close(a->fd);
        unlink(a->path);
    }
    free(a->path);
    free(a);
}

static const skv_kv_ops ats_ops = {ats_append, ats_attend, ats_truncate, ats_destroy};

skv_kv_cache *skv_atskv_new(const skv_ec_cfg *cfg, uint32_t n_layers, uint32_t n_heads,
                            uint32_t n_kv_heads, uint32_t head_dim, uint64_t capacity)
{
    if (!cfg->rlv) {
        skv_error(SKV_EINVAL, "atskv needs relevance weights (skv-alloc train)");
        return NULL;
    }
    if (cfg->rlv->n_layers < n_layers) {
        skv_error(SKV_EINVAL, "atskv: the weights cover %u layers, the model has %u",
                  cfg->rlv->n_layers, n_layers);
        return NULL;
    }
    if (!capacity || capacity > UINT32_MAX || !n_kv_heads || n_heads % n_kv_heads) {
        skv_error(SKV_EINVAL, "atskv: bad shape");
        return NULL;
    }
    ats_cache *a = skv_calloc(1, sizeof *a);
    if (!a)
        return NULL;
    skv_kv_base_init(&a->base, &ats_ops, n_layers, n_heads, n_kv_heads, head_dim, capacity);
    a->cfg = *cfg;
    a->rlv = cfg->rlv;
    a->pb_layer = -1;
    a->fd = -1;
    size_t NH = (size_t)n_layers * n_kv_heads, cap = (size_t)capacity;
    if (!(a->heads = skv_calloc(NH, sizeof *a->heads)) ||
        !(a->hterm = skv_calloc((size_t)n_layers * cap, sizeof(float))) ||
        !(a->q = skv_calloc(n_layers, sizeof(double))) ||
        !(a->len = skv_calloc(n_layers, sizeof(uint64_t))) ||
        !(a->last_sel = skv_calloc(n_layers, sizeof(uint64_t))) ||
        !(a->ids = skv_calloc(cap, sizeof(int32_t))) ||
        !(a->count = skv_calloc(cap, sizeof(uint32_t))) ||
        !(a->pbuf = skv_calloc((size_t)n_heads * PB_BLOCK * cap, sizeof(float))))
        goto fail;
    for (size_t h = 0; h < NH; h++) {
        ats_head *H = &a->heads[h];
        if (!(H->k = skv_calloc(cap * head_dim, sizeof(float))) ||
            !(H->v = skv_calloc(cap * head_dim, sizeof(float))) || !(H->tier = skv_calloc(cap, 1)) ||
            !(H->tk = skv_calloc(cap, sizeof *H->tk)) ||
            !(H->blob_of = skv_calloc(cap, sizeof(uint32_t))) ||
            !(H->row_of = skv_calloc(cap, sizeof(uint32_t))))
            goto fail;
    }
    if (cfg->offload) {
        size_t pl = strlen(cfg->offload) + 1;
        if (!(a->path = skv_malloc(pl)))
            goto fail;
        memcpy(a->path, cfg->offload, pl);
        /* never over an existing file: it is removed with the cache */
        a->fd = open(a->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (a->fd < 0) {
            skv_error(SKV_EIO, "%s: cannot create the offload file: %s", a->path, strerror(errno));
            goto fail;
        }
    }
    ats_truncate(&a->base, 0);
    return &a->base;
fail:
    ats_destroy(&a->base);
    return NULL;
}

/* ---------------------------------------------------------------- hooks */

static void hidden_hook(void *ctx, uint32_t layer, uint64_t pos, uint32_t n, const float *x,
                        uint32_t n_embd)
{
    ats_cache *a = ctx;
    uint64_t cap = a->base.capacity, m = pos < cap ? (cap - pos < n ? cap - pos : n) : 0;
    int rc = skv_rlv_hidden_terms(a->rlv, layer, x, (uint32_t)m, n_embd,
                                  m ? a->hterm + (size_t)layer * cap + pos : NULL);
    if (rc < 0)
        a->err = rc;
}

void skv_atskv_attach(skv_kv_cache *c, skv_session *s, const skv_tokenizer *tk)
{
    ats_cache *a = as_ats(c);
    if (!a) {
        skv_ecg_attach(c, s, tk);   /* a grouped cache with importance atskv */
        return;
    }
    a->tok = tk;
    skv_session_set_hidden_hook(s, hidden_hook, a);
}

void skv_atskv_tokens(skv_kv_cache *c, const int32_t *ids, uint32_t n)
{
    ats_cache *a = as_ats(c);
    if (!a) {
        skv_ecg_tokens(c, ids, n);
        return;
    }
    /* the next tokens start where layer 0 ends */
    uint64_t p = a->len[0];
    for (uint32_t i = 0; i < n && p + i < c->capacity; i++)
        a->ids[p + i] = ids[i];
    if (p + n > a->n_ids)
        a->n_ids = p + n < c->capacity ? p + n : c->capacity;
}

/* ---------------------------------------------------------------- evalcache */

int skv_atskv_select(skv_kv_cache *c)
{
    ats_cache *a = as_ats(c);
    int rc = fold(a);
    for (uint32_t l = 0; rc == 0 && l < c->n_layers; l++)
        rc = select_layer(a, l);
    return rc;
}

void skv_atskv_hold(skv_kv_cache *c, int hold)
{
    ats_cache *a = as_ats(c);
    if (a)
        a->hold = hold;
}

int skv_atskv_stats(const skv_kv_cache *cc, skv_ec_stats *s)
{
    ats_cache *a = as_ats((skv_kv_cache *)cc);
    const skv_kv_cache *c = cc;
    *s = a->st;
    s->attend_ns = atomic_load(&a->attend_ns);
    s->recall_ns = a->recall_ns;
    s->n_tokens = a->len[0];
    s->n_alloc = a->len[0];
    s->fp16_bytes = skv_alloc_fp16_bytes(c->n_layers, c->n_kv_heads, s->n_tokens, c->head_dim);
    memset(s->hist, 0, sizeof s->hist);
    uint64_t act = 0, pas = 0, zb = 0;
    for (size_t h = 0; h < (size_t)c->n_layers * c->n_kv_heads; h++) {
        const ats_head *H = &a->heads[h];
        act += H->n_active;
        pas += H->n_passive;
        for (uint32_t b = 0; b < H->n_blobs; b++)
            zb += H->blobs[b].live ? H->blobs[b].zlen + sizeof(blob) : 0;
    }
    s->hist[0] = pas;
    s->hist[SKV_NBITS - 1] = act;
    s->bytes = act * active_row_bytes(a) + fixed_bytes(a);
    s->meta_bytes = 0; /* the tracking state is inside bytes */
    s->passive_rows = pas;
    s->passive_bytes = zb + pas * (TOK_META + 2 * sizeof(uint32_t));
    s->mem_bytes = act * 4ull * c->head_dim + (a->fd >= 0 ? 0 : zb);
    s->offload_file = a->f_end;
    return 0;
}

void skv_atskv_stats_reset(skv_kv_cache *c)
{
    ats_cache *a = as_ats(c);
    if (!a)
        return;
    memset(&a->st, 0, sizeof a->st);
    atomic_store(&a->attend_ns, 0);
    a->recall_ns = 0;
}
