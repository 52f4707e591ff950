/* dpa3: the row scatter-sum op, for other ops' backward passes (see row_index.cpp). */
#ifndef DPA3_ROW_INDEX_H
#define DPA3_ROW_INDEX_H

#include <ATen/core/Tensor.h>

namespace dpa3 {

// The op dpa3::scatter_rows (differentiable in any order: its backward is gather_rows).
at::Tensor scatter_rows(const at::Tensor &y, const at::Tensor &idx, const at::Tensor &perm,
                        const at::Tensor &ptr);

}    // namespace dpa3

#endif
