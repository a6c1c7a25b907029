/* pack.c -- bucket layout arithmetic (the byte model shared by skv-alloc and
 * skv-quant). */
#include "smartkv_pack.h"
#include "smartkv_quant.h"

#include <stdlib.h>
#include <string.h>

uint64_t skv_pbkt_max_tokens(const skv_qcfg *c, uint32_t bits)
{
    /* payload grows by at most per-token bytes plus 5 sections' padding */
    /* (with CHAN the per-token tail block bounds the per-group share) */
    uint64_t per = 4 + skv_par_bytes(bits, c->head_dim, c->k_group, c->k_mode) +
                   skv_par_bytes(bits, c->head_dim, c->v_group, c->v_mode) +
                   2 * skv_row_bytes(bits, c->head_dim);
    uint64_t n = (SKV_CHUNK_MAX - SKV_PBKT_HEADER_LEN - (uint64_t)5 * SKV_ALIGN) / per;
    while (n > 1 && skv_pbkt_payload_bytes(c, bits, n) > SKV_CHUNK_MAX)
        n--;
    /* the estimate may be low by a few tokens: take the most that fit */
    while (skv_pbkt_payload_bytes(c, bits, n + 1) <= SKV_CHUNK_MAX)
        n++;
    /* keys per channel: every part but the last holds whole key groups */
    if (c->k_mode == SKV_QMODE_CHAN && bits != 16 && c->k_tokens && n >= c->k_tokens)
        n -= n % c->k_tokens;
    return n;
}

uint64_t skv_bucket_file_bytes(const skv_qcfg *c, uint32_t bits, uint64_t n)
{
    if (n == 0 || bits == 0)
        return 0;
    const uint64_t framing = SKV_CHUNK_HEADER_LEN + SKV_CHUNK_CRC_LEN;
    uint64_t max = skv_pbkt_max_tokens(c, bits);
    uint64_t full = n / max, rest = n % max;
    uint64_t bytes = full * (framing + skv_pbkt_payload_bytes(c, bits, max));
    if (rest)
        bytes += framing + skv_pbkt_payload_bytes(c, bits, rest);
    return bytes;
}

uint64_t skv_pkhd_file_bytes(void)
{
    return SKV_CHUNK_HEADER_LEN + SKV_PKHD_LEN + SKV_CHUNK_CRC_LEN;
}

/* ---- PBKT payloads ---- */

typedef struct {
    uint64_t idx, k_par, k_dat, v_par, v_dat, end;
} pbkt_layout;

/* extra: bytes of a section between the header and idx (CNTR's counts) */
static void layout(const skv_qcfg *c, uint32_t bits, uint64_t n, uint64_t extra, pbkt_layout *L)
{
    uint64_t rb = skv_row_bytes(bits, c->head_dim);
    L->idx = SKV_PBKT_HEADER_LEN + extra;
    L->k_par = L->idx + skv_align64(4 * n);
    L->k_dat = L->k_par + skv_align64(skv_kpar_bytes(c, bits, n));
    L->v_par = L->k_dat + skv_align64(n * rb);
    L->v_dat = L->v_par + skv_align64(n * skv_par_bytes(bits, c->head_dim, c->v_group, c->v_mode));
    L->end = L->v_dat + skv_align64(n * rb);
}

