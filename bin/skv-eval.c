/* skv-eval -- end-to-end quality with the compressed KV cache in the model's
 * decode loop: perplexity and KL against the fp16 cache, pass-key retrieval,
 * and resumable policy x budget sweeps (see skv-eval(1)). */
#include "tool.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static noreturn void usage(void)
{
    printf("Usage: %s ppl    --model M --text FILE [--policy P] [--budget B] [options]\n"
           "       %s needle --model M [--lengths LIST] [--depths LIST] [--policy LIST] [options]\n"
           "       %s sweep  --model M --text FILE -o OUT.tsv [--policies LIST] [--budgets LIST]\n"
           "                     [options]\n"
           "       %s merge  -o OUT.tsv SHARD.tsv...\n"
           "Run a GGUF model with smartkv compressing its KV cache while it decodes and\n"
           "measure the end-to-end cost against the fp16 cache in the same run.\n"
           "\n"
           "Commands:\n"
           "  ppl      perplexity of a text with the compressed cache and the fp16 cache:\n"
           "           delta PPL, mean KL divergence, top-1 agreement, achieved beta\n"
           "  needle   pass-key retrieval grid (lengths x depths) per policy, with the fp16\n"
           "           baseline beside it\n"
           "  sweep    one TSV row per (policy, budget, importance, decay, realloc) into\n"
           "           OUT.tsv; rows already there are skipped; -j N runs N at once\n"           "  merge    add the rows of sweep tables (e.g. --shard runs) that OUT.tsv lacks\n"
           "           and mark the Pareto front over all of them\n"
           "\n"
           "Cache options:\n"
           "  -p, --policy P         fp16 (the reference itself), f32, smartkv (default),\n"
           "                         greedy, optimal, uniform:N, uniform-protect:N,\n"
           "                         random, position,\n"
           "                         layer-aware, prune-merge[:K]; baselines q8_0, q4_0,\n"
           "                         streaming, h2o, snapkv, mikv, sliding, dynamickv,\n"
           "                         uncomp, razor (--heads), rocketkv, zack; atskv,\n"
           "                         atskv-ema\n"
           "                         (needle: a comma list)\n"
           "      --weights FILE     atskv: relevance weights from skv-alloc train\n"
           "      --offload FILE     atskv: the passive tier in FILE (created, removed at\n"
           "                         the end) instead of host memory\n"
           "      --active-bits N    atskv: active rows quantized per token at N = 4 or 8\n"
           "                         bits (default 16: fp16)\n"
           "      --heads FILE       razor: head scores from skv-trace heads\n"
           "      --calib FILE       zack: the text whose keys and values give the bases\n"
           "                         (default /usr/share/common-licenses/Apache-2.0; not\n"
           "                         the scored text)\n"
           "      --calib-tokens N   zack: its first N tokens, one context (default 1024)\n"
           "  -b, --budget BETA      cache bytes / fp16 K+V bytes (default 0.3)\n"
           "      --importance MODE  ema (default), cumulative, normalized; atskv (smartkv\n"
           "                         in the grouped layout: the learned relevance of\n"
           "                         --weights, compact tracker, its state counted in\n"
           "                         beta); atskv-full (the same, 28-byte tracker)\n"
           "      --decay G          ema decay in [0,1) (default 0.9)\n"
           "      --realloc R        reallocate every R tokens (default 16)\n"
           "      --ideal            idealised cache: requantize from a full-precision copy\n"
           "      --bits LIST        allowed widths (default 2,3,4,8,16; 0 = evict)\n"
           "      --sinks N          first N tokens at the top width (default 4)\n"
           "      --recent N         newest N tokens at the top width (default 32)\n"
           "  -g, --group G          channels per scale group (default head_dim)\n"
           "      --seed S           seed of the random policy, the pass keys and the rotations'\n"
           "                         signs (default 1)\n"
           "  -k, --kernel K         attention kernel: avx2 (default; scalar without AVX2),\n"
           "                         scalar, auto (the best int8), int8-scalar, int8-avx2,\n"
           "                         int8-vnni\n"
           "Grouped layout (any of these selects it; kivi:N always uses it):\n"
           "      --method           the method's configuration, the same as --keys channel\n"
           "                         --rotate --rotate-values --kv-split --error imp-range\n"
           "                         --residual 32 --protect-bits 8 --param-bits 8 --clip\n"
           "                         --head-weight 0.5 --recency 0.25 (options given with\n"
           "                         it win, wherever they stand; the widths stay --bits)\n"
           "      --grouped          the grouped layout (keys per token unless --keys)\n"
           "      --keys L           token (per token, --group channels) or channel\n"
           "                         (per channel over --key-tokens tokens)\n"
           "      --key-tokens G     tokens per per-channel key group (default 32)\n"
           "      --rotate           randomized Hadamard rotation of keys and queries\n"
           "      --rotate-values    values quantized after a randomized Hadamard rotation\n"
           "                         (each row rotated back: the attention is unchanged)\n"
           "      --kv-split         separate widths for the key and the value of a token\n"
           "      --clip             each span's range searched for the least squared\n"
           "                         error instead of its minimum and maximum (2-4 bits)\n"
           "      --error M          error model: imp-mse (default), imp-range or logit\n"
           "      --prior P          attention every token is assumed to draw, x 1/T\n"
           "                         (grouped layout; default 0.05)\n"
           "      --value-group G    channels per value scale group (default --group)\n"
           "      --residual R       newest tokens kept fp16; they leave R at a time\n"
           "                         (same as --realloc; kivi default 32)\n"
           "      --imp-power P      1: importance is the EMA of attention p (default);\n"
           "                         2: of p^2 (errors weighted as the output feels them)\n"
           "      --recency W        smartkv: add a 1/age prior of mass W to the tracked\n"
           "                         attention (mass 1) (grouped layout; default 0)\n"
           "      --keys-by-age      --kv-split, smartkv: key groups weighted by 1/age\n"
           "                         (as position weighs them), values by the tracked\n"
           "                         attention (an ablation)\n"
           "      --replan K         re-plan each held row at every K-th residual flush:\n"
           "                         the held key groups take turns, 1/K per flush\n"
           "                         (grouped layout; default 1)\n"
           "      --protect-bits N   sinks and residual quantized per token at N bits\n"
           "                         (8 or 4) as they enter; 16 (default): fp16\n"
           "      --param-bits N     8: scales and zero points of key groups (per\n"
           "                         channel) and values as 8-bit codes on per-group\n"
           "                         fp16 grids; 16 (default): fp16\n"
           "      --head-weight G    each layer and KV head's predicted damage scaled by\n"
           "                         (gain / |x|^2)^G: its output projection's gain over\n"
           "                         the residual stream's |x|^2 (grouped layout; 0..1,\n"
           "                         default 0: every head alike)\n"
           "prune-merge options (policy prune-merge; -b, --sinks, --recent apply):\n"
           "      --max-cache-size B kept tokens beyond sinks and recent (default: from -b)\n"
           "      --num-clusters K   centroids per layer and KV head; 0 prunes only (default 8)\n"
           "      --pruning-interval P  prune every P tokens (default 16)\n"
           "      --lookback-window D   score by the attention of the last D queries (default 32)\n"
           "      --kmeans-learning-rate ETA  centroid key step; 0 = 1/count (default 0)\n"
           "      --kept-bits LIST   widths of kept tokens (default 16); lower widths:\n"
           "                         merge + mixed precision within -b\n"
           "Evaluation options:\n"
           "  -m, --model FILE       GGUF model (required)\n"
           "  -f, --text FILE        text to score (ppl, sweep; - = stdin)\n"
           "      --ctx N            window tokens (default 512)\n"
           "      --stride S         window step (default ctx/2)\n"
           "      --max-tokens N     score only the first N tokens of the text\n"
           "  -P, --prefill N        first N tokens of each window as one prefill\n"
           "      --lengths LIST     needle prompt lengths (default 1K,2K,4K,8K)\n"
           "      --depths LIST      needle depths in percent (default 0,25,50,75,100)\n"
           "      --max-new N        needle decode steps (default 8)\n"
           "      --policies LIST    sweep: policies (default smartkv,random,uniform:8,\n"
           "                         uniform:4,uniform:2)\n"
           "      --budgets LIST     sweep: budgets (default 0.25,0.3,0.4,0.5)\n"
           "      --decays LIST      sweep: ema decays (default: --decay)\n"
           "      --reallocs LIST    sweep: intervals (default: --realloc)\n"
           "      --importances LIST sweep: importance modes (default: --importance)\n"
           "  -j, --jobs N           sweep: rows run at once (default 1)\n"
           "      --shard I/N        sweep: run only rows i with i %% N == I\n"
           "  -@, --threads N        model threads (default: online CPUs, divided among\n"
           "                         the sweep's jobs)\n"
           "      --ref-cache DIR    ppl, sweep: keep the fp16 reference's logits in DIR and\n"
           "                         reuse them (one model run per row instead of two)\n"
           "      --int8-matmul      ppl, sweep: matrix products on int8 activations (faster;\n"
           "                         adds a KL noise floor, see skv-eval(1)); needle uses them\n"
           "Output:\n"
           "  -O, --format FMT       text (default), tsv or json\n"
           "      --tsv, --json      short for -O tsv, -O json\n"
           "  -o, --output FILE      write to FILE (default stdout; sweep: required, appended)\n"
           TOOL_COMMON_HELP,
           tool_name, tool_name, tool_name, tool_name);
    exit(0);
}

