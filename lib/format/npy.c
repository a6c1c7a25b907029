/* npy.c -- strict reader and writer of .npy headers. */
#include "smartkv_npy.h"
#include "smartkv_trace.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

static const uint8_t magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    return p;
}

/* Parse the Python dict literal {'descr': ..., 'fortran_order': ..., 'shape': (...), } */
static int parse_dict(const char *p, const char *end, skv_npy_hdr *h)
{
    int have_descr = 0, have_fo = 0, have_shape = 0;
    p = skip_ws(p, end);
    if (p >= end || *p++ != '{')
        return skv_error(SKV_EFORMAT, "npy header is not a dict");
    for (;;) {
        p = skip_ws(p, end);
        if (p < end && *p == '}')
            break;
        if (p >= end || *p != '\'')
            return skv_error(SKV_EFORMAT, "npy header: expected a quoted key");
        const char *k = ++p;
        while (p < end && *p != '\'')
            p++;
        if (p >= end)
            return skv_error(SKV_EFORMAT, "npy header: unterminated key");
        size_t klen = (size_t)(p - k);
        p = skip_ws(p + 1, end);
        if (p >= end || *p++ != ':')
            return skv_error(SKV_EFORMAT, "npy header: expected ':'");
        p = skip_ws(p, end);
        if (klen == 5 && !memcmp(k, "descr", 5)) {
            if (p >= end || *p != '\'')
                return skv_error(SKV_EFORMAT, "npy header: descr is not a string");
            const char *v = ++p;
            while (p < end && *p != '\'')
                p++;
            if (p >= end)
                return skv_error(SKV_EFORMAT, "npy header: unterminated descr");
            size_t vl = (size_t)(p - v);
            p++;
            if (vl == 3 && !memcmp(v, "<f4", 3))
                h->dtype = SKV_F32;
            else if (vl == 3 && !memcmp(v, "<f2", 3))
                h->dtype = SKV_F16;
            else if (vl >= 1 && v[0] == '>')
                return skv_error(SKV_EUNSUP, "npy dtype '%.*s' is big-endian "
                                 "(convert with arr.astype('<f4'))", (int)vl, v);
            else
                return skv_error(SKV_EUNSUP, "npy dtype '%.*s' is not float16 or float32",
                                 (int)(vl > 16 ? 16 : vl), v);
            have_descr = 1;
        } else if (klen == 13 && !memcmp(k, "fortran_order", 13)) {
            if (end - p >= 5 && !memcmp(p, "False", 5)) {
                p += 5;
            } else if (end - p >= 4 && !memcmp(p, "True", 4)) {
                return skv_error(SKV_EUNSUP, "npy array is in Fortran order "
                                 "(save it with np.ascontiguousarray)");
            } else {
                return skv_error(SKV_EFORMAT, "npy header: bad fortran_order value");
            }
            have_fo = 1;
        } else if (klen == 5 && !memcmp(k, "shape", 5)) {
            if (p >= end || *p++ != '(')
                return skv_error(SKV_EFORMAT, "npy header: shape is not a tuple");
            h->ndim = 0;
            for (;;) {
                p = skip_ws(p, end);
                if (p < end && *p == ')') {
                    p++;
                    break;
                }
                if (p >= end || !isdigit((unsigned char)*p))
                    return skv_error(SKV_EFORMAT, "npy header: bad shape entry");
                uint64_t v = 0;
                while (p < end && isdigit((unsigned char)*p)) {
                    if (v > (UINT64_MAX - 9) / 10)
                        return skv_error(SKV_ELIMIT, "npy header: shape entry overflows");
                    v = v * 10 + (uint64_t)(*p++ - '0');
                }
                if (p < end && *p == 'L')
                    p++;
                if (h->ndim >= SKV_NPY_MAX_DIMS)
                    return skv_error(SKV_ELIMIT, "npy array has more than %d dimensions",
                                     SKV_NPY_MAX_DIMS);
                h->shape[h->ndim++] = v;
                p = skip_ws(p, end);
                if (p < end && *p == ',')
                    p++;
                else if (p < end && *p == ')')
                    continue;
                else
                    return skv_error(SKV_EFORMAT, "npy header: bad shape tuple");
            }
            have_shape = 1;
        } else {
            return skv_error(SKV_EFORMAT, "npy header: unexpected key '%.*s'",
                             (int)(klen > 32 ? 32 : klen), k);
        }
        p = skip_ws(p, end);
        if (p < end && *p == ',')
            p++;
        else if (p < end && *p == '}')
            continue;
        else
            return skv_error(SKV_EFORMAT, "npy header: expected ',' or '}'");
    }
    if (!have_descr || !have_fo || !have_shape)
        return skv_error(SKV_EFORMAT, "npy header lacks %s", !have_descr ? "descr"
                         : !have_fo ? "fortran_order" : "shape");
    size_t bytes = skv_dtype_size(h->dtype);
    for (int i = 0; i < h->ndim; i++)
        if (skv_mul_size(bytes, (size_t)h->shape[i], &bytes) || h->shape[i] > UINT32_MAX)
            return skv_error(SKV_ELIMIT, "npy shape too large");
    h->data_bytes = bytes;
    return 0;
}

