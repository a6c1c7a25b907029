/* skv-trace -- make, import, export, inspect and re-stream attention traces. */
#include "tool.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void usage(FILE *f)
{
    fprintf(f,
"Usage: skv-trace COMMAND [options] [FILE]\n"
"Make, import, export, inspect and re-stream smartkv attention traces.\n"
"\n"
"Commands:\n"
"  synth    generate a seeded synthetic trace\n"
"  import   build a trace from NumPy .npy files of Q, K and V\n"
"  export   write a trace's Q, K and V as .npy files\n"
"  info     summarise a stream (shapes, dtype, chunks, CRC status)\n"
"  cat      re-stream, optionally selecting layers/tokens or (de)compressing\n"
"  record   run a GGUF model over a text and record its real Q, K and V\n"
"  heads    RazorAttention's induction and echo scores of every head (the model)\n"
"\n"
"Run 'skv-trace COMMAND --help' for a command's options.\n"
"FILE '-' or no FILE means standard input; output goes to standard output\n"
"unless -o FILE is given (binary output is refused on a terminal).\n");
}

/* ---- shared option handling ---- */

static int parse_level(const char *arg)
{
    uint64_t v;
    if (!arg)
        return 6;
    if (tool_parse_u64(arg, &v) < 0 || v > 9)
        tool_usage_error("--compress level must be 0..9, not '%s'", arg);
    return (int)v;
}

static skv_stream *open_out(const char *out, int level)
{
    tool_check_binary_output(out);
    skv_stream *s = skv_open_write(out, level);
    if (!s)
        tool_fail(tool_out_name(out));
    return s;
}

static void finish_out(skv_stream *s, const char *out)
{
    if (skv_close(s) < 0)
        tool_fail(tool_out_name(out));
}

static noreturn void fail_out(skv_stream *s, const char *out)
{
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", skv_errmsg());
    skv_discard(s);
    tool_die(EXIT_DATA, "%s: %s", tool_out_name(out), msg);
}

static uint64_t need_u64(const char *opt, const char *arg, uint64_t lo, uint64_t hi)
{
    uint64_t v;
    if (tool_parse_size(arg, &v) < 0 || v < lo || v > hi)
        tool_usage_error("%s must be an integer in %llu..%llu, not '%s'", opt,
                         (unsigned long long)lo, (unsigned long long)hi, arg);
    return v;
}

static float need_float(const char *opt, const char *arg, double lo, double hi)
{
    double v;
    if (tool_parse_double(arg, &v) < 0 || v < lo || v > hi)
        tool_usage_error("%s must be a number in %g..%g, not '%s'", opt, lo, hi, arg);
    return (float)v;
}

/* ---- synth ---- */

static int cmd_synth(int argc, char **argv)
{
    static const struct option opts[] = {
        {"layers", required_argument, 0, 'L'}, {"heads", required_argument, 0, 'H'},
        {"kv-heads", required_argument, 0, 'K'}, {"head-dim", required_argument, 0, 'D'},
        {"tokens", required_argument, 0, 'T'}, {"prefill", required_argument, 0, 'P'},
        {"dtype", required_argument, 0, 't'}, {"seed", required_argument, 0, 13},
        {"rope-theta", required_argument, 0, 1}, {"sinks", required_argument, 0, 2},
        {"sink-logit", required_argument, 0, 3}, {"hitters", required_argument, 0, 4},
        {"hitter-logit", required_argument, 0, 5}, {"local-logit", required_argument, 0, 6},
        {"needles", required_argument, 0, 7}, {"needle-queries", required_argument, 0, 8},
        {"needle-logit", required_argument, 0, 9}, {"outliers", required_argument, 0, 10},
        {"outlier-scale", required_argument, 0, 11}, {"noise", required_argument, 0, 12},
        {"output", required_argument, 0, 'o'}, {"compress", optional_argument, 0, 'z'},
        TOOL_COMMON_OPTIONS, {0, 0, 0, 0}};
    skv_synth_cfg c;
    skv_synth_defaults(&c);
    const char *out = NULL;
    int level = -1, o;
    while ((o = tool_getopt(argc, argv, "L:H:K:D:T:P:t:o:z::" TOOL_COMMON_SHORT, opts)) != -1) {
        switch (o) {
        case 'L': c.n_layers = (uint32_t)need_u64("--layers", optarg, 1, SKV_MAX_LAYERS); break;
        case 'H': c.n_heads = (uint32_t)need_u64("--heads", optarg, 1, SKV_MAX_HEADS); break;
        case 'K': c.n_kv_heads = (uint32_t)need_u64("--kv-heads", optarg, 1, SKV_MAX_HEADS); break;
        case 'D': c.head_dim = (uint32_t)need_u64("--head-dim", optarg, 8, SKV_MAX_HEAD_DIM); break;
        case 'T': c.n_tokens = need_u64("--tokens", optarg, 2, SKV_MAX_TOKENS); break;
        case 'P': c.n_prefill = need_u64("--prefill", optarg, 1, SKV_MAX_TOKENS); break;
        case 't': {
            int dt = skv_dtype_parse(optarg);
            if (dt < 0)
                tool_usage_error("--dtype must be f32, f16 or bf16, not '%s'", optarg);
            c.dtype = (uint32_t)dt;
            break;
        }
        case 13: c.seed = need_u64("--seed", optarg, 0, UINT64_MAX); break;
        case 1: c.rope_theta = need_float("--rope-theta", optarg, 1, 1e9); break;
        case 2: c.sinks = (uint32_t)need_u64("--sinks", optarg, 0, 1 << 20); break;
        case 3: c.sink_logit = need_float("--sink-logit", optarg, 0, 50); break;
        case 4: c.hitter_frac = need_float("--hitters", optarg, 0, 0.5); break;
        case 5: c.hitter_logit = need_float("--hitter-logit", optarg, 0, 50); break;
        case 6: c.local_logit = need_float("--local-logit", optarg, 0, 50); break;
        case 7: c.needles = (uint32_t)need_u64("--needles", optarg, 0, 1 << 20); break;
        case 8: c.needle_queries = (uint32_t)need_u64("--needle-queries", optarg, 0, 1 << 24); break;
        case 9: c.needle_logit = need_float("--needle-logit", optarg, 0, 50); break;
        case 10: c.outlier_channels = (uint32_t)need_u64("--outliers", optarg, 0, 16); break;
        case 11: c.outlier_scale = need_float("--outlier-scale", optarg, 0, 1000); break;
        case 12: c.noise = need_float("--noise", optarg, 0, 100); break;
        case 'o': out = optarg; break;
        case 'z': level = parse_level(optarg); break;
        case 'h':
            printf(
"Usage: skv-trace synth [options]\n"
"Generate a seeded synthetic trace (generative model in skv-trace(1)).\n"
"  -L, --layers N         layers (30)          -H, --heads N       query heads (9)\n"
"  -K, --kv-heads N       KV heads (3)         -D, --head-dim N    head dim (64)\n"
"  -T, --tokens N         tokens, K suffix ok (4096)\n"
"  -P, --prefill N        tokens before decoding starts (3/4 of --tokens)\n"
"  -t, --dtype TYPE       f16 (default), f32 or bf16\n"
"      --seed N           random seed (1)\n"
"      --rope-theta X     RoPE base (100000)\n"
"      --sinks N          attention-sink tokens at the start (4)\n"
"      --sink-logit X     typical sink logit (7)\n"
"      --hitters F        fraction of heavy-hitter tokens (0.01)\n"
"      --hitter-logit X   heavy-hitter logit (4)\n"
"      --local-logit X    recency-band logit at distance 0 (5)\n"
"      --needles N        planted needle tokens in the prefill (4)\n"
"      --needle-queries N last decode steps that look for the needles (8)\n"
"      --needle-logit X   needle logit for those queries (10)\n"
"      --outliers N       outlier key channels per KV head (2)\n"
"      --outlier-scale X  offset of outlier channels (8)\n"
"      --noise X          std of the noise part of q and k (1)\n"
"  -o, --output FILE      write to FILE (default stdout)\n"
"  -z, --compress[=L]     zlib-compress chunks at level L (6)\n" TOOL_COMMON_HELP);
            return 0;
        default: tool_usage_error("unhandled option"); /* a table entry without a case */
        }
    }
    if (optind < argc)
        tool_usage_error("synth takes no file arguments");
    if (c.n_kv_heads > c.n_heads || c.n_heads % c.n_kv_heads)
        tool_usage_error("--kv-heads (%u) must divide --heads (%u)", c.n_kv_heads, c.n_heads);
    if (c.head_dim % 2)
        tool_usage_error("--head-dim must be even (RoPE rotates channel pairs)");
    if (c.n_prefill > c.n_tokens)
        tool_usage_error("--prefill exceeds --tokens");
    skv_trace_hdr h;
    if (skv_synth_header(&c, &h) < 0)
        tool_usage_error("%s", skv_errmsg());
    if (tool_verbosity >= 2 && c.needles) { /* -v: where the needles are (scripts/plot-alloc) */
        uint64_t *pos = calloc(c.needles, sizeof *pos);
        if (pos && skv_synth_needles(&c, pos) == 0) {
            fprintf(stderr, "%s: needles at", tool_name);
            for (uint32_t i = 0; i < c.needles; i++)
                fprintf(stderr, "%s%llu", i ? "," : " ", (unsigned long long)pos[i]);
            fputc('\n', stderr);
        }
        free(pos);
    }
    skv_stream *s = open_out(out, level);
    tool_progress *pr = tool_progress_start(tool_name, c.n_layers, "layers");
    c.progress = tool_progress_cb;
    c.progress_ctx = pr;
    int rc = skv_synth_write(&c, s);
    tool_progress_end(pr);
    if (rc < 0)
        fail_out(s, out);
    finish_out(s, out);
    return 0;
}

