/* skv-quant -- quantize a trace into a packed mixed-precision KV cache
 * following its allocation (or a uniform width), or dequantize a cache back
 * into a plain trace. */
#include "tool.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(void)
{
    printf("Usage: %s [OPTION]... [IN]\n"
           "Quantize the keys and values of a trace into a packed, bucketed cache with the\n"
           "bit widths chosen by skv-alloc (the allocation chunks after the last layer),\n"
           "or with one width for every token (--uniform).  With -d, turn a packed cache\n"
           "back into a plain float32 trace.  IN is a file or - (default: standard input).\n"
           "\n"
           "  -o, --output=FILE      write to FILE (default: standard output)\n"
           "  -u, --uniform=N        every token at N bits (2, 3, 4, 8 or 16); ignores an\n"
           "                         allocation in the input\n"
           "  -g, --group=G          with --uniform: channels per scale group for K and V\n"
           "                         (must divide head_dim; default: the whole vector)\n"
           "      --k-group=G        with --uniform: group size for keys only\n"
           "      --v-group=G        with --uniform: group size for values only\n"
           "      --k-mode=MODE      with --uniform: asym (zero-point, default) or sym\n"
           "      --v-mode=MODE      with --uniform: asym (default) or sym\n"
           "      --keys=LAYOUT      with --uniform: token (default: each key row its own\n"
           "                         parameters) or channel (KIVI: asym per channel over\n"
           "                         groups of --key-tokens rows of a bucket)\n"
           "      --key-tokens=G     with --keys channel: rows per key group (2..4096,\n"
           "                         default 32)\n"
           "      --rotate           keys (and so queries) stored after a randomized\n"
           "                         Hadamard rotation: an outlier channel is spread over\n"
           "                         all channels; attention is unchanged up to the\n"
           "                         quantization (head_dim a power of two)\n"
           "      --rotate-values    values stored rotated too (skv-attend rotates each\n"
           "                         output back); with or without --rotate\n"
           "      --seed=S           seed of the rotation's signs (default 1, as skv-eval)\n"
           "      --keep-queries     keep the trace's queries in the cache (default: the\n"
           "                         cache holds the cache; skv-attend --queries TRACE)\n"
           "      --keep-alloc       keep the allocation record (ALOC: widths and importance\n"
           "                         per row); the ALHD description is always kept\n"
           "      --drop-queries     the default (kept for old scripts)\n"
           "      --queries TRACE    with -d: take the queries from TRACE when the cache\n"
           "                         has none\n"
           "  -d, --decompress       dequantize a packed cache into a float32 trace\n"
           "  -z, --compress[=LEVEL] zlib-compress chunks (LEVEL 0-9, default 6)\n"
           "      --json             print the report as one JSON object\n"
           TOOL_COMMON_HELP
           "\n"
           "The achieved budget beta (bytes of the PKHD and PBKT chunks as written, over the\n"
           "fp16 bytes of K and V) and the rows per width go to standard error (not with -q).\n"
           "Exit status: 0 success, 1 bad data or I/O failure, 2 usage error.\n",
           tool_name);
}

static uint32_t parse_group(const char *s, const char *opt)
{
    uint64_t g;
    if (tool_parse_u64(s, &g) < 0 || g == 0 || g > SKV_MAX_HEAD_DIM)
        tool_usage_error("%s: group size must be 1..%u, not '%s'", opt, SKV_MAX_HEAD_DIM, s);
    return (uint32_t)g;
}

