/* test_robust.c -- overflow-checked size math, the memory cap, hostile
 * headers, readers over descriptors and memory, allocation-failure sweeps. */
#define _GNU_SOURCE
#include "smartkv.h"

#include <check.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <zlib.h>

/* Append one chunk in stored form (header, payload, CRC) to buf at *n. */
static void put_chunk(uint8_t *buf, size_t *n, const char *type, const void *p,
                      uint64_t size, uint64_t declared)
{
    uint8_t *h = buf + *n;
    memcpy(h, type, 4);
    skv_put32(h + 4, 0);
    skv_put64(h + 8, declared);
    skv_put64(h + 16, declared);
    memcpy(h + 24, p, (size_t)size);
    uint32_t crc = (uint32_t)crc32(0L, h, (uInt)(24 + size));
    skv_put32(h + 24 + size, crc);
    *n += 24 + (size_t)size + 4;
}

/* signature + HEAD, as a writer makes them */
static size_t stream_start(uint8_t *buf)
{
    size_t n = SKV_SIGNATURE_LEN;
    memcpy(buf, SKV_SIGNATURE, SKV_SIGNATURE_LEN);
    uint8_t head[40] = {0};
    skv_put16(head, SKV_VERSION_MAJOR);
    put_chunk(buf, &n, SKV_T_HEAD, head, sizeof head, sizeof head);
    return n;
}

/* A TRHD payload with the given shape. */
static size_t trhd_payload(uint8_t *p, uint32_t layers, uint32_t heads, uint32_t dim,
                           uint64_t tokens)
{
    memset(p, 0, SKV_TRHD_FIXED_LEN);
    skv_put32(p, layers);
    skv_put32(p + 4, heads);
    skv_put32(p + 8, heads);
    skv_put32(p + 12, dim);
    skv_put64(p + 16, tokens);
    skv_put64(p + 24, tokens);
    skv_put32(p + 32, SKV_F16);
    return SKV_TRHD_FIXED_LEN;
}

START_TEST(test_size_helpers)
{
    size_t o;
    ck_assert_int_eq(skv_mul_size(SIZE_MAX / 2, 2, &o), 0);
    ck_assert_uint_eq(o, SIZE_MAX - 1);
    ck_assert_int_eq(skv_mul_size(SIZE_MAX / 2 + 1, 2, &o), -1);
    ck_assert_int_eq(skv_mul_size(0, SIZE_MAX, &o), 0);
    ck_assert_uint_eq(o, 0);
    ck_assert_int_eq(skv_add_size(SIZE_MAX - 1, 1, &o), 0);
    ck_assert_uint_eq(o, SIZE_MAX);
    ck_assert_int_eq(skv_add_size(SIZE_MAX, 1, &o), -1);
    ck_assert_int_eq(skv_mul_sizes(&o, 0), 0);
    ck_assert_uint_eq(o, 1);
    ck_assert_int_eq(skv_mul_sizes(&o, 3, (size_t)1 << 20, (size_t)1 << 20, (size_t)1 << 20), 0);
    ck_assert_uint_eq(o, (size_t)1 << 60);
    o = 77;
    ck_assert_int_eq(skv_mul_sizes(&o, 4, (size_t)1 << 20, (size_t)1 << 20, (size_t)1 << 20,
                                   (size_t)16), -1);
    ck_assert_uint_eq(o, 77); /* untouched on overflow */
    /* calloc refuses an overflowing product with a message, before malloc */
    skv_error_clear();
    ck_assert_ptr_null(skv_calloc(SIZE_MAX / 2, 4));
    ck_assert_ptr_nonnull(strstr(skv_errmsg(), "overflows"));
    /* the largest trace layer fits 64-bit size math exactly */
    skv_trace_hdr h = {0};
    h.n_layers = SKV_MAX_LAYERS;
    h.n_heads = h.n_kv_heads = SKV_MAX_HEADS;
    h.head_dim = SKV_MAX_HEAD_DIM;
    h.n_tokens = SKV_MAX_TOKENS;
    h.dtype = SKV_F32;
    size_t nq, nkv;
    ck_assert_int_eq(skv_trace_layer_floats(&h, &nq, &nkv), 0);
    ck_assert_uint_eq(nq, (size_t)1 << 44);
}
END_TEST

