/* test_format.c -- container, trace codecs and npy header unit tests. */
#include "smartkv.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmpdir[256];

static void make_tmpdir(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/skv-test-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void rm_tmpdir(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    ck_assert_int_eq(system(cmd), 0);
}

static char *path_in(const char *name)
{
    static char p[512];
    snprintf(p, sizeof p, "%s/%s", tmpdir, name);
    return p;
}

static uint8_t *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)sz + 1);
    ck_assert_int_eq(fread(b, 1, (size_t)sz, f), (size_t)sz);
    fclose(f);
    *n = (size_t)sz;
    return b;
}

static void spit(const char *path, const uint8_t *b, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fwrite(b, 1, n, f), n);
    fclose(f);
}

/* Read every chunk of a file; return 0 on a complete stream, else the error. */
static int read_all(const char *path, int *nchunks)
{
    skv_stream *s = skv_open_read(path);
    if (!s)
        return -100;
    skv_chunk c;
    int rc, n = 0;
    while ((rc = skv_read(s, &c)) > 0)
        n++;
    skv_close(s);
    if (nchunks)
        *nchunks = n;
    return rc;
}

static skv_trace *small_trace(uint32_t dtype, int tokens)
{
    skv_trace_hdr h = {0};
    h.n_layers = 2;
    h.n_heads = 4;
    h.n_kv_heads = 2;
    h.head_dim = 8;
    h.n_tokens = 5;
    h.n_prefill = 3;
    h.dtype = dtype;
    h.flags = SKV_TRACE_POST_ROPE | (tokens ? SKV_TRACE_HAS_TOKENS : 0);
    h.rope_theta = 10000;
    strcpy(h.model, "unit test");
    strcpy(h.tokenizer, "none");
    skv_trace *t = skv_trace_new(&h);
    ck_assert_ptr_nonnull(t);
    unsigned x = 12345;
    for (uint32_t l = 0; l < h.n_layers; l++) {
        for (size_t i = 0; i < 4 * 5 * 8; i++) {
            x = x * 1103515245u + 12345u;
            t->q[l][i] = (float)((int)(x >> 16) % 2000 - 1000) / 64.0f;
        }
        for (size_t i = 0; i < 2 * 5 * 8; i++) {
            x = x * 1103515245u + 12345u;
            t->k[l][i] = (float)((int)(x >> 16) % 2000 - 1000) / 32.0f;
            x = x * 1103515245u + 12345u;
            t->v[l][i] = (float)((int)(x >> 16) % 2000 - 1000) / 16.0f;
        }
    }
    if (tokens)
        for (int i = 0; i < 5; i++)
            t->tokens[i] = 100 + i;
    return t;
}

static void assert_traces_equal(const skv_trace *a, const skv_trace *b)
{
    ck_assert_int_eq(a->hdr.n_layers, b->hdr.n_layers);
    ck_assert_int_eq(a->hdr.n_tokens, b->hdr.n_tokens);
    ck_assert_int_eq(a->hdr.n_prefill, b->hdr.n_prefill);
    ck_assert_int_eq(a->hdr.dtype, b->hdr.dtype);
    ck_assert_int_eq(a->hdr.flags, b->hdr.flags);
    ck_assert_str_eq(a->hdr.model, b->hdr.model);
    ck_assert_str_eq(a->hdr.tokenizer, b->hdr.tokenizer);
    for (uint32_t l = 0; l < a->hdr.n_layers; l++) {
        ck_assert_mem_eq(a->q[l], b->q[l], 4 * 5 * 8 * sizeof(float));
        ck_assert_mem_eq(a->k[l], b->k[l], 2 * 5 * 8 * sizeof(float));
        ck_assert_mem_eq(a->v[l], b->v[l], 2 * 5 * 8 * sizeof(float));
    }
    if (a->tokens)
        ck_assert_mem_eq(a->tokens, b->tokens, 5 * sizeof(int32_t));
}

/* Round trip for every element type, with and without compression.  The
 * values are multiples of 1/64 with small magnitude, exact in f16 and bf16. */
