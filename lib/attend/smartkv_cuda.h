/* smartkv_cuda.h -- CUDA decode attention over the bucketed packed cache,
 * the GPU quantize+pack kernel, and dense fp16 / cuBLAS baselines.
 *
 * Implemented in kernels/ (*.cu files), built with nvcc into the backend
 * lib/libsmartkv-cuda.so, which the library loads with dlopen on the first
 * call (lib/attend/cuda_loader.c): libsmartkv itself links no CUDA library.
 * Without a loadable backend every function fails with SKV_ENODEV "no CUDA
 * backend: ..." saying why (not built, not found, CUDA libraries missing);
 * with one but no usable device, with SKV_ENODEV "no CUDA device available".
 *
 * Attention semantics (the same as the CPU path, smartkv_attend.h): for a
 * query of head h at token position pos, the output is
 *     o = sum_i softmax_i(q . k_i / sqrt(head_dim)) v_i
 * over the cached tokens i <= pos of h's KV head (GQA: query head h uses KV
 * head h / (n_heads / n_kv_heads)); evicted tokens (0 bits) are not stored
 * and do not take part.  A query that sees no token gets a zero output.
 *
 * Layouts (float32, row-major):
 *   q, out  [n_layers][n_heads][n_steps][head_dim]   (layers of the run)
 *   mass    [n_layers][n_kv_heads][n_steps][n_tokens]: per token, the
 *           attention probability summed over the query heads of the GQA
 *           group (0 for tokens not stored or beyond pos), i.e. the input of
 *           the importance tracker, computed in the same pass.
 */
#ifndef SMARTKV_CUDA_H
#define SMARTKV_CUDA_H

#include "smartkv_pack.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 1 when a CUDA device can be used; otherwise SKV_ENODEV with the reason
 * ("no CUDA support in this build", "no CUDA device available"). */
SKV_EXPORT int skv_cuda_available(void);

/* Name, SM count, and peak DRAM bandwidth (GB/s, from the memory clock and
 * bus width; 0 when the runtime does not report them) of the current
 * device.  name may be NULL.  Returns 0 or SKV_ENODEV. */
SKV_EXPORT int skv_cuda_device_info(char *name, size_t name_len, int *n_sm, double *peak_gbs);

/* Shape of a cache on the device. */
typedef struct skv_cuda_shape {
    uint32_t n_layers, n_heads, n_kv_heads, head_dim;
    uint64_t n_tokens;
} skv_cuda_shape;

typedef struct skv_cuda_cache skv_cuda_cache;

/* Upload a packed cache given as its PBKT payloads (any order, any number
 * of parts per bucket; each payload as in smartkv_pack.h).  Every header
 * field, the payload size and the token indices (strictly ascending, below
 * n_tokens) are checked on the host; a token must not appear in two
 * buckets of the same (layer, KV head) (the cache object guarantees it).
 * Returns NULL with SKV_EFORMAT / SKV_EINVAL / SKV_ENOMEM / SKV_ENODEV /
 * SKV_EUNSUP (a configuration beyond the kernels' limits: head_dim above
 * 1024, or more than 4160 bytes of index, parameters and K/V rows per
 * token, e.g. head_dim 1024 with groups of 2). */
SKV_EXPORT skv_cuda_cache *skv_cuda_cache_upload(const skv_cuda_shape *shape,
                                                 const uint8_t *const *payloads,
                                                 const uint64_t *sizes, size_t n_payloads);
/* Device bytes of the cache's payloads (what one attention pass reads). */
SKV_EXPORT uint64_t skv_cuda_cache_bytes(const skv_cuda_cache *c);
SKV_EXPORT void skv_cuda_cache_free(skv_cuda_cache *c);

/* Decode attention for n_steps queries per head, layers [layer0, layer0 +
 * n_layers), on the device.  pos[n_steps] are the query positions (tokens
 * 0..pos[s] are visible to step s).  q and out are host arrays laid out as
 * above; mass may be NULL (not computed).  When
 * gpu_ms is not NULL it receives the kernels' GPU time in milliseconds
 * (CUDA events around the attention and merge kernels only, no copies).
 * Returns 0 or <0. */
SKV_EXPORT int skv_cuda_attend(skv_cuda_cache *c, uint32_t layer0, uint32_t n_layers,
                               uint32_t n_steps, const uint64_t *pos, const float *q,
                               float *out, float *mass, float *gpu_ms);

