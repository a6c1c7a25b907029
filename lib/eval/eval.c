/* eval.c -- perplexity/KL against the fp16 cache and pass-key retrieval with
 * the compressed cache in the decode loop (smartkv_eval.h). */
#include "smartkv_eval.h"
#include "smartkv_atskv.h"
#include "smartkv_error.h"
#include "smartkv_gguf.h"
#include "smartkv_tokenizer.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double skv_logits_kl(const float *lp, const float *lq, uint32_t n)
{
    double mp = -INFINITY, mq = -INFINITY;
    for (uint32_t i = 0; i < n; i++) {
        if (lp[i] > mp)
            mp = lp[i];
        if (lq[i] > mq)
            mq = lq[i];
    }
    double sp = 0, sq = 0;
    for (uint32_t i = 0; i < n; i++) {
        sp += exp((double)lp[i] - mp);
        sq += exp((double)lq[i] - mq);
    }
    if (!(sp > 0) || !(sq > 0)) /* n == 0, or non-finite logits */
        return NAN;
    double zp = mp + log(sp), zq = mq + log(sq), kl = 0;
    for (uint32_t i = 0; i < n; i++) {
        double a = (double)lp[i] - zp, b = (double)lq[i] - zq;
        double p = exp(a);
        if (p > 0)
            kl += p * (a - b);
    }
    return kl > 0 ? kl : 0;
}

static skv_kv_cache *cache_for(const skv_model_params *p, const skv_ec_cfg *cfg, uint64_t cap)
{
    return skv_ec_new(cfg, p->n_layers, p->n_heads, p->n_kv_heads, p->head_dim, cap);
}

/* Evaluate tokens, telling an ATSKV cache their ids first. */
static int sess_eval(skv_session *s, skv_kv_cache *c, const int32_t *ids, uint32_t n,
                     float *logits, int mode)
{
    skv_atskv_tokens(c, ids, n);
    return skv_session_eval(s, ids, n, logits, mode);
}

static double cache_beta(skv_kv_cache *c)
{
    skv_ec_stats s;
    if (skv_ec_stats_get(c, &s) < 0 || !s.fp16_bytes)
        return 0;
    /* every byte: the cache and the tracking state */
    return (double)(s.bytes + s.meta_bytes) / (double)s.fp16_bytes;
}

/* ---------------------------------------------------------------- reference reuse */

#define REF_BLOCK 64u

typedef struct ref_hdr {
    char magic[8];          /* "SKVREF1" */
    uint64_t model_hash, tok_hash;
    uint64_t n, ctx, stride, prefill, n_scored;
    uint32_t n_vocab, q8;
} ref_hdr;

typedef struct ref_map {
    void *base;
    size_t size;
    const float *logits;    /* [n_scored][n_vocab] */
    uint64_t n_scored;
} ref_map;

static uint64_t hash_bytes(uint64_t h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (; n >= 8; n -= 8, b += 8) {
        uint64_t w;
        memcpy(&w, b, 8);
        h = (h ^ w) * 0x100000001b3ull;
        h ^= h >> 29;
    }
    for (; n; n--, b++)
        h = (h ^ *b) * 0x100000001b3ull;
    return h;
}

/* Positions scored by the windows (b, b+ctx) every stride, in order. */
static uint64_t count_scored(uint64_t n, uint64_t ctx, uint64_t stride)
{
    uint64_t k = 0, prev_end = 0;
    for (uint64_t b = 0;; b += stride) {
        uint64_t e = b + ctx < n ? b + ctx : n, from = prev_end > b + 1 ? prev_end : b + 1;
        k += e > from ? e - from : 0;
        prev_end = e;
        if (e == n)
            return k;
    }
}

/* The fp16 reference over every window, the logits of each scored position
 * appended to f in order. */
