/* cuda_stub.c -- the smartkv_cuda.h API in a build without CUDA (no nvcc, or
 * make CUDA=0): every function fails with SKV_ENODEV.  A CUDA build defines
 * SKV_HAVE_CUDA and gets the real functions from kernels/ (*.cu files). */
#include "smartkv_cuda.h"
#include "smartkv_error.h"

#ifndef SKV_HAVE_CUDA

static int nodev(void)
{
    return skv_error(SKV_ENODEV, "no CUDA support in this build");
}

int skv_cuda_available(void)
{
    return nodev();
}

int skv_cuda_device_info(char *name, size_t name_len, int *n_sm, double *peak_gbs)
{
    if (name && name_len)
        name[0] = 0;
    if (n_sm)
        *n_sm = 0;
    if (peak_gbs)
        *peak_gbs = 0;
    return nodev();
}

skv_cuda_cache *skv_cuda_cache_upload(const skv_cuda_shape *shape, const uint8_t *const *payloads,
                                      const uint64_t *sizes, size_t n_payloads)
{
    nodev();
    return NULL;
}

uint64_t skv_cuda_cache_bytes(const skv_cuda_cache *c)
{
    return 0;
}

void skv_cuda_cache_free(skv_cuda_cache *c)
{
}

int skv_cuda_attend(skv_cuda_cache *c, uint32_t layer0, uint32_t n_layers, uint32_t n_steps,
                    const uint64_t *pos, const float *q, float *out, float *mass, float *gpu_ms)
{
    return nodev();
}

int skv_cuda_attend_repeat(skv_cuda_cache *c, int reps, float *gpu_ms)
{
    return nodev();
}

int skv_cuda_pack(const skv_qcfg *cfg, uint32_t layer, uint32_t kv_head, uint32_t bits,
                  uint32_t part, const uint32_t *idx, uint32_t n, const float *k, const float *v,
                  uint8_t *out, uint64_t size)
{
    return nodev();
}

skv_cuda_dense *skv_cuda_dense_upload(const skv_cuda_shape *shape, const float *k, const float *v)
{
    nodev();
    return NULL;
}

uint64_t skv_cuda_dense_bytes(const skv_cuda_dense *d)
{
    return 0;
}

void skv_cuda_dense_free(skv_cuda_dense *d)
{
}

int skv_cuda_dense_attend(skv_cuda_dense *d, int method, uint32_t n_steps, const uint64_t *pos,
                          const float *q, float *out, float *gpu_ms)
{
    return nodev();
}

int skv_cuda_dense_repeat(skv_cuda_dense *d, int method, int reps, float *gpu_ms)
{
    return nodev();
}

int skv_cuda_copy_bandwidth(uint64_t bytes, int reps, double *gbs)
{
    if (gbs)
        *gbs = 0;
    return nodev();
}

#else
/* ISO C forbids an empty translation unit. */
typedef int skv_cuda_stub_unused;
#endif
