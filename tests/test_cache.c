/* test_cache.c -- PBKT payloads, the byte model against the bytes really
 * written, the packed-cache writer and validating reader. */
#include "smartkv.h"

#include <check.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Check's ck_assert reports every passing assertion through a pipe (a
 * system call each); these only call into Check on failure. */
#define expect(c) do { if (!(c)) ck_abort_msg("assertion failed: %s", #c); } while (0)
#define expect_msg(c, ...) do { if (!(c)) ck_abort_msg(__VA_ARGS__); } while (0)

static uint64_t rng = 0x243f6a8885a308d3ull;
static uint32_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 32);
}
static float frand(void) { return (float)(rnd() >> 8) / 16777216.0f * 2.0f - 1.0f; }

static char tmpdir[256];
static char *tmpfile_name(const char *name)
{
    static char buf[4][512];
    static int k;
    char *b = buf[k++ & 3];
    snprintf(b, 512, "%s/%s", tmpdir, name);
    return b;
}

static skv_trace *make_trace(uint32_t L, uint32_t H, uint32_t KV, uint64_t T, uint32_t d,
                             uint32_t dtype, int tokens)
{
    skv_trace_hdr h;
    memset(&h, 0, sizeof h);
    h.n_layers = L;
    h.n_heads = H;
    h.n_kv_heads = KV;
    h.head_dim = d;
    h.n_tokens = T;
    h.n_prefill = T / 2;
    h.dtype = dtype;
    h.flags = tokens ? SKV_TRACE_HAS_TOKENS : 0;
    snprintf(h.model, sizeof h.model, "test-model");
    skv_trace *t = skv_trace_new(&h);
    ck_assert_ptr_nonnull(t);
    size_t nq = (size_t)H * T * d, nkv = (size_t)KV * T * d;
    for (uint32_t l = 0; l < L; l++) {
        for (size_t i = 0; i < nq; i++)
            t->q[l][i] = frand();
        for (size_t i = 0; i < nkv; i++) {
            t->k[l][i] = frand() * ((i % 17) == 0 ? 8.0f : 1.0f);
            t->v[l][i] = frand() * 0.5f;
        }
        if (dtype != SKV_F32) {  /* values the on-disk type can hold */
            for (size_t i = 0; i < nq; i++)
                t->q[l][i] = skv_f16_to_f32(skv_f32_to_f16(t->q[l][i]));
            for (size_t i = 0; i < nkv; i++) {
                t->k[l][i] = skv_f16_to_f32(skv_f32_to_f16(t->k[l][i]));
                t->v[l][i] = skv_f16_to_f32(skv_f32_to_f16(t->v[l][i]));
            }
        }
    }
    if (tokens)
        for (uint64_t i = 0; i < T; i++)
            t->tokens[i] = (int32_t)(i * 7 + 1);
    return t;
}

static skv_qcfg qcfg(uint32_t d, uint32_t kg, uint32_t vg, uint32_t km, uint32_t vm)
{
    skv_qcfg c = {.head_dim = d, .k_group = kg, .v_group = vg, .k_mode = km, .v_mode = vm, .k_tokens = 0};
    return c;
}

/* A random allocation: widths from `allowed` (0-terminated list). */
static void random_plan(skv_cache_plan *p, const skv_trace *t, const skv_qcfg *q,
                        const uint8_t *allowed, int nallowed)
{
    ck_assert_int_eq(skv_cache_plan_uniform(p, &t->hdr, q, 4), 0);
    size_t n = (size_t)t->hdr.n_layers * t->hdr.n_kv_heads * t->hdr.n_tokens;
    for (size_t i = 0; i < n; i++)
        p->bits[i] = allowed[rnd() % (uint32_t)nallowed];
}

static skv_cache_stats write_cache(const char *path, const skv_trace *t, const skv_cache_plan *p,
                                   const skv_chunk_list *pass, unsigned flags, int level)
{
    skv_cache_stats st;
    skv_stream *s = skv_open_write(path, level);
    ck_assert_ptr_nonnull(s);
    int rc = skv_cache_write(s, t, p, pass, flags, &st);
    expect_msg(rc == 0, "write: %s", skv_errmsg());
    ck_assert_int_eq(skv_close(s), 0);
    return st;
}

/* File bytes of the PKHD and PBKT chunks, measured by reading the stream. */
static uint64_t measured_cache_bytes(const char *path, uint64_t *npbkt)
{
    skv_stream *s = skv_open_read(path);
    ck_assert_ptr_nonnull(s);
    skv_chunk c;
    uint64_t bytes = 0;
    *npbkt = 0;
    int rc;
    while ((rc = skv_read(s, &c)) > 0) {
        if (skv_chunk_is(&c, SKV_T_PKHD) || skv_chunk_is(&c, SKV_T_PBKT)) {
            bytes += SKV_CHUNK_HEADER_LEN + c.size + SKV_CHUNK_CRC_LEN;
            if (skv_chunk_is(&c, SKV_T_PBKT)) {
                (*npbkt)++;
                /* each payload is exactly the layout's size for its header */
                skv_qcfg q = qcfg(skv_get32(c.data + 16), skv_get32(c.data + 20),
                                  skv_get32(c.data + 24), skv_get32(c.data + 28),
                                  skv_get32(c.data + 32));
                ck_assert_uint_eq(c.raw_size, skv_pbkt_payload_bytes(&q, skv_get32(c.data + 8),
                                                                     skv_get32(c.data + 12)));
            }
        }
    }
    ck_assert_int_eq(rc, 0);
    skv_close(s);
    return bytes;
}

/* The byte model computed here from the widths alone. */
static uint64_t model_bytes(const skv_cache_plan *p)
{
    uint64_t total = skv_pkhd_file_bytes();
    for (size_t hi = 0; hi < (size_t)p->n_layers * p->n_kv_heads; hi++) {
        uint64_t cnt[17] = {0};
        for (uint64_t t = 0; t < p->n_tokens; t++)
            cnt[p->bits[hi * p->n_tokens + t]]++;
        const uint32_t ws[5] = {2, 3, 4, 8, 16};
        for (int w = 0; w < 5; w++)
            total += skv_bucket_file_bytes(&p->q, ws[w], cnt[ws[w]]);
    }
    return total;
}

