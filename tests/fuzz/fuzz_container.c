/* fuzz_container -- the container reader (skv_open_mem/skv_read) on
 * arbitrary bytes: every chunk is read, inflated and touched; a stream that
 * verifies is copied with skv_copy_chunk and the copy must read back as the
 * same chunks. */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_init();
    skv_stream *s = skv_open_mem(data, size, "fuzz");
    if (!s)
        return 0;
    int fd = fuzz_memfd();
    skv_stream *w = skv_open_write_fd(fd, "copy", SKV_LEVEL_KEEP);
    FUZZ_ASSERT(w);
    skv_chunk c;
    int rc;
    uint32_t sum = 0;
    while ((rc = skv_read(s, &c)) > 0) {
        FUZZ_ASSERT(c.raw_size <= SKV_CHUNK_MAX && c.size <= SKV_CHUNK_MAX);
        for (uint64_t i = 0; i < c.raw_size; i++) /* every payload byte is readable */
            sum += c.data[i];
        FUZZ_ASSERT(skv_copy_chunk(w, &c) == 0);
    }
    skv_close(s);
    if (rc < 0) {
        FUZZ_ASSERT(skv_errmsg()[0] != '\0');
        skv_discard(w);
        return (int)(sum & 0);
    }
    FUZZ_ASSERT(skv_close(w) == 0);
    size_t n;
    uint8_t *copy = fuzz_slurp_fd(fd, &n);
    skv_stream *a = skv_open_mem(data, size, "fuzz");
    skv_stream *b = skv_open_mem(copy, n, "copy");
    FUZZ_ASSERT(a && b);
    for (;;) {
        skv_chunk ca, cb;
        int ra = skv_read(a, &ca);
        /* the reader's buffers are per stream, so ca stays valid while b reads */
        int rb = skv_read(b, &cb);
        FUZZ_ASSERT(ra == rb);
        if (ra <= 0)
            break;
        FUZZ_ASSERT(!strcmp(ca.type, cb.type) && ca.raw_size == cb.raw_size);
        FUZZ_ASSERT(ca.raw_size == 0 || !memcmp(ca.data, cb.data, (size_t)ca.raw_size));
    }
    skv_close(a);
    skv_close(b);
    free(copy);
    return 0;
}