int skv_pbkt_encode(uint8_t *out, uint64_t size, const skv_qcfg *c, uint32_t layer,
                    uint32_t kv_head, uint32_t bits, uint32_t part, const uint32_t *idx,
                    uint32_t n, const float *k, const float *v)
{
    int rc = skv_qcfg_check(c);
    if (rc < 0)
        return rc;
    if (!skv_bits_valid(bits) || n == 0 || n > skv_pbkt_max_tokens(c, bits))
        return skv_error(SKV_EINVAL, "PBKT: bad width %u or token count %u", bits, n);
    pbkt_layout L;
    layout(c, bits, n, 0, &L);
    if (size != L.end || L.end != skv_pbkt_payload_bytes(c, bits, n))
        return skv_error(SKV_EINVAL, "PBKT: buffer of %llu bytes, payload needs %llu",
                         (unsigned long long)size, (unsigned long long)L.end);
    memset(out, 0, (size_t)size);
    skv_put32(out, layer);
    skv_put32(out + 4, kv_head);
    skv_put32(out + 8, bits);
    skv_put32(out + 12, n);
    skv_put32(out + 16, c->head_dim);
    skv_put32(out + 20, c->k_group);
    skv_put32(out + 24, c->v_group);
    skv_put32(out + 28, c->k_mode);
    skv_put32(out + 32, c->v_mode);
    skv_put32(out + 36, part);
    skv_put32(out + 40, c->k_tokens);
    skv_put32(out + 44, c->rotate);
    skv_put64(out + 48, c->rot_seed);
    const uint32_t d = c->head_dim;
    const uint64_t rb = skv_row_bytes(bits, d);
    const uint64_t kpb = skv_par_bytes(bits, d, c->k_group, c->k_mode);
    const uint64_t vpb = skv_par_bytes(bits, d, c->v_group, c->v_mode);
    /* keys per channel: rows [0, full) in groups, the rest per token (asym) */
    const int chan = c->k_mode == SKV_QMODE_CHAN && bits != 16;
    const uint32_t kt = c->k_tokens, full = chan ? n / kt * kt : 0;
    const uint64_t tail_par = chan ? (uint64_t)(full / kt) * 4 * d : 0;
    float *grp = NULL;
    if (chan && full) {
        grp = skv_malloc((size_t)kt * d * sizeof *grp);
        if (!grp)
            return SKV_ENOMEM;
    }
    for (uint32_t i = 0; i < n; i++) {
        if (i && idx[i] <= idx[i - 1]) {
            free(grp);
            return skv_error(SKV_EINVAL, "PBKT: token indices not ascending at %u", i);
        }
    }
    for (uint32_t g = 0; g < full / (kt ? kt : 1); g++) {
        for (uint32_t r = 0; r < kt; r++)
            memcpy(grp + (size_t)r * d, k + (size_t)idx[g * kt + r] * d, d * sizeof *grp);
        if ((rc = skv_quantize_chan_ref(grp, d, kt, d, bits, out + L.k_par + (uint64_t)g * 4 * d,
                                        out + L.k_dat + (uint64_t)g * kt * rb)) < 0) {
            free(grp);
            return skv_error(rc, "K of layer %u kv head %u tokens %u..%u: %s", layer, kv_head,
                             idx[g * kt], idx[g * kt + kt - 1], skv_errmsg());
        }
    }
    free(grp);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t t = idx[i];
        skv_put32(out + L.idx + 4 * (uint64_t)i, t);
        const float *kr = k + (size_t)t * d, *vr = v + (size_t)t * d;
        if (i >= full &&
            (rc = skv_quantize_row(kr, d, bits, c->k_group, chan ? SKV_QMODE_ASYM : c->k_mode,
                                   out + L.k_par + tail_par + (i - full) * kpb,
                                   out + L.k_dat + i * rb)) < 0)
            return skv_error(rc, "K of layer %u kv head %u token %u: %s", layer, kv_head, t,
                             skv_errmsg());
        if ((rc = skv_quantize_row(vr, d, bits, c->v_group, c->v_mode, out + L.v_par + i * vpb,
                                   out + L.v_dat + i * rb)) < 0)
            return skv_error(rc, "V of layer %u kv head %u token %u: %s", layer, kv_head, t,
                             skv_errmsg());
    }
    return 0;
}

