/* ----------------------------------------------------------------------
   dpa3: MPI layer of the ghost-exchange op.
------------------------------------------------------------------------- */

#include "dpa3_mpi.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <strings.h>

#ifdef DPA3_USE_MPI
#include <mpi.h>
#ifdef DPA3_HAVE_MPI_EXT_H
#include <mpi-ext.h>
#endif
#endif

namespace dpa3 {

namespace {

// "0"/"1" (also "false"/"true", "off"/"on"); -1 when unset or unrecognised
int env_flag(const char *name)
{
  const char *v = std::getenv(name);
  if (!v || !*v) return -1;
  if (!std::strcmp(v, "1") || !strcasecmp(v, "true") || !strcasecmp(v, "on")) return 1;
  if (!std::strcmp(v, "0") || !strcasecmp(v, "false") || !strcasecmp(v, "off")) return 0;
  return -1;
}

#ifdef DPA3_USE_MPI
MPI_Datatype mpi_type(c10::ScalarType t)
{
  switch (t) {
    case c10::ScalarType::Float: return MPI_FLOAT;
    case c10::ScalarType::Double: return MPI_DOUBLE;
    case c10::ScalarType::Int: return MPI_INT32_T;
    case c10::ScalarType::Long: return MPI_INT64_T;
    default: TORCH_CHECK(false, "dpa3: no MPI datatype for ", t);
  }
  return MPI_DATATYPE_NULL;
}

MPI_Comm to_comm(int64_t handle) { return MPI_Comm_f2c(static_cast<MPI_Fint>(handle)); }

std::string mpi_error_string(int code)
{
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, msg, &len);
  return std::string(msg, len);
}

#define DPA3_MPI_CHECK(call, what)                                                       \
  do {                                                                                   \
    int _rc = (call);                                                                    \
    TORCH_CHECK(_rc == MPI_SUCCESS, "dpa3: ", what, " failed: ", mpi_error_string(_rc)); \
  } while (0)

const char *thread_level_name(int level)
{
  if (level == MPI_THREAD_SINGLE) return "MPI_THREAD_SINGLE";
  if (level == MPI_THREAD_FUNNELED) return "MPI_THREAD_FUNNELED";
  if (level == MPI_THREAD_SERIALIZED) return "MPI_THREAD_SERIALIZED";
  if (level == MPI_THREAD_MULTIPLE) return "MPI_THREAD_MULTIPLE";
  return "unknown";
}

// The exchange op keeps MPI on the calling thread whenever the thread level requires it (device
// features are routed through host memory, docs/internals.md "The exchange on GPUs"), so this
// only fires when the model itself is run from a thread other than the one that initialised MPI.
void check_thread_level()
{
  int is_main = 1;
  MPI_Is_thread_main(&is_main);
  if (is_main) return;
  const std::string why = Communicator::main_thread_only();
  if (!why.empty()) {
    TORCH_WARN_ONCE("dpa3::border_exchange: MPI is called from a thread other than the one that "
                    "initialised MPI, but ",
                    why,
                    "; run the model from that thread, or "
                    "initialise MPI with MPI_THREAD_SERIALIZED or MPI_THREAD_MULTIPLE (mpi4py "
                    "does by default)");
  }
}
#endif

}    // namespace

Communicator::Communicator(int64_t handle, int rank) :
    handle_(handle), rank_(rank), size_(1), available_(false)
{
#ifdef DPA3_USE_MPI
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized) {
    why_ = "MPI is not initialised";
  } else if (finalized) {
    why_ = "MPI is already finalised";
  } else if (handle == 0) {
    why_ = "the communicator handle is 0 (no MPI)";
  } else {
    MPI_Comm comm = to_comm(handle);
    TORCH_CHECK(comm != MPI_COMM_NULL, "dpa3: communicator handle ", handle, " is MPI_COMM_NULL");
    int me = 0;
    DPA3_MPI_CHECK(MPI_Comm_rank(comm, &me), "MPI_Comm_rank");
    DPA3_MPI_CHECK(MPI_Comm_size(comm, &size_), "MPI_Comm_size");
    TORCH_CHECK(rank < 0 || me == rank, "dpa3: the rank tensor says ", rank,
                " but MPI_Comm_rank gives ", me, " for communicator ", handle);
    rank_ = me;
    available_ = true;
  }
#else
  why_ = "libdpa3_ops was built without MPI";
#endif
}

