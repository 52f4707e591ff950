/* -*- c++ -*- ----------------------------------------------------------
   dpa3: register-blocked matrix products for the angle kernels.

   The angle kernels multiply tiles of a few dozen angle rows by the layer's
   weights: inner dimensions of 32 to ~100 (a_dim, the block width), too
   small for a BLAS call per tile to pay off (dispatch, tensor wrappers and
   packing cost as much as the arithmetic). small_gemm computes

     C [m, n] = A [m, k] B [k, n] (+ beta C)

   with A read through two strides (A[i, p] = a[i * ars + p * acs], so A^T
   costs nothing), B and C row-major with leading dimensions ldb, ldc. Rows
   of C are taken 6 at a time against 2 vectors of B columns (6 x 16 floats
   or 6 x 8 doubles: 12 accumulators that stay in registers over the whole
   k loop); column tails go one vector at a time, then scalar. Every entry
   of C is one sequential sum over p (no blocking of k), so the result does
   not depend on where a tile starts.

   The functions are inline templates: they are compiled into the caller
   with its target (the multi-versioned kernels of simd.h), so the
   AVX-512/AVX2 clones get FMA on 256-bit vectors. The files including
   this header are built with -ffast-math, which also lets the compiler
   contract a * b + c into FMA (ISO C++ mode does not otherwise).
------------------------------------------------------------------------- */

#ifndef DPA3_SMALL_GEMM_H
#define DPA3_SMALL_GEMM_H

#include <cstdint>
#include <cstring>

#include "simd.h"

// The vectors below live in registers of always-inlined functions; GCC's note that passing
// them by value would change the ABI without AVX does not apply.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace dpa3 {
namespace gemm {

template <typename T> struct Vec;
template <> struct Vec<float> {
  typedef float type __attribute__((vector_size(32)));
};
template <> struct Vec<double> {
  typedef double type __attribute__((vector_size(32)));
};
template <typename T> using V = typename Vec<T>::type;
template <typename T> constexpr int kLanes = int(sizeof(V<T>) / sizeof(T));
constexpr int kRows = 6;    // rows of C per register tile

template <typename T> DPA3_INLINE V<T> load(const T *p)
{
  V<T> v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename T> DPA3_INLINE void store(T *p, const V<T> &v) { std::memcpy(p, &v, sizeof v); }

// C[MR, NV vectors] = A[MR, k] B[k, NV vectors] (+ beta C)
template <typename T, int MR, int NV>
DPA3_INLINE void tile(int64_t k, const T *a, int64_t ars, int64_t acs, const T *b, int64_t ldb,
                      T beta, T *c, int64_t ldc)
{
  constexpr int L = kLanes<T>;
  V<T> acc[MR][NV];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = V<T>{};
  for (int64_t p = 0; p < k; ++p) {
    V<T> bv[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) bv[j] = load(b + p * ldb + j * L);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const V<T> av = V<T>{} + a[i * ars + p * acs];
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] += av * bv[j];
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) {
      T *cij = c + i * ldc + j * L;
      if (beta == T(0))
        store(cij, acc[i][j]);
      else
        store(cij, acc[i][j] + beta * load(cij));
    }
}

// rows [0, mr) of C (mr <= kRows) against NV vectors of columns
template <typename T, int NV>
DPA3_INLINE void rows(int64_t mr, int64_t k, const T *a, int64_t ars, int64_t acs, const T *b,
                      int64_t ldb, T beta, T *c, int64_t ldc)
{
  switch (mr) {
    case 6: tile<T, 6, NV>(k, a, ars, acs, b, ldb, beta, c, ldc); break;
    case 5: tile<T, 5, NV>(k, a, ars, acs, b, ldb, beta, c, ldc); break;
    case 4: tile<T, 4, NV>(k, a, ars, acs, b, ldb, beta, c, ldc); break;
    case 3: tile<T, 3, NV>(k, a, ars, acs, b, ldb, beta, c, ldc); break;
    case 2: tile<T, 2, NV>(k, a, ars, acs, b, ldb, beta, c, ldc); break;
    case 1: tile<T, 1, NV>(k, a, ars, acs, b, ldb, beta, c, ldc); break;
    default: break;
  }
}

// C [m, n] = A [m, k] B [k, n] (+ beta C; beta == 0: C is not read), A[i, p] = a[i ars + p acs]
template <typename T>
DPA3_INLINE void small_gemm(int64_t m, int64_t n, int64_t k, const T *a, int64_t ars, int64_t acs,
                            const T *b, int64_t ldb, T beta, T *c, int64_t ldc)
{
  constexpr int L = kLanes<T>;
  const int64_t n2 = n / (2 * L) * (2 * L), n1 = n / L * L;
  for (int64_t i = 0; i < m; i += kRows) {
    const int64_t mr = m - i < kRows ? m - i : kRows;
    const T *ai = a + i * ars;
    T *ci = c + i * ldc;
    for (int64_t j = 0; j < n2; j += 2 * L)
      rows<T, 2>(mr, k, ai, ars, acs, b + j, ldb, beta, ci + j, ldc);
    if (n1 > n2) rows<T, 1>(mr, k, ai, ars, acs, b + n2, ldb, beta, ci + n2, ldc);
    for (int64_t r = 0; r < mr; ++r)
      for (int64_t j = n1; j < n; ++j) {
        T s = 0;
        for (int64_t p = 0; p < k; ++p) s += ai[r * ars + p * acs] * b[p * ldb + j];
        T &cr = ci[r * ldc + j];
        cr = beta == T(0) ? s : s + beta * cr;
      }
  }
}

// out [k, n] = b^T for b [n, k] with leading dimension ldb (row-major B for small_gemm)
template <typename T> inline void transpose(int64_t n, int64_t k, const T *b, int64_t ldb, T *out)
{
  for (int64_t j = 0; j < n; ++j)
    for (int64_t p = 0; p < k; ++p) out[p * n + j] = b[j * ldb + p];
}

}    // namespace gemm
}    // namespace dpa3

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

#endif
