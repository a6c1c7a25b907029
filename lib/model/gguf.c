/* gguf.c -- GGUF v2/v3 reader: header, metadata, tensor infos, mapped data.
 *
 * Every read goes through a bounds-checked cursor; every count is bounded by
 * the bytes that remain (each element needs at least a known number of
 * bytes) before anything is allocated, and every size is computed with
 * overflow checks.  Errors name the file, the byte offset and the key or
 * tensor involved.
 */
#include "smartkv_gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct cursor {
    const uint8_t *base;
    size_t size;
    size_t pos;
    const char *name;
} cursor;

static size_t cur_left(const cursor *c) { return c->size - c->pos; }

static int cur_need(cursor *c, uint64_t n, const char *what)
{
    if (n > cur_left(c))
        return skv_error(SKV_ETRUNC, "%s: truncated: %s needs %llu bytes at offset %zu, %zu left",
                         c->name, what, (unsigned long long)n, c->pos, cur_left(c));
    return 0;
}

static int cur_u32(cursor *c, uint32_t *v, const char *what)
{
    int rc = cur_need(c, 4, what);
    if (rc < 0)
        return rc;
    const uint8_t *p = c->base + c->pos;
    *v = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
    c->pos += 4;
    return 0;
}

static int cur_u64(cursor *c, uint64_t *v, const char *what)
{
    uint32_t lo, hi;
    int rc = cur_u32(c, &lo, what);
    if (rc < 0 || (rc = cur_u32(c, &hi, what)) < 0)
        return rc;
    *v = (uint64_t)hi << 32 | lo;
    return 0;
}

/* A length-prefixed string: *s points into the buffer. */
static int cur_str(cursor *c, const char **s, uint64_t *len, const char *what)
{
    size_t at = c->pos;
    int rc = cur_u64(c, len, what);
    if (rc < 0)
        return rc;
    if (*len > cur_left(c))
        return skv_error(SKV_ETRUNC, "%s: %s at offset %zu: length %llu exceeds the %zu bytes left",
                         c->name, what, at, (unsigned long long)*len, cur_left(c));
    *s = (const char *)c->base + c->pos;
    c->pos += (size_t)*len;
    return 0;
}

static int dup_name(cursor *c, const char *s, uint64_t len, size_t at, const char *what,
                    char **out)
{
    if (len > SKV_GGUF_MAX_KEY)
        return skv_error(SKV_ELIMIT, "%s: %s at offset %zu is %llu bytes long (limit %u)", c->name,
                         what, at, (unsigned long long)len, SKV_GGUF_MAX_KEY);
    if (memchr(s, 0, (size_t)len))
        return skv_error(SKV_EFORMAT, "%s: %s at offset %zu contains a NUL byte", c->name, what, at);
    char *d = skv_malloc((size_t)len + 1);
    if (!d)
        return SKV_ENOMEM;
    memcpy(d, s, (size_t)len);
    d[len] = 0;
    *out = d;
    return 0;
}

static size_t scalar_size(uint32_t t)
{
    switch (t) {
    case SKV_GGUF_U8: case SKV_GGUF_I8: case SKV_GGUF_BOOL: return 1;
    case SKV_GGUF_U16: case SKV_GGUF_I16: return 2;
    case SKV_GGUF_U32: case SKV_GGUF_I32: case SKV_GGUF_F32: return 4;
    case SKV_GGUF_U64: case SKV_GGUF_I64: case SKV_GGUF_F64: return 8;
    default: return 0;
    }
}

const char *skv_gguf_vtype_name(uint32_t t)
{
    static const char *const names[] = {"u8", "i8", "u16", "i16", "u32", "i32", "f32",
                                        "bool", "string", "array", "u64", "i64", "f64"};
    return t < sizeof names / sizeof names[0] ? names[t] : "unknown";
}

static void decode_scalar(uint32_t t, const uint8_t *p, skv_gguf_value *v)
{
    uint64_t u = 0;
    size_t n = scalar_size(t);
    for (size_t i = 0; i < n; i++)
        u |= (uint64_t)p[i] << (8 * i);
    switch (t) {
    case SKV_GGUF_I8: v->num.i = (int64_t)((u & 0xffu) ^ 0x80u) - 0x80; break; /* sign-extend */
    case SKV_GGUF_I16: v->num.i = (int16_t)u; break;
    case SKV_GGUF_I32: v->num.i = (int32_t)u; break;
    case SKV_GGUF_I64: v->num.i = (int64_t)u; break;
    case SKV_GGUF_F32: {
        union { uint32_t u; float f; } x = {(uint32_t)u};
        v->num.f = x.f;
        break;
    }
    case SKV_GGUF_F64: {
        union { uint64_t u; double f; } x = {u};
        v->num.f = x.f;
        break;
    }
    default: v->num.u = u; break;
    }
}

