/* attend.cu -- flash-decoding attention over the bucketed packed cache.
 *
 * Work split: every PBKT payload (a bucket, or part of one) of one (layer,
 * KV head) is a segment; each segment's tokens are cut into work items of
 * whole tiles, one thread block per item and pass of queries.  A block
 * handles all query heads of the GQA group (and all steps) at once, so each
 * packed byte is read once per group:
 *   - tiles of tt tokens (idx, K params, K rows, V params, V rows) are
 *     staged into shared memory with 16-byte cp.async copies, double
 *     buffered so the next tile streams in while this one is computed;
 *   - scores: LPT lanes per token (one lane per 8-value block), each lane
 *     unpacks and dequantizes its blocks in registers and the dot products
 *     are reduced with warp shuffles;
 *   - online softmax per query over the tile (running max m and sum l);
 *   - P.V: the same lane layout, accumulators in registers, rescaled when
 *     the running max moves;
 *   - the block writes its partial (m, l, acc) triple per query; a merge
 *     kernel combines the items of each (layer, head, step) exactly;
 *   - optionally, scores are kept and a third kernel writes the per-token
 *     attention mass summed over the GQA group (importance tracking input).
 * The arithmetic of dequantization (q * scale + bias, bias = min or
 * -2^(bits-1) * scale, fp16 parameters) is that of smartkv_qmath.h. */
#include "skv_cu.cuh"

#include <cuda_fp16.h>
#include <cuda_pipeline_primitives.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Bytes staged per tile (one buffer of two).  12 KiB: on the H200 every
 * case of scripts/bench-gpu ran 10-16% faster than with 6 KiB (fewer block
 * barriers per token); 24 KiB helped 128K and hurt 4K and 32K. */
#define SKV_TILE_BYTES 12288

/* 1: every query slice read from shared memory per token pass (the kernel
 * before stop 28), kept to measure the register path against. */
#ifndef SKV_CU_QSMEM
#define SKV_CU_QSMEM 0
#endif
/* Blocks per SM that the registers of the attention kernels with the
 * query slice in registers (QP * NB <= 4) must allow.  On the H200, head_dim
 * 128, 4 queries a block: 5 (96 registers, 208 bytes spilled) ran 1.13-1.16x
 * faster than 4 (127 registers, none spilled) at 32K-128K tokens, and 6 was
 * slower again. */
#ifndef SKV_CU_MINB
#define SKV_CU_MINB 5
#endif
/* Work items per layer: at most this many whole waves of resident blocks,
 * each item at least 256 tokens; where a layer has fewer tokens than one
 * wave of such items, the token rule of skv_core_build.  On the H200 one
 * wave beat the token rule (1.4-1.6 waves at 32K-128K, the last one part
 * empty) by 1.04-1.12x; 2 waves were no better at 128K.  0: the token rule
 * everywhere. */
#ifndef SKV_CU_WAVES
#define SKV_CU_WAVES 1
#endif

/* ---- errors and device ---- */

int skv_cu_fail(cudaError_t e, const char *what)
{
    if (e == cudaErrorMemoryAllocation)
        return skv_error(SKV_ENOMEM, "CUDA: out of device memory (%s)", what);
    if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver)
        return skv_error(SKV_ENODEV, "no CUDA device available (%s)", cudaGetErrorString(e));
    return skv_error(SKV_ENODEV, "CUDA error: %s (%s)", cudaGetErrorString(e), what);
}

int skv_cu_ready(void)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n <= 0) {
        (void)cudaGetLastError(); /* clear the sticky-free error state */
        return skv_error(SKV_ENODEV, "no CUDA device available");
    }
    return 0;
}

extern "C" int skv_cuda_available(void)
{
    int rc = skv_cu_ready();
    return rc < 0 ? rc : 1;
}

extern "C" int skv_cuda_device_info(char *name, size_t name_len, int *n_sm, double *peak_gbs)
{
    int rc = skv_cu_ready();
    if (rc < 0)
        return rc;
    int dev = 0;
    SKV_CU(cudaGetDevice(&dev));
    cudaDeviceProp p;
    SKV_CU(cudaGetDeviceProperties(&p, dev));
    if (name && name_len)
        snprintf(name, name_len, "%s (sm_%d%d)", p.name, p.major, p.minor);
    if (n_sm)
        *n_sm = p.multiProcessorCount;
    if (peak_gbs) {
        int clk_khz = 0, bus_bits = 0;
        if (cudaDeviceGetAttribute(&clk_khz, cudaDevAttrMemoryClockRate, dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, dev) != cudaSuccess) {
            (void)cudaGetLastError();
            clk_khz = bus_bits = 0;
        }
        /* double data rate: two transfers per clock */
        *peak_gbs = 2.0 * clk_khz * 1e3 * (bus_bits / 8.0) / 1e9;
    }
    return 0;
}

/* ---- kernels ---- */

namespace {

constexpr int NT = SKV_NT;
constexpr int NWARP = NT / 32;
constexpr int TTMAX = SKV_TT_MAX;

struct Geo {
    const uint8_t *arena;
    const skv_seg *segs;
    const skv_item *items;
    const uint32_t *lk_range;
    uint32_t item0, layer0;
    uint32_t d, nblk, dpad, H, KV, g, S, qtot, lpt_log;
    uint32_t n_tokens;
    float scale;
    const float *q;
    const uint32_t *pos;
    float *pm, *pl, *pacc, *sbuf;
    float *out, *fin_m, *fin_l, *mass;
    uint32_t stage_bytes;
};

__device__ __forceinline__ float h2f(uint32_t h)
{
    return __half2float(__ushort_as_half((unsigned short)h));
}

/* Scale and bias of group gi of one token's parameters (fp16 LE). */
__device__ __forceinline__ void group_par(const uint8_t *par, uint32_t gi, uint32_t bits,
                                          uint32_t mode, float &s, float &b)
{
    if (mode == 1u) {
        uint32_t w = *(const uint32_t *)(par + 4 * gi); /* 4-aligned: 4 bytes per group */
        s = h2f(w & 0xffffu);
        b = h2f(w >> 16);
    } else {
        s = h2f(*(const uint16_t *)(par + 2 * gi));
        b = -(float)(1u << (bits - 1)) * s;
    }
}

/* Dequantize block blk (values 8*blk .. 8*blk+7) of one staged row. */
template <int BITS>
__device__ __forceinline__ void decode_block(const uint8_t *row, const uint8_t *par, uint32_t blk,
                                             uint32_t d, uint32_t group, uint32_t mode,
                                             float x[8])
{
    if (BITS == 16) {
        if ((d & 7u) == 0) {
            uint4 w = *(const uint4 *)(row + 16 * blk);
            const __half2 *h = (const __half2 *)&w;
#pragma unroll
            for (int k = 0; k < 4; k++) {
                float2 f = __half22float2(h[k]);
                x[2 * k] = f.x;
                x[2 * k + 1] = f.y;
            }
        } else {
#pragma unroll
            for (int k = 0; k < 8; k++) {
                uint32_t j = blk * 8 + k;
                x[k] = j < d ? h2f(*(const uint16_t *)(row + 2 * j)) : 0.0f;
            }
        }
        return;
    }
    const uint8_t *p = row + blk * BITS;
    uint32_t c[8];
    if (BITS == 8) {
        uint2 u = *(const uint2 *)p;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            c[k] = (u.x >> (8 * k)) & 0xffu;
            c[k + 4] = (u.y >> (8 * k)) & 0xffu;
        }
    } else {
        uint32_t w;
        if (BITS == 2)
            w = *(const uint16_t *)p;
        else if (BITS == 4)
            w = *(const uint32_t *)p;
        else
            w = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16;
#pragma unroll
        for (int k = 0; k < 8; k++)
            c[k] = (w >> (BITS * k)) & ((1u << BITS) - 1u);
    }
    const uint32_t ng = d / group;
    const uint32_t j0 = blk * 8;
    uint32_t g0 = j0 / group, g7 = (j0 + 7) / group;
    if (g7 >= ng)
        g7 = ng - 1; /* padding values past head_dim: any finite parameters */
    if (g0 >= ng)
        g0 = ng - 1;
    if (g0 == g7) {
        float s, b;
        group_par(par, g0, BITS, mode, s, b);
#pragma unroll
        for (int k = 0; k < 8; k++)
            x[k] = fmaf((float)c[k], s, b);
    } else {
#pragma unroll
        for (int k = 0; k < 8; k++) {
            uint32_t gi = (j0 + k) / group;
            gi = gi < ng ? gi : ng - 1;
            float s, b;
            group_par(par, gi, BITS, mode, s, b);
            x[k] = fmaf((float)c[k], s, b);
        }
    }
}

