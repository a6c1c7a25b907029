/* fuzz.h -- shared helpers for the libFuzzer targets in tests/fuzz.
 *
 * Each tests/fuzz/fuzz_<name>.c defines LLVMFuzzerTestOneInput() and nothing
 * else that another target would clash with; it is built twice: with clang's
 * -fsanitize=fuzzer for `make fuzz`, and with the normal compiler linked to
 * replay.c, which runs the committed corpus (tests/fuzz/corpus/<name>/) and
 * crash files (tests/fuzz/crashes/<name>/) as part of `make check`.
 *
 * A target must never leak, must free what it allocates, and signals a
 * failed property (a round trip that does not compare equal) with
 * FUZZ_ASSERT, which aborts so both libFuzzer and the replayer see it. */
#ifndef SKV_FUZZ_H
#define SKV_FUZZ_H

#define _GNU_SOURCE
#include "smartkv.h"

#include <zlib.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_ASSERT(cond)                                                              \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            fprintf(stderr, "%s:%d: fuzz property failed: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                   \
        }                                                                              \
    } while (0)

/* The targets run with the tools' real memory behaviour: no library memory
 * cap (SKV_MAX_MEM is off by default), so a declared size that the library
 * would allocate for shows up as libFuzzer's malloc or RSS limit (run-fuzz:
 * 2 GiB), not as a refusal that hides it. */
static inline void fuzz_init(void)
{
    static int done;
    if (!done) {
        skv_set_max_mem(0);
        skv_fail_alloc_after(0);
        done = 1;
    }
}

/* A copy of the input with every chunk CRC recomputed (as libpng's fuzzer
 * does), so mutations of sizes and fields reach the decoders instead of
 * stopping at the CRC.  Bytes after the last whole chunk are kept.  Free the
 * result. */
static inline uint8_t *fuzz_fix_crcs(const uint8_t *data, size_t size)
{
    uint8_t *b = malloc(size ? size : 1);
    FUZZ_ASSERT(b);
    if (size)
        memcpy(b, data, size);
    size_t off = SKV_SIGNATURE_LEN;
    if (size < off || memcmp(b, SKV_SIGNATURE, off) != 0)
        return b;
    while (size - off >= SKV_CHUNK_HEADER_LEN + SKV_CHUNK_CRC_LEN) {
        uint64_t n = skv_get64(b + off + 8);
        if (n > size - off - SKV_CHUNK_HEADER_LEN - SKV_CHUNK_CRC_LEN)
            break;
        size_t body = SKV_CHUNK_HEADER_LEN + (size_t)n;
        skv_put32(b + off + body, (uint32_t)crc32(0L, b + off, (uInt)body));
        off += body + SKV_CHUNK_CRC_LEN;
    }
    return b;
}

/* An anonymous in-memory file, emptied and rewound on every call. */
static inline int fuzz_memfd(void)
{
    static int fd = -1;
    if (fd < 0) {
        fd = memfd_create("skv-fuzz", MFD_CLOEXEC);
        if (fd < 0) {
            perror("memfd_create");
            abort();
        }
    }
    if (ftruncate(fd, 0) != 0 || lseek(fd, 0, SEEK_SET) != 0) {
        perror("memfd reset");
        abort();
    }
    return fd;
}

/* Put data in the memfd and return a path that opens it afresh. */
static inline const char *fuzz_memfd_path(const uint8_t *data, size_t size)
{
    static char path[64];
    int fd = fuzz_memfd();
    size_t off = 0;
    while (off < size) {
        ssize_t w = write(fd, data + off, size - off);
        if (w <= 0) {
            perror("memfd write");
            abort();
        }
        off += (size_t)w;
    }
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    return path;
}

/* Read a whole fd from its start into a malloc'ed buffer (*n bytes). */
static inline uint8_t *fuzz_slurp_fd(int fd, size_t *n)
{
    off_t end = lseek(fd, 0, SEEK_END);
    FUZZ_ASSERT(end >= 0);
    uint8_t *b = malloc((size_t)end + 1);
    FUZZ_ASSERT(b);
    FUZZ_ASSERT(pread(fd, b, (size_t)end, 0) == (ssize_t)end);
    *n = (size_t)end;
    return b;
}

/* Field by field (the struct has padding). */
static inline int fuzz_hdr_equal(const skv_trace_hdr *a, const skv_trace_hdr *b)
{
    return a->n_layers == b->n_layers && a->n_heads == b->n_heads &&
           a->n_kv_heads == b->n_kv_heads && a->head_dim == b->head_dim &&
           a->n_tokens == b->n_tokens && a->n_prefill == b->n_prefill &&
           a->dtype == b->dtype && a->flags == b->flags &&
           !memcmp(&a->rope_theta, &b->rope_theta, sizeof a->rope_theta) && /* NOLINT(bugprone-suspicious-memory-comparison): bit-exact intended */
           !strcmp(a->model, b->model) && !strcmp(a->tokenizer, b->tokenizer);
}

/* A chunk whose payload is exactly the fuzz input (for the chunk decoders). */
static inline skv_chunk fuzz_chunk(const char *type, const uint8_t *data, size_t size)
{
    skv_chunk c;
    memset(&c, 0, sizeof c);
    memcpy(c.type, type, 4);
    c.size = c.raw_size = size;
    c.data = data;
    return c;
}

#endif
