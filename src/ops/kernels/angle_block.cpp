/* ----------------------------------------------------------------------
   dpa3: the angle block of a RepFlow layer in one pass (inference kernel).

   Angles q = (i, j, k) are stored grouped by their edge ij (CSR offsets
   aptr[E+1]) and edges grouped by their centre i (CSR offsets nptr[N+1]);
   both edges of an angle belong to the same centre. With the angle
   features a [A, da], the first da rows of the layer's weight wa [da, D],
   the per-edge part pe [E, D] (centre and ij terms plus bias), the
   k-edge part vk [E, D] and the angle weight w [A]:

     y[q]     = act(a[q] wa + pe[ij] + vk[ik])                   (D columns)
     red[ij]  = sum_q w[q] y[q, :de]                   edge messages [E, de]
     aout[q]  = alpha a[q] + beta * y[q, de:]   updated angles [A, D - de]

   Work is split by centres, so every row an angle reads or accumulates
   (pe, vk, red and their gradients) belongs to the chunk's own centres: no
   atomics, and results do not depend on the number of threads. Within a
   chunk, blocks of consecutive centres (about kBlockAngles angles) are
   processed at a time, and within a block tiles of kTileRows angles: a[tile]
   wa is one register-blocked GEMM (small_gemm.h) into a buffer that stays in
   L1 for the element-wise pass that follows, and the [A, D] intermediate is
   never written to memory. The backward recomputes it the same way and
   takes g_a = g_pre wa^T (and g_wa) from the same tile. This is what makes
   the kernel fast: the composite formulation is bound by memory traffic of
   [A, D] tensors, not by arithmetic.

   Derivatives up to second order: the backward is itself an autograd
   Function (AngleBlockBackward) whose backward is the fused kernel of
   angle_block_grad2.cpp, so training with force losses (forces by autograd
   with create_graph, then the loss gradient) runs here too. Third
   derivatives are refused.
------------------------------------------------------------------------- */

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "angle_common.h"
#include "kernels.h"
#include "simd.h"

