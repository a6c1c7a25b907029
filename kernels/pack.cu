/* pack.cu -- quantize and pack newly cached tokens on the GPU into the PBKT
 * bucket layout of smartkv_pack.h.  One warp per K or V row: lanes reduce
 * each group's min/max, lane 0 derives the fp16 parameters with the shared
 * encode arithmetic (smartkv_qencode.h), then lanes quantize and pack one
 * 8-value block each.  The bytes equal the CPU packer's. */
#include "skv_cu.cuh"
#include "smartkv_qencode.h"

#include <stdlib.h>
#include <string.h>

#define SKV_MAX_GROUPS_SH 1024 /* groups per row: head_dim <= 1024 */

namespace {

struct PackGeo {
    const float *k, *v;      /* [n][d] */
    uint8_t *out;            /* payload */
    unsigned long long off_par[2], off_dat[2];
    uint32_t n, d, bits, group[2], mode[2], pb[2], rb;
    int *bad;                /* lowest bad row * 2 + (0 K, 1 V), or INT_MAX */
};

__global__ void __launch_bounds__(128) pack_kernel(PackGeo P)
{
    __shared__ uint16_t s16[4][SKV_MAX_GROUPS_SH], m16[4][SKV_MAX_GROUPS_SH];
    const uint32_t warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const uint32_t row = blockIdx.x * 4 + warp;
    const uint32_t kv = blockIdx.y;
    if (row >= P.n)
        return;
    const uint32_t d = P.d, bits = P.bits;
    const float *x = (kv ? P.v : P.k) + (size_t)row * d;
    bool ok = true;
    for (uint32_t j = lane; j < d; j += 32)
        ok = ok && skv_qe_in_range(x[j]);
    if (!__all_sync(0xffffffffu, ok)) {
        if (lane == 0)
            atomicMin(P.bad, (int)(row * 2 + kv));
        return;
    }
    uint8_t *dat = P.out + P.off_dat[kv] + (size_t)row * P.rb;
    if (bits == 16) {
        for (uint32_t j = lane; j < d; j += 32) {
            uint16_t h = skv_qm_f2h(x[j]);
            dat[2 * j] = (uint8_t)h;
            dat[2 * j + 1] = (uint8_t)(h >> 8);
        }
        return;
    }
    const uint32_t group = P.group[kv], mode = P.mode[kv], ng = d / group;
    uint8_t *par = P.out + P.off_par[kv] + (size_t)row * P.pb[kv];
    for (uint32_t g = 0; g < ng; g++) {
        const float *xg = x + g * group;
        float mn = INFINITY, mx = -INFINITY;
        for (uint32_t i = lane; i < group; i += 32) {
            mn = fminf(mn, xg[i]);
            mx = fmaxf(mx, xg[i]);
        }
        for (int off = 16; off > 0; off >>= 1) {
            mn = fminf(mn, __shfl_xor_sync(0xffffffffu, mn, off));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
        }
        if (lane == 0) {
            uint16_t s, m;
            skv_qe_params(mn, mx, bits, mode, &s, &m);
            s16[warp][g] = s;
            m16[warp][g] = m;
            if (mode == 1u) {
                par[4 * g] = (uint8_t)s;
                par[4 * g + 1] = (uint8_t)(s >> 8);
                par[4 * g + 2] = (uint8_t)m;
                par[4 * g + 3] = (uint8_t)(m >> 8);
            } else {
                par[2 * g] = (uint8_t)s;
                par[2 * g + 1] = (uint8_t)(s >> 8);
            }
        }
    }
    __syncwarp();
    for (uint32_t b = lane; b < (d + 7) / 8; b += 32) {
        uint32_t c[8];
        for (uint32_t k = 0; k < 8; k++) {
            const uint32_t j = b * 8 + k;
            c[k] = 0;
            if (j < d) {
                const uint32_t g = j / group;
                c[k] = skv_qe_code(x[j], bits, mode, skv_qm_h2f(s16[warp][g]),
                                   skv_qm_h2f(m16[warp][g]));
            }
        }
        skv_qe_pack8(c, bits, dat + b * bits);
    }
}

} /* namespace */

