/* test_eval.c -- the compressed cache behind the model's cache interface
 * (synthetic K/V against dense attention computed here), its byte
 * accounting against the library byte model, and, with the real model
 * (skipped when absent), perplexity/KL and the pass-key prompt. */
#include "smartkv.h"
#include "model_path.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define L_ 2
#define H_ 4
#define KH_ 2
#define D_ 64
#define T_ 160

static uint64_t rng = 88172645463325252ull;
static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 11) * 0x1p-53) * 2.0f - 1.0f;
}

/* K/V rows as the model appends them: [T][KH*D] per layer */
static float K[L_][T_][KH_ * D_], V[L_][T_][KH_ * D_], Q[T_][H_ * D_];

static void fill(void)
{
    rng = 88172645463325252ull;
    for (int l = 0; l < L_; l++)
        for (int t = 0; t < T_; t++)
            for (int j = 0; j < KH_ * D_; j++) {
                K[l][t][j] = frand() * 2.0f;
                V[l][t][j] = frand();
            }
    for (int t = 0; t < T_; t++)
        for (int j = 0; j < H_ * D_; j++)
            Q[t][j] = frand();
}

/* Append tokens [p0, p1) to every layer (layer 0 first, as the model does). */
static void append(skv_kv_cache *c, uint32_t p0, uint32_t p1)
{
    for (uint32_t l = 0; l < L_; l++)
        ck_assert_msg(c->ops->append(c, l, p0, p1 - p0, &K[l][p0][0], &V[l][p0][0]) == 0, "%s",
                      skv_errmsg());
}

/* Attention of query rows [p0, p1) of every (layer, head): out [L][H][n][D],
 * probs [L][H][n][p1]. */
static void attend(skv_kv_cache *c, uint32_t p0, uint32_t p1, float *out, float *probs)
{
    uint32_t n = p1 - p0;
    for (uint32_t l = 0; l < L_; l++)
        for (uint32_t h = 0; h < H_; h++) {
            float *o = out + ((size_t)l * H_ + h) * n * D_;
            float *p = probs + ((size_t)l * H_ + h) * n * p1;
            ck_assert_msg(c->ops->attend(c, l, h, p0, n, &Q[p0][h * D_], H_ * D_, 0.125f, o, D_,
                                         p, p1) == 0, "%s", skv_errmsg());
        }
}

static double maxdiff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > m || d != d)
            m = d != d ? INFINITY : d;
    }
    return m;
}

static skv_kv_cache *ec(const skv_ec_cfg *c)
{
    skv_kv_cache *k = skv_ec_new(c, L_, H_, KH_, D_, T_);
    ck_assert_msg(k != NULL, "%s", skv_errmsg());
    return k;
}

/* Run two caches in lockstep over blocks of `blk` tokens; largest difference
 * of the outputs and probabilities. */
static double lockstep(skv_kv_cache *a, skv_kv_cache *b, uint32_t blk)
{
    static float oa[L_ * H_ * 16 * D_], ob[L_ * H_ * 16 * D_];
    static float pa[L_ * H_ * 16 * T_], pb[L_ * H_ * 16 * T_];
    double m = 0;
    for (uint32_t p = 0; p < T_; p += blk) {
        uint32_t e = p + blk < T_ ? p + blk : T_;
        append(a, p, e);
        append(b, p, e);
        attend(a, p, e, oa, pa);
        attend(b, p, e, ob, pb);
        double d = maxdiff(oa, ob, (size_t)L_ * H_ * (e - p) * D_);
        double dp = maxdiff(pa, pb, (size_t)L_ * H_ * (e - p) * e);
        m = d > m ? d : m;
        m = dp > m ? dp : m;
    }
    return m;
}

START_TEST(test_f32_equals_dense)
{
    fill();
    skv_ec_cfg c;
    skv_ec_defaults(&c);
    c.kind = SKV_EC_F32;
    skv_kv_cache *a = ec(&c), *d = skv_kv_dense_new(L_, H_, KH_, D_, T_);
    ck_assert_ptr_nonnull(d);
    double m = lockstep(a, d, 16);
    ck_assert_msg(m <= 1e-5, "f32 cache vs dense: %g", m);
    skv_kv_cache_free(a);
    skv_kv_cache_free(d);
}
END_TEST