namespace dpa3 {

namespace {

using namespace angle;

// Everything one block needs; rows are absolute (angle q, edge e), buf is tile-relative.
template <typename T> struct Block {
  int64_t e0, e1, q0, q1, width, de;
  const int64_t *aptr, *eik;
  const T *a, *wa, *pe, *vk, *w, *beta;
  int64_t da_in;
  T alpha;
  ActParams<T> f;
  T *buf;       // [kTileRows, width]: a wa of the tile's angles after its GEMM
  T *y, *dy;    // scratch [width]
  // forward outputs
  T *red, *aout;
  // backward inputs / outputs (gwa, gbeta: this thread's partial sums, or null)
  const T *gred, *gaout, *wat;    // wat = wa^T [width, da_in]
  T *ga, *gwa, *gpe, *gvk, *gw, *gbeta;
};

// The first edge of the tile of angles [qa, ...) from e (the first edge of an earlier tile).
template <typename T> DPA3_INLINE int64_t first_edge(const Block<T> &b, int64_t e, int64_t qa)
{
  while (b.aptr[e + 1] <= qa) ++e;
  return e;
}

template <typename T>
DPA3_INLINE void forward_rows(const Block<T> &b, int64_t e, int64_t qa, int64_t qb)
{
  const int64_t width = b.width, de = b.de, da = width - de;
  for (; e < b.e1 && b.aptr[e] < qb; ++e) {
    const T *pe_e = b.pe + e * width;
    T *r_e = b.red + e * de;
    const int64_t qend = std::min(b.aptr[e + 1], qb);
    for (int64_t q = std::max(b.aptr[e], qa); q < qend; ++q) {
      T *x = b.buf + (q - qa) * width;
      const T *v_k = b.vk + b.eik[q] * width;
      for (int64_t d = 0; d < width; ++d) x[d] += pe_e[d] + v_k[d];
      activate(b.f, x, b.y, static_cast<T *>(nullptr), width);
      const T wq = b.w[q];
      for (int64_t d = 0; d < de; ++d) r_e[d] += wq * b.y[d];
      if (da > 0) {
        const T *a_q = b.a + q * b.da_in;
        T *o_q = b.aout + q * da;
        for (int64_t d = 0; d < da; ++d) o_q[d] = b.alpha * a_q[d] + b.beta[d] * b.y[de + d];
      }
    }
  }
}

// On return buf holds g_pre (the gradient of the pre-activation) of the tile's angles.
template <typename T>
DPA3_INLINE void backward_rows(const Block<T> &b, int64_t e, int64_t qa, int64_t qb)
{
  const int64_t width = b.width, de = b.de, da = width - de;
  for (; e < b.e1 && b.aptr[e] < qb; ++e) {
    const T *pe_e = b.pe + e * width, *gr_e = b.gred + e * de;
    T *gpe_e = b.gpe + e * width;
    const int64_t qend = std::min(b.aptr[e + 1], qb);
    for (int64_t q = std::max(b.aptr[e], qa); q < qend; ++q) {
      T *x = b.buf + (q - qa) * width;
      const int64_t k = b.eik[q];
      const T *v_k = b.vk + k * width;
      T *gvk_k = b.gvk + k * width;
      for (int64_t d = 0; d < width; ++d) x[d] += pe_e[d] + v_k[d];
      activate(b.f, x, b.y, b.dy, width);
      const T wq = b.w[q];
      T acc = 0;
      for (int64_t d = 0; d < de; ++d) {
        acc += b.y[d] * gr_e[d];
        x[d] = wq * gr_e[d] * b.dy[d];
      }
      if (da > 0) {
        const T *ga_q = b.gaout + q * da;
        for (int64_t d = 0; d < da; ++d) x[de + d] = b.beta[d] * ga_q[d] * b.dy[de + d];
        if (b.gbeta)
          for (int64_t d = 0; d < da; ++d) b.gbeta[d] += ga_q[d] * b.y[de + d];
      }
      for (int64_t d = 0; d < width; ++d) {
        gpe_e[d] += x[d];
        gvk_k[d] += x[d];
      }
      b.gw[q] = acc;
    }
  }
}

// The block's angles kTileRows at a time: x = a wa into buf (small GEMM), then the pass over the
// tile's angles while buf is in L1; the backward then forms g_a and g_wa of the tile from it.
template <typename T> DPA3_INLINE void forward_body(const Block<T> &b)
{
  const int64_t width = b.width, da_in = b.da_in;
  // the block's edge rows (only its own angles reach them): zeroed here, not in a separate pass
  std::fill(b.red + b.e0 * b.de, b.red + b.e1 * b.de, T(0));
  int64_t e = b.e0;
  for (int64_t qa = b.q0; qa < b.q1; qa += kTileRows) {
    const int64_t qb = std::min(qa + kTileRows, b.q1);
    small_gemm_mv(qb - qa, width, da_in, b.a + qa * da_in, da_in, int64_t(1), b.wa, width, T(0),
                  b.buf, width);
    e = first_edge(b, e, qa);
    forward_rows(b, e, qa, qb);
  }
}

template <typename T> DPA3_INLINE void backward_body(const Block<T> &b)
{
  const int64_t width = b.width, da_in = b.da_in, da = width - b.de;
  // the block's edge rows of gpe and gvk (an angle's k-edge belongs to its centre, so to the
  // block: checked by for_each_block), zeroed here rather than in a separate pass
  std::fill(b.gpe + b.e0 * width, b.gpe + b.e1 * width, T(0));
  std::fill(b.gvk + b.e0 * width, b.gvk + b.e1 * width, T(0));
  int64_t e = b.e0;
  for (int64_t qa = b.q0; qa < b.q1; qa += kTileRows) {
    const int64_t qb = std::min(qa + kTileRows, b.q1), nt = qb - qa;
    const T *a_t = b.a + qa * da_in;
    small_gemm_mv(nt, width, da_in, a_t, da_in, int64_t(1), b.wa, width, T(0), b.buf, width);
    e = first_edge(b, e, qa);
    backward_rows(b, e, qa, qb);
    // g_a = alpha g_aout + g_pre wa^T (the alpha term only with an angle output: da_in == da);
    // g_a may be written over g_aout (AngleArgs::into): the tile's rows were read above
    T *ga_t = b.ga + qa * da_in;
    T beta = 0;
    if (da > 0 && b.alpha != T(0)) {
      if (ga_t != b.gaout + qa * da) std::copy(b.gaout + qa * da, b.gaout + qb * da, ga_t);
      beta = b.alpha;
    }
    small_gemm_mv(nt, da_in, width, b.buf, width, int64_t(1), b.wat, da_in, beta, ga_t, da_in);
    // g_wa += a^T g_pre
    if (b.gwa)
      small_gemm_mv(da_in, width, nt, a_t, int64_t(1), da_in, b.buf, width, T(1), b.gwa, width);
  }
}

DPA3_MULTIVERSION void forward_block(const Block<float> &b) { forward_body(b); }
DPA3_MULTIVERSION void forward_block(const Block<double> &b) { forward_body(b); }
DPA3_MULTIVERSION void backward_block(const Block<float> &b) { backward_body(b); }
DPA3_MULTIVERSION void backward_block(const Block<double> &b) { backward_body(b); }

AngleArgs checked(const at::Tensor &a, const at::Tensor &wa, const at::Tensor &pe,
                  const at::Tensor &vk, const at::Tensor &w, const at::Tensor &eik,
                  const at::Tensor &aptr, const at::Tensor &nptr, int64_t de, int64_t act,
                  double thr, double alpha, const at::Tensor &beta)
{
  const char *op = "dpa3::angle_block: ";
  TORCH_CHECK(a.dim() == 2 && wa.dim() == 2 && pe.dim() == 2 && vk.dim() == 2, op,
              "a, wa, pe and vk must be 2-D");
  const int64_t width = wa.size(1), nedge = pe.size(0), nangle = a.size(0);
  TORCH_CHECK(wa.size(0) == a.size(1), op, "wa needs one row per column of a");
  TORCH_CHECK(pe.size(1) == width && vk.size(1) == width, op, "pe and vk need wa's width");
  TORCH_CHECK(vk.size(0) == nedge, op, "pe and vk need one row per edge");
  TORCH_CHECK(w.numel() == nangle && eik.numel() == nangle, op,
              "w and eik need one entry per angle");
  TORCH_CHECK(aptr.numel() == nedge + 1, op, "aptr needs E + 1 offsets");
  TORCH_CHECK(nptr.dim() == 1 && nptr.numel() >= 1, op, "nptr needs N + 1 offsets");
  TORCH_CHECK(de >= 0 && de <= width, op, "bad split width");
  TORCH_CHECK(de == width || a.size(1) == width - de, op, "the angle output needs a's width (",
              a.size(1), " != ", width - de, ")");
  TORCH_CHECK(beta.numel() == width - de, op, "beta needs one entry per angle column");
  for (const auto *t : {&wa, &pe, &vk, &w, &beta})
    TORCH_CHECK(t->scalar_type() == a.scalar_type(), op, "floating inputs need one dtype");
  TORCH_CHECK(eik.scalar_type() == at::kLong && aptr.scalar_type() == at::kLong &&
                  nptr.scalar_type() == at::kLong,
              op, "eik, aptr and nptr must be int64");
  for (const auto *t : {&wa, &pe, &vk, &w, &beta, &eik, &aptr, &nptr})
    TORCH_CHECK(t->device() == a.device(), op, "all inputs must be on one device (", a.device(),
                ")");
  return {a.contiguous(),
          wa.contiguous(),
          pe.contiguous(),
          vk.contiguous(),
          w.reshape({-1}).contiguous(),
          eik.contiguous(),
          aptr.contiguous(),
          nptr.contiguous(),
          beta.reshape({-1}).contiguous(),
          de,
          act,
          thr,
          alpha};
}

}    // namespace

// CPU kernel of dpa3::_angle_block_fwd: {red [E, de], aout [A, D - de]}
std::vector<at::Tensor> cpu::angle_block_fwd(const AngleArgs &in)
{
  const int64_t width = in.wa.size(1), de = in.de, da = width - de, nedge = in.pe.size(0);
  at::Tensor red = at::empty({nedge, de}, in.a.options());    // zeroed block by block
  at::Tensor aout = into_or_empty(in, in.a.size(0), da);
  std::atomic<bool> bad{false};
  AT_DISPATCH_FLOATING_TYPES(in.a.scalar_type(), "dpa3_angle_block_fwd", [&] {
    const int64_t *ap = in.aptr.data_ptr<int64_t>();
    for_each_block<scalar_t>(in, bad, [&](int64_t e0, int64_t e1, std::vector<scalar_t> &bufv) {
      // [kTileRows, width] tile of a wa, then [width] activation scratch
      if (int64_t(bufv.size()) < (kTileRows + 1) * width) bufv.resize((kTileRows + 1) * width);
      Block<scalar_t> b{};
      b.e0 = e0, b.e1 = e1, b.q0 = ap[e0], b.q1 = ap[e1], b.width = width, b.de = de;
      b.da_in = in.a.size(1);
      b.aptr = ap, b.eik = in.eik.data_ptr<int64_t>();
      b.a = in.a.data_ptr<scalar_t>(), b.wa = in.wa.data_ptr<scalar_t>();
      b.pe = in.pe.data_ptr<scalar_t>(), b.vk = in.vk.data_ptr<scalar_t>();
      b.w = in.w.data_ptr<scalar_t>();
      b.beta = in.beta.data_ptr<scalar_t>(), b.alpha = scalar_t(in.alpha);
      b.f = act_params<scalar_t>(in.act, in.thr);
      b.buf = bufv.data(), b.y = bufv.data() + kTileRows * width;
      b.red = red.data_ptr<scalar_t>(), b.aout = aout.data_ptr<scalar_t>();
      forward_block(b);
    });
  });
  TORCH_CHECK(!bad,
              "dpa3::angle_block: the angles do not follow the edge/centre layout "
              "(an angle's two edges must belong to one centre, aptr/nptr must cover all)");
  return {red, aout};
}

// CPU kernel of dpa3::_angle_block_bwd: {ga, gwa, gpe, gvk, gw, gbeta}; gwa and gbeta are
// empty unless asked for
std::vector<at::Tensor> cpu::angle_block_bwd(const AngleArgs &in, const at::Tensor &gred_,
                                             const at::Tensor &gaout_, bool need_wa, bool need_beta)
{
  const int64_t width = in.wa.size(1), de = in.de, da = width - de;
  const int64_t nedge = in.pe.size(0), nangle = in.a.size(0), da_in = in.a.size(1);
  const auto opt = in.a.options();
  const at::Tensor gred = gred_.defined() ? gred_.contiguous() : at::zeros({nedge, de}, opt);
  const at::Tensor gaout = gaout_.defined() ? gaout_.contiguous() : at::zeros({nangle, da}, opt);
  const at::Tensor wat = in.wa.t().contiguous();    // [width, da_in]
  struct {
    at::Tensor ga, gwa, gpe, gvk, gw, gbeta;
  } g;
  g.ga = into_or_empty(in, nangle, da_in);    // may be gaout itself: read tile by tile first
  g.gpe = at::empty({nedge, width}, opt);     // both zeroed block by block
  g.gvk = at::empty({nedge, width}, opt);
  g.gw = at::empty({nangle}, opt);
  // per-thread partial sums of the weight gradients (summed in a fixed order below)
  const int64_t nthreads = at::get_num_threads();
  at::Tensor gwa_part = need_wa ? at::zeros({nthreads, da_in, width}, opt) : at::Tensor();
  at::Tensor gbeta_part = need_beta ? at::zeros({nthreads, da}, opt) : at::Tensor();
  std::atomic<bool> bad{false};
  AT_DISPATCH_FLOATING_TYPES(in.a.scalar_type(), "dpa3_angle_block_bwd", [&] {
    const int64_t *ap = in.aptr.data_ptr<int64_t>();
    for_each_block<scalar_t>(in, bad, [&](int64_t e0, int64_t e1, std::vector<scalar_t> &bufv) {
      const int64_t tid = at::get_thread_num();
      // [kTileRows, width] tile of a wa (then g_pre), then [width] y and y' scratch
      if (int64_t(bufv.size()) < (kTileRows + 2) * width) bufv.resize((kTileRows + 2) * width);
      scalar_t *scratch = bufv.data() + kTileRows * width;
      Block<scalar_t> b{};
      b.e0 = e0, b.e1 = e1, b.q0 = ap[e0], b.q1 = ap[e1], b.width = width, b.de = de;
      b.da_in = da_in;
      b.aptr = ap, b.eik = in.eik.data_ptr<int64_t>();
      b.a = in.a.data_ptr<scalar_t>(), b.wa = in.wa.data_ptr<scalar_t>();
      b.pe = in.pe.data_ptr<scalar_t>(), b.vk = in.vk.data_ptr<scalar_t>();
      b.w = in.w.data_ptr<scalar_t>();
      b.beta = in.beta.data_ptr<scalar_t>(), b.alpha = scalar_t(in.alpha);
      b.f = act_params<scalar_t>(in.act, in.thr);
      b.buf = bufv.data(), b.y = scratch, b.dy = scratch + width;
      b.gred = gred.data_ptr<scalar_t>(), b.gaout = gaout.data_ptr<scalar_t>();
      b.wat = wat.data_ptr<scalar_t>(), b.ga = g.ga.data_ptr<scalar_t>();
      b.gwa = need_wa ? gwa_part[tid].data_ptr<scalar_t>() : nullptr;
      b.gpe = g.gpe.data_ptr<scalar_t>(), b.gvk = g.gvk.data_ptr<scalar_t>();
      b.gw = g.gw.data_ptr<scalar_t>();
      b.gbeta = need_beta ? gbeta_part[tid].data_ptr<scalar_t>() : nullptr;
      backward_block(b);
    });
  });
  TORCH_CHECK(!bad, "dpa3::angle_block: the angles do not follow the edge/centre layout");
  g.gwa = need_wa ? gwa_part.sum(0) : at::empty({0}, opt);
  g.gbeta = need_beta ? gbeta_part.sum(0) : at::empty({0}, opt);
  return {g.ga, g.gwa, g.gpe, g.gvk, g.gw, g.gbeta};
}

// gemm::small_gemm for the kernels above and gemm_rows (angle_common.h), compiled for the CPU
// at hand
DPA3_MULTIVERSION void angle::small_gemm_mv(int64_t m, int64_t n, int64_t k, const float *a,
                                            int64_t ars, int64_t acs, const float *b, int64_t ldb,
                                            float beta, float *c, int64_t ldc)
{
  gemm::small_gemm(m, n, k, a, ars, acs, b, ldb, beta, c, ldc);
}

DPA3_MULTIVERSION void angle::small_gemm_mv(int64_t m, int64_t n, int64_t k, const double *a,
                                            int64_t ars, int64_t acs, const double *b, int64_t ldb,
                                            double beta, double *c, int64_t ldc)
{
  gemm::small_gemm(m, n, k, a, ars, acs, b, ldb, beta, c, ldc);
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The first derivatives as a differentiable function of the forward's inputs and of the incoming
// gradients (gred, gaout): its backward (the second derivatives of angle_block) is the primitive
// _angle_block_bwd2. Inputs are saved as given (not their contiguous copies) so that gradients
// flow back to them.
class AngleBlockBackward : public torch::autograd::Function<AngleBlockBackward> {
 public:
  static variable_list forward(AutogradContext *ctx, const at::Tensor &a, const at::Tensor &wa,
                               const at::Tensor &pe, const at::Tensor &vk, const at::Tensor &w,
                               const at::Tensor &beta, const at::Tensor &gred,
                               const at::Tensor &gaout, const at::Tensor &eik,
                               const at::Tensor &aptr, const at::Tensor &nptr, int64_t de,
                               int64_t act, double thr, double alpha, bool need_wa, bool need_beta)
  {
    ctx->set_materialize_grads(false);
    AngleArgs in = checked(a, wa, pe, vk, w, eik, aptr, nptr, de, act, thr, alpha, beta);
    auto g = prim::angle_block_bwd(in, gred, gaout, need_wa, need_beta);
    ctx->save_for_backward({a, wa, pe, vk, w, beta, gred, gaout, eik, aptr, nptr});
    ctx->saved_data["de"] = de;
    ctx->saved_data["act"] = act;
    ctx->saved_data["thr"] = thr;
    ctx->saved_data["alpha"] = alpha;
    // {ga, gwa, gpe, gvk, gw (w's shape), gbeta (beta's shape)}; gwa/gbeta empty unless asked
    return {g[0],
            g[1],
            g[2],
            g[3],
            g[4].reshape(w.sizes()),
            need_beta ? g[5].reshape(beta.sizes()) : g[5]};
  }

  static variable_list backward(AutogradContext *ctx, variable_list gg)
  {
    TORCH_CHECK(!c10::GradMode::is_enabled(),
                "dpa3::angle_block supports derivatives up to second order only");
    auto s = ctx->get_saved_variables();
    const at::Tensor &w = s[4], &beta = s[5];
    AngleArgs in =
        checked(s[0], s[1], s[2], s[3], w, s[8], s[9], s[10], ctx->saved_data["de"].toInt(),
                ctx->saved_data["act"].toInt(), ctx->saved_data["thr"].toDouble(),
                ctx->saved_data["alpha"].toDouble(), beta);
    // undefined or empty (not computed) upstream gradients count as zero
    auto opt = [](const at::Tensor &t) {
      return t.defined() && t.numel() > 0 ? t : at::Tensor();
    };
    const bool need_wa = ctx->needs_input_grad(1), need_beta = ctx->needs_input_grad(5);
    auto d = prim::angle_block_bwd2(
        in, s[6], s[7], {opt(gg[0]), opt(gg[1]), opt(gg[2]), opt(gg[3]), opt(gg[4]), opt(gg[5])},
        need_wa, need_beta);
    at::Tensor none;
    return {d[0],
            need_wa ? d[1] : none,
            d[2],
            d[3],
            d[4].reshape(w.sizes()),
            need_beta ? d[5].reshape(beta.sizes()) : none,
            d[6],
            d[7],
            none,
            none,
            none,
            none,
            none,
            none,
            none,
            none,
            none};
  }
};

// The backward of angle_block (and of angle_block_replay, whose saved inputs are the same).
// With `into` (first derivatives only, the replay's in-place case): the kernel straight, a's
// gradient written into `into`.
variable_list angle_block_backward(AutogradContext *ctx, const variable_list &grads,
                                   const at::Tensor &into = at::Tensor())
{
  auto s = ctx->get_saved_variables();
  const int64_t de = ctx->saved_data["de"].toInt();
  const int64_t nedge = s[2].size(0), nangle = s[0].size(0), da = s[1].size(1) - de;
  // An unused output has no gradient: zeros for the kernels, and no gradient for beta when
  // the angle output is unused (as in the composite path, where beta is then not reached;
  // AdamW would decay a parameter with a zero gradient, not one without).
  const at::Tensor gred = grads[0].defined() ? grads[0] : at::zeros({nedge, de}, s[0].options());
  const at::Tensor gaout = grads[1].defined() ? grads[1] : at::zeros({nangle, da}, s[0].options());
  // needs_input_grad counts tensor arguments only: beta is the 9th
  const bool need_wa = ctx->needs_input_grad(1);
  const bool need_beta = ctx->needs_input_grad(8) && grads[1].defined();
  // w (beta) enters the first derivatives only multiplied by gred (gaout): without that
  // gradient it is passed detached, so that second derivatives do not reach it either
  const at::Tensor w = grads[0].defined() ? s[4] : s[4].detach();
  const at::Tensor beta = grads[1].defined() ? s[8] : s[8].detach();
  const int64_t act = ctx->saved_data["act"].toInt();
  const double thr = ctx->saved_data["thr"].toDouble(), alpha = ctx->saved_data["alpha"].toDouble();
  variable_list g;
  if (into.defined()) {
    TORCH_CHECK(!c10::GradMode::is_enabled(), "dpa3::angle_block_replay: in place without a graph");
    AngleArgs in = checked(s[0], s[1], s[2], s[3], w, s[5], s[6], s[7], de, act, thr, alpha, beta);
    in.into = into;
    g = prim::angle_block_bwd(in, gred, gaout, need_wa, need_beta);
    g[4] = g[4].reshape(w.sizes());
    if (need_beta) g[5] = g[5].reshape(beta.sizes());
  } else {
    g = AngleBlockBackward::apply(s[0], s[1], s[2], s[3], w, beta, gred, gaout, s[5], s[6], s[7],
                                  de, act, thr, alpha, need_wa, need_beta);
  }
  at::Tensor none;
  return {g[0], need_wa ? g[1] : none,  g[2], g[3], g[4], none, none, none, none, none, none,
          none, need_beta ? g[5] : none};
}

void save_inputs(AutogradContext *ctx, const at::Tensor &a, const at::Tensor &wa,
                 const at::Tensor &pe, const at::Tensor &vk, const at::Tensor &w,
                 const at::Tensor &eik, const at::Tensor &aptr, const at::Tensor &nptr, int64_t de,
                 int64_t act, double thr, double alpha, const at::Tensor &beta)
{
  ctx->save_for_backward({a, wa, pe, vk, w, eik, aptr, nptr, beta});
  ctx->saved_data["de"] = de;
  ctx->saved_data["act"] = act;
  ctx->saved_data["thr"] = thr;
  ctx->saved_data["alpha"] = alpha;
}

class AngleBlock : public torch::autograd::Function<AngleBlock> {
 public:
  static variable_list forward(AutogradContext *ctx, const at::Tensor &a, const at::Tensor &wa,
                               const at::Tensor &pe, const at::Tensor &vk, const at::Tensor &w,
                               const at::Tensor &eik, const at::Tensor &aptr,
                               const at::Tensor &nptr, int64_t de, int64_t act, double thr,
                               double alpha, const at::Tensor &beta)
  {
    ctx->set_materialize_grads(false);
    AngleArgs in = checked(a, wa, pe, vk, w, eik, aptr, nptr, de, act, thr, alpha, beta);
    auto out = prim::angle_block_fwd(in);
    save_inputs(ctx, a, wa, pe, vk, w, eik, aptr, nptr, de, act, thr, alpha, beta);
    return out;
  }

  static variable_list backward(AutogradContext *ctx, variable_list grads)
  {
    return angle_block_backward(ctx, grads);
  }
};

// dpa3::angle_block_replay: the backward pass of angle_block around edge messages computed
// before (the low-memory path's second pass, which needs the graph but not the values).
// Forward returns `red` as given and an uninitialised angle output (only its gradient is
// read); backward is angle_block's (it recomputes the pre-activations from the inputs).
// With `grad_in_place`, a backward without a graph writes a's gradient over the incoming
// gradient of the angle output where that has a's shape (the caller must not read it again:
// the low-memory path's buffer, CPU and generic kernels alike).
class AngleBlockReplay : public torch::autograd::Function<AngleBlockReplay> {
 public:
  static variable_list forward(AutogradContext *ctx, const at::Tensor &a, const at::Tensor &wa,
                               const at::Tensor &pe, const at::Tensor &vk, const at::Tensor &w,
                               const at::Tensor &eik, const at::Tensor &aptr,
                               const at::Tensor &nptr, int64_t de, int64_t act, double thr,
                               double alpha, const at::Tensor &beta, const at::Tensor &red,
                               bool grad_in_place)
  {
    ctx->set_materialize_grads(false);
    ctx->saved_data["in_place"] = grad_in_place;
    AngleArgs in = checked(a, wa, pe, vk, w, eik, aptr, nptr, de, act, thr, alpha, beta);
    TORCH_CHECK(red.dim() == 2 && red.size(0) == pe.size(0) && red.size(1) == de &&
                    red.scalar_type() == a.scalar_type() && red.device() == a.device(),
                "dpa3::angle_block_replay: red must be [E, de] of a's dtype and device");
    save_inputs(ctx, a, wa, pe, vk, w, eik, aptr, nptr, de, act, thr, alpha, beta);
    const int64_t da = wa.size(1) - de;
    // red itself (autograd returns an unmodified input as a view of it: no copy)
    return {red, at::empty({a.size(0), da}, a.options())};
  }

  static variable_list backward(AutogradContext *ctx, variable_list grads)
  {
    at::Tensor into;
    if (ctx->saved_data["in_place"].toBool() && !c10::GradMode::is_enabled() &&
        grads[1].defined()) {
      const at::Tensor a = ctx->get_saved_variables()[0];
      const at::Tensor &g = grads[1];
      if (g.sizes() == a.sizes() && g.is_contiguous() && g.scalar_type() == a.scalar_type() &&
          g.device() == a.device() && at::get_overlap_status(g, a) == at::MemOverlapStatus::No)
        into = g;
    }
    auto g = angle_block_backward(ctx, grads, into);
    g.push_back(at::Tensor());    // red: no gradient
    g.push_back(at::Tensor());    // grad_in_place
    return g;
  }
};

std::vector<at::Tensor> angle_block(const at::Tensor &a, const at::Tensor &wa, const at::Tensor &pe,
                                    const at::Tensor &vk, const at::Tensor &w,
                                    const at::Tensor &eik, const at::Tensor &aptr,
                                    const at::Tensor &nptr, int64_t de, int64_t act, double thr,
                                    double alpha, const at::Tensor &beta)
{
  return AngleBlock::apply(a, wa, pe, vk, w, eik, aptr, nptr, de, act, thr, alpha, beta);
}

std::vector<at::Tensor> angle_block_replay(const at::Tensor &a, const at::Tensor &wa,
                                           const at::Tensor &pe, const at::Tensor &vk,
                                           const at::Tensor &w, const at::Tensor &eik,
                                           const at::Tensor &aptr, const at::Tensor &nptr,
                                           int64_t de, int64_t act, double thr, double alpha,
                                           const at::Tensor &beta, const at::Tensor &red,
                                           bool grad_in_place)
{
  return AngleBlockReplay::apply(a, wa, pe, vk, w, eik, aptr, nptr, de, act, thr, alpha, beta, red,
                                 grad_in_place);
}

// dpa3::angle_block_into: angle_block's forward without derivatives, the angle output written
// into `aout` [A, D - de] (the low-memory path's first pass writes it into its buffer); returns
// the edge messages.
at::Tensor angle_block_into(const at::Tensor &a, const at::Tensor &wa, const at::Tensor &pe,
                            const at::Tensor &vk, const at::Tensor &w, const at::Tensor &eik,
                            const at::Tensor &aptr, const at::Tensor &nptr, int64_t de, int64_t act,
                            double thr, double alpha, const at::Tensor &beta,
                            const at::Tensor &aout)
{
  bool grads = false;
  for (const auto *t : {&a, &wa, &pe, &vk, &w, &beta}) grads = grads || t->requires_grad();
  TORCH_CHECK(!(grads && c10::GradMode::is_enabled()),
              "dpa3::angle_block_into has no derivatives: call it without gradients "
              "(torch.no_grad()) or use dpa3::angle_block");
  AngleArgs in = checked(a, wa, pe, vk, w, eik, aptr, nptr, de, act, thr, alpha, beta);
  TORCH_CHECK(de < wa.size(1), "dpa3::angle_block_into: no angle output (de == wa's width)");
  in.into = aout;
  return prim::angle_block_fwd(in)[0];
}

}    // namespace

}    // namespace dpa3

TORCH_LIBRARY_FRAGMENT(dpa3, m)
{
  m.def("angle_block(Tensor a, Tensor wa, Tensor pe, Tensor vk, Tensor w, Tensor eik, "
        "Tensor aptr, Tensor nptr, int de, int act, float thr, float alpha, Tensor beta) "
        "-> Tensor[]");
  m.def("angle_block_replay(Tensor a, Tensor wa, Tensor pe, Tensor vk, Tensor w, Tensor eik, "
        "Tensor aptr, Tensor nptr, int de, int act, float thr, float alpha, Tensor beta, "
        "Tensor red, bool grad_in_place=False) -> Tensor[]");
  m.def("angle_block_into(Tensor a, Tensor wa, Tensor pe, Tensor vk, Tensor w, Tensor eik, "
        "Tensor aptr, Tensor nptr, int de, int act, float thr, float alpha, Tensor beta, "
        "Tensor(a!) aout) -> Tensor");
}

TORCH_LIBRARY_IMPL(dpa3, CompositeImplicitAutograd, m)
{
  m.impl("angle_block", &dpa3::angle_block);
  m.impl("angle_block_replay", &dpa3::angle_block_replay);
  m.impl("angle_block_into", &dpa3::angle_block_into);
}