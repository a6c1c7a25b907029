/* skv-alloc -- decide each cached token's width from replayed attention and
 * append the allocation to the trace (see skv-alloc(1)). */
#include "tool.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(void)
{
    printf("Usage: %s [-p POLICY] [-b BETA] [options] [TRACE]\n"
           "Replay the attention of TRACE (default stdin), give every (layer, KV head,\n"
           "token) a width from {0,2,3,4,8,16} so that the packed cache fits BETA times\n"
           "the fp16 K+V bytes, and write the trace with the allocation appended.\n"
           "\n"
           "  -p, --policy POLICY    smartkv (default), greedy, optimal, uniform:N, random,\n"
           "                         position, layer-aware; baselines q8_0, q4_0,\n"
           "                         streaming, h2o, snapkv, mikv\n"
           "  -b, --budget BETA      cache bytes / fp16 K+V bytes (default 0.25; none for\n"
           "                         uniform:N); BETA >= 1 stores everything at 16 bits\n"
           "      --importance MODE  ema (default), cumulative, normalized, window, oracle\n"
           "      --decay G          ema decay in [0,1) (default 0.9)\n"
           "      --realloc R        reallocation interval in decode steps (default 16)\n"
           "      --window W         queries of the window mode (default 32)\n"
           "      --share-layers     one width per (KV head, token) for all layers, from\n"
           "                         the importance summed over layers\n"
           "      --bits LIST        allowed widths (default 2,3,4,8,16; 0 = evict)\n"
           "      --sinks N          first N tokens at the top width (default 4)\n"
           "      --recent N         last N tokens at the top width (default 32)\n"
           "      --seed S           seed of the random policy (default 1)\n"
           TOOL_THREADS_HELP
           "  -g, --group G          channels per scale group for K and V (default head_dim)\n"
           "      --k-mode MODE      key quantizer: asym (default), sym or ggml\n"
           "      --v-mode MODE      value quantizer: asym (default), sym or ggml\n"
           "      --summary          print the width histogram per layer to stderr (also -v)\n"
           "      --json             print the summary as one JSON object on stderr\n"
           "  -o, --output FILE      write to FILE (default stdout)\n"
           "  -z, --compress[=L]     zlib-compress the chunks written at level L (6)\n"
           TOOL_COMMON_HELP
           "Exit status: 0 success, 1 bad data (including a budget below the smallest\n"
           "cache this trace allows) or I/O failure, 2 usage error.\n",
           tool_name);
    exit(0);
}

enum {
    O_IMP = 256, O_DECAY, O_REALLOC, O_WINDOW, O_SHARE, O_BITS, O_SINKS, O_RECENT, O_SEED,
    O_KMODE, O_VMODE, O_SUMMARY
};

static const struct option longopts[] = {
    {"policy", required_argument, NULL, 'p'},
    {"budget", required_argument, NULL, 'b'},
    {"importance", required_argument, NULL, O_IMP},
    {"decay", required_argument, NULL, O_DECAY},
    {"realloc", required_argument, NULL, O_REALLOC},
    {"window", required_argument, NULL, O_WINDOW},
    {"share-layers", no_argument, NULL, O_SHARE},
    {"bits", required_argument, NULL, O_BITS},
    {"sinks", required_argument, NULL, O_SINKS},
    {"recent", required_argument, NULL, O_RECENT},
    {"seed", required_argument, NULL, O_SEED},
    {"group", required_argument, NULL, 'g'},
    {"k-mode", required_argument, NULL, O_KMODE},
    {"v-mode", required_argument, NULL, O_VMODE},
    {"summary", no_argument, NULL, O_SUMMARY},
    {"output", required_argument, NULL, 'o'},
    {"compress", optional_argument, NULL, 'z'},
    {"json", no_argument, NULL, TOOL_OPT_JSON},
    TOOL_COMMON_OPTIONS,
    {NULL, 0, NULL, 0},
};

