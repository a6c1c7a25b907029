/* test_attend.c -- online softmax merge, steps lists, ATHD codec, and the
 * attention kernels (scalar and AVX2, dense and packed) against the float64
 * oracle. */
#include "smartkv.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char tmpdir[256];

static void make_tmpdir(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/skv-test-attend-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void rm_tmpdir(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    ck_assert_int_eq(system(cmd), 0);
}

static const char *path_in(const char *name)
{
    static char p[512];
    snprintf(p, sizeof p, "%s/%s", tmpdir, name);
    return p;
}

static uint64_t rng = 88172645463325252ull;
static double urand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) / 9007199254740992.0;
}

/* The int8 kernels' bounds.  On 8-bit rows (the query and each tile's
 * softmax weights in two int8 levels) the relative L2 error of each output
 * vector against the dequantized cache's exact attention is about 1e-3.
 * On 2-4 bit rows the weights and, against keys per token, the query are
 * one int8 level each: their rounding moves the output by more (attention
 * is peaked), so the bound there is relative to the error the cache's
 * rounding itself makes, in RMS over all outputs: 0.7-6% of it on these
 * caches, which adds at most 0.2% to the total error in quadrature. */
#define I8_TOL 2e-3
#define I8_QFRAC 0.15
#define I8_PTOL 2e-3
#define I8_LOW_PTOL 0.05
#define I8_SIMD_TOL 1e-3
static double i8_worst, i8_qfrac_worst, i8_low_pworst, i8_simd_worst;

/* Largest per-vector relative L2 difference of n vectors of d floats. */
static double max_rel(const float *a, const float *b, size_t n, uint32_t d)
{
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        double e = 0, r = 0;
        for (uint32_t j = 0; j < d; j++) {
            double x = (double)a[i * d + j] - b[i * d + j];
            e += x * x;
            r += (double)b[i * d + j] * b[i * d + j];
        }
        double rel = r > 0 ? sqrt(e / r) : sqrt(e);
        if (rel > worst || isnan(rel))
            worst = isnan(rel) ? INFINITY : rel;
    }
    return worst;
}

/* sqrt(sum (o - ref)^2 / sum (ref - orig)^2) over n floats: how far o
 * moves from ref, in units of how far ref lies from orig; 0 where o == ref,
 * infinity where only ref == orig. */
static double rms_ratio(const float *o, const float *ref, const float *orig, size_t n)
{
    double a = 0, b = 0;
    for (size_t i = 0; i < n; i++) {
        a += ((double)o[i] - ref[i]) * ((double)o[i] - ref[i]);
        b += ((double)ref[i] - orig[i]) * ((double)ref[i] - orig[i]);
    }
    return b > 0 ? sqrt(a / b) : a > 0 || isnan(a) ? INFINITY : 0;
}

/* ---- softmax ---- */

START_TEST(test_softmax_merge)
{
    enum { N = 200, D = 5 };
    float s[N], v[N][D];
    for (int i = 0; i < N; i++) {
        s[i] = (float)(urand() * 40 - 20);
        for (int j = 0; j < D; j++)
            v[i][j] = (float)(urand() * 2 - 1);
    }
    /* direct, in double */
    double m = -INFINITY, l = 0, o[D] = {0};
    for (int i = 0; i < N; i++)
        m = s[i] > m ? s[i] : m;
    for (int i = 0; i < N; i++) {
        double p = exp(s[i] - m);
        l += p;
        for (int j = 0; j < D; j++)
            o[j] += p * v[i][j];
    }
    /* several random partitions, pushed one key at a time, merged in order,
     * with empty partials in between */
    for (int trial = 0; trial < 20; trial++) {
        skv_sm_state all, part;
        float acc_all[D], acc[D], out[D];
        skv_sm_init(&all, acc_all, D);
        int i = 0;
        while (i < N) {
            int n = (int)(urand() * 30);
            skv_sm_init(&part, acc, D);
            for (int k = 0; k < n && i < N; k++, i++)
                skv_sm_push(&part, acc, s[i], v[i], D);
            skv_sm_merge(&all, acc_all, &part, acc, D);
        }
        skv_sm_finish(&all, acc_all, out, D);
        for (int j = 0; j < D; j++)
            ck_assert_double_le(fabs(out[j] - o[j] / l), 1e-5 * (fabs(o[j] / l) + 1e-3));
        ck_assert_double_le(fabs(skv_sm_prob(&all, s[7]) - exp(s[7] - m) / l), 1e-6);
    }
    /* empty states: finish gives zeros, merging an empty one is a no-op */
    skv_sm_state e1, e2;
    float a1[D], a2[D], out[D];
    skv_sm_init(&e1, a1, D);
    skv_sm_init(&e2, a2, D);
    skv_sm_merge(&e1, a1, &e2, a2, D);
    skv_sm_finish(&e1, a1, out, D);
    for (int j = 0; j < D; j++)
        ck_assert(out[j] == 0.0f);
    ck_assert(skv_sm_prob(&e1, 0.0f) == 0.0f);
}
END_TEST

/* ---- steps ---- */

START_TEST(test_steps_parse)
{
    uint64_t *st, n;
    ck_assert_int_eq(skv_steps_parse(NULL, 10, &st, &n), 0);
    ck_assert(n == 1 && st[0] == 9);
    free(st);
    ck_assert_int_eq(skv_steps_parse("all", 4, &st, &n), 0);
    ck_assert(n == 4 && st[0] == 0 && st[3] == 3);
    free(st);
    ck_assert_int_eq(skv_steps_parse("2:5,7,LAST,3", 10, &st, &n), 0);
    ck_assert_uint_eq(n, 5);
    uint64_t want[] = {2, 3, 4, 7, 9};
    for (int i = 0; i < 5; i++)
        ck_assert_uint_eq(st[i], want[i]);
    free(st);
    ck_assert_int_eq(skv_steps_parse("8:", 10, &st, &n), 0);
    ck_assert(n == 2 && st[0] == 8 && st[1] == 9);
    free(st);
    ck_assert_int_eq(skv_steps_parse(":2", 10, &st, &n), 0);
    ck_assert(n == 2 && st[1] == 1);
    free(st);
    const char *bad[] = {"", "x", "5:3", "3:3", "10", "0:11", "1,,2", "1:2:3", "-1", "LASTx", ","};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        ck_assert_msg(skv_steps_parse(bad[i], 10, &st, &n) == SKV_EINVAL, "accepted '%s'", bad[i]);
        ck_assert_ptr_null(st);
        ck_assert_msg(skv_steps_parse(bad[i], 10, NULL, &n) == SKV_EINVAL,
                      "syntax check accepted '%s'", bad[i]);
    }
    /* the syntax check allocates nothing, even for 16M steps under a 1 MiB cap */
    skv_set_max_mem(1 << 20);
    ck_assert_int_eq(skv_steps_parse("8:,3", SKV_MAX_TOKENS, NULL, &n), 0);
    ck_assert_int_lt(skv_steps_parse("8:", SKV_MAX_TOKENS, &st, &n), 0); /* a full parse cannot */
    skv_set_max_mem(0);
}
END_TEST

