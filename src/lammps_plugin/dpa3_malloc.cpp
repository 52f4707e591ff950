/* ----------------------------------------------------------------------
   dpa3_keep_freed_memory (see dpa3_malloc.h)
------------------------------------------------------------------------- */

#include "dpa3_malloc.h"

#include <climits>
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
    done.why = std::string("malloc comes from ") + where.dli_fname;
    return done;
  }
  if (mallopt(M_MMAP_THRESHOLD, INT_MAX) != 1 || mallopt(M_TRIM_THRESHOLD, INT_MAX) != 1) {
    done.why = "mallopt refused the thresholds";
    return done;
  }
  done.changed = true;
#else
  done.why = "not a glibc system";
#endif
  return done;
}

}    // namespace LAMMPS_NS
