/* cuda_backend.h -- the interface between libsmartkv and its CUDA backend,
 * libsmartkv-cuda.so (kernels/ + kernels/backend.c), which the library loads
 * with dlopen the first time a skv_cuda_* function is called, as ggml loads
 * its backends: the core library and the tools link no CUDA library, and
 * run where CUDA is absent.  Private to the two (not installed).
 *
 * The backend exports one symbol, skv_cuda_backend_open.  The library hands
 * it the few core functions the kernels call (errors, checked allocation,
 * the PBKT size rule), so that errors land in the caller's skv_errmsg() and
 * allocations obey --max-mem, and gets back the table of skv_cuda_*
 * functions (smartkv_cuda.h) that it forwards to. */
#ifndef SKV_CUDA_BACKEND_H
#define SKV_CUDA_BACKEND_H

#include "smartkv_cuda.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SKV_CUDA_BACKEND_ABI 1
#define SKV_CUDA_BACKEND_FILE "libsmartkv-cuda.so"
#define SKV_CUDA_BACKEND_ENTRY "skv_cuda_backend_open"

typedef struct skv_cuda_host {
    uint32_t abi;
    int (*error)(int code, const char *msg);  /* sets the caller's message */
    void *(*malloc)(size_t n);
    void *(*calloc)(size_t n, size_t size);
    void *(*realloc)(void *p, size_t n);
    uint64_t (*pbkt_max_tokens)(const skv_qcfg *c, uint32_t bits);
} skv_cuda_host;

typedef struct skv_cuda_ops {
    uint32_t abi;
    int (*available)(void);
    int (*device_info)(char *name, size_t name_len, int *n_sm, double *peak_gbs);
    skv_cuda_cache *(*cache_upload)(const skv_cuda_shape *shape, const uint8_t *const *payloads,
                                    const uint64_t *sizes, size_t n_payloads);
    uint64_t (*cache_bytes)(const skv_cuda_cache *c);
    void (*cache_free)(skv_cuda_cache *c);
    int (*attend)(skv_cuda_cache *c, uint32_t layer0, uint32_t n_layers, uint32_t n_steps,
                  const uint64_t *pos, const float *q, float *out, float *mass, float *gpu_ms);
    int (*attend_repeat)(skv_cuda_cache *c, int reps, float *gpu_ms);
    int (*pack)(const skv_qcfg *cfg, uint32_t layer, uint32_t kv_head, uint32_t bits,
                uint32_t part, const uint32_t *idx, uint32_t n, const float *k, const float *v,
                uint8_t *out, uint64_t size);
    skv_cuda_dense *(*dense_upload)(const skv_cuda_shape *shape, const float *k, const float *v);
    uint64_t (*dense_bytes)(const skv_cuda_dense *d);
    void (*dense_free)(skv_cuda_dense *d);
    int (*dense_attend)(skv_cuda_dense *d, int method, uint32_t n_steps, const uint64_t *pos,
                        const float *q, float *out, float *gpu_ms);
    int (*dense_repeat)(skv_cuda_dense *d, int method, int reps, float *gpu_ms);
    int (*copy_bandwidth)(uint64_t bytes, int reps, double *gbs);
} skv_cuda_ops;

/* Fill *ops; returns 0, or <0 when the ABI differs (nothing else is done
 * here: a missing device is reported by ops->available()). */
typedef int (*skv_cuda_backend_open_fn)(const skv_cuda_host *host, skv_cuda_ops *ops);

#ifdef __cplusplus
}
#endif
#endif