/* ---- ATHD and the output stream ---- */

static skv_attn *make_attn(uint32_t L, uint32_t H, uint32_t d, uint64_t T, int probs)
{
    skv_attn *a = calloc(1, sizeof *a);
    a->h.mode = SKV_ATT_PACKED;
    a->h.flags = probs ? SKV_ATHD_PROBS : 0;
    a->h.n_layers = L;
    a->h.n_heads = H;
    a->h.n_kv_heads = 1;
    a->h.head_dim = d;
    a->h.n_tokens = T;
    ck_assert_int_eq(skv_steps_parse("1,3:5", T, &a->h.steps, &a->h.n_steps), 0);
    a->h.kv_bytes = 1234;
    a->h.fp16_bytes = 5678;
    snprintf(a->h.source, sizeof a->h.source, "unit test");
    snprintf(a->h.label, sizeof a->h.label, "policy=smartkv beta=0.25");
    size_t no = (size_t)L * H * a->h.n_steps * d, np = (size_t)L * H * a->h.n_steps * T;
    a->out = malloc(no * sizeof(float));
    for (size_t i = 0; i < no; i++)
        a->out[i] = (float)urand();
    if (probs) {
        a->prob = malloc(np * sizeof(float));
        for (size_t i = 0; i < np; i++)
            a->prob[i] = (float)urand();
    }
    return a;
}

START_TEST(test_athd_roundtrip)
{
    make_tmpdir();
    for (int probs = 0; probs < 2; probs++) {
        skv_attn *a = make_attn(2, 3, 8, 6, probs), *b;
        skv_stream *s = skv_open_write(path_in("a.skv"), -1);
        ck_assert_ptr_nonnull(s);
        ck_assert_int_eq(skv_attn_write(s, a), 0);
        ck_assert_int_eq(skv_close(s), 0);
        ck_assert_int_eq(skv_attn_load(path_in("a.skv"), &b), 0);
        ck_assert_uint_eq(b->h.n_steps, 3);
        ck_assert_uint_eq(b->h.steps[2], 4);
        ck_assert_str_eq(b->h.label, a->h.label);
        ck_assert_str_eq(b->h.source, a->h.source);
        ck_assert_uint_eq(b->h.kv_bytes, 1234);
        ck_assert_uint_eq(b->h.fp16_bytes, 5678);
        ck_assert_int_eq(memcmp(a->out, b->out, 2 * 3 * 3 * 8 * sizeof(float)), 0);
        if (probs)
            ck_assert_int_eq(memcmp(a->prob, b->prob, 2 * 3 * 3 * 6 * sizeof(float)), 0);
        else
            ck_assert_ptr_null(b->prob);
        skv_attn_free(b);
        /* a stream missing its last layer is rejected */
        s = skv_open_write(path_in("b.skv"), -1);
        ck_assert_int_eq(skv_athd_write(s, &a->h), 0);
        ck_assert_int_eq(skv_attn_write_layer(s, &a->h, 0, a->out, a->prob), 0);
        ck_assert_int_eq(skv_close(s), 0);
        ck_assert_int_lt(skv_attn_load(path_in("b.skv"), &b), 0);
        ck_assert_ptr_nonnull(strstr(skv_errmsg(), "end at layer 1 of 2"));
        /* layers out of order are rejected */
        s = skv_open_write(path_in("c.skv"), -1);
        ck_assert_int_eq(skv_athd_write(s, &a->h), 0);
        ck_assert_int_eq(skv_attn_write_layer(s, &a->h, 1, a->out, a->prob), 0);
        ck_assert_int_eq(skv_close(s), 0);
        ck_assert_int_lt(skv_attn_load(path_in("c.skv"), &b), 0);
        ck_assert_ptr_nonnull(strstr(skv_errmsg(), "out of order"));
        skv_attn_free(a);
    }
    /* header field validation */
    uint8_t p[SKV_ATHD_FIXED_LEN + 16] = {0};
    skv_put32(p, SKV_ATT_REFERENCE);
    skv_put32(p + 8, 1);
    skv_put32(p + 12, 2);
    skv_put32(p + 16, 1);
    skv_put32(p + 20, 4);
    skv_put64(p + 24, 5);
    skv_put64(p + 32, 2);
    skv_put64(p + SKV_ATHD_FIXED_LEN, 1);
    skv_put64(p + SKV_ATHD_FIXED_LEN + 8, 3);
    skv_chunk c = {.type = "ATHD", .data = p, .raw_size = sizeof p, .size = sizeof p};
    skv_athd h;
    ck_assert_int_eq(skv_athd_decode(&c, &h), 0);
    skv_athd_free(&h);
    skv_put64(p + SKV_ATHD_FIXED_LEN + 8, 1);   /* not ascending */
    ck_assert_int_eq(skv_athd_decode(&c, &h), SKV_EFORMAT);
    skv_put64(p + SKV_ATHD_FIXED_LEN + 8, 5);   /* beyond the tokens */
    ck_assert_int_eq(skv_athd_decode(&c, &h), SKV_EFORMAT);
    skv_put64(p + SKV_ATHD_FIXED_LEN + 8, 3);
    skv_put64(p + 32, 3);                       /* more steps than the payload holds */
    ck_assert_int_eq(skv_athd_decode(&c, &h), SKV_EFORMAT);
    skv_put64(p + 32, 2);
    skv_put32(p + 4, 0x80);                     /* unknown flag */
    ck_assert_int_eq(skv_athd_decode(&c, &h), SKV_EFORMAT);
    skv_put32(p + 4, 0);
    skv_put32(p + 12, 3);                       /* kv heads do not divide heads */
    skv_put32(p + 16, 2);
    ck_assert_int_eq(skv_athd_decode(&c, &h), SKV_EFORMAT);
    skv_put32(p + 12, 2);
    skv_put32(p + 16, 1);
    skv_put32(p, 9);                            /* unknown mode */
    ck_assert_int_eq(skv_athd_decode(&c, &h), SKV_EFORMAT);
    c.raw_size = 10;
    ck_assert_int_eq(skv_athd_decode(&c, &h), SKV_EFORMAT);
    rm_tmpdir();
}
END_TEST

/* ---- dense kernels against the oracle ---- */

static float *randv(size_t n, float scale)
{
    float *x = malloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++)
        x[i] = (float)((urand() * 2 - 1) * scale);
    return x;
}

