/* fuzz_attend -- skv-attend's main path (skv_attend_stream) on a stream with
 * recomputed CRCs: byte 0 picks the mode (reference, dense fp32, dense fp16,
 * packed) and whether probabilities are written; the rest is the input
 * (trace, trace with allocation, or packed cache).  Output that is written
 * must load as attention outputs. */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static skv_attend_ctx *ctx;
    fuzz_init();
    if (size < 1)
        return 0;
    if (!ctx) {
        skv_attend_opts o = {1, 0, 0};
        ctx = skv_attend_new(&o);
        FUZZ_ASSERT(ctx);
    }
    skv_attend_req req = {0};
    req.mode = (uint32_t)(data[0] & 3) + 1;  /* reference .. packed */
    req.probs = (data[0] >> 2) & 1;
    req.steps = (data[0] >> 3) & 1 ? "all" : NULL;
    uint8_t *in = fuzz_fix_crcs(data + 1, size - 1);
    char path[64];
    snprintf(path, sizeof path, "%s", fuzz_memfd_path(in, size - 1));
    int fd = memfd_create("skv-fuzz-out", MFD_CLOEXEC);
    FUZZ_ASSERT(fd >= 0);
    skv_stream *w = skv_open_write_fd(fd, "out", -1);
    FUZZ_ASSERT(w);
    int rc = skv_attend_stream(ctx, path, w, &req);
    if (rc < 0) {
        FUZZ_ASSERT(skv_errmsg()[0] != '\0');
        skv_discard(w);
    } else {
        FUZZ_ASSERT(skv_close(w) == 0);
        char opath[64];
        snprintf(opath, sizeof opath, "/proc/self/fd/%d", fd);
        skv_attn *a = NULL;
        FUZZ_ASSERT(skv_attn_load(opath, &a) == 0);
        skv_attn_free(a);
    }
    close(fd);
    free(in);
    return 0;
}
