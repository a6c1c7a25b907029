/* bench_gpu.c -- driver of scripts/bench-gpu: decode attention latency on
 * the GPU for packed caches at beta ~0.25 and ~0.5 vs the dense fp16 kernel
 * and the cuBLAS baseline, and achieved GB/s vs the device's peak (from
 * its memory clock and bus width) and a device-to-device copy measured in
 * the same run.  Not a test: prints numbers only.
 *
 *   bench_gpu LAYERS HEADS KV_HEADS HEAD_DIM CONTEXT...
 *
 * Caches are packed on the GPU (skv_cuda_pack) from random K/V with a fixed
 * width mix per beta (tokens drawn at random; the achieved beta, all bytes
 * counted, is printed). */
#include "smartkv.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng = 0x2545f4914f6cdd1dull;
static inline uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}
static inline float frand(void) /* roughly normal: sum of 4 uniforms */
{
    uint64_t r = rnd();
    float s = (float)(r & 0xffff) + (float)((r >> 16) & 0xffff) + (float)((r >> 32) & 0xffff) +
              (float)(r >> 48);
    return (s / 65536.0f - 2.0f) * 1.7f;
}

static void die(const char *what)
{
    fprintf(stderr, "bench-gpu: %s: %s\n", what, skv_errmsg());
    exit(1);
}

/* Width mixes (fractions of 2, 3, 4, 8, 16-bit tokens). */
static const uint32_t widths[5] = {2, 3, 4, 8, 16};
static const double mix[2][5] = {
    {0.35, 0.00, 0.60, 0.05, 0.00}, /* ~0.25 */
    {0.00, 0.00, 0.35, 0.55, 0.10}, /* ~0.5 */
};

static skv_cuda_cache *make_cache(const skv_cuda_shape *sh, const float *k, const float *v,
                                  const double *fr, uint64_t *file_bytes)
{
    const uint32_t d = sh->head_dim;
    const uint64_t T = sh->n_tokens;
    skv_qcfg q = {d, d, d, SKV_QMODE_ASYM, SKV_QMODE_ASYM, 0};
    uint8_t *w = malloc(T);
    uint32_t *idx = malloc(T * 4);
    float *kr = malloc((size_t)T * d * 4), *vr = malloc((size_t)T * d * 4);
    size_t cap = 64, n = 0;
    uint8_t **pay = malloc(cap * sizeof *pay);
    uint64_t *sz = malloc(cap * sizeof *sz);
    *file_bytes = 0;
    for (uint32_t l = 0; l < sh->n_layers; l++)
        for (uint32_t h = 0; h < sh->n_kv_heads; h++) {
            const size_t base = ((size_t)l * sh->n_kv_heads + h) * T * d;
            for (uint64_t t = 0; t < T; t++) {
                double u = (double)(rnd() >> 11) / 9007199254740992.0, acc = 0;
                int wi = 4;
                for (int i = 0; i < 5; i++)
                    if (u < (acc += fr[i])) {
                        wi = i;
                        break;
                    }
                w[t] = (uint8_t)wi;
            }
            for (int wi = 0; wi < 5; wi++) {
                uint32_t cnt = 0;
                for (uint64_t t = 0; t < T; t++)
                    if (w[t] == wi) {
                        memcpy(kr + (size_t)cnt * d, k + base + t * d, d * 4);
                        memcpy(vr + (size_t)cnt * d, v + base + t * d, d * 4);
                        idx[cnt++] = (uint32_t)t;
                    }
                *file_bytes += skv_bucket_file_bytes(&q, widths[wi], cnt);
                uint64_t max = skv_pbkt_max_tokens(&q, widths[wi]);
                for (uint32_t part = 0; (uint64_t)part * max < cnt; part++) {
                    uint32_t i0 = (uint32_t)(part * max);
                    uint32_t m = (uint32_t)(cnt - i0 < max ? cnt - i0 : max);
                    uint64_t size = skv_pbkt_payload_bytes(&q, widths[wi], m);
                    if (n == cap) {
                        cap *= 2;
                        pay = realloc(pay, cap * sizeof *pay);
                        sz = realloc(sz, cap * sizeof *sz);
                    }
                    pay[n] = aligned_alloc(64, (size + 63) / 64 * 64);
                    sz[n] = size;
                    if (skv_cuda_pack(&q, l, h, widths[wi], part, idx + i0, m,
                                      kr + (size_t)i0 * d, vr + (size_t)i0 * d, pay[n], size) < 0)
                        die("skv_cuda_pack");
                    n++;
                }
            }
        }
    skv_cuda_cache *c = skv_cuda_cache_upload(sh, (const uint8_t *const *)pay, sz, n);
    if (!c)
        die("skv_cuda_cache_upload");
    for (size_t i = 0; i < n; i++)
        free(pay[i]);
    free(pay);
    free(sz);
    free(w);
    free(idx);
    free(kr);
    free(vr);
    return c;
}

