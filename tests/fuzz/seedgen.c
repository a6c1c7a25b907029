/* seedgen.c -- writes seed inputs no skv tool produces on its own (a trace
 * with token ids).  Built and run by tests/fuzz/make-corpus.
 * usage: seedgen OUT.skv */
#include "smartkv.h"

#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc != 2)
        return 2;
    skv_trace_hdr h;
    memset(&h, 0, sizeof h);
    h.n_layers = 1;
    h.n_heads = 2;
    h.n_kv_heads = 1;
    h.head_dim = 4;
    h.n_tokens = 5;
    h.n_prefill = 3;
    h.dtype = SKV_BF16;
    h.flags = SKV_TRACE_HAS_TOKENS | SKV_TRACE_POST_ROPE;
    h.rope_theta = 10000;
    snprintf(h.model, sizeof h.model, "seed");
    snprintf(h.tokenizer, sizeof h.tokenizer, "tok");
    skv_trace *t = skv_trace_new(&h);
    if (!t)
        return 1;
    for (int i = 0; i < 5; i++)
        t->tokens[i] = 100 + i;
    for (int i = 0; i < 2 * 5 * 4; i++)
        t->q[0][i] = (float)i / 8 - 2;
    for (int i = 0; i < 5 * 4; i++) {
        t->k[0][i] = (float)i / 4;
        t->v[0][i] = -(float)i;
    }
    int rc = skv_trace_save(t, argv[1], -1);
    skv_trace_free(t);
    if (rc < 0) {
        fprintf(stderr, "seedgen: %s\n", skv_errmsg());
        return 1;
    }
    return 0;
}
