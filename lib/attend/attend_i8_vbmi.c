/* attend_i8_vbmi.c -- the int8 attention kernels with AVX-512 VNNI, the
 * codes unpacked with AVX-512 VBMI (vpmultishiftqb, vpermb).
 * attend_i8.h holds the kernels; this file says which instructions they
 * use, and attend.c picks them at run time. */
#include "attend_kern.h"

#ifdef SKV_X86
#define I8_ISA vbmi
#define I8_TARGET "avx2,fma,f16c,bmi2,avx512f,avx512vl,avx512vnni,avx512vbmi"
#define I8_DP(acc, a, b) _mm256_dpbusd_epi32((acc), (a), (b))
#define I8_DP8 I8_DP /* no saturation: exact for 8-bit codes too */
#define I8_UNPACK i8_unpack_vbmi
#include "attend_i8.h"
#endif /* SKV_X86 */
