/* test_gguf.c -- GGUF parser on hand-built files; ggml block types. */
#define _GNU_SOURCE
#include "smartkv.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- a tiny GGUF writer ---- */

typedef struct buf {
    uint8_t *p;
    size_t n, cap;
} buf;

static void put(buf *b, const void *d, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        ck_assert_ptr_nonnull(b->p);
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void u32(buf *b, uint32_t v) { uint8_t x[4]; skv_put32(x, v); put(b, x, 4); }
static void u64(buf *b, uint64_t v) { uint8_t x[8]; skv_put64(x, v); put(b, x, 8); }
static void str(buf *b, const char *s) { u64(b, strlen(s)); put(b, s, strlen(s)); }
static void pad(buf *b, size_t align) { while (b->n % align) put(b, "", 1); }

/* Offsets of interesting fields, for the corruption tests. */
typedef struct layout {
    size_t n_tensors_at, n_kv_at, str_len_at, arr_len_at, ndims_at, ne0_at, type_at, offset_at,
        align_val_at;
} layout;

/* header, 6 key/values, 2 tensors: "a" f32 [8, 2] and "b" q8_0 [32] */
static buf build(layout *lo)
{
    buf b = {0};
    layout l;
    put(&b, "GGUF", 4);
    u32(&b, 3);
    l.n_tensors_at = b.n;
    u64(&b, 2);
    l.n_kv_at = b.n;
    u64(&b, 6);
    str(&b, "general.architecture");
    u32(&b, SKV_GGUF_STRING);
    l.str_len_at = b.n;
    str(&b, "llama");
    str(&b, "test.count");
    u32(&b, SKV_GGUF_U32);
    u32(&b, 30);
    str(&b, "test.eps");
    u32(&b, SKV_GGUF_F32);
    uint8_t f[4];
    skv_putf32(f, 1e-5f);
    put(&b, f, 4);
    str(&b, "test.words");
    u32(&b, SKV_GGUF_ARRAY);
    u32(&b, SKV_GGUF_STRING);
    l.arr_len_at = b.n;
    u64(&b, 3);
    str(&b, "alpha");
    str(&b, "");
    str(&b, "g\xc4\xa0mma");
    str(&b, "test.small");
    u32(&b, SKV_GGUF_ARRAY);
    u32(&b, SKV_GGUF_I8);
    u64(&b, 3);
    put(&b, "\x01\xff\x7f", 3);
    str(&b, "general.alignment");
    u32(&b, SKV_GGUF_U32);
    l.align_val_at = b.n;
    u32(&b, 32);
    /* tensor infos */
    str(&b, "a");
    l.ndims_at = b.n;
    u32(&b, 2);
    l.ne0_at = b.n;
    u64(&b, 8);
    u64(&b, 2);
    l.type_at = b.n;
    u32(&b, SKV_GGML_F32);
    u64(&b, 0);
    str(&b, "b");
    u32(&b, 1);
    u64(&b, 32);
    u32(&b, SKV_GGML_Q8_0);
    l.offset_at = b.n;
    u64(&b, 64);
    pad(&b, 32);
    for (int i = 0; i < 16; i++) {
        skv_putf32(f, (float)i);
        put(&b, f, 4);
    }
    /* q8_0 block: d = 0.5 (fp16 0x3800), qs = -16..15 */
    uint8_t blk[34];
    skv_put16(blk, 0x3800);
    for (int i = 0; i < 32; i++)
        blk[2 + i] = (uint8_t)(int8_t)(i - 16);
    put(&b, blk, sizeof blk);
    if (lo)
        *lo = l;
    return b;
}

/* Open a copy in an exactly sized allocation (so ASan sees any overread). */
static skv_gguf *open_copy(const uint8_t *p, size_t n, uint8_t **keep)
{
    *keep = malloc(n ? n : 1);
    ck_assert_ptr_nonnull(*keep);
    memcpy(*keep, p, n);
    return skv_gguf_open_mem(*keep, n, "test.gguf");
}

START_TEST(test_valid)
{
    buf b = build(NULL);
    uint8_t *keep;
    skv_gguf *g = open_copy(b.p, b.n, &keep);
    ck_assert_msg(g != NULL, "%s", skv_errmsg());
    ck_assert_uint_eq(g->version, 3);
    ck_assert_uint_eq(g->n_kv, 6);
    ck_assert_uint_eq(g->n_tensors, 2);
    uint32_t v;
    ck_assert_int_eq(skv_gguf_get_u32(g, "test.count", &v), 0);
    ck_assert_uint_eq(v, 30);
    float e;
    ck_assert_int_eq(skv_gguf_get_f32(g, "test.eps", &e), 0);
    ck_assert(fabsf(e - 1e-5f) < 1e-12f);
    char s[16];
    ck_assert_int_eq(skv_gguf_get_strbuf(g, "general.architecture", s, sizeof s), 0);
    ck_assert_str_eq(s, "llama");
    ck_assert_int_lt(skv_gguf_get_u32(g, "general.architecture", &v), 0);   /* wrong type */
    ck_assert_int_lt(skv_gguf_get_u32(g, "no.such.key", &v), 0);
    const skv_gguf_kv *kv = skv_gguf_find(g, "test.words");
    ck_assert_ptr_nonnull(kv);
    const char *ptrs[3];
    uint32_t lens[3];
    ck_assert_int_eq(skv_gguf_array_strings(kv, ptrs, lens), 0);
    ck_assert_uint_eq(lens[0], 5);
    ck_assert(!memcmp(ptrs[0], "alpha", 5));
    ck_assert_uint_eq(lens[1], 0);
    ck_assert_uint_eq(lens[2], 6);
    int64_t iv;
    kv = skv_gguf_find(g, "test.small");
    ck_assert_int_eq(skv_gguf_array_int(kv, 1, &iv), 0);
    ck_assert_int_eq(iv, -1);
    ck_assert_int_lt(skv_gguf_array_int(kv, 3, &iv), 0);
    const skv_gguf_tensor *a = skv_gguf_tensor_find(g, "a"), *t = skv_gguf_tensor_find(g, "b");
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(t);
    ck_assert_uint_eq(a->nelem, 16);
    ck_assert_uint_eq(a->nbytes, 64);
    ck_assert_uint_eq(t->nbytes, 34);
    float x[32];
    skv_ggml_dequant(a->type, a->data, x, 16);
    ck_assert(x[0] == 0 && x[15] == 15);
    skv_ggml_dequant(t->type, t->data, x, 32);
    ck_assert(x[0] == -8.0f && x[16] == 0.0f && x[31] == 7.5f);
    skv_gguf_close(g);
    free(keep);
    free(b.p);
}
END_TEST

START_TEST(test_truncated_every_byte)
{
    buf b = build(NULL);
    for (size_t n = 0; n < b.n; n++) {
        uint8_t *keep;
        skv_gguf *g = open_copy(b.p, n, &keep);
        ck_assert_msg(g == NULL, "a file cut at %zu of %zu bytes was accepted", n, b.n);
        ck_assert(skv_errmsg()[0] != 0);
        free(keep);
    }
    free(b.p);
}
END_TEST

static void expect_bad(buf *b, size_t at, const void *val, size_t n, const char *what)
{
    uint8_t *c = malloc(b->n);
    memcpy(c, b->p, b->n);
    memcpy(c + at, val, n);
    uint8_t *keep;
    skv_gguf *g = open_copy(c, b->n, &keep);
    ck_assert_msg(g == NULL, "%s was accepted", what);
    ck_assert_msg(skv_errmsg()[0], "%s: no message", what);
    free(keep);
    free(c);
}

START_TEST(test_bad_fields)
{
    layout l;
    buf b = build(&l);
    uint8_t x[8];
    expect_bad(&b, 0, "GGUX", 4, "bad magic");
    skv_put32(x, 1);
    expect_bad(&b, 4, x, 4, "version 1");
    skv_put32(x, 4);
    expect_bad(&b, 4, x, 4, "version 4");
    skv_put64(x, UINT64_MAX);
    expect_bad(&b, l.n_kv_at, x, 8, "huge kv count");
    expect_bad(&b, l.n_tensors_at, x, 8, "huge tensor count");
    expect_bad(&b, l.str_len_at, x, 8, "huge string length");
    expect_bad(&b, l.arr_len_at, x, 8, "huge array count");
    skv_put64(x, 1u << 20);
    expect_bad(&b, l.arr_len_at, x, 8, "large array count");
    skv_put32(x, 5);
    expect_bad(&b, l.ndims_at, x, 4, "5 dimensions");
    skv_put32(x, 0);
    expect_bad(&b, l.ndims_at, x, 4, "0 dimensions");
    skv_put64(x, 0);
    expect_bad(&b, l.ne0_at, x, 8, "zero extent");
    skv_put64(x, (uint64_t)1 << 62);
    expect_bad(&b, l.ne0_at, x, 8, "huge extent");
    skv_put32(x, 99);
    expect_bad(&b, l.type_at, x, 4, "unknown tensor type");
    skv_put32(x, SKV_GGML_Q4_0);   /* 8 elements is not a whole q4_0 block */
    expect_bad(&b, l.type_at, x, 4, "partial block");
    skv_put64(x, 65);
    expect_bad(&b, l.offset_at, x, 8, "misaligned offset");
    skv_put64(x, 96);
    expect_bad(&b, l.offset_at, x, 8, "offset beyond the file");
    skv_put64(x, UINT64_MAX - 31);
    expect_bad(&b, l.offset_at, x, 8, "offset overflowing");
    skv_put32(x, 48);
    expect_bad(&b, l.align_val_at, x, 4, "alignment not a power of two");
    skv_put32(x, 0);
    expect_bad(&b, l.align_val_at, x, 4, "zero alignment");
    /* duplicate key: rename test.count to test.eps (same length) */
    uint8_t *p = memmem(b.p, b.n, "test.count", 10);
    ck_assert_ptr_nonnull(p);
    expect_bad(&b, (size_t)(p - b.p), "test.eps\0\0", 10, "NUL in key");
    uint8_t *q = memmem(b.p, b.n, "test.small", 10);
    expect_bad(&b, (size_t)(q - b.p), "test.words", 10, "duplicate key");
    free(b.p);
}
END_TEST

START_TEST(test_random_corruption)
{
    buf b = build(NULL);
    srand(7);
    int accepted = 0;
    for (int it = 0; it < 3000; it++) {
        uint8_t *c = malloc(b.n);
        memcpy(c, b.p, b.n);
        int flips = 1 + rand() % 4;
        for (int k = 0; k < flips; k++)
            c[rand() % b.n] ^= (uint8_t)(1 + rand() % 255);
        uint8_t *keep;
        skv_gguf *g = open_copy(c, b.n, &keep);
        if (g) {
            accepted++;
            /* whatever was accepted must be internally consistent */
            for (uint64_t i = 0; i < g->n_tensors; i++) {
                const skv_gguf_tensor *t = &g->tensors[i];
                ck_assert((const uint8_t *)t->data + t->nbytes <= keep + b.n);
            }
            skv_gguf_close(g);
        }
        free(keep);
        free(c);
    }
    ck_assert_int_lt(accepted, 3000);   /* most corruptions are caught */
    free(b.p);
}
END_TEST

START_TEST(test_open_file)
{
    char path[] = "/tmp/skv-gguf-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    buf b = build(NULL);
    ck_assert_int_eq(write(fd, b.p, b.n), (ssize_t)b.n);
    close(fd);
    skv_gguf *g = skv_gguf_open(path);
    ck_assert_msg(g != NULL, "%s", skv_errmsg());
    ck_assert_uint_eq(g->n_tensors, 2);
    skv_gguf_close(g);
    ck_assert_int_eq(truncate(path, (off_t)b.n - 1), 0);
    ck_assert_ptr_null(skv_gguf_open(path));
    ck_assert_ptr_nonnull(strstr(skv_errmsg(), path));
    unlink(path);
    ck_assert_ptr_null(skv_gguf_open(path));
    ck_assert_ptr_null(skv_gguf_open("/"));
    free(b.p);
}
END_TEST

/* ---- block types ---- */

static uint16_t rand_half(float lo, float hi)
{
    return skv_f32_to_f16(lo + (hi - lo) * (float)rand() / (float)RAND_MAX);
}

/* Random but well-formed blocks: scale fields hold finite halves. */
static void fill_blocks(uint32_t type, uint8_t *p, size_t nblocks)
{
    uint32_t bb = skv_ggml_block_bytes(type);
    for (size_t i = 0; i < nblocks * bb; i++)
        p[i] = (uint8_t)rand();
    for (size_t k = 0; k < nblocks; k++) {
        uint8_t *b = p + k * bb;
        switch (type) {
        case SKV_GGML_F16:
            skv_put16(b, rand_half(-2, 2));
            break;
        case SKV_GGML_BF16:
            skv_put16(b, skv_f32_to_bf16((float)rand() / RAND_MAX - 0.5f));
            break;
        case SKV_GGML_F32:
            skv_putf32(b, (float)rand() / RAND_MAX - 0.5f);
            break;
        case SKV_GGML_Q4_0: case SKV_GGML_Q5_0: case SKV_GGML_Q8_0:
            skv_put16(b, rand_half(-0.1f, 0.1f));
            break;
        case SKV_GGML_Q4_1: case SKV_GGML_Q5_1: case SKV_GGML_Q4_K: case SKV_GGML_Q5_K:
            skv_put16(b, rand_half(0, 0.1f));
            skv_put16(b + 2, rand_half(-0.5f, 0.5f));
            break;
        case SKV_GGML_Q6_K:
            skv_put16(b + 208, rand_half(-0.01f, 0.01f));
            break;
        }
    }
}

static const uint32_t all_types[] = {SKV_GGML_F32, SKV_GGML_F16, SKV_GGML_BF16, SKV_GGML_Q4_0,
                                     SKV_GGML_Q4_1, SKV_GGML_Q5_0, SKV_GGML_Q5_1, SKV_GGML_Q8_0,
                                     SKV_GGML_Q4_K, SKV_GGML_Q5_K, SKV_GGML_Q6_K};

START_TEST(test_simd_matches_scalar)
{
    uint32_t type = all_types[_i];
    srand(100 + (unsigned)_i);
    const size_t n = 1536;
    uint64_t rb;
    ck_assert_int_eq(skv_ggml_row_bytes(type, n, &rb), 0);
    uint8_t *w = malloc(rb);
    float *x = malloc(n * 4), *ref = malloc(n * 4), *simd = malloc(n * 4);
    for (int rep = 0; rep < 20; rep++) {
        fill_blocks(type, w, n / skv_ggml_block_elems(type));
        for (size_t i = 0; i < n; i++)
            x[i] = (float)rand() / RAND_MAX * 2 - 1;
        skv_ggml_dequant_ref(type, w, ref, n);
        int on = skv_simd_enable(1);
        skv_ggml_dequant(type, w, simd, n);
        float d_simd = skv_ggml_dot(type, w, x, n);
        skv_simd_enable(0);
        ck_assert_int_eq(skv_simd_active(), 0);
        float d_ref = skv_ggml_dot(type, w, x, n);
        ck_assert(d_ref == skv_ggml_dot_ref(type, w, x, n));
        double mag = 0;
        for (size_t i = 0; i < n; i++) {
            ck_assert_msg(isfinite(ref[i]), "%s element %zu not finite", skv_ggml_type_name(type), i);
            ck_assert_msg(fabsf(ref[i] - simd[i]) <= 1e-6f * (1 + fabsf(ref[i])),
                          "%s element %zu: scalar %g simd %g", skv_ggml_type_name(type), i,
                          ref[i], simd[i]);
            mag += fabs(ref[i] * x[i]);
        }
        ck_assert_msg(fabs(d_ref - d_simd) <= 1e-4 * mag + 1e-6, "%s dot: scalar %g simd %g (mag %g)",
                      skv_ggml_type_name(type), d_ref, d_simd, mag);
        skv_simd_enable(1);
        (void)on;
    }
    free(w);
    free(x);
    free(ref);
    free(simd);
}
END_TEST

/* Hand-decoded blocks: values worked out from the layouts, not from a run. */
START_TEST(test_known_blocks)
{
    float y[256];
    uint8_t q40[18] = {0};
    skv_put16(q40, 0x3C00);            /* d = 1 */
    q40[2] = 0x1F;                     /* element 0: 15-8 = 7, element 16: 1-8 = -7 */
    skv_ggml_dequant_ref(SKV_GGML_Q4_0, q40, y, 32);
    ck_assert(y[0] == 7 && y[16] == -7 && y[1] == -8);
    uint8_t q41[20] = {0};
    skv_put16(q41, 0x4000);            /* d = 2 */
    skv_put16(q41 + 2, 0xBC00);        /* m = -1 */
    q41[4 + 15] = 0x3A;                /* element 15: 10*2-1 = 19, element 31: 3*2-1 = 5 */
    skv_ggml_dequant_ref(SKV_GGML_Q4_1, q41, y, 32);
    ck_assert(y[15] == 19 && y[31] == 5 && y[0] == -1);
    uint8_t q6[210] = {0};
    skv_put16(q6 + 208, 0x3C00);       /* d = 1 */
    for (int i = 0; i < 16; i++)
        q6[192 + i] = 1;               /* scales 1 */
    q6[0] = 0x25;                      /* ql[0]: element 0 low 5, element 64 high 2 */
    q6[128] = 0x0E;                    /* qh[0]: element 0 bits 2 (+32), element 32 bits 3 (+48) */
    skv_ggml_dequant_ref(SKV_GGML_Q6_K, q6, y, 256);
    ck_assert(y[0] == 5 + 32 - 32);    /* (5 | 2<<4) - 32 = 5 */
    ck_assert(y[32] == 48 - 32);       /* (0 | 3<<4) - 32 = 16 */
    ck_assert(y[64] == 2 - 32);
    ck_assert(y[1] == -32);
    skv_simd_enable(1);
    float z[256];
    skv_ggml_dequant(SKV_GGML_Q6_K, q6, z, 256);
    ck_assert(!memcmp(y, z, sizeof z));
    uint64_t rb;
    ck_assert_int_lt(skv_ggml_row_bytes(SKV_GGML_Q4_0, 31, &rb), 0);
    ck_assert_int_lt(skv_ggml_row_bytes(77, 32, &rb), 0);
    ck_assert_int_eq(skv_ggml_row_bytes(SKV_GGML_Q6_K, 512, &rb), 0);
    ck_assert_uint_eq(rb, 420);
}
END_TEST

START_TEST(test_vec_kernels)
{
    float a[67], b[67], y1[67], y2[67];
    for (int i = 0; i < 67; i++) {
        a[i] = (float)(i % 7) - 3;
        b[i] = (float)(i % 5) * 0.5f;
        y1[i] = y2[i] = (float)i;
    }
    double ref = 0;
    for (int i = 0; i < 67; i++)
        ref += (double)a[i] * b[i];
    skv_simd_enable(1);
    ck_assert(fabs(skv_vec_dot(a, b, 67) - ref) < 1e-4);
    skv_vec_axpy(y1, 0.25f, a, 67);
    skv_simd_enable(0);
    ck_assert(fabs(skv_vec_dot(a, b, 67) - ref) < 1e-4);
    skv_vec_axpy(y2, 0.25f, a, 67);
    skv_simd_enable(1);
    for (int i = 0; i < 67; i++)
        ck_assert(fabsf(y1[i] - y2[i]) < 1e-6f && y1[i] == (float)i + 0.25f * a[i]);
}
END_TEST


/* Integer dot products: quantization is the same bit for bit in every path,
 * each SIMD level (AVX2, AVX-VNNI) matches the scalar reference for 1..4
 * rows, and the result is close to the float dot product it replaces. */
static const uint32_t q8_types[] = {SKV_GGML_Q4_0, SKV_GGML_Q4_1, SKV_GGML_Q8_0};

START_TEST(test_q8_matches_scalar)
{
    uint32_t type = q8_types[_i];
    srand(300 + (unsigned)_i);
    const size_t n = 1536, nb = n / SKV_Q8_BLOCK;
    uint64_t rb;
    ck_assert_int_eq(skv_ggml_row_bytes(type, n, &rb), 0);
    ck_assert(skv_ggml_q8_supported(type));
    uint8_t *w = malloc(rb);
    float *x = malloc(4 * n * 4);
    skv_q8_block *qr = malloc(4 * nb * sizeof *qr), *qs = malloc(4 * nb * sizeof *qs);
    for (int rep = 0; rep < 20; rep++) {
        fill_blocks(type, w, n / skv_ggml_block_elems(type));
        for (size_t i = 0; i < 4 * n; i++)
            x[i] = ((float)rand() / RAND_MAX * 2 - 1) * (rep % 3 ? 1.0f : 40.0f);
        for (size_t i = 0; i < n; i += 97)
            x[i] = 0;   /* zeros, and one all-zero block (scale 0) */
        memset(x + n, 0, SKV_Q8_BLOCK * sizeof(float));
        skv_q8_quantize_ref(x, qr, 4 * n);
        /* the float reference with the dequantized activations */
        double exact[4] = {0}, mag[4] = {0};
        static float wf[1536];
        skv_ggml_dequant_ref(type, w, wf, n);
        for (uint32_t t = 0; t < 4; t++)
            for (size_t i = 0; i < n; i++) {
                const skv_q8_block *b = qr + t * nb + i / SKV_Q8_BLOCK;
                double xv = (double)b->d * b->qs[i % SKV_Q8_BLOCK];
                exact[t] += (double)wf[i] * xv;
                mag[t] += fabs((double)wf[i] * xv);
                ck_assert(fabs(xv - x[t * n + i]) <= 0.5001 * b->d);
            }
        for (int level = SKV_SIMD_SCALAR; level <= SKV_SIMD_VNNI; level++) {
            int got = skv_simd_set_level(level);
            skv_q8_quantize(x, qs, 4 * n);
            ck_assert_msg(!memcmp(qr, qs, 4 * nb * sizeof *qr), "level %d: quantization differs", got);
            float ref[4], o[4];
            for (uint32_t nt = 1; nt <= 4; nt++) {
                skv_ggml_dot_q8_ref(type, w, qr, nb, n, nt, ref);
                skv_ggml_dot_q8(type, w, qs, nb, n, nt, o);
                for (uint32_t t = 0; t < nt; t++) {
                    ck_assert_msg(fabs(ref[t] - exact[t]) <= 1e-5 * mag[t] + 1e-6,
                                  "%s row %u: reference %g exact %g", skv_ggml_type_name(type), t,
                                  ref[t], exact[t]);
                    ck_assert_msg(fabs(o[t] - ref[t]) <= 1e-5 * mag[t] + 1e-6,
                                  "%s level %d nt %u row %u: %g vs reference %g",
                                  skv_ggml_type_name(type), got, nt, t, o[t], ref[t]);
                }
            }
        }
        skv_simd_enable(1);
    }
    ck_assert(!skv_ggml_q8_supported(SKV_GGML_Q6_K) && !skv_ggml_q8_supported(SKV_GGML_F16));
    free(w);
    free(x);
    free(qr);
    free(qs);
}
END_TEST

/* Hand-worked values: a q8 block of 1..32 against known weight blocks. */
START_TEST(test_q8_known)
{
    float x[32];
    for (int i = 0; i < 32; i++)
        x[i] = (float)(i + 1) * (127.0f / 32.0f);   /* max 127: scale 1, q = round(i+1 * 127/32) */
    skv_q8_block q;
    skv_q8_quantize_ref(x, &q, 32);
    ck_assert(q.d == 1.0f && q.qs[31] == 127 && q.qs[0] == 4);   /* 3.97 -> 4 */
    int sum = 0;
    for (int i = 0; i < 32; i++)
        sum += q.qs[i];
    ck_assert(q.sum == sum);
    uint8_t q41[20] = {0};
    skv_put16(q41, 0x4000);            /* d = 2 */
    skv_put16(q41 + 2, 0xBC00);        /* m = -1 */
    q41[4] = 0x31;                     /* element 0: 1, element 16: 3 */
    float o[4] = {0};
    /* 2*(1*q0 + 3*q16) - sum */
    float want = 2.0f * (q.qs[0] + 3.0f * q.qs[16]) - (float)sum;
    for (int level = SKV_SIMD_SCALAR; level <= SKV_SIMD_VNNI; level++) {
        skv_simd_set_level(level);
        skv_ggml_dot_q8(SKV_GGML_Q4_1, q41, &q, 1, 32, 1, o);
        ck_assert_msg(o[0] == want, "level %d: %g, want %g", level, o[0], want);
    }
    skv_simd_enable(1);
}
END_TEST


/* Rows packed by 8: the reference on the packed layout equals the row-wise
 * reference on the ggml rows, and every SIMD level matches it. */
START_TEST(test_q8x8_matches_rows)
{
    uint32_t type = q8_types[_i];
    srand(500 + (unsigned)_i);
    const size_t n = 576, nb = n / SKV_Q8_BLOCK, rows = 16;
    uint64_t rb;
    ck_assert_int_eq(skv_ggml_row_bytes(type, n, &rb), 0);
    uint64_t pb = skv_q8x8_bytes(type, n, rows);
    ck_assert_uint_eq(pb, rb * rows);   /* the same size as the ggml rows */
    ck_assert_uint_eq(skv_q8x8_bytes(type, n, 12), 0);
    ck_assert_uint_eq(skv_q8x8_bytes(type, 48, 8), 0);
    ck_assert_uint_eq(skv_q8x8_bytes(SKV_GGML_Q6_K, 512, 8), 0);
    uint8_t *w = malloc(rb * rows), *pk = malloc(pb);
    float x[4 * 576];
    skv_q8_block q[4 * 18];
    for (int rep = 0; rep < 10; rep++) {
        fill_blocks(type, w, rows * n / skv_ggml_block_elems(type));
        for (size_t i = 0; i < 4 * n; i++)
            x[i] = ((float)rand() / RAND_MAX * 2 - 1) * (rep % 2 ? 1.0f : 30.0f);
        skv_q8_quantize_ref(x, q, 4 * n);
        skv_q8x8_pack(type, w, (size_t)rb, n, rows, pk);
        for (uint32_t nt = 1; nt <= 4; nt++) {
            float want[4][16], ref[4][16], got[4][16];
            for (size_t r = 0; r < rows; r++) {
                float o[4];
                skv_ggml_dot_q8_ref(type, w + r * rb, q, nb, n, nt, o);
                for (uint32_t t = 0; t < nt; t++)
                    want[t][r] = o[t];
            }
            for (size_t g = 0; g < rows / 8; g++)
                skv_q8x8_dot_ref(type, pk + g * (pb / 2), q, nb, n, nt, &ref[0][8 * g], 16);
            for (int level = SKV_SIMD_SCALAR; level <= SKV_SIMD_VNNI; level++) {
                int lv = skv_simd_set_level(level);
                for (size_t g = 0; g < rows / 8; g++)
                    skv_q8x8_dot(type, pk + g * (pb / 2), q, nb, n, nt, &got[0][8 * g], 16);
                for (uint32_t t = 0; t < nt; t++)
                    for (size_t r = 0; r < rows; r++) {
                        double mag = 1e-5 * (fabs(want[t][r]) + 30 * n * 0.1) + 1e-6;
                        ck_assert_msg(fabs(ref[t][r] - want[t][r]) <= mag, "%s row %zu: packed ref "
                                      "%g, rows %g", skv_ggml_type_name(type), r, ref[t][r],
                                      want[t][r]);
                        ck_assert_msg(fabs(got[t][r] - ref[t][r]) <= mag, "%s level %d nt %u t %u "
                                      "row %zu: %g, ref %g", skv_ggml_type_name(type), lv, nt, t, r,
                                      got[t][r], ref[t][r]);
                    }
            }
            skv_simd_enable(1);
        }
    }
    free(w);
    free(pk);
}
END_TEST

int main(void)
{
    Suite *su = suite_create("gguf");
    TCase *tc = tcase_create("parser");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_valid);
    tcase_add_test(tc, test_truncated_every_byte);
    tcase_add_test(tc, test_bad_fields);
    tcase_add_test(tc, test_random_corruption);
    tcase_add_test(tc, test_open_file);
    suite_add_tcase(su, tc);
    TCase *tq = tcase_create("quant");
    tcase_set_timeout(tq, 60);
    tcase_add_loop_test(tq, test_simd_matches_scalar, 0, (int)(sizeof all_types / sizeof all_types[0]));
    tcase_add_test(tq, test_known_blocks);
    tcase_add_test(tq, test_vec_kernels);
    tcase_add_loop_test(tq, test_q8_matches_scalar, 0, (int)(sizeof q8_types / sizeof q8_types[0]));
    tcase_add_test(tq, test_q8_known);
    tcase_add_loop_test(tq, test_q8x8_matches_rows, 0, (int)(sizeof q8_types / sizeof q8_types[0]));
    suite_add_tcase(su, tq);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf != 0;
}
