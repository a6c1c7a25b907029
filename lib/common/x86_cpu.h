/* x86_cpu.h -- internal (not installed): CPU feature tests for the SIMD
 * paths.  CPUID/XGETBV directly, because clang's __builtin_cpu_supports
 * does not know "f16c", and both compilers must build the library. */
#ifndef SKV_X86_CPU_H
#define SKV_X86_CPU_H

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

/* AVX with the YMM state saved by the OS, and F16C. */
static inline int skv_x86_f16c(void)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_F16C) || !(c & bit_AVX) ||
        !(c & bit_OSXSAVE))
        return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (lo & 6u) == 6u;
}

/* AVX-VNNI (VEX-encoded vpdpbusd on YMM): CPUID leaf 7 subleaf 1, EAX bit 4. */
static inline int skv_x86_avxvnni(void)
{
    unsigned a, b, c, d;
    if (!skv_x86_f16c() || !__get_cpuid_count(7, 1, &a, &b, &c, &d))
        return 0;
    return (a >> 4) & 1u;
}

/* AVX-512 VNNI with VL (EVEX vpdpbusd on YMM): CPUID leaf 7 EBX bits 16
 * (F) and 31 (VL), ECX bit 11; the OS must save the opmask and ZMM state
 * (XCR0 bits 5-7) even for the 256-bit forms. */
static inline int skv_x86_avx512vnni(void)
{
    unsigned a, b, c, d;
    if (!skv_x86_f16c() || !__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return 0;
    if (!((b >> 16) & 1u) || !((b >> 31) & 1u) || !((c >> 11) & 1u))
        return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (lo & 0xe6u) == 0xe6u;
}

/* AVX-512 VBMI (vpermb, vpmultishiftqb): CPUID leaf 7 ECX bit 1; with
 * skv_x86_avx512vnni's state checks. */
static inline int skv_x86_avx512vbmi(void)
{
    unsigned a, b, c, d;
    if (!skv_x86_avx512vnni() || !__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return 0;
    return (c >> 1) & 1u;
}
#else
static inline int skv_x86_f16c(void) { return 0; }
static inline int skv_x86_avxvnni(void) { return 0; }
static inline int skv_x86_avx512vnni(void) { return 0; }
static inline int skv_x86_avx512vbmi(void) { return 0; }
#endif
#endif
