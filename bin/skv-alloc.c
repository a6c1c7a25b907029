/* skv-alloc -- decide each cached token's width from replayed attention and
 * append the allocation to the trace (see skv-alloc(1)). */
#include "tool.h"

#include <getopt.h>
#include <math.h>
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
           "  -p, --policy POLICY    smartkv (default), greedy, optimal, uniform:N,\n"
           "                         uniform-protect:N, random,\n"
           "                         position, layer-aware; baselines q8_0, q4_0,\n"
           "                         streaming, h2o, snapkv, mikv, sliding, dynamickv,\n"
           "                         uncomp, razor (needs --heads), rocketkv, kivi:N;\n"
           "                         prune-merge[:K]; atskv (needs --weights)\n"
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
           "      --recent N         last N tokens at the top width (default 32); kivi:N:\n"
           "                         the fp16 residual, left N tokens at a time\n"
           "      --residual N       the same as --recent\n"
           "      --seed S           seed of the random policy (default 1)\n"
           "      --heads FILE       razor: head scores from skv-trace heads\n"
           "prune-merge (one prune at the end of the trace; skv-quant merges the pruned\n"
           "tokens into centroids; -b, --bits, --sinks, --recent apply):\n"
           "      --max-cache-size B tokens kept per (layer, KV head) beside sinks and\n"
           "                         recent (default: from -b at the top width); with -b\n"
           "                         too, smartkv spends -b on them over --bits\n"
           "      --num-clusters K   centroids per (layer, KV head); 0 prunes only (default 8)\n"
           "      --lookback-window D  score by the attention of the last D queries (default 32)\n"
           "      --weights FILE     atskv: relevance weights from skv-alloc train\n"
           "      --model FILE       atskv: GGUF whose tokenizer classes tokens (as for\n"
           "                         train; without: class 0)\n"
           TOOL_THREADS_HELP
           "  -g, --group G          channels per scale group for K and V (default head_dim)\n"
           "      --k-mode MODE      key quantizer: asym (default), sym or ggml\n"
           "      --v-mode MODE      value quantizer: asym (default), sym or ggml\n"
           "      --keys LAYOUT      token (default) or channel: keys per channel over\n"
           "                         groups of --key-tokens tokens of a bucket (kivi:N)\n"
           "      --key-tokens G     tokens per key group with keys per channel (2..4096,\n"
           "                         default 32)\n"
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
    O_KMODE, O_VMODE, O_SUMMARY, O_HEADS, O_PM_B, O_PM_K, O_PM_D, O_PM_P, O_PM_LR, O_KEYS,
    O_KTOK, O_WEIGHTS, O_MODEL
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
    {"residual", required_argument, NULL, O_RECENT},
    {"keys", required_argument, NULL, O_KEYS},
    {"key-tokens", required_argument, NULL, O_KTOK},
    {"seed", required_argument, NULL, O_SEED},
    {"group", required_argument, NULL, 'g'},
    {"k-mode", required_argument, NULL, O_KMODE},
    {"v-mode", required_argument, NULL, O_VMODE},
    {"summary", no_argument, NULL, O_SUMMARY},
    {"heads", required_argument, NULL, O_HEADS},
    {"max-cache-size", required_argument, NULL, O_PM_B},
    {"num-clusters", required_argument, NULL, O_PM_K},
    {"lookback-window", required_argument, NULL, O_PM_D},
    {"pruning-interval", required_argument, NULL, O_PM_P},
    {"kmeans-learning-rate", required_argument, NULL, O_PM_LR},
    {"weights", required_argument, NULL, O_WEIGHTS},
    {"model", required_argument, NULL, O_MODEL},
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
    if (r->aux_bytes)
        fprintf(stderr, "\n%s: plus %llu bytes of page key bounds (stage 2) = beta %.6f",
                tool_name, (unsigned long long)r->aux_bytes,
                (double)(r->bytes + r->aux_bytes) / (double)r->fp16_bytes);
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

/* ---- skv-alloc train: fit ATSKV's relevance predictor (smartkv_relevance.h) ---- */

