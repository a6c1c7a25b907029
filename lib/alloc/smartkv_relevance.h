/* smartkv_relevance.h -- ATSKV: learned token relevance per layer.
 *
 *   r = sigmoid(bias + w_f . x + w_h . h)
 *
 * x are SKV_RLV_NFEAT attention-pattern and handcrafted features of a token
 * at decode step t (what the cache can know: the attention the token got
 * from queries before t, its position, its token id); h is the hidden state
 * entering the layer when the token was written (the residual stream, as
 * recorded by skv-trace record --hidden).  h is static per token, so the
 * runtime keeps only the scalar w_h . h per token, not h.
 *
 * Training (skv_rlv_train): L2-regularised logistic regression by Newton's
 * method (IRLS, Cholesky solve, backtracking line search) on standardised
 * features, per layer, in float64, deterministic for a seed.  h enters the
 * fit through a seeded Gaussian projection to hidden_dims dimensions (the
 * full n_embd would make the Newton system n_embd wide); the fitted weights
 * are folded back to raw feature and n_embd space, so inference needs no
 * projection or standardisation.
 *
 * Label of token i at step t: its attention mass over the next `horizon`
 * queries (mean over the query heads of its KV group, summed over queries
 * t..t+horizon-1) is at least the label_q quantile of that mass over the
 * tokens 0..t-1.
 *
 * On disk: a weights container holds one ancillary rlvw chunk per layer
 * (smartkv(5)).
 */
#ifndef SMARTKV_RELEVANCE_H
#define SMARTKV_RELEVANCE_H

#include "smartkv_format.h"
#include "smartkv_trace.h"

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SKV_T_RLVW "rlvw"

/* Attention-pattern (a) and handcrafted (f) features, in this order. */
enum skv_rlv_feature {
    SKV_RLV_EMA_MEAN = 0, /* EMA (decay) of the group-mean attention: smartkv's importance */
    SKV_RLV_EMA_MAX,      /* EMA of the maximum over the group's heads */
    SKV_RLV_LOG_EMA,      /* log(EMA_MEAN + 1e-6) */
    SKV_RLV_LOG_MEAN,     /* log(mean group-mean attention per query seen + 1e-6) */
    SKV_RLV_LOG_ACC_MAX,  /* log(accumulated max-over-heads mass + 1e-6) */
    SKV_RLV_LAST_HIT,     /* log1p(queries since the last hit); hit: max >= 2/visible */
    SKV_RLV_HIT_RATE,     /* hits / queries seen */
    SKV_RLV_ENTROPY,      /* entropy of its attention column / log(queries seen) */
    SKV_RLV_REL_POS,      /* i / t */
    SKV_RLV_LOG_AGE,      /* log1p(t - i) */
    SKV_RLV_INV_AGE,      /* 1 / (1 + t - i) */
    SKV_RLV_SINK,         /* i < 4 */
    SKV_RLV_NEWLINE,      /* the token's bytes contain a newline */
    SKV_RLV_PUNCT,        /* the token is punctuation (and spaces) */
    SKV_RLV_LOG_FREQ,     /* log1p(occurrences of its id among tokens 0..t-1) */
    SKV_RLV_NFEAT
};

SKV_EXPORT const char *skv_rlv_feature_name(uint32_t f);

/* Token classes for the handcrafted features. */
#define SKV_RLV_TOK_NEWLINE 0x1u
#define SKV_RLV_TOK_PUNCT 0x2u
/* Class of a token from its bytes (n of them). */
SKV_EXPORT uint8_t skv_rlv_token_class(const char *bytes, int n);

/* ---- online tracking (one KV group, tokens 0..cap-1) ---- */

typedef struct skv_rlv_tok {
    float ema_mean, ema_max, acc_mean, acc_max;
    float plogp;            /* sum over queries of p log p (group mean p) */
    uint32_t last_hit;      /* query step of the last hit, or the token's own position */
    uint32_t hits;
} skv_rlv_tok;

#define SKV_RLV_DECAY 0.9f

/* Fold one query step s (keys 0..s visible): mean[i], max[i] over the
 * group's heads for i = 0..s.  tok[i] for i = 0..s is updated; tok[s] is
 * initialised first. */
SKV_EXPORT void skv_rlv_track_step(skv_rlv_tok *tok, uint64_t s, const float *mean,
                                   const float *max);
/* Features of token i at step t (queries 0..t-1 folded in).  cls: its
 * token class; count: occurrences of its id among tokens 0..t-1. */
SKV_EXPORT void skv_rlv_features(const skv_rlv_tok *tk, uint64_t i, uint64_t t, uint8_t cls,
                                 uint32_t count, double *x);

/* ---- compact tracking (the grouped cache's importance atskv) ----
 *
 * The full tracker costs 28 bytes per token and KV head (0.11 of the fp16
 * K+V of a 64-wide head).  The compact one keeps per token only the EMA of
 * its group-mean attention, read through a one-byte log code (as smartkv's
 * EMA importance), and per group of SKV_RLV_GROUP tokens (the grouped
 * cache's key group) one skv_rlv_tok holding the sums of its tokens' fields
 * (last_hit: the group's latest hit or token).  A token's features are then:
 * EMA_MEAN and LOG_EMA its own (8-bit), EMA_MAX its EMA times the group's
 * max/mean ratio, the other attention features those of the group's mean
 * token (sums / n, queries seen / n), position and token features exact.
 * 1 + 28/32 bytes per token and KV head. */
