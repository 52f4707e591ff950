/* ----------------------------------------------------------------------
   pair_style dpa3 model.pth [model2.pth ...] [device auto|cpu|cuda] [check on|off]
                   [out_freq N] [out_file F] [atomic] [relative L] [relative_v L]
                   [out_digits D]
   pair_coeff * * El1 El2 ...   (element per atom type, NULL = not handled)

   Per step (all ranks, even those without atoms, because the model exchanges
   ghost features with its neighbours layer by layer):
     - at each re-neighbouring: capture LAMMPS's swap schedule, drop NULL-type
       atoms, build the neighbour matrix and hand both to the model;
     - call forward_lower on (x - boxlo) of local + ghost atoms;
     - add forces to all nall rows (LAMMPS folds ghost forces home through its
       reverse comm, hence newton pair on), local energy, and the virial.
   With several models, the first drives the dynamics; every out_freq steps
   all of them are evaluated on the same inputs and their deviations written
   (pair_dpa3_devi.cpp).  The input commands (settings(), load_model(),
   coeff()) are in pair_dpa3_settings.cpp.
------------------------------------------------------------------------- */

#include "pair_dpa3.h"

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

#include "dpa3_model.h"
#include "dpa3_neighbor.h"

#include <algorithm>
#include <cmath>
#include <chrono>
#include <cstdio>
#include <thread>
#include <cstring>
#include <exception>
#include <sstream>

using namespace LAMMPS_NS;

namespace {

// Boltzmann constant in metal units (eV/K), as in LAMMPS's update.cpp: the ratio
// force->boltz / BOLTZ_METAL converts eV into the current energy unit.
constexpr double BOLTZ_METAL = 8.617343e-5;

// model 3x3 row-major virial -> LAMMPS order xx, yy, zz, xy, xz, yz (, yx, zx, zy)
constexpr int VIRIAL_ORDER[9] = {0, 4, 8, 3, 6, 7, 1, 2, 5};

// Atoms closer than this (Angstrom) are an error, as MIN_DISTANCE in dpa3/data/neighbor.py.
constexpr double MIN_DISTANCE = 0.1;

}    // namespace

/* ---------------------------------------------------------------------- */

PairDPA3::PairDPA3(LAMMPS *lmp) :
    Pair(lmp), device("auto"), run_device("cpu"), mode_logged(false), check_flag(false),
    check_logged(false), out_freq(0), out_file("model_devi.out"), out_atomic(false), out_rel(false),
    out_rel_v(false), eps(0.0), eps_v(0.0), out_digits(7), devi_fp(nullptr), devi_comm(false),
    coeff_positional(false), ener_unit(1.0), dist_unit(1.0), comm_dup_done(false), comm_handle(0),
    dup_comm(nullptr), cap(std::make_unique<Dpa3Capture>()), nloc_model(0), nall_model(0),
    have_graph(false), cached_nlocal(-1), cached_nghost(-1), cached_ncalls(-1), cached_lastcall(-1),
    cached_list(nullptr)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  no_virial_fdotr_compute = 1;
  centroidstressflag = CENTROID_AVAIL;
  writedata = 0;
  // one double per atom while capturing the swap schedule; must be set before Comm::init
  comm_forward = 1;
  comm_reverse = 1;
}

PairDPA3::~PairDPA3()
{
  devi_close();
  if (dup_comm) {
    int finalized = 0;
    MPI_Finalized(&finalized);
    auto *c = static_cast<MPI_Comm *>(dup_comm);
    if (!finalized) MPI_Comm_free(c);
    delete c;
  }
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
  }
}

/* ---------------------------------------------------------------------- */

void PairDPA3::allocate()
{
  allocated = 1;
  const int n = atom->ntypes + 1;
  memory->create(setflag, n, n, "pair:setflag");
  memory->create(cutsq, n, n, "pair:cutsq");
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) setflag[i][j] = 0;
}

/* ---------------------------------------------------------------------- */