enum {
    O_IMP = 256, O_DECAY, O_REALLOC, O_IDEAL, O_BITS, O_SINKS, O_RECENT, O_GROUP, O_SEED,
    O_KERNEL, O_TEXT, O_CTX, O_STRIDE, O_MAXTOK, O_PREFILL, O_LENGTHS, O_DEPTHS, O_MAXNEW,
    O_POLICIES, O_BUDGETS, O_DECAYS, O_REALLOCS, O_IMPS, O_SHARD, O_REFCACHE, O_INT8, O_KEYS,
    O_KEYTOK, O_ROTATE, O_KVSPLIT, O_ERROR, O_VGROUP, O_RESIDUAL, O_GROUPED, O_PRIOR, O_PROTBITS,
    O_HEADW, O_IMPPOW, O_RECENCY, O_KEYSAGE, O_REPLAN, O_PARAMBITS, O_VROTATE, O_CLIP, O_PM_B, O_PM_K, O_PM_P,
    O_PM_D, O_PM_LR, O_PM_BITS, O_WEIGHTS, O_HEADS, O_OFFLOAD, O_ACTIVE_BITS,
    O_CALIB, O_CALIB_TOK, O_METHOD
};

static const struct option longopts[] = {
    {"policy", required_argument, NULL, 'p'},
    {"budget", required_argument, NULL, 'b'},
    {"importance", required_argument, NULL, O_IMP},
    {"decay", required_argument, NULL, O_DECAY},
    {"realloc", required_argument, NULL, O_REALLOC},
    {"ideal", no_argument, NULL, O_IDEAL},
    {"bits", required_argument, NULL, O_BITS},
    {"sinks", required_argument, NULL, O_SINKS},
    {"recent", required_argument, NULL, O_RECENT},
    {"group", required_argument, NULL, 'g'},
    {"seed", required_argument, NULL, O_SEED},
    {"kernel", required_argument, NULL, 'k'},
    {"keys", required_argument, NULL, O_KEYS},
    {"key-tokens", required_argument, NULL, O_KEYTOK},
    {"rotate", no_argument, NULL, O_ROTATE},
    {"rotate-values", no_argument, NULL, O_VROTATE},
    {"clip", no_argument, NULL, O_CLIP},
    {"kv-split", no_argument, NULL, O_KVSPLIT},
    {"error", required_argument, NULL, O_ERROR},
    {"value-group", required_argument, NULL, O_VGROUP},
    {"residual", required_argument, NULL, O_RESIDUAL},
    {"grouped", no_argument, NULL, O_GROUPED},
    {"method", no_argument, NULL, O_METHOD},
    {"prior", required_argument, NULL, O_PRIOR},
    {"protect-bits", required_argument, NULL, O_PROTBITS},
    {"head-weight", required_argument, NULL, O_HEADW},
    {"param-bits", required_argument, NULL, O_PARAMBITS},
    {"imp-power", required_argument, NULL, O_IMPPOW},
    {"recency", required_argument, NULL, O_RECENCY},
    {"keys-by-age", no_argument, NULL, O_KEYSAGE},
    {"replan", required_argument, NULL, O_REPLAN},
    {"weights", required_argument, NULL, O_WEIGHTS},
    {"offload", required_argument, NULL, O_OFFLOAD},
    {"active-bits", required_argument, NULL, O_ACTIVE_BITS},
    {"heads", required_argument, NULL, O_HEADS},
    {"calib", required_argument, NULL, O_CALIB},
    {"calib-tokens", required_argument, NULL, O_CALIB_TOK},
    {"model", required_argument, NULL, 'm'},
    {"text", required_argument, NULL, 'f'},
    {"ctx", required_argument, NULL, O_CTX},
    {"stride", required_argument, NULL, O_STRIDE},
    {"max-tokens", required_argument, NULL, O_MAXTOK},
    {"prefill", required_argument, NULL, 'P'},
    {"lengths", required_argument, NULL, O_LENGTHS},
    {"depths", required_argument, NULL, O_DEPTHS},
    {"max-new", required_argument, NULL, O_MAXNEW},
    {"policies", required_argument, NULL, O_POLICIES},
    {"budgets", required_argument, NULL, O_BUDGETS},
    {"decays", required_argument, NULL, O_DECAYS},
    {"reallocs", required_argument, NULL, O_REALLOCS},
    {"importances", required_argument, NULL, O_IMPS},
    {"jobs", required_argument, NULL, 'j'},
    {"shard", required_argument, NULL, O_SHARD},
    {"tsv", no_argument, NULL, TOOL_OPT_TSV},
    {"json", no_argument, NULL, TOOL_OPT_JSON},
    {"format", required_argument, NULL, 'O'},
    {"output", required_argument, NULL, 'o'},
    {"ref-cache", required_argument, NULL, O_REFCACHE},
    {"int8-matmul", no_argument, NULL, O_INT8},
    {"max-cache-size", required_argument, NULL, O_PM_B},
    {"num-clusters", required_argument, NULL, O_PM_K},
    {"pruning-interval", required_argument, NULL, O_PM_P},
    {"lookback-window", required_argument, NULL, O_PM_D},
    {"kmeans-learning-rate", required_argument, NULL, O_PM_LR},
    {"kept-bits", required_argument, NULL, O_PM_BITS},
    TOOL_COMMON_OPTIONS,
    {NULL, 0, NULL, 0},
};

/* ---------------------------------------------------------------- options */

#define MAX_LIST 64

typedef struct opts {
    const char *cmd;
    skv_ec_cfg cfg;         /* everything but the policy */
    const char *policy;     /* ppl: one; needle: a comma list */
    int have_budget;
    const char *model, *text, *out;
    uint32_t ctx, stride, prefill, max_new, threads, jobs, shard_i, shard_n;
    uint64_t max_tokens, seed;
    uint32_t lengths[MAX_LIST], n_lengths, depths[MAX_LIST], n_depths;
    char *policies[MAX_LIST];
    uint32_t n_policies;
    double budgets[MAX_LIST];
    uint32_t n_budgets;
    double decays[MAX_LIST];
    uint32_t n_decays;
    uint32_t reallocs[MAX_LIST], n_reallocs;
    uint32_t imps[MAX_LIST], n_imps;
    int tsv, json, quiet;
    const char *ref_cache;  /* --ref-cache DIR */
    int int8;               /* --int8-matmul */
} opts;

/* Split a comma list into a fresh copy's items. */
static uint32_t split_list(const char *opt, const char *s, char **items, uint32_t max, char **own)
{
    char *c = strdup(s);
    if (!c)
        tool_die(EXIT_DATA, "out of memory");
    *own = c;
    uint32_t n = 0;
    for (char *tok = strtok(c, ","); tok; tok = strtok(NULL, ",")) {
        if (n == max)
            tool_usage_error("%s: more than %u items", opt, max);
        items[n++] = tok;
    }
    if (!n)
        tool_usage_error("%s: empty list", opt);
    return n;
}

/* RazorAttention's head scores (--heads), loaded once and shared by every row. */
static skv_head_scores razor_heads;

/* ATSKV's weights (--weights), loaded once and shared by every row. */
static skv_rlv_model *atskv_weights;

/* atskv-ema: the same two tiers and thresholds ranked by smartkv's EMA
 * importance alone (a learned model with one weight), to show what the
 * learned relevance adds. */
static skv_rlv_model *ema_only_model(void)
{
    static skv_rlv_model *m;
    if (!m) {
        if (!(m = skv_rlv_model_new(SKV_MAX_LAYERS, 0)))
            tool_fail("atskv-ema");
        for (uint32_t l = 0; l < m->n_layers; l++)
            m->layers[l].w[SKV_RLV_LOG_EMA] = 1;
        m->label = "atskv-ema";
    }
    return m;
}

/* ZACK's bases: computed once per process, on the first zack cache, from
 * the first --calib-tokens tokens of --calib (another text than the one
 * scored: a basis fitted to the scored text would flatter it). */
static const char *zack_calib = "/usr/share/common-licenses/Apache-2.0";
static uint32_t zack_calib_tokens = 1024;
static skv_zack_basis *zack_basis;

static const char *scored_text;  /* --text, for the check above */

