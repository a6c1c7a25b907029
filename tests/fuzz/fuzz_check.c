/* fuzz_check -- the conformance checker (skv-trace info, cat and export):
 * every chunk of a stream with recomputed CRCs through skv_check_chunk, then
 * skv_check_end.  Properties: a stream the checker accepts as a trace loads
 * as skv-quant loads it (skv_cache_input_load), as a packed cache with skv_cache_read, as attention
 * outputs with skv_attn_load (one validation path: what info accepts, the
 * tools accept). */
#include "fuzz.h"

static int one(const uint8_t *data, size_t size)
{
    skv_stream *s = skv_open_mem(data, size, "fuzz");
    if (!s)
        return 0;
    skv_checker *k = skv_checker_new();
    FUZZ_ASSERT(k);
    skv_chunk c;
    int rc;
    while ((rc = skv_read(s, &c)) > 0)
        if ((rc = skv_check_chunk(k, &c)) < 0)
            break;
    if (rc == 0)
        rc = skv_check_end(k);
    enum skv_stream_kind kind = skv_check_kind(k);
    skv_checker_free(k);
    skv_close(s);
    if (rc < 0) {
        FUZZ_ASSERT(skv_errmsg()[0] != '\0');
        return 0;
    }
    const char *msg = "";
    if (kind == SKV_KIND_TRACE) {
        /* as skv-quant loads it: allocation and ancillary chunks kept */
        skv_trace *t = NULL;
        skv_chunk_list extra = {0};
        rc = skv_cache_input_load(fuzz_memfd_path(data, size), &t, &extra);
        skv_chunk_list_free(&extra);
        skv_trace_free(t);
        msg = "trace";
    } else if (kind == SKV_KIND_PACKED) {
        skv_cache *cache = NULL;
        s = skv_open_mem(data, size, "fuzz");
        FUZZ_ASSERT(s);
        rc = skv_cache_read(s, &cache);
        skv_close(s);
        skv_cache_free(cache);
        msg = "packed cache";
    } else if (kind == SKV_KIND_ATTN) {
        skv_attn *a = NULL;
        rc = skv_attn_load(fuzz_memfd_path(data, size), &a);
        skv_attn_free(a);
        msg = "attention outputs";
    }
    if (rc < 0)
        fprintf(stderr, "checker accepted a %s that the loader rejects: %s\n", msg, skv_errmsg());
    FUZZ_ASSERT(rc == 0);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_init();
    uint8_t *fixed = fuzz_fix_crcs(data, size);
    int rc = one(fixed, size);
    free(fixed);
    return rc;
}