/* ---- allocation chunks as skv-alloc writes them (the agreed layout) ---- */

/* bit b set: width b allowed */
#define MASK_ALL ((1u << 0) | (1u << 2) | (1u << 3) | (1u << 4) | (1u << 8) | (1u << 16))

static void add_raw(skv_chunk_list *l, const char *type, const uint8_t *data, uint64_t n)
{
    skv_chunk c;
    memset(&c, 0, sizeof c);
    memcpy(c.type, type, 5);
    c.raw_size = c.size = n;
    c.data = data;
    ck_assert_int_eq(skv_chunk_list_add(l, &c), 0);
}

static void add_alloc_chunks(skv_chunk_list *l, const skv_cache_plan *p, uint64_t predicted,
                             uint32_t mask, const char *text)
{
    size_t L = strlen(text);
    uint8_t *h = calloc(1, 66 + L);
    union { double d; uint64_t u; } beta = {0.25};
    skv_put64(h, beta.u);
    skv_put32(h + 8, p->n_layers);
    skv_put32(h + 12, p->n_kv_heads);
    skv_put64(h + 16, p->n_tokens);
    skv_put32(h + 24, mask);
    skv_put32(h + 28, 0);
    skv_put32(h + 32, p->q.head_dim);
    skv_put32(h + 36, p->q.k_group);
    skv_put32(h + 40, p->q.v_group);
    skv_put32(h + 44, p->q.k_mode);
    skv_put32(h + 48, p->q.v_mode);
    skv_put64(h + 56, predicted);
    skv_put16(h + 64, (uint16_t)L);
    memcpy(h + 66, text, L);
    add_raw(l, SKV_T_ALHD, h, 66 + L);
    free(h);
    uint64_t T = p->n_tokens, pad = (T + 3) & ~3ull;
    for (uint32_t layer = 0; layer < p->n_layers; layer++)
        for (uint32_t kh = 0; kh < p->n_kv_heads; kh++) {
            uint8_t *a = calloc(1, 16 + pad + 4 * T);
            skv_put32(a, layer);
            skv_put32(a + 4, kh);
            skv_put64(a + 8, T);
            memcpy(a + 16, p->bits + ((size_t)layer * p->n_kv_heads + kh) * T, T);
            for (uint64_t i = 0; i < T; i++)
                skv_putf32(a + 16 + pad + 4 * i, (float)i / (float)T);
            add_raw(l, SKV_T_ALOC, a, 16 + pad + 4 * T);
            free(a);
        }
}

/* ---- tests ---- */

START_TEST(test_payload_sizes)
{
    const skv_qcfg cfgs[] = {qcfg(128, 32, 128, SKV_QMODE_ASYM, SKV_QMODE_SYM),
                             qcfg(100, 100, 25, SKV_QMODE_SYM, SKV_QMODE_ASYM),
                             qcfg(7, 7, 1, SKV_QMODE_ASYM, SKV_QMODE_ASYM),
                             qcfg(64, 64, 64, SKV_QMODE_ASYM, SKV_QMODE_ASYM)};
    const uint32_t ws[5] = {2, 3, 4, 8, 16};
    const uint32_t ns[] = {1, 2, 3, 17, 100};
    for (size_t ci = 0; ci < sizeof cfgs / sizeof cfgs[0]; ci++) {
        const skv_qcfg *c = &cfgs[ci];
        uint32_t d = c->head_dim, T = 150;
        float *k = malloc(sizeof(float) * T * d), *v = malloc(sizeof(float) * T * d);
        float *y = malloc(sizeof(float) * d);
        for (size_t i = 0; i < (size_t)T * d; i++) {
            k[i] = frand() * 3;
            v[i] = frand();
        }
        for (int w = 0; w < 5; w++)
            for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
                uint32_t n = ns[ni], idx[100];
                for (uint32_t i = 0; i < n; i++)
                    idx[i] = i + i / 2 + (n < 50 ? 5 : 0);
                uint64_t size = skv_pbkt_payload_bytes(c, ws[w], n);
                void *mem = aligned_alloc(64, (size + 63) & ~63ull);
                uint8_t *buf = mem;
                ck_assert_int_eq(skv_pbkt_encode(buf, size - 1, c, 3, 1, ws[w], 0, idx, n, k, v),
                                 SKV_EINVAL);
                ck_assert_int_eq(skv_pbkt_encode(buf, size, c, 3, 1, ws[w], 0, idx, n, k, v), 0);
                skv_bucket b;
                expect_msg(skv_pbkt_decode(buf, size, T, &b) == 0, "%s", skv_errmsg());
                expect((b.payload_bytes) == (size));
                expect(b.layer == 3 && b.kv_head == 1 && b.bits == ws[w] && b.n == n);
                expect(((uintptr_t)b.idx % 64) == (0));
                expect(((uintptr_t)b.k_par % 64) == (0));
                expect(((uintptr_t)b.k_dat % 64) == (0));
                expect(((uintptr_t)b.v_par % 64) == (0));
                expect(((uintptr_t)b.v_dat % 64) == (0));
                expect(b.row_stride == skv_row_bytes(ws[w], d));
                /* sections in order, the last one ending at the payload's end */
                expect(b.idx == (const uint32_t *)(buf + 64));
                expect(b.v_dat + ((n * b.row_stride + 63) & ~63ull) == buf + size);
                for (uint32_t i = 0; i < n; i++) {
                    expect((b.idx[i]) == (idx[i]));
                    uint8_t par[8192], dat[4096];
                    ck_assert_int_eq(skv_quantize_row_ref(k + (size_t)idx[i] * d, d, ws[w],
                                                          c->k_group, c->k_mode, par, dat), 0);
                    expect(memcmp(dat, b.k_dat + i * b.row_stride, b.row_stride) == 0);
                    expect(memcmp(par, b.k_par + i * b.k_par_stride, b.k_par_stride) == 0);
                    skv_dequantize_row(b.v_par + i * b.v_par_stride, b.v_dat + i * b.row_stride,
                                       d, ws[w], c->v_group, c->v_mode, y);
                    for (uint32_t j = 0; j < d; j++)
                        expect(fabsf(y[j] - v[(size_t)idx[i] * d + j]) < 0.51f);
                }
                /* a token index beyond the trace */
                ck_assert_int_eq(skv_pbkt_decode(buf, size, idx[n - 1], &b), SKV_EFORMAT);
                free(mem);
            }
        free(k);
        free(v);
        free(y);
    }
}
END_TEST

