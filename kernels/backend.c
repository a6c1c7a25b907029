/* backend.c -- the entry of libsmartkv-cuda.so (lib/attend/cuda_backend.h):
 * hands the library the kernels' skv_cuda_* functions, and gives the
 * kernels the core functions they call, forwarded to the library that
 * loaded this backend.  kernels/backend.map keeps every other symbol local,
 * so these stand-ins never interpose on the library's own. */
#include "cuda_backend.h"
#include "smartkv_error.h"

#include <stdarg.h>
#include <stdio.h>

static skv_cuda_host host;

int (skv_error)(int code, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return host.error ? host.error(code, msg) : code;
}

void *skv_malloc(size_t n)
{
    return host.malloc(n);
}

void *skv_calloc(size_t n, size_t size)
{
    return host.calloc(n, size);
}

void *skv_realloc(void *p, size_t n)
{
    return host.realloc(p, n);
}

uint64_t skv_pbkt_max_tokens(const skv_qcfg *c, uint32_t bits)
{
    return host.pbkt_max_tokens(c, bits);
}

__attribute__((visibility("default"))) int skv_cuda_backend_open(const skv_cuda_host *h,
                                                                 skv_cuda_ops *o);

int skv_cuda_backend_open(const skv_cuda_host *h, skv_cuda_ops *o)
{
    if (!h || h->abi != SKV_CUDA_BACKEND_ABI)
        return -1;
    host = *h;
    *o = (skv_cuda_ops){
        .abi = SKV_CUDA_BACKEND_ABI,
        .available = skv_cuda_available,
        .device_info = skv_cuda_device_info,
        .cache_upload = skv_cuda_cache_upload,
        .cache_bytes = skv_cuda_cache_bytes,
        .cache_free = skv_cuda_cache_free,
        .attend = skv_cuda_attend,
        .attend_repeat = skv_cuda_attend_repeat,
        .pack = skv_cuda_pack,
        .dense_upload = skv_cuda_dense_upload,
        .dense_bytes = skv_cuda_dense_bytes,
        .dense_free = skv_cuda_dense_free,
        .dense_attend = skv_cuda_dense_attend,
        .dense_repeat = skv_cuda_dense_repeat,
        .copy_bandwidth = skv_cuda_copy_bandwidth,
    };
    return 0;
}
