/* ----------------------------------------------------------------------
   dpa3: per-centre outer-product sums of edge rows (the symmetrisation of
   a RepFlow layer) without the [E, k, d] intermediate.

   With idx [E] the centre of every edge and (perm, ptr) its inverse index
   (as for gather_rows), h [E, k], g [E, d] and G [N, k, d]:

     center_outer(h, g)      = S[r, c, :] = sum_{e: idx[e] = r} h[e, c] g[e, :]  [N, k, d]
     center_outer_replay(h, g, S): S as given (a view), with center_outer's backward
     center_outer_h(h, G)    = Y[e, :]    = sum_c h[e, c] G[idx[e], c, :]         [E, d]
     center_outer_g(g, G)    = Z[e, c]    = g[e, :] . G[idx[e], c, :]             [E, k]

   The three are bilinear and each one's partial derivatives are the other
   two, so their autograd Functions call each other: derivatives of any
   order (forces in training, create_graph=True) stay on these kernels.
   S runs in parallel over centres, Y and Z over edges: no atomics. These
   are the CPU kernels; other devices: see kernels.h.
------------------------------------------------------------------------- */

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "kernels.h"
#include "simd.h"

namespace dpa3 {

namespace {

void check_index(const at::Tensor &idx, const at::Tensor &perm, const at::Tensor &ptr,
                 int64_t nedge, const char *who)
{
  TORCH_CHECK(idx.scalar_type() == at::kLong && perm.scalar_type() == at::kLong &&
                  ptr.scalar_type() == at::kLong,
              who, ": idx, perm and ptr must be int64");
  TORCH_CHECK(idx.numel() == nedge && perm.numel() == nedge, who,
              ": idx and perm need one entry per edge");
  TORCH_CHECK(ptr.numel() >= 1, who, ": ptr needs N + 1 offsets");
}

// Loop bodies over ranges of rows, multi-versioned for the SIMD width (see simd.h).
template <typename T>
DPA3_INLINE void outer_sum_body(T *op, const T *hp, const T *gp, const int64_t *pm,
                                const int64_t *off, int64_t r0, int64_t r1, int64_t k, int64_t d)
{
  for (int64_t r = r0; r < r1; ++r) {
    T *o = op + r * k * d;
    for (int64_t t = off[r]; t < off[r + 1]; ++t) {
      const int64_t e = pm[t];
      const T *ge = gp + e * d, *he = hp + e * k;
      for (int64_t c = 0; c < k; ++c) {
        const T hc = he[c];
        T *oc = o + c * d;
        for (int64_t j = 0; j < d; ++j) oc[j] += hc * ge[j];
      }
    }
  }
}

template <typename T>
DPA3_INLINE void outer_h_body(T *op, const T *hp, const T *Gp, const int64_t *ix, int64_t e0,
                              int64_t e1, int64_t k, int64_t d)
{
  for (int64_t e = e0; e < e1; ++e) {
    T *o = op + e * d;
    const T *Gr = Gp + ix[e] * k * d, *he = hp + e * k;
    for (int64_t j = 0; j < d; ++j) o[j] = 0;
    for (int64_t c = 0; c < k; ++c) {
      const T hc = he[c];
      const T *Gc = Gr + c * d;
      for (int64_t j = 0; j < d; ++j) o[j] += hc * Gc[j];
    }
  }
}

template <typename T>
DPA3_INLINE void outer_g_body(T *op, const T *gp, const T *Gp, const int64_t *ix, int64_t e0,
                              int64_t e1, int64_t k, int64_t d)
{
  for (int64_t e = e0; e < e1; ++e) {
    const T *ge = gp + e * d, *Gr = Gp + ix[e] * k * d;
    for (int64_t c = 0; c < k; ++c) {
      const T *Gc = Gr + c * d;
      T acc = 0;
      for (int64_t j = 0; j < d; ++j) acc += ge[j] * Gc[j];
      op[e * k + c] = acc;
    }
  }
}

#define DPA3_OUTER_VERSIONS(T)                                                                  \
  DPA3_MULTIVERSION void outer_sum_range(T *op, const T *hp, const T *gp, const int64_t *pm,    \
                                         const int64_t *off, int64_t r0, int64_t r1, int64_t k, \
                                         int64_t d)                                             \
  {                                                                                             \
    outer_sum_body(op, hp, gp, pm, off, r0, r1, k, d);                                          \
  }                                                                                             \
  DPA3_MULTIVERSION void outer_h_range(T *op, const T *hp, const T *Gp, const int64_t *ix,      \
                                       int64_t e0, int64_t e1, int64_t k, int64_t d)            \
  {                                                                                             \
    outer_h_body(op, hp, Gp, ix, e0, e1, k, d);                                                 \
  }                                                                                             \
  DPA3_MULTIVERSION void outer_g_range(T *op, const T *gp, const T *Gp, const int64_t *ix,      \
                                       int64_t e0, int64_t e1, int64_t k, int64_t d)            \
  {                                                                                             \
    outer_g_body(op, gp, Gp, ix, e0, e1, k, d);                                                 \
  }
DPA3_OUTER_VERSIONS(float)
DPA3_OUTER_VERSIONS(double)
#undef DPA3_OUTER_VERSIONS

}    // namespace

// CPU kernels of the primitives dpa3::_outer_sum (S [N, k, d]), _outer_h (Y) and _outer_g (Z)
at::Tensor cpu::outer_sum(const at::Tensor &h_, const at::Tensor &g_, const at::Tensor &perm_,
                          const at::Tensor &ptr_)
{
  const at::Tensor h = h_.contiguous(), g = g_.contiguous(), perm = perm_.contiguous(),
                   ptr = ptr_.contiguous();
  const int64_t n = ptr.numel() - 1, k = h.size(1), d = g.size(1);
  at::Tensor out = at::zeros({n, k, d}, g.options());
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "dpa3_center_outer", [&] {
    const scalar_t *hp = h.data_ptr<scalar_t>(), *gp = g.data_ptr<scalar_t>();
    const int64_t *pm = perm.data_ptr<int64_t>(), *off = ptr.data_ptr<int64_t>();
    scalar_t *op = out.data_ptr<scalar_t>();
    at::parallel_for(0, n, 16, [&](int64_t r0, int64_t r1) {
      outer_sum_range(op, hp, gp, pm, off, r0, r1, k, d);
    });
  });
  return out;
}