void PairDPA3::init_style()
{
  if (models.empty()) error->all(FLERR, "pair_style dpa3 has no model loaded");
  if (coeff_names.empty() || (int) coeff_names.size() != atom->ntypes + 1)
    error->all(FLERR, "pair_style dpa3 needs pair_coeff * * with one element name per atom type");
  if (force->newton_pair == 0)
    error->all(FLERR,
               "pair_style dpa3 requires newton pair on (ghost forces are summed into their "
               "owners by LAMMPS's reverse communication)");
  if (comm->style != Comm::BRICK)
    error->all(FLERR,
               "pair_style dpa3 requires comm_style brick (the ghost exchange replays the brick "
               "swap schedule)");
  if (strcmp(update->unit_style, "lj") == 0)
    error->all(FLERR,
               "pair_style dpa3 does not support units lj (the model works in eV and Angstrom)");
  if (domain->dimension != 3) error->all(FLERR, "pair_style dpa3 requires a 3d system");
  if (check_flag && !atom->tag_enable)
    error->all(FLERR, "pair_style dpa3 check on requires atom IDs");
  if (out_atomic && !atom->tag_enable)
    error->all(FLERR, "pair_style dpa3 atomic requires atom IDs (the values are in ID order)");
  check_neigh_modify();
  // the model's energy vanishes smoothly at its cutoff and has no long-range tail
  if (offset_flag && comm->me == 0)
    error->warning(FLERR, "pair_modify shift yes has no effect on pair_style dpa3");
  if (tail_flag && comm->me == 0)
    error->warning(FLERR, "pair_modify tail yes has no effect on pair_style dpa3");

  ener_unit = force->boltz / BOLTZ_METAL;
  dist_unit = force->angstrom;

  neighbor->add_request(this, NeighConst::REQ_FULL);

  if (!comm_dup_done) {
    auto *c = new MPI_Comm;
    MPI_Comm_dup(world, c);
    dup_comm = c;
    comm_handle = static_cast<long long>(MPI_Comm_c2f(*c));
    comm_dup_done = true;
  }
  // how ghost features travel between GPUs: printed once, at the first run
  if (run_device == "cuda" && comm->nprocs > 1 && !mode_logged && comm->me == 0) {
    try {
      utils::logmesg(lmp, "dpa3: ghost-feature exchange between ranks: {}\n",
                     models[0]->exchange_mode(comm_handle));
    } catch (const std::exception &e) {
      error->one(FLERR, "pair_style dpa3: {}", e.what());
    }
  }
  mode_logged = true;
  // the next compute() recaptures the schedule and rebuilds the model inputs
  have_graph = false;
}

double PairDPA3::init_one(int, int) { return models[0]->rcut() * dist_unit; }

/* ---------------------------------------------------------------------- */

bool PairDPA3::need_rebuild()
{
  const int local = (!have_graph || neighbor->ago == 0 || neighbor->ncalls != cached_ncalls ||
                     neighbor->lastcall != cached_lastcall || list != cached_list ||
                     atom->nlocal != cached_nlocal || atom->nghost != cached_nghost)
      ? 1
      : 0;
  // collective: the capture replays LAMMPS's halo exchange on all ranks
  int global = 0;
  MPI_Allreduce(&local, &global, 1, MPI_INT, MPI_MAX, world);
  return global != 0;
}

