/* fuzz_pkhd -- the packed-cache header decoder (skv_pkhd_decode) on an
 * arbitrary PKHD payload; a header that decodes must encode and decode
 * again to the same fields. */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_init();
    skv_chunk c = fuzz_chunk("PKHD", data, size);
    skv_pkhd p, p2;
    if (skv_pkhd_decode(&c, &p) < 0)
        return 0;
    FUZZ_ASSERT(skv_qcfg_check(&p.q) == 0);
    int fd = fuzz_memfd();
    skv_stream *w = skv_open_write_fd(fd, "pkhd", -1);
    FUZZ_ASSERT(w);
    FUZZ_ASSERT(skv_pkhd_write(w, &p) == 0);
    FUZZ_ASSERT(skv_close(w) == 0);
    size_t n;
    uint8_t *buf = fuzz_slurp_fd(fd, &n);
    skv_stream *s = skv_open_mem(buf, n, "pkhd");
    FUZZ_ASSERT(s);
    skv_chunk c2;
    FUZZ_ASSERT(skv_read(s, &c2) == 1);
    FUZZ_ASSERT(skv_pkhd_decode(&c2, &p2) == 0);
    FUZZ_ASSERT(p.q.head_dim == p2.q.head_dim && p.q.k_group == p2.q.k_group &&
                p.q.v_group == p2.q.v_group && p.q.k_mode == p2.q.k_mode &&
                p.q.v_mode == p2.q.v_mode && p.n_layers == p2.n_layers &&
                p.n_kv_heads == p2.n_kv_heads && p.n_tokens == p2.n_tokens &&
                p.cache_bytes == p2.cache_bytes && p.fp16_bytes == p2.fp16_bytes &&
                p.n_stored == p2.n_stored);
    skv_close(s);
    free(buf);
    return 0;
}
