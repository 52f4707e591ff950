/* ----------------------------------------------------------------------
   dpa3: the element-wise activation of the RepFlow layers, differentiable
   twice in fused passes.

     activation(x, act, thr) = act(x)       (silu, silut or tanh; any shape)

   Training differentiates the forces (an autograd.grad with create_graph)
   once more, so every activation is differentiated twice. The composite
   formulation does that with about twenty element-wise passes over the
   tensor (sigmoid, products and sums of the first derivative, then their
   backward); here it is three: act(x); g act'(x) (an autograd Function of
   its own, ActivationBackward); and its backward, gg act'(x) and
   gg g act''(x) in one pass. Only x is kept for the backward (as silu's
   own backward keeps it): act' and act'' are recomputed. Third
   derivatives are refused.

   Primitives (CPU: fused loops of angle_common.h's activate(); other
   devices and set_generic_kernels: ATen calls, generic.cpp):
     _activation(x, act, thr)               -> act(x)
     _activation_bwd(g, x, act, thr)        -> g act'(x)
     _activation_bwd2(gg, g, x, act, thr)   -> {gg act'(x), gg g act''(x)}
------------------------------------------------------------------------- */

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "angle_common.h"
#include "kernels.h"
#include "simd.h"

namespace dpa3 {

namespace {

using angle::ActParams;

template <typename T> DPA3_INLINE void act_body(const ActParams<T> &f, const T *x, T *y, int64_t n)
{
  angle::activate(f, x, y, static_cast<T *>(nullptr), n);
}

// the slices below stay in L1: act' (and act'') of C values at a time
constexpr int64_t C = 256;

// dx = g act'(x)
template <typename T>
DPA3_INLINE void act1_body(const ActParams<T> &f, const T *g, const T *x, T *dx, int64_t n)
{
  T y[C], dy[C];
  for (int64_t i0 = 0; i0 < n; i0 += C) {
    const int64_t m = std::min(C, n - i0);
    angle::activate(f, x + i0, y, dy, m);
    for (int64_t j = 0; j < m; ++j) dx[i0 + j] = g[i0 + j] * dy[j];
  }
}

// dg = gg act'(x), dx = gg g act''(x)
template <typename T>
DPA3_INLINE void act2_body(const ActParams<T> &f, const T *gg, const T *g, const T *x, T *dg, T *dx,
                           int64_t n)
{
  T y[C], dy[C], ddy[C];
  for (int64_t i0 = 0; i0 < n; i0 += C) {
    const int64_t m = std::min(C, n - i0);
    angle::activate(f, x + i0, y, dy, m, ddy);
    for (int64_t j = 0; j < m; ++j) {
      dg[i0 + j] = gg[i0 + j] * dy[j];
      dx[i0 + j] = gg[i0 + j] * g[i0 + j] * ddy[j];
    }
  }
}

DPA3_MULTIVERSION void act_range(const ActParams<float> &f, const float *x, float *y, int64_t n)
{
  act_body(f, x, y, n);
}

DPA3_MULTIVERSION void act_range(const ActParams<double> &f, const double *x, double *y, int64_t n)
{
  act_body(f, x, y, n);
}

DPA3_MULTIVERSION void act1_range(const ActParams<float> &f, const float *g, const float *x,
                                  float *dx, int64_t n)
{
  act1_body(f, g, x, dx, n);
}

DPA3_MULTIVERSION void act1_range(const ActParams<double> &f, const double *g, const double *x,
                                  double *dx, int64_t n)
{
  act1_body(f, g, x, dx, n);
}

DPA3_MULTIVERSION void act2_range(const ActParams<float> &f, const float *gg, const float *g,
                                  const float *x, float *dg, float *dx, int64_t n)
{
  act2_body(f, gg, g, x, dg, dx, n);
}

DPA3_MULTIVERSION void act2_range(const ActParams<double> &f, const double *gg, const double *g,
                                  const double *x, double *dg, double *dx, int64_t n)
{
  act2_body(f, gg, g, x, dg, dx, n);
}

constexpr int64_t kGrain = 1 << 14;    // elements per task of at::parallel_for

}    // namespace

// CPU kernel of dpa3::_activation
at::Tensor cpu::activation(const at::Tensor &x_, int64_t act, double thr)
{
  const at::Tensor x = x_.contiguous();
  at::Tensor y = at::empty_like(x);
  const int64_t n = x.numel();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dpa3_activation", [&] {
    const auto f = angle::act_params<scalar_t>(act, thr);
    const scalar_t *px = x.data_ptr<scalar_t>();
    scalar_t *py = y.data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t i0, int64_t i1) {
      act_range(f, px + i0, py + i0, i1 - i0);
    });
  });
  return y;
}

