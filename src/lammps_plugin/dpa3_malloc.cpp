/* ----------------------------------------------------------------------
   dpa3_keep_freed_memory (see dpa3_malloc.h)
------------------------------------------------------------------------- */

#include "dpa3_malloc.h"

#include <climits>
#include <cstdlib>
#include <cstring>

#if defined(__GLIBC__)
#include <dlfcn.h>
#include <malloc.h>
#endif

namespace LAMMPS_NS {

Dpa3Malloc dpa3_keep_freed_memory()
{
  static Dpa3Malloc done;
  static bool tried = false;
  if (tried) return done;
  tried = true;
#if defined(__GLIBC__)
  // the malloc that the process's calls bind to: glibc's lives in libc.so.6
  Dl_info where;
  void *fn = dlsym(RTLD_DEFAULT, "malloc");
  if (!fn || !dladdr(fn, &where) || !where.dli_fname) {
    done.why = "cannot tell which malloc the process uses";
    return done;
  }
  if (!std::strstr(where.dli_fname, "libc.so")) {
    // gperftools' tcmalloc hands free spans back to the kernel a little at a time (its
    // release rate, default 1), so a large evaluation faults them in again: rate 0 keeps them
    // (as TCMALLOC_RELEASE_RATE=0 would; left alone when the user set that variable)
    auto *rate = static_cast<double *>(dlsym(RTLD_DEFAULT, DPA3_TCMALLOC_RELEASE_RATE));
    if (rate && !std::getenv("TCMALLOC_RELEASE_RATE")) {
      *rate = 0.0;
      done.changed = true;
      done.what = "tcmalloc keeps freed memory for the next step (release rate 0)";
      return done;
    }
    done.why = std::string("malloc comes from ") + where.dli_fname;
    if (rate) done.why += " (TCMALLOC_RELEASE_RATE is set)";
    return done;
  }
  if (mallopt(M_MMAP_THRESHOLD, INT_MAX) != 1 || mallopt(M_TRIM_THRESHOLD, INT_MAX) != 1) {
    done.why = "mallopt refused the thresholds";
    return done;
  }
  done.changed = true;
  done.what = "glibc malloc keeps freed memory for the next step (M_MMAP_THRESHOLD, "
              "M_TRIM_THRESHOLD)";
#else
  done.why = "not a glibc system";
#endif
  return done;
}

}    // namespace LAMMPS_NS
