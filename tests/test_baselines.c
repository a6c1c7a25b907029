/* test_baselines.c -- the baseline policies (q8_0, q4_0, streaming, h2o,
 * snapkv, mikv): llama.cpp's block rule on blocks worked out by hand and
 * against a float64 reference, each eviction policy's choice on a small
 * problem worked out by hand, and the online cache with eviction: evicted
 * tokens gone from attention (float64 attention over the kept tokens) and
 * from the bytes, never coming back, SnapKV's votes and H2O's accumulated
 * attention taken from the attention the cache returned. */
#include "smartkv.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- q4_0 / q8_0 */

static void ggml_roundtrip(const float *x, uint32_t n, uint32_t bits, float *y, uint16_t *d16)
{
    uint8_t par[2 * 8], dat[256];
    ck_assert_int_eq(skv_quantize_row_ref(x, n, bits, 32, SKV_QMODE_GGML, par, dat), 0);
    skv_dequantize_row_ref(par, dat, n, bits, 32, SKV_QMODE_GGML, y);
    *d16 = (uint16_t)(par[0] | par[1] << 8);
    /* the dispatcher (AVX2 where present) gives the same bytes */
    uint8_t par2[2 * 8], dat2[256];
    ck_assert_int_eq(skv_quantize_row(x, n, bits, 32, SKV_QMODE_GGML, par2, dat2), 0);
    ck_assert_mem_eq(par, par2, 2 * (n / 32));
    ck_assert_mem_eq(dat, dat2, skv_row_bytes(bits, n));
}

/* By hand.  q4_0 with m = -4 (largest magnitude, negative): d = -4/-8 = 0.5,
 * q = (int)(x*2 + 8.5): 2 -> 12 -> 2; 1 -> 10 -> 1; 0.3 -> 9 -> 0.5;
 * -4 -> 0 -> -4; 0 -> 8 -> 0.  With m = +4: d = -0.5, q = (int)(-2x + 8.5):
 * 4 -> 0 -> 4; -4 -> 16, clamped to 15 -> (15-8)*(-0.5) = -3.5 (q4_0's one
 * asymmetric level).  q8_0 with max|x| = 31.75: d = 0.25, q = roundf(4x):
 * 1.1 -> 4 -> 1; -0.125 -> -0.5 -> -1 (half away from zero) -> -0.25;
 * 0.375 -> 1.5 -> 2 -> 0.5; 31.75 -> 127. */
START_TEST(test_ggml_by_hand)
{
    float x[32] = {0}, y[32];
    uint16_t d16;
    x[0] = 2;
    x[1] = 1;
    x[2] = 0.3f;
    x[3] = -4;
    ggml_roundtrip(x, 32, 4, y, &d16);
    ck_assert_float_eq(skv_f16_to_f32(d16), 0.5f);
    ck_assert_float_eq(y[0], 2.0f);
    ck_assert_float_eq(y[1], 1.0f);
    ck_assert_float_eq(y[2], 0.5f);
    ck_assert_float_eq(y[3], -4.0f);
    ck_assert_float_eq(y[4], 0.0f);
    x[0] = 4;
    x[3] = -4;
    ggml_roundtrip(x, 32, 4, y, &d16);
    ck_assert_float_eq(skv_f16_to_f32(d16), -0.5f);
    ck_assert_float_eq(y[0], 4.0f);
    ck_assert_float_eq(y[3], -3.5f);
    memset(x, 0, sizeof x);
    x[0] = 1.1f;
    x[1] = -0.125f;
    x[2] = 0.375f;
    x[3] = 31.75f;
    ggml_roundtrip(x, 32, 8, y, &d16);
    ck_assert_float_eq(skv_f16_to_f32(d16), 0.25f);
    ck_assert_float_eq(y[0], 1.0f);
    ck_assert_float_eq(y[1], -0.25f);
    ck_assert_float_eq(y[2], 0.5f);
    ck_assert_float_eq(y[3], 31.75f);
    /* all zero: d = 0, every value decodes to 0 */
    memset(x, 0, sizeof x);
    ggml_roundtrip(x, 32, 4, y, &d16);
    for (int i = 0; i < 32; i++)
        ck_assert_float_eq(y[i], 0.0f);
    /* the byte model: one fp16 scale per 32 elements, K and V */
    ck_assert_uint_eq(skv_par_bytes(8, 64, 32, SKV_QMODE_GGML), 4);
    ck_assert_uint_eq(skv_par_bytes(4, 64, 32, SKV_QMODE_GGML), 4);
    ck_assert_uint_eq(skv_row_bytes(4, 64), 32);
}
END_TEST

