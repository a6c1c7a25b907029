/* stats.c -- fidelity metrics of attention outputs and the Pareto front. */
#include "smartkv_stats.h"
#include "smartkv_error.h"
#include "smartkv_cache.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct acc {
    double sum_d2, sum_r2, max_rel, cos, kl, top[SKV_CMP_NTOP];
    uint64_t n, n_prob;
} acc;

static void acc_add(acc *a, const acc *b)
{
    a->sum_d2 += b->sum_d2;
    a->sum_r2 += b->sum_r2;
    a->max_rel = b->max_rel > a->max_rel ? b->max_rel : a->max_rel;
    a->cos += b->cos;
    a->kl += b->kl;
    for (int i = 0; i < SKV_CMP_NTOP; i++)
        a->top[i] += b->top[i];
    a->n += b->n;
    a->n_prob += b->n_prob;
}

static void acc_finish(const acc *a, int has_probs, skv_cmp *c)
{
    memset(c, 0, sizeof *c);
    c->n_vec = a->n;
    c->rel_l2 = a->sum_r2 > 0 ? sqrt(a->sum_d2 / a->sum_r2) : (a->sum_d2 > 0 ? INFINITY : 0);
    c->max_rel = a->max_rel;
    c->cos = a->n ? a->cos / (double)a->n : 0;
    c->has_probs = has_probs;
    if (has_probs && a->n_prob) {
        c->kl = a->kl / (double)a->n_prob;
        for (int i = 0; i < SKV_CMP_NTOP; i++)
            c->top[i] = a->top[i] / (double)a->n_prob;
    }
}

/* Indices of the k largest values of p[0..n) (ties: lower index first). */
static void topk(const float *p, uint64_t n, uint32_t k, uint32_t *out)
{
    uint32_t m = 0;
    for (uint64_t i = 0; i < n; i++) {
        if (m == k && !(p[i] > p[out[m - 1]]))
            continue;
        uint32_t j = m < k ? m++ : k - 1;
        while (j > 0 && p[i] > p[out[j - 1]]) {
            out[j] = out[j - 1];
            j--;
        }
        out[j] = (uint32_t)i;
    }
}