static int all_zero(const uint8_t *p, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

/* PBKT (cntr 0) or CNTR (cntr 1) payload: the common checks. */
static int bucket_decode(const uint8_t *p, uint64_t size, uint64_t n_tokens, skv_bucket *b,
                         int cntr)
{
    const char *what = cntr ? "CNTR" : "PBKT";
    if ((uintptr_t)p & 3)
        return skv_error(SKV_EINVAL, "%s payload not 4-byte aligned in memory", what);
    if (size < SKV_PBKT_HEADER_LEN)
        return skv_error(SKV_EFORMAT, "%s payload too short (%llu bytes)", what,
                         (unsigned long long)size);
    memset(b, 0, sizeof *b);
    b->layer = skv_get32(p);
    b->kv_head = skv_get32(p + 4);
    b->bits = skv_get32(p + 8);
    b->n = skv_get32(p + 12);
    b->head_dim = skv_get32(p + 16);
    b->k_group = skv_get32(p + 20);
    b->v_group = skv_get32(p + 24);
    b->k_mode = skv_get32(p + 28);
    b->v_mode = skv_get32(p + 32);
    b->part = skv_get32(p + 36);
    b->k_tokens = skv_get32(p + 40);
    b->rotate = skv_get32(p + 44);     /* reserved (zero) before format 1.3 */
    b->rot_seed = skv_get64(p + 48);
    if (!all_zero(p + 56, 8))
        return skv_error(SKV_EFORMAT, "%s layer %u kv head %u: reserved header bytes "
                         "are not zero", what, b->layer, b->kv_head);
    if (cntr && b->k_tokens)
        return skv_error(SKV_EFORMAT, "CNTR layer %u kv head %u: k_tokens %u (centroids hold "
                         "keys per token)", b->layer, b->kv_head, b->k_tokens);
    if (cntr && (b->rotate || b->rot_seed))
        return skv_error(SKV_EFORMAT, "CNTR layer %u kv head %u: rotation %u seed %llu "
                         "(centroids are not rotated: both zero)", b->layer, b->kv_head,
                         b->rotate, (unsigned long long)b->rot_seed);
    skv_qcfg c = {.head_dim = b->head_dim, .k_group = b->k_group, .v_group = b->v_group,
                  .k_mode = b->k_mode, .v_mode = b->v_mode, .k_tokens = b->k_tokens,
                  .rotate = b->rotate, .rot_seed = b->rot_seed};
    int rc = skv_qcfg_check(&c);
    if (rc < 0)
        return skv_error(SKV_EFORMAT, "%s layer %u kv head %u: %s", what, b->layer, b->kv_head,
                         skv_errmsg());
    if (cntr && b->part != 0)
        return skv_error(SKV_EFORMAT, "CNTR layer %u kv head %u: part is %u, not 0", b->layer,
                         b->kv_head, b->part);
    if (!skv_bits_valid(b->bits))
        return skv_error(SKV_EFORMAT, "%s layer %u kv head %u: bad width %u (not 2, 3, 4, "
                         "8 or 16)", what, b->layer, b->kv_head, b->bits);
    uint64_t max = cntr ? SKV_CNTR_MAX : skv_pbkt_max_tokens(&c, b->bits);
    if (b->n == 0 || b->n > max || b->n > n_tokens)
        return skv_error(SKV_EFORMAT, "%s layer %u kv head %u %u-bit: token count %u "
                         "outside 1..%llu", what, b->layer, b->kv_head, b->bits, b->n,
                         (unsigned long long)(max < n_tokens ? max : n_tokens));
    pbkt_layout L;
    layout(&c, b->bits, b->n, cntr ? skv_align64(4ull * b->n) : 0, &L);
    if (size != L.end)
        return skv_error(SKV_EFORMAT, "%s layer %u kv head %u %u-bit: payload is %llu "
                         "bytes, %u tokens need %llu", what, b->layer, b->kv_head, b->bits,
                         (unsigned long long)size, b->n, (unsigned long long)L.end);
    const uint32_t d = b->head_dim;
    const uint64_t rb = skv_row_bytes(b->bits, d);
    const uint64_t kpb = skv_par_bytes(b->bits, d, b->k_group, b->k_mode);
    const uint64_t vpb = skv_par_bytes(b->bits, d, b->v_group, b->v_mode);
    /* padding after each section must be zero (one canonical encoding) */
    const uint64_t used[5][2] = {{L.idx, 4ull * b->n}, {L.k_par, skv_kpar_bytes(&c, b->bits, b->n)},
                                 {L.k_dat, b->n * rb}, {L.v_par, b->n * vpb},
                                 {L.v_dat, b->n * rb}};
    const uint64_t next[5] = {L.k_par, L.k_dat, L.v_par, L.v_dat, L.end};
    for (int s = 0; s < 5; s++)
        if (!all_zero(p + used[s][0] + used[s][1], next[s] - used[s][0] - used[s][1]))
            return skv_error(SKV_EFORMAT, "%s layer %u kv head %u %u-bit: padding bytes "
                             "are not zero", what, b->layer, b->kv_head, b->bits);
    if (cntr && !all_zero(p + SKV_PBKT_HEADER_LEN + 4ull * b->n,
                          skv_align64(4ull * b->n) - 4ull * b->n))
        return skv_error(SKV_EFORMAT, "CNTR layer %u kv head %u: padding bytes are not zero",
                         b->layer, b->kv_head);
    b->idx = (const uint32_t *)(const void *)(p + L.idx);
    uint64_t prev = 0;
    for (uint32_t i = 0; i < b->n; i++) {
        uint32_t t = skv_get32(p + L.idx + 4 * (uint64_t)i);
        if (t >= n_tokens || (i && t <= prev))
            return skv_error(SKV_EFORMAT, "%s layer %u kv head %u %u-bit: token index %u "
                             "at position %u is %s", what, b->layer, b->kv_head, b->bits, t, i,
                             t >= n_tokens ? "out of range" : "not ascending");
        prev = t;
    }
    if (c.k_mode == SKV_QMODE_CHAN && b->bits != 16) {
        b->k_full = b->n / b->k_tokens * b->k_tokens;
        b->k_tail_par = p + L.k_par + (uint64_t)(b->k_full / b->k_tokens) * 4 * d;
    }
    b->k_par_stride = (uint32_t)kpb;
    b->v_par_stride = (uint32_t)vpb;
    b->row_stride = (uint32_t)rb;
    b->k_par = p + L.k_par;
    b->k_dat = p + L.k_dat;
    b->v_par = p + L.v_par;
    b->v_dat = p + L.v_dat;
    b->payload = p;
    b->payload_bytes = size;
    return 0;
}

int skv_pbkt_decode(const uint8_t *p, uint64_t size, uint64_t n_tokens, skv_bucket *b)
{
    return bucket_decode(p, size, n_tokens, b, 0);
}

int skv_cntr_decode(const uint8_t *p, uint64_t size, uint64_t n_tokens, skv_bucket *b,
                    const uint32_t **cnt)
{
    int rc = bucket_decode(p, size, n_tokens, b, 1);
    if (rc < 0)
        return rc;
    uint64_t sum = 0;
    for (uint32_t i = 0; i < b->n; i++) {
        uint32_t m = skv_get32(p + SKV_PBKT_HEADER_LEN + 4ull * i);
        sum += m;
        if (m == 0 || sum > n_tokens)
            return skv_error(SKV_EFORMAT, "CNTR layer %u kv head %u: centroid %u %s", b->layer,
                             b->kv_head, i, m == 0 ? "has no members"
                                                   : "brings the member count above n_tokens");
    }
    *cnt = (const uint32_t *)(const void *)(p + SKV_PBKT_HEADER_LEN);
    return 0;
}

uint64_t skv_cntr_file_bytes(const skv_qcfg *c, uint32_t bits, uint64_t n)
{
    if (n == 0)
        return 0;
    return SKV_CHUNK_HEADER_LEN + skv_cntr_payload_bytes(c, bits, n) + SKV_CHUNK_CRC_LEN;
}

int skv_cntr_encode(uint8_t *out, uint64_t size, const skv_qcfg *c, uint32_t layer,
                    uint32_t kv_head, uint32_t bits, uint32_t n, const uint32_t *cnt,
                    const uint32_t *last, const float *ck, const float *cv)
{
    if (n == 0 || n > SKV_CNTR_MAX)
        return skv_error(SKV_EINVAL, "CNTR: %u centroids outside 1..%u", n, SKV_CNTR_MAX);
    if (c->rotate)
        return skv_error(SKV_EINVAL, "CNTR: centroids are not rotated (no rotation with merged "
                         "tokens)");
    const uint64_t extra = skv_align64(4ull * n);
    if (size != skv_cntr_payload_bytes(c, bits, n))
        return skv_error(SKV_EINVAL, "CNTR: buffer of %llu bytes, payload needs %llu",
                         (unsigned long long)size,
                         (unsigned long long)skv_cntr_payload_bytes(c, bits, n));
    /* the rows as a PBKT of rows 0..n-1 placed after the counts, then the
     * header moved to the front and the indices replaced by the last members */
    uint32_t *seq = skv_malloc((size_t)n * sizeof *seq);
    if (!seq)
        return SKV_ENOMEM;
    for (uint32_t i = 0; i < n; i++)
        seq[i] = i;
    int rc = skv_pbkt_encode(out + extra, size - extra, c, layer, kv_head, bits, 0, seq, n, ck,
                             cv);
    free(seq);
    if (rc < 0)
        return rc;
    memmove(out, out + extra, SKV_PBKT_HEADER_LEN);
    memset(out + SKV_PBKT_HEADER_LEN, 0, (size_t)extra);
    for (uint32_t i = 0; i < n; i++) {
        if (cnt[i] == 0 || (i && last[i] <= last[i - 1]))
            return skv_error(SKV_EINVAL, "CNTR: centroid %u: empty or last members not "
                             "ascending", i);
        skv_put32(out + SKV_PBKT_HEADER_LEN + 4ull * i, cnt[i]);
        skv_put32(out + SKV_PBKT_HEADER_LEN + extra + 4ull * i, last[i]);
    }
    return 0;
}

void skv_bucket_dequantize(const skv_bucket *b, float *k, float *v)
{
    const uint32_t d = b->head_dim;
    for (uint32_t i = 0; i < b->n; i++) {
        size_t t = b->idx[i];
        if (k && i < b->k_full)  /* keys per channel, a full group */
            skv_dequantize_row(b->k_par + (size_t)(i / b->k_tokens) * 4 * d,
                               b->k_dat + (size_t)i * b->row_stride, d, b->bits, 1,
                               SKV_QMODE_ASYM, k + t * d);
        else if (k && b->k_tail_par)  /* keys per channel, the partial group */
            skv_dequantize_row(b->k_tail_par + (size_t)(i - b->k_full) * b->k_par_stride,
                               b->k_dat + (size_t)i * b->row_stride, d, b->bits, b->k_group,
                               SKV_QMODE_ASYM, k + t * d);
        else if (k)
            skv_dequantize_row(b->k_par + (size_t)i * b->k_par_stride,
                               b->k_dat + (size_t)i * b->row_stride, d, b->bits, b->k_group,
                               b->k_mode, k + t * d);
        if (v)
            skv_dequantize_row(b->v_par + (size_t)i * b->v_par_stride,
                               b->v_dat + (size_t)i * b->row_stride, d, b->bits, b->v_group,
                               b->v_mode, v + t * d);
    }
}
