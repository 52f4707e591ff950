/* ----------------------------------------------------------------------
   pair_style dpa3: the input commands (part of PairDPA3, see pair_dpa3.cpp)

   pair_style dpa3 model.pth [device auto|cpu|cuda] [check on|off]
     settings(): keywords; load_model(): device and thread choice, loading of
     the frozen model on every rank (one error message on all ranks), its
     metadata.
   pair_coeff * * El1 El2 ...   (element per atom type, NULL = not handled)
     coeff(), update_type_map(): LAMMPS type -> model type.
------------------------------------------------------------------------- */

#include "pair_dpa3.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "json.h"
#include "utils.h"

#include "dpa3_model.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <thread>

using namespace LAMMPS_NS;

/* ----------------------------------------------------------------------
   pair_style dpa3 model.pth [device auto|cpu|cuda] [check on|off]
------------------------------------------------------------------------- */

void PairDPA3::settings(int narg, char **arg)
{
  if (narg < 1) error->all(FLERR, "Illegal pair_style dpa3 command: missing model file");
  model_file = arg[0];
  device = "auto";
  check_flag = false;
  int iarg = 1;
  while (iarg < narg) {
    const std::string key = arg[iarg];
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
    } else {
      error->all(FLERR, "Unknown pair_style dpa3 keyword: {}", key);
    }
    iarg += 2;
  }
  load_model();
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

  model.reset();
  std::string msg;
  try {
    model = std::make_unique<Dpa3Model>(model_file, run_device, local_rank);
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
    error->all(FLERR, "pair_style dpa3: {}", msg);
  }

  // metadata written by dpa3.export.freeze
  std::string precision = "?", version = "?", torch_version = "?", problem;
  int format = -1;
  try {
    auto meta = json::parse(model->metadata_json());
    format = meta.value("format_version", -1);
    precision = meta.value("precision", std::string("?"));
    version = meta.value("dpa3_version", std::string("?"));
    torch_version = meta.value("torch_version", std::string("?"));
  } catch (const std::exception &e) {
    problem = e.what();
  }
  if (!problem.empty())
    error->all(FLERR, "pair_style dpa3: model '{}' has unreadable metadata.json: {}", model_file,
               problem);
  if (format != 1)
    error->all(FLERR,
               "pair_style dpa3: model '{}' has metadata format_version {}, this plugin reads "
               "version 1",
               model_file, format);

  if (comm->me == 0) {
    const auto &tm = model->type_map();
    utils::logmesg(lmp,
                   "dpa3: loaded {} on {} (dpa3 {}, torch {}, {})\n"
                   "dpa3:   type map {}, rcut {} A, {} layers, exchange width {}\n",
                   model_file, model->device_name(), version, torch_version, precision,
                   "[" + utils::join_words(tm, ", ") + "]", model->rcut(), model->num_layers(),
                   model->exchange_width());
  }
}

/* ----------------------------------------------------------------------
   pair_coeff * * El1 El2 ... (NULL = type not handled); bare * * maps type i to model type i-1
------------------------------------------------------------------------- */

void PairDPA3::coeff(int narg, char **arg)
{
  if (!allocated) allocate();
  if (!model) error->all(FLERR, "pair_coeff for dpa3 before pair_style dpa3 loaded a model");
  const int ntypes = atom->ntypes;
  if (narg < 2 || strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR,
               "Incorrect args for pair coefficients: pair_style dpa3 needs pair_coeff * * "
               "followed by one element name (or NULL) per atom type");

  coeff_names.assign(ntypes + 1, "");
  coeff_positional = (narg == 2);
  const auto &tm = model->type_map();
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
  const auto &tm = model->type_map();
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