static void train_usage(void)
{
    printf("Usage: %s train --output WEIGHTS [options] TRACE\n"
           "Fit ATSKV's per-layer relevance predictor (L2-regularised logistic regression\n"
           "by Newton's method) on TRACE, recorded with skv-trace record --hidden; write\n"
           "the weights (rlvw chunks) and print the AUC of the learned score next to the\n"
           "EMA importance, on the training samples and on a held-out trace.\n"
           "\n"
           "  -o, --output FILE      weights file (required)\n"
           "      --eval TRACE       held-out trace (a text not trained on) for the AUC\n"
           "      --model FILE       GGUF whose tokenizer classes tokens (newline,\n"
           "                         punctuation; default $SKV_MODEL; without: class 0)\n"
           "      --horizon N        label: mass over the next N queries (default 32)\n"
           "      --label-q Q        label: at least the Q quantile of it (default 0.8)\n"
           "      --hidden-dims D    hidden-state projection for the fit (default 32;\n"
           "                         0: no hidden-state term)\n"
           "      --l2 L             L2 penalty on standardised weights (default 0.001)\n"
           "      --tol T            max |gradient| at convergence (default 1e-8)\n"
           "      --max-iter N       Newton steps at most (default 50)\n"
           "      --samples N        samples per layer (default 20000)\n"
           "      --tokens N         use the first N tokens of each trace (default 2048)\n"
           "      --t0 N, --stride N sample steps t0, t0+stride, ... (default 64, 16)\n"
           "      --seed S           seed of the sample draw and projection (default 1)\n"
           "      --beta-target F    fit each layer's threshold scale beta_l at active\n"
           "                         fraction F (default 0.25; 0: beta_l = 1)\n"
           TOOL_COMMON_HELP, tool_name);
    exit(0);
}

static uint8_t *vocab_classes(const char *model, uint32_t *n)
{
    skv_gguf *g = skv_gguf_open(model);
    if (!g)
        tool_fail(model);
    skv_tokenizer *tk = skv_tokenizer_load(g);
    if (!tk)
        tool_fail(model);
    skv_gguf_close(g);
    *n = skv_tokenizer_n_vocab(tk);
    uint8_t *cls = calloc(*n ? *n : 1, 1);
    if (!cls)
        tool_die(EXIT_DATA, "out of memory");
    char buf[256];
    for (uint32_t i = 0; i < *n; i++) {
        int len = skv_token_bytes(tk, (int32_t)i, 0, buf, sizeof buf);
        if (len > 0)
            cls[i] = skv_rlv_token_class(buf, len < (int)sizeof buf ? len : (int)sizeof buf);
    }
    skv_tokenizer_free(tk);
    return cls;
}

enum { AUC_EMA, AUC_NOHID, AUC_LEARNED };

static double mean_of(const skv_rlv_eval *e, uint32_t n, int which)
{
    double s = 0;
    uint32_t k = 0;
    for (uint32_t l = 0; l < n; l++) {
        double v = which == AUC_EMA ? e[l].auc_ema
                   : which == AUC_NOHID ? e[l].auc_nohid : e[l].auc_learned;
        if (v == v) {
            s += v;
            k++;
        }
    }
    return k ? s / k : NAN;
}

