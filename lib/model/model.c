/* model.c -- Llama-family forward pass over GGUF weights.
 *
 * One code path, layer_block(), runs a block of tokens through one layer; a
 * session calls it layer after layer for each block (token-major: prefill
 * and decode), the trace recorder calls it block after block for each layer
 * (layer-major: one layer's activations in memory at a time).
 */
#include "smartkv_model.h"
#include "smartkv_trace.h"

#include <math.h>
#include <pthread.h>
#include <sys/mman.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

#define BLOCK_DEFAULT 64u   /* tokens per prefill block */
#define ROWS_PER_TASK 16u   /* least output rows per matmul task (a multiple of 8) */
#define TASKS_PER_THREAD 8u /* matmul tasks per thread when rows allow */

/* ---------------- thread pool ----------------
 *
 * The work of one parallel step is published as a single 64-bit word:
 * generation (16 bits) | task count (24) | next task (24).  Threads claim
 * tasks with compare-and-swap on that word, so a claim is always for the
 * current step, and the caller waits for the *tasks* to finish, never for
 * every worker to check in: on a busy machine a worker that is not
 * scheduled simply takes no part, instead of stalling the step. */

typedef void (*task_fn)(void *ctx, uint32_t task, int thread);

#define W_GEN(v) ((v) >> 48)
#define W_N(v) ((uint32_t)((v) >> 24) & 0xffffffu)
#define W_NEXT(v) ((uint32_t)(v) & 0xffffffu)
#define W_MAX_TASKS 0xffffffu

typedef struct pool {
    int n;                      /* threads including the caller */
    pthread_t th[SKV_MODEL_MAX_THREADS];
    int started;
    pthread_mutex_t mu;
    pthread_cond_t cv;          /* workers sleep here when there is no work */
    pthread_cond_t cv_done;     /* the caller sleeps here for the last task */
    task_fn fn;
    void *ctx;
    _Atomic uint64_t work;
    atomic_uint done;           /* tasks finished in the current step */
    atomic_int stop;
} pool;

typedef struct worker_arg {
    pool *p;
    int tid;
} worker_arg;

static int pool_claim(pool *p, uint32_t *task, uint32_t *n)
{
    uint64_t v = atomic_load(&p->work);
    while (W_NEXT(v) < W_N(v)) {
        if (atomic_compare_exchange_weak(&p->work, &v, v + 1)) {
            *task = W_NEXT(v);
            *n = W_N(v);
            return 1;
        }
    }
    return 0;
}

static void pool_work(pool *p, int tid)
{
    uint32_t t, n;
    while (pool_claim(p, &t, &n)) {
        p->fn(p->ctx, t, tid);
        if (atomic_fetch_add(&p->done, 1) + 1 == n) {
            pthread_mutex_lock(&p->mu);
            pthread_cond_signal(&p->cv_done);
            pthread_mutex_unlock(&p->mu);
        }
    }
}

static int pool_has_work(pool *p)
{
    uint64_t v = atomic_load(&p->work);
    return W_NEXT(v) < W_N(v);
}

static void *pool_main(void *arg)
{
    worker_arg *wa = arg;
    pool *p = wa->p;
    int tid = wa->tid;
    free(wa);
    for (;;) {
        pool_work(p, tid);
        for (int spins = 0; !pool_has_work(p) && !atomic_load(&p->stop); spins++) {
            if (spins < 4096) {
                CPU_RELAX();
                continue;
            }
            pthread_mutex_lock(&p->mu);
            while (!pool_has_work(p) && !atomic_load(&p->stop))
                pthread_cond_wait(&p->cv, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop))
            return NULL;
    }
}

static int pool_init(pool *p, int n)
{
    memset(p, 0, sizeof *p);
    p->n = n;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    pthread_cond_init(&p->cv_done, NULL);
    for (int i = 1; i < n; i++) {
        worker_arg *wa = skv_malloc(sizeof *wa);
        if (!wa)
            return SKV_ENOMEM;
        wa->p = p;
        wa->tid = i;
        if (pthread_create(&p->th[i], NULL, pool_main, wa)) {
            free(wa);
            p->n = i;
            return skv_error(SKV_ENOMEM, "cannot start worker thread %d", i);
        }
        p->started = i;
    }
    return 0;
}

static void pool_destroy(pool *p)
{
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i <= p->started; i++)
        pthread_join(p->th[i], NULL);
    pthread_cond_destroy(&p->cv);
    pthread_cond_destroy(&p->cv_done);
    pthread_mutex_destroy(&p->mu);
}

static void pool_run(pool *p, task_fn fn, void *ctx, uint32_t n_tasks)
{
    if (p->n <= 1 || n_tasks <= 1 || n_tasks > W_MAX_TASKS) {
        for (uint32_t t = 0; t < n_tasks; t++)
            fn(ctx, t, 0);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    atomic_store(&p->done, 0);
    uint64_t gen = (W_GEN(atomic_load(&p->work)) + 1) & 0xffffu;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->work, gen << 48 | (uint64_t)n_tasks << 24);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    pool_work(p, 0);
    /* Spin briefly (the other tasks are usually about to finish), then sleep. */
    for (int spins = 0; atomic_load(&p->done) < n_tasks; spins++) {
        if (spins < 4096) {
            CPU_RELAX();
            continue;
        }
        pthread_mutex_lock(&p->mu);
        while (atomic_load(&p->done) < n_tasks)
            pthread_cond_wait(&p->cv_done, &p->mu);
        pthread_mutex_unlock(&p->mu);
    }
}

/* ---------------- model ---------------- */

typedef struct layer_w {
    const skv_gguf_tensor *wq, *wk, *wv, *wo, *gate, *up, *down;
    float *attn_norm, *ffn_norm;
    float *bq, *bk, *bv;    /* qwen2 biases, or NULL */
} layer_w;

struct skv_model {
    skv_model_params p;
    skv_gguf *g;
    skv_tokenizer *tok;
    char tok_err[256];
    const skv_gguf_tensor *embd, *output;
    float *out_norm;
    layer_w *layers;
    float *inv_freq;        /* n_rot/2 */
    uint32_t max_k;         /* longest matmul input row */
    int act_q8;             /* matrix products on int8 activations where the type allows */
    pool pool;
    int pool_ok;
    const uint8_t **x8;     /* per GGUF tensor: its rows packed by 8 (skv_q8x8), or NULL */
    void *wmem;             /* the mapping that holds them */
    size_t wmem_size;
};