START_TEST(test_memory_cap)
{
    /* the cap bounds the process: every live allocation counts */
    uint64_t base = skv_mem_live();
    ck_assert_uint_gt(base, 0);
    skv_set_max_mem(base + (1 << 20));
    ck_assert_ptr_null(skv_malloc((size_t)(base + (1 << 20)) + 1)); /* one request alone */
    ck_assert_ptr_nonnull(strstr(skv_errmsg(), "memory cap"));
    void *p = skv_malloc(512 << 10);
    ck_assert_ptr_nonnull(p);
    ck_assert_ptr_null(skv_malloc(768 << 10)); /* each fits, both do not */
    ck_assert_ptr_nonnull(strstr(skv_errmsg(), "memory cap"));
    ck_assert_ptr_null(skv_calloc(768, 1024));
    ck_assert_ptr_null(skv_realloc(p, 2 << 20));
    free(p); /* realloc failure leaves the block; freed with plain free(): still seen */
    p = skv_malloc(768 << 10);
    ck_assert_ptr_nonnull(p);
    free(p);
    /* many small allocations are bounded like one large one */
    void **v = calloc(4096, sizeof *v);
    ck_assert_ptr_nonnull(v);
    int n = 0;
    while (n < 4096 && (v[n] = skv_malloc(1024)) != NULL)
        n++;
    ck_assert_int_lt(n, 4096);
    ck_assert_int_gt(n, 64);
    ck_assert_ptr_nonnull(strstr(skv_errmsg(), "memory cap"));
    while (n > 0)
        free(v[--n]);
    free(v);
    ck_assert_int_eq(skv_check_mem(1000, "x"), 0);
    ck_assert_int_eq(skv_check_mem((2 << 20), "the thing"), SKV_ELIMIT);
    ck_assert_ptr_nonnull(strstr(skv_errmsg(), "the thing needs 2097152 bytes"));
    /* a whole trace counts in total, though each allocation is small */
    skv_set_max_mem(skv_mem_live() + 200000);
    skv_trace_hdr h = {0};
    h.n_layers = 64;
    h.n_heads = h.n_kv_heads = 1;
    h.head_dim = 8;
    h.n_tokens = 16;
    h.dtype = SKV_F16;
    skv_trace *t = skv_trace_new(&h); /* 64 layers x 3 x 512 bytes = 98304 */
    ck_assert_ptr_nonnull(t);
    skv_trace_free(t);
    h.n_layers = 140; /* 140 x 1536 = 215040 > 200000 */
    ck_assert_ptr_null(skv_trace_new(&h));
    ck_assert_ptr_nonnull(strstr(skv_errmsg(), "the whole trace"));
    skv_set_max_mem(0);
    t = skv_trace_new(&h);
    ck_assert_ptr_nonnull(t);
    skv_trace_free(t);
}
END_TEST

/* A TRHD declaring the largest shape, followed by nothing: loading stops at
 * the missing data without allocating for the shape, cap or no cap. */
START_TEST(test_hostile_header)
{
    uint8_t buf[4096], p[256];
    size_t n = stream_start(buf);
    size_t pl = trhd_payload(p, SKV_MAX_LAYERS, SKV_MAX_HEADS, SKV_MAX_HEAD_DIM, SKV_MAX_TOKENS);
    put_chunk(buf, &n, SKV_T_TRHD, p, pl, pl);
    int fd = memfd_create("hostile", 0);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, buf, n), (ssize_t)n);
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    /* no cap: the readers allocate nothing for rows that never come */
    skv_trace *t = (skv_trace *)1;
    uint64_t before = skv_mem_live();
    ck_assert_int_lt(skv_trace_load(path, &t), 0);
    ck_assert_ptr_null(t);
    ck_assert_msg(strstr(skv_errmsg(), "truncated"), "%s", skv_errmsg()); /* no DONE */
    /* the streaming reader: the header is fine, the layer is missing */
    skv_trace_reader *r = skv_trace_reader_open(path, NULL, NULL);
    ck_assert_ptr_nonnull(r);
    skv_layer L = {0};
    ck_assert_int_eq(skv_trace_next_layer(r, &L), SKV_ETRUNC);
    ck_assert_ptr_null(L.q);
    ck_assert_uint_lt(skv_mem_live(), before + (4 << 20));
    skv_trace_reader_close(r);
    skv_set_max_mem(0);
    close(fd);
}
END_TEST

