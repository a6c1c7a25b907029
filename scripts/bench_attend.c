/* bench_attend.c -- decode-step latency of the fused packed kernels (int8
 * and float) at several budgets against dense fp16 and fp32 attention on
 * the same data, with bytes read and the memory-copy bandwidth measured in
 * the same run.  Not a test.
 *
 *   bench_attend TMPDIR THREADS REPS ALLOC_TRACE...
 *
 * Each ALLOC_TRACE is the same trace with an allocation appended
 * (skv-alloc output, one per beta or policy; a cache with keys per channel
 * is named kchG, G tokens a key group).  Each is packed here with the library
 * (as skv-quant does) and loaded back; the last step's attention is timed:
 *   warm: the same step repeated (the cache stays in the CPU caches if it fits)
 *   cold: a 256 MiB buffer is streamed before each run so K/V come from DRAM.
 * The variants run interleaved within each repetition (so load from other
 * processes hits them alike) and the median of REPS is reported. */
#include "smartkv.h"

#include <pthread.h>
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

/* CPU time of the process: with one thread it is the work done, untouched
 * by time spent descheduled on a busy machine (memory stalls included). */
static int use_cpu_time;
static double timer(void)
{
    if (!use_cpu_time)
        return now();
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

#define FLUSH_BYTES (256u << 20)
static volatile uint64_t sink;
static uint64_t *flush_buf;

static void flush_caches(void)
{
    uint64_t s = 0;
    for (size_t i = 0; i < FLUSH_BYTES / 8; i += 8)
        s += flush_buf[i]++;
    sink += s;
}

typedef struct copy_arg {
    char *dst;
    const char *src;
    size_t n;
} copy_arg;

static void *copy_thread(void *arg)
{
    copy_arg *a = arg;
    memcpy(a->dst, a->src, a->n);
    return NULL;
}

#define MAXV 16
typedef struct variant {
    char name[64];
    skv_attend_ctx *ctx;
    skv_kv_view *views;     /* one layer per entry */
    uint64_t bytes;         /* K/V bytes read per step */
    double beta;            /* cache bytes / fp16 bytes (1 for fp16, 2 for fp32) */
    double t[2][64];        /* [cold][rep] seconds */
} variant;

static double run_once(variant *v, uint32_t L, uint64_t step, float *out)
{
    double t0 = timer();
    for (uint32_t l = 0; l < L; l++)
        if (skv_attend_layer(v->ctx, &v->views[l], &step, 1, out, NULL) < 0) {
            fprintf(stderr, "bench_attend: %s: %s\n", v->name, skv_errmsg());
            exit(1);
        }
    return timer() - t0;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: bench_attend TMPDIR THREADS REPS ALLOC_TRACE...\n");
        return 2;
    }
    int threads = atoi(argv[2]), reps = atoi(argv[3]);
    if (reps < 1 || reps > 64)
        reps = 9;
    int nf = argc - 4;
    skv_trace *t = NULL;
    skv_cache *caches[8];
    if (nf > 8)
        nf = 8;
    for (int f = 0; f < nf; f++) {
        skv_trace *tf;
        skv_chunk_list extra = {0};
        skv_cache_plan plan;
        memset(&plan, 0, sizeof plan);
        char cpath[4096];
        snprintf(cpath, sizeof cpath, "%s/bench-cache-%d.skv", argv[1], f);
        skv_stream *s;
        if (skv_cache_input_load(argv[4 + f], &tf, &extra) < 0 ||
            skv_cache_plan_from_chunks(&plan, &tf->hdr, &extra) < 0 ||
            !(s = skv_open_write(cpath, -1)) || skv_cache_write(s, tf, &plan, NULL, 0, NULL) < 0 ||
            skv_close(s) < 0 || skv_cache_load(cpath, &caches[f]) < 0) {
            fprintf(stderr, "bench_attend: %s: %s\n", argv[4 + f], skv_errmsg());
            return 1;
        }
        remove(cpath);
        skv_cache_plan_free(&plan);
        skv_chunk_list_free(&extra);
        if (!t)
            t = tf;
        else
            skv_trace_free(tf);
    }
    const skv_trace_hdr *h = &t->hdr;
    uint32_t L = h->n_layers;
    uint64_t T = h->n_tokens, step = T - 1;
    size_t nkv = (size_t)h->n_kv_heads * T * h->head_dim;
    int best = SKV_KERNEL_AUTO;
    skv_attend_opts o_best = {threads, best, 0}, o_float = {threads, SKV_KERNEL_AVX2, 0};
    skv_attend_ctx *c_best = skv_attend_new(&o_best);
    skv_attend_ctx *c_float = skv_att_kernel_available(SKV_KERNEL_AVX2) ? skv_attend_new(&o_float)
                                                                       : NULL;
    flush_buf = calloc(FLUSH_BYTES, 1);
    float *out = malloc((size_t)h->n_heads * h->head_dim * sizeof *out);
    if (!c_best || !flush_buf || !out) {
        fprintf(stderr, "bench_attend: setup failed\n");
        return 1;
    }
    variant *V = calloc(MAXV, sizeof *V);
    int nv = 0;
    /* packed: every cache with the best kernel, then with the float one */
    for (int pass = 0; pass < 2; pass++)
        for (int f = 0; f < nf; f++) {
            skv_attend_ctx *ctx = pass ? c_float : c_best;
            if (!ctx)
                continue;
            variant *v = &V[nv++];
            const skv_cache *c = caches[f];
            v->ctx = ctx;
            v->beta = (double)c->pk.cache_bytes / (double)c->pk.fp16_bytes;
            /* keys per channel (KIVI's layout): kchG, G tokens a key group */
            char kch[32] = "";
            if (c->pk.q.k_mode == SKV_QMODE_CHAN)
                snprintf(kch, sizeof kch, " kch%u", c->pk.q.k_tokens);
            snprintf(v->name, sizeof v->name, "packed b=%.2f%s %s", v->beta, kch,
                     skv_att_kernel_name(skv_attend_kernel(ctx)));
            v->views = calloc(L, sizeof *v->views);
            for (uint32_t l = 0; l < L; l++) {
                skv_kv_view a = {SKV_KV_PACKED, h->n_heads, h->n_kv_heads, h->head_dim, T,
                                 c->q[l] ? c->q[l] : t->q[l], NULL, NULL,
                                 skv_cache_head_at(c, l, 0)};
                v->views[l] = a;
                v->bytes += skv_attend_bytes_read(&a, step);
            }
        }
    for (int dt = 0; dt < 2; dt++) {
        variant *v = &V[nv++];
        v->ctx = c_best;
        v->beta = dt ? 2.0 : 1.0;
        snprintf(v->name, sizeof v->name, "dense %s", dt ? "fp32" : "fp16");
        v->views = calloc(L, sizeof *v->views);
        for (uint32_t l = 0; l < L; l++) {
            const void *k = t->k[l], *vv = t->v[l];
            if (!dt) {
                uint16_t *k16 = malloc(nkv * 2), *v16 = malloc(nkv * 2);
                skv_convert_from_f32(SKV_F16, t->k[l], k16, nkv);
                skv_convert_from_f32(SKV_F16, t->v[l], v16, nkv);
                k = k16;
                vv = v16;
            }
            skv_kv_view a = {dt ? SKV_KV_F32 : SKV_KV_F16, h->n_heads, h->n_kv_heads,
                             h->head_dim, T, t->q[l], k, vv, NULL};
            v->views[l] = a;
            v->bytes += skv_attend_bytes_read(&a, step);
        }
    }
    /* memory-copy bandwidth with the same threads: 2 x 128 MiB, src and dst */
    size_t cn = 128u << 20;
    char *src = malloc(cn), *dst = malloc(cn);
    memset(src, 1, cn);
    memset(dst, 2, cn);
    int nt = skv_attend_threads(c_best);
    use_cpu_time = nt == 1;
    copy_arg ca[256];
    for (int i = 0; i < nt; i++) {
        ca[i].n = cn / (size_t)nt;
        ca[i].src = src + (size_t)i * ca[i].n;
        ca[i].dst = dst + (size_t)i * ca[i].n;
    }
    double copies[64];
    for (int r = 0; r < reps; r++) {
        double t0 = timer();
        if (nt == 1) {
            copy_thread(&ca[0]);
        } else {
            pthread_t th[256];
            for (int i = 0; i < nt; i++)
                pthread_create(&th[i], NULL, copy_thread, &ca[i]);
            for (int i = 0; i < nt; i++)
                pthread_join(th[i], NULL);
        }
        copies[r] = timer() - t0;
    }
    qsort(copies, (size_t)reps, sizeof *copies, cmp_d);
    double copy_gbs = (double)cn / copies[reps / 2] / 1e9;
    /* warm-up, then REPS rounds, the variants interleaved */
    for (int i = 0; i < nv; i++)
        run_once(&V[i], L, step, out);
    for (int cold = 0; cold < 2; cold++)
        for (int r = 0; r < reps; r++)
            for (int k = 0; k < nv; k++) {
                int i = (k + r) % nv;  /* rotate the order too */
                if (cold)
                    flush_caches();
                else
                    run_once(&V[i], L, step, out);
                V[i].t[cold][r] = run_once(&V[i], L, step, out);
            }
    printf("context %llu tokens, %u layer(s), %u query / %u KV heads, head_dim %u, %d thread(s), "
           "median of %d, %s\n", (unsigned long long)T, L, h->n_heads, h->n_kv_heads, h->head_dim,
           nt, reps, use_cpu_time ? "CPU time" : "wall time");
    printf("  memcpy bandwidth (%d thread(s), 128 MiB, median): %.2f GB/s copied\n", nt, copy_gbs);
    double fp16[2] = {0, 0};
    for (int cold = 0; cold < 2; cold++)
        for (int i = 0; i < nv; i++) {
            qsort(V[i].t[cold], (size_t)reps, sizeof(double), cmp_d);
            if (!strcmp(V[i].name, "dense fp16"))
                fp16[cold] = V[i].t[cold][reps / 2];
        }
    printf("  %-30s %5s %10s %10s %11s %8s %6s %9s\n", "variant", "mode", "median_us", "min_us",
           "bytes_read", "GB/s", "copy%", "vs_fp16");
    for (int cold = 0; cold < 2; cold++)
        for (int i = 0; i < nv; i++) {
            double med = V[i].t[cold][reps / 2], mn = V[i].t[cold][0];
            double gbs = (double)V[i].bytes / med / 1e9;
            printf("  %-30s %5s %10.1f %10.1f %11llu %8.2f %5.0f%% %8.2fx\n", V[i].name,
                   cold ? "cold" : "warm", med * 1e6, mn * 1e6, (unsigned long long)V[i].bytes,
                   gbs, 100 * gbs / copy_gbs, fp16[cold] / med);
            printf("RESULT T=%llu mode=%s variant=%s beta=%.3f us=%.1f gbs=%.3f copy_gbs=%.3f "
                   "copy_frac=%.3f speedup_fp16=%.3f\n", (unsigned long long)T,
                   cold ? "cold" : "warm", V[i].name, V[i].beta, med * 1e6, gbs, copy_gbs,
                   gbs / copy_gbs, fp16[cold] / med);
        }
    return 0;
}
