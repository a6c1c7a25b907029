/* test_cuda.c -- the CUDA kernels.
 *
 * Always (CPU): the shared encode arithmetic of smartkv_qencode.h, which the
 * GPU pack kernel runs, is bit-identical to the CPU quantizer's reference
 * (skv_quantize_row_ref) and fp16 conversion; the API reports SKV_ENODEV
 * cleanly without a device.
 *
 * With a CUDA device: GPU packing is byte-identical to skv_pbkt_encode;
 * GPU decode attention equals the CPU fused packed attention
 * (skv_attend_layer) within 1e-3 relative for every width, mixed caches
 * with evictions, GQA ratios and lengths 1..64K; the fused attention mass
 * equals the CPU probabilities summed over each GQA group; the dense fp16
 * kernel and the cuBLAS baseline equal the CPU dense fp16 attention.
 *
 * Without a device the GPU tests are not run: the program prints a SKIP
 * line and exits 77 (scripts/run-unit-tests counts it as skipped, not
 * passed) when everything that ran passed.
 */
#include "smartkv.h"
#include "smartkv_qencode.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SKIP_RC 77

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}
static double urand(void) { return (double)(rnd() >> 11) / 9007199254740992.0; }
static float nrand(void)
{
    double u = urand() + 1e-12, v = urand();
    return (float)(sqrt(-2 * log(u)) * cos(6.283185307179586 * v));
}

/* ---- CPU: shared arithmetic ---- */

START_TEST(test_f16_conversions)
{
    for (uint32_t h = 0; h < 65536; h++) {
        float a = skv_qm_h2f(h), b = skv_f16_to_f32((uint16_t)h);
        uint32_t ua, ub;
        memcpy(&ua, &a, 4);
        memcpy(&ub, &b, 4);
        ck_assert_msg(ua == ub, "fp16 %#x: %#x vs %#x", h, ua, ub);
    }
    static const float edge[] = {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, -65520.0f,
                                 0x1p-24f, 0x1p-25f, 0x1.8p-25f, 0x1p-14f, 0x1.ffcp-15f,
                                 INFINITY, -INFINITY, NAN, 1.0f + 0x1p-11f, 1.0f + 0x3p-11f};
    for (size_t i = 0; i < sizeof edge / sizeof *edge; i++)
        ck_assert_uint_eq(skv_qm_f2h(edge[i]), skv_f32_to_f16(edge[i]));
    for (int i = 0; i < 2000000; i++) {
        uint32_t u = (uint32_t)rnd();
        float f;
        memcpy(&f, &u, 4);
        ck_assert_msg(skv_qm_f2h(f) == skv_f32_to_f16(f), "f32 %#x", u);
    }
}
END_TEST

static void fill_row(float *x, uint32_t d, int kind)
{
    for (uint32_t j = 0; j < d; j++) {
        switch (kind) {
        case 0: x[j] = nrand(); break;                       /* plain */
        case 1: x[j] = nrand() * (j % 7 == 3 ? 40.0f : 1.0f); break; /* outlier channels */
        case 2: x[j] = 3.25f; break;                         /* constant: zero scale */
        case 3: x[j] = (j & 1) ? -0.0f : 0.0f; break;        /* signed zeros */
        case 4: x[j] = (j & 1) ? 65504.0f : -65504.0f; break; /* the range ends */
        case 5: x[j] = nrand() * 1e-6f; break;               /* subnormal fp16 scales */
        default: x[j] = (float)(int)(nrand() * 4) * 0.5f; break; /* ties */
        }
    }
}

