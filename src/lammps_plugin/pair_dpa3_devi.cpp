/* ----------------------------------------------------------------------
   pair_style dpa3: model deviation of a committee of models (part of PairDPA3)

   pair_style dpa3 m0.pth m1.pth ... [out_freq N] [out_file F] [atomic]
                                     [relative L] [relative_v L] [out_digits D]

   The first model drives the dynamics.  At step 0 and at every step that is a
   multiple of out_freq, all models are evaluated on the same inputs (one
   neighbour list, exchange schedule and neighbour matrix, shared through
   Dpa3Model::share_graph, and one neighbour graph per step: model 0's prepare_graph, with
   the geometric factors of its edges and angles, evaluated by the others with
   forward_prepared, Dpa3Model::compute_shared, when their graph specs agree) and rank 0
   appends a row to out_file with the file
   format and the definitions of DeePMD-kit's pair_style deepmd:
     - force deviation of an atom: norm over x, y, z of the population standard
       deviation (1/M) over the models of its force (ghost forces folded into
       their owners first); max, min and mean over the atoms;
     - virial deviation: standard deviation over the models of each of the 9
       components of virial / N; max, min and sqrt(mean of the squares);
     - relative L: an atom's force deviation / (|mean force| + L);
       relative_v L: a component's deviation / (|mean component / N| + L);
     - atomic: the per-atom force deviations, in atom-ID order.
   Values are in LAMMPS units (force, energy); N counts the atoms dpa3 handles
   (atoms of NULL types are not part of the statistics, they get 0 in atomic).
   out_digits D (a dpa3 extension) writes D significant digits instead of 7.
------------------------------------------------------------------------- */

#include "pair_dpa3.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "update.h"
#include "utils.h"

#include "dpa3_model.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <numeric>

using namespace LAMMPS_NS;

namespace {

// column width of a value: DeePMD-kit's 18 for 7 significant digits, wider for more
int value_width(int digits) { return std::max(18, digits + 11); }

}    // namespace

/* ----------------------------------------------------------------------
   out_file: opened (replaced) by pair_style on rank 0, header written at once
------------------------------------------------------------------------- */

void PairDPA3::devi_open()
{
  devi_close();
  // ghost forces of every model travel home in one reverse communication
  comm_reverse = std::max(1, 3 * static_cast<int>(models.size()));
  if (out_freq <= 0) return;

  int ok = 1;
  std::string why;
  if (comm->me == 0) {
    devi_fp = std::fopen(out_file.c_str(), "w");
    if (!devi_fp) {
      ok = 0;
      why = std::strerror(errno);
    }
  }
  MPI_Bcast(&ok, 1, MPI_INT, 0, world);
  if (!ok) {
    int len = static_cast<int>(why.size());
    MPI_Bcast(&len, 1, MPI_INT, 0, world);
    why.resize(len);
    MPI_Bcast(why.data(), len, MPI_CHAR, 0, world);
    error->all(FLERR, "pair_style dpa3: cannot open out_file '{}' for writing: {}", out_file, why);
  }
  if (comm->me == 0) {
    const int w = value_width(out_digits) + 1;
    std::fprintf(devi_fp, "#%11s", "step");
    for (const char *name :
         {"max_devi_v", "min_devi_v", "avg_devi_v", "max_devi_f", "min_devi_f", "avg_devi_f"})
      std::fprintf(devi_fp, "%*s", w, name);
    if (out_atomic) std::fprintf(devi_fp, "%*s", w, "atm_devi_f(N)");
    std::fputc('\n', devi_fp);
    std::fflush(devi_fp);
    utils::logmesg(lmp,
                   "dpa3: model deviation of {} models every {} steps to {}{}{}{}, model 0 "
                   "drives the dynamics\n",
                   models.size(), out_freq, out_file, out_atomic ? ", atomic" : "",
                   out_rel ? fmt::format(", relative {}", eps) : "",
                   out_rel_v ? fmt::format(", relative_v {}", eps_v) : "");
  }
}

void PairDPA3::devi_close()
{
  if (devi_fp) std::fclose(devi_fp);
  devi_fp = nullptr;
}

/* ----------------------------------------------------------------------
   reverse communication of the committee's forces: [atom][model][xyz] per atom
------------------------------------------------------------------------- */

int PairDPA3::devi_pack_reverse(int n, int first, double *buf)
{
  const int width = 3 * static_cast<int>(models.size());
  const double *src = devi_force.data() + static_cast<size_t>(first) * width;
  std::copy(src, src + static_cast<size_t>(n) * width, buf);
  return n * width;
}

void PairDPA3::devi_unpack_reverse(int n, const int *list, const double *buf)
{
  const int width = 3 * static_cast<int>(models.size());
  for (int j = 0; j < n; j++) {
    double *dst = devi_force.data() + static_cast<size_t>(list[j]) * width;
    for (int c = 0; c < width; c++) dst[c] += buf[j * width + c];
  }
}

/* ----------------------------------------------------------------------
   evaluates models 1..M-1 on the inputs of model 0 (coord_buf, atype_buf and the shared
   graph; res0 = model 0's result of this step) and writes a row of out_file
------------------------------------------------------------------------- */

