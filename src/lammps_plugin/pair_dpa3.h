/* -*- c++ -*- ----------------------------------------------------------
   pair_style dpa3: the DPA3 message-passing potential as a LAMMPS plugin.

   One TorchScript model per rank (or a committee of models for the model
   deviation, pair_dpa3_devi.cpp: the first drives the dynamics, all share one
   schedule and neighbour matrix).  Ghost atoms only need geometry within one
   cutoff of the local atoms: node features of ghosts are refreshed inside the
   model, layer by layer, by the dpa3::border_exchange op, which replays
   LAMMPS's own swap schedule (captured here at every re-neighbouring through
   the public pack/unpack callbacks of Comm::forward_comm / reverse_comm).
------------------------------------------------------------------------- */

#ifdef PAIR_CLASS
// clang-format off
PairStyle(dpa3,PairDPA3);
// clang-format on
#else

#ifndef LMP_PAIR_DPA3_H
#define LMP_PAIR_DPA3_H

#include "pair.h"

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

namespace LAMMPS_NS {

class Dpa3Model;
struct Dpa3Schedule;
struct Dpa3Capture;
struct Dpa3Result;

class PairDPA3 : public Pair {
 public:
  PairDPA3(class LAMMPS *);
  ~PairDPA3() override;

  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;

  // used while capturing the swap schedule (see capture_schedule()) and, reverse only, to
  // fold the ghost forces of a committee home (devi_comm, pair_dpa3_devi.cpp)
  int pack_forward_comm(int, int *, double *, int, int *) override;
  void unpack_forward_comm(int, int, double *) override;
  int pack_reverse_comm(int, int, double *) override;
  void unpack_reverse_comm(int, int *, double *) override;

 protected:
  void allocate();
  void load_model();
  void check_metadata(const std::string &file, const Dpa3Model &model);
  void update_type_map();
  bool need_rebuild();
  void rebuild();
  void capture_schedule();
  void check_exchange();
  void compute_failed(const std::string &what);
  void check_positions();
  void report_truncation(const std::vector<int> &most);
  void check_special();
  void check_neigh_modify();
  void check_null_types();
  std::string atom_name(int i) const;
  // model deviation (pair_dpa3_devi.cpp)
  void devi_open();
  void devi_close();
  void model_deviation(const Dpa3Result &res0);
  void devi_write(const double vdev[3], const double fdev[3], const std::vector<double> &atomic);
  int devi_pack_reverse(int n, int first, double *buf);
  void devi_unpack_reverse(int n, const int *list, const double *buf);

  std::vector<std::string> model_files;    // model 0 drives the dynamics
  std::string device;                      // keyword value: "auto", "cpu" or "cuda"
  std::string run_device;                  // what auto resolved to: "cpu" or "cuda"
  bool mode_logged;                        // exchange mode printed (cuda on several ranks)
  bool check_flag;                         // push atom tags through the exchange op at each rebuild
  bool check_logged;
  std::vector<std::unique_ptr<Dpa3Model>> models;
  std::vector<char> sel_warned;    // [nmodels * 2]: e_sel, a_sel overflow reported

  // model deviation: written every out_freq steps when there are several models
  int out_freq;    // 0 with a single model
  std::string out_file;
  bool out_atomic;                   // append the per-atom force deviations
  bool out_rel, out_rel_v;           // divide by |f| + eps, |virial component / N| + eps_v
  double eps, eps_v;                 // in LAMMPS force / energy units
  int out_digits;                    // significant digits written (7 = DeePMD-kit's format)
  FILE *devi_fp;                     // rank 0
  bool devi_comm;                    // reverse comm of the committee's ghost forces in progress
  std::vector<double> devi_force;    // [nall][nmodels][3], LAMMPS indexing and units
  std::vector<char> devi_shared;     // [nmodels]: model m evaluates model 0's step graph

  std::vector<std::string> coeff_names;    // element per LAMMPS type (1-based); "NULL" = ignored
  bool coeff_positional;                   // pair_coeff * * without names
  std::vector<int> type_map;               // LAMMPS type -> model type, -1 = NULL

  // unit conversion from the model's eV / Angstrom
  double ener_unit, dist_unit;

  // duplicated communicator handed to the exchange op (Fortran handle)
  bool comm_dup_done;
  long long comm_handle;
  void *dup_comm;    // MPI_Comm*, kept opaque so this header needs no mpi.h

  // per re-neighbouring state
  std::unique_ptr<Dpa3Capture> cap;
  std::vector<int> fwd_map;    // LAMMPS index -> model index, -1 for NULL-type atoms
  std::vector<int> bkw_map;    // model index -> LAMMPS index
  int nloc_model, nall_model;
  bool have_graph;
  int cached_nlocal, cached_nghost;
  bigint cached_ncalls, cached_lastcall;
  class NeighList *cached_list;
  std::vector<double> coord_buf;
  std::vector<int64_t> atype_buf;
};

}    // namespace LAMMPS_NS

#endif
#endif
