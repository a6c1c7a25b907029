/* induction.c -- RazorAttention's head scores (Tang et al. 2024,
 * "RazorAttention: Efficient KV Cache Compression Through Retrieval
 * Heads"): the model reads a sequence of n distinct random tokens repeated
 * twice; in the second copy, at query position t (n <= t < 2n) the token
 * x[t] last occurred at t - n, so
 *   induction score = mean over t of the attention to t - n + 1 (the token
 *                     that followed the earlier occurrence),
 *   echo score      = mean over t of the attention to t - n (the earlier
 *                     occurrence itself),
 * per (layer, query head). */
#include "smartkv_model.h"
#include "smartkv_error.h"

#include <stdlib.h>
#include <string.h>

void skv_induction_rows(uint32_t n, uint64_t pos, uint32_t rows, const float *probs,
                        size_t stride, double *induction, double *echo)
{
    for (uint32_t i = 0; i < rows; i++) {
        uint64_t t = pos + i;
        if (t < n || t >= 2 * (uint64_t)n)
            continue;
        const float *p = probs + (size_t)i * stride;
        *induction += p[t - n + 1];
        *echo += p[t - n];
    }
}

typedef struct ind_ctx {
    uint32_t n, n_heads;
    double *ind, *echo; /* [n_layers][n_heads] sums */
} ind_ctx;

static void hook(void *vc, uint32_t layer, uint32_t head, uint64_t pos, uint32_t rows,
                 const float *probs, size_t stride)
{
    ind_ctx *c = vc; /* each (layer, head) writes its own slot */
    size_t r = (size_t)layer * c->n_heads + head;
    skv_induction_rows(c->n, pos, rows, probs, stride, &c->ind[r], &c->echo[r]);
}

int skv_induction_scores(skv_model *m, uint32_t n, uint64_t seed, float *induction, float *echo)
{
    const skv_model_params *p = skv_model_get_params(m);
    const uint32_t lo = p->n_vocab / 16; /* away from the special and byte tokens */
    if (n < 2 || n > p->n_vocab - lo || (p->n_ctx_train && 2 * (uint64_t)n > p->n_ctx_train))
        return skv_error(SKV_EINVAL, "induction scores: %u random tokens (twice) do not fit "
                         "this model (%u tokens in the vocabulary, context %u)", n, p->n_vocab,
                         p->n_ctx_train);
    size_t nh = (size_t)p->n_layers * p->n_heads;
    int32_t *tok = skv_malloc((size_t)2 * n * sizeof(int32_t));
    uint8_t *used = skv_calloc(p->n_vocab, 1);
    ind_ctx c = {n, p->n_heads, skv_calloc(nh, sizeof(double)), skv_calloc(nh, sizeof(double))};
    skv_session *s = NULL;
    int rc = SKV_ENOMEM;
    if (!tok || !used || !c.ind || !c.echo)
        goto out;
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t id;
        do { /* xorshift64*: distinct ids in [lo, n_vocab) */
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            id = lo + (uint32_t)((x * 0x2545F4914F6CDD1Dull >> 33) % (p->n_vocab - lo));
        } while (used[id]);
        used[id] = 1;
        tok[i] = tok[n + i] = (int32_t)id;
    }
    if (!(s = skv_session_new(m, NULL, 2 * (uint64_t)n))) {
        rc = SKV_EINVAL;
        goto out;
    }
    skv_session_set_attn_hook(s, hook, &c);
    if ((rc = skv_session_eval(s, tok, 2 * n, NULL, SKV_LOGITS_NONE)) < 0)
        goto out;
    for (size_t r = 0; r < nh; r++) {
        induction[r] = (float)(c.ind[r] / n);
        echo[r] = (float)(c.echo[r] / n);
    }
    rc = 0;
out:
    skv_session_free(s);
    free(tok);
    free(used);
    free(c.ind);
    free(c.echo);
    return rc;
}
