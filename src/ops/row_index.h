/* dpa3: row scatter-sums with a precomputed inverse index (see row_index.cpp). */
#ifndef DPA3_ROW_INDEX_H
#define DPA3_ROW_INDEX_H

#include <ATen/core/Tensor.h>

namespace dpa3 {

// out [n, ...] with out[r] = sum of the rows perm[ptr[r]:ptr[r+1]] of y; parallel over r, no
// atomics. n = ptr.numel() - 1. Not differentiable (the kernel behind scatter_rows).
at::Tensor segment_sum_kernel(const at::Tensor &y, const at::Tensor &perm, const at::Tensor &ptr);

// The op dpa3::scatter_rows (differentiable in any order: its backward is gather_rows).
at::Tensor scatter_rows(const at::Tensor &y, const at::Tensor &idx, const at::Tensor &perm,
                        const at::Tensor &ptr);

}    // namespace dpa3

#endif
