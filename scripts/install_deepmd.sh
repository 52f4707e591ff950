#!/usr/bin/env bash
# Install the reference DeePMD-kit 3.2.0 (PyTorch backend only) into the project venv,
# compiled from its PyPI sdist against the torch that is already installed there.
#
# Why from source: the 3.2.0 wheel's op library is built for torch 2.11 and
# `import deepmd.pt` fails with torch 2.13 (op library version check).
#
# Usage:  scripts/install_deepmd.sh            # uses .venv/bin/python of the repo
#         PYTHON=/path/to/python scripts/install_deepmd.sh
# Env:    BUILD_JOBS (default 2)  parallel compile jobs
#         DP_ENABLE_IPI (default 0): 1 also builds DeePMD's C++ API (+~1.5 min)
#         FORCE=1 rebuilds even if a working deepmd-kit 3.2.0 is already importable
#
# Measured: ~20 s for the dependency install, ~1.5 min for the sdist build (2 cores).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$REPO_ROOT/.venv/bin/python}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
DEEPMD_VERSION="3.2.0"
BUILD_JOBS="${BUILD_JOBS:-2}"

if [[ ! -x "$PYTHON" ]]; then
    echo "python not found: $PYTHON (set PYTHON=...)" >&2
    exit 1
fi

check() {
    "$PYTHON" - <<EOF 2>/dev/null
import deepmd, deepmd.pt, torch
assert deepmd.__version__ == "$DEEPMD_VERSION", deepmd.__version__
assert torch.__version__.split("+")[0] == "$TORCH_VERSION", torch.__version__
from deepmd.pt.model.model import get_model  # noqa: F401
EOF
}

if [[ "${FORCE:-0}" != "1" ]] && check; then
    echo "deepmd-kit $DEEPMD_VERSION already works with torch $TORCH_VERSION: nothing to do"
    exit 0
fi

PIP=("$PYTHON" -m pip)

# 1. runtime dependencies of deepmd-kit, with torch pinned to the installed CPU build
#    (an unpinned resolver would pull a multi-GB CUDA torch).
"${PIP[@]}" install "deepmd-kit==$DEEPMD_VERSION" "e3nn>=0.5.9" "vesin[torch]" dpdata \
    "torch==$TORCH_VERSION"

# 2. build tools (PyPI's cmake: Debian's 3.25 is too old for deepmd-kit's CMakeLists)
"${PIP[@]}" install scikit-build-core dependency_groups setuptools_scm \
    hatch-fancy-pypi-readme cmake ninja

# make sure the venv's cmake/ninja win over system ones
export PATH="$(dirname "$PYTHON"):$PATH"

# 3. rebuild deepmd-kit from the sdist against the installed torch (no build isolation,
#    so the build sees torch==$TORCH_VERSION; --no-deps keeps torch untouched;
#    --no-cache-dir: never reuse a wheel that pip cached from a build against another torch)
env DP_ENABLE_TENSORFLOW=0 DP_ENABLE_PYTORCH=1 DP_ENABLE_PADDLE=0 \
    DP_ENABLE_IPI="${DP_ENABLE_IPI:-0}" DP_VARIANT=cpu \
    CMAKE_ARGS="-DUSE_TF_PYTHON_LIBS:BOOL=FALSE" \
    CMAKE_BUILD_PARALLEL_LEVEL="$BUILD_JOBS" MAKEFLAGS="-j$BUILD_JOBS" \
    "${PIP[@]}" install --no-build-isolation --no-deps --force-reinstall --no-cache-dir \
    --no-binary deepmd-kit "deepmd-kit==$DEEPMD_VERSION"

if check; then
    echo "deepmd-kit $DEEPMD_VERSION installed and importable (deepmd.pt) with torch $TORCH_VERSION"
else
    echo "deepmd-kit install finished but 'import deepmd.pt' fails:" >&2
    "$PYTHON" -c "import deepmd.pt" >&2
    exit 1
fi
