/* -*- c++ -*- ----------------------------------------------------------
   dpa3_keep_freed_memory: lets glibc's malloc reuse the memory of one MD step in the next.

   A model evaluation allocates and frees the same large tensors every step (tens to hundreds
   of MB each from ~1,000 atoms per rank on). With glibc's defaults, blocks above the mmap
   threshold (dynamic, at most 32 MB) are mmap-ed and unmapped on free, and free memory at the
   top of the heap is returned to the kernel: every step then faults all those pages in again
   (measured: ~2 million page faults and twice the time of an evaluation of 1,536 water atoms
   in one process; 1.3-1.5x the time per MD step on 2 ranks). This sets M_MMAP_THRESHOLD and
   M_TRIM_THRESHOLD to their maximum (2 GiB), as an allocator like tcmalloc behaves: freed
   memory stays in the process for reuse, the resident set stays at the step's peak (which
   every step reaches anyway). Numerics are not affected.

   With gperftools' tcmalloc preloaded instead, free spans go back to the kernel a little at a
   time (release rate 1), which at 6,144 atoms in one process made ~1 million page faults
   (2.9 s of system time in a 31 s evaluation) every other evaluation; this sets the release rate to
0 (what TCMALLOC_RELEASE_RATE=0 does; left alone when that variable is set). With any other
   allocator, and on systems without glibc, it does nothing.
------------------------------------------------------------------------- */

#ifndef LMP_DPA3_MALLOC_H
#define LMP_DPA3_MALLOC_H

#include <string>

namespace LAMMPS_NS {

// gperftools' tcmalloc: its release-rate flag (a double; the symbol of its FLAGS_ variable)
#define DPA3_TCMALLOC_RELEASE_RATE                                                               \
  "_ZN62FLAG__namespace_do_not_use_directly_use_DECLARE_double_instead27FLAGS_tcmalloc_release_" \
  "rateE"

struct Dpa3Malloc {
  bool changed = false;    // the setting was made (now or by an earlier call)
  std::string what;        // what was set (for the log)
  std::string why;         // why not (another allocator, not glibc, mallopt refused)
};

// Idempotent; call before the first model evaluation.
Dpa3Malloc dpa3_keep_freed_memory();

}    // namespace LAMMPS_NS

#endif
