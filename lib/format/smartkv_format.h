/* smartkv_format.h -- the chunked, CRC-checked container (see smartkv(5)).
 *
 * A stream is an 8-byte signature, a HEAD chunk, any number of chunks, and a
 * DONE chunk that counts them.  Each chunk is a 24-byte header (type, flags,
 * stored size, raw size), the payload, and a CRC-32 over header and payload.
 * Streams are read and written strictly sequentially so that every tool works
 * on pipes; "-" names stdin/stdout, handled here and nowhere else.
 */
#ifndef SMARTKV_FORMAT_H
#define SMARTKV_FORMAT_H

#include "smartkv_error.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SKV_SIGNATURE "\x89SKV\r\n\x1a\n"
#define SKV_SIGNATURE_LEN 8
#define SKV_VERSION_MAJOR 1
#define SKV_VERSION_MINOR 3  /* newest minor version read and written (smartkv(5) CHANGES) */
#define SKV_CHUNK_HEADER_LEN 24
#define SKV_CHUNK_CRC_LEN 4
/* Largest payload a chunk may carry, stored or raw.  Writers split big
 * tensors into blocks so that no reader ever holds more than this. */
#define SKV_CHUNK_MAX ((uint64_t)64 << 20)
#define SKV_LEVEL_KEEP (-2)        /* skv_open_write: copy chunks as stored, new ones raw */
#define SKV_CHUNK_ZLIB 0x1u        /* flags bit 0: payload is a zlib stream */
#define SKV_CHUNK_FLAGS_KNOWN 0x1u /* all other flag bits must be zero */

/* Chunk types defined by this version (registry in smartkv(5)). */
#define SKV_T_HEAD "HEAD" /* stream header: version */
#define SKV_T_DONE "DONE" /* end of stream: chunk count, byte count */
#define SKV_T_TRHD "TRHD" /* trace header: shapes, dtype, source */
#define SKV_T_TENS "TENS" /* a block of rows of one head's tensor */
#define SKV_T_TOKS "TOKS" /* a block of token ids */

typedef struct skv_stream skv_stream;

typedef struct skv_chunk {
    char type[5];         /* NUL-terminated 4-letter type */
    uint32_t flags;       /* as stored */
    uint64_t size;        /* stored payload size */
    uint64_t raw_size;    /* payload size after decompression */
    uint64_t offset;      /* byte offset of the chunk header in the stream */
    const uint8_t *data;  /* raw payload (raw_size bytes); valid until the next read */
    const uint8_t *stored;/* stored bytes: header, payload, CRC (size + 28) */
} skv_chunk;

/* Critical chunks (first letter upper case) must be understood by a reader;
 * ancillary chunks (lower case) may be skipped. */
static inline int skv_chunk_is_critical(const char *type)
{
    return type[0] >= 'A' && type[0] <= 'Z';
}
static inline int skv_chunk_is(const skv_chunk *c, const char *type)
{
    return c->type[0] == type[0] && c->type[1] == type[1] &&
           c->type[2] == type[2] && c->type[3] == type[3];
}

/* Open for reading; "-" or NULL is stdin.  Reads and checks the signature and
 * the HEAD chunk.  Returns NULL on failure (message in skv_errmsg()). */
SKV_EXPORT skv_stream *skv_open_read(const char *path);

/* Read from an open file descriptor (a pipe, socket or file positioned at
 * the signature); skv_close() does not close it.  name is used in messages
 * (NULL: "(stdin)").  Returns NULL on failure. */
SKV_EXPORT skv_stream *skv_open_fd(int fd, const char *name);

/* Read from n bytes of memory, which must stay valid until skv_close(). */
SKV_EXPORT skv_stream *skv_open_mem(const void *buf, size_t n, const char *name);

/* Open for writing; "-" or NULL is stdout.  A regular file is written to a
 * temporary file in the same directory and renamed into place by
 * skv_close(), so a failed run leaves nothing half-written.  level < 0 stores
 * payloads uncompressed; 0..9 compresses each chunk with zlib at that level
 * (kept only where it is smaller).  Writes the signature and HEAD chunk. */
