/* -*- c++ -*- ----------------------------------------------------------
   dpa3: helpers shared by the angle-block kernels (angle_block.cpp: forward
   and first derivatives; angle_block_grad2.cpp: second derivatives).

   The layout (angles grouped by edge ij, edges by centre i) and the cut
   into blocks of consecutive centres are described in angle_block.cpp.
------------------------------------------------------------------------- */

#ifndef DPA3_ANGLE_COMMON_H
#define DPA3_ANGLE_COMMON_H

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "kernels.h"
#include "simd.h"
#include "small_gemm.h"

namespace dpa3 {
namespace angle {

constexpr int64_t kBlockAngles = 1024;
// Angle rows per tile of the first-order kernels (angle_block.cpp): a [tile, D] buffer (~14 kB
// at D = 96, float) that stays in L1 between its GEMM and the element-wise pass over it.
constexpr int64_t kTileRows = 36;

// gemm::small_gemm (small_gemm.h) compiled for the CPU at hand (defined in angle_block.cpp)
void small_gemm_mv(int64_t m, int64_t n, int64_t k, const float *a, int64_t ars, int64_t acs,
                   const float *b, int64_t ldb, float beta, float *c, int64_t ldc);
void small_gemm_mv(int64_t m, int64_t n, int64_t k, const double *a, int64_t ars, int64_t acs,
                   const double *b, int64_t ldb, double beta, double *c, int64_t ldc);

// Row-major C [M, N] = op(A) op(B) + beta C, op(X) = X or X^T (tA/tB), leading dimensions in
// elements. Without tA (a small inner dimension: the angle width or a_dim) through small_gemm
// (op(B) = B^T is transposed into a per-thread buffer first); with tA (the inner dimension runs
// over the angles of a block) through at::mm_out on views of the buffers (no allocation; torch's
// own BLAS dispatch and threading rules apply inside our parallel region).
template <typename T>
inline void gemm_rows(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T *a, int64_t lda,
                      const T *b, int64_t ldb, T beta, T *c, int64_t ldc)
{
  if (m == 0 || n == 0) return;
  if (!ta) {
    if (tb) {
      thread_local std::vector<T> bt;
      if (int64_t(bt.size()) < k * n) bt.resize(k * n);
      gemm::transpose(n, k, b, ldb, bt.data());
      small_gemm_mv(m, n, k, a, lda, 1, bt.data(), n, beta, c, ldc);
    } else {
      small_gemm_mv(m, n, k, a, lda, 1, b, ldb, beta, c, ldc);
    }
    return;
  }
  const auto opt = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  at::Tensor A = at::from_blob(const_cast<T *>(a), {k, m}, {lda, 1}, opt).t();
  at::Tensor B = at::from_blob(const_cast<T *>(b),
                               tb ? at::IntArrayRef{n, k} : at::IntArrayRef{k, n}, {ldb, 1}, opt);
  at::Tensor C = at::from_blob(c, {m, n}, {ldc, 1}, opt);
  if (tb) B = B.t();
  if (beta == T(0))
    at::mm_out(C, A, B);
  else
    C.addmm_(A, B, beta, 1);
}

template <typename T> struct ActParams {
  int64_t kind;
  T thr, slope, silu_t;
};

template <typename T> inline ActParams<T> act_params(int64_t kind, double threshold)
{
  const double s = 1.0 / (1.0 + std::exp(-threshold));
  return {kind, T(threshold), T(s * (1.0 + threshold * (1.0 - s))), T(threshold * s)};
}

// y = act(x), dy = act'(x), ddy = act''(x) for n values (dy and ddy may be null; ddy needs dy):
//   silu:  s = sigmoid(x), y = x s, y' = s (1 + x (1 - s)), y'' = s (1 - s) (2 + x (1 - 2 s))
//   tanh:  y' = 1 - y^2, y'' = -2 y y'
//   silut above the threshold T: t = tanh(k (x - T)), y = t + silu(T), y' = k (1 - t^2),
//          y'' = -2 k t y' (k = silu'(T), the slope that makes y' continuous at T)
template <typename T>
DPA3_INLINE void activate(const ActParams<T> &f, const T *x, T *y, T *dy, int64_t n,
                          T *ddy = nullptr)
{
  if (f.kind == ACT_TANH) {
    for (int64_t d = 0; d < n; ++d) y[d] = std::tanh(x[d]);
    if (dy)
      for (int64_t d = 0; d < n; ++d) dy[d] = T(1) - y[d] * y[d];
    if (ddy)
      for (int64_t d = 0; d < n; ++d) ddy[d] = T(-2) * y[d] * dy[d];
    return;
  }
  if (ddy) {
    for (int64_t d = 0; d < n; ++d) {
      const T s = T(1) / (T(1) + std::exp(-x[d])), s1 = T(1) - s;
      y[d] = x[d] * s;
      dy[d] = s * (T(1) + x[d] * s1);
      ddy[d] = s * s1 * (T(2) + x[d] * (s1 - s));
    }
  } else {
    for (int64_t d = 0; d < n; ++d) {
      const T s = T(1) / (T(1) + std::exp(-x[d]));
      y[d] = x[d] * s;
      if (dy) dy[d] = s * (T(1) + x[d] * (T(1) - s));
    }
  }
  if (f.kind == ACT_SILUT && n > 0) {
    // rare: the tanh tail above the threshold. The loop below does not vectorise (a call under a
    // condition); a vectorised maximum first skips it for the (usual) rows without such entries.
    T mx = x[0];
    for (int64_t d = 1; d < n; ++d) mx = std::max(mx, x[d]);
    if (mx < f.thr) return;
    for (int64_t d = 0; d < n; ++d) {
      if (x[d] >= f.thr) {
        const T t = std::tanh(f.slope * (x[d] - f.thr));
        y[d] = t + f.silu_t;
        if (dy) dy[d] = f.slope * (T(1) - t * t);
        if (ddy) ddy[d] = T(-2) * f.slope * t * dy[d];
      }
    }
  }
}

// Cuts the centres into blocks of about kBlockAngles angles (at least one centre each; the cut
// does not depend on the number of threads, so neither do the results) and calls
// block(first edge, end edge, buf) for every block, in parallel over blocks. buf is a scratch
// vector owned by each thread's range of blocks (grown, never shrunk: one allocation per thread
// and call instead of one per block).
template <typename T, typename F>
void for_each_block(const AngleArgs &in, std::atomic<bool> &bad, F &&block)
{
  const int64_t ncenter = in.nptr.numel() - 1;
  const int64_t *np = in.nptr.data_ptr<int64_t>(), *ap = in.aptr.data_ptr<int64_t>(),
                *ek = in.eik.data_ptr<int64_t>();
  const int64_t nedge = in.pe.size(0);
  if (np[0] != 0 || np[ncenter] != nedge || ap[nedge] != in.a.size(0)) {
    bad = true;
    return;
  }
  std::vector<int64_t> start{0};    // first centre of every block, then ncenter
  for (int64_t c = 0; c < ncenter;) {
    const int64_t q0 = ap[np[c]];
    int64_t cend = c + 1;
    while (cend < ncenter && ap[np[cend + 1]] - q0 <= kBlockAngles) ++cend;
    start.push_back(cend);
    c = cend;
  }
  const int64_t nblock = int64_t(start.size()) - 1;
  at::parallel_for(0, nblock, 1, [&](int64_t b0, int64_t b1) {
    std::vector<T> buf;
    for (int64_t k = b0; k < b1; ++k) {
      const int64_t c = start[k], cend = start[k + 1];
      for (int64_t i = c; i < cend; ++i)    // every k-edge must belong to the angle's centre
        for (int64_t q = ap[np[i]]; q < ap[np[i + 1]]; ++q)
          if (ek[q] < np[i] || ek[q] >= np[i + 1]) bad = true;
      if (bad) return;
      block(np[c], np[cend], buf);
    }
  });
}

}    // namespace angle
}    // namespace dpa3

#endif
