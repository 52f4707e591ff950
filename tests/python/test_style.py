"""C++/CUDA sources follow the repository's .clang-format.

Runs the clang-format that scripts/setup.sh pins (the PyPI wheel, in the test environment's
bin/) in check mode over every C++/CUDA file of src/. A missing or differently versioned
clang-format is a failure, not a skip: formatting differs between clang-format versions.
Fix a failure with ``.venv/bin/clang-format -i FILE``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUFFIXES = {".cpp", ".h", ".cu", ".cuh", ".hpp", ".cc"}


def clang_format() -> Path:
    exe = Path(sys.executable).parent / "clang-format"
    assert exe.is_file(), (
        f"{exe} is missing: install the pinned clang-format (bash scripts/setup.sh)"
    )
    return exe


def pinned_version() -> str:
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    m = re.search(r"clang-format==([0-9.]+)", setup)
    assert m, "scripts/setup.sh does not pin clang-format==VERSION"
    return m.group(1)


def sources() -> list[Path]:
    files = sorted(p for p in (ROOT / "src").rglob("*") if p.suffix in SUFFIXES and p.is_file())
    assert len(files) >= 20, f"found only {len(files)} C++/CUDA files under src/"
    return files


def test_clang_format_is_the_pinned_version() -> None:
    out = subprocess.run(
        [clang_format(), "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert f"version {pinned_version()}" in out, out


def test_cpp_sources_are_clang_formatted() -> None:
    assert (ROOT / ".clang-format").is_file()
    files = sources()
    res = subprocess.run(
        [clang_format(), "--dry-run", "--Werror", *[str(p) for p in files]],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    bad = sorted({line.split(":", 1)[0] for line in res.stderr.splitlines() if ": error:" in line})
    assert res.returncode == 0, (
        f"not clang-formatted (run .venv/bin/clang-format -i on them): {bad}\n" + res.stderr[:3000]
    )