START_TEST(test_encode_matches_quantizer)
{
    static const uint32_t dims[] = {64, 128, 40, 12, 96, 8};
    static const uint32_t widths[] = {2, 3, 4, 8};
    float x[1024];
    uint8_t p1[4096], d1[1024], p2[4096], d2[1024];
    long rows = 0;
    for (size_t di = 0; di < sizeof dims / sizeof *dims; di++) {
        uint32_t d = dims[di];
        for (uint32_t group = 1; group <= d; group++) {
            if (d % group || (group < 4 && d > 16))
                continue;
            for (size_t wi = 0; wi < 4; wi++)
                for (uint32_t mode = 1; mode <= 2; mode++)
                    for (int kind = 0; kind < 7; kind++)
                        for (int rep = 0; rep < (kind < 2 ? 6 : 1); rep++) {
                            fill_row(x, d, kind);
                            uint32_t bits = widths[wi];
                            size_t pb = skv_par_bytes(bits, d, group, mode);
                            size_t rb = skv_row_bytes(bits, d);
                            memset(p1, 0xaa, pb);
                            memset(d1, 0xaa, rb);
                            memset(p2, 0x55, pb);
                            memset(d2, 0x55, rb);
                            ck_assert_int_eq(skv_quantize_row_ref(x, d, bits, group, mode, p1, d1),
                                             0);
                            skv_qe_quantize_row(x, d, bits, group, mode, p2, d2);
                            ck_assert_msg(!memcmp(p1, p2, pb) && !memcmp(d1, d2, rb),
                                          "d=%u group=%u bits=%u mode=%u kind=%d: encode "
                                          "differs from skv_quantize_row_ref", d, group, bits,
                                          mode, kind);
                            rows++;
                        }
        }
    }
    ck_assert_int_gt(rows, 1000);
}
END_TEST

START_TEST(test_api_without_device)
{
    int rc = skv_cuda_available();
    if (rc == 1)
        return; /* a device: the GPU tests cover the API */
    ck_assert_int_eq(rc, SKV_ENODEV);
    ck_assert_msg(strstr(skv_errmsg(), "no CUDA"), "message: %s", skv_errmsg());
    skv_cuda_shape sh = {1, 1, 1, 64, 16};
    ck_assert_ptr_null(skv_cuda_cache_upload(&sh, NULL, NULL, 0));
    ck_assert_msg(strstr(skv_errmsg(), "no CUDA"), "message: %s", skv_errmsg());
    skv_qcfg q = {.head_dim = 64, .k_group = 64, .v_group = 64, .k_mode = SKV_QMODE_ASYM, .v_mode = SKV_QMODE_ASYM, .k_tokens = 0};
    uint32_t idx = 0;
    float k[64] = {0}, v[64] = {0};
    uint8_t out[1024];
    ck_assert_int_eq(skv_cuda_pack(&q, 0, 0, 4, 0, &idx, 1, k, v, out,
                                   skv_pbkt_payload_bytes(&q, 4, 1)),
                     SKV_ENODEV);
    double gbs = 1;
    ck_assert_int_eq(skv_cuda_copy_bandwidth(1 << 20, 1, &gbs), SKV_ENODEV);
    ck_assert(gbs == 0);
}
END_TEST

/* ---- GPU ---- */

