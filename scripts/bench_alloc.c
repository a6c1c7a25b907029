/* bench_alloc.c -- the cost of importance tracking next to the attention
 * replay it piggybacks on, measured side by side on the same layers and
 * queries (built and run by scripts/bench-alloc).
 *
 *   bench_alloc kernel TOKENS LAYERS THREADS REPS PV [QUERIES]
 *                      synthetic layers in memory; QUERIES: only the last
 *                      QUERIES queries (each still sees its whole prefix)
 *   bench_alloc replay FILE THREADS                    a trace file, layer by layer
 *
 * Variants, all over every query (cumulative importance, realloc 1):
 *   attn        scores + softmax                       (SKV_IMP_F_NO_TRACK)
 *   attn+track  scores + softmax + importance           (what skv-alloc runs)
 *   attn+pv     scores + softmax + outputs a.V          (full attention)
 *   attn+pv+track
 *   attn+track+entropy  the importance and the attention entropy (what
 *               skv-alloc runs for layer-aware, the one policy that reads it)
 * Tracking overhead = (attn+track - attn) / attn, and against full attention
 * (attn+pv+track - attn+pv) / attn+pv.  Variants alternate, and in kernel
 * mode each runs REPS times per layer keeping the fastest, so that load from
 * other processes hits them alike and is filtered out; with REPS >= 3 the
 * tracking overhead is also the median over repetitions of the ratio of the
 * two variants run back to back (the same moment's load on both; which of
 * the two goes first alternates), with a distribution-free confidence
 * interval of at least 90% for that median from the order statistics of
 * the ratios. */
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

/* CPU time of the whole process: with one replay thread it is the work done,
 * untouched by time spent descheduled on a busy machine. */
static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
static int use_cpu_time;

#define NV 5
static const uint32_t flags[NV] = {SKV_IMP_F_NO_TRACK, 0, SKV_IMP_F_OUTPUT | SKV_IMP_F_NO_TRACK,
                                   SKV_IMP_F_OUTPUT, 0};
static const char *const names[NV] = {"attn", "attn+track", "attn+pv", "attn+pv+track",
                                      "attn+track+entropy"};

static uint32_t last_queries; /* kernel: replay only the last N queries (window mode) */

/* per repetition, summed over layers: the paired ratios of variants run
 * back to back (kernel mode) */
#define MAX_REPS 64
static double rep_t[NV][MAX_REPS];
static int n_reps;