static int parse_value(cursor *c, uint32_t type, skv_gguf_value *v, const char *key, int depth)
{
    size_t at = c->pos;
    memset(v, 0, sizeof *v);
    v->type = type;
    size_t sz = scalar_size(type);
    if (sz) {
        int rc = cur_need(c, sz, key);
        if (rc < 0)
            return rc;
        decode_scalar(type, c->base + c->pos, v);
        if (type == SKV_GGUF_BOOL && v->num.u > 1)
            return skv_error(SKV_EFORMAT, "%s: key %s at offset %zu: bool value %llu is not 0 or 1",
                             c->name, key, at, (unsigned long long)v->num.u);
        c->pos += sz;
        return 0;
    }
    if (type == SKV_GGUF_STRING)
        return cur_str(c, &v->str, &v->len, key);
    if (type != SKV_GGUF_ARRAY)
        return skv_error(SKV_EFORMAT, "%s: key %s at offset %zu: unknown value type %u", c->name,
                         key, at, type);
    if (depth >= (int)SKV_GGUF_MAX_NEST)
        return skv_error(SKV_EUNSUP, "%s: key %s at offset %zu: nested arrays are not supported",
                         c->name, key, at);
    int rc;
    if ((rc = cur_u32(c, &v->elem_type, key)) < 0 || (rc = cur_u64(c, &v->len, key)) < 0)
        return rc;
    size_t start = c->pos;
    sz = scalar_size(v->elem_type);
    if (sz) {
        if (v->len > cur_left(c) / sz)
            return skv_error(SKV_ETRUNC, "%s: key %s at offset %zu: array of %llu %s elements "
                             "exceeds the %zu bytes left", c->name, key, at,
                             (unsigned long long)v->len, skv_gguf_vtype_name(v->elem_type),
                             cur_left(c));
        if (v->elem_type == SKV_GGUF_BOOL)
            for (uint64_t i = 0; i < v->len; i++)
                if (c->base[c->pos + i] > 1)
                    return skv_error(SKV_EFORMAT, "%s: key %s: bool element %llu is not 0 or 1",
                                     c->name, key, (unsigned long long)i);
        c->pos += (size_t)(v->len * sz);
    } else if (v->elem_type == SKV_GGUF_STRING) {
        if (v->len > cur_left(c) / 8)
            return skv_error(SKV_ETRUNC, "%s: key %s at offset %zu: array of %llu strings exceeds "
                             "the %zu bytes left", c->name, key, at, (unsigned long long)v->len,
                             cur_left(c));
        for (uint64_t i = 0; i < v->len; i++) {
            const char *s;
            uint64_t n;
            if ((rc = cur_str(c, &s, &n, key)) < 0)
                return rc;
        }
    } else if (v->elem_type == SKV_GGUF_ARRAY) {
        return skv_error(SKV_EUNSUP, "%s: key %s at offset %zu: nested arrays are not supported",
                         c->name, key, at);
    } else {
        return skv_error(SKV_EFORMAT, "%s: key %s at offset %zu: unknown array element type %u",
                         c->name, key, at, v->elem_type);
    }
    v->data = c->base + start;
    v->nbytes = c->pos - start;
    return 0;
}

static int cmp_strp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Reject duplicate names (sorting a temporary pointer array). */
static int check_unique(const char *fname, char **names, uint64_t n, size_t stride,
                        const char *what)
{
    if (n < 2)
        return 0;
    char **tmp = skv_malloc((size_t)n * sizeof *tmp);
    if (!tmp)
        return SKV_ENOMEM;
    for (uint64_t i = 0; i < n; i++)
        tmp[i] = *(char **)((char *)names + i * stride);
    qsort(tmp, (size_t)n, sizeof *tmp, cmp_strp);
    int rc = 0;
    for (uint64_t i = 1; i < n; i++)
        if (!strcmp(tmp[i - 1], tmp[i])) {
            rc = skv_error(SKV_EFORMAT, "%s: duplicate %s \"%s\"", fname, what, tmp[i]);
            break;
        }
    free(tmp);
    return rc;
}

