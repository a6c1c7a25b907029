/* ecquant.h -- private to lib/eval: the grouped layout's quantizer loops
 * (ecgroup.c) and the importance tracking (eccommon.h), a scalar
 * reference and an AVX2 copy of each, bit-identical (the tests compare
 * them).  The reallocation requantizes rows (with imp-mse every held row at
 * each width below its own, to predict the damage), so these loops are much
 * of its time.
 *
 * A code is round((x - z) / s) (round to nearest even, as nearbyintf)
 * clamped to [0, qmax], or 0 where !(s > 0); the stored value is
 * z + code * s.  y may equal x. */
#ifndef SKV_EVAL_ECQUANT_H
#define SKV_EVAL_ECQUANT_H

#include <stddef.h>
#include <stdint.h>

/* Minimum and maximum of x[0..n), n >= 1 (the order of the scalar loop
 * a = v < a ? v : a, so signed zeros and NaN come out the same). */
void skv_ecq_minmax(const float *x, uint32_t n, float *mn, float *mx);
void skv_ecq_minmax_ref(const float *x, uint32_t n, float *mn, float *mx);

/* Per column c of the rows x[m][d] (m >= 1): mn[c], mx[c]. */
void skv_ecq_minmax_cols(const float *x, uint32_t m, uint32_t d, float *mn, float *mx);
void skv_ecq_minmax_cols_ref(const float *x, uint32_t m, uint32_t d, float *mn, float *mx);

/* A span x[0..n) with one zero point z and scale s. */
void skv_ecq_quant(const float *x, float *y, uint32_t n, float z, float s, float qmax);
void skv_ecq_quant_ref(const float *x, float *y, uint32_t n, float z, float s, float qmax);

/* Rows x[m][d], column c with z[c], s[c]. */
void skv_ecq_quant_cols(const float *x, float *y, uint32_t m, uint32_t d, const float *z,
                        const float *s, float qmax);
void skv_ecq_quant_cols_ref(const float *x, float *y, uint32_t m, uint32_t d, const float *z,
                            const float *s, float qmax);

/* The squared error x[i * stride], i < n, is left with when coded with z
 * and s as skv_ecq_quant codes it (clip's search): eight float partial
 * sums by i % 8, in order, then ((0 + 1) + (2 + 3)) + ((4 + 5) + (6 + 7)).
 * The AVX2 copy runs where stride is 1. */
float skv_ecq_err(const float *x, uint32_t n, size_t stride, float z, float s, float qmax);
float skv_ecq_err_ref(const float *x, uint32_t n, size_t stride, float z, float s, float qmax);

/* Per column c of the rows x[m][d]: err[c] = the sum over the rows, in
 * order, of the squared error with z[c] and s[c] (as skv_ecq_quant_cols
 * codes it). */
void skv_ecq_err_cols(const float *x, uint32_t m, uint32_t d, const float *z, const float *s,
                      float qmax, float *err);
void skv_ecq_err_cols_ref(const float *x, uint32_t m, uint32_t d, const float *z, const float *s,
                          float qmax, float *err);

/* out[i] = the sum over j < d of ((double)a[i][j] - b[i][j])^2, for n
 * pairs of rows (the damage model's squared errors): four partial sums by
 * j % 4, in order, then (s0 + s1) + (s2 + s3), the order of the AVX2
 * copy's four lanes. */
void skv_ecq_sqerr(const float *const *a, const float *const *b, uint32_t n, uint32_t d,
                   double *out);
void skv_ecq_sqerr_ref(const float *const *a, const float *const *b, uint32_t n, uint32_t d,
                       double *out);

/* out[c] += x[t][c] / (float)T for t = 0 .. T-1 in order (the mean of
 * the rows x[T][d] when out starts at 0). */
void skv_ecq_colmean(const float *x, uint64_t T, uint32_t d, float *out);
void skv_ecq_colmean_ref(const float *x, uint64_t T, uint32_t d, float *out);

/* Importance tracking, one attention row p[0..m) into I[0..m): mode 1
 * I = g I + (1 - g) p, mode 2 the same with p^2 ((1 - g) p p), mode 0
 * I += p.  (In every decode step of every head: unvectorized, it was 2% of
 * the decode time.) */
void skv_ecq_track(float *I, const float *p, uint64_t m, float g, int mode);
void skv_ecq_track_ref(float *I, const float *p, uint64_t m, float g, int mode);

/* Importance as the grouped cache holds it, folded per KV head: for token
 * t < n, the mean over g < G of I[g * stride + t] (summed as doubles in
 * order, divided by G), to one byte: a log2 in steps of 1/16 from 2^-15.9
 * to 1 (steps8: 1/8 from 2^-31.8), 0 below, i.e. within 2.2% (4.4%) of
 * the mean (exp2((c - 255) / steps) for its code c), into w[t].  (Every
 * token of every KV head at each reallocation.) */
void skv_ecq_imp_fold(const float *I, size_t stride, uint32_t G, uint64_t n, int steps8,
                      double *w);
void skv_ecq_imp_fold_ref(const float *I, size_t stride, uint32_t G, uint64_t n, int steps8,
                          double *w);

/* 1 if the AVX2 copies run on this CPU and build (0 forces the references:
 * skv_quant_set_simd's switch, SKV_NO_SIMD). */
int skv_ecq_simd(void);

#endif
