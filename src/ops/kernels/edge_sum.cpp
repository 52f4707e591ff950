/* ----------------------------------------------------------------------
   dpa3: the edge input of a RepFlow linear in one pass.

     edge_sum(xc, xn, xe, b) [E, k] = xc[idx_c] + xn[idx_n] + xe + b

   with xc [N, k] per centre, xn [M, k] per neighbour (optional), xe [E, k]
   per edge and b [k] (optional): the concatenated linear [n_i, n_j, e_ij] W
   + b evaluated with the node products taken before gathering. One pass
   replaces two gathers and three additions over [E, k].

   The backward is made of differentiable ops (scatter_rows, whose backward
   is gather_rows, and a sum), so derivatives of any order work.
------------------------------------------------------------------------- */

#include "kernels.h"
#include "row_index.h"
#include "simd.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace dpa3 {

namespace {

template <typename T>
DPA3_INLINE void edge_sum_body(T *op, const T *xc, const T *xn, const T *xe, const T *b,
                               const int64_t *ic, const int64_t *in, int64_t e0, int64_t e1,
                               int64_t k)
{
  for (int64_t e = e0; e < e1; ++e) {
    T *o = op + e * k;
    const T *c = xc + ic[e] * k, *x = xe + e * k;
    if (xn) {    // ((c + n) + x) + b, the order of the composite formulation
      const T *n = xn + in[e] * k;
      for (int64_t j = 0; j < k; ++j) o[j] = c[j] + n[j] + x[j];
    } else {
      for (int64_t j = 0; j < k; ++j) o[j] = c[j] + x[j];
    }
    if (b)
      for (int64_t j = 0; j < k; ++j) o[j] += b[j];
  }
}

DPA3_MULTIVERSION void edge_sum_range(float *op, const float *xc, const float *xn, const float *xe,
                                      const float *b, const int64_t *ic, const int64_t *in,
                                      int64_t e0, int64_t e1, int64_t k)
{
  edge_sum_body(op, xc, xn, xe, b, ic, in, e0, e1, k);
}

DPA3_MULTIVERSION void edge_sum_range(double *op, const double *xc, const double *xn,
                                      const double *xe, const double *b, const int64_t *ic,
                                      const int64_t *in, int64_t e0, int64_t e1, int64_t k)
{
  edge_sum_body(op, xc, xn, xe, b, ic, in, e0, e1, k);
}

}    // namespace