static int same_file(const char *a, const char *b)
{
    struct stat sa, sb;
    return a && b && strcmp(a, "-") != 0 && strcmp(b, "-") != 0 && stat(a, &sa) == 0 &&
           stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

static void set_policy(skv_ec_cfg *c, const char *p)
{
    if (!strcmp(p, "atskv-ema")) {
        c->kind = SKV_EC_ATSKV;
        c->rlv = ema_only_model();
        return;
    }
    if (!strcmp(p, "atskv")) {
        c->kind = SKV_EC_ATSKV;
        c->rlv = atskv_weights;
        if (!atskv_weights)
            tool_usage_error("--policy atskv needs --weights FILE (skv-alloc train)");
        return;
    }
    if (!strcmp(p, "fp16")) {
        c->kind = SKV_EC_FP16;
        return;
    }
    if (!strcmp(p, "f32")) {
        c->kind = SKV_EC_F32;
        return;
    }
    if (!strcmp(p, "zack")) {  /* the bases come after the model (zack_attach) */
        if (same_file(zack_calib, scored_text))
            tool_usage_error("--calib %s is the scored text; calibrate zack on another text",
                             zack_calib);
        c->kind = SKV_EC_ZACK;
        return;
    }
    if (!strncmp(p, "prune-merge", 11) && (p[11] == '\0' || p[11] == ':')) {
        c->kind = SKV_EC_PRUNE_MERGE;
        if (p[11] == ':')  /* prune-merge:K sets the clusters (0: pruned-only) */
            c->pm.num_clusters = tool_opt_u32("--policy prune-merge:K", p + 12, 0, 65536);
        return;
    }
    c->kind = SKV_EC_COMPRESS;
    int k = skv_ec_kivi_parse(p, c);
    if (k < 0)
        tool_usage_error("--policy: %s", skv_errmsg());
    if (k > 0)
        return;
    if (skv_policy_parse(p, &c->alloc.policy, &c->alloc.uniform_bits) < 0)
        tool_usage_error("--policy: %s (also fp16, f32, prune-merge[:K])", skv_errmsg());
    if (skv_policy_flags(c->alloc.policy) & SKV_PF_HEADS) {
        if (!razor_heads.n_layers)
            tool_usage_error("--policy %s needs --heads FILE (skv-trace heads)", p);
        c->alloc.heads = &razor_heads;
    }
}

static void check_policy_name(const char *p)
{
    skv_ec_cfg c;
    skv_ec_defaults(&c);
    set_policy(&c, p);
}

static int imp_parse(const char *s)
{
    /* needs --weights: checked after the options */
    if (!strcmp(s, "atskv"))
        return (int)SKV_EC_IMP_ATSKV_COMPACT;
    if (!strcmp(s, "atskv-full"))
        return (int)SKV_EC_IMP_ATSKV;
    int m = skv_imp_mode_parse(s);
    if (m < 0 || (m != SKV_IMP_EMA && m != SKV_IMP_CUMULATIVE && m != SKV_IMP_NORMALIZED))
        tool_usage_error("--importance: '%s' is not ema, cumulative, normalized, atskv or "
                         "atskv-full", s);
    return m;
}

static const char *imp_name(uint32_t m)
{
    return m == SKV_EC_IMP_ATSKV_COMPACT ? "atskv" : m == SKV_EC_IMP_ATSKV ? "atskv-full"
                                                                           : skv_imp_mode_name(m);
}

/* ---------------------------------------------------------------- helpers */

static char *read_text(const char *path, size_t *len)
{
    FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (!f)
        tool_die(EXIT_DATA, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap);
    for (;;) {
        if (!b)
            tool_die(EXIT_DATA, "%s: out of memory", path);
        size_t r = fread(b + n, 1, cap - n, f);
        n += r;
        if (n < cap) {
            if (ferror(f))
                tool_die(EXIT_DATA, "%s: read error", tool_in_name(path));
            break;
        }
        cap *= 2;
        char *nb = realloc(b, cap);
        if (!nb)
            free(b);
        b = nb;
    }
    if (f != stdin)
        fclose(f);
    *len = n;
    return b;
}

static skv_model *load_model(const opts *o)
{
    skv_model *m = skv_model_load(o->model, (int)o->threads);
    if (!m)
        tool_fail(o->model);
    return m;
}

static int32_t *tokenize_file(skv_model *m, const opts *o, const char *path, size_t *n)
{
    const skv_tokenizer *tk = skv_model_tokenizer(m);
    if (!tk)
        tool_die(EXIT_DATA, "%s: %s", o->model, skv_model_tokenizer_error(m));
    size_t len;
    char *text = read_text(path, &len);
    int add_bos = 0;
    if (skv_gguf_find(skv_model_gguf(m), "tokenizer.ggml.add_bos_token"))
        skv_gguf_get_bool(skv_model_gguf(m), "tokenizer.ggml.add_bos_token", &add_bos);
    unsigned flags = add_bos && skv_tokenizer_bos(tk) >= 0 ? SKV_TOK_BOS : 0;
    int32_t *ids = NULL;
    if (skv_tokenize(tk, text, len, flags, &ids, n) < 0)
        tool_fail(tool_in_name(path));
    free(text);
    if (*n < 2)
        tool_die(EXIT_DATA, "%s: fewer than 2 tokens", tool_in_name(path));
    return ids;
}

static int32_t *tokenize_text(skv_model *m, const opts *o, size_t *n)
{
    return tokenize_file(m, o, o->text, n);
}

static void zack_attach(skv_model *m, const opts *o, skv_ec_cfg *c)
{
    if (c->kind != SKV_EC_ZACK)
        return;
    if (!zack_basis) {
        size_t n;
        int32_t *ids = tokenize_file(m, o, zack_calib, &n);
        if (n > zack_calib_tokens)
            n = zack_calib_tokens;
        if (skv_zack_calibrate(m, ids, n, &zack_basis) < 0)
            tool_die(EXIT_DATA, "%s: zack calibration: %s", zack_calib, skv_errmsg());
        free(ids);
    }
    c->zack = zack_basis;
}

static FILE *open_out(const char *path)
{
    if (!path || !strcmp(path, "-"))
        return stdout;
    FILE *f = fopen(path, "w");
    if (!f)
        tool_die(EXIT_DATA, "%s: %s", path, strerror(errno));
    return f;
}

static void close_out(FILE *f, const char *path)
{
    if (fflush(f) != 0 || ferror(f) || (f != stdout && fclose(f) != 0))
        tool_die(EXIT_DATA, "%s: write error", tool_out_name(path));
}

typedef struct prog {
    const char *what;
    int quiet, tty;
    int last;
} prog;

static void progress(void *ctx, uint64_t done, uint64_t total)
{
    prog *p = ctx;
    if (p->quiet || !total)
        return;
    int pct = (int)(100 * done / total);
    if (p->tty) {
        fprintf(stderr, "\r%s: %s: %llu/%llu tokens (%d%%)%s", tool_name, p->what,
                (unsigned long long)done, (unsigned long long)total, pct, done == total ? "\n" : "");
    } else if (pct / 10 != p->last / 10 || done == total) {
        fprintf(stderr, "%s: %s: %d%%\n", tool_name, p->what, pct);
    }
    p->last = pct;
}

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 32)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static double jnum(double v) { return isfinite(v) ? v : 0; }

/* ---------------------------------------------------------------- ppl */

static void hist_text(const skv_ec_stats *s, char *buf, size_t n)
{
    uint64_t tot = 0;
    for (int i = 1; i < SKV_NBITS; i++)
        tot += s->hist[i];
    buf[0] = 0;
    if (!tot) {
        snprintf(buf, n, "-");
        return;
    }
    size_t w = 0;
    for (int i = 1; i < SKV_NBITS && w < n; i++)
        w += (size_t)snprintf(buf + w, n - w, "%s%u:%.1f%%", w ? " " : "", skv_bit_widths[i],
                              100.0 * (double)s->hist[i] / (double)tot);
}

static const char *tsv_head = "label\tpolicy\tbeta\tbytes\tkl\tppl\tdppl\ttop1\tppl_ref\tkl_max\t"
                              "front\tbudget\timportance\tdecay\trealloc\tideal\tbeta_alloc\t"
                              "beta_end\tmeta_frac\tn_scored\tseconds\tref_seconds\ttrack_frac\t"
                              "realloc_frac\n";

static void policy_text(const skv_ec_cfg *c, char *buf, size_t n)
{
    if (c->kind == SKV_EC_FP16)
        snprintf(buf, n, "fp16");
    else if (c->kind == SKV_EC_F32)
        snprintf(buf, n, "f32");
    else if (c->kivi_bits)
        snprintf(buf, n, "kivi:%u", c->kivi_bits);
    else if (c->kind == SKV_EC_PRUNE_MERGE)
        snprintf(buf, n, "prune-merge:%u", c->pm.num_clusters);
    else if (c->kind == SKV_EC_ATSKV)
        snprintf(buf, n, "%s", c->rlv && c->rlv->label ? c->rlv->label : "atskv");
    else if (c->kind == SKV_EC_ZACK)
        snprintf(buf, n, "zack");
    else
        skv_policy_format(c->alloc.policy, c->alloc.uniform_bits, buf, n);
}