at::Tensor cpu::outer_h(const at::Tensor &h_, const at::Tensor &G_, const at::Tensor &idx_)
{
  const at::Tensor h = h_.contiguous(), G = G_.contiguous(), idx = idx_.contiguous();
  const int64_t nedge = h.size(0), k = h.size(1), d = G.size(2);
  at::Tensor out = at::empty({nedge, d}, G.options());
  AT_DISPATCH_FLOATING_TYPES(G.scalar_type(), "dpa3_center_outer_h", [&] {
    const scalar_t *hp = h.data_ptr<scalar_t>(), *Gp = G.data_ptr<scalar_t>();
    const int64_t *ix = idx.data_ptr<int64_t>();
    scalar_t *op = out.data_ptr<scalar_t>();
    at::parallel_for(0, nedge, 256, [&](int64_t e0, int64_t e1) {
      outer_h_range(op, hp, Gp, ix, e0, e1, k, d);
    });
  });
  return out;
}

at::Tensor cpu::outer_g(const at::Tensor &g_, const at::Tensor &G_, const at::Tensor &idx_)
{
  const at::Tensor g = g_.contiguous(), G = G_.contiguous(), idx = idx_.contiguous();
  const int64_t nedge = g.size(0), k = G.size(1), d = g.size(1);
  at::Tensor out = at::empty({nedge, k}, g.options());
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "dpa3_center_outer_g", [&] {
    const scalar_t *gp = g.data_ptr<scalar_t>(), *Gp = G.data_ptr<scalar_t>();
    const int64_t *ix = idx.data_ptr<int64_t>();
    scalar_t *op = out.data_ptr<scalar_t>();
    at::parallel_for(0, nedge, 256, [&](int64_t e0, int64_t e1) {
      outer_g_range(op, gp, Gp, ix, e0, e1, k, d);
    });
  });
  return out;
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor outer_h(const at::Tensor &h, const at::Tensor &G, const at::Tensor &idx,
                   const at::Tensor &perm, const at::Tensor &ptr);
at::Tensor outer_g(const at::Tensor &g, const at::Tensor &G, const at::Tensor &idx,
                   const at::Tensor &perm, const at::Tensor &ptr);

