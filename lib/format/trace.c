/* trace.c -- trace header and tensor-block codecs, layer reader, loaders. */
#include "smartkv_trace.h"
#include "smartkv_fp16.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#include "x86_cpu.h"
#define SKV_X86 1
#endif

size_t skv_dtype_size(uint32_t dtype)
{
    switch (dtype) {
    case SKV_F32: return 4;
    case SKV_F16: return 2;
    case SKV_BF16: return 2;
    default: return 0;
    }
}

const char *skv_dtype_name(uint32_t dtype)
{
    switch (dtype) {
    case SKV_F32: return "f32";
    case SKV_F16: return "f16";
    case SKV_BF16: return "bf16";
    default: return "unknown";
    }
}

int skv_dtype_parse(const char *name)
{
    if (!strcmp(name, "f32") || !strcmp(name, "fp32") || !strcmp(name, "float32"))
        return SKV_F32;
    if (!strcmp(name, "f16") || !strcmp(name, "fp16") || !strcmp(name, "float16"))
        return SKV_F16;
    if (!strcmp(name, "bf16") || !strcmp(name, "bfloat16"))
        return SKV_BF16;
    return SKV_EINVAL;
}

const char *skv_tensor_kind_name(uint32_t kind)
{
    switch (kind) {
    case SKV_TK_Q: return "Q";
    case SKV_TK_K: return "K";
    case SKV_TK_V: return "V";
    case SKV_TK_OUT: return "OUT";
    case SKV_TK_PROB: return "PROB";
    case SKV_TK_HIDDEN: return "HIDDEN";
    default: return "?";
    }
}

/* ---- element conversion ---- */

uint16_t skv_f32_to_f16(float f)
{
    return skv_qm_f2h(f);
}

float skv_f16_to_f32(uint16_t h)
{
    return skv_qm_h2f(h);
}

uint16_t skv_f32_to_bf16(float f)
{
    union { float f; uint32_t u; } x = {f};
    if ((x.u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x.u >> 16) | 0x40u); /* quiet NaN */
    uint32_t lsb = (x.u >> 16) & 1u;
    return (uint16_t)((x.u + 0x7fffu + lsb) >> 16);
}

float skv_bf16_to_f32(uint16_t h)
{
    union { uint32_t u; float f; } x = {(uint32_t)h << 16};
    return x.f;
}