static void tsv_row(FILE *f, const skv_ec_cfg *c, const skv_ppl_result *r, int front)
{
    /* what the policy fixes: no budget for fixed layouts, its importance mode */
    unsigned pf = skv_policy_flags(c->alloc.policy);
    uint32_t imp = c->kind == SKV_EC_COMPRESS ? skv_policy_imp_mode(c->alloc.policy, c->imp_mode)
                                              : c->imp_mode;
    char label[160], pol[32];
    skv_ec_describe(c, label, sizeof label);
    policy_text(c, pol, sizeof pol);
    double dec = r->seconds > 0 ? r->seconds * 1e9 : 1;
    fprintf(f, "%s\t%s\t%.6f\t%llu\t%.6g\t%.6f\t%.6f\t%.6f\t%.6f\t%.6g\t%d\t%g\t%s\t%g\t%u\t%d\t"
            "%.6f\t%.6f\t%.6f\t%llu\t%.3f\t%.3f\t%.5f\t%.5f\n",
            label, pol, r->beta, (unsigned long long)r->stats.bytes, r->kl, r->ppl,
            r->ppl - r->ppl_ref, r->top1, r->ppl_ref, r->kl_max, front,
            (c->kind == SKV_EC_COMPRESS && !(pf & SKV_PF_FIXED)) ||
                    (c->kind == SKV_EC_PRUNE_MERGE && !c->pm.max_cache_size) ||
                    c->kind == SKV_EC_ATSKV || c->kind == SKV_EC_ZACK
                ? c->alloc.budget
                : 0,
            imp_name(imp), c->decay, c->realloc, c->ideal, r->beta_alloc,
            r->beta_end, r->meta_frac, (unsigned long long)r->n_scored, r->seconds, r->ref_seconds,
            (double)r->stats.track_ns / dec, (double)r->stats.realloc_ns / dec);
}

static void ppl_report(FILE *f, const opts *o, const skv_ec_cfg *c, const skv_ppl_result *r,
                       const char *model_name)
{
    char label[160], hist[160];
    skv_ec_describe(c, label, sizeof label);
    hist_text(&r->stats, hist, sizeof hist);
    double dec = r->seconds > 0 ? r->seconds * 1e9 : 1;
    if (o->tsv) {
        fputs(tsv_head, f);
        tsv_row(f, c, r, 0);
    } else if (o->json) {
        fprintf(f, "{\"model\": ");
        json_str(f, model_name);
        fprintf(f, ", \"text\": ");
        json_str(f, tool_in_name(o->text));
        fprintf(f, ", \"cache\": ");
        json_str(f, label);
        fprintf(f, ", \"tokens\": %llu, \"windows\": %llu, \"ctx\": %u, \"stride\": %u, "
                "\"scored\": %llu, \"ppl\": %.6f, \"ppl_ref\": %.6f, \"dppl\": %.6f, "
                "\"nll\": %.6f, \"nll_ref\": %.6f, \"kl\": %.6g, \"kl_max\": %.6g, "
                "\"top1\": %.6f, \"beta\": %.6f, \"beta_alloc\": %.6f, \"beta_end\": %.6f, "
                "\"meta_frac\": %.6f, \"bytes\": %llu, \"fp16_bytes\": %llu, \"reallocs\": %llu, "
                "\"budget_raised\": %llu, \"requant_rows\": %llu, \"upgrades\": %llu, "
                "\"downgrades\": %llu, \"widths\": ",
                (unsigned long long)r->n_tokens, (unsigned long long)r->n_windows, o->ctx,
                o->stride, (unsigned long long)r->n_scored, jnum(r->ppl), jnum(r->ppl_ref),
                jnum(r->ppl - r->ppl_ref), jnum(r->nll), jnum(r->nll_ref), jnum(r->kl),
                jnum(r->kl_max), jnum(r->top1), r->beta, r->beta_alloc, r->beta_end, r->meta_frac,
                (unsigned long long)r->stats.bytes, (unsigned long long)r->stats.fp16_bytes,
                (unsigned long long)r->stats.n_realloc, (unsigned long long)r->stats.n_budget_raised,
                (unsigned long long)r->stats.requant_rows, (unsigned long long)r->stats.upgrades,
                (unsigned long long)r->stats.downgrades);
        json_str(f, hist);
        fprintf(f, ", \"seconds\": %.3f, \"ref_seconds\": %.3f, \"track_frac\": %.6f, "
                "\"realloc_frac\": %.6f", r->seconds, r->ref_seconds,
                (double)r->stats.track_ns / dec, (double)r->stats.realloc_ns / dec);
        if (c->kind == SKV_EC_ATSKV)
            fprintf(f, ", \"passive_rows\": %llu, \"passive_bytes\": %llu, "
                    "\"passive_frac\": %.6f, \"passive_evictions\": %llu, "
                    "\"passive_recalls\": %llu, \"passive_recalls_per_step\": %.6f, "
                    "\"passive_recall_us\": %.3f",
                    (unsigned long long)r->stats.passive_rows,
                    (unsigned long long)r->stats.passive_bytes,
                    r->stats.fp16_bytes ? (double)r->stats.passive_bytes / (double)r->stats.fp16_bytes : 0,
                    (unsigned long long)r->stats.evictions, (unsigned long long)r->stats.recalls,
                    r->n_tokens ? (double)r->stats.recalls / (double)r->n_tokens : 0,
                    r->stats.recalls ? (double)r->stats.recall_ns / 1e3 / (double)r->stats.recalls : 0);
        if (c->kind == SKV_EC_ATSKV && c->offload)
            fprintf(f, ", \"passive_offload_written\": %llu, \"passive_offload_read\": %llu, "
                    "\"passive_offload_file\": %llu",
                    (unsigned long long)r->stats.offload_written,
                    (unsigned long long)r->stats.offload_read,
                    (unsigned long long)r->stats.offload_file);
        fprintf(f, "}\n");
    } else {
        fprintf(f, "model       %s\n", model_name);
        fprintf(f, "text        %s: %llu tokens, %llu window(s) of %u (stride %u), %llu scored\n",
                tool_in_name(o->text), (unsigned long long)r->n_tokens,
                (unsigned long long)r->n_windows, o->ctx, o->stride,
                (unsigned long long)r->n_scored);
        fprintf(f, "cache       %s\n", label);
        fprintf(f, "ppl         %.4f (fp16 cache %.4f, delta %+.4f)\n", r->ppl, r->ppl_ref,
                r->ppl - r->ppl_ref);
        fprintf(f, "kl          %.6g nats/token mean (max %.4g)\n", r->kl, r->kl_max);
        fprintf(f, "top1        %.4f agreement with the fp16 cache\n", r->top1);
        fprintf(f, "beta        %.4f mean while scoring (after reallocation %.4f, at window end "
                "%.4f); tracking state +%.4f\n", r->beta, r->beta_alloc, r->beta_end,
                r->meta_frac);
        fprintf(f, "widths      %s\n", hist);
        fprintf(f, "reallocs    %llu (%llu at the smallest cache), %llu rows requantized "
                "(%llu down, %llu up)\n", (unsigned long long)r->stats.n_realloc,
                (unsigned long long)r->stats.n_budget_raised,
                (unsigned long long)r->stats.requant_rows,
                (unsigned long long)r->stats.downgrades, (unsigned long long)r->stats.upgrades);
        fprintf(f, "time        %.2f s with this cache, %.2f s fp16; tracking %.2f%%, "
                "reallocation %.2f%% of this cache's time\n", r->seconds, r->ref_seconds,
                100.0 * (double)r->stats.track_ns / dec, 100.0 * (double)r->stats.realloc_ns / dec);
        if (c->kind == SKV_EC_ATSKV)
            fprintf(f, "passive     %llu rows, %llu bytes (%.4f of fp16) at the end; %llu "
                    "evictions, %llu recalls (%.4f per step, %.1f us each)\n",
                    (unsigned long long)r->stats.passive_rows,
                    (unsigned long long)r->stats.passive_bytes,
                    r->stats.fp16_bytes ? (double)r->stats.passive_bytes / (double)r->stats.fp16_bytes : 0,
                    (unsigned long long)r->stats.evictions, (unsigned long long)r->stats.recalls,
                    r->n_tokens ? (double)r->stats.recalls / (double)r->n_tokens : 0,
                    r->stats.recalls ? (double)r->stats.recall_ns / 1e3 / (double)r->stats.recalls : 0);
        if (c->kind == SKV_EC_ATSKV && c->offload)
            fprintf(f, "offload     %s: %llu bytes written, %llu read back; %llu bytes at the "
                    "end (removed)\n", c->offload, (unsigned long long)r->stats.offload_written,
                    (unsigned long long)r->stats.offload_read,
                    (unsigned long long)r->stats.offload_file);
    }
}

static skv_ppl_opts ppl_opts(const opts *o, prog *p)
{
    skv_ppl_opts po = {0};
    po.ctx = o->ctx;
    po.stride = o->stride;
    po.prefill = o->prefill;
    po.max_tokens = o->max_tokens;
    po.reference = 1;
    po.ref_cache = o->ref_cache;
    po.int8 = o->int8;
    po.progress = progress;
    po.progress_ctx = p;
    return po;
}

/* The rule of skv-alloc: a budget below the smallest cache the settings
 * allow (at a full window of ctx tokens, tracking state included) is an
 * error, not a silent run at a higher beta.  Returns 0 or <0 (message set). */
static int check_budget(const skv_model *m, const skv_ec_cfg *c, uint64_t ctx)
{
    /* the grouped layout only: the packed path still solves at its minimum
     * when the budget is below it (counted as budget_raised) */
    if (c->kind != SKV_EC_COMPRESS || c->layout != SKV_EC_GROUPED ||
        !(skv_policy_flags(c->alloc.policy) & SKV_PF_BUDGET))
        return 0;
    const skv_model_params *p = skv_model_get_params(m);
    double mb;
    if (skv_ec_min_beta(c, p->n_layers, p->n_heads, p->n_kv_heads, p->head_dim, ctx, &mb) < 0)
        return -1;
    if (c->alloc.budget < mb)
        return skv_error(SKV_EINVAL, "budget %g is below the smallest cache these settings allow "
                         "at a context of %llu tokens (beta %.4f, tracking state included)",
                         c->alloc.budget, (unsigned long long)ctx, mb);
    return 0;
}

