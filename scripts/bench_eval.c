/* bench_eval.c -- decode tokens/s with the compressed cache vs the fp16
 * cache at given context lengths, and the tracking + reallocation overhead
 * as a fraction of decode time (scripts/bench-eval). */
#include "smartkv.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void die(const char *what)
{
    fprintf(stderr, "bench_eval: %s: %s\n", what, skv_errmsg());
    exit(1);
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: bench_eval MODEL TEXT DECODE THREADS N...\n");
        return 2;
    }
    int threads = atoi(argv[4]);
    uint32_t D = (uint32_t)atoi(argv[3]);
    skv_model *m = skv_model_load(argv[1], threads);
    if (!m)
        die(argv[1]);
    FILE *f = fopen(argv[2], "rb");
    if (!f)
        die(argv[2]);
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    int32_t *ids;
    size_t nt;
    if (skv_tokenize(skv_model_tokenizer(m), buf, n, 0, &ids, &nt) < 0)
        die("tokenize");
    const skv_model_params *p = skv_model_get_params(m);
    float *logits = malloc((size_t)p->n_vocab * 4);
    printf("%-7s %-50s %10s %9s %9s %9s %9s %9s %8s %8s\n", "context", "cache", "prefill_s",
           "decode/s", "vs_fp16", "track%", "realloc%", "attend%", "beta", "reallocs");
    for (int ai = 5; ai < argc; ai++) {
        uint32_t N = (uint32_t)atoi(argv[ai]);
        int32_t *tok = malloc((N + D) * sizeof *tok);
        for (uint32_t i = 0; i < N; i++)
            tok[i] = ids[i % nt];
        double ref_tps = 0;
        for (int k = 0; k < 6; k++) {
            skv_ec_cfg c;
            skv_ec_defaults(&c);
            if (k == 0) {
                c.kind = SKV_EC_FP16;
            } else if (k == 1) {
                c.alloc.budget = 0.3;
                c.alloc.width_mask = (1u << 4) | (1u << 8) | (1u << 16);
            } else if (k == 2) {
                c.alloc.policy = SKV_POLICY_UNIFORM;
                c.alloc.uniform_bits = 4;
            } else if (k == 3) {
                c.realloc = 32;
                if (skv_ec_kivi_parse("kivi:4", &c) != 1)
                    die("kivi");
            } else {
                /* the method (skv-eval --method, scripts/eval-method) at
                 * 0.3, widths 2..16 (its eviction rows attend with a
                 * float64 reference loop: not timed); head weights need
                 * the session's hidden states (attached below) */
                skv_ec_method(&c);
                c.alloc.budget = 0.3;
                c.alloc.width_mask = (1u << 2) | (1u << 3) | (1u << 4) | (1u << 8) | (1u << 16);
                /* k == 5: the damage measured by requantizing every held
                 * row instead of predicted from the rows' ranges */
                if (k == 5)
                    c.err_model = SKV_EC_ERR_IMP_MSE;
            }
            char label[160];
            skv_ec_describe(&c, label, sizeof label);
            skv_kv_cache *kc = skv_ec_new(&c, p->n_layers, p->n_heads, p->n_kv_heads, p->head_dim, N + D);
            if (!kc)
                die("cache");
            skv_session *s = skv_session_new(m, kc, N + D);
            if (!s)
                die("session");
            skv_atskv_attach(kc, s, skv_model_tokenizer(m));
            double t0 = now();
            skv_ec_hold(kc, 1);
            if (skv_session_eval(s, tok, N, logits, SKV_LOGITS_LAST) < 0)
                die("prefill");
            skv_ec_hold(kc, 0);
            if (skv_ec_realloc(kc) < 0)
                die("realloc");
            double t1 = now();
            skv_ec_stats_reset(kc);
            for (uint32_t i = 0; i < D; i++) {
                int32_t id = skv_argmax(logits, p->n_vocab);
                if (skv_session_eval(s, &id, 1, logits, SKV_LOGITS_LAST) < 0)
                    die("decode");
            }
            double t2 = now(), dec = t2 - t1;
            skv_ec_stats st;
            skv_ec_stats_get(kc, &st);
            double tps = D / dec;
            if (k == 0)
                ref_tps = tps;
            printf("%-7u %-50s %10.2f %9.2f %9.3f %9.2f %9.2f %9.2f %8.3f %8llu\n", N, label,
                   t1 - t0, tps, tps / ref_tps, 100.0 * (double)st.track_ns * 1e-9 / dec / threads,
                   100.0 * (double)st.realloc_ns * 1e-9 / dec,
                   100.0 * (double)st.attend_ns * 1e-9 / dec / threads,
                   st.fp16_bytes ? (double)st.bytes / (double)st.fp16_bytes : 0,
                   (unsigned long long)st.n_realloc);
            fflush(stdout);
            skv_session_free(s);
            skv_kv_cache_free(kc);
        }
        free(tok);
    }
    free(logits);
    free(ids);
    skv_model_free(m);
    return 0;
}
