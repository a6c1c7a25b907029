/* smartkv_error.h -- error codes and messages shared by every libsmartkv module.
 *
 * Every public function that can fail returns a negative SKV_E* code (or NULL)
 * and records a human-readable message describing what went wrong and where;
 * skv_errmsg() returns it.  The message is thread-local, so threads that work
 * on different files do not clobber each other's diagnostics.  The library
 * never calls exit() and never prints.
 */
#ifndef SMARTKV_ERROR_H
#define SMARTKV_ERROR_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define SKV_EXPORT __attribute__((visibility("default")))
#define SKV_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define SKV_EXPORT
#define SKV_PRINTF(a, b)
#endif

enum skv_status {
    SKV_OK = 0,
    SKV_EIO = -1,       /* read/write failed (errno-based) */
    SKV_EFORMAT = -2,   /* malformed data: bad signature, field, order */
    SKV_ECRC = -3,      /* checksum mismatch */
    SKV_ETRUNC = -4,    /* input ended early (no end chunk) */
    SKV_EVERSION = -5,  /* unsupported format version */
    SKV_ELIMIT = -6,    /* a length or shape beyond a documented limit */
    SKV_ENOMEM = -7,    /* allocation failed */
    SKV_EINVAL = -8,    /* invalid argument from the caller */
    SKV_EUNSUP = -9,    /* valid but unsupported (e.g. unknown critical chunk) */
    SKV_EZLIB = -10,    /* zlib failure */
    SKV_ENODEV = -11,   /* requested device (CUDA) is not available */
};

/* Generic text for a status code ("checksum mismatch", ...). */
SKV_EXPORT const char *skv_strerror(int code);

/* The detailed message of the most recent failure in this thread. */
SKV_EXPORT const char *skv_errmsg(void);

/* Record a failure; returns code so callers can `return skv_error(...)`. */
SKV_EXPORT int skv_error(int code, const char *fmt, ...) SKV_PRINTF(2, 3);

/* For the static analyzer only: skv_error() returns its code, so that
 * `return skv_error(SKV_E..., ...)` is seen to return a negative value.
 * (error.c defines the function as (skv_error) to escape this macro.) */
#ifdef __clang_analyzer__
#define skv_error(code, ...) (skv_error((code), __VA_ARGS__), (code))
#endif

/* Clear the thread's message. */
SKV_EXPORT void skv_error_clear(void);

/* Library-internal: whether the environment variable name is set to
 * anything but "" or "0" (the SKV_NO_* switches). */
int skv_env_flag(const char *name);

/* Overflow-checked size arithmetic: return 0 on success, -1 on overflow. */
static inline int skv_mul_size(size_t a, size_t b, size_t *out)
{
    return __builtin_mul_overflow(a, b, out) ? -1 : 0;
}
static inline int skv_add_size(size_t a, size_t b, size_t *out)
{
    return __builtin_add_overflow(a, b, out) ? -1 : 0;
}
/* a*b*c*... for n factors; -1 on overflow. */
SKV_EXPORT int skv_mul_sizes(size_t *out, int n, ...);

/* malloc/calloc wrappers that record SKV_ENOMEM with what was asked for,
 * and honour the allocation-failure hook used by the fault-injection tests. */
SKV_EXPORT void *skv_malloc(size_t n);
SKV_EXPORT void *skv_calloc(size_t n, size_t size);
SKV_EXPORT void *skv_realloc(void *p, size_t n);

/* Fault injection: make the Nth skv_malloc/calloc/realloc from now fail
 * (0 disables).  Also settable with the SKV_FAIL_ALLOC environment variable. */
SKV_EXPORT void skv_fail_alloc_after(long n);

/* Memory cap for the process, in bytes (0 = none).  Set from SKV_MAX_MEM
 * (bytes, or with K/M/G suffix) at first use, or by tools' --max-mem.  Every
 * skv_malloc/calloc/realloc checks it against the bytes the whole process
 * has live in the heap (the allocator's count, so memory freed with plain
 * free() is seen) plus the request; requests beyond it fail with
 * SKV_ELIMIT.  Requests under 64 KiB are checked once per MiB of them. */
SKV_EXPORT void skv_set_max_mem(uint64_t bytes);
SKV_EXPORT uint64_t skv_get_max_mem(void);
/* Bytes the process holds in live heap allocations, as the cap counts them
 * (0 where the allocator cannot tell). */
SKV_EXPORT uint64_t skv_mem_live(void);

/* Check, before allocating, that an object of `bytes` in total (made of
 * several allocations, e.g. a whole trace) fits the memory cap.  Returns 0,
 * or SKV_ELIMIT with a message naming `what`. */
SKV_EXPORT int skv_check_mem(uint64_t bytes, const char *what);

/* Grow *p (of *cap bytes, may be NULL/0) to hold at least need bytes,
 * doubling but never beyond limit: a buffer filled as data arrives costs
 * at most twice the bytes actually stored, whatever a header declared.
 * Returns 0, SKV_ELIMIT when need > limit, or SKV_ENOMEM (*p kept). */
SKV_EXPORT int skv_grow(void **p, size_t *cap, size_t need, size_t limit);

#ifdef __cplusplus
}
#endif
#endif
