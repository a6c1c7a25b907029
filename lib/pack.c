/* pack.c -- bucket layout arithmetic (the byte model shared by skv-alloc and
 * skv-quant). */
#include "smartkv_pack.h"

uint64_t skv_pbkt_max_tokens(const skv_qcfg *c, uint32_t bits)
{
    /* payload grows by at most per-token bytes plus 5 sections' padding */
    uint64_t per = 4 + skv_par_bytes(bits, c->head_dim, c->k_group, c->k_mode) +
                   skv_par_bytes(bits, c->head_dim, c->v_group, c->v_mode) +
                   2 * skv_row_bytes(bits, c->head_dim);
    uint64_t n = (SKV_CHUNK_MAX - SKV_PBKT_HEADER_LEN - (uint64_t)5 * SKV_ALIGN) / per;
    while (n > 1 && skv_pbkt_payload_bytes(c, bits, n) > SKV_CHUNK_MAX)
        n--;
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
