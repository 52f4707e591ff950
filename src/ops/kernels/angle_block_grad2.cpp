/* ----------------------------------------------------------------------
   dpa3: second derivatives of the angle block (CPU kernel of the primitive
   dpa3::_angle_block_bwd2; the generic implementation is in generic.cpp).

   Forward (angle_block.cpp), for an angle q with edges e = ij(q), k = ik(q):

     x[q] = a[q] Wa + pe[e] + vk[k]                              [D]
     y[q] = act(x[q]),  red[e] = sum_q w[q] y[q, :de],  aout[q] = alpha a[q] + beta * y[q, de:]

   First derivatives (angle_block_bwd), given gred [E, de] and gaout [A, da]
   (da = D - de; * is the element-wise product, y' = act'(x)):

     gy[q] = [w[q] gred[e], beta * gaout[q]]                     [D]
     gx[q] = gy[q] * y'[q]
     ga[q] = gx[q] Wa^T + alpha gaout[q]    (the alpha term only when da > 0)
     gWa   = sum_q a[q]^T gx[q],   gpe[e] = sum_{q of e} gx[q],   gvk[k] = sum_{q: ik(q)=k} gx[q]
     gw[q] = <y[q, :de], gred[e]>,  gbeta = sum_q gaout[q] * y[q, de:]

   Second derivatives: with incoming gradients Ga, GWa, Gpe, Gvk, Gw, Gbeta
   of those six outputs, the scalar L = <Ga, ga> + ... + <Gbeta, gbeta> is

     L = sum_q [ <H[q], gx[q]> + <K[q], y[q]> ] + alpha sum_q <Ga[q], gaout[q]>,
     H[q] = Ga[q] Wa + a[q] GWa + Gpe[e] + Gvk[k]                [D]
     K[q] = [Gw[q] gred[e], Gbeta * gaout[q]]                    [D]

   (<Ga[q], gx[q] Wa^T> = <Ga[q] Wa, gx[q]>, <GWa, a[q]^T gx[q]> = <a[q] GWa, gx[q]>).
   L depends on x through y' and y, on a and Wa also through H, and on w,
   beta, gred, gaout through gy and K. With P[q] = H[q] * y'[q] and
   X[q] = dL/dx[q] = H[q] * gy[q] * y''[q] + K[q] * y'[q]:

     dL/da[q]     = X[q] Wa^T + gx[q] GWa^T
     dL/dWa       = sum_q (a[q]^T X[q] + Ga[q]^T gx[q])
     dL/dpe[e]    = sum_{q of e} X[q],   dL/dvk[k] = sum_{q: ik(q)=k} X[q]
     dL/dw[q]     = <P[q, :de], gred[e]>
     dL/dbeta     = sum_q P[q, de:] * gaout[q]
     dL/dgred[e]  = sum_{q of e} (w[q] P[q, :de] + Gw[q] y[q, :de])
     dL/dgaout[q] = beta * P[q, de:] + Gbeta * y[q, de:] + alpha Ga[q]   (when da > 0)

   y'' of each activation: angle_common.h. The kernel works block by block
   like the first-order one: per block, x and H are formed by small GEMMs
   into two cache-resident [angles, D] buffers, which the loop over the
   angles overwrites with X and gx, and four more GEMMs give dL/da and
   dL/dWa; no [A, D] tensor is written to memory. All rows an angle touches
   belong to its centre's block (no atomics); the weight gradients are summed
   per thread, then in a fixed order.
------------------------------------------------------------------------- */

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "angle_common.h"
#include "kernels.h"
#include "simd.h"