/* ---- import ---- */

typedef struct {
    const char *path;
    FILE *f;
    skv_npy_hdr h;
} npy_in;

static void npy_open(npy_in *n, const char *path)
{
    n->path = path;
    n->f = fopen(path, "rb");
    if (!n->f)
        tool_die(EXIT_DATA, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(n->f), &st) != 0 || !S_ISREG(st.st_mode))
        tool_die(EXIT_DATA, "%s: not a regular file", path);
    if (skv_npy_read_header(n->f, (uint64_t)st.st_size, &n->h) < 0)
        tool_fail(path);
    if (n->h.ndim != 4)
        tool_die(EXIT_DATA, "%s: expected shape [layers][heads][tokens][dim], got %d dimensions",
                 path, n->h.ndim);
}

static int cmd_import(int argc, char **argv)
{
    static const struct option opts[] = {
        {"queries", required_argument, 0, 2}, {"keys", required_argument, 0, 3},
        {"values", required_argument, 0, 4}, {"prefill", required_argument, 0, 'P'},
        {"model", required_argument, 0, 'm'}, {"post-rope", no_argument, 0, 5},
        {"pre-rope", no_argument, 0, 6}, {"rope-theta", required_argument, 0, 1},
        {"output", required_argument, 0, 'o'}, {"compress", optional_argument, 0, 'z'},
        TOOL_COMMON_OPTIONS, {0, 0, 0, 0}};
    const char *qp = NULL, *kp = NULL, *vp = NULL, *out = NULL, *model = "imported";
    uint64_t prefill = 0;
    int have_prefill = 0, level = -1, post_rope = 1, o;
    float theta = 0;
    while ((o = tool_getopt(argc, argv, "P:m:o:z::" TOOL_COMMON_SHORT, opts)) != -1) {
        switch (o) {
        case 2: qp = optarg; break;
        case 3: kp = optarg; break;
        case 4: vp = optarg; break;
        case 'P': prefill = need_u64("--prefill", optarg, 0, SKV_MAX_TOKENS); have_prefill = 1; break;
        case 'm': model = optarg; break;
        case 5: post_rope = 1; break;
        case 6: post_rope = 0; break;
        case 1: theta = need_float("--rope-theta", optarg, 0, 1e9); break;
        case 'o': out = optarg; break;
        case 'z': level = parse_level(optarg); break;
        case 'h':
            printf(
"Usage: skv-trace import --queries Q.npy --keys K.npy --values V.npy [options]\n"
"Build a trace from NumPy arrays: Q [layers][heads][tokens][dim],\n"
"K and V [layers][kv_heads][tokens][dim], all float16 or all float32, C order.\n"
"The elements are copied bit for bit.\n"
"      --queries FILE   queries .npy\n"
"      --keys FILE      keys .npy\n"
"      --values FILE    values .npy\n"
"  -P, --prefill N      tokens before decoding starts (default: all tokens)\n"
"  -m, --model NAME     source name recorded in the header\n"
"      --post-rope      keys/queries already have RoPE applied (default)\n"
"      --pre-rope       they do not\n"
"      --rope-theta X   RoPE base to record (default 0: unknown)\n"
"  -o, --output FILE    write to FILE (default stdout)\n"
"  -z, --compress[=L]   zlib-compress chunks at level L (6)\n" TOOL_COMMON_HELP);
            return 0;
        default: tool_usage_error("unhandled option"); /* a table entry without a case */
        }
    }
    if (!qp || !kp || !vp)
        tool_usage_error("import needs --queries, --keys and --values");
    if (optind < argc)
        tool_usage_error("unexpected argument '%s'", argv[optind]);
    if (strlen(model) > SKV_MAX_NAME)
        tool_usage_error("--model name longer than %u bytes", SKV_MAX_NAME);
    npy_in q, k, v;
    npy_open(&q, qp);
    npy_open(&k, kp);
    npy_open(&v, vp);
    if (k.h.dtype != q.h.dtype || v.h.dtype != q.h.dtype)
        tool_die(EXIT_DATA, "%s, %s, %s: element types differ (%s, %s, %s)", qp, kp, vp,
                 skv_dtype_name(q.h.dtype), skv_dtype_name(k.h.dtype), skv_dtype_name(v.h.dtype));
    for (int i = 0; i < 4; i++)
        if (k.h.shape[i] != v.h.shape[i])
            tool_die(EXIT_DATA, "%s: shape differs from %s in dimension %d (%llu vs %llu)", vp,
                     kp, i, (unsigned long long)v.h.shape[i], (unsigned long long)k.h.shape[i]);
    if (q.h.shape[0] != k.h.shape[0] || q.h.shape[2] != k.h.shape[2] ||
        q.h.shape[3] != k.h.shape[3])
        tool_die(EXIT_DATA, "%s: shape [%llu][%llu][%llu][%llu] does not fit keys [%llu][%llu][%llu][%llu] "
                 "(layers, tokens and dim must agree)", qp,
                 (unsigned long long)q.h.shape[0], (unsigned long long)q.h.shape[1],
                 (unsigned long long)q.h.shape[2], (unsigned long long)q.h.shape[3],
                 (unsigned long long)k.h.shape[0], (unsigned long long)k.h.shape[1],
                 (unsigned long long)k.h.shape[2], (unsigned long long)k.h.shape[3]);
    skv_trace_hdr h = {0};
    h.n_layers = (uint32_t)q.h.shape[0];
    h.n_heads = (uint32_t)q.h.shape[1];
    h.n_kv_heads = (uint32_t)k.h.shape[1];
    h.n_tokens = q.h.shape[2];
    h.head_dim = (uint32_t)q.h.shape[3];
    h.n_prefill = have_prefill ? prefill : h.n_tokens;
    h.dtype = q.h.dtype;
    h.flags = post_rope ? SKV_TRACE_POST_ROPE : 0;
    h.rope_theta = theta;
    snprintf(h.model, sizeof h.model, "%s", model);
    if (skv_trace_hdr_check(&h) < 0)
        tool_die(EXIT_DATA, "%s: %s", qp, skv_errmsg());

    skv_stream *s = open_out(out, level);
    size_t es = skv_dtype_size(h.dtype);
    size_t row = (size_t)h.head_dim * es, blk = (size_t)h.n_tokens * row;
    void *buf = skv_malloc(blk);
    if (!buf)
        fail_out(s, out);
    if (skv_trhd_write(s, &h) < 0)
        fail_out(s, out);
    npy_in *src[3] = {&q, &k, &v};
    for (uint32_t l = 0; l < h.n_layers; l++) {
        for (int kind = 0; kind < 3; kind++) {
            uint32_t nh = kind ? h.n_kv_heads : h.n_heads;
            for (uint32_t hd = 0; hd < nh; hd++) {
                npy_in *n = src[kind];
                /* the file is read sequentially: layer-major order matches ours */
                off_t at = (off_t)(n->h.data_offset + ((uint64_t)l * nh + hd) * blk);
                if (fseeko(n->f, at, SEEK_SET) != 0 || fread(buf, 1, blk, n->f) != blk) {
                    skv_discard(s);
                    tool_die(EXIT_DATA, "%s: read error at byte %lld", n->path, (long long)at);
                }
                if (skv_tens_write_raw(s, (uint32_t)(SKV_TK_Q + kind), h.dtype, l, hd, 0,
                                       h.n_tokens, h.head_dim, buf) < 0)
                    fail_out(s, out);
            }
        }
    }
    free(buf);
    fclose(q.f);
    fclose(k.f);
    fclose(v.f);
    finish_out(s, out);
    return 0;
}