#ifdef SKV_X86
__attribute__((target("avx,f16c"))) static void f16_to_f32_f16c(const uint16_t *s, float *d, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + i))));
    for (; i < n; i++)
        d[i] = skv_f16_to_f32(s[i]);
}
__attribute__((target("avx,f16c"))) static void f32_to_f16_f16c(const float *s, uint16_t *d, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(d + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(s + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++)
        d[i] = skv_f32_to_f16(s[i]);
}
static int have_f16c(void)
{
    static int v = -1;
    if (v < 0)
        v = skv_x86_f16c();
    return v;
}
#endif

void skv_convert_to_f32(uint32_t dtype, const void *src, float *dst, size_t n)
{
    const uint16_t *h = src;
    switch (dtype) {
    case SKV_F32:
        memcpy(dst, src, n * 4);  /* little-endian host assumed (checked in the spec) */
        break;
    case SKV_F16:
#ifdef SKV_X86
        if (have_f16c()) {
            f16_to_f32_f16c(h, dst, n);
            break;
        }
#endif
        for (size_t i = 0; i < n; i++)
            dst[i] = skv_f16_to_f32(h[i]);
        break;
    case SKV_BF16:
        for (size_t i = 0; i < n; i++)
            dst[i] = skv_bf16_to_f32(h[i]);
        break;
    }
}

void skv_convert_from_f32(uint32_t dtype, const float *src, void *dst, size_t n)
{
    uint16_t *h = dst;
    switch (dtype) {
    case SKV_F32:
        memcpy(dst, src, n * 4);
        break;
    case SKV_F16:
#ifdef SKV_X86
        if (have_f16c()) {
            f32_to_f16_f16c(src, h, n);
            break;
        }
#endif
        for (size_t i = 0; i < n; i++)
            h[i] = skv_f32_to_f16(src[i]);
        break;
    case SKV_BF16:
        for (size_t i = 0; i < n; i++)
            h[i] = skv_f32_to_bf16(src[i]);
        break;
    }
}

/* ---- header ---- */

int skv_trace_hdr_check(const skv_trace_hdr *h)
{
    if (h->n_layers == 0 || h->n_layers > SKV_MAX_LAYERS)
        return skv_error(SKV_ELIMIT, "n_layers %u outside 1..%u", h->n_layers, SKV_MAX_LAYERS);
    if (h->n_heads == 0 || h->n_heads > SKV_MAX_HEADS)
        return skv_error(SKV_ELIMIT, "n_heads %u outside 1..%u", h->n_heads, SKV_MAX_HEADS);
    if (h->n_kv_heads == 0 || h->n_kv_heads > h->n_heads || h->n_heads % h->n_kv_heads)
        return skv_error(SKV_EFORMAT, "n_kv_heads %u must divide n_heads %u", h->n_kv_heads,
                         h->n_heads);
    if (h->head_dim == 0 || h->head_dim > SKV_MAX_HEAD_DIM)
        return skv_error(SKV_ELIMIT, "head_dim %u outside 1..%u", h->head_dim, SKV_MAX_HEAD_DIM);
    if (h->n_tokens == 0 || h->n_tokens > SKV_MAX_TOKENS)
        return skv_error(SKV_ELIMIT, "n_tokens %llu outside 1..%llu",
                         (unsigned long long)h->n_tokens, (unsigned long long)SKV_MAX_TOKENS);
    if (h->n_prefill > h->n_tokens)
        return skv_error(SKV_EFORMAT, "n_prefill %llu exceeds n_tokens %llu",
                         (unsigned long long)h->n_prefill, (unsigned long long)h->n_tokens);
    if (!skv_dtype_size(h->dtype))
        return skv_error(SKV_EFORMAT, "unknown element type %u", h->dtype);
    if (h->flags & ~SKV_TRACE_FLAGS_KNOWN)
        return skv_error(SKV_EUNSUP, "unknown trace flags 0x%x", h->flags);
    if (!isfinite(h->rope_theta) || h->rope_theta < 0)
        return skv_error(SKV_EFORMAT, "bad rope_theta %g", (double)h->rope_theta);
    size_t nq = 0, nkv = 0;
    return skv_trace_layer_floats(h, &nq, &nkv);
}

int skv_trace_layer_floats(const skv_trace_hdr *h, size_t *nq, size_t *nkv)
{
    if (skv_mul_sizes(nq, 4, (size_t)h->n_heads, (size_t)h->n_tokens, (size_t)h->head_dim,
                      sizeof(float)) ||
        skv_mul_sizes(nkv, 4, (size_t)h->n_kv_heads, (size_t)h->n_tokens,
                      (size_t)h->head_dim, sizeof(float)))
        return skv_error(SKV_ELIMIT, "layer size overflows");
    *nq /= sizeof(float);
    *nkv /= sizeof(float);
    return 0;
}

int skv_trhd_write(skv_stream *s, const skv_trace_hdr *h)
{
    int rc = skv_trace_hdr_check(h);
    if (rc < 0)
        return rc;
    size_t a = strnlen(h->model, SKV_MAX_NAME), b = strnlen(h->tokenizer, SKV_MAX_NAME);
    uint8_t buf[SKV_TRHD_FIXED_LEN + 2 * SKV_MAX_NAME];
    memset(buf, 0, SKV_TRHD_FIXED_LEN);
    skv_put32(buf, h->n_layers);
    skv_put32(buf + 4, h->n_heads);
    skv_put32(buf + 8, h->n_kv_heads);
    skv_put32(buf + 12, h->head_dim);
    skv_put64(buf + 16, h->n_tokens);
    skv_put64(buf + 24, h->n_prefill);
    skv_put32(buf + 32, h->dtype);
    skv_put32(buf + 36, h->flags);
    skv_putf32(buf + 40, h->rope_theta);
    skv_put16(buf + 48, (uint16_t)a);
    skv_put16(buf + 50, (uint16_t)b);
    memcpy(buf + SKV_TRHD_FIXED_LEN, h->model, a);
    memcpy(buf + SKV_TRHD_FIXED_LEN + a, h->tokenizer, b);
    return skv_write(s, SKV_T_TRHD, buf, SKV_TRHD_FIXED_LEN + a + b);
}

static int has_nul(const uint8_t *p, size_t n)
{
    return memchr(p, 0, n) != NULL;
}

int skv_trhd_decode(const skv_chunk *c, skv_trace_hdr *h)
{
    const uint8_t *p = c->data;
    if (c->raw_size < SKV_TRHD_FIXED_LEN)
        return skv_error(SKV_EFORMAT, "TRHD chunk at byte %llu too short (%llu bytes)",
                         (unsigned long long)c->offset, (unsigned long long)c->raw_size);
    memset(h, 0, sizeof *h);
    h->n_layers = skv_get32(p);
    h->n_heads = skv_get32(p + 4);
    h->n_kv_heads = skv_get32(p + 8);
    h->head_dim = skv_get32(p + 12);
    h->n_tokens = skv_get64(p + 16);
    h->n_prefill = skv_get64(p + 24);
    h->dtype = skv_get32(p + 32);
    h->flags = skv_get32(p + 36);
    h->rope_theta = skv_getf32(p + 40);
    size_t a = skv_get16(p + 48), b = skv_get16(p + 50);
    if (skv_get32(p + 44))
        return skv_error(SKV_EFORMAT, "TRHD chunk at byte %llu: reserved bytes 44..47 are not "
                         "zero", (unsigned long long)c->offset);
    if (a > SKV_MAX_NAME || b > SKV_MAX_NAME ||
        SKV_TRHD_FIXED_LEN + a + b > c->raw_size)
        return skv_error(SKV_EFORMAT, "TRHD chunk at byte %llu: name lengths %zu+%zu "
                         "do not fit its %llu bytes", (unsigned long long)c->offset, a, b,
                         (unsigned long long)c->raw_size);
    if (has_nul(p + SKV_TRHD_FIXED_LEN, a + b))
        return skv_error(SKV_EFORMAT, "TRHD chunk at byte %llu: NUL inside a name",
                         (unsigned long long)c->offset);
    memcpy(h->model, p + SKV_TRHD_FIXED_LEN, a);
    memcpy(h->tokenizer, p + SKV_TRHD_FIXED_LEN + a, b);
    int rc = skv_trace_hdr_check(h);
    if (rc < 0)
        return skv_error(rc, "TRHD chunk at byte %llu: %s", (unsigned long long)c->offset,
                         skv_errmsg());
    return 0;
}

/* ---- tensor blocks ---- */

int skv_tens_decode(const skv_chunk *c, skv_tens *t)
{
    const uint8_t *p = c->data;
    if (c->raw_size < SKV_TENS_HEADER_LEN)
        return skv_error(SKV_EFORMAT, "TENS chunk at byte %llu too short",
                         (unsigned long long)c->offset);
    t->kind = skv_get32(p);
    t->dtype = skv_get32(p + 4);
    t->layer = skv_get32(p + 8);
    t->head = skv_get32(p + 12);
    t->row0 = skv_get64(p + 16);
    t->rows = skv_get64(p + 24);
    t->cols = skv_get32(p + 32);
    t->data = p + SKV_TENS_HEADER_LEN;
    if (skv_get32(p + 36))
        return skv_error(SKV_EFORMAT, "TENS chunk at byte %llu: reserved bytes 36..39 are not "
                         "zero", (unsigned long long)c->offset);
    size_t es = skv_dtype_size(t->dtype);
    if (!es)
        return skv_error(SKV_EFORMAT, "TENS chunk at byte %llu: unknown element type %u",
                         (unsigned long long)c->offset, t->dtype);
    if (t->kind < SKV_TK_Q || t->kind > SKV_TK_PROB)
        return skv_error(SKV_EFORMAT, "TENS chunk at byte %llu: unknown tensor kind %u",
                         (unsigned long long)c->offset, t->kind);
    size_t n;
    if (t->rows > SKV_MAX_TOKENS || t->cols > SKV_MAX_TOKENS ||
        skv_mul_sizes(&n, 3, (size_t)t->rows, (size_t)t->cols, es) ||
        n + SKV_TENS_HEADER_LEN != c->raw_size)
        return skv_error(SKV_EFORMAT, "TENS chunk at byte %llu: %llu rows x %u cols of %s "
                         "do not match its payload of %llu bytes",
                         (unsigned long long)c->offset, (unsigned long long)t->rows, t->cols,
                         skv_dtype_name(t->dtype), (unsigned long long)c->raw_size);
    return 0;
}

void skv_tens_to_f32(const skv_tens *t, float *out)
{
    skv_convert_to_f32(t->dtype, t->data, out, (size_t)t->rows * t->cols);
}

static void tens_header(uint8_t *h, uint32_t kind, uint32_t dtype, uint32_t layer,
                        uint32_t head, uint64_t row0, uint64_t rows, uint32_t cols)
{
    memset(h, 0, SKV_TENS_HEADER_LEN);
    skv_put32(h, kind);
    skv_put32(h + 4, dtype);
    skv_put32(h + 8, layer);
    skv_put32(h + 12, head);
    skv_put64(h + 16, row0);
    skv_put64(h + 24, rows);
    skv_put32(h + 32, cols);
}

static uint64_t rows_per_block(uint32_t cols, size_t es)
{
    uint64_t row_bytes = (uint64_t)cols * es;
    uint64_t r = (SKV_CHUNK_MAX - SKV_TENS_HEADER_LEN) / (row_bytes ? row_bytes : 1);
    return r ? r : 1;
}

static int blocks_write_raw(skv_stream *s, const char *type, uint32_t kind, uint32_t dtype,
                            uint32_t layer, uint32_t head, uint64_t row0, uint64_t rows,
                            uint32_t cols, const void *data)
{
    size_t es = skv_dtype_size(dtype);
    if (!es || (uint64_t)cols * es > SKV_CHUNK_MAX - SKV_TENS_HEADER_LEN)
        return skv_error(SKV_EINVAL, "TENS: bad dtype or row too long");
    uint64_t per = rows_per_block(cols, es);
    const uint8_t *p = data;
    for (uint64_t done = 0; done < rows || rows == 0;) {
        uint64_t n = rows - done < per ? rows - done : per;
        uint8_t h[SKV_TENS_HEADER_LEN];
        tens_header(h, kind, dtype, layer, head, row0 + done, n, cols);
        const void *pieces[2] = {h, p};
        uint64_t lens[2] = {SKV_TENS_HEADER_LEN, n * cols * es};
        int rc = skv_writev(s, type, 2, pieces, lens);
        if (rc < 0)
            return rc;
        p += n * cols * es;
        done += n;
        if (rows == 0)
            break;
    }
    return 0;
}

int skv_tens_write_raw(skv_stream *s, uint32_t kind, uint32_t dtype, uint32_t layer,
                       uint32_t head, uint64_t row0, uint64_t rows, uint32_t cols,
                       const void *data)
{
    return blocks_write_raw(s, SKV_T_TENS, kind, dtype, layer, head, row0, rows, cols, data);
}

static int blocks_write(skv_stream *s, const char *type, uint32_t kind, uint32_t dtype,
                        uint32_t layer, uint32_t head, uint64_t row0, uint64_t rows,
                        uint32_t cols, const float *data)
{
    if (dtype == SKV_F32)
        return blocks_write_raw(s, type, kind, dtype, layer, head, row0, rows, cols, data);
    size_t es = skv_dtype_size(dtype);
    if (!es)
        return skv_error(SKV_EINVAL, "TENS: bad dtype %u", dtype);
    uint64_t per = rows_per_block(cols, es);
    if (per > rows)
        per = rows ? rows : 1;
    void *tmp = skv_malloc((size_t)(per * cols * es));
    if (!tmp)
        return SKV_ENOMEM;
    int rc = 0;
    for (uint64_t done = 0; done < rows && rc == 0;) {
        uint64_t n = rows - done < per ? rows - done : per;
        skv_convert_from_f32(dtype, data + done * cols, tmp, (size_t)(n * cols));
        rc = blocks_write_raw(s, type, kind, dtype, layer, head, row0 + done, n, cols, tmp);
        done += n;
    }
    free(tmp);
    return rc;
}

int skv_tens_write(skv_stream *s, uint32_t kind, uint32_t dtype, uint32_t layer, uint32_t head,
                   uint64_t row0, uint64_t rows, uint32_t cols, const float *data)
{
    return blocks_write(s, SKV_T_TENS, kind, dtype, layer, head, row0, rows, cols, data);
}

/* ---- hidden states (hidn) ---- */

int skv_hidn_write(skv_stream *s, uint32_t dtype, uint32_t layer, uint64_t row0, uint64_t rows,
                   uint32_t cols, const float *data)
{
    return blocks_write(s, SKV_T_HIDN, SKV_TK_HIDDEN, dtype, layer, 0, row0, rows, cols, data);
}

int skv_hidn_decode(const skv_chunk *c, skv_tens *t)
{
    const uint8_t *p = c->data;
    if (c->raw_size < SKV_TENS_HEADER_LEN)
        return skv_error(SKV_EFORMAT, "hidn chunk at byte %llu too short",
                         (unsigned long long)c->offset);
    t->kind = skv_get32(p);
    t->dtype = skv_get32(p + 4);
    t->layer = skv_get32(p + 8);
    t->head = skv_get32(p + 12);
    t->row0 = skv_get64(p + 16);
    t->rows = skv_get64(p + 24);
    t->cols = skv_get32(p + 32);
    t->data = p + SKV_TENS_HEADER_LEN;
    size_t es = skv_dtype_size(t->dtype), n;
    if (t->kind != SKV_TK_HIDDEN || t->head != 0 || !es || skv_get32(p + 36) != 0)
        return skv_error(SKV_EFORMAT, "hidn chunk at byte %llu: kind %u, head %u, type %u "
                         "(need 6, 0, a known type, reserved zero)",
                         (unsigned long long)c->offset, t->kind, t->head, t->dtype);
    if (t->rows < 1 || t->rows > SKV_MAX_TOKENS || t->cols < 1 || t->cols > SKV_MAX_TOKENS ||
        skv_mul_sizes(&n, 3, (size_t)t->rows, (size_t)t->cols, es) ||
        n + SKV_TENS_HEADER_LEN != c->raw_size)
        return skv_error(SKV_EFORMAT, "hidn chunk at byte %llu: %llu rows x %u cols of %s "
                         "do not match its payload of %llu bytes",
                         (unsigned long long)c->offset, (unsigned long long)t->rows, t->cols,
                         skv_dtype_name(t->dtype), (unsigned long long)c->raw_size);
    return 0;
}

skv_hidden *skv_hidden_new(uint32_t n_layers, uint64_t n_tokens)
{
    if (!n_layers || n_layers > SKV_MAX_LAYERS || !n_tokens || n_tokens > SKV_MAX_TOKENS) {
        skv_error(SKV_EINVAL, "hidden states: %u layers x %llu tokens out of range", n_layers,
                  (unsigned long long)n_tokens);
        return NULL;
    }
    skv_hidden *hs = skv_calloc(1, sizeof *hs);
    if (!hs)
        return NULL;
    hs->n_layers = n_layers;
    hs->n_tokens = n_tokens;
    hs->h = skv_calloc(n_layers, sizeof *hs->h);
    hs->rows = skv_calloc(n_layers, sizeof *hs->rows);
    if (!hs->h || !hs->rows) {
        skv_hidden_free(hs);
        return NULL;
    }
    return hs;
}

void skv_hidden_free(skv_hidden *hs)
{
    if (!hs)
        return;
    if (hs->h)
        for (uint32_t l = 0; l < hs->n_layers; l++)
            free(hs->h[l]);
    free(hs->h);
    free(hs->rows);
    free(hs);
}

int skv_hidden_add(skv_hidden *hs, const skv_chunk *c)
{
    if (!skv_chunk_is(c, SKV_T_HIDN))
        return 0;
    skv_tens t;
    int rc = skv_hidn_decode(c, &t);
    if (rc < 0)
        return rc;
    if (t.layer >= hs->n_layers)
        return skv_error(SKV_EFORMAT, "hidn chunk at byte %llu: layer %u of %u",
                         (unsigned long long)c->offset, t.layer, hs->n_layers);
    if (hs->n_embd && t.cols != hs->n_embd)
        return skv_error(SKV_EFORMAT, "hidn chunk at byte %llu: %u columns, earlier blocks %u",
                         (unsigned long long)c->offset, t.cols, hs->n_embd);
    if (t.row0 != hs->rows[t.layer] || t.rows > hs->n_tokens - t.row0)
        return skv_error(SKV_EFORMAT, "hidn chunk at byte %llu: layer %u rows %llu..%llu, "
                         "expected to start at %llu of %llu", (unsigned long long)c->offset,
                         t.layer, (unsigned long long)t.row0,
                         (unsigned long long)(t.row0 + t.rows),
                         (unsigned long long)hs->rows[t.layer], (unsigned long long)hs->n_tokens);
    if (!hs->n_embd) {
        size_t n;
        if (skv_mul_sizes(&n, 3, (size_t)hs->n_tokens, (size_t)t.cols, sizeof(float)) < 0)
            return skv_error(SKV_ELIMIT, "hidden states: %llu x %u floats overflow",
                             (unsigned long long)hs->n_tokens, t.cols);
        hs->n_embd = t.cols;
    }
    if (!hs->h[t.layer] &&
        !(hs->h[t.layer] = skv_malloc((size_t)hs->n_tokens * hs->n_embd * sizeof(float))))
        return SKV_ENOMEM;
    skv_tens_to_f32(&t, hs->h[t.layer] + (size_t)t.row0 * hs->n_embd);
    hs->rows[t.layer] += t.rows;
    return 0;
}

int skv_hidden_complete(const skv_hidden *hs)
{
    for (uint32_t l = 0; l < hs->n_layers; l++)
        if (hs->rows[l] != hs->n_tokens)
            return 0;
    return 1;
}

int skv_toks_write(skv_stream *s, uint64_t t0, uint64_t n, const int32_t *ids)
{
    const uint64_t per = (SKV_CHUNK_MAX - 16) / 4;
    for (uint64_t done = 0; done < n;) {
        uint64_t k = n - done < per ? n - done : per;
        uint8_t h[16];
        skv_put64(h, t0 + done);
        skv_put64(h + 8, k);
        const void *pieces[2] = {h, ids + done};
        uint64_t lens[2] = {16, k * 4};
        int rc = skv_writev(s, SKV_T_TOKS, 2, pieces, lens);
        if (rc < 0)
            return rc;
        done += k;
    }
    return 0;
}

/* ---- streaming reader ---- */

static int next_chunk(skv_trace_reader *r, skv_chunk *c)
{
    if (r->has_pending) {
        *c = r->pending;
        r->has_pending = 0;
        return 1;
    }
    if (r->at_end)
        return 0;
    int rc = skv_read(r->s, c);
    if (rc == 0)
        r->at_end = 1;
    return rc;
}

/* Give a non-trace chunk to the callback. */
static int pass_other(skv_trace_reader *r, const skv_chunk *c)
{
    return r->other ? r->other(r->other_ctx, c) : 0;
}

static int is_trace_chunk(const skv_chunk *c)
{
    return skv_chunk_is(c, SKV_T_TENS) || skv_chunk_is(c, SKV_T_TOKS) ||
           skv_chunk_is(c, SKV_T_TRHD);
}

skv_trace_reader *skv_trace_reader_open(const char *path, skv_chunk_fn other, void *ctx)
{
    skv_stream *s = skv_open_read(path);
    return s ? skv_trace_reader_open_stream(s, other, ctx) : NULL;
}

skv_trace_reader *skv_trace_reader_open_stream(skv_stream *s, skv_chunk_fn other, void *ctx)
{
    skv_trace_reader *r = skv_calloc(1, sizeof *r);
    if (!r) {
        skv_close(s);
        return NULL;
    }
    r->other = other;
    r->other_ctx = ctx;
    r->s = s;
    skv_chunk c;
    int rc;
    for (;;) {
        rc = next_chunk(r, &c);
        if (rc < 0)
            goto fail;
        if (rc == 0) {
            skv_error(SKV_EFORMAT, "no trace header (TRHD) in stream");
            goto fail;
        }
        if (skv_chunk_is(&c, SKV_T_TRHD))
            break;
        if (is_trace_chunk(&c)) {
            skv_error(SKV_EFORMAT, "%s chunk at byte %llu before the trace header",
                      c.type, (unsigned long long)c.offset);
            goto fail;
        }
        if (pass_other(r, &c) < 0)
            goto fail;
    }
    if (skv_trhd_decode(&c, &r->hdr) < 0)
        goto fail;
    if (r->hdr.flags & (SKV_TRACE_PACKED | SKV_TRACE_NO_QUERIES)) {
        skv_error(SKV_EFORMAT, "this stream holds a packed cache%s, not a trace "
                  "(use skv-quant -d to dequantize it)",
                  (r->hdr.flags & SKV_TRACE_NO_QUERIES) ? " without queries" : "");
        goto fail;
    }
    if (r->hdr.flags & SKV_TRACE_HAS_TOKENS) {
        uint64_t have = 0;
        size_t tcap = 0;
        while (have < r->hdr.n_tokens) {
            rc = next_chunk(r, &c);
            if (rc <= 0) {
                if (rc == 0)
                    skv_error(SKV_EFORMAT, "stream ends inside the token ids");
                goto fail;
            }
            if (!skv_chunk_is(&c, SKV_T_TOKS)) {
                if (is_trace_chunk(&c)) {
                    skv_error(SKV_EFORMAT, "%s chunk at byte %llu where token ids from %llu "
                              "were expected", c.type, (unsigned long long)c.offset,
                              (unsigned long long)have);
                    goto fail;
                }
                if (pass_other(r, &c) < 0)
                    goto fail;
                continue;
            }
            if (c.raw_size < 16) {
                skv_error(SKV_EFORMAT, "TOKS chunk at byte %llu too short",
                          (unsigned long long)c.offset);
                goto fail;
            }
            uint64_t t0 = skv_get64(c.data), n = skv_get64(c.data + 8);
            if (t0 != have || n == 0 || n > r->hdr.n_tokens - have || 16 + n * 4 != c.raw_size) {
                skv_error(SKV_EFORMAT, "TOKS chunk at byte %llu: tokens %llu+%llu do not "
                          "continue at %llu within %llu tokens and %llu payload bytes",
                          (unsigned long long)c.offset, (unsigned long long)t0,
                          (unsigned long long)n, (unsigned long long)have,
                          (unsigned long long)r->hdr.n_tokens, (unsigned long long)c.raw_size);
                goto fail;
            }
            /* the ids array grows with the TOKS chunks read */
            if (skv_grow((void **)&r->tokens, &tcap, (size_t)(have + n) * sizeof(int32_t),
                         (size_t)r->hdr.n_tokens * sizeof(int32_t)) < 0)
                goto fail;
            memcpy(r->tokens + have, c.data + 16, n * 4);
            have += n;
        }
    }
    return r;
fail:
    skv_trace_reader_close(r);
    return NULL;
}

void skv_trace_reader_close(skv_trace_reader *r)
{
    if (!r)
        return;
    skv_close(r->s);
    free(r->tokens);
    free(r);
}

void skv_layer_free(skv_layer *L)
{
    free(L->q);
    free(L->k);
    free(L->v);
    L->q = L->k = L->v = NULL;
    L->cap[0] = L->cap[1] = L->cap[2] = 0;
}

int skv_trace_next_layer(skv_trace_reader *r, skv_layer *L)
{
    const skv_trace_hdr *h = &r->hdr;
    if (r->next_layer >= h->n_layers)
        return skv_trace_reader_finish(r) < 0 ? -1 : 0;
    size_t nq = 0, nkv = 0;
    int rc = skv_trace_layer_floats(h, &nq, &nkv);
    if (rc < 0)
        return rc;
    /* Buffers are reused across layers: the caller passes back what we gave.
     * Ours grow as rows arrive (below); a caller's are full size. */
    int grow = !L->q || L->cap[0];
    L->index = r->next_layer;
    const uint32_t kinds[3] = {SKV_TK_Q, SKV_TK_K, SKV_TK_V};
    for (int ki = 0; ki < 3; ki++) {
        uint32_t nh = ki == 0 ? h->n_heads : h->n_kv_heads;
        float **dstp = ki == 0 ? &L->q : ki == 1 ? &L->k : &L->v;
        size_t full = (ki == 0 ? nq : nkv) * sizeof(float);
        for (uint32_t head = 0; head < nh; head++) {
            uint64_t have = 0;
            while (have < h->n_tokens) {
                skv_chunk c;
                rc = next_chunk(r, &c);
                if (rc < 0)
                    return rc;
                if (rc == 0)
                    return skv_error(SKV_EFORMAT, "stream ends inside layer %u "
                                     "(%s head %u, row %llu of %llu)", L->index,
                                     skv_tensor_kind_name(kinds[ki]), head,
                                     (unsigned long long)have,
                                     (unsigned long long)h->n_tokens);
                if (!skv_chunk_is(&c, SKV_T_TENS)) {
                    if (is_trace_chunk(&c))
                        return skv_error(SKV_EFORMAT, "unexpected %s chunk at byte %llu "
                                         "inside layer %u", c.type,
                                         (unsigned long long)c.offset, L->index);
                    if ((rc = pass_other(r, &c)) < 0)
                        return rc;
                    continue;
                }
                skv_tens t = {0};
                if ((rc = skv_tens_decode(&c, &t)) < 0)
                    return rc;
                if (t.kind != kinds[ki] || t.layer != L->index || t.head != head ||
                    t.row0 != have || t.rows == 0 || t.rows > h->n_tokens - have ||
                    t.cols != h->head_dim || t.dtype != h->dtype)
                    return skv_error(SKV_EFORMAT, "TENS chunk at byte %llu is %s layer %u "
                                     "head %u rows %llu+%llu (%u cols, %s); expected %s "
                                     "layer %u head %u from row %llu (%u cols, %s)",
                                     (unsigned long long)c.offset,
                                     skv_tensor_kind_name(t.kind), t.layer, t.head,
                                     (unsigned long long)t.row0, (unsigned long long)t.rows,
                                     t.cols, skv_dtype_name(t.dtype),
                                     skv_tensor_kind_name(kinds[ki]), L->index, head,
                                     (unsigned long long)have, h->head_dim,
                                     skv_dtype_name(h->dtype));
                size_t at = ((size_t)head * h->n_tokens + have) * h->head_dim;
                if (grow && (rc = skv_grow((void **)dstp, &L->cap[ki], (at + (size_t)t.rows *
                                           h->head_dim) * sizeof(float), full)) < 0)
                    return rc;
                skv_tens_to_f32(&t, *dstp + at);
                have += t.rows;
            }
        }
    }
    r->next_layer++;
    return 1;
}

int skv_trace_reader_finish(skv_trace_reader *r)
{
    skv_chunk c;
    int rc;
    while ((rc = next_chunk(r, &c)) > 0) {
        if (is_trace_chunk(&c))
            return skv_error(SKV_EFORMAT, "unexpected %s chunk at byte %llu after the "
                             "last layer", c.type, (unsigned long long)c.offset);
        if ((rc = pass_other(r, &c)) < 0)
            return rc;
    }
    return rc;
}

/* ---- whole traces ---- */

skv_trace *skv_trace_new(const skv_trace_hdr *h)
{
    if (skv_trace_hdr_check(h) < 0)
        return NULL;
    size_t nq = 0, nkv = 0;
    if (skv_trace_layer_floats(h, &nq, &nkv) < 0)
        return NULL;
    /* at most 1024 layers of 3 * 2^46 bytes: no overflow in 64 bits */
    if (skv_check_mem(((uint64_t)nq + 2 * (uint64_t)nkv) * sizeof(float) * h->n_layers +
                          ((h->flags & SKV_TRACE_HAS_TOKENS) ? h->n_tokens * 4 : 0),
                      "the whole trace") < 0)
        return NULL;
    skv_trace *t = skv_calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->hdr = *h;
    t->q = skv_calloc(h->n_layers, sizeof(float *));
    t->k = skv_calloc(h->n_layers, sizeof(float *));
    t->v = skv_calloc(h->n_layers, sizeof(float *));
    if (!t->q || !t->k || !t->v)
        goto fail;
    for (uint32_t l = 0; l < h->n_layers; l++) {
        t->q[l] = skv_calloc(nq, sizeof(float));
        t->k[l] = skv_calloc(nkv, sizeof(float));
        t->v[l] = skv_calloc(nkv, sizeof(float));
        if (!t->q[l] || !t->k[l] || !t->v[l])
            goto fail;
    }
    if (h->flags & SKV_TRACE_HAS_TOKENS) {
        t->tokens = skv_calloc((size_t)h->n_tokens, sizeof(int32_t));
        if (!t->tokens)
            goto fail;
    }
    return t;
fail:
    skv_trace_free(t);
    return NULL;
}

void skv_trace_free(skv_trace *t)
{
    if (!t)
        return;
    for (uint32_t l = 0; l < t->hdr.n_layers; l++) {
        if (t->q)
            free(t->q[l]);
        if (t->k)
            free(t->k[l]);
        if (t->v)
            free(t->v[l]);
    }
    free(t->q);
    free(t->k);
    free(t->v);
    free(t->tokens);
    free(t);
}

static int reject_critical(void *ctx, const skv_chunk *c)
{
    (void)ctx;
    if (skv_chunk_is_critical(c->type))
        return skv_error(SKV_EUNSUP, "unknown critical chunk %s at byte %llu",
                         c->type, (unsigned long long)c->offset);
    return 0;
}

int skv_trace_load(const char *path, skv_trace **out)
{
    return skv_trace_load_with(path, reject_critical, NULL, out);
}

int skv_trace_read_all(skv_trace_reader *r, skv_trace **out)
{
    *out = NULL;
    if (r->next_layer)
        return skv_error(SKV_EINVAL, "skv_trace_read_all: %u layers were already read",
                         r->next_layer);
    /* a shell whose layers are filled (and allocated) as their rows arrive */
    skv_trace *t = skv_calloc(1, sizeof *t);
    if (!t)
        return SKV_ENOMEM;
    t->hdr = r->hdr;
    t->q = skv_calloc(t->hdr.n_layers, sizeof(float *));
    t->k = skv_calloc(t->hdr.n_layers, sizeof(float *));
    t->v = skv_calloc(t->hdr.n_layers, sizeof(float *));
    int rc = 0;
    if (!t->q || !t->k || !t->v) {
        rc = SKV_ENOMEM;
        goto fail;
    }
    for (uint32_t l = 0; l < t->hdr.n_layers; l++) {
        skv_layer L = {0};
        if ((rc = skv_trace_next_layer(r, &L)) <= 0) {
            skv_layer_free(&L);
            if (rc == 0)
                rc = skv_error(SKV_EFORMAT, "missing layers");
            goto fail;
        }
        t->q[l] = L.q;
        t->k[l] = L.k;
        t->v[l] = L.v;
    }
    if ((rc = skv_trace_reader_finish(r)) < 0)
        goto fail;
    t->tokens = r->tokens;  /* complete: the reader checked every id */
    r->tokens = NULL;
    *out = t;
    return 0;
fail:
    skv_trace_free(t);
    return rc;
}

int skv_trace_load_with(const char *path, skv_chunk_fn other, void *ctx, skv_trace **out)
{
    *out = NULL;
    skv_trace_reader *r = skv_trace_reader_open(path, other, ctx);
    if (!r)
        return SKV_EFORMAT;
    int rc = skv_trace_read_all(r, out);
    skv_trace_reader_close(r);
    return rc;
}

int skv_trace_write(skv_stream *s, const skv_trace *t)
{
    const skv_trace_hdr *h = &t->hdr;
    int rc;
    if ((rc = skv_trhd_write(s, h)) < 0)
        return rc;
    if ((h->flags & SKV_TRACE_HAS_TOKENS) &&
        (rc = skv_toks_write(s, 0, h->n_tokens, t->tokens)) < 0)
        return rc;
    size_t per = (size_t)h->n_tokens * h->head_dim;
    for (uint32_t l = 0; l < h->n_layers; l++) {
        for (uint32_t i = 0; i < h->n_heads; i++)
            if ((rc = skv_tens_write(s, SKV_TK_Q, h->dtype, l, i, 0, h->n_tokens, h->head_dim,
                                     t->q[l] + i * per)) < 0)
                return rc;
        for (uint32_t i = 0; i < h->n_kv_heads; i++)
            if ((rc = skv_tens_write(s, SKV_TK_K, h->dtype, l, i, 0, h->n_tokens, h->head_dim,
                                     t->k[l] + i * per)) < 0)
                return rc;
        for (uint32_t i = 0; i < h->n_kv_heads; i++)
            if ((rc = skv_tens_write(s, SKV_TK_V, h->dtype, l, i, 0, h->n_tokens, h->head_dim,
                                     t->v[l] + i * per)) < 0)
                return rc;
    }
    return 0;
}

int skv_trace_save(const skv_trace *t, const char *path, int level)
{
    skv_stream *s = skv_open_write(path, level);
    if (!s)
        return SKV_EIO;
    int rc = skv_trace_write(s, t);
    if (rc < 0) {
        skv_discard(s);
        return rc;
    }
    return skv_close(s);
}