static uint64_t rng = 88172645463325252ull;
static double drand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) * 0x1p-53;
}

/* The rule in float64 on random blocks: codes agree except where x/d is
 * within float32 rounding of a rounding boundary. */
START_TEST(test_ggml_float64_reference)
{
    int ties = 0;
    for (int rep = 0; rep < 400; rep++) {
        float x[64], y[64];
        double sc = pow(10.0, drand() * 6 - 3);
        for (int i = 0; i < 64; i++)
            x[i] = (float)((drand() * 2 - 1) * sc);
        uint32_t bits = rep & 1 ? 8 : 4;
        uint8_t par[4], dat[64];
        ck_assert_int_eq(skv_quantize_row_ref(x, 64, bits, 32, SKV_QMODE_GGML, par, dat), 0);
        skv_dequantize_row_ref(par, dat, 64, bits, 32, SKV_QMODE_GGML, y);
        for (int b = 0; b < 2; b++) {
            const float *xb = x + 32 * b;
            double amax = 0, m = 0;
            for (int i = 0; i < 32; i++)
                if (fabs(xb[i]) > amax) {
                    amax = fabs(xb[i]);
                    m = xb[i];
                }
            double d = bits == 8 ? amax / 127 : m / -8;
            double d16 = skv_f16_to_f32(skv_f32_to_f16((float)d));
            ck_assert_double_eq(d16, skv_f16_to_f32((uint16_t)(par[2 * b] | par[2 * b + 1] << 8)));
            for (int i = 0; i < 32; i++) {
                double t = xb[i] / d, q;
                if (bits == 8) {
                    q = t < 0 ? -floor(-t + 0.5) : floor(t + 0.5);
                    if (fabs(fabs(t) - floor(fabs(t)) - 0.5) < 1e-5) {
                        ties++;
                        continue;
                    }
                } else {
                    q = floor(t + 8.5);
                    q = q > 15 ? 15 : q;
                    if (fabs(t + 8.5 - floor(t + 8.5)) < 1e-5) {
                        ties++;
                        continue;
                    }
                    q -= 8;
                }
                double want = q * d16;
                ck_assert_msg(fabs(y[32 * b + i] - want) <= 1e-6 * fabs(want),
                              "bits %u rep %d elem %d: x %g got %g want %g", bits, rep, i,
                              (double)xb[i], (double)y[32 * b + i], want);
            }
        }
    }
    ck_assert_int_lt(ties, 50);
}
END_TEST

/* ---------------------------------------------------------------- policies by hand */

#define TT 20
#define HD 64

static skv_qcfg qc(void)
{
    skv_qcfg q = {.head_dim = HD, .k_group = HD, .v_group = HD, .k_mode = SKV_QMODE_ASYM, .v_mode = SKV_QMODE_ASYM, .k_tokens = 0};
    return q;
}

/* beta giving exactly the bytes of `keep` tokens at `top` bits per unit,
 * the others at `low` bits (0 = evicted), over `units` units */
