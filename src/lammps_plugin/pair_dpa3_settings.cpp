/* ----------------------------------------------------------------------
   pair_style dpa3: the input commands (part of PairDPA3, see pair_dpa3.cpp)

   pair_style dpa3 model.pth [model2.pth ...] [keywords]
     settings(): model files and keywords; load_model(): device and thread choice, loading of
     the frozen model(s) on every rank (one error message on all ranks), their
     metadata, and that a committee agrees on type map and cutoff.
   pair_coeff * * El1 El2 ...   (element per atom type, NULL = not handled)
     coeff(), update_type_map(): LAMMPS type -> model type.
------------------------------------------------------------------------- */

#include "pair_dpa3.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "group.h"
#include "json.h"
#include "neighbor.h"
#include "utils.h"

#include "dpa3_blas.h"
#include "dpa3_malloc.h"
#include "dpa3_model.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <thread>

using namespace LAMMPS_NS;

namespace {

// every keyword of pair_style dpa3; the arguments before the first one are model files
const char *const KEYWORDS[] = {"device", "check",    "out_freq",   "out_file",
                                "atomic", "relative", "relative_v", "out_digits"};

bool is_keyword(const std::string &word)
{
  for (const char *k : KEYWORDS)
    if (word == k) return true;
  return false;
}

}    // namespace

/* ----------------------------------------------------------------------
   pair_style dpa3 model.pth [model2.pth ...] [device auto|cpu|cuda] [check on|off]
                   [out_freq N] [out_file F] [atomic] [relative L] [relative_v L]
                   [out_digits D]
------------------------------------------------------------------------- */

void PairDPA3::settings(int narg, char **arg)
{
  if (narg < 1) error->all(FLERR, "Illegal pair_style dpa3 command: missing model file");
  if (is_keyword(arg[0]))
    error->all(FLERR,
               "Illegal pair_style dpa3 command: missing model file (the first argument, {}, is a "
               "keyword; pair_style dpa3 MODEL [MODEL2 ...] [keyword value ...])",
               arg[0]);

  // model files: the first argument, then every argument up to the first keyword.  A word
  // that is neither a keyword nor an existing file is reported as an unknown keyword (decided
  // on rank 0, so that all ranks agree)
  int nfiles = 1, unknown = 0;
  if (comm->me == 0) {
    while (nfiles < narg && !is_keyword(arg[nfiles])) {
      std::ifstream probe(arg[nfiles], std::ios::binary);
      if (!probe.good()) {
        unknown = 1;
        break;
      }
      nfiles++;
    }
  }
  MPI_Bcast(&nfiles, 1, MPI_INT, 0, world);
  MPI_Bcast(&unknown, 1, MPI_INT, 0, world);
  if (unknown)
    error->all(FLERR, "Unknown pair_style dpa3 keyword: {} (nor an existing model file)",
               arg[nfiles]);
  model_files.assign(arg, arg + nfiles);

  device = "auto";
  check_flag = false;
  out_freq = 0;
  out_file = "model_devi.out";
  out_atomic = out_rel = out_rel_v = false;
  eps = eps_v = 0.0;
  out_digits = 7;
  std::string devi_key;    // first model deviation keyword given
  int iarg = nfiles;
  while (iarg < narg) {
    const std::string key = arg[iarg];
    if (!is_keyword(key)) error->all(FLERR, "Unknown pair_style dpa3 keyword: {}", key);
    if (key.rfind("out_", 0) == 0 || key == "atomic" || key.rfind("relative", 0) == 0)
      if (devi_key.empty()) devi_key = key;
    if (key == "atomic") {
      out_atomic = true;
      iarg += 1;
      continue;
    }
    if (iarg + 1 >= narg)
      error->all(FLERR, "Illegal pair_style dpa3 command: missing value after keyword {}", key);
    const std::string value = arg[iarg + 1];
    if (key == "device") {
      if (value != "auto" && value != "cpu" && value != "cuda")
        error->all(FLERR, "Illegal pair_style dpa3 keyword device: {} (use auto, cpu or cuda)",
                   value);
#ifndef DPA3_USE_CUDA
      if (value == "cuda")
        error->all(FLERR,
                   "pair_style dpa3 keyword device: this plugin was built without CUDA support");
#endif
      device = value;
    } else if (key == "check") {
      check_flag = utils::logical(FLERR, value, false, lmp) == 1;
    } else if (key == "out_freq") {
      out_freq = utils::inumeric(FLERR, value, false, lmp);
      if (out_freq < 1)
        error->all(FLERR, "Illegal pair_style dpa3 keyword out_freq: {} (must be >= 1)", value);
    } else if (key == "out_file") {
      out_file = value;
    } else if (key == "relative") {
      out_rel = true;
      eps = utils::numeric(FLERR, value, false, lmp);
      if (eps < 0.0)
        error->all(FLERR, "Illegal pair_style dpa3 keyword relative: {} (must be >= 0)", value);
    } else if (key == "relative_v") {
      out_rel_v = true;
      eps_v = utils::numeric(FLERR, value, false, lmp);
      if (eps_v < 0.0)
        error->all(FLERR, "Illegal pair_style dpa3 keyword relative_v: {} (must be >= 0)", value);
    } else if (key == "out_digits") {
      out_digits = utils::inumeric(FLERR, value, false, lmp);
      if (out_digits < 1 || out_digits > 17)
        error->all(FLERR, "Illegal pair_style dpa3 keyword out_digits: {} (use 1 to 17)", value);
    }
    iarg += 2;
  }
  if (model_files.size() == 1 && !devi_key.empty())
    error->all(FLERR,
               "pair_style dpa3 keyword {} needs several models (model deviation: pair_style "
               "dpa3 m1.pth m2.pth ... out_freq N)",
               devi_key);
  if (model_files.size() > 1 && out_freq == 0) out_freq = 100;    // DeePMD-kit's default

  load_model();
  devi_open();
  have_graph = false;
  // a redefined pair_style keeps previous pair_coeff names: re-match them with the new model
  if (allocated && !coeff_names.empty()) update_type_map();
}

