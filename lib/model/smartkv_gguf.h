/* smartkv_gguf.h -- read GGUF model files; ggml tensor types.
 *
 * A GGUF file (versions 2 and 3) is a header, a list of typed metadata
 * key/values, a list of tensor descriptions, padding to the alignment, and
 * the tensor data.  skv_gguf_open() maps the file read-only and validates
 * every count, length and offset against the file size before anything is
 * allocated or dereferenced, so a corrupt or truncated file is an error with
 * a message, never a crash.  Strings and arrays point into the mapping.
 *
 * The second half is the numeric side: dequantization and dot products for
 * the ggml block types (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K,
 * Q5_K, Q6_K).  Each has a portable scalar reference; on x86-64 with AVX2
 * and FMA (detected at run time) a SIMD path is used for the hot types.
 */
#ifndef SMARTKV_GGUF_H
#define SMARTKV_GGUF_H

#include "smartkv_error.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SKV_GGUF_MAGIC "GGUF"
#define SKV_GGUF_DEFAULT_ALIGNMENT 32u
#define SKV_GGUF_MAX_DIMS 4u
#define SKV_GGUF_MAX_KEY 65535u        /* longest key or tensor name accepted */
#define SKV_GGUF_MAX_NEST 1u           /* arrays of arrays: one level at most */

/* Metadata value types (gguf_type). */
enum skv_gguf_vtype {
    SKV_GGUF_U8 = 0, SKV_GGUF_I8 = 1, SKV_GGUF_U16 = 2, SKV_GGUF_I16 = 3,
    SKV_GGUF_U32 = 4, SKV_GGUF_I32 = 5, SKV_GGUF_F32 = 6, SKV_GGUF_BOOL = 7,
    SKV_GGUF_STRING = 8, SKV_GGUF_ARRAY = 9, SKV_GGUF_U64 = 10, SKV_GGUF_I64 = 11,
    SKV_GGUF_F64 = 12,
};

/* Tensor element types (ggml_type numbering). */
enum skv_ggml_type {
    SKV_GGML_F32 = 0, SKV_GGML_F16 = 1, SKV_GGML_Q4_0 = 2, SKV_GGML_Q4_1 = 3,
    SKV_GGML_Q5_0 = 6, SKV_GGML_Q5_1 = 7, SKV_GGML_Q8_0 = 8,
    SKV_GGML_Q4_K = 12, SKV_GGML_Q5_K = 13, SKV_GGML_Q6_K = 14,
    SKV_GGML_BF16 = 30,
};

/* One metadata value.  Scalars are decoded; strings and arrays point into
 * the file (strings are NOT NUL-terminated: use len). */
typedef struct skv_gguf_value {
    uint32_t type;          /* enum skv_gguf_vtype */
    union {
        uint64_t u;         /* U8..U64, BOOL */
        int64_t i;          /* I8..I64 */
        double f;           /* F32, F64 */
    } num;
    const char *str;        /* STRING: bytes */
    uint64_t len;           /* STRING: byte length; ARRAY: element count */
    uint32_t elem_type;     /* ARRAY: element type */
    const uint8_t *data;    /* ARRAY: first element as stored */
    uint64_t nbytes;        /* ARRAY: stored bytes of all elements */
} skv_gguf_value;

typedef struct skv_gguf_kv {
    char *key;              /* NUL-terminated copy */
    skv_gguf_value v;
} skv_gguf_kv;

typedef struct skv_gguf_tensor {
    char *name;             /* NUL-terminated copy */
    uint32_t n_dims;
    uint64_t ne[SKV_GGUF_MAX_DIMS]; /* ne[0] is the contiguous (row) length; unused dims are 1 */
    uint32_t type;          /* enum skv_ggml_type */
    uint64_t offset;        /* from the start of the data section */
    uint64_t nelem;
    uint64_t nbytes;
    const void *data;       /* in the mapping */
} skv_gguf_tensor;

typedef struct skv_gguf {
    uint32_t version;
    uint64_t n_kv;
    uint64_t n_tensors;
    uint32_t alignment;
    skv_gguf_kv *kv;
    skv_gguf_tensor *tensors;
    const uint8_t *base;    /* whole file */
    size_t size;
    uint64_t data_offset;   /* start of the tensor data section */
    int mapped;             /* 1: base is an mmap the reader owns */
    char *path;             /* for messages */
} skv_gguf;