static double beta_for(uint32_t units, uint64_t keep, uint32_t top, uint32_t low)
{
    skv_qcfg q = qc();
    uint64_t b = skv_alloc_pkhd_bytes(&q) +
                 units * (skv_bucket_file_bytes(&q, top, keep) +
                          (low ? skv_bucket_file_bytes(&q, low, TT - keep) : 0));
    /* a hair above, so that floor(beta * fp16) is exactly b */
    return ((double)b + 0.5) / (double)skv_alloc_fp16_bytes(1, units, TT, HD);
}

static void solve(const char *pol, uint32_t units, double beta, const float *imp,
                  const uint8_t *stored, uint8_t *bits, uint32_t sinks, uint32_t recent)
{
    skv_alloc_cfg c;
    skv_alloc_cfg_defaults(&c);
    ck_assert_int_eq(skv_policy_parse(pol, &c.policy, &c.uniform_bits), 0);
    c.budget = beta;
    c.sinks = sinks;
    c.recent = recent;
    c.qcfg = qc();
    ck_assert_int_eq(skv_alloc_cfg_resolve(&c), 0);
    static float err[2 * TT * SKV_NBITS];
    for (size_t i = 0; i < sizeof err / sizeof *err; i++)
        err[i] = (float)(SKV_NBITS - i % SKV_NBITS); /* decreasing in the width */
    skv_alloc_problem p = {1, units, TT, imp, err, NULL, stored, NULL};
    skv_alloc_result r;
    ck_assert_msg(skv_alloc_solve(&c, &p, bits, &r) == 0, "%s: %s", pol, skv_errmsg());
    ck_assert_uint_le(r.bytes, r.budget_bytes);
}

static void expect(const uint8_t *bits, const int *kept, int nk, uint32_t top, uint32_t low)
{
    uint8_t want[TT];
    memset(want, (int)low, sizeof want);
    for (int i = 0; i < nk; i++)
        want[kept[i]] = (uint8_t)top;
    for (int j = 0; j < TT; j++)
        ck_assert_msg(bits[j] == want[j], "token %d: width %u, expected %u", j, bits[j], want[j]);
}

