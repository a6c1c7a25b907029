/* attend.c -- decode attention: thread pool, the scalar kernels (float
 * and int8) over dense and packed rows and the choice of a SIMD one
 * (attend_avx2.c, attend_i8_<isa>.c), the float64 oracle, and the stream
 * driver.
 *
 * A "run" is a sequence of K/V rows with one encoding (dense f32 or f16
 * rows of consecutive tokens, or the rows of one PBKT bucket).  A kernel
 * folds the rows [r0, r1) of a run into a partial softmax state
 * (smartkv_softmax.h) for up to SKV_GMAX query heads of one KV group,
 * tile by tile: the scores of a tile for every head (each K row decoded
 * once per group), the tile's max, exp, then the weighted V rows (each V row
 * decoded once per group).  Nothing beyond one tile's scores is kept. */
#include "smartkv_attend.h"
#include "smartkv_alloc.h"
#include "smartkv_error.h"
#include "smartkv_pack.h"
#include "smartkv_cache.h"
#include "x86_cpu.h"
#include "attend_kern.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---------------------------------------------------------------- pool */

typedef void (*job_fn)(void *arg, size_t item);

struct skv_attend_ctx {
    int threads, kernel;
    uint32_t split;
    pthread_t *th;
    int n_th;               /* worker threads started (threads - 1) */
    pthread_mutex_t mu;
    pthread_cond_t start, done;
    uint64_t gen;
    int stop, busy;
    job_fn fn;
    void *arg;
    size_t n_items;
    atomic_size_t next;
};

static void drain(skv_attend_ctx *c)
{
    size_t i;
    while ((i = atomic_fetch_add(&c->next, 1)) < c->n_items)
        c->fn(c->arg, i);
}

static void *worker(void *p)
{
    skv_attend_ctx *c = p;
    uint64_t seen = 0;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (!c->stop && c->gen == seen)
            pthread_cond_wait(&c->start, &c->mu);
        if (c->stop)
            break;
        seen = c->gen;
        pthread_mutex_unlock(&c->mu);
        drain(c);
        pthread_mutex_lock(&c->mu);
        if (--c->busy == 0)
            pthread_cond_signal(&c->done);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

static void run_job(skv_attend_ctx *c, job_fn fn, void *arg, size_t n)
{
    if (n == 0)
        return;
    c->fn = fn;
    c->arg = arg;
    c->n_items = n;
    atomic_store(&c->next, 0);
    if (c->n_th == 0 || n == 1) {
        drain(c);
        return;
    }
    pthread_mutex_lock(&c->mu);
    c->busy = c->n_th;
    c->gen++;
    pthread_cond_broadcast(&c->start);
    pthread_mutex_unlock(&c->mu);
    drain(c);
    pthread_mutex_lock(&c->mu);
    while (c->busy)
        pthread_cond_wait(&c->done, &c->mu);
    pthread_mutex_unlock(&c->mu);
}

/* Detected once: CPUID traps to the hypervisor in a VM (microseconds), and
 * skv_attend_rows asks on every call. */
static int cpu_avx2(void)
{
#ifdef SKV_X86
    static int state = -1;
    int s = __atomic_load_n(&state, __ATOMIC_RELAXED);
    if (s < 0) {
        __builtin_cpu_init();
        s = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && skv_x86_f16c() &&
            __builtin_cpu_supports("bmi2");
        __atomic_store_n(&state, s, __ATOMIC_RELAXED);
    }
    return s;
#else
    return 0;
#endif
}

/* vpdpbusd on YMM: 1 = AVX-512 VNNI + VL, 2 = AVX-VNNI, 3 = AVX-512 VNNI
 * + VL + VBMI (the codes unpacked by vpmultishiftqb), 0 = none (detected
 * once, like cpu_avx2).  SKV_NO_VBMI set (not "0") leaves VBMI out: the
 * tests compare the two, which must give the same bits. */
static int cpu_vnni(void)
{
#ifdef SKV_X86
    static int state = -1;
    int s = __atomic_load_n(&state, __ATOMIC_RELAXED);
    if (s < 0) {
        int vbmi = !skv_env_flag("SKV_NO_VBMI") && skv_x86_avx512vbmi();
        s = !cpu_avx2()              ? 0
            : vbmi                   ? 3
            : skv_x86_avx512vnni()   ? 1
            : skv_x86_avxvnni()      ? 2
                                     : 0;
        __atomic_store_n(&state, s, __ATOMIC_RELAXED);
    }
    return s;
#else
    return 0;
#endif
}

int skv_att_kernel_available(int k)
{
    switch (k) {
    case SKV_KERNEL_AUTO:
    case SKV_KERNEL_SCALAR:
    case SKV_KERNEL_I8_SCALAR: return 1;
    case SKV_KERNEL_AVX2:
    case SKV_KERNEL_I8_AVX2: return cpu_avx2();
    case SKV_KERNEL_I8_VNNI: return cpu_vnni() != 0;
    }
    return 0;
}

/* AUTO: the fastest this CPU runs. */
static int kernel_best(void)
{
    return cpu_vnni() ? SKV_KERNEL_I8_VNNI : cpu_avx2() ? SKV_KERNEL_I8_AVX2 : SKV_KERNEL_SCALAR;
}

static const char *const kernel_names[] = {"auto", "scalar", "avx2", "int8-scalar", "int8-avx2",
                                           "int8-vnni"};

const char *skv_att_kernel_name(int k)
{
    return k >= 0 && k <= SKV_KERNEL_LAST ? kernel_names[k] : "unknown";
}

int skv_att_kernel_parse(const char *name)
{
    for (int k = 0; name && k <= SKV_KERNEL_LAST; k++)
        if (!strcmp(name, kernel_names[k]))
            return k;
    return -1;
}

skv_attend_ctx *skv_attend_new(const skv_attend_opts *o)
{
    skv_attend_opts def = {0};
    if (!o)
        o = &def;
    if (o->threads < 0 || o->threads > 1024) {
        skv_error(SKV_EINVAL, "threads must be 0..1024, not %d", o->threads);
        return NULL;
    }
    int k = o->kernel == SKV_KERNEL_AUTO ? kernel_best() : o->kernel;
    if (k < SKV_KERNEL_SCALAR || k > SKV_KERNEL_LAST) {
        skv_error(SKV_EINVAL, "unknown kernel %d", o->kernel);
        return NULL;
    }
    if (!skv_att_kernel_available(k)) {
        skv_error(SKV_EUNSUP, "the %s kernels need a CPU with AVX2, FMA and F16C%s",
                  skv_att_kernel_name(k), k == SKV_KERNEL_I8_VNNI ? " and VNNI" : "");
        return NULL;
    }
    skv_attend_ctx *c = skv_calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->kernel = k;
    c->split = o->split ? o->split : SKV_ATT_SPLIT;
    int n = o->threads;
    if (n == 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        n = cpus < 1 ? 1 : cpus > 256 ? 256 : (int)cpus;
    }
    c->threads = n;
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->start, NULL);
    pthread_cond_init(&c->done, NULL);
    if (n > 1) {
        c->th = skv_calloc((size_t)n - 1, sizeof *c->th);
        if (!c->th) {
            skv_attend_free(c);
            return NULL;
        }
        for (int i = 0; i < n - 1; i++) {
            if (pthread_create(&c->th[i], NULL, worker, c) != 0) {
                skv_error(SKV_ENOMEM, "cannot start attention thread %d of %d", i + 2, n);
                skv_attend_free(c);
                return NULL;
            }
            c->n_th++;
        }
    }
    return c;
}

void skv_attend_free(skv_attend_ctx *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->mu);
    c->stop = 1;
    pthread_cond_broadcast(&c->start);
    pthread_mutex_unlock(&c->mu);
    for (int i = 0; i < c->n_th; i++)
        pthread_join(c->th[i], NULL);
    free(c->th);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->start);
    pthread_cond_destroy(&c->done);
    free(c);
}

int skv_attend_kernel(const skv_attend_ctx *c) { return c->kernel; }
int skv_attend_threads(const skv_attend_ctx *c) { return c->threads; }

/* Decode row i of K (which = 0) or V (1) into x[d] (scalar). */
static void decode_row(const run *R, int which, uint64_t i, uint32_t d, float *x)
{
    const uint8_t *dat = (which ? R->vd : R->kd) + i * R->rs;
    if (R->bits == 32) {
        memcpy(x, dat, (size_t)d * 4);
        return;
    }
    if (R->bits == 16) {
        for (uint32_t j = 0; j < d; j++)
            x[j] = h2f(ld16(dat + 2 * j));
        return;
    }
    const uint8_t *par = (which ? R->vp : R->kp) + i * (which ? R->vps : R->kps);
    uint32_t grp = which ? R->vg : R->kg, mode = which ? R->vmode : R->kmode;
    for (uint32_t g = 0; g < d / grp; g++) {
        float s, b;
        group_par(par, g, R->bits, mode, &s, &b);
        for (uint32_t j = g * grp; j < (g + 1) * grp; j++)
            x[j] = (float)code_at(dat, R->bits, j) * s + b;
    }
}

/* Partial state for ng heads: st[ng], acc[ng][d]. */

/* ---- scalar kernel ---- */
static void kern_scalar(const run *R, uint64_t r0, uint64_t r1, const float *q, uint32_t ng,
                        uint32_t d, skv_sm_state *st, float *acc, float *sc, uint64_t sc_stride)
{
    /* zeroed for the analyzer: decode_row fills x[0..d) (groups divide d) and
     * n >= 1 rows fill s */
    float x[SKV_MAX_HEAD_DIM] = {0};
    float s[SKV_GMAX][TILE] = {{0}};
    for (uint64_t t0 = r0; t0 < r1; t0 += TILE) {
        uint32_t n = (uint32_t)(r1 - t0 < TILE ? r1 - t0 : TILE);
        for (uint32_t i = 0; i < n; i++) {
            decode_row(R, 0, t0 + i, d, x);
            for (uint32_t g = 0; g < ng; g++) {
                const float *qg = q + (size_t)g * d;
                float a = 0;
                for (uint32_t j = 0; j < d; j++)
                    a += qg[j] * x[j];
                s[g][i] = R->bias ? a + R->bias[t0 + i] : a;
            }
        }
        for (uint32_t g = 0; g < ng; g++) {
            float mx = s[g][0];
            for (uint32_t i = 1; i < n; i++)
                mx = s[g][i] > mx ? s[g][i] : mx;
            if (sc && !R->bias)  /* centroids are not tokens: no PROB entry */
                for (uint32_t i = 0; i < n; i++)
                    sc[g * sc_stride + row_token(R, t0 + i)] = s[g][i];
            float m = skv_sm_block_begin(&st[g], acc + (size_t)g * d, mx, d);
            float l = 0;
            for (uint32_t i = 0; i < n; i++) {
                s[g][i] = expf(s[g][i] - m);
                l += s[g][i];
            }
            st[g].l += l;
        }
        for (uint32_t i = 0; i < n; i++) {
            decode_row(R, 1, t0 + i, d, x);
            for (uint32_t g = 0; g < ng; g++) {
                float p = s[g][i], *ag = acc + (size_t)g * d;
                for (uint32_t j = 0; j < d; j++)
                    ag[j] += p * x[j];
            }
        }
    }
}