/* ---- export ---- */

typedef struct {
    char *path, *tmp;
    FILE *f;
} npy_out;

static void npy_create(npy_out *n, const char *prefix, const char *suffix, uint32_t dtype,
                       uint64_t d0, uint64_t d1, uint64_t d2, uint64_t d3)
{
    size_t len = strlen(prefix) + strlen(suffix) + 1;
    n->path = malloc(len);
    n->tmp = malloc(len + 12);
    if (!n->path || !n->tmp)
        tool_die(EXIT_DATA, "out of memory");
    snprintf(n->path, len, "%s%s", prefix, suffix);
    snprintf(n->tmp, len + 12, "%s.tmpXXXXXX", n->path);
    int fd = mkstemp(n->tmp);
    if (fd < 0 || !(n->f = fdopen(fd, "wb")))
        tool_die(EXIT_DATA, "%s: cannot create: %s", n->path, strerror(errno));
    skv_tmp_register(n->tmp);
    mode_t um = umask(0);
    umask(um);
    fchmod(fd, 0666 & ~um);
    uint8_t hdr[256];
    uint64_t shape[4] = {d0, d1, d2, d3};
    int hl = skv_npy_format_header(dtype, 4, shape, hdr, sizeof hdr);
    if (hl < 0 || fwrite(hdr, 1, (size_t)hl, n->f) != (size_t)hl)
        tool_die(EXIT_DATA, "%s: write error", n->path);
}