START_TEST(test_policies_by_hand)
{
    skv_alloc_cfg c0;
    skv_alloc_cfg_defaults(&c0);
    uint8_t bits[2 * TT];
    float imp[2 * TT] = {0};
    /* streaming, 2 sinks, 6 tokens' bytes: sinks 0, 1 and the newest 4 */
    solve("streaming", 1, beta_for(1, 6, 16, 0), imp, NULL, bits, 2, 32);
    int s1[] = {0, 1, 16, 17, 18, 19};
    expect(bits, s1, 6, 16, 0);
    /* h2o, 6 tokens: the newest 3 (recent half), then the 3 heaviest of the
     * rest by accumulated attention: 5 (0.9), 9 (0.7), 2 (0.5); token 18 is
     * heavy too but already in the window */
    imp[5] = 0.9f;
    imp[9] = 0.7f;
    imp[2] = 0.5f;
    imp[12] = 0.1f;
    imp[18] = 2.0f;
    solve("h2o", 1, beta_for(1, 6, 16, 0), imp, NULL, bits, 4, 32);
    int h1[] = {2, 5, 9, 17, 18, 19};
    expect(bits, h1, 6, 16, 0);
    /* mikv: the same choice at 16 bits, the rest at 2 */
    solve("mikv", 1, beta_for(1, 6, 16, 2), imp, NULL, bits, 4, 32);
    expect(bits, h1, 6, 16, 2);
    /* online: token 5 was evicted earlier and cannot come back; 12 (0.1) is
     * the next heavy hitter */
    uint8_t stored[2 * TT];
    memset(stored, 16, sizeof stored);
    stored[5] = 0;
    solve("h2o", 1, beta_for(1, 6, 16, 0), imp, stored, bits, 4, 32);
    int h2[] = {2, 9, 12, 17, 18, 19};
    expect(bits, h2, 6, 16, 0);
    /* snapkv, W = 4, 8 tokens: the window 16..19, and 4 tokens by votes
     * pooled over 0..15 (average of 5, zero padded): a vote of 1.0 at token
     * 3 gives 0.2 to tokens 1..5; votes of 0.6 at 10 and 11 give 0.24 to
     * 9..12 (and 0.12 to 8 and 13): 9..12 win although 3 has the largest
     * raw vote */
    memset(imp, 0, sizeof imp);
    imp[3] = 1.0f;
    imp[10] = 0.6f;
    imp[11] = 0.6f;
    imp[17] = 5.0f;
    solve("snapkv", 1, beta_for(1, 8, 16, 0), imp, NULL, bits, 4, 4);
    int v1[] = {9, 10, 11, 12, 16, 17, 18, 19};
    expect(bits, v1, 8, 16, 0);
    /* below 2W kept tokens the window kept is half: 6 tokens, window 17..19,
     * then 3 of 9..12 (ties: newer first): 10, 11, 12 */
    solve("snapkv", 1, beta_for(1, 6, 16, 0), imp, NULL, bits, 4, 4);
    int v2[] = {10, 11, 12, 17, 18, 19};
    expect(bits, v2, 6, 16, 0);
    /* two units and bytes for 5 + 4 tokens: one unit keeps one more (round
     * robin), and together the budget is spent */
    memset(imp, 0, sizeof imp);
    skv_qcfg q = qc();
    uint64_t b = skv_alloc_pkhd_bytes(&q) + skv_bucket_file_bytes(&q, 16, 5) +
                 skv_bucket_file_bytes(&q, 16, 4);
    solve("streaming", 2, ((double)b + 0.5) / (double)skv_alloc_fp16_bytes(1, 2, TT, HD), imp,
          NULL, bits, 4, 32);
    int n0 = 0, n1 = 0;
    for (int j = 0; j < TT; j++) {
        n0 += bits[j] == 16;
        n1 += bits[TT + j] == 16;
    }
    ck_assert_int_eq(n0, 5);
    ck_assert_int_eq(n1, 4);
    /* uniform-protect:4, 2 sinks and 3 recent: those at 16, the rest at 4;
     * uniform:4 protects nothing; both names read back as written */
    for (int up = 0; up < 2; up++) {
        const char *pol = up ? "uniform-protect:4" : "uniform:4";
        skv_alloc_cfg u;
        skv_alloc_cfg_defaults(&u);
        ck_assert_int_eq(skv_policy_parse(pol, &u.policy, &u.uniform_bits), 0);
        char name[32];
        skv_policy_format(u.policy, u.uniform_bits, name, sizeof name);
        ck_assert_str_eq(name, pol);
        u.budget = 0;
        u.sinks = 2;
        u.recent = 3;
        u.qcfg = qc();
        static float uerr[TT * SKV_NBITS];
        for (size_t i = 0; i < sizeof uerr / sizeof *uerr; i++)
            uerr[i] = (float)(SKV_NBITS - i % SKV_NBITS);
        skv_alloc_problem up_p = {1, 1, TT, imp, uerr, NULL, NULL, NULL};
        skv_alloc_result ur;
        ck_assert_msg(skv_alloc_solve(&u, &up_p, bits, &ur) == 0, "%s: %s", pol, skv_errmsg());
        int prot[] = {0, 1, 17, 18, 19};
        expect(bits, prot, up ? 5 : 0, 16, 4);
    }
    ck_assert_int_lt(skv_policy_parse("uniform-protect:5", &c0.policy, &c0.uniform_bits), 0);
    /* q8_0: every token at 8 bits in groups of 32 (mode ggml), bytes by hand:
     * per token 4 (index) + 2 x (2 scales x 2 + 64 codes) = 140 */
    skv_alloc_cfg c;
    skv_alloc_cfg_defaults(&c);
    ck_assert_int_eq(skv_policy_parse("q8_0", &c.policy, &c.uniform_bits), 0);
    ck_assert_int_eq(skv_alloc_cfg_resolve(&c), 0);
    c.qcfg.head_dim = 64;
    ck_assert_uint_eq(c.uniform_bits, 8);
    ck_assert_uint_eq(c.qcfg.k_group, 32);
    ck_assert_uint_eq(c.qcfg.v_mode, SKV_QMODE_GGML);
    ck_assert_uint_eq(skv_pbkt_payload_bytes(&c.qcfg, 8, 64) - SKV_PBKT_HEADER_LEN,
                      4 * 64 + 2 * (4 * 64) + 2 * (64 * 64));
    /* the eviction policies need a non-zero width, mikv two of them */
    skv_alloc_cfg_defaults(&c);
    ck_assert_int_eq(skv_policy_parse("mikv", &c.policy, &c.uniform_bits), 0);
    c.width_mask = 1u << 16;
    ck_assert_int_eq(skv_alloc_cfg_resolve(&c), SKV_EINVAL);
    c.width_mask = SKV_WIDTH_MASK_DEFAULT;
    ck_assert_int_eq(skv_alloc_cfg_resolve(&c), 0);
    ck_assert_uint_eq(c.width_mask, (1u << 2) | (1u << 16));
    ck_assert_int_eq(skv_policy_parse("streaming", &c.policy, &c.uniform_bits), 0);
    c.width_mask = SKV_WIDTH_MASK_DEFAULT;
    ck_assert_int_eq(skv_alloc_cfg_resolve(&c), 0);
    ck_assert_uint_eq(c.width_mask, 1u | (1u << 16));
}
END_TEST