/* beta >= 1 keeps every token at 16 bits: the fp16 cache, to rounding */
START_TEST(test_beta1_and_uniform16_equal_fp16)
{
    fill();
    for (int variant = 0; variant < 3; variant++) {
        skv_ec_cfg c, r;
        skv_ec_defaults(&c);
        skv_ec_defaults(&r);
        r.kind = SKV_EC_FP16;
        c.realloc = 8;
        if (variant == 0) {
            c.alloc.budget = 1.0;
        } else if (variant == 1) {
            c.alloc.budget = 3.0;
            c.ideal = 1;
        } else {
            c.alloc.policy = SKV_POLICY_UNIFORM;
            c.alloc.uniform_bits = 16;
        }
        skv_kv_cache *a = ec(&c), *b = ec(&r);
        double m = lockstep(a, b, 8);
        ck_assert_msg(m <= 1e-5, "variant %d vs fp16: %g", variant, m);
        skv_ec_stats s;
        ck_assert_int_eq(skv_ec_stats_get(a, &s), 0);
        ck_assert_uint_gt(s.n_realloc, 10);
        ck_assert_uint_eq(s.hist[skv_width_index(16)], (uint64_t)L_ * KH_ * s.n_alloc);
        skv_kv_cache_free(a);
        skv_kv_cache_free(b);
    }
}
END_TEST

/* uniform:4: attention equals float64 attention over K/V quantized and
 * dequantized here (allocated tokens) or fp16-rounded (pending tokens). */
START_TEST(test_uniform4_matches_manual)
{
    fill();
    skv_ec_cfg c;
    skv_ec_defaults(&c);
    c.alloc.policy = SKV_POLICY_UNIFORM;
    c.alloc.uniform_bits = 4;
    c.realloc = 16;
    /* the float kernels: the int8 ones (the default) round the query and
     * the weights (about 1e-4 relative, tests/test_attend.c) */
    c.kernel = skv_att_kernel_available(SKV_KERNEL_AVX2) ? SKV_KERNEL_AVX2 : SKV_KERNEL_SCALAR;
    skv_kv_cache *a = ec(&c);
    append(a, 0, 64);
    append(a, 64, 80);   /* reallocation at 64 (>= R past 0): 0..63 at 4 bits */
    skv_ec_stats s;
    ck_assert_int_eq(skv_ec_stats_get(a, &s), 0);
    ck_assert_uint_eq(s.n_alloc, 64);
    static float out[L_ * H_ * 16 * D_], probs[L_ * H_ * 16 * 80];
    attend(a, 64, 80, out, probs);
    uint8_t par[8], dat[64];
    static float kq[80][D_], vq[80][D_];
    for (uint32_t l = 0; l < L_; l++)
        for (uint32_t h = 0; h < H_; h++) {
            uint32_t kh = h / (H_ / KH_);
            for (uint32_t t = 0; t < 80; t++)
                for (int w = 0; w < 2; w++) {
                    const float *x = w ? &V[l][t][kh * D_] : &K[l][t][kh * D_];
                    float *y = w ? vq[t] : kq[t];
                    /* tokens enter at fp16; allocated ones are quantized from that */
                    for (int j = 0; j < D_; j++)
                        y[j] = skv_f16_to_f32(skv_f32_to_f16(x[j]));
                    if (t < 64) {
                        float x16[D_];
                        memcpy(x16, y, sizeof x16);
                        ck_assert_int_eq(skv_quantize_row_ref(x16, D_, 4, D_, SKV_QMODE_ASYM, par, dat), 0);
                        skv_dequantize_row_ref(par, dat, D_, 4, D_, SKV_QMODE_ASYM, y);
                    }
                }
            for (uint32_t i = 0; i < 16; i++) {
                uint32_t t = 64 + i;
                double sc[80], mx = -INFINITY, sum = 0, o[D_] = {0};
                for (uint32_t u = 0; u <= t; u++) {
                    double a2 = 0;
                    for (int j = 0; j < D_; j++)
                        a2 += (double)Q[t][h * D_ + j] * kq[u][j];
                    sc[u] = a2 * 0.125;
                    mx = sc[u] > mx ? sc[u] : mx;
                }
                for (uint32_t u = 0; u <= t; u++) {
                    sc[u] = exp(sc[u] - mx);
                    sum += sc[u];
                }
                for (uint32_t u = 0; u <= t; u++)
                    for (int j = 0; j < D_; j++)
                        o[j] += sc[u] / sum * vq[u][j];
                const float *got = out + (((size_t)l * H_ + h) * 16 + i) * D_;
                for (int j = 0; j < D_; j++)
                    ck_assert_msg(fabs(got[j] - o[j]) <= 1e-5, "l%u h%u t%u ch%d: %g vs %g", l, h,
                                  t, j, got[j], o[j]);
                const float *pr = probs + (((size_t)l * H_ + h) * 16 + i) * 80;
                for (uint32_t u = 0; u < 80; u++)
                    ck_assert(fabs(pr[u] - (u <= t ? sc[u] / sum : 0)) <= 1e-6);
            }
        }
    skv_kv_cache_free(a);
}
END_TEST