/* Copy one section of a tile (16-byte aligned, padded) with cp.async. */
__device__ __forceinline__ void stage_sec(uint8_t *dst, const uint8_t *src, uint32_t bytes)
{
    for (uint32_t o = threadIdx.x * 16; o < bytes; o += NT * 16)
        __pipeline_memcpy_async(dst + o, src + o, 16);
}

/* Stage tokens [t0, t0 + tn) of a segment into shared memory (async).  The
 * staged layout: idx[tt] | K params | K rows | V params | V rows, each
 * section padded to 16 bytes.  Reading past tn rounds up to 16 bytes, which
 * stays inside the section's 64-byte padding (t0 is a multiple of 16). */
__device__ __forceinline__ void stage_tile(uint8_t *dst, const uint8_t *arena, const skv_seg &sg,
                                           uint32_t t0, uint32_t tn, bool dense)
{
    const uint32_t tt = sg.tt;
    uint32_t o = 0;
    if (!dense)
        stage_sec(dst, arena + sg.off_idx + 4ull * t0, (uint32_t)skv_a16(4ull * tn));
    o += tt * 4;
    if (sg.kpb)
        stage_sec(dst + o, arena + sg.off_kpar + (unsigned long long)t0 * sg.kpb,
                  (uint32_t)skv_a16((uint64_t)tn * sg.kpb));
    o += (uint32_t)skv_a16((uint64_t)tt * sg.kpb);
    stage_sec(dst + o, arena + sg.off_kdat + (unsigned long long)t0 * sg.rb,
              (uint32_t)skv_a16((uint64_t)tn * sg.rb));
    o += (uint32_t)skv_a16((uint64_t)tt * sg.rb);
    if (sg.vpb)
        stage_sec(dst + o, arena + sg.off_vpar + (unsigned long long)t0 * sg.vpb,
                  (uint32_t)skv_a16((uint64_t)tn * sg.vpb));
    o += (uint32_t)skv_a16((uint64_t)tt * sg.vpb);
    stage_sec(dst + o, arena + sg.off_vdat + (unsigned long long)t0 * sg.rb,
              (uint32_t)skv_a16((uint64_t)tn * sg.rb));
}