START_TEST(test_roundtrip_dtypes)
{
    make_tmpdir();
    const uint32_t dts[3] = {SKV_F32, SKV_F16, SKV_BF16};
    for (int d = 0; d < 3; d++) {
        for (int level = -1; level <= 9; level += 10) {
            skv_trace *t = small_trace(dts[d], d == 1);
            if (dts[d] == SKV_BF16) /* bf16 keeps 8 significant bits: round first */
                for (uint32_t l = 0; l < 2; l++)
                    for (size_t i = 0; i < 160; i++)
                        t->q[l][i] = skv_bf16_to_f32(skv_f32_to_bf16(t->q[l][i])),
                        t->k[l][i % 80] = skv_bf16_to_f32(skv_f32_to_bf16(t->k[l][i % 80])),
                        t->v[l][i % 80] = skv_bf16_to_f32(skv_f32_to_bf16(t->v[l][i % 80]));
            ck_assert_int_eq(skv_trace_save(t, path_in("a.skv"), level), 0);
            skv_trace *u = NULL;
            ck_assert_msg(skv_trace_load(path_in("a.skv"), &u) == 0, "%s", skv_errmsg());
            assert_traces_equal(t, u);
            skv_trace_free(t);
            skv_trace_free(u);
        }
    }
    rm_tmpdir();
}
END_TEST

/* hidn chunks: written per layer into a trace, skipped by the trace loader,
 * gathered exactly by skv_hidden_add; gaps, a wrong width and a bad kind
 * are rejected. */
static int gather_hidden(void *ctx, const skv_chunk *c) { return skv_hidden_add(ctx, c); }

START_TEST(test_hidden_states)
{
    make_tmpdir();
    skv_trace *t = small_trace(SKV_F32, 0);
    const uint32_t L = t->hdr.n_layers, E = 7;
    const uint64_t n = t->hdr.n_tokens;
    float *h = malloc((size_t)n * E * sizeof(float));
    for (size_t i = 0; i < (size_t)n * E; i++)
        h[i] = (float)i * 0.25f - 3.0f;
    skv_stream *s = skv_open_write(path_in("h.skv"), -1);
    ck_assert_ptr_nonnull(s);
    ck_assert_int_eq(skv_trhd_write(s, &t->hdr), 0);
    for (uint32_t l = 0; l < L; l++) {
        /* two blocks per layer, layer l scaled by l+1 */
        float *hl = malloc((size_t)n * E * sizeof(float));
        for (size_t i = 0; i < (size_t)n * E; i++)
            hl[i] = h[i] * (float)(l + 1);
        ck_assert_int_eq(skv_hidn_write(s, SKV_F32, l, 0, 3, E, hl), 0);
        ck_assert_int_eq(skv_hidn_write(s, SKV_F32, l, 3, n - 3, E, hl + 3 * E), 0);
        free(hl);
        for (uint32_t i = 0; i < t->hdr.n_heads; i++)
            ck_assert_int_eq(skv_tens_write(s, SKV_TK_Q, SKV_F32, l, i, 0, n, t->hdr.head_dim,
                                            t->q[l] + (size_t)i * n * t->hdr.head_dim), 0);
        for (int kind = SKV_TK_K; kind <= SKV_TK_V; kind++)
            for (uint32_t i = 0; i < t->hdr.n_kv_heads; i++)
                ck_assert_int_eq(skv_tens_write(s, (uint32_t)kind, SKV_F32, l, i, 0, n,
                                                t->hdr.head_dim,
                                                (kind == SKV_TK_K ? t->k[l] : t->v[l]) +
                                                    (size_t)i * n * t->hdr.head_dim), 0);
    }
    ck_assert_int_eq(skv_close(s), 0);
    /* a reader that does not ask for them still loads the trace */
    skv_trace *u = NULL;
    ck_assert_msg(skv_trace_load(path_in("h.skv"), &u) == 0, "%s", skv_errmsg());
    assert_traces_equal(t, u);
    skv_trace_free(u);
    skv_hidden *hs = skv_hidden_new(L, n);
    ck_assert_ptr_nonnull(hs);
    ck_assert_msg(skv_trace_load_with(path_in("h.skv"), gather_hidden, hs, &u) == 0, "%s",
                  skv_errmsg());
    ck_assert(skv_hidden_complete(hs));
    ck_assert_uint_eq(hs->n_embd, E);
    for (uint32_t l = 0; l < L; l++)
        for (size_t i = 0; i < (size_t)n * E; i++)
            ck_assert(hs->h[l][i] == h[i] * (float)(l + 1));
    skv_trace_free(u);
    skv_hidden_free(hs);

    /* a gap, a different width, and a wrong kind */
    hs = skv_hidden_new(L, n);
    s = skv_open_write(path_in("g.skv"), -1);
    ck_assert_int_eq(skv_hidn_write(s, SKV_F16, 0, 0, 2, E, h), 0);
    ck_assert_int_eq(skv_hidn_write(s, SKV_F16, 0, 3, 2, E, h), 0);
    ck_assert_int_eq(skv_hidn_write(s, SKV_F16, 1, 0, 2, E + 1, h), 0);
    uint8_t bad[SKV_TENS_HEADER_LEN + 4] = {0};
    bad[0] = SKV_TK_K;
    bad[4] = SKV_F32;
    bad[24] = 1;
    bad[32] = 1;
    ck_assert_int_eq(skv_write(s, SKV_T_HIDN, bad, sizeof bad), 0);
    ck_assert_int_eq(skv_close(s), 0);
    s = skv_open_read(path_in("g.skv"));
    skv_chunk c;
    ck_assert_int_eq(skv_read(s, &c), 1);
    ck_assert_int_eq(skv_hidden_add(hs, &c), 0);
    ck_assert_int_eq(skv_read(s, &c), 1);
    ck_assert_int_lt(skv_hidden_add(hs, &c), 0);
    ck_assert_ptr_nonnull(strstr(skv_errmsg(), "expected to start at 2"));
    ck_assert_int_eq(skv_read(s, &c), 1);
    ck_assert_int_lt(skv_hidden_add(hs, &c), 0);
    ck_assert_ptr_nonnull(strstr(skv_errmsg(), "8 columns, earlier blocks 7"));
    ck_assert_int_eq(skv_read(s, &c), 1);
    ck_assert_int_lt(skv_hidden_add(hs, &c), 0);
    ck_assert_ptr_nonnull(strstr(skv_errmsg(), "kind 2"));
    ck_assert(!skv_hidden_complete(hs));
    skv_close(s);
    skv_hidden_free(hs);
    free(h);
    skv_trace_free(t);
    rm_tmpdir();
}
END_TEST

