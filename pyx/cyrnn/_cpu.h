/* The widest SIMD build of cyrnn's own C code this CPU runs: 2 AVX-512, 1 AVX2 with FMA, 0 the
 * baseline (and 0 off x86-64, or with compilers without GCC's CPU builtins). CYRNN_MAX_BUILD,
 * set when the extension is built (CYRNN_SIMD=avx2 or =baseline, see setup.py), caps it: to
 * measure what a CPU without AVX-512 would run, or to keep AVX-512 off. */
#ifndef CYRNN_CPU_H
#define CYRNN_CPU_H

#ifndef CYRNN_MAX_BUILD
#define CYRNN_MAX_BUILD 2
#endif

static inline int cyrnn_cpu_build(void)
{
#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
    if (CYRNN_MAX_BUILD >= 2 && __builtin_cpu_supports("avx512f"))
        return 2;
    if (CYRNN_MAX_BUILD >= 1 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return 1;
#endif
    return 0;
}

#endif