/* ---- int8 kernels: the scalar reference (attend_kern.h: the scheme) ---- */

/* 8-bit rows: the scores' int32 sum 254 * a1 + a2 stays below 2^31 up to
 * head_dim 256 (256 * 127 * 255 * 254 + 256 * 127 * 255 < 2^31). */
#define I8_MAX_D8 256u

/* The widths the int8 kernels take: packed 2, 3, 4 bits, and 8 bits up to
 * head_dim I8_MAX_D8. */
static int i8_width_ok(uint32_t bits, uint32_t d)
{
    return (bits >= 2 && bits <= 4) || (bits == 8 && d <= I8_MAX_D8);
}

/* The shortest run of one key group the int8 kernels take alone (a group
 * cut off from its neighbours: fold splits a run of several groups that
 * starts off the 8-row grid).  Each call pays the query fold and the
 * kernel's setup: one 32K-token layer at 4 bits (9/3 heads, head_dim 64)
 * in runs of one group, int8-vnni against the float kernel, was 1.4x slower
 * with groups of 32 tokens, 1.1x faster with 64, 1.55x with 128.  A run of
 * several groups (kt) pays the setup once and folds each group's query in
 * SIMD (i8_kfold). */
#define I8_KCHAN_MIN 64

/* The rows an int8 kernel takes: one of those widths, keys one group per
 * row, or per channel (i8_kchan_q) in one group of I8_KCHAN_MIN tokens or
 * more or in several groups of a multiple of 8 tokens (each group's rows
 * whole 8-row blocks of the kernels' tiles); values in groups of whole
 * chunks (a multiple of 32 channels: each unpacked chunk lies in one group). */
static int i8_ok(const run *R, uint32_t d)
{
    int keys = R->kg == d ||
               (i8_kchan(R) && (R->kt ? R->kt % 8 == 0 : R->n >= I8_KCHAN_MIN));
    return i8_width_ok(R->bits, d) && keys && R->vg && R->vg % 32 == 0 && d % R->vg == 0 &&
           d % 32 == 0;
}

/* x in units of u (|x / u| <= 254 * 127.5) -> the two int8 levels. */
static inline void i8_split(float t, int8_t *x1, int8_t *x2)
{
    /* t = x / (254 u) in -127..127; NaN lands on 0 */
    t = t >= 127.0f ? 127.0f : t <= -127.0f ? -127.0f : t == t ? t : 0.0f;
    float r = rintf(t);
    float f = rintf((t - r) * 254.0f);
    *x1 = (int8_t)r;
    *x2 = (int8_t)(f > 127.0f ? 127.0f : f < -127.0f ? -127.0f : f);
}

static void i8_quant_q(const float *q, uint32_t ng, uint32_t d, int8_t *qi, float *qs,
                       float *qsum, float *qerr)
{
    for (uint32_t g = 0; g < ng; g++) {
        const float *x = q + (size_t)g * d;
        float amax = 0, sum = 0;
        for (uint32_t j = 0; j < d; j++) {
            float a = fabsf(x[j]);
            amax = a > amax ? a : amax;
            sum += x[j];
        }
        float inv = amax > 0 && amax <= 3e38f ? 127.0f / amax : 0.0f, e = 0;
        for (uint32_t j = 0; j < d; j++) {
            float t = x[j] * inv;
            i8_split(t, &qi[(size_t)g * d + j], &qi[((size_t)ng + g) * d + j]);
            e += t == t ? t - qi[(size_t)g * d + j] : 0.0f;
        }
        qs[g] = inv > 0 ? amax / (127.0f * 254.0f) : 0.0f;
        qsum[g] = sum;
        qerr[g] = inv > 0 ? e * (amax / 127.0f) : 0.0f;
    }
}

/* Keys per channel, k_j = scale_j * code_j + min_j: the scales fold into the
 * query, q'_j = q_j * scale_j, quantized as i8_quant_q does, and the minima
 * into a constant, sum_j q_j * min_j, which takes qsum's place (the kernels
 * then see every row with scale 1 and bias 1).  Once per key group, whose
 * parameters are par (d asym pairs). */
static void i8_kchan_q(const uint8_t *par, uint32_t bits, const float *q, uint32_t ng, uint32_t d,
                       i8q *Q)
{
    float qf[SKV_GMAX * SKV_MAX_HEAD_DIM] = {0}, sc[SKV_MAX_HEAD_DIM], mn[SKV_MAX_HEAD_DIM];
    if (ng == 0 || ng > SKV_GMAX || d == 0 || d > SKV_MAX_HEAD_DIM)
        return;  /* fold's callers check; this tells the compiler */
    for (uint32_t j = 0; j < d; j++)
        group_par(par, j, bits, SKV_QMODE_ASYM, &sc[j], &mn[j]);
    for (uint32_t g = 0; g < ng; g++)
        for (uint32_t j = 0; j < d; j++)
            qf[(size_t)g * d + j] = q[(size_t)g * d + j] * sc[j];
    i8_quant_q(qf, ng, d, Q->qi, Q->qs, Q->qsum, Q->qerr);
    for (uint32_t g = 0; g < ng; g++) {
        float b = 0;
        for (uint32_t j = 0; j < d; j++)
            b += q[(size_t)g * d + j] * mn[j];
        Q->qsum[g] = b;
    }
}

/* Codes of row i of K (which = 0) or V (1), channel order. */
static void i8_codes(const run *R, int which, uint64_t i, uint32_t d, uint8_t *c)
{
    const uint8_t *row = (which ? R->vd : R->kd) + i * R->rs;
    for (uint32_t j = 0; j < d; j++)
        c[j] = (uint8_t)code_at(row, R->bits, j);
}

static void kern_i8_scalar(const run *R, uint64_t r0, uint64_t r1, const float *q, const i8q *Q,
                           uint32_t ng, uint32_t d, skv_sm_state *st, float *acc, float *sc,
                           uint64_t sc_stride)
{
    i8q Qg;                     /* keys per channel in several groups: row's group's */
    uint64_t cur = UINT64_MAX;  /* the group Qg holds */
    float s[SKV_GMAX][I8_TILE] = {{0}};
    float vsc[I8_VG][I8_TILE], vbi[I8_VG][I8_TILE];
    uint8_t cb[I8_TILE * SKV_MAX_HEAD_DIM];
    int32_t ia[2][SKV_MAX_HEAD_DIM];
    const uint32_t vg = R->vg, nvg = d / vg;
    for (uint64_t t0 = r0; t0 < r1; t0 += I8_TILE) {
        uint32_t n = (uint32_t)(r1 - t0 < I8_TILE ? r1 - t0 : I8_TILE);
        for (uint32_t i = 0; i < n; i++) {
            float ks = 1, kb = 1;  /* keys per channel: folded into Q */
            if (!i8_kchan(R))
                group_par(R->kp + (t0 + i) * R->kps, 0, R->bits, R->kmode, &ks, &kb);
            if (R->kt && (t0 + i) / R->kt != cur) {
                cur = (t0 + i) / R->kt;
                i8_kchan_q(R->kp + cur * R->kgb, R->bits, q, ng, d, &Qg);
                Q = &Qg;
            }
            const int8_t *qi = Q->qi;
            const float *qs = Q->qs, *qsum = Q->qsum;
            const int kl = i8_qlevels(R);
            i8_codes(R, 0, t0 + i, d, cb);
            for (uint32_t g = 0; g < ng; g++) {
                const int8_t *q1 = qi + (size_t)g * d, *q2 = qi + ((size_t)ng + g) * d;
                int32_t a1 = 0, a2 = 0;
                for (uint32_t j = 0; j < d; j++) {
                    a1 += (int32_t)q1[j] * cb[j];
                    a2 += kl == 2 ? (int32_t)q2[j] * cb[j] : 0;
                }
                float f = ((float)(254 * a1 + a2) * qs[g] + i8_mid(kl, R->bits, Q->qerr[g])) * ks;
                s[g][i] = f + kb * qsum[g];
            }
        }
        for (uint32_t i = 0; i < n; i++) {
            for (uint32_t gv = 0; gv < nvg; gv++)
                group_par(R->vp + (t0 + i) * R->vps, gv, R->bits, R->vmode, &vsc[gv][i],
                          &vbi[gv][i]);
            i8_codes(R, 1, t0 + i, d, cb + (size_t)i * d);
        }
        for (uint32_t g = 0; g < ng; g++) {
            float mx = s[g][0];
            for (uint32_t i = 1; i < n; i++)
                mx = s[g][i] > mx ? s[g][i] : mx;
            if (sc)
                for (uint32_t i = 0; i < n; i++)
                    sc[g * sc_stride + row_token(R, t0 + i)] = s[g][i];
            float *ag = acc + (size_t)g * d;
            float m = skv_sm_block_begin(&st[g], ag, mx, d);
            float l = 0;
            for (uint32_t i = 0; i < n; i++) {
                float p = expf(s[g][i] - m);
                l += p;
                s[g][i] = p;
            }
            st[g].l += l;
            for (uint32_t gv = 0; gv < nvg; gv++) {
                /* the weights p * scale (< 0 where a ggml scale is) */
                float b = 0, wmax = 0;
                for (uint32_t i = 0; i < n; i++) {
                    b += s[g][i] * vbi[gv][i];
                    float w = s[g][i] * vsc[gv][i];
                    wmax = fabsf(w) > wmax ? fabsf(w) : wmax;
                }
                float wu = i8_wunit(wmax), inv = i8_winv(wmax), e = 0;
                const int kl = i8_levels(R->bits);
                memset(ia, 0, sizeof ia);
                for (uint32_t i = 0; i < n; i++) {
                    int8_t w1, w2;
                    float t = s[g][i] * vsc[gv][i] * inv;
                    i8_split(t, &w1, &w2);
                    e += t == t ? t - w1 : 0.0f;
                    const uint8_t *c = cb + (size_t)i * d;
                    for (uint32_t j = gv * vg; j < (gv + 1) * vg; j++) {
                        ia[0][j] += w1 * c[j];
                        ia[1][j] += kl == 2 ? w2 * c[j] : 0;
                    }
                }
                float mid = i8_mid(kl, R->bits, e * (254.0f * wu));
                for (uint32_t j = gv * vg; j < (gv + 1) * vg; j++)
                    ag[j] += (float)(254 * ia[0][j] + ia[1][j]) * wu + (b + mid);
            }
        }
    }
}