/* The byte count equals the library byte model of the widths held, with
 * pending tokens at 16 bits; after a reallocation the budget holds. */
START_TEST(test_accounting_is_byte_model)
{
    fill();
    const uint32_t pols[] = {SKV_POLICY_SMARTKV, SKV_POLICY_RANDOM, SKV_POLICY_GREEDY,
                             SKV_POLICY_OPTIMAL, SKV_POLICY_POSITION, SKV_POLICY_LAYER_AWARE};
    for (size_t pi = 0; pi < sizeof pols / sizeof *pols; pi++) {
        skv_ec_cfg c;
        skv_ec_defaults(&c);
        c.alloc.policy = pols[pi];
        c.alloc.budget = 0.5;
        c.alloc.recent = 8;
        c.realloc = 16;
        skv_kv_cache *a = ec(&c);
        static float out[L_ * H_ * 16 * D_], probs[L_ * H_ * 16 * T_];
        for (uint32_t p = 0; p < T_; p += 16) {
            append(a, p, p + 16);
            attend(a, p, p + 16, out, probs);
        }
        ck_assert_int_eq(skv_ec_realloc(a), 0);
        skv_ec_stats s;
        ck_assert_int_eq(skv_ec_stats_get(a, &s), 0);
        ck_assert_uint_eq(s.n_alloc, T_);
        static uint8_t bits[L_][KH_][T_];
        for (uint32_t l = 0; l < L_; l++)
            for (uint32_t h = 0; h < KH_; h++)
                memcpy(bits[l][h], skv_ec_widths(a, l, h), T_);
        skv_qcfg q = {.head_dim = D_, .k_group = D_, .v_group = D_, .k_mode = SKV_QMODE_ASYM, .v_mode = SKV_QMODE_ASYM, .k_tokens = 0};
        uint64_t want;
        ck_assert_int_eq(skv_alloc_cache_bytes(&q, L_, KH_, T_, &bits[0][0][0], &want), 0);
        ck_assert_uint_eq(s.bytes, want);
        ck_assert_uint_eq(s.fp16_bytes, skv_alloc_fp16_bytes(L_, KH_, T_, D_));
        if (!s.n_budget_raised)
            ck_assert_msg(s.bytes <= (uint64_t)floor(0.5 * (double)s.fp16_bytes),
                          "%s: %llu bytes over the budget", skv_policy_name(pols[pi]),
                          (unsigned long long)s.bytes);
        uint64_t h = 0;
        for (int i = 0; i < SKV_NBITS; i++)
            h += s.hist[i];
        ck_assert_uint_eq(h, (uint64_t)L_ * KH_ * T_);
        /* with pending tokens, they count as 16-bit rows */
        skv_kv_cache_free(a);
    }
}
END_TEST

/* A planted token that every query attends to keeps a wide width under
 * smartkv; the tracked importance comes from the cache's own attention. */