static int get_tensor(skv_model *m, const char *name, uint64_t ne0, uint64_t ne1, int optional,
                      const skv_gguf_tensor **out)
{
    const skv_gguf_tensor *t = skv_gguf_tensor_find(m->g, name);
    *out = NULL;
    if (!t) {
        if (optional)
            return 0;
        return skv_error(SKV_EFORMAT, "%s: tensor %s is missing", m->g->path, name);
    }
    if (t->ne[0] != ne0 || t->ne[1] != ne1 || t->ne[2] != 1 || t->ne[3] != 1)
        return skv_error(SKV_EFORMAT, "%s: tensor %s has shape [%llu, %llu, %llu, %llu], expected "
                         "[%llu, %llu]", m->g->path, name, (unsigned long long)t->ne[0],
                         (unsigned long long)t->ne[1], (unsigned long long)t->ne[2],
                         (unsigned long long)t->ne[3], (unsigned long long)ne0,
                         (unsigned long long)ne1);
    *out = t;
    return 0;
}

/* A small vector tensor (norm weight, bias) dequantized to float. */
static int get_vector(skv_model *m, const char *name, uint64_t n, int optional, float **out)
{
    const skv_gguf_tensor *t;
    int rc = get_tensor(m, name, n, 1, optional, &t);
    *out = NULL;
    if (rc < 0 || !t)
        return rc;
    if (!(*out = skv_malloc(n * sizeof(float))))
        return SKV_ENOMEM;
    skv_ggml_dequant_ref(t->type, t->data, *out, n);
    return 0;
}

static int load_params(skv_model *m)
{
    skv_model_params *p = &m->p;
    const skv_gguf *g = m->g;
    char key[128];
    int rc;
    if ((rc = skv_gguf_get_strbuf(g, "general.architecture", p->arch, sizeof p->arch)) < 0)
        return rc;
    if (strcmp(p->arch, "llama") != 0 && strcmp(p->arch, "mistral") != 0 &&
        strcmp(p->arch, "qwen2") != 0)
        return skv_error(SKV_EUNSUP, "%s: architecture \"%s\" is not supported (llama, mistral, "
                         "qwen2 are)", g->path, p->arch);
    p->rope_neox = !strcmp(p->arch, "qwen2");
    if (!skv_gguf_find(g, "general.name") ||
        skv_gguf_get_strbuf(g, "general.name", p->name, sizeof p->name) < 0) {
        const char *b = strrchr(g->path, '/');
        snprintf(p->name, sizeof p->name, "%s", b ? b + 1 : g->path);
    }
#define U32(field, suffix)                                                     \
    do {                                                                       \
        snprintf(key, sizeof key, "%s." suffix, p->arch);                      \
        if ((rc = skv_gguf_get_u32(g, key, &p->field)) < 0)                    \
            return rc;                                                         \
    } while (0)
    U32(n_layers, "block_count");
    U32(n_embd, "embedding_length");
    U32(n_heads, "attention.head_count");
    U32(n_ff, "feed_forward_length");
    snprintf(key, sizeof key, "%s.attention.head_count_kv", p->arch);
    p->n_kv_heads = p->n_heads;
    if (skv_gguf_find(g, key) && (rc = skv_gguf_get_u32(g, key, &p->n_kv_heads)) < 0)
        return rc;
    snprintf(key, sizeof key, "%s.context_length", p->arch);
    p->n_ctx_train = 0;
    if (skv_gguf_find(g, key) && (rc = skv_gguf_get_u32(g, key, &p->n_ctx_train)) < 0)
        return rc;
    if (!p->n_layers || p->n_layers > SKV_MAX_LAYERS || !p->n_heads || p->n_heads > SKV_MAX_HEADS ||
        !p->n_kv_heads || p->n_heads % p->n_kv_heads || !p->n_embd || p->n_embd > (1u << 16) ||
        !p->n_ff || p->n_ff > (1u << 18))
        return skv_error(SKV_EFORMAT, "%s: implausible shape: %u layers, %u/%u heads, "
                         "embedding %u, feed-forward %u", g->path, p->n_layers, p->n_heads,
                         p->n_kv_heads, p->n_embd, p->n_ff);
    p->head_dim = p->n_embd / p->n_heads;
    snprintf(key, sizeof key, "%s.attention.key_length", p->arch);
    if (skv_gguf_find(g, key) && (rc = skv_gguf_get_u32(g, key, &p->head_dim)) < 0)
        return rc;
    if (!p->head_dim || p->head_dim > SKV_MAX_HEAD_DIM || p->head_dim % 2)
        return skv_error(SKV_EFORMAT, "%s: head dimension %u is not supported", g->path, p->head_dim);
    p->n_rot = p->head_dim;
    snprintf(key, sizeof key, "%s.rope.dimension_count", p->arch);
    if (skv_gguf_find(g, key) && (rc = skv_gguf_get_u32(g, key, &p->n_rot)) < 0)
        return rc;
    if (p->n_rot > p->head_dim || p->n_rot % 2)
        return skv_error(SKV_EFORMAT, "%s: rope dimension count %u (head dimension %u)", g->path,
                         p->n_rot, p->head_dim);
    p->rope_theta = 10000.0f;
    snprintf(key, sizeof key, "%s.rope.freq_base", p->arch);
    if (skv_gguf_find(g, key) && (rc = skv_gguf_get_f32(g, key, &p->rope_theta)) < 0)
        return rc;
    p->norm_eps = 1e-5f;
    snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", p->arch);
    if (skv_gguf_find(g, key) && (rc = skv_gguf_get_f32(g, key, &p->norm_eps)) < 0)
        return rc;
    if (!(p->rope_theta > 0) || !(p->norm_eps > 0) || !isfinite(p->rope_theta))
        return skv_error(SKV_EFORMAT, "%s: bad rope theta %g or norm epsilon %g", g->path,
                         p->rope_theta, p->norm_eps);
    snprintf(key, sizeof key, "%s.rope.scaling.type", p->arch);
    if (skv_gguf_find(g, key)) {
        char st[32] = "";
        skv_gguf_get_strbuf(g, key, st, sizeof st);
        if (strcmp(st, "none") != 0)
            return skv_error(SKV_EUNSUP, "%s: rope scaling \"%s\" is not supported", g->path, st);
    }
#undef U32
    return 0;
}