void PairDPA3::model_deviation(const Dpa3Result &res0)
{
  const int nm = static_cast<int>(models.size());
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  const double force_unit = ener_unit / dist_unit;

  devi_force.assign(static_cast<size_t>(nall) * 3 * nm, 0.0);
  std::vector<double> vir(9 * nm, 0.0);
  auto store = [&](int m, const Dpa3Result &r) {
    for (int k = 0; k < nall_model; k++) {
      double *dst = devi_force.data() + (static_cast<size_t>(bkw_map[k]) * nm + m) * 3;
      for (int d = 0; d < 3; d++) dst[d] = r.force[3 * k + d] * force_unit;
    }
    for (int c = 0; c < 9; c++) vir[9 * m + c] = r.virial[c] * ener_unit;
  };
  store(0, res0);
  Dpa3Result res;
  for (int m = 1; m < nm; m++) {
    try {
      if (devi_shared[m])
        models[m]->compute_shared(res);
      else
        models[m]->compute(coord_buf, atype_buf, false, res);
    } catch (const std::exception &e) {
      compute_failed(fmt::format("model {} ({}): {}", m, model_files[m], e.what()));
    }
    store(m, res);
  }
  models[0]->release_step();

  // ghost forces of every model to their owners (as LAMMPS does with atom->f for model 0)
  devi_comm = true;
  comm->reverse_comm(this);
  devi_comm = false;

  // per-atom force deviation of the local atoms
  std::vector<double> std_f(nlocal, 0.0);
  double fmax = 0.0, fmin = std::numeric_limits<double>::max(), fsum = 0.0;
  double count = 0.0;
  for (int i = 0; i < nlocal; i++) {
    if (fwd_map[i] < 0) continue;    // NULL type
    const double *fi = devi_force.data() + static_cast<size_t>(i) * 3 * nm;
    double var = 0.0, mean2 = 0.0;
    for (int d = 0; d < 3; d++) {
      double mean = 0.0;
      for (int m = 0; m < nm; m++) mean += fi[3 * m + d];
      mean /= nm;
      for (int m = 0; m < nm; m++) var += (fi[3 * m + d] - mean) * (fi[3 * m + d] - mean);
      mean2 += mean * mean;
    }
    double s = std::sqrt(var / nm);
    if (out_rel) s /= std::sqrt(mean2) + eps;
    std_f[i] = s;
    fmax = std::max(fmax, s);
    fmin = std::min(fmin, s);
    fsum += s;
    count += 1.0;
  }
  double sums[2] = {fsum, count}, gsums[2];
  double gmax = 0.0, gmin = 0.0;
  MPI_Allreduce(sums, gsums, 2, MPI_DOUBLE, MPI_SUM, world);
  MPI_Allreduce(&fmax, &gmax, 1, MPI_DOUBLE, MPI_MAX, world);
  MPI_Allreduce(&fmin, &gmin, 1, MPI_DOUBLE, MPI_MIN, world);
  const double natoms = gsums[1];
  if (natoms <= 0.0)
    error->all(FLERR, "pair_style dpa3: model deviation of a system without atoms");
  const double fdev[3] = {gmax, gmin, gsums[0] / natoms};

  // virial deviation: per model, the sum over the ranks / N
  std::vector<double> gvir(9 * nm, 0.0);
  MPI_Allreduce(vir.data(), gvir.data(), 9 * nm, MPI_DOUBLE, MPI_SUM, world);
  double vmax = 0.0, vmin = std::numeric_limits<double>::max(), vsq = 0.0;
  for (int c = 0; c < 9; c++) {
    double mean = 0.0, var = 0.0;
    for (int m = 0; m < nm; m++) mean += gvir[9 * m + c] / natoms;
    mean /= nm;
    for (int m = 0; m < nm; m++) {
      const double t = gvir[9 * m + c] / natoms - mean;
      var += t * t;
    }
    double s = std::sqrt(var / nm);
    if (out_rel_v) s /= std::fabs(mean) + eps_v;
    vmax = std::max(vmax, s);
    vmin = std::min(vmin, s);
    vsq += s * s;
  }
  const double vdev[3] = {vmax, vmin, std::sqrt(vsq / 9.0)};

  // atomic: the per-atom values on rank 0, in atom-ID order (0 for atoms of NULL types)
  std::vector<double> atomic;
  if (out_atomic) {
    const int nprocs = comm->nprocs;
    std::vector<int> counts(nprocs, 0), displs(nprocs, 0);
    MPI_Gather(&nlocal, 1, MPI_INT, counts.data(), 1, MPI_INT, 0, world);
    int total = 0;
    if (comm->me == 0) {
      for (int p = 0; p < nprocs; p++) {
        displs[p] = total;
        total += counts[p];
      }
    }
    std::vector<tagint> tags(atom->tag, atom->tag + nlocal), all_tags(total);
    std::vector<double> all_std(total);
    MPI_Gatherv(tags.data(), nlocal, MPI_LMP_TAGINT, all_tags.data(), counts.data(), displs.data(),
                MPI_LMP_TAGINT, 0, world);
    MPI_Gatherv(std_f.data(), nlocal, MPI_DOUBLE, all_std.data(), counts.data(), displs.data(),
                MPI_DOUBLE, 0, world);
    if (comm->me == 0) {
      std::vector<int> order(total);
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(), [&](int a, int b) {
        return all_tags[a] < all_tags[b];
      });
      atomic.reserve(total);
      for (int k : order) atomic.push_back(all_std[k]);
    }
  }

  if (comm->me == 0) devi_write(vdev, fdev, atomic);
}

void PairDPA3::devi_write(const double vdev[3], const double fdev[3],
                          const std::vector<double> &atomic)
{
  if (!devi_fp) return;
  const int w = value_width(out_digits), p = out_digits - 1;
  std::fprintf(devi_fp, "%12lld", static_cast<long long>(update->ntimestep));
  for (int k = 0; k < 3; k++) std::fprintf(devi_fp, " %*.*e", w, p, vdev[k]);
  for (int k = 0; k < 3; k++) std::fprintf(devi_fp, " %*.*e", w, p, fdev[k]);
  for (double v : atomic) std::fprintf(devi_fp, " %*.*e", w, p, v);
  std::fputc('\n', devi_fp);
  std::fflush(devi_fp);
}
