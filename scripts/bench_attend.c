/* bench_attend.c -- decode-step latency of the fused packed kernel against
 * dense fp16 and fp32 attention on the same data, with bytes read and the
 * memory-copy bandwidth measured in the same run.  Not a test.
 *
 *   bench_attend TRACE_WITH_ALLOCATION TMPDIR [threads]
 *
 * The input is a trace with an allocation appended (skv-alloc output).  It
 * is packed here with the library (as skv-quant does), loaded back, and the
 * last step's attention is timed for every layer:
 *   warm: the same step repeated (the cache stays in the CPU caches if it fits)
 *   cold: a 256 MiB buffer is streamed between runs so K/V come from DRAM.
 */
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
    return ts.tv_sec + ts.tv_nsec * 1e-9;
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

/* median seconds of one decode step (all layers) */
static double time_step(skv_attend_ctx *ctx, const skv_kv_view *views, uint32_t n_layers,
                        uint64_t step, float *out, int cold, int reps)
{
    double t[64];
    if (reps > 64)
        reps = 64;
    for (int r = -2; r < reps; r++) {
        if (cold)
            flush_caches();
        double t0 = now();
        for (uint32_t l = 0; l < n_layers; l++)
            if (skv_attend_layer(ctx, &views[l], &step, 1, out, NULL) < 0) {
                fprintf(stderr, "bench_attend: %s\n", skv_errmsg());
                exit(1);
            }
        if (r >= 0)
            t[r] = now() - t0;
    }
    qsort(t, (size_t)reps, sizeof *t, cmp_d);
    return t[reps / 2];
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench_attend TRACE_WITH_ALLOCATION TMPDIR [threads]\n");
        return 2;
    }
    int threads = argc > 3 ? atoi(argv[3]) : 0;
    skv_trace *t;
    skv_chunk_list extra = {0};
    skv_cache_plan plan;
    memset(&plan, 0, sizeof plan);
    char cpath[4096];
    snprintf(cpath, sizeof cpath, "%s/bench-cache.skv", argv[2]);
    skv_stream *s;
    skv_cache *c;
    if (skv_cache_input_load(argv[1], &t, &extra) < 0 ||
        skv_cache_plan_from_chunks(&plan, &t->hdr, &extra) < 0 ||
        !(s = skv_open_write(cpath, -1)) || skv_cache_write(s, t, &plan, NULL, 0, NULL) < 0 ||
        skv_close(s) < 0 || skv_cache_load(cpath, &c) < 0) {
        fprintf(stderr, "bench_attend: %s: %s\n", argv[1], skv_errmsg());
        return 1;
    }
    const skv_trace_hdr *h = &t->hdr;
    uint32_t L = h->n_layers;
    uint64_t T = h->n_tokens, step = T - 1;
    size_t nkv = (size_t)h->n_kv_heads * T * h->head_dim;
    skv_kv_view *vp = calloc(L, sizeof *vp), *v16 = calloc(L, sizeof *v16), *v32 = calloc(L, sizeof *v32);
    for (uint32_t l = 0; l < L; l++) {
        uint16_t *k = malloc(nkv * 2), *v = malloc(nkv * 2);
        skv_convert_from_f32(SKV_F16, t->k[l], k, nkv);
        skv_convert_from_f32(SKV_F16, t->v[l], v, nkv);
        skv_kv_view a = {SKV_KV_PACKED, h->n_heads, h->n_kv_heads, h->head_dim, T, c->q[l], NULL,
                         NULL, skv_cache_head_at(c, l, 0)};
        skv_kv_view b = {SKV_KV_F16, h->n_heads, h->n_kv_heads, h->head_dim, T, t->q[l], k, v, NULL};
        skv_kv_view d = {SKV_KV_F32, h->n_heads, h->n_kv_heads, h->head_dim, T, t->q[l], t->k[l],
                         t->v[l], NULL};
        vp[l] = a;
        v16[l] = b;
        v32[l] = d;
    }
    flush_buf = calloc(FLUSH_BYTES, 1);
    float *out = malloc((size_t)h->n_heads * h->head_dim * sizeof *out);
    skv_attend_opts o = {threads, SKV_KERNEL_AUTO, 0};
    skv_attend_ctx *ctx = skv_attend_new(&o);
    if (!ctx || !flush_buf || !out) {
        fprintf(stderr, "bench_attend: setup failed\n");
        return 1;
    }
    uint64_t bp = 0, b16 = 0, b32 = 0;
    for (uint32_t l = 0; l < L; l++) {
        bp += skv_attend_bytes_read(&vp[l], step);
        b16 += skv_attend_bytes_read(&v16[l], step);
        b32 += skv_attend_bytes_read(&v32[l], step);
    }
    /* memory-copy bandwidth with the same threads: 2 x 128 MiB, src and dst */
    size_t cn = 128u << 20;
    char *src = malloc(cn), *dst = malloc(cn);
    memset(src, 1, cn);
    memset(dst, 2, cn);
    int nt = skv_attend_threads(ctx);
    copy_arg ca[256];
    for (int i = 0; i < nt; i++) {
        ca[i].n = cn / (size_t)nt;
        ca[i].src = src + (size_t)i * ca[i].n;
        ca[i].dst = dst + (size_t)i * ca[i].n;
    }
    double best_copy = 1e9;
    for (int r = 0; r < 5; r++) {
        double t0 = now();
        pthread_t th[256];
        for (int i = 0; i < nt; i++)
            pthread_create(&th[i], NULL, copy_thread, &ca[i]);
        for (int i = 0; i < nt; i++)
            pthread_join(th[i], NULL);
        double dt = now() - t0;
        best_copy = dt < best_copy ? dt : best_copy;
    }
    double copy_gbs = (double)cn / best_copy / 1e9;
    double hist[SKV_NBITS] = {0};
    uint64_t stored = 0;
    for (size_t i = 0; i < (size_t)L * h->n_kv_heads; i++)
        for (uint64_t u = 0; u < T; u++)
            for (int w = 0; w < SKV_NBITS; w++)
                if (c->heads[i].bits[u] == skv_bit_widths[w])
                    hist[w]++, stored += w > 0;
    printf("context %llu tokens, %u layer(s), %u query / %u KV heads, head_dim %u, %d thread(s), "
           "kernel %s\n", (unsigned long long)T, L, h->n_heads, h->n_kv_heads, h->head_dim, nt,
           skv_att_kernel_name(skv_attend_kernel(ctx)));
    printf("  cache: beta %.3f (%llu bytes / fp16 %llu); widths 0/2/3/4/8/16: %.1f/%.1f/%.1f/%.1f/"
           "%.1f/%.1f %%\n", (double)c->pk.cache_bytes / (double)c->pk.fp16_bytes,
           (unsigned long long)c->pk.cache_bytes, (unsigned long long)c->pk.fp16_bytes,
           100 * hist[0] / (L * h->n_kv_heads * (double)T), 100 * hist[1] / (L * h->n_kv_heads * (double)T),
           100 * hist[2] / (L * h->n_kv_heads * (double)T), 100 * hist[3] / (L * h->n_kv_heads * (double)T),
           100 * hist[4] / (L * h->n_kv_heads * (double)T), 100 * hist[5] / (L * h->n_kv_heads * (double)T));
    printf("  memcpy bandwidth (%d thread(s), 128 MiB): %.2f GB/s copied\n", nt, copy_gbs);
    for (int cold = 0; cold < 2; cold++) {
        int reps = cold ? 9 : 21;
        double tp = time_step(ctx, vp, L, step, out, cold, reps);
        double t16 = time_step(ctx, v16, L, step, out, cold, reps);
        double t32 = time_step(ctx, v32, L, step, out, cold, reps);
        const char *what = cold ? "cold" : "warm";
        printf("  %s  packed   %9.1f us  %10llu B read  %6.2f GB/s  (%3.0f%% of copy)\n", what,
               tp * 1e6, (unsigned long long)bp, bp / tp / 1e9, 100 * bp / tp / 1e9 / copy_gbs);
        printf("  %s  fp16     %9.1f us  %10llu B read  %6.2f GB/s  (%3.0f%% of copy)\n", what,
               t16 * 1e6, (unsigned long long)b16, b16 / t16 / 1e9, 100 * b16 / t16 / 1e9 / copy_gbs);
        printf("  %s  fp32     %9.1f us  %10llu B read  %6.2f GB/s  (%3.0f%% of copy)\n", what,
               t32 * 1e6, (unsigned long long)b32, b32 / t32 / 1e9, 100 * b32 / t32 / 1e9 / copy_gbs);
        printf("  %s  speedup packed vs fp16 %.2fx, vs fp32 %.2fx; bytes fp16/packed %.2fx\n", what,
               t16 / tp, t32 / tp, (double)b16 / bp);
        printf("RESULT T=%llu mode=%s packed_us=%.1f fp16_us=%.1f fp32_us=%.1f packed_gbs=%.2f "
               "copy_gbs=%.2f speedup_fp16=%.2f\n", (unsigned long long)T, what, tp * 1e6,
               t16 * 1e6, t32 * 1e6, bp / tp / 1e9, copy_gbs, t16 / tp);
    }
    return 0;
}
