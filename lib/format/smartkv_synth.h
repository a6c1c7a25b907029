/* smartkv_synth.h -- a seeded generator of realistic synthetic traces.
 *
 * The generative model (documented in skv-trace(1)): per layer and KV head,
 * random directions for the attention sink, heavy hitters and needles live in
 * the slowest-rotating RoPE channel pairs (so they match across positions);
 * a locality direction lives in the fastest pairs (RoPE turns a shared
 * direction into a recency band).  Keys and queries are Gaussian noise plus
 * these components, then RoPE, then keys get a few large per-channel
 * offsets (outlier channels, as real keys have).  Values are Gaussian. */
#ifndef SMARTKV_SYNTH_H
#define SMARTKV_SYNTH_H

#include "smartkv_trace.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct skv_synth_cfg {
    uint32_t n_layers, n_heads, n_kv_heads, head_dim;
    uint64_t n_tokens, n_prefill;
    uint32_t dtype;
    uint64_t seed;
    float rope_theta;
    uint32_t sinks;          /* number of sink tokens at the start */
    float sink_logit;        /* typical logit of a sink */
    float hitter_frac;       /* fraction of tokens that are heavy hitters */
    float hitter_logit;
    float local_logit;       /* logit of a token attending to itself (recency band) */
    uint32_t needles;        /* planted needle tokens in the prefill */
    uint32_t needle_queries; /* last decode steps that look for the needles */
    float needle_logit;
    uint32_t outlier_channels; /* per KV head */
    float outlier_scale;
    float noise;             /* std of the noise part of q and k */
    /* skv_synth_write calls progress(ctx, layers done, n_layers) after each
     * layer when it is set (NULL by default) */
    void (*progress)(void *ctx, uint64_t done, uint64_t total);
    void *progress_ctx;
} skv_synth_cfg;

/* Defaults resembling a small Llama-family model (SmolLM2-135M shapes). */
SKV_EXPORT void skv_synth_defaults(skv_synth_cfg *c);

/* The header the generator will produce. */
SKV_EXPORT int skv_synth_header(const skv_synth_cfg *c, skv_trace_hdr *h);

/* Generate one layer's float32 Q [n_heads][T][d], K and V [n_kv_heads][T][d]. */
SKV_EXPORT int skv_synth_layer(const skv_synth_cfg *c, uint32_t layer, float *q, float *k,
                               float *v);

/* Positions of the planted needles (sorted), n = c->needles entries. */
SKV_EXPORT int skv_synth_needles(const skv_synth_cfg *c, uint64_t *pos);

/* Write a whole synthetic trace (TRHD, layers) to an open stream. */
SKV_EXPORT int skv_synth_write(const skv_synth_cfg *c, skv_stream *s);

/* Apply rotary embeddings in place to a [n][d] block whose first row is at
 * position pos0 (pairs (2i, 2i+1), frequency theta^(-2i/d)). */
SKV_EXPORT void skv_rope(float *x, uint64_t n, uint32_t d, uint64_t pos0, float theta);

#ifdef __cplusplus
}
#endif
#endif
