/* smartkv_check.h -- the conformance checker: every rule of smartkv(5) that
 * spans chunks, applied to a stream read chunk by chunk.
 *
 * The container (smartkv_format.h) checks framing, CRCs, limits and DONE;
 * the chunk decoders check each payload's fields.  This module adds what a
 * reader of the whole stream must enforce on top: which chunk types may
 * appear and in what order (an unknown critical type is an error),
 * duplicates, every TENS block at its place in its layer, TOKS coverage,
 * each ALOC once in order and valid against its ALHD and the trace header,
 * PBKT order, parts and token sets against the PKHD, the PKHD totals, and
 * the ATHD outputs.  skv-trace info, cat and export check a stream with it,
 * so they accept exactly what the tools that load a stream accept.
 *
 * Memory: a few hundred bytes, plus, while reading a packed cache, the
 * token indices of the current (layer, kv head) as read (4 bytes per row
 * of PBKT data read; nothing per declared token).
 */
#ifndef SMARTKV_CHECK_H
#define SMARTKV_CHECK_H

#include "smartkv_format.h"
#include "smartkv_trace.h"

#ifdef __cplusplus
extern "C" {
#endif

enum skv_stream_kind {
    SKV_KIND_NONE = 0,    /* no critical chunk after HEAD yet */
    SKV_KIND_TRACE = 1,   /* TRHD without the packed flag */
    SKV_KIND_PACKED = 2,  /* TRHD with SKV_TRACE_PACKED */
    SKV_KIND_ATTN = 3,    /* ATHD: attention outputs */
};

typedef struct skv_checker skv_checker;

/* A checker for one stream.  Returns NULL when out of memory. */
SKV_EXPORT skv_checker *skv_checker_new(void);
SKV_EXPORT void skv_checker_free(skv_checker *k);

/* Check the next chunk read from the stream (after HEAD; DONE is the
 * container's).  Returns 0, or <0 with a message naming the chunk. */
SKV_EXPORT int skv_check_chunk(skv_checker *k, const skv_chunk *c);

/* At the end of the stream (skv_read returned 0): everything the headers
 * promised has come.  Returns 0 or <0. */
SKV_EXPORT int skv_check_end(skv_checker *k);

SKV_EXPORT enum skv_stream_kind skv_check_kind(const skv_checker *k);
/* The trace header, once one was read (NULL before, and for attention
 * outputs). */
SKV_EXPORT const skv_trace_hdr *skv_check_trace_hdr(const skv_checker *k);

#ifdef __cplusplus
}
#endif
#endif
