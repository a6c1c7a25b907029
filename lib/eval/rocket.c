/* rocket.c -- RocketKV's stage 2 (Behnam et al. 2025), hybrid sparse
 * attention: which of the held tokens one decode query attends to.  The
 * candidates are cut into pages of `page` consecutive tokens; each page
 * keeps the element-wise min and max of its keys (fp16, the auxiliary state
 * counted in the cache's bytes).  The query's `topr` dimensions of largest
 * |q_i| score a page by sum_i q_i * (q_i > 0 ? max_i : min_i), an upper
 * bound on q.k over those dimensions; the tokens of the best pages are
 * taken (pages in descending score, ties: the newer page; within the last
 * page the newer tokens) until topk.  As in NVIDIA's reference
 * (TensorRT-LLM rocket.py) the selection is token-level top-k over page
 * scores; the reference ranks per KV head by the mean over its query heads,
 * here each query head ranks with its own query. */
#include "smartkv_evalcache.h"
#include "smartkv_error.h"
#include "smartkv_quant.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct pg {
    double s;
    uint64_t p;
} pg;

static int pg_desc(const void *a, const void *b)
{
    const pg *x = a, *y = b;
    if (x->s != y->s)
        return x->s > y->s ? -1 : 1;
    return x->p > y->p ? -1 : x->p < y->p; /* ties: newer page first */
}

static int dim_desc(const void *a, const void *b, const float *q)
{
    uint32_t i = *(const uint32_t *)a, j = *(const uint32_t *)b;
    float x = fabsf(q[i]), y = fabsf(q[j]);
    if (x != y)
        return x > y ? -1 : 1;
    return (i > j) - (i < j);
}

uint64_t skv_rocket_select(const float *q, uint32_t d, const float *const *rows, uint64_t m,
                           uint64_t topk, uint32_t topr, uint32_t page, uint64_t *sel,
                           void *work)
{
    if (topk >= m) {
        for (uint64_t j = 0; j < m; j++)
            sel[j] = j;
        return m;
    }
    if (topr > d)
        topr = d;
    uint32_t *dims = work;
    pg *pages = (pg *)((char *)work + SKV_ROCKET_DIMS_BYTES(d));
    /* the topr largest |q_i| (insertion sort: d is small) */
    for (uint32_t i = 0; i < d; i++) {
        uint32_t j = i;
        dims[i] = i;
        while (j > 0 && dim_desc(&dims[j], &dims[j - 1], q) < 0) {
            uint32_t t = dims[j];
            dims[j] = dims[j - 1];
            dims[j - 1] = t;
            j--;
        }
    }
    uint64_t np = (m + page - 1) / page;
    for (uint64_t p = 0; p < np; p++) {
        uint64_t a = p * page, b = a + page < m ? a + page : m;
        double s = 0;
        for (uint32_t r = 0; r < topr; r++) {
            uint32_t i = dims[r];
            float bound = rows[a][i];
            for (uint64_t j = a + 1; j < b; j++)
                bound = q[i] > 0 ? fmaxf(bound, rows[j][i]) : fminf(bound, rows[j][i]);
            /* the bounds are kept in fp16 */
            s += (double)q[i] * skv_f16_to_f32(skv_f32_to_f16(bound));
        }
        pages[p] = (pg){s, p};
    }
    qsort(pages, np, sizeof *pages, pg_desc);
    uint64_t n = 0;
    for (uint64_t r = 0; r < np && n < topk; r++) {
        uint64_t a = pages[r].p * page, b = a + page < m ? a + page : m;
        for (uint64_t j = b; j-- > a && n < topk;)
            sel[n++] = j;
    }
    /* ascending */
    for (uint64_t i = 1; i < n; i++)
        for (uint64_t j = i; j > 0 && sel[j] < sel[j - 1]; j--) {
            uint64_t t = sel[j];
            sel[j] = sel[j - 1];
            sel[j - 1] = t;
        }
    return n;
}