START_TEST(test_gpu_pack_identical)
{
    static const uint32_t widths[] = {2, 3, 4, 8, 16};
    static const uint32_t ns[] = {1, 37, 300};
    struct { uint32_t d, kg, vg, km, vm; } cfgs[] = {
        {64, 64, 64, 1, 1}, {64, 32, 16, 2, 1}, {128, 128, 32, 1, 2}, {40, 8, 40, 1, 1},
        {12, 4, 6, 2, 2}};
    for (size_t ci = 0; ci < sizeof cfgs / sizeof *cfgs; ci++)
        for (size_t wi = 0; wi < 5; wi++)
            for (size_t ni = 0; ni < 3; ni++) {
                skv_qcfg q = {.head_dim = cfgs[ci].d, .k_group = cfgs[ci].kg,
                              .v_group = cfgs[ci].vg, .k_mode = cfgs[ci].km,
                              .v_mode = cfgs[ci].vm};
                uint32_t n = ns[ni], d = q.head_dim, bits = widths[wi];
                uint32_t *idx = malloc(n * 4);
                float *k = malloc((size_t)n * d * 4), *v = malloc((size_t)n * d * 4);
                float *kt = calloc((size_t)(3 * n + 1) * d, 4), *vt = calloc((size_t)(3 * n + 1) * d, 4);
                for (uint32_t i = 0; i < n; i++) {
                    idx[i] = 3 * i + (uint32_t)(rnd() % 3);
                    fill_row(k + (size_t)i * d, d, (int)(rnd() % 7));
                    fill_row(v + (size_t)i * d, d, (int)(rnd() % 7));
                    memcpy(kt + (size_t)idx[i] * d, k + (size_t)i * d, d * 4);
                    memcpy(vt + (size_t)idx[i] * d, v + (size_t)i * d, d * 4);
                }
                uint64_t size = skv_pbkt_payload_bytes(&q, bits, n);
                uint8_t *a = malloc(size), *b = malloc(size);
                ck_assert_msg(skv_pbkt_encode(a, size, &q, 2, 1, bits, 0, idx, n, kt, vt) == 0,
                              "%s", skv_errmsg());
                ck_assert_msg(skv_cuda_pack(&q, 2, 1, bits, 0, idx, n, k, v, b, size) == 0, "%s",
                              skv_errmsg());
                uint64_t first = size;
                for (uint64_t i = 0; i < size; i++)
                    if (a[i] != b[i]) {
                        first = i;
                        break;
                    }
                ck_assert_msg(first == size, "d=%u groups %u/%u modes %u/%u %u-bit n=%u: GPU "
                              "payload differs from the CPU packer at byte %llu of %llu", d,
                              q.k_group, q.v_group, q.k_mode, q.v_mode, bits, n,
                              (unsigned long long)first, (unsigned long long)size);
                free(idx); free(k); free(v); free(kt); free(vt); free(a); free(b);
            }
    /* a value beyond the fp16 range names the token */
    skv_qcfg q = {.head_dim = 64, .k_group = 64, .v_group = 64, .k_mode = 1, .v_mode = 1, .k_tokens = 0};
    uint32_t idx[2] = {5, 9};
    float k[128] = {0}, v[128] = {0};
    v[64 + 3] = 1e6f;
    uint64_t size = skv_pbkt_payload_bytes(&q, 4, 2);
    uint8_t *b = malloc(size);
    ck_assert_int_eq(skv_cuda_pack(&q, 0, 0, 4, 0, idx, 2, k, v, b, size), SKV_EFORMAT);
    ck_assert_msg(strstr(skv_errmsg(), "V of layer 0 kv head 0 token 9"), "%s", skv_errmsg());
    free(b);
}
END_TEST

/* A packed cache built in memory: payloads per (layer, kv head, width) and
 * the CPU's view of them (skv_cache_head with decoded buckets). */
typedef struct {
    uint32_t L, H, Hkv, d;
    uint64_t T;
    skv_qcfg q;
    uint8_t **pay;
    uint64_t *size;
    size_t n;
    skv_cache_head *heads;   /* [L * Hkv] */
    float *qv;               /* [L][H][T][d] */
} mcache;

