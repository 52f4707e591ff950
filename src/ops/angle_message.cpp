/* ----------------------------------------------------------------------
   dpa3: fused angle messages of a RepFlow layer (inference kernel).

   For every angle q = (i, j, k), stored grouped by its edge ij (CSR
   offsets ptr[E+1]), with k-edge eik[q] and weight w[q]:

     pre[q]  = aw[q] + pe[ij] + vk[ik]                 (D columns)
     y[q]    = act(pre[q])
     red[ij] = sum_q w[q] * y[q, :de]                  (edge messages)
     ang[q]  = y[q, de:]                               (angle self update)

   aw = a W_a, pe = (n~ W_n)[i] + e~_ij W_j + b and vk = e~ W_k are computed
   by the caller with BLAS; this kernel does the gather, activation, weight
   and reduction in one pass per edge, without materialising the [A, D]
   intermediates of the composite formulation. Edges are independent, so
   the loop runs in parallel with no atomics.

   The backward computes first derivatives only; it refuses to run with
   grad mode on (double backward, i.e. training with force losses, uses the
   composite PyTorch path instead).
------------------------------------------------------------------------- */

#include "row_index.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

namespace dpa3 {

namespace {

enum Act : int64_t { SILU = 0, SILUT = 1, TANH = 2 };

template <typename T> struct Activation {
  int64_t kind;
  T thr, slope, silu_t;

  Activation(int64_t k, double threshold) : kind(k), thr(T(threshold))
  {
    const double s = 1.0 / (1.0 + std::exp(-threshold));
    slope = T(s * (1.0 + threshold * (1.0 - s)));
    silu_t = T(threshold * s);
  }

  // y = act(z) and dy = act'(z) for n values; the loops are written for the vectoriser
  // (this file is compiled with -ffast-math so that exp/tanh use the SIMD math library)
  inline void eval(const T *z, T *y, T *dy, int64_t n) const
  {
    if (kind == TANH) {
      for (int64_t d = 0; d < n; ++d) {
        const T t = std::tanh(z[d]);
        y[d] = t;
        dy[d] = T(1) - t * t;
      }
      return;
    }
    for (int64_t d = 0; d < n; ++d) {
      const T s = T(1) / (T(1) + std::exp(-z[d]));
      y[d] = z[d] * s;
      dy[d] = s * (T(1) + z[d] * (T(1) - s));
    }
    if (kind == SILUT) {
      for (int64_t d = 0; d < n; ++d) {
        if (z[d] >= thr) {  // rare: the tanh tail above the threshold
          const T t = std::tanh(slope * (z[d] - thr));
          y[d] = t + silu_t;
          dy[d] = slope * (T(1) - t * t);
        }
      }
    }
  }
};

void check_inputs(const at::Tensor &aw, const at::Tensor &pe, const at::Tensor &vk,
                  const at::Tensor &w, const at::Tensor &eik, const at::Tensor &ptr, int64_t de)
{
  TORCH_CHECK(aw.dim() == 2 && pe.dim() == 2 && vk.dim() == 2,
              "dpa3::angle_message: aw, pe, vk must be 2-D");
  TORCH_CHECK(aw.size(1) == pe.size(1) && pe.size(1) == vk.size(1),
              "dpa3::angle_message: aw, pe, vk need the same width");
  TORCH_CHECK(pe.size(0) == vk.size(0), "dpa3::angle_message: pe and vk need one row per edge");
  TORCH_CHECK(w.numel() == aw.size(0) && eik.numel() == aw.size(0),
              "dpa3::angle_message: w and eik need one entry per angle");
  TORCH_CHECK(ptr.numel() == pe.size(0) + 1, "dpa3::angle_message: ptr needs E + 1 offsets");
  TORCH_CHECK(de >= 0 && de <= aw.size(1), "dpa3::angle_message: bad split width");
  TORCH_CHECK(aw.scalar_type() == pe.scalar_type() && aw.scalar_type() == vk.scalar_type() &&
                  aw.scalar_type() == w.scalar_type(),
              "dpa3::angle_message: floating inputs need one dtype");
  TORCH_CHECK(eik.scalar_type() == at::kLong && ptr.scalar_type() == at::kLong,
              "dpa3::angle_message: eik and ptr must be int64");
  TORCH_CHECK(aw.device().is_cpu(), "dpa3::angle_message: CPU tensors only");
}

// returns {red [E, de], ang [A, D - de], pre [A, D]}
std::vector<at::Tensor> forward_kernel(const at::Tensor &aw_, const at::Tensor &pe_,
                                       const at::Tensor &vk_, const at::Tensor &w_,
                                       const at::Tensor &eik_, const at::Tensor &ptr_,
                                       int64_t de, int64_t act, double thr)
{
  check_inputs(aw_, pe_, vk_, w_, eik_, ptr_, de);
  const at::Tensor aw = aw_.contiguous(), pe = pe_.contiguous(), vk = vk_.contiguous();
  const at::Tensor w = w_.contiguous().reshape({-1}), eik = eik_.contiguous(),
                   ptr = ptr_.contiguous();
  const int64_t nedge = pe.size(0), width = aw.size(1), da = width - de;
  at::Tensor red = at::zeros({nedge, de}, aw.options());
  at::Tensor ang = at::empty({aw.size(0), da}, aw.options());
  at::Tensor pre = at::empty_like(aw);
  AT_DISPATCH_FLOATING_TYPES(aw.scalar_type(), "dpa3_angle_message_fwd", [&] {
    const Activation<scalar_t> f(act, thr);
    const scalar_t *a = aw.data_ptr<scalar_t>(), *p = pe.data_ptr<scalar_t>(),
                   *v = vk.data_ptr<scalar_t>(), *wt = w.data_ptr<scalar_t>();
    const int64_t *k = eik.data_ptr<int64_t>(), *off = ptr.data_ptr<int64_t>();
    scalar_t *r = red.data_ptr<scalar_t>(), *o = ang.data_ptr<scalar_t>(),
             *x = pre.data_ptr<scalar_t>();
    at::parallel_for(0, nedge, 64, [&](int64_t e0, int64_t e1) {
      std::vector<scalar_t> ybuf(2 * width);
      scalar_t *y = ybuf.data(), *dy = y + width;
      for (int64_t e = e0; e < e1; ++e) {
        const scalar_t *pe_e = p + e * width;
        scalar_t *r_e = r + e * de;
        for (int64_t q = off[e]; q < off[e + 1]; ++q) {
          const scalar_t *a_q = a + q * width, *v_k = v + k[q] * width;
          scalar_t *x_q = x + q * width, *o_q = o + q * da;
          const scalar_t wq = wt[q];
          for (int64_t d = 0; d < width; ++d) x_q[d] = a_q[d] + pe_e[d] + v_k[d];
          f.eval(x_q, y, dy, width);
          for (int64_t d = 0; d < de; ++d) r_e[d] += wq * y[d];
          for (int64_t d = 0; d < da; ++d) o_q[d] = y[de + d];
        }
      }
    });
  });
  return {red, ang, pre};
}

// returns {g_aw [A, D], g_pe [E, D], g_w [A]}
std::vector<at::Tensor> backward_kernel(const at::Tensor &pre, const at::Tensor &w_,
                                        const at::Tensor &ptr, const at::Tensor &gred_,
                                        const at::Tensor &gang_, int64_t de, int64_t act,
                                        double thr)
{
  const int64_t nangle = pre.size(0), width = pre.size(1), da = width - de;
  const int64_t nedge = ptr.numel() - 1;
  const at::Tensor w = w_.contiguous().reshape({-1});
  const at::Tensor gred = gred_.defined() ? gred_.contiguous() : at::zeros({nedge, de}, pre.options());
  const at::Tensor gang = gang_.defined() ? gang_.contiguous() : at::zeros({nangle, da}, pre.options());
  at::Tensor gpre = at::empty_like(pre);
  at::Tensor gpe = at::zeros({nedge, width}, pre.options());
  at::Tensor gw = at::empty({nangle}, pre.options());
  AT_DISPATCH_FLOATING_TYPES(pre.scalar_type(), "dpa3_angle_message_bwd", [&] {
    const Activation<scalar_t> f(act, thr);
    const scalar_t *x = pre.data_ptr<scalar_t>(), *wt = w.data_ptr<scalar_t>(),
                   *gr = gred.data_ptr<scalar_t>(), *ga = gang.data_ptr<scalar_t>();
    const int64_t *off = ptr.data_ptr<int64_t>();
    scalar_t *gp = gpre.data_ptr<scalar_t>(), *ge = gpe.data_ptr<scalar_t>(),
             *gwt = gw.data_ptr<scalar_t>();
    at::parallel_for(0, nedge, 64, [&](int64_t e0, int64_t e1) {
      std::vector<scalar_t> ybuf(2 * width);
      scalar_t *y = ybuf.data(), *dy = y + width;
      for (int64_t e = e0; e < e1; ++e) {
        const scalar_t *gr_e = gr + e * de;
        scalar_t *ge_e = ge + e * width;
        for (int64_t q = off[e]; q < off[e + 1]; ++q) {
          const scalar_t *x_q = x + q * width, *ga_q = ga + q * da;
          scalar_t *gp_q = gp + q * width;
          const scalar_t wq = wt[q];
          f.eval(x_q, y, dy, width);
          scalar_t acc = 0;
          for (int64_t d = 0; d < de; ++d) {
            acc += y[d] * gr_e[d];
            gp_q[d] = wq * gr_e[d] * dy[d];
          }
          for (int64_t d = 0; d < da; ++d) gp_q[de + d] = ga_q[d] * dy[de + d];
          for (int64_t d = 0; d < width; ++d) ge_e[d] += gp_q[d];
          gwt[q] = acc;
        }
      }
    });
  });
  return {gpre, gpe, gw};
}

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class AngleMessage : public torch::autograd::Function<AngleMessage> {
 public:
  static variable_list forward(AutogradContext *ctx, const at::Tensor &aw, const at::Tensor &pe,
                               const at::Tensor &vk, const at::Tensor &w, const at::Tensor &eik,
                               const at::Tensor &ptr, const at::Tensor &kperm,
                               const at::Tensor &kptr, int64_t de, int64_t act, double thr)
  {
    auto out = forward_kernel(aw, pe, vk, w, eik, ptr, de, act, thr);
    ctx->save_for_backward({out[2], w, kperm, ptr, kptr});
    ctx->saved_data["de"] = de;
    ctx->saved_data["act"] = act;
    ctx->saved_data["thr"] = thr;
    ctx->saved_data["w_shape"] = w.sizes().vec();
    ctx->mark_non_differentiable({out[2]});
    return {out[0], out[1]};
  }

  static variable_list backward(AutogradContext *ctx, variable_list grads)
  {
    TORCH_CHECK(!c10::GradMode::is_enabled(),
                "dpa3::angle_message supports first derivatives only (no create_graph); "
                "train with the model in training mode, which uses the composite path");
    auto saved = ctx->get_saved_variables();
    const int64_t de = ctx->saved_data["de"].toInt();
    auto g = backward_kernel(saved[0], saved[1], saved[3], grads[0], grads[1], de,
                             ctx->saved_data["act"].toInt(), ctx->saved_data["thr"].toDouble());
    at::Tensor gvk = segment_sum_kernel(g[0], saved[2], saved[4]);
    at::Tensor gw = g[2].reshape(ctx->saved_data["w_shape"].toIntVector());
    return {g[0],         g[1],         gvk,          gw,           at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::vector<at::Tensor> angle_message(const at::Tensor &aw, const at::Tensor &pe,
                                      const at::Tensor &vk, const at::Tensor &w,
                                      const at::Tensor &eik, const at::Tensor &ptr,
                                      const at::Tensor &kperm, const at::Tensor &kptr, int64_t de,
                                      int64_t act, double thr)
{
  TORCH_CHECK(kperm.numel() == eik.numel() && kptr.numel() == pe.size(0) + 1,
              "dpa3::angle_message: bad inverse index of eik");
  auto out = AngleMessage::apply(aw, pe, vk, w, eik, ptr, kperm, kptr, de, act, thr);
  return {out[0], out[1]};
}

}    // namespace

}    // namespace dpa3

TORCH_LIBRARY_FRAGMENT(dpa3, m)
{
  m.def("angle_message(Tensor aw, Tensor pe, Tensor vk, Tensor w, Tensor eik, Tensor ptr, "
        "Tensor kperm, Tensor kptr, int de, int act, float thr) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(dpa3, CompositeImplicitAutograd, m)
{
  m.impl("angle_message", &dpa3::angle_message);
}
