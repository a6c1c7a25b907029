/* bench_quant.c -- quantize+pack and dequantize throughput against memcpy of
 * the same fp16 bytes, measured side by side in one run (scripts/bench-quant
 * builds and runs it; not part of the test suite). */
#include "smartkv.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);  /* robust on a shared machine */
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static volatile uint8_t sink;

int main(int argc, char **argv)
{
    size_t mb = argc > 1 ? (size_t)atoi(argv[1]) : 32;   /* MB of fp16 input */
    int reps = argc > 2 ? atoi(argv[2]) : 3;
    const uint32_t d = 128;
    size_t rows = mb * (1u << 20) / (2 * d), n = rows * d;
    uint16_t *h = malloc(n * 2), *hcopy = malloc(n * 2);
    float *f = malloc(n * 4), *row = malloc(d * 4), *y = malloc(n * 4);
    uint8_t *par = malloc(rows * 64), *dat = malloc(rows * 2 * d);
    if (!h || !hcopy || !f || !row || !y || !par || !dat)
        return 1;
    uint64_t s = 88172645463325252ull;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        f[i] = ((float)(s >> 40) / 16777216.0f - 0.5f) * ((i % 31) ? 2.0f : 20.0f);
        h[i] = skv_f32_to_f16(f[i]);
    }
    skv_convert_to_f32(SKV_F16, h, f, n);
    double in_mb = (double)(n * 2) / 1e6;

    double best = 1e9;
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        memcpy(hcopy, h, n * 2);
        double t = now() - t0;
        best = t < best ? t : best;
        sink = ((volatile uint8_t *)hcopy)[r];
    }
    double memcpy_mbs = in_mb / best;
    printf("input: %zu rows x %u channels = %.1f MB of fp16 (best of %d runs, thread CPU time)\n", rows, d, in_mb,
           reps);
    printf("%-44s %9.0f MB/s\n", "memcpy of the fp16 bytes", memcpy_mbs);
    printf("%-44s %9s   %s\n", "operation (per-token groups, asym)", "MB/s", "ratio to memcpy");

    const uint32_t widths[5] = {2, 3, 4, 8, 16};
    for (int simd = 1; simd >= 0; simd--) {
        if (simd && !skv_quant_have_avx2()) {
            printf("(no AVX2 on this machine: SIMD rows skipped)\n");
            continue;
        }
        skv_quant_set_simd(simd);
        const char *path = simd ? "avx2" : "ref";
        for (int w = 0; w < 5; w++) {
            uint32_t bits = widths[w];
            uint64_t pb = skv_par_bytes(bits, d, d, SKV_QMODE_ASYM), rb = skv_row_bytes(bits, d);
            /* quantize+pack from fp16 rows (conversion included) */
            double bq = 1e9, bd = 1e9;
            for (int r = 0; r < reps; r++) {
                double t0 = now();
                for (size_t i = 0; i < rows; i++) {
                    skv_convert_to_f32(SKV_F16, h + i * d, row, d);
                    if (skv_quantize_row(row, d, bits, d, SKV_QMODE_ASYM, par + i * pb,
                                         dat + i * rb) < 0)
                        return 1;
                }
                double t = now() - t0;
                bq = t < bq ? t : bq;
                t0 = now();
                for (size_t i = 0; i < rows; i++)
                    skv_dequantize_row(par + i * pb, dat + i * rb, d, bits, d, SKV_QMODE_ASYM,
                                       y + i * d);
                t = now() - t0;
                bd = t < bd ? t : bd;
            }
            char label[64];
            snprintf(label, sizeof label, "quantize+pack %2u-bit, %s", bits, path);
            printf("%-44s %9.0f   %.3f\n", label, in_mb / bq, in_mb / bq / memcpy_mbs);
            snprintf(label, sizeof label, "dequantize    %2u-bit, %s (to f32)", bits, path);
            printf("%-44s %9.0f   %.3f\n", label, in_mb / bd, in_mb / bd / memcpy_mbs);
            sink = dat[rows / 2];
        }
    }
    free(h);
    free(hcopy);
    free(f);
    free(row);
    free(y);
    free(par);
    free(dat);
    return 0;
}