int skv_npy_parse(const uint8_t *buf, size_t n, skv_npy_hdr *h)
{
    memset(h, 0, sizeof *h);
    if (n < 10)
        return n < 6 && memcmp(buf, magic, n) != 0 ? skv_error(SKV_EFORMAT, "not a .npy file (bad magic)") : 10;
    if (memcmp(buf, magic, 6) != 0)
        return skv_error(SKV_EFORMAT, "not a .npy file (bad magic)");
    uint8_t major = buf[6];
    size_t hlen, pre;
    if (major == 1) {
        hlen = (size_t)buf[8] | (size_t)buf[9] << 8;
        pre = 10;
    } else if (major == 2 || major == 3) {
        if (n < 12)
            return 12;
        hlen = (size_t)buf[8] | (size_t)buf[9] << 8 | (size_t)buf[10] << 16 | (size_t)buf[11] << 24;
        pre = 12;
    } else {
        return skv_error(SKV_EVERSION, "unsupported .npy format version %u.%u", major, buf[7]);
    }
    if (hlen > SKV_NPY_MAX_HEADER)
        return skv_error(SKV_ELIMIT, "npy header length %zu exceeds %u", hlen, SKV_NPY_MAX_HEADER);
    if (n < pre + hlen)
        return (int)(pre + hlen);
    const char *p = (const char *)buf + pre, *end = p + hlen;
    while (end > p && (end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\0'))
        end--;
    int rc = parse_dict(p, end, h);
    if (rc < 0)
        return rc;
    h->data_offset = pre + hlen;
    return 0;
}

int skv_npy_read_header(FILE *f, uint64_t file_size, skv_npy_hdr *h)
{
    uint8_t *buf = NULL;
    size_t have = 0, want = 12;
    int rc;
    for (;;) {
        uint8_t *nb = skv_realloc(buf, want);
        if (!nb) {
            free(buf);
            return SKV_ENOMEM;
        }
        buf = nb;
        size_t got = fread(buf + have, 1, want - have, f);
        have += got;
        rc = skv_npy_parse(buf, have, h);
        if (rc <= 0)
            break;
        if (got == 0 || (size_t)rc <= have) {
            rc = ferror(f) ? skv_error(SKV_EIO, "read error: %s", strerror(errno))
                           : skv_error(SKV_ETRUNC, "truncated .npy header");
            break;
        }
        want = (size_t)rc;
    }
    free(buf);
    if (rc < 0)
        return rc;
    if (file_size != UINT64_MAX && file_size != h->data_offset + h->data_bytes)
        return skv_error(SKV_EFORMAT, "file size %llu does not match its header "
                         "(%llu header bytes + %llu data bytes)",
                         (unsigned long long)file_size, (unsigned long long)h->data_offset,
                         (unsigned long long)h->data_bytes);
    return 0;
}

int skv_npy_format_header(uint32_t dtype, int ndim, const uint64_t *shape, uint8_t *buf,
                          size_t cap)
{
    char dict[512];
    int n = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (",
                     dtype == SKV_F16 ? "<f2" : "<f4");
    for (int i = 0; i < ndim; i++)
        n += snprintf(dict + n, sizeof dict - (size_t)n, "%llu,%s",
                      (unsigned long long)shape[i], i + 1 < ndim ? " " : "");
    n += snprintf(dict + n, sizeof dict - (size_t)n, "), }");
    size_t total = 10 + (size_t)n + 1;
    size_t padded = (total + 63) / 64 * 64;
    if (padded > cap || padded - 10 > 65535)
        return skv_error(SKV_EINVAL, "npy header too long");
    memcpy(buf, magic, 6);
    buf[6] = 1;
    buf[7] = 0;
    buf[8] = (uint8_t)((padded - 10) & 0xff);
    buf[9] = (uint8_t)((padded - 10) >> 8);
    memcpy(buf + 10, dict, (size_t)n);
    memset(buf + 10 + n, ' ', padded - 10 - (size_t)n - 1);
    buf[padded - 1] = '\n';
    return (int)padded;
}
