/* fuzz_attn -- the attention-output reader end to end (skv_attn_load on the
 * input as a file): ATHD, then OUT/PROB blocks checked for shape and
 * coverage, then DONE. */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_init();
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