static void gguf_free_parts(skv_gguf *g)
{
    if (g->kv)
        for (uint64_t i = 0; i < g->n_kv; i++)
            free(g->kv[i].key);
    if (g->tensors)
        for (uint64_t i = 0; i < g->n_tensors; i++)
            free(g->tensors[i].name);
    free(g->kv);
    free(g->tensors);
    g->kv = NULL;
    g->tensors = NULL;
}

static int parse(skv_gguf *g)
{
    cursor c = {g->base, g->size, 0, g->path};
    int rc = cur_need(&c, 4, "magic");
    if (rc < 0)
        return rc;
    if (memcmp(g->base, SKV_GGUF_MAGIC, 4) != 0)
        return skv_error(SKV_EFORMAT, "%s: not a GGUF file (bad magic at offset 0)", c.name);
    c.pos = 4;
    if ((rc = cur_u32(&c, &g->version, "version")) < 0)
        return rc;
    if (g->version == 1)
        return skv_error(SKV_EVERSION, "%s: GGUF version 1 is not supported (need 2 or 3)", c.name);
    if (g->version != 2 && g->version != 3) {
        if ((g->version & 0xffff) == 0 && g->version)
            return skv_error(SKV_EUNSUP, "%s: big-endian GGUF is not supported", c.name);
        return skv_error(SKV_EVERSION, "%s: unsupported GGUF version %u (need 2 or 3)", c.name,
                         g->version);
    }
    uint64_t nt, nkv;
    if ((rc = cur_u64(&c, &nt, "tensor count")) < 0 || (rc = cur_u64(&c, &nkv, "metadata count")) < 0)
        return rc;
    /* Each key/value needs >= 13 bytes (8 length + 4 type + 1 value),
     * each tensor info >= 28 (8 name + 4 dims + 8 ne + 4 type + 8 offset). */
    if (nkv > cur_left(&c) / 13)
        return skv_error(SKV_ETRUNC, "%s: %llu metadata entries cannot fit in the %zu bytes left",
                         c.name, (unsigned long long)nkv, cur_left(&c));
    if (nt > cur_left(&c) / 32)
        return skv_error(SKV_ETRUNC, "%s: %llu tensor infos cannot fit in the %zu bytes left",
                         c.name, (unsigned long long)nt, cur_left(&c));
    g->kv = skv_calloc(nkv ? (size_t)nkv : 1, sizeof *g->kv);
    if (!g->kv)
        return SKV_ENOMEM;
    g->n_kv = nkv;
    g->alignment = SKV_GGUF_DEFAULT_ALIGNMENT;
    for (uint64_t i = 0; i < nkv; i++) {
        size_t at = c.pos;
        const char *k;
        uint64_t klen;
        uint32_t type;
        if ((rc = cur_str(&c, &k, &klen, "metadata key")) < 0)
            return rc;
        if ((rc = dup_name(&c, k, klen, at, "metadata key", &g->kv[i].key)) < 0)
            return rc;
        if ((rc = cur_u32(&c, &type, g->kv[i].key)) < 0)
            return rc;
        if ((rc = parse_value(&c, type, &g->kv[i].v, g->kv[i].key, 0)) < 0)
            return rc;
        if (!strcmp(g->kv[i].key, "general.alignment")) {
            const skv_gguf_value *v = &g->kv[i].v;
            if (v->type != SKV_GGUF_U32 || v->num.u == 0 || (v->num.u & (v->num.u - 1)) ||
                v->num.u > 65536)
                return skv_error(SKV_EFORMAT, "%s: general.alignment at offset %zu must be a "
                                 "power of two u32 <= 65536", c.name, at);
            g->alignment = (uint32_t)v->num.u;
        }
    }
    if ((rc = check_unique(c.name, &g->kv[0].key, nkv, sizeof *g->kv, "metadata key")) < 0)
        return rc;

    g->tensors = skv_calloc(nt ? (size_t)nt : 1, sizeof *g->tensors);
    if (!g->tensors)
        return SKV_ENOMEM;
    g->n_tensors = nt;
    for (uint64_t i = 0; i < nt; i++) {
        skv_gguf_tensor *t = &g->tensors[i];
        size_t at = c.pos;
        const char *nm;
        uint64_t nlen;
        if ((rc = cur_str(&c, &nm, &nlen, "tensor name")) < 0)
            return rc;
        if ((rc = dup_name(&c, nm, nlen, at, "tensor name", &t->name)) < 0)
            return rc;
        if ((rc = cur_u32(&c, &t->n_dims, t->name)) < 0)
            return rc;
        if (t->n_dims < 1 || t->n_dims > SKV_GGUF_MAX_DIMS)
            return skv_error(SKV_EFORMAT, "%s: tensor %s at offset %zu: %u dimensions (need 1..%u)",
                             c.name, t->name, at, t->n_dims, SKV_GGUF_MAX_DIMS);
        for (uint32_t d = 0; d < SKV_GGUF_MAX_DIMS; d++)
            t->ne[d] = 1;
        for (uint32_t d = 0; d < t->n_dims; d++) {
            if ((rc = cur_u64(&c, &t->ne[d], t->name)) < 0)
                return rc;
            if (t->ne[d] == 0 || t->ne[d] > ((uint64_t)1 << 40))
                return skv_error(SKV_EFORMAT, "%s: tensor %s: dimension %u is %llu (need 1..2^40)",
                                 c.name, t->name, d, (unsigned long long)t->ne[d]);
        }
        if ((rc = cur_u32(&c, &t->type, t->name)) < 0 || (rc = cur_u64(&c, &t->offset, t->name)) < 0)
            return rc;
        if (!skv_ggml_type_name(t->type))
            return skv_error(SKV_EUNSUP, "%s: tensor %s: unsupported ggml type %u", c.name,
                             t->name, t->type);
        uint64_t rows, row_bytes;
        if (__builtin_mul_overflow(t->ne[1], t->ne[2], &rows) ||
            __builtin_mul_overflow(rows, t->ne[3], &rows) ||
            __builtin_mul_overflow(rows, t->ne[0], &t->nelem) || t->nelem > ((uint64_t)1 << 50))
            return skv_error(SKV_ELIMIT, "%s: tensor %s: element count overflows", c.name, t->name);
        if (t->ne[0] % skv_ggml_block_elems(t->type))
            return skv_error(SKV_EFORMAT, "%s: tensor %s: row length %llu is not a multiple of "
                             "the %s block (%u)", c.name, t->name, (unsigned long long)t->ne[0],
                             skv_ggml_type_name(t->type), skv_ggml_block_elems(t->type));
        if ((rc = skv_ggml_row_bytes(t->type, t->ne[0], &row_bytes)) < 0)
            return rc;
        if (__builtin_mul_overflow(row_bytes, rows, &t->nbytes))
            return skv_error(SKV_ELIMIT, "%s: tensor %s: byte size overflows", c.name, t->name);
        if (t->offset % g->alignment)
            return skv_error(SKV_EFORMAT, "%s: tensor %s: data offset %llu is not a multiple of "
                             "the alignment %u", c.name, t->name, (unsigned long long)t->offset,
                             g->alignment);
    }
    if ((rc = check_unique(c.name, &g->tensors[0].name, nt, sizeof *g->tensors, "tensor name")) < 0)
        return rc;

    uint64_t data = ((uint64_t)c.pos + g->alignment - 1) / g->alignment * g->alignment;
    if (nt && data > g->size)
        return skv_error(SKV_ETRUNC, "%s: truncated: the tensor data section would start at offset "
                         "%llu beyond the end of the file (%zu bytes)", c.name,
                         (unsigned long long)data, g->size);
    g->data_offset = data;
    for (uint64_t i = 0; i < nt; i++) {
        skv_gguf_tensor *t = &g->tensors[i];
        uint64_t start, end;
        if (__builtin_add_overflow(data, t->offset, &start) ||
            __builtin_add_overflow(start, t->nbytes, &end) || end > g->size)
            return skv_error(SKV_ETRUNC, "%s: tensor %s: data [%llu, +%llu) lies beyond the end of "
                             "the file (%zu bytes)", c.name, t->name,
                             (unsigned long long)t->offset, (unsigned long long)t->nbytes, g->size);
        t->data = g->base + start;
    }
    return 0;
}

