/* tool.h -- the small shared layer under every skv-* program: one error
 * path, output checks, and parsers for numeric lists and ranges. */
#ifndef SKV_TOOL_H
#define SKV_TOOL_H

#include "smartkv.h"

#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdnoreturn.h>

#define EXIT_DATA 1   /* bad data or runtime failure */
#define EXIT_USAGE 2  /* bad command line */

extern const char *tool_name;

/* Set the program name (for messages) and ignore SIGPIPE so that a closed
 * pipe becomes a write error we report, not a silent death. */
void tool_init(const char *name);

/* "tool: msg" to stderr, exit with code. */
noreturn void tool_die(int code, const char *fmt, ...) SKV_PRINTF(2, 3);
/* "tool: FILE: <library message>" and exit 1. */
noreturn void tool_fail(const char *file);
/* Usage error: "tool: msg" plus a hint to --help, exit 2. */
noreturn void tool_usage_error(const char *fmt, ...) SKV_PRINTF(1, 2);

/* Display name of a path argument ("-" or NULL is stdin/stdout). */
const char *tool_in_name(const char *path);
const char *tool_out_name(const char *path);

/* --max-mem SIZE, common to the tools: cap the memory the library may
 * allocate for one object (skv_set_max_mem; overrides SKV_MAX_MEM).  Add
 * TOOL_MAX_MEM_OPTION to a getopt_long table, handle TOOL_OPT_MAX_MEM by
 * calling tool_set_max_mem(optarg) (usage error on a bad size), and print
 * TOOL_MAX_MEM_HELP in --help. */
#define TOOL_OPT_MAX_MEM 0x4d4d
#define TOOL_MAX_MEM_OPTION {"max-mem", required_argument, 0, TOOL_OPT_MAX_MEM}
#define TOOL_MAX_MEM_HELP \
    "      --max-mem SIZE   refuse inputs that need more memory than SIZE\n" \
    "                       (K, M or G suffix; default $SKV_MAX_MEM or no cap)\n"
void tool_set_max_mem(const char *arg);

/* Text output: FILE (created or truncated), or stdout for NULL or "-";
 * exits 1 naming FILE when it cannot be opened. */
FILE *tool_text_open(const char *path);
/* Flush and close what tool_text_open gave.  On a write error exit 1 with
 * "FILE: write error", removing a half-written regular file (never a
 * device such as /dev/full, or a FIFO). */
void tool_text_close(FILE *f, const char *path);

/* Refuse binary output to a terminal (exit 2). */
void tool_check_binary_output(const char *path);
/* Refuse to read binary data from a terminal (exit 2), as zstd does: a
 * forgotten input would otherwise wait silently for the keyboard. */
void tool_check_binary_input(const char *path);

/* ---- the option vocabulary every tool shares (smartkv(7)) ----
 * -h --help, -V --version, -q --quiet, -v --verbose, --max-mem SIZE,
 * --progress / --no-progress, and in tools that compute in parallel
 * -@ --threads N.  A tool puts TOOL_COMMON_SHORT in its short-option
 * string and TOOL_COMMON_OPTIONS in its table, and reads options through
 * tool_getopt, which handles all of them but -h (the tool's own usage). */
#define TOOL_OPT_PROGRESS 0x5050
#define TOOL_OPT_NO_PROGRESS 0x5051
#define TOOL_OPT_JSON 0x4a53
#define TOOL_OPT_TSV 0x5453
#define TOOL_COMMON_SHORT "hVqv@:"
#define TOOL_COMMON_OPTIONS \
    {"help", no_argument, 0, 'h'}, {"version", no_argument, 0, 'V'}, \
    {"quiet", no_argument, 0, 'q'}, {"verbose", no_argument, 0, 'v'}, \
    {"threads", required_argument, 0, '@'}, {"progress", no_argument, 0, TOOL_OPT_PROGRESS}, \
    {"no-progress", no_argument, 0, TOOL_OPT_NO_PROGRESS}, TOOL_MAX_MEM_OPTION
#define TOOL_COMMON_HELP \
    "  -q, --quiet            no reports or progress on stderr\n" \
    "  -v, --verbose          say more on stderr (repeat for more)\n" \
    "      --progress         progress lines on stderr even when it is not a terminal\n" \
    "      --no-progress      no progress bar on a terminal\n" \
    TOOL_MAX_MEM_HELP \
    "  -h, --help             show this help and exit\n" \
    "  -V, --version          show the version and exit\n"
#define TOOL_THREADS_HELP \
    "  -@, --threads N        worker threads (default: one per online CPU)\n"