static void mcache_build(mcache *m, uint32_t L, uint32_t H, uint32_t Hkv, uint32_t d, uint64_t T,
                         skv_qcfg q, int width)
{
    memset(m, 0, sizeof *m);
    m->L = L, m->H = H, m->Hkv = Hkv, m->d = d, m->T = T, m->q = q;
    m->heads = calloc((size_t)L * Hkv, sizeof *m->heads);
    m->pay = calloc((size_t)L * Hkv * 16, sizeof *m->pay);
    m->size = calloc((size_t)L * Hkv * 16, sizeof *m->size);
    m->qv = malloc((size_t)L * H * T * d * 4);
    for (size_t i = 0; i < (size_t)L * H * T * d; i++)
        m->qv[i] = nrand() * 0.6f;
    float *k = malloc((size_t)T * d * 4), *v = malloc((size_t)T * d * 4);
    uint8_t *bits = malloc(T);
    uint32_t *idx = malloc(T * 4);
    static const uint32_t w[] = {0, 2, 3, 4, 8, 16};
    for (uint32_t l = 0; l < L; l++)
        for (uint32_t h = 0; h < Hkv; h++) {
            for (uint64_t t = 0; t < T * d; t++) {
                k[t] = nrand() * ((t % d) % 9 == 2 ? 6.0f : 1.0f);
                v[t] = nrand();
            }
            for (uint64_t t = 0; t < T; t++)
                bits[t] = width ? (uint8_t)width : (uint8_t)w[rnd() % 6];
            if (!width && T > 1)
                bits[0] = 16, bits[T - 1] = 0;
            skv_cache_head *ch = &m->heads[(size_t)l * Hkv + h];
            ch->buckets = calloc(16, sizeof *ch->buckets);
            for (int wi = 1; wi < 6; wi++) {
                uint32_t n = 0;
                for (uint64_t t = 0; t < T; t++)
                    if (bits[t] == w[wi])
                        idx[n++] = (uint32_t)t;
                uint64_t max = skv_pbkt_max_tokens(&q, w[wi]);
                for (uint32_t part = 0; (uint64_t)part * max < n; part++) {
                    uint32_t i0 = (uint32_t)(part * max);
                    uint32_t cnt = (uint32_t)((n - i0) < max ? n - i0 : max);
                    uint64_t size = skv_pbkt_payload_bytes(&q, w[wi], cnt);
                    uint8_t *p = aligned_alloc(64, (size + 63) / 64 * 64);
                    ck_assert_msg(skv_pbkt_encode(p, size, &q, l, h, w[wi], part, idx + i0, cnt,
                                                  k, v) == 0, "%s", skv_errmsg());
                    m->pay[m->n] = p;
                    m->size[m->n++] = size;
                    ck_assert_msg(skv_pbkt_decode(p, size, T, &ch->buckets[ch->n_buckets]) == 0,
                                  "%s", skv_errmsg());
                    ch->n_stored += cnt;
                    ch->n_buckets++;
                }
            }
        }
    free(k); free(v); free(bits); free(idx);
}

static void mcache_free(mcache *m)
{
    for (size_t i = 0; i < m->n; i++)
        free(m->pay[i]);
    for (size_t i = 0; i < (size_t)m->L * m->Hkv; i++)
        free(m->heads[i].buckets);
    free(m->heads); free(m->pay); free(m->size); free(m->qv);
}

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
        if (isnan(rel))
            return INFINITY;
        worst = rel > worst ? rel : worst;
    }
    return worst;
}

