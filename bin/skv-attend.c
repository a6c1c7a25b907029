/* skv-attend -- decode attention on a packed cache or a trace. */
#include "tool.h"

#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f)
{
    fprintf(f,
"Usage: skv-attend [options] [FILE]\n"
"Compute decode attention outputs for chosen query steps of every layer and\n"
"query head, on a packed cache (fused dequantization) or on a trace.\n"
"\n"
"  -s, --steps SPEC      query steps: LAST (default), all, N, a:b (half-open)\n"
"                        or a comma list of these\n"
"  -r, --reference       exact attention with float64 accumulation (on a\n"
"                        packed cache: on its dequantized rows)\n"
"      --dense TYPE      attention on an uncompressed fp16 or fp32 cache of a\n"
"                        trace (the speed baseline)\n"
"      --packed          the fused packed kernel (default for a packed cache);\n"
"                        a trace with an allocation (skv-alloc output) is\n"
"                        packed in memory first, as skv-quant would\n"
"      --probs           also write the attention probabilities\n"
"      --queries TRACE   the queries of TRACE (the trace the cache was made\n"
"                        from): skv-quant writes caches without queries\n"
"  -O, --format FMT      stream (default: a smartkv stream for skv-stats),\n"
"                        tsv (a text table) or json\n"
"      --tsv, --json     short for -O tsv, -O json\n"
"      --label TEXT      label the outputs (default: the cache's allocation,\n"
"                        e.g. \"policy=smartkv beta=0.25\"), shown by skv-stats\n"
"  -@, --threads N       worker threads (default: one per online CPU)\n"
"  -k, --kernel NAME     auto (default), scalar, avx2, int8-scalar, int8-avx2, int8-vnni\n"
"      --split N         tokens per work item (default %u)\n"
"      --device NAME     cpu (default) or cuda: the fused packed kernel on\n"
"                        the GPU (no --reference, --dense or --probs)\n"
"  -o, --output FILE     output file (default: standard output)\n"
"  -z, --compress[=N]    zlib-compress output chunks (level N, default 6)\n"
"%s"
"\n"
"FILE '-' or no FILE means standard input.  The default mode is the fused\n"
"packed kernel for a packed cache and --reference for a trace.\n",
            SKV_ATT_SPLIT, TOOL_COMMON_HELP);
}

static void json_floats(FILE *f, const float *v, uint64_t n)
{
    fputc('[', f);
    for (uint64_t j = 0; j < n; j++) {
        if (j)
            fputs(", ", f);
        if (isfinite(v[j]))
            fprintf(f, "%.9g", v[j]);
        else
            fputs("null", f);
    }
    fputc(']', f);
}

/* One object: the header, then one entry per (layer, head, step). */
static void print_json(FILE *f, const skv_attn *a)
{
    const skv_athd *h = &a->h;
    fprintf(f, "{\"mode\": \"%s\", \"layers\": %u, \"heads\": %u, \"kv_heads\": %u, "
            "\"head_dim\": %u, \"tokens\": %llu, \"steps\": [", skv_att_mode_name(h->mode),
            h->n_layers, h->n_heads, h->n_kv_heads, h->head_dim, (unsigned long long)h->n_tokens);
    for (uint64_t s = 0; s < h->n_steps; s++)
        fprintf(f, "%s%llu", s ? ", " : "", (unsigned long long)h->steps[s]);
    fputs("],\n \"outputs\": [", f);
    int first = 1;
    for (uint32_t l = 0; l < h->n_layers; l++)
        for (uint32_t hd = 0; hd < h->n_heads; hd++)
            for (uint64_t s = 0; s < h->n_steps; s++) {
                size_t i = ((size_t)l * h->n_heads + hd) * h->n_steps + s;
                fprintf(f, "%s{\"layer\": %u, \"head\": %u, \"step\": %llu, \"out\": ",
                        first ? "\n  " : ",\n  ", l, hd, (unsigned long long)h->steps[s]);
                first = 0;
                json_floats(f, a->out + i * h->head_dim, h->head_dim);
                if (a->prob) {
                    fputs(", \"prob\": ", f);
                    json_floats(f, a->prob + i * h->n_tokens, h->n_tokens);
                }
                fputc('}', f);
            }
    fputs("]}\n", f);
}

