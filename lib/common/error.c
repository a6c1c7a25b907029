/* error.c -- thread-local error messages, checked allocation, size math. */
#include "smartkv_error.h"

#include <errno.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Thread_local char errbuf[1024];

const char *skv_strerror(int code)
{
    switch (code) {
    case SKV_OK: return "success";
    case SKV_EIO: return "input/output error";
    case SKV_EFORMAT: return "malformed data";
    case SKV_ECRC: return "checksum mismatch";
    case SKV_ETRUNC: return "truncated input";
    case SKV_EVERSION: return "unsupported format version";
    case SKV_ELIMIT: return "size beyond limit";
    case SKV_ENOMEM: return "out of memory";
    case SKV_EINVAL: return "invalid argument";
    case SKV_EUNSUP: return "unsupported feature";
    case SKV_EZLIB: return "compression error";
    case SKV_ENODEV: return "no device available";
    default: return "unknown error";
    }
}

const char *skv_errmsg(void)
{
    return errbuf[0] ? errbuf : "no error";
}

int (skv_error)(int code, const char *fmt, ...)
{
    /* format aside first: callers may pass skv_errmsg() as an argument */
    char tmp[sizeof errbuf];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    memcpy(errbuf, tmp, sizeof errbuf);
    return code;
}

void skv_error_clear(void)
{
    errbuf[0] = '\0';
}

int skv_mul_sizes(size_t *out, int n, ...)
{
    va_list ap;
    size_t acc = 1;
    int bad = 0;
    va_start(ap, n);
    for (int i = 0; i < n; i++) {
        size_t f = va_arg(ap, size_t);
        if (__builtin_mul_overflow(acc, f, &acc))
            bad = 1;
    }
    va_end(ap);
    if (bad)
        return -1;
    *out = acc;
    return 0;
}

/* ---- allocation with a cap and a failure hook ---- */

static long fail_countdown = -1;   /* -1: not yet read from the environment */
static uint64_t max_mem;
static int max_mem_init;

void skv_fail_alloc_after(long n)
{
    fail_countdown = n;
}

static uint64_t parse_mem(const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s)
        return 0;
    switch (*end) {
    case 'k': case 'K': v <<= 10; break;
    case 'm': case 'M': v <<= 20; break;
    case 'g': case 'G': v <<= 30; break;
    default: break;
    }
    return v;
}

void skv_set_max_mem(uint64_t bytes)
{
    max_mem = bytes;
    max_mem_init = 1;
}

uint64_t skv_get_max_mem(void)
{
    if (!max_mem_init) {
        const char *e = getenv("SKV_MAX_MEM");
        max_mem = e ? parse_mem(e) : 0;
        max_mem_init = 1;
    }
    return max_mem;
}

/* Bytes the process holds in live heap allocations (every malloc, not only
 * the library's): the allocator's own count, so a free() anywhere is seen
 * without wrapping it.  0 where the allocator cannot tell. */
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SKV_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define SKV_ASAN 1
#endif
#ifdef SKV_ASAN
/* from the sanitizer runtime (sanitizer/allocator_interface.h, which gcc
 * does not install) */
size_t __sanitizer_get_current_allocated_bytes(void);
static uint64_t live_bytes(void) { return __sanitizer_get_current_allocated_bytes(); }
#elif defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 33)
static uint64_t live_bytes(void)
{
    struct mallinfo2 mi = mallinfo2();
    return (uint64_t)mi.uordblks + (uint64_t)mi.hblkhd;
}
#else
static uint64_t live_bytes(void) { return 0; }
#endif

uint64_t skv_mem_live(void) { return live_bytes(); }

/* Small requests are summed and the live total is looked up once per
 * CHECK_EVERY bytes, so the cap costs nothing on hot small allocations yet
 * bounds many small ones as it bounds one large one. */
#define CHECK_EVERY ((size_t)1 << 20)
static _Thread_local size_t unchecked;
static _Thread_local int last_fail = SKV_ENOMEM; /* why the last request failed */