template <int BITS, int NB, int QP, bool DENSE>
__device__ __forceinline__ void attend_item(const Geo &G, const skv_seg &sg, const skv_item &it,
                                            uint8_t *smem)
{
    const uint32_t d = G.d, dpad = G.dpad, nblk = G.nblk;
    float *q_s = (float *)smem;
    float *sc_s = q_s + QP * dpad;
    float *m_s = sc_s + QP * TTMAX;
    float *l_s = m_s + QP;
    float *f_s = l_s + QP;
    uint32_t *pos_s = (uint32_t *)(f_s + QP);
    uint8_t *stage = smem + skv_a16((uint64_t)(QP * dpad + QP * TTMAX + 4 * QP) * 4);

    const uint32_t tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const uint32_t lrel = sg.layer - G.layer0;
    const uint32_t slot0 = blockIdx.y * QP;
    const uint32_t nq = min((uint32_t)QP, G.qtot - slot0);
    const size_t qbase = ((size_t)(lrel * G.H + sg.kvh * G.g) * G.S) * d;

    for (uint32_t e = tid; e < QP * dpad; e += NT) {
        uint32_t q = e / dpad, c = e % dpad;
        q_s[e] = (q < nq && c < d) ? G.q[qbase + (size_t)(slot0 + q) * d + c] : 0.0f;
    }
    if (tid < QP) {
        m_s[tid] = -INFINITY;
        l_s[tid] = 0.0f;
        f_s[tid] = 1.0f;
        pos_s[tid] = tid < nq ? G.pos[(slot0 + tid) % G.S] : 0u;
    }

    const uint32_t lpt_log = G.lpt_log, LPT = 1u << lpt_log;
    const uint32_t j = lane & (LPT - 1);
    const uint32_t tslot = warp * (32u >> lpt_log) + (lane >> lpt_log);
    const uint32_t TPB = NT >> lpt_log;
    const uint32_t tt = sg.tt;
    const uint32_t so_kpar = tt * 4;
    const uint32_t so_kdat = so_kpar + (uint32_t)skv_a16((uint64_t)tt * sg.kpb);
    const uint32_t so_vpar = so_kdat + (uint32_t)skv_a16((uint64_t)tt * sg.rb);
    const uint32_t so_vdat = so_vpar + (uint32_t)skv_a16((uint64_t)tt * sg.vpb);

    float acc[QP][NB][8];
#pragma unroll
    for (int q = 0; q < QP; q++)
#pragma unroll
        for (int b = 0; b < NB; b++)
#pragma unroll
            for (int k = 0; k < 8; k++)
                acc[q][b][k] = 0.0f;

    /* The blocks a lane scores are the same for every token (j + b * LPT),
     * so its slice of the queries can live in registers: reading it from
     * shared memory for every token pass cost a 2-4 way bank-conflicted
     * float4 load per query and 8 values.  Kept in shared memory when the
     * slice would pass 32 registers (the accumulators take as many). */
    constexpr bool QREG = QP * NB * 8 <= 32 && !SKV_CU_QSMEM;
    float qr[QREG ? QP : 1][QREG ? NB : 1][8];
    if (QREG) {
        __syncthreads(); /* q_s written */
#pragma unroll
        for (int q = 0; q < (QREG ? QP : 1); q++)
#pragma unroll
            for (int b = 0; b < (QREG ? NB : 1); b++) {
                const uint32_t blk = j + b * LPT;
#pragma unroll
                for (int k = 0; k < 8; k++)
                    qr[q][b][k] = blk < nblk ? q_s[q * dpad + blk * 8 + k] : 0.0f;
            }
    }

    const uint32_t ntok = it.i1 - it.i0;
    const uint32_t ntile = (ntok + tt - 1) / tt;
    stage_tile(stage, G.arena, sg, it.i0, min(tt, ntok), DENSE);
    __pipeline_commit();

    for (uint32_t ti = 0; ti < ntile; ti++) {
        const uint32_t t0 = it.i0 + ti * tt;
        const uint32_t tn = min(tt, it.i1 - t0);
        if (ti + 1 < ntile)
            stage_tile(stage + ((ti + 1) & 1) * G.stage_bytes, G.arena, sg, t0 + tt,
                       min(tt, it.i1 - t0 - tt), DENSE);
        __pipeline_commit();
        __pipeline_wait_prior(1);
        __syncthreads();
        const uint8_t *buf = stage + (ti & 1) * G.stage_bytes;
        const uint32_t *idx_s = (const uint32_t *)buf;

        /* scores */
        for (uint32_t base = 0; base < tn; base += TPB) {
            const uint32_t t = base + tslot;
            const bool valid = t < tn;
            const uint32_t tc = valid ? t : 0;
            float part[QP];
#pragma unroll
            for (int q = 0; q < QP; q++)
                part[q] = 0.0f;
#pragma unroll
            for (int b = 0; b < NB; b++) {
                const uint32_t blk = j + b * LPT;
                if (blk < nblk) {
                    float x[8];
                    decode_block<BITS>(buf + so_kdat + tc * sg.rb, buf + so_kpar + tc * sg.kpb, blk,
                                       d, sg.kgroup, sg.kmode, x);
#pragma unroll
                    for (int q = 0; q < QP; q++) {
                        if (QREG) {
                            const float *a = qr[QREG ? q : 0][QREG ? b : 0];
                            part[q] += x[0] * a[0] + x[1] * a[1] + x[2] * a[2] + x[3] * a[3] +
                                       x[4] * a[4] + x[5] * a[5] + x[6] * a[6] + x[7] * a[7];
                        } else {
                            const float4 *qv = (const float4 *)(q_s + q * dpad + blk * 8);
                            float4 a = qv[0], c = qv[1];
                            part[q] += x[0] * a.x + x[1] * a.y + x[2] * a.z + x[3] * a.w +
                                       x[4] * c.x + x[5] * c.y + x[6] * c.z + x[7] * c.w;
                        }
                    }
                }
            }
            for (uint32_t off = LPT >> 1; off > 0; off >>= 1)
#pragma unroll
                for (int q = 0; q < QP; q++)
                    part[q] += __shfl_xor_sync(0xffffffffu, part[q], off);
            if (valid && j == 0) {
                const uint32_t idx = DENSE ? t0 + t : idx_s[t];
#pragma unroll
                for (int q = 0; q < QP; q++) {
                    float s = part[q] * G.scale;
                    if ((uint32_t)q >= nq || idx > pos_s[q])
                        s = -INFINITY;
                    sc_s[q * TTMAX + t] = s;
                    if (G.sbuf && (uint32_t)q < nq)
                        G.sbuf[((size_t)(lrel * G.KV + sg.kvh) * G.qtot + slot0 + q) * G.n_tokens +
                               idx] = s;
                }
            }
        }
        __syncthreads();

        /* online softmax over the tile */
        for (uint32_t q = warp; q < QP; q += NWARP) {
            float mx = -INFINITY;
            for (uint32_t t = lane; t < tn; t += 32)
                mx = fmaxf(mx, sc_s[q * TTMAX + t]);
            for (int off = 16; off > 0; off >>= 1)
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
            const float m_old = m_s[q];
            const float m_new = fmaxf(m_old, mx);
            float sum = 0.0f;
            for (uint32_t t = lane; t < tn; t += 32) {
                float s = sc_s[q * TTMAX + t];
                float p = m_new == -INFINITY ? 0.0f : expf(s - m_new);
                sc_s[q * TTMAX + t] = p;
                sum += p;
            }
            for (int off = 16; off > 0; off >>= 1)
                sum += __shfl_xor_sync(0xffffffffu, sum, off);
            if (lane == 0) {
                const float f = m_new == -INFINITY ? 1.0f : expf(m_old - m_new);
                l_s[q] = l_s[q] * f + sum;
                m_s[q] = m_new;
                f_s[q] = f;
            }
        }
        __syncthreads();

        /* P.V */
#pragma unroll
        for (int q = 0; q < QP; q++) {
            const float f = f_s[q];
#pragma unroll
            for (int b = 0; b < NB; b++)
#pragma unroll
                for (int k = 0; k < 8; k++)
                    acc[q][b][k] *= f;
        }
        for (uint32_t base = 0; base < tn; base += TPB) {
            const uint32_t t = base + tslot;
            const bool valid = t < tn;
            const uint32_t tc = valid ? t : 0;
            float p[QP];
#pragma unroll
            for (int q = 0; q < QP; q++)
                p[q] = valid ? sc_s[q * TTMAX + tc] : 0.0f;
#pragma unroll
            for (int b = 0; b < NB; b++) {
                const uint32_t blk = j + b * LPT;
                if (blk < nblk) {
                    float x[8];
                    decode_block<BITS>(buf + so_vdat + tc * sg.rb, buf + so_vpar + tc * sg.vpb, blk,
                                       d, sg.vgroup, sg.vmode, x);
#pragma unroll
                    for (int q = 0; q < QP; q++)
#pragma unroll
                        for (int k = 0; k < 8; k++)
                            acc[q][b][k] = fmaf(p[q], valid ? x[k] : 0.0f, acc[q][b][k]);
                }
            }
        }
        __syncthreads();
    }
    __pipeline_wait_prior(0);
    __syncthreads();

    /* sum the accumulators of the token slots: lanes of a warp, then warps */
    for (uint32_t off = LPT; off < 32; off <<= 1)
#pragma unroll
        for (int q = 0; q < QP; q++)
#pragma unroll
            for (int b = 0; b < NB; b++)
#pragma unroll
                for (int k = 0; k < 8; k++)
                    acc[q][b][k] += __shfl_xor_sync(0xffffffffu, acc[q][b][k], off);
    float *red = (float *)stage; /* NWARP * QP * dpad floats (host sized the region) */
    if (lane < LPT) {
#pragma unroll
        for (int q = 0; q < QP; q++)
#pragma unroll
            for (int b = 0; b < NB; b++) {
                const uint32_t blk = j + b * LPT;
                if (blk < nblk)
#pragma unroll
                    for (int k = 0; k < 8; k++)
                        red[(warp * QP + q) * dpad + blk * 8 + k] = acc[q][b][k];
            }
    }
    __syncthreads();
    const size_t item = blockIdx.x;
    for (uint32_t e = tid; e < nq * d; e += NT) {
        const uint32_t q = e / d, c = e % d;
        float s = 0.0f;
#pragma unroll
        for (int w = 0; w < NWARP; w++)
            s += red[(w * QP + q) * dpad + c];
        G.pacc[(item * G.qtot + slot0 + q) * d + c] = s;
    }
    if (tid < nq) {
        G.pm[item * G.qtot + slot0 + tid] = m_s[tid];
        G.pl[item * G.qtot + slot0 + tid] = l_s[tid];
    }
}

