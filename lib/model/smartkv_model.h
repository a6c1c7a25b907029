/* smartkv_model.h -- a Llama-family transformer on GGUF weights, in C.
 *
 * Architectures: "llama" (and "mistral": the same graph) and "qwen2"
 * (optional Q/K/V biases, NeoX-style rotary pairs).  The forward pass is the
 * usual pre-norm decoder: token embedding, per layer RMSNorm -> Q/K/V
 * projections -> rotary embedding (the file's theta and dimension count) ->
 * grouped-query causal attention over a KV cache -> output projection ->
 * residual, RMSNorm -> SwiGLU MLP -> residual; final RMSNorm and the output
 * head (output.weight, or the token embedding when tied).  Activations are
 * float32; weights stay in their GGUF types.  Matrix products quantize the
 * activation row to int8 blocks and use integer dot products where the
 * weight type has them (q4_0, q4_1, q8_0: skv_model_set_q8), and dequantize
 * the weights on the fly otherwise.
 *
 * GGUF "llama" files store the Q and K weight rows permuted so that the
 * rotary pairs are adjacent channels (2i, 2i+1); keys in the cache and in
 * recorded traces are therefore post-RoPE in that channel order.
 *
 * Prefill runs blocks of tokens as matrix-matrix products; decode is one
 * token at a time.  Matrix products and attention heads are spread over a
 * pool of threads owned by the model.
 */
#ifndef SMARTKV_MODEL_H
#define SMARTKV_MODEL_H

#include "smartkv_format.h"
#include "smartkv_gguf.h"
#include "smartkv_tokenizer.h"
#include "smartkv_trace.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SKV_MODEL_MAX_THREADS 64

typedef struct skv_model_params {
    char arch[32];
    char name[SKV_MAX_NAME + 1];  /* general.name, or the file name */
    uint32_t n_layers;
    uint32_t n_embd;
    uint32_t n_heads;
    uint32_t n_kv_heads;
    uint32_t head_dim;
    uint32_t n_ff;
    uint32_t n_vocab;
    uint32_t n_ctx_train;
    uint32_t n_rot;         /* rotary dimensions per head (<= head_dim) */
    float rope_theta;
    float norm_eps;
    int rope_neox;          /* 0: pairs (2i, 2i+1); 1: pairs (i, i + n_rot/2) */
} skv_model_params;

typedef struct skv_model skv_model;

/* Load a GGUF model; n_threads >= 1 (clamped to SKV_MODEL_MAX_THREADS).
 * The tokenizer is loaded too when supported (see skv_model_tokenizer). */
SKV_EXPORT skv_model *skv_model_load(const char *path, int n_threads);
SKV_EXPORT void skv_model_free(skv_model *m);
SKV_EXPORT const skv_model_params *skv_model_get_params(const skv_model *m);
/* NULL when the file's tokenizer is not supported; the reason is then
 * returned by skv_model_tokenizer_error(). */
SKV_EXPORT const skv_tokenizer *skv_model_tokenizer(const skv_model *m);
SKV_EXPORT const char *skv_model_tokenizer_error(const skv_model *m);
SKV_EXPORT const skv_gguf *skv_model_gguf(const skv_model *m);
SKV_EXPORT int skv_model_threads(const skv_model *m);
/* Matrix products on int8-quantized activations (skv_q8_block) for the
 * weight types that have integer dot products: on by default, as in
 * llama.cpp; off runs float32 activations against dequantized weights.
 * Returns the previous setting. */
SKV_EXPORT int skv_model_set_q8(skv_model *m, int on);
SKV_EXPORT int skv_model_q8(const skv_model *m);
/* Per layer and query head, gain[l * n_heads + h]: the squared Frobenius
 * norm of head h's block of the attention output projection over head_dim,
 * E|W_o,h e|^2 / |e|^2 for an isotropic error e in the head's output (what
 * an error there moves the residual stream by).  0 or <0 (out of memory). */
SKV_EXPORT int skv_model_head_out_gain(const skv_model *m, float *gain);

