/* format.c -- sequential reader and writer of the smartkv container. */
#define _GNU_SOURCE
#include "smartkv_format.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define HEAD_PAYLOAD_LEN 40
#define DONE_PAYLOAD_LEN 16
#define READ_STEP ((size_t)1 << 20) /* payload read granularity */

struct skv_stream {
    int fd;
    int writing;
    int owns_fd;          /* close fd on skv_close */
    int level;            /* zlib level, <0 none */
    int failed;           /* a write failed: never write DONE */
    int head_pending;     /* writer: signature and HEAD wait for the first chunk */
    int done;             /* reader saw DONE */
    int major, minor;
    uint64_t offset;      /* bytes consumed/produced */
    uint64_t nchunks;     /* chunks consumed/produced (HEAD included) */
    char *path;           /* final path (writer) or input path */
    char *tmppath;        /* writer: temporary file, NULL when writing in place */
    char name[512];       /* for messages */
    uint8_t *buf;         /* reader: stored chunk bytes; writer: scratch */
    size_t bufcap;
    uint8_t *raw;         /* reader: inflated payload */
    size_t rawcap;
    int is_mem;           /* reader over memory (skv_open_mem) */
    const uint8_t *mem;
    size_t memlen, mempos;
};

const char *skv_stream_name(const skv_stream *s) { return s->name; }
/* A pending head counts as written: it is never compressed (40 bytes). */
#define HEAD_BYTES (SKV_SIGNATURE_LEN + SKV_CHUNK_HEADER_LEN + HEAD_PAYLOAD_LEN + SKV_CHUNK_CRC_LEN)
uint64_t skv_stream_offset(const skv_stream *s) { return s->offset + (s->head_pending ? HEAD_BYTES : 0); }
uint64_t skv_stream_chunks(const skv_stream *s) { return s->nchunks + (s->head_pending ? 1 : 0); }
int skv_stream_failed(const skv_stream *s) { return s->failed; }
int skv_stream_level(const skv_stream *s) { return s->level; }
void skv_stream_version(const skv_stream *s, int *major, int *minor)
{
    *major = s->major;
    *minor = s->minor;
}

static const char *zerr(int rc)
{
    switch (rc) {
    case Z_MEM_ERROR: return "zlib: out of memory";
    case Z_BUF_ERROR: return "zlib: size does not match";
    case Z_DATA_ERROR: return "zlib: corrupt compressed data";
    case Z_STREAM_ERROR: return "zlib: bad parameters";
    default: return "zlib: unknown error";
    }
}

static int grow(uint8_t **p, size_t *cap, size_t need)
{
    /* a stored chunk: header, at most SKV_CHUNK_MAX bytes, CRC */
    return skv_grow((void **)p, cap, need, SKV_CHUNK_MAX + SKV_CHUNK_HEADER_LEN + SKV_CHUNK_CRC_LEN);
}

/* ---- reading ---- */