/* ---- the SIMD kernels (attend_avx2.c, attend_i8_<isa>.c): which one runs */
#ifdef SKV_X86
static int avx2_ok(const run *R, uint32_t d)
{
    if (d % 8 || d / 8 > SKV_MAX_GROUPS)
        return 0;
    /* keys per channel: kg 1 with parameters shared by the run (kps 0) */
    if (R->bits < 16 && ((R->kg % 8 && !(R->kg == 1 && R->kps == 0)) || R->vg % 8))
        return 0;
    return 1;
}

static i8_fn i8_kernel(int kernel, uint32_t bits, uint32_t ng)
{
    int b = bits == 2 ? 0 : bits == 3 ? 1 : bits == 4 ? 2 : 3;
    if (kernel == SKV_KERNEL_I8_VNNI)
        return cpu_vnni() == 3   ? skv_att_i8_kernels_vbmi[b][ng - 1]
               : cpu_vnni() == 1 ? skv_att_i8_kernels_vnni512[b][ng - 1]
                                 : skv_att_i8_kernels_avxvnni[b][ng - 1];
    return skv_att_i8_kernels_avx2[b][ng - 1];
}
#endif /* SKV_X86 */

/* Fold rows [r0, r1) of run R into the state of ng heads; Q: q quantized
 * for the int8 kernels (the callers quantize once per step, not per run);
 * without it the float kernels run. */
static void fold(int kernel, const run *R, uint64_t r0, uint64_t r1, const float *q,
                 const i8q *Q, uint32_t ng, uint32_t d, skv_sm_state *st, float *acc, float *sc,
                 uint64_t sc_stride)
{
    /* centroids (a few rows per head with a logit bias) take the scalar kernel */
    if (R->bias) {
        kern_scalar(R, r0, r1, q, ng, d, st, acc, sc, sc_stride);
        return;
    }
    const int i8 = kernel >= SKV_KERNEL_I8_SCALAR && Q && i8_ok(R, d);
    if (R->kt && !(i8 && r0 % 8 == 0)) {
        /* keys per channel in several groups, where the int8 kernels cannot
         * take them whole: a group at a time */
        for (uint64_t a = r0; a < r1;) {
            uint64_t j = a / R->kt, b = (j + 1) * R->kt < r1 ? (j + 1) * R->kt : r1;
            run S = *R;
            S.kt = 0;
            S.kp = R->kp + j * R->kgb;
            S.kd = R->kd + j * R->kt * R->rs;
            S.vd = R->vd + j * R->kt * R->rs;
            S.vp = R->vp + j * R->kt * R->vps;
            if (R->idx)
                S.idx = R->idx + j * R->kt;
            S.t0 = R->t0 + j * R->kt;
            S.n = R->kt;
            fold(kernel, &S, a - j * R->kt, b - j * R->kt, q, Q, ng, d, st, acc, sc, sc_stride);
            a = b;
        }
        return;
    }
    if (i8) {
        i8q Qc;
        if (i8_kchan(R) && !R->kt) {
            i8_kchan_q(R->kp, R->bits, q, ng, d, &Qc);
            Q = &Qc;
        }
#ifdef SKV_X86
        if (kernel != SKV_KERNEL_I8_SCALAR) {
            i8_kernel(kernel, R->bits, ng)(R, r0, r1, q, Q, d, st, acc, sc, sc_stride);
            return;
        }
#endif
        kern_i8_scalar(R, r0, r1, q, Q, ng, d, st, acc, sc, sc_stride);
        return;
    }
#ifdef SKV_X86
    if ((kernel == SKV_KERNEL_AVX2 || kernel == SKV_KERNEL_I8_AVX2 ||
         kernel == SKV_KERNEL_I8_VNNI) && avx2_ok(R, d)) {
        skv_att_avx2_kernel(R->bits, ng)(R, r0, r1, q, d, st, acc, sc, sc_stride);
        return;
    }
#endif
    kern_scalar(R, r0, r1, q, ng, d, st, acc, sc, sc_stride);
}

/* ---------------------------------------------------------------- int8 blocks */

static int i8_args(int kernel, uint32_t bits, uint32_t d, const void *rows, uint32_t n,
                   const void *x, uint32_t ng, const void *out)
{
    if (kernel < SKV_KERNEL_I8_SCALAR || kernel > SKV_KERNEL_LAST)
        return skv_error(SKV_EINVAL, "int8 blocks: %s is not an int8 kernel",
                         skv_att_kernel_name(kernel));
    if (!skv_att_kernel_available(kernel))
        return skv_error(SKV_EUNSUP, "int8 blocks: this CPU cannot run %s",
                         skv_att_kernel_name(kernel));
    if (!i8_width_ok(bits, d) || d == 0 || d % 32 || d > SKV_MAX_HEAD_DIM || ng == 0 ||
        ng > I8_QMAX || (n && (!rows || !x || !out)))
        return skv_error(SKV_EINVAL, "int8 blocks: bad arguments (bits %u, head_dim %u, %u heads)",
                         bits, d, ng);
    return 0;
}

int skv_att_i8_dots(int kernel, uint32_t bits, uint32_t d, const uint8_t *rows, size_t stride,
                    uint32_t n, const int8_t *q, uint32_t ng, int32_t *dots)
{
    int rc = i8_args(kernel, bits, d, rows, n, q, ng, dots);
    if (rc < 0)
        return rc;
#ifdef SKV_X86
    if (kernel != SKV_KERNEL_I8_SCALAR) {
        int8_t qp[I8_QMAX * SKV_MAX_HEAD_DIM] __attribute__((aligned(32)));
        i8_permute_q(q, ng, d, (int)bits, qp);
        if (kernel == SKV_KERNEL_I8_AVX2)
            skv_att_i8_dots_rows_avx2(rows, stride, n, qp, d, (int)bits, (int)ng, dots);
        else if (cpu_vnni() == 3)
            skv_att_i8_dots_rows_vbmi(rows, stride, n, qp, d, (int)bits, (int)ng, dots);
        else if (cpu_vnni() == 1)
            skv_att_i8_dots_rows_vnni512(rows, stride, n, qp, d, (int)bits, (int)ng, dots);
        else
            skv_att_i8_dots_rows_avxvnni(rows, stride, n, qp, d, (int)bits, (int)ng, dots);
        return 0;
    }
#endif
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t g = 0; g < ng; g++) {
            int32_t a = 0;
            for (uint32_t j = 0; j < d; j++)
                a += (int32_t)q[(size_t)g * d + j] * (int32_t)code_at(rows + i * stride, bits, j);
            dots[(size_t)g * n + i] = a;
        }
    return 0;
}

int skv_att_i8_vacc(int kernel, uint32_t bits, uint32_t d, const uint8_t *rows, size_t stride,
                    uint32_t n, const int8_t *w, uint32_t ng, int32_t *acc)
{
    int rc = i8_args(kernel, bits, d, rows, n, w, ng, acc);
    if (rc < 0)
        return rc;
#ifdef SKV_X86
    if (kernel != SKV_KERNEL_I8_SCALAR) {
        if (kernel == SKV_KERNEL_I8_AVX2)
            skv_att_i8_vacc_rows_avx2(rows, stride, n, w, d, (int)bits, (int)ng, acc);
        else if (cpu_vnni() == 3)
            skv_att_i8_vacc_rows_vbmi(rows, stride, n, w, d, (int)bits, (int)ng, acc);
        else if (cpu_vnni() == 1)
            skv_att_i8_vacc_rows_vnni512(rows, stride, n, w, d, (int)bits, (int)ng, acc);
        else
            skv_att_i8_vacc_rows_avxvnni(rows, stride, n, w, d, (int)bits, (int)ng, acc);
        return 0;
    }
#endif
    for (uint32_t i = 0; i < n; i++)
        for (uint32_t g = 0; g < ng; g++)
            for (uint32_t j = 0; j < d; j++)
                acc[(size_t)g * d + j] += (int32_t)w[(size_t)g * n + i] *
                                          (int32_t)code_at(rows + i * stride, bits, j);
    return 0;
}

/* ---------------------------------------------------------------- layer */

typedef struct item {
    uint32_t h;             /* KV head */
    uint32_t si;            /* index into steps */
    const run *R;
    uint64_t r0, r1;
    size_t slot;            /* partial state index */
} item;

typedef struct layer_job {
    const skv_kv_view *L;
    const uint64_t *steps;
    uint32_t G;             /* query heads per KV head */
    int kernel;
    item *items;
    skv_sm_state *st;       /* [slots][G] */
    float *acc;             /* [slots][G][d] */
    float *prob;            /* caller's, or NULL */
    uint64_t si0;           /* first step of this batch (prob indexing) */
    uint64_t n_steps;       /* all steps (prob indexing) */
    const float *qrot;      /* rotated keys: [n_heads][n_steps][d] queries in the keys'
                               basis, else NULL (queries from L->q) */
    const i8q *q8;          /* int8 kernels: [KV heads][nb][nblk] the batch's queries
                               quantized (item_query); NULL with a float kernel */
    uint64_t nb;            /* steps in this batch */
    uint32_t nblk;          /* blocks of SKV_GMAX query heads per KV head */
} layer_job;

/* The scaled queries of query heads g0 .. g0 + ng - 1 of KV head h at
 * step si into qs[ng][d]. */
static void item_query(const layer_job *J, uint32_t h, uint64_t si, uint32_t g0, uint32_t ng,
                       float *qs)
{
    const skv_kv_view *L = J->L;
    const uint32_t d = L->head_dim, G = J->G;
    const float scale = 1.0f / sqrtf((float)d);
    for (uint32_t g = 0; g < ng; g++) {
        const float *qr = J->qrot
            ? J->qrot + (((size_t)h * G + g0 + g) * J->n_steps + si) * d
            : L->q + (((size_t)h * G + g0 + g) * L->n_tokens + J->steps[si]) * d;
        for (uint32_t j = 0; j < d; j++)
            qs[g * d + j] = qr[j] * scale;
    }
}