static int reps_for(float ms)
{
    int r = ms > 0 ? (int)(200.0 / ms) : 100; /* ~0.2 s of kernels */
    return r < 5 ? 5 : r > 2000 ? 2000 : r;
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: bench_gpu LAYERS HEADS KV_HEADS HEAD_DIM CONTEXT...\n");
        return 2;
    }
    if (skv_cuda_available() < 0) {
        printf("bench-gpu: %s: nothing to measure (this is a benchmark, not a test; run it on "
               "a machine with a CUDA GPU and nvcc)\n", skv_errmsg());
        return 0;
    }
    const uint32_t L = (uint32_t)atoi(argv[1]), H = (uint32_t)atoi(argv[2]);
    const uint32_t KV = (uint32_t)atoi(argv[3]), d = (uint32_t)atoi(argv[4]);
    char name[256];
    int nsm = 0;
    double peak = 0, copy = 0;
    if (skv_cuda_device_info(name, sizeof name, &nsm, &peak) < 0)
        die("device info");
    if (skv_cuda_copy_bandwidth(1ull << 30, 20, &copy) < 0)
        die("copy bandwidth");
    printf("device: %s, %d SMs; peak DRAM bandwidth %.0f GB/s (memory clock x bus width), "
           "device-to-device copy %.0f GB/s (read+write)\n", name, nsm, peak, copy);
    printf("shape: %u layer(s), %u query heads, %u KV heads, head_dim %u; one decode step "
           "(query at the last token); time = attention + merge kernels (CUDA events), mean "
           "of repeated launches\n", L, H, KV, d);
    printf("%7s %6s %9s %9s %8s %7s %7s | %9s %8s %9s | %8s %8s\n", "tokens", "beta", "MB read",
           "us", "GB/s", "%peak", "%copy", "fp16 us", "fp16 GB/s", "cuBLAS us", "x fp16",
           "x cuBLAS");
    for (int a = 5; a < argc; a++) {
        uint64_t T = strtoull(argv[a], NULL, 10);
        char *suf = strpbrk(argv[a], "kK");
        if (suf)
            T *= 1024;
        if (T == 0)
            continue;
        skv_cuda_shape sh = {L, H, KV, d, T};
        size_t nkv = (size_t)L * KV * T * d;
        float *k = malloc(nkv * 4), *v = malloc(nkv * 4);
        size_t nq = (size_t)L * H * d;
        float *q = malloc(nq * 4), *out = malloc(nq * 4);
        if (!k || !v || !q || !out) {
            fprintf(stderr, "bench-gpu: out of memory at %llu tokens\n", (unsigned long long)T);
            return 1;
        }
        for (size_t i = 0; i < nkv; i++) {
            k[i] = frand();
            v[i] = frand();
        }
        for (size_t i = 0; i < nq; i++)
            q[i] = frand() * 0.3f;
        uint64_t pos = T - 1;
        float ms;
        skv_cuda_dense *D = skv_cuda_dense_upload(&sh, k, v);
        if (!D)
            die("dense upload");
        float dense_ms, blas_ms;
        if (skv_cuda_dense_attend(D, SKV_CUDA_DENSE_KERNEL, 1, &pos, q, out, &ms) < 0 ||
            skv_cuda_dense_repeat(D, SKV_CUDA_DENSE_KERNEL, reps_for(ms), &dense_ms) < 0)
            die("dense kernel");
        if (skv_cuda_dense_attend(D, SKV_CUDA_DENSE_CUBLAS, 1, &pos, q, out, &ms) < 0 ||
            skv_cuda_dense_repeat(D, SKV_CUDA_DENSE_CUBLAS, reps_for(ms), &blas_ms) < 0)
            die("cuBLAS baseline");
        const double dense_bytes = (double)skv_cuda_dense_bytes(D);
        skv_cuda_dense_free(D);
        for (int b = 0; b < 2; b++) {
            uint64_t fbytes;
            skv_cuda_cache *c = make_cache(&sh, k, v, mix[b], &fbytes);
            float pms;
            if (skv_cuda_attend(c, 0, L, 1, &pos, q, out, NULL, &ms) < 0 ||
                skv_cuda_attend_repeat(c, reps_for(ms), &pms) < 0)
                die("packed attention");
            const double bytes = (double)skv_cuda_cache_bytes(c);
            const double beta = (double)fbytes / ((double)L * KV * T * d * 4);
            const double gbs = bytes / (pms * 1e-3) / 1e9;
            printf("%7llu %6.3f %9.1f %9.1f %8.0f %6.0f%% %6.0f%% | %9.1f %8.0f %9.1f | %7.2fx "
                   "%7.2fx\n", (unsigned long long)T, beta, bytes / 1e6, pms * 1e3, gbs,
                   peak > 0 ? 100 * gbs / peak : 0.0, 100 * gbs / (copy / 2), dense_ms * 1e3,
                   dense_bytes / (dense_ms * 1e-3) / 1e9, blas_ms * 1e3, dense_ms / pms,
                   blas_ms / pms);
            skv_cuda_cache_free(c);
        }
        free(k);
        free(v);
        free(q);
        free(out);
    }
    printf("targets: packed cache >= 70%% of peak DRAM bandwidth; beta=0.25 at 32K tokens >= "
           "3x faster than the dense fp16 kernel\n");
    printf("(%%copy compares with the copy's read rate, i.e. half its read+write GB/s)\n");
    return 0;
}