static void summary(const skv_alloc *a, const skv_alloc_result *r, const skv_alloc_cfg *c)
{
    const skv_alloc_hdr *h = &a->hdr;
    fprintf(stderr, "%s: %s: %llu bytes predicted = beta %.6f", tool_name, h->text,
            (unsigned long long)r->bytes, (double)r->bytes / (double)r->fp16_bytes);
    if (r->budget_bytes)
        fprintf(stderr, " (budget %llu bytes, %.3f%% used)", (unsigned long long)r->budget_bytes,
                100.0 * (double)r->bytes / (double)r->budget_bytes);
    fprintf(stderr, "\n%s: fp16 K+V %llu bytes; smallest cache %llu bytes; objective %.9g",
            tool_name, (unsigned long long)r->fp16_bytes, (unsigned long long)r->min_bytes,
            r->objective);
    if (c->policy == SKV_POLICY_OPTIMAL && r->bound > 0)
        fprintf(stderr, " (lower bound %.9g)", r->bound);
    fprintf(stderr, "\n%-7s", "layer");
    for (int i = 0; i < SKV_NBITS; i++)
        fprintf(stderr, " %9u-bit", skv_bit_widths[i]);
    fprintf(stderr, "\n");
    uint64_t per = (uint64_t)h->n_kv_heads * h->n_tokens;
    for (uint32_t l = 0; l < h->n_layers; l++) {
        uint64_t n[SKV_NBITS] = {0};
        for (uint64_t i = 0; i < per; i++)
            n[skv_width_index(a->bits[l * per + i])]++;
        fprintf(stderr, "%-7u", l);
        for (int i = 0; i < SKV_NBITS; i++)
            fprintf(stderr, " %13llu", (unsigned long long)n[i]);
        fprintf(stderr, "\n");
    }
    fprintf(stderr, "%-7s", "total");
    for (int i = 0; i < SKV_NBITS; i++)
        fprintf(stderr, " %13llu", (unsigned long long)r->hist[i]);
    fprintf(stderr, "\n");
}

/* The same figures as summary(), as one JSON object on stderr. */
static void summary_json(const skv_alloc *a, const skv_alloc_result *r, const skv_alloc_cfg *c)
{
    const skv_alloc_hdr *h = &a->hdr;
    fprintf(stderr, "{\"bytes\": %llu, \"fp16_bytes\": %llu, \"beta\": %.6f, "
            "\"budget_bytes\": %llu, \"min_bytes\": %llu, \"objective\": %.9g",
            (unsigned long long)r->bytes, (unsigned long long)r->fp16_bytes,
            (double)r->bytes / (double)r->fp16_bytes, (unsigned long long)r->budget_bytes,
            (unsigned long long)r->min_bytes, r->objective);
    if (c->policy == SKV_POLICY_OPTIMAL && r->bound > 0)
        fprintf(stderr, ", \"lower_bound\": %.9g", r->bound);
    fputs(", \"widths\": [", stderr);
    for (int i = 0; i < SKV_NBITS; i++)
        fprintf(stderr, "%s%u", i ? ", " : "", skv_bit_widths[i]);
    fputs("], \"layers\": [", stderr);
    uint64_t per = (uint64_t)h->n_kv_heads * h->n_tokens;
    for (uint32_t l = 0; l < h->n_layers; l++) {
        uint64_t n[SKV_NBITS] = {0};
        for (uint64_t i = 0; i < per; i++)
            n[skv_width_index(a->bits[l * per + i])]++;
        fputs(l ? ", [" : "[", stderr);
        for (int i = 0; i < SKV_NBITS; i++)
            fprintf(stderr, "%s%llu", i ? ", " : "", (unsigned long long)n[i]);
        fputc(']', stderr);
    }
    fputs("], \"total\": [", stderr);
    for (int i = 0; i < SKV_NBITS; i++)
        fprintf(stderr, "%s%llu", i ? ", " : "", (unsigned long long)r->hist[i]);
    fputs("]}\n", stderr);
}