int skv_attn_compare(const skv_attn *ref, const skv_attn *test, skv_compare *out)
{
    memset(out, 0, sizeof *out);
    const skv_athd *a = &ref->h, *b = &test->h;
    if (a->n_layers != b->n_layers || a->n_heads != b->n_heads || a->head_dim != b->head_dim ||
        a->n_tokens != b->n_tokens)
        return skv_error(SKV_EINVAL, "shapes differ: reference %u layers x %u heads x %u dims, "
                         "%llu tokens; test %u x %u x %u, %llu tokens", a->n_layers, a->n_heads,
                         a->head_dim, (unsigned long long)a->n_tokens, b->n_layers, b->n_heads,
                         b->head_dim, (unsigned long long)b->n_tokens);
    if (a->n_steps != b->n_steps || memcmp(a->steps, b->steps, a->n_steps * sizeof *a->steps) != 0)
        return skv_error(SKV_EINVAL, "the query steps differ (reference %llu steps, test %llu)",
                         (unsigned long long)a->n_steps, (unsigned long long)b->n_steps);
    int probs = ref->prob && test->prob;
    uint32_t L = a->n_layers, H = a->n_heads, d = a->head_dim;
    uint64_t S = a->n_steps, T = a->n_tokens;
    out->layer = skv_calloc(L, sizeof *out->layer);
    uint32_t kmax = skv_cmp_topk[SKV_CMP_NTOP - 1];
    uint32_t *ta = skv_malloc(kmax * sizeof *ta), *tb = skv_malloc(kmax * sizeof *tb);
    if (!out->layer || !ta || !tb) {
        free(ta);
        free(tb);
        skv_compare_free(out);
        return SKV_ENOMEM;
    }
    out->n_layers = L;
    acc all = {0};
    for (uint32_t l = 0; l < L; l++) {
        acc la = {0};
        for (uint32_t h = 0; h < H; h++)
            for (uint64_t s = 0; s < S; s++) {
                size_t vi = ((size_t)l * H + h) * S + s;
                const float *x = ref->out + vi * d, *y = test->out + vi * d;
                double d2 = 0, r2 = 0, t2 = 0, xy = 0;
                for (uint32_t j = 0; j < d; j++) {
                    double dx = (double)y[j] - x[j];
                    d2 += dx * dx;
                    r2 += (double)x[j] * x[j];
                    t2 += (double)y[j] * y[j];
                    xy += (double)x[j] * y[j];
                }
                la.sum_d2 += d2;
                la.sum_r2 += r2;
                double rel = r2 > 0 ? sqrt(d2 / r2) : (d2 > 0 ? INFINITY : 0);
                if (rel > la.max_rel)
                    la.max_rel = rel;
                la.cos += r2 > 0 && t2 > 0 ? xy / sqrt(r2 * t2) : (r2 == t2 ? 1 : 0);
                la.n++;
                if (!probs)
                    continue;
                const float *p = ref->prob + vi * T, *q = test->prob + vi * T;
                uint64_t n = a->steps[s] + 1;
                double kl = 0;
                for (uint64_t u = 0; u < n; u++)
                    if (p[u] > 0) {
                        double qq = q[u] > 1e-10f ? q[u] : 1e-10;
                        kl += p[u] * log(p[u] / qq);
                    }
                la.kl += kl > 0 ? kl : 0;
                for (int i = 0; i < SKV_CMP_NTOP; i++) {
                    uint32_t k = skv_cmp_topk[i] < n ? skv_cmp_topk[i] : (uint32_t)n;
                    topk(p, n, k, ta);
                    topk(q, n, k, tb);
                    uint32_t common = 0;
                    for (uint32_t x1 = 0; x1 < k; x1++)
                        for (uint32_t y1 = 0; y1 < k; y1++)
                            if (ta[x1] == tb[y1]) {
                                common++;
                                break;
                            }
                    la.top[i] += (double)common / k;
                }
                la.n_prob++;
            }
        acc_finish(&la, probs, &out->layer[l]);
        acc_add(&all, &la);
    }
    acc_finish(&all, probs, &out->all);
    free(ta);
    free(tb);
    return 0;
}

void skv_compare_free(skv_compare *c)
{
    free(c->layer);
    c->layer = NULL;
    c->n_layers = 0;
}

int skv_pareto(const double *bytes, const double *err, uint32_t n, uint8_t *on)
{
    for (uint32_t i = 0; i < n; i++) {
        on[i] = 1;
        for (uint32_t j = 0; j < n && on[i]; j++)
            if (j != i && bytes[j] <= bytes[i] && err[j] <= err[i] &&
                (bytes[j] < bytes[i] || err[j] < err[i]))
                on[i] = 0;
    }
    return 0;
}

int skv_mem_begin(skv_mem *m, const skv_cache *c)
{
    memset(m, 0, sizeof *m);
    uint32_t L = c->pk.n_layers;
    m->n_layers = L;
    m->layer_rows = skv_calloc((size_t)L * SKV_NBITS, sizeof *m->layer_rows);
    m->layer_bytes = skv_calloc(L ? L : 1, sizeof *m->layer_bytes);
    if (!m->layer_rows || !m->layer_bytes) {
        skv_mem_free(m);
        return SKV_ENOMEM;
    }
    m->model_bytes = c->pk.cache_bytes;
    m->fp16_bytes = c->pk.fp16_bytes;
    uint64_t pk = skv_pkhd_file_bytes();
    m->kind[SKV_MEM_FRAMING] += SKV_CHUNK_HEADER_LEN + SKV_CHUNK_CRC_LEN;
    m->kind[SKV_MEM_HEADERS] += pk - SKV_CHUNK_HEADER_LEN - SKV_CHUNK_CRC_LEN;
    return 0;
}