static int cmd_train(int argc, char **argv)
{
    enum { T_EVAL = 300, T_MODEL, T_HORIZON, T_Q, T_HDIMS, T_L2, T_TOL, T_ITER, T_SAMPLES,
           T_TOKENS, T_T0, T_STRIDE, T_SEED, T_BETA };
    static const struct option opts[] = {
        {"output", required_argument, NULL, 'o'}, {"eval", required_argument, NULL, T_EVAL},
        {"model", required_argument, NULL, T_MODEL},
        {"horizon", required_argument, NULL, T_HORIZON},
        {"label-q", required_argument, NULL, T_Q},
        {"hidden-dims", required_argument, NULL, T_HDIMS},
        {"l2", required_argument, NULL, T_L2}, {"tol", required_argument, NULL, T_TOL},
        {"max-iter", required_argument, NULL, T_ITER},
        {"samples", required_argument, NULL, T_SAMPLES},
        {"tokens", required_argument, NULL, T_TOKENS}, {"t0", required_argument, NULL, T_T0},
        {"stride", required_argument, NULL, T_STRIDE}, {"seed", required_argument, NULL, T_SEED},
        {"beta-target", required_argument, NULL, T_BETA},
        TOOL_COMMON_OPTIONS, {NULL, 0, NULL, 0}};
    skv_rlv_cfg c;
    skv_rlv_defaults(&c);
    const char *out = NULL, *held = NULL, *model = getenv("SKV_MODEL");
    int o;
    optind = 1;
    while ((o = tool_getopt(argc, argv, "o:" TOOL_COMMON_SHORT, opts)) != -1) {
        switch (o) {
        case 'o': out = optarg; break;
        case T_EVAL: held = optarg; break;
        case T_MODEL: model = optarg; break;
        case T_HORIZON: c.horizon = tool_opt_u32("--horizon", optarg, 1, 1u << 20); break;
        case T_Q: c.label_q = tool_opt_double("--label-q", optarg, 0, 1, 1); break;
        case T_HDIMS: c.hidden_dims = tool_opt_u32("--hidden-dims", optarg, 0, 1024); break;
        case T_L2: c.fit.l2 = tool_opt_double("--l2", optarg, 0, 1e6, 0); break;
        case T_TOL: c.fit.tol = tool_opt_double("--tol", optarg, 1e-15, 1, 0); break;
        case T_ITER: c.fit.max_iter = tool_opt_u32("--max-iter", optarg, 1, 10000); break;
        case T_SAMPLES: c.max_samples = tool_opt_u32("--samples", optarg, 100, 10000000); break;
        case T_TOKENS: c.max_tokens = tool_opt_u32("--tokens", optarg, 2, 65536); break;
        case T_T0: c.t0 = tool_opt_u32("--t0", optarg, 1, 1u << 24); break;
        case T_STRIDE: c.stride = tool_opt_u32("--stride", optarg, 1, 1u << 24); break;
        case T_SEED: c.seed = tool_opt_u32("--seed", optarg, 0, UINT32_MAX); break;
        case T_BETA: c.beta_target = tool_opt_double("--beta-target", optarg, 0, 1, 1); break;
        case 'h': train_usage(); break;
        default: tool_usage_error("unhandled option"); /* a table entry without a case */
        }
    }
    if (optind != argc - 1)
        tool_usage_error("train takes one training trace");
    if (!out)
        tool_usage_error("train needs --output WEIGHTS");
    tool_check_binary_output(out);
    const char *in = argv[optind];
    skv_rlv_vocab voc = {0, NULL};
    uint8_t *cls = NULL;
    if (model && *model) {
        cls = vocab_classes(model, &voc.n);
        voc.cls = cls;
    }
    skv_rlv_model *m = NULL, *m0 = NULL;
    skv_rlv_eval *tr = NULL, *ho = NULL;
    uint32_t L = 0, Lh = 0;
    if (skv_rlv_train(in, &c, &voc, &m, &m0, &tr, &L) < 0)
        tool_fail(tool_in_name(in));
    if (held && skv_rlv_evaluate(held, &c, &voc, m, m0, &ho, &Lh) < 0)
        tool_fail(tool_in_name(held));
    skv_stream *s = skv_open_write(out, -1);
    if (!s || skv_rlv_write(s, m) < 0 || skv_close(s) < 0)
        tool_fail(tool_out_name(out));
    printf("relevance predictor: %u layers, %u features + hidden state %s; label: mass over "
           "the next %u queries >= its q=%.2f quantile; l2 %g\n",
           L, (unsigned)SKV_RLV_NFEAT, m->n_embd ? "(n_embd weights)" : "(none)", c.horizon, c.label_q,
           c.fit.l2);
    if (c.beta_target > 0)
        printf("beta_l: the scale of 2^(k/4), k = -8..8, with the highest recall of the next %u "
               "queries' attention mass when ATSKV's selection keeps a fraction %g of the "
               "tokens on the training trace (nearest 1 among equals)\n", c.horizon,
               c.beta_target);
    printf("%-6s %8s %6s %5s %9s | %-20s | %-22s | %s\n", "layer", "samples", "pos", "iters",
           "|grad|", "train AUC ema learned", "beta_l recall (beta 1)",
           held ? "held-out AUC ema  no-h  learned" : "(no --eval)");
    for (uint32_t l = 0; l < L; l++) {
        printf("%-6u %8llu %6llu %5u %9.2e | %9.4f %10.4f | %6.3f %6.4f (%6.4f) |", l,
               (unsigned long long)tr[l].n, (unsigned long long)tr[l].pos, tr[l].iters,
               tr[l].grad_norm, tr[l].auc_ema, tr[l].auc_learned, tr[l].beta, tr[l].recall,
               tr[l].recall1);
        if (ho && l < Lh)
            printf(" %16.4f %6.4f %8.4f", ho[l].auc_ema, ho[l].auc_nohid, ho[l].auc_learned);
        printf("\n");
    }
    printf("%-6s %8s %6s %5s %9s | %9.4f %10.4f | %22s |", "mean", "", "", "", "",
           mean_of(tr, L, AUC_EMA),
           mean_of(tr, L, AUC_LEARNED), "");
    if (ho) {
        double e = mean_of(ho, Lh, AUC_EMA),
               n0 = mean_of(ho, Lh, AUC_NOHID),
               le = mean_of(ho, Lh, AUC_LEARNED);
        printf(" %16.4f %6.4f %8.4f\n", e, n0, le);
        printf("held-out: learned %s EMA (mean AUC %.4f vs %.4f, %+.4f)\n",
               le > e ? "beats" : "does NOT beat", le, e, le - e);
    } else {
        printf("\n");
    }
    skv_rlv_model_free(m);
    skv_rlv_model_free(m0);
    free(tr);
    free(ho);
    free(cls);
    return 0;
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
    if (r->aux_bytes) /* state beside the cache (rocketkv's page key bounds) */
        fprintf(stderr, ", \"aux_bytes\": %llu, \"beta_with_aux\": %.6f",
                (unsigned long long)r->aux_bytes,
                (double)(r->bytes + r->aux_bytes) / (double)r->fp16_bytes);
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
    if (argc > 1 && !strcmp(argv[1], "train"))
        return cmd_train(argc - 1, argv + 1);
    skv_alloc_cfg ac;
    skv_imp_cfg ic;
    skv_alloc_cfg_defaults(&ac);
    skv_imp_defaults(&ic);
    const char *out = NULL;
    int level = -1, want_summary = 0, have_budget = 0, have_bits = 0, json = 0;
    int keys = 0, kmode_set = 0;  /* keys: 0 default, 1 token, 2 channel */
    skv_head_scores heads = {0, 0, NULL, NULL};
    skv_rlv_model *weights = NULL;
    const char *model = NULL;
    uint32_t group = 0, pm_b = 0, pm_d = 32;
    int64_t pm_k = -1;
    int o;
    ac.pm_clusters = 8;
    while ((o = tool_getopt(argc, argv, "p:b:g:o:z::" TOOL_COMMON_SHORT, longopts)) != -1) {
        switch (o) {
        case 'p':
            if (optarg && !strncmp(optarg, "prune-merge", 11) && (optarg[11] == '\0' || optarg[11] == ':')) {
                ac.prune_merge = 1;
                ac.policy = SKV_POLICY_SMARTKV;  /* spends the budget on kept tokens */
                if (optarg[11] == ':')  /* prune-merge:K sets the clusters (0: pruned only) */
                    ac.pm_clusters = tool_opt_u32("--policy prune-merge:K", optarg + 12, 0,
                                                  SKV_CNTR_MAX);
                break;
            }
            if (optarg && !strcmp(optarg, "zack"))  /* no chunk holds a basis */
                tool_usage_error("--policy zack: online only (skv-eval -p zack); the packed "
                                 "format has no chunk for its bases");
            ac.prune_merge = 0;
            tool_opt_policy("--policy", optarg, &ac.policy, &ac.uniform_bits);
            break;
        case O_PM_B: pm_b = tool_opt_u32("--max-cache-size", optarg, 1, UINT32_MAX); break;
        case O_PM_K: pm_k = (int64_t)tool_opt_u32("--num-clusters", optarg, 0, SKV_CNTR_MAX); break;
        case O_PM_D: pm_d = tool_opt_u32("--lookback-window", optarg, 1, UINT32_MAX); break;
        case O_PM_P:
            tool_usage_error("--pruning-interval: skv-alloc prunes once, at the end of the "
                             "trace (pruning every P tokens is skv-eval's prune-merge)");
            break;
        case O_PM_LR:
            tool_usage_error("--kmeans-learning-rate: skv-quant's centroids are the exact mean "
                             "of their members (step 1/count); a learning rate is skv-eval's");
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
        case O_KMODE:
            ac.qcfg.k_mode = tool_opt_qmode("--k-mode", optarg);
            kmode_set = 1;
            break;
        case O_KEYS:
            keys = tool_opt_keys("--keys", optarg) ? 2 : 1;
            break;
        case O_KTOK: ac.qcfg.k_tokens = tool_opt_u32("--key-tokens", optarg, 2,
                                                     SKV_KEY_TOKENS_MAX); break;
        case O_VMODE: ac.qcfg.v_mode = tool_opt_qmode("--v-mode", optarg); break;
        case O_SUMMARY: want_summary = 1; break;
        case O_HEADS:
            skv_head_scores_free(&heads);
            if (skv_head_scores_read(optarg, &heads) < 0)
                tool_die(EXIT_DATA, "%s", skv_errmsg());
            ac.heads = &heads;
            break;
        case O_WEIGHTS:
            skv_rlv_model_free(weights);
            if (skv_rlv_load(optarg, &weights) < 0)
                tool_fail(tool_in_name(optarg));
            ac.rlv = weights;
            break;
        case O_MODEL: model = optarg; break;
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
    if (!ac.prune_merge && (pm_b || pm_k >= 0 || pm_d != 32))
        tool_usage_error("--max-cache-size, --num-clusters and --lookback-window are options "
                         "of -p prune-merge");
    if (ac.prune_merge) {
        ac.pm_max_cache = pm_b;
        ac.pm_lookback = pm_d;
        if (pm_k >= 0)
            ac.pm_clusters = (uint32_t)pm_k;
        if (pm_b && !have_budget)
            ac.budget = 0;  /* B alone: kept tokens at the top width, no budget */
    }
    if (skv_policy_flags(ac.policy) & SKV_PF_FIXED) {
        if (!have_budget)
            ac.budget = 0;
        if (!have_bits)     /* uniform-protect:N keeps the protected at 16 */
            ac.width_mask = 1u << ac.uniform_bits |
                            (skv_policy_flags(ac.policy) & SKV_PF_PROTECT ? 1u << 16 : 0);
        else if (!(ac.width_mask & (1u << ac.uniform_bits)))
            tool_usage_error("uniform:%u: width %u is not in --bits", ac.uniform_bits,
                             ac.uniform_bits);
    }
    if ((skv_policy_flags(ac.policy) & SKV_PF_HEADS) && !ac.heads)
        tool_usage_error("%s needs --heads FILE (skv-trace heads)", skv_policy_name(ac.policy));
    if ((skv_policy_flags(ac.policy) & SKV_PF_RELEVANCE) && !ac.rlv)
        tool_usage_error("%s needs --weights FILE (skv-alloc train)", skv_policy_name(ac.policy));
    skv_rlv_vocab voc = {0, NULL};
    uint8_t *cls = NULL;
    if (model && ac.rlv) {
        cls = vocab_classes(model, &voc.n);
        voc.cls = cls;
        ac.rlv_voc = &voc;
    }
    if ((skv_policy_flags(ac.policy) & SKV_PF_PER_LAYER) && ac.share_layers)
        tool_usage_error("%s allocates per layer; drop --share-layers",
                         skv_policy_name(ac.policy));
    ac.qcfg.k_group = ac.qcfg.v_group = group; /* 0: head_dim, set from the trace */
    int kivi = ac.policy == SKV_POLICY_KIVI;
    if (keys == 1 && kivi)
        tool_usage_error("kivi:N keeps keys per channel (no --keys token)");
    if ((keys == 2 || kivi) && kmode_set)
        tool_usage_error("keys per channel set the key mode (asym per channel): no --k-mode");
    if (ac.qcfg.k_tokens && keys != 2 && !kivi)
        tool_usage_error("--key-tokens needs --keys channel (or kivi:N)");
    if (keys == 2) {
        ac.qcfg.k_mode = SKV_QMODE_CHAN;
        ac.qcfg.k_tokens = ac.qcfg.k_tokens ? ac.qcfg.k_tokens : 32;
    }
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
        int outside = skv_stream_failed(os); /* a write failed: the output's */
        skv_discard(os);
        skv_close(is);
        /* a setting that cannot work for this trace (a budget below its
         * smallest cache) depends on the data too: exit 1 */
        skv_head_scores_free(&heads);
        skv_rlv_model_free(weights);
        free(cls);
        tool_die(EXIT_DATA, "%s: %s", outside ? tool_out_name(out) : tool_in_name(in), msg);
    }
    skv_close(is);
    if (skv_close(os) < 0) {
        skv_alloc_free(a);
        tool_fail(tool_out_name(out));
    }
    if (want_summary)
        (json ? summary_json : summary)(a, &r, &ac);
    skv_alloc_free(a);
    skv_head_scores_free(&heads);
    skv_rlv_model_free(weights);
    free(cls);
    return 0;
}