static void dense_case(uint32_t H, uint32_t Hkv, uint32_t d, uint64_t T, uint32_t split)
{
    size_t nq = (size_t)H * T * d, nkv = (size_t)Hkv * T * d;
    float *q = randv(nq, 2.0f), *k = randv(nkv, 2.0f), *v = randv(nkv, 1.0f);
    for (size_t i = 0; i < (size_t)T * d; i++)  /* a few large scores */
        if (urand() < 0.01)
            k[i] *= 8;
    uint16_t *k16 = malloc(nkv * 2), *v16 = malloc(nkv * 2);
    float *k16f = malloc(nkv * 4), *v16f = malloc(nkv * 4);
    skv_convert_from_f32(SKV_F16, k, k16, nkv);
    skv_convert_from_f32(SKV_F16, v, v16, nkv);
    skv_convert_to_f32(SKV_F16, k16, k16f, nkv);
    skv_convert_to_f32(SKV_F16, v16, v16f, nkv);
    uint64_t *steps, S;
    ck_assert_int_eq(skv_steps_parse("all", T, &steps, &S), 0);
    size_t no = (size_t)H * S * d, np = (size_t)H * S * T;
    float *ref = malloc(no * 4), *ref16 = malloc(no * 4), *o = malloc(no * 4), *o1 = malloc(no * 4);
    float *pref = malloc(np * 4), *p = malloc(np * 4);
    skv_attend_opts opt1 = {1, SKV_KERNEL_SCALAR, split};
    skv_attend_ctx *c1 = skv_attend_new(&opt1);
    ck_assert_ptr_nonnull(c1);
    skv_kv_view L = {SKV_KV_F32, H, Hkv, d, T, q, k, v, NULL};
    ck_assert_int_eq(skv_attend_layer_ref(c1, &L, steps, S, ref, pref), 0);
    skv_kv_view L16f = {SKV_KV_F32, H, Hkv, d, T, q, k16f, v16f, NULL};
    ck_assert_int_eq(skv_attend_layer_ref(c1, &L16f, steps, S, ref16, NULL), 0);
    skv_attend_free(c1);
    for (int kern = SKV_KERNEL_SCALAR; kern <= SKV_KERNEL_AVX2; kern++) {
        if (!skv_att_kernel_available(kern))
            continue;  /* the scalar kernel always runs; AVX2 only where the CPU has it */
        for (int threads = 1; threads <= 3; threads += 2) {
            skv_attend_opts opt = {threads, kern, split};
            skv_attend_ctx *c = skv_attend_new(&opt);
            ck_assert_ptr_nonnull(c);
            ck_assert_int_eq(skv_attend_layer(c, &L, steps, S, o, p), 0);
            double e = max_rel(o, ref, (size_t)H * S, d);
            ck_assert_msg(e <= 1e-5, "f32 %s H=%u/%u d=%u T=%llu: rel error %g",
                          skv_att_kernel_name(kern), H, Hkv, d, (unsigned long long)T, e);
            double pe = 0;
            for (size_t i = 0; i < np; i++)
                pe = fmax(pe, fabs(p[i] - pref[i]));
            ck_assert_msg(pe <= 1e-5, "probabilities differ by %g", pe);
            if (threads == 1)
                memcpy(o1, o, no * 4);
            else  /* the split does not depend on the thread count */
                ck_assert_int_eq(memcmp(o, o1, no * 4), 0);
            skv_kv_view L16 = {SKV_KV_F16, H, Hkv, d, T, q, k16, v16, NULL};
            ck_assert_int_eq(skv_attend_layer(c, &L16, steps, S, o, NULL), 0);
            e = max_rel(o, ref16, (size_t)H * S, d);
            ck_assert_msg(e <= 1e-5, "f16 %s: rel error %g", skv_att_kernel_name(kern), e);
            skv_attend_free(c);
        }
    }
    /* probabilities: rows sum to 1, zero beyond the step */
    for (uint32_t h = 0; h < H; h++)
        for (uint64_t s = 0; s < S; s++) {
            const float *pr = p + ((size_t)h * S + s) * T;
            double sum = 0;
            for (uint64_t u = 0; u < T; u++) {
                if (u > steps[s])
                    ck_assert(pr[u] == 0.0f);
                sum += pr[u];
            }
            ck_assert_double_le(fabs(sum - 1), 1e-5);
        }
    free(q); free(k); free(v); free(k16); free(v16); free(k16f); free(v16f);
    free(steps); free(ref); free(ref16); free(o); free(o1); free(pref); free(p);
}

START_TEST(test_dense_vs_reference)
{
    dense_case(1, 1, 64, 1, 0);      /* single token */
    dense_case(3, 1, 64, 37, 5);     /* GQA 3:1, odd length, many partials */
    dense_case(9, 3, 64, 100, 16);   /* GQA 3:1, three groups */
    dense_case(4, 4, 32, 70, 0);     /* MHA */
    dense_case(12, 1, 16, 45, 7);    /* 12 heads per group: two kernel passes */
    dense_case(2, 1, 12, 33, 4);     /* head_dim not a multiple of 8: scalar path */
}
END_TEST

/* ---- packed caches ---- */

typedef struct pk_case {
    uint32_t H, Hkv, d;
    uint64_t T;
    uint32_t kg, vg, kmode, vmode;
    int width;          /* 2..16, or 0: mixed with evictions */
    uint32_t kt;        /* kmode SKV_QMODE_CHAN: tokens per key group */
} pk_case;

static skv_trace *make_trace(const pk_case *pc, uint32_t layers)
{
    skv_synth_cfg c;
    skv_synth_defaults(&c);
    c.n_layers = layers;
    c.n_heads = pc->H;
    c.n_kv_heads = pc->Hkv;
    c.head_dim = pc->d;
    c.n_tokens = pc->T < 2 ? 2 : pc->T;  /* the generator needs 2; cut below */
    c.n_prefill = c.n_tokens;
    c.needles = 0;
    c.needle_queries = 0;
    c.sinks = pc->T > 4 ? 1 : 0;
    c.dtype = SKV_F16;
    skv_stream *s = skv_open_write(path_in("t.skv"), -1);
    ck_assert_ptr_nonnull(s);
    ck_assert_msg(skv_synth_write(&c, s) == 0, "%s", skv_errmsg());
    ck_assert_int_eq(skv_close(s), 0);
    skv_trace *t;
    ck_assert_int_eq(skv_trace_load(path_in("t.skv"), &t), 0);
    if (pc->T < t->hdr.n_tokens) {  /* keep the first T tokens */
        skv_trace_hdr h = t->hdr;
        h.n_tokens = h.n_prefill = pc->T;
        skv_trace *u = skv_trace_new(&h);
        ck_assert_ptr_nonnull(u);
        for (uint32_t l = 0; l < h.n_layers; l++) {
            for (uint32_t hd = 0; hd < h.n_heads; hd++)
                memcpy(u->q[l] + (size_t)hd * pc->T * h.head_dim,
                       t->q[l] + (size_t)hd * t->hdr.n_tokens * h.head_dim, pc->T * h.head_dim * 4);
            for (uint32_t hd = 0; hd < h.n_kv_heads; hd++) {
                memcpy(u->k[l] + (size_t)hd * pc->T * h.head_dim,
                       t->k[l] + (size_t)hd * t->hdr.n_tokens * h.head_dim, pc->T * h.head_dim * 4);
                memcpy(u->v[l] + (size_t)hd * pc->T * h.head_dim,
                       t->v[l] + (size_t)hd * t->hdr.n_tokens * h.head_dim, pc->T * h.head_dim * 4);
            }
        }
        skv_trace_free(t);
        ck_assert_int_eq(skv_trace_save(u, path_in("t.skv"), -1), 0);
        t = u;
    }
    return t;
}