START_TEST(test_byte_model_exact)
{
    const uint8_t sets[3][6] = {{0, 2, 3, 4, 8, 16}, {2, 4, 8}, {16}};
    const int nsets[3] = {6, 3, 1};
    const skv_qcfg cfgs[] = {qcfg(64, 32, 64, SKV_QMODE_ASYM, SKV_QMODE_SYM),
                             qcfg(24, 8, 24, SKV_QMODE_SYM, SKV_QMODE_ASYM),
                             qcfg(5, 5, 5, SKV_QMODE_ASYM, SKV_QMODE_ASYM)};
    for (size_t ci = 0; ci < 3; ci++)
        for (int si = 0; si < 3; si++) {
            skv_trace *t = make_trace(3, 4, 2, 37 + ci * 20, cfgs[ci].head_dim, SKV_F32, 0);
            skv_cache_plan p;
            random_plan(&p, t, &cfgs[ci], sets[si], nsets[si]);
            uint64_t want = model_bytes(&p), planned;
            ck_assert_int_eq(skv_cache_plan_bytes(&p, &planned), 0);
            expect((planned) == (want));
            const char *path = tmpfile_name("model.skv");
            skv_cache_stats st = write_cache(path, t, &p, NULL, 0, -1);
            uint64_t npbkt, got = measured_cache_bytes(path, &npbkt);
            expect((got) == (want));
            expect((st.model_bytes) == (want));
            expect((st.cache_bytes) == (want));
            expect((st.n_pbkt) == (npbkt));
            expect((st.fp16_bytes) == (2ull * 3 * 2 * t->hdr.n_tokens * cfgs[ci].head_dim * 2));
            uint64_t rows = 0;
            for (int w = 0; w < SKV_NBITS; w++)
                rows += st.hist[w];
            expect((rows) == (3ull * 2 * t->hdr.n_tokens));
            skv_cache_plan_free(&p);
            skv_trace_free(t);
        }
}
END_TEST

static void check_loaded(const skv_cache *c, const skv_trace *t, const skv_cache_plan *p,
                         int queries)
{
    const skv_trace_hdr *h = &t->hdr;
    expect(c->hdr.flags & SKV_TRACE_PACKED);
    expect((c->pk.n_tokens) == (h->n_tokens));
    expect(memcmp(&c->pk.q, &p->q, sizeof p->q) == 0);
    size_t T = h->n_tokens, d = h->head_dim;
    if (queries) {
        ck_assert_ptr_nonnull(c->q);
        for (uint32_t l = 0; l < h->n_layers; l++)
            expect(memcmp(c->q[l], t->q[l], sizeof(float) * h->n_heads * T * d) == 0);
    } else {
        ck_assert_ptr_null(c->q);
        expect(c->hdr.flags & SKV_TRACE_NO_QUERIES);
    }
    if (h->flags & SKV_TRACE_HAS_TOKENS)
        expect(memcmp(c->tokens, t->tokens, T * 4) == 0);
    float *k = malloc(sizeof(float) * T * d), *v = malloc(sizeof(float) * T * d);
    uint8_t par[8192], dat[4096];
    float y[1024];
    for (uint32_t l = 0; l < h->n_layers; l++)
        for (uint32_t kh = 0; kh < h->n_kv_heads; kh++) {
            const skv_cache_head *ch = skv_cache_head_at(c, l, kh);
            const uint8_t *bits = p->bits + ((size_t)l * h->n_kv_heads + kh) * T;
            uint8_t *got = malloc(T + 1);
            skv_cache_head_widths(ch, T, got);
            expect(memcmp(got, bits, T) == 0);
            free(got);
            uint32_t prev = 0;
            for (uint32_t b = 0; b < ch->n_buckets; b++) {
                expect(ch->buckets[b].bits >= prev);
                prev = ch->buckets[b].bits;
                expect(((uintptr_t)ch->buckets[b].payload % 64) == (0));
            }
            skv_cache_dequantize_head(c, l, kh, k, v);
            const float *K = t->k[l] + kh * T * d, *V = t->v[l] + kh * T * d;
            for (size_t tk = 0; tk < T; tk++) {
                const skv_bucket *bk;
                uint32_t row;
                int found = skv_cache_find(ch, tk, &bk, &row);
                ck_assert_int_eq(found, bits[tk] != 0);
                if (!bits[tk]) {
                    for (size_t j = 0; j < d; j++)
                        expect(k[tk * d + j] == 0 && v[tk * d + j] == 0);
                    continue;
                }
                expect((bk->bits) == (bits[tk]));
                expect((bk->idx[row]) == (tk));
                /* same values as quantizing the row directly */
                ck_assert_int_eq(skv_quantize_row_ref(K + tk * d, (uint32_t)d, bits[tk],
                                                      p->q.k_group, p->q.k_mode, par, dat), 0);
                skv_dequantize_row_ref(par, dat, (uint32_t)d, bits[tk], p->q.k_group,
                                       p->q.k_mode, y);
                expect(memcmp(y, k + tk * d, d * 4) == 0);
                ck_assert_int_eq(skv_quantize_row_ref(V + tk * d, (uint32_t)d, bits[tk],
                                                      p->q.v_group, p->q.v_mode, par, dat), 0);
                skv_dequantize_row_ref(par, dat, (uint32_t)d, bits[tk], p->q.v_group,
                                       p->q.v_mode, y);
                expect(memcmp(y, v + tk * d, d * 4) == 0);
            }
        }
    free(k);
    free(v);
}

