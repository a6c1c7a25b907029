/* smartkv_softmax.h -- online softmax and the exact merge of partial
 * attention states (flash-decoding style), shared by the CPU kernels and the
 * CUDA kernels.
 *
 * A partial state summarises attention of one query over some subset S of
 * the keys (a token range, a bucket, a part of a bucket):
 *   m   = max_{t in S} s_t                   (-INFINITY when S is empty)
 *   l   = sum_{t in S} exp(s_t - m)
 *   acc = sum_{t in S} exp(s_t - m) * v_t    (head_dim floats)
 * where s_t is the scaled score q.k_t / sqrt(head_dim).  Two states over
 * disjoint sets merge exactly into the state of their union:
 *   m = max(m_a, m_b), l = l_a e^(m_a-m) + l_b e^(m_b-m), acc likewise,
 * so the order in which partials are formed does not change the result
 * beyond rounding.  The output is acc / l (zero when l == 0: every key was
 * evicted or masked), and the probability of key t is exp(s_t - m) / l.
 *
 * Every function is static inline, usable from C, C++ and CUDA
 * (__host__ __device__ under nvcc).  Empty states (m == -INFINITY) are
 * handled without producing NaN.
 */
#ifndef SMARTKV_SOFTMAX_H
#define SMARTKV_SOFTMAX_H

#include <math.h>
#include <stdint.h>

#if defined(__CUDACC__)
#define SKV_SM_FN static inline __host__ __device__
#else
#define SKV_SM_FN static inline
#endif

/* The scalar part of a partial state; acc is kept by the caller. */
typedef struct skv_sm_state {
    float m;  /* running max of the scores (-INFINITY: empty) */
    float l;  /* running sum of exp(s - m) */
} skv_sm_state;

SKV_SM_FN void skv_sm_init(skv_sm_state *st, float *acc, uint32_t d)
{
    st->m = -INFINITY;
    st->l = 0.0f;
    for (uint32_t j = 0; j < d; j++)
        acc[j] = 0.0f;
}

/* e^(a - b) for a <= b where a may be -INFINITY (gives 0). */
SKV_SM_FN float skv_sm_rescale(float a, float b)
{
    return a == -INFINITY ? 0.0f : expf(a - b);
}

/* Add one key: score s (already scaled) and value row v[d]. */
SKV_SM_FN void skv_sm_push(skv_sm_state *st, float *acc, float s, const float *v, uint32_t d)
{
    if (s > st->m) {
        float c = skv_sm_rescale(st->m, s);
        st->m = s;
        st->l = st->l * c + 1.0f;
        for (uint32_t j = 0; j < d; j++)
            acc[j] = acc[j] * c + v[j];
    } else {
        float p = expf(s - st->m);
        st->l += p;
        for (uint32_t j = 0; j < d; j++)
            acc[j] += p * v[j];
    }
}

/* Begin a block whose largest score is bmax: raise the running max if
 * needed and rescale l and acc.  Returns the max to subtract from the
 * block's scores (p = exp(s - m)); the caller then adds sum(p) to st->l and
 * sum(p * v) to acc.  An all -INFINITY block leaves the state alone. */
SKV_SM_FN float skv_sm_block_begin(skv_sm_state *st, float *acc, float bmax, uint32_t d)
{
    if (bmax > st->m) {
        float c = skv_sm_rescale(st->m, bmax);
        st->m = bmax;
        st->l *= c;
        for (uint32_t j = 0; j < d; j++)
            acc[j] *= c;
    }
    return st->m;
}

/* Merge state b (acc_b) into a (acc_a): exact union of disjoint key sets. */
SKV_SM_FN void skv_sm_merge(skv_sm_state *a, float *acc_a, const skv_sm_state *b,
                            const float *acc_b, uint32_t d)
{
    if (b->m == -INFINITY)
        return;
    if (a->m == -INFINITY) {
        *a = *b;
        for (uint32_t j = 0; j < d; j++)
            acc_a[j] = acc_b[j];
        return;
    }
    float m = a->m > b->m ? a->m : b->m;
    float ca = expf(a->m - m), cb = expf(b->m - m);
    a->m = m;
    a->l = a->l * ca + b->l * cb;
    for (uint32_t j = 0; j < d; j++)
        acc_a[j] = acc_a[j] * ca + acc_b[j] * cb;
}

/* out = acc / l (zeros for an empty state). */
SKV_SM_FN void skv_sm_finish(const skv_sm_state *st, const float *acc, float *out, uint32_t d)
{
    float inv = st->l > 0.0f ? 1.0f / st->l : 0.0f;
    for (uint32_t j = 0; j < d; j++)
        out[j] = acc[j] * inv;
}

/* Probability of a key with score s under the final state. */
SKV_SM_FN float skv_sm_prob(const skv_sm_state *st, float s)
{
    return st->l > 0.0f && s != -INFINITY ? expf(s - st->m) / st->l : 0.0f;
}

#endif