static int load_weights(skv_model *m)
{
    skv_model_params *p = &m->p;
    uint64_t E = p->n_embd, Q = (uint64_t)p->n_heads * p->head_dim,
             KV = (uint64_t)p->n_kv_heads * p->head_dim, F = p->n_ff;
    const skv_gguf_tensor *t = skv_gguf_tensor_find(m->g, "token_embd.weight");
    if (!t)
        return skv_error(SKV_EFORMAT, "%s: tensor token_embd.weight is missing", m->g->path);
    if (t->ne[1] == 0 || t->ne[1] > (1u << 24))
        return skv_error(SKV_EFORMAT, "%s: vocabulary of %llu rows", m->g->path,
                         (unsigned long long)t->ne[1]);
    p->n_vocab = (uint32_t)t->ne[1];
    int rc;
    if ((rc = get_tensor(m, "token_embd.weight", E, p->n_vocab, 0, &m->embd)) < 0 ||
        (rc = get_tensor(m, "output.weight", E, p->n_vocab, 1, &m->output)) < 0 ||
        (rc = get_vector(m, "output_norm.weight", E, 0, &m->out_norm)) < 0)
        return rc;
    if (!m->output)
        m->output = m->embd;   /* tied embeddings */
    if (!(m->layers = skv_calloc(p->n_layers, sizeof *m->layers)))
        return SKV_ENOMEM;
    char name[96];
#define T(field, nm, a, b)                                                   \
    snprintf(name, sizeof name, "blk.%u." nm, l);                           \
    if ((rc = get_tensor(m, name, a, b, 0, &w->field)) < 0)                 \
        return rc;
#define V(field, nm, n, opt)                                                 \
    snprintf(name, sizeof name, "blk.%u." nm, l);                           \
    if ((rc = get_vector(m, name, n, opt, &w->field)) < 0)                  \
        return rc;
    for (uint32_t l = 0; l < p->n_layers; l++) {
        layer_w *w = &m->layers[l];
        T(wq, "attn_q.weight", E, Q);
        T(wk, "attn_k.weight", E, KV);
        T(wv, "attn_v.weight", E, KV);
        T(wo, "attn_output.weight", Q, E);
        T(gate, "ffn_gate.weight", E, F);
        T(up, "ffn_up.weight", E, F);
        T(down, "ffn_down.weight", F, E);
        V(attn_norm, "attn_norm.weight", E, 0);
        V(ffn_norm, "ffn_norm.weight", E, 0);
        V(bq, "attn_q.bias", Q, 1);
        V(bk, "attn_k.bias", KV, 1);
        V(bv, "attn_v.bias", KV, 1);
    }
#undef T
#undef V
    m->max_k = (uint32_t)(E > Q ? E : Q);
    if (F > m->max_k)
        m->max_k = (uint32_t)F;
    uint32_t half_rot = p->n_rot / 2;
    if (!(m->inv_freq = skv_malloc((half_rot ? half_rot : 1) * sizeof(float))))
        return SKV_ENOMEM;
    for (uint32_t i = 0; i < half_rot; i++)
        m->inv_freq[i] = (float)pow(p->rope_theta, -(double)(2 * i) / p->n_rot);
    return 0;
}

/* The matrices with integer products (skv_q8x8_*) repacked in groups of 8
 * rows, in one anonymous mapping with 2 MiB pages where the kernel grants
 * them (decode streams every weight once per token: fewer TLB misses).
 * The file mapping stays for the float path and the embedding lookup.
 * Best effort: without the memory the model runs on the ggml rows. */
static uint64_t x8_size(const skv_gguf_tensor *t)
{
    return skv_q8x8_bytes(t->type, t->ne[0], t->ne[1]);
}

static void pack_weights(skv_model *m)
{
    const skv_gguf_tensor *mats[7 * SKV_MAX_LAYERS + 1];
    size_t nm = 0;
    uint64_t total = 0;
    for (uint32_t l = 0; l < m->p.n_layers; l++) {
        const layer_w *w = &m->layers[l];
        const skv_gguf_tensor *lt[7] = {w->wq, w->wk, w->wv, w->wo, w->gate, w->up, w->down};
        for (int i = 0; i < 7; i++)
            mats[nm++] = lt[i];
    }
    mats[nm++] = m->output;
    for (size_t i = 0; i < nm; i++)
        total += (x8_size(mats[i]) + 63) / 64 * 64;
    if (!total || !(m->x8 = skv_calloc(m->g->n_tensors, sizeof *m->x8)))
        return;
    const size_t huge = (size_t)2 << 20;
    size_t n = (size_t)((total + huge - 1) / huge * huge);
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        free(m->x8);
        m->x8 = NULL;
        return;
    }
#ifdef MADV_HUGEPAGE
    madvise(p, n, MADV_HUGEPAGE);
#endif
    uint8_t *o = p;
    for (size_t i = 0; i < nm; i++) {
        const skv_gguf_tensor *t = mats[i];
        size_t k = (size_t)(t - m->g->tensors);
        uint64_t sz = x8_size(t), rb;
        if (!sz || m->x8[k])   /* none, or already packed (a tensor used twice) */
            continue;
        skv_ggml_row_bytes(t->type, t->ne[0], &rb);
        skv_q8x8_pack(t->type, t->data, (size_t)rb, t->ne[0], t->ne[1], o);
        m->x8[k] = o;
        o += (sz + 63) / 64 * 64;
    }
    m->wmem = p;
    m->wmem_size = n;
}

skv_model *skv_model_load(const char *path, int n_threads)
{
    skv_model *m = skv_calloc(1, sizeof *m);
    if (!m)
        return NULL;
    if (!(m->g = skv_gguf_open(path)) || load_params(m) < 0 || load_weights(m) < 0)
        goto fail;
    pack_weights(m);
    m->tok = skv_tokenizer_load(m->g);
    if (!m->tok)
        snprintf(m->tok_err, sizeof m->tok_err, "%s", skv_errmsg());
    if (n_threads < 1)
        n_threads = 1;
    if (n_threads > SKV_MODEL_MAX_THREADS)
        n_threads = SKV_MODEL_MAX_THREADS;
    if (pool_init(&m->pool, n_threads) < 0) {
        m->pool_ok = 1;
        goto fail;
    }
    m->pool_ok = 1;
    m->act_q8 = 1;
    skv_error_clear();
    return m;
fail:
    skv_model_free(m);
    return NULL;
}