START_TEST(test_planted_token_kept)
{
    fill();
    const uint32_t star = 37;
    for (int l = 0; l < L_; l++)
        for (int j = 0; j < KH_ * D_; j++)
            K[l][star][j] = j % D_ == 0 ? 8.0f : 0.0f;
    for (int t = 0; t < T_; t++)
        for (int h = 0; h < H_; h++)
            Q[t][h * D_] = 3.0f;
    skv_ec_cfg c;
    skv_ec_defaults(&c);
    c.alloc.budget = 0.25;
    c.alloc.sinks = 0;
    c.alloc.recent = 0;
    skv_kv_cache *a = ec(&c);
    static float out[L_ * H_ * 16 * D_], probs[L_ * H_ * 16 * T_];
    for (uint32_t p = 0; p < T_; p += 16) {
        append(a, p, p + 16);
        attend(a, p, p + 16, out, probs);
    }
    ck_assert_int_eq(skv_ec_realloc(a), 0);
    uint32_t low = 0;
    for (uint32_t l = 0; l < L_; l++)
        for (uint32_t h = 0; h < KH_; h++) {
            const uint8_t *w = skv_ec_widths(a, l, h);
            ck_assert_msg(w[star] >= 8, "layer %u kv head %u: planted token at %u bits", l, h,
                          w[star]);
            for (uint32_t t = 0; t < T_; t++)
                low += w[t] <= 3;
        }
    ck_assert_uint_gt(low, L_ * KH_ * T_ / 2);
    skv_kv_cache_free(a);
}
END_TEST

/* reset and replay gives the same outputs; ideal and real differ only
 * where widths went down (both run; real never upgrades precision). */
START_TEST(test_reset_replay_and_errors)
{
    fill();
    skv_ec_cfg c;
    skv_ec_defaults(&c);
    c.alloc.budget = 0.3;
    skv_kv_cache *a = ec(&c);
    static float o1[L_ * H_ * 16 * D_], o2[L_ * H_ * 16 * D_], pr[L_ * H_ * 16 * T_];
    for (int pass = 0; pass < 2; pass++) {
        for (uint32_t p = 0; p < 96; p += 16) {
            append(a, p, p + 16);
            attend(a, p, p + 16, pass ? o2 : o1, pr);
        }
        ck_assert_int_eq(a->ops->truncate(a, 0), 0);
    }
    ck_assert(maxdiff(o1, o2, sizeof o1 / sizeof *o1) == 0);
    /* append out of order, beyond capacity, bad layer */
    ck_assert_int_eq(a->ops->append(a, 0, 5, 1, &K[0][0][0], &V[0][0][0]), SKV_EINVAL);
    ck_assert_int_eq(a->ops->append(a, 0, T_, 1, &K[0][0][0], &V[0][0][0]), SKV_ELIMIT);
    ck_assert_int_eq(a->ops->append(a, L_, 0, 1, &K[0][0][0], &V[0][0][0]), SKV_EINVAL);
    /* a non-fp16 value is named */
    float big[KH_ * D_] = {0};
    big[3] = 1e6f;
    ck_assert_int_eq(a->ops->append(a, 0, 0, 1, big, &V[0][0][0]), SKV_EFORMAT);
    ck_assert_ptr_nonnull(strstr(skv_errmsg(), "token 0"));
    skv_kv_cache_free(a);
    /* ... saying K or V and the value, in the flat, grouped and prune-merge caches alike */
    for (int layout = 0; layout < 3; layout++) {
        skv_ec_cfg f;
        skv_ec_defaults(&f);
        f.alloc.budget = 0.3;
        if (layout == 1)
            f.layout = SKV_EC_GROUPED;
        if (layout == 2)
            f.kind = SKV_EC_PRUNE_MERGE;
        skv_kv_cache *x = ec(&f);
        big[3] = 1e6f;
        ck_assert_int_eq(x->ops->append(x, 0, 0, 1, big, &V[0][0][0]), SKV_EFORMAT);
        ck_assert_msg(strstr(skv_errmsg(), "token 0: K value 1e+06 is not an fp16 number"), "%d: %s",
                      layout, skv_errmsg());
        big[3] = NAN;
        ck_assert_int_eq(x->ops->append(x, 0, 0, 1, &K[0][0][0], big), SKV_EFORMAT);
        ck_assert_msg(strstr(skv_errmsg(), "token 0: V value"), "%d: %s", layout, skv_errmsg());
        skv_kv_cache_free(x);
    }
    /* bad configurations */
    skv_ec_cfg b;
    skv_ec_defaults(&b);
    b.decay = 1.0;
    ck_assert_ptr_null(skv_ec_new(&b, L_, H_, KH_, D_, T_));
    skv_ec_defaults(&b);
    b.realloc = 0;
    ck_assert_ptr_null(skv_ec_new(&b, L_, H_, KH_, D_, T_));
    skv_ec_defaults(&b);
    b.imp_mode = SKV_IMP_ORACLE;
    ck_assert_ptr_null(skv_ec_new(&b, L_, H_, KH_, D_, T_));
    ck_assert_ptr_nonnull(strstr(skv_errmsg(), "oracle"));
    skv_ec_defaults(&b);
    b.alloc.policy = SKV_POLICY_UNIFORM;
    b.alloc.uniform_bits = 5;
    ck_assert_ptr_null(skv_ec_new(&b, L_, H_, KH_, D_, T_));
    skv_ec_defaults(&b);
    ck_assert_ptr_null(skv_ec_new(&b, L_, 3, KH_, D_, T_)); /* heads not a multiple */
}
END_TEST

