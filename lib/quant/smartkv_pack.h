/* smartkv_pack.h -- the bucketed, bit-packed cache layout and its byte model.
 *
 * The packed cache of one (layer, KV head) is a set of buckets, one per bit
 * width in use.  A bucket holds the indices of its tokens, their quantization
 * parameters and their packed K and V rows.  On disk each bucket is one PBKT
 * chunk whose payload is exactly the in-memory bucket, so a reader can use
 * the payload in place.  Every section starts at a multiple of 64 bytes from
 * the payload start (SIMD and GPU loads stay aligned).
 *
 * PBKT payload (little-endian):
 *   off  size  field
 *   0    4     layer
 *   4    4     kv_head
 *   8    4     bits            2, 3, 4, 8 or 16 (0-bit tokens are not stored)
 *   12   4     n               tokens in this chunk (>= 1)
 *   16   4     head_dim
 *   20   4     k_group         channels per K scale group (divides head_dim)
 *   24   4     v_group
 *   28   4     k_mode          SKV_QMODE_*
 *   32   4     v_mode
 *   36   4     part            index of this chunk within the bucket (0..)
 *   40   4     k_tokens        SKV_QMODE_CHAN: rows per key group (2..4096);
 *                              otherwise 0 (format 1.2; reserved before)
 *   44   4     rotate          SKV_ROT_KEYS | SKV_ROT_VALUES, equals the PKHD's
 *                              (format 1.3; reserved before)
 *   48   8     rot_seed        the rotation's seed; 0 when rotate is 0; one value
 *                              in every PBKT of a cache (format 1.3)
 *   56   8     reserved, zero
 *   64   ...   idx    u32[n] token indices, strictly ascending
 *   then, each section padded to 64 bytes:
 *         k_par  per token, per group: fp16 scale (+ fp16 min for asym)
 *         k_dat  per token: skv_row_bytes(bits, head_dim) packed bytes
 *         v_par, v_dat as for K
 * For bits == 16 there are no parameters: rows are IEEE fp16 values.
 *
 * Keys per channel (k_mode SKV_QMODE_CHAN, format 1.2; KIVI's layout):
 * rows 0..n-1 of the chunk are cut into F = floor(n / k_tokens) full groups
 * of k_tokens consecutive rows and a trailing partial group of n mod
 * k_tokens rows.  k_par holds, for each full group f, head_dim (fp16 scale,
 * fp16 min) pairs, channel order (4*head_dim bytes, the per-token asym
 * block of a group of one channel, shared by the group's rows), then, for
 * each row of the partial group, an ordinary per-token asym block of
 * k_group channels per group.  k_dat is unchanged: one packed row per token.
 * Each part of a bucket is grouped on its own (parts hold a multiple of
 * k_tokens rows but the last).  Values are per token as always.
 *
 * Packed rows (values taken in channel order, the row padded with zeros to
 * a multiple of 8 values):
 *   2-bit: 4 values per byte, value j in bits 2*(j%4)..   (low bits first)
 *   3-bit: 8 values per 3 bytes, the 24-bit little-endian word holds value
 *          j in bits 3*(j%8)..
 *   4-bit: 2 values per byte, value j in bits 4*(j%2)..
 *   8-bit: 1 value per byte
 * Values are unsigned codes q in [0, 2^bits - 1]:
 *   asym: x ~ min + q * scale
 *   sym:  x ~ (q - 2^(bits-1)) * scale
 */
#ifndef SMARTKV_PACK_H
#define SMARTKV_PACK_H

#include "smartkv_format.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SKV_T_PKHD "PKHD" /* packed-cache header: quantizer settings */
#define SKV_T_PBKT "PBKT" /* one bucket (or part of one) */

#define SKV_PBKT_HEADER_LEN 64
#define SKV_ALIGN 64

