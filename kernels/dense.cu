/* dense.cu -- dense fp16 baselines for the benchmark: our own
 * flash-decoding kernel (the attention kernel of attend.cu instantiated for
 * plain fp16 rows without token indices or parameters) and a cuBLAS version
 * (cublasGemmStridedBatchedEx for Q.K^T, a softmax kernel, then P.V); plus
 * a device-to-device copy for the bandwidth reference. */
#include "skv_cu.cuh"
#include "smartkv_qencode.h"

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

struct skv_cuda_dense {
    skv_core core;
    uint64_t slab;          /* bytes per (layer, kv head) K or V slab (64-aligned) */
    cublasHandle_t blas;
    __half *q16, *p16;
    float *s32, *o32;
    size_t cap_q16, cap_p16, cap_s32, cap_o32;
    uint32_t b_steps, b_ready;
};

static int blas_fail(cublasStatus_t st, const char *what)
{
    return skv_error(st == CUBLAS_STATUS_ALLOC_FAILED ? SKV_ENOMEM : SKV_ENODEV,
                     "cuBLAS error %d (%s)", (int)st, what);
}

namespace {

__global__ void f32_to_f16_kernel(const float *in, __half *out, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = __float2half_rn(in[i]);
}

/* Row r of S [batch][G][T] -> masked softmax -> P (fp16). */
__global__ void __launch_bounds__(256) softmax_kernel(const float *S, __half *P, uint32_t G,
                                                      uint32_t T, uint32_t steps,
                                                      const uint32_t *pos)
{
    __shared__ float red[32];
    const size_t r = blockIdx.x;
    const uint32_t s = (uint32_t)(r % G) % steps;
    const uint32_t lim = pos[s] < T - 1 ? pos[s] + 1 : T; /* visible tokens */
    const float *row = S + r * T;
    __half *prow = P + r * T;
    const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    float mx = -INFINITY;
    for (uint32_t t = threadIdx.x; t < lim; t += blockDim.x)
        mx = fmaxf(mx, row[t]);
    for (int o = 16; o > 0; o >>= 1)
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if (lane == 0)
        red[warp] = mx;
    __syncthreads();
    mx = -INFINITY;
    for (uint32_t w = 0; w < nw; w++)
        mx = fmaxf(mx, red[w]);
    __syncthreads();
    float sum = 0.0f;
    for (uint32_t t = threadIdx.x; t < lim; t += blockDim.x)
        sum += expf(row[t] - mx);
    for (int o = 16; o > 0; o >>= 1)
        sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (lane == 0)
        red[warp] = sum;
    __syncthreads();
    sum = 0.0f;
    for (uint32_t w = 0; w < nw; w++)
        sum += red[w];
    const float inv = 1.0f / sum;
    for (uint32_t t = threadIdx.x; t < T; t += blockDim.x)
        prow[t] = __float2half_rn(t < lim ? expf(row[t] - mx) * inv : 0.0f);
}

} /* namespace */

