/* ----------------------------------------------------------------------
   dpa3: device kernels of the ghost-exchange op (see border_exchange.h).

   One implementation for all devices: packing and unpacking are ATen ops
   (index_select, copy_, index_add_) on the feature device; only the
   transport differs. CPU: host pointers to MPI. CUDA (DPA3_USE_CUDA only):
   device pointers to MPI when it is CUDA-aware, otherwise only the packed
   rows are staged through pinned host buffers.
------------------------------------------------------------------------- */

#include "border_exchange.h"

#include "dpa3_mpi.h"

#include <ATen/ATen.h>
#ifdef DPA3_USE_CUDA
#include <c10/core/impl/VirtualGuardImpl.h>
#endif

#include <cstdint>
#include <vector>

namespace dpa3 {

namespace {

constexpr const char *FWD_NAME = "dpa3::border_exchange";
constexpr const char *BWD_NAME = "dpa3::border_exchange_backward";

// Tags: swap index for the forward, swap index + TAG_BACKWARD for the backward, so a rank that
// runs a forward exchange against a peer running a backward one hangs instead of mixing data.
// MPI guarantees tags up to 32767.
constexpr int64_t TAG_BACKWARD = 16384;

struct Schedule {
  int64_t nswap = 0;
  int64_t nall = 0;
  int64_t nloc = 0;
  int64_t width = 0;    // elements per row
  int rank = 0;
  int64_t comm = 0;
  bool all_self = true;
  std::vector<int64_t> send_off, send_num, recv_num, recv_first, send_proc, recv_proc;

