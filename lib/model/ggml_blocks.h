/* ggml_blocks.h -- internal (not installed): the ggml block layouts
 * (ggml-common.h), shared by the float and the integer kernels. */
#ifndef SKV_GGML_BLOCKS_H
#define SKV_GGML_BLOCKS_H

#include <stdint.h>

#define QK 32      /* elements per block for the legacy types */
#define QK_K 256   /* elements per super-block for the k-quants */

typedef uint16_t half;

typedef struct { half d; uint8_t qs[QK / 2]; } blk_q4_0;
typedef struct { half d, m; uint8_t qs[QK / 2]; } blk_q4_1;
typedef struct { half d; uint8_t qh[4]; uint8_t qs[QK / 2]; } blk_q5_0;
typedef struct { half d, m; uint8_t qh[4]; uint8_t qs[QK / 2]; } blk_q5_1;
typedef struct { half d; int8_t qs[QK]; } blk_q8_0;
typedef struct { half d, dmin; uint8_t scales[12]; uint8_t qs[QK_K / 2]; } blk_q4_K;
typedef struct { half d, dmin; uint8_t scales[12]; uint8_t qh[QK_K / 8]; uint8_t qs[QK_K / 2]; } blk_q5_K;
typedef struct { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; half d; } blk_q6_K;

_Static_assert(sizeof(blk_q4_0) == 18, "q4_0 block");
_Static_assert(sizeof(blk_q4_1) == 20, "q4_1 block");
_Static_assert(sizeof(blk_q5_0) == 22, "q5_0 block");
_Static_assert(sizeof(blk_q5_1) == 24, "q5_1 block");
_Static_assert(sizeof(blk_q8_0) == 34, "q8_0 block");
_Static_assert(sizeof(blk_q4_K) == 144, "q4_K block");
_Static_assert(sizeof(blk_q5_K) == 176, "q5_K block");
_Static_assert(sizeof(blk_q6_K) == 210, "q6_K block");

#endif
