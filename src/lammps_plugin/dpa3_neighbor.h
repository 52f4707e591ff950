/* -*- c++ -*- ----------------------------------------------------------
   Bookkeeping between LAMMPS's halo exchange and the model's inputs:
   the swap schedule as captured through Comm::forward_comm/reverse_comm,
   its sanity checks, its renumbering for NULL-type atoms, and the padded
   neighbour-list matrix.  Plain C++ (no torch, no MPI), so it can be read
   and tested on its own.
------------------------------------------------------------------------- */

#ifndef LMP_DPA3_NEIGHBOR_H
#define LMP_DPA3_NEIGHBOR_H

#include <cstdint>
#include <string>
#include <vector>

namespace LAMMPS_NS {

// Peer rank not seen during the capture (the swap moves zero atoms on that side).
constexpr int DPA3_UNKNOWN_PEER = -1;

// The swap schedule in LAMMPS indexing, filled swap by swap by the pack/unpack
// callbacks of PairDPA3 while LAMMPS replays its forward and reverse comm.
struct Dpa3Capture {
  enum Phase { IDLE, FORWARD, REVERSE };
  Phase phase = IDLE;
  int me = 0;
  int cursor = 0;    // swap being replayed
  std::vector<std::vector<int>> sendlist;
  std::vector<int> sendnum, recvnum, firstrecv, sendproc, recvproc;
  std::string error;    // first inconsistency seen during the replay

  void reset(int rank);
  int nswap() const { return static_cast<int>(sendnum.size()); }
};

// The schedule in model indexing (NULL-type atoms removed), as the comm_dict wants it:
// all send lists concatenated in swap order plus offsets, counts and peers.
struct Dpa3Schedule {
  std::vector<int32_t> send_idx;
  std::vector<int64_t> send_off;    // nswap + 1 prefix offsets into send_idx
  std::vector<int32_t> send_num, recv_num, send_proc, recv_proc;
  int nswap() const { return static_cast<int>(send_num.size()); }
};

// Checks LAMMPS behaviour the exchange op relies on: ghosts arrive in contiguous blocks
// in swap order starting at nlocal, they add up to nghost, a send list only names atoms
// that exist when its swap runs, and self swaps send what they receive.
// Returns an empty string if all hold, else a description of the first violation.
std::string dpa3_check_capture(const Dpa3Capture &cap, int nlocal, int nghost);

// Gives a peer to the side of a swap that moved no atoms (the capture cannot see it):
// the other side's peer when that is another rank, else this rank (an empty self swap).
// Such a peer is never used for a message because the count on that side is zero.
void dpa3_resolve_peers(Dpa3Capture &cap);

// Renumbers the captured schedule through fwd_map (LAMMPS index -> model index, -1 for
// atoms of NULL types), dropping removed atoms from send lists and receive counts.
void dpa3_remap_schedule(const Dpa3Capture &cap, const std::vector<int> &fwd_map,
                         Dpa3Schedule &out);

// Builds the [nloc_model, nnei] int64 neighbour matrix (-1 padded) from a LAMMPS list.
// Row fwd_map[i] holds the neighbours of local atom i = ilist[ii]; NEIGHMASK is applied;
// neighbours and centres of NULL types are dropped.  Returns nnei (at least 1).
int dpa3_build_nlist(int inum, const int *ilist, const int *numneigh, int *const *firstneigh,
                     int nlocal, const std::vector<int> &fwd_map, int nloc_model,
                     std::vector<int64_t> &nlist);

// First bad input among the local atoms of a LAMMPS list (NULL types skipped): a position
// that is not finite (j = -1), or a neighbour closer than min_dist (in the units of x).
// Only local atoms are tested for finiteness: a non-finite ghost is reported by its owner.
// i = -1 if there is none.  Neighbour indices are masked with NEIGHMASK.  In the same pass,
// most[k] = the largest number of neighbours a local atom has within radii[k] (units of x;
// complete only when no bad input is found).
struct Dpa3BadPosition {
  int i = -1, j = -1;
  double r = 0.0;
};
Dpa3BadPosition dpa3_check_positions(int inum, const int *ilist, const int *numneigh,
                                     int *const *firstneigh, int nlocal,
                                     const std::vector<int> &fwd_map, const double *const *x,
                                     double min_dist, const std::vector<double> &radii,
                                     std::vector<int> &most);

}    // namespace LAMMPS_NS

#endif