/* minimum blocks per SM 0: none (the compiler's choice, as before) */
template <int NB, int QP, bool DENSE>
__global__ void __launch_bounds__(NT, QP * NB <= 4 ? SKV_CU_MINB : 0) attend_kernel(Geo G)
{
    extern __shared__ __align__(16) uint8_t smem[];
    const skv_item it = G.items[G.item0 + blockIdx.x];
    const skv_seg sg = G.segs[it.seg];
    if (DENSE) {
        attend_item<16, NB, QP, true>(G, sg, it, smem);
        return;
    }
    switch (sg.bits) {
    case 2: attend_item<2, NB, QP, false>(G, sg, it, smem); break;
    case 3: attend_item<3, NB, QP, false>(G, sg, it, smem); break;
    case 4: attend_item<4, NB, QP, false>(G, sg, it, smem); break;
    case 8: attend_item<8, NB, QP, false>(G, sg, it, smem); break;
    default: attend_item<16, NB, QP, false>(G, sg, it, smem); break;
    }
}

/* Combine the partial (m, l, acc) triples of one (layer, head, step).  The
 * block's threads find the largest m, then the sum L, together; turn each
 * item's m into its weight exp(m - M) once (into shared memory, MERGE_CHUNK
 * items at a time); and each thread sums its channels' partial accumulators
 * with those weights.  (Each thread re-reading every item's m and l for its
 * channel, ~130 items three times at 32K tokens, cost 12-19% of a decode
 * step on the H200.) */
#define MERGE_NT 128
#define MERGE_CHUNK 512
#define MERGE_CPT 8 /* channels per thread: head_dim <= 1024 */

__device__ __forceinline__ float block_reduce(float v, bool is_max, float *red)
{
    for (int off = 16; off > 0; off >>= 1) {
        const float o = __shfl_xor_sync(0xffffffffu, v, off);
        v = is_max ? fmaxf(v, o) : v + o;
    }
    __syncthreads(); /* red is free */
    if ((threadIdx.x & 31) == 0)
        red[threadIdx.x >> 5] = v;
    __syncthreads();
    v = red[0];
    for (int w = 1; w < MERGE_NT / 32; w++)
        v = is_max ? fmaxf(v, red[w]) : v + red[w];
    return v;
}

__global__ void __launch_bounds__(MERGE_NT) merge_kernel(Geo G)
{
    __shared__ float w_s[MERGE_CHUNK];
    __shared__ float red[MERGE_NT / 32];
    const uint32_t o = blockIdx.x, tid = threadIdx.x;
    const uint32_t s = o % G.S, h = (o / G.S) % G.H, lrel = o / (G.S * G.H);
    const uint32_t kvh = h / G.g, slot = (h % G.g) * G.S + s;
    const uint32_t lk = (G.layer0 + lrel) * G.KV + kvh;
    const uint32_t b = G.lk_range[2 * lk] - G.item0, e = G.lk_range[2 * lk + 1] - G.item0;
    float M = -INFINITY;
    for (uint32_t i = b + tid; i < e; i += MERGE_NT)
        M = fmaxf(M, G.pm[(size_t)i * G.qtot + slot]);
    M = block_reduce(M, true, red);
    float L = 0.0f;
    if (M != -INFINITY)
        for (uint32_t i = b + tid; i < e; i += MERGE_NT) {
            const float m = G.pm[(size_t)i * G.qtot + slot];
            if (m != -INFINITY)
                L += G.pl[(size_t)i * G.qtot + slot] * expf(m - M);
        }
    L = block_reduce(L, false, red);
    float a[MERGE_CPT];
#pragma unroll
    for (int k = 0; k < MERGE_CPT; k++)
        a[k] = 0.0f;
    if (L > 0.0f)
        for (uint32_t c0 = b; c0 < e; c0 += MERGE_CHUNK) {
            const uint32_t n = min((uint32_t)MERGE_CHUNK, e - c0);
            __syncthreads(); /* the last chunk's weights are used */
            for (uint32_t i = tid; i < n; i += MERGE_NT) {
                const float m = G.pm[(size_t)(c0 + i) * G.qtot + slot];
                w_s[i] = m == -INFINITY ? 0.0f : expf(m - M);
            }
            __syncthreads();
#pragma unroll
            for (int k = 0; k < MERGE_CPT; k++) {
                const uint32_t c = tid + k * MERGE_NT;
                if (c < G.d) {
                    const float *p = G.pacc + ((size_t)c0 * G.qtot + slot) * G.d + c;
                    const size_t stride = (size_t)G.qtot * G.d;
                    float x = a[k];
#pragma unroll 4
                    for (uint32_t i = 0; i < n; i++)
                        x = fmaf(p[i * stride], w_s[i], x);
                    a[k] = x;
                }
            }
        }
#pragma unroll
    for (int k = 0; k < MERGE_CPT; k++) {
        const uint32_t c = tid + k * MERGE_NT;
        if (c < G.d)
            G.out[(size_t)o * G.d + c] = L > 0.0f ? a[k] / L : 0.0f;
    }
    if (tid == 0) {
        G.fin_m[o] = M;
        G.fin_l[o] = L;
    }
}

/* Per-token attention mass summed over the GQA group, from the kept scores. */
__global__ void __launch_bounds__(128) mass_kernel(Geo G)
{
    const skv_item it = G.items[G.item0 + blockIdx.x];
    const skv_seg sg = G.segs[it.seg];
    const uint32_t lrel = sg.layer - G.layer0;
    const bool implicit = sg.off_idx == SKV_NOIDX;
    const uint32_t *idxp = implicit ? NULL : (const uint32_t *)(G.arena + sg.off_idx);
    for (uint32_t i = it.i0 + threadIdx.x; i < it.i1; i += blockDim.x) {
        const uint32_t idx = implicit ? i : idxp[i];
        for (uint32_t s = 0; s < G.S; s++) {
            float sum = 0.0f;
            for (uint32_t hg = 0; hg < G.g; hg++) {
                const uint32_t slot = hg * G.S + s;
                const uint32_t o = (lrel * G.H + sg.kvh * G.g + hg) * G.S + s;
                const float L = G.fin_l[o];
                const float sc = G.sbuf[((size_t)(lrel * G.KV + sg.kvh) * G.qtot + slot) *
                                            G.n_tokens + idx];
                if (L > 0.0f && sc != -INFINITY)
                    sum += expf(sc - G.fin_m[o]) / L;
            }
            G.mass[((size_t)(lrel * G.KV + sg.kvh) * G.S + s) * G.n_tokens + idx] = sum;
        }
    }
}

typedef void (*attend_fn)(Geo);

/* Queries per pass: 1, 2, 4 or 8 for head_dim <= 256 (one block of 8
 * values per lane), 4 for <= 512, 2 for <= 1024: at most 64 accumulators
 * per thread. */
static uint32_t qp_for(uint32_t nb, uint32_t qtot)
{
    if (nb > 1)
        return 8 / nb;
    uint32_t qp = 1;
    while (qp < qtot && qp < 8)
        qp <<= 1;
    return qp;
}

template <bool DENSE> attend_fn pick_kernel(uint32_t nb, uint32_t qp)
{
    if (nb == 1) {
        switch (qp) {
        case 1: return attend_kernel<1, 1, DENSE>;
        case 2: return attend_kernel<1, 2, DENSE>;
        case 4: return attend_kernel<1, 4, DENSE>;
        default: return attend_kernel<1, 8, DENSE>;
        }
    }
    return nb == 2 ? attend_kernel<2, 4, DENSE> : attend_kernel<4, 2, DENSE>;
}

} /* namespace */

