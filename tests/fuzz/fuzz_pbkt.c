/* fuzz_pbkt -- the packed bucket decoder (skv_pbkt_decode) on an arbitrary
 * PBKT payload, then dequantization of every row it holds.  Input: 2 bytes
 * of n_tokens (1..4096), then the payload. */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_init();
    if (size < 2)
        return 0;
    uint64_t n_tokens = ((uint64_t)data[0] | (uint64_t)data[1] << 8) % 4096 + 1;
    size -= 2;
    /* a 4-byte aligned copy of exactly the payload size */
    uint8_t *p = malloc(size ? size : 1);
    FUZZ_ASSERT(p);
    if (size)
        memcpy(p, data + 2, size);
    skv_bucket b;
    if (skv_pbkt_decode(p, size, n_tokens, &b) == 0) {
        FUZZ_ASSERT(b.n >= 1 && b.head_dim >= 1 && b.head_dim <= SKV_MAX_HEAD_DIM);
        FUZZ_ASSERT(skv_bits_valid(b.bits));
        for (uint32_t i = 0; i < b.n; i++) {
            FUZZ_ASSERT(b.idx[i] < n_tokens);
            FUZZ_ASSERT(i == 0 || b.idx[i] > b.idx[i - 1]);
        }
        size_t nel = (size_t)n_tokens * b.head_dim;
        float *k = malloc(nel * sizeof *k), *v = malloc(nel * sizeof *v);
        FUZZ_ASSERT(k && v);
        skv_bucket_dequantize(&b, k, v);
        free(k);
        free(v);
    }
    free(p);
    return 0;
}
