#!/usr/bin/env bash
# The main job, from nothing to MD: set up the environment, train a small DPA3 on the bundled
# water data (a few minutes on 2 cores), freeze it, test it, plot the learning curves and a
# parity plot, and run LAMMPS NVT with pair_style dpa3 on 2 MPI ranks.
#   bash scripts/quickstart.sh            # everything lands in runs/quickstart/
# Settings: DPA3_QUICKSTART_STEPS (training steps, default from the input file),
#           DPA3_MD_STEPS (MD steps, default 200), DPA3_NP (MPI ranks, default 2).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/scripts/setup.sh"
venv="${DPA3_VENV:-$here/.venv}"
export PATH="$venv/bin:$PATH"
run="$here/runs/quickstart"
mkdir -p "$run"
cd "$run"
log() { printf '\n[quickstart] %s\n' "$*"; }

log "1/5 training a small DPA3 on examples/data/water (train: data_0..2, validation: data_3)"
"$venv/bin/python" - "$here/examples/quickstart/input.json" input.json <<'PY'
import json, os, sys
cfg = json.load(open(sys.argv[1]))
steps = os.environ.get("DPA3_QUICKSTART_STEPS")
if steps:
    cfg["training"]["numb_steps"] = int(steps)
json.dump(cfg, open(sys.argv[2], "w"), indent=2)
PY
# torch's default thread count (all cores) unless OMP_NUM_THREADS says otherwise; on a busy
# machine OMP_NUM_THREADS=1 can be faster (threads wait for each other when a core is taken).
dpa3 train input.json

log "2/5 freezing the model for LAMMPS and ASE"
dpa3 freeze -c . -o model.pth

log "3/5 testing on the validation system"
dpa3 test -m model.pth -s "$here/examples/data/water/data_3" -n 20 --plot parity.png | tee test.log

log "4/5 plotting the learning curves"
dpa3 plot lcurve.out -o lcurve.png

np="${DPA3_NP:-2}"
log "5/5 LAMMPS NVT (pair_style dpa3) on $np MPI ranks"
cp "$here/examples/lammps/in.water" "$here/examples/lammps/data.water" .
# LAMMPS auto-loads every *plugin.so in LAMMPS_PLUGIN_PATH (dpa3plugin.so ships with dpa3)
LAMMPS_PLUGIN_PATH="$("$venv/bin/python" -c 'import dpa3.lammps as l; print(l.plugin_dir())')"
export LAMMPS_PLUGIN_PATH
mpirun -np "$np" lmp -in in.water -var model model.pth -var nsteps "${DPA3_MD_STEPS:-200}" \
  -log log.lammps

cat <<MSG

[quickstart] done. In $run:
  model.pth          the frozen model (LAMMPS: pair_style dpa3 model.pth; ASE: DPA3Calculator)
  lcurve.out         learning curves (DeePMD-kit columns), plotted in lcurve.png
  parity.png         predicted vs reference energies and forces on water/data_3 (test.log)
  water.lammpstrj    the LAMMPS trajectory ($np MPI ranks), log.lammps its log
MSG