static int ref_run(skv_model *m, const int32_t *tokens, const ref_hdr *h, FILE *f, const char *path)
{
    const skv_model_params *p = skv_model_get_params(m);
    const uint32_t V = p->n_vocab, P = (uint32_t)h->prefill;
    uint32_t maxchunk = P > REF_BLOCK ? P : REF_BLOCK;
    skv_ec_cfg rcfg;
    skv_ec_defaults(&rcfg);
    rcfg.kind = SKV_EC_FP16;
    skv_kv_cache *c = cache_for(p, &rcfg, h->ctx);
    skv_session *s = c ? skv_session_new(m, c, h->ctx) : NULL;
    float *lr = skv_malloc((size_t)maxchunk * V * sizeof(float));
    int rc = SKV_ENOMEM;
    if (!s || !lr)
        goto out;
    uint64_t prev_end = 0, k = 0;
    for (uint64_t b = 0;; b += h->stride) {
        uint64_t e = b + h->ctx < h->n ? b + h->ctx : h->n, len = e - b;
        uint64_t from = prev_end > b + 1 ? prev_end : b + 1;
        if ((rc = skv_session_reset(s)) < 0)
            goto out;
        for (uint64_t c0 = 0; c0 < len;) {
            uint64_t c1 = c0 == 0 && P > 1 ? (P < len ? P : len)
                                            : (c0 + REF_BLOCK < len ? c0 + REF_BLOCK : len);
            int want = b + c1 >= from;
            if ((rc = skv_session_eval(s, tokens + b + c0, (uint32_t)(c1 - c0), want ? lr : NULL,
                                       want ? SKV_LOGITS_ALL : SKV_LOGITS_NONE)) < 0)
                goto out;
            for (uint64_t i = c0; want && i < c1; i++) {
                uint64_t t = b + i + 1;
                if (t < from || t >= e)
                    continue;
                if (fwrite(lr + (size_t)(i - c0) * V, sizeof(float), V, f) != V) {
                    rc = skv_error(SKV_EIO, "%s: write error: %s", path, strerror(errno));
                    goto out;
                }
                k++;
            }
            c0 = c1;
        }
        prev_end = e;
        if (e == h->n)
            break;
    }
    rc = k == h->n_scored ? 0 : skv_error(SKV_EINVAL, "reference: %llu positions scored, %llu "
                                          "expected", (unsigned long long)k,
                                          (unsigned long long)h->n_scored);
out:
    skv_session_free(s);
    skv_kv_cache_free(c);
    free(lr);
    return rc;
}

/* Map an existing reference file: 1 when it holds h's key, 0 when absent or
 * stale (then it is recomputed), <0 on an I/O error. */
static int ref_open(const char *path, const ref_hdr *h, ref_map *rm)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return errno == ENOENT ? 0 : skv_error(SKV_EIO, "%s: %s", path, strerror(errno));
    struct stat st;
    ref_hdr got;
    size_t want = sizeof *h + (size_t)h->n_scored * h->n_vocab * sizeof(float);
    if (fstat(fd, &st) < 0 || (size_t)st.st_size != want ||
        pread(fd, &got, sizeof got, 0) != (ssize_t)sizeof got || memcmp(&got, h, sizeof got) != 0) {
        close(fd);
        return 0;
    }
    void *b = mmap(NULL, want, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (b == MAP_FAILED)
        return skv_error(SKV_EIO, "%s: mmap: %s", path, strerror(errno));
    rm->base = b;
    rm->size = want;
    const void *data = (const uint8_t *)b + sizeof *h;   /* 8-byte aligned: floats */
    rm->logits = data;
    rm->n_scored = h->n_scored;
    return 1;
}