START_TEST(test_roundtrip)
{
    const uint8_t all[6] = {0, 2, 3, 4, 8, 16};
    for (int variant = 0; variant < 4; variant++) {
        uint32_t dtype = variant & 1 ? SKV_F16 : SKV_F32;
        skv_trace *t = make_trace(2, 6, 3, 45, 40, dtype, variant != 2);
        skv_qcfg q = qcfg(40, variant == 3 ? 8 : 40, 20, SKV_QMODE_ASYM,
                          variant == 1 ? SKV_QMODE_SYM : SKV_QMODE_ASYM);
        skv_cache_plan p;
        random_plan(&p, t, &q, all, 6);
        /* one head entirely evicted */
        memset(p.bits + 45 * 4, 0, 45);
        ck_assert_int_eq(skv_cache_plan_bytes(&p, &p.alloc_bytes), 0);
        skv_chunk_list pass = {0};
        add_alloc_chunks(&pass, &p, p.alloc_bytes, MASK_ALL, "policy=test");
        skv_chunk anc = {.type = "note", .raw_size = 3, .size = 3, .data = (const uint8_t *)"abc"};
        ck_assert_int_eq(skv_chunk_list_add(&pass, &anc), 0);
        unsigned flags = variant == 2 ? SKV_CACHE_DROP_QUERIES : 0;
        const char *path = tmpfile_name("rt.skv");
        write_cache(path, t, &p, &pass, flags, variant == 3 ? 6 : -1);
        skv_cache *c;
        expect_msg(skv_cache_load(path, &c) == 0, "load: %s", skv_errmsg());
        check_loaded(c, t, &p, variant != 2);
        expect((c->extra.n) == (pass.n));
        for (size_t i = 0; i < pass.n; i++) {
            ck_assert_str_eq(c->extra.v[i].type, pass.v[i].type);
            expect((c->extra.v[i].size) == (pass.v[i].size));
            expect(memcmp(c->extra.v[i].data, pass.v[i].data, pass.v[i].size) == 0);
        }
        /* back to a trace, whose allocation reads the same */
        const char *path2 = tmpfile_name("rt-trace.skv");
        skv_stream *s = skv_open_write(path2, -1);
        int rc = skv_cache_write_trace(s, c);
        if (variant == 2) {
            ck_assert_int_eq(rc, SKV_EFORMAT);
            expect(strstr(skv_errmsg(), "no queries"));
            skv_discard(s);
        } else {
            expect_msg(rc == 0, "%s", skv_errmsg());
            ck_assert_int_eq(skv_close(s), 0);
            skv_trace *t2;
            skv_chunk_list extra = {0};
            expect_msg(skv_cache_input_load(path2, &t2, &extra) == 0, "%s", skv_errmsg());
            expect((t2->hdr.dtype) == (SKV_F32));
            expect((t2->hdr.flags & (SKV_TRACE_PACKED | SKV_TRACE_NO_QUERIES)) == (0));
            float *k = malloc(sizeof(float) * 45 * 40);
            for (uint32_t l = 0; l < 2; l++)
                for (uint32_t kh = 0; kh < 3; kh++) {
                    skv_cache_dequantize_head(c, l, kh, k, NULL);
                    expect(memcmp(k, t2->k[l] + kh * 45 * 40, sizeof(float) * 45 * 40) == 0);
                }
            free(k);
            skv_cache_plan p2;
            expect_msg(skv_cache_plan_from_chunks(&p2, &t2->hdr, &extra) == 0, "%s",
                          skv_errmsg());
            expect(memcmp(p2.bits, p.bits, 2 * 3 * 45) == 0);
            ck_assert_str_eq(p2.alloc_text, "policy=test");
            skv_cache_plan_free(&p2);
            skv_chunk_list_free(&extra);
            skv_trace_free(t2);
        }
        skv_cache_free(c);
        skv_chunk_list_free(&pass);
        skv_cache_plan_free(&p);
        skv_trace_free(t);
    }
}
END_TEST

