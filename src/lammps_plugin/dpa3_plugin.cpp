/* ----------------------------------------------------------------------
   LAMMPS plugin entry point: registers pair_style dpa3.

   Load with "plugin load libdpa3_lmp.so", or automatically from a directory in
   LAMMPS_PLUGIN_PATH (LAMMPS only auto-loads files whose name ends in
   "plugin.so", hence the dpa3plugin.so link installed next to the library).
------------------------------------------------------------------------- */

#include "lammps.h"
#include "error.h"

#include "pair_dpa3.h"

#include <cstring>

using namespace LAMMPS_NS;

// LAMMPS's lammpsplugin.h is not shipped with the PyPI wheel; this is the same C layout.
extern "C" {
typedef void *(lammpsplugin_factory1) (void *);
typedef void *(lammpsplugin_factory2) (void *, int, char **);

typedef struct {
  const char *version;
  const char *style;
  const char *name;
  const char *info;
  const char *author;
  union {
    lammpsplugin_factory1 *v1;
    lammpsplugin_factory2 *v2;
  } creator;
  void *handle;
} lammpsplugin_t;

typedef void (*lammpsplugin_regfunc)(lammpsplugin_t *, void *);

void lammpsplugin_init(void *lmp, void *handle, void *regfunc);
}

// LAMMPS version string and git descriptor of the headers this plugin was compiled with
#ifndef DPA3_LAMMPS_VERSION
#define DPA3_LAMMPS_VERSION "unknown"
#endif
#ifndef DPA3_LAMMPS_GIT_DESCRIPTOR
#define DPA3_LAMMPS_GIT_DESCRIPTOR ""
#endif

static Pair *dpa3_creator(LAMMPS *lmp) { return new PairDPA3(lmp); }

extern "C" void lammpsplugin_init(void *lmp_ptr, void *handle, void *regfunc)
{
  auto *lmp = static_cast<LAMMPS *>(lmp_ptr);

  // Class layouts differ between LAMMPS updates that share a version date, so compare
  // the git descriptor too and refuse to run inside a LAMMPS the plugin was not built for.
  const char *built = DPA3_LAMMPS_GIT_DESCRIPTOR;
  if (built[0] != '\0' && LAMMPS::has_git_info() && strcmp(built, LAMMPS::git_descriptor()) != 0)
    lmp->error->all(FLERR,
                    "The dpa3 plugin was built for LAMMPS {} but runs in LAMMPS {}: rebuild "
                    "it against this LAMMPS",
                    built, LAMMPS::git_descriptor());

  lammpsplugin_t plugin;
  auto register_plugin = reinterpret_cast<lammpsplugin_regfunc>(regfunc);
  plugin.version = DPA3_LAMMPS_VERSION;
  plugin.style = "pair";
  plugin.name = "dpa3";
  plugin.info = "DPA3 message-passing potential (TorchScript, multi-rank ghost exchange)";
  plugin.author = "dpa3 developers";
  plugin.creator.v1 = reinterpret_cast<lammpsplugin_factory1 *>(&dpa3_creator);
  plugin.handle = handle;
  (*register_plugin)(&plugin, lmp);
}