static void do_item(void *arg, size_t k)
{
    layer_job *J = arg;
    const item *it = &J->items[k];
    const skv_kv_view *L = J->L;
    uint32_t d = L->head_dim, G = J->G;
    uint64_t T = L->n_tokens;
    float qs[SKV_GMAX * SKV_MAX_HEAD_DIM];
    skv_sm_state *st = J->st + it->slot * G;
    float *acc = J->acc + it->slot * G * d;
    for (uint32_t g0 = 0; g0 < G; g0 += SKV_GMAX) {
        uint32_t ng = G - g0 < SKV_GMAX ? G - g0 : SKV_GMAX;
        item_query(J, it->h, it->si, g0, ng, qs);
        for (uint32_t g = 0; g < ng; g++)
            skv_sm_init(&st[g0 + g], acc + (size_t)(g0 + g) * d, d);
        float *sc = NULL;
        uint64_t ss = 0;
        if (J->prob) {
            ss = J->n_steps * T;
            sc = J->prob + (((size_t)it->h * G + g0) * J->n_steps + it->si) * T;
        }
        const i8q *Q = J->q8 ? &J->q8[((size_t)it->h * J->nb + it->si - J->si0) * J->nblk +
                                      g0 / SKV_GMAX] : NULL;
        fold(J->kernel, it->R, it->r0, it->r1, qs, Q, ng, d, st + g0, acc + (size_t)g0 * d, sc,
             ss);
    }
}

/* Number of rows of run R whose token is <= t. */
static uint64_t rows_upto(const run *R, uint64_t t)
{
    if (!R->idx)
        return t < R->t0 ? 0 : (t - R->t0 + 1 < R->n ? t - R->t0 + 1 : R->n);
    uint64_t lo = 0, hi = R->n;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (R->idx[mid] <= t)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* The run of all of a bucket's rows, as the bucket stores them. */
static run bucket_run(const skv_bucket *B)
{
    run R = {0};
    R.bits = B->bits;
    R.kg = B->k_group;
    R.vg = B->v_group;
    R.kmode = B->k_mode;
    R.vmode = B->v_mode;
    R.kps = B->k_par_stride;
    R.vps = B->v_par_stride;
    R.rs = B->row_stride;
    R.kd = B->k_dat;
    R.vd = B->v_dat;
    R.kp = B->k_par;
    R.vp = B->v_par;
    R.idx = B->idx;
    R.n = B->n;
    return R;
}

/* The runs of one bucket into r (when not NULL); returns their number.  A
 * bucket with keys per channel (smartkv_pack.h) is one run of its full key
 * groups, each group's rows sharing one parameter block of d one-channel
 * asym groups (kps 0, kg 1, kt rows a group), and one run of its partial
 * group's per-token rows: the kernels then need no other case. */
static size_t bucket_runs(const skv_bucket *B, run *r)
{
    run R = bucket_run(B);
    if (B->k_mode != SKV_QMODE_CHAN || B->bits == 16) {
        if (r)
            *r = R;
        return 1;
    }
    const uint32_t d = B->head_dim;
    size_t k = 0;
    if (B->k_full) {
        if (r) {
            run *o = &r[k];
            *o = R;
            o->kmode = SKV_QMODE_ASYM;
            o->kg = 1;
            o->kps = 0;
            o->kgb = 4 * d;
            o->kt = B->k_tokens;
            o->kp = B->k_par;
            o->n = B->k_full;
        }
        k++;
    }
    if (B->n > B->k_full) {
        if (r) {
            const uint32_t i0 = B->k_full;
            run *o = &r[k];
            *o = R;
            o->kmode = SKV_QMODE_ASYM;
            o->kp = B->k_tail_par;
            o->kd = B->k_dat + (size_t)i0 * B->row_stride;
            o->vd = B->v_dat + (size_t)i0 * B->row_stride;
            o->vp = B->v_par + (size_t)i0 * B->v_par_stride;
            o->idx = B->idx + i0;
            o->n = B->n - i0;
        }
        k++;
    }
    return k;
}

/* The runs of KV head h of a layer: dense -> one run; packed -> one per bucket
 * (per key group with keys per channel). */
static int layer_runs(const skv_kv_view *L, run **runs, uint32_t **first, uint32_t **count)
{
    uint32_t H = L->n_kv_heads, d = L->head_dim;
    size_t total = 0;
    *runs = NULL;
    *first = skv_calloc(H, sizeof **first);
    *count = skv_calloc(H, sizeof **count);
    if (!*first || !*count)
        return SKV_ENOMEM;
    if (L->kind == SKV_KV_F32 || L->kind == SKV_KV_F16) {
        run *r = skv_calloc(H, sizeof *r);
        if (!r)
            return SKV_ENOMEM;
        size_t es = L->kind == SKV_KV_F32 ? 4 : 2;
        for (uint32_t h = 0; h < H; h++) {
            r[h].bits = L->kind == SKV_KV_F32 ? 32 : 16;
            r[h].rs = (uint32_t)(d * es);
            r[h].kd = (const uint8_t *)L->k + (size_t)h * L->n_tokens * d * es;
            r[h].vd = (const uint8_t *)L->v + (size_t)h * L->n_tokens * d * es;
            r[h].n = L->n_tokens;
            (*first)[h] = h;
            (*count)[h] = 1;
        }
        *runs = r;
        return 0;
    }
    if (L->kind == SKV_KV_PACKED) {
        for (uint32_t h = 0; h < H; h++) {
            total += (L->packed[h].cent ? 1 : 0);
            for (uint32_t b = 0; b < L->packed[h].n_buckets; b++)
                total += bucket_runs(&L->packed[h].buckets[b], NULL);
        }
        run *r = skv_calloc(total ? total : 1, sizeof *r);
        if (!r)
            return SKV_ENOMEM;
        size_t k = 0;
        for (uint32_t h = 0; h < H; h++) {
            const skv_cache_head *ch = &L->packed[h];
            (*first)[h] = (uint32_t)k;
            for (uint32_t b = 0; b < ch->n_buckets + (ch->cent ? 1u : 0u); b++) {
                const skv_bucket *B = b < ch->n_buckets ? &ch->buckets[b] : &ch->cent->rows;
                if (B->head_dim != d) {
                    free(r);
                    return skv_error(SKV_EINVAL, "bucket of %u-bit rows has head_dim %u, not %u",
                                     B->bits, B->head_dim, d);
                }
                size_t k0 = k;
                k += bucket_runs(B, r + k);
                if (b >= ch->n_buckets)     /* centroids: one run of keys per token */
                    r[k0].bias = ch->cent->bias;
            }
            (*count)[h] = (uint32_t)(k - (*first)[h]);
        }
        *runs = r;
        return 0;
    }
    return skv_error(SKV_EINVAL, "unknown cache kind %u", L->kind);
}

static int check_view(const skv_kv_view *L, const uint64_t *steps, uint64_t n_steps)
{
    if (!L || !L->q || L->n_kv_heads == 0 || L->n_heads % L->n_kv_heads || L->head_dim == 0 ||
        L->head_dim > SKV_MAX_HEAD_DIM || L->n_tokens == 0 || L->n_tokens > SKV_MAX_TOKENS)
        return skv_error(SKV_EINVAL, "attention: bad layer shape");
    if ((L->kind == SKV_KV_F32 || L->kind == SKV_KV_F16) && (!L->k || !L->v))
        return skv_error(SKV_EINVAL, "attention: dense cache without K or V");
    if (L->kind == SKV_KV_PACKED && !L->packed)
        return skv_error(SKV_EINVAL, "attention: packed cache without heads");
    for (uint64_t i = 0; i < n_steps; i++)
        if (steps[i] >= L->n_tokens || (i && steps[i] <= steps[i - 1]))
            return skv_error(SKV_EINVAL, "attention: step %llu (%llu) not ascending below %llu",
                             (unsigned long long)i, (unsigned long long)steps[i],
                             (unsigned long long)L->n_tokens);
    return 0;
}

/* A rotated packed layer: the signs of each KV head ([H][d], from its first
 * bucket: every bucket of a cache has the same flags and seed) and the
 * queries of the steps in the keys' basis ([n_heads][n_steps][d]). */
static int rot_setup(const skv_kv_view *L, const uint64_t *steps, uint64_t n_steps,
                     float **sign, float **qrot)
{
    const uint32_t H = L->n_kv_heads, G = L->n_heads / H, d = L->head_dim;
    size_t nq;
    if (skv_mul_sizes(&nq, 3, (size_t)L->n_heads, (size_t)n_steps, (size_t)d) < 0 ||
        !(*sign = skv_calloc((size_t)H * d, sizeof **sign)) ||
        !(*qrot = skv_malloc((nq ? nq : 1) * sizeof **qrot)))
        return skv_error(SKV_ENOMEM, "attention: no memory for the rotated queries");
    for (uint32_t h = 0; h < H; h++) {
        const skv_cache_head *ch = &L->packed[h];
        if (!ch->n_buckets)
            continue;  /* nothing stored: the output is zero in any basis */
        const skv_bucket *b = &ch->buckets[0];
        if (!b->rotate || (d & (d - 1)))
            return skv_error(SKV_EINVAL, "attention: kv head %u is not rotated like the others "
                             "(or head_dim %u is not a power of two)", h, d);
        skv_rot_signs(b->rot_seed, (uint64_t)b->layer * H + b->kv_head, d, *sign + (size_t)h * d);
        for (uint32_t g = 0; g < G; g++)
            for (uint64_t si = 0; si < n_steps; si++) {
                const float *q = L->q + (((size_t)h * G + g) * L->n_tokens + steps[si]) * d;
                float *y = *qrot + (((size_t)h * G + g) * n_steps + si) * d;
                if (b->rotate & SKV_ROT_KEYS)
                    skv_rot_apply(*sign + (size_t)h * d, q, y, d);
                else
                    memcpy(y, q, d * sizeof *y);
            }
    }
    return 0;
}

/* ---------------------------------------------------------------- probabilities */

/* The probability of each token, exp(s - m) / l (skv_sm_prob), over a row of
 * raw scores.  With FMA and AVX2 (where glibc runs __expf_fma), eight at a
 * time with that expf's algorithm and operations in its order (ARM's
 * optimized-routines expf: k = round(x 32/ln2), a 32-entry table of
 * 2^(i/32), a cubic in double precision), so the result is the scalar
 * one bit for bit (every float from 0 down to -110 compared once;
 * test_probs_pass samples them and the special values); a lane expf would
 * treat as a special case (|x| >= 88, NaN) takes the scalar call.  This
 * pass was about a sixth of decode time. */
#ifdef SKV_X86
static const uint64_t exp_tab[32] = {
    0x3ff0000000000000, 0x3fefd9b0d3158574, 0x3fefb5586cf9890f, 0x3fef9301d0125b51,
    0x3fef72b83c7d517b, 0x3fef54873168b9aa, 0x3fef387a6e756238, 0x3fef1e9df51fdee1,
    0x3fef06fe0a31b715, 0x3feef1a7373aa9cb, 0x3feedea64c123422, 0x3feece086061892d,
    0x3feebfdad5362a27, 0x3feeb42b569d4f82, 0x3feeab07dd485429, 0x3feea47eb03a5585,
    0x3feea09e667f3bcd, 0x3fee9f75e8ec5f74, 0x3feea11473eb0187, 0x3feea589994cce13,
    0x3feeace5422aa0db, 0x3feeb737b0cdc5e5, 0x3feec49182a3f090, 0x3feed503b23e255d,
    0x3feee89f995ad3ad, 0x3feeff76f2fb5e47, 0x3fef199bdd85529c, 0x3fef3720dcef9069,
    0x3fef5818dcfba487, 0x3fef7c97337b9b5f, 0x3fefa4afa2a490da, 0x3fefd0765b6e4540};

static inline double u2d(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

/* expf of four floats widened to double */
AVX2_FN static inline __m128 expf4_avx2(__m128 x)
{
    const __m256d inv = _mm256_set1_pd(u2d(0x40471547652b82feull));   /* 32 / ln 2 */
    const __m256d shift = _mm256_set1_pd(u2d(0x4338000000000000ull)); /* 0x1.8p52 */
    const __m256d c0 = _mm256_set1_pd(u2d(0x3ebc6af84b912394ull));
    const __m256d c1 = _mm256_set1_pd(u2d(0x3f2ebfce50fac4f3ull));
    const __m256d c2 = _mm256_set1_pd(u2d(0x3f962e42ff0c52d6ull));
    __m256d xd = _mm256_cvtps_pd(x);
    __m256d kd = _mm256_fmadd_pd(inv, xd, shift);
    __m256i ki = _mm256_castpd_si256(kd);
    kd = _mm256_sub_pd(kd, shift);
    __m256d r = _mm256_fmsub_pd(inv, xd, kd);
    __m256i t = _mm256_i64gather_epi64((const long long *)exp_tab,
                                       _mm256_and_si256(ki, _mm256_set1_epi64x(31)), 8);
    t = _mm256_add_epi64(t, _mm256_slli_epi64(ki, 47));
    __m256d z = _mm256_fmadd_pd(r, c0, c1);
    __m256d r2 = _mm256_mul_pd(r, r);
    __m256d y = _mm256_fmadd_pd(r, c2, _mm256_set1_pd(1.0));
    y = _mm256_fmadd_pd(z, r2, y);
    y = _mm256_mul_pd(y, _mm256_castsi256_pd(t));
    return _mm256_cvtpd_ps(y);
}

AVX2_FN static void probs_avx2(float *p, uint64_t n, const skv_sm_state *st)
{
    const __m256 m = _mm256_set1_ps(st->m), l = _mm256_set1_ps(st->l);
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    const __m256i lim = _mm256_set1_epi32(0x42a), m11 = _mm256_set1_epi32(0x7ff);
    uint64_t u = 0;
    for (; u + 8 <= n; u += 8) {
        __m256 s = _mm256_loadu_ps(p + u), x = _mm256_sub_ps(s, m);
        __m256i top = _mm256_and_si256(_mm256_srli_epi32(_mm256_castps_si256(x), 20), m11);
        int odd = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(top, lim)));
        __m256 e = _mm256_set_m128(expf4_avx2(_mm256_extractf128_ps(x, 1)),
                                   expf4_avx2(_mm256_castps256_ps128(x)));
        e = _mm256_div_ps(e, l);
        e = _mm256_andnot_ps(_mm256_cmp_ps(s, ninf, _CMP_EQ_OQ), e);
        if (odd) {
            float sv[8], ev[8];
            _mm256_storeu_ps(sv, s);
            _mm256_storeu_ps(ev, e);
            for (int i = 0; i < 8; i++)
                if (odd >> i & 1)
                    ev[i] = skv_sm_prob(st, sv[i]);
            e = _mm256_loadu_ps(ev);
        }
        _mm256_storeu_ps(p + u, e);
    }
    for (; u < n; u++)
        p[u] = skv_sm_prob(st, p[u]);
}
#endif