static int run_layer(const skv_trace_hdr *h, const skv_layer *L, uint32_t threads, double *t,
                     int with_pv, int reps)
{
    double best[NV] = {1e300, 1e300, 1e300, 1e300, 1e300};
    float *imp = malloc(sizeof(float) * h->n_kv_heads * h->n_tokens);
    float ent[SKV_MAX_HEADS];
    skv_imp_cfg c;
    skv_imp_defaults(&c);
    c.mode = SKV_IMP_CUMULATIVE;
    c.realloc = 1;
    c.threads = threads;
    if (last_queries) {
        c.mode = SKV_IMP_WINDOW;
        c.window = last_queries;
    }
    /* alternate the order per layer */
    int order[NV] = {0, 1, 4, 2, 3};
    if (L->index & 1) {
        order[0] = 4;
        order[1] = 1;
        order[2] = 0;
        order[3] = 3;
        order[4] = 2;
    }
    for (int rep = 0; rep < reps; rep++)
        for (int k = 0; k < NV; k++) {
            int v = order[k];
            /* attn and attn+track swap places every other repetition, so
             * neither always runs first */
            if ((rep & 1) && (v == 0 || v == 1))
                v = 1 - v;
            if ((v == 2 || v == 3) && !with_pv)
                continue;
            c.flags = flags[v];
            double t0 = use_cpu_time ? cpu_now() : now();
            int rc = skv_importance_layer(&c, h, L, imp, v == 4 ? ent : NULL);
            double dt = (use_cpu_time ? cpu_now() : now()) - t0;
            best[v] = dt < best[v] ? dt : best[v];
            if (rep < MAX_REPS)
                rep_t[v][rep] += dt;
            if (rc < 0) {
                fprintf(stderr, "bench_alloc: %s\n", skv_errmsg());
                free(imp);
                return rc;
            }
        }
    for (int v = 0; v < NV; v++)
        if (with_pv || (v != 2 && v != 3))
            t[v] += best[v];
    free(imp);
    return 0;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void report(const double *t, int with_pv, const char *what)
{
    printf("%s\n", what);
    for (int v = 0; v < NV; v++)
        if (with_pv || (v != 2 && v != 3))
            printf("  %-19s %9.3f s\n", names[v], t[v]);
    printf("  tracking overhead vs attention (scores+softmax): %+.2f%%\n",
           100.0 * (t[1] - t[0]) / t[0]);
    printf("  ... with the attention entropy (layer-aware):    %+.2f%%\n",
           100.0 * (t[4] - t[0]) / t[0]);
    if (with_pv)
        printf("  tracking overhead vs full attention (+a.V):     %+.2f%%\n",
               100.0 * (t[3] - t[2]) / t[2]);
    if (n_reps >= 3) {
        /* Each repetition runs attn and attn+track one after the other:
         * their ratio sees the same load from other processes, where the
         * fastest of each can come from different moments. */
        double r[MAX_REPS];
        for (int i = 0; i < n_reps; i++)
            r[i] = rep_t[1][i] / rep_t[0][i];
        qsort(r, (size_t)n_reps, sizeof r[0], cmp_double);
        double med = n_reps % 2 ? r[n_reps / 2] : 0.5 * (r[n_reps / 2 - 1] + r[n_reps / 2]);
        printf("  tracking overhead, median of %d paired runs:     %+.2f%% (range %+.2f%% .. %+.2f%%)\n",
               n_reps, 100.0 * (med - 1), 100.0 * (r[0] - 1), 100.0 * (r[n_reps - 1] - 1));
        /* The median lies between the k-th smallest and the k-th largest
         * ratio with probability 1 - 2 P(Bin(n, 1/2) < k): the largest k
         * keeping that at least 0.9 (none for n < 5). */
        int k = 0;
        double cov = 1, cdf = 0, pk = ldexp(1.0, -n_reps); /* P(X = 0) */
        for (int i = 0; i < n_reps; i++) {
            cdf += pk;                  /* P(X <= i) */
            if (2 * cdf > 0.1)
                break;
            k = i + 1;
            cov = 1 - 2 * cdf;
            pk = pk * (n_reps - i) / (i + 1);
        }
        if (k > 0) {
            printf("  its %.1f%% confidence interval (ratios %d and %d of %d): %+.2f%% .. %+.2f%%\n",
                   100 * cov, k, n_reps + 1 - k, n_reps, 100.0 * (r[k - 1] - 1),
                   100.0 * (r[n_reps - k] - 1));
        }
    }
}

int main(int argc, char **argv)
{
    double t[NV] = {0, 0, 0, 0, 0};
    if ((argc == 7 || argc == 8) && !strcmp(argv[1], "kernel")) {
        last_queries = argc == 8 ? (uint32_t)atoi(argv[7]) : 0;
        skv_synth_cfg sc;
        skv_synth_defaults(&sc);
        sc.n_tokens = strtoull(argv[2], NULL, 10);
        sc.n_layers = (uint32_t)atoi(argv[3]);
        uint32_t threads = (uint32_t)atoi(argv[4]);
        int reps = atoi(argv[5]), with_pv = atoi(argv[6]);
        n_reps = reps < MAX_REPS ? reps : MAX_REPS;
        use_cpu_time = threads == 1;
        skv_trace_hdr h;
        if (skv_synth_header(&sc, &h) < 0) {
            fprintf(stderr, "bench_alloc: %s\n", skv_errmsg());
            return 1;
        }
        size_t nq, nkv;
        skv_trace_layer_floats(&h, &nq, &nkv);
        skv_layer L = {0};
        L.q = malloc(nq * 4);
        L.k = malloc(nkv * 4);
        L.v = malloc(nkv * 4);
        for (uint32_t l = 0; l < h.n_layers; l++) {
            if (skv_synth_layer(&sc, l, L.q, L.k, L.v) < 0)
                return 1;
            L.index = l;
            if (run_layer(&h, &L, threads, t, with_pv, reps) < 0)
                return 1;
        }
        char what[240], qs[64] = "every query";
        if (last_queries)
            snprintf(qs, sizeof qs, "the last %u queries", last_queries);
        snprintf(what, sizeof what, "replay of %u synthetic layers x %llu tokens (9 heads, 3 kv "
                 "heads, head_dim 64), %u threads, %s, fastest of %d per layer, %s:",
                 h.n_layers, (unsigned long long)h.n_tokens, threads, qs, reps,
                 use_cpu_time ? "CPU time" : "wall time");
        report(t, with_pv, what);
        skv_layer_free(&L);
        return 0;
    }
    if (argc == 4 && !strcmp(argv[1], "replay")) {
        skv_trace_reader *r = skv_trace_reader_open(argv[2], NULL, NULL);
        if (!r) {
            fprintf(stderr, "bench_alloc: %s\n", skv_errmsg());
            return 1;
        }
        uint32_t threads = (uint32_t)atoi(argv[3]);
        skv_layer L = {0};
        int rc;
        double t_read = 0, t0 = now();
        while ((rc = skv_trace_next_layer(r, &L)) == 1) {
            t_read += now() - t0;
            if (run_layer(&r->hdr, &L, threads, t, 0, 1) < 0)
                return 1;
            t0 = now();
        }
        if (rc < 0) {
            fprintf(stderr, "bench_alloc: %s\n", skv_errmsg());
            return 1;
        }
        char what[160];
        snprintf(what, sizeof what, "replay of %s (%u layers x %llu tokens), %u threads, every "
                 "query; reading the layers took %.3f s:", argv[2], r->hdr.n_layers,
                 (unsigned long long)r->hdr.n_tokens, threads, t_read);
        report(t, 0, what);
        printf("attn_seconds %.6f\n", t[0]);
        skv_layer_free(&L);
        skv_trace_reader_close(r);
        return 0;
    }
    fprintf(stderr, "usage: bench_alloc kernel TOKENS LAYERS THREADS REPS PV | replay FILE THREADS\n");
    return 2;
}