  bool is_self(int64_t s) const { return send_proc[s] == rank && recv_proc[s] == rank; }
};

std::vector<int64_t> host_ints(const at::Tensor &t, const char *opname, const char *name,
                               int64_t expected)
{
  TORCH_CHECK(t.defined(), opname, ": ", name, " is undefined");
  TORCH_CHECK(t.device().is_cpu(), opname, ": ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(at::isIntegralType(t.scalar_type(), /*includeBool=*/false), opname, ": ", name,
              " must be an integer tensor, got ", t.scalar_type());
  TORCH_CHECK(t.dim() <= 1, opname, ": ", name, " must be 1-D, got shape ", t.sizes());
  if (expected >= 0)
    TORCH_CHECK(t.numel() == expected, opname, ": ", name, " must have ", expected,
                " entries, got ", t.numel());
  at::Tensor c = t.to(at::kLong).contiguous();
  const int64_t *p = c.const_data_ptr<int64_t>();
  return std::vector<int64_t>(p, p + c.numel());
}

template <typename T> void check_indices(const T *idx, const Schedule &S, const char *opname)
{
  for (int64_t s = 0; s < S.nswap; ++s) {
    const int64_t limit = S.recv_first[s];
    for (int64_t k = S.send_off[s]; k < S.send_off[s + 1]; ++k) {
      const int64_t i = static_cast<int64_t>(idx[k]);
      TORCH_CHECK(i >= 0 && i < limit, opname, ": send_idx[", k, "] = ", i, " in swap ", s,
                  " must lie in [0, ", limit,
                  ") (local rows and ghost rows received in earlier swaps)");
    }
  }
}

Schedule read_schedule(const char *opname, const at::Tensor &g, const at::Tensor &send_idx,
                       const at::Tensor &send_off, const at::Tensor &send_num,
                       const at::Tensor &recv_num, const at::Tensor &send_proc,
                       const at::Tensor &recv_proc, const at::Tensor &comm, const at::Tensor &rank)
{
  Schedule S;
  TORCH_CHECK(g.defined() && g.dim() >= 1, opname, ": features must be at least 1-D [nall, ...]");
  TORCH_CHECK(g.scalar_type() == at::kFloat || g.scalar_type() == at::kDouble, opname,
              ": features must be float32 or float64, got ", g.scalar_type());
  S.nall = g.size(0);
  S.width = 1;
  for (int64_t d = 1; d < g.dim(); ++d) S.width *= g.size(d);

  TORCH_CHECK(send_idx.defined() && send_idx.dim() == 1, opname, ": send_idx must be 1-D");
  TORCH_CHECK(send_idx.scalar_type() == at::kInt || send_idx.scalar_type() == at::kLong, opname,
              ": send_idx must be int32 or int64, got ", send_idx.scalar_type());
  TORCH_CHECK(send_idx.device() == g.device(), opname, ": send_idx is on ", send_idx.device(),
              " but the features are on ", g.device());

  S.send_num = host_ints(send_num, opname, "send_num", -1);
  S.nswap = static_cast<int64_t>(S.send_num.size());
  TORCH_CHECK(S.nswap < TAG_BACKWARD, opname, ": too many swaps (", S.nswap, ")");
  S.send_off = host_ints(send_off, opname, "send_off", S.nswap + 1);
  S.recv_num = host_ints(recv_num, opname, "recv_num", S.nswap);
  S.send_proc = host_ints(send_proc, opname, "send_proc", S.nswap);
  S.recv_proc = host_ints(recv_proc, opname, "recv_proc", S.nswap);
  const std::vector<int64_t> comm_v = host_ints(comm, opname, "comm", 1);
  const std::vector<int64_t> rank_v = host_ints(rank, opname, "rank", 1);
  S.comm = comm_v[0];
  S.rank = static_cast<int>(rank_v[0]);

  TORCH_CHECK(S.send_off[0] == 0, opname, ": send_off[0] must be 0, got ", S.send_off[0]);
  int64_t nghost = 0;
  for (int64_t s = 0; s < S.nswap; ++s) {
    TORCH_CHECK(S.send_num[s] >= 0 && S.recv_num[s] >= 0, opname, ": negative count in swap ", s);
    TORCH_CHECK(S.send_off[s + 1] - S.send_off[s] == S.send_num[s], opname, ": send_off[", s + 1,
                "] - send_off[", s, "] = ", S.send_off[s + 1] - S.send_off[s],
                " differs from send_num[", s, "] = ", S.send_num[s]);
    if (S.is_self(s)) {
      TORCH_CHECK(S.send_num[s] == S.recv_num[s], opname, ": self swap ", s, " sends ",
                  S.send_num[s], " rows but receives ", S.recv_num[s]);
    } else {
      S.all_self = false;
    }
    nghost += S.recv_num[s];
  }
  TORCH_CHECK(S.send_off[S.nswap] == send_idx.numel(), opname,
              ": send_off[nswap] = ", S.send_off[S.nswap], " but send_idx has ", send_idx.numel(),
              " entries");
  TORCH_CHECK(nghost <= S.nall, opname, ": the swaps receive ", nghost,
              " ghost rows but the features have only ", S.nall, " rows");
  S.nloc = S.nall - nghost;
  S.recv_first.resize(S.nswap + 1);
  S.recv_first[0] = S.nloc;
  for (int64_t s = 0; s < S.nswap; ++s) S.recv_first[s + 1] = S.recv_first[s] + S.recv_num[s];

  // Each swap may only send rows that exist by then. Cheap on the host; skipped on devices,
  // where it would cost a synchronisation (index_select still bounds-checks there).
  if (send_idx.device().is_cpu() && send_idx.numel() > 0) {
    at::Tensor idx = send_idx.contiguous();
    if (idx.scalar_type() == at::kInt)
      check_indices(idx.const_data_ptr<int32_t>(), S, opname);
    else
      check_indices(idx.const_data_ptr<int64_t>(), S, opname);
  }
  return S;
}

Communicator make_communicator(const Schedule &S, const char *opname)
{
  // An all-self schedule on this rank makes no MPI call (the backward of device features may
  // run on an autograd worker thread, see route_through_host), unless the debug barrier is on:
  // every rank must enter that, so then every rank uses the real handle.
  if (S.all_self && !Communicator::debug_barrier()) return Communicator(0, S.rank);
  Communicator c(S.comm, S.rank);
  if (!S.all_self && !c.available()) {
    for (int64_t s = 0; s < S.nswap; ++s) {
      TORCH_CHECK(S.is_self(s), opname, ": swap ", s, " exchanges with ranks ", S.send_proc[s],
                  " (send) / ", S.recv_proc[s], " (receive) but this is rank ", S.rank, " and ",
                  c.why_unavailable(),
                  "; without MPI only self swaps (send_proc == recv_proc == rank) are possible");
    }
  }
  if (c.available() && Communicator::debug_barrier()) c.barrier();
  return c;
}

const void *ptr_or_null(const at::Tensor &t)
{
  return (t.defined() && t.numel() > 0) ? t.const_data_ptr() : nullptr;
}

void *mutable_ptr_or_null(at::Tensor &t)
{
  return (t.defined() && t.numel() > 0) ? t.mutable_data_ptr() : nullptr;
}

#ifdef DPA3_USE_CUDA
// MPI does not see streams: everything queued so far (packing, and earlier work on the memory
// MPI is about to write) must be finished before MPI touches device memory.
void sync_current_stream(const c10::Device &device)
{
  c10::impl::VirtualGuardImpl impl(device.type());
  impl.getStream(device).synchronize();
}
#endif

// One swap: send `send` ([send_rows, width] contiguous, or undefined when send_rows == 0) to
// dest and receive recv_rows rows from source into `recv` (contiguous, on the feature device).
void swap_rows(const Communicator &c, const at::Tensor &send, int64_t send_rows, int dest,
               at::Tensor &recv, int64_t recv_rows, int source, int64_t width, int tag,
               const c10::Device &device, c10::ScalarType dtype, const char *opname)
{
  if (device.is_cpu()) {
    c.exchange(ptr_or_null(send), send_rows, dest, mutable_ptr_or_null(recv), recv_rows, source,
               width, tag, dtype, opname);
    return;
  }
#ifdef DPA3_USE_CUDA
  if (device.is_cuda()) {
    if (Communicator::cuda_aware()) {
      sync_current_stream(device);
      c.exchange(ptr_or_null(send), send_rows, dest, mutable_ptr_or_null(recv), recv_rows, source,
                 width, tag, dtype, opname);
      return;
    }
    // Staging: only the packed rows cross the bus. The blocking device-to-host copy waits for
    // the packing; the host-to-device copy is stream-ordered before any later kernel, and the
    // caching host allocator keeps the pinned buffer alive until that copy has run.
    const auto host = at::TensorOptions().dtype(dtype).device(at::kCPU).pinned_memory(true);
    at::Tensor host_send, host_recv;
    if (send_rows > 0) {
      host_send = at::empty({send_rows, width}, host);
      host_send.copy_(send);
    }
    if (recv_rows > 0) host_recv = at::empty({recv_rows, width}, host);
    c.exchange(ptr_or_null(host_send), send_rows, dest, mutable_ptr_or_null(host_recv), recv_rows,
               source, width, tag, dtype, opname);
    if (recv_rows > 0) recv.copy_(host_recv, /*non_blocking=*/true);
    return;
  }
#endif
  TORCH_CHECK(false, opname, ": MPI exchange of tensors on ", device, " is not supported");
}

}    // namespace

at::Tensor border_exchange_forward_kernel(const at::Tensor &g, const at::Tensor &send_idx,
                                          const at::Tensor &send_off, const at::Tensor &send_num,
                                          const at::Tensor &recv_num, const at::Tensor &send_proc,
                                          const at::Tensor &recv_proc, const at::Tensor &comm,
                                          const at::Tensor &rank)
{
  const Schedule S = read_schedule(FWD_NAME, g, send_idx, send_off, send_num, recv_num, send_proc,
                                   recv_proc, comm, rank);
  // never write the input: the output is a fresh contiguous tensor
  at::Tensor y = g.clone(at::MemoryFormat::Contiguous);
  if (S.nswap == 0) return y;
  const Communicator c = make_communicator(S, FWD_NAME);
  at::Tensor rows = y.view({S.nall, S.width});

  for (int64_t s = 0; s < S.nswap; ++s) {
    const int64_t ns = S.send_num[s], nr = S.recv_num[s];
    at::Tensor block = rows.narrow(0, S.recv_first[s], nr);
    // gathered now, i.e. after the rows received in swaps < s have landed
    at::Tensor packed;
    if (ns > 0) packed = rows.index_select(0, send_idx.narrow(0, S.send_off[s], ns));
    if (S.is_self(s)) {
      if (nr > 0) block.copy_(packed);
    } else {
      swap_rows(c, packed, ns, static_cast<int>(S.send_proc[s]), block, nr,
                static_cast<int>(S.recv_proc[s]), S.width, static_cast<int>(s), y.device(),
                y.scalar_type(), FWD_NAME);
    }
  }
  return y;
}

at::Tensor border_exchange_backward_kernel(const at::Tensor &grad, const at::Tensor &send_idx,
                                           const at::Tensor &send_off, const at::Tensor &send_num,
                                           const at::Tensor &recv_num, const at::Tensor &send_proc,
                                           const at::Tensor &recv_proc, const at::Tensor &comm,
                                           const at::Tensor &rank)
{
  const Schedule S = read_schedule(BWD_NAME, grad, send_idx, send_off, send_num, recv_num,
                                   send_proc, recv_proc, comm, rank);
  at::Tensor gb = grad.clone(at::MemoryFormat::Contiguous);
  at::Tensor rows = gb.view({S.nall, S.width});
  if (S.nswap > 0) {
    const Communicator c = make_communicator(S, BWD_NAME);
    for (int64_t s = S.nswap - 1; s >= 0; --s) {
      const int64_t ns = S.send_num[s], nr = S.recv_num[s];
      // the cotangents of this swap's ghost block (already holding what later swaps added)
      at::Tensor block = rows.narrow(0, S.recv_first[s], nr);
      at::Tensor received;
      if (S.is_self(s)) {
        // a copy: index_add_ refuses a source that overlaps its destination tensor
        if (ns > 0) received = block.clone();
      } else {
        if (ns > 0) received = at::empty({ns, S.width}, rows.options());
        swap_rows(c, block, nr, static_cast<int>(S.recv_proc[s]), received, ns,
                  static_cast<int>(S.send_proc[s]), S.width, static_cast<int>(s + TAG_BACKWARD),
                  gb.device(), gb.scalar_type(), BWD_NAME);
      }
      // repeated indices accumulate
      if (ns > 0) rows.index_add_(0, send_idx.narrow(0, S.send_off[s], ns), received);
    }
  }
  // ghost inputs never influence the forward output, so their gradient is exactly zero
  if (S.nall > S.nloc) rows.narrow(0, S.nloc, S.nall - S.nloc).zero_();
  return gb;
}

at::Tensor border_exchange_meta(const at::Tensor &g, const at::Tensor &send_idx,
                                const at::Tensor &send_off, const at::Tensor &send_num,
                                const at::Tensor &recv_num, const at::Tensor &send_proc,
                                const at::Tensor &recv_proc, const at::Tensor &comm,
                                const at::Tensor &rank)
{
  TORCH_CHECK(g.scalar_type() == at::kFloat || g.scalar_type() == at::kDouble, FWD_NAME,
              ": features must be float32 or float64, got ", g.scalar_type());
  return at::empty_like(g, at::MemoryFormat::Contiguous);
}

bool route_through_host(const at::Tensor &g, const at::Tensor &send_proc,
                        const at::Tensor &recv_proc, const at::Tensor &comm, const at::Tensor &rank)
{
  if (!g.defined() || g.device().is_cpu()) return false;
  if (host_ints(comm, FWD_NAME, "comm", 1)[0] == 0) return false;    // no MPI at all
  if (Communicator::main_thread_only().empty()) return false;
  if (Communicator::debug_barrier()) return true;
  const std::vector<int64_t> sp = host_ints(send_proc, FWD_NAME, "send_proc", -1);
  const std::vector<int64_t> rp = host_ints(recv_proc, FWD_NAME, "recv_proc", -1);
  const int64_t me = host_ints(rank, FWD_NAME, "rank", 1)[0];
  for (size_t s = 0; s < sp.size(); ++s)
    if (sp[s] != me || (s < rp.size() && rp[s] != me)) return true;
  return false;
}

std::string exchange_mode(const at::Tensor &comm, c10::Device device)
{
  const char *opname = "dpa3::exchange_mode";
  if (device.is_cpu()) return "cpu";
  TORCH_CHECK(device.is_cuda(), opname, ": the exchange supports CPU and CUDA tensors, not ",
              device);
  const Communicator c(host_ints(comm, opname, "comm", 1)[0], -1);
  if (!c.available()) return "local (" + c.why_unavailable() + ")";
  if (c.size() == 1) return "local (one MPI rank)";
  const std::string why = Communicator::main_thread_only();
  if (!why.empty()) return "host-routed (" + why + ")";
  return Communicator::cuda_aware() ? "cuda-aware" : "staged";
}

at::Tensor allreduce_min(const at::Tensor &x, const at::Tensor &comm)
{
  const char *opname = "dpa3::allreduce_min";
  const auto t = x.scalar_type();
  TORCH_CHECK(t == at::kInt || t == at::kLong || t == at::kFloat || t == at::kDouble, opname,
              ": int32, int64, float32 or float64 expected, got ", t);
  const std::vector<int64_t> comm_v = host_ints(comm, opname, "comm", 1);
  at::Tensor out = x.to(at::kCPU).clone(at::MemoryFormat::Contiguous);
  Communicator c(comm_v[0], -1);
  // collective: every rank calls MPI_Allreduce, even with zero elements
  if (c.available()) {
    void *p = out.numel() > 0 ? out.mutable_data_ptr() : nullptr;
    c.allreduce_min(p, p, out.numel(), t);
  }
  return out.to(x.device());
}

bool enable_mpi() { return Communicator::compiled_with_mpi(); }

}    // namespace dpa3