void skv_model_free(skv_model *m)
{
    if (!m)
        return;
    if (m->pool_ok)
        pool_destroy(&m->pool);
    if (m->layers)
        for (uint32_t l = 0; l < m->p.n_layers; l++) {
            layer_w *w = &m->layers[l];
            free(w->attn_norm);
            free(w->ffn_norm);
            free(w->bq);
            free(w->bk);
            free(w->bv);
        }
    free(m->layers);
    free(m->out_norm);
    free(m->inv_freq);
    skv_tokenizer_free(m->tok);
    skv_gguf_close(m->g);
    if (m->wmem)
        munmap(m->wmem, m->wmem_size);
    free(m->x8);
    free(m);
}

const skv_model_params *skv_model_get_params(const skv_model *m) { return &m->p; }
const skv_tokenizer *skv_model_tokenizer(const skv_model *m) { return m->tok; }
const char *skv_model_tokenizer_error(const skv_model *m) { return m->tok ? "" : m->tok_err; }
const skv_gguf *skv_model_gguf(const skv_model *m) { return m->g; }
int skv_model_threads(const skv_model *m) { return m->pool.n; }

int skv_model_q8(const skv_model *m) { return m->act_q8; }

int skv_model_head_out_gain(const skv_model *m, float *gain)
{
    const skv_model_params *p = &m->p;
    const uint64_t hd = p->head_dim, K = (uint64_t)p->n_heads * hd;
    float *row = skv_malloc(K * sizeof *row);
    double *s = skv_malloc(p->n_heads * sizeof *s);
    if (!row || !s) {
        free(row);
        free(s);
        return SKV_ENOMEM;
    }
    for (uint32_t l = 0; l < p->n_layers; l++) {
        const skv_gguf_tensor *t = m->layers[l].wo;
        uint64_t rb = 0;
        skv_ggml_row_bytes(t->type, K, &rb);    /* checked at load */
        memset(s, 0, p->n_heads * sizeof *s);
        for (uint64_t r = 0; r < t->ne[1]; r++) {
            skv_ggml_dequant(t->type, (const uint8_t *)t->data + r * rb, row, K);
            for (uint64_t j = 0; j < K; j++)
                s[j / hd] += (double)row[j] * row[j];
        }
        for (uint32_t h = 0; h < p->n_heads; h++)
            gain[(size_t)l * p->n_heads + h] = (float)(s[h] / (double)hd);
    }
    free(row);
    free(s);
    return 0;
}

int skv_model_set_q8(skv_model *m, int on)
{
    int was = m->act_q8;
    m->act_q8 = on != 0;
    return was;
}

/* ---------------- workspace ---------------- */

typedef struct workspace {
    uint32_t block;         /* max tokens per block */
    uint64_t ctx;           /* max positions (probs row length) */
    int n_threads;
    float *xn, *q, *k, *v, *att, *gate, *up, *tmp;
    float *rope;            /* [block][n_rot/2][2] cos, sin */
    skv_q8_block *xq;       /* [block][max_k/32] quantized matmul input */
    float *wbuf[SKV_MODEL_MAX_THREADS];   /* 4 dequantized rows */
    float *probs[SKV_MODEL_MAX_THREADS];  /* block * ctx */
    /* error from a worker thread */
    pthread_mutex_t err_mu;
    int err;
    char errmsg[512];
} workspace;

static void ws_free(workspace *w)
{
    if (!w)
        return;
    free(w->xn);
    free(w->q);
    free(w->k);
    free(w->v);
    free(w->att);
    free(w->gate);
    free(w->up);
    free(w->tmp);
    free(w->rope);
    free(w->xq);
    for (int i = 0; i < SKV_MODEL_MAX_THREADS; i++) {
        free(w->wbuf[i]);
        free(w->probs[i]);
    }
    pthread_mutex_destroy(&w->err_mu);
    free(w);
}

static workspace *ws_new(const skv_model *m, uint32_t block, uint64_t ctx)
{
    const skv_model_params *p = &m->p;
    workspace *w = skv_calloc(1, sizeof *w);
    if (!w)
        return NULL;
    pthread_mutex_init(&w->err_mu, NULL);
    w->block = block;
    w->ctx = ctx;
    w->n_threads = m->pool.n;
    size_t B = block, E = p->n_embd, Q = (size_t)p->n_heads * p->head_dim,
           KV = (size_t)p->n_kv_heads * p->head_dim, F = p->n_ff, pr;
    if (skv_mul_sizes(&pr, 3, B, (size_t)ctx, sizeof(float)) < 0) {
        skv_error(SKV_ELIMIT, "attention scratch of %u x %llu overflows", block,
                  (unsigned long long)ctx);
        ws_free(w);
        return NULL;
    }
    if (!(w->xn = skv_malloc(B * E * 4)) || !(w->q = skv_malloc(B * Q * 4)) ||
        !(w->k = skv_malloc(B * KV * 4)) || !(w->v = skv_malloc(B * KV * 4)) ||
        !(w->att = skv_malloc(B * Q * 4)) || !(w->gate = skv_malloc(B * F * 4)) ||
        !(w->up = skv_malloc(B * F * 4)) || !(w->tmp = skv_malloc(B * E * 4)) ||
        !(w->rope = skv_malloc(B * (p->n_rot / 2 + 1) * 2 * 4)) ||
        !(w->xq = skv_malloc(B * (m->max_k / SKV_Q8_BLOCK + 1) * sizeof(skv_q8_block))))
        goto fail;
    for (int i = 0; i < w->n_threads; i++)
        if (!(w->wbuf[i] = skv_malloc((size_t)4 * m->max_k * 4)) || !(w->probs[i] = skv_malloc(pr)))
            goto fail;
    return w;
fail:
    ws_free(w);
    return NULL;
}

static void ws_fail(workspace *w, int code)
{
    pthread_mutex_lock(&w->err_mu);
    if (!w->err) {
        w->err = code;
        snprintf(w->errmsg, sizeof w->errmsg, "%s", skv_errmsg());
    }
    pthread_mutex_unlock(&w->err_mu);
}

static int ws_check(workspace *w)
{
    if (!w->err)
        return 0;
    int rc = w->err;
    w->err = 0;
    return skv_error(rc, "%s", w->errmsg);
}

/* ---------------- kernels ---------------- */