static skv_gguf *finish_open(skv_gguf *g)
{
    int rc = parse(g);
    if (rc < 0) {
        skv_gguf_close(g);
        return NULL;
    }
    return g;
}

skv_gguf *skv_gguf_open_mem(const void *buf, size_t size, const char *name)
{
    if (!buf && size)
        return skv_error(SKV_EINVAL, "skv_gguf_open_mem: NULL buffer"), NULL;
    skv_gguf *g = skv_calloc(1, sizeof *g);
    if (!g)
        return NULL;
    g->base = buf;
    g->size = size;
    const char *nm = name ? name : "(memory)";
    g->path = skv_malloc(strlen(nm) + 1);
    if (!g->path) {
        free(g);
        return NULL;
    }
    memcpy(g->path, nm, strlen(nm) + 1);
    return finish_open(g);
}

skv_gguf *skv_gguf_open(const char *path)
{
    if (!path)
        return skv_error(SKV_EINVAL, "skv_gguf_open: no path"), NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return skv_error(SKV_EIO, "%s: %s", path, strerror(errno)), NULL;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        skv_error(SKV_EIO, "%s: %s", path, strerror(errno));
        close(fd);
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        skv_error(SKV_EINVAL, "%s: not a regular file (a model must be mappable)", path);
        close(fd);
        return NULL;
    }
    if (st.st_size < 24) {
        skv_error(SKV_ETRUNC, "%s: truncated: %lld bytes is too short for a GGUF header", path,
                  (long long)st.st_size);
        close(fd);
        return NULL;
    }
    if ((uint64_t)st.st_size > SIZE_MAX) {
        skv_error(SKV_ELIMIT, "%s: too large to map", path);
        close(fd);
        return NULL;
    }
    void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (m == MAP_FAILED)
        return skv_error(SKV_EIO, "%s: mmap: %s", path, strerror(e)), NULL;
    skv_gguf *g = skv_calloc(1, sizeof *g);
    if (!g) {
        munmap(m, (size_t)st.st_size);
        return NULL;
    }
    g->base = m;
    g->size = (size_t)st.st_size;
    g->mapped = 1;
    g->path = skv_malloc(strlen(path) + 1);
    if (!g->path) {
        skv_gguf_close(g);
        return NULL;
    }
    memcpy(g->path, path, strlen(path) + 1);
    return finish_open(g);
}

