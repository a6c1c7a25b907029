/* skv_cu.cuh -- internals shared by the CUDA translation units (not
 * installed): error helpers and the work description of the attention
 * kernels. */
#ifndef SKV_CU_CUH
#define SKV_CU_CUH

#include <cuda_runtime.h>
#include <stdint.h>

#include "smartkv_cuda.h"
#include "smartkv_error.h"

/* Record a CUDA runtime failure; returns SKV_ENOMEM or SKV_ENODEV. */
int skv_cu_fail(cudaError_t e, const char *what);
/* 0 when a device is usable, else SKV_ENODEV "no CUDA device available". */
int skv_cu_ready(void);

#define SKV_CU(call)                                    \
    do {                                                \
        cudaError_t e_ = (call);                        \
        if (e_ != cudaSuccess)                          \
            return skv_cu_fail(e_, #call);              \
    } while (0)

#define SKV_NOIDX (~0ull) /* Seg.off_idx: token index = position in the segment */

/* One stored run of tokens of one (layer, KV head) at one width: a PBKT
 * payload in the packed arena, or a dense fp16 slab. */
struct skv_seg {
    unsigned long long off_idx; /* byte offsets from the arena base */
    unsigned long long off_kpar, off_kdat, off_vpar, off_vdat;
    uint32_t layer, kvh, bits, n;
    uint32_t kgroup, vgroup, kmode, vmode;
    uint32_t kpb, vpb, rb; /* parameter bytes per token (K, V), row bytes */
    uint32_t tt;           /* tokens per staged tile (multiple of 16, <= SKV_TT_MAX) */
};

/* One thread block's work: tokens [i0, i1) of segment seg; i0 is a multiple
 * of the segment's tile size. */
struct skv_item {
    uint32_t seg, i0, i1, lk; /* lk = layer * n_kv_heads + kv head */
};

#define SKV_TT_MAX 128
/* Staged bytes per token (index, parameters, K and V rows) at most: a
 * head_dim-1024 fp16 token; 16 such tokens double-buffered fit the shared
 * memory of sm_80 and sm_90. */
#define SKV_STAGE_TOKEN_MAX 4160u
#define SKV_NT 128 /* threads per attention block */

/* A set of segments and work items on the device, plus the buffers of the
 * last run (shared by the packed cache and the dense baseline). */
struct skv_core {
    skv_cuda_shape sh;
    uint32_t g;            /* query heads per KV head */
    uint8_t *arena;        /* device */
    uint64_t arena_bytes;
    uint64_t data_bytes;   /* bytes one full pass reads */
    skv_seg *segs;         /* device */
    skv_item *items;       /* device */
    uint32_t n_segs, n_items;
    uint32_t *layer_item0; /* host [n_layers + 1] */
    uint32_t *lk_range;    /* device [n_layers * n_kv_heads][2]: item begin, end */
    uint32_t stage_bytes;  /* one staged tile, max over segments */
    int dense;
    /* run state */
    uint32_t r_layer0, r_nl, r_steps, r_mass, r_ready;
    size_t cap_q, cap_out, cap_pm, cap_pl, cap_part, cap_finm, cap_finl, cap_sbuf, cap_mass,
        cap_steps;
    float *q, *out, *pm, *pl, *pacc, *fin_m, *fin_l, *sbuf, *mass;
    uint32_t *pos;
    cudaEvent_t ev0, ev1;
};

/* Build items for the segments (host copies hsegs, sorted by layer, kv
 * head) and upload segments and items. */
int skv_core_build(skv_core *c, skv_seg *hsegs, uint32_t n_segs);
void skv_core_free(skv_core *c);
/* Upload queries and launch attention (+ merge, + mass) for layers
 * [layer0, layer0 + nl); host q/out/mass as in smartkv_cuda.h. */
int skv_core_attend(skv_core *c, uint32_t layer0, uint32_t nl, uint32_t n_steps,
                    const uint64_t *pos, const float *q, float *out, float *mass,
                    float *gpu_ms);
int skv_core_repeat(skv_core *c, int reps, float *gpu_ms);
/* Launch the kernels of the prepared run on stream 0 (no sync). */
int skv_core_launch(skv_core *c);

static inline __host__ __device__ uint64_t skv_a16(uint64_t n) { return (n + 15) & ~(uint64_t)15; }

/* Staged bytes of one tile of tt tokens of segment s. */
static inline uint64_t skv_seg_stage_bytes(const skv_seg *s, uint32_t tt)
{
    return (uint64_t)tt * 4 + skv_a16((uint64_t)tt * s->kpb) + skv_a16((uint64_t)tt * s->rb) +
           skv_a16((uint64_t)tt * s->vpb) + skv_a16((uint64_t)tt * s->rb);
}

#endif
