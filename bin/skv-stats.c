/* skv-stats -- fidelity of attention outputs, memory of packed caches, and
 * fidelity-vs-bytes sweeps. */
#include "tool.h"

#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { FMT_TEXT = TOOL_FMT_TEXT, FMT_TSV = TOOL_FMT_TSV, FMT_JSON = TOOL_FMT_JSON };

static void usage(FILE *f)
{
    fprintf(f,
"Usage: skv-stats COMMAND [options] FILE...\n"
"Measure attention fidelity and cache memory.\n"
"\n"
"Commands:\n"
"  compare REF TEST     fidelity of TEST's attention outputs against REF's\n"
"                       (both written by skv-attend), per layer and overall\n"
"  mem CACHE            bytes of a packed cache by width, kind and layer\n"
"  sweep REF TEST...    one line per TEST (its label, bytes and fidelity\n"
"                       against REF), sorted by bytes, Pareto front marked\n"
"\n"
"Options (every command):\n"
"  -O, --format FMT       text (default), tsv or json\n"
"      --tsv, --json      short for -O tsv, -O json\n"
"  -o, --output FILE      write to FILE instead of standard output\n"
"%s"
"\n"
"FILE '-' means standard input (at most one of the files).\n", TOOL_COMMON_HELP);
}

static skv_attn *load(const char *path)
{
    skv_attn *a;
    tool_check_binary_input(path);
    tool_progress *pr = tool_progress_start("skv-stats: reading", 0, "bytes");
    tool_progress_watch(pr, path);
    int rc = skv_attn_load(path, &a);
    tool_progress_end(pr);
    if (rc < 0)
        tool_fail(tool_in_name(path));
    return a;
}

/* JSON number: non-finite values become null. */
static void jnum(FILE *f, double v)
{
    if (isfinite(v))
        fprintf(f, "%.9g", v);
    else
        fputs("null", f);
}