/* Real vs idealised: the same allocation sequence, and the idealised cache
 * is never further from the fp16 cache than the real one by much; in the
 * real cache no allocated row is requantized from full precision. */
START_TEST(test_real_and_ideal)
{
    fill();
    skv_ec_cfg c, r;
    skv_ec_defaults(&c);
    skv_ec_defaults(&r);
    r.kind = SKV_EC_FP16;
    c.alloc.budget = 0.3;
    skv_kv_cache *real = ec(&c), *ref = ec(&r);
    c.ideal = 1;
    skv_kv_cache *ideal = ec(&c);
    double dr = lockstep(real, ref, 16);
    ck_assert_int_eq(ref->ops->truncate(ref, 0), 0);
    double di = lockstep(ideal, ref, 16);
    skv_ec_stats sr, si;
    ck_assert_int_eq(skv_ec_stats_get(real, &sr), 0);
    ck_assert_int_eq(skv_ec_stats_get(ideal, &si), 0);
    ck_assert_uint_gt(sr.downgrades, 0);
    ck_assert_uint_eq(sr.requant_rows, sr.downgrades + sr.upgrades);
    ck_assert_uint_eq(si.requant_rows, 0);
    ck_assert_uint_gt(si.mem_bytes, sr.mem_bytes);
    ck_assert_msg(di <= dr * 1.5 + 1e-6, "ideal %g vs real %g", di, dr);
    skv_kv_cache_free(real);
    skv_kv_cache_free(ideal);
    skv_kv_cache_free(ref);
}
END_TEST

START_TEST(test_kl)
{
    float a[5] = {1, 2, 3, 4, 5}, b[5] = {1, 2, 3, 4, 5}, c[5] = {5, 4, 3, 2, 1};
    ck_assert(skv_logits_kl(a, b, 5) == 0);
    /* shift invariance and a hand-computed value */
    float d[5] = {11, 12, 13, 14, 15};
    ck_assert(skv_logits_kl(a, d, 5) < 1e-12);
    double za = 0, zc = 0, kl = 0;
    for (int i = 0; i < 5; i++) {
        za += exp(a[i]);
        zc += exp(c[i]);
    }
    for (int i = 0; i < 5; i++)
        kl += exp(a[i]) / za * ((a[i] - log(za)) - (c[i] - log(zc)));
    ck_assert(fabs(skv_logits_kl(a, c, 5) - kl) < 1e-9);
}
END_TEST

/* ---------------------------------------------------------------- model */

static skv_model *m;
static int32_t *ids;
static size_t n_ids;