#if defined(__x86_64__) && defined(__GNUC__)
#define AVX2 __attribute__((target("avx2,fma")))
AVX2 static inline float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* y[t][r] for 4 weight rows (w, stride K) and 2 activation rows. */
AVX2 static void dot4x2_avx2(const float *w, const float *x0, const float *x1, size_t K,
                             float *o0, float *o1)
{
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;
    __m256 a10 = a00, a11 = a00, a12 = a00, a13 = a00;
    const float *w0 = w, *w1 = w + K, *w2 = w + 2 * K, *w3 = w + 3 * K;
    size_t k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 xa = _mm256_loadu_ps(x0 + k), xb = _mm256_loadu_ps(x1 + k);
        __m256 v0 = _mm256_loadu_ps(w0 + k), v1 = _mm256_loadu_ps(w1 + k);
        __m256 v2 = _mm256_loadu_ps(w2 + k), v3 = _mm256_loadu_ps(w3 + k);
        a00 = _mm256_fmadd_ps(v0, xa, a00);
        a01 = _mm256_fmadd_ps(v1, xa, a01);
        a02 = _mm256_fmadd_ps(v2, xa, a02);
        a03 = _mm256_fmadd_ps(v3, xa, a03);
        a10 = _mm256_fmadd_ps(v0, xb, a10);
        a11 = _mm256_fmadd_ps(v1, xb, a11);
        a12 = _mm256_fmadd_ps(v2, xb, a12);
        a13 = _mm256_fmadd_ps(v3, xb, a13);
    }
    float r0[4] = {hsum8(a00), hsum8(a01), hsum8(a02), hsum8(a03)};
    float r1[4] = {hsum8(a10), hsum8(a11), hsum8(a12), hsum8(a13)};
    for (; k < K; k++)
        for (int r = 0; r < 4; r++) {
            r0[r] += w[r * K + k] * x0[k];
            r1[r] += w[r * K + k] * x1[k];
        }
    memcpy(o0, r0, sizeof r0);
    memcpy(o1, r1, sizeof r1);
}
#define HAVE_AVX2_KERNELS 1
#else
#define HAVE_AVX2_KERNELS 0
#endif

/* Y[t][r] = sum_k W[r][k] X[t][k] for rows in a task's range. */
typedef struct mm_job {
    const skv_gguf_tensor *w;
    const float *x;
    const skv_q8_block *xq;     /* x quantized ([n_tok][K/32]), or NULL: float path */
    const uint8_t *x8;          /* w packed by 8 rows (skv_q8x8), or NULL */
    size_t ldx;
    float *y;
    size_t ldy;
    uint32_t n_tok, K, N;
    uint32_t rows;              /* output rows per task, a multiple of 8 */
    size_t row_bytes;
    workspace *ws;
} mm_job;

static void mm_task(void *ctx, uint32_t task, int thread)
{
    mm_job *j = ctx;
    uint32_t r0 = task * j->rows, r1 = r0 + j->rows;
    if (r1 > j->N)
        r1 = j->N;
    const uint8_t *W = j->w->data;
    uint32_t type = j->w->type, K = j->K;
    if (j->x8) {
        /* j->rows is a multiple of 8; up to 4 tokens per weight load */
        size_t nbk = K / SKV_Q8_BLOCK, gb = (size_t)skv_q8x8_bytes(type, K, 8);
        for (uint32_t r = r0; r < r1; r += 8)
            for (uint32_t t = 0; t < j->n_tok; t += 4) {
                uint32_t nt = j->n_tok - t < 4 ? j->n_tok - t : 4;
                skv_q8x8_dot(type, j->x8 + (size_t)(r / 8) * gb, j->xq + t * nbk, nbk, K, nt,
                             j->y + t * j->ldy + r, j->ldy);
            }
        return;
    }
    if (j->xq) {
        /* up to 4 tokens share each weight block loaded */
        size_t nbk = K / SKV_Q8_BLOCK;
        for (uint32_t r = r0; r < r1; r++)
            for (uint32_t t = 0; t < j->n_tok; t += 4) {
                uint32_t nt = j->n_tok - t < 4 ? j->n_tok - t : 4;
                float o[4];
                skv_ggml_dot_q8(type, W + (size_t)r * j->row_bytes, j->xq + t * nbk, nbk, K, nt, o);
                for (uint32_t i = 0; i < nt; i++)
                    j->y[(t + i) * j->ldy + r] = o[i];
            }
        return;
    }
    if (j->n_tok == 1) {
        for (uint32_t r = r0; r < r1; r++)
            j->y[r] = skv_ggml_dot(type, W + (size_t)r * j->row_bytes, j->x, K);
        return;
    }
    float *wb = j->ws->wbuf[thread];
#if HAVE_AVX2_KERNELS
    int simd = skv_simd_active();
#endif
    for (uint32_t r = r0; r < r1; r += 4) {
        uint32_t nr = r1 - r < 4 ? r1 - r : 4;
        for (uint32_t i = 0; i < nr; i++)
            skv_ggml_dequant(type, W + (size_t)(r + i) * j->row_bytes, wb + (size_t)i * K, K);
        uint32_t t = 0;
#if HAVE_AVX2_KERNELS
        if (simd && nr == 4) {
            for (; t + 2 <= j->n_tok; t += 2) {
                float o0[4], o1[4];
                dot4x2_avx2(wb, j->x + t * j->ldx, j->x + (t + 1) * j->ldx, K, o0, o1);
                memcpy(j->y + t * j->ldy + r, o0, sizeof o0);
                memcpy(j->y + (t + 1) * j->ldy + r, o1, sizeof o1);
            }
        }
#endif
        for (; t < j->n_tok; t++)
            for (uint32_t i = 0; i < nr; i++)
                j->y[t * j->ldy + r + i] = skv_vec_dot(wb + (size_t)i * K, j->x + t * j->ldx, K);
    }
}

static void matmul(skv_model *m, workspace *ws, const skv_gguf_tensor *w, const float *x,
                   size_t ldx, float *y, size_t ldy, uint32_t n_tok)
{
    mm_job j = {w, x, NULL, NULL, ldx, y, ldy, n_tok, (uint32_t)w->ne[0], (uint32_t)w->ne[1],
                ROWS_PER_TASK, 0, ws};
    /* A task is claimed with an atomic on a line all threads share: in a
     * one-token decode 16 rows are about a microsecond of work, so claiming
     * costs a good part of it.  Larger tasks, still TASKS_PER_THREAD per
     * thread so that a thread the machine does not schedule leaves its share
     * to the others. */
    if (m->pool.n > 1) {
        uint32_t r = j.N / ((uint32_t)m->pool.n * TASKS_PER_THREAD) / 8 * 8;
        if (r > j.rows)
            j.rows = r;
    }
    if (m->act_q8 && skv_ggml_q8_supported(w->type) && j.K % SKV_Q8_BLOCK == 0) {
        size_t nbk = j.K / SKV_Q8_BLOCK;
        for (uint32_t t = 0; t < n_tok; t++)
            skv_q8_quantize(x + t * ldx, ws->xq + t * nbk, j.K);
        j.xq = ws->xq;
        j.x8 = m->x8 ? m->x8[w - m->g->tensors] : NULL;
    }
    uint64_t rb;
    skv_ggml_row_bytes(w->type, w->ne[0], &rb);   /* validated at load */
    j.row_bytes = (size_t)rb;
    pool_run(&m->pool, mm_task, &j, (j.N + j.rows - 1) / j.rows);
}