START_TEST(test_plan_errors)
{
    skv_trace *t = make_trace(2, 2, 2, 20, 16, SKV_F32, 0);
    skv_qcfg q = qcfg(16, 16, 16, SKV_QMODE_ASYM, SKV_QMODE_ASYM);
    const uint8_t w24[2] = {2, 4};
    skv_cache_plan p, p2;
    random_plan(&p, t, &q, w24, 2);
    uint64_t bytes;
    ck_assert_int_eq(skv_cache_plan_bytes(&p, &bytes), 0);
    skv_chunk_list l = {0};
    /* no allocation at all */
    ck_assert_int_eq(skv_cache_plan_from_chunks(&p2, &t->hdr, &l), SKV_EFORMAT);
    expect(strstr(skv_errmsg(), "no allocation"));
    /* a good one */
    add_alloc_chunks(&l, &p, bytes, MASK_ALL, "x");
    ck_assert_int_eq(skv_cache_plan_from_chunks(&p2, &t->hdr, &l), 0);
    expect(p2.from_alloc && p2.alloc_bytes == bytes);
    skv_cache_plan_free(&p2);
    /* another shape */
    skv_trace *t3 = make_trace(2, 2, 2, 21, 16, SKV_F32, 0);
    ck_assert_int_eq(skv_cache_plan_from_chunks(&p2, &t3->hdr, &l), SKV_EFORMAT);
    expect(strstr(skv_errmsg(), "another shape"));
    skv_trace_free(t3);
    /* a missing ALOC */
    free(l.v[l.n - 1].data);
    l.n--;
    ck_assert_int_eq(skv_cache_plan_from_chunks(&p2, &t->hdr, &l), SKV_EFORMAT);
    expect(strstr(skv_errmsg(), "3 ALOC chunks for 4 (layer, kv head) pairs"));
    skv_chunk_list_free(&l);
    /* a width not in the allowed mask (mask without 4-bit) */
    add_alloc_chunks(&l, &p, bytes, MASK_ALL & ~(1u << 4), "x");
    ck_assert_int_eq(skv_cache_plan_from_chunks(&p2, &t->hdr, &l), SKV_EFORMAT);
    expect(strstr(skv_errmsg(), "allowed"));
    skv_chunk_list_free(&l);
    /* a width that does not exist */
    p.bits[5] = 5;
    add_alloc_chunks(&l, &p, bytes, MASK_ALL, "x");
    ck_assert_int_eq(skv_cache_plan_from_chunks(&p2, &t->hdr, &l), SKV_EFORMAT);
    expect(strstr(skv_errmsg(), "width 5"));
    skv_chunk_list_free(&l);
    p.bits[5] = 2;
    ck_assert_int_eq(skv_cache_plan_bytes(&p, &bytes), 0);
    /* two ALHD */
    add_alloc_chunks(&l, &p, bytes, MASK_ALL, "x");
    add_alloc_chunks(&l, &p, bytes, MASK_ALL, "x");
    ck_assert_int_eq(skv_cache_plan_from_chunks(&p2, &t->hdr, &l), SKV_EFORMAT);
    skv_chunk_list_free(&l);
    /* predicted bytes disagree with the byte model: the writer refuses */
    add_alloc_chunks(&l, &p, bytes + 1, MASK_ALL, "x");
    ck_assert_int_eq(skv_cache_plan_from_chunks(&p2, &t->hdr, &l), 0);
    skv_stream *s = skv_open_write(tmpfile_name("bad.skv"), -1);
    ck_assert_int_eq(skv_cache_write(s, t, &p2, &l, 0, NULL), SKV_EFORMAT);
    expect(strstr(skv_errmsg(), "disagree"));
    skv_discard(s);
    ck_assert_int_eq(access(tmpfile_name("bad.skv"), F_OK), -1);
    skv_cache_plan_free(&p2);
    skv_chunk_list_free(&l);
    /* uniform: bad width, bad group */
    ck_assert_int_eq(skv_cache_plan_uniform(&p2, &t->hdr, &q, 5), SKV_EINVAL);
    skv_qcfg bad = qcfg(16, 5, 16, SKV_QMODE_ASYM, SKV_QMODE_ASYM);
    ck_assert_int_eq(skv_cache_plan_uniform(&p2, &t->hdr, &bad, 4), SKV_EINVAL);
    skv_cache_plan_free(&p);
    skv_trace_free(t);
}
END_TEST

/* ---- hand-built streams with one defect each ---- */

enum {
    M_NONE, M_IDX_DESC, M_IDX_RANGE, M_DUP_TOKEN, M_BAD_BITS, M_SHORT, M_PADDING, M_ORDER,
    M_MISSING, M_QCFG, M_PART, M_RESERVED, M_BEFORE_Q, M_NSTORED, M_DUP_FAR, M_COUNT
};
static const char *const m_expect[M_COUNT] = {
    "", "not ascending", "out of range", "already stored", "bad width", "payload is",
    "padding", "out of order", "PBKT chunks", "quantizer settings", "part 0", "reserved",
    "queries of its layer", "PBKT chunks", "already stored"};

/* One layer, one kv head, T=12 tokens, d=16; buckets: 2-bit {1,3,5}, 4-bit {0,2,7},
 * 16-bit {4}; the others evicted. */
static void write_custom(const char *path, int m)
{
    skv_trace *t = make_trace(1, 2, 1, 12, 16, SKV_F32, 0);
    skv_qcfg q = qcfg(16, 8, 16, SKV_QMODE_ASYM, SKV_QMODE_SYM);
    struct { uint32_t bits, n, idx[3]; } bk[3] = {{2, 3, {1, 3, 5}}, {4, 3, {0, 2, 7}},
                                                  {16, 1, {4}}};
    if (m == M_ORDER) {  /* 16-bit before 4-bit */
        __typeof__(bk[0]) tmp = bk[1];
        bk[1] = bk[2];
        bk[2] = tmp;
    }
    if (m == M_DUP_TOKEN)
        bk[1].idx[1] = 3;  /* token 3 also in the 2-bit bucket */
    if (m == M_DUP_FAR)
        bk[2].idx[0] = 1;  /* the 16-bit token is also in the 2-bit bucket, two widths back */
    skv_stream *s = skv_open_write(path, -1);
    skv_trace_hdr h = t->hdr;
    h.flags |= SKV_TRACE_PACKED;
    ck_assert_int_eq(skv_trhd_write(s, &h), 0);
    skv_pkhd pk = {.q = q, .n_layers = 1, .n_kv_heads = 1, .n_tokens = 12, .n_stored = 7};
    pk.fp16_bytes = skv_fp16_kv_bytes(1, 1, 12, 16);
    pk.cache_bytes = skv_pkhd_file_bytes() + skv_bucket_file_bytes(&q, 2, 3) +
                     skv_bucket_file_bytes(&q, 4, 3) + skv_bucket_file_bytes(&q, 16, 1);
    if (m == M_NSTORED)
        pk.n_stored = 8;
    if (m == M_QCFG)
        pk.q.k_group = 16;
    ck_assert_int_eq(skv_pkhd_write(s, &pk), 0);
    if (m == M_BEFORE_Q) {
        uint8_t buf[4096];
        uint64_t size = skv_pbkt_payload_bytes(&q, 2, 3);
        ck_assert_int_eq(skv_pbkt_encode(buf, size, &q, 0, 0, 2, 0, bk[0].idx, 3, t->k[0],
                                         t->v[0]), 0);
        ck_assert_int_eq(skv_write(s, SKV_T_PBKT, buf, size), 0);
    }
    for (uint32_t i = 0; i < 2; i++)
        ck_assert_int_eq(skv_tens_write(s, SKV_TK_Q, SKV_F32, 0, i, 0, 12, 16,
                                        t->q[0] + i * 12 * 16), 0);
    for (int b = 0; b < 3; b++) {
        if (m == M_BEFORE_Q && b == 0)
            continue;
        if (m == M_MISSING && b == 2)
            continue;
        uint8_t buf[4096] __attribute__((aligned(64)));
        uint64_t size = skv_pbkt_payload_bytes(&q, bk[b].bits, bk[b].n);
        ck_assert_int_eq(skv_pbkt_encode(buf, size, &q, 0, 0, bk[b].bits, 0, bk[b].idx, bk[b].n,
                                         t->k[0], t->v[0]), 0);
        if (b == 0) {
            switch (m) {
            case M_IDX_DESC: skv_put32(buf + 64, 9); break;
            case M_IDX_RANGE: skv_put32(buf + 64 + 8, 12); break;
            case M_BAD_BITS: skv_put32(buf + 8, 5); break;
            case M_SHORT: size -= 64; break;
            case M_PADDING: buf[64 + 12] = 1; break;
            case M_PART: skv_put32(buf + 36, 1); break;
            case M_RESERVED: buf[58] = 1; break;  /* 56..63 reserved (1.3) */
            }
        }
        ck_assert_int_eq(skv_write(s, SKV_T_PBKT, buf, size), 0);
    }
    ck_assert_int_eq(skv_close(s), 0);
    skv_trace_free(t);
}

