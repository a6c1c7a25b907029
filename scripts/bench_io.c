/* bench_io.c -- container write/read throughput against plain write/read of
 * the same bytes, measured side by side (built and run by scripts/bench-io). */
#include "smartkv.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: bench_io DIR MIB\n");
        return 2;
    }
    const char *dir = argv[1];
    size_t mib = (size_t)atol(argv[2]);
    /* one layer-sized block of f16 rows, written repeatedly as TENS chunks */
    const uint32_t d = 64;
    const uint64_t rows = 65536;  /* 8 MiB per block, a typical head */
    size_t blk = rows * d * 2, nblk = mib * 1048576 / blk;
    uint16_t *buf = malloc(blk);
    for (size_t i = 0; i < blk / 2; i++)
        buf[i] = (uint16_t)(i * 2654435761u >> 16);
    char p1[512], p2[512];
    snprintf(p1, sizeof p1, "%s/bench-io.skv", dir);
    snprintf(p2, sizeof p2, "%s/bench-io.raw", dir);

    /* plain write of the same bytes */
    double t = now();
    int fd = open(p2, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    for (size_t i = 0; i < nblk; i++)
        if (write(fd, buf, blk) != (ssize_t)blk)
            return 1;
    close(fd);
    double t_plain_w = now() - t;

    /* container write: TRHD + TENS blocks + DONE (CRC over everything) */
    skv_trace_hdr h = {0};
    h.n_layers = 1;
    h.n_heads = (uint32_t)nblk;
    h.n_kv_heads = 1;
    h.head_dim = d;
    h.n_tokens = rows;
    h.dtype = SKV_F16;
    t = now();
    skv_stream *s = skv_open_write(p1, -1);
    if (!s || skv_trhd_write(s, &h) < 0)
        return 1;
    for (size_t i = 0; i < nblk; i++)
        if (skv_tens_write_raw(s, SKV_TK_Q, SKV_F16, 0, (uint32_t)i, 0, rows, d, buf) < 0)
            return 1;
    if (skv_close(s) < 0)
        return 1;
    double t_skv_w = now() - t;

    /* plain read */
    t = now();
    fd = open(p2, O_RDONLY);
    size_t got = 0;
    ssize_t r;
    while ((r = read(fd, buf, blk)) > 0)
        got += (size_t)r;
    close(fd);
    double t_plain_r = now() - t;

    /* container read: every chunk with CRC check */
    t = now();
    s = skv_open_read(p1);
    skv_chunk c;
    int rc;
    size_t payload = 0;
    while ((rc = skv_read(s, &c)) > 0)
        payload += c.raw_size;
    skv_close(s);
    double t_skv_r = now() - t;
    if (rc < 0) {
        fprintf(stderr, "bench_io: %s\n", skv_errmsg());
        return 1;
    }

    double mb = (double)(nblk * blk) / 1e6;
    printf("bytes            %.0f MB of f16 rows (%zu chunks of %zu bytes)\n", mb, nblk, blk);
    printf("plain write      %8.0f MB/s\n", mb / t_plain_w);
    printf("skv write        %8.0f MB/s   ratio to plain write %.2f\n", mb / t_skv_w,
           t_plain_w / t_skv_w);
    printf("plain read       %8.0f MB/s\n", mb / t_plain_r);
    printf("skv read+CRC     %8.0f MB/s   ratio to plain read  %.2f\n", mb / t_skv_r,
           t_plain_r / t_skv_r);
    free(buf);
    unlink(p2);
    return got == nblk * blk ? 0 : 1;
}
