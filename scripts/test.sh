#!/usr/bin/env bash
# Set up (reusing what exists) and run the test suite (everything not marked slow).
#   bash scripts/test.sh [extra pytest arguments]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/scripts/setup.sh"
venv="${DPA3_VENV:-$here/.venv}"
cd "$here"
exec "$venv/bin/python" -m pytest -m "not slow" -p no:cacheprovider "$@"