// CPU kernel of dpa3::_activation_bwd
at::Tensor cpu::activation_bwd(const at::Tensor &g_, const at::Tensor &x_, int64_t act, double thr)
{
  const at::Tensor x = x_.contiguous(), g = g_.contiguous();
  at::Tensor dx = at::empty_like(x);
  const int64_t n = x.numel();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dpa3_activation_bwd", [&] {
    const auto f = angle::act_params<scalar_t>(act, thr);
    const scalar_t *px = x.data_ptr<scalar_t>(), *pg = g.data_ptr<scalar_t>();
    scalar_t *pdx = dx.data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t i0, int64_t i1) {
      act1_range(f, pg + i0, px + i0, pdx + i0, i1 - i0);
    });
  });
  return dx;
}

// CPU kernel of dpa3::_activation_bwd2
std::vector<at::Tensor> cpu::activation_bwd2(const at::Tensor &gg_, const at::Tensor &g_,
                                             const at::Tensor &x_, int64_t act, double thr)
{
  const at::Tensor x = x_.contiguous(), g = g_.contiguous(), gg = gg_.contiguous();
  at::Tensor dg = at::empty_like(x), dx = at::empty_like(x);
  const int64_t n = x.numel();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dpa3_activation_bwd2", [&] {
    const auto f = angle::act_params<scalar_t>(act, thr);
    const scalar_t *px = x.data_ptr<scalar_t>(), *pg = g.data_ptr<scalar_t>(),
                   *pgg = gg.data_ptr<scalar_t>();
    scalar_t *pdg = dg.data_ptr<scalar_t>(), *pdx = dx.data_ptr<scalar_t>();
    at::parallel_for(0, n, kGrain, [&](int64_t i0, int64_t i1) {
      act2_range(f, pgg + i0, pg + i0, px + i0, pdg + i0, pdx + i0, i1 - i0);
    });
  });
  return {dg, dx};
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// g act'(x), differentiable once more
class ActivationBackward : public torch::autograd::Function<ActivationBackward> {
 public:
  static at::Tensor forward(AutogradContext *ctx, const at::Tensor &g, const at::Tensor &x,
                            int64_t act, double thr)
  {
    ctx->save_for_backward({g, x});
    ctx->saved_data["act"] = act;
    ctx->saved_data["thr"] = thr;
    return prim::activation_bwd(g, x, act, thr);
  }

  static variable_list backward(AutogradContext *ctx, variable_list gg)
  {
    TORCH_CHECK(!c10::GradMode::is_enabled(),
                "dpa3::activation supports derivatives up to second order only");
    auto s = ctx->get_saved_variables();
    auto d = prim::activation_bwd2(gg[0], s[0], s[1], ctx->saved_data["act"].toInt(),
                                   ctx->saved_data["thr"].toDouble());
    return {d[0], d[1], at::Tensor(), at::Tensor()};
  }
};

class Activation : public torch::autograd::Function<Activation> {
 public:
  static at::Tensor forward(AutogradContext *ctx, const at::Tensor &x, int64_t act, double thr)
  {
    ctx->save_for_backward({x});
    ctx->saved_data["act"] = act;
    ctx->saved_data["thr"] = thr;
    return prim::activation(x, act, thr);
  }

  static variable_list backward(AutogradContext *ctx, variable_list g)
  {
    auto s = ctx->get_saved_variables();
    at::Tensor gx = ActivationBackward::apply(g[0], s[0], ctx->saved_data["act"].toInt(),
                                              ctx->saved_data["thr"].toDouble());
    return {gx, at::Tensor(), at::Tensor()};
  }
};

at::Tensor activation(const at::Tensor &x, int64_t act, double thr)
{
  TORCH_CHECK(act == ACT_SILU || act == ACT_SILUT || act == ACT_TANH,
              "dpa3::activation: unknown activation code ", act, " (0 silu, 1 silut, 2 tanh)");
  TORCH_CHECK(x.is_floating_point(), "dpa3::activation: x must be a floating-point tensor");
  return Activation::apply(x, act, thr);
}

}    // namespace

}    // namespace dpa3

TORCH_LIBRARY_FRAGMENT(dpa3, m) { m.def("activation(Tensor x, int act, float thr) -> Tensor"); }

TORCH_LIBRARY_IMPL(dpa3, CompositeImplicitAutograd, m) { m.impl("activation", &dpa3::activation); }
