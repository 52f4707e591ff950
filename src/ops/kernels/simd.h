/* dpa3: compile-time helpers for the element-wise kernels.

   DPA3_MULTIVERSION compiles a function for AVX-512, AVX2+FMA and baseline x86-64 and picks
   one at load time (GCC function multi-versioning), so the library stays portable without
   -march flags. The files using it are built with -O3 -ffast-math (see CMakeLists.txt) so that
   reductions and exp/tanh vectorise. */
#ifndef DPA3_SIMD_H
#define DPA3_SIMD_H

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define DPA3_MULTIVERSION __attribute__((target_clones("avx512f", "avx2,fma", "default")))
#else
#define DPA3_MULTIVERSION
#endif
#define DPA3_INLINE inline __attribute__((always_inline))

#endif
