/* kentropy.c -- matrix entropy of a head's keys (UNComp's uncertainty
 * measure): with every key row normalised to unit length,
 *   S = (1/n) sum_i k_i k_i^T   (d x d, trace 1)
 *   H = - sum_j l_j ln l_j      over the eigenvalues l_j of S
 * 0 when every key points one way, ln d when they fill the space evenly.
 * S is kept as its upper triangle in float32 (d(d+1)/2 numbers) and a
 * count: the state an online cache pays per (layer, KV head).
 * The eigenvalues come from cyclic Jacobi rotations in float64. */
#include "smartkv_alloc.h"
#include "smartkv_error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* index of (a, b), a <= b, in the upper triangle stored row by row */
static size_t tri(uint32_t d, uint32_t a, uint32_t b)
{
    return (size_t)a * d - (size_t)a * (a - 1) / 2 + (b - a);
}

void skv_gram_add(float *g, uint64_t *count, uint32_t d, const float *k, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) {
        const float *x = k + i * d;
        double s = 0;
        for (uint32_t a = 0; a < d; a++)
            s += (double)x[a] * x[a];
        if (!(s > 0) || !isfinite(s))
            continue; /* a zero row has no direction */
        double inv = 1.0 / s;
        for (uint32_t a = 0; a < d; a++) {
            float *row = g + tri(d, a, a);
            double xa = (double)x[a] * inv;
            for (uint32_t b = a; b < d; b++)
                row[b - a] += (float)(xa * x[b]);
        }
        (*count)++;
    }
}

int skv_matrix_entropy(const float *g, uint64_t count, uint32_t d, double *h)
{
    *h = 0;
    if (!count)
        return 0;
    double n = (double)count;
    double *a = skv_malloc((size_t)d * d * sizeof(double));
    if (!a)
        return SKV_ENOMEM;
    for (uint32_t i = 0; i < d; i++)
        for (uint32_t j = i; j < d; j++)
            a[(size_t)i * d + j] = a[(size_t)j * d + i] = g[tri(d, i, j)] / n;
    for (int sweep = 0; sweep < 100; sweep++) {
        double off = 0, diag = 0;
        for (uint32_t i = 0; i < d; i++) {
            diag += a[(size_t)i * d + i] * a[(size_t)i * d + i];
            for (uint32_t j = i + 1; j < d; j++)
                off += a[(size_t)i * d + j] * a[(size_t)i * d + j];
        }
        if (off <= 1e-24 * diag || off == 0)
            break;
        for (uint32_t p = 0; p + 1 < d; p++)
            for (uint32_t q = p + 1; q < d; q++) {
                double apq = a[(size_t)p * d + q];
                if (apq == 0)
                    continue;
                double app = a[(size_t)p * d + p], aqq = a[(size_t)q * d + q];
                double th = (aqq - app) / (2 * apq);
                double t = (th >= 0 ? 1 : -1) / (fabs(th) + sqrt(th * th + 1));
                double c = 1 / sqrt(t * t + 1), s = t * c;
                for (uint32_t k = 0; k < d; k++) { /* columns p, q */
                    double akp = a[(size_t)k * d + p], akq = a[(size_t)k * d + q];
                    a[(size_t)k * d + p] = c * akp - s * akq;
                    a[(size_t)k * d + q] = s * akp + c * akq;
                }
                for (uint32_t k = 0; k < d; k++) { /* rows p, q */
                    double apk = a[(size_t)p * d + k], aqk = a[(size_t)q * d + k];
                    a[(size_t)p * d + k] = c * apk - s * aqk;
                    a[(size_t)q * d + k] = s * apk + c * aqk;
                }
            }
    }
    double tr = 0, e = 0;
    for (uint32_t i = 0; i < d; i++)
        tr += fmax(0.0, a[(size_t)i * d + i]);
    for (uint32_t i = 0; i < d && tr > 0; i++) {
        double l = fmax(0.0, a[(size_t)i * d + i]) / tr;
        if (l > 0)
            e -= l * log(l);
    }
    free(a);
    *h = e;
    return 0;
}