/* 0 with -q, 1 by default, 1 + the number of -v. */
extern int tool_verbosity;
/* -@ N, or 0 (the default: one thread per online CPU). */
extern uint32_t tool_threads;
/* --progress 1, --no-progress 0, default -1 (a bar when stderr is a terminal). */
extern int tool_progress_mode;
/* tool_threads, or the number of online CPUs when it is 0 (at least 1, at
 * most max). */
uint32_t tool_thread_count(uint32_t max);
/* getopt_long that handles the common options itself and turns an unknown
 * option or a missing value into one usage error (no second line). */
int tool_getopt(int argc, char **argv, const char *shorts, const struct option *longs);
/* "tool: msg" on stderr when tool_verbosity >= level. */
void tool_note(int level, const char *fmt, ...) SKV_PRINTF(2, 3);

/* Progress of a long step on stderr: a bar when stderr is a terminal, a line
 * every few seconds with --progress (SKV_PROGRESS_INTERVAL seconds, default
 * 10), nothing with -q or --no-progress; with the rate and the time left.
 * tool_progress_start returns NULL when progress is off (every function
 * accepts NULL).  The count comes from tool_progress_set (callbacks) or,
 * after tool_progress_watch, from the read position of the input file
 * (Linux /proc/self/fdinfo), sampled by a thread every 100 ms. */
typedef struct tool_progress tool_progress;
tool_progress *tool_progress_start(const char *what, uint64_t total, const char *unit);
void tool_progress_set(tool_progress *p, uint64_t done);
/* Count bytes read from path (NULL or "-": standard input); total is its
 * size when it is a regular file, else unknown (no percentage, no ETA). */
void tool_progress_watch(tool_progress *p, const char *path);
/* skv_progress_fn-shaped callback: ctx is a tool_progress (or NULL). */
void tool_progress_cb(void *ctx, uint64_t done, uint64_t total);
void tool_progress_end(tool_progress *p);

/* Output formats of the text reports: -O FMT / --format FMT, --tsv, --json. */
enum { TOOL_FMT_TEXT, TOOL_FMT_TSV, TOOL_FMT_JSON, TOOL_FMT_STREAM };
/* Parse FMT among the names allowed by the mask (1 << TOOL_FMT_*). */
int tool_opt_format(const char *s, unsigned allowed);

/* Print "tool (smartkv) VERSION" and exit 0. */
noreturn void tool_version(void);

/* Strict parsers; return 0 on success, -1 on a malformed or out-of-range value. */
int tool_parse_u64(const char *s, uint64_t *out);
int tool_parse_double(const char *s, double *out);
/* Size with optional K/M/G suffix (powers of 1024), or K-token counts
 * like "8K" for --tokens. */
int tool_parse_size(const char *s, uint64_t *out);

/* A set of indices in [0, limit) written as "0-3,7,9-": sets sel[i]=1.
 * Returns 0, or -1 with a message in *err. */
int tool_parse_index_set(const char *s, uint64_t limit, uint8_t *sel, const char **err);
/* A half-open range "a:b", "a:" or ":b" (b exclusive) within [0, limit];
 * returns 0, or -1 with a message in *err. */
int tool_parse_range(const char *s, uint64_t limit, uint64_t *a, uint64_t *b, const char **err);
/* Option values: each returns the parsed value or exits 2 with
 * "tool: OPT: 'S' is not ..." (OPT is the option's name, e.g. "--sinks"). */
uint32_t tool_opt_u32(const char *opt, const char *s, uint32_t lo, uint32_t hi);
/* A number in [lo, hi] ([lo, hi) when hi_open). */
double tool_opt_double(const char *opt, const char *s, double lo, double hi, int hi_open);
/* "asym", "sym" or "ggml": SKV_QMODE_ASYM, SKV_QMODE_SYM or SKV_QMODE_GGML. */
uint32_t tool_opt_qmode(const char *opt, const char *s);
/* --keys: "token" (0) or "channel" (1, keys per channel; smartkv(5)). */
int tool_opt_keys(const char *opt, const char *s);
/* A policy name (skv_policy_parse): sets *policy and, for uniform:N, *ubits. */
void tool_opt_policy(const char *opt, const char *s, uint32_t *policy, uint32_t *ubits);
/* A width list such as "2,3,4,8,16" (skv_width_mask_parse) as a mask. */
uint32_t tool_opt_widths(const char *opt, const char *s);

/* A comma list of unsigned integers into out[max]; returns the count or -1. */
int tool_parse_u32_list(const char *s, uint32_t *out, int max);

#endif
