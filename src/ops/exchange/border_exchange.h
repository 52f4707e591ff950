/* -*- c++ -*- ----------------------------------------------------------
   dpa3: device kernels of the ghost-exchange op (no autograd here).

   Contract (lammps-mpi-design.md 3.3). g is [nall, ...] with rows
   [0, nloc) owned and rows [nloc, nall) ghosts laid out in swap order:
   o_0 = nloc, o_{s+1} = o_s + recv_num[s], o_nswap = nall, so nloc is
   nall - sum(recv_num). L_s = send_idx[send_off[s] : send_off[s+1]].

   forward  y = B g : y = clone(g); for s = 0 .. nswap-1: buf = y[L_s]
                      (after earlier swaps landed); self swap: y[o_s ..] = buf;
                      otherwise send buf to send_proc[s] and receive
                      recv_num[s] rows from recv_proc[s] into y[o_s ..].
   backward gb = B^T gy: gb = clone(gy); for s = nswap-1 .. 0: send
                      gb[o_s .. o_{s+1}) to recv_proc[s], receive send_num[s]
                      rows from send_proc[s], gb.index_add_(0, L_s, rows);
                      finally gb[nloc:] = 0.
------------------------------------------------------------------------- */

#ifndef DPA3_BORDER_EXCHANGE_H
#define DPA3_BORDER_EXCHANGE_H

#include <ATen/core/Tensor.h>

#include <string>

namespace dpa3 {

at::Tensor border_exchange_forward_kernel(const at::Tensor &g, const at::Tensor &send_idx,
                                          const at::Tensor &send_off, const at::Tensor &send_num,
                                          const at::Tensor &recv_num, const at::Tensor &send_proc,
                                          const at::Tensor &recv_proc, const at::Tensor &comm,
                                          const at::Tensor &rank);

at::Tensor border_exchange_backward_kernel(const at::Tensor &grad, const at::Tensor &send_idx,
                                           const at::Tensor &send_off, const at::Tensor &send_num,
                                           const at::Tensor &recv_num, const at::Tensor &send_proc,
                                           const at::Tensor &recv_proc, const at::Tensor &comm,
                                           const at::Tensor &rank);

// shape-only version for the Meta key (torch.export / fake tensors)
at::Tensor border_exchange_meta(const at::Tensor &g, const at::Tensor &send_idx,
                                const at::Tensor &send_off, const at::Tensor &send_num,
                                const at::Tensor &recv_num, const at::Tensor &send_proc,
                                const at::Tensor &recv_proc, const at::Tensor &comm,
                                const at::Tensor &rank);

// Whether the exchange of features g (send_proc, recv_proc, comm, rank as for the op) must run
// on a host copy of g: g is on a device, this call exchanges with other ranks (or enters the
// debug barrier), and MPI may only be called from the main thread. The autograd engine then runs
// the backward exchange (fed a CPU gradient) on the calling thread instead of the device's worker
// thread. Makes no MPI call that is restricted to the main thread.
bool route_through_host(const at::Tensor &g, const at::Tensor &send_proc,
                        const at::Tensor &recv_proc, const at::Tensor &comm,
                        const at::Tensor &rank);

// How exchanges of features on `device` with other ranks of comm run: "cpu", "cuda-aware"
// (device pointers to MPI), "staged" (packed rows through pinned host memory), "host-routed
// (<why>)" (see route_through_host), or "local (<why>)" when there is no other rank to talk to
// (no MPI, comm == 0, or one rank).
std::string exchange_mode(const at::Tensor &comm, c10::Device device);

// element-wise minimum over the ranks of comm (a copy of x without MPI or with comm == 0)
at::Tensor allreduce_min(const at::Tensor &x, const at::Tensor &comm);

// true if the library was built with MPI
bool enable_mpi();

}    // namespace dpa3

#endif
