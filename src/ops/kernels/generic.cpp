/* ----------------------------------------------------------------------
   dpa3: generic implementations of the primitives (see kernels.h).

   ATen calls only (index_select, index_add, bmm, mm, element-wise math),
   so they run on every device torch supports; they are the CUDA kernels of
   the primitives that have no hand-written CUDA kernel, and the CPU tests
   run them against the fused CPU kernels (set_generic_kernels). Each one
   computes the same function as its CPU kernel; only the order of
   floating-point summation differs (index_add instead of CSR loops).
------------------------------------------------------------------------- */

#include "kernels.h"

#include <ATen/ATen.h>

#include <cmath>

namespace dpa3 {

at::Tensor generic::gather(const at::Tensor &x, const at::Tensor &idx)
{
  return x.index_select(0, idx);
}

at::Tensor generic::segment_sum(const at::Tensor &y, const at::Tensor &idx, int64_t nrows)
{
  auto sizes = y.sizes().vec();
  sizes[0] = nrows;
  return at::zeros(sizes, y.options()).index_add_(0, idx, y);
}

at::Tensor generic::edge_sum(const at::Tensor &xc, const at::Tensor &xn, const at::Tensor &xe,
                             const at::Tensor &b, const at::Tensor &ic, const at::Tensor &in)
{
  // ((c + n) + x) + b, the order of the CPU kernel
  at::Tensor out = xc.index_select(0, ic);
  if (xn.defined()) out = out + xn.index_select(0, in);
  out = out + xe;
  if (b.defined()) out = out + b.reshape({-1});
  return out;
}

at::Tensor generic::outer_sum(const at::Tensor &h, const at::Tensor &g, const at::Tensor &idx,
                              int64_t nrows)
{
  // [E, k, d] outer products summed per centre
  const at::Tensor t = h.unsqueeze(2) * g.unsqueeze(1);
  return at::zeros({nrows, h.size(1), g.size(1)}, g.options()).index_add_(0, idx, t);
}

at::Tensor generic::outer_h(const at::Tensor &h, const at::Tensor &G, const at::Tensor &idx)
{
  // Y[e] = h[e] G[idx[e]]: [E, 1, k] x [E, k, d]
  return at::bmm(h.unsqueeze(1), G.index_select(0, idx)).squeeze(1);
}

at::Tensor generic::outer_g(const at::Tensor &g, const at::Tensor &G, const at::Tensor &idx)
{
  // Z[e] = G[idx[e]] g[e]: [E, k, d] x [E, d, 1]
  return at::bmm(G.index_select(0, idx), g.unsqueeze(2)).squeeze(2);
}

namespace {

// y = act(x) and, if dy (ddy) is given, act'(x) (act''(x)): the activations of angle_common.h
at::Tensor activate(const at::Tensor &x, int64_t act, double thr, at::Tensor *dy,
                    at::Tensor *ddy = nullptr)
{
  if (act == ACT_TANH) {
    at::Tensor y = at::tanh(x);
    if (dy) *dy = 1 - y * y;
    if (ddy) *ddy = -2 * y * *dy;
    return y;
  }
  const at::Tensor s = at::sigmoid(x);
  at::Tensor y = x * s;
  if (dy) *dy = s * (1 + x * (1 - s));
  if (ddy) *ddy = s * (1 - s) * (2 + x * (1 - 2 * s));
  if (act == ACT_SILUT) {
    // above the threshold: tanh(slope (x - thr)) + silu(thr), slope = silu'(thr)
    const double st = 1.0 / (1.0 + std::exp(-thr));
    const double slope = st * (1.0 + thr * (1.0 - st));
    const at::Tensor tail = x >= thr;
    const at::Tensor t = at::tanh(slope * (x - thr));
    y = at::where(tail, t + thr * st, y);
    if (dy) *dy = at::where(tail, slope * (1 - t * t), *dy);
    if (ddy) *ddy = at::where(tail, -2 * slope * slope * t * (1 - t * t), *ddy);
  }
  return y;
}

// the edge ij of every angle, from the CSR offsets aptr [E + 1]
at::Tensor angle_edges(const AngleArgs &in)
{
  const at::Tensor counts =
      in.aptr.narrow(0, 1, in.aptr.numel() - 1) - in.aptr.narrow(0, 0, in.aptr.numel() - 1);
  return at::repeat_interleave(counts, std::optional<int64_t>(in.a.size(0)));
}

// the pre-activation a wa + pe[ij] + vk[ik] [A, D]
at::Tensor pre_activation(const AngleArgs &in, const at::Tensor &eij)
{
  return in.a.mm(in.wa) + (in.pe.index_select(0, eij) + in.vk.index_select(0, in.eik));
}

}    // namespace

std::vector<at::Tensor> generic::angle_block_fwd(const AngleArgs &in)
{
  const int64_t width = in.wa.size(1), de = in.de, da = width - de, nedge = in.pe.size(0);
  const at::Tensor eij = angle_edges(in);
  const at::Tensor y = activate(pre_activation(in, eij), in.act, in.thr, nullptr);
  const at::Tensor red = at::zeros({nedge, de}, y.options())
                             .index_add_(0, eij, in.w.unsqueeze(1) * y.narrow(1, 0, de));
  at::Tensor aout = da > 0 ? in.alpha * in.a + in.beta * y.narrow(1, de, da)
                           : at::empty({in.a.size(0), 0}, y.options());
  if (in.into.defined()) aout = into_or_empty(in, in.a.size(0), da).copy_(aout);
  return {red, aout};
}

std::vector<at::Tensor> generic::angle_block_bwd(const AngleArgs &in, const at::Tensor &gred_,
                                                 const at::Tensor &gaout_, bool need_wa,
                                                 bool need_beta)
{
  const int64_t width = in.wa.size(1), de = in.de, da = width - de, nedge = in.pe.size(0);
  const int64_t nangle = in.a.size(0);
  const auto opt = in.a.options();
  const at::Tensor gred = gred_.defined() ? gred_ : at::zeros({nedge, de}, opt);
  const at::Tensor gaout = gaout_.defined() ? gaout_ : at::zeros({nangle, da}, opt);
  const at::Tensor eij = angle_edges(in);
  at::Tensor dy;
  const at::Tensor y = activate(pre_activation(in, eij), in.act, in.thr, &dy);
  const at::Tensor gred_q = gred.index_select(0, eij);    // [A, de]
  const at::Tensor gw = (y.narrow(1, 0, de) * gred_q).sum(1);
  at::Tensor gy = in.w.unsqueeze(1) * gred_q;
  if (da > 0) gy = at::cat({gy, in.beta * gaout}, 1);
  const at::Tensor gpre = gy * dy;    // gradient of the pre-activation [A, D]
  const at::Tensor gpe = at::zeros({nedge, width}, opt).index_add_(0, eij, gpre);
  const at::Tensor gvk = at::zeros({nedge, width}, opt).index_add_(0, in.eik, gpre);
  at::Tensor ga = gpre.mm(in.wa.t());
  if (da > 0 && in.alpha != 0.0) ga = ga + in.alpha * gaout;
  const at::Tensor gwa = need_wa ? in.a.t().mm(gpre) : at::empty({0}, opt);
  // beta has da entries (none when da == 0); empty when not asked for, as on the CPU
  const at::Tensor gbeta = need_beta ? (gaout * y.narrow(1, de, da)).sum(0) : at::empty({0}, opt);
  // last: `into` may be gaout itself
  if (in.into.defined()) ga = into_or_empty(in, nangle, in.a.size(1)).copy_(ga);
  return {ga, gwa, gpe, gvk, gw, gbeta};
}

// The formulas are derived in angle_block_grad2.cpp (same names); [A, D] intermediates.
std::vector<at::Tensor> generic::angle_block_bwd2(const AngleArgs &in, const at::Tensor &gred,
                                                  const at::Tensor &gaout, const AngleGrads &gg,
                                                  bool need_wa, bool need_beta)
{
  const int64_t width = in.wa.size(1), de = in.de, da = width - de, nedge = in.pe.size(0);
  const int64_t nangle = in.a.size(0);
  const auto opt = in.a.options();
  const at::Tensor eij = angle_edges(in);
  at::Tensor dy, ddy;
  const at::Tensor y = activate(pre_activation(in, eij), in.act, in.thr, &dy, &ddy);
  const at::Tensor gred_q = gred.index_select(0, eij);    // [A, de]
  const at::Tensor w = in.w.unsqueeze(1);
  at::Tensor gy = w * gred_q;
  if (da > 0) gy = at::cat({gy, in.beta * gaout}, 1);
  const at::Tensor gx = gy * dy;
  // H = Ga Wa + a GWa + Gpe[ij] + Gvk[ik], K = [Gw gred[ij], Gbeta gaout]
  at::Tensor h = at::zeros({nangle, width}, opt);
  if (gg.ga.defined()) h = h + gg.ga.mm(in.wa);
  if (gg.gwa.defined()) h = h + in.a.mm(gg.gwa);
  if (gg.gpe.defined()) h = h + gg.gpe.index_select(0, eij);
  if (gg.gvk.defined()) h = h + gg.gvk.index_select(0, in.eik);
  at::Tensor k = at::zeros({nangle, width}, opt);
  if (gg.gw.defined()) k.narrow(1, 0, de).copy_(gg.gw.reshape({-1, 1}) * gred_q);
  if (gg.gbeta.defined() && da > 0) k.narrow(1, de, da).copy_(gg.gbeta.reshape({-1}) * gaout);
  const at::Tensor p = h * dy;
  const at::Tensor x = h * gy * ddy + k * dy;    // dL/dx [A, D]
  at::Tensor da_ = x.mm(in.wa.t());
  if (gg.gwa.defined()) da_ = da_ + gx.mm(gg.gwa.t());
  at::Tensor dwa = at::empty({0}, opt);
  if (need_wa) {
    dwa = in.a.t().mm(x);
    if (gg.ga.defined()) dwa = dwa + gg.ga.t().mm(gx);
  }
  const at::Tensor dpe = at::zeros({nedge, width}, opt).index_add_(0, eij, x);
  const at::Tensor dvk = at::zeros({nedge, width}, opt).index_add_(0, in.eik, x);
  const at::Tensor p_e = p.narrow(1, 0, de), p_a = p.narrow(1, de, da);
  const at::Tensor dw = (p_e * gred_q).sum(1);
  at::Tensor dgred_q = w * p_e;
  if (gg.gw.defined()) dgred_q = dgred_q + gg.gw.reshape({-1, 1}) * y.narrow(1, 0, de);
  const at::Tensor dgred = at::zeros({nedge, de}, opt).index_add_(0, eij, dgred_q);
  const at::Tensor dbeta = need_beta ? (p_a * gaout).sum(0) : at::empty({0}, opt);
  at::Tensor dgaout = at::zeros({nangle, da}, opt);
  if (da > 0) {
    dgaout = in.beta * p_a;
    if (gg.gbeta.defined()) dgaout = dgaout + gg.gbeta.reshape({-1}) * y.narrow(1, de, da);
    if (gg.ga.defined() && in.alpha != 0.0) dgaout = dgaout + in.alpha * gg.ga;
  }
  return {da_, dwa, dpe, dvk, dw, dbeta, dgred, dgaout};
}

at::Tensor generic::activation(const at::Tensor &x, int64_t act, double thr)
{
  return activate(x, act, thr, nullptr);
}

at::Tensor generic::activation_bwd(const at::Tensor &g, const at::Tensor &x, int64_t act,
                                   double thr)
{
  at::Tensor dy;
  activate(x, act, thr, &dy);
  return g * dy;
}

std::vector<at::Tensor> generic::activation_bwd2(const at::Tensor &gg, const at::Tensor &g,
                                                 const at::Tensor &x, int64_t act, double thr)
{
  at::Tensor dy, ddy;
  activate(x, act, thr, &dy, &ddy);
  return {gg * dy, gg * g * ddy};
}

}    // namespace dpa3