SKV_EXPORT skv_stream *skv_open_write(const char *path, int level);

/* Write to an open file descriptor in place (no temporary file; skv_close()
 * does not close it, skv_discard() leaves what was written, without DONE). */
SKV_EXPORT skv_stream *skv_open_write_fd(int fd, const char *name, int level);

/* Read the next chunk.  Returns 1 with *c filled, 0 at a verified DONE chunk
 * (and no trailing bytes), or <0 on error (truncation, CRC, limits, ...). */
SKV_EXPORT int skv_read(skv_stream *s, skv_chunk *c);

/* Write one chunk from a raw payload.  Returns 0 or <0. */
SKV_EXPORT int skv_write(skv_stream *s, const char *type, const void *data, uint64_t n);

/* Write a payload given as consecutive pieces (avoids a copy when a chunk is
 * a small sub-header followed by bulk data).  Returns 0 or <0. */
SKV_EXPORT int skv_writev(skv_stream *s, const char *type, int npieces,
                          const void *const *pieces, const uint64_t *lens);

/* Pass a chunk read from another stream through.  Its stored bytes are
 * copied verbatim when the compression setting matches (always with
 * SKV_LEVEL_KEEP); otherwise it is re-encoded.  Returns 0 or <0. */
SKV_EXPORT int skv_copy_chunk(skv_stream *s, const skv_chunk *c);

/* Finish: a writer writes DONE, flushes and renames; a reader just closes.
 * Frees s.  Returns 0 or <0 (the file is removed on failure). */
SKV_EXPORT int skv_close(skv_stream *s);

/* Abandon a writer: no DONE chunk, temporary file removed.  Frees s. */
SKV_EXPORT void skv_discard(skv_stream *s);

/* Temporary files to remove if the process gets SIGINT, SIGTERM or SIGHUP
 * (the handler unlinks them, restores the default action and re-raises;
 * signals the program already handles or ignores are left alone).
 * skv_open_write registers its own; a tool that writes other temporary files
 * registers them too.  At most 16 at a time.  Returns 0, or -1 when the name
 * is too long or every slot is taken (then it is not removed on a signal).
 * A file is synced (fsync) before skv_close renames it into place unless
 * the environment sets SKV_NO_FSYNC=1. */
SKV_EXPORT int skv_tmp_register(const char *path);
SKV_EXPORT void skv_tmp_unregister(const char *path);

SKV_EXPORT const char *skv_stream_name(const skv_stream *s);  /* "-" shows as "(stdin)"/"(stdout)" */
SKV_EXPORT uint64_t skv_stream_offset(const skv_stream *s);   /* bytes read/written so far */
SKV_EXPORT uint64_t skv_stream_chunks(const skv_stream *s);   /* chunks read/written so far */
SKV_EXPORT void skv_stream_version(const skv_stream *s, int *major, int *minor);
SKV_EXPORT int skv_stream_level(const skv_stream *s);         /* compression level, <0 none */
/* Has a write to s failed?  (Tells a tool whether an error is its output's
 * or its input's.) */
SKV_EXPORT int skv_stream_failed(const skv_stream *s);

/* Little-endian field access used by every chunk codec. */
static inline uint16_t skv_get16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline uint32_t skv_get32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t skv_get64(const uint8_t *p)
{
    return (uint64_t)skv_get32(p) | (uint64_t)skv_get32(p + 4) << 32;
}
static inline void skv_put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static inline void skv_put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static inline void skv_put64(uint8_t *p, uint64_t v)
{
    skv_put32(p, (uint32_t)v);
    skv_put32(p + 4, (uint32_t)(v >> 32));
}
static inline float skv_getf32(const uint8_t *p)
{
    union { uint32_t u; float f; } x;
    x.u = skv_get32(p);
    return x.f;
}
static inline void skv_putf32(uint8_t *p, float f)
{
    union { uint32_t u; float f; } x;
    x.f = f;
    skv_put32(p, x.u);
}

#ifdef __cplusplus
}
#endif
#endif