static int cmd_export(int argc, char **argv)
{
    static const struct option opts[] = {
        {"prefix", required_argument, 0, 1}, TOOL_COMMON_OPTIONS, {0, 0, 0, 0}};
    const char *prefix = NULL;
    int o;
    while ((o = tool_getopt(argc, argv, TOOL_COMMON_SHORT, opts)) != -1) {
        switch (o) {
        case 1: prefix = optarg; break;
        case 'h':
            printf(
"Usage: skv-trace export --prefix PREFIX [FILE]\n"
"Write the trace's queries, keys and values to PREFIX.q.npy, PREFIX.k.npy and\n"
"PREFIX.v.npy with shape [layers][heads][tokens][dim].  f16 and f32 traces are\n"
"written bit for bit in their own type; bf16 traces are widened to float32.\n"
"      --prefix PREFIX  output path prefix\n" TOOL_COMMON_HELP);
            return 0;
        default: tool_usage_error("unhandled option"); /* a table entry without a case */
        }
    }
    if (!prefix)
        tool_usage_error("export needs --prefix PREFIX");
    if (argc - optind > 1)
        tool_usage_error("export takes one input");
    const char *in = optind < argc ? argv[optind] : "-";
    tool_check_binary_input(in);
    skv_stream *s = skv_open_read(in);
    if (!s)
        tool_fail(tool_in_name(in));
    skv_chunk c;
    int rc;
    skv_trace_hdr h;
    int have_hdr = 0;
    npy_out files[3];
    uint32_t odt = 0;
    float *conv = NULL; /* bf16 blocks widened to f32 */
    /* one pass: TENS blocks arrive in layer order, which is the npy order of
     * each file; blocks of each kind are appended to that kind's file */
    uint64_t expect_rows[3] = {0};
    skv_checker *chk = skv_checker_new();
    if (!chk)
        tool_die(EXIT_DATA, "out of memory");
    while ((rc = skv_read(s, &c)) > 0) {
        if (skv_check_chunk(chk, &c) < 0)
            goto bad;
        if (skv_chunk_is(&c, SKV_T_TRHD)) {
            if (have_hdr || skv_trhd_decode(&c, &h) < 0) {
                if (have_hdr)
                    skv_error(SKV_EFORMAT, "second TRHD chunk at byte %llu",
                              (unsigned long long)c.offset);
                goto bad;
            }
            if (h.flags & (SKV_TRACE_PACKED | SKV_TRACE_NO_QUERIES)) {
                skv_error(SKV_EFORMAT, "this is a packed cache, not a trace "
                          "(dequantize it with skv-quant -d first)");
                goto bad;
            }
            have_hdr = 1;
            odt = h.dtype == SKV_BF16 ? SKV_F32 : h.dtype;
            npy_create(&files[0], prefix, ".q.npy", odt, h.n_layers, h.n_heads, h.n_tokens, h.head_dim);
            npy_create(&files[1], prefix, ".k.npy", odt, h.n_layers, h.n_kv_heads, h.n_tokens, h.head_dim);
            npy_create(&files[2], prefix, ".v.npy", odt, h.n_layers, h.n_kv_heads, h.n_tokens, h.head_dim);
        } else if (skv_chunk_is(&c, SKV_T_TENS)) {
            skv_tens t;
            if (!have_hdr) {
                skv_error(SKV_EFORMAT, "TENS chunk at byte %llu before the trace header",
                          (unsigned long long)c.offset);
                goto bad;
            }
            if (skv_tens_decode(&c, &t) < 0)
                goto bad;
            if (t.kind > SKV_TK_V || t.cols != h.head_dim || t.dtype != h.dtype) {
                skv_error(SKV_EFORMAT, "TENS chunk at byte %llu does not fit the trace header",
                          (unsigned long long)c.offset);
                goto bad;
            }
            int ki = (int)t.kind - 1;
            uint32_t nh = ki ? h.n_kv_heads : h.n_heads;
            uint64_t pos = ((uint64_t)t.layer * nh + t.head) * h.n_tokens + t.row0;
            if (t.layer >= h.n_layers || t.head >= nh || pos != expect_rows[ki] ||
                t.row0 > h.n_tokens || t.rows > h.n_tokens - t.row0) {
                skv_error(SKV_EFORMAT, "TENS chunk at byte %llu (%s layer %u head %u row %llu) "
                          "is out of order", (unsigned long long)c.offset,
                          skv_tensor_kind_name(t.kind), t.layer, t.head,
                          (unsigned long long)t.row0);
                goto bad;
            }
            expect_rows[ki] += t.rows;
            size_t n = (size_t)(t.rows * t.cols);
            const void *src = t.data;
            size_t bytes = n * skv_dtype_size(t.dtype);
            if (odt != t.dtype) {
                free(conv);
                conv = skv_malloc(n * 4);
                if (!conv)
                    goto bad;
                skv_convert_to_f32(t.dtype, t.data, conv, n);
                src = conv;
                bytes = n * 4;
            }
            if (fwrite(src, 1, bytes, files[ki].f) != bytes) {
                skv_error(SKV_EIO, "write error on %s: %s", files[ki].path, strerror(errno));
                goto bad;
            }
        } else if (skv_chunk_is_critical(c.type) && !skv_chunk_is(&c, SKV_T_TOKS)) {
            /* allocation and other analysis chunks do not go into .npy files */
        }
    }
    if (rc < 0 || skv_check_end(chk) < 0)
        goto bad;
    if (!have_hdr) {
        skv_error(SKV_EFORMAT, "no trace header (TRHD) in stream");
        goto bad;
    }
    skv_checker_free(chk);
    chk = NULL;
    for (int i = 0; i < 3; i++) {
        uint64_t want = (uint64_t)h.n_layers * (i ? h.n_kv_heads : h.n_heads) * h.n_tokens;
        if (expect_rows[i] != want) {
            skv_error(SKV_EFORMAT, "stream holds %llu of %llu %s rows",
                      (unsigned long long)expect_rows[i], (unsigned long long)want,
                      skv_tensor_kind_name((uint32_t)i + 1));
            goto bad;
        }
    }
    free(conv);
    skv_close(s);
    for (int i = 0; i < 3; i++) {
        if (fclose(files[i].f) != 0 || rename(files[i].tmp, files[i].path) != 0)
            tool_die(EXIT_DATA, "%s: write error: %s", files[i].path, strerror(errno));
        skv_tmp_unregister(files[i].tmp);
        free(files[i].path);
        free(files[i].tmp);
    }
    return 0;
bad:;
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", skv_errmsg());
    skv_checker_free(chk);
    if (have_hdr)
        for (int i = 0; i < 3; i++) {
            fclose(files[i].f);
            unlink(files[i].tmp);
            skv_tmp_unregister(files[i].tmp);
        }
    tool_die(EXIT_DATA, "%s: %s", tool_in_name(in), msg);
}

/* ---- info ---- */

typedef struct {
    char type[5];
    uint64_t count, stored, raw;
} chunk_stat;