START_TEST(test_corrupt_rejected)
{
    for (int m = 0; m < M_COUNT; m++) {
        const char *path = tmpfile_name("custom.skv");
        write_custom(path, m);
        skv_cache *c = NULL;
        int rc = skv_cache_load(path, &c);
        if (m == M_NONE) {
            expect_msg(rc == 0, "%s", skv_errmsg());
            const skv_cache_head *h = skv_cache_head_at(c, 0, 0);
            expect((h->n_buckets) == (3));
            expect((h->n_stored) == (7));
            const uint8_t want[12] = {4, 2, 4, 2, 16, 2, 0, 4, 0, 0, 0, 0};
            uint8_t got[12];
            skv_cache_head_widths(h, 12, got);
            expect(memcmp(got, want, 12) == 0);
            for (uint64_t t = 0; t < 12; t++)
                expect(skv_cache_width(h, t) == want[t]);
            skv_cache_free(c);
            continue;
        }
        expect_msg(rc == SKV_EFORMAT, "mutation %d: rc %d (%s)", m, rc, skv_errmsg());
        ck_assert_ptr_null(c);
        expect_msg(strstr(skv_errmsg(), m_expect[m]), "mutation %d: message \"%s\" lacks "
                      "\"%s\"", m, skv_errmsg(), m_expect[m]);
    }
    /* the conformance checker (skv-trace info, cat) rejects exactly these */
    for (int m = 0; m < M_COUNT; m++) {
        const char *path = tmpfile_name("custom.skv");
        write_custom(path, m);
        skv_stream *s = skv_open_read(path);
        skv_checker *k = skv_checker_new();
        expect(s && k);
        skv_chunk ch;
        int rc;
        while ((rc = skv_read(s, &ch)) > 0)
            if ((rc = skv_check_chunk(k, &ch)) < 0)
                break;
        if (rc == 0)
            rc = skv_check_end(k);
        skv_checker_free(k);
        skv_close(s);
        if (m == M_NONE)
            expect_msg(rc == 0, "checker: %s", skv_errmsg());
        else
            expect_msg(rc < 0 && strstr(skv_errmsg(), m == M_DUP_TOKEN || m == M_DUP_FAR
                                                          ? "already stored" : ""),
                       "checker, mutation %d: rc %d (%s)", m, rc, skv_errmsg());
    }
}
END_TEST

START_TEST(test_truncated_and_wrong_input)
{
    skv_trace *t = make_trace(1, 1, 1, 10, 8, SKV_F32, 0);
    skv_cache_plan p;
    skv_qcfg q = qcfg(8, 8, 8, SKV_QMODE_ASYM, SKV_QMODE_ASYM);
    ck_assert_int_eq(skv_cache_plan_uniform(&p, &t->hdr, &q, 3), 0);
    const char *path = tmpfile_name("tr.skv");
    write_cache(path, t, &p, NULL, 0, -1);
    FILE *f = fopen(path, "rb");
    char buf[65536];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    const char *cut = tmpfile_name("cut.skv");
    for (size_t len = 8; len < n; len += 37) {
        f = fopen(cut, "wb");
        fwrite(buf, 1, len, f);
        fclose(f);
        skv_cache *c;
        ck_assert_int_lt(skv_cache_load(cut, &c), 0);
    }
    /* a plain trace is not a cache, and a cache is not a trace */
    ck_assert_int_eq(skv_trace_save(t, cut, -1), 0);
    skv_cache *c;
    ck_assert_int_eq(skv_cache_load(cut, &c), SKV_EFORMAT);
    expect(strstr(skv_errmsg(), "plain trace"));
    skv_trace *t2;
    skv_chunk_list extra = {0};
    ck_assert_int_lt(skv_cache_input_load(path, &t2, &extra), 0);
    expect(strstr(skv_errmsg(), "packed cache"));
    skv_chunk_list_free(&extra);
    skv_cache_plan_free(&p);
    skv_trace_free(t);
}
END_TEST

