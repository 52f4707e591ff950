#include "dpa3_neighbor.h"

#include <algorithm>
#include <cmath>

// same value as in LAMMPS's lmptype.h: the two top bits of a neighbour index carry
// special-bond flags
#ifndef NEIGHMASK
#define NEIGHMASK 0x1FFFFFFF
#endif

using namespace LAMMPS_NS;

void Dpa3Capture::reset(int rank)
{
  phase = IDLE;
  me = rank;
  cursor = 0;
  sendlist.clear();
  sendnum.clear();
  recvnum.clear();
  firstrecv.clear();
  sendproc.clear();
  recvproc.clear();
  error.clear();
}

std::string LAMMPS_NS::dpa3_check_capture(const Dpa3Capture &cap, int nlocal, int nghost)
{
  if (!cap.error.empty()) return cap.error;
  const int nswap = cap.nswap();
  if ((int) cap.recvnum.size() != nswap || (int) cap.firstrecv.size() != nswap ||
      (int) cap.sendproc.size() != nswap || (int) cap.recvproc.size() != nswap ||
      (int) cap.sendlist.size() != nswap)
    return "incomplete swap capture";
  long expect = nlocal;
  for (int s = 0; s < nswap; s++) {
    if (cap.recvnum[s] > 0 && cap.firstrecv[s] != expect)
      return "ghost atoms of swap " + std::to_string(s) + " start at index " +
          std::to_string(cap.firstrecv[s]) + ", expected " + std::to_string(expect) +
          " (ghosts are not stored in contiguous blocks in swap order)";
    for (int idx : cap.sendlist[s]) {
      if (idx < 0 || idx >= expect)
        return "swap " + std::to_string(s) + " sends atom index " + std::to_string(idx) +
            " which does not exist yet (only " + std::to_string(expect) + " atoms)";
    }
    if (cap.sendproc[s] == cap.me && cap.recvproc[s] == cap.me && cap.sendnum[s] != cap.recvnum[s])
      return "self swap " + std::to_string(s) + " sends " + std::to_string(cap.sendnum[s]) +
          " atoms but receives " + std::to_string(cap.recvnum[s]);
    expect += cap.recvnum[s];
  }
  if (expect != (long) nlocal + nghost)
    return "swaps deliver " + std::to_string(expect - nlocal) + " ghost atoms, but there are " +
        std::to_string(nghost);
  return {};
}

void LAMMPS_NS::dpa3_resolve_peers(Dpa3Capture &cap)
{
  for (int s = 0; s < cap.nswap(); s++) {
    int &sp = cap.sendproc[s];
    int &rp = cap.recvproc[s];
    if (sp == DPA3_UNKNOWN_PEER && rp == DPA3_UNKNOWN_PEER) {
      sp = rp = cap.me;
    } else if (sp == DPA3_UNKNOWN_PEER) {
      sp = (rp != cap.me) ? rp : cap.me;
    } else if (rp == DPA3_UNKNOWN_PEER) {
      rp = (sp != cap.me) ? sp : cap.me;
    }
  }
}

void LAMMPS_NS::dpa3_remap_schedule(const Dpa3Capture &cap, const std::vector<int> &fwd_map,
                                    Dpa3Schedule &out)
{
  const int nswap = cap.nswap();
  out.send_idx.clear();
  out.send_off.assign(1, 0);
  out.send_num.assign(nswap, 0);
  out.recv_num.assign(nswap, 0);
  out.send_proc.assign(cap.sendproc.begin(), cap.sendproc.end());
  out.recv_proc.assign(cap.recvproc.begin(), cap.recvproc.end());
  for (int s = 0; s < nswap; s++) {
    for (int idx : cap.sendlist[s]) {
      const int m = fwd_map[idx];
      if (m >= 0) out.send_idx.push_back(m);
    }
    out.send_off.push_back(static_cast<int64_t>(out.send_idx.size()));
    out.send_num[s] = static_cast<int32_t>(out.send_off[s + 1] - out.send_off[s]);
    int nrecv = 0;
    for (int k = 0; k < cap.recvnum[s]; k++)
      if (fwd_map[cap.firstrecv[s] + k] >= 0) nrecv++;
    out.recv_num[s] = nrecv;
  }
}

int LAMMPS_NS::dpa3_build_nlist(int inum, const int *ilist, const int *numneigh,
                                int *const *firstneigh, int nlocal, const std::vector<int> &fwd_map,
                                int nloc_model, std::vector<int64_t> &nlist)
{
  int nnei = 1;
  for (int ii = 0; ii < inum; ii++) {
    const int i = ilist[ii];
    if (i < nlocal && fwd_map[i] >= 0) nnei = std::max(nnei, numneigh[i]);
  }
  nlist.assign(static_cast<size_t>(nloc_model) * nnei, -1);
  for (int ii = 0; ii < inum; ii++) {
    const int i = ilist[ii];
    if (i >= nlocal) continue;
    const int row = fwd_map[i];
    if (row < 0) continue;
    const int *jlist = firstneigh[i];
    int64_t *out = nlist.data() + static_cast<size_t>(row) * nnei;
    int k = 0;
    for (int jj = 0; jj < numneigh[i]; jj++) {
      const int j = fwd_map[jlist[jj] & NEIGHMASK];
      if (j >= 0) out[k++] = j;
    }
  }
  return nnei;
}

Dpa3BadPosition LAMMPS_NS::dpa3_check_positions(int inum, const int *ilist, const int *numneigh,
                                                int *const *firstneigh, int nlocal,
                                                const std::vector<int> &fwd_map,
                                                const double *const *x, double min_dist,
                                                const std::vector<double> &radii,
                                                std::vector<int> &most)
{
  Dpa3BadPosition bad;
  for (int ii = 0; ii < inum; ii++) {
    const int i = ilist[ii];
    if (i >= nlocal || fwd_map[i] < 0) continue;
    if (!std::isfinite(x[i][0]) || !std::isfinite(x[i][1]) || !std::isfinite(x[i][2])) {
      bad.i = i;
      return bad;
    }
  }
  const double min2 = min_dist * min_dist;
  const size_t nr = radii.size();
  std::vector<double> r2(nr);
  for (size_t k = 0; k < nr; k++) r2[k] = radii[k] * radii[k];
  std::vector<int> count(nr);
  most.assign(nr, 0);
  for (int ii = 0; ii < inum; ii++) {
    const int i = ilist[ii];
    if (i >= nlocal || fwd_map[i] < 0) continue;
    std::fill(count.begin(), count.end(), 0);
    const int *jlist = firstneigh[i];
    for (int jj = 0; jj < numneigh[i]; jj++) {
      const int j = jlist[jj] & NEIGHMASK;
      if (fwd_map[j] < 0) continue;
      const double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
      const double rsq = dx * dx + dy * dy + dz * dz;
      // false for a ghost whose position is not finite: its owner reports that
      if (rsq < min2) {
        bad.i = i;
        bad.j = j;
        bad.r = std::sqrt(rsq);
        return bad;
      }
      for (size_t k = 0; k < nr; k++) count[k] += rsq <= r2[k];
    }
    for (size_t k = 0; k < nr; k++) most[k] = std::max(most[k], count[k]);
  }
  return bad;
}
