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

   Only when the process's malloc is glibc's (not when another allocator is preloaded) and
   only on glibc systems; elsewhere it does nothing.
------------------------------------------------------------------------- */

#ifndef LMP_DPA3_MALLOC_H
#define LMP_DPA3_MALLOC_H

#include <string>

namespace LAMMPS_NS {

struct Dpa3Malloc {
  bool changed = false;    // the thresholds were set (now or by an earlier call)
  std::string why;         // why not (another allocator, not glibc, mallopt refused)
};

// Idempotent; call before the first model evaluation.
Dpa3Malloc dpa3_keep_freed_memory();

}    // namespace LAMMPS_NS

#endif
