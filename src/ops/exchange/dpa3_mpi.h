/* -*- c++ -*- ----------------------------------------------------------
   dpa3: MPI layer of the ghost-exchange op.

   Keeps <mpi.h> out of every other file. Without DPA3_USE_MPI the class
   compiles to a communicator that is never available, so the op library
   builds and runs (self swaps only) on machines without MPI.
------------------------------------------------------------------------- */

#ifndef DPA3_MPI_H
#define DPA3_MPI_H

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>

namespace dpa3 {

class Communicator {
 public:
  // handle: MPI_Comm_c2f() of the communicator (0 = none); rank: this rank as the caller sees it,
  // checked against MPI_Comm_rank (-1: take it from MPI).
  Communicator(int64_t handle, int rank);

  // true if the library was built with MPI, MPI is initialised and not finalised, and handle != 0
  bool available() const { return available_; }
  // human-readable reason why available() is false
  const std::string &why_unavailable() const { return why_; }
  int rank() const { return rank_; }
  int size() const { return size_; }

  // One swap of rows of `width` elements: post the receive (if recv_rows > 0), then the send (if
  // send_rows > 0), then wait for both; the received size is checked against recv_rows * width.
  // The buffers must stay untouched until the call returns (no stream work may still use them).
  void exchange(const void *sendbuf, int64_t send_rows, int dest, void *recvbuf, int64_t recv_rows,
                int source, int64_t width, int tag, c10::ScalarType dtype,
                const char *opname) const;
  void barrier() const;
  // out[i] = min over ranks of in[i]; in-place if in == out
  void allreduce_min(const void *in, void *out, int64_t n, c10::ScalarType dtype) const;

  static bool compiled_with_mpi();
  // Why MPI must not be called from a thread other than the main one: "" if it may (MPI not
  // built in, not initialised or finalised, or initialised with MPI_THREAD_SERIALIZED or
  // MULTIPLE), else e.g. "MPI thread level MPI_THREAD_FUNNELED < MPI_THREAD_SERIALIZED".
  // Makes only the MPI calls that are allowed from any thread.
  static std::string main_thread_only();
  // May device pointers be handed to MPI? DPA3_CUDA_AWARE=0/1 overrides the runtime query.
  static bool cuda_aware();
  // DPA3_COMM_BARRIER=1: a barrier before every exchange (debugging schedule mismatches).
  static bool debug_barrier();

 private:
  int64_t handle_;
  int rank_;
  int size_;
  bool available_;
  std::string why_;
};

}    // namespace dpa3

#endif
