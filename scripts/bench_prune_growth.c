/* bench_prune_growth.c -- the seed's angle (scripts/bench-prune-growth):
 * measured cache bytes and decode time per token as the context grows, for
 * prune-merge (merged), pruned-only (the same cache, no centroids) and the
 * full fp16 cache (the same cache, never pruning), side by side in one run.
 * All three are the prune-merge cache of smartkv_merge.h with the same
 * attention code, so the times differ by the rows attended and the work of
 * pruning and merging, not by kernels.  The text is fed in blocks of FEED
 * tokens (the model's largest block: feeding is the slow part, the cost of
 * the full cache's quadratic attention); pruning then happens at each
 * block, as it would every P tokens while decoding.  At each length the
 * three caches decode DECODE greedy tokens in turn (under the same load),
 * and their bytes are read after the last one. */
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
    fprintf(stderr, "bench_prune_growth: %s: %s\n", what, skv_errmsg());
    exit(1);
}

#define MAX_N 16
#define FEED 64u

int main(int argc, char **argv)
{
    if (argc < 8) {
        fprintf(stderr, "usage: bench_prune_growth MODEL TEXT DECODE BETA K THREADS N...\n");
        return 2;
    }
    const uint32_t D = (uint32_t)atoi(argv[3]);
    const double beta = atof(argv[4]);
    const uint32_t K = (uint32_t)atoi(argv[5]);
    const int threads = atoi(argv[6]);
    uint32_t lens[MAX_N], nl = 0;
    for (int i = 7; i < argc && nl < MAX_N; i++) {
        lens[nl] = (uint32_t)atoi(argv[i]);
        if (lens[nl] < 64 || (nl && lens[nl] <= lens[nl - 1])) {
            fprintf(stderr, "bench_prune_growth: lengths must be >= 64 and increasing\n");
            return 2;
        }
        nl++;
    }
    if (!D || !nl) {
        fprintf(stderr, "bench_prune_growth: DECODE and one length at least\n");
        return 2;
    }
    skv_model *m = skv_model_load(argv[1], threads);
    if (!m)
        die(argv[1]);
    FILE *f = fopen(argv[2], "rb");
    if (!f)
        die(argv[2]);
    static char buf[1 << 21];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    int32_t *ids;
    size_t nt;
    if (skv_tokenize(skv_model_tokenizer(m), buf, n, 0, &ids, &nt) < 0)
        die("tokenize");
    const uint32_t maxN = lens[nl - 1];
    if (nt < maxN) {
        fprintf(stderr, "bench_prune_growth: the text has %zu tokens, %u needed\n", nt, maxN);
        return 1;
    }
    const skv_model_params *p = skv_model_get_params(m);
    const char *names[3] = {"full", "pruned-only", "merged"};
    skv_kv_cache *kc[3];
    skv_session *ss[3];
    float *lg[3];
    uint32_t fed[3] = {0, 0, 0};  /* text tokens fed */
    double feed_s[3] = {0, 0, 0}, t_start = now();
    /* the decoded tokens stay in the cache: the context at length i is
     * lens[i] text tokens + i * D decoded ones */
    const uint64_t cap = (uint64_t)maxN + (uint64_t)nl * D;
    for (int k = 0; k < 3; k++) {
        skv_pm_cfg c;
        skv_pm_defaults(&c);
        c.budget = k ? beta : 0;          /* 0: never prunes (the full cache) */
        c.num_clusters = k == 2 ? K : 0;  /* 0: pruned-only */
        if (!(kc[k] = skv_pm_new(&c, p->n_layers, p->n_heads, p->n_kv_heads, p->head_dim, cap)))
            die("cache");
        if (!(ss[k] = skv_session_new(m, kc[k], cap)))
            die("session");
        if (!(lg[k] = malloc((size_t)p->n_vocab * 4)))
            die("logits");
    }
    skv_pm_cfg dc;
    skv_pm_defaults(&dc);
    printf("prune-merge beta %g K %u P %u D %u sinks %u recent %u; text fed in blocks of %u, "
           "%u decode steps per length, %d thread(s)\n", beta, K, dc.pruning_interval,
           dc.lookback_window, dc.sinks, dc.recent, FEED, D, threads);
    printf("%-8s %-12s %12s %8s %9s %10s %8s %8s\n", "context", "cache", "bytes", "beta",
           "rows/head", "ms/token", "vs_full", "bytes_vs");
    fflush(stdout);
    for (uint32_t li = 0; li < nl; li++) {
        double dec0 = 0, bytes0 = 0;
        for (int k = 0; k < 3; k++) {
            double t0 = now();
            while (fed[k] < lens[li]) {
                uint32_t b = lens[li] - fed[k] < FEED ? lens[li] - fed[k] : FEED;
                if (skv_session_eval(ss[k], ids + fed[k], b, lg[k], SKV_LOGITS_LAST) < 0)
                    die("feed");
                fed[k] += b;
            }
            double t1 = now();
            feed_s[k] += t1 - t0;
            for (uint32_t i = 0; i < D; i++) {
                int32_t id = skv_argmax(lg[k], p->n_vocab);
                if (skv_session_eval(ss[k], &id, 1, lg[k], SKV_LOGITS_LAST) < 0)
                    die("decode");
            }
            double dec = (now() - t1) / D;
            skv_pm_stats st;
            if (skv_pm_stats_get(kc[k], &st) < 0)
                die("stats");
            if (k == 0) {
                dec0 = dec;
                bytes0 = (double)st.bytes;
            }
            printf("%-8u %-12s %12llu %8.3f %9llu %10.2f %8.3f %8.3f\n", lens[li] + (li + 1) * D,
                   names[k], (unsigned long long)st.bytes,
                   (double)st.bytes / (double)st.fp16_bytes,
                   (unsigned long long)(st.kept / ((uint64_t)p->n_layers * p->n_kv_heads)),
                   1e3 * dec, dec / dec0, (double)st.bytes / bytes0);
            fflush(stdout);
        }
    }
    printf("feeding the text: full %.1f s, pruned-only %.1f s, merged %.1f s; total %.1f s\n",
           feed_s[0], feed_s[1], feed_s[2], now() - t_start);
    for (int k = 0; k < 3; k++) {
        skv_session_free(ss[k]);
        skv_kv_cache_free(kc[k]);
        free(lg[k]);
    }
    free(ids);
    skv_model_free(m);
    return 0;
}
