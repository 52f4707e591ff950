/* ----------------------------------------------------------------------
   dpa3: CUDA kernels of the CSR scatter-sums (see kernels.h).

   segment_sum(y, perm, ptr)    out[r, c]    = sum_{t in [ptr[r], ptr[r+1])} y[perm[t], c]
   outer_sum(h, g, perm, ptr)   S[r, c, j]   = sum_t h[perm[t], c] g[perm[t], j]

   One thread per output element sums its rows in CSR order: no atomics,
   so the result does not depend on scheduling (index_add on CUDA uses
   atomics, and its rounding changes from run to run). The inverse index
   (perm, ptr) is built once per step by the model.
------------------------------------------------------------------------- */

#include "kernels.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

namespace dpa3 {

namespace {

constexpr int kThreads = 256;

int64_t blocks_for(int64_t n) { return (n + kThreads - 1) / kThreads; }

template <typename T>
__global__ void segment_sum_kernel(const T *__restrict__ y, const int64_t *__restrict__ perm,
                                   const int64_t *__restrict__ ptr, T *__restrict__ out,
                                   int64_t nrows, int64_t width)
{
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= nrows * width) return;
  const int64_t r = i / width, c = i - r * width;
  T acc = 0;
  for (int64_t t = ptr[r]; t < ptr[r + 1]; ++t) acc += y[perm[t] * width + c];
  out[i] = acc;
}

template <typename T>
__global__ void outer_sum_kernel(const T *__restrict__ h, const T *__restrict__ g,
                                 const int64_t *__restrict__ perm, const int64_t *__restrict__ ptr,
                                 T *__restrict__ out, int64_t nrows, int64_t k, int64_t d)
{
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= nrows * k * d) return;
  const int64_t r = i / (k * d), rest = i - r * k * d, c = rest / d, j = rest - c * d;
  T acc = 0;
  for (int64_t t = ptr[r]; t < ptr[r + 1]; ++t) {
    const int64_t e = perm[t];
    acc += h[e * k + c] * g[e * d + j];
  }
  out[i] = acc;
}

}    // namespace

at::Tensor cuda::segment_sum(const at::Tensor &y_, const at::Tensor &perm_, const at::Tensor &ptr_)
{
  const c10::cuda::CUDAGuard guard(y_.device());
  const at::Tensor y = y_.contiguous(), perm = perm_.contiguous(), ptr = ptr_.contiguous();
  TORCH_CHECK(y.size(0) == perm.numel(), "dpa3::scatter_rows: one value row per index needed");
  const int64_t nrows = ptr.numel() - 1;
  auto sizes = y.sizes().vec();
  sizes[0] = nrows;
  at::Tensor out = at::empty(sizes, y.options());
  const int64_t width = nrows > 0 ? out.numel() / nrows : 0;
  const int64_t n = nrows * width;
  if (n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "dpa3_segment_sum_cuda", [&] {
    segment_sum_kernel<scalar_t><<<blocks_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        y.data_ptr<scalar_t>(), perm.data_ptr<int64_t>(), ptr.data_ptr<int64_t>(),
        out.data_ptr<scalar_t>(), nrows, width);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor cuda::outer_sum(const at::Tensor &h_, const at::Tensor &g_, const at::Tensor &perm_,
                           const at::Tensor &ptr_)
{
  const c10::cuda::CUDAGuard guard(g_.device());
  const at::Tensor h = h_.contiguous(), g = g_.contiguous(), perm = perm_.contiguous(),
                   ptr = ptr_.contiguous();
  const int64_t nrows = ptr.numel() - 1, k = h.size(1), d = g.size(1);
  at::Tensor out = at::empty({nrows, k, d}, g.options());
  const int64_t n = nrows * k * d;
  if (n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "dpa3_outer_sum_cuda", [&] {
    outer_sum_kernel<scalar_t><<<blocks_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        h.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), perm.data_ptr<int64_t>(),
        ptr.data_ptr<int64_t>(), out.data_ptr<scalar_t>(), nrows, k, d);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}    // namespace dpa3
