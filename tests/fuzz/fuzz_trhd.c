/* fuzz_trhd -- the trace header decoder (skv_trhd_decode) on an arbitrary
 * TRHD payload; a header that decodes must encode (skv_trhd_write) and
 * decode again to the same fields. */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_init();
    skv_chunk c = fuzz_chunk(SKV_T_TRHD, data, size);
    skv_trace_hdr h, h2;
    if (skv_trhd_decode(&c, &h) < 0)
        return 0;
    FUZZ_ASSERT(skv_trace_hdr_check(&h) == 0);
    FUZZ_ASSERT(strlen(h.model) <= SKV_MAX_NAME && strlen(h.tokenizer) <= SKV_MAX_NAME);
    size_t nq, nkv;
    FUZZ_ASSERT(skv_trace_layer_floats(&h, &nq, &nkv) == 0);

    int fd = fuzz_memfd();
    skv_stream *w = skv_open_write_fd(fd, "trhd", -1);
    FUZZ_ASSERT(w);
    FUZZ_ASSERT(skv_trhd_write(w, &h) == 0);
    FUZZ_ASSERT(skv_close(w) == 0);
    size_t n;
    uint8_t *buf = fuzz_slurp_fd(fd, &n);
    skv_stream *s = skv_open_mem(buf, n, "trhd");
    FUZZ_ASSERT(s);
    skv_chunk c2;
    FUZZ_ASSERT(skv_read(s, &c2) == 1 && skv_chunk_is(&c2, SKV_T_TRHD));
    FUZZ_ASSERT(skv_trhd_decode(&c2, &h2) == 0);
    FUZZ_ASSERT(fuzz_hdr_equal(&h, &h2));
    FUZZ_ASSERT(skv_read(s, &c2) == 0);
    skv_close(s);
    free(buf);
    return 0;
}
