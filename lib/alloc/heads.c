/* heads.c -- per-head scores in a text file (RazorAttention's induction and
 * echo scores, skv-trace heads) and the retrieval heads they select.
 *
 * The file, one record per line, '#' lines ignored:
 *   layers L heads H
 *   then L * H lines "layer head induction echo", layers ascending, heads
 *   ascending within a layer, scores finite and in [0, 1]. */
#include "smartkv_alloc.h"
#include "smartkv_error.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void skv_head_scores_free(skv_head_scores *hs)
{
    free(hs->induction);
    free(hs->echo);
    memset(hs, 0, sizeof *hs);
}

/* an unsigned number at *p (after blanks), *p moved past it; -1 if none */
static int num_u(const char **p, unsigned *v)
{
    char *end;
    *p += strspn(*p, " \t");
    if (**p < '0' || **p > '9')
        return -1;
    unsigned long x = strtoul(*p, &end, 10);
    if (x > 4096u * 4096u)
        return -1;
    *v = (unsigned)x;
    *p = end;
    return 0;
}

static int num_d(const char **p, double *v)
{
    char *end;
    *v = strtod(*p, &end);
    if (end == *p)
        return -1;
    *p = end;
    return 0;
}

/* *p (after blanks) starts with word; moved past it */
static int word(const char **p, const char *w)
{
    *p += strspn(*p, " \t");
    size_t n = strlen(w);
    if (strncmp(*p, w, n) != 0)
        return -1;
    *p += n;
    return 0;
}

/* only blanks (and the newline) left */
static int at_end(const char *p)
{
    return p[strspn(p, " \t\r\n")] == '\0';
}

/* next line that is not a comment or blank; 0 at the end */
static int next_line(FILE *f, char *buf, size_t n, unsigned *line)
{
    while (fgets(buf, (int)n, f)) {
        (*line)++;
        const char *p = buf + strspn(buf, " \t");
        if (*p != '#' && *p != '\n' && *p != '\r' && *p)
            return 1;
    }
    return 0;
}

int skv_head_scores_read(const char *path, skv_head_scores *hs)
{
    memset(hs, 0, sizeof *hs);
    FILE *f = fopen(path, "r");
    if (!f)
        return skv_error(SKV_EIO, "%s: cannot open", path);
    char buf[256];
    unsigned line = 0, L = 0, H = 0;
    int rc = SKV_EFORMAT;
    const char *p0 = buf;
    if (!next_line(f, buf, sizeof buf, &line) || word(&p0, "layers") || num_u(&p0, &L) ||
        word(&p0, "heads") || num_u(&p0, &H) || !at_end(p0) ||
        L == 0 || H == 0 || L > 4096 || H > 4096) {
        rc = skv_error(SKV_EFORMAT, "%s: line %u: expected 'layers L heads H' (1 to 4096 each)",
                       path, line);
        goto out;
    }
    hs->n_layers = L;
    hs->n_heads = H;
    hs->induction = skv_calloc((size_t)L * H, sizeof(float));
    hs->echo = skv_calloc((size_t)L * H, sizeof(float));
    if (!hs->induction || !hs->echo) {
        rc = SKV_ENOMEM;
        goto out;
    }
    for (size_t r = 0; r < (size_t)L * H; r++) {
        unsigned l, h;
        double a, b;
        if (!next_line(f, buf, sizeof buf, &line)) {
            rc = skv_error(SKV_EFORMAT, "%s: ends after %zu of %zu heads", path, r,
                           (size_t)L * H);
            goto out;
        }
        const char *q = buf;
        if (num_u(&q, &l) || num_u(&q, &h) || num_d(&q, &a) || num_d(&q, &b) || !at_end(q) ||
            l != r / H || h != r % H || !(a >= 0 && a <= 1) || !(b >= 0 && b <= 1)) {
            rc = skv_error(SKV_EFORMAT, "%s: line %u: expected '%zu %zu INDUCTION ECHO' with "
                           "scores in [0, 1]", path, line, r / H, r % H);
            goto out;
        }
        hs->induction[r] = (float)a;
        hs->echo[r] = (float)b;
    }
    if (next_line(f, buf, sizeof buf, &line)) {
        rc = skv_error(SKV_EFORMAT, "%s: line %u: more than %u x %u heads", path, line, L, H);
        goto out;
    }
    if (ferror(f)) {
        rc = skv_error(SKV_EIO, "%s: read error", path);
        goto out;
    }
    rc = 0;
out:
    fclose(f);
    if (rc < 0)
        skv_head_scores_free(hs);
    return rc;
}

int skv_head_scores_write(FILE *f, const skv_head_scores *hs)
{
    fprintf(f, "layers %u heads %u\n", hs->n_layers, hs->n_heads);
    for (size_t r = 0; r < (size_t)hs->n_layers * hs->n_heads; r++)
        fprintf(f, "%zu %zu %.6f %.6f\n", r / hs->n_heads, r % hs->n_heads,
                (double)hs->induction[r], (double)hs->echo[r]);
    return ferror(f) ? skv_error(SKV_EIO, "write error") : 0;
}

typedef struct hrank {
    float v;
    uint32_t r;
} hrank;

static int hrank_desc(const void *a, const void *b)
{
    const hrank *x = a, *y = b;
    if (x->v != y->v)
        return x->v > y->v ? -1 : 1;
    return (x->r > y->r) - (x->r < y->r);
}

/* mark the top ceil(frac * n) heads of score s (score > 0 only) */
static void mark_top(const float *s, size_t n, double frac, hrank *r, uint8_t *q)
{
    for (size_t i = 0; i < n; i++)
        r[i] = (hrank){s[i], (uint32_t)i};
    qsort(r, n, sizeof *r, hrank_desc);
    size_t k = (size_t)ceil(frac * (double)n - 1e-9);
    for (size_t i = 0; i < k && i < n && r[i].v > 0; i++)
        q[r[i].r] = 1;
}

int skv_razor_mask(const skv_head_scores *hs, uint32_t n_layers, uint32_t n_kv_heads,
                   uint8_t *mask)
{
    if (!hs || hs->n_layers != n_layers || !n_kv_heads || hs->n_heads % n_kv_heads)
        return skv_error(SKV_EINVAL, "razor: head scores for %u layers x %u heads do not fit "
                         "%u layers x %u KV heads", hs ? hs->n_layers : 0, hs ? hs->n_heads : 0,
                         n_layers, n_kv_heads);
    size_t n = (size_t)n_layers * hs->n_heads;
    hrank *r = skv_malloc(n * sizeof *r);
    uint8_t *q = skv_calloc(n, 1);
    if (!r || !q) {
        free(r);
        free(q);
        return SKV_ENOMEM;
    }
    mark_top(hs->induction, n, SKV_RAZOR_INDUCTION, r, q);
    mark_top(hs->echo, n, SKV_RAZOR_ECHO, r, q);
    const uint32_t G = hs->n_heads / n_kv_heads;
    memset(mask, 0, (size_t)n_layers * n_kv_heads);
    for (size_t i = 0; i < n; i++)
        if (q[i]) /* a KV head serves a retrieval query head: it keeps everything */
            mask[(i / hs->n_heads) * n_kv_heads + (i % hs->n_heads) / G] = 1;
    free(r);
    free(q);
    return 0;
}