static void msetup(void)
{
    m = skv_model_load(test_model_path(), 2);
    ck_assert_msg(m != NULL, "%s", skv_errmsg());
    const char *text = "The GNU General Public License is a free, copyleft license for software "
                       "and other kinds of works. The licenses for most software and other "
                       "practical works are designed to take away your freedom to share and "
                       "change the works. By contrast, the GNU General Public License is "
                       "intended to guarantee your freedom to share and change all versions of "
                       "a program--to make sure it remains free software for all its users.";
    ck_assert_int_eq(skv_tokenize(skv_model_tokenizer(m), text, strlen(text), 0, &ids, &n_ids), 0);
    ck_assert_uint_gt(n_ids, 64);
}

static void mteardown(void)
{
    free(ids);
    skv_model_free(m);
}

static skv_ppl_result ppl(const char *policy, double budget)
{
    skv_ec_cfg c;
    skv_ec_defaults(&c);
    if (!strcmp(policy, "fp16"))
        c.kind = SKV_EC_FP16;
    else
        ck_assert_int_eq(skv_policy_parse(policy, &c.alloc.policy, &c.alloc.uniform_bits), 0);
    c.alloc.budget = budget;
    c.alloc.recent = 8;
    skv_ppl_opts o = {0};
    o.ctx = 64;
    o.stride = 32;
    o.reference = 1;
    skv_ppl_result r;
    ck_assert_msg(skv_eval_ppl(m, ids, n_ids, &c, &o, &r) == 0, "%s", skv_errmsg());
    return r;
}

START_TEST(test_model_ppl)
{
    skv_ppl_result f = ppl("fp16", 0), u16 = ppl("uniform:16", 0), u8 = ppl("uniform:8", 0),
                   u2 = ppl("uniform:2", 0);
    /* windows of 64 every 32: every token but the first scored once */
    ck_assert_uint_eq(f.n_scored, n_ids - 1);
    ck_assert_uint_eq(u8.n_scored, n_ids - 1);
    ck_assert(f.kl == 0 && f.top1 == 1 && f.ppl == f.ppl_ref);
    ck_assert(fabs(f.beta - 1) < 1e-12);
    ck_assert(f.ppl > 1 && f.ppl < 1000);
    ck_assert_msg(u16.kl < 1e-4 && u16.top1 > 0.97, "uniform:16 kl %g top1 %g", u16.kl, u16.top1);
    ck_assert_msg(u8.kl < u2.kl, "8-bit kl %g, 2-bit kl %g", u8.kl, u2.kl);
    ck_assert(u2.beta < u8.beta && u8.beta < 1);
    /* the reference is the same fp16 cache (blocks differ: fp16 rounding of K/V may flip) */
    ck_assert_msg(fabs(u8.ppl_ref - f.ppl) < 1e-3 * f.ppl, "fp16 ppl %.9g vs %.9g", f.ppl, u8.ppl_ref);
}
END_TEST

/* The reference kept on disk gives the numbers of the lockstep run exactly
 * (on the integer path a token's logits do not depend on the blocks), is
 * made once and then read (ref_seconds 0), and a file that does not match
 * its key is recomputed, not trusted. */