/* ---- core: segments, items, runs ---- */

static int cmp_seg(const void *a, const void *b)
{
    const skv_seg *x = (const skv_seg *)a, *y = (const skv_seg *)b;
    if (x->layer != y->layer)
        return x->layer < y->layer ? -1 : 1;
    if (x->kvh != y->kvh)
        return x->kvh < y->kvh ? -1 : 1;
    if (x->bits != y->bits)
        return x->bits < y->bits ? -1 : 1;
    return x->off_kdat < y->off_kdat ? -1 : x->off_kdat > y->off_kdat;
}

static uint32_t nblk_of(uint32_t d) { return (d + 7) / 8; }

static uint32_t lpt_log_of(uint32_t d)
{
    uint32_t l = 0;
    while ((1u << l) < nblk_of(d) && l < 5)
        l++;
    return l;
}

static uint32_t nb_of(uint32_t d)
{
    uint32_t lpt = 1u << lpt_log_of(d);
    uint32_t nb = (nblk_of(d) + lpt - 1) / lpt;
    return nb <= 1 ? 1 : nb <= 2 ? 2 : 4;
}

static size_t smem_for(const skv_core *c, uint32_t qp)
{
    const uint32_t dpad = nblk_of(c->sh.head_dim) * 8;
    size_t head = skv_a16((uint64_t)(qp * dpad + qp * SKV_TT_MAX + 4 * qp) * 4);
    size_t stage = 2 * (size_t)c->stage_bytes;
    size_t red = (size_t)NWARP * qp * dpad * 4;
    return head + (stage > red ? stage : red);
}

/* The attention kernel for qp queries a pass, and the dynamic shared memory
 * it needs (allowed past the 48 KiB default where it needs more). */
static cudaError_t attend_kernel_for(const skv_core *c, uint32_t qp, attend_fn *fn, size_t *smem)
{
    const uint32_t nb = nb_of(c->sh.head_dim);
    *smem = smem_for(c, qp);
    *fn = c->dense ? pick_kernel<true>(nb, qp) : pick_kernel<false>(nb, qp);
    if (*smem <= 48 * 1024)
        return cudaSuccess;
    return cudaFuncSetAttribute(*fn, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)*smem);
}

#if SKV_CU_WAVES > 0
/* Items of one layer if its segments are cut every `want` tokens (rounded
 * up to whole tiles). */
static uint64_t items_at(const skv_seg *hs, uint32_t n_segs, uint32_t layer, uint64_t want)
{
    uint64_t n = 0;
    for (uint32_t i = 0; i < n_segs; i++)
        if (hs[i].layer == layer && hs[i].n) {
            uint64_t chunk = (want + hs[i].tt - 1) / hs[i].tt * hs[i].tt;
            n += (hs[i].n + chunk - 1) / chunk;
        }
    return n;
}

/* The fewest tokens per item that keep a layer within `target` items. */
static uint64_t want_for_waves(const skv_seg *hs, uint32_t n_segs, uint32_t layer,
                               uint64_t target)
{
    uint64_t lo = 256, hi = 1ull << 25;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (items_at(hs, n_segs, layer, mid) <= target)
            hi = mid;
        else
            lo = mid + 1;
    }
    return lo;
}
#endif

int skv_core_build(skv_core *c, skv_seg *hs, uint32_t n_segs)
{
    const skv_cuda_shape *sh = &c->sh;
    int nsm = 0, dev = 0;
    SKV_CU(cudaGetDevice(&dev));
    SKV_CU(cudaDeviceGetAttribute(&nsm, cudaDevAttrMultiProcessorCount, dev));
    if (nsm <= 0)
        nsm = 1;
    qsort(hs, n_segs, sizeof *hs, cmp_seg);
    const uint32_t n_lk = sh->n_layers * sh->n_kv_heads;
    uint64_t *layer_tok = (uint64_t *)skv_calloc(sh->n_layers, sizeof *layer_tok);
    c->layer_item0 = (uint32_t *)skv_calloc(sh->n_layers + 1, sizeof(uint32_t));
    uint32_t *lk = (uint32_t *)skv_calloc((size_t)n_lk * 2, sizeof(uint32_t));
    if (!layer_tok || !c->layer_item0 || !lk) {
        free(layer_tok);
        free(lk);
        return SKV_ENOMEM;
    }
    c->stage_bytes = 0;
    for (uint32_t i = 0; i < n_segs; i++) {
        layer_tok[hs[i].layer] += hs[i].n;
        uint64_t sb = skv_seg_stage_bytes(&hs[i], hs[i].tt);
        if (sb > c->stage_bytes)
            c->stage_bytes = (uint32_t)sb;
    }
    /* whole waves: resident blocks of the kernel one decode step runs */
    uint64_t *layer_want = NULL;
#if SKV_CU_WAVES > 0
    {
        attend_fn fn;
        size_t smem;
        int per_sm = 0;
        if (attend_kernel_for(c, qp_for(nb_of(sh->head_dim), c->g), &fn, &smem) != cudaSuccess ||
            cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fn, NT, smem) != cudaSuccess) {
            (void)cudaGetLastError();
            per_sm = 0;
        }
        const uint64_t slots = (uint64_t)nsm * (per_sm > 0 ? per_sm : 0);
        layer_want = (uint64_t *)skv_calloc(sh->n_layers, sizeof *layer_want);
        for (uint32_t l = 0; layer_want && slots && l < sh->n_layers; l++) {
            uint64_t w = layer_tok[l] / 256 / slots;
            w = w < (uint64_t)SKV_CU_WAVES ? w : (uint64_t)SKV_CU_WAVES;
            if (w)
                layer_want[l] = want_for_waves(hs, n_segs, l, w * slots);
        }
    }