void PairDPA3::load_model()
{
  // ranks on this node: GPU number (node-local rank mod visible GPUs) and default thread count
  int local_rank = 0, ranks_on_node = 1;
  MPI_Comm node;
  MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, comm->me, MPI_INFO_NULL, &node);
  MPI_Comm_rank(node, &local_rank);
  MPI_Comm_size(node, &ranks_on_node);
  MPI_Comm_free(&node);

  // device auto: cuda if this plugin has CUDA and every rank sees a GPU (one device for all)
  int ngpu = 0, min_gpu = 0;
#ifdef DPA3_USE_CUDA
  if (device != "cpu") ngpu = Dpa3Model::cuda_device_count();
  const char *why = " (auto: no GPU visible on some rank)";
#else
  const char *why = " (auto: plugin built without CUDA)";
#endif
  MPI_Allreduce(&ngpu, &min_gpu, 1, MPI_INT, MPI_MIN, world);
  run_device = (device == "auto") ? (min_gpu > 0 ? "cuda" : "cpu") : device;
  mode_logged = false;
  if (comm->me == 0 && run_device == "cuda")
    utils::logmesg(lmp, "dpa3: device cuda (node-local rank -> GPU: {} rank(s) on {} GPU(s))\n",
                   ranks_on_node, ngpu);
  else if (comm->me == 0)
    utils::logmesg(lmp, "dpa3: device cpu{}\n", device == "auto" ? why : "");

  // libtorch threads per rank: OMP_NUM_THREADS if set (the usual LAMMPS convention), otherwise
  // the node's cores shared by the ranks on the node. torch's own default (all cores in every
  // rank) oversubscribes the cores under mpirun and is many times slower.
  int nthreads = 0;
  const char *omp = std::getenv("OMP_NUM_THREADS");
  if (omp && std::atoi(omp) > 0) {
    nthreads = std::atoi(omp);
  } else {
    const int cores = static_cast<int>(std::thread::hardware_concurrency());
    nthreads = std::max(1, cores / std::max(1, ranks_on_node));
  }
  Dpa3Model::set_num_threads(nthreads);
  if (comm->me == 0)
    utils::logmesg(lmp, "dpa3: {} torch thread(s) per MPI rank{}\n", nthreads,
                   (omp && std::atoi(omp) > 0) ? " (OMP_NUM_THREADS)" : "");
  // torch's matmuls must not run LAMMPS's bundled reference BLAS (dpa3_blas.h)
  const Dpa3Rebind rebind = dpa3_rebind_torch_blas();
  if (comm->me == 0 && rebind.interposed > 0)
    utils::logmesg(lmp,
                   "dpa3: {} BLAS/LAPACK functions of libtorch were bound to {}; rebound to "
                   "libtorch's own\n",
                   rebind.interposed, rebind.from);
  else if (comm->me == 0 && !rebind.error.empty())
    utils::logmesg(lmp, "dpa3: could not check libtorch's BLAS bindings: {}\n", rebind.error);

  // each step's large tensors reuse the previous step's memory (dpa3_malloc.h)
  const Dpa3Malloc heap = dpa3_keep_freed_memory();
  if (comm->me == 0 && heap.changed)
    utils::logmesg(lmp, "dpa3: {}\n", heap.what);
  else if (comm->me == 0)
    utils::logmesg(lmp, "dpa3: malloc left as is: {}\n", heap.why);

  models.clear();
  for (const auto &file : model_files) {
    std::string msg;
    try {
      models.push_back(std::make_unique<Dpa3Model>(file, run_device, local_rank));
    } catch (const std::exception &e) {
      msg = e.what();
      if (msg.empty()) msg = "unknown error";
    }

    // agree on failure on all ranks so that every rank stops with the same message
    int fail_rank = msg.empty() ? comm->nprocs : comm->me;
    int first_fail = comm->nprocs;
    MPI_Allreduce(&fail_rank, &first_fail, 1, MPI_INT, MPI_MIN, world);
    if (first_fail < comm->nprocs) {
      int len = static_cast<int>(msg.size());
      MPI_Bcast(&len, 1, MPI_INT, first_fail, world);
      msg.resize(len);
      MPI_Bcast(msg.data(), len, MPI_CHAR, first_fail, world);
      models.clear();
      error->all(FLERR, "pair_style dpa3: {}", msg);
    }
    check_metadata(file, *models.back());
  }

  // a committee shares one neighbour list, exchange schedule and neighbour matrix, and one
  // pair_coeff: the models must agree on the cutoff and the type map
  const Dpa3Model &first = *models[0];
  for (size_t m = 1; m < models.size(); m++) {
    const Dpa3Model &other = *models[m];
    if (other.type_map() != first.type_map())
      error->all(FLERR,
                 "pair_style dpa3: models '{}' and '{}' have different type maps ([{}] and [{}]); "
                 "the models of a model deviation must have the same type map",
                 model_files[0], model_files[m], utils::join_words(first.type_map(), ", "),
                 utils::join_words(other.type_map(), ", "));
    if (other.rcut() != first.rcut())
      error->all(FLERR,
                 "pair_style dpa3: models '{}' and '{}' have different cutoffs ({} and {} A); "
                 "the models of a model deviation must have the same cutoff (they share one "
                 "neighbour list)",
                 model_files[0], model_files[m], first.rcut(), other.rcut());
  }

  // on output steps the committee evaluates model 0's neighbour graph (formatted list, edges,
  // angles, their indices: built once per step) when the models agree on what it depends on;
  // a model that does not builds its own from the shared neighbour list (same result, slower)
  devi_shared.assign(models.size(), 0);
  for (size_t m = 1; m < models.size(); m++) {
    std::string why;
    devi_shared[m] = models[m]->graph_compatible(first, why) ? 1 : 0;
    if (!devi_shared[m] && comm->me == 0)
      utils::logmesg(lmp, "dpa3: model {} ('{}') builds its own neighbour graph: {}\n", m,
                     model_files[m], why);
  }
}

