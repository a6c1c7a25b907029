/* fuzz_trace -- the trace reader end to end: skv_trace_load() (reader open
 * with TRHD and TOKS, then skv_trace_next_layer for every layer, then the
 * rest of the stream) on arbitrary bytes given as a file; a trace that loads
 * must save and load again to the same values. */
#include "fuzz.h"

#include <math.h>

static int same_floats(const float *a, const float *b, size_t n)
{
    /* bit patterns, not values: -0 vs 0 and NaN payloads count */
    return n == 0 || !memcmp(a, b, n * sizeof(float)); /* NOLINT(bugprone-suspicious-memory-comparison) */
}

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
    skv_trace *t = NULL;
    int rc = skv_trace_load(fuzz_memfd_path(data, size), &t);
    if (rc < 0) {
        FUZZ_ASSERT(t == NULL && skv_errmsg()[0] != '\0');
        return 0;
    }
    FUZZ_ASSERT(t);
    const skv_trace_hdr *h = &t->hdr;
    FUZZ_ASSERT(skv_trace_hdr_check(h) == 0);

    /* save with the same element type: values are already representable, so
     * the reloaded floats are bit-identical (NaN payloads aside, which f16
     * and bf16 keep when quiet) */
    int fd = fuzz_memfd();
    skv_stream *w = skv_open_write_fd(fd, "trace", -1);
    FUZZ_ASSERT(w);
    FUZZ_ASSERT(skv_trace_write(w, t) == 0);
    FUZZ_ASSERT(skv_close(w) == 0);
    size_t n;
    uint8_t *buf = fuzz_slurp_fd(fd, &n);
    skv_trace *u = NULL;
    FUZZ_ASSERT(skv_trace_load(fuzz_memfd_path(buf, n), &u) == 0);
    FUZZ_ASSERT(fuzz_hdr_equal(&u->hdr, &t->hdr));
    size_t nq, nkv;
    FUZZ_ASSERT(skv_trace_layer_floats(h, &nq, &nkv) == 0);
    for (uint32_t l = 0; l < h->n_layers; l++) {
        int ok = same_floats(t->q[l], u->q[l], nq) && same_floats(t->k[l], u->k[l], nkv) &&
                 same_floats(t->v[l], u->v[l], nkv);
        if (!ok) { /* allow only NaN-for-NaN differences */
            const float *a[3] = {t->q[l], t->k[l], t->v[l]}, *b[3] = {u->q[l], u->k[l], u->v[l]};
            for (int i = 0; i < 3; i++)
                for (size_t j = 0; j < (i ? nkv : nq); j++)
                    FUZZ_ASSERT(!memcmp(&a[i][j], &b[i][j], 4) || /* NOLINT(bugprone-suspicious-memory-comparison) */
                                (isnan(a[i][j]) && isnan(b[i][j])));
        }
    }
    if (t->tokens)
        FUZZ_ASSERT(u->tokens && !memcmp(t->tokens, u->tokens, (size_t)h->n_tokens * 4));
    skv_trace_free(u);
    skv_trace_free(t);
    free(buf);
    return 0;
}