#endif
    /* the token rule, where a layer is too short for whole waves: enough
     * blocks to hide memory latency (8 blocks per SM: 2 left the H200 at 3%
     * of its bandwidth at 32K-128K tokens), but not below about 256 tokens
     * each (nor below 2 per SM), where the partial results to merge cost
     * more than they save (8 per SM were 1.4x slower at 4K):
     * scripts/bench-gpu, one layer of 8 KV heads, head_dim 128 */
    uint64_t n_items = 0;
    for (int pass = 0; pass < 2; pass++) {
        skv_item *items = NULL;
        if (pass == 1) {
            if (n_items > UINT32_MAX / 2) {
                free(layer_tok);
                free(layer_want);
                free(lk);
                return skv_error(SKV_ELIMIT, "CUDA cache: too many work items");
            }
            items = (skv_item *)skv_malloc(n_items * sizeof *items + 1);
            if (!items) {
                free(layer_tok);
                free(layer_want);
                free(lk);
                return SKV_ENOMEM;
            }
        }
        uint64_t k = 0;
        for (uint32_t i = 0; i < n_segs; i++) {
            const skv_seg *s = &hs[i];
            uint64_t lt = layer_tok[s->layer], nb = lt / 256;
            nb = nb > 8 * (uint64_t)nsm ? 8 * (uint64_t)nsm : nb;
            nb = nb < 2 * (uint64_t)nsm ? 2 * (uint64_t)nsm : nb;
            uint64_t want = (lt + nb - 1) / nb;
            if (layer_want && layer_want[s->layer])
                want = layer_want[s->layer];
            uint64_t chunk = (want + s->tt - 1) / s->tt * s->tt;
            if (chunk < s->tt)
                chunk = s->tt;
            const uint32_t l = s->layer * sh->n_kv_heads + s->kvh;
            for (uint64_t t = 0; t < s->n; t += chunk) {
                if (pass == 1) {
                    items[k].seg = i;
                    items[k].i0 = (uint32_t)t;
                    items[k].i1 = (uint32_t)(t + chunk < s->n ? t + chunk : s->n);
                    items[k].lk = l;
                    if (lk[2 * l + 1] == 0)
                        lk[2 * l] = (uint32_t)k;
                    lk[2 * l + 1] = (uint32_t)k + 1;
                }
                k++;
            }
        }
        if (pass == 0) {
            n_items = k;
            continue;
        }
        /* layer ranges (items are in layer order) */
        uint32_t li = 0;
        for (uint32_t l = 0; l <= sh->n_layers; l++) {
            while (li < n_items && hs[items[li].seg].layer < l)
                li++;
            c->layer_item0[l] = li;
        }
        /* empty (layer, kv head): an empty range at the layer's start */
        for (uint32_t l = 0; l < sh->n_layers; l++)
            for (uint32_t h = 0; h < sh->n_kv_heads; h++) {
                uint32_t x = l * sh->n_kv_heads + h;
                if (lk[2 * x + 1] == 0)
                    lk[2 * x] = lk[2 * x + 1] = c->layer_item0[l];
            }
        c->n_items = (uint32_t)n_items;
        cudaError_t e = cudaMalloc((void **)&c->items, n_items * sizeof *items + 1);
        if (e == cudaSuccess)
            e = cudaMemcpy(c->items, items, n_items * sizeof *items, cudaMemcpyHostToDevice);
        free(items);
        if (e != cudaSuccess) {
            free(layer_tok);
            free(layer_want);
            free(lk);
            return skv_cu_fail(e, "work items");
        }
    }
    free(layer_tok);
    free(layer_want);
    c->n_segs = n_segs;
    cudaError_t e = cudaMalloc((void **)&c->segs, (size_t)n_segs * sizeof *hs + 1);
    if (e == cudaSuccess)
        e = cudaMemcpy(c->segs, hs, (size_t)n_segs * sizeof *hs, cudaMemcpyHostToDevice);
    if (e == cudaSuccess)
        e = cudaMalloc((void **)&c->lk_range, (size_t)n_lk * 2 * sizeof(uint32_t));
    if (e == cudaSuccess)
        e = cudaMemcpy(c->lk_range, lk, (size_t)n_lk * 2 * sizeof(uint32_t),
                       cudaMemcpyHostToDevice);
    if (e == cudaSuccess)
        e = cudaEventCreate(&c->ev0);
    if (e == cudaSuccess)
        e = cudaEventCreate(&c->ev1);
    free(lk);
    if (e != cudaSuccess)
        return skv_cu_fail(e, "cache tables");
    return 0;
}

void skv_core_free(skv_core *c)
{
    cudaFree(c->arena);
    cudaFree(c->segs);
    cudaFree(c->items);
    cudaFree(c->lk_range);
    cudaFree(c->q);
    cudaFree(c->out);
    cudaFree(c->pm);
    cudaFree(c->pl);
    cudaFree(c->pacc);
    cudaFree(c->fin_m);
    cudaFree(c->fin_l);
    cudaFree(c->sbuf);
    cudaFree(c->mass);
    cudaFree(c->pos);
    if (c->ev0)
        cudaEventDestroy(c->ev0);
    if (c->ev1)
        cudaEventDestroy(c->ev1);
    free(c->layer_item0);
}

/* Grow a device buffer to at least n bytes (contents are not kept). */
static int grow(void **p, size_t *cap, size_t n)
{
    if (n <= *cap && *p)
        return 0;
    cudaFree(*p);
    *p = NULL;
    *cap = 0;
    SKV_CU(cudaMalloc(p, n ? n : 1));
    *cap = n;
    return 0;
}

static Geo geo_of(const skv_core *c)
{
    Geo G;
    memset(&G, 0, sizeof G);
    const uint32_t d = c->sh.head_dim;
    G.arena = c->arena;
    G.segs = c->segs;
    G.items = c->items;
    G.lk_range = c->lk_range;
    G.item0 = c->layer_item0[c->r_layer0];
    G.layer0 = c->r_layer0;
    G.d = d;
    G.nblk = nblk_of(d);
    G.dpad = G.nblk * 8;
    G.H = c->sh.n_heads;
    G.KV = c->sh.n_kv_heads;
    G.g = c->g;
    G.S = c->r_steps;
    G.qtot = c->g * c->r_steps;
    G.lpt_log = lpt_log_of(d);
    G.n_tokens = (uint32_t)c->sh.n_tokens;
    G.scale = 1.0f / sqrtf((float)d);
    G.q = c->q;
    G.pos = c->pos;
    G.pm = c->pm;
    G.pl = c->pl;
    G.pacc = c->pacc;
    G.sbuf = c->r_mass ? c->sbuf : NULL;
    G.out = c->out;
    G.fin_m = c->fin_m;
    G.fin_l = c->fin_l;
    G.mass = c->mass;
    G.stage_bytes = c->stage_bytes;
    return G;
}

int skv_core_launch(skv_core *c)
{
    Geo G = geo_of(c);
    const uint32_t nitems = c->layer_item0[c->r_layer0 + c->r_nl] - G.item0;
    const uint32_t nb = nb_of(G.d), qp = qp_for(nb, G.qtot);
    const uint32_t npass = (G.qtot + qp - 1) / qp;
    attend_fn fn;
    size_t smem;
    SKV_CU(attend_kernel_for(c, qp, &fn, &smem));
    if (c->r_mass) {
        SKV_CU(cudaMemsetAsync(c->mass, 0,
                               (size_t)c->r_nl * G.KV * G.S * G.n_tokens * sizeof(float)));
    }
    if (nitems) {
        dim3 grid(nitems, npass);
        fn<<<grid, NT, smem>>>(G);
        SKV_CU(cudaGetLastError());
    } else {
        /* nothing cached in these layers: every output is zero */
    }
    const uint32_t nout = c->r_nl * G.H * G.S;
    merge_kernel<<<nout, MERGE_NT>>>(G);
    SKV_CU(cudaGetLastError());
    if (c->r_mass && nitems) {
        mass_kernel<<<nitems, 128>>>(G);
        SKV_CU(cudaGetLastError());
    }
    return 0;
}