/* A bucket too big for one chunk is split into full parts plus the rest. */
START_TEST(test_multipart_bucket)
{
    skv_qcfg q = qcfg(1024, 1024, 1024, SKV_QMODE_ASYM, SKV_QMODE_ASYM);
    uint64_t max = skv_pbkt_max_tokens(&q, 16);
    expect(skv_pbkt_payload_bytes(&q, 16, max) <= SKV_CHUNK_MAX);
    expect(skv_pbkt_payload_bytes(&q, 16, max + 1) > SKV_CHUNK_MAX);
    uint64_t T = max + 3;
    skv_trace *t = make_trace(1, 1, 1, T, 1024, SKV_F16, 0);
    skv_cache_plan p;
    ck_assert_int_eq(skv_cache_plan_uniform(&p, &t->hdr, &q, 16), 0);
    p.bits[7] = 0;  /* one evicted: 16-bit bucket of max+2 tokens */
    const char *path = tmpfile_name("big.skv");
    skv_cache_stats st = write_cache(path, t, &p, NULL, SKV_CACHE_DROP_QUERIES, -1);
    expect((st.n_pbkt) == (2));
    expect(st.cache_bytes == skv_pkhd_file_bytes() + skv_bucket_file_bytes(&q, 16, T - 1));
    uint64_t npbkt;
    expect((measured_cache_bytes(path, &npbkt)) == (st.cache_bytes));
    skv_cache *c;
    expect_msg(skv_cache_load(path, &c) == 0, "%s", skv_errmsg());
    const skv_cache_head *h = skv_cache_head_at(c, 0, 0);
    expect((h->n_buckets) == (2));
    expect((h->buckets[0].n) == (max));
    expect((h->buckets[1].n) == (2));
    expect((h->buckets[1].part) == (1));
    expect((h->buckets[1].idx[1]) == (T - 1));
    /* lookups across the parts (no per-token array behind them) */
    const skv_bucket *fb;
    uint32_t row;
    expect(skv_cache_width(h, 7) == 0 && skv_cache_width(h, 6) == 16);
    expect(skv_cache_find(h, max, &fb, &row) == 1 && fb == &h->buckets[0] && row == max - 1);
    expect(skv_cache_find(h, max + 1, &fb, &row) == 1 && fb == &h->buckets[1] && row == 0);
    expect(skv_cache_find(h, T - 1, &fb, &row) == 1 && fb == &h->buckets[1] && row == 1);
    /* fp16 traces survive 16-bit storage exactly */
    float *k = malloc(sizeof(float) * T * 1024);
    skv_cache_dequantize_head(c, 0, 0, k, NULL);
    for (uint64_t i = 0; i < T * 1024; i++)
        if (i / 1024 != 7)
            expect(k[i] == t->k[0][i]);
    free(k);
    skv_cache_free(c);
    skv_cache_plan_free(&p);
    skv_trace_free(t);
}
END_TEST