/* p[u] = skv_sm_prob(st, p[u]) for u < n; kernel: the scalar kernels keep
 * the scalar loop. */
static void probs_pass(int kernel, float *p, uint64_t n, const skv_sm_state *st)
{
#ifdef SKV_X86
    if (kernel != SKV_KERNEL_SCALAR && kernel != SKV_KERNEL_I8_SCALAR && st->l > 0.0f &&
        cpu_avx2()) {
        probs_avx2(p, n, st);
        return;
    }
#endif
    for (uint64_t u = 0; u < n; u++)
        p[u] = skv_sm_prob(st, p[u]);
}

int skv_att_probs(int kernel, float *p, uint64_t n, float m, float l)
{
    if (kernel < SKV_KERNEL_AUTO || kernel > SKV_KERNEL_LAST || (n && !p))
        return skv_error(SKV_EINVAL, "probabilities: bad arguments");
    skv_sm_state st = {m, l};
    probs_pass(kernel, p, n, &st);
    return 0;
}

int skv_attend_layer(skv_attend_ctx *ctx, const skv_kv_view *L, const uint64_t *steps,
                     uint64_t n_steps, float *out, float *prob)
{
    int rc = check_view(L, steps, n_steps);
    if (rc < 0)
        return rc;
    uint32_t H = L->n_kv_heads, G = L->n_heads / H, d = L->head_dim;
    uint64_t T = L->n_tokens;
    run *runs = NULL;
    uint32_t *first = NULL, *count = NULL;
    item *items = NULL;
    skv_sm_state *st = NULL;
    float *acc = NULL, *rsign = NULL, *qrot = NULL;
    i8q *q8 = NULL;
    if ((rc = layer_runs(L, &runs, &first, &count)) < 0)
        goto out;
    /* a rotated packed cache (format 1.3): each query is rotated once into
     * the keys' basis (q.k is unchanged by an orthogonal rotation), each
     * output rotated back once from the values' basis */
    uint32_t rot = 0;
    for (uint32_t h = 0; L->kind == SKV_KV_PACKED && h < H; h++)
        if (L->packed[h].n_buckets)
            rot |= L->packed[h].buckets[0].rotate;
    if (rot && (rc = rot_setup(L, steps, n_steps, &rsign, &qrot)) < 0)
        goto out;
    if (prob)
        for (size_t i = 0, n = (size_t)L->n_heads * n_steps * T; i < n; i++)
            prob[i] = -INFINITY;
    /* steps in batches so that the partial states stay small */
    uint64_t batch = 64;
    uint64_t split = ctx->split;
    for (uint64_t s0 = 0; s0 < n_steps; s0 += batch) {
        uint64_t nb = n_steps - s0 < batch ? n_steps - s0 : batch;
        /* count items */
        size_t n_items = 0;
        for (uint32_t h = 0; h < H; h++)
            for (uint64_t si = s0; si < s0 + nb; si++)
                for (uint32_t b = 0; b < count[h]; b++) {
                    uint64_t n = rows_upto(&runs[first[h] + b], steps[si]);
                    n_items += (size_t)((n + split - 1) / split);
                }
        free(items);
        free(st);
        free(acc);
        size_t na = 0;
        items = skv_malloc((n_items ? n_items : 1) * sizeof *items);
        st = skv_malloc((n_items ? n_items : 1) * G * sizeof *st);
        if (skv_mul_sizes(&na, 3, n_items ? n_items : 1, (size_t)G, (size_t)d) < 0 ||
            !(acc = skv_malloc(na * sizeof *acc)) || !items || !st) {
            rc = skv_error(SKV_ENOMEM, "attention: no memory for %zu work items", n_items);
            goto out;
        }
        size_t k = 0;
        for (uint32_t h = 0; h < H; h++)
            for (uint64_t si = s0; si < s0 + nb; si++)
                for (uint32_t b = 0; b < count[h]; b++) {
                    const run *R = &runs[first[h] + b];
                    uint64_t n = rows_upto(R, steps[si]);
                    for (uint64_t r = 0; r < n; r += split, k++) {
                        items[k].h = h;
                        items[k].si = (uint32_t)si;
                        items[k].R = R;
                        items[k].r0 = r;
                        items[k].r1 = r + split < n ? r + split : n;
                        items[k].slot = k;
                    }
                }
        layer_job J = {.L = L, .steps = steps, .G = G, .kernel = ctx->kernel, .items = items,
                       .st = st, .acc = acc, .prob = prob, .si0 = s0, .n_steps = n_steps,
                       .qrot = (rot & SKV_ROT_KEYS) ? qrot : NULL, .nb = nb,
                       .nblk = (G + SKV_GMAX - 1) / SKV_GMAX};
        if (ctx->kernel >= SKV_KERNEL_I8_SCALAR) {
            /* the int8 kernels' queries, quantized once here rather than
             * in every work item (one per run of rows) */
            if (!q8 && !(q8 = skv_malloc((size_t)H * (n_steps < batch ? n_steps : batch) *
                                         J.nblk * sizeof *q8))) {
                rc = SKV_ENOMEM;
                goto out;
            }
            float qs[SKV_GMAX * SKV_MAX_HEAD_DIM];
            for (uint32_t h = 0; h < H; h++)
                for (uint64_t si = s0; si < s0 + nb; si++)
                    for (uint32_t g0 = 0; g0 < G; g0 += SKV_GMAX) {
                        uint32_t ng = G - g0 < SKV_GMAX ? G - g0 : SKV_GMAX;
                        i8q *Q = &q8[((size_t)h * nb + si - s0) * J.nblk + g0 / SKV_GMAX];
                        item_query(&J, h, si, g0, ng, qs);
                        i8_quant_q(qs, ng, d, Q->qi, Q->qs, Q->qsum, Q->qerr);
                    }
            J.q8 = q8;
        }
        run_job(ctx, do_item, &J, n_items);
        /* merge in item order (fixed: independent of the thread count) */
        k = 0;
        float mst_acc[SKV_MAX_HEAD_DIM];
        for (uint32_t h = 0; h < H; h++)
            for (uint64_t si = s0; si < s0 + nb; si++) {
                size_t k1 = k;
                while (k1 < n_items && items[k1].h == h && items[k1].si == si)
                    k1++;
                for (uint32_t g = 0; g < G; g++) {
                    skv_sm_state m;
                    skv_sm_init(&m, mst_acc, d);
                    for (size_t j = k; j < k1; j++)
                        skv_sm_merge(&m, mst_acc, &st[j * G + g], acc + (j * G + g) * d, d);
                    uint32_t head = h * G + g;
                    float *o = out + ((size_t)head * n_steps + si) * d;
                    skv_sm_finish(&m, mst_acc, o, d);
                    if ((rot & SKV_ROT_VALUES) && L->packed[h].n_buckets)
                        skv_rot_undo(rsign + (size_t)h * d, o, o, d);
                    if (prob) {
                        probs_pass(ctx->kernel, prob + ((size_t)head * n_steps + si) * T, T,
                                   &m);
                    }
                }
                k = k1;
            }
    }
out:
    free(runs);
    free(first);
    free(count);
    free(items);
    free(st);
    free(acc);
    free(rsign);
    free(qrot);
    free(q8);
    return rc;
}

