/* tool.c -- shared error path and parsers for the skv-* programs. */
#include "tool.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *tool_name = "skv";
static int dying; /* tool_die is exiting: its message is the only one */

/* At exit, text written to stdout must have reached it: a full disk or a
 * closed pipe makes the tool fail (exit 1, one message), never exit 0. */
static void check_stdout(void)
{
    errno = 0;
    int bad = fflush(stdout) != 0 || ferror(stdout);
    int e = errno;
    if (!bad)
        return;
    if (!dying)
        fprintf(stderr, "%s: write error on standard output%s%s\n", tool_name,
                e ? ": " : "", e ? strerror(e) : "");
    _exit(EXIT_DATA);
}

void tool_init(const char *name)
{
    tool_name = name;
    signal(SIGPIPE, SIG_IGN);
    atexit(check_stdout);
}

void tool_set_max_mem(const char *arg)
{
    uint64_t v;
    if (tool_parse_size(arg, &v) < 0)
        tool_usage_error("--max-mem must be a size in bytes with an optional K, M or G "
                         "suffix (0: no cap), not '%s'", arg);
    skv_set_max_mem(v);
}

void tool_die(int code, const char *fmt, ...)
{
    va_list ap;
    dying = 1;
    fprintf(stderr, "%s: ", tool_name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(code);
}

void tool_fail(const char *file)
{
    tool_die(EXIT_DATA, "%s: %s", file, skv_errmsg());
}

void tool_usage_error(const char *fmt, ...)
{
    va_list ap;
    dying = 1;
    fprintf(stderr, "%s: ", tool_name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry '%s --help' for more information.\n", tool_name);
    exit(EXIT_USAGE);
}

const char *tool_in_name(const char *path)
{
    return !path || !strcmp(path, "-") ? "(stdin)" : path;
}

const char *tool_out_name(const char *path)
{
    return !path || !strcmp(path, "-") ? "(stdout)" : path;
}

void tool_check_binary_output(const char *path)
{
    if ((!path || !strcmp(path, "-")) && isatty(STDOUT_FILENO))
        tool_die(EXIT_USAGE, "refusing to write binary data to a terminal "
                 "(use -o FILE or redirect the output)");
}

void tool_version(void)
{
    printf("%s (smartkv) %s\n", tool_name, SKV_LIB_VERSION);
    exit(0);
}

int tool_parse_u64(const char *s, uint64_t *out)
{
    char *end;
    /* a digit first: strtoull would skip spaces and negate " -1" to 2^64-1 */
    if (!s || *s < '0' || *s > '9')
        return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return -1;
    *out = v;
    return 0;
}

int tool_parse_double(const char *s, double *out)
{
    char *end;
    if (!s || !*s || isspace((unsigned char)*s))
        return -1;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v))
        return -1;
    *out = v;
    return 0;
}

int tool_parse_size(const char *s, uint64_t *out)
{
    char *end;
    if (!s || *s < '0' || *s > '9')
        return -1;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s)
        return -1;
    unsigned shift = 0;
    if (*end == 'k' || *end == 'K')
        shift = 10;
    else if (*end == 'm' || *end == 'M')
        shift = 20;
    else if (*end == 'g' || *end == 'G')
        shift = 30;
    if (shift) {
        end++;
        if (v > (UINT64_MAX >> shift))
            return -1;
        v <<= shift;
    }
    if (*end)
        return -1;
    *out = v;
    return 0;
}

/* Parse one unsigned number at *p, advancing it. */
static int num_at(const char **p, uint64_t *v)
{
    const char *s = *p;
    if (*s < '0' || *s > '9')
        return -1;
    uint64_t x = 0;
    while (*s >= '0' && *s <= '9') {
        if (x > (UINT64_MAX - 9) / 10)
            return -1;
        x = x * 10 + (uint64_t)(*s - '0');
        s++;
    }
    *p = s;
    *v = x;
    return 0;
}