/* Bytes of a file. */
static size_t file_bytes(const char *path, uint8_t **out)
{
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    *out = malloc((size_t)n + 1);
    ck_assert_ptr_nonnull(*out);
    ck_assert_uint_eq(fread(*out, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    return (size_t)n;
}

static void expect_same_file(const char *a, const char *b)
{
    uint8_t *x, *y;
    size_t nx = file_bytes(a, &x), ny = file_bytes(b, &y);
    expect_msg(nx == ny && !memcmp(x, y, nx), "%s (%zu bytes) differs from %s (%zu bytes)", a,
               nx, b, ny);
    free(x);
    free(y);
}

/* One layer at a time (skv_cache_quantize: a file reopened, or a stream
 * copied to a temporary file) writes exactly what the whole-trace writer
 * writes; the layer reader hands out what skv_cache_load reads. */
START_TEST(test_streamed_equals_whole)
{
    skv_trace *t = make_trace(3, 4, 2, 300, 32, SKV_F16, 1);
    char tp[512], ap[512], c0[512];  /* tmpfile_name's buffers are reused */
    snprintf(tp, sizeof tp, "%s", tmpfile_name("st.skv"));
    snprintf(ap, sizeof ap, "%s", tmpfile_name("sa.skv"));
    snprintf(c0, sizeof c0, "%s", tmpfile_name("c0.skv"));
    ck_assert_int_eq(skv_trace_save(t, tp, -1), 0);
    skv_alloc_cfg ac;
    skv_alloc_cfg_defaults(&ac);
    ac.budget = 0.5; /* 300 tokens: the sinks and the recent window take a share */
    skv_imp_cfg ic;
    skv_imp_defaults(&ic);
    ic.threads = 1;
    skv_stream *in = skv_open_read(tp), *out = skv_open_write(ap, -1);
    ck_assert_ptr_nonnull(in);
    ck_assert_ptr_nonnull(out);
    expect_msg(skv_alloc_filter(in, out, &ac, &ic, NULL, NULL) == 0, "alloc: %s", skv_errmsg());
    skv_close(in);
    ck_assert_int_eq(skv_close(out), 0);

    /* whole: load, plan from the allocation, keep its ALHD */
    skv_trace *w;
    skv_chunk_list extra = {0}, pass = {0};
    ck_assert_int_eq(skv_cache_input_load(ap, &w, &extra), 0);
    skv_cache_plan plan;
    ck_assert_int_eq(skv_cache_plan_from_chunks(&plan, &w->hdr, &extra), 0);
    for (size_t i = 0; i < extra.n; i++)
        if (!memcmp(extra.v[i].type, SKV_T_ALHD, 4)) {
            skv_chunk c = {.raw_size = extra.v[i].size, .size = extra.v[i].size,
                           .data = extra.v[i].data};
            memcpy(c.type, extra.v[i].type, 5);
            ck_assert_int_eq(skv_chunk_list_add(&pass, &c), 0);
        }
    write_cache(c0, w, &plan, &pass, SKV_CACHE_DROP_QUERIES, -1);
    skv_cache_plan_free(&plan);
    skv_chunk_list_free(&extra);
    skv_chunk_list_free(&pass);
    skv_trace_free(w);

    /* streamed: from the file by name, then from a descriptor (spooled) */
    skv_quantize_opts qo;
    memset(&qo, 0, sizeof qo);
    qo.flags = SKV_CACHE_DROP_QUERIES;
    for (int spool = 0; spool < 2; spool++) {
        const char *c1 = tmpfile_name(spool ? "c2.skv" : "c1.skv");
        int fd = spool ? open(ap, O_RDONLY) : -1;
        in = spool ? skv_open_fd(fd, "fd") : skv_open_read(ap);
        out = skv_open_write(c1, -1);
        ck_assert_ptr_nonnull(in);
        ck_assert_ptr_nonnull(out);
        skv_cache_stats st;
        int rc = skv_cache_quantize(in, NULL, spool ? NULL : ap, out, &qo, &plan, &st);
        expect_msg(rc == 0, "quantize: %s", skv_errmsg());
        ck_assert_int_eq(skv_close(out), 0);
        ck_assert(plan.from_alloc);
        ck_assert_uint_eq(st.cache_bytes, st.model_bytes);
        skv_cache_plan_free(&plan);
        if (fd >= 0)
            close(fd);
        expect_same_file(c0, c1);
    }

    /* uniform: no widths array, the same bytes as a uniform plan */
    skv_qcfg q = qcfg(32, 32, 32, SKV_QMODE_ASYM, SKV_QMODE_ASYM);
    ck_assert_int_eq(skv_cache_plan_uniform(&plan, &t->hdr, &q, 3), 0);
    const char *u0 = tmpfile_name("u0.skv"), *u1 = tmpfile_name("u1.skv");
    write_cache(u0, t, &plan, NULL, 0, -1);
    skv_cache_plan_free(&plan);
    qo.uniform = 3;
    qo.q = q;
    qo.flags = 0;
    in = skv_open_read(tp);
    out = skv_open_write(u1, -1);
    expect_msg(skv_cache_quantize(in, NULL, tp, out, &qo, &plan, NULL) == 0, "uniform: %s",
               skv_errmsg());
    ck_assert_ptr_null(plan.bits);
    ck_assert_int_eq(skv_close(out), 0);
    skv_cache_plan_free(&plan);
    expect_same_file(u0, u1);

    /* the layer reader against the whole cache */
    skv_cache *whole;
    ck_assert_int_eq(skv_cache_load(u1, &whole), 0);
    skv_cache_reader *cr = skv_cache_reader_open(skv_open_read(u1), NULL);
    ck_assert_ptr_nonnull(cr);
    const skv_cache *c = skv_cache_reader_cache(cr);
    uint32_t l, want = 0;
    int rc;
    while ((rc = skv_cache_reader_next(cr, &l)) == 1) {
        ck_assert_uint_eq(l, want++);
        size_t nq = (size_t)t->hdr.n_heads * t->hdr.n_tokens * t->hdr.head_dim;
        ck_assert(!memcmp(c->q[l], whole->q[l], nq * sizeof(float)));
        for (uint32_t kh = 0; kh < t->hdr.n_kv_heads; kh++) {
            const skv_cache_head *a = skv_cache_head_at(c, l, kh), *b = skv_cache_head_at(whole, l, kh);
            ck_assert_uint_eq(a->n_buckets, b->n_buckets);
            ck_assert_uint_eq(a->n_stored, b->n_stored);
            static uint8_t wa[4096], wb[4096];
            ck_assert_uint_le(t->hdr.n_tokens, sizeof wa);
            skv_cache_head_widths(a, t->hdr.n_tokens, wa);
            skv_cache_head_widths(b, t->hdr.n_tokens, wb);
            ck_assert(!memcmp(wa, wb, (size_t)t->hdr.n_tokens));
            for (uint32_t i = 0; i < a->n_buckets; i++)
                ck_assert(!memcmp(a->buckets[i].payload, b->buckets[i].payload,
                                  a->buckets[i].payload_bytes));
        }
        if (l > 0) /* the layer before was released */
            ck_assert_ptr_null(c->q[l - 1]);
    }
    ck_assert_int_eq(rc, 0);
    ck_assert_uint_eq(want, t->hdr.n_layers);
    skv_cache_reader_close(cr);
    skv_cache_free(whole);
    skv_trace_free(t);
}
END_TEST

START_TEST(test_pkhd_codec)
{
    skv_pkhd a = {.q = qcfg(128, 32, 64, SKV_QMODE_SYM, SKV_QMODE_ASYM), .n_layers = 3,
                  .n_kv_heads = 5, .n_tokens = 1234, .cache_bytes = 987654, .fp16_bytes = 77,
                  .n_stored = 42};
    const char *path = tmpfile_name("pkhd.skv");
    skv_stream *s = skv_open_write(path, -1);
    uint64_t before = skv_stream_offset(s);
    ck_assert_int_eq(skv_pkhd_write(s, &a), 0);
    expect((skv_stream_offset(s) - before) == (skv_pkhd_file_bytes()));
    ck_assert_int_eq(skv_close(s), 0);
    s = skv_open_read(path);
    skv_chunk c;
    ck_assert_int_eq(skv_read(s, &c), 1);
    skv_pkhd b;
    ck_assert_int_eq(skv_pkhd_decode(&c, &b), 0);
    expect(memcmp(&a.q, &b.q, sizeof a.q) == 0);
    expect(a.n_layers == b.n_layers && a.n_kv_heads == b.n_kv_heads &&
              a.n_tokens == b.n_tokens && a.cache_bytes == b.cache_bytes &&
              a.fp16_bytes == b.fp16_bytes && a.n_stored == b.n_stored);
    skv_close(s);
}
END_TEST

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/skv-test-cache-XXXXXX");
    if (!mkdtemp(tmpdir))
        return 1;
    Suite *s = suite_create("cache");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_payload_sizes);
    tcase_add_test(tc, test_byte_model_exact);
    tcase_add_test(tc, test_roundtrip);
    tcase_add_test(tc, test_plan_errors);
    tcase_add_test(tc, test_corrupt_rejected);
    tcase_add_test(tc, test_truncated_and_wrong_input);
    tcase_add_test(tc, test_pkhd_codec);
    tcase_add_test(tc, test_multipart_bucket);
    tcase_add_test(tc, test_streamed_equals_whole);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        return 1;
    return nf != 0;
}