static skv_cache *make_cache(const skv_trace *t, const pk_case *pc)
{
    skv_qcfg q = {.head_dim = pc->d, .k_group = pc->kg, .v_group = pc->vg, .k_mode = pc->kmode, .v_mode = pc->vmode, .k_tokens = pc->kt};
    skv_cache_plan plan;
    memset(&plan, 0, sizeof plan);
    ck_assert_int_eq(skv_cache_plan_uniform(&plan, &t->hdr, &q, pc->width ? pc->width : 16), 0);
    size_t n = (size_t)t->hdr.n_layers * t->hdr.n_kv_heads * t->hdr.n_tokens;
    if (!pc->width) {
        static const uint8_t w[] = {0, 2, 3, 4, 8, 16};
        for (size_t i = 0; i < n; i++)
            plan.bits[i] = w[(size_t)(urand() * 6) % 6];
        if (t->hdr.n_tokens > 1)
            plan.bits[t->hdr.n_tokens - 1] = 0;  /* layer 0, kv head 0: the last token evicted */
    }
    skv_stream *s = skv_open_write(path_in("c.skv"), -1);
    ck_assert_ptr_nonnull(s);
    ck_assert_msg(skv_cache_write(s, t, &plan, NULL, 0, NULL) == 0, "%s", skv_errmsg());
    ck_assert_int_eq(skv_close(s), 0);
    skv_cache_plan_free(&plan);
    skv_cache *c;
    ck_assert_msg(skv_cache_load(path_in("c.skv"), &c) == 0, "%s", skv_errmsg());
    return c;
}