/* A chunk header declaring 60 MiB in a short stream: truncated, and no
 * allocation of the declared size (a 2 MiB cap would refuse it). */
START_TEST(test_declared_size_not_allocated)
{
    static uint8_t buf[1 << 12];
    uint8_t zero[100] = {0};
    size_t n = stream_start(buf);
    put_chunk(buf, &n, "TENS", zero, sizeof zero, (uint64_t)60 << 20);
    n -= 4; /* the CRC would be after 60 MiB */
    skv_set_max_mem(skv_mem_live() + ((uint64_t)4 << 20));
    skv_stream *s = skv_open_mem(buf, n, "hostile");
    ck_assert_ptr_nonnull(s);
    skv_chunk c;
    int rrc = skv_read(s, &c);
    ck_assert_msg(rrc == SKV_ETRUNC, "%d %s", rrc, skv_errmsg());
    ck_assert_ptr_nonnull(strstr(skv_errmsg(), "truncated"));
    skv_close(s);
    /* a real 3 MiB chunk does need more than 2 MiB: that is refused */
    size_t big = (size_t)3 << 20;
    uint8_t *b = calloc(1, big + 256), *payload = calloc(1, big);
    ck_assert_ptr_nonnull(b);
    ck_assert_ptr_nonnull(payload);
    n = stream_start(b);
    put_chunk(b, &n, "abcd", payload, big, big);
    s = skv_open_mem(b, n, "big");
    ck_assert_ptr_nonnull(s);
    ck_assert_int_eq(skv_read(s, &c), SKV_ELIMIT);
    skv_close(s);
    skv_set_max_mem(0);
    s = skv_open_mem(b, n, "big");
    ck_assert_int_eq(skv_read(s, &c), 1);
    ck_assert_uint_eq(c.raw_size, big);
    ck_assert_int_eq(skv_read(s, &c), SKV_ETRUNC); /* no DONE */
    skv_close(s);
    free(b);
    free(payload);
}
END_TEST

/* The conformance checker over a stream the library wrote, and over the
 * same chunks with one rule broken (valid CRCs: the writer computes them). */
static int check_chunks(const uint8_t *buf, size_t n)
{
    skv_stream *s = skv_open_mem(buf, n, "check");
    ck_assert_ptr_nonnull(s);
    skv_checker *k = skv_checker_new();
    ck_assert_ptr_nonnull(k);
    skv_chunk c;
    int rc;
    while ((rc = skv_read(s, &c)) > 0)
        if ((rc = skv_check_chunk(k, &c)) < 0)
            break;
    if (rc == 0)
        rc = skv_check_end(k);
    skv_checker_free(k);
    skv_close(s);
    return rc;
}

/* Write a small trace with `edit` applied to its chunk sequence: 0 none,
 * 1 an unknown critical chunk at the end, 2 the second TENS twice, 3 the last
 * TENS left out, 4 an unknown ancillary chunk after TRHD. */
static uint8_t *edited_trace(int edit, size_t *n)
{
    skv_trace_hdr h = {0};
    h.n_layers = 1;
    h.n_heads = 2;
    h.n_kv_heads = 1;
    h.head_dim = 8;
    h.n_tokens = 4;
    h.dtype = SKV_F32;
    skv_trace *t = skv_trace_new(&h);
    ck_assert_ptr_nonnull(t);
    int fd = memfd_create("checked", 0);
    ck_assert_int_ge(fd, 0);
    skv_stream *w = skv_open_write_fd(fd, "checked", -1);
    ck_assert_ptr_nonnull(w);
    ck_assert_int_eq(skv_trhd_write(w, &h), 0);
    if (edit == 4)
        ck_assert_int_eq(skv_write(w, "zzzz", "x", 1), 0);
    for (int i = 0; i < 4; i++) { /* Q0 Q1 K0 V0 */
        uint32_t kind = i < 2 ? SKV_TK_Q : (uint32_t)(i + 0);
        if (edit == 3 && i == 3)
            break;
        ck_assert_int_eq(skv_tens_write(w, kind, SKV_F32, 0, i < 2 ? (uint32_t)i : 0, 0, 4, 8,
                                        t->q[0]), 0);
        if (edit == 2 && i == 1)
            ck_assert_int_eq(skv_tens_write(w, kind, SKV_F32, 0, 1, 0, 4, 8, t->q[0]), 0);
    }
    if (edit == 1)
        ck_assert_int_eq(skv_write(w, "ZZZZ", "x", 1), 0);
    ck_assert_int_eq(skv_close(w), 0);
    off_t size = lseek(fd, 0, SEEK_END);
    uint8_t *buf = malloc((size_t)size);
    ck_assert_ptr_nonnull(buf);
    ck_assert_int_eq(pread(fd, buf, (size_t)size, 0), size);
    close(fd);
    skv_trace_free(t);
    *n = (size_t)size;
    return buf;
}

