/* attend_i8_vnni512.c -- the int8 attention kernels with AVX-512 VNNI on
 * 256-bit vectors (vpdpbusd).
 * attend_i8.h holds the kernels; this file says which instructions they
 * use, and attend.c picks them at run time. */
#include "attend_kern.h"

#ifdef SKV_X86
#define I8_ISA vnni512
#define I8_TARGET "avx2,fma,f16c,bmi2,avx512f,avx512vl,avx512vnni"
#define I8_DP(acc, a, b) _mm256_dpbusd_epi32((acc), (a), (b))
#define I8_DP8 I8_DP /* no saturation: exact for 8-bit codes too */
#define I8_UNPACK i8_unpack
#include "attend_i8.h"
#endif /* SKV_X86 */