static void packed_case(const pk_case *pc)
{
    skv_trace *t = make_trace(pc, 1);
    skv_cache *c = make_cache(t, pc);
    uint32_t H = pc->H, Hkv = pc->Hkv, d = pc->d;
    uint64_t T = pc->T, *steps, S;
    ck_assert_int_eq(skv_steps_parse("all", T, &steps, &S), 0);
    size_t nkv = (size_t)Hkv * T * d, no = (size_t)H * S * d, np = (size_t)H * S * T;
    float *k = malloc(nkv * 4), *v = malloc(nkv * 4);
    for (uint32_t h = 0; h < Hkv; h++)
        skv_cache_dequantize_head(c, 0, h, k + (size_t)h * T * d, v + (size_t)h * T * d);
    /* the oracle over the dequantized rows of the stored tokens only: a
     * trace holding just those tokens, attended by the reference engine;
     * orig: the same over the trace's rows before rounding */
    float *ref = malloc(no * 4), *o = malloc(no * 4), *pref = calloc(np, 4), *p = malloc(np * 4);
    float *orig = malloc(no * 4);
    skv_attend_opts o1 = {1, SKV_KERNEL_SCALAR, 0};
    skv_attend_ctx *c1 = skv_attend_new(&o1);
    for (uint32_t h = 0; h < Hkv; h++) {
        uint8_t *bits = malloc(T);
        skv_cache_head_widths(skv_cache_head_at(c, 0, h), T, bits);
        for (uint64_t si = 0; si < S; si++) {
            uint64_t tt = steps[si], n = 0;
            for (uint64_t u = 0; u <= tt; u++)
                n += bits[u] != 0;
            float *qq = malloc((size_t)(H / Hkv) * (n + 1) * d * 4);
            float *kk = malloc((n + 1) * d * 4), *vv = malloc((n + 1) * d * 4);
            float *ko = malloc((n + 1) * d * 4), *vo = malloc((n + 1) * d * 4);
            uint64_t *map = malloc((n + 1) * 8);
            uint64_t r = 0;
            for (uint64_t u = 0; u <= tt; u++)
                if (bits[u]) {
                    memcpy(kk + r * d, k + ((size_t)h * T + u) * d, d * 4);
                    memcpy(vv + r * d, v + ((size_t)h * T + u) * d, d * 4);
                    memcpy(ko + r * d, t->k[0] + ((size_t)h * T + u) * d, d * 4);
                    memcpy(vo + r * d, t->v[0] + ((size_t)h * T + u) * d, d * 4);
                    map[r++] = u;
                }
            if (n == 0) {  /* nothing stored: the output is zero */
                for (uint32_t g = 0; g < H / Hkv; g++) {
                    memset(ref + ((size_t)(h * (H / Hkv) + g) * S + si) * d, 0, d * 4);
                    memset(orig + ((size_t)(h * (H / Hkv) + g) * S + si) * d, 0, d * 4);
                }
            } else {
                for (uint32_t g = 0; g < H / Hkv; g++)
                    for (uint64_t rr = 0; rr < n; rr++)
                        memcpy(qq + ((size_t)g * n + rr) * d,
                               c->q[0] + ((size_t)(h * (H / Hkv) + g) * T + tt) * d, d * 4);
                skv_kv_view Lr = {SKV_KV_F32, H / Hkv, 1, d, n, qq, kk, vv, NULL};
                uint64_t last = n - 1;
                float *orr = malloc((size_t)(H / Hkv) * d * 4), *prr = malloc((size_t)(H / Hkv) * n * 4);
                ck_assert_int_eq(skv_attend_layer_ref(c1, &Lr, &last, 1, orr, prr), 0);
                for (uint32_t g = 0; g < H / Hkv; g++) {
                    uint32_t head = h * (H / Hkv) + g;
                    memcpy(ref + ((size_t)head * S + si) * d, orr + (size_t)g * d, d * 4);
                    for (uint64_t rr = 0; rr < n; rr++)
                        pref[((size_t)head * S + si) * T + map[rr]] = prr[(size_t)g * n + rr];
                }
                skv_kv_view Lo = {SKV_KV_F32, H / Hkv, 1, d, n, qq, ko, vo, NULL};
                ck_assert_int_eq(skv_attend_layer_ref(c1, &Lo, &last, 1, orr, NULL), 0);
                for (uint32_t g = 0; g < H / Hkv; g++)
                    memcpy(orig + ((size_t)(h * (H / Hkv) + g) * S + si) * d, orr + (size_t)g * d,
                           d * 4);
                free(orr);
                free(prr);
            }
            free(qq); free(kk); free(vv); free(ko); free(vo); free(map);
        }
        free(bits);
    }
    skv_attend_free(c1);
    for (int kern = SKV_KERNEL_SCALAR; kern <= SKV_KERNEL_AVX2; kern++) {
        if (!skv_att_kernel_available(kern))
            continue;
        skv_attend_opts opt = {2, kern, 13};
        skv_attend_ctx *ctx = skv_attend_new(&opt);
        skv_kv_view L = {SKV_KV_PACKED, H, Hkv, d, T, c->q[0], NULL, NULL, skv_cache_head_at(c, 0, 0)};
        ck_assert_int_eq(skv_attend_layer(ctx, &L, steps, S, o, p), 0);
        double e = max_rel(o, ref, (size_t)H * S, d);
        ck_assert_msg(e <= 1e-5, "packed %s width %d H=%u/%u d=%u T=%llu groups %u/%u modes %u/%u: "
                      "rel error %g", skv_att_kernel_name(kern), pc->width, H, Hkv, d,
                      (unsigned long long)T, pc->kg, pc->vg, pc->kmode, pc->vmode, e);
        double pe = 0;
        for (size_t i = 0; i < np; i++)
            pe = fmax(pe, fabs(p[i] - pref[i]));
        ck_assert_msg(pe <= 1e-5, "packed probabilities differ by %g", pe);
        /* the masked reference on the dequantized cache (skv-attend
         * --reference on a packed cache) agrees too */
        skv_attend_free(ctx);
    }
    /* the int8 kernels (integer arithmetic on 2-4 and 8 bit rows, float on
     * the rest): within I8_TOL of the oracle, or on a cache with 2-4 bit
     * rows within I8_QFRAC of the cache's own rounding error; the SIMD ones
     * within I8_SIMD_TOL of int8-scalar (same arithmetic; exp and rounding
     * order differ) and bit-identical to each other (only the dot-product
     * instruction and the unpacking differ) */
    int rounded = 0;  /* the cache's rows differ from the trace's */
    for (size_t i = 0; i < no && !rounded; i++)
        rounded = ref[i] != orig[i];
    int low = rounded && (pc->width == 0 || (pc->width >= 2 && pc->width <= 4));
    float *o8s = malloc(no * 4), *o8a = malloc(no * 4);
    /* work items of 13 tokens (the merge of partial states; keys per
     * channel in groups cut off the 8-row grid go a group at a time), of
     * 24 (a run of several key groups whole, starting inside a group), and
     * with a long context items of many int8 tiles */
    static const uint32_t splits[] = {13, 24, 1000};
    for (int sp = 0; sp < (T > 200 ? 3 : 2); sp++) {
        int have_a = 0;
        for (int kern = SKV_KERNEL_I8_SCALAR; kern <= SKV_KERNEL_I8_VNNI; kern++) {
            if (!skv_att_kernel_available(kern)) {
                printf("test_attend: %s skipped (not on this CPU)\n",
                       skv_att_kernel_name(kern));
                continue;
            }
            skv_attend_opts opt = {2, kern, splits[sp]};
            skv_attend_ctx *ctx = skv_attend_new(&opt);
            ck_assert_ptr_nonnull(ctx);
            skv_kv_view L = {SKV_KV_PACKED, H, Hkv, d, T, c->q[0], NULL, NULL,
                             skv_cache_head_at(c, 0, 0)};
            ck_assert_int_eq(skv_attend_layer(ctx, &L, steps, S, o, p), 0);
            double e = max_rel(o, ref, (size_t)H * S, d);
            double qf = rms_ratio(o, ref, orig, no);
            if (low) {
                if (qf > i8_qfrac_worst)
                    i8_qfrac_worst = qf;
            } else if (e > i8_worst) {
                i8_worst = e;
            }
            ck_assert_msg(low ? qf <= I8_QFRAC : e <= I8_TOL,
                          "packed %s width %d H=%u/%u d=%u T=%llu groups %u/%u modes %u/%u "
                          "split %u: rel error %g (bound %g), %g of the cache's rounding error "
                          "(bound %g on 2-4 bit rows)", skv_att_kernel_name(kern), pc->width, H,
                          Hkv, d, (unsigned long long)T, pc->kg, pc->vg, pc->kmode, pc->vmode,
                          opt.split, e, I8_TOL, qf, I8_QFRAC);
            double pe = 0;
            for (size_t i = 0; i < np; i++)
                pe = fmax(pe, fabs(p[i] - pref[i]));
            ck_assert_msg(pe <= (low ? I8_LOW_PTOL : I8_PTOL), "%s: probabilities differ by %g",
                          skv_att_kernel_name(kern), pe);
            if (low)
                i8_low_pworst = fmax(i8_low_pworst, pe);
            if (kern == SKV_KERNEL_I8_SCALAR) {
                memcpy(o8s, o, no * 4);
            } else {
                double es = max_rel(o, o8s, (size_t)H * S, d);
                if (es > i8_simd_worst)
                    i8_simd_worst = es;
                ck_assert_msg(es <= I8_SIMD_TOL, "%s vs int8-scalar: rel difference %g",
                              skv_att_kernel_name(kern), es);
                if (kern == SKV_KERNEL_I8_AVX2) {
                    memcpy(o8a, o, no * 4);
                    have_a = 1;
                } else if (have_a) {
                    ck_assert_msg(memcmp(o, o8a, no * 4) == 0,
                                  "int8-vnni differs from int8-avx2");
                }
            }
            skv_attend_free(ctx);
        }
    }
    free(o8s);
    free(o8a);
    /* every-token-16-bit cache of an fp16 trace: equals the reference on the trace */
    if (pc->width == 16) {
        skv_kv_view Lt = {SKV_KV_F32, H, Hkv, d, T, t->q[0], t->k[0], t->v[0], NULL};
        skv_attend_ctx *ctx = skv_attend_new(NULL);
        ck_assert_int_eq(skv_attend_layer_ref(ctx, &Lt, steps, S, ref, NULL), 0);
        skv_kv_view L = {SKV_KV_PACKED, H, Hkv, d, T, c->q[0], NULL, NULL, skv_cache_head_at(c, 0, 0)};
        ck_assert_int_eq(skv_attend_layer(ctx, &L, steps, S, o, NULL), 0);
        double e = max_rel(o, ref, (size_t)H * S, d);
        ck_assert_msg(e <= 1e-5, "16-bit cache vs trace reference: %g", e);
        skv_attend_free(ctx);
    }
    free(k); free(v); free(ref); free(orig); free(o); free(pref); free(p); free(steps);
    skv_cache_free(c);
    skv_trace_free(t);
}

START_TEST(test_packed_widths)
{
    make_tmpdir();
    static const int widths[] = {2, 3, 4, 8, 16, 0};
    for (size_t i = 0; i < sizeof widths / sizeof *widths; i++) {
        pk_case pc = {9, 3, 64, 61, 64, 64, SKV_QMODE_ASYM, SKV_QMODE_ASYM, widths[i], 0};
        packed_case(&pc);
        pk_case pc2 = {4, 1, 32, 40, 16, 8, SKV_QMODE_SYM, SKV_QMODE_ASYM, widths[i], 0};
        packed_case(&pc2);
    }
    rm_tmpdir();
}
END_TEST

