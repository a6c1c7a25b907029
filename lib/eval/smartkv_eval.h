/* smartkv_eval.h -- end-to-end quality with the compressed cache in the
 * loop: perplexity / KL against the fp16 cache, and pass-key retrieval.
 *
 * Perplexity (skv_eval_ppl).  The text is cut into windows of ctx tokens
 * starting every stride tokens (the last window ends at the text's end);
 * each window starts from an empty cache, and the tokens not scored by an
 * earlier window are scored (the first window scores all but its first
 * token).  Two sessions run in lockstep over the same blocks of tokens:
 * the reference (an fp16 cache, SKV_EC_FP16) and the cache under test.
 * Blocks are `block` tokens (default: the reallocation interval R) starting
 * after an optional prefill, so the cache under test sees exactly what
 * token-by-token decoding would see: tokens since the last reallocation at
 * fp16, everything older as allocated at that reallocation, and the
 * importance of every earlier query row.  (Reallocation happens when a
 * block starts R or more tokens after the last one, see
 * smartkv_evalcache.h.)  For every scored position:
 *   nll = -log p(next token), KL(p_ref || p_cache) in nats (full
 *   vocabulary, float64), top-1 agreement of the two argmaxes,
 * and the cache's beta (byte model / fp16 bytes) at that moment.
 *
 * Activations.  Int8 activations (skv_model_set_q8) are discontinuous: a
 * tiny change in the cache moves some activations across a quantization
 * step, so two caches that differ by a rounding already differ by a KL of
 * about 1e-3 nats (measured: uniform:16 against fp16), which would hide the
 * differences of the good caches (uniform:8 is about 3e-4).  The evaluation
 * therefore runs on float32 activations unless int8 is asked for.
 *
 * Reference reuse (ref_cache set).  The fp16 reference depends only on the
 * model, the tokens and the windows, not on the cache under test, so a
 * sweep need not rerun it for every row: it is run once, window by window
 * in blocks of 64 tokens after the prefill, and the logits of every scored
 * position are kept in DIR/ref-KEY.bin (float32, about 0.2 GB per 1000
 * scored positions of a 49K vocabulary), KEY hashing the model file, the
 * activation setting, the tokens and (n, ctx, stride, prefill).  Later
 * runs with the same key read it instead (ref_seconds is then 0).  A lock
 * file serialises concurrent runs; the file is written under a temporary
 * name and renamed, and one that does not match its key is recomputed.
 * Per token, the model's logits do not depend on how the tokens are cut
 * into blocks (integer path) or only to float rounding (float path), so
 * the numbers equal the lockstep run's, or nearly.
 *
 * Pass-key retrieval (skv_eval_needle).  A prompt of about `length` tokens:
 * an instruction, filler sentences, the pass key (a random 5-digit number
 * from the seed) stated once at `depth` percent of the filler, more filler
 * and the question.  The prompt is a prefill (held at fp16, then allocated
 * once, as a real cache would after the prompt), followed by greedy
 * decoding of up to max_new tokens; exact match of the first number in the
 * answer.
 */
#ifndef SMARTKV_EVAL_H
#define SMARTKV_EVAL_H

#include "smartkv_evalcache.h"
#include "smartkv_model.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct skv_ppl_opts {
    uint32_t ctx;           /* window tokens (0 = 512) */
    uint32_t stride;        /* window step (0 = ctx / 2) */
    uint32_t block;         /* tokens per evaluation call (0 = the cache's R) */
    uint32_t prefill;       /* first tokens of each window as one prefill (0 = none) */
    uint64_t max_tokens;    /* use the first max_tokens tokens of the text (0 = all) */
    int reference;          /* 1: run the fp16 reference beside it (default); 0: skip it */
    const char *ref_cache;  /* directory for reference logits reused across runs, or NULL */
    int int8;               /* 1: the model's int8-activation products (faster, see below);
                             * 0 (default): float32 activations for the evaluation */
    skv_progress_fn progress;   /* tokens done / total, may be NULL */
    void *progress_ctx;
} skv_ppl_opts;

typedef struct skv_ppl_result {
    uint64_t n_tokens;      /* text tokens used */
    uint64_t n_scored;
    uint64_t n_windows;
    double nll, nll_ref;    /* mean negative log-likelihood, nats */
    double ppl, ppl_ref;    /* exp(nll) */
    double kl;              /* mean KL(ref || cache), nats */
    double kl_max;
    double top1;            /* fraction of positions whose argmax agrees */
    double beta;            /* mean over scored positions of the cache's beta */
    double beta_end;        /* mean over windows of beta at the window's end */
    double beta_alloc;      /* mean over reallocations of beta right after them */
    double meta_frac;       /* tracking state / fp16 bytes, at the window ends */
    skv_ec_stats stats;     /* counters summed over windows; sizes of the last */
    double seconds;         /* wall time of the cache under test's evaluation */
    double ref_seconds;     /* ... of the reference */
} skv_ppl_result;

SKV_EXPORT int skv_eval_ppl(skv_model *m, const int32_t *tokens, uint64_t n,
                            const skv_ec_cfg *cfg, const skv_ppl_opts *o, skv_ppl_result *r);

typedef struct skv_needle_opts {
    uint64_t seed;          /* pass key and nothing else */
    uint32_t max_new;       /* decode steps (0 = 8) */
} skv_needle_opts;

typedef struct skv_needle_result {
    uint32_t key;           /* the pass key */
    uint32_t n_prompt;      /* prompt tokens */
    uint32_t needle_pos;    /* token index where the pass-key sentence starts */
    int correct;            /* exact match */
    char answer[64];        /* decoded answer (printable, truncated) */
    double beta;            /* cache beta after the prefill's allocation */
    double seconds;
} skv_needle_result;

/* Build the prompt for (length, depth) and run it with cache configuration
 * cfg (kind FP16 for the baseline).  Needs the model's tokenizer. */
SKV_EXPORT int skv_eval_needle(skv_model *m, const skv_ec_cfg *cfg, uint32_t length,
                               uint32_t depth_pct, const skv_needle_opts *o,
                               skv_needle_result *r);

/* KL(p || q) of two logit vectors (softmax of each), float64, nats. */
SKV_EXPORT double skv_logits_kl(const float *lp, const float *lq, uint32_t n);

#ifdef __cplusplus
}
#endif
#endif
