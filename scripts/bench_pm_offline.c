/* bench_pm_offline.c -- one context length of scripts/bench-prune-merge-
 * offline: for each packed cache given (made by skv-alloc | skv-quant from
 * TRACE), its bytes, beta, rows per (layer, KV head) (stored tokens and
 * centroids), the decode time of its attention (the fused CPU kernels, one
 * thread, all layers, the last S steps, repeated until 0.3 s have passed;
 * float kernels: avx2, else scalar)
 * and the relative L2 error of its attention outputs against float64
 * attention on TRACE.  The caches are timed in turn in one process, so
 * their times are measured under the same load. */
#include "smartkv.h"

#include <math.h>
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
    fprintf(stderr, "bench_pm_offline: %s: %s\n", what, skv_errmsg());
    exit(1);
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: bench_pm_offline TRACE STEPS LABEL=CACHE...\n");
        return 2;
    }
    skv_trace *t = NULL;
    if (skv_trace_load(argv[1], &t) < 0)
        die(argv[1]);
    const skv_trace_hdr *h = &t->hdr;
    uint64_t S = (uint64_t)atoi(argv[2]), T = h->n_tokens;
    if (S < 1 || S > T)
        S = T;
    uint64_t *steps = malloc(S * sizeof *steps);
    for (uint64_t i = 0; i < S; i++)
        steps[i] = T - S + i;
    const uint32_t L = h->n_layers, H = h->n_heads, d = h->head_dim;
    size_t per = (size_t)H * S * d;
    float *ref = malloc((size_t)L * per * sizeof *ref), *out = malloc(per * sizeof *out);
    /* the float kernels, as the evaluations use: the error is the
     * compression's, not the int8 kernels' rounding */
    skv_attend_opts o = {1, skv_att_kernel_available(SKV_KERNEL_AVX2) ? SKV_KERNEL_AVX2
                                                                     : SKV_KERNEL_SCALAR, 0};
    skv_attend_ctx *ctx = skv_attend_new(&o);
    if (!steps || !ref || !out || !ctx)
        die("setup");
    for (uint32_t l = 0; l < L; l++) {
        skv_kv_view V = {SKV_KV_F32, H, h->n_kv_heads, d, T, t->q[l], t->k[l], t->v[l], NULL};
        if (skv_attend_layer_ref(ctx, &V, steps, S, ref + l * per, NULL) < 0)
            die("reference");
    }
    printf("%-7s %-14s %10s %6s %9s %10s %8s\n", "context", "cache", "bytes", "beta",
           "rows/head", "us/step", "rel.L2");
    for (int a = 3; a < argc; a++) {
        char *eq = strchr(argv[a], '=');
        if (!eq)
            die("argument not LABEL=CACHE");
        *eq = 0;
        skv_cache *c = NULL;
        if (skv_cache_load(eq + 1, &c) < 0 || skv_cache_queries_from(c, argv[1]) < 0)
            die(eq + 1);
        uint64_t rows = 0;
        for (uint32_t l = 0; l < L; l++)
            for (uint32_t kh = 0; kh < h->n_kv_heads; kh++) {
                const skv_cache_head *ch = skv_cache_head_at(c, l, kh);
                rows += ch->n_stored + (ch->cent ? ch->cent->rows.n : 0);
            }
        double err = 0, nrm = 0, t0 = now(), t1;
        uint64_t reps = 0;
        do {
            for (uint32_t l = 0; l < L; l++) {
                skv_kv_view V = {SKV_KV_PACKED, H, h->n_kv_heads, d, T, c->q[l], NULL, NULL,
                                 skv_cache_head_at(c, l, 0)};
                if (skv_attend_layer(ctx, &V, steps, S, out, NULL) < 0)
                    die("attention");
                if (reps == 0)
                    for (size_t i = 0; i < per; i++) {
                        double e = (double)out[i] - ref[l * per + i];
                        err += e * e;
                        nrm += (double)ref[l * per + i] * ref[l * per + i];
                    }
            }
            reps++;
            t1 = now();
        } while (t1 - t0 < 0.3);
        printf("%-7llu %-14s %10llu %6.3f %9.1f %10.1f %8.4f\n", (unsigned long long)T, argv[a],
               (unsigned long long)c->pk.cache_bytes,
               (double)c->pk.cache_bytes / (double)c->pk.fp16_bytes,
               (double)rows / ((double)L * h->n_kv_heads), (t1 - t0) / (double)(reps * S) * 1e6,
               sqrt(err / (nrm > 0 ? nrm : 1)));
        fflush(stdout);
        skv_cache_free(c);
    }
    skv_attend_free(ctx);
    free(steps);
    free(ref);
    free(out);
    skv_trace_free(t);
    return 0;
}
