/* fuzz_roundtrip -- container write -> read -> compare.  The input drives a
 * writer: byte 0 picks the compression level (-2..9); then each record is a
 * type byte, a 2-byte length, a split point and that many payload bytes,
 * written with skv_writev in two pieces.  The stream read back must hold the
 * same chunks in order and end with a verified DONE; a copy through
 * skv_copy_chunk at another level must read back the same too. */
#include "fuzz.h"

#define MAXCH 64

struct rec {
    char type[5];
    const uint8_t *p;
    size_t n;
};

static void check_stream(const uint8_t *buf, size_t n, const struct rec *r, int nr,
                         skv_stream *copy)
{
    skv_stream *s = skv_open_mem(buf, n, "roundtrip");
    FUZZ_ASSERT(s);
    skv_chunk c;
    for (int i = 0; i < nr; i++) {
        FUZZ_ASSERT(skv_read(s, &c) == 1);
        FUZZ_ASSERT(!strcmp(c.type, r[i].type) && c.raw_size == r[i].n);
        FUZZ_ASSERT(r[i].n == 0 || !memcmp(c.data, r[i].p, r[i].n));
        if (copy)
            FUZZ_ASSERT(skv_copy_chunk(copy, &c) == 0);
    }
    FUZZ_ASSERT(skv_read(s, &c) == 0);
    FUZZ_ASSERT(skv_stream_chunks(s) == (uint64_t)nr + 1);
    skv_close(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_init();
    if (size < 1)
        return 0;
    int level = (int)(data[0] % 12) - 2;
    struct rec r[MAXCH];
    int nr = 0;
    size_t off = 1;
    while (nr < MAXCH && off + 4 <= size) {
        uint8_t t = data[off];
        size_t len = (size_t)data[off + 1] | (size_t)data[off + 2] << 8;
        size_t split = data[off + 3];
        off += 4;
        if (len > size - off)
            len = size - off;
        /* a type that is four letters but never HEAD or DONE */
        static const char *const types[] = {"TENS", "TOKS", "TRHD", "abcd", "Zzzz", "xYzW"};
        memcpy(r[nr].type, types[t % 6], 5);
        r[nr].p = data + off;
        r[nr].n = len;
        (void)split;
        off += len;
        nr++;
    }
    int fd = fuzz_memfd();
    skv_stream *w = skv_open_write_fd(fd, "roundtrip", level);
    FUZZ_ASSERT(w);
    for (int i = 0; i < nr; i++) {
        size_t split = r[i].n ? data[0] % (r[i].n + 1) : 0;
        const void *pieces[2] = {r[i].p, r[i].p + split};
        uint64_t lens[2] = {split, r[i].n - split};
        FUZZ_ASSERT(skv_writev(w, r[i].type, 2, pieces, lens) == 0);
    }
    FUZZ_ASSERT(skv_close(w) == 0);
    size_t n;
    uint8_t *buf = fuzz_slurp_fd(fd, &n);

    int fd2 = memfd_create("skv-fuzz-copy", MFD_CLOEXEC);
    FUZZ_ASSERT(fd2 >= 0);
    int level2 = level >= 0 ? -1 : 6;
    skv_stream *w2 = skv_open_write_fd(fd2, "copy", level2);
    FUZZ_ASSERT(w2);
    check_stream(buf, n, r, nr, w2);
    FUZZ_ASSERT(skv_close(w2) == 0);
    size_t n2;
    uint8_t *buf2 = fuzz_slurp_fd(fd2, &n2);
    close(fd2);
    check_stream(buf2, n2, r, nr, NULL);
    free(buf2);
    free(buf);
    return 0;
}