/* GPU vs CPU fused packed attention on one in-memory cache. */
static void attend_case(uint32_t L, uint32_t H, uint32_t Hkv, uint32_t d, uint64_t T, skv_qcfg q,
                        int width, uint32_t n_steps, int with_mass)
{
    mcache m;
    mcache_build(&m, L, H, Hkv, d, T, q, width);
    uint64_t *steps = malloc(n_steps * 8);
    /* ascending steps ending at the last token, spread over the second half */
    uint64_t stride = n_steps > 1 ? (T - 1) / (2 * (n_steps - 1)) : 1;
    if (stride == 0)
        stride = 1;
    ck_assert_uint_ge(T, n_steps);
    for (uint32_t s = 0; s < n_steps; s++)
        steps[s] = T - 1 - (uint64_t)(n_steps - 1 - s) * stride;
    skv_cuda_shape sh = {L, H, Hkv, d, T};
    skv_cuda_cache *cc = skv_cuda_cache_upload(&sh, (const uint8_t *const *)m.pay, m.size, m.n);
    ck_assert_msg(cc != NULL, "%s", skv_errmsg());
    size_t per = (size_t)H * n_steps * d;
    float *qg = malloc((size_t)L * per * 4), *og = malloc((size_t)L * per * 4);
    float *oc = malloc(per * 4);
    float *mass = with_mass ? malloc((size_t)L * Hkv * n_steps * T * 4) : NULL;
    float *prob = with_mass ? malloc((size_t)H * n_steps * T * 4) : NULL;
    for (uint32_t l = 0; l < L; l++)
        for (uint32_t h = 0; h < H; h++)
            for (uint32_t s = 0; s < n_steps; s++)
                memcpy(qg + (((size_t)l * H + h) * n_steps + s) * d,
                       m.qv + (((size_t)l * H + h) * T + steps[s]) * d, d * 4);
    ck_assert_msg(skv_cuda_attend(cc, 0, L, n_steps, steps, qg, og, mass, NULL) == 0, "%s",
                  skv_errmsg());
    skv_attend_opts ao = {2, SKV_KERNEL_AUTO, 0};
    skv_attend_ctx *ctx = skv_attend_new(&ao);
    ck_assert_ptr_nonnull(ctx);
    for (uint32_t l = 0; l < L; l++) {
        skv_kv_view V = {SKV_KV_PACKED, H, Hkv, d, T, m.qv + (size_t)l * H * T * d, NULL, NULL,
                         &m.heads[(size_t)l * Hkv]};
        ck_assert_msg(skv_attend_layer(ctx, &V, steps, n_steps, oc, prob) == 0, "%s",
                      skv_errmsg());
        double e = max_rel(og + (size_t)l * per, oc, (size_t)H * n_steps, d);
        ck_assert_msg(e <= 1e-3, "layer %u of %u, H=%u/%u d=%u T=%llu width %d groups %u/%u "
                      "modes %u/%u steps %u: GPU vs CPU relative error %g", l, L, H, Hkv, d,
                      (unsigned long long)T, width, q.k_group, q.v_group, q.k_mode, q.v_mode,
                      n_steps, e);
        if (with_mass) {
            uint32_t g = H / Hkv;
            double worst = 0;
            for (uint32_t kh = 0; kh < Hkv; kh++)
                for (uint32_t s = 0; s < n_steps; s++)
                    for (uint64_t t = 0; t < T; t++) {
                        double want = 0;
                        for (uint32_t j = 0; j < g; j++)
                            want += prob[(((size_t)kh * g + j) * n_steps + s) * T + t];
                        double got = mass[(((size_t)l * Hkv + kh) * n_steps + s) * T + t];
                        worst = fmax(worst, fabs(got - want));
                    }
            ck_assert_msg(worst <= 1e-4, "attention mass differs from the CPU by %g", worst);
        }
    }
    /* the repeat path reruns the same kernels */
    float ms = -1;
    ck_assert_msg(skv_cuda_attend_repeat(cc, 2, &ms) == 0, "%s", skv_errmsg());
    ck_assert(ms >= 0);
    skv_attend_free(ctx);
    skv_cuda_cache_free(cc);
    free(steps); free(qg); free(og); free(oc); free(mass); free(prob);
    mcache_free(&m);
}

START_TEST(test_gpu_attend_widths)
{
    static const int widths[] = {2, 3, 4, 8, 16, 0};
    for (size_t i = 0; i < 6; i++) {
        skv_qcfg a = {.head_dim = 64, .k_group = 64, .v_group = 64, .k_mode = SKV_QMODE_ASYM, .v_mode = SKV_QMODE_ASYM, .k_tokens = 0};
        attend_case(1, 9, 3, 64, 61, a, widths[i], 3, 1);
        skv_qcfg b = {.head_dim = 32, .k_group = 16, .v_group = 8, .k_mode = SKV_QMODE_SYM, .v_mode = SKV_QMODE_ASYM, .k_tokens = 0};
        attend_case(2, 4, 1, 32, 40, b, widths[i], 2, 1);
        skv_qcfg c = {.head_dim = 128, .k_group = 32, .v_group = 128, .k_mode = SKV_QMODE_ASYM, .v_mode = SKV_QMODE_SYM, .k_tokens = 0};
        attend_case(1, 8, 2, 128, 300, c, widths[i], 1, 0);
        skv_qcfg e = {.head_dim = 40, .k_group = 8, .v_group = 20, .k_mode = SKV_QMODE_ASYM, .v_mode = SKV_QMODE_ASYM, .k_tokens = 0};  /* not a multiple of 8 lanes */
        attend_case(1, 2, 2, 40, 33, e, widths[i], 1, 0);
    }
}
END_TEST

