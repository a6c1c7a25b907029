/* attend_i8_avx2.c -- the int8 attention kernels with AVX2 (vpmaddubsw +
 * vpmaddwd: every CPU with AVX2).
 * attend_i8.h holds the kernels; this file says which instructions they
 * use, and attend.c picks them at run time. */
#include "attend_kern.h"

#ifdef SKV_X86
#define I8_ISA avx2
#define I8_TARGET "avx2,fma,f16c,bmi2"
#define I8_UNPACK i8_unpack
#define I8_DP(acc, a, b)                                                                       \
    _mm256_add_epi32((acc), _mm256_madd_epi16(_mm256_maddubs_epi16((a), (b)),                  \
                                              _mm256_set1_epi16(1)))
/* 8-bit codes: vpmaddubsw would saturate (2 * 255 * 127 > 32767), so the
 * codes go in as two nibbles, code = lo + 16 hi, each sum exact */
#define I8_DP8(acc, a, b)                                                                      \
    _mm256_add_epi32(                                                                          \
        (acc),                                                                                 \
        _mm256_add_epi32(I8_DP(_mm256_setzero_si256(),                                          \
                               _mm256_and_si256((a), _mm256_set1_epi8(0x0f)), (b)),            \
                         _mm256_slli_epi32(I8_DP(_mm256_setzero_si256(),                        \
                                                 _mm256_and_si256(_mm256_srli_epi16((a), 4),   \
                                                                  _mm256_set1_epi8(0x0f)),     \
                                                 (b)),                                         \
                                           4)))
#include "attend_i8.h"
#endif /* SKV_X86 */
