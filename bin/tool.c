/* tool.c -- shared error path and parsers for the skv-* programs. */
#include "tool.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <time.h>
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

static struct tool_progress *active_bar; /* a bar on the terminal line */

/* A message line "tool: text" in one write: the tools of a pipeline share
 * standard error, and a line written in pieces can be cut by another's
 * (a closed pipe upstream, a truncated input downstream, at once). */
static void say(const char *pre, const char *post, const char *fmt, va_list ap)
{
    char msg[2048];
    vsnprintf(msg, sizeof msg, fmt, ap);
    fprintf(stderr, "%s%s: %s\n%s", pre, tool_name, msg, post);
}

void tool_die(int code, const char *fmt, ...)
{
    va_list ap;
    dying = 1;
    va_start(ap, fmt);
    say(active_bar ? "\r\033[K" : "", "", fmt, ap);
    va_end(ap);
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
    char post[256];
    dying = 1;
    snprintf(post, sizeof post, "Try '%s --help' for more information.\n", tool_name);
    va_start(ap, fmt);
    say("", post, fmt, ap);
    va_end(ap);
    exit(EXIT_USAGE);
}

const char *tool_in_name(const char *path)
{
    return !path || !strcmp(path, "-") ? "(stdin)" : path;
}

FILE *tool_text_open(const char *path)
{
    if (!path || !strcmp(path, "-"))
        return stdout;
    FILE *f = fopen(path, "w");
    if (!f)
        tool_die(EXIT_DATA, "%s: cannot open for writing: %s", path, strerror(errno));
    return f;
}

void tool_text_close(FILE *f, const char *path)
{
    if (fflush(f) == 0 && !ferror(f) && (f == stdout || fclose(f) == 0))
        return;
    struct stat st;
    if (f != stdout && stat(path, &st) == 0 && S_ISREG(st.st_mode))
        remove(path);
    tool_die(EXIT_DATA, "%s: write error", tool_out_name(path));
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
    va_start(ap, fmt);
    say("", "", fmt, ap);
    va_end(ap);
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
        tool_usage_error("%s needs a value (asym, sym or ggml)", opt);
    if (!strcmp(s, "asym"))
        return SKV_QMODE_ASYM;
    if (!strcmp(s, "sym"))
        return SKV_QMODE_SYM;
    if (!strcmp(s, "ggml"))
        return SKV_QMODE_GGML;
    tool_usage_error("%s: '%s' is not asym, sym or ggml", opt, s);
}