/* GGML: llama.cpp's symmetric block rule (q8_0 at 8 bits, q4_0 below 8);
 * stored and decoded exactly like SYM (one fp16 scale per group, code
 * offset by 2^(bits-1)), only the choice of scale and codes differs
 * (smartkv_quant.h). */
enum skv_qmode { SKV_QMODE_ASYM = 1, SKV_QMODE_SYM = 2, SKV_QMODE_GGML = 3,
                 SKV_QMODE_CHAN = 4 /* keys only: asym per channel over k_tokens rows */ };

/* Rows per key group of SKV_QMODE_CHAN (KIVI uses 32). */
#define SKV_KEY_TOKENS_MAX 4096u

/* The widths a token may get; 0 means evicted (not stored). */
#define SKV_NBITS 6
static const uint8_t skv_bit_widths[SKV_NBITS] = {0, 2, 3, 4, 8, 16};

typedef struct skv_qcfg {
    uint32_t head_dim;
    uint32_t k_group, v_group;   /* channels per scale group */
    uint32_t k_mode, v_mode;     /* enum skv_qmode (SKV_QMODE_CHAN: K only) */
    uint32_t k_tokens;           /* SKV_QMODE_CHAN: rows per key group; else 0 */
    uint32_t rotate;             /* SKV_ROT_KEYS | SKV_ROT_VALUES: rows stored after the
                                    randomized Hadamard rotation (format 1.3); 0 none */
    uint32_t rot_reserved;       /* zero: no padding before rot_seed (configurations are
                                    compared with memcmp) */
    uint64_t rot_seed;           /* the rotation's seed (skv_rot_signs); 0 without rotate */
} skv_qcfg;

/* skv_qcfg.rotate: keys (and so the queries attending them) and values are
 * stored rotated; the byte model does not change (the signs derive from
 * the seed).  Needs a power-of-two head_dim. */
#define SKV_ROT_KEYS 0x1u
#define SKV_ROT_VALUES 0x2u

static inline uint64_t skv_align64(uint64_t n) { return (n + (SKV_ALIGN - 1)) & ~(uint64_t)(SKV_ALIGN - 1); }

/* Packed data bytes of one vector of head_dim values at this width. */
static inline uint64_t skv_row_bytes(uint32_t bits, uint32_t head_dim)
{
    if (bits == 16)
        return (uint64_t)head_dim * 2;
    return (uint64_t)((head_dim + 7) / 8) * bits;
}

/* Quantization-parameter bytes of one vector (0 for 16-bit). */
static inline uint64_t skv_par_bytes(uint32_t bits, uint32_t head_dim, uint32_t group, uint32_t mode)
{
    if (bits == 16 || bits == 0)
        return 0;
    uint64_t groups = (head_dim + group - 1) / group;
    /* CHAN: the per-token (asym) blocks of a partial group's rows */
    return groups * (mode == SKV_QMODE_ASYM || mode == SKV_QMODE_CHAN ? 4u : 2u);
}

/* Bytes of the k_par section of n rows at this width: n per-token blocks,
 * or with SKV_QMODE_CHAN one 4*head_dim block per full group of k_tokens
 * rows plus a per-token block per row of the partial group. */
static inline uint64_t skv_kpar_bytes(const skv_qcfg *c, uint32_t bits, uint64_t n)
{
    uint64_t per = skv_par_bytes(bits, c->head_dim, c->k_group, c->k_mode);
    if (c->k_mode != SKV_QMODE_CHAN || bits == 16 || bits == 0 || c->k_tokens == 0)
        return n * per;
    return n / c->k_tokens * 4 * (uint64_t)c->head_dim + n % c->k_tokens * per;
}