int main(int argc, char **argv)
{
    tool_init("skv-alloc");
    skv_alloc_cfg ac;
    skv_imp_cfg ic;
    skv_alloc_cfg_defaults(&ac);
    skv_imp_defaults(&ic);
    const char *out = NULL;
    int level = -1, want_summary = 0, have_budget = 0, have_bits = 0, json = 0;
    uint32_t group = 0;
    int o;
    while ((o = tool_getopt(argc, argv, "p:b:g:o:z::" TOOL_COMMON_SHORT, longopts)) != -1) {
        switch (o) {
        case 'p':
            tool_opt_policy("--policy", optarg, &ac.policy, &ac.uniform_bits);
            break;
        case 'b':
            if (tool_parse_double(optarg, &ac.budget) < 0 || !(ac.budget > 0))
                tool_usage_error("-b: '%s' is not a budget > 0", optarg);
            have_budget = 1;
            break;
        case O_IMP: {
            int m = skv_imp_mode_parse(optarg);
            if (m < 0)
                tool_usage_error("%s", skv_errmsg());
            ic.mode = (uint32_t)m;
            break;
        }
        case O_DECAY:
            if (tool_parse_double(optarg, &ic.decay) < 0 || !(ic.decay >= 0 && ic.decay < 1))
                tool_usage_error("--decay: '%s' is not in [0, 1)", optarg);
            break;
        case O_REALLOC: ic.realloc = tool_opt_u32("--realloc", optarg, 1, UINT32_MAX); break;
        case O_WINDOW: ic.window = tool_opt_u32("--window", optarg, 1, UINT32_MAX); break;
        case O_SHARE: ac.share_layers = 1; break;
        case O_BITS:
            ac.width_mask = tool_opt_widths("--bits", optarg);
            have_bits = 1;
            break;
        case O_SINKS: ac.sinks = tool_opt_u32("--sinks", optarg, 0, UINT32_MAX); break;
        case O_RECENT: ac.recent = tool_opt_u32("--recent", optarg, 0, UINT32_MAX); break;
        case O_SEED:
            if (tool_parse_u64(optarg, &ac.seed) < 0)
                tool_usage_error("--seed: '%s' is not a whole number", optarg);
            break;
        case 'g': group = tool_opt_u32("--group", optarg, 1, SKV_MAX_HEAD_DIM); break;
        case O_KMODE: ac.qcfg.k_mode = tool_opt_qmode("--k-mode", optarg); break;
        case O_VMODE: ac.qcfg.v_mode = tool_opt_qmode("--v-mode", optarg); break;
        case O_SUMMARY: want_summary = 1; break;
        case 'o': out = optarg; break;
        case 'z':
            level = optarg ? (int)tool_opt_u32("--compress", optarg, 0, 9) : 6;
            break;
        case TOOL_OPT_JSON: json = 1; break;
        case 'h': usage(); break;
        default: tool_usage_error("unhandled option"); /* a table entry without a case */
        }
    }
    if (argc - optind > 1)
        tool_usage_error("at most one input trace");
    const char *in = optind < argc ? argv[optind] : NULL;
    if (skv_policy_flags(ac.policy) & SKV_PF_FIXED) {
        if (!have_budget)
            ac.budget = 0;
        if (!have_bits)
            ac.width_mask = 1u << ac.uniform_bits;
        else if (!(ac.width_mask & (1u << ac.uniform_bits)))
            tool_usage_error("uniform:%u: width %u is not in --bits", ac.uniform_bits,
                             ac.uniform_bits);
    }
    if ((skv_policy_flags(ac.policy) & SKV_PF_PER_LAYER) && ac.share_layers)
        tool_usage_error("%s allocates per layer; drop --share-layers",
                         skv_policy_name(ac.policy));
    ac.qcfg.k_group = ac.qcfg.v_group = group; /* 0: head_dim, set from the trace */
    if (skv_alloc_cfg_resolve(&ac) < 0) /* q8_0/q4_0 layout, eviction widths */
        tool_usage_error("%s", skv_errmsg());
    if (tool_threads)
        ic.threads = tool_thread_count(SKV_MAX_THREADS);
    if (tool_verbosity >= 2 || json)
        want_summary = 1;
    if (!tool_verbosity)
        want_summary = 0;

    tool_check_binary_input(in);
    tool_check_binary_output(out);
    skv_stream *is = skv_open_read(in);
    if (!is)
        tool_fail(tool_in_name(in));
    skv_stream *os = skv_open_write(out, level);
    if (!os) {
        skv_close(is);
        tool_fail(tool_out_name(out));
    }
    skv_alloc *a = NULL;
    skv_alloc_result r;
    tool_progress *pr = tool_progress_start(tool_name, 0, "bytes");
    tool_progress_watch(pr, in);
    int rc = skv_alloc_filter(is, os, &ac, &ic, &a, &r);
    tool_progress_end(pr);
    if (rc < 0) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", skv_errmsg());
        skv_discard(os);
        skv_close(is);
        /* a setting that cannot work for this trace (a budget below its
         * smallest cache) depends on the data too: exit 1 */
        tool_die(EXIT_DATA, "%s: %s", tool_in_name(in), msg);
    }
    skv_close(is);
    if (skv_close(os) < 0) {
        skv_alloc_free(a);
        tool_fail(tool_out_name(out));
    }
    if (want_summary)
        (json ? summary_json : summary)(a, &r, &ac);
    skv_alloc_free(a);
    return 0;
}