class OuterSum : public torch::autograd::Function<OuterSum> {
 public:
  static at::Tensor forward(AutogradContext *ctx, const at::Tensor &h, const at::Tensor &g,
                            const at::Tensor &idx, const at::Tensor &perm, const at::Tensor &ptr)
  {
    ctx->save_for_backward({h, g, idx, perm, ptr});
    return prim::outer_sum(h, g, idx, perm, ptr);
  }
  static variable_list backward(AutogradContext *ctx, variable_list go)
  {
    auto s = ctx->get_saved_variables();
    return {outer_g(s[1], go[0], s[2], s[3], s[4]), outer_h(s[0], go[0], s[2], s[3], s[4]),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor outer_sum(const at::Tensor &h, const at::Tensor &g, const at::Tensor &idx,
                     const at::Tensor &perm, const at::Tensor &ptr)
{
  return OuterSum::apply(h, g, idx, perm, ptr);
}

// center_outer's backward around a result S computed before (the low-memory path's second
// pass, which needs the graph, not the values): forward returns S (a view), backward is
// center_outer's.
class OuterSumReplay : public torch::autograd::Function<OuterSumReplay> {
 public:
  static at::Tensor forward(AutogradContext *ctx, const at::Tensor &h, const at::Tensor &g,
                            const at::Tensor &idx, const at::Tensor &perm, const at::Tensor &ptr,
                            const at::Tensor &S)
  {
    ctx->save_for_backward({h, g, idx, perm, ptr});
    return S;    // autograd returns an unmodified input as a view of it: no copy
  }
  static variable_list backward(AutogradContext *ctx, variable_list go)
  {
    auto s = ctx->get_saved_variables();
    return {outer_g(s[1], go[0], s[2], s[3], s[4]),
            outer_h(s[0], go[0], s[2], s[3], s[4]),
            at::Tensor(),
            at::Tensor(),
            at::Tensor(),
            at::Tensor()};
  }
};

class OuterH : public torch::autograd::Function<OuterH> {
 public:
  static at::Tensor forward(AutogradContext *ctx, const at::Tensor &h, const at::Tensor &G,
                            const at::Tensor &idx, const at::Tensor &perm, const at::Tensor &ptr)
  {
    ctx->save_for_backward({h, G, idx, perm, ptr});
    return prim::outer_h(h, G, idx);
  }
  static variable_list backward(AutogradContext *ctx, variable_list go)
  {
    auto s = ctx->get_saved_variables();
    return {outer_g(go[0], s[1], s[2], s[3], s[4]), outer_sum(s[0], go[0], s[2], s[3], s[4]),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

class OuterG : public torch::autograd::Function<OuterG> {
 public:
  static at::Tensor forward(AutogradContext *ctx, const at::Tensor &g, const at::Tensor &G,
                            const at::Tensor &idx, const at::Tensor &perm, const at::Tensor &ptr)
  {
    ctx->save_for_backward({g, G, idx, perm, ptr});
    return prim::outer_g(g, G, idx);
  }
  static variable_list backward(AutogradContext *ctx, variable_list go)
  {
    auto s = ctx->get_saved_variables();
    return {outer_h(go[0], s[1], s[2], s[3], s[4]), outer_sum(go[0], s[0], s[2], s[3], s[4]),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor outer_h(const at::Tensor &h, const at::Tensor &G, const at::Tensor &idx,
                   const at::Tensor &perm, const at::Tensor &ptr)
{
  return OuterH::apply(h, G, idx, perm, ptr);
}

at::Tensor outer_g(const at::Tensor &g, const at::Tensor &G, const at::Tensor &idx,
                   const at::Tensor &perm, const at::Tensor &ptr)
{
  return OuterG::apply(g, G, idx, perm, ptr);
}

at::Tensor center_outer(const at::Tensor &h, const at::Tensor &g, const at::Tensor &idx,
                        const at::Tensor &perm, const at::Tensor &ptr)
{
  const char *who = "dpa3::center_outer";
  TORCH_CHECK(h.dim() == 2 && g.dim() == 2 && h.size(0) == g.size(0), who,
              ": h [E, k] and g [E, d] need one row per edge");
  TORCH_CHECK(h.scalar_type() == g.scalar_type(), who, ": h and g need one dtype");
  TORCH_CHECK(h.device() == g.device() && idx.device() == g.device() &&
                  perm.device() == g.device() && ptr.device() == g.device(),
              who, ": h, g, idx, perm and ptr must be on one device");
  check_index(idx, perm, ptr, g.size(0), who);
  return outer_sum(h, g, idx, perm, ptr);
}

at::Tensor center_outer_replay(const at::Tensor &h, const at::Tensor &g, const at::Tensor &idx,
                               const at::Tensor &perm, const at::Tensor &ptr, const at::Tensor &S)
{
  const char *who = "dpa3::center_outer_replay";
  TORCH_CHECK(h.dim() == 2 && g.dim() == 2 && h.size(0) == g.size(0), who,
              ": h [E, k] and g [E, d] need one row per edge");
  TORCH_CHECK(h.device() == g.device() && idx.device() == g.device() &&
                  perm.device() == g.device() && ptr.device() == g.device(),
              who, ": h, g, idx, perm and ptr must be on one device");
  check_index(idx, perm, ptr, g.size(0), who);
  TORCH_CHECK(S.dim() == 3 && S.size(0) == ptr.numel() - 1 && S.size(1) == h.size(1) &&
                  S.size(2) == g.size(1) && S.scalar_type() == g.scalar_type() &&
                  h.scalar_type() == g.scalar_type() && S.device() == g.device(),
              who, ": S must be [N, k, d] of h's and g's dtype and device");
  return OuterSumReplay::apply(h, g, idx, perm, ptr, S);
}

}    // namespace

}    // namespace dpa3

TORCH_LIBRARY_FRAGMENT(dpa3, m)
{
  m.def("center_outer(Tensor h, Tensor g, Tensor idx, Tensor perm, Tensor ptr) -> Tensor");
  m.def("center_outer_replay(Tensor h, Tensor g, Tensor idx, Tensor perm, Tensor ptr, "
        "Tensor S) -> Tensor");
}

TORCH_LIBRARY_IMPL(dpa3, CompositeImplicitAutograd, m)
{
  m.impl("center_outer", &dpa3::center_outer);
  m.impl("center_outer_replay", &dpa3::center_outer_replay);
}