/* The probabilities pass: the SIMD path (the expf of glibc's FMA build,
 * eight lanes at a time) gives skv_sm_prob's floats bit for bit, over every
 * 997th float from 0 down to -110, three states and the special values
 * (-inf -> 0, NaN, |x| >= 88 through the scalar call).  A scratch program
 * compared every float of that range: none differed. */
START_TEST(test_probs_pass)
{
    const uint64_t B = 1u << 16;
    float *a = malloc(B * sizeof(float)), *b = malloc(B * sizeof(float));
    ck_assert(a && b);
    static const float ms[3] = {0.0f, 2.5f, -7.0f}, ls[3] = {1.0f, 3.7f, 1234.5f};
    uint64_t tot = 0;
    for (int k = 0; k < 3; k++) {
        skv_sm_state st = {ms[k], ls[k]};
        for (uint64_t u = 0x80000000u; u <= 0xC2DC0000u;) {
            uint64_t n = 0;
            for (; n < B && u <= 0xC2DC0000u; n++, u += 997) {
                uint32_t w = (uint32_t)u;
                float x;
                memcpy(&x, &w, sizeof x);
                a[n] = x + ms[k];   /* the pass subtracts m back */
            }
            if (n < B) {         /* the specials, and a tail shorter than a vector */
                static const float sp[] = {-INFINITY, NAN, -88.5f, -103.9f, -104.0f, -1e30f, 0.0f,
                                           1e-40f, -1e-40f, 3.0f};
                for (size_t i = 0; i < sizeof sp / sizeof *sp && n < B; i++)
                    a[n++] = sp[i] == -INFINITY ? sp[i] : sp[i] + ms[k];
            }
            memcpy(b, a, n * sizeof(float));
            ck_assert_int_eq(skv_att_probs(SKV_KERNEL_AUTO, a, n, st.m, st.l), 0);
            for (uint64_t i = 0; i < n; i++) {
                float want = skv_sm_prob(&st, b[i]);
                ck_assert_msg(!memcmp(&want, &a[i], sizeof want) || (isnan(want) && isnan(a[i])),
                              "exp(%a - %g) / %g: %a, scalar %a", (double)b[i], (double)st.m,
                              (double)st.l, (double)a[i], (double)want);
            }
            tot += n;
        }
    }
    ck_assert_uint_gt(tot, 3000000u);
    /* l = 0 (nothing attended): zeros */
    a[0] = 1.0f;
    ck_assert_int_eq(skv_att_probs(SKV_KERNEL_AUTO, a, 1, 0.0f, 0.0f), 0);
    ck_assert(a[0] == 0.0f);
    ck_assert_int_eq(skv_att_probs(99, a, 1, 0.0f, 1.0f), SKV_EINVAL);
    free(a);
    free(b);
}
END_TEST

/* Live rows with an fp16 tail give bit for bit what the same rows as float32
 * give (the conversion is exact and the kernels fold in the same order), for
 * every kernel and 1 or 3 queries; a tail with keys and no values is
 * refused. */
START_TEST(test_rows_f16_tail)
{
    const uint32_t d = 64, n = 300, G = 3;
    float *k = malloc(sizeof(float) * n * d), *v = malloc(sizeof(float) * n * d);
    uint16_t *hk = malloc(sizeof(uint16_t) * n * d), *hv = malloc(sizeof(uint16_t) * n * d);
    float q[3 * 64], o1[3 * 64], o2[3 * 64];
    const uint64_t np = n + 5;      /* the tail starts at token 5 */
    float *p1 = malloc(sizeof(float) * G * np), *p2 = malloc(sizeof(float) * G * np);
    ck_assert(k && v && hk && hv && p1 && p2);
    for (uint32_t i = 0; i < n * d; i++) {
        hk[i] = skv_f32_to_f16((float)(urand() * 4 - 2));
        hv[i] = skv_f32_to_f16((float)(urand() * 2 - 1));
        k[i] = skv_f16_to_f32(hk[i]);
        v[i] = skv_f16_to_f32(hv[i]);
    }
    for (uint32_t i = 0; i < G * d; i++)
        q[i] = (float)(urand() * 2 - 1);
    skv_att_rows rf = {d, 0, NULL, k, v, 5, n, NULL, NULL};
    skv_att_rows rh = {d, 0, NULL, NULL, NULL, 5, n, hk, hv};
    for (int kern = SKV_KERNEL_AUTO; kern <= SKV_KERNEL_LAST; kern++)
        for (uint32_t ng = 1; ng <= G; ng += 2) {
            uint64_t limit = 5 + n - 1 - ng; /* the last rows masked */
            ck_assert_int_eq(skv_attend_rows(kern, &rf, q, ng, 0.125f, limit, o1, p1, np, np), 0);
            ck_assert_int_eq(skv_attend_rows(kern, &rh, q, ng, 0.125f, limit, o2, p2, np, np), 0);
            ck_assert_msg(!memcmp(o1, o2, sizeof(float) * ng * d), "kernel %d, %u queries: "
                          "outputs differ", kern, ng);
            ck_assert_msg(!memcmp(p1, p2, sizeof(float) * ng * np), "kernel %d: probabilities "
                          "differ", kern);
            ck_assert(p2[0] == 0 && p2[limit] > 0 && p2[limit + 1] == 0);
        }
    rh.tail_hv = NULL;
    ck_assert_int_eq(skv_attend_rows(SKV_KERNEL_AUTO, &rh, q, 1, 0.125f, 5, o2, NULL, 0, 0),
                     SKV_EINVAL);
    free(k); free(v); free(hk); free(hv); free(p1); free(p2);
}
END_TEST

/* The integer blocks: every int8 SIMD kernel gives exactly int8-scalar's
 * dot products and value sums, for every width and shape (the unpacking
 * permutations and the transposition included). */