/* The file a runtime error names: the offload file when the message is
 * about it, else the model. */
static const char *fail_name(const opts *o)
{
    const char *f = o->cfg.offload;
    size_t n = f ? strlen(f) : 0;
    return f && !strncmp(skv_errmsg(), f, n) && skv_errmsg()[n] == ':' ? f : o->model;
}

static int cmd_ppl(opts *o)
{
    if (!o->text)
        tool_usage_error("ppl needs --text FILE");
    if (strchr(o->policy, ','))
        tool_usage_error("ppl takes one --policy");
    skv_ec_cfg c = o->cfg;
    set_policy(&c, o->policy);
    if (skv_ec_cfg_check(&c) < 0)
        tool_usage_error("%s", skv_errmsg());
    skv_model *m = load_model(o);
    zack_attach(m, o, &c);
    size_t n;
    int32_t *ids = tokenize_text(m, o, &n);
    if (o->ctx > n)
        o->ctx = (uint32_t)n;
    if (!o->stride)
        o->stride = o->ctx / 2 ? o->ctx / 2 : 1;
    if (o->stride > o->ctx)
        tool_usage_error("--stride %u exceeds --ctx %u", o->stride, o->ctx);
    if (check_budget(m, &c, o->max_tokens && o->max_tokens < o->ctx ? o->max_tokens : o->ctx) < 0)
        tool_die(EXIT_DATA, "%s", skv_errmsg());
    prog p = {"ppl", o->quiet, isatty(2), -1};
    skv_ppl_opts po = ppl_opts(o, &p);
    skv_ppl_result r;
    if (skv_eval_ppl(m, ids, n, &c, &po, &r) < 0)
        tool_fail(fail_name(o));
    FILE *f = open_out(o->out);
    ppl_report(f, o, &c, &r, skv_model_get_params(m)->name);
    close_out(f, o->out);
    free(ids);
    skv_model_free(m);
    return 0;
}

/* ---------------------------------------------------------------- needle */

static int cmd_needle(opts *o)
{
    char *pols[MAX_LIST], *own = NULL;
    uint32_t np = split_list("--policy", o->policy, pols, MAX_LIST - 1, &own);
    skv_ec_cfg cfgs[MAX_LIST];
    /* the fp16 baseline first */
    skv_ec_cfg base = o->cfg;
    set_policy(&base, "fp16");
    cfgs[0] = base;
    uint32_t nc = 1;
    for (uint32_t i = 0; i < np; i++) {
        if (!strcmp(pols[i], "fp16"))
            continue;
        skv_ec_cfg c = o->cfg;
        set_policy(&c, pols[i]);
        if (skv_ec_cfg_check(&c) < 0)
            tool_usage_error("%s", skv_errmsg());
        cfgs[nc++] = c;
    }
    skv_model *m = load_model(o);
    for (uint32_t i = 0; i < nc; i++)
        zack_attach(m, o, &cfgs[i]);
    skv_needle_opts no = {o->seed, o->max_new};
    uint32_t NL = o->n_lengths, ND = o->n_depths;
    skv_needle_result *res = calloc((size_t)nc * NL * ND, sizeof *res);
    if (!res)
        tool_die(EXIT_DATA, "out of memory");
    uint64_t done = 0, total = (uint64_t)nc * NL * ND;
    for (uint32_t li = 0; li < NL; li++)
        for (uint32_t di = 0; di < ND; di++)
            for (uint32_t ci = 0; ci < nc; ci++) {
                skv_needle_result *r = &res[((size_t)ci * NL + li) * ND + di];
                char label[160];
                skv_ec_describe(&cfgs[ci], label, sizeof label);
                if (skv_eval_needle(m, &cfgs[ci], o->lengths[li], o->depths[di], &no, r) < 0)
                    tool_fail(fail_name(o));
                done++;
                if (!o->quiet)
                    fprintf(stderr, "%s: needle %llu/%llu: %s length %u depth %u%%: key %u, "
                            "answer '%s' %s (%.1f s)\n", tool_name, (unsigned long long)done,
                            (unsigned long long)total, label, o->lengths[li], o->depths[di],
                            r->key, r->answer, r->correct ? "ok" : "wrong", r->seconds);
            }
    FILE *f = open_out(o->out);
    if (o->tsv)
        fputs("cache\tlength\tdepth\tprompt_tokens\tkey\tcorrect\tfp16_correct\tagree\tbeta\t"
              "answer\n", f);
    if (o->json)
        fputs("[", f);
    int first = 1;
    for (uint32_t ci = 0; ci < nc; ci++) {
        char label[160];
        skv_ec_describe(&cfgs[ci], label, sizeof label);
        uint32_t ok = 0, agree = 0;
        for (uint32_t li = 0; li < NL; li++)
            for (uint32_t di = 0; di < ND; di++) {
                const skv_needle_result *r = &res[((size_t)ci * NL + li) * ND + di];
                const skv_needle_result *b = &res[(size_t)li * ND + di];
                ok += (uint32_t)r->correct;
                agree += r->correct == b->correct;
                if (o->tsv)
                    fprintf(f, "%s\t%u\t%u\t%u\t%u\t%d\t%d\t%d\t%.6f\t%s\n", label, o->lengths[li],
                            o->depths[di], r->n_prompt, r->key, r->correct, b->correct,
                            r->correct == b->correct, r->beta, r->answer);
                if (o->json) {
                    fprintf(f, "%s\n {\"cache\": ", first ? "" : ",");
                    json_str(f, label);
                    fprintf(f, ", \"length\": %u, \"depth\": %u, \"prompt_tokens\": %u, "
                            "\"key\": %u, \"correct\": %s, \"fp16_correct\": %s, \"beta\": %.6f, "
                            "\"answer\": ", o->lengths[li], o->depths[di], r->n_prompt, r->key,
                            r->correct ? "true" : "false", b->correct ? "true" : "false", r->beta);
                    json_str(f, r->answer);
                    fputs("}", f);
                    first = 0;
                }
            }
        if (o->tsv || o->json)
            continue;
        fprintf(f, "%s: %u/%u correct", label, ok, NL * ND);
        if (ci)
            fprintf(f, ", %u/%u cells agree with fp16", agree, NL * ND);
        fprintf(f, "\n%-8s", "length");
        for (uint32_t di = 0; di < ND; di++)
            fprintf(f, " %5u%%", o->depths[di]);
        fprintf(f, "   beta\n");
        for (uint32_t li = 0; li < NL; li++) {
            fprintf(f, "%-8u", o->lengths[li]);
            double bsum = 0;
            for (uint32_t di = 0; di < ND; di++) {
                const skv_needle_result *r = &res[((size_t)ci * NL + li) * ND + di];
                fprintf(f, " %6s", r->correct ? "ok" : "x");
                bsum += r->beta;
            }
            fprintf(f, "   %.3f\n", bsum / ND);
        }
        fprintf(f, "\n");
    }
    if (o->json)
        fputs("\n]\n", f);
    close_out(f, o->out);
    free(res);
    free(own);
    skv_model_free(m);
    return 0;
}

/* ---------------------------------------------------------------- sweep */

typedef struct row {
    skv_ec_cfg cfg;
    char label[160];
} row;

static uint32_t make_rows(const opts *o, row **out)
{
    size_t cap = 16, n = 0;
    row *rows = malloc(cap * sizeof *rows);
    for (uint32_t pi = 0; pi < o->n_policies; pi++) {
        skv_ec_cfg base = o->cfg;
        set_policy(&base, o->policies[pi]);
        unsigned pf = base.kind == SKV_EC_COMPRESS ? skv_policy_flags(base.alloc.policy) : 0;
        int atskv = base.kind == SKV_EC_ATSKV;
        int budgeted = (pf & SKV_PF_BUDGET) != 0 || atskv || base.kind == SKV_EC_ZACK ||
                       (base.kind == SKV_EC_PRUNE_MERGE && !base.pm.max_cache_size);
        int tracked = budgeted && (pf & SKV_PF_IMPORTANCE);
        uint32_t nb = budgeted ? o->n_budgets : 1, ni = tracked ? o->n_imps : 1;
        uint32_t nr = base.kind == SKV_EC_COMPRESS || base.kind == SKV_EC_PRUNE_MERGE || atskv ||
                              base.kind == SKV_EC_ZACK
                          ? o->n_reallocs : 1;
        for (uint32_t bi = 0; bi < nb; bi++)
            for (uint32_t ii = 0; ii < ni; ii++) {
                uint32_t nd = tracked && o->imps[ii] == SKV_IMP_EMA ? o->n_decays : 1;
                for (uint32_t di = 0; di < nd; di++)
                    for (uint32_t ri = 0; ri < nr; ri++) {
                        skv_ec_cfg c = base;
                        if (budgeted)
                            c.alloc.budget = o->budgets[bi];
                        if (tracked) {
                            c.imp_mode = o->imps[ii];
                            if (c.imp_mode == SKV_IMP_EMA)
                                c.decay = o->decays[di];
                        }
                        if (base.kind == SKV_EC_COMPRESS || base.kind == SKV_EC_PRUNE_MERGE || atskv)
                            c.realloc = o->reallocs[ri];
                        if (c.kivi_bits && c.realloc % 32)  /* as skv_ec_kivi_parse */
                            c.realloc = 32;
                        if (skv_ec_cfg_check(&c) < 0)
                            tool_usage_error("%s", skv_errmsg());
                        if (n == cap) {
                            cap *= 2;
                            rows = realloc(rows, cap * sizeof *rows);
                            if (!rows)
                                tool_die(EXIT_DATA, "out of memory");
                        }
                        rows[n].cfg = c;
                        skv_ec_describe(&c, rows[n].label, sizeof rows[n].label);
                        n++;
                    }
            }
    }
    *out = rows;
    return (uint32_t)n;
}