void skv_gguf_close(skv_gguf *g)
{
    if (!g)
        return;
    gguf_free_parts(g);
    if (g->mapped && g->base)
        munmap((void *)g->base, g->size);
    free(g->path);
    free(g);
}

const skv_gguf_kv *skv_gguf_find(const skv_gguf *g, const char *key)
{
    for (uint64_t i = 0; i < g->n_kv; i++)
        if (!strcmp(g->kv[i].key, key))
            return &g->kv[i];
    return NULL;
}

const skv_gguf_tensor *skv_gguf_tensor_find(const skv_gguf *g, const char *name)
{
    for (uint64_t i = 0; i < g->n_tensors; i++)
        if (!strcmp(g->tensors[i].name, name))
            return &g->tensors[i];
    return NULL;
}

static const skv_gguf_value *need(const skv_gguf *g, const char *key)
{
    const skv_gguf_kv *kv = skv_gguf_find(g, key);
    if (!kv) {
        skv_error(SKV_EFORMAT, "%s: metadata key %s is missing", g->path, key);
        return NULL;
    }
    return &kv->v;
}

static int bad_type(const skv_gguf *g, const char *key, const skv_gguf_value *v, const char *want)
{
    return skv_error(SKV_EFORMAT, "%s: metadata key %s has type %s (wanted %s)", g->path, key,
                     skv_gguf_vtype_name(v->type), want);
}

int skv_gguf_get_u64(const skv_gguf *g, const char *key, uint64_t *out)
{
    const skv_gguf_value *v = need(g, key);
    if (!v)
        return SKV_EFORMAT;
    switch (v->type) {
    case SKV_GGUF_U8: case SKV_GGUF_U16: case SKV_GGUF_U32: case SKV_GGUF_U64:
        *out = v->num.u;
        return 0;
    case SKV_GGUF_I8: case SKV_GGUF_I16: case SKV_GGUF_I32: case SKV_GGUF_I64:
        if (v->num.i < 0)
            return skv_error(SKV_EFORMAT, "%s: metadata key %s is negative (%lld)", g->path, key,
                             (long long)v->num.i);
        *out = (uint64_t)v->num.i;
        return 0;
    default:
        return bad_type(g, key, v, "an integer");
    }
}

int skv_gguf_get_u32(const skv_gguf *g, const char *key, uint32_t *out)
{
    uint64_t u;
    int rc = skv_gguf_get_u64(g, key, &u);
    if (rc < 0)
        return rc;
    if (u > UINT32_MAX)
        return skv_error(SKV_EFORMAT, "%s: metadata key %s = %llu does not fit 32 bits", g->path,
                         key, (unsigned long long)u);
    *out = (uint32_t)u;
    return 0;
}