static int cmd_info(int argc, char **argv)
{
    static const struct option opts[] = {
        {"json", no_argument, 0, TOOL_OPT_JSON}, {"format", required_argument, 0, 'O'},
        TOOL_COMMON_OPTIONS, {0, 0, 0, 0}};
    int json = 0, o;
    while ((o = tool_getopt(argc, argv, "O:" TOOL_COMMON_SHORT, opts)) != -1) {
        switch (o) {
        case TOOL_OPT_JSON: json = 1; break;
        case 'O':
            json = tool_opt_format(optarg, 1u << TOOL_FMT_TEXT | 1u << TOOL_FMT_JSON) ==
                   TOOL_FMT_JSON;
            break;
        case 'h':
            printf(
"Usage: skv-trace info [--json] [FILE]\n"
"Read a whole stream, check every CRC and the end chunk, and summarise it:\n"
"shapes, element type, source, chunk counts and sizes.\n"
"  -O, --format FMT       text (default) or json\n"
"      --json             short for -O json: one JSON object\n" TOOL_COMMON_HELP);
            return 0;
        default: tool_usage_error("unhandled option"); /* a table entry without a case */
        }
    }
    if (argc - optind > 1)
        tool_usage_error("info takes one input");
    const char *in = optind < argc ? argv[optind] : "-";
    tool_check_binary_input(in);
    skv_stream *s = skv_open_read(in);
    if (!s)
        tool_fail(tool_in_name(in));
    tool_progress *pr = tool_progress_start(tool_name, 0, "bytes");
    tool_progress_watch(pr, in);
    chunk_stat st[32];
    int nst = 0;
    skv_trace_hdr h;
    int have_hdr = 0, rc;
    uint64_t rows[6] = {0};
    skv_chunk c;
    /* the same conformance rules as every tool that loads the stream */
    skv_checker *chk = skv_checker_new();
    if (!chk)
        tool_die(EXIT_DATA, "out of memory");
    while ((rc = skv_read(s, &c)) > 0) {
        if ((rc = skv_check_chunk(chk, &c)) < 0)
            break;
        int i;
        for (i = 0; i < nst && strcmp(st[i].type, c.type) != 0; i++)
            ;
        if (i == nst && nst < 32) {
            memset(&st[nst], 0, sizeof st[nst]);
            memcpy(st[nst].type, c.type, 5);
            nst++;
        }
        if (i < nst) {
            st[i].count++;
            st[i].stored += c.size + SKV_CHUNK_HEADER_LEN + SKV_CHUNK_CRC_LEN;
            st[i].raw += c.raw_size;
        }
        if (skv_chunk_is(&c, SKV_T_TRHD)) {
            if (have_hdr) {
                skv_error(SKV_EFORMAT, "second TRHD chunk at byte %llu",
                          (unsigned long long)c.offset);
                rc = -1;
                break;
            }
            if ((rc = skv_trhd_decode(&c, &h)) < 0)
                break;
            have_hdr = 1;
        } else if (skv_chunk_is(&c, SKV_T_TENS)) {
            skv_tens t;
            if ((rc = skv_tens_decode(&c, &t)) < 0)
                break;
            rows[t.kind] += t.rows;
        }
    }
    tool_progress_end(pr);
    if (rc == 0)
        rc = skv_check_end(chk);
    skv_checker_free(chk);
    if (rc < 0) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", skv_errmsg());
        skv_close(s);
        tool_die(EXIT_DATA, "%s: %s", tool_in_name(in), msg);
    }
    int maj, min;
    skv_stream_version(s, &maj, &min);
    uint64_t total = skv_stream_offset(s), nchunks = skv_stream_chunks(s) + 1;
    skv_close(s);
    if (json) {
        printf("{\"file\": \"%s\", \"version\": \"%d.%d\", \"bytes\": %llu, \"chunks\": %llu, "
               "\"crc\": \"ok\", \"complete\": true", tool_in_name(in), maj, min,
               (unsigned long long)total, (unsigned long long)nchunks);
        if (have_hdr)
            printf(", \"trace\": {\"model\": \"%s\", \"tokenizer\": \"%s\", \"layers\": %u, "
                   "\"heads\": %u, \"kv_heads\": %u, \"head_dim\": %u, \"tokens\": %llu, "
                   "\"prefill\": %llu, \"dtype\": \"%s\", \"post_rope\": %s, "
                   "\"rope_theta\": %g, \"token_ids\": %s, \"packed\": %s, \"queries\": %s}",
                   h.model, h.tokenizer, h.n_layers, h.n_heads, h.n_kv_heads, h.head_dim,
                   (unsigned long long)h.n_tokens, (unsigned long long)h.n_prefill,
                   skv_dtype_name(h.dtype), h.flags & SKV_TRACE_POST_ROPE ? "true" : "false",
                   (double)h.rope_theta, h.flags & SKV_TRACE_HAS_TOKENS ? "true" : "false",
                   h.flags & SKV_TRACE_PACKED ? "true" : "false",
                   h.flags & SKV_TRACE_NO_QUERIES ? "false" : "true");
        printf(", \"chunk_types\": {");
        for (int i = 0; i < nst; i++)
            printf("%s\"%s\": {\"count\": %llu, \"bytes\": %llu, \"raw_bytes\": %llu}",
                   i ? ", " : "", st[i].type, (unsigned long long)st[i].count,
                   (unsigned long long)st[i].stored, (unsigned long long)st[i].raw);
        printf("}}\n");
        return 0;
    }
    printf("file:       %s\n", tool_in_name(in));
    printf("format:     smartkv %d.%d, %llu bytes, %llu chunks, all CRCs ok, end chunk ok\n",
           maj, min, (unsigned long long)total, (unsigned long long)nchunks);
    if (have_hdr) {
        printf("source:     %s\n", h.model[0] ? h.model : "(unnamed)");
        if (h.tokenizer[0])
            printf("tokenizer:  %s\n", h.tokenizer);
        printf("shape:      %u layers, %u query heads, %u kv heads (GQA %u:1), head_dim %u\n",
               h.n_layers, h.n_heads, h.n_kv_heads, h.n_heads / h.n_kv_heads, h.head_dim);
        printf("tokens:     %llu (%llu prefill, %llu decode steps)%s\n",
               (unsigned long long)h.n_tokens, (unsigned long long)h.n_prefill,
               (unsigned long long)(h.n_tokens - h.n_prefill),
               h.flags & SKV_TRACE_HAS_TOKENS ? ", token ids included" : "");
        printf("elements:   %s, keys %s RoPE%s\n", skv_dtype_name(h.dtype),
               h.flags & SKV_TRACE_POST_ROPE ? "after" : "before",
               h.rope_theta > 0 ? "" : " (theta unknown)");
        if (h.rope_theta > 0)
            printf("rope_theta: %g\n", (double)h.rope_theta);
        double fp16 = 2.0 * h.n_layers * h.n_kv_heads * (double)h.n_tokens * h.head_dim * 2;
        printf("kv fp16:    %.0f bytes (K and V at 16 bits)\n", fp16);
        if (h.flags & SKV_TRACE_PACKED)
            printf("content:    packed cache%s\n",
                   h.flags & SKV_TRACE_NO_QUERIES ? " (queries dropped)" : " with queries");
        else
            printf("rows:       Q %llu, K %llu, V %llu\n", (unsigned long long)rows[1],
                   (unsigned long long)rows[2], (unsigned long long)rows[3]);
    }
    printf("chunks:     %-6s %10s %14s %14s\n", "type", "count", "bytes", "raw bytes");
    for (int i = 0; i < nst; i++)
        printf("            %-6s %10llu %14llu %14llu\n", st[i].type,
               (unsigned long long)st[i].count, (unsigned long long)st[i].stored,
               (unsigned long long)st[i].raw);
    return 0;
}

/* ---- cat ---- */