void PairDPA3::rebuild()
{
  const int nlocal = atom->nlocal;
  const int nghost = atom->nghost;
  const int nall = nlocal + nghost;
  const int *type = atom->type;

  check_special();
  capture_schedule();

  // drop atoms of NULL types
  fwd_map.assign(nall, -1);
  bkw_map.clear();
  nloc_model = 0;
  for (int i = 0; i < nall; i++) {
    if (type_map[type[i]] < 0) continue;
    fwd_map[i] = static_cast<int>(bkw_map.size());
    bkw_map.push_back(i);
    if (i < nlocal) nloc_model++;
  }
  nall_model = static_cast<int>(bkw_map.size());

  Dpa3Schedule sched;
  dpa3_remap_schedule(*cap, fwd_map, sched);
  for (int s = 0; s < sched.nswap(); s++)
    if (sched.send_proc[s] == comm->me && sched.recv_proc[s] == comm->me &&
        sched.send_num[s] != sched.recv_num[s])
      error->one(FLERR,
                 "pair_style dpa3: self swap {} sends {} and receives {} atoms after dropping "
                 "NULL types",
                 s, sched.send_num[s], sched.recv_num[s]);

  std::vector<int64_t> nlist;
  const int nnei = dpa3_build_nlist(list->inum, list->ilist, list->numneigh, list->firstneigh,
                                    nlocal, fwd_map, nloc_model, nlist);
  try {
    models[0]->set_graph(sched, nlist, nloc_model, nnei, comm_handle, comm->me);
    // the committee uses the same tensors: no second capture, neighbour matrix or upload
    for (size_t m = 1; m < models.size(); m++) models[m]->share_graph(*models[0]);
  } catch (const std::exception &e) {
    error->one(FLERR, "pair_style dpa3: {}", e.what());
  }

  have_graph = true;
  cached_nlocal = nlocal;
  cached_nghost = nghost;
  cached_ncalls = neighbor->ncalls;
  cached_lastcall = neighbor->lastcall;
  cached_list = list;

  if (check_flag) check_exchange();
}

/* ----------------------------------------------------------------------
   Bonded pairs: LAMMPS leaves a 1-2, 1-3 or 1-4 pair out of every neighbour list when its
   special_bonds factors are both 0 (neighbor->special_flag 0, unless a kspace style keeps
   them).  The model needs every pair within its cutoff; factors other than 0 keep the pairs
   (flagged in the high bits, which dpa3 masks off: it computes the full energy, and a classical
   style of a hybrid applies its own factors).  Called at re-neighbouring, on all ranks.
------------------------------------------------------------------------- */

void PairDPA3::check_special()
{
  if (atom->molecular == Atom::ATOMIC) return;
  static const char *const name[4] = {"", "1-2", "1-3", "1-4"};
  std::string excluded;
  for (int k = 1; k <= 3; k++)
    if (neighbor->special_flag[k] == 0)
      excluded += (excluded.empty() ? "" : ", ") + std::string(name[k]);
  if (excluded.empty()) return;
  error->all(FLERR,
             "pair_style dpa3: special_bonds factors of 0 remove the {} pairs of bonded atoms "
             "from the neighbour list, but the model needs every pair within its cutoff: use "
             "'special_bonds lj/coul 1 1 1' (with pair_style hybrid/overlay and a classical "
             "style, nonzero global factors and pair_modify special for that style; see "
             "docs/lammps.md)",
             excluded);
}

/* ----------------------------------------------------------------------
   Capture of the swap schedule through the public Comm API:
   forward_comm(this) calls pack/unpack_forward_comm for every swap in order
   with sendlist/sendnum and firstrecv/recvnum; the packer writes its rank into
   the payload, so the receiver learns recvproc.  reverse_comm(this) walks the
   swaps backwards; the ghost side writes its rank, so the owner learns sendproc.
------------------------------------------------------------------------- */

void PairDPA3::capture_schedule()
{
  cap->reset(comm->me);
  cap->phase = Dpa3Capture::FORWARD;
  comm->forward_comm(this, 1);
  cap->phase = Dpa3Capture::REVERSE;
  cap->cursor = cap->nswap() - 1;
  comm->reverse_comm(this, 1);
  cap->phase = Dpa3Capture::IDLE;
  if (cap->error.empty() && cap->cursor != -1)
    cap->error = "reverse replay did not visit every swap";

  // every rank must see the same number of swaps
  int minmax[2] = {cap->nswap(), -cap->nswap()}, global[2];
  MPI_Allreduce(minmax, global, 2, MPI_INT, MPI_MIN, world);
  if (global[0] != -global[1])
    error->all(FLERR, "pair_style dpa3: ranks replayed different numbers of swaps ({} to {})",
               global[0], -global[1]);

  dpa3_resolve_peers(*cap);
  const std::string problem = dpa3_check_capture(*cap, atom->nlocal, atom->nghost);
  if (!problem.empty())
    error->one(FLERR, "pair_style dpa3: unexpected halo exchange schedule on rank {}: {}", comm->me,
               problem);
}

