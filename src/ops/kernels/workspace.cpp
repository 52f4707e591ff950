/* ----------------------------------------------------------------------
   dpa3: workspace(like, numel), the buffer of the low-memory path.

   The low-memory evaluation (python/dpa3/model/low_memory.py) keeps what
   its backward pass needs in one buffer per evaluation: ~0.6 MB per atom,
   gigabytes from a few thousand atoms per process. Taken from malloc, the
   block of the last evaluation is not always there for the next one: glibc
   unmaps blocks above its largest mmap threshold (2 GiB) on free, so every
   evaluation faults gigabytes in again, and tcmalloc, which keeps freed
   memory, may have split the freed block for other allocations by the time
   the next evaluation asks for it (24,576 water atoms on 2 ranks: a second
   buffer next to the kept pages of the first, +7 GB, out of memory).

   On the CPU the buffer is therefore a mapping of its own (anonymous,
   private), outside malloc; when its tensor is freed the mapping goes to a
   pool of one, and the next request of the same size gets it back (its
   pages already resident), whatever malloc did in between. A request of
   another size unmaps the pooled one first. A mapping is handed out to one
   tensor at a time (a mutex guards the pool): two evaluations at once get
   two mappings. The pool exists from the first call on (nothing at load
   time). On other devices: at::empty (their caching allocators keep
   blocks). Contents are uninitialised, as at::empty's.
------------------------------------------------------------------------- */

#include <ATen/ATen.h>
#include <torch/library.h>

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>

namespace dpa3 {

namespace {

struct Pool {
  std::mutex m;
  void *ptr = nullptr;
  size_t bytes = 0;
};

Pool &pool()
{
  static Pool p;    // created at the first call
  return p;
}

// the deleter of a workspace tensor: into the pool if it is empty, else unmapped
void give_back(void *ptr, size_t bytes)
{
  Pool &p = pool();
  {
    std::lock_guard<std::mutex> lock(p.m);
    if (p.ptr == nullptr) {
      p.ptr = ptr;
      p.bytes = bytes;
      return;
    }
  }
  munmap(ptr, bytes);
}

// a mapping of exactly `bytes` (page multiple): the pooled one if it has that size
void *take(size_t bytes)
{
  Pool &p = pool();
  void *ptr = nullptr;
  void *stale = nullptr;
  size_t stale_bytes = 0;
  {
    std::lock_guard<std::mutex> lock(p.m);
    if (p.ptr != nullptr && p.bytes == bytes) {
      ptr = p.ptr;
    } else if (p.ptr != nullptr) {
      stale = p.ptr;
      stale_bytes = p.bytes;
    }
    p.ptr = nullptr;
    p.bytes = 0;
  }
  if (stale != nullptr) munmap(stale, stale_bytes);
  if (ptr != nullptr) return ptr;
  ptr = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
             -1, 0);
  TORCH_CHECK(ptr != MAP_FAILED, "dpa3::workspace: mapping ", bytes,
              " bytes failed: ", std::strerror(errno));
  return ptr;
}

at::Tensor workspace(const at::Tensor &like, int64_t numel)
{
  TORCH_CHECK(numel >= 0, "dpa3::workspace: numel must be >= 0, got ", numel);
  if (!like.device().is_cpu() || numel == 0) return at::empty({numel}, like.options());
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t used = static_cast<size_t>(numel) * like.element_size();
  const size_t bytes = (used + page - 1) / page * page;
  void *ptr = take(bytes);
  return at::from_blob(
      ptr, {numel},
      [bytes](void *q) {
        give_back(q, bytes);
      },
      like.options());
}

}    // namespace

}    // namespace dpa3

TORCH_LIBRARY_FRAGMENT(dpa3, m) { m.def("workspace(Tensor like, int numel) -> Tensor"); }

TORCH_LIBRARY_IMPL(dpa3, CompositeImplicitAutograd, m) { m.impl("workspace", &dpa3::workspace); }
