/* smartkv_npy.h -- NumPy .npy files (format versions 1.0, 2.0, 3.0).
 *
 * Only what trace import/export needs: little-endian float16/float32,
 * C order, up to 8 dimensions.  Headers are parsed strictly; anything else is
 * a clear error. */
#ifndef SMARTKV_NPY_H
#define SMARTKV_NPY_H

#include "smartkv_error.h"

#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SKV_NPY_MAX_DIMS 8
#define SKV_NPY_MAX_HEADER 65536u

typedef struct skv_npy_hdr {
    uint32_t dtype;          /* SKV_F32 or SKV_F16 (enum skv_dtype) */
    int ndim;
    uint64_t shape[SKV_NPY_MAX_DIMS];
    uint64_t data_offset;    /* bytes before the first element */
    uint64_t data_bytes;     /* product of shape times element size */
} skv_npy_hdr;

/* Parse a header from the first n bytes of a file.  Returns 0, a positive
 * number of bytes needed when n is too short to decide, or <0 on error. */
SKV_EXPORT int skv_npy_parse(const uint8_t *buf, size_t n, skv_npy_hdr *h);

/* Read and parse the header of an open file (positioned at its start) and
 * check that the file holds exactly the data it declares (file_size, if
 * known, else pass UINT64_MAX). */
SKV_EXPORT int skv_npy_read_header(FILE *f, uint64_t file_size, skv_npy_hdr *h);

/* Format a version 1.0 header (padded to 64 bytes) into buf[cap];
 * returns its length or <0. */
SKV_EXPORT int skv_npy_format_header(uint32_t dtype, int ndim, const uint64_t *shape,
                                     uint8_t *buf, size_t cap);

#ifdef __cplusplus
}
#endif
#endif