#define SKV_RLV_GROUP 32u

/* Fold query step s as skv_rlv_track_step: the group sums grp[0..s/32] (a
 * group is initialised when its first token arrives) and ema[0..s]. */
SKV_EXPORT void skv_rlv_track_step_compact(skv_rlv_tok *grp, float *ema, uint64_t s,
                                           const float *mean, const float *max);
SKV_EXPORT void skv_rlv_features_compact(const skv_rlv_tok *grp, const float *ema, uint64_t i,
                                         uint64_t t, uint8_t cls, uint32_t count, double *x);
/* x through the one-byte log code: 2^(k/16) for k = -254..0, 0 below 2^-15.9
 * (within 2.2% of x in (2^-15.9, 1]). */
SKV_EXPORT double skv_rlv_log8(double x);
/* Bytes of the compact state of T tokens of one KV head. */
SKV_EXPORT uint64_t skv_rlv_compact_bytes(uint64_t T);

/* ---- weights ---- */

typedef struct skv_rlv_layer {
    double bias;
    float w[SKV_RLV_NFEAT];  /* on raw features */
    float *wh;               /* [n_embd] on the raw hidden state, or NULL */
    float beta;              /* ATSKV's threshold scale: tau_l = beta * quantile(r, q_l);
                                1 in weights written before it was fitted */
} skv_rlv_layer;

typedef struct skv_rlv_model {
    uint32_t n_layers, n_embd;   /* n_embd 0: no hidden-state term */
    skv_rlv_layer *layers;
    const char *label;           /* policy name when not "atskv" (an ablation), or NULL */
} skv_rlv_model;

SKV_EXPORT skv_rlv_model *skv_rlv_model_new(uint32_t n_layers, uint32_t n_embd);
SKV_EXPORT void skv_rlv_model_free(skv_rlv_model *m);
/* w_h . h for one token (0 without a hidden-state term). */
SKV_EXPORT double skv_rlv_hidden_term(const skv_rlv_model *m, uint32_t layer, const float *h);
/* out[i] = w_h . h_i for n hidden states of n_embd floats each (the online
 * caches' hook); SKV_EINVAL if the weights expect another n_embd. */
SKV_EXPORT int skv_rlv_hidden_terms(const skv_rlv_model *m, uint32_t layer, const float *x,
                                    uint32_t n, uint32_t n_embd, float *out);
/* The logit bias + w . x + hterm (monotone in r). */
SKV_EXPORT double skv_rlv_logit(const skv_rlv_model *m, uint32_t layer, const double *x,
                                double hterm);
SKV_EXPORT int skv_rlv_write(skv_stream *s, const skv_rlv_model *m);
/* Load from a stream's rlvw chunks (other chunks skipped). */
SKV_EXPORT int skv_rlv_load(const char *path, skv_rlv_model **out);

/* ---- ATSKV's selection of one (layer, KV head) ----
 * tau = beta * quantile(r, q) (the element at round(q * (t - 1)) of r
 * sorted); active: the first `sinks` and last `recent` tokens, then the
 * others above tau by r (ties: lower index first), at most K in all.
 * keep[t] gets 1 for the active tokens; rk[t] and srt[t] are scratch.
 * Returns how many tokens are above tau (the controller steers q with it).
 * skv-eval -p atskv selects with it and skv_rlv_sel_recall replays it. */
typedef struct skv_rlv_rank {
    double r;
    uint64_t i;
} skv_rlv_rank;
SKV_EXPORT uint64_t skv_rlv_select(const double *r, uint64_t t, double q, double beta, uint64_t K,
                                   uint64_t sinks, uint64_t recent, skv_rlv_rank *rk,
                                   double *srt, uint8_t *keep);

/* ---- the threshold scale beta_l ----
 *
 * ATSKV's selection replayed on a trace layer: at each step t (every
 * `stride` tokens) of each KV head, r[i] and fut[i] (the attention mass token i
 * gets over the next `horizon` queries) for i < t.  A simulation with scale
 * beta runs skv-eval -p atskv's rule: q starts at 1 - target; tau = beta *
 * quantile(r, q); active = the sinks and recent tokens, then the tokens
 * above tau by r, at most floor(target * t); q += 0.5 (fraction above tau,
 * mean over the KV heads - K / t).  Its recall is the active tokens' share of
 * fut, averaged over steps and heads. */
typedef struct skv_rlv_sel {
    uint32_t n_heads, n_steps;
    const uint64_t *t;      /* [n_steps] tokens visible at each step */
    const uint64_t *off;    /* [n_heads][n_steps] first row of (head, step) */
    const double *r;        /* rows: relevance of tokens 0..t-1 */
    const float *fut;       /* rows: their future attention mass */
} skv_rlv_sel;