void Communicator::exchange(const void *sendbuf, int64_t send_rows, int dest, void *recvbuf,
                            int64_t recv_rows, int source, int64_t width, int tag,
                            c10::ScalarType dtype, const char *opname) const
{
  TORCH_CHECK(available_, opname, ": MPI exchange requested but ", why_);
#ifdef DPA3_USE_MPI
  const int64_t nsend = send_rows * width, nrecv = recv_rows * width;
  TORCH_CHECK(nsend <= INT_MAX && nrecv <= INT_MAX, opname, ": message of ", std::max(nsend, nrecv),
              " elements exceeds the MPI int count");
  TORCH_CHECK(dest >= 0 && dest < size_ && source >= 0 && source < size_, opname, ": peer rank ",
              dest, "/", source, " outside the communicator of size ", size_);
  check_thread_level();
  // MPI wants a valid address even for zero elements (a [rows, 0] tensor has no storage)
  static char dummy[16];
  if (!sendbuf) sendbuf = dummy;
  if (!recvbuf) recvbuf = dummy;
  MPI_Comm comm = to_comm(handle_);
  MPI_Datatype type = mpi_type(dtype);
  MPI_Request req[2];
  MPI_Status status[2];
  int nreq = 0;
  // Messages are posted by row count, not element count, so both sides agree even for width 0.
  if (recv_rows > 0)
    DPA3_MPI_CHECK(
        MPI_Irecv(recvbuf, static_cast<int>(nrecv), type, source, tag, comm, &req[nreq++]),
        "MPI_Irecv");
  if (send_rows > 0)
    DPA3_MPI_CHECK(MPI_Isend(sendbuf, static_cast<int>(nsend), type, dest, tag, comm, &req[nreq++]),
                   "MPI_Isend");
  if (nreq == 0) return;
  DPA3_MPI_CHECK(MPI_Waitall(nreq, req, status), "MPI_Waitall");
  if (recv_rows > 0) {
    int got = 0;
    MPI_Get_count(&status[0], type, &got);
    TORCH_CHECK(got == nrecv, opname, ": rank ", rank_, " expected ", nrecv, " values from rank ",
                source, " (tag ", tag, ") but received ", got,
                "; the swap schedules of the two ranks disagree");
  }
#else
  (void) sendbuf, (void) send_rows, (void) dest, (void) recvbuf, (void) recv_rows, (void) source;
  (void) width, (void) tag, (void) dtype;
#endif
}

void Communicator::barrier() const
{
#ifdef DPA3_USE_MPI
  if (available_) DPA3_MPI_CHECK(MPI_Barrier(to_comm(handle_)), "MPI_Barrier");
#endif
}

void Communicator::allreduce_min(const void *in, void *out, int64_t n, c10::ScalarType dtype) const
{
  TORCH_CHECK(available_, "dpa3::allreduce_min: ", why_);
#ifdef DPA3_USE_MPI
  TORCH_CHECK(n <= INT_MAX, "dpa3::allreduce_min: too many elements");
  static char dummy[16];
  if (!out) in = out = dummy;
  const void *src = (in == out) ? MPI_IN_PLACE : in;
  DPA3_MPI_CHECK(
      MPI_Allreduce(src, out, static_cast<int>(n), mpi_type(dtype), MPI_MIN, to_comm(handle_)),
      "MPI_Allreduce");
#else
  (void) in, (void) out, (void) n, (void) dtype;
#endif
}

bool Communicator::compiled_with_mpi()
{
#ifdef DPA3_USE_MPI
  return true;
#else
  return false;
#endif
}

std::string Communicator::main_thread_only()
{
#ifdef DPA3_USE_MPI
  // MPI_Initialized, MPI_Finalized and MPI_Query_thread may be called from any thread
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) return "";
  int provided = MPI_THREAD_SINGLE;
  MPI_Query_thread(&provided);
  if (provided >= MPI_THREAD_SERIALIZED) return "";
  return std::string("MPI thread level ") + thread_level_name(provided) +
      " < MPI_THREAD_SERIALIZED";
#else
  return "";
#endif
}

bool Communicator::cuda_aware()
{
  // decided once per process, after MPI is up (the query needs an initialised MPI)
  static const bool aware = [] {
    const int forced = env_flag("DPA3_CUDA_AWARE");
    if (forced >= 0) return forced == 1;
#if defined(DPA3_USE_MPI) && defined(DPA3_HAVE_MPIX_CUDA)
    return MPIX_Query_cuda_support() == 1;
#else
    return false;
#endif
  }();
  return aware;
}

bool Communicator::debug_barrier()
{
  static const bool on = env_flag("DPA3_COMM_BARRIER") == 1;
  return on;
}

}    // namespace dpa3