/* ---------------------------------------------------------------- live rows */

int skv_attend_rows(int kernel, const skv_att_rows *rows, const float *q, uint32_t ng,
                    float scale, uint64_t limit, float *out, float *prob, size_t prob_stride,
                    uint64_t n_prob)
{
    uint32_t d = rows ? rows->head_dim : 0;
    if (!rows || !q || !out || ng == 0 || ng > SKV_GMAX || d == 0 || d > SKV_MAX_HEAD_DIM ||
        (rows->n_buckets && !rows->buckets) ||
        (rows->n_tail && !(rows->tail_hk ? rows->tail_hv != NULL : rows->tail_k && rows->tail_v)))
        return skv_error(SKV_EINVAL, "attention rows: bad arguments (head_dim %u, %u queries)", d,
                         ng);
    if (prob && (limit >= n_prob || (ng > 1 && prob_stride < n_prob)))
        return skv_error(SKV_EINVAL, "attention rows: token %llu beyond the %llu probabilities",
                         (unsigned long long)limit, (unsigned long long)n_prob);
    if (kernel == SKV_KERNEL_AUTO)
        kernel = kernel_best();
    else if (kernel == SKV_KERNEL_I8_VNNI && !cpu_vnni())
        kernel = cpu_avx2() ? SKV_KERNEL_I8_AVX2 : SKV_KERNEL_I8_SCALAR;
    else if ((kernel == SKV_KERNEL_AVX2 || kernel == SKV_KERNEL_I8_AVX2) && !cpu_avx2())
        kernel = kernel == SKV_KERNEL_AVX2 ? SKV_KERNEL_SCALAR : SKV_KERNEL_I8_SCALAR;
    else if (kernel < SKV_KERNEL_SCALAR || kernel > SKV_KERNEL_LAST)
        return skv_error(SKV_EINVAL, "attention rows: unknown kernel %d", kernel);
    float qs[SKV_GMAX * SKV_MAX_HEAD_DIM];
    float acc[SKV_GMAX * SKV_MAX_HEAD_DIM];
    skv_sm_state st[SKV_GMAX];
    for (uint32_t g = 0; g < ng; g++) {
        for (uint32_t j = 0; j < d; j++)
            qs[g * d + j] = q[(size_t)g * d + j] * scale;
        skv_sm_init(&st[g], acc + (size_t)g * d, d);
    }
    i8q own, *q8 = NULL;    /* the int8 kernels' queries, quantized once for every bucket */
    if (kernel >= SKV_KERNEL_I8_SCALAR) {
        i8_quant_q(qs, ng, d, own.qi, own.qs, own.qsum, own.qerr);
        q8 = &own;
    }
    /* tokens beyond limit are never folded: their probabilities are 0 now,
     * and the pass below covers 0..limit only (half the work of a prefill) */
    if (prob)
        for (uint32_t g = 0; g < ng; g++)
            for (uint64_t u = 0; u < n_prob; u++)
                prob[g * prob_stride + u] = u <= limit ? -INFINITY : 0.0f;
    for (uint32_t b = 0; b <= rows->n_buckets; b++) {
        run R;
        memset(&R, 0, sizeof R);
        if (b < rows->n_buckets) {
            const skv_bucket *B = &rows->buckets[b];
            if (B->head_dim != d)
                return skv_error(SKV_EINVAL, "attention rows: bucket of %u-bit rows has head_dim "
                                 "%u, not %u", B->bits, B->head_dim, d);
            if (B->k_mode == SKV_QMODE_CHAN)  /* the online cache never makes one */
                return skv_error(SKV_EINVAL, "attention rows: keys per channel are not "
                                 "supported here");
            R = bucket_run(B);
        } else {
            if (!rows->n_tail)
                break;
            const int h = rows->tail_hk != NULL;
            R.bits = h ? 16 : 32;
            R.rs = d * (h ? 2 : 4);
            R.kd = h ? (const uint8_t *)rows->tail_hk : (const uint8_t *)rows->tail_k;
            R.vd = h ? (const uint8_t *)rows->tail_hv : (const uint8_t *)rows->tail_v;
            R.t0 = rows->tail_t0;
            R.n = rows->n_tail;
        }
        uint64_t n = rows_upto(&R, limit);
        if (n)
            fold(kernel, &R, 0, n, qs, q8, ng, d, st, acc, prob, prob ? prob_stride : 0);
    }
    for (uint32_t g = 0; g < ng; g++) {
        skv_sm_finish(&st[g], acc + (size_t)g * d, out + (size_t)g * d, d);
        if (prob)
            probs_pass(kernel, prob + g * prob_stride, limit + 1, &st[g]);
    }
    return 0;
}

/* ---------------------------------------------------------------- oracle */

typedef struct ref_job {
    const skv_kv_view *L;
    const uint64_t *steps;
    uint64_t n_steps;
    const uint8_t *mask;    /* [n_kv_heads][n_tokens] or NULL */
    float *out, *prob;
    int failed;
} ref_job;

static void do_ref(void *arg, size_t k)
{
    ref_job *J = arg;
    const skv_kv_view *L = J->L;
    uint32_t H = L->n_kv_heads, G = L->n_heads / H, d = L->head_dim;
    uint64_t T = L->n_tokens;
    uint32_t h = (uint32_t)(k / J->n_steps);
    uint64_t si = k % J->n_steps, t = J->steps[si];
    double *s = malloc((size_t)(t + 1) * sizeof *s);
    double *o = malloc((size_t)d * sizeof *o);
    if (!s || !o) {
        J->failed = 1;
        free(s);
        free(o);
        return;
    }
    const float *K = (const float *)L->k + (size_t)h * T * d;
    const float *V = (const float *)L->v + (size_t)h * T * d;
    const uint8_t *mask = J->mask ? J->mask + (size_t)h * T : NULL;
    double scale = 1.0 / sqrt((double)d);
    for (uint32_t g = 0; g < G; g++) {
        uint32_t head = h * G + g;
        const float *q = L->q + ((size_t)head * T + t) * d;
        double m = -INFINITY;
        for (uint64_t u = 0; u <= t; u++) {
            if (mask && !mask[u]) {
                s[u] = -INFINITY;
                continue;
            }
            double a = 0;
            for (uint32_t j = 0; j < d; j++)
                a += (double)q[j] * (double)K[u * d + j];
            s[u] = a * scale;
            if (s[u] > m)
                m = s[u];
        }
        double l = 0;
        for (uint32_t j = 0; j < d; j++)
            o[j] = 0;
        for (uint64_t u = 0; u <= t; u++) {
            if (s[u] == -INFINITY) {
                s[u] = 0;
                continue;
            }
            double p = exp(s[u] - m);
            s[u] = p;
            l += p;
            for (uint32_t j = 0; j < d; j++)
                o[j] += p * (double)V[u * d + j];
        }
        float *dst = J->out + ((size_t)head * J->n_steps + si) * d;
        for (uint32_t j = 0; j < d; j++)
            dst[j] = l > 0 ? (float)(o[j] / l) : 0.0f;
        if (J->prob) {
            float *pr = J->prob + ((size_t)head * J->n_steps + si) * T;
            for (uint64_t u = 0; u < T; u++)
                pr[u] = u <= t && l > 0 ? (float)(s[u] / l) : 0.0f;
        }
    }
    free(s);
    free(o);
}

static int attend_ref_masked(skv_attend_ctx *ctx, const skv_kv_view *L, const uint8_t *mask,
                             const uint64_t *steps, uint64_t n_steps, float *out, float *prob)
{
    int rc = check_view(L, steps, n_steps);
    if (rc < 0)
        return rc;
    if (L->kind != SKV_KV_F32)
        return skv_error(SKV_EINVAL, "the reference attention needs float32 K and V");
    ref_job J = {L, steps, n_steps, mask, out, prob, 0};
    run_job(ctx, do_ref, &J, (size_t)L->n_kv_heads * n_steps);
    if (J.failed)
        return skv_error(SKV_ENOMEM, "reference attention: out of memory");
    return 0;
}

int skv_attend_layer_ref(skv_attend_ctx *ctx, const skv_kv_view *L, const uint64_t *steps,
                         uint64_t n_steps, float *out, float *prob)
{
    return attend_ref_masked(ctx, L, NULL, steps, n_steps, out, prob);
}

uint64_t skv_attend_bytes_read(const skv_kv_view *L, uint64_t t)
{
    uint64_t n = t + 1 < L->n_tokens ? t + 1 : L->n_tokens;
    if (L->kind == SKV_KV_F32)
        return 2 * n * L->head_dim * 4 * L->n_kv_heads;
    if (L->kind == SKV_KV_F16)
        return 2 * n * L->head_dim * 2 * L->n_kv_heads;
    uint64_t b = 0;
    run *runs = NULL;
    uint32_t *first = NULL, *count = NULL;
    if (layer_runs(L, &runs, &first, &count) == 0) {
        for (uint32_t h = 0; h < L->n_kv_heads; h++)
            for (uint32_t i = 0; i < count[h]; i++) {
                const run *R = &runs[first[h] + i];
                uint64_t r = rows_upto(R, t);
                uint64_t groups = R->kt ? (r + R->kt - 1) / R->kt : r ? 1 : 0;
                b += r * (4 + R->kps + R->vps + 2ull * R->rs) + groups * R->kgb;
            }
    }
    free(runs);
    free(first);
    free(count);
    return b;
}

