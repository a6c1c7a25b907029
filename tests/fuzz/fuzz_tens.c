/* fuzz_tens -- the tensor block decoder (skv_tens_decode) on an arbitrary
 * TENS payload; a block that decodes is converted to float32 (every element
 * must lie inside the payload) and written back, which must reproduce it. */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_init();
    skv_chunk c = fuzz_chunk(SKV_T_TENS, data, size);
    skv_tens t;
    if (skv_tens_decode(&c, &t) < 0)
        return 0;
    size_t es = skv_dtype_size(t.dtype);
    FUZZ_ASSERT(es && SKV_TENS_HEADER_LEN + t.rows * t.cols * es == size);
    float *f = malloc((size_t)(t.rows * t.cols) * sizeof(float) + 1);
    FUZZ_ASSERT(f);
    skv_tens_to_f32(&t, f);

    /* re-encode the elements as they are and compare the payload */
    int fd = fuzz_memfd();
    skv_stream *w = skv_open_write_fd(fd, "tens", -1);
    FUZZ_ASSERT(w);
    int rc = skv_tens_write_raw(w, t.kind, t.dtype, t.layer, t.head, t.row0, t.rows, t.cols,
                                t.data);
    if (rc == 0) {
        FUZZ_ASSERT(skv_close(w) == 0);
        size_t n;
        uint8_t *buf = fuzz_slurp_fd(fd, &n);
        skv_stream *s = skv_open_mem(buf, n, "tens");
        FUZZ_ASSERT(s);
        skv_chunk c2;
        uint64_t rows = 0;
        while (skv_read(s, &c2) > 0) {
            skv_tens t2;
            FUZZ_ASSERT(skv_tens_decode(&c2, &t2) == 0);
            FUZZ_ASSERT(t2.kind == t.kind && t2.dtype == t.dtype && t2.layer == t.layer &&
                        t2.head == t.head && t2.row0 == t.row0 + rows && t2.cols == t.cols);
            FUZZ_ASSERT(!memcmp(t2.data, t.data + rows * t.cols * es,
                                (size_t)(t2.rows * t.cols * es)));
            rows += t2.rows;
            if (t.rows == 0)
                break;
        }
        FUZZ_ASSERT(rows == t.rows);
        skv_close(s);
        free(buf);
    } else {
        skv_discard(w); /* rows too long for one chunk: refused, not written */
    }
    free(f);
    return 0;
}
