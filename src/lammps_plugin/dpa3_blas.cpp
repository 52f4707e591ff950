/* ----------------------------------------------------------------------
   dpa3_rebind_torch_blas (see dpa3_blas.h)
------------------------------------------------------------------------- */

#include "dpa3_blas.h"

#include <cstdint>
#include <cstring>

#if defined(__linux__) && (defined(__x86_64__) || defined(__aarch64__))
#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <sys/mman.h>
#include <unistd.h>
#define DPA3_REBIND_ELF 1
#endif

using namespace LAMMPS_NS;

#ifdef DPA3_REBIND_ELF

namespace {

#if defined(__x86_64__)
constexpr uint32_t RELOC_JUMP_SLOT = R_X86_64_JUMP_SLOT;
constexpr uint32_t RELOC_GLOB_DAT = R_X86_64_GLOB_DAT;
#else
constexpr uint32_t RELOC_JUMP_SLOT = R_AARCH64_JUMP_SLOT;
constexpr uint32_t RELOC_GLOB_DAT = R_AARCH64_GLOB_DAT;
#endif

// Fortran BLAS/LAPACK naming: [a-z][a-z0-9]* and one trailing underscore (dgemm_, lsame_)
bool fortran_blas_name(const char *name)
{
  const size_t n = std::strlen(name);
  if (n < 2 || name[n - 1] != '_' || name[0] < 'a' || name[0] > 'z') return false;
  for (size_t k = 1; k + 1 < n; k++) {
    const char c = name[k];
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))) return false;
  }
  return true;
}

struct Found {
  dl_phdr_info copy{};
  bool ok = false;
};

int find_torch_cpu(dl_phdr_info *info, size_t, void *data)
{
  const char *name = info->dlpi_name;
  if (!name) return 0;
  const char *base = std::strrchr(name, '/');
  base = base ? base + 1 : name;
  if (std::strncmp(base, "libtorch_cpu.so", 15) != 0) return 0;
  auto *found = static_cast<Found *>(data);
  found->copy = *info;
  found->ok = true;
  return 1;
}

// d_ptr of the in-memory dynamic section: glibc relocates it on these targets; accept both
ElfW(Addr) dyn_ptr(ElfW(Addr) value, ElfW(Addr) base)
{
  return value < base ? value + base : value;
}

}    // namespace

Dpa3Rebind LAMMPS_NS::dpa3_rebind_torch_blas()
{
  Dpa3Rebind out;
  Found found;
  dl_iterate_phdr(find_torch_cpu, &found);
  if (!found.ok) {
    out.error = "libtorch_cpu.so is not loaded";
    return out;
  }
  const dl_phdr_info &info = found.copy;
  const ElfW(Addr) base = info.dlpi_addr;
  const ElfW(Dyn) *dyn = nullptr;
  ElfW(Addr) relro_lo = 0, relro_hi = 0;
  for (int k = 0; k < info.dlpi_phnum; k++) {
    const ElfW(Phdr) &ph = info.dlpi_phdr[k];
    if (ph.p_type == PT_DYNAMIC) dyn = reinterpret_cast<const ElfW(Dyn) *>(base + ph.p_vaddr);
    if (ph.p_type == PT_GNU_RELRO) {
      relro_lo = base + ph.p_vaddr;
      relro_hi = relro_lo + ph.p_memsz;
    }
  }
  if (!dyn) {
    out.error = "libtorch_cpu.so has no dynamic section";
    return out;
  }
  const ElfW(Sym) *symtab = nullptr;
  const char *strtab = nullptr;
  const ElfW(Rela) * tables[2] = {nullptr, nullptr};
  size_t sizes[2] = {0, 0};
  bool rela_plt = true;
  for (const ElfW(Dyn) *d = dyn; d->d_tag != DT_NULL; d++) {
    switch (d->d_tag) {
      case DT_SYMTAB:
        symtab = reinterpret_cast<const ElfW(Sym) *>(dyn_ptr(d->d_un.d_ptr, base));
        break;
      case DT_STRTAB: strtab = reinterpret_cast<const char *>(dyn_ptr(d->d_un.d_ptr, base)); break;
      case DT_JMPREL:
        tables[0] = reinterpret_cast<const ElfW(Rela) *>(dyn_ptr(d->d_un.d_ptr, base));
        break;
      case DT_PLTRELSZ: sizes[0] = d->d_un.d_val; break;
      case DT_PLTREL: rela_plt = d->d_un.d_val == DT_RELA; break;
      case DT_RELA:
        tables[1] = reinterpret_cast<const ElfW(Rela) *>(dyn_ptr(d->d_un.d_ptr, base));
        break;
      case DT_RELASZ: sizes[1] = d->d_un.d_val; break;
      default: break;
    }
  }
  if (!symtab || !strtab || !rela_plt) {
    out.error = "libtorch_cpu.so: unsupported relocation tables";
    return out;
  }
  const long page = sysconf(_SC_PAGESIZE);
  for (int t = 0; t < 2; t++) {
    if (!tables[t]) continue;
    const size_t n = sizes[t] / sizeof(ElfW(Rela));
    for (size_t k = 0; k < n; k++) {
      const ElfW(Rela) &r = tables[t][k];
      const auto type = static_cast<uint32_t>(ELF64_R_TYPE(r.r_info));
      if (type != RELOC_JUMP_SLOT && type != RELOC_GLOB_DAT) continue;
      const ElfW(Sym) &sym = symtab[ELF64_R_SYM(r.r_info)];
      if (sym.st_shndx == SHN_UNDEF || ELF64_ST_TYPE(sym.st_info) != STT_FUNC) continue;
      const char *name = strtab + sym.st_name;
      if (!fortran_blas_name(name)) continue;
      auto **slot = reinterpret_cast<void **>(base + r.r_offset);
      void *own = reinterpret_cast<void *>(base + sym.st_value);
      if (*slot == own) continue;
      // bound elsewhere already, or still the lazy-binding stub (inside libtorch_cpu)
      Dl_info where{};
      if (dladdr(*slot, &where) && where.dli_fbase != reinterpret_cast<void *>(base)) {
        out.interposed++;
        if (out.from.empty() && where.dli_fname) out.from = where.dli_fname;
      }
      const auto addr = reinterpret_cast<uintptr_t>(slot);
      void *first = reinterpret_cast<void *>(addr & ~static_cast<uintptr_t>(page - 1));
      const bool relro = addr >= relro_lo && addr < relro_hi;
      if (relro && mprotect(first, page, PROT_READ | PROT_WRITE) != 0) {
        out.error = "mprotect failed";
        return out;
      }
      *slot = own;
      if (relro) mprotect(first, page, PROT_READ);
      out.slots++;
    }
  }
  return out;
}

#else

Dpa3Rebind LAMMPS_NS::dpa3_rebind_torch_blas()
{
  Dpa3Rebind out;
  out.error = "not an ELF x86-64/aarch64 Linux build";
  return out;
}

#endif