/* Labels already in the output (first column of each data line). */
static int row_done(const char *path, const char *label)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char line[4096];
    size_t ll = strlen(label);
    int found = 0;
    while (!found && fgets(line, sizeof line, f))
        if (!strncmp(line, label, ll) && line[ll] == '\t')
            found = 1;
    fclose(f);
    return found;
}

static void append_line(const char *path, const char *line)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (fd < 0)
        tool_die(EXIT_DATA, "%s: %s", path, strerror(errno));
    if (flock(fd, LOCK_EX) < 0)
        tool_die(EXIT_DATA, "%s: lock: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) == 0 && st.st_size == 0 &&
        write(fd, tsv_head, strlen(tsv_head)) != (ssize_t)strlen(tsv_head))
        tool_die(EXIT_DATA, "%s: write error", path);
    size_t n = strlen(line);
    if (write(fd, line, n) != (ssize_t)n)
        tool_die(EXIT_DATA, "%s: write error", path);
    flock(fd, LOCK_UN);
    close(fd);
}

static int run_rows(const opts *o, const row *rows, const uint32_t *todo, uint32_t n_todo,
                    uint32_t worker, uint32_t n_workers)
{
    skv_model *m = load_model(o);
    size_t n;
    int32_t *ids = tokenize_text(m, o, &n);
    int bad = 0;
    for (uint32_t k = worker; k < n_todo; k += n_workers) {
        const row *r = &rows[todo[k]];
        char what[200];
        snprintf(what, sizeof what, "%s", r->label);
        prog p = {what, o->quiet, 0, -1};
        skv_ppl_opts po = ppl_opts(o, &p);
        po.progress = NULL;
        skv_ppl_result res;
        uint64_t w = o->ctx < n ? o->ctx : n;
        if (o->max_tokens && o->max_tokens < w)
            w = o->max_tokens;
        skv_ec_cfg rc = r->cfg;
        zack_attach(m, o, &rc);
        if (check_budget(m, &rc, w) < 0 || skv_eval_ppl(m, ids, n, &rc, &po, &res) < 0) {
            fprintf(stderr, "%s: %s: %s\n", tool_name, r->label, skv_errmsg());
            bad = 1;
            continue;
        }
        char *buf = NULL;
        size_t bl = 0;
        FILE *mf = open_memstream(&buf, &bl);
        if (!mf)
            tool_die(EXIT_DATA, "out of memory");
        tsv_row(mf, &r->cfg, &res, 0);
        fclose(mf);
        append_line(o->out, buf);
        free(buf);
        if (!o->quiet)
            fprintf(stderr, "%s: sweep: %s: ppl %.4f (fp16 %.4f) kl %.5g beta %.4f (%.0f s)\n",
                    tool_name, r->label, res.ppl, res.ppl_ref, res.kl, res.beta, res.seconds);
    }
    free(ids);
    skv_model_free(m);
    return bad;
}

/* Recompute the front column (1: no other row has beta <= and kl <, or
 * beta < and kl <=) and rewrite the table in place (temp file + rename). */
static void mark_front(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    char **lines = NULL;
    double *beta = NULL, *kl = NULL;
    size_t n = 0, cap = 0;
    char buf[4096];
    if (!fgets(buf, sizeof buf, f)) {
        fclose(f);
        return;
    }
    while (fgets(buf, sizeof buf, f)) {
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            char **nl = realloc(lines, cap * sizeof *lines);
            if (nl)
                lines = nl;
            double *nbeta = realloc(beta, cap * sizeof *beta);
            if (nbeta)
                beta = nbeta;
            double *nkl = realloc(kl, cap * sizeof *kl);
            if (nkl)
                kl = nkl;
            if (!nl || !nbeta || !nkl)
                tool_die(EXIT_DATA, "out of memory");
        }
        lines[n] = strdup(buf);
        char *t = strchr(buf, '\t');
        t = t ? strchr(t + 1, '\t') : NULL;
        beta[n] = t ? strtod(t + 1, NULL) : NAN;
        t = t ? strchr(t + 1, '\t') : NULL;
        t = t ? strchr(t + 1, '\t') : NULL;
        kl[n] = t ? strtod(t + 1, NULL) : NAN;
        n++;
    }
    fclose(f);
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp%ld", path, (long)getpid());
    FILE *w = fopen(tmp, "w");
    if (!w)
        tool_die(EXIT_DATA, "%s: %s", tmp, strerror(errno));
    fputs(tsv_head, w);
    for (size_t i = 0; i < n; i++) {
        int front = isfinite(beta[i]) && isfinite(kl[i]);
        for (size_t j = 0; j < n && front; j++)
            if (j != i && ((beta[j] <= beta[i] && kl[j] < kl[i]) ||
                           (beta[j] < beta[i] && kl[j] <= kl[i])))
                front = 0;
        /* column 11 (front) */
        char *s = lines[i];
        int col = 1;
        char *p = s;
        while (*p && col < 11) {
            if (*p == '\t')
                col++;
            p++;
        }
        char *e = strchr(p, '\t');
        if (col == 11 && e) {
            fwrite(s, 1, (size_t)(p - s), w);
            fprintf(w, "%d", front);
            fputs(e, w);
        } else {
            fputs(s, w);
        }
        free(s);
    }
    if (fclose(w) != 0 || rename(tmp, path) != 0) {
        unlink(tmp);
        tool_die(EXIT_DATA, "%s: cannot rewrite: %s", path, strerror(errno));
    }
    free(lines);
    free(beta);
    free(kl);
}