static int cmd_cat(int argc, char **argv)
{
    static const struct option opts[] = {
        {"layers", required_argument, 0, 'L'}, {"tokens", required_argument, 0, 'T'},
        {"dtype", required_argument, 0, 't'}, {"output", required_argument, 0, 'o'},
        {"compress", optional_argument, 0, 'z'}, {"decompress", no_argument, 0, 'd'},
        TOOL_COMMON_OPTIONS, {0, 0, 0, 0}};
    const char *layers_arg = NULL, *tokens_arg = NULL, *out = NULL;
    int level = SKV_LEVEL_KEEP, o, dtype = 0;
    while ((o = tool_getopt(argc, argv, "L:l:T:t:o:z::d" TOOL_COMMON_SHORT, opts)) != -1) {
        switch (o) {
        case 'L':
        case 'l': layers_arg = optarg; break;
        case 'T': tokens_arg = optarg; break;
        case 't':
            if ((dtype = skv_dtype_parse(optarg)) < 0)
                tool_usage_error("--dtype must be f32, f16 or bf16, not '%s'", optarg);
            break;
        case 'o': out = optarg; break;
        case 'z': level = parse_level(optarg); break;
        case 'd': level = -1; break;
        case 'h':
            printf(
"Usage: skv-trace cat [options] [FILE]\n"
"Re-stream a trace, verifying every chunk; optionally select layers and tokens,\n"
"convert the element type, or change compression.  Without selection or\n"
"conversion, chunks of any kind are copied through.\n"
"  -L, --layers LIST      keep these layers, e.g. 0-3,7 (renumbered from 0)\n"
"  -T, --tokens A:B       keep tokens A..B-1 (A: or :B allowed)\n"
"  -t, --dtype TYPE       convert elements to f32, f16 or bf16\n"
"  -o, --output FILE      write to FILE (default stdout)\n"
"  -z, --compress[=L]     zlib-compress chunks at level L (6)\n"
"  -d, --decompress       store chunks uncompressed (default: as the input)\n" TOOL_COMMON_HELP);
            return 0;
        default: tool_usage_error("unhandled option"); /* a table entry without a case */
        }
    }
    if (argc - optind > 1)
        tool_usage_error("cat takes one input");
    const char *in = optind < argc ? argv[optind] : "-";
    tool_check_binary_input(in);
    tool_check_binary_output(out);
    skv_stream *s = skv_open_read(in);
    if (!s)
        tool_fail(tool_in_name(in));
    int select = layers_arg || tokens_arg || dtype > 0;
    skv_stream *w = NULL;
    skv_chunk c;
    int rc;
    skv_trace_hdr h;
    int have_hdr = 0;
    uint8_t *lsel = NULL;
    uint32_t *lmap = NULL;
    uint64_t t0 = 0, t1 = 0;
    void *conv = NULL;
    float *f32 = NULL;
    char usage_msg[512];
    w = skv_open_write(out, level);
    if (!w) {
        skv_close(s);
        tool_fail(tool_out_name(out));
    }
    skv_checker *chk = skv_checker_new();
    if (!chk)
        tool_die(EXIT_DATA, "out of memory");
    tool_progress *pr = tool_progress_start(tool_name, 0, "bytes");
    tool_progress_watch(pr, in);
    while ((rc = skv_read(s, &c)) > 0) {
        /* nothing is copied that a reader of the output would reject */
        if ((rc = skv_check_chunk(chk, &c)) < 0)
            break;
        if (!select) {
            if (skv_copy_chunk(w, &c) < 0)
                goto wfail;
            continue;
        }
        if (skv_chunk_is(&c, SKV_T_TRHD)) {
            if (have_hdr || skv_trhd_decode(&c, &h) < 0) {
                if (have_hdr)
                    skv_error(SKV_EFORMAT, "second TRHD chunk");
                goto rfail;
            }
            if (h.flags & (SKV_TRACE_PACKED | SKV_TRACE_NO_QUERIES)) {
                skv_error(SKV_EUNSUP, "cannot select from or convert a packed cache");
                goto rfail;
            }
            have_hdr = 1;
            lsel = calloc(h.n_layers, 1);
            lmap = calloc(h.n_layers, sizeof *lmap);
            if (!lsel || !lmap)
                tool_die(EXIT_DATA, "out of memory");
            const char *err = NULL;
            if (layers_arg) {
                if (tool_parse_index_set(layers_arg, h.n_layers, lsel, &err) < 0) {
                    snprintf(usage_msg, sizeof usage_msg, "--layers '%s': %s (the trace has "
                             "%u layers)", layers_arg, err, h.n_layers);
                    goto usage;
                }
            } else {
                memset(lsel, 1, h.n_layers);
            }
            uint32_t nl = 0;
            for (uint32_t l = 0; l < h.n_layers; l++)
                if (lsel[l])
                    lmap[l] = nl++;
            t0 = 0;
            t1 = h.n_tokens;
            if (tokens_arg && tool_parse_range(tokens_arg, h.n_tokens, &t0, &t1, &err) < 0) {
                snprintf(usage_msg, sizeof usage_msg, "--tokens '%s': %s (the trace has %llu "
                         "tokens)", tokens_arg, err, (unsigned long long)h.n_tokens);
                goto usage;
            }
            skv_trace_hdr nh = h;
            nh.n_layers = nl;
            nh.n_tokens = t1 - t0;
            nh.n_prefill = h.n_prefill <= t0 ? 0 : (h.n_prefill >= t1 ? t1 - t0 : h.n_prefill - t0);
            if (dtype > 0)
                nh.dtype = (uint32_t)dtype;
            if (skv_trhd_write(w, &nh) < 0)
                goto wfail;
        } else if (skv_chunk_is(&c, SKV_T_TOKS)) {
            if (!have_hdr || c.raw_size < 16) {
                skv_error(SKV_EFORMAT, "misplaced or short TOKS chunk at byte %llu",
                          (unsigned long long)c.offset);
                goto rfail;
            }
            uint64_t a = skv_get64(c.data), n = skv_get64(c.data + 8);
            if (n > h.n_tokens || a > h.n_tokens - n || 16 + n * 4 != c.raw_size) {
                skv_error(SKV_EFORMAT, "bad TOKS chunk at byte %llu",
                          (unsigned long long)c.offset);
                goto rfail;
            }
            uint64_t lo = a > t0 ? a : t0, hi = a + n < t1 ? a + n : t1;
            if (lo < hi) {
                int32_t *ids = malloc((size_t)(hi - lo) * 4);
                if (!ids)
                    tool_die(EXIT_DATA, "out of memory");
                memcpy(ids, c.data + 16 + (lo - a) * 4, (size_t)(hi - lo) * 4);
                rc = skv_toks_write(w, lo - t0, hi - lo, ids);
                free(ids);
                if (rc < 0)
                    goto wfail;
            }
        } else if (skv_chunk_is(&c, SKV_T_TENS)) {
            skv_tens t;
            if (!have_hdr) {
                skv_error(SKV_EFORMAT, "TENS chunk before the trace header");
                goto rfail;
            }
            if (skv_tens_decode(&c, &t) < 0)
                goto rfail;
            if (t.layer >= h.n_layers || t.row0 > h.n_tokens || t.rows > h.n_tokens - t.row0) {
                skv_error(SKV_EFORMAT, "TENS chunk at byte %llu outside the trace shape",
                          (unsigned long long)c.offset);
                goto rfail;
            }
            if (!lsel[t.layer])
                continue;
            uint64_t lo = t.row0 > t0 ? t.row0 : t0, hi = t.row0 + t.rows < t1 ? t.row0 + t.rows : t1;
            if (lo >= hi)
                continue;
            size_t es = skv_dtype_size(t.dtype);
            const uint8_t *src = t.data + (lo - t.row0) * t.cols * es;
            size_t n = (size_t)((hi - lo) * t.cols);
            uint32_t odt = dtype > 0 ? (uint32_t)dtype : t.dtype;
            if (odt != t.dtype) {
                free(f32);
                free(conv);
                f32 = skv_malloc(n * 4);
                conv = skv_malloc(n * skv_dtype_size(odt));
                if (!f32 || !conv)
                    goto wfail;
                skv_convert_to_f32(t.dtype, src, f32, n);
                skv_convert_from_f32(odt, f32, conv, n);
                src = conv;
            }
            if (skv_tens_write_raw(w, t.kind, odt, lmap[t.layer], t.head, lo - t0,
                                    hi - lo, t.cols, src) < 0)
                goto wfail;
        } else if (skv_chunk_is_critical(c.type)) {
            skv_error(SKV_EUNSUP, "cannot select from a stream with %s chunks "
                      "(allocation or cache data would no longer match)", c.type);
            goto rfail;
        } else if (skv_copy_chunk(w, &c) < 0) {
            goto wfail;
        }
    }
    tool_progress_end(pr);
    pr = NULL;
    if (rc < 0 || skv_check_end(chk) < 0)
        goto rfail;
    skv_checker_free(chk);
    skv_close(s);
    free(lsel);
    free(lmap);
    free(conv);
    free(f32);
    finish_out(w, out);
    return 0;
    char msg[1024];
    int code;
rfail:
    snprintf(msg, sizeof msg, "%s: %s", tool_in_name(in), skv_errmsg());
    code = EXIT_DATA;
    goto cleanup;
wfail:
    snprintf(msg, sizeof msg, "%s: %s", tool_out_name(out), skv_errmsg());
    code = EXIT_DATA;
    goto cleanup;
usage:
    snprintf(msg, sizeof msg, "%s", usage_msg);
    code = EXIT_USAGE;
cleanup:
    skv_checker_free(chk);
    tool_progress_end(pr);
    skv_discard(w);
    skv_close(s);
    free(lsel);
    free(lmap);
    free(conv);
    free(f32);
    tool_die(code, "%s", msg);
}