#define SKV_RLV_BETA_SINKS 4u    /* as skv-eval -p atskv */
#define SKV_RLV_BETA_RECENT 32u

/* Recall of the selection with scale beta (see above). */
SKV_EXPORT double skv_rlv_sel_recall(const skv_rlv_sel *S, double target, double beta);
/* The fitted beta: the grid 2^(k/4), k = -8..8, value of the highest recall;
 * among values within 1e-9 of it the one nearest 1 (the smaller on a tie).
 * *recall (may be NULL) gets its recall.  Returns beta, or NaN when memory
 * runs out. */
SKV_EXPORT double skv_rlv_fit_beta(const skv_rlv_sel *S, double target, double *recall);

/* ---- logistic regression ---- */

typedef struct skv_logreg_opts {
    double l2;          /* lambda on the standardised weights (bias free), >= 0 */
    double tol;         /* stop when max |gradient| <= tol (objective: mean loss + l2/2 |w|^2) */
    uint32_t max_iter;
} skv_logreg_opts;

typedef struct skv_logreg_result {
    uint32_t iters;
    double grad_norm;   /* max |gradient| at the solution */
    double loss;        /* objective at the solution */
} skv_logreg_result;

/* Fit w (d weights) and *b on X (n x d, row major) and y (0/1): features
 * standardised internally (a constant column gets weight 0), weights
 * returned on the raw scale.  Returns 0, or <0 (SKV_ENOMEM, or SKV_ELIMIT
 * when it does not reach tol in max_iter: w, b then hold the last iterate). */
SKV_EXPORT int skv_logreg_fit(const double *X, const uint8_t *y, uint64_t n, uint32_t d,
                              const skv_logreg_opts *o, double *w, double *b,
                              skv_logreg_result *res);

/* Area under the ROC curve of scores against labels (ties count half);
 * NaN when one class is empty. */
SKV_EXPORT double skv_auc(const double *score, const uint8_t *y, uint64_t n);

/* ---- training and evaluation on traces ---- */

typedef struct skv_rlv_cfg {
    uint32_t horizon;       /* N: queries the label looks ahead */
    double label_q;         /* quantile of future mass for a positive label */
    uint32_t t0, stride;    /* sample steps t0, t0+stride, ... */
    uint32_t hidden_dims;   /* projection of h for the fit; 0 = no hidden-state term */
    uint64_t max_samples;   /* per layer, kept by a seeded draw */
    uint64_t max_tokens;    /* use at most the first N tokens of a trace */
    uint64_t seed;
    double beta_target;     /* active fraction at which beta_l is fitted; 0: beta_l = 1 */
    skv_logreg_opts fit;
} skv_rlv_cfg;

SKV_EXPORT void skv_rlv_defaults(skv_rlv_cfg *c);

/* Per-layer result of training or evaluation. */
typedef struct skv_rlv_eval {
    uint64_t n, pos;        /* samples, positives */
    double auc_ema, auc_nohid, auc_learned;  /* NaN where not computed */
    uint32_t iters;         /* Newton iterations of the fit (training) */
    double grad_norm;
    double beta, recall, recall1;  /* training: fitted beta_l, its recall and beta 1's */
} skv_rlv_eval;

/* Token classes of a vocabulary (NULL = all 0). */
typedef struct skv_rlv_vocab {
    uint32_t n;
    const uint8_t *cls;
} skv_rlv_vocab;

/* Train on the trace at path (with hidn chunks when hidden_dims > 0).
 * *out gets the model, *nohid (may be NULL) the same fit without the
 * hidden-state term (the ablation), ev[n_layers] (may be NULL) the training fit's
 * statistics (AUC on the training samples).  Returns 0 or <0. */
SKV_EXPORT int skv_rlv_train(const char *path, const skv_rlv_cfg *c, const skv_rlv_vocab *voc,
                             skv_rlv_model **out, skv_rlv_model **nohid, skv_rlv_eval **ev,
                             uint32_t *n_layers);
/* Held-out AUC per layer of the model, of the ablation without the hidden
 * state (nohid, may be NULL) and of the EMA score on a trace. */
SKV_EXPORT int skv_rlv_evaluate(const char *path, const skv_rlv_cfg *c, const skv_rlv_vocab *voc,
                                const skv_rlv_model *m, const skv_rlv_model *nohid,
                                skv_rlv_eval **ev, uint32_t *n_layers);

/* Relevance r in (0, 1) of every token of one trace layer once all its
 * n_tokens queries are folded in (the state an online cache reaches at the
 * trace's end), per KV head: out[kv * n_tokens + i].  tokens may be NULL (no
 * frequency feature), voc may be NULL; hidden [n_tokens][n_embd] is required
 * when the weights have a hidden-state term.  Returns 0 or <0. */
SKV_EXPORT int skv_rlv_layer_relevance(const skv_rlv_model *m, const skv_trace_hdr *h,
                                       const skv_layer *L, const int32_t *tokens,
                                       const skv_rlv_vocab *voc, const float *hidden,
                                       uint32_t n_embd, float *out);

#ifdef __cplusplus
}
#endif
#endif