/* Payload bytes of a PBKT chunk holding n tokens at this width. */
static inline uint64_t skv_pbkt_payload_bytes(const skv_qcfg *c, uint32_t bits, uint64_t n)
{
    return SKV_PBKT_HEADER_LEN + skv_align64(4 * n) + skv_align64(skv_kpar_bytes(c, bits, n)) +
           skv_align64(n * skv_row_bytes(bits, c->head_dim)) +
           skv_align64(n * skv_par_bytes(bits, c->head_dim, c->v_group, c->v_mode)) +
           skv_align64(n * skv_row_bytes(bits, c->head_dim));
}

/* Most tokens one PBKT chunk may hold at this width (payload <= SKV_CHUNK_MAX). */
SKV_EXPORT uint64_t skv_pbkt_max_tokens(const skv_qcfg *c, uint32_t bits);

/* Bytes in the file for a whole bucket of n tokens at this width: all its
 * chunks' headers, payloads and CRCs.  0 for n == 0 or bits == 0.  This is
 * the allocator's byte model; skv-quant writes exactly this many bytes. */
SKV_EXPORT uint64_t skv_bucket_file_bytes(const skv_qcfg *c, uint32_t bits, uint64_t n);

/* ---- PKHD: the packed-cache header chunk (layout in smartkv(5)) ----
 * Its payload has a fixed size, so its file bytes are a constant that the
 * byte model adds once per cache:
 *   cache bytes = skv_pkhd_file_bytes() + sum over (layer, kv head, width)
 *                 of skv_bucket_file_bytes(cfg, width, tokens at that width) */
#define SKV_PKHD_LEN 64
SKV_EXPORT uint64_t skv_pkhd_file_bytes(void);

/* ---- one PBKT chunk, decoded ----
 * All pointers point into the payload; rows of token i (0 <= i < n) are at
 * k_par + i*k_par_stride, k_dat + i*row_stride (and likewise for V).
 * Parameter and data formats: smartkv_qmath.h. */
typedef struct skv_bucket {
    uint32_t layer, kv_head;
    uint32_t bits;              /* 2, 3, 4, 8 or 16 */
    uint32_t part;              /* chunk index within the bucket of this width */
    uint32_t n;                 /* tokens */
    uint32_t head_dim;
    uint32_t k_group, v_group;  /* channels per parameter group */
    uint32_t k_mode, v_mode;    /* enum skv_qmode */
    uint32_t k_tokens;          /* SKV_QMODE_CHAN: rows per key group, else 0 */
    uint32_t rotate;            /* SKV_ROT_KEYS | SKV_ROT_VALUES (format 1.3), else 0:
                                   rows decode in the rotated basis */
    uint64_t rot_seed;          /* the rotation's seed, 0 without rotate */
    uint32_t k_full;            /* SKV_QMODE_CHAN: rows in full key groups (rows
                                   [0, k_full) take the group block at k_par +
                                   (i / k_tokens) * 4 * head_dim, channel c's
                                   scale and min at + 4c); else 0 */
    uint32_t k_par_stride;      /* parameter bytes per token (0 for 16-bit); with
                                   CHAN, of the rows i >= k_full, whose blocks
                                   start at k_tail_par */
    const uint8_t *k_tail_par;  /* CHAN: k_par + (k_full / k_tokens) * 4 * head_dim */
    uint32_t v_par_stride;
    uint32_t row_stride;        /* packed bytes per token row: skv_row_bytes(bits, head_dim) */
    const uint32_t *idx;        /* [n] token indices, strictly ascending */
    const uint8_t *k_par, *k_dat, *v_par, *v_dat;
    const uint8_t *payload;     /* start of the PBKT payload */
    uint64_t payload_bytes;
} skv_bucket;

/* Bytes of a decoded bucket's k_par section in use (padding excluded). */
static inline uint64_t skv_bucket_kpar_bytes(const skv_bucket *b)
{
    if (b->k_tail_par)
        return (uint64_t)(b->k_full / b->k_tokens) * 4 * b->head_dim +
               (uint64_t)(b->n - b->k_full) * b->k_par_stride;
    return (uint64_t)b->n * b->k_par_stride;
}