int tool_parse_index_set(const char *s, uint64_t limit, uint8_t *sel, const char **err)
{
    const char *p = s;
    if (!*p) {
        *err = "empty list";
        return -1;
    }
    for (;;) {
        uint64_t a, b;
        if (num_at(&p, &a) < 0) {
            *err = "expected a number";
            return -1;
        }
        b = a;
        if (*p == '-') {
            p++;
            if (*p == ',' || *p == '\0')
                b = limit ? limit - 1 : 0;
            else if (num_at(&p, &b) < 0) {
                *err = "expected a number after '-'";
                return -1;
            }
        }
        if (a > b) {
            *err = "range runs backwards";
            return -1;
        }
        if (b >= limit) {
            *err = "index out of range";
            return -1;
        }
        for (uint64_t i = a; i <= b; i++)
            sel[i] = 1;
        if (*p == '\0')
            return 0;
        if (*p != ',') {
            *err = "expected ',' between items";
            return -1;
        }
        p++;
    }
}

int tool_parse_range(const char *s, uint64_t limit, uint64_t *a, uint64_t *b, const char **err)
{
    const char *p = s;
    *a = 0;
    *b = limit;
    if (*p != ':' && num_at(&p, a) < 0) {
        *err = "expected START:END";
        return -1;
    }
    if (*p != ':') {
        *err = "expected ':' (START:END, END exclusive)";
        return -1;
    }
    p++;
    if (*p && num_at(&p, b) < 0) {
        *err = "expected a number after ':'";
        return -1;
    }
    if (*p) {
        *err = "trailing characters";
        return -1;
    }
    if (*a >= *b) {
        *err = "empty range";
        return -1;
    }
    if (*b > limit) {
        *err = "range beyond the end";
        return -1;
    }
    return 0;
}

int tool_parse_u32_list(const char *s, uint32_t *out, int max)
{
    const char *p = s;
    int n = 0;
    for (;;) {
        uint64_t v;
        if (n >= max || num_at(&p, &v) < 0 || v > UINT32_MAX)
            return -1;
        out[n++] = (uint32_t)v;
        if (*p == '\0')
            return n;
        if (*p != ',')
            return -1;
        p++;
    }
}

uint32_t tool_opt_u32(const char *opt, const char *s, uint32_t lo, uint32_t hi)
{
    uint64_t v;
    if (!s || tool_parse_u64(s, &v) < 0 || v < lo || v > hi)
        tool_usage_error("%s: '%s' is not a whole number in %u..%u", opt, s ? s : "", lo, hi);
    return (uint32_t)v;
}

double tool_opt_double(const char *opt, const char *s, double lo, double hi, int hi_open)
{
    double v;
    if (!s || tool_parse_double(s, &v) < 0 || !(v >= lo) || (hi_open ? !(v < hi) : !(v <= hi)))
        tool_usage_error("%s: '%s' is not a number in [%g, %g%s", opt, s ? s : "", lo, hi,
                         hi_open ? ")" : "]");
    return v;
}

uint32_t tool_opt_qmode(const char *opt, const char *s)
{
    if (!s)
        tool_usage_error("%s needs a value (asym, sym or ggml)", opt);
    if (!strcmp(s, "asym"))
        return SKV_QMODE_ASYM;
    if (!strcmp(s, "sym"))
        return SKV_QMODE_SYM;
    if (!strcmp(s, "ggml"))
        return SKV_QMODE_GGML;
    tool_usage_error("%s: '%s' is not asym, sym or ggml", opt, s);
}

void tool_opt_policy(const char *opt, const char *s, uint32_t *policy, uint32_t *ubits)
{
    if (!s || skv_policy_parse(s, policy, ubits) < 0)
        tool_usage_error("%s: %s", opt, s ? skv_errmsg() : "needs a policy name");
}

uint32_t tool_opt_widths(const char *opt, const char *s)
{
    uint32_t mask;
    if (!s || skv_width_mask_parse(s, &mask) < 0)
        tool_usage_error("%s: %s", opt, s ? skv_errmsg() : "needs a width list");
    return mask;
}