/* Find or make the reference for these windows; *secs: time spent making it. */
static int ref_get(skv_model *m, const int32_t *tokens, uint64_t n, uint64_t ctx, uint64_t stride,
                   uint32_t prefill, const char *dir, ref_map *rm, double *secs)
{
    const skv_gguf *g = skv_model_gguf(m);
    ref_hdr h;
    memset(&h, 0, sizeof h);
    memcpy(h.magic, "SKVREF1", 8);
    h.model_hash = hash_bytes(0xcbf29ce484222325ull, g->base, g->size);
    h.tok_hash = hash_bytes(0xcbf29ce484222325ull, tokens, n * sizeof *tokens);
    h.n = n;
    h.ctx = ctx;
    h.stride = stride;
    h.prefill = prefill;
    h.n_scored = count_scored(n, ctx, stride);
    h.n_vocab = skv_model_get_params(m)->n_vocab;
    h.q8 = (uint32_t)skv_model_q8(m);
    uint64_t key = hash_bytes(0x84222325cbf29ce4ull, &h, sizeof h);
    char path[4096], lock[4096], tmp[4096 + 32];
    int w = snprintf(path, sizeof path, "%s/ref-%016llx.bin", dir, (unsigned long long)key);
    snprintf(lock, sizeof lock, "%s/ref-%016llx.lock", dir, (unsigned long long)key);
    snprintf(tmp, sizeof tmp, "%s.tmp%ld", path, (long)getpid());
    if (w < 0 || (size_t)w + 16 >= sizeof path)
        return skv_error(SKV_EINVAL, "%s: reference cache directory name too long", dir);
    if (mkdir(dir, 0755) < 0 && errno != EEXIST)
        return skv_error(SKV_EIO, "%s: %s", dir, strerror(errno));
    int lfd = open(lock, O_RDWR | O_CREAT, 0644);
    if (lfd < 0)
        return skv_error(SKV_EIO, "%s: %s", lock, strerror(errno));
    int rc;
    *secs = 0;
    if (flock(lfd, LOCK_EX) < 0) {
        rc = skv_error(SKV_EIO, "%s: lock: %s", lock, strerror(errno));
        goto out;
    }
    if ((rc = ref_open(path, &h, rm)) != 0)
        goto out;   /* found (1) or error */
    double t0 = now_s();
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        rc = skv_error(SKV_EIO, "%s: %s", tmp, strerror(errno));
        goto out;
    }
    if (fwrite(&h, sizeof h, 1, f) != 1)
        rc = skv_error(SKV_EIO, "%s: write error: %s", tmp, strerror(errno));
    else
        rc = ref_run(m, tokens, &h, f, tmp);
    if (fclose(f) != 0 && rc >= 0)
        rc = skv_error(SKV_EIO, "%s: write error: %s", tmp, strerror(errno));
    if (rc >= 0 && rename(tmp, path) != 0)
        rc = skv_error(SKV_EIO, "%s: %s", path, strerror(errno));
    if (rc < 0) {
        unlink(tmp);
        goto out;
    }
    *secs = now_s() - t0;
    if ((rc = ref_open(path, &h, rm)) == 0)
        rc = skv_error(SKV_EIO, "%s: written but unreadable", path);
out:
    close(lfd);   /* releases the lock */
    return rc < 0 ? rc : 0;
}