int skv_core_attend(skv_core *c, uint32_t layer0, uint32_t nl, uint32_t n_steps,
                    const uint64_t *pos, const float *q, float *out, float *mass, float *gpu_ms)
{
    const skv_cuda_shape *sh = &c->sh;
    if (!q || !out || !pos || n_steps == 0 || nl == 0 || layer0 >= sh->n_layers ||
        nl > sh->n_layers - layer0)
        return skv_error(SKV_EINVAL, "CUDA attend: bad arguments (layers %u+%u of %u, %u steps)",
                         layer0, nl, sh->n_layers, n_steps);
    if ((uint64_t)c->g * n_steps > 65535u * 2u)
        return skv_error(SKV_ELIMIT, "CUDA attend: %u steps is too many for one call", n_steps);
    c->r_ready = 0;
    c->r_layer0 = layer0;
    c->r_nl = nl;
    c->r_steps = n_steps;
    c->r_mass = mass != NULL;
    const uint32_t d = sh->head_dim, qtot = c->g * n_steps;
    const uint32_t nitems = c->layer_item0[layer0 + nl] - c->layer_item0[layer0];
    size_t nq = (size_t)nl * sh->n_heads * n_steps * d; /* floats */
    size_t nres = (size_t)nl * sh->n_heads * n_steps;
    size_t part = (size_t)(nitems ? nitems : 1) * qtot;
    int rc;
    /* buffers grow on demand; grow() frees and reallocates */
    if ((rc = grow((void **)&c->q, &c->cap_q, nq * sizeof(float))) < 0 ||
        (rc = grow((void **)&c->out, &c->cap_out, nq * sizeof(float))) < 0 ||
        (rc = grow((void **)&c->pm, &c->cap_pm, part * sizeof(float))) < 0 ||
        (rc = grow((void **)&c->pl, &c->cap_pl, part * sizeof(float))) < 0 ||
        (rc = grow((void **)&c->pacc, &c->cap_part, part * d * sizeof(float))) < 0 ||
        (rc = grow((void **)&c->fin_m, &c->cap_finm, nres * sizeof(float))) < 0 ||
        (rc = grow((void **)&c->fin_l, &c->cap_finl, nres * sizeof(float))) < 0 ||
        (rc = grow((void **)&c->pos, &c->cap_steps, n_steps * sizeof(uint32_t))) < 0)
        return rc;
    if (mass) {
        size_t ns = (size_t)nl * sh->n_kv_heads * qtot * sh->n_tokens * sizeof(float);
        size_t nm = (size_t)nl * sh->n_kv_heads * n_steps * sh->n_tokens * sizeof(float);
        if ((rc = grow((void **)&c->sbuf, &c->cap_sbuf, ns)) < 0 ||
            (rc = grow((void **)&c->mass, &c->cap_mass, nm)) < 0)
            return rc;
    }
    uint32_t *hpos = (uint32_t *)skv_malloc(n_steps * sizeof(uint32_t));
    if (!hpos)
        return SKV_ENOMEM;
    for (uint32_t s = 0; s < n_steps; s++)
        hpos[s] = pos[s] > UINT32_MAX ? UINT32_MAX : (uint32_t)pos[s];
    cudaError_t e = cudaMemcpy(c->pos, hpos, n_steps * sizeof(uint32_t), cudaMemcpyHostToDevice);
    free(hpos);
    if (e != cudaSuccess)
        return skv_cu_fail(e, "query positions");
    SKV_CU(cudaMemcpy(c->q, q, nq * sizeof(float), cudaMemcpyHostToDevice));
    SKV_CU(cudaEventRecord(c->ev0));
    if ((rc = skv_core_launch(c)) < 0)
        return rc;
    SKV_CU(cudaEventRecord(c->ev1));
    SKV_CU(cudaMemcpy(out, c->out, nq * sizeof(float), cudaMemcpyDeviceToHost));
    if (mass)
        SKV_CU(cudaMemcpy(mass, c->mass,
                          (size_t)nl * sh->n_kv_heads * n_steps * sh->n_tokens * sizeof(float),
                          cudaMemcpyDeviceToHost));
    SKV_CU(cudaEventSynchronize(c->ev1));
    if (gpu_ms)
        SKV_CU(cudaEventElapsedTime(gpu_ms, c->ev0, c->ev1));
    c->r_ready = 1;
    return 0;
}

int skv_core_repeat(skv_core *c, int reps, float *gpu_ms)
{
    if (!c->r_ready || reps <= 0)
        return skv_error(SKV_EINVAL, "CUDA repeat: no prepared run (call the attend function "
                         "first) or reps %d <= 0", reps);
    int rc;
    SKV_CU(cudaEventRecord(c->ev0));
    for (int i = 0; i < reps; i++)
        if ((rc = skv_core_launch(c)) < 0)
            return rc;
    SKV_CU(cudaEventRecord(c->ev1));
    SKV_CU(cudaEventSynchronize(c->ev1));
    float ms = 0;
    SKV_CU(cudaEventElapsedTime(&ms, c->ev0, c->ev1));
    if (gpu_ms)
        *gpu_ms = ms / reps;
    return 0;
}

/* ---- the packed cache ---- */

struct skv_cuda_cache {
    skv_core core;
};

static int check_shape(const skv_cuda_shape *sh)
{
    if (!sh || sh->n_layers == 0 || sh->n_heads == 0 || sh->n_kv_heads == 0 ||
        sh->n_heads % sh->n_kv_heads || sh->head_dim == 0 || sh->n_tokens == 0)
        return skv_error(SKV_EINVAL, "CUDA cache: bad shape");
    if (sh->head_dim > 1024 || sh->n_tokens > (1ull << 24) || sh->n_layers > 1024 ||
        sh->n_heads > 1024)
        return skv_error(SKV_EUNSUP, "CUDA cache: shape beyond the kernels' limits (head_dim "
                         "<= 1024, tokens <= 2^24, layers and heads <= 1024)");
    return 0;
}

/* Parse and check one PBKT payload header; fill a segment (offsets relative
 * to the payload start). */