/* ---- record ---- */

static char *slurp_text(const char *path, size_t *len)
{
    FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (!f)
        tool_die(EXIT_DATA, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap + 1);
    if (!b)
        tool_die(EXIT_DATA, "out of memory");
    for (;;) {
        size_t k = fread(b + n, 1, cap - n, f);
        n += k;
        if (n < cap) {
            if (ferror(f))
                tool_die(EXIT_DATA, "%s: read error", tool_in_name(path));
            break;
        }
        if (cap > ((size_t)1 << 30))
            tool_die(EXIT_DATA, "%s: text larger than 1 GiB", tool_in_name(path));
        char *nb = realloc(b, 2 * cap + 1);
        if (!nb)
            tool_die(EXIT_DATA, "out of memory");
        b = nb;
        cap *= 2;
    }
    if (f != stdin)
        fclose(f);
    b[n] = 0;
    *len = n;
    return b;
}

static int cmd_record(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"text", required_argument, 0, 'f'},
        {"prompt", required_argument, 0, 1}, {"generate", required_argument, 0, 2},
        {"chat", no_argument, 0, 'c'}, {"special", no_argument, 0, 'S'},
        {"tokens", required_argument, 0, 'T'}, {"layers", required_argument, 0, 'L'},
        {"dtype", required_argument, 0, 't'},
        {"output", required_argument, 0, 'o'}, {"compress", optional_argument, 0, 'z'},
        {"hidden", no_argument, 0, 3},
        TOOL_COMMON_OPTIONS, {0, 0, 0, 0}};
    const char *model = getenv("SKV_MODEL"), *text_path = NULL, *prompt = NULL, *out = NULL;
    int hidden = 0;
    uint64_t max_tokens = 0, gen = 0, layers = 0, threads = 0;
    int chat = 0, special = 0, level = -1, o, dtype = SKV_F16;
    while ((o = tool_getopt(argc, argv, "m:f:cST:L:t:o:z::" TOOL_COMMON_SHORT, opts)) != -1) {
        switch (o) {
        case 'm': model = optarg; break;
        case 'f': text_path = optarg; break;
        case 1: prompt = optarg; break;
        case 2: gen = need_u64("--generate", optarg, 1, SKV_MAX_TOKENS); break;
        case 'c': chat = 1; break;
        case 'S': special = 1; break;
        case 'T': max_tokens = need_u64("--tokens", optarg, 1, SKV_MAX_TOKENS); break;
        case 'L': layers = need_u64("--layers", optarg, 1, SKV_MAX_LAYERS); break;
        case 't':
            if ((dtype = skv_dtype_parse(optarg)) < 0)
                tool_usage_error("--dtype must be f32, f16 or bf16, not '%s'", optarg);
            break;
        case 'o': out = optarg; break;
        case 'z': level = parse_level(optarg); break;
        case 3: hidden = 1; break;
        case 'h':
            printf(
"Usage: skv-trace record --model M.gguf (--text FILE | --prompt TEXT) [options]\n"
"Run a GGUF Llama-family model over a text and record the real queries, keys\n"
"(post-RoPE, as cached) and values of every layer and head, with token ids.\n"
"  -m, --model FILE      GGUF model (default: $SKV_MODEL); see skv-trace(1)\n"
"  -f, --text FILE       text to run ('-' = standard input)\n"
"      --prompt TEXT     text given on the command line instead\n"
"      --generate N      then generate N tokens greedily and record them too\n"
"                        (the trace's prefill is the input, the rest decode steps)\n"
"  -c, --chat            wrap --prompt as a user turn in the model's chat template\n"
"  -S, --special         recognise special tokens such as <|im_start|> in the text\n"
"  -T, --tokens N        use at most the first N input tokens (K suffix ok)\n"
"  -L, --layers N        record only the first N layers (default: all)\n"
"  -@, --threads N       worker threads (default: online CPUs, at most 8)\n"
"  -t, --dtype TYPE      f16 (default), f32 or bf16\n"
"  -o, --output FILE     write to FILE (default stdout)\n"
"  -z, --compress[=L]    zlib-compress chunks at level L (6)\n"
"      --hidden          also record each layer's input hidden states (hidn chunks)\n"
TOOL_COMMON_HELP);
            return 0;
        default: tool_usage_error("unhandled option"); /* a table entry without a case */
        }
    }
    if (optind < argc)
        tool_usage_error("record takes no file arguments (use --text FILE)");
    if (!model || !*model)
        tool_usage_error("--model FILE is required (or set SKV_MODEL)");
    if (!text_path == !prompt)
        tool_usage_error("give exactly one of --text FILE and --prompt TEXT");
    if (chat && !prompt)
        tool_usage_error("--chat applies to --prompt");
    threads = tool_threads ? tool_thread_count(SKV_MODEL_MAX_THREADS) : tool_thread_count(8);
    skv_model *m = skv_model_load(model, (int)threads);
    if (!m)
        tool_fail(model);
    uint32_t model_layers = skv_model_get_params(m)->n_layers;
    if (layers > model_layers) {
        skv_model_free(m);
        tool_die(EXIT_DATA, "%s: --layers %llu: the model has %u layers", model,
                 (unsigned long long)layers, model_layers);
    }
    const skv_tokenizer *tk = skv_model_tokenizer(m);
    if (!tk)
        tool_die(EXIT_DATA, "%s: %s", model, skv_model_tokenizer_error(m));
    size_t len = 0;
    char *text = NULL;
    if (text_path) {
        text = slurp_text(text_path, &len);
    } else if (chat) {
        skv_chat_msg msg = {"user", prompt};
        if (skv_chat_format(tk, &msg, 1, 1, &text) < 0)
            tool_fail(model);
        len = strlen(text);
        special = 1;
    } else {
        text = strdup(prompt);
        len = strlen(prompt);
    }
    unsigned flags = special ? SKV_TOK_SPECIAL : 0;
    int add_bos = 0;
    if (skv_gguf_find(skv_model_gguf(m), "tokenizer.ggml.add_bos_token"))
        skv_gguf_get_bool(skv_model_gguf(m), "tokenizer.ggml.add_bos_token", &add_bos);
    if (add_bos && skv_tokenizer_bos(tk) >= 0)
        flags |= SKV_TOK_BOS;
    int32_t *ids;
    size_t n;
    if (!text || skv_tokenize(tk, text, len, flags, &ids, &n) < 0)
        tool_fail(text_path ? tool_in_name(text_path) : "--prompt");
    free(text);
    if (max_tokens && n > max_tokens)
        n = (size_t)max_tokens;
    if (n == 0)
        tool_die(EXIT_DATA, "%s: the text has no tokens", text_path ? tool_in_name(text_path) : "--prompt");
    uint64_t n_prefill = 0;
    if (gen) {
        int32_t *all;
        uint32_t n_all;
        if (n + gen > SKV_MAX_TOKENS)
            tool_usage_error("--generate: %llu tokens in all exceed the limit",
                             (unsigned long long)n + gen);
        tool_note(2, "generating up to %llu tokens after %zu ...", (unsigned long long)gen, n);
        if (skv_generate_greedy(m, ids, (uint32_t)n, (uint32_t)gen, 1, &all, &n_all) < 0)
            tool_fail(model);
        free(ids);
        ids = all;
        n_prefill = n;
        n = n_all;
    }
    skv_stream *s = open_out(out, level);
    /* units: blocks of tokens through one layer */
    tool_progress *pr = tool_progress_start("skv-trace record", 0, "blocks");
    skv_record_opts ro = {(uint32_t)dtype, (uint32_t)layers, n_prefill, 0, tool_progress_cb, pr,
                          hidden};
    int rrc = skv_model_record(m, ids, n, s, &ro);
    tool_progress_end(pr);
    if (rrc < 0)
        fail_out(s, out);
    finish_out(s, out);
    tool_note(2, "recorded %zu tokens (%llu prefill)", n,
              (unsigned long long)(n_prefill ? n_prefill : n));
    free(ids);
    skv_model_free(m);
    return 0;
}

