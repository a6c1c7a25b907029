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
int tool_verbosity = 1;
uint32_t tool_threads;
int tool_progress_mode = -1;
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
    opterr = 0; /* tool_getopt writes the one message */
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
    const char *m = skv_errmsg();
    size_t n = strlen(file);
    /* some library messages already start with the file name (GGUF) */
    if (!strncmp(m, file, n) && m[n] == ':')
        tool_die(EXIT_DATA, "%s", m);
    tool_die(EXIT_DATA, "%s: %s", file, m);
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

void tool_check_binary_input(const char *path)
{
    if ((!path || !strcmp(path, "-")) && isatty(STDIN_FILENO))
        tool_usage_error("standard input is a terminal: give a FILE or redirect the input");
}

uint32_t tool_thread_count(uint32_t max)
{
    long n = tool_threads ? (long)tool_threads : sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1)
        n = 1;
    return (uint32_t)(n > (long)max ? (long)max : n);
}

void tool_note(int level, const char *fmt, ...)
{
    if (tool_verbosity < level)
        return;
    va_list ap;
    fprintf(stderr, "%s: ", tool_name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* The option getopt just refused, as the user typed it. */
static noreturn void bad_option(char **argv, const char *shorts, const struct option *longs)
{
    const char *arg = argv[optind - 1];
    if (arg && arg[0] == '-' && arg[1] == '-') {
        size_t n = strcspn(arg + 2, "=");
        const struct option *hit = NULL;
        int matches = 0;
        for (const struct option *o = longs; o && o->name; o++)
            if (!strncmp(o->name, arg + 2, n)) {
                if (strlen(o->name) == n) { /* exact: no ambiguity */
                    hit = o;
                    matches = 1;
                    break;
                }
                hit = o;
                matches++;
            }
        if (matches > 1)
            tool_usage_error("option '%.*s' is ambiguous", (int)(n + 2), arg);
        if (hit && arg[2 + n] == '=' && hit->has_arg == no_argument)
            tool_usage_error("option '--%s' takes no value", hit->name);
        if (hit && hit->has_arg == required_argument)
            tool_usage_error("option '--%s' needs a value", hit->name);
        tool_usage_error("unknown option '%.*s'", (int)(n + 2), arg);
    }
    if (optopt > 0 && optopt < 256 && optopt != ':' && strchr(shorts, optopt))
        tool_usage_error("option '-%c' needs a value", optopt);
    if (optopt > 0 && optopt < 256)
        tool_usage_error("unknown option '-%c'", optopt);
    tool_usage_error("unknown option '%s'", arg ? arg : "?");
}

int tool_getopt(int argc, char **argv, const char *shorts, const struct option *longs)
{
    for (;;) {
        int c = getopt_long(argc, argv, shorts, longs, NULL);
        switch (c) {
        case '?':
        case ':':
            bad_option(argv, shorts, longs);
        case 'V': tool_version();
        case 'q': tool_verbosity = 0; break;
        case 'v': tool_verbosity = tool_verbosity ? tool_verbosity + 1 : 2; break;
        case '@': tool_threads = tool_opt_u32("--threads", optarg, 1, 1024); break;
        case TOOL_OPT_PROGRESS: tool_progress_mode = 1; break;
        case TOOL_OPT_NO_PROGRESS: tool_progress_mode = 0; break;
        case TOOL_OPT_MAX_MEM: tool_set_max_mem(optarg); break;
        default: return c;
        }
    }
}

int tool_opt_format(const char *s, unsigned allowed)
{
    static const char *const names[] = {"text", "tsv", "json", "stream"};
    for (int i = 0; i < 4; i++)
        if ((allowed & (1u << i)) && s && !strcmp(s, names[i]))
            return i;
    char list[64] = "";
    for (int i = 0; i < 4; i++)
        if (allowed & (1u << i))
            snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", *list ? ", " : "",
                     names[i]);
    tool_usage_error("--format: '%s' is not one of %s", s ? s : "", list);
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
        tool_usage_error("%s needs a value (asym or sym)", opt);
    if (!strcmp(s, "asym"))
        return SKV_QMODE_ASYM;
    if (!strcmp(s, "sym"))
        return SKV_QMODE_SYM;
    tool_usage_error("%s: '%s' is not asym or sym", opt, s);
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