/* ---------------------------------------------------------------- online */

#define L_ 2
#define H_ 4
#define KH_ 2
#define D_ 64
#define T_ 160

static float K[L_][T_][KH_ * D_], V[L_][T_][KH_ * D_], Q[T_][H_ * D_];

static float frand(void) { return (float)(drand() * 2 - 1); }

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

static void append(skv_kv_cache *c, uint32_t p0, uint32_t p1)
{
    for (uint32_t l = 0; l < L_; l++)
        ck_assert_msg(c->ops->append(c, l, p0, p1 - p0, &K[l][p0][0], &V[l][p0][0]) == 0, "%s",
                      skv_errmsg());
}

/* out [L][H][n][D], probs [L][H][n][T_] */
static float OUT[L_ * H_ * 64 * D_], PR[L_ * H_ * 64 * T_];
static void attend(skv_kv_cache *c, uint32_t p0, uint32_t p1)
{
    uint32_t n = p1 - p0;
    for (uint32_t l = 0; l < L_; l++)
        for (uint32_t h = 0; h < H_; h++)
            ck_assert_msg(c->ops->attend(c, l, h, p0, n, &Q[p0][h * D_], H_ * D_, 0.125f,
                                         OUT + ((size_t)l * H_ + h) * n * D_, D_,
                                         PR + ((size_t)l * H_ + h) * n * T_, T_) == 0,
                          "%s", skv_errmsg());
}

static skv_kv_cache *cache(const char *pol, double beta)
{
    skv_ec_cfg c;
    skv_ec_defaults(&c);
    ck_assert_int_eq(skv_policy_parse(pol, &c.alloc.policy, &c.alloc.uniform_bits), 0);
    c.alloc.budget = beta;
    skv_kv_cache *k = skv_ec_new(&c, L_, H_, KH_, D_, T_);
    ck_assert_msg(k != NULL, "%s", skv_errmsg());
    return k;
}

/* Prefill [0, 64) held at fp16 with every query row attended (what the
 * model does), then one allocation. */
static void prefill(skv_kv_cache *k)
{
    skv_ec_hold(k, 1);
    append(k, 0, 64);
    attend(k, 0, 64);
    skv_ec_hold(k, 0);
    ck_assert_msg(skv_ec_realloc(k) == 0, "%s", skv_errmsg());
}

/* streaming: after the prefill, the kept tokens are the 4 sinks and a recent
 * window, as many as beta allows; attention of the next rows equals float64
 * attention over exactly the kept (fp16) tokens and the pending ones, the
 * evicted get probability 0 and no bytes; evicted tokens never come back. */
