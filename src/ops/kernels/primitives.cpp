/* ----------------------------------------------------------------------
   dpa3: the primitive operators (dpa3::_gather, _segment_sum, _edge_sum,
   _outer_sum, _outer_h, _outer_g, _angle_block_fwd, _angle_block_bwd,
   _angle_block_bwd2, _activation, _activation_bwd,
   _activation_bwd2):
   schemas, their CPU and CUDA kernels, and the calls used by the autograd
   Functions of the differentiable ops (see kernels.h).

   CPU: the fused kernels, or the generic ones while set_generic_kernels is
   on. CUDA: hand-written kernels for the CSR scatter-sums, the generic
   implementation for the rest. The primitives have no autograd kernel:
   they are only called from inside autograd Functions, below the
   Autograd dispatch keys.
------------------------------------------------------------------------- */

#include "kernels.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <atomic>

namespace dpa3 {

namespace {

std::atomic<bool> g_generic{false};

at::Tensor opt_or_undefined(const std::optional<at::Tensor> &t)
{
  return t.has_value() ? *t : at::Tensor();
}

std::optional<at::Tensor> optional_of(const at::Tensor &t)
{
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

int64_t rows_of(const at::Tensor &ptr) { return ptr.numel() - 1; }

AngleArgs angle_args(const at::Tensor &a, const at::Tensor &wa, const at::Tensor &pe,
                     const at::Tensor &vk, const at::Tensor &w, const at::Tensor &eik,
                     const at::Tensor &aptr, const at::Tensor &nptr, int64_t de, int64_t act,
                     double thr, double alpha, const at::Tensor &beta)
{
  return {a, wa, pe, vk, w, eik, aptr, nptr, beta, de, act, thr, alpha};
}

// Kernels by device. `generic` selects the ATen implementation; CPU kernels consult the switch.
template <bool Cpu> struct Kernels {
  static bool fused() { return Cpu && !generic_kernels(); }

  static at::Tensor gather(const at::Tensor &x, const at::Tensor &idx)
  {
    return fused() ? cpu::gather(x, idx) : generic::gather(x, idx);
  }

  static at::Tensor segment_sum(const at::Tensor &y, const at::Tensor &idx, const at::Tensor &perm,
                                const at::Tensor &ptr)
  {
    if (fused()) return cpu::segment_sum(y, perm, ptr);
#ifdef DPA3_USE_CUDA
    if (!Cpu) return cuda::segment_sum(y, perm, ptr);
#endif
    return generic::segment_sum(y, idx, rows_of(ptr));
  }

  static at::Tensor edge_sum(const at::Tensor &xc, const std::optional<at::Tensor> &xn,
                             const at::Tensor &xe, const std::optional<at::Tensor> &b,
                             const at::Tensor &ic, const std::optional<at::Tensor> &in)
  {
    const at::Tensor n = opt_or_undefined(xn), bb = opt_or_undefined(b), ii = opt_or_undefined(in);
    return fused() ? cpu::edge_sum(xc, n, xe, bb, ic, ii)
                   : generic::edge_sum(xc, n, xe, bb, ic, ii);
  }

  static at::Tensor outer_sum(const at::Tensor &h, const at::Tensor &g, const at::Tensor &idx,
                              const at::Tensor &perm, const at::Tensor &ptr)
  {
    if (fused()) return cpu::outer_sum(h, g, perm, ptr);
#ifdef DPA3_USE_CUDA
    if (!Cpu) return cuda::outer_sum(h, g, perm, ptr);
#endif
    return generic::outer_sum(h, g, idx, rows_of(ptr));
  }

  static at::Tensor outer_h(const at::Tensor &h, const at::Tensor &G, const at::Tensor &idx)
  {
    return fused() ? cpu::outer_h(h, G, idx) : generic::outer_h(h, G, idx);
  }

  static at::Tensor outer_g(const at::Tensor &g, const at::Tensor &G, const at::Tensor &idx)
  {
    return fused() ? cpu::outer_g(g, G, idx) : generic::outer_g(g, G, idx);
  }

  static std::vector<at::Tensor>
  angle_fwd(const at::Tensor &a, const at::Tensor &wa, const at::Tensor &pe, const at::Tensor &vk,
            const at::Tensor &w, const at::Tensor &eik, const at::Tensor &aptr,
            const at::Tensor &nptr, int64_t de, int64_t act, double thr, double alpha,
            const at::Tensor &beta, const std::optional<at::Tensor> &into)
  {
    AngleArgs in = angle_args(a, wa, pe, vk, w, eik, aptr, nptr, de, act, thr, alpha, beta);
    in.into = opt_or_undefined(into);
    return fused() ? cpu::angle_block_fwd(in) : generic::angle_block_fwd(in);
  }

  static std::vector<at::Tensor>
  angle_bwd(const at::Tensor &a, const at::Tensor &wa, const at::Tensor &pe, const at::Tensor &vk,
            const at::Tensor &w, const at::Tensor &eik, const at::Tensor &aptr,
            const at::Tensor &nptr, int64_t de, int64_t act, double thr, double alpha,
            const at::Tensor &beta, const std::optional<at::Tensor> &gred,
            const std::optional<at::Tensor> &gaout, bool need_wa, bool need_beta,
            const std::optional<at::Tensor> &into)
  {
    AngleArgs in = angle_args(a, wa, pe, vk, w, eik, aptr, nptr, de, act, thr, alpha, beta);
    in.into = opt_or_undefined(into);
    const at::Tensor gr = opt_or_undefined(gred), ga = opt_or_undefined(gaout);
    return fused() ? cpu::angle_block_bwd(in, gr, ga, need_wa, need_beta)
                   : generic::angle_block_bwd(in, gr, ga, need_wa, need_beta);
  }

  static std::vector<at::Tensor>
  angle_bwd2(const at::Tensor &a, const at::Tensor &wa, const at::Tensor &pe, const at::Tensor &vk,
             const at::Tensor &w, const at::Tensor &eik, const at::Tensor &aptr,
             const at::Tensor &nptr, int64_t de, int64_t act, double thr, double alpha,
             const at::Tensor &beta, const at::Tensor &gred, const at::Tensor &gaout,
             const std::optional<at::Tensor> &gga, const std::optional<at::Tensor> &ggwa,
             const std::optional<at::Tensor> &ggpe, const std::optional<at::Tensor> &ggvk,
             const std::optional<at::Tensor> &ggw, const std::optional<at::Tensor> &ggbeta,
             bool need_wa, bool need_beta)
  {
    const AngleArgs in = angle_args(a, wa, pe, vk, w, eik, aptr, nptr, de, act, thr, alpha, beta);
    const AngleGrads gg{opt_or_undefined(gga),  opt_or_undefined(ggwa), opt_or_undefined(ggpe),
                        opt_or_undefined(ggvk), opt_or_undefined(ggw),  opt_or_undefined(ggbeta)};
    return fused() ? cpu::angle_block_bwd2(in, gred, gaout, gg, need_wa, need_beta)
                   : generic::angle_block_bwd2(in, gred, gaout, gg, need_wa, need_beta);
  }

  static at::Tensor act(const at::Tensor &x, int64_t act, double thr)
  {
    return fused() ? cpu::activation(x, act, thr) : generic::activation(x, act, thr);
  }

  static at::Tensor act_bwd(const at::Tensor &g, const at::Tensor &x, int64_t act, double thr)
  {
    return fused() ? cpu::activation_bwd(g, x, act, thr) : generic::activation_bwd(g, x, act, thr);
  }

  static std::vector<at::Tensor> act_bwd2(const at::Tensor &gg, const at::Tensor &g,
                                          const at::Tensor &x, int64_t act, double thr)
  {
    return fused() ? cpu::activation_bwd2(gg, g, x, act, thr)
                   : generic::activation_bwd2(gg, g, x, act, thr);
  }
};

template <class Sig> c10::TypedOperatorHandle<Sig> op(const char *name)
{
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

bool set_generic_kernels_op(bool on) { return set_generic_kernels(on); }

}    // namespace

at::Tensor into_or_empty(const AngleArgs &in, int64_t rows, int64_t cols)
{
  if (!in.into.defined()) return at::empty({rows, cols}, in.a.options());
  const at::Tensor &t = in.into;
  TORCH_CHECK(t.dim() == 2 && t.size(0) == rows && t.size(1) == cols && t.is_contiguous() &&
                  t.scalar_type() == in.a.scalar_type() && t.device() == in.a.device(),
              "dpa3::angle_block: the output tensor must be a contiguous [", rows, ", ", cols,
              "] of a's dtype and device (got ", t.sizes(), ")");
  return t;
}

bool generic_kernels() { return g_generic.load(std::memory_order_relaxed); }

bool set_generic_kernels(bool on) { return g_generic.exchange(on); }

// ---------------------------------------------------------------- dispatcher calls (prim::)
// Below the Autograd keys: the primitives are not differentiable, their callers are.
at::Tensor prim::gather(const at::Tensor &x, const at::Tensor &idx)
{
  static const auto h = op<at::Tensor(const at::Tensor &, const at::Tensor &)>("dpa3::_gather");
  at::AutoDispatchBelowADInplaceOrView guard;
  return h.call(x, idx);
}

at::Tensor prim::segment_sum(const at::Tensor &y, const at::Tensor &idx, const at::Tensor &perm,
                             const at::Tensor &ptr)
{
  using Sig =
      at::Tensor(const at::Tensor &, const at::Tensor &, const at::Tensor &, const at::Tensor &);
  static const auto h = op<Sig>("dpa3::_segment_sum");
  at::AutoDispatchBelowADInplaceOrView guard;
  return h.call(y, idx, perm, ptr);
}

at::Tensor prim::edge_sum(const at::Tensor &xc, const std::optional<at::Tensor> &xn,
                          const at::Tensor &xe, const std::optional<at::Tensor> &b,
                          const at::Tensor &ic, const std::optional<at::Tensor> &in)
{
  using Sig = at::Tensor(const at::Tensor &, const std::optional<at::Tensor> &, const at::Tensor &,
                         const std::optional<at::Tensor> &, const at::Tensor &,
                         const std::optional<at::Tensor> &);
  static const auto h = op<Sig>("dpa3::_edge_sum");
  at::AutoDispatchBelowADInplaceOrView guard;
  return h.call(xc, xn, xe, b, ic, in);
}

at::Tensor prim::outer_sum(const at::Tensor &h_, const at::Tensor &g, const at::Tensor &idx,
                           const at::Tensor &perm, const at::Tensor &ptr)
{
  using Sig = at::Tensor(const at::Tensor &, const at::Tensor &, const at::Tensor &,
                         const at::Tensor &, const at::Tensor &);
  static const auto h = op<Sig>("dpa3::_outer_sum");
  at::AutoDispatchBelowADInplaceOrView guard;
  return h.call(h_, g, idx, perm, ptr);
}

at::Tensor prim::outer_h(const at::Tensor &h_, const at::Tensor &G, const at::Tensor &idx)
{
  using Sig = at::Tensor(const at::Tensor &, const at::Tensor &, const at::Tensor &);
  static const auto h = op<Sig>("dpa3::_outer_h");
  at::AutoDispatchBelowADInplaceOrView guard;
  return h.call(h_, G, idx);
}

at::Tensor prim::outer_g(const at::Tensor &g, const at::Tensor &G, const at::Tensor &idx)
{
  using Sig = at::Tensor(const at::Tensor &, const at::Tensor &, const at::Tensor &);
  static const auto h = op<Sig>("dpa3::_outer_g");
  at::AutoDispatchBelowADInplaceOrView guard;
  return h.call(g, G, idx);
}

std::vector<at::Tensor> prim::angle_block_fwd(const AngleArgs &in)
{
  using Sig = std::vector<at::Tensor>(
      const at::Tensor &, const at::Tensor &, const at::Tensor &, const at::Tensor &,
      const at::Tensor &, const at::Tensor &, const at::Tensor &, const at::Tensor &, int64_t,
      int64_t, double, double, const at::Tensor &, const std::optional<at::Tensor> &);
  static const auto h = op<Sig>("dpa3::_angle_block_fwd");
  at::AutoDispatchBelowADInplaceOrView guard;
  return h.call(in.a, in.wa, in.pe, in.vk, in.w, in.eik, in.aptr, in.nptr, in.de, in.act, in.thr,
                in.alpha, in.beta, optional_of(in.into));
}

std::vector<at::Tensor> prim::angle_block_bwd(const AngleArgs &in, const at::Tensor &gred,
                                              const at::Tensor &gaout, bool need_wa, bool need_beta)
{
  using Sig = std::vector<at::Tensor>(
      const at::Tensor &, const at::Tensor &, const at::Tensor &, const at::Tensor &,
      const at::Tensor &, const at::Tensor &, const at::Tensor &, const at::Tensor &, int64_t,
      int64_t, double, double, const at::Tensor &, const std::optional<at::Tensor> &,
      const std::optional<at::Tensor> &, bool, bool, const std::optional<at::Tensor> &);
  static const auto h = op<Sig>("dpa3::_angle_block_bwd");
  at::AutoDispatchBelowADInplaceOrView guard;
  return h.call(in.a, in.wa, in.pe, in.vk, in.w, in.eik, in.aptr, in.nptr, in.de, in.act, in.thr,
                in.alpha, in.beta, optional_of(gred), optional_of(gaout), need_wa, need_beta,
                optional_of(in.into));
}

std::vector<at::Tensor> prim::angle_block_bwd2(const AngleArgs &in, const at::Tensor &gred,
                                               const at::Tensor &gaout, const AngleGrads &gg,
                                               bool need_wa, bool need_beta)
{
  using OptT = const std::optional<at::Tensor> &;
  using Sig = std::vector<at::Tensor>(
      const at::Tensor &, const at::Tensor &, const at::Tensor &, const at::Tensor &,
      const at::Tensor &, const at::Tensor &, const at::Tensor &, const at::Tensor &, int64_t,
      int64_t, double, double, const at::Tensor &, const at::Tensor &, const at::Tensor &, OptT,
      OptT, OptT, OptT, OptT, OptT, bool, bool);
  static const auto h = op<Sig>("dpa3::_angle_block_bwd2");
  at::AutoDispatchBelowADInplaceOrView guard;
  const auto o = optional_of;
  return h.call(in.a, in.wa, in.pe, in.vk, in.w, in.eik, in.aptr, in.nptr, in.de, in.act, in.thr,
                in.alpha, in.beta, gred, gaout, o(gg.ga), o(gg.gwa), o(gg.gpe), o(gg.gvk), o(gg.gw),
                o(gg.gbeta), need_wa, need_beta);
}

at::Tensor prim::activation(const at::Tensor &x, int64_t act, double thr)
{
  using Sig = at::Tensor(const at::Tensor &, int64_t, double);
  static const auto h = op<Sig>("dpa3::_activation");
  at::AutoDispatchBelowADInplaceOrView guard;
  return h.call(x, act, thr);
}

at::Tensor prim::activation_bwd(const at::Tensor &g, const at::Tensor &x, int64_t act, double thr)
{
  using Sig = at::Tensor(const at::Tensor &, const at::Tensor &, int64_t, double);
  static const auto h = op<Sig>("dpa3::_activation_bwd");
  at::AutoDispatchBelowADInplaceOrView guard;
  return h.call(g, x, act, thr);
}

std::vector<at::Tensor> prim::activation_bwd2(const at::Tensor &gg, const at::Tensor &g,
                                              const at::Tensor &x, int64_t act, double thr)
{
  using Sig = std::vector<at::Tensor>(const at::Tensor &, const at::Tensor &, const at::Tensor &,
                                      int64_t, double);
  static const auto h = op<Sig>("dpa3::_activation_bwd2");
  at::AutoDispatchBelowADInplaceOrView guard;
  return h.call(gg, g, x, act, thr);
}

}    // namespace dpa3

TORCH_LIBRARY_FRAGMENT(dpa3, m)
{
  m.def("_gather(Tensor x, Tensor idx) -> Tensor");
  m.def("_segment_sum(Tensor y, Tensor idx, Tensor perm, Tensor ptr) -> Tensor");
  m.def("_edge_sum(Tensor xc, Tensor? xn, Tensor xe, Tensor? b, Tensor idx_c, Tensor? idx_n) "
        "-> Tensor");
  m.def("_outer_sum(Tensor h, Tensor g, Tensor idx, Tensor perm, Tensor ptr) -> Tensor");
  m.def("_outer_h(Tensor h, Tensor G, Tensor idx) -> Tensor");
  m.def("_outer_g(Tensor g, Tensor G, Tensor idx) -> Tensor");
  m.def("_angle_block_fwd(Tensor a, Tensor wa, Tensor pe, Tensor vk, Tensor w, Tensor eik, "
        "Tensor aptr, Tensor nptr, int de, int act, float thr, float alpha, Tensor beta, "
        "Tensor(a!)? into=None) -> Tensor[]");
  m.def("_angle_block_bwd(Tensor a, Tensor wa, Tensor pe, Tensor vk, Tensor w, Tensor eik, "
        "Tensor aptr, Tensor nptr, int de, int act, float thr, float alpha, Tensor beta, "
        "Tensor? gred, Tensor? gaout, bool need_wa, bool need_beta, Tensor(b!)? into=None) "
        "-> Tensor[]");
  // the gradients of <gg, _angle_block_bwd(...)> (second derivatives of angle_block)
  m.def("_angle_block_bwd2(Tensor a, Tensor wa, Tensor pe, Tensor vk, Tensor w, Tensor eik, "
        "Tensor aptr, Tensor nptr, int de, int act, float thr, float alpha, Tensor beta, "
        "Tensor gred, Tensor gaout, Tensor? gga, Tensor? ggwa, Tensor? ggpe, Tensor? ggvk, "
        "Tensor? ggw, Tensor? ggbeta, bool need_wa, bool need_beta) -> Tensor[]");
  // act(x), g act'(x) and the gradients of <gg, g act'(x)> (activation.cpp)
  m.def("_activation(Tensor x, int act, float thr) -> Tensor");
  m.def("_activation_bwd(Tensor g, Tensor x, int act, float thr) -> Tensor");
  m.def("_activation_bwd2(Tensor gg, Tensor g, Tensor x, int act, float thr) -> Tensor[]");
  // process-wide: run the generic kernels on the CPU too (tests, diagnostics); returns the
  // previous setting
  m.def("set_generic_kernels(bool on) -> bool", &dpa3::set_generic_kernels_op);
}

#define DPA3_REGISTER_PRIMITIVES(m, K)         \
  m.impl("_gather", &K::gather);               \
  m.impl("_segment_sum", &K::segment_sum);     \
  m.impl("_edge_sum", &K::edge_sum);           \
  m.impl("_outer_sum", &K::outer_sum);         \
  m.impl("_outer_h", &K::outer_h);             \
  m.impl("_outer_g", &K::outer_g);             \
  m.impl("_angle_block_fwd", &K::angle_fwd);   \
  m.impl("_angle_block_bwd", &K::angle_bwd);   \
  m.impl("_angle_block_bwd2", &K::angle_bwd2); \
  m.impl("_activation", &K::act);              \
  m.impl("_activation_bwd", &K::act_bwd);      \
  m.impl("_activation_bwd2", &K::act_bwd2)

TORCH_LIBRARY_IMPL(dpa3, CPU, m) { DPA3_REGISTER_PRIMITIVES(m, dpa3::Kernels<true>); }

#ifdef DPA3_USE_CUDA
TORCH_LIBRARY_IMPL(dpa3, CUDA, m) { DPA3_REGISTER_PRIMITIVES(m, dpa3::Kernels<false>); }
#endif