// CPU kernel of the primitive dpa3::_edge_sum (xn, b and in may be undefined)
at::Tensor cpu::edge_sum(const at::Tensor &xc_, const at::Tensor &xn_, const at::Tensor &xe_,
                         const at::Tensor &b_, const at::Tensor &ic_, const at::Tensor &in_)
{
  const at::Tensor xc = xc_.contiguous(), xe = xe_.contiguous(), ic = ic_.contiguous();
  const at::Tensor xn = xn_.defined() ? xn_.contiguous() : xn_;
  const at::Tensor in = in_.defined() ? in_.contiguous() : in_;
  const at::Tensor b = b_.defined() ? b_.contiguous() : b_;
  const int64_t nedge = xe.size(0), k = xe.size(1);
  at::Tensor out = at::empty({nedge, k}, xe.options());
  AT_DISPATCH_FLOATING_TYPES(xe.scalar_type(), "dpa3_edge_sum", [&] {
    const scalar_t *pc = xc.data_ptr<scalar_t>(), *pe = xe.data_ptr<scalar_t>();
    const scalar_t *pn = xn.defined() ? xn.data_ptr<scalar_t>() : nullptr;
    const scalar_t *pb = b.defined() ? b.data_ptr<scalar_t>() : nullptr;
    const int64_t *ixc = ic.data_ptr<int64_t>();
    const int64_t *ixn = in.defined() ? in.data_ptr<int64_t>() : nullptr;
    scalar_t *po = out.data_ptr<scalar_t>();
    at::parallel_for(0, nedge, 256, [&](int64_t e0, int64_t e1) {
      edge_sum_range(po, pc, pn, pe, pb, ixc, ixn, e0, e1, k);
    });
  });
  return out;
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class EdgeSum : public torch::autograd::Function<EdgeSum> {
 public:
  static at::Tensor forward(AutogradContext *ctx, const at::Tensor &xc, const at::Tensor &xn,
                            const at::Tensor &xe, const at::Tensor &b, const at::Tensor &ic,
                            const at::Tensor &pc, const at::Tensor &rc, const at::Tensor &in,
                            const at::Tensor &pn, const at::Tensor &rn, bool has_xn, bool has_b)
  {
    ctx->save_for_backward({ic, pc, rc, in, pn, rn});
    ctx->saved_data["has_xn"] = has_xn;
    ctx->saved_data["has_b"] = has_b;
    return prim::edge_sum(xc, has_xn ? std::optional<at::Tensor>(xn) : std::nullopt, xe,
                          has_b ? std::optional<at::Tensor>(b) : std::nullopt, ic,
                          has_xn ? std::optional<at::Tensor>(in) : std::nullopt);
  }

  static variable_list backward(AutogradContext *ctx, variable_list g)
  {
    auto s = ctx->get_saved_variables();
    const at::Tensor &go = g[0];
    at::Tensor gc = scatter_rows(go, s[0], s[1], s[2]);
    at::Tensor gn = ctx->saved_data["has_xn"].toBool() ? scatter_rows(go, s[3], s[4], s[5])
                                                       : at::Tensor();
    at::Tensor gb = ctx->saved_data["has_b"].toBool() ? go.sum(0) : at::Tensor();
    return {gc,           gn,           go,           gb,           at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor edge_sum(const at::Tensor &xc, const std::optional<at::Tensor> &xn, const at::Tensor &xe,
                    const std::optional<at::Tensor> &b, const at::Tensor &idx_c,
                    const at::Tensor &perm_c, const at::Tensor &ptr_c,
                    const std::optional<at::Tensor> &idx_n, const std::optional<at::Tensor> &perm_n,
                    const std::optional<at::Tensor> &ptr_n)
{
  const char *who = "dpa3::edge_sum: ";
  TORCH_CHECK(xc.dim() == 2 && xe.dim() == 2 && xc.size(1) == xe.size(1), who,
              "xc [N, k] and xe [E, k] need the same width");
  TORCH_CHECK(idx_c.numel() == xe.size(0), who, "idx_c needs one entry per edge");
  TORCH_CHECK(ptr_c.numel() == xc.size(0) + 1, who, "ptr_c needs N + 1 offsets");
  TORCH_CHECK(xc.scalar_type() == xe.scalar_type(), who, "xc and xe need one dtype");
  TORCH_CHECK(xc.device() == xe.device() && idx_c.device() == xe.device(), who,
              "xc, xe and idx_c must be on one device");
  // absent inputs are passed to the autograd Function as empty placeholders
  const at::Tensor none_f = at::empty({0}, xe.options());
  const at::Tensor none_i = at::empty({0}, idx_c.options());
  at::Tensor n = none_f, in = none_i, pn = none_i, rn = none_i, bb = none_f;
  const bool has_xn = xn.has_value() && xn->defined();
  const bool has_b = b.has_value() && b->defined();
  if (has_xn) {
    n = *xn;
    TORCH_CHECK(idx_n.has_value() && perm_n.has_value() && ptr_n.has_value(), who,
                "xn needs idx_n, perm_n and ptr_n");
    in = *idx_n, pn = *perm_n, rn = *ptr_n;
    TORCH_CHECK(n.dim() == 2 && n.size(1) == xe.size(1) && n.scalar_type() == xe.scalar_type(), who,
                "xn [M, k] needs xe's width and dtype");
    TORCH_CHECK(in.numel() == xe.size(0) && rn.numel() == n.size(0) + 1, who,
                "idx_n needs one entry per edge, ptr_n M + 1 offsets");
    TORCH_CHECK(n.device() == xe.device() && in.device() == xe.device(), who,
                "xn and idx_n must be on xe's device");
  }
  if (has_b) {
    bb = *b;
    TORCH_CHECK(bb.numel() == xe.size(1) && bb.scalar_type() == xe.scalar_type() &&
                    bb.device() == xe.device(),
                who, "b needs one entry per column and xe's dtype and device");
  }
  return EdgeSum::apply(xc, n, xe, bb, idx_c, perm_c, ptr_c, in, pn, rn, has_xn, has_b);
}

}    // namespace

}    // namespace dpa3

TORCH_LIBRARY_FRAGMENT(dpa3, m)
{
  m.def("edge_sum(Tensor xc, Tensor? xn, Tensor xe, Tensor? b, Tensor idx_c, Tensor perm_c, "
        "Tensor ptr_c, Tensor? idx_n, Tensor? perm_n, Tensor? ptr_n) -> Tensor");
}

TORCH_LIBRARY_IMPL(dpa3, CompositeImplicitAutograd, m) { m.impl("edge_sum", &dpa3::edge_sum); }