extern "C" skv_cuda_dense *skv_cuda_dense_upload(const skv_cuda_shape *sh, const float *k,
                                                 const float *v)
{
    if (!sh || !k || !v || sh->n_layers == 0 || sh->n_heads == 0 || sh->n_kv_heads == 0 ||
        sh->n_heads % sh->n_kv_heads || sh->head_dim == 0 || sh->head_dim > 1024 ||
        sh->n_tokens == 0 || sh->n_tokens > (1ull << 24)) {
        skv_error(SKV_EINVAL, "CUDA dense cache: bad shape or no data");
        return NULL;
    }
    if (skv_cu_ready() < 0)
        return NULL;
    const uint32_t d = sh->head_dim, n_lk = sh->n_layers * sh->n_kv_heads;
    const uint64_t T = sh->n_tokens;
    skv_cuda_dense *D = (skv_cuda_dense *)skv_calloc(1, sizeof *D);
    skv_seg *hs = (skv_seg *)skv_calloc(n_lk, sizeof *hs);
    uint16_t *h16 = NULL;
    cudaError_t e = cudaSuccess;
    if (!D || !hs)
        goto fail;
    D->core.sh = *sh;
    D->core.g = sh->n_heads / sh->n_kv_heads;
    D->core.dense = 1;
    D->slab = skv_align64(T * d * 2);
    D->core.arena_bytes = 2 * n_lk * D->slab + 64;
    D->core.data_bytes = 2ull * n_lk * T * d * 2;
    h16 = (uint16_t *)skv_malloc(T * d * 2);
    if (!h16)
        goto fail;
    e = cudaMalloc((void **)&D->core.arena, D->core.arena_bytes);
    if (e == cudaSuccess)
        e = cudaMemset(D->core.arena, 0, D->core.arena_bytes);
    for (uint32_t i = 0; i < 2 * n_lk && e == cudaSuccess; i++) {
        const float *src = (i < n_lk ? k : v) + (size_t)(i % n_lk) * T * d;
        for (size_t j = 0; j < T * d; j++)
            h16[j] = skv_qm_f2h(src[j]);
        e = cudaMemcpy(D->core.arena + i * D->slab, h16, T * d * 2, cudaMemcpyHostToDevice);
    }
    if (e != cudaSuccess) {
        skv_cu_fail(e, "dense cache upload");
        goto fail;
    }
    for (uint32_t i = 0; i < n_lk; i++) {
        skv_seg *s = &hs[i];
        s->layer = i / sh->n_kv_heads;
        s->kvh = i % sh->n_kv_heads;
        s->bits = 16;
        s->n = (uint32_t)T;
        s->kgroup = s->vgroup = d;
        s->kmode = s->vmode = SKV_QMODE_ASYM;
        s->rb = 2 * d;
        s->off_idx = SKV_NOIDX;
        s->off_kdat = (unsigned long long)i * D->slab;
        s->off_vdat = (unsigned long long)(n_lk + i) * D->slab;
        uint64_t tt = 6144 / (2ull * s->rb) / 16 * 16;
        s->tt = (uint32_t)(tt < 16 ? 16 : tt > SKV_TT_MAX ? SKV_TT_MAX : tt);
    }
    if (skv_core_build(&D->core, hs, n_lk) < 0)
        goto fail;
    {
        cublasStatus_t st = cublasCreate(&D->blas);
        if (st != CUBLAS_STATUS_SUCCESS) {
            D->blas = NULL;
            blas_fail(st, "cublasCreate");
            goto fail;
        }
    }
    free(hs);
    free(h16);
    return D;
fail:
    free(hs);
    free(h16);
    skv_cuda_dense_free(D);
    return NULL;
}

extern "C" uint64_t skv_cuda_dense_bytes(const skv_cuda_dense *D)
{
    return D ? D->core.data_bytes : 0;
}

extern "C" void skv_cuda_dense_free(skv_cuda_dense *D)
{
    if (!D)
        return;
    skv_core_free(&D->core);
    if (D->blas)
        cublasDestroy(D->blas);
    cudaFree(D->q16);
    cudaFree(D->p16);
    cudaFree(D->s32);
    cudaFree(D->o32);
    free(D);
}

static int dgrow(void **p, size_t *cap, size_t n)
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

