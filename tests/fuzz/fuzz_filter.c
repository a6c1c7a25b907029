/* fuzz_filter -- skv-alloc's and skv-quant's main paths on a stream with
 * recomputed CRCs: skv_alloc_filter (byte 0 picks the policy and whether
 * width 0 is allowed), and when it succeeds, packing its output as skv-quant
 * does (skv_cache_input_load, skv_cache_plan_from_chunks, skv_cache_write);
 * skv-quant must accept every stream skv-alloc accepts (the values
 * included), and the packed cache must load again with skv_cache_read and
 * match the byte model. */
#include "fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_init();
    if (size < 1)
        return 0;
    skv_alloc_cfg ac;
    skv_imp_cfg ic;
    skv_alloc_cfg_defaults(&ac);
    skv_imp_defaults(&ic);
    static const uint32_t policies[4] = {SKV_POLICY_SMARTKV, SKV_POLICY_UNIFORM,
                                         SKV_POLICY_GREEDY, SKV_POLICY_OPTIMAL};
    ac.policy = policies[data[0] & 3];
    ac.uniform_bits = 4;
    ac.budget = ac.policy == SKV_POLICY_UNIFORM ? 0 : 0.5;
    if (data[0] & 4)
        ac.width_mask |= 1u;  /* allow eviction */
    uint8_t *in = fuzz_fix_crcs(data + 1, size - 1);
    skv_stream *is = skv_open_mem(in, size - 1, "in");
    if (!is) {
        free(in);
        return 0;
    }
    int fd = memfd_create("skv-fuzz-alloc", MFD_CLOEXEC);
    FUZZ_ASSERT(fd >= 0);
    skv_stream *os = skv_open_write_fd(fd, "alloc", -1);
    FUZZ_ASSERT(os);
    skv_alloc *a = NULL;
    skv_alloc_result r;
    int rc = skv_alloc_filter(is, os, &ac, &ic, &a, &r);
    skv_close(is);
    free(in);
    skv_alloc_free(a);
    if (rc < 0) {
        FUZZ_ASSERT(skv_errmsg()[0] != '\0');
        skv_discard(os);
        close(fd);
        return 0;
    }
    FUZZ_ASSERT(skv_close(os) == 0);
    char apath[64];
    snprintf(apath, sizeof apath, "/proc/self/fd/%d", fd);
    /* skv-quant on the allocated trace */
    skv_trace *t = NULL;
    skv_chunk_list extra = {0};
    rc = skv_cache_input_load(apath, &t, &extra);
    skv_cache_plan plan;
    if (rc == 0)
        rc = skv_cache_plan_from_chunks(&plan, &t->hdr, &extra);
    if (rc < 0)
        fprintf(stderr, "skv-quant rejects skv-alloc's output: %s\n", skv_errmsg());
    FUZZ_ASSERT(rc == 0);
    int pfd = memfd_create("skv-fuzz-cache", MFD_CLOEXEC);
    FUZZ_ASSERT(pfd >= 0);
    skv_stream *ps = skv_open_write_fd(pfd, "cache", -1);
    FUZZ_ASSERT(ps);
    skv_cache_stats st;
    /* one rule for the values (skv_trace_check_values, which
     * skv_cache_write applies first): what skv-alloc accepted, skv-quant packs */
    rc = skv_cache_write(ps, t, &plan, &extra, 0, &st);
    if (rc < 0)
        fprintf(stderr, "skv-quant fails on skv-alloc's output: %s\n", skv_errmsg());
    FUZZ_ASSERT(rc == 0);
    FUZZ_ASSERT(skv_close(ps) == 0);
    FUZZ_ASSERT(st.cache_bytes == st.model_bytes);
    size_t n;
    uint8_t *buf = fuzz_slurp_fd(pfd, &n);
    skv_stream *rs = skv_open_mem(buf, n, "cache");
    FUZZ_ASSERT(rs);
    skv_cache *c = NULL;
    FUZZ_ASSERT(skv_cache_read(rs, &c) == 0);
    FUZZ_ASSERT(c->pk.cache_bytes == st.model_bytes);
    skv_cache_free(c);
    skv_close(rs);
    free(buf);
    skv_cache_plan_free(&plan);
    skv_chunk_list_free(&extra);
    skv_trace_free(t);
    close(pfd);
    close(fd);
    return 0;
}