/* ---------------------------------------------------------------- streams */

/* Chunks around a trace's layers: allocation chunks are checked in stream
 * order, ancillary ones skipped, other critical ones rejected. */
typedef struct {
    skv_alloc_seq seq;
    skv_trace_hdr h;
} trace_extra;

static int other_chunk(void *ctx, const skv_chunk *c)
{
    trace_extra *x = ctx;
    if (skv_chunk_is(c, "ALHD") || skv_chunk_is(c, "ALOC"))
        return skv_alloc_seq_chunk(&x->seq, &x->h, c);
    if (!skv_chunk_is_critical(c->type))
        return 0;
    return skv_error(SKV_EUNSUP, "unexpected critical chunk %s at byte %llu in a trace", c->type,
                     (unsigned long long)c->offset);
}

static void fill_athd(skv_athd *A, const skv_trace_hdr *h, uint32_t mode, int probs,
                      uint64_t *steps, uint64_t n_steps)
{
    memset(A, 0, sizeof *A);
    A->mode = mode;
    A->flags = probs ? SKV_ATHD_PROBS : 0;
    A->n_layers = h->n_layers;
    A->n_heads = h->n_heads;
    A->n_kv_heads = h->n_kv_heads;
    A->head_dim = h->head_dim;
    A->n_tokens = h->n_tokens;
    A->n_steps = n_steps;
    A->steps = steps;
    uint64_t f16 = 2ull * h->n_layers * h->n_kv_heads * h->n_tokens * h->head_dim * 2;
    A->fp16_bytes = f16;
    A->kv_bytes = mode == SKV_ATT_DENSE_F16 ? f16 : 2 * f16;
    snprintf(A->source, sizeof A->source, "%s", h->model);
}

static int attend_trace(skv_attend_ctx *ctx, skv_trace_reader *r, skv_stream *out,
                        const skv_attend_req *req, uint32_t mode)
{
    const skv_trace_hdr *h = &r->hdr;
    uint64_t *steps = NULL, n_steps = 0;
    int rc = skv_steps_parse(req->steps, h->n_tokens, &steps, &n_steps);
    if (rc < 0)
        return rc;
    skv_athd A;
    fill_athd(&A, h, mode, req->probs, steps, n_steps);
    snprintf(A.label, sizeof A.label, "%s", req->label ? req->label
             : mode == SKV_ATT_REFERENCE ? "policy=reference" : mode == SKV_ATT_DENSE_F16
             ? "policy=dense-fp16" : "policy=dense-fp32");
    skv_layer layer = {0};
    float *o = NULL, *p = NULL;
    void *k16 = NULL, *v16 = NULL;
    size_t no, np = 0, nkv;
    if (skv_mul_sizes(&no, 3, (size_t)h->n_heads, (size_t)n_steps, (size_t)h->head_dim) < 0 ||
        (req->probs && skv_mul_sizes(&np, 3, (size_t)h->n_heads, (size_t)n_steps,
                                     (size_t)h->n_tokens) < 0) ||
        skv_mul_sizes(&nkv, 3, (size_t)h->n_kv_heads, (size_t)h->n_tokens, (size_t)h->head_dim) < 0) {
        rc = skv_error(SKV_ELIMIT, "attention outputs too large");
        goto done;
    }
    if ((rc = skv_athd_write(out, &A)) < 0)
        goto done;
    while ((rc = skv_trace_next_layer(r, &layer)) == 1) {
        /* outputs allocated once a whole layer has been read: never more
         * memory than the input has shown to be real */
        if (!o && (!(o = skv_malloc(no * sizeof *o)) ||
                   (req->probs && !(p = skv_malloc(np * sizeof *p))) ||
                   (mode == SKV_ATT_DENSE_F16 &&
                    (!(k16 = skv_malloc(nkv * 2)) || !(v16 = skv_malloc(nkv * 2)))))) {
            rc = SKV_ENOMEM;
            goto done;
        }
        skv_kv_view L = {SKV_KV_F32, h->n_heads, h->n_kv_heads, h->head_dim, h->n_tokens,
                         layer.q, layer.k, layer.v, NULL};
        if (mode == SKV_ATT_DENSE_F16) {
            skv_convert_from_f32(SKV_F16, layer.k, k16, nkv);
            skv_convert_from_f32(SKV_F16, layer.v, v16, nkv);
            L.kind = SKV_KV_F16;
            L.k = k16;
            L.v = v16;
        }
        rc = mode == SKV_ATT_REFERENCE ? skv_attend_layer_ref(ctx, &L, steps, n_steps, o, p)
                                       : skv_attend_layer(ctx, &L, steps, n_steps, o, p);
        if (rc < 0 || (rc = skv_attn_write_layer(out, &A, layer.index, o, p)) < 0)
            goto done;
    }
done:
    skv_layer_free(&layer);
    free(o);
    free(p);
    free(k16);
    free(v16);
    free(steps);
    return rc < 0 ? rc : 0;
}

/* Label of a packed cache: the allocation's description, else its width,
 * from the PKHD totals alone (so a cache read one layer at a time can be
 * labelled before its first layer): every row stored and exactly the bytes
 * of every row at one width. */
static void cache_label(const skv_cache *c, char *out, size_t n)
{
    /* the ALHD chunk alone is enough: a cache keeps ALOC only on request */
    if (skv_cache_alloc_text(&c->extra, &c->hdr, out, n) > 0)
        return;
    skv_error_clear();
    const skv_pkhd *p = &c->pk;
    uint64_t heads = (uint64_t)p->n_layers * p->n_kv_heads;
    snprintf(out, n, "policy=packed");
    if (p->n_stored != heads * p->n_tokens)
        return;
    for (int w = 1; w < SKV_NBITS; w++) {
        uint32_t bits = skv_bit_widths[w];
        if (skv_pkhd_file_bytes() + heads * skv_bucket_file_bytes(&p->q, bits, p->n_tokens) ==
            p->cache_bytes) {
            snprintf(out, n, "policy=uniform-%u bits=%u", bits, bits);
            return;
        }
    }
}

/* Attention over a packed cache, one layer at a time. */
typedef struct pjob {
    uint32_t mode;
    int probs;
    skv_athd A;
    uint64_t *steps, n_steps;
    size_t no, np, nkv;     /* floats of o, p, and of k and v each */
    float *o, *p, *k, *v;   /* allocated with the first layer, not for a header alone */
    uint8_t *mask;
} pjob;

/* --reference attends the dequantized tokens: it has no rule for centroids */
static int ref_centroids(uint64_t n)
{
    return skv_error(SKV_EINVAL, "--reference dequantizes the cache's tokens, and this cache "
                     "also holds %llu centroids of merged tokens (use the default fused mode; "
                     "the reference of a trace is --reference on the trace)",
                     (unsigned long long)n);
}

static void pjob_free(pjob *j)
{
    free(j->o);
    free(j->p);
    free(j->k);
    free(j->v);
    free(j->mask);
    free(j->steps);
}

static int pjob_begin(pjob *j, const skv_cache *c, int has_q, skv_stream *out,
                      const skv_attend_req *req, uint32_t mode)
{
    const skv_trace_hdr *h = &c->hdr;
    memset(j, 0, sizeof *j);
    j->mode = mode;
    if (mode == SKV_ATT_DENSE_F16 || mode == SKV_ATT_DENSE_F32)
        return skv_error(SKV_EINVAL, "--dense needs a trace, and this is a packed cache (use "
                         "the default fused mode or --reference)");
    if (mode == SKV_ATT_REFERENCE && c->n_centroids)
        return ref_centroids(c->n_centroids);
    if (!has_q)
        return skv_error(SKV_EFORMAT, "the packed cache has no queries (skv-quant keeps them "
                         "only with --keep-queries): give its trace with --queries TRACE");
    int rc = skv_steps_parse(req->steps, h->n_tokens, &j->steps, &j->n_steps);
    if (rc < 0)
        return rc;
    skv_athd *A = &j->A;
    fill_athd(A, h, mode, req->probs, j->steps, j->n_steps);
    A->kv_bytes = c->pk.cache_bytes;
    A->fp16_bytes = c->pk.fp16_bytes;
    if (req->label)
        snprintf(A->label, sizeof A->label, "%s", req->label);
    else
        cache_label(c, A->label, sizeof A->label);
    uint64_t T = h->n_tokens;
    j->probs = req->probs;
    if (skv_mul_sizes(&j->no, 3, (size_t)h->n_heads, (size_t)j->n_steps,
                      (size_t)h->head_dim) < 0 ||
        (req->probs && skv_mul_sizes(&j->np, 3, (size_t)h->n_heads, (size_t)j->n_steps,
                                     (size_t)T) < 0) ||
        skv_mul_sizes(&j->nkv, 3, (size_t)h->n_kv_heads, (size_t)T, (size_t)h->head_dim) < 0)
        return skv_error(SKV_ELIMIT, "attention outputs too large");
    return skv_athd_write(out, A);
}

static int pjob_layer(pjob *j, skv_attend_ctx *ctx, const skv_cache *c, uint32_t l,
                      const float *q, skv_stream *out)
{
    const skv_trace_hdr *h = &c->hdr;
    uint32_t Hkv = h->n_kv_heads;
    uint64_t T = h->n_tokens;
    int rc;
    if (!j->o && (!(j->o = skv_malloc(j->no * sizeof *j->o)) ||
                  (j->probs && !(j->p = skv_malloc(j->np * sizeof *j->p))) ||
                  (j->mode == SKV_ATT_REFERENCE &&
                   (!(j->k = skv_malloc(j->nkv * sizeof *j->k)) ||
                    !(j->v = skv_malloc(j->nkv * sizeof *j->v)) ||
                    !(j->mask = skv_malloc((size_t)Hkv * T))))))
        return SKV_ENOMEM;
    skv_kv_view L = {SKV_KV_PACKED, h->n_heads, Hkv, h->head_dim, T, q, NULL, NULL,
                     skv_cache_head_at(c, l, 0)};
    if (j->mode == SKV_ATT_REFERENCE) {
        size_t per = (size_t)T * h->head_dim;
        for (uint32_t kh = 0; kh < Hkv; kh++)
            if (skv_cache_head_at(c, l, kh)->cent)
                return ref_centroids(c->n_centroids);
        for (uint32_t kh = 0; kh < Hkv; kh++) {
            skv_cache_dequantize_head(c, l, kh, j->k + kh * per, j->v + kh * per);
            /* the widths, as a mask: non-zero for the stored tokens */
            skv_cache_head_widths(skv_cache_head_at(c, l, kh), T, j->mask + (size_t)kh * T);
        }
        L.kind = SKV_KV_F32;
        L.k = j->k;
        L.v = j->v;
        rc = attend_ref_masked(ctx, &L, j->mask, j->steps, j->n_steps, j->o, j->p);
    } else {
        rc = skv_attend_layer(ctx, &L, j->steps, j->n_steps, j->o, j->p);
    }
    if (rc < 0 || (rc = skv_attn_write_layer(out, &j->A, l, j->o, j->p)) < 0)
        return rc;
    return 0;
}