START_TEST(test_gpu_attend_shapes)
{
    skv_qcfg q = {.head_dim = 64, .k_group = 64, .v_group = 64, .k_mode = SKV_QMODE_ASYM, .v_mode = SKV_QMODE_ASYM, .k_tokens = 0};
    attend_case(1, 1, 1, 64, 1, q, 0, 1, 1);        /* single token */
    attend_case(1, 1, 1, 64, 1, q, 4, 1, 1);
    attend_case(1, 12, 1, 64, 45, q, 0, 3, 1);      /* 36 queries per group: passes */
    attend_case(1, 32, 8, 64, 1000, q, 0, 2, 0);    /* GQA 4:1 */
    attend_case(3, 8, 8, 64, 257, q, 0, 1, 0);      /* MHA, 3 layers */
    skv_qcfg big = {.head_dim = 256, .k_group = 256, .v_group = 256, .k_mode = SKV_QMODE_ASYM, .v_mode = SKV_QMODE_ASYM, .k_tokens = 0};
    attend_case(1, 4, 1, 256, 100, big, 0, 1, 0);
    skv_qcfg huge = {.head_dim = 512, .k_group = 128, .v_group = 128, .k_mode = SKV_QMODE_ASYM, .v_mode = SKV_QMODE_ASYM, .k_tokens = 0};
    attend_case(1, 6, 2, 512, 70, huge, 0, 1, 0);    /* two blocks of 8 per lane */
    skv_qcfg h1k = {.head_dim = 1024, .k_group = 256, .v_group = 256, .k_mode = SKV_QMODE_SYM, .v_mode = SKV_QMODE_SYM, .k_tokens = 0};
    attend_case(1, 2, 1, 1024, 50, h1k, 0, 1, 0);   /* four per lane */
}
END_TEST

START_TEST(test_gpu_attend_long)
{
    skv_qcfg q = {.head_dim = 64, .k_group = 64, .v_group = 64, .k_mode = SKV_QMODE_ASYM, .v_mode = SKV_QMODE_ASYM, .k_tokens = 0};
    attend_case(1, 9, 3, 64, 4096, q, 0, 2, 1);
    attend_case(1, 9, 3, 64, 65536, q, 0, 2, 0);
    attend_case(1, 4, 1, 64, 65536, q, 2, 1, 0);
    skv_qcfg g = {.head_dim = 128, .k_group = 32, .v_group = 32, .k_mode = SKV_QMODE_ASYM, .v_mode = SKV_QMODE_ASYM, .k_tokens = 0};
    attend_case(1, 8, 2, 128, 65536, g, 0, 1, 0);
}
END_TEST