/* Repeat the kernels of the last skv_cuda_attend call (same queries already
 * on the device) `reps` times and return the mean GPU time per pass in ms
 * (for benchmarks: no host copies). */
SKV_EXPORT int skv_cuda_attend_repeat(skv_cuda_cache *c, int reps, float *gpu_ms);

/* Quantize and pack newly cached tokens on the GPU: builds the PBKT payload
 * of tokens idx[0..n) of one (layer, KV head) at `bits`, from k and v rows
 * [n][head_dim] (host float32, row i belongs to token idx[i]), into out
 * (host, exactly skv_pbkt_payload_bytes(cfg, bits, n) bytes).  The bytes
 * equal those of the CPU packer (skv_pbkt_encode on the same rows).
 * Returns 0 or <0 (SKV_EFORMAT naming the token when a value is not finite
 * or beyond the fp16 range). */
SKV_EXPORT int skv_cuda_pack(const skv_qcfg *cfg, uint32_t layer, uint32_t kv_head,
                             uint32_t bits, uint32_t part, const uint32_t *idx, uint32_t n,
                             const float *k, const float *v, uint8_t *out, uint64_t size);

/* ---- packed caches from the library's cache object, and skv-attend ---- */
struct skv_cache;       /* smartkv_cache.h */
struct skv_attend_req;  /* smartkv_attend.h */
struct skv_stream;

/* Upload every bucket of a cache read by skv_cache_read/skv_cache_load. */
SKV_EXPORT skv_cuda_cache *skv_cuda_cache_from(const struct skv_cache *c);

/* What `skv-attend --device cuda` does: read a packed cache from `in` ("-"
 * = stdin), run the fused attention for the requested steps on the GPU and
 * write the attention-output stream (ATHD + OUT tensors, mode "packed") to
 * the open stream `out`, as skv_attend_stream does on the CPU.  Only the
 * default (packed) mode without probabilities is supported (SKV_EINVAL
 * otherwise).  Fails with SKV_ENODEV before reading anything when no
 * device can be used. */
/* 0 when the CUDA kernels can attend on cache c (its PKHD read), else
 * SKV_EUNSUP with a message: keys per channel (k_mode 4) have no GPU path. */
SKV_EXPORT int skv_cuda_cache_supported(const struct skv_cache *c);
SKV_EXPORT int skv_cuda_attend_stream(const char *in, struct skv_stream *out,
                                      const struct skv_attend_req *req);
/* The same for a cache already in memory. */
SKV_EXPORT int skv_cuda_attend_cache(const struct skv_cache *c, struct skv_stream *out,
                                     const struct skv_attend_req *req);

/* ---- dense baselines (benchmarks) ----
 * A dense cache holds K and V as fp16, [n_layers][n_kv_heads][n_tokens]
 * [head_dim], converted from float32 host arrays in that layout. */
typedef struct skv_cuda_dense skv_cuda_dense;

enum skv_cuda_dense_method {
    SKV_CUDA_DENSE_KERNEL = 1, /* our own flash-decoding fp16 kernel */
    SKV_CUDA_DENSE_CUBLAS = 2, /* cublasGemmStridedBatchedEx QK^T, softmax, PV */
};

SKV_EXPORT skv_cuda_dense *skv_cuda_dense_upload(const skv_cuda_shape *shape, const float *k,
                                                 const float *v);
SKV_EXPORT uint64_t skv_cuda_dense_bytes(const skv_cuda_dense *d);
SKV_EXPORT void skv_cuda_dense_free(skv_cuda_dense *d);
/* As skv_cuda_attend, over all layers. */
SKV_EXPORT int skv_cuda_dense_attend(skv_cuda_dense *d, int method, uint32_t n_steps,
                                     const uint64_t *pos, const float *q, float *out,
                                     float *gpu_ms);
SKV_EXPORT int skv_cuda_dense_repeat(skv_cuda_dense *d, int method, int reps, float *gpu_ms);

/* Mean GPU time (ms) of a device-to-device copy of `bytes` bytes, and the
 * achieved GB/s (read + write counted), measured with CUDA events. */
SKV_EXPORT int skv_cuda_copy_bandwidth(uint64_t bytes, int reps, double *gbs);

#ifdef __cplusplus
}
#endif
#endif