static void jstr(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static void cmp_json(FILE *f, const skv_cmp *c)
{
    fprintf(f, "{\"vectors\": %llu, \"rel_l2\": ", (unsigned long long)c->n_vec);
    jnum(f, c->rel_l2);
    fputs(", \"max_rel\": ", f);
    jnum(f, c->max_rel);
    fputs(", \"cosine\": ", f);
    jnum(f, c->cos);
    if (c->has_probs) {
        fputs(", \"kl\": ", f);
        jnum(f, c->kl);
        for (int i = 0; i < SKV_CMP_NTOP; i++) {
            fprintf(f, ", \"top%u\": ", skv_cmp_topk[i]);
            jnum(f, c->top[i]);
        }
    }
    fputc('}', f);
}

static void cmp_line(FILE *f, int fmt, const char *name, const skv_cmp *c)
{
    if (fmt == FMT_TSV) {
        fprintf(f, "%s\t%llu\t%.6g\t%.6g\t%.9f", name, (unsigned long long)c->n_vec, c->rel_l2,
                c->max_rel, c->cos);
        if (c->has_probs) {
            fprintf(f, "\t%.6g", c->kl);
            for (int i = 0; i < SKV_CMP_NTOP; i++)
                fprintf(f, "\t%.4f", c->top[i]);
        } else {
            fputs("\t\t\t\t", f);
        }
        fputc('\n', f);
        return;
    }
    fprintf(f, "%-6s %8llu  %10.3e %10.3e %10.6f", name, (unsigned long long)c->n_vec, c->rel_l2,
            c->max_rel, c->cos);
    if (c->has_probs) {
        fprintf(f, "  %10.3e", c->kl);
        for (int i = 0; i < SKV_CMP_NTOP; i++)
            fprintf(f, " %6.3f", c->top[i]);
    }
    fputc('\n', f);
}

static int cmd_compare(int fmt, const char *out, int argc, char **argv)
{
    if (argc != 2)
        tool_usage_error("compare needs two files: REF TEST");
    if (!strcmp(argv[0], "-") && !strcmp(argv[1], "-"))
        tool_usage_error("only one of the files can be standard input");
    skv_attn *ref = load(argv[0]), *test = load(argv[1]);
    skv_compare c;
    if (skv_attn_compare(ref, test, &c) < 0) {
        char msg[1024]; /* free first: valgrind counts what exit() drops as lost */
        snprintf(msg, sizeof msg, "%s", skv_errmsg());
        skv_attn_free(ref);
        skv_attn_free(test);
        tool_die(EXIT_DATA, "%s and %s: %s", tool_in_name(argv[0]), tool_in_name(argv[1]), msg);
    }
    FILE *f = tool_text_open(out);
    if (fmt == FMT_JSON) {
        fputs("{\"reference\": ", f);
        jstr(f, argv[0]);
        fputs(", \"test\": ", f);
        jstr(f, argv[1]);
        fprintf(f, ", \"reference_mode\": \"%s\", \"test_mode\": \"%s\", \"steps\": %llu, "
                "\"probs\": %s,\n \"overall\": ", skv_att_mode_name(ref->h.mode),
                skv_att_mode_name(test->h.mode), (unsigned long long)ref->h.n_steps,
                c.all.has_probs ? "true" : "false");
        cmp_json(f, &c.all);
        fputs(",\n \"layers\": [", f);
        for (uint32_t l = 0; l < c.n_layers; l++) {
            fputs(l ? ",\n  " : "\n  ", f);
            cmp_json(f, &c.layer[l]);
        }
        fputs("]}\n", f);
    } else {
        if (fmt == FMT_TSV) {
            fputs("layer\tvectors\trel_l2\tmax_rel\tcosine\tkl\ttop1\ttop8\ttop32\n", f);
        } else {
            fprintf(f, "reference %s (%s), test %s (%s), %llu step%s\n", tool_in_name(argv[0]),
                    skv_att_mode_name(ref->h.mode), tool_in_name(argv[1]),
                    skv_att_mode_name(test->h.mode), (unsigned long long)ref->h.n_steps,
                    ref->h.n_steps == 1 ? "" : "s");
            fprintf(f, "%-6s %8s  %10s %10s %10s", "layer", "vectors", "rel_l2", "max_rel", "cosine");
            if (c.all.has_probs)
                fprintf(f, "  %10s %6s %6s %6s", "KL", "top1", "top8", "top32");
            fputc('\n', f);
        }
        char name[16];
        for (uint32_t l = 0; l < c.n_layers; l++) {
            snprintf(name, sizeof name, "%u", l);
            cmp_line(f, fmt, name, &c.layer[l]);
        }
        cmp_line(f, fmt, "all", &c.all);
        if (fmt == FMT_TEXT && !c.all.has_probs)
            fputs("(no attention probabilities: run skv-attend --probs for KL and top-k)\n", f);
    }
    tool_text_close(f, out);
    skv_compare_free(&c);
    skv_attn_free(ref);
    skv_attn_free(test);
    return 0;
}

/* ---- sweep ---- */

typedef struct point {
    const char *file;
    char name[96];
    char label[SKV_ATHD_MAX_LABEL + 1];
    char policy[64];
    double beta, bytes;
    skv_cmp c;
    uint8_t pareto;
} point;

static int cmp_point(const void *a, const void *b)
{
    const point *x = a, *y = b;
    return x->bytes < y->bytes ? -1 : x->bytes > y->bytes ? 1 : strcmp(x->label, y->label);
}

/* "policy=NAME ..." in a label gives NAME; otherwise the first word. */
static void label_policy(const char *label, char *pol, size_t n)
{
    const char *p = strstr(label, "policy=");
    p = p ? p + 7 : label;
    size_t k = strcspn(p, " \t");
    if (k == 0) {
        snprintf(pol, n, "-");
        return;
    }
    snprintf(pol, n, "%.*s", (int)(k < n - 1 ? k : n - 1), p);
}

static int cmd_sweep(int fmt, const char *out, int argc, char **argv)
{
    if (argc < 2)
        tool_usage_error("sweep needs a reference and at least one test: REF TEST...");
    int stdin_uses = 0;
    for (int i = 0; i < argc; i++)
        stdin_uses += !strcmp(argv[i], "-");
    if (stdin_uses > 1)
        tool_usage_error("only one of the files can be standard input");
    skv_attn *ref = load(argv[0]);
    uint32_t n = (uint32_t)argc - 1;
    point *pt = calloc(n, sizeof *pt);
    double *bx = calloc(n, sizeof *bx), *ex = calloc(n, sizeof *ex);
    uint8_t *on = calloc(n, 1);
    if (!pt || !bx || !ex || !on)
        tool_die(EXIT_DATA, "out of memory");
    for (uint32_t i = 0; i < n; i++) {
        const char *file = argv[i + 1];
        skv_attn *t = load(file);
        skv_compare c;
        if (skv_attn_compare(ref, t, &c) < 0) {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", skv_errmsg());
            skv_attn_free(t);
            skv_attn_free(ref);
            free(pt);
            tool_die(EXIT_DATA, "%s and %s: %s", tool_in_name(argv[0]), tool_in_name(file), msg);
        }
        pt[i].file = file;
        pt[i].c = c.all;
        pt[i].bytes = (double)t->h.kv_bytes;
        pt[i].beta = t->h.fp16_bytes ? (double)t->h.kv_bytes / (double)t->h.fp16_bytes : 0;
        snprintf(pt[i].label, sizeof pt[i].label, "%s",
                 t->h.label[0] ? t->h.label : skv_att_mode_name(t->h.mode));
        label_policy(pt[i].label, pt[i].policy, sizeof pt[i].policy);
        const char *bp = strstr(pt[i].label, "beta=");
        double bq = bp ? strtod(bp + 5, NULL) : 0;
        if (bq > 0)
            snprintf(pt[i].name, sizeof pt[i].name, "%s beta=%.3g", pt[i].policy, bq);
        else
            snprintf(pt[i].name, sizeof pt[i].name, "%s", pt[i].policy);
        skv_compare_free(&c);
        skv_attn_free(t);
    }
    qsort(pt, n, sizeof *pt, cmp_point);
    for (uint32_t i = 0; i < n; i++) {
        bx[i] = pt[i].bytes;
        ex[i] = pt[i].c.rel_l2;
    }
    skv_pareto(bx, ex, n, on);
    for (uint32_t i = 0; i < n; i++)
        pt[i].pareto = on[i];
    FILE *f = tool_text_open(out);
    if (fmt == FMT_JSON) {
        fputs("{\"reference\": ", f);
        jstr(f, argv[0]);
        fputs(", \"points\": [", f);
        for (uint32_t i = 0; i < n; i++) {
            fputs(i ? ",\n  {\"label\": " : "\n  {\"label\": ", f);
            jstr(f, pt[i].label);
            fputs(", \"policy\": ", f);
            jstr(f, pt[i].policy);
            fputs(", \"file\": ", f);
            jstr(f, pt[i].file);
            fprintf(f, ", \"bytes\": %.0f, \"beta\": ", pt[i].bytes);
            jnum(f, pt[i].beta);
            fprintf(f, ", \"pareto\": %s, \"fidelity\": ", pt[i].pareto ? "true" : "false");
            cmp_json(f, &pt[i].c);
            fputc('}', f);
        }
        fputs("]}\n", f);
    } else if (fmt == FMT_TSV) {
        fputs("label\tpolicy\tbeta\tbytes\trel_l2\tcosine\tkl\ttop1\ttop8\ttop32\tpareto\tfile\n", f);
        for (uint32_t i = 0; i < n; i++) {
            const point *p = &pt[i];
            fprintf(f, "%s\t%s\t%.6f\t%.0f\t%.6g\t%.9f\t", p->label, p->policy, p->beta, p->bytes,
                    p->c.rel_l2, p->c.cos);
            if (p->c.has_probs)
                fprintf(f, "%.6g\t%.4f\t%.4f\t%.4f", p->c.kl, p->c.top[0], p->c.top[1], p->c.top[2]);
            else
                fputs("\t\t\t", f);
            fprintf(f, "\t%d\t%s\n", p->pareto, p->file);
        }
    } else {
        int has_probs = n && pt[0].c.has_probs;
        fprintf(f, "%-24s %7s %12s %10s %9s", "policy", "beta", "bytes", "rel_l2", "cosine");
        if (has_probs)
            fprintf(f, " %10s %6s %6s", "KL", "top8", "top32");
        fputs("  pareto\n", f);
        for (uint32_t i = 0; i < n; i++) {
            const point *p = &pt[i];
            fprintf(f, "%-24.24s %7.4f %12.0f %10.3e %9.6f", p->name, p->beta, p->bytes,
                    p->c.rel_l2, p->c.cos);
            if (has_probs && p->c.has_probs)
                fprintf(f, " %10.3e %6.3f %6.3f", p->c.kl, p->c.top[1], p->c.top[2]);
            else if (has_probs)
                fprintf(f, " %10s %6s %6s", "-", "-", "-");
            fputs(p->pareto ? "  *\n" : "\n", f);
        }
        fputs("beta: cache bytes / fp16 K/V bytes; rel_l2: attention-output error against the "
              "reference;\n* : on the Pareto front (no other point has fewer bytes and lower "
              "error)\n", f);
    }
    tool_text_close(f, out);
    skv_attn_free(ref);
    free(pt);
    free(bx);
    free(ex);
    free(on);
    return 0;
}

/* ---- mem ---- */
int stats_mem(int fmt, const char *out, int argc, char **argv);

int main(int argc, char **argv)
{
    tool_init("skv-stats");
    if (argc < 2)
        tool_usage_error("no command (compare, mem or sweep)");
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V"))
        tool_version();
    const char *cmd = argv[1];
    if (strcmp(cmd, "compare") != 0 && strcmp(cmd, "mem") != 0 && strcmp(cmd, "sweep") != 0)
        tool_usage_error("unknown command '%s' (compare, mem or sweep)", cmd);
    static const struct option opts[] = {
        {"tsv", no_argument, 0, TOOL_OPT_TSV}, {"json", no_argument, 0, TOOL_OPT_JSON},
        {"format", required_argument, 0, 'O'}, {"output", required_argument, 0, 'o'},
        TOOL_COMMON_OPTIONS, {0, 0, 0, 0}};
    int fmt = FMT_TEXT, o;
    const char *out = NULL;
    argc--;
    argv++;
    while ((o = tool_getopt(argc, argv, "o:O:" TOOL_COMMON_SHORT, opts)) != -1) {
        switch (o) {
        case TOOL_OPT_TSV: fmt = FMT_TSV; break;
        case TOOL_OPT_JSON: fmt = FMT_JSON; break;
        case 'O':
            fmt = tool_opt_format(optarg, 1u << TOOL_FMT_TEXT | 1u << TOOL_FMT_TSV |
                                  1u << TOOL_FMT_JSON);
            break;
        case 'o': out = optarg; break;
        case 'h': usage(stdout); return 0;
        default: tool_usage_error("unhandled option"); /* a table entry without a case */
        }
    }
    argc -= optind;
    argv += optind;
    if (!strcmp(cmd, "compare"))
        return cmd_compare(fmt, out, argc, argv);
    if (!strcmp(cmd, "sweep"))
        return cmd_sweep(fmt, out, argc, argv);
    return stats_mem(fmt, out, argc, argv);
}

static const char *mem_kind_name[SKV_MEM_NKINDS] = {"payload", "scales", "indices", "headers",
                                                      "padding", "framing"};

int stats_mem(int fmt, const char *out, int argc, char **argv)
{
    if (argc != 1)
        tool_usage_error("mem needs one packed cache: CACHE");
    tool_check_binary_input(argv[0]);
    /* counted one layer at a time: the cache is never held whole */
    tool_progress *pr = tool_progress_start("skv-stats mem", 0, "bytes");
    tool_progress_watch(pr, argv[0]);
    skv_stream *is = skv_open_read(argv[0]);
    skv_cache_reader *cr = is ? skv_cache_reader_open(is, NULL) : NULL;
    skv_mem m;
    memset(&m, 0, sizeof m);
    int rc = cr ? skv_mem_begin(&m, skv_cache_reader_cache(cr)) : -1;
    uint32_t layer;
    while (rc >= 0 && (rc = skv_cache_reader_next(cr, &layer)) == 1)
        skv_mem_layer(&m, skv_cache_reader_cache(cr), layer);
    tool_progress_end(pr);
    if (rc < 0) {
        char msg[1024]; /* free first: valgrind counts what exit() drops as lost */
        snprintf(msg, sizeof msg, "%s", skv_errmsg());
        skv_mem_free(&m);
        skv_cache_reader_close(cr);
        tool_die(EXIT_DATA, "%s: %s", tool_in_name(argv[0]), msg);
    }
    skv_mem_end(&m);
    skv_cache_reader_close(cr);
    double f16 = (double)m.fp16_bytes, i8 = f16 / 2;
    uint64_t rows = 0;
    for (int w = 0; w < SKV_NBITS; w++)
        rows += m.width_rows[w];
    FILE *f = tool_text_open(out);
    if (fmt == FMT_JSON) {
        fprintf(f, "{\"cache\": ");
        jstr(f, argv[0]);
        fprintf(f, ", \"bytes\": %llu, \"model_bytes\": %llu, \"fp16_bytes\": %llu, "
                "\"beta_fp16\": %.6f, \"beta_int8\": %.6f,\n \"kinds\": {",
                (unsigned long long)m.total, (unsigned long long)m.model_bytes,
                (unsigned long long)m.fp16_bytes, m.total / f16, m.total / i8);
        for (int k = 0; k < SKV_MEM_NKINDS; k++)
            fprintf(f, "%s\"%s\": %llu", k ? ", " : "", mem_kind_name[k],
                    (unsigned long long)m.kind[k]);
        fputs("},\n \"widths\": [", f);
        for (int w = 0; w < SKV_NBITS; w++)
            fprintf(f, "%s{\"bits\": %u, \"rows\": %llu, \"chunks\": %llu, \"bytes\": %llu}",
                    w ? ", " : "", skv_bit_widths[w], (unsigned long long)m.width_rows[w],
                    (unsigned long long)m.width_chunks[w], (unsigned long long)m.width_bytes[w]);
        fprintf(f, "],\n \"centroids\": {\"n\": %llu, \"chunks\": %llu, \"bytes\": %llu}",
                (unsigned long long)m.centroids, (unsigned long long)m.centroid_chunks,
                (unsigned long long)m.centroid_bytes);
        fputs(",\n \"layers\": [", f);
        for (uint32_t l = 0; l < m.n_layers; l++) {
            fprintf(f, "%s{\"layer\": %u, \"bytes\": %llu, \"rows\": [", l ? ",\n  " : "\n  ", l,
                    (unsigned long long)m.layer_bytes[l]);
            for (int w = 0; w < SKV_NBITS; w++)
                fprintf(f, "%s%llu", w ? ", " : "",
                        (unsigned long long)m.layer_rows[(size_t)l * SKV_NBITS + w]);
            fputs("]}", f);
        }
        fputs("]}\n", f);
    } else if (fmt == FMT_TSV) {
        fputs("section\tkey\tbytes\trows\tchunks\tshare\n", f);
        for (int k = 0; k < SKV_MEM_NKINDS; k++)
            fprintf(f, "kind\t%s\t%llu\t\t\t%.6f\n", mem_kind_name[k],
                    (unsigned long long)m.kind[k], m.kind[k] / (double)m.total);
        for (int w = 0; w < SKV_NBITS; w++)
            fprintf(f, "width\t%u\t%llu\t%llu\t%llu\t%.6f\n", skv_bit_widths[w],
                    (unsigned long long)m.width_bytes[w], (unsigned long long)m.width_rows[w],
                    (unsigned long long)m.width_chunks[w], rows ? m.width_rows[w] / (double)rows : 0);
        if (m.centroids)
            fprintf(f, "centroids\tmerged\t%llu\t%llu\t%llu\t%.6f\n",
                    (unsigned long long)m.centroid_bytes, (unsigned long long)m.centroids,
                    (unsigned long long)m.centroid_chunks, m.centroid_bytes / (double)m.total);
        for (uint32_t l = 0; l < m.n_layers; l++)
            for (int w = 0; w < SKV_NBITS; w++)
                fprintf(f, "layer%u\t%u\t\t%llu\t\t\n", l, skv_bit_widths[w],
                        (unsigned long long)m.layer_rows[(size_t)l * SKV_NBITS + w]);
        fprintf(f, "total\tcache\t%llu\t\t\t%.6f\n", (unsigned long long)m.total, m.total / f16);
    } else {
        fprintf(f, "%s: %llu bytes (byte model %llu); fp16 K+V %llu bytes\n", tool_in_name(argv[0]),
                (unsigned long long)m.total, (unsigned long long)m.model_bytes,
                (unsigned long long)m.fp16_bytes);
        fprintf(f, "achieved beta: %.4f of fp16, %.4f of int8 (int8 = fp16/2, no scales)\n",
                m.total / f16, m.total / i8);
        fputs("\nby kind:\n", f);
        for (int k = 0; k < SKV_MEM_NKINDS; k++)
            fprintf(f, "  %-8s %12llu  %5.1f%%\n", mem_kind_name[k], (unsigned long long)m.kind[k],
                    100.0 * m.kind[k] / (double)m.total);
        fputs("\nby width:    rows  share     chunks        bytes\n", f);
        for (int w = 0; w < SKV_NBITS; w++)
            fprintf(f, "  %2u-bit %10llu %5.1f%% %10llu %12llu\n", skv_bit_widths[w],
                    (unsigned long long)m.width_rows[w], rows ? 100.0 * m.width_rows[w] / rows : 0,
                    (unsigned long long)m.width_chunks[w], (unsigned long long)m.width_bytes[w]);
        if (m.centroids)
            fprintf(f, "  centroids %7llu %17llu %12llu  (merged tokens; bytes in beta)\n",
                    (unsigned long long)m.centroids, (unsigned long long)m.centroid_chunks,
                    (unsigned long long)m.centroid_bytes);
        fputs("\nbit histogram per layer (% of rows at 0/2/3/4/8/16 bits):\n", f);
        for (uint32_t l = 0; l < m.n_layers; l++) {
            uint64_t lr = 0;
            for (int w = 0; w < SKV_NBITS; w++)
                lr += m.layer_rows[(size_t)l * SKV_NBITS + w];
            fprintf(f, "  layer %3u:", l);
            for (int w = 0; w < SKV_NBITS; w++)
                fprintf(f, " %5.1f", lr ? 100.0 * m.layer_rows[(size_t)l * SKV_NBITS + w] / lr : 0);
            fprintf(f, "   %llu bytes\n", (unsigned long long)m.layer_bytes[l]);
        }
    }
    tool_text_close(f, out);
    skv_mem_free(&m);

    return 0;
}