START_TEST(test_model_ref_cache)
{
    char dir[] = "/tmp/skv-refcache-XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    skv_ec_cfg c;
    skv_ec_defaults(&c);
    ck_assert_int_eq(skv_policy_parse("uniform:4", &c.alloc.policy, &c.alloc.uniform_bits), 0);
    c.alloc.recent = 8;
    skv_ppl_opts o = {0};
    o.ctx = 64;
    o.stride = 32;
    o.prefill = 8;
    o.reference = 1;
    skv_ppl_result a, b, d, e;
    ck_assert_msg(skv_eval_ppl(m, ids, n_ids, &c, &o, &a) == 0, "%s", skv_errmsg());
    o.ref_cache = dir;
    ck_assert_msg(skv_eval_ppl(m, ids, n_ids, &c, &o, &b) == 0, "%s", skv_errmsg());
    ck_assert(b.ref_seconds > 0);
    c.realloc = 8;   /* another row of a sweep: the same reference */
    ck_assert_msg(skv_eval_ppl(m, ids, n_ids, &c, &o, &d) == 0, "%s", skv_errmsg());
    ck_assert(d.ref_seconds == 0);
    ck_assert_msg(a.nll_ref == b.nll_ref && a.kl == b.kl && a.top1 == b.top1 && a.nll == b.nll &&
                  a.kl_max == b.kl_max, "lockstep kl %.9g nll_ref %.9g, cached kl %.9g nll_ref %.9g",
                  a.kl, a.nll_ref, b.kl, b.nll_ref);
    ck_assert(d.nll_ref == a.nll_ref);
    /* corrupt the file (same size, other logits): recomputed, same numbers */
    char cmd[512];
    snprintf(cmd, sizeof cmd, "for f in %s/ref-*.bin; do printf 'XXXX' | dd of=$f bs=1 seek=8 "
             "conv=notrunc 2>/dev/null; done", dir);
    ck_assert_int_eq(system(cmd), 0);
    ck_assert_msg(skv_eval_ppl(m, ids, n_ids, &c, &o, &e) == 0, "%s", skv_errmsg());
    ck_assert(e.ref_seconds > 0 && e.nll_ref == a.nll_ref && e.kl == d.kl);
    /* a directory that cannot be made is an error, not a crash */
    o.ref_cache = "/proc/skv-no-such-dir/x";
    ck_assert_int_lt(skv_eval_ppl(m, ids, n_ids, &c, &o, &e), 0);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    ck_assert_int_eq(system(cmd), 0);
}
END_TEST

START_TEST(test_model_f32_cache)
{
    /* float32 activations: on int8 ones the rounding differences of the two
     * attention paths move activations across quantization steps */
    skv_model_set_q8(m, 0);
    const skv_model_params *p = skv_model_get_params(m);
    uint32_t n = 48, nv = p->n_vocab;
    float *a = malloc((size_t)n * nv * 4), *b = malloc((size_t)n * nv * 4);
    skv_session *sd = skv_session_new(m, NULL, n);
    ck_assert_int_eq(skv_session_eval(sd, ids, n, a, SKV_LOGITS_ALL), 0);
    skv_ec_cfg c;
    skv_ec_defaults(&c);
    c.kind = SKV_EC_F32;
    skv_kv_cache *kc = skv_ec_new(&c, p->n_layers, p->n_heads, p->n_kv_heads, p->head_dim, n);
    skv_session *se = skv_session_new(m, kc, n);
    for (uint32_t i = 0; i < n; i += 16)
        ck_assert_int_eq(skv_session_eval(se, ids + i, 16, b + (size_t)i * nv, SKV_LOGITS_ALL), 0);
    double mx = 0, md = 0;
    for (size_t i = 0; i < (size_t)n * nv; i++) {
        mx = fabs(a[i]) > mx ? fabs(a[i]) : mx;
        md = fabs(a[i] - b[i]) > md ? fabs(a[i] - b[i]) : md;
    }
    ck_assert_msg(md <= 1e-5 * mx, "f32 cache vs dense: %g (max |logit| %g)", md, mx);
    skv_session_free(sd);
    skv_session_free(se);
    skv_kv_cache_free(kc);
    free(a);
    free(b);
}
END_TEST

/* head_weight: the grouped method's cache run over the text three ways:
 * every head alike, each (layer, KV head) weighted by its output gain over
 * the residual stream (attached), and weighted but never attached (every
 * head then weighs 1).  The weighting moves the plan (other logits than
 * unattached); its state is counted either way: per unit a float, per
 * layer a sum and a count. */
