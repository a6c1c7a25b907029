/* bench_model.c -- built and run by scripts/bench-model.
 *
 *   bench_model prompt MODEL TEXT N_PROMPT N_DECODE OUTDIR THREADS...
 *     prompt processing and decode speed of the C forward pass, and the cost
 *     of recording a trace, all measured side by side in one run;
 *   bench_model decode MODEL TEXT N_DECODE THREADS DEPTH [float|avx2]
 *     one line "tok/s": decode speed with the fp16 cache after a prefill of
 *     DEPTH tokens (llama-bench's tg at depth d), on int8 activations or,
 *     with "float", on float32 ones; "avx2": int8 without vpdpbusd
 *     (maddubs + madd), to show what VNNI gives on this CPU. */
#include "smartkv.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void die(const char *what)
{
    fprintf(stderr, "bench_model: %s: %s\n", what, skv_errmsg());
    exit(1);
}

static int32_t *load_tokens(skv_model *m, const char *text, size_t *n)
{
    FILE *f = fopen(text, "rb");
    if (!f) {
        perror(text);
        exit(1);
    }
    static char buf[1 << 20];
    size_t len = fread(buf, 1, sizeof buf, f);
    fclose(f);
    const skv_tokenizer *tk = skv_model_tokenizer(m);
    int32_t *ids;
    if (!tk || skv_tokenize(tk, buf, len, 0, &ids, n) < 0)
        die("tokenize");
    return ids;
}

static int decode(int argc, char **argv)
{
    if (argc < 7) {
        fprintf(stderr, "usage: bench_model decode MODEL TEXT N_DECODE THREADS DEPTH [float|avx2]\n");
        return 2;
    }
    uint32_t nd = (uint32_t)atoi(argv[4]), depth = (uint32_t)atoi(argv[6]);
    skv_model *m = skv_model_load(argv[2], atoi(argv[5]));
    if (!m)
        die(argv[2]);
    if (argc > 7 && !strcmp(argv[7], "float"))
        skv_model_set_q8(m, 0);
    if (argc > 7 && !strcmp(argv[7], "avx2"))
        skv_simd_set_level(SKV_SIMD_AVX2);
    size_t nt;
    int32_t *ids = load_tokens(m, argv[3], &nt);
    const skv_model_params *p = skv_model_get_params(m);
    uint32_t total = depth + nd + 1;
    int32_t *tok = malloc(total * sizeof *tok);
    float *logits = malloc((size_t)p->n_vocab * sizeof(float));
    if (!tok || !logits)
        die("memory");
    for (uint32_t i = 0; i < total; i++)
        tok[i] = ids[i % nt];
    skv_ec_cfg c;
    skv_ec_defaults(&c);
    c.kind = SKV_EC_FP16;
    skv_kv_cache *kc = skv_ec_new(&c, p->n_layers, p->n_heads, p->n_kv_heads, p->head_dim, total);
    skv_session *s = kc ? skv_session_new(m, kc, total) : NULL;
    if (!s)
        die("session");
    /* warm-up token (pages in the weights), then the context */
    if (skv_session_eval(s, tok, 1, logits, SKV_LOGITS_LAST) < 0 ||
        (depth > 1 && skv_session_eval(s, tok + 1, depth - 1, logits, SKV_LOGITS_LAST) < 0))
        die("prefill");
    if (depth == 0 && skv_session_reset(s) < 0)
        die("reset");
    /* decode: the text's next tokens, one at a time, logits each step */
    double t0 = now();
    for (uint32_t i = 0; i < nd; i++)
        if (skv_session_eval(s, tok + depth + i, 1, logits, SKV_LOGITS_LAST) < 0)
            die("decode");
    double t1 = now();
    printf("%.2f\n", nd / (t1 - t0));
    skv_session_free(s);
    skv_kv_cache_free(kc);
    free(tok);
    free(logits);
    free(ids);
    skv_model_free(m);
    return 0;
}

static int prompt(int argc, char **argv)
{
    if (argc < 8) {
        fprintf(stderr, "usage: bench_model prompt MODEL TEXT N_PROMPT N_DECODE OUTDIR THREADS...\n");
        return 2;
    }
    const char *model = argv[2], *text = argv[3], *dir = argv[6];
    uint32_t np = (uint32_t)atoi(argv[4]), nd = (uint32_t)atoi(argv[5]);
    printf("%-8s %12s %12s %12s %12s %10s\n", "threads", "prompt tok/s", "decode tok/s",
           "record tok/s", "eval tok/s", "rec/eval");
    for (int a = 7; a < argc; a++) {
        int th = atoi(argv[a]);
        skv_model *m = skv_model_load(model, th);
        if (!m)
            die(model);
        size_t n;
        int32_t *ids = load_tokens(m, text, &n);
        if (n < np)
            np = (uint32_t)n;
        uint32_t V = skv_model_get_params(m)->n_vocab;
        float *logits = malloc((size_t)V * sizeof(float));
        skv_session *s = skv_session_new(m, NULL, np + nd);
        if (!s || !logits)
            die("session");
        /* warm up (page in the mapped weights) */
        if (skv_session_eval(s, ids, 16, NULL, SKV_LOGITS_NONE) < 0 || skv_session_reset(s) < 0)
            die("warm-up");
        /* prompt processing: one batched prefill of np tokens */
        double t0 = now();
        if (skv_session_eval(s, ids, np, logits, SKV_LOGITS_LAST) < 0)
            die("prefill");
        double t1 = now();
        /* decode: nd greedy steps, one token at a time */
        for (uint32_t i = 0; i < nd; i++) {
            int32_t next = skv_argmax(logits, V);
            if (skv_session_eval(s, &next, 1, logits, SKV_LOGITS_LAST) < 0)
                die("decode");
        }
        double t2 = now();
        /* the same prompt through the layer-major recorder (to a file) vs a
         * plain evaluation without logits */
        char path[4096];
        snprintf(path, sizeof path, "%s/bench.skv", dir);
        skv_stream *out = skv_open_write(path, -1);
        if (!out)
            die(path);
        double t3 = now();
        if (skv_model_record(m, ids, np, out, NULL) < 0)
            die("record");
        if (skv_close(out) < 0)
            die(path);
        double t4 = now();
        skv_session_reset(s);
        double t5 = now();
        if (skv_session_eval(s, ids, np, NULL, SKV_LOGITS_NONE) < 0)
            die("eval");
        double t6 = now();
        printf("%-8d %12.1f %12.1f %12.1f %12.1f %10.2f\n", th, np / (t1 - t0), nd / (t2 - t1),
               np / (t4 - t3), np / (t6 - t5), (t4 - t3) / (t6 - t5));
        fflush(stdout);
        remove(path);
        skv_session_free(s);
        free(logits);
        free(ids);
        skv_model_free(m);
    }
    printf("(%u prompt tokens, %u decode steps; rec/eval = recording time / plain prefill time)\n",
           np, nd);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && !strcmp(argv[1], "decode"))
        return decode(argc, argv);
    if (argc > 1 && !strcmp(argv[1], "prompt"))
        return prompt(argc, argv);
    fprintf(stderr, "usage: bench_model prompt|decode ...\n");
    return 2;
}
