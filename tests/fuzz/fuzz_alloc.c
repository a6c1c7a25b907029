/* fuzz_alloc -- the allocation chunk decoders: byte 0 even: ALHD payload
 * (skv_alhd_decode, re-encoded and decoded again); odd: ALOC payload
 * (skv_aloc_decode; every width and importance it points to is read). */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_init();
    if (size < 1)
        return 0;
    int aloc = data[0] & 1;
    /* an exactly sized, 8-byte aligned copy of the payload */
    uint8_t *p = malloc(size - 1 ? size - 1 : 1);
    FUZZ_ASSERT(p);
    memcpy(p, data + 1, size - 1);
    skv_chunk c = fuzz_chunk(aloc ? "ALOC" : "ALHD", p, size - 1);
    if (aloc) {
        uint32_t layer, head;
        uint64_t n;
        const uint8_t *bits;
        const float *imp;
        if (skv_aloc_decode(&c, &layer, &head, &n, &bits, &imp) == 0) {
            double sum = 0;
            for (uint64_t i = 0; i < n; i++) {
                FUZZ_ASSERT(skv_width_index(bits[i]) >= 0);
                sum += imp ? imp[i] : 0;
            }
            FUZZ_ASSERT(sum >= 0);
        }
    } else {
        skv_alloc_hdr h, h2;
        if (skv_alhd_decode(&c, &h) == 0) {
            FUZZ_ASSERT(skv_alhd_check(&h) == 0);
            int fd = fuzz_memfd();
            skv_stream *w = skv_open_write_fd(fd, "alhd", -1);
            FUZZ_ASSERT(w && skv_alhd_write(w, &h) == 0 && skv_close(w) == 0);
            size_t n;
            uint8_t *buf = fuzz_slurp_fd(fd, &n);
            skv_stream *s = skv_open_mem(buf, n, "alhd");
            skv_chunk c2;
            FUZZ_ASSERT(s && skv_read(s, &c2) == 1 && skv_alhd_decode(&c2, &h2) == 0);
            FUZZ_ASSERT(h.n_layers == h2.n_layers && h.n_kv_heads == h2.n_kv_heads &&
                        h.n_tokens == h2.n_tokens && h.width_mask == h2.width_mask &&
                        h.flags == h2.flags && !strcmp(h.text, h2.text));
            skv_close(s);
            free(buf);
        }
    }
    free(p);
    return 0;
}