/* Read exactly n bytes; returns n, or fewer at end of input, or -1. */
static ssize_t read_full(skv_stream *s, void *buf, size_t n)
{
    size_t got = 0;
    if (s->is_mem) {
        size_t left = s->memlen - s->mempos;
        got = n < left ? n : left;
        if (got)
            memcpy(buf, s->mem + s->mempos, got);
        s->mempos += got;
        return (ssize_t)got;
    }
    while (got < n) {
        ssize_t r = read(s->fd, (char *)buf + got, n - got);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

static int valid_type(const uint8_t *t)
{
    for (int i = 0; i < 4; i++) {
        uint8_t ch = t[i];
        if (!((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z')))
            return 0;
    }
    return 1;
}

/* Read one chunk in stored form into s->buf and check it.  Does not inflate. */
static int read_stored(skv_stream *s, skv_chunk *c)
{
    int rc;
    uint8_t hdr[SKV_CHUNK_HEADER_LEN];
    uint64_t start = s->offset;

    ssize_t r = read_full(s, hdr, sizeof hdr);
    if (r < 0)
        return skv_error(SKV_EIO, "read error at byte %llu: %s",
                         (unsigned long long)start, strerror(errno));
    if (r < (ssize_t)sizeof hdr)
        return skv_error(SKV_ETRUNC, "truncated input: stream ends at byte %llu "
                         "without an end chunk", (unsigned long long)start + (unsigned long long)r);
    s->offset += sizeof hdr;
    if (!valid_type(hdr))
        return skv_error(SKV_EFORMAT, "bad chunk type at byte %llu (not four letters)",
                         (unsigned long long)start);
    memcpy(c->type, hdr, 4);
    c->type[4] = '\0';
    c->flags = skv_get32(hdr + 4);
    c->size = skv_get64(hdr + 8);
    c->raw_size = skv_get64(hdr + 16);
    c->offset = start;
    if (c->flags & ~SKV_CHUNK_FLAGS_KNOWN)
        return skv_error(SKV_EUNSUP, "chunk %s at byte %llu has unknown flags 0x%x",
                         c->type, (unsigned long long)start, c->flags);
    if (c->size > SKV_CHUNK_MAX || c->raw_size > SKV_CHUNK_MAX)
        return skv_error(SKV_ELIMIT, "chunk %s at byte %llu: payload size %llu exceeds "
                         "the limit of %llu bytes", c->type, (unsigned long long)start,
                         (unsigned long long)(c->size > c->raw_size ? c->size : c->raw_size),
                         (unsigned long long)SKV_CHUNK_MAX);
    if (!(c->flags & SKV_CHUNK_ZLIB) && c->size != c->raw_size)
        return skv_error(SKV_EFORMAT, "chunk %s at byte %llu: stored size %llu differs "
                         "from raw size %llu but it is not compressed", c->type,
                         (unsigned long long)start, (unsigned long long)c->size,
                         (unsigned long long)c->raw_size);
    /* The buffer grows with the bytes actually read (by at most READ_STEP or
     * doubling), so a header that claims a large payload in a short input
     * costs no more memory than the input itself. */
    size_t body = (size_t)c->size + SKV_CHUNK_CRC_LEN, got = 0;
    while (got < body) {
        size_t want = body - got, step = got < READ_STEP ? READ_STEP : got;
        if (want > step)
            want = step;
        if ((rc = grow(&s->buf, &s->bufcap, sizeof hdr + got + want)) < 0)
            return rc;
        if (got == 0)
            memcpy(s->buf, hdr, sizeof hdr);
        r = read_full(s, s->buf + sizeof hdr + got, want);
        if (r < 0)
            return skv_error(SKV_EIO, "read error in chunk %s at byte %llu: %s", c->type,
                             (unsigned long long)s->offset + got, strerror(errno));
        got += (size_t)r;
        if ((size_t)r < want)
            return skv_error(SKV_ETRUNC, "truncated input: chunk %s at byte %llu ends at "
                             "byte %llu (%zu of %zu bytes; no end chunk)", c->type,
                             (unsigned long long)start,
                             (unsigned long long)s->offset + got, got + sizeof hdr,
                             body + sizeof hdr);
    }
    s->offset += body;
    uint32_t want = skv_get32(s->buf + sizeof hdr + c->size);
    uLong crc = crc32_z(0L, s->buf, SKV_CHUNK_HEADER_LEN + (size_t)c->size);
    if ((uint32_t)crc != want)
        return skv_error(SKV_ECRC, "CRC mismatch in chunk %s at byte offset %llu "
                         "(stored %08x, computed %08x)", c->type,
                         (unsigned long long)start, want, (uint32_t)crc);
    c->stored = s->buf;
    c->data = s->buf + sizeof hdr;
    return 0;
}

static int inflate_chunk(skv_stream *s, skv_chunk *c)
{
    if (!(c->flags & SKV_CHUNK_ZLIB))
        return 0;
    int rc;
    if ((rc = grow(&s->raw, &s->rawcap, (size_t)c->raw_size)) < 0)
        return rc;
    uLongf dlen = (uLongf)c->raw_size;
    int zr = uncompress(s->raw, &dlen, c->data, (uLong)c->size);
    if (zr != Z_OK || dlen != c->raw_size)
        return skv_error(SKV_EZLIB, "chunk %s at byte %llu: cannot decompress (%s)",
                         c->type, (unsigned long long)c->offset,
                         zr == Z_OK ? "raw size does not match" : zerr(zr));
    c->data = s->raw;
    return 0;
}

static skv_stream *stream_new(const char *path, int writing)
{
    skv_stream *s = skv_calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->fd = -1;
    s->writing = writing;
    s->level = -1;
    int std = !path || strcmp(path, "-") == 0;
    snprintf(s->name, sizeof s->name, "%s",
             std ? (writing ? "(stdout)" : "(stdin)") : path);
    if (!std) {
        s->path = strdup(path);
        if (!s->path) {
            free(s);
            skv_error(SKV_ENOMEM, "out of memory");
            return NULL;
        }
    }
    return s;
}

static void stream_free(skv_stream *s)
{
    if (s->owns_fd && s->fd >= 0)
        close(s->fd);
    free(s->path);
    free(s->tmppath);
    free(s->buf);
    free(s->raw);
    free(s);
}

/* Check the signature and HEAD chunk of a new reader; frees s on failure. */
static skv_stream *read_start(skv_stream *s)
{
    uint8_t sig[SKV_SIGNATURE_LEN];
    ssize_t r = read_full(s, sig, sizeof sig);
    if (r < 0) {
        skv_error(SKV_EIO, "read error: %s", strerror(errno));
        goto fail;
    }
    if (r == 0) {
        skv_error(SKV_ETRUNC, "empty input (expected a smartkv stream)");
        goto fail;
    }
    if (r < (ssize_t)sizeof sig || memcmp(sig, SKV_SIGNATURE, sizeof sig) != 0) {
        if (r < (ssize_t)sizeof sig && memcmp(sig, SKV_SIGNATURE, (size_t)r) == 0)
            skv_error(SKV_ETRUNC, "truncated input: only %zd bytes of signature", r);
        else if (r >= 4 && memcmp(sig + 1, "SKV", 3) == 0 && sig[0] == 0x89)
            skv_error(SKV_EFORMAT, "damaged signature (text-mode transfer? "
                      "line endings or the high bit were altered)");
        else
            skv_error(SKV_EFORMAT, "not a smartkv stream (bad signature)");
        goto fail;
    }
    s->offset = sizeof sig;

    skv_chunk c;
    if (read_stored(s, &c) < 0)
        goto fail;
    if (!skv_chunk_is(&c, SKV_T_HEAD)) {
        skv_error(SKV_EFORMAT, "first chunk is %s, expected HEAD (byte %llu)",
                  c.type, (unsigned long long)c.offset);
        goto fail;
    }
    if (inflate_chunk(s, &c) < 0)
        goto fail;
    if (c.raw_size < 8) {
        skv_error(SKV_EFORMAT, "HEAD chunk too short (%llu bytes)",
                  (unsigned long long)c.raw_size);
        goto fail;
    }
    s->major = skv_get16(c.data);
    s->minor = skv_get16(c.data + 2);
    if (skv_get32(c.data + 4)) {
        skv_error(SKV_EFORMAT, "HEAD chunk: reserved bytes 4..7 are not zero");
        goto fail;
    }
    if (s->major != SKV_VERSION_MAJOR) {
        skv_error(SKV_EVERSION, "unsupported format version %d.%d (this reader "
                  "supports %d.x)", s->major, s->minor, SKV_VERSION_MAJOR);
        goto fail;
    }
    /* a newer minor version may give meaning to fields this reader takes
     * as reserved or to values it does not know: refuse it by name */
    if (s->minor > SKV_VERSION_MINOR) {
        skv_error(SKV_EVERSION, "format version %d.%d is newer than this reader (%d.0 to "
                  "%d.%d); upgrade smartkv", s->major, s->minor, SKV_VERSION_MAJOR,
                  SKV_VERSION_MAJOR, SKV_VERSION_MINOR);
        goto fail;
    }
    s->nchunks = 1;
    return s;
fail:
    stream_free(s);
    return NULL;
}

skv_stream *skv_open_read(const char *path)
{
    skv_stream *s = stream_new(path, 0);
    if (!s)
        return NULL;
    if (s->path) {
        s->fd = open(s->path, O_RDONLY | O_CLOEXEC);
        if (s->fd < 0) {
            skv_error(SKV_EIO, "cannot open: %s", strerror(errno));
            stream_free(s);
            return NULL;
        }
        s->owns_fd = 1;
        struct stat st;
        if (fstat(s->fd, &st) == 0 && S_ISDIR(st.st_mode)) {
            skv_error(SKV_EIO, "is a directory");
            stream_free(s);
            return NULL;
        }
    } else {
        s->fd = STDIN_FILENO;
    }
    return read_start(s);
}

/* A stream named for messages only: no path of its own. */
static skv_stream *stream_named(const char *name, int writing)
{
    skv_stream *s = stream_new("-", writing);
    if (s && name)
        snprintf(s->name, sizeof s->name, "%s", name);
    return s;
}

skv_stream *skv_open_fd(int fd, const char *name)
{
    if (fd < 0) {
        skv_error(SKV_EINVAL, "skv_open_fd: bad file descriptor %d", fd);
        return NULL;
    }
    skv_stream *s = stream_named(name, 0);
    if (!s)
        return NULL;
    s->fd = fd;
    return read_start(s);
}

skv_stream *skv_open_mem(const void *buf, size_t n, const char *name)
{
    if (!buf && n) {
        skv_error(SKV_EINVAL, "skv_open_mem: NULL buffer of %zu bytes", n);
        return NULL;
    }
    skv_stream *s = stream_named(name ? name : "(memory)", 0);
    if (!s)
        return NULL;
    s->is_mem = 1;
    s->mem = buf;
    s->memlen = n;
    return read_start(s);
}

int skv_read(skv_stream *s, skv_chunk *c)
{
    int rc;
    if (s->writing)
        return skv_error(SKV_EINVAL, "skv_read on a stream opened for writing");
    if (s->done)
        return 0;
    if ((rc = read_stored(s, c)) < 0)
        return rc;
    if ((rc = inflate_chunk(s, c)) < 0)
        return rc;
    if (skv_chunk_is(c, SKV_T_DONE)) {
        if (c->raw_size < DONE_PAYLOAD_LEN)
            return skv_error(SKV_EFORMAT, "DONE chunk at byte %llu too short",
                             (unsigned long long)c->offset);
        uint64_t n = skv_get64(c->data), bytes = skv_get64(c->data + 8);
        if (n != s->nchunks || bytes != c->offset)
            return skv_error(SKV_EFORMAT, "end chunk at byte %llu counts %llu chunks "
                             "in %llu bytes, but %llu chunks in %llu bytes were read "
                             "(spliced or damaged stream)", (unsigned long long)c->offset,
                             (unsigned long long)n, (unsigned long long)bytes,
                             (unsigned long long)s->nchunks,
                             (unsigned long long)c->offset);
        uint8_t extra;
        ssize_t r = read_full(s, &extra, 1);
        if (r < 0)
            return skv_error(SKV_EIO, "read error after end chunk: %s", strerror(errno));
        if (r > 0)
            return skv_error(SKV_EFORMAT, "trailing data after the end chunk (byte %llu)",
                             (unsigned long long)s->offset);
        s->done = 1;
        return 0;
    }
    if (skv_chunk_is(c, SKV_T_HEAD))
        return skv_error(SKV_EFORMAT, "second HEAD chunk at byte %llu "
                         "(concatenated streams are not supported)",
                         (unsigned long long)c->offset);
    s->nchunks++;
    return 1;
}

/* ---- temporary files removed on SIGINT, SIGTERM and SIGHUP ----
 * As zstd and xz do: a handler unlinks every registered temporary name, then
 * restores the default action and re-raises, so the exit status still tells
 * the signal.  Only signals left at their default action are taken over.
 * SIGKILL cannot be caught: a stale OUT.tmpXXXXXX stays after kill -9 (the
 * next run writes a fresh temporary and renames it over OUT). */
#define TMP_SLOTS 16
#define TMP_NAME_MAX 4096
static char tmp_names[TMP_SLOTS][TMP_NAME_MAX];
static atomic_int tmp_used[TMP_SLOTS];
static pthread_mutex_t tmp_lock = PTHREAD_MUTEX_INITIALIZER;
static int tmp_handlers;
static const int tmp_signals[] = {SIGINT, SIGTERM, SIGHUP};

static void tmp_on_signal(int sig)
{
    int e = errno;
    for (int i = 0; i < TMP_SLOTS; i++)
        if (atomic_load(&tmp_used[i]))
            unlink(tmp_names[i]);  /* async-signal-safe */
    signal(sig, SIG_DFL);
    raise(sig);
    errno = e;
}

int skv_tmp_register(const char *path)
{
    if (strlen(path) >= TMP_NAME_MAX)
        return -1;
    int slot = -1;
    pthread_mutex_lock(&tmp_lock);
    if (!tmp_handlers) {
        tmp_handlers = 1;
        for (size_t i = 0; i < sizeof tmp_signals / sizeof tmp_signals[0]; i++) {
            struct sigaction old, sa;
            if (sigaction(tmp_signals[i], NULL, &old) != 0 || old.sa_handler != SIG_DFL)
                continue;  /* the program handles or ignores it (nohup) */
            memset(&sa, 0, sizeof sa);
            sa.sa_handler = tmp_on_signal;
            sigfillset(&sa.sa_mask);
            sigaction(tmp_signals[i], &sa, NULL);
        }
    }
    for (int i = 0; i < TMP_SLOTS && slot < 0; i++)
        if (!atomic_load(&tmp_used[i])) {
            memcpy(tmp_names[i], path, strlen(path) + 1);
            atomic_store(&tmp_used[i], 1);
            slot = i;
        }
    pthread_mutex_unlock(&tmp_lock);
    return slot < 0 ? -1 : 0;
}

void skv_tmp_unregister(const char *path)
{
    pthread_mutex_lock(&tmp_lock);
    for (int i = 0; i < TMP_SLOTS; i++)
        if (atomic_load(&tmp_used[i]) && strcmp(tmp_names[i], path) == 0) {
            atomic_store(&tmp_used[i], 0);
            break;
        }
    pthread_mutex_unlock(&tmp_lock);
}

/* fsync before the rename, so that after a crash the name holds either the
 * old file or the whole new one; SKV_NO_FSYNC=1 skips it. */
static int want_fsync(void)
{
    return !skv_env_flag("SKV_NO_FSYNC");
}

/* ---- writing ---- */

static int write_all(skv_stream *s, const void *buf, size_t n)
{
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(s->fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            s->failed = 1;
            return skv_error(SKV_EIO, "write error: %s", strerror(errno));
        }
        p += w;
        n -= (size_t)w;
        s->offset += (uint64_t)w;
    }
    return 0;
}

static int write_head(skv_stream *s)
{
    uint8_t head[HEAD_PAYLOAD_LEN] = {0};
    skv_put16(head, SKV_VERSION_MAJOR);
    skv_put16(head + 2, SKV_VERSION_MINOR);
    /* bytes 4..7 reserved (0); 8..39 writer name, NUL padded */
    snprintf((char *)head + 8, 32, "libsmartkv %d.%d", SKV_VERSION_MAJOR, SKV_VERSION_MINOR);
    s->nchunks = 0;
    return skv_write(s, SKV_T_HEAD, head, sizeof head);
}

/* The signature and HEAD go out with the first chunk, so that a tool that
 * rejects its input after opening standard output has written nothing. */
static int start_output(skv_stream *s)
{
    s->head_pending = 0;
    int rc = write_all(s, SKV_SIGNATURE, SKV_SIGNATURE_LEN);
    return rc < 0 ? rc : write_head(s);
}

skv_stream *skv_open_write(const char *path, int level)
{
    skv_stream *s = stream_new(path, 1);
    if (!s)
        return NULL;
    s->level = level > 9 ? 9 : level < -1 ? SKV_LEVEL_KEEP : level;
    if (!s->path) {
        s->fd = STDOUT_FILENO;
    } else {
        struct stat st;
        int regular = stat(s->path, &st) != 0 || S_ISREG(st.st_mode);
        if (regular) {
            /* temp file beside the target so rename() is atomic */
            size_t n = strlen(s->path) + 16;
            s->tmppath = malloc(n);
            if (!s->tmppath) {
                skv_error(SKV_ENOMEM, "out of memory");
                goto fail;
            }
            snprintf(s->tmppath, n, "%s.tmpXXXXXX", s->path);
            s->fd = mkostemp(s->tmppath, O_CLOEXEC);
            if (s->fd < 0) {
                skv_error(SKV_EIO, "cannot create temporary file %s: %s",
                          s->tmppath, strerror(errno));
                free(s->tmppath);
                s->tmppath = NULL;
                goto fail;
            }
            skv_tmp_register(s->tmppath);
            mode_t um = umask(0);
            umask(um);
            if (fchmod(s->fd, 0666 & ~um) != 0) {
                skv_error(SKV_EIO, "cannot set mode of %s: %s", s->tmppath, strerror(errno));
                goto fail;
            }
        } else {
            /* devices and FIFOs (/dev/null, /dev/full, named pipes): in place */
            s->fd = open(s->path, O_WRONLY | O_CLOEXEC);
            if (s->fd < 0) {
                skv_error(SKV_EIO, "cannot open for writing: %s", strerror(errno));
                goto fail;
            }
        }
        s->owns_fd = 1;
    }
    s->head_pending = 1;
    return s;
fail:
    skv_discard(s);
    return NULL;
}

skv_stream *skv_open_write_fd(int fd, const char *name, int level)
{
    if (fd < 0) {
        skv_error(SKV_EINVAL, "skv_open_write_fd: bad file descriptor %d", fd);
        return NULL;
    }
    skv_stream *s = stream_named(name, 1);
    if (!s)
        return NULL;
    s->level = level > 9 ? 9 : level < -1 ? SKV_LEVEL_KEEP : level;
    s->fd = fd;
    s->head_pending = 1;
    return s;
}

int skv_writev(skv_stream *s, const char *type, int npieces,
               const void *const *pieces, const uint64_t *lens)
{
    int rc;
    if (!s->writing)
        return skv_error(SKV_EINVAL, "skv_write on a stream opened for reading");
    if (s->failed)
        return skv_error(SKV_EIO, "stream %s already failed", s->name);
    if (!valid_type((const uint8_t *)type))
        return skv_error(SKV_EINVAL, "bad chunk type \"%.4s\"", type);
    if (s->head_pending && (rc = start_output(s)) < 0)
        return rc;
    uint64_t n = 0;
    for (int i = 0; i < npieces; i++) {
        if (lens[i] > SKV_CHUNK_MAX || n + lens[i] > SKV_CHUNK_MAX)
            return skv_error(SKV_ELIMIT, "chunk %.4s payload exceeds the limit of "
                             "%llu bytes", type, (unsigned long long)SKV_CHUNK_MAX);
        n += lens[i];
    }

    uint8_t hdr[SKV_CHUNK_HEADER_LEN];
    memcpy(hdr, type, 4);
    uint32_t flags = 0;
    uint64_t stored = n;
    const uint8_t *zdata = NULL;

    if (s->level >= 0 && n > 64) {
        /* gather, compress, and keep the result only if it is smaller */
        const uint8_t *src;
        uint8_t *gather = NULL;
        if (npieces == 1) {
            src = pieces[0];
        } else {
            gather = skv_malloc((size_t)n);
            if (!gather)
                return SKV_ENOMEM;
            uint64_t off = 0;
            for (int i = 0; i < npieces; i++) {
                memcpy(gather + off, pieces[i], (size_t)lens[i]);
                off += lens[i];
            }
            src = gather;
        }
        uLong bound = compressBound((uLong)n);
        if ((rc = grow(&s->buf, &s->bufcap, bound)) < 0) {
            free(gather);
            return rc;
        }
        uLongf zlen = bound;
        int zr = compress2(s->buf, &zlen, src, (uLong)n, s->level);
        free(gather);
        if (zr != Z_OK)
            return skv_error(SKV_EZLIB, "compressing chunk %.4s: %s", type, zerr(zr));
        if (zlen < n) {
            flags = SKV_CHUNK_ZLIB;
            stored = zlen;
            zdata = s->buf;
        }
    }
    skv_put32(hdr + 4, flags);
    skv_put64(hdr + 8, stored);
    skv_put64(hdr + 16, n);

    uLong crc = crc32_z(0L, hdr, sizeof hdr);
    if ((rc = write_all(s, hdr, sizeof hdr)) < 0)
        return rc;
    if (zdata) {
        crc = crc32_z(crc, zdata, (size_t)stored);
        if ((rc = write_all(s, zdata, (size_t)stored)) < 0)
            return rc;
    } else {
        for (int i = 0; i < npieces; i++) {
            crc = crc32_z(crc, pieces[i], (size_t)lens[i]);
            if ((rc = write_all(s, pieces[i], (size_t)lens[i])) < 0)
                return rc;
        }
    }
    uint8_t crcb[4];
    skv_put32(crcb, (uint32_t)crc);
    if ((rc = write_all(s, crcb, 4)) < 0)
        return rc;
    s->nchunks++;
    return 0;
}

int skv_write(skv_stream *s, const char *type, const void *data, uint64_t n)
{
    const void *p[1] = {data};
    uint64_t l[1] = {n};
    return skv_writev(s, type, 1, p, l);
}

int skv_copy_chunk(skv_stream *s, const skv_chunk *c)
{
    int compressed = (c->flags & SKV_CHUNK_ZLIB) != 0;
    /* verbatim when the stored form is what we would write anyway */
    if (c->stored && !s->failed &&
        (s->level == SKV_LEVEL_KEEP || compressed == (s->level >= 0))) {
        if (s->head_pending && start_output(s) < 0)
            return SKV_EIO;
        int rc = write_all(s, c->stored, SKV_CHUNK_HEADER_LEN + (size_t)c->size + SKV_CHUNK_CRC_LEN);
        if (rc < 0)
            return rc;
        s->nchunks++;
        return 0;
    }
    return skv_write(s, c->type, c->data, c->raw_size);
}

void skv_discard(skv_stream *s)
{
    if (!s)
        return;
    if (s->writing) {
        s->failed = 1;
        if (s->tmppath) {
            if (s->fd >= 0)
                close(s->fd);
            s->fd = -1;
            unlink(s->tmppath);
            skv_tmp_unregister(s->tmppath);
        }
    }
    stream_free(s);
}

int skv_close(skv_stream *s)
{
    int rc = 0;
    if (!s)
        return 0;
    if (!s->writing) {
        stream_free(s);
        return 0;
    }
    if (s->failed) {
        rc = skv_error(SKV_EIO, "stream %s failed; no end chunk written", s->name);
        skv_discard(s);
        return rc;
    }
    if (s->head_pending && (rc = start_output(s)) < 0) {
        skv_discard(s);
        return rc;
    }
    uint8_t done[DONE_PAYLOAD_LEN];
    uint64_t at = s->offset;
    skv_put64(done, s->nchunks);
    skv_put64(done + 8, at);
    int lvl = s->level;
    s->level = -1;  /* DONE is never compressed: a reader finds it cheaply */
    rc = skv_write(s, SKV_T_DONE, done, sizeof done);
    s->level = lvl;
    if (rc < 0) {
        skv_discard(s);
        return rc;
    }
    if (s->owns_fd) {
        int fd = s->fd;
        s->fd = -1;
        int bad = s->tmppath && want_fsync() && fsync(fd) != 0;
        if (close(fd) != 0 || bad) {
            rc = skv_error(SKV_EIO, "write error on %s: %s", bad ? "fsync" : "close",
                           strerror(errno));
            if (s->tmppath) {
                unlink(s->tmppath);
                skv_tmp_unregister(s->tmppath);
            }
            stream_free(s);
            return rc;
        }
    }
    if (s->tmppath) {
        if (rename(s->tmppath, s->path) != 0) {
            rc = skv_error(SKV_EIO, "cannot rename %s to %s: %s", s->tmppath, s->path,
                           strerror(errno));
            unlink(s->tmppath);
        }
        skv_tmp_unregister(s->tmppath);
    }
    stream_free(s);
    return rc;
}