void skv_mem_layer(skv_mem *m, const skv_cache *c, uint32_t l)
{
    uint32_t H = c->pk.n_kv_heads;
    for (uint32_t h = 0; h < H; h++) {
        const skv_cache_head *ch = skv_cache_head_at(c, l, h);
        /* rows per width from the buckets (the reader checked them), so the
         * time is that of the data read, not of the declared token count */
        uint64_t evicted = c->pk.n_tokens - ch->n_stored;
        m->layer_rows[(size_t)l * SKV_NBITS] += evicted;
        m->width_rows[0] += evicted;
        for (uint32_t b = 0; b < ch->n_buckets; b++) {
            const skv_bucket *B = &ch->buckets[b];
            int w = 0;
            while (w < SKV_NBITS && skv_bit_widths[w] != B->bits)
                w++;
            if (w < SKV_NBITS) {
                m->layer_rows[(size_t)l * SKV_NBITS + w] += B->n;
                m->width_rows[w] += B->n;
            }
            uint64_t n = B->n, pay = 2 * n * B->row_stride, par = skv_bucket_kpar_bytes(B) + n * (uint64_t)B->v_par_stride;
            uint64_t idx = 4 * n, frame = SKV_CHUNK_HEADER_LEN + SKV_CHUNK_CRC_LEN;
            uint64_t pad = B->payload_bytes - SKV_PBKT_HEADER_LEN - pay - par - idx;
            m->kind[SKV_MEM_PAYLOAD] += pay;
            m->kind[SKV_MEM_SCALES] += par;
            m->kind[SKV_MEM_INDICES] += idx;
            m->kind[SKV_MEM_HEADERS] += SKV_PBKT_HEADER_LEN;
            m->kind[SKV_MEM_PADDING] += pad;
            m->kind[SKV_MEM_FRAMING] += frame;
            uint64_t fb = B->payload_bytes + frame;
            if (w < SKV_NBITS) {
                m->width_bytes[w] += fb;
                m->width_chunks[w]++;
            }
            m->layer_bytes[l] += fb;
        }
        if (ch->cent) {
            const skv_bucket *B = &ch->cent->rows;
            uint64_t n = B->n, pay = 2 * n * B->row_stride,
                     par = n * ((uint64_t)B->k_par_stride + B->v_par_stride), idx = 8 * n;
            uint64_t frame = SKV_CHUNK_HEADER_LEN + SKV_CHUNK_CRC_LEN;
            m->kind[SKV_MEM_PAYLOAD] += pay;
            m->kind[SKV_MEM_SCALES] += par;
            m->kind[SKV_MEM_INDICES] += idx;  /* last member and member count */
            m->kind[SKV_MEM_HEADERS] += SKV_PBKT_HEADER_LEN;
            m->kind[SKV_MEM_PADDING] += B->payload_bytes - SKV_PBKT_HEADER_LEN - pay - par - idx;
            m->kind[SKV_MEM_FRAMING] += frame;
            m->centroids += n;
            m->centroid_bytes += B->payload_bytes + frame;
            m->centroid_chunks++;
            m->layer_bytes[l] += B->payload_bytes + frame;
        }
    }
}

void skv_mem_end(skv_mem *m)
{
    m->total = 0;
    for (int k = 0; k < SKV_MEM_NKINDS; k++)
        m->total += m->kind[k];
}

int skv_cache_mem(const skv_cache *c, skv_mem *m)
{
    int rc = skv_mem_begin(m, c);
    if (rc < 0)
        return rc;
    for (uint32_t l = 0; l < c->pk.n_layers; l++)
        skv_mem_layer(m, c, l);
    skv_mem_end(m);
    return 0;
}

void skv_mem_free(skv_mem *m)
{
    free(m->layer_rows);
    free(m->layer_bytes);
    m->layer_rows = m->layer_bytes = NULL;
}