static int parse_pbkt(const skv_cuda_shape *sh, const uint8_t *p, uint64_t size, size_t which,
                      skv_seg *s)
{
    if (!p || size < SKV_PBKT_HEADER_LEN)
        return skv_error(SKV_EFORMAT, "PBKT payload %zu: %llu bytes is shorter than its header",
                         which, (unsigned long long)size);
    memset(s, 0, sizeof *s);
    s->layer = skv_get32(p);
    s->kvh = skv_get32(p + 4);
    s->bits = skv_get32(p + 8);
    s->n = skv_get32(p + 12);
    uint32_t hd = skv_get32(p + 16);
    s->kgroup = skv_get32(p + 20);
    s->vgroup = skv_get32(p + 24);
    s->kmode = skv_get32(p + 28);
    s->vmode = skv_get32(p + 32);
    for (int i = 40; i < 64; i++)
        if (p[i])
            return skv_error(SKV_EFORMAT, "PBKT payload %zu: reserved header byte %d not zero",
                             which, i);
    if (s->layer >= sh->n_layers || s->kvh >= sh->n_kv_heads)
        return skv_error(SKV_EFORMAT, "PBKT payload %zu: layer %u kv head %u outside %ux%u",
                         which, s->layer, s->kvh, sh->n_layers, sh->n_kv_heads);
    if (s->bits != 2 && s->bits != 3 && s->bits != 4 && s->bits != 8 && s->bits != 16)
        return skv_error(SKV_EFORMAT, "PBKT layer %u kv head %u: bad width %u", s->layer, s->kvh,
                         s->bits);
    if (hd != sh->head_dim || s->n == 0 || s->n > sh->n_tokens)
        return skv_error(SKV_EFORMAT, "PBKT layer %u kv head %u %u-bit: head_dim %u (want %u) "
                         "or token count %u (of %llu) wrong", s->layer, s->kvh, s->bits, hd,
                         sh->head_dim, s->n, (unsigned long long)sh->n_tokens);
    if (s->kgroup == 0 || hd % s->kgroup || s->vgroup == 0 || hd % s->vgroup ||
        s->kmode < SKV_QMODE_ASYM || s->kmode > SKV_QMODE_GGML ||
        s->vmode < SKV_QMODE_ASYM || s->vmode > SKV_QMODE_GGML)
        return skv_error(SKV_EFORMAT, "PBKT layer %u kv head %u: bad groups %u/%u or modes %u/%u",
                         s->layer, s->kvh, s->kgroup, s->vgroup, s->kmode, s->vmode);
    skv_qcfg cfg;  /* C++: no designated initializers before C++20 */
    memset(&cfg, 0, sizeof cfg);
    cfg.head_dim = hd;
    cfg.k_group = s->kgroup;
    cfg.v_group = s->vgroup;
    cfg.k_mode = s->kmode;
    cfg.v_mode = s->vmode;
    if (size != skv_pbkt_payload_bytes(&cfg, s->bits, s->n))
        return skv_error(SKV_EFORMAT, "PBKT layer %u kv head %u %u-bit: payload is %llu bytes, "
                         "%u tokens need %llu", s->layer, s->kvh, s->bits,
                         (unsigned long long)size, s->n,
                         (unsigned long long)skv_pbkt_payload_bytes(&cfg, s->bits, s->n));
    s->kpb = (uint32_t)skv_par_bytes(s->bits, hd, s->kgroup, s->kmode);
    s->vpb = (uint32_t)skv_par_bytes(s->bits, hd, s->vgroup, s->vmode);
    s->rb = (uint32_t)skv_row_bytes(s->bits, hd);
    s->off_idx = SKV_PBKT_HEADER_LEN;
    s->off_kpar = s->off_idx + skv_align64(4ull * s->n);
    s->off_kdat = s->off_kpar + skv_align64((uint64_t)s->n * s->kpb);
    s->off_vpar = s->off_kdat + skv_align64((uint64_t)s->n * s->rb);
    s->off_vdat = s->off_vpar + skv_align64((uint64_t)s->n * s->vpb);
    uint32_t prev = 0;
    for (uint32_t i = 0; i < s->n; i++) {
        uint32_t t = skv_get32(p + s->off_idx + 4ull * i);
        if (t >= sh->n_tokens || (i && t <= prev))
            return skv_error(SKV_EFORMAT, "PBKT layer %u kv head %u %u-bit: token index %u at "
                             "position %u is %s", s->layer, s->kvh, s->bits, t, i,
                             t >= sh->n_tokens ? "out of range" : "not ascending");
        prev = t;
    }
    /* tile: about SKV_TILE_BYTES staged per tile, a multiple of 16 tokens */
    uint64_t per = 4 + s->kpb + s->vpb + 2ull * s->rb;
    if (per > SKV_STAGE_TOKEN_MAX)
        return skv_error(SKV_EUNSUP, "PBKT layer %u kv head %u %u-bit: %llu bytes per token "
                         "exceed the CUDA kernels' staging limit of %u (use larger groups)",
                         s->layer, s->kvh, s->bits, (unsigned long long)per,
                         (unsigned)SKV_STAGE_TOKEN_MAX);
    uint64_t tt = SKV_TILE_BYTES / per / 16 * 16;
    s->tt = (uint32_t)(tt < 16 ? 16 : tt > SKV_TT_MAX ? SKV_TT_MAX : tt);
    return 0;
}

extern "C" skv_cuda_cache *skv_cuda_cache_upload(const skv_cuda_shape *shape,
                                                 const uint8_t *const *payloads,
                                                 const uint64_t *sizes, size_t n_payloads)
{
    if (check_shape(shape) < 0)
        return NULL;
    if (n_payloads && (!payloads || !sizes)) {
        skv_error(SKV_EINVAL, "CUDA cache: no payload array");
        return NULL;
    }
    if (n_payloads > UINT32_MAX / 2) {
        skv_error(SKV_ELIMIT, "CUDA cache: %zu payloads is too many", n_payloads);
        return NULL;
    }
    if (skv_cu_ready() < 0)
        return NULL;
    skv_cuda_cache *c = (skv_cuda_cache *)skv_calloc(1, sizeof *c);
    skv_seg *hs = (skv_seg *)skv_calloc(n_payloads ? n_payloads : 1, sizeof *hs);
    uint64_t *offs = (uint64_t *)skv_calloc(n_payloads ? n_payloads : 1, sizeof *offs);
    cudaError_t e;
    if (!c || !hs || !offs)
        goto fail;
    c->core.sh = *shape;
    c->core.g = shape->n_heads / shape->n_kv_heads;
    for (size_t i = 0; i < n_payloads; i++) {
        if (parse_pbkt(shape, payloads[i], sizes[i], i, &hs[i]) < 0)
            goto fail;
        offs[i] = c->core.arena_bytes;
        c->core.arena_bytes += skv_align64(sizes[i]);
        c->core.data_bytes += sizes[i] - SKV_PBKT_HEADER_LEN;
    }
    e = cudaMalloc((void **)&c->core.arena, c->core.arena_bytes ? c->core.arena_bytes : 64);
    if (e != cudaSuccess) {
        skv_cu_fail(e, "cache arena");
        goto fail;
    }
    for (size_t i = 0; i < n_payloads; i++) {
        e = cudaMemcpy(c->core.arena + offs[i], payloads[i], sizes[i], cudaMemcpyHostToDevice);
        if (e != cudaSuccess) {
            skv_cu_fail(e, "cache upload");
            goto fail;
        }
        hs[i].off_idx += offs[i];
        hs[i].off_kpar += offs[i];
        hs[i].off_kdat += offs[i];
        hs[i].off_vpar += offs[i];
        hs[i].off_vdat += offs[i];
    }
    if (skv_core_build(&c->core, hs, (uint32_t)n_payloads) < 0)
        goto fail;
    free(hs);
    free(offs);
    return c;
fail:
    if (c)
        skv_core_free(&c->core);
    free(c);
    free(hs);
    free(offs);
    return NULL;
}

extern "C" uint64_t skv_cuda_cache_bytes(const skv_cuda_cache *c)
{
    return c ? c->core.data_bytes : 0;
}

extern "C" void skv_cuda_cache_free(skv_cuda_cache *c)
{
    if (!c)
        return;
    skv_core_free(&c->core);
    free(c);
}

extern "C" int skv_cuda_attend(skv_cuda_cache *c, uint32_t layer0, uint32_t n_layers,
                               uint32_t n_steps, const uint64_t *pos, const float *q, float *out,
                               float *mass, float *gpu_ms)
{
    if (!c)
        return skv_error(SKV_EINVAL, "CUDA attend: no cache");
    return skv_core_attend(&c->core, layer0, n_layers, n_steps, pos, q, out, mass, gpu_ms);
}

extern "C" int skv_cuda_attend_repeat(skv_cuda_cache *c, int reps, float *gpu_ms)
{
    if (!c)
        return skv_error(SKV_EINVAL, "CUDA repeat: no cache");
    return skv_core_repeat(&c->core, reps, gpu_ms);
}