/* Map and parse a file.  Returns NULL on error (message in skv_errmsg()). */
SKV_EXPORT skv_gguf *skv_gguf_open(const char *path);
/* Parse a buffer in memory; the buffer must outlive the result. */
SKV_EXPORT skv_gguf *skv_gguf_open_mem(const void *buf, size_t size, const char *name);
SKV_EXPORT void skv_gguf_close(skv_gguf *g);

/* Look-ups: NULL when absent. */
SKV_EXPORT const skv_gguf_kv *skv_gguf_find(const skv_gguf *g, const char *key);
SKV_EXPORT const skv_gguf_tensor *skv_gguf_tensor_find(const skv_gguf *g, const char *name);

/* Typed getters: 0 on success; SKV_EFORMAT (with message) when the key is
 * absent or its type does not convert exactly; *out unchanged on error. */
SKV_EXPORT int skv_gguf_get_u64(const skv_gguf *g, const char *key, uint64_t *out);
SKV_EXPORT int skv_gguf_get_u32(const skv_gguf *g, const char *key, uint32_t *out);
SKV_EXPORT int skv_gguf_get_f32(const skv_gguf *g, const char *key, float *out);
SKV_EXPORT int skv_gguf_get_bool(const skv_gguf *g, const char *key, int *out);
/* A string value: *s points into the file (not NUL-terminated), *len bytes. */
SKV_EXPORT int skv_gguf_get_str(const skv_gguf *g, const char *key, const char **s, uint64_t *len);
/* Copy a string value into buf (NUL-terminated, truncated to n-1 bytes). */
SKV_EXPORT int skv_gguf_get_strbuf(const skv_gguf *g, const char *key, char *buf, size_t n);

/* Walk a string array: fills ptrs[i], lens[i] for each of the kv's len
 * elements (arrays sized by the caller from v.len).  0 or <0. */
SKV_EXPORT int skv_gguf_array_strings(const skv_gguf_kv *kv, const char **ptrs, uint32_t *lens);
/* Element i of a numeric array as int64/double: 0 or <0 (bad type or index). */
SKV_EXPORT int skv_gguf_array_int(const skv_gguf_kv *kv, uint64_t i, int64_t *out);

SKV_EXPORT const char *skv_gguf_vtype_name(uint32_t type);

/* ---- ggml tensor types ---- */

SKV_EXPORT const char *skv_ggml_type_name(uint32_t type);   /* NULL if unsupported */
/* Elements per block and bytes per block; 0 for unsupported types. */
SKV_EXPORT uint32_t skv_ggml_block_elems(uint32_t type);
SKV_EXPORT uint32_t skv_ggml_block_bytes(uint32_t type);
/* Bytes of a row of n elements (n a multiple of the block): 0 or <0. */
SKV_EXPORT int skv_ggml_row_bytes(uint32_t type, uint64_t n, uint64_t *out);

/* Dequantize n elements (a multiple of the block size) to float32. */
SKV_EXPORT void skv_ggml_dequant(uint32_t type, const void *src, float *dst, size_t n);
/* Dot product of n quantized elements with n floats. */
SKV_EXPORT float skv_ggml_dot(uint32_t type, const void *w, const float *x, size_t n);
/* The scalar references of the above (always portable C). */
SKV_EXPORT void skv_ggml_dequant_ref(uint32_t type, const void *src, float *dst, size_t n);
SKV_EXPORT float skv_ggml_dot_ref(uint32_t type, const void *w, const float *x, size_t n);

/* Float vector kernels used by the model (SIMD when available). */
SKV_EXPORT float skv_vec_dot(const float *a, const float *b, size_t n);
SKV_EXPORT void skv_vec_axpy(float *y, float a, const float *x, size_t n);   /* y += a*x */

/* ---- integer dot products on int8 activations (as ggml's vec_dot) ----
 *
 * Activations are quantized in blocks of 32 to int8 with one float scale
 * (ggml's block_q8_1): x[i] ~ d * qs[i], d = max|x| / 127, rounding to
 * nearest even; sum = sum(qs) serves the types with an offset.  The weight
 * blocks are then multiplied in integers and scaled once per block. */