static void rmsnorm(float *out, const float *x, const float *w, uint32_t n, float eps)
{
    double ss = 0;
    for (uint32_t i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    float s = (float)(1.0 / sqrt(ss / n + eps));
    for (uint32_t i = 0; i < n; i++)
        out[i] = x[i] * s * w[i];
}

static void rope_table(const skv_model *m, workspace *ws, uint64_t pos, uint32_t n)
{
    uint32_t h = m->p.n_rot / 2;
    for (uint32_t t = 0; t < n; t++)
        for (uint32_t i = 0; i < h; i++) {
            double a = (double)(pos + t) * m->inv_freq[i];
            ws->rope[((size_t)t * h + i) * 2] = (float)cos(a);
            ws->rope[((size_t)t * h + i) * 2 + 1] = (float)sin(a);
        }
}

/* Rotate n_heads heads of one token's row in place. */
static void rope_apply(const skv_model *m, const float *cs, float *row, uint32_t n_heads)
{
    uint32_t hd = m->p.head_dim, h = m->p.n_rot / 2;
    for (uint32_t hh = 0; hh < n_heads; hh++) {
        float *x = row + (size_t)hh * hd;
        for (uint32_t i = 0; i < h; i++) {
            float c = cs[2 * i], s = cs[2 * i + 1];
            uint32_t a = m->p.rope_neox ? i : 2 * i, b = m->p.rope_neox ? i + h : 2 * i + 1;
            float x0 = x[a], x1 = x[b];
            x[a] = x0 * c - x1 * s;
            x[b] = x0 * s + x1 * c;
        }
    }
}

typedef struct att_job {
    skv_model *m;
    workspace *ws;
    skv_kv_cache *cache;
    uint32_t cache_layer, layer, n;
    uint64_t pos;
    skv_attn_fn hook;
    void *hook_ctx;
} att_job;

static void att_task(void *ctx, uint32_t head, int thread)
{
    att_job *j = ctx;
    const skv_model_params *p = &j->m->p;
    size_t Q = (size_t)p->n_heads * p->head_dim, stride = j->pos + j->n;
    float *probs = j->ws->probs[thread];
    int rc = j->cache->ops->attend(j->cache, j->cache_layer, head, j->pos, j->n,
                                   j->ws->q + (size_t)head * p->head_dim, Q,
                                   1.0f / sqrtf((float)p->head_dim),
                                   j->ws->att + (size_t)head * p->head_dim, Q, probs, stride);
    if (rc < 0) {
        ws_fail(j->ws, rc);
        return;
    }
    if (j->hook)
        j->hook(j->hook_ctx, j->layer, head, j->pos, j->n, probs, stride);
}

/* Run tokens at positions pos..pos+n-1 through layer `layer`.  X: [n][E]
 * residual stream, updated in place.  q_store (record): [n_heads][q_rows]
 * [head_dim] gets the post-RoPE queries at rows pos.. */
static int layer_block(skv_model *m, workspace *ws, uint32_t layer, float *X, uint32_t n,
                       uint64_t pos, skv_kv_cache *cache, uint32_t cache_layer, float *q_store,
                       uint64_t q_rows, skv_attn_fn hook, void *hook_ctx)
{
    const skv_model_params *p = &m->p;
    const layer_w *w = &m->layers[layer];
    uint32_t E = p->n_embd, hd = p->head_dim, H = p->n_heads, KVH = p->n_kv_heads, F = p->n_ff;
    size_t Q = (size_t)H * hd, KV = (size_t)KVH * hd;
    int rc;
    for (uint32_t t = 0; t < n; t++)
        rmsnorm(ws->xn + (size_t)t * E, X + (size_t)t * E, w->attn_norm, E, p->norm_eps);
    matmul(m, ws, w->wq, ws->xn, E, ws->q, Q, n);
    matmul(m, ws, w->wk, ws->xn, E, ws->k, KV, n);
    matmul(m, ws, w->wv, ws->xn, E, ws->v, KV, n);
    for (uint32_t t = 0; t < n; t++) {
        float *q = ws->q + t * Q, *k = ws->k + t * KV, *v = ws->v + t * KV;
        if (w->bq)
            for (size_t i = 0; i < Q; i++)
                q[i] += w->bq[i];
        if (w->bk)
            for (size_t i = 0; i < KV; i++)
                k[i] += w->bk[i];
        if (w->bv)
            for (size_t i = 0; i < KV; i++)
                v[i] += w->bv[i];
        const float *cs = ws->rope + (size_t)t * (p->n_rot / 2) * 2;
        rope_apply(m, cs, q, H);
        rope_apply(m, cs, k, KVH);
        if (q_store)
            for (uint32_t h = 0; h < H; h++)
                memcpy(q_store + ((size_t)h * q_rows + pos + t) * hd, q + (size_t)h * hd,
                       hd * sizeof(float));
    }
    if ((rc = cache->ops->append(cache, cache_layer, pos, n, ws->k, ws->v)) < 0)
        return rc;
    att_job aj = {m, ws, cache, cache_layer, layer, n, pos, hook, hook_ctx};
    pool_run(&m->pool, att_task, &aj, H);
    if ((rc = ws_check(ws)) < 0)
        return rc;
    matmul(m, ws, w->wo, ws->att, Q, ws->tmp, E, n);
    for (size_t i = 0; i < (size_t)n * E; i++)
        X[i] += ws->tmp[i];
    for (uint32_t t = 0; t < n; t++)
        rmsnorm(ws->xn + (size_t)t * E, X + (size_t)t * E, w->ffn_norm, E, p->norm_eps);
    matmul(m, ws, w->gate, ws->xn, E, ws->gate, F, n);
    matmul(m, ws, w->up, ws->xn, E, ws->up, F, n);
    for (size_t i = 0; i < (size_t)n * F; i++) {
        float g = ws->gate[i];
        ws->gate[i] = g / (1.0f + expf(-g)) * ws->up[i];
    }
    matmul(m, ws, w->down, ws->gate, F, ws->tmp, E, n);
    for (size_t i = 0; i < (size_t)n * E; i++)
        X[i] += ws->tmp[i];
    return 0;
}

static int embed(skv_model *m, const int32_t *tokens, uint32_t n, float *X)
{
    uint64_t rb;
    skv_ggml_row_bytes(m->embd->type, m->embd->ne[0], &rb);
    for (uint32_t t = 0; t < n; t++) {
        if (tokens[t] < 0 || (uint32_t)tokens[t] >= m->p.n_vocab)
            return skv_error(SKV_EINVAL, "token %u: id %d is outside the vocabulary (%u)", t,
                             tokens[t], m->p.n_vocab);
        skv_ggml_dequant(m->embd->type, (const uint8_t *)m->embd->data + (size_t)tokens[t] * rb,
                         X + (size_t)t * m->p.n_embd, m->p.n_embd);
    }
    return 0;
}

/* ---------------- sessions ---------------- */

struct skv_session {
    skv_model *m;
    skv_kv_cache *cache;
    int own_cache;
    uint64_t pos;
    workspace *ws;
    float *x;               /* [block][E] */
    skv_attn_fn hook;
    void *hook_ctx;
    skv_hidden_fn hidden;   /* observer of the residual stream per layer */
    void *hidden_ctx;
};

skv_session *skv_session_new(skv_model *m, skv_kv_cache *cache, uint64_t n_ctx)
{
    const skv_model_params *p = &m->p;
    skv_session *s = skv_calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->m = m;
    if (cache) {
        if (cache->n_layers != p->n_layers || cache->n_heads != p->n_heads ||
            cache->n_kv_heads != p->n_kv_heads || cache->head_dim != p->head_dim) {
            skv_error(SKV_EINVAL, "kv cache shape (%u layers, %u/%u heads, dim %u) does not match "
                      "the model", cache->n_layers, cache->n_heads, cache->n_kv_heads,
                      cache->head_dim);
            free(s);
            return NULL;
        }
        s->cache = cache;
    } else {
        if (!n_ctx)
            n_ctx = p->n_ctx_train ? p->n_ctx_train : 2048;
        if (!(s->cache = skv_kv_dense_new(p->n_layers, p->n_heads, p->n_kv_heads, p->head_dim, n_ctx))) {
            free(s);
            return NULL;
        }
        s->own_cache = 1;
    }
    if (!(s->ws = ws_new(m, BLOCK_DEFAULT, s->cache->capacity)) ||
        !(s->x = skv_malloc((size_t)BLOCK_DEFAULT * p->n_embd * sizeof(float)))) {
        skv_session_free(s);
        return NULL;
    }
    return s;
}

void skv_session_free(skv_session *s)
{
    if (!s)
        return;
    if (s->own_cache)
        skv_kv_cache_free(s->cache);
    ws_free(s->ws);
    free(s->x);
    free(s);
}

void skv_session_set_attn_hook(skv_session *s, skv_attn_fn fn, void *ctx)
{
    s->hook = fn;
    s->hook_ctx = ctx;
}

void skv_session_set_hidden_hook(skv_session *s, skv_hidden_fn fn, void *ctx)
{
    s->hidden = fn;
    s->hidden_ctx = ctx;
}

uint64_t skv_session_pos(const skv_session *s) { return s->pos; }
skv_kv_cache *skv_session_cache(skv_session *s) { return s->cache; }
const skv_model *skv_session_model(const skv_session *s) { return s->m; }

int skv_session_reset(skv_session *s)
{
    s->pos = 0;
    return s->cache->ops->truncate(s->cache, 0);
}

int skv_session_eval(skv_session *s, const int32_t *tokens, uint32_t n, float *logits,
                     int logits_mode)
{
    skv_model *m = s->m;
    const skv_model_params *p = &m->p;
    uint32_t E = p->n_embd;
    if (s->pos > s->cache->capacity || n > s->cache->capacity - s->pos)
        return skv_error(SKV_ELIMIT, "context full: %llu + %u tokens exceed the cache's %llu "
                         "positions", (unsigned long long)s->pos, n,
                         (unsigned long long)s->cache->capacity);
    for (uint32_t b = 0; b < n; b += s->ws->block) {
        uint32_t nb = n - b < s->ws->block ? n - b : s->ws->block;
        int rc = embed(m, tokens + b, nb, s->x);
        if (rc < 0)
            return rc;
        rope_table(m, s->ws, s->pos, nb);
        for (uint32_t l = 0; l < p->n_layers; l++) {
            if (s->hidden)
                s->hidden(s->hidden_ctx, l, s->pos, nb, s->x, E);
            if ((rc = layer_block(m, s->ws, l, s->x, nb, s->pos, s->cache, l, NULL, 0, s->hook,
                                  s->hook_ctx)) < 0)
                return rc;
        }
        s->pos += nb;
        if (logits_mode == SKV_LOGITS_ALL) {
            for (uint32_t t = 0; t < nb; t++)
                rmsnorm(s->ws->xn + (size_t)t * E, s->x + (size_t)t * E, m->out_norm, E,
                        p->norm_eps);
            matmul(m, s->ws, m->output, s->ws->xn, E, logits + (size_t)b * p->n_vocab, p->n_vocab, nb);
        } else if (logits_mode == SKV_LOGITS_LAST && b + nb == n) {
            rmsnorm(s->ws->xn, s->x + (size_t)(nb - 1) * E, m->out_norm, E, p->norm_eps);
            matmul(m, s->ws, m->output, s->ws->xn, E, logits, p->n_vocab, 1);
        }
    }
    return 0;
}

int32_t skv_argmax(const float *v, uint32_t n)
{
    int32_t best = 0;
    for (uint32_t i = 1; i < n; i++)
        if (v[i] > v[best])
            best = (int32_t)i;
    return best;
}

double skv_logprob(const float *logits, uint32_t n, int32_t id)
{
    float mx = logits[0];
    for (uint32_t i = 1; i < n; i++)
        if (logits[i] > mx)
            mx = logits[i];
    double sum = 0;
    for (uint32_t i = 0; i < n; i++)
        sum += exp((double)logits[i] - mx);
    /* n >= 1 (logits[0] is read above), so sum >= exp(0) = 1 */
    // cppcheck-suppress invalidFunctionArg
    return (double)logits[id] - mx - log(sum);
}

int skv_generate_greedy(skv_model *m, const int32_t *prompt, uint32_t n_prompt, uint32_t max_new,
                        int stop_at_eog, int32_t **out, uint32_t *n_out)
{
    *out = NULL;
    *n_out = 0;
    if (!n_prompt)
        return skv_error(SKV_EINVAL, "generate: empty prompt");
    uint64_t total = (uint64_t)n_prompt + max_new;
    if (total > UINT32_MAX)
        return skv_error(SKV_ELIMIT, "generate: too many tokens");
    skv_session *s = skv_session_new(m, NULL, total);
    float *logits = skv_malloc((size_t)m->p.n_vocab * sizeof(float));
    int32_t *ids = skv_malloc((size_t)total * sizeof(int32_t));
    int rc = 0;
    if (!s || !logits || !ids) {
        rc = SKV_ENOMEM;
        goto done;
    }
    memcpy(ids, prompt, n_prompt * sizeof(int32_t));
    uint32_t n = n_prompt;
    if ((rc = skv_session_eval(s, prompt, n_prompt, logits, SKV_LOGITS_LAST)) < 0)
        goto done;
    while (n < total) {
        int32_t next = skv_argmax(logits, m->p.n_vocab);
        ids[n++] = next;
        if (stop_at_eog && m->tok && skv_tokenizer_is_eog(m->tok, next))
            break;
        if (n == total)
            break;
        if ((rc = skv_session_eval(s, &next, 1, logits, SKV_LOGITS_LAST)) < 0)
            goto done;
    }
    *out = ids;
    *n_out = n;
    ids = NULL;
done:
    free(ids);
    free(logits);
    skv_session_free(s);
    return rc;
}

/* ---------------- recording ---------------- */

int skv_model_record(skv_model *m, const int32_t *tokens, uint64_t n, skv_stream *s,
                     const skv_record_opts *opts)
{
    skv_record_opts o = {0};
    if (opts)
        o = *opts;
    const skv_model_params *p = &m->p;
    uint32_t L = o.n_layers && o.n_layers < p->n_layers ? o.n_layers : p->n_layers;
    uint32_t B = o.block ? o.block : BLOCK_DEFAULT, E = p->n_embd, hd = p->head_dim;
    if (!o.dtype)
        o.dtype = SKV_F32;
    if (!n || n > SKV_MAX_TOKENS || n > UINT32_MAX)
        return skv_error(SKV_EINVAL, "record: %llu tokens (need 1..%llu)", (unsigned long long)n,
                         (unsigned long long)SKV_MAX_TOKENS);
    if (o.n_prefill > n)
        return skv_error(SKV_EINVAL, "record: prefill length %llu exceeds the %llu tokens",
                         (unsigned long long)o.n_prefill, (unsigned long long)n);
    skv_trace_hdr h;
    memset(&h, 0, sizeof h);
    h.n_layers = L;
    h.n_heads = p->n_heads;
    h.n_kv_heads = p->n_kv_heads;
    h.head_dim = hd;
    h.n_tokens = n;
    h.n_prefill = o.n_prefill ? o.n_prefill : n;
    h.dtype = o.dtype;
    h.flags = SKV_TRACE_POST_ROPE | SKV_TRACE_HAS_TOKENS;
    h.rope_theta = p->rope_theta;
    const char *base = strrchr(m->g->path, '/');
    snprintf(h.model, sizeof h.model, "%s", base ? base + 1 : m->g->path);
    snprintf(h.tokenizer, sizeof h.tokenizer, "gguf:%s", m->tok ? skv_tokenizer_name(m->tok) : "none");
    int rc = skv_trace_hdr_check(&h);
    if (rc < 0)
        return rc;
    size_t nx, nq;
    if (skv_mul_sizes(&nx, 3, (size_t)n, (size_t)E, sizeof(float)) < 0 ||
        skv_mul_sizes(&nq, 4, (size_t)n, (size_t)p->n_heads, (size_t)hd, sizeof(float)) < 0)
        return skv_error(SKV_ELIMIT, "record: %llu tokens overflow the buffers", (unsigned long long)n);
    float *X = skv_malloc(nx), *Qs = skv_malloc(nq);
    skv_kv_cache *cache = NULL;
    workspace *ws = NULL;
    if (!X || !Qs || !(cache = skv_kv_dense_new(1, p->n_heads, p->n_kv_heads, hd, n)) ||
        !(ws = ws_new(m, B, n))) {
        rc = SKV_ENOMEM;
        goto done;
    }
    if ((rc = skv_trhd_write(s, &h)) < 0 || (rc = skv_toks_write(s, 0, n, tokens)) < 0)
        goto done;
    for (uint64_t b = 0; b < n; b += B) {
        uint32_t nb = n - b < B ? (uint32_t)(n - b) : B;
        if ((rc = embed(m, tokens + b, nb, X + b * E)) < 0)
            goto done;
    }
    uint64_t nblocks = (n + B - 1) / B, done_units = 0, total_units = nblocks * L;
    for (uint32_t l = 0; l < L; l++) {
        if (o.hidden && (rc = skv_hidn_write(s, o.dtype, l, 0, n, E, X)) < 0)
            goto done;
        cache->ops->truncate(cache, 0);
        for (uint64_t b = 0; b < n; b += B) {
            uint32_t nb = n - b < B ? (uint32_t)(n - b) : B;
            rope_table(m, ws, b, nb);
            if ((rc = layer_block(m, ws, l, X + b * E, nb, b, cache, 0, Qs, n, NULL, NULL)) < 0)
                goto done;
            if (o.progress)
                o.progress(o.progress_ctx, ++done_units, total_units);
        }
        for (uint32_t hh = 0; hh < p->n_heads; hh++)
            if ((rc = skv_tens_write(s, SKV_TK_Q, o.dtype, l, hh, 0, n, hd,
                                     Qs + (size_t)hh * n * hd)) < 0)
                goto done;
        for (uint32_t kv = 0; kv < p->n_kv_heads; kv++)
            if ((rc = skv_tens_write(s, SKV_TK_K, o.dtype, l, kv, 0, n, hd,
                                     skv_kv_dense_keys(cache, 0, kv))) < 0)
                goto done;
        for (uint32_t kv = 0; kv < p->n_kv_heads; kv++)
            if ((rc = skv_tens_write(s, SKV_TK_V, o.dtype, l, kv, 0, n, hd,
                                     skv_kv_dense_values(cache, 0, kv))) < 0)
                goto done;
    }
    rc = 0;
done:
    free(X);
    free(Qs);
    skv_kv_cache_free(cache);
    ws_free(ws);
    return rc;
}
