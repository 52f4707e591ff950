/* dpa3: compile-time helpers for the element-wise kernels.

   DPA3_MULTIVERSION compiles a function for x86-64-v4 (AVX-512), x86-64-v3 (AVX2 + FMA) and
   baseline x86-64 and picks one at load time (GCC function multi-versioning), so the library
   stays portable without -march flags. The files using it are built with -O3 -ffast-math (see
   CMakeLists.txt) so that reductions and exp/tanh vectorise and a * b + c contracts into FMA.

   A clone per ISA level, not per extension: in target_clones every comma-separated name is a
   clone of its own, so a list such as ("avx512f", "avx2,fma", "default") builds separate avx2
   and fma clones, and the avx2 one, which the resolver prefers on AVX2 machines, has no FMA
   (neither has avx512f: it does not imply FMA). The arch=x86-64-vN levels (GCC >= 12) include
   FMA; older GCC gets per-extension clones without it. */
#ifndef DPA3_SIMD_H
#define DPA3_SIMD_H

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#if __GNUC__ >= 12
#define DPA3_MULTIVERSION \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define DPA3_MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#else
#define DPA3_MULTIVERSION
#endif
#define DPA3_INLINE inline __attribute__((always_inline))

#endif