int PairDPA3::pack_forward_comm(int n, int *list, double *buf, int, int *)
{
  if (cap->phase != Dpa3Capture::FORWARD) return 0;
  cap->sendlist.emplace_back(list, list + n);
  cap->sendnum.push_back(n);
  cap->sendproc.push_back(DPA3_UNKNOWN_PEER);
  cap->recvnum.push_back(0);
  cap->firstrecv.push_back(0);
  cap->recvproc.push_back(DPA3_UNKNOWN_PEER);
  for (int k = 0; k < n; k++) buf[k] = cap->me;
  return n;
}

void PairDPA3::unpack_forward_comm(int n, int first, double *buf)
{
  if (cap->phase != Dpa3Capture::FORWARD) return;
  if (cap->sendnum.empty()) {
    if (cap->error.empty()) cap->error = "unpack_forward_comm before pack_forward_comm";
    return;
  }
  const size_t s = cap->sendnum.size() - 1;
  cap->recvnum[s] = n;
  cap->firstrecv[s] = first;
  if (n > 0) {
    const int peer = static_cast<int>(buf[0]);
    for (int k = 1; k < n; k++)
      if (static_cast<int>(buf[k]) != peer && cap->error.empty())
        cap->error = "swap " + std::to_string(s) + " received atoms from several ranks";
    cap->recvproc[s] = peer;
  }
}

int PairDPA3::pack_reverse_comm(int n, int first, double *buf)
{
  if (devi_comm) return devi_pack_reverse(n, first, buf);
  if (cap->phase != Dpa3Capture::REVERSE) return 0;
  const int s = cap->cursor;
  if (s < 0 || cap->recvnum[s] != n || (n > 0 && cap->firstrecv[s] != first)) {
    if (cap->error.empty())
      cap->error =
          "reverse replay of swap " + std::to_string(s) + " does not match the forward one";
    return n;
  }
  for (int k = 0; k < n; k++) buf[k] = cap->me;
  return n;
}

void PairDPA3::unpack_reverse_comm(int n, int *list, double *buf)
{
  if (devi_comm) {
    devi_unpack_reverse(n, list, buf);
    return;
  }
  if (cap->phase != Dpa3Capture::REVERSE) return;
  const int s = cap->cursor--;
  if (s < 0 || cap->sendnum[s] != n) {
    if (cap->error.empty())
      cap->error =
          "reverse replay of swap " + std::to_string(s) + " does not match the forward one";
    return;
  }
  if (n > 0) cap->sendproc[s] = static_cast<int>(buf[0]);
}

/* ----------------------------------------------------------------------
   check on: push atom IDs through the exchange op; every ghost must receive the ID of
   the atom it is an image of
------------------------------------------------------------------------- */

void PairDPA3::check_exchange()
{
  const tagint *tag = atom->tag;
  std::vector<double> g(nall_model, 0.0);
  for (int k = 0; k < nloc_model; k++) g[k] = static_cast<double>(tag[bkw_map[k]]);
  std::vector<double> y;
  try {
    y = models[0]->exchange(g, nall_model, 1);
  } catch (const std::exception &e) {
    error->one(FLERR, "pair_style dpa3: {}", e.what());
  }
  for (int k = 0; k < nall_model; k++)
    if (y[k] != static_cast<double>(tag[bkw_map[k]]))
      error->one(FLERR, "pair_style dpa3 check: atom {} (ID {}) received ID {} from the exchange",
                 bkw_map[k], tag[bkw_map[k]], y[k]);
  if (comm->me == 0 && !check_logged)
    utils::logmesg(lmp, "dpa3: exchange check passed ({} swaps)\n", cap->nswap());
  check_logged = true;
}

/* ---------------------------------------------------------------------- */

