/* fuzz_npy -- the .npy header parser: skv_npy_parse on every prefix length
 * the parser asks for, and skv_npy_read_header through a stdio stream. */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_init();
    skv_npy_hdr h;
    /* feed the parser growing prefixes, as a streaming reader would */
    size_t have = size < 10 ? size : 10;
    for (;;) {
        uint8_t *b = malloc(have ? have : 1); /* exact size: overreads are caught */
        FUZZ_ASSERT(b);
        if (have)
            memcpy(b, data, have);
        int rc = skv_npy_parse(b, have, &h);
        free(b);
        if (rc <= 0) {
            if (rc == 0) {
                FUZZ_ASSERT(h.ndim >= 0 && h.ndim <= SKV_NPY_MAX_DIMS);
                FUZZ_ASSERT(h.data_offset <= have);
                FUZZ_ASSERT(h.dtype == SKV_F32 || h.dtype == SKV_F16);
                uint64_t bytes = skv_dtype_size(h.dtype);
                for (int i = 0; i < h.ndim; i++)
                    bytes *= h.shape[i]; /* checked by the parser not to overflow */
                FUZZ_ASSERT(bytes == h.data_bytes);
            }
            break;
        }
        FUZZ_ASSERT((size_t)rc > have); /* it must ask for more than it had */
        if ((size_t)rc > size)
            break;
        have = (size_t)rc;
    }
    if (size) {
        FILE *f = fmemopen((void *)data, size, "rb");
        FUZZ_ASSERT(f);
        skv_npy_read_header(f, size, &h);
        fclose(f);
    }
    return 0;
}