static int attend_packed(skv_attend_ctx *ctx, const skv_cache *c, skv_stream *out,
                         const skv_attend_req *req, uint32_t mode)
{
    pjob j;
    int rc = pjob_begin(&j, c, c->q != NULL, out, req, mode);
    for (uint32_t l = 0; rc == 0 && l < c->hdr.n_layers; l++)
        rc = pjob_layer(&j, ctx, c, l, c->q[l], out);
    pjob_free(&j);
    return rc < 0 ? rc : 0;
}

/* A packed cache read one layer at a time, its queries from the cache or
 * from a trace read alongside (qpath). *qbad is set when the trace is what
 * failed. */
static int attend_packed_stream(skv_attend_ctx *ctx, skv_cache_reader *cr, const char *qpath,
                                skv_stream *out, const skv_attend_req *req, uint32_t mode,
                                int *qbad)
{
    const skv_cache *c = skv_cache_reader_cache(cr);
    skv_trace_reader *qr = NULL;
    skv_layer Q = {0};
    pjob j;
    memset(&j, 0, sizeof j);
    int rc = 0;
    if (qpath && !(qr = skv_cache_queries_open(c, qpath))) {
        *qbad = 1;
        return SKV_EFORMAT;
    }
    if ((rc = pjob_begin(&j, c, qr || c->q, out, req, mode)) < 0)
        goto done;
    uint32_t l;
    while ((rc = skv_cache_reader_next(cr, &l)) == 1) {
        const float *q = c->q ? c->q[l] : NULL;
        if (qr) {
            rc = skv_trace_next_layer(qr, &Q);
            if (rc <= 0) {
                *qbad = 1;
                if (rc == 0)
                    rc = skv_error(SKV_EFORMAT, "the trace ends before layer %u", l);
                goto done;
            }
            q = Q.q;
        }
        if ((rc = pjob_layer(&j, ctx, c, l, q, out)) < 0)
            goto done;
    }
    if (rc == 0 && qr && (rc = skv_trace_reader_finish(qr)) < 0)
        *qbad = 1;
done:
    skv_layer_free(&Q);
    skv_trace_reader_close(qr);
    pjob_free(&j);
    return rc < 0 ? rc : 0;
}

int skv_attend_cache(skv_attend_ctx *ctx, const skv_cache *c, skv_stream *out,
                     const skv_attend_req *req)
{
    uint32_t mode = req->mode == SKV_ATT_AUTO ? SKV_ATT_PACKED : req->mode;
    if (mode > SKV_ATT_PACKED)
        return skv_error(SKV_EINVAL, "unknown attention mode %u", mode);
    return attend_packed(ctx, c, out, req, mode);
}

int skv_attend_stream(skv_attend_ctx *ctx, const char *in, skv_stream *out,
                      const skv_attend_req *req)
{
    return skv_attend_stream_queries(ctx, in, NULL, out, req, NULL);
}

/* A trace with an allocation (skv-alloc output) in PACKED mode: packed as
 * skv-quant packs it, one layer at a time, into an unlinked temporary
 * file, then attended one layer at a time. */
static int attend_alloc_trace(skv_attend_ctx *ctx, skv_stream *s, const skv_chunk *trhd,
                              const char *in, skv_stream *out, const skv_attend_req *req)
{
    const char *td = getenv("TMPDIR");
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s/skv-attend-cache.XXXXXX", td && *td ? td : "/tmp");
    int fd = mkstemp(tmp);
    if (fd < 0) {
        skv_close(s);
        return skv_error(SKV_EIO, "cannot create a temporary file %s", tmp);
    }
    unlink(tmp);
    skv_quantize_opts qo;
    memset(&qo, 0, sizeof qo);
    skv_cache_plan plan;
    int rc;
    skv_stream *w = skv_open_write_fd(fd, "(temporary cache)", -1);
    if (!w) {
        skv_close(s);
        rc = SKV_EIO;
    } else if ((rc = skv_cache_quantize(s, trhd, in, w, &qo, &plan, NULL)) < 0) {
        skv_discard(w);
        if (strstr(skv_errmsg(), "no allocation"))
            rc = skv_error(rc, "%s (the fused kernel needs a packed cache, or a trace with an "
                           "allocation from skv-alloc)", skv_errmsg());
    } else {
        skv_cache_plan_free(&plan);
        rc = skv_close(w);
    }
    skv_stream *r = NULL;
    if (rc == 0 && lseek(fd, 0, SEEK_SET) != 0)
        rc = skv_error(SKV_EIO, "temporary cache: %s", strerror(errno));
    if (rc == 0 && !(r = skv_open_fd(fd, "(temporary cache)")))
        rc = SKV_EIO;
    skv_cache_reader *cr = NULL;
    if (rc == 0 && !(cr = skv_cache_reader_open(r, NULL)))
        rc = SKV_EFORMAT;
    int qbad = 0;
    if (rc == 0)
        rc = attend_packed_stream(ctx, cr, NULL, out, req, SKV_ATT_PACKED, &qbad);
    skv_cache_reader_close(cr);
    close(fd);
    return rc;
}

int skv_attend_stream_queries(skv_attend_ctx *ctx, const char *in, const char *queries,
                              skv_stream *out, const skv_attend_req *req, int *qbad)
{
    int qb = 0;
    if (!qbad)
        qbad = &qb;
    *qbad = 0;
    uint32_t mode = req->mode;
    if (mode > SKV_ATT_PACKED)
        return skv_error(SKV_EINVAL, "unknown attention mode %u", mode);
    skv_stream *s = skv_open_read(in);
    if (!s)
        return SKV_EIO;
    skv_chunk c;
    int rc;
    /* the first chunk after HEAD tells a trace from a packed cache */
    while ((rc = skv_read(s, &c)) == 1 && !skv_chunk_is(&c, SKV_T_TRHD)) {
        if (skv_chunk_is_critical(c.type)) {
            rc = skv_error(SKV_EFORMAT, "%s chunk at byte %llu where the trace header (TRHD) "
                           "was expected", c.type, (unsigned long long)c.offset);
            break;
        }
    }
    if (rc == 0)
        rc = skv_error(SKV_EFORMAT, "no trace header (TRHD) in stream");
    skv_trace_hdr h = {0};
    if (rc == 1)
        rc = skv_trhd_decode(&c, &h);
    if (rc < 0) {
        skv_close(s);
        return rc;
    }
    if (h.flags & SKV_TRACE_PACKED) {
        skv_cache_reader *cr = skv_cache_reader_open(s, &c);
        if (!cr)
            return SKV_EFORMAT;
        rc = attend_packed_stream(ctx, cr, queries, out, req,
                                  mode == SKV_ATT_AUTO ? SKV_ATT_PACKED : mode, qbad);
        skv_cache_reader_close(cr);
        return rc;
    }
    if (queries) {
        skv_close(s);
        return skv_error(SKV_EFORMAT, "this stream is a plain trace, not a packed cache "
                         "(--queries gives the queries of a packed cache)");
    }
    if (mode == SKV_ATT_PACKED && !(h.flags & SKV_TRACE_NO_QUERIES))
        return attend_alloc_trace(ctx, s, &c, in, out, req);
    if (mode == SKV_ATT_AUTO)
        mode = SKV_ATT_REFERENCE;
    trace_extra extra;
    memset(&extra, 0, sizeof extra);
    extra.h = h;
    if (h.flags & SKV_TRACE_NO_QUERIES) {
        skv_close(s);
        return skv_error(SKV_EFORMAT, "the trace has no queries");
    }
    /* a layer reader over the stream, positioned after TRHD and the TOKS */
    skv_trace_reader *r = skv_calloc(1, sizeof *r);
    if (!r) {
        skv_close(s);
        return SKV_ENOMEM;
    }
    r->s = s;
    r->hdr = h;
    r->other = other_chunk;
    r->other_ctx = &extra;
    uint64_t have = 0;
    while (rc == 0 && (h.flags & SKV_TRACE_HAS_TOKENS) && have < h.n_tokens) {
        if ((rc = skv_read(s, &c)) <= 0) {
            if (rc == 0) {
                r->at_end = 1;
                rc = skv_error(SKV_EFORMAT, "stream ends inside the token ids");
            }
            break;
        }
        rc = 0;
        if (!skv_chunk_is(&c, SKV_T_TOKS)) {
            if (skv_chunk_is(&c, SKV_T_TENS) || skv_chunk_is(&c, SKV_T_TRHD))
                rc = skv_error(SKV_EFORMAT, "%s chunk at byte %llu where token ids were expected",
                               c.type, (unsigned long long)c.offset);
            else
                rc = r->other(r->other_ctx, &c);
            continue;
        }
        uint64_t t0 = c.raw_size >= 16 ? skv_get64(c.data) : UINT64_MAX;
        uint64_t n = c.raw_size >= 16 ? skv_get64(c.data + 8) : 0;
        if (t0 != have || n == 0 || n > h.n_tokens - have || 16 + n * 4 != c.raw_size)
            rc = skv_error(SKV_EFORMAT, "TOKS chunk at byte %llu does not continue the token ids "
                           "at %llu", (unsigned long long)c.offset, (unsigned long long)have);
        else
            have += n;
    }
    if (rc == 0)
        rc = attend_trace(ctx, r, out, req, mode);
    if (rc == 0)
        rc = skv_trace_reader_finish(r);
    if (rc == 0)
        rc = skv_alloc_seq_end(&extra.seq);
    skv_trace_reader_close(r);
    return rc;
}