START_TEST(test_checker)
{
    static const struct { int edit, rc; const char *msg; } cases[] = {
        {0, 0, NULL},
        {1, SKV_EUNSUP, "unknown critical chunk ZZZZ"},
        {2, SKV_EFORMAT, "expected K layer 0 head 0"},
        {3, SKV_EFORMAT, "stream ends inside layer 0 (V head 0"},
        {4, 0, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n;
        uint8_t *buf = edited_trace(cases[i].edit, &n);
        int rc = check_chunks(buf, n);
        ck_assert_msg(rc == cases[i].rc, "edit %d: rc %d (%s)", cases[i].edit, rc, skv_errmsg());
        if (cases[i].msg)
            ck_assert_msg(strstr(skv_errmsg(), cases[i].msg), "edit %d: %s", cases[i].edit,
                          skv_errmsg());
        free(buf);
    }
}
END_TEST

/* skv_grow: doubling within the limit, the limit enforced, cap kept on error */
START_TEST(test_grow)
{
    void *p = NULL;
    size_t cap = 0;
    ck_assert_int_eq(skv_grow(&p, &cap, 10, 100000), 0);
    ck_assert_uint_eq(cap, 4096);
    ck_assert_int_eq(skv_grow(&p, &cap, 5000, 100000), 0);
    ck_assert_uint_eq(cap, 8192);
    ck_assert_int_eq(skv_grow(&p, &cap, 70000, 100000), 0);
    ck_assert_uint_eq(cap, 70000);
    ck_assert_int_eq(skv_grow(&p, &cap, 90000, 100000), 0);
    ck_assert_uint_eq(cap, 100000); /* doubling stops at the limit */
    ck_assert_int_eq(skv_grow(&p, &cap, 100001, 100000), SKV_ELIMIT);
    ck_assert_uint_eq(cap, 100000);
    free(p);
}
END_TEST

START_TEST(test_open_fd_and_mem)
{
    int fd = memfd_create("stream", 0);
    ck_assert_int_ge(fd, 0);
    skv_stream *w = skv_open_write_fd(fd, "memfd", 6);
    ck_assert_ptr_nonnull(w);
    ck_assert_str_eq(skv_stream_name(w), "memfd");
    uint8_t data[1000];
    for (int i = 0; i < 1000; i++)
        data[i] = (uint8_t)(i % 7);
    ck_assert_int_eq(skv_write(w, "abcd", data, sizeof data), 0);
    ck_assert_int_eq(skv_write(w, "Zzzz", data, 3), 0);
    ck_assert_int_eq(skv_close(w), 0);
    ck_assert_int_ne(fcntl(fd, F_GETFD), -1); /* not closed */
    off_t size = lseek(fd, 0, SEEK_END);
    ck_assert_int_gt(size, 100);
    uint8_t *buf = malloc((size_t)size);
    ck_assert_int_eq(pread(fd, buf, (size_t)size, 0), size);

    for (int mode = 0; mode < 2; mode++) {
        ck_assert_int_eq(lseek(fd, 0, SEEK_SET), 0);
        skv_stream *s = mode ? skv_open_mem(buf, (size_t)size, NULL) : skv_open_fd(fd, "fd");
        ck_assert_ptr_nonnull(s);
        skv_chunk c;
        ck_assert_int_eq(skv_read(s, &c), 1);
        ck_assert_str_eq(c.type, "abcd");
        ck_assert_int_eq(c.flags, SKV_CHUNK_ZLIB);
        ck_assert_mem_eq(c.data, data, sizeof data);
        ck_assert_int_eq(skv_read(s, &c), 1);
        ck_assert_uint_eq(c.raw_size, 3);
        ck_assert_int_eq(skv_read(s, &c), 0);
        ck_assert_uint_eq(skv_stream_offset(s), (uint64_t)size);
        skv_close(s);
    }
    ck_assert_int_ne(fcntl(fd, F_GETFD), -1);
    /* one byte short, and one byte extra */
    skv_stream *s = skv_open_mem(buf, (size_t)size - 1, NULL);
    skv_chunk c;
    ck_assert_int_eq(skv_read(s, &c), 1);
    ck_assert_int_eq(skv_read(s, &c), 1);
    ck_assert_int_eq(skv_read(s, &c), SKV_ETRUNC);
    ck_assert_ptr_nonnull(strstr(skv_errmsg(), "truncated"));
    skv_close(s);
    /* bad arguments */
    ck_assert_ptr_null(skv_open_fd(-1, "x"));
    ck_assert_ptr_null(skv_open_write_fd(-1, "x", -1));
    ck_assert_ptr_null(skv_open_mem(NULL, 5, "x"));
    ck_assert_ptr_null(skv_open_mem(NULL, 0, "x"));
    ck_assert_ptr_nonnull(strstr(skv_errmsg(), "empty input"));
    free(buf);
    close(fd);
}
END_TEST

/* Every allocation of a trace save through skv_open_write_fd and of a load
 * through skv_open_mem may fail: each failure returns an error. */
START_TEST(test_alloc_failure_sweep_mem)
{
    skv_trace_hdr h = {0};
    h.n_layers = 2;
    h.n_heads = 2;
    h.n_kv_heads = 1;
    h.head_dim = 8;
    h.n_tokens = 4;
    h.dtype = SKV_BF16;
    h.flags = SKV_TRACE_HAS_TOKENS;
    skv_trace *t = skv_trace_new(&h);
    ck_assert_ptr_nonnull(t);
    int failures = 0, ok = 0;
    for (long k = 1; k < 100 && !ok; k++) {
        int fd = memfd_create("sweep", 0);
        skv_fail_alloc_after(k);
        skv_stream *w = skv_open_write_fd(fd, "sweep", 6);
        int rc = w ? skv_trace_write(w, t) : SKV_ENOMEM;
        if (w && rc == 0)
            rc = skv_close(w);
        else if (w)
            skv_discard(w);
        skv_fail_alloc_after(0);
        if (rc < 0) {
            failures++;
            ck_assert_ptr_nonnull(strstr(skv_errmsg(), "out of memory"));
        } else {
            ok = 1;
            /* now the reader side, over memory */
            off_t n = lseek(fd, 0, SEEK_END);
            uint8_t *buf = malloc((size_t)n);
            ck_assert_int_eq(pread(fd, buf, (size_t)n, 0), n);
            int rok = 0;
            for (long j = 1; j < 100 && !rok; j++) {
                skv_fail_alloc_after(j);
                skv_stream *s = skv_open_mem(buf, (size_t)n, NULL);
                skv_chunk c;
                int r = s ? 1 : -1;
                while (r > 0)
                    r = skv_read(s, &c);
                skv_close(s);
                skv_fail_alloc_after(0);
                if (r == 0)
                    rok = 1;
                else
                    ck_assert_ptr_nonnull(strstr(skv_errmsg(), "out of memory"));
            }
            ck_assert(rok);
            free(buf);
        }
        close(fd);
    }
    ck_assert(ok);
    ck_assert_int_gt(failures, 0);
    skv_trace_free(t);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("robust");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_size_helpers);
    tcase_add_test(tc, test_memory_cap);
    tcase_add_test(tc, test_hostile_header);
    tcase_add_test(tc, test_declared_size_not_allocated);
    tcase_add_test(tc, test_checker);
    tcase_add_test(tc, test_grow);
    tcase_add_test(tc, test_open_fd_and_mem);
    tcase_add_test(tc, test_alloc_failure_sweep_mem);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf ? 1 : 0;
}