static void report_json(const char *out, const skv_cache_stats *st, const skv_cache_plan *p)
{
    fputs("{\"output\": ", stderr);
    const char *o = tool_out_name(out);
    fputc('"', stderr);
    for (; *o; o++)
        if (*o == '"' || *o == '\\')
            fprintf(stderr, "\\%c", *o);
        else if ((unsigned char)*o < 0x20)
            fprintf(stderr, "\\u%04x", (unsigned char)*o);
        else
            fputc(*o, stderr);
    fprintf(stderr, "\", \"beta\": %.6f, \"cache_bytes\": %llu, \"fp16_bytes\": %llu, "
            "\"model_bytes\": %llu, \"stream_bytes\": %llu",
            st->fp16_bytes ? (double)st->cache_bytes / (double)st->fp16_bytes : 0.0,
            (unsigned long long)st->cache_bytes, (unsigned long long)st->fp16_bytes,
            (unsigned long long)st->model_bytes, (unsigned long long)st->stream_bytes);
    if (p->from_alloc)
        fprintf(stderr, ", \"alloc_beta\": %.6f", p->alloc_beta);
    fputs(", \"rows_per_width\": {", stderr);
    for (int i = 0, n = 0; i < SKV_NBITS; i++)
        if (st->hist[i])
            fprintf(stderr, "%s\"%u\": %llu", n++ ? ", " : "", skv_bit_widths[i],
                    (unsigned long long)st->hist[i]);
    fputs("}}\n", stderr);
}

static void report(const char *out, const skv_cache_stats *st, const skv_cache_plan *p)
{
    double beta = st->fp16_bytes ? (double)st->cache_bytes / (double)st->fp16_bytes : 0;
    fprintf(stderr, "%s: %s: beta %.4f (packed K/V %llu bytes / fp16 %llu bytes; byte model "
            "%llu; stream %llu bytes)\n", tool_name, tool_out_name(out), beta,
            (unsigned long long)st->cache_bytes, (unsigned long long)st->fp16_bytes,
            (unsigned long long)st->model_bytes, (unsigned long long)st->stream_bytes);
    if (p->from_alloc)
        fprintf(stderr, "%s: allocation: requested beta %.4f, %s\n", tool_name, p->alloc_beta,
                p->alloc_text[0] ? p->alloc_text : "(no description)");
    uint64_t rows = 0;
    for (int i = 0; i < SKV_NBITS; i++)
        rows += st->hist[i];
    fprintf(stderr, "%s: rows per width:", tool_name);
    for (int i = 0; i < SKV_NBITS; i++)
        if (st->hist[i])
            fprintf(stderr, " %u-bit %llu (%.1f%%)", skv_bit_widths[i],
                    (unsigned long long)st->hist[i],
                    rows ? 100.0 * (double)st->hist[i] / (double)rows : 0.0);
    fprintf(stderr, "\n");
}

/* Reading (the bytes of the input), then writing (layers); the library
 * says when the layers start with done = 0. */
typedef struct quant_progress {
    tool_progress *pr;
    int writing;
} quant_progress;

static void on_progress(void *ctx, uint64_t done, uint64_t total)
{
    quant_progress *q = ctx;
    if (!q->writing) {
        tool_progress_end(q->pr);
        q->pr = tool_progress_start("skv-quant: writing", total, "layers");
    }
    q->writing = 1;
    tool_progress_cb(q->pr, done, total);
}