int skv_eval_ppl(skv_model *m, const int32_t *tokens, uint64_t n, const skv_ec_cfg *cfg,
                 const skv_ppl_opts *o, skv_ppl_result *r)
{
    skv_ppl_opts def = {0};
    def.reference = 1;
    if (!o)
        o = &def;
    memset(r, 0, sizeof *r);
    const skv_model_params *p = skv_model_get_params(m);
    const uint32_t V = p->n_vocab;
    if (o->max_tokens && n > o->max_tokens)
        n = o->max_tokens;
    if (n < 2)
        return skv_error(SKV_EINVAL, "perplexity needs at least 2 tokens (%llu given)",
                         (unsigned long long)n);
    uint64_t ctx = o->ctx ? o->ctx : 512;
    if (ctx > n)
        ctx = n;
    if (ctx < 2)
        return skv_error(SKV_EINVAL, "context of %llu tokens is too short", (unsigned long long)ctx);
    uint64_t stride = o->stride ? o->stride : (ctx / 2 ? ctx / 2 : 1);
    if (stride > ctx)
        return skv_error(SKV_EINVAL, "stride %llu exceeds the context %llu",
                         (unsigned long long)stride, (unsigned long long)ctx);
    uint32_t B = o->block ? o->block
                         : (cfg->kind == SKV_EC_COMPRESS || cfg->kind == SKV_EC_PRUNE_MERGE ||
                                    cfg->kind == SKV_EC_ATSKV || cfg->kind == SKV_EC_ZACK
                                ? cfg->realloc : 64);
    if (B > 64)
        B = 64;  /* the model evaluates at most 64 tokens per block anyway */
    uint32_t P = o->prefill;
    if (P > ctx)
        P = (uint32_t)ctx;
    uint32_t maxchunk = P > B ? P : B;
    int rc = 0, q8_was = skv_model_set_q8(m, o->int8);
    skv_ec_cfg rcfg;
    skv_ec_defaults(&rcfg);
    rcfg.kind = SKV_EC_FP16;
    skv_kv_cache *tc = NULL, *rc_cache = NULL;
    skv_session *ts = NULL, *rs = NULL;
    float *lt = NULL, *lr = NULL;
    ref_map rm = {NULL, 0, NULL, 0};
    double t_made = 0;
    size_t nl;
    if (skv_mul_sizes(&nl, 3, (size_t)maxchunk, (size_t)V, sizeof(float)) < 0) {
        rc = skv_error(SKV_ELIMIT, "logits buffer overflows");
        goto out;
    }
    rc = SKV_ENOMEM;
    if (!(tc = cache_for(p, cfg, ctx)) || !(ts = skv_session_new(m, tc, ctx)) ||
        !(lt = skv_malloc(nl)))
        goto out;
    skv_atskv_attach(tc, ts, skv_model_tokenizer(m));
    if (o->reference && o->ref_cache) {
        if ((rc = ref_get(m, tokens, n, ctx, stride, P, o->ref_cache, &rm, &t_made)) < 0)
            goto out;
    } else if (o->reference && (!(rc_cache = cache_for(p, &rcfg, ctx)) ||
                                !(rs = skv_session_new(m, rc_cache, ctx)) || !(lr = skv_malloc(nl)))) {
        goto out;
    }
    /* total work for progress */
    uint64_t total = 0;
    for (uint64_t b = 0;; b += stride) {
        uint64_t e = b + ctx < n ? b + ctx : n;
        total += e - b;
        if (e == n)
            break;
    }
    uint64_t done = 0, prev_end = 0, n_win = 0, k_ref = 0;
    double nll = 0, nll_ref = 0, kl = 0, top1 = 0, beta = 0, beta_end = 0, meta = 0;
    double t_test = 0, t_ref = 0;
    skv_ec_stats acc;
    memset(&acc, 0, sizeof acc);
    for (uint64_t b = 0;; b += stride) {
        uint64_t e = b + ctx < n ? b + ctx : n, len = e - b;
        uint64_t from = prev_end > b + 1 ? prev_end : b + 1;  /* first target scored */
        if ((rc = skv_session_reset(ts)) < 0 || (rs && (rc = skv_session_reset(rs)) < 0))
            goto out;
        for (uint64_t c0 = 0; c0 < len;) {
            uint64_t c1;
            int pre = c0 == 0 && P > 1;
            if (pre)
                c1 = P < len ? P : len;
            else
                c1 = c0 + B < len ? c0 + B : len;
            uint32_t nc = (uint32_t)(c1 - c0);
            int want = b + c1 >= from;  /* some target b+i+1 >= from with i < c1 */
            int mode = want ? SKV_LOGITS_ALL : SKV_LOGITS_NONE;
            double t0 = now_s();
            if (pre)
                skv_ec_hold(tc, 1);
            if ((rc = sess_eval(ts, tc, tokens + b + c0, nc, want ? lt : NULL, mode)) < 0)
                goto out;
            if (pre) {
                skv_ec_hold(tc, 0);
                if ((rc = skv_ec_realloc(tc)) < 0)
                    goto out;
            }
            double t1 = now_s();
            t_test += t1 - t0;
            if (rs && (rc = skv_session_eval(rs, tokens + b + c0, nc, want ? lr : NULL, mode)) < 0)
                goto out;
            t_ref += now_s() - t1;
            double bnow = cache_beta(tc);
            if (want)
                for (uint64_t i = c0; i < c1; i++) {
                    uint64_t t = b + i + 1;
                    if (t < from || t >= e)
                        continue;
                    const float *a = lt + (size_t)(i - c0) * V;
                    nll -= skv_logprob(a, V, tokens[t]);
                    if (rm.logits && k_ref >= rm.n_scored) {
                        rc = skv_error(SKV_EINVAL, "reference: more positions scored than cached");
                        goto out;
                    }
                    const float *f = rm.logits ? rm.logits + (size_t)k_ref++ * V
                                     : rs ? lr + (size_t)(i - c0) * V : NULL;
                    if (f) {
                        nll_ref -= skv_logprob(f, V, tokens[t]);
                        double k = skv_logits_kl(f, a, V);
                        kl += k;
                        if (k > r->kl_max)
                            r->kl_max = k;
                        top1 += skv_argmax(f, V) == skv_argmax(a, V);
                    }
                    beta += bnow;
                    r->n_scored++;
                }
            done += nc;
            if (o->progress)
                o->progress(o->progress_ctx, done, total);
            c0 = c1;
        }
        skv_ec_stats s;
        if ((rc = skv_ec_stats_get(tc, &s)) < 0)
            goto out;
        beta_end += s.fp16_bytes ? (double)(s.bytes + s.meta_bytes) / (double)s.fp16_bytes : 0;
        meta += s.fp16_bytes ? (double)s.meta_bytes / (double)s.fp16_bytes : 0;
        acc = s;
        n_win++;
        prev_end = e;
        if (e == n)
            break;
    }
    r->n_tokens = n;
    r->n_windows = n_win;
    double ns = r->n_scored ? (double)r->n_scored : 1;
    r->nll = nll / ns;
    r->ppl = exp(r->nll);
    if (rs || rm.logits) {
        r->nll_ref = nll_ref / ns;
        r->ppl_ref = exp(r->nll_ref);
        r->kl = kl / ns;
        r->top1 = top1 / ns;
    } else {
        r->nll_ref = r->ppl_ref = r->kl = r->kl_max = r->top1 = NAN;
    }
    r->beta = beta / ns;
    r->beta_end = beta_end / (double)n_win;
    r->meta_frac = meta / (double)n_win;
    r->beta_alloc = acc.n_realloc ? acc.alloc_beta_sum / (double)acc.n_realloc : r->beta_end;
    r->stats = acc;
    r->seconds = t_test;
    r->ref_seconds = rm.logits ? t_made : t_ref;
    rc = 0;
out:
    skv_model_set_q8(m, q8_was);
    if (rm.base)
        munmap(rm.base, rm.size);
    skv_session_free(ts);
    skv_session_free(rs);
    skv_kv_cache_free(tc);
    skv_kv_cache_free(rc_cache);
    free(lt);
    free(lr);
    return rc;
}

