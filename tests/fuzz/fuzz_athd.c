/* fuzz_athd -- the attention-output header decoder (skv_athd_decode); a
 * header that decodes must encode and decode again to the same fields. */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_init();
    uint8_t *p = malloc(size ? size : 1); /* 8-byte aligned, exact size */
    FUZZ_ASSERT(p);
    if (size)
        memcpy(p, data, size);
    skv_chunk c = fuzz_chunk("ATHD", p, size);
    skv_athd h, h2;
    memset(&h, 0, sizeof h);
    if (skv_athd_decode(&c, &h) == 0) {
        for (uint64_t i = 0; i < h.n_steps; i++)
            FUZZ_ASSERT(h.steps[i] < h.n_tokens && (i == 0 || h.steps[i] > h.steps[i - 1]));
        int fd = fuzz_memfd();
        skv_stream *w = skv_open_write_fd(fd, "athd", -1);
        FUZZ_ASSERT(w && skv_athd_write(w, &h) == 0 && skv_close(w) == 0);
        size_t n;
        uint8_t *buf = fuzz_slurp_fd(fd, &n);
        skv_stream *s = skv_open_mem(buf, n, "athd");
        skv_chunk c2;
        memset(&h2, 0, sizeof h2);
        FUZZ_ASSERT(s && skv_read(s, &c2) == 1 && skv_athd_decode(&c2, &h2) == 0);
        FUZZ_ASSERT(h.n_steps == h2.n_steps && h.n_tokens == h2.n_tokens &&
                    h.mode == h2.mode && h.flags == h2.flags &&
                    !memcmp(h.steps, h2.steps, h.n_steps * 8) &&
                    !strcmp(h.source, h2.source) && !strcmp(h.label, h2.label));
        skv_athd_free(&h2);
        skv_close(s);
        free(buf);
    }
    skv_athd_free(&h);
    free(p);
    return 0;
}