/* Build the PBKT payload of n tokens idx[0..n) (strictly ascending) of one
 * (layer, kv head) at `bits`: k and v are that head's [n_tokens][head_dim]
 * float32 rows.  out must hold exactly skv_pbkt_payload_bytes(c, bits, n)
 * bytes (size); every byte is written (padding zero).  Returns 0 or <0
 * (SKV_EFORMAT naming layer, head, token and tensor when a value cannot be
 * quantized). */
SKV_EXPORT int skv_pbkt_encode(uint8_t *out, uint64_t size, const skv_qcfg *c, uint32_t layer,
                               uint32_t kv_head, uint32_t bits, uint32_t part,
                               const uint32_t *idx, uint32_t n, const float *k, const float *v);

/* Validate a PBKT payload and point *b into it.  p must be 4-byte aligned.
 * Checks every header field, the exact size, zero reserved and padding
 * bytes, and indices strictly ascending and below n_tokens. */
SKV_EXPORT int skv_pbkt_decode(const uint8_t *p, uint64_t size, uint64_t n_tokens,
                               skv_bucket *b);

/* Dequantize a bucket's rows into [n_tokens][head_dim] arrays at its token
 * indices (k or v may be NULL); other rows are left untouched. */
SKV_EXPORT void skv_bucket_dequantize(const skv_bucket *b, float *k, float *v);

/* ---- CNTR: the centroids of one (layer, KV head) (smartkv(5)) ----
 * Written by skv-quant for an allocation with merged tokens (ALHD flag
 * SKV_ALHD_MERGE): the tokens the allocation evicts are merged into at most
 * K centroids by online k-means on the keys.  Attention to centroid c adds
 * log(cnt[c]) to its logit, so a centroid of n identical tokens attends
 * exactly like the n tokens.  The payload is a PBKT payload whose index
 * section holds each centroid's last member (its position, strictly
 * ascending: a query at position t attends the centroids with last <= t)
 * and which has one more section, the member counts, right after the
 * 64-byte header:
 *   0    64    header as PBKT (part 0; n = centroids, 1..SKV_CNTR_MAX)
 *   64   4n    cnt   u32 member counts, >= 1 (padded to 64 bytes)
 *   ...        last  u32[n] (the PBKT idx section), then k_par, k_dat,
 *              v_par, v_dat as in PBKT */
#define SKV_T_CNTR "CNTR"
#define SKV_CNTR_MAX 65536u

static inline uint64_t skv_cntr_payload_bytes(const skv_qcfg *c, uint32_t bits, uint64_t n)
{
    return skv_pbkt_payload_bytes(c, bits, n) + skv_align64(4 * n);
}
/* File bytes of a CNTR chunk of n centroids (framing included); 0 for n 0. */
SKV_EXPORT uint64_t skv_cntr_file_bytes(const skv_qcfg *c, uint32_t bits, uint64_t n);
/* Build a CNTR payload: n centroids (ck, cv [n][head_dim], cnt [n] >= 1,
 * last [n] strictly ascending).  out holds exactly
 * skv_cntr_payload_bytes(c, bits, n) bytes.  Returns 0 or <0. */
SKV_EXPORT int skv_cntr_encode(uint8_t *out, uint64_t size, const skv_qcfg *c, uint32_t layer,
                               uint32_t kv_head, uint32_t bits, uint32_t n, const uint32_t *cnt,
                               const uint32_t *last, const float *ck, const float *cv);
/* Validate a CNTR payload (p 4-byte aligned) and point *b (idx = last
 * members) and *cnt into it: every PBKT rule, part 0, n <= SKV_CNTR_MAX,
 * counts >= 1 and their sum <= n_tokens. */
SKV_EXPORT int skv_cntr_decode(const uint8_t *p, uint64_t size, uint64_t n_tokens,
                               skv_bucket *b, const uint32_t **cnt);

#ifdef __cplusplus
}
#endif
#endif