START_TEST(test_f16_conversion)
{
    /* every finite half converts to float and back exactly */
    for (uint32_t h = 0; h < 65536; h++) {
        if ((h & 0x7c00u) == 0x7c00u)
            continue;
        float f = skv_f16_to_f32((uint16_t)h);
        ck_assert_uint_eq(skv_f32_to_f16(f), h);
    }
    /* batch (SIMD where available) agrees with scalar on rounding cases */
    float src[37];
    uint16_t a[37];
    for (int i = 0; i < 37; i++)
        src[i] = (float)i * 0.0123456f - 0.2f + (i % 3 ? 1e-5f : 65519.0f);
    skv_convert_from_f32(SKV_F16, src, a, 37);
    for (int i = 0; i < 37; i++)
        ck_assert_uint_eq(a[i], skv_f32_to_f16(src[i]));
    ck_assert_uint_eq(skv_f32_to_f16(1e6f), 0x7c00u);
    ck_assert_uint_eq(skv_f32_to_f16(-1e6f), 0xfc00u);
    ck_assert(isnan(skv_f16_to_f32(skv_f32_to_f16(NAN))));
    ck_assert_uint_eq(skv_f32_to_f16(65520.0f), 0x7c00u);  /* rounds up to Inf */
    ck_assert_uint_eq(skv_f32_to_f16(65504.0f), 0x7bffu);
    ck_assert_uint_eq(skv_f32_to_f16(5.96046448e-8f), 0x0001u); /* smallest subnormal */
    ck_assert_uint_eq(skv_f32_to_bf16(1.0f), 0x3f80u);
}
END_TEST