/* ---------------------------------------------------------------- needle */

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int tok(const skv_tokenizer *t, const char *s, int32_t **ids, size_t *n)
{
    return skv_tokenize(t, s, strlen(s), 0, ids, n);
}

static int append_ids(int32_t *dst, size_t *len, size_t cap, const int32_t *src, size_t n)
{
    if (n > cap - *len)
        return skv_error(SKV_EINVAL, "needle prompt overflows its buffer");
    memcpy(dst + *len, src, n * sizeof *src);
    *len += n;
    return 0;
}

int skv_eval_needle(skv_model *m, const skv_ec_cfg *cfg, uint32_t length, uint32_t depth_pct,
                    const skv_needle_opts *o, skv_needle_result *r)
{
    static const char intro[] =
        "There is an important piece of information hidden inside a lot of irrelevant text. "
        "Find it and memorize it. I will quiz you about the important information there.";
    static const char filler[] =
        " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back "
        "again.";
    static const char question[] = " What is the pass key? The pass key is";
    skv_needle_opts def = {0};
    if (!o)
        o = &def;
    memset(r, 0, sizeof *r);
    if (depth_pct > 100)
        return skv_error(SKV_EINVAL, "needle depth %u%% is beyond 100", depth_pct);
    const skv_tokenizer *tk = skv_model_tokenizer(m);
    if (!tk)
        return skv_error(SKV_EUNSUP, "needle: the model's tokenizer is not supported: %s",
                         skv_model_tokenizer_error(m));
    const skv_model_params *p = skv_model_get_params(m);
    uint32_t max_new = o->max_new ? o->max_new : 8;
    uint64_t s = o->seed * 0x100000001b3ull ^ ((uint64_t)length << 20) ^ depth_pct;
    r->key = 10000 + (uint32_t)(splitmix(&s) % 90000);
    char needle[128];
    snprintf(needle, sizeof needle, " The pass key is %u. Remember it. %u is the pass key.",
             r->key, r->key);
    int32_t *a = NULL, *f = NULL, *nd = NULL, *q = NULL, *prompt = NULL, *gen = NULL;
    size_t na = 0, nf = 0, nn = 0, nq = 0, np = 0;
    skv_kv_cache *c = NULL;
    skv_session *ss = NULL;
    float *logits = NULL;
    int rc;
    if ((rc = tok(tk, intro, &a, &na)) < 0 || (rc = tok(tk, filler, &f, &nf)) < 0 ||
        (rc = tok(tk, needle, &nd, &nn)) < 0 || (rc = tok(tk, question, &q, &nq)) < 0)
        goto out;
    int add_bos = 0;
    if (skv_gguf_find(skv_model_gguf(m), "tokenizer.ggml.add_bos_token"))
        skv_gguf_get_bool(skv_model_gguf(m), "tokenizer.ggml.add_bos_token", &add_bos);
    int32_t bos = add_bos ? skv_tokenizer_bos(tk) : -1;
    size_t fixed = (bos >= 0) + na + nn + nq;
    size_t n_fill = length > fixed && nf ? (length - fixed) / nf : 0;
    size_t at = (size_t)((double)n_fill * depth_pct / 100.0 + 0.5);
    size_t cap = fixed + n_fill * nf;
    rc = SKV_ENOMEM;
    if (!(prompt = skv_malloc(cap * sizeof *prompt)) || !(gen = skv_malloc(max_new * sizeof *gen)))
        goto out;
    if (bos >= 0)
        prompt[np++] = bos;
    if ((rc = append_ids(prompt, &np, cap, a, na)) < 0)
        goto out;
    for (size_t i = 0; i <= n_fill; i++) {
        if (i == at) {
            r->needle_pos = (uint32_t)np;
            if ((rc = append_ids(prompt, &np, cap, nd, nn)) < 0)
                goto out;
        }
        if (i < n_fill && (rc = append_ids(prompt, &np, cap, f, nf)) < 0)
            goto out;
    }
    if ((rc = append_ids(prompt, &np, cap, q, nq)) < 0)
        goto out;
    r->n_prompt = (uint32_t)np;
    double t0 = now_s();
    rc = SKV_ENOMEM;
    if (!(c = cache_for(p, cfg, np + max_new)) || !(ss = skv_session_new(m, c, np + max_new)) ||
        !(logits = skv_malloc((size_t)p->n_vocab * sizeof *logits)))
        goto out;
    skv_atskv_attach(c, ss, tk);
    skv_ec_hold(c, 1);
    if ((rc = sess_eval(ss, c, prompt, (uint32_t)np, logits, SKV_LOGITS_LAST)) < 0)
        goto out;
    skv_ec_hold(c, 0);
    if ((rc = skv_ec_realloc(c)) < 0)
        goto out;
    r->beta = cache_beta(c);
    uint32_t ng = 0;
    for (uint32_t i = 0; i < max_new; i++) {
        int32_t id = skv_argmax(logits, p->n_vocab);
        if (skv_tokenizer_is_eog(tk, id))
            break;
        gen[ng++] = id;
        if (i + 1 == max_new)
            break;
        if ((rc = sess_eval(ss, c, &id, 1, logits, SKV_LOGITS_LAST)) < 0)
            goto out;
    }
    r->seconds = now_s() - t0;
    char *text = NULL;
    size_t tl = 0;
    if ((rc = skv_detokenize(tk, gen, ng, 0, &text, &tl)) < 0)
        goto out;
    size_t w = 0;
    for (size_t i = 0; i < tl && w + 1 < sizeof r->answer; i++) {
        unsigned char ch = (unsigned char)text[i];
        r->answer[w++] = ch == '\n' || ch == '\t' ? ' ' : (ch < 32 || ch == 127 ? '?' : (char)ch);
    }
    r->answer[w] = 0;
    /* the first number in the answer */
    const char *d = text;
    while (*d && !isdigit((unsigned char)*d))
        d++;
    char want[16];
    snprintf(want, sizeof want, "%u", r->key);
    size_t dl = 0;
    while (isdigit((unsigned char)d[dl]))
        dl++;
    r->correct = dl == strlen(want) && memcmp(d, want, dl) == 0;
    free(text);
    rc = 0;
out:
    skv_session_free(ss);
    skv_kv_cache_free(c);
    free(logits);
    free(a);
    free(f);
    free(nd);
    free(q);
    free(prompt);
    free(gen);
    return rc;
}
