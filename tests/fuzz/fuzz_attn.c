/* fuzz_attn -- the attention-output reader end to end (skv_attn_load on the
 * input as a file): ATHD, then OUT/PROB blocks checked for shape and
 * coverage, then DONE. */
#include "fuzz.h"

static int one(const uint8_t *data, size_t size);

/* every CRC made right: the input reaches the decoders */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_init();
    uint8_t *fixed = fuzz_fix_crcs(data, size);
    int rc = one(fixed, size);
    free(fixed);
    return rc;
}

static int one(const uint8_t *data, size_t size)
{
    skv_attn *a = NULL;
    if (skv_attn_load(fuzz_memfd_path(data, size), &a) < 0) {
        FUZZ_ASSERT(a == NULL);
        return 0;
    }
    FUZZ_ASSERT(a && a->out);
    FUZZ_ASSERT(!(a->h.flags & 1u) || a->prob);
    skv_attn_free(a);
    return 0;
}