int main(int argc, char **argv)
{
    tool_init("skv-quant");
    enum { OPT_KGROUP = 256, OPT_VGROUP, OPT_KMODE, OPT_VMODE, OPT_DROPQ, OPT_KEEPQ, OPT_KEEPA,
           OPT_QUERIES, OPT_KEYS, OPT_KTOK, OPT_ROT, OPT_VROT, OPT_SEED };
    static const struct option longopts[] = {
        {"output", required_argument, NULL, 'o'},
        {"uniform", required_argument, NULL, 'u'},
        {"group", required_argument, NULL, 'g'},
        {"k-group", required_argument, NULL, OPT_KGROUP},
        {"v-group", required_argument, NULL, OPT_VGROUP},
        {"k-mode", required_argument, NULL, OPT_KMODE},
        {"v-mode", required_argument, NULL, OPT_VMODE},
        {"keys", required_argument, NULL, OPT_KEYS},
        {"key-tokens", required_argument, NULL, OPT_KTOK},
        {"rotate", no_argument, NULL, OPT_ROT},
        {"rotate-values", no_argument, NULL, OPT_VROT},
        {"seed", required_argument, NULL, OPT_SEED},
        {"drop-queries", no_argument, NULL, OPT_DROPQ},
        {"keep-queries", no_argument, NULL, OPT_KEEPQ},
        {"keep-alloc", no_argument, NULL, OPT_KEEPA},
        {"queries", required_argument, NULL, OPT_QUERIES},
        {"decompress", no_argument, NULL, 'd'},
        {"compress", optional_argument, NULL, 'z'},
        {"json", no_argument, NULL, TOOL_OPT_JSON},
        TOOL_COMMON_OPTIONS,
        {NULL, 0, NULL, 0},
    };
    const char *out = NULL, *queries = NULL;
    uint32_t uniform = 0, k_group = 0, v_group = 0;
    uint32_t k_mode = SKV_QMODE_ASYM, v_mode = SKV_QMODE_ASYM;
    uint32_t k_tokens = 0, rotate = 0;
    uint64_t seed = 1;
    int chan = 0, kmode_set = 0, seed_set = 0;
    int qopts = 0, drop = 0, keep_q = 0, keep_alloc = 0, decompress = 0, json = 0, level = -1;
    int c;
    while ((c = tool_getopt(argc, argv, "o:u:g:dz::" TOOL_COMMON_SHORT, longopts)) != -1) {
        switch (c) {
        case 'o':
            out = optarg;
            break;
        case 'u': {
            uint64_t v;
            if (tool_parse_u64(optarg, &v) < 0 || !skv_bits_valid(v <= 16 ? (uint32_t)v : 0))
                tool_usage_error("--uniform: width must be 2, 3, 4, 8 or 16, not '%s'", optarg);
            uniform = (uint32_t)v;
            break;
        }
        case 'g':
            k_group = v_group = parse_group(optarg, "--group");
            qopts = 1;
            break;
        case OPT_KGROUP:
            k_group = parse_group(optarg, "--k-group");
            qopts = 1;
            break;
        case OPT_VGROUP:
            v_group = parse_group(optarg, "--v-group");
            qopts = 1;
            break;
        case OPT_KMODE:
            k_mode = tool_opt_qmode("--k-mode", optarg);
            qopts = kmode_set = 1;
            break;
        case OPT_KEYS:
            chan = tool_opt_keys("--keys", optarg);
            qopts = 1;
            break;
        case OPT_KTOK:
            k_tokens = tool_opt_u32("--key-tokens", optarg, 2, SKV_KEY_TOKENS_MAX);
            qopts = 1;
            break;
        case OPT_VMODE:
            v_mode = tool_opt_qmode("--v-mode", optarg);
            qopts = 1;
            break;
        case OPT_ROT:
            rotate |= SKV_ROT_KEYS;
            break;
        case OPT_VROT:
            rotate |= SKV_ROT_VALUES;
            break;
        case OPT_SEED:
            if (tool_parse_u64(optarg, &seed) < 0)
                tool_usage_error("--seed: '%s' is not a whole number", optarg);
            seed_set = 1;
            break;
        case OPT_DROPQ:
            drop = 1;
            break;
        case OPT_KEEPQ:
            keep_q = 1;
            break;
        case OPT_KEEPA:
            keep_alloc = 1;
            break;
        case OPT_QUERIES:
            queries = optarg;
            break;
        case 'd':
            decompress = 1;
            break;
        case 'z':
            level = 6;
            if (optarg) {
                uint64_t v;
                if (tool_parse_u64(optarg, &v) < 0 || v > 9)
                    tool_usage_error("--compress: level must be 0..9, not '%s'", optarg);
                level = (int)v;
            }
            break;
        case TOOL_OPT_JSON:
            json = 1;
            break;
        case 'h':
            usage();
            return 0;
        default:
            tool_usage_error("unhandled option"); /* a table entry without a case */
        }
    }
    if (argc - optind > 1)
        tool_usage_error("at most one input file");
    const char *in = optind < argc ? argv[optind] : "-";
    if (qopts && !uniform)
        tool_usage_error("--group, --k-group, --v-group, --k-mode, --v-mode, --keys and "
                         "--key-tokens need --uniform (with an allocation the quantizer "
                         "settings come from it)");
    if (k_tokens && !chan)
        tool_usage_error("--key-tokens needs --keys channel");
    if (chan && kmode_set)
        tool_usage_error("--keys channel sets the key mode (asym per channel): no --k-mode");
    if (chan) {
        k_mode = SKV_QMODE_CHAN;
        k_tokens = k_tokens ? k_tokens : 32;
    }
    if (decompress && (uniform || drop || keep_q || keep_alloc || qopts || rotate || seed_set))
        tool_usage_error("-d cannot be combined with --uniform, --drop-queries, --keep-queries, "
                         "--keep-alloc, --rotate, --rotate-values, --seed or quantizer settings");
    if (seed_set && !rotate)
        tool_usage_error("--seed is the rotation's: it needs --rotate or --rotate-values");
    if (drop && keep_q)
        tool_usage_error("--drop-queries and --keep-queries are exclusive");
    if (queries && !decompress)
        tool_usage_error("--queries applies to -d (skv-attend takes it too)");

    tool_check_binary_input(in);
    if (decompress) {
        /* one layer at a time, the queries read alongside from --queries */
        skv_stream *is = skv_open_read(in);
        if (!is)
            tool_fail(tool_in_name(in));
        tool_check_binary_output(out);
        skv_stream *s = skv_open_write(out, level);
        if (!s) {
            skv_close(is);
            tool_fail(tool_out_name(out));
        }
        int qbad = 0;
        if (skv_cache_dequantize_stream(is, queries, s, &qbad) < 0) {
            const char *m = skv_errmsg();
            int outside = !strncmp(m, "write error", 11) || !strncmp(m, "stream ", 7);
            skv_discard(s);
            tool_fail(outside ? tool_out_name(out) : tool_in_name(qbad ? queries : in));
        }
        if (skv_close(s) < 0)
            tool_fail(tool_out_name(out));
        return 0;
    }

    /* one layer at a time: read the allocation, then quantize each layer
     * as it is read again (skv_cache_quantize) */
    skv_stream *is = skv_open_read(in);
    if (!is)
        tool_fail(tool_in_name(in));
    tool_check_binary_output(out);
    skv_stream *s = skv_open_write(out, level);
    if (!s) {
        skv_close(is);
        tool_fail(tool_out_name(out));
    }
    /* with an allocation the input is read once for it first */
    quant_progress qp = {uniform ? NULL : tool_progress_start("skv-quant: reading", 0, "bytes"),
                         uniform};
    tool_progress_watch(qp.pr, in);
    if (uniform)
        qp.pr = tool_progress_start("skv-quant: writing", 0, "layers");
    skv_quantize_opts qo = {.uniform = uniform,
                            .q = {.k_group = k_group, .v_group = v_group, .k_mode = k_mode,
                                  .v_mode = v_mode, .k_tokens = k_tokens, .rotate = rotate,
                                  .rot_seed = rotate ? seed : 0},
                            .flags = (keep_q ? 0 : SKV_CACHE_DROP_QUERIES) |
                                     (keep_alloc ? SKV_CACHE_KEEP_ALLOC : 0),
                            .progress = on_progress, .progress_ctx = &qp};
    skv_cache_plan plan;
    skv_cache_stats st;
    int rc = skv_cache_quantize(is, NULL, in, s, &qo, &plan, &st);
    tool_progress_end(qp.pr);
    if (rc < 0) {
        /* write failures are the output's; a value or an allocation that the
         * cache cannot hold is the input's */
        skv_discard(s);
        const char *m = skv_errmsg();
        tool_fail(rc == SKV_EIO && (!strncmp(m, "write error", 11) || !strncmp(m, "stream ", 7))
                  ? tool_out_name(out) : tool_in_name(in));
    }
    if (skv_close(s) < 0)
        tool_fail(tool_out_name(out));
    if (tool_verbosity)
        (json ? report_json : report)(out, &st, &plan);
    skv_cache_plan_free(&plan);
    return 0;
}