static void print_tsv(FILE *f, const skv_attn *a)
{
    const skv_athd *h = &a->h;
    fprintf(f, "# mode=%s layers=%u heads=%u kv_heads=%u head_dim=%u tokens=%llu steps=%llu\n",
            skv_att_mode_name(h->mode), h->n_layers, h->n_heads, h->n_kv_heads, h->head_dim,
            (unsigned long long)h->n_tokens, (unsigned long long)h->n_steps);
    fprintf(f, "kind\tlayer\thead\tstep\tvalues\n");
    for (uint32_t l = 0; l < h->n_layers; l++)
        for (uint32_t hd = 0; hd < h->n_heads; hd++)
            for (uint64_t s = 0; s < h->n_steps; s++) {
                const float *o = a->out + (((size_t)l * h->n_heads + hd) * h->n_steps + s) * h->head_dim;
                fprintf(f, "out\t%u\t%u\t%llu", l, hd, (unsigned long long)h->steps[s]);
                for (uint32_t j = 0; j < h->head_dim; j++)
                    fprintf(f, "\t%.9g", o[j]);
                fputc('\n', f);
            }
    if (!a->prob)
        return;
    for (uint32_t l = 0; l < h->n_layers; l++)
        for (uint32_t hd = 0; hd < h->n_heads; hd++)
            for (uint64_t s = 0; s < h->n_steps; s++) {
                const float *p = a->prob + (((size_t)l * h->n_heads + hd) * h->n_steps + s) * h->n_tokens;
                fprintf(f, "prob\t%u\t%u\t%llu", l, hd, (unsigned long long)h->steps[s]);
                for (uint64_t j = 0; j < h->n_tokens; j++)
                    fprintf(f, "\t%.9g", p[j]);
                fputc('\n', f);
            }
}

