/* ----------------------------------------------------------------------
   dpa3: row gather / scatter-sum with a precomputed inverse index.

   gather_rows(x, idx, perm, ptr)  = x[idx]                        [M, d]
   scatter_rows(y, idx, perm, ptr) = out[r] = sum_{q: idx[q] == r} y[q]   [n, d]

   perm = argsort(idx) and ptr [n + 1] are the CSR form of the inverse index
   (rows r's entries are perm[ptr[r]:ptr[r+1]]). Each op is the other's
   adjoint, so their autograd Functions call each other: derivatives of any
   order stay on these kernels. The scatter runs in parallel over destination
   rows without atomics; torch's index_add (index_select's backward) is
   serial or, with several threads, slow for the narrow rows DPA3 uses.
   These are the CPU kernels; the primitives and their other devices are
   described in kernels.h.
------------------------------------------------------------------------- */

#include "row_index.h"

#include "kernels.h"
#include "simd.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace dpa3 {

namespace {

// Rows [r0, r1) of segment_sum's output: dst[r] = sum of the rows pm[off[r]:off[r+1]] of src
// (each row summed in index order, so the result does not depend on the cut into ranges).
template <typename T>
DPA3_INLINE void segment_rows_body(T *dst, const T *src, const int64_t *pm, const int64_t *off,
                                   int64_t r0, int64_t r1, int64_t width)
{
  for (int64_t r = r0; r < r1; ++r) {
    T *d = dst + r * width;
    for (int64_t c = 0; c < width; ++c) d[c] = 0;
    for (int64_t t = off[r]; t < off[r + 1]; ++t) {
      const T *s = src + pm[t] * width;
      for (int64_t c = 0; c < width; ++c) d[c] += s[c];
    }
  }
}

DPA3_MULTIVERSION void segment_rows(float *dst, const float *src, const int64_t *pm,
                                    const int64_t *off, int64_t r0, int64_t r1, int64_t width)
{
  segment_rows_body(dst, src, pm, off, r0, r1, width);
}

DPA3_MULTIVERSION void segment_rows(double *dst, const double *src, const int64_t *pm,
                                    const int64_t *off, int64_t r0, int64_t r1, int64_t width)
{
  segment_rows_body(dst, src, pm, off, r0, r1, width);
}

// Elements (rows summed or zeroed, times their width) per task of segment_sum.
constexpr int64_t kSegmentGrain = 1 << 15;

// First rows of `parts` consecutive ranges of [0, nrows) with about equal work (summed rows plus
// written rows, off[r] - off[0] + r before row r), then nrows. Rows hold very different numbers
// of entries (the centres of a small system, ghost rows with few neighbours), so equal numbers
// of rows per thread leave one thread waiting for the other.
std::vector<int64_t> balanced_cuts(const int64_t *off, int64_t nrows, int64_t parts)
{
  std::vector<int64_t> cut(parts + 1, nrows);
  cut[0] = 0;
  const int64_t total = off[nrows] - off[0] + nrows;
  for (int64_t p = 1; p < parts; ++p) {
    const int64_t target = total * p / parts;
    int64_t lo = cut[p - 1], hi = nrows;
    while (lo < hi) {    // the first row r with off[r] - off[0] + r >= target
      const int64_t mid = lo + (hi - lo) / 2;
      if (off[mid] - off[0] + mid < target)
        lo = mid + 1;
      else
        hi = mid;
    }
    cut[p] = lo;
  }
  return cut;
}

}    // namespace

// out [n, ...] with out[r] = sum of the rows perm[ptr[r]:ptr[r+1]] of y; parallel over ranges of
// rows of about equal work, no atomics. n = ptr.numel() - 1. Not differentiable (the CPU kernel
// behind scatter_rows).
at::Tensor cpu::segment_sum(const at::Tensor &y_, const at::Tensor &perm_, const at::Tensor &ptr_)
{
  const at::Tensor y = y_.contiguous(), perm = perm_.contiguous(), ptr = ptr_.contiguous();
  const int64_t nrows = ptr.numel() - 1;
  TORCH_CHECK(y.size(0) == perm.numel(), "dpa3::scatter_rows: one value row per index needed");
  auto sizes = y.sizes().vec();
  sizes[0] = nrows;
  at::Tensor out = at::empty(sizes, y.options());
  const int64_t width = y.size(0) ? y.numel() / y.size(0)
                                  : (out.numel() / std::max<int64_t>(nrows, 1));
  if (nrows == 0) return out;
  const int64_t *pm = perm.data_ptr<int64_t>(), *off = ptr.data_ptr<int64_t>();
  const int64_t work = (off[nrows] - off[0] + nrows) * std::max<int64_t>(width, 1);
  const int64_t parts = std::clamp<int64_t>(work / kSegmentGrain, 1,
                                            std::min<int64_t>(nrows, 8 * at::get_num_threads()));
  const std::vector<int64_t> cut = balanced_cuts(off, nrows, parts);
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "dpa3_scatter_rows", [&] {
    const scalar_t *src = y.data_ptr<scalar_t>();
    scalar_t *dst = out.data_ptr<scalar_t>();
    at::parallel_for(0, parts, 1, [&](int64_t p0, int64_t p1) {
      segment_rows(dst, src, pm, off, cut[p0], cut[p1], width);
    });
  });
  return out;
}