static void hw_run(int hw, int attach, float *logits, skv_ec_stats *st)
{
    const skv_model_params *p = skv_model_get_params(m);
    skv_ec_cfg c;
    skv_ec_defaults(&c);
    c.layout = SKV_EC_GROUPED;
    c.k_layout = SKV_EC_KEYS_CHANNEL;
    c.kv_split = 1;
    c.err_model = SKV_EC_ERR_IMP_RANGE;
    c.realloc = 16;
    c.key_tokens = 16;
    c.alloc.budget = 0.3;
    c.head_weight = hw ? 0.5 : 0;
    uint32_t n = (uint32_t)n_ids;
    skv_kv_cache *kc = skv_ec_new(&c, p->n_layers, p->n_heads, p->n_kv_heads, p->head_dim, n);
    ck_assert_msg(kc != NULL, "%s", skv_errmsg());
    skv_session *s = skv_session_new(m, kc, n);
    if (attach)
        skv_atskv_attach(kc, s, skv_model_tokenizer(m));
    for (uint32_t i = 0; i < n; i += 16) {
        uint32_t k = n - i < 16 ? n - i : 16;
        ck_assert_msg(skv_session_eval(s, ids + i, k, logits, SKV_LOGITS_LAST) == 0, "%s",
                      skv_errmsg());
    }
    ck_assert_int_eq(skv_ec_stats_get(kc, st), 0);
    skv_session_free(s);
    skv_kv_cache_free(kc);
}

START_TEST(test_model_head_weight)
{
    const skv_model_params *p = skv_model_get_params(m);
    size_t nv = p->n_vocab;
    float *a = malloc(nv * sizeof *a), *b = malloc(nv * sizeof *b), *d = malloc(nv * sizeof *d);
    skv_ec_stats sa, sb, sd;
    hw_run(0, 1, a, &sa);
    hw_run(1, 1, b, &sb);
    hw_run(1, 0, d, &sd);
    ck_assert_uint_gt(sa.n_realloc, 1);
    uint64_t state = (uint64_t)p->n_layers * p->n_kv_heads * 4 + (uint64_t)p->n_layers * 16;
    ck_assert_uint_eq(sb.meta_bytes, sa.meta_bytes + state);
    ck_assert_uint_eq(sd.meta_bytes, sa.meta_bytes + state);
    /* the same bytes counted: only the weights differ */
    ck_assert_msg(memcmp(b, d, nv * sizeof *b) != 0, "head weighting left the plan as it was");
    free(a);
    free(b);
    free(d);
}
END_TEST

START_TEST(test_model_needle_prompt)
{
    skv_ec_cfg c;
    skv_ec_defaults(&c);
    c.kind = SKV_EC_FP16;
    skv_needle_opts o = {7, 4};
    skv_needle_result r0, r1, r2;
    ck_assert_int_eq(skv_eval_needle(m, &c, 200, 0, &o, &r0), 0);
    ck_assert_int_eq(skv_eval_needle(m, &c, 200, 100, &o, &r1), 0);
    o.seed = 8;
    ck_assert_int_eq(skv_eval_needle(m, &c, 200, 100, &o, &r2), 0);
    ck_assert(r0.key >= 10000 && r0.key <= 99999);
    ck_assert(r0.n_prompt <= 200 && r0.n_prompt > 150);
    ck_assert_uint_lt(r0.needle_pos, r1.needle_pos);
    ck_assert_uint_ne(r1.key, r2.key);
    ck_assert_int_eq(skv_eval_needle(m, &c, 200, 101, &o, &r2), SKV_EINVAL);
}
END_TEST

int main(void)
{
    Suite *su = suite_create("eval");
    TCase *tc = tcase_create("cache");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_f32_equals_dense);
    tcase_add_test(tc, test_beta1_and_uniform16_equal_fp16);
    tcase_add_test(tc, test_uniform4_matches_manual);
    tcase_add_test(tc, test_accounting_is_byte_model);
    tcase_add_test(tc, test_planted_token_kept);
    tcase_add_test(tc, test_reset_replay_and_errors);
    tcase_add_test(tc, test_real_and_ideal);
    tcase_add_test(tc, test_kl);
    suite_add_tcase(su, tc);
    int have_model = test_model_path() != NULL;
    if (have_model) {
        TCase *tm = tcase_create("model");
        tcase_set_timeout(tm, 240);
        tcase_add_checked_fixture(tm, msetup, mteardown);
        tcase_add_test(tm, test_model_ppl);
        tcase_add_test(tm, test_model_f32_cache);
        tcase_add_test(tm, test_model_ref_cache);
        tcase_add_test(tm, test_model_needle_prompt);
        tcase_add_test(tm, test_model_head_weight);
        suite_add_tcase(su, tm);
    }
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    if (!have_model)
        report_skip("eval", 5);
    return nf != 0;
}