START_TEST(test_i8_blocks)
{
    static const uint32_t dims[] = {32, 64, 96, 128};
    static const uint32_t rows_n[] = {1, 5, 33, 64, 70};
    static const uint32_t ngs[] = {1, 3, 16};
    static const int widths[] = {2, 3, 4, 8};
    for (size_t wi = 0; wi < 4; wi++)
        for (size_t di = 0; di < 4; di++)
            for (size_t ni = 0; ni < 5; ni++)
                for (size_t gi = 0; gi < 3; gi++) {
                    int bits = widths[wi];
                    uint32_t d = dims[di], n = rows_n[ni], ng = ngs[gi];
                    size_t rs = (size_t)d / 8 * (size_t)bits + (ni & 1) * 3; /* odd strides too */
                    uint8_t *rows = malloc(rs * n);
                    int8_t *q = malloc((size_t)ng * d);
                    int8_t *w = malloc((size_t)ng * n);
                    for (size_t i = 0; i < rs * n; i++)
                        rows[i] = (uint8_t)(urand() * 256);
                    for (size_t i = 0; i < (size_t)ng * d; i++)
                        q[i] = (int8_t)(urand() * 255 - 127);
                    for (size_t i = 0; i < (size_t)ng * n; i++)
                        w[i] = (int8_t)(urand() * 255 - 127);
                    int32_t *dref = malloc((size_t)ng * n * 4), *dots = malloc((size_t)ng * n * 4);
                    int32_t *aref = calloc((size_t)ng * d, 4), *acc = malloc((size_t)ng * d * 4);
                    ck_assert_int_eq(skv_att_i8_dots(SKV_KERNEL_I8_SCALAR, (uint32_t)bits, d, rows,
                                                     rs, n, q, ng, dref), 0);
                    ck_assert_int_eq(skv_att_i8_vacc(SKV_KERNEL_I8_SCALAR, (uint32_t)bits, d, rows,
                                                     rs, n, w, ng, aref), 0);
                    /* the reference itself, one entry by hand */
                    int32_t x = 0, y = 0;
                    for (uint32_t j = 0; j < d; j++) {
                        uint32_t code = 0;
                        for (int b = 0; b < bits; b++) {
                            size_t bit = (size_t)(j / 8) * 8 * (size_t)bits + (j % 8) * (size_t)bits + (size_t)b;
                            code |= (uint32_t)((rows[(n - 1) * rs + bit / 8] >> (bit % 8)) & 1) << b;
                        }
                        x += q[(size_t)(ng - 1) * d + j] * (int32_t)code;
                    }
                    for (uint32_t i = 0; i < n; i++)
                        y += w[i] * (int32_t)((rows[i * rs] >> 0) & ((1u << bits) - 1));
                    ck_assert_int_eq(dref[(size_t)(ng - 1) * n + n - 1], x);
                    ck_assert_int_eq(aref[0], y);
                    for (int kern = SKV_KERNEL_I8_AVX2; kern <= SKV_KERNEL_I8_VNNI; kern++) {
                        if (!skv_att_kernel_available(kern))
                            continue;
                        for (size_t i = 0; i < (size_t)ng * d; i++)
                            acc[i] = 0;
                        ck_assert_int_eq(skv_att_i8_dots(kern, (uint32_t)bits, d, rows, rs, n, q,
                                                         ng, dots), 0);
                        ck_assert_int_eq(skv_att_i8_vacc(kern, (uint32_t)bits, d, rows, rs, n, w,
                                                         ng, acc), 0);
                        ck_assert_msg(!memcmp(dots, dref, (size_t)ng * n * 4),
                                      "%s dots differ: bits %d d %u n %u ng %u",
                                      skv_att_kernel_name(kern), bits, d, n, ng);
                        ck_assert_msg(!memcmp(acc, aref, (size_t)ng * d * 4),
                                      "%s value sums differ: bits %d d %u n %u ng %u",
                                      skv_att_kernel_name(kern), bits, d, n, ng);
                    }
                    free(rows); free(q); free(w); free(dref); free(dots); free(aref); free(acc);
                }
    /* what they refuse */
    uint8_t r[64] = {0};
    int8_t q[64] = {0};
    int32_t o[64];
    ck_assert_int_eq(skv_att_i8_dots(SKV_KERNEL_I8_SCALAR, 16, 64, r, 64, 1, q, 1, o), SKV_EINVAL);
    ck_assert_int_eq(skv_att_i8_dots(SKV_KERNEL_I8_SCALAR, 5, 64, r, 64, 1, q, 1, o), SKV_EINVAL);
    /* 8 bits beyond head_dim 256: the int32 sums could overflow */
    ck_assert_int_eq(skv_att_i8_dots(SKV_KERNEL_I8_SCALAR, 8, 288, r, 288, 0, q, 1, o), SKV_EINVAL);
    ck_assert_int_eq(skv_att_i8_dots(SKV_KERNEL_I8_SCALAR, 4, 48, r, 24, 1, q, 1, o), SKV_EINVAL);
    ck_assert_int_eq(skv_att_i8_dots(SKV_KERNEL_AVX2, 4, 64, r, 32, 1, q, 1, o), SKV_EINVAL);
    ck_assert_int_eq(skv_att_i8_dots(SKV_KERNEL_I8_SCALAR, 4, 64, r, 32, 1, q, 17, o), SKV_EINVAL);
    ck_assert_int_eq(skv_att_kernel_parse("int8-vnni"), SKV_KERNEL_I8_VNNI);
    ck_assert_int_eq(skv_att_kernel_parse("avx2"), SKV_KERNEL_AVX2);
    ck_assert_int_eq(skv_att_kernel_parse("int9"), -1);
}
END_TEST

/* Caches the int8 kernels take beside test_packed_widths' first: other
 * widths and modes (head_dim 32, 96, 128; sym, ggml), keys per channel,
 * values in several groups of whole chunks. */