START_TEST(test_gpu_dense_baselines)
{
    const uint32_t L = 2, H = 6, Hkv = 2, d = 64;
    const uint64_t T = 777;
    const uint32_t S = 2;
    uint64_t steps[2] = {300, 776};
    size_t nkv = (size_t)L * Hkv * T * d;
    float *k = malloc(nkv * 4), *v = malloc(nkv * 4), *q = malloc((size_t)L * H * T * d * 4);
    for (size_t i = 0; i < nkv; i++)
        k[i] = nrand(), v[i] = nrand();
    for (size_t i = 0; i < (size_t)L * H * T * d; i++)
        q[i] = nrand() * 0.5f;
    skv_cuda_shape sh = {L, H, Hkv, d, T};
    skv_cuda_dense *D = skv_cuda_dense_upload(&sh, k, v);
    ck_assert_msg(D != NULL, "%s", skv_errmsg());
    size_t per = (size_t)H * S * d;
    float *qg = malloc(L * per * 4), *o1 = malloc(L * per * 4), *o2 = malloc(L * per * 4);
    float *oc = malloc(per * 4);
    for (uint32_t l = 0; l < L; l++)
        for (uint32_t h = 0; h < H; h++)
            for (uint32_t s = 0; s < S; s++)
                memcpy(qg + (((size_t)l * H + h) * S + s) * d,
                       q + (((size_t)l * H + h) * T + steps[s]) * d, d * 4);
    ck_assert_msg(skv_cuda_dense_attend(D, SKV_CUDA_DENSE_KERNEL, S, steps, qg, o1, NULL) == 0,
                  "%s", skv_errmsg());
    ck_assert_msg(skv_cuda_dense_attend(D, SKV_CUDA_DENSE_CUBLAS, S, steps, qg, o2, NULL) == 0,
                  "%s", skv_errmsg());
    uint16_t *k16 = malloc(nkv * 2), *v16 = malloc(nkv * 2);
    skv_convert_from_f32(SKV_F16, k, k16, nkv);
    skv_convert_from_f32(SKV_F16, v, v16, nkv);
    skv_attend_ctx *ctx = skv_attend_new(NULL);
    for (uint32_t l = 0; l < L; l++) {
        size_t off = (size_t)l * Hkv * T * d;
        skv_kv_view V = {SKV_KV_F16, H, Hkv, d, T, q + (size_t)l * H * T * d, k16 + off,
                         v16 + off, NULL};
        ck_assert_int_eq(skv_attend_layer(ctx, &V, steps, S, oc, NULL), 0);
        double e1 = max_rel(o1 + l * per, oc, (size_t)H * S, d);
        ck_assert_msg(e1 <= 1e-3, "dense fp16 kernel vs CPU: %g", e1);
        double e2 = max_rel(o2 + l * per, oc, (size_t)H * S, d);
        ck_assert_msg(e2 <= 5e-3, "cuBLAS baseline vs CPU: %g (P is rounded to fp16)", e2);
    }
    float ms = -1;
    ck_assert_int_eq(skv_cuda_dense_repeat(D, SKV_CUDA_DENSE_CUBLAS, 2, &ms), 0);
    double gbs = 0;
    ck_assert_int_eq(skv_cuda_copy_bandwidth(64 << 20, 3, &gbs), 0);
    ck_assert(gbs > 0);
    skv_attend_free(ctx);
    skv_cuda_dense_free(D);
    free(k); free(v); free(q); free(qg); free(o1); free(o2); free(oc); free(k16); free(v16);
}
END_TEST

int main(void)
{
    int gpu = skv_cuda_available() == 1;
    char why[256];
    snprintf(why, sizeof why, "%s", gpu ? "" : skv_errmsg());
    Suite *s = suite_create("cuda");
    TCase *tc = tcase_create("cpu");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_f16_conversions);
    tcase_add_test(tc, test_encode_matches_quantizer);
    tcase_add_test(tc, test_api_without_device);
    suite_add_tcase(s, tc);
    static const char *gpu_tests[] = {"test_gpu_pack_identical", "test_gpu_attend_widths",
                                      "test_gpu_attend_shapes", "test_gpu_attend_long",
                                      "test_gpu_dense_baselines"};
    if (gpu) {
        TCase *tg = tcase_create("gpu");
        tcase_set_timeout(tg, 600);
        tcase_add_test(tg, test_gpu_pack_identical);
        tcase_add_test(tg, test_gpu_attend_widths);
        tcase_add_test(tg, test_gpu_attend_shapes);
        tcase_add_test(tg, test_gpu_attend_long);
        tcase_add_test(tg, test_gpu_dense_baselines);
        suite_add_tcase(s, tg);
    }
    SRunner *sr = srunner_create(s);
    /* skv_cuda_available has set up CUDA in this process, and a forked
     * child cannot use it ("initialization error" in every GPU test, seen
     * on the first run on a GPU): with a device, the tests run in-process */
    if (gpu)
        srunner_set_fork_status(sr, CK_NOFORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    if (failed)
        return 1;
    if (!gpu) {
        for (size_t i = 0; i < sizeof gpu_tests / sizeof *gpu_tests; i++)
            printf("SKIP: %s (%s)\n", gpu_tests[i], why);
        printf("SKIP: test_cuda: %zu GPU tests not run: %s\n",
               sizeof gpu_tests / sizeof *gpu_tests, why);
        return SKIP_RC;
    }
    return 0;
}
