/* -*- c++ -*- ----------------------------------------------------------
   dpa3: the device kernels behind the differentiable compute ops.

   Every differentiable op of the library (gather_rows, scatter_rows,
   edge_sum, center_outer, angle_block) is an autograd Function whose
   forward and backward call *primitive* operators (dpa3::_gather,
   dpa3::_segment_sum, ...) through the dispatcher. Each primitive has

   - a CPU kernel: the fused, multi-threaded loops of this folder;
   - a CUDA kernel (builds with DPA3_USE_CUDA): a hand-written kernel in a
     *_cuda.cu file where one exists, otherwise the generic implementation;
   - a generic implementation written with ATen calls only (index_select,
     index_add, matmul, ...), which runs on any device.

   The generic implementations compute the same functions as the fused CPU
   kernels (up to rounding: summation order). set_generic_kernels(true)
   makes the CPU kernels run them instead of the fused loops, so the tests
   on a machine without a GPU exercise the algorithm that runs on GPUs; it
   is a process-wide switch for tests and diagnostics, off by default.
------------------------------------------------------------------------- */

#ifndef DPA3_KERNELS_H
#define DPA3_KERNELS_H

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

namespace dpa3 {

// Whether the CPU kernels run the generic implementations (the switch above).
bool generic_kernels();
bool set_generic_kernels(bool on);    // returns the previous setting

// Activation codes shared by the angle kernels and RepFlowLayer.act_code.
enum Act : int64_t { ACT_SILU = 0, ACT_SILUT = 1, ACT_TANH = 2 };

// Shapes (all index tensors int64):
//   gather(x [n, ...], idx [M])                              -> [M, ...]
//   segment_sum(y [M, ...], idx [M], perm [M], ptr [n + 1])  -> [n, ...]
//   edge_sum(xc [N, k], xn [M, k]?, xe [E, k], b [k]?, ic [E], in [E]?) -> [E, k]
//   outer_sum(h [E, k], g [E, d], idx [E], perm, ptr [N + 1]) -> [N, k, d]
//   outer_h(h [E, k], G [N, k, d], idx [E])                 -> [E, d]
//   outer_g(g [E, d], G [N, k, d], idx [E])                 -> [E, k]
//   angle_block_fwd(...) -> {red [E, de], aout [A, D - de]}  (see angle_block.cpp; aout: in.into
//     where defined)
//   angle_block_bwd(...) -> {ga, gwa, gpe, gvk, gw, gbeta}   (gwa/gbeta empty unless asked; ga:
//     in.into where defined)
//   angle_block_bwd2(..., gred, gaout, gg, ...) -> {da, dwa, dpe, dvk, dw, dbeta, dgred, dgaout}
//     the gradients of <gg, angle_block_bwd(...)> w.r.t. its inputs (angle_block_grad2.cpp;
//     dwa/dbeta empty unless asked)
//   activation(x, act, thr) -> act(x); activation_bwd(g, x, act, thr) -> g act'(x)  (any shape)
//   activation_bwd2(gg, g, x, act, thr) -> {gg act'(x), gg g act''(x)}  (activation.cpp)
// `into`, where defined: the tensor the forward writes its angle output into ([A, D - de]), or
// the backward its gradient of `a` ([A, da_in]; it may be the incoming gaout itself, whose rows
// are read before they are overwritten); undefined: a new one.
struct AngleArgs {
  at::Tensor a, wa, pe, vk, w, eik, aptr, nptr, beta;
  int64_t de, act;
  double thr, alpha;
  at::Tensor into;
};

// in.into where defined (checked: [rows, cols], contiguous, of a's dtype and device), else a
// new uninitialised [rows, cols] tensor like a (primitives.cpp)
at::Tensor into_or_empty(const AngleArgs &in, int64_t rows, int64_t cols);

// Incoming gradients of the outputs of angle_block_bwd (shapes: ga [A, da_in], gwa [da_in, D],
// gpe and gvk [E, D], gw [A], gbeta [D - de]); undefined ones count as zero.
struct AngleGrads {
  at::Tensor ga, gwa, gpe, gvk, gw, gbeta;
};

namespace cpu {
at::Tensor gather(const at::Tensor &x, const at::Tensor &idx);
at::Tensor segment_sum(const at::Tensor &y, const at::Tensor &perm, const at::Tensor &ptr);
at::Tensor edge_sum(const at::Tensor &xc, const at::Tensor &xn, const at::Tensor &xe,
                    const at::Tensor &b, const at::Tensor &ic, const at::Tensor &in);
at::Tensor outer_sum(const at::Tensor &h, const at::Tensor &g, const at::Tensor &perm,
                     const at::Tensor &ptr);
at::Tensor outer_h(const at::Tensor &h, const at::Tensor &G, const at::Tensor &idx);
at::Tensor outer_g(const at::Tensor &g, const at::Tensor &G, const at::Tensor &idx);
std::vector<at::Tensor> angle_block_fwd(const AngleArgs &in);
std::vector<at::Tensor> angle_block_bwd(const AngleArgs &in, const at::Tensor &gred,
                                        const at::Tensor &gaout, bool need_wa, bool need_beta);
std::vector<at::Tensor> angle_block_bwd2(const AngleArgs &in, const at::Tensor &gred,
                                         const at::Tensor &gaout, const AngleGrads &gg,
                                         bool need_wa, bool need_beta);
at::Tensor activation(const at::Tensor &x, int64_t act, double thr);
at::Tensor activation_bwd(const at::Tensor &g, const at::Tensor &x, int64_t act, double thr);
std::vector<at::Tensor> activation_bwd2(const at::Tensor &gg, const at::Tensor &g,
                                        const at::Tensor &x, int64_t act, double thr);
}    // namespace cpu

namespace generic {
at::Tensor gather(const at::Tensor &x, const at::Tensor &idx);
at::Tensor segment_sum(const at::Tensor &y, const at::Tensor &idx, int64_t nrows);
at::Tensor edge_sum(const at::Tensor &xc, const at::Tensor &xn, const at::Tensor &xe,
                    const at::Tensor &b, const at::Tensor &ic, const at::Tensor &in);
at::Tensor outer_sum(const at::Tensor &h, const at::Tensor &g, const at::Tensor &idx,
                     int64_t nrows);
at::Tensor outer_h(const at::Tensor &h, const at::Tensor &G, const at::Tensor &idx);
at::Tensor outer_g(const at::Tensor &g, const at::Tensor &G, const at::Tensor &idx);
std::vector<at::Tensor> angle_block_fwd(const AngleArgs &in);
std::vector<at::Tensor> angle_block_bwd(const AngleArgs &in, const at::Tensor &gred,
                                        const at::Tensor &gaout, bool need_wa, bool need_beta);
std::vector<at::Tensor> angle_block_bwd2(const AngleArgs &in, const at::Tensor &gred,
                                         const at::Tensor &gaout, const AngleGrads &gg,
                                         bool need_wa, bool need_beta);
at::Tensor activation(const at::Tensor &x, int64_t act, double thr);
at::Tensor activation_bwd(const at::Tensor &g, const at::Tensor &x, int64_t act, double thr);
std::vector<at::Tensor> activation_bwd2(const at::Tensor &gg, const at::Tensor &g,
                                        const at::Tensor &x, int64_t act, double thr);
}    // namespace generic

#ifdef DPA3_USE_CUDA
namespace cuda {
// CSR scatter-sums without atomics (deterministic: each output element sums its rows in order)
at::Tensor segment_sum(const at::Tensor &y, const at::Tensor &perm, const at::Tensor &ptr);
at::Tensor outer_sum(const at::Tensor &h, const at::Tensor &g, const at::Tensor &perm,
                     const at::Tensor &ptr);
}    // namespace cuda
#endif

// Dispatcher calls of the primitives (the device is chosen by the tensors). Called from the
// forward/backward of the autograd Functions; the primitives themselves are not differentiable.
namespace prim {
at::Tensor gather(const at::Tensor &x, const at::Tensor &idx);
at::Tensor segment_sum(const at::Tensor &y, const at::Tensor &idx, const at::Tensor &perm,
                       const at::Tensor &ptr);
at::Tensor edge_sum(const at::Tensor &xc, const std::optional<at::Tensor> &xn, const at::Tensor &xe,
                    const std::optional<at::Tensor> &b, const at::Tensor &ic,
                    const std::optional<at::Tensor> &in);
at::Tensor outer_sum(const at::Tensor &h, const at::Tensor &g, const at::Tensor &idx,
                     const at::Tensor &perm, const at::Tensor &ptr);
at::Tensor outer_h(const at::Tensor &h, const at::Tensor &G, const at::Tensor &idx);
at::Tensor outer_g(const at::Tensor &g, const at::Tensor &G, const at::Tensor &idx);
std::vector<at::Tensor> angle_block_fwd(const AngleArgs &in);
std::vector<at::Tensor> angle_block_bwd(const AngleArgs &in, const at::Tensor &gred,
                                        const at::Tensor &gaout, bool need_wa, bool need_beta);
std::vector<at::Tensor> angle_block_bwd2(const AngleArgs &in, const at::Tensor &gred,
                                         const at::Tensor &gaout, const AngleGrads &gg,
                                         bool need_wa, bool need_beta);
at::Tensor activation(const at::Tensor &x, int64_t act, double thr);
at::Tensor activation_bwd(const at::Tensor &g, const at::Tensor &x, int64_t act, double thr);
std::vector<at::Tensor> activation_bwd2(const at::Tensor &gg, const at::Tensor &g,
                                        const at::Tensor &x, int64_t act, double thr);
}    // namespace prim

}    // namespace dpa3

#endif