START_TEST(test_packed_int8)
{
    make_tmpdir();
    pk_case cases[] = {
        {4, 2, 32, 70, 32, 32, SKV_QMODE_SYM, SKV_QMODE_SYM, 0, 0},
        {3, 1, 96, 45, 96, 96, SKV_QMODE_GGML, SKV_QMODE_ASYM, 0, 0},
        {8, 1, 128, 90, 128, 128, SKV_QMODE_ASYM, SKV_QMODE_GGML, 2, 0},
        {5, 5, 64, 37, 64, 64, SKV_QMODE_SYM, SKV_QMODE_ASYM, 3, 0},
        {6, 2, 64, 75, 64, 64, SKV_QMODE_ASYM, SKV_QMODE_ASYM, 8, 0},
        {3, 1, 256, 40, 256, 256, SKV_QMODE_SYM, SKV_QMODE_GGML, 8, 0}, /* the largest 8-bit dim */
        {3, 1, 64, 420, 64, 64, SKV_QMODE_ASYM, SKV_QMODE_ASYM, 4, 0},  /* runs of several tiles */
        {3, 1, 64, 300, 64, 64, SKV_QMODE_ASYM, SKV_QMODE_SYM, 0, 0},
        /* keys per channel: a bucket's full groups in one int8 call (the
         * key scales folded into the query per group; groups of 8 to 128
         * tokens), the partial group (per token) its own run */
        {3, 1, 64, 300, 64, 64, SKV_QMODE_CHAN, SKV_QMODE_ASYM, 0, 64},
        {4, 2, 32, 300, 32, 32, SKV_QMODE_CHAN, SKV_QMODE_SYM, 3, 128},
        {3, 1, 128, 200, 128, 128, SKV_QMODE_CHAN, SKV_QMODE_GGML, 8, 64},
        {6, 2, 64, 75, 64, 64, SKV_QMODE_CHAN, SKV_QMODE_ASYM, 2, 8},
        /* values in groups of 32 or 64 channels (KIVI's values: 32) */
        {3, 1, 64, 300, 64, 32, SKV_QMODE_CHAN, SKV_QMODE_ASYM, 0, 64},
        {3, 1, 64, 200, 64, 32, SKV_QMODE_CHAN, SKV_QMODE_ASYM, 4, 32},
        {4, 2, 128, 150, 128, 32, SKV_QMODE_ASYM, SKV_QMODE_SYM, 0, 0},
        {3, 1, 128, 300, 128, 64, SKV_QMODE_CHAN, SKV_QMODE_GGML, 8, 128},
        {3, 1, 96, 90, 96, 32, SKV_QMODE_SYM, SKV_QMODE_ASYM, 3, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        packed_case(&cases[i]);
    printf("test_attend: int8 kernels: worst rel error %.3g vs the oracle on 8-bit rows (bound "
           "%g), on 2-4 bit rows %.3g of the cache's rounding error (bound %g) and "
           "probabilities within %.3g (bound %g), SIMD vs int8-scalar %.3g (bound %g)\n",
           i8_worst, I8_TOL, i8_qfrac_worst, I8_QFRAC, i8_low_pworst, I8_LOW_PTOL,
           i8_simd_worst, I8_SIMD_TOL);
    rm_tmpdir();
}
END_TEST

START_TEST(test_packed_shapes)
{
    make_tmpdir();
    pk_case cases[] = {
        {1, 1, 64, 1, 32, 32, SKV_QMODE_ASYM, SKV_QMODE_ASYM, 4, 0},  /* single token */
        {1, 1, 64, 1, 32, 32, SKV_QMODE_ASYM, SKV_QMODE_ASYM, 16, 0},
        {2, 2, 64, 33, 32, 64, SKV_QMODE_ASYM, SKV_QMODE_SYM, 0, 0},  /* MHA, mixed */
        {8, 2, 16, 50, 16, 16, SKV_QMODE_SYM, SKV_QMODE_SYM, 0, 0},   /* GQA 4:1 */
        {6, 1, 24, 29, 12, 24, SKV_QMODE_ASYM, SKV_QMODE_ASYM, 3, 0}, /* groups not x8: scalar */
        {10, 1, 16, 20, 16, 16, SKV_QMODE_ASYM, SKV_QMODE_ASYM, 0, 0},/* 10 heads per group */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        packed_case(&cases[i]);
    rm_tmpdir();
}
END_TEST

/* skv_attend_stream: a packed cache and a trace through the whole path;
 * --reference on the cache equals the fused kernel. */
START_TEST(test_stream_paths)
{
    make_tmpdir();
    pk_case pc = {6, 2, 32, 80, 32, 32, SKV_QMODE_ASYM, SKV_QMODE_ASYM, 0, 0};
    skv_trace *t = make_trace(&pc, 2);
    skv_cache *c = make_cache(t, &pc);
    skv_cache_free(c);
    char cache[600];
    snprintf(cache, sizeof cache, "%s", path_in("c.skv"));
    /* a float kernel: the path, not the int8 rounding (test_packed_*), is
     * under test */
    skv_attend_opts fo = {0, skv_att_kernel_available(SKV_KERNEL_AVX2) ? SKV_KERNEL_AVX2
                                                                        : SKV_KERNEL_SCALAR, 0};
    skv_attend_ctx *ctx = skv_attend_new(&fo);
    const char *outs[] = {"fused.skv", "ref.skv"};
    uint32_t modes[] = {SKV_ATT_AUTO, SKV_ATT_REFERENCE};
    for (int i = 0; i < 2; i++) {
        skv_stream *s = skv_open_write(path_in(outs[i]), -1);
        skv_attend_req req = {modes[i], "0:80", 1, NULL};
        ck_assert_msg(skv_attend_stream(ctx, cache, s, &req) == 0, "%s", skv_errmsg());
        ck_assert_int_eq(skv_close(s), 0);
    }
    skv_attn *a, *b;
    char pa[600];
    snprintf(pa, sizeof pa, "%s", path_in("fused.skv"));
    ck_assert_int_eq(skv_attn_load(pa, &a), 0);
    ck_assert_int_eq(skv_attn_load(path_in("ref.skv"), &b), 0);
    ck_assert_uint_eq(a->h.mode, SKV_ATT_PACKED);
    ck_assert_uint_eq(b->h.mode, SKV_ATT_REFERENCE);
    ck_assert_uint_eq(a->h.n_layers, 2);
    ck_assert(a->h.kv_bytes > 0 && a->h.kv_bytes < a->h.fp16_bytes * 2);
    double tol = 1e-5;
    double e = max_rel(a->out, b->out, (size_t)2 * 6 * 80, 32);
    ck_assert_msg(e <= tol, "fused (%s) vs --reference on the cache: %g",
                  skv_att_kernel_name(skv_attend_kernel(ctx)), e);
    skv_compare cmp;
    ck_assert_int_eq(skv_attn_compare(b, a, &cmp), 0);
    ck_assert_double_le(cmp.all.rel_l2, tol);
    ck_assert_double_ge(cmp.all.cos, 1 - tol * tol);
    ck_assert_double_ge(cmp.all.top[0], 0.99);
    skv_compare_free(&cmp);
    skv_attn_free(a);
    skv_attn_free(b);
    /* a trace: the default is the reference; --dense runs; packed is refused */
    skv_stream *s = skv_open_write(path_in("x.skv"), -1);
    skv_attend_req req = {SKV_ATT_PACKED, NULL, 0, NULL};
    ck_assert_int_lt(skv_attend_stream(ctx, path_in("t.skv"), s, &req), 0);
    ck_assert_ptr_nonnull(strstr(skv_errmsg(), "allocation"));
    skv_discard(s);
    s = skv_open_write(path_in("x.skv"), -1);
    req.mode = SKV_ATT_DENSE_F16;
    ck_assert_int_eq(skv_attend_stream(ctx, path_in("t.skv"), s, &req), 0);
    ck_assert_int_eq(skv_close(s), 0);
    /* --dense on a packed cache is refused */
    s = skv_open_write(path_in("y.skv"), -1);
    ck_assert_int_eq(skv_attend_stream(ctx, cache, s, &req), SKV_EINVAL);
    skv_discard(s);
    skv_attend_free(ctx);
    skv_trace_free(t);
    rm_tmpdir();
}
END_TEST

int main(void)
{
    Suite *s = suite_create("attend");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_softmax_merge);
    tcase_add_test(tc, test_steps_parse);
    tcase_add_test(tc, test_athd_roundtrip);
    tcase_add_test(tc, test_dense_vs_reference);
    tcase_add_test(tc, test_packed_widths);
    tcase_add_test(tc, test_packed_shapes);
    tcase_add_test(tc, test_i8_blocks);
    tcase_add_test(tc, test_rows_f16_tail);
    tcase_add_test(tc, test_probs_pass);
    tcase_add_test(tc, test_packed_int8);
    tcase_add_test(tc, test_stream_paths);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf != 0;
}