START_TEST(test_truncation_every_offset)
{
    make_tmpdir();
    skv_trace *t = small_trace(SKV_F16, 1);
    ck_assert_int_eq(skv_trace_save(t, path_in("a.skv"), -1), 0);
    skv_trace_free(t);
    size_t n;
    uint8_t *b = slurp(path_in("a.skv"), &n);
    int full;
    ck_assert_int_eq(read_all(path_in("a.skv"), &full), 0);
    for (size_t cut = 0; cut < n; cut++) {
        spit(path_in("cut.skv"), b, cut);
        int rc = read_all(path_in("cut.skv"), NULL);
        ck_assert_msg(rc < 0, "truncation at %zu of %zu not detected", cut, n);
        skv_trace *u = NULL;
        ck_assert_int_lt(skv_trace_load(path_in("cut.skv"), &u), 0);
        ck_assert_ptr_null(u);
    }
    free(b);
    rm_tmpdir();
}
END_TEST

START_TEST(test_bitflip_crc)
{
    make_tmpdir();
    skv_trace *t = small_trace(SKV_F32, 0);
    ck_assert_int_eq(skv_trace_save(t, path_in("a.skv"), -1), 0);
    skv_trace_free(t);
    size_t n;
    uint8_t *b = slurp(path_in("a.skv"), &n);
    /* flip one bit in every byte after the signature: always an error */
    for (size_t i = SKV_SIGNATURE_LEN; i < n; i++) {
        b[i] ^= 0x10;
        spit(path_in("flip.skv"), b, n);
        b[i] ^= 0x10;
        int rc = read_all(path_in("flip.skv"), NULL);
        ck_assert_msg(rc < 0, "bit flip at byte %zu not detected", i);
    }
    /* a flip inside a TENS payload names the chunk and its offset */
    size_t at = n - 44 - 10;  /* DONE is 44 bytes; 10 bytes into the last TENS */
    b[at] ^= 1;
    spit(path_in("flip.skv"), b, n);
    ck_assert_int_eq(read_all(path_in("flip.skv"), NULL), SKV_ECRC);
    ck_assert_ptr_nonnull(strstr(skv_errmsg(), "CRC mismatch in chunk TENS at byte offset"));
    free(b);
    rm_tmpdir();
}
END_TEST

START_TEST(test_signature_and_version)
{
    make_tmpdir();
    spit(path_in("empty"), (const uint8_t *)"", 0);
    ck_assert_ptr_null(skv_open_read(path_in("empty")));
    ck_assert_ptr_nonnull(strstr(skv_errmsg(), "empty input"));
    spit(path_in("text"), (const uint8_t *)"hello world, not a stream\n", 26);
    ck_assert_ptr_null(skv_open_read(path_in("text")));
    ck_assert_ptr_nonnull(strstr(skv_errmsg(), "bad signature"));
    /* CRLF damage */
    spit(path_in("crlf"), (const uint8_t *)"\x89SKV\r\r\n\x1a\n", 9);
    ck_assert_ptr_null(skv_open_read(path_in("crlf")));
    ck_assert_ptr_nonnull(strstr(skv_errmsg(), "text-mode"));
    /* version 2.0: rebuild HEAD with a valid CRC */
    skv_stream *w = skv_open_write(path_in("v.skv"), -1);
    ck_assert_ptr_nonnull(w);
    ck_assert_int_eq(skv_close(w), 0);
    size_t n;
    uint8_t *b = slurp(path_in("v.skv"), &n);
    uint8_t *head = b + SKV_SIGNATURE_LEN;
    uint64_t plen = skv_get64(head + 8);
    skv_put16(head + SKV_CHUNK_HEADER_LEN, 2);
    skv_put16(head + SKV_CHUNK_HEADER_LEN + 2, 0);
    /* recompute CRC with zlib's crc32 through the library: write via raw API */
    extern unsigned long crc32(unsigned long, const unsigned char *, unsigned int);
    uint32_t crc = (uint32_t)crc32(0, head, (unsigned)(SKV_CHUNK_HEADER_LEN + plen));
    skv_put32(head + SKV_CHUNK_HEADER_LEN + plen, crc);
    spit(path_in("v2.skv"), b, n);
    ck_assert_ptr_null(skv_open_read(path_in("v2.skv")));
    ck_assert_ptr_nonnull(strstr(skv_errmsg(), "unsupported format version 2.0"));
    /* a newer minor version is refused by name; older ones are read */
    for (int minor = 0; minor <= SKV_VERSION_MINOR + 1; minor++) {
        skv_put16(head + SKV_CHUNK_HEADER_LEN, 1);
        skv_put16(head + SKV_CHUNK_HEADER_LEN + 2, (uint16_t)minor);
        crc = (uint32_t)crc32(0, head, (unsigned)(SKV_CHUNK_HEADER_LEN + plen));
        skv_put32(head + SKV_CHUNK_HEADER_LEN + plen, crc);
        spit(path_in("v1.skv"), b, n);
        skv_stream *r = skv_open_read(path_in("v1.skv"));
        if (minor <= SKV_VERSION_MINOR) {
            ck_assert_msg(r != NULL, "1.%d: %s", minor, skv_errmsg());
            skv_close(r);
        } else {
            char want[80];
            snprintf(want, sizeof want, "format version 1.%d is newer than this reader (1.0 to "
                     "1.%d)", minor, SKV_VERSION_MINOR);
            ck_assert_ptr_null(r);
            ck_assert_ptr_nonnull(strstr(skv_errmsg(), want));
        }
    }
    free(b);
    /* a directory */
    ck_assert_ptr_null(skv_open_read(tmpdir));
    rm_tmpdir();
}
END_TEST