int main(int argc, char **argv)
{
    tool_init("skv-attend");
    static const struct option opts[] = {
        {"steps", required_argument, 0, 's'}, {"reference", no_argument, 0, 'r'},
        {"dense", required_argument, 0, 5}, {"packed", no_argument, 0, 6}, {"probs", no_argument, 0, 7},
        {"tsv", no_argument, 0, TOOL_OPT_TSV}, {"json", no_argument, 0, TOOL_OPT_JSON},
        {"format", required_argument, 0, 'O'}, {"label", required_argument, 0, 3}, {"queries", required_argument, 0, 8},
        {"kernel", required_argument, 0, 'k'}, {"split", required_argument, 0, 2}, {"device", required_argument, 0, 4},
        {"output", required_argument, 0, 'o'}, {"compress", optional_argument, 0, 'z'},
        TOOL_COMMON_OPTIONS, {0, 0, 0, 0}};
    skv_attend_req req = {SKV_ATT_AUTO, NULL, 0, NULL};
    skv_attend_opts ao = {0, SKV_KERNEL_AUTO, 0};
    const char *out = NULL, *queries = NULL;
    int level = -1, fmt = TOOL_FMT_STREAM, cuda = 0, o;
    uint64_t v;
    while ((o = tool_getopt(argc, argv, "s:rk:o:O:z::" TOOL_COMMON_SHORT, opts)) != -1) {
        switch (o) {
        case 's': req.steps = optarg; break;
        case 'r':
            if (req.mode != SKV_ATT_AUTO && req.mode != SKV_ATT_REFERENCE)
                tool_usage_error("--packed, --reference and --dense are exclusive");
            req.mode = SKV_ATT_REFERENCE;
            break;
        case 5:
            if (req.mode != SKV_ATT_AUTO)
                tool_usage_error("--packed, --reference and --dense are exclusive");
            if (!strcmp(optarg, "fp16") || !strcmp(optarg, "f16")) /* NOLINT(clang-analyzer-core.NonNullParamChecker): getopt sets optarg for required_argument */
                req.mode = SKV_ATT_DENSE_F16;
            else if (!strcmp(optarg, "fp32") || !strcmp(optarg, "f32"))
                req.mode = SKV_ATT_DENSE_F32;
            else
                tool_usage_error("--dense must be fp16 or fp32, not '%s'", optarg);
            break;
        case 6:
            if (req.mode != SKV_ATT_AUTO)
                tool_usage_error("--packed, --reference and --dense are exclusive");
            req.mode = SKV_ATT_PACKED;
            break;
        case 7: req.probs = 1; break;
        case 8: queries = optarg; break;
        case TOOL_OPT_TSV: fmt = TOOL_FMT_TSV; break;
        case TOOL_OPT_JSON: fmt = TOOL_FMT_JSON; break;
        case 'O':
            fmt = tool_opt_format(optarg, 1u << TOOL_FMT_STREAM | 1u << TOOL_FMT_TSV |
                                  1u << TOOL_FMT_JSON);
            break;
        case 3:
            if (strlen(optarg) > SKV_ATHD_MAX_LABEL) /* NOLINT(clang-analyzer-core.NonNullParamChecker): getopt sets optarg for required_argument */
                tool_usage_error("--label is longer than %u bytes", SKV_ATHD_MAX_LABEL);
            req.label = optarg;
            break;
        case 'k':
            ao.kernel = skv_att_kernel_parse(optarg);
            if (ao.kernel < 0)
                tool_usage_error("--kernel must be auto, scalar, avx2, int8-scalar, int8-avx2 or "
                                 "int8-vnni, not '%s'", optarg);
            if (!skv_att_kernel_available(ao.kernel))
                tool_usage_error("--kernel %s: this CPU lacks AVX2, FMA, F16C%s", optarg,
                                 ao.kernel == SKV_KERNEL_I8_VNNI ? " or VNNI" : "");
            break;
        case 2:
            if (tool_parse_size(optarg, &v) < 0 || v < 1 || v > (1u << 30))
                tool_usage_error("--split must be 1..2^30 tokens, not '%s'", optarg);
            ao.split = (uint32_t)v;
            break;
        case 4:
            if (!strcmp(optarg, "cuda")) /* NOLINT(clang-analyzer-core.NonNullParamChecker): getopt sets optarg for required_argument */
                cuda = 1;
            else if (!strcmp(optarg, "cpu"))
                cuda = 0;
            else
                tool_usage_error("--device must be cpu or cuda, not '%s'", optarg);
            break;
        case 'o': out = optarg; break;
        case 'z':
            if (!optarg)
                level = 6;
            else if (tool_parse_u64(optarg, &v) < 0 || v > 9)
                tool_usage_error("--compress level must be 0..9, not '%s'", optarg);
            else
                level = (int)v;
            break;
        case 'h': usage(stdout); return 0;
        default: tool_usage_error("unhandled option"); /* a table entry without a case */
        }
    }
    if (argc - optind > 1)
        tool_usage_error("too many files (one input)");
    const char *in = optind < argc ? argv[optind] : "-";
    ao.threads = (int)tool_threads; /* 0: one per online CPU */
    if (req.steps) {
        /* syntax check before reading any input; the range against the
         * input's token count is checked when it is read */
        uint64_t n;
        int src = skv_steps_parse(req.steps, SKV_MAX_TOKENS, NULL, &n);
        if (src == SKV_ENOMEM || src == SKV_ELIMIT) /* not the user's syntax */
            tool_die(EXIT_DATA, "%s", skv_errmsg());
        if (src < 0 && !strstr(skv_errmsg(), "out of range"))
            tool_usage_error("%s", skv_errmsg());
    }
    tool_check_binary_input(in);
    if (queries && !strcmp(queries, "-") && !strcmp(in, "-"))
        tool_usage_error("the cache and --queries cannot both be standard input");
    if (cuda) {
        if (req.mode != SKV_ATT_AUTO)
            tool_usage_error("--device cuda runs the fused packed kernel only (no --reference "
                             "or --dense)");
        if (req.probs)
            tool_usage_error("--device cuda does not write probabilities (--probs)");
        if (strcmp(in, "-") != 0) {
            /* a layout without a GPU path is refused before any device is
             * looked for (the header is enough: read up to the PKHD) */
            skv_stream *ps = skv_open_read(in);
            skv_cache_reader *pr = ps ? skv_cache_reader_open(ps, NULL) : NULL;
            int bad = pr && skv_cuda_cache_supported(skv_cache_reader_cache(pr)) < 0;
            skv_cache_reader_close(pr);
            if (bad)
                tool_die(EXIT_DATA, "%s: %s", tool_in_name(in), skv_errmsg());
            skv_error_clear();  /* other problems: reported when the file is read */
        }
        if (skv_cuda_available() < 0) {
            const char *m = skv_errmsg();
            if (!strncmp(m, "no CUDA", 7)) /* says which: backend or device */
                tool_die(EXIT_DATA, "%s", m);
            tool_die(EXIT_DATA, "no CUDA device available: %s", m);
        }
    }
    skv_attend_ctx *ctx = skv_attend_new(&ao);
    if (!ctx)
        tool_die(EXIT_DATA, "%s", skv_errmsg());

    char tmp[4096] = "";
    const char *target = out;
    int text = fmt != TOOL_FMT_STREAM;
    if (text) {
        /* compute into a temporary stream, then print it as text */
        const char *td = getenv("TMPDIR");
        snprintf(tmp, sizeof tmp, "%s/skv-attend.XXXXXX", td && *td ? td : "/tmp");
        int fd = mkstemp(tmp);
        if (fd < 0)
            tool_die(EXIT_DATA, "cannot create a temporary file %s", tmp);
        close(fd);
        skv_tmp_register(tmp);
        target = tmp;
    } else {
        tool_check_binary_output(out);
    }
    skv_stream *s = skv_open_write(target, level);
    if (!s) {
        if (*tmp)
            unlink(tmp);
        tool_fail(tool_out_name(out));
    }
    int qfail = 0, rc;
    tool_progress *pr = tool_progress_start(tool_name, 0, "bytes");
    tool_progress_watch(pr, in); /* a trace is read a layer at a time */
    if (queries && cuda) {
        /* a cache without queries: take them from its trace */
        skv_cache *cache = NULL;
        if (skv_cache_load(in, &cache) < 0)
            rc = -1;
        else if ((rc = skv_cache_queries_from(cache, queries)) < 0)
            qfail = 1;
        else
            rc = skv_cuda_attend_cache(cache, s, &req);
        skv_cache_free(cache);
    } else if (queries) {
        /* read alongside the cache, one layer at a time */
        rc = skv_attend_stream_queries(ctx, in, queries, s, &req, &qfail);
    } else {
        rc = cuda ? skv_cuda_attend_stream(in, s, &req) : skv_attend_stream(ctx, in, s, &req);
    }
    tool_progress_end(pr);
    if (rc < 0) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", skv_errmsg());
        /* the output's fault only when a write to it failed; "stream ends
         * inside ..." and every other message is about an input */
        int outside = skv_stream_failed(s);
        skv_discard(s);
        skv_attend_free(ctx);
        if (*tmp)
            unlink(tmp);
        tool_die(EXIT_DATA, "%s: %s", outside ? (*tmp ? tmp : tool_out_name(out))
                 : qfail ? tool_in_name(queries) : tool_in_name(in), msg);
    }
    skv_attend_free(ctx);
    if (skv_close(s) < 0) {
        if (*tmp)
            unlink(tmp);
        tool_fail(tool_out_name(out));
    }
    if (text) {
        skv_attn *a;
        rc = skv_attn_load(tmp, &a);
        unlink(tmp);
        if (rc < 0)
            tool_fail(tmp);
        FILE *f = tool_text_open(out);
        (fmt == TOOL_FMT_JSON ? print_json : print_tsv)(f, a);
        skv_attn_free(a);
        tool_text_close(f, out);
    }
    return 0;
}
