/* -*- c++ -*- ----------------------------------------------------------
   Dpa3Model: the frozen (TorchScript) DPA3 model behind a torch-free interface.

   Everything that includes torch lives in dpa3_model.cpp, so pair_dpa3.cpp
   stays a plain LAMMPS source and another loader (e.g. AOTInductor .pt2) can
   be added later without touching it.  All methods report failures by
   throwing std::runtime_error with a message meant for the user.
------------------------------------------------------------------------- */

#ifndef LMP_DPA3_MODEL_H
#define LMP_DPA3_MODEL_H

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace LAMMPS_NS {

struct Dpa3Schedule;

// Outputs of one evaluation, in the model's units (eV, Angstrom), model indexing.
struct Dpa3Result {
  double energy = 0.0;                // sum of the local atomic energies
  double virial[9] = {0.0};           // row-major 3x3, sum over local + ghost atoms
  std::vector<double> force;          // [nall * 3], ghosts included
  std::vector<double> atom_energy;    // [nloc]
  std::vector<double> atom_virial;    // [nall * 9], only when requested
};

class Dpa3Model {
 public:
  // Loads the op library if needed, then the frozen model onto `device` ("cpu" or
  // "cuda"; for cuda, GPU number `device_rank` modulo the visible device count).
  Dpa3Model(const std::string &path, const std::string &device, int device_rank);
  ~Dpa3Model();
  Dpa3Model(const Dpa3Model &) = delete;
  Dpa3Model &operator=(const Dpa3Model &) = delete;

  double rcut() const;
  // get_graph_spec() of the model (edge cutoff, e_sel, angle cutoff, a_sel, ...; Angstrom),
  // empty for a model frozen without it
  const std::vector<double> &graph_spec() const;
  const std::vector<std::string> &type_map() const;
  int num_layers() const;
  int exchange_width() const;
  const std::string &metadata_json() const;    // contents of metadata.json
  std::string device_name() const;

  // Sets libtorch's intra-op thread count for this process (one LAMMPS rank).
  static void set_num_threads(int n);
  // Number of CUDA devices libtorch sees (0 with a CPU-only torch or without a GPU).
  static int cuda_device_count();

  // How dpa3::border_exchange moves this model's features between the ranks of the
  // communicator `comm` (MPI_Comm_c2f handle): "cpu", "cuda-aware", "staged", "host-routed
  // (...)" or "local (...)" (docs/internals.md, "The exchange on GPUs").
  std::string exchange_mode(int64_t comm) const;

  // Uploads the per-re-neighbouring state: the exchange schedule (model indexing),
  // the padded neighbour matrix [nloc * nnei], the communicator handle and this rank.
  void set_graph(const Dpa3Schedule &sched, const std::vector<int64_t> &nlist, int nloc, int nnei,
                 int64_t comm, int rank);

  // Uses the graph inputs of `other` (set by its set_graph): the same tensors, no copy and no
  // upload; for the models of a committee (model deviation), which all run on one device.
  // Throws if the devices differ or `other` has no graph yet.
  void share_graph(const Dpa3Model &other);

  // Evaluates the model on coord [nall * 3] (Angstrom) and atype [nall].  With keep_graph
  // (a committee's output step) and a model that has prepare_graph/forward_prepared, the
  // step's neighbour graph and input tensors are kept for compute_shared.
  void compute(const std::vector<double> &coord, const std::vector<int64_t> &atype,
               bool atomic_virial, Dpa3Result &out, bool keep_graph = false);

  // Whether this model can evaluate the graphs `other` prepares (both frozen with
  // prepare_graph/forward_prepared, equal get_graph_spec); if not, `why` says why.
  bool graph_compatible(const Dpa3Model &other, std::string &why) const;

  // Evaluates the model on the inputs and the neighbour graph kept by the last
  // compute(..., keep_graph = true) of the model whose graph inputs it shares (share_graph):
  // forces, energies and the total virial, no atomic virial, no graph build.  Throws if
  // there is no kept graph or graph_compatible fails.
  void compute_shared(Dpa3Result &out);

  // Drops the graph kept by compute(..., keep_graph = true) (the committee has evaluated it):
  // with the geometric factors, it holds their autograd graph, as large as a part of one
  // evaluation's, which should not stay allocated until the next output step.
  void release_step();

  // Pushes g [nall * width] (rows >= nloc ignored) through dpa3::border_exchange with the
  // current schedule and returns the result; used to check the schedule.
  std::vector<double> exchange(const std::vector<double> &g, int nall, int width);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl;
};

}    // namespace LAMMPS_NS

#endif