extern "C" int skv_cuda_pack(const skv_qcfg *cfg, uint32_t layer, uint32_t kv_head,
                             uint32_t bits, uint32_t part, const uint32_t *idx, uint32_t n,
                             const float *k, const float *v, uint8_t *out, uint64_t size)
{
    if (!cfg || !idx || !k || !v || !out || n == 0)
        return skv_error(SKV_EINVAL, "CUDA pack: bad arguments");
    const uint32_t d = cfg->head_dim;
    if (d == 0 || d > 1024 || cfg->k_group == 0 || d % cfg->k_group || cfg->v_group == 0 ||
        d % cfg->v_group ||
        (cfg->k_mode != SKV_QMODE_ASYM && cfg->k_mode != SKV_QMODE_SYM) ||
        (cfg->v_mode != SKV_QMODE_ASYM && cfg->v_mode != SKV_QMODE_SYM)) /* no GGML rule on the GPU */
        return skv_error(SKV_EINVAL, "CUDA pack: bad quantizer configuration (head_dim %u, "
                         "groups %u/%u, modes %u/%u)", d, cfg->k_group, cfg->v_group,
                         cfg->k_mode, cfg->v_mode);
    if (bits != 2 && bits != 3 && bits != 4 && bits != 8 && bits != 16)
        return skv_error(SKV_EINVAL, "CUDA pack: bit width %u is not one of 2, 3, 4, 8, 16", bits);
    if (n > skv_pbkt_max_tokens(cfg, bits))
        return skv_error(SKV_EINVAL, "CUDA pack: %u tokens do not fit one PBKT chunk", n);
    const uint64_t need = skv_pbkt_payload_bytes(cfg, bits, n);
    if (size != need)
        return skv_error(SKV_EINVAL, "CUDA pack: buffer of %llu bytes, payload needs %llu",
                         (unsigned long long)size, (unsigned long long)need);
    for (uint32_t i = 1; i < n; i++)
        if (idx[i] <= idx[i - 1])
            return skv_error(SKV_EINVAL, "CUDA pack: token indices not ascending at %u", i);
    int rc = skv_cu_ready();
    if (rc < 0)
        return rc;

    PackGeo P;
    memset(&P, 0, sizeof P);
    P.n = n;
    P.d = d;
    P.bits = bits;
    P.group[0] = cfg->k_group;
    P.group[1] = cfg->v_group;
    P.mode[0] = cfg->k_mode;
    P.mode[1] = cfg->v_mode;
    P.pb[0] = (uint32_t)skv_par_bytes(bits, d, cfg->k_group, cfg->k_mode);
    P.pb[1] = (uint32_t)skv_par_bytes(bits, d, cfg->v_group, cfg->v_mode);
    P.rb = (uint32_t)skv_row_bytes(bits, d);
    const uint64_t off_idx = SKV_PBKT_HEADER_LEN;
    P.off_par[0] = off_idx + skv_align64(4ull * n);
    P.off_dat[0] = P.off_par[0] + skv_align64((uint64_t)n * P.pb[0]);
    P.off_par[1] = P.off_dat[0] + skv_align64((uint64_t)n * P.rb);
    P.off_dat[1] = P.off_par[1] + skv_align64((uint64_t)n * P.pb[1]);

    /* header and indices on the host, sections on the device */
    memset(out, 0, (size_t)size);
    const uint32_t hdr[10] = {layer,         kv_head,       bits,          n,
                              d,             cfg->k_group,  cfg->v_group,  cfg->k_mode,
                              cfg->v_mode,   part};
    for (int i = 0; i < 10; i++)
        skv_put32(out + 4 * i, hdr[i]);
    for (uint32_t i = 0; i < n; i++)
        skv_put32(out + off_idx + 4ull * i, idx[i]);

    const size_t rows = (size_t)n * d * sizeof(float);
    float *dk = NULL, *dv = NULL;
    uint8_t *dout = NULL;
    int *dbad = NULL, bad = 0x7fffffff;
    cudaError_t e = cudaMalloc((void **)&dk, rows);
    if (e == cudaSuccess)
        e = cudaMalloc((void **)&dv, rows);
    if (e == cudaSuccess)
        e = cudaMalloc((void **)&dout, size);
    if (e == cudaSuccess)
        e = cudaMalloc((void **)&dbad, sizeof(int));
    if (e == cudaSuccess)
        e = cudaMemcpy(dk, k, rows, cudaMemcpyHostToDevice);
    if (e == cudaSuccess)
        e = cudaMemcpy(dv, v, rows, cudaMemcpyHostToDevice);
    if (e == cudaSuccess)
        e = cudaMemcpy(dbad, &bad, sizeof bad, cudaMemcpyHostToDevice);
    if (e == cudaSuccess)
        e = cudaMemset(dout, 0, size);
    if (e == cudaSuccess) {
        P.k = dk;
        P.v = dv;
        P.out = dout;
        P.bad = dbad;
        dim3 grid((n + 3) / 4, 2);
        pack_kernel<<<grid, 128>>>(P);
        e = cudaGetLastError();
    }
    if (e == cudaSuccess)
        e = cudaMemcpy(&bad, dbad, sizeof bad, cudaMemcpyDeviceToHost);
    if (e == cudaSuccess && bad == 0x7fffffff)
        e = cudaMemcpy(out + P.off_par[0], dout + P.off_par[0], size - P.off_par[0],
                       cudaMemcpyDeviceToHost);
    cudaFree(dk);
    cudaFree(dv);
    cudaFree(dout);
    cudaFree(dbad);
    if (e != cudaSuccess)
        return skv_cu_fail(e, "pack kernel");
    if (bad != 0x7fffffff)
        return skv_error(SKV_EFORMAT, "%s of layer %u kv head %u token %u: a value is not "
                         "finite or beyond the fp16 range", (bad & 1) ? "V" : "K", layer,
                         kv_head, idx[bad / 2]);
    return 0;
}