START_TEST(test_limits_and_unknown_chunks)
{
    make_tmpdir();
    skv_stream *w = skv_open_write(path_in("u.skv"), -1);
    ck_assert_ptr_nonnull(w);
    ck_assert_int_eq(skv_write(w, "zzzz", "ancillary", 9), 0);
    ck_assert_int_eq(skv_write(w, "ZZZZ", "critical", 8), 0);
    ck_assert_int_eq(skv_close(w), 0);
    /* the container reads both; the trace loader rejects the unknown critical one */
    int n;
    ck_assert_int_eq(read_all(path_in("u.skv"), &n), 0);
    ck_assert_int_eq(n, 2);
    skv_trace *t = NULL;
    ck_assert_int_lt(skv_trace_load(path_in("u.skv"), &t), 0);

    /* a chunk claiming a huge payload is refused before any allocation */
    size_t len;
    uint8_t *b = slurp(path_in("u.skv"), &len);
    uint8_t *c1 = b + SKV_SIGNATURE_LEN + SKV_CHUNK_HEADER_LEN + 40 + 4;
    skv_put64(c1 + 8, (uint64_t)1 << 60);
    skv_put64(c1 + 16, (uint64_t)1 << 60);
    spit(path_in("big.skv"), b, len);
    ck_assert_int_eq(read_all(path_in("big.skv"), NULL), SKV_ELIMIT);
    free(b);

    /* writer refuses oversize payloads and bad types */
    w = skv_open_write(path_in("x.skv"), -1);
    ck_assert_int_eq(skv_write(w, "ab1d", "", 0), SKV_EINVAL);
    const void *p[1] = {""};
    uint64_t l[1] = {SKV_CHUNK_MAX + 1};
    ck_assert_int_eq(skv_writev(w, "ABCD", 1, p, l), SKV_ELIMIT);
    skv_discard(w);
    ck_assert_int_ne(access(path_in("x.skv"), F_OK), 0);
    rm_tmpdir();
}
END_TEST