/* The cuBLAS pipeline on the queries already in D->core.q (all layers). */
static int blas_launch(skv_cuda_dense *D)
{
    const skv_cuda_shape *sh = &D->core.sh;
    const uint32_t d = sh->head_dim, S = D->b_steps, G = D->core.g * S;
    const int T = (int)sh->n_tokens;
    const int batch = (int)(sh->n_layers * sh->n_kv_heads);
    const long long slab = (long long)(D->slab / 2); /* elements */
    const size_t nq = (size_t)sh->n_layers * sh->n_heads * S * d;
    const float alpha = 1.0f / sqrtf((float)d), one = 1.0f, zero = 0.0f;
    const __half *K = (const __half *)D->core.arena;
    const __half *V = (const __half *)(D->core.arena + (size_t)batch * D->slab);
    f32_to_f16_kernel<<<256, 256>>>(D->core.q, D->q16, nq);
    SKV_CU(cudaGetLastError());
    /* S^T (T x G, col-major) = K (T x d) . Q^T (d x G) */
    cublasStatus_t st = cublasGemmStridedBatchedEx(
        D->blas, CUBLAS_OP_T, CUBLAS_OP_N, T, (int)G, (int)d, &alpha, K, CUDA_R_16F, (int)d,
        slab, D->q16, CUDA_R_16F, (int)d, (long long)G * d, &zero, D->s32, CUDA_R_32F, T,
        (long long)T * G, batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS)
        return blas_fail(st, "Q.K^T");
    softmax_kernel<<<(unsigned)((size_t)batch * G), 256>>>(D->s32, D->p16, G, (uint32_t)T, S,
                                                          D->core.pos);
    SKV_CU(cudaGetLastError());
    /* O (d x G, col-major) = V (d x T) . P^T (T x G) */
    st = cublasGemmStridedBatchedEx(D->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)d, (int)G, T, &one, V,
                                    CUDA_R_16F, (int)d, slab, D->p16, CUDA_R_16F, T,
                                    (long long)T * G, &zero, D->o32, CUDA_R_32F, (int)d,
                                    (long long)d * G, batch, CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT);
    if (st != CUBLAS_STATUS_SUCCESS)
        return blas_fail(st, "P.V");
    return 0;
}

extern "C" int skv_cuda_dense_attend(skv_cuda_dense *D, int method, uint32_t n_steps,
                                     const uint64_t *pos, const float *q, float *out,
                                     float *gpu_ms)
{
    if (!D)
        return skv_error(SKV_EINVAL, "CUDA dense attend: no cache");
    if (method == SKV_CUDA_DENSE_KERNEL)
        return skv_core_attend(&D->core, 0, D->core.sh.n_layers, n_steps, pos, q, out, NULL,
                               gpu_ms);
    if (method != SKV_CUDA_DENSE_CUBLAS)
        return skv_error(SKV_EINVAL, "CUDA dense attend: unknown method %d", method);
    const skv_cuda_shape *sh = &D->core.sh;
    if (!q || !out || !pos || n_steps == 0 || n_steps > 65535)
        return skv_error(SKV_EINVAL, "CUDA dense attend: bad arguments");
    const uint32_t d = sh->head_dim;
    const size_t nq = (size_t)sh->n_layers * sh->n_heads * n_steps * d;
    const size_t nrow = (size_t)sh->n_layers * sh->n_heads * n_steps;
    int rc;
    if ((rc = dgrow((void **)&D->core.q, &D->core.cap_q, nq * sizeof(float))) < 0 ||
        (rc = dgrow((void **)&D->q16, &D->cap_q16, nq * sizeof(__half))) < 0 ||
        (rc = dgrow((void **)&D->o32, &D->cap_o32, nq * sizeof(float))) < 0 ||
        (rc = dgrow((void **)&D->s32, &D->cap_s32, nrow * sh->n_tokens * sizeof(float))) < 0 ||
        (rc = dgrow((void **)&D->p16, &D->cap_p16, nrow * sh->n_tokens * sizeof(__half))) < 0 ||
        (rc = dgrow((void **)&D->core.pos, &D->core.cap_steps, n_steps * sizeof(uint32_t))) < 0)
        return rc;
    uint32_t *hpos = (uint32_t *)skv_malloc(n_steps * sizeof(uint32_t));
    if (!hpos)
        return SKV_ENOMEM;
    for (uint32_t s = 0; s < n_steps; s++)
        hpos[s] = pos[s] > UINT32_MAX ? UINT32_MAX : (uint32_t)pos[s];
    cudaError_t e = cudaMemcpy(D->core.pos, hpos, n_steps * sizeof(uint32_t),
                               cudaMemcpyHostToDevice);
    free(hpos);
    if (e != cudaSuccess)
        return skv_cu_fail(e, "query positions");
    SKV_CU(cudaMemcpy(D->core.q, q, nq * sizeof(float), cudaMemcpyHostToDevice));
    D->b_steps = n_steps;
    D->b_ready = 0;
    D->core.r_ready = 0; /* the kernel path's queries are gone */
    if (!D->core.ev0) {
        SKV_CU(cudaEventCreate(&D->core.ev0));
        SKV_CU(cudaEventCreate(&D->core.ev1));
    }
    SKV_CU(cudaEventRecord(D->core.ev0));
    if ((rc = blas_launch(D)) < 0)
        return rc;
    SKV_CU(cudaEventRecord(D->core.ev1));
    SKV_CU(cudaMemcpy(out, D->o32, nq * sizeof(float), cudaMemcpyDeviceToHost));
    SKV_CU(cudaEventSynchronize(D->core.ev1));
    if (gpu_ms)
        SKV_CU(cudaEventElapsedTime(gpu_ms, D->core.ev0, D->core.ev1));
    D->b_ready = 1;
    return 0;
}