#define SKV_Q8_BLOCK 32
typedef struct skv_q8_block {
    float d;                    /* scale */
    int32_t sum;                /* sum of qs */
    int8_t qs[SKV_Q8_BLOCK];
} skv_q8_block;

/* Quantize n floats (n a multiple of 32) into n/32 blocks. */
SKV_EXPORT void skv_q8_quantize(const float *x, skv_q8_block *y, size_t n);
SKV_EXPORT void skv_q8_quantize_ref(const float *x, skv_q8_block *y, size_t n);
/* 1 for the weight types with integer dot products (q4_0, q4_1, q8_0). */
SKV_EXPORT int skv_ggml_q8_supported(uint32_t type);
/* out[t] = (row w of n elements) . (activation row t), t < nt <= 4; row t
 * starts at x + t*x_stride blocks.  Unsupported types leave out unchanged. */
SKV_EXPORT void skv_ggml_dot_q8(uint32_t type, const void *w, const skv_q8_block *x,
                                size_t x_stride, size_t n, uint32_t nt, float *out);
SKV_EXPORT void skv_ggml_dot_q8_ref(uint32_t type, const void *w, const skv_q8_block *x,
                                    size_t x_stride, size_t n, uint32_t nt, float *out);

/* Rows repacked in groups of 8 for the integer products (the ggml AMX/
 * repack idea): per block of 32 columns, the 8 rows' fp16 scales (and
 * offsets), then their quants interleaved 4 bytes per row, so that one
 * vector holds 4 columns of all 8 rows and one broadcast of 4 activations
 * feeds it (vpdpbusd); scales convert 8 at a time.  Same size as the ggml
 * rows.  Group layout per block: q4_1: d[8] m[8] (fp16), then 4 x 32 bytes,
 * byte 32c+4r+p = row r's qs[4c+p] (low nibble column 4c+p, high nibble
 * 16+4c+p); q4_0: d[8], the same 128 bytes; q8_0: d[8], then 8 x 32 bytes,
 * byte 32c+4r+p = row r's qs[4c+p].
 * skv_q8x8_bytes: the packed size of rows x n (0 when the type has no
 * integer products, n is not a multiple of 32 or rows of 8). */
SKV_EXPORT uint64_t skv_q8x8_bytes(uint32_t type, uint64_t n, uint64_t rows);
/* Pack `rows` ggml rows of n elements (row_bytes apart) into dst. */
SKV_EXPORT void skv_q8x8_pack(uint32_t type, const void *src, size_t row_bytes, uint64_t n,
                              uint64_t rows, void *dst);
/* One group of 8 packed rows (at g) times activation rows t < nt <= 4 (at
 * x + t*x_stride blocks): out[t*ldo + r] for rows r < 8. */
SKV_EXPORT void skv_q8x8_dot(uint32_t type, const void *g, const skv_q8_block *x, size_t x_stride,
                             size_t n, uint32_t nt, float *out, size_t ldo);
SKV_EXPORT void skv_q8x8_dot_ref(uint32_t type, const void *g, const skv_q8_block *x,
                                 size_t x_stride, size_t n, uint32_t nt, float *out, size_t ldo);

/* SIMD selection: 1 when the AVX2/FMA path is in use.  skv_simd_enable(0)
 * forces the scalar paths (tests compare the two); enable(1) restores
 * run-time detection.  Returns the resulting state. */
SKV_EXPORT int skv_simd_active(void);
SKV_EXPORT int skv_simd_enable(int on);
/* Level in use: 0 scalar, 1 AVX2/FMA/F16C, 2 AVX2 with vpdpbusd integer
 * dot products (AVX-VNNI, or AVX-512 VNNI + VL on YMM registers).
 * skv_simd_set_level(max) caps it at what the CPU has (tests run each
 * path) and returns the level now active. */
#define SKV_SIMD_SCALAR 0
#define SKV_SIMD_AVX2 1
#define SKV_SIMD_VNNI 2
SKV_EXPORT int skv_simd_level(void);
SKV_EXPORT int skv_simd_set_level(int max);

#ifdef __cplusplus
}
#endif
#endif
