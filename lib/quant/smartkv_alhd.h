/* smartkv_alhd.h -- the allocation records of a stream (ALHD, ALOC): their
 * layout, codecs and checks.  Here, below both, so that the allocator that
 * writes them (lib/alloc) and the packed cache that reads them (cache.c)
 * share one decoder and one set of rules.
 *
 * On disk (smartkv(5), "ALLOCATION CHUNKS") an allocation is one ALHD chunk
 * followed by one ALOC chunk per (layer, KV head), layers ascending and KV
 * heads ascending within a layer, placed after the last trace layer.
 *
 * ALHD payload (little-endian):
 *   0   f64  budget beta requested (0: none, e.g. uniform:N without -b)
 *   8   u32  n_layers
 *   12  u32  n_kv_heads
 *   16  u64  n_tokens
 *   24  u32  allowed widths: bit b set if width b in {0,2,3,4,8,16} is allowed
 *   28  u32  flags (bit 0: importance shared across layers)
 *   32  u32  head_dim
 *   36  u32  k_group    \
 *   40  u32  v_group     | the skv_qcfg of the byte model; skv-quant
 *   44  u16  k_mode      | quantizes with exactly these
 *   46  u16  k_tokens    | (k_tokens: rows per key group with k_mode 4,
 *   48  u32  v_mode     /   channel, else 0; the high half of a u32 k_mode,
 *                            zero, before format 1.2)
 *   52  u32  clusters K: with flag SKV_ALHD_MERGE, the evicted tokens of each
 *            (layer, KV head) are merged into min(K, evicted) centroids (CNTR
 *            chunks of the packed cache, smartkv_pack.h); else 0
 *   56  u64  predicted cache bytes (byte model total, PKHD included)
 *   64  u16  text length L (<= SKV_ALHD_MAX_TEXT)
 *   66  L    text, e.g. "policy=smartkv importance=ema decay=0.9 realloc=16 ..."
 *            (no NUL)
 * ALOC payload:
 *   0   u32  layer
 *   4   u32  kv_head
 *   8   u64  n_tokens
 *   16  u8   bits[n_tokens]
 *        zero padding to a multiple of 4 bytes
 *        f32  importance[n_tokens]   (finite, >= 0)
 */
#ifndef SMARTKV_ALHD_H
#define SMARTKV_ALHD_H

#include "smartkv_format.h"
#include "smartkv_pack.h"
#include "smartkv_trace.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SKV_T_ALHD "ALHD" /* allocation header: policy, budget, quantizer settings */
#define SKV_T_ALOC "ALOC" /* bits and importance of one (layer, KV head) */

#define SKV_ALHD_FIXED_LEN 66
#define SKV_ALHD_MAX_TEXT 1024u
#define SKV_ALHD_SHARE_LAYERS 0x1u
#define SKV_ALHD_MERGE 0x2u         /* evicted tokens merged into centroids (prune-merge) */
#define SKV_ALHD_FLAGS_KNOWN 0x3u
#define SKV_ALOC_HEADER_LEN 16
/* Largest n_tokens whose ALOC payload fits one chunk (SKV_CHUNK_MAX). */
#define SKV_ALOC_MAX_TOKENS 13421769ull

/* Mask of every width (bits 0, 2, 3, 4, 8, 16). */
#define SKV_WIDTH_MASK_ALL ((1u << 0) | (1u << 2) | (1u << 3) | (1u << 4) | (1u << 8) | (1u << 16))
/* Default allowed set: 2, 3, 4, 8, 16 (no eviction). */
#define SKV_WIDTH_MASK_DEFAULT (SKV_WIDTH_MASK_ALL & ~1u)

typedef struct skv_alloc_hdr {
    double budget;            /* beta requested, 0 = none */
    uint32_t n_layers;
    uint32_t n_kv_heads;
    uint64_t n_tokens;
    uint32_t width_mask;      /* bit b: width b allowed */
    uint32_t flags;           /* SKV_ALHD_* */
    skv_qcfg qcfg;            /* head_dim, k_group, v_group, k_mode, v_mode */
    uint64_t predicted_bytes; /* byte model total, PKHD included */
    uint32_t clusters;        /* SKV_ALHD_MERGE: centroids per (layer, KV head), else 0 */
    char text[SKV_ALHD_MAX_TEXT + 1]; /* policy and parameters, NUL-terminated */
} skv_alloc_hdr;

/* ---- chunk codecs (decoders validate every field) ---- */
SKV_EXPORT int skv_alhd_decode(const skv_chunk *c, skv_alloc_hdr *h);
SKV_EXPORT int skv_alhd_write(skv_stream *s, const skv_alloc_hdr *h);
/* *bits and *importance point into the chunk payload (valid until the next
 * read).  Checks n, sizes, padding, widths in {0,2,3,4,8,16}, importance
 * finite and >= 0; the caller checks layer/kv_head/n and the widths against
 * its ALHD (skv_aloc_check). */
SKV_EXPORT int skv_aloc_decode(const skv_chunk *c, uint32_t *layer, uint32_t *kv_head,
                               uint64_t *n, const uint8_t **bits, const float **importance);
SKV_EXPORT int skv_aloc_write(skv_stream *s, uint32_t layer, uint32_t kv_head, uint64_t n,
                              const uint8_t *bits, const float *importance);
/* Check a decoded ALOC against its header: layer/kv_head in range, n equal
 * to n_tokens, every width allowed by the mask. */
SKV_EXPORT int skv_aloc_check(const skv_alloc_hdr *h, uint32_t layer, uint32_t kv_head,
                              uint64_t n, const uint8_t *bits);
/* Check a header's fields (what skv_alhd_decode checks). */
SKV_EXPORT int skv_alhd_check(const skv_alloc_hdr *h);

/* The allocation chunks of a stream, checked as they arrive (smartkv(5),
 * ALLOCATIONS): at most one ALHD, matching the trace header th (when not
 * NULL); then one ALOC per (layer, kv head) in ascending order, each valid
 * and allowed by the ALHD.  Zero-initialise, pass every ALHD and ALOC chunk to
 * skv_alloc_seq_chunk, then call skv_alloc_seq_end at the end of the
 * stream.  Constant memory.  Each returns 0 or <0. */
typedef struct skv_alloc_seq {
    int have_hdr;
    skv_alloc_hdr h;
    uint64_t next;            /* layer * n_kv_heads + kv_head of the next ALOC */
} skv_alloc_seq;
SKV_EXPORT int skv_alloc_seq_chunk(skv_alloc_seq *q, const skv_trace_hdr *th,
                                   const skv_chunk *c);
SKV_EXPORT int skv_alloc_seq_end(const skv_alloc_seq *q);

/* Index of width b in skv_bit_widths[], or -1. */
SKV_EXPORT int skv_width_index(uint32_t bits);

#ifdef __cplusplus
}
#endif
#endif