void PairDPA3::compute_failed(const std::string &what)
{
  // abort the whole job: returning would leave the other ranks blocked in an exchange.
  // Write the reason to stderr first: when several ranks fail at once, the first MPI_Abort
  // can end the job before mpirun has forwarded the other ranks' (buffered) screen output.
  std::fprintf(stderr, "ERROR on proc %d: pair_style dpa3: %s\n", comm->me, what.c_str());
  std::fflush(stderr);
  // give mpirun a moment to forward it: the job is being aborted anyway
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  error->one(FLERR, "pair_style dpa3: {}", what);
}

std::string PairDPA3::atom_name(int i) const
{
  if (atom->tag_enable) return "ID " + std::to_string(atom->tag[i]);
  return "index " + std::to_string(i) + " of rank " + std::to_string(comm->me);
}

// NaN/inf positions and overlapping atoms: error->one on the rank that sees them (the others
// are aborted with it, never left waiting in the exchange).  The same pass over the pairs
// counts the neighbours within the cutoffs of the models' e_sel/a_sel (report_truncation).
void PairDPA3::check_positions()
{
  const size_t nm = models.size();
  sel_warned.resize(2 * nm, 0);
  bool counting = false;    // some limit not reported yet
  for (size_t m = 0; m < nm; m++)
    counting |=
        models[m]->graph_spec().size() >= 4 && !(sel_warned[2 * m] && sel_warned[2 * m + 1]);
  std::vector<double> radii;    // [2 * nm]: edge and angle cutoff of every model (0: none)
  if (counting) radii.assign(2 * nm, 0.0);
  for (size_t m = 0; m < nm && counting; m++) {
    const std::vector<double> &spec = models[m]->graph_spec();
    if (spec.size() < 4) continue;
    radii[2 * m] = spec[0] * dist_unit;
    radii[2 * m + 1] = spec[2] * dist_unit;
  }
  std::vector<int> most;
  const Dpa3BadPosition bad =
      dpa3_check_positions(list->inum, list->ilist, list->numneigh, list->firstneigh, atom->nlocal,
                           fwd_map, atom->x, MIN_DISTANCE * dist_unit, radii, most);
  if (bad.i < 0) {
    if (!radii.empty()) report_truncation(most);
    return;
  }
  double **x = atom->x;
  std::ostringstream msg;
  msg.precision(6);
  if (bad.j < 0) {
    msg << "atom " << atom_name(bad.i) << " has a non-finite position (" << x[bad.i][0] << ", "
        << x[bad.i][1] << ", " << x[bad.i][2]
        << "): the simulation is unstable (time step, thermostat, or the input positions)";
  } else {
    msg << "atoms " << atom_name(bad.i) << " and " << atom_name(bad.j) << " are "
        << bad.r / dist_unit << " Angstrom apart (less than " << MIN_DISTANCE
        << " Angstrom): overlapping atoms; check the positions and their units";
  }
  compute_failed(msg.str());
}

// An atom with more neighbours within a model's edge (angle) cutoff than its e_sel (a_sel): the
// model keeps the nearest e_sel (a_sel) and leaves the others out, as DeePMD-kit does; this is
// said once per run and limit, on rank 0, with the largest count over the ranks.  most [2 * nm]:
// this rank's largest counts (check_positions; every rank calls this, or none does: the models
// and flags are the same on all).
void PairDPA3::report_truncation(const std::vector<int> &most)
{
  std::vector<int> global(most.size(), 0);
  MPI_Allreduce(most.data(), global.data(), static_cast<int>(most.size()), MPI_INT, MPI_MAX, world);
  for (size_t m = 0; m < models.size(); m++) {
    const std::vector<double> &spec = models[m]->graph_spec();
    for (int k = 0; k < 2 && spec.size() >= 4; k++) {
      const int sel = static_cast<int>(spec[2 * k + 1]);
      if (sel_warned[2 * m + k] || global[2 * m + k] <= sel) continue;
      sel_warned[2 * m + k] = 1;
      if (comm->me == 0)
        error->warning(FLERR,
                       "pair_style dpa3: an atom has {} neighbours within {} Angstrom (step {}), "
                       "more than the {} {} of model {}: the {} nearest are used and the rest "
                       "left out, as in DeePMD-kit, so the energy jumps where a count crosses "
                       "{} (a larger {} needs training again; said once per run)",
                       global[2 * m + k], spec[2 * k], update->ntimestep, k ? "a_sel" : "e_sel",
                       sel, model_files[m], sel, sel, k ? "a_sel" : "e_sel");
    }
  }
}