/* ---- KV cache interface ----
 *
 * The forward pass talks to its cache only through these hooks, so a
 * compressed cache can replace the dense one and compute attention itself
 * (e.g. straight from packed buckets).  Shapes:
 *   append: k, v hold n rows for positions pos..pos+n-1, each row
 *           n_kv_heads*head_dim floats (head-major inside the row); keys are
 *           post-RoPE.  Called once per layer per evaluated block, from the
 *           evaluating thread.
 *   attend: query head `head` (its KV head is head / (n_heads/n_kv_heads));
 *           q row i (q + i*q_stride, head_dim floats) sits at position
 *           pos+i and attends causally to cached positions 0..pos+i.
 *           Writes out row i (out + i*out_stride) and the attention
 *           probabilities of row i into probs + i*probs_stride (pos+n
 *           floats, zero beyond pos+i).  probs is caller scratch and always
 *           given.  May run concurrently for different heads of one layer.
 *   truncate: forget positions >= n (all layers).
 */
typedef struct skv_kv_cache skv_kv_cache;
typedef struct skv_kv_ops {
    int (*append)(skv_kv_cache *c, uint32_t layer, uint64_t pos, uint32_t n, const float *k,
                  const float *v);
    int (*attend)(skv_kv_cache *c, uint32_t layer, uint32_t head, uint64_t pos, uint32_t n,
                  const float *q, size_t q_stride, float scale, float *out, size_t out_stride,
                  float *probs, size_t probs_stride);
    int (*truncate)(skv_kv_cache *c, uint64_t n);
    void (*destroy)(skv_kv_cache *c);
} skv_kv_ops;

struct skv_kv_cache {
    const skv_kv_ops *ops;
    uint32_t n_layers, n_heads, n_kv_heads, head_dim;
    uint64_t capacity;      /* positions it can hold */
};

/* The reference cache: float32 K and V, [layer][kv_head][pos][head_dim]. */
SKV_EXPORT skv_kv_cache *skv_kv_dense_new(uint32_t n_layers, uint32_t n_heads,
                                          uint32_t n_kv_heads, uint32_t head_dim,
                                          uint64_t capacity);
/* Direct access to a dense cache's rows of one (layer, kv head):
 * capacity*head_dim floats each; NULL for other caches. */
SKV_EXPORT float *skv_kv_dense_keys(skv_kv_cache *c, uint32_t layer, uint32_t kv_head);
SKV_EXPORT float *skv_kv_dense_values(skv_kv_cache *c, uint32_t layer, uint32_t kv_head);
SKV_EXPORT void skv_kv_cache_free(skv_kv_cache *c);
/* Fills the interface part of a cache a constructor has allocated: its ops
 * and shape (checked by the caller). */
SKV_EXPORT void skv_kv_base_init(skv_kv_cache *c, const skv_kv_ops *ops, uint32_t n_layers,
                                 uint32_t n_heads, uint32_t n_kv_heads, uint32_t head_dim,
                                 uint64_t capacity);
/* The checks every cache makes on an append of n rows at pos to layer: the
 * layer exists, pos..pos+n fits the capacity and, with len (positions held
 * per layer; NULL: not checked), leaves no gap after what the layer holds.
 * Returns 0 when the append continues the layer, 1 when pos < len[layer]
 * (the caller first drops the positions >= pos), <0 (message set). */
SKV_EXPORT int skv_kv_append_check(const skv_kv_cache *c, uint32_t layer, uint64_t pos,
                                   uint32_t n, const uint64_t *len);
/* The checks every cache with positions held per layer (len) makes on an
 * attention call: layer and query head exist and pos..pos+n is held.
 * Returns 0 or <0 (message set). */
SKV_EXPORT int skv_kv_attend_check(const skv_kv_cache *c, uint32_t layer, uint32_t head,
                                   uint64_t pos, uint32_t n, const uint64_t *len);
/* Whether truncating to n positions drops anything some layer holds (len:
 * positions held per layer): 1 if so, 0 if not. */
SKV_EXPORT int skv_kv_truncates(const skv_kv_cache *c, uint64_t n, const uint64_t *len);

/* ---- Evaluation ---- */

typedef struct skv_session skv_session;

/* Attention observer: probabilities of query rows pos..pos+n-1 of (layer,
 * head); row i has pos+n entries at probs + i*stride.  Called from worker
 * threads, concurrently for different heads of the same layer. */
typedef void (*skv_attn_fn)(void *ctx, uint32_t layer, uint32_t head, uint64_t pos, uint32_t n,
                            const float *probs, size_t stride);

/* A session: a position counter and a cache.  cache NULL: a dense cache of
 * n_ctx positions is created and owned.  Otherwise the caller keeps
 * ownership; its shapes must match the model. */