namespace dpa3 {

namespace {

using namespace angle;

template <typename T> struct Block2 {
  int64_t e0, e1, q0, width, de, da_in;
  const int64_t *aptr, *eik;
  const T *pe, *vk, *w, *beta, *gred, *gaout;
  T alpha;
  ActParams<T> f;
  // incoming gradients (null: zero); ga is read only for the alpha term
  const T *ga, *gpe, *gvk, *gw, *gbeta;
  T *xbuf;                // [angles of the block, width]: a Wa on entry, X on return
  T *hbuf;                // [angles of the block, width]: Ga Wa + a GWa on entry, gx on return
  T *y, *dy, *ddy, *p;    // scratch [width]
  // outputs (rows of the block's own edges and angles; dbeta: this thread's partial sum)
  T *dpe, *dvk, *dw, *dbeta, *dgred, *dgaout;
};

template <typename T> DPA3_INLINE void grad2_body(const Block2<T> &b)
{
  const int64_t width = b.width, de = b.de, da = width - de;
  T *y = b.y, *dy = b.dy, *ddy = b.ddy, *p = b.p;
  for (int64_t e = b.e0; e < b.e1; ++e) {
    const T *pe_e = b.pe + e * width, *gr_e = b.gred + e * de;
    const T *gpe_e = b.gpe ? b.gpe + e * width : nullptr;
    T *dpe_e = b.dpe + e * width, *dgr_e = b.dgred + e * de;
    for (int64_t q = b.aptr[e]; q < b.aptr[e + 1]; ++q) {
      T *x = b.xbuf + (q - b.q0) * width, *h = b.hbuf + (q - b.q0) * width;
      const int64_t k = b.eik[q];
      const T *v_k = b.vk + k * width;
      for (int64_t d = 0; d < width; ++d) x[d] += pe_e[d] + v_k[d];
      activate(b.f, x, y, dy, width, ddy);
      if (gpe_e)
        for (int64_t d = 0; d < width; ++d) h[d] += gpe_e[d];
      if (b.gvk) {
        const T *gv_k = b.gvk + k * width;
        for (int64_t d = 0; d < width; ++d) h[d] += gv_k[d];
      }
      // P = H y'; X = H gy y'' + K y'; then h becomes gx = gy y'
      for (int64_t d = 0; d < width; ++d) p[d] = h[d] * dy[d];
      const T wq = b.w[q], gwq = b.gw ? b.gw[q] : T(0);
      T acc = 0;
      for (int64_t d = 0; d < de; ++d) {
        const T gy = wq * gr_e[d];
        x[d] = h[d] * gy * ddy[d] + gwq * gr_e[d] * dy[d];
        h[d] = gy * dy[d];
        acc += p[d] * gr_e[d];
        dgr_e[d] += wq * p[d] + gwq * y[d];
      }
      b.dw[q] = acc;
      if (da > 0) {
        const T *ga_q = b.gaout + q * da;
        T *dga_q = b.dgaout + q * da;
        for (int64_t d = 0; d < da; ++d) {
          const T gy = b.beta[d] * ga_q[d];
          const T kq = b.gbeta ? b.gbeta[d] * ga_q[d] : T(0);
          x[de + d] = h[de + d] * gy * ddy[de + d] + kq * dy[de + d];
          h[de + d] = gy * dy[de + d];
          dga_q[d] = b.beta[d] * p[de + d];
        }
        if (b.gbeta)
          for (int64_t d = 0; d < da; ++d) dga_q[d] += b.gbeta[d] * y[de + d];
        if (b.ga && b.alpha != T(0)) {
          const T *Ga_q = b.ga + q * b.da_in;
          for (int64_t d = 0; d < da; ++d) dga_q[d] += b.alpha * Ga_q[d];
        }
        if (b.dbeta)
          for (int64_t d = 0; d < da; ++d) b.dbeta[d] += p[de + d] * ga_q[d];
      }
      T *dvk_k = b.dvk + k * width;
      for (int64_t d = 0; d < width; ++d) {
        dpe_e[d] += x[d];
        dvk_k[d] += x[d];
      }
    }
  }
}

DPA3_MULTIVERSION void grad2_block(const Block2<float> &b) { grad2_body(b); }
DPA3_MULTIVERSION void grad2_block(const Block2<double> &b) { grad2_body(b); }

at::Tensor contiguous_or_undefined(const at::Tensor &t) { return t.defined() ? t.contiguous() : t; }

template <typename T> const T *ptr_or_null(const at::Tensor &t)
{
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

}    // namespace

// CPU kernel of dpa3::_angle_block_bwd2: {da, dwa, dpe, dvk, dw, dbeta, dgred, dgaout}; dwa and
// dbeta are empty unless asked for
std::vector<at::Tensor> cpu::angle_block_bwd2(const AngleArgs &in, const at::Tensor &gred_,
                                              const at::Tensor &gaout_, const AngleGrads &gg_,
                                              bool need_wa, bool need_beta)
{
  const int64_t width = in.wa.size(1), de = in.de, da = width - de;
  const int64_t nedge = in.pe.size(0), nangle = in.a.size(0), da_in = in.a.size(1);
  const auto opt = in.a.options();
  const at::Tensor gred = gred_.contiguous(), gaout = gaout_.contiguous();
  TORCH_CHECK(gred.sizes() == at::IntArrayRef({nedge, de}) &&
                  gaout.sizes() == at::IntArrayRef({nangle, da}),
              "dpa3::angle_block: bad shapes of the incoming gradients");
  const AngleGrads gg{contiguous_or_undefined(gg_.ga),  contiguous_or_undefined(gg_.gwa),
                      contiguous_or_undefined(gg_.gpe), contiguous_or_undefined(gg_.gvk),
                      contiguous_or_undefined(gg_.gw),  contiguous_or_undefined(gg_.gbeta)};
  at::Tensor dwa_part, dbeta_part;
  at::Tensor da_ = at::empty({nangle, da_in}, opt);
  at::Tensor dpe = at::zeros({nedge, width}, opt), dvk = at::zeros({nedge, width}, opt);
  at::Tensor dw = at::empty({nangle}, opt), dgred = at::zeros({nedge, de}, opt);
  at::Tensor dgaout = at::empty({nangle, da}, opt);
  const int64_t nthreads = at::get_num_threads();
  if (need_wa) dwa_part = at::zeros({nthreads, da_in, width}, opt);
  if (need_beta) dbeta_part = at::zeros({nthreads, da}, opt);
  std::atomic<bool> bad{false};
  AT_DISPATCH_FLOATING_TYPES(in.a.scalar_type(), "dpa3_angle_block_bwd2", [&] {
    using T = scalar_t;
    const int64_t *ap = in.aptr.data_ptr<int64_t>();
    const T *wa = in.wa.data_ptr<T>(), *gwa = ptr_or_null<T>(gg.gwa);
    const T *Ga = ptr_or_null<T>(gg.ga);
    for_each_block<T>(in, bad, [&](int64_t e0, int64_t e1, std::vector<T> &bufv) {
      const int64_t q0 = ap[e0], nq = ap[e1] - q0, tid = at::get_thread_num();
      const T *a_blk = in.a.data_ptr<T>() + q0 * da_in;
      const T *ga_blk = Ga ? Ga + q0 * da_in : nullptr;
      if (int64_t(bufv.size()) < (2 * nq + 4) * width) bufv.resize((2 * nq + 4) * width);
      T *xbuf = bufv.data(), *hbuf = xbuf + nq * width, *scratch = hbuf + nq * width;
      // x = a Wa; H = Ga Wa + a GWa (the per-row terms are added in the loop)
      gemm_rows(false, false, nq, width, da_in, a_blk, da_in, wa, width, T(0), xbuf, width);
      if (ga_blk)
        gemm_rows(false, false, nq, width, da_in, ga_blk, da_in, wa, width, T(0), hbuf, width);
      else
        std::fill(hbuf, hbuf + nq * width, T(0));
      if (gwa)
        gemm_rows(false, false, nq, width, da_in, a_blk, da_in, gwa, width, T(1), hbuf, width);
      Block2<T> b{};
      b.e0 = e0, b.e1 = e1, b.q0 = q0, b.width = width, b.de = de, b.da_in = da_in;
      b.aptr = ap, b.eik = in.eik.data_ptr<int64_t>();
      b.pe = in.pe.data_ptr<T>(), b.vk = in.vk.data_ptr<T>(), b.w = in.w.data_ptr<T>();
      b.beta = in.beta.data_ptr<T>(), b.gred = gred.data_ptr<T>(), b.gaout = gaout.data_ptr<T>();
      b.alpha = T(in.alpha), b.f = act_params<T>(in.act, in.thr);
      b.ga = Ga, b.gpe = ptr_or_null<T>(gg.gpe), b.gvk = ptr_or_null<T>(gg.gvk);
      b.gw = ptr_or_null<T>(gg.gw), b.gbeta = ptr_or_null<T>(gg.gbeta);
      b.xbuf = xbuf, b.hbuf = hbuf;
      b.y = scratch, b.dy = scratch + width, b.ddy = scratch + 2 * width, b.p = scratch + 3 * width;
      b.dpe = dpe.data_ptr<T>(), b.dvk = dvk.data_ptr<T>(), b.dw = dw.data_ptr<T>();
      b.dbeta = need_beta ? dbeta_part[tid].data_ptr<T>() : nullptr;
      b.dgred = dgred.data_ptr<T>(), b.dgaout = dgaout.data_ptr<T>();
      grad2_block(b);
      // dL/da = X Wa^T + gx GWa^T; dL/dWa += a^T X + Ga^T gx
      T *da_blk = da_.data_ptr<T>() + q0 * da_in;
      gemm_rows(false, true, nq, da_in, width, xbuf, width, wa, width, T(0), da_blk, da_in);
      if (gwa)
        gemm_rows(false, true, nq, da_in, width, hbuf, width, gwa, width, T(1), da_blk, da_in);
      if (need_wa) {
        T *dwa = dwa_part[tid].data_ptr<T>();
        gemm_rows(true, false, da_in, width, nq, a_blk, da_in, xbuf, width, T(1), dwa, width);
        if (ga_blk)
          gemm_rows(true, false, da_in, width, nq, ga_blk, da_in, hbuf, width, T(1), dwa, width);
      }
    });
  });
  TORCH_CHECK(!bad, "dpa3::angle_block: the angles do not follow the edge/centre layout");
  at::Tensor dwa = need_wa ? dwa_part.sum(0) : at::empty({0}, opt);
  at::Tensor dbeta = need_beta ? dbeta_part.sum(0) : at::empty({0}, opt);
  if (da == 0) dgaout.zero_();
  return {da_, dwa, dpe, dvk, dw, dbeta, dgred, dgaout};
}

}    // namespace dpa3