START_TEST(test_header_validation)
{
    skv_trace_hdr h = {0};
    h.n_layers = 1;
    h.n_heads = 6;
    h.n_kv_heads = 4; /* does not divide */
    h.head_dim = 8;
    h.n_tokens = 4;
    h.dtype = SKV_F32;
    ck_assert_int_lt(skv_trace_hdr_check(&h), 0);
    h.n_kv_heads = 3;
    ck_assert_int_eq(skv_trace_hdr_check(&h), 0);
    h.n_prefill = 5;
    ck_assert_int_lt(skv_trace_hdr_check(&h), 0);
    h.n_prefill = 0;
    h.n_tokens = SKV_MAX_TOKENS + 1;
    ck_assert_int_eq(skv_trace_hdr_check(&h), SKV_ELIMIT);
    h.n_tokens = SKV_MAX_TOKENS;
    h.n_heads = SKV_MAX_HEADS;
    h.n_kv_heads = SKV_MAX_HEADS;
    h.head_dim = SKV_MAX_HEAD_DIM;
    /* within each limit, but a layer's product is huge: still no overflow */
    size_t nq, nkv;
    ck_assert_int_eq(skv_trace_layer_floats(&h, &nq, &nkv), 0);
    ck_assert_uint_eq(nq, (size_t)SKV_MAX_HEADS * SKV_MAX_TOKENS * SKV_MAX_HEAD_DIM);
    size_t out;
    ck_assert_int_eq(skv_mul_sizes(&out, 3, SIZE_MAX / 2, (size_t)2, (size_t)2), -1);
    /* and loading a trace that large fails cleanly under a memory cap */
    skv_set_max_mem((uint64_t)1 << 30);
    ck_assert_ptr_null(skv_trace_new(&h));
    skv_set_max_mem(0);
}
END_TEST

START_TEST(test_write_errors)
{
    /* /dev/full: ENOSPC reported, no crash */
    skv_stream *w = skv_open_write("/dev/full", -1);
    if (w) {
        int rc = skv_write(w, "abcd", "x", 1);
        if (rc == 0)
            rc = skv_close(w);
        else
            skv_discard(w);
        ck_assert_int_lt(rc, 0);
    }
    ck_assert_ptr_nonnull(strstr(skv_errmsg(), "No space left"));
    /* a failed stream leaves no file behind */
    make_tmpdir();
    w = skv_open_write(path_in("partial.skv"), -1);
    ck_assert_int_eq(skv_write(w, "abcd", "x", 1), 0);
    skv_discard(w);
    ck_assert_int_ne(access(path_in("partial.skv"), F_OK), 0);
    rm_tmpdir();
}
END_TEST

START_TEST(test_alloc_failure_paths)
{
    make_tmpdir();
    skv_trace *t = small_trace(SKV_F16, 1);
    ck_assert_int_eq(skv_trace_save(t, path_in("a.skv"), 6), 0);
    skv_trace_free(t);
    /* fail the 1st, 2nd, ... allocation of a load until it succeeds */
    int ok = 0;
    for (long k = 1; k < 200 && !ok; k++) {
        skv_fail_alloc_after(k);
        skv_trace *u = NULL;
        int rc = skv_trace_load(path_in("a.skv"), &u);
        if (rc == 0) {
            ok = 1;
            skv_trace_free(u);
        } else {
            ck_assert_ptr_null(u);
        }
    }
    skv_fail_alloc_after(0);
    ck_assert(ok);
    rm_tmpdir();
}
END_TEST

START_TEST(test_npy_headers)
{
    skv_npy_hdr h;
    uint8_t buf[256];
    uint64_t shape[4] = {2, 3, 5, 8};
    int n = skv_npy_format_header(SKV_F16, 4, shape, buf, sizeof buf);
    ck_assert_int_gt(n, 0);
    ck_assert_int_eq(n % 64, 0);
    ck_assert_int_eq(skv_npy_parse(buf, (size_t)n, &h), 0);
    ck_assert_int_eq(h.dtype, SKV_F16);
    ck_assert_int_eq(h.ndim, 4);
    ck_assert_uint_eq(h.shape[3], 8);
    ck_assert_uint_eq(h.data_bytes, 2 * 3 * 5 * 8 * 2);
    /* short buffers ask for more; never read past n */
    for (int k = 0; k < n; k++)
        ck_assert_int_ne(skv_npy_parse(buf, (size_t)k, &h), 0);
    const char *bad[] = {
        "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }",
        "{'descr': '<i4', 'fortran_order': False, 'shape': (2,), }",
        "{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }",
        "{'descr': '<f4', 'fortran_order': False, }",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1), }",
        "['not', 'a', 'dict']",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        size_t len = strlen(bad[i]);
        uint8_t b[300] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (uint8_t)len, 0};
        memcpy(b + 10, bad[i], len);
        ck_assert_msg(skv_npy_parse(b, 10 + len, &h) < 0, "accepted: %s", bad[i]);
    }
    uint8_t v9[12] = {0x93, 'N', 'U', 'M', 'P', 'Y', 9, 0, 0, 0};
    ck_assert_int_eq(skv_npy_parse(v9, 12, &h), SKV_EVERSION);
}
END_TEST