SKV_EXPORT skv_session *skv_session_new(skv_model *m, skv_kv_cache *cache, uint64_t n_ctx);
SKV_EXPORT void skv_session_free(skv_session *s);
SKV_EXPORT void skv_session_set_attn_hook(skv_session *s, skv_attn_fn fn, void *ctx);
/* Hidden-state observer: the residual stream entering layer `layer` for
 * positions pos..pos+n-1 (n rows of n_embd floats), called before the
 * layer runs, from the evaluating thread. */
typedef void (*skv_hidden_fn)(void *ctx, uint32_t layer, uint64_t pos, uint32_t n,
                              const float *x, uint32_t n_embd);
SKV_EXPORT void skv_session_set_hidden_hook(skv_session *s, skv_hidden_fn fn, void *ctx);
SKV_EXPORT uint64_t skv_session_pos(const skv_session *s);
SKV_EXPORT int skv_session_reset(skv_session *s);
SKV_EXPORT skv_kv_cache *skv_session_cache(skv_session *s);
SKV_EXPORT const skv_model *skv_session_model(const skv_session *s);

#define SKV_LOGITS_NONE 0
#define SKV_LOGITS_LAST 1   /* logits: n_vocab floats for the last token */
#define SKV_LOGITS_ALL 2    /* logits: n * n_vocab floats */

/* Run n tokens at the session's position (prefill when n > 1), advancing
 * it.  Returns 0 or <0 (position beyond the cache, bad token id, ...). */
SKV_EXPORT int skv_session_eval(skv_session *s, const int32_t *tokens, uint32_t n, float *logits,
                                int logits_mode);

/* RazorAttention's head scores (induction.c): run n distinct random token
 * ids (drawn from [n_vocab/16, n_vocab) with seed) twice and score every
 * (layer, query head) by its mean attention, over the n queries of the
 * second copy, to the token after the earlier occurrence (induction[L][H])
 * and to the earlier occurrence itself (echo[L][H]).  0 or <0 (message). */
SKV_EXPORT int skv_induction_scores(skv_model *m, uint32_t n, uint64_t seed, float *induction,
                                    float *echo);
/* The sums behind them for rows pos..pos+rows-1 of one head (probs as the
 * attention hook gets them): adds to *induction and *echo. */
SKV_EXPORT void skv_induction_rows(uint32_t n, uint64_t pos, uint32_t rows, const float *probs,
                                   size_t stride, double *induction, double *echo);

SKV_EXPORT int32_t skv_argmax(const float *v, uint32_t n);
/* log-softmax probability of id under logits (natural log). */
SKV_EXPORT double skv_logprob(const float *logits, uint32_t n, int32_t id);

/* Greedy generation: evaluate the prompt, then append up to max_new tokens
 * (stopping after an end-of-generation token when stop_at_eog).  *out gets
 * prompt + generated ids (allocated), *n_out their count. */
SKV_EXPORT int skv_generate_greedy(skv_model *m, const int32_t *prompt, uint32_t n_prompt,
                                   uint32_t max_new, int stop_at_eog, int32_t **out,
                                   uint32_t *n_out);

/* ---- Trace recording ----
 *
 * Runs the model layer by layer over the whole token sequence (each layer
 * in blocks of tokens, with a one-layer KV cache) and writes a trace to an
 * open stream: TRHD (model name, tokenizer source, POST_ROPE|HAS_TOKENS,
 * rope theta), TOKS, then per layer (with opts->hidden) the hidn blocks of
 * the residual stream entering the layer, Q (post-RoPE, per query head), K
 * (post-RoPE, as cached) and V (per KV head).  Memory: the weights plus one
 * layer's activations for all tokens (hidden states, Q, K, V). */
typedef void (*skv_progress_fn)(void *ctx, uint64_t done, uint64_t total);

typedef struct skv_record_opts {
    uint32_t dtype;         /* element type on disk (SKV_F32, SKV_F16, SKV_BF16); 0 = F32 */
    uint32_t n_layers;      /* record the first n layers; 0 = all */
    uint64_t n_prefill;     /* header n_prefill; 0 = all tokens */
    uint32_t block;         /* tokens per block (0 = default) */
    skv_progress_fn progress;
    void *progress_ctx;
    int hidden;             /* nonzero: also write hidn chunks (hidden states) */
} skv_record_opts;

SKV_EXPORT int skv_model_record(skv_model *m, const int32_t *tokens, uint64_t n, skv_stream *s,
                                const skv_record_opts *opts);

#ifdef __cplusplus
}
#endif
#endif