START_TEST(test_online_eviction)
{
    fill();
    skv_kv_cache *k = cache("streaming", 0.3);
    prefill(k);
    skv_ec_stats s;
    ck_assert_int_eq(skv_ec_stats_get(k, &s), 0);
    double beta = (double)s.bytes / (double)s.fp16_bytes;
    ck_assert_msg(beta <= 0.3 && beta > 0.3 - 1.5 / 64, "beta %g", beta);
    /* as equal across (layer, KV head) as the bytes allow: k or k + 1 each */
    uint64_t kept = s.hist[skv_width_index(16)] / (L_ * KH_);
    ck_assert_uint_gt(kept, 8);
    skv_qcfg q = {.head_dim = D_, .k_group = D_, .v_group = D_, .k_mode = SKV_QMODE_ASYM, .v_mode = SKV_QMODE_ASYM, .k_tokens = 0};
    uint64_t bytes = skv_alloc_pkhd_bytes(&q);
    for (uint32_t l = 0; l < L_; l++)
        for (uint32_t h = 0; h < KH_; h++) {
            const uint8_t *w = skv_ec_widths(k, l, h);
            uint64_t ku = 0;
            for (uint32_t t = 0; t < 64; t++)
                ku += w[t] == 16;
            ck_assert(ku == kept || ku == kept + 1);
            for (uint32_t t = 0; t < 64; t++)
                ck_assert_uint_eq(w[t], t < 4 || t >= 64 - (ku - 4) ? 16 : 0);
            bytes += skv_bucket_file_bytes(&q, 16, ku);
        }
    /* bytes: the byte model of the kept tokens only */
    ck_assert_uint_eq(s.bytes, bytes);
    append(k, 64, 72);
    attend(k, 64, 72);
    for (uint32_t l = 0; l < L_; l++)
        for (uint32_t h = 0; h < H_; h++) {
            const uint8_t *w = skv_ec_widths(k, l, h / (H_ / KH_));
            uint32_t kh = h / (H_ / KH_);
            for (uint32_t i = 0; i < 8; i++) {
                uint32_t t = 64 + i;
                double sc[T_], mx = -INFINITY, sum = 0, o[D_] = {0};
                for (uint32_t u = 0; u <= t; u++) {
                    sc[u] = -INFINITY;
                    if (u < 64 && w[u] == 0)
                        continue; /* evicted */
                    double a = 0;
                    for (int j = 0; j < D_; j++)
                        a += (double)Q[t][h * D_ + j] *
                             skv_f16_to_f32(skv_f32_to_f16(K[l][u][kh * D_ + j]));
                    sc[u] = a * 0.125;
                    mx = sc[u] > mx ? sc[u] : mx;
                }
                for (uint32_t u = 0; u <= t; u++) {
                    sc[u] = isinf(sc[u]) ? 0 : exp(sc[u] - mx);
                    sum += sc[u];
                }
                for (uint32_t u = 0; u <= t; u++)
                    for (int j = 0; j < D_; j++)
                        o[j] += sc[u] / sum * skv_f16_to_f32(skv_f32_to_f16(V[l][u][kh * D_ + j]));
                const float *got = OUT + (((size_t)l * H_ + h) * 8 + i) * D_;
                for (int j = 0; j < D_; j++)
                    ck_assert_msg(fabs(got[j] - o[j]) <= 1e-5, "l%u h%u t%u: %g vs %g", l, h, t,
                                  (double)got[j], o[j]);
                const float *pr = PR + (((size_t)l * H_ + h) * 8 + i) * T_;
                for (uint32_t u = 0; u <= t; u++)
                    ck_assert(fabs(pr[u] - sc[u] / sum) <= 1e-6);
            }
        }
    /* more reallocations: what was evicted stays evicted */
    uint8_t before[64];
    memcpy(before, skv_ec_widths(k, 1, 1), 64);
    for (uint32_t p = 72; p < 160; p += 8) {
        append(k, p, p + 8);
        attend(k, p, p + 8);
    }
    ck_assert_int_eq(skv_ec_stats_get(k, &s), 0);
    ck_assert_uint_gt(s.n_realloc, 3);
    const uint8_t *after = skv_ec_widths(k, 1, 1);
    for (uint32_t t = 0; t < 64; t++)
        if (before[t] == 0)
            ck_assert_uint_eq(after[t], 0);
    skv_kv_cache_free(k);
}
END_TEST