/* ---- heads ---- */

/* RazorAttention's head scores with the real model (skv_induction_scores),
 * written as text for skv-alloc/skv-eval --heads (the file is the cache:
 * compute once per model). */
static int cmd_heads(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'}, {"tokens", required_argument, 0, 'n'},
        {"seed", required_argument, 0, 's'}, {"output", required_argument, 0, 'o'},
        TOOL_COMMON_OPTIONS, {0, 0, 0, 0}};
    const char *model = getenv("SKV_MODEL"), *out = NULL;
    uint64_t n = 256, seed = 1;
    int o;
    while ((o = tool_getopt(argc, argv, "m:n:s:o:" TOOL_COMMON_SHORT, opts)) != -1) {
        switch (o) {
        case 'm': model = optarg; break;
        case 'n': n = need_u64("--tokens", optarg, 2, 1u << 20); break;
        case 's': seed = need_u64("--seed", optarg, 0, UINT64_MAX); break;
        case 'o': out = optarg; break;
        case 'h':
            printf(
"Usage: skv-trace heads --model M.gguf [-n N] [--seed S] [-o FILE]\n"
"Score every (layer, query head) as RazorAttention does: run N distinct random\n"
"tokens twice and average, over the second copy, the attention to the token\n"
"after the earlier occurrence (induction) and to the earlier occurrence (echo).\n"
"Writes the scores as text for skv-alloc/skv-eval -p razor --heads FILE.\n"
"  -m, --model FILE      GGUF model (default: $SKV_MODEL)\n"
"  -n, --tokens N        random tokens per copy (default 256)\n"
"  -s, --seed S          seed of the random tokens (default 1)\n"
"  -@, --threads N       worker threads (default: online CPUs, at most 8)\n"
"  -o, --output FILE     write to FILE (default stdout)\n"
TOOL_COMMON_HELP);
            return 0;
        default: tool_usage_error("unhandled option");
        }
    }
    if (optind < argc)
        tool_usage_error("heads takes no file arguments");
    if (!model || !*model)
        tool_usage_error("--model FILE is required (or set SKV_MODEL)");
    uint64_t threads = tool_threads ? tool_thread_count(SKV_MODEL_MAX_THREADS) : tool_thread_count(8);
    skv_model *m = skv_model_load(model, (int)threads);
    if (!m)
        tool_fail(model);
    const skv_model_params *p = skv_model_get_params(m);
    skv_head_scores hs = {p->n_layers, p->n_heads,
                          calloc((size_t)p->n_layers * p->n_heads, sizeof(float)),
                          calloc((size_t)p->n_layers * p->n_heads, sizeof(float))};
    if (!hs.induction || !hs.echo)
        tool_die(EXIT_DATA, "out of memory");
    if (skv_induction_scores(m, (uint32_t)n, seed, hs.induction, hs.echo) < 0) {
        skv_head_scores_free(&hs);
        skv_model_free(m);
        tool_fail(model);
    }
    FILE *f = out && strcmp(out, "-") != 0 ? fopen(out, "w") : stdout;
    if (!f) {
        skv_head_scores_free(&hs);
        skv_model_free(m);
        tool_die(EXIT_DATA, "%s: cannot open: %s", out, strerror(errno));
    }
    fprintf(f, "# RazorAttention head scores (skv-trace heads): model %s, %llu random tokens "
            "twice, seed %llu\n# layer head induction echo\n", p->name, (unsigned long long)n,
            (unsigned long long)seed);
    int wrc = skv_head_scores_write(f, &hs);
    if (f == stdout) {
        if (fflush(f) != 0)
            wrc = -1;
    } else if (fclose(f) != 0) {
        wrc = -1;
    }
    skv_head_scores_free(&hs);
    skv_model_free(m);
    if (wrc < 0) {
        if (out && strcmp(out, "-") != 0)
            remove(out);
        tool_die(EXIT_DATA, "%s: write error", out ? out : "(stdout)");
    }
    return 0;
}

/* ---- dispatch ---- */

static const struct {
    const char *name;
    int (*fn)(int, char **);
} commands[] = {
    {"synth", cmd_synth}, {"import", cmd_import}, {"export", cmd_export},
    {"info", cmd_info},   {"cat", cmd_cat},       {"record", cmd_record},
    {"heads", cmd_heads},
};

int main(int argc, char **argv)
{
    tool_init("skv-trace");
    if (argc < 2) {
        usage(stderr);
        return EXIT_USAGE;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "-V"))
        tool_version();
    if (argv[1][0] == '-')
        tool_usage_error("options follow the command: skv-trace COMMAND [options]");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (!strcmp(argv[1], commands[i].name)) {
            char name[64];
            snprintf(name, sizeof name, "skv-trace %s", commands[i].name);
            tool_name = strdup(name);
            return commands[i].fn(argc - 1, argv + 1);
        }
    }
    tool_usage_error("unknown command '%s'", argv[1]);
}