at::Tensor cpu::gather(const at::Tensor &x_, const at::Tensor &idx_)
{
  const at::Tensor x = x_.contiguous(), idx = idx_.contiguous();
  auto sizes = x.sizes().vec();
  sizes[0] = idx.numel();
  at::Tensor y = at::empty(sizes, x.options());
  const int64_t width = x.numel() / std::max<int64_t>(x.size(0), 1);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dpa3_gather_rows", [&] {
    const scalar_t *src = x.data_ptr<scalar_t>();
    scalar_t *dst = y.data_ptr<scalar_t>();
    const int64_t *ix = idx.data_ptr<int64_t>();
    at::parallel_for(0, idx.numel(), 1024, [&](int64_t q0, int64_t q1) {
      for (int64_t q = q0; q < q1; ++q) {
        const scalar_t *s = src + ix[q] * width;
        scalar_t *d = dst + q * width;
        for (int64_t c = 0; c < width; ++c) d[c] = s[c];
      }
    });
  });
  return y;
}

namespace {

void check(const at::Tensor &v, const at::Tensor &idx, const at::Tensor &perm,
           const at::Tensor &ptr, const char *who)
{
  TORCH_CHECK(v.dim() >= 1, who, ": values need at least one dimension");
  TORCH_CHECK(idx.scalar_type() == at::kLong && perm.scalar_type() == at::kLong &&
                  ptr.scalar_type() == at::kLong,
              who, ": idx, perm and ptr must be int64");
  TORCH_CHECK(idx.numel() == perm.numel(), who, ": perm must have one entry per index");
  TORCH_CHECK(ptr.numel() >= 1, who, ": ptr needs n + 1 offsets");
  TORCH_CHECK(idx.device() == v.device() && perm.device() == v.device() &&
                  ptr.device() == v.device(),
              who, ": idx, perm and ptr must be on the values' device (", v.device(), ")");
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class GatherRows : public torch::autograd::Function<GatherRows> {
 public:
  static at::Tensor forward(AutogradContext *ctx, const at::Tensor &x, const at::Tensor &idx,
                            const at::Tensor &perm, const at::Tensor &ptr)
  {
    ctx->save_for_backward({idx, perm, ptr});
    TORCH_CHECK(x.size(0) == ptr.numel() - 1, "dpa3::gather_rows: x has ", x.size(0),
                " rows, ptr says ", ptr.numel() - 1);
    return prim::gather(x, idx);
  }
  static variable_list backward(AutogradContext *ctx, variable_list g)
  {
    auto s = ctx->get_saved_variables();
    return {scatter_rows(g[0], s[0], s[1], s[2]), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class ScatterRows : public torch::autograd::Function<ScatterRows> {
 public:
  static at::Tensor forward(AutogradContext *ctx, const at::Tensor &y, const at::Tensor &idx,
                            const at::Tensor &perm, const at::Tensor &ptr)
  {
    ctx->save_for_backward({idx, perm, ptr});
    TORCH_CHECK(y.size(0) == perm.numel(), "dpa3::scatter_rows: one value row per index needed");
    return prim::segment_sum(y, idx, perm, ptr);
  }
  static variable_list backward(AutogradContext *ctx, variable_list g)
  {
    auto s = ctx->get_saved_variables();
    return {GatherRows::apply(g[0], s[0], s[1], s[2]), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor gather_rows(const at::Tensor &x, const at::Tensor &idx, const at::Tensor &perm,
                       const at::Tensor &ptr)
{
  check(x, idx, perm, ptr, "dpa3::gather_rows");
  return GatherRows::apply(x, idx, perm, ptr);
}

}    // namespace

at::Tensor scatter_rows(const at::Tensor &y, const at::Tensor &idx, const at::Tensor &perm,
                        const at::Tensor &ptr)
{
  check(y, idx, perm, ptr, "dpa3::scatter_rows");
  return ScatterRows::apply(y, idx, perm, ptr);
}

}    // namespace dpa3

TORCH_LIBRARY_FRAGMENT(dpa3, m)
{
  m.def("gather_rows(Tensor x, Tensor idx, Tensor perm, Tensor ptr) -> Tensor");
  m.def("scatter_rows(Tensor y, Tensor idx, Tensor perm, Tensor ptr) -> Tensor");
}

TORCH_LIBRARY_IMPL(dpa3, CompositeImplicitAutograd, m)
{
  m.impl("gather_rows", &dpa3::gather_rows);
  m.impl("scatter_rows", &dpa3::scatter_rows);
}