static int cmd_sweep(opts *o)
{
    if (!o->text)
        tool_usage_error("sweep needs --text FILE");
    if (!o->out || !strcmp(o->out, "-"))
        tool_usage_error("sweep needs -o OUT.tsv (rows are appended; done rows are skipped)");
    if (!strcmp(o->text, "-"))
        tool_usage_error("sweep reads --text more than once: give a file, not stdin");
    row *rows;
    uint32_t nr = make_rows(o, &rows);
    uint32_t *todo = malloc((nr ? nr : 1) * sizeof *todo), nt = 0, skipped = 0;
    if (!todo)
        tool_die(EXIT_DATA, "out of memory");
    for (uint32_t i = 0; i < nr; i++) {
        if (i % o->shard_n != o->shard_i)
            continue;
        if (row_done(o->out, rows[i].label))
            skipped++;
        else
            todo[nt++] = i;
    }
    if (!o->quiet)
        fprintf(stderr, "%s: sweep: %u rows, %u already in %s, %u to run with %u job(s)\n",
                tool_name, nr, skipped, o->out, nt, o->jobs);
    int bad = 0;
    if (o->jobs <= 1 || nt <= 1) {
        bad = run_rows(o, rows, todo, nt, 0, 1);
    } else {
        uint32_t nj = o->jobs < nt ? o->jobs : nt;
        pid_t pids[MAX_LIST];
        fflush(NULL);
        for (uint32_t w = 0; w < nj; w++) {
            pid_t pid = fork();
            if (pid < 0)
                tool_die(EXIT_DATA, "fork: %s", strerror(errno));
            if (pid == 0)
                _exit(run_rows(o, rows, todo, nt, w, nj) ? EXIT_DATA : 0);
            pids[w] = pid;
        }
        for (uint32_t w = 0; w < nj; w++) {
            int st;
            if (waitpid(pids[w], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
                bad = 1;
        }
    }
    if (access(o->out, F_OK) == 0)
        mark_front(o->out);
    free(rows);
    free(todo);
    if (bad)
        tool_die(EXIT_DATA, "sweep: some rows failed (see above); run again to retry them");
    return 0;
}

/* ---------------------------------------------------------------- merge */

/* Append the rows of sweep tables (shards) that OUT lacks, by label, then
 * recompute the front over all of them: the table of one whole sweep. */
static int cmd_merge(const opts *o, int n, char **files)
{
    if (!o->out || !strcmp(o->out, "-"))
        tool_usage_error("merge needs -o OUT.tsv (rows are appended; rows already there are kept)");
    if (n < 1)
        tool_usage_error("merge needs the sweep tables to merge: -o OUT.tsv SHARD.tsv...");
    uint32_t added = 0;
    for (int i = 0; i < n; i++) {
        if (!strcmp(files[i], o->out))
            tool_usage_error("merge: %s is the output", files[i]);
        FILE *f = fopen(files[i], "r");
        if (!f)
            tool_die(EXIT_DATA, "%s: cannot open: %s", files[i], strerror(errno));
        char line[4096];
        if (!fgets(line, sizeof line, f) || strcmp(line, tsv_head) != 0) {
            fclose(f);
            tool_die(EXIT_DATA, "%s: not a skv-eval sweep table (header)", files[i]);
        }
        for (uint64_t ln = 2; fgets(line, sizeof line, f); ln++) {
            size_t len = strlen(line), tab = strcspn(line, "\t");
            if (!len || line[len - 1] != '\n' || line[tab] != '\t') {
                fclose(f);
                tool_die(EXIT_DATA, "%s: line %llu: not a sweep row", files[i],
                         (unsigned long long)ln);
            }
            line[tab] = '\0';
            int done = row_done(o->out, line);
            line[tab] = '\t';
            if (!done) {
                append_line(o->out, line);
                added++;
            }
        }
        fclose(f);
    }
    if (access(o->out, F_OK) == 0)
        mark_front(o->out);
    tool_note(1, "merge: %u rows added to %s", added, o->out);
    return 0;
}

/* ---------------------------------------------------------------- main */

int main(int argc, char **argv)
{
    tool_init("skv-eval");
    opts o;
    memset(&o, 0, sizeof o);
    skv_ec_defaults(&o.cfg);
    o.cfg.alloc.budget = 0.3;
    o.policy = "smartkv";
    o.ctx = 512;
    o.jobs = 1;
    o.shard_n = 1;
    o.seed = 1;
    uint32_t group = 0, vgroup = 0;
    char *own[8] = {0};
    char *items[MAX_LIST];
    const char *lengths = "1K,2K,4K,8K", *depths = "0,25,50,75,100";
    const char *policies = "smartkv,random,uniform:8,uniform:4,uniform:2";
    const char *budgets = "0.25,0.3,0.4,0.5", *decays = NULL, *reallocs = NULL, *imps = NULL;
    if (argc >= 2 && argv[1][0] != '-') {
        o.cmd = argv[1];
        argv[1] = argv[0];
        argc--;
        argv++;
    }
    /* --method first, wherever it stands: the options given with it win */
    const char *shorts = "p:b:g:k:m:f:P:j:o:O:" TOOL_COMMON_SHORT;
    int c;
    while ((c = getopt_long(argc, argv, shorts, longopts, NULL)) != -1)
        if (c == O_METHOD)
            skv_ec_method(&o.cfg);
    optind = 0; /* GNU getopt: start over */
    while ((c = tool_getopt(argc, argv, shorts, longopts)) != -1) {
        switch (c) {
        case O_METHOD: break; /* applied above */
        case 'p': o.policy = optarg; break;
        case 'b':
            o.cfg.alloc.budget = tool_opt_double("--budget", optarg, 0, 1e6, 0);
            if (!(o.cfg.alloc.budget > 0))
                tool_usage_error("--budget: must be > 0");
            o.have_budget = 1;
            break;
        case O_IMP: o.cfg.imp_mode = (uint32_t)imp_parse(optarg); break;
        case O_DECAY: o.cfg.decay = tool_opt_double("--decay", optarg, 0, 1, 1); break;
        case O_REALLOC: o.cfg.realloc = tool_opt_u32("--realloc", optarg, 1, 1u << 20); break;
        case O_IDEAL: o.cfg.ideal = 1; break;
        case O_BITS:
            o.cfg.alloc.width_mask = tool_opt_widths("--bits", optarg);
            break;
        case O_SINKS: o.cfg.alloc.sinks = tool_opt_u32("--sinks", optarg, 0, 1u << 24); break;
        case O_RECENT: o.cfg.alloc.recent = tool_opt_u32("--recent", optarg, 0, 1u << 24); break;
        case 'g': group = tool_opt_u32("--group", optarg, 1, SKV_MAX_HEAD_DIM); break;
        case O_SEED: {
            uint64_t v;
            if (tool_parse_u64(optarg, &v) < 0)
                tool_usage_error("--seed: '%s' is not a whole number", optarg);
            o.seed = v;
            o.cfg.alloc.seed = v;
            break;
        }
        case 'k':
            o.cfg.kernel = skv_att_kernel_parse(optarg);
            if (o.cfg.kernel < 0)
                tool_usage_error("--kernel: '%s' is not auto, scalar, avx2, int8-scalar, int8-avx2 "
                                 "or int8-vnni", optarg);
            break;
        case O_KEYS:
            o.cfg.layout = SKV_EC_GROUPED;
            if (!strcmp(optarg, "token"))
                o.cfg.k_layout = SKV_EC_KEYS_TOKEN;
            else if (!strcmp(optarg, "channel"))
                o.cfg.k_layout = SKV_EC_KEYS_CHANNEL;
            else
                tool_usage_error("--keys: '%s' is not token or channel", optarg);
            break;
        case O_KEYTOK: o.cfg.key_tokens = tool_opt_u32("--key-tokens", optarg, 2, 4096); break;
        case O_ROTATE: o.cfg.layout = SKV_EC_GROUPED; o.cfg.rotate = 1; break;
        case O_VROTATE: o.cfg.layout = SKV_EC_GROUPED; o.cfg.rotate_values = 1; break;
        case O_KVSPLIT: o.cfg.layout = SKV_EC_GROUPED; o.cfg.kv_split = 1; break;
        case O_CLIP: o.cfg.layout = SKV_EC_GROUPED; o.cfg.clip = 1; break;
        case O_GROUPED: o.cfg.layout = SKV_EC_GROUPED; break;
        case O_PRIOR: o.cfg.prior = tool_opt_double("--prior", optarg, 0, 1e6, 0); break;
        case O_KEYSAGE:
            o.cfg.keys_by_age = 1;
            break;
        case O_RECENCY:
            o.cfg.layout = SKV_EC_GROUPED;
            o.cfg.recency = tool_opt_double("--recency", optarg, 0, 1e6, 0);
            break;
        case O_REPLAN:
            o.cfg.layout = SKV_EC_GROUPED;
            o.cfg.replan = tool_opt_u32("--replan", optarg, 1, 1u << 20);
            break;
        case O_IMPPOW:
            o.cfg.layout = SKV_EC_GROUPED;
            o.cfg.imp_power = tool_opt_u32("--imp-power", optarg, 1, 2);
            break;
        case O_PROTBITS:
            o.cfg.layout = SKV_EC_GROUPED;
            o.cfg.protect_bits = tool_opt_u32("--protect-bits", optarg, 4, 16);
            if (o.cfg.protect_bits != 4 && o.cfg.protect_bits != 8 && o.cfg.protect_bits != 16)
                tool_usage_error("--protect-bits: %u is not 4, 8 or 16", o.cfg.protect_bits);
            break;
        case O_HEADW:
            o.cfg.layout = SKV_EC_GROUPED;
            o.cfg.head_weight = tool_opt_double("--head-weight", optarg, 0, 1, 0);
            break;
        case O_PARAMBITS:
            o.cfg.layout = SKV_EC_GROUPED;
            o.cfg.param_bits = tool_opt_u32("--param-bits", optarg, 8, 16);
            if (o.cfg.param_bits != 8 && o.cfg.param_bits != 16)
                tool_usage_error("--param-bits: %u is not 8 or 16", o.cfg.param_bits);
            break;
        case O_ERROR:
            o.cfg.layout = SKV_EC_GROUPED;
            if (!strcmp(optarg, "imp-mse"))
                o.cfg.err_model = SKV_EC_ERR_IMP_MSE;
            else if (!strcmp(optarg, "imp-range"))
                o.cfg.err_model = SKV_EC_ERR_IMP_RANGE;
            else if (!strcmp(optarg, "logit"))
                o.cfg.err_model = SKV_EC_ERR_LOGIT;
            else
                tool_usage_error("--error: '%s' is not imp-mse, imp-range or logit", optarg);
            break;
        case O_VGROUP: vgroup = tool_opt_u32("--value-group", optarg, 1, SKV_MAX_HEAD_DIM); break;
        case O_RESIDUAL: o.cfg.realloc = tool_opt_u32("--residual", optarg, 1, 1u << 20); break;
        case O_PM_B:
            o.cfg.pm.max_cache_size = tool_opt_u32("--max-cache-size", optarg, 0, UINT32_MAX);
            break;
        case O_PM_K: o.cfg.pm.num_clusters = tool_opt_u32("--num-clusters", optarg, 0, 65536); break;
        case O_PM_P:
            o.cfg.pm.pruning_interval = tool_opt_u32("--pruning-interval", optarg, 1, 1u << 24);
            break;
        case O_PM_D:
            o.cfg.pm.lookback_window = tool_opt_u32("--lookback-window", optarg, 1, 1u << 24);
            break;
        case O_PM_LR:
            o.cfg.pm.kmeans_lr = tool_opt_double("--kmeans-learning-rate", optarg, 0, 1, 0);
            break;
        case O_PM_BITS:
            o.cfg.pm.kept_mask = tool_opt_widths("--kept-bits", optarg);
            if (o.cfg.pm.kept_mask & 1u)
                tool_usage_error("--kept-bits: 0 is not a width of a kept token");
            break;
        case 'm': o.model = optarg; break;
        case 'f': o.text = optarg; break;
        case O_CTX: o.ctx = tool_opt_u32("--ctx", optarg, 2, 1u << 24); break;
        case O_STRIDE: o.stride = tool_opt_u32("--stride", optarg, 1, 1u << 24); break;
        case O_MAXTOK: o.max_tokens = tool_opt_u32("--max-tokens", optarg, 2, 1u << 30); break;
        case 'P': o.prefill = tool_opt_u32("--prefill", optarg, 0, 1u << 24); break;
        case O_LENGTHS: lengths = optarg; break;
        case O_DEPTHS: depths = optarg; break;
        case O_MAXNEW: o.max_new = tool_opt_u32("--max-new", optarg, 1, 256); break;
        case O_POLICIES: policies = optarg; break;
        case O_BUDGETS: budgets = optarg; break;
        case O_DECAYS: decays = optarg; break;
        case O_REALLOCS: reallocs = optarg; break;
        case O_IMPS: imps = optarg; break;
        case 'j': o.jobs = tool_opt_u32("--jobs", optarg, 1, MAX_LIST); break;
        case O_SHARD: {
            uint64_t a, b;
            char num[32];
            const char *slash = strchr(optarg, '/');
            size_t la = slash ? (size_t)(slash - optarg) : 0;
            if (!slash || la == 0 || la >= sizeof num)
                tool_usage_error("--shard: '%s' is not I/N with 0 <= I < N", optarg);
            memcpy(num, optarg, la);
            num[la] = '\0';
            if (tool_parse_u64(num, &a) < 0 || tool_parse_u64(slash + 1, &b) < 0 || b == 0 ||
                a >= b || b > UINT32_MAX)
                tool_usage_error("--shard: '%s' is not I/N with 0 <= I < N", optarg);
            o.shard_i = (uint32_t)a;
            o.shard_n = (uint32_t)b;
            break;
        }
        case TOOL_OPT_TSV: o.tsv = 1; break;
        case TOOL_OPT_JSON: o.json = 1; break;
        case O_REFCACHE: o.ref_cache = optarg; break;
        case O_INT8: o.int8 = 1; break;
        case 'O': {
            int f = tool_opt_format(optarg, 1u << TOOL_FMT_TEXT | 1u << TOOL_FMT_TSV |
                                    1u << TOOL_FMT_JSON);
            o.tsv = f == TOOL_FMT_TSV;
            o.json = f == TOOL_FMT_JSON;
            break;
        }
        case 'o': o.out = optarg; break;
        case O_HEADS:
            skv_head_scores_free(&razor_heads);
            if (skv_head_scores_read(optarg, &razor_heads) < 0)
                tool_die(EXIT_DATA, "%s", skv_errmsg());
            break;
        case O_OFFLOAD: o.cfg.offload = optarg; break;
        case O_CALIB: zack_calib = optarg; break;
        case O_CALIB_TOK:
            zack_calib_tokens = tool_opt_u32("--calib-tokens", optarg, 2, 1u << 20);
            break;
        case O_ACTIVE_BITS:
            o.cfg.active_bits = tool_opt_u32("--active-bits", optarg, 4, 16);
            if (o.cfg.active_bits != 4 && o.cfg.active_bits != 8 && o.cfg.active_bits != 16)
                tool_usage_error("--active-bits: %u is not 4, 8 or 16", o.cfg.active_bits);
            break;
        case O_WEIGHTS:
            skv_rlv_model_free(atskv_weights);
            if (skv_rlv_load(optarg, &atskv_weights) < 0)
                tool_fail(tool_in_name(optarg));
            break;
        case 'h': usage();
        default: tool_usage_error("unhandled option"); /* a table entry without a case */
        }
    }
    if (!o.cmd)
        tool_usage_error("missing command (ppl, needle, sweep or merge)");
    if (!strcmp(o.cmd, "merge"))
        return cmd_merge(&o, argc - optind, argv + optind);
    if (strcmp(o.cmd, "ppl") != 0 && strcmp(o.cmd, "needle") != 0 && strcmp(o.cmd, "sweep") != 0)
        tool_usage_error("unknown command '%s' (ppl, needle, sweep or merge)", o.cmd);
    if (optind < argc)
        tool_usage_error("unexpected argument '%s'", argv[optind]);
    if (o.cfg.pm.kept_mask) {
        const char *pl = strcmp(o.cmd, "sweep") != 0 ? o.policy : policies;
        if (!pl || !strstr(pl, "prune-merge"))
            tool_usage_error("--kept-bits is an option of -p prune-merge");
        skv_pm_cfg pc = skv_ec_pm_cfg(&o.cfg);
        if (skv_pm_cfg_check(&pc) < 0)
            tool_usage_error("%s", skv_errmsg());
    }
    if (o.tsv && o.json)
        tool_usage_error("--tsv and --json are exclusive");
    if (!o.model)
        tool_usage_error("%s needs --model FILE", o.cmd);
    scored_text = o.text;
    o.quiet = tool_verbosity == 0;
    /* default: every online CPU, shared among the sweep's jobs */
    o.threads = tool_threads ? tool_thread_count(SKV_MODEL_MAX_THREADS)
                             : tool_thread_count(SKV_MODEL_MAX_THREADS) / o.jobs;
    if (!o.threads)
        o.threads = 1;
    o.cfg.alloc.qcfg.k_group = o.cfg.alloc.qcfg.v_group = group;
    if (vgroup)
        o.cfg.alloc.qcfg.v_group = vgroup;
    if (!strcmp(o.cmd, "needle")) {
        uint32_t n = split_list("--lengths", lengths, items, MAX_LIST, &own[0]);
        for (uint32_t i = 0; i < n; i++) {
            uint64_t v;
            if (tool_parse_size(items[i], &v) < 0 || v < 64 || v > (1u << 24))
                tool_usage_error("--lengths: '%s' is not a token count in 64..16M", items[i]);
            o.lengths[o.n_lengths++] = (uint32_t)v;
        }
        n = split_list("--depths", depths, items, MAX_LIST, &own[1]);
        for (uint32_t i = 0; i < n; i++)
            o.depths[o.n_depths++] = tool_opt_u32("--depths", items[i], 0, 100);
        uint32_t k = split_list("--policy", o.policy, items, MAX_LIST - 1, &own[2]);
        for (uint32_t i = 0; i < k; i++)
            check_policy_name(items[i]);
    } else if (!strcmp(o.cmd, "sweep")) {
        o.n_policies = split_list("--policies", policies, o.policies, MAX_LIST, &own[3]);
        for (uint32_t i = 0; i < o.n_policies; i++)
            check_policy_name(o.policies[i]);
        uint32_t n = split_list("--budgets", budgets, items, MAX_LIST, &own[4]);
        for (uint32_t i = 0; i < n; i++) {
            o.budgets[i] = tool_opt_double("--budgets", items[i], 0, 1e6, 0);
            if (!(o.budgets[i] > 0))
                tool_usage_error("--budgets: '%s' must be > 0", items[i]);
        }
        o.n_budgets = n;
        if (decays) {
            n = split_list("--decays", decays, items, MAX_LIST, &own[5]);
            for (uint32_t i = 0; i < n; i++)
                o.decays[i] = tool_opt_double("--decays", items[i], 0, 1, 1);
            o.n_decays = n;
        } else {
            o.decays[0] = o.cfg.decay;
            o.n_decays = 1;
        }
        if (reallocs) {
            n = split_list("--reallocs", reallocs, items, MAX_LIST, &own[6]);
            for (uint32_t i = 0; i < n; i++)
                o.reallocs[i] = tool_opt_u32("--reallocs", items[i], 1, 1u << 20);
            o.n_reallocs = n;
        } else {
            o.reallocs[0] = o.cfg.realloc;
            o.n_reallocs = 1;
        }
        if (imps) {
            n = split_list("--importances", imps, items, MAX_LIST, &own[7]);
            for (uint32_t i = 0; i < n; i++)
                o.imps[i] = (uint32_t)imp_parse(items[i]);
            o.n_imps = n;
        } else {
            o.imps[0] = o.cfg.imp_mode;
            o.n_imps = 1;
        }
    }
    if (o.cfg.offload && o.jobs > 1)
        tool_usage_error("--offload: one file for one cache at a time (not with --jobs %u)", o.jobs);
    /* the learned importance reads the weights of --weights */
    int want_rlv = SKV_EC_IMP_IS_ATSKV(o.cfg.imp_mode);
    for (uint32_t i = 0; i < o.n_imps; i++)
        want_rlv |= SKV_EC_IMP_IS_ATSKV(o.imps[i]);
    if (want_rlv && !atskv_weights)
        tool_usage_error("--importance atskv needs --weights FILE (skv-alloc train)");
    if (atskv_weights)
        o.cfg.rlv = atskv_weights;
    int rc;
    if (!strcmp(o.cmd, "ppl"))
        rc = cmd_ppl(&o);
    else if (!strcmp(o.cmd, "needle"))
        rc = cmd_needle(&o);
    else
        rc = cmd_sweep(&o);
    for (int i = 0; i < 8; i++)
        free(own[i]);
    skv_zack_basis_free(zack_basis);
    return rc;
}