/* h2o and snapkv after a prefill: the kept tokens are those a float64
 * computation from the attention the cache returned picks (accumulated over
 * every query row; or the last 32 rows' votes, pooled). */
static int cmp_desc(const void *a, const void *b)
{
    const double *x = a, *y = b;
    return x[0] != y[0] ? (x[0] > y[0] ? -1 : 1) : (x[1] > y[1] ? -1 : 1);
}

START_TEST(test_online_importance)
{
    for (int pol = 0; pol < 2; pol++) {
        fill();
        skv_kv_cache *k = cache(pol ? "snapkv" : "h2o", 0.45);
        skv_ec_hold(k, 1);
        append(k, 0, 64);
        attend(k, 0, 64);
        static float pr[L_ * H_ * 64 * T_];
        memcpy(pr, PR, sizeof pr);
        skv_ec_hold(k, 0);
        ck_assert_int_eq(skv_ec_realloc(k), 0);
        for (uint32_t l = 0; l < L_; l++)
            for (uint32_t kh = 0; kh < KH_; kh++) {
                const uint8_t *w = skv_ec_widths(k, l, kh);
                uint32_t kept = 0;
                for (uint32_t t = 0; t < 64; t++)
                    kept += w[t] == 16;
                ck_assert_uint_gt(kept, 20);
                double score[64] = {0};
                for (uint32_t g = 0; g < H_ / KH_; g++) {
                    uint32_t h = kh * (H_ / KH_) + g;
                    for (uint32_t i = pol ? 32 : 0; i < 64; i++)
                        for (uint32_t t = 0; t <= i; t++)
                            score[t] += pr[(((size_t)l * H_ + h) * 64 + i) * T_ + t];
                }
                uint32_t win = pol ? (kept >= 64 ? 32 : (kept + 1) / 2) : kept - kept / 2;
                uint32_t p = 64 - win;
                double r[64][2];
                for (uint32_t t = 0; t < p; t++) {
                    double v = 0;
                    if (pol) {
                        for (int o = -2; o <= 2; o++)
                            if ((int)t + o >= 0 && (int)t + o < (int)p)
                                v += score[t + o];
                        v /= 5;
                    } else {
                        v = score[t];
                    }
                    r[t][0] = v;
                    r[t][1] = t;
                }
                qsort(r, p, sizeof r[0], cmp_desc);
                uint8_t want[64] = {0};
                for (uint32_t t = p; t < 64; t++)
                    want[t] = 16;
                for (uint32_t i = 0; i < kept - win; i++)
                    want[(int)r[i][1]] = 16;
                for (uint32_t t = 0; t < 64; t++)
                    ck_assert_msg(w[t] == want[t], "%s l%u kv%u token %u: %u vs %u",
                                  pol ? "snapkv" : "h2o", l, kh, t, w[t], want[t]);
            }
        skv_kv_cache_free(k);
    }
}
END_TEST

int main(void)
{
    Suite *su = suite_create("baselines");
    TCase *tc = tcase_create("baselines");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_ggml_by_hand);
    tcase_add_test(tc, test_ggml_float64_reference);
    tcase_add_test(tc, test_policies_by_hand);
    tcase_add_test(tc, test_online_eviction);
    tcase_add_test(tc, test_online_importance);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int nf = srunner_ntests_failed(sr);
    srunner_free(sr);
    return nf != 0;
}
