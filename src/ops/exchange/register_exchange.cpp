/* ----------------------------------------------------------------------
   dpa3: operator registration.

   dpa3::border_exchange and dpa3::border_exchange_backward have device
   kernels (CPU; CUDA when built with it; Meta for shape propagation) and
   an Autograd-key kernel each, a torch::autograd::Function whose backward
   calls the other op. Because B^T's adjoint is B, double backward
   (create_graph=True) works as well. The Autograd kernels are found by the
   dispatcher, so eager mode, TorchScript (torch.autograd.grad inside a
   scripted method) and the C++ API differentiate through the exchange.
   They also decide where device features are exchanged (route_through_host).

   This file holds the TORCH_LIBRARY(dpa3) block (the namespace's one
   definition: the exchange ops and comm_keys); the compute ops in
   kernels/ add theirs with TORCH_LIBRARY_FRAGMENT.
------------------------------------------------------------------------- */

#include "border_exchange.h"
#include "comm_keys.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace dpa3 {

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ExchangeSig = at::Tensor(const at::Tensor &, const at::Tensor &, const at::Tensor &,
                               const at::Tensor &, const at::Tensor &, const at::Tensor &,
                               const at::Tensor &, const at::Tensor &, const at::Tensor &);

const c10::TypedOperatorHandle<ExchangeSig> &exchange_op(bool backward)
{
  static const auto fwd = c10::Dispatcher::singleton()
                              .findSchemaOrThrow("dpa3::border_exchange", "")
                              .typed<ExchangeSig>();
  static const auto bwd = c10::Dispatcher::singleton()
                              .findSchemaOrThrow("dpa3::border_exchange_backward", "")
                              .typed<ExchangeSig>();
  return backward ? bwd : fwd;
}

// the schedule arguments of the ops after g, in COMM_KEYS order
static_assert(NUM_COMM_KEYS == 8, "the exchange ops take g and 8 schedule tensors");

std::vector<std::string> comm_keys() { return {COMM_KEYS.begin(), COMM_KEYS.end()}; }

// Self: the CRTP class (its name shows up as grad_fn); Transposed = false: y = B g (forward
// op), true: y = B^T g (backward op).
template <class Self, bool Transposed>
class ExchangeFunction : public torch::autograd::Function<Self> {
 public:
  static at::Tensor forward(AutogradContext *ctx, const at::Tensor &g, const at::Tensor &send_idx,
                            const at::Tensor &send_off, const at::Tensor &send_num,
                            const at::Tensor &recv_num, const at::Tensor &send_proc,
                            const at::Tensor &recv_proc, const at::Tensor &comm,
                            const at::Tensor &rank)
  {
    // the schedule is integer data and never differentiated: keep it, not its versions
    const at::Tensor *sched[NUM_COMM_KEYS] = {&send_idx,  &send_off,  &send_num, &recv_num,
                                              &send_proc, &recv_proc, &comm,     &rank};
    for (int k = 0; k < NUM_COMM_KEYS; ++k) ctx->saved_data[std::string(COMM_KEYS[k])] = *sched[k];
    at::AutoDispatchBelowADInplaceOrView guard;
    return exchange_op(Transposed)
        .call(g, send_idx, send_off, send_num, recv_num, send_proc, recv_proc, comm, rank);
  }

  static variable_list backward(AutogradContext *ctx, variable_list grad_out)
  {
    variable_list grads(9);
    const at::Tensor &gy = grad_out[0];
    if (!gy.defined()) return grads;
    at::Tensor s[NUM_COMM_KEYS];
    for (int k = 0; k < NUM_COMM_KEYS; ++k)
      s[k] = ctx->saved_data[std::string(COMM_KEYS[k])].toTensor();
    // through the dispatcher, so that create_graph=True records the transposed op
    grads[0] = exchange_op(!Transposed).call(gy, s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]);
    return grads;
  }
};

class BorderExchange : public ExchangeFunction<BorderExchange, false> {};
class BorderExchangeBackward : public ExchangeFunction<BorderExchangeBackward, true> {};

template <class F>
at::Tensor exchange_autograd(const at::Tensor &g, const at::Tensor &send_idx,
                             const at::Tensor &send_off, const at::Tensor &send_num,
                             const at::Tensor &recv_num, const at::Tensor &send_proc,
                             const at::Tensor &recv_proc, const at::Tensor &comm,
                             const at::Tensor &rank)
{
  // The autograd engine runs a backward node on the device's worker thread when its incoming
  // gradient is on that device, and on the calling thread when it is a CPU tensor. Where MPI may
  // only be called from the main thread, device features are therefore exchanged as a host
  // copy, with differentiable copies around the exchange (docs/internals.md, "The exchange on
  // GPUs"); otherwise the device path runs, on the worker thread in the backward.
  if (route_through_host(g, send_proc, recv_proc, comm, rank)) {
    const at::Tensor y = F::apply(g.to(at::kCPU), send_idx.to(at::kCPU), send_off, send_num,
                                  recv_num, send_proc, recv_proc, comm, rank);
    return y.to(g.device());
  }
  return F::apply(g, send_idx, send_off, send_num, recv_num, send_proc, recv_proc, comm, rank);
}

}    // namespace

}    // namespace dpa3

TORCH_LIBRARY(dpa3, m)
{
  m.def("border_exchange(Tensor g, Tensor send_idx, Tensor send_off, Tensor send_num, "
        "Tensor recv_num, Tensor send_proc, Tensor recv_proc, Tensor comm, Tensor rank) -> Tensor");
  m.def("border_exchange_backward(Tensor grad, Tensor send_idx, Tensor send_off, "
        "Tensor send_num, Tensor recv_num, Tensor send_proc, Tensor recv_proc, Tensor comm, "
        "Tensor rank) -> Tensor");
  m.def("enable_mpi() -> bool", &dpa3::enable_mpi);
  m.def("allreduce_min(Tensor x, Tensor comm) -> Tensor", &dpa3::allreduce_min);
  m.def("exchange_mode(Tensor comm, Device device) -> str", &dpa3::exchange_mode);
  m.def("comm_keys() -> str[]", &dpa3::comm_keys);
}

TORCH_LIBRARY_IMPL(dpa3, CPU, m)
{
  m.impl("border_exchange", &dpa3::border_exchange_forward_kernel);
  m.impl("border_exchange_backward", &dpa3::border_exchange_backward_kernel);
}

#ifdef DPA3_USE_CUDA
TORCH_LIBRARY_IMPL(dpa3, CUDA, m)
{
  m.impl("border_exchange", &dpa3::border_exchange_forward_kernel);
  m.impl("border_exchange_backward", &dpa3::border_exchange_backward_kernel);
}
#endif

TORCH_LIBRARY_IMPL(dpa3, Meta, m)
{
  m.impl("border_exchange", &dpa3::border_exchange_meta);
  m.impl("border_exchange_backward", &dpa3::border_exchange_meta);
}

TORCH_LIBRARY_IMPL(dpa3, Autograd, m)
{
  m.impl("border_exchange", &dpa3::exchange_autograd<dpa3::BorderExchange>);
  m.impl("border_exchange_backward", &dpa3::exchange_autograd<dpa3::BorderExchangeBackward>);
}