extern "C" int skv_cuda_dense_repeat(skv_cuda_dense *D, int method, int reps, float *gpu_ms)
{
    if (!D)
        return skv_error(SKV_EINVAL, "CUDA dense repeat: no cache");
    if (method == SKV_CUDA_DENSE_KERNEL)
        return skv_core_repeat(&D->core, reps, gpu_ms);
    if (!D->b_ready || reps <= 0)
        return skv_error(SKV_EINVAL, "CUDA dense repeat: no prepared cuBLAS run");
    int rc;
    SKV_CU(cudaEventRecord(D->core.ev0));
    for (int i = 0; i < reps; i++)
        if ((rc = blas_launch(D)) < 0)
            return rc;
    SKV_CU(cudaEventRecord(D->core.ev1));
    SKV_CU(cudaEventSynchronize(D->core.ev1));
    float ms = 0;
    SKV_CU(cudaEventElapsedTime(&ms, D->core.ev0, D->core.ev1));
    if (gpu_ms)
        *gpu_ms = ms / reps;
    return 0;
}

extern "C" int skv_cuda_copy_bandwidth(uint64_t bytes, int reps, double *gbs)
{
    if (gbs)
        *gbs = 0;
    int rc = skv_cu_ready();
    if (rc < 0)
        return rc;
    if (bytes == 0 || reps <= 0)
        return skv_error(SKV_EINVAL, "CUDA copy bandwidth: bad arguments");
    void *a = NULL, *b = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    float ms = 0;
    cudaError_t e = cudaMalloc(&a, bytes);
    if (e == cudaSuccess)
        e = cudaMalloc(&b, bytes);
    if (e == cudaSuccess)
        e = cudaMemset(a, 1, bytes);
    if (e == cudaSuccess)
        e = cudaEventCreate(&e0);
    if (e == cudaSuccess)
        e = cudaEventCreate(&e1);
    if (e == cudaSuccess)
        e = cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice); /* warm-up */
    if (e == cudaSuccess)
        e = cudaEventRecord(e0);
    for (int i = 0; i < reps && e == cudaSuccess; i++)
        e = cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice);
    if (e == cudaSuccess)
        e = cudaEventRecord(e1);
    if (e == cudaSuccess)
        e = cudaEventSynchronize(e1);
    if (e == cudaSuccess)
        e = cudaEventElapsedTime(&ms, e0, e1);
    cudaFree(a);
    cudaFree(b);
    if (e0)
        cudaEventDestroy(e0);
    if (e1)
        cudaEventDestroy(e1);
    if (e != cudaSuccess)
        return skv_cu_fail(e, "copy bandwidth");
    if (gbs && ms > 0)
        *gbs = 2.0 * (double)bytes * reps / (ms * 1e-3) / 1e9;
    return 0;
}