// The atoms of NULL types are dropped at re-neighbouring (rebuild); a type changed between a
// NULL and a handled one since then (set type, then run ... pre no) would be evaluated with
// the wrong set of atoms.  Types between handled elements may change: they are read each step.
void PairDPA3::check_null_types()
{
  const int nall = atom->nlocal + atom->nghost;
  const int *type = atom->type;
  for (int i = 0; i < nall; i++) {
    const bool handled = type_map[type[i]] >= 0;
    if (handled == (fwd_map[i] >= 0)) continue;
    compute_failed(fmt::format(
        "atom {} has type {}, {} in pair_coeff, but was {} at the last re-neighbouring: a type "
        "changed between a NULL and an element type without re-neighbouring (set type, then run "
        "... pre no?); run with pre yes after changing types",
        atom_name(i), type[i], handled ? coeff_names[type[i]] : "NULL",
        handled ? "of a NULL type" : "handled by dpa3"));
  }
}

void PairDPA3::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  if (need_rebuild()) rebuild();
  check_positions();

  double **x = atom->x;
  double **f = atom->f;
  const int *type = atom->type;
  const double *boxlo = domain->boxlo;

  check_null_types();
  coord_buf.resize(3 * static_cast<size_t>(nall_model));
  atype_buf.resize(nall_model);
  for (int k = 0; k < nall_model; k++) {
    const int i = bkw_map[k];
    atype_buf[k] = type_map[type[i]];
    for (int d = 0; d < 3; d++) coord_buf[3 * k + d] = (x[i][d] - boxlo[d]) / dist_unit;
  }

  const bool atomic_virial = (vflag_atom || cvflag_atom);
  const bool devi_step = out_freq > 0 && update->ntimestep % out_freq == 0;
  // on output steps model 0 keeps its neighbour graph for the committee (model_deviation)
  const bool keep_graph =
      devi_step && std::find(devi_shared.begin(), devi_shared.end(), 1) != devi_shared.end();
  Dpa3Result res;
  try {
    models[0]->compute(coord_buf, atype_buf, atomic_virial, res, keep_graph);
  } catch (const std::exception &e) {
    compute_failed(e.what());
  }

  const double force_unit = ener_unit / dist_unit;
  for (int k = 0; k < nall_model; k++) {
    const int i = bkw_map[k];
    for (int d = 0; d < 3; d++) f[i][d] += res.force[3 * k + d] * force_unit;
  }
  if (eflag_global) eng_vdwl += res.energy * ener_unit;
  if (eflag_atom)
    for (int k = 0; k < nloc_model; k++) eatom[bkw_map[k]] += res.atom_energy[k] * ener_unit;
  if (vflag_global)
    for (int c = 0; c < 6; c++) virial[c] += res.virial[VIRIAL_ORDER[c]] * ener_unit;
  if (vflag_atom)
    for (int k = 0; k < nall_model; k++)
      for (int c = 0; c < 6; c++)
        vatom[bkw_map[k]][c] += res.atom_virial[9 * k + VIRIAL_ORDER[c]] * ener_unit;
  if (cvflag_atom)
    for (int k = 0; k < nall_model; k++)
      for (int c = 0; c < 9; c++)
        cvatom[bkw_map[k]][c] += res.atom_virial[9 * k + VIRIAL_ORDER[c]] * ener_unit;

  // the committee runs only on output steps, on the same inputs (pair_dpa3_devi.cpp)
  if (devi_step) model_deviation(res);
}