int skv_gguf_get_f32(const skv_gguf *g, const char *key, float *out)
{
    const skv_gguf_value *v = need(g, key);
    if (!v)
        return SKV_EFORMAT;
    if (v->type == SKV_GGUF_F32 || v->type == SKV_GGUF_F64)
        *out = (float)v->num.f;
    else if (scalar_size(v->type) && v->type != SKV_GGUF_BOOL)
        *out = (v->type == SKV_GGUF_I8 || v->type == SKV_GGUF_I16 || v->type == SKV_GGUF_I32 ||
                v->type == SKV_GGUF_I64) ? (float)v->num.i : (float)v->num.u;
    else
        return bad_type(g, key, v, "a number");
    return 0;
}

int skv_gguf_get_bool(const skv_gguf *g, const char *key, int *out)
{
    const skv_gguf_value *v = need(g, key);
    if (!v)
        return SKV_EFORMAT;
    if (v->type != SKV_GGUF_BOOL)
        return bad_type(g, key, v, "bool");
    *out = (int)v->num.u;
    return 0;
}

int skv_gguf_get_str(const skv_gguf *g, const char *key, const char **s, uint64_t *len)
{
    const skv_gguf_value *v = need(g, key);
    if (!v)
        return SKV_EFORMAT;
    if (v->type != SKV_GGUF_STRING)
        return bad_type(g, key, v, "string");
    *s = v->str;
    *len = v->len;
    return 0;
}

int skv_gguf_get_strbuf(const skv_gguf *g, const char *key, char *buf, size_t n)
{
    const char *s;
    uint64_t len;
    int rc = skv_gguf_get_str(g, key, &s, &len);
    if (rc < 0)
        return rc;
    if (!n)
        return 0;
    size_t m = len < n - 1 ? (size_t)len : n - 1;
    memcpy(buf, s, m);
    buf[m] = 0;
    return 0;
}

int skv_gguf_array_strings(const skv_gguf_kv *kv, const char **ptrs, uint32_t *lens)
{
    const skv_gguf_value *v = &kv->v;
    if (v->type != SKV_GGUF_ARRAY || v->elem_type != SKV_GGUF_STRING)
        return skv_error(SKV_EFORMAT, "metadata key %s is not an array of strings", kv->key);
    /* Re-walk the already validated bytes. */
    const uint8_t *p = v->data, *end = v->data + v->nbytes;
    for (uint64_t i = 0; i < v->len; i++) {
        if (end - p < 8)
            return skv_error(SKV_EFORMAT, "metadata key %s: string %llu overruns", kv->key,
                             (unsigned long long)i);
        uint64_t n = 0;
        for (int b = 0; b < 8; b++)
            n |= (uint64_t)p[b] << (8 * b);
        p += 8;
        if (n > (uint64_t)(end - p) || n > UINT32_MAX)
            return skv_error(SKV_EFORMAT, "metadata key %s: string %llu overruns", kv->key,
                             (unsigned long long)i);
        ptrs[i] = (const char *)p;
        lens[i] = (uint32_t)n;
        p += n;
    }
    return 0;
}

int skv_gguf_array_int(const skv_gguf_kv *kv, uint64_t i, int64_t *out)
{
    const skv_gguf_value *v = &kv->v;
    size_t sz = v->type == SKV_GGUF_ARRAY ? scalar_size(v->elem_type) : 0;
    if (!sz || v->elem_type == SKV_GGUF_F32 || v->elem_type == SKV_GGUF_F64)
        return skv_error(SKV_EFORMAT, "metadata key %s is not an array of integers", kv->key);
    if (i >= v->len)
        return skv_error(SKV_EINVAL, "metadata key %s: index %llu out of range (%llu)", kv->key,
                         (unsigned long long)i, (unsigned long long)v->len);
    skv_gguf_value e;
    memset(&e, 0, sizeof e);
    decode_scalar(v->elem_type, v->data + i * sz, &e);
    switch (v->elem_type) {
    case SKV_GGUF_I8: case SKV_GGUF_I16: case SKV_GGUF_I32: case SKV_GGUF_I64:
        *out = e.num.i;
        break;
    default:
        if (e.num.u > INT64_MAX)
            return skv_error(SKV_EFORMAT, "metadata key %s: element %llu too large", kv->key,
                             (unsigned long long)i);
        *out = (int64_t)e.num.u;
    }
    return 0;
}
