/* attend_i8_avxvnni.c -- the int8 attention kernels with AVX-VNNI
 * (vpdpbusd, VEX-encoded: CPUs without AVX-512).
 * attend_i8.h holds the kernels; this file says which instructions they
 * use, and attend.c picks them at run time. */
#include "attend_kern.h"

#ifdef SKV_X86
#define I8_ISA avxvnni
#define I8_TARGET "avx2,fma,f16c,bmi2,avxvnni"
#define I8_DP(acc, a, b) _mm256_dpbusd_avx_epi32((acc), (a), (b))
#define I8_DP8 I8_DP
#define I8_UNPACK i8_unpack
#include "attend_i8.h"
#endif /* SKV_X86 */