/* May the process allocate n more bytes (replacing a block of `old` bytes)? */
static int within_cap(size_t n, size_t old)
{
    uint64_t cap = skv_get_max_mem();
    if (!cap)
        return 1;
    if (n > cap) {
        skv_error(SKV_ELIMIT, "allocation of %zu bytes exceeds the memory cap of %llu bytes",
                  n, (unsigned long long)cap);
        last_fail = SKV_ELIMIT;
        return 0;
    }
    if (n <= old)
        return 1;
    if (n - old < CHECK_EVERY / 16 && (unchecked += n - old) < CHECK_EVERY)
        return 1;
    unchecked = 0;
    uint64_t live = live_bytes(), grow = n - old;
    if (live + grow > cap) {
        skv_error(SKV_ELIMIT, "allocation of %zu bytes would bring the process to %llu bytes, "
                  "beyond the memory cap of %llu bytes", n, (unsigned long long)(live + grow),
                  (unsigned long long)cap);
        last_fail = SKV_ELIMIT;
        return 0;
    }
    return 1;
}

static int alloc_allowed(size_t n, size_t old)
{
    last_fail = SKV_ENOMEM;
    if (fail_countdown < 0) {
        const char *e = getenv("SKV_FAIL_ALLOC");
        char *end = NULL;
        long v = e ? strtol(e, &end, 10) : 0;
        fail_countdown = e && end != e && *end == '\0' && v > 0 ? v : 0;
    }
    if (fail_countdown > 0 && --fail_countdown == 0) {
        skv_error(SKV_ENOMEM, "out of memory allocating %zu bytes (injected failure)", n);
        return 0;
    }
    return within_cap(n, old);
}

void *skv_malloc(size_t n)
{
    if (!alloc_allowed(n, 0))
        return NULL;
    void *p = malloc(n ? n : 1);
    if (!p)
        skv_error(SKV_ENOMEM, "out of memory allocating %zu bytes", n);
    return p;
}

void *skv_calloc(size_t n, size_t size)
{
    size_t total;
    if (skv_mul_size(n, size, &total)) {
        skv_error(SKV_ELIMIT, "allocation size overflows (%zu x %zu)", n, size);
        return NULL;
    }
    if (!alloc_allowed(total, 0))
        return NULL;
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        skv_error(SKV_ENOMEM, "out of memory allocating %zu bytes", total);
    return p;
}

void *skv_realloc(void *old, size_t n)
{
    if (!alloc_allowed(n, old ? malloc_usable_size(old) : 0))
        return NULL;
    void *p = realloc(old, n ? n : 1);
    if (!p)
        skv_error(SKV_ENOMEM, "out of memory allocating %zu bytes", n);
    return p;
}

int skv_check_mem(uint64_t bytes, const char *what)
{
    uint64_t cap = skv_get_max_mem(), live = cap ? live_bytes() : 0;
    if (cap && (bytes > cap || live > cap - bytes))
        return skv_error(SKV_ELIMIT, "%s needs %llu bytes, beyond the memory cap of %llu bytes"
                         " (%llu in use)", what, (unsigned long long)bytes,
                         (unsigned long long)cap, (unsigned long long)live);
    return 0;
}

int skv_grow(void **p, size_t *cap, size_t need, size_t limit)
{
    if (need <= *cap)
        return 0;
    if (need > limit)
        return skv_error(SKV_ELIMIT, "a buffer of %zu bytes exceeds its limit of %zu", need,
                         limit);
    size_t n = *cap > limit / 2 ? limit : *cap * 2;
    if (n < need)
        n = need;
    if (n < 4096 && limit >= 4096)
        n = 4096;
    void *q = skv_realloc(*p, n);
    if (!q)
        return last_fail;
    *p = q;
    *cap = n;
    return 0;
}

int skv_env_flag(const char *name)
{
    const char *e = getenv(name);
    return e && *e && strcmp(e, "0") != 0;
}