int tool_opt_keys(const char *opt, const char *s)
{
    if (!s)
        tool_usage_error("%s needs a value (token or channel)", opt);
    if (!strcmp(s, "token"))
        return 0;
    if (!strcmp(s, "channel"))
        return 1;
    tool_usage_error("%s: token or channel, not '%s'", opt, s);
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

/* ---- progress ---- */

struct tool_progress {
    const char *what, *unit;
    _Atomic uint64_t done, total;
    int bar;                /* 1: a bar on a terminal; 0: lines */
    double t0, last, interval;
    int drawn, stop;
    char watch[PATH_MAX];   /* real path of the watched input, "" for none */
    int watch_fd;           /* its descriptor once found (-1 before) */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* "1.5 GB" for bytes; else "1234", "2.5" (below 10) and the unit when asked. */
static void fmt_count(char *b, size_t n, double v, const char *unit, int with_unit)
{
    if (strcmp(unit, "bytes") != 0) {
        snprintf(b, n, v < 10 && v != (double)(long)v ? "%.1f%s%s" : "%.0f%s%s", v,
                 with_unit && *unit ? " " : "", with_unit ? unit : "");
        return;
    }
    const char *u[] = {"B", "KB", "MB", "GB", "TB"};
    int i = 0;
    while (v >= 1024 && i < 4) {
        v /= 1024;
        i++;
    }
    snprintf(b, n, i ? "%.1f %s" : "%.0f %s", v, u[i]);
}

static void fmt_time(char *b, size_t n, double s)
{
    if (s < 60)
        snprintf(b, n, "%.0fs", s);
    else if (s < 3600)
        snprintf(b, n, "%dm%02ds", (int)(s / 60), (int)s % 60);
    else
        snprintf(b, n, "%dh%02dm", (int)(s / 3600), (int)(s / 60) % 60);
}

/* The read position of the watched file: its descriptor is found in
 * /proc/self/fd once the library has opened it. */
static uint64_t watched_pos(tool_progress *p)
{
    char path[320], buf[PATH_MAX];
    if (p->watch_fd < 0) {
        DIR *d = opendir("/proc/self/fd");
        struct dirent *e;
        while (d && (e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.')
                continue;
            snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
            ssize_t n = readlink(path, buf, sizeof buf - 1);
            if (n > 0 && (buf[n] = '\0', !strcmp(buf, p->watch))) {
                p->watch_fd = (int)strtol(e->d_name, NULL, 10);
                break;
            }
        }
        if (d)
            closedir(d);
        if (p->watch_fd < 0)
            return atomic_load(&p->done);
    }
    snprintf(path, sizeof path, "/proc/self/fdinfo/%d", p->watch_fd);
    FILE *f = fopen(path, "r");
    unsigned long long pos = 0;
    if (!f)
        return atomic_load(&p->done);
    while (fgets(buf, sizeof buf, f))
        if (!strncmp(buf, "pos:", 4)) {
            pos = strtoull(buf + 4, NULL, 10);
            break;
        }
    fclose(f);
    return pos;
}

static void draw(tool_progress *p, int final)
{
    double t = now_s(), el = t - p->t0;
    uint64_t done = atomic_load(&p->done), total = atomic_load(&p->total);
    double rate = el > 0 ? (double)done / el : 0;
    char d[32], tt[32], r[32], left[32] = "";
    fmt_count(d, sizeof d, (double)done, p->unit, 0);
    fmt_count(tt, sizeof tt, (double)total, p->unit, 1);
    fmt_count(r, sizeof r, rate, p->unit, 1);
    if (total && rate > 0 && done < total)
        fmt_time(left, sizeof left, (double)(total - done) / rate);
    int pct = total ? (int)(100.0 * (double)done / (double)total) : -1;
    if (pct > 100)
        pct = 100;
    if (p->bar) {
        if (final) {
            if (p->drawn)
                fputs("\r\033[K", stderr);
            return;
        }
        char bar[31];
        int fill = pct < 0 ? 0 : pct * 30 / 100;
        memset(bar, '#', (size_t)fill);
        memset(bar + fill, ' ', (size_t)(30 - fill));
        bar[30] = '\0';
        if (pct >= 0)
            fprintf(stderr, "\r%s: [%s] %3d%% %s/s%s%s%s\033[K", p->what, bar, pct, r,
                    *left ? ", " : "", left, *left ? " left" : "");
        else
            fprintf(stderr, "\r%s: %s, %s/s\033[K", p->what, d, r);
    } else {
        char e[32];
        fmt_time(e, sizeof e, el);
        fmt_count(d, sizeof d, (double)done, p->unit, 1);
        if (final)
            fprintf(stderr, "%s: done: %s in %s (%s/s)\n", p->what, d, e, r);
        else if (pct >= 0)
            fprintf(stderr, "%s: %.*s of %s (%d%%), %s/s, %s elapsed%s%s%s\n", p->what,
                    strcmp(p->unit, "bytes") ? (int)strcspn(d, " ") : (int)strlen(d), d, tt,
                    pct, r, e, *left ? ", " : "", left, *left ? " left" : "");
        else
            fprintf(stderr, "%s: %s, %s/s, %s elapsed\n", p->what, d, r, e);
    }
    fflush(stderr);
    p->drawn = 1;
    p->last = t;
}

static void *ticker(void *arg)
{
    tool_progress *p = arg;
    pthread_mutex_lock(&p->mu);
    while (!p->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&p->cv, &p->mu, &ts);
        if (p->stop)
            break;
        if (p->watch[0])
            atomic_store(&p->done, watched_pos(p));
        double t = now_s();
        /* a bar from the first second on, redrawn 4 times a second; lines
         * every interval */
        if (p->bar ? t - p->t0 >= (p->interval < 1 ? p->interval : 1) && t - p->last >= 0.25
                   : t - p->last >= p->interval)
            draw(p, 0);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

tool_progress *tool_progress_start(const char *what, uint64_t total, const char *unit)
{
    int tty = isatty(STDERR_FILENO);
    if (!tool_verbosity || tool_progress_mode == 0 || (tool_progress_mode < 0 && !tty))
        return NULL;
    tool_progress *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->what = what ? what : tool_name;
    p->unit = unit ? unit : "";
    atomic_store(&p->total, total);
    p->bar = tty;
    p->interval = 10;
    const char *iv = getenv("SKV_PROGRESS_INTERVAL");
    double v;
    if (iv && tool_parse_double(iv, &v) == 0 && v >= 0)
        p->interval = v;
    p->t0 = p->last = now_s();
    p->watch_fd = -1;
    if (p->bar)
        active_bar = p;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    if (pthread_create(&p->thread, NULL, ticker, p) != 0) {
        pthread_mutex_destroy(&p->mu);
        pthread_cond_destroy(&p->cv);
        free(p);
        return NULL;
    }
    return p;
}

void tool_progress_set(tool_progress *p, uint64_t done)
{
    if (p)
        atomic_store(&p->done, done);
}

void tool_progress_cb(void *ctx, uint64_t done, uint64_t total)
{
    tool_progress *p = ctx;
    if (!p)
        return;
    atomic_store(&p->total, total);
    atomic_store(&p->done, done);
}

void tool_progress_watch(tool_progress *p, const char *path)
{
    if (!p)
        return;
    struct stat st;
    pthread_mutex_lock(&p->mu);
    if (!path || !strcmp(path, "-")) {
        if (fstat(STDIN_FILENO, &st) == 0 && S_ISREG(st.st_mode)) {
            atomic_store(&p->total, (uint64_t)st.st_size);
            snprintf(p->watch, sizeof p->watch, "/proc/self/fd/0");
            p->watch_fd = STDIN_FILENO;
        }
    } else if (realpath(path, p->watch) && stat(p->watch, &st) == 0 && S_ISREG(st.st_mode)) {
        atomic_store(&p->total, (uint64_t)st.st_size);
    } else {
        p->watch[0] = '\0';
    }
    pthread_mutex_unlock(&p->mu);
}

void tool_progress_end(tool_progress *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->thread, NULL);
    if (active_bar == p)
        active_bar = NULL;
    if (p->watch[0])
        atomic_store(&p->done, watched_pos(p));
    /* lines: a last one with the totals, only when a line was due */
    if (p->bar || now_s() - p->t0 >= p->interval)
        draw(p, 1);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p);
}