START_TEST(test_tens_blocks)
{
    /* a head longer than one chunk is split, and the reader reassembles it */
    make_tmpdir();
    skv_trace_hdr h = {0};
    h.n_layers = 1;
    h.n_heads = 1;
    h.n_kv_heads = 1;
    h.head_dim = 1024;
    h.n_tokens = 20000; /* 20000 * 1024 * 4 bytes = 78 MiB per head in f32 */
    h.n_prefill = 20000;
    h.dtype = SKV_F32;
    skv_trace *t = skv_trace_new(&h);
    ck_assert_ptr_nonnull(t);
    for (size_t i = 0; i < (size_t)20000 * 1024; i++)
        t->k[0][i] = (float)(i % 1000);
    ck_assert_int_eq(skv_trace_save(t, path_in("big.skv"), -1), 0);
    int n;
    ck_assert_int_eq(read_all(path_in("big.skv"), &n), 0);
    ck_assert_int_eq(n, 1 + 3 * 2); /* TRHD + Q, K, V in two blocks each */
    skv_trace *u = NULL;
    ck_assert_int_eq(skv_trace_load(path_in("big.skv"), &u), 0);
    ck_assert_mem_eq(t->k[0], u->k[0], (size_t)20000 * 1024 * 4);
    skv_trace_free(t);
    skv_trace_free(u);
    rm_tmpdir();
}
END_TEST

START_TEST(test_synth_deterministic)
{
    make_tmpdir();
    skv_synth_cfg c;
    skv_synth_defaults(&c);
    c.n_layers = 2;
    c.n_tokens = 256;
    for (int i = 0; i < 2; i++) {
        skv_stream *w = skv_open_write(path_in(i ? "b.skv" : "a.skv"), -1);
        ck_assert_int_eq(skv_synth_write(&c, w), 0);
        ck_assert_int_eq(skv_close(w), 0);
    }
    size_t na, nb;
    uint8_t *a = slurp(path_in("a.skv"), &na), *b = slurp(path_in("b.skv"), &nb);
    ck_assert_uint_eq(na, nb);
    ck_assert_mem_eq(a, b, na);
    free(a);
    free(b);
    /* sinks dominate the attention of a late query: check the model's intent */
    skv_trace *t = NULL;
    ck_assert_int_eq(skv_trace_load(path_in("a.skv"), &t), 0);
    const uint32_t d = 64;
    const uint64_t T = 256, q = 200;
    double logits[256], mx = -1e30, sum = 0;
    for (uint64_t j = 0; j <= q; j++) {
        double s = 0;
        for (uint32_t i = 0; i < d; i++)
            s += (double)t->q[0][q * d + i] * t->k[0][j * d + i];
        logits[j] = s / 8.0;
        if (logits[j] > mx)
            mx = logits[j];
    }
    for (uint64_t j = 0; j <= q; j++)
        sum += exp(logits[j] - mx);
    double sinks = 0;
    for (uint64_t j = 0; j < 4; j++)
        sinks += exp(logits[j] - mx) / sum;
    ck_assert_msg(sinks > 4.0 / (double)T * 5, "sink mass %g not above uniform", sinks);
    skv_trace_free(t);
    rm_tmpdir();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("format");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_roundtrip_dtypes);
    tcase_add_test(tc, test_f16_conversion);
    tcase_add_test(tc, test_truncation_every_offset);
    tcase_add_test(tc, test_bitflip_crc);
    tcase_add_test(tc, test_signature_and_version);
    tcase_add_test(tc, test_limits_and_unknown_chunks);
    tcase_add_test(tc, test_header_validation);
    tcase_add_test(tc, test_write_errors);
    tcase_add_test(tc, test_alloc_failure_paths);
    tcase_add_test(tc, test_npy_headers);
    tcase_add_test(tc, test_tens_blocks);
    tcase_add_test(tc, test_hidden_states);
    tcase_add_test(tc, test_synth_deterministic);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf ? 1 : 0;
}