/* metadata written by dpa3.export.freeze; rank 0 logs what was loaded */

void PairDPA3::check_metadata(const std::string &file, const Dpa3Model &model)
{
  std::string precision = "?", version = "?", torch_version = "?", problem;
  int format = -1;
  try {
    auto meta = json::parse(model.metadata_json());
    format = meta.value("format_version", -1);
    precision = meta.value("precision", std::string("?"));
    version = meta.value("dpa3_version", std::string("?"));
    torch_version = meta.value("torch_version", std::string("?"));
  } catch (const std::exception &e) {
    problem = e.what();
  }
  if (!problem.empty())
    error->all(FLERR, "pair_style dpa3: model '{}' has unreadable metadata.json: {}", file,
               problem);
  if (format != 1)
    error->all(FLERR,
               "pair_style dpa3: model '{}' has metadata format_version {}, this plugin reads "
               "version 1",
               file, format);

  if (comm->me == 0) {
    const auto &tm = model.type_map();
    utils::logmesg(lmp,
                   "dpa3: loaded {} on {} (dpa3 {}, torch {}, {})\n"
                   "dpa3:   type map {}, rcut {} A, {} layers, exchange width {}\n",
                   file, model.device_name(), version, torch_version, precision,
                   "[" + utils::join_words(tm, ", ") + "]", model.rcut(), model.num_layers(),
                   model.exchange_width());
  }
}

/* ----------------------------------------------------------------------
   pair_coeff * * El1 El2 ... (NULL = type not handled); bare * * maps type i to model type i-1
------------------------------------------------------------------------- */

void PairDPA3::coeff(int narg, char **arg)
{
  if (!allocated) allocate();
  if (models.empty())
    error->all(FLERR, "pair_coeff for dpa3 before pair_style dpa3 loaded a model");
  const int ntypes = atom->ntypes;
  if (narg < 2 || strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR,
               "Incorrect args for pair coefficients: pair_style dpa3 needs pair_coeff * * "
               "followed by one element name (or NULL) per atom type");

  coeff_names.assign(ntypes + 1, "");
  coeff_positional = (narg == 2);
  const auto &tm = models[0]->type_map();
  if (coeff_positional) {
    if (ntypes > (int) tm.size())
      error->all(FLERR,
                 "pair_coeff * * without element names maps atom type i to model type i-1, but "
                 "there are {} atom types and the model has {} ({}): give one element name per "
                 "type",
                 ntypes, tm.size(), utils::join_words(tm, " "));
    for (int t = 1; t <= ntypes; t++) coeff_names[t] = tm[t - 1];
    const std::vector<std::string> used(coeff_names.begin() + 1, coeff_names.end());
    if (comm->me == 0)
      error->warning(FLERR,
                     "pair_coeff * * for dpa3 without element names: atom type i is the model's "
                     "type i-1 ({}); name the elements to be explicit",
                     utils::join_words(used, " "));
  } else {
    if (narg != 2 + ntypes)
      error->all(FLERR,
                 "Incorrect args for pair coefficients: pair_coeff * * for dpa3 needs {} element "
                 "names (one per atom type, NULL to skip a type), got {}",
                 ntypes, narg - 2);
    for (int t = 1; t <= ntypes; t++) coeff_names[t] = arg[1 + t];
  }
  update_type_map();

  // all pairs are "set", also those with NULL types: dpa3 then just ignores those atoms
  for (int i = 1; i <= ntypes; i++)
    for (int j = 1; j <= ntypes; j++) setflag[i][j] = 1;
  have_graph = false;
}

void PairDPA3::update_type_map()
{
  const auto &tm = models[0]->type_map();
  const int ntypes = static_cast<int>(coeff_names.size()) - 1;
  type_map.assign(ntypes + 1, -1);
  int nmapped = 0;
  for (int t = 1; t <= ntypes; t++) {
    const std::string &name = coeff_names[t];
    if (name == "NULL") continue;
    int found = -1;
    for (size_t k = 0; k < tm.size(); k++)
      if (tm[k] == name) found = static_cast<int>(k);
    if (found < 0)
      error->all(FLERR,
                 "pair_coeff for dpa3: element {} (atom type {}) is not in the model's type map: "
                 "{}",
                 name, t, utils::join_words(tm, " "));
    type_map[t] = found;
    nmapped++;
  }
  if (nmapped == 0) error->all(FLERR, "pair_coeff for dpa3: all atom types are NULL");
}

/* ----------------------------------------------------------------------
   neigh_modify exclude / include act on every pair neighbour list, dpa3's too: an excluded
   pair, or a centre outside the include group, is missing from the model's graph and the
   energy is silently another one.  Type exclusions involving a NULL type (atoms dpa3 does
   not see, e.g. those of a classical style of pair_style hybrid) are harmless.
------------------------------------------------------------------------- */

void PairDPA3::check_neigh_modify()
{
  std::string what;
  for (int k = 0; k < neighbor->nex_type && what.empty(); k++) {
    const int a = neighbor->ex1_type[k], b = neighbor->ex2_type[k];
    if (type_map[a] >= 0 && type_map[b] >= 0)
      what = fmt::format("exclude type {} {} ({} {})", a, b, coeff_names[a], coeff_names[b]);
  }
  if (what.empty() && neighbor->nex_group > 0)
    what = fmt::format("exclude group {} {}", group->names[neighbor->ex1_group[0]],
                       group->names[neighbor->ex2_group[0]]);
  if (what.empty() && neighbor->nex_mol > 0)
    what = fmt::format("exclude molecule/{} {}", neighbor->ex_mol_intra[0] ? "intra" : "inter",
                       group->names[neighbor->ex_mol_group[0]]);
  if (!what.empty())
    error->all(FLERR,
               "pair_style dpa3: neigh_modify {} removes pairs from dpa3's neighbour list, but the "
               "model needs every pair within its cutoff (use neigh_modify exclude none; only "
               "exclusions between a NULL type and another type are allowed)",
               what);
  if (neighbor->includegroup)
    error->all(FLERR,
               "pair_style dpa3: neigh_modify include {} leaves the atoms outside that group "
               "without neighbours, but the model needs every pair within its cutoff (use "
               "neigh_modify include all)",
               group->names[neighbor->includegroup]);
}
